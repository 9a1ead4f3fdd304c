// Validation of the runtime's options: refused at start-up, naming the option.
#include "mire/actors/options.hpp"

#include <string>

namespace mire::actors {

result<void> validate(const store_actor_options& o) {
  if (o.workers < 1)
    return bad_input("store.workers must be at least 1, got " + std::to_string(o.workers));
  if (o.max_group < 1)
    return bad_input("store.max_group must be at least 1, got " + std::to_string(o.max_group));
  if (o.group_window.count() < 0)
    return bad_input("store.group_window must not be negative, got " +
                     std::to_string(o.group_window.count()) + "us");
  return {};
}

result<void> validate(const aggregate_options& o) {
  if (o.snapshot_every < 0)
    return bad_input("aggregates.snapshot_every must not be negative, got " +
                     std::to_string(o.snapshot_every));
  if (o.passivate_after.count() < 0)
    return bad_input("aggregates.passivate_after must not be negative, got " +
                     std::to_string(o.passivate_after.count()) + "ms");
  if (o.max_retries < 0)
    return bad_input("aggregates.max_retries must not be negative, got " +
                     std::to_string(o.max_retries));
  if (o.store_timeout.count() <= 0)
    return bad_input("aggregates.store_timeout must be positive, got " +
                     std::to_string(o.store_timeout.count()) + "ms");
  return {};
}

result<void> validate(const runtime_options& o) {
  if (auto r = validate(o.store); !r)
    return r;
  return validate(o.aggregates);
}

result<void> validate(const scheduler_options& o) {
  if (o.policy != "spinning" && o.policy != "sharing" && o.policy != "stealing")
    return bad_input("scheduler.policy must be \"spinning\", \"sharing\" or \"stealing\", got '" +
                     o.policy + "'");
  if (o.threads > 256)
    return bad_input("scheduler.threads must be at most 256, got " + std::to_string(o.threads));
  return {};
}

} // namespace mire::actors
