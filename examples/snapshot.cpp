// Why this pattern exists: an aggregate's state is the fold of all its events, so loading a
// long-lived account means reading and applying its whole history, and that gets slower with
// every event. A snapshot stores the folded state at some version; a load then reads the latest
// snapshot and only the events after it, in about the same time whatever the history's length.
// Snapshots are a cache: the log stays the truth, and a snapshot whose schema is out of date is
// ignored and the stream replayed. In an application, set a policy and forget about it:
// `repository_options{.snapshot_every = 1000}` or the actor runtime's `aggregate_options`.
//
// Here: accounts with 1,000 and 10,000 events (bulk-written with append_batch), loaded by full
// replay and by snapshot + tail, timed, and the two states compared.
#include <algorithm>
#include <cstdio>
#include <iostream>
#include <optional>
#include <vector>

#include "common.hpp"
#include "domain/bank.hpp"
#include "mire/store/repository.hpp"

namespace {

using codec = mire::event_codec<bank::account::event>;

// The log without its snapshots: what a load costs when there is no snapshot. mire::load takes
// anything with load_snapshot and read_stream (an event_store, a transaction, or this).
struct log_only {
  mire::event_store& store;
  mire::result<std::optional<mire::snapshot>> load_snapshot(std::string_view) {
    return std::optional<mire::snapshot>{};
  }
  auto read_stream(std::string_view id, int64_t from) { return store.read_stream(id, from); }
};

// The store as a load sees it, counting what the load reads: the proof that the snapshot is used.
struct counting {
  mire::event_store& store;
  int64_t snapshot_version = 0; ///< of the snapshot handed to the load; 0: none
  std::size_t events_read = 0;
  mire::result<std::optional<mire::snapshot>> load_snapshot(std::string_view id) {
    auto s = store.load_snapshot(id);
    if (s && *s)
      snapshot_version = (*s)->version;
    return s;
  }
  auto read_stream(std::string_view id, int64_t from) {
    auto r = store.read_stream(id, from);
    if (r)
      events_read += r->size();
    return r;
  }
};

// A plausible history of `count` events, decided by the account's own rules, so the log holds
// nothing the account would have refused.
std::vector<mire::event_data> history(std::size_t count) {
  bank::account acc;
  std::vector<mire::event_data> out;
  auto run = [&](const bank::account::command& cmd) {
    auto d = acc.decide(cmd);
    if (d.is_rejected())
      return; // a withdrawal the balance cannot cover: refused, so not in the log
    for (const auto& e : d.events()) {
      acc.apply(e);
      out.push_back(codec::encode(e));
    }
  };
  run(bank::account::command{std::in_place_type<bank::open>, "Ada"});
  for (int64_t i = 1; out.size() < count; ++i) {
    if (i % 4 == 0)
      run(bank::withdraw{i % 50 + 1});
    else
      run(bank::deposit{i % 30 + 1});
  }
  return out;
}

// Best of a few runs: the first read warms caches, and the point is the shape, not one sample.
template <class Load> double best_ms(Load load) {
  double best = 1e300;
  for (int run = 0; run < 5; ++run) {
    example::stopwatch clock;
    load();
    best = std::min(best, clock.ms());
  }
  return best;
}

} // namespace

int main(int argc, char** argv) {
  auto store = example::open_store(argc, argv);
  bool ok = true;
  std::printf("%8s  %13s  %18s  %s\n", "events", "full replay", "snapshot + tail", "tail");

  for (std::size_t size : {1000, 10000}) {
    const std::string id = example::fresh_id("account");
    // Bulk-write the history, then snapshot it where it stands.
    example::must(store.append_batch({{id, mire::expected_version::no_stream(), history(size)}}),
                  "writing the history");
    auto at_head = example::must(mire::load<bank::account>(store, id), "loading");
    example::must(store.save_snapshot(example::must(mire::make_snapshot(at_head), "snapshotting")),
                  "saving the snapshot");

    // Life goes on after the snapshot: a few more events, replayed on top of it by every load.
    auto acc = example::must(mire::load<bank::account>(store, id), "loading");
    for (int i = 0; i < 5; ++i) {
      auto d = acc.state().decide(bank::deposit{1});
      for (const auto& e : d.events())
        acc.record(e);
    }
    example::must(mire::save(store, acc), "saving the tail");

    log_only without_snapshots{store};
    std::optional<mire::aggregate<bank::account>> replayed, from_snapshot;
    std::optional<counting> read;
    const double replay_ms = best_ms([&] {
      replayed = example::must(mire::load<bank::account>(without_snapshots, id), "replay");
    });
    const double snapshot_ms = best_ms([&] {
      read.emplace(counting{store});
      from_snapshot = example::must(mire::load<bank::account>(*read, id), "load");
    });

    std::printf("%8lld  %10.2f ms  %15.2f ms  %zu events after version %lld\n",
                static_cast<long long>(replayed->version()), replay_ms, snapshot_ms,
                read->events_read, static_cast<long long>(read->snapshot_version));

    const bool same = from_snapshot->state() == replayed->state() &&
                      from_snapshot->version() == replayed->version();
    std::cout << id << ": snapshot load " << (same ? "equals" : "DIFFERS FROM")
              << " full replay: balance=" << from_snapshot->state().balance
              << " version=" << from_snapshot->version()
              << " (replay: balance=" << replayed->state().balance
              << " version=" << replayed->version() << ")\n";
    // O(1) in the history: the load took the snapshot and read only the 5 events after it.
    const bool used = read->snapshot_version == at_head.version() && read->events_read == 5;
    std::cout << id << ": the load read the snapshot at version " << read->snapshot_version
              << " and " << read->events_read << " events after it\n";
    ok = ok && same && used && replayed->version() > static_cast<int64_t>(size);
  }
  std::cout << (ok ? "ok: every snapshot load equals its full replay\n"
                   : "FAILED: a snapshot load differs from its full replay or did not use the "
                     "snapshot\n");
  return ok ? 0 : 1;
}
