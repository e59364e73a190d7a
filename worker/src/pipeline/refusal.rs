//! A file refused outright (unreadable: binary, empty, no `Username` column, a header over a
//! limit, too many rows) or an account that refuses the run's writes (permissions, quota) is told
//! to the admin once: one email with the reason and what to do, and the version is remembered as
//! refused — `/tmp/<sha1>.refused` on the account, or in the fleet's Redis where the account
//! cannot hold it — so the next runs skip it without trying, or emailing, again. A corrected
//! upload (another SHA1) runs at the next tick.

use crate::job::{JobRun, Mail};
use crate::layout::{MARKER_DIR, UNDO_PATH, UPLOAD_PATH};
use crate::outcome::Permanent;

/// The name of a refused version's marker.
pub fn marker_name(sha1: &str) -> String {
    format!("{sha1}.refused")
}

/// Whether the run's failure is the file's or the account's, to be told to the admin.
pub fn is_refusal(p: &Permanent) -> bool {
    matches!(
        p,
        Permanent::UnreadableFile(_) | Permanent::AccountRefused(_) | Permanent::UndoRefused(_)
    )
}

/// Whether this version was refused before (marker on the account, or the fleet's record).
pub async fn refused_before(job: &JobRun<'_>, names_in_tmp: &[String], sha1: &str) -> bool {
    if names_in_tmp.contains(&marker_name(sha1)) {
        return true;
    }
    match job
        .alerts()
        .was_refused(job.tenant().name.as_str(), sha1)
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
    let Some(file) = &job.found.file else { return };
    let sha1 = file.sha1.to_string();
    let marker = format!("{MARKER_DIR}/{}", marker_name(&sha1));
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
                .refused(job.tenant().name.as_str(), &sha1)
                .await
            {
                tracing::warn!(error = %e, "a refused file could not be remembered");
            }
        }
    }
    let mail = Mail {
        subject: format!(
            "[{}] User import REFUSED: {}",
            job.tenant().name,
            why.reason()
        ),
        body: body(job, why, file.size, &sha1),
        ..Mail::default()
    };
    job.log(match job.email(mail).await {
        Ok(()) => format!("emailed {} why the file was refused", job.recipients()),
        Err(e) => format!("the refusal email could not be sent: {e}"),
    });
}

fn body(job: &JobRun<'_>, why: &Permanent, size: u64, sha1: &str) -> String {
    let headline = match why {
        Permanent::AccountRefused(_) => {
            "could not finish: your FTP account refused a write. What the log and the report say \
             was done is done; the rest was not"
        }
        Permanent::UndoRefused(_) => "REFUSED the undo request: nothing was changed",
        _ => "REFUSED the file: nothing was changed",
    };
    let what_to_do = match why {
        Permanent::AccountRefused(_) => format!(
            "Your FTP account refused a write the import needs (its folders /tmp, /log and\n\
             /reports must be writable, and the account must have free space). Once that is\n\
             fixed, upload the file again with any change (a new version), or ask your support\n\
             contact to clear the refusal of {sha1}."
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
    };
    format!(
        "The user import for {domain} {headline}.\n\n\
         File:   {source} ({size} bytes, SHA1 {sha1})\n\
         Reason: {why}\n\
         Job:    {job_id}\n\n\
         {what_to_do}\n\n\
         The progress log is /log/user-import.log.\n",
        domain = job.tenant().portal_domain,
        source = job.found.plan.source,
        job_id = job.context().job_id,
    )
}

/// A refused version's skip line.
pub fn skipped_line(sha1: &str) -> String {
    format!(
        "this file (SHA1 {sha1}) was refused before (/tmp/{}); upload a corrected file",
        marker_name(sha1)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_file_and_a_refused_write_are_refusals_and_a_bad_key_is_not() {
        assert!(is_refusal(&Permanent::UnreadableFile("binary".into())));
        assert!(is_refusal(&Permanent::AccountRefused("553".into())));
        assert!(!is_refusal(&Permanent::ApiCredentials(401)));
        assert_eq!(marker_name("ab"), "ab.refused");
    }
}
