//! Stage guard, the mass-change guard's state on the tenant's account (see docs/tenant-admin.md):
//! - `/tmp/<sha1>.held`: this version of the file was held; it holds the counts found;
//! - `/uploads/user-import.confirm`: the admin's confirmation, a text file holding the SHA1 quoted
//!   in the email. With it, the next run imports the held file; both files are then removed.
//!
//! While a file is held and not confirmed, each run stops here without any API call and without
//! emailing again. The import decides whether a new file is held; [`hold`] then leaves the held
//! marker and tells the admin.

use shared::Sha1Digest;
use shared::registry::Tenant;

use super::Step;
use crate::account::AccountError;
use crate::import::Held;
use crate::job::{JobRun, Mail, account_error};
use crate::layout::{CONFIRM_PATH, FULL_FLAG_NAME, MARKER_DIR, UPLOAD_DIR};
use crate::outcome::{JobError, Outcome, Retryable};

/// A confirmation file larger than this is not read (it only needs to hold a SHA1).
const CONFIRM_MAX_BYTES: u64 = 4096;

pub fn held_name(sha1: &Sha1Digest) -> String {
    format!("{sha1}.held")
}

pub fn held_path(sha1: &Sha1Digest) -> String {
    format!("{MARKER_DIR}/{}", held_name(sha1))
}

/// The held marker's text: `key=value` lines a person can read and the worker reads back.
pub fn held_contents(h: &Held) -> String {
    format!(
        "deactivations={}\nupdates={}\nexisting={}\n",
        h.deactivations, h.updates, h.existing
    )
}

pub fn parse_held(text: &str) -> Held {
    let mut h = Held {
        deactivations: 0,
        updates: 0,
        existing: 0,
    };
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v: u64 = v.trim().parse().unwrap_or(0);
        match k.trim() {
            "deactivations" => h.deactivations = v,
            "updates" => h.updates = v,
            "existing" => h.existing = v,
            _ => {}
        }
    }
    h
}

/// Whether a confirmation text names this file: any whitespace-separated word equal to its
/// SHA1 (case-insensitive), so `sha1sum`'s output works as well as the bare hash.
pub fn confirms(text: &str, sha1: &Sha1Digest) -> bool {
    let want = sha1.to_string();
    text.split_whitespace()
        .any(|w| w.eq_ignore_ascii_case(&want))
}

/// The guard's state for this file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Not held before.
    Open,
    /// Held, not confirmed: the counts found when it was held.
    Held(Held),
    /// Held and confirmed by the admin: import it without the guard.
    Confirmed,
}

/// Whether the guard looks at this run: it is on, and the run may write.
pub fn applies(job: &JobRun<'_>) -> bool {
    let options = &job.tenant().import;
    !job.found.plan.dry_run && (options.mass_change_guard.enabled || options.skip_unchanged)
}

/// A held file waits for the admin's confirmation, without API calls; a confirmed one is
/// imported. With `skip_unchanged`, the full-push flag is read here too.
pub async fn run(job: &mut JobRun<'_>) -> Result<Step, JobError> {
    let sha1 = match &job.found.file {
        Some(f) => f.sha1.clone(),
        None => return Err(Retryable::WorkerFault("guard before fetch".into()).into()),
    };
    if job.tenant().import.mass_change_guard.enabled {
        match state(job, &sha1).await? {
            State::Open => {}
            State::Confirmed => job.found.plan.confirmed = true,
            State::Held(h) => {
                job.log("this file is held by the mass-change guard and not confirmed yet");
                return Ok(Step::Finish(Outcome::Held {
                    sha1: sha1.to_string(),
                    deactivations: h.deactivations,
                    updates: h.updates,
                    existing: h.existing,
                    email_sent: false,
                }));
            }
        }
    }
    job.found.plan.force_full =
        job.tenant().import.skip_unchanged && job.exists(UPLOAD_DIR, FULL_FLAG_NAME).await?;
    Ok(Step::Next)
}

