// Typed events: plain structs with a stable type name and nlohmann JSON codecs, grouped per
// aggregate in a std::variant. The codec maps a variant to (type name, JSON) and back.
//
//   struct deposited {
//     static constexpr std::string_view type_name = "account.deposited";
//     int64_t amount = 0;
//   };
//   NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(deposited, amount)
#pragma once

#include <array>
#include <concepts>
#include <string>
#include <string_view>
#include <variant>

#include <nlohmann/json.hpp>

#include "mire/store/error.hpp"
#include "mire/store/types.hpp"

namespace mire {

/// An event type: has a stable name and converts to and from JSON.
template <class E>
concept event_type = requires {
  { E::type_name } -> std::convertible_to<std::string_view>;
} && requires(const E& e, nlohmann::json& j) {
  nlohmann::to_json(j, e);
  nlohmann::from_json(j, const_cast<E&>(e));
};

template <class Variant> struct event_codec;

/// Codec for a variant of event types.
template <event_type... Es> struct event_codec<std::variant<Es...>> {
  using event = std::variant<Es...>;

  static std::string_view type_name(const event& e) {
    return std::visit([](const auto& x) -> std::string_view { return std::decay_t<decltype(x)>::type_name; }, e);
  }

  /// (type, JSON data) of an event, ready to append.
  static event_data encode(const event& e, std::string metadata = "{}") {
    event_data out;
    std::visit(
        [&](const auto& x) {
          out.type = std::string(std::decay_t<decltype(x)>::type_name);
          out.data = nlohmann::json(x).dump();
        },
        e);
    out.metadata = std::move(metadata);
    return out;
  }

  /// True when `type` names one of the variant's alternatives.
  static bool knows(std::string_view type) { return ((Es::type_name == type) || ...); }

  /// Decodes stored (type, data); decode_failed names the type when it is unknown or the JSON
  /// does not fit the struct.
  static result<event> decode(std::string_view type, std::string_view data) {
    std::optional<event> out;
    std::string problem;
    auto try_one = [&]<class E>(E*) {
      if (out || E::type_name != type)
        return;
      try {
        out.emplace(std::in_place_type<E>, nlohmann::json::parse(data).template get<E>());
      } catch (const std::exception& ex) {
        problem = ex.what();
      }
    };
    (try_one(static_cast<Es*>(nullptr)), ...);
    if (out)
      return std::move(*out);
    if (!problem.empty())
      return error{errc::decode_failed,
                   "event of type '" + std::string(type) + "' does not decode: " + problem};
    return error{errc::decode_failed, "unknown event type '" + std::string(type) + "'"};
  }
};

} // namespace mire
