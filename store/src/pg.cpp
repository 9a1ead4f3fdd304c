#include "pg.hpp"

#include <array>

#include <charconv>

#include <fmt/format.h>

namespace mire::pg {

namespace {

int64_t parse_int64(std::string_view t) {
  int64_t v = 0;
  std::from_chars(t.data(), t.data() + t.size(), v);
  return v;
}

// Maps a server error to the library's codes. Unique violations stay "internal" here: only the
// caller knows whether one means a version conflict or a repeated event id.
errc classify(std::string_view sqlstate) {
  if (sqlstate.size() != 5)
    return errc::internal;
  const auto cls = sqlstate.substr(0, 2);
  if (cls == "08" || sqlstate == "57P01" || sqlstate == "57P02" || sqlstate == "57P03" ||
      sqlstate == "53300")
    return errc::unavailable;
  // 22: data exceptions; 54: limits (a value too large, JSON nested too deep for the server).
  if (cls == "22" || cls == "54")
    return errc::bad_input;
  if (sqlstate == "57014")
    return errc::timeout;
  if (sqlstate == "55P03" || sqlstate == "40001" || sqlstate == "40P01")
    return errc::version_conflict;
  return errc::internal;
}

std::string trimmed(const char* msg) {
  std::string s = msg ? msg : "";
  while (!s.empty() && (s.back() == '\n' || s.back() == ' '))
    s.pop_back();
  return s;
}

} // namespace

int64_t rows::int64(int row, int col) const { return parse_int64(text(row, col)); }

uint64_t rows::uint64(int row, int col) const {
  auto t = text(row, col);
  uint64_t v = 0;
  std::from_chars(t.data(), t.data() + t.size(), v);
  return v;
}

int64_t rows::affected() const { return r_ ? parse_int64(PQcmdTuples(r_.get())) : 0; }

result<std::unique_ptr<connection>> connection::open(const std::string& url, int connect_timeout_s,
                                                     const std::string& application_name) {
  // Our defaults come first so that the URL's own settings override them.
  const std::string timeout = std::to_string(connect_timeout_s);
  // Over TCP, a peer that vanished without a word (a partition, a dead host) is noticed within
  // ~15 s instead of the kernel's ~15 minutes; unix sockets ignore these.
  // The encoding comes after the URL, so nothing overrides it (PGCLIENTENCODING, the URL, the
  // database's own): every check on stream ids and JSON assumes UTF-8 on the wire.
  const char* keys[] = {"connect_timeout", "application_name", "keepalives", "keepalives_idle",
                        "keepalives_interval", "keepalives_count", "tcp_user_timeout", "dbname",
                        "client_encoding", nullptr};
  const char* values[] = {timeout.c_str(), application_name.c_str(), "1", "5", "2", "3", "15000",
                          url.c_str(), "UTF8", nullptr};
  PGconn* c = PQconnectdbParams(keys, values, /*expand_dbname=*/1);
  if (c == nullptr)
    return error{errc::unavailable, "cannot allocate a database connection"};
  if (PQstatus(c) != CONNECTION_OK) {
    auto msg = trimmed(PQerrorMessage(c));
    PQfinish(c);
    return error{errc::unavailable, "database unavailable: " + msg};
  }
  std::unique_ptr<connection> conn{new connection(c)};
  // UTC and ISO dates so recorded_at reads the same everywhere.
  if (auto r = conn->exec("SET TimeZone = 'UTC'; SET DateStyle = 'ISO'; "
                          "SET client_min_messages = 'warning'");
      !r)
    return r.error();
  conn->set_up_ = conn->reported_settings();
  return conn;
}

connection::~connection() { PQfinish(conn_); }

bool connection::in_transaction() const {
  const auto s = PQtransactionStatus(conn_);
  return s == PQTRANS_INTRANS || s == PQTRANS_INERROR || s == PQTRANS_ACTIVE;
}

std::array<std::string, connection::watched_settings.size()> connection::reported_settings() const {
  std::array<std::string, watched_settings.size()> out;
  for (std::size_t i = 0; i < watched_settings.size(); ++i)
    if (const char* v = PQparameterStatus(conn_, watched_settings[i]))
      out[i] = v;
  return out;
}

// On every return to the pool: compared in place, nothing allocated.
bool connection::session_as_set_up() const {
  if (tainted_)
    return false;
  for (std::size_t i = 0; i < watched_settings.size(); ++i) {
    const char* v = PQparameterStatus(conn_, watched_settings[i]);
    if ((v ? std::string_view(v) : std::string_view()) != set_up_[i])
      return false;
  }
  return true;
}

result<rows> connection::finish(PGresult* r, std::string_view what) {
  last_constraint_.clear();
  last_lost_ = false;
  const auto status = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
  if (status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK || status == PGRES_COPY_IN)
    return rows{r};
  rows owned{r};
  error e;
  const char* state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : nullptr;
  e.sqlstate = state ? state : "";
  if (const char* c = r ? PQresultErrorField(r, PG_DIAG_CONSTRAINT_NAME) : nullptr)
    last_constraint_ = c;
  // The primary message and its detail; the full text repeats parameters and context.
  const char* primary = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : nullptr;
  const char* detail = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_DETAIL) : nullptr;
  e.message = primary ? primary : trimmed(PQerrorMessage(conn_));
  if (detail)
    e.message += fmt::format(" ({})", detail);
  if (PQstatus(conn_) != CONNECTION_OK) {
    last_lost_ = true;
    e.code = errc::unavailable;
    e.message = fmt::format("database connection lost during {}: {}", what, e.message);
  } else {
    e.code = classify(e.sqlstate);
  }
  return e;
}

