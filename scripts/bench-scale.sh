#!/usr/bin/env bash
# scripts/bench-scale.sh — one region's fleet at thousands of tenants (`make bench-scale`);
# figures, not tests.
#
#   scripts/bench-scale.sh [bench-scale arguments…]      # default: 2,000 tenants
#
# 2,000 tenants on one vsftpd (real accounts), the platform fake with 20 ms per API call, the
# machine's RabbitMQ and Redis: 3 scheduler replicas publish three midnight rounds; one worker
# runs all the time and the bench scales workers 1 → 4 on the queue's depth as the ScaledObject
# does. bench/src/bin/bench-scale.rs says what each figure is. Release build; root (accounts are
# Linux users). Bounded by `timeout`; about 15 minutes on 2 cores once built. A successful run's
# whole output is kept in docs/bench-scale-latest.txt.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT="$ROOT/docs/bench-scale-latest.txt"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

scripts/stack.sh up --no-fake >/dev/null
echo "== building (release)"
cargo build --release --locked -p bench --bin bench-scale
LOG=$(mktemp "${TMPDIR:-/tmp}/bench-scale.XXXXXX")
{
  echo "command: scripts/bench-scale.sh $*"
  echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with local changes)')"
  timeout 3600 "$TARGET/release/bench-scale" "$@"
} 2>&1 | tee "$LOG"
status=${PIPESTATUS[0]}
if [[ $status -eq 0 ]]; then
  cp "$LOG" "$OUT"
  echo "bench-scale: figures kept in ${OUT#"$ROOT"/}"
else
  echo "bench-scale: failed (exit $status); the output is in $LOG" >&2
fi
exit "$status"
