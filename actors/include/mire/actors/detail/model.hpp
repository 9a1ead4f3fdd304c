// One aggregate type behind a type-independent interface. The actors (registry, aggregate actor)
// are compiled once, in mire_actors, against this interface; only this small template is
// instantiated in user code, so user code never needs CAF's headers (3-5 s and 400 MB per TU).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "mire/actors/decision.hpp"
#include "mire/store/codec.hpp"
#include "mire/store/repository.hpp"
#include "mire/store/types.hpp"

namespace mire::actors::detail {

/// A command of some aggregate type, with the metadata its events get. Travels inside one
/// process only: the pointer is an A::command.
struct erased_command {
  std::shared_ptr<const void> command;
  std::string metadata = "{}";
};

/// A decision with the typed events kept aside: they are applied after the append succeeds and
/// handed to the caller, without decoding what was just encoded.
struct erased_decision {
  std::optional<mire::rejected> rejection;
  std::vector<event_data> encoded;    ///< what to append
  std::shared_ptr<const void> events; ///< std::vector<A::event>, same order
};

/// What an aggregate actor answers; failures travel as errors, not in here.
struct erased_reply {
  enum kind_t : uint8_t { accepted, rejected, state };
  kind_t kind = accepted;
  int64_t version = 0;                 ///< stream version after the command / of the state
  int retries = 0;                     ///< conflicts retried before the command went through
  std::shared_ptr<const void> payload; ///< accepted: std::vector<A::event>; state: A
  mire::rejected rejection;            ///< when kind == rejected
};

/// One live aggregate's state and what can be done with it.
class aggregate_model {
public:
  virtual ~aggregate_model() = default;
  /// Decides `command` (an A::command) on the current state; may throw what decide throws.
  virtual erased_decision decide(const void* command, const std::string& metadata) const = 0;
  /// Applies the events of a decision whose append succeeded.
  virtual void apply_decided(const void* events) = 0;
  /// Decodes and applies one stored event.
  virtual result<void> replay(const recorded_event& e) = 0;
  /// Restores the state of a snapshot; false when it cannot be read (replay the stream then).
  virtual bool restore(const snapshot& s) = 0;
  /// The state's snapshot schema, or -1 when the aggregate is not snapshottable.
  virtual int32_t snapshot_schema() const = 0;
  /// The state as JSON text; only when snapshot_schema() >= 0.
  virtual std::string snapshot_state() const = 0;
  /// A copy of the state (an A), for callers who asked for it.
  virtual std::shared_ptr<const void> copy_state() const = 0;
};

/// Makes an empty model of one aggregate type.
using model_factory = std::unique_ptr<aggregate_model> (*)();

template <aggregate_root A> class model final : public aggregate_model {
public:
  using event = typename A::event;
  using command = typename A::command;
  using codec = event_codec<event>;

  erased_decision decide(const void* cmd, const std::string& metadata) const override {
    auto d = state_.decide(*static_cast<const command*>(cmd));
    erased_decision out;
    if (d.is_rejected()) {
      out.rejection = d.rejection();
      return out;
    }
    auto events = std::make_shared<std::vector<event>>(std::move(d).events());
    out.encoded.reserve(events->size());
    for (const auto& e : *events)
      out.encoded.push_back(codec::encode(e, metadata));
    out.events = std::move(events);
    return out;
  }

  void apply_decided(const void* events) override {
    for (const auto& e : *static_cast<const std::vector<event>*>(events))
      state_.apply(e);
  }

  result<void> replay(const recorded_event& rec) override {
    auto e = codec::decode(rec.type, rec.data);
    if (!e) {
      auto err = std::move(e).error();
      err.message += " (stream " + rec.stream_id + ", version " + std::to_string(rec.version) + ")";
      return err;
    }
    state_.apply(*e);
    return {};
  }

  bool restore(const snapshot& s) override {
    if constexpr (snapshottable<A>) {
      try {
        state_ = nlohmann::json::parse(s.state).template get<A>();
        return true;
      } catch (const std::exception&) {
        state_ = A{};
        return false;
      }
    } else {
      (void)s;
      return false;
    }
  }

  int32_t snapshot_schema() const override {
    if constexpr (snapshottable<A>)
      return static_cast<int32_t>(A::snapshot_schema);
    else
      return -1;
  }

  std::string snapshot_state() const override {
    if constexpr (snapshottable<A>)
      return nlohmann::json(state_).dump();
    else
      return {};
  }

  std::shared_ptr<const void> copy_state() const override { return std::make_shared<A>(state_); }

private:
  A state_{};
};

template <aggregate_root A> std::unique_ptr<aggregate_model> make_model() {
  return std::make_unique<model<A>>();
}

} // namespace mire::actors::detail
