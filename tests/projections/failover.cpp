// Projections across real replica processes (tests/projections/replica.cpp): exactly once while
// the owner is killed with SIGKILL again and again, the zombie that wakes up after its lease was
// taken over, and out-of-order commits while following (DESIGN rules 3, 4, 5). Bounded in time
// and count; every replica is stopped at the end.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "mire/store/lease.hpp"
#include "mire/store/projection.hpp"
#include "mire/store/uuid.hpp"
#include "support/pg_harness.hpp"

extern char** environ;

namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;
using clock_type = std::chrono::steady_clock;

/// Replica processes of one test, their output in files; all stopped when it ends.
class replicas {
public:
  explicit replicas(std::string url, int ttl_ms = 1000) : url_(std::move(url)), ttl_(ttl_ms) {
    char dir[] = "/tmp/mire-replicas-XXXXXX";
    REQUIRE(mkdtemp(dir) != nullptr);
    dir_ = dir;
  }
  ~replicas() {
    for (auto& [id, pid] : pids_)
      kill(pid, SIGCONT), kill(pid, SIGTERM);
    const auto deadline = clock_type::now() + 10s;
    for (auto& [id, pid] : pids_) {
      while (waitpid(pid, nullptr, WNOHANG) == 0 && clock_type::now() < deadline)
        std::this_thread::sleep_for(10ms);
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  /// Starts replica `id`.
  void start(const std::string& id) {
    const std::string out = output_path(id);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, out.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    std::vector<std::string> argv{MIRE_TEST_REPLICA, url_, id, std::to_string(ttl_)};
    std::vector<char*> args;
    for (auto& a : argv)
      args.push_back(a.data());
    args.push_back(nullptr);
    pid_t pid = 0;
    const int rc = posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    REQUIRE_MESSAGE(rc == 0, "cannot start ", args[0]);
    pids_[id] = pid;
  }

  /// SIGKILL, and reaped.
  void kill9(const std::string& id) {
    auto pid = pids_.at(id);
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    pids_.erase(id);
  }
  void signal(const std::string& id, int sig) { kill(pids_.at(id), sig); }
  bool running(const std::string& id) {
    return pids_.count(id) && waitpid(pids_.at(id), nullptr, WNOHANG) == 0;
  }
  std::string output(const std::string& id) const {
    std::ifstream in{output_path(id)};
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }
  std::size_t size() const { return pids_.size(); }

private:
  std::string output_path(const std::string& id) const { return dir_ + "/" + id + ".out"; }
  std::string url_;
  int ttl_;
  std::string dir_;
  std::map<std::string, pid_t> pids_;
};

struct owner_info {
  std::string owner;
  int64_t fence = 0;
};

/// The current holder of the counts projection's lease, if its lease is live.
std::optional<owner_info> owner(mire::event_store& store) {
  auto leases = mire::list_leases(store);
  if (!leases)
    return std::nullopt;
  for (const auto& l : *leases)
    if (l.resource == mire::projection_resource("counts") && l.held)
      return owner_info{std::string(mire::holder_owner(l.owner)), l.fence_token};
  return std::nullopt;
}

template <class F> bool eventually(std::chrono::seconds limit, F done) {
  const auto deadline = clock_type::now() + limit;
  while (clock_type::now() < deadline) {
    if (done())
      return true;
    std::this_thread::sleep_for(50ms);
  }
  return done();
}

/// Appends `n` events to `streams` streams of its own ("acct-<writer>-<k>"), amount = version,
/// exact expected versions. Every `hold_every`-th append is made in a transaction held open for
/// a random while, so commits land out of position order (rule 3). Retries an append the
/// database could not take (unavailable, in doubt) with the same event id. Returns what went
/// wrong for good (empty: all written); it runs on its own thread, where REQUIRE cannot.
/// At most `per_second` appends a second, so that the writing spans what the test does meanwhile.
std::string write(mire::event_store& store, int writer, int n, int streams, int hold_every,
                  double per_second, std::atomic<int>& written) {
  std::mt19937 rng(static_cast<unsigned>(writer) * 7919u + 1);
  const auto start = clock_type::now();
  std::vector<int64_t> version(static_cast<std::size_t>(streams), 0);
  for (int i = 0; i < n; ++i) {
    std::this_thread::sleep_until(start + std::chrono::duration_cast<clock_type::duration>(
                                              std::chrono::duration<double>(i / per_second)));
    const auto k = static_cast<std::size_t>(i % streams);
    const std::string id = fmt::format("acct-{}-{}", writer, k);
    const int64_t v = version[k] + 1;
    mire::event_data e{"acct.deposited", nlohmann::json{{"amount", v}}.dump(), "{}",
                       mire::new_uuid()};
    for (int attempt = 0;; ++attempt) {
      mire::result<mire::append_result> r{mire::error{mire::errc::internal, ""}};
      if (hold_every > 0 && i % hold_every == 0) {
        auto tx = store.begin();
        if (tx) {
          r = tx->append(id, mire::expected_version::exactly(v - 1), {e});
          if (r) {
            std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 30));
            if (auto c = tx->commit(); !c)
              r = c.error();
          }
        } else {
          r = tx.error();
        }
      } else {
        r = store.append(id, mire::expected_version::exactly(v - 1), {e});
      }
      if (r)
        break;
      // A resend after "in doubt" that finds its own event stored is a success (same event id).
      if (r.error().code == mire::errc::version_conflict) {
        auto now = store.stream_version(id);
        if (now && *now == v)
          break;
      }
      if (attempt == 200)
        return fmt::format("append to {} keeps failing: {}", id, r.error().what());
      std::this_thread::sleep_for(50ms);
    }
    version[k] = v;
    ++written;
  }
  return {};
}

