// Group commit (event_store::append_group): several streams in one transaction, each append with
// its own expected version and its own outcome.
#include <doctest/doctest.h>

#include <libpq-fe.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <stdexcept>
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

// A unix-socket proxy in front of the test server. cut() breaks the client side of every
// connection made so far and leaves the server side open: the client sees its connection
// broken while the server goes on with what it was running, as after a network failure.
class cutting_proxy {
public:
  cutting_proxy(std::string server_socket, const std::string& listen_socket)
      : server_socket_(std::move(server_socket)) {
    listen_ = socket(AF_UNIX, SOCK_STREAM, 0);
    const auto addr = address(listen_socket);
    if (listen_ < 0 || bind(listen_, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0 ||
        listen(listen_, 16) != 0)
      throw std::runtime_error("proxy: cannot listen on " + listen_socket + ": " +
                               std::strerror(errno));
    acceptor_ = std::thread([this] { accept_loop(); });
  }

  ~cutting_proxy() {
    stop_ = true;
    acceptor_.join();
    cut();
    std::lock_guard lock{mutex_};
    for (int fd : server_side_)
      close(fd);
    close(listen_);
  }

  void cut() {
    ++epoch_;
    std::vector<link> old;
    {
      std::lock_guard lock{mutex_};
      old.swap(links_);
    }
    for (auto& l : old) {
      l.pump.join();
      shutdown(l.client, SHUT_RDWR);
      close(l.client);
      std::lock_guard lock{mutex_};
      server_side_.push_back(l.server); // left open: the server must not notice
    }
  }

private:
  struct link {
    int client, server;
    std::thread pump;
  };

  static sockaddr_un address(const std::string& path) {
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
    return a;
  }

  void accept_loop() {
    while (!stop_) {
      pollfd p{listen_, POLLIN, 0};
      if (poll(&p, 1, 20) <= 0)
        continue;
      const int client = accept(listen_, nullptr, nullptr);
      if (client < 0)
        continue;
      const int server = socket(AF_UNIX, SOCK_STREAM, 0);
      const auto addr = address(server_socket_);
      if (connect(server, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
        close(client);
        close(server);
        continue;
      }
      std::lock_guard lock{mutex_};
      links_.push_back({client, server, std::thread([this, client, server, e = epoch_.load()] {
                          pump(client, server, e);
                        })});
    }
  }

  // Copies both ways until either side closes or the proxy cuts this connection's epoch.
  void pump(int client, int server, int epoch) {
    char buf[8192];
    while (epoch_ == epoch) {
      pollfd p[2] = {{client, POLLIN, 0}, {server, POLLIN, 0}};
      if (poll(p, 2, 20) <= 0)
        continue;
      for (int i = 0; i < 2; ++i) {
        if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR)))
          continue;
        const ssize_t n = read(p[i].fd, buf, sizeof buf);
        if (n <= 0)
          return;
        for (ssize_t done = 0; done < n;) {
          const ssize_t w = write(p[1 - i].fd, buf + done, static_cast<std::size_t>(n - done));
          if (w <= 0)
            return;
          done += w;
        }
      }
    }
  }

  std::string server_socket_;
  int listen_ = -1;
  std::atomic<bool> stop_{false};
  std::atomic<int> epoch_{0};
  std::mutex mutex_;
  std::vector<link> links_;
  std::vector<int> server_side_;
  std::thread acceptor_;
};

