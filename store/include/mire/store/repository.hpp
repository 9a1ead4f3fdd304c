// load -> record -> save: the aggregate pattern on top of the event store.
//
//   struct account {
//     using event = std::variant<opened, deposited>;
//     int64_t balance = 0;
//     void apply(const event& e);            // must not fail
//   };
//   mire::repository<account> accounts{store};
//   auto a = accounts.load("account-42").value();
//   a.record(deposited{100});
//   accounts.save(a).value();                 // expected version = the loaded one
#pragma once

#include <concepts>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "mire/store/codec.hpp"
#include "mire/store/event_store.hpp"
#include "mire/store/uuid.hpp"

namespace mire {

/// An event-sourced state: default-constructible, with an event variant and an apply that
/// cannot fail.
template <class A>
concept event_sourced = std::default_initializable<A> && requires(A& a, const typename A::event& e) {
  typename event_codec<typename A::event>;
  a.apply(e);
};

/// A state that can be snapshotted: JSON-convertible, with a schema version to bump whenever its
/// shape changes (a snapshot with another schema version is ignored and the stream replayed).
template <class A>
concept snapshottable = event_sourced<A> && requires(const A& a, nlohmann::json& j) {
  { A::snapshot_schema } -> std::convertible_to<int>;
  nlohmann::to_json(j, a);
  nlohmann::from_json(j, const_cast<A&>(a));
};

/// One loaded aggregate: its state, the version it was loaded (or last saved) at, and the events
/// recorded since, not yet saved.
template <event_sourced A> class aggregate {
public:
  using event = typename A::event;
  using codec = event_codec<event>;

  explicit aggregate(std::string id) : id_(std::move(id)) {}

  const std::string& id() const { return id_; }
  const A& state() const { return state_; }
  /// Version of the stream as loaded or last saved; save() expects the stream to be there.
  int64_t version() const { return version_; }
  /// Version including the recorded, unsaved events.
  int64_t pending_version() const { return version_ + static_cast<int64_t>(pending_.size()); }
  const std::vector<event_data>& pending() const { return pending_; }

  /// Applies `e` to the state and queues it for save(). The event id is fixed here, so retrying
  /// a save() that timed out is idempotent.
  void record(const event& e, std::string metadata = "{}") {
    // Encoded first: if that throws, the state has not taken an event that would never be saved.
    auto data = codec::encode(e, std::move(metadata));
    data.event_id = new_uuid();
    pending_.reserve(pending_.size() + 1);
    state_.apply(e);
    pending_.push_back(std::move(data));
  }

  /// Applies an already stored event (used by load).
  void replay(const event& e, int64_t version) {
    state_.apply(e);
    version_ = version;
  }
  void restore(A state, int64_t version) {
    state_ = std::move(state);
    version_ = version;
  }
  void mark_saved(int64_t version) {
    pending_.clear();
    version_ = version;
  }

private:
  std::string id_;
  A state_{};
  int64_t version_ = 0;
  std::vector<event_data> pending_;
};

/// Loads an aggregate from `source` (an event_store or a transaction): the latest snapshot of the
/// current schema, then the events after it, folded.
template <event_sourced A, class Source>
result<aggregate<A>> load(Source& source, std::string_view id) {
  aggregate<A> agg{std::string(id)};
  if constexpr (snapshottable<A>) {
    auto snap = source.load_snapshot(id);
    if (!snap)
      return snap.error();
    if (*snap && (*snap)->schema_version == static_cast<int32_t>(A::snapshot_schema)) {
      try {
        agg.restore(nlohmann::json::parse((*snap)->state).template get<A>(), (*snap)->version);
      } catch (const std::exception&) {
        agg = aggregate<A>{std::string(id)};  // unreadable snapshot: replay the whole stream
      }
    }
  }
  auto events = source.read_stream(id, agg.version() + 1);
  if (!events)
    return events.error();
  for (const auto& rec : *events) {
    auto e = aggregate<A>::codec::decode(rec.type, rec.data);
    if (!e) {
      auto err = std::move(e).error();
      err.message += " (stream " + rec.stream_id + ", version " + std::to_string(rec.version) + ")";
      return err;
    }
    agg.replay(*e, rec.version);
  }
  return agg;
}

/// Saves the recorded events of `agg` to `sink` (an event_store or a transaction), expecting
/// the stream at agg.version(). On success the aggregate is at the new version, nothing pending.
template <event_sourced A, class Sink> result<append_result> save(Sink& sink, aggregate<A>& agg) {
  if (agg.pending().empty())
    return append_result{agg.version(), 0, 0, false};
  auto r = sink.append(agg.id(), expected_version::exactly(agg.version()), agg.pending());
  if (r)
    agg.mark_saved(r->version);
  return r;
}

/// Snapshot of the aggregate's current state, which must be saved: with events recorded and not
/// yet saved the state is ahead of version() (bad_input), and a load would apply them twice.
template <snapshottable A> result<snapshot> make_snapshot(const aggregate<A>& agg) {
  if (!agg.pending().empty())
    return bad_input("cannot snapshot '" + agg.id() + "' with " +
                     std::to_string(agg.pending().size()) +
                     " recorded event(s) not saved yet: save it first");
  return snapshot{agg.id(), agg.version(), static_cast<int32_t>(A::snapshot_schema),
                  nlohmann::json(agg.state()).dump()};
}

/// Repository options.
struct repository_options {
  /// Write a snapshot whenever a save crosses a multiple of this many events (0 = never).
  int64_t snapshot_every = 0;
};

/// load and save for one aggregate type, with its snapshot policy.
template <event_sourced A> class repository {
public:
  explicit repository(event_store store, repository_options options = {})
      : store_(std::move(store)), options_(options) {}

  result<aggregate<A>> load(std::string_view id) { return mire::load<A>(store_, id); }

  result<append_result> save(aggregate<A>& agg) {
    const int64_t before = agg.version();
    auto r = mire::save(store_, agg);
    if constexpr (snapshottable<A>) {
      const int64_t every = options_.snapshot_every;
      if (r && every > 0 && r->version / every > before / every) {
        // A snapshot only speeds up loading; the events are committed, so a failed snapshot
        // (a state that does not serialize, e.g. invalid UTF-8 in a string) must not turn this
        // save into a failure.
        try {
          if (auto s = make_snapshot(agg))
            (void)store_.save_snapshot(*s);
        } catch (const std::exception&) {
        }
      }
    }
    return r;
  }

  event_store& store() { return store_; }

private:
  event_store store_;
  repository_options options_;
};

} // namespace mire
