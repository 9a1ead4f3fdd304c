// The store actor: a coordinator that queues requests and answers them, and blocking workers that
// take work from the queue (forming groups) and run it against the event store (see
// store_actor.hpp for the protocol).
#include "mire/actors/store_actor.hpp"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include <caf/all.hpp>

#include "mire/actors/errors.hpp"
#include "mire/store/uuid.hpp"
#include "store_queue.hpp"
#include "top_level.hpp"

namespace mire::actors {
namespace {

using clock = std::chrono::steady_clock;

/// One append's outcome within a group; `error` is empty on success.
struct append_outcome {
  mire::append_result value;
  caf::error error;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, append_outcome& x) {
  return f(caf::meta::type_name("append_outcome"), x.value, x.error);
}

append_outcome outcome_of(result<append_result> r) {
  if (r)
    return {*r, caf::none};
  return {{}, to_caf(r.error())};
}

// Errors about the group as a whole, fair to give every member: the database is gone, the
// commit is in doubt, time ran out. Anything else (one append's bad input, a deadlock with
// another writer) may be one member's doing, so the members are then run alone: nobody fails
// because of a neighbour.
bool group_wide(errc code) {
  return code == errc::unavailable || code == errc::commit_in_doubt || code == errc::timeout;
}

std::vector<append_outcome> commit(event_store& store, std::vector<stream_append>& group) {
  std::vector<append_outcome> out;
  out.reserve(group.size());
  if (group.size() > 1) {
    // Event ids fixed before the group is tried, so that running its members alone afterwards
    // is idempotent (DESIGN rule 2) whatever the group got done before it failed.
    for (auto& a : group)
      for (auto& e : a.events)
        if (e.event_id.empty())
          e.event_id = new_uuid();
    auto r = store.append_group(group); // a copy: the members are needed if it fails
    if (r && r->size() == group.size()) {
      for (auto& x : *r)
        out.push_back(outcome_of(std::move(x)));
      return out;
    }
    if (!r && group_wide(r.error().code)) {
      out.assign(group.size(), append_outcome{{}, to_caf(r.error())});
      return out;
    }
  }
  for (auto& a : group)
    out.push_back(outcome_of(store.append(a.stream_id, a.expected, std::move(a.events))));
  return out;
}

caf::error internal_error(const char* what, const std::exception& ex) {
  return to_caf(mire::error{errc::internal, std::string(what) + ": " + ex.what()});
}

stream_load load_stream(event_store& store, const load_request& req) {
  stream_load out;
  int64_t from = req.from_version;
  if (req.snapshot_schema >= 0) {
    auto snap = store.load_snapshot(req.stream_id);
    if (!snap)
      throw mire::error(snap.error());
    if (*snap && (*snap)->schema_version == req.snapshot_schema && (*snap)->version >= from) {
      out.has_snapshot = true;
      out.snapshot = std::move(**snap);
      from = out.snapshot.version + 1;
    }
  }
  auto events = store.read_stream(req.stream_id, from);
  if (!events)
    throw mire::error(events.error());
  out.events = std::move(*events);
  return out;
}

// How long ready appends wait for company while a group commits (see work_queue::take): about
// one commit's time; a group held up in Postgres (a lock, rule 6) keeps nobody waiting longer.
constexpr auto company_wait = std::chrono::milliseconds(2);

/// A job in the queue; `token` names its promise in the coordinator, or, for an append submitted
/// by an aggregate actor (submit_append), `reply_to` and `call` whom the worker answers itself.
struct queued {
  enum kind_t { append, load, snapshot } kind = append;
  uint64_t token = 0;
  caf::actor_addr reply_to;
  uint64_t call = 0;
  stream_append append_request;
  commit_hook hook;
  load_request to_load;
  mire::snapshot snap;
  clock::time_point arrived;
};

/// What a worker took: a group of appends, or one load or snapshot.
struct work {
  std::vector<queued> jobs;
};

} // namespace

namespace detail {

/// The queue the coordinator (and submit_append) fills and the workers take from (under `mutex`).
/// Workers take work themselves the moment they are free: no round trip through the coordinator
/// between groups.
class store_queue {
public:
  explicit store_queue(store_actor_options o) : options(o) {}

  /// The next work, or when to look again (nullopt: when woken).
  struct next {
    std::optional<work> taken;
    std::optional<clock::time_point> wake_at;
  };

