//! The pipeline of one job of one tenant, as a flat list of stages: verify-upload, fetch, hash,
//! settle, guard, import, report, archive. Each stage is `async fn(&mut JobRun) -> Step` in its own
//! file; [`run`] reads as that list. [`process_job`] is the single entry point: the queue consumer
//! calls it, `worker once` calls it, tests call it. Stages never read the environment or open
//! their own clients, and they write only through their [`JobRun`].
//!
//! Around the stages: the job's log lines and alerts ([`alerting`]), and the run summary
//! ([`summary`]), all derived from the job's [`RunRecord`].

pub mod alerting;
pub mod archive;
pub mod failure;
pub mod fetch;
pub mod guard;
pub mod hash;
pub mod import;
pub mod refusal;
pub mod report;
pub mod settle;
pub mod summary;
pub mod tick;
pub mod time_limit;
pub mod undo;
pub mod verify_upload;

use std::panic::AssertUnwindSafe;
use std::time::Instant;

use futures::FutureExt;
use shared::telemetry;
use tracing::Instrument;
use tracing::field::Empty;

pub use crate::deps::Deps;
use crate::job::record::{self, RunRecord};
pub use crate::job::{JobContext, JobRun};
use crate::outcome::{JobError, Outcome, Retryable};

/// What a stage says: go on, or the job ends here with this outcome.
#[derive(Debug)]
pub enum Step {
    Next,
    Finish(Outcome),
}

/// The stages, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    VerifyUpload,
    Fetch,
    Hash,
    Settle,
    Guard,
    Import,
    Report,
    Archive,
}

pub const PIPELINE: [Stage; 8] = [
    Stage::VerifyUpload,
    Stage::Fetch,
    Stage::Hash,
    Stage::Settle,
    Stage::Guard,
    Stage::Import,
    Stage::Report,
    Stage::Archive,
];

impl Stage {
    /// Its name: the span's, the metric's label, the summary's `durations_ms` key.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::VerifyUpload => "verify-upload",
            Stage::Fetch => "fetch",
            Stage::Hash => "hash",
            Stage::Settle => "settle",
            Stage::Guard => "guard",
            Stage::Import => "import",
            Stage::Report => "report",
            Stage::Archive => "archive",
        }
    }

    /// Whether the stage has anything to do in this run (a stage that does not is not timed).
    fn applies(self, job: &JobRun<'_>) -> bool {
        match self {
            Stage::VerifyUpload => true,
            Stage::Fetch => job.found.file.is_none(),
            Stage::Hash => !verify_upload::is_verify_upload(job),
            // An undo request is a few bytes the admin wrote at once: no upload to wait for.
            Stage::Settle => !verify_upload::is_verify_upload(job) && !undo::is_undo(job),
            Stage::Guard => guard::applies(job),
            Stage::Import | Stage::Report => true,
            Stage::Archive => archive::applies(job),
        }
    }

    async fn run(self, job: &mut JobRun<'_>) -> Result<Step, JobError> {
        match self {
            Stage::VerifyUpload => verify_upload::run(job).await,
            Stage::Fetch => fetch::run(job).await,
            Stage::Hash => hash::run(job).await,
            Stage::Settle => settle::run(job).await,
            Stage::Guard => guard::run(job).await,
            Stage::Import => import::run(job).await,
            Stage::Report => report::run(job).await,
            Stage::Archive => archive::run(job).await,
        }
    }

    /// The stage's span, with the fields the stage records.
    fn span(self) -> tracing::Span {
        match self {
            Stage::Fetch => {
                tracing::info_span!("fetch", file.size = Empty, error.type = Empty, otel.status_code = Empty, otel.status_description = Empty)
            }
            Stage::Hash => {
                tracing::info_span!("hash", file.sha1 = Empty, already_processed = Empty, error.type = Empty, otel.status_code = Empty, otel.status_description = Empty)
            }
            Stage::Import => tracing::info_span!(
                "import",
                concurrency = Empty,
                api.requests = Empty,
                api.retries = Empty,
                api.rate_limited = Empty,
                api.server_errors = Empty,
                api.transport_errors = Empty,
                error.type = Empty,
                otel.status_code = Empty,
                otel.status_description = Empty,
            ),
            Stage::Report => {
                tracing::info_span!("report", email_sent = Empty, error.type = Empty, otel.status_code = Empty, otel.status_description = Empty)
            }
            _ => {
                tracing::info_span!("stage", otel.name = self.as_str(), error.type = Empty, otel.status_code = Empty, otel.status_description = Empty)
            }
        }
    }
}

