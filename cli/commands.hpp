// The `mire` commands. Each one is a small main(): it reads its arguments, does its work and
// returns the process exit code, printing its own output and errors through the context.
#pragma once

#include "args.hpp"
#include "context.hpp"

namespace mire::cli {

/// `mire db start|stop|status|url`
int run_db(const context& ctx, const command_line& cl);
/// `mire migrate`
int run_migrate(const context& ctx, const command_line& cl);
/// `mire append STREAM --type TYPE --data JSON [--metadata JSON] [--expected-version V]
/// [--event-id UUID]`
int run_append(const context& ctx, const command_line& cl);
/// `mire read STREAM [--from VERSION]`
int run_read(const context& ctx, const command_line& cl);
/// `mire read-all [--after CHECKPOINT] [--category CAT] [--limit N]`
int run_read_all(const context& ctx, const command_line& cl);
/// `mire streams [--category CAT]`
int run_streams(const context& ctx, const command_line& cl);
/// `mire bench store|actors [--scale X]`
int run_bench(const context& ctx, const command_line& cl);
/// `mire config`: the effective configuration and where each value came from
int run_config(const context& ctx, const command_line& cl);
/// `mire demo` (demo.cpp): the quickstart, then the actor runtime (demo_actors.cpp)
int run_demo(const context& ctx, const command_line& cl);
/// The actor runtime part of `mire demo` (demo_actors.cpp), on the demo's store.
int run_demo_actors(const context& ctx, const command_line& cl, event_store store);
/// Checks the options of that part (--accounts, --clients, --operations) before the demo starts.
result<void> check_demo_actors_options(const command_line& cl);

/// `mire tail [--after CHECKPOINT] [--category CAT] [--type T[,T...]] [--limit N]` (tail.cpp)
int run_tail(const context& ctx, const command_line& cl);
/// `mire projections` (projections.cpp): every projection's status, one per line
int run_projections(const context& ctx, const command_line& cl);
/// `mire projection rebuild|reset|resume|dead-letters|skip|retry ...` (projections.cpp)
int run_projection(const context& ctx, const command_line& cl);
/// `mire leases` (projections.cpp): the lease table
int run_leases(const context& ctx, const command_line& cl);

/// Prints one event as `read` and `read-all` do: POSITION, STREAM, VERSION, TYPE, DATA separated
/// by tabs, or with --json an object that carries its checkpoint.
void print_event(const context& ctx, const recorded_event& e);
/// The value of --category (empty when absent), checked: non-empty and without '-'.
result<std::string> category_option(const command_line& cl);

/// Where a reader of the global log starts and how much it prints: --after CHECKPOINT (default:
/// the start), --limit N (default: no limit), --category CAT (default: every category).
struct log_read_options {
  checkpoint after = checkpoint::start();
  bool after_end = false; ///< --after end: from the log's head when the command starts
  std::optional<int64_t> limit;
  std::string category;
};
result<log_read_options> log_read_options_of(const command_line& cl);
/// Where the read starts: `after`, or the log's head for --after end.
result<checkpoint> read_start(const log_read_options& o, event_store& store);

} // namespace mire::cli
