//! The scheduler proper: [`Scheduler::poll_at`] publishes the ticks due at a given time (the
//! single entry point the loop calls with `Utc::now()` and tests call with explicit times),
//! [`Scheduler::once_at`] and [`Scheduler::trigger`] back the subcommands, and the registry is
//! reloaded in place. The loop around it is in [`crate::run()`].

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, SubsecRound, Utc};
use futures::StreamExt;
use shared::TenantName;
use shared::health::Health;
use shared::job::{JobV1, Trigger};
use shared::registry::{Registry, RegistryError, Tenant};
use shared::secret::Secret;
use shared::settings::Settings;
use shared::telemetry;
use tracing::Instrument;
use uuid::Uuid;

use crate::error::SchedulerError;
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::options::Options;
use crate::publisher::{Publisher, PublisherConfig};
use crate::report::{NextTick, PollReport, TickFailure};
use crate::ticks;

enum TickOutcome {
    Published(JobV1),
    Busy,
    AlreadyPublished,
}

/// One scheduler replica: its registry, its Redis ledger and its broker connection.
pub struct Scheduler {
    options: Options,
    registry: RwLock<Arc<Registry>>,
    registry_mtime: Mutex<Option<SystemTime>>,
    publisher: Publisher,
    ledger: Ledger,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("options", &self.options)
            .field("publisher", &self.publisher)
            .field("ledger", &self.ledger)
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    /// Builds a scheduler without connecting anything ([`Scheduler::connect`] or the loop does).
    pub fn new(
        options: Options,
        amqp_url: &Secret,
        redis_url: &Secret,
        registry: Registry,
        health: Arc<Health>,
    ) -> Result<Self, SchedulerError> {
        options.validate()?;
        let regions = if options.regions.is_empty() {
            registry_regions(&registry)
        } else {
            options.regions.clone()
        };
        let publisher = Publisher::new(
            PublisherConfig {
                url: amqp_url.clone(),
                exchange: options.exchange.clone(),
                delivery_limit: options.delivery_limit,
                retry_delays: options.retry_delays.clone(),
                regions,
                connect_timeout: options.connect_timeout,
                publish_timeout: options.publish_timeout,
            },
            health.clone(),
        );
        let ledger = Ledger::new(
            redis_url,
            &options.key_prefix,
            options.claim_ttl,
            options.catch_up_window,
            options.redis_timeout,
            health.clone(),
        )?;
        Ok(Self {
            registry_mtime: Mutex::new(modified(registry.path())),
            registry: RwLock::new(Arc::new(registry)),
            options,
            publisher,
            ledger,
            health,
            metrics: Arc::new(Metrics::default()),
        })
    }

    /// [`Scheduler::new`] with everything taken from the settings.
    pub fn from_settings(
        settings: &Settings,
        registry: Registry,
        health: Arc<Health>,
    ) -> Result<Self, SchedulerError> {
        Self::new(
            Options::from_settings(settings)?,
            &settings.amqp.url,
            &settings.redis.url,
            registry,
            health,
        )
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The registry in use (a reload swaps it; holders of the old one keep it).
    pub fn registry(&self) -> Arc<Registry> {
        match self.registry.read() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// One bounded attempt at each connection: the broker (topology declared) and Redis.
    pub async fn connect(&self) -> Result<(), SchedulerError> {
        self.publisher.connect().await?;
        self.ledger.ping().await
    }

    /// Closes the broker connection.
    pub async fn close(&self) {
        self.publisher.close().await;
    }

    fn scheduled_tenants<'r>(&self, registry: &'r Registry) -> Vec<&'r Tenant> {
        registry
            .tenants()
            .filter(|t| t.enabled && self.options.serves(&t.region))
            .collect()
    }

    /// Publishes every tick due at `now` (see [`crate::ticks`]): at most one job per enabled
    /// tenant of the served regions, deduplicated across replicas and restarts through the
    /// ledger. Per-tenant failures are in the report (their claims released, retried by the
    /// next poll); an error means nothing could be tried (Redis or the broker unreachable).
    pub async fn poll_at(&self, now: DateTime<Utc>) -> Result<PollReport, SchedulerError> {
        let span = poll_span("schedule");
        let result = self.poll(now).instrument(span.clone()).await;
        record_poll(&span, &result);
        if result.is_ok() {
            self.metrics.poll_succeeded(Utc::now());
        }
        result
    }

