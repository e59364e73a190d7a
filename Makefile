# Every command of the project in one place: `make help`.
.DEFAULT_GOAL := help
.PHONY: help demo test doctor stack-up stack-status stack-stop fmt lint build release bench-pipeline bench-fleet bench-scale bench-contenders bench-rss deploy-check monitoring-check image otlp-dump chaos chaos-long long-import

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

demo: ## the main job locally: stack up, the FTPS and the SFTP demo tenants imported end to end
	scripts/demo.sh

test: ## the whole test suite (services, fmt, clippy, tests) - what CI runs
	scripts/test.sh

chaos: ## fault trials with figures, short (~3 min; in CI): kills, stops, storms, restarts, a Redis outage; see docs/reliability.md
	scripts/chaos.sh --short

chaos-long: ## the long fault run (~15 min) whose figures docs/reliability.md records
	scripts/chaos.sh --long

doctor: ## the onboarding checklist of a tenant on the local stack (TENANT=demo): worker doctor, docs/operations.md
	scripts/stack.sh up
	cargo build -q -p worker
	USER_IMPORT_CONFIG=config/worker.local.toml "$${CARGO_TARGET_DIR:-target}/debug/worker" doctor --tenant $(or $(TENANT),demo)

long-import: ## imports past vsftpd's 300 s idle timeout, FTPS and SFTP (~9 min; in CI, in the background)
	scripts/chaos.sh --only long-import

stack-up: ## start the local stack (RabbitMQ, Redis, vsftpd FTPS, sshd SFTP, SMTP sink, platform fake)
	scripts/stack.sh up

stack-status: ## show what of the local stack is running
	scripts/stack.sh status

stack-stop: ## stop what the stack script started
	scripts/stack.sh stop

fmt: ## format the code
	cargo fmt --all

lint: ## clippy with warnings as errors
	cargo clippy --workspace --all-targets -- -D warnings

build: ## debug build of everything
	cargo build --workspace

release: ## release build of the binaries
	cargo build --release -p worker -p scheduler -p platform-fake

bench-pipeline: ## pipeline benchmarks (FTPS fetch+hash vs curl, import rate, peak RSS); see BENCHMARKS.md
	scripts/bench-pipeline.sh

bench-contenders: ## a sequential Python script vs `worker once` default vs lean, same file, same stack; see BENCHMARKS.md
	scripts/bench-contenders.sh

bench-rss: ## peak RSS of whole `worker once` imports (10 k to 2 M rows, report email included); see BENCHMARKS.md
	scripts/bench-rss.sh

bench-fleet: ## fleet benchmarks (publish 10k jobs, publish->start latency, 1/2/4 workers); see BENCHMARKS.md
	scripts/bench-fleet.sh

bench-scale: ## fleet at scale (2,000 tenants, 3 schedulers, workers scaled 1->4, three rounds); see BENCHMARKS.md
	scripts/bench-scale.sh

deploy-check: ## render + validate the Kubernetes overlays, lint YAML and Dockerfile, checkov, self-check (offline)
	scripts/deploy-check.sh

monitoring-check: ## alert rules (promtool check + unit tests), PrometheusRule in sync, dashboard, metric names vs /metrics
	scripts/monitoring-check.sh

image: ## container image without an engine: static musl build, buildah, smoke run with runc (root; musl build cached in /var/cache/user-import)
	scripts/image.sh

otlp-dump: ## a local OTLP/gRPC receiver that prints the traces it gets (docs/observability.md)
	cargo run --quiet -p tests --example otlp-dump
