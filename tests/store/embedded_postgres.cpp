// Tests of mire/store/embedded_postgres.hpp: create, reuse, stop, restart and remove a cluster.
#include "mire/store/embedded_postgres.hpp"

#include <doctest/doctest.h>
#include <libpq-fe.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>

namespace fs = std::filesystem;
using mire::embedded_options;
using mire::embedded_postgres;

namespace {

// A fresh home under /tmp; the destructor stops whatever runs there and deletes it all.
struct temp_home {
  embedded_options options;

  // `reachable`: open the dir (mkdtemp makes it 700) so that, as root, the `postgres` user can
  // keep the cluster inside it.
  explicit temp_home(bool reachable = true) {
    char dir[] = "/tmp/mire-home-XXXXXX";
    REQUIRE(mkdtemp(dir) != nullptr);
    if (reachable)
      fs::permissions(dir, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                               fs::perms::others_read | fs::perms::others_exec);
    options.home = dir;
    options.fsync = false;
  }
  ~temp_home() {
    auto o = options;
    o.throwaway = true;
    (void)embedded_postgres::stop(o);
    std::error_code ec;
    fs::remove_all(options.home, ec);
  }
};

template <class T> T value_of(mire::result<T> r) {
  if (!r)
    FAIL(r.error().what());
  return std::move(*r);
}

void require_ok(const mire::result<void>& r) {
  if (!r)
    FAIL(r.error().what());
}

// Runs `sql` on a new connection: the first value of the first row ("" if none); throws on error.
std::string query(const std::string& url, const std::string& sql) {
  std::unique_ptr<PGconn, decltype(&PQfinish)> conn(PQconnectdb(url.c_str()), &PQfinish);
  if (PQstatus(conn.get()) != CONNECTION_OK)
    throw std::runtime_error(PQerrorMessage(conn.get()));
  std::unique_ptr<PGresult, decltype(&PQclear)> res(PQexec(conn.get(), sql.c_str()), &PQclear);
  auto status = PQresultStatus(res.get());
  if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK)
    throw std::runtime_error(PQresultErrorMessage(res.get()));
  return PQntuples(res.get()) > 0 ? PQgetvalue(res.get(), 0, 0) : "";
}

bool alive(int pid) {
  return pid > 0 && (kill(pid, 0) == 0 || errno == EPERM);
}

// pg_ctl stop returns once the pid file is gone, a moment before the process itself is (and is
// reaped by init).
bool exits_soon(int pid) {
  for (int i = 0; i < 100 && alive(pid); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  return !alive(pid);
}

// A TCP port free a moment ago (bound to 0, then released).
int free_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  REQUIRE(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  close(fd);
  return ntohs(addr.sin_port);
}

} // namespace

