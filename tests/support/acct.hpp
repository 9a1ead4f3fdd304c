// Shared by the projection tests: the "acct" events they append, SQL in a transaction of its own,
// the fold of the log those projections must equal, and the balances projection they run.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include "mire/store/event_store.hpp"
#include "mire/store/projection.hpp"

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


// A balances read model; events of type acct.poison are refused while `refuse` is set (always,
// without one).
inline projection_definition balances_projection(std::shared_ptr<std::atomic<bool>> refuse = {},
                                                std::size_t batch = 100) {
  projection_definition def;
  def.name = "balances";
  def.filter.category = "acct";
  def.batch_size = batch;
  def.tables = {"balances"};
  def.setup = [](transaction& tx, const projection_context& ctx) -> result<void> {
    auto r = tx.execute("CREATE TABLE " + ctx.table("balances") +
                        " (id text PRIMARY KEY, balance bigint NOT NULL)");
    if (!r)
      return r.error();
    return {};
  };
  def.handler = [refuse](transaction& tx, const recorded_event& e,
                         const projection_context& ctx) -> result<void> {
    if (e.type == "acct.poison") {
      if (!refuse || refuse->load())
        return bad_input("acct.poison is not accepted");
      return {};
    }
    const auto amount = nlohmann::json::parse(e.data).at("amount").get<int64_t>();
    auto r = tx.execute("INSERT INTO " + ctx.table("balances") +
                            " AS b (id, balance) VALUES ($1, $2::bigint) ON CONFLICT (id) DO "
                            "UPDATE SET balance = b.balance + excluded.balance",
                        {e.stream_id, std::to_string(amount)});
    if (!r)
      return r.error();
    return {};
  };
  return def;
}

} // namespace mire::test
