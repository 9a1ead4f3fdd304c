#include "session.hpp"

#include <algorithm>
#include <chrono>
#include <cctype>
#include <unordered_map>
#include <unordered_set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "mire/store/uuid.hpp"
#include "schema.hpp"

namespace mire::detail {

namespace {

constexpr std::size_t max_stream_id_bytes = 512;
constexpr std::size_t max_type_bytes = 256;
// An append that may pick its version ("any" streams) and loses a race to a concurrent writer
// re-reads the head and tries again until this deadline, then reports a timeout.
constexpr auto race_deadline = std::chrono::seconds(10);

} // namespace

const std::string_view event_columns =
    "version, global_position, transaction_id, event_id, event_type, payload, metadata, "
    "recorded_at";

namespace {

// Length of the UTF-8 sequence starting at s[i], or 0 when it is not valid UTF-8.
std::size_t utf8_sequence(std::string_view s, std::size_t i) {
  const auto c = static_cast<unsigned char>(s[i]);
  std::size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
  if (n == 0 || i + n > s.size() || (n == 2 && c < 0xC2))
    return 0;
  for (std::size_t k = 1; k < n; ++k)
    if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80)
      return 0;
  // As Postgres reads UTF-8: no overlong forms, no UTF-16 surrogates, nothing above U+10FFFF.
  const auto c1 = n > 1 ? static_cast<unsigned char>(s[i + 1]) : 0;
  if ((c == 0xE0 && c1 < 0xA0) || (c == 0xED && c1 >= 0xA0) || (c == 0xF0 && c1 < 0x90) ||
      c > 0xF4 || (c == 0xF4 && c1 >= 0x90))
    return 0;
  return n;
}

// True when `s` is valid UTF-8 without control characters.
bool clean_text(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    const auto n = utf8_sequence(s, i);
    if (n == 0)
      return false;
    const auto c = static_cast<unsigned char>(s[i]);
    if (n == 1 && (c < 0x20 || c == 0x7F))
      return false;
    i += n;
  }
  return true;
}

result<void> check_type(std::string_view type, std::size_t index) {
  bool ok = !type.empty() && type.size() <= max_type_bytes;
  for (char c : type)
    ok = ok && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                c == '_' || c == '.' || c == '-' || c == ':' || c == '/' || c == '$' || c == '@');
  if (ok)
    return {};
  return bad_input(fmt::format("event type '{}' (event {}) must be 1-{} characters of letters, "
                               "digits and _ . - : / $ @",
                               printable(type), index + 1, max_type_bytes));
}

result<void> check_json(std::string_view what, std::string_view text, std::size_t index,
                        std::size_t max_bytes, bool must_be_object) {
  if (text.size() > max_bytes)
    return bad_input(fmt::format("{} of event {} is {} bytes, over the limit of {} bytes", what,
                                 index + 1, text.size(), max_bytes));
  if (!nlohmann::json::accept(text))
    return bad_input(fmt::format("{} of event {} is not valid JSON: '{}'", what, index + 1,
                                 printable(text)));
  // Valid JSON that jsonb refuses: a \u0000 escape (Postgres text cannot hold NUL). In valid
  // JSON a backslash only starts an escape inside a string, so a plain scan finds them.
  for (std::size_t i = text.find('\\'); i != std::string_view::npos; i = text.find('\\', i + 2))
    if (text.substr(i + 1, 5) == "u0000")
      return bad_input(fmt::format("{} of event {} contains \\u0000, which Postgres cannot "
                                   "store: '{}'",
                                   what, index + 1, printable(text)));
  if (must_be_object) {
    const auto first = text.find_first_not_of(" \t\r\n");
    if (first == std::string_view::npos || text[first] != '{')
      return bad_input(fmt::format("{} of event {} must be a JSON object: '{}'", what, index + 1,
                                   printable(text)));
  }
  return {};
}

// Postgres text-format array literal of the given strings.
template <class F> std::string array_literal(const std::vector<event_data>& events, F field) {
  std::string out = "{";
  for (std::size_t i = 0; i < events.size(); ++i) {
    if (i)
      out += ',';
    pg::append_array_element(out, field(events[i]));
  }
  out += '}';
  return out;
}

} // namespace

std::string text_array(const std::vector<std::string_view>& values) {
  std::string out = "{";
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (i)
      out += ',';
    pg::append_array_element(out, values[i]);
  }
  out += '}';
  return out;
}

// "2026-11-26 07:05:41.123456+00" (ISO DateStyle, UTC) -> "2026-11-26T07:05:41.123456Z".
std::string iso_time(std::string_view pg_time) {
  std::string out(pg_time);
  if (out.size() > 10 && out[10] == ' ')
    out[10] = 'T';
  if (out.size() > 3 && out.compare(out.size() - 3, 3, "+00") == 0)
    out.replace(out.size() - 3, 3, "Z");
  return out;
}

