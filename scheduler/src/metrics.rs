//! Counters of the scheduler, rendered in the OpenMetrics text format on `/metrics`
//! (`prometheus-client`; a counter registered as `x` is exposed as `x_total`).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
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
        Self {
            registry,
            polls,
            published,
            busy,
            failed,
            manual,
            registry_reloads,
            registry_reload_failures,
        }
    }
}

impl Metrics {
    pub fn add(counter: &Counter, n: usize) {
        counter.inc_by(n as u64);
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
}
