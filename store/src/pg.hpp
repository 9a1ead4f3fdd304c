// Thin RAII layer over libpq: a connection with named prepared statements, results, and the
// mapping of server errors to mire::error. Private to mire_store.
#pragma once

#include <libpq-fe.h>

#include <array>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "mire/store/error.hpp"

namespace mire::pg {

/// A statement parameter in text form; nullopt is SQL NULL.
using param = std::optional<std::string_view>;

/// Owns a PGresult.
class rows {
public:
  rows() = default;
  explicit rows(PGresult* r) : r_(r, &PQclear) {}

  int size() const { return r_ ? PQntuples(r_.get()) : 0; }
  bool empty() const { return size() == 0; }
  bool is_null(int row, int col) const { return PQgetisnull(r_.get(), row, col) != 0; }
  std::string_view text(int row, int col) const {
    return {PQgetvalue(r_.get(), row, col),
            static_cast<std::size_t>(PQgetlength(r_.get(), row, col))};
  }
  std::string str(int row, int col) const { return std::string(text(row, col)); }
  int64_t int64(int row, int col) const;
  uint64_t uint64(int row, int col) const;
  /// Rows affected by an INSERT/UPDATE/DELETE.
  int64_t affected() const;
  PGresult* get() const { return r_.get(); }

private:
  std::shared_ptr<PGresult> r_;
};

/// One connection. Not thread-safe: one user at a time (the pool hands it out).
class connection {
public:
  /// Connects with a connect timeout; unavailable when the server does not answer.
  static result<std::unique_ptr<connection>> open(const std::string& url, int connect_timeout_s,
                                                  const std::string& application_name);
  ~connection();
  connection(const connection&) = delete;
  connection& operator=(const connection&) = delete;

  /// Runs SQL without parameters (may hold several statements).
  result<rows> exec(const std::string& sql);
  /// Runs a named prepared statement, preparing it on first use on this connection.
  result<rows> query(const std::string& name, const std::string& sql,
                     std::initializer_list<param> params);
  result<rows> query(const std::string& name, const std::string& sql,
                     const std::vector<param>& params);
  /// Runs caller-written SQL with parameters, prepared once per connection and cached by its
  /// text (the first 256 distinct texts; later ones run unprepared).
  result<rows> query_text(const std::string& sql, const std::vector<param>& params);

  /// The details of the last failure (constraint, lost connection).
  const std::string& last_constraint() const { return last_constraint_; }
  bool last_failure_lost_connection() const { return last_lost_; }

  /// COPY ... FROM STDIN in three steps, so rows can be sent while later ones are still being
  /// formatted: copy_begin, copy_put (any number), copy_end (which reports the outcome).
  result<void> copy_begin(const std::string& sql);
  void copy_put(std::string_view data);
  /// Ends the copy; with `abort_reason` the server discards every row sent.
  result<rows> copy_end(const char* abort_reason = nullptr);

  bool healthy() const { return PQstatus(conn_) == CONNECTION_OK; }
  /// In a transaction block (open or failed)?
  bool in_transaction() const;
  /// Still set up as open() left it (UTC, ISO dates, encoding...), as far as the server reports
  /// its settings: user SQL in a transaction scope may have changed them for the session.
  bool session_as_set_up() const;
  /// Caller-written SQL changed what session_as_set_up cannot see (a SET of an unreported
  /// setting, LISTEN, DEALLOCATE, a COPY left open): never reuse this connection.
  void taint() { tainted_ = true; }
  PGconn* raw() { return conn_; }

private:
  explicit connection(PGconn* c) : conn_(c) {}
  result<rows> finish(PGresult* r, std::string_view what);
  PGconn* conn_;
  std::unordered_set<std::string> prepared_;
  std::unordered_map<std::string, std::string> by_text_; // SQL text -> prepared statement name
  std::string last_constraint_;
  bool tainted_ = false;
  /// Session settings the server reports on change, which reads and escaping depend on.
  static constexpr std::array<const char*, 5> watched_settings{
      "TimeZone", "DateStyle", "IntervalStyle", "client_encoding", "standard_conforming_strings"};
  std::array<std::string, watched_settings.size()> set_up_; ///< their values after open()
  std::array<std::string, watched_settings.size()> reported_settings() const;
  bool last_lost_ = false;
  bool copy_failed_ = false;
};

/// Quotes an identifier for SQL text ("a""b"). Only used for validated schema names.
std::string quote_ident(std::string_view name);

/// Escapes a value for a Postgres text-format array literal element: "..." with \ and " escaped.
void append_array_element(std::string& out, std::string_view value);

/// Escapes a value for COPY text format (backslash, tab, newline, carriage return).
void append_copy_field(std::string& out, std::string_view value);

} // namespace mire::pg
