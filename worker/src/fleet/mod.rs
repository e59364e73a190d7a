//! `worker run`: the queue consumer. It consumes its region's queue with a bounded prefetch (which
//! is also the number of jobs it runs at once), takes the tenant's lock, runs the pipeline and then
//! settles the delivery (see `disposition`). It reconnects after a broker restart or a consumer
//! cancelled by the broker, re-applying its prefetch and re-declaring the topology. On shutdown it
//! stops consuming, lets running jobs finish within the drain bound, stops the rest before their
//! next side effect and hands them back, releases its locks, and returns.

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
use shared::amqp::{HEADER_ATTEMPT, Topology, confirm_mode, header_str, header_u32};
use shared::health::Health;
use shared::job::{JobMessage, Trigger};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::outcome::{JobError, Permanent, Retryable};
use crate::pipeline::{Deps, JobContext, process_job};
use disposition::{HEADER_BUSY_BOUNCES, HEADER_HANDED_BACK};
pub use events::JobEvent;
pub use lock::Locks;

/// How many times a handed-back job may find its tenant locked before it is dead-lettered.
const MAX_BUSY_BOUNCES: u32 = 20;

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
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// The delivery is settled: counted, recorded on its span, reported to the observers.
fn emit(deps: &Deps, fleet: &FleetDeps, event: JobEvent) {
    deps.metrics.job(event.disposition, &event.reason);
    span::record_settled(&tracing::Span::current(), &event);
    if let Some(tx) = &fleet.events {
        let _ = tx.send(event);
    }
}

