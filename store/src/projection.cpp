// The projector: fenced batches (rule 4) over the commit-safe global log (rule 3), poison
// policies, dead letters, and rebuilds into a new generation switched live in one transaction.
#include "mire/store/projection.hpp"

#include <algorithm>
#include <chrono>
#include <future>
#include <map>
#include <optional>
#include <utility>

#include <fmt/format.h>

#include "mire/store/listener.hpp"

#include "access.hpp"
#include "pg.hpp"
#include "schema.hpp"
#include "session.hpp"

namespace mire {

namespace {

using detail::store_access;

constexpr std::size_t max_identifier = 50; // leaves room for "_g<generation>" within 63
constexpr std::size_t max_stored_error = 2000; // of a handler's message kept in status / dead letters
constexpr int retries_per_step = 100;

bool plain_identifier(std::string_view s) {
  bool ok = !s.empty() && s.size() <= max_identifier && !(s[0] >= '0' && s[0] <= '9');
  for (char c : s)
    ok = ok && ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_');
  return ok;
}

result<void> check_name(std::string_view name) {
  if (plain_identifier(name))
    return {};
  return bad_input(fmt::format("projection name '{}' must be 1-{} characters of a-z, 0-9 and _, "
                               "not starting with a digit",
                               detail::printable(name), max_identifier));
}

// Transient: worth trying again later as it is. Anything else a handler returns is poison.
bool transient(const error& e) {
  return e.code == errc::unavailable || e.code == errc::commit_in_doubt ||
         e.code == errc::timeout || e.code == errc::version_conflict || e.code == errc::fenced_out;
}

error fenced(const lease& held) {
  return error{errc::fenced_out, fmt::format("lease {} is no longer held by {} with fence {}",
                                             held.resource, held.owner, held.fence_token)};
}

// Statement texts for one schema.
struct texts {
  std::string register_projection, head, rebuild_failed, lock_lease, lock_generation, claim,
      lock_projection, guard, insert_generation, clear_rebuild, switch_live, drop_generation, park,
      stop, retries, retry_done, retry_failed, status, request_rebuild, reset, resume, dead_letters,
      skip, retry, held_back;

