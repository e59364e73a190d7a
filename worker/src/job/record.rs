//! The record of one run, [`RunRecord`], built up by the stages, and the end of the job derived
//! from it once: the log's last line, the run summary JSON, the job span's outcome, the metrics,
//! and the JSON line of `worker once` are all views of the record and the job's result.
//!
//! The summary's schema is versioned (`"schema": 1`); fields may be added within a version, never
//! renamed, removed or given another meaning. `docs/tenant-admin-files.md` describes every field.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use shared::job::Trigger;
use shared::registry::Tenant;
use shared::telemetry;
use tracing::field::Empty;
use uuid::Uuid;

use super::JobContext;
use crate::metrics::WorkerMetrics;
use crate::outcome::{Counts, JobError, Outcome};

pub const SCHEMA: u32 = 1;

/// What happened in one run; serialised as the run summary.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub schema: u32,
    pub tenant: String,
    pub job_id: Uuid,
    pub trigger: Trigger,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// `imported`, `no-file`, `already-processed`, `upload-incomplete`, `verified`, `held` or
    /// `failed`.
    pub outcome: &'static str,
    /// Set when `outcome` is `failed`.
    pub error: Option<ErrorSummary>,
    pub file: Option<FileSummary>,
    pub counts: Option<Counts>,
    /// Wall time of each stage that ran, in milliseconds, by stage name.
    pub durations_ms: BTreeMap<&'static str, u64>,
    pub report_path: Option<String>,
    /// The rows of the report that ended invalid or failed, in the upload's own format (absent
    /// when none did).
    pub rejects_path: Option<String>,
    pub email_sent: Option<bool>,
    pub archive_path: Option<String>,
    /// The tenant's verify-only option (the end line's hint names the right marker).
    #[serde(skip)]
    pub verify_only: bool,
    /// The marker (in `/tmp`) of a version that was refused before, when the run skipped it.
    #[serde(skip)]
    pub refused_before: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorSummary {
    pub reason: &'static str,
    pub retryable: bool,
    pub message: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct FileSummary {
    pub path: &'static str,
    pub size: u64,
    pub sha1: Option<String>,
    /// Known once the file has been read by the import.
    pub encoding: Option<&'static str>,
    pub delimiter: Option<String>,
}

impl RunRecord {
    pub fn start(tenant: &Tenant, ctx: &JobContext) -> Self {
        Self {
            schema: SCHEMA,
            tenant: tenant.name.to_string(),
            job_id: ctx.job_id,
            trigger: ctx.trigger,
            started_at: Utc::now(),
            finished_at: None,
            outcome: "failed",
            error: None,
            file: None,
            counts: None,
            durations_ms: BTreeMap::new(),
            report_path: None,
            rejects_path: None,
            email_sent: None,
            archive_path: None,
            verify_only: tenant.import.verify_only,
            refused_before: None,
        }
    }

    pub fn stage(&mut self, name: &'static str, took: Duration) {
        self.durations_ms.insert(name, took.as_millis() as u64);
    }

    /// Records how the run ended.
    pub fn finish(&mut self, result: &Result<Outcome, JobError>) {
        self.finished_at = Some(Utc::now());
        match result {
            Ok(outcome) => {
                self.outcome = outcome.label();
                if let Outcome::Imported {
                    counts,
                    report_path,
                    email_sent,
                    ..
                }
                | Outcome::Verified {
                    counts,
                    report_path,
                    email_sent,
                    ..
                } = outcome
                {
                    self.counts = Some(counts.clone());
                    self.report_path = Some(report_path.clone());
                    self.email_sent = Some(*email_sent);
                }
            }
            Err(e) => {
                self.outcome = "failed";
                self.error = Some(ErrorSummary {
                    reason: e.reason(),
                    retryable: e.is_retryable(),
                    message: e.to_string(),
                });
            }
        }
    }

    /// The run summary document.
    pub fn summary_json(&self) -> Vec<u8> {
        // A struct of strings, numbers and maps with string keys always serialises.
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// The tenant log's last line.
    pub fn end_line(&self, result: &Result<Outcome, JobError>) -> String {
        match result {
            Ok(Outcome::NoFile) => "end: no file at /uploads/user-import.csv".to_owned(),
            Ok(Outcome::DuplicateTick { recorded_job }) => {
                format!("end: not run, this tick already ran (job {recorded_job})")
            }
            Ok(Outcome::Superseded {
                recorded,
                recorded_job,
            }) => format!(
                "end: not run, a later tick already ran (tick {recorded}, job {recorded_job})"
            ),
            Ok(Outcome::UploadIncomplete {
                size_before,
                size_after,
            }) => format!(
                "end: left for the next run: the file is still being uploaded (it changed while being looked at: {size_before} bytes, then {})",
                size_after.map_or_else(|| "gone".to_owned(), |s| format!("{s} bytes"))
            ),
            Ok(Outcome::AlreadyProcessed { .. }) if self.refused_before.is_some() => format!(
                "end: skipped, this version of the file was refused before (/tmp/{}); upload a corrected file",
                self.refused_before.as_deref().unwrap_or_default(),
            ),
            Ok(Outcome::AlreadyProcessed { sha1 }) if self.verify_only => format!(
                "end: skipped, this file (SHA1 {sha1}) was already verified; delete /tmp/{sha1}.verified to verify it again"
            ),
            Ok(Outcome::AlreadyProcessed { sha1 }) => format!(
                "end: skipped, this file (SHA1 {sha1}) was already processed; delete /tmp/{sha1}.sha1 to import it again"
            ),
            Ok(Outcome::Imported { counts: c, .. }) => format!(
                "end: imported: {} rows, {} created, {} updated, {} unchanged, {} invalid, {} failed, {} unconfirmed{}",
                c.rows,
                c.created,
                c.updated,
                c.unchanged,
                c.invalid,
                c.failed,
                c.unconfirmed,
                [
                    (c.deactivated_by_state, "deactivated by Account state"),
                    (c.deactivated, "deactivated by full sync"),
                    (c.protected, "protected (not changed)"),
                ]
                .iter()
                .filter(|(n, _)| *n > 0)
                .map(|(n, what)| format!(", {n} {what}"))
                .collect::<String>()
            ),
            Ok(Outcome::Verified { counts: c, .. }) => format!(
                "end: verified only, nothing written: {} rows, {} would be created, {} would be updated, {} unchanged, {} with errors, {} would be deactivated by full sync",
                c.rows,
                c.created,
                c.updated,
                c.unchanged,
                c.invalid + c.failed,
                c.deactivated
            ),
            Ok(Outcome::Held {
                sha1,
                deactivations,
                updates,
                ..
            }) => format!(
                "end: held by the mass-change guard ({deactivations} deactivations, {updates} updates): nothing written; upload {} holding {sha1} to confirm",
                crate::layout::CONFIRM_PATH
            ),
            Err(e) => format!(
                "end: {} ({}): {e}",
                if e.is_retryable() {
                    "failed, will be retried"
                } else {
                    "failed"
                },
                e.reason()
            ),
        }
    }

    /// Adds the run to the process's metrics (rows of imports only: a verify-only run's counts
    /// are what would have happened).
    pub fn count(&self, result: &Result<Outcome, JobError>, metrics: &WorkerMetrics) {
        if let Ok(Outcome::Imported { counts, .. }) = result {
            metrics.rows(counts);
        }
        if result.as_ref().is_ok_and(|o| {
            !matches!(
                o,
                Outcome::DuplicateTick { .. } | Outcome::Superseded { .. }
            )
        }) {
            metrics.tenant_succeeded(&self.tenant, self.finished_at.unwrap_or_else(Utc::now));
        }
    }
}

/// The `worker once` JSON line: the outcome (or the failure) of the job `job_id` of `tenant`.
pub fn once_json(
    tenant: &str,
    job_id: Uuid,
    result: &Result<Outcome, JobError>,
    elapsed_ms: u128,
) -> serde_json::Value {
    match result {
        Ok(outcome) => {
            let mut v = serde_json::to_value(outcome).unwrap_or_else(|_| json!({}));
            v["tenant"] = json!(tenant);
            v["job_id"] = json!(job_id);
            v["elapsed_ms"] = json!(elapsed_ms as u64);
            v
        }
        Err(e) => json!({
            "tenant": tenant,
            "job_id": job_id,
            "outcome": "failed",
            "retryable": e.is_retryable(),
            "reason": e.reason(),
            "error": e.to_string(),
            "elapsed_ms": elapsed_ms as u64,
        }),
    }
}

/// The `job` span (a child of the consumer's `process` span under `worker run`, a root under
/// `worker once`) with `tenant`, `job_id` and `trace_id` from the start; its children are the
/// stages. The trace id is on the span so that every log line of the job carries it.
pub fn job_span(tenant: &str, ctx: &JobContext) -> tracing::Span {
    let span = tracing::info_span!(
        "job",
        tenant = %tenant,
        job_id = %ctx.job_id,
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
pub fn record_on_span(span: &tracing::Span, result: &Result<Outcome, JobError>) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Permanent;

    fn record(trigger: Trigger) -> RunRecord {
        let mut ctx = JobContext::manual(Uuid::nil());
        ctx.trigger = trigger;
        RunRecord {
            schema: SCHEMA,
            tenant: "acme".into(),
            job_id: ctx.job_id,
            trigger,
            started_at: Utc::now(),
            finished_at: None,
            outcome: "failed",
            error: None,
            file: None,
            counts: None,
            durations_ms: BTreeMap::new(),
            report_path: None,
            rejects_path: None,
            email_sent: None,
            archive_path: None,
            verify_only: false,
            refused_before: None,
        }
    }

    fn json(r: &RunRecord) -> serde_json::Value {
        serde_json::from_slice(&r.summary_json()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_failed_run_names_its_reason_and_a_finished_import_its_counts() {
        let mut s = record(Trigger::Schedule);
        let failed: Result<Outcome, JobError> = Err(Permanent::ApiCredentials(401).into());
        s.finish(&failed);
        let v = json(&s);
        assert_eq!(v["schema"], 1);
        assert_eq!(v["outcome"], "failed");
        assert_eq!(v["trigger"], "schedule");
        assert_eq!(v["error"]["reason"], "bad-api-credentials");
        assert_eq!(v["error"]["retryable"], false);
        assert!(v.get("verify_only").is_none(), "not part of the schema");
        assert_eq!(
            s.end_line(&failed),
            "end: failed (bad-api-credentials): permanent failure: the platform API refused the tenant's credentials (HTTP 401)"
        );

        let mut s = record(Trigger::Manual);
        s.stage("fetch", Duration::from_millis(12));
        let counts = Counts {
            rows: 3,
            created: 2,
            invalid: 1,
            ..Counts::default()
        };
        let done = Ok(Outcome::Imported {
            sha1: "00".repeat(20),
            counts,
            report_path: "/reports/r.csv".into(),
            email_sent: true,
        });
        s.finish(&done);
        let v = json(&s);
        assert_eq!(v["outcome"], "imported");
        assert_eq!(v["counts"]["created"], 2);
        assert_eq!(v["durations_ms"]["fetch"], 12);
        assert_eq!(v["email_sent"], true);
        assert!(v["error"].is_null());
        let once = once_json(&s.tenant, s.job_id, &done, 5);
        assert_eq!(once["outcome"], "imported");
        assert_eq!(once["tenant"], "acme");
        assert_eq!(once["counts"]["created"], 2);
    }

    #[test]
    fn the_skip_line_names_the_marker_of_the_tenants_mode() {
        let skipped = Ok(Outcome::AlreadyProcessed { sha1: "ab".into() });
        let mut r = record(Trigger::Schedule);
        assert!(r.end_line(&skipped).contains("delete /tmp/ab.sha1"));
        r.verify_only = true;
        assert!(r.end_line(&skipped).contains("delete /tmp/ab.verified"));
        // A refused version is not "processed": its line names its refusal marker.
        r.refused_before = Some("too-large-900.refused".into());
        let line = r.end_line(&skipped);
        assert!(
            line.contains("refused before (/tmp/too-large-900.refused)")
                && !line.contains("delete"),
            "{line}"
        );
    }
}
