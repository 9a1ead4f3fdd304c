// Typed events, load -> record -> save, snapshots and transaction scopes (DESIGN rule 6) against a
// real server.
#include <doctest/doctest.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "mire/store/event_store.hpp"
#include "mire/store/repository.hpp"
#include "mire/store/uuid.hpp"
#include "support/pg_harness.hpp"

namespace bank {

using nlohmann::json;

struct opened {
  static constexpr std::string_view type_name = "account.opened";
  std::string owner;
};
struct deposited {
  static constexpr std::string_view type_name = "account.deposited";
  int64_t amount = 0;
};
struct withdrawn {
  static constexpr std::string_view type_name = "account.withdrawn";
  int64_t amount = 0;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(opened, owner)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(deposited, amount)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(withdrawn, amount)

/// An account without snapshots: always loaded by replaying its whole stream.
struct account {
  using event = std::variant<opened, deposited, withdrawn>;
  std::string owner;
  int64_t balance = 0;
  int64_t events = 0;  ///< events folded into the state, also those covered by a snapshot
  int64_t applied = 0; ///< events applied in this process: not part of the state, not snapshotted

  void apply(const event& e) {
    ++applied;
    ++events;
    if (auto* o = std::get_if<opened>(&e))
      owner = o->owner;
    else if (auto* d = std::get_if<deposited>(&e))
      balance += d->amount;
    else if (auto* w = std::get_if<withdrawn>(&e))
      balance -= w->amount;
  }
};

/// The same account with snapshots of schema `Schema`.
template <int Schema> struct snap_account : account {
  static constexpr int snapshot_schema = Schema;
};
template <int Schema> void to_json(json& j, const snap_account<Schema>& a) {
  j = json{{"owner", a.owner}, {"balance", a.balance}, {"events", a.events}};
}
template <int Schema> void from_json(const json& j, snap_account<Schema>& a) {
  j.at("owner").get_to(a.owner);
  j.at("balance").get_to(a.balance);
  j.at("events").get_to(a.events);
}

using codec = mire::event_codec<account::event>;

} // namespace bank

namespace {

using bank::account;
using bank::deposited;
using bank::opened;
using bank::snap_account;
using bank::withdrawn;
using mire::errc;
using mire::expected_version;
using nlohmann::json;

mire::event_data plain_event(std::string type) {
  return {std::move(type), "{}", "{}", {}};
}

// Creates `id` with an opened event and `deposits` deposits of 1..deposits; returns the version.
int64_t open_account(mire::event_store& store, const std::string& id, const std::string& owner,
                     int deposits) {
  mire::repository<account> repo{store};
  auto a = repo.load(id).value();
  a.record(opened{owner});
  for (int i = 1; i <= deposits; ++i)
    a.record(deposited{i});
  return repo.save(a).value().version;
}

template <class A> void same_state(const A& x, const account& y) {
  CHECK(x.owner == y.owner);
  CHECK(x.balance == y.balance);
  CHECK(x.events == y.events);
}

// Keeps the first byte of the owner's name only: a name that starts with a multi-byte character
// leaves invalid UTF-8 in the state, which then does not serialize to a snapshot.
struct initial_account : snap_account<1> {
  void apply(const event& e) {
    account::apply(e);
    owner = owner.substr(0, 1);
  }
};

// A store of one connection: whatever a scope leaves behind, the next user gets.
mire::event_store one_connection(const mire::event_store& store) {
  auto options = store.options();
  options.pool_size = 1;
  return mire::event_store::open(options).value();
}

// Runs `sql` in a scope of its own and commits; its first value ("" if none).
std::string run_scope(mire::event_store& store, const std::string& sql) {
  auto tx = store.begin().value();
  auto r = tx.execute(sql);
  REQUIRE_MESSAGE(r, r.error().what());
  REQUIRE(tx.commit());
  return r->rows.empty() ? "" : r->rows.at(0).at(0).value_or("");
}

} // namespace

TEST_CASE("an event that does not encode leaves the aggregate as it was") {
  mire::aggregate<account> a{"account-x"};
  a.record(opened{"Ada"});
  CHECK_THROWS(a.record(opened{std::string("\xff")})); // invalid UTF-8: no JSON for it
  CHECK(a.state().owner == "Ada");
  CHECK(a.state().events == 1);
  CHECK(a.pending().size() == 1);
}

TEST_CASE("an aggregate with unsaved events cannot be snapshotted") {
  mire::aggregate<snap_account<1>> a{"account-x"};
  a.record(opened{"Ada"});
  a.record(deposited{5});
  auto s = mire::make_snapshot(a);
  REQUIRE_FALSE(s);
  CHECK(s.error().code == errc::bad_input);
  CHECK(s.error().message.find("'account-x' with 2 recorded event(s)") != std::string::npos);
}

TEST_SUITE("pg") {

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "a save whose snapshot cannot be made still succeeds, and loads by replay") {
    mire::repository<initial_account> repo{store, {1}};
    auto a = repo.load("account-utf8").value();
    a.record(opened{"\xc3\xa9t\xc3\xa9"}); // "été": the state keeps half of its first character
    auto r = repo.save(a);
    REQUIRE_MESSAGE(r, r.error().what());
    CHECK(r->version == 1);
    CHECK_FALSE(store.load_snapshot("account-utf8").value().has_value());
    auto again = repo.load("account-utf8");
    REQUIRE_MESSAGE(again, again.error().what());
    CHECK(again->version() == 1);
    CHECK(again->state().owner == std::string("\xc3"));
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "typed events are stored under their type names and load back into the state") {
    mire::repository<account> repo{store};
    auto a = repo.load("account-1").value();
    CHECK(a.version() == 0);
    a.record(opened{"Ada"});
    a.record(deposited{100});
    a.record(withdrawn{30}, R"({"correlation_id": "c-7"})");
    CHECK(a.state().balance == 70);
    CHECK(a.version() == 0);
    CHECK(a.pending_version() == 3);
    auto saved = repo.save(a);
    REQUIRE_MESSAGE(saved, saved.error().what());
    CHECK(saved->version == 3);
    CHECK(a.version() == 3);
    CHECK(a.pending().empty());

    auto stored = store.read_stream("account-1").value();
    REQUIRE(stored.size() == 3);
    CHECK(stored[0].type == "account.opened");
    CHECK(json::parse(stored[0].data) == json{{"owner", "Ada"}});
    CHECK(stored[1].type == "account.deposited");
    CHECK(json::parse(stored[1].data) == json{{"amount", 100}});
    CHECK(stored[2].type == "account.withdrawn");
    CHECK(json::parse(stored[2].metadata) == json{{"correlation_id", "c-7"}});

    auto b = repo.load("account-1");
    REQUIRE(b);
    CHECK(b->version() == 3);
    CHECK(b->state().owner == "Ada");
    CHECK(b->state().balance == 70);
    CHECK(b->state().applied == 3);
    // Nothing recorded: nothing to save, nothing stored.
    auto nothing = repo.save(*b);
    REQUIRE(nothing);
    CHECK(nothing->version == 3);
    CHECK(store.stream_version("account-1").value() == 3);
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "saving an aggregate loaded at an old version conflicts and stores nothing") {
    open_account(store, "account-2", "Ada", 1);
    mire::repository<account> repo{store};
    auto first = repo.load("account-2").value();
    auto second = repo.load("account-2").value();
    first.record(withdrawn{1});
    REQUIRE(repo.save(first));
    second.record(deposited{1000});
    second.record(deposited{1000});
    auto lost = repo.save(second);
    REQUIRE_FALSE(lost);
    CHECK(lost.error().code == errc::version_conflict);
    CHECK(lost.error().stream_id == "account-2");
    CHECK(lost.error().expected == 2);
    CHECK(lost.error().actual == 3);
    CHECK(second.version() == 2); // unchanged: the caller reloads and decides again
    CHECK(second.pending().size() == 2);

    auto now = repo.load("account-2").value();
    CHECK(now.version() == 3);
    CHECK(now.state().balance == 0);
    now.record(deposited{1000});
    CHECK(repo.save(now));
    CHECK(repo.load("account-2").value().state().balance == 1000);
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "a save retried with the same recorded events is a duplicate, stored once") {
    mire::repository<account> repo{store};
    auto a = repo.load("account-3").value();
    a.record(opened{"Ada"});
    a.record(deposited{5});
    auto retry = a; // the same pending events with the same ids: a client retrying after a timeout
    auto first = repo.save(a);
    REQUIRE(first);
    CHECK_FALSE(first->duplicate);
    auto again = repo.save(retry);
    REQUIRE_MESSAGE(again, again.error().what());
    CHECK(again->duplicate);
    CHECK(again->version == first->version);
    CHECK(again->first_position == first->first_position);
    CHECK(retry.version() == 2);
    CHECK(store.read_stream("account-3").value().size() == 2);
    CHECK(repo.load("account-3").value().state().balance == 5);
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "loading a stream with an event that does not decode fails naming it") {
    open_account(store, "account-4", "Ada", 1);
    SUBCASE("an unknown event type") {
      REQUIRE(
          store.append("account-4", expected_version::exactly(2), {plain_event("account.frozen")}));
      auto a = mire::repository<account>{store}.load("account-4");
      REQUIRE_FALSE(a);
      CHECK(a.error().code == errc::decode_failed);
      CHECK(a.error().message.find("account.frozen") != std::string::npos);
      CHECK(a.error().message.find("account-4") != std::string::npos);
      CHECK(a.error().message.find("version 3") != std::string::npos);
    }
    SUBCASE("data that does not fit the event's struct") {
      REQUIRE(store.append("account-4", expected_version::exactly(2),
                           {{"account.deposited", R"({"amount": "lots"})", "{}", {}}}));
      auto a = mire::repository<account>{store}.load("account-4");
      REQUIRE_FALSE(a);
      CHECK(a.error().code == errc::decode_failed);
      CHECK(a.error().message.find("account.deposited") != std::string::npos);
    }
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "loading from a snapshot plus the tail equals a full replay") {
    REQUIRE(open_account(store, "account-5", "Ada", 9) == 10);
    auto at10 = mire::load<snap_account<1>>(store, "account-5").value();
    CHECK(at10.state().applied == 10); // no snapshot yet
    REQUIRE(store.save_snapshot(mire::make_snapshot(at10).value()));
    auto snap = store.load_snapshot("account-5").value();
    REQUIRE(snap);
    CHECK(snap->version == 10);
    CHECK(snap->schema_version == 1);

    mire::repository<account> plain{store};
    auto more = plain.load("account-5").value();
    for (int i = 0; i < 5; ++i)
      more.record(i % 2 ? deposited{100 + i} : deposited{7});
    more.record(withdrawn{3});
    REQUIRE(plain.save(more));

    auto full = plain.load("account-5").value();
    CHECK(full.version() == 16);
    CHECK(full.state().applied == 16);
    auto fast = mire::repository<snap_account<1>>{store}.load("account-5");
    REQUIRE(fast);
    CHECK(fast->version() == 16);
    CHECK(fast->state().applied == 6); // only the tail after the snapshot was read
    same_state(fast->state(), full.state());

    // Loading inside a transaction uses the snapshot the same way.
    auto tx = store.begin();
    REQUIRE(tx);
    auto in_tx = mire::load<snap_account<1>>(*tx, "account-5");
    REQUIRE(in_tx);
    CHECK(in_tx->state().applied == 6);
    same_state(in_tx->state(), full.state());
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "the repository writes a snapshot whenever a save crosses a multiple of N") {
    mire::repository<snap_account<1>> repo{store, {.snapshot_every = 4}};
    auto a = repo.load("account-6").value();
    a.record(opened{"Ada"});
    a.record(deposited{1});
    a.record(deposited{2});
    REQUIRE(repo.save(a)); // version 3
    CHECK_FALSE(store.load_snapshot("account-6").value());
    a.record(deposited{3});
    a.record(deposited{4});
    REQUIRE(repo.save(a)); // version 5: crossed 4
    auto s = store.load_snapshot("account-6").value();
    REQUIRE(s);
    CHECK(s->version == 5);
    CHECK(json::parse(s->state)["balance"] == 10);
    a.record(deposited{5});
    REQUIRE(repo.save(a)); // version 6: no new multiple
    CHECK(store.load_snapshot("account-6").value()->version == 5);
    a.record(deposited{6});
    a.record(deposited{7});
    a.record(deposited{8});
    REQUIRE(repo.save(a)); // version 9: crossed 8
    CHECK(store.load_snapshot("account-6").value()->version == 9);

    auto loaded = repo.load("account-6").value();
    CHECK(loaded.version() == 9);
    CHECK(loaded.state().applied == 0);
    CHECK(loaded.state().balance == 36);
    CHECK(loaded.state().events == 9);
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "a snapshot of another schema version or unreadable is ignored and replayed") {
    REQUIRE(open_account(store, "account-7", "Ada", 14) == 15);
    const int64_t right_balance = 14 * 15 / 2;
    SUBCASE("another schema version") {
      // A snapshot of schema 1 saying something the events do not: used only by schema-1 code.
      REQUIRE(store.save_snapshot(
          {"account-7", 10, 1, R"({"owner": "Mallory", "balance": 999999, "events": 10})"}));
      auto old_code = mire::load<snap_account<1>>(store, "account-7").value();
      CHECK(old_code.state().owner == "Mallory"); // proves the snapshot is there and read
      auto new_code = mire::load<snap_account<2>>(store, "account-7");
      REQUIRE(new_code);
      CHECK(new_code->version() == 15);
      CHECK(new_code->state().applied == 15);
      CHECK(new_code->state().owner == "Ada");
      CHECK(new_code->state().balance == right_balance);
    }
    SUBCASE("a state that does not decode") {
      REQUIRE(store.save_snapshot({"account-7", 10, 1, R"({"unexpected": true})"}));
      auto a = mire::load<snap_account<1>>(store, "account-7");
      REQUIRE_MESSAGE(a, a.error().what());
      CHECK(a->version() == 15);
      CHECK(a->state().applied == 15);
      CHECK(a->state().owner == "Ada");
      CHECK(a->state().balance == right_balance);
    }
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "a newer snapshot is not replaced by an older save of the same schema") {
    REQUIRE(open_account(store, "account-8", "Ada", 19) == 20);
    REQUIRE(store.save_snapshot({"account-8", 10, 1, R"({"at": 10})"}));
    REQUIRE(store.save_snapshot({"account-8", 5, 1, R"({"at": 5})"}));
    auto s = store.load_snapshot("account-8").value();
    REQUIRE(s);
    CHECK(s->version == 10);
    CHECK(json::parse(s->state) == json{{"at", 10}});

    REQUIRE(store.save_snapshot({"account-8", 12, 1, R"({"at": 12})"}));
    CHECK(store.load_snapshot("account-8").value()->version == 12);
    // A new schema's snapshot replaces the old schema's, whatever its version: old states are of
    // no use to the new code.
    REQUIRE(store.save_snapshot({"account-8", 8, 2, R"({"at": 8})"}));
    s = store.load_snapshot("account-8").value();
    CHECK(s->version == 8);
    CHECK(s->schema_version == 2);
    CHECK(store.load_snapshot("account-unknown").value() == std::nullopt);
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "a snapshot saved in a transaction that rolls back is not stored") {
    REQUIRE(open_account(store, "account-9", "Ada", 2) == 3);
    {
      auto tx = store.begin();
      REQUIRE(tx);
      REQUIRE(
          tx->save_snapshot({"account-9", 3, 1, R"({"owner": "x", "balance": 1, "events": 3})"}));
      CHECK(tx->load_snapshot("account-9").value());
    }
    CHECK_FALSE(store.load_snapshot("account-9").value());
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "a conflict on the second stream of a transaction rolls back the first") {
    REQUIRE(store.append("acct-a", expected_version::no_stream(), {plain_event("a1")}));
    REQUIRE(store.append("acct-b", expected_version::no_stream(),
                         {plain_event("b1"), plain_event("b2")}));
    mire::checkpoint start;
    const auto before = store.read_all(start, 100).value().events.size();
    REQUIRE(before == 3);

    auto tx = store.begin();
    REQUIRE(tx);
    auto first = tx->append("acct-a", expected_version::exactly(1), {plain_event("a2")});
    REQUIRE_MESSAGE(first, first.error().what());
    CHECK(first->version == 2);
    CHECK(tx->stream_version("acct-a").value() == 2); // the transaction sees its own append
    mire::result<mire::append_result> second = mire::error{};
    int64_t expected = 0, actual = 2;
    SUBCASE("behind") {
      expected = 1;
      second = tx->append("acct-b", expected_version::exactly(1), {plain_event("b")});
    }
    SUBCASE("ahead") {
      expected = 5;
      second = tx->append("acct-b", expected_version::exactly(5), {plain_event("b")});
    }
    SUBCASE("another writer committed after the transaction read the stream") {
      REQUIRE(tx->read_stream("acct-b").value().size() == 2);
      REQUIRE(store.append("acct-b", expected_version::any(), {plain_event("b3")}));
      expected = 2;
      actual = 3;
      second = tx->append("acct-b", expected_version::exactly(2), {plain_event("b")});
    }
    REQUIRE_FALSE(second);
    CHECK(second.error().code == errc::version_conflict);
    CHECK(second.error().stream_id == "acct-b");
    CHECK(second.error().expected == expected);
    CHECK(second.error().actual == actual);
    CHECK_FALSE(tx->active());
    auto further = tx->append("acct-c", expected_version::any(), {plain_event("c")});
    CHECK_FALSE(further);
    auto committed = tx->commit();
    CHECK_FALSE(committed);

    CHECK(store.stream_version("acct-a").value() == 1);
    CHECK(store.stream_version("acct-b").value() == actual);
    CHECK(store.stream_version("acct-c").value() == 0);
    CHECK(store.read_all(start, 100).value().events.size() == before + (actual - 2));
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "transact with load and save rolls back both aggregates when one conflicts") {
    open_account(store, "account-a", "Ada", 0);
    {
      mire::repository<account> repo{store};
      auto a = repo.load("account-a").value();
      a.record(deposited{100});
      REQUIRE(repo.save(a));
    }
    open_account(store, "account-b", "Bob", 0);

    auto r = store.transact([&](mire::transaction& tx) -> mire::result<int64_t> {
      auto a = mire::load<account>(tx, "account-a");
      if (!a)
        return a.error();
      auto b = mire::load<account>(tx, "account-b");
      if (!b)
        return b.error();
      // Another writer changes b after the transfer has read it.
      REQUIRE(
          store.append("account-b", expected_version::any(), {bank::codec::encode(deposited{1})}));
      a->record(withdrawn{40});
      b->record(deposited{40});
      auto saved_a = mire::save(tx, *a);
      if (!saved_a)
        return saved_a.error();
      CHECK(saved_a->version == 3);
      auto saved_b = mire::save(tx, *b);
      if (!saved_b)
        return saved_b.error();
      return saved_b->version;
    });
    REQUIRE_FALSE(r);
    CHECK(r.error().code == errc::version_conflict);
    CHECK(r.error().stream_id == "account-b");
    CHECK(r.error().expected == 1);
    CHECK(r.error().actual == 2);

    mire::repository<account> repo{store};
    auto a = repo.load("account-a").value();
    CHECK(a.version() == 2);
    CHECK(a.state().balance == 100);
    auto b = repo.load("account-b").value();
    CHECK(b.version() == 2);
    CHECK(b.state().balance == 1);
  }

