// The registry of one aggregate type and its aggregate actors (see registry.hpp for the public
// protocol). Internal protocol:
//   registry -> aggregate: (command_atom, token, erased_command, reply_slot_ptr),
//                          (state_atom, token, reply_slot_ptr), (stop_atom); the first two
//                          also straight from plain threads (send_direct, token 0)
//   aggregate -> registry: (reply_atom, token, erased_reply | caf::error), (idle_atom, id)
// A job with a reply slot (a plain thread waits on it, runtime::send) is answered into the slot
// by the aggregate itself; a job without one (a request to the registry) through the registry.
// Commands go as plain messages with a token rather than as requests: a request whose receiver
// dies mid-way is never answered in CAF 0.17, while the registry, monitoring its actors, learns
// of every death and answers each token of the dead actor itself. Monitors, not links, both
// ways: an exit_msg with reason kill is fatal to every linked actor in CAF 0.17 (no exit handler
// can trap it), so one killed aggregate would take the registry and all its siblings along.
#include "registry_actor.hpp"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <random>
#include <deque>
#include <exception>
#include <set>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>

#include <caf/all.hpp>

#include "mire/actors/errors.hpp"
#include "mire/actors/registry.hpp"
#include "top_level.hpp"

namespace mire::actors::detail {
namespace {

using reply_atom = caf::atom_constant<caf::atom("reply")>;
using idle_atom = caf::atom_constant<caf::atom("idle")>;
using stop_atom = caf::atom_constant<caf::atom("stop")>;
using watchdog_atom = caf::atom_constant<caf::atom("watchdog")>;
using retry_atom = caf::atom_constant<caf::atom("retry")>;
using clock = std::chrono::steady_clock;

// ---------------------------------------------------------------------------------------------
// Aggregate actor: one per aggregate id; one job (command or state query) at a time.

struct job {
  uint64_t token = 0;
  bool is_command = false;
  erased_command command;
  reply_slot_ptr slot; ///< where the answer goes; null: to the registry, by token
};

struct aggregate_state {
  std::shared_ptr<const aggregate_type> type;
  std::string id;
  store_ref store; ///< appends go into its queue, loads and snapshots to the actor
  caf::actor registry;
  std::unique_ptr<aggregate_model> model;
  int64_t version = 0;            ///< the model is the fold of the stream's events 1..version
  bool loaded = false;            ///< caught up with the log at least once
  bool snapshot_unusable = false; ///< the snapshot did not restore: replay the whole stream
  bool busy = false;              ///< a job (or the first load) is in progress
  std::deque<job> queue;
  clock::time_point last_active; ///< when the last job finished
  bool idle_timer = false;       ///< one passivation timer at a time, not one per command
  uint64_t calls = 0;            ///< store calls made so far
  uint64_t call = 0;             ///< the store call in flight (0: none)
  clock::time_point call_due;    ///< when the call in flight is overdue
  std::function<void(caf::error)> on_overdue;
  std::function<void(append_result&)> on_appended; ///< the submitted append's success
  bool watchdog = false; ///< one store-call timer at a time
  std::function<void()> retry; ///< a conflicted command waiting out its backoff
  std::minstd_rand rng{std::random_device{}()};
  ~aggregate_state() {
    // Stopped (a crash, a kill) with jobs queued: those never ran, so nothing of them is
    // recorded and a caller may simply send again. Only the job in progress may be in doubt;
    // the registry answers for it (and for jobs sent by token).
    for (const auto& j : queue) {
      if (!j.slot)
        continue;
      mire::error err{errc::unavailable,
                      "the actor of '" + id + "' stopped before this " +
                          (j.is_command ? "command ran: nothing of it was recorded" : "query ran")};
      err.stream_id = id;
      j.slot->settle(std::move(err));
    }
  }
  static inline const char* name = "mire.aggregate";
};

using aggregate_self = caf::stateful_actor<aggregate_state>*;

void reply(aggregate_self self, const job& j, erased_reply r) {
  if (j.slot)
    j.slot->settle(std::move(r));
  else
    self->send(self->state.registry, reply_atom::value, j.token, std::move(r));
}

void fail(aggregate_self self, const job& j, const mire::error& e) {
  if (j.slot)
    j.slot->settle(e);
  else
    self->send(self->state.registry, reply_atom::value, j.token, to_caf(e));
}

void arm_watchdog(aggregate_self self, clock::duration after) {
  if (!self->state.watchdog) {
    self->state.watchdog = true;
    self->delayed_send(self, after, watchdog_atom::value);
  }
}

// Store calls carry no CAF timeout: each would cost CAF's clock thread two wake-ups per call.
// Instead one timer per actor (at most one per store_timeout) fails a call that is overdue, and
// the call's late answer is dropped. One call is in flight at a time (the actor is busy).
template <class OnError> uint64_t begin_call(aggregate_self self, OnError on_error) {
  auto& st = self->state;
  const uint64_t call = ++st.calls;
  st.call = call;
  st.call_due = clock::now() + st.type->options.store_timeout;
  st.on_overdue = [on_error](caf::error e) mutable { on_error(e); };
  arm_watchdog(self, st.type->options.store_timeout);
  return call;
}

// True (once) when `call` is still the call in flight: its answer counts.
bool end_call(aggregate_self self, uint64_t call) {
  auto& st = self->state;
  if (st.call != call)
    return false; // overdue and already failed
  st.call = 0;
  st.on_overdue = nullptr;
  return true;
}

template <class T, class OnValue, class OnError, class... Ts>
void call_store(aggregate_self self, OnValue on_value, OnError on_error, Ts&&... xs) {
  const uint64_t call = begin_call(self, on_error);
  auto current = [self, call] { return end_call(self, call); };
  self->request(self->state.store.actor, caf::infinite, std::forward<Ts>(xs)...)
      .then(
          [current, on_value](T& value) mutable {
            if (current())
              on_value(value);
          },
          [current, on_error](caf::error& e) mutable {
            if (current())
              on_error(e);
          });
}

// The worker's answer to the submitted append `call`: on_appended gets a success, the call's
// error handler (on_overdue, set by begin_call) a failure.
template <class Answer> void on_appended(aggregate_self self, uint64_t call, Answer& answer) {
  auto& st = self->state;
  if (st.call != call)
    return; // overdue and already failed
  auto on_value = std::move(st.on_appended);
  auto on_error = std::move(st.on_overdue);
  st.on_appended = nullptr;
  end_call(self, call);
  if constexpr (std::is_same_v<Answer, caf::error>)
    on_error(std::move(answer));
  else
    on_value(answer);
}

// An append straight into the store's queue (see store_queue.hpp); the worker answers with
// appended_atom.
template <class OnValue, class OnError>
void call_append(aggregate_self self, OnValue on_value, OnError on_error, stream_append a,
                 commit_hook hook) {
  auto& st = self->state;
  const uint64_t call = begin_call(self, on_error);
  st.on_appended = std::move(on_value);
  if (!submit_append(*st.store.queue, std::move(a), std::move(hook), self->address(), call)) {
    auto stopped = to_caf(mire::error{errc::unavailable, "the store actor has stopped"});
    on_appended(self, call, stopped);
  }
}

void on_watchdog(aggregate_self self) {
  auto& st = self->state;
  st.watchdog = false;
  if (st.call == 0)
    return;
  const auto now = clock::now();
  if (now < st.call_due) {
    arm_watchdog(self, st.call_due - now);
    return;
  }
  auto overdue = std::move(st.on_overdue);
  st.call = 0;
  st.on_overdue = nullptr;
  st.on_appended = nullptr;
  overdue(caf::make_error(caf::sec::request_timeout));
}

// Reads what the log holds after `version` (from the latest snapshot when nothing is folded
// yet) and folds it in; then k(result<void>). The model stays the fold of events 1..version
// even when a decode fails half-way, so a later catch-up continues where this one stopped.
template <class K> void catch_up(aggregate_self self, K k) {
  auto& st = self->state;
  const bool from_snapshot = st.version == 0 && !st.snapshot_unusable;
  load_request req{st.id, st.version + 1, from_snapshot ? st.model->snapshot_schema() : -1};
  call_store<stream_load>(
      self,
      [self, k](stream_load& l) {
            auto& st = self->state;
            if (l.has_snapshot) {
              if (!st.model->restore(l.snapshot)) {
                st.snapshot_unusable = true;
                catch_up(self, k);
                return;
              }
              st.version = l.snapshot.version;
            }
            for (const auto& e : l.events) {
              if (auto r = st.model->replay(e); !r) {
                k(std::move(r));
                return;
              }
              st.version = e.version;
            }
            k(result<void>{});
      },
      [k](caf::error& e) { k(result<void>{from_caf(e)}); }, load_atom::value, std::move(req));
}

void pump(aggregate_self self);

void finish(aggregate_self self) {
  auto& st = self->state;
  st.busy = false;
  if (!st.queue.empty()) {
    pump(self);
    return;
  }
  st.last_active = std::chrono::steady_clock::now();
  const auto after = st.type->options.passivate_after;
  if (after.count() > 0 && !st.idle_timer) {
    st.idle_timer = true;
    self->delayed_send(self, after, idle_atom::value);
  }
}

// Snapshots only speed up loading: the events are committed, so a failed write is ignored.
void maybe_snapshot(aggregate_self self, int64_t before) {
  auto& st = self->state;
  const int64_t every = st.type->options.snapshot_every;
  const int32_t schema = st.model->snapshot_schema();
  if (every <= 0 || schema < 0 || st.version / every == before / every)
    return;
  std::string state;
  try {
    state = st.model->snapshot_state();
  } catch (const std::exception&) { // a state that does not serialize: no snapshot, no harm
    return;
  }
  self->request(st.store.actor, caf::infinite, snapshot_atom::value,
                mire::snapshot{st.id, st.version, schema, std::move(state)})
      .then([] {}, [](caf::error&) {});
}

void run(aggregate_self self, job j, int retries);

// After a conflict: catch up and decide again. The first retry goes at once; later ones wait a
// random while (up to 1, 2, 4, 8 ms), so that two replicas fighting over one hot aggregate stop
// colliding in lockstep.
void retry_later(aggregate_self self, job j, int retries) {
  auto again = [self, j, retries] {
    catch_up(self, [self, j, retries](result<void> r) {
      if (!r) {
        fail(self, j, r.error());
        finish(self);
        return;
      }
      run(self, j, retries + 1);
    });
  };
  if (retries == 0) {
    again();
    return;
  }
  auto& st = self->state;
  const int cap_us = 1000 << std::min(retries - 1, 3);
  st.retry = std::move(again);
  self->delayed_send(self, std::chrono::microseconds(std::uniform_int_distribution<int>(
                               cap_us / 4, cap_us)(st.rng)),
                     retry_atom::value);
}

// A refusal or a no-op involves no append, so no conflict would reveal that another writer had
// moved the stream on since this actor last looked: look before answering, and decide again
// when something new is there. A refusal is then never based on an outdated state.
void confirm(aggregate_self self, job j, int retries, erased_reply decided) {
  const int64_t seen = self->state.version;
  catch_up(self, [self, j, retries, seen, decided](result<void> r) {
    auto& st = self->state;
    if (!r) {
      fail(self, j, r.error()); // unconfirmed: the refusal may rest on an outdated state
    } else if (st.version == seen) {
      reply(self, j, decided);
    } else if (retries < st.type->options.max_retries) {
      run(self, j, retries + 1);
      return;
    } else {
      mire::error e{errc::version_conflict,
                    "the stream kept moving while the command was decided; retries exhausted"};
      e.stream_id = st.id;
      e.expected = seen;
      e.actual = st.version;
      fail(self, j, e);
    }
    finish(self);
  });
}

// decide -> append (expecting the version decided on) -> apply -> reply. On a version conflict
// another writer was first: catch up and decide again, at most max_retries times.
void run(aggregate_self self, job j, int retries) {
  auto& st = self->state;
  erased_decision d;
  try {
    d = st.model->decide(j.command.command.get(), j.command.metadata);
  } catch (const std::exception& ex) {
    fail(self, j, mire::error{errc::internal, std::string("decide threw: ") + ex.what()});
    finish(self);
    return;
  }
  if (d.rejection) {
    erased_reply r;
    r.kind = erased_reply::rejected;
    r.version = st.version;
    r.retries = retries;
    r.rejection = std::move(*d.rejection);
    confirm(self, std::move(j), retries, std::move(r));
    return;
  }
  if (d.encoded.empty()) {
    confirm(self, std::move(j), retries,
            erased_reply{erased_reply::accepted, st.version, retries, d.events, {}});
    return;
  }
  const int64_t before = st.version;
  auto events = d.events;
  // A waiting thread is answered by the store worker the moment the append commits; the reply
  // below (after apply) then finds the slot settled. Its caller's next command to this actor
  // queues behind the apply, as this actor is busy until then.
  commit_hook settle_on_commit;
  if (j.slot)
    settle_on_commit = std::make_shared<const std::function<void(const append_result&)>>(
        [slot = j.slot, retries, events](const append_result& r) {
          slot->settle(erased_reply{erased_reply::accepted, r.version, retries, events, {}});
        });
  call_append(
      self,
      [self, j, retries, before, events](append_result& r) {
        auto& st = self->state;
        st.model->apply_decided(events.get());
        st.version = r.version;
        reply(self, j, erased_reply{erased_reply::accepted, r.version, retries, events, {}});
        maybe_snapshot(self, before);
        finish(self);
      },
      [self, j, retries](caf::error& e) {
            auto err = from_caf(e);
            if (err.code == errc::version_conflict &&
                retries < self->state.type->options.max_retries) {
              retry_later(self, std::move(j), retries);
              return;
            }
            if (err.code == errc::timeout)
              err.message = "the store did not answer in time; the command may still be recorded";
            // The stream may have moved on (a conflict) or taken this very append (in doubt,
            // timeout): catch up before the next job instead of running into a conflict.
            self->state.loaded = false;
            fail(self, j, err);
            finish(self);
      },
      stream_append{st.id, expected_version::exactly(before), std::move(d.encoded)},
      std::move(settle_on_commit));
}

void answer_state(aggregate_self self, job j) {
  catch_up(self, [self, j](result<void> r) {
    auto& st = self->state;
    if (r)
      reply(self, j, erased_reply{erased_reply::state, st.version, 0, st.model->copy_state(), {}});
    else
      fail(self, j, r.error());
    finish(self);
  });
}

void pump(aggregate_self self) {
  auto& st = self->state;
  if (st.busy || st.queue.empty())
    return;
  st.busy = true;
  if (!st.loaded) {
    catch_up(self, [self](result<void> r) {
      auto& st = self->state;
      if (!r) {
        for (const auto& j : st.queue)
          fail(self, j, r.error());
        st.queue.clear();
        finish(self);
        return;
      }
      st.loaded = true;
      st.busy = false;
      pump(self);
    });
    return;
  }
  auto j = std::move(st.queue.front());
  st.queue.pop_front();
  if (j.is_command)
    run(self, std::move(j), 0);
  else
    answer_state(self, std::move(j));
}

void enqueue(aggregate_self self, job j) {
  self->state.queue.push_back(std::move(j));
  pump(self);
}

caf::behavior aggregate_actor(aggregate_self self, std::shared_ptr<const aggregate_type> type,
                              std::string id, store_ref store, caf::actor registry) {
  auto& st = self->state;
  st.model = type->make();
  st.type = std::move(type);
  st.id = std::move(id);
  st.store = std::move(store);
  st.registry = std::move(registry);
  // Without its registry nobody can reach this actor any more.
  self->monitor(st.registry);
  self->set_down_handler([self](caf::down_msg& m) { self->quit(m.reason); });
  return {
      [self](command_atom, uint64_t token, erased_command& c, reply_slot_ptr& slot) {
        enqueue(self, job{token, true, std::move(c), std::move(slot)});
      },
      [self](state_atom, uint64_t token, reply_slot_ptr& slot) {
        enqueue(self, job{token, false, {}, std::move(slot)});
      },
      [self](appended_atom, uint64_t call, append_result& r) { on_appended(self, call, r); },
      [self](appended_atom, uint64_t call, caf::error& e) { on_appended(self, call, e); },
      [self](watchdog_atom) { on_watchdog(self); },
      [self](retry_atom) {
        if (auto again = std::move(self->state.retry)) {
          self->state.retry = nullptr;
          again();
        }
      },
      // Idle for passivate_after: ask the registry to let us go. Only the registry knows
      // whether a command is on its way, so it decides (and answers with stop).
      [self](idle_atom) {
        auto& st = self->state;
        st.idle_timer = false;
        if (st.busy || !st.queue.empty())
          return; // finish() sets the timer again
        const auto after = st.type->options.passivate_after;
        const auto idle_for = std::chrono::steady_clock::now() - st.last_active;
        if (idle_for >= after) {
          self->send(st.registry, idle_atom::value, st.id);
        } else {
          st.idle_timer = true;
          self->delayed_send(self, after - idle_for, idle_atom::value);
        }
      },
      [self](stop_atom) { self->quit(); },
  };
}

// ---------------------------------------------------------------------------------------------
// Registry: routes by id, spawns on demand, answers for the dead.

/// A job sent with a reply slot: the aggregate answers into the slot, the registry only needs
/// it to answer for an actor that dies (and to know whether the actor still has work).
struct slot_job {
  reply_slot_ptr slot;
  bool is_command = false;
};

struct live_actor {
  caf::actor handle;
  std::set<uint64_t> tokens;  ///< sent to it, not answered yet
  std::vector<slot_job> slots; ///< sent to it; answered ones are pruned now and then
  std::size_t prune_at = 16;

