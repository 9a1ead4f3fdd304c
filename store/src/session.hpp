// The store's operations on one connection. event_store runs them on a pooled connection in
// autocommit mode; transaction runs them inside its open transaction. One place for each rule.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "mire/store/event_store.hpp"
#include "pg.hpp"

namespace mire::detail {

/// Statement texts for one schema, built once per store.
struct statements {
  explicit statements(std::string_view schema);
  std::string append_one, append_one_known, append_one_any, append_many, append_many_any,
      find_event_ids, stream_version, read_stream, read_all, log_head, read_category, read_types,
      read_category_types, streams_all, streams_category, load_snapshot, save_snapshot, batch_heads,
      batch_copy, batch_positions, append_group_exact, append_group_set, append_group;
};

/// Checks an append's arguments (rule 10 of docs/ARCHITECTURE.md) and fills in missing event ids.
result<void> check_append(std::string_view stream_id, std::vector<event_data>& events,
                          const store_options& options);
result<void> check_stream_id(std::string_view stream_id);
result<void> check_category(std::string_view category);

/// Whether a failed write left the transaction's outcome unknown (the connection broke).
enum class tx_mode { autocommit, in_transaction };

/// `expected_known`: the caller knows version `expected` is committed (it wrote or read it), so
/// the probe that prevents holes can be skipped.
result<append_result> append(pg::connection& conn, const statements& sql, tx_mode mode,
                             std::string_view stream_id, expected_version expected,
                             bool expected_known, const std::vector<event_data>& events);
result<std::vector<recorded_event>> read_stream(pg::connection& conn, const statements& sql,
                                                std::string_view stream_id, int64_t from_version,
                                                std::size_t limit);
result<int64_t> stream_version(pg::connection& conn, const statements& sql,
                               std::string_view stream_id);
result<log_page> read_all(pg::connection& conn, const statements& sql, checkpoint after,
                          std::size_t limit, std::string_view category);
result<checkpoint> log_head(pg::connection& conn, const statements& sql);
result<log_page> read_all(pg::connection& conn, const statements& sql, checkpoint after,
                          std::size_t limit, const log_filter& filter);
/// Reads the columns "stream_id, <event columns>" of row `row`.
recorded_event event_row(const pg::rows& r, int row);
/// The event columns in the order event_row reads them, after stream_id.
extern const std::string_view event_columns;
/// Postgres text-format array literal of `values`.
std::string text_array(const std::vector<std::string_view>& values);
result<std::vector<stream_info>> streams(pg::connection& conn, const statements& sql,
                                         std::string_view category);
result<std::optional<snapshot>> load_snapshot(pg::connection& conn, const statements& sql,
                                              std::string_view stream_id);
result<void> save_snapshot(pg::connection& conn, const statements& sql, const snapshot& s,
                           const store_options& options);
result<batch_result> append_batch(pg::connection& conn, const statements& sql,
                                  std::vector<stream_append>& batch, const store_options& options);

/// `known[i]`: as append's `expected_known`, for group member i (its expected version is
/// committed, so its probe can be skipped).
result<std::vector<result<append_result>>> append_group(pg::connection& conn,
                                                       const statements& sql,
                                                       std::vector<stream_append>& group,
                                                       const std::vector<bool>& known,
                                                       const store_options& options);

/// A timestamptz as the session prints it (ISO DateStyle, UTC: "2026-11-26 07:05:41.12+00") in
/// ISO 8601 ("2026-11-26T07:05:41.12Z"); other text ("-infinity") is kept as it is.
std::string iso_time(std::string_view pg_time);

/// A value for an error message: control bytes and invalid UTF-8 escaped, values longer than
/// `max_chars` cut. Also what text from user code (a handler's error) becomes before it is
/// stored: Postgres refuses invalid UTF-8 and NUL bytes.
std::string printable(std::string_view value, std::size_t max_chars = 120);

/// Whether `sql` is a SET that lasts only for its transaction (SET LOCAL ..., SET TRANSACTION
/// ...), judged by its first two words past whitespace and comments.
bool sets_only_transaction(std::string_view sql);

/// A log filter's category and event types (read_all, projections).
result<void> check_filter(const log_filter& filter);

} // namespace mire::detail