/// One delivery, from decoding to its settlement.
async fn handle(
    deps: &Deps,
    fleet: &FleetDeps,
    pub_ch: &Channel,
    delivery: Delivery,
    stop: CancellationToken,
) {
    let topo = &fleet.topology;
    let attempt = header_u32(&delivery.properties, HEADER_ATTEMPT).unwrap_or(0);
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_default();
    let mut event = JobEvent {
        worker_id: fleet.worker_id.clone(),
        tenant: String::new(),
        job_id: String::new(),
        message_id,
        started: None,
        ended: None,
        disposition: "dead-lettered",
        reason: String::new(),
    };

    let job = match JobMessage::decode(&delivery.data) {
        Ok(JobMessage::V1(job)) => job,
        Err(e) => {
            tracing::warn!(error = %e, "poison message: dead-lettering");
            let landed = disposition::dead_letter(
                pub_ch,
                topo,
                &delivery,
                "bad-message",
                &e.to_string(),
                attempt,
            )
            .await;
            count_publish(deps, landed, "dead-letter");
            event.reason = "bad-message".into();
            return emit(deps, fleet, event);
        }
    };
    event.tenant = job.tenant.chars().take(64).collect();
    event.job_id = job.job_id.to_string();
    let span = tracing::Span::current();
    span.record("tenant", event.tenant.as_str());
    span.record("job_id", event.job_id.as_str());
    span.record("attempt", attempt);

    // Refuse what cannot be this worker's, before touching any lock.
    let refusal = if job.region != topo.region {
        Some((
            "wrong-region",
            format!("job for region {:?} on queue {}", job.region, topo.queue),
        ))
    } else {
        match deps.registry().get(&job.tenant) {
            None => Some((
                "unknown-tenant",
                format!("no tenant {:?} in the registry", event.tenant),
            )),
            Some(t) if !t.enabled && job.trigger == Trigger::Schedule => {
                Some(("disabled-tenant", format!("tenant {} is disabled", t.name)))
            }
            Some(t) if t.region.as_str() != topo.region => Some((
                "wrong-region",
                format!("tenant {} belongs to region {}", t.name, t.region),
            )),
            Some(_) => None,
        }
    };
    if let Some((reason, message)) = refusal {
        tracing::warn!(reason, message, "job refused: dead-lettering");
        let landed =
            disposition::dead_letter(pub_ch, topo, &delivery, reason, &message, attempt).await;
        count_publish(deps, landed, "dead-letter");
        event.reason = reason.into();
        return emit(deps, fleet, event);
    }

    // A scheduled tick published twice (a scheduler replica died between its publish and its
    // commit, and another published the tick again) runs once: the first fresh delivery of the
    // tick records its job id, and a fresh delivery of the same tick with another job id is a
    // duplicate. Redeliveries, hand-backs and retries of the recorded job are not fresh.
    let fresh = attempt == 0 && !delivery.redelivered && !handed_back(&delivery);
    if job.trigger == Trigger::Schedule && fresh {
        match fleet
            .locks
            .claim_tick(&job.tenant, job.scheduled_for, &event.job_id)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!("this tick of the tenant was already delivered: duplicate, dropped");
                disposition::ack(&delivery).await;
                event.disposition = "duplicate";
                event.reason = "duplicate-tick".into();
                return emit(deps, fleet, event);
            }
            Err(e) => {
                fleet.health.set_redis(false);
                tracing::warn!(error = %e, "cannot reach Redis for the tick record: handing back");
                tokio::time::sleep(Duration::from_secs(1)).await;
                disposition::hand_back(&delivery).await;
                event.disposition = "handed-back";
                event.reason = "redis-unavailable".into();
                return emit(deps, fleet, event);
            }
        }
    }

    let guard = match fleet.locks.acquire(&job.tenant).await {
        Ok(Some(g)) => g,
        Ok(None) => {
            busy(deps, fleet, pub_ch, &delivery, attempt, &mut event).await;
            return emit(deps, fleet, event);
        }
        Err(e) => {
            fleet.health.set_redis(false);
            tracing::warn!(error = %e, "cannot reach Redis for the tenant lock: handing back");
            tokio::time::sleep(Duration::from_secs(1)).await;
            disposition::hand_back(&delivery).await;
            event.disposition = "handed-back";
            event.reason = "redis-unavailable".into();
            return emit(deps, fleet, event);
        }
    };

    // The job stops before its next side effect when the lock is lost, time is up, or the
    // session is stopping.
    let cancel = CancellationToken::new();
    let watcher = {
        let (cancel, lost, stop, limit) = (
            cancel.clone(),
            guard.lost(),
            stop.clone(),
            fleet.job_timeout,
        );
        tokio::spawn(async move {
            tokio::select! {
                _ = lost.cancelled() => tracing::warn!("tenant lock lost: stopping the job"),
                _ = stop.cancelled() => tracing::info!("worker stopping: stopping the job"),
                _ = tokio::time::sleep(limit) => tracing::warn!("job ran past its time limit: stopping it"),
            }
            cancel.cancel();
        })
    };
    if guard.fence == 1 {
        // A new fence counter: the tenant's first lock on this Redis, ever or since Redis lost
        // its data (a restart without persistence). In the second case a holder from before may
        // still be running until its next renewal finds its lock gone; one TTL from now every
        // such holder has stopped (its renewal failed, or its lease ran out). Waiting costs one
        // TTL once per tenant.
        let ttl = fleet.locks.ttl();
        tracing::info!(
            wait_ms = ttl.as_millis() as u64,
            "first lock of this tenant on this Redis: waiting one lock TTL before starting"
        );
        tokio::select! {
            _ = tokio::time::sleep(ttl) => {}
            _ = cancel.cancelled() => {}
        }
    }
    event.started = Some(Utc::now());
    let ctx = JobContext {
        job_id: job.job_id,
        trigger: job.trigger,
        cancel,
        fence: Some(guard.fence),
        lease: Some(guard.lease()),
    };
    let result = process_job(deps, &job.tenant, ctx).await;
    event.ended = Some(Utc::now());
    watcher.abort();
    match guard.release().await {
        Ok(true) => {}
        Ok(false) => tracing::warn!("the tenant lock was no longer ours at release"),
        Err(e) => tracing::warn!(error = %e, "releasing the tenant lock failed; it will expire"),
    }

    match result {
        Ok(outcome) => {
            disposition::ack(&delivery).await;
            event.disposition = outcome.label();
            event.reason = outcome.label().into();
        }
        Err(JobError::Permanent(p)) => {
            dead_letter_permanent(deps, fleet, pub_ch, &delivery, &p, attempt).await;
            event.reason = p.reason().into();
        }
        Err(JobError::Retryable(Retryable::Cancelled)) if stop.is_cancelled() => {
            // Shutdown or a lost connection: give it back now for another worker.
            disposition::hand_back(&delivery).await;
            event.disposition = "handed-back";
            event.reason = "cancelled".into();
        }
        Err(JobError::Retryable(r)) => {
            let next = attempt + 1;
            event.reason = r.reason().into();
            match topo.retry_delay(next) {
                Some(delay) => {
                    tracing::info!(
                        reason = r.reason(),
                        attempt = next,
                        delay_ms = delay.as_millis() as u64,
                        "retrying later"
                    );
                    let handed_back = matches!(r, Retryable::Cancelled);
                    let mut headers = vec![(HEADER_ATTEMPT, AMQPValue::LongUInt(next))];
                    if handed_back {
                        headers.push((HEADER_HANDED_BACK, AMQPValue::Boolean(true)));
                    }
                    let landed =
                        disposition::retry_later(pub_ch, topo, &delivery, delay, &headers).await;
                    count_publish(deps, landed, "retry");
                    event.disposition = "retry-scheduled";
                }
                None => {
                    let why = format!("gave up after {} attempts: {r}", attempt + 1);
                    let landed = disposition::dead_letter(
                        pub_ch,
                        topo,
                        &delivery,
                        r.reason(),
                        &why,
                        attempt,
                    )
                    .await;
                    count_publish(deps, landed, "dead-letter");
                    event.disposition = "dead-lettered";
                }
            }
        }
    }
    emit(deps, fleet, event);
}

