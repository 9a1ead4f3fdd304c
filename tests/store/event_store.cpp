// The event store against a real server: append and read, optimistic concurrency (rule 1),
// idempotent appends (rule 2), the global log no reader can skip through (rule 3), bad input
// (rule 10), read_all paging and an unreachable database.
#include <doctest/doctest.h>

#include <libpq-fe.h>
#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
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
using nlohmann::json;

event_data ev(std::string type, json data = json::object(), std::string id = {}) {
  return event_data{std::move(type), data.dump(), "{}", std::move(id)};
}

event_data with_id(std::string type, json data = json::object()) {
  return ev(std::move(type), std::move(data), mire::new_uuid());
}

bool contains(const std::string& text, std::string_view part) {
  return text.find(part) != std::string::npos;
}

// Follows the global log (or a category) from `cp` until a page comes back empty, as a
// projection would; advances `cp`.
std::vector<recorded_event> drain(mire::event_store& store, mire::checkpoint& cp,
                                  std::size_t limit = 100, std::string_view category = {}) {
  std::vector<recorded_event> out;
  for (;;) {
    auto page = store.read_all(cp, limit, category);
    REQUIRE_MESSAGE(page, page.error().what());
    if (page->events.empty()) {
      CHECK(page->next == cp);
      return out;
    }
    CHECK(page->events.size() <= limit);
    CHECK(page->next == page->events.back().checkpoint());
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

std::set<std::string> id_set(const std::vector<recorded_event>& events) {
  std::set<std::string> out;
  for (const auto& e : events)
    out.insert(e.event_id);
  return out;
}

std::string upper(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::toupper(c); });
  return s;
}

// A raw libpq connection beside the store's pool, for what the store's API does not do.
struct raw_connection {
  PGconn* conn;
  explicit raw_connection(const std::string& url) : conn(PQconnectdb(url.c_str())) {
    REQUIRE_MESSAGE(PQstatus(conn) == CONNECTION_OK, PQerrorMessage(conn));
  }
  ~raw_connection() { PQfinish(conn); }
  std::string exec(const std::string& sql) {
    PGresult* r = PQexec(conn, sql.c_str());
    const auto status = PQresultStatus(r);
    std::string value = status == PGRES_TUPLES_OK && PQntuples(r) > 0 ? PQgetvalue(r, 0, 0) : "";
    const std::string message = PQresultErrorMessage(r);
    PQclear(r);
    REQUIRE_MESSAGE((status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK), sql, ": ", message);
    return value;
  }
};

} // namespace

