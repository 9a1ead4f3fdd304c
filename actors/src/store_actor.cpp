// The store actor: a coordinator that queues requests and forms groups, and blocking workers that
// run them against the event store (see store_actor.hpp for the protocol).
#include "mire/actors/store_actor.hpp"

#include <algorithm>
#include <chrono>
#include <deque>
#include <set>
#include <exception>
#include <memory>
#include <string>
#include <unordered_set>
#include <utility>
#include <variant>
#include <vector>

#include <caf/all.hpp>

#include "mire/actors/errors.hpp"
#include "mire/store/uuid.hpp"

// The hooks of a group, beside its appends (local messages only, like the hooks themselves).
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(std::vector<mire::actors::commit_hook>)

namespace mire::actors {
namespace {

using group_atom = caf::atom_constant<caf::atom("group")>;
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

// A worker blocks on the database on its own thread. The store's calls report failures as
// values; an exception (e.g. bad_alloc) is turned into an error instead of killing the worker,
// whose death would take the store actor with it.
caf::behavior store_worker(caf::event_based_actor*, std::shared_ptr<event_store> store) {
  return {
      [store](group_atom, std::vector<stream_append>& group,
              const std::vector<commit_hook>& hooks) -> std::vector<append_outcome> {
        std::vector<append_outcome> outcomes;
        try {
          outcomes = commit(*store, group);
        } catch (const std::exception& ex) {
          return std::vector<append_outcome>(group.size(),
                                             append_outcome{{}, internal_error("append", ex)});
        }
        // After the commit, and each on its own: a hook that throws changes no outcome.
        for (std::size_t i = 0; i < outcomes.size(); ++i) {
          if (hooks[i] && !outcomes[i].error) {
            try {
              (*hooks[i])(outcomes[i].value);
            } catch (...) { // the reply still carries the outcome
            }
          }
        }
        return outcomes;
      },
      [store](load_atom, load_request& req) -> caf::result<stream_load> {
        try {
          stream_load out;
          int64_t from = req.from_version;
          if (req.snapshot_schema >= 0) {
            auto snap = store->load_snapshot(req.stream_id);
            if (!snap)
              return to_caf(snap.error());
            if (*snap && (*snap)->schema_version == req.snapshot_schema &&
                (*snap)->version >= from) {
              out.has_snapshot = true;
              out.snapshot = std::move(**snap);
              from = out.snapshot.version + 1;
            }
          }
          auto events = store->read_stream(req.stream_id, from);
          if (!events)
            return to_caf(events.error());
          out.events = std::move(*events);
          return out;
        } catch (const std::exception& ex) {
          return internal_error("load", ex);
        }
      },
      [store](snapshot_atom, mire::snapshot& s) -> caf::result<void> {
        try {
          if (auto r = store->save_snapshot(s); !r)
            return to_caf(r.error());
          return caf::unit;
        } catch (const std::exception& ex) {
          return internal_error("save snapshot", ex);
        }
      },
  };
}

struct queued_append {
  stream_append append;
  commit_hook hook;
  caf::typed_response_promise<append_result> rp;
  clock::time_point arrived;
};
struct queued_load {
  load_request request;
  caf::typed_response_promise<stream_load> rp;
};
struct queued_snapshot {
  mire::snapshot snap;
  caf::response_promise rp;
};
using job = std::variant<queued_append, queued_load, queued_snapshot>;

/// An append taken into a group: whom to answer, which stream to release.
struct member {
  std::string stream_id;
  caf::typed_response_promise<append_result> rp;
};

struct coordinator_state {
  store_actor_options options;
  std::vector<caf::actor> idle;              ///< workers waiting for work
  std::deque<job> queue;                     ///< in arrival order
  std::unordered_set<std::string> in_flight; ///< streams with an append being committed
  std::multiset<std::size_t> group_sizes;    ///< of the groups being committed
  bool timer_armed = false;
  static inline const char* name = "mire.store";
};

using coordinator = store_actor::stateful_pointer<coordinator_state>;

void dispatch(coordinator self, bool window_over);

void release(coordinator self, caf::actor worker) {
  self->state.idle.push_back(std::move(worker));
  dispatch(self, false);
}

bool ready(const coordinator_state& st, const job& j) {
  auto* a = std::get_if<queued_append>(&j);
  return a == nullptr || st.in_flight.count(a->append.stream_id) == 0;
}

// Takes every ready append (one per stream, in arrival order, at most max_group) off the queue,
// marking their streams in flight; later appends to those streams wait for the next group.
std::vector<queued_append> take_group(coordinator_state& st) {
  std::vector<queued_append> group;
  std::deque<job> rest;
  for (auto& j : st.queue) {
    auto* a = std::get_if<queued_append>(&j);
    if (a != nullptr && group.size() < st.options.max_group &&
        st.in_flight.insert(a->append.stream_id).second)
      group.push_back(std::move(*a));
    else
      rest.push_back(std::move(j));
  }
  st.queue = std::move(rest);
  // One lock order for every group, so that two groups (of two replicas) touching the same
  // streams cannot deadlock each other.
  std::sort(group.begin(), group.end(), [](const queued_append& x, const queued_append& y) {
    return x.append.stream_id < y.append.stream_id;
  });
  return group;
}

void send_group(coordinator self, caf::actor worker, std::vector<queued_append> group) {
  std::vector<stream_append> appends;
  std::vector<commit_hook> hooks;
  auto members = std::make_shared<std::vector<member>>();
  appends.reserve(group.size());
  hooks.reserve(group.size());
  members->reserve(group.size());
  for (auto& q : group) {
    members->push_back(member{q.append.stream_id, std::move(q.rp)});
    appends.push_back(std::move(q.append));
    hooks.push_back(std::move(q.hook));
  }
  self->state.group_sizes.insert(members->size());
  auto done = [self, members] {
    auto& st = self->state;
    for (auto& m : *members)
      st.in_flight.erase(m.stream_id);
    st.group_sizes.erase(st.group_sizes.find(members->size()));
  };
  self->request(worker, caf::infinite, group_atom::value, std::move(appends), std::move(hooks))
      .then(
          [self, worker, members, done](std::vector<append_outcome>& outcomes) {
            for (std::size_t i = 0; i < members->size(); ++i) {
              auto& rp = (*members)[i].rp;
              if (outcomes[i].error)
                rp.deliver(std::move(outcomes[i].error));
              else
                rp.deliver(outcomes[i].value);
            }
            done();
            release(self, worker);
          },
          [self, members, done](caf::error& e) {
            // The worker is gone (it is linked: the store actor is going down too).
            for (auto& m : *members)
              m.rp.deliver(e);
            done();
          });
}

// A failed load or snapshot is the worker's answer: the worker is free again. Only a worker
// that is gone (it is linked: the store actor is going down too) is not taken back.
void release_after(coordinator self, caf::actor worker, const caf::error& e) {
  if (e != caf::sec::request_receiver_down)
    release(self, std::move(worker));
}

void send_alone(coordinator self, caf::actor worker, job j) {
  if (auto* l = std::get_if<queued_load>(&j)) {
    auto rp = std::move(l->rp);
    self->request(worker, caf::infinite, load_atom::value, std::move(l->request))
        .then(
            [self, worker, rp](stream_load& out) mutable {
              rp.deliver(std::move(out));
              release(self, worker);
            },
            [self, worker, rp](caf::error& e) mutable {
              rp.deliver(e);
              release_after(self, worker, e);
            });
  } else if (auto* s = std::get_if<queued_snapshot>(&j)) {
    auto rp = std::move(s->rp);
    self->request(worker, caf::infinite, snapshot_atom::value, std::move(s->snap))
        .then(
            [self, worker, rp]() mutable {
              rp.deliver(caf::unit);
              release(self, worker);
            },
            [self, worker, rp](caf::error& e) mutable {
              rp.deliver(e);
              release_after(self, worker, e);
            });
  }
}

// How long ready appends wait for company while a group commits (see wait_for_company): about
// one commit's time; a group held up in Postgres (a lock, rule 6) keeps nobody waiting longer.
constexpr auto company_wait = std::chrono::milliseconds(2);

// Whether the ready appends (the oldest first) should wait for company rather than leave now.
// Balanced groups: while a group commits, the next one leaves once as many appends are ready as
// the largest group in flight has, when a group is done, or after company_wait. Leaving at once
// with whatever is ready would split a steady load into one big group and many single appends
// (each one costs a commit). With nothing in flight an append leaves at once (unless a group
// window is set): a lone caller does not wait.
bool wait_for_company(coordinator self, const queued_append& oldest, std::size_t ready,
                      bool window_over) {
  auto& st = self->state;
  if (ready >= st.options.max_group || window_over)
    return false;
  auto due = oldest.arrived + st.options.group_window;
  if (!st.group_sizes.empty() && ready < *st.group_sizes.rbegin())
    due = std::max(due, oldest.arrived + company_wait);
  const auto now = clock::now();
  if (now >= due)
    return false;
  if (!st.timer_armed) {
    st.timer_armed = true;
    self->delayed_send(self, due - now, flush_atom::value);
  }
  return true;
}

// Hands queued work to idle workers, in arrival order: a load or snapshot at once, appends as
// groups (see wait_for_company; a load behind waiting appends goes ahead of them). Group commit
// comes from the rest: whatever queued up while the workers were busy leaves together.
void dispatch(coordinator self, bool window_over) {
  auto& st = self->state;
  while (!st.idle.empty()) {
    auto first_append = st.queue.end(); // the oldest ready append
    auto alone = st.queue.end();        // the first load or snapshot
    std::size_t ready_appends = 0;
    for (auto it = st.queue.begin(); it != st.queue.end(); ++it) {
      if (auto* a = std::get_if<queued_append>(&*it)) {
        if (ready(st, *it)) {
          if (first_append == st.queue.end())
            first_append = it;
          ++ready_appends;
        }
      } else if (alone == st.queue.end()) {
        alone = it;
      }
    }
    auto worker = [&] {
      auto w = std::move(st.idle.back());
      st.idle.pop_back();
      return w;
    };
    const bool appends_first = first_append != st.queue.end() &&
                               (alone == st.queue.end() || first_append < alone);
    if (appends_first && !wait_for_company(self, std::get<queued_append>(*first_append),
                                           ready_appends, window_over)) {
      send_group(self, worker(), take_group(st));
    } else if (alone != st.queue.end()) {
      job j = std::move(*alone);
      st.queue.erase(alone);
      send_alone(self, worker(), std::move(j));
    } else {
      return;
    }
  }
}

caf::typed_response_promise<append_result> enqueue_append(coordinator self, stream_append a,
                                                          commit_hook hook) {
  auto rp = self->make_response_promise<append_result>();
  self->state.queue.emplace_back(queued_append{std::move(a), std::move(hook), rp, clock::now()});
  dispatch(self, false);
  return rp;
}

store_actor::behavior_type coordinator_actor(coordinator self, event_store store,
                                             store_actor_options options) {
  auto shared = std::make_shared<event_store>(std::move(store));
  self->state.options = options;
  // Linked: when the store actor exits, its workers exit with it.
  for (std::size_t i = 0; i < options.workers; ++i)
    self->state.idle.push_back(self->spawn<caf::detached + caf::linked>(store_worker, shared));
  return {
      [self](append_atom, stream_append& a) -> caf::typed_response_promise<append_result> {
        return enqueue_append(self, std::move(a), nullptr);
      },
      [self](append_atom, stream_append& a,
             commit_hook& hook) -> caf::typed_response_promise<append_result> {
        return enqueue_append(self, std::move(a), std::move(hook));
      },
      [self](load_atom, load_request& req) -> caf::typed_response_promise<stream_load> {
        auto rp = self->make_response_promise<stream_load>();
        self->state.queue.emplace_back(queued_load{std::move(req), rp});
        dispatch(self, false);
        return rp;
      },
      // A typed promise of "no value" cannot be delivered in CAF 0.17: an untyped promise
      // answers, and delegated<void> tells the type checker the answer comes later.
      [self](snapshot_atom, mire::snapshot& s) -> caf::delegated<void> {
        self->state.queue.emplace_back(
            queued_snapshot{std::move(s), self->make_response_promise()});
        dispatch(self, false);
        return {};
      },
      [self](flush_atom) {
        self->state.timer_armed = false;
        dispatch(self, true);
      },
  };
}

} // namespace

result<store_actor> spawn_store_actor(caf::actor_system& system, event_store store,
                                      store_actor_options options) {
  if (auto ok = validate(options); !ok)
    return ok.error();
  if (store.options().pool_size < options.workers)
    return bad_input("the event store's pool_size (" + std::to_string(store.options().pool_size) +
                     ") must be at least store.workers (" + std::to_string(options.workers) + ")");
  return system.spawn(coordinator_actor, std::move(store), options);
}

} // namespace mire::actors
