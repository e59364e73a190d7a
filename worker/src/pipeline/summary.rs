//! The run summary: one small JSON document per run, for tenants who monitor their imports with a
//! script rather than by reading email. Every run that reaches the tenant's FTPS account writes
//! `/reports/latest-summary.json` (overwritten: a heartbeat, whatever the outcome), and a run that
//! imported also writes `<report name>.json` next to its per-record report, kept with it.
//!
//! The schema is versioned (`"schema": 1`); fields may be added within a version, never renamed,
//! removed or given another meaning. `docs/tenant-admin-files.md` describes every field.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use shared::job::Trigger;
use uuid::Uuid;

use super::report::REPORTS_DIR;
use crate::account::{Account, AccountError};
use crate::outcome::{Counts, JobError, Outcome};

pub const SCHEMA: u32 = 1;
pub const LATEST_PATH: &str = "/reports/latest-summary.json";

/// The document; built up by the stages, finished with the run's result.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub schema: u32,
    pub tenant: String,
    pub job_id: Uuid,
    pub trigger: Trigger,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// `imported`, `no-file`, `already-processed`, `upload-incomplete` or `failed`.
    pub outcome: &'static str,
    /// Set when `outcome` is `failed`.
    pub error: Option<ErrorSummary>,
    pub file: Option<FileSummary>,
    pub counts: Option<Counts>,
    /// Wall time of each stage that ran, in milliseconds, by stage name.
    pub durations_ms: BTreeMap<&'static str, u64>,
    pub report_path: Option<String>,
    pub email_sent: Option<bool>,
    pub archive_path: Option<String>,
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

impl RunSummary {
    pub fn start(tenant: &str, job_id: Uuid, trigger: Trigger, started_at: DateTime<Utc>) -> Self {
        Self {
            schema: SCHEMA,
            tenant: tenant.to_owned(),
            job_id,
            trigger,
            started_at,
            finished_at: None,
            outcome: "failed",
            error: None,
            file: None,
            counts: None,
            durations_ms: BTreeMap::new(),
            report_path: None,
            email_sent: None,
            archive_path: None,
        }
    }

    pub fn stage(&mut self, name: &'static str, took: std::time::Duration) {
        self.durations_ms.insert(name, took.as_millis() as u64);
    }

    /// Records how the run ended.
    pub fn finish(&mut self, result: &Result<Outcome, JobError>, at: DateTime<Utc>) {
        self.finished_at = Some(at);
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

    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings, numbers and maps with string keys always serialises.
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }
}

/// The summary's path next to a per-record report (`….csv` → `….json`).
pub fn path_next_to(report_path: &str) -> String {
    match report_path.strip_suffix(".csv") {
        Some(stem) => format!("{stem}.json"),
        None => format!("{report_path}.json"),
    }
}

/// Writes the summary: next to the report when there is one, and as the latest summary.
pub async fn write(session: &mut dyn Account, summary: &RunSummary) -> Result<(), AccountError> {
    session.mkdir(REPORTS_DIR).await?;
    let bytes = summary.to_json();
    if let Some(report) = &summary.report_path {
        session
            .upload(&path_next_to(report), &mut bytes.as_slice())
            .await?;
    }
    session.upload(LATEST_PATH, &mut bytes.as_slice()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Permanent;

    #[test]
    fn the_summary_sits_next_to_its_report() {
        assert_eq!(
            path_next_to("/reports/user-import-20260101T000000Z-abcdef12.csv"),
            "/reports/user-import-20260101T000000Z-abcdef12.json"
        );
    }

    #[test]
    fn a_failed_run_names_its_reason_and_a_finished_import_its_counts() {
        let mut s = RunSummary::start("acme", Uuid::nil(), Trigger::Schedule, Utc::now());
        s.finish(&Err(Permanent::ApiCredentials(401).into()), Utc::now());
        let v: serde_json::Value =
            serde_json::from_slice(&s.to_json()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v["schema"], 1);
        assert_eq!(v["outcome"], "failed");
        assert_eq!(v["trigger"], "schedule");
        assert_eq!(v["error"]["reason"], "bad-api-credentials");
        assert_eq!(v["error"]["retryable"], false);

        let mut s = RunSummary::start("acme", Uuid::nil(), Trigger::Manual, Utc::now());
        s.stage("fetch", std::time::Duration::from_millis(12));
        let counts = Counts {
            rows: 3,
            created: 2,
            invalid: 1,
            ..Counts::default()
        };
        s.finish(
            &Ok(Outcome::Imported {
                sha1: "00".repeat(20),
                counts,
                report_path: "/reports/r.csv".into(),
                email_sent: true,
            }),
            Utc::now(),
        );
        let v: serde_json::Value =
            serde_json::from_slice(&s.to_json()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v["outcome"], "imported");
        assert_eq!(v["counts"]["created"], 2);
        assert_eq!(v["durations_ms"]["fetch"], 12);
        assert_eq!(v["email_sent"], true);
        assert!(v["error"].is_null());
    }
}
