//! A job past `worker.job_timeout`: the fleet's watcher fires the job's `time_up` and cancels it,
//! the stages stop before their next side effect, and the run ends `job-timeout`
//! (`Permanent::JobTimeout`), not as a cancellation to retry: it still holds its tenant, so it
//! writes its summary and last log line and tells the admin, and its delivery is dead-lettered
//! with that reason. What it wrote so far stays; the file's marker is not written, so the next
//! scheduled run takes the file again (and finds the rows already imported unchanged).

use crate::job::{JobRun, Mail};
use crate::layout::UPLOAD_PATH;
use crate::outcome::{JobError, Outcome, Permanent};

/// The run's result once its time ran out: whatever stopped the stages, it is a `job-timeout`
/// while the job still holds its tenant (one that lost its lock stays a cancellation).
pub fn judge(job: &mut JobRun<'_>, result: Result<Outcome, JobError>) -> Result<Outcome, JobError> {
    match result {
        Err(JobError::Retryable(_)) if job.timed_out() && job.gate().lock_held() => {
            job.wrap_up();
            let limit = job.settings().worker.job_timeout;
            tracing::warn!(limit_s = limit.as_secs(), "the job ran past its time limit");
            Err(Permanent::JobTimeout(limit).into())
        }
        other => other,
    }
}

/// Tells the admin, and the tenant log, that the run was stopped by its time limit.
pub async fn tell(job: &JobRun<'_>, limit: std::time::Duration) {
    let tenant = job.tenant();
    let stages: Vec<&str> = super::PIPELINE
        .iter()
        .map(|s| s.as_str())
        .filter(|s| job.record.durations_ms.contains_key(s))
        .collect();
    let mail = Mail {
        subject: format!("[{}] User import STOPPED: job-timeout", tenant.name),
        body: format!(
            "The user import of {tenant} (job {job}) ran past its time limit of {limit} s and was \
             stopped.\n\nStages begun: {stages}.\n\nWhat it wrote to the platform so far stays \
             written. {UPLOAD_PATH} was not marked as processed, so the next scheduled run takes \
             it again and goes on from there (rows already imported come out unchanged). If \
             this happens again, the file may be too large for one run: split it, or ask the \
             operators to raise the limit.\n",
            tenant = tenant.name,
            job = job.context().job_id,
            limit = limit.as_secs(),
            stages = if stages.is_empty() {
                "none".to_owned()
            } else {
                stages.join(", ")
            },
        ),
        ..Mail::default()
    };
    job.log(match job.email(mail).await {
        Ok(()) => format!(
            "stopped: the job ran past its time limit of {} s; emailed to {}",
            limit.as_secs(),
            job.recipients()
        ),
        Err(why) => format!(
            "stopped: the job ran past its time limit of {} s; the email could not be sent: {why}",
            limit.as_secs()
        ),
    });
}
