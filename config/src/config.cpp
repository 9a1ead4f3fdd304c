// The configuration loader (config.hpp). CAF parses: the file with actor_system_config's INI
// parser, flags and environment values with its option set (the same parser as CAF's own
// command line), so every value reads the same wherever it is written. CAF 0.17 neither
// type-checks nor stores values of nested sections ([mire.store]) from the file, so the values
// are read back from the parsed settings and checked here, each error naming its option.
#include "mire/config/config.hpp"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/atom.hpp>
#include <caf/config_option_adder.hpp>
#include <caf/config_option_set.hpp>
#include <caf/config_value.hpp>
#include <caf/pec.hpp>
#include <caf/settings.hpp>
#include <fmt/format.h>

#include "mire/actors/errors.hpp"

namespace mire::config {

namespace {

enum class kind { integer, duration, string };

struct option_def {
  std::string_view key;
  std::string_view env;
  kind type;
  std::string_view summary;
};

// The order of config/mire.ini; its comments are the long help.
constexpr option_def defs[] = {
    {"mire.replica_id", "MIRE_REPLICA_ID", kind::string,
     "this process among the replicas of one database (\"\" = host-pid)"},
    {"mire.database.url", "MIRE_DATABASE_URL", kind::string,
     "libpq URL or key=value string (\"\" = the embedded PostgreSQL)"},
    {"mire.database.schema", "MIRE_SCHEMA", kind::string, "Postgres schema of mire's tables"},
    {"mire.database.pool_size", "MIRE_POOL_SIZE", kind::integer,
     "connections kept open at most (0 = store.workers + 4)"},
    {"mire.database.connect_timeout", "MIRE_CONNECT_TIMEOUT", kind::duration,
     "an unanswering server is unavailable after this"},
    {"mire.store.workers", "MIRE_STORE_WORKERS", kind::integer,
     "the store actor's blocking workers (one connection each)"},
    {"mire.store.group_window", "MIRE_GROUP_WINDOW", kind::duration,
     "group commit: wait this long for more appends while a worker is idle"},
    {"mire.store.max_group", "MIRE_MAX_GROUP", kind::integer,
     "group commit: most appends in one transaction"},
    {"mire.aggregates.snapshot_every", "MIRE_SNAPSHOT_EVERY", kind::integer,
     "snapshot every N events (0 = never)"},
    {"mire.aggregates.passivate_after", "MIRE_PASSIVATE_AFTER", kind::duration,
     "an idle aggregate actor stops after this (0us = never)"},
    {"mire.aggregates.max_retries", "MIRE_MAX_RETRIES", kind::integer,
     "reloads and retries of a command after a version conflict"},
    {"mire.aggregates.store_timeout", "MIRE_STORE_TIMEOUT", kind::duration,
     "longest wait of an aggregate actor for the store actor"},
    {"mire.scheduler.policy", "MIRE_SCHEDULER", kind::string,
     "CAF scheduler: \"spinning\" (polls briefly, then sleeps until woken), \"sharing\" "
     "(sleeps at once) or \"stealing\" (CAF's default)"},
    {"mire.scheduler.threads", "MIRE_SCHEDULER_THREADS", kind::integer,
     "CAF scheduler threads (0 = CAF's default: cores, at least 4)"},
};

std::string_view type_name(kind k) {
  switch (k) {
  case kind::integer:
    return "integer";
  case kind::duration:
    return "duration";
  case kind::string:
    return "string";
  }
  return "?";
}

const option_def* find_def(std::string_view key) {
  for (const auto& d : defs)
    if (d.key == key)
      return &d;
  return nullptr;
}

/// mire's options on CAF's configuration class, so that CAF's parsers know their types.
class system_config : public caf::actor_system_config {
public:
  system_config() {
    for (const auto& d : defs) {
      const auto dot = d.key.rfind('.');
      const auto category = d.key.substr(0, dot);
      const auto name = d.key.substr(dot + 1);
      opt_group group{custom_options_, {category.data(), category.size()}};
      const caf::string_view n{name.data(), name.size()}, s{d.summary.data(), d.summary.size()};
      switch (d.type) {
      case kind::integer:
        group.add<int64_t>(n, s);
        break;
      case kind::duration:
        group.add<caf::timespan>(n, s);
        break;
      case kind::string:
        group.add<std::string>(n, s);
        break;
      }
    }
  }
  caf::config_option_set& mire_options() { return custom_options_; }
};

std::string printable(std::string_view text) {
  std::string out = "'";
  for (char c : text.substr(0, 200)) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f)
      out += fmt::format("\\x{:02x}", static_cast<unsigned char>(c));
    else
      out += c;
  }
  if (text.size() > 200)
    out += "...";
  return out + "'";
}

