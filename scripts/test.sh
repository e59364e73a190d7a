#!/usr/bin/env bash
# scripts/test.sh — the whole test suite, as CI runs it: the services the tests need (the local
# stack script installs and starts what is missing), formatting, lints, then every test.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

echo "== services"
scripts/stack.sh up
scripts/stack.sh status

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test"
cargo test --workspace --locked
echo "== chaos (short fault trials, docs/reliability.md)" && scripts/chaos.sh --short
echo "== deploy check (manifests, Dockerfile)"
scripts/deploy-check.sh

# The image CI ships: static binaries, built without an engine, smoke-run under runc as the
# image's non-root user with the pod's restrictions (scripts/image.sh says what it checks).
echo "== container image"
scripts/image.sh
