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
    migration{2, "group commit", R"sql(
-- Appends to several streams in one transaction, each in its own subtransaction so that one
-- stale expectation fails only its own append. Same rules as the single append: numbered from
-- the expected version, no holes (EXISTS), unique keys catch races and repeated event ids.
-- Per append: 'ok' with the new version and positions, 'conflict' with the actual version when
-- the stream is behind the expectation, 'unique' when a unique key fired (a lost race or a
-- repeated append: the caller sorts out which).
CREATE FUNCTION {s}.append_group(p_streams text[], p_expected bigint[], p_counts int[],
                                 p_ids uuid[], p_types text[], p_data jsonb[], p_meta jsonb[])
RETURNS TABLE (r_outcome text, r_version bigint, r_first bigint, r_last bigint, r_actual bigint)
LANGUAGE plpgsql AS $fn$
DECLARE
  i int;
  n int;
  head bigint;
  off int := 0;
BEGIN
  FOR i IN 1 .. coalesce(array_length(p_streams, 1), 0) LOOP
    n := p_counts[i];
    r_outcome := 'ok'; r_version := NULL; r_first := NULL; r_last := NULL; r_actual := NULL;
    BEGIN
      IF p_expected[i] < 0 THEN
        SELECT coalesce(max(e.version), 0) INTO head FROM {s}.events e WHERE e.stream_id = p_streams[i];
      ELSIF p_expected[i] = 0 OR EXISTS (SELECT 1 FROM {s}.events e
                                          WHERE e.stream_id = p_streams[i] AND e.version = p_expected[i]) THEN
        head := p_expected[i];
      ELSE
        head := NULL;
        r_outcome := 'conflict';
        SELECT coalesce(max(e.version), 0) INTO r_actual FROM {s}.events e WHERE e.stream_id = p_streams[i];
      END IF;
      IF head IS NOT NULL THEN
        WITH ins AS (
          INSERT INTO {s}.events (stream_id, version, event_id, event_type, payload, metadata)
          SELECT p_streams[i], head + k, p_ids[off + k], p_types[off + k], p_data[off + k], p_meta[off + k]
          FROM generate_series(1, n) AS k ORDER BY k
          RETURNING global_position)
        SELECT min(global_position), max(global_position) INTO r_first, r_last FROM ins;
        r_version := head + n;
      END IF;
    EXCEPTION WHEN unique_violation THEN
      r_outcome := 'unique';
    END;
    off := off + n;
    RETURN NEXT;
  END LOOP;
END
$fn$;
)sql"},
    migration{3, "projections", R"sql(
-- Projections (DESIGN rules 3, 4). Migration 1's `checkpoints` table stays unused: a projection
-- now has generations (a rebuild builds the next one beside the live one), each with its own
-- checkpoint, so checkpoints live in projection_generations.
CREATE TABLE {s}.projections (
  name text PRIMARY KEY,
  category text NOT NULL DEFAULT '',       -- the filter, kept for status and lag ('' = all)
  event_types text[] NOT NULL DEFAULT '{}', -- '{}' = all
  live_generation int NOT NULL DEFAULT 1,   -- readers' views point at this generation's tables
  state text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'stopped')),
  error text,                               -- why it stopped
  rebuild_requested boolean NOT NULL DEFAULT false,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);

-- One row per generation whose read model is set up: the live one and, during a rebuild, the
-- next. The checkpoint is (transaction_id, position) of the last event applied (rule 3); it is
-- written only in the transaction of the read-model writes, under the lease's fence (rule 4).
CREATE TABLE {s}.projection_generations (
  name text NOT NULL REFERENCES {s}.projections (name) ON DELETE CASCADE,
  generation int NOT NULL,
  transaction_id xid8 NOT NULL DEFAULT '0',
  position bigint NOT NULL DEFAULT 0,
  fence_token bigint NOT NULL DEFAULT 0,    -- the fence of the last commit
  events_applied bigint NOT NULL DEFAULT 0,
  last_recorded_at timestamptz,             -- recorded_at of the last event applied
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (name, generation)
);

-- Events a handler refused under the `park` policy; an operator skips or retries them by id.
CREATE TABLE {s}.projection_dead_letters (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  projection text NOT NULL,
  generation int NOT NULL,
  transaction_id xid8 NOT NULL,
  position bigint NOT NULL,
  event_id uuid NOT NULL,
  stream_id text NOT NULL,
  version bigint NOT NULL,
  event_type text NOT NULL,
  error text NOT NULL,
  status text NOT NULL DEFAULT 'parked' CHECK (status IN ('parked', 'retry', 'skipped', 'applied')),
  parked_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (projection, generation, event_id)
);
CREATE INDEX projection_dead_letters_status ON {s}.projection_dead_letters (projection, status);

-- Followers of the log are woken by pg_notify('mire_events', <schema>), sent by mire after
-- appends commit (event_store.cpp, append_notifier), not by a trigger: a NOTIFY inside every
-- append transaction would make all commits queue on Postgres's notify lock.
)sql"},
    migration{4, "group commit lock timeout", R"sql(
-- append_group with a lock timeout: an append that waits longer than p_lock_timeout (ms) for a
-- row lock (another transaction wrote the same stream version or event id and has not ended)
-- comes back 'locked' instead of holding the rest of the group up. Beside migration 2's
-- function, which older binaries still call.
CREATE FUNCTION {s}.append_group(p_streams text[], p_expected bigint[], p_counts int[],
                                 p_ids uuid[], p_types text[], p_data jsonb[], p_meta jsonb[],
                                 p_lock_timeout text)
RETURNS TABLE (r_outcome text, r_version bigint, r_first bigint, r_last bigint, r_actual bigint)
LANGUAGE plpgsql AS $fn$
DECLARE
  i int;
  n int;
  head bigint;
  off int := 0;
BEGIN
  PERFORM set_config('lock_timeout', p_lock_timeout, true);
  FOR i IN 1 .. coalesce(array_length(p_streams, 1), 0) LOOP
    n := p_counts[i];
    r_outcome := 'ok'; r_version := NULL; r_first := NULL; r_last := NULL; r_actual := NULL;
    BEGIN
      IF p_expected[i] < 0 THEN
        SELECT coalesce(max(e.version), 0) INTO head FROM {s}.events e WHERE e.stream_id = p_streams[i];
      ELSIF p_expected[i] = 0 OR EXISTS (SELECT 1 FROM {s}.events e
                                          WHERE e.stream_id = p_streams[i] AND e.version = p_expected[i]) THEN
        head := p_expected[i];
      ELSE
        head := NULL;
        r_outcome := 'conflict';
        SELECT coalesce(max(e.version), 0) INTO r_actual FROM {s}.events e WHERE e.stream_id = p_streams[i];
      END IF;
      IF head IS NOT NULL THEN
        WITH ins AS (
          INSERT INTO {s}.events (stream_id, version, event_id, event_type, payload, metadata)
          SELECT p_streams[i], head + k, p_ids[off + k], p_types[off + k], p_data[off + k], p_meta[off + k]
          FROM generate_series(1, n) AS k ORDER BY k
          RETURNING global_position)
        SELECT min(global_position), max(global_position) INTO r_first, r_last FROM ins;
        r_version := head + n;
      END IF;
    EXCEPTION
      WHEN unique_violation THEN r_outcome := 'unique';
      WHEN lock_not_available THEN r_outcome := 'locked';
    END;
    off := off + n;
    RETURN NEXT;
  END LOOP;
END
$fn$;
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
