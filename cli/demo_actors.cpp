// `mire demo`, second part: the actor runtime. A bank of accounts (examples/domain/bank.hpp), each
// one an aggregate actor; concurrent clients (plain threads) deposit, withdraw and transfer
// through the runtime; then every account is replayed from the log, with no actor involved, and
// the bank's invariant is checked on what the log says: the money in the accounts is exactly the
// money that came in minus the money that went out (transfers move money, never make or lose
// it), no balance is negative, and every accepted command's event is in the log exactly once.
//
// A transfer is a withdrawal from A, then a deposit to B, each through A's and B's own actors. A
// refused deposit (B is closed) is compensated by depositing the amount back to A. A command whose
// outcome is unknown (timeout, commit in doubt) is never compensated blindly: it is reported and
// the demo fails, since the invariant can then no longer be checked exactly.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "commands.hpp"
#include "domain/bank.hpp"
#include "mire/actors/runtime.hpp"
#include "mire/store/codec.hpp"
#include "mire/store/uuid.hpp"

namespace mire::cli {

namespace {

using steady = std::chrono::steady_clock;
using actors::runtime;

constexpr int64_t opening_balance = 1000;
constexpr int closed_every = 100; // every 100th account is closed again at once
constexpr auto command_timeout = std::chrono::seconds(30);
constexpr int step_width = 36; // as in demo.cpp

void step(std::string_view left, std::string_view right) {
  fmt::print("{:<{}}{}\n", left, step_width, right);
  std::fflush(stdout);
}

double seconds_since(steady::time_point t0) {
  return std::chrono::duration<double>(steady::now() - t0).count();
}

/// What one client did; merged at the end.
struct tally {
  int64_t commands = 0, accepted = 0, rejected = 0, failed = 0;
  int64_t deposits = 0, withdrawals = 0, transfers = 0, transfers_refused = 0, compensated = 0;
  int64_t money_in = 0;  ///< accepted deposits (not part of a transfer)
  int64_t money_out = 0; ///< accepted withdrawals (not part of a transfer)
  int64_t lost = 0;      ///< transfer amounts neither deposited nor given back (must stay 0)
  std::map<std::string, int64_t> rejections; ///< by the account's error code
  std::vector<std::string> failures;         ///< the first few, for the report
  std::vector<double> latency_us;

  void merge(const tally& o) {
    commands += o.commands;
    accepted += o.accepted;
    rejected += o.rejected;
    failed += o.failed;
    deposits += o.deposits;
    withdrawals += o.withdrawals;
    transfers += o.transfers;
    transfers_refused += o.transfers_refused;
    compensated += o.compensated;
    money_in += o.money_in;
    money_out += o.money_out;
    lost += o.lost;
    for (const auto& [code, n] : o.rejections)
      rejections[code] += n;
    for (const auto& f : o.failures)
      if (failures.size() < 5)
        failures.push_back(f);
    latency_us.insert(latency_us.end(), o.latency_us.begin(), o.latency_us.end());
  }
};

/// One client: its own thread, its own random sequence, the shared runtime.
class client {
public:
  client(runtime& rt, const std::vector<std::string>& ids, unsigned seed)
      : rt_(rt), ids_(ids), rng_(seed) {}

  tally& counts() { return t_; }

  /// Sends one command and counts its outcome.
  actors::command_result<bank::account> send(const std::string& id, bank::account::command cmd) {
    const auto t0 = steady::now();
    auto r = rt_.send<bank::account>(id, std::move(cmd), command_timeout);
    t_.latency_us.push_back(seconds_since(t0) * 1e6);
    ++t_.commands;
    if (r) {
      ++t_.accepted;
    } else if (r.rejected()) {
      ++t_.rejected;
      ++t_.rejections[r.rejection().code];
    } else {
      ++t_.failed;
      if (t_.failures.size() < 5)
        t_.failures.push_back(fmt::format("{}: {}", id, r.error().what()));
    }
    return r;
  }

