// mire/actors/runtime.hpp and registry.hpp against a real server: commands through aggregate
// actors, two replicas on one database, conflicts and retries, passivation, snapshots, actors
// killed mid-command, timeouts.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <caf/all.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "actors/bank.hpp"
#include "mire/actors/errors.hpp"
#include "mire/actors/registry.hpp"
#include "mire/actors/runtime.hpp"
#include "support/pg_harness.hpp"

namespace {

using namespace std::chrono_literals;
using bank::account;
using mire::errc;
using mire::actors::runtime;
using mire::actors::runtime_options;
using clock_type = std::chrono::steady_clock;

/// The log of one stream folded from scratch, with no snapshot and no actor involved.
struct folded {
  account state;
  std::vector<mire::recorded_event> log;
  bool never_negative = true;
};

folded fold(mire::event_store& store, const std::string& id) {
  folded f;
  f.log = store.read_stream(id).value();
  for (const auto& rec : f.log) {
    f.state.apply(mire::event_codec<account::event>::decode(rec.type, rec.data).value());
    f.never_negative = f.never_negative && f.state.balance >= 0;
  }
  return f;
}

std::string ref_of(const mire::recorded_event& e) {
  return nlohmann::json::parse(e.data).value("ref", "");
}

runtime start(mire::event_store store, runtime_options options = {}) {
  auto rt = runtime::start(std::move(store), options);
  REQUIRE_MESSAGE(rt, rt.error().what());
  return std::move(*rt);
}

/// The live actor of `id` in `rt`, if any.
caf::actor find_actor(runtime& rt, const std::string& id) {
  caf::scoped_actor self{rt.system()};
  caf::actor out;
  self->request(mire::actors::registry_of<account>(rt), 5s, mire::actors::find_atom::value, id)
      .receive([&](caf::actor& a) { out = a; }, [](caf::error&) {});
  return out;
}

/// What became of one command sent by a test thread.
struct sent {
  std::string id;
  std::string ref;
  bool deposit = false;
  int64_t amount = 0;
  int64_t fee = 0;
  enum { accepted, rejected, failed } kind = failed;
  errc code = errc::internal;
  int retries = 0;
};

template <class Result> void record(sent& s, const Result& r) {
  if (r) {
    s.kind = sent::accepted;
    s.retries = r->retries;
  } else if (r.rejected()) {
    s.kind = sent::rejected;
  } else {
    s.kind = sent::failed;
    s.code = r.error().code;
  }
}

// Checks one account's log against what the senders were told: every accepted command's events
// are there exactly once and whole, nothing of a rejected or failed one is, and commands in
// doubt are there whole or not at all. Returns the refs found.
void check_log(const folded& f, const std::map<std::string, sent>& by_ref) {
  std::map<std::string, int> seen;
  for (std::size_t i = 0; i < f.log.size(); ++i) {
    const auto& e = f.log[i];
    if (e.type == "account.opened")
      continue;
    const auto ref = ref_of(e);
    ++seen[ref];
    auto it = by_ref.find(ref);
    REQUIRE_MESSAGE(it != by_ref.end(), "event of an unknown command ", ref);
    const auto& s = it->second;
    CHECK_MESSAGE((s.kind == sent::accepted || s.code == errc::commit_in_doubt), "command ", ref,
                  " was not accepted but its events are in the log");
    if (e.type == "account.withdrawn" && s.fee > 0) {
      // One command, one append: the fee follows its withdrawal, always.
      REQUIRE_MESSAGE(i + 1 < f.log.size(), "half a command: ", ref);
      CHECK(f.log[i + 1].type == "account.fee_charged");
      CHECK(ref_of(f.log[i + 1]) == ref);
    }
  }
  for (const auto& [ref, s] : by_ref) {
    const int expected_events = s.deposit ? 1 : (s.fee > 0 ? 2 : 1);
    const int n = seen.count(ref) ? seen.at(ref) : 0;
    if (s.kind == sent::accepted)
      CHECK_MESSAGE(n == expected_events, "accepted command ", ref, " has ", n, " events");
    else if (s.code == errc::commit_in_doubt)
      CHECK_MESSAGE((n == 0 || n == expected_events), "command ", ref, " is half there");
    else
      CHECK_MESSAGE(n == 0, "refused or failed command ", ref, " is in the log");
  }
}

void same_state(const account& a, const account& b) {
  CHECK(a.is_open == b.is_open);
  CHECK(a.is_closed == b.is_closed);
  CHECK(a.owner == b.owner);
  CHECK(a.balance == b.balance);
  CHECK(a.events == b.events);
}

// Writes version 2 of `id` (at version 1) in a transaction left open: an append of version 2
// waits on it until the transaction ends.
mire::transaction hold_version_2(mire::event_store& store, const std::string& id) {
  auto blocker = store.begin();
  REQUIRE(blocker);
  REQUIRE(blocker->append(
      id, mire::expected_version::exactly(1),
      {mire::event_data{"account.deposited", R"({"amount": 1, "ref": "held"})", "{}", ""}}));
  return std::move(*blocker);
}

using pending_send = std::future<mire::actors::command_result<account>>;

// Deposits d1, then d2, to account-1 from threads of their own, with version 2 held
// (hold_version_2): d1's append waits in the database, d2 in the actor behind it.
std::pair<pending_send, pending_send> held_deposits(runtime& rt) {
  auto deposit = [&rt](std::string ref) {
    return std::async(std::launch::async, [&rt, ref] {
      return rt.send<account>("account-1", bank::deposit{5, ref}, 60s);
    });
  };
  auto first = deposit("d1");
  std::this_thread::sleep_for(300ms);
  auto second = deposit("d2");
  std::this_thread::sleep_for(300ms);
  return {std::move(first), std::move(second)};
}

// Destroys `rt` on a thread of its own; false if that has not finished within `limit` (the
// thread is then left behind, stuck, and the test fails instead of hanging).
bool destroyed_within(
    std::optional<runtime>& rt, std::chrono::seconds limit,
    const std::function<void()>& meanwhile = [] {}) {
  auto done = std::make_shared<std::atomic<bool>>(false);
  std::thread([&rt, done] {
    rt.reset();
    *done = true;
  }).detach();
  meanwhile();
  for (auto until = clock_type::now() + limit; !*done && clock_type::now() < until;)
    std::this_thread::sleep_for(10ms);
  return *done;
}

} // namespace

