// Given events, when a command, then events or a rejection: aggregate tests without a database
// or actors, running the same decide/apply the aggregate actor runs. No CAF.
//
//   mire::testkit<account> kit{{opened{"Ada"}, deposited{10}}};
//   auto out = kit.when(withdraw{50});
//   CHECK(out.rejected());
//   CHECK(out.rejection().code == "insufficient_funds");
#pragma once

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "mire/actors/decision.hpp"
#include "mire/store/codec.hpp"

namespace mire {

template <aggregate_root A> class testkit {
public:
  using event = typename A::event;
  using command = typename A::command;

  /// What one command came to.
  struct outcome {
    std::vector<event> events;             ///< recorded when accepted (may be empty)
    std::optional<mire::rejected> refusal; ///< set when rejected

    bool accepted() const { return !refusal; }
    bool rejected() const { return refusal.has_value(); }
    /// Only when rejected().
    const mire::rejected& rejection() const { return *refusal; }
  };

  /// The empty state with `history` applied.
  explicit testkit(std::vector<event> history = {}) { given(std::move(history)); }

  /// Applies more history, as if it had been recorded before.
  testkit& given(std::vector<event> history) {
    for (auto& e : history) {
      state_.apply(e);
      history_.push_back(std::move(e));
    }
    return *this;
  }

  /// Decides `cmd` on the current state and, when accepted, applies and records its events, so
  /// that the next when() sees them (as the aggregate actor would).
  outcome when(const command& cmd) {
    decision<event> d = state_.decide(cmd);
    if (d.is_rejected())
      return outcome{{}, d.rejection()};
    auto events = std::move(d).events();
    given(events);
    return outcome{std::move(events), std::nullopt};
  }

  const A& state() const { return state_; }
  /// The stream version the history amounts to.
  int64_t version() const { return static_cast<int64_t>(history_.size()); }
  const std::vector<event>& history() const { return history_; }

  /// The state rebuilt from scratch the way a load does: every event of the history encoded to
  /// JSON, decoded and applied. Differing from state() means a codec loses a field or apply
  /// depends on something other than the events. decode_failed names a codec that fails.
  result<A> replayed() const {
    A a{};
    for (const auto& e : history_) {
      auto data = event_codec<event>::encode(e);
      auto back = event_codec<event>::decode(data.type, data.data);
      if (!back)
        return back.error();
      a.apply(*back);
    }
    return a;
  }

private:
  A state_{};
  std::vector<event> history_;
};

} // namespace mire