std::string trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r'))
    s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
    s.remove_suffix(1);
  return std::string(s);
}

// Why a value did not parse. `expected` names the option's type for values given on the command
// line or in the environment; in the file the same errors usually mean a missing quote or unit.
std::string pec_text(caf::pec code, std::optional<kind> expected = std::nullopt) {
  switch (code) {
  case caf::pec::unexpected_character:
  case caf::pec::unexpected_eof:
  case caf::pec::trailing_character:
    if (expected == kind::integer)
      return "expected a whole number";
    if (expected == kind::duration)
      return "expected a duration with a unit: 500us, 2ms, 30s, 1min";
    return "not a value (strings must be in double quotes, durations need a unit: 500us, 2ms, "
           "30s, 1min)";
  case caf::pec::unexpected_newline:
    return "a string is not closed on its line";
  case caf::pec::integer_overflow:
  case caf::pec::integer_underflow:
    return "number out of range";
  case caf::pec::timespan_overflow:
    return "duration out of range";
  case caf::pec::fractional_timespan:
    return "a duration must be a whole number of its unit";
  case caf::pec::illegal_escape_sequence:
    return "unknown escape sequence after '\\'";
  default:
    return caf::to_string(code);
  }
}

// What a parser error says of where it stopped: {"line" = L, "column" = C} in its context.
std::pair<int64_t, int64_t> error_position(const caf::error& err) {
  const auto& ctx = err.context();
  if (ctx.match_elements<caf::settings>()) {
    const auto& pos = ctx.get_as<caf::settings>(0);
    return {caf::get_or(pos, "line", int64_t{0}), caf::get_or(pos, "column", int64_t{0})};
  }
  return {0, 0};
}

class loader {
public:
  result<settings> run(std::string file, const std::vector<std::string>& flags) {
    for (const auto& d : defs)
      origin_[std::string(d.key)] = "default";
    // --config among the flags names the file, whatever was passed as `file`.
    std::vector<std::string> option_flags;
    for (const auto& f : flags) {
      if (auto v = value_of(f, "--config=")) {
        file = *v;
      } else if (auto v2 = value_of(f, "--config-file=")) {
        file = *v2;
      } else {
        option_flags.push_back(f);
      }
    }
    if (!file.empty())
      if (auto ok = read_file(file); !ok)
        return ok.error();
    if (auto ok = read_env(); !ok)
      return ok.error();
    if (auto ok = read_flags(option_flags); !ok)
      return ok.error();
    return build();
  }

private:
  static std::optional<std::string> value_of(std::string_view word, std::string_view prefix) {
    if (!word.starts_with(prefix))
      return std::nullopt;
    return std::string(word.substr(prefix.size()));
  }

  std::string from(const std::string& key) const {
    const auto& o = origin_.at(key);
    return o == "default" ? std::string() : " (from " + o + ")";
  }

