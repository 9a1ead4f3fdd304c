// The `mire` command: parses the line, picks the command, maps every error to an exit code.
// Its output is a contract (README.md and the help text below): scripts and tests read it, so it is
// documented in full in the help text below and changed only together with that text.
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "args.hpp"
#include "commands.hpp"
#include "context.hpp"

#ifndef MIRE_VERSION
#error "MIRE_VERSION must be defined by the build"
#endif

namespace {

using namespace mire::cli;

constexpr std::string_view help_text = R"(mire: an event store on PostgreSQL

usage: mire [--config FILE] [--mire.SECTION.KEY=VALUE...] [--db URL] [--schema NAME] [--json]
            COMMAND [ARGS...]

Without --db (or MIRE_DATABASE_URL) mire uses its embedded PostgreSQL, kept under
MIRE_HOME (default ./.mire) and started on demand by any command that needs it.
Global options may also follow the command. Every command that reads or writes events
first applies pending migrations.

commands:
  db start|stop|status|url   manage the embedded database (start, stop, status);
                             url prints the URL mire connects to (psql accepts it),
                             starting the embedded database if needed
  migrate                    apply pending schema migrations
  append STREAM --type TYPE --data JSON [--metadata JSON]
         [--expected-version N|any|no-stream] [--event-id UUID]
                             append one event; the default expected version is any;
                             repeating an --event-id stores nothing twice
  read STREAM [--from VERSION]
                             the events of one stream, from VERSION (default 1)
  read-all [--after CHECKPOINT] [--category CAT] [--limit N]
                             the global log (or one category) after CHECKPOINT, in
                             an order no reader can skip an event through; pass the
                             last event's checkpoint back as --after to continue
  streams [--category CAT]   the streams and their versions
  tail [--after CHECKPOINT|end] [--category CAT] [--type T[,T...]] [--limit N]
                             follow the global log live: the events after CHECKPOINT
                             (default: from the start; end: only what comes from now
                             on, never skipping one) in read-all's order, then each
                             new one as it commits, never skipping one; --type keeps
                             the events of those types; ends after N events, or at
                             SIGINT/SIGTERM (exit 0, after the page in hand); while
                             following, a database outage is waited out
  projections                every projection: state, lease owner and fence, live
                             generation, checkpoint, lag, dead letters, rebuild
  projection rebuild NAME [--no-wait] [--timeout DURATION]
                             build NAME's read model anew beside the live one; the
                             replica driving NAME switches readers to it once it has
                             caught up. Follows it until the switch (a progress bar
                             on a terminal), saying so when no replica drives NAME;
                             --no-wait only asks; --timeout (500ms, 30s, 2min, 1h)
                             bounds the wait: exit 1 then, the rebuild goes on
  projection reset NAME --to CHECKPOINT|start
                             move NAME's checkpoint (its read model is left as it is)
                             and set it running: its driver continues after it
  projection resume NAME     set a stopped NAME running; the event that stopped it is
                             tried again
  projection dead-letters NAME
                             the events NAME's handler refused and parked, oldest
                             first
  projection skip ID         mark dead letter ID skipped (it stays listed)
  projection retry ID        queue dead letter ID for another try by its driver
  leases                     the leases: who holds what, with fence and expiry
  demo [--accounts N] [--clients N] [--operations N]
                             the quickstart: a bank account, load -> record -> save;
                             then the actor runtime: N accounts (default 1000), N
                             concurrent clients (default 8) each issuing N operations
                             (default 1000: deposits, withdrawals, transfers) through
                             aggregate actors, throughput, and the invariant (money
                             conserved, no negative balance) checked against a fresh
                             replay of the log; exits 1 when it does not hold
  bench store|actors|projections [--scale X]
                             benchmark the store, commands through aggregate
                             actors, or projections (catch-up, live lag, takeover
                             after SIGKILL), against raw libpq (in a schema of its
                             own; --scale multiplies the workload sizes; actors uses
                             the configuration's store and aggregate options)
  config                     the effective configuration, as a configuration file,
                             with where each value came from
  help, --help               this text
  --version                  the version of mire

options:
  --config FILE  configuration file (CAF INI format; also --config-file=FILE); default:
                 MIRE_CONFIG, else ./config/mire.ini when it exists, else built-in
                 defaults. config/mire.ini documents every option
  --mire.SECTION.KEY=VALUE
                 one configuration option, e.g. --mire.store.workers=8; precedence:
                 flags > environment > file > defaults; an invalid value is refused
                 (exit 2) naming the option
  --db URL       libpq URL or "key=value" string of the database (flag for
                 mire.database.url; else MIRE_DATABASE_URL, else the file)
  --schema NAME  Postgres schema of mire's tables (flag for mire.database.schema;
                 default mire)
  --json         print JSON, one object per line
  --             ends the options: what follows is positional (a stream id "--x")

output (text):
  append      version V position P           (P: global position; " duplicate" is
                                              added when the event id was stored before)
  read, read-all
              POSITION<TAB>STREAM<TAB>VERSION<TAB>TYPE<TAB>DATA, one line per event
  streams     STREAM<TAB>VERSION<TAB>LAST_POSITION
  tail        as read-all
  projections NAME<TAB>STATE<TAB>OWNER<TAB>FENCE<TAB>GENERATION<TAB>CHECKPOINT<TAB>
              APPLIED<TAB>LAG_EVENTS<TAB>LAG_SECONDS<TAB>PARKED<TAB>REBUILD<TAB>ERROR
              (one line; STATE running|stopped; OWNER the lease holder, "-" when none
              holds it; APPLIED events applied by the live generation; LAG events not
              yet applied and the age of the oldest; PARKED dead letters waiting;
              REBUILD "-", "requested" or "gN P%"; ERROR why it stopped, or "-")
  projection rebuild
              progress: on a terminal one line redrawn in place, otherwise now and
              then a line: rebuilding NAME: generation G P% (A/T events, R events/s)
              at the end: rebuilt NAME: generation G is live (N events applied, S.Ss)
              when no replica drives it, a line: waiting for a replica to drive
              projection NAME (no replica holds its lease)
              with --no-wait: rebuild of NAME requested
  projection reset, resume, skip, retry
              "reset NAME to CHECKPOINT", "resumed NAME", "skipped dead letter ID",
              "queued dead letter ID for another try"
  projection dead-letters
              ID<TAB>STATUS<TAB>GENERATION<TAB>CHECKPOINT<TAB>STREAM<TAB>VERSION<TAB>
              TYPE<TAB>PARKED_AT<TAB>REASON (STATUS parked|retry|skipped|applied)
  leases      RESOURCE<TAB>OWNER<TAB>FENCE<TAB>HELD<TAB>EXPIRES_AT (HELD yes|no)
  migrate     applied N migrations
  db start, db status
              lines "running: yes|no", "initialized: yes|no", "pid: N" (when
              running), "data_dir: DIR", "url: URL"
  db stop     stopped
  db url      the URL

output (--json, one object per line):
  append      {"stream_id", "version", "global_position", "duplicate"}
  read, read-all
              {"stream_id", "version", "type", "data", "metadata", "event_id",
               "global_position", "recorded_at", "checkpoint"}; data and metadata are
              JSON values; checkpoint is what --after takes
  streams     {"stream_id", "version", "last_position"}
  tail        as read-all
  projections {"name", "state", "last_error", "owner", "fence_token", "lease_held",
               "live_generation", "checkpoint", "events_applied", "lag_events",
               "lag_seconds", "parked", "last_event_at", "updated_at",
               "rebuild_requested", "rebuild"}; rebuild is null or {"generation",
              "checkpoint", "events_applied", "lag_events"}; owner is the last holder
              (a runner's is "<replica id>#<tag>", one tag per lease actor; null: never
              held) and lease_held whether it holds the lease now
  projection rebuild
              progress {"name", "generation", "events_applied", "lag_events",
              "percent", "events_per_second", "owner"}; when no replica drives it
              {"name", "waiting_for_replica": true, "message"}; at the end {"name",
              "live_generation", "switched": true}; with --no-wait {"name",
              "rebuild_requested": true}
  projection reset, resume
              {"name", "checkpoint", "state"} (reset), {"name", "state"} (resume)
  projection skip, retry
              {"id", "status": "skipped"|"retry"}
  projection dead-letters
              {"id", "projection", "generation", "status", "checkpoint", "event_id",
               "stream_id", "version", "type", "reason", "parked_at"}
  leases      {"resource", "owner", "fence_token", "held", "expires_at", "acquired_at"}
  migrate     {"applied"}
  db start, db status
              {"running", "initialized", "pid", "data_dir", "socket_dir", "url"}
  db stop     {"running": false}
  db url      {"url"}
  errors      {"error": CODE, "message": TEXT} on stdout; a version_conflict also has
              "stream_id", "expected" and "actual" (-1 means any)

errors: one line "mire: CODE: MESSAGE" on stderr (without --json).

exit codes:
  0  ok
  1  other failure (also: no such projection or dead letter, a rebuild that did not
     finish within --timeout, a stopped projection that cannot rebuild)
  2  usage error or bad input (the message names the bad value)
  3  concurrency conflict: the stream was not at the expected version
  4  database unavailable

environment:
  MIRE_DATABASE_URL  database to use when --db is not given
  MIRE_HOME          home of the embedded database (default ./.mire)
  MIRE_CONFIG        configuration file when --config is not given
  MIRE_SCHEMA, MIRE_REPLICA_ID, MIRE_STORE_WORKERS, ...
                     one variable per configuration option (see config/mire.ini)
)";