TEST_SUITE("pg") {

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "appended events read back as written, in version order") {
    auto first = store.append(
        "account-1", expected_version::no_stream(),
        {ev("account.opened", {{"owner", "Ada"}}), ev("account.deposited", {{"amount", 100}})});
    REQUIRE_MESSAGE(first, first.error().what());
    CHECK(first->version == 2);
    CHECK_FALSE(first->duplicate);
    CHECK(first->first_position < first->last_position);

    event_data meta = ev("account.deposited", {{"amount", 5}});
    meta.metadata = R"({"correlation_id": "c-1", "user": "bob"})";
    auto second = store.append("account-1", expected_version::exactly(2), {meta});
    REQUIRE_MESSAGE(second, second.error().what());
    CHECK(second->version == 3);
    CHECK(second->first_position > first->last_position);

    auto events = store.read_stream("account-1");
    REQUIRE(events);
    REQUIRE(events->size() == 3);
    for (int i = 0; i < 3; ++i) {
      CHECK((*events)[i].version == i + 1);
      CHECK((*events)[i].stream_id == "account-1");
      CHECK(mire::is_uuid((*events)[i].event_id));
      CHECK((*events)[i].recorded_at.ends_with("Z"));
    }
    CHECK((*events)[0].type == "account.opened");
    CHECK(json::parse((*events)[0].data) == json{{"owner", "Ada"}});
    CHECK(json::parse((*events)[2].metadata) == json::parse(meta.metadata));
    CHECK((*events)[0].global_position == first->first_position);
    CHECK((*events)[2].global_position == second->first_position);

    auto tail = store.read_stream("account-1", 2, 1);
    REQUIRE(tail);
    REQUIRE(tail->size() == 1);
    CHECK(tail->front().version == 2);
    CHECK(store.stream_version("account-1").value() == 3);
    CHECK(store.stream_version("account-2").value() == 0);
    CHECK(store.read_stream("account-2").value().empty());

    auto streams = store.streams("account");
    REQUIRE(streams);
    REQUIRE(streams->size() == 1);
    CHECK(streams->front().stream_id == "account-1");
    CHECK(streams->front().version == 3);
    CHECK(streams->front().last_position == second->last_position);
  }

  TEST_CASE_FIXTURE(
      mire::test::pg_fixture,
      "racing appends with one expected version have exactly one winner per version") {
    constexpr int threads = 8;
    constexpr int rounds = 200;
    const std::string stream = "race-1";
    struct outcome {
      bool won = false;
      int64_t version = 0;
      mire::error err;
    };
    std::vector<std::vector<outcome>> results(threads, std::vector<outcome>(rounds));
    std::barrier start_round(threads);
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
      workers.emplace_back([&, t] {
        for (int r = 0; r < rounds; ++r) {
          // Everyone has finished round r-1 here, so the stream is at version r.
          start_round.arrive_and_wait();
          auto res = store.append(stream, expected_version::exactly(r),
                                  {ev("race.tick", {{"thread", t}, {"round", r}})});
          auto& o = results[t][r];
          o.won = res.has_value();
          if (res)
            o.version = res->version;
          else
            o.err = res.error();
        }
      });
    }
    for (auto& w : workers)
      w.join();

    std::vector<int> winner(rounds, -1);
    int bad_losers = 0;
    for (int r = 0; r < rounds; ++r) {
      int winners = 0;
      for (int t = 0; t < threads; ++t) {
        const auto& o = results[t][r];
        if (o.won) {
          ++winners;
          winner[r] = t;
          CHECK(o.version == r + 1);
          continue;
        }
        const bool right = o.err.code == errc::version_conflict && o.err.stream_id == stream &&
                           o.err.expected == r && o.err.actual == r + 1;
        if (!right && ++bad_losers <= 5)
          FAIL_CHECK("round ", r, " thread ", t, ": ", o.err.what(), " (stream '", o.err.stream_id,
                     "', expected ", o.err.expected, ", actual ", o.err.actual, ")");
      }
      CHECK_MESSAGE(winners == 1, "round ", r, " had ", winners, " winners");
    }
    CHECK(bad_losers == 0);

    auto events = store.read_stream(stream);
    REQUIRE(events);
    REQUIRE(events->size() == static_cast<std::size_t>(rounds));
    for (int r = 0; r < rounds; ++r) {
      const auto& e = (*events)[r];
      CHECK(e.version == r + 1);
      const auto data = json::parse(e.data);
      CHECK(data["round"] == r);
      CHECK(data["thread"] == winner[r]);
    }
    CHECK(store.stream_version(stream).value() == rounds);
  }

  TEST_CASE_FIXTURE(
      mire::test::pg_fixture,
      "an append expecting a version the stream is not at conflicts and stores nothing") {
    REQUIRE(store.append("hole-1", expected_version::no_stream(), {ev("a"), ev("b")}));
    auto before = store.read_stream("hole-1").value();

    auto check_conflict = [&](const char* stream, expected_version expected, int64_t actual,
                              std::vector<event_data> events) {
      auto r = store.append(stream, expected, std::move(events));
      REQUIRE_FALSE(r);
      CHECK(r.error().code == errc::version_conflict);
      CHECK(r.error().stream_id == stream);
      CHECK(r.error().expected == expected.value());
      CHECK(r.error().actual == actual);
      CHECK(contains(r.error().message, stream));
    };
    SUBCASE("ahead of the stream: no hole is made") {
      check_conflict("hole-1", expected_version::exactly(5), 2, {ev("c")});
      check_conflict("hole-1", expected_version::exactly(3), 2, {ev("c"), ev("d")});
    }
    SUBCASE("behind the stream, with several events") {
      check_conflict("hole-1", expected_version::exactly(1), 2, {ev("x"), ev("y"), ev("z")});
    }
    SUBCASE("no stream, when the stream exists") {
      check_conflict("hole-1", expected_version::no_stream(), 2, {ev("x")});
    }
    SUBCASE("an exact version of a stream that does not exist") {
      check_conflict("hole-2", expected_version::exactly(1), 0, {ev("x")});
      CHECK(store.read_stream("hole-2").value().empty());
    }
    auto after = store.read_stream("hole-1").value();
    CHECK(ids_of(after) == ids_of(before));
    CHECK(store.stream_version("hole-1").value() == 2);
    mire::checkpoint cp;
    CHECK(drain(store, cp).size() == 2);
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "racing appends expecting any version all succeed with dense versions") {
    // Losing a race is timing-dependent: run rounds on fresh streams for a few seconds, stopping
    // at the first failure.
    constexpr int threads = 8;
    constexpr int appends = 100;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(4);
    for (int round = 0; round == 0 || std::chrono::steady_clock::now() < deadline; ++round) {
      const std::string stream = fmt::format("anyrace-{}", round);
      CAPTURE(stream);
      std::vector<std::vector<mire::error>> failures(threads);
      std::vector<int64_t> stored(threads, 0);
      std::vector<std::thread> workers;
      for (int t = 0; t < threads; ++t) {
        workers.emplace_back([&, t] {
          for (int i = 0; i < appends; ++i) {
            std::vector<event_data> events;
            for (int k = 0; k <= i % 3; ++k)
              events.push_back(ev("any.tick", {{"thread", t}, {"i", i}, {"k", k}}));
            const auto n = static_cast<int64_t>(events.size());
            auto r = store.append(stream, expected_version::any(), std::move(events));
            if (r)
              stored[t] += n;
            else
              failures[t].push_back(r.error());
          }
        });
      }
      for (auto& w : workers)
        w.join();
      int64_t total = 0;
      bool failed = false;
      for (int t = 0; t < threads; ++t) {
        total += stored[t];
        for (const auto& e : failures[t]) {
          failed = true;
          FAIL_CHECK("thread ", t, ": ", e.what());
        }
      }
      auto events = store.read_stream(stream).value();
      REQUIRE(static_cast<int64_t>(events.size()) == total);
      for (std::size_t i = 0; i < events.size(); ++i)
        CHECK(events[i].version == static_cast<int64_t>(i + 1));
      // The events of one append stay together and in order.
      for (std::size_t i = 0; i < events.size();) {
        const auto first = json::parse(events[i].data);
        const int n = first["i"].get<int>() % 3 + 1;
        for (int k = 0; k < n; ++k) {
          REQUIRE(i + k < events.size());
          const auto d = json::parse(events[i + k].data);
          CHECK(d["thread"] == first["thread"]);
          CHECK(d["i"] == first["i"]);
          CHECK(d["k"] == k);
        }
        i += n;
      }
      if (failed)
        break;
    }
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "an append expecting any version is not starved by busy writers") {
    // Other writers hold uncommitted events at each of the stream's next versions and commit one
    // at a time, each once the store's append waits for it: every attempt of the append loses a
    // race. "any" must still succeed, after them.
    REQUIRE(store.append("busy-1", expected_version::any(), {ev("seed")}));
    constexpr int writers = 24;
    std::atomic<bool> done{false};
    mire::result<mire::append_result> result = mire::error{};
    // Declared before the writers' connections: should a check throw, closing them (rolling
    // back) lets the append finish before its thread is joined.
    std::optional<std::jthread> appender;
    std::vector<std::unique_ptr<raw_connection>> held;
    std::vector<std::string> xids;
    for (int i = 0; i < writers; ++i) {
      held.push_back(std::make_unique<raw_connection>(url));
      xids.push_back(held.back()->exec(
          fmt::format("BEGIN; INSERT INTO mire.events (stream_id, version, event_id, event_type, "
                      "payload) VALUES ('busy-1', {}, gen_random_uuid(), 'busy', '{{}}'); "
                      "SELECT pg_current_xact_id()",
                      i + 2)));
    }
    raw_connection watcher{url};
    appender.emplace([&] {
      result = store.append("busy-1", expected_version::any(), {ev("patient")});
      done = true;
    });
    int commits = 0;
    for (; commits < writers; ++commits) {
      // Wait until the append waits for this writer's transaction (or has finished).
      const auto waits_for_it = fmt::format("SELECT count(*) FROM pg_locks WHERE NOT granted AND "
                                            "locktype = 'transactionid' AND transactionid::text = "
                                            "'{}'",
                                            xids[commits]);
      const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(5);
      while (!done && std::chrono::steady_clock::now() < give_up &&
             watcher.exec(waits_for_it) == "0")
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      if (done)
        break;
      held[commits]->exec("COMMIT");
    }
    for (int i = commits; i < writers; ++i)
      held[i]->exec("COMMIT");
    appender->join();
    CHECK_MESSAGE(result, "after ", commits,
                  " commits of other writers: ", result ? "" : result.error().what());
    if (result)
      CHECK(result->version == writers + 2);
    auto events = store.read_stream("busy-1").value();
    for (std::size_t i = 0; i < events.size(); ++i)
      CHECK(events[i].version == static_cast<int64_t>(i + 1));
    const auto patient = std::count_if(events.begin(), events.end(),
                                       [](const auto& e) { return e.type == "patient"; });
    CHECK(patient == (result ? 1 : 0));
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "a retried append with the same event ids returns the original positions") {
    struct mode {
      const char* name;
      expected_version expected;
      int64_t existing; // events in the stream before the append
    };
    for (const auto& m :
         {mode{"any", expected_version::any(), 1}, mode{"exact", expected_version::exactly(2), 2},
          mode{"nostream", expected_version::no_stream(), 0}}) {
      CAPTURE(m.name);
      const std::string stream = fmt::format("idem-{}", m.name);
      for (int64_t i = 0; i < m.existing; ++i)
        REQUIRE(store.append(stream, expected_version::any(), {ev("before")}));
      const std::vector<event_data> events{with_id("e", {{"n", 1}}), with_id("e", {{"n", 2}}),
                                           with_id("e", {{"n", 3}})};
      auto first = store.append(stream, m.expected, events);
      REQUIRE_MESSAGE(first, first.error().what());
      CHECK_FALSE(first->duplicate);
      CHECK(first->version == m.existing + 3);

      // The retry comes late: another writer has moved the stream on meanwhile.
      REQUIRE(store.append(stream, expected_version::any(), {ev("after")}));
      for (int retry = 0; retry < 2; ++retry) {
        auto again = store.append(stream, m.expected, events);
        REQUIRE_MESSAGE(again, again.error().what());
        CHECK(again->duplicate);
        CHECK(again->version == first->version);
        CHECK(again->first_position == first->first_position);
        CHECK(again->last_position == first->last_position);
      }
      auto stored = store.read_stream(stream).value();
      CHECK(static_cast<int64_t>(stored.size()) == m.existing + 4);
      std::map<std::string, int> seen;
      for (const auto& e : stored)
        ++seen[e.event_id];
      for (const auto& e : events)
        CHECK(seen[e.event_id] == 1);
    }
    mire::checkpoint cp;
    CHECK(drain(store, cp).size() == 1 + 4 + 2 + 4 + 0 + 4);
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "an append whose connection broke stays in doubt when the resend cannot "
                    "connect") {
    // Raw connections: one holds (doubt-1, 1) in the unique index so that the append waits on it
    // mid-statement; the other kills the append's backend and closes the database to newcomers.
    // The admin is on another database: Postgres cannot close the one it is connected to.
    auto raw = [&](const char* other_db = nullptr) {
      const char* keys[] = {"dbname", other_db ? "dbname" : nullptr, nullptr};
      const char* values[] = {url.c_str(), other_db, nullptr};
      PGconn* c = PQconnectdbParams(keys, values, /*expand_dbname=*/1);
      REQUIRE(PQstatus(c) == CONNECTION_OK);
      return std::unique_ptr<PGconn, decltype(&PQfinish)>{c, &PQfinish};
    };
    auto exec = [](PGconn* c, const std::string& q) {
      PGresult* r = PQexec(c, q.c_str());
      const auto status = PQresultStatus(r);
      std::string first = PQntuples(r) > 0 ? PQgetvalue(r, 0, 0) : "";
      const std::string failure = PQresultErrorMessage(r);
      PQclear(r);
      REQUIRE_MESSAGE((status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK), q, ": ", failure);
      return first;
    };
    auto blocker = raw(), admin = raw("postgres");
    exec(blocker.get(), "BEGIN");
    exec(blocker.get(), "INSERT INTO mire.events (stream_id, version, event_id, event_type, "
                        "payload) VALUES ('doubt-1', 1, gen_random_uuid(), 'x', '{}')");
    auto options = store.options();
    options.application_name = "mire-doubt-test";
    auto victim = mire::event_store::open(options).value();
    const auto e = with_id("e");
    mire::result<mire::append_result> r = mire::error{errc::internal, "not run"};
    std::thread appender([&] { r = victim.append("doubt-1", expected_version::no_stream(), {e}); });
    std::string waiting = "0";
    for (int i = 0; i < 200 && waiting == "0"; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      waiting = exec(admin.get(), "SELECT count(*) FROM pg_stat_activity WHERE application_name "
                                  "= 'mire-doubt-test' AND wait_event_type = 'Lock'");
    }
    CHECK(waiting == "1");
    const auto db = exec(blocker.get(), "SELECT current_database()");
    exec(admin.get(), "ALTER DATABASE \"" + db + "\" ALLOW_CONNECTIONS false");
    exec(admin.get(), "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                      "application_name = 'mire-doubt-test'");
    appender.join();
    exec(admin.get(), "ALTER DATABASE \"" + db + "\" ALLOW_CONNECTIONS true");
    exec(blocker.get(), "ROLLBACK");
    REQUIRE_FALSE(r);
    CHECK(r.error().code == errc::commit_in_doubt);
    CHECK(contains(r.error().message, e.event_id)); // what to resend
    CHECK(contains(r.error().message, "the resend failed too"));
    // It had not committed: resent now, it is stored once.
    auto again = victim.append("doubt-1", expected_version::no_stream(), {e});
    REQUIRE_MESSAGE(again, again.error().what());
    CHECK_FALSE(again->duplicate);
    CHECK(store.stream_version("doubt-1").value() == 1);
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "a retry whose event ids only partly match the stored append is refused") {
    const auto e1 = with_id("e"), e2 = with_id("e"), e3 = with_id("e");
    REQUIRE(store.append("part-1", expected_version::no_stream(), {e1, e2}));
    const auto before = ids_of(store.read_stream("part-1").value());

    auto refused = [&](std::string_view stream, expected_version expected,
                       std::vector<event_data> events, const std::string& names) {
      auto r = store.append(stream, expected, std::move(events));
      REQUIRE_FALSE(r);
      CHECK(r.error().code == errc::bad_input);
      CHECK_MESSAGE(contains(r.error().message, names), r.error().message);
    };
    refused("part-1", expected_version::no_stream(), {e1, e3}, e1.event_id);
    refused("part-1", expected_version::any(), {e1, e3}, e1.event_id);
    refused("part-1", expected_version::any(), {e3, e2}, e2.event_id);
    refused("part-1", expected_version::exactly(2), {e3, e1}, e1.event_id);
    refused("part-1", expected_version::any(), {e2, e1}, e1.event_id); // reordered
    // The same events sent to another stream are not a retry of this append.
    refused("part-2", expected_version::any(), {e1, e2}, "part-1");

    CHECK(ids_of(store.read_stream("part-1").value()) == before);
    CHECK(store.read_stream("part-2").value().empty());
    mire::checkpoint cp;
    CHECK(drain(store, cp).size() == 2);
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "a retry spelling its event ids in upper case is still a duplicate") {
    // is_uuid accepts upper-case hex and Postgres stores uuids in lower case.
    const auto e1 = ev("e", {{"n", 1}}, upper(mire::new_uuid()));
    const auto e2 = ev("e", {{"n", 2}}, upper(mire::new_uuid()));
    auto first = store.append("upper-1", expected_version::no_stream(), {e1, e2});
    REQUIRE_MESSAGE(first, first.error().what());
    auto again = store.append("upper-1", expected_version::no_stream(), {e1, e2});
    REQUIRE_MESSAGE(again, again.error().what());
    CHECK(again->duplicate);
    CHECK(again->version == first->version);
    CHECK(again->first_position == first->first_position);
    CHECK(store.read_stream("upper-1").value().size() == 2);
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "one event id given twice in different letter case is bad input") {
    const auto id = mire::new_uuid();
    auto r = store.append("case-1", expected_version::any(),
                          {ev("e", json::object(), id), ev("e", json::object(), upper(id))});
    REQUIRE_FALSE(r);
    CHECK_MESSAGE(r.error().code == errc::bad_input, r.error().what());
    CHECK(store.read_stream("case-1").value().empty());
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "a reader of the global log waits for a transaction that commits late") {
    const auto seed_event = with_id("seed");
    auto seed = store.append("log-0", expected_version::any(), {seed_event});
    REQUIRE(seed);
    mire::checkpoint cp;
    auto seen = drain(store, cp);
    REQUIRE(seen.size() == 1);

    // The held transaction draws its global position first...
    auto tx = store.begin();
    REQUIRE_MESSAGE(tx, tx.error().what());
    const auto held_event = with_id("held");
    auto held = tx->append("log-1", expected_version::any(), {held_event});
    REQUIRE_MESSAGE(held, held.error().what());
    // ...and a later append gets a higher one and commits first.
    const auto later_event = with_id("later");
    auto later = store.append("log-2", expected_version::any(), {later_event});
    REQUIRE_MESSAGE(later, later.error().what());
    REQUIRE(held->first_position < later->first_position);
    // The later event is committed and visible to a plain stream read.
    REQUIRE(store.read_stream("log-2").value().size() == 1);

    // A reader trusting "position > checkpoint" would deliver the later event now and skip the
    // held one forever once it commits. This one must wait.
    for (int poll = 0; poll < 3; ++poll) {
      auto waiting = drain(store, cp, 1);
      CHECK_MESSAGE(waiting.empty(), "delivered ", waiting.size(),
                    " event(s) while an earlier transaction was open, first: ",
                    waiting.empty() ? "" : waiting.front().type);
      seen.insert(seen.end(), waiting.begin(), waiting.end());
    }
    // A fresh reader from the start stops before the open transaction too.
    mire::checkpoint fresh;
    CHECK(ids_of(drain(store, fresh)) == ids_of({seen.front()}));

    REQUIRE(tx->commit());
    auto rest = drain(store, cp, 1);
    seen.insert(seen.end(), rest.begin(), rest.end());
    std::map<std::string, int> count;
    for (const auto& e : seen)
      ++count[e.event_id];
    CHECK(seen.size() == 3);
    CHECK(count[seed_event.event_id] == 1);
    CHECK(count[held_event.event_id] == 1);
    CHECK(count[later_event.event_id] == 1);
    // In checkpoint order, and nothing more to come.
    for (std::size_t i = 1; i < seen.size(); ++i)
      CHECK(seen[i - 1].checkpoint() < seen[i].checkpoint());
    CHECK(drain(store, cp).empty());
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "a category reader waits for a transaction held open on another connection") {
    REQUIRE(store.append("acct-0", expected_version::any(), {with_id("seed")}));
    mire::checkpoint cp;
    REQUIRE(drain(store, cp, 10, "acct").size() == 1);
    mire::checkpoint all_cp = cp;

    // A writer outside the store, in plain SQL, holding its transaction open.
    raw_connection raw{url};
    const auto held_id = mire::new_uuid();
    raw.exec("BEGIN");
    const auto held_position = std::stoll(raw.exec(fmt::format(
        "INSERT INTO mire.events (stream_id, version, event_id, event_type, payload) "
        "VALUES ('acct-held', 1, '{}', 'held', '{{\"n\": 1}}') RETURNING global_position",
        held_id)));
    auto later = store.append("acct-later", expected_version::any(), {with_id("later")});
    REQUIRE(later);
    REQUIRE(store.append("other-1", expected_version::any(), {with_id("other")}));
    REQUIRE(held_position < later->first_position);

    CHECK(drain(store, cp, 1, "acct").empty());
    CHECK(drain(store, all_cp, 1).empty());
    raw.exec("COMMIT");

    auto acct = drain(store, cp, 1, "acct");
    REQUIRE(acct.size() == 2);
    CHECK(acct[0].event_id == held_id);
    CHECK(acct[0].stream_id == "acct-held");
    CHECK(acct[1].stream_id == "acct-later");
    CHECK(drain(store, cp, 1, "acct").empty());
    auto all = drain(store, all_cp, 1);
    CHECK(all.size() == 3); // held, later, other: each once
    CHECK(id_set(all).size() == 3);
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "reading the log page by page sees every event exactly once") {
    // 300 events over 12 streams in 3 categories, appended in interleaved single and multi-event
    // appends and batches.
    std::map<std::string, int> expected_per_category;
    std::set<std::string> written;
    int n = 0;
    for (int round = 0; n < 300; ++round) {
      const std::string category = round % 3 == 0 ? "alpha" : round % 3 == 1 ? "beta" : "gamma";
      const std::string stream = fmt::format("{}-{}", category, round % 4);
      std::vector<event_data> events;
      for (int k = 0; k <= round % 5 && n < 300; ++k, ++n)
        events.push_back(with_id("paged", {{"n", n}}));
      for (const auto& e : events)
        written.insert(e.event_id);
      expected_per_category[category] += static_cast<int>(events.size());
      if (round % 7 == 0) {
        REQUIRE(store.append_batch({{stream, expected_version::any(), events}}));
      } else {
        REQUIRE(store.append(stream, expected_version::any(), events));
      }
    }
    mire::checkpoint cp;
    auto all = drain(store, cp, 7);
    CHECK(all.size() == 300);
    CHECK(id_set(all) == written);
    for (std::size_t i = 1; i < all.size(); ++i)
      CHECK(all[i - 1].checkpoint() < all[i].checkpoint());

    // Paging with the last event's own checkpoint works the same as page.next.
    auto first = store.read_all(mire::checkpoint::start(), 10).value();
    REQUIRE(first.events.size() == 10);
    auto second = store.read_all(first.events.back().checkpoint(), 10).value();
    REQUIRE(second.events.size() == 10);
    CHECK(second.events.front().event_id == all[10].event_id);

    for (const auto& [category, count] : expected_per_category) {
      CAPTURE(category);
      mire::checkpoint c;
      auto events = drain(store, c, 5, category);
      CHECK(static_cast<int>(events.size()) == count);
      CHECK(id_set(events).size() == events.size());
      for (const auto& e : events)
        CHECK(mire::category_of(e.stream_id) == category);
    }
    mire::checkpoint none;
    CHECK(drain(store, none, 5, "alph").empty());
    CHECK(store.streams("beta").value().size() == 4);
    CHECK(store.streams().value().size() == 12);
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "the log's head stops below a transaction still open: reading after it "
                    "skips nothing that commits later") {
    CHECK(store.log_head().value() == mire::checkpoint::start()); // an empty log
    REQUIRE(store.append("acct-1", expected_version::no_stream(), {ev("first")}));
    raw_connection held{url};
    held.exec("BEGIN; INSERT INTO mire.events (stream_id, version, event_id, event_type, payload) "
              "VALUES ('acct-2', 1, gen_random_uuid(), 'late', '{}')");
    REQUIRE(store.append("acct-3", expected_version::no_stream(), {ev("after")}));
    // "after" committed, but the open transaction is older: the head is still "first".
    const auto head = store.log_head().value();
    CHECK(head == store.read_stream("acct-1").value().at(0).checkpoint());
    held.exec("COMMIT");
    auto page = store.read_all(head, 10).value();
    REQUIRE(page.events.size() == 2);
    CHECK(page.events[0].type == "late");
    CHECK(page.events[1].type == "after");
    CHECK(store.log_head().value() == page.events[1].checkpoint());
  }

  TEST_CASE_FIXTURE(
      mire::test::pg_fixture,
      "hostile strings in stream ids and data are stored verbatim and read back equal") {
    const std::vector<std::string> hostile{
        "acct-o'brien",
        "acct-\"; DROP TABLE mire.events; --",
        "acct-'); DELETE FROM mire.events; --",
        "acct-back\\slash\\",
        "acct-\\N",
        "acct-{\"a\",\"b\"}",
        "acct-NULL",
        "acct-%s%n$1",
        "acct-ünïcødé-😀",
        "acct- spaced out ",
    };
    std::map<std::string, std::pair<json, json>> written;
    for (const auto& id : hostile) {
      json data{{"text", id},
                {"sql", "'; DROP TABLE mire.snapshots; --"},
                {"quotes", "\"double\" and 'single' and `back`"},
                {"backslashes", "\\ \\\\ \\N \\t"},
                {"escapes", "tab\there\nnewline é \u00e9"},
                {"array_syntax", "{\"x\",NULL}"},
                {"nested", {{"k", {1, "two", nullptr}}}}};
      json meta{{"who", id}, {"why", "\\\"'"}};
      event_data e{"hostile.event", data.dump(), meta.dump(), mire::new_uuid()};
      auto r = store.append(id, expected_version::no_stream(), {e});
      REQUIRE_MESSAGE(r, id, ": ", r.error().what());
      written[id] = {data, meta};
    }
    for (const auto& id : hostile) {
      CAPTURE(id);
      auto events = store.read_stream(id);
      REQUIRE(events);
      REQUIRE(events->size() == 1);
      CHECK(events->front().stream_id == id);
      CHECK(json::parse(events->front().data) == written[id].first);
      CHECK(json::parse(events->front().metadata) == written[id].second);
      CHECK(store.stream_version(id).value() == 1);
    }
    mire::checkpoint cp;
    auto all = drain(store, cp, 3, "acct");
    REQUIRE(all.size() == hostile.size());
    std::set<std::string> ids;
    for (const auto& e : all)
      ids.insert(e.stream_id);
    CHECK(ids == std::set<std::string>(hostile.begin(), hostile.end()));
    auto streams = store.streams("acct").value();
    CHECK(streams.size() == hostile.size());
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "bad input is refused with a message naming the value and corrupts nothing") {
    // Events stored before, which must come through unchanged.
    REQUIRE(
        store.append("acct-1", expected_version::no_stream(),
                     {ev("acct.opened", {{"owner", "Ada"}}), ev("acct.deposited", {{"n", 1}})}));
    REQUIRE(store.append("acct-2", expected_version::no_stream(), {ev("acct.opened")}));
    REQUIRE(store.save_snapshot({"acct-1", 2, 1, R"({"balance": 1})"}));
    mire::checkpoint before_cp;
    const auto before = drain(store, before_cp);
    REQUIRE(before.size() == 3);
    const auto before_streams = store.streams().value();

    auto small_opts = store.options();
    small_opts.max_event_bytes = 64;
    auto small = mire::event_store::open(small_opts);
    REQUIRE(small);

    const auto good = [] { return std::vector<event_data>{ev("acct.deposited", {{"n", 2}})}; };
    const auto with_data = [](std::string data) {
      return std::vector<event_data>{event_data{"acct.deposited", std::move(data), "{}", {}}};
    };
    const auto with_meta = [](std::string meta) {
      return std::vector<event_data>{event_data{"acct.deposited", "{}", std::move(meta), {}}};
    };
    const auto with_type = [](std::string type) {
      return std::vector<event_data>{event_data{std::move(type), "{}", "{}", {}}};
    };
    const auto with_event_id = [](std::string id) {
      return std::vector<event_data>{event_data{"acct.deposited", "{}", "{}", std::move(id)}};
    };
    const auto any = expected_version::any();
    const std::string big(100, 'x');
    const std::string big_json = json{{"blob", big}}.dump();
    const auto dup = mire::new_uuid();

    struct bad_case {
      std::string what;
      std::function<mire::error()> run;
      std::string names; // must appear in the message
    };
    // A call that succeeds fails its case below (and does not stop the others).
    auto err = [](auto r) {
      if (r)
        return mire::error{errc::internal, "the call succeeded"};
      return r.error();
    };
    std::vector<bad_case> cases{
        {"empty stream id", [&] { return err(store.append("", any, good())); }, "empty"},
        {"control character in stream id",
         [&] { return err(store.append("acct-\x01x", any, good())); }, "acct-\\x01x"},
        {"NUL byte inside the stream id",
         [&] { return err(store.append(std::string("acct-1\0evil", 11), any, good())); },
         "acct-1\\x00evil"},
        {"newline in stream id", [&] { return err(store.append("acct-1\nx", any, good())); },
         "acct-1\\x0ax"},
        {"invalid UTF-8 in stream id",
         [&] { return err(store.append("acct-\xff\xfe", any, good())); }, "acct-\\xff\\xfe"},
        {"overlong UTF-8 in stream id",
         [&] { return err(store.append("acct-\xc0\xaf", any, good())); }, "acct-\\xc0"},
        {"overlong 3-byte UTF-8 in stream id",
         [&] { return err(store.append("acct-\xe0\x80\xaf", any, good())); }, "acct-\\xe0"},
        {"UTF-16 surrogate in stream id",
         [&] { return err(store.append("acct-\xed\xa0\x80", any, good())); }, "acct-\\xed"},
        {"code point beyond U+10FFFF in stream id",
         [&] { return err(store.append("acct-\xf4\x90\x80\x80", any, good())); }, "acct-\\xf4"},
        {"JSON nested deeper than the server parses",
         [&] {
           return err(store.append("acct-1", any,
                                   with_data(std::string(100000, '[') + std::string(100000, ']'))));
         },
         "acct-1"},
        {"too long stream id",
         [&] { return err(store.append("acct-" + std::string(600, 'y'), any, good())); }, "605"},
        {"malformed JSON data",
         [&] { return err(store.append("acct-1", any, with_data("{\"n\": 1,"))); }, "{\"n\": 1,"},
        {"empty data", [&] { return err(store.append("acct-1", any, with_data(""))); },
         "not valid JSON"},
        {"NUL byte inside the JSON data",
         [&] {
           return err(store.append("acct-1", any, with_data(std::string("{\"a\":\"x\0y\"}", 11))));
         },
         "\\x00"},
        {"a \\u0000 escape in metadata, named with its stream and event",
         [&] { return err(store.append("acct-1", any, with_meta(R"({"a": "\u0000"})"))); },
         "append to 'acct-1': metadata of event 1"},
        {"trailing garbage after JSON data",
         [&] { return err(store.append("acct-1", any, with_data("{} DROP TABLE"))); },
         "{} DROP TABLE"},
        {"metadata that is an array",
         [&] { return err(store.append("acct-1", any, with_meta("[1, 2]"))); }, "[1, 2]"},
        {"metadata that is a string",
         [&] { return err(store.append("acct-1", any, with_meta("\"meta\""))); }, "\"meta\""},
        {"metadata that is not JSON",
         [&] { return err(store.append("acct-1", any, with_meta("{'a': 1}"))); }, "{'a': 1}"},
        {"empty event type", [&] { return err(store.append("acct-1", any, with_type(""))); },
         "event type ''"},
        {"event type with a space",
         [&] { return err(store.append("acct-1", any, with_type("acct deposited"))); },
         "acct deposited"},
        {"event type with SQL",
         [&] { return err(store.append("acct-1", any, with_type("x'; DROP TABLE t; --"))); },
         "x'; DROP TABLE t; --"},
        {"event type with a NUL byte",
         [&] { return err(store.append("acct-1", any, with_type(std::string("a\0b", 3)))); },
         "a\\x00b"},
        {"too long event type",
         [&] { return err(store.append("acct-1", any, with_type(std::string(300, 't')))); }, "ttt"},
        {"event id not a uuid",
         [&] { return err(store.append("acct-1", any, with_event_id("not-a-uuid"))); },
         "not-a-uuid"},
        {"event id of the wrong shape",
         [&] {
           return err(
               store.append("acct-1", any, with_event_id("1b4e28ba2fa141d2883f0016d3cca427")));
         },
         "1b4e28ba2fa141d2883f0016d3cca427"},
        {"event id with a non-hex digit",
         [&] {
           return err(
               store.append("acct-1", any, with_event_id("1b4e28ba-2fa1-41d2-883f-0016d3cca42g")));
         },
         "1b4e28ba-2fa1-41d2-883f-0016d3cca42g"},
        {"same event id twice in one append",
         [&] {
           return err(store.append("acct-1", any,
                                   {ev("a", json::object(), dup), ev("b", json::object(), dup)}));
         },
         dup},
        {"no events", [&] { return err(store.append("acct-1", any, {})); }, "acct-1"},
        {"oversized data", [&] { return err(small->append("acct-1", any, with_data(big_json))); },
         std::to_string(big_json.size())},
        {"oversized metadata",
         [&] { return err(small->append("acct-1", any, with_meta(big_json))); },
         std::to_string(big_json.size())},
        {"JSON data with a \\u0000 escape",
         [&] { return err(store.append("acct-1", any, with_data(R"({"a": "x\u0000y"})"))); },
         "\\u0000"},
        {"JSON metadata with a \\u0000 escape",
         [&] { return err(store.append("acct-1", any, with_meta(R"({"a": "\u0000"})"))); },
         "\\u0000"},
        {"bad stream id to read_stream",
         [&] { return err(store.read_stream(std::string("acct-\0", 6))); }, "acct-\\x00"},
        {"bad stream id to stream_version", [&] { return err(store.stream_version("acct-\x7f")); },
         "acct-\\x7f"},
        {"bad stream id to load_snapshot", [&] { return err(store.load_snapshot("\xff")); },
         "\\xff"},
        {"snapshot state that is not JSON",
         [&] {
           return err(store.save_snapshot({"acct-1", 3, 1, "{broken"}));
         },
         "{broken"},
        {"snapshot of version 0",
         [&] {
           return err(store.save_snapshot({"acct-1", 0, 1, "{}"}));
         },
         "version 0"},
        {"snapshot state with a \\u0000 escape",
         [&] {
           return err(store.save_snapshot({"acct-1", 3, 1, R"({"s": "\u0000"})"}));
         },
         "\\u0000"},
        {"read_all with limit 0", [&] { return err(store.read_all({}, 0)); }, "limit"},
        {"read_all with a NUL byte in the category",
         [&] { return err(store.read_all({}, 10, std::string("acct\0x", 6))); }, "acct\\x00x"},
        {"read_all with invalid UTF-8 in the category",
         [&] { return err(store.read_all({}, 10, "acct\xff")); }, "acct\\xff"},
        {"streams with a NUL byte in the category",
         [&] { return err(store.streams(std::string("acct\0x", 6))); }, "acct\\x00x"},
        {"transaction append with a bad stream id",
         [&] {
           auto tx = store.begin();
           REQUIRE(tx);
           REQUIRE(tx->append("acct-1", any, good()));
           auto e = err(tx->append("acct-\x02", any, good()));
           CHECK_FALSE(tx->active());
           CHECK_FALSE(tx->commit());
           return e;
         },
         "acct-\\x02"},
        {"batch with a bad stream id",
         [&] {
           return err(store.append_batch(
               {{"acct-1", any, good()}, {"acct-3", any, good()}, {"acct-\x03", any, good()}}));
         },
         "acct-\\x03"},
        {"batch with malformed data",
         [&] {
           return err(
               store.append_batch({{"acct-1", any, good()}, {"acct-3", any, with_data("[")}}));
         },
         "'['"},
    };
    for (const auto& c : cases) {
      CAPTURE(c.what);
      const auto e = c.run();
      CHECK_MESSAGE(e.code == errc::bad_input, e.what());
      CHECK_MESSAGE(contains(e.message, c.names), "message '", e.message, "' does not name '",
                    c.names, "'");
    }

    mire::checkpoint after_cp;
    const auto after = drain(store, after_cp);
    REQUIRE(after.size() == before.size());
    for (std::size_t i = 0; i < before.size(); ++i) {
      CHECK(after[i].event_id == before[i].event_id);
      CHECK(after[i].stream_id == before[i].stream_id);
      CHECK(after[i].version == before[i].version);
      CHECK(after[i].global_position == before[i].global_position);
      CHECK(after[i].type == before[i].type);
      CHECK(after[i].data == before[i].data);
      CHECK(after[i].metadata == before[i].metadata);
    }
    const auto after_streams = store.streams().value();
    REQUIRE(after_streams.size() == before_streams.size());
    for (std::size_t i = 0; i < before_streams.size(); ++i) {
      CHECK(after_streams[i].stream_id == before_streams[i].stream_id);
      CHECK(after_streams[i].version == before_streams[i].version);
    }
    CHECK(ids_of(store.read_stream("acct-1").value()) ==
          std::vector<std::string>{before[0].event_id, before[1].event_id});
    CHECK(store.read_stream("acct-3").value().empty());
    auto snap = store.load_snapshot("acct-1").value();
    REQUIRE(snap);
    CHECK(snap->version == 2);
    CHECK(json::parse(snap->state) == json{{"balance", 1}});
    // The store still works after all of it.
    CHECK(store.append("acct-1", expected_version::exactly(2), good()));
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "stream ids travel as UTF-8 whatever client encoding the environment asks") {
    auto options = store.options();
    options.pool_size = 1;
    setenv("PGCLIENTENCODING", "LATIN1", 1);
    auto latin = mire::event_store::open(options);
    unsetenv("PGCLIENTENCODING");
    REQUIRE_MESSAGE(latin, latin.error().what());
    REQUIRE(latin->append("caf\u00e9-1", expected_version::no_stream(), {with_id("e")}));
    auto streams = store.streams().value();
    REQUIRE(streams.size() == 1);
    CHECK(streams[0].stream_id == "caf\u00e9-1");
    CHECK(store.stream_version("caf\u00e9-1").value() == 1);
  }

} // TEST_SUITE("pg")

TEST_SUITE("store") {

  TEST_CASE("opening a store where no server listens is unavailable within seconds") {
    namespace fs = std::filesystem;
    char dir[] = "/tmp/mire-nosrv-XXXXXX";
    REQUIRE(mkdtemp(dir) != nullptr);
    const std::vector<std::string> urls{
        fmt::format("postgresql://postgres@/postgres?host={}&port=5432", dir),
        "postgresql://postgres@127.0.0.1:1/postgres",
    };
    for (const auto& u : urls) {
      CAPTURE(u);
      const auto started = std::chrono::steady_clock::now();
      auto store = mire::event_store::open({.url = u, .connect_timeout_seconds = 2});
      const auto took = std::chrono::steady_clock::now() - started;
      REQUIRE_FALSE(store);
      CHECK_MESSAGE(store.error().code == errc::unavailable, store.error().what());
      CHECK(took < std::chrono::seconds(5));
    }
    std::error_code ec;
    fs::remove_all(dir, ec);
  }

} // TEST_SUITE("store")
