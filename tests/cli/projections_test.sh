#!/usr/bin/env bash
# End-to-end tests of `mire tail`, `mire projections`, `mire projection ...` and `mire leases`
# against the embedded database, with projection_driver (a small replica: projections "tally",
# poison events parked, and "halt", poison events stop it) doing the projection work.
# usage: projections_test.sh PATH/TO/mire PATH/TO/projection_driver
# Needs bash, coreutils and psql. Every wait is bounded; nothing asserts how long anything took.
set -uo pipefail

MIRE=$(realpath "${1:?usage: projections_test.sh PATH/TO/mire PATH/TO/projection_driver}")
DRIVER=$(realpath "${2:?usage: projections_test.sh PATH/TO/mire PATH/TO/projection_driver}")
unset MIRE_DATABASE_URL
MIRE_HOME=$(mktemp -d /tmp/mire-cli-proj-test.XXXXXX)
export MIRE_HOME
# As in cli_test.sh: the server may run as `postgres`, which must be able to enter the dir.
chmod 755 "$MIRE_HOME"
background=()
cleanup() {
  for pid in "${background[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${background[@]}"; do wait "$pid" 2>/dev/null; done
  "$MIRE" db stop >/dev/null 2>&1
  rm -rf "$MIRE_HOME"
}
trap cleanup EXIT

# fail, run, expect_rc, expect_in, field
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# eventually SECONDS WHAT COMMAND...: runs COMMAND every 0.2 s until it succeeds; a failure after
# SECONDS (a bound, not a measurement).
eventually() {
  local seconds=$1 what=$2
  shift 2
  local deadline=$(($(date +%s) + seconds))
  until "$@"; do
    if (($(date +%s) >= deadline)); then
      fail "$what: not so after ${seconds}s"
      return 1
    fi
    sleep 0.2
  done
}

# The event ids of JSON event lines, in order.
ids() { sed 's/.*"event_id":"\([^"]*\)".*/\1/' <<<"$1"; }

# Appends one event, failing the test when it cannot.
append() { # append STREAM TYPE
  run append "$1" --type "$2" --data '{"n":1}'
  expect_rc 0 "append $1 $2"
}

run db start
expect_rc 0 "db start"
run db url
url=$out

echo "== with no projection yet"
run projections
expect_rc 0 "projections"
[[ -z $out ]] || fail "projections with none printed: $out"
run --json projections
expect_rc 0 "projections --json"
[[ -z $out ]] || fail "projections --json with none printed: $out"
run leases
expect_rc 0 "leases"
[[ -z $out ]] || fail "leases with none printed: $out"
run projection rebuild nope --no-wait
expect_rc 1 "rebuild of an unknown projection"
expect_in "$err" "not_found" "rebuild of an unknown projection"
expect_in "$err" "'nope'" "rebuild of an unknown projection"
run --json projection rebuild nope
expect_rc 1 "rebuild --json of an unknown projection"
[[ $(field error "$out") == not_found ]] || fail "rebuild --json of an unknown projection: $out"
run projection reset nope --to start
expect_rc 1 "reset of an unknown projection"
expect_in "$err" "'nope'" "reset of an unknown projection"
for action in resume dead-letters; do
  run projection "$action" nope
  expect_rc 1 "projection $action of an unknown projection"
  expect_in "$err" "'nope'" "projection $action of an unknown projection"
done
run projection skip 12345
expect_rc 1 "skip of an unknown dead letter"
expect_in "$err" "12345" "skip of an unknown dead letter"

bad() { # bad NEEDLE ARGS...: mire ARGS must exit 2 with NEEDLE in its one-line message
  local needle=$1
  shift
  run "$@"
  expect_rc 2 "mire $*"
  expect_in "$err" "$needle" "message of mire $*"
  [[ $(wc -l <<<"$err") -eq 1 ]] || fail "mire $*: the error is not one line: $err"
}
bad "'banana'" projection reset nope --to banana
bad "--to" projection reset nope
bad "'Bad-Name'" projection resume Bad-Name
bad "'frob'" projection frob nope
bad "action" projection
bad "NAME" projection rebuild
bad "'0'" projection skip 0
bad "'x1'" projection retry x1
bad "'5'" projection rebuild nope --timeout 5
bad "'-1s'" projection rebuild nope --timeout -1s
bad "--no-wait" projection rebuild nope --no-wait --timeout 5s
bad "--to" projection resume nope --to start
bad "'extra'" projections extra
bad "'extra'" leases extra
bad "'nope'" tail --after nope
bad "'End'" read-all --after End
bad "'0'" tail --limit 0
bad "'a-b'" tail --category a-b
bad "'bad type'" tail --type 'bad type'
bad "'a,,b'" tail --type a,,b

