// mire's own PostgreSQL cluster, driven through initdb and pg_ctl run as child processes.
#include "mire/store/embedded_postgres.hpp"

#include <fcntl.h>
#include <pwd.h>
#include <signal.h>
#include <spawn.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>

extern char** environ;

namespace mire {
namespace {

namespace fs = std::filesystem;

// Debian's place for PostgreSQL 15; elsewhere initdb and pg_ctl are looked up on PATH.
constexpr std::string_view pg_bin_dir = "/usr/lib/postgresql/15/bin";

// What mire keeps in MIRE_HOME.
constexpr std::string_view cluster_name = "postgres";           // the cluster, when reachable
constexpr std::string_view location_name = "postgres.location"; // where it is otherwise
constexpr std::string_view lock_name = "postgres.lock";         // serialises start and stop

// Where a cluster goes when the server user cannot reach MIRE_HOME: /var/tmp, unlike /tmp,
// survives a reboot, and a durable event store must not vanish with one.
constexpr std::string_view fallback_cluster_root = "/var/tmp";
// Where the socket goes when its usual path is too long or not plain.
constexpr std::string_view fallback_socket_root = "/tmp";

// The kernel limits a socket path to 107 bytes (sun_path); keep a margin.
constexpr std::size_t max_socket_path = 100;

std::string errno_text(int err) {
  return std::strerror(err);
}

std::string pg_bin(std::string_view name) {
  auto path = fs::path(pg_bin_dir) / name;
  std::error_code ec;
  return fs::exists(path, ec) ? path.string() : std::string(name);
}

// The user that runs initdb and the server. Postgres refuses to run as root, so root runs them as
// the `postgres` system user through runuser.
struct server_user {
  bool via_runuser = false;
  uid_t uid = 0;
  gid_t gid = 0;
};

result<server_user> find_server_user() {
  if (geteuid() != 0)
    return server_user{false, geteuid(), getegid()};
  passwd pw{};
  passwd* found = nullptr;
  std::vector<char> buf(16384);
  if (getpwnam_r("postgres", &pw, buf.data(), buf.size(), &found) != 0 || found == nullptr)
    return error{errc::unavailable,
                 "running as root needs a 'postgres' system user: Postgres refuses to run as root"};
  return server_user{true, pw.pw_uid, pw.pw_gid};
}

struct command_output {
  int status = 0; ///< exit status, or 128 + signal
  std::string output;
};

// The command line for messages; arguments with spaces in double quotes, to read unambiguously.
std::string describe(const std::vector<std::string>& argv) {
  std::string s;
  for (const auto& a : argv) {
    s += s.empty() ? "" : " ";
    s += a.find(' ') == std::string::npos ? a : '"' + a + '"';
  }
  return s;
}

// Runs `argv` as the server user, from an argument vector (never a shell), with stdin from
// /dev/null and stdout and stderr captured. The working directory is "/": the caller's may not be
// readable by `postgres`, and initdb and pg_ctl complain about that.
result<command_output> run(const server_user& user, std::vector<std::string> argv) {
  if (user.via_runuser)
    argv.insert(argv.begin(), {"runuser", "-u", "postgres", "--"});
  std::vector<char*> args;
  for (auto& a : argv)
    args.push_back(a.data());
  args.push_back(nullptr);

  // Close-on-exec, so that processes spawned meanwhile by other threads do not hold the pipe open.
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0)
    return error{errc::internal, fmt::format("pipe: {}", errno_text(errno))};
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, fds[1], 1);
  posix_spawn_file_actions_adddup2(&actions, fds[1], 2);
  posix_spawn_file_actions_addchdir_np(&actions, "/");
  pid_t pid = 0;
  int rc = posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(fds[1]);
  if (rc != 0) {
    close(fds[0]);
    return error{errc::unavailable, fmt::format("could not run {}: {}", argv[0], errno_text(rc))};
  }