  // In arrival order: a load or snapshot at once, appends as groups. Balanced groups: while a
  // group commits, the next one leaves once as many appends are ready as the largest group in
  // flight has, when a group is done, or after company_wait. Leaving at once with whatever is
  // ready would split a steady load into one big group and many single appends (each one costs
  // a commit). With nothing in flight an append leaves at once (unless a group window is set):
  // a lone caller does not wait. A load behind waiting appends goes ahead of them.
  next take(clock::time_point now) {
    auto first_append = queue.end(), alone = queue.end();
    std::size_t ready = 0;
    for (auto it = queue.begin(); it != queue.end(); ++it) {
      if (it->kind != queued::append) {
        if (alone == queue.end())
          alone = it;
      } else if (!in_flight.count(it->append_request.stream_id)) {
        if (first_append == queue.end())
          first_append = it;
        ++ready;
      }
    }
    std::optional<clock::time_point> due;
    if (first_append != queue.end() && (alone == queue.end() || first_append < alone)) {
      due = first_append->arrived + options.group_window;
      if (!group_sizes.empty() && ready < *group_sizes.rbegin())
        due = std::max(*due, first_append->arrived + company_wait);
      if (ready >= options.max_group || now >= *due)
        return {take_group(), std::nullopt};
    }
    if (alone != queue.end()) {
      work w;
      w.jobs.push_back(std::move(*alone));
      queue.erase(alone);
      return {std::move(w), std::nullopt};
    }
    return {std::nullopt, due};
  }

  // Every ready append (one per stream, in arrival order, at most max_group), their streams
  // marked in flight; later appends to those streams wait for the next group.
  work take_group() {
    work w;
    std::deque<queued> rest;
    for (auto& j : queue) {
      if (j.kind == queued::append && w.jobs.size() < options.max_group &&
          in_flight.insert(j.append_request.stream_id).second)
        w.jobs.push_back(std::move(j));
      else
        rest.push_back(std::move(j));
    }
    queue = std::move(rest);
    // One lock order for every group, so that two groups (of two replicas) touching the same
    // streams cannot deadlock each other.
    std::sort(w.jobs.begin(), w.jobs.end(), [](const queued& x, const queued& y) {
      return x.append_request.stream_id < y.append_request.stream_id;
    });
    group_sizes.insert(w.jobs.size());
    return w;
  }

  void done_with_group(const std::vector<std::string>& streams) {
    for (const auto& s : streams)
      in_flight.erase(s);
    if (auto it = group_sizes.find(streams.size()); it != group_sizes.end())
      group_sizes.erase(it);
  }

