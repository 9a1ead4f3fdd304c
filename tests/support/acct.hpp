// Shared by the projection tests: the "acct" events they append, SQL in a transaction of its own,
// and the fold of the log those projections must equal.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include "mire/store/event_store.hpp"

namespace mire::test {

/// Balance per "acct-…" stream.
using balances = std::map<std::string, int64_t>;

inline event_data deposit(int64_t amount) {
  return {"acct.deposited", nlohmann::json{{"amount", amount}}.dump(), "{}", {}};
}

/// Runs one statement in its own transaction.
inline sql_rows sql(event_store& store, const std::string& text,
                    std::vector<sql_param> params = {}) {
  auto r = store.transact([&](transaction& tx) { return tx.execute(text, params); });
  REQUIRE_MESSAGE(r, r.error().what());
  return *r;
}

/// The fold of the log: each account's balance.
inline balances fold(event_store& store) {
  balances out;
  checkpoint cp;
  for (;;) {
    auto page = store.read_all(cp, 1000, log_filter{"acct", {"acct.deposited"}});
    REQUIRE(page);
    if (page->events.empty())
      return out;
    for (const auto& e : page->events)
      out[e.stream_id] += nlohmann::json::parse(e.data).at("amount").get<int64_t>();
    cp = page->next;
  }
}

} // namespace mire::test
