// What `mire bench store` and `mire bench actors` share: the failure that ends a run, the raw
// libpq connection of the baselines, the figures and their table and JSON output, and the run
// scaffolding (threads started together, the bench schema dropped at the end).
#pragma once

#include <libpq-fe.h>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "bench.hpp"
#include "mire/store/error.hpp"

namespace mire::bench::detail {

using steady = std::chrono::steady_clock;

inline double seconds_since(steady::time_point t0) {
  return std::chrono::duration<double>(steady::now() - t0).count();
}

/// A failure that ends the benchmark, with the exit code of the `mire` command.
struct failure : std::runtime_error {
  int code;
  failure(int c, const std::string& what) : std::runtime_error(what), code(c) {}
};

template <class T> T must(result<T> r, std::string_view doing) {
  if (!r)
    throw failure(exit_code(r.error().code), fmt::format("{}: {}", doing, r.error().what()));
  if constexpr (!std::is_void_v<T>)
    return std::move(*r);
}

// --- raw libpq, for the baselines ------------------------------------------------------------

using pg_result = std::unique_ptr<PGresult, decltype(&PQclear)>;

class raw_conn {
public:
  explicit raw_conn(const std::string& url);
  ~raw_conn();
  raw_conn(const raw_conn&) = delete;
  raw_conn& operator=(const raw_conn&) = delete;

  PGconn* get() const { return c_; }

  pg_result check(PGresult* r, std::string_view doing) const;
  pg_result exec(const std::string& sql);
  void prepare(const std::string& name, const std::string& sql, int nparams);
  pg_result run(const std::string& name, const std::vector<const char*>& values);
  void copy_in(const std::string& sql, std::string_view data);

private:
  PGconn* c_ = nullptr;
};

std::string quote_ident(std::string_view name);

/// "PostgreSQL <version>, fsync=<..>, synchronous_commit=<..>, scale <scale>", from `c`'s server.
std::string server_text(raw_conn& c, double scale);

/// Drops the benchmark's schema when the run ends, however it ends.
struct schema_guard {
  std::string url, schema;
  ~schema_guard();
};

// --- figures ------------------------------------------------------------------------------------

struct figure {
  std::string name;
  double mire = 0;
  double baseline = 0;
  std::string unit;
  double ratio = 0;
  std::optional<double> target; // a bound on the ratio; none: informational
  bool at_most = false;         // the target is an upper bound on the ratio
  std::string about;

  bool pass() const { return !target || (at_most ? ratio <= *target : ratio >= *target); }
  std::string target_text() const {
    return target ? fmt::format("{} {:g}x", at_most ? "<=" : ">=", *target) : "-";
  }
};

figure make_figure(std::string name, double mire, double baseline, std::string unit, bool at_most,
                   std::optional<double> target, std::string about);

double median(std::vector<double> v);
/// The value below which a fraction `p` (0..1) of `v` lies; 0 for none.
double percentile(std::vector<double> v, double p);

/// Runs `n` threads, each calling `body(i)` after all of them are ready (set up by `setup(i)`);
/// returns the seconds from the common start to the last finish. The first failure is rethrown.
double run_threads(int n, const std::function<void(int)>& setup,
                   const std::function<void(int)>& body);
inline double run_threads(int n, const std::function<void(int)>& body) {
  return run_threads(n, [](int) {}, body);
}

/// The figures as a table headed "mire bench <bench>  (<server>)".
void print_table(std::string_view bench, const std::vector<figure>& figures,
                 const std::string& server);
/// The figures as one JSON object per line.
void print_json(const std::vector<figure>& figures);

/// Runs `body` (which measures into `figures` and sets `server`), turning a failure into an exit
/// code reported as "mire bench <bench>: ..."; then prints what was measured, even when a later
/// part failed. Returns the exit code.
int measure(std::string_view bench, const options& o, std::vector<figure>& figures,
            const std::string& server, const std::function<void()>& body);

} // namespace mire::bench::detail