namespace {

// Reads the columns of `event_columns` starting at column `c`.
recorded_event to_event(const pg::rows& r, int row, int c, std::string stream_id) {
  recorded_event e;
  e.stream_id = std::move(stream_id);
  e.version = r.int64(row, c);
  e.global_position = r.int64(row, c + 1);
  e.transaction_id = r.uint64(row, c + 2);
  e.event_id = r.str(row, c + 3);
  e.type = r.str(row, c + 4);
  e.data = r.str(row, c + 5);
  e.metadata = r.str(row, c + 6);
  e.recorded_at = iso_time(r.text(row, c + 7));
  return e;
}

error with_context(error e, std::string_view doing) {
  e.message = fmt::format("{}: {}", doing, e.message);
  return e;
}

// After a failed append: were these exact events stored before (an idempotent retry)?
// Returns the original result, a bad_input when only some ids (or another stream) match, or
// nullopt when none of the ids is stored.
using row_index = std::unordered_map<std::string, int>; // event id -> row of find_event_ids

row_index index_rows(const pg::rows& found) {
  row_index row_of;
  for (int i = 0; i < found.size(); ++i)
    row_of.emplace(found.str(i, 0), i);
  return row_of;
}

// Whether the rows of find_event_ids hold `events` as one earlier append to `stream_id` (each
// there, in that stream, at consecutive versions): its positions, or bad_input naming the first
// event that is elsewhere or missing.
result<append_result> earlier_append(const pg::rows& found, const row_index& row_of,
                                     std::string_view stream_id,
                                     const std::vector<event_data>& events) {
  append_result original;
  for (std::size_t i = 0; i < events.size(); ++i) {
    auto it = row_of.find(events[i].event_id);
    const bool same = it != row_of.end() && found.text(it->second, 1) == stream_id &&
                      (i == 0 || found.int64(it->second, 2) == original.version + 1);
    if (!same) {
      const auto what =
          it == row_of.end()
              ? fmt::format("event id {} is not stored, while event id {} of the same append is "
                            "(stream '{}', version {})",
                            events[i].event_id, found.str(0, 0), printable(found.text(0, 1)),
                            found.int64(0, 2))
              : fmt::format("event id {} is stored in stream '{}' at version {}",
                            events[i].event_id, printable(found.text(it->second, 1)),
                            found.int64(it->second, 2));
      return bad_input(fmt::format("{}; this append to '{}' is not a resend of an earlier one "
                                   "(a resend must carry the same events to the same stream)",
                                   what, printable(stream_id)));
    }
    original.version = found.int64(it->second, 2);
    const auto pos = found.int64(it->second, 3);
    original.first_position = i == 0 ? pos : std::min(original.first_position, pos);
    original.last_position = std::max(original.last_position, pos);
  }
  original.duplicate = true;
  return original;
}

result<std::optional<append_result>> find_previous_append(pg::connection& conn,
                                                          const statements& sql,
                                                          std::string_view stream_id,
                                                          const std::vector<event_data>& events,
                                                          const std::string& ids) {
  auto found = conn.query("mire_find_event_ids", sql.find_event_ids, {ids});
  if (!found)
    return with_context(std::move(found).error(), "checking for a repeated append");
  if (found->empty())
    return std::optional<append_result>{};
  auto original = earlier_append(*found, index_rows(*found), stream_id, events);
  if (!original)
    return original.error();
  return std::optional<append_result>{*original};
}

} // namespace