echo "== tail: follows the log live, each event once, in checkpoint order"
append item-1 added
append other-1 added
append item-2 removed
# 3 events before the tails start, 5 after: item 5 of 8, type "added" 5 of 8.
timeout 60 "$MIRE" --json tail --category item --limit 5 >"$MIRE_HOME/tail_item" 2>&1 &
tail_item=$!
timeout 60 "$MIRE" --json tail --limit 8 >"$MIRE_HOME/tail_all" 2>&1 &
tail_all=$!
timeout 60 "$MIRE" tail --type added --limit 5 >"$MIRE_HOME/tail_added" 2>&1 &
tail_added=$!
background+=("$tail_item" "$tail_all" "$tail_added")
# Some appends while the tails are (probably) still reading what was there, some later.
append item-3 added
append other-2 added
has_lines() { [[ -f $1 && $(wc -l <"$1") -ge $2 ]]; }
eventually 30 "tail --limit 8 saw the first 5 events" has_lines "$MIRE_HOME/tail_all" 5
append item-1 added
append item-4 removed
append other-1 removed
for pid in "$tail_item" "$tail_all" "$tail_added"; do
  wait "$pid"
  rc=$?
  [[ $rc -eq 0 ]] || fail "a tail with --limit did not end by itself with exit 0 (exit $rc)"
done
background=()
run --json read-all --category item
[[ $(ids "$(cat "$MIRE_HOME/tail_item")") == "$(ids "$out")" ]] ||
  fail "tail --category item printed: $(cat "$MIRE_HOME/tail_item"); expected: $out"
[[ $(wc -l <"$MIRE_HOME/tail_item") -eq 5 ]] || fail "tail --category item --limit 5: not 5 lines"
run --json read-all
[[ $(ids "$(cat "$MIRE_HOME/tail_all")") == "$(ids "$out")" ]] ||
  fail "tail printed: $(cat "$MIRE_HOME/tail_all"); expected: $out"
[[ $(ids "$(cat "$MIRE_HOME/tail_all")" | sort | uniq -d) == "" ]] || fail "tail printed an event twice"
# Exactly read-all's lines (text form), restricted to the type.
run read-all
[[ $(cat "$MIRE_HOME/tail_added") == "$(awk -F'\t' '$4 == "added"' <<<"$out")" ]] ||
  fail "tail --type added printed: $(cat "$MIRE_HOME/tail_added")"
# --after continues after a checkpoint, as read-all does.
run --json read-all --limit 6
sixth=$(field checkpoint "$(tail -n 1 <<<"$out")")
run --json read-all --after "$sixth"
expected_rest=$(ids "$out")
run --json tail --after "$sixth" --limit 2
expect_rc 0 "tail --after"
[[ $(ids "$out") == "$expected_rest" ]] || fail "tail --after $sixth --limit 2: $out"

echo "== tail --after end: only events that come after it started"
run --json read-all
before=$(ids "$out")
timeout 60 "$MIRE" --json tail --after end --limit 1 >"$MIRE_HOME/tail_end" 2>&1 &
pid=$!
background+=("$pid")
# Appends until the tail prints one: whatever it prints must be newer than what was there.
for i in $(seq 1 100); do
  append "late-$i" added
  has_lines "$MIRE_HOME/tail_end" 1 && break
  sleep 0.1
done
wait "$pid"
rc=$?
background=()
printed=$(ids "$(cat "$MIRE_HOME/tail_end")")
[[ $rc -eq 0 && -n $printed && $printed == *-*-*-*-* ]] ||
  fail "tail --after end --limit 1 (exit $rc): $(cat "$MIRE_HOME/tail_end")"
[[ $before != *"$printed"* ]] || fail "tail --after end printed an event from before it started"
run --json read-all --after end
expect_rc 0 "read-all --after end"
[[ -z $out ]] || fail "read-all --after end printed: $out"

