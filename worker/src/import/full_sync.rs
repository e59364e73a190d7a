//! Full sync (opt-in, `full_sync = true`): the users this import manages (see `store`) that are
//! absent from the file are deactivated with `SetUsers`, at most 500 uids a call, after the rows.
//! Never the nominated admin or a protected user; nobody at all when the file has no rows (a broken export, most
//! likely) or when a row's username cannot be read (that row might name a managed user). Each
//! deactivation is one line of the per-record report.

use tokio::sync::mpsc;

use super::apply::{RowResult, RowStatus};
use super::names::{NameSpill, key_hash};
use super::{FirstPass, ImportError, ImportParams};
use crate::platform::model::StatusReport;
use crate::platform::{Accepted, ApiError, PlatformClient};

/// The platform's limit of uids per `SetUsers` call.
pub const CHUNK: usize = 500;

/// The managed users absent from the file, sorted; empty without full sync.
pub(super) async fn absent_users(
    params: &ImportParams,
    first: &FirstPass,
    file_users: Option<NameSpill>,
    progress: &mpsc::UnboundedSender<String>,
) -> Result<Vec<String>, ImportError> {
    let Some(file_users) = file_users.filter(|_| params.options.full_sync) else {
        return Ok(Vec::new());
    };
    if first.rows == 0 {
        // A header without rows is more likely a broken export than an empty organisation.
        let _ = progress
            .send("full sync: nobody is deactivated this time: the file has no rows".to_owned());
        return Ok(Vec::new());
    }
    if first.nameless > 0 {
        let _ = progress.send(format!(
            "full sync: nobody is deactivated this time: {} rows have no readable username",
            first.nameless
        ));
        return Ok(Vec::new());
    }
    let candidates: Vec<(u64, String)> = params
        .store
        .managed(&params.tenant)
        .await?
        .into_iter()
        .filter(|u| !params.protects(u))
        .map(|u| (key_hash(&u), u))
        .collect();
    // A merge of the file's sorted names with the managed ones: no set of the file in memory.
    let mut absent = tokio::task::spawn_blocking(move || file_users.sorted()?.absent(candidates))
        .await
        .map_err(|e| ImportError::Unreadable(e.to_string()))??;
    absent.sort();
    let _ = progress.send(format!(
        "full sync: {} managed users are absent from the file",
        absent.len()
    ));
    Ok(absent)
}

/// Deactivates `absent` (or, for verify-only, reports that it would), one result per user.
pub(super) async fn deactivate(
    client: &PlatformClient,
    params: &ImportParams,
    absent: &[String],
    cancel: &dyn super::StopCheck,
    sink: &mut impl FnMut(RowResult) -> Result<(), ImportError>,
) -> Result<(), ImportError> {
    for chunk in absent.chunks(CHUNK) {
        if params.verify {
            for uid in chunk {
                sink(absent_line(uid))?;
            }
            continue;
        }
        if cancel.should_stop() {
            return Err(ImportError::Cancelled);
        }
        deactivate_chunk(client, params, chunk, sink).await?;
    }
    Ok(())
}

/// Deactivates one chunk with one `SetUsers` call, follows it to its final status, reports each
/// user and stops managing the ones deactivated.
async fn deactivate_chunk(
    client: &PlatformClient,
    params: &ImportParams,
    chunk: &[String],
    sink: &mut impl FnMut(RowResult) -> Result<(), ImportError>,
) -> Result<(), ImportError> {
    let accepted = match client.set_users("deactivate", chunk).await {
        Ok(accepted) => accepted,
        Err(ApiError::Credentials(code)) => return Err(ImportError::Credentials(code)),
        Err(e) => return report_all(chunk, RowStatus::Failed, &e, sink),
    };
    let report = match client.wait_final(&accepted).await {
        Ok(r) => r,
        Err(ApiError::Credentials(code)) => return Err(ImportError::Credentials(code)),
        Err(e) => return report_all(chunk, RowStatus::Unconfirmed, &e, sink),
    };
    let mut done = Vec::new();
    for uid in chunk {
        let r = chunk_line(uid, &accepted, report.as_ref());
        if r.status == RowStatus::Deactivated {
            done.push(uid.clone());
        }
        sink(r)?;
    }
    if let Some(journal) = &params.journal {
        for uid in &done {
            journal.record(&super::undo::deactivated_absent(uid));
        }
    }
    // Deactivated users are no longer managed: a later file naming them manages them again.
    params.store.unmanage(&params.tenant, &done).await?;
    Ok(())
}

/// Reports every user of a chunk with the same status and the call's error.
fn report_all(
    chunk: &[String],
    status: RowStatus,
    error: &ApiError,
    sink: &mut impl FnMut(RowResult) -> Result<(), ImportError>,
) -> Result<(), ImportError> {
    for uid in chunk {
        sink(deactivation(uid, status, error.to_string()))?;
    }
    Ok(())
}

/// A user's line once the chunk's `SetUsers` was accepted: `report` is its final status, if any.
fn chunk_line(uid: &str, accepted: &Accepted, report: Option<&StatusReport>) -> RowResult {
    let Some(rep) = report else {
        return deactivation(
            uid,
            RowStatus::Unconfirmed,
            format!(
                "accepted (tid {}) but not confirmed before the status timeout",
                accepted.tid.0
            ),
        );
    };
    match rep.errors.get(uid) {
        Some(why) => deactivation(
            uid,
            RowStatus::Failed,
            format!("the platform refused it: {why}"),
        ),
        None if rep.status == 2 || (rep.status == 3 && !rep.errors.is_empty()) => absent_line(uid),
        None => deactivation(
            uid,
            RowStatus::Failed,
            format!("the platform refused it: {}", rep.message),
        ),
    }
}

/// The line of a user deactivated (or, for verify-only, to be) as absent from the file.
fn absent_line(uid: &str) -> RowResult {
    deactivation(
        uid,
        RowStatus::Deactivated,
        "absent from the file (full sync)".into(),
    )
}

/// A line of the per-record report for a full-sync deactivation (no line of the file).
fn deactivation(uid: &str, status: RowStatus, message: String) -> RowResult {
    RowResult {
        line: 0,
        username: uid.to_owned(),
        action: "deactivate".into(),
        status,
        message,
    }
}
