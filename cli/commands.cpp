// The store commands of `mire`: db, migrate, append, read, read-all, streams, bench and config.
#include "commands.hpp"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <optional>

#include <fmt/format.h>

#include "bench/bench.hpp"
#include "mire/config/config.hpp"
#include "mire/store/types.hpp"

namespace mire::cli {

namespace {

// Events per round trip when reading: large enough that the round trips do not dominate, small
// enough that a huge stream or log never has to fit in memory at once.
constexpr std::size_t page_size = 1000;

// Stored JSON as a JSON value. Postgres' jsonb accepts numbers nlohmann cannot represent (1e400);
// such a document is shown as its text rather than failing the whole read.
json parsed(const std::string& text) {
  auto j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  return j.is_discarded() ? json(text) : j;
}

void print_status(const context& ctx, const embedded_status& s) {
  if (ctx.json_output()) {
    ctx.print({{"running", s.running},
               {"initialized", s.initialized},
               {"pid", s.pid},
               {"data_dir", s.data_dir},
               {"socket_dir", s.socket_dir},
               {"url", s.url}});
    return;
  }
  fmt::print("running: {}\n", s.running ? "yes" : "no");
  fmt::print("initialized: {}\n", s.initialized ? "yes" : "no");
  if (s.running)
    fmt::print("pid: {}\n", s.pid);
  fmt::print("data_dir: {}\n", s.data_dir);
  fmt::print("url: {}\n", s.url);
}

} // namespace

// One event: tab-separated in text (neither stream ids nor types may contain a tab, and JSON
// escapes them), one object per line with --json.
void print_event(const context& ctx, const recorded_event& e) {
  if (ctx.json_output()) {
    ctx.print({{"stream_id", e.stream_id},
               {"version", e.version},
               {"type", e.type},
               {"data", parsed(e.data)},
               {"metadata", parsed(e.metadata)},
               {"event_id", e.event_id},
               {"global_position", e.global_position},
               {"recorded_at", e.recorded_at},
               {"checkpoint", e.checkpoint().to_string()}});
  } else {
    fmt::print("{}\t{}\t{}\t{}\t{}\n", e.global_position, e.stream_id, e.version, e.type, e.data);
  }
}

// --category: a category is the part of a stream id before the first '-', so a value with a '-'
// could never match anything; saying so beats printing nothing.
result<std::string> category_option(const command_line& cl) {
  const auto* cat = cl.value("category");
  if (cat == nullptr)
    return std::string();
  if (cat->empty() || cat->find('-') != std::string::npos)
    return bad_input(fmt::format("--category {} must be non-empty and without '-' (the category "
                                 "of 'account-42' is 'account')",
                                 printable(*cat)));
  return *cat;
}

int run_db(const context& ctx, const command_line& cl) {
  if (auto ok = expect_positionals(cl, {"start|stop|status|url"}); !ok)
    return ctx.fail(ok.error());
  const auto& action = cl.positionals[0];
  if (action == "url") {
    auto url = ctx.database_url();
    if (!url)
      return ctx.fail(url.error());
    if (ctx.json_output())
      ctx.print({{"url", *url}});
    else
      fmt::print("{}\n", *url);
    return 0;
  }
  if (action != "start" && action != "stop" && action != "status")
    return ctx.fail(bad_input(fmt::format(
        "unknown action {} for 'mire db' (start, stop, status or url)", printable(action))));
  // Only the embedded server is mire's to start and stop; acting on it while every other command
  // goes elsewhere would mislead.
  if (ctx.external_database())
    return ctx.fail(
        bad_input(fmt::format("'mire db {}' manages the embedded database under MIRE_HOME, but "
                              "mire.database.url names another database (from {})",
                              action, ctx.database_origin())));

  if (action == "stop") {
    if (auto stopped = embedded_postgres::stop(ctx.embedded()); !stopped)
      return ctx.fail(stopped.error());
    if (ctx.json_output())
      ctx.print({{"running", false}});
    else
      fmt::print("stopped\n");
    return 0;
  }
  if (action == "start")
    if (auto server = embedded_postgres::start(ctx.embedded()); !server)
      return ctx.fail(server.error());
  auto status = embedded_postgres::status(ctx.embedded());
  if (!status)
    return ctx.fail(status.error());
  print_status(ctx, *status);
  return 0;
}

int run_migrate(const context& ctx, const command_line& cl) {
  if (auto ok = expect_positionals(cl, {}); !ok)
    return ctx.fail(ok.error());
  auto store = ctx.open_unmigrated_store();
  if (!store)
    return ctx.fail(store.error());
  auto applied = store->migrate();
  if (!applied)
    return ctx.fail(applied.error());
  if (ctx.json_output())
    ctx.print({{"applied", *applied}});
  else
    fmt::print("applied {} migrations\n", *applied);
  return 0;
}

int run_append(const context& ctx, const command_line& cl) {
  if (auto ok = expect_positionals(cl, {"STREAM"}); !ok)
    return ctx.fail(ok.error());
  const auto& stream = cl.positionals[0];
  auto type = required(cl, "type");
  if (!type)
    return ctx.fail(type.error());
  auto data = required(cl, "data");
  if (!data)
    return ctx.fail(data.error());
  const auto* expected_text = cl.value("expected-version");
  auto expected = expected_version::parse(expected_text ? *expected_text : "any");
  if (!expected)
    return ctx.fail(expected.error());
  const auto* metadata = cl.value("metadata");
  const auto* event_id = cl.value("event-id");
  // An empty id (a script's unset $ID) would silently become a fresh one, and the retry it was
  // meant to make safe would store the event twice.
  if (event_id && event_id->empty())
    return ctx.fail(bad_input("--event-id is empty: give the event's UUID, or leave the flag out "
                              "for a new one"));

  auto store = ctx.open_store();
  if (!store)
    return ctx.fail(store.error());
  // The store checks the stream id, type, JSON and event id, and names the bad value.
  auto appended = store->append(stream, *expected,
                                {event_data{.type = *type,
                                            .data = *data,
                                            .metadata = metadata ? *metadata : "{}",
                                            .event_id = event_id ? *event_id : ""}});
  if (!appended)
    return ctx.fail(appended.error());
  if (ctx.json_output())
    ctx.print({{"stream_id", stream},
               {"version", appended->version},
               {"global_position", appended->last_position},
               {"duplicate", appended->duplicate}});
  else
    fmt::print("version {} position {}{}\n", appended->version, appended->last_position,
               appended->duplicate ? " duplicate" : "");
  return 0;
}

int run_read(const context& ctx, const command_line& cl) {
  if (auto ok = expect_positionals(cl, {"STREAM"}); !ok)
    return ctx.fail(ok.error());
  int64_t from = 1;
  if (const auto* text = cl.value("from")) {
    auto v = parse_positive("from", *text);
    if (!v)
      return ctx.fail(v.error());
    from = *v;
  }
  auto store = ctx.open_store();
  if (!store)
    return ctx.fail(store.error());
  for (;;) {
    auto page = store->read_stream(cl.positionals[0], from, page_size);
    if (!page)
      return ctx.fail(page.error());
    for (const auto& e : *page)
      print_event(ctx, e);
    if (page->size() < page_size)
      return 0;
    from = page->back().version + 1;
  }
}

result<checkpoint> read_start(const log_read_options& o, event_store& store) {
  return o.after_end ? store.log_head() : result<checkpoint>{o.after};
}

result<log_read_options> log_read_options_of(const command_line& cl) {
  log_read_options o;
  if (const auto* text = cl.value("after"); text && *text == "end") {
    o.after_end = true;
  } else if (text) {
    auto c = checkpoint::parse(*text);
    if (!c)
      return bad_input(fmt::format("--after {}: a checkpoint is TXID:POSITION (as printed with "
                                   "each event), or end",
                                   printable(*text)));
    o.after = *c;
  }
  if (const auto* text = cl.value("limit")) {
    auto v = parse_positive("limit", *text);
    if (!v)
      return v.error();
    o.limit = *v;
  }
  auto category = category_option(cl);
  if (!category)
    return category.error();
  o.category = std::move(*category);
  return o;
}

int run_read_all(const context& ctx, const command_line& cl) {
  if (auto ok = expect_positionals(cl, {}); !ok)
    return ctx.fail(ok.error());
  auto o = log_read_options_of(cl);
  if (!o)
    return ctx.fail(o.error());
  const auto limit = o->limit;

  auto store = ctx.open_store();
  if (!store)
    return ctx.fail(store.error());
  auto after = read_start(*o, *store);
  if (!after)
    return ctx.fail(after.error());
  int64_t printed = 0;
  while (!limit || printed < *limit) {
    const auto want = limit ? std::min<std::size_t>(page_size, *limit - printed) : page_size;
    auto page = store->read_all(*after, want, o->category);
    if (!page)
      return ctx.fail(page.error());
    // A short page is not the end: events of transactions still in flight come later. Only an
    // empty page says that nothing more is visible now.
    if (page->events.empty())
      break;
    for (const auto& e : page->events)
      print_event(ctx, e);
    printed += static_cast<int64_t>(page->events.size());
    *after = page->next;
  }
  return 0;
}

int run_streams(const context& ctx, const command_line& cl) {
  if (auto ok = expect_positionals(cl, {}); !ok)
    return ctx.fail(ok.error());
  auto category = category_option(cl);
  if (!category)
    return ctx.fail(category.error());
  auto store = ctx.open_store();
  if (!store)
    return ctx.fail(store.error());
  auto streams = store->streams(*category);
  if (!streams)
    return ctx.fail(streams.error());
  for (const auto& s : *streams) {
    if (ctx.json_output())
      ctx.print(
          {{"stream_id", s.stream_id}, {"version", s.version}, {"last_position", s.last_position}});
    else
      fmt::print("{}\t{}\t{}\n", s.stream_id, s.version, s.last_position);
  }
  return 0;
}

int run_bench(const context& ctx, const command_line& cl) {
  if (auto ok = expect_positionals(cl, {"BENCHMARK"}); !ok)
    return ctx.fail(ok.error());
  const std::string& which = cl.positionals[0];
  if (which != "store" && which != "actors" && which != "projections")
    return ctx.fail(bad_input(
        fmt::format("unknown benchmark {} (known: store, actors, projections)", printable(which))));
  double scale = 1.0;
  if (const auto* text = cl.value("scale")) {
    auto v = parse_positive_number("scale", *text);
    if (!v)
      return ctx.fail(v.error());
    scale = *v;
  }
  auto url = ctx.database_url();
  if (!url)
    return ctx.fail(url.error());
  // The benchmarks work in a schema of their own, so they need no migrated store here.
  const bench::options o{.url = *url, .json = ctx.json_output(), .scale = scale};
  if (which == "actors")
    return bench::run_actors(o, ctx.settings());
  if (which == "projections") {
    // `mire bench projections` starts copies of itself as replica processes (takeover).
    const char* id = std::getenv("MIRE_BENCH_REPLICA");
    const char* schema = std::getenv("MIRE_BENCH_SCHEMA");
    if (id && schema)
      return bench::run_projection_replica(o, schema, id);
    return bench::run_projections(o, "/proc/self/exe");
  }
  return bench::run_store(o);
}

int run_config(const context& ctx, const command_line& cl) {
  if (auto ok = expect_positionals(cl, {}); !ok)
    return ctx.fail(ok.error());
  const auto& s = ctx.settings();
  if (!ctx.json_output()) {
    fmt::print("{}", config::describe(s));
    return 0;
  }
  const auto& st = s.runtime.store;
  const auto& ag = s.runtime.aggregates;
  auto us = [](auto d) { return std::chrono::duration_cast<std::chrono::microseconds>(d).count(); };
  // Durations in microseconds; the URL is left out (it may carry a password).
  ctx.print({{"file", s.file},
             {"replica_id", s.replica_id},
             {"database",
              {{"embedded", s.store.url.empty()},
               {"schema", s.store.schema},
               {"pool_size", s.store.pool_size},
               {"connect_timeout_us", us(std::chrono::seconds(s.store.connect_timeout_seconds))}}},
             {"store",
              {{"workers", st.workers},
               {"group_window_us", us(st.group_window)},
               {"max_group", st.max_group}}},
             {"aggregates",
              {{"snapshot_every", ag.snapshot_every},
               {"passivate_after_us", us(ag.passivate_after)},
               {"max_retries", ag.max_retries},
               {"store_timeout_us", us(ag.store_timeout)}}},
             {"scheduler", {{"policy", s.scheduler.policy}, {"threads", s.scheduler.threads}}},
             {"origin", s.origin}});
  return 0;
}

} // namespace mire::cli