statements::statements(std::string_view schema) {
  auto s = [&](std::string_view text) { return in_schema(text, schema); };
  const std::string cols{event_columns};
  // One event, scalar parameters: the common path (an aggregate saving one event) skips the
  // cost of array parameters. The EXISTS probe keeps a stream from getting a hole; when version
  // $2 is known to be committed (events are never deleted) or is 0, the plain VALUES form does.
  append_one = s(R"sql(
INSERT INTO {s}.events (stream_id, version, event_id, event_type, payload, metadata)
SELECT $1, $2::bigint + 1, $3::uuid, $4, $5::jsonb, $6::jsonb
WHERE EXISTS (SELECT 1 FROM {s}.events WHERE stream_id = $1 AND version = $2::bigint)
RETURNING version, global_position)sql");
  append_one_known = s(R"sql(
INSERT INTO {s}.events (stream_id, version, event_id, event_type, payload, metadata)
VALUES ($1, $2::bigint + 1, $3::uuid, $4, $5::jsonb, $6::jsonb)
RETURNING version, global_position)sql");
  append_one_any = s(R"sql(
INSERT INTO {s}.events (stream_id, version, event_id, event_type, payload, metadata)
SELECT $1, coalesce(max(version), 0) + 1, $2::uuid, $3, $4::jsonb, $5::jsonb
FROM {s}.events WHERE stream_id = $1
RETURNING version, global_position)sql");
  append_many = s(R"sql(
INSERT INTO {s}.events (stream_id, version, event_id, event_type, payload, metadata)
SELECT $1, $2::bigint + e.n, e.id, e.type, e.data, e.meta
FROM unnest($4::uuid[], $5::text[], $6::jsonb[], $7::jsonb[]) WITH ORDINALITY AS e(id, type, data, meta, n)
WHERE $3::bool OR $2::bigint = 0
   OR EXISTS (SELECT 1 FROM {s}.events WHERE stream_id = $1 AND version = $2::bigint)
ORDER BY e.n
RETURNING version, global_position)sql");
  append_many_any = s(R"sql(
INSERT INTO {s}.events (stream_id, version, event_id, event_type, payload, metadata)
SELECT $1, h.v + e.n, e.id, e.type, e.data, e.meta
FROM (SELECT coalesce(max(version), 0) AS v FROM {s}.events WHERE stream_id = $1) h,
     unnest($2::uuid[], $3::text[], $4::jsonb[], $5::jsonb[]) WITH ORDINALITY AS e(id, type, data, meta, n)
ORDER BY e.n
RETURNING version, global_position)sql");
  find_event_ids = s("SELECT event_id, stream_id, version, global_position FROM {s}.events "
                     "WHERE event_id = ANY($1::uuid[]) ORDER BY global_position");
  stream_version = s("SELECT coalesce(max(version), 0) FROM {s}.events WHERE stream_id = $1");
  read_stream = s("SELECT " + cols + " FROM {s}.events WHERE stream_id = $1 AND version >= $2 "
                  "ORDER BY version LIMIT $3");
  // Only below the visibility horizon: every transaction with a smaller id has ended, so no
  // event can later appear before a checkpoint we hand out (rule 3 of docs/ARCHITECTURE.md).
  read_all = s("SELECT stream_id, " + cols + " FROM {s}.events "
               "WHERE (transaction_id, global_position) > ($1::xid8, $2::bigint) "
               "AND transaction_id < (SELECT pg_snapshot_xmin(pg_current_snapshot())) "
               "ORDER BY transaction_id, global_position LIMIT $3");
  // The last event below the horizon: read_all after it skips nothing (see event_store::log_head).
  log_head = s("SELECT transaction_id, global_position FROM {s}.events "
               "WHERE transaction_id < (SELECT pg_snapshot_xmin(pg_current_snapshot())) "
               "ORDER BY transaction_id DESC, global_position DESC LIMIT 1");
  read_category = s("SELECT stream_id, " + cols + " FROM {s}.events "
                    "WHERE category = $4 AND (transaction_id, global_position) > ($1::xid8, $2::bigint) "
                    "AND transaction_id < (SELECT pg_snapshot_xmin(pg_current_snapshot())) "
                    "ORDER BY transaction_id, global_position LIMIT $3");
  read_types = s("SELECT stream_id, " + cols +
                 " FROM {s}.events "
                 "WHERE event_type = ANY($4::text[]) "
                 "AND (transaction_id, global_position) > ($1::xid8, $2::bigint) "
                 "AND transaction_id < (SELECT pg_snapshot_xmin(pg_current_snapshot())) "
                 "ORDER BY transaction_id, global_position LIMIT $3");
  read_category_types = s("SELECT stream_id, " + cols +
                          " FROM {s}.events "
                          "WHERE category = $4 AND event_type = ANY($5::text[]) "
                          "AND (transaction_id, global_position) > ($1::xid8, $2::bigint) "
                          "AND transaction_id < (SELECT pg_snapshot_xmin(pg_current_snapshot())) "
                          "ORDER BY transaction_id, global_position LIMIT $3");
  streams_all = s("SELECT stream_id, max(version), max(global_position) FROM {s}.events "
                  "GROUP BY stream_id ORDER BY stream_id");
  streams_category = s("SELECT stream_id, max(version), max(global_position) FROM {s}.events "
                       "WHERE category = $1 GROUP BY stream_id ORDER BY stream_id");
  load_snapshot = s("SELECT version, schema_version, state FROM {s}.snapshots WHERE stream_id = $1");
  // A newer snapshot is never replaced by an older one of the same schema.
  save_snapshot = s(R"sql(
INSERT INTO {s}.snapshots (stream_id, version, schema_version, state) VALUES ($1, $2, $3, $4::jsonb)
ON CONFLICT (stream_id) DO UPDATE
SET version = excluded.version, schema_version = excluded.schema_version, state = excluded.state,
    recorded_at = now()
WHERE {s}.snapshots.version <= excluded.version
   OR {s}.snapshots.schema_version <> excluded.schema_version)sql");
  batch_heads = s("SELECT s.id, (SELECT coalesce(max(version), 0) FROM {s}.events "
                  "WHERE stream_id = s.id) FROM unnest($1::text[]) AS s(id)");
  batch_copy = s("COPY {s}.events (stream_id, version, event_id, event_type, payload, metadata) "
                 "FROM STDIN");
  // The group commit of the actor layer, where every expectation is exact: versions numbered by
  // the caller, and a stream's events go in only when its head is the expected version. The head
  // is a scalar subquery on purpose: the planner cannot turn it into a join, which a generic plan
  // made while the table was small would run as a scan of the whole table. Appends whose head
  // differs are left out, not raised: the caller finds them missing in RETURNING. An append whose
  // expected version is known to be committed ($8, see append's expected_known) skips the probe:
  // it cannot leave a hole, and a stream that has moved on fails it on the unique key.
  // The arrays are wrapped in (SELECT ...) so that a custom plan cannot see their length: its
  // estimate is then never below the generic plan's, and Postgres keeps the generic plan instead
  // of planning the statement again at every execution (about a sixth of its cost, measured).
  // The first one also sets the statement's lock timeout ($9 ms) before any row goes in: an
  // append waiting for another transaction's row lock fails the group with 55P03 then, instead
  // of holding every member up until that transaction ends (append_group goes on from there).
  append_group_exact = s(R"sql(
INSERT INTO {s}.events (stream_id, version, event_id, event_type, payload, metadata)
SELECT e.stream_id, e.version, e.event_id, e.event_type, e.payload, e.metadata
FROM unnest((SELECT $1::text[] WHERE set_config('lock_timeout', $9, true) IS NOT NULL),
            (SELECT $2::bigint[]), (SELECT $3::bigint[]),
            (SELECT $4::uuid[]), (SELECT $5::text[]), (SELECT $6::jsonb[]), (SELECT $7::jsonb[]),
            (SELECT $8::bool[]))
       WITH ORDINALITY AS e(stream_id, expected, version, event_id, event_type, payload, metadata,
                            known, ord)
WHERE e.known
   OR (SELECT coalesce(max(x.version), 0) FROM {s}.events x WHERE x.stream_id = e.stream_id)
      = e.expected
ORDER BY e.ord
RETURNING stream_id, version, global_position)sql");
  append_group_set = s(R"sql(
WITH req AS (
  SELECT r.idx, r.stream_id, r.expected, r.n,
         (SELECT coalesce(max(e.version), 0) FROM {s}.events e WHERE e.stream_id = r.stream_id) AS head,
         (sum(r.n) OVER (ORDER BY r.idx) - r.n)::int AS off
  FROM unnest((SELECT $1::text[] WHERE set_config('lock_timeout', $8, true) IS NOT NULL),
              $2::bigint[], $3::int[]) WITH ORDINALITY AS r(stream_id, expected, n, idx)
), go AS (
  SELECT * FROM req WHERE expected < 0 OR expected = head
), ins AS (
  INSERT INTO {s}.events (stream_id, version, event_id, event_type, payload, metadata)
  SELECT g.stream_id, g.head + k, ($4::uuid[])[g.off + k], ($5::text[])[g.off + k],
         ($6::jsonb[])[g.off + k], ($7::jsonb[])[g.off + k]
  FROM go g, generate_series(1, g.n) AS k
  ORDER BY g.idx, k
  RETURNING stream_id, global_position
)
SELECT CASE WHEN g.idx IS NULL THEN 'conflict' ELSE 'ok' END, r.head + r.n,
       min(i.global_position), max(i.global_position), r.head
FROM req r LEFT JOIN go g ON g.idx = r.idx LEFT JOIN ins i ON i.stream_id = r.stream_id
GROUP BY r.idx, g.idx, r.head, r.n
ORDER BY r.idx)sql");
  append_group = s("SELECT r_outcome, r_version, r_first, r_last, r_actual FROM "
                   "{s}.append_group($1::text[], $2::bigint[], $3::int[], $4::uuid[], $5::text[], "
                   "$6::jsonb[], $7::jsonb[], $8)");
  batch_positions = s("SELECT coalesce(min(global_position), 0), coalesce(max(global_position), 0) "
                      "FROM {s}.events WHERE transaction_id = pg_current_xact_id()");
}

