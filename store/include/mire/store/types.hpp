// Value types of the event store: what is appended, what is read back, and where a reader stands.
#pragma once

#include <compare>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "mire/store/error.hpp"

namespace mire {

/// The version an append expects its stream to be at. Versions are 1-based and dense, so
/// "no stream" and "exactly 0" mean the same thing.
class expected_version {
public:
  static constexpr int64_t any_value = -1;

  static expected_version any() { return expected_version{any_value}; }
  static expected_version no_stream() { return expected_version{0}; }
  /// Exactly `v` (v >= 0). A negative `v` is a programming error: use any().
  static expected_version exactly(int64_t v) { return expected_version{v < 0 ? 0 : v}; }

  /// Parses "any", "no-stream" or a non-negative integer; bad_input otherwise.
  static result<expected_version> parse(std::string_view text);

  bool is_any() const { return value_ == any_value; }
  /// The exact version expected (0 = no stream); only meaningful when !is_any().
  int64_t value() const { return value_; }
  std::string to_string() const;

private:
  explicit expected_version(int64_t v) : value_(v) {}
  int64_t value_;
};

/// One event to append. An empty event_id is filled with a fresh UUID before sending; set it
/// yourself to make a retry of the same append idempotent (DESIGN rule 2).
struct event_data {
  std::string type;             ///< stable event type name, e.g. "account.deposited"
  std::string data;             ///< JSON text
  std::string metadata = "{}";  ///< JSON object text: correlation/causation ids, user metadata
  std::string event_id;         ///< UUID text; empty = generate
};

/// A reader's place in the global log: (transaction id, global position) of the last event
/// delivered. Ordered like the log is read (DESIGN rule 3).
struct checkpoint {
  uint64_t transaction_id = 0;
  int64_t position = 0;

  /// The start of the log.
  static checkpoint start() { return {}; }
  /// "TXID:POSITION"; parse() reads it back.
  std::string to_string() const;
  static result<checkpoint> parse(std::string_view text);

  auto operator<=>(const checkpoint&) const = default;
};

/// An event as stored.
struct recorded_event {
  std::string stream_id;
  int64_t version = 0;          ///< 1-based position within its stream
  int64_t global_position = 0;  ///< position in the global log (assigned before commit)
  uint64_t transaction_id = 0;  ///< the writing transaction
  std::string event_id;
  std::string type;
  std::string data;             ///< JSON text
  std::string metadata;         ///< JSON text
  std::string recorded_at;      ///< ISO 8601, UTC, from the database clock

  /// Pass this to read_all to continue exactly after this event.
  mire::checkpoint checkpoint() const { return {transaction_id, global_position}; }
};

/// What an append stored.
struct append_result {
  int64_t version = 0;         ///< the stream's version after the append
  int64_t first_position = 0;  ///< global position of the first event appended
  int64_t last_position = 0;   ///< global position of the last event appended
  bool duplicate = false;      ///< true when these event ids were stored before (a retry)
};

/// One page of the global log (or of one category).
struct log_page {
  std::vector<recorded_event> events;
  mire::checkpoint next;  ///< pass to the next read_all; equals `after` when the page is empty
};

/// A stream and where it stands.
struct stream_info {
  std::string stream_id;
  int64_t version = 0;
  int64_t last_position = 0;
};

/// Latest snapshot of a stream.
struct snapshot {
  std::string stream_id;
  int64_t version = 0;         ///< the stream version the state covers
  int32_t schema_version = 0;  ///< the state's shape; a different one is ignored on load
  std::string state;           ///< JSON text
};

/// One stream's part of a batched append.
struct stream_append {
  std::string stream_id;
  mire::expected_version expected = mire::expected_version::any();
  std::vector<event_data> events;
};

/// What a batched append stored.
struct batch_result {
  std::vector<int64_t> versions;  ///< new version of each stream, in request order
  int64_t first_position = 0;
  int64_t last_position = 0;
  int64_t events = 0;
  bool duplicate = false;  ///< the whole batch had been stored before (a retry)
};

/// The category of a stream: its id up to the first '-' ("account-42" -> "account").
std::string_view category_of(std::string_view stream_id);

} // namespace mire
