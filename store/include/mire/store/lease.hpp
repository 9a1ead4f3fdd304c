// Leases: at most one owner per resource at a time, with a fence token that grows whenever the
// lease changes hands (DESIGN rule 5). Each operation is one SQL statement on the database
// clock; no replica's clock is trusted for expiry.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "mire/store/error.hpp"
#include "mire/store/event_store.hpp"

namespace mire {

/// A lease as held: what its holder needs to renew it, release it and fence its writes.
struct lease {
  std::string resource;    ///< e.g. "projection:balances"
  std::string owner;       ///< the holder's id, unique per holder (replica id + purpose)
  int64_t fence_token = 0; ///< grows on every change of hands; writes check it
};

/// `owner` + "#" + a random tag: an id for one holder (one lease actor, one incarnation of a
/// process). A lease row that an earlier holder under the same owner id left live (a frozen
/// process and its replacement; a runner's previous lease actor whose release is still on its
/// way) is then not taken over with its fence unchanged, and that predecessor's late renew or
/// release cannot touch the new holder's lease.
std::string holder_id(std::string_view owner);

/// The owner id a holder id was made from ("replica-1#3fa94c0e21d7" -> "replica-1"); an id
/// without a tag is returned whole.
std::string_view holder_owner(std::string_view holder);

/// A lease row as stored, for status displays.
struct lease_info {
  std::string resource;
  std::string owner; ///< last holder (empty: never held)
  int64_t fence_token = 0;
  bool held = false;       ///< unexpired by the database clock
  std::string expires_at;  ///< ISO 8601 UTC ("-infinity" once released)
  std::string acquired_at; ///< when the current holder took it
};

/// Takes `resource` for `owner` until now() + ttl (database clock) if it is free, expired, or
/// already `owner`'s. Taking it from nobody or from an expired holder increments the fence;
/// re-acquiring one's own live lease keeps the fence and extends it. nullopt when another owner
/// holds it. Waits at most `ttl` (e.g. behind a projection batch that holds the lease row).
result<std::optional<lease>> acquire_lease(event_store& store, std::string_view resource,
                                           std::string_view owner, std::chrono::milliseconds ttl);

/// Extends a held lease to now() + ttl. false when it is no longer held by this fence (it
/// expired, or someone took it over): the holder must stop. Waits at most `ttl`.
result<bool> renew_lease(event_store& store, const lease& held, std::chrono::milliseconds ttl);

/// Gives the lease up at once, so another owner can take it without waiting for expiry. Does
/// nothing when `held` is no longer the current lease. Waits at most `timeout`.
result<void> release_lease(event_store& store, const lease& held,
                           std::chrono::milliseconds timeout = std::chrono::seconds(2));

/// Every lease row, ordered by resource.
result<std::vector<lease_info>> list_leases(event_store& store);

} // namespace mire
