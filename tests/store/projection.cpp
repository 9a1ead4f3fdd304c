// mire/store/lease.hpp and mire/store/projection.hpp against a real server: lease SQL (rule 5),
// fenced batches (rule 4), poison policies, rebuilds, and following the log live (rule 3).
#include <doctest/doctest.h>

#include <libpq-fe.h>

#include <atomic>
#include <future>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "mire/store/event_store.hpp"
#include "mire/store/lease.hpp"
#include "mire/store/projection.hpp"
#include "support/acct.hpp"
#include "support/pg_harness.hpp"

namespace {

using namespace std::chrono_literals;
using mire::errc;
using mire::expected_version;

using mire::test::balances;
using mire::test::balances_projection;
using mire::test::deposit;
using mire::test::fold;
using mire::test::sql;

// Ends a lease now, as if its ttl had run out.
void expire(mire::event_store& store, const std::string& resource) {
  sql(store, "UPDATE mire.leases SET expires_at = now() - interval '1 second' WHERE resource = $1",
      {resource});
}

mire::lease must_acquire(mire::event_store& store, const std::string& resource,
                         const std::string& owner, std::chrono::milliseconds ttl = 60s) {
  auto l = mire::acquire_lease(store, resource, owner, ttl);
  REQUIRE_MESSAGE(l, l.error().what());
  REQUIRE(l->has_value());
  return **l;
}


// What readers see through the stable view.
balances view(mire::event_store& store, const std::string& name = "balances") {
  balances out;
  for (const auto& row : sql(store, "SELECT id, balance FROM public." + name).rows)
    out[*row[0]] = std::stoll(*row[1]);
  return out;
}


mire::projector make_projector(mire::event_store& store, mire::projection_definition def) {
  auto p = mire::projector::create(store, std::move(def));
  REQUIRE_MESSAGE(p, p.error().what());
  return std::move(*p);
}

// Steps until the projector is caught up (bounded); returns the events applied to live.
std::size_t run_until_caught_up(mire::projector& p, const mire::lease& held) {
  std::size_t applied = 0;
  for (int i = 0; i < 1000; ++i) {
    auto r = p.step(held);
    REQUIRE_MESSAGE(r, r.error().what());
    applied += r->applied;
    if (r->caught_up)
      return applied;
  }
  FAIL("the projector did not catch up in 1000 steps");
  return applied;
}

// Steps until a rebuild switches readers to its generation (bounded).
void run_until_switched(mire::projector& p, const mire::lease& held) {
  bool switched = false;
  for (int i = 0; i < 100 && !switched; ++i) {
    auto r = p.step(held);
    REQUIRE_MESSAGE(r, r.error().what());
    switched = r->switched;
  }
  REQUIRE(switched);
}

// Steps `n` times over full pages (batches of 10); returns where each step ended.
std::vector<mire::checkpoint> steps(mire::projector& p, const mire::lease& held, int n) {
  std::vector<mire::checkpoint> out;
  for (int i = 0; i < n; ++i) {
    auto r = p.step(held);
    REQUIRE_MESSAGE(r, r.error().what());
    REQUIRE(r->applied == 10);
    REQUIRE_FALSE(r->caught_up);
    out.push_back(r->position);
  }
  return out;
}

// Runs `p` until caught up, its one refused event parked, then queues that dead letter's retry.
void park_and_queue_retry(mire::event_store& store, mire::projector& p, const mire::lease& held) {
  run_until_caught_up(p, held);
  auto dead = mire::dead_letters(store, "balances").value();
  REQUIRE(dead.size() == 1);
  REQUIRE(mire::retry_dead_letter(store, dead.front().id));
}

void append_deposits(mire::event_store& store, int accounts, int each) {
  for (int a = 0; a < accounts; ++a)
    for (int i = 0; i < each; ++i)
      REQUIRE(
          store.append(fmt::format("acct-{}", a), expected_version::any(), {deposit(a + i + 1)}));
}

} // namespace

