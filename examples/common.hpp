// Shared by the examples: their configuration (config/mire.ini, MIRE_* variables, --mire.* flags,
// as for `mire`), where the database is (mire.database.url / MIRE_DATABASE_URL when set, else the
// embedded server under MIRE_HOME, default ./.mire, started on demand), fresh stream ids so that
// an example can run again and again on the same database, and small helpers.
#pragma once

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "mire/config/config.hpp"
#include "mire/store/embedded_postgres.hpp"
#include "mire/store/event_store.hpp"
#include "mire/store/uuid.hpp"

namespace example {

/// The configuration open_store read: the store's options and the actor runtime's.
inline mire::config::settings& settings() {
  static mire::config::settings s;
  return s;
}

/// Reads the configuration, opens and migrates the event store, or exits with the error (2 for
/// a bad option, named with where it came from).
inline mire::event_store open_store(int argc, char** argv) {
  auto cfg = mire::config::load(argc, argv);
  if (!cfg) {
    std::cerr << cfg.error().what() << "\n";
    std::exit(mire::exit_code(cfg.error().code));
  }
  if (!cfg->rest.empty()) {
    std::cerr << "unknown argument '" << cfg->rest.front()
              << "' (options: --config FILE, --mire.SECTION.KEY=VALUE)\n";
    std::exit(2);
  }
  settings() = std::move(cfg->values);
  mire::store_options options = settings().store;
  if (options.url.empty()) {
    const char* home = std::getenv("MIRE_HOME");
    auto db = mire::embedded_postgres::start({.home = home && *home ? home : "./.mire"});
    if (!db) {
      std::cerr << "cannot start the embedded database: " << db.error().what() << "\n";
      std::exit(mire::exit_code(db.error().code));
    }
    options.url = db->url();
  }
  auto store = mire::event_store::open(options);
  if (!store) {
    std::cerr << store.error().what() << "\n";
    std::exit(mire::exit_code(store.error().code));
  }
  if (auto m = store->migrate(); !m) {
    std::cerr << m.error().what() << "\n";
    std::exit(mire::exit_code(m.error().code));
  }
  return std::move(*store);
}

/// The value of `r`, or prints what failed while doing `what` and exits with mire's exit code.
template <class T> T must(mire::result<T> r, std::string_view what) {
  if (!r) {
    std::cerr << what << " failed: " << r.error().what() << "\n";
    std::exit(mire::exit_code(r.error().code));
  }
  if constexpr (!std::is_void_v<T>)
    return std::move(*r);
}

/// A stream id no earlier run used: "<category>-<12 random hex digits>".
inline std::string fresh_id(std::string_view category) {
  return std::string(category) + "-" + mire::new_uuid().substr(24);
}

/// Milliseconds since construction.
class stopwatch {
public:
  double ms() const {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start_)
        .count();
  }

private:
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

} // namespace example
