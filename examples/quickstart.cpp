// Why this pattern exists: the state of an account is not a row that is overwritten, it is the
// fold of everything that happened to it. Load the events, decide, record new events, save them
// with the version you loaded (so a concurrent writer cannot be overwritten silently), and load
// again to get the same state back from the log: nothing is lost and every change has a reason.
//
// load -> record -> save -> load again, on the event store directly (no actors).
#include <iostream>
#include <variant>

#include "common.hpp"
#include "mire/store/repository.hpp"

// Events: plain structs with a stable type name and JSON codecs.
struct opened {
  static constexpr std::string_view type_name = "account.opened";
  std::string owner;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(opened, owner)

struct deposited {
  static constexpr std::string_view type_name = "account.deposited";
  int64_t amount = 0;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(deposited, amount)

struct withdrawn {
  static constexpr std::string_view type_name = "account.withdrawn";
  int64_t amount = 0;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(withdrawn, amount)

// The aggregate: state + apply (which cannot fail).
struct account {
  using event = std::variant<opened, deposited, withdrawn>;
  std::string owner;
  int64_t balance = 0;

  void apply(const event& e) {
    if (auto* o = std::get_if<opened>(&e))
      owner = o->owner;
    else if (auto* d = std::get_if<deposited>(&e))
      balance += d->amount;
    else if (auto* w = std::get_if<withdrawn>(&e))
      balance -= w->amount;
  }
};

int main() {
  auto store = example::open_store();
  mire::repository<account> accounts{store};
  const std::string id = "account-" + mire::new_uuid().substr(24);

  auto acc = accounts.load(id).value();  // a new stream: version 0
  acc.record(opened{"Ada"});
  acc.record(deposited{100});
  acc.record(withdrawn{30});
  auto saved = accounts.save(acc).value();  // expects version 0: fails if someone else wrote
  std::cout << "saved " << id << " at version " << saved.version << "\n";

  auto again = accounts.load(id).value();  // replayed from the log
  std::cout << "replayed: owner=" << again.state().owner << " balance=" << again.state().balance
            << " version=" << again.version() << "\n";
  return again.state().balance == 70 && again.version() == 3 ? 0 : 1;
}
