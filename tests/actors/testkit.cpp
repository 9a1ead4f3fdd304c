// mire/actors/testkit.hpp and mire/actors/decision.hpp: given/when/then without a database.
#include <doctest/doctest.h>

#include <string>
#include <variant>
#include <vector>

#include "actors/bank.hpp"
#include "mire/actors/testkit.hpp"

namespace {

using bank::account;
using bank::account_error;
using kit = mire::testkit<account>;
using event = account::event;

// An aggregate whose codec forgets a field: what replayed() is there to catch.
struct noted {
  static constexpr std::string_view type_name = "note.noted";
  std::string text;
};
void to_json(nlohmann::json& j, const noted&) {
  j = nlohmann::json::object();
}
void from_json(const nlohmann::json&, noted&) {}
struct note {
  using event = std::variant<noted>;
  using command = std::variant<std::string>;
  std::string text;
  void apply(const event& e) { text += std::get<noted>(e).text; }
  mire::decision<event> decide(const command& c) const { return noted{std::get<std::string>(c)}; }
};

} // namespace

TEST_SUITE("testkit") {

  TEST_CASE("an accepted command returns its events and the next command sees them") {
    kit k{{bank::opened{"Ada"}}};
    auto out = k.when(bank::deposit{100, "d1"});
    REQUIRE(out.accepted());
    CHECK(out.events == std::vector<event>{bank::deposited{100, "d1"}});
    CHECK(k.state().balance == 100);
    CHECK(k.version() == 2);
    auto second = k.when(bank::withdraw{30, 0, "w1"});
    REQUIRE(second.accepted());
    CHECK(k.state().balance == 70);
    CHECK(k.history().size() == 3);
  }

  TEST_CASE("a rejected command records nothing and names the aggregate's error code") {
    kit k{{bank::opened{"Ada"}, bank::deposited{10, "d1"}}};
    auto out = k.when(bank::withdraw{50, 1, "w1"});
    REQUIRE(out.rejected());
    CHECK(out.rejection().code == "insufficient_funds");
    CHECK(out.events.empty());
    CHECK(k.state().balance == 10);
    CHECK(k.version() == 2);
  }

  TEST_CASE("one command can record several events") {
    kit k{{bank::opened{"Ada"}, bank::deposited{10, "d1"}}};
    auto out = k.when(bank::withdraw{5, 2, "w1"});
    REQUIRE(out.accepted());
    CHECK(out.events == std::vector<event>{bank::withdrawn{5, "w1"}, bank::fee_charged{2, "w1"}});
    CHECK(k.state().balance == 3);
  }

  TEST_CASE("the rules of the aggregate refuse commands in the wrong state") {
    kit fresh;
    CHECK(fresh.when(bank::deposit{1, "d"}).rejection().code == "not_open");
    kit k{{bank::opened{"Ada"}}};
    CHECK(k.when(bank::open{"Bob"}).rejection().code == "already_open");
    CHECK(k.when(bank::deposit{0, "d"}).rejection().code == "invalid_amount");
    REQUIRE(k.when(bank::close{"done"}).accepted());
    CHECK(k.when(bank::deposit{1, "d"}).rejection().code == "closed");
  }

  TEST_CASE("given() appends history to what is there") {
    kit k;
    k.given({bank::opened{"Ada"}}).given({bank::deposited{7, "a"}, bank::deposited{8, "b"}});
    CHECK(k.state().balance == 15);
    CHECK(k.version() == 3);
  }

  TEST_CASE("replayed() folds the history through the JSON codec to the same state") {
    kit k{{bank::opened{"Ada"}}};
    REQUIRE(k.when(bank::deposit{40, "d"}).accepted());
    REQUIRE(k.when(bank::withdraw{15, 5, "w"}).accepted());
    auto r = k.replayed();
    REQUIRE(r);
    CHECK(r->owner == "Ada");
    CHECK(r->balance == k.state().balance);
    CHECK(r->events == k.state().events);
  }

  TEST_CASE("replayed() shows a codec that loses a field") {
    mire::testkit<note> k;
    REQUIRE(k.when(std::string("hello")).accepted());
    CHECK(k.state().text == "hello");
    auto r = k.replayed();
    REQUIRE(r);
    CHECK(r->text.empty());
  }
}

TEST_SUITE("decision") {

  TEST_CASE("a decision is built from one event, a vector of events, nothing or a rejection") {
    mire::decision<event> one = bank::deposited{1, "x"};
    CHECK_FALSE(one.is_rejected());
    CHECK(one.events().size() == 1);
    mire::decision<event> many = std::vector<event>{bank::opened{"A"}, bank::deposited{1, "x"}};
    CHECK(many.events().size() == 2);
    mire::decision<event> none;
    CHECK_FALSE(none.is_rejected());
    CHECK(none.events().empty());
    mire::decision<event> no = mire::reject(account_error::closed, "closed for good");
    REQUIRE(no.is_rejected());
    CHECK(no.rejection().code == "closed");
    CHECK(no.rejection().message == "closed for good");
    mire::decision<event> text = mire::reject("limit", "over the limit");
    CHECK(text.rejection().code == "limit");
  }

  TEST_CASE("an aggregate with a command variant and a decide is an aggregate_root") {
    CHECK(mire::aggregate_root<account>);
    CHECK(mire::aggregate_root<note>);
    CHECK_FALSE(mire::aggregate_root<int>);
  }
}