  result<void> read_file(const std::string& path) {
    if (std::error_code ec; std::filesystem::is_directory(path, ec))
      return bad_input(fmt::format("the configuration file {} is a directory", printable(path)));
    std::ifstream in{path};
    if (!in)
      return bad_input(fmt::format("cannot read the configuration file {}: {}", printable(path),
                                   std::strerror(errno)));
    std::stringstream buffer;
    buffer << in.rdbuf();
    const std::string text = buffer.str();
    std::istringstream source{text};
    caf::settings parsed;
    if (auto err = caf::actor_system_config::parse_config(source, cfg_.mire_options(), parsed)) {
      auto [line, column] = error_position(err);
      std::string what = err.category() == caf::atom("parser")
                             ? pec_text(static_cast<caf::pec>(err.code()))
                             : caf::to_string(err);
      if (line <= 0)
        return bad_input(fmt::format("configuration file {}: {}", path, what));
      std::vector<std::string> lines;
      std::istringstream in_lines{text};
      for (std::string l; std::getline(in_lines, l);)
        lines.push_back(l);
      // An unclosed string is reported on the line after it: show the line that has it.
      while (line > 1 && (line > static_cast<int64_t>(lines.size()) ||
                          trim(lines[static_cast<std::size_t>(line - 1)]).empty()))
        --line;
      const std::string l = line <= static_cast<int64_t>(lines.size())
                                ? lines[static_cast<std::size_t>(line - 1)]
                                : "";
      return bad_input(fmt::format("configuration file {} line {}: {}: {}", path, line,
                                   printable(trim(l)), what));
    }
    file_ = path;
    // Only mire's sections are read: anything else is a typo or meant for another program.
    for (const auto& [name, value] : parsed) {
      if (name != "mire")
        return bad_input(fmt::format("configuration file {}: unknown section or key {} (mire reads "
                                     "[mire], [mire.database], [mire.store], [mire.aggregates], "
                                     "[mire.scheduler])",
                                     path, printable(name)));
      if (auto ok = check_keys("mire", value, path); !ok)
        return ok;
    }
    for (const auto& d : defs)
      if (caf::get_if(&parsed, {d.key.data(), d.key.size()}) != nullptr)
        origin_[std::string(d.key)] = path;
    content_ = std::move(parsed);
    return {};
  }

  // Rejects unknown keys under [mire...]: CAF keeps them silently, and a misspelt option would
  // otherwise do nothing at all.
  result<void> check_keys(const std::string& prefix, const caf::config_value& value,
                          const std::string& path) {
    if (auto dict = caf::get_if<caf::config_value::dictionary>(&value)) {
      for (const auto& [name, sub] : *dict)
        if (auto ok = check_keys(prefix + "." + name, sub, path); !ok)
          return ok;
      return {};
    }
    if (find_def(prefix) == nullptr)
      return bad_input(fmt::format("configuration file {}: unknown option {}{}", path, prefix,
                                   suggestion(prefix)));
    return {};
  }

  // The known options of the same section, to help with a typo.
  static std::string suggestion(std::string_view key) {
    const auto section = key.substr(0, key.rfind('.') + 1);
    std::string known;
    for (const auto& d : defs)
      if (d.key.starts_with(section) && d.key.find('.', section.size()) == std::string_view::npos)
        known += (known.empty() ? "" : ", ") + std::string(d.key.substr(section.size()));
    return known.empty()
               ? std::string()
               : fmt::format(" (known in [{}]: {})", section.substr(0, section.size() - 1), known);
  }

  // Parses "--KEY=VALUE" with CAF's command-line parser into `into`.
  caf::pec parse_word(const std::string& word, caf::settings& into) {
    std::vector<std::string> args{word};
    return cfg_.mire_options().parse(into, args).first;
  }

  result<void> read_env() {
    for (const auto& d : defs) {
      const char* v = std::getenv(std::string(d.env).c_str());
      if (v == nullptr || *v == '\0')
        continue; // an empty variable counts as unset
      const auto code = parse_word(fmt::format("--{}={}", d.key, v), content_);
      if (code != caf::pec::success)
        return bad_input(fmt::format("{}={}: not a valid {} for {}: {}", d.env, printable(v),
                                     type_name(d.type), d.key, pec_text(code, d.type)));
      origin_[std::string(d.key)] = "env " + std::string(d.env);
    }
    return {};
  }

