#!/usr/bin/env bash
# scripts/test.sh — the whole test suite, as CI runs it: the services the tests need (the local
# stack script installs and starts what is missing), formatting, lints, then every test. Each step
# prints its elapsed seconds, and the run ends with a table of them and the total.
#
# Build caches outside the clone (a fresh clone has no target/): unless CARGO_TARGET_DIR is set,
# the debug build goes to $USER_IMPORT_CACHE_DIR/target (default /var/cache/user-import/target), and
# scripts/image.sh keeps its musl release build in $USER_IMPORT_CACHE_DIR/image-target. Both survive
# between runs on the machine, so a run recompiles what changed, not the ~400 dependencies. Cargo's
# fingerprints decide what is stale, as in any target dir, and its lock makes two runs that share
# the dir wait for each other. USER_IMPORT_CACHE_DIR=none keeps the build in the clone's target/.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

CACHE_DIR=${USER_IMPORT_CACHE_DIR:-/var/cache/user-import}
if [[ $CACHE_DIR != none && -z ${CARGO_TARGET_DIR:-} ]]; then
  mkdir -p "$CACHE_DIR/target"
  export CARGO_TARGET_DIR=$CACHE_DIR/target
  # Incremental data is per crate path: every fresh clone would add gigabytes of it to the shared
  # cache, for a speed-up that only repeated edits in one clone get.
  export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
fi
echo "target dir: ${CARGO_TARGET_DIR:-$ROOT/target}"

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", b - a }'; }
T_START=$(now)
STEPS=()
# step NAME COMMAND...: runs the command, prints and records its elapsed time; a failure stops
# the run (set -e) after saying which step failed and after how long.
step() {
  local name=$1 t0 rc=0
  shift
  echo "== $name"
  t0=$(now)
  "$@" || rc=$?
  local took
  took=$(secs "$t0" "$(now)")
  STEPS+=("$(printf '%6s s  %s' "$took" "$name")")
  if ((rc != 0)); then
    echo "== $name: FAILED (exit $rc) after $took s; total $(secs "$T_START" "$(now)") s" >&2
    exit "$rc"
  fi
  echo "== $name: $took s"
}

services() {
  scripts/stack.sh up
  scripts/stack.sh status
}
# The long imports (docs/transports.md: 1,000 rows at 1 s per API call, past vsftpd's 300 s idle
# timeout, over FTPS and SFTP) take about 9 minutes of mostly waiting. They start in the background
# right after the services, so their wall time overlaps the other steps; the run waits for them
# at the end and fails if they failed. Their output goes to a file, shown at the end.
LONG_LOG=$(mktemp -t long-import.XXXXXX.log)
LONG_PID=
start_long_imports() {
  scripts/chaos.sh --only long-import >"$LONG_LOG" 2>&1 &
  LONG_PID=$!
  echo "long imports: pid $LONG_PID, output in $LONG_LOG"
}
wait_long_imports() {
  local rc=0
  wait "$LONG_PID" || rc=$?
  LONG_PID=
  sed -n '/^chaos: .* run, seed/,$p' "$LONG_LOG"
  if ((rc != 0)); then
    tail -n 60 "$LONG_LOG" >&2
  fi
  return "$rc"
}
# What this run's stack started is stopped when the run ends, pass or fail: a later run (another
# clone on this machine) must find the stack's ports free. A long-import run still going is
# stopped too (its own budget and cleanup handle SIGTERM).
cleanup() {
  if [[ -n $LONG_PID ]]; then kill "$LONG_PID" 2>/dev/null || true; wait "$LONG_PID" 2>/dev/null || true; fi
  scripts/stack.sh stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

step "services" services
step "long imports, started in the background" start_long_imports
step "cargo fmt --check" cargo fmt --all --check
step "cargo clippy" cargo clippy --workspace --all-targets --locked -- -D warnings
step "cargo test" cargo test --workspace --locked
step "chaos (short fault trials, docs/reliability.md)" scripts/chaos.sh --short
step "deploy check (manifests, Dockerfile)" scripts/deploy-check.sh
# Alert rules (promtool check + unit tests) and every metric they and the dashboard name, against
# the /metrics of a running worker and scheduler (deploy/monitoring/README.md).
step "monitoring check (alert rules, dashboard)" scripts/monitoring-check.sh
# The image CI ships: static binaries, built without an engine, smoke-run under runc as the
# image's non-root user with the pod's restrictions (scripts/image.sh says what it checks).
step "container image" scripts/image.sh
step "long imports (past vsftpd's idle timeout, FTPS and SFTP): waited for" wait_long_imports

echo "== times"
printf '%s\n' "${STEPS[@]}"
echo "test.sh: all steps passed in $(secs "$T_START" "$(now)") s"
