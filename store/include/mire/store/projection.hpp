// Projections: read models kept current from the global log, exactly once (DESIGN rules 3, 4).
// A projector applies events in batches; each batch's read-model writes and its checkpoint
// commit in one transaction that holds the projection's lease row and checks its fence, so a
// replica that lost the lease (even one waking from a long pause) commits nothing. Read models
// are versioned by generation: a rebuild fills generation N+1 beside the live N, then switches
// the readers' views to it in one transaction. This is the engine; actors/projection.hpp runs
// it under a lease actor.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "mire/store/error.hpp"
#include "mire/store/event_store.hpp"
#include "mire/store/lease.hpp"
#include "mire/store/types.hpp"

namespace mire {

/// Where one generation of a projection's read model lives; given to setup and handler.
class projection_context {
public:
  projection_context(std::string name, int32_t generation, std::string schema);

  const std::string& name() const { return name_; }
  int32_t generation() const { return generation_; }
  /// The schema holding the read model's tables and views.
  const std::string& schema() const { return schema_; }
  /// `"schema"."base_gN"`: this generation's table `base`, quoted for SQL text. `base` must be
  /// one of the definition's `tables` (checked when the projection is created).
  std::string table(std::string_view base) const;
  /// `"schema"."base"`: the view readers query; it shows the live generation's table.
  std::string view(std::string_view base) const;

private:
  std::string name_;
  int32_t generation_;
  std::string schema_;
};

/// Creates one generation's read-model tables (use ctx.table(...) for their names).
using projection_setup = std::function<result<void>(transaction&, const projection_context&)>;
/// Applies one event to one generation's read model, inside the batch's transaction. An error
/// (or exception) makes the event poison, unless the database is unreachable.
using projection_handler =
    std::function<result<void>(transaction&, const recorded_event&, const projection_context&)>;

/// Applies a run of consecutive events at once (say, one statement for all their rows): the
/// fast way to catch up. A refused run is split until the refused event is found alone.
using projection_batch_handler = std::function<result<void>(
    transaction&, std::span<const recorded_event>, const projection_context&)>;

/// What to do with an event the handler refuses.
enum class poison_policy : uint8_t {
  stop, ///< state 'stopped' with the error recorded; nothing more runs until reset or resume
  park, ///< a dead-letter row, and processing goes on
};

/// A projection: which events, how to apply them, where the read model lives.
struct projection_definition {
  std::string name;                ///< a-z, 0-9, _ (also names its lease: "projection:<name>")
  log_filter filter;               ///< which events (empty: all)
  std::size_t batch_size = 500;    ///< events per transaction at most
  std::vector<std::string> tables; ///< read-model tables (identifiers): one per generation
                                   ///< (base_gN) and a view `base` on the live one
  std::string schema = "public";   ///< schema of the read-model tables and views (created
                                   ///< when missing)
  projection_setup setup;          ///< creates a generation's tables (may be empty)
  projection_handler handler;      ///< one event at a time; required unless batch_handler
  projection_batch_handler batch_handler; ///< optional; used instead of `handler` when set
  poison_policy on_poison = poison_policy::stop;
};

/// A projection's standing, as stored (what `mire projections` shows).
struct projection_status {
  std::string name;
  std::string state; ///< "running" or "stopped"
  std::string error; ///< why it stopped, or why the last rebuild could not start
  int32_t live_generation = 0;
  checkpoint position;        ///< the live generation's checkpoint
  int64_t events_applied = 0; ///< by the live generation, since it was set up
  std::string last_event_at;  ///< recorded_at of its last applied event (empty: none)
  std::string updated_at;     ///< when its checkpoint last moved
  int64_t lag_events = 0;     ///< events after the checkpoint that match the filter
  double lag_seconds = 0;     ///< age of the oldest of them (0 when caught up)
  std::string owner;          ///< holder of the lease (empty: never held)
  int64_t fence_token = 0;
  bool lease_held = false; ///< the holder's lease is unexpired
  int64_t parked = 0;      ///< dead letters waiting (parked or queued for retry)
  bool rebuild_requested = false;
  int32_t rebuild_generation = 0; ///< generation being built (0: none)
  checkpoint rebuild_position;
  int64_t rebuild_events_applied = 0;
  int64_t rebuild_lag_events = 0; ///< what the rebuild still has to read
};

/// An event a handler refused under poison_policy::park.
struct dead_letter {
  int64_t id = 0;
  std::string projection;
  int32_t generation = 0;
  checkpoint position;
  std::string event_id;
  std::string stream_id;
  int64_t version = 0;
  std::string event_type;
  std::string error;
  std::string status; ///< "parked", "retry" (queued), "skipped" or "applied"
  std::string parked_at;
};

/// The lease resource of a projection: "projection:<name>".
std::string projection_resource(std::string_view name);

/// Every projection's status, by name.
result<std::vector<projection_status>> projection_statuses(event_store& store);
/// One projection's status; not_found when it never ran.
result<projection_status> projection_status_of(event_store& store, std::string_view name);

/// Asks the projection's driver to rebuild it beside the live read model and switch when the
/// new generation has caught up. Idempotent; not_found when it never ran; bad_input (and no
/// request) when it is stopped: resume or reset it first.
result<void> request_rebuild(event_store& store, std::string_view name);
/// Moves the live generation's checkpoint to `to` (the read model is left as it is) and sets
/// the state back to running; the driver continues after `to`. not_found when it never ran.
result<void> reset_projection(event_store& store, std::string_view name, checkpoint to);
/// Sets a stopped projection running again: the event that stopped it is tried again.
result<void> resume_projection(event_store& store, std::string_view name);

/// The dead letters of one projection (all generations), oldest first. not_found when it
/// never ran.
result<std::vector<dead_letter>> dead_letters(event_store& store, std::string_view name);
/// Marks a parked event skipped (it stays in the table as a record). not_found for a bad id.
result<void> skip_dead_letter(event_store& store, int64_t id);
/// Queues a parked event for another try by the driver (out of log order, after whatever it
/// has applied since). not_found for a bad id.
result<void> retry_dead_letter(event_store& store, int64_t id);

/// What one projector step did.
struct step_result {
  std::size_t applied = 0; ///< events applied to the live generation
  std::size_t rebuilt = 0; ///< events applied to a generation being rebuilt
  std::size_t parked = 0;  ///< events parked as dead letters
  bool caught_up = false;  ///< nothing left to read now: wait for new events
  bool held_back = false;  ///< caught up, but committed events wait behind an older open
                           ///< transaction (rule 3): look again soon, as its end may send no
                           ///< notification
  bool stopped = false;    ///< the projection is stopped (poison under `stop`)
  bool switched = false;   ///< a rebuilt generation went live
  checkpoint position;     ///< the live generation's checkpoint after the step
  int32_t live_generation = 0;
};

/// Applies one projection's events under a lease: the engine of the projection runner, usable
/// without actors. Blocking; one thread at a time.
class projector {
public:
  /// Checks the definition (bad_input names the bad field).
  static result<projector> create(event_store store, projection_definition definition);

