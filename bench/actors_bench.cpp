// `mire bench actors`: commands through aggregate actors beside raw libpq on the same server, in
// the same run, alternating mire and baseline rounds and keeping the median round of each (the
// method and output of `mire bench store`).
//
//   actors_16_senders   commands/s: 16 threads, each calling runtime::send (one event per
//                       command) on its share of 1,000 aggregates; baseline: 16 connections,
//                       each one prepared INSERT of the same row per transaction
//   actors_1_sender     the same with 1 thread; baseline: 1 connection
//   latency_p50_* / latency_p99_*
//                       per command (mire: send until the reply; baseline: one INSERT +
//                       commit), over every timed round
//   ceiling_16_senders  the most group commit itself gets out of 16 blocking senders here, no
//                       actors: 16 threads hand one append each to as many committer threads as
//                       the store actor has workers, which call event_store::append_group on
//                       whatever has queued and wake each sender. actors_16_senders can at best
//                       come near it; its ratio to raw libpq tells what a machine allows.
//
// The aggregates live in a runtime configured like `mire` is (config/mire.ini, environment,
// --mire.* flags), so the group-commit settings can be tried out: `mire bench actors
// --mire.store.workers=8 --mire.store.group_window=200us --mire.scheduler.policy=stealing`. mire
// writes into a fresh schema (mire_bench_actors_<pid>), the baseline into <schema>.raw_events
// created LIKE <schema>.events INCLUDING ALL; the schema is dropped at the end, also after a
// failure.
#include "bench.hpp"
#include "common.hpp"

#include <libpq-fe.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <functional>
#include <latch>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <variant>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "mire/actors/runtime.hpp"
#include "mire/store/codec.hpp"
#include "mire/store/event_store.hpp"
#include "mire/store/uuid.hpp"

namespace mire::bench {

namespace {

using namespace detail;

// --- the aggregate ---------------------------------------------------------------------------

// The event of `mire bench store`, as an aggregate's: one deposit, one event.
struct deposited {
  static constexpr std::string_view type_name = "bench.deposited";
  std::string account;
  int64_t amount = 0;
  std::string currency;
  std::string note;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(deposited, account, amount, currency, note)

struct deposit {
  int64_t amount = 0;
};

struct bench_account {
  using event = std::variant<deposited>;
  using command = std::variant<deposit>;
  int64_t balance = 0;
  int64_t deposits = 0;

  void apply(const event& e) {
    balance += std::get<deposited>(e).amount;
    ++deposits;
  }
  mire::decision<event> decide(const command& c) const {
    const auto& d = std::get<deposit>(c);
    if (d.amount <= 0)
      return mire::reject("invalid_amount", "amount must be positive");
    return deposited{"acc-0001", d.amount, "EUR", "bench deposit"};
  }
};
static_assert(aggregate_root<bench_account>);

constexpr int aggregates = 1000;
constexpr int64_t amount = 4200;
constexpr std::string_view event_metadata =
    R"({"correlation_id": "bench", "source": "mire-bench"})";
constexpr auto command_timeout = std::chrono::seconds(30);

struct sizes {
  int rounds;
  int64_t per_sender_16; // commands per sender per round with 16 senders
  int64_t per_sender_1;  // commands per round with 1 sender
};

sizes sizes_for(double scale) {
  auto scaled = [&](double n, int64_t min) {
    return std::max<int64_t>(min, static_cast<int64_t>(std::llround(n * scale)));
  };
  sizes s;
  s.rounds = scale >= 0.5 ? 9 : scale >= 0.1 ? 3 : 2;
  s.per_sender_16 = scaled(250, 10);
  s.per_sender_1 = scaled(1500, 100);
  return s;
}


class actors_bench {
public:
  actors_bench(const options& o, const config::settings& cfg, std::string schema, event_store store,
               std::vector<figure>& out)
      : o_(o), size_(sizes_for(o.scale)), schema_(std::move(schema)), q_(quote_ident(schema_)),
        store_(std::move(store)),
        rt_(must(config::start_runtime(cfg, store_), "starting the runtime")), figures_(out) {
    for (int i = 0; i < aggregates; ++i) {
      ids_.push_back(fmt::format("acct-{:04}", i));
      ceiling_ids_.push_back(fmt::format("ceiling-{:04}", i));
    }
    ceiling_versions_.assign(aggregates, 0);
    committers_ = cfg.runtime.store.workers;
    max_group_ = cfg.runtime.store.max_group;
    raw_versions_.assign(aggregates, 0);
    // The baseline inserts exactly the rows mire stores: same type, payload and metadata text.
    auto data = event_codec<bench_account::event>::encode(
        deposited{"acc-0001", amount, "EUR", "bench deposit"}, std::string(event_metadata));
    event_type_ = data.type;
    payload_ = data.data;
  }

