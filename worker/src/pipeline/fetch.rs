//! Stage fetch: stream `/uploads/user-import.csv` to a local temporary file, hashing it on the way
//! (one pass, a fixed-size buffer: [`crate::account::fetch_file`]), refusing files over the size
//! limit before and during the transfer. A first look at the file's size and time is taken before the download, for the
//! settle check.

use super::Step;
use crate::account::AccountError;
use crate::job::record::FileSummary;
use crate::job::{JobRun, LocalFile, Plan, account_error};
use crate::layout::UPLOAD_PATH;
use crate::outcome::{JobError, Outcome, Retryable};

pub async fn run(job: &mut JobRun<'_>) -> Result<Step, JobError> {
    // The admin's undo request takes the run first; the file waits for the next one.
    if super::undo::take_request(job).await? {
        return Ok(Step::Next);
    }
    let Some(stat) = job.stat(UPLOAD_PATH).await? else {
        return Ok(Step::Finish(Outcome::NoFile));
    };
    job.found.first_look = Some((stat, tokio::time::Instant::now()));
    let Some(file) = fetch(job, UPLOAD_PATH).await.map_err(account_error)? else {
        return Ok(Step::Finish(Outcome::NoFile));
    };
    tracing::Span::current().record("file.size", file.size);
    found(job, UPLOAD_PATH, file);
    job.found.plan = Plan {
        source: UPLOAD_PATH,
        dry_run: job.tenant().import.verify_only,
        ..Plan::default()
    };
    Ok(Step::Next)
}

/// The file is the run's: recorded and logged.
pub fn found(job: &mut JobRun<'_>, path: &'static str, file: LocalFile) {
    job.log(format!(
        "file found: {path}, {} bytes, SHA1 {}",
        file.size, file.sha1
    ));
    job.record.file = Some(FileSummary {
        path,
        size: file.size,
        sha1: Some(file.sha1.to_string()),
        ..Default::default()
    });
    job.found.file = Some(file);
}

/// Fetches a file that must not hold the run up: one over the limit is said in the log and left.
pub async fn fetch_logged(job: &JobRun<'_>, path: &str) -> Result<Option<LocalFile>, JobError> {
    match fetch(job, path).await {
        Ok(f) => Ok(f),
        Err(AccountError::TooLarge { limit }) => {
            job.log(format!(
                "{path} is larger than the limit of {limit} bytes: not verified"
            ));
            Ok(None)
        }
        Err(e) => Err(account_error(e)),
    }
}

/// `Ok(None)`: there is no file at `path`.
pub async fn fetch(job: &JobRun<'_>, path: &str) -> Result<Option<LocalFile>, AccountError> {
    job.fetch_file(path, max_file_bytes(job), &work_dir(job))
        .await
}

/// The tenant's file size limit (never above the fleet's).
fn max_file_bytes(job: &JobRun<'_>) -> u64 {
    let fleet = job.settings().import.max_file_bytes;
    job.tenant()
        .limits
        .max_file_bytes
        .map_or(fleet, |l| l.min(fleet))
}

/// Where local copies go.
pub fn work_dir(job: &JobRun<'_>) -> std::path::PathBuf {
    job.settings()
        .work_dir
        .clone()
        .unwrap_or_else(std::env::temp_dir)
}

/// A local temporary file could not be made.
pub fn local_io(e: std::io::Error) -> JobError {
    Retryable::Io(e.to_string()).into()
}