  explicit texts(std::string_view schema) {
    auto s = [&](std::string_view t) { return detail::in_schema(t, schema); };
    register_projection = s(R"sql(
INSERT INTO {s}.projections AS p (name, category, event_types) VALUES ($1, $2, $3::text[])
ON CONFLICT (name) DO UPDATE SET category = excluded.category, event_types = excluded.event_types
WHERE (p.category, p.event_types) IS DISTINCT FROM (excluded.category, excluded.event_types))sql");
    // One row per generation (or one with NULLs before the first is set up).
    head = s(R"sql(
SELECT p.state, p.live_generation, p.rebuild_requested,
       EXISTS (SELECT 1 FROM {s}.projection_dead_letters d
               WHERE d.projection = p.name AND d.status = 'retry'),
       g.generation, g.transaction_id, g.position
FROM {s}.projections p LEFT JOIN {s}.projection_generations g ON g.name = p.name
WHERE p.name = $1 ORDER BY g.generation)sql");
    // Held until commit: a takeover (which updates this row) waits for the batch to end, and
    // the batch starts only while the lease is ours and live by the database clock.
    // A batch left idle in transaction past the lease's end (its process paused: GC, SIGSTOP)
    // is ended by the server, so it never keeps the next owner waiting for long.
    lock_lease = s(R"sql(
SELECT set_config('idle_in_transaction_session_timeout',
         least(2147483647, greatest(250, extract(epoch FROM expires_at - clock_timestamp()) * 1000))
           ::bigint::text,
         true)
FROM {s}.leases
WHERE resource = $1 AND owner = $2 AND fence_token = $3 AND expires_at > clock_timestamp()
FOR SHARE)sql");
    // Serialises with reset_projection; the checkpoint read here must be the batch's start.
    lock_generation = s(R"sql(
SELECT transaction_id, position FROM {s}.projection_generations
WHERE name = $1 AND generation = $2 FOR UPDATE)sql");
    // lock_lease and lock_generation in one round trip: a batch's first statement. Both rows
    // are locked once the join has found them, in the order of the locking clauses. No row:
    // the lease is not ours, or the generation is gone (lock_lease tells which).
    claim = s(R"sql(
SELECT set_config('idle_in_transaction_session_timeout',
         least(2147483647, greatest(250, extract(epoch FROM l.expires_at - clock_timestamp()) * 1000))::bigint::text,
         true),
       g.transaction_id, g.position
FROM {s}.leases l, {s}.projection_generations g
WHERE l.resource = $1 AND l.owner = $2 AND l.fence_token = $3 AND l.expires_at > clock_timestamp()
  AND g.name = $4 AND g.generation = $5
FOR SHARE OF l FOR UPDATE OF g)sql");
    lock_projection = s(R"sql(
SELECT live_generation, rebuild_requested FROM {s}.projections WHERE name = $1 FOR UPDATE)sql");
    // Rule 4: the checkpoint moves only from where the batch started, only while the lease row
    // still carries our owner and fence unexpired. Zero rows: roll everything back. It returns
    // whether the projection is plainly running its live generation (no stop, rebuild or
    // retry asked for), as of this batch: then the next step need not read the head again.
    guard = s(R"sql(
UPDATE {s}.projection_generations g
SET transaction_id = $6::xid8, position = $7::bigint, fence_token = $3::bigint,
    events_applied = g.events_applied + $8::bigint,
    last_recorded_at = coalesce($9::timestamptz, g.last_recorded_at), updated_at = now()
WHERE g.name = $4 AND g.generation = $5::int
  AND g.transaction_id = $10::xid8 AND g.position = $11::bigint
  AND EXISTS (SELECT 1 FROM {s}.leases l
              WHERE l.resource = $1 AND l.owner = $2 AND l.fence_token = $3::bigint
                AND l.expires_at > clock_timestamp())
RETURNING (SELECT p.state = 'running' AND NOT p.rebuild_requested
                  AND p.live_generation = g.generation
                  AND NOT EXISTS (SELECT 1 FROM {s}.projection_generations x
                                  WHERE x.name = p.name AND x.generation <> g.generation)
                  AND NOT EXISTS (SELECT 1 FROM {s}.projection_dead_letters d
                                  WHERE d.projection = p.name AND d.status = 'retry')
           FROM {s}.projections p WHERE p.name = g.name))sql");
    insert_generation = s(R"sql(
INSERT INTO {s}.projection_generations (name, generation, fence_token) VALUES ($1, $2, $3)
ON CONFLICT DO NOTHING)sql");
    // Only while the rebuild it answers runs (the generation after the live one exists): a
    // runner that read the flag before another replica switched that rebuild live must not eat
    // a request made since.
    clear_rebuild = s("UPDATE {s}.projections p SET rebuild_requested = false, updated_at = now() "
                      "WHERE p.name = $1 AND EXISTS (SELECT 1 FROM {s}.projection_generations g "
                      "WHERE g.name = $1 AND g.generation = p.live_generation + 1)");
    switch_live = s("UPDATE {s}.projections SET live_generation = $2, updated_at = now(), "
                    "error = CASE WHEN state = 'running' THEN NULL ELSE error END "
                    "WHERE name = $1 AND live_generation = $3");
    drop_generation = s(R"sql(
WITH gone AS (DELETE FROM {s}.projection_dead_letters WHERE projection = $1 AND generation = $2)
DELETE FROM {s}.projection_generations WHERE name = $1 AND generation = $2)sql");
    park = s(R"sql(
INSERT INTO {s}.projection_dead_letters
  (projection, generation, transaction_id, position, event_id, stream_id, version, event_type, error)
VALUES ($1, $2, $3::xid8, $4, $5::uuid, $6, $7, $8, $9)
ON CONFLICT (projection, generation, event_id) DO UPDATE
SET error = excluded.error, status = 'parked', updated_at = now())sql");
    stop = s("UPDATE {s}.projections SET state = 'stopped', error = $2, updated_at = now() "
             "WHERE name = $1");
    rebuild_failed = s("UPDATE {s}.projections SET rebuild_requested = false, error = $2, "
                       "updated_at = now() WHERE name = $1");
    retries = s(R"sql(
SELECT e.stream_id, e.version, e.global_position, e.transaction_id, e.event_id, e.event_type,
       e.payload, e.metadata, e.recorded_at, d.id, d.generation
FROM {s}.projection_dead_letters d JOIN {s}.events e ON e.event_id = d.event_id
WHERE d.projection = $1 AND d.status = 'retry' ORDER BY d.id LIMIT $2)sql");
    // (lease still held, dead letter marked applied): held but not marked means an operator
    // skipped or changed the dead letter meanwhile.
    retry_done = s(R"sql(
WITH held AS (SELECT 1 FROM {s}.leases l
              WHERE l.resource = $1 AND l.owner = $2 AND l.fence_token = $3::bigint
                AND l.expires_at > clock_timestamp()),
done AS (UPDATE {s}.projection_dead_letters SET status = 'applied', updated_at = now()
         WHERE id = $4 AND status = 'retry' AND EXISTS (SELECT 1 FROM held) RETURNING 1)
SELECT EXISTS (SELECT 1 FROM held), EXISTS (SELECT 1 FROM done))sql");
    // Fenced like retry_done: a replica that lost the lease meanwhile must not put back to
    // 'parked' a letter the new holder may be retrying.
    retry_failed = s(R"sql(
UPDATE {s}.projection_dead_letters SET status = 'parked', error = $2, updated_at = now()
WHERE id = $1 AND status = 'retry'
  AND EXISTS (SELECT 1 FROM {s}.leases l
              WHERE l.resource = $3 AND l.owner = $4 AND l.fence_token = $5::bigint
                AND l.expires_at > clock_timestamp()))sql");
    status = s(R"sql(
SELECT p.name, p.state, coalesce(p.error, ''), p.live_generation,
       coalesce(g.transaction_id, '0'), coalesce(g.position, 0), coalesce(g.events_applied, 0),
       coalesce(to_char(g.last_recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), ''),
       coalesce(to_char(g.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), ''),
       coalesce(l.owner, ''), coalesce(l.fence_token, 0), coalesce(l.expires_at > now(), false),
       (SELECT count(*) FROM {s}.projection_dead_letters d
        WHERE d.projection = p.name AND d.status IN ('parked', 'retry')),
       p.rebuild_requested, coalesce(b.generation, 0), coalesce(b.transaction_id, '0'),
       coalesce(b.position, 0), coalesce(b.events_applied, 0),
       lag.n, coalesce(lag.age, 0), coalesce(rlag.n, 0)
FROM {s}.projections p
LEFT JOIN {s}.projection_generations g ON g.name = p.name AND g.generation = p.live_generation
LEFT JOIN {s}.projection_generations b ON b.name = p.name AND b.generation > p.live_generation
LEFT JOIN {s}.leases l ON l.resource = 'projection:' || p.name
LEFT JOIN LATERAL (
  SELECT count(*) AS n, extract(epoch FROM now() - min(e.recorded_at))::float8 AS age
  FROM {s}.events e
  WHERE (e.transaction_id, e.global_position) > (coalesce(g.transaction_id, '0'), coalesce(g.position, 0))
    AND (p.category = '' OR e.category = p.category)
    AND (cardinality(p.event_types) = 0 OR e.event_type = ANY(p.event_types))) lag ON true
LEFT JOIN LATERAL (
  SELECT count(*) AS n FROM {s}.events e
  WHERE b.generation IS NOT NULL
    AND (e.transaction_id, e.global_position) > (b.transaction_id, b.position)
    AND (p.category = '' OR e.category = p.category)
    AND (cardinality(p.event_types) = 0 OR e.event_type = ANY(p.event_types))) rlag ON true
WHERE $1 = '' OR p.name = $1
ORDER BY p.name)sql");
    // A stopped projection keeps its request flag as it is: the caller is told to resume or
    // reset it first (a request it could not act on would start unseen, much later).
    request_rebuild = s(R"sql(
UPDATE {s}.projections
SET rebuild_requested = rebuild_requested OR state = 'running',
    updated_at = CASE WHEN state = 'running' THEN now() ELSE updated_at END
WHERE name = $1 RETURNING state, coalesce(error, ''))sql");
    reset = s(R"sql(
WITH p AS (UPDATE {s}.projections SET state = 'running', error = NULL, updated_at = now()
           WHERE name = $1 RETURNING name, live_generation)
UPDATE {s}.projection_generations g
SET transaction_id = $2::xid8, position = $3::bigint, updated_at = now()
FROM p WHERE g.name = p.name AND g.generation = p.live_generation
RETURNING g.name)sql");
    resume = s("UPDATE {s}.projections SET state = 'running', error = NULL, updated_at = now() "
               "WHERE name = $1 RETURNING name");
    // No row: no such projection; one row of NULLs: a projection without dead letters.
    dead_letters = s(R"sql(
SELECT d.id, d.projection, d.generation, d.transaction_id, d.position, d.event_id, d.stream_id,
       d.version, d.event_type, d.error, d.status,
       to_char(d.parked_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
FROM {s}.projections p LEFT JOIN {s}.projection_dead_letters d ON d.projection = p.name
WHERE p.name = $1 ORDER BY d.id)sql");
    skip = s("UPDATE {s}.projection_dead_letters SET status = 'skipped', updated_at = now() "
             "WHERE id = $1 AND status IN ('parked', 'retry') RETURNING id");
    retry = s("UPDATE {s}.projection_dead_letters SET status = 'retry', updated_at = now() "
              "WHERE id = $1 AND status = 'parked' RETURNING id");
    // Committed events that a reader cannot take yet: a transaction older than theirs is still
    // open (rule 3). Their notification has come and gone, and what holds them back (a
    // transaction scope, a projection's batch) may end without one. Not narrowed to the
    // projection's filter: under a long-open transaction that would scan every event since it
    // began whenever none matches; this finds the first row at once.
    held_back = s("SELECT EXISTS (SELECT 1 FROM {s}.events "
                  "WHERE transaction_id >= pg_snapshot_xmin(pg_current_snapshot()))");
  }
};

// The texts of a store's schema, built once per call site's store.
const texts& texts_of(const event_store& store) {
  thread_local std::map<std::string, texts> cache;
  const auto& schema = store_access::schema(store);
  auto it = cache.find(schema);
  if (it == cache.end())
    it = cache.emplace(schema, texts{schema}).first;
  return it->second;
}

std::string type_list(const log_filter& f) {
  std::vector<std::string_view> v(f.types.begin(), f.types.end());
  return detail::text_array(v);
}

result<pg::rows> run(event_store& store, const char* name, const std::string& sql,
                     std::vector<pg::param> params) {
  return store_access::run(store, name, sql, params);
}

// A transaction whose internal statements fail it as a whole (and roll it back).
struct fenced_tx {
  transaction tx;
  pg::connection* conn;
  /// When the lease ends, as the batch's claim saw it (by this process's clock).
  std::chrono::steady_clock::time_point lease_ends = std::chrono::steady_clock::time_point::max();

