// The projection runner: an event-based actor that follows its lease and paces the work, and a
// detached worker that runs the blocking projector calls (step, wait for a notification).
#include "mire/actors/projection.hpp"

#include <algorithm>
#include <atomic>
#include <memory>
#include <optional>
#include <utility>

#include <caf/all.hpp>

#include "mire/actors/errors.hpp"
#include "mire/actors/lease.hpp"
#include "top_level.hpp"

namespace mire::actors {

namespace {

using namespace std::chrono_literals;
using step_atom = caf::atom_constant<caf::atom("step")>;
using wait_atom = caf::atom_constant<caf::atom("wait")>;
using kick_atom = caf::atom_constant<caf::atom("kick")>;
using respawn_atom = caf::atom_constant<caf::atom("respawn")>;

/// A step's result as a message.
struct step_reply {
  int64_t applied = 0;
  int64_t parked = 0;
  bool caught_up = false;
  bool held_back = false;
  bool stopped = false;
  uint64_t tx = 0;
  int64_t position = 0;
  int32_t live_generation = 0;
};

template <class Inspector> typename Inspector::result_type inspect(Inspector& f, step_reply& x) {
  return f(caf::meta::type_name("step_reply"), x.applied, x.parked, x.caught_up, x.held_back,
           x.stopped, x.tx, x.position, x.live_generation);
}

// A wait is cut into slices this long at most, so that a runner that stops (or loses its lease)
// is not held up by its worker's wait for the rest of a long poll interval.
constexpr auto wait_slice = 100ms;

struct worker_state {
  store_options db;
  std::optional<projection_definition> definition; // until the projector is made
  std::optional<projector> engine;
  std::shared_ptr<std::atomic<bool>> cancel;
  static inline const char* name = "mire.projection.worker";