result<rows> connection::exec(const std::string& sql) {
  return finish(PQexec(conn_, sql.c_str()), "query");
}

result<rows> connection::query(const std::string& name, const std::string& sql,
                               std::initializer_list<param> params) {
  return query(name, sql, std::vector<param>(params));
}

result<rows> connection::query(const std::string& name, const std::string& sql,
                               const std::vector<param>& params) {
  if (!prepared_.contains(name)) {
    auto p = finish(PQprepare(conn_, name.c_str(), sql.c_str(), 0, nullptr), "prepare");
    if (!p)
      return p;
    prepared_.insert(name);
  }
  // libpq wants NUL-terminated values; string_views may not be, so copy into owned strings.
  std::vector<std::string> owned;
  owned.reserve(params.size());
  std::vector<const char*> values(params.size(), nullptr);
  for (std::size_t i = 0; i < params.size(); ++i) {
    // libpq reads text parameters up to the first NUL: a value with one would be cut silently.
    if (params[i] && params[i]->find('\0') != std::string_view::npos)
      return bad_input(fmt::format("parameter {} of {} contains a NUL byte", i + 1, name));
    if (params[i]) {
      owned.emplace_back(*params[i]);
      values[i] = owned.back().c_str();
    }
  }
  return finish(PQexecPrepared(conn_, name.c_str(), static_cast<int>(params.size()), values.data(),
                               nullptr, nullptr, 0),
                name);
}

result<rows> connection::query_text(const std::string& sql, const std::vector<param>& params) {
  constexpr std::size_t max_cached = 256;
  auto it = by_text_.find(sql);
  if (it != by_text_.end())
    return query(it->second, sql, params);
  if (by_text_.size() < max_cached) {
    auto name = fmt::format("mire_q{}", by_text_.size());
    auto r = query(name, sql, params);
    if (prepared_.contains(name))
      by_text_.emplace(sql, std::move(name));
    return r;
  }
  std::vector<std::string> owned;
  owned.reserve(params.size());
  std::vector<const char*> values(params.size(), nullptr);
  for (std::size_t i = 0; i < params.size(); ++i) {
    if (params[i] && params[i]->find('\0') != std::string_view::npos)
      return bad_input(fmt::format("parameter {} contains a NUL byte", i + 1));
    if (params[i]) {
      owned.emplace_back(*params[i]);
      values[i] = owned.back().c_str();
    }
  }
  return finish(PQexecParams(conn_, sql.c_str(), static_cast<int>(params.size()), nullptr,
                             values.data(), nullptr, nullptr, 0),
                "query");
}

result<void> connection::copy_begin(const std::string& sql) {
  copy_failed_ = false;
  auto start = finish(PQexec(conn_, sql.c_str()), "copy");
  if (!start)
    return start.error();
  return {};
}

void connection::copy_put(std::string_view data) {
  // After a failed put the server has given up on the copy; its error comes from copy_end.
  if (!copy_failed_ && PQputCopyData(conn_, data.data(), static_cast<int>(data.size())) != 1)
    copy_failed_ = true;
}

result<rows> connection::copy_end(const char* abort_reason) {
  PQputCopyEnd(conn_, abort_reason);
  PGresult* last = nullptr;
  while (PGresult* r = PQgetResult(conn_)) {
    if (last)
      PQclear(last);
    last = r;
  }
  return finish(last, "copy");
}

std::string quote_ident(std::string_view name) {
  std::string out = "\"";
  for (char c : name) {
    if (c == '"')
      out += '"';
    out += c;
  }
  out += '"';
  return out;
}

void append_array_element(std::string& out, std::string_view value) {
  out += '"';
  for (char c : value) {
    if (c == '"' || c == '\\')
      out += '\\';
    out += c;
  }
  out += '"';
}

void append_copy_field(std::string& out, std::string_view value) {
  for (char c : value) {
    switch (c) {
    case '\\': out += "\\\\"; break;
    case '\t': out += "\\t"; break;
    case '\n': out += "\\n"; break;
    case '\r': out += "\\r"; break;
    default: out += c;
    }
  }
}

} // namespace mire::pg