  TEST_CASE_FIXTURE(
      mire::test::pg_fixture,
      "a committed transaction scope stores both appends, invisible until the commit") {
    open_account(store, "account-a", "Ada", 0);
    open_account(store, "account-b", "Bob", 0);
    auto r = store.transact([&](mire::transaction& tx) -> mire::result<void> {
      auto a = mire::load<account>(tx, "account-a");
      auto b = mire::load<account>(tx, "account-b");
      if (!a || !b)
        return mire::error{errc::internal, "load failed"};
      a->record(deposited{60});
      b->record(deposited{40});
      b->record(withdrawn{10});
      if (auto s = mire::save(tx, *a); !s)
        return s.error();
      if (auto s = mire::save(tx, *b); !s)
        return s.error();
      CHECK(tx.stream_version("account-b").value() == 3);
      // Not visible outside before the commit.
      CHECK(store.stream_version("account-a").value() == 1);
      CHECK(store.stream_version("account-b").value() == 1);
      return {};
    });
    REQUIRE_MESSAGE(r, r.error().what());
    auto a = store.read_stream("account-a").value();
    auto b = store.read_stream("account-b").value();
    REQUIRE(a.size() == 2);
    REQUIRE(b.size() == 3);
    CHECK(a[1].transaction_id == b[1].transaction_id); // one transaction
    CHECK(b[1].transaction_id == b[2].transaction_id);
    CHECK(a[0].transaction_id != a[1].transaction_id);
    mire::repository<account> repo{store};
    CHECK(repo.load("account-a").value().state().balance == 60);
    CHECK(repo.load("account-b").value().state().balance == 30);
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "a transaction scope that throws or is dropped stores nothing") {
    CHECK_THROWS_AS(store.transact([&](mire::transaction& tx) -> mire::result<void> {
      tx.append("drop-1", expected_version::any(), {plain_event("x")}).value();
      throw std::runtime_error("boom");
    }),
                    std::runtime_error);
    auto failed = store.transact([&](mire::transaction& tx) -> mire::result<void> {
      tx.append("drop-1", expected_version::any(), {plain_event("x")}).value();
      return mire::error{errc::internal, "the business rule said no"};
    });
    REQUIRE_FALSE(failed);
    CHECK(failed.error().message == "the business rule said no");
    // More dropped transactions than the pool has connections: each gives its connection back.
    for (std::size_t i = 0; i < store.options().pool_size + 4; ++i) {
      auto tx = store.begin();
      REQUIRE_MESSAGE(tx, tx.error().what());
      REQUIRE(tx->append("drop-1", expected_version::any(), {plain_event("x")}));
    }
    CHECK(store.stream_version("drop-1").value() == 0);
    mire::checkpoint start;
    CHECK(store.read_all(start, 10).value().events.empty());
  }

