// `mire bench projections`: projections beside raw libpq on the same server, in the same run.
//
//   catch_up            events/s of a trivial projection (a handler that does nothing: the cost
//                       is mire's reading, batching and fenced checkpoint commits) over the
//                       whole log (200,000 events) through a projection runner; baseline: raw
//                       libpq reading the same rows in the same order, 1,000-row keyset pages.
//                       Rounds alternate, the median of each side is kept.
//   live_lag_p50/p99    from an append's return to its event reaching the handler, while one
//                       writer appends at a steady 1,000 events/s and the runner follows;
//                       baseline: a raw follower (LISTEN + SELECT of the rows after the last
//                       position seen: the naive reader that rule 3 warns about) measured the
//                       same way. live_lag_p99_budget compares mire's p99 with 100 ms.
//   takeover            ms from SIGKILL of the replica driving a projection to another replica
//                       holding its lease (replicas are processes: copies of this `mire`);
//                       baseline: the lease ttl. The target is ttl + one renew interval.
//
// Everything happens in a fresh schema (mire_bench_projections_<pid>), dropped at the end; the
// read models need no tables.
#include "bench.hpp"
#include "common.hpp"

#include <libpq-fe.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <caf/all.hpp>
#include <fmt/format.h>

#include "mire/actors/errors.hpp"
#include "mire/actors/projection.hpp"
#include "mire/store/lease.hpp"
#include "mire/store/projection.hpp"
#include "mire/store/uuid.hpp"

extern char** environ;

namespace mire::bench {

namespace {

using namespace detail;
using namespace std::chrono_literals;

constexpr auto lease_ttl = 2000ms;
constexpr double live_rate = 1000; // events/s
constexpr double lag_budget_ms = 100;

struct sizes {
  int64_t events;      // in the log before catch-up
  int rounds;          // catch-up rounds of each side
  int64_t live_events; // per live phase
  int takeovers;
};

sizes sizes_for(double scale) {
  auto scaled = [&](double n, int64_t min) {
    return std::max<int64_t>(min, static_cast<int64_t>(std::llround(n * scale)));
  };
  return {scaled(200000, 2000), scale >= 0.5 ? 3 : 1, scaled(5000, 200), scale >= 0.5 ? 3 : 1};
}

/// A projection whose handler only calls `seen` (if any): what is measured is mire's own work.
projection_definition trivial(std::string name,
                              std::function<void(const recorded_event&)> seen = {}) {
  projection_definition d;
  d.name = std::move(name);
  d.batch_size = 1000;
  d.handler = [seen](transaction&, const recorded_event& e,
                     const projection_context&) -> result<void> {
    if (seen)
      seen(e);
    return {};
  };
  return d;
}

store_options options_for(const options& o, const std::string& schema) {
  store_options so;
  so.url = o.url;
  so.schema = schema;
  so.pool_size = 4;
  so.application_name = "mire-bench";
  return so;
}

class projections_bench {
public:
  projections_bench(const options& o, std::string schema, std::string self_exe,
                    std::vector<figure>& out)
      : o_(o), size_(sizes_for(o.scale)), schema_(std::move(schema)), q_(quote_ident(schema_)),
        self_(std::move(self_exe)),
        store_(must(event_store::open(options_for(o, schema_)), "opening the store")),
        figures_(out) {
    must(store_.migrate(), "migrating the bench schema");
    actors::add_mire_types(cfg_);
    system_ = std::make_unique<caf::actor_system>(cfg_);
  }

  void run() {
    load();
    progress(fmt::format("{} rounds: a trivial projection catching up over {} events, and a raw "
                         "sequential read of them",
                         size_.rounds, size_.events));
    std::vector<double> mire, raw;
    for (int r = 0; r < size_.rounds; ++r) {
      if (r % 2 == 0) {
        raw.push_back(raw_read());
        mire.push_back(catch_up(r));
      } else {
        mire.push_back(catch_up(r));
        raw.push_back(raw_read());
      }
    }
    figures_.push_back(make_figure(
        "catch_up", median(mire), median(raw), "events/s", false, 0.5,
        fmt::format("a trivial projection through a runner over {} events, batches of 1000; "
                    "baseline: raw libpq keyset pages of 1000 in log order",
                    size_.events)));

    progress(fmt::format("live lag: {} events at {:g}/s, followed by the runner, then by a raw "
                         "follower",
                         size_.live_events, live_rate));
    const auto mire_lag = live_lag_mire();
    const auto raw_lag = live_lag_raw();
    for (double p : {0.50, 0.99})
      figures_.push_back(make_figure(
          fmt::format("live_lag_p{:g}", p * 100), percentile(mire_lag, p),
          percentile(raw_lag, p), "ms", true, std::nullopt,
          fmt::format("from an append's return to its event in the handler at {:g} events/s; "
                      "baseline: raw LISTEN + SELECT follower",
                      live_rate)));
    figures_.push_back(make_figure("live_lag_p99_budget", percentile(mire_lag, 0.99),
                                   lag_budget_ms, "ms", true, 1.0,
                                   "mire's p99 live lag against the 100 ms budget"));

    progress(fmt::format("takeover: {} times, SIGKILL of the replica driving a projection "
                         "(lease ttl {} ms)",
                         size_.takeovers, lease_ttl.count()));
    std::vector<double> takeovers;
    for (int k = 0; k < size_.takeovers; ++k)
      takeovers.push_back(takeover(k));
    figures_.push_back(make_figure(
        "takeover", median(takeovers), static_cast<double>(lease_ttl.count()), "ms", true,
        4.0 / 3.0,
        fmt::format("SIGKILL of the driving replica until another holds the lease; baseline: the "
                    "lease ttl; target: ttl + one renew interval (ttl/3)")));
  }

private:
  void progress(std::string_view what) {
    if (!o_.json) {
      fmt::print(stderr, "  {}\n", what);
      std::fflush(stderr);
    }
  }