  projector(projector&&) noexcept;
  projector& operator=(projector&&) noexcept;
  ~projector();

  const projection_definition& definition() const;

  /// One round of work while holding `held` (the lease on projection_resource(name)): sets the
  /// projection up on first use, starts a requested rebuild, retries queued dead letters, then
  /// applies at most one batch to the live generation and one to a generation being rebuilt
  /// (switching it live once it has caught up). Each batch is one fenced transaction: fenced_out
  /// when the lease is no longer ours, and nothing of the batch is stored. Setting `*cancel`
  /// makes a batch in progress roll back (fenced_out). unavailable when the database is gone.
  /// While catching up over full pages it reads the next page ahead on another of the store's
  /// connections, and reads the projection's head again only when the last batch saw something
  /// asked of it (a rebuild, a retry; a reset is seen by the batch itself).
  result<step_result> step(const lease& held, const std::atomic<bool>* cancel = nullptr);

  /// Waits up to `timeout` for a notification that events were appended, through a
  /// log_listener (listener.hpp): true when one came, or at once when it had to (re)connect
  /// (appends made while nobody listened woke no one: step again); false when the time ran
  /// out. An error means no wake-up connection (poll instead); later calls reconnect with
  /// backoff.
  result<bool> wait(std::chrono::milliseconds timeout);

private:
  struct impl;
  explicit projector(std::unique_ptr<impl> p);
  std::unique_ptr<impl> impl_;
};

} // namespace mire
