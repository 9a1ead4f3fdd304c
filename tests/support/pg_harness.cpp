// One throwaway Postgres per test binary: removed at exit, or by a reaper process if the test
// binary is killed, crashes or is interrupted.
#include "support/pg_harness.hpp"

#include <fcntl.h>
#include <spawn.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <stdexcept>
#include <vector>

#include <fmt/format.h>
#include <libpq-fe.h>

#include "mire/store/embedded_postgres.hpp"

extern char** environ;

namespace mire::test {
namespace {

namespace fs = std::filesystem;

// Blocks until every write end of its stdin is closed, which happens when the test process is
// gone however it ended; then shuts the server down (immediate mode) if it still runs and deletes
// the directories. $1 is the data dir, the rest what to delete. After a normal exit the server is
// already stopped and removed, so this finds nothing to do.
constexpr const char* reaper_script = "cat >/dev/null\n"
                                      "if read -r pid 2>/dev/null <\"$1/postmaster.pid\"; then\n"
                                      "  kill -QUIT \"$pid\"\n"
                                      "  while kill -0 \"$pid\" 2>/dev/null; do sleep 0.1; done\n"
                                      "fi\n"
                                      "shift\n"
                                      "rm -rf -- \"$@\"\n";

// Starts the reaper and returns the write end of its stdin, to be held until exit. Signal handlers
// would not do: doctest installs and restores its own around every test case.
int start_reaper(const std::string& data_dir, const std::vector<std::string>& remove) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0)
    throw std::runtime_error(fmt::format("pipe: {}", std::strerror(errno)));
  std::vector<std::string> argv{"/bin/sh", "-c", reaper_script, "mire-test-reaper", data_dir};
  argv.insert(argv.end(), remove.begin(), remove.end());
  std::vector<char*> args;
  for (auto& a : argv)
    args.push_back(a.data());
  args.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[0], 0);
  // Not the test's stdout: CTest would wait for the reaper before reporting.
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addchdir_np(&actions, "/");
  // Its own session, so that Ctrl-C on the terminal stops the tests but not their reaper.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID);
  pid_t pid = 0;
  int rc = posix_spawn(&pid, args[0], &actions, &attr, args.data(), environ);
  posix_spawnattr_destroy(&attr);
  posix_spawn_file_actions_destroy(&actions);
  close(fds[0]);
  if (rc != 0) {
    close(fds[1]);
    throw std::runtime_error(fmt::format("could not start the reaper: {}", std::strerror(rc)));
  }
  return fds[1];
}

class test_server {
public:
  test_server() {
    char dir[] = "/tmp/mire-test-XXXXXX";
    if (mkdtemp(dir) == nullptr)
      throw std::runtime_error(fmt::format("mkdtemp: {}", std::strerror(errno)));
    options_.home = dir;
    options_.fsync = false;
    options_.throwaway = true;
    // mkdtemp makes the dir 700; as root, the `postgres` user must traverse it for the cluster to
    // stay inside (instead of under /var/tmp). It is our own dir, so opening it is fine.
    std::error_code ec;
    fs::permissions(dir,
                    fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                        fs::perms::others_read | fs::perms::others_exec,
                    ec);
    auto pg = embedded_postgres::start(options_);
    if (!pg) {
      fs::remove_all(dir, ec);
      throw std::runtime_error(pg.error().what());
    }
    pg_.emplace(std::move(*pg));
    auto status = embedded_postgres::status(options_);
    if (!status)
      throw std::runtime_error(status.error().what());
    socket_dir_ = status->socket_dir;
    reaper_ = start_reaper(
        pg_->data_dir(),
        {options_.home, fs::path(pg_->data_dir()).parent_path().string(), socket_dir_});
  }

  ~test_server() {
    (void)pg_->stop(); // throwaway: stops the server and removes its files
    std::error_code ec;
    fs::remove_all(options_.home, ec);
    close(reaper_);
  }

  const std::string& url() const { return pg_->url(); }

  std::string database_url(const std::string& name) const {
    return fmt::format("postgresql://postgres@/{}?host={}&port={}", name, socket_dir_,
                       options_.port);
  }

private:
  embedded_options options_;
  std::optional<embedded_postgres> pg_;
  std::string socket_dir_;
  int reaper_ = -1;
};

// Constructed on first use (a failed start is retried by the next caller), destroyed at exit.
test_server& server() {
  static test_server instance;
  return instance;
}

event_store open_store(const std::string& url) {
  auto store = event_store::open({.url = url});
  if (!store)
    throw std::runtime_error(store.error().what());
  return std::move(*store);
}

} // namespace

const std::string& server_url() {
  return server().url();
}

std::string fresh_database_url() {
  static std::atomic<int> counter{0};
  auto name = fmt::format("t_{}_{}", getpid(), ++counter);
  std::unique_ptr<PGconn, decltype(&PQfinish)> conn(PQconnectdb(server_url().c_str()), &PQfinish);
  if (PQstatus(conn.get()) != CONNECTION_OK)
    throw std::runtime_error(
        fmt::format("connect {}: {}", server_url(), PQerrorMessage(conn.get())));
  std::unique_ptr<PGresult, decltype(&PQclear)> res(
      PQexec(conn.get(), fmt::format("CREATE DATABASE {}", name).c_str()), &PQclear);
  if (PQresultStatus(res.get()) != PGRES_COMMAND_OK)
    throw std::runtime_error(
        fmt::format("CREATE DATABASE {}: {}", name, PQresultErrorMessage(res.get())));
  return server().database_url(name);
}

pg_fixture::pg_fixture() : url(fresh_database_url()), store(open_store(url)) {
  if (auto migrated = store.migrate(); !migrated)
    throw std::runtime_error(migrated.error().what());
}

} // namespace mire::test