    async fn poll(&self, now: DateTime<Utc>) -> Result<PollReport, SchedulerError> {
        Metrics::add(&self.metrics.polls, 1);
        let registry = self.registry();
        let window = self.options.catch_up_window;
        let candidates: Vec<&Tenant> = self
            .scheduled_tenants(&registry)
            .into_iter()
            .filter(|t| ticks::due_tick(&t.schedule, now, window, None).is_some())
            .collect();
        let mut report = PollReport::default();
        let mut due = Vec::new();
        let names: Vec<&TenantName> = candidates.iter().map(|t| &t.name).collect();
        for (tenant, last) in candidates.iter().zip(self.ledger.last_ticks(&names).await?) {
            match last {
                Ok(last) => {
                    if let Some(tick) = ticks::due_tick(&tenant.schedule, now, window, last) {
                        due.push(((*tenant).clone(), tick));
                    }
                }
                Err(error) => report.failed.push(TickFailure {
                    tenant: tenant.name.clone(),
                    tick: None,
                    error,
                }),
            }
        }
        self.publish_ticks(due, &mut report).await?;
        Ok(report)
    }

    /// `scheduler once`: one round now for every enabled tenant of the served regions, with the
    /// tick = `now` to the second, deduplicated like scheduled ticks (two rounds in the same
    /// second publish once).
    pub async fn once_at(&self, now: DateTime<Utc>) -> Result<PollReport, SchedulerError> {
        let span = poll_span("once");
        let result = self.once(now).instrument(span.clone()).await;
        record_poll(&span, &result);
        result
    }

    async fn once(&self, now: DateTime<Utc>) -> Result<PollReport, SchedulerError> {
        let tick = ticks::round_tick(now);
        let registry = self.registry();
        let tenants = self.scheduled_tenants(&registry);
        let names: Vec<&TenantName> = tenants.iter().map(|t| &t.name).collect();
        let mut report = PollReport::default();
        let mut due = Vec::new();
        for (tenant, last) in tenants.iter().zip(self.ledger.last_ticks(&names).await?) {
            match last {
                Ok(Some(last)) if last >= tick => {
                    report.already_published.push((tenant.name.clone(), tick))
                }
                Ok(_) => due.push(((*tenant).clone(), tick)),
                Err(error) => report.failed.push(TickFailure {
                    tenant: tenant.name.clone(),
                    tick: Some(tick),
                    error,
                }),
            }
        }
        self.publish_ticks(due, &mut report).await?;
        Ok(report)
    }

    async fn publish_ticks(
        &self,
        due: Vec<(Tenant, DateTime<Utc>)>,
        report: &mut PollReport,
    ) -> Result<(), SchedulerError> {
        if !due.is_empty() {
            // One bounded attempt; publishing itself never connects.
            self.publisher.connect().await?;
        }
        let poll = tracing::Span::current();
        let outcomes: Vec<_> = futures::stream::iter(due)
            .map(|(tenant, tick)| {
                let span = tick_span(&tenant, tick, &poll);
                async move {
                    let outcome = self
                        .publish_tick(&tenant, tick)
                        .instrument(span.clone())
                        .await;
                    record_tick(&span, &outcome);
                    (tenant.name, tick, outcome)
                }
            })
            .buffer_unordered(self.options.publish_concurrency)
            .collect()
            .await;
        for (tenant, tick, outcome) in outcomes {
            match outcome {
                Ok(TickOutcome::Published(job)) => {
                    report.published.push((tenant, tick));
                    report.jobs.push(job);
                }
                Ok(TickOutcome::Busy) => report.busy.push((tenant, tick)),
                Ok(TickOutcome::AlreadyPublished) => report.already_published.push((tenant, tick)),
                Err(error) => report.failed.push(TickFailure {
                    tenant,
                    tick: Some(tick),
                    error,
                }),
            }
        }
        Metrics::add(&self.metrics.published, report.published.len());
        Metrics::add(&self.metrics.busy, report.busy.len());
        Metrics::add(&self.metrics.failed, report.failed.len());
        report.sort();
        Ok(())
    }

