// Why this pattern exists: two writers that both read an account at version 5 and both save
// "deposit" would, with update-in-place, lose one deposit. Here every save states the version it
// decided on; the database takes the first and refuses the second with a version conflict, and
// stores nothing of it. The loser reads the account again, decides again on the new state (the
// deposit may now be refused, or be different) and saves again. By hand that is a loop around
// load -> decide -> save; through the actor runtime the aggregate actor does it itself (a
// bounded number of times, aggregate_options::max_retries) and tells you how often.
//
// Here: two threads race on one account, first by hand with mire::repository, then through two
// runtimes on the same database (two "replicas", each its own store actor and actors). In both,
// the final balance is the sum of every accepted deposit: no update is lost.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <iostream>
#include <string>
#include <thread>

#include "common.hpp"
#include "domain/bank.hpp"
#include "mire/actors/runtime.hpp"
#include "mire/store/repository.hpp"

using namespace std::chrono_literals;

namespace {

constexpr int deposits_per_writer = 40;

// What the writers of one race did.
struct tally {
  std::atomic<int64_t> accepted_amount{0};
  std::atomic<int> accepted{0}, failed{0}, retries{0};
};

// Runs `writer(0)` and `writer(1)` on two threads at once.
void race(const std::function<void(int)>& writer) {
  std::thread a{writer, 0}, b{writer, 1};
  a.join();
  b.join();
}

// One deposit by hand: load, decide, save; on a conflict, again from a fresh load.
void deposit_by_hand(mire::repository<bank::account>& accounts, const std::string& id,
                     int64_t amount, tally& t) {
  for (;;) {
    auto acc = example::must(accounts.load(id), "load");
    auto d = acc.state().decide(bank::deposit{amount});
    if (d.is_rejected()) {
      ++t.failed;
      return;
    }
    for (const auto& e : d.events())
      acc.record(e);
    auto saved = accounts.save(acc);
    if (saved) {
      ++t.accepted;
      t.accepted_amount += amount;
      return;
    }
    if (saved.error().code != mire::errc::version_conflict) {
      std::cerr << "save failed: " << saved.error().what() << "\n";
      ++t.failed;
      return;
    }
    ++t.retries; // the other writer was first: nothing of ours was stored; decide again
  }
}

// Checks the log against what the writers were told, and says so.
bool check(mire::event_store& store, const std::string& id, int64_t opening, const tally& t) {
  auto replayed = example::must(mire::load<bank::account>(store, id), "replaying the log");
  const int64_t expected = opening + t.accepted_amount;
  std::cout << "  final balance " << replayed.state().balance << " = " << opening
            << " + accepted deposits " << t.accepted_amount << " ("
            << (replayed.state().balance == expected ? "no lost update" : "LOST UPDATES") << "), "
            << replayed.version() << " events\n";
  return replayed.state().balance == expected && replayed.version() == 1 + t.accepted;
}

} // namespace

int main(int argc, char** argv) {
  auto store = example::open_store(argc, argv);
  bool ok = true;

  // --- 1. By hand: mire::repository, a retry loop around load -> decide -> save. -------------
  {
    mire::repository<bank::account> accounts{store};
    const std::string id = example::fresh_id("account");
    auto acc = accounts.load(id).value();
    acc.record(bank::opened{"Ada"});
    example::must(accounts.save(acc), "opening");

    tally t;
    race([&](int writer) {
      for (int i = 1; i <= deposits_per_writer; ++i)
        deposit_by_hand(accounts, id, writer == 0 ? i : 100, t);
    });
    std::cout << "by hand, 2 threads x " << deposits_per_writer << " deposits: " << t.accepted
              << " accepted, " << t.retries << " conflicts retried\n";
    ok = check(store, id, 0, t) && t.accepted == 2 * deposits_per_writer && ok;
  }

  // --- 2. Through the runtime: two replicas, each with its own store actor and actors. -------
  {
    // Another connection pool to the same database, as a second process would have.
    auto other_store = example::must(mire::event_store::open(store.options()), "connecting");
    mire::actors::runtime_options options = example::settings().runtime;
    // Two writers hammering one account conflict often: allow for it.
    options.aggregates.max_retries = std::max(options.aggregates.max_retries, 10);
    mire::actors::runtime replicas[] = {
        example::must(mire::actors::runtime::start(store, options), "starting replica A"),
        example::must(mire::actors::runtime::start(other_store, options), "starting replica B")};
    const std::string id = example::fresh_id("account");
    auto opened = replicas[0].send<bank::account>(id, bank::open{"Bob"}, 5s);
    if (!opened) {
      std::cout << "FAILED: opening through replica A\n";
      return 1;
    }

    // First a race in slow motion: both replicas hold the account in memory (version 1), B
    // deposits, then A deposits on its stale copy: A's actor gets a conflict, reloads, decides
    // again and succeeds: retries = 1, and no error for the caller.
    (void)example::must(replicas[1].load<bank::account>(id, 5s), "loading on B");
    auto by_b = replicas[1].send<bank::account>(id, bank::deposit{10}, 5s);
    auto by_a = replicas[0].send<bank::account>(id, bank::deposit{20}, 5s);
    if (!by_b || !by_a) {
      std::cout << "FAILED: a deposit of the slow race did not go through\n";
      return 1;
    }
    std::cout << "runtime, slow race: B deposited 10 (version " << by_b->version
              << "), then A deposited 20 on its stale copy: version " << by_a->version
              << ", retries " << by_a->retries << "\n";
    ok = ok && by_a->retries >= 1 && by_a->version == 3;

    // Then both replicas at full speed, from two threads. A command that lost more races than
    // max_retries allows comes back as a conflict, with nothing of it stored: the caller may
    // send it again. Any other failure (timeout, commit_in_doubt) would leave its outcome unknown.
    tally t;
    t.accepted_amount = 30;
    t.accepted = 2;
    std::atomic<int> gave_up{0};
    race([&](int writer) {
      for (int i = 1; i <= deposits_per_writer; ++i) {
        const int64_t amount = writer == 0 ? i : 100;
        auto r = replicas[writer].send<bank::account>(id, bank::deposit{amount}, 10s);
        if (r) {
          ++t.accepted;
          t.accepted_amount += amount;
          t.retries += r->retries;
        } else if (r.failed() && r.error().code == mire::errc::version_conflict) {
          ++gave_up;
        } else {
          std::cerr << "deposit failed: "
                    << (r.rejected() ? r.rejection().message : r.error().what()) << "\n";
          ++t.failed;
        }
      }
    });
    std::cout << "runtime, 2 replicas x " << deposits_per_writer << " deposits: " << t.accepted - 2
              << " accepted (retries " << t.retries << "), " << gave_up << " gave up after "
              << options.aggregates.max_retries << " retries, " << t.failed << " failed\n";
    ok = check(store, id, 0, t) && t.failed == 0 && ok;
  }

  std::cout << (ok ? "ok: every accepted deposit is in the balance\n" : "FAILED\n");
  return ok ? 0 : 1;
}
