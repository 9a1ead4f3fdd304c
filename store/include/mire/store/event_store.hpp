// The event store: append-only streams in PostgreSQL, with optimistic concurrency, idempotent
// appends, a global log that no reader can skip through, snapshots, transaction scopes and batches.
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "mire/store/error.hpp"
#include "mire/store/types.hpp"

namespace mire {

namespace detail {
struct store_impl;
struct pooled_connection;
struct store_access;
} // namespace detail

/// How to reach the database and how to behave there.
struct store_options {
  std::string url;                      ///< libpq URL or "key=value" string
  std::string schema = "mire";          ///< Postgres schema holding mire's tables
  std::size_t pool_size = 8;            ///< connections kept open at most
  int connect_timeout_seconds = 5;      ///< "unavailable" after this, never a hang
  std::size_t max_event_bytes = 1 << 20;///< larger data or metadata is refused as bad input
  std::string application_name = "mire";
  /// append_group: how long an append with an exact expected version waits for a row lock that
  /// another transaction holds (it wrote the same stream version and has not ended) before it
  /// gets version_conflict instead of holding the rest of its group up. A group resent after
  /// a broken connection waits without limit: the lock may be its own first attempt's.
  int group_lock_timeout_ms = 500;
};

/// Whether `url` is something libpq can connect with (nothing connects): a URL, a "key=value"
/// string or a bare database name. bad_input with libpq's reason otherwise (the URL itself is
/// not repeated: it may hold a password). event_store::open checks it first.
result<void> check_database_url(const std::string& url);

class transaction;

/// A parameter of caller-written SQL: its text form (cast it in SQL, e.g. `$1::bigint`), or
/// nullopt for NULL.
using sql_param = std::optional<std::string>;

/// What caller-written SQL returned: rows of text values (nullopt for NULL) and, for INSERT,
/// UPDATE and DELETE, how many rows it affected.
struct sql_rows {
  std::vector<std::vector<std::optional<std::string>>> rows;
  int64_t affected = 0;

  std::size_t size() const { return rows.size(); }
  bool empty() const { return rows.empty(); }
  /// The value at (row, col); throws std::out_of_range when there is none.
  const std::optional<std::string>& at(std::size_t row, std::size_t col) const {
    return rows.at(row).at(col);
  }
};

/// Which events a reader of the global log wants: one category and/or some event types.
struct log_filter {
  std::string category;           ///< empty: every category
  std::vector<std::string> types; ///< empty: every type
};

/// Thread-safe handle to an event store; cheap to copy (copies share one connection pool).
class event_store {
public:
  /// Connects (checking the server answers) without touching the schema. unavailable when the
  /// server cannot be reached within the connect timeout; bad_input for a bad schema name.
  static result<event_store> open(store_options options);

  const store_options& options() const;

  /// Applies the numbered migrations not yet applied, under an advisory lock; safe to run from
  /// many processes at once and again and again. Returns how many were applied now.
  result<int> migrate();

  /// Appends `events` to `stream_id` if it is at `expected` (DESIGN rules 1, 2). On a stale
  /// expectation: version_conflict with the actual version, and nothing stored.
  result<append_result> append(std::string_view stream_id, expected_version expected,
                               std::vector<event_data> events);

  /// Events of one stream with version >= from_version, in version order, at most `limit`.
  result<std::vector<recorded_event>> read_stream(std::string_view stream_id,
                                                  int64_t from_version = 1,
                                                  std::size_t limit = SIZE_MAX);

  /// The stream's current version (0 when it has no events).
  result<int64_t> stream_version(std::string_view stream_id);

  /// Up to `limit` events of the global log (or one category) after `after`, in commit-safe
  /// order: never skips an event whose transaction commits late (DESIGN rule 3).
  result<log_page> read_all(checkpoint after, std::size_t limit,
                            std::string_view category = {});
  /// read_all with a filter on category and event types. `next` is the last matching event's
  /// checkpoint, so events skipped by the filter are scanned again by the next read.
  result<log_page> read_all(checkpoint after, std::size_t limit, const log_filter& filter);

