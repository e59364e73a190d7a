//! Stage settle: upload completeness. The file's size and modification time are looked at twice,
//! at least the tenant's settle interval apart, and the downloaded length is compared with both.
//! A file that changed in between is still being uploaded: it is left for the next run, with no
//! import and no marker. The first look is taken before the download (by fetch) and the second
//! after it, so the download's own time counts towards the interval.

use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;

use super::Step;
use crate::account::Stat;
use crate::job::JobRun;
use crate::layout::UPLOAD_PATH;
use crate::outcome::{JobError, Outcome, Retryable};

pub async fn run(job: &mut JobRun<'_>) -> Result<Step, JobError> {
    let (Some((first, at)), Some(file)) = (job.found.first_look, &job.found.file) else {
        return Err(Retryable::WorkerFault("settle before fetch".into()).into());
    };
    let (downloaded, sha1) = (file.size, file.sha1.to_string());
    wait(at, job.tenant().files.settle, job.gate().cancelled()).await;
    job.check()?;
    let second = job.stat(UPLOAD_PATH).await?;
    if !settled(&first, second.as_ref(), downloaded) {
        return Ok(Step::Finish(Outcome::UploadIncomplete {
            size_before: first.size,
            size_after: second.map(|s| s.size),
        }));
    }
    let tenant = job.tenant();
    if tenant.alerts.no_file_days > 0
        && let Err(e) = job
            .alerts()
            .new_file(tenant.name.as_str(), &sha1, Utc::now())
            .await
    {
        tracing::warn!(error = %e, "the arrival of a new file could not be recorded for alerts");
    }
    Ok(Step::Next)
}

/// Sleeps until `settle` has passed since `first`, or until `cancel` fires.
pub async fn wait(first: Instant, settle: Duration, cancel: &tokio_util::sync::CancellationToken) {
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = tokio::time::sleep_until(first + settle) => {}
    }
}

/// Whether the file stood still: same size and time at both looks, and the download as long.
pub fn settled(first: &Stat, second: Option<&Stat>, downloaded: u64) -> bool {
    match second {
        None => false,
        Some(second) => {
            first.size == second.size
                && first.size == downloaded
                && first.modified == second.modified
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(size: u64, secs: u32) -> Stat {
        Stat {
            size,
            modified: chrono::NaiveDate::from_ymd_opt(2026, 1, 1)
                .and_then(|d| d.and_hms_opt(0, 0, secs)),
        }
    }

    #[test]
    fn a_file_that_stood_still_is_settled() {
        assert!(settled(&at(10, 1), Some(&at(10, 1)), 10));
    }

    #[test]
    fn a_growing_touched_vanished_or_short_file_is_not() {
        assert!(!settled(&at(10, 1), Some(&at(12, 1)), 10), "grew");
        assert!(!settled(&at(10, 1), Some(&at(10, 2)), 10), "rewritten");
        assert!(!settled(&at(10, 1), None, 10), "gone");
        assert!(
            !settled(&at(10, 1), Some(&at(10, 1)), 8),
            "changed under the download"
        );
    }
}
