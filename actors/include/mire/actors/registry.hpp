// The registry of one aggregate type, for code that runs inside actors or needs the actors
// themselves (plain code uses runtime.hpp). The registry routes each command to the actor of its
// aggregate id, spawning it on demand (it loads itself from the log); an actor idle for
// passivate_after stops and is forgotten; a crashed one is forgotten and respawned by the next
// command, reloading from the log.
//
// Protocol (errors are caf::error of category "mire", see errors.hpp):
//   (command_atom, id, detail::erased_command) -> detail::erased_reply  accepted or rejected
//   (state_atom, id)                           -> detail::erased_reply  kind state, caught up
//   (find_atom, id)                            -> caf::actor            the live actor, if any
// When an aggregate actor dies, its command in progress fails with commit_in_doubt (it may have
// been recorded); commands queued behind it that a plain thread sent (runtime::send) fail with
// unavailable (they never ran), those sent by actor code with commit_in_doubt. When the registry
// itself stops (shutdown), every pending command fails with commit_in_doubt.
#pragma once

#include <string>

#include <caf/actor.hpp>
#include <caf/allowed_unsafe_message_type.hpp>
#include <caf/atom.hpp>

#include "mire/actors/detail/model.hpp"
#include "mire/actors/runtime.hpp"

// Commands, events and states are the user's C++ types, passed by pointer within one process.
// They cannot cross the network as they are; forwarding to another replica (the cluster) will
// need a codec for commands.
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(mire::actors::detail::erased_command)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(mire::actors::detail::erased_reply)

namespace mire::actors {

using command_atom = caf::atom_constant<caf::atom("command")>;
using state_atom = caf::atom_constant<caf::atom("state")>;
using find_atom = caf::atom_constant<caf::atom("find")>;

/// The registry actor of aggregate type A in `rt`.
template <aggregate_root A> caf::actor registry_of(runtime& rt) {
  return rt.registry(typeid(A), &detail::make_model<A>);
}

} // namespace mire::actors
