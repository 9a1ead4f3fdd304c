// Postgres for the tests: one throwaway server per test binary, a fresh database per test.
#pragma once

#include <string>

#include "mire/store/event_store.hpp"

namespace mire::test {

/// URL of this binary's throwaway server (fsync off), started on first use and removed at exit,
/// also when the process is killed. Throws std::runtime_error when it cannot start.
const std::string& server_url();

/// Creates a database with a name unique to this process (t_<pid>_<n>) and returns its URL.
std::string fresh_database_url();

/// A migrated event store in a fresh database: `TEST_CASE_FIXTURE(pg_fixture, "...")`.
struct pg_fixture {
  std::string url;
  mire::event_store store;
  /// Throws std::runtime_error with the store's error when opening or migrating fails.
  pg_fixture();
};

} // namespace mire::test
