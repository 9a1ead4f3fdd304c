// Why this pattern exists: with load -> decide -> save by hand (quickstart.cpp) every command
// reads the account's history again, and two commands to one account race each other. An
// aggregate actor owns one account: it loads it once, keeps its state in memory, takes its
// commands one at a time (decide, append expecting its version, apply, reply), and the store
// actor groups the appends of many accounts into few round trips. The log stays the truth: a
// fresh replay of it gives exactly the state the actor holds.
//
// runtime::start(store); rt.send<account>(id, command, timeout); rt.load<account>(id, timeout)
#include <chrono>
#include <iostream>
#include <string>

#include "common.hpp"
#include "domain/bank.hpp"
#include "mire/actors/runtime.hpp"
#include "mire/store/repository.hpp"

using namespace std::chrono_literals;

namespace {

std::ostream& operator<<(std::ostream& out, const bank::account& a) {
  return out << "owner=" << a.owner << " balance=" << a.balance;
}

} // namespace

int main(int argc, char** argv) {
  auto store = example::open_store(argc, argv);
  auto rt = example::must(mire::actors::runtime::start(store, example::settings().runtime),
                          "starting the runtime");
  const std::string id = example::fresh_id("account");

  // Each command goes to the actor of `id` (spawned and loaded on first use) and comes back
  // accepted (with its events and the new version), rejected by the account, or failed.
  const bank::account::command commands[] = {bank::open{"Ada"}, bank::deposit{100},
                                             bank::withdraw{30}};
  for (const auto& cmd : commands) {
    auto r = rt.send<bank::account>(id, cmd, 5s);
    if (!r) {
      std::cout << "FAILED: command refused: "
                << (r.rejected() ? r.rejection().message : r.error().what()) << "\n";
      return 1;
    }
    std::cout << "accepted: " << mire::event_codec<bank::account::event>::type_name(r->events.at(0))
              << ", " << id << " at version " << r->version << "\n";
  }

  // The actor's state, in memory...
  auto hot = example::must(rt.load<bank::account>(id, 5s), "asking the actor");
  std::cout << "actor state: " << hot.state << " version=" << hot.version << "\n";
  // ...and the log, replayed from scratch without the actors.
  auto replayed = example::must(mire::load<bank::account>(store, id), "replaying the log");
  std::cout << "replayed: " << replayed.state() << " version=" << replayed.version() << "\n";

  const bool same = replayed.state() == hot.state && replayed.version() == hot.version;
  const bool ok = same && hot.state.balance == 70 && hot.version == 3;
  std::cout << (same ? "replay equals the actor's state\n"
                     : "FAILED: replay differs from the actor\n");
  return ok ? 0 : 1;
}
