// `mire tail`: follows the global log live. It reads pages with read_all, which never skips an
// event whose transaction commits late (rule 3 of docs/ARCHITECTURE.md), and when nothing more is
// visible waits on LISTEN/NOTIFY (log_listener) with a poll fallback, since a notification is only
// a hint: the horizon can also move without one (a long transaction that wrote nothing ends).
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <optional>
#include <sstream>

#include <fmt/format.h>

#include "commands.hpp"
#include "mire/store/listener.hpp"

namespace mire::cli {

namespace {

constexpr std::size_t page_size = 1000;
// The longest a new event waits to be seen when no notification comes.
constexpr std::chrono::milliseconds poll_interval{500};

volatile sig_atomic_t stop_requested = 0;

void on_stop(int) {
  stop_requested = 1;
}

// SIGINT and SIGTERM end the tail after the page in hand. No SA_RESTART: a signal also ends a
// wait for notifications at once.
void catch_stop_signals() {
  struct sigaction sa {};
  sa.sa_handler = on_stop;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

// --type T or --type T1,T2: event types cannot contain a comma, so it separates a list.
result<std::vector<std::string>> types_option(const command_line& cl) {
  std::vector<std::string> types;
  const auto* text = cl.value("type");
  if (text == nullptr)
    return types;
  // getline drops a trailing empty item ("a,"): refuse that one up front.
  if (!text->empty() && text->back() == ',')
    return bad_input(
        fmt::format("--type {} has an empty event type (give T or T1,T2,...)", printable(*text)));
  std::stringstream in(*text);
  for (std::string t; std::getline(in, t, ',');) {
    if (t.empty())
      return bad_input(
          fmt::format("--type {} has an empty event type (give T or T1,T2,...)", printable(*text)));
    types.push_back(t);
  }
  if (types.empty())
    return bad_input("--type needs an event type, got ''");
  return types;
}

} // namespace

int run_tail(const context& ctx, const command_line& cl) {
  if (auto ok = expect_positionals(cl, {}); !ok)
    return ctx.fail(ok.error());
  auto o = log_read_options_of(cl);
  if (!o)
    return ctx.fail(o.error());
  const auto limit = o->limit;
  auto types = types_option(cl);
  if (!types)
    return ctx.fail(types.error());
  const log_filter filter{.category = o->category, .types = *types};

  auto store = ctx.open_store();
  if (!store)
    return ctx.fail(store.error());
  catch_stop_signals();
  // Listening before the first read: an append committed between a read that comes back empty
  // and the wait after it still wakes the wait. If it cannot listen, it polls.
  log_listener listener(*store);
  (void)listener.connect();
  auto start = read_start(*o, *store);
  if (!start)
    return ctx.fail(start.error());
  auto after = *start;

  int64_t printed = 0;
  bool first_read = true;
  bool reported_outage = false;
  while (!stop_requested && (!limit || printed < *limit)) {
    const auto want = limit ? std::min<std::size_t>(page_size, *limit - printed) : page_size;
    auto page = store->read_all(after, want, filter);
    if (!page) {
      // A database that cannot be reached at the start is an error (exit 4), as for every
      // command; once following, an outage is waited out: the checkpoint is kept, so nothing is
      // skipped when it comes back.
      if (first_read || page.error().code != errc::unavailable)
        return ctx.fail(page.error());
      if (!reported_outage) {
        // One line, as every mire error: libpq's messages span several.
        std::string why = page.error().message;
        for (auto& c : why)
          if (c == '\n' || c == '\t')
            c = ' ';
        fmt::print(stderr, "mire: tail: {}; retrying\n", why);
      }
      reported_outage = true;
      std::fflush(stderr);
      (void)listener.wait(poll_interval);
      continue;
    }
    first_read = false;
    if (reported_outage)
      fmt::print(stderr, "mire: tail: the database is back\n");
    reported_outage = false;
    if (page->events.empty()) {
      // Whatever the wait's outcome (woken, timed out, interrupted, failed), read again.
      if (auto woken = listener.wait(poll_interval); !woken && !stop_requested)
        ::poll(nullptr, 0, static_cast<int>(poll_interval.count()));
      continue;
    }
    for (const auto& e : page->events)
      print_event(ctx, e);
    printed += static_cast<int64_t>(page->events.size());
    after = page->next;
    // A pipe sees each page at once, not when a buffer fills.
    std::fflush(stdout);
  }
  std::fflush(stdout);
  return 0;
}

} // namespace mire::cli
