// Batched appends over many streams (event_store::append_batch) against a real server: all or
// nothing, dense versions, idempotent retries, concurrent batches, and the COPY path's escaping.
#include <doctest/doctest.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "mire/store/event_store.hpp"
#include "mire/store/uuid.hpp"
#include "support/pg_harness.hpp"

namespace {

using mire::errc;
using mire::event_data;
using mire::expected_version;
using mire::recorded_event;
using mire::stream_append;
using nlohmann::json;

event_data ev(json data, std::string id = mire::new_uuid()) {
  return event_data{"batch.event", data.dump(), "{}", std::move(id)};
}

std::vector<recorded_event> whole_log(mire::event_store& store) {
  std::vector<recorded_event> out;
  mire::checkpoint cp;
  for (;;) {
    auto page = store.read_all(cp, 500);
    REQUIRE_MESSAGE(page, page.error().what());
    if (page->events.empty())
      return out;
    cp = page->next;
    out.insert(out.end(), page->events.begin(), page->events.end());
  }
}

std::vector<std::string> ids_of(const std::vector<recorded_event>& events) {
  std::vector<std::string> out;
  for (const auto& e : events)
    out.push_back(e.event_id);
  return out;
}

// Versions 1..n without holes.
void dense(const std::vector<recorded_event>& events) {
  for (std::size_t i = 0; i < events.size(); ++i)
    CHECK(events[i].version == static_cast<int64_t>(i + 1));
}

} // namespace

