//! The worker's Prometheus metrics, served on `/metrics` of `http.listen` (OpenMetrics text,
//! `prometheus-client`; a counter registered as `x` is exposed as `x_total`). Built once in
//! [`crate::Deps`]; the pipeline and the consumer add to them. Labels take bounded values only
//! (dispositions, reasons, stages, row results): never a tenant, a user or a file, with one
//! exception: `worker_tenant_last_success_timestamp_seconds{tenant}`, the per-tenant freshness
//! objective's only input (one series per tenant the process has run; docs/observability.md).
//!
//! | metric | meaning |
//! |---|---|
//! | `worker_jobs_total{disposition, reason}` | deliveries handled, by what happened to them and why |
//! | `worker_stage_duration_seconds{stage}` | time in `fetch`, `hash`, `import`, `report` (histogram) |
//! | `worker_rows_total{result}` | rows of imported files: `created`, `updated`, `unchanged`, `invalid`, `failed`, `unconfirmed`, `deactivated`, `protected` |
//! | `worker_api_requests_total` | HTTP requests to the platform API (attempts) |
//! | `worker_api_retries_total` | attempts that were retries |
//! | `worker_api_rate_limited_total` | `429` answers |
//! | `worker_api_server_errors_total` | `5xx` answers |
//! | `worker_api_transport_errors_total` | timeouts and broken connections |
//! | `worker_lock_contention_total{result}` | jobs that found their tenant locked: `skipped-busy`, `bounced` (a handed-back job waits), `gave-up` |
//! | `worker_publish_failures_total{kind}` | retry (`retry`) or dead-letter (`dead-letter`) publishes that failed (the delivery was handed back) |
//! | `worker_consumer_reconnects_total` | broker sessions that ended and were reconnected |
//! | `worker_ready` | 1 while `/readyz` would answer 200 (broker and Redis up, not draining), else 0; read at each scrape |
//! | `worker_tenant_last_success_timestamp_seconds{tenant}` | when this process last finished a job of the tenant without error (Unix seconds) |

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use std::sync::atomic::AtomicU64;

use chrono::{DateTime, Utc};
use prometheus_client::registry::Registry;

use crate::outcome::Counts;
use crate::platform::ApiStats;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    disposition: &'static str,
    reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabels {
    tenant: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// Every `result` of `worker_rows_total`.
const ROW_RESULTS: [&str; 8] = [
    "created",
    "updated",
    "unchanged",
    "invalid",
    "failed",
    "unconfirmed",
    "deactivated",
    "protected",
];

/// From 10 ms (a marker check) to an hour (a very large import).
const STAGE_BUCKETS: [f64; 14] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0, 600.0, 3600.0,
];

fn stage_histogram() -> Histogram {
    Histogram::new(STAGE_BUCKETS)
}

#[derive(Debug)]
pub struct WorkerMetrics {
    registry: Registry,
    jobs: Family<JobLabels, Counter>,
    stages: Family<StageLabels, Histogram, fn() -> Histogram>,
    rows: Family<ResultLabels, Counter>,
    api_requests: Counter,
    api_retries: Counter,
    api_rate_limited: Counter,
    api_server_errors: Counter,
    api_transport_errors: Counter,
    lock_contention: Family<ResultLabels, Counter>,
    publish_failures: Family<KindLabels, Counter>,
    reconnects: Counter,
    ready: Gauge,
    tenant_last_success: Family<TenantLabels, Gauge<f64, AtomicU64>>,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        let mut metrics = Self {
            registry: Registry::default(),
            jobs: Family::default(),
            stages: Family::new_with_constructor(stage_histogram),
            rows: Family::default(),
            api_requests: Counter::default(),
            api_retries: Counter::default(),
            api_rate_limited: Counter::default(),
            api_server_errors: Counter::default(),
            api_transport_errors: Counter::default(),
            lock_contention: Family::default(),
            publish_failures: Family::default(),
            reconnects: Counter::default(),
            ready: Gauge::default(),
            tenant_last_success: Family::default(),
        };
        // Registered in this order, which is the order of the `/metrics` body.
        metrics.register_job_families();
        metrics.register_counters();
        metrics.register_state_families();
        metrics.create_known_series();
        metrics
    }
}

