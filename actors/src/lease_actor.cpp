// The lease actor: an event-based timekeeper in front of a detached worker that makes the
// blocking lease calls (acquire, renew, release) on its own connection.
#include "mire/actors/lease.hpp"

#include <optional>
#include <utility>

#include <caf/all.hpp>

#include "mire/actors/errors.hpp"
#include "mire/store/lease.hpp"
#include "top_level.hpp"

namespace mire::actors {

namespace {

using clock = std::chrono::steady_clock;
using tick_atom = caf::atom_constant<caf::atom("tick")>;
using check_atom = caf::atom_constant<caf::atom("check")>;
using acquire_atom = caf::atom_constant<caf::atom("acquire")>;
using renew_atom = caf::atom_constant<caf::atom("renew")>;
using release_atom = caf::atom_constant<caf::atom("release")>;

lease_options with_defaults(lease_options o) {
  if (o.renew_every.count() == 0)
    o.renew_every = o.ttl / 3;
  if (o.margin.count() == 0)
    o.margin = o.ttl / 5;
  return o;
}

struct worker_state {
  lease_options options;
  store_options db_options;
  std::optional<event_store> db; // opened on first use, and again when the server was away
  static inline const char* name = "mire.lease.worker";

  result<event_store*> store() {
    if (!db) {
      auto s = event_store::open(db_options);
      if (!s)
        return s.error();
      db.emplace(std::move(*s));
    }
    return &*db;
  }
};

// Blocking calls, one at a time, on the worker's own thread and connection.
caf::behavior lease_worker(caf::stateful_actor<worker_state>* self, lease_options options,
                           store_options db) {
  db.pool_size = 1;
  self->state.options = options;
  self->state.db_options = std::move(db);
  return {
      // Replies the fence granted, or 0 when another owner holds the lease.
      [self](acquire_atom) -> caf::result<int64_t> {
        auto& st = self->state;
        auto s = st.store();
        if (!s)
          return to_caf(s.error());
        auto r = acquire_lease(**s, st.options.resource, st.options.owner, st.options.ttl);
        if (!r)
          return to_caf(r.error());
        return *r ? (*r)->fence_token : int64_t{0};
      },
      [self](renew_atom, int64_t fence) -> caf::result<bool> {
        auto& st = self->state;
        auto s = st.store();
        if (!s)
          return to_caf(s.error());
        auto r =
            renew_lease(**s, lease{st.options.resource, st.options.owner, fence}, st.options.ttl);
        if (!r)
          return to_caf(r.error());
        return *r;
      },
      [self](release_atom, int64_t fence) -> caf::result<bool> {
        auto& st = self->state;
        auto s = st.store();
        if (!s)
          return to_caf(s.error());
        auto r =
            release_lease(**s, lease{st.options.resource, st.options.owner, fence}, st.options.ttl);
        if (!r)
          return to_caf(r.error());
        return true;
      },
  };
}

struct lease_state {
  lease_options options;
  caf::actor owner;
  caf::actor worker;
  bool held = false;
  int64_t fence = 0;
  clock::time_point deadline;
  bool busy = false; // a call is with the worker
  bool stopping = false;
  static inline const char* name = "mire.lease";
};

using lease_self = caf::stateful_actor<lease_state>*;

void lose(lease_self self, std::string reason) {
  auto& st = self->state;
  if (!st.held)
    return;
  st.held = false;
  self->send(st.owner, lease_lost_atom::value, st.options.resource, std::move(reason));
}

// One round: acquire while not held, renew while held. The deadline moves only after a
// successful round, measured from the round's start.
void round(lease_self self) {
  auto& st = self->state;
  if (st.busy || st.stopping)
    return;
  st.busy = true;
  const auto start = clock::now();
  if (st.held) {
    const auto fence = st.fence;
    self->request(st.worker, caf::infinite, renew_atom::value, fence)
        .then(
            [self, start, fence](bool renewed) {
              auto& st = self->state;
              st.busy = false;
              if (!st.held || st.fence != fence || st.stopping)
                return; // declared lost meanwhile: the next round acquires again
              if (!renewed) {
                lose(self, "the lease expired or was taken over");
                return;
              }
              st.deadline = lease_deadline(start, st.options);
              self->delayed_send(self, st.deadline - clock::now(), check_atom::value);
            },
            [self](caf::error&) { self->state.busy = false; }); // the deadline decides
  } else {
    self->request(st.worker, caf::infinite, acquire_atom::value)
        .then(
            [self, start](int64_t fence) {
              auto& st = self->state;
              st.busy = false;
              if (fence == 0 || st.stopping)
                return;
              const auto deadline = lease_deadline(start, st.options);
              if (clock::now() >= deadline)
                return; // granted too late to be of use; the next round re-acquires it
              st.held = true;
              st.fence = fence;
              st.deadline = deadline;
              self->send(st.owner, lease_gained_atom::value, st.options.resource, fence);
              self->delayed_send(self, st.deadline - clock::now(), check_atom::value);
            },
            [self](caf::error&) { self->state.busy = false; });
  }
}

// Releases the lease (when held) and exits.
void stop(lease_self self, caf::error reason) {
  auto& st = self->state;
  if (st.stopping)
    return;
  st.stopping = true;
  if (!st.held) {
    self->quit(reason);
    return;
  }
  st.held = false;
  self->request(st.worker, st.options.ttl, release_atom::value, st.fence)
      .then([self, reason](bool) { self->quit(reason); },
            [self, reason](caf::error&) { self->quit(reason); });
}

caf::behavior lease_actor(lease_self self, lease_options options, store_options db,
                          caf::actor owner) {
  auto& st = self->state;
  st.options = options;
  st.owner = owner;
  // Linked: the worker exits with the lease actor (after the call it may be blocked in).
  st.worker = self->spawn<caf::detached + caf::linked>(lease_worker, options, std::move(db));
  self->monitor(owner);
  self->set_down_handler([self](caf::down_msg& m) {
    if (m.source == self->state.owner)
      stop(self, caf::exit_reason::user_shutdown);
  });
  self->set_exit_handler([self](caf::exit_msg& m) {
    if (m.source == self->state.worker) { // the worker died: nothing can renew any more
      lose(self, "the lease worker stopped");
      self->quit(m.reason);
      return;
    }
    stop(self, m.reason);
  });
  self->send(self, tick_atom::value);
  return {
      [self](tick_atom) {
        if (self->state.stopping)
          return;
        round(self);
        self->delayed_send(self, self->state.options.renew_every, tick_atom::value);
      },
      [self](check_atom) {
        auto& st = self->state;
        if (st.held && clock::now() >= st.deadline)
          lose(self, "could not renew the lease before it could expire");
      },
  };
}

} // namespace

std::chrono::steady_clock::time_point
lease_deadline(std::chrono::steady_clock::time_point round_start, const lease_options& options) {
  const auto o = with_defaults(options);
  return round_start + o.ttl - o.margin;
}

result<void> validate(const lease_options& options) {
  const auto o = with_defaults(options);
  if (o.resource.empty())
    return bad_input("lease resource is empty");
  if (o.owner.empty())
    return bad_input("lease owner is empty");
  if (o.ttl < std::chrono::milliseconds(30))
    return bad_input("lease ttl " + std::to_string(o.ttl.count()) + " ms must be at least 30 ms");
  if (o.margin.count() < 0 || o.renew_every.count() <= 0 || o.renew_every + o.margin >= o.ttl)
    return bad_input("lease renew interval " + std::to_string(o.renew_every.count()) +
                     " ms plus margin " + std::to_string(o.margin.count()) +
                     " ms must be under the ttl of " + std::to_string(o.ttl.count()) + " ms");
  return {};
}

result<caf::actor> spawn_lease_actor(caf::actor_system& system, const event_store& store,
                                     lease_options options, caf::actor owner) {
  return spawn_lease_actor(system, store.options(), std::move(options), std::move(owner));
}

result<caf::actor> spawn_lease_actor(caf::actor_system& system, const store_options& db,
                                     lease_options options, caf::actor owner) {
  if (auto ok = validate(options); !ok)
    return ok.error();
  if (!owner)
    return bad_input("lease owner actor is invalid");
  return detail::spawn_top_level(system, lease_actor, with_defaults(std::move(options)), db,
                                 std::move(owner));
}

} // namespace mire::actors