  result<void> read_flags(const std::vector<std::string>& flags) {
    for (const auto& word : flags) {
      const auto eq = word.find('=');
      const std::string name = word.substr(0, eq);
      const option_def* d = word.starts_with("--") ? find_def(name.substr(2)) : nullptr;
      if (d == nullptr)
        return bad_input(
            fmt::format("unknown option {}{}", printable(name),
                        word.starts_with("--mire.") ? suggestion(name.substr(2)) : std::string()));
      if (eq == std::string::npos)
        return bad_input(fmt::format("option {} needs a value ({}=VALUE)", name, name));
      const std::string value = word.substr(eq + 1);
      if (value.empty() && d->type == kind::string) {
        // CAF's parser refuses an empty value; "" is meaningful here (e.g. the embedded server).
        caf::put(content_, {d->key.data(), d->key.size()}, std::string());
      } else if (auto code = parse_word(word, content_); code != caf::pec::success) {
        return bad_input(fmt::format("{}: not a valid {}: {}", printable(word), type_name(d->type),
                                     pec_text(code, d->type)));
      }
      origin_[std::string(d->key)] = "flag " + name;
    }
    return {};
  }

  // --- typed values, checked ----------------------------------------------------------------

  // The value as written, for messages ("" when the option was not given).
  std::string shown(std::string_view key) const {
    const auto* v = raw(key);
    return v != nullptr ? caf::to_string(*v) : std::string();
  }

  const caf::config_value* raw(std::string_view key) const {
    return caf::get_if(&content_, {key.data(), key.size()});
  }

  result<int64_t> integer(const std::string& key, int64_t fallback, int64_t min, int64_t max) {
    const auto* v = raw(key);
    if (v == nullptr)
      return fallback;
    const auto* i = caf::get_if<int64_t>(v);
    if (i == nullptr)
      return bad_input(
          fmt::format("{} must be an integer, got {}{}", key, caf::to_string(*v), from(key)));
    if (*i < min)
      return bad_input(fmt::format("{} must be at least {}, got {}{}", key, min, *i, from(key)));
    if (*i > max)
      return bad_input(fmt::format("{} must be at most {}, got {}{}", key, max, *i, from(key)));
    return *i;
  }

  result<caf::timespan> duration(const std::string& key, caf::timespan fallback) {
    const auto* v = raw(key);
    if (v == nullptr)
      return fallback;
    const auto* t = caf::get_if<caf::timespan>(v);
    if (t == nullptr)
      return bad_input(fmt::format("{} must be a duration with a unit (e.g. 500us, 2ms, 30s, "
                                   "1min), got {}{}",
                                   key, caf::to_string(*v), from(key)));
    if (t->count() < 0)
      return bad_input(
          fmt::format("{} must not be negative, got {}{}", key, caf::to_string(*v), from(key)));
    return *t;
  }

  // A duration the runtime keeps in whole milliseconds: a nonzero value below 1ms is refused
  // rather than cut to 0 (which would mean "never" or be refused as 0).
  result<std::chrono::milliseconds> millis(const std::string& key, caf::timespan fallback) {
    auto t = duration(key, fallback);
    if (!t)
      return std::move(t).error();
    if (t->count() > 0 && *t < std::chrono::milliseconds(1))
      return bad_input(
          fmt::format("{} must be 0 or at least 1ms, got {}{}", key, shown(key), from(key)));
    return std::chrono::duration_cast<std::chrono::milliseconds>(*t);
  }

  result<std::string> string(const std::string& key, std::string fallback) {
    const auto* v = raw(key);
    if (v == nullptr)
      return fallback;
    const auto* s = caf::get_if<std::string>(v);
    if (s == nullptr)
      return bad_input(fmt::format("{} must be a string in double quotes, got {}{}", key,
                                   caf::to_string(*v), from(key)));
    return *s;
  }

