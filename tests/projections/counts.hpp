// The projection of the multi-process tests: per stream of category "acct", how many events were
// applied, the last version, and the sum of their amounts. It refuses an event that is not the
// next version of its stream, so a duplicate or a gap stops it (poison policy stop) instead of
// going unnoticed.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "mire/store/projection.hpp"

namespace mire::test {

inline projection_definition counts_projection() {
  projection_definition d;
  d.name = "counts";
  d.filter.category = "acct";
  d.batch_size = 200;
  d.tables = {"counts"};
  d.on_poison = poison_policy::stop;
  d.setup = [](transaction& tx, const projection_context& ctx) -> result<void> {
    auto r = tx.execute("CREATE TABLE IF NOT EXISTS " + ctx.table("counts") +
                        " (stream_id text PRIMARY KEY, n bigint NOT NULL, "
                        "last_version bigint NOT NULL, total bigint NOT NULL)");
    if (!r)
      return r.error();
    return {};
  };
  d.handler = [](transaction& tx, const recorded_event& e,
                 const projection_context& ctx) -> result<void> {
    const auto amount = std::to_string(nlohmann::json::parse(e.data).at("amount").get<int64_t>());
    const auto version = std::to_string(e.version);
    auto next = tx.execute("UPDATE " + ctx.table("counts") +
                               " SET n = n + 1, last_version = $2::bigint, total = total + $3::bigint"
                               " WHERE stream_id = $1 AND last_version = $2::bigint - 1",
                           {e.stream_id, version, amount});
    if (!next)
      return next.error();
    if (next->affected == 1)
      return {};
    if (e.version == 1) {
      auto first = tx.execute("INSERT INTO " + ctx.table("counts") +
                                  " VALUES ($1, 1, 1, $2::bigint) ON CONFLICT DO NOTHING",
                              {e.stream_id, amount});
      if (!first)
        return first.error();
      if (first->affected == 1)
        return {};
    }
    return error{errc::bad_input, "event " + e.stream_id + " v" + version +
                                      " is not the next version of its stream in the read model "
                                      "(applied twice, or one skipped)"};
  };
  return d;
}

} // namespace mire::test
