// The projection commands of `mire`: projections, projection rebuild|reset|resume|dead-letters|
// skip|retry, and leases. They act on the stored state only (store/projection.hpp); the work is
// done by whichever replica holds a projection's lease, so `rebuild` asks and then follows.
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <optional>
#include <thread>

#include <fmt/format.h>

#include "commands.hpp"
#include "mire/store/lease.hpp"
#include "mire/store/projection.hpp"

namespace mire::cli {

namespace {

using clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

// How often `rebuild` looks at the projection's status while it follows a rebuild.
constexpr auto follow_interval = 200ms;
// After this long without a replica holding the lease, `rebuild` says it is waiting for one.
constexpr auto driverless_grace = 2s;
// Plain (not terminal) progress lines: one at the start, then at most one per this interval.
constexpr auto plain_progress_interval = 5s;

// Text fields are separated by tabs; a stored error message may hold any character.
std::string one_field(std::string_view text) {
  if (text.empty())
    return "-";
  std::string out(text);
  for (auto& c : out)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7F)
      c = ' ';
  return out;
}

json or_null(const std::string& text) {
  return text.empty() ? json(nullptr) : json(text);
}

// Seconds with millisecond precision: enough for lag, and short.
double rounded(double seconds) {
  return std::round(seconds * 1000) / 1000;
}

// Share of a rebuild done, in percent: what it applied out of what it applied plus what it still
// has to read.
int percent_of(int64_t applied, int64_t left) {
  if (applied + left <= 0)
    return 0;
  return static_cast<int>(applied * 100 / (applied + left));
}

std::string rebuild_text(const projection_status& s) {
  if (s.rebuild_generation > 0)
    return fmt::format("g{} {}%", s.rebuild_generation,
                       percent_of(s.rebuild_events_applied, s.rebuild_lag_events));
  return s.rebuild_requested ? "requested" : "-";
}

json status_json(const projection_status& s) {
  json rebuild = nullptr;
  if (s.rebuild_generation > 0)
    rebuild = {{"generation", s.rebuild_generation},
               {"checkpoint", s.rebuild_position.to_string()},
               {"events_applied", s.rebuild_events_applied},
               {"lag_events", s.rebuild_lag_events}};
  return {{"name", s.name},
          {"state", s.state},
          {"last_error", or_null(s.error)},
          {"owner", or_null(s.owner)},
          {"fence_token", s.fence_token},
          {"lease_held", s.lease_held},
          {"live_generation", s.live_generation},
          {"checkpoint", s.position.to_string()},
          {"events_applied", s.events_applied},
          {"lag_events", s.lag_events},
          {"lag_seconds", rounded(s.lag_seconds)},
          {"parked", s.parked},
          {"last_event_at", or_null(s.last_event_at)},
          {"updated_at", or_null(s.updated_at)},
          {"rebuild_requested", s.rebuild_requested},
          {"rebuild", rebuild}};
}

// NAME STATE OWNER FENCE GENERATION CHECKPOINT APPLIED LAG_EVENTS LAG_SECONDS PARKED REBUILD
// ERROR, separated by tabs.
void print_status(const context& ctx, const projection_status& s) {
  if (ctx.json_output()) {
    ctx.print(status_json(s));
    return;
  }
  fmt::print("{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{:.3f}\t{}\t{}\t{}\n", s.name, s.state,
             s.lease_held ? one_field(s.owner) : "-", s.fence_token, s.live_generation,
             s.position.to_string(), s.events_applied, s.lag_events, s.lag_seconds, s.parked,
             rebuild_text(s), one_field(s.error));
}

// The options of `mire projection` belong to one action each.
result<void> only_options(const command_line& cl, std::string_view action,
                          std::initializer_list<std::string_view> allowed) {
  for (std::string_view name : {"no-wait", "timeout", "to"}) {
    if (!cl.has(name))
      continue;
    if (std::find(allowed.begin(), allowed.end(), name) == allowed.end())
      return bad_input(fmt::format("option --{} is not for 'mire projection {}' (see 'mire help')",
                                   name, action));
  }
  return {};
}

result<int64_t> dead_letter_id(std::string_view text) {
  int64_t v = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc{} || end != text.data() + text.size() || v < 1)
    return bad_input(fmt::format("dead letter id {} is not a positive integer (see 'mire "
                                 "projection dead-letters NAME')",
                                 printable(text)));
  return v;
}