  void run() {
    {
      raw_conn c{o_.url};
      c.exec(fmt::format("CREATE TABLE {0}.raw_events (LIKE {0}.events INCLUDING ALL)", q_));
    }
    progress(fmt::format("warm-up: one command to each of {} aggregates (they load), {} baseline "
                         "connections",
                         aggregates, 16));
    // Untimed: every aggregate actor spawned and loaded, every connection opened and prepared.
    mire_round(16, aggregates / 16 + 1, nullptr);
    raw_round(16, 10, nullptr);
    progress(fmt::format("{} rounds of 16 senders x {} commands and of 1 sender x {} commands, "
                         "alternating mire and baseline",
                         size_.rounds, size_.per_sender_16, size_.per_sender_1));
    const int senders[2] = {16, 1};
    const int64_t per[2] = {size_.per_sender_16, size_.per_sender_1};
    std::vector<double> mire[2], raw[2], mire_lat[2], raw_lat[2], ceiling, ceiling_raw;
    for (int r = 0; r < size_.rounds; ++r) {
      // The ceiling and a baseline round of its own right beside it.
      ceiling.push_back(ceiling_round(16, size_.per_sender_16));
      ceiling_raw.push_back(raw_round(16, size_.per_sender_16, nullptr));
      for (int k = 0; k < 2; ++k) {
        // Alternate which side goes first, so neither always runs on a warmer (or busier) server.
        if ((r + k) % 2 == 0) {
          raw[k].push_back(raw_round(senders[k], per[k], &raw_lat[k]));
          mire[k].push_back(mire_round(senders[k], per[k], &mire_lat[k]));
        } else {
          mire[k].push_back(mire_round(senders[k], per[k], &mire_lat[k]));
          raw[k].push_back(raw_round(senders[k], per[k], &raw_lat[k]));
        }
      }
    }
    verify();
    figures_.push_back(make_figure(
        "actors_16_senders", median(mire[0]), median(raw[0]), "cmds/s", false, 1.5,
        fmt::format("16 threads calling runtime::send on {} aggregates, one event per command; "
                    "baseline: 16 connections, one INSERT per transaction",
                    aggregates)));
    figures_.push_back(make_figure("actors_1_sender", median(mire[1]), median(raw[1]), "cmds/s",
                                   false, 0.7,
                                   "1 thread calling runtime::send; baseline: 1 connection, one "
                                   "INSERT per transaction"));
    figures_.push_back(make_figure(
        "ceiling_16_senders", median(ceiling), median(ceiling_raw), "cmds/s", false, std::nullopt,
        fmt::format("no actors: 16 threads handing one append each to {} committer threads "
                    "calling event_store::append_group (group commit's best case here); "
                    "baseline: as for actors_16_senders",
                    committers_)));
    const char* label[2] = {"16", "1"};
    for (int k = 0; k < 2; ++k) {
      figures_.push_back(make_figure(fmt::format("latency_p50_{}", label[k]),
                                     percentile(mire_lat[k], 0.50), percentile(raw_lat[k], 0.50),
                                     "us", false, std::nullopt,
                                     fmt::format("median command latency at {} sender(s); "
                                                 "baseline: one INSERT + commit",
                                                 label[k])));
      figures_.push_back(make_figure(fmt::format("latency_p99_{}", label[k]),
                                     percentile(mire_lat[k], 0.99), percentile(raw_lat[k], 0.99),
                                     "us", false, std::nullopt,
                                     fmt::format("99th percentile command latency at {} "
                                                 "sender(s); baseline: one INSERT + commit",
                                                 label[k])));
    }
  }

private:
  void progress(std::string_view what) {
    if (!o_.json) {
      fmt::print(stderr, "  {}\n", what);
      std::fflush(stderr);
    }
  }

