#!/usr/bin/env bash
# scripts/bench-lib.sh — shared by scripts/bench-contenders.sh and scripts/bench-rss.sh (sourced,
# not run): the local stack, release binaries, a release platform fake in its own process, and
# `worker once` runs of the stack's demo FTPS account against it.
#
# Each run gets a tenant of its own on the fake (a new portal domain, `demo.<run>.learning-admin.com`:
# every user of the file is new there) and a registry of one tenant named `demo` (the stack's FTPS
# account; a portal domain's first label is the tenant's name) pointing at it.
# The file is put in /uploads with a modification time an hour back — a file uploaded before the
# scheduled run, as in production (a file still being written is the settle stage's business, not
# measured here). The account's /tmp, /reports, /archive and /log are emptied before each run.
# shellcheck disable=SC2034 # variables used by the scripts that source this

say() { printf '\n=== [+%ds] %s\n' "$SECONDS" "$*"; }
die() {
  printf 'bench: error: %s\n' "$*" >&2
  exit 1
}
load() { cut -d' ' -f1-3 /proc/loadavg; }
field() { tr ' ' '\n' <<<"$2" | sed -n "s/^$1=//p" | head -n1; }

# bench_keep_output NAME ARGS…: called first by a bench script. Runs the script again (as the
# inner run) with its output on the terminal and in a log, keeps that log as docs/NAME when the run
# succeeds, and exits with the run's status. Returns at once in the inner run.
bench_keep_output() {
  [[ -z ${BENCH_INNER:-} ]] || return 0
  local out="$ROOT/docs/$1" log status
  shift
  log=$(mktemp "${TMPDIR:-/tmp}/$(basename "$out" -latest.txt)-output.XXXXXX")
  set +e
  BENCH_INNER=1 "$0" "$@" 2>&1 | tee "$log"
  status=${PIPESTATUS[0]}
  set -e
  if ((status == 0)); then
    mv "$log" "$out" && chmod 644 "$out" && echo "output kept in ${out#"$ROOT"/}"
  else
    echo "bench: failed (exit $status); the output is in $log" >&2
  fi
  exit "$status"
}

BENCH_FAKE_PID=""
BENCH_REDIS_PREFIX="bench-$$"
bench_cleanup() {
  if [[ -n $BENCH_FAKE_PID ]] && kill "$BENCH_FAKE_PID" 2>/dev/null; then
    wait "$BENCH_FAKE_PID" 2>/dev/null || true
  fi
  BENCH_FAKE_PID=""
  if [[ -n ${UI_DEMO_HOME:-} ]]; then
    rm -f "$UI_DEMO_HOME/uploads/user-import.csv"
    bench_clear_account
  fi
  # The alert state the runs left in Redis under this run's own prefix.
  redis-cli --scan --pattern "$BENCH_REDIS_PREFIX:*" 2>/dev/null | xargs -r redis-cli del >/dev/null 2>&1 || true
  [[ -n ${SCRATCH:-} ]] && rm -rf "$SCRATCH"
}

# The stack (without its debug fake), the release binaries, a scratch directory.
bench_setup() {
  [[ $EUID -eq 0 ]] || die "run as root (scripts/stack.sh up and the demo account's files need it)"
  command -v jq >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq jq >/dev/null
  SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/bench.XXXXXX")
  chmod 755 "$SCRATCH"
  trap bench_cleanup EXIT
  say "stack"
  scripts/stack.sh up --no-fake
  eval "$(scripts/stack.sh env)"
  [[ -d ${UI_DEMO_HOME:-} ]] || die "no demo FTPS home (UI_DEMO_HOME)"
  say "build"
  timeout 1800 cargo build --release -p bench -p worker -p platform-fake
  local target
  target=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
  BIN="$target/release"
  local b
  for b in worker platform-fake bench-csv; do
    [[ -x $BIN/$b ]] || die "no $BIN/$b after the build"
  done
  [[ -x /usr/bin/time ]] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null
  # Copies: a build in the same target directory during the run does not change what is measured.
  mkdir -p "$SCRATCH/bin"
  cp "$BIN/worker" "$BIN/platform-fake" "$BIN/bench-csv" "$SCRATCH/bin/"
  BIN="$SCRATCH/bin"
  KEY_FILE="$UI_DEMO_KEY_FILE"
  printf 'date: %s  commit: %s%s  cores: %s  load: %s\n' "$(date -u +%FT%TZ)" \
    "$(git rev-parse --short HEAD)" "$(git diff --quiet HEAD -- . ':!docs' || echo ' (with local changes)')" \
    "$(nproc)" "$(load)"
}

# bench_start_fake LATENCY_MS: the release fake in its own process, on a free port.
bench_start_fake() {
  # Made before the fake starts: a background job opens its redirections itself, maybe late.
  : >"$SCRATCH/fake.out"
  : >"$SCRATCH/fake.err"
  RUST_LOG=warn "$BIN/platform-fake" --listen 127.0.0.1:0 --latency-ms "$1" \
    >"$SCRATCH/fake.out" 2>"$SCRATCH/fake.err" &
  BENCH_FAKE_PID=$!
  FAKE_URL=""
  local i
  for ((i = 0; i < 100; i++)); do
    FAKE_URL=$(sed -n 's/^listening on //p' "$SCRATCH/fake.out")
    [[ -n $FAKE_URL ]] && break
    kill -0 "$BENCH_FAKE_PID" 2>/dev/null || break
    sleep 0.1
  done
  [[ -n $FAKE_URL ]] || {
    cat "$SCRATCH/fake.err" >&2
    die "the platform fake did not start"
  }
  echo "platform fake (release) pid $BENCH_FAKE_PID at $FAKE_URL, latency $1 ms"
}

