// mire/actors/store_actor.hpp against a real server: group commit gives every caller its own
// outcome, appends to one stream keep their order, loads and snapshots.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <caf/all.hpp>

#include "mire/actors/errors.hpp"
#include "mire/actors/store_actor.hpp"
#include "support/pg_harness.hpp"

namespace {

using namespace std::chrono_literals;
using mire::errc;
using mire::expected_version;
using mire::actors::append_atom;
using mire::actors::load_atom;
using mire::actors::snapshot_atom;

mire::event_data event(std::string type, std::string data = "{}") {
  return {std::move(type), std::move(data), "{}", {}};
}

mire::stream_append append(std::string stream, expected_version expected, int events = 1) {
  mire::stream_append a{std::move(stream), expected, {}};
  for (int i = 0; i < events; ++i)
    a.events.push_back(event("test.happened", "{\"i\": " + std::to_string(i) + "}"));
  return a;
}

struct actor_fixture : mire::test::pg_fixture {
  caf::actor_system_config cfg;
  std::unique_ptr<caf::actor_system> sys;

  actor_fixture() {
    mire::actors::add_mire_types(cfg);
    sys = std::make_unique<caf::actor_system>(cfg);
  }
  ~actor_fixture() {
    caf::scoped_actor self{*sys};
    for (auto& a : spawned)
      self->send_exit(a, caf::exit_reason::user_shutdown);
  }

  mire::actors::store_actor spawn(mire::actors::store_actor_options options) {
    auto a = mire::actors::spawn_store_actor(*sys, store, options);
    REQUIRE_MESSAGE(a, a.error().what());
    spawned.push_back(*a);
    return *a;
  }

  std::vector<mire::actors::store_actor> spawned;
};

/// The outcome of one append request.
struct outcome {
  bool ok = false;
  mire::append_result value;
  mire::error error;
};

// Sends every append before waiting for any, so that they all queue in the store actor together.
std::vector<outcome> append_all(caf::actor_system& sys, const mire::actors::store_actor& h,
                                std::vector<mire::stream_append> appends) {
  caf::scoped_actor self{sys};
  using handle = decltype(self->request(h, 10s, append_atom::value, appends[0]));
  std::vector<handle> pending;
  for (auto& a : appends)
    pending.push_back(self->request(h, 10s, append_atom::value, std::move(a)));
  std::vector<outcome> out(pending.size());
  for (std::size_t i = 0; i < pending.size(); ++i)
    pending[i].receive(
        [&](mire::append_result& r) {
          out[i].ok = true;
          out[i].value = r;
        },
        [&](caf::error& e) { out[i].error = mire::actors::from_caf(e); });
  return out;
}

std::string describe(const outcome& o) {
  return o.ok ? "ok, version " + std::to_string(o.value.version) : o.error.what();
}

} // namespace

