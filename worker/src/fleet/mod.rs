//! `worker run`: the queue consumer. It consumes its region's queue with a bounded prefetch (which
//! is also the number of jobs it runs at once), takes the tenant's lock, runs the pipeline and then
//! settles the delivery (see `disposition`). It reconnects after a broker restart or a consumer
//! cancelled by the broker, re-applying its prefetch and re-declaring the topology. On shutdown it
//! stops consuming, lets running jobs finish within the drain bound, stops the rest before their
//! next side effect and hands them back, releases its locks, and returns.

pub mod admission;
pub mod disposition;
pub mod events;
pub mod lock;
pub mod span;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties};
use shared::amqp::{HEADER_ATTEMPT, Topology, confirm_mode, header_u32};
use shared::health::Health;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::deps::Deps;
use crate::job::{JobContext, LockHold};
use crate::outcome::{JobError, Outcome, Retryable};
use crate::pipeline::process_job;
use admission::Admission;
use disposition::{Disposition, HEADER_BUSY_BOUNCES, HEADER_BUSY_SINCE, HEADER_HANDED_BACK};
pub use events::JobEvent;
pub use lock::Locks;

/// What the consumer needs besides the pipeline's `Deps`.
pub struct FleetDeps {
    pub amqp_url: String,
    pub topology: Topology,
    pub prefetch: u16,
    pub locks: Locks,
    pub redis: redis::aio::ConnectionManager,
    pub health: Arc<Health>,
    pub events: Option<mpsc::UnboundedSender<JobEvent>>,
    pub worker_id: String,
    pub job_timeout: Duration,
    pub drain_timeout: Duration,
}

impl std::fmt::Debug for FleetDeps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetDeps")
            .field("queue", &self.topology.queue)
            .field("prefetch", &self.prefetch)
            .field("worker_id", &self.worker_id)
            .finish_non_exhaustive()
    }
}

impl FleetDeps {
    /// Builds the consumer's clients from the settings (Redis connects lazily and reconnects by
    /// itself; the broker connection is made by `run`).
    pub fn from_settings(
        settings: &shared::settings::Settings,
        health: Arc<Health>,
        events: Option<mpsc::UnboundedSender<JobEvent>>,
        worker_id: String,
    ) -> anyhow::Result<Self> {
        let amqp_url = settings
            .amqp
            .url
            .expose()
            .ok_or_else(|| anyhow::anyhow!("amqp.url is not set"))?
            .to_owned();
        let redis_url = settings
            .redis
            .url
            .expose()
            .ok_or_else(|| anyhow::anyhow!("redis.url is not set"))?;
        let client =
            redis::Client::open(redis_url).map_err(|e| anyhow::anyhow!("redis.url: {e}"))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_max_delay(Duration::from_secs(5));
        let redis = redis::aio::ConnectionManager::new_lazy_with_config(client, config)?;
        let w = &settings.worker;
        let topology = Topology::new(
            &settings.amqp.exchange,
            &w.region,
            settings.amqp.delivery_limit,
            &settings.amqp.retry_delays,
        );
        Ok(Self {
            amqp_url,
            topology,
            prefetch: settings.amqp.prefetch,
            locks: Locks::new(redis.clone(), &settings.redis.key_prefix, w.lock_ttl),
            redis,
            health,
            events,
            worker_id,
            job_timeout: w.job_timeout,
            drain_timeout: w.drain_timeout,
        })
    }
}

/// Runs until `shutdown` fires, then drains and returns.
pub async fn run(deps: Arc<Deps>, fleet: Arc<FleetDeps>, shutdown: CancellationToken) {
    let pinger = tokio::spawn(ping_redis(fleet.clone(), shutdown.clone()));
    let registry_watch = tokio::spawn(watch_registry(deps.clone(), shutdown.clone()));
    let mut backoff = Duration::from_millis(500);
    while !shutdown.is_cancelled() {
        match session(&deps, &fleet, &shutdown).await {
            Ok(()) => break,
            Err(e) => {
                fleet.health.set_broker(false);
                deps.metrics.reconnect();
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "broker session ended; reconnecting");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(15));
            }
        }
    }
    fleet.health.set_draining();
    pinger.abort();
    registry_watch.abort();
}

