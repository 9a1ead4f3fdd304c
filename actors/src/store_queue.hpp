// Internal: the aggregate actors' way to the store actor's work queue. An aggregate actor's
// append goes straight into the queue, and the worker that commits it answers the actor itself:
// no request to the coordinator and no response from it (two messages and two turns of the
// coordinator, which every command of the runtime would queue behind, per command). Loads and
// snapshots, and everyone else's appends, keep to the store actor's protocol.
#pragma once

#include <cstdint>
#include <memory>

#include <caf/atom.hpp>
#include <caf/fwd.hpp>

#include "mire/actors/store_actor.hpp"

namespace mire::actors::detail {

/// The queue of one store actor (defined in store_actor.cpp).
class store_queue;

/// A store actor and its queue.
struct store_ref {
  store_actor actor;
  std::shared_ptr<store_queue> queue;
};

/// spawn_store_actor, keeping the queue for submit_append.
result<store_ref> spawn_store(caf::actor_system& system, event_store store,
                              store_actor_options options);

/// The answer to a submitted append: (appended_atom, call, append_result | caf::error).
using appended_atom = caf::atom_constant<caf::atom("appended")>;

/// Queues `a` for the next group, as (append_atom, a, hook) to the store actor would; the worker
/// that commits it runs `hook` and answers `reply_to` with `call`. False when the store actor
/// has stopped (nothing was queued).
bool submit_append(store_queue& queue, stream_append a, commit_hook hook,
                   const caf::actor_addr& reply_to, uint64_t call);

} // namespace mire::actors::detail
