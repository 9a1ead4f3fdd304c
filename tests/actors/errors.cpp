// mire/actors/errors.hpp and mire/actors/options.hpp: errors through CAF and back, option checks.
#include <doctest/doctest.h>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/sec.hpp>

#include "mire/actors/errors.hpp"
#include "mire/actors/options.hpp"

using mire::errc;

TEST_SUITE("errors") {

  TEST_CASE("a mire error survives the trip through caf::error with its context") {
    auto e = mire::conflict("account-1", 2, 5);
    e.sqlstate = "40001";
    auto c = mire::actors::to_caf(e);
    CHECK(c.category() == caf::atom("mire"));
    auto back = mire::actors::from_caf(c);
    CHECK(back.code == errc::version_conflict);
    CHECK(back.message == e.message);
    CHECK(back.stream_id == "account-1");
    CHECK(back.expected == 2);
    CHECK(back.actual == 5);
    CHECK(back.sqlstate == "40001");
  }

  TEST_CASE("CAF's own errors map to what a caller can act on") {
    CHECK(mire::actors::from_caf(caf::make_error(caf::sec::request_timeout)).code == errc::timeout);
    CHECK(mire::actors::from_caf(caf::make_error(caf::sec::request_receiver_down)).code ==
          errc::unavailable);
    CHECK(mire::actors::from_caf(caf::make_error(caf::sec::runtime_error)).code == errc::internal);
  }

  TEST_CASE("a registered actor system renders mire errors readably") {
    caf::actor_system_config cfg;
    mire::actors::add_mire_types(cfg);
    caf::actor_system sys{cfg};
    auto text = sys.render(mire::actors::to_caf(mire::conflict("account-1", 2, 5)));
    CHECK(text.find("mire: version_conflict") == 0);
    CHECK(text.find("account-1") != std::string::npos);
  }
}

TEST_SUITE("options") {

  TEST_CASE("invalid options are refused naming the option") {
    mire::actors::runtime_options o;
    CHECK(mire::actors::validate(o));
    o.store.workers = 0;
    auto r = mire::actors::validate(o);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == errc::bad_input);
    CHECK(r.error().message.find("store.workers") != std::string::npos);
    o = {};
    o.aggregates.max_retries = -1;
    CHECK(mire::actors::validate(o).error().message.find("aggregates.max_retries") !=
          std::string::npos);
    o = {};
    o.store.max_group = 0;
    CHECK(mire::actors::validate(o).error().message.find("store.max_group") != std::string::npos);
  }
}