int print_help() {
  fmt::print("{}", help_text);
  return 0;
}

int run_help(const context&, const command_line&) {
  return print_help();
}

struct command {
  std::string_view name;
  std::vector<option_spec> options; ///< besides the global ones
  int (*run)(const context&, const command_line&);
};

const std::vector<command>& commands() {
  static const std::vector<command> table{
      {"db", {}, run_db},
      {"migrate", {}, run_migrate},
      {"append",
       {{"type", true},
        {"data", true},
        {"metadata", true},
        {"expected-version", true},
        {"event-id", true}},
       run_append},
      {"read", {{"from", true}}, run_read},
      {"read-all", {{"after", true}, {"category", true}, {"limit", true}}, run_read_all},
      {"streams", {{"category", true}}, run_streams},
      {"tail", {{"after", true}, {"category", true}, {"type", true}, {"limit", true}}, run_tail},
      {"projections", {}, run_projections},
      {"projection", {{"no-wait", false}, {"timeout", true}, {"to", true}}, run_projection},
      {"leases", {}, run_leases},
      {"demo", {{"accounts", true}, {"clients", true}, {"operations", true}}, run_demo},
      {"bench", {{"scale", true}}, run_bench},
      {"config", {}, run_config},
      {"help", {}, run_help},
  };
  return table;
}

const command* find_command(std::string_view name) {
  for (const auto& c : commands())
    if (c.name == name)
      return &c;
  return nullptr;
}

// Whether a usage error should be printed as JSON: the line did not parse, so this is a guess
// from the raw words.
bool wants_json(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (std::string_view(argv[i]) == "--json")
      return true;
  return false;
}

} // namespace

int main(int argc, char** argv) {
  auto cl = parse_command_line(argc, argv, [](std::string_view name) {
    const auto* c = find_command(name);
    return c ? &c->options : nullptr;
  });
  if (!cl)
    return report(cl.error(), wants_json(argc, argv));
  // Help and the version need no configuration: they answer even when it is broken.
  if (cl->has("help") || cl->command == "help")
    return print_help();
  if (cl->has("version")) {
    fmt::print("mire {}\n", MIRE_VERSION);
    return 0;
  }
  auto ctx = context::from(*cl);
  if (!ctx)
    return report(ctx.error(), cl->has("json"));

  if (cl->command.empty())
    return ctx->fail(mire::bad_input("no command given (see 'mire help')"));
  return find_command(cl->command)->run(*ctx, *cl);
}
