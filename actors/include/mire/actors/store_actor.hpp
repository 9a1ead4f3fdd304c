// The store actor: the only door to Postgres for actors. An event-based coordinator that queues
// requests and answers them, and blocking workers (detached actors, each using one connection at
// a time) that take work from the queue themselves as soon as they are free. Appends to different
// streams that queue up while every worker is committing (or within the group window) go to
// Postgres as one group: one transaction, one round trip, and each append still gets its own
// outcome (event_store::append_group). Two appends to one stream are never in flight at once:
// the second waits for the first, so one process's appends to a stream keep their order.
//
// Protocol (errors are caf::error of category "mire", see errors.hpp):
//   (append_atom, stream_append)  -> append_result   version_conflict for a stale expectation
//   (append_atom, stream_append, commit_hook) -> append_result
//                                 the same; the hook also runs the moment the append commits
//   (load_atom, load_request)     -> stream_load     a snapshot (if usable) and the events after
//   (snapshot_atom, snapshot)     -> ()              saves a snapshot (reply only to requests)
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <caf/allowed_unsafe_message_type.hpp>
#include <caf/atom.hpp>
#include <caf/fwd.hpp>
#include <caf/replies_to.hpp>
#include <caf/typed_actor.hpp>

#include "mire/actors/inspect.hpp"
#include "mire/actors/options.hpp"
#include "mire/store/event_store.hpp"

namespace mire::actors {

using append_atom = caf::atom_constant<caf::atom("append")>;
using load_atom = caf::atom_constant<caf::atom("load")>;
using snapshot_atom = caf::atom_constant<caf::atom("snapshot")>;

/// Asks for a stream from `from_version` on; with a snapshot schema >= 0, a snapshot of that
/// schema covering at least from_version may replace the events it covers.
struct load_request {
  std::string stream_id;
  int64_t from_version = 1;
  int32_t snapshot_schema = -1;
};

/// A loaded stream: the snapshot (when has_snapshot) and the events after it, in order.
struct stream_load {
  bool has_snapshot = false;
  mire::snapshot snapshot;
  std::vector<recorded_event> events;
};

template <class Inspector> typename Inspector::result_type inspect(Inspector& f, load_request& x) {
  return f(caf::meta::type_name("load_request"), x.stream_id, x.from_version, x.snapshot_schema);
}

template <class Inspector> typename Inspector::result_type inspect(Inspector& f, stream_load& x) {
  return f(caf::meta::type_name("stream_load"), x.has_snapshot, x.snapshot, x.events);
}

/// Runs on a store worker's thread the moment an append has committed, before the reply travels
/// back through the actors: a plain thread waiting for the outcome (runtime::send) goes on one
/// thread hop earlier. It must be quick and must not block. It does not run when the append
/// fails.
using commit_hook = std::shared_ptr<const std::function<void(const mire::append_result&)>>;

/// Handle of a store actor.
using store_actor =
    caf::typed_actor<caf::replies_to<append_atom, mire::stream_append>::with<mire::append_result>,
                     caf::replies_to<append_atom, mire::stream_append,
                                     commit_hook>::with<mire::append_result>,
                     caf::replies_to<load_atom, load_request>::with<stream_load>,
                     caf::reacts_to<snapshot_atom, mire::snapshot>>;

/// Spawns a store actor and its workers on `system`, all sharing `store` (whose pool_size must
/// be at least options.workers). Exiting the store actor stops its workers. bad_input names an
/// invalid option.
result<store_actor> spawn_store_actor(caf::actor_system& system, event_store store,
                                      store_actor_options options = {});

} // namespace mire::actors

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(mire::actors::commit_hook)