  TEST_CASE_FIXTURE(
      mire::test::pg_fixture,
      "appending already stored events inside a transaction is refused and rolls back") {
    const mire::event_data e{"x", "{}", "{}", mire::new_uuid()};
    REQUIRE(store.append("tx-1", expected_version::no_stream(), {e}));
    auto tx = store.begin();
    REQUIRE(tx);
    REQUIRE(tx->append("tx-2", expected_version::no_stream(), {plain_event("y")}));
    auto again = tx->append("tx-1", expected_version::no_stream(), {e});
    REQUIRE_FALSE(again);
    CHECK(again.error().code == errc::bad_input);
    CHECK(again.error().message.find(e.event_id) != std::string::npos);
    CHECK_FALSE(tx->commit());
    CHECK(store.stream_version("tx-2").value() == 0);
    CHECK(store.stream_version("tx-1").value() == 1);
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "a clash with an earlier append of the same transaction is bad input, not a "
                    "conflict to retry") {
    // Retrying would clash again: a version conflict here would send callers round in circles.
    const mire::event_data e{"x", "{}", "{}", mire::new_uuid()};
    SUBCASE("an event id used twice") {
      auto tx = store.begin().value();
      REQUIRE(tx.append("clash-1", expected_version::no_stream(), {e}));
      auto again = tx.append("clash-2", expected_version::no_stream(), {e});
      REQUIRE_FALSE(again);
      CHECK(again.error().code == errc::bad_input);
      CHECK(again.error().message.find(e.event_id) != std::string::npos);
      CHECK(again.error().message.find("same transaction") != std::string::npos);
    }
    SUBCASE("a stream appended twice expecting the same version") {
      auto tx = store.begin().value();
      REQUIRE(tx.append("clash-3", expected_version::no_stream(), {plain_event("y")}));
      auto again = tx.append("clash-3", expected_version::no_stream(), {plain_event("y")});
      REQUIRE_FALSE(again);
      CHECK(again.error().code == errc::bad_input);
      CHECK(again.error().message.find("clash-3") != std::string::npos);
    }
    SUBCASE("another writer first is still a conflict") {
      auto tx = store.begin().value();
      REQUIRE(tx.append("clash-4", expected_version::no_stream(), {plain_event("y")}));
      REQUIRE(store.append("clash-5", expected_version::no_stream(), {plain_event("z")}));
      auto late = tx.append("clash-5", expected_version::no_stream(), {plain_event("y")});
      REQUIRE_FALSE(late);
      CHECK(late.error().code == errc::version_conflict);
      CHECK(late.error().actual == 1);
    }
    for (const char* s : {"clash-1", "clash-2", "clash-3", "clash-4"})
      CHECK(store.stream_version(s).value() == 0);
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "user SQL cannot end the transaction scope, nor leave settings to the pool") {
    auto tx = store.begin().value();
    REQUIRE(tx.append("ctl-1", expected_version::no_stream(), {plain_event("y")}));
    auto ended = tx.execute("COMMIT");
    REQUIRE_FALSE(ended);
    CHECK(ended.error().code == errc::bad_input);
    CHECK(ended.error().message.find("'COMMIT'") != std::string::npos);
    // Nothing more runs in it: a later append cannot slip out in autocommit.
    CHECK_FALSE(tx.append("ctl-2", expected_version::no_stream(), {plain_event("y")}));
    CHECK(store.stream_version("ctl-2").value() == 0);

    // A session setting changed in a transaction does not reach the next user of the connection.
    auto tz = store.begin().value();
    REQUIRE(tz.execute("SET TimeZone = 'Asia/Kolkata'"));
    REQUIRE(tz.commit());
    for (int i = 0; i < 4; ++i) { // whichever pooled connection comes next
      auto events = store.read_stream("ctl-1").value();
      REQUIRE(events.size() == 1);
      CHECK(events[0].recorded_at.ends_with("Z"));
    }
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "a setting the server does not report, changed by user SQL, stays out of the "
                    "pool") {
    auto one = one_connection(store);
    const auto before = run_scope(one, "SHOW statement_timeout");
    run_scope(one, "SET statement_timeout = 12345");
    CHECK(run_scope(one, "SHOW statement_timeout") == before);
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "a SET that ends with its transaction keeps the connection; one that does "
                    "not closes it") {
    auto one = one_connection(store);
    auto backend = [&] { return run_scope(one, "SELECT pg_backend_pid()"); };
    const auto first = backend();
    for (const char* local : {"SET LOCAL statement_timeout = 12345",
                              " /* a /* nested */ comment */ set\n-- a comment\n local "
                              "statement_timeout = 12345",
                              "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"}) {
      CAPTURE(std::string(local));
      run_scope(one, local);
      CHECK(backend() == first);
    }
    for (const char* session : {"SET statement_timeout = 12345",
                                "SET SESSION statement_timeout = 12345",
                                "/* local */ SET localx.y = 1"}) {
      CAPTURE(std::string(session));
      const auto before = backend();
      run_scope(one, session);
      CHECK(backend() != before);
    }
  }

  TEST_CASE_FIXTURE(mire::test::pg_fixture,
                    "COPY through a transaction scope is refused and the scope commits nothing") {
    auto tx = store.begin().value();
    REQUIRE(tx.append("cp-1", expected_version::no_stream(), {plain_event("y")}));
    REQUIRE(tx.execute("CREATE TABLE copy_target (x int)"));
    auto copy = tx.execute("COPY copy_target FROM STDIN");
    REQUIRE_FALSE(copy);
    CHECK(copy.error().code == errc::bad_input);
    CHECK(copy.error().message.find("'COPY copy_target FROM STDIN'") != std::string::npos);
    CHECK_FALSE(tx.commit());
    CHECK(store.stream_version("cp-1").value() == 0);
    // The store goes on.
    CHECK(store.append("cp-1", expected_version::no_stream(), {plain_event("y")}));
  }

} // TEST_SUITE("pg")
