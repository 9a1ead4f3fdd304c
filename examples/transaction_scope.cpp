// Why this pattern exists: a transfer touches two accounts, two streams. Saved one by one, a
// crash or a conflict between the two saves leaves money withdrawn and never deposited. Inside
// one transaction scope both accounts are read, both decisions taken, and both appends commit
// together or not at all; each append still checks the version its account was read at, so a
// concurrent write to either account rolls back the whole transfer, which is then simply retried.
// Keep such scopes small and rare: most commands touch one aggregate (see bank_account).
//
// store.transact([](mire::transaction& tx) { mire::load(tx, ...); ...; mire::save(tx, ...); })
#include <cstdio>
#include <functional>
#include <iostream>
#include <string>

#include "common.hpp"
#include "domain/bank.hpp"
#include "mire/store/repository.hpp"

namespace {

using account = mire::aggregate<bank::account>;

// What a transfer came to: done, or refused by one of the accounts' rules (then nothing is
// written). Failures (a conflict, the database) are the transaction's error instead.
struct transfer_outcome {
  bool done = false;
  mire::rejected refusal;
};

// Runs `cmd` on a loaded account: records its events, or returns the refusal.
std::optional<mire::rejected> run(account& acc, const bank::account::command& cmd) {
  auto d = acc.state().decide(cmd);
  if (d.is_rejected())
    return d.rejection();
  for (const auto& e : d.events())
    acc.record(e);
  return std::nullopt;
}

// Moves `amount` from one account to the other, all or nothing. `meanwhile` runs after both
// accounts were read and before anything is written: it plays a concurrent writer.
mire::result<transfer_outcome> transfer(mire::event_store& store, const std::string& from,
                                        const std::string& to, int64_t amount,
                                        const std::function<void()>& meanwhile = {}) {
  return store.transact([&](mire::transaction& tx) -> mire::result<transfer_outcome> {
    auto src = mire::load<bank::account>(tx, from);
    if (!src)
      return src.error();
    auto dst = mire::load<bank::account>(tx, to);
    if (!dst)
      return dst.error();
    if (auto refused = run(*src, bank::withdraw{amount}))
      return transfer_outcome{false, *refused};
    if (auto refused = run(*dst, bank::deposit{amount}))
      return transfer_outcome{false, *refused};
    if (meanwhile)
      meanwhile();
    // Each save expects the version its account was read at; the first conflict aborts both.
    if (auto saved = mire::save(tx, *src); !saved)
      return saved.error();
    if (auto saved = mire::save(tx, *dst); !saved)
      return saved.error();
    return transfer_outcome{true, {}};
  });
}

// Opens an account with a first deposit (one stream, one append).
void open_account(mire::event_store& store, const std::string& id, const std::string& owner,
                  int64_t amount) {
  auto acc = example::must(mire::load<bank::account>(store, id), "loading " + id);
  if (run(acc, bank::open{owner}) || run(acc, bank::deposit{amount}))
    std::exit(1);
  example::must(mire::save(store, acc), "opening " + id);
}

struct balances {
  int64_t ada, bob, ada_version, bob_version;
};

} // namespace

int main(int argc, char** argv) {
  auto store = example::open_store(argc, argv);
  const std::string ada = example::fresh_id("account"), bob = example::fresh_id("account");
  open_account(store, ada, "Ada", 100);
  open_account(store, bob, "Bob", 50);
  int64_t money_in = 150; // every deposit from outside; transfers only move money around
  bool ok = true;

  auto read = [&] {
    auto a = example::must(mire::load<bank::account>(store, ada), "loading Ada");
    auto b = example::must(mire::load<bank::account>(store, bob), "loading Bob");
    return balances{a.state().balance, b.state().balance, a.version(), b.version()};
  };
  auto show = [&](const char* when) {
    auto b = read();
    std::printf("%-44s Ada %4lld (v%lld)  Bob %4lld (v%lld)  total %lld\n", when,
                static_cast<long long>(b.ada), static_cast<long long>(b.ada_version),
                static_cast<long long>(b.bob), static_cast<long long>(b.bob_version),
                static_cast<long long>(b.ada + b.bob));
    return b;
  };
  const auto start = show("opened:");

  // 1. A transfer that the accounts allow: both sides commit in one transaction.
  auto t1 = example::must(transfer(store, ada, bob, 30), "transfer 1");
  auto after1 = show("transfer 30 Ada -> Bob: done");
  ok = ok && t1.done && after1.ada == 70 && after1.bob == 80;

  // 2. A transfer that would overdraw Ada: refused by her account's rules, nothing written.
  auto t2 = example::must(transfer(store, ada, bob, 500), "transfer 2");
  std::cout << "transfer 500 Ada -> Bob: refused: " << t2.refusal.code << ": " << t2.refusal.message
            << "\n";
  auto after2 = show("after the refusal:");
  ok = ok && !t2.done && t2.refusal.code == "insufficient_funds" &&
       after2.ada_version == after1.ada_version && after2.bob_version == after1.bob_version;

  // 3. Someone deposits to Ada while a transfer Bob -> Ada is between its reads and its writes.
  //    Bob's withdrawal is written first inside the transaction, then Ada's deposit conflicts:
  //    the whole transaction rolls back, Bob's withdrawal included.
  auto t3 = transfer(store, bob, ada, 20, [&] {
    example::must(
        store.append(ada, mire::expected_version::any(),
                     {mire::event_codec<bank::account::event>::encode(bank::deposited{5})}),
        "the concurrent deposit");
    money_in += 5;
  });
  if (t3 || t3.error().code != mire::errc::version_conflict) {
    std::cout << "FAILED: the transfer that raced a concurrent write was not refused\n";
    return 1;
  }
  std::cout << "transfer 20 Bob -> Ada raced a deposit to Ada: rolled back: " << t3.error().what()
            << "\n";
  auto after3 = show("after the rollback:");
  ok = ok && after3.bob == after2.bob && after3.bob_version == after2.bob_version &&
       after3.ada == after2.ada + 5;

  // 4. Retried from a fresh read, it goes through.
  auto t4 = example::must(transfer(store, bob, ada, 20), "transfer 4");
  auto after4 = show("transfer 20 Bob -> Ada, retried: done");
  ok = ok && t4.done && after4.bob == after3.bob - 20 && after4.ada == after3.ada + 20;

  const int64_t total = after4.ada + after4.bob;
  std::cout << "total " << total << " = " << start.ada + start.bob << " opened + "
            << money_in - (start.ada + start.bob)
            << " deposited meanwhile: " << (total == money_in ? "conserved" : "NOT CONSERVED")
            << "\n";
  ok = ok && total == money_in;
  std::cout << (ok ? "ok: every transfer was all or nothing\n" : "FAILED\n");
  return ok ? 0 : 1;
}