  result<pg::rows> q(const char* name, const std::string& sql, const std::vector<pg::param>& p) {
    if (conn == nullptr || !tx.active())
      return error{errc::internal, "the projection transaction is no longer active"};
    auto r = conn->query(name, sql, p);
    if (!r)
      store_access::fail(tx);
    return r;
  }
  result<pg::rows> ddl(const std::string& sql) {
    if (conn == nullptr || !tx.active())
      return error{errc::internal, "the projection transaction is no longer active"};
    auto r = conn->exec(sql);
    if (!r)
      store_access::fail(tx);
    return r;
  }
};

} // namespace

// --- context ---------------------------------------------------------------------------------

projection_context::projection_context(std::string name, int32_t generation, std::string schema)
    : name_(std::move(name)), generation_(generation), schema_(std::move(schema)) {}

std::string projection_context::table(std::string_view base) const {
  return pg::quote_ident(schema_) + "." + pg::quote_ident(fmt::format("{}_g{}", base, generation_));
}

std::string projection_context::view(std::string_view base) const {
  return pg::quote_ident(schema_) + "." + pg::quote_ident(base);
}

std::string projection_resource(std::string_view name) {
  return fmt::format("projection:{}", name);
}

// --- operator functions ----------------------------------------------------------------------

namespace {

std::vector<projection_status> statuses_of(const pg::rows& r) {
  std::vector<projection_status> out;
  for (int i = 0; i < r.size(); ++i) {
    projection_status s;
    s.name = r.str(i, 0);
    s.state = r.str(i, 1);
    s.error = r.str(i, 2);
    s.live_generation = static_cast<int32_t>(r.int64(i, 3));
    s.position = {r.uint64(i, 4), r.int64(i, 5)};
    s.events_applied = r.int64(i, 6);
    s.last_event_at = r.str(i, 7);
    s.updated_at = r.str(i, 8);
    s.owner = r.str(i, 9);
    s.fence_token = r.int64(i, 10);
    s.lease_held = r.text(i, 11) == "t";
    s.parked = r.int64(i, 12);
    s.rebuild_requested = r.text(i, 13) == "t";
    s.rebuild_generation = static_cast<int32_t>(r.int64(i, 14));
    s.rebuild_position = {r.uint64(i, 15), r.int64(i, 16)};
    s.rebuild_events_applied = r.int64(i, 17);
    s.lag_events = r.int64(i, 18);
    s.lag_seconds = std::stod(r.str(i, 19));
    s.rebuild_lag_events = r.int64(i, 20);
    out.push_back(std::move(s));
  }
  return out;
}

error no_projection(std::string_view name) {
  return error{errc::not_found, fmt::format("no projection named '{}'", detail::printable(name))};
}

} // namespace

result<std::vector<projection_status>> projection_statuses(event_store& store) {
  auto r = run(store, "mire_projection_status", texts_of(store).status, {""});
  if (!r)
    return r.error();
  return statuses_of(*r);
}

result<projection_status> projection_status_of(event_store& store, std::string_view name) {
  if (auto ok = check_name(name); !ok)
    return ok.error();
  auto r = run(store, "mire_projection_status", texts_of(store).status, {name});
  if (!r)
    return r.error();
  auto all = statuses_of(*r);
  if (all.empty())
    return no_projection(name);
  return std::move(all.front());
}

result<void> request_rebuild(event_store& store, std::string_view name) {
  if (auto ok = check_name(name); !ok)
    return ok.error();
  auto r = run(store, "mire_projection_rebuild", texts_of(store).request_rebuild, {name});
  if (!r)
    return r.error();
  if (r->empty())
    return no_projection(name);
  if (const auto state = r->text(0, 0); state != "running") {
    const auto why = r->text(0, 1);
    return bad_input(fmt::format(
        "projection {} is {}{}: resume or reset it before asking for a rebuild ('mire projection "
        "resume {}' or 'mire projection reset {} --to CHECKPOINT')",
        name, state, why.empty() ? "" : fmt::format(" ({})", why), name, name));
  }
  return {};
}

result<void> reset_projection(event_store& store, std::string_view name, checkpoint to) {
  if (auto ok = check_name(name); !ok)
    return ok.error();
  if (to.position < 0)
    return bad_input(fmt::format("checkpoint {} has a negative position", to.to_string()));
  const auto tx = std::to_string(to.transaction_id);
  const auto pos = std::to_string(to.position);
  auto r = run(store, "mire_projection_reset", texts_of(store).reset, {name, tx, pos});
  if (!r)
    return r.error();
  if (r->empty())
    return no_projection(name);
  return {};
}

result<void> resume_projection(event_store& store, std::string_view name) {
  if (auto ok = check_name(name); !ok)
    return ok.error();
  auto r = run(store, "mire_projection_resume", texts_of(store).resume, {name});
  if (!r)
    return r.error();
  if (r->empty())
    return no_projection(name);
  return {};
}

result<std::vector<dead_letter>> dead_letters(event_store& store, std::string_view name) {
  if (auto ok = check_name(name); !ok)
    return ok.error();
  auto r = run(store, "mire_projection_dead_letters", texts_of(store).dead_letters, {name});
  if (!r)
    return r.error();
  if (r->empty())
    return no_projection(name);
  std::vector<dead_letter> out;
  for (int i = 0; i < r->size() && !r->is_null(i, 0); ++i)
    out.push_back(dead_letter{r->int64(i, 0), r->str(i, 1), static_cast<int32_t>(r->int64(i, 2)),
                              checkpoint{r->uint64(i, 3), r->int64(i, 4)}, r->str(i, 5),
                              r->str(i, 6), r->int64(i, 7), r->str(i, 8), r->str(i, 9),
                              r->str(i, 10), r->str(i, 11)});
  return out;
}

result<void> skip_dead_letter(event_store& store, int64_t id) {
  auto r = run(store, "mire_projection_skip", texts_of(store).skip, {std::to_string(id)});
  if (!r)
    return r.error();
  if (r->empty())
    return error{errc::not_found, fmt::format("no parked dead letter with id {}", id)};
  return {};
}

result<void> retry_dead_letter(event_store& store, int64_t id) {
  auto r = run(store, "mire_projection_retry", texts_of(store).retry, {std::to_string(id)});
  if (!r)
    return r.error();
  if (r->empty())
    return error{errc::not_found, fmt::format("no parked dead letter with id {}", id)};
  return {};
}

// --- projector -------------------------------------------------------------------------------

struct projector::impl {
  event_store store;
  projection_definition def;
  std::string resource;
  const texts sql_texts;
  const texts* sql = &sql_texts;
  bool registered = false;
  std::optional<log_listener> listener; // made by the first wait()