TEST_SUITE("pg") {

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "a command is decided, recorded, applied and answered; a refused one records "
                    "nothing") {
    auto rt = start(store);
    auto opened = rt.send<account>("account-1", bank::open{"Ada"}, 10s);
    REQUIRE_MESSAGE(opened, (opened.failed() ? opened.error().what() : "rejected"));
    CHECK(opened->version == 1);
    CHECK(opened->events == std::vector<account::event>{bank::opened{"Ada"}});

    auto dep = rt.send<account>("account-1", bank::deposit{100, "d1"}, 10s,
                                R"({"correlation_id": "c-1"})");
    REQUIRE(dep);
    CHECK(dep->version == 2);
    CHECK(dep->retries == 0);

    auto over = rt.send<account>("account-1", bank::withdraw{500, 1, "w1"}, 10s);
    REQUIRE(over.rejected());
    CHECK(over.rejection().code == "insufficient_funds");
    CHECK_FALSE(over.failed());

    auto state = rt.load<account>("account-1", 10s);
    REQUIRE(state);
    CHECK(state->version == 2);
    CHECK(state->state.balance == 100);

    auto f = fold(store, "account-1");
    REQUIRE(f.log.size() == 2);
    same_state(state->state, f.state);
    CHECK(nlohmann::json::parse(f.log[1].metadata) == nlohmann::json{{"correlation_id", "c-1"}});
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "a write by another process is caught up with and the command decided again") {
    runtime_options options;
    auto rt = start(store, options);
    REQUIRE(rt.send<account>("account-1", bank::open{"Ada"}, 10s));
    // Behind the actor's back, as another replica would.
    auto extra = mire::event_codec<account::event>::encode(bank::deposited{50, "outside"});
    REQUIRE(store.append("account-1", mire::expected_version::exactly(1), {extra}));

    auto w = rt.send<account>("account-1", bank::withdraw{40, 0, "w1"}, 10s);
    REQUIRE_MESSAGE(w, (w.failed() ? w.error().what() : w.rejection().message));
    CHECK(w->retries == 1);
    CHECK(w->version == 3);
    auto state = rt.load<account>("account-1", 10s).value();
    CHECK(state.state.balance == 10);
    same_state(state.state, fold(store, "account-1").state);
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "with retries exhausted the caller gets the conflict and nothing is recorded") {
    auto rt = start(store);
    mire::actors::aggregate_options no_retries;
    no_retries.max_retries = 0;
    REQUIRE(rt.configure<account>(no_retries));
    REQUIRE(rt.send<account>("account-1", bank::open{"Ada"}, 10s));
    auto extra = mire::event_codec<account::event>::encode(bank::deposited{50, "outside"});
    REQUIRE(store.append("account-1", mire::expected_version::exactly(1), {extra}));

    auto d = rt.send<account>("account-1", bank::deposit{5, "d1"}, 10s);
    REQUIRE(d.failed());
    CHECK(d.error().code == errc::version_conflict);
    CHECK(d.error().stream_id == "account-1");
    CHECK(d.error().expected == 1);
    CHECK(d.error().actual == 2);
    CHECK(store.stream_version("account-1").value() == 2);
    // The failed command left the actor caught up: the next one goes through.
    REQUIRE(rt.send<account>("account-1", bank::deposit{5, "d2"}, 10s));
    CHECK(fold(store, "account-1").state.balance == 55);
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "every scheduler policy answers concurrent senders and sleeps in between") {
    for (const std::string policy : {"spinning", "sharing", "stealing"}) {
      CAPTURE(policy);
      caf::actor_system_config cfg;
      mire::actors::add_mire_types(cfg);
      mire::actors::configure_scheduler(cfg, {policy, 1});
      caf::actor_system sys{cfg};
      auto rt = runtime::start(sys, store).value();
      constexpr int senders = 4, commands = 25;
      std::vector<std::thread> threads;
      std::atomic<int> accepted{0};
      for (int t = 0; t < senders; ++t)
        threads.emplace_back([&, t] {
          const auto id = "account-" + policy + "-" + std::to_string(t);
          if (rt.send<account>(id, bank::open{"Ada"}, 10s))
            ++accepted;
          for (int k = 0; k < commands; ++k) {
            // Now and then idle long enough for the scheduler thread to fall asleep.
            if (k % 5 == 0)
              std::this_thread::sleep_for(2ms);
            if (rt.send<account>(id, bank::deposit{1, "d" + std::to_string(k)}, 10s))
              ++accepted;
          }
        });
      for (auto& th : threads)
        th.join();
      CHECK(accepted == senders * (commands + 1));
      for (int t = 0; t < senders; ++t)
        CHECK(fold(store, "account-" + policy + "-" + std::to_string(t)).state.balance == commands);
    }
    CHECK_FALSE(mire::actors::validate(mire::actors::scheduler_options{"fast", 1}));
    CHECK(mire::actors::validate(mire::actors::scheduler_options{"fast", 1})
              .error()
              .message.find("'fast'") != std::string::npos);
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "an aggregate type is configured before its first use") {
    auto rt = start(store);
    mire::actors::aggregate_options bad;
    bad.snapshot_every = -1;
    CHECK(rt.configure<account>(bad).error().code == errc::bad_input);
    REQUIRE(rt.send<account>("account-1", bank::open{"Ada"}, 10s));
    auto late = rt.configure<account>({});
    REQUIRE_FALSE(late);
    CHECK(late.error().code == errc::bad_input);
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "two replicas hammering the same 50 aggregates lose no update and record "
                    "every accepted command exactly once") {
    constexpr int accounts = 50;
    constexpr int threads_per_replica = 4;
    constexpr int commands_per_thread = 150;

    // Replica A owns its actor system; replica B runs on one the program owns.
    runtime_options options;
    options.aggregates.snapshot_every = 20;
    auto a = start(store, options);
    caf::actor_system_config cfg_b;
    mire::actors::add_mire_types(cfg_b);
    caf::actor_system sys_b{cfg_b};
    auto store_b = mire::event_store::open({url, "mire", 8}).value();
    auto b_started = runtime::start(sys_b, store_b, options);
    REQUIRE_MESSAGE(b_started, b_started.error().what());
    auto b = std::move(*b_started);

    auto id_of = [](int i) { return "acct-" + std::to_string(i); };
    for (int i = 0; i < accounts; ++i)
      REQUIRE(a.send<account>(id_of(i), bank::open{"owner " + std::to_string(i)}, 10s));

    std::vector<std::vector<sent>> results(2 * threads_per_replica);
    std::vector<std::thread> threads;
    const auto t0 = clock_type::now();
    for (int t = 0; t < 2 * threads_per_replica; ++t) {
      threads.emplace_back([&, t] {
        runtime& rt = t % 2 == 0 ? a : b;
        std::mt19937 rng(static_cast<unsigned>(t) * 7919u + 1u);
        for (int i = 0; i < commands_per_thread; ++i) {
          sent s;
          s.id = id_of(static_cast<int>(rng() % accounts));
          s.ref = "t" + std::to_string(t) + "-" + std::to_string(i);
          s.deposit = rng() % 10 < 6;
          s.amount = 1 + static_cast<int64_t>(rng() % (s.deposit ? 100 : 150));
          s.fee = s.deposit ? 0 : 1;
          if (s.deposit)
            record(s, rt.send<account>(s.id, bank::deposit{s.amount, s.ref}, 30s));
          else
            record(s, rt.send<account>(s.id, bank::withdraw{s.amount, s.fee, s.ref}, 30s));
          results[t].push_back(std::move(s));
        }
      });
    }
    for (auto& th : threads)
      th.join();
    const double seconds = std::chrono::duration<double>(clock_type::now() - t0).count();

    std::map<std::string, std::map<std::string, sent>> by_account;
    int accepted = 0, rejected = 0, conflicts = 0, retried = 0;
    int64_t net = 0;
    for (const auto& rs : results)
      for (const auto& s : rs) {
        by_account[s.id].emplace(s.ref, s);
        if (s.kind == sent::accepted) {
          ++accepted;
          retried += s.retries > 0;
          net += s.deposit ? s.amount : -(s.amount + s.fee);
        } else if (s.kind == sent::rejected) {
          ++rejected;
        } else {
          CHECK_MESSAGE(s.code == errc::version_conflict, "command ", s.ref, " failed with ",
                        mire::to_string(s.code));
          ++conflicts;
        }
      }
    MESSAGE(accepted, " accepted (", retried, " after retries), ", rejected, " rejected, ",
            conflicts, " conflicts after retries; ",
            static_cast<int>((accepted + rejected + conflicts) / seconds), " commands/s");
    CHECK(accepted > 0);

    int64_t total = 0;
    for (int i = 0; i < accounts; ++i) {
      const auto id = id_of(i);
      auto f = fold(store, id);
      CHECK(f.never_negative);
      check_log(f, by_account[id]);
      total += f.state.balance;
      // Both replicas, caught up, agree with the log.
      for (runtime* rt : {&a, &b}) {
        auto s = rt->load<account>(id, 10s);
        REQUIRE_MESSAGE(s, s.error().what());
        CHECK(s->version == static_cast<int64_t>(f.log.size()));
        same_state(s->state, f.state);
      }
    }
    CHECK(total == net);
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "a passivated aggregate reloads from its snapshot to the same state") {
    auto rt = start(store);
    mire::actors::aggregate_options options;
    options.passivate_after = 100ms;
    options.snapshot_every = 5;
    REQUIRE(rt.configure<account>(options));
    REQUIRE(rt.send<account>("account-1", bank::open{"Ada"}, 10s));
    for (int i = 1; i <= 11; ++i)
      REQUIRE(rt.send<account>("account-1", bank::deposit{i, "d" + std::to_string(i)}, 10s));
    auto before = rt.load<account>("account-1", 10s).value();
    CHECK(before.version == 12);
    CHECK(before.state.applied == 12);
    REQUIRE(find_actor(rt, "account-1"));

    const auto deadline = clock_type::now() + 10s;
    while (find_actor(rt, "account-1") && clock_type::now() < deadline)
      std::this_thread::sleep_for(20ms);
    REQUIRE_FALSE(find_actor(rt, "account-1"));

    auto snap = store.load_snapshot("account-1").value();
    REQUIRE(snap);
    CHECK(snap->version == 10);
    auto after = rt.load<account>("account-1", 10s).value();
    CHECK(after.version == 12);
    same_state(after.state, before.state);
    CHECK(after.state.applied == 2); // the snapshot at 10, then two events
    same_state(after.state, fold(store, "account-1").state);
    auto more = rt.send<account>("account-1", bank::deposit{100, "d12"}, 10s);
    REQUIRE(more);
    CHECK(more->version == 13);
  }

  // Commands go straight to a live actor (not through the registry) while the registry lets idle
  // actors go: a command must never land on an actor that is being let go and go unanswered.
  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "commands racing passivation are all answered and recorded once") {
    auto rt = start(store);
    mire::actors::aggregate_options options;
    options.passivate_after = 1ms;
    REQUIRE(rt.configure<account>(options));
    constexpr int accounts = 3, threads = 4, per_thread = 150;
    auto id_of = [](int i) { return "racing-" + std::to_string(i); };
    for (int i = 0; i < accounts; ++i)
      REQUIRE(rt.send<account>(id_of(i), bank::open{"owner"}, 10s));

    std::atomic<int> failures{0};
    std::vector<std::thread> senders;
    for (int t = 0; t < threads; ++t)
      senders.emplace_back([&, t] {
        std::minstd_rand rng(static_cast<unsigned>(t + 1));
        for (int k = 0; k < per_thread; ++k) {
          // Pauses around the passivation timeout, so actors keep going idle and coming back.
          std::this_thread::sleep_for(std::chrono::microseconds(rng() % 2000));
          const auto ref = fmt::format("t{}-{}", t, k);
          if (auto r = rt.send<account>(id_of(k % accounts), bank::deposit{1, ref}, 10s); !r) {
            ++failures;
            MESSAGE(r.error().what());
          }
        }
      });
    for (auto& s : senders)
      s.join();
    CHECK(failures == 0);
    std::size_t recorded = 0;
    for (int i = 0; i < accounts; ++i) {
      auto f = fold(store, id_of(i));
      std::set<std::string> refs;
      for (const auto& e : f.log)
        if (e.type == "account.deposited")
          CHECK(refs.insert(ref_of(e)).second); // once each
      recorded += refs.size();
      auto live = rt.load<account>(id_of(i), 10s);
      REQUIRE(live);
      same_state(live->state, f.state);
    }
    CHECK(recorded == threads * per_thread);
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "killing aggregate actors mid-command loses no committed event and records "
                    "no half command") {
    constexpr int accounts = 5;
    runtime_options options;
    options.store.group_window = 5ms; // appends wait in the store actor: kills land mid-command
    auto rt = start(store, options);
    auto id_of = [](int i) { return "acct-" + std::to_string(i); };
    for (int i = 0; i < accounts; ++i) {
      REQUIRE(rt.send<account>(id_of(i), bank::open{"Ada"}, 10s));
      REQUIRE(rt.send<account>(id_of(i), bank::deposit{1'000'000, "seed-" + id_of(i)}, 10s));
    }

    std::atomic<bool> done{false};
    std::atomic<int> kills{0};
    std::vector<std::vector<sent>> results(3);
    std::vector<std::thread> senders;
    const auto until = clock_type::now() + 1500ms;
    for (int t = 0; t < 3; ++t)
      senders.emplace_back([&, t] {
        std::mt19937 rng(static_cast<unsigned>(t) + 11u);
        for (int i = 0; clock_type::now() < until; ++i) {
          sent s;
          s.id = id_of(static_cast<int>(rng() % accounts));
          s.ref = "t" + std::to_string(t) + "-" + std::to_string(i);
          s.amount = 1;
          s.fee = 1;
          record(s, rt.send<account>(s.id, bank::withdraw{s.amount, s.fee, s.ref}, 30s));
          results[t].push_back(std::move(s));
        }
      });
    std::thread killer([&] {
      std::mt19937 rng(99);
      caf::scoped_actor self{rt.system()};
      while (!done) {
        if (auto h = find_actor(rt, id_of(static_cast<int>(rng() % accounts)))) {
          self->send_exit(h, caf::exit_reason::kill);
          ++kills;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 10));
      }
    });
    for (auto& th : senders)
      th.join();
    done = true;
    killer.join();

    std::map<std::string, std::map<std::string, sent>> by_account;
    for (int i = 0; i < accounts; ++i) {
      sent seed{id_of(i), "seed-" + id_of(i), true, 1'000'000, 0, sent::accepted};
      by_account[seed.id].emplace(seed.ref, seed);
    }
    int accepted = 0, in_doubt = 0, not_run = 0;
    for (const auto& rs : results)
      for (const auto& s : rs) {
        by_account[s.id].emplace(s.ref, s);
        if (s.kind == sent::accepted)
          ++accepted;
        else
          // Queued behind a killed command: never ran (check_log: not in the log).
          CHECK_MESSAGE((s.kind == sent::failed &&
                         (s.code == errc::commit_in_doubt || s.code == errc::unavailable)),
                        "command ", s.ref, " neither accepted, in doubt nor unrun");
        in_doubt += s.kind == sent::failed && s.code == errc::commit_in_doubt;
        not_run += s.kind == sent::failed && s.code == errc::unavailable;
      }
    MESSAGE(kills.load(), " kills; ", accepted, " commands accepted, ", in_doubt, " in doubt, ",
            not_run, " not run");
    CHECK(kills > 0);
    CHECK(in_doubt > 0);
    CHECK(accepted > 0);

    for (int i = 0; i < accounts; ++i) {
      const auto id = id_of(i);
      auto f = fold(store, id);
      check_log(f, by_account[id]);
      // The respawned actor (or a fresh one) is the fold of the log.
      auto s = rt.load<account>(id, 10s);
      REQUIRE_MESSAGE(s, s.error().what());
      CHECK(s->version == static_cast<int64_t>(f.log.size()));
      same_state(s->state, f.state);
    }
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "a killed aggregate's command in progress is in doubt; those queued behind "
                    "it never ran") {
    auto rt = start(store);
    REQUIRE(rt.send<account>("account-1", bank::open{"Ada"}, 10s));
    auto blocker = hold_version_2(store, "account-1");
    auto [first, second] = held_deposits(rt);
    auto actor = find_actor(rt, "account-1");
    REQUIRE(actor);
    caf::anon_send_exit(actor, caf::exit_reason::kill);
    REQUIRE(first.wait_for(10s) == std::future_status::ready);
    REQUIRE(second.wait_for(10s) == std::future_status::ready);
    auto r1 = first.get(), r2 = second.get();
    REQUIRE(r1.failed());
    CHECK(r1.error().code == errc::commit_in_doubt);
    REQUIRE(r2.failed());
    CHECK(r2.error().code == errc::unavailable);
    CHECK(r2.error().stream_id == "account-1");
    // The first append still goes in once the blocker leaves; the second was never sent.
    blocker.rollback();
    bool landed = false;
    for (int i = 0; i < 500 && !landed; ++i) {
      landed = store.stream_version("account-1").value() == 2;
      std::this_thread::sleep_for(10ms);
    }
    CHECK(landed);
    const auto log = store.read_stream("account-1").value();
    for (const auto& e : log)
      CHECK(ref_of(e) != "d2");
    // A fresh actor, loaded from the log, takes the next command.
    auto again = rt.send<account>("account-1", bank::deposit{5, "d3"}, 10s);
    REQUIRE_MESSAGE(again, (again.failed() ? again.error().what() : again.rejection().message));
    CHECK(again->version == 3);
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "a runtime started and used on one thread can be destroyed on another") {
    std::optional<runtime> rt = start(store);
    // This thread spawns the account registry (CAF 0.17 then ties the actor system to it).
    REQUIRE(rt->send<account>("account-1", bank::open{"Ada"}, 10s));
    REQUIRE_MESSAGE(destroyed_within(rt, 30s), "destroying the runtime waited for this thread");
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "a runtime that stops answers the callers still waiting at once") {
    std::optional<runtime> rt = start(store);
    REQUIRE(rt->send<account>("account-1", bank::open{"Ada"}, 10s));
    auto blocker = hold_version_2(store, "account-1");
    auto [first, second] = held_deposits(*rt);
    REQUIRE(first.wait_for(0s) == std::future_status::timeout);
    // Stopping waits for the store worker, which waits for the blocker.
    bool answered = false;
    const bool destroyed = destroyed_within(rt, 30s, [&] {
      answered = first.wait_for(20s) == std::future_status::ready &&
                 second.wait_for(20s) == std::future_status::ready;
      blocker.rollback();
    });
    REQUIRE(destroyed);
    REQUIRE_MESSAGE(answered, "callers were left waiting for their timeouts");
    for (auto* f : {&first, &second}) {
      auto r = f->get();
      REQUIRE(r.failed());
      CHECK(r.error().code == errc::commit_in_doubt);
      CHECK(r.error().stream_id == "account-1");
    }
    // The first one's append went on when the blocker left; the second never ran.
    const auto log = store.read_stream("account-1").value();
    REQUIRE(log.size() == 2); // opened and d1 (the blocker's rolled back)
    CHECK(ref_of(log[1]) == "d1");
    for (const auto& e : log)
      CHECK(ref_of(e) != "d2");
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "a caller that stops waiting gets a timeout; the command may still land") {
    runtime_options options;
    options.store.group_window = 500ms;
    auto rt = start(store, options);
    auto r = rt.send<account>("account-1", bank::open{"Ada"}, 50ms);
    REQUIRE(r.failed());
    CHECK(r.error().code == errc::timeout);
    CHECK(r.error().stream_id == "account-1");
    auto state = rt.load<account>("account-1", 10s);
    REQUIRE(state);
    CHECK(state->state.is_open);
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "a store call that outlives store_timeout fails the command with timeout; "
                    "its late outcome is caught up with") {
    runtime_options options;
    options.aggregates.store_timeout = 300ms;
    auto rt = start(store, options);
    REQUIRE(rt.send<account>("account-1", bank::open{"Ada"}, 10s));
    // An uncommitted write of version 2 elsewhere: the actor's append of version 2 waits on it.
    auto blocker = store.begin();
    REQUIRE(blocker);
    auto held = blocker->append("account-1", mire::expected_version::exactly(1),
                                {mire::event_data{"account.deposited",
                                                  R"({"amount": 1, "ref": "held"})", "{}", ""}});
    REQUIRE_MESSAGE(held, held.error().what());
    const auto t0 = clock_type::now();
    auto r = rt.send<account>("account-1", bank::deposit{5, "late"}, 10s);
    REQUIRE(r.failed());
    CHECK(r.error().code == errc::timeout);
    CHECK(clock_type::now() - t0 < 9s); // the actor's own deadline, not the caller's
    // The held write goes away: the waiting append now commits, after its caller was told timeout.
    blocker->rollback();
    bool landed = false;
    for (int i = 0; i < 200 && !landed; ++i) {
      landed = store.stream_version("account-1").value() == 2;
      std::this_thread::sleep_for(10ms);
    }
    CHECK(landed);
    // The actor does not trust its state after a timeout: the next command catches up first.
    auto next = rt.send<account>("account-1", bank::deposit{7, "next"}, 10s);
    REQUIRE_MESSAGE(next, (next.failed() ? next.error().what() : "rejected"));
    CHECK(next->version == 3);
    CHECK(next->retries == 0);
    auto f = fold(store, "account-1");
    REQUIRE(f.log.size() == 3);
    CHECK(ref_of(f.log[1]) == "late");
    CHECK(f.state.balance == 12);
  }
}
