// Spawning a top-level actor from any thread without tying the actor system to that thread.
#pragma once

#include <utility>

#include <caf/actor_system.hpp>
#include <caf/logger.hpp>

namespace mire::actors::detail {

/// Keeps a plain thread from holding an actor system's logger. CAF 0.17 gives the system's
/// logger to every thread that constructs the system or spawns a top-level actor (a thread-local
/// reference), and ~actor_system waits until no thread holds it: an application thread that had
/// spawned one (a registry, on its first command of a type) would make a runtime destroyed on
/// another thread wait forever. Create it before the spawn; a thread that had no logger before
/// is left without one.
class no_lingering_logger {
public:
  no_lingering_logger() : had_(caf::logger::current_logger() != nullptr) {}
  no_lingering_logger(const no_lingering_logger&) = delete;
  no_lingering_logger& operator=(const no_lingering_logger&) = delete;
  ~no_lingering_logger() {
    if (!had_)
      caf::logger::set_current_actor_system(nullptr);
  }

private:
  bool had_;
};

/// system.spawn(xs...) from any thread (see no_lingering_logger).
template <class... Ts> auto spawn_top_level(caf::actor_system& system, Ts&&... xs) {
  no_lingering_logger guard;
  return system.spawn(std::forward<Ts>(xs)...);
}

} // namespace mire::actors::detail
