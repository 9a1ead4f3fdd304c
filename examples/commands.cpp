// Why this pattern exists: a command is a request ("withdraw 500"), an event a fact ("500 were
// withdrawn"). The account decides each command against its current state and either records
// events or refuses with a reason of its own (a stable code to branch on, a message for people).
// A refusal is an answer, not a failure: nothing is stored, the account is unchanged, and
// retrying is pointless, unlike a conflict or an unavailable database. Because the rules live in
// one pure function, decide(state, command), they can be tested without a database
// (mire::testkit) and the runtime can call it again after a conflict.
//
// rt.send<account>(id, command, timeout): r (accepted) | r.rejected() | r.failed()
#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>

#include "common.hpp"
#include "domain/bank.hpp"
#include "mire/actors/runtime.hpp"

using namespace std::chrono_literals;

namespace {

// A command, in words, and the refusal code expected ("" = accepted).
struct step {
  const char* what;
  bank::account::command command;
  std::string expected;
};

} // namespace

int main(int argc, char** argv) {
  auto store = example::open_store(argc, argv);
  auto rt = example::must(mire::actors::runtime::start(store, example::settings().runtime),
                          "starting the runtime");
  const std::string id = example::fresh_id("account");
  bool ok = true;

  const step script[] = {
      {"deposit 10 before opening", bank::deposit{10}, "not_opened"},
      {"open for Ada", bank::open{"Ada"}, ""},
      {"open again", bank::open{"Bob"}, "already_opened"},
      {"deposit 100", bank::deposit{100}, ""},
      {"withdraw 500", bank::withdraw{500}, "insufficient_funds"},
      {"deposit -5", bank::deposit{-5}, "invalid_amount"},
      {"close with money in it", bank::close{"moving away"}, "balance_not_zero"},
      {"withdraw 100", bank::withdraw{100}, ""},
      {"close", bank::close{"moving away"}, ""},
      {"deposit 10 after closing", bank::deposit{10}, "account_closed"},
      {"withdraw 1 after closing", bank::withdraw{1}, "account_closed"},
  };
  int accepted = 0, rejected = 0;
  for (const auto& s : script) {
    const int64_t before = example::must(store.stream_version(id), "reading the version");
    auto r = rt.send<bank::account>(id, s.command, 5s);
    const int64_t after = example::must(store.stream_version(id), "reading the version");
    if (r.failed()) {
      std::cout << "FAILED: " << s.what << ": " << r.error().what() << "\n";
      return 1;
    }
    if (r) {
      ++accepted;
      std::printf("%-26s accepted   version %lld -> %lld\n", s.what, static_cast<long long>(before),
                  static_cast<long long>(after));
      ok = ok && s.expected.empty() && after == before + 1;
    } else {
      ++rejected;
      const auto& why = r.rejection();
      std::printf("%-26s rejected   %s: %s; stored nothing (version %lld -> %lld)\n", s.what,
                  why.code.c_str(), why.message.c_str(), static_cast<long long>(before),
                  static_cast<long long>(after));
      ok = ok && why.code == s.expected && after == before;
    }
  }

  // The log holds the accepted commands' events only.
  auto log = example::must(store.read_stream(id), "reading the stream");
  std::cout << "log of " << id << ":";
  for (const auto& e : log)
    std::cout << " " << e.type;
  std::cout << "\n";
  auto state = example::must(rt.load<bank::account>(id, 5s), "asking the actor");
  std::cout << accepted << " accepted, " << rejected << " rejected; " << log.size()
            << " events stored; final balance " << state.state.balance << ", "
            << (state.state.status == bank::account_status::closed ? "closed" : "not closed")
            << "\n";
  ok = ok && static_cast<int>(log.size()) == accepted && state.state.balance == 0 &&
       state.state.status == bank::account_status::closed;
  std::cout << (ok ? "ok: every rejection stored nothing\n" : "FAILED\n");
  return ok ? 0 : 1;
}