  /// Opens account `i` with the opening balance, or opens and closes it (every 100th).
  void open(std::size_t i) {
    const auto& id = ids_[i];
    if (!send(id, bank::open{fmt::format("owner {}", i)}))
      return;
    if (i % closed_every == closed_every - 1) {
      send(id, bank::close{"demo: a closed account refuses money"});
    } else if (send(id, bank::deposit{opening_balance})) {
      t_.money_in += opening_balance;
    }
  }

  /// One random operation: a deposit (30%), a withdrawal (20%) or a transfer (50%).
  void operate() {
    const int kind = static_cast<int>(rng_() % 10);
    const auto& a = pick();
    if (kind < 3) {
      const int64_t amount = amount_up_to(100);
      ++t_.deposits;
      if (send(a, bank::deposit{amount}))
        t_.money_in += amount;
    } else if (kind < 5) {
      const int64_t amount = amount_up_to(300);
      ++t_.withdrawals;
      if (send(a, bank::withdraw{amount}))
        t_.money_out += amount;
    } else {
      const std::string* b = &pick();
      while (b == &a)
        b = &pick();
      transfer(a, *b, amount_up_to(400));
    }
  }

private:
  void transfer(const std::string& from, const std::string& to, int64_t amount) {
    auto out = send(from, bank::withdraw{amount});
    if (!out) {
      if (out.failed())
        t_.lost += amount; // unknown: perhaps withdrawn; the demo fails on any failure anyway
      ++t_.transfers_refused;
      return;
    }
    auto in = send(to, bank::deposit{amount});
    if (in) {
      ++t_.transfers;
      return;
    }
    if (in.failed()) {
      t_.lost += amount; // the deposit may or may not be recorded: never compensate blindly
      return;
    }
    // Refused (the target is closed): nothing was deposited, so give the money back.
    if (send(from, bank::deposit{amount}))
      ++t_.compensated;
    else
      t_.lost += amount;
  }

  const std::string& pick() { return ids_[rng_() % ids_.size()]; }
  int64_t amount_up_to(int64_t max) { return 1 + static_cast<int64_t>(rng_() % max); }