namespace {

// The next word of `sql` from `i` on (upper-cased), past whitespace and comments (-- to the end
// of the line; /* */, which nest in Postgres).
std::string next_word(std::string_view sql, std::size_t& i) {
  for (;;) {
    while (i < sql.size() && std::isspace(static_cast<unsigned char>(sql[i])))
      ++i;
    if (sql.compare(i, 2, "--") == 0) {
      i = std::min(sql.find('\n', i), sql.size());
    } else if (sql.compare(i, 2, "/*") == 0) {
      int depth = 0;
      do {
        if (sql.compare(i, 2, "/*") == 0) {
          ++depth;
          i += 2;
        } else if (sql.compare(i, 2, "*/") == 0) {
          --depth;
          i += 2;
        } else {
          ++i;
        }
      } while (depth > 0 && i < sql.size());
    } else {
      break;
    }
  }
  std::string word;
  while (i < sql.size() && (std::isalnum(static_cast<unsigned char>(sql[i])) || sql[i] == '_'))
    word += static_cast<char>(std::toupper(static_cast<unsigned char>(sql[i++])));
  return word;
}

} // namespace

bool sets_only_transaction(std::string_view sql) {
  std::size_t i = 0;
  if (next_word(sql, i) != "SET")
    return false;
  const auto scope = next_word(sql, i);
  return scope == "LOCAL" || scope == "TRANSACTION";
}

std::string printable(std::string_view value, std::size_t max_chars) {
  std::string out;
  for (std::size_t i = 0; i < value.size() && out.size() < max_chars;) {
    const auto n = utf8_sequence(value, i);
    const auto c = static_cast<unsigned char>(value[i]);
    if (n == 0 || (n == 1 && (c < 0x20 || c == 0x7F))) {
      out += fmt::format("\\x{:02x}", c);
      ++i;
    } else {
      out.append(value.substr(i, n));
      i += n;
    }
  }
  if (out.size() >= max_chars)
    out += "...";
  return out;
}

result<void> check_stream_id(std::string_view stream_id) {
  if (stream_id.empty())
    return bad_input("stream id is empty");
  if (stream_id.size() > max_stream_id_bytes)
    return bad_input(fmt::format("stream id '{}' is {} bytes, over the limit of {}",
                                 printable(stream_id), stream_id.size(), max_stream_id_bytes));
  if (!clean_text(stream_id))
    return bad_input(fmt::format("stream id '{}' contains a control character or invalid UTF-8",
                                 printable(stream_id)));
  return {};
}

