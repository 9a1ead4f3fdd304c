#!/usr/bin/env bash
# End-to-end tests of the `mire` command against its embedded database: the contract of README.md
# and of `mire help`, as a script would use it.
# usage: cli_test.sh PATH/TO/mire
# Needs bash, coreutils and psql only (JSON fields are read with sed: mire prints compact JSON with
# a fixed key order).
set -uo pipefail

MIRE=$(realpath "${1:?usage: cli_test.sh PATH/TO/mire}")
unset MIRE_DATABASE_URL
MIRE_HOME=$(mktemp -d /tmp/mire-cli-test.XXXXXX)
export MIRE_HOME
# mktemp makes the dir private; as root the server runs as `postgres`, which could not enter it and
# mire would put the cluster under /var/tmp instead, out of reach of the cleanup below.
chmod 755 "$MIRE_HOME"
cleanup() {
  "$MIRE" db stop >/dev/null 2>&1
  rm -rf "$MIRE_HOME"
}
trap cleanup EXIT

# fail, run, expect_rc, expect_in, field
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

echo "== help and version"
run --help
expect_rc 0 "--help"
expect_in "$out" "usage: mire" "--help"
expect_in "$out" "exit codes:" "--help"
run help
expect_rc 0 "help"
expect_in "$out" "read-all [--after CHECKPOINT]" "help"
# The commands of tests/cli/projections_test.sh are documented too.
for usage in "tail [--after CHECKPOINT|end]" "projections " "projection rebuild NAME" \
  "projection reset NAME --to CHECKPOINT|start" "projection resume NAME" \
  "projection dead-letters NAME" "projection skip ID" "projection retry ID" "leases "; do
  expect_in "$out" "$usage" "help"
done
run --version
expect_rc 0 "--version"
expect_in "$out" "mire " "--version"
# Help answers even when the configuration is broken (the rest refuses to start).
MIRE_STORE_WORKERS=0 run --help
expect_rc 0 "--help with a broken configuration"
expect_in "$out" "usage: mire" "--help with a broken configuration"

echo "== db start, status, url"
run db start
expect_rc 0 "db start"
expect_in "$out" "running: yes" "db start"
run db status
expect_rc 0 "db status"
expect_in "$out" "running: yes" "db status"
expect_in "$out" "data_dir: " "db status"
run --json db status
expect_rc 0 "db status --json"
[[ $(field running "$out") == true ]] || fail "db status --json: not running: $out"
run db url
expect_rc 0 "db url"
url=$out
psql_out=$(timeout 30 psql -X -A -t -d "$url" -c 'select 1' 2>&1)
[[ $psql_out == 1 ]] || fail "psql -d \"\$(mire db url)\" -c 'select 1' printed: $psql_out"

echo "== migrate"
run migrate
expect_rc 0 "first migrate"
[[ $out =~ ^applied\ [1-9][0-9]*\ migrations$ ]] || fail "first migrate: $out"
run migrate
expect_rc 0 "second migrate"
[[ $out == "applied 0 migrations" ]] || fail "second migrate: $out"
run --json migrate
[[ $out == '{"applied":0}' ]] || fail "migrate --json: $out"

echo "== append"
run append account-1 --type account.opened --data '{"owner":"Ada"}' --metadata '{"by":"test"}'
expect_rc 0 "append without expected version"
[[ $out =~ ^version\ 1\ position\ [0-9]+$ ]] || fail "append: $out"
run append account-1 --type account.deposited --data '{"amount":100}' --expected-version 1
expect_rc 0 "append expecting version 1"
[[ $out =~ ^version\ 2\ position\ [0-9]+$ ]] || fail "append expecting 1: $out"
run --json append account-2 --type account.opened --data '{"owner":"Bob"}' --expected-version no-stream
expect_rc 0 "append expecting no stream"
[[ $(field stream_id "$out") == account-2 && $(field version "$out") == 1 &&
   $(field duplicate "$out") == false ]] || fail "append --json: $out"
position=$(field global_position "$out")
[[ $position =~ ^[0-9]+$ ]] || fail "append --json: no global_position: $out"

run append account-1 --type account.deposited --data '{"amount":1}' --expected-version 1
expect_rc 3 "append with a stale expected version"
expect_in "$err" "version_conflict" "stale expected version"
run --json append account-1 --type account.deposited --data '{"amount":1}' --expected-version no-stream
expect_rc 3 "append --json with a stale expected version"
[[ $(field error "$out") == version_conflict && $(field actual "$out") == 2 ]] ||
  fail "conflict --json: $out"