/// Reads the registry again when its file changes (as the scheduler does), so a tenant's changed
/// entry applies to its next job; a job for a tenant not known yet reloads at once (admission).
async fn watch_registry(deps: Arc<Deps>, shutdown: CancellationToken) {
    let file = deps.settings.registry.file.clone();
    let modified = |f: &std::path::Path| std::fs::metadata(f).and_then(|m| m.modified()).ok();
    let mut seen = modified(&file);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(15)) => {}
        }
        let now = modified(&file);
        if now != seen && deps.reload_registry() {
            seen = now;
        }
    }
}

/// One broker connection: consume until shutdown (drain, `Ok`) or a broker failure (`Err`).
async fn session(
    deps: &Arc<Deps>,
    fleet: &Arc<FleetDeps>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let conn = Connection::connect(&fleet.amqp_url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.basic_qos(fleet.prefetch, BasicQosOptions::default())
        .await?;
    fleet.topology.declare(&ch).await?;
    let pub_ch = conn.create_channel().await?;
    confirm_mode(&pub_ch).await?;
    let tag = format!("{}-{}", fleet.worker_id, uuid::Uuid::new_v4().simple());
    let mut consumer = ch
        .basic_consume(
            fleet.topology.queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    fleet.health.set_broker(true);
    tracing::info!(
        queue = fleet.topology.queue,
        prefetch = fleet.prefetch,
        "consuming"
    );

    let tracker = TaskTracker::new();
    // Fires when this session's jobs must stop: the connection is gone (their acks cannot go
    // through, the broker redelivers), or the drain bound passed.
    let stop_jobs = CancellationToken::new();
    let result = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            next = consumer.next() => match next {
                None => break Err(anyhow::anyhow!("the broker cancelled the consumer")),
                Some(Err(e)) => break Err(e.into()),
                Some(Ok(delivery)) => {
                    let (deps, fleet, pub_ch) = (deps.clone(), fleet.clone(), pub_ch.clone());
                    let stop = stop_jobs.child_token();
                    let span = span::consumer_span(&fleet.topology, &delivery);
                    tracker.spawn(
                        async move { handle(&deps, &fleet, &pub_ch, delivery, stop).await }
                            .instrument(span),
                    );
                }
            }
        }
    };
    tracker.close();
    match &result {
        Ok(()) => {
            // Draining: take no more, let running jobs finish within the bound, then stop the
            // rest (they hand themselves back) and wait for them to settle.
            fleet.health.set_draining();
            let _ = ch
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                .await;
            if tokio::time::timeout(fleet.drain_timeout, tracker.wait())
                .await
                .is_err()
            {
                tracing::warn!("drain bound reached: stopping running jobs and handing them back");
                stop_jobs.cancel();
                let _ = tokio::time::timeout(Duration::from_secs(30), tracker.wait()).await;
            }
            let _ = conn.close(200, "worker shutting down".into()).await;
        }
        Err(_) => {
            stop_jobs.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(30), tracker.wait()).await;
        }
    }
    result
}