/// The read model (counts) equals the log: every stream's count and last version are its
/// version, and its total the sum 1..version. The projection must not have stopped.
void check_exact(mire::event_store& store, int expected_events) {
  auto status = mire::projection_status_of(store, "counts");
  REQUIRE_MESSAGE(status, status.error().what());
  CHECK_MESSAGE(status->state == "running", "projection stopped: ", status->error);
  auto streams = store.streams("acct");
  REQUIRE(streams);
  auto rows = store.transact([](mire::transaction& tx) {
    return tx.execute("SELECT stream_id, n, last_version, total FROM public.counts");
  });
  REQUIRE_MESSAGE(rows, rows.error().what());
  std::map<std::string, std::array<int64_t, 3>> model;
  for (const auto& row : rows->rows)
    model[*row[0]] = {std::stoll(*row[1]), std::stoll(*row[2]), std::stoll(*row[3])};
  int64_t total_events = 0;
  CHECK(model.size() == streams->size());
  for (const auto& s : *streams) {
    total_events += s.version;
    auto it = model.find(s.stream_id);
    REQUIRE_MESSAGE(it != model.end(), "stream missing from the read model: ", s.stream_id);
    CHECK_MESSAGE(it->second[0] == s.version, s.stream_id, ": ", it->second[0], " applied of ",
                  s.version);
    CHECK(it->second[1] == s.version);
    CHECK(it->second[2] == s.version * (s.version + 1) / 2);
  }
  CHECK(total_events == expected_events);
}

/// Waits until the projection has applied everything in the log (bounded).
void wait_caught_up(mire::event_store& store, std::chrono::seconds limit) {
  const bool done = eventually(limit, [&] {
    auto s = mire::projection_status_of(store, "counts");
    return s && (s->state != "running" || (s->lag_events == 0 && s->events_applied > 0));
  });
  REQUIRE_MESSAGE(done, "the projection did not catch up within ", limit.count(), " s");
}

} // namespace