echo "== read"
run read account-1
expect_rc 0 "read"
[[ $(wc -l <<<"$out") -eq 2 ]] || fail "read account-1: expected 2 lines: $out"
expect_in "$out" $'\taccount-1\t2\taccount.deposited\t' "read text form"
run --json read account-1 --from 2
expect_rc 0 "read --json --from 2"
[[ $(wc -l <<<"$out") -eq 1 && $(field version "$out") == 2 ]] || fail "read --from 2: $out"
run --json read account-1
first=$(head -n 1 <<<"$out")
for f in stream_id version type data metadata event_id global_position recorded_at checkpoint; do
  [[ $first == *"\"$f\":"* ]] || fail "read --json: no field $f in $first"
done
expect_in "$first" '"data":{"owner":"Ada"}' "read --json: data is JSON"
expect_in "$first" '"metadata":{"by":"test"}' "read --json: metadata is JSON"
run read no-such-stream
expect_rc 0 "read of an empty stream"
[[ -z $out ]] || fail "read of an empty stream printed: $out"

echo "== read-all and the checkpoint loop"
for i in 1 2 3 4 5 6 7; do
  run append "loop-$((i % 3))" --type loop.ticked --data "{\"i\":$i}"
  expect_rc 0 "append loop event $i"
done
# A reader that always passes back the last checkpoint sees every event once. Checked for one
# category and for the whole log.
for category in loop ""; do
  args=(--json read-all)
  [[ -n $category ]] && args+=(--category "$category")
  run "${args[@]}"
  expect_rc 0 "read-all ${args[*]}"
  expected_ids=$(sed 's/.*"event_id":"\([^"]*\)".*/\1/' <<<"$out")
  seen_ids=""
  after=""
  for _ in $(seq 1 50); do
    if [[ -n $after ]]; then run "${args[@]}" --limit 2 --after "$after"; else run "${args[@]}" --limit 2; fi
    expect_rc 0 "read-all --limit 2 --after '$after'"
    [[ -z $out ]] && break
    [[ $(wc -l <<<"$out") -le 2 ]] || fail "read-all --limit 2 printed more than 2 events"
    seen_ids+=$(sed 's/.*"event_id":"\([^"]*\)".*/\1/' <<<"$out")$'\n'
    after=$(field checkpoint "$(tail -n 1 <<<"$out")")
  done
  seen_ids=$(sed '/^$/d' <<<"$seen_ids")
  [[ $seen_ids == "$expected_ids" ]] ||
    fail "checkpoint loop (category '$category') saw: $seen_ids; expected: $expected_ids"
  [[ $(sort <<<"$seen_ids" | uniq -d) == "" ]] || fail "checkpoint loop saw an event twice"
done
[[ $(wc -l <<<"$expected_ids") -eq 10 ]] || fail "the whole log should hold 10 events: $expected_ids"
run read-all --category loop
[[ $(wc -l <<<"$out") -eq 7 ]] || fail "read-all --category loop: expected 7 lines: $out"
run read-all --limit 3
[[ $(wc -l <<<"$out") -eq 3 ]] || fail "read-all --limit 3: expected 3 lines: $out"

echo "== streams"
run streams
expect_rc 0 "streams"
expect_in "$out" $'account-1\t2\t' "streams"
expect_in "$out" $'loop-1\t3\t' "streams"
run --json streams --category account
expect_rc 0 "streams --category account"
[[ $(wc -l <<<"$out") -eq 2 && $out != *loop* ]] || fail "streams --category account: $out"
expect_in "$out" '{"stream_id":"account-1","version":2,' "streams --json"

echo "== demo"
run demo
expect_rc 0 "demo"
expect_in "$out" "owner Ada, balance 70, version 3" "demo shows the replayed state"
expect_in "$out" "summary: 3 events stored in account-" "demo summary"
expect_in "$out" "invariant: holds" "demo: the actor run's invariant, checked on a replay of the log"
demo_stream=$(sed -n 's/^summary: 3 events stored in \(account-[0-9a-f]*\),.*/\1/p' <<<"$out")
run read "$demo_stream"
[[ $(wc -l <<<"$out") -eq 3 ]] || fail "the demo's stream $demo_stream should hold 3 events: $out"
run --json demo
expect_rc 0 "demo run again"
expect_in "$out" '"state":{"owner":"Ada","balance":70}' "demo --json"
[[ $(field stream_id "$out") != "$demo_stream" ]] || fail "a second demo reused $demo_stream"