  /// Where a reader that wants only what comes from now on starts: the checkpoint of the last
  /// event below the visibility horizon (start() for an empty log). read_all after it skips
  /// nothing; it may still return events that committed just before this call, while an older
  /// transaction was open.
  result<checkpoint> log_head();

  /// The streams (of one category, or all) with their versions, ordered by id.
  result<std::vector<stream_info>> streams(std::string_view category = {});

  /// Latest snapshot of a stream, if any.
  result<std::optional<snapshot>> load_snapshot(std::string_view stream_id);
  /// Stores `s` unless a snapshot of a later version is already there.
  result<void> save_snapshot(const snapshot& s);

  /// Appends to many streams in one transaction and one bulk copy (for ingest). Every stream's
  /// expected version is checked; any conflict stores nothing of the batch.
  result<batch_result> append_batch(std::vector<stream_append> batch);

  /// Group commit: appends to several different streams in ONE transaction and one round trip,
  /// each append with its own expected version and its own outcome — a stale expectation fails
  /// only that append (version_conflict), never its neighbours. The outer error is for the
  /// group as a whole (unavailable, commit_in_doubt, bad_input for a malformed group: the same
  /// stream twice). Inner results are in request order.
  result<std::vector<result<append_result>>> append_group(std::vector<stream_append> group);

  /// Opens a transaction scope (DESIGN rule 6). Prefer transact().
  result<transaction> begin();

  /// Runs `fn(transaction&)` in one transaction and commits when it returns a value; rolls back
  /// when it returns an error or throws. A conflict in any append rolls back every append.
  template <class F> auto transact(F&& fn) -> std::invoke_result_t<F, transaction&>;

private:
  friend struct detail::store_access;
  explicit event_store(std::shared_ptr<detail::store_impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<detail::store_impl> impl_;
};

/// A transaction scope: reads and appends on one connection inside one transaction. Rolled back
/// by the destructor unless committed. After any failed operation the transaction is rolled back
/// and every further call fails.
class transaction {
public:
  transaction(transaction&&) noexcept;
  transaction& operator=(transaction&&) noexcept;
  ~transaction();

  result<append_result> append(std::string_view stream_id, expected_version expected,
                               std::vector<event_data> events);
  result<std::vector<recorded_event>> read_stream(std::string_view stream_id,
                                                  int64_t from_version = 1,
                                                  std::size_t limit = SIZE_MAX);
  result<int64_t> stream_version(std::string_view stream_id);
  result<std::optional<snapshot>> load_snapshot(std::string_view stream_id);
  result<void> save_snapshot(const snapshot& s);

  /// Runs one SQL statement of yours (a projection's read-model writes, say) in this
  /// transaction. Pass every value as a parameter ($1, $2, ...), never inside the text.
  /// Statements are prepared once per connection, keyed by their text. A failure rolls the
  /// transaction back, as for every other call. A statement that changes the session beyond
  /// the transaction (SET without LOCAL, LISTEN, PREPARE, ...) costs the connection: it is
  /// closed afterwards, not pooled; SET LOCAL and SET TRANSACTION do not. COPY is refused.
  result<sql_rows> execute(std::string_view sql, const std::vector<sql_param>& params = {});

  /// Commits. commit_in_doubt when the connection broke while committing.
  result<void> commit();
  /// Rolls back (idempotent).
  void rollback();
  bool active() const;

private:
  friend class event_store;
  friend struct detail::store_access;
  explicit transaction(std::unique_ptr<detail::pooled_connection> conn);
  result<void> usable() const;
  template <class T> result<T> guard(result<T> r);
  std::unique_ptr<detail::pooled_connection> conn_;
  bool failed_ = false;
};

template <class F> auto event_store::transact(F&& fn) -> std::invoke_result_t<F, transaction&> {
  using R = std::invoke_result_t<F, transaction&>;
  auto tx = begin();
  if (!tx)
    return R{tx.error()};
  if constexpr (std::is_same_v<R, result<void>>) {
    auto r = fn(*tx);
    if (!r)
      return r;
    if (auto c = tx->commit(); !c)
      return c;
    return r;
  } else {
    auto r = fn(*tx);
    if (!r)
      return r;
    if (auto c = tx->commit(); !c)
      return R{c.error()};
    return r;
  }
}

} // namespace mire
