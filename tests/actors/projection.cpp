// mire/actors/projection.hpp against a real server: two runners of one projection (one drives,
// the other takes over when it stops), poison policies, a rebuild while running, and following
// the log while transactions commit out of position order (rule 3).
#include <doctest/doctest.h>

#include <stdlib.h>
#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include <caf/all.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "mire/actors/errors.hpp"
#include "mire/actors/projection.hpp"
#include "mire/store/embedded_postgres.hpp"
#include "mire/store/lease.hpp"
#include "mire/store/projection.hpp"
#include "support/acct.hpp"
#include "support/pg_harness.hpp"

namespace {

using namespace std::chrono_literals;
using mire::expected_version;
using mire::actors::runner_status;
using mire::actors::status_atom;
using mire::test::balances;
using mire::test::deposit;
using mire::test::fold;
using mire::test::sql;

balances view(mire::event_store& store) {
  balances out;
  for (const auto& row : sql(store, "SELECT id, balance FROM public.balances").rows)
    out[*row[0]] = std::stoll(*row[1]);
  return out;
}

int64_t count_deposits(mire::event_store& store) {
  return std::stoll(*sql(store, "SELECT count(*) FROM mire.events WHERE event_type = "
                                "'acct.deposited'")
                         .at(0, 0));
}

// The shared balances projection, in small batches, parking poison events unless told otherwise.
mire::projection_definition
balances_projection(mire::poison_policy policy = mire::poison_policy::park) {
  auto def = mire::test::balances_projection({}, 50);
  def.on_poison = policy;
  return def;
}

// Polls `done` until it holds or the bound runs out (a bound, not a timing assertion).
template <class F> bool eventually(F done, std::chrono::seconds bound = 60s) {
  const auto until = std::chrono::steady_clock::now() + bound;
  while (std::chrono::steady_clock::now() < until) {
    if (done())
      return true;
    std::this_thread::sleep_for(20ms);
  }
  return done();
}

struct runner_fixture : mire::test::pg_fixture {
  caf::actor_system_config cfg;
  std::unique_ptr<caf::actor_system> sys;
  std::vector<caf::actor> runners;

  runner_fixture() {
    mire::actors::add_mire_types(cfg);
    sys = std::make_unique<caf::actor_system>(cfg);
  }
  ~runner_fixture() {
    for (auto& a : runners)
      caf::anon_send_exit(a, caf::exit_reason::user_shutdown);
    runners.clear();
    sys.reset();
  }

  caf::actor spawn(const std::string& owner,
                   mire::projection_definition def = balances_projection()) {
    auto r = mire::actors::spawn_projection_runner(
        *sys, store, std::move(def),
        {.owner = owner, .lease_ttl = 1500ms, .poll = 100ms, .max_backoff = 500ms});
    REQUIRE_MESSAGE(r, r.error().what());
    runners.push_back(*r);
    return *r;
  }

  runner_status status(const caf::actor& runner) {
    caf::scoped_actor self{*sys};
    runner_status out;
    self->request(runner, 10s, status_atom::value)
        .receive([&](runner_status& s) { out = std::move(s); },
                 [&](caf::error& e) { FAIL("status: " << mire::actors::from_caf(e).what()); });
    return out;
  }

  // Caught up with every deposit in the log.
  bool caught_up() {
    auto st = mire::projection_status_of(store, "balances");
    return st && st->lag_events == 0 && st->events_applied == count_deposits(store);
  }
};

void append_deposits(mire::event_store& store, int accounts, int each, int salt = 0) {
  for (int i = 0; i < each; ++i)
    for (int a = 0; a < accounts; ++a)
      REQUIRE(store.append(fmt::format("acct-{}", a), expected_version::any(),
                           {deposit(a + i + salt + 1)}));
}

} // namespace

