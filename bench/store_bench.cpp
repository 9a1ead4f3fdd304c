// `mire bench store`: the event store's figures beside raw-libpq baselines on the same server, in
// the same run, alternating mire and baseline rounds (the machine is shared and noisy) and keeping
// the median round of each (loads: the median single load).
//
//   append_single_1w / _8w   one event per transaction, exact expected version, 1 and 8 writers;
//                            baseline: a prepared INSERT of the same columns per transaction
//   append_batch_vs_copy     append_batch of 10,000 events over 100 streams; baseline: COPY
//   append_batch_vs_single   the same batched rate against mire's own single appends at 1 writer
//   load_snapshot_vs_small   repository load of a 100,000-event stream with a snapshot at its end,
//                            against a 10-event stream without one (ratio big/small)
//   read_all                 the global log in pages of 1,000; baseline: keyset paging of the same
//                            rows copied into a raw table, by global_position
//
// mire writes into a fresh schema (mire_bench_<pid>), the baselines into <schema>.raw_events
// created LIKE <schema>.events INCLUDING ALL (same row shape, same indexes); the schema is dropped
// at the end, also after a failure.
#include "bench.hpp"
#include "common.hpp"

#include <libpq-fe.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
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

#include "mire/store/event_store.hpp"
#include "mire/store/repository.hpp"
#include "mire/store/uuid.hpp"

namespace mire::bench {

namespace {

using namespace detail;

void append_copy_field(std::string& out, std::string_view value) {
  for (char c : value) {
    switch (c) {
    case '\\': out += "\\\\"; break;
    case '\t': out += "\\t"; break;
    case '\n': out += "\\n"; break;
    case '\r': out += "\\r"; break;
    default: out += c;
    }
  }
}

// --- the workload ------------------------------------------------------------------------------

// The same event for mire and the baselines.
constexpr std::string_view event_type_name = "bench.deposited";
constexpr std::string_view event_payload =
    R"({"account": "acc-0001", "amount": 4200, "currency": "EUR", "note": "bench deposit"})";
constexpr std::string_view event_metadata = R"({"correlation_id": "bench", "source": "mire-bench"})";
constexpr int64_t single_events_per_stream = 100;
constexpr int batch_streams = 100;
constexpr int batch_events_per_stream = 100;  // 100 x 100 = 10,000 events per batch
constexpr int small_stream_events = 10;
constexpr std::size_t read_page = 1000;

// A tiny aggregate with a snapshot, for the load figure.
struct incremented {
  static constexpr std::string_view type_name = "counter.incremented";
  int64_t by = 1;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(incremented, by)

struct counter {
  using event = std::variant<incremented>;
  static constexpr int snapshot_schema = 1;
  int64_t total = 0;
  void apply(const event& e) { total += std::get<incremented>(e).by; }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(counter, total)

static_assert(snapshottable<counter>);

struct sizes {
  int rounds;         // alternating mire/baseline rounds per figure; the median round of each counts
  int single_rounds;  // more, shorter rounds for single appends: commit latency is the noisiest
  int64_t single_per_writer;
  int batches_per_round;
  int64_t big_stream;
  int loads;
  int64_t read_min;
};

sizes sizes_for(double scale) {
  auto scaled = [&](double n, int64_t min) {
    return std::max<int64_t>(min, static_cast<int64_t>(std::llround(n * scale)));
  };
  sizes s;
  s.rounds = scale >= 0.5 ? 5 : scale >= 0.1 ? 3 : 2;
  s.single_rounds = scale >= 0.5 ? 9 : scale >= 0.1 ? 5 : 3;
  s.single_per_writer = scaled(600, 60);
  s.batches_per_round = static_cast<int>(scaled(2, 1));
  s.big_stream = scaled(100000, 5000);
  s.loads = static_cast<int>(scaled(2000, 200));
  s.read_min = scaled(100000, 20000);
  return s;
}

class store_bench {
public:
  /// Figures go to `out` as they are measured, so a failure late in the run keeps the others.
  store_bench(const options& o, std::string schema, event_store store, std::vector<figure>& out)
      : o_(o), size_(sizes_for(o.scale)), schema_(std::move(schema)), q_(quote_ident(schema_)),
        store_(std::move(store)), figures_(out) {}

  void run() {
    setup_baseline_table();
    singles();
    batches();
    loads();
    reads();
  }

private:
  void progress(std::string_view what) {
    if (!o_.json) {
      fmt::print(stderr, "  {}\n", what);
      std::fflush(stderr);
    }
  }

  void setup_baseline_table() {
    raw_conn c{o_.url};
    c.exec(fmt::format("CREATE TABLE {0}.raw_events (LIKE {0}.events INCLUDING ALL)", q_));
  }