TEST_SUITE("pg") {

  // --- leases ----------------------------------------------------------------------------------

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "a free lease is acquired with fence 1 and renewing keeps the fence") {
    auto a = must_acquire(store, "r", "alice");
    CHECK(a.fence_token == 1);
    auto renewed = mire::renew_lease(store, a, 60s);
    REQUIRE(renewed);
    CHECK(*renewed);
    auto again = must_acquire(store, "r", "alice"); // one's own live lease: same fence
    CHECK(again.fence_token == 1);
    auto all = mire::list_leases(store);
    REQUIRE(all);
    REQUIRE(all->size() == 1);
    CHECK(all->front().owner == "alice");
    CHECK(all->front().fence_token == 1);
    CHECK(all->front().held);
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture, "a second owner cannot acquire a live lease") {
    must_acquire(store, "r", "alice");
    auto b = mire::acquire_lease(store, "r", "bob", 60s);
    REQUIRE(b);
    CHECK_FALSE(b->has_value());
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "a takeover after expiry increments the fence and the old owner cannot renew") {
    auto a = must_acquire(store, "r", "alice");
    expire(store, "r");
    auto b = must_acquire(store, "r", "bob");
    CHECK(b.fence_token == 2);
    auto renewed = mire::renew_lease(store, a, 60s);
    REQUIRE(renewed);
    CHECK_FALSE(*renewed);
    // Nor can the old owner take it back while bob holds it.
    auto back = mire::acquire_lease(store, "r", "alice", 60s);
    REQUIRE(back);
    CHECK_FALSE(back->has_value());
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "a renewal that waited behind a batch until the lease expired fails") {
    auto a = must_acquire(store, "r", "alice", 1500ms);
    // A batch holds the lease row (FOR SHARE, as every batch does) while the lease runs out.
    auto batch = store.begin().value();
    REQUIRE(batch.execute("SELECT 1 FROM mire.leases WHERE resource = 'r' FOR SHARE"));
    auto renewal = std::async(std::launch::async, [&] { return mire::renew_lease(store, a, 10s); });
    auto value = [&](const std::string& q) { return sql(store, q, {}).rows.at(0).at(0).value(); };
    bool waiting = false;
    for (int i = 0; i < 500 && !waiting; ++i) {
      waiting = value("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                      "AND query LIKE '%leases%'") != "0";
      std::this_thread::sleep_for(10ms);
    }
    CHECK(waiting);
    while (value("SELECT expires_at <= clock_timestamp() FROM mire.leases WHERE resource = 'r'") !=
           "t")
      std::this_thread::sleep_for(20ms);
    batch.rollback();
    auto renewed = renewal.get();
    REQUIRE_MESSAGE(renewed, renewed.error().what());
    CHECK_FALSE(*renewed); // an expired lease is acquired again (a new fence), never renewed
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "an expired lease cannot be renewed, and re-acquiring it moves the fence") {
    auto a = must_acquire(store, "r", "alice");
    expire(store, "r");
    auto renewed = mire::renew_lease(store, a, 60s);
    REQUIRE(renewed);
    CHECK_FALSE(*renewed);
    CHECK(must_acquire(store, "r", "alice").fence_token == 2);
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "a released lease can be acquired by another owner at once") {
    auto a = must_acquire(store, "r", "alice");
    REQUIRE(mire::release_lease(store, a));
    auto b = must_acquire(store, "r", "bob");
    CHECK(b.fence_token == 2);
    // A stale release (old fence) does not touch bob's lease.
    REQUIRE(mire::release_lease(store, a));
    auto c = mire::acquire_lease(store, "r", "carol", 60s);
    REQUIRE(c);
    CHECK_FALSE(c->has_value());
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture, "lease calls refuse bad names and name them") {
    auto r = mire::acquire_lease(store, "bad\x01name", "alice", 60s);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == errc::bad_input);
    CHECK(r.error().message.find("bad\\x01name") != std::string::npos);
    auto e = mire::acquire_lease(store, "r", "", 60s);
    REQUIRE_FALSE(e);
    CHECK(e.error().code == errc::bad_input);
  }

  // --- projector -------------------------------------------------------------------------------

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "a projector applies the log and readers see the fold through the view") {
    append_deposits(store, 5, 30);
    REQUIRE(store.append("other-1", expected_version::any(), {deposit(1000)})); // filtered out
    auto p = make_projector(store, balances_projection());
    auto held = must_acquire(store, mire::projection_resource("balances"), "r1");
    CHECK(run_until_caught_up(p, held) == 150);
    CHECK(view(store) == fold(store));
    auto st = mire::projection_status_of(store, "balances");
    REQUIRE_MESSAGE(st, st.error().what());
    CHECK(st->state == "running");
    CHECK(st->events_applied == 150);
    CHECK(st->lag_events == 0);
    CHECK(st->owner == "r1");
    CHECK(st->fence_token == held.fence_token);
    CHECK(st->lease_held);
    CHECK(st->live_generation == 1);
    append_deposits(store, 2, 3);
    st = mire::projection_status_of(store, "balances");
    REQUIRE(st);
    CHECK(st->lag_events == 6);
    CHECK(st->lag_seconds >= 0);
    CHECK(run_until_caught_up(p, held) == 6);
    CHECK(view(store) == fold(store));
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture, "a batch under a stale fence writes nothing") {
    append_deposits(store, 3, 10);
    auto p = make_projector(store, balances_projection());
    auto old = must_acquire(store, mire::projection_resource("balances"), "r1");
    run_until_caught_up(p, old);
    const auto before = view(store);
    const auto cp = mire::projection_status_of(store, "balances")->position;
    expire(store, old.resource);
    must_acquire(store, old.resource, "r2");
    append_deposits(store, 3, 5);
    auto r = p.step(old);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == errc::fenced_out);
    CHECK(view(store) == before);
    CHECK(mire::projection_status_of(store, "balances")->position == cp);
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "the fence guard rolls back a batch whose lease moved while it ran") {
    append_deposits(store, 3, 10);
    auto def = balances_projection();
    auto inner = def.handler;
    // Moves the fence from inside the batch (its own transaction sees it), as a takeover would.
    auto steal = std::make_shared<std::atomic<bool>>(false);
    def.handler = [inner, steal](mire::transaction& tx, const mire::recorded_event& e,
                                 const mire::projection_context& ctx) -> mire::result<void> {
      if (steal->exchange(false)) {
        auto r =
            tx.execute("UPDATE mire.leases SET owner = 'thief', fence_token = fence_token + 1");
        if (!r)
          return r.error();
      }
      return inner(tx, e, ctx);
    };
    auto p = make_projector(store, def);
    auto held = must_acquire(store, mire::projection_resource("balances"), "r1");
    run_until_caught_up(p, held);
    const auto before = view(store);
    const auto cp = mire::projection_status_of(store, "balances")->position;
    append_deposits(store, 3, 5);
    steal->store(true);
    auto r = p.step(held);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == errc::fenced_out);
    CHECK(view(store) == before);
    auto st = mire::projection_status_of(store, "balances");
    CHECK(st->position == cp);
    CHECK(st->owner == "r1"); // the theft rolled back with the batch
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "a takeover cannot change the lease row while a batch holds it") {
    append_deposits(store, 1, 3);
    auto def = balances_projection();
    auto inner = def.handler;
    auto thief_error = std::make_shared<std::string>();
    const std::string url = this->url;
    def.handler = [inner, thief_error,
                   url](mire::transaction& tx, const mire::recorded_event& e,
                        const mire::projection_context& ctx) -> mire::result<void> {
      if (e.version == 2) { // mid-batch, another session tries to take the lease row
        std::unique_ptr<PGconn, decltype(&PQfinish)> c(PQconnectdb(url.c_str()), &PQfinish);
        std::unique_ptr<PGresult, decltype(&PQclear)> r(
            PQexec(c.get(), "SET lock_timeout = '200ms'; UPDATE mire.leases SET owner = 'thief', "
                            "fence_token = fence_token + 1"),
            &PQclear);
        const char* state = PQresultErrorField(r.get(), PG_DIAG_SQLSTATE);
        *thief_error = state ? state : "none";
      }
      return inner(tx, e, ctx);
    };
    auto p = make_projector(store, def);
    auto held = must_acquire(store, mire::projection_resource("balances"), "r1");
    run_until_caught_up(p, held);
    CHECK(*thief_error == "55P03"); // lock_not_available: it had to wait for the batch
    CHECK(view(store) == fold(store));
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "a poison event under park is dead-lettered and processing continues") {
    append_deposits(store, 2, 3);
    REQUIRE(store.append("acct-0", expected_version::any(), {{"acct.poison", "{}", "{}", {}}}));
    append_deposits(store, 2, 3);
    auto refuse = std::make_shared<std::atomic<bool>>(true);
    auto def = balances_projection(refuse);
    def.on_poison = mire::poison_policy::park;
    auto p = make_projector(store, def);
    auto held = must_acquire(store, mire::projection_resource("balances"), "r1");
    CHECK(run_until_caught_up(p, held) == 12);
    CHECK(view(store) == fold(store));
    auto dead = mire::dead_letters(store, "balances");
    REQUIRE(dead);
    REQUIRE(dead->size() == 1);
    CHECK(dead->front().event_type == "acct.poison");
    CHECK(dead->front().stream_id == "acct-0");
    CHECK(dead->front().status == "parked");
    CHECK(dead->front().error.find("acct.poison is not accepted") != std::string::npos);
    auto st = mire::projection_status_of(store, "balances");
    CHECK(st->parked == 1);
    CHECK(st->state == "running");
    CHECK(st->lag_events == 0);

    // Retried while still refused: parked again. Accepted: applied.
    REQUIRE(mire::retry_dead_letter(store, dead->front().id));
    run_until_caught_up(p, held);
    CHECK(mire::dead_letters(store, "balances")->front().status == "parked");
    refuse->store(false);
    REQUIRE(mire::retry_dead_letter(store, dead->front().id));
    run_until_caught_up(p, held);
    CHECK(mire::dead_letters(store, "balances")->front().status == "applied");
    CHECK(mire::projection_status_of(store, "balances")->parked == 0);
    auto again = mire::skip_dead_letter(store, dead->front().id);
    REQUIRE_FALSE(again);
    CHECK(again.error().code == errc::not_found);
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "a handler's refusal with invalid UTF-8 and a NUL byte is recorded, escaped") {
    // Postgres refuses such text: stored as it came, the park or stop would fail at every step.
    const std::string hostile("refused \xff\xfe here\0 and after", 30);
    for (auto policy : {mire::poison_policy::park, mire::poison_policy::stop}) {
      CAPTURE(static_cast<int>(policy));
      const std::string name = policy == mire::poison_policy::park ? "hostile_park" : "hostile_stop";
      mire::projection_definition def = balances_projection();
      def.name = name;
      def.tables = {name};
      def.setup = [name](mire::transaction& tx, const mire::projection_context& ctx)
          -> mire::result<void> {
        if (auto r = tx.execute("CREATE TABLE " + ctx.table(name) + " (id text)"); !r)
          return r.error();
        return {};
      };
      def.handler = [hostile](mire::transaction&, const mire::recorded_event&,
                              const mire::projection_context&) -> mire::result<void> {
        return mire::error{errc::bad_input, hostile};
      };
      def.on_poison = policy;
      if (policy == mire::poison_policy::park)
        REQUIRE(store.append("acct-h", expected_version::any(), {deposit(1)}));
      auto p = make_projector(store, def);
      auto held = must_acquire(store, mire::projection_resource(name), "r1");
      auto r = p.step(held);
      REQUIRE_MESSAGE(r, r.error().what());
      auto st = mire::projection_status_of(store, name);
      REQUIRE(st);
      if (policy == mire::poison_policy::park) {
        CHECK(r->parked == 1);
        auto dead = mire::dead_letters(store, name);
        REQUIRE(dead);
        REQUIRE(dead->size() == 1);
        CHECK(dead->front().error.find("refused \\xff\\xfe here\\x00 and after") !=
              std::string::npos);
      } else {
        CHECK(r->stopped);
        CHECK(st->state == "stopped");
        CHECK(st->error.find("refused \\xff\\xfe here\\x00 and after") != std::string::npos);
      }
    }
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "a dead letter skipped while its retry runs stays skipped, its effects undone") {
    append_deposits(store, 1, 2);
    REQUIRE(store.append("acct-0", expected_version::any(), {{"acct.poison", "{}", "{}", {}}}));
    auto def = balances_projection();
    def.on_poison = mire::poison_policy::park;
    bool retrying = false, retried = false;
    const auto base = def.handler;
    def.handler = [&](mire::transaction& tx, const mire::recorded_event& e,
                      const mire::projection_context& ctx) -> mire::result<void> {
      if (e.type != "acct.poison")
        return base(tx, e, ctx);
      if (!retrying)
        return mire::bad_input("acct.poison is not accepted");
      retried = true;
      // The retry: an operator skips the dead letter meanwhile, from another connection.
      auto dead = mire::dead_letters(store, "balances");
      if (!dead || dead->empty() || !mire::skip_dead_letter(store, dead->front().id))
        return mire::error{errc::internal, "could not skip the dead letter"};
      auto r = tx.execute("INSERT INTO " + ctx.table("balances") + " VALUES ('effect', 1)");
      if (!r)
        return r.error();
      return {};
    };
    auto p = make_projector(store, def);
    auto held = must_acquire(store, mire::projection_resource("balances"), "r1");
    park_and_queue_retry(store, p, held);
    retrying = true;
    auto r = p.step(held); // before: reported as a lost lease
    REQUIRE_MESSAGE(r, r.error().what());
    CHECK(retried);
    CHECK(mire::dead_letters(store, "balances")->front().status == "skipped");
    CHECK_FALSE(view(store).contains("effect"));
    CHECK(view(store) == fold(store));
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "a retry that fails for now stays queued and does not hold live up") {
    append_deposits(store, 1, 2);
    REQUIRE(store.append("acct-0", expected_version::any(), {{"acct.poison", "{}", "{}", {}}}));
    auto def = balances_projection();
    def.on_poison = mire::poison_policy::park;
    bool retrying = false;
    const auto base = def.handler;
    def.handler = [&](mire::transaction& tx, const mire::recorded_event& e,
                      const mire::projection_context& ctx) -> mire::result<void> {
      if (e.type != "acct.poison")
        return base(tx, e, ctx);
      if (retrying)
        return mire::error{errc::unavailable, "the service it needs is down"};
      return mire::bad_input("acct.poison is not accepted");
    };
    auto p = make_projector(store, def);
    auto held = must_acquire(store, mire::projection_resource("balances"), "r1");
    park_and_queue_retry(store, p, held);
    retrying = true;
    append_deposits(store, 2, 2);
    auto r = p.step(held);
    REQUIRE_MESSAGE(r, r.error().what());
    CHECK(r->applied == 4);
    CHECK(mire::dead_letters(store, "balances")->front().status == "retry");
    CHECK(view(store) == fold(store));
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture, "a projection's event type filter is checked") {
    auto def = balances_projection();
    def.filter.types = {"acct.deposited", "no spaces allowed"};
    auto p = mire::projector::create(store, def);
    REQUIRE_FALSE(p);
    CHECK(p.error().code == errc::bad_input);
    CHECK(p.error().message.find("'no spaces allowed'") != std::string::npos);
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "a poison event under stop stops the projection with the error recorded") {
    append_deposits(store, 2, 3);
    auto bad = store.append("acct-0", expected_version::any(), {{"acct.poison", "{}", "{}", {}}});
    REQUIRE(bad);
    append_deposits(store, 2, 3);
    auto def = balances_projection(); // refuses acct.poison always
    auto p = make_projector(store, def);
    auto held = must_acquire(store, mire::projection_resource("balances"), "r1");
    auto r = p.step(held);
    REQUIRE_MESSAGE(r, r.error().what());
    CHECK(r->stopped);
    CHECK(r->applied == 6); // the events before it
    auto st = mire::projection_status_of(store, "balances");
    CHECK(st->state == "stopped");
    CHECK(st->error.find("acct.poison is not accepted") != std::string::npos);
    CHECK(st->lag_events == 7);
    CHECK(p.step(held)->stopped); // stays stopped
    CHECK(mire::projection_status_of(store, "balances")->events_applied == 6);

    // Resumed: the same event stops it again. Reset past it: it goes on.
    REQUIRE(mire::resume_projection(store, "balances"));
    CHECK(p.step(held)->stopped);
    auto events = store.read_stream("acct-0");
    REQUIRE(events);
    mire::checkpoint past;
    for (const auto& e : *events)
      if (e.type == "acct.poison")
        past = e.checkpoint();
    REQUIRE(mire::reset_projection(store, "balances", past));
    CHECK(run_until_caught_up(p, held) == 6);
    st = mire::projection_status_of(store, "balances");
    CHECK(st->state == "running");
    CHECK(st->error.empty());
    CHECK(view(store) == fold(store));
  }

  TEST_CASE_FIXTURE(
      mire::test::pg_fixture,
      "a rebuild fills the next generation beside the live one and switches it live") {
    append_deposits(store, 4, 50);
    auto p = make_projector(store, balances_projection({}, 60));
    auto held = must_acquire(store, mire::projection_resource("balances"), "r1");
    run_until_caught_up(p, held);
    const auto expected = fold(store);
    REQUIRE(mire::request_rebuild(store, "balances"));
    auto first = p.step(held);
    REQUIRE_MESSAGE(first, first.error().what());
    CHECK(first->rebuilt == 60);
    CHECK_FALSE(first->switched);
    auto st = mire::projection_status_of(store, "balances");
    CHECK(st->live_generation == 1);
    CHECK(st->rebuild_generation == 2);
    CHECK(st->rebuild_lag_events == 140);
    CHECK_FALSE(st->rebuild_requested);
    CHECK(view(store) == expected); // the old generation serves meanwhile
    append_deposits(store, 4, 2);   // the live one keeps following
    run_until_switched(p, held);
    st = mire::projection_status_of(store, "balances");
    CHECK(st->live_generation == 2);
    CHECK(st->rebuild_generation == 0);
    CHECK(st->events_applied == 208);
    run_until_caught_up(p, held);
    CHECK(view(store) == fold(store));
    // The old generation's table is gone; the new one is what the view shows.
    CHECK(sql(store, "SELECT to_regclass('public.balances_g1') IS NULL").at(0, 0) == "t");
    CHECK(sql(store, "SELECT count(*) FROM public.balances_g2").at(0, 0) == "4");
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "transactions committing out of position order are not skipped") {
    auto p = make_projector(store, balances_projection());
    auto held = must_acquire(store, mire::projection_resource("balances"), "r1");
    append_deposits(store, 2, 2);
    run_until_caught_up(p, held);
    // An append held open takes its position first; later appends commit before it.
    auto slow = store.begin();
    REQUIRE(slow);
    REQUIRE(slow->append("acct-9", expected_version::any(), {deposit(7)}));
    append_deposits(store, 3, 2);
    run_until_caught_up(p, held);
    auto mid = mire::projection_status_of(store, "balances");
    CHECK(mid->lag_events == 6); // held back behind the open transaction, not skipped past it
    REQUIRE(slow->commit());
    run_until_caught_up(p, held);
    auto got = view(store);
    CHECK(got == fold(store));
    CHECK(got["acct-9"] == 7);
    CHECK(mire::projection_status_of(store, "balances")->events_applied == 11);
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture, "a projector wakes on appends through LISTEN") {
    auto p = make_projector(store, balances_projection());
    auto first = p.wait(10s); // connects and listens: returns at once, "read again"
    REQUIRE_MESSAGE(first, first.error().what());
    CHECK(*first);
    append_deposits(store, 1, 1);
    auto woken = p.wait(10s);
    REQUIRE(woken);
    CHECK(*woken);
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "a projection definition with bad fields is refused by name") {
    auto def = balances_projection();
    def.name = "Bad-Name";
    auto p = mire::projector::create(store, def);
    REQUIRE_FALSE(p);
    CHECK(p.error().code == errc::bad_input);
    CHECK(p.error().message.find("Bad-Name") != std::string::npos);
    def = balances_projection();
    def.tables = {"x; DROP TABLE y"};
    p = mire::projector::create(store, def);
    REQUIRE_FALSE(p);
    CHECK(p.error().message.find("x; DROP TABLE y") != std::string::npos);
    auto st = mire::projection_status_of(store, "nothing");
    REQUIRE_FALSE(st);
    CHECK(st.error().code == errc::not_found);
  }

  TEST_CASE_FIXTURE(
      mire::test::pg_fixture,
      "a batch handler applies runs at once and a refused event is found by splitting") {
    append_deposits(store, 3, 20);
    REQUIRE(store.append("acct-1", expected_version::any(), {{"acct.poison", "{}", "{}", {}}}));
    append_deposits(store, 3, 20);
    auto def = balances_projection({}, 500);
    def.on_poison = mire::poison_policy::park;
    auto runs = std::make_shared<int>(0);
    def.handler = nullptr;
    // One statement per run: the amounts summed per account.
    def.batch_handler = [runs](mire::transaction& tx, std::span<const mire::recorded_event> events,
                               const mire::projection_context& ctx) -> mire::result<void> {
      ++*runs;
      nlohmann::json ids = nlohmann::json::array(), amounts = nlohmann::json::array();
      for (const auto& e : events) {
        if (e.type == "acct.poison")
          return mire::bad_input("acct.poison is not accepted");
        ids.push_back(e.stream_id);
        amounts.push_back(nlohmann::json::parse(e.data).at("amount"));
      }
      auto r = tx.execute("INSERT INTO " + ctx.table("balances") +
                              " AS b (id, balance) SELECT id, sum(a) FROM jsonb_to_recordset("
                              "(SELECT jsonb_agg(jsonb_build_object('id', i, 'a', a)) FROM "
                              "jsonb_array_elements_text($1::jsonb) WITH ORDINALITY x(i, n) JOIN "
                              "jsonb_array_elements($2::jsonb) WITH ORDINALITY y(a, m) ON n = m)) "
                              "AS t(id text, a bigint) GROUP BY id ON CONFLICT (id) DO UPDATE "
                              "SET balance = b.balance + excluded.balance",
                          {ids.dump(), amounts.dump()});
      if (!r)
        return r.error();
      return {};
    };
    auto p = make_projector(store, def);
    auto held = must_acquire(store, mire::projection_resource("balances"), "r1");
    CHECK(run_until_caught_up(p, held) == 120);
    CHECK(view(store) == fold(store));
    auto dead = mire::dead_letters(store, "balances");
    REQUIRE(dead);
    REQUIRE(dead->size() == 1);
    CHECK(dead->front().event_type == "acct.poison");
    CHECK(*runs < 40); // found by splitting, not by trying each of the 121 events alone
  }

  TEST_CASE_FIXTURE(
      mire::test::pg_fixture,
      "a rebuild whose setup fails is dropped with its error and the live generation goes on") {
    append_deposits(store, 2, 5);
    auto def = balances_projection();
    auto inner = def.setup;
    def.setup = [inner](mire::transaction& tx,
                        const mire::projection_context& ctx) -> mire::result<void> {
      if (ctx.generation() > 1)
        return mire::bad_input("no room for generation " + std::to_string(ctx.generation()));
      return inner(tx, ctx);
    };
    auto p = make_projector(store, def);
    auto held = must_acquire(store, mire::projection_resource("balances"), "r1");
    run_until_caught_up(p, held);
    REQUIRE(mire::request_rebuild(store, "balances"));
    append_deposits(store, 2, 5);
    auto r = p.step(held);
    REQUIRE_FALSE(r);
    CHECK(r.error().message.find("no room for generation 2") != std::string::npos);
    auto st = mire::projection_status_of(store, "balances");
    CHECK_FALSE(st->rebuild_requested);
    CHECK(st->state == "running");
    CHECK(st->error.find("no room for generation 2") != std::string::npos);
    CHECK(run_until_caught_up(p, held) == 10);
    CHECK(view(store) == fold(store));
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "under stop, a rebuild that meets a refusal is dropped and live goes on") {
    append_deposits(store, 2, 3);
    REQUIRE(store.append("acct-0", expected_version::any(), {{"acct.poison", "{}", "{}", {}}}));
    auto refuse = std::make_shared<std::atomic<bool>>(false);
    auto def = balances_projection(refuse); // stop is the default policy
    auto p = make_projector(store, def);
    auto held = must_acquire(store, mire::projection_resource("balances"), "r1");
    CHECK(run_until_caught_up(p, held) == 7); // the old code accepted the event
    refuse->store(true);                      // the new code refuses it
    REQUIRE(mire::request_rebuild(store, "balances"));
    for (int i = 0; i < 20; ++i) {
      auto r = p.step(held);
      REQUIRE_MESSAGE(r, r.error().what());
      CHECK_FALSE(r->stopped);
      const auto now = mire::projection_status_of(store, "balances");
      if (!now->rebuild_requested && now->rebuild_generation == 0)
        break;
    }
    auto st = mire::projection_status_of(store, "balances");
    CHECK(st->state == "running");
    CHECK(st->rebuild_generation == 0);
    CHECK_FALSE(st->rebuild_requested);
    CHECK(st->live_generation == 1);
    CHECK(st->error.find("rebuild dropped") != std::string::npos);
    CHECK(st->error.find("acct.poison is not accepted") != std::string::npos);
    CHECK(sql(store, "SELECT to_regclass('public.balances_g2') IS NULL").rows[0][0] == "t");
    // The live generation goes on.
    append_deposits(store, 2, 2);
    CHECK(run_until_caught_up(p, held) == 4);
    CHECK(view(store) == fold(store));
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "a batch cancelled midway (the lease was lost) rolls back") {
    append_deposits(store, 2, 10);
    std::atomic<bool> cancel{false};
    auto def = balances_projection();
    auto inner = def.handler;
    def.handler = [inner, &cancel](mire::transaction& tx, const mire::recorded_event& e,
                                   const mire::projection_context& ctx) -> mire::result<void> {
      if (e.version == 5)
        cancel = true; // as the runner does on lease_lost, while the batch runs
      return inner(tx, e, ctx);
    };
    auto p = make_projector(store, def);
    auto held = must_acquire(store, mire::projection_resource("balances"), "r1");
    auto r = p.step(held, &cancel);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == errc::fenced_out);
    CHECK(view(store).empty());
    CHECK(mire::projection_status_of(store, "balances")->events_applied == 0);
  }

  // --- catching up over full pages (no head read between them, the next page read ahead) -----

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "a reset while a projector catches up over full pages is seen by its next "
                    "batch") {
    append_deposits(store, 4, 25);
    auto p = make_projector(store, balances_projection({}, 10));
    auto held = must_acquire(store, mire::projection_resource("balances"), "r1");
    const auto at = steps(p, held, 3);
    REQUIRE(mire::reset_projection(store, "balances", at[0]));
    // The batch read ahead from at[2] does not apply; the one after goes on from at[0].
    std::size_t applied = 0;
    int tries = 0;
    mire::checkpoint now;
    while (applied == 0 && tries < 3) {
      auto r = p.step(held);
      REQUIRE_MESSAGE(r, r.error().what());
      applied = r->applied;
      now = r->position;
      ++tries;
    }
    CHECK(tries == 2);
    CHECK(applied == 10);
    CHECK(now == at[1]);
    CHECK(mire::projection_status_of(store, "balances")->position == at[1]);
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "a rebuild asked for while a projector catches up over full pages starts "
                    "within a step") {
    append_deposits(store, 4, 25);
    auto p = make_projector(store, balances_projection({}, 10));
    auto held = must_acquire(store, mire::projection_resource("balances"), "r1");
    steps(p, held, 3);
    REQUIRE(mire::request_rebuild(store, "balances"));
    std::size_t rebuilt = 0;
    int tries = 0;
    while (rebuilt == 0 && tries < 3) {
      auto r = p.step(held);
      REQUIRE_MESSAGE(r, r.error().what());
      rebuilt = r->rebuilt;
      ++tries;
    }
    CHECK(tries <= 2);
    CHECK(rebuilt == 10);
    CHECK(mire::projection_status_of(store, "balances")->rebuild_generation == 2);
    run_until_switched(p, held);
    run_until_caught_up(p, held);
    CHECK(view(store) == fold(store));
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "a projector catching up over full pages commits nothing under a lost lease") {
    append_deposits(store, 4, 25);
    auto p = make_projector(store, balances_projection({}, 10));
    auto old = must_acquire(store, mire::projection_resource("balances"), "r1");
    const auto at = steps(p, old, 2);
    expire(store, old.resource);
    auto next = must_acquire(store, old.resource, "r2");
    auto r = p.step(old);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == errc::fenced_out);
    CHECK(mire::projection_status_of(store, "balances")->position == at[1]);
    // Under the new lease it goes on from where the checkpoint is.
    CHECK(run_until_caught_up(p, next) == 80);
    CHECK(view(store) == fold(store));
  }

  // --- operator calls --------------------------------------------------------------------------

  TEST_CASE_FIXTURE(mire::test::pg_fixture, "lease times read as ISO 8601 UTC") {
    auto a = must_acquire(store, "r", "alice");
    auto all = mire::list_leases(store);
    REQUIRE(all);
    REQUIRE(all->size() == 1);
    const auto iso = [](const std::string& t) {
      // 2026-11-26T10:27:54.79Z: date, 'T', time, optional fraction, 'Z'.
      return t.size() >= 20 && t[4] == '-' && t[7] == '-' && t[10] == 'T' && t[13] == ':' &&
             t[16] == ':' && t.back() == 'Z' && t.find(' ') == std::string::npos &&
             t.find('+') == std::string::npos;
    };
    CHECK_MESSAGE(iso(all->front().expires_at), all->front().expires_at);
    CHECK_MESSAGE(iso(all->front().acquired_at), all->front().acquired_at);
    CHECK(all->front().expires_at > all->front().acquired_at);
    REQUIRE(mire::release_lease(store, a));
    CHECK(mire::list_leases(store)->front().expires_at == "-infinity");
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "dead letters of an unknown projection are not_found, naming it") {
    auto none = mire::dead_letters(store, "nothing");
    REQUIRE_FALSE(none);
    CHECK(none.error().code == errc::not_found);
    CHECK(none.error().message.find("'nothing'") != std::string::npos);
    // A projection that ran and parked nothing has none.
    append_deposits(store, 1, 1);
    auto p = make_projector(store, balances_projection());
    run_until_caught_up(p, must_acquire(store, mire::projection_resource("balances"), "r1"));
    auto empty = mire::dead_letters(store, "balances");
    REQUIRE_MESSAGE(empty, empty.error().what());
    CHECK(empty->empty());
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "a rebuild of a stopped projection is refused until it runs again") {
    append_deposits(store, 1, 2);
    REQUIRE(store.append("acct-0", expected_version::any(), {{"acct.poison", "{}", "{}", {}}}));
    auto refuse = std::make_shared<std::atomic<bool>>(true);
    auto p = make_projector(store, balances_projection(refuse));
    auto held = must_acquire(store, mire::projection_resource("balances"), "r1");
    REQUIRE(p.step(held)->stopped);
    auto r = mire::request_rebuild(store, "balances");
    REQUIRE_FALSE(r);
    CHECK(r.error().code == errc::bad_input);
    CHECK(r.error().message.find("balances is stopped") != std::string::npos);
    CHECK(r.error().message.find("acct.poison is not accepted") != std::string::npos);
    CHECK(r.error().message.find("resume or reset it") != std::string::npos);
    CHECK_FALSE(mire::projection_status_of(store, "balances")->rebuild_requested);
    refuse->store(false);
    REQUIRE(mire::resume_projection(store, "balances"));
    REQUIRE(mire::request_rebuild(store, "balances"));
    CHECK(mire::projection_status_of(store, "balances")->rebuild_requested);
  }

} // TEST_SUITE
