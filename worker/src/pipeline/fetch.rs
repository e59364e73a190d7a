//! Stage fetch: stream `/uploads/user-import.csv` to a local temporary file, hashing it on the way
//! (one pass, a fixed-size buffer: [`crate::account::fetch_file`]), refusing files over the size
//! limit before and during the transfer. A first look at the file's size and time is taken before the download, for the
//! settle check. A file over the limit is refused without a download (and told to the admin once).

use super::{Step, refusal, settle};
use crate::account::{AccountError, Stat};
use crate::job::record::FileSummary;
use crate::job::{JobRun, LocalFile, Plan, account_error};
use crate::layout::{MARKER_DIR, UPLOAD_PATH};
use crate::outcome::{JobError, Outcome, Permanent, Retryable};

pub async fn run(job: &mut JobRun<'_>) -> Result<Step, JobError> {
    // The admin's undo request takes the run first; the file waits for the next one.
    if super::undo::take_request(job).await? {
        return Ok(Step::Next);
    }
    let Some(stat) = job.stat(UPLOAD_PATH).await? else {
        return Ok(Step::Finish(Outcome::NoFile));
    };
    job.found.first_look = Some((stat, tokio::time::Instant::now()));
    job.found.plan = Plan {
        source: UPLOAD_PATH,
        dry_run: job.tenant().import.verify_only,
        ..Plan::default()
    };
    let limit = max_file_bytes(job);
    if stat.size > limit {
        return too_large(job, stat, limit).await;
    }
    let file = match fetch(job, UPLOAD_PATH).await {
        // Within the limit at the first look, over it now: still being uploaded. The next run
        // looks again (and refuses it, once, if it stays over the limit).
        Err(AccountError::TooLarge { .. }) => {
            return Ok(Step::Finish(Outcome::UploadIncomplete {
                size_before: stat.size,
                size_after: job.size(UPLOAD_PATH).await.ok().flatten(),
            }));
        }
        other => other.map_err(account_error)?,
    };
    let Some(file) = file else {
        return Ok(Step::Finish(Outcome::NoFile));
    };
    tracing::Span::current().record("file.size", file.size);
    found(job, UPLOAD_PATH, file);
    Ok(Step::Next)
}

/// A file over the size limit is refused without being downloaded, so without a SHA1: it is
/// known by its size and modification time ([`refusal::Version::TooLarge`]). The refusal is told
/// once (by the pipeline, as for any refused file), only for a file that stood still for the
/// settle interval, so that an upload in progress is not refused twice.
async fn too_large(job: &mut JobRun<'_>, stat: Stat, limit: u64) -> Result<Step, JobError> {
    job.log(format!(
        "file found: {UPLOAD_PATH}, {} bytes: larger than the limit of {limit} bytes",
        stat.size
    ));
    job.record.file = Some(FileSummary {
        path: UPLOAD_PATH,
        size: stat.size,
        ..Default::default()
    });
    let version = refusal::Version::TooLarge {
        size: stat.size,
        modified: stat.modified,
    };
    let names = job.list(MARKER_DIR).await?;
    if refusal::refused_before(job, &names, &version).await {
        job.log(refusal::skipped_line(&version));
        job.record.refused_before = Some(version.marker_name());
        // No SHA1: the file was never downloaded.
        return Ok(Step::Finish(Outcome::AlreadyProcessed {
            sha1: String::new(),
        }));
    }
    let settle = job.tenant().files.settle;
    if settle::must_wait(&stat, chrono::Utc::now().naive_utc(), settle) {
        settle::wait(tokio::time::Instant::now(), settle, job.gate().cancelled()).await;
        job.check()?;
        let second = job.stat(UPLOAD_PATH).await?;
        if !settle::settled(&stat, second.as_ref(), stat.size) {
            return Ok(Step::Finish(Outcome::UploadIncomplete {
                size_before: stat.size,
                size_after: second.map(|s| s.size),
            }));
        }
    }
    Err(Permanent::FileTooLarge {
        size: stat.size,
        limit,
    }
    .into())
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
