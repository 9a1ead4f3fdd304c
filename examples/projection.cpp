// Why this pattern exists: the log answers "what happened to account 42" well and "which accounts
// hold more than 1,000" badly — that needs every account's latest state in one table. A
// projection keeps such a read model: a handler turns each event into SQL on the read-model
// tables, and the runner applies the log to it in batches, each batch's writes and its
// checkpoint in one transaction, so an event is applied exactly once even across crashes. Only
// the replica holding the projection's lease drives it; the others stand by. After catching up
// it follows new appends live (LISTEN/NOTIFY, polling as a fallback). Readers query the read
// model with plain SQL, through a view that a rebuild can switch to a new generation atomically.
//
// spawn_projection_runner(system, store, definition, {.owner = replica id}); then SQL on the view.
#include <chrono>
#include <iostream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <caf/all.hpp>

#include "common.hpp"
#include "domain/balances.hpp"
#include "domain/bank.hpp"
#include "mire/actors/projection.hpp"
#include "mire/actors/runtime.hpp"
#include "mire/store/repository.hpp"

using namespace std::chrono_literals;

namespace {

struct row {
  int64_t balance = 0, version = 0;
};

// The read model's rows for `ids`, read through the view as any reader would. (Before the
// runner's first batch the view does not exist yet: an error.)
mire::result<std::map<std::string, row>> read_model(mire::event_store& store,
                                                    const std::vector<std::string>& ids) {
  std::string list = "{";
  for (const auto& id : ids)
    list += (list.size() > 1 ? "," : "") + id;
  list += "}";
  auto rows = store.transact([&](mire::transaction& tx) {
    return tx.execute("SELECT account_id, balance, version FROM public.balances "
                      "WHERE account_id = ANY($1::text[]) ORDER BY account_id",
                      {list});
  });
  if (!rows)
    return rows.error();
  std::map<std::string, row> out;
  for (const auto& r : rows->rows)
    out[*r[0]] = {std::stoll(*r[1]), std::stoll(*r[2])};
  return out;
}

// Waits (bounded) until the read model reflects every id at the version the log has.
bool wait_for(mire::event_store& store, const std::vector<std::string>& ids) {
  for (int i = 0; i < 600; ++i) {
    auto model = read_model(store, ids);
    bool all = model && model->size() == ids.size();
    for (const auto& id : ids)
      all = all && (*model)[id].version == store.stream_version(id).value();
    if (all)
      return true;
    std::this_thread::sleep_for(50ms);
  }
  return false;
}

} // namespace

int main(int argc, char** argv) {
  auto store = example::open_store(argc, argv);
  auto rt = example::must(mire::actors::runtime::start(store, example::settings().runtime),
                          "starting the runtime");

  // Some history first: 20 accounts with deposits and withdrawals, through aggregate actors.
  std::vector<std::string> ids;
  for (int i = 0; i < 20; ++i) {
    ids.push_back(example::fresh_id("account"));
    const bank::account::command commands[] = {bank::open{"owner " + std::to_string(i)},
                                               bank::deposit{100 + i}, bank::withdraw{i + 1}};
    for (const auto& c : commands)
      if (auto r = rt.send<bank::account>(ids.back(), c, 10s); !r) {
        std::cout << "FAILED: a command failed\n";
        return 1;
      }
  }

  // The runner: every replica of the application starts one per projection; the one holding
  // the lease drives. It catches up from its checkpoint (the start, on first use).
  mire::actors::runner_options options;
  options.owner = example::settings().replica_id;
  auto runner = example::must(mire::actors::spawn_projection_runner(
                                  rt.system(), store, bank::balances_projection(), options),
                              "starting the projection runner");
  example::stopwatch catch_up;
  if (!wait_for(store, ids)) {
    std::cout << "FAILED: the read model did not catch up\n";
    return 1;
  }
  std::cout << "caught up in " << static_cast<int>(catch_up.ms()) << " ms\n";

  // The read model against the log, replayed from scratch for each account.
  auto check = [&](const char* when) {
    auto model = example::must(read_model(store, ids), "querying the read model");
    int64_t total = 0;
    for (const auto& id : ids) {
      auto replayed = example::must(mire::load<bank::account>(store, id), "replaying");
      if (model[id].balance != replayed.state().balance ||
          model[id].version != replayed.version()) {
        std::cout << "FAILED: " << id << " differs: read model " << model[id].balance << " v"
                  << model[id].version << ", log " << replayed.state().balance << " v"
                  << replayed.version() << "\n";
        return false;
      }
      total += model[id].balance;
    }
    std::cout << when << ": " << ids.size() << " accounts in the read model, total " << total
              << ", equal to the replayed log\n";
    return true;
  };
  if (!check("after catch-up"))
    return 1;

  // Live: new commands show up in the read model without anyone asking.
  example::stopwatch live;
  for (int i = 0; i < 5; ++i)
    if (auto r = rt.send<bank::account>(ids[i], bank::deposit{1000}, 10s); !r) {
      std::cout << "FAILED: a deposit failed\n";
      return 1;
    }
  if (!wait_for(store, ids)) {
    std::cout << "FAILED: live deposits did not reach the read model\n";
    return 1;
  }
  std::cout << "live: 5 deposits in the read model " << static_cast<int>(live.ms())
            << " ms after they were sent\n";
  if (!check("after live deposits"))
    return 1;

  auto status = example::must(mire::projection_status_of(store, "balances"), "reading the status");
  std::cout << "status: " << status.name << " " << status.state << ", generation "
            << status.live_generation << ", checkpoint " << status.position.to_string() << ", lag "
            << status.lag_events << " events, owner " << status.owner << " (fence "
            << status.fence_token << ")\n";
  caf::anon_send_exit(runner, caf::exit_reason::user_shutdown); // releases the lease
  return 0;
}
