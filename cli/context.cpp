// Where the database is, and how results and errors are printed; see context.hpp.
#include "context.hpp"

#include <cstdio>
#include <cstdlib>

#include <fmt/format.h>

namespace mire::cli {

namespace {

// An unset or empty variable counts as absent, so `VAR= mire ...` restores the default.
std::optional<std::string> env(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0')
    return std::nullopt;
  return std::string(v);
}

// Error messages are one line on stderr (scripts read the first line); libpq and pg_ctl messages
// span several, so their line breaks become "; ".
std::string one_line(std::string_view text) {
  std::string out;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '\n') {
      out += text[i];
      continue;
    }
    while (i + 1 < text.size() &&
           (text[i + 1] == ' ' || text[i + 1] == '\t' || text[i + 1] == '\n'))
      ++i;
    if (i + 1 < text.size())
      out += "; ";
  }
  return out;
}

// Events and messages may hold invalid UTF-8 (a stream id typed by a user, say): replace it rather
// than let the JSON encoder throw.
std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

} // namespace

int report(const error& e, bool as_json) {
  if (as_json) {
    json j{{"error", to_string(e.code)}, {"message", e.message}};
    if (e.code == errc::version_conflict) {
      j["stream_id"] = e.stream_id;
      j["expected"] = e.expected;
      j["actual"] = e.actual;
    }
    fmt::print("{}\n", dump(j));
  } else {
    fmt::print(stderr, "mire: {}\n", one_line(e.what()));
  }
  return exit_code(e.code);
}

result<context> context::from(const command_line& cl) {
  context c;
  c.json_ = cl.has("json");
  const auto* file = cl.value("config");
  if (const auto* alias = cl.value("config-file")) {
    if (file != nullptr)
      return bad_input("give either --config or --config-file, not both");
    file = alias;
  }
  if (file != nullptr && file->empty())
    return bad_input("--config needs a file, got ''");
  auto settings = config::load(file ? *file : config::default_file(), cl.config_flags);
  if (!settings)
    return std::move(settings).error();
  c.settings_ = std::move(*settings);
  // --db and --schema are the short flags of mire.database.url and mire.database.schema.
  if (const auto* db = cl.value("db")) {
    if (db->empty())
      return bad_input("--db needs a database URL, got ''");
    if (auto ok = check_database_url(*db); !ok)
      return bad_input("--db: " + ok.error().message);
    c.settings_.store.url = *db;
    c.settings_.origin["mire.database.url"] = "flag --db";
  }
  if (const auto* schema = cl.value("schema")) {
    if (auto ok = config::check_schema("--schema", *schema); !ok)
      return ok.error();
    c.settings_.store.schema = *schema;
    c.settings_.origin["mire.database.schema"] = "flag --schema";
  }
  if (!c.settings_.store.url.empty())
    c.url_ = c.settings_.store.url;
  c.home_ = env("MIRE_HOME").value_or("./.mire");
  return c;
}

result<std::string> context::database_url() const {
  if (url_)
    return *url_;
  // The handle's destructor leaves the server running: later commands reuse it, and
  // `mire db stop` stops it.
  auto server = embedded_postgres::start(embedded());
  if (!server)
    return server.error();
  return server->url();
}

result<store_options> context::store_options_resolved() const {
  auto url = database_url();
  if (!url)
    return url.error();
  auto options = settings_.store;
  options.url = *url;
  return options;
}

result<event_store> context::open_unmigrated_store() const {
  auto options = store_options_resolved();
  if (!options)
    return options.error();
  return event_store::open(std::move(*options));
}

result<event_store> context::open_store() const {
  auto store = open_unmigrated_store();
  if (!store)
    return store;
  if (auto applied = store->migrate(); !applied)
    return applied.error();
  return store;
}

void context::print(const json& object) const {
  fmt::print("{}\n", dump(object));
}

} // namespace mire::cli
