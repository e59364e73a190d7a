#!/usr/bin/env bash
# scripts/bench-fleet.sh — the fleet benchmarks (`make bench-fleet`); figures, not tests.
#
#   scripts/bench-fleet.sh [bench-fleet arguments…]
#
# 1. publish + confirm of 10,000 tenant jobs by `scheduler once` (claims in Redis, persistent
#    publishes with confirms and the mandatory flag, commits);
# 2. publish -> pipeline start latency, p50/p90/p99, on an idle fleet (one worker, 200 jobs);
# 3. throughput of 200 tenants x 20 new rows against the platform fake with 20 ms per API call,
#    with 1, 2 and 4 workers.
# Every figure comes from bench/src/bin/bench-fleet.rs (its header says exactly what is timed),
# built in release mode, against the machine's RabbitMQ and Redis (started by scripts/stack.sh
# when missing), a vsftpd and an SMTP sink of its own on free ports, and the fake in-process.
# Loopback only; bounded by `timeout`; about 3 to 5 minutes on 2 cores once built. A successful
# run's whole output is kept in docs/bench-fleet-latest.txt.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT="$ROOT/docs/bench-fleet-latest.txt"

scripts/stack.sh up --no-fake >/dev/null
echo "== building (release)"
cargo build --release --locked -p bench --bin bench-fleet -p worker -p scheduler
TARGET=$(cargo metadata --format-version 1 --no-deps | /usr/bin/python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
LOG=$(mktemp "${TMPDIR:-/tmp}/bench-fleet.XXXXXX")
{
  echo "command: scripts/bench-fleet.sh $*"
  echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with local changes)')"
  timeout 1200 "$TARGET/release/bench-fleet" "$@"
} 2>&1 | tee "$LOG"
status=${PIPESTATUS[0]}
if [[ $status -eq 0 ]]; then
  mkdir -p "$(dirname "$OUT")"
  cp "$LOG" "$OUT"
  echo "bench-fleet: figures kept in ${OUT#"$ROOT"/}"
else
  echo "bench-fleet: failed (exit $status); the output is in $LOG" >&2
fi
exit "$status"