  bool idle() const {
    return tokens.empty() && std::all_of(slots.begin(), slots.end(),
                                         [](const slot_job& s) { return s.slot->settled(); });
  }
  void add(slot_job s) {
    if (slots.size() >= prune_at) {
      std::erase_if(slots, [](const slot_job& x) { return x.slot->settled(); });
      prune_at = std::max<std::size_t>(16, 2 * slots.size());
    }
    slots.push_back(std::move(s));
  }
};

struct pending_job {
  caf::response_promise rp;
  std::string id;
  bool is_command = false;
};

} // namespace

// The registry changes the table (spawn, death, passivation); a sending thread only adds its job
// to an actor it finds (send_direct). Both under `mutex`, and a job is sent while it is held: the
// registry then never lets an actor go (or answers for its death) without seeing that job.
class routes {
public:
  std::mutex mutex;
  std::unordered_map<std::string, live_actor> actors;
};

namespace {

struct registry_state {
  std::shared_ptr<const aggregate_type> type;
  store_ref store;
  std::shared_ptr<routes> table;
  std::unordered_map<caf::actor_addr, std::string> ids;
  std::unordered_map<uint64_t, pending_job> pending;
  uint64_t next_token = 0;
  ~registry_state() {
    // The registry stops (the runtime shuts down): its aggregate actors stop with it, and CAF
    // 0.17 never answers a dropped promise. Everyone still waiting is told now, not left to
    // their timeouts; a command may be mid-append, so it is in doubt.
    auto stopped = [](const std::string& id, bool is_command) {
      mire::error err = is_command
                            ? mire::error{errc::commit_in_doubt,
                                          "the runtime stopped with this command pending: it "
                                          "may or may not be recorded"}
                            : mire::error{errc::unavailable, "the runtime stopped"};
      err.stream_id = id;
      return err;
    };
    for (auto& [token, p] : pending)
      p.rp.deliver(to_caf(stopped(p.id, p.is_command)));
    if (!table)
      return;
    std::lock_guard lock{table->mutex};
    for (auto& [id, a] : table->actors)
      for (auto& s : a.slots)
        s.slot->settle(stopped(id, s.is_command)); // a no-op for the answered ones
    table->actors.clear();
  }
  static inline const char* name = "mire.registry";
};

using registry_self = caf::stateful_actor<registry_state>*;

// Callers hold the table's mutex.
live_actor& actor_of(registry_self self, const std::string& id) {
  auto& st = self->state;
  auto it = st.table->actors.find(id);
  if (it == st.table->actors.end()) {
    auto a = self->spawn<caf::monitored>(aggregate_actor, st.type, id, st.store,
                                         caf::actor_cast<caf::actor>(self));
    st.ids.emplace(a.address(), id);
    it = st.table->actors.emplace(id, live_actor{std::move(a), {}, {}}).first;
  }
  return it->second;
}

void send_job(live_actor& a, uint64_t token, bool is_command, erased_command command,
              reply_slot_ptr slot) {
  if (is_command)
    caf::anon_send(a.handle, command_atom::value, token, std::move(command), std::move(slot));
  else
    caf::anon_send(a.handle, state_atom::value, token, std::move(slot));
}

// A request from actor code: answered through a promise when the aggregate replies by token.
caf::response_promise route(registry_self self, std::string id, bool is_command,
                            erased_command command) {
  auto& st = self->state;
  std::lock_guard lock{st.table->mutex};
  auto& a = actor_of(self, id);
  auto rp = self->make_response_promise();
  const uint64_t token = ++st.next_token;
  a.tokens.insert(token);
  st.pending.emplace(token, pending_job{rp, id, is_command});
  send_job(a, token, is_command, std::move(command), nullptr);
  return rp;
}

// A job from a plain thread: the aggregate answers into the slot itself.
void route(registry_self self, const std::string& id, bool is_command, erased_command command,
           reply_slot_ptr slot) {
  std::lock_guard lock{self->state.table->mutex};
  auto& a = actor_of(self, id);
  a.add(slot_job{slot, is_command});
  send_job(a, 0, is_command, std::move(command), std::move(slot));
}

template <class T> void settle(registry_self self, uint64_t token, T&& answer) {
  auto& st = self->state;
  auto it = st.pending.find(token);
  if (it == st.pending.end())
    return;
  auto p = std::move(it->second);
  st.pending.erase(it);
  {
    std::lock_guard lock{st.table->mutex};
    if (auto a = st.table->actors.find(p.id); a != st.table->actors.end())
      a->second.tokens.erase(token);
  }
  p.rp.deliver(std::forward<T>(answer));
}

// An aggregate actor died (a bug in apply, a kill): answer everything it had. A command may
// have been in flight, its append committed or not: in doubt. The fresh actor the next command
// spawns reloads from the log, so nothing committed is lost and nothing half is there (one
// command = one append = one transaction).
void on_actor_exit(registry_self self, const std::string& id, const caf::error& reason) {
  auto& st = self->state;
  std::lock_guard lock{st.table->mutex};
  auto it = st.table->actors.find(id);
  if (it == st.table->actors.end())
    return;
  const std::string why = self->system().render(reason);
  auto death = [&](bool is_command) {
    mire::error err =
        is_command
            ? mire::error{errc::commit_in_doubt,
                          "the actor of '" + id + "' stopped (" + why +
                              ") with this command pending: it may or may not be recorded"}
            : mire::error{errc::unavailable, "the actor of '" + id + "' stopped (" + why + ")"};
    err.stream_id = id;
    return err;
  };
  for (uint64_t token : it->second.tokens) {
    auto p = st.pending.find(token);
    if (p == st.pending.end())
      continue;
    p->second.rp.deliver(to_caf(death(p->second.is_command)));
    st.pending.erase(p);
  }
  for (auto& s : it->second.slots)
    s.slot->settle(death(s.is_command)); // a no-op for the answered ones
  st.table->actors.erase(it);
}

caf::behavior registry_actor(registry_self self, std::shared_ptr<const aggregate_type> type,
                             store_ref store, std::shared_ptr<routes> table) {
  self->state.type = std::move(type);
  self->state.store = std::move(store);
  self->state.table = std::move(table);
  self->set_down_handler([self](caf::down_msg& m) {
    auto& st = self->state;
    auto it = st.ids.find(m.source);
    if (it == st.ids.end())
      return; // passivated: already forgotten
    const std::string id = it->second;
    st.ids.erase(it);
    on_actor_exit(self, id, m.reason);
  });
  return {
      [self](command_atom, std::string& id, erased_command& c) {
        return route(self, std::move(id), true, std::move(c));
      },
      [self](state_atom, std::string& id) { return route(self, std::move(id), false, {}); },
      [self](command_atom, std::string& id, erased_command& c, reply_slot_ptr& slot) {
        route(self, id, true, std::move(c), std::move(slot));
      },
      [self](state_atom, std::string& id, reply_slot_ptr& slot) {
        route(self, id, false, {}, std::move(slot));
      },
      [self](find_atom, const std::string& id) {
        auto& table = *self->state.table;
        std::lock_guard lock{table.mutex};
        auto it = table.actors.find(id);
        return it == table.actors.end() ? caf::actor{} : it->second.handle;
      },
      [self](reply_atom, uint64_t token, erased_reply& r) { settle(self, token, std::move(r)); },
      [self](reply_atom, uint64_t token, caf::error& e) { settle(self, token, std::move(e)); },
      // Passivation: with nothing sent to it unanswered, no command can be on its way to the
      // actor, so forgetting it now is safe; the next command for the id spawns a fresh one.
      // (A slot settled at commit may leave the actor still applying those events: the fresh
      // actor reads them from the log.)
      [self](idle_atom, const std::string& id) {
        auto& st = self->state;
        std::lock_guard lock{st.table->mutex};
        auto it = st.table->actors.find(id);
        if (it == st.table->actors.end() || !it->second.idle() ||
            it->second.handle.address() != caf::actor_cast<caf::actor_addr>(self->current_sender()))
          return;
        auto handle = std::move(it->second.handle);
        st.table->actors.erase(it);
        st.ids.erase(handle.address());
        self->demonitor(handle);
        self->send(handle, stop_atom::value);
      },
  };
}

} // namespace

registry_ref spawn_registry(caf::actor_system& system, std::shared_ptr<const aggregate_type> type,
                            store_ref store) {
  auto table = std::make_shared<routes>();
  auto actor = spawn_top_level(system, registry_actor, std::move(type), std::move(store), table);
  return {std::move(actor), std::move(table)};
}

bool send_direct(routes& table, const std::string& id, bool is_command, erased_command& command,
                 const reply_slot_ptr& slot) {
  std::lock_guard lock{table.mutex};
  auto it = table.actors.find(id);
  if (it == table.actors.end())
    return false;
  it->second.add(slot_job{slot, is_command});
  send_job(it->second, 0, is_command, std::move(command), slot);
  return true;
}

} // namespace mire::actors::detail