impl WorkerMetrics {
    /// Registers the families each job adds to: jobs, stage durations, rows.
    fn register_job_families(&mut self) {
        let r = &mut self.registry;
        r.register(
            "worker_jobs",
            "Deliveries handled, by disposition (imported, no-file, already-processed, \
             skipped-busy, retry-scheduled, handed-back, dead-lettered) and reason",
            self.jobs.clone(),
        );
        r.register(
            "worker_stage_duration_seconds",
            "Time spent in each pipeline stage (fetch, hash, import, report)",
            self.stages.clone(),
        );
        r.register(
            "worker_rows",
            "Rows of imported files, by result",
            self.rows.clone(),
        );
    }

    /// Registers the label-less counters: the platform API's and the consumer's reconnects.
    fn register_counters(&mut self) {
        let r = &mut self.registry;
        r.register(
            "worker_api_requests",
            "HTTP requests to the platform API, retries included",
            self.api_requests.clone(),
        );
        r.register(
            "worker_api_retries",
            "Platform API requests that were retries",
            self.api_retries.clone(),
        );
        r.register(
            "worker_api_rate_limited",
            "Platform API answers 429 Too Many Requests",
            self.api_rate_limited.clone(),
        );
        r.register(
            "worker_api_server_errors",
            "Platform API answers 5xx",
            self.api_server_errors.clone(),
        );
        r.register(
            "worker_api_transport_errors",
            "Platform API requests that timed out or lost their connection",
            self.api_transport_errors.clone(),
        );
        r.register(
            "worker_consumer_reconnects",
            "Broker sessions that ended and were reconnected",
            self.reconnects.clone(),
        );
    }

    /// Registers the fleet's state: lock contention, failed publishes, readiness, freshness.
    fn register_state_families(&mut self) {
        let r = &mut self.registry;
        r.register(
            "worker_lock_contention",
            "Jobs that found their tenant locked: skipped-busy (a fresh job, acked), bounced (a \
             handed-back job waits in the delay queue), gave-up (dead-lettered)",
            self.lock_contention.clone(),
        );
        r.register(
            "worker_publish_failures",
            "Retry or dead-letter publishes that failed (the delivery was handed back instead)",
            self.publish_failures.clone(),
        );
        r.register(
            "worker_ready",
            "1 while the worker is ready (broker and Redis connected, not draining), else 0",
            self.ready.clone(),
        );
        r.register(
            "worker_tenant_last_success_timestamp_seconds",
            "When this process last finished a job of the tenant without error (Unix time)",
            self.tenant_last_success.clone(),
        );
    }

    /// Creates the series of the label values known in advance, at 0.
    fn create_known_series(&self) {
        // A dashboard shows them before the first event, and `increase()` counts that first
        // event (a series born at 1 has no earlier sample to increase from).
        for stage in [
            "verify-upload",
            "fetch",
            "hash",
            "settle",
            "guard",
            "import",
            "report",
            "archive",
        ] {
            let _ = self.stages.get_or_create(&StageLabels { stage });
        }
        for result in ROW_RESULTS {
            let _ = self.rows.get_or_create(&ResultLabels { result });
        }
        for result in ["skipped-busy", "bounced", "gave-up"] {
            let _ = self.lock_contention.get_or_create(&ResultLabels { result });
        }
        for kind in ["retry", "dead-letter"] {
            let _ = self.publish_failures.get_or_create(&KindLabels { kind });
        }
    }

    /// The `/metrics` body.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// The `/metrics` body with `worker_ready` set from `ready` (the probe's answer at this
    /// scrape), so a worker that serves but is not ready shows it to Prometheus.
    pub fn render_ready(&self, ready: bool) -> String {
        self.ready.set(i64::from(ready));
        self.render()
    }

    /// A job of `tenant` finished without error at `at`: the freshness objective's input.
    pub fn tenant_succeeded(&self, tenant: &str, at: DateTime<Utc>) {
        // Milliseconds kept: two runs in the same second still move the gauge.
        let seconds = at.timestamp_millis() as f64 / 1000.0;
        self.tenant_last_success
            .get_or_create(&TenantLabels {
                tenant: tenant.to_owned(),
            })
            .set(seconds);
    }

