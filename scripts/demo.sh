#!/usr/bin/env bash
# scripts/demo.sh — the main job, locally: bring the stack up, put the demo tenant's file on its
# FTPS account, run the worker's whole pipeline for it (`worker once --tenant demo`), run it again
# to show the unchanged file being skipped, and say where to look at the result.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

scripts/stack.sh up
eval "$(scripts/stack.sh env)"

echo "demo: building the worker"
cargo build -q -p worker
WORKER="${CARGO_TARGET_DIR:-$ROOT/target}/debug/worker"

HOME_DIR=/srv/user-import-ftp/demo
mkdir -p .stack/work
# The demo always imports: clear the markers of earlier demo runs (this is exactly what a tenant
# does to force a re-import).
rm -f "$HOME_DIR"/tmp/*.sha1
install -o demo -g demo -m 0644 config/demo/user-import.csv "$HOME_DIR/uploads/user-import.csv"

export USER_IMPORT_CONFIG=config/worker.local.toml
echo
echo "demo: first run (a new file: users are created or updated)"
set +e
"$WORKER" once --tenant demo
first=$?
echo
echo "demo: second run (the same file: skipped, no API call)"
"$WORKER" once --tenant demo
second=$?
set -e

latest_mail=$(ls -t .stack/mail/new/* 2>/dev/null | head -n 1 || true)
cat <<EOT

demo: done. Where to look:
  the tenant's progress log   $HOME_DIR/log/user-import.log
  the per-record reports      $HOME_DIR/reports/
  the SHA1 markers            $HOME_DIR/tmp/
  the email to the admin      ${latest_mail:-.stack/mail/new/ (no message found!)}
  the users on the platform   curl -s http://127.0.0.1:${UI_FAKE_PORT:-8089}/_fake/tenants/demo.learning-admin.com/users
  stop the stack              scripts/stack.sh stop

--- tail of the tenant log ---
EOT
tail -n 14 "$HOME_DIR/log/user-import.log"
[[ $first -eq 0 && $second -eq 0 ]]
