// Why this pattern exists: the state of an account is not a row that is overwritten, it is the
// fold of everything that happened to it. Load the events, decide, record new events, save them
// with the version you loaded (so a concurrent writer cannot be overwritten silently), and load
// again to get the same state back from the log: nothing is lost and every change has a reason.
//
// load -> record -> save -> load again, on the event store directly (no actors). The account, its
// events (plain structs with a stable type name and JSON codecs) and its rules are in
// domain/bank.hpp, shared by every example.
#include <iostream>

#include "common.hpp"
#include "domain/bank.hpp"
#include "mire/store/repository.hpp"

int main(int argc, char** argv) {
  auto store = example::open_store(argc, argv);
  mire::repository<bank::account> accounts{store};
  const std::string id = example::fresh_id("account");

  auto acc = accounts.load(id).value(); // a new stream: version 0
  acc.record(bank::opened{"Ada"});
  acc.record(bank::deposited{100});
  acc.record(bank::withdrawn{30});
  auto saved = accounts.save(acc).value(); // expects version 0: fails if someone else wrote
  std::cout << "saved " << id << " at version " << saved.version << "\n";

  auto again = accounts.load(id).value(); // replayed from the log
  std::cout << "replayed: owner=" << again.state().owner << " balance=" << again.state().balance
            << " version=" << again.version() << "\n";
  return again.state().balance == 70 && again.version() == 3 ? 0 : 1;
}
