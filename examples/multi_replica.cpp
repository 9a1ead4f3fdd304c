// Why this pattern exists: production runs several replicas of an application, for capacity and
// so that one dying does not stop the service. Each runs the same projection runners; a lease in
// Postgres (on the database clock, with a fence token that grows at every change of hands) lets
// exactly one of them drive a projection at a time. When the driver dies, its lease expires and
// another replica takes over from the stored checkpoint; the fence keeps a replica that lost its
// lease (a long pause, a partition) from ever committing again. The read model stays exact:
// every event applied once.
//
// Here: this program starts three copies of itself as replica processes, appends commands, kills
// the replica driving the `balances` projection with SIGKILL, shows another take over, and checks
// the read model against the log.
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <caf/all.hpp>

#include "common.hpp"
#include "domain/balances.hpp"
#include "domain/bank.hpp"
#include "mire/actors/errors.hpp"
#include "mire/actors/projection.hpp"
#include "mire/actors/runtime.hpp"
#include "mire/store/lease.hpp"
#include "mire/store/repository.hpp"

extern char** environ;

using namespace std::chrono_literals;

namespace {

constexpr auto lease_ttl = 2000ms;

// A replica: runs the balances runner and says when it starts or stops driving, until SIGTERM
// or until the parent is gone.
volatile sig_atomic_t stopping = 0;

int run_replica(mire::event_store& store) {
  signal(SIGTERM, [](int) { stopping = 1; });
  const pid_t parent = getppid();
  const std::string id = example::settings().replica_id;
  caf::actor_system_config cfg;
  mire::actors::add_mire_types(cfg);
  caf::actor_system system{cfg};
  mire::actors::runner_options options;
  options.owner = id;
  options.lease_ttl = lease_ttl;
  auto runner = example::must(
      mire::actors::spawn_projection_runner(system, store, bank::balances_projection(), options),
      "starting the runner");
  caf::scoped_actor self{system};
  bool driving = false;
  std::string last_failure; // said once, not every 50 ms
  while (!stopping && getppid() == parent) {
    self->request(runner, 2s, mire::actors::status_atom::value)
        .receive(
            [&](mire::actors::runner_status& s) {
              if (s.held != driving)
                std::cout << id << ": " << (s.held ? "driving the projection" : "standing by")
                          << " (fence " << s.fence_token << ")" << std::endl;
              driving = s.held;
              last_failure.clear();
            },
            [&](caf::error& e) {
              auto why = system.render(e);
              if (why != last_failure)
                std::cerr << id << ": no status from the runner: " << why << std::endl;
              last_failure = std::move(why);
            });
    std::this_thread::sleep_for(50ms);
  }
  self->send_exit(runner, caf::exit_reason::user_shutdown);
  return 0;
}

std::optional<mire::lease_info> driver(mire::event_store& store) {
  auto leases = mire::list_leases(store);
  if (leases)
    for (const auto& l : *leases)
      if (l.resource == mire::projection_resource("balances") && l.held)
        return l;
  return std::nullopt;
}

pid_t start_replica(const std::string& self, const std::string& url, const std::string& id) {
  std::vector<std::string> argv{self, "--mire.database.url=" + url, "--mire.replica_id=" + id};
  std::vector<char*> args;
  for (auto& a : argv)
    args.push_back(a.data());
  args.push_back(nullptr);
  std::vector<std::string> env{"MIRE_EXAMPLE_REPLICA=1"};
  for (char** e = environ; *e; ++e)
    env.emplace_back(*e);
  std::vector<char*> envp;
  for (auto& e : env)
    envp.push_back(e.data());
  envp.push_back(nullptr);
  pid_t pid = 0;
  if (posix_spawn(&pid, args[0], nullptr, nullptr, args.data(), envp.data()) != 0) {
    std::cout << "FAILED: cannot start a replica\n";
    std::exit(1);
  }
  return pid;
}

// Whether the read model shows every account at the version its stream has, with its balance.
bool exact(mire::event_store& store, const std::vector<std::string>& ids, int64_t* total) {
  auto rows = store.transact([](mire::transaction& tx) {
    return tx.execute("SELECT account_id, balance, version FROM public.balances");
  });
  if (!rows)
    return false;
  std::map<std::string, std::pair<int64_t, int64_t>> model;
  for (const auto& r : rows->rows)
    model[*r[0]] = {std::stoll(*r[1]), std::stoll(*r[2])};
  *total = 0;
  for (const auto& id : ids) {
    auto replayed = mire::load<bank::account>(store, id);
    if (!replayed || !model.count(id) || model[id].first != replayed->state().balance ||
        model[id].second != replayed->version())
      return false;
    *total += model[id].first;
  }
  return true;
}

template <class F> bool eventually(std::chrono::seconds limit, F done) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (done())
      return true;
    std::this_thread::sleep_for(50ms);
  }
  return false;
}

} // namespace

