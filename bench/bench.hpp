// Benchmarks run by `mire bench NAME`: each figure printed beside a raw-libpq baseline measured on
// the same server in the same run, as a ratio (machines are shared and noisy; ratios travel).
#pragma once

#include <string>

#include "mire/config/config.hpp"

namespace mire::bench {

struct options {
  std::string url;     ///< database to benchmark on (the caller starts an embedded one if needed)
  bool json = false;   ///< one JSON object per figure instead of a table
  double scale = 1.0;  ///< multiplies the workload sizes (the tests run a tiny scale)
};

/// `mire bench store`. Returns a process exit code.
int run_store(const options& o);

/// `mire bench actors`: commands through aggregate actors on a runtime configured by `cfg` (its
/// store actor, aggregate and scheduler options), against one-INSERT-per-transaction raw libpq.
/// Returns an exit code.
int run_actors(const options& o, const config::settings& cfg);

/// `mire bench projections`: catch-up rate of a trivial projection against a raw sequential read,
/// live lag at a steady append rate, and takeover time after SIGKILL of the driving replica
/// (replicas are copies of `self_exe` started with MIRE_BENCH_REPLICA set). Returns an exit code.
int run_projections(const options& o, const std::string& self_exe);

/// The replica process of run_projections (when MIRE_BENCH_REPLICA names its id); returns an
/// exit code.
int run_projection_replica(const options& o, const std::string& schema, const std::string& id);

} // namespace mire::bench