  // The projector on its own store (own pool), made once the database answers.
  result<projector*> get() {
    if (!engine) {
      auto s = event_store::open(db);
      if (!s)
        return s.error();
      auto p = projector::create(std::move(*s), *definition);
      if (!p)
        return p.error();
      engine.emplace(std::move(*p));
    }
    return &*engine;
  }
};

caf::behavior projection_worker(caf::stateful_actor<worker_state>* self, store_options db,
                                projection_definition def,
                                std::shared_ptr<std::atomic<bool>> cancel) {
  db.pool_size = 2;
  self->state.db = std::move(db);
  self->state.definition.emplace(std::move(def));
  self->state.cancel = std::move(cancel);
  return {
      [self](step_atom, std::string& resource, std::string& owner,
             int64_t fence) -> caf::result<step_reply> {
        try {
          auto p = self->state.get();
          if (!p)
            return to_caf(p.error());
          auto r = (*p)->step(lease{std::move(resource), std::move(owner), fence},
                              self->state.cancel.get());
          if (!r)
            return to_caf(r.error());
          return step_reply{static_cast<int64_t>(r->applied),
                            static_cast<int64_t>(r->parked),
                            r->caught_up,
                            r->held_back,
                            r->stopped,
                            r->position.transaction_id,
                            r->position.position,
                            r->live_generation};
        } catch (const std::exception& ex) { // e.g. bad_alloc: report, never kill the worker
          return to_caf(error{errc::internal, std::string("projection step: ") + ex.what()});
        }
      },
      [self](wait_atom, int64_t ms) -> caf::result<bool> {
        try {
          auto p = self->state.get();
          if (!p)
            return to_caf(p.error());
          const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
          for (;;) {
            const auto left = std::chrono::ceil<std::chrono::milliseconds>(
                until - std::chrono::steady_clock::now());
            auto r = (*p)->wait(std::clamp<std::chrono::milliseconds>(left, 0ms, wait_slice));
            if (!r)
              return to_caf(r.error());
            if (*r || left <= wait_slice || self->state.cancel->load())
              return *r;
          }
        } catch (const std::exception& ex) { // as for step: a failed wait, never a dead worker
          return to_caf(error{errc::internal, std::string("projection wait: ") + ex.what()});
        }
      },
  };
}

struct runner_state {
  runner_options options;
  lease_options lease;
  std::string holder; // the current lease actor's owner id (holder_id of options.owner)
  store_options db;
  std::string resource;
  caf::actor lease_actor;
  caf::actor worker;
  std::shared_ptr<std::atomic<bool>> cancel;
  std::optional<int64_t> fence; // set while the lease is held
  uint64_t epoch = 0;           // moves on every gain and loss: stale replies are ignored
  bool busy = false;            // the worker has a request of ours
  bool retry_armed = false;     // a delayed kick is on its way
  std::chrono::milliseconds backoff{0};
  std::chrono::milliseconds held_wait{0}; // how long to wait while events are held back
  runner_status status;
  static inline const char* name = "mire.projection";
};

using runner_self = caf::stateful_actor<runner_state>*;

void kick(runner_self self);

// After a failure: try again later, each time later, up to the cap; never spin.
void retry_later(runner_self self) {
  auto& st = self->state;
  st.backoff = std::clamp(st.backoff * 2, std::chrono::milliseconds(100), st.options.max_backoff);
  if (!st.retry_armed) {
    st.retry_armed = true;
    self->delayed_send(self, st.backoff, kick_atom::value);
  }
}

// Waits for a notification (or `timeout`), then steps again.
void idle(runner_self self, std::chrono::milliseconds timeout) {
  auto& st = self->state;
  st.busy = true;
  self->request(st.worker, caf::infinite, wait_atom::value, static_cast<int64_t>(timeout.count()))
      .then(
          [self](bool) {
            self->state.busy = false;
            kick(self);
          },
          [self](caf::error&) { // no wake-up connection: poll instead
            auto& st = self->state;
            st.busy = false;
            if (!st.retry_armed) {
              st.retry_armed = true;
              self->delayed_send(self, st.options.poll, kick_atom::value);
            }
          });
}

// Runs one step if the lease is held and the worker is free.
void kick(runner_self self) {
  auto& st = self->state;
  if (st.busy || !st.fence)
    return;
  st.busy = true;
  const auto epoch = st.epoch;
  self->request(st.worker, caf::infinite, step_atom::value, st.resource, st.holder, *st.fence)
      .then(
          [self, epoch](step_reply& r) {
            auto& st = self->state;
            st.busy = false;
            st.backoff = 0ms;
            ++st.status.steps;
            st.status.applied += r.applied;
            st.status.parked += r.parked;
            st.status.caught_up = r.caught_up;
            st.status.stopped = r.stopped;
            st.status.position = {r.tx, r.position};
            st.status.live_generation = r.live_generation;
            if (epoch == st.epoch) // else it would hide why the lease changed hands
              st.status.last_error.clear();
            // Events held back by an older open transaction come into reach when it ends,
            // which may notify nobody: look again after 10 ms, 20, 40 ... up to the poll.
            st.held_wait =
                r.held_back ? std::min(std::max(st.held_wait * 2, 10ms), st.options.poll) : 0ms;
            if (epoch != st.epoch || !st.fence)
              kick(self);
            else if (r.caught_up)
              idle(self, r.held_back ? st.held_wait : st.options.poll);
            else
              kick(self);
          },
          [self](caf::error& e) {
            auto& st = self->state;
            st.busy = false;
            ++st.status.steps;
            st.status.last_error = from_caf(e).what();
            retry_later(self);
          });
}

// Spawns the lease actor (again, after it died): the runner owns it and watches it.
void spawn_lease(runner_self self) {
  auto& st = self->state;
  auto lease = st.lease;
  lease.owner = holder_id(st.options.owner); // a new holder each time: see holder_id
  auto a = spawn_lease_actor(self->system(), st.db, lease, caf::actor_cast<caf::actor>(self));
  if (!a) { // options were validated before: only a broken system gets here
    st.status.last_error = "cannot start the lease actor: " + a.error().what();
    self->delayed_send(self, st.options.max_backoff, respawn_atom::value);
    return;
  }
  st.lease_actor = *a;
  st.holder = lease.owner;
  st.status.owner = st.holder;
  self->monitor(st.lease_actor);
}

caf::behavior runner_actor(runner_self self, runner_options options, store_options db,
                           projection_definition def, lease_options lease) {
  auto& st = self->state;
  st.options = std::move(options);
  st.resource = lease.resource;
  st.lease = std::move(lease);
  st.db = db;
  st.status.name = def.name;
  st.cancel = std::make_shared<std::atomic<bool>>(false);
  st.worker =
      self->spawn<caf::detached + caf::linked>(projection_worker, db, std::move(def), st.cancel);
  self->set_exit_handler([self](caf::exit_msg& m) {
    auto& st = self->state;
    st.cancel->store(true);
    if (st.lease_actor)
      self->send_exit(st.lease_actor, m.reason); // it releases the lease, then exits
    self->quit(m.reason);
  });
  // A lease actor that died took the lease with it: stop, and start a new one after a pause.
  self->set_down_handler([self](caf::down_msg& m) {
    auto& st = self->state;
    if (m.source != st.lease_actor)
      return;
    st.lease_actor = nullptr;
    st.fence.reset();
    ++st.epoch;
    st.cancel->store(true);
    st.status.last_error = "the lease actor stopped: " + caf::to_string(m.reason);
    self->delayed_send(self, st.options.max_backoff, respawn_atom::value);
  });
  spawn_lease(self);
  return {
      [self](lease_gained_atom, const std::string&, int64_t fence) {
        auto& st = self->state;
        st.fence = fence;
        ++st.epoch;
        st.cancel->store(false);
        st.status.fence_token = fence;
        kick(self);
      },
      [self](lease_lost_atom, const std::string&, const std::string& reason) {
        auto& st = self->state;
        st.fence.reset();
        ++st.epoch;
        st.cancel->store(true); // a batch in progress rolls back
        st.status.last_error = "lease lost: " + reason;
      },
      [self](kick_atom) {
        self->state.retry_armed = false;
        kick(self);
      },
      [self](status_atom) {
        auto out = self->state.status;
        out.held = self->state.fence.has_value(); // what decides whether it steps
        return out;
      },
      [self](respawn_atom) {
        if (!self->state.lease_actor)
          spawn_lease(self);
      },
  };
}

} // namespace

// A lease owner is at most 512 bytes; holder_id adds 13 ("#" and a 12-digit tag).
constexpr std::size_t max_owner_bytes = 512 - 13;

result<caf::actor> spawn_projection_runner(caf::actor_system& system, const event_store& store,
                                           projection_definition definition,
                                           runner_options options) {
  if (options.owner.empty())
    return bad_input("projection runner owner (replica id) is empty");
  if (options.poll.count() <= 0)
    return bad_input("projection runner poll interval must be positive");
  if (options.max_backoff < std::chrono::milliseconds(100))
    return bad_input("projection runner max backoff must be at least 100 ms");
  // Checks the definition now (no database call) rather than in the worker.
  if (auto p = projector::create(store, definition); !p)
    return p.error();
  // The resource names the projection; each lease actor holds it as holder_id(replica id).
  if (options.owner.size() > max_owner_bytes)
    return bad_input("projection runner owner (replica id) must be at most " +
                     std::to_string(max_owner_bytes) + " bytes, got " +
                     std::to_string(options.owner.size()));
  lease_options lease{projection_resource(definition.name), options.owner, options.lease_ttl};
  if (auto ok = validate(lease); !ok)
    return ok.error();
  return detail::spawn_top_level(system, runner_actor, std::move(options), store.options(),
                                 std::move(definition), std::move(lease));
}

} // namespace mire::actors