  command_output out;
  char buf[4096];
  for (;;) {
    ssize_t n = read(fds[0], buf, sizeof buf);
    if (n > 0)
      out.output.append(buf, static_cast<std::size_t>(n));
    else if (n == 0 || errno != EINTR)
      break;
  }
  close(fds[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  out.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return out;
}

std::string trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' '))
    s.pop_back();
  return s;
}

error command_failed(errc code, const std::vector<std::string>& argv, const command_output& out) {
  return error{code, fmt::format("{} failed (exit {}): {}", describe(argv), out.status,
                                 trimmed(out.output))};
}

// Runs `argv`; a non-zero exit is an error naming the command and showing its output.
result<void> run_checked(const server_user& user, const std::vector<std::string>& argv, errc code) {
  auto r = run(user, argv);
  if (!r)
    return r.error();
  if (r->status != 0)
    return command_failed(code, argv, *r);
  return {};
}

// The last lines of the server log: the reason a start failed is usually there.
std::string log_tail(const fs::path& log, std::size_t max_lines = 20) {
  std::ifstream in(log);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) {
    lines.push_back(std::move(line));
    if (lines.size() > max_lines)
      lines.erase(lines.begin());
  }
  std::string s;
  for (const auto& l : lines)
    s += l + '\n';
  return s.empty() ? "(empty)\n" : s;
}

// pg_ctl hands the data dir and the log file to /bin/sh inside double quotes.
bool quotable(std::string_view path) {
  return path.find_first_of("\"\\$`\n") == std::string_view::npos;
}

// The socket dir travels unquoted through pg_ctl's -o and the URL: plain characters only.
bool plain(std::string_view path) {
  return std::all_of(path.begin(), path.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '/' ||
           c == '.' || c == '_' || c == '-';
  });
}

// A stable name for a home in the shared temp dirs (FNV-1a: the same on every build and run).
std::string home_key(const fs::path& home) {
  uint64_t h = 14695981039346656037ull;
  for (unsigned char c : home.string())
    h = (h ^ c) * 1099511628211ull;
  return fmt::format("mire-{:016x}", h);
}

result<fs::path> absolute_home(const std::string& home) {
  if (home.empty())
    return bad_input("MIRE_HOME is empty");
  std::error_code ec;
  auto path = fs::weakly_canonical(fs::absolute(home, ec), ec);
  if (ec)
    return bad_input(fmt::format("MIRE_HOME {}: {}", home, ec.message()));
  if (!quotable(path.string()))
    return bad_input(fmt::format("MIRE_HOME {} contains one of \" \\ $ ` or a newline, which "
                                 "pg_ctl cannot pass on",
                                 path.string()));
  return path;
}