  // The live generation's head as the last batch's guard saw it, when nothing but catching up
  // was asked for (running, no rebuild, no retries) and that batch was full: the next step
  // goes on from there without reading the head. Anything else (a reset moving the checkpoint
  // included: the batch's claim sees it) sends the step after back to the head.
  struct steady_head {
    int32_t live = 0;
    checkpoint position;
    int64_t fence = 0; ///< the lease it was seen under: a lease that changed hands meanwhile
                       ///< may have seen the projection stopped or reset, so read the head
  };
  std::optional<steady_head> steady;

  // The page after a full one, read on another connection while that one's transaction runs
  // (catch-up is then bound by reading, not by reading plus committing). Used only when its
  // batch starts where it was read from; any page read once is still a correct page: its
  // events are below the horizon of its read (rule 3).
  struct read_ahead {
    int32_t generation = 0;
    checkpoint after;
    std::future<result<log_page>> page;
  };
  std::optional<read_ahead> ahead;

  // Events per batch now: def.batch_size, unless a batch outlived the lease. A batch holds the
  // lease row, so the lease's renewal waits for it and a batch longer than the lease can never
  // commit; the next try takes half as many events. After `regrow_after` full batches at the
  // smaller size it doubles again (up to batch_size): a handler that got faster gets its big
  // batches back, at the cost of one more rolled-back batch when it has not.
  std::size_t limit = 0;
  int full_at_limit = 0;
  static constexpr int regrow_after = 16;

  impl(event_store s, projection_definition d)
      : store(std::move(s)), def(std::move(d)), resource(projection_resource(def.name)),
        sql_texts(store_access::schema(store)), limit(def.batch_size) {}

  void batch_outlived_lease(std::size_t tried) {
    limit = std::max<std::size_t>(1, tried / 2);
    full_at_limit = 0;
  }

  void batch_committed(std::size_t applied) {
    if (limit >= def.batch_size || applied < limit || ++full_at_limit < regrow_after)
      return;
    limit = std::min(def.batch_size, limit * 2);
    full_at_limit = 0;
  }

  projection_context context(int32_t generation) const {
    return projection_context{def.name, generation, def.schema};
  }

  // How a batch ended.
  enum class outcome { committed, moved, poison, split };
  struct batch_end {
    batch_end(outcome h = outcome::committed, std::size_t i = 0, error e = {})
        : how(h), poison_index(i), poison(std::move(e)) {}
    outcome how;
    std::size_t poison_index; // with outcome::poison: the event the handler refused
    error poison;
    bool steady = false; // committed, and the guard saw nothing asked of the projection
    std::optional<checkpoint> moved_to; // with outcome::moved: where the checkpoint is now
  };

  // Opens a transaction holding the lease row (FOR SHARE), checked ours and live.
  result<fenced_tx> begin_fenced(const lease& held) {
    auto tx = store.begin();
    if (!tx)
      return tx.error();
    fenced_tx f{std::move(*tx), nullptr};
    f.conn = store_access::connection(f.tx);
    const auto fence = std::to_string(held.fence_token);
    auto r = f.q("mire_proj_lock_lease", sql->lock_lease, {resource, held.owner, fence});
    if (!r)
      return r.error();
    if (r->empty()) {
      f.tx.rollback();
      return fenced(held);
    }
    return f;
  }