  // --- 1. single-event appends ---------------------------------------------------------------

  // events/s of `writers` threads, each appending single events to its own streams through the
  // store with an exact expected version.
  double mire_single(int writers, int64_t per_writer, const std::string& tag) {
    auto body = [&](int w) {
      int64_t version = 0;
      int stream = 0;
      std::string id = fmt::format("single-{}w{}s{}", tag, w, stream);
      for (int64_t i = 0; i < per_writer; ++i) {
        if (version == single_events_per_stream) {
          version = 0;
          id = fmt::format("single-{}w{}s{}", tag, w, ++stream);
        }
        std::vector<event_data> events;
        events.push_back(event_data{std::string(event_type_name), std::string(event_payload),
                                    std::string(event_metadata), {}});
        auto r = must(store_.append(id, expected_version::exactly(version), std::move(events)),
                      "single append");
        version = r.version;
      }
    };
    const double secs = run_threads(writers, [](int) {}, body);
    return static_cast<double>(writers * per_writer) / secs;
  }

  // The baseline: each thread its own connection, one prepared INSERT of the same columns per
  // transaction (autocommit), text parameters. The connections are kept from round to round, warm
  // like the store's pooled ones.
  double raw_single(int writers, int64_t per_writer, const std::string& tag) {
    if (raw_conns_.size() < static_cast<std::size_t>(writers))
      raw_conns_.resize(writers);
    const std::string insert = fmt::format(
        "INSERT INTO {}.raw_events (stream_id, version, event_id, event_type, payload, metadata) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        q_);
    auto setup = [&](int w) {
      if (!raw_conns_[w]) {
        auto c = std::make_unique<raw_conn>(o_.url);
        c->prepare("raw_insert", insert, 6);
        raw_conns_[w] = std::move(c);
      }
    };
    const std::string type(event_type_name), payload(event_payload), meta(event_metadata);
    auto body = [&](int w) {
      auto& c = *raw_conns_[w];
      int64_t version = 0;
      int stream = 0;
      std::string id = fmt::format("single-{}w{}s{}", tag, w, stream);
      for (int64_t i = 0; i < per_writer; ++i) {
        if (version == single_events_per_stream) {
          version = 0;
          id = fmt::format("single-{}w{}s{}", tag, w, ++stream);
        }
        const std::string v = std::to_string(++version);
        const std::string event_id = new_uuid();
        c.run("raw_insert", {id.c_str(), v.c_str(), event_id.c_str(), type.c_str(),
                             payload.c_str(), meta.c_str()});
      }
    };
    const double secs = run_threads(writers, setup, body);
    return static_cast<double>(writers * per_writer) / secs;
  }

  void singles() {
    struct close_raw {
      std::vector<std::unique_ptr<raw_conn>>& conns;
      ~close_raw() { conns.clear(); }
    } closing{raw_conns_};
    progress(fmt::format("single-event appends: {} per writer, 1 and 8 writers, {} rounds",
                         size_.single_per_writer, size_.single_rounds));
    // Warm-up (untimed): opens and prepares the store's pooled connections.
    mire_single(8, 10, "warm");
    raw_single(8, 10, "warm");
    std::vector<double> mire[2], raw[2];
    const int writer_counts[2] = {1, 8};
    for (int r = 0; r < size_.single_rounds; ++r) {
      for (int k = 0; k < 2; ++k) {
        const int w = writer_counts[k];
        const std::string tag = fmt::format("r{}n{}", r, w);
        // Alternate which side goes first, so neither always runs on a warmer (or busier) server.
        if ((r + k) % 2 == 0) {
          raw[k].push_back(raw_single(w, size_.single_per_writer, tag));
          mire[k].push_back(mire_single(w, size_.single_per_writer, tag));
        } else {
          mire[k].push_back(mire_single(w, size_.single_per_writer, tag));
          raw[k].push_back(raw_single(w, size_.single_per_writer, tag));
        }
      }
    }
    single_1w_ = median(mire[0]);
    raw_single_1w_ = median(raw[0]);
    figures_.push_back(make_figure("append_single_1w", median(mire[0]), median(raw[0]), "events/s",
                                   false, 0.85,
                                   "one event per transaction, exact expected version; baseline: "
                                   "prepared INSERT of the same columns per transaction"));
    figures_.push_back(make_figure("append_single_8w", median(mire[1]), median(raw[1]), "events/s",
                                   false, 0.85,
                                   "the same with 8 writers, each its own streams (and, for the "
                                   "baseline, its own connection)"));
  }

  // --- 2. batched appends ----------------------------------------------------------------------

  struct raw_row {
    std::string stream_id;
    int64_t version;
    std::string event_id;
  };

  std::vector<stream_append> make_batch(const std::string& tag) {
    std::vector<stream_append> batch;
    batch.reserve(batch_streams);
    for (int s = 0; s < batch_streams; ++s) {
      stream_append a;
      a.stream_id = fmt::format("batch-{}s{}", tag, s);
      a.expected = expected_version::no_stream();
      a.events.reserve(batch_events_per_stream);
      for (int e = 0; e < batch_events_per_stream; ++e)
        a.events.push_back(event_data{std::string(event_type_name), std::string(event_payload),
                                      std::string(event_metadata), new_uuid()});
      batch.push_back(std::move(a));
    }
    return batch;
  }

  std::vector<raw_row> make_raw_batch(const std::string& tag) {
    std::vector<raw_row> rows;
    rows.reserve(batch_streams * batch_events_per_stream);
    for (int s = 0; s < batch_streams; ++s) {
      const std::string id = fmt::format("batch-{}s{}", tag, s);
      for (int e = 0; e < batch_events_per_stream; ++e)
        rows.push_back(raw_row{id, e + 1, new_uuid()});
    }
    return rows;
  }

  double mire_batches(const std::string& tag) {
    std::vector<std::vector<stream_append>> batches;
    for (int b = 0; b < size_.batches_per_round; ++b)
      batches.push_back(make_batch(fmt::format("{}b{}", tag, b)));
    int64_t events = 0;
    const auto t0 = steady::now();
    for (auto& b : batches)
      events += must(store_.append_batch(std::move(b)), "batched append").events;
    return static_cast<double>(events) / seconds_since(t0);
  }

  double raw_copies(raw_conn& c, const std::string& tag) {
    std::vector<std::vector<raw_row>> batches;
    for (int b = 0; b < size_.batches_per_round; ++b)
      batches.push_back(make_raw_batch(fmt::format("{}b{}", tag, b)));
    const std::string copy = fmt::format(
        "COPY {}.raw_events (stream_id, version, event_id, event_type, payload, metadata) FROM STDIN",
        q_);
    int64_t events = 0;
    const auto t0 = steady::now();
    for (const auto& rows : batches) {
      std::string data;
      data.reserve(rows.size() * 200);
      for (const auto& row : rows) {
        append_copy_field(data, row.stream_id);
        data += '\t';
        data += std::to_string(row.version);
        data += '\t';
        data += row.event_id;
        data += '\t';
        append_copy_field(data, event_type_name);
        data += '\t';
        append_copy_field(data, event_payload);
        data += '\t';
        append_copy_field(data, event_metadata);
        data += '\n';
      }
      c.copy_in(copy, data);
      events += static_cast<int64_t>(rows.size());
    }
    return static_cast<double>(events) / seconds_since(t0);
  }

  void batches() {
    progress(fmt::format("batched appends: {} x 10,000 events over 100 streams per round, {} rounds",
                         size_.batches_per_round, size_.rounds));
    raw_conn c{o_.url};
    std::vector<double> mire, raw;
    for (int r = 0; r < size_.rounds; ++r) {
      const std::string tag = fmt::format("r{}", r);
      if (r % 2 == 0) {
        raw.push_back(raw_copies(c, tag));
        mire.push_back(mire_batches(tag));
      } else {
        mire.push_back(mire_batches(tag));
        raw.push_back(raw_copies(c, tag));
      }
    }
    figures_.push_back(make_figure("append_batch_vs_copy", median(mire), median(raw), "events/s",
                                   false, 0.5,
                                   "append_batch of 10,000 events over 100 streams; baseline: "
                                   "COPY of the same rows"));
    figures_.push_back(make_figure(
        "append_batch_vs_single", median(mire), single_1w_, "events/s", false, 10,
        fmt::format("the same batched rate; baseline: mire single appends at 1 writer (on this "
                    "server raw COPY is {:.1f}x a raw single INSERT at 1 writer)",
                    raw_single_1w_ > 0 ? median(raw) / raw_single_1w_ : 0.0)));
  }

  // --- 3. loading with a snapshot --------------------------------------------------------------

  void loads() {
    progress(fmt::format("loads: a {}-event stream with a snapshot vs a {}-event stream, {} loads "
                         "each",
                         size_.big_stream, small_stream_events, size_.loads));
    const std::string big = "counter-big", small = "counter-small";
    // The big stream, quickly: batches of 10,000 events with exact expected versions.
    int64_t version = 0;
    while (version < size_.big_stream) {
      const int64_t n = std::min<int64_t>(10000, size_.big_stream - version);
      stream_append a;
      a.stream_id = big;
      a.expected = expected_version::exactly(version);
      for (int64_t i = 0; i < n; ++i)
        a.events.push_back(event_data{"counter.incremented", R"({"by": 1})", "{}", {}});
      std::vector<stream_append> batch;
      batch.push_back(std::move(a));
      version = must(store_.append_batch(std::move(batch)), "building the big stream").versions.at(0);
    }
    repository<counter> repo{store_};
    {
      std::vector<event_data> events;
      for (int i = 0; i < small_stream_events; ++i)
        events.push_back(event_data{"counter.incremented", R"({"by": 1})", "{}", {}});
      must(store_.append(small, expected_version::no_stream(), std::move(events)),
           "building the small stream");
    }
    // One full replay of the big stream (informational), then the snapshot at its end.
    const auto t_replay = steady::now();
    auto full = must(repo.load(big), "replaying the big stream");
    replay_ms_ = seconds_since(t_replay) * 1e3;
    if (full.version() != size_.big_stream || full.state().total != size_.big_stream)
      throw failure(1, fmt::format("big stream replayed to version {} total {}, expected {}",
                                   full.version(), full.state().total, size_.big_stream));
    must(store_.save_snapshot(must(make_snapshot(full), "snapshotting")), "saving the snapshot");

    std::vector<double> big_us, small_us;
    big_us.reserve(size_.loads);
    small_us.reserve(size_.loads);
    auto time_loads = [&](const std::string& id, int n, int64_t want, std::vector<double>& out) {
      for (int i = 0; i < n; ++i) {
        const auto t0 = steady::now();
        auto a = must(repo.load(id), "loading " + id);
        out.push_back(seconds_since(t0) * 1e6);
        if (a.version() != want || a.state().total != want)
          throw failure(1, fmt::format("{} loaded at version {} total {}, expected {}", id,
                                       a.version(), a.state().total, want));
      }
    };
    time_loads(small, 5, small_stream_events, small_us);  // warm-up
    time_loads(big, 5, size_.big_stream, big_us);
    small_us.clear();
    big_us.clear();
    constexpr int block = 25;
    for (int done = 0; done < size_.loads; done += block) {
      const int n = std::min(block, size_.loads - done);
      time_loads(small, n, small_stream_events, small_us);
      time_loads(big, n, size_.big_stream, big_us);
    }
    figures_.push_back(make_figure(
        "load_snapshot_vs_small", median(big_us), median(small_us), "us/load", true, 2,
        fmt::format("median repository load: {}-event stream with a snapshot at its end; "
                    "baseline: {}-event stream, no snapshot (full replay without snapshot: {:.0f} ms)",
                    size_.big_stream, small_stream_events, replay_ms_)));
  }

  // --- 4. reading the global log -----------------------------------------------------------------

  int64_t count_events(raw_conn& c, std::string_view table) {
    auto r = c.exec(fmt::format("SELECT count(*) FROM {}.{}", q_, table));
    return std::stoll(PQgetvalue(r.get(), 0, 0));
  }

  // read_all only delivers events below the visibility horizon (DESIGN rule 3): a transaction
  // left open anywhere on the server holds it back. Wait a little for ours to fall below it.
  void wait_for_horizon(raw_conn& c) {
    const std::string sql = fmt::format(
        "SELECT coalesce(max(transaction_id) < pg_snapshot_xmin(pg_current_snapshot()), true) "
        "FROM {}.events",
        q_);
    const auto deadline = steady::now() + std::chrono::seconds(10);
    for (;;) {
      auto r = c.exec(sql);
      if (std::string_view(PQgetvalue(r.get(), 0, 0)) == "t")
        return;
      if (steady::now() > deadline)
        throw failure(1, "another transaction on the server has stayed open for over 10 s and "
                         "holds back the global log's visibility horizon; read_all cannot be "
                         "measured until it ends");
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }

  double mire_read(int64_t expected) {
    int64_t n = 0;
    checkpoint cp = checkpoint::start();
    const auto t0 = steady::now();
    for (;;) {
      auto page = must(store_.read_all(cp, read_page), "reading the global log");
      if (page.events.empty())
        break;
      n += static_cast<int64_t>(page.events.size());
      cp = page.next;
    }
    const double secs = seconds_since(t0);
    if (n != expected)
      throw failure(1, fmt::format("read_all delivered {} events, expected {}", n, expected));
    return static_cast<double>(n) / secs;
  }

  double raw_read(raw_conn& c, int64_t expected) {
    int64_t n = 0;
    std::size_t bytes = 0;
    std::string last = "0";
    const auto t0 = steady::now();
    for (;;) {
      auto r = c.run("raw_read_page", {last.c_str()});
      const int rows = PQntuples(r.get());
      if (rows == 0)
        break;
      const int cols = PQnfields(r.get());
      for (int i = 0; i < rows; ++i)
        for (int j = 0; j < cols; ++j)
          bytes += static_cast<std::size_t>(PQgetlength(r.get(), i, j)) +
                   static_cast<unsigned char>(*PQgetvalue(r.get(), i, j));
      n += rows;
      last = PQgetvalue(r.get(), rows - 1, 2);
    }
    const double secs = seconds_since(t0);
    if (n != expected || bytes == 0)
      throw failure(1, fmt::format("raw read delivered {} events, expected {}", n, expected));
    return static_cast<double>(n) / secs;
  }

  void reads() {
    raw_conn c{o_.url};
    // Enough events in the log: top up with batches when the workload so far was small.
    int64_t total = count_events(c, "events");
    for (int b = 0; total < size_.read_min; ++b)
      total += must(store_.append_batch(make_batch(fmt::format("fill{}", b))), "filling the log").events;
    progress(fmt::format("global log: {} events in pages of {}, {} rounds", total, read_page,
                         size_.rounds));
    wait_for_horizon(c);
    // The baseline reads the very same rows, by global_position through its own index.
    c.exec(fmt::format("TRUNCATE {}.raw_events", q_));
    const std::string cols = "global_position, transaction_id, stream_id, version, event_id, "
                             "event_type, payload, metadata, recorded_at";
    c.exec(fmt::format("INSERT INTO {0}.raw_events ({1}) OVERRIDING SYSTEM VALUE "
                       "SELECT {1} FROM {0}.events",
                       q_, cols));
    c.exec(fmt::format("CREATE UNIQUE INDEX raw_events_global_position ON {}.raw_events "
                       "(global_position)",
                       q_));
    c.exec(fmt::format("VACUUM (ANALYZE) {}.events", q_));
    c.exec(fmt::format("VACUUM (ANALYZE) {}.raw_events", q_));
    c.prepare("raw_read_page",
              fmt::format("SELECT stream_id, version, global_position, transaction_id, event_id, "
                          "event_type, payload, metadata, recorded_at FROM {}.raw_events "
                          "WHERE global_position > $1::bigint ORDER BY global_position LIMIT {}",
                          q_, read_page),
              1);
    std::vector<double> mire, raw;
    for (int r = 0; r < size_.rounds; ++r) {
      if (r % 2 == 0) {
        raw.push_back(raw_read(c, total));
        mire.push_back(mire_read(total));
      } else {
        mire.push_back(mire_read(total));
        raw.push_back(raw_read(c, total));
      }
    }
    figures_.push_back(make_figure(
        "read_all", median(mire), median(raw), "events/s", false, 0.5,
        fmt::format("read_all of {} events in pages of {}; baseline: keyset paging by "
                    "global_position of the same rows",
                    total, read_page)));
  }

  const options& o_;
  sizes size_;
  std::string schema_;
  std::string q_;  // the schema, quoted
  event_store store_;
  std::vector<figure>& figures_;
  std::vector<std::unique_ptr<raw_conn>> raw_conns_;  // the single-append baseline's writers
  double single_1w_ = 0;      // median mire single-append rate at 1 writer
  double raw_single_1w_ = 0;  // and the baseline's
  double replay_ms_ = 0;
};

} // namespace

int run_store(const options& o) {
  if (!(o.scale > 0) || !std::isfinite(o.scale)) {
    fmt::print(stderr, "mire bench store: --scale must be a positive number, not {}\n", o.scale);
    return 2;
  }
  const std::string schema = fmt::format("mire_bench_{}", static_cast<long>(::getpid()));
  std::string server;
  std::vector<figure> figures;
  return measure("store", o, figures, server, [&] {
    {
      raw_conn c{o.url};
      server = server_text(c, o.scale);
      c.exec(fmt::format("DROP SCHEMA IF EXISTS {} CASCADE", quote_ident(schema)));
    }
    if (!o.json)
      fmt::print(stderr, "mire bench store: {}; schema {}\n", server, schema);
    schema_guard guard{o.url, schema};
    store_options so;
    so.url = o.url;
    so.schema = schema;
    so.pool_size = 8;
    so.application_name = "mire-bench";
    auto store = must(event_store::open(so), "opening the store");
    must(store.migrate(), "migrating the bench schema");
    store_bench b{o, schema, std::move(store), figures};
    b.run();
    // b (and the store's connections) end before the guard drops the schema.
  });
}

} // namespace mire::bench