  result<settings> build() {
    settings s;
    s.file = file_;
    const actors::runtime_options defaults;
    using std::chrono::duration_cast;

#define MIRE_TRY(var, expr)                                                                        \
  auto var = (expr);                                                                               \
  if (!var)                                                                                        \
    return std::move(var).error();

    MIRE_TRY(replica, string("mire.replica_id", ""));
    MIRE_TRY(url, string("mire.database.url", ""));
    MIRE_TRY(schema, string("mire.database.schema", "mire"));
    MIRE_TRY(pool, integer("mire.database.pool_size", 0, 0, 10000));
    MIRE_TRY(connect, duration("mire.database.connect_timeout", std::chrono::seconds(5)));
    MIRE_TRY(workers,
             integer("mire.store.workers", static_cast<int64_t>(defaults.store.workers), 1, 1000));
    MIRE_TRY(window, duration("mire.store.group_window", defaults.store.group_window));
    MIRE_TRY(max_group, integer("mire.store.max_group",
                                static_cast<int64_t>(defaults.store.max_group), 1, 1000000));
    MIRE_TRY(snapshot_every,
             integer("mire.aggregates.snapshot_every", defaults.aggregates.snapshot_every, 0,
                     std::numeric_limits<int64_t>::max()));
    MIRE_TRY(passivate,
             millis("mire.aggregates.passivate_after", defaults.aggregates.passivate_after));
    MIRE_TRY(retries,
             integer("mire.aggregates.max_retries", defaults.aggregates.max_retries, 0, 1000));
    MIRE_TRY(store_timeout,
             millis("mire.aggregates.store_timeout", defaults.aggregates.store_timeout));
    MIRE_TRY(policy, string("mire.scheduler.policy", actors::scheduler_options{}.policy));
    MIRE_TRY(threads, integer("mire.scheduler.threads",
                              static_cast<int64_t>(actors::scheduler_options{}.threads), 0, 256));
#undef MIRE_TRY

    // The database.
    if (auto ok = check_database_url(*url); !ok)
      return bad_input("mire.database.url: " + ok.error().message + from("mire.database.url"));
    if (auto ok = check_schema("mire.database.schema", *schema); !ok)
      return error{errc::bad_input, ok.error().message + from("mire.database.schema")};
    s.store.url = *url;
    s.store.schema = *schema;
    s.store.pool_size = static_cast<std::size_t>(*pool == 0 ? *workers + 4 : *pool);
    s.pool_size_derived = *pool == 0;
    if (s.store.pool_size < static_cast<std::size_t>(*workers))
      return bad_input(fmt::format("mire.database.pool_size {}{} must be at least "
                                   "mire.store.workers {}{}, or 0 for workers + 4",
                                   *pool, from("mire.database.pool_size"), *workers,
                                   from("mire.store.workers")));
    if (*connect < std::chrono::seconds(1))
      return bad_input(fmt::format("mire.database.connect_timeout must be at least 1s, got {}{}",
                                   shown("mire.database.connect_timeout"),
                                   from("mire.database.connect_timeout")));
    // libpq counts whole seconds: round up.
    s.store.connect_timeout_seconds = static_cast<int>(
        std::min<int64_t>(std::chrono::ceil<std::chrono::seconds>(*connect).count(), 86400));

    // The runtime.
    s.runtime.store.workers = static_cast<std::size_t>(*workers);
    s.runtime.store.group_window = duration_cast<std::chrono::microseconds>(*window);
    s.runtime.store.max_group = static_cast<std::size_t>(*max_group);
    s.runtime.aggregates.snapshot_every = *snapshot_every;
    s.runtime.aggregates.passivate_after = *passivate;
    s.runtime.aggregates.max_retries = static_cast<int>(*retries);
    s.runtime.aggregates.store_timeout = *store_timeout;
    if (auto ok = actors::validate(s.runtime); !ok) {
      // Its messages start with the option's key inside the runtime ("store.workers ...").
      const auto& msg = ok.error().message;
      const std::string key = "mire." + msg.substr(0, msg.find(' '));
      return bad_input("mire." + msg + (origin_.count(key) ? from(key) : std::string()));
    }

    // The actor system.
    s.scheduler.policy = *policy;
    s.scheduler.threads = static_cast<std::size_t>(*threads);
    if (!actors::validate(s.scheduler))
      return bad_input(fmt::format("mire.scheduler.policy must be \"spinning\", \"sharing\" or "
                                   "\"stealing\", got {}{}",
                                   printable(*policy), from("mire.scheduler.policy")));

    // The replica.
    if (replica->empty()) {
      s.replica_id = derived_replica_id();
      s.replica_id_derived = true;
    } else {
      const bool ok =
          replica->size() <= 48 && std::all_of(replica->begin(), replica->end(), [](char c) {
            return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
          });
      if (!ok)
        return bad_input(fmt::format("mire.replica_id must be at most 48 letters, digits, '.', "
                                     "'_' or '-', got {}{}",
                                     printable(*replica), from("mire.replica_id")));
      s.replica_id = *replica;
    }
    s.store.application_name = "mire/" + s.replica_id;
    s.origin = origin_;
    return s;
  }

