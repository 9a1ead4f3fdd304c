// The one error type of mire, and result<T>: every store operation returns a value or an error.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace mire {

/// What went wrong, in words a caller can branch on.
enum class errc : uint8_t {
  version_conflict = 1, ///< the stream was not at the expected version; nothing was stored
  fenced_out,           ///< a lease was lost: the fence token no longer matches
  unavailable,          ///< the database cannot be reached (down, refused, timed out connecting)
  bad_input,            ///< an argument is invalid; the message names it
  decode_failed,        ///< a stored event or snapshot could not be decoded into a type
  commit_in_doubt,      ///< the connection broke during commit: retry with the same event ids
  timeout,              ///< an operation did not finish in time
  not_found,            ///< the thing asked for does not exist
  internal,             ///< anything else (a bug, an unexpected server error)
};

/// Stable lower-case name of a code, e.g. "version_conflict".
std::string_view to_string(errc code);

/// Exit code of the `mire` command for an error code (DESIGN.md: 2 bad input, 3 conflict,
/// 4 unavailable, 1 anything else).
int exit_code(errc code);

/// An error with its context. Conflicts carry the stream and both versions.
struct error {
  errc code = errc::internal;
  std::string message;
  std::string stream_id;  ///< for conflicts: the stream that was not at the expected version
  int64_t expected = -1;  ///< for conflicts: the version the caller expected (-1 = any)
  int64_t actual = -1;    ///< for conflicts: the version the stream was really at
  std::string sqlstate;   ///< the server's SQLSTATE when the error came from Postgres

  error() = default;
  error(errc c, std::string msg) : code(c), message(std::move(msg)) {}

  /// "version_conflict: stream account-1 is at version 3, expected 2"
  std::string what() const;
};

/// Builds a bad_input error; `what` names the bad value.
error bad_input(std::string what);

/// Builds a conflict error with its versions.
error conflict(std::string stream_id, int64_t expected, int64_t actual);

/// Thrown by result<T>::value() on an error: for callers that prefer exceptions.
class error_exception : public std::runtime_error {
public:
  explicit error_exception(error e) : std::runtime_error(e.what()), error_(std::move(e)) {}
  const mire::error& err() const noexcept { return error_; }

private:
  mire::error error_;
};

/// A value or an error. Small on purpose: has_value/operator bool, *, ->, error(), value().
template <class T> class [[nodiscard]] result {
public:
  result(T value) : v_(std::in_place_index<0>, std::move(value)) {}
  result(mire::error e) : v_(std::in_place_index<1>, std::move(e)) {}

  bool has_value() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return has_value(); }

  T& operator*() & { return std::get<0>(v_); }
  const T& operator*() const& { return std::get<0>(v_); }
  T&& operator*() && { return std::get<0>(std::move(v_)); }
  T* operator->() { return &std::get<0>(v_); }
  const T* operator->() const { return &std::get<0>(v_); }

  /// The value, or throws error_exception.
  T& value() & {
    check();
    return std::get<0>(v_);
  }
  T&& value() && {
    check();
    return std::get<0>(std::move(v_));
  }

  const mire::error& error() const& { return std::get<1>(v_); }
  mire::error&& error() && { return std::get<1>(std::move(v_)); }

private:
  void check() const {
    if (!has_value())
      throw error_exception(std::get<1>(v_));
  }
  std::variant<T, mire::error> v_;
};

/// result<void>: success or an error.
template <> class [[nodiscard]] result<void> {
public:
  result() = default;
  result(mire::error e) : e_(std::move(e)) {}

  bool has_value() const noexcept { return !e_.has_value(); }
  explicit operator bool() const noexcept { return has_value(); }
  void value() const {
    if (e_)
      throw error_exception(*e_);
  }
  const mire::error& error() const& { return *e_; }
  mire::error&& error() && { return std::move(*e_); }

private:
  std::optional<mire::error> e_;
};

} // namespace mire
