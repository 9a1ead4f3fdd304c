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
    caf::actor registry; ///< empty until the type's first use
  };

  // Declared before the handles below so that it is destroyed after them.
  std::unique_ptr<caf::actor_system_config> config;
  std::unique_ptr<caf::actor_system> own;
  caf::actor_system* system = nullptr;
  runtime_options options;
  store_actor store;
  std::mutex mutex;
  std::unordered_map<std::type_index, type_entry> types;

  ~impl() {
    // Registries first: their aggregate actors (which may be waiting on the store actor) watch
    // them and exit with them; then the store actor, whose workers stop with it.
    for (auto& [type, entry] : types)
      if (entry.registry)
        caf::anon_send_exit(entry.registry, caf::exit_reason::user_shutdown);
    if (store)
      caf::anon_send_exit(store, caf::exit_reason::user_shutdown);
    types.clear();
    store = store_actor{};
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
  auto s = spawn_store_actor(*p->system, std::move(store), options.store);
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
  auto s = spawn_store_actor(system, std::move(store), options.store);
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
  if (entry.registry)
    return bad_input("an aggregate type is configured after its first use; configure it first");
  entry.type = std::make_shared<detail::aggregate_type>(detail::aggregate_type{make, options});
  return {};
}

caf::actor runtime::registry(std::type_index type, detail::model_factory make) {
  std::lock_guard lock{impl_->mutex};
  auto& entry = impl_->types[type];
  if (!entry.registry) {
    if (!entry.type)
      entry.type = std::make_shared<detail::aggregate_type>(
          detail::aggregate_type{make, impl_->options.aggregates});
    entry.registry = detail::spawn_registry(*impl_->system, entry.type, impl_->store);
  }
  return entry.registry;
}

namespace {

// One blocking request from a plain thread: the message carries a reply slot that the aggregate
// actor fills and this thread waits on (no scoped actor, no CAF timer). A timeout says whose
// answer is missing and that the command may still take effect.
template <class... Ts>
result<detail::erased_reply> ask(const caf::actor& registry, const std::string& id,
                                 std::chrono::milliseconds timeout, Ts&&... xs) {
  auto slot = std::make_shared<detail::reply_slot>();
  caf::anon_send(registry, std::forward<Ts>(xs)..., slot);
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
  auto reg = registry(type, make);
  return ask(reg, id, timeout, command_atom::value, id, std::move(command));
}

result<detail::erased_reply> runtime::load_erased(std::type_index type, detail::model_factory make,
                                                  std::string id,
                                                  std::chrono::milliseconds timeout) {
  auto reg = registry(type, make);
  return ask(reg, id, timeout, state_atom::value, id);
}

} // namespace mire::actors