result<void> check_event(event_data& e, std::size_t i, const store_options& options) {
  if (auto ok = check_type(e.type, i); !ok)
    return ok;
  if (auto ok = check_json("data", e.data, i, options.max_event_bytes, false); !ok)
    return ok;
  if (e.metadata.empty())
    e.metadata = "{}";
  if (auto ok = check_json("metadata", e.metadata, i, options.max_event_bytes, true); !ok)
    return ok;
  if (e.event_id.empty()) {
    e.event_id = new_uuid();
  } else if (!is_uuid(e.event_id)) {
    return bad_input(fmt::format("event id '{}' (event {}) is not a UUID", printable(e.event_id),
                                 i + 1));
  } else {  // Postgres prints uuids in lower case; compare like it does
    std::transform(e.event_id.begin(), e.event_id.end(), e.event_id.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  }
  return {};
}

result<void> check_append(std::string_view stream_id, std::vector<event_data>& events,
                          const store_options& options) {
  if (auto ok = check_stream_id(stream_id); !ok)
    return ok;
  if (events.empty())
    return bad_input(fmt::format("nothing to append to stream '{}': no events given",
                                 printable(stream_id)));
  std::unordered_set<std::string_view> ids;
  for (std::size_t i = 0; i < events.size(); ++i) {
    if (auto ok = check_event(events[i], i, options); !ok)
      return bad_input(fmt::format("append to '{}': {}", printable(stream_id), ok.error().message));
    if (events.size() > 1 && !ids.insert(events[i].event_id).second)
      return bad_input(fmt::format("event id {} appears twice in one append", events[i].event_id));
  }
  return {};
}

result<append_result> append(pg::connection& conn, const statements& sql, tx_mode mode,
                             std::string_view stream_id, expected_version expected,
                             bool expected_known, const std::vector<event_data>& events) {
  const auto n = static_cast<int>(events.size());
  // The id array is needed to send several events, and to look for a previous append after a
  // failure; a single successful event never builds it.
  std::string ids;
  auto id_array = [&]() -> const std::string& {
    if (ids.empty())
      ids = array_literal(events, [](auto& e) -> std::string_view { return e.event_id; });
    return ids;
  };
  const std::string expected_text = std::to_string(expected.value());
  const std::string_view known = expected_known ? "true" : "false";
  std::string types, data, meta;
  if (n > 1) {
    types = array_literal(events, [](auto& e) -> std::string_view { return e.type; });
    data = array_literal(events, [](auto& e) -> std::string_view { return e.data; });
    meta = array_literal(events, [](auto& e) -> std::string_view { return e.metadata; });
  }
  auto send = [&]() {
    const auto& e = events.front();
    if (n == 1 && expected.is_any())
      return conn.query("mire_append_one_any", sql.append_one_any,
                        {stream_id, e.event_id, e.type, e.data, e.metadata});
    if (n == 1 && (expected_known || expected.value() == 0))
      return conn.query("mire_append_one_known", sql.append_one_known,
                        {stream_id, expected_text, e.event_id, e.type, e.data, e.metadata});
    if (n == 1)
      return conn.query("mire_append_one", sql.append_one,
                        {stream_id, expected_text, e.event_id, e.type, e.data, e.metadata});
    if (expected.is_any())
      return conn.query("mire_append_many_any", sql.append_many_any,
                        {stream_id, id_array(), types, data, meta});
    return conn.query("mire_append_many", sql.append_many,
                      {stream_id, expected_text, known, id_array(), types, data, meta});
  };

  const auto deadline = std::chrono::steady_clock::now() + race_deadline;
  for (;;) {
    std::string clash; // the unique key that fired, if one did
    auto r = send();
    if (r && r->size() == n) {
      append_result out;
      out.first_position = r->int64(0, 1);
      for (int i = 0; i < n; ++i) {
        out.version = std::max(out.version, r->int64(i, 0));
        out.first_position = std::min(out.first_position, r->int64(i, 1));
        out.last_position = std::max(out.last_position, r->int64(i, 1));
      }
      return out;
    }
    if (!r) {
      auto err = std::move(r).error();
      if (conn.last_failure_lost_connection() && mode == tx_mode::autocommit) {
        err.code = errc::commit_in_doubt;
        err.message = fmt::format(
            "the connection broke while appending to '{}'; the append may have committed: retry "
            "it with the same event ids ({}): {}",
            printable(stream_id), id_array(), err.message);
        return err;
      }
      if (err.sqlstate != "23505")
        return with_context(std::move(err), fmt::format("append to '{}'", printable(stream_id)));
      clash = conn.last_constraint();
      // A unique violation aborts an open transaction: end it before asking what happened.
      if (mode == tx_mode::in_transaction)
        (void)conn.exec("ROLLBACK");
    }
    // Nothing was stored. Either these events were stored before (a retry), or the stream was
    // not where the caller expected it.
    auto previous = find_previous_append(conn, sql, stream_id, events, id_array());
    if (!previous)
      return previous.error();
    if (*previous) {
      if (mode == tx_mode::autocommit)
        return **previous;
      return bad_input(fmt::format("the events appended to '{}' were stored before (event id {}); "
                                   "the transaction was rolled back",
                                   printable(stream_id), events.front().event_id));
    }
    auto actual = stream_version(conn, sql, stream_id);
    if (!actual)
      return actual.error();
    // In a transaction the key may have clashed with the transaction's own earlier append, now
    // rolled back with it: nothing committed is in the way, so it is no conflict to retry.
    if (mode == tx_mode::in_transaction && clash == "events_event_id")
      return bad_input(fmt::format("an event id of the append to '{}' ({}) was used earlier in "
                                   "the same transaction; the transaction was rolled back",
                                   printable(stream_id), id_array()));
    if (mode == tx_mode::in_transaction && clash == "events_stream_version" &&
        !expected.is_any() && *actual == expected.value())
      return bad_input(fmt::format("stream '{}' was appended to earlier in the same transaction, "
                                   "expecting version {} too; the transaction was rolled back",
                                   printable(stream_id), expected.value()));
    if (!expected.is_any() || mode == tx_mode::in_transaction)
      return conflict(std::string(stream_id), expected.is_any() ? -1 : expected.value(), *actual);
    // "any" lost a race for the next version: the winner has committed, so try again.
    if (std::chrono::steady_clock::now() > deadline)
      return error{errc::timeout,
                   fmt::format("append to '{}' kept losing the race for the next version to "
                               "concurrent writers for {} s",
                               printable(stream_id), race_deadline.count())};
  }
}

result<int64_t> stream_version(pg::connection& conn, const statements& sql,
                               std::string_view stream_id) {
  auto r = conn.query("mire_stream_version", sql.stream_version, {stream_id});
  if (!r)
    return r.error();
  return r->int64(0, 0);
}

result<std::vector<recorded_event>> read_stream(pg::connection& conn, const statements& sql,
                                                std::string_view stream_id, int64_t from_version,
                                                std::size_t limit) {
  if (auto ok = check_stream_id(stream_id); !ok)
    return ok.error();
  if (from_version < 1)
    from_version = 1;
  const auto from = std::to_string(from_version);
  const auto lim = std::to_string(std::min<std::size_t>(limit, INT64_MAX));
  auto r = conn.query("mire_read_stream", sql.read_stream, {stream_id, from, lim});
  if (!r)
    return r.error();
  std::vector<recorded_event> out;
  out.reserve(r->size());
  const std::string id(stream_id);
  for (int i = 0; i < r->size(); ++i)
    out.push_back(to_event(*r, i, 0, id));
  return out;
}

result<void> check_category(std::string_view category) {
  if (category.empty() || (category.size() <= max_stream_id_bytes && clean_text(category)))
    return {};
  return bad_input(fmt::format("category '{}' contains a control character or invalid UTF-8, or "
                               "is over {} bytes",
                               printable(category), max_stream_id_bytes));
}

result<log_page> read_all(pg::connection& conn, const statements& sql, checkpoint after,
                          std::size_t limit, std::string_view category) {
  if (limit == 0)
    return bad_input("read limit must be at least 1");
  if (auto ok = check_category(category); !ok)
    return ok.error();
  const auto tx = std::to_string(after.transaction_id);
  const auto pos = std::to_string(after.position);
  const auto lim = std::to_string(std::min<std::size_t>(limit, INT64_MAX));
  auto r = category.empty()
               ? conn.query("mire_read_all", sql.read_all, {tx, pos, lim})
               : conn.query("mire_read_category", sql.read_category, {tx, pos, lim, category});
  if (!r)
    return r.error();
  log_page page;
  page.events.reserve(r->size());
  for (int i = 0; i < r->size(); ++i)
    page.events.push_back(to_event(*r, i, 1, r->str(i, 0)));
  page.next = page.events.empty() ? after : page.events.back().checkpoint();
  return page;
}

result<checkpoint> log_head(pg::connection& conn, const statements& sql) {
  auto r = conn.query("mire_log_head", sql.log_head, {});
  if (!r)
    return r.error();
  if (r->empty())
    return checkpoint::start();
  return checkpoint{r->uint64(0, 0), r->int64(0, 1)};
}

recorded_event event_row(const pg::rows& r, int row) {
  return to_event(r, row, 1, r.str(row, 0));
}

result<void> check_filter(const log_filter& filter) {
  if (auto ok = check_category(filter.category); !ok)
    return ok;
  for (const auto& type : filter.types)
    if (!check_type(type, 0))
      return bad_input(fmt::format("event type '{}' in the filter must be 1-{} characters of "
                                   "letters, digits and _ . - : / $ @",
                                   printable(type), max_type_bytes));
  return {};
}

result<log_page> read_all(pg::connection& conn, const statements& sql, checkpoint after,
                          std::size_t limit, const log_filter& filter) {
  if (filter.types.empty())
    return read_all(conn, sql, after, limit, filter.category);
  if (limit == 0)
    return bad_input("read limit must be at least 1");
  if (auto ok = check_filter(filter); !ok)
    return ok.error();
  const std::vector<std::string_view> types(filter.types.begin(), filter.types.end());
  const auto tx = std::to_string(after.transaction_id);
  const auto pos = std::to_string(after.position);
  const auto lim = std::to_string(std::min<std::size_t>(limit, INT64_MAX));
  const auto type_list = text_array(types);
  auto r = filter.category.empty()
               ? conn.query("mire_read_types", sql.read_types, {tx, pos, lim, type_list})
               : conn.query("mire_read_category_types", sql.read_category_types,
                            {tx, pos, lim, filter.category, type_list});
  if (!r)
    return r.error();
  log_page page;
  page.events.reserve(r->size());
  for (int i = 0; i < r->size(); ++i)
    page.events.push_back(event_row(*r, i));
  page.next = page.events.empty() ? after : page.events.back().checkpoint();
  return page;
}

result<std::vector<stream_info>> streams(pg::connection& conn, const statements& sql,
                                         std::string_view category) {
  if (auto ok = check_category(category); !ok)
    return ok.error();
  auto r = category.empty() ? conn.query("mire_streams_all", sql.streams_all, {})
                            : conn.query("mire_streams_category", sql.streams_category, {category});
  if (!r)
    return r.error();
  std::vector<stream_info> out;
  out.reserve(r->size());
  for (int i = 0; i < r->size(); ++i)
    out.push_back({r->str(i, 0), r->int64(i, 1), r->int64(i, 2)});
  return out;
}

result<std::optional<snapshot>> load_snapshot(pg::connection& conn, const statements& sql,
                                              std::string_view stream_id) {
  if (auto ok = check_stream_id(stream_id); !ok)
    return ok.error();
  auto r = conn.query("mire_load_snapshot", sql.load_snapshot, {stream_id});
  if (!r)
    return r.error();
  if (r->empty())
    return std::optional<snapshot>{};
  return std::optional<snapshot>{snapshot{std::string(stream_id), r->int64(0, 0),
                                          static_cast<int32_t>(r->int64(0, 1)), r->str(0, 2)}};
}

result<void> save_snapshot(pg::connection& conn, const statements& sql, const snapshot& s,
                           const store_options& options) {
  if (auto ok = check_stream_id(s.stream_id); !ok)
    return ok;
  if (s.version < 1)
    return bad_input(fmt::format("snapshot version {} of stream '{}' must be at least 1", s.version,
                                 printable(s.stream_id)));
  if (auto ok = check_json("snapshot state", s.state, 0, options.max_event_bytes * 16, false); !ok)
    return ok;
  const auto version = std::to_string(s.version);
  const auto schema = std::to_string(s.schema_version);
  auto r = conn.query("mire_save_snapshot", sql.save_snapshot, {s.stream_id, version, schema, s.state});
  if (!r)
    return r.error();
  return {};
}

result<batch_result> append_batch(pg::connection& conn, const statements& sql,
                                  std::vector<stream_append>& batch, const store_options& options) {
  if (batch.empty())
    return bad_input("nothing to append: the batch has no streams");
  std::unordered_set<std::string_view> seen_streams;
  std::vector<std::string_view> stream_ids;
  std::size_t event_count = 0;
  for (auto& s : batch) {
    if (auto ok = check_stream_id(s.stream_id); !ok)
      return ok.error();
    if (s.events.empty())
      return bad_input(fmt::format("nothing to append to stream '{}': no events given",
                                   printable(s.stream_id)));
    if (!seen_streams.insert(s.stream_id).second)
      return bad_input(fmt::format("stream '{}' appears twice in one batch", printable(s.stream_id)));
    stream_ids.push_back(s.stream_id);
    event_count += s.events.size();
  }
  const std::string streams_param = text_array(stream_ids);
  // Events are checked while the COPY streams (the server works on earlier rows meanwhile); a
  // bad one aborts the COPY and rolls back, so nothing of the batch is stored.
  bool checked = false;
  std::unordered_set<std::string_view> all_ids;
  auto check = [&](stream_append& s, std::size_t i) -> result<void> {
    if (checked)
      return {};
    if (auto ok = check_event(s.events[i], i, options); !ok) {
      auto e = std::move(ok).error();
      e.message += fmt::format(" (stream '{}')", printable(s.stream_id));
      return e;
    }
    if (!all_ids.insert(s.events[i].event_id).second)
      return bad_input(fmt::format("event id {} appears twice in one batch", s.events[i].event_id));
    return {};
  };
  auto check_all = [&]() -> result<void> {
    for (auto& s : batch)
      for (std::size_t i = 0; i < s.events.size(); ++i)
        if (auto ok = check(s, i); !ok)
          return ok;
    checked = true;
    return {};
  };
  std::string ids_param;  // built on the failure path only
  auto id_array = [&]() -> const std::string& {
    if (ids_param.empty()) {
      std::vector<std::string_view> ids;
      ids.reserve(event_count);
      for (const auto& s : batch)
        for (const auto& e : s.events)
          ids.push_back(e.event_id);
      ids_param = text_array(ids);
    }
    return ids_param;
  };
  // After a failed attempt (rolled back): the batch stored before (a retry), a conflict, or a
  // lost race of an "any" stream (nullopt: try again).
  auto after_failure = [&]() -> std::optional<result<batch_result>> {
    auto found = conn.query("mire_find_event_ids", sql.find_event_ids, {id_array()});
    if (!found)
      return result<batch_result>{found.error()};
    if (found->size() == static_cast<int>(event_count)) {
      // Every id is stored: a resend, if each stream's events are where this batch puts them.
      const auto row_of = index_rows(*found);
      batch_result again;
      again.duplicate = true;
      again.events = static_cast<int64_t>(event_count);
      for (const auto& s : batch) {
        auto original = earlier_append(*found, row_of, s.stream_id, s.events);
        if (!original)
          return result<batch_result>{original.error()};
        again.versions.push_back(original->version);
        again.first_position = again.first_position == 0
                                   ? original->first_position
                                   : std::min(again.first_position, original->first_position);
        again.last_position = std::max(again.last_position, original->last_position);
      }
      return again;
    }
    if (!found->empty())
      return result<batch_result>{bad_input(fmt::format(
          "event id {} of the batch is already stored (stream '{}', version {}) but not all of "
          "the batch is: a retried batch must resend the same events",
          found->str(0, 0), printable(found->text(0, 1)), found->int64(0, 2)))};
    auto now = conn.query("mire_batch_heads", sql.batch_heads, {streams_param});
    if (!now)
      return result<batch_result>{now.error()};
    for (std::size_t i = 0; i < batch.size(); ++i) {
      const auto& s = batch[i];
      const int64_t head = now->int64(static_cast<int>(i), 1);
      if (!s.expected.is_any() && head != s.expected.value())
        return result<batch_result>{conflict(s.stream_id, s.expected.value(), head)};
    }
    return std::nullopt;
  };

  // Rows go in stream-id order: two batches over the same streams then wait on each other's
  // index entries in the same order instead of deadlocking.
  std::vector<std::size_t> order(batch.size());
  for (std::size_t i = 0; i < order.size(); ++i)
    order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](std::size_t a, std::size_t b) { return batch[a].stream_id < batch[b].stream_id; });

  const auto deadline = std::chrono::steady_clock::now() + race_deadline;
  for (;;) {
    if (auto r = conn.exec("BEGIN"); !r)
      return r.error();
    // Heads read inside the transaction. A writer that slips in after this read makes the COPY
    // hit the (stream_id, version) unique key, so the check-then-copy is still all-or-nothing.
    auto heads = conn.query("mire_batch_heads", sql.batch_heads, {streams_param});
    if (!heads) {
      (void)conn.exec("ROLLBACK");
      return heads.error();
    }
    batch_result out;
    out.versions.resize(batch.size());
    bool stale = false;
    for (std::size_t i = 0; i < batch.size() && !stale; ++i)
      stale = !batch[i].expected.is_any() &&
              heads->int64(static_cast<int>(i), 1) != batch[i].expected.value();
    if (!stale) {
      if (auto started = conn.copy_begin(sql.batch_copy); !started) {
        (void)conn.exec("ROLLBACK");
        return started.error();
      }
      // Rows go out in 64 KiB chunks while the next ones are formatted: the server parses and
      // indexes while the client is still writing.
      constexpr std::size_t chunk = 64 * 1024;
      std::string copy;
      copy.reserve(chunk + 4096);
      for (std::size_t i : order) {
        auto& s = batch[i];
        int64_t version = heads->int64(static_cast<int>(i), 1);
        for (std::size_t k = 0; k < s.events.size(); ++k) {
          if (auto ok = check(s, k); !ok) {
            (void)conn.copy_end("bad input");
            (void)conn.exec("ROLLBACK");
            return ok.error();
          }
          const auto& e = s.events[k];
          pg::append_copy_field(copy, s.stream_id);
          copy += '\t';
          copy += std::to_string(++version);
          copy += '\t';
          copy += e.event_id;
          copy += '\t';
          pg::append_copy_field(copy, e.type);
          copy += '\t';
          pg::append_copy_field(copy, e.data);
          copy += '\t';
          pg::append_copy_field(copy, e.metadata);
          copy += '\n';
          if (copy.size() >= chunk) {
            conn.copy_put(copy);
            copy.clear();
          }
        }
        out.versions[i] = version;
        out.events += static_cast<int64_t>(s.events.size());
      }
      conn.copy_put(copy);
      checked = true;
      auto copied = conn.copy_end();
      if (copied) {
        auto pos = conn.query("mire_batch_positions", sql.batch_positions, {});
        if (!pos) {
          (void)conn.exec("ROLLBACK");
          return pos.error();
        }
        out.first_position = pos->int64(0, 0);
        out.last_position = pos->int64(0, 1);
        auto done = conn.exec("COMMIT");
        if (!done) {
          auto err = std::move(done).error();
          if (conn.last_failure_lost_connection())
            err.code = errc::commit_in_doubt;
          return err;
        }
        return out;
      }
      auto err = std::move(copied).error();
      // A unique violation is a race or a retry; a deadlock or serialization failure (another
      // writer holding rows of ours) is a race too. Anything else is final.
      const bool race = err.sqlstate == "23505" || err.sqlstate == "40P01" || err.sqlstate == "40001";
      if (!race) {
        (void)conn.exec("ROLLBACK");
        return with_context(std::move(err), "batched append");
      }
    }
    (void)conn.exec("ROLLBACK");
    if (auto ok = check_all(); !ok)  // a stale stream stopped us before the events were checked
      return ok.error();
    if (auto decided = after_failure())
      return std::move(*decided);
    if (std::chrono::steady_clock::now() > deadline)
      return error{errc::timeout, fmt::format("batched append kept losing races with concurrent "
                                              "writers for {} s",
                                              race_deadline.count())};
  }
}