  result<void> commit(fenced_tx& f) {
    auto c = f.tx.commit();
    return c;
  }

  // Runs the handler on one event; exceptions are poison too.
  result<void> handle(transaction& tx, const recorded_event& e, const projection_context& ctx) {
    return handle_run(tx, std::span<const recorded_event>(&e, 1), ctx);
  }

  result<void> handle_run(transaction& tx, std::span<const recorded_event> run,
                          const projection_context& ctx) {
    try {
      if (def.batch_handler)
        return run.empty() ? result<void>{} : def.batch_handler(tx, run, ctx);
      for (const auto& e : run)
        if (auto ok = def.handler(tx, e, ctx); !ok)
          return ok;
      return {};
    } catch (const std::exception& ex) {
      return error{errc::internal, fmt::format("handler threw: {}", ex.what())};
    }
  }

  // Points the readers' views at `ctx`'s tables (inside the caller's transaction).
  result<void> create_views(fenced_tx& f, const projection_context& ctx) {
    for (const auto& t : def.tables) {
      auto r = f.ddl(fmt::format("DROP VIEW IF EXISTS {0}; CREATE VIEW {0} AS SELECT * FROM {1}",
                                 ctx.view(t), ctx.table(t)));
      if (!r)
        return r.error();
    }
    return {};
  }

  // Sets generation `generation` up: its tables (setup) and its checkpoint row; with
  // `go_live`, also the views (the first generation). Done at most once per generation.
  result<void> set_up(const lease& held, int32_t generation, bool go_live) {
    auto f = begin_fenced(held);
    if (!f)
      return f.error();
    auto p = f->q("mire_proj_lock_projection", sql->lock_projection, {def.name});
    if (!p)
      return p.error();
    const auto gen = std::to_string(generation);
    const auto fence = std::to_string(held.fence_token);
    auto ins = f->q("mire_proj_insert_generation", sql->insert_generation, {def.name, gen, fence});
    if (!ins)
      return ins.error();
    if (ins->affected() == 1) { // else set up already (by a previous holder)
      const auto ctx = context(generation);
      if (auto made = f->ddl("CREATE SCHEMA IF NOT EXISTS " + pg::quote_ident(def.schema)); !made)
        return made.error();
      if (def.setup) {
        result<void> made = [&]() -> result<void> {
          try {
            return def.setup(f->tx, ctx);
          } catch (const std::exception& ex) {
            return error{errc::internal, fmt::format("setup threw: {}", ex.what())};
          }
        }();
        if (!made) {
          f->tx.rollback();
          auto e = std::move(made).error();
          e.message = fmt::format("setting up generation {} of projection {}: {}", generation,
                                  def.name, e.message);
          return e;
        }
      }
      if (go_live)
        if (auto v = create_views(*f, ctx); !v)
          return v;
    }
    if (!go_live)
      if (auto c = f->q("mire_proj_clear_rebuild", sql->clear_rebuild, {def.name}); !c)
        return c.error();
    return commit(*f);
  }

  // Opens a batch's transaction on `generation` (a string): the lease row held FOR SHARE (ours
  // and live) and the generation's checkpoint row FOR UPDATE, which serialises with
  // reset_projection; returns the checkpoint the batch starts from. nullopt when the
  // generation is gone. Rows are locked in reset_projection's order (projection, then
  // generation): with `lock_projection`, the projection row too, before the generation's.
  result<std::optional<std::pair<fenced_tx, checkpoint>>>
  open_batch(const lease& held, const std::string& gen, bool lock_projection) {
    using opened = std::optional<std::pair<fenced_tx, checkpoint>>;
    const auto fence = std::to_string(held.fence_token);
    if (lock_projection) { // rare (a rebuild going live): as many statements as it takes
      auto f = begin_fenced(held);
      if (!f)
        return f.error();
      if (auto p = f->q("mire_proj_lock_projection", sql->lock_projection, {def.name}); !p)
        return p.error();
      auto cp = f->q("mire_proj_lock_generation", sql->lock_generation, {def.name, gen});
      if (!cp)
        return cp.error();
      if (cp->empty())
        return opened{};
      const checkpoint at{cp->uint64(0, 0), cp->int64(0, 1)};
      return opened{std::pair{std::move(*f), at}};
    }
    auto tx = store.begin();
    if (!tx)
      return tx.error();
    fenced_tx f{std::move(*tx), nullptr};
    f.conn = store_access::connection(f.tx);
    auto r = f.q("mire_proj_claim", sql->claim, {resource, held.owner, fence, def.name, gen});
    if (!r)
      return r.error();
    if (!r->empty()) {
      const checkpoint at{r->uint64(0, 1), r->int64(0, 2)};
      // The claim's first column is the idle timeout it set: the lease's time left, in ms.
      f.lease_ends = std::chrono::steady_clock::now() + std::chrono::milliseconds(r->int64(0, 0));
      return opened{std::pair{std::move(f), at}};
    }
    // Not ours any more, or the generation is gone (retired by a switch, or deleted)?
    auto l = f.q("mire_proj_lock_lease", sql->lock_lease, {resource, held.owner, fence});
    if (!l)
      return l.error();
    f.tx.rollback();
    if (l->empty())
      return fenced(held);
    return opened{};
  }

