#!/usr/bin/env bash
# Each `mire bench` runs to the end at a tiny scale and prints every figure it promises (with a
# baseline measured in the same run). Figures are not judged here: timing belongs to the benches.
# usage: bench_smoke_test.sh PATH/TO/mire
set -uo pipefail

MIRE=$(realpath "${1:?usage: bench_smoke_test.sh PATH/TO/mire}")
unset MIRE_DATABASE_URL
MIRE_HOME=$(mktemp -d /tmp/mire-bench-smoke.XXXXXX)
export MIRE_HOME
chmod 755 "$MIRE_HOME" # the server may run as `postgres`
cleanup() {
  "$MIRE" db stop >/dev/null 2>&1
  rm -rf "$MIRE_HOME"
}
trap cleanup EXIT

# fail, run, expect_rc, expect_in, field
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

smoke() { # smoke BENCH FIGURE...
  local bench=$1
  shift
  out=$(timeout 240 "$MIRE" --json bench "$bench" --scale 0.01 2>"$MIRE_HOME/stderr")
  rc=$?
  err=$(cat "$MIRE_HOME/stderr")
  expect_rc 0 "bench $bench"
  for figure in "$@"; do
    line=$(grep "\"name\":\"$figure\"" <<<"$out")
    [[ -n $line ]] || fail "bench $bench: no figure $figure in: $out"
    [[ $(field baseline "$line") =~ ^[0-9.e+-]+$ ]] ||
      fail "bench $bench: figure $figure has no baseline: $line"
  done
}

smoke store append_single_1w append_single_8w append_batch_vs_copy read_all
smoke actors actors_16_senders actors_1_sender ceiling_16_senders latency_p99_16 latency_p99_1
smoke projections catch_up live_lag_p99 takeover

if ((failures > 0)); then
  echo "$failures check(s) failed" >&2
  exit 1
fi
echo "bench smoke: all checks passed"