/// Whether the delivery carries the hand-back mark (it was in progress somewhere before).
fn handed_back(delivery: &Delivery) -> bool {
    header_str(&delivery.properties, HEADER_HANDED_BACK).is_some()
        || matches!(
            shared::amqp::header(&delivery.properties, HEADER_HANDED_BACK),
            Some(AMQPValue::Boolean(true))
        )
}

/// A retry or dead letter that the broker did not confirm (the delivery was handed back).
fn count_publish(deps: &Deps, landed: bool, kind: &'static str) {
    if !landed {
        deps.metrics.publish_failure(kind);
    }
}

async fn dead_letter_permanent(
    deps: &Deps,
    fleet: &FleetDeps,
    pub_ch: &Channel,
    delivery: &Delivery,
    p: &Permanent,
    attempt: u32,
) {
    tracing::warn!(reason = p.reason(), error = %p, "permanent failure: dead-lettering");
    let landed = disposition::dead_letter(
        pub_ch,
        &fleet.topology,
        delivery,
        p.reason(),
        &p.to_string(),
        attempt,
    )
    .await;
    count_publish(deps, landed, "dead-letter");
}

/// The tenant is locked. A fresh job is redundant with the one running: `skipped-busy`. A job that
/// was already in progress somewhere (redelivered after a crash, handed back) must not be
/// dropped: it waits in the first delay queue and tries again, a bounded number of times.
async fn busy(
    deps: &Deps,
    fleet: &FleetDeps,
    pub_ch: &Channel,
    delivery: &Delivery,
    attempt: u32,
    event: &mut JobEvent,
) {
    if !(delivery.redelivered || handed_back(delivery)) {
        tracing::info!("tenant busy with another job: skipped");
        deps.metrics.lock_contention("skipped-busy");
        disposition::ack(delivery).await;
        event.disposition = "skipped-busy";
        event.reason = "busy".into();
        return;
    }
    let bounces = header_u32(&delivery.properties, HEADER_BUSY_BOUNCES).unwrap_or(0) + 1;
    let delay = fleet.topology.retry_delays.first().copied();
    match delay {
        Some(delay) if bounces <= MAX_BUSY_BOUNCES => {
            tracing::info!(
                bounces,
                "tenant still locked for a handed-back job: waiting"
            );
            deps.metrics.lock_contention("bounced");
            let landed = disposition::retry_later(
                pub_ch,
                &fleet.topology,
                delivery,
                delay,
                &[
                    (HEADER_HANDED_BACK, AMQPValue::Boolean(true)),
                    (HEADER_BUSY_BOUNCES, AMQPValue::LongUInt(bounces)),
                ],
            )
            .await;
            count_publish(deps, landed, "retry");
            event.disposition = "retry-scheduled";
            event.reason = "busy".into();
        }
        _ => {
            deps.metrics.lock_contention("gave-up");
            let landed = disposition::dead_letter(
                pub_ch,
                &fleet.topology,
                delivery,
                "tenant-locked-too-long",
                "the tenant stayed locked through every wait",
                attempt,
            )
            .await;
            count_publish(deps, landed, "dead-letter");
            event.disposition = "dead-lettered";
            event.reason = "tenant-locked-too-long".into();
        }
    }
}