TEST_SUITE("pg") {

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "a batch over many streams stores every event with dense versions") {
    std::map<std::string, int64_t> existing;
    std::size_t stored_before = 0;
    for (int i = 0; i < 10; ++i) {
      const auto id = fmt::format("order-{}", i);
      existing[id] = i % 3 + 1;
      stored_before += i % 3 + 1;
      for (int k = 0; k < i % 3 + 1; ++k)
        REQUIRE(store.append(id, expected_version::any(), {ev({{"pre", k}})}));
    }
    for (int i = 0; i < 5; ++i) {
      const auto id = fmt::format("item-{}", i);
      existing[id] = 2;
      stored_before += 2;
      REQUIRE(store.append(id, expected_version::any(), {ev({{"pre", 0}}), ev({{"pre", 1}})}));
    }

    std::vector<stream_append> batch;
    for (int i = 0; i < 10; ++i)
      batch.push_back({fmt::format("order-{}", i), expected_version::exactly(i % 3 + 1), {}});
    for (int i = 10; i < 30; ++i)
      batch.push_back({fmt::format("order-{}", i), expected_version::no_stream(), {}});
    for (int i = 0; i < 10; ++i)
      batch.push_back({fmt::format("item-{}", i), expected_version::any(), {}});
    int64_t total = 0;
    for (std::size_t s = 0; s < batch.size(); ++s) {
      for (std::size_t k = 0; k <= s % 4; ++k, ++total)
        batch[s].events.push_back(ev({{"stream", batch[s].stream_id}, {"k", k}}));
    }
    const auto sent = batch;

    auto r = store.append_batch(batch);
    REQUIRE_MESSAGE(r, r.error().what());
    CHECK_FALSE(r->duplicate);
    CHECK(r->events == total);
    REQUIRE(r->versions.size() == sent.size());

    int64_t min_pos = INT64_MAX, max_pos = 0;
    std::set<uint64_t> transactions;
    for (std::size_t s = 0; s < sent.size(); ++s) {
      const auto& id = sent[s].stream_id;
      CAPTURE(id);
      const int64_t before = existing[id];
      const auto n = static_cast<int64_t>(sent[s].events.size());
      CHECK(r->versions[s] == before + n);
      auto events = store.read_stream(id).value();
      REQUIRE(static_cast<int64_t>(events.size()) == before + n);
      dense(events);
      for (int64_t k = 0; k < n; ++k) {
        const auto& e = events[before + k];
        CHECK(e.event_id == sent[s].events[k].event_id);
        CHECK(json::parse(e.data) == json::parse(sent[s].events[k].data));
        min_pos = std::min(min_pos, e.global_position);
        max_pos = std::max(max_pos, e.global_position);
        transactions.insert(e.transaction_id);
      }
    }
    CHECK(r->first_position == min_pos);
    CHECK(r->last_position == max_pos);
    CHECK(transactions.size() == 1); // one transaction
    CHECK(whole_log(store).size() == stored_before + static_cast<std::size_t>(total));
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "a stale expected version on one stream stores nothing of the batch") {
    REQUIRE(store.append("cart-a", expected_version::any(), {ev({{"n", 1}}), ev({{"n", 2}})}));
    REQUIRE(store.append("cart-b", expected_version::any(), {ev({{"n", 1}})}));
    const auto before = ids_of(whole_log(store));

    std::string stream;
    int64_t expected = 0, actual = 0;
    std::vector<stream_append> batch{{"cart-a", expected_version::exactly(2), {ev({}), ev({})}},
                                     {"cart-new", expected_version::no_stream(), {ev({})}}};
    SUBCASE("behind") {
      batch.push_back({"cart-b", expected_version::exactly(0), {ev({})}});
      stream = "cart-b", expected = 0, actual = 1;
    }
    SUBCASE("ahead") {
      batch.push_back({"cart-b", expected_version::exactly(4), {ev({})}});
      stream = "cart-b", expected = 4, actual = 1;
    }
    SUBCASE("an exact version of a stream that does not exist") {
      batch.push_back({"cart-missing", expected_version::exactly(1), {ev({})}});
      stream = "cart-missing", expected = 1, actual = 0;
    }
    SUBCASE("the first stream of the batch") {
      batch.front().expected = expected_version::exactly(1);
      stream = "cart-a", expected = 1, actual = 2;
    }
    batch.push_back({"cart-c", expected_version::any(), {ev({})}});
    auto r = store.append_batch(batch);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == errc::version_conflict);
    CHECK(r.error().stream_id == stream);
    CHECK(r.error().expected == expected);
    CHECK(r.error().actual == actual);
    CHECK(r.error().message.find(stream) != std::string::npos);

    CHECK(ids_of(whole_log(store)) == before);
    CHECK(store.stream_version("cart-a").value() == 2);
    CHECK(store.stream_version("cart-b").value() == 1);
    CHECK(store.stream_version("cart-new").value() == 0);
    CHECK(store.stream_version("cart-c").value() == 0);
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture, "a retried batch is a duplicate, stored once") {
    REQUIRE(store.append("ship-1", expected_version::any(), {ev({{"pre", true}})}));
    const std::vector<stream_append> batch{
        {"ship-1", expected_version::exactly(1), {ev({{"n", 1}}), ev({{"n", 2}})}},
        {"ship-2", expected_version::no_stream(), {ev({{"n", 3}})}},
        {"ship-3", expected_version::any(), {ev({{"n", 4}}), ev({{"n", 5}}), ev({{"n", 6}})}},
    };
    auto first = store.append_batch(batch);
    REQUIRE_MESSAGE(first, first.error().what());
    CHECK_FALSE(first->duplicate);
    CHECK(first->versions == std::vector<int64_t>{3, 1, 3});
    // The retry comes after other writers moved some streams on: its expected versions are stale
    // now, yet it is recognised as the same batch.
    REQUIRE(store.append("ship-2", expected_version::any(), {ev({{"later", true}})}));
    REQUIRE(store.append("ship-3", expected_version::any(), {ev({{"later", true}})}));
    const auto stored = whole_log(store).size();

    for (int retry = 0; retry < 2; ++retry) {
      auto again = store.append_batch(batch);
      REQUIRE_MESSAGE(again, again.error().what());
      CHECK(again->duplicate);
      CHECK(again->versions == first->versions);
      CHECK(again->first_position == first->first_position);
      CHECK(again->last_position == first->last_position);
      CHECK(again->events == first->events);
    }
    CHECK(whole_log(store).size() == stored);
    std::map<std::string, int> count;
    for (const auto& e : whole_log(store))
      ++count[e.event_id];
    for (const auto& s : batch)
      for (const auto& e : s.events)
        CHECK(count[e.event_id] == 1);

    SUBCASE("a batch repeating only some of the events is refused") {
      auto partial = batch;
      partial[1].events.push_back(ev({{"new", true}}));
      auto r = store.append_batch(partial);
      REQUIRE_FALSE(r);
      CHECK(r.error().code == errc::bad_input);
      CHECK(r.error().message.find("already stored") != std::string::npos);
      std::vector<stream_append> mixed{
          {"ship-9", expected_version::any(), {ev({}), batch[2].events[1]}}};
      r = store.append_batch(mixed);
      REQUIRE_FALSE(r);
      CHECK(r.error().code == errc::bad_input);
      CHECK(r.error().message.find(batch[2].events[1].event_id) != std::string::npos);
      CHECK(whole_log(store).size() == stored);
      CHECK(store.stream_version("ship-9").value() == 0);
    }

    SUBCASE("stored events sent again to other streams are refused, not taken for a resend") {
      // Every id is stored, but not where this batch puts it: nothing of it is recorded.
      auto moved = batch;
      std::swap(moved[0].stream_id, moved[1].stream_id);
      auto r = store.append_batch(moved);
      REQUIRE_FALSE(r);
      CHECK(r.error().code == errc::bad_input);
      CHECK(r.error().message.find("stored in stream") != std::string::npos);
      std::vector<stream_append> elsewhere{
          {"ship-10", expected_version::no_stream(), {batch[1].events[0]}}};
      r = store.append_batch(elsewhere);
      REQUIRE_FALSE(r);
      CHECK(r.error().code == errc::bad_input);
      CHECK(r.error().message.find(batch[1].events[0].event_id) != std::string::npos);
      CHECK(store.stream_version("ship-10").value() == 0);
      CHECK(whole_log(store).size() == stored);
    }
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "two threads batching to overlapping streams with expected any both succeed") {
    // Lost races and lock waits are timing-dependent: run rounds on fresh streams for a few
    // seconds, stopping at the first failure.
    constexpr int batches = 60;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(4);
    for (int round = 0; round == 0 || std::chrono::steady_clock::now() < deadline; ++round) {
      std::vector<std::string> streams;
      for (int s = 0; s < 8; ++s)
        streams.push_back(fmt::format("lane{}-{}", round, s));
      std::vector<std::vector<mire::error>> failures(2);
      std::vector<std::map<std::string, int64_t>> sent(2);
      auto worker = [&](int t) {
        for (int b = 0; b < batches; ++b) {
          std::vector<stream_append> batch;
          for (std::size_t s = 0; s < streams.size(); ++s) {
            // Overlapping, in opposite orders, and not always all of them.
            const auto& id = t == 0 ? streams[s] : streams[streams.size() - 1 - s];
            if ((b + s) % 8 == 7)
              continue;
            stream_append part{id, expected_version::any(), {}};
            for (int k = 0; k <= (b + t) % 2; ++k)
              part.events.push_back(ev({{"thread", t}, {"batch", b}, {"k", k}}));
            batch.push_back(std::move(part));
          }
          auto r = store.append_batch(batch);
          if (!r) {
            failures[t].push_back(r.error());
            continue;
          }
          for (const auto& part : batch)
            sent[t][part.stream_id] += static_cast<int64_t>(part.events.size());
        }
      };
      std::thread a(worker, 0), b(worker, 1);
      a.join();
      b.join();
      bool failed = false;
      for (int t = 0; t < 2; ++t) {
        for (const auto& e : failures[t]) {
          failed = true;
          FAIL_CHECK("round ", round, ", thread ", t, ": ", e.what());
        }
      }
      for (const auto& id : streams) {
        CAPTURE(id);
        auto events = store.read_stream(id).value();
        CHECK(static_cast<int64_t>(events.size()) == sent[0][id] + sent[1][id]);
        dense(events);
        // Each batch's events of one stream stay together and in order.
        for (std::size_t i = 0; i + 1 < events.size(); ++i) {
          const auto x = json::parse(events[i].data), y = json::parse(events[i + 1].data);
          if (y["k"] != 0) {
            CHECK(y["thread"] == x["thread"]);
            CHECK(y["batch"] == x["batch"]);
          }
        }
      }
      if (failed)
        break;
    }
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "hostile strings survive the batched copy path verbatim") {
    const std::vector<std::string> hostile{
        "copy-\\.",       "\\.",          "copy-\\N",      "\\N",
        "copy-back\\",    "copy-\\\\two", "copy-o'brien",  "copy-\"; DROP TABLE mire.events; --",
        "copy-{a,\"b\"}", "copy-ünï-😀",   "copy- spaced ", "copy-\\t-not-a-tab",
    };
    std::vector<stream_append> batch;
    std::map<std::string, std::pair<json, json>> written;
    for (const auto& id : hostile) {
      json data{{"id", id},
                {"escapes", "\\. \\N \\\\ \\t \\n"},
                {"controls", "tab\there\nnew\rline"},
                {"copy_end", "\n\\.\n"},
                {"sql", "'); DELETE FROM mire.events; --"},
                {"unicode", "é 😀 \u2028"}};
      json meta{{"who", id}};
      batch.push_back({id,
                       expected_version::no_stream(),
                       {event_data{"hostile.event", data.dump(), meta.dump(), mire::new_uuid()}}});
      written[id] = {data, meta};
    }
    auto r = store.append_batch(batch);
    REQUIRE_MESSAGE(r, r.error().what());
    for (const auto& id : hostile) {
      CAPTURE(id);
      auto events = store.read_stream(id).value();
      REQUIRE(events.size() == 1);
      CHECK(events[0].stream_id == id);
      CHECK(json::parse(events[0].data) == written[id].first);
      CHECK(json::parse(events[0].metadata) == written[id].second);
    }
    auto log = whole_log(store);
    std::set<std::string> ids;
    for (const auto& e : log)
      ids.insert(e.stream_id);
    CHECK(ids == std::set<std::string>(hostile.begin(), hostile.end()));
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "a batch with bad input names the value and stores nothing") {
    REQUIRE(store.append("bad-1", expected_version::any(), {ev({})}));
    const auto before = ids_of(whole_log(store));
    const auto any = expected_version::any();
    const auto dup = mire::new_uuid();
    std::string upper_dup = dup;
    std::transform(upper_dup.begin(), upper_dup.end(), upper_dup.begin(),
                   [](unsigned char c) { return std::toupper(c); });
    struct bad_case {
      std::string what;
      std::vector<stream_append> batch;
      std::string names;
    };
    const std::vector<bad_case> cases{
        {"an empty batch", {}, "no streams"},
        {"one stream twice", {{"bad-2", any, {ev({})}}, {"bad-2", any, {ev({})}}}, "bad-2"},
        {"a stream without events", {{"bad-2", any, {ev({})}}, {"bad-3", any, {}}}, "bad-3"},
        {"one event id in two streams",
         {{"bad-2", any, {ev({}, dup)}}, {"bad-3", any, {ev({}, dup)}}},
         dup},
        {"one event id in two letter cases",
         {{"bad-2", any, {ev({}, dup)}}, {"bad-3", any, {ev({}, upper_dup)}}},
         dup},
        {"a bad event type in the second stream",
         {{"bad-2", any, {ev({})}}, {"bad-3", any, {{"no spaces allowed", "{}", "{}", {}}}}},
         "no spaces allowed"},
        {"a bad stream id",
         {{"bad-2", any, {ev({})}}, {std::string("bad-\0", 5), any, {ev({})}}},
         "bad-\\x00"},
        {"metadata not an object", {{"bad-2", any, {{"batch.event", "{}", "[]", {}}}}}, "[]"},
        {"a \\u0000 escape in the data",
         {{"bad-2", any, {ev({})}},
          {"bad-3", any, {{"batch.event", R"({"a": "\u0000"})", "{}", {}}}}},
         "\\u0000"},
    };
    for (const auto& c : cases) {
      CAPTURE(c.what);
      auto r = store.append_batch(c.batch);
      REQUIRE_FALSE(r);
      CHECK_MESSAGE(r.error().code == errc::bad_input, r.error().what());
      CHECK_MESSAGE(r.error().message.find(c.names) != std::string::npos, r.error().message);
    }
    CHECK(ids_of(whole_log(store)) == before);
    CHECK(store.streams().value().size() == 1);
  }

} // TEST_SUITE("pg")