  // The log: size_.events events over streams of 100 events, bulk-loaded.
  void load() {
    progress(fmt::format("loading {} events", size_.events));
    const std::string data = R"({"account":"acc-0001","amount":100,"currency":"EUR","note":"bench"})";
    int64_t done = 0;
    int stream = 0;
    while (done < size_.events) {
      std::vector<stream_append> batch;
      for (int s = 0; s < 50 && done < size_.events; ++s, ++stream) {
        stream_append a{fmt::format("load-{}", stream), expected_version::no_stream(), {}};
        for (int k = 0; k < 100 && done < size_.events; ++k, ++done)
          a.events.push_back(event_data{"bench.deposited", data, "{}", {}});
        batch.push_back(std::move(a));
      }
      must(store_.append_batch(std::move(batch)), "loading events");
    }
  }

  caf::actor start_runner(projection_definition d, const std::string& owner) {
    actors::runner_options ro;
    ro.owner = owner;
    ro.lease_ttl = lease_ttl;
    ro.poll = 100ms;
    return must(actors::spawn_projection_runner(*system_, store_, std::move(d), ro),
                "starting a projection runner");
  }

  void stop_runner(const caf::actor& runner) {
    caf::scoped_actor self{*system_};
    self->monitor(runner);
    self->send_exit(runner, caf::exit_reason::user_shutdown);
    self->receive([](caf::down_msg&) {}, caf::after(10s) >> [] {});
  }

  // Waits until projection `name` has applied `n` events; throws after `limit`. Looks at the
  // committed checkpoint row only: projection_status_of() also counts the lag, a scan of the
  // unread log that, run every few ms, would take a core from the runner it is timing.
  void wait_applied(const std::string& name, int64_t n, std::chrono::seconds limit) {
    raw_conn c{o_.url};
    c.prepare("applied",
              fmt::format("SELECT p.state, coalesce(p.error, ''), coalesce(g.events_applied, 0) "
                          "FROM {0}.projections p LEFT JOIN {0}.projection_generations g "
                          "ON g.name = p.name AND g.generation = p.live_generation "
                          "WHERE p.name = $1",
                          q_),
              1);
    const auto deadline = steady::now() + limit;
    for (;;) {
      auto r = c.run("applied", {name.c_str()});
      const bool found = PQntuples(r.get()) == 1;
      if (found && std::string_view(PQgetvalue(r.get(), 0, 0)) != "running")
        throw failure(1, fmt::format("projection {} stopped: {}", name, PQgetvalue(r.get(), 0, 1)));
      if (found && std::stoll(PQgetvalue(r.get(), 0, 2)) >= n)
        return;
      if (steady::now() > deadline)
        throw failure(1, fmt::format("projection {} did not apply {} events within {} s", name,
                                     n, limit.count()));
      std::this_thread::sleep_for(5ms);
    }
  }

  double catch_up(int round) {
    const std::string name = fmt::format("catch_up_{}", round);
    const auto t0 = steady::now();
    auto runner = start_runner(trivial(name), "bench");
    wait_applied(name, size_.events, 600s);
    const double secs = seconds_since(t0);
    stop_runner(runner);
    return static_cast<double>(size_.events) / secs;
  }

