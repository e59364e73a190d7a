//! Admission of a delivery: decode it, refuse what cannot be this worker's, record a scheduled
//! tick's first delivery, take the tenant's lock. The result is an [`Admission`] (the job may
//! run) or the [`Disposition`] that settles the delivery without running anything.

use lapin::message::Delivery;
use lapin::types::AMQPValue;
use shared::amqp::{header, header_str, header_u32};
use shared::job::{JobMessage, JobV1, Trigger};

use super::FleetDeps;
use super::disposition::{Disposition, HEADER_BUSY_BOUNCES, HEADER_BUSY_SINCE, HEADER_HANDED_BACK};
use super::events::JobEvent;
use super::lock::LockGuard;
use crate::deps::Deps;

/// A delivery whose job may run: its tenant is locked for it.
#[derive(Debug)]
pub struct Admission {
    pub job: JobV1,
    pub lock: LockGuard,
}

/// Decides whether `delivery` may run; fills in the event's tenant and job id on the way.
pub async fn admit(
    deps: &Deps,
    fleet: &FleetDeps,
    delivery: &Delivery,
    attempt: u32,
    event: &mut JobEvent,
) -> Result<Admission, Disposition> {
    let job = match JobMessage::decode(&delivery.data) {
        Ok(JobMessage::V1(job)) => job,
        Err(e) => {
            tracing::warn!(error = %e, "poison message: dead-lettering");
            return Err(Disposition::DeadLetter {
                reason: "bad-message",
                message: e.to_string(),
            });
        }
    };
    event.tenant = job.tenant.chars().take(64).collect();
    event.job_id = job.job_id.to_string();
    let span = tracing::Span::current();
    span.record("tenant", event.tenant.as_str());
    span.record("job_id", event.job_id.as_str());
    span.record("attempt", attempt);

    // A tenant added to the registry since this worker read it: read it again before refusing
    // (the scheduler publishes a new tenant's first job once it has read the same file).
    if job.region == fleet.topology.region
        && deps.registry().get(&job.tenant).is_none()
        && deps.reload_registry()
    {
        tracing::info!("the job's tenant was not known: the registry was read again");
    }
    if let Some(refused) = refusal(deps, fleet, &job) {
        tracing::warn!(reason = refused.reason(), "job refused: dead-lettering");
        return Err(refused);
    }
    claim_tick(fleet, delivery, attempt, &job).await?;
    match fleet.locks.acquire(&job.tenant).await {
        Ok(Some(lock)) => Ok(Admission { job, lock }),
        Ok(None) => Err(busy(deps, fleet, delivery)),
        Err(e) => Err(redis_unavailable(fleet, "the tenant lock", &e).await),
    }
}

/// What cannot be this worker's, before touching any lock.
fn refusal(deps: &Deps, fleet: &FleetDeps, job: &JobV1) -> Option<Disposition> {
    let region = &fleet.topology.region;
    let (reason, message) = if job.region != *region {
        (
            "wrong-region",
            format!(
                "job for region {:?} on queue {}",
                job.region, fleet.topology.queue
            ),
        )
    } else {
        match deps.registry().get(&job.tenant) {
            None => (
                "unknown-tenant",
                format!(
                    "no tenant {:?} in the registry",
                    job.tenant.chars().take(64).collect::<String>()
                ),
            ),
            Some(t) if !t.enabled && job.trigger == Trigger::Schedule => {
                ("disabled-tenant", format!("tenant {} is disabled", t.name))
            }
            Some(t) if t.region.as_str() != region => (
                "wrong-region",
                format!("tenant {} belongs to region {}", t.name, t.region),
            ),
            Some(_) => return None,
        }
    };
    Some(Disposition::DeadLetter { reason, message })
}

/// A scheduled tick published twice (a scheduler replica died between its publish and its
/// commit, and another published the tick again) runs once: the first fresh delivery of the tick
/// records its job id, and a fresh delivery of the same tick with another job id is a duplicate.
/// Redeliveries, hand-backs and retries of the recorded job are not fresh.
async fn claim_tick(
    fleet: &FleetDeps,
    delivery: &Delivery,
    attempt: u32,
    job: &JobV1,
) -> Result<(), Disposition> {
    let fresh = attempt == 0 && !delivery.redelivered && !handed_back(delivery);
    if job.trigger != Trigger::Schedule || !fresh {
        return Ok(());
    }
    let id = job.job_id.to_string();
    match fleet
        .locks
        .claim_tick(&job.tenant, job.scheduled_for, &id)
        .await
    {
        Ok(true) => Ok(()),
        Ok(false) => {
            tracing::info!("this tick of the tenant was already delivered: duplicate, dropped");
            Err(Disposition::Duplicate)
        }
        Err(e) => Err(redis_unavailable(fleet, "the tick record", &e).await),
    }
}