/// Runs `stage` in its span, timed once for the metric and the run record. A panic inside the
/// stage is a fault of this worker (retried elsewhere), never the tenant's.
async fn timed(stage: Stage, job: &mut JobRun<'_>) -> Result<Step, JobError> {
    let span = stage.span();
    let clock = Instant::now();
    let result = AssertUnwindSafe(stage.run(job).instrument(span.clone()))
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| Err(worker_fault(stage.as_str(), panic.as_ref())));
    let took = clock.elapsed();
    job.metrics().stage(stage.as_str(), took);
    job.record.stage(stage.as_str(), took);
    if let Err(e) = &result {
        telemetry::record_error(&span, e.reason(), &e.to_string());
    }
    result
}

/// A panic's message, as a retryable worker fault.
pub fn worker_fault(place: &str, panic: &(dyn std::any::Any + Send)) -> JobError {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_owned());
    tracing::error!(place, panic = %what, "worker fault");
    Retryable::WorkerFault(format!("{place}: {what}")).into()
}

/// The job's result and its record (none when the tenant could not even be resolved).
#[derive(Debug)]
pub struct Finished {
    pub result: Result<Outcome, JobError>,
    pub record: Option<RunRecord>,
}

/// Runs the whole pipeline for `tenant`, in a `job` span.
pub async fn process_job(deps: &Deps, tenant: &str, ctx: JobContext) -> Result<Outcome, JobError> {
    run_job(deps, tenant, ctx).await.result
}

/// As [`process_job`], with the run's record.
pub async fn run_job(deps: &Deps, tenant: &str, ctx: JobContext) -> Finished {
    let span = record::job_span(tenant, &ctx);
    let finished = async {
        match JobRun::new(deps, tenant, ctx) {
            Ok(job) => run(job).await,
            Err(e) => Finished {
                result: Err(e),
                record: None,
            },
        }
    }
    .instrument(span.clone())
    .await;
    record::record_on_span(&span, &finished.result);
    if let Some(r) = &finished.record {
        r.count(&finished.result, &deps.metrics);
    }
    finished
}

/// Connects, runs the stages, and ends the run: alerts, the summary, the tick record, the log's
/// last line.
async fn run(mut job: JobRun<'_>) -> Finished {
    let result = match job.connect().await {
        Ok(()) => match tick::already_run(&mut job).await {
            // A tick published again: nothing is done, nothing is written.
            Some(duplicate) => {
                return Finished {
                    result: Ok(duplicate),
                    record: Some(job.close().await),
                };
            }
            None => {
                job.log(alerting::start_line(&job));
                let result = run_stages(&mut job).await;
                time_limit::judge(&mut job, result)
            }
        },
        Err(e) => Err(e),
    };
    // A job that lost its lock (or is being stopped) makes no further side effect: another run
    // owns the tenant now, and will alert and summarise itself. One stopped by its time limit
    // still owns the tenant and records its end.
    if job.may_record_end() {
        alerting::after(&job, &result).await;
        job.record.finish(&result);
        if job.connected() {
            summary::write(&job).await;
            tick::record(&job).await;
        }
    }
    job.log(job.record.end_line(&result));
    Finished {
        record: Some(job.close().await),
        result,
    }
}

/// The stages, and what a refusal among them tells the admin.
async fn run_stages(job: &mut JobRun<'_>) -> Result<Outcome, JobError> {
    match stages(job).await {
        Err(JobError::Permanent(why)) if verify_upload::is_verify_upload(job) => {
            Err(verify_upload::refused(job, why).await)
        }
        Err(JobError::Permanent(why)) if refusal::is_refusal(&why) => {
            refusal::tell(job, &why).await;
            Err(JobError::Permanent(why))
        }
        other => other,
    }
}

async fn stages(job: &mut JobRun<'_>) -> Result<Outcome, JobError> {
    for stage in PIPELINE {
        if !stage.applies(job) {
            continue;
        }
        // Once the report is done the run is imported: a stop now only skips the archive.
        if job.found.outcome.is_none() {
            job.check()?;
        }
        if let Step::Finish(outcome) = timed(stage, job).await? {
            return Ok(outcome);
        }
    }
    job.found.outcome.take().ok_or_else(|| {
        Retryable::WorkerFault("the pipeline ended without an outcome".into()).into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_a_retryable_worker_fault_named_after_its_place() {
        let e = worker_fault("import", &"index out of bounds");
        assert!(e.is_retryable());
        assert_eq!(e.reason(), "worker-fault");
        assert!(e.to_string().contains("import: index out of bounds"), "{e}");
        let e = worker_fault("fetch", &String::from("boom"));
        assert!(e.to_string().contains("fetch: boom"), "{e}");
    }

    #[tokio::test]
    async fn a_panicking_future_is_caught_as_a_worker_fault() {
        let result: Result<Step, JobError> = AssertUnwindSafe(async {
            if std::hint::black_box(true) {
                panic!("a bug in a stage");
            }
            Ok(Step::Next)
        })
        .catch_unwind()
        .await
        .unwrap_or_else(|p| Err(worker_fault("settle", p.as_ref())));
        let Err(e) = result else { panic!("caught") };
        assert_eq!(e.reason(), "worker-fault");
        assert!(e.is_retryable());
    }
}