echo "== tail: SIGTERM and SIGINT end it with exit 0"
for signal in TERM INT; do
  timeout 60 "$MIRE" tail >"$MIRE_HOME/tail_sig" 2>&1 &
  pid=$!
  background+=("$pid")
  eventually 30 "tail printed the log before SIG$signal" has_lines "$MIRE_HOME/tail_sig" 8
  kill -"$signal" "$pid"
  wait "$pid"
  rc=$?
  background=()
  [[ $rc -eq 0 ]] || fail "tail ended by SIG$signal: exit $rc: $(cat "$MIRE_HOME/tail_sig")"
done

echo "== projections driven by a replica"
append item-5 poison
"$DRIVER" "$url" mire replica-a >"$MIRE_HOME/driver_a" 2>&1 &
driver_a=$!
background+=("$driver_a")
# tally: the 5 "added"/"removed" item events applied, the poison one parked; halt: stopped on it.
tally_caught_up() {
  run --json projections
  local line
  line=$(grep '"name":"tally"' <<<"$out")
  [[ $(field lag_events "$line") == 0 && $(field parked "$line") == 1 ]]
}
eventually 60 "tally caught up with one event parked" tally_caught_up
run projections
expect_rc 0 "projections"
tally=$(grep '^tally' <<<"$out")
halt=$(grep '^halt' <<<"$out")
IFS=$'\t' read -r name state owner tally_fence generation checkpoint applied lag lag_s parked rebuild \
  error <<<"$tally"
[[ $state == running && $owner == replica-a && $tally_fence =~ ^[1-9][0-9]*$ && $generation == 1 &&
   $checkpoint =~ ^[0-9]+:[0-9]+$ && $applied == 5 && $lag == 0 && $parked == 1 &&
   $rebuild == - && $error == - ]] || fail "projections line of tally: $tally"
[[ $(awk -F'\t' '{print NF}' <<<"$tally") -eq 12 ]] || fail "projections: not 12 fields: $tally"
IFS=$'\t' read -r name state owner _ _ _ _ _ _ _ _ error <<<"$halt"
[[ $state == stopped && $owner == replica-a && $error == *"refused by the handler"* ]] ||
  fail "projections line of halt: $halt"
run --json projections
line=$(grep '"name":"tally"' <<<"$out")
for f in name state last_error owner fence_token lease_held live_generation checkpoint \
  events_applied lag_events lag_seconds parked last_event_at updated_at rebuild_requested rebuild; do
  [[ $line == *"\"$f\":"* ]] || fail "projections --json: no field $f in $line"
done
[[ $(field owner "$line") == replica-a && $(field lease_held "$line") == true &&
   $(field rebuild "$line") == null ]] || fail "projections --json: $line"

run leases
expect_rc 0 "leases"
expect_in "$out" $'projection:tally\treplica-a\t' "leases"
[[ $(grep '^projection:tally' <<<"$out" | cut -f4) == yes ]] || fail "leases: tally not held: $out"
run --json leases
expect_in "$out" '{"resource":"projection:halt","owner":"replica-a",' "leases --json"

echo "== dead letters: list, skip, retry"
run projection dead-letters tally
expect_rc 0 "dead-letters"
[[ $(wc -l <<<"$out") -eq 1 ]] || fail "dead-letters: expected one: $out"
IFS=$'\t' read -r id status _ _ stream _ type _ reason <<<"$out"
[[ $status == parked && $stream == item-5 && $type == poison && $reason == *refused* ]] ||
  fail "dead-letters line: $out"
run --json projection dead-letters tally
[[ $(field id "$out") == "$id" && $(field type "$out") == poison &&
   $(field status "$out") == parked ]] || fail "dead-letters --json: $out"
run projection retry "$id"
expect_rc 0 "retry"
[[ $out == "queued dead letter $id for another try" ]] || fail "retry: $out"
# The handler still refuses it: parked again.
parked_again() {
  run --json projection dead-letters tally
  [[ $(field status "$out") == parked ]]
}
eventually 30 "the retried poison event parked again" parked_again
run --json projection skip "$id"
expect_rc 0 "skip"
[[ $out == "{\"id\":$id,\"status\":\"skipped\"}" ]] || fail "skip --json: $out"
run projection dead-letters tally
[[ $(cut -f2 <<<"$out") == skipped ]] || fail "dead-letters after skip: $out"
run projection skip "$id"
expect_rc 1 "skip of a dead letter skipped already"
run --json projections
[[ $(field parked "$(grep '"name":"tally"' <<<"$out")") == 0 ]] || fail "parked after skip: $out"