namespace {

error in_doubt(error err) {
  err.code = errc::commit_in_doubt;
  err.message = "the connection broke during a group commit; it may have committed: resend the "
                "same appends (their event ids make that safe): " + err.message;
  return with_context(std::move(err), "group commit");
}

// A group member left out for a stale expectation may be a resend of an append that did commit
// (the connection broke before the answer came; rule 2): its event ids tell, and it then gets
// the original positions, as a repeated single append does. Otherwise it is a conflict.
result<append_result> stale_or_repeated(pg::connection& conn, const statements& sql,
                                        const stream_append& a, int64_t actual) {
  const auto ids = array_literal(a.events, [](auto& e) -> std::string_view { return e.event_id; });
  auto previous = find_previous_append(conn, sql, a.stream_id, a.events, ids);
  if (!previous)
    return previous.error();
  if (*previous)
    return **previous;
  return conflict(a.stream_id, a.expected.value(), actual);
}

// The group with exact expectations only (see statements::append_group_exact). Members absent
// from what was inserted had a stale expectation: one more query reads their actual versions.
result<std::vector<result<append_result>>>
append_group_exact(pg::connection& conn, const statements& sql,
                   const std::vector<stream_append>& group, const std::vector<bool>& known,
                   const std::string& ids, const std::string& types, const std::string& data,
                   const std::string& meta, const std::string& lock_timeout) {
  std::string event_streams = "{", expectations = "{", versions = "{", knowns = "{";
  const char* sep = "";
  for (std::size_t i = 0; i < group.size(); ++i) {
    const auto& a = group[i];
    const int64_t head = a.expected.value();
    const bool skip_probe = head == 0 || known[i];
    for (std::size_t k = 1; k <= a.events.size(); ++k) {
      event_streams += sep;
      pg::append_array_element(event_streams, a.stream_id);
      expectations += fmt::format("{}{}", sep, head);
      versions += fmt::format("{}{}", sep, head + static_cast<int64_t>(k));
      knowns += sep;
      knowns += skip_probe ? 't' : 'f';
      sep = ",";
    }
  }
  event_streams += '}';
  expectations += '}';
  versions += '}';
  knowns += '}';
  auto r = conn.query("mire_append_group_exact", sql.append_group_exact,
                      {event_streams, expectations, versions, ids, types, data, meta, knowns,
                       lock_timeout});
  if (!r)
    return r.error();
  struct written {
    int64_t version = 0, first = 0, last = 0;
  };
  std::unordered_map<std::string_view, written> done;
  for (int row = 0; row < r->size(); ++row) {
    auto& w = done[r->text(row, 0)];
    const int64_t pos = r->int64(row, 2);
    w.version = std::max(w.version, r->int64(row, 1));
    w.first = w.first == 0 ? pos : std::min(w.first, pos);
    w.last = std::max(w.last, pos);
  }
  std::unordered_map<std::string, int64_t> actual;
  if (done.size() < group.size()) {
    std::vector<std::string_view> stale;
    for (const auto& a : group)
      if (!done.count(a.stream_id))
        stale.push_back(a.stream_id);
    auto heads = conn.query("mire_batch_heads", sql.batch_heads, {text_array(stale)});
    if (!heads)
      return heads.error();
    for (int row = 0; row < heads->size(); ++row)
      actual[heads->str(row, 0)] = heads->int64(row, 1);
  }
  std::vector<result<append_result>> out;
  out.reserve(group.size());
  for (const auto& a : group) {
    if (auto it = done.find(a.stream_id); it != done.end())
      out.push_back(append_result{it->second.version, it->second.first, it->second.last, false});
    else
      out.push_back(stale_or_repeated(conn, sql, a, actual[a.stream_id]));
  }
  return out;
}

} // namespace

