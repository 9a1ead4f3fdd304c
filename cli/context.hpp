// What every `mire` command shares: where the database is, how to open the store, and how to
// print results and errors (text, or one JSON object per line with --json).
#pragma once

#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "args.hpp"
#include "mire/config/config.hpp"
#include "mire/store/embedded_postgres.hpp"
#include "mire/store/error.hpp"
#include "mire/store/event_store.hpp"

namespace mire::cli {

/// JSON printed by mire keeps its keys in the order written, so output reads naturally.
using json = nlohmann::ordered_json;

/// Prints an error, "mire: <what>" on one line of stderr, or with `as_json` an object
/// {"error": code, "message": ...} on stdout, and returns its exit code (mire::exit_code).
int report(const error& e, bool as_json);

/// The settings of one invocation, from the global options and the environment.
class context {
public:
  /// Reads the configuration (--config FILE, else MIRE_CONFIG, else ./config/mire.ini when it
  /// exists; then the environment and the --mire.* flags), --db and --schema (which override the
  /// database url and schema of the configuration), --json and MIRE_HOME.
  static result<context> from(const command_line& cl);

  /// The effective configuration, --db and --schema included.
  const config::settings& settings() const { return settings_; }

  bool json_output() const { return json_; }
  /// True when the configuration names the database (no embedded server is used).
  bool external_database() const { return url_.has_value(); }
  /// Where the database URL was set: "flag --db", "env MIRE_DATABASE_URL", a file, ...
  std::string database_origin() const {
    auto it = settings_.origin.find("mire.database.url");
    return it != settings_.origin.end() ? it->second : "the configuration";
  }
  /// Options of the embedded server under MIRE_HOME.
  embedded_options embedded() const { return {.home = home_}; }

  /// The database URL: --db, else MIRE_DATABASE_URL, else the embedded server, started if needed.
  result<std::string> database_url() const;
  /// The event store options of the configuration, with the url resolved by database_url().
  result<store_options> store_options_resolved() const;
  /// Opens the store at database_url() and applies pending migrations (cheap when there are none).
  result<event_store> open_store() const;
  /// Opens the store without migrating.
  result<event_store> open_unmigrated_store() const;

  /// Prints one JSON object on one line of stdout.
  void print(const json& object) const;
  /// Reports `e` (see report()) and returns its exit code.
  int fail(const error& e) const { return report(e, json_); }

private:
  std::optional<std::string> url_;
  config::settings settings_;
  std::string home_;
  bool json_ = false;
};

} // namespace mire::cli
