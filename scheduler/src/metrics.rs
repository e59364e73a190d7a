//! Counters of the scheduler, rendered in the Prometheus text format on `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    pub polls: AtomicU64,
    pub published: AtomicU64,
    pub busy: AtomicU64,
    pub failed: AtomicU64,
    pub manual: AtomicU64,
    pub registry_reloads: AtomicU64,
    pub registry_reload_failures: AtomicU64,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let rows = [
            (
                "scheduler_polls_total",
                "Polls of the tenants' schedules.",
                &self.polls,
            ),
            (
                "scheduler_ticks_published_total",
                "Scheduled jobs published (one per tenant per tick).",
                &self.published,
            ),
            (
                "scheduler_ticks_busy_total",
                "Ticks skipped because another replica held the claim.",
                &self.busy,
            ),
            (
                "scheduler_tick_failures_total",
                "Ticks whose publish failed (retried with backoff).",
                &self.failed,
            ),
            (
                "scheduler_manual_jobs_total",
                "Manual jobs published by `trigger`.",
                &self.manual,
            ),
            (
                "scheduler_registry_reloads_total",
                "Tenant registry reloads that succeeded.",
                &self.registry_reloads,
            ),
            (
                "scheduler_registry_reload_failures_total",
                "Tenant registry reloads that failed (the previous registry was kept).",
                &self.registry_reload_failures,
            ),
        ];
        let mut out = String::new();
        for (name, help, value) in rows {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
                value.load(Ordering::Relaxed)
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_as_prometheus_text() {
        let m = Metrics::default();
        Metrics::add(&m.published, 3);
        let text = m.render();
        assert!(text.contains("# TYPE scheduler_ticks_published_total counter\nscheduler_ticks_published_total 3\n"), "{text}");
    }
}
