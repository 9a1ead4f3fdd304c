// Hand-written command-line parsing for `mire`: long options before or after the command,
// `--name VALUE` or `--name=VALUE`, `--` to end options; every error names the argument at fault.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "mire/store/error.hpp"

namespace mire::cli {

/// An option a command accepts.
struct option_spec {
  std::string_view name;    ///< without the leading "--"
  bool takes_value = false; ///< false: a flag
};

/// Options every command accepts, anywhere on the line.
extern const std::vector<option_spec> global_options;

/// A parsed command line.
struct command_line {
  std::string command;                  ///< first non-option token; empty when none was given
  std::vector<std::string> positionals; ///< the tokens after the command that are not options
  std::map<std::string, std::string, std::less<>> options; ///< name -> value ("" for a flag)
  /// Configuration flags, "--mire.SECTION.KEY=VALUE", in order (mire/config/config.hpp checks
  /// them: any key under "mire." is accepted here).
  std::vector<std::string> config_flags;

  bool has(std::string_view name) const { return options.find(name) != options.end(); }
  /// The value of option `name`, or nullptr when it was not given.
  const std::string* value(std::string_view name) const;
};

/// Returns the options of a command (besides the global ones), or nullptr for an unknown command.
using command_options = std::function<const std::vector<option_spec>*(std::string_view command)>;

/// Parses argv[1..argc). Before the command only global options are known; after it, the global
/// options and those of the command.
result<command_line> parse_command_line(int argc, const char* const* argv,
                                        const command_options& options_of);

/// Checks that `cl` has exactly the positional arguments named in `names` (e.g. {"STREAM"}).
result<void> expect_positionals(const command_line& cl, std::vector<std::string_view> names);

/// The value of a required option, or a bad_input naming it.
result<std::string> required(const command_line& cl, std::string_view name);

/// Parses a positive integer given for option `name` ("--limit").
result<int64_t> parse_positive(std::string_view name, std::string_view text);

/// Parses a positive duration given for option `name` ("--timeout"): a whole number with a
/// unit, ms, s, min or h (as in the configuration file), e.g. 500ms, 30s, 2min.
result<std::chrono::milliseconds> parse_duration(std::string_view name, std::string_view text);

/// Parses a positive decimal number given for option `name` ("--scale").
result<double> parse_positive_number(std::string_view name, std::string_view text);

/// `text` in single quotes with control characters escaped and long values cut, for messages.
std::string printable(std::string_view text);

} // namespace mire::cli
