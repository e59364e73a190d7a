//! The spans of a job: `job` (a child of the consumer's `process` span under `worker run`, a root
//! under `worker once`) with `tenant`, `job_id` and `trace_id` from the start, then `outcome`, the
//! row counts, or the failure; its children are the stages `fetch`, `hash`, `import`, `report`,
//! each marked as failed when the job failed there. The trace id is on the span so that every log
//! line of the job carries it (in JSON logs, under `spans`).

use shared::telemetry;
use tracing::field::Empty;

use super::JobContext;
use crate::outcome::{JobError, Outcome};

pub fn job_span(tenant: &str, job: &JobContext) -> tracing::Span {
    let span = tracing::info_span!(
        "job",
        tenant = %tenant,
        job_id = %job.job_id,
        trace_id = Empty,
        outcome = Empty,
        retryable = Empty,
        rows.total = Empty,
        rows.created = Empty,
        rows.updated = Empty,
        rows.unchanged = Empty,
        rows.invalid = Empty,
        rows.failed = Empty,
        rows.unconfirmed = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
        error.type = Empty,
    );
    if let Some(id) = telemetry::propagation::trace_id(&span) {
        span.record("trace_id", id);
    }
    span
}

/// Records how the job ended on its span, and logs it.
pub fn record_outcome(span: &tracing::Span, result: &Result<Outcome, JobError>) {
    match result {
        Ok(o) => {
            span.record("outcome", o.label());
            if let Outcome::Imported { counts, .. } | Outcome::Verified { counts, .. } = o {
                span.record("rows.total", counts.rows);
                span.record("rows.created", counts.created);
                span.record("rows.updated", counts.updated);
                span.record("rows.unchanged", counts.unchanged);
                span.record("rows.invalid", counts.invalid);
                span.record("rows.failed", counts.failed);
                span.record("rows.unconfirmed", counts.unconfirmed);
            }
            tracing::info!(parent: span, outcome = o.label(), "job finished");
        }
        Err(e) => {
            span.record("outcome", "failed");
            span.record("retryable", e.is_retryable());
            telemetry::record_error(span, e.reason(), &e.to_string());
            tracing::warn!(parent: span, reason = e.reason(), retryable = e.is_retryable(), error = %e, "job failed");
        }
    }
}

/// Records a stage's failure on its span.
pub fn failed_on<T>(span: &tracing::Span, result: &Result<T, JobError>) {
    if let Err(e) = result {
        telemetry::record_error(span, e.reason(), &e.to_string());
    }
}
