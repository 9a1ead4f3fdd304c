// A PostgreSQL server owned by mire: created under MIRE_HOME on first use, started on demand,
// reused while it runs. Also the throwaway servers of the tests.
#pragma once

#include <string>

#include "mire/store/error.hpp"

namespace mire {

/// Where the server lives and how it runs.
struct embedded_options {
  std::string home;       ///< MIRE_HOME; the caller picks the default ("./.mire")
  int port = 5432;        ///< names the unix socket file; a TCP port only when `tcp`
  bool tcp = false;       ///< also listen on 127.0.0.1:port
  bool fsync = true;      ///< false for throwaway test servers: fast, not crash-safe
  bool throwaway = false; ///< stop() also deletes the cluster and everything start() created
};

/// What status() found. Paths and url are where the server is (or would be).
struct embedded_status {
  bool initialized = false; ///< a complete cluster exists
  bool running = false;     ///< its postmaster is alive
  std::string data_dir;
  std::string socket_dir;
  std::string url; ///< libpq URL of the running server, or of where it would listen
  int pid = 0;     ///< postmaster pid; 0 when not running
};

/// Handle to a started server. Files live in MIRE_HOME, or, when the `postgres` user (used when
/// running as root) cannot reach MIRE_HOME, under /var/tmp with their location recorded in
/// MIRE_HOME. Movable, not copyable; the destructor stops nothing unless the server is throwaway.
class embedded_postgres {
public:
  /// Creates the cluster if needed and starts it unless it already runs (then it is reused).
  /// bad_input for an unusable home; unavailable when the server does not start.
  static result<embedded_postgres> start(embedded_options o);

  /// Looks at the cluster of `o.home` without creating or starting anything.
  static result<embedded_status> status(const embedded_options& o);

  /// Fast shutdown; fine when nothing runs. With `o.throwaway`, also deletes the cluster.
  static result<void> stop(const embedded_options& o);

  /// libpq URL, e.g. postgresql://postgres@/postgres?host=SOCKDIR&port=5432 (psql accepts it).
  const std::string& url() const { return url_; }
  const std::string& data_dir() const { return data_dir_; }

  /// Stops the server (and, if throwaway, deletes its files); later calls do nothing.
  result<void> stop();

  embedded_postgres(embedded_postgres&& other) noexcept;
  embedded_postgres& operator=(embedded_postgres&& other) noexcept;
  embedded_postgres(const embedded_postgres&) = delete;
  embedded_postgres& operator=(const embedded_postgres&) = delete;
  /// Throwaway servers are stopped and removed here, best effort; others keep running.
  ~embedded_postgres();

private:
  embedded_postgres(embedded_options o, std::string url, std::string data_dir);

  embedded_options options_; ///< with `home` made absolute, so stop() works after a chdir
  std::string url_;
  std::string data_dir_;
  bool active_ = true; ///< false once stopped or moved from
};

} // namespace mire