TEST_SUITE("pg") {
  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "exactly once under failover: 3 replicas, 20,000 events from concurrent "
                    "writers, the owner killed with SIGKILL at least 10 times") {
    replicas group{url, 1000};
    int next_id = 0;
    for (; next_id < 3; ++next_id)
      group.start(fmt::format("r-{}", next_id));
    constexpr int writers = 4, per_writer = 5000;
    std::atomic<int> written{0};
    std::vector<std::thread> threads;
    std::vector<std::string> failed(writers);
    for (int w = 0; w < writers; ++w)
      threads.emplace_back([&, w] { failed[w] = write(store, w, per_writer, 50, 40, 400, written); });

    std::mt19937 rng(42);
    int kills = 0;
    const auto deadline = clock_type::now() + 150s;
    while ((kills < 10 || written < writers * per_writer) && clock_type::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100 + rng() % 400));
      auto o = owner(store);
      if (!o || !group.running(o->owner))
        continue; // between owners: wait for the takeover
      group.kill9(o->owner);
      ++kills;
      MESSAGE("killed ", o->owner, " (fence ", o->fence, ") after ", written.load(), " events");
      group.start(fmt::format("r-{}", next_id++));
    }
    for (auto& t : threads)
      t.join();
    for (const auto& f : failed)
      REQUIRE_MESSAGE(f.empty(), f);
    CHECK(kills >= 10);
    wait_caught_up(store, 120s);
    check_exact(store, writers * per_writer);
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "a zombie owner paused past its lease commits nothing when resumed and "
                    "steps down") {
    replicas group{url, 1000};
    group.start("r-a");
    std::atomic<int> written{0};
    std::string failed;
    std::thread writer([&] { failed = write(store, 0, 1500, 20, 10, 300, written); });
    REQUIRE(eventually(20s, [&] { return owner(store).has_value() && written > 100; }));
    group.start("r-b");
    const auto first = *owner(store);
    REQUIRE(first.owner == "r-a");
    group.signal("r-a", SIGSTOP);
    const auto paused_at = clock_type::now();
    // r-b takes over once r-a's lease expires (its open batch, if any, is cut off by the
    // database), and moves the projection on.
    REQUIRE(eventually(30s, [&] {
      auto o = owner(store);
      return o && o->owner == "r-b" && o->fence > first.fence;
    }));
    const auto before = mire::projection_status_of(store, "counts").value().events_applied;
    REQUIRE(eventually(30s, [&] {
      return mire::projection_status_of(store, "counts").value().events_applied > before;
    }));
    std::this_thread::sleep_for(std::max(0ms, std::chrono::duration_cast<std::chrono::milliseconds>(
                                                  paused_at + 2500ms - clock_type::now())));
    group.signal("r-a", SIGCONT);
    // The zombie finds out by its own clock that its lease is gone and steps down; whatever it
    // had in flight is fenced out: no checkpoint is ever written under its fence again.
    bool zombie_wrote = false;
    const auto watch_until = clock_type::now() + 3s;
    while (clock_type::now() < watch_until) {
      auto rows = store.transact([](mire::transaction& tx) {
        return tx.execute("SELECT fence_token FROM mire.projection_generations WHERE name = 'counts'");
      });
      REQUIRE(rows);
      for (const auto& row : rows->rows)
        zombie_wrote = zombie_wrote || std::stoll(*row[0]) == first.fence;
      std::this_thread::sleep_for(10ms);
    }
    CHECK_FALSE(zombie_wrote);
    CHECK(eventually(10s, [&] { return group.output("r-a").find("lost") != std::string::npos; }));
    writer.join();
    REQUIRE_MESSAGE(failed.empty(), failed);
    wait_caught_up(store, 60s);
    const auto o = owner(store);
    REQUIRE(o);
    CHECK(o->owner == "r-b");
    const auto zombie = group.output("r-a");
    CHECK(zombie.find(fmt::format("gained {}", first.fence)) != std::string::npos);
    CHECK(zombie.find("stopped") == std::string::npos);
    check_exact(store, 1500);
  }
}
