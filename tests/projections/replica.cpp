// A replica for the multi-process projection tests: one process of "the application", running the
// runner of the `counts` projection under its own replica id until SIGTERM (or until its parent is
// gone). It prints what its runner reports, one line each, flushed at once:
//   gained FENCE       it drives the projection under lease fence FENCE
//   lost               it stopped driving (lease lost or released)
//   stopped ERROR      the projection stopped on a poison event (a test failure)
//
// usage: replica URL REPLICA_ID [TTL_MS]
//
// The read model checks itself: per stream it holds the count of events applied and the last
// version, and an event that is not exactly the next version of its stream (one applied twice,
// one skipped) is refused, which stops the projection with the error recorded. So "the read model
// is exact" needs no trust in the code under test: it would have stopped.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include <caf/all.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "mire/actors/errors.hpp"
#include "mire/actors/projection.hpp"
#include "projections/counts.hpp"

namespace {

std::atomic<bool> stop_requested{false};

void on_term(int) { stop_requested = true; }

} // namespace

int main(int argc, char** argv) {
  using namespace std::chrono_literals;
  if (argc < 3) {
    std::fprintf(stderr, "usage: replica URL REPLICA_ID [TTL_MS]\n");
    return 2;
  }
  const std::string url = argv[1], id = argv[2];
  const auto ttl = std::chrono::milliseconds(argc > 3 ? std::stoi(argv[3]) : 1000);
  signal(SIGTERM, on_term);
  signal(SIGINT, on_term);
  const pid_t parent = getppid();

  auto store = mire::event_store::open({.url = url, .pool_size = 2});
  if (!store) {
    std::fprintf(stderr, "%s: %s\n", id.c_str(), store.error().what().c_str());
    return 4;
  }
  caf::actor_system_config cfg;
  mire::actors::add_mire_types(cfg);
  caf::actor_system system{cfg};
  mire::actors::runner_options options;
  options.owner = id;
  options.lease_ttl = ttl;
  options.poll = 100ms;
  auto runner =
      mire::actors::spawn_projection_runner(system, *store, mire::test::counts_projection(), options);
  if (!runner) {
    std::fprintf(stderr, "%s: %s\n", id.c_str(), runner.error().what().c_str());
    return 2;
  }
  bool held = false, stopped = false;
  caf::scoped_actor self{system};
  while (!stop_requested && getppid() == parent) {
    self->request(*runner, 2s, mire::actors::status_atom::value)
        .receive(
            [&](mire::actors::runner_status& s) {
              if (s.held && !held)
                std::printf("gained %lld\n", static_cast<long long>(s.fence_token));
              if (!s.held && held)
                std::printf("lost\n");
              if (s.stopped && !stopped)
                std::printf("stopped %s\n", s.last_error.c_str());
              held = s.held;
              stopped = s.stopped;
              std::fflush(stdout);
            },
            [&](caf::error&) {});
    std::this_thread::sleep_for(20ms);
  }
  // Exiting the runner releases the lease, so a peer takes over at once.
  self->send_exit(*runner, caf::exit_reason::user_shutdown);
  return 0;
}
