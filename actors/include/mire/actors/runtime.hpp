// The actor runtime seen from plain C++ code: send a command to an aggregate by id and wait for
// its typed outcome, or load an aggregate's current state. No CAF in here (see detail/model.hpp);
// actor code reaches the same actors through registry.hpp.
//
//   auto rt = mire::actors::runtime::start(store).value();
//   auto r = rt.send<account>("account-42", deposit{100}, 2s);
//   if (r)                 use r->version, r->events
//   else if (r.rejected()) r.rejection().code == "insufficient_funds"
//   else                   r.error().code: version_conflict, unavailable, timeout, commit_in_doubt
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <typeindex>
#include <utility>
#include <variant>
#include <vector>

#include "mire/actors/decision.hpp"
#include "mire/actors/detail/model.hpp"
#include "mire/actors/options.hpp"
#include "mire/store/event_store.hpp"

namespace caf {
class actor;
class actor_system;
class actor_system_config;
} // namespace caf

namespace mire::actors {

/// A command that went through: its events are committed and applied.
template <class A> struct accepted {
  int64_t version = 0;                   ///< the stream's version after the command
  std::vector<typename A::event> events; ///< what it recorded (empty: nothing to do)
  int retries = 0; ///< times it was decided again because another writer had moved the stream on
};

/// What a command came to: accepted, rejected by the aggregate's rules, or failed. A rejection
/// is the aggregate's answer and retrying it is pointless; a failure is the system's
/// (version_conflict after the retries, unavailable, timeout, commit_in_doubt: outcome unknown).
template <class A> class command_result {
public:
  command_result(accepted<A> a) : v_(std::move(a)) {}
  command_result(mire::rejected r) : v_(std::move(r)) {}
  command_result(mire::error e) : v_(std::move(e)) {}

  /// True when accepted.
  explicit operator bool() const noexcept { return v_.index() == 0; }
  const accepted<A>& operator*() const { return std::get<0>(v_); }
  const accepted<A>* operator->() const { return &std::get<0>(v_); }

  bool rejected() const noexcept { return v_.index() == 1; }
  const mire::rejected& rejection() const { return std::get<1>(v_); }

  bool failed() const noexcept { return v_.index() == 2; }
  const mire::error& error() const { return std::get<2>(v_); }

private:
  std::variant<accepted<A>, mire::rejected, mire::error> v_;
};

/// An aggregate's state as of a version.
template <class A> struct loaded {
  A state;
  int64_t version = 0;
};

/// Sets a valid scheduler policy and thread count (validate) on `cfg`, before its actor system
/// is constructed.
void configure_scheduler(caf::actor_system_config& cfg, const scheduler_options& options);

/// An actor system on `cfg` that any thread may destroy: CAF 0.17 would otherwise wait, in the
/// destructor, for the constructing thread to end. Use it for a system a runtime borrows.
std::unique_ptr<caf::actor_system> make_actor_system(caf::actor_system_config& cfg);

/// Owns (or borrows) an actor system, the store actor in front of the event store, and one
/// registry per aggregate type, created on first use. Thread-safe: any thread may send.
class runtime {
public:
  /// Starts a runtime with its own actor system. bad_input names an invalid option.
  static result<runtime> start(event_store store, runtime_options options = {});
  /// Starts a runtime on `system`, which must outlive it (for programs that run their own
  /// actors; register the error category with add_mire_types, errors.hpp, for readable logs).
  static result<runtime> start(caf::actor_system& system, event_store store,
                               runtime_options options = {});

  runtime(runtime&&) noexcept;
  runtime& operator=(runtime&&) noexcept;
  /// Stops the runtime's actors; with its own actor system, waits until they are gone.
  ~runtime();

  /// Sets the policy of aggregate type A; before A's first use (bad_input afterwards).
  template <aggregate_root A> result<void> configure(aggregate_options options) {
    return configure_erased(typeid(A), &detail::make_model<A>, options);
  }

  /// Sends `command` to the aggregate with stream id `id` (spawning and loading it if needed)
  /// and waits at most `timeout` for its outcome. Every event recorded carries `metadata`
  /// (JSON object text). On timeout the command may still be recorded afterwards.
  template <aggregate_root A>
  command_result<A> send(std::string id, typename A::command command,
                         std::chrono::milliseconds timeout, std::string metadata = "{}") {
    detail::erased_command cmd{std::make_shared<const typename A::command>(std::move(command)),
                               std::move(metadata)};
    auto r = send_erased(typeid(A), &detail::make_model<A>, std::move(id), std::move(cmd), timeout);
    if (!r)
      return std::move(r).error();
    if (r->kind == detail::erased_reply::rejected)
      return std::move(r->rejection);
    const auto& events = *static_cast<const std::vector<typename A::event>*>(r->payload.get());
    return accepted<A>{r->version, events, r->retries};
  }

  /// The aggregate's state, caught up with the log (including other writers' events).
  template <aggregate_root A>
  result<loaded<A>> load(std::string id, std::chrono::milliseconds timeout) {
    auto r = load_erased(typeid(A), &detail::make_model<A>, std::move(id), timeout);
    if (!r)
      return std::move(r).error();
    return loaded<A>{*static_cast<const A*>(r->payload.get()), r->version};
  }

  /// The actor system the runtime's actors live in.
  caf::actor_system& system();

  /// The registry actor of one aggregate type (created on first use); see registry.hpp for
  /// its messages and registry_of<A>().
  caf::actor registry(std::type_index type, detail::model_factory make);

private:
  struct impl;
  explicit runtime(std::unique_ptr<impl> p);
  result<void> configure_erased(std::type_index type, detail::model_factory make,
                                aggregate_options options);
  result<detail::erased_reply> send_erased(std::type_index type, detail::model_factory make,
                                           std::string id, detail::erased_command command,
                                           std::chrono::milliseconds timeout);
  result<detail::erased_reply> load_erased(std::type_index type, detail::model_factory make,
                                           std::string id, std::chrono::milliseconds timeout);
  std::unique_ptr<impl> impl_;
};

} // namespace mire::actors
