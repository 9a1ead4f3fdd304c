// Pure logic of the store layer: no server needed.
#include <doctest/doctest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <string>

#include "mire/store/event_store.hpp"
#include "mire/store/types.hpp"
#include "mire/store/uuid.hpp"

TEST_CASE("expected versions parse from their command-line spellings") {
  CHECK(mire::expected_version::parse("any")->is_any());
  CHECK(mire::expected_version::parse("no-stream")->value() == 0);
  CHECK(mire::expected_version::parse("42")->value() == 42);
  auto bad = mire::expected_version::parse("-3");
  REQUIRE_FALSE(bad);
  CHECK(bad.error().code == mire::errc::bad_input);
  CHECK(bad.error().message.find("'-3'") != std::string::npos);
}

TEST_CASE("checkpoints round-trip through their text form and order like the log") {
  mire::checkpoint c{812, 40};
  CHECK(mire::checkpoint::parse(c.to_string()).value() == c);
  CHECK(mire::checkpoint{811, 99} < mire::checkpoint{812, 1});
  CHECK_FALSE(mire::checkpoint::parse("812"));
  CHECK_FALSE(mire::checkpoint::parse("a:b"));
}

TEST_CASE("new uuids are well formed, version 7, distinct and time-ordered") {
  auto a = mire::new_uuid(), b = mire::new_uuid();
  CHECK(mire::is_uuid(a));
  CHECK(a != b);
  CHECK(a[14] == '7');
  CHECK(a.substr(0, 8) <= b.substr(0, 8));  // the leading bits are the millisecond clock
  CHECK_FALSE(mire::is_uuid("not-a-uuid"));
}

TEST_CASE("a forked child makes other uuids than its parent") {
  (void)mire::new_uuid(); // the parent's generator exists before the fork
  int fds[2];
  REQUIRE(pipe(fds) == 0);
  const pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    const auto id = mire::new_uuid();
    const bool ok = write(fds[1], id.data(), id.size()) == static_cast<ssize_t>(id.size());
    _exit(ok ? 0 : 1);
  }
  close(fds[1]);
  const auto mine = mire::new_uuid();
  std::string theirs(36, '\0');
  REQUIRE(read(fds[0], theirs.data(), theirs.size()) == 36);
  close(fds[0]);
  int status = 0;
  REQUIRE(waitpid(child, &status, 0) == child);
  CHECK(mire::is_uuid(theirs));
  // The random tail: a generator state copied by fork would give both the same one.
  CHECK(mine.substr(19) != theirs.substr(19));
}

TEST_CASE("a stream's category is its id up to the first dash") {
  CHECK(mire::category_of("account-42") == "account");
  CHECK(mire::category_of("account-42-x") == "account");
  CHECK(mire::category_of("plain") == "plain");
}

TEST_CASE("a malformed database URL is bad input before anything connects") {
  CHECK(mire::check_database_url(""));
  CHECK(mire::check_database_url("mydb"));
  CHECK(mire::check_database_url("postgresql://postgres@/db?host=/tmp&port=5432"));
  CHECK(mire::check_database_url("host=localhost port=5432 dbname=db"));
  auto bad = mire::check_database_url("host=localhost port");
  REQUIRE_FALSE(bad);
  CHECK(bad.error().code == mire::errc::bad_input);
  CHECK(bad.error().message.find("\"port\"") != std::string::npos);
  // open refuses it the same way, without trying a server.
  auto store = mire::event_store::open({.url = "postgresql://x/db?nonsense_option=1"});
  REQUIRE_FALSE(store);
  CHECK(store.error().code == mire::errc::bad_input);
  CHECK(store.error().message.find("nonsense_option") != std::string::npos);
}