/// Redis cannot be reached: the job waits in the first delay queue and comes back as it was. A
/// hand-back (nack) would count as a delivery of the quorum queue and, after `delivery_limit`
/// of them, dead-letter the job; a job re-published to the delay queue starts a new count, so an
/// outage of any length loses nothing (the worker reports not-ready meanwhile).
async fn redis_unavailable(fleet: &FleetDeps, what: &str, e: &redis::RedisError) -> Disposition {
    fleet.health.set_redis(false);
    tracing::warn!(error = %e, "cannot reach Redis for {what}: waiting in the delay queue");
    while_redis_is_down(&fleet.topology)
}

/// How a delivery waits out a Redis outage.
pub fn while_redis_is_down(topology: &shared::amqp::Topology) -> Disposition {
    match topology.retry_delays.first().copied() {
        Some(delay) => Disposition::RetryLater {
            delay,
            reason: "redis-unavailable",
            headers: Vec::new(),
            failure: false,
        },
        None => Disposition::HandBack {
            reason: "redis-unavailable",
        },
    }
}

/// The tenant is locked. A fresh job is redundant with the one running: `skipped-busy`. A job that
/// was already in progress somewhere (redelivered after a crash, handed back) must not be
/// dropped: it waits in the first delay queue and tries again, for as long as a lock can be held
/// by a job still running (see [`may_wait_again`]).
fn busy(deps: &Deps, fleet: &FleetDeps, delivery: &Delivery) -> Disposition {
    if !(delivery.redelivered || handed_back(delivery)) {
        tracing::info!("tenant busy with another job: skipped");
        deps.metrics.lock_contention("skipped-busy");
        return Disposition::SkippedBusy;
    }
    let bounces = header_u32(&delivery.properties, HEADER_BUSY_BOUNCES).unwrap_or(0) + 1;
    let now = chrono::Utc::now().timestamp_millis();
    // 0 (or none): not waiting yet; a run in between resets it (`after_job`).
    let since = match header(&delivery.properties, HEADER_BUSY_SINCE) {
        Some(AMQPValue::LongLongInt(ms)) if *ms > 0 => *ms,
        _ => now,
    };
    let waited = std::time::Duration::from_millis(u64::try_from(now - since).unwrap_or(0));
    match fleet.topology.retry_delays.first().copied() {
        Some(delay) if may_wait_again(waited, fleet.job_timeout, fleet.locks.ttl()) => {
            tracing::info!(
                bounces,
                waited_s = waited.as_secs(),
                "tenant still locked for a handed-back job: waiting"
            );
            deps.metrics.lock_contention("bounced");
            Disposition::RetryLater {
                delay,
                reason: "busy",
                headers: vec![
                    (HEADER_HANDED_BACK, AMQPValue::Boolean(true)),
                    (HEADER_BUSY_BOUNCES, AMQPValue::LongUInt(bounces)),
                    (HEADER_BUSY_SINCE, AMQPValue::LongLongInt(since)),
                ],
                failure: false,
            }
        }
        _ => {
            deps.metrics.lock_contention("gave-up");
            Disposition::DeadLetter {
                reason: "tenant-locked-too-long",
                message: format!(
                    "the tenant stayed locked through every wait ({} s, {bounces} waits)",
                    waited.as_secs()
                ),
            }
        }
    }
}

/// Whether a handed-back job that has waited `waited` for its tenant's lock waits again. A job
/// that holds the lock stops at its time limit (`job_timeout`), and a lock whose holder died
/// expires a TTL after its last renewal; past both (and a TTL for a wait after a Redis data
/// loss), the lock is held by something that is not a job of this fleet's settings.
pub fn may_wait_again(
    waited: std::time::Duration,
    job_timeout: std::time::Duration,
    ttl: std::time::Duration,
) -> bool {
    waited <= job_timeout + 2 * ttl
}

/// Whether the delivery carries the hand-back mark (it was in progress somewhere before).
pub fn handed_back(delivery: &Delivery) -> bool {
    header_str(&delivery.properties, HEADER_HANDED_BACK).is_some()
        || matches!(
            header(&delivery.properties, HEADER_HANDED_BACK),
            Some(AMQPValue::Boolean(true))
        )
}
