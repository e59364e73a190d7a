//! Counters and gauges of the scheduler, rendered in the OpenMetrics text format on `/metrics`
//! (`prometheus-client`; a counter registered as `x` is exposed as `x_total`). The gauges are what
//! the alert rules of `deploy/monitoring/` need to tell a stuck or unready scheduler from one
//! with nothing due: `scheduler_last_successful_poll_timestamp_seconds` and `scheduler_ready`.

use std::sync::atomic::AtomicU64;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub polls: Counter,
    pub published: Counter,
    pub busy: Counter,
    pub failed: Counter,
    pub manual: Counter,
    pub registry_reloads: Counter,
    pub registry_reload_failures: Counter,
    last_poll_success: Gauge<f64, AtomicU64>,
    ready: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let mut counter = |name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let polls = counter("scheduler_polls", "Polls of the tenants' schedules");
        let published = counter(
            "scheduler_ticks_published",
            "Scheduled jobs published (one per tenant per tick)",
        );
        let busy = counter(
            "scheduler_ticks_busy",
            "Ticks skipped because another replica held the claim",
        );
        let failed = counter(
            "scheduler_tick_failures",
            "Ticks whose publish failed (retried with backoff)",
        );
        let manual = counter(
            "scheduler_manual_jobs",
            "Manual jobs published by `trigger`",
        );
        let registry_reloads = counter(
            "scheduler_registry_reloads",
            "Tenant registry reloads that succeeded",
        );
        let registry_reload_failures = counter(
            "scheduler_registry_reload_failures",
            "Tenant registry reloads that failed (the previous registry was kept)",
        );
        let last_poll_success = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "scheduler_last_successful_poll_timestamp_seconds",
            "When this replica last finished a poll of the schedules (Unix time; 0: not yet)",
            last_poll_success.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "scheduler_ready",
            "1 while the scheduler is ready (broker and Redis connected, not draining), else 0",
            ready.clone(),
        );
        Self {
            registry,
            polls,
            published,
            busy,
            failed,
            manual,
            registry_reloads,
            registry_reload_failures,
            last_poll_success,
            ready,
        }
    }
}

impl Metrics {
    pub fn add(counter: &Counter, n: usize) {
        counter.inc_by(n as u64);
    }

    /// A poll finished (whatever it published): the "scheduler is publishing" alert's input.
    pub fn poll_succeeded(&self, at: DateTime<Utc>) {
        self.last_poll_success
            .set(at.timestamp_millis() as f64 / 1000.0);
    }

    /// The `/metrics` body with `scheduler_ready` set from `ready` (the probe's answer now).
    pub fn render_ready(&self, ready: bool) -> String {
        self.ready.set(i64::from(ready));
        self.render()
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_as_openmetrics_text() {
        let m = Metrics::default();
        Metrics::add(&m.published, 3);
        let text = m.render();
        assert!(
            text.contains(
                "# TYPE scheduler_ticks_published counter\nscheduler_ticks_published_total 3\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("scheduler_registry_reloads_total 0\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn a_finished_poll_and_readiness_show_as_gauges() {
        let m = Metrics::default();
        let text = m.render();
        assert!(
            text.contains("scheduler_last_successful_poll_timestamp_seconds 0.0\n"),
            "{text}"
        );
        let at = DateTime::parse_from_rfc3339("2026-11-26T00:00:02.25Z")
            .unwrap_or_else(|e| panic!("{e}"))
            .with_timezone(&Utc);
        m.poll_succeeded(at);
        let text = m.render_ready(true);
        assert!(
            text.contains("scheduler_last_successful_poll_timestamp_seconds 1795651202.25\n"),
            "{text}"
        );
        assert!(text.contains("scheduler_ready 1\n"), "{text}");
        assert!(m.render_ready(false).contains("scheduler_ready 0\n"));
    }
}