  static std::string derived_replica_id() {
    char host[256] = {};
    if (::gethostname(host, sizeof host - 1) != 0)
      std::strcpy(host, "host");
    std::string id;
    for (const char* p = host; *p != '\0' && id.size() < 32; ++p) {
      const char c = *p;
      id += std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' ? c : '_';
    }
    return fmt::format("{}-{}", id.empty() ? "host" : id, static_cast<long>(::getpid()));
  }

  system_config cfg_;
  caf::settings content_;
  std::string file_;
  std::map<std::string, std::string> origin_;
};

// --- describe -------------------------------------------------------------------------------

std::string ini_string(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\')
      out += '\\';
    out += c;
  }
  return out + '"';
}

// A password in a URL ("postgres://u:secret@h") or a key=value string ("password=secret") is
// not printed.
std::string masked_url(std::string url) {
  if (auto scheme = url.find("://"); scheme != std::string::npos) {
    const auto at = url.find('@', scheme + 3);
    const auto colon = url.find(':', scheme + 3);
    if (at != std::string::npos && colon != std::string::npos && colon < at)
      url.replace(colon + 1, at - colon - 1, "***");
  }
  for (std::size_t pos = 0; (pos = url.find("password=", pos)) != std::string::npos;) {
    const auto start = pos + 9;
    auto end = url.find_first_of(" &", start);
    if (end == std::string::npos)
      end = url.size();
    url.replace(start, end - start, "***");
    pos = start + 3;
  }
  return url;
}