// Follows a requested rebuild of `name` until a generation after `from_generation` is live:
// progress on stdout (a bar redrawn in place on a terminal, a few lines otherwise, objects with
// --json), a note when no replica drives the projection, and a timeout.
int follow_rebuild(const context& ctx, event_store& store, const std::string& name,
                   int32_t from_generation, std::optional<std::chrono::milliseconds> timeout) {
  const bool tty = !ctx.json_output() && isatty(STDOUT_FILENO) == 1;
  const auto start = clock::now();
  std::size_t bar_width = 0; // length of the bar line drawn last (0: none on screen)
  auto end_bar = [&] {
    if (bar_width > 0)
      fmt::print("\n");
    bar_width = 0;
  };
  // For the rate: the first sight of the generation being built.
  int32_t rate_generation = 0;
  int64_t rate_base = 0;
  clock::time_point rate_since{};
  bool driverless = false; // no replica held the lease at the last look
  clock::time_point driverless_since{};
  bool said_driverless = false;
  bool plain_shown = false;
  clock::time_point last_plain{};
  int64_t last_json_applied = -1;

  for (;;) {
    auto s = projection_status_of(store, name);
    if (!s) {
      end_bar();
      return ctx.fail(s.error());
    }
    const auto now = clock::now();
    if (s->live_generation > from_generation) {
      if (bar_width > 0) // the bar made way for the outcome
        fmt::print("\r{}\r", std::string(bar_width, ' '));
      if (ctx.json_output()) {
        ctx.print({{"name", name}, {"live_generation", s->live_generation}, {"switched", true}});
      } else {
        const std::chrono::duration<double> took = now - start;
        fmt::print("rebuilt {}: generation {} is live ({} events applied, {:.1f}s)\n", name,
                   s->live_generation, s->events_applied, took.count());
      }
      std::fflush(stdout);
      return 0;
    }
    if (s->state == "stopped") {
      end_bar();
      return ctx.fail(error{
          errc::internal,
          fmt::format("projection {} is stopped ({}); the rebuild stays requested and starts "
                      "once it runs again ('mire projection resume {}' or 'mire projection reset')",
                      name, one_field(s->error), name)});
    }
    // Dropped by the driver: its setup failed, or it met an event the handler refuses under the
    // stop policy. The live generation goes on.
    if (!s->rebuild_requested && s->rebuild_generation == 0) {
      end_bar();
      return ctx.fail(error{errc::internal,
                            fmt::format("the rebuild of {} was dropped ({}); generation {} stays "
                                        "live",
                                        name, one_field(s->error), s->live_generation)});
    }

    // Nobody to do the work: say so once it has lasted a while (and again if it happens again).
    if (s->lease_held) {
      driverless = false;
      said_driverless = false;
    } else if (!driverless) {
      driverless = true;
      driverless_since = now;
    } else if (!said_driverless && now - driverless_since >= driverless_grace) {
      said_driverless = true;
      end_bar();
      if (ctx.json_output())
        ctx.print({{"name", name},
                   {"waiting_for_replica", true},
                   {"message", fmt::format("waiting for a replica to drive projection {}", name)}});
      else
        fmt::print("waiting for a replica to drive projection {} (no replica holds its lease)\n",
                   name);
    }

    const int32_t gen = s->rebuild_generation;
    const int64_t applied = s->rebuild_events_applied, left = s->rebuild_lag_events;
    if (gen > 0 && gen != rate_generation) {
      rate_generation = gen;
      rate_base = applied;
      rate_since = now;
    }
    const std::chrono::duration<double> rate_time = now - rate_since;
    const double rate =
        gen > 0 && rate_time.count() > 0.5 ? (applied - rate_base) / rate_time.count() : 0;
    const int pct = percent_of(applied, left);
    if (ctx.json_output()) {
      if (gen > 0 && applied != last_json_applied) {
        last_json_applied = applied;
        ctx.print({{"name", name},
                   {"generation", gen},
                   {"events_applied", applied},
                   {"lag_events", left},
                   {"percent", pct},
                   {"events_per_second", std::round(rate)},
                   {"owner", s->lease_held ? or_null(s->owner) : json(nullptr)}});
      }
    } else if (tty) {
      std::string line;
      if (gen > 0) {
        constexpr int width = 30;
        const int filled = pct * width / 100;
        line = fmt::format("rebuilding {}: generation {} [{}{}] {:3}% {}/{} events {:.0f} events/s",
                           name, gen, std::string(filled, '#'), std::string(width - filled, '-'),
                           pct, applied, applied + left, rate);
      } else {
        line = fmt::format("rebuilding {}: requested, waiting for the driver to start it", name);
      }
      const auto width = line.size();
      if (line.size() < bar_width)
        line.append(bar_width - line.size(), ' ');
      fmt::print("\r{}", line);
      bar_width = width;
    } else if (gen > 0 && (!plain_shown || now - last_plain >= plain_progress_interval)) {
      plain_shown = true;
      last_plain = now;
      fmt::print("rebuilding {}: generation {} {}% ({}/{} events, {:.0f} events/s)\n", name, gen,
                 pct, applied, applied + left, rate);
    }
    std::fflush(stdout);

    if (timeout && now - start >= *timeout) {
      end_bar();
      const std::chrono::duration<double> limit = *timeout;
      const auto where =
          gen > 0 ? fmt::format("generation {} at {}%", gen, pct) : std::string("not started yet");
      return ctx.fail(error{
          errc::timeout,
          fmt::format("the rebuild of {} did not finish within {:g}s ({}); it goes on: follow "
                      "it with 'mire projections'",
                      name, limit.count(), where)});
    }
    std::this_thread::sleep_for(follow_interval);
  }
}

