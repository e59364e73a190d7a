#!/usr/bin/env bash
# scripts/chaos.sh — fault trials against the real local stack, with a table of figures
# (docs/reliability.md). Needs the machine's RabbitMQ and Redis (scripts/stack.sh up), vsftpd,
# redis-server and rabbitmq-server installed. Stops by itself: --short within 5 min, --long
# within 30 min. Exits 1 if anything was lost, ran twice at once or was created twice; 2 if the
# run did not finish in time. `--only long-import` runs the imports that outlast vsftpd's 300 s idle
# timeout (FTPS and SFTP, about 9 min, bounded at 15 min; not in the default selection).
#   scripts/chaos.sh [--short|--long] [--seed N] [--only sigkill,sigstop,api-storm,scheduler,redis,rabbitmq,smtp,ftps,redis-outage,redis-loss,fresh-tenants,long-import]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
cargo build --quiet --locked -p worker --bin worker
cargo build --quiet --locked -p tests --example chaos
# The build goes where cargo puts it (CARGO_TARGET_DIR is honoured: scripts/test.sh sets it).
exec "${CARGO_TARGET_DIR:-$ROOT/target}/debug/examples/chaos" "$@"
