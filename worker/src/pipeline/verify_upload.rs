//! Stage verify-upload: `/uploads/user-import.verify.csv`, when there and not verified yet, takes
//! this run: it is verified only (never imported), reported, and marked `/tmp/<sha1>.verified`;
//! the import of `/uploads/user-import.csv` waits for the next run. A verify upload never holds the
//! import up: one too large, already verified, or refused is said in the log and left.

use super::{Step, fetch, hash};
use crate::job::{JobRun, Plan};
use crate::layout::{MARKER_DIR, VERIFY_UPLOAD_PATH};
use crate::outcome::{JobError, Permanent};

/// Whether this run works on the verify upload.
pub fn is_verify_upload(job: &JobRun<'_>) -> bool {
    job.found.plan.source == VERIFY_UPLOAD_PATH
}

pub async fn run(job: &mut JobRun<'_>) -> Result<Step, JobError> {
    let Some(file) = fetch::fetch_logged(job, VERIFY_UPLOAD_PATH).await? else {
        return Ok(Step::Next);
    };
    let marker = hash::marker_name(&file.sha1, true);
    if job.exists(MARKER_DIR, &marker).await? {
        job.log(format!(
            "{VERIFY_UPLOAD_PATH} was verified before (/tmp/{marker}); ignored"
        ));
        return Ok(Step::Next);
    }
    fetch::found(job, VERIFY_UPLOAD_PATH, file);
    job.found.plan = Plan {
        source: VERIFY_UPLOAD_PATH,
        dry_run: true,
        confirmed: false,
        force_full: false,
        undo: false,
    };
    Ok(Step::Next)
}

/// A verify upload that cannot be verified is not tried again (its marker), so the import of
/// `/uploads/user-import.csv` is not held up by it; the reason is in the log.
pub async fn refused(job: &JobRun<'_>, why: Permanent) -> JobError {
    job.log(format!("{VERIFY_UPLOAD_PATH} cannot be verified: {why}"));
    if let Some(file) = &job.found.file
        && let Err(e) = hash::write_marker(job, &file.sha1, true).await
    {
        job.log(format!("the verify marker could not be written: {e}"));
    }
    JobError::Permanent(why)
}
