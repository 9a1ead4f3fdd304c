// What an aggregate decides about a command: the events to record, or a domain rejection. No CAF:
// aggregates, their tests (testkit.hpp) and their users include this without the actor runtime.
//
//   struct account {
//     using event = std::variant<opened, deposited>;
//     using command = std::variant<open, deposit>;
//     void apply(const event& e);                           // must not fail
//     mire::decision<event> decide(const command& c) const; // pure: no IO, no clock
//   };
#pragma once

#include <concepts>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "mire/store/repository.hpp"

namespace mire {

/// A command refused by the aggregate's own rules (can't overdraw, already closed, ...). `code`
/// is the aggregate's error code, stable for callers to branch on; `message` is for people.
struct rejected {
  std::string code;
  std::string message;
};

/// A rejection from an aggregate's error code: a string, or an enum with a `to_string(E)` found
/// by argument-dependent lookup (each aggregate owns its enum; the runtime only carries text).
template <class Code> rejected reject(const Code& code, std::string message) {
  if constexpr (std::is_convertible_v<const Code&, std::string_view>)
    return rejected{std::string(std::string_view(code)), std::move(message)};
  else
    return rejected{std::string(to_string(code)), std::move(message)};
}

/// The outcome of `decide`: events to record (none = nothing to do, the command is accepted as
/// a no-op) or a rejection. Converts implicitly from one event, a vector of events or `rejected`,
/// so a decide can `return deposited{5};` or `return mire::reject(errc::closed, "...");`.
template <class Event> class decision {
public:
  /// Accepted, nothing to record.
  decision() = default;
  decision(std::vector<Event> events) : v_(std::move(events)) {}
  decision(mire::rejected r) : v_(std::move(r)) {}
  /// One event (any alternative of the event variant).
  template <class E>
  requires std::constructible_from<Event, E&&> &&
      (!std::same_as<std::remove_cvref_t<E>, decision>)&&(
          !std::same_as<std::remove_cvref_t<E>, std::vector<Event>>)decision(E&& e)
      : v_(std::vector<Event>{Event(std::forward<E>(e))}) {}

  bool is_rejected() const { return v_.index() == 1; }
  /// Only when is_rejected().
  const mire::rejected& rejection() const { return std::get<1>(v_); }
  /// Only when !is_rejected().
  const std::vector<Event>& events() const& { return std::get<0>(v_); }
  std::vector<Event>&& events() && { return std::get<0>(std::move(v_)); }

private:
  std::variant<std::vector<Event>, mire::rejected> v_;
};

/// An aggregate: an event-sourced state (repository.hpp) that also decides commands. `decide`
/// must be pure (same state + command = same decision): on a conflict the runtime reloads and
/// calls it again. Copyable so that callers can be handed a snapshot of the state.
template <class A>
concept aggregate_root = event_sourced<A> && std::copy_constructible<A> && requires {
  typename A::command;
} && requires(const A& a, const typename A::command& c) {
  { a.decide(c) } -> std::convertible_to<decision<typename A::event>>;
};

} // namespace mire
