//! Stage hash: the file's SHA1 (computed while fetching) names a marker in the tenant's `/tmp`. A
//! marker present means this exact version was processed; deleting it forces the next run to
//! import again. The marker holds `<sha1>  user-import.csv`, the `sha1sum` format, so `sha1sum -c`
//! works on a copy of the file. A verify-only run's marker is `<sha1>.verified`: it keeps the same
//! file from being verified again, and does not keep it from being imported once verify-only is
//! turned off. `/uploads/user-import.rerun` makes a marked (or refused) version run again, once.

use shared::Sha1Digest;

use super::{Step, refusal};
use crate::job::{JobRun, account_error};
use crate::layout::{MARKER_DIR, RERUN_PATH};
use crate::outcome::{JobError, Outcome, Retryable};

pub fn marker_name(sha1: &Sha1Digest, dry_run: bool) -> String {
    if dry_run {
        format!("{sha1}.verified")
    } else {
        format!("{sha1}.sha1")
    }
}

pub fn marker_contents(sha1: &Sha1Digest) -> String {
    format!("{sha1}  user-import.csv\n")
}

pub async fn run(job: &mut JobRun<'_>) -> Result<Step, JobError> {
    let (sha1, size, dry_run) = match &job.found.file {
        Some(f) => (f.sha1.clone(), f.size, job.found.plan.dry_run),
        None => return Err(Retryable::WorkerFault("hash before fetch".into()).into()),
    };
    let span = tracing::Span::current();
    span.record("file.sha1", sha1.to_string());
    let marker = marker_name(&sha1, dry_run);
    let names = job.list(MARKER_DIR).await?;
    let seen = names.contains(&marker);
    let version = refusal::Version::Hashed {
        sha1: sha1.to_string(),
        size,
    };
    let refused = !seen && refusal::refused_before(job, &names, &version).await;
    // One SIZE (not a listing of /uploads): asked of every run that found a file, so that a
    // request made while a new file arrives is used by that file's run, not a later one.
    job.found.plan.rerun = job.size(RERUN_PATH).await.map_err(account_error)?.is_some();
    span.record("already_processed", seen || refused);
    if (seen || refused) && job.found.plan.rerun {
        job.log(format!(
            "re-run asked ({RERUN_PATH}): this file runs again although /tmp/{} is there",
            if seen { marker } else { version.marker_name() }
        ));
        return Ok(Step::Next);
    }
    if refused {
        job.log(refusal::skipped_line(&version));
        job.record.refused_before = Some(version.marker_name());
        return Ok(Step::Finish(Outcome::AlreadyProcessed {
            sha1: sha1.to_string(),
        }));
    }
    if !seen {
        return Ok(Step::Next);
    }
    if dry_run {
        job.log(format!(
            "verify only: this file was verified before (/tmp/{marker})"
        ));
    }
    Ok(Step::Finish(Outcome::AlreadyProcessed {
        sha1: sha1.to_string(),
    }))
}

/// Writes the file's marker (after its report).
pub async fn write_marker(
    job: &JobRun<'_>,
    sha1: &Sha1Digest,
    dry_run: bool,
) -> Result<(), JobError> {
    job.mkdir(MARKER_DIR).await?;
    let path = format!("{MARKER_DIR}/{}", marker_name(sha1, dry_run));
    job.put_bytes(&path, marker_contents(sha1).as_bytes())
        .await
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_is_in_sha1sum_format() {
        let d = Sha1Digest::from_bytes([1; 20]);
        assert_eq!(marker_name(&d, false), format!("{}.sha1", "01".repeat(20)));
        assert_eq!(
            marker_name(&d, true),
            format!("{}.verified", "01".repeat(20))
        );
        assert_eq!(
            marker_contents(&d),
            format!("{}  user-import.csv\n", "01".repeat(20))
        );
    }
}
