// The read model of the examples: one row per bank account (domain/bank.hpp) with its owner,
// balance and the version it reflects, kept current by a projection runner. Readers query the
// view `balances` with plain SQL; it shows the live generation's table (balances_gN), so a
// rebuild can fill the next generation beside it and switch without downtime.
#pragma once

#include <string>
#include <type_traits>
#include <variant>

#include "domain/bank.hpp"
#include "mire/store/codec.hpp"
#include "mire/store/projection.hpp"

namespace bank {

inline mire::projection_definition balances_projection() {
  mire::projection_definition d;
  d.name = "balances";
  d.filter.category = "account";
  d.tables = {"balances"};
  d.on_poison = mire::poison_policy::park;
  d.setup = [](mire::transaction& tx, const mire::projection_context& ctx) -> mire::result<void> {
    auto r = tx.execute("CREATE TABLE IF NOT EXISTS " + ctx.table("balances") +
                        " (account_id text PRIMARY KEY, owner text NOT NULL,"
                        "  balance bigint NOT NULL, version bigint NOT NULL,"
                        "  closed boolean NOT NULL DEFAULT false)");
    if (!r)
      return r.error();
    return {};
  };
  d.handler = [](mire::transaction& tx, const mire::recorded_event& e,
                 const mire::projection_context& ctx) -> mire::result<void> {
    auto event = mire::event_codec<account::event>::decode(e.type, e.data);
    if (!event)
      return event.error();
    const std::string table = ctx.table("balances"), v = std::to_string(e.version);
    auto r = std::visit(
        [&](const auto& x) -> mire::result<mire::sql_rows> {
          using T = std::decay_t<decltype(x)>;
          if constexpr (std::is_same_v<T, opened>)
            return tx.execute("INSERT INTO " + table + " VALUES ($1, $2, 0, $3::bigint)",
                              {e.stream_id, x.owner, v});
          else if constexpr (std::is_same_v<T, deposited>)
            return tx.execute("UPDATE " + table + " SET balance = balance + $2::bigint, "
                                                  "version = $3::bigint WHERE account_id = $1",
                              {e.stream_id, std::to_string(x.amount), v});
          else if constexpr (std::is_same_v<T, withdrawn>)
            return tx.execute("UPDATE " + table + " SET balance = balance - $2::bigint, "
                                                  "version = $3::bigint WHERE account_id = $1",
                              {e.stream_id, std::to_string(x.amount), v});
          else
            return tx.execute("UPDATE " + table + " SET closed = true, version = $2::bigint "
                                                  "WHERE account_id = $1",
                              {e.stream_id, v});
        },
        *event);
    if (!r)
      return r.error();
    return {};
  };
  return d;
}

} // namespace bank
