// Parsing of the `mire` command line; see args.hpp.
#include "args.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>

#include <fmt/format.h>

namespace mire::cli {

const std::vector<option_spec> global_options{
    {"db", true},       {"schema", true}, {"json", false},      {"help", false},
    {"version", false}, {"config", true}, {"config-file", true}};

namespace {

const option_spec* find_option(const std::vector<option_spec>& specs, std::string_view name) {
  auto it = std::find_if(specs.begin(), specs.end(), [&](const auto& s) { return s.name == name; });
  return it == specs.end() ? nullptr : &*it;
}

// Points at the help, and at the command whose options were looked at.
std::string usage_hint(std::string_view command) {
  return command.empty() ? "(see 'mire help')"
                         : fmt::format("for 'mire {}' (see 'mire help')", command);
}

} // namespace

const std::string* command_line::value(std::string_view name) const {
  auto it = options.find(name);
  return it == options.end() ? nullptr : &it->second;
}

result<command_line> parse_command_line(int argc, const char* const* argv,
                                        const command_options& options_of) {
  command_line cl;
  const std::vector<option_spec>* command_specs = nullptr;
  bool options_ended = false;
  for (int i = 1; i < argc; ++i) {
    const std::string_view token = argv[i];
    const bool is_option = !options_ended && token.size() > 2 && token.starts_with("--");
    if (!is_option) {
      if (!options_ended && token == "--") {
        options_ended = true;
      } else if (cl.command.empty()) {
        command_specs = options_of(token);
        if (command_specs == nullptr)
          return bad_input(fmt::format("unknown command {} (see 'mire help')", printable(token)));
        cl.command = token;
      } else {
        cl.positionals.emplace_back(token);
      }
      continue;
    }

    // "--name=value" or "--name value"
    const auto eq = token.find('=');
    const std::string_view name = token.substr(2, eq == std::string_view::npos ? eq : eq - 2);
    // Configuration flags (--mire.store.workers=8) are checked by the configuration loader,
    // which knows their types; here they only need their value.
    if (name.starts_with("mire.")) {
      if (eq != std::string_view::npos)
        cl.config_flags.emplace_back(token);
      else if (i + 1 < argc)
        cl.config_flags.push_back(fmt::format("--{}={}", name, argv[++i]));
      else
        return bad_input(fmt::format("option --{} needs a value", name));
      continue;
    }
    const option_spec* spec = find_option(global_options, name);
    if (spec == nullptr && command_specs != nullptr)
      spec = find_option(*command_specs, name);
    if (spec == nullptr)
      return bad_input(fmt::format("unknown option {} {}", printable(token.substr(0, eq)),
                                   usage_hint(cl.command)));
    if (cl.has(name))
      return bad_input(fmt::format("option --{} is given twice", name));

    std::string value;
    if (eq != std::string_view::npos) {
      if (!spec->takes_value)
        return bad_input(fmt::format("option --{} takes no value, got {}", name,
                                     printable(token.substr(eq + 1))));
      value = token.substr(eq + 1);
    } else if (spec->takes_value) {
      // The next token is the value whatever it looks like, so "--data --x" or "--limit -1"
      // reach the value checks and get a message about the value.
      if (i + 1 >= argc)
        return bad_input(fmt::format("option --{} needs a value", name));
      value = argv[++i];
    }
    cl.options.emplace(std::string(name), std::move(value));
  }
  return cl;
}

result<void> expect_positionals(const command_line& cl, std::vector<std::string_view> names) {
  if (cl.positionals.size() < names.size())
    return bad_input(fmt::format("'mire {}' needs {} (see 'mire help')", cl.command,
                                 names[cl.positionals.size()]));
  if (cl.positionals.size() > names.size())
    return bad_input(fmt::format("unexpected argument {} {}",
                                 printable(cl.positionals[names.size()]), usage_hint(cl.command)));
  return {};
}

result<std::string> required(const command_line& cl, std::string_view name) {
  if (const auto* v = cl.value(name))
    return *v;
  return bad_input(
      fmt::format("'mire {}' needs the option --{} (see 'mire help')", cl.command, name));
}

result<int64_t> parse_positive(std::string_view name, std::string_view text) {
  int64_t v = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc{} || end != text.data() + text.size() || v < 1)
    return bad_input(fmt::format("--{} {} is not a positive integer", name, printable(text)));
  return v;
}

result<std::chrono::milliseconds> parse_duration(std::string_view name, std::string_view text) {
  using std::chrono::milliseconds;
  static constexpr std::pair<std::string_view, int64_t> units[] = {
      {"ms", 1}, {"s", 1000}, {"min", 60'000}, {"h", 3'600'000}};
  // A bare number has no unit: refused, as in the configuration, rather than guessed.
  const auto digits = std::min(text.find_first_not_of("0123456789"), text.size());
  const auto unit = text.substr(digits);
  int64_t v = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + digits, v);
  if (digits > 0 && ec == std::errc{} && v > 0)
    for (const auto& [u, ms] : units)
      if (unit == u && v <= INT64_MAX / ms / 1000)
        return milliseconds(v * ms);
  return bad_input(fmt::format(
      "--{} {} is not a positive duration with a unit (ms, s, min, h), e.g. 30s or 2min", name,
      printable(text)));
}

result<double> parse_positive_number(std::string_view name, std::string_view text) {
  double v = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc{} || end != text.data() + text.size() || !std::isfinite(v) ||
      v <= 0)
    return bad_input(fmt::format("--{} {} is not a positive number", name, printable(text)));
  return v;
}

std::string printable(std::string_view text) {
  // Values come from users and scripts: a control character in a message would garble the
  // terminal or split the one-line error, so it is shown escaped.
  constexpr std::size_t max_chars = 200;
  std::string out = "'";
  for (std::size_t i = 0; i < text.size() && i < max_chars; ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c < 0x20 || c == 0x7F)
      out += fmt::format("\\x{:02x}", c);
    else
      out += static_cast<char>(c);
  }
  if (text.size() > max_chars)
    out += "...";
  return out + "'";
}

} // namespace mire::cli