int run_rebuild(const context& ctx, const command_line& cl, const std::string& name) {
  std::optional<std::chrono::milliseconds> timeout;
  if (const auto* text = cl.value("timeout")) {
    auto d = parse_duration("timeout", *text);
    if (!d)
      return ctx.fail(d.error());
    timeout = *d;
  }
  if (timeout && cl.has("no-wait"))
    return ctx.fail(bad_input("--timeout bounds the wait, and --no-wait does not wait: give one"));
  auto store = ctx.open_store();
  if (!store)
    return ctx.fail(store.error());
  auto before = projection_status_of(*store, name);
  if (!before)
    return ctx.fail(before.error());
  if (auto r = request_rebuild(*store, name); !r)
    return ctx.fail(r.error());
  if (cl.has("no-wait")) {
    if (ctx.json_output())
      ctx.print({{"name", name}, {"rebuild_requested", true}});
    else
      fmt::print("rebuild of {} requested\n", name);
    return 0;
  }
  return follow_rebuild(ctx, *store, name, before->live_generation, timeout);
}

int run_reset(const context& ctx, const command_line& cl, const std::string& name) {
  auto to_text = required(cl, "to");
  if (!to_text)
    return ctx.fail(to_text.error());
  auto to = checkpoint::start();
  if (*to_text != "start") {
    auto c = checkpoint::parse(*to_text);
    if (!c)
      return ctx.fail(bad_input(fmt::format("--to {} is neither a checkpoint TXID:POSITION (as "
                                            "printed with each event) nor 'start'",
                                            printable(*to_text))));
    to = *c;
  }
  auto store = ctx.open_store();
  if (!store)
    return ctx.fail(store.error());
  if (auto r = reset_projection(*store, name, to); !r)
    return ctx.fail(r.error());
  if (ctx.json_output())
    ctx.print({{"name", name}, {"checkpoint", to.to_string()}, {"state", "running"}});
  else
    fmt::print("reset {} to {}\n", name, to.to_string());
  return 0;
}

int run_resume(const context& ctx, const std::string& name) {
  auto store = ctx.open_store();
  if (!store)
    return ctx.fail(store.error());
  if (auto r = resume_projection(*store, name); !r)
    return ctx.fail(r.error());
  if (ctx.json_output())
    ctx.print({{"name", name}, {"state", "running"}});
  else
    fmt::print("resumed {}\n", name);
  return 0;
}

// ID STATUS GENERATION CHECKPOINT STREAM VERSION TYPE PARKED_AT REASON, separated by tabs.
int run_dead_letters(const context& ctx, const std::string& name) {
  auto store = ctx.open_store();
  if (!store)
    return ctx.fail(store.error());
  // dead_letters() of an unknown name is empty; a typo deserves to be told apart.
  if (auto s = projection_status_of(*store, name); !s)
    return ctx.fail(s.error());
  auto letters = dead_letters(*store, name);
  if (!letters)
    return ctx.fail(letters.error());
  for (const auto& d : *letters) {
    if (ctx.json_output())
      ctx.print({{"id", d.id},
                 {"projection", d.projection},
                 {"generation", d.generation},
                 {"status", d.status},
                 {"checkpoint", d.position.to_string()},
                 {"event_id", d.event_id},
                 {"stream_id", d.stream_id},
                 {"version", d.version},
                 {"type", d.event_type},
                 {"reason", d.error},
                 {"parked_at", d.parked_at}});
    else
      fmt::print("{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n", d.id, d.status, d.generation,
                 d.position.to_string(), d.stream_id, d.version, d.event_type, d.parked_at,
                 one_field(d.error));
  }
  return 0;
}

