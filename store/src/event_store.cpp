#include "mire/store/event_store.hpp"

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <utility>

#include <fmt/format.h>
#include <libpq-fe.h>

#include "access.hpp"
#include "pg.hpp"
#include "schema.hpp"
#include "session.hpp"

namespace mire {

namespace detail {

/// Wakes LISTEN mire_events followers (projection runners, `mire tail`) after events were
/// committed: pg_notify from a thread of its own, off the appender's path, and coalesced (at
/// most one per `window`). A NOTIFY inside each append transaction would make every commit
/// queue on Postgres's notify lock, halving concurrent appends. Only a wake-up: followers read
/// the log from their checkpoint and poll as a fallback (for writers outside mire, say).
class append_notifier {
public:
  static constexpr auto window = std::chrono::milliseconds(20);

  template <class Connect>
  append_notifier(Connect connect, std::string schema)
      : connect_(std::move(connect)), schema_(std::move(schema)) {}

  ~append_notifier() {
    {
      std::lock_guard lock{mutex_};
      stop_ = true;
    }
    wake_.notify_one();
    if (thread_.joinable())
      thread_.join(); // sends what is pending first: a short-lived `mire append` still notifies
  }

  /// Events were committed: a notification follows soon.
  void poke() {
    {
      std::lock_guard lock{mutex_};
      if (pending_)
        return;
      pending_ = true;
      if (!thread_.joinable())
        thread_ = std::thread([this] { run(); });
    }
    wake_.notify_one();
  }

private:
  void run() {
    std::unique_ptr<pg::connection> conn;
    std::unique_lock lock{mutex_};
    for (;;) {
      wake_.wait(lock, [&] { return pending_ || stop_; });
      if (!pending_)
        return;
      pending_ = false;
      lock.unlock();
      if (!conn || !conn->healthy()) {
        auto c = connect_();
        conn = c ? std::move(*c) : nullptr;
      }
      if (conn)
        (void)conn->query("mire_notify", "SELECT pg_notify('mire_events', $1)", {schema_});
      std::this_thread::sleep_for(window);
      lock.lock();
    }
  }

  std::function<result<std::unique_ptr<pg::connection>>()> connect_;
  std::string schema_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool pending_ = false, stop_ = false;
  std::thread thread_;
};

/// Shared state of an event_store: options, statement texts and the connection pool.
struct store_impl {
  store_options options;
  statements sql;

  std::mutex mutex;
  std::condition_variable returned;
  std::vector<std::unique_ptr<pg::connection>> idle;
  std::size_t open = 0;  // connections handed out or idle

  // Stream versions this store has seen committed. Events are never deleted, so "version v of
  // stream s exists" stays true, and an append expecting v may skip the probe that prevents holes.
  std::mutex heads_mutex;
  std::unordered_map<std::string, int64_t> known_heads;
  static constexpr std::size_t max_known_heads = 100'000;

  append_notifier notifier{[this] { return connect(); }, options.schema};

  explicit store_impl(store_options o) : options(std::move(o)), sql(options.schema) {}

  bool knows(std::string_view stream_id, int64_t version) {
    std::lock_guard lock{heads_mutex};
    auto it = known_heads.find(std::string(stream_id));
    return it != known_heads.end() && it->second >= version;
  }

  void remember(std::string_view stream_id, int64_t version) {
    std::lock_guard lock{heads_mutex};
    if (known_heads.size() >= max_known_heads)
      known_heads.clear();  // a cache, not a record: forgetting only costs a probe
    auto& head = known_heads[std::string(stream_id)];
    head = std::max(head, version);
  }

  result<std::unique_ptr<pg::connection>> connect() {
    return pg::connection::open(options.url, options.connect_timeout_seconds,
                                options.application_name);
  }

  /// A connection from the pool, or a new one while under pool_size; waits otherwise.
  result<std::unique_ptr<pg::connection>> acquire() {
    {
      std::unique_lock lock{mutex};
      const auto deadline =
          std::chrono::steady_clock::now() + std::chrono::seconds(options.connect_timeout_seconds * 6);
      while (idle.empty() && open >= options.pool_size)
        if (returned.wait_until(lock, deadline) == std::cv_status::timeout)
          return error{errc::timeout, "no database connection became free in time"};
      if (!idle.empty()) {
        auto c = std::move(idle.back());
        idle.pop_back();
        return c;
      }
      ++open;
    }
    auto c = connect();
    if (!c) {
      std::lock_guard lock{mutex};
      --open;
      returned.notify_one();
    }
    return c;
  }

