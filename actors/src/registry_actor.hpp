// Internal: spawning the registry of one aggregate type (its aggregate actors live in
// registry_actor.cpp too; they share a private protocol).
#pragma once

#include <memory>

#include <caf/fwd.hpp>

#include "mire/actors/detail/model.hpp"
#include "mire/actors/options.hpp"
#include "mire/actors/store_actor.hpp"

namespace mire::actors::detail {

/// One aggregate type as the runtime knows it.
struct aggregate_type {
  model_factory make;
  aggregate_options options;
};

/// A registry for `type` whose aggregate actors use `store`. Exiting it stops its actors.
caf::actor spawn_registry(caf::actor_system& system, std::shared_ptr<const aggregate_type> type,
                          store_actor store);

} // namespace mire::actors::detail
