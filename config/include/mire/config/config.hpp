// mire's configuration: config/mire.ini (CAF's INI format), environment variables and
// --mire.SECTION.KEY=VALUE flags, in that order of increasing precedence, turned into the options
// of the event store and the actor runtime. Every value is checked here, at start-up, and a bad one
// is refused with a message naming the option and where it came from. No CAF in this header.
//
//   int main(int argc, char** argv) {
//     auto cfg = mire::config::load(argc, argv);   // flags > env > file > defaults
//     if (!cfg) { std::cerr << cfg.error().what() << "\n"; return 2; }
//     auto store = mire::event_store::open(cfg->values.store).value();
//     auto rt = mire::config::start_runtime(cfg->values, store).value();  // rt->send<A>(...)
#pragma once

#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "mire/actors/options.hpp"
#include "mire/actors/runtime.hpp"
#include "mire/store/error.hpp"
#include "mire/store/event_store.hpp"

namespace mire::config {

/// The actor system's scheduler (CAF's), for runtimes started with start_runtime().
using scheduler_options = actors::scheduler_options;

/// The effective configuration.
struct settings {
  /// Event store options: url ("" = the embedded server), schema, pool_size, connect timeout;
  /// application_name is "mire/<replica_id>".
  store_options store;
  /// The actor runtime: the store actor's workers and group commit, the aggregates' policy.
  actors::runtime_options runtime;
  /// The actor system of start_runtime().
  scheduler_options scheduler;
  /// This process among the replicas sharing one database (derived when not configured).
  std::string replica_id;
  /// True when replica_id was not configured and was derived from the host name and pid.
  bool replica_id_derived = false;
  /// True when store.pool_size was configured as 0 and is store.workers + 4.
  bool pool_size_derived = false;
  /// The configuration file read, "" when none was.
  std::string file;
  /// Where each option's value came from, by full key ("mire.store.workers"): "default",
  /// the file's path, "env MIRE_STORE_WORKERS" or "flag --mire.store.workers".
  std::map<std::string, std::string> origin;
};

/// One option of the configuration, for help texts and `mire config`.
struct option_info {
  std::string_view key;     ///< "mire.store.workers"
  std::string_view env;     ///< "MIRE_STORE_WORKERS"
  std::string_view type;    ///< "integer", "duration" or "string"
  std::string_view summary; ///< one line
};

/// Every option, in the order of config/mire.ini.
const std::vector<option_info>& options();

/// Where to look for the file when none is named: MIRE_CONFIG, else "./config/mire.ini" when
/// that exists, else "" (no file: the built-in defaults).
std::string default_file();

/// Loads the configuration. `file`: the file to read ("" = none); a file that cannot be read
/// or parsed is an error. `flags`: "--mire.SECTION.KEY=VALUE" words (also "--config=FILE" /
/// "--config-file=FILE", which then replace `file`). The environment is read with getenv.
/// bad_input names the offending option and its origin.
result<settings> load(std::string_view file, const std::vector<std::string>& flags);

/// A program's configuration and the command-line words that were not about it.
struct loaded {
  settings values;
  std::vector<std::string> rest; ///< argv[1..] without the configuration words, in order
};

/// Loads the configuration from a program's command line: "--config FILE", "--config=FILE",
/// "--config-file=FILE" and "--mire.SECTION.KEY=VALUE" (or "--mire.SECTION.KEY VALUE") are
/// taken, everything else is left in `rest`; "--" ends the options. Without --config the file
/// is default_file().
result<loaded> load(int argc, const char* const* argv);

/// Checks a Postgres schema name as the store will (1-63 characters of a-z, 0-9, _, not starting
/// with a digit); bad_input names `option`.
result<void> check_schema(std::string_view option, std::string_view schema);

/// An actor runtime on an actor system of its own, configured by the settings (scheduler and
/// runtime options); actors::runtime::start(store) instead runs on CAF's default scheduler.
/// Stops the runtime, then waits for the actor system, when destroyed.
class runtime_host {
public:
  runtime_host(runtime_host&&) noexcept;
  runtime_host& operator=(runtime_host&&) noexcept;
  ~runtime_host();

  actors::runtime& runtime();
  actors::runtime* operator->() { return &runtime(); }
  actors::runtime& operator*() { return runtime(); }

private:
  friend result<runtime_host> start_runtime(const settings& s, event_store store);
  struct impl;
  explicit runtime_host(std::unique_ptr<impl> p);
  std::unique_ptr<impl> impl_;
};

/// Starts a runtime on `store` as configured by `s`. bad_input names an invalid option.
result<runtime_host> start_runtime(const settings& s, event_store store);

/// The effective configuration as INI text (a valid configuration file), each value followed by
/// a comment saying where it came from.
std::string describe(const settings& s);

} // namespace mire::config
