// Tests of mire/config/config.hpp: the shipped file, precedence (flags > env > file > defaults)
// and refusals that name the option. No database.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <unistd.h>

#include "mire/config/config.hpp"

#ifndef MIRE_CONFIG_FILE
#error "MIRE_CONFIG_FILE (the shipped config/mire.ini) must be defined by the build"
#endif

namespace {

// A file with `text`, removed at the end of the test.
struct temp_file {
  std::string path;
  explicit temp_file(const std::string& text) {
    char name[] = "/tmp/mire-config-test-XXXXXX";
    const int fd = ::mkstemp(name);
    REQUIRE(fd >= 0);
    ::close(fd);
    path = name;
    std::ofstream{path} << text;
  }
  ~temp_file() { std::remove(path.c_str()); }
};

// An environment variable set for one test.
struct scoped_env {
  std::string name;
  scoped_env(std::string n, const char* value) : name(std::move(n)) {
    ::setenv(name.c_str(), value, 1);
  }
  ~scoped_env() { ::unsetenv(name.c_str()); }
};

std::string refusal(std::string_view file, std::vector<std::string> flags = {}) {
  auto r = mire::config::load(file, flags);
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().code == mire::errc::bad_input);
  return r.error().message;
}

bool contains(const std::string& text, std::string_view part) {
  return text.find(part) != std::string::npos;
}

} // namespace