std::string duration_text(std::chrono::nanoseconds d) {
  using namespace std::chrono;
  const int64_t ns = d.count();
  if (ns == 0)
    return "0us";
  struct unit {
    int64_t ns;
    const char* name;
  };
  constexpr unit units[] = {{3600'000'000'000, "h"}, {60'000'000'000, "min"}, {1'000'000'000, "s"},
                            {1'000'000, "ms"},       {1'000, "us"},           {1, "ns"}};
  for (const auto& u : units)
    if (ns % u.ns == 0)
      return fmt::format("{}{}", ns / u.ns, u.name);
  return fmt::format("{}ns", ns);
}

} // namespace

const std::vector<option_info>& options() {
  static const std::vector<option_info> all = [] {
    std::vector<option_info> v;
    for (const auto& d : defs)
      v.push_back({d.key, d.env, type_name(d.type), d.summary});
    return v;
  }();
  return all;
}

std::string default_file() {
  if (const char* v = std::getenv("MIRE_CONFIG"); v != nullptr && *v != '\0')
    return v;
  if (std::ifstream probe{"config/mire.ini"}; probe)
    return "config/mire.ini";
  return {};
}

result<settings> load(std::string_view file, const std::vector<std::string>& flags) {
  loader l;
  return l.run(std::string(file), flags);
}

result<loaded> load(int argc, const char* const* argv) {
  std::vector<std::string> flags;
  std::vector<std::string> rest;
  std::string file = default_file();
  bool ended = false;
  for (int i = 1; i < argc; ++i) {
    const std::string_view word = argv[i];
    if (ended) {
      rest.emplace_back(word);
    } else if (word == "--") {
      ended = true;
      rest.emplace_back(word);
    } else if (word == "--config" || word == "--config-file") {
      if (i + 1 >= argc)
        return bad_input(fmt::format("option {} needs a file", word));
      file = argv[++i];
    } else if (word.starts_with("--config=") || word.starts_with("--config-file=")) {
      file = std::string(word.substr(word.find('=') + 1));
    } else if (word.starts_with("--mire.")) {
      if (word.find('=') == std::string_view::npos && i + 1 < argc)
        flags.push_back(fmt::format("{}={}", word, argv[++i]));
      else
        flags.emplace_back(word);
    } else {
      rest.emplace_back(word);
    }
  }
  auto s = load(file, flags);
  if (!s)
    return std::move(s).error();
  return loaded{std::move(*s), std::move(rest)};
}

result<void> check_schema(std::string_view option, std::string_view schema) {
  bool ok = !schema.empty() && schema.size() <= 63 && !(schema[0] >= '0' && schema[0] <= '9');
  for (char c : schema)
    ok = ok && ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_');
  if (ok)
    return {};
  return bad_input(fmt::format("{} must be 1-63 characters of a-z, 0-9 and _, not starting with "
                               "a digit, got {}",
                               option, printable(schema)));
}

std::string describe(const settings& s) {
  auto origin = [&](std::string_view key) {
    auto it = s.origin.find(std::string(key));
    return it == s.origin.end() ? std::string("default") : it->second;
  };
  std::string out = fmt::format("; effective configuration (flags > environment > file > "
                                "defaults); file: {}\n",
                                s.file.empty() ? "none" : s.file);
  std::string section;
  auto line = [&](std::string_view key, const std::string& value, std::string note = {}) {
    const auto dot = key.rfind('.');
    const std::string sec(key.substr(0, dot));
    if (sec != section) {
      out += fmt::format("\n[{}]\n", sec);
      section = sec;
    }
    const std::string left = fmt::format("{} = {}", key.substr(dot + 1), value);
    out += fmt::format("{:<36} ; {}{}\n", left, origin(key), note);
  };
  const auto& st = s.runtime.store;
  const auto& ag = s.runtime.aggregates;
  line("mire.replica_id", ini_string(s.replica_id),
       s.replica_id_derived ? ", derived: host-pid" : "");
  line("mire.database.url", ini_string(masked_url(s.store.url)),
       s.store.url.empty() ? ", the embedded server" : "");
  line("mire.database.schema", ini_string(s.store.schema));
  line("mire.database.pool_size", std::to_string(s.store.pool_size),
       s.pool_size_derived ? ", derived: workers + 4" : "");
  line("mire.database.connect_timeout",
       duration_text(std::chrono::seconds(s.store.connect_timeout_seconds)));
  line("mire.store.workers", std::to_string(st.workers));
  line("mire.store.group_window", duration_text(st.group_window));
  line("mire.store.max_group", std::to_string(st.max_group));
  line("mire.aggregates.snapshot_every", std::to_string(ag.snapshot_every));
  line("mire.aggregates.passivate_after", duration_text(ag.passivate_after));
  line("mire.aggregates.max_retries", std::to_string(ag.max_retries));
  line("mire.aggregates.store_timeout", duration_text(ag.store_timeout));
  line("mire.scheduler.policy", ini_string(s.scheduler.policy));
  line("mire.scheduler.threads", std::to_string(s.scheduler.threads),
       s.scheduler.threads == 0 ? ", CAF's default" : "");
  return out;
}

// --- runtime_host -----------------------------------------------------------------------------

struct runtime_host::impl {
  // Torn down in this order: the runtime stops its actors, the system waits for them, then the
  // configuration the system was built from goes.
  caf::actor_system_config config;
  std::unique_ptr<caf::actor_system> system;
  std::optional<actors::runtime> rt;

  ~impl() {
    rt.reset();
    system.reset();
  }
};

runtime_host::runtime_host(std::unique_ptr<impl> p) : impl_(std::move(p)) {}
runtime_host::runtime_host(runtime_host&&) noexcept = default;
runtime_host& runtime_host::operator=(runtime_host&&) noexcept = default;
runtime_host::~runtime_host() = default;

actors::runtime& runtime_host::runtime() {
  return *impl_->rt;
}

result<runtime_host> start_runtime(const settings& s, event_store store) {
  if (auto ok = actors::validate(s.scheduler); !ok)
    return error{errc::bad_input, "mire." + ok.error().message};
  if (auto ok = actors::validate(s.runtime); !ok)
    return error{errc::bad_input, "mire." + ok.error().message};
  auto p = std::make_unique<runtime_host::impl>();
  actors::add_mire_types(p->config);
  actors::configure_scheduler(p->config, s.scheduler);
  p->system = actors::make_actor_system(p->config);
  auto rt = actors::runtime::start(*p->system, std::move(store), s.runtime);
  if (!rt)
    return rt.error();
  p->rt.emplace(std::move(*rt));
  return runtime_host{std::move(p)};
}

} // namespace mire::config
