// Group commit (event_store::append_group): several streams in one transaction, each append with
// its own expected version and its own outcome.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "mire/store/event_store.hpp"
#include "mire/store/uuid.hpp"
#include "support/pg_harness.hpp"

namespace {

using mire::errc;
using mire::event_data;
using mire::expected_version;
using mire::stream_append;

event_data one(int i, std::string id = mire::new_uuid()) {
  return event_data{"group.event", fmt::format(R"({{"i": {}}})", i), "{}", std::move(id)};
}

} // namespace

TEST_SUITE("pg") {

TEST_CASE_FIXTURE(mire::test::pg_fixture,
                  "a stale expectation in a group fails only its own append") {
  REQUIRE(store.append("g-stale", expected_version::no_stream(), {one(0), one(1)}));
  REQUIRE(store.append("g-good", expected_version::no_stream(), {one(0)}));

  std::vector<stream_append> group{
      {"g-new", expected_version::no_stream(), {one(1), one(2)}},
      {"g-stale", expected_version::exactly(1), {one(3)}},       // stream is at 2
      {"g-good", expected_version::exactly(1), {one(4)}},
      {"g-ahead", expected_version::exactly(5), {one(5)}},       // stream does not exist
      {"g-any", expected_version::any(), {one(6)}},
  };
  auto r = store.append_group(group);
  REQUIRE_MESSAGE(r, r.error().what());
  REQUIRE(r->size() == 5);
  CHECK((*r)[0]->version == 2);
  REQUIRE_FALSE((*r)[1]);
  CHECK((*r)[1].error().code == errc::version_conflict);
  CHECK((*r)[1].error().expected == 1);
  CHECK((*r)[1].error().actual == 2);
  CHECK((*r)[2]->version == 2);
  REQUIRE_FALSE((*r)[3]);
  CHECK((*r)[3].error().actual == 0);
  CHECK((*r)[4]->version == 1);

  CHECK(store.stream_version("g-new").value() == 2);
  CHECK(store.stream_version("g-stale").value() == 2);  // nothing of the stale append stored
  CHECK(store.stream_version("g-good").value() == 2);
  CHECK(store.stream_version("g-ahead").value() == 0);
  // The successful appends of the group share one transaction.
  auto first = store.read_stream("g-new").value();
  auto any = store.read_stream("g-any").value();
  auto good = store.read_stream("g-good", 2).value();
  CHECK(first.front().transaction_id == any.front().transaction_id);
  CHECK(good.front().transaction_id == any.front().transaction_id);
}

TEST_CASE_FIXTURE(mire::test::pg_fixture,
                  "exact expectations: beyond the stream, or known to the store but outdated by "
                  "another writer, fail alone; right ones commit, known or not") {
  // This store wrote version 1 of both streams (so it may skip their probes); another store,
  // with its own memory of heads, then moves them on.
  REQUIRE(store.append("k-known", expected_version::no_stream(), {one(0)}));
  REQUIRE(store.append("k-head", expected_version::no_stream(), {one(0)}));
  auto other = mire::event_store::open(store.options()).value();
  REQUIRE(other.append("k-known", expected_version::exactly(1), {one(1)}));
  REQUIRE(other.append("k-head", expected_version::exactly(1), {one(1)}));

  std::vector<stream_append> first{
      {"k-ahead", expected_version::exactly(3), {one(3)}}, // the stream does not exist
      {"k-head", expected_version::exactly(2), {one(4)}},  // not known here, but right
      {"k-new", expected_version::no_stream(), {one(5), one(6)}},
  };
  auto r = store.append_group(first);
  REQUIRE_MESSAGE(r, r.error().what());
  REQUIRE(r->size() == 3);
  REQUIRE_FALSE((*r)[0]);
  CHECK((*r)[0].error().code == errc::version_conflict);
  CHECK((*r)[0].error().actual == 0);
  REQUIRE_MESSAGE((*r)[1], (*r)[1].error().what());
  CHECK((*r)[1]->version == 3);
  REQUIRE_MESSAGE((*r)[2], (*r)[2].error().what());
  CHECK((*r)[2]->version == 2);
  CHECK(store.stream_version("k-ahead").value() == 0); // no hole: nothing stored

  std::vector<stream_append> second{
      {"k-known", expected_version::exactly(1), {one(7)}}, // known here, but now stale
      {"k-new", expected_version::exactly(2), {one(8)}},   // known here, and right
  };
  auto s = store.append_group(second);
  REQUIRE_MESSAGE(s, s.error().what());
  REQUIRE_FALSE((*s)[0]);
  CHECK((*s)[0].error().code == errc::version_conflict);
  CHECK((*s)[0].error().actual == 2);
  REQUIRE_MESSAGE((*s)[1], (*s)[1].error().what());
  CHECK((*s)[1]->version == 3);
  CHECK(store.stream_version("k-known").value() == 2);
  CHECK(store.stream_version("k-new").value() == 3);
}

TEST_CASE_FIXTURE(mire::test::pg_fixture, "a resent group reports the original appends") {
  std::vector<stream_append> group{{"r-1", expected_version::no_stream(), {one(1)}},
                                   {"r-2", expected_version::any(), {one(2), one(3)}}};
  auto first = store.append_group(group);
  REQUIRE(first);
  auto again = store.append_group(group);
  REQUIRE(again);
  for (std::size_t i = 0; i < group.size(); ++i) {
    REQUIRE((*again)[i]);
    CHECK((*again)[i]->duplicate);
    CHECK((*again)[i]->first_position == (*first)[i]->first_position);
    CHECK((*again)[i]->version == (*first)[i]->version);
  }
  CHECK(store.stream_version("r-2").value() == 2);
}

TEST_CASE_FIXTURE(mire::test::pg_fixture,
                  "a resent group of exact expectations reports the original appends, not a "
                  "conflict") {
  // As after a connection lost during the commit: the same appends, same event ids, again.
  REQUIRE(store.append("x-2", expected_version::no_stream(), {one(0)}));
  std::vector<stream_append> group{{"x-1", expected_version::no_stream(), {one(1), one(2)}},
                                   {"x-2", expected_version::exactly(1), {one(3)}},
                                   {"x-3", expected_version::no_stream(), {one(4)}}};
  auto first = store.append_group(group);
  REQUIRE_MESSAGE(first, first.error().what());
  auto check_again = [&](mire::event_store& s, const std::vector<stream_append>& resent) {
    auto again = s.append_group(resent);
    REQUIRE_MESSAGE(again, again.error().what());
    REQUIRE(again->size() == resent.size());
    for (std::size_t i = 0; i < resent.size(); ++i) {
      CAPTURE(resent[i].stream_id);
      REQUIRE_MESSAGE((*again)[i], (*again)[i].error().what());
      CHECK((*again)[i]->duplicate);
      CHECK((*again)[i]->version == (*first)[i]->version);
      CHECK((*again)[i]->first_position == (*first)[i]->first_position);
      CHECK((*again)[i]->last_position == (*first)[i]->last_position);
    }
  };
  check_again(store, group); // this store knows the heads: no probe, the unique key fires
  auto fresh = mire::event_store::open({url, "mire", 2}).value();
  check_again(fresh, group); // a store that knows nothing: the probe filters them out
  // Alongside a new append, which still commits; a real conflict is still one.
  auto mixed = group;
  mixed.push_back({"x-4", expected_version::no_stream(), {one(5)}});
  mixed.push_back({"x-2", expected_version::exactly(1), {one(6)}});
  mixed.erase(mixed.begin() + 1); // x-2's resend out: x-2 now appears once, stale
  auto r = fresh.append_group(mixed);
  REQUIRE_MESSAGE(r, r.error().what());
  CHECK((*r)[0]->duplicate);
  CHECK((*r)[1]->duplicate);
  REQUIRE((*r)[2]);
  CHECK_FALSE((*r)[2]->duplicate);
  REQUIRE_FALSE((*r)[3]);
  CHECK((*r)[3].error().code == errc::version_conflict);
  CHECK((*r)[3].error().actual == 2);
  CHECK(store.stream_version("x-1").value() == 2);
  CHECK(store.stream_version("x-2").value() == 2);
  CHECK(store.stream_version("x-3").value() == 1);
  CHECK(store.stream_version("x-4").value() == 1);
}

TEST_CASE_FIXTURE(mire::test::pg_fixture,
                  "groups racing single writers on the same streams keep versions dense") {
  constexpr int streams = 10, rounds = 60;
  std::atomic<int> group_ok{0}, single_ok{0};
  std::thread single([&] {
    for (int r = 0; r < rounds; ++r)
      for (int s = 0; s < streams; ++s)
        if (store.append(fmt::format("race-{}", s), expected_version::any(), {one(r)}))
          ++single_ok;
  });
  std::thread grouped([&] {
    for (int r = 0; r < rounds; ++r) {
      std::vector<stream_append> group;
      for (int s = 0; s < streams; ++s)
        group.push_back({fmt::format("race-{}", s), expected_version::any(), {one(r)}});
      auto res = store.append_group(group);
      REQUIRE_MESSAGE(res, res.error().what());
      for (auto& one_result : *res) {
        REQUIRE_MESSAGE(one_result, one_result.error().what());
        ++group_ok;
      }
    }
  });
  single.join();
  grouped.join();
  CHECK(group_ok == streams * rounds);
  CHECK(single_ok == streams * rounds);
  for (int s = 0; s < streams; ++s) {
    auto events = store.read_stream(fmt::format("race-{}", s)).value();
    REQUIRE(events.size() == 2 * rounds);
    for (std::size_t i = 0; i < events.size(); ++i)
      CHECK(events[i].version == static_cast<int64_t>(i + 1));
  }
}

TEST_CASE_FIXTURE(mire::test::pg_fixture,
                  "a group member behind another transaction's lock does not hold its neighbours "
                  "up") {
  using namespace std::chrono_literals;
  REQUIRE(store.append("lk-held", expected_version::no_stream(), {one(0)}));
  auto tx = store.begin();
  REQUIRE(tx);
  // Version 2 of lk-held written and not committed: an insert of the same key waits for it.
  REQUIRE(tx->append("lk-held", expected_version::exactly(1), {one(1)}));
  auto in_time = [&](const std::vector<stream_append>& group) {
    auto pending = std::async(std::launch::async, [&] { return store.append_group(group); });
    const bool ready = pending.wait_for(20s) == std::future_status::ready;
    if (!ready)
      tx->rollback(); // lets the group finish, so the test fails instead of hanging
    REQUIRE_MESSAGE(ready, "the group waited for the other transaction");
    auto r = pending.get();
    REQUIRE_MESSAGE(r, r.error().what());
    REQUIRE(r->size() == group.size());
    return std::move(*r);
  };
  auto check_held = [](const mire::result<mire::append_result>& r) {
    REQUIRE_FALSE(r);
    CHECK(r.error().code == errc::version_conflict);
    CHECK(r.error().stream_id == "lk-held");
    CHECK(r.error().message.find("another transaction") != std::string::npos);
  };
  // Exact expectations (what aggregate actors send), then beside an "any" append.
  auto exact = in_time({{"lk-held", expected_version::exactly(1), {one(2)}},
                        {"lk-free-1", expected_version::no_stream(), {one(3)}}});
  check_held(exact[0]);
  REQUIRE_MESSAGE(exact[1], exact[1].error().what());
  CHECK(exact[1]->version == 1);
  auto mixed = in_time({{"lk-free-2", expected_version::any(), {one(4)}},
                        {"lk-held", expected_version::exactly(1), {one(5)}}});
  REQUIRE_MESSAGE(mixed[0], mixed[0].error().what());
  CHECK(mixed[0]->version == 1);
  check_held(mixed[1]);
  REQUIRE(tx->commit());
  CHECK(store.read_stream("lk-held").value().size() == 2); // its own event and the transaction's
  CHECK(store.read_stream("lk-free-1").value().size() == 1);
  CHECK(store.read_stream("lk-free-2").value().size() == 1);
}

TEST_CASE_FIXTURE(mire::test::pg_fixture, "a group naming one stream twice is bad input") {
  auto r = store.append_group({{"twice-1", expected_version::any(), {one(1)}},
                               {"twice-1", expected_version::any(), {one(2)}}});
  REQUIRE_FALSE(r);
  CHECK(r.error().code == errc::bad_input);
  CHECK(r.error().message.find("twice-1") != std::string::npos);
  CHECK(store.stream_version("twice-1").value() == 0);
}

} // TEST_SUITE