  // Commands/s of `senders` threads, each sending `per_sender` commands to its own share of the
  // aggregates (sender s: aggregates s, s + senders, ...), one at a time.
  double mire_round(int senders, int64_t per_sender, std::vector<double>* latency) {
    std::vector<std::vector<double>> lat(senders);
    const std::string metadata(event_metadata);
    const double secs = run_threads(senders, [&](int s) {
      auto& mine = lat[s];
      mine.reserve(static_cast<std::size_t>(per_sender));
      std::size_t i = static_cast<std::size_t>(s);
      for (int64_t k = 0; k < per_sender; ++k) {
        const auto t0 = steady::now();
        auto r = rt_->send<bench_account>(ids_[i], deposit{amount}, command_timeout, metadata);
        mine.push_back(seconds_since(t0) * 1e6);
        if (!r)
          throw failure(r.failed() ? exit_code(r.error().code) : 1,
                        fmt::format("command to {}: {}", ids_[i],
                                    r.failed() ? r.error().what() : r.rejection().message));
        i += static_cast<std::size_t>(senders);
        if (i >= ids_.size())
          i = static_cast<std::size_t>(s);
      }
    });
    commands_ += senders * per_sender;
    if (latency)
      for (auto& l : lat)
        latency->insert(latency->end(), l.begin(), l.end());
    return static_cast<double>(senders * per_sender) / secs;
  }

  // Group commit without actors: `senders` threads each hand one append at a time (a deposit to
  // their own share of the ceiling's streams) to the committer threads and wait for its outcome;
  // a committer takes everything queued (up to max_group) into one event_store::append_group.
  double ceiling_round(int senders, int64_t per_sender) {
    struct request {
      stream_append append;
      bool done = false;
      bool ok = false;
      std::string error;
      std::mutex m;
      std::condition_variable cv;
    };
    std::mutex qm;
    std::condition_variable qcv;
    std::deque<request*> queue;
    bool stop = false;
    auto committer = [&] {
      for (;;) {
        std::vector<request*> taken;
        {
          std::unique_lock lock{qm};
          qcv.wait(lock, [&] { return stop || !queue.empty(); });
          if (queue.empty())
            return;
          while (!queue.empty() && taken.size() < max_group_) {
            taken.push_back(queue.front());
            queue.pop_front();
          }
        }
        std::vector<stream_append> group;
        group.reserve(taken.size());
        for (auto* t : taken)
          group.push_back(t->append);
        auto r = store_.append_group(std::move(group));
        for (std::size_t i = 0; i < taken.size(); ++i) {
          auto* t = taken[i];
          {
            std::lock_guard lock{t->m};
            t->done = true;
            t->ok = r && (*r)[i].has_value();
            if (!t->ok)
              t->error = !r ? r.error().what() : (*r)[i].error().what();
          }
          t->cv.notify_one();
        }
      }
    };
    std::vector<std::thread> committers;
    for (std::size_t c = 0; c < committers_; ++c)
      committers.emplace_back(committer);
    std::string failed; // the first failure, under qm
    std::atomic<bool> any_failed{false};
    const std::string metadata(event_metadata);
    const double secs = run_threads(senders, [&](int s) {
      std::size_t i = static_cast<std::size_t>(s);
      for (int64_t k = 0; k < per_sender && !any_failed; ++k) {
        request q;
        q.append.stream_id = ceiling_ids_[i];
        q.append.expected = expected_version::exactly(ceiling_versions_[i]);
        q.append.events.push_back(event_data{event_type_, payload_, metadata, new_uuid()});
        {
          std::lock_guard lock{qm};
          queue.push_back(&q);
        }
        qcv.notify_one();
        std::unique_lock lock{q.m};
        q.cv.wait(lock, [&] { return q.done; });
        if (!q.ok) {
          std::lock_guard f{qm};
          if (!any_failed.exchange(true))
            failed = fmt::format("ceiling append to {}: {}", q.append.stream_id, q.error);
          break;
        }
        ++ceiling_versions_[i];
        i += static_cast<std::size_t>(senders);
        if (i >= ceiling_ids_.size())
          i = static_cast<std::size_t>(s);
      }
    });
    {
      std::lock_guard lock{qm};
      stop = true;
    }
    qcv.notify_all();
    for (auto& t : committers)
      t.join();
    if (!failed.empty())
      throw failure(1, failed);
    commands_ += senders * per_sender;
    return static_cast<double>(senders * per_sender) / secs;
  }

