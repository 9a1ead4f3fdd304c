#include "schema.hpp"

#include <array>
#include <set>

#include <fmt/format.h>

namespace mire::detail {

namespace {

struct migration {
  int version;
  std::string_view name;
  std::string_view sql;
};

// Append new migrations at the end; never edit one that has shipped.
constexpr std::array migrations{
    migration{1, "event store", R"sql(
CREATE TABLE {s}.events (
  global_position bigint GENERATED ALWAYS AS IDENTITY,
  transaction_id xid8 NOT NULL DEFAULT pg_current_xact_id(),
  stream_id text NOT NULL,
  category text NOT NULL GENERATED ALWAYS AS (split_part(stream_id, '-', 1)) STORED,
  version bigint NOT NULL CHECK (version > 0),
  event_id uuid NOT NULL,
  event_type text NOT NULL,
  payload jsonb NOT NULL,
  metadata jsonb NOT NULL DEFAULT '{}',
  recorded_at timestamptz NOT NULL DEFAULT now(),
  -- the global log is read in (transaction_id, global_position) order (DESIGN rule 3)
  CONSTRAINT events_log PRIMARY KEY (transaction_id, global_position),
  CONSTRAINT events_stream_version UNIQUE (stream_id, version),
  CONSTRAINT events_event_id UNIQUE (event_id)
);
CREATE INDEX events_category_log ON {s}.events (category, transaction_id, global_position);

CREATE TABLE {s}.snapshots (
  stream_id text PRIMARY KEY,
  version bigint NOT NULL CHECK (version > 0),
  schema_version int NOT NULL,
  state jsonb NOT NULL,
  recorded_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE {s}.leases (
  resource text PRIMARY KEY,
  owner text,
  fence_token bigint NOT NULL DEFAULT 0,
  expires_at timestamptz NOT NULL DEFAULT '-infinity',
  acquired_at timestamptz
);

CREATE TABLE {s}.checkpoints (
  projection text PRIMARY KEY,
  transaction_id xid8 NOT NULL DEFAULT '0',
  position bigint NOT NULL DEFAULT 0,
  fence_token bigint NOT NULL DEFAULT 0,
  updated_at timestamptz NOT NULL DEFAULT now()
);
)sql"},
};

} // namespace

result<void> check_schema_name(std::string_view schema) {
  bool ok = !schema.empty() && schema.size() <= 63 && !(schema[0] >= '0' && schema[0] <= '9');
  for (char c : schema)
    ok = ok && ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_');
  if (ok)
    return {};
  return bad_input(fmt::format("schema name '{}' must be 1-63 characters of a-z, 0-9 and _, "
                               "not starting with a digit",
                               schema));
}

std::string in_schema(std::string_view sql, std::string_view schema) {
  const std::string quoted = pg::quote_ident(schema);
  std::string out;
  out.reserve(sql.size() + 64);
  for (std::size_t i = 0; i < sql.size(); ++i) {
    if (sql.compare(i, 3, "{s}") == 0) {
      out += quoted;
      i += 2;
    } else {
      out += sql[i];
    }
  }
  return out;
}

result<int> migrate(pg::connection& conn, std::string_view schema) {
  if (auto ok = check_schema_name(schema); !ok)
    return ok.error();
  const std::string key = fmt::format("mire.migrate.{}", schema);
  // A session-level advisory lock serialises concurrent migrators (two processes starting at once).
  if (auto r = conn.query("mire_migrate_lock", "SELECT pg_advisory_lock(hashtext($1))", {key}); !r)
    return r.error();
  auto unlock = [&] {
    (void)conn.query("mire_migrate_unlock", "SELECT pg_advisory_unlock(hashtext($1))", {key});
  };
  auto setup = conn.exec(in_schema(R"sql(
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.migrations (
  version int PRIMARY KEY,
  name text NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now()
))sql",
                                   schema));
  if (!setup) {
    unlock();
    return setup.error();
  }
  auto done = conn.exec(in_schema("SELECT version FROM {s}.migrations", schema));
  if (!done) {
    unlock();
    return done.error();
  }
  std::set<int64_t> applied;
  for (int i = 0; i < done->size(); ++i)
    applied.insert(done->int64(i, 0));
  int count = 0;
  for (const auto& m : migrations) {
    if (applied.contains(m.version))
      continue;
    auto r = conn.exec(fmt::format("BEGIN;\n{}\nINSERT INTO {}.migrations (version, name) "
                                   "VALUES ({}, '{}');\nCOMMIT;",
                                   in_schema(m.sql, schema), pg::quote_ident(schema), m.version,
                                   m.name));
    if (!r) {
      (void)conn.exec("ROLLBACK");
      unlock();
      auto e = std::move(r).error();
      e.message = fmt::format("migration {} ({}) failed: {}", m.version, m.name, e.message);
      return e;
    }
    ++count;
  }
  unlock();
  return count;
}

} // namespace mire::detail
