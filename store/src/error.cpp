#include "mire/store/error.hpp"

#include <fmt/format.h>

namespace mire {

std::string_view to_string(errc code) {
  switch (code) {
  case errc::version_conflict: return "version_conflict";
  case errc::fenced_out: return "fenced_out";
  case errc::unavailable: return "unavailable";
  case errc::bad_input: return "bad_input";
  case errc::decode_failed: return "decode_failed";
  case errc::commit_in_doubt: return "commit_in_doubt";
  case errc::timeout: return "timeout";
  case errc::not_found: return "not_found";
  case errc::internal: return "internal";
  }
  return "unknown";
}

int exit_code(errc code) {
  switch (code) {
  case errc::bad_input: return 2;
  case errc::version_conflict: return 3;
  case errc::unavailable: return 4;
  default: return 1;
  }
}

std::string error::what() const { return fmt::format("{}: {}", to_string(code), message); }

error bad_input(std::string what) { return error{errc::bad_input, std::move(what)}; }

error conflict(std::string stream_id, int64_t expected, int64_t actual) {
  const auto expected_text = expected < 0 ? std::string("any") : std::to_string(expected);
  error e{errc::version_conflict,
          fmt::format("stream '{}' is at version {}, expected {}", stream_id, actual,
                      expected == 0 ? std::string("no stream") : expected_text)};
  e.stream_id = std::move(stream_id);
  e.expected = expected;
  e.actual = actual;
  return e;
}

} // namespace mire
