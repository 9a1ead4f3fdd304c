// The lease actor (DESIGN rule 5): acquires and renews one resource's lease for its owner actor
// and tells it when ownership is gained and lost. Database calls run on a detached worker with
// its own connection; the lease actor itself only keeps time, so it declares the lease lost by
// the local monotonic clock even while the database does not answer at all.
//
// Messages to the owner:
//   (lease_gained_atom, resource, fence_token)  the owner may work, fencing writes with the token
//   (lease_lost_atom, resource, reason)         stop at once; the actor keeps trying to acquire
// Exiting the lease actor (send_exit), or its owner going down, releases the lease.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include <caf/atom.hpp>
#include <caf/fwd.hpp>

#include "mire/store/event_store.hpp"

namespace mire::actors {

using lease_gained_atom = caf::atom_constant<caf::atom("lease_gain")>;
using lease_lost_atom = caf::atom_constant<caf::atom("lease_lost")>;

/// One resource's lease and its timing.
struct lease_options {
  std::string resource;                ///< e.g. "projection:balances"
  /// Unique per holder, one holder per lease actor: mire::holder_id(replica id (+ purpose)).
  std::string owner;
  std::chrono::milliseconds ttl{5000}; ///< lease length, on the database clock
  /// How often to renew while held, or to try to acquire while not; 0 = ttl / 3.
  std::chrono::milliseconds renew_every{0};
  /// Declared lost this long before the lease can expire; 0 = ttl / 5. Covers message latency
  /// and clock-rate differences between this host and the database.
  std::chrono::milliseconds margin{0};
};

/// When a lease renewed (or acquired) by a round trip that started at `round_start` must be
/// given up by the local clock: round_start + ttl - margin. The database's expiry is at least
/// round_start + ttl, since its now() is read after the request was sent.
std::chrono::steady_clock::time_point
lease_deadline(std::chrono::steady_clock::time_point round_start, const lease_options& options);

/// bad_input naming the first invalid option (empty resource or owner, ttl under 30 ms, a
/// renew interval or margin that leaves no time to renew).
result<void> validate(const lease_options& options);

/// Spawns a lease actor for `owner` (which it monitors: when the owner goes down it releases
/// and exits). Its worker opens its own connection with `store`'s options and retries while
/// the database is away.
result<caf::actor> spawn_lease_actor(caf::actor_system& system, const event_store& store,
                                     lease_options options, caf::actor owner);
/// The same, given only the connection options.
result<caf::actor> spawn_lease_actor(caf::actor_system& system, const store_options& db,
                                     lease_options options, caf::actor owner);

} // namespace mire::actors
