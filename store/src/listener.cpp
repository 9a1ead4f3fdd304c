// log_listener: LISTEN on a connection of its own, with reconnection after a failure; see
// listener.hpp.
#include "mire/store/listener.hpp"

#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <string>

#include <fmt/format.h>

#include "pg.hpp"

namespace mire {

namespace {

using clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr milliseconds first_backoff{100};
constexpr milliseconds max_backoff{5000};

// Sleeps up to `d`; a signal ends the sleep early (poll() is never restarted after a handler).
void sleep_interruptibly(milliseconds d) {
  if (d.count() > 0)
    ::poll(nullptr, 0, static_cast<int>(d.count()));
}

// Rounded up: a sleep of that long reaches `t` (rounding down would wake just before it, again
// and again).
int millis_until(clock::time_point t) {
  const auto left = std::chrono::ceil<milliseconds>(t - clock::now()).count();
  return static_cast<int>(std::clamp<int64_t>(left, 0, INT32_MAX));
}

} // namespace

struct log_listener::impl {
  store_options options;
  std::unique_ptr<pg::connection> conn;
  milliseconds backoff{0};          // 0: the last attempt did not fail
  clock::time_point next_attempt{}; // no connection attempt before this

  explicit impl(store_options o) : options(std::move(o)) {}

  result<void> connect() {
    if (conn && conn->healthy())
      return {};
    conn.reset();
    auto c = pg::connection::open(options.url, options.connect_timeout_seconds,
                                  options.application_name);
    if (c) {
      // A server shutting down sends its FATAL asynchronously; libpq's default would print it
      // on stderr. The break is reported as an error value instead.
      PQsetNoticeProcessor((*c)->raw(), [](void*, const char*) {}, nullptr);
      // The channel is a fixed identifier; the schema filter is applied to the payloads.
      auto l = (*c)->exec(fmt::format("LISTEN {}", log_channel));
      if (l) {
        conn = std::move(*c);
        backoff = milliseconds{0};
        return {};
      }
      return failed(std::move(l).error());
    }
    return failed(std::move(c).error());
  }

  error failed(error e) {
    conn.reset();
    backoff = backoff.count() == 0 ? first_backoff : std::min(backoff * 2, max_backoff);
    next_attempt = clock::now() + backoff;
    if (e.code != errc::unavailable)
      e = error{errc::unavailable, fmt::format("listening for appends failed: {}", e.message)};
    return e;
  }

  // Takes the notifications libpq has read; true when one was for our schema.
  bool drain() {
    bool ours = false;
    while (PGnotify* n = PQnotifies(conn->raw())) {
      ours = ours || (n->extra != nullptr && options.schema == n->extra);
      PQfreemem(n);
    }
    return ours;
  }

  result<bool> wait(milliseconds timeout) {
    const auto deadline = clock::now() + timeout;
    if (!conn || !conn->healthy()) {
      // After a failure, wait out the backoff (within our own timeout) before trying again.
      if (clock::now() < next_attempt) {
        sleep_interruptibly(milliseconds(millis_until(std::min(next_attempt, deadline))));
        if (clock::now() < next_attempt)
          return false;
      }
      if (auto c = connect(); !c)
        return c.error();
      return true;
    }
    PGconn* raw = conn->raw();
    for (;;) {
      if (drain())
        return true;
      const int left = millis_until(deadline);
      if (left <= 0)
        return false;
      pollfd p{PQsocket(raw), POLLIN, 0};
      const int ready = ::poll(&p, 1, left);
      if (ready < 0) {
        if (errno == EINTR)
          return false;
        return failed(error{errc::unavailable,
                            fmt::format("waiting for notifications failed (errno {})", errno)});
      }
      if (ready > 0 && (PQconsumeInput(raw) == 0 || PQstatus(raw) != CONNECTION_OK)) {
        // What arrived before the break still counts.
        const bool ours = drain();
        std::string why = PQerrorMessage(raw);
        while (!why.empty() && (why.back() == '\n' || why.back() == ' '))
          why.pop_back();
        auto e = failed(
            error{errc::unavailable, fmt::format("the notification connection broke: {}", why)});
        if (ours)
          return true;
        return e;
      }
    }
  }
};

log_listener::log_listener(store_options options)
    : impl_(std::make_unique<impl>(std::move(options))) {}

log_listener::log_listener(const event_store& store) : log_listener(store.options()) {}

log_listener::log_listener(log_listener&&) noexcept = default;
log_listener& log_listener::operator=(log_listener&&) noexcept = default;
log_listener::~log_listener() = default;

result<void> log_listener::connect() {
  return impl_->connect();
}

result<bool> log_listener::wait(std::chrono::milliseconds timeout) {
  return impl_->wait(timeout);
}

bool log_listener::connected() const {
  return impl_->conn && impl_->conn->healthy();
}

} // namespace mire