TEST_SUITE("pg") {

  TEST_CASE_FIXTURE(actor_fixture,
                    "group commit gives each caller its own outcome in a mix of good and stale "
                    "expectations") {
    for (const char* s : {"acct-1", "acct-2", "acct-3"})
      REQUIRE(store.append(s, expected_version::no_stream(),
                           append(s, expected_version::any(), 2).events));
    // One worker and a window wide enough for the whole burst: the first wave is one group.
    auto h = spawn({1, 300ms, 256});
    auto out = append_all(*sys, h,
                          {
                              append("acct-1", expected_version::exactly(2)),     // 0 good
                              append("acct-2", expected_version::exactly(1)),     // 1 stale
                              append("acct-3", expected_version::any(), 2),       // 2 good
                              append("acct-4", expected_version::no_stream()),    // 3 good
                              append("acct-5", expected_version::exactly(3)),     // 4 stale
                              append("acct-4", expected_version::exactly(1)),     // 5 same stream
                              append("acct-6", expected_version::no_stream(), 3), // 6 good
                              append("acct-2", expected_version::exactly(2)),     // 7 good
                          });
    REQUIRE_MESSAGE(out[0].ok, describe(out[0]));
    CHECK(out[0].value.version == 3);
    REQUIRE_FALSE(out[1].ok);
    CHECK(out[1].error.code == errc::version_conflict);
    CHECK(out[1].error.stream_id == "acct-2");
    CHECK(out[1].error.expected == 1);
    CHECK(out[1].error.actual == 2);
    REQUIRE(out[2].ok);
    CHECK(out[2].value.version == 4);
    REQUIRE(out[3].ok);
    CHECK(out[3].value.version == 1);
    REQUIRE_FALSE(out[4].ok);
    CHECK(out[4].error.code == errc::version_conflict);
    CHECK(out[4].error.actual == 0);
    // The second append to acct-4 waited for the first one's group, so its expectation holds.
    REQUIRE_MESSAGE(out[5].ok, describe(out[5]));
    CHECK(out[5].value.version == 2);
    REQUIRE(out[6].ok);
    CHECK(out[6].value.version == 3);
    // acct-2 appears twice in the burst too: the later, good one is not failed by the stale one.
    REQUIRE_MESSAGE(out[7].ok, describe(out[7]));
    CHECK(out[7].value.version == 3);

    // Nothing of the stale appends is stored; the first wave is one transaction.
    CHECK(store.stream_version("acct-2").value() == 3);
    CHECK(store.stream_version("acct-5").value() == 0);
    std::set<uint64_t> first_wave;
    for (const char* s : {"acct-1", "acct-3", "acct-6"}) {
      const auto events = store.read_stream(s).value();
      for (const auto& e : events)
        if (e.version > 2 || std::string(s) == "acct-6")
          first_wave.insert(e.transaction_id);
    }
    first_wave.insert(store.read_stream("acct-4", 1, 1).value().at(0).transaction_id);
    CHECK(first_wave.size() == 1);
    CHECK(store.read_stream("acct-4", 2).value().at(0).transaction_id != *first_wave.begin());
  }

  TEST_CASE_FIXTURE(actor_fixture, "bad input in one append of a group fails only that append") {
    auto h = spawn({1, 300ms, 256});
    auto bad = append("acct-2", expected_version::no_stream());
    bad.events[0].data = "{not json";
    auto out = append_all(*sys, h,
                          {append("acct-1", expected_version::no_stream()), std::move(bad),
                           append("acct-3", expected_version::no_stream())});
    CHECK(out[0].ok);
    REQUIRE_FALSE(out[1].ok);
    CHECK(out[1].error.code == errc::bad_input);
    CHECK(out[2].ok);
    CHECK(store.stream_version("acct-1").value() == 1);
    CHECK(store.stream_version("acct-2").value() == 0);
    CHECK(store.stream_version("acct-3").value() == 1);
  }

  TEST_CASE_FIXTURE(actor_fixture,
                    "without a window a lone append goes at once and a burst still groups up") {
    auto h = spawn({2, 0us, 256});
    caf::scoped_actor self{*sys};
    const auto t0 = std::chrono::steady_clock::now();
    self->request(h, 10s, append_atom::value, append("solo-1", expected_version::no_stream()))
        .receive([](mire::append_result& r) { CHECK(r.version == 1); },
                 [](caf::error& e) { FAIL(mire::actors::from_caf(e).what()); });
    CHECK(std::chrono::steady_clock::now() - t0 < 2s);

    std::vector<mire::stream_append> burst;
    for (int i = 0; i < 200; ++i)
      burst.push_back(append("burst-" + std::to_string(i), expected_version::no_stream()));
    auto out = append_all(*sys, h, std::move(burst));
    std::set<uint64_t> transactions;
    for (std::size_t i = 0; i < out.size(); ++i) {
      REQUIRE_MESSAGE(out[i].ok, describe(out[i]));
      transactions.insert(
          store.read_stream("burst-" + std::to_string(i)).value().at(0).transaction_id);
    }
    // Two workers: the first append or two leave alone, the rest queue up behind them.
    MESSAGE("200 appends in ", transactions.size(), " transactions");
    CHECK(transactions.size() < 50);
  }

  TEST_CASE_FIXTURE(actor_fixture,
                    "a commit hook runs on the worker before the reply, only for appends that "
                    "committed") {
    REQUIRE(store.append("acct-2", expected_version::no_stream(), {event("test.happened")}));
    std::mutex m;
    std::vector<std::pair<std::string, int64_t>> hooked; // stream, version, in the order run
    auto hook = [&](std::string stream) {
      return std::make_shared<const std::function<void(const mire::append_result&)>>(
          [&, stream](const mire::append_result& r) {
            std::lock_guard lock{m};
            hooked.emplace_back(stream, r.version);
          });
    };
    auto h = spawn({1, 300ms, 256}); // the three go as one group
    caf::scoped_actor self{*sys};
    using handle = decltype(self->request(h, 10s, append_atom::value,
                                          append("x", expected_version::any()), hook("x")));
    std::vector<handle> pending;
    pending.push_back(self->request(h, 10s, append_atom::value,
                                    append("acct-1", expected_version::no_stream()),
                                    hook("acct-1")));
    pending.push_back(self->request(h, 10s, append_atom::value,
                                    append("acct-2", expected_version::exactly(5)),
                                    hook("acct-2"))); // stale
    pending.push_back(self->request(h, 10s, append_atom::value,
                                    append("acct-3", expected_version::no_stream(), 2),
                                    hook("acct-3")));
    const char* streams[] = {"acct-1", "acct-2", "acct-3"};
    for (std::size_t i = 0; i < pending.size(); ++i)
      pending[i].receive(
          [&](mire::append_result& r) {
            // The hook ran before this reply was sent, with the same outcome.
            std::lock_guard lock{m};
            CHECK(std::count(hooked.begin(), hooked.end(), std::pair{std::string(streams[i]),
                                                                   r.version}) == 1);
          },
          [&](caf::error& e) {
            CHECK(mire::actors::from_caf(e).code == errc::version_conflict);
            CHECK(i == 1);
          });
    std::lock_guard lock{m};
    CHECK(hooked == std::vector<std::pair<std::string, int64_t>>{{"acct-1", 1}, {"acct-3", 2}});
  }

  TEST_CASE_FIXTURE(actor_fixture,
                    "appends wait for company behind a group only briefly: a group held up in "
                    "Postgres does not hold up appends to other streams") {
    // An uncommitted append to "held" keeps the group that appends there waiting in Postgres.
    auto blocker = store.begin().value();
    REQUIRE(blocker.append("held", expected_version::no_stream(), {event("test.blocker")}));
    auto h = spawn({2, 50ms, 3});
    caf::scoped_actor self{*sys};
    using handle = decltype(self->request(h, 10s, append_atom::value,
                                          append("x", expected_version::any())));
    std::vector<handle> pending;
    // A full group of three (max_group) leaves as soon as it is gathered, and waits for the
    // blocker.
    for (const char* s : {"held", "a", "b"})
      pending.push_back(
          self->request(h, 10s, append_atom::value, append(s, expected_version::no_stream())));
    std::this_thread::sleep_for(200ms);
    // Two more, fewer than the group in flight: they wait for company, then go together to the
    // idle worker while the first group is still stuck.
    for (const char* s : {"c", "d"})
      pending.push_back(
          self->request(h, 10s, append_atom::value, append(s, expected_version::no_stream())));
    pending[4].receive([](mire::append_result& r) { CHECK(r.version == 1); },
                       [](caf::error& e) { FAIL(mire::actors::from_caf(e).what()); });
    pending[3].receive([](mire::append_result& r) { CHECK(r.version == 1); },
                       [](caf::error& e) { FAIL(mire::actors::from_caf(e).what()); });
    CHECK(store.stream_version("a").value() == 0); // still stuck behind the blocker
    CHECK(store.read_stream("c").value().at(0).transaction_id ==
          store.read_stream("d").value().at(0).transaction_id);
    blocker.rollback();
    for (std::size_t i = 0; i < 3; ++i)
      pending[i].receive([](mire::append_result& r) { CHECK(r.version == 1); },
                         [](caf::error& e) { FAIL(mire::actors::from_caf(e).what()); });
    CHECK(store.stream_version("a").value() == 1);
  }

  TEST_CASE_FIXTURE(actor_fixture, "a failed load gives its worker back") {
    auto h = spawn({1, 0us, 256});
    caf::scoped_actor self{*sys};
    for (int i = 0; i < 3; ++i) // more failures than workers
      self->request(h, 10s, load_atom::value, mire::actors::load_request{"", 1, -1})
          .receive([](mire::actors::stream_load&) { FAIL("a load of stream '' succeeded"); },
                   [](caf::error& e) {
                     CHECK(mire::actors::from_caf(e).code == errc::bad_input);
                   });
    self->request(h, 10s, append_atom::value, append("after-1", expected_version::no_stream()))
        .receive([](mire::append_result& r) { CHECK(r.version == 1); },
                 [](caf::error& e) { FAIL(mire::actors::from_caf(e).what()); });
  }

  TEST_CASE_FIXTURE(actor_fixture, "a load returns a usable snapshot and the events after it") {
    REQUIRE(store.append("acct-1", expected_version::no_stream(),
                         append("acct-1", expected_version::any(), 5).events));
    auto h = spawn({});
    caf::scoped_actor self{*sys};
    self->request(h, 10s, snapshot_atom::value, mire::snapshot{"acct-1", 3, 7, R"({"n": 3})"})
        .receive([] {}, [](caf::error& e) { FAIL(mire::actors::from_caf(e).what()); });

    auto load = [&](mire::actors::load_request req) {
      mire::actors::stream_load out;
      self->request(h, 10s, load_atom::value, std::move(req))
          .receive([&](mire::actors::stream_load& l) { out = std::move(l); },
                   [](caf::error& e) { FAIL(mire::actors::from_caf(e).what()); });
      return out;
    };
    auto with_snapshot = load({"acct-1", 1, 7});
    REQUIRE(with_snapshot.has_snapshot);
    CHECK(with_snapshot.snapshot.version == 3);
    REQUIRE(with_snapshot.events.size() == 2);
    CHECK(with_snapshot.events[0].version == 4);

    auto other_schema = load({"acct-1", 1, 8});
    CHECK_FALSE(other_schema.has_snapshot);
    CHECK(other_schema.events.size() == 5);

    auto tail = load({"acct-1", 5, 7}); // the snapshot is older than what is asked for
    CHECK_FALSE(tail.has_snapshot);
    REQUIRE(tail.events.size() == 1);
    CHECK(tail.events[0].version == 5);
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "a store actor nobody references any more goes away with its workers") {
    std::atomic<bool> shut_down{false};
    std::thread owner([&] {
      {
        caf::actor_system_config cfg;
        mire::actors::add_mire_types(cfg);
        caf::actor_system sys{cfg};
        auto h = mire::actors::spawn_store_actor(sys, store, {2, 0us, 256});
        REQUIRE(h);
        caf::scoped_actor self{sys};
        self->request(*h, 10s, append_atom::value, append("gone-1", expected_version::no_stream()))
            .receive([](mire::append_result& r) { CHECK(r.version == 1); },
                     [](caf::error& e) { FAIL(mire::actors::from_caf(e).what()); });
      } // the handle, then the system: its destructor waits for every actor
      shut_down = true;
    });
    const auto give_up = std::chrono::steady_clock::now() + 30s;
    while (!shut_down && std::chrono::steady_clock::now() < give_up)
      std::this_thread::sleep_for(10ms);
    if (!shut_down) {
      owner.detach(); // stuck in ~actor_system: the workers never stopped
      FAIL("the actor system did not shut down: the store actor's workers kept running");
    }
    owner.join();
  }

  TEST_CASE_FIXTURE(actor_fixture, "a store actor needs a pool with a connection per worker") {
    auto small = mire::event_store::open({url, "mire", 2}).value();
    auto r = mire::actors::spawn_store_actor(*sys, small, {4, 0us, 256});
    REQUIRE_FALSE(r);
    CHECK(r.error().code == errc::bad_input);
    CHECK(r.error().message.find("pool_size") != std::string::npos);
  }
}