TEST_SUITE("config") {
  TEST_CASE("the shipped file holds exactly the built-in defaults") {
    auto from_file = mire::config::load(MIRE_CONFIG_FILE, {});
    REQUIRE(from_file.has_value());
    auto builtin = mire::config::load("", {});
    REQUIRE(builtin.has_value());
    const mire::actors::runtime_options defaults;
    for (const auto* s : {&*from_file, &*builtin}) {
      CHECK(s->store.url.empty());
      CHECK(s->store.schema == "mire");
      CHECK(s->store.pool_size == defaults.store.workers + 4);
      CHECK(s->store.connect_timeout_seconds == 5);
      CHECK(s->runtime.store.workers == defaults.store.workers);
      CHECK(s->runtime.store.group_window == defaults.store.group_window);
      CHECK(s->runtime.store.max_group == defaults.store.max_group);
      CHECK(s->runtime.aggregates.snapshot_every == defaults.aggregates.snapshot_every);
      CHECK(s->runtime.aggregates.passivate_after == defaults.aggregates.passivate_after);
      CHECK(s->runtime.aggregates.max_retries == defaults.aggregates.max_retries);
      CHECK(s->runtime.aggregates.store_timeout == defaults.aggregates.store_timeout);
      CHECK(s->scheduler.policy == "spinning");
      CHECK(s->scheduler.threads == 1);
      CHECK(s->replica_id_derived);
      CHECK(s->store.application_name == "mire/" + s->replica_id);
    }
    CHECK(from_file->origin.at("mire.store.workers") == MIRE_CONFIG_FILE);
    CHECK(builtin->origin.at("mire.store.workers") == "default");
  }

  TEST_CASE("flags override the environment, which overrides the file") {
    temp_file f{"[mire]\nreplica_id = \"file-replica\"\n[mire.store]\nworkers = 3\n"
                "group_window = 2ms\n[mire.database]\nschema = \"from_file\"\n"};
    scoped_env w{"MIRE_STORE_WORKERS", "5"};
    scoped_env s{"MIRE_SCHEMA", "from_env"};
    auto r = mire::config::load(f.path, {"--mire.store.workers=7", "--mire.store.max_group=9"});
    REQUIRE(r.has_value());
    CHECK(r->runtime.store.workers == 7);
    CHECK(r->origin.at("mire.store.workers") == "flag --mire.store.workers");
    CHECK(r->store.schema == "from_env");
    CHECK(r->origin.at("mire.database.schema") == "env MIRE_SCHEMA");
    CHECK(r->runtime.store.group_window == std::chrono::milliseconds(2));
    CHECK(r->runtime.store.max_group == 9);
    CHECK(r->replica_id == "file-replica");
    CHECK(r->store.application_name == "mire/file-replica");
    CHECK(r->store.pool_size == 11); // workers + 4
  }

  TEST_CASE("an empty environment variable counts as unset") {
    temp_file f{"[mire.store]\nworkers = 3\n"};
    scoped_env w{"MIRE_STORE_WORKERS", ""};
    auto r = mire::config::load(f.path, {});
    REQUIRE(r.has_value());
    CHECK(r->runtime.store.workers == 3);
  }

  TEST_CASE("--config among the flags names the file") {
    temp_file f{"[mire.aggregates]\nsnapshot_every = 100\npassivate_after = 2min\n"};
    auto r = mire::config::load("", {"--config=" + f.path});
    REQUIRE(r.has_value());
    CHECK(r->runtime.aggregates.snapshot_every == 100);
    CHECK(r->runtime.aggregates.passivate_after == std::chrono::minutes(2));
    CHECK(r->file == f.path);
  }

  TEST_CASE("invalid values are refused, naming the option and where it came from") {
    CHECK(contains(refusal("", {"--mire.store.workers=-3"}),
                   "mire.store.workers must be at least 1"));
    CHECK(contains(refusal("", {"--mire.store.workers=-3"}), "flag --mire.store.workers"));
    CHECK(contains(refusal("", {"--mire.store.workers=abc"}), "--mire.store.workers=abc"));
    CHECK(contains(refusal("", {"--mire.store.group_window=5"}), "duration"));
    CHECK(
        contains(refusal("", {"--mire.store.workerz=1"}), "unknown option '--mire.store.workerz'"));
    CHECK(contains(refusal("", {"--mire.database.schema=Bad-Name"}), "mire.database.schema"));
    CHECK(contains(refusal("", {"--mire.replica_id=a b"}), "mire.replica_id"));
    CHECK(contains(refusal("", {"--mire.database.pool_size=1", "--mire.store.workers=3"}),
                   "mire.database.pool_size"));
    CHECK(contains(refusal("", {"--mire.aggregates.store_timeout=0us"}),
                   "mire.aggregates.store_timeout"));
    CHECK(
        contains(refusal("", {"--mire.aggregates.max_retries=-1"}), "mire.aggregates.max_retries"));
    CHECK(contains(refusal("", {"--mire.scheduler.policy=fast"}), "mire.scheduler.policy"));
    CHECK(contains(refusal("", {"--mire.scheduler.threads=-1"}), "mire.scheduler.threads"));
    {
      scoped_env w{"MIRE_MAX_GROUP", "0"};
      const auto m = refusal("");
      CHECK(contains(m, "mire.store.max_group"));
      CHECK(contains(m, "env MIRE_MAX_GROUP"));
    }
    {
      scoped_env w{"MIRE_PASSIVATE_AFTER", "soon"};
      CHECK(contains(refusal(""), "MIRE_PASSIVATE_AFTER='soon'"));
    }
  }

  TEST_CASE("a bad file is refused with its line or the option at fault") {
    {
      temp_file f{"[mire.store]\nworkerz = 3\n"};
      CHECK(contains(refusal(f.path), "unknown option mire.store.workerz"));
    }
    {
      temp_file f{"[mire.database]\nurl = postgres://unquoted\n"};
      const auto m = refusal(f.path);
      CHECK(contains(m, "line 2"));
      CHECK(contains(m, "double quotes"));
    }
    {
      temp_file f{"[mire.store]\ngroup_window = 500\n"};
      CHECK(contains(refusal(f.path), "mire.store.group_window must be a duration"));
    }
    {
      temp_file f{"[mire.store]\nworkers = \"4\"\n"};
      CHECK(contains(refusal(f.path), "mire.store.workers must be an integer"));
    }
    {
      temp_file f{"[scheduler]\nmax-threads = 2\n"};
      CHECK(contains(refusal(f.path), "unknown section or key 'scheduler'"));
    }
    CHECK(contains(refusal("/nonexistent/mire.ini"), "cannot read the configuration file"));
  }

  TEST_CASE("load(argc, argv) takes the configuration words and leaves the rest") {
    const char* argv[] = {"prog", "--mire.store.workers",    "6",
                          "run",  "--config-file=/dev/null", "--other",
                          "--",   "--mire.store.workers=1"};
    auto r = mire::config::load(static_cast<int>(std::size(argv)), argv);
    REQUIRE(r.has_value());
    CHECK(r->values.runtime.store.workers == 6);
    CHECK(r->values.file == "/dev/null");
    CHECK(r->rest == std::vector<std::string>{"run", "--other", "--", "--mire.store.workers=1"});
  }

  TEST_CASE("describe gives a loadable file with the same values, without a password") {
    auto r = mire::config::load("", {"--mire.database.url=postgres://u:secret@h/db",
                                     "--mire.store.group_window=250us",
                                     "--mire.aggregates.passivate_after=90s"});
    REQUIRE(r.has_value());
    const auto text = mire::config::describe(*r);
    CHECK_FALSE(contains(text, "secret"));
    temp_file f{text};
    auto again = mire::config::load(f.path, {});
    REQUIRE(again.has_value());
    CHECK(again->runtime.store.group_window == std::chrono::microseconds(250));
    CHECK(again->runtime.aggregates.passivate_after == std::chrono::seconds(90));
    CHECK(again->store.url == "postgres://u:***@h/db");
  }
}
