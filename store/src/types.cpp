#include "mire/store/types.hpp"

#include <charconv>

#include <fmt/format.h>

namespace mire {

namespace {

template <class T> bool parse_number(std::string_view t, T& out) {
  if (t.empty())
    return false;
  auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), out);
  return ec == std::errc{} && end == t.data() + t.size();
}

} // namespace

result<expected_version> expected_version::parse(std::string_view text) {
  if (text == "any")
    return any();
  if (text == "no-stream" || text == "no_stream")
    return no_stream();
  int64_t v = 0;
  if (parse_number(text, v) && v >= 0)
    return exactly(v);
  return bad_input(fmt::format(
      "expected version '{}' is not 'any', 'no-stream' or a non-negative integer", text));
}

std::string expected_version::to_string() const {
  if (is_any())
    return "any";
  if (value_ == 0)
    return "no-stream";
  return std::to_string(value_);
}

std::string checkpoint::to_string() const { return fmt::format("{}:{}", transaction_id, position); }

result<checkpoint> checkpoint::parse(std::string_view text) {
  const auto colon = text.find(':');
  checkpoint c;
  if (colon != std::string_view::npos && parse_number(text.substr(0, colon), c.transaction_id) &&
      parse_number(text.substr(colon + 1), c.position) && c.position >= 0)
    return c;
  return bad_input(fmt::format(
      "checkpoint '{}' is not of the form TXID:POSITION (as printed with each event)", text));
}

std::string_view category_of(std::string_view stream_id) {
  return stream_id.substr(0, stream_id.find('-'));
}

} // namespace mire