  // The baseline: `conns` connections (kept from round to round, warm like the store's), each
  // inserting the same rows into the same share of streams, one INSERT per transaction.
  double raw_round(int conns, int64_t per_conn, std::vector<double>* latency) {
    const std::string insert = fmt::format(
        "INSERT INTO {}.raw_events (stream_id, version, event_id, event_type, payload, metadata) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        q_);
    while (raw_conns_.size() < static_cast<std::size_t>(conns)) {
      auto c = std::make_unique<raw_conn>(o_.url);
      c->prepare("raw_insert", insert, 6);
      raw_conns_.push_back(std::move(c));
    }
    std::vector<std::vector<double>> lat(conns);
    const std::string meta(event_metadata);
    const double secs = run_threads(conns, [&](int c) {
      auto& conn = *raw_conns_[c];
      auto& mine = lat[c];
      mine.reserve(static_cast<std::size_t>(per_conn));
      std::size_t i = static_cast<std::size_t>(c);
      for (int64_t k = 0; k < per_conn; ++k) {
        const auto t0 = steady::now();
        const std::string v = std::to_string(++raw_versions_[i]);
        const std::string event_id = new_uuid();
        conn.run("raw_insert", {ids_[i].c_str(), v.c_str(), event_id.c_str(), event_type_.c_str(),
                                payload_.c_str(), meta.c_str()});
        mine.push_back(seconds_since(t0) * 1e6);
        i += static_cast<std::size_t>(conns);
        if (i >= ids_.size())
          i = static_cast<std::size_t>(c);
      }
    });
    if (latency)
      for (auto& l : lat)
        latency->insert(latency->end(), l.begin(), l.end());
    return static_cast<double>(conns * per_conn) / secs;
  }

  // Every accepted command is in the log exactly once, and the aggregates agree.
  void verify() {
    raw_conn c{o_.url};
    auto r = c.exec(fmt::format("SELECT count(*) FROM {}.events", q_));
    const int64_t stored = std::stoll(PQgetvalue(r.get(), 0, 0));
    if (stored != commands_)
      throw failure(1, fmt::format("{} commands were accepted but the log holds {} events",
                                   commands_, stored));
    auto state = must(rt_->load<bench_account>(ids_[0], command_timeout), "loading an aggregate");
    auto events = must(store_.read_stream(ids_[0]), "reading an aggregate's stream");
    if (state.state.deposits != static_cast<int64_t>(events.size()) ||
        state.version != static_cast<int64_t>(events.size()))
      throw failure(1, fmt::format("{}: the actor is at version {} with {} deposits, the log "
                                   "holds {} events",
                                   ids_[0], state.version, state.state.deposits, events.size()));
  }

  const options& o_;
  sizes size_;
  std::string schema_;
  std::string q_; // the schema, quoted
  event_store store_;
  config::runtime_host rt_;
  std::vector<figure>& figures_;
  std::vector<std::string> ids_;
  std::vector<int64_t> raw_versions_; // per aggregate: each baseline thread owns its share
  std::vector<std::unique_ptr<raw_conn>> raw_conns_;
  std::string event_type_, payload_;
  std::vector<std::string> ceiling_ids_;     // streams of ceiling_round, apart from the actors'
  std::vector<int64_t> ceiling_versions_;    // their versions: each sender owns its share
  std::size_t committers_ = 0, max_group_ = 0; // ceiling_round's, as the store actor's
  int64_t commands_ = 0; // accepted through the actors, warm-up included
};

} // namespace

int run_actors(const options& o, const config::settings& cfg) {
  const auto& runtime = cfg.runtime;
  if (!(o.scale > 0) || !std::isfinite(o.scale)) {
    fmt::print(stderr, "mire bench actors: --scale must be a positive number, not {}\n", o.scale);
    return 2;
  }
  if (auto ok = actors::validate(runtime); !ok) {
    fmt::print(stderr, "mire bench actors: {}\n", ok.error().what());
    return 2;
  }
  const std::string schema = fmt::format("mire_bench_actors_{}", static_cast<long>(::getpid()));
  std::string server;
  std::vector<figure> figures;
  return measure("actors", o, figures, server, [&] {
    {
      raw_conn c{o.url};
      server = fmt::format("{}; store actor: {} workers, group window {} us, max group {}; "
                           "scheduler {}",
                           server_text(c, o.scale), runtime.store.workers,
                           runtime.store.group_window.count(), runtime.store.max_group,
                           cfg.scheduler.policy);
      c.exec(fmt::format("DROP SCHEMA IF EXISTS {} CASCADE", quote_ident(schema)));
    }
    if (!o.json)
      fmt::print(stderr, "mire bench actors: {}; schema {}\n", server, schema);
    schema_guard guard{o.url, schema};
    store_options so;
    so.url = o.url;
    so.schema = schema;
    so.pool_size = runtime.store.workers + 4;
    so.application_name = "mire-bench";
    auto store = must(event_store::open(so), "opening the store");
    must(store.migrate(), "migrating the bench schema");
    actors_bench b{o, cfg, schema, std::move(store), figures};
    b.run();
    // b (its runtime and the store's connections) ends before the guard drops the schema.
  });
}

} // namespace mire::bench