int run_dead_letter_action(const context& ctx, const std::string& action,
                           const std::string& id_text) {
  auto id = dead_letter_id(id_text);
  if (!id)
    return ctx.fail(id.error());
  auto store = ctx.open_store();
  if (!store)
    return ctx.fail(store.error());
  const bool skip = action == "skip";
  if (auto r = skip ? skip_dead_letter(*store, *id) : retry_dead_letter(*store, *id); !r)
    return ctx.fail(r.error());
  if (ctx.json_output())
    ctx.print({{"id", *id}, {"status", skip ? "skipped" : "retry"}});
  else if (skip)
    fmt::print("skipped dead letter {}\n", *id);
  else
    fmt::print("queued dead letter {} for another try\n", *id);
  return 0;
}

} // namespace

int run_projections(const context& ctx, const command_line& cl) {
  if (auto ok = expect_positionals(cl, {}); !ok)
    return ctx.fail(ok.error());
  auto store = ctx.open_store();
  if (!store)
    return ctx.fail(store.error());
  auto all = projection_statuses(*store);
  if (!all)
    return ctx.fail(all.error());
  for (const auto& s : *all)
    print_status(ctx, s);
  return 0;
}

int run_projection(const context& ctx, const command_line& cl) {
  if (cl.positionals.empty())
    return ctx.fail(bad_input("'mire projection' needs an action: rebuild, reset, resume, "
                              "dead-letters, skip or retry (see 'mire help')"));
  const std::string action = cl.positionals[0];
  const bool by_name =
      action == "rebuild" || action == "reset" || action == "resume" || action == "dead-letters";
  const bool by_id = action == "skip" || action == "retry";
  if (!by_name && !by_id)
    return ctx.fail(bad_input(fmt::format("unknown action {} for 'mire projection' (rebuild, "
                                          "reset, resume, dead-letters, skip or retry)",
                                          printable(action))));
  if (auto ok = expect_positionals(cl, {"an action", by_name ? "NAME" : "ID"}); !ok)
    return ctx.fail(ok.error());
  const std::string& arg = cl.positionals[1];
  if (action == "rebuild") {
    if (auto ok = only_options(cl, action, {"no-wait", "timeout"}); !ok)
      return ctx.fail(ok.error());
    return run_rebuild(ctx, cl, arg);
  }
  if (action == "reset") {
    if (auto ok = only_options(cl, action, {"to"}); !ok)
      return ctx.fail(ok.error());
    return run_reset(ctx, cl, arg);
  }
  if (auto ok = only_options(cl, action, {}); !ok)
    return ctx.fail(ok.error());
  if (action == "resume")
    return run_resume(ctx, arg);
  if (action == "dead-letters")
    return run_dead_letters(ctx, arg);
  return run_dead_letter_action(ctx, action, arg);
}

// RESOURCE OWNER FENCE HELD EXPIRES_AT, separated by tabs; HELD is yes or no.
int run_leases(const context& ctx, const command_line& cl) {
  if (auto ok = expect_positionals(cl, {}); !ok)
    return ctx.fail(ok.error());
  auto store = ctx.open_store();
  if (!store)
    return ctx.fail(store.error());
  auto leases = list_leases(*store);
  if (!leases)
    return ctx.fail(leases.error());
  for (const auto& l : *leases) {
    if (ctx.json_output())
      ctx.print({{"resource", l.resource},
                 {"owner", or_null(l.owner)},
                 {"fence_token", l.fence_token},
                 {"held", l.held},
                 {"expires_at", l.expires_at},
                 {"acquired_at", or_null(l.acquired_at)}});
    else
      fmt::print("{}\t{}\t{}\t{}\t{}\n", l.resource, one_field(l.owner), l.fence_token,
                 l.held ? "yes" : "no", l.expires_at);
  }
  return 0;
}

} // namespace mire::cli