// The value of `key` in a libpq URL's query ("...?host=/dir&port=5432").
std::string url_param(const std::string& url, const std::string& key) {
  const auto at = url.find(key + "=");
  REQUIRE(at != std::string::npos);
  const auto from = at + key.size() + 1;
  const auto end = url.find('&', from);
  return url.substr(from, end == std::string::npos ? std::string::npos : end - from);
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

TEST_CASE_FIXTURE(mire::test::pg_fixture,
                  "a group resent after a broken connection waits out its own first attempt "
                  "instead of taking it for a conflict") {
  using namespace std::chrono_literals;
  // Commits hang (a synchronous standby that never comes) while the first attempt's rows stay
  // locked; the proxy then breaks the client's connection, and the store resends the group.
  std::unique_ptr<PGconn, decltype(&PQfinish)> admin{PQconnectdb(url.c_str()), &PQfinish};
  REQUIRE(PQstatus(admin.get()) == CONNECTION_OK);
  auto sql = [&](const std::string& q) {
    PGresult* r = PQexec(admin.get(), q.c_str());
    const bool ok = PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK;
    std::string first = ok && PQntuples(r) > 0 ? PQgetvalue(r, 0, 0) : "";
    const std::string failure = PQresultErrorMessage(r);
    PQclear(r);
    REQUIRE_MESSAGE(ok, q, ": ", failure);
    return first;
  };
  auto count_waiting = [&](const std::string& condition) {
    return sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
               "'mire-resend-test' AND " +
               condition);
  };
  struct standby_reset { // also when a check fails
    std::function<void()> reset;
    ~standby_reset() { reset(); }
  } released{[&] {
    sql("ALTER SYSTEM RESET synchronous_standby_names");
    sql("SELECT pg_reload_conf()");
  }};

  const std::string port = url_param(url, "port");
  char dir[] = "/tmp/mire-proxy-XXXXXX";
  REQUIRE(mkdtemp(dir) != nullptr);
  cutting_proxy proxy(url_param(url, "host") + "/.s.PGSQL." + port,
                      std::string(dir) + "/.s.PGSQL." + port);
  // The test server commits asynchronously; this database's new sessions wait for the standby.
  sql("ALTER DATABASE \"" + sql("SELECT current_database()") + "\" SET synchronous_commit = on");
  auto options = store.options();
  options.url = url.substr(0, url.find("host=")) + "host=" + dir + "&port=" + port;
  options.application_name = "mire-resend-test";
  auto victim = mire::event_store::open(options).value();

  sql("ALTER SYSTEM SET synchronous_standby_names = 'mire_test_nobody'");
  sql("SELECT pg_reload_conf()");
  std::this_thread::sleep_for(1s); // the checkpointer publishes the standby setting on reload
  const auto e1 = one(1), e2 = one(2);
  std::vector<stream_append> group{{"rs-1", expected_version::no_stream(), {e1}},
                                   {"rs-2", expected_version::no_stream(), {e2}}};
  auto pending = std::async(std::launch::async, [&] { return victim.append_group(group); });
  auto wait_for = [&](const std::string& condition) {
    for (int i = 0; i < 1000 && count_waiting(condition) != "1"; ++i)
      std::this_thread::sleep_for(10ms);
    return count_waiting(condition) == "1";
  };
  REQUIRE_MESSAGE(wait_for("wait_event = 'SyncRep'"), "the first attempt never reached its commit");
  proxy.cut();
  REQUIRE_MESSAGE(wait_for("wait_event_type = 'Lock'"),
                  "the resend never waited for the first attempt's rows");
  // Well past the group's lock timeout (500 ms): the resend still waits.
  CHECK(pending.wait_for(2500ms) == std::future_status::timeout);
  released.reset();
  released.reset = [] {};
  REQUIRE(pending.wait_for(60s) == std::future_status::ready);
  auto r = pending.get();
  REQUIRE_MESSAGE(r, r.error().what());
  for (std::size_t i = 0; i < r->size(); ++i)
    REQUIRE_MESSAGE((*r)[i], group[i].stream_id, ": ", (*r)[i].error().what());
  CHECK((*r)[0]->duplicate);
  CHECK((*r)[1]->duplicate);
  const auto one_event = [&](const std::string& stream, const event_data& e) {
    auto events = store.read_stream(stream).value();
    REQUIRE(events.size() == 1);
    CHECK(events[0].event_id == e.event_id);
  };
  one_event("rs-1", e1);
  one_event("rs-2", e2);
  std::filesystem::remove_all(dir);
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
