// The store's internals as seen by its own modules (leases, projections): the connection pool
// of an event_store and the connection of an open transaction. Private to mire_store.
#pragma once

#include <string>
#include <vector>

#include "mire/store/event_store.hpp"
#include "pg.hpp"

namespace mire::detail {

struct store_access {
  /// Runs a named statement on a pooled connection in autocommit mode. A connection lost on the
  /// way is replaced and the statement run again once: pass only statements safe to repeat.
  static result<pg::rows> run(const event_store& store, const std::string& name,
                              const std::string& sql, const std::vector<pg::param>& params);

  /// The connection of an open transaction, or nullptr once it is committed, rolled back or
  /// failed.
  static pg::connection* connection(transaction& tx);

  /// Marks `tx` failed and rolls it back (after an internal statement of a module failed).
  static void fail(transaction& tx);

  /// The store's schema (already validated).
  static const std::string& schema(const event_store& store);
};

} // namespace mire::detail
