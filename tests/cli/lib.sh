# Helpers of the shell tests of `mire` (sourced by cli_test.sh and projections_test.sh). They need
# $MIRE (the binary) and $MIRE_HOME (a directory of the test's own) to be set.

failures=0
fail() {
  echo "FAIL: $*" >&2
  failures=$((failures + 1))
}

# run ARGS...: runs mire (bounded in time), leaving $out, $err and $rc.
run() {
  out=$(timeout 60 "$MIRE" "$@" 2>"$MIRE_HOME/stderr")
  rc=$?
  err=$(cat "$MIRE_HOME/stderr")
}

expect_rc() { # expect_rc CODE WHAT
  [[ $rc -eq $1 ]] || fail "$2: exit $rc, expected $1 (stdout: $out; stderr: $err)"
}

expect_in() { # expect_in TEXT NEEDLE WHAT
  [[ "$1" == *"$2"* ]] || fail "$3: '$2' not in: $1"
}

# field NAME JSON_LINE: the value of a top-level field (a string without its quotes).
field() {
  sed -n "s/.*\"$1\":\(\"[^\"]*\"\|[^,}]*\).*/\1/p" <<<"$2" | sed 's/^"\(.*\)"$/\1/'
}
