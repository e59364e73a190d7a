#!/usr/bin/env bash
# scripts/demo.sh — the main job, locally, over both transports: bring the stack up, put the demo
# file on the account of the FTPS demo tenant (`demo`, on vsftpd) and of the SFTP demo tenant
# (`demo-sftp`, on the stack's sshd, its host key pinned in the stack's registry), run the worker's
# whole pipeline for each (`worker once --tenant …`), run each again to show the unchanged file
# being skipped, and say where to look at the result.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

scripts/stack.sh up
eval "$(scripts/stack.sh env)"

echo "demo: building the worker"
cargo build -q -p worker
WORKER="${CARGO_TARGET_DIR:-$ROOT/target}/debug/worker"

mkdir -p .stack/work
export USER_IMPORT_CONFIG=config/worker.local.toml
# The stack's registry (the example's, plus the SFTP tenant and its pinned host key) and ports.
export USER_IMPORT__REGISTRY__FILE="$UI_REGISTRY_FILE"
export USER_IMPORT__SMTP__PORT="$UI_SMTP_PORT"

# tenant → its account's root on disk
declare -A HOMES=([demo]="$UI_DEMO_HOME" [demo-sftp]="$UI_SFTP_HOME")
TENANTS=(demo demo-sftp)

for tenant in "${TENANTS[@]}"; do
  home=${HOMES[$tenant]}
  # The demo always imports: clear the markers of earlier demo runs (this is exactly what a
  # tenant does to force a re-import).
  rm -f "$home"/tmp/*.sha1
  install -o "$tenant" -g "$tenant" -m 0644 config/demo/user-import.csv "$home/uploads/user-import.csv"
done

declare -A FIRST SECOND
set +e
for tenant in "${TENANTS[@]}"; do
  echo
  echo "demo: $tenant: first run (a new file: users are created or updated)"
  "$WORKER" once --tenant "$tenant"
  FIRST[$tenant]=$?
done
for tenant in "${TENANTS[@]}"; do
  echo
  echo "demo: $tenant: second run (the same file: skipped, no API call)"
  "$WORKER" once --tenant "$tenant"
  SECOND[$tenant]=$?
done
set -e

latest_mail=$(ls -t .stack/mail/new/* 2>/dev/null | head -n 1 || true)
mails=".stack/mail/new/ (no message found!)"
[[ -n $latest_mail ]] && mails=".stack/mail/new/ (latest: $latest_mail)"
cat <<EOT

demo: done. Where to look (FTPS tenant demo, SFTP tenant demo-sftp):
  the tenants' progress logs  $UI_DEMO_HOME/log/user-import.log
                              $UI_SFTP_HOME/log/user-import.log
  the per-record reports      $UI_DEMO_HOME/reports/  $UI_SFTP_HOME/reports/
  the SHA1 markers            $UI_DEMO_HOME/tmp/  $UI_SFTP_HOME/tmp/
  the emails to the admins    $mails
  the users on the platform   curl -s $UI_FAKE_URL/_fake/tenants/$UI_DEMO_DOMAIN/users
                              curl -s $UI_FAKE_URL/_fake/tenants/$UI_SFTP_DOMAIN/users
  the SFTP server's host key  $(ssh-keygen -l -E sha256 -f "$UI_SFTP_HOST_KEY_FILE" | cut -d' ' -f2) (pinned in $UI_REGISTRY_FILE)
  stop the stack              scripts/stack.sh stop
EOT
status=0
for tenant in "${TENANTS[@]}"; do
  echo
  echo "--- tail of the $tenant log ---"
  tail -n 14 "${HOMES[$tenant]}/log/user-import.log"
  if [[ ${FIRST[$tenant]} -ne 0 || ${SECOND[$tenant]} -ne 0 ]]; then
    echo "demo: $tenant: a run failed (exit ${FIRST[$tenant]}, then ${SECOND[$tenant]})" >&2
    status=1
  fi
done
exit "$status"