  const store_actor_options options;
  std::mutex mutex;
  std::condition_variable wake;
  std::deque<queued> queue;                  ///< in arrival order
  std::unordered_set<std::string> in_flight; ///< streams with an append being committed
  std::multiset<std::size_t> group_sizes;    ///< of the groups being committed
  bool stopping = false;
};

} // namespace detail

namespace {

using work_queue = detail::store_queue;

using done_atom = caf::atom_constant<caf::atom("done")>;

caf::error unknown_failure(const char* what) {
  return to_caf(mire::error{errc::internal, std::string(what) + ": an unknown exception"});
}

// Ends a group on the queue however its run ends: its streams are released, and workers waiting
// for them (or for company) are woken if anything is queued.
struct group_release {
  work_queue& q;
  std::vector<std::string> streams;
  ~group_release() {
    bool waiting = false;
    {
      std::lock_guard lock{q.mutex};
      q.done_with_group(streams);
      waiting = !q.queue.empty();
    }
    if (waiting)
      q.wake.notify_all();
  }
};

// An exception (bad_alloc, say) may come before the commit or after it: each member's outcome
// is then unknown, and its caller must not take it for "not recorded".
caf::error in_doubt_after(std::string what) {
  return to_caf(mire::error{errc::commit_in_doubt,
                            "the group commit failed on the way (" + what +
                                "): this append may or may not be recorded"});
}

std::vector<append_outcome> run_group(event_store& store, work& w) {
  std::vector<stream_append> group;
  for (auto& j : w.jobs)
    group.push_back(std::move(j.append_request));
  try {
    return commit(store, group);
  } catch (const std::exception& ex) {
    return std::vector<append_outcome>(group.size(), append_outcome{{}, in_doubt_after(ex.what())});
  } catch (...) {
    return std::vector<append_outcome>(group.size(),
                                       append_outcome{{}, in_doubt_after("an unknown exception")});
  }
}

// A worker: takes work from the queue, runs it against the database on its own thread and
// connection, and sends the outcomes to the coordinator, which answers the callers. The store's
// calls report failures as values; an exception (e.g. bad_alloc) becomes that job's error. It
// holds the coordinator by address only: a store actor nobody references can go away (and stop
// its workers).
void store_worker(caf::blocking_actor*, std::shared_ptr<work_queue> q,
                  std::shared_ptr<event_store> store, caf::actor_addr coordinator_addr) {
  auto answer = [&](auto&&... xs) {
    if (auto c = caf::actor_cast<caf::actor>(coordinator_addr))
      caf::anon_send(c, done_atom::value, std::forward<decltype(xs)>(xs)...);
  };
  for (;;) {
    work w;
    {
      std::unique_lock lock{q->mutex};
      for (;;) {
        if (q->stopping)
          return;
        auto next = q->take(clock::now());
        if (next.taken) {
          w = std::move(*next.taken);
          break;
        }
        if (next.wake_at)
          q->wake.wait_until(lock, *next.wake_at);
        else
          q->wake.wait(lock);
      }
      // The wake-up that brought this worker may have been meant for work still queued.
      if (!q->queue.empty())
        q->wake.notify_one();
    }
    auto& first = w.jobs.front();
    if (first.kind == queued::append) {
      group_release released{*q, {}};
      for (const auto& j : w.jobs)
        released.streams.push_back(j.append_request.stream_id);
      auto outcomes = run_group(*store, w);
      // Callers first (a waiting thread goes on now), then the streams; each hook on its own:
      // one that throws changes no outcome. The outcomes leave before the streams are
      // released, so the answer to a later append to the same stream (a later group, maybe on
      // another worker) cannot overtake them.
      for (std::size_t i = 0; i < outcomes.size(); ++i) {
        if (w.jobs[i].hook && !outcomes[i].error) {
          try {
            (*w.jobs[i].hook)(outcomes[i].value);
          } catch (...) { // the reply still carries the outcome
          }
        }
      }
      std::vector<uint64_t> tokens;
      std::vector<append_outcome> via_coordinator;
      for (std::size_t i = 0; i < outcomes.size(); ++i) {
        auto& j = w.jobs[i];
        if (!j.reply_to) {
          tokens.push_back(j.token);
          via_coordinator.push_back(std::move(outcomes[i]));
        } else if (auto to = caf::actor_cast<caf::actor>(j.reply_to); !to) {
          continue; // the actor is gone
        } else if (outcomes[i].error) {
          caf::anon_send(to, detail::appended_atom::value, j.call, std::move(outcomes[i].error));
        } else {
          caf::anon_send(to, detail::appended_atom::value, j.call, outcomes[i].value);
        }
      }
      if (!tokens.empty())
        answer(std::move(tokens), std::move(via_coordinator));
    } else if (first.kind == queued::load) {
      try {
        answer(first.token, load_stream(*store, first.to_load));
      } catch (const mire::error& e) {
        answer(first.token, to_caf(e));
      } catch (const std::exception& ex) {
        answer(first.token, internal_error("load", ex));
      } catch (...) {
        answer(first.token, unknown_failure("load"));
      }
    } else {
      caf::error err;
      try {
        if (auto r = store->save_snapshot(first.snap); !r)
          err = to_caf(r.error());
      } catch (const std::exception& ex) {
        err = internal_error("save snapshot", ex);
      } catch (...) {
        err = unknown_failure("save snapshot");
      }
      answer(first.token, std::move(err));
    }
  }
}

struct coordinator_state {
  std::shared_ptr<detail::store_queue> queue;
  uint64_t next_token = 0;
  std::unordered_map<uint64_t, caf::typed_response_promise<append_result>> appends;
  std::unordered_map<uint64_t, caf::typed_response_promise<stream_load>> loads;
  std::unordered_map<uint64_t, caf::response_promise> snapshots;
  ~coordinator_state() {
    if (queue) { // the workers finish the work in hand and stop
      std::deque<queued> submitted; // by aggregate actors, and never taken: they never ran
      {
        std::lock_guard lock{queue->mutex};
        queue->stopping = true;
        for (auto& j : queue->queue)
          if (j.reply_to)
            submitted.push_back(std::move(j));
      }
      queue->wake.notify_all();
      const auto not_run = to_caf(mire::error{
          errc::unavailable, "the store actor stopped before this append ran: nothing of it was "
                             "recorded"});
      for (auto& j : submitted)
        if (auto to = caf::actor_cast<caf::actor>(j.reply_to))
          caf::anon_send(to, detail::appended_atom::value, j.call, not_run);
    }
    // CAF 0.17 does not answer a promise that is dropped: say so instead of leaving callers to
    // their timeouts. An append among these may still commit (a worker finishes the one in hand).
    const auto in_doubt = to_caf(mire::error{
        errc::commit_in_doubt, "the store actor stopped with this append pending: it may or may "
                               "not be recorded"});
    const auto gone = to_caf(mire::error{errc::unavailable, "the store actor stopped"});
    for (auto& [token, rp] : appends)
      rp.deliver(in_doubt);
    for (auto& [token, rp] : loads)
      rp.deliver(gone);
    for (auto& [token, rp] : snapshots)
      rp.deliver(gone);
  }
  static inline const char* name = "mire.store";
};

// Untyped inside, so that workers can send it their outcomes; callers see the store_actor
// interface.
using coordinator = caf::stateful_actor<coordinator_state>*;

bool push(work_queue& q, queued j) {
  j.arrived = clock::now();
  {
    std::lock_guard lock{q.mutex};
    if (q.stopping)
      return false;
    q.queue.push_back(std::move(j));
  }
  q.wake.notify_one();
  return true;
}

uint64_t enqueue(coordinator self, queued j) {
  j.token = ++self->state.next_token;
  const auto token = j.token;
  push(*self->state.queue, std::move(j)); // the queue stops only with this actor
  return token;
}

caf::behavior coordinator_actor(coordinator self, event_store store,
                               std::shared_ptr<detail::store_queue> queue) {
  auto shared = std::make_shared<event_store>(std::move(store));
  auto& st = self->state;
  st.queue = std::move(queue);
  const auto& options = st.queue->options;
  for (std::size_t i = 0; i < options.workers; ++i)
    self->spawn<caf::detached>(store_worker, st.queue, shared, self->address());
  auto append = [self](stream_append& a, commit_hook hook) {
    auto rp = self->make_response_promise<append_result>();
    queued j;
    j.append_request = std::move(a);
    j.hook = std::move(hook);
    self->state.appends.emplace(enqueue(self, std::move(j)), rp);
    return rp;
  };
  auto answered = [self](uint64_t token, caf::error& e) {
    auto& st = self->state;
    if (auto l = st.loads.find(token); l != st.loads.end()) {
      l->second.deliver(std::move(e));
      st.loads.erase(l);
    } else if (auto s = st.snapshots.find(token); s != st.snapshots.end()) {
      if (e)
        s->second.deliver(std::move(e));
      else
        s->second.deliver(caf::unit);
      st.snapshots.erase(s);
    }
  };
  return {
      [append](append_atom, stream_append& a) -> caf::typed_response_promise<append_result> {
        return append(a, nullptr);
      },
      [append](append_atom, stream_append& a,
               commit_hook& hook) -> caf::typed_response_promise<append_result> {
        return append(a, std::move(hook));
      },
      [self](load_atom, load_request& req) -> caf::typed_response_promise<stream_load> {
        auto rp = self->make_response_promise<stream_load>();
        queued j;
        j.kind = queued::load;
        j.to_load = std::move(req);
        self->state.loads.emplace(enqueue(self, std::move(j)), rp);
        return rp;
      },
      // A typed promise of "no value" cannot be delivered in CAF 0.17: an untyped promise
      // answers, and delegated<void> tells the type checker the answer comes later.
      [self](snapshot_atom, mire::snapshot& s) -> caf::delegated<void> {
        queued j;
        j.kind = queued::snapshot;
        j.snap = std::move(s);
        self->state.snapshots.emplace(enqueue(self, std::move(j)), self->make_response_promise());
        return {};
      },
      [self](done_atom, const std::vector<uint64_t>& tokens,
             std::vector<append_outcome>& outcomes) {
        auto& st = self->state;
        for (std::size_t i = 0; i < tokens.size(); ++i) {
          auto it = st.appends.find(tokens[i]);
          if (it == st.appends.end())
            continue;
          if (outcomes[i].error)
            it->second.deliver(std::move(outcomes[i].error));
          else
            it->second.deliver(outcomes[i].value);
          st.appends.erase(it);
        }
      },
      [self](done_atom, uint64_t token, stream_load& l) {
        auto& st = self->state;
        if (auto it = st.loads.find(token); it != st.loads.end()) {
          it->second.deliver(std::move(l));
          st.loads.erase(it);
        }
      },
      [answered](done_atom, uint64_t token, caf::error& e) { answered(token, e); },
  };
}

} // namespace

result<detail::store_ref> detail::spawn_store(caf::actor_system& system, event_store store,
                                              store_actor_options options) {
  if (auto ok = validate(options); !ok)
    return ok.error();
  if (store.options().pool_size < options.workers)
    return bad_input("the event store's pool_size (" + std::to_string(store.options().pool_size) +
                     ") must be at least store.workers (" + std::to_string(options.workers) + ")");
  auto queue = std::make_shared<store_queue>(options);
  auto actor = caf::actor_cast<store_actor>(
      spawn_top_level(system, coordinator_actor, std::move(store), queue));
  return store_ref{std::move(actor), std::move(queue)};
}

bool detail::submit_append(store_queue& queue, stream_append a, commit_hook hook,
                           const caf::actor_addr& reply_to, uint64_t call) {
  queued j;
  j.append_request = std::move(a);
  j.hook = std::move(hook);
  j.reply_to = reply_to;
  j.call = call;
  return push(queue, std::move(j));
}

result<store_actor> spawn_store_actor(caf::actor_system& system, event_store store,
                                      store_actor_options options) {
  auto s = detail::spawn_store(system, std::move(store), options);
  if (!s)
    return s.error();
  return std::move(s->actor);
}

} // namespace mire::actors
