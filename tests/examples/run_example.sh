#!/usr/bin/env bash
# Runs one example program against a throwaway embedded Postgres and checks its output.
# usage: run_example.sh MIRE_BINARY EXAMPLE_BINARY EXPECTED_REGEX...
set -euo pipefail
mire=$1 example=$2
shift 2
home=$(mktemp -d /tmp/mire-example.XXXXXX)
chmod 755 "$home"  # so the postgres user can keep the cluster inside it
cleanup() { MIRE_HOME=$home "$mire" db stop >/dev/null 2>&1 || true; rm -rf "$home"; }
trap cleanup EXIT
export MIRE_HOME=$home
unset MIRE_DATABASE_URL
rc=0
out=$(timeout 300 "$example" 2>&1) || rc=$?
if ((rc != 0)); then
  echo "$out"
  echo "FAIL: $(basename "$example") exited $rc"
  exit 1
fi
echo "$out"
for pattern in "$@"; do
  if ! grep -Eq -- "$pattern" <<<"$out"; then
    echo "FAIL: output of $(basename "$example") lacks /$pattern/"
    exit 1
  fi
done
echo "ok: $(basename "$example")"
