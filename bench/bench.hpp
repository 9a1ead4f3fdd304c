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

} // namespace mire::bench