    /// Claim, re-read `last`, publish, commit: the protocol of the crate docs for one tick.
    async fn publish_tick(
        &self,
        tenant: &Tenant,
        tick: DateTime<Utc>,
    ) -> Result<TickOutcome, SchedulerError> {
        let Some(claim) = self.ledger.claim(&tenant.name, tick).await? else {
            tracing::debug!("another replica holds the claim");
            return Ok(TickOutcome::Busy);
        };
        match self.ledger.last_tick(&tenant.name).await {
            Ok(Some(last)) if last >= tick => {
                self.release(&claim).await;
                return Ok(TickOutcome::AlreadyPublished);
            }
            Ok(_) => {}
            Err(e) => {
                self.release(&claim).await;
                return Err(e);
            }
        }
        let job = JobV1 {
            job_id: Uuid::new_v4(),
            tenant: tenant.name.to_string(),
            region: tenant.region.to_string(),
            scheduled_for: tick,
            trigger: Trigger::Schedule,
        };
        if let Err(e) = self.publisher.publish(&job).await {
            tracing::warn!(error = %e, "publish failed; the tick will be retried");
            self.release(&claim).await;
            return Err(e);
        }
        tracing::info!(job_id = %job.job_id, message_id = %job.message_id(), "job published");
        self.commit(&claim).await;
        Ok(TickOutcome::Published(job))
    }

    /// Gives a claim back; if that fails, the claim expires by itself after its TTL.
    async fn release(&self, claim: &crate::ledger::Claim) {
        if let Err(e) = self.ledger.release(claim).await {
            tracing::warn!(error = %e, ttl = ?self.ledger.claim_ttl(), "could not release the claim; it expires by itself");
        }
    }