TEST_SUITE("pg") {

  TEST_CASE("start creates a cluster and runs a server that answers on its url and on tcp") {
    temp_home home;
    home.options.tcp = true;
    home.options.port = free_port();
    auto pg = value_of(embedded_postgres::start(home.options));
    CHECK(fs::exists(fs::path(pg.data_dir()) / "PG_VERSION"));
    CHECK(query(pg.url(), "SELECT 1") == "1");
    CHECK(query(pg.url(), "SHOW max_connections") == "200");
    auto tcp_url =
        "postgresql://postgres@127.0.0.1:" + std::to_string(home.options.port) + "/postgres";
    CHECK(query(tcp_url, "SELECT 2") == "2");
  }

  TEST_CASE("a second start reuses the server, and a start after stop keeps the data") {
    temp_home home;
    auto first = value_of(embedded_postgres::start(home.options));
    auto running = value_of(embedded_postgres::status(home.options));
    CHECK(running.initialized);
    CHECK(running.running);
    CHECK(alive(running.pid));
    CHECK(running.url == first.url());
    CHECK(running.data_dir == first.data_dir());
    query(first.url(), "CREATE TABLE kept (n int); INSERT INTO kept VALUES (42)");

    auto second = value_of(embedded_postgres::start(home.options));
    CHECK(second.url() == first.url());
    CHECK(value_of(embedded_postgres::status(home.options)).pid == running.pid);

    require_ok(embedded_postgres::stop(home.options));
    auto stopped = value_of(embedded_postgres::status(home.options));
    CHECK(stopped.initialized);
    CHECK_FALSE(stopped.running);
    CHECK(stopped.pid == 0);
    CHECK(exits_soon(running.pid));
    CHECK_THROWS(query(first.url(), "SELECT 1"));
    require_ok(embedded_postgres::stop(home.options)); // stopping a stopped server is fine

    auto again = value_of(embedded_postgres::start(home.options));
    CHECK(value_of(embedded_postgres::status(home.options)).running);
    CHECK(query(again.url(), "SELECT n FROM kept") == "42");
    require_ok(embedded_postgres::stop(home.options));
  }

  TEST_CASE("a pid file left by a crash, naming a pid another program now has, does not stop a "
            "start") {
    temp_home home;
    const auto data = fs::path(value_of(embedded_postgres::start(home.options)).data_dir());
    require_ok(embedded_postgres::stop(home.options));
    // As after a reboot: the pid file stayed and its pid now runs something else (this test).
    {
      std::ofstream pid_file(data / "postmaster.pid");
      pid_file << getpid() << "\n" << data.string() << "\n0\n5432\n/nonexistent\n";
    }
    CHECK_FALSE(value_of(embedded_postgres::status(home.options)).running);
    auto pg = value_of(embedded_postgres::start(home.options));
    CHECK(query(pg.url(), "SELECT 1") == "1");
    require_ok(embedded_postgres::stop(home.options));
  }

  TEST_CASE("status of a home never started shows nothing initialized or running") {
    temp_home home;
    auto o = home.options;
    o.home += "/never";
    auto s = value_of(embedded_postgres::status(o));
    CHECK_FALSE(s.initialized);
    CHECK_FALSE(s.running);
    CHECK(s.pid == 0);
    CHECK_FALSE(fs::exists(o.home));
  }

  TEST_CASE("two starts at once on a fresh home share one cluster and one server") {
    temp_home home;
    auto start = [&] { return embedded_postgres::start(home.options); };
    auto a = std::async(std::launch::async, start);
    auto b = std::async(std::launch::async, start);
    auto pa = value_of(a.get());
    auto pb = value_of(b.get());
    CHECK(pa.url() == pb.url());
    CHECK(query(pb.url(), "SELECT 1") == "1");
  }

  TEST_CASE("a throwaway server is removed with everything it created") {
    temp_home home;
    auto o = home.options;
    o.home += "/nested"; // created by start, so removed too
    o.throwaway = true;
    auto pg = value_of(embedded_postgres::start(o));
    auto s = value_of(embedded_postgres::status(o));
    REQUIRE(s.running);

    SUBCASE("by stop()") {
      require_ok(pg.stop());
    }
    SUBCASE("by its destructor") {
      embedded_postgres gone = std::move(pg);
    }

    CHECK(exits_soon(s.pid));
    CHECK_FALSE(fs::exists(s.data_dir));
    CHECK_FALSE(fs::exists(s.socket_dir));
    CHECK_FALSE(fs::exists(o.home));
    CHECK(fs::exists(home.options.home)); // not created by start: the caller's
  }

  TEST_CASE("as root, a home the postgres user cannot reach keeps its cluster under /var/tmp") {
    if (geteuid() != 0)
      return; // only root runs the server as another user
    temp_home home(false);
    auto o = home.options;
    o.throwaway = true;
    auto pg = value_of(embedded_postgres::start(o));
    CHECK(pg.data_dir().rfind("/var/tmp/mire-", 0) == 0);
    CHECK(fs::exists(fs::path(o.home) / "postgres.location"));
    CHECK((fs::status(o.home).permissions() & fs::perms::others_exec) == fs::perms::none);
    CHECK(query(pg.url(), "SELECT 1") == "1");
    auto s = value_of(embedded_postgres::status(o));
    CHECK(s.running);
    CHECK(s.data_dir == pg.data_dir());

    require_ok(pg.stop());
    CHECK_FALSE(fs::exists(fs::path(s.data_dir).parent_path()));
    CHECK_FALSE(fs::exists(s.socket_dir));
  }

  TEST_CASE("a home that cannot be a directory is bad input") {
    temp_home home;
    auto file = fs::path(home.options.home) / "file";
    std::ofstream(file) << "not a dir";
    auto o = home.options;

    o.home = file.string();
    auto r = embedded_postgres::start(o);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == mire::errc::bad_input);

    o.home = home.options.home + "/with\"quote";
    r = embedded_postgres::start(o);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == mire::errc::bad_input);

    o.home = "";
    CHECK(embedded_postgres::status(o).error().code == mire::errc::bad_input);
  }
}
