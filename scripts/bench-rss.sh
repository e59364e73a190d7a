#!/usr/bin/env bash
# scripts/bench-rss.sh — peak RSS of whole imports through the pipeline, report email included
# (`make bench-rss`); figures, not tests.
#
#   scripts/bench-rss.sh
#
# For each size (10 k, 200 k, 360 k, 1 M and 2 M rows of new users, bench-csv): the file on the
# local stack's FTPS account, then `worker once` (release) under /usr/bin/time -v with the
# registry's default tenant options (mass-change guard on: its plan pass runs) and the fleet's
# default settings but import.concurrency, against the release platform fake in its own process
# (latency 0, a write's final status in its 202 answer: 2 calls per new user; in its own process
# so that its memory is not the worker's). The whole pipeline runs: fetch, hash, settle,
# guard, import, report (results CSV uploaded, zipped attachment, email to the stack's SMTP
# sink), archive. Each run must import every row, and the sink must hold its email: with the
# zipped report attached when it is within email::ZIP_ATTACHMENT_LIMIT (checked: the zip's CSV
# has one line per row plus the header), else with the body saying it is too large to attach.
#
# Knobs: BENCH_RSS_SIZES ("10000 200000 360000 1000000 2000000"), BENCH_RSS_CONCURRENCY (8, the
# fleet's default import.concurrency),
# BENCH_POLL_MS (platform.status_poll_interval; unset: the fleet's default), BENCH_WORKER_WRAP (a
# command the worker runs under: `heaptrack -o FILE`, or scripts/rss-sample.sh OUT for RssAnon and
# RssFile over time).
# Needs root; about 25 minutes on 2 cores (the 2 M-row run about half of it). The whole output of a
# successful run is kept in docs/bench-rss-latest.txt.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/bench-lib.sh
. "$ROOT/scripts/bench-lib.sh"
bench_keep_output bench-rss-latest.txt "$@"

SIZES=${BENCH_RSS_SIZES:-"10000 200000 360000 1000000 2000000"}
CONCURRENCY=${BENCH_RSS_CONCURRENCY:-8}
PYTHON=/usr/bin/python3

bench_setup
bench_start_fake 0
bench_final_in_answer
bench_settings "$CONCURRENCY"

# mail_check FILE ROWS: "attachment=NAME zip_bytes=N csv_lines=N" or "attachment=none (…)".
mail_check() {
  "$PYTHON" - "$1" "$2" <<'EOF'
import email, email.policy, io, sys, zipfile
msg = email.message_from_binary_file(open(sys.argv[1], "rb"), policy=email.policy.default)
rows = int(sys.argv[2])
parts = [p for p in msg.iter_attachments()]
if not parts:
    body = msg.get_body(("plain",)).get_content()
    if "too large to attach" not in body:
        sys.exit("no attachment, and the body does not say why")
    print(f"attachment=none(too-large,said-in-body) message_bytes={len(msg.as_bytes())}")
    sys.exit(0)
zipped = parts[0].get_content()
with zipfile.ZipFile(io.BytesIO(zipped)) as z:
    name = z.namelist()[0]
    with z.open(name) as f:
        lines = sum(1 for _ in f)
if lines != rows + 1:
    sys.exit(f"the attached report has {lines} lines for {rows} rows")
print(f"attachment={parts[0].get_filename()} zip_bytes={len(zipped)} csv_lines={lines} message_bytes={len(msg.as_bytes())}")
EOF
}

for rows in $SIZES; do
  say "$rows rows (load $(load))"
  csv="$SCRATCH/users-$rows.csv"
  "$BIN/bench-csv" --rows "$rows" --out "$csv"
  domain="demo.rss$rows.learning-admin.com"
  bench_add_tenant "$domain"
  bench_registry "$domain" default
  bench_put_file "$csv"
  bytes=$(stat -c %s "$csv")
  rm -f "$csv"
  before=$(bench_mail_count)
  bench_worker_once "rss-$rows"
  [[ $(jq -r .counts.created <<<"$W_JSON") == "$rows" ]] || die "$rows: not every user created: $W_JSON"
  [[ $(jq -r .email_sent <<<"$W_JSON") == true ]] || die "$rows: no report email: $W_JSON"
  (($(bench_mail_count) == before + 1)) || die "$rows: the sink did not receive exactly one email"
  mail=$(mail_check "$(bench_newest_mail)" "$rows") || die "$rows: the email is not as expected"
  read -r get set status _ < <(bench_calls "$domain")
  durations=$(jq -r '.durations_ms | to_entries | map("\(.key)=\(.value)") | join(",")' \
    "$UI_DEMO_HOME/reports/latest-summary.json")
  printf 'rss rows=%s file_bytes=%s concurrency=%s wall_s=%s max_rss_kib=%s max_rss_mib=%s GetUser=%s SetUser=%s status=%s %s stages_ms=%s load=%s\n' \
    "$rows" "$bytes" "$CONCURRENCY" "$W_WALL" "$W_RSS_KIB" \
    "$(awk -v k="$W_RSS_KIB" 'BEGIN { printf "%.1f", k / 1024 }')" "$get" "$set" "$status" "$mail" \
    "$durations" "$(load | tr ' ' ,)" | tee -a "$SCRATCH/results.txt"
  bench_clear_account
done

say "summary (load $(load))"
cat "$SCRATCH/results.txt"
awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^max_rss_mib=/) { split($i, kv, "="); if (kv[2] + 0 > max) max = kv[2] + 0 } }
  END { printf "largest peak RSS: %.1f MiB (target <= 32 MiB): %s\n", max, (max <= 32 ? "met" : "NOT met") }' "$SCRATCH/results.txt"