  // Applies events[first, last) to `generation` in one fenced transaction that starts from
  // checkpoint `after`; with `switch_from` > 0, also makes `generation` live in place of it.
  result<batch_end> apply(const lease& held, int32_t generation, checkpoint after,
                          const std::vector<recorded_event>& events, std::size_t first,
                          std::size_t last, int32_t switch_from, const std::atomic<bool>* cancel) {
    const auto gen = std::to_string(generation);
    auto opened = open_batch(held, gen, switch_from > 0);
    if (!opened)
      return opened.error();
    if (!*opened || (*opened)->second != after) {
      batch_end moved{outcome::moved};
      if (*opened) {
        (*opened)->first.tx.rollback();
        moved.moved_to = (*opened)->second;
      }
      return moved;
    }
    fenced_tx& f = (*opened)->first;
    const auto ctx = context(generation);
    auto cancelled = [&]() -> result<batch_end> {
      f.tx.rollback();
      batch_outlived_lease(last - first);
      return error{errc::fenced_out, "the lease was lost: batch rolled back"};
    };
    // Any failure once the lease is over (or being given up): the batch outlived it. The server
    // ends a session left idle in its transaction past the lease's expiry (see claim), so such a
    // batch fails on a lost connection, not on its fence; the next try takes fewer events too.
    auto failed = [&](error e) -> result<batch_end> {
      if ((cancel && cancel->load()) || std::chrono::steady_clock::now() >= f.lease_ends)
        batch_outlived_lease(last - first);
      return e;
    };
    if (def.batch_handler) {
      if (cancel && cancel->load())
        return cancelled();
      const std::span<const recorded_event> run(events.data() + first, last - first);
      if (auto ok = handle_run(f.tx, run, ctx); !ok) {
        f.tx.rollback();
        auto e = std::move(ok).error();
        if (transient(e))
          return failed(std::move(e));
        // Which event? Split the run until the refused one is alone.
        return batch_end{last - first == 1 ? outcome::poison : outcome::split, first, std::move(e)};
      }
    } else {
      for (std::size_t i = first; i < last; ++i) {
        if (cancel && cancel->load())
          return cancelled();
        if (auto ok = handle(f.tx, events[i], ctx); !ok) {
          f.tx.rollback();
          auto e = std::move(ok).error();
          if (transient(e))
            return failed(std::move(e));
          return batch_end{outcome::poison, i, std::move(e)};
        }
      }
    }
    const checkpoint to = last > first ? events[last - 1].checkpoint() : after;
    const auto fence = std::to_string(held.fence_token);
    const std::vector<pg::param> params{resource,
                                        held.owner,
                                        fence,
                                        def.name,
                                        gen,
                                        std::to_string(to.transaction_id),
                                        std::to_string(to.position),
                                        std::to_string(last - first),
                                        last > first ? pg::param{events[last - 1].recorded_at}
                                                     : pg::param{},
                                        std::to_string(after.transaction_id),
                                        std::to_string(after.position)};
    auto g = f.q("mire_proj_guard", sql->guard, params);
    if (!g)
      return failed(std::move(g).error());
    if (g->affected() != 1) {
      f.tx.rollback();
      batch_outlived_lease(last - first);
      return fenced(held);
    }
    const bool steady = g->text(0, 0) == "t";
    if (switch_from > 0) {
      auto sw =
          f.q("mire_proj_switch", sql->switch_live, {def.name, gen, std::to_string(switch_from)});
      if (!sw)
        return sw.error();
      if (auto v = create_views(f, ctx); !v)
        return v.error();
      const auto old = context(switch_from);
      for (const auto& t : def.tables)
        if (auto d = f.ddl(fmt::format("DROP TABLE IF EXISTS {}", old.table(t))); !d)
          return d.error();
      auto gone = f.q("mire_proj_drop_generation", sql->drop_generation,
                      {def.name, std::to_string(switch_from)});
      if (!gone)
        return gone.error();
    }
    if (auto c = commit(f); !c)
      return failed(std::move(c).error());
    batch_end done;
    done.steady = steady && switch_from == 0;
    return done;
  }

  // The handler refused `e`: park it (and move past it) or stop the projection, fenced. Under
  // `stop`, a refusal met by a rebuild ends the rebuild instead: its generation is dropped and
  // the live one goes on (it either got past this event before or meets it itself), the error
  // saying why. Stopping the whole projection there would freeze the live read model with no
  // way out but a code change: resuming would meet the rebuild's refusal again.
  result<void> poison(const lease& held, int32_t generation, checkpoint after,
                      const recorded_event& e, const error& why, bool rebuilding) {
    // The handler's message is the user's text: stored as printable UTF-8 (Postgres refuses
    // invalid UTF-8 and NUL, and the park or stop would then fail at every step).
    const auto reason = detail::printable(why.what(), max_stored_error);
    const auto what = fmt::format("event {} ({} v{} {}, checkpoint {}) in generation {}: {}",
                                  e.event_id, e.stream_id, e.version, e.type,
                                  e.checkpoint().to_string(), generation, reason);
    auto f = begin_fenced(held);
    if (!f)
      return f.error();
    if (def.on_poison == poison_policy::stop) {
      // reset_projection's lock order (projection, then generation): an operator's reset that
      // got in first has moved the checkpoint, and then there is nothing here to stop.
      if (auto p = f->q("mire_proj_lock_projection", sql->lock_projection, {def.name}); !p)
        return p.error();
      auto cp = f->q("mire_proj_lock_generation", sql->lock_generation,
                     {def.name, std::to_string(generation)});
      if (!cp)
        return cp.error();
      if (cp->empty() || checkpoint{cp->uint64(0, 0), cp->int64(0, 1)} != after) {
        f->tx.rollback();
        return {};
      }
      if (rebuilding) {
        const auto dropped = context(generation);
        for (const auto& t : def.tables)
          if (auto d = f->ddl(fmt::format("DROP TABLE IF EXISTS {}", dropped.table(t))); !d)
            return d.error();
        if (auto d = f->q("mire_proj_drop_generation", sql->drop_generation,
                          {def.name, std::to_string(generation)});
            !d)
          return d.error();
        if (auto r = f->q("mire_proj_rebuild_failed", sql->rebuild_failed,
                          {def.name, "rebuild dropped: " + what});
            !r)
          return r.error();
        return commit(*f);
      }
      if (auto s = f->q("mire_proj_stop", sql->stop, {def.name, what}); !s)
        return s.error();
      return commit(*f);
    }
    const auto gen = std::to_string(generation);
    auto cp = f->q("mire_proj_lock_generation", sql->lock_generation, {def.name, gen});
    if (!cp)
      return cp.error();
    if (cp->empty() || checkpoint{cp->uint64(0, 0), cp->int64(0, 1)} != after) {
      f->tx.rollback();
      return {}; // moved meanwhile (a reset): the next step reads from there
    }
    const auto tx = std::to_string(e.transaction_id);
    const auto pos = std::to_string(e.global_position);
    const auto version = std::to_string(e.version);
    auto p = f->q("mire_proj_park", sql->park,
                  {def.name, gen, tx, pos, e.event_id, e.stream_id, version, e.type, reason});
    if (!p)
      return p.error();
    const auto fence = std::to_string(held.fence_token);
    auto g = f->q("mire_proj_guard", sql->guard,
                  {resource, held.owner, fence, def.name, gen, tx, pos, "0", e.recorded_at,
                   std::to_string(after.transaction_id), std::to_string(after.position)});
    if (!g)
      return g.error();
    if (g->affected() != 1) {
      f->tx.rollback();
      return fenced(held);
    }
    return commit(*f);
  }