async fn ping_redis(fleet: Arc<FleetDeps>, shutdown: CancellationToken) {
    let mut conn = fleet.redis.clone();
    loop {
        let ok = tokio::time::timeout(
            Duration::from_secs(3),
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        fleet.health.set_redis(ok);
        // Notices a Redis data loss even before this worker takes a lock (see lock.rs).
        if ok && let Err(e) = fleet.locks.check_epoch().await {
            tracing::warn!(error = %e, "the lock epoch could not be checked");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// One delivery, from admission to its settlement.
async fn handle(
    deps: &Deps,
    fleet: &FleetDeps,
    pub_ch: &Channel,
    delivery: Delivery,
    stop: CancellationToken,
) {
    let attempt = header_u32(&delivery.properties, HEADER_ATTEMPT).unwrap_or(0);
    let mut event = JobEvent::new(&fleet.worker_id, &delivery);
    let disposition = match admission::admit(deps, fleet, &delivery, attempt, &mut event).await {
        Ok(admitted) => run_admitted(deps, fleet, admitted, attempt, &stop, &mut event).await,
        Err(refused) => refused,
    };
    if let Disposition::DeadLetter { reason, message } = &disposition {
        tracing::warn!(reason, message, "dead-lettering");
    }
    let landed =
        disposition::settle(pub_ch, &fleet.topology, &delivery, &disposition, attempt).await;
    if !landed {
        let kind = match disposition {
            Disposition::DeadLetter { .. } => "dead-letter",
            _ => "retry",
        };
        deps.metrics.publish_failure(kind);
    }
    event.settled(&disposition);
    deps.metrics.job(event.disposition, &event.reason);
    span::record_settled(&tracing::Span::current(), &disposition);
    if let Some(tx) = &fleet.events {
        let _ = tx.send(event);
    }
}

/// Runs an admitted job under its lock and decides how its delivery is settled.
async fn run_admitted(
    deps: &Deps,
    fleet: &FleetDeps,
    admitted: Admission,
    attempt: u32,
    stop: &CancellationToken,
    event: &mut JobEvent,
) -> Disposition {
    let Admission { job, lock } = admitted;
    // The job stops before its next side effect when the lock is lost, time is up, or the
    // session is stopping.
    let cancel = CancellationToken::new();
    let time_up = CancellationToken::new();
    let watcher = tokio::spawn(watch(
        [cancel.clone(), time_up.clone()],
        lock.lost(),
        stop.clone(),
        fleet.job_timeout,
    ));
    event.started = Some(Utc::now());
    let ctx = JobContext {
        job_id: job.job_id,
        trigger: job.trigger,
        scheduled_for: job.scheduled_for,
        cancel,
        time_up,
        fence: Some(lock.fence),
        lock: Some(LockHold {
            lease: lock.lease(),
            lost: lock.lost(),
        }),
        last_attempt: fleet.topology.retry_delay(attempt + 1).is_none(),
    };
    let result = process_job(deps, &job.tenant, ctx).await;
    event.ended = Some(Utc::now());
    watcher.abort();
    match lock.release().await {
        Ok(true) => {}
        Ok(false) => tracing::warn!("the tenant lock was no longer ours at release"),
        Err(e) => tracing::warn!(error = %e, "releasing the tenant lock failed; it will expire"),
    }
    after_job(&result, attempt, stop.is_cancelled(), &fleet.topology)
}

/// Cancels the job when its lock is lost, the worker stops it, or it runs past `limit` (then
/// `time_up` fires first, so the job ends `job-timeout`).
async fn watch(
    [cancel, time_up]: [CancellationToken; 2],
    lost: CancellationToken,
    stop: CancellationToken,
    limit: Duration,
) {
    tokio::select! {
        _ = lost.cancelled() => tracing::warn!("tenant lock lost: stopping the job"),
        _ = stop.cancelled() => tracing::info!("worker stopping: stopping the job"),
        _ = tokio::time::sleep(limit) => {
            tracing::warn!("job ran past its time limit: stopping it");
            time_up.cancel();
        }
    }
    cancel.cancel();
}

/// How a delivery is settled once its job ended. `stopping`: this worker's session is stopping
/// its jobs (shutdown, a lost broker connection).
pub fn after_job(
    result: &Result<Outcome, JobError>,
    attempt: u32,
    stopping: bool,
    topology: &Topology,
) -> Disposition {
    match result {
        // Found by the account's tick record: the same as a duplicate found in Redis (the
        // metric and the event say `duplicate`, reason `duplicate-tick`).
        Ok(Outcome::DuplicateTick { .. }) => Disposition::Duplicate,
        Ok(outcome) => Disposition::Done(outcome.label()),
        Err(JobError::Permanent(p)) => Disposition::DeadLetter {
            reason: p.reason(),
            message: p.to_string(),
        },
        // Shutdown or a lost connection: give it back now for another worker.
        Err(JobError::Retryable(Retryable::Cancelled)) if stopping => Disposition::HandBack {
            reason: "cancelled",
        },
        Err(JobError::Retryable(r)) => {
            let next = attempt + 1;
            match topology.retry_delay(next) {
                Some(delay) => {
                    tracing::info!(
                        reason = r.reason(),
                        attempt = next,
                        delay_ms = delay.as_millis() as u64,
                        "retrying later"
                    );
                    // A wait for the tenant starts afresh after a run.
                    let mut headers = vec![
                        (HEADER_ATTEMPT, AMQPValue::LongUInt(next)),
                        (HEADER_BUSY_BOUNCES, AMQPValue::LongUInt(0)),
                        (HEADER_BUSY_SINCE, AMQPValue::LongLongInt(0)),
                    ];
                    if matches!(r, Retryable::Cancelled) {
                        headers.push((HEADER_HANDED_BACK, AMQPValue::Boolean(true)));
                    }
                    Disposition::RetryLater {
                        delay,
                        reason: r.reason(),
                        headers,
                        failure: true,
                    }
                }
                None => Disposition::DeadLetter {
                    reason: r.reason(),
                    message: format!("gave up after {} attempts: {r}", attempt + 1),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Permanent;

    fn topology() -> Topology {
        Topology::new(
            "user-import",
            "eu",
            5,
            &[Duration::from_secs(1), Duration::from_secs(10)],
        )
    }

    #[test]
    fn a_worker_fault_is_retried_and_never_dead_lettered_as_the_tenants_file() {
        let fault = Err(Retryable::WorkerFault("import: a panic".into()).into());
        let d = after_job(&fault, 0, false, &topology());
        assert_eq!(d.label(), "retry-scheduled");
        assert_eq!(d.reason(), "worker-fault");
        assert!(d.is_failure());
        let bad_file = Err(Permanent::UnreadableFile("binary".into()).into());
        assert_eq!(
            after_job(&bad_file, 0, false, &topology()).reason(),
            "unreadable-file"
        );
    }

    #[test]
    fn a_job_past_its_time_limit_is_dead_lettered_as_job_timeout_and_a_duplicate_tick_acked() {
        let timed_out = Err(Permanent::JobTimeout(Duration::from_secs(2)).into());
        let d = after_job(&timed_out, 0, false, &topology());
        assert_eq!((d.label(), d.reason()), ("dead-lettered", "job-timeout"));
        let dup = Ok(Outcome::DuplicateTick {
            recorded_job: uuid::Uuid::nil(),
        });
        assert_eq!(
            after_job(&dup, 0, false, &topology()),
            Disposition::Duplicate
        );
    }

    #[test]
    fn a_handed_back_job_waits_for_its_tenant_as_long_as_a_running_job_can_hold_the_lock() {
        let (limit, ttl) = (Duration::from_secs(25 * 60), Duration::from_secs(60));
        assert!(admission::may_wait_again(Duration::ZERO, limit, ttl));
        assert!(admission::may_wait_again(limit + ttl, limit, ttl));
        assert!(!admission::may_wait_again(limit + 3 * ttl, limit, ttl));
    }

    #[test]
    fn a_redis_outage_waits_in_the_delay_queue_without_a_hand_back_or_a_dead_letter() {
        let d = admission::while_redis_is_down(&topology());
        assert_eq!(d.label(), "retry-scheduled");
        assert_eq!(d.reason(), "redis-unavailable");
        assert!(!d.is_failure());
        let Disposition::RetryLater { headers, .. } = d else {
            panic!("{d:?}")
        };
        assert!(
            headers.is_empty(),
            "comes back as it was: fresh, same attempt"
        );
    }

    #[test]
    fn a_retryable_failure_is_retried_until_the_delays_run_out_then_dead_lettered() {
        let down = Err(Retryable::Api("503".into()).into());
        assert_eq!(
            after_job(&down, 1, false, &topology()).label(),
            "retry-scheduled"
        );
        let last = after_job(&down, 2, false, &topology());
        assert_eq!(last.label(), "dead-lettered");
        assert_eq!(last.reason(), "api-unavailable");
    }

    #[test]
    fn a_job_stopped_by_its_worker_is_handed_back_and_an_outcome_acked() {
        let stopped = Err(Retryable::Cancelled.into());
        assert_eq!(
            after_job(&stopped, 0, true, &topology()),
            Disposition::HandBack {
                reason: "cancelled"
            }
        );
        let done = Ok(Outcome::NoFile);
        assert_eq!(
            after_job(&done, 0, false, &topology()),
            Disposition::Done("no-file")
        );
    }
}