echo "== bad input: exit 2, the value named, nothing changed"
run read account-1
stream_before=$out
run read-all
log_before=$out
bad() { # bad NEEDLE ARGS...: mire ARGS must exit 2 with NEEDLE in its message
  local needle=$1
  shift
  run "$@"
  expect_rc 2 "mire $*"
  expect_in "$err" "$needle" "message of mire $*"
  [[ $(wc -l <<<"$err") -eq 1 ]] || fail "mire $*: the error is not one line: $err"
}
bad "'banana'" append account-1 --type t --data '{}' --expected-version banana
bad "'-2'" append account-1 --type t --data '{}' --expected-version -2
bad "'{\"amount\":'" append account-1 --type t --data '{"amount":'
bad "'[1]'" append account-1 --type t --data '{}' --metadata '[1]'
bad "'a\\x01b'" append $'a\x01b' --type t --data '{}'
bad "'not-a-uuid'" append account-1 --type t --data '{}' --event-id not-a-uuid
bad "--event-id is empty" append account-1 --type t --data '{}' --event-id ""
bad "'bad type'" append account-1 --type 'bad type' --data '{}'
bad "'frobnicate'" frobnicate
bad "--type" append account-1 --data '{}'
bad "--data" append account-1 --type t
bad "STREAM" append --type t --data '{}'
bad "'--bogus'" read account-1 --bogus
bad "'0'" read-all --limit 0
bad "'-1'" read-all --limit -1
bad "'ten'" read-all --limit ten
bad "'nope'" read-all --after nope
bad "'a-b'" streams --category a-b
bad "'0'" read account-1 --from 0
bad "'0'" bench store --scale 0
bad "'a,'" tail --type a,
bad "--db: the database URL is not one libpq accepts" --db 'host=localhost port' streams
MIRE_PASSIVATE_AFTER=500us bad "got 500us (from env MIRE_PASSIVATE_AFTER)" config
run --json append account-1 --type t --data '{}' --expected-version banana
expect_rc 2 "bad input with --json"
[[ $(field error "$out") == bad_input ]] || fail "bad input --json: $out"
expect_in "$(field message "$out")" "banana" "bad input --json message"
run read account-1
[[ $out == "$stream_before" ]] || fail "bad input changed account-1: $out"
run read-all
[[ $out == "$log_before" ]] || fail "bad input changed the log"

echo "== idempotent append"
id=5b1c7a52-9f0e-4c1a-8d2b-3e4f5a6b7c8d
run append idem-1 --type t --data '{"n":1}' --event-id "$id"
expect_rc 0 "first append with an event id"
first=$out
run --json append idem-1 --type t --data '{"n":1}' --event-id "$id"
expect_rc 0 "repeated append with the same event id"
[[ $first == "version 1 position $(field global_position "$out")" ]] ||
  fail "the retry reports another position: $first / $out"
[[ $(field duplicate "$out") == true ]] || fail "the retry is not marked duplicate: $out"
run read idem-1
[[ $(wc -l <<<"$out") -eq 1 ]] || fail "idem-1 should hold one event: $out"

echo "== database unavailable"
run db url
url=$out
run db stop
expect_rc 0 "db stop"
run db status
expect_in "$out" "running: no" "db status after stop"
start=$(date +%s)
run --db "$url" read account-1
elapsed=$(($(date +%s) - start))
expect_rc 4 "read from a stopped database"
expect_in "$err" "unavailable" "read from a stopped database"
((elapsed <= 10)) || fail "read from a stopped database took ${elapsed}s"
run --json --db "$url" read account-1
[[ $rc -eq 4 && $(field error "$out") == unavailable ]] || fail "unavailable --json: $rc $out"
# Without --db the embedded database starts again on demand, with every event still there.
run read account-1
expect_rc 0 "read after restart on demand"
[[ $out == "$stream_before" ]] || fail "account-1 after restart: $out"

if ((failures > 0)); then
  echo "$failures check(s) failed" >&2
  exit 1
fi
echo "all mire command checks passed"
