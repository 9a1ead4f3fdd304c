// Leases in SQL: acquire, renew and release are single statements on the database clock (renew
// locks its row first), each run with a statement timeout so a holder never waits past its own
// lease.
#include "mire/store/lease.hpp"

#include "mire/store/uuid.hpp"

#include <fmt/format.h>

#include "access.hpp"
#include "schema.hpp"
#include "session.hpp"

namespace mire {

namespace {

using detail::store_access;

// A free or expired lease changes hands (fence + 1); the owner's own live lease is extended with
// its fence unchanged; another owner's live lease is left alone (no row returned). The clock is
// read when the statement runs (clock_timestamp), not when its transaction began: the statement
// may have waited for the lease row behind a batch. So the update computes its own expiry once it
// holds the row (excluded.expires_at was computed before the wait: a takeover that waited nearly
// a ttl would get a lease already almost over).
constexpr std::string_view acquire_sql = R"sql(
INSERT INTO {s}.leases AS l (resource, owner, fence_token, expires_at, acquired_at)
VALUES ($1, $2, 1, clock_timestamp() + $3::bigint * interval '1 millisecond', clock_timestamp())
ON CONFLICT (resource) DO UPDATE
SET owner = excluded.owner,
    fence_token = CASE WHEN l.owner = excluded.owner AND l.expires_at > clock_timestamp()
                       THEN l.fence_token ELSE l.fence_token + 1 END,
    acquired_at = CASE WHEN l.owner = excluded.owner AND l.expires_at > clock_timestamp()
                       THEN l.acquired_at ELSE clock_timestamp() END,
    expires_at = clock_timestamp() + $3::bigint * interval '1 millisecond'
WHERE l.owner = excluded.owner OR l.expires_at <= clock_timestamp()
RETURNING fence_token)sql";

// Only the holder of this very fence, and only while the lease is live: after an expiry the
// holder must acquire again (which moves the fence), so an interval without a lease is seen.
// The row is locked first (lock_row_sql, same transaction): an UPDATE reads the clock for its
// WHERE before it waits behind a batch's FOR SHARE, and Postgres does not check it again after
// a lock that changed nothing, so a lease that expired during the wait would be extended.
constexpr std::string_view lock_row_sql = R"sql(
SELECT 1 FROM {s}.leases WHERE resource = $1 FOR NO KEY UPDATE)sql";

constexpr std::string_view renew_sql = R"sql(
UPDATE {s}.leases SET expires_at = clock_timestamp() + $4::bigint * interval '1 millisecond'
WHERE resource = $1 AND owner = $2 AND fence_token = $3 AND expires_at > clock_timestamp()
RETURNING fence_token)sql";

constexpr std::string_view release_sql = R"sql(
UPDATE {s}.leases SET expires_at = '-infinity'
WHERE resource = $1 AND owner = $2 AND fence_token = $3)sql";

constexpr std::string_view list_sql = R"sql(
SELECT resource, coalesce(owner, ''), fence_token, expires_at > now(), expires_at::text,
       coalesce(acquired_at::text, '')
FROM {s}.leases ORDER BY resource)sql";

result<void> check_name(std::string_view what, std::string_view value) {
  constexpr std::size_t max_bytes = 512;
  bool ok = !value.empty() && value.size() <= max_bytes;
  for (char c : value)
    ok = ok && static_cast<unsigned char>(c) >= 0x20 && c != 0x7F;
  if (ok)
    return {};
  return bad_input(fmt::format("lease {} '{}' must be 1-{} bytes without control characters", what,
                               detail::printable(value), max_bytes));
}

result<void> check_ttl(std::chrono::milliseconds ttl) {
  if (ttl.count() >= 10)
    return {};
  return bad_input(fmt::format("lease ttl {} ms must be at least 10 ms", ttl.count()));
}

// Runs one statement in its own transaction with a statement timeout (SET LOCAL), so that a
// lease call never blocks longer than the lease is worth.
result<pg::rows> run_bounded(event_store& store, std::string_view name, std::string_view sql,
                             std::vector<pg::param> params, std::chrono::milliseconds timeout,
                             bool lock_row_first = false) {
  auto tx = store.begin();
  if (!tx)
    return tx.error();
  auto* conn = store_access::connection(*tx);
  const std::string ms = std::to_string(timeout.count());
  auto set =
      conn->query("mire_lease_timeout", "SELECT set_config('statement_timeout', $1, true)", {ms});
  if (!set) {
    store_access::fail(*tx);
    return set.error();
  }
  if (lock_row_first) {
    auto locked =
        conn->query("mire_lease_lock_row",
                    detail::in_schema(lock_row_sql, store_access::schema(store)), {params.front()});
    if (!locked) {
      store_access::fail(*tx);
      return locked.error();
    }
  }
  auto r =
      conn->query(std::string(name), detail::in_schema(sql, store_access::schema(store)), params);
  if (!r) {
    store_access::fail(*tx);
    return r.error();
  }
  if (auto c = tx->commit(); !c)
    return c.error();
  return r;
}

} // namespace

std::string holder_id(std::string_view owner) {
  return std::string(owner) + "#" + new_uuid().substr(24); // the uuid's last 48 random bits
}

std::string_view holder_owner(std::string_view holder) {
  const auto tag = holder.rfind('#');
  return tag == std::string_view::npos ? holder : holder.substr(0, tag);
}

result<std::optional<lease>> acquire_lease(event_store& store, std::string_view resource,
                                           std::string_view owner, std::chrono::milliseconds ttl) {
  if (auto ok = check_name("resource", resource); !ok)
    return ok.error();
  if (auto ok = check_name("owner", owner); !ok)
    return ok.error();
  if (auto ok = check_ttl(ttl); !ok)
    return ok.error();
  const std::string ms = std::to_string(ttl.count());
  auto r = run_bounded(store, "mire_lease_acquire", acquire_sql, {resource, owner, ms}, ttl);
  if (!r)
    return r.error();
  if (r->empty())
    return std::optional<lease>{};
  return std::optional<lease>{lease{std::string(resource), std::string(owner), r->int64(0, 0)}};
}

result<bool> renew_lease(event_store& store, const lease& held, std::chrono::milliseconds ttl) {
  if (auto ok = check_ttl(ttl); !ok)
    return ok.error();
  const std::string fence = std::to_string(held.fence_token);
  const std::string ms = std::to_string(ttl.count());
  auto r = run_bounded(store, "mire_lease_renew", renew_sql, {held.resource, held.owner, fence, ms},
                       ttl, /*lock_row_first=*/true);
  if (!r)
    return r.error();
  return !r->empty();
}

result<void> release_lease(event_store& store, const lease& held,
                           std::chrono::milliseconds timeout) {
  const std::string fence = std::to_string(held.fence_token);
  auto r = run_bounded(store, "mire_lease_release", release_sql, {held.resource, held.owner, fence},
                       timeout);
  if (!r)
    return r.error();
  return {};
}

result<std::vector<lease_info>> list_leases(event_store& store) {
  auto r = store_access::run(store, "mire_lease_list",
                             detail::in_schema(list_sql, store_access::schema(store)), {});
  if (!r)
    return r.error();
  std::vector<lease_info> out;
  for (int i = 0; i < r->size(); ++i)
    out.push_back({r->str(i, 0), r->str(i, 1), r->int64(i, 2), r->text(i, 3) == "t",
                   detail::iso_time(r->text(i, 4)), detail::iso_time(r->text(i, 5))});
  return out;
}

} // namespace mire
