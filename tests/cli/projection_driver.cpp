// A minimal replica for the `mire projection*` tests (tests/cli/projections_test.sh): drives two
// projections with the store's projector under leases, no actors, until SIGTERM or SIGINT, then
// releases its leases. It waits for appends with log_listener (poll fallback).
//   tally  every event of category "item" into table public.items (one row per event id); an
//          event of type "poison" is refused and parked (poison_policy::park)
//   halt   the same, into public.halted, but a poison event stops it (poison_policy::stop)
// It prints "gained NAME FENCE" and "lost NAME" lines, flushed at once.
//
// usage: projection_driver URL SCHEMA OWNER
#include <poll.h>
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "mire/store/lease.hpp"
#include "mire/store/listener.hpp"
#include "mire/store/projection.hpp"

namespace {

using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

volatile sig_atomic_t stop_requested = 0;
void on_stop(int) {
  stop_requested = 1;
}

constexpr auto ttl = 2000ms;
constexpr auto renew_every = 500ms;

mire::projection_definition items(std::string name, std::string table, mire::poison_policy policy) {
  mire::projection_definition d;
  d.name = std::move(name);
  d.filter.category = "item";
  d.batch_size = 20;
  d.tables = {table};
  d.on_poison = policy;
  d.setup = [table](mire::transaction& tx,
                    const mire::projection_context& ctx) -> mire::result<void> {
    auto r = tx.execute("CREATE TABLE IF NOT EXISTS " + ctx.table(table) +
                        " (event_id uuid PRIMARY KEY, stream_id text NOT NULL, "
                        "type text NOT NULL)");
    if (!r)
      return r.error();
    return {};
  };
  d.handler = [table](mire::transaction& tx, const mire::recorded_event& e,
                      const mire::projection_context& ctx) -> mire::result<void> {
    if (e.type == "poison")
      return mire::bad_input("poison event " + e.event_id + " refused by the handler");
    auto r = tx.execute("INSERT INTO " + ctx.table(table) +
                            " VALUES ($1::uuid, $2, $3) ON CONFLICT DO NOTHING",
                        {e.event_id, e.stream_id, e.type});
    if (!r)
      return r.error();
    return {};
  };
  return d;
}

struct driven {
  mire::projector projector;
  std::optional<mire::lease> held;
  clock_type::time_point renewed{};
  bool caught_up = false;
};

} // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: projection_driver URL SCHEMA OWNER\n");
    return 2;
  }
  const std::string owner = argv[3];
  struct sigaction sa {};
  sa.sa_handler = on_stop;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);

  auto store = mire::event_store::open({.url = argv[1], .schema = argv[2], .pool_size = 3});
  if (!store) {
    std::fprintf(stderr, "%s\n", store.error().what().c_str());
    return 4;
  }
  std::vector<driven> all;
  for (auto [name, table, policy] : {std::tuple{"tally", "items", mire::poison_policy::park},
                                     std::tuple{"halt", "halted", mire::poison_policy::stop}}) {
    auto p = mire::projector::create(*store, items(name, table, policy));
    if (!p) {
      std::fprintf(stderr, "%s\n", p.error().what().c_str());
      return 2;
    }
    all.push_back(driven{std::move(*p), std::nullopt, {}, false});
  }
  mire::log_listener listener(*store);
  (void)listener.connect();

  while (!stop_requested) {
    bool idle = true;
    for (auto& d : all) {
      const auto& name = d.projector.definition().name;
      const auto resource = mire::projection_resource(name);
      const auto now = clock_type::now();
      if (!d.held) {
        auto l = mire::acquire_lease(*store, resource, owner, ttl);
        if (!l || !*l)
          continue;
        d.held = **l;
        d.renewed = now;
        std::printf("gained %s %lld\n", name.c_str(), static_cast<long long>(d.held->fence_token));
        std::fflush(stdout);
      } else if (now - d.renewed >= renew_every) {
        auto ok = mire::renew_lease(*store, *d.held, ttl);
        if (ok && *ok) {
          d.renewed = now;
        } else if (ok || now - d.renewed >= ttl) {
          d.held.reset();
          std::printf("lost %s\n", name.c_str());
          std::fflush(stdout);
          continue;
        }
      }
      auto s = d.projector.step(*d.held);
      if (!s) {
        if (s.error().code == mire::errc::fenced_out) {
          d.held.reset();
          std::printf("lost %s\n", name.c_str());
          std::fflush(stdout);
        } else {
          std::fprintf(stderr, "%s: %s\n", name.c_str(), s.error().what().c_str());
        }
        continue;
      }
      idle = idle && s->caught_up;
    }
    if (idle) {
      // A notification, a timeout (poll) or a failure: in each case, step again.
      if (auto woken = listener.wait(200ms); !woken)
        ::poll(nullptr, 0, 200);
    }
  }
  for (auto& d : all)
    if (d.held)
      (void)mire::release_lease(*store, *d.held);
  return 0;
}
