// mire/store/listener.hpp against a real server: wake-ups for this schema only, none lost between
// connect() and wait(), and recovery after the listening connection is killed or unreachable.
#include <doctest/doctest.h>

#include <string>

#include "mire/store/event_store.hpp"
#include "mire/store/listener.hpp"
#include "support/pg_harness.hpp"

namespace {

using namespace std::chrono_literals;
using mire::errc;

void append_one(mire::event_store& store, const std::string& stream) {
  auto r = store.append(stream, mire::expected_version::any(), {{"t.happened", "{}", "{}", {}}});
  REQUIRE_MESSAGE(r, r.error().what());
}

} // namespace

TEST_SUITE("pg") {

  TEST_CASE_FIXTURE(mire::test::pg_fixture, "a listener wakes for an append to its schema") {
    mire::log_listener listener(store);
    REQUIRE(listener.connect());
    CHECK(listener.connected());
    // Appended between connect() and wait(): the notification waits on the connection.
    append_one(store, "a-1");
    auto woken = listener.wait(10s);
    REQUIRE_MESSAGE(woken, woken.error().what());
    CHECK(*woken);
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture, "a listener sleeps through appends to another schema") {
    auto options = store.options();
    options.schema = "other_schema";
    auto other = mire::event_store::open(options);
    REQUIRE(other);
    REQUIRE(other->migrate());
    mire::log_listener listener(store);
    REQUIRE(listener.connect());
    append_one(*other, "b-1");
    auto woken = listener.wait(300ms);
    REQUIRE(woken);
    CHECK_FALSE(*woken);
    append_one(store, "b-1");
    woken = listener.wait(10s);
    REQUIRE(woken);
    CHECK(*woken);
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "a listener reconnects after its connection is killed") {
    auto options = store.options();
    options.application_name = "mire-listener-test";
    mire::log_listener listener(options);
    REQUIRE(listener.connect());
    auto killed = store.transact([](mire::transaction& tx) {
      return tx.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name = 'mire-listener-test'");
    });
    REQUIRE_MESSAGE(killed, killed.error().what());
    REQUIRE(killed->size() == 1);
    // The break is seen (an error), then the next calls reconnect; the reconnection itself wakes
    // the caller (notifications may have been missed meanwhile).
    bool broke = false, reconnected = false;
    for (int i = 0; i < 50 && !reconnected; ++i) {
      auto woken = listener.wait(2s);
      if (!woken) {
        CHECK(woken.error().code == errc::unavailable);
        broke = true;
      } else if (broke && *woken) {
        reconnected = true;
      }
    }
    CHECK(broke);
    REQUIRE(reconnected);
    CHECK(listener.connected());
    append_one(store, "c-1");
    auto woken = listener.wait(10s);
    REQUIRE(woken);
    CHECK(*woken);
  }

} // TEST_SUITE("pg")

TEST_CASE("a listener of an unreachable database reports unavailable and never wakes") {
  mire::store_options options;
  options.url = "postgresql://127.0.0.1:1/nothing";
  options.connect_timeout_seconds = 1;
  mire::log_listener listener(options);
  auto c = listener.connect();
  REQUIRE_FALSE(c);
  CHECK(c.error().code == errc::unavailable);
  CHECK_FALSE(listener.connected());
  // Each call either waits out its backoff (false) or tries again and fails; none wakes.
  for (int i = 0; i < 5; ++i) {
    auto woken = listener.wait(50ms);
    if (woken)
      CHECK_FALSE(*woken);
    else
      CHECK(woken.error().code == errc::unavailable);
  }
}
