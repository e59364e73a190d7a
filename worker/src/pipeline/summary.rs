//! The run summary on the account: one small JSON document per run (the job's
//! [`RunRecord`](crate::job::RunRecord)), for tenants who monitor their imports with a script
//! rather than by reading email. Every run that reaches the tenant's account writes
//! `/reports/latest-summary.json` (overwritten: a heartbeat, whatever the outcome), and a run that
//! imported also writes `<report name>.json` next to its per-record report, kept with it.

use crate::job::JobRun;
use crate::layout::{LATEST_SUMMARY_PATH, REPORTS_DIR};
use crate::outcome::JobError;

/// The summary's path next to a per-record report (`….csv` → `….json`).
pub fn path_next_to(report_path: &str) -> String {
    match report_path.strip_suffix(".csv") {
        Some(stem) => format!("{stem}.json"),
        None => format!("{report_path}.json"),
    }
}

/// Writes the summary and says so in the log.
pub async fn write(job: &JobRun<'_>) {
    match put(job).await {
        Ok(()) => job.log(format!("summary written: {LATEST_SUMMARY_PATH}")),
        Err(e) => job.log(format!("the run summary could not be written: {e}")),
    }
}

async fn put(job: &JobRun<'_>) -> Result<(), JobError> {
    job.mkdir(REPORTS_DIR).await?;
    let bytes = job.record.summary_json();
    if let Some(report) = &job.record.report_path {
        job.put_bytes(&path_next_to(report), &bytes).await?;
    }
    job.put_bytes(LATEST_SUMMARY_PATH, &bytes).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_sits_next_to_its_report() {
        assert_eq!(
            path_next_to("/reports/user-import-20260101T000000Z-abcdef12.csv"),
            "/reports/user-import-20260101T000000Z-abcdef12.json"
        );
    }
}
