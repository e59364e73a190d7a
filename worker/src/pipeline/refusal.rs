//! A file refused outright (unreadable: binary, empty, no `Username` column, a header over a
//! limit, too many rows; or over the size limit) or an account that refuses the run's writes
//! (permissions, quota) is told to the admin once: one email with the reason and what to do, and
//! the version is remembered as refused — `/tmp/<sha1>.refused` on the account, or in the fleet's
//! Redis where the account cannot hold it — so the next runs skip it without trying, or emailing,
//! again. A corrected upload (another SHA1) runs at the next tick; `/uploads/user-import.rerun`
//! tries the same version again.
//!
//! A file over the size limit is refused before its download, so it has no SHA1: its marker is
//! keyed by its size and modification time (`too-large-<size>-<UTC time>.refused`). A new upload
//! changes the time, so a corrected file never matches it; the same file, untouched, always does.

use chrono::NaiveDateTime;

use crate::job::{JobRun, Mail};
use crate::layout::{MARKER_DIR, RERUN_PATH, UNDO_PATH, UPLOAD_PATH};
use crate::outcome::Permanent;

/// The version of the upload a refusal is about, which names its marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Version {
    /// Downloaded: known by its SHA1.
    Hashed { sha1: String, size: u64 },
    /// Refused before its download (over the size limit, so never hashed): known by its size
    /// and modification time, which a new upload changes.
    TooLarge {
        size: u64,
        modified: Option<NaiveDateTime>,
    },
}

impl Version {
    /// The name of its marker in `/tmp`: `<sha1>.refused`, or
    /// `too-large-<size>-<modified, UTC>.refused` (`too-large-<size>.refused` on a server that
    /// gives no modification time).
    pub fn marker_name(&self) -> String {
        format!("{}.refused", self.key())
    }

    /// Its key in the fleet's record of refused versions (the marker's name without `.refused`).
    fn key(&self) -> String {
        match self {
            Version::Hashed { sha1, .. } => sha1.clone(),
            Version::TooLarge { size, modified } => format!(
                "too-large-{size}{}",
                modified
                    .map(|m| format!("-{}", m.format("%Y%m%dT%H%M%SZ")))
                    .unwrap_or_default()
            ),
        }
    }

    fn describe(&self) -> String {
        match self {
            Version::Hashed { sha1, size } => format!("{size} bytes, SHA1 {sha1}"),
            Version::TooLarge { size, modified } => format!(
                "{size} bytes, modified {}",
                modified.map_or_else(
                    || "at a time the server does not give".to_owned(),
                    |m| m.format("%Y-%m-%d %H:%M:%S UTC").to_string()
                )
            ),
        }
    }
}

/// The version this run worked on: the downloaded file, else the one looked at before its
/// download.
fn version_of(job: &JobRun<'_>) -> Option<Version> {
    match (&job.found.file, &job.found.first_look) {
        (Some(f), _) => Some(Version::Hashed {
            sha1: f.sha1.to_string(),
            size: f.size,
        }),
        (None, Some((stat, _))) => Some(Version::TooLarge {
            size: stat.size,
            modified: stat.modified,
        }),
        (None, None) => None,
    }
}

/// Whether the run's failure is the file's or the account's, to be told to the admin.
pub fn is_refusal(p: &Permanent) -> bool {
    matches!(
        p,
        Permanent::UnreadableFile(_)
            | Permanent::FileTooLarge { .. }
            | Permanent::AccountRefused(_)
            | Permanent::UndoRefused(_)
    )
}

/// Whether this version was refused before (marker on the account, or the fleet's record).
pub async fn refused_before(job: &JobRun<'_>, names_in_tmp: &[String], version: &Version) -> bool {
    if names_in_tmp.contains(&version.marker_name()) {
        return true;
    }
    match job
        .alerts()
        .was_refused(job.tenant().name.as_str(), &version.key())
        .await
    {
        Ok(seen) => seen,
        Err(e) => {
            tracing::warn!(error = %e, "the fleet's record of refused files could not be read");
            false
        }
    }
}

/// Tells the admin why the file was refused and remembers the version.
pub async fn tell(job: &JobRun<'_>, why: &Permanent) {
    let Some(version) = version_of(job) else {
        return;
    };
    remember(job, &version, why).await;
    if job.found.plan.rerun {
        job.log(match job.remove(RERUN_PATH).await {
            Ok(()) => format!("re-run done: {RERUN_PATH} removed"),
            Err(e) => format!("{RERUN_PATH} could not be removed: {e}"),
        });
    }
    let mail = Mail {
        subject: format!(
            "[{}] User import REFUSED: {}",
            job.tenant().name,
            why.reason()
        ),
        body: body(job, why, &version),
        ..Mail::default()
    };
    job.log(match job.email(mail).await {
        Ok(()) => format!("emailed {} why the file was refused", job.recipients()),
        Err(e) => format!("the refusal email could not be sent: {e}"),
    });
}

