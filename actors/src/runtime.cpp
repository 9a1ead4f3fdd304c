// The runtime: an actor system (own or borrowed), the store actor, a registry per aggregate type,
// and blocking request/reply from plain threads through reply slots.
#include "mire/actors/runtime.hpp"

#include <mutex>
#include <unordered_map>
#include <utility>

#include <caf/all.hpp>

#include "mire/actors/errors.hpp"
#include "mire/actors/registry.hpp"
#include "mire/actors/store_actor.hpp"
#include "registry_actor.hpp"
#include "top_level.hpp"

namespace mire::actors {

struct runtime::impl {
  struct type_entry {
    std::shared_ptr<detail::aggregate_type> type;
    detail::registry_ref registry; ///< empty until the type's first use
  };

  // Declared before the handles below so that it is destroyed after them.
  std::unique_ptr<caf::actor_system_config> config;
  std::unique_ptr<caf::actor_system> own;
  caf::actor_system* system = nullptr;
  runtime_options options;
  detail::store_ref store;
  std::mutex mutex;
  std::unordered_map<std::type_index, type_entry> types;

  /// The registry of `type`, spawned on first use.
  detail::registry_ref registry(std::type_index type, detail::model_factory make);

  ~impl() {
    // Registries first: their aggregate actors (which may be waiting on the store actor) watch
    // them and exit with them; then the store actor, whose workers stop with it.
    for (auto& [type, entry] : types)
      if (entry.registry.actor)
        caf::anon_send_exit(entry.registry.actor, caf::exit_reason::user_shutdown);
    if (store.actor)
      caf::anon_send_exit(store.actor, caf::exit_reason::user_shutdown);
    types.clear();
    store = {};
    own.reset(); // waits until every actor of the system is done
  }
};

void configure_scheduler(caf::actor_system_config& cfg, const scheduler_options& options) {
  // CAF 0.17 names the policy with an atom (a compile-time literal).
  cfg.set("scheduler.policy", options.policy == "sharing" ? caf::atom("sharing")
                                                          : caf::atom("stealing"));
  if (options.policy == "spinning") {
    // Work stealing without its middle phase (polls 50 µs apart, which each message lands in):
    // a short burst of polls (~25 µs), then asleep until a message wakes the thread.
    cfg.set("work-stealing.aggressive-poll-attempts", 3000);
    cfg.set("work-stealing.moderate-poll-attempts", 0);
  }
  if (options.threads > 0)
    cfg.set("scheduler.max-threads", options.threads);
}

std::unique_ptr<caf::actor_system> make_actor_system(caf::actor_system_config& cfg) {
  detail::no_lingering_logger guard;
  return std::make_unique<caf::actor_system>(cfg);
}

runtime::runtime(std::unique_ptr<impl> p) : impl_(std::move(p)) {}
runtime::runtime(runtime&&) noexcept = default;
runtime& runtime::operator=(runtime&&) noexcept = default;
runtime::~runtime() = default;

result<runtime> runtime::start(event_store store, runtime_options options) {
  if (auto ok = validate(options); !ok)
    return ok.error();
  auto p = std::make_unique<impl>();
  p->config = std::make_unique<caf::actor_system_config>();
  add_mire_types(*p->config);
  configure_scheduler(*p->config, scheduler_options{});
  p->own = make_actor_system(*p->config);
  p->system = p->own.get();
  p->options = options;
  auto s = detail::spawn_store(*p->system, std::move(store), options.store);
  if (!s)
    return s.error();
  p->store = std::move(*s);
  return runtime{std::move(p)};
}

result<runtime> runtime::start(caf::actor_system& system, event_store store,
                               runtime_options options) {
  if (auto ok = validate(options); !ok)
    return ok.error();
  auto p = std::make_unique<impl>();
  p->system = &system;
  p->options = options;
  auto s = detail::spawn_store(system, std::move(store), options.store);
  if (!s)
    return s.error();
  p->store = std::move(*s);
  return runtime{std::move(p)};
}

caf::actor_system& runtime::system() {
  return *impl_->system;
}

result<void> runtime::configure_erased(std::type_index type, detail::model_factory make,
                                       aggregate_options options) {
  if (auto ok = validate(options); !ok)
    return ok;
  std::lock_guard lock{impl_->mutex};
  auto& entry = impl_->types[type];
  if (entry.registry.actor)
    return bad_input("an aggregate type is configured after its first use; configure it first");
  entry.type = std::make_shared<detail::aggregate_type>(detail::aggregate_type{make, options});
  return {};
}

detail::registry_ref runtime::impl::registry(std::type_index type, detail::model_factory make) {
  std::lock_guard lock{mutex};
  auto& entry = types[type];
  if (!entry.registry.actor) {
    if (!entry.type)
      entry.type =
          std::make_shared<detail::aggregate_type>(detail::aggregate_type{make, options.aggregates});
    entry.registry = detail::spawn_registry(*system, entry.type, store);
  }
  return entry.registry;
}

caf::actor runtime::registry(std::type_index type, detail::model_factory make) {
  return impl_->registry(type, make).actor;
}

namespace {

// One blocking request from a plain thread: the job carries a reply slot that the aggregate
// actor fills and this thread waits on (no scoped actor, no CAF timer). The job goes straight to
// the aggregate's actor when it is live, else through the registry. A timeout says whose answer
// is missing and that the command may still take effect.
result<detail::erased_reply> ask(const detail::registry_ref& registry, const std::string& id,
                                 bool is_command, detail::erased_command command,
                                 std::chrono::milliseconds timeout) {
  auto slot = std::make_shared<detail::reply_slot>();
  if (!detail::send_direct(*registry.table, id, is_command, command, slot)) {
    if (is_command)
      caf::anon_send(registry.actor, command_atom::value, id, std::move(command), slot);
    else
      caf::anon_send(registry.actor, state_atom::value, id, slot);
  }
  if (auto r = slot->wait_for(timeout))
    return std::move(*r);
  mire::error err{errc::timeout, "no answer from the actor of '" + id + "' within " +
                                     std::to_string(timeout.count()) +
                                     " ms; a command may still be recorded"};
  err.stream_id = id;
  return err;
}

} // namespace

result<detail::erased_reply> runtime::send_erased(std::type_index type, detail::model_factory make,
                                                  std::string id, detail::erased_command command,
                                                  std::chrono::milliseconds timeout) {
  return ask(impl_->registry(type, make), id, true, std::move(command), timeout);
}

result<detail::erased_reply> runtime::load_erased(std::type_index type, detail::model_factory make,
                                                  std::string id,
                                                  std::chrono::milliseconds timeout) {
  return ask(impl_->registry(type, make), id, false, {}, timeout);
}

} // namespace mire::actors
