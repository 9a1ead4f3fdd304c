// mire/actors/lease.hpp: the local deadline (pure), and the lease actor against a real server:
// gained and lost notifications, takeover after a stop or a kill, and losing the lease by the
// local clock while the database does not answer.
#include <doctest/doctest.h>

#include <libpq-fe.h>

#include <chrono>
#include <memory>
#include <string>

#include <caf/all.hpp>

#include "mire/actors/errors.hpp"
#include "mire/actors/lease.hpp"
#include "mire/store/lease.hpp"
#include "support/pg_harness.hpp"

namespace {

using namespace std::chrono_literals;
using mire::actors::lease_gained_atom;
using mire::actors::lease_lost_atom;
using mire::actors::lease_options;

struct gained {
  std::string resource;
  int64_t fence = 0;
};

// Waits (bounded) for the next lease message to `self`.
std::optional<gained> next_gained(caf::scoped_actor& self, std::chrono::seconds bound = 15s) {
  std::optional<gained> out;
  self->receive(
      [&](lease_gained_atom, const std::string& r, int64_t f) {
        out = gained{r, f};
      },
      [&](lease_lost_atom, const std::string&, const std::string&) {}, caf::after(bound) >> [] {});
  return out;
}

std::optional<std::string> next_lost(caf::scoped_actor& self, std::chrono::seconds bound = 15s) {
  std::optional<std::string> out;
  self->receive([&](lease_lost_atom, const std::string&, const std::string& why) { out = why; },
                [&](lease_gained_atom, const std::string&, int64_t) {}, caf::after(bound) >> [] {});
  return out;
}

struct lease_fixture : mire::test::pg_fixture {
  caf::actor_system_config cfg;
  std::unique_ptr<caf::actor_system> sys;
  std::vector<caf::actor> spawned;

  lease_fixture() {
    mire::actors::add_mire_types(cfg);
    sys = std::make_unique<caf::actor_system>(cfg);
  }
  ~lease_fixture() {
    for (auto& a : spawned)
      caf::anon_send_exit(a, caf::exit_reason::user_shutdown);
    spawned.clear();
    sys.reset(); // waits for every actor
  }

  caf::actor spawn(const std::string& owner, caf::actor to, std::chrono::milliseconds ttl = 600ms) {
    auto a = mire::actors::spawn_lease_actor(*sys, store, lease_options{"res", owner, ttl}, to);
    REQUIRE_MESSAGE(a, a.error().what());
    spawned.push_back(*a);
    return *a;
  }

  std::string holder() {
    auto all = mire::list_leases(store);
    REQUIRE(all);
    for (const auto& l : *all)
      if (l.resource == "res" && l.held)
        return l.owner;
    return {};
  }
};

} // namespace

TEST_CASE("the local lease deadline is the round's start plus ttl minus the margin") {
  const auto t0 = std::chrono::steady_clock::time_point{} + 1h;
  CHECK(mire::actors::lease_deadline(t0, {"r", "o", 3000ms, 1000ms, 500ms}) == t0 + 2500ms);
  CHECK(mire::actors::lease_deadline(t0, {"r", "o", 3000ms}) == t0 + 2400ms); // margin ttl/5
}

TEST_CASE("lease options that leave no time to renew are refused") {
  CHECK(mire::actors::validate({"r", "o", 3000ms}));
  auto bad = mire::actors::validate({"r", "o", 3000ms, 2500ms, 600ms});
  REQUIRE_FALSE(bad);
  CHECK(bad.error().code == mire::errc::bad_input);
  CHECK_FALSE(mire::actors::validate({"", "o", 3000ms}));
  CHECK_FALSE(mire::actors::validate({"r", "o", 5ms}));
}

TEST_SUITE("pg") {

  TEST_CASE_FIXTURE(lease_fixture, "a lease actor tells its owner when it gains the lease") {
    caf::scoped_actor owner{*sys};
    spawn("alice", owner);
    auto g = next_gained(owner);
    REQUIRE(g);
    CHECK(g->resource == "res");
    CHECK(g->fence == 1);
    CHECK(holder() == "alice");
  }

  TEST_CASE_FIXTURE(lease_fixture,
                    "a second lease actor takes over at once when the holder is stopped") {
    caf::scoped_actor a{*sys};
    caf::scoped_actor b{*sys};
    auto first = spawn("alice", a, 60s); // a long ttl: only the release can hand it over in time
    REQUIRE(next_gained(a));
    spawn("bob", b, 60s);
    CHECK(holder() == "alice");
    caf::anon_send_exit(first, caf::exit_reason::user_shutdown); // releases
    auto g = next_gained(b);
    REQUIRE(g);
    CHECK(g->fence == 2);
    CHECK(holder() == "bob");
  }

  TEST_CASE_FIXTURE(
      lease_fixture,
      "a second lease actor takes over after the holder is killed and its lease expires") {
    caf::scoped_actor a{*sys};
    caf::scoped_actor b{*sys};
    auto first = spawn("alice", a);
    REQUIRE(next_gained(a));
    spawn("bob", b);
    caf::anon_send_exit(first, caf::exit_reason::kill); // no release: the ttl must run out
    auto g = next_gained(b);
    REQUIRE(g);
    CHECK(g->fence == 2);
  }

  TEST_CASE_FIXTURE(lease_fixture,
                    "a lease whose renewal gets no answer is declared lost by the local clock") {
    caf::scoped_actor owner{*sys};
    spawn("alice", owner);
    REQUIRE(next_gained(owner));
    // Another session locks the lease row: every renewal now hangs (up to its statement timeout
    // of one ttl), as if the database had stopped answering.
    std::unique_ptr<PGconn, decltype(&PQfinish)> c(PQconnectdb(url.c_str()), &PQfinish);
    std::unique_ptr<PGresult, decltype(&PQclear)> r(
        PQexec(c.get(), "BEGIN; SELECT * FROM mire.leases WHERE resource = 'res' FOR UPDATE"),
        &PQclear);
    REQUIRE(PQresultStatus(r.get()) == PGRES_TUPLES_OK);
    auto why = next_lost(owner);
    REQUIRE(why);
    CHECK(why->find("before it could expire") != std::string::npos);
    PQclear(PQexec(c.get(), "ROLLBACK"));
    auto again = next_gained(owner); // the database answers again: held again
    REQUIRE(again);
  }

} // TEST_SUITE