// Holds an exclusive flock on MIRE_HOME's lock file, so that two processes starting the same
// home do not both run initdb. Closing the descriptor releases the lock.
class home_lock {
public:
  static result<home_lock> acquire(const fs::path& home) {
    auto path = home / lock_name;
    int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
      return bad_input(fmt::format("cannot open {}: {}", path.string(), errno_text(errno)));
    while (flock(fd, LOCK_EX) != 0) {
      if (errno != EINTR) {
        int err = errno;
        close(fd);
        return error{errc::internal, fmt::format("flock {}: {}", path.string(), errno_text(err))};
      }
    }
    return home_lock{fd};
  }
  home_lock(home_lock&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  home_lock& operator=(home_lock&&) = delete;
  ~home_lock() {
    if (fd_ >= 0)
      close(fd_);
  }

private:
  explicit home_lock(int fd) : fd_(fd) {}
  int fd_;
};

// Can the server user traverse `dir`? A clone under root's home (mode 700) is not traversable by
// `postgres`, and we never loosen the permissions of someone's home to make it so.
bool reachable(const fs::path& dir, const server_user& user) {
  if (!user.via_runuser)
    return true;
  auto r = run(user, {"test", "-x", dir.string()});
  return r && r->status == 0;
}

// Creates `dir` owned by the server user with mode 700, or checks that an existing one is so: it
// may be in a world-writable temp dir, where someone else could have made it first.
result<void> make_private_dir(const fs::path& dir, const server_user& user) {
  if (mkdir(dir.c_str(), 0700) == 0) {
    if (user.via_runuser && chown(dir.c_str(), user.uid, user.gid) != 0)
      return error{errc::internal,
                   fmt::format("chown postgres {}: {}", dir.string(), errno_text(errno))};
    return {};
  }
  if (errno != EEXIST)
    return bad_input(fmt::format("cannot create {}: {}", dir.string(), errno_text(errno)));
  struct stat st {};
  if (lstat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    return bad_input(fmt::format("{} exists and is not a directory", dir.string()));
  if (st.st_uid != user.uid || (st.st_mode & 077) != 0)
    return bad_input(fmt::format("{} must be owned by uid {} with mode 700; refusing to use it",
                                 dir.string(), user.uid));
  return {};
}

// Where a home's cluster lives.
struct cluster_layout {
  fs::path home;
  fs::path base; ///< holds data, log and (usually) socket; created by mire
  fs::path data;
  fs::path log;
  fs::path socket;
};

// Finds (with `create`, decides and records) where the cluster of `home` lives: in home/postgres,
// or, when the server user cannot reach home, in a per-home dir under /var/tmp whose path is
// recorded in home/postgres.location so that later calls find it whatever happened since.
result<cluster_layout> locate(const fs::path& home, const server_user& user, int port,
                              bool create) {
  cluster_layout l;
  l.home = home;
  auto record = home / location_name;
  std::error_code ec;
  if (fs::exists(record, ec)) {
    std::ifstream in(record);
    std::string line;
    std::getline(in, line);
    if (line.empty() || line.front() != '/' || !quotable(line))
      return bad_input(fmt::format("{} does not hold a usable absolute path", record.string()));
    l.base = line;
  } else if (fs::exists(home / cluster_name, ec) || reachable(home, user)) {
    l.base = home / cluster_name;
  } else {
    l.base = fs::path(fallback_cluster_root) / home_key(home);
    if (create) {
      std::ofstream out(record);
      out << l.base.string() << '\n';
      out.close();
      if (!out)
        return bad_input(fmt::format("cannot write {}", record.string()));
    }
  }
  l.data = l.base / "data";
  l.log = l.base / "server.log";
  l.socket = l.base / "socket";
  auto socket_file = l.socket / fmt::format(".s.PGSQL.{}", port);
  if (!plain(l.socket.string()) || socket_file.string().size() >= max_socket_path)
    l.socket = fs::path(fallback_socket_root) / home_key(home);
  return l;
}

bool initialized(const cluster_layout& l) {
  std::error_code ec;
  return fs::exists(l.data / "PG_VERSION", ec);
}

// initdb into a staging dir renamed at the end: a data dir that exists is always complete, even
// after an initdb killed half-way.
result<void> init_cluster(const cluster_layout& l, const server_user& user, bool fsync) {
  auto staging = l.base / "data.initdb";
  std::error_code ec;
  fs::remove_all(staging, ec);
  std::vector<std::string> argv{pg_bin("initdb"), "-D",        staging.string(), "-U",
                                "postgres",       "-A",        "trust",          "-E",
                                "UTF8",           "--locale=C"};
  // Skipping the final sync saves seconds, at the price of a cluster a power cut could corrupt.
  if (!fsync)
    argv.push_back("--no-sync");
  if (auto r = run_checked(user, argv, errc::unavailable); !r)
    return r;
  fs::rename(staging, l.data, ec);
  if (ec)
    return error{errc::internal, fmt::format("rename {} to {}: {}", staging.string(),
                                             l.data.string(), ec.message())};
  return {};
}

result<void> start_server(const cluster_layout& l, const server_user& user,
                          const embedded_options& o) {
  // pg_ctl passes this string to /bin/sh; the socket dir is plain(), so nothing needs quoting.
  auto settings = fmt::format(
      // Bulk ingest writes WAL in large bursts: room for a 10,000-event COPY in the WAL buffers,
      // and no forced checkpoint in the middle of an ingest.
      "-k {} -p {} -c listen_addresses={} -c max_connections=200 -c shared_buffers=128MB "
      "-c wal_buffers=32MB -c max_wal_size=4GB",
      l.socket.string(), o.port, o.tcp ? "127.0.0.1" : "''");
  if (!o.fsync)
    settings += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off";
  std::vector<std::string> argv{
      pg_bin("pg_ctl"), "-D",   l.data.string(), "-l", l.log.string(), "-w", "-t", "30", "-o",
      settings,         "start"};
  auto r = run(user, argv);
  if (!r)
    return r.error();
  if (r->status != 0) {
    auto e = command_failed(errc::unavailable, argv, *r);
    e.message += fmt::format("\nlast lines of {}:\n{}", l.log.string(), log_tail(l.log));
    return e;
  }
  return {};
}

// The running postmaster, from its pid file: line 1 pid, 4 port, 5 first socket dir.
struct postmaster {
  int pid = 0;
  int port = 0;
  std::string socket_dir;
};

int to_int(std::string_view s) {
  int v = 0;
  std::from_chars(s.data(), s.data() + s.size(), v);
  return v;
}

// Whether process `pid` runs the postgres binary (Linux: /proc/PID/comm); true when that cannot
// be read, so that only a pid seen to be another program's is taken for stale.
bool runs_postgres(int pid) {
  std::ifstream comm("/proc/" + std::to_string(pid) + "/comm");
  std::string name;
  if (!comm || !std::getline(comm, name))
    return true;
  return name == "postgres";
}

std::optional<postmaster> live_postmaster(const cluster_layout& l) {
  const auto pid_file = l.data / "postmaster.pid";
  std::ifstream in(pid_file);
  if (!in)
    return std::nullopt;
  std::string lines[5];
  for (auto& line : lines)
    std::getline(in, line);
  postmaster pm{to_int(lines[0]), to_int(lines[3]), lines[4]};
  // A pid file without a live process is what a crashed server leaves behind.
  if (pm.pid <= 0 || (kill(pm.pid, 0) != 0 && errno != EPERM))
    return std::nullopt;
  // After a reboot or a container restart its pid may belong to another program now: the file
  // is stale, and Postgres would refuse to start beside it (the pid is alive), so it goes.
  if (!runs_postgres(pm.pid)) {
    std::error_code ec;
    fs::remove(pid_file, ec);
    return std::nullopt;
  }
  return pm;
}

std::string url_for(const std::string& socket_dir, int port) {
  return fmt::format("postgresql://postgres@/postgres?host={}&port={}", socket_dir, port);
}

// Deletes what start() created: the cluster dir, the socket dir, mire's files in home, and home
// itself once empty (start may have created it; anything of the caller's keeps it).
result<void> remove_cluster(const cluster_layout& l) {
  std::error_code ec;
  for (const auto& dir : {l.base, l.socket}) {
    fs::remove_all(dir, ec);
    if (ec)
      return error{errc::internal, fmt::format("remove {}: {}", dir.string(), ec.message())};
  }
  fs::remove(l.home / location_name, ec);
  fs::remove(l.home / lock_name, ec);
  rmdir(l.home.c_str());
  return {};
}

} // namespace

embedded_postgres::embedded_postgres(embedded_options o, std::string url, std::string data_dir)
    : options_(std::move(o)), url_(std::move(url)), data_dir_(std::move(data_dir)) {}

embedded_postgres::embedded_postgres(embedded_postgres&& other) noexcept
    : options_(std::move(other.options_)), url_(std::move(other.url_)),
      data_dir_(std::move(other.data_dir_)), active_(std::exchange(other.active_, false)) {}

embedded_postgres& embedded_postgres::operator=(embedded_postgres&& other) noexcept {
  if (this != &other) {
    if (active_ && options_.throwaway)
      (void)stop();
    options_ = std::move(other.options_);
    url_ = std::move(other.url_);
    data_dir_ = std::move(other.data_dir_);
    active_ = std::exchange(other.active_, false);
  }
  return *this;
}

embedded_postgres::~embedded_postgres() {
  if (active_ && options_.throwaway)
    (void)stop();
}

result<embedded_postgres> embedded_postgres::start(embedded_options o) {
  if (o.port < 1 || o.port > 65535)
    return bad_input(fmt::format("port {} is not in 1..65535", o.port));
  auto user = find_server_user();
  if (!user)
    return user.error();
  auto home = absolute_home(o.home);
  if (!home)
    return home.error();
  std::error_code ec;
  fs::create_directories(*home, ec);
  if (!fs::is_directory(*home))
    return bad_input(fmt::format("cannot create MIRE_HOME {}: {}", home->string(),
                                 ec ? ec.message() : "not a directory"));

  auto lock = home_lock::acquire(*home);
  if (!lock)
    return lock.error();
  auto l = locate(*home, *user, o.port, true);
  if (!l)
    return l.error();
  for (const auto& dir : {l->base, l->socket})
    if (auto r = make_private_dir(dir, *user); !r)
      return r.error();
  if (!initialized(*l))
    if (auto r = init_cluster(*l, *user, o.fsync); !r)
      return r.error();

  auto pm = live_postmaster(*l);
  if (!pm) {
    if (auto r = start_server(*l, *user, o); !r)
      return r.error();
    pm = live_postmaster(*l);
    if (!pm)
      return error{
          errc::unavailable,
          fmt::format("pg_ctl started {} but no postmaster is alive; last lines of {}:\n{}",
                      l->data.string(), l->log.string(), log_tail(l->log))};
  }
  o.home = home->string();
  // A server already running keeps the port and socket it was started with.
  return embedded_postgres{std::move(o), url_for(pm->socket_dir, pm->port), l->data.string()};
}

result<embedded_status> embedded_postgres::status(const embedded_options& o) {
  auto user = find_server_user();
  if (!user)
    return user.error();
  auto home = absolute_home(o.home);
  if (!home)
    return home.error();
  auto l = locate(*home, *user, o.port, false);
  if (!l)
    return l.error();
  embedded_status s;
  s.initialized = initialized(*l);
  s.data_dir = l->data.string();
  if (auto pm = live_postmaster(*l)) {
    s.running = true;
    s.pid = pm->pid;
    s.socket_dir = pm->socket_dir;
    s.url = url_for(pm->socket_dir, pm->port);
  } else {
    s.socket_dir = l->socket.string();
    s.url = url_for(s.socket_dir, o.port);
  }
  return s;
}

result<void> embedded_postgres::stop(const embedded_options& o) {
  auto user = find_server_user();
  if (!user)
    return user.error();
  auto home = absolute_home(o.home);
  if (!home)
    return home.error();
  if (!fs::is_directory(*home))
    return {}; // nothing was ever started here
  auto lock = home_lock::acquire(*home);
  if (!lock)
    return lock.error();
  auto l = locate(*home, *user, o.port, false);
  if (!l)
    return l.error();
  if (live_postmaster(*l))
    if (auto r = run_checked(*user,
                             {pg_bin("pg_ctl"), "-D", l->data.string(), "-m", "fast", "-w", "stop"},
                             errc::internal);
        !r)
      return r;
  return o.throwaway ? remove_cluster(*l) : result<void>{};
}

result<void> embedded_postgres::stop() {
  if (!std::exchange(active_, false))
    return {};
  return stop(options_);
}

} // namespace mire