  runtime& rt_;
  const std::vector<std::string>& ids_;
  std::mt19937_64 rng_;
  tally t_;
};

/// Runs `body(c)` on `n` threads at once; returns the seconds they took together.
template <class F> double run_threads(std::size_t n, F body) {
  std::vector<std::thread> threads;
  const auto t0 = steady::now();
  for (std::size_t c = 0; c < n; ++c)
    threads.emplace_back([&body, c] { body(c); });
  for (auto& t : threads)
    t.join();
  return seconds_since(t0);
}

double percentile(std::vector<double>& v, double p) {
  if (v.empty())
    return 0;
  const auto k = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return v[k];
}

/// One account as the log tells it.
struct replayed {
  bank::account state;
  int64_t events = 0;
  std::string error; ///< a read or decode failure
};

replayed replay(event_store& store, const std::string& id) {
  replayed out;
  auto events = store.read_stream(id);
  if (!events) {
    out.error = events.error().what();
    return out;
  }
  for (const auto& rec : *events) {
    auto e = event_codec<bank::account::event>::decode(rec.type, rec.data);
    if (!e) {
      out.error = e.error().what();
      return out;
    }
    out.state.apply(*e);
    ++out.events;
  }
  return out;
}

result<int64_t> count_option(const command_line& cl, std::string_view name, int64_t fallback,
                             int64_t max) {
  const auto* text = cl.value(name);
  if (text == nullptr)
    return fallback;
  auto v = parse_positive(name, *text);
  if (!v)
    return v.error();
  if (*v > max)
    return bad_input(fmt::format("--{} {} is more than the demo's limit of {}", name, *v, max));
  return *v;
}

/// The demo's own options: --accounts, --clients, --operations.
struct demo_options {
  int64_t accounts = 1000;
  int64_t clients = 8;
  int64_t operations = 1000;
};

result<demo_options> parse_demo_options(const command_line& cl) {
  demo_options o;
  auto accounts = count_option(cl, "accounts", o.accounts, 1000000);
  if (!accounts)
    return accounts.error();
  if (*accounts < 2)
    return bad_input(fmt::format(
        "--accounts must be at least 2 (a transfer needs two accounts), got {}", *accounts));
  auto clients = count_option(cl, "clients", o.clients, 256);
  if (!clients)
    return clients.error();
  auto operations = count_option(cl, "operations", o.operations, 10000000);
  if (!operations)
    return operations.error();
  return demo_options{*accounts, *clients, *operations};
}

} // namespace

result<void> check_demo_actors_options(const command_line& cl) {
  auto o = parse_demo_options(cl);
  if (!o)
    return o.error();
  return {};
}

int run_demo_actors(const context& ctx, const command_line& cl, event_store store) {
  auto parsed = parse_demo_options(cl);
  if (!parsed)
    return ctx.fail(parsed.error());
  const demo_options o = *parsed;
  const bool text = !ctx.json_output();
  const auto& options = ctx.settings().runtime;

  // Fresh accounts per run, so the demo can be run again and again on the same database.
  const std::string tag = new_uuid().substr(24, 8);
  std::vector<std::string> ids;
  ids.reserve(static_cast<std::size_t>(o.accounts));
  for (int64_t i = 0; i < o.accounts; ++i)
    ids.push_back(fmt::format("bank-{}-{:04}", tag, i));
  const auto n_clients = static_cast<std::size_t>(o.clients);

  if (text) {
    fmt::print("\nthe actor runtime: {} accounts (bank-{}-*), each an aggregate actor; {} "
               "concurrent clients\n",
               o.accounts, tag, o.clients);
    fmt::print("store actor: {} workers, group window {} us, max group {}; scheduler {}; "
               "configuration: {}\n\n",
               options.store.workers, options.store.group_window.count(), options.store.max_group,
               ctx.settings().scheduler.policy,
               ctx.settings().file.empty() ? "built-in defaults" : ctx.settings().file);
  }

  tally opened, run;
  double open_secs = 0, run_secs = 0;
  {
    auto host = config::start_runtime(ctx.settings(), store);
    if (!host)
      return ctx.fail(host.error());
    std::vector<client> cs;
    cs.reserve(n_clients);
    for (std::size_t c = 0; c < n_clients; ++c)
      cs.emplace_back(**host, ids, static_cast<unsigned>(0x5eed + c));

    // Opening: each client opens its share of the accounts.
    open_secs = run_threads(n_clients, [&](std::size_t c) {
      for (std::size_t i = c; i < ids.size(); i += n_clients)
        cs[c].open(i);
    });
    for (auto& c : cs) {
      opened.merge(c.counts());
      c.counts() = tally{};
    }
    if (text) {
      step(fmt::format("6. open {} accounts", o.accounts),
           fmt::format("{} commands in {:.2f} s: {} with {} each, {} closed again", opened.commands,
                       open_secs, opened.money_in / opening_balance, opening_balance,
                       o.accounts / closed_every));
      step(fmt::format("7. {} clients x {} operations", o.clients, o.operations),
           "deposits 30%, withdrawals 20%, transfers 50%");
    }

    // The run: every client issues its operations at once, against any account.
    run_secs = run_threads(n_clients, [&](std::size_t c) {
      for (int64_t k = 0; k < o.operations; ++k)
        cs[c].operate();
    });
    for (auto& c : cs)
      run.merge(c.counts());
    // The runtime (and every actor) stops at the end of this block: what follows reads the log.
  }
  tally total = opened;
  total.merge(run);

  std::vector<double> latency = run.latency_us;
  const double rate = run_secs > 0 ? static_cast<double>(run.commands) / run_secs : 0;
  const double p50 = percentile(latency, 0.50) / 1e3, p99 = percentile(latency, 0.99) / 1e3;
  if (text) {
    step("", fmt::format("{} commands in {:.2f} s: {:.0f} commands/s, latency p50 {:.2f} ms, "
                         "p99 {:.2f} ms",
                         run.commands, run_secs, rate, p50, p99));
    std::string refusals;
    for (const auto& [code, n] : run.rejections)
      refusals += fmt::format("{}{} {}", refusals.empty() ? "" : ", ", code, n);
    step("", fmt::format("accepted {}, refused by the accounts' rules {} ({})", run.accepted,
                         run.rejected, refusals.empty() ? "none" : refusals));
    step("", fmt::format("transfers: {} done, {} refused (funds), {} given back (closed target)",
                         run.transfers, run.transfers_refused, run.compensated));
  }

  // The fresh replay: every account read back from the log and folded, in parallel.
  const auto t_replay = steady::now();
  std::vector<replayed> states(ids.size());
  const std::size_t readers = std::min<std::size_t>(n_clients, 4);
  run_threads(readers, [&](std::size_t r) {
    for (std::size_t i = r; i < ids.size(); i += readers)
      states[i] = replay(store, ids[i]);
  });
  const double replay_secs = seconds_since(t_replay);

  int64_t sum = 0, events = 0, negative = 0, closed_with_money = 0, closed = 0;
  int64_t lowest = INT64_MAX;
  std::vector<std::string> problems;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const auto& s = states[i];
    if (!s.error.empty()) {
      problems.push_back(fmt::format("{}: {}", ids[i], s.error));
      continue;
    }
    sum += s.state.balance;
    events += s.events;
    lowest = std::min(lowest, s.state.balance);
    if (s.state.balance < 0)
      ++negative;
    if (s.state.status == bank::account_status::closed) {
      ++closed;
      if (s.state.balance != 0)
        ++closed_with_money;
    }
  }
  if (lowest == INT64_MAX)
    lowest = 0;
  const int64_t expected = total.money_in - total.money_out;
  const bool conserved = sum == expected && total.lost == 0;
  const bool exactly_once = events == total.accepted;
  const bool ok = problems.empty() && conserved && negative == 0 && closed_with_money == 0 &&
                  exactly_once && total.failed == 0;

