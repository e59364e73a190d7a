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
    let settle = job.tenant().files.settle;
    if must_wait(&first, Utc::now().naive_utc(), settle) {
        wait(at, settle, job.gate().cancelled()).await;
        job.check()?;
    } else {
        tracing::debug!("the file had not changed for longer than the settle interval: no wait");
    }
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

/// Whether the run must wait the settle interval: not when the file's modification time (MDTM, to
/// the second, UTC) already lies further back than the interval (plus a second for MDTM's
/// rounding), since a file being written has a recent time. The second look after the download
/// is taken either way, so a change during the download is still seen.
pub fn must_wait(first: &Stat, now: chrono::NaiveDateTime, settle: Duration) -> bool {
    let Some(modified) = first.modified else {
        return true;
    };
    let quiet = now.signed_duration_since(modified);
    let needed = chrono::TimeDelta::from_std(settle).unwrap_or(chrono::TimeDelta::MAX)
        + chrono::TimeDelta::seconds(1);
    quiet < needed
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
    fn an_old_file_needs_no_wait_and_a_recent_or_timeless_one_does() {
        let first = at(10, 0);
        let modified = first.modified.unwrap_or_default();
        let settle = Duration::from_secs(5);
        let later = |s: i64| modified + chrono::TimeDelta::seconds(s);
        assert!(!must_wait(&first, later(3600), settle), "an hour old");
        assert!(!must_wait(&first, later(7), settle), "7 s old, 5 s settle");
        assert!(
            must_wait(&first, later(5), settle),
            "within the interval and MDTM's second"
        );
        assert!(
            must_wait(&first, later(-30), settle),
            "a server clock ahead of ours"
        );
        let timeless = Stat {
            size: 10,
            modified: None,
        };
        assert!(must_wait(&timeless, later(3600), settle), "no MDTM");
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
