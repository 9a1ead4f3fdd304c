// Settings of the actor runtime: the store actor's workers and group commit, and the policy of
// aggregate actors (snapshots, passivation, conflict retries). No CAF.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>

#include "mire/store/error.hpp"

namespace mire::actors {

/// The store actor: blocking workers behind one handle, and how appends are grouped.
struct store_actor_options {
  /// Blocking workers, each on its own thread and using one connection at a time; the event
  /// store's pool_size must be at least this.
  std::size_t workers = 2;
  /// How long an append waits for others to join its group when a worker is free (0 = send at
  /// once; appends still group up while every worker is busy committing).
  std::chrono::microseconds group_window{0};
  /// Most appends in one group (one transaction, one round trip).
  std::size_t max_group = 256;
};

/// Policy of one aggregate type's actors.
struct aggregate_options {
  /// Write a snapshot whenever an append crosses a multiple of this many events (0 = never);
  /// only for snapshottable aggregates (repository.hpp).
  int64_t snapshot_every = 0;
  /// An actor idle this long stops; the next command respawns it from the log (0 = never).
  std::chrono::milliseconds passivate_after{std::chrono::minutes(1)};
  /// How often a command is decided again after a version conflict (another writer was first)
  /// before the caller gets the conflict.
  int max_retries = 3;
  /// Longest wait of an aggregate actor for the store actor; beyond it the command fails with
  /// timeout (its outcome is then unknown).
  std::chrono::milliseconds store_timeout{std::chrono::seconds(30)};
};

/// Everything a runtime needs besides the event store.
struct runtime_options {
  store_actor_options store;
  /// Default policy for every aggregate type; runtime::configure<A> overrides it per type.
  aggregate_options aggregates;
};

/// bad_input naming the offending option, e.g. "store.workers must be at least 1".
result<void> validate(const store_actor_options& options);
result<void> validate(const aggregate_options& options);
result<void> validate(const runtime_options& options);

} // namespace mire::actors