  if (text) {
    step("8. replay every account",
         fmt::format("{} events in {:.2f} s, no actor involved", events, replay_secs));
    step("", fmt::format("money in the accounts {} = came in {} - went out {}: {}", sum,
                         total.money_in, total.money_out, sum == expected ? "yes" : "NO"));
    step("", fmt::format("lowest balance {}; {} closed accounts, {} holding money", lowest, closed,
                         closed_with_money));
    step("", fmt::format("events in the log {} = accepted commands {}: {}", events, total.accepted,
                         exactly_once ? "yes" : "NO"));
    for (const auto& f : total.failures)
      step("", "failed: " + f);
    for (const auto& p : problems)
      step("", "unreadable: " + p);
    if (total.lost != 0)
      step("", fmt::format("transfers in doubt: {} in money whose fate is unknown", total.lost));
    fmt::print("\ninvariant: {}\n", ok ? "holds (money conserved, no negative balance, every "
                                         "accepted command recorded exactly once)"
                                       : "VIOLATED");
    fmt::print("next:      mire streams --category bank\n");
  } else {
    ctx.print({{"actors",
                {{"accounts", ids.size()},
                 {"clients", n_clients},
                 {"operations_per_client", o.operations},
                 {"opening_commands", opened.commands},
                 {"commands", run.commands},
                 {"seconds", run_secs},
                 {"commands_per_second", rate},
                 {"latency_p50_ms", p50},
                 {"latency_p99_ms", p99},
                 {"accepted", total.accepted},
                 {"rejected", total.rejected},
                 {"failed", total.failed},
                 {"transfers", run.transfers},
                 {"compensated", run.compensated},
                 {"replayed_events", events},
                 {"balance_total", sum},
                 {"expected_total", expected},
                 {"lowest_balance", lowest},
                 {"invariant", ok}}}});
  }
  if (!ok)
    return ctx.fail(error{errc::internal, "the bank's invariant does not hold after the actor run "
                                          "(see above)"});
  return 0;
}

} // namespace mire::cli
