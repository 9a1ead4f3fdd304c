// Shared by the examples: where the database is. MIRE_DATABASE_URL when set, else the embedded
// server under MIRE_HOME (default ./.mire), started on demand like `mire` does.
#pragma once

#include <cstdlib>
#include <iostream>
#include <string>

#include "mire/store/embedded_postgres.hpp"
#include "mire/store/event_store.hpp"

namespace example {

/// Opens and migrates the event store, or exits with the error.
inline mire::event_store open_store() {
  std::string url;
  if (const char* env = std::getenv("MIRE_DATABASE_URL"); env && *env) {
    url = env;
  } else {
    const char* home = std::getenv("MIRE_HOME");
    auto db = mire::embedded_postgres::start({.home = home && *home ? home : "./.mire"});
    if (!db) {
      std::cerr << "cannot start the embedded database: " << db.error().what() << "\n";
      std::exit(mire::exit_code(db.error().code));
    }
    url = db->url();
  }
  auto store = mire::event_store::open({.url = url});
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

} // namespace example
