// Internal: spawning the registry of one aggregate type (its aggregate actors live in
// registry_actor.cpp too; they share a private protocol), and the reply slot plain threads wait
// on.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>

#include <caf/allowed_unsafe_message_type.hpp>
#include <caf/fwd.hpp>

#include "mire/actors/detail/model.hpp"
#include "mire/actors/options.hpp"
#include "mire/actors/store_actor.hpp"
#include "store_queue.hpp"

namespace mire::actors::detail {

/// One aggregate type as the runtime knows it.
struct aggregate_type {
  model_factory make;
  aggregate_options options;
};

/// A one-shot answer that a plain thread waits for (runtime::send). The aggregate actor fills it
/// directly: no scoped actor per call and no CAF timeout (each of which costs thread wake-ups).
/// The first answer wins, so the registry can answer for an actor that died without racing it.
class reply_slot {
public:
  void settle(result<erased_reply> r) {
    {
      std::lock_guard lock{mutex_};
      if (value_)
        return;
      value_.emplace(std::move(r));
      settled_.store(true, std::memory_order_release);
    }
    cv_.notify_one();
  }
  bool settled() const { return settled_.load(std::memory_order_acquire); }
  /// The answer, or nullopt when none came within `timeout`.
  std::optional<result<erased_reply>> wait_for(std::chrono::milliseconds timeout) {
    std::unique_lock lock{mutex_};
    if (!cv_.wait_for(lock, timeout, [&] { return value_.has_value(); }))
      return std::nullopt;
    return std::move(value_);
  }

private:
  std::mutex mutex_;
  std::condition_variable cv_;
  std::optional<result<erased_reply>> value_;
  std::atomic<bool> settled_{false};
};

using reply_slot_ptr = std::shared_ptr<reply_slot>;

/// The live aggregate actors of one registry, shared with the plain threads that send to them
/// (see send_direct). Defined in registry_actor.cpp.
class routes;

/// A registry and its routing table.
struct registry_ref {
  caf::actor actor;
  std::shared_ptr<routes> table;
};

/// A registry for `type` whose aggregate actors use `store`. Exiting it stops its actors.
/// Besides the protocol of registry.hpp it takes (command_atom, id, erased_command,
/// reply_slot_ptr) and (state_atom, id, reply_slot_ptr): the answer goes into the slot.
registry_ref spawn_registry(caf::actor_system& system, std::shared_ptr<const aggregate_type> type,
                            store_ref store);

/// Hands a job from a plain thread straight to the live actor for `id`, as the registry would:
/// false when there is none (send the job to the registry then, which spawns one). Every command
/// of a type going through the one registry actor would queue them all behind it.
bool send_direct(routes& table, const std::string& id, bool is_command, erased_command& command,
                 const reply_slot_ptr& slot);

} // namespace mire::actors::detail

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(mire::actors::detail::reply_slot_ptr)
