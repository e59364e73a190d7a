#!/usr/bin/env bash
# scripts/bench-contenders.sh — three ways to import the same file, in one run (`make
# bench-contenders`); figures, not tests.
#
#   scripts/bench-contenders.sh
#
# Contenders, each on a fresh tenant of the same release platform fake (its own process, 20 ms
# added to every API call, every 202 answered "pending" so each write is polled once), the same
# vsftpd account and the same SMTP sink of the local stack (scripts/stack.sh up --no-fake):
#   script   bench/baseline/sequential_import.py: what a tenant's IT would write (ftplib FTP_TLS,
#            requests, smtplib; one row after the other);
#   default  `worker once` (release), the registry's default tenant options (mass-change guard on,
#            files.settle 5 s), the fleet's default settings but import.concurrency;
#   lean     the same with the guard off and files.settle 0.
# Files (bench-csv, all users new): 2,000 rows at concurrency 8 (all three), 20,000 rows at
# concurrency 32 (default and lean; the script too with BENCH_SCRIPT_20K=1, ~25 min). The upload's
# modification time is an hour back (see scripts/bench-lib.sh). Each run must import every row
# (created = rows) and send its report email (counted in the sink); the fake's per-call counts
# are printed per contender, and the ratio default/lean per size.
#
# Knobs: BENCH_LATENCY_MS (20), BENCH_SCRIPT (1; 0 leaves the script out), BENCH_SCRIPT_20K (0),
# BENCH_SIZES ("2000:8 20000:32"),
# BENCH_POLL_MS (platform.status_poll_interval of the worker; unset: the fleet's default, 500 ms).
# Needs root; about 7 minutes once built (4 with BENCH_POLL_MS=20 BENCH_SCRIPT=0). The whole
# output of a successful run is kept in
# docs/bench-contenders-latest.txt.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/bench-lib.sh
. "$ROOT/scripts/bench-lib.sh"
bench_keep_output bench-contenders-latest.txt "$@"

LATENCY=${BENCH_LATENCY_MS:-20}
SIZES=${BENCH_SIZES:-"2000:8 20000:32"}
SCRIPT_20K=${BENCH_SCRIPT_20K:-0}
SCRIPT=${BENCH_SCRIPT:-1}

# A Python that has `requests` (the baseline falls back to urllib and says so).
PY=python3
for p in python3 /usr/bin/python3; do
  if command -v "$p" >/dev/null && "$p" -c 'import requests' 2>/dev/null; then
    PY=$p
    break
  fi
done

bench_setup
bench_start_fake "$LATENCY"
echo "worker settings: import.concurrency per size, platform.status_poll_interval ${BENCH_POLL_MS:-default (500)}ms"
echo "baseline interpreter: $("$PY" -V 2>&1) ($(command -v "$PY"))"

# report LABEL ROWS CONCURRENCY DOMAIN WALL MAILS_BEFORE: one line of figures, with the checks.
report() {
  local label=$1 rows=$2 conc=$3 domain=$4 wall=$5 before=$6 calls mails
  read -r get set status conflicts < <(bench_calls "$domain")
  mails=$(($(bench_mail_count) - before))
  ((mails == 1)) || die "$label $rows: $mails report emails reached the sink, not 1"
  calls=$(awk -v g="$get" -v s="$set" -v t="$status" -v r="$rows" 'BEGIN { printf "%.2f", (g + s + t) / r }')
  printf 'contender=%s rows=%s concurrency=%s wall_s=%s GetUser=%s SetUser=%s status=%s conflicts=%s calls_per_row=%s email=1 load=%s\n' \
    "$label" "$rows" "$conc" "$wall" "$get" "$set" "$status" "$conflicts" "$calls" "$(load | tr ' ' ,)" |
    tee -a "$SCRATCH/results.txt"
}

run_script() {
  local rows=$1 conc=$2 domain="demo.c$1-script.learning-admin.com" before t0 line
  bench_add_tenant "$domain"
  bench_put_file "$SCRATCH/users-$rows.csv"
  before=$(bench_mail_count)
  t0=$(date +%s.%N)
  line=$(timeout 7200 "$PY" bench/baseline/sequential_import.py --ftps-host "$UI_FTPS_HOST" \
    --ftps-port "$UI_FTPS_PORT" --ftps-user "$UI_DEMO_USER" --key-file "$KEY_FILE" \
    --ca-file "$UI_CA_FILE" --api-base-url "$FAKE_URL" --domain "$domain" \
    --smtp-host "$UI_SMTP_HOST" --smtp-port "$UI_SMTP_PORT" --to admin@bench.example.com \
    --work-dir "$SCRATCH")
  echo "$line"
  [[ $(field created "$line") == "$rows" ]] || die "the script did not create every user: $line"
  report script "$rows" 1 "$domain" "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')" "$before"
}

run_worker() {
  local options=$1 rows=$2 conc=$3 domain="demo.c$2-$1.learning-admin.com" before durations
  bench_add_tenant "$domain"
  bench_settings "$conc"
  bench_registry "$domain" "$options"
  bench_put_file "$SCRATCH/users-$rows.csv"
  before=$(bench_mail_count)
  bench_worker_once "$options-$rows"
  [[ $(jq -r .counts.created <<<"$W_JSON") == "$rows" ]] || die "$options $rows: not every user created: $W_JSON"
  [[ $(jq -r .email_sent <<<"$W_JSON") == true ]] || die "$options $rows: no report email: $W_JSON"
  durations=$(jq -r '.durations_ms // {} | to_entries | map("\(.key)=\(.value)") | join(",")' \
    "$UI_DEMO_HOME/reports/latest-summary.json" 2>/dev/null || echo "?")
  echo "worker once ($options): elapsed_ms=$(jq -r .elapsed_ms <<<"$W_JSON") max_rss_kib=$W_RSS_KIB stages_ms: $durations"
  report "$options" "$rows" "$conc" "$domain" "$W_WALL" "$before"
}

for size in $SIZES; do
  rows=${size%%:*} conc=${size##*:}
  "$BIN/bench-csv" --rows "$rows" --out "$SCRATCH/users-$rows.csv"
  say "$rows new users, concurrency $conc, fake at $LATENCY ms (load $(load))"
  if ((SCRIPT && (rows <= 2000 || SCRIPT_20K))); then
    run_script "$rows" "$conc"
  fi
  run_worker default "$rows" "$conc"
  run_worker lean "$rows" "$conc"
done

say "summary (load $(load))"
cat "$SCRATCH/results.txt"
for size in $SIZES; do
  rows=${size%%:*}
  d=$(grep "^contender=default rows=$rows " "$SCRATCH/results.txt")
  l=$(grep "^contender=lean rows=$rows " "$SCRATCH/results.txt")
  s=$(grep "^contender=script rows=$rows " "$SCRATCH/results.txt" || true)
  printf 'rows=%s default/lean=%s (target <= 1.1)%s\n' "$rows" \
    "$(awk -v a="$(field wall_s "$d")" -v b="$(field wall_s "$l")" 'BEGIN { printf "%.2f", a / b }')" \
    "${s:+ script/default=$(awk -v a="$(field wall_s "$s")" -v b="$(field wall_s "$d")" 'BEGIN { printf "%.1f", a / b }')}"
done
