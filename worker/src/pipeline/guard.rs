//! The mass-change guard's state on the tenant's FTPS account (see docs/tenant-admin.md):
//! - `/tmp/<sha1>.held`: this version of the file was held; it holds the counts found;
//! - `/uploads/user-import.confirm`: the admin's confirmation, a text file holding the SHA1 quoted
//!   in the email. With it, the next run imports the held file; both files are then removed.
//!
//! While a file is held and not confirmed, each run stops here without any API call and without
//! emailing again.

use shared::Sha1Digest;
use shared::registry::Tenant;

use crate::account::{self, Account, AccountError};
use crate::email::Mailer;
use crate::import::Held;
use crate::pipeline::hash::MARKER_DIR;

pub const CONFIRM_PATH: &str = "/uploads/user-import.confirm";
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

pub async fn state(session: &mut dyn Account, sha1: &Sha1Digest) -> Result<State, AccountError> {
    if !account::exists_in(session, MARKER_DIR, &held_name(sha1)).await? {
        return Ok(State::Open);
    }
    let confirmed = account::read_small(session, CONFIRM_PATH, CONFIRM_MAX_BYTES)
        .await
        .or_else(|e| match e {
            // Larger than a confirmation can be: not one.
            AccountError::TooLarge { .. } => Ok(None),
            other => Err(other),
        })?
        .is_some_and(|b| confirms(&String::from_utf8_lossy(&b), sha1));
    if confirmed {
        return Ok(State::Confirmed);
    }
    let text = account::read_small(session, &held_path(sha1), CONFIRM_MAX_BYTES)
        .await?
        .unwrap_or_default();
    Ok(State::Held(parse_held(&String::from_utf8_lossy(&text))))
}

pub async fn write_held(
    session: &mut dyn Account,
    sha1: &Sha1Digest,
    h: &Held,
) -> Result<(), AccountError> {
    session.mkdir(MARKER_DIR).await?;
    let contents = held_contents(h);
    session
        .upload(&held_path(sha1), &mut contents.as_bytes())
        .await
        .map(|_| ())
}

/// After the confirmed file was imported: the held marker and the confirmation go.
pub async fn clear(session: &mut dyn Account, sha1: &Sha1Digest) -> Result<(), AccountError> {
    session.remove(&held_path(sha1)).await?;
    session.remove(CONFIRM_PATH).await
}

pub fn subject(tenant: &Tenant, h: &Held) -> String {
    format!(
        "[{}] User import HELD: {} deactivations, {} updates need your confirmation",
        tenant.name, h.deactivations, h.updates
    )
}

pub fn body(tenant: &Tenant, h: &Held, sha1: &Sha1Digest, size: u64) -> String {
    let g = &tenant.import.mass_change_guard;
    format!(
        "The user import for {domain} was HELD: nothing has been changed.\n\n\
         File:          /uploads/user-import.csv ({size} bytes, SHA1 {sha1})\n\
         Deactivations: {d} (the limit is more than {dc} users and more than {dp}%)\n\
         Updates:       {u} (the limit is more than {uc} users and more than {up}%)\n\
         Existing users the file touches: {e}\n\n\
         If these changes are intended, confirm them: upload a text file\n\
         /uploads/user-import.confirm holding this line:\n\n\
         {sha1}\n\n\
         The next run then imports this file. If they are not intended, upload a corrected\n\
         /uploads/user-import.csv instead. Until then each run skips this file without changes.\n",
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

/// Emails the admin that the file is held; `Err` carries why.
pub async fn email(
    mailer: &Mailer,
    tenant: &Tenant,
    h: &Held,
    sha1: &Sha1Digest,
    size: u64,
) -> Result<(), String> {
    mailer
        .send(
            &tenant.admin.email,
            &subject(tenant, h),
            body(tenant, h, sha1, size),
            None,
            3,
        )
        .await
        .map_err(|e| e.to_string())
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