result<std::vector<result<append_result>>> append_group(pg::connection& conn,
                                                       const statements& sql,
                                                       std::vector<stream_append>& group,
                                                       const std::vector<bool>& known,
                                                       const store_options& options) {
  if (known.size() != group.size())
    return bad_input(fmt::format("group commit: {} known flags for {} appends", known.size(),
                                 group.size()));
  std::unordered_set<std::string_view> seen;
  std::vector<event_data> all;
  std::string streams = "{", expected = "{", counts = "{";
  for (std::size_t i = 0; i < group.size(); ++i) {
    auto& a = group[i];
    if (auto ok = check_append(a.stream_id, a.events, options); !ok)
      return ok.error();
    if (!seen.insert(a.stream_id).second)
      return bad_input(fmt::format("stream '{}' appears twice in one group", printable(a.stream_id)));
    const char* sep = i ? "," : "";
    streams += sep;
    pg::append_array_element(streams, a.stream_id);
    expected += fmt::format("{}{}", sep, a.expected.value());
    counts += fmt::format("{}{}", sep, a.events.size());
    all.insert(all.end(), a.events.begin(), a.events.end());
  }
  streams += '}';
  expected += '}';
  counts += '}';
  std::vector<result<append_result>> out;
  if (group.empty())
    return out;
  const std::string ids = array_literal(all, [](auto& e) -> std::string_view { return e.event_id; });
  const std::string types = array_literal(all, [](auto& e) -> std::string_view { return e.type; });
  const std::string data = array_literal(all, [](auto& e) -> std::string_view { return e.data; });
  const std::string meta = array_literal(all, [](auto& e) -> std::string_view { return e.metadata; });
  const bool all_exact = std::none_of(group.begin(), group.end(),
                                      [](const stream_append& a) { return a.expected.is_any(); });
  const std::string lock_timeout = std::to_string(options.group_lock_timeout_ms);
  // A unique key fired (a concurrent writer, a resent append) or an append waited too long for
  // another transaction's row lock: the per-append subtransactions of the function sort each
  // append out on its own.
  auto per_append = [](const error& e) { return e.sqlstate == "23505" || e.sqlstate == "55P03"; };
  bool locked = false;
  if (all_exact) {
    auto r = append_group_exact(conn, sql, group, known, ids, types, data, meta, lock_timeout);
    if (r || (!per_append(r.error()) && !conn.last_failure_lost_connection()))
      return r;
    if (conn.last_failure_lost_connection())
      return in_doubt(std::move(r).error());
    locked = r.error().sqlstate == "55P03";
  }
  const std::vector<pg::param> params{streams, expected, counts, ids, types, data, meta, lock_timeout};
  // One set-based statement first: stale expectations are filtered out, not raised, so only a
  // unique key or a lock can fail it. After a lock it would only wait again: straight on.
  auto r = locked ? conn.query("mire_append_group", sql.append_group, params)
                  : conn.query("mire_append_group_set", sql.append_group_set, params);
  if (!locked && !r && per_append(r.error()) && !conn.last_failure_lost_connection())
    r = conn.query("mire_append_group", sql.append_group, params);
  if (!r) {
    if (conn.last_failure_lost_connection())
      return in_doubt(std::move(r).error());
    return with_context(std::move(r).error(), "group commit");
  }
  out.reserve(group.size());
  for (std::size_t i = 0; i < group.size(); ++i) {
    const int row = static_cast<int>(i);
    const auto outcome = r->text(row, 0);
    const auto& a = group[i];
    if (outcome == "ok") {
      out.push_back(append_result{r->int64(row, 1), r->int64(row, 2), r->int64(row, 3), false});
    } else if (outcome == "conflict") {
      out.push_back(stale_or_repeated(conn, sql, a, r->int64(row, 4)));
    } else if (outcome == "locked" && !a.expected.is_any()) {
      // As good as a conflict: another writer has this version, committed or not yet.
      error e{errc::version_conflict,
              fmt::format("stream '{}' is being written by another transaction (no row lock "
                          "within {} ms); nothing of this append was stored",
                          printable(a.stream_id), options.group_lock_timeout_ms)};
      e.stream_id = a.stream_id;
      e.expected = a.expected.value();
      out.push_back(std::move(e));
    } else {
      // A unique key fired (a repeated append or a lost race), or an "any" append met a lock,
      // which it waits out as a single append would. The single-append path already tells
      // these apart (and retries "any"), so let it decide, alone, now the group is done.
      out.push_back(append(conn, sql, tx_mode::autocommit, a.stream_id, a.expected, known[i], a.events));
    }
  }
  return out;
}

} // namespace mire::detail
