// Why this pattern exists: importing history (a migration from another system, a replay of a
// file, a backfill) means millions of events. One append per event pays a round trip and a
// commit per event; append_batch sends many streams' events in one transaction and one bulk
// COPY, still checking each stream's expected version (any conflict stores nothing of the batch)
// and still giving every event its place in the global log. Use it for ingest, not for commands:
// a command is one aggregate's decision and goes through append (or the actor runtime, which
// groups concurrent commands into one round trip by itself).
//
// Here: the same 200 accounts x 10 events written twice, once an append per event and once in
// batches, timed; the log then holds every event of both runs.
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "common.hpp"
#include "domain/bank.hpp"
#include "mire/store/repository.hpp"

namespace {

constexpr int accounts = 200;
constexpr int events_per_account = 10;
constexpr int streams_per_batch = 50; // 500 events per append_batch call

using codec = mire::event_codec<bank::account::event>;

// The events of account `n`: opened, then deposits.
std::vector<mire::event_data> account_events(int n) {
  std::vector<mire::event_data> out{codec::encode(bank::opened{"owner " + std::to_string(n)})};
  for (int i = 1; i < events_per_account; ++i)
    out.push_back(codec::encode(bank::deposited{n + i}));
  return out;
}

std::string stream_id(const std::string& category, int n) {
  return category + "-" + std::to_string(n);
}

// What the log holds for one category: streams, events (the sum of their versions).
std::pair<std::size_t, int64_t> count(mire::event_store& store, const std::string& category) {
  auto streams = example::must(store.streams(category), "listing " + category);
  int64_t events = 0;
  for (const auto& s : streams)
    events += s.version;
  return {streams.size(), events};
}

} // namespace

int main(int argc, char** argv) {
  auto store = example::open_store(argc, argv);
  constexpr int total = accounts * events_per_account;
  // Fresh categories per run ("single<hex>-17", "batched<hex>-17"), so the counts below are this
  // run's alone.
  const std::string suffix = example::fresh_id("x").substr(2);
  const std::string one_by_one = "single" + suffix, batched = "batched" + suffix;

  // One append per event, each expecting the version the previous one produced.
  example::stopwatch single_clock;
  for (int n = 0; n < accounts; ++n) {
    int64_t version = 0;
    for (auto& e : account_events(n))
      version = example::must(store.append(stream_id(one_by_one, n),
                                           mire::expected_version::exactly(version), {e}),
                              "append")
                    .version;
  }
  const double single_ms = single_clock.ms();

  // The same events, 50 new streams per append_batch.
  example::stopwatch batch_clock;
  for (int first = 0; first < accounts; first += streams_per_batch) {
    std::vector<mire::stream_append> batch;
    for (int n = first; n < first + streams_per_batch && n < accounts; ++n)
      batch.push_back(
          {stream_id(batched, n), mire::expected_version::no_stream(), account_events(n)});
    example::must(store.append_batch(std::move(batch)), "append_batch");
  }
  const double batch_ms = batch_clock.ms();

  auto rate = [](double ms) { return total / (ms / 1000.0); };
  std::printf("one append per event: %5d events in %8.1f ms  (%8.0f events/s)\n", total, single_ms,
              rate(single_ms));
  std::printf("append_batch:         %5d events in %8.1f ms  (%8.0f events/s)\n", total, batch_ms,
              rate(batch_ms));
  std::printf("speed-up: %.1fx\n", single_ms / batch_ms);

  const auto [single_streams, single_events] = count(store, one_by_one);
  const auto [batch_streams, batch_events] = count(store, batched);
  std::cout << "in the log: " << one_by_one << " " << single_streams << " streams, "
            << single_events << " events; " << batched << " " << batch_streams << " streams, "
            << batch_events << " events\n";
  const bool ok = single_streams == accounts && batch_streams == accounts &&
                  single_events == total && batch_events == total;
  std::cout << (ok ? "ok: both runs stored every event\n" : "FAILED: events are missing\n");
  return ok ? 0 : 1;
}