    /// Records a published tick. Retried a few times: until it lands, another replica may
    /// publish the tick again once the claim expires (the window the crate docs describe).
    async fn commit(&self, claim: &crate::ledger::Claim) {
        let mut delay = Duration::from_millis(200);
        for attempt in 1..=3 {
            match self.ledger.commit(claim).await {
                Ok(true) => return,
                Ok(false) => {
                    tracing::warn!(
                        "the claim expired before the commit: another replica may have published this tick too"
                    );
                    return;
                }
                Err(e) if attempt < 3 => {
                    tracing::warn!(attempt, error = %e, "cannot record the published tick; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => {
                    tracing::error!(error = %e, "published, but cannot record it: the tick may be published a second time once the claim expires");
                }
            }
        }
    }

    /// `scheduler trigger`: a manual job for `tenant` now, not deduplicated. Allowed for a
    /// disabled tenant (that is how an operator runs one by hand) and for a region this replica
    /// does not serve on schedule (its topology is declared first).
    pub async fn trigger(&self, tenant: &str, now: DateTime<Utc>) -> Result<JobV1, SchedulerError> {
        let registry = self.registry();
        let tenant = registry
            .get(tenant)
            .ok_or_else(|| SchedulerError::UnknownTenant(tenant.chars().take(64).collect()))?;
        self.publisher.serve_region(tenant.region.as_str()).await?;
        self.publisher.connect().await?;
        let job = JobV1 {
            job_id: Uuid::new_v4(),
            tenant: tenant.name.to_string(),
            region: tenant.region.to_string(),
            scheduled_for: now.trunc_subsecs(3),
            trigger: Trigger::Manual,
        };
        self.publisher.publish(&job).await?;
        Metrics::add(&self.metrics.manual, 1);
        tracing::info!(tenant = %job.tenant, job_id = %job.job_id, message_id = %job.message_id(), "manual job published");
        Ok(job)
    }

    /// Every tenant's next tick after `now` (no broker, no Redis).
    pub fn next_ticks(&self, now: DateTime<Utc>) -> Vec<NextTick> {
        next_ticks(&self.registry(), &self.options, now)
    }

    /// How long the loop may sleep after a poll at `now`: until the earliest next tick of the
    /// tenants it publishes for, at most `max_poll_interval`.
    pub fn poll_delay(&self, now: DateTime<Utc>) -> Duration {
        let registry = self.registry();
        let earliest = self
            .scheduled_tenants(&registry)
            .iter()
            .filter_map(|t| ticks::next_tick(&t.schedule, now))
            .min();
        ticks::poll_delay(earliest, now, self.options.max_poll_interval)
    }

    /// Loads the registry file again and swaps it in; on error the previous one stays. Returns
    /// the number of tenants loaded.
    pub async fn reload_registry(&self) -> Result<usize, RegistryError> {
        let path = self.registry().path().to_owned();
        self.set_mtime(modified(&path));
        let registry = match Registry::load(&path) {
            Ok(r) => r,
            Err(e) => {
                Metrics::add(&self.metrics.registry_reload_failures, 1);
                return Err(e);
            }
        };
        if self.options.regions.is_empty() {
            for region in registry_regions(&registry) {
                // Declared now or at the next connection; a failure here is retried there.
                if let Err(e) = self.publisher.serve_region(&region).await {
                    tracing::warn!(region, error = %e, "cannot declare the topology of a new region yet");
                }
            }
        }
        let count = registry.len();
        match self.registry.write() {
            Ok(mut r) => *r = Arc::new(registry),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(registry),
        }
        Metrics::add(&self.metrics.registry_reloads, 1);
        Ok(count)
    }

    /// Reloads the registry when its file's modification time changed since the last load
    /// (attempted or not); `None` when it did not.
    pub async fn reload_if_changed(&self) -> Option<Result<usize, RegistryError>> {
        let path = self.registry().path().to_owned();
        let now = modified(&path);
        let before = match self.registry_mtime.lock() {
            Ok(m) => *m,
            Err(poisoned) => *poisoned.into_inner(),
        };
        if now == before {
            return None;
        }
        Some(self.reload_registry().await)
    }

    fn set_mtime(&self, mtime: Option<SystemTime>) {
        match self.registry_mtime.lock() {
            Ok(mut m) => *m = mtime,
            Err(poisoned) => *poisoned.into_inner() = mtime,
        }
    }
}

/// The span of one poll (or `once` round): a trace of its own, with what it did.
fn poll_span(mode: &'static str) -> tracing::Span {
    tracing::info_span!(
        "poll",
        mode,
        published = tracing::field::Empty,
        busy = tracing::field::Empty,
        already_published = tracing::field::Empty,
        failed = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
        error.type = tracing::field::Empty,
    )
}

fn record_poll(span: &tracing::Span, result: &Result<PollReport, SchedulerError>) {
    match result {
        Ok(r) => {
            span.record("published", r.published.len());
            span.record("busy", r.busy.len());
            span.record("already_published", r.already_published.len());
            span.record("failed", r.failed.len());
        }
        Err(e) => telemetry::record_error(span, e.kind(), &e.to_string()),
    }
}

/// The span of one tenant's tick: the root of the job's trace (one trace per job, continued by
/// the worker through the message's `traceparent`), linked to the poll that found it due.
fn tick_span(tenant: &Tenant, tick: DateTime<Utc>, poll: &tracing::Span) -> tracing::Span {
    let span = tracing::info_span!(
        parent: None,
        "tick",
        tenant = %tenant.name,
        region = %tenant.region,
        tick = %tick.to_rfc3339(),
        outcome = tracing::field::Empty,
        job_id = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
        error.type = tracing::field::Empty,
    );
    span.follows_from(poll);
    if let Some(id) = telemetry::propagation::trace_id(&span) {
        span.record("trace_id", id);
    }
    span
}

fn record_tick(span: &tracing::Span, outcome: &Result<TickOutcome, SchedulerError>) {
    match outcome {
        Ok(TickOutcome::Published(job)) => {
            span.record("outcome", "published");
            span.record("job_id", job.job_id.to_string());
        }
        Ok(TickOutcome::Busy) => {
            span.record("outcome", "busy");
        }
        Ok(TickOutcome::AlreadyPublished) => {
            span.record("outcome", "already-published");
        }
        Err(e) => {
            span.record("outcome", "failed");
            telemetry::record_error(span, e.kind(), &e.to_string());
        }
    }
}

/// Every tenant's next tick after `now`, sorted by tenant.
pub fn next_ticks(registry: &Registry, options: &Options, now: DateTime<Utc>) -> Vec<NextTick> {
    registry
        .tenants()
        .map(|t| NextTick {
            tenant: t.name.clone(),
            region: t.region.to_string(),
            enabled: t.enabled,
            served: options.serves(&t.region),
            next: ticks::next_tick(&t.schedule, now),
            schedule: t.schedule.expr().to_owned(),
            description: t.schedule.describe(),
        })
        .collect()
}

/// The distinct regions of the registry's tenants.
fn registry_regions(registry: &Registry) -> Vec<String> {
    let mut regions: Vec<String> = registry.tenants().map(|t| t.region.to_string()).collect();
    regions.sort();
    regions.dedup();
    regions
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant_toml(name: &str, extra: &str) -> String {
        format!(
            r#"
[[tenant]]
name = "{name}"
region = "eu"
portal_domain = "{name}.learning-admin.com"
api_base_url = "https://api.learning-admin.com/eu"
ftps_host = "ftp-eu.learning-admin.com"
admin = {{ username = "admin", email = "admin@{name}.example" }}
{extra}
"#
        )
    }

    fn scheduler(path: &Path) -> Scheduler {
        let registry = Registry::load(path).unwrap_or_else(|e| panic!("{e}"));
        let settings = Settings::default();
        Scheduler::from_settings(&settings, registry, Arc::new(Health::default()))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The loop and the tests run these on spawned tasks.
    #[allow(dead_code)]
    fn the_entry_points_are_send(s: &Scheduler, reload: &tokio::sync::Notify) {
        fn send<T: Send>(_: T) {}
        let now = Utc::now();
        send(s.poll_at(now));
        send(s.once_at(now));
        send(s.trigger("acme", now));
        send(crate::run(
            s,
            reload,
            tokio_util::sync::CancellationToken::new(),
        ));
    }

    #[tokio::test]
    async fn a_registry_that_fails_to_reload_keeps_the_previous_one() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("tenants.toml");
        std::fs::write(&path, tenant_toml("acme", "")).unwrap_or_else(|e| panic!("{e}"));
        let s = scheduler(&path);
        assert_eq!(s.registry().len(), 1);
        assert!(s.reload_if_changed().await.is_none(), "unchanged file");

        std::fs::write(&path, tenant_toml("acme", r#"schedule = "61 * * * *""#))
            .unwrap_or_else(|e| panic!("{e}"));
        let err = match s.reload_registry().await {
            Err(e) => e,
            Ok(n) => panic!("a broken registry loaded ({n} tenants)"),
        };
        assert_eq!(err.tenant.as_deref(), Some("acme"));
        assert_eq!(err.field.as_deref(), Some("schedule"));
        assert!(
            s.registry().get("acme").is_some(),
            "the previous registry stays"
        );

        let two = format!(
            "{}{}",
            tenant_toml("acme", ""),
            tenant_toml("beta", r#"enabled = false"#)
        );
        std::fs::write(&path, two).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.reload_registry().await.ok(), Some(2));
        assert!(s.registry().get("beta").is_some());
    }

    #[tokio::test]
    async fn next_lists_every_tenant_with_its_schedule_and_the_loop_sleeps_until_the_earliest() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("tenants.toml");
        let text = format!(
            "{}{}",
            tenant_toml("acme", r#"schedule = "0 * * * *""#),
            tenant_toml(
                "beta",
                r#"schedule = "* * * * * *"
enabled = false"#
            )
        );
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        let s = scheduler(&path);
        let now = DateTime::parse_from_rfc3339("2026-03-05T10:59:50Z")
            .map(|d| d.with_timezone(&Utc))
            .unwrap_or_else(|e| panic!("{e}"));
        let next = s.next_ticks(now);
        assert_eq!(next.len(), 2);
        assert_eq!(next[0].tenant.as_str(), "acme");
        assert_eq!(
            next[0].next.map(|t| t.to_rfc3339()).as_deref(),
            Some("2026-03-05T11:00:00+00:00")
        );
        assert!(!next[1].enabled);
        // The disabled tenant's every-minute schedule does not wake the loop.
        assert_eq!(
            s.poll_delay(now),
            Duration::from_secs(10) + Duration::from_millis(10)
        );
    }
}
