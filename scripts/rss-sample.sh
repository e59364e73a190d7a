#!/usr/bin/env bash
# scripts/rss-sample.sh — runs a command and samples its memory every 20 ms (figures, not tests).
#
#   scripts/rss-sample.sh OUT COMMAND [ARGS…]
#
# One line per sample in OUT: VmHWM, VmRSS, RssAnon (heap, stacks), RssFile (the binary's and the
# libraries' pages) and Threads from /proc/PID/status, with the time. With the RSS benchmark:
#   BENCH_WORKER_WRAP="scripts/rss-sample.sh /tmp/rss.txt" BENCH_RSS_SIZES=200000 scripts/bench-rss.sh
# The largest value of each field: awk '{for(i=1;i<NF;i++){split($i,kv,"=");if(kv[2]+0>m[kv[1]])m[kv[1]]=kv[2]+0}} END{for(k in m)print k,m[k]}' OUT
# The command's exit status is this script's.
set -uo pipefail
(($# >= 2)) || {
  echo "usage: $0 OUT COMMAND [ARGS…]" >&2
  exit 2
}
out=$1
shift
: >"$out"
"$@" &
pid=$!
while kill -0 "$pid" 2>/dev/null; do
  awk -v t="$(date +%s.%N)" '/^(VmHWM|VmRSS|RssAnon|RssFile|Threads):/ { printf "%s=%s ", substr($1, 1, length($1) - 1), $2 } END { print "t=" t }' \
    "/proc/$pid/status" >>"$out" 2>/dev/null
  sleep 0.02
done
wait "$pid"