  // The same rows in the same order as read_all, in keyset pages of 1,000.
  double raw_read() {
    raw_conn c{o_.url};
    c.prepare("raw_page",
              fmt::format("SELECT stream_id, version, global_position, transaction_id, event_id, "
                          "event_type, payload, metadata, recorded_at FROM {}.events "
                          "WHERE (transaction_id, global_position) > ($1::xid8, $2::bigint) "
                          "ORDER BY transaction_id, global_position LIMIT 1000",
                          q_),
              2);
    std::string txid = "0", pos = "0";
    int64_t rows = 0;
    const auto t0 = steady::now();
    for (;;) {
      auto r = c.run("raw_page", {txid.c_str(), pos.c_str()});
      const int n = PQntuples(r.get());
      if (n == 0)
        break;
      rows += n;
      txid = PQgetvalue(r.get(), n - 1, 3);
      pos = PQgetvalue(r.get(), n - 1, 2);
    }
    const double secs = seconds_since(t0);
    if (rows != size_.events)
      throw failure(1, fmt::format("the raw read saw {} events, not {}", rows, size_.events));
    return static_cast<double>(rows) / secs;
  }

  // One writer appending at live_rate; `returned` gets each event's append return time.
  void write_live(const std::string& prefix, std::unordered_map<std::string, steady::time_point>&
                                                 returned, std::mutex& m) {
    const auto start = steady::now();
    for (int64_t i = 0; i < size_.live_events; ++i) {
      std::this_thread::sleep_until(start + std::chrono::duration_cast<steady::duration>(
                                                std::chrono::duration<double>(i / live_rate)));
      event_data e{"bench.deposited", R"({"amount":1})", "{}", new_uuid()};
      const std::string id = e.event_id;
      must(store_.append(fmt::format("{}-{}", prefix, i % 100), expected_version::any(), {e}),
           "appending live");
      std::lock_guard lock{m};
      returned[id] = steady::now();
    }
  }

  static std::vector<double>
  lags(const std::unordered_map<std::string, steady::time_point>& returned,
       const std::unordered_map<std::string, steady::time_point>& seen) {
    std::vector<double> out;
    for (const auto& [id, t] : returned) {
      auto it = seen.find(id);
      if (it != seen.end())
        out.push_back(std::max(0.0, std::chrono::duration<double, std::milli>(it->second - t).count()));
    }
    return out;
  }

  std::vector<double> live_lag_mire() {
    std::mutex m;
    std::unordered_map<std::string, steady::time_point> returned, seen;
    auto d = trivial("live", [&](const recorded_event& e) {
      if (e.stream_id.rfind("live-", 0) == 0) {
        std::lock_guard lock{m};
        seen.emplace(e.event_id, steady::now());
      }
    });
    d.filter.category = "live";
    auto runner = start_runner(std::move(d), "bench");
    wait_applied("live", 0, 60s);
    // Caught up (nothing of category live yet) once its lease is held and a step ran.
    std::this_thread::sleep_for(500ms);
    write_live("live", returned, m);
    wait_applied("live", size_.live_events, 60s);
    stop_runner(runner);
    std::lock_guard lock{m};
    return lags(returned, seen);
  }

  std::vector<double> live_lag_raw() {
    std::mutex m;
    std::unordered_map<std::string, steady::time_point> returned, seen;
    std::atomic<bool> done{false};
    std::thread follower([&] {
      raw_conn c{o_.url};
      c.exec("LISTEN mire_events");
      c.prepare("raw_follow",
                fmt::format("SELECT global_position, event_id FROM {}.events WHERE "
                            "global_position > $1::bigint AND category = 'rawlive' "
                            "ORDER BY global_position",
                            q_),
                1);
      std::string last = "0";
      while (!done) {
        auto r = c.run("raw_follow", {last.c_str()});
        const auto now = steady::now();
        for (int i = 0; i < PQntuples(r.get()); ++i) {
          std::lock_guard lock{m};
          seen.emplace(PQgetvalue(r.get(), i, 1), now);
          last = PQgetvalue(r.get(), i, 0);
        }
        pollfd p{PQsocket(c.get()), POLLIN, 0};
        ::poll(&p, 1, 100);
        PQconsumeInput(c.get());
        while (PGnotify* n = PQnotifies(c.get()))
          PQfreemem(n);
      }
    });
    std::this_thread::sleep_for(200ms);
    write_live("rawlive", returned, m);
    const auto deadline = steady::now() + 30s;
    while (steady::now() < deadline) {
      {
        std::lock_guard lock{m};
        if (seen.size() >= returned.size())
          break;
      }
      std::this_thread::sleep_for(10ms);
    }
    done = true;
    follower.join();
    std::lock_guard lock{m};
    return lags(returned, seen);
  }