async fn state(job: &JobRun<'_>, sha1: &Sha1Digest) -> Result<State, JobError> {
    if !job.exists(MARKER_DIR, &held_name(sha1)).await? {
        return Ok(State::Open);
    }
    let confirmed = job
        .read_small(CONFIRM_PATH, CONFIRM_MAX_BYTES)
        .await
        .or_else(|e| match e {
            // Larger than a confirmation can be: not one.
            AccountError::TooLarge { .. } => Ok(None),
            other => Err(other),
        })
        .map_err(account_error)?
        .is_some_and(|b| confirms(&String::from_utf8_lossy(&b), sha1));
    if confirmed {
        return Ok(State::Confirmed);
    }
    let text = job
        .read_small(&held_path(sha1), CONFIRM_MAX_BYTES)
        .await
        .map_err(account_error)?
        .unwrap_or_default();
    Ok(State::Held(parse_held(&String::from_utf8_lossy(&text))))
}

/// The import held the file: the held marker goes on the account (so the next runs wait without
/// API calls) and the admin is told how to confirm.
pub async fn hold(job: &JobRun<'_>, h: Held) -> Result<Step, JobError> {
    let Some(file) = &job.found.file else {
        return Err(Retryable::WorkerFault("hold before fetch".into()).into());
    };
    job.mkdir(MARKER_DIR).await?;
    job.put_bytes(&held_path(&file.sha1), held_contents(&h).as_bytes())
        .await?;
    job.log(format!(
        "held: /tmp/{} written; nothing was changed",
        held_name(&file.sha1)
    ));
    let mail = Mail {
        subject: subject(job.tenant(), &h),
        body: body(
            job.tenant(),
            &h,
            &file.sha1,
            (job.found.plan.source, file.size),
        ),
        ..Mail::default()
    };
    let email_sent = match job.email(mail).await {
        Ok(()) => {
            job.log(format!("emailed {} how to confirm", job.recipients()));
            true
        }
        Err(why) => {
            job.log(format!("the held email could not be sent: {why}"));
            false
        }
    };
    Ok(Step::Finish(Outcome::Held {
        sha1: file.sha1.to_string(),
        deactivations: h.deactivations,
        updates: h.updates,
        existing: h.existing,
        email_sent,
    }))
}

/// After the confirmed file was imported: the held marker and the confirmation go.
pub async fn clear(job: &JobRun<'_>, sha1: &Sha1Digest) -> Result<(), JobError> {
    job.remove(&held_path(sha1)).await?;
    job.remove(CONFIRM_PATH).await
}

pub fn subject(tenant: &Tenant, h: &Held) -> String {
    format!(
        "[{}] User import HELD: {} deactivations, {} updates need your confirmation",
        tenant.name, h.deactivations, h.updates
    )
}

/// `file`: the held file's path on the account and its size (an undo request is held like a file).
pub fn body(tenant: &Tenant, h: &Held, sha1: &Sha1Digest, (source, size): (&str, u64)) -> String {
    let g = &tenant.import.mass_change_guard;
    format!(
        "The user import for {domain} was HELD: nothing has been changed.\n\n\
         File:          {source} ({size} bytes, SHA1 {sha1})\n\
         Deactivations: {d} (the limit is more than {dc} users and more than {dp}%)\n\
         Updates:       {u} (the limit is more than {uc} users and more than {up}%)\n\
         Existing users the file touches: {e}\n\n\
         If these changes are intended, confirm them: upload a text file\n\
         /uploads/user-import.confirm holding this line:\n\n\
         {sha1}\n\n\
         The next run then carries it out. If they are not intended, upload a corrected\n\
         {source} instead. Until then each run skips this file without changes.\n",
        domain = tenant.portal_domain,
        d = h.deactivations,
        dc = g.max_deactivate_count,
        dp = g.max_deactivate_percent,
        u = h.updates,
        uc = g.max_update_count,
        up = g.max_update_percent,
        e = h.existing,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_held_marker_reads_back() {
        let h = Held {
            deactivations: 30,
            updates: 2,
            existing: 40,
        };
        assert_eq!(parse_held(&held_contents(&h)), h);
    }

    #[test]
    fn a_confirmation_names_the_exact_file() {
        let d = Sha1Digest::from_bytes([0xab; 20]);
        let hex = "ab".repeat(20);
        assert!(confirms(&format!("{hex}\n"), &d));
        assert!(confirms(
            &format!("{}  user-import.csv\n", hex.to_uppercase()),
            &d
        ));
        assert!(!confirms("yes please", &d));
        assert!(!confirms(&"ab".repeat(19), &d));
    }
}
