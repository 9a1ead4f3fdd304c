// CAF inspectors for the store's value types, so they can be message content: the store layer
// stays free of CAF, the actor layer adds how its values travel (also across the network later).
#pragma once

#include <cstdint>
#include <utility> // caf/meta/load_callback.hpp uses std::move without including it

#include <caf/error.hpp>
#include <caf/meta/load_callback.hpp>
#include <caf/meta/type_name.hpp>

#include "mire/store/types.hpp"

namespace mire {

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, expected_version& x) {
  int64_t value = x.is_any() ? expected_version::any_value : x.value();
  auto load = [&]() -> caf::error {
    x = value < 0 ? expected_version::any() : expected_version::exactly(value);
    return caf::none;
  };
  return f(caf::meta::type_name("expected_version"), value, caf::meta::load_callback(load));
}

template <class Inspector> typename Inspector::result_type inspect(Inspector& f, event_data& x) {
  return f(caf::meta::type_name("event_data"), x.type, x.data, x.metadata, x.event_id);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, recorded_event& x) {
  return f(caf::meta::type_name("recorded_event"), x.stream_id, x.version, x.global_position,
           x.transaction_id, x.event_id, x.type, x.data, x.metadata, x.recorded_at);
}

template <class Inspector> typename Inspector::result_type inspect(Inspector& f, append_result& x) {
  return f(caf::meta::type_name("append_result"), x.version, x.first_position, x.last_position,
           x.duplicate);
}

template <class Inspector> typename Inspector::result_type inspect(Inspector& f, stream_append& x) {
  return f(caf::meta::type_name("stream_append"), x.stream_id, x.expected, x.events);
}

template <class Inspector> typename Inspector::result_type inspect(Inspector& f, snapshot& x) {
  return f(caf::meta::type_name("snapshot"), x.stream_id, x.version, x.schema_version, x.state);
}

} // namespace mire