echo "== stopped projection: resume, rebuild refused, reset past the poison event, rebuild dropped"
run projection resume halt
expect_rc 0 "resume"
[[ $out == "resumed halt" ]] || fail "resume: $out"
halt_in() { # halt_in STATE: the state of halt is STATE (and, running, it has caught up)
  run --json projections
  local line
  line=$(grep '"name":"halt"' <<<"$out")
  [[ $(field state "$line") == "$1" && ($1 == stopped || $(field lag_events "$line") == 0) ]]
}
eventually 30 "halt stopped again on its poison event" halt_in stopped
# Stopped, it refuses a rebuild (it could not start one) and says what to do first.
run projection rebuild halt --no-wait
expect_rc 2 "rebuild of a stopped projection"
expect_in "$err" "halt is stopped" "rebuild of a stopped projection"
expect_in "$err" "resume or reset it" "rebuild of a stopped projection"
run --json read-all --category item
poison_cp=$(field checkpoint "$(grep '"type":"poison"' <<<"$out")")
run projection reset halt --to "$poison_cp"
expect_rc 0 "reset to a checkpoint"
[[ $out == "reset halt to $poison_cp" ]] || fail "reset: $out"
eventually 30 "halt running past its poison event" halt_in running
run --json projection reset halt --to "$poison_cp"
[[ $out == "{\"name\":\"halt\",\"checkpoint\":\"$poison_cp\",\"state\":\"running\"}" ]] ||
  fail "reset --json: $out"
# A rebuild reads the log from the start again and meets the poison event: under stop the
# rebuild is dropped, and halt goes on with its live read model.
run projection rebuild halt --timeout 60s
expect_rc 1 "rebuild of a projection that refuses an event on the way"
expect_in "$err" "the rebuild of halt was dropped" "rebuild that refuses an event"
expect_in "$err" "refused by the handler" "rebuild that refuses an event"
halt_in running || fail "halt is not running after its rebuild was dropped: $out"

echo "== rebuild: follows to the switch; the read model is complete"
run projection rebuild tally --timeout 60s
expect_rc 0 "rebuild tally"
[[ $(tail -n 1 <<<"$out") =~ ^rebuilt\ tally:\ generation\ 2\ is\ live\ \(5\ events\ applied, ]] ||
  fail "rebuild tally: $out"
rows=$(timeout 30 psql -X -A -t -d "$url" -c 'select count(*) from public.items' 2>&1)
[[ $rows == 5 ]] || fail "the rebuilt read model holds $rows rows, expected 5"
run --json projection rebuild tally --no-wait
expect_rc 0 "rebuild --no-wait"
[[ $out == '{"name":"tally","rebuild_requested":true}' ]] || fail "rebuild --no-wait --json: $out"
eventually 60 "the --no-wait rebuild went live" bash -c \
  "'$MIRE' --json projections | grep -q '\"name\":\"tally\",.*\"live_generation\":3,'"
run projection reset tally --to start
expect_rc 0 "reset to start"
[[ $out == "reset tally to 0:0" ]] || fail "reset --to start: $out"

echo "== no replica: rebuild says so and --timeout ends the wait"
kill -TERM "$driver_a"
wait "$driver_a"
background=()
run leases
[[ $(grep '^projection:tally' <<<"$out" | cut -f4) == no ]] || fail "lease of tally after release: $out"
run projection rebuild tally --timeout 4s
expect_rc 1 "rebuild with no replica"
expect_in "$out" "waiting for a replica to drive projection tally" "rebuild with no replica"
expect_in "$err" "timeout" "rebuild with no replica"
expect_in "$err" "4s" "rebuild with no replica"
# Another replica takes over; the rebuild asked for above completes under it.
"$DRIVER" "$url" mire replica-b >"$MIRE_HOME/driver_b" 2>&1 &
driver_b=$!
background+=("$driver_b")
run projection rebuild tally --timeout 60s
expect_rc 0 "rebuild under replica-b"
expect_in "$out" "rebuilt tally: generation" "rebuild under replica-b"
run leases
IFS=$'\t' read -r _ owner fence_b held _ <<<"$(grep '^projection:tally' <<<"$out")"
[[ $owner == replica-b && $held == yes && $fence_b -gt $tally_fence ]] ||
  fail "leases after the takeover (fence before $tally_fence): $out"

if ((failures > 0)); then
  echo "$failures check(s) failed" >&2
  exit 1
fi
echo "all mire tail/projection checks passed"