  /// Returns a connection; a broken one, or one left inside a transaction, is closed instead.
  void release(std::unique_ptr<pg::connection> c) {
    std::lock_guard lock{mutex};
    // One whose session settings user SQL changed (SET TimeZone ...) is closed, not reused.
    if (c && c->healthy() && !c->in_transaction() && c->session_as_set_up())
      idle.push_back(std::move(c));
    else
      --open;
    returned.notify_one();
  }

  /// Drops every idle connection (after a lost connection: they are likely broken too).
  void drop_idle() {
    std::lock_guard lock{mutex};
    open -= idle.size();
    idle.clear();
  }
};

/// A pooled connection, returned to its pool on destruction.
struct pooled_connection {
  std::shared_ptr<store_impl> pool;
  std::unique_ptr<pg::connection> conn;
  bool appended = false; ///< a transaction on it appended events: notify after its commit
  ~pooled_connection() {
    if (conn)
      pool->release(std::move(conn));
  }
};

} // namespace detail

namespace {

// A resend after an attempt whose commit is in doubt settles it only with an answer from the
// database (stored, a duplicate, a conflict, bad input). Failing again without one (no
// connection, lost again) leaves it in doubt, and the caller must hear that, with the first
// attempt's message naming what to resend.
bool settles(const error& e) {
  return e.code != errc::unavailable && e.code != errc::timeout &&
         e.code != errc::commit_in_doubt && e.code != errc::internal;
}

error still_in_doubt(const error& doubt, const error& resend) {
  error e = doubt;
  e.message += "; the resend failed too: " + resend.message;
  return e;
}

template <class R> R after_doubt(const std::optional<error>& doubt, R resend) {
  if (resend || !doubt || settles(resend.error()))
    return resend;
  return R{still_in_doubt(*doubt, resend.error())};
}

// A resent group can succeed as a whole while single members fail without an answer (the
// connection broke again while their outcome was being looked up): each of those stays in doubt.
template <class T>
result<std::vector<result<T>>> after_doubt(const std::optional<error>& doubt,
                                           result<std::vector<result<T>>> resend) {
  if (!resend || !doubt)
    return after_doubt<result<std::vector<result<T>>>>(doubt, std::move(resend));
  for (auto& member : *resend)
    if (!member && !settles(member.error())) {
      error e = still_in_doubt(*doubt, member.error());
      e.stream_id = member.error().stream_id;
      member = std::move(e);
    }
  return resend;
}

// Runs `op(conn)` on a pooled connection. A connection lost on the way (the server restarted,
// an idle connection went stale) is replaced once and the operation run again: every operation
// passed here is safe to repeat (reads, and appends, which are idempotent by event id).
template <class F> auto with_connection(const std::shared_ptr<detail::store_impl>& impl, F&& op) {
  using R = std::invoke_result_t<F, pg::connection&>;
  std::optional<error> doubt; // the first attempt's, when its commit is in doubt
  for (int attempt = 0;; ++attempt) {
    auto c = impl->acquire();
    if (!c)
      return after_doubt(doubt, R{c.error()});
    detail::pooled_connection held{impl, std::move(*c)};
    auto r = op(*held.conn);
    const bool lost = !held.conn->healthy();
    impl->release(std::move(held.conn));
    if (r || !lost || attempt > 0)
      return after_doubt(doubt, std::move(r));
    if (r.error().code == errc::commit_in_doubt)
      doubt = r.error();
    impl->drop_idle();
  }
}

} // namespace

result<void> check_database_url(const std::string& url) {
  // libpq's own test: a URL prefix or an '=' makes a connection string, anything else is a
  // database name (see expand_dbname in pg::connect).
  const bool conninfo = url.find('=') != std::string::npos || url.rfind("postgresql://", 0) == 0 ||
                        url.rfind("postgres://", 0) == 0;
  if (!conninfo)
    return {};
  char* why = nullptr;
  PQconninfoOption* parsed = PQconninfoParse(url.c_str(), &why);
  if (parsed != nullptr) {
    PQconninfoFree(parsed);
    return {};
  }
  std::string reason = why != nullptr ? why : "libpq cannot parse it";
  PQfreemem(why);
  while (!reason.empty() && (reason.back() == '\n' || reason.back() == ' '))
    reason.pop_back();
  return bad_input("the database URL is not one libpq accepts: " + reason);
}

result<event_store> event_store::open(store_options options) {
  if (auto ok = check_database_url(options.url); !ok)
    return ok.error();
  if (auto ok = detail::check_schema_name(options.schema); !ok)
    return ok.error();
  if (options.pool_size == 0)
    return bad_input("pool_size must be at least 1");
  if (options.group_lock_timeout_ms < 1)
    return bad_input(fmt::format("group lock timeout {} ms must be at least 1 ms",
                                 options.group_lock_timeout_ms));
  if (options.connect_timeout_seconds < 1)
    return bad_input(fmt::format("connect timeout {} s must be at least 1 second",
                                 options.connect_timeout_seconds));
  auto impl = std::make_shared<detail::store_impl>(std::move(options));
  // Fail fast when the server is not there, and keep the connection for the first use.
  auto c = impl->acquire();
  if (!c)
    return c.error();
  impl->release(std::move(*c));
  return event_store{std::move(impl)};
}

const store_options& event_store::options() const { return impl_->options; }

result<int> event_store::migrate() {
  return with_connection(impl_, [&](pg::connection& c) {
    return detail::migrate(c, impl_->options.schema);
  });
}

result<append_result> event_store::append(std::string_view stream_id, expected_version expected,
                                          std::vector<event_data> events) {
  if (auto ok = detail::check_append(stream_id, events, impl_->options); !ok)
    return ok.error();
  std::optional<error> doubt; // the first attempt's, when its commit is in doubt
  for (int attempt = 0;; ++attempt) {
    auto c = impl_->acquire();
    if (!c)
      return after_doubt(doubt, result<append_result>{c.error()});
    detail::pooled_connection held{impl_, std::move(*c)};
    const bool known = !expected.is_any() && impl_->knows(stream_id, expected.value());
    auto r = detail::append(*held.conn, impl_->sql, detail::tx_mode::autocommit, stream_id,
                            expected, known, events);
    if (r) {
      impl_->remember(stream_id, r->version);
      impl_->notifier.poke();
    }
    // In doubt: resend once on a fresh connection. The event ids make the resend idempotent, so
    // it either stores the events or reports the first attempt's positions.
    if (!r && r.error().code == errc::commit_in_doubt && attempt == 0) {
      doubt = r.error();
      held.conn.reset();
      impl_->release(nullptr);
      impl_->drop_idle();
      continue;
    }
    return after_doubt(doubt, std::move(r));
  }
}

result<std::vector<recorded_event>> event_store::read_stream(std::string_view stream_id,
                                                             int64_t from_version,
                                                             std::size_t limit) {
  auto r = with_connection(impl_, [&](pg::connection& c) {
    return detail::read_stream(c, impl_->sql, stream_id, from_version, limit);
  });
  if (r && !r->empty())
    impl_->remember(stream_id, r->back().version);
  return r;
}

result<checkpoint> event_store::log_head() {
  return with_connection(impl_, [&](pg::connection& c) { return detail::log_head(c, impl_->sql); });
}

result<int64_t> event_store::stream_version(std::string_view stream_id) {
  if (auto ok = detail::check_stream_id(stream_id); !ok)
    return ok.error();
  return with_connection(impl_, [&](pg::connection& c) {
    return detail::stream_version(c, impl_->sql, stream_id);
  });
}

result<log_page> event_store::read_all(checkpoint after, std::size_t limit,
                                       std::string_view category) {
  return with_connection(impl_, [&](pg::connection& c) {
    return detail::read_all(c, impl_->sql, after, limit, category);
  });
}

result<log_page> event_store::read_all(checkpoint after, std::size_t limit,
                                       const log_filter& filter) {
  return with_connection(impl_, [&](pg::connection& c) {
    return detail::read_all(c, impl_->sql, after, limit, filter);
  });
}

result<std::vector<stream_info>> event_store::streams(std::string_view category) {
  return with_connection(impl_, [&](pg::connection& c) {
    return detail::streams(c, impl_->sql, category);
  });
}

result<std::optional<snapshot>> event_store::load_snapshot(std::string_view stream_id) {
  return with_connection(impl_, [&](pg::connection& c) {
    return detail::load_snapshot(c, impl_->sql, stream_id);
  });
}

result<void> event_store::save_snapshot(const snapshot& s) {
  return with_connection(impl_, [&](pg::connection& c) {
    return detail::save_snapshot(c, impl_->sql, s, impl_->options);
  });
}

result<batch_result> event_store::append_batch(std::vector<stream_append> batch) {
  auto r = with_connection(impl_, [&](pg::connection& c) {
    return detail::append_batch(c, impl_->sql, batch, impl_->options);
  });
  if (r)
    impl_->notifier.poke();
  return r;
}

result<std::vector<result<append_result>>> event_store::append_group(
    std::vector<stream_append> group) {
  std::vector<bool> known;
  known.reserve(group.size());
  for (const auto& a : group)
    known.push_back(!a.expected.is_any() && impl_->knows(a.stream_id, a.expected.value()));
  // A resend (the first attempt's connection broke) may find its own first attempt still
  // holding the rows, uncommitted: it must wait for that attempt's end to learn the outcome. With
  // the group's lock timeout it would take its own events for another writer's and report a
  // conflict, and the caller would decide the command again over events that may yet commit.
  bool resend = false;
  auto r = with_connection(impl_, [&](pg::connection& c) {
    auto options = impl_->options;
    if (std::exchange(resend, true))
      options.group_lock_timeout_ms = 0; // no lock timeout
    return detail::append_group(c, impl_->sql, group, known, options);
  });
  if (r) {
    for (std::size_t i = 0; i < group.size(); ++i)
      if ((*r)[i])
        impl_->remember(group[i].stream_id, (*r)[i]->version);
    impl_->notifier.poke();
  }
  return r;
}

result<transaction> event_store::begin() {
  auto c = impl_->acquire();
  if (!c)
    return c.error();
  auto held = std::make_unique<detail::pooled_connection>(impl_, std::move(*c));
  if (auto r = held->conn->exec("BEGIN"); !r)
    return r.error();
  return transaction{std::move(held)};
}

// --- transaction ---------------------------------------------------------------------------

transaction::transaction(std::unique_ptr<detail::pooled_connection> conn) : conn_(std::move(conn)) {}
transaction::transaction(transaction&&) noexcept = default;
transaction& transaction::operator=(transaction&&) noexcept = default;
transaction::~transaction() { rollback(); }

bool transaction::active() const { return conn_ && conn_->conn && !failed_; }

result<void> transaction::usable() const {
  if (failed_)
    return bad_input("the transaction failed earlier and was rolled back");
  if (!conn_ || !conn_->conn)
    return bad_input("the transaction has already been committed or rolled back");
  return {};
}

template <class T> result<T> transaction::guard(result<T> r) {
  if (!r) {
    failed_ = true;
    rollback();
  }
  return r;
}

result<append_result> transaction::append(std::string_view stream_id, expected_version expected,
                                          std::vector<event_data> events) {
  if (auto ok = usable(); !ok)
    return ok.error();
  auto& impl = *conn_->pool;
  if (auto ok = detail::check_append(stream_id, events, impl.options); !ok)
    return guard(result<append_result>{ok.error()});
  // Committed versions the store knows of may skip the probe; this transaction's own appends are
  // not remembered, since they may yet roll back.
  const bool known = !expected.is_any() && impl.knows(stream_id, expected.value());
  auto r = guard(detail::append(*conn_->conn, impl.sql, detail::tx_mode::in_transaction, stream_id,
                                expected, known, events));
  if (r)
    conn_->appended = true;
  return r;
}

result<std::vector<recorded_event>> transaction::read_stream(std::string_view stream_id,
                                                             int64_t from_version,
                                                             std::size_t limit) {
  if (auto ok = usable(); !ok)
    return ok.error();
  return guard(detail::read_stream(*conn_->conn, conn_->pool->sql, stream_id, from_version, limit));
}

result<int64_t> transaction::stream_version(std::string_view stream_id) {
  if (auto ok = usable(); !ok)
    return ok.error();
  if (auto ok = detail::check_stream_id(stream_id); !ok)
    return guard(result<int64_t>{ok.error()});
  return guard(detail::stream_version(*conn_->conn, conn_->pool->sql, stream_id));
}

result<std::optional<snapshot>> transaction::load_snapshot(std::string_view stream_id) {
  if (auto ok = usable(); !ok)
    return ok.error();
  return guard(detail::load_snapshot(*conn_->conn, conn_->pool->sql, stream_id));
}

result<void> transaction::save_snapshot(const snapshot& s) {
  if (auto ok = usable(); !ok)
    return ok;
  return guard(detail::save_snapshot(*conn_->conn, conn_->pool->sql, s, conn_->pool->options));
}

result<sql_rows> transaction::execute(std::string_view sql, const std::vector<sql_param>& params) {
  if (auto ok = usable(); !ok)
    return ok.error();
  std::vector<pg::param> values;
  values.reserve(params.size());
  for (const auto& p : params)
    values.push_back(p ? pg::param{*p} : pg::param{});
  auto r = conn_->conn->query_text(std::string(sql), values);
  if (!r)
    return guard(result<sql_rows>{std::move(r).error()});
  // What changes the session beyond this transaction (a SET without LOCAL of a setting the server
  // does not report, LISTEN, DEALLOCATE ...) must not follow the connection back into the pool,
  // where the store's own appends would run under it: such a connection is closed on return.
  // SET LOCAL and SET TRANSACTION end with the transaction (a projection handler may use them
  // in every batch, which would otherwise cost a new connection each time).
  const std::string_view tag = PQcmdStatus(r->get());
  for (std::string_view changes :
       {"SET", "RESET", "DISCARD", "DEALLOCATE", "PREPARE", "LISTEN", "UNLISTEN", "LOAD"})
    if (tag == changes && !(tag == "SET" && detail::sets_only_transaction(sql)))
      conn_->conn->taint();
  if (const auto status = PQresultStatus(r->get());
      status == PGRES_COPY_IN || status == PGRES_COPY_OUT) {
    conn_->conn->taint(); // mid-COPY: closed, not cleaned up
    return guard(result<sql_rows>{bad_input(
        fmt::format("COPY cannot run through execute ('{}'); use append_batch for bulk writes; the "
                    "transaction was rolled back",
                    detail::printable(sql)))});
  }
  // COMMIT, ROLLBACK and the like belong to commit() and rollback(): after one, later appends
  // would run outside any transaction, and a conflict would no longer undo the earlier ones.
  if (!conn_->conn->in_transaction())
    return guard(result<sql_rows>{bad_input(fmt::format(
        "the statement '{}' ended the transaction (use commit() or rollback()); what it "
        "committed stays committed, and this transaction takes nothing more",
        detail::printable(sql)))});
  sql_rows out;
  out.affected = r->affected();
  const int cols = PQnfields(r->get());
  out.rows.reserve(r->size());
  for (int i = 0; i < r->size(); ++i) {
    auto& row = out.rows.emplace_back();
    row.reserve(cols);
    for (int c = 0; c < cols; ++c)
      row.push_back(r->is_null(i, c) ? std::nullopt : std::optional<std::string>{r->str(i, c)});
  }
  return out;
}

result<void> transaction::commit() {
  if (auto ok = usable(); !ok)
    return ok;
  auto r = conn_->conn->exec("COMMIT");
  const bool lost = !conn_->conn->healthy();
  // A transaction the server had already aborted answers COMMIT with ROLLBACK, not an error.
  const bool rolled_back = r && std::string_view(PQcmdStatus(r->get())) != "COMMIT";
  auto pool = conn_->pool;
  const bool appended = conn_->appended;
  conn_.reset();  // back to the pool (or closed, when broken)
  if (rolled_back)
    return error{errc::internal, "the server had aborted the transaction: COMMIT rolled it back, "
                                 "and nothing of it was committed"};
  if (r) {
    if (appended)
      pool->notifier.poke();
    return {};
  }
  auto err = std::move(r).error();
  if (lost) {
    err.code = errc::commit_in_doubt;
    err.message = "the connection broke while committing; the transaction may have committed: " +
                  err.message;
  }
  return err;
}

void transaction::rollback() {
  if (conn_ && conn_->conn && conn_->conn->healthy() && conn_->conn->in_transaction())
    (void)conn_->conn->exec("ROLLBACK");
  conn_.reset();
}

// --- store_access ----------------------------------------------------------------------------

namespace detail {

result<pg::rows> store_access::run(const event_store& store, const std::string& name,
                                   const std::string& sql, const std::vector<pg::param>& params) {
  return with_connection(store.impl_,
                         [&](pg::connection& c) { return c.query(name, sql, params); });
}

pg::connection* store_access::connection(transaction& tx) {
  return tx.active() ? tx.conn_->conn.get() : nullptr;
}

void store_access::fail(transaction& tx) {
  tx.failed_ = true;
  tx.rollback();
}

const std::string& store_access::schema(const event_store& store) {
  return store.impl_->options.schema;
}

} // namespace detail

} // namespace mire
