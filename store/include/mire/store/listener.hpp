// A wake-up for followers of the global log: LISTEN on the channel the events table notifies
// after every insert statement, on a connection of its own. Only a hint that something may have
// been appended; a follower always re-reads the log from its checkpoint (DESIGN rule 3), so a
// lost or spurious wake-up costs a read, never an event.
#pragma once

#include <chrono>
#include <memory>
#include <string_view>

#include "mire/store/error.hpp"
#include "mire/store/event_store.hpp"

namespace mire {

/// The channel of the events table's NOTIFY; the payload is the schema that was appended to.
inline constexpr std::string_view log_channel = "mire_events";

/// Waits for notifications that events were appended to one store's schema. Blocking; one
/// thread at a time. Movable, not copyable.
class log_listener {
public:
  /// Listens for appends to `options.schema` on `options.url`. Does not connect yet.
  explicit log_listener(store_options options);
  /// Listens for appends to `store`'s schema, on a connection apart from its pool.
  explicit log_listener(const event_store& store);

  log_listener(log_listener&&) noexcept;
  log_listener& operator=(log_listener&&) noexcept;
  ~log_listener();

  /// Connects and LISTENs now, if not already. Call it before a follower's first read, so that
  /// an append committed between that read and the first wait() still wakes the wait.
  /// unavailable when the database cannot be reached (wait() then tries again, with backoff).
  result<void> connect();

  /// Waits up to `timeout`. true when a notification for this schema arrived, or when this call
  /// had to (re)connect (notifications sent while nobody listened are lost: read again); false
  /// when the time ran out, or early when a signal interrupted the wait (so a caller can check
  /// its stop flag). unavailable when connecting failed or the connection broke; the next call
  /// reconnects, but not before a backoff (100 ms doubling to 5 s) has passed since the failure,
  /// sleeping up to `timeout` for it, so a caller that loops on wait() never spins.
  result<bool> wait(std::chrono::milliseconds timeout);

  /// Whether the listening connection is up (as of the last call).
  bool connected() const;

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

} // namespace mire