TEST_SUITE("pg") {

  TEST_CASE_FIXTURE(
      runner_fixture,
      "one of two runners drives; when it stops the other takes over and the read model is exact") {
    append_deposits(store, 5, 40);
    auto r1 = spawn("replica-1");
    auto r2 = spawn("replica-2");
    // Writers keep appending while the runners start and one of them drives.
    std::thread writer([this] {
      auto s = mire::event_store::open({.url = url}).value();
      append_deposits(s, 5, 40, 1000);
    });
    writer.join();
    REQUIRE(eventually([&] { return caught_up(); }));
    CHECK(view(store) == fold(store));
    auto s1 = status(r1), s2 = status(r2);
    REQUIRE(s1.held != s2.held); // exactly one drives
    auto& driver = s1.held ? r1 : r2;
    auto& other = s1.held ? r2 : r1;
    const auto fence = (s1.held ? s1 : s2).fence_token;
    CHECK((s1.held ? s1 : s2).applied == 400);
    CHECK((s1.held ? s2 : s1).applied == 0);

    caf::anon_send_exit(driver, caf::exit_reason::user_shutdown);
    std::thread more([this] {
      auto s = mire::event_store::open({.url = url}).value();
      append_deposits(s, 5, 20, 2000);
    });
    more.join();
    REQUIRE(eventually([&] { return status(other).held; }));
    REQUIRE(eventually([&] { return caught_up(); }));
    CHECK(status(other).fence_token > fence);
    CHECK(view(store) == fold(store));
    auto st = mire::projection_status_of(store, "balances");
    CHECK(st->events_applied == 500);
    CHECK(mire::holder_owner(st->owner) == (s1.held ? "replica-2" : "replica-1"));
  }

  TEST_CASE_FIXTURE(runner_fixture,
                    "two runners under one replica id (a frozen process and its replacement) "
                    "never both hold the lease") {
    append_deposits(store, 3, 10);
    auto first = spawn("replica-1");
    REQUIRE(eventually([&] { return status(first).held; }));
    const auto held_first = status(first);
    auto second = spawn("replica-1");
    // Four renew intervals: the first keeps its lease, the second does not get it beside it.
    for (int i = 0; i < 40; ++i) {
      const auto a = status(first), b = status(second);
      const bool both = a.held && b.held;
      REQUIRE_FALSE_MESSAGE(both, "both hold fence ", a.fence_token, " / ", b.fence_token);
      std::this_thread::sleep_for(50ms);
    }
    CHECK(status(first).held);
    CHECK(status(first).owner != status(second).owner);
    // The first one stops (releasing): the second takes over with a fence of its own.
    caf::anon_send_exit(first, caf::exit_reason::user_shutdown);
    REQUIRE(eventually([&] { return status(second).held; }));
    CHECK(status(second).fence_token > held_first.fence_token);
    REQUIRE(eventually([&] { return caught_up(); }));
    CHECK(view(store) == fold(store));
  }

  TEST_CASE_FIXTURE(runner_fixture,
                    "a batch too slow for the lease is retried smaller until it commits") {
    // 50 events at 40 ms each take 2 s: longer than the 1.5 s lease, which a batch holds (its
    // renewal waits for the batch), so the whole batch can never commit.
    append_deposits(store, 3, 20);
    auto def = balances_projection();
    def.handler = [inner = def.handler](mire::transaction& tx, const mire::recorded_event& e,
                                        const mire::projection_context& ctx) {
      std::this_thread::sleep_for(40ms);
      return inner(tx, e, ctx);
    };
    auto r = spawn("replica-1", std::move(def));
    REQUIRE(eventually([&] { return caught_up(); }, 45s));
    CHECK(view(store) == fold(store));
    CHECK(status(r).held);
  }

  TEST_CASE_FIXTURE(runner_fixture,
                    "a batch handler idle past the lease is retried smaller until it commits") {
    // The same, with a batch handler that works on its own side before its statements: the
    // server ends the session once it sits idle in its transaction past the lease's expiry, and
    // the batch fails on a lost connection rather than on its fence.
    append_deposits(store, 3, 20);
    auto def = balances_projection();
    def.batch_handler =
        [inner = def.handler](mire::transaction& tx, std::span<const mire::recorded_event> run,
                              const mire::projection_context& ctx) -> mire::result<void> {
      std::this_thread::sleep_for(40ms * run.size());
      for (const auto& e : run)
        if (auto ok = inner(tx, e, ctx); !ok)
          return ok;
      return {};
    };
    auto r = spawn("replica-1", std::move(def));
    REQUIRE(eventually([&] { return caught_up(); }, 45s));
    CHECK(view(store) == fold(store));
  }

  TEST_CASE_FIXTURE(runner_fixture, "a runner parks a poison event and goes on") {
    append_deposits(store, 2, 5);
    REQUIRE(store.append("acct-1", expected_version::any(), {{"acct.poison", "{}", "{}", {}}}));
    append_deposits(store, 2, 5);
    auto r = spawn("replica-1");
    REQUIRE(eventually([&] { return caught_up(); }));
    CHECK(view(store) == fold(store));
    auto dead = mire::dead_letters(store, "balances");
    REQUIRE(dead);
    REQUIRE(dead->size() == 1);
    CHECK(dead->front().event_type == "acct.poison");
    CHECK(status(r).parked == 1);
  }

  TEST_CASE_FIXTURE(runner_fixture,
                    "a runner stops the projection on a poison event under stop and reports it") {
    append_deposits(store, 2, 5);
    REQUIRE(store.append("acct-1", expected_version::any(), {{"acct.poison", "{}", "{}", {}}}));
    append_deposits(store, 2, 5);
    auto r = spawn("replica-1", balances_projection(mire::poison_policy::stop));
    REQUIRE(eventually([&] { return status(r).stopped; }));
    auto st = mire::projection_status_of(store, "balances");
    CHECK(st->state == "stopped");
    CHECK(st->error.find("acct.poison is not accepted") != std::string::npos);
    CHECK(st->events_applied == 10);
    CHECK(status(r).held); // it keeps the lease, waiting for an operator
  }

  TEST_CASE_FIXTURE(runner_fixture,
                    "a rebuild under a running runner switches to an identical read model") {
    append_deposits(store, 4, 100);
    spawn("replica-1");
    REQUIRE(eventually([&] { return caught_up(); }));
    const auto before = view(store);
    REQUIRE(mire::request_rebuild(store, "balances"));
    append_deposits(store, 4, 10, 500); // the live generation keeps following meanwhile
    REQUIRE(eventually([&] {
      auto st = mire::projection_status_of(store, "balances");
      return st && st->live_generation == 2 && st->rebuild_generation == 0;
    }));
    REQUIRE(eventually([&] { return caught_up(); }));
    CHECK(view(store) == fold(store));
    CHECK(view(store) != before);
    CHECK(sql(store, "SELECT to_regclass('public.balances_g1') IS NULL").at(0, 0) == "t");
  }

  TEST_CASE_FIXTURE(
      runner_fixture,
      "a runner following live appends skips nothing when commits land out of position order") {
    spawn("replica-1");
    REQUIRE(eventually([&] { return caught_up(); }));
    std::atomic<int> committed{0};
    std::vector<std::thread> writers;
    for (int w = 0; w < 4; ++w)
      writers.emplace_back([this, w, &committed] {
        auto s = mire::event_store::open({.url = url}).value();
        std::mt19937 rng(w);
        for (int i = 0; i < 40; ++i) {
          // Takes a position, then holds the transaction open while others commit.
          auto tx = s.begin().value();
          if (!tx.append(fmt::format("acct-{}", w), expected_version::any(), {deposit(i + 1)}))
            return;
          std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 15));
          if (tx.commit())
            ++committed;
        }
      });
    for (auto& t : writers)
      t.join();
    CHECK(committed == 160);
    REQUIRE(eventually([&] { return caught_up(); }));
    CHECK(view(store) == fold(store));
    CHECK(mire::projection_status_of(store, "balances")->events_applied == 160);
  }

  // An append that commits while an older transaction is still open waits behind it (rule 3):
  // its notification finds nothing to read yet, and the older transaction, not an append, sends
  // none when it ends. The runner must look again on its own, not at its next poll.
  TEST_CASE_FIXTURE(runner_fixture,
                    "an append held back by an older open transaction is applied once that ends, "
                    "without waiting for the poll") {
    auto r = mire::actors::spawn_projection_runner(
        *sys, store, balances_projection(),
        {.owner = "replica-1", .lease_ttl = 1500ms, .poll = 600s, .max_backoff = 500ms});
    REQUIRE_MESSAGE(r, r.error().what());
    runners.push_back(*r);
    append_deposits(store, 1, 1);
    REQUIRE(eventually([&] { return caught_up(); }));

    auto other = mire::event_store::open({.url = url}).value();
    auto older = other.begin().value();
    REQUIRE(older.execute("SELECT pg_current_xact_id()")); // takes a transaction id: the horizon
    const auto steps = status(*r).steps;
    append_deposits(store, 1, 1, 1);
    // The runner hears of the append and finds it behind the horizon.
    REQUIRE(eventually([&] { return status(*r).steps > steps; }, 20s));
    std::this_thread::sleep_for(200ms);
    CHECK_FALSE(caught_up());
    REQUIRE(older.commit());
    CHECK(eventually([&] { return caught_up(); }, 30s));
    CHECK(view(store) == fold(store));
  }

  TEST_CASE_FIXTURE(
      runner_fixture,
      "a runner whose lease is taken away steps down, and drives again once it is back") {
    append_deposits(store, 2, 10);
    auto r = spawn("replica-1");
    REQUIRE(eventually([&] { return caught_up(); }));
    const auto fence = status(r).fence_token;
    // Someone else takes the lease (as after a pause past the ttl) and keeps it a while.
    const auto resource = mire::projection_resource("balances");
    sql(store, "UPDATE mire.leases SET expires_at = now() - interval '1 second'");
    auto thief = mire::acquire_lease(store, resource, "thief", 60s);
    REQUIRE(thief);
    REQUIRE(thief->has_value());
    REQUIRE(eventually([&] { return !status(r).held; }));
    CHECK(status(r).last_error.find("lease lost") != std::string::npos);
    append_deposits(store, 2, 5, 100);
    const auto applied = mire::projection_status_of(store, "balances")->events_applied;
    CHECK(applied == 20); // nothing applied without the lease
    REQUIRE(mire::release_lease(store, **thief));
    REQUIRE(eventually([&] { return caught_up(); }));
    CHECK(status(r).held);
    CHECK(status(r).fence_token > fence + 1);
    CHECK(view(store) == fold(store));
  }

  // A server of this test's own, which it may stop and start; removed at the end.
  struct own_server {
    mire::embedded_options options;
    std::string url;

    own_server() {
      char dir[] = "/tmp/mire-restart-XXXXXX";
      REQUIRE(mkdtemp(dir) != nullptr);
      chmod(dir, 0755); // the postgres user must reach it when we run as root
      options.home = dir;
      options.fsync = false;
      start();
    }
    void start() {
      auto pg = mire::embedded_postgres::start(options);
      REQUIRE_MESSAGE(pg, pg.error().what());
      url = pg->url();
    }
    void stop() { REQUIRE(mire::embedded_postgres::stop(options)); }
    ~own_server() {
      options.throwaway = true;
      (void)mire::embedded_postgres::stop(options);
      std::error_code ec;
      std::filesystem::remove_all(options.home, ec);
    }
  };

  TEST_CASE("a runner survives a database restart and resumes from its checkpoint") {
    own_server server;
    auto store = mire::event_store::open({.url = server.url, .connect_timeout_seconds = 1});
    REQUIRE_MESSAGE(store, store.error().what());
    REQUIRE(store->migrate());
    caf::actor_system_config cfg;
    mire::actors::add_mire_types(cfg);
    caf::actor_system sys{cfg};
    auto r = mire::actors::spawn_projection_runner(
        sys, *store, balances_projection(),
        {.owner = "replica-1", .lease_ttl = 1500ms, .poll = 100ms, .max_backoff = 500ms});
    REQUIRE(r);
    auto status = [&] {
      caf::scoped_actor self{sys};
      runner_status out;
      self->request(*r, 10s, status_atom::value)
          .receive([&](runner_status& s) { out = std::move(s); },
                   [&](caf::error& e) { FAIL("status: " << mire::actors::from_caf(e).what()); });
      return out;
    };
    auto caught_up = [&](int64_t total) {
      auto st = mire::projection_status_of(*store, "balances");
      return st && st->lag_events == 0 && st->events_applied == total;
    };
    append_deposits(*store, 3, 20);
    REQUIRE(eventually([&] { return caught_up(60); }));

    server.stop();
    // The holder cannot renew: it gives the lease up by its own clock and keeps running.
    REQUIRE(eventually([&] { return !status().held; }));
    CHECK_FALSE(status().last_error.empty());
    server.start();
    append_deposits(*store, 3, 20, 100);
    REQUIRE(eventually([&] { return caught_up(120); }));
    CHECK(view(*store) == fold(*store));
    CHECK(status().held);
    caf::anon_send_exit(*r, caf::exit_reason::user_shutdown);
  }

} // TEST_SUITE
