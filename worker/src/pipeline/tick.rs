//! The tick record on the tenant's own account: `/tmp/last-tick`, beside the markers, holds the
//! latest scheduled tick a job ran for the tenant and that job's id. The fleet records ticks in
//! Redis too, but Redis may lose its data (docs/fleet.md); the account is the durable per-tenant
//! state the design already relies on. A scheduled job whose tick is not newer than the
//! recorded one, from another job, does not run: the same tick is one published again
//! (`duplicate-tick`, settled as a `duplicate`), an older one was covered by the later run
//! (`superseded`). A retry or redelivery of the recorded job itself runs (its runs are harmless: the
//! marker and the import's differences), and a job started by hand is never held back.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::job::Trigger;
use uuid::Uuid;

use crate::job::JobRun;
use crate::layout::{LAST_TICK_PATH, MARKER_DIR};
use crate::outcome::Outcome;

/// The record's content (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TickRecord {
    pub tick: DateTime<Utc>,
    pub job_id: Uuid,
}

impl TickRecord {
    /// Whether a job of `tick` with `job_id` is a tick this record says already ran.
    pub fn covers(&self, tick: DateTime<Utc>, job_id: Uuid) -> bool {
        tick <= self.tick && job_id != self.job_id
    }
}

/// Reads the record (a scheduled job only) and keeps its tick for [`record`]; `Some(outcome)` when
/// the job's tick already ran.
pub async fn already_run(job: &mut JobRun<'_>) -> Option<Outcome> {
    let ctx = job.context();
    if ctx.trigger != Trigger::Schedule {
        return None;
    }
    let (tick, job_id) = (ctx.scheduled_for, ctx.job_id);
    let recorded = read(job).await?;
    job.found.last_tick = Some(recorded.tick);
    if !recorded.covers(tick, job_id) {
        return None;
    }
    tracing::info!(
        tick = %tick,
        recorded = %recorded.tick,
        recorded_job = %recorded.job_id,
        "this tick, or a later one, already ran for the tenant (its account's record): not run"
    );
    Some(if tick == recorded.tick {
        Outcome::DuplicateTick {
            recorded_job: recorded.job_id,
        }
    } else {
        Outcome::Superseded {
            recorded: recorded.tick,
            recorded_job: recorded.job_id,
        }
    })
}

async fn read(job: &JobRun<'_>) -> Option<TickRecord> {
    match job.read_small(LAST_TICK_PATH, 4096).await {
        Ok(Some(bytes)) => match serde_json::from_slice(&bytes) {
            Ok(record) => Some(record),
            Err(e) => {
                tracing::warn!(error = %e, "the account's tick record is not readable: ignored");
                None
            }
        },
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "the account's tick record could not be read: ignored");
            None
        }
    }
}

/// Records the job's tick on the account when the run of a scheduled job ends (whatever its
/// result), unless a later tick is recorded already.
pub async fn record(job: &JobRun<'_>) {
    let ctx = job.context();
    if ctx.trigger != Trigger::Schedule
        || job.found.last_tick.is_some_and(|t| t > ctx.scheduled_for)
    {
        return;
    }
    let record = TickRecord {
        tick: ctx.scheduled_for,
        job_id: ctx.job_id,
    };
    let bytes = serde_json::to_vec(&record).unwrap_or_default();
    let written = async {
        job.mkdir(MARKER_DIR).await?;
        job.put_bytes(LAST_TICK_PATH, &bytes).await
    }
    .await;
    if let Err(e) = written {
        tracing::warn!(error = %e, "the tick record could not be written on the account");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|d| d.with_timezone(&Utc))
            .unwrap_or_default()
    }

    #[test]
    fn a_tick_not_newer_than_the_record_from_another_job_is_covered_and_the_same_job_is_not() {
        let job = Uuid::new_v4();
        let r = TickRecord {
            tick: at("2031-03-01T10:00:00Z"),
            job_id: job,
        };
        assert!(r.covers(at("2031-03-01T10:00:00Z"), Uuid::new_v4()));
        assert!(r.covers(at("2031-03-01T09:00:00Z"), Uuid::new_v4()));
        assert!(!r.covers(at("2031-03-01T10:00:00Z"), job), "a retry runs");
        assert!(!r.covers(at("2031-03-01T10:01:00Z"), Uuid::new_v4()));
    }
}