/// Writes the version's marker, or has the fleet remember it where the account cannot.
async fn remember(job: &JobRun<'_>, version: &Version, why: &Permanent) {
    let marker = format!("{MARKER_DIR}/{}", version.marker_name());
    let note = format!("{}: {why}\n", why.reason());
    let on_account = async {
        job.mkdir(MARKER_DIR).await?;
        job.put_bytes(&marker, note.as_bytes()).await
    }
    .await;
    match on_account {
        Ok(_) => job.log(format!(
            "refused: {marker} written; this version is not tried again"
        )),
        Err(e) => {
            job.log(format!(
                "the refusal marker could not be written ({e}); the fleet remembers it"
            ));
            if let Err(e) = job
                .alerts()
                .refused(job.tenant().name.as_str(), &version.key())
                .await
            {
                tracing::warn!(error = %e, "a refused file could not be remembered");
            }
        }
    }
}

fn body(job: &JobRun<'_>, why: &Permanent, version: &Version) -> String {
    let headline = match why {
        Permanent::AccountRefused(_) => {
            "could not finish: your FTP account refused a write. What the log and the report say \
             was done is done; the rest was not"
        }
        Permanent::UndoRefused(_) => "REFUSED the undo request: nothing was changed",
        _ => "REFUSED the file: nothing was changed",
    };
    format!(
        "The user import for {domain} {headline}.\n\n\
         File:   {UPLOAD_PATH} ({version})\n\
         Reason: {why}\n\
         Job:    {job_id}\n\n\
         {what_to_do}\n\n\
         The progress log is /log/user-import.log.\n",
        domain = job.tenant().portal_domain,
        version = version.describe(),
        what_to_do = what_to_do(why),
        job_id = job.context().job_id,
    )
}

fn what_to_do(why: &Permanent) -> String {
    match why {
        Permanent::AccountRefused(_) => format!(
            "Your FTP account refused a write the import needs (its folders /tmp, /log and\n\
             /reports must be writable, and the account must have free space). Once that is\n\
             fixed, upload an empty file as {RERUN_PATH}: the next run tries this file again."
        ),
        Permanent::FileTooLarge { limit, .. } => format!(
            "Nothing was imported. The largest file the import takes is {limit} bytes: split\n\
             the export into files under that size and upload them as {UPLOAD_PATH} one after\n\
             the other (each runs at the next scheduled import), or leave out columns the\n\
             platform does not use. This version will not be tried again."
        ),
        Permanent::UndoRefused(_) => format!(
            "Nothing was undone. {UNDO_PATH} must name the job id or the file SHA1 of a run\n\
             within the undo retention that was not undone before (both are in the run's report\n\
             email). This request will not be tried again; upload a corrected one to undo a run."
        ),
        _ => format!(
            "Nothing was imported. Correct the file (docs: the user import file format) and\n\
             upload it again as {UPLOAD_PATH}: the corrected version runs at the next scheduled\n\
             import. This version will not be tried again."
        ),
    }
}

/// A refused version's skip line.
pub fn skipped_line(version: &Version) -> String {
    format!(
        "this version of the file ({}) was refused before (/tmp/{}); upload a corrected file",
        version.describe(),
        version.marker_name()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_file_a_file_too_large_and_a_refused_write_are_refusals_and_a_bad_key_is_not() {
        assert!(is_refusal(&Permanent::UnreadableFile("binary".into())));
        assert!(is_refusal(&Permanent::FileTooLarge { size: 2, limit: 1 }));
        assert!(is_refusal(&Permanent::AccountRefused("553".into())));
        assert!(!is_refusal(&Permanent::ApiCredentials(401)));
    }

    #[test]
    fn a_version_is_marked_by_its_sha1_or_before_its_download_by_size_and_time() {
        let hashed = Version::Hashed {
            sha1: "ab".into(),
            size: 1,
        };
        assert_eq!(hashed.marker_name(), "ab.refused");
        let modified =
            chrono::NaiveDate::from_ymd_opt(2026, 3, 4).and_then(|d| d.and_hms_opt(5, 6, 7));
        let big = Version::TooLarge {
            size: 900,
            modified,
        };
        assert_eq!(big.marker_name(), "too-large-900-20260304T050607Z.refused");
        let timeless = Version::TooLarge {
            size: 900,
            modified: None,
        };
        assert_eq!(timeless.marker_name(), "too-large-900.refused");
    }
}
