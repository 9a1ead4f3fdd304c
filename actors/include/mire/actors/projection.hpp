// The projection runner: one per projection per replica. It holds the projection's lease through
// a lease actor and, only while it holds it, drives a mire::projector (store/projection.hpp):
// catches up in fenced batches from the stored checkpoint, then follows live appends, woken by
// LISTEN mire_events with a poll fallback. On lease loss it rolls back the batch in progress
// and waits; a lost database is a pause (reconnect with backoff, resume from the checkpoint).
//
//   auto r = spawn_projection_runner(sys, store, balances_definition(), {.owner = "replica-1"});
//
// Messages:
//   (status_atom) -> runner_status   what this runner knows (store: projection_statuses())
// Exiting the runner (send_exit) releases its lease for another replica to take at once.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include <caf/atom.hpp>
#include <caf/fwd.hpp>
#include <caf/meta/type_name.hpp>

#include "mire/store/event_store.hpp"
#include "mire/store/projection.hpp"

namespace mire::actors {

using status_atom = caf::atom_constant<caf::atom("status")>;

/// How a runner behaves.
struct runner_options {
  std::string owner;                           ///< this replica's id; unique per replica
  std::chrono::milliseconds lease_ttl{5000};   ///< see lease_options::ttl
  std::chrono::milliseconds poll{500};         ///< read the log at least this often when idle
  std::chrono::milliseconds max_backoff{1500}; ///< cap of the retry delay after failures
};

/// What a runner knows about its projection (the store's view: projection_status_of()).
struct runner_status {
  std::string name;
  std::string owner;       ///< holder id of its lease actor: "<replica id>#<tag>"
  bool held = false;       ///< holds the lease, so drives the projection
  int64_t fence_token = 0; ///< of the lease held last
  checkpoint position;     ///< live generation's checkpoint after the last step
  int32_t live_generation = 0;
  int64_t applied = 0; ///< events this runner applied to the live generation
  int64_t parked = 0;  ///< events this runner dead-lettered
  int64_t steps = 0;   ///< steps completed (successful or not)
  bool caught_up = false;
  bool stopped = false;   ///< the projection is stopped (poison under `stop`)
  std::string last_error; ///< of the last failed step; empty after a good one
};

template <class Inspector> typename Inspector::result_type inspect(Inspector& f, runner_status& x) {
  return f(caf::meta::type_name("runner_status"), x.name, x.owner, x.held, x.fence_token,
           x.position.transaction_id, x.position.position, x.live_generation, x.applied, x.parked,
           x.steps, x.caught_up, x.stopped, x.last_error);
}

/// Spawns the runner of `definition` (and its lease actor for "projection:<name>"). Its
/// worker uses its own connections, opened with `store`'s options. bad_input names a bad
/// definition or option.
result<caf::actor> spawn_projection_runner(caf::actor_system& system, const event_store& store,
                                           projection_definition definition,
                                           runner_options options);

} // namespace mire::actors