  pid_t start_replica(const std::string& id) {
    std::vector<std::string> argv{self_, "bench", "projections", "--db", o_.url};
    std::vector<char*> args;
    for (auto& a : argv)
      args.push_back(a.data());
    args.push_back(nullptr);
    std::vector<std::string> env{"MIRE_BENCH_REPLICA=" + id, "MIRE_BENCH_SCHEMA=" + schema_};
    for (char** e = environ; *e; ++e)
      env.emplace_back(*e);
    std::vector<char*> envp;
    for (auto& e : env)
      envp.push_back(e.data());
    envp.push_back(nullptr);
    pid_t pid = 0;
    if (posix_spawn(&pid, args[0], nullptr, nullptr, args.data(), envp.data()) != 0)
      throw failure(1, "cannot start a replica process");
    return pid;
  }

  std::optional<lease_info> holder() {
    auto leases = list_leases(store_);
    if (leases)
      for (const auto& l : *leases)
        if (l.resource == projection_resource("takeover") && l.held)
          return l;
    return std::nullopt;
  }

  // Two replicas; the one that drives is killed; ms until the other holds the lease.
  double takeover(int k) {
    std::map<std::string, pid_t> pids{{fmt::format("t{}-a", k), 0}, {fmt::format("t{}-b", k), 0}};
    for (auto& [id, pid] : pids)
      pid = start_replica(id);
    auto reap = [&] {
      for (auto& [id, pid] : pids)
        if (pid > 0) {
          kill(pid, SIGKILL);
          waitpid(pid, nullptr, 0);
          pid = 0;
        }
    };
    try {
      auto deadline = steady::now() + 30s;
      // The lease row names the holder: "<replica id>#<tag of its lease actor>".
      std::string driver;
      for (;;) {
        if (auto first = holder(); first && pids.count(std::string(holder_owner(first->owner)))) {
          driver = std::string(holder_owner(first->owner));
          break;
        }
        if (steady::now() > deadline)
          throw failure(1, "no replica took the lease");
        std::this_thread::sleep_for(10ms);
      }
      // Both must be up (the other one standing by) before the kill.
      std::this_thread::sleep_for(500ms);
      kill(pids[driver], SIGKILL);
      const auto t0 = steady::now();
      waitpid(pids[driver], nullptr, 0);
      pids[driver] = 0;
      deadline = t0 + 30s;
      for (;;) {
        auto now = holder();
        if (now && holder_owner(now->owner) != driver)
          break;
        if (steady::now() > deadline)
          throw failure(1, "no takeover within 30 s");
        std::this_thread::sleep_for(5ms);
      }
      const double ms = seconds_since(t0) * 1000;
      reap();
      return ms;
    } catch (...) {
      reap();
      throw;
    }
  }

  const options& o_;
  sizes size_;
  std::string schema_;
  std::string q_;
  std::string self_;
  event_store store_;
  caf::actor_system_config cfg_;
  std::unique_ptr<caf::actor_system> system_;
  std::vector<figure>& figures_;
};

volatile sig_atomic_t replica_stop = 0;

} // namespace

int run_projections(const options& o, const std::string& self_exe) {
  if (!(o.scale > 0) || !std::isfinite(o.scale)) {
    fmt::print(stderr, "mire bench projections: --scale must be a positive number, not {}\n",
               o.scale);
    return 2;
  }
  const std::string schema = fmt::format("mire_bench_projections_{}", static_cast<long>(::getpid()));
  std::string server;
  std::vector<figure> figures;
  return measure("projections", o, figures, server, [&] {
    {
      raw_conn c{o.url};
      server = server_text(c, o.scale);
      c.exec(fmt::format("DROP SCHEMA IF EXISTS {} CASCADE", quote_ident(schema)));
    }
    if (!o.json)
      fmt::print(stderr, "mire bench projections: {}; schema {}\n", server, schema);
    schema_guard guard{o.url, schema};
    projections_bench b{o, schema, self_exe, figures};
    b.run();
  });
}

int run_projection_replica(const options& o, const std::string& schema, const std::string& id) {
  signal(SIGTERM, [](int) { replica_stop = 1; });
  const pid_t parent = getppid();
  auto store = event_store::open(options_for(o, schema));
  if (!store) {
    fmt::print(stderr, "bench replica {}: {}\n", id, store.error().what());
    return exit_code(store.error().code);
  }
  caf::actor_system_config cfg;
  actors::add_mire_types(cfg);
  caf::actor_system system{cfg};
  actors::runner_options ro;
  ro.owner = id;
  ro.lease_ttl = lease_ttl;
  auto runner = actors::spawn_projection_runner(system, *store, trivial("takeover"), ro);
  if (!runner) {
    fmt::print(stderr, "bench replica {}: {}\n", id, runner.error().what());
    return exit_code(runner.error().code);
  }
  while (!replica_stop && getppid() == parent)
    std::this_thread::sleep_for(20ms);
  caf::anon_send_exit(*runner, caf::exit_reason::user_shutdown);
  return 0;
}

} // namespace mire::bench