  struct batch_progress {
    std::size_t applied = 0, parked = 0;
    bool full = false; // the page was full: more to read
    bool stopped = false;
    bool dropped = false; // the rebuild met a refusal under `stop` and was dropped
    bool switched = false;
    bool steady = false; // one clean commit of a full page, and nothing else asked for
    checkpoint position;
  };

  // Waits for the page read ahead, if any; it is dropped (a stale start, or not full: what
  // came after it is read again now).
  std::optional<log_page> take_ahead(int32_t generation, checkpoint after) {
    if (!ahead)
      return std::nullopt;
    auto a = std::move(*ahead);
    ahead.reset();
    auto page = a.page.get();
    if (a.generation != generation || a.after != after || !page || page->events.size() != limit)
      return std::nullopt;
    return std::move(*page);
  }

  // Starts reading the page after `after` on another of the store's connections.
  void read_ahead_from(int32_t generation, checkpoint after) {
    ahead.emplace(read_ahead{generation, after,
                             std::async(std::launch::async, [s = store, after, n = limit,
                                                             filter = def.filter]() mutable {
                               return s.read_all(after, n, filter);
                             })});
  }

  // Reads one page for `generation` after `after` and applies it: in one transaction when
  // every event goes through; else the events before the refused one, then the refused one
  // under the poison policy, then the rest. With `ahead_ok`, a full page has the next one read
  // while it is applied.
  result<batch_progress> batch(const lease& held, int32_t generation, checkpoint after,
                               int32_t switch_from_if_caught_up, const std::atomic<bool>* cancel,
                               bool ahead_ok = false) {
    batch_progress out;
    out.position = after;
    auto ready = take_ahead(generation, after);
    auto page = ready ? result<log_page>{std::move(*ready)}
                      : store.read_all(after, limit, def.filter);
    if (!page)
      return page.error();
    const auto& events = page->events;
    out.full = events.size() >= limit;
    if (out.full && ahead_ok)
      read_ahead_from(generation, page->next);
    const int32_t switch_from = out.full ? 0 : switch_from_if_caught_up;
    std::size_t first = 0, last = events.size();
    while (first < events.size() || (switch_from > 0 && !out.switched)) {
      // Switch only with the page's last event, once everything before it is applied.
      const int32_t sw = last == events.size() ? switch_from : 0;
      auto end = apply(held, generation, out.position, events, first, last, sw, cancel);
      if (!end)
        return end.error();
      if (end->how == outcome::moved) {
        out.full = true; // someone moved the checkpoint (reset): read again from there
        out.position = end->moved_to.value_or(out.position);
        return out;
      }
      if (end->how == outcome::committed) {
        batch_committed(last - first);
        out.steady = end->steady && first == 0 && last == events.size() && out.full;
        out.applied += last - first;
        if (last > first)
          out.position = events[last - 1].checkpoint();
        out.switched = sw > 0;
        first = last;
        last = events.size();
        if (out.switched)
          break;
        continue;
      }
      if (end->how == outcome::split) {
        last = first + (last - first) / 2;
        continue;
      }
      // Poison: commit what came before it first, then deal with it alone.
      if (end->poison_index > first) {
        last = end->poison_index;
        continue;
      }
      const auto& bad = events[first];
      const bool rebuilding = switch_from_if_caught_up > 0;
      if (auto p = poison(held, generation, out.position, bad, end->poison, rebuilding); !p)
        return p.error();
      if (def.on_poison == poison_policy::stop) {
        (rebuilding ? out.dropped : out.stopped) = true;
        return out;
      }
      ++out.parked;
      out.position = bad.checkpoint();
      first += 1;
      last = events.size();
    }
    return out;
  }

  // Runs the handler again for dead letters queued for retry.
  result<std::size_t> retry_dead_letters(const lease& held,
                                         const std::map<int32_t, checkpoint>& generations) {
    auto r =
        run(store, "mire_proj_retries", sql->retries, {def.name, std::to_string(retries_per_step)});
    if (!r)
      return r.error();
    std::size_t done = 0;
    const auto fence = std::to_string(held.fence_token);
    for (int i = 0; i < r->size(); ++i) {
      const auto e = detail::event_row(*r, i);
      const auto id = r->str(i, 9);
      const auto generation = static_cast<int32_t>(r->int64(i, 10));
      if (!generations.contains(generation)) {
        (void)run(store, "mire_proj_retry_failed", sql->retry_failed,
                  {id, "its generation was retired", resource, held.owner, fence});
        continue;
      }
      auto f = begin_fenced(held);
      if (!f)
        return f.error();
      if (auto ok = handle(f->tx, e, context(generation)); !ok) {
        f->tx.rollback();
        if (transient(ok.error()))
          return ok.error();
        auto failed = run(store, "mire_proj_retry_failed", sql->retry_failed,
                          {id, detail::printable(ok.error().what(), max_stored_error), resource,
                           held.owner, fence});
        if (!failed)
          return failed.error();
        continue;
      }
      auto d = f->q("mire_proj_retry_done", sql->retry_done, {resource, held.owner, fence, id});
      if (!d)
        return d.error();
      if (d->text(0, 0) != "t") {
        f->tx.rollback();
        return fenced(held);
      }
      if (d->text(0, 1) != "t") { // skipped meanwhile: its effects are not wanted
        f->tx.rollback();
        continue;
      }
      if (auto c = commit(*f); !c)
        return c.error();
      ++done;
    }
    return done;
  }

