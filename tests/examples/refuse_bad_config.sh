#!/usr/bin/env bash
# An example given a bad option refuses to start, naming the option, before touching a database.
# usage: refuse_bad_config.sh EXAMPLE_BINARY
set -euo pipefail
example=$1
home=$(mktemp -d /tmp/mire-example.XXXXXX)
trap 'rm -rf "$home"' EXIT
export MIRE_HOME=$home
unset MIRE_DATABASE_URL
rc=0
out=$(timeout 60 "$example" --mire.store.workers=0 2>&1) || rc=$?
echo "$out"
if ((rc != 2)); then
  echo "FAIL: $(basename "$example") --mire.store.workers=0 exited $rc, expected 2 (bad input)"
  exit 1
fi
if ! grep -q -- "mire.store.workers" <<<"$out"; then
  echo "FAIL: the refusal does not name the option mire.store.workers"
  exit 1
fi
if [[ -n $(ls -A "$home") ]]; then
  echo "FAIL: a database was started before the configuration was checked"
  exit 1
fi
rc=0
out=$(MIRE_MAX_RETRIES=lots timeout 60 "$example" 2>&1) || rc=$?
echo "$out"
if ((rc != 2)) || ! grep -q -- "MIRE_MAX_RETRIES" <<<"$out"; then
  echo "FAIL: MIRE_MAX_RETRIES=lots was not refused naming its variable (exit $rc)"
  exit 1
fi
echo "ok: bad options refused"