int main(int argc, char** argv) {
  auto store = example::open_store(argc, argv);
  if (std::getenv("MIRE_EXAMPLE_REPLICA"))
    return run_replica(store);

  const std::string url = store.options().url;
  std::map<std::string, pid_t> replicas;
  for (int i = 1; i <= 3; ++i) {
    const std::string id = "replica-" + std::to_string(i);
    replicas[id] = start_replica("/proc/self/exe", url, id);
  }
  auto stop_all = [&] {
    for (auto& [id, pid] : replicas)
      kill(pid, SIGTERM);
    for (auto& [id, pid] : replicas)
      waitpid(pid, nullptr, 0);
  };

  auto rt = example::must(mire::actors::runtime::start(store, example::settings().runtime),
                          "starting the runtime");
  std::vector<std::string> ids;
  auto commands = [&](int accounts) {
    for (int i = 0; i < accounts; ++i) {
      ids.push_back(example::fresh_id("account"));
      for (const bank::account::command& c :
           {bank::account::command{bank::open{"owner"}}, bank::account::command{bank::deposit{50}}})
        if (!rt.send<bank::account>(ids.back(), c, 10s))
          return false;
    }
    return true;
  };
  int64_t total = 0;
  if (!commands(20) || !eventually(60s, [&] { return exact(store, ids, &total); })) {
    std::cout << "FAILED: the read model did not catch up\n";
    stop_all();
    return 1;
  }
  auto before = driver(store);
  if (!before) {
    std::cout << "FAILED: nobody drives the projection\n";
    stop_all();
    return 1;
  }
  // The lease row names the holder: the replica id and the tag of its lease actor.
  const std::string dead{mire::holder_owner(before->owner)};
  std::cout << "driver: " << dead << " (fence " << before->fence_token << "); read model "
            << ids.size() << " accounts, total " << total << std::endl;

  // The driver dies without a word: no release, its lease runs out on the database clock.
  kill(replicas[dead], SIGKILL);
  waitpid(replicas[dead], nullptr, 0);
  replicas.erase(dead);
  example::stopwatch takeover;
  const bool wrote = commands(10); // written while nobody drives: applied after the takeover
  std::optional<mire::lease_info> after;
  const bool taken = eventually(30s, [&] {
    after = driver(store);
    return after && mire::holder_owner(after->owner) != dead;
  });
  if (!wrote || !taken) {
    std::cout << "FAILED: no takeover\n";
    stop_all();
    return 1;
  }
  std::cout << "killed " << dead << " (SIGKILL); " << mire::holder_owner(after->owner)
            << " took over after "
            << (takeover.ms() < lease_ttl.count() + 1500 ? "about the lease ttl" : "too long")
            << " (" << static_cast<int>(takeover.ms()) << " ms, ttl " << lease_ttl.count()
            << " ms), fence " << after->fence_token << std::endl;
  const bool ok = eventually(60s, [&] { return exact(store, ids, &total); });
  std::cout << (ok ? "read model exact after the takeover: " : "FAILED: read model differs: ")
            << ids.size() << " accounts, total " << total << std::endl;
  stop_all();
  return ok && after->fence_token > before->fence_token ? 0 : 1;
}