# bench_final_in_answer: the fake answers a write's final status in its 202 (no poll needed).
bench_final_in_answer() {
  curl -fsS "$FAKE_URL/_fake/faults" | jq -c '.final_status_in_answer = true' |
    curl -fsS -o /dev/null -X PUT -H 'Content-Type: application/json' --data-binary @- "$FAKE_URL/_fake/faults" ||
    die "could not set the fake's faults"
}

# bench_add_tenant DOMAIN: a tenant on the fake with the demo account's key.
bench_add_tenant() {
  jq -n --arg d "$1" --rawfile k "$KEY_FILE" '{domain: $d, api_key: ($k | rtrimstr("\n"))}' |
    curl -fsS -o /dev/null -X POST -H 'Content-Type: application/json' --data-binary @- "$FAKE_URL/_fake/tenants" ||
    die "could not add the tenant $1 to the fake"
}

# bench_calls DOMAIN: "GetUser SetUser status" as the fake counted them.
bench_calls() {
  curl -fsS "$FAKE_URL/_fake/tenants/$1/calls" |
    jq -r '[.calls.GetUser // 0, .calls.SetUser // 0, .calls.status // 0, .create_conflicts] | @tsv'
}

# bench_settings CONCURRENCY: the worker's settings file (the fleet's defaults otherwise).
bench_settings() {
  cat >"$SCRATCH/worker.toml" <<EOF
work_dir = "$SCRATCH/work"
log_format = "text"
[registry]
file = "$SCRATCH/tenants.toml"
secrets_dir = "$(dirname "$KEY_FILE")"
[redis]
key_prefix = "$BENCH_REDIS_PREFIX"
[ftps]
ca_file = "$UI_CA_FILE"
[smtp]
host = "$UI_SMTP_HOST"
port = $UI_SMTP_PORT
tls = "none"
from = "User import <user-import@fleet.example.com>"
[import]
concurrency = $1
EOF
  if [[ -n ${BENCH_POLL_MS:-} ]]; then
    printf '[platform]\nstatus_poll_interval = "%sms"\n' "$BENCH_POLL_MS" >>"$SCRATCH/worker.toml"
  fi
  mkdir -p "$SCRATCH/work"
}

# bench_registry DOMAIN OPTIONS: one tenant `demo` (the stack's FTPS account) on DOMAIN at the
# fake; OPTIONS "default" (the registry's defaults) or "lean" (guard off, settle 0).
bench_registry() {
  local extra=""
  if [[ $2 == lean ]]; then
    extra=$'import = { mass_change_guard = { enabled = false } }\nfiles = { settle = "0s" }'
  fi
  cat >"$SCRATCH/tenants.toml" <<EOF
[[tenant]]
name = "demo"
region = "eu"
portal_domain = "$1"
api_base_url = "$FAKE_URL"
ftps_host = "$UI_FTPS_HOST"
ftps_port = $UI_FTPS_PORT
admin = { username = "bench.admin", email = "admin@bench.example.com" }
$extra
EOF
}

bench_clear_account() {
  local d
  for d in tmp reports archive log; do
    [[ -d $UI_DEMO_HOME/$d ]] && find "$UI_DEMO_HOME/$d" -mindepth 1 -delete
  done
  return 0
}

# bench_put_file CSV: the account's upload, an hour old, and a clean account otherwise.
bench_put_file() {
  bench_clear_account
  install -o "$UI_DEMO_USER" -g "$UI_DEMO_USER" -m 0644 "$1" "$UI_DEMO_HOME/uploads/user-import.csv"
  touch -d '1 hour ago' "$UI_DEMO_HOME/uploads/user-import.csv"
}

bench_mail_count() { find "$UI_MAILDIR/new" -type f | wc -l; }

# bench_worker_once TAG: `worker once --tenant demo` under /usr/bin/time -v; sets W_JSON (its
# line), W_WALL (s), W_RSS_KIB (max RSS). Fails unless the outcome is `imported`.
# BENCH_WORKER_WRAP: a command the worker runs under, e.g. "heaptrack -o /tmp/rss" for a heap
# profile (then the RSS figure is not the worker's alone).
bench_worker_once() {
  local tag=$1 t0 t1
  t0=$(date +%s.%N)
  local -a wrap
  read -r -a wrap <<<"${BENCH_WORKER_WRAP:-}"
  USER_IMPORT_CONFIG="$SCRATCH/worker.toml" RUST_LOG=${BENCH_WORKER_LOG:-warn} \
    timeout "${BENCH_WORKER_TIMEOUT:-1800}" /usr/bin/time -v -o "$SCRATCH/time-$tag.txt" \
    "${wrap[@]}" "$BIN/worker" once --tenant demo >"$SCRATCH/once-$tag.json" 2>"$SCRATCH/once-$tag.err" || {
    tail -n 20 "$SCRATCH/once-$tag.err" >&2
    cat "$SCRATCH/once-$tag.json" >&2
    die "worker once ($tag) failed"
  }
  t1=$(date +%s.%N)
  # The last JSON line: a wrapper (heaptrack) may print its own lines after the worker's.
  W_JSON=$(grep '^{' "$SCRATCH/once-$tag.json" | tail -n 1)
  W_WALL=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
  W_RSS_KIB=$(sed -n 's/^[[:space:]]*Maximum resident set size (kbytes): //p' "$SCRATCH/time-$tag.txt")
  [[ $(jq -r .outcome <<<"$W_JSON") == imported ]] || die "worker once ($tag): not imported: $W_JSON"
}

# bench_newest_mail: the path of the newest message in the sink.
bench_newest_mail() { ls -t "$UI_MAILDIR/new"/* 2>/dev/null | head -n 1; }