  result<step_result> step(const lease& held, const std::atomic<bool>* cancel) {
    auto out = work(held, cancel);
    if (out && out->caught_up && !out->stopped) {
      // The batch is committed whatever this says; when it cannot say, look again soon.
      auto r = run(store, "mire_proj_held_back", sql->held_back, {});
      out->held_back = !r || r->text(0, 0) == "t";
    }
    return out;
  }

  result<step_result> work(const lease& held, const std::atomic<bool>* cancel) {
    if (held.resource != resource)
      return bad_input(fmt::format("lease on '{}' does not cover projection {} (needs '{}')",
                                   detail::printable(held.resource), def.name, resource));
    step_result out;
    if (auto at = std::exchange(steady, std::nullopt); at && at->fence == held.fence_token) {
      // Straight on from the last batch: nothing was asked of the projection as of its guard.
      auto main = batch(held, at->live, at->position, 0, cancel, true);
      if (!main)
        return main.error();
      out.applied = main->applied;
      out.parked = main->parked;
      out.position = main->position;
      out.live_generation = at->live;
      out.stopped = main->stopped;
      out.caught_up = main->stopped || !main->full;
      if (main->steady)
        steady = steady_head{at->live, main->position, held.fence_token};
      return out;
    }
    if (!registered) {
      auto r = run(store, "mire_proj_register", sql->register_projection,
                   {def.name, def.filter.category, type_list(def.filter)});
      if (!r)
        return r.error();
      registered = true;
    }
    auto head = run(store, "mire_proj_head", sql->head, {def.name});
    if (!head)
      return head.error();
    if (head->empty()) {
      registered = false; // deleted behind our back: register again next step
      return out;
    }
    const bool stopped = head->text(0, 0) == "stopped";
    const auto live = static_cast<int32_t>(head->int64(0, 1));
    const bool rebuild_requested = head->text(0, 2) == "t";
    const bool retries_queued = head->text(0, 3) == "t";
    std::map<int32_t, checkpoint> generations;
    for (int i = 0; i < head->size(); ++i)
      if (!head->is_null(i, 4))
        generations[static_cast<int32_t>(head->int64(i, 4))] = {head->uint64(i, 5),
                                                                head->int64(i, 6)};
    out.live_generation = live;
    if (stopped) {
      out.stopped = true;
      out.caught_up = true;
      if (auto it = generations.find(live); it != generations.end())
        out.position = it->second;
      return out;
    }
    if (!generations.contains(live)) {
      if (auto s = set_up(held, live, true); !s)
        return s.error();
      generations[live] = checkpoint{};
    }
    const int32_t next = live + 1;
    if (rebuild_requested && !generations.contains(next)) {
      if (auto s = set_up(held, next, false); !s) {
        if (transient(s.error()))
          return s.error();
        // A rebuild that cannot start must not hold the live generation up: drop the request
        // and say why (status error; the state stays running).
        (void)run(store, "mire_proj_rebuild_failed", sql->rebuild_failed,
                  {def.name, detail::printable(s.error().what(), max_stored_error)});
        return s.error();
      }
      generations[next] = checkpoint{};
    } else if (rebuild_requested) { // one is running already
      if (auto c = run(store, "mire_proj_clear_rebuild", sql->clear_rebuild, {def.name}); !c)
        return c.error();
    }
    if (retries_queued) {
      // A retry that fails for now (its handler's service is down, say) stays queued for the
      // next step; it does not hold the live generation up. A lost lease does.
      auto r = retry_dead_letters(held, generations);
      if (!r && (r.error().code == errc::fenced_out || !transient(r.error())))
        return r.error();
    }
    const bool rebuilding = generations.contains(next);
    auto main = batch(held, live, generations[live], 0, cancel, !rebuilding);
    if (!main)
      return main.error();
    if (main->steady && !rebuilding)
      steady = steady_head{live, main->position, held.fence_token};
    out.applied = main->applied;
    out.parked = main->parked;
    out.position = main->position;
    if (main->stopped) {
      out.stopped = out.caught_up = true;
      return out;
    }
    bool more = main->full;
    if (generations.contains(next)) {
      auto rebuilt = batch(held, next, generations[next], live, cancel);
      if (!rebuilt)
        return rebuilt.error();
      out.rebuilt = rebuilt->applied;
      out.parked += rebuilt->parked;
      if (rebuilt->stopped) {
        out.stopped = out.caught_up = true;
        return out;
      }
      if (rebuilt->dropped) {
        out.caught_up = !more;
        return out;
      }
      if (rebuilt->switched) {
        out.switched = true;
        out.live_generation = next;
        out.position = rebuilt->position;
      }
      more = more || !rebuilt->switched;
    }
    out.caught_up = !more;
    return out;
  }

  result<bool> wait(std::chrono::milliseconds timeout) {
    if (!listener)
      listener.emplace(store);
    return listener->wait(timeout);
  }
};

result<projector> projector::create(event_store store, projection_definition def) {
  if (auto ok = check_name(def.name); !ok)
    return ok.error();
  if (!def.handler && !def.batch_handler)
    return bad_input(fmt::format("projection {} has no handler", def.name));
  if (def.batch_size == 0)
    return bad_input(fmt::format("batch size of projection {} must be at least 1", def.name));
  if (auto ok = detail::check_schema_name(def.schema); !ok)
    return ok.error();
  if (auto ok = detail::check_filter(def.filter); !ok)
    return error{errc::bad_input, "projection " + def.name + ": " + ok.error().message};
  for (const auto& t : def.tables)
    if (!plain_identifier(t))
      return bad_input(fmt::format("table '{}' of projection {} must be 1-{} characters of a-z, "
                                   "0-9 and _, not starting with a digit",
                                   detail::printable(t), def.name, max_identifier));
  return projector{std::make_unique<impl>(std::move(store), std::move(def))};
}

projector::projector(std::unique_ptr<impl> p) : impl_(std::move(p)) {}
projector::projector(projector&&) noexcept = default;
projector& projector::operator=(projector&&) noexcept = default;
projector::~projector() = default;

const projection_definition& projector::definition() const {
  return impl_->def;
}

result<step_result> projector::step(const lease& held, const std::atomic<bool>* cancel) {
  return impl_->step(held, cancel);
}

result<bool> projector::wait(std::chrono::milliseconds timeout) {
  return impl_->wait(timeout);
}

} // namespace mire