    pub fn job(&self, disposition: &'static str, reason: &str) {
        self.jobs
            .get_or_create(&JobLabels {
                disposition,
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// A pipeline stage's time (the stage's name: `fetch`, `import`, …).
    pub fn stage(&self, stage: &'static str, took: Duration) {
        self.stages
            .get_or_create(&StageLabels { stage })
            .observe(took.as_secs_f64());
    }

    pub fn rows(&self, counts: &Counts) {
        // In the order of ROW_RESULTS.
        for (result, n) in [
            ("created", counts.created),
            ("updated", counts.updated),
            ("unchanged", counts.unchanged),
            ("invalid", counts.invalid),
            ("failed", counts.failed),
            ("unconfirmed", counts.unconfirmed),
            ("deactivated", counts.deactivated),
            ("protected", counts.protected),
        ] {
            self.rows.get_or_create(&ResultLabels { result }).inc_by(n);
        }
    }

    /// Adds one job's API counters.
    pub fn api(&self, stats: &ApiStats) {
        use std::sync::atomic::Ordering::Relaxed;
        self.api_requests.inc_by(stats.requests.load(Relaxed));
        self.api_retries.inc_by(stats.retries.load(Relaxed));
        self.api_rate_limited
            .inc_by(stats.rate_limited.load(Relaxed));
        self.api_server_errors
            .inc_by(stats.server_errors.load(Relaxed));
        self.api_transport_errors
            .inc_by(stats.transport_errors.load(Relaxed));
    }

    /// `skipped-busy`, `bounced` or `gave-up`.
    pub fn lock_contention(&self, result: &'static str) {
        self.lock_contention
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// `retry` or `dead-letter`.
    pub fn publish_failure(&self, kind: &'static str) {
        self.publish_failures
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    pub fn reconnect(&self) {
        self.reconnects.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_shows_in_every_family() {
        let m = WorkerMetrics::default();
        m.job("imported", "imported");
        m.stage("fetch", Duration::from_millis(30));
        m.rows(&Counts {
            rows: 3,
            created: 2,
            invalid: 1,
            ..Counts::default()
        });
        let stats = ApiStats::default();
        stats
            .requests
            .store(7, std::sync::atomic::Ordering::Relaxed);
        m.api(&stats);
        m.lock_contention("skipped-busy");
        m.publish_failure("retry");
        m.reconnect();
        let text = m.render();
        for line in [
            "worker_jobs_total{disposition=\"imported\",reason=\"imported\"} 1\n",
            "worker_stage_duration_seconds_count{stage=\"fetch\"} 1\n",
            "worker_stage_duration_seconds_bucket{le=\"0.05\",stage=\"fetch\"} 1\n",
            "worker_rows_total{result=\"created\"} 2\n",
            "worker_rows_total{result=\"invalid\"} 1\n",
            "worker_api_requests_total 7\n",
            "worker_lock_contention_total{result=\"skipped-busy\"} 1\n",
            "worker_publish_failures_total{kind=\"retry\"} 1\n",
            "worker_consumer_reconnects_total 1\n",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }

    #[test]
    fn a_tenant_success_sets_its_own_timestamp_and_no_other() {
        let m = WorkerMetrics::default();
        let first = DateTime::parse_from_rfc3339("2026-11-25T00:00:01.5Z")
            .unwrap_or_else(|e| panic!("{e}"))
            .with_timezone(&Utc);
        let later = DateTime::parse_from_rfc3339("2026-11-26T00:00:02Z")
            .unwrap_or_else(|e| panic!("{e}"))
            .with_timezone(&Utc);
        m.tenant_succeeded("acme", first);
        m.tenant_succeeded("globex", first);
        m.tenant_succeeded("acme", later);
        let text = m.render();
        assert!(
            text.contains(
                "worker_tenant_last_success_timestamp_seconds{tenant=\"acme\"} 1795651202.0\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "worker_tenant_last_success_timestamp_seconds{tenant=\"globex\"} 1795564801.5\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn known_label_values_are_exposed_at_zero_before_any_event() {
        let text = WorkerMetrics::default().render();
        for line in [
            "worker_stage_duration_seconds_count{stage=\"report\"} 0\n",
            "worker_rows_total{result=\"deactivated\"} 0\n",
            "worker_lock_contention_total{result=\"gave-up\"} 0\n",
            "worker_publish_failures_total{kind=\"dead-letter\"} 0\n",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }

    #[test]
    fn readiness_is_read_at_each_scrape() {
        let m = WorkerMetrics::default();
        assert!(m.render().contains("worker_ready 0\n"));
        assert!(m.render_ready(true).contains("worker_ready 1\n"));
        assert!(m.render_ready(false).contains("worker_ready 0\n"));
    }
}
