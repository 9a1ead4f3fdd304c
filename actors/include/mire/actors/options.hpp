// Settings of the actor runtime: the store actor's workers and group commit, the policy of
// aggregate actors (snapshots, passivation, conflict retries), and the scheduler of an actor
// system the runtime starts itself. No CAF.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>

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

/// How the threads of an actor system started for a runtime wait for work (CAF's scheduler):
/// runtime::start(store) and mire::config::start_runtime use it; a borrowed system keeps its own.
struct scheduler_options {
  /// "spinning": CAF's work-stealing scheduler, whose idle thread polls its queue briefly (3,000
  /// polls, ~25 µs here) and then sleeps until woken. After the outcome of a commit, the
  /// caller's next command usually arrives within that time (the caller was answered at the
  /// commit, in parallel), so it finds the thread awake: one thread wake-up fewer per command.
  /// "sharing": one queue, an idle thread sleeps at once and is woken by the next message.
  /// "stealing": CAF's default: polls, then sleeps 50 µs between polls (slow per hop).
  std::string policy = "spinning";
  /// Scheduler threads; 0 = CAF's default (the number of cores, at least 4). One by default: a
  /// command hops between actors several times, and on one thread a hop wakes nobody (the
  /// blocking database work runs on the store actor's own threads).
  std::size_t threads = 1;
};

/// bad_input naming the offending option, e.g. "store.workers must be at least 1".
result<void> validate(const store_actor_options& options);
result<void> validate(const aggregate_options& options);
result<void> validate(const runtime_options& options);
result<void> validate(const scheduler_options& options);

} // namespace mire::actors
