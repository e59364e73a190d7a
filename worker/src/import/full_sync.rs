//! Full sync (opt-in, `full_sync = true`): the users this import manages (see `store`) that are
//! absent from the file are deactivated with `SetUsers`, at most 500 uids a call, after the rows.
//! Never the nominated admin; nobody at all when the file has no rows (a broken export, most
//! likely) or when a row's username cannot be read (that row might name a managed user). Each
//! deactivation is one line of the per-record report.

use tokio::sync::mpsc;

use super::apply::{RowResult, RowStatus};
use super::names::{NameSpill, key_hash};
use super::{FirstPass, ImportError, ImportParams};
use crate::platform::{ApiError, PlatformClient};

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
        .filter(|u| !u.eq_ignore_ascii_case(&params.admin))
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
    let result = |uid: &str, status, message: String| RowResult {
        line: 0,
        username: uid.to_owned(),
        action: "deactivate".into(),
        status,
        message,
    };
    for chunk in absent.chunks(CHUNK) {
        if params.verify {
            for uid in chunk {
                sink(result(
                    uid,
                    RowStatus::Deactivated,
                    "absent from the file (full sync)".into(),
                ))?;
            }
            continue;
        }
        if cancel.should_stop() {
            return Err(ImportError::Cancelled);
        }
        let tid = match client.set_users("deactivate", chunk).await {
            Ok(tid) => tid,
            Err(ApiError::Credentials(code)) => return Err(ImportError::Credentials(code)),
            Err(e) => {
                for uid in chunk {
                    sink(result(uid, RowStatus::Failed, e.to_string()))?;
                }
                continue;
            }
        };
        let report = match client.wait_final(&tid).await {
            Ok(r) => r,
            Err(ApiError::Credentials(code)) => return Err(ImportError::Credentials(code)),
            Err(e) => {
                for uid in chunk {
                    sink(result(uid, RowStatus::Unconfirmed, e.to_string()))?;
                }
                continue;
            }
        };
        let mut done = Vec::new();
        for uid in chunk {
            let r = match &report {
                None => result(
                    uid,
                    RowStatus::Unconfirmed,
                    format!(
                        "accepted (tid {}) but not confirmed before the status timeout",
                        tid.tid.0
                    ),
                ),
                Some(rep) => match rep.errors.get(uid) {
                    Some(why) => result(
                        uid,
                        RowStatus::Failed,
                        format!("the platform refused it: {why}"),
                    ),
                    None if rep.status == 2 || (rep.status == 3 && !rep.errors.is_empty()) => {
                        done.push(uid.clone());
                        result(
                            uid,
                            RowStatus::Deactivated,
                            "absent from the file (full sync)".into(),
                        )
                    }
                    None => result(
                        uid,
                        RowStatus::Failed,
                        format!("the platform refused it: {}", rep.message),
                    ),
                },
            };
            sink(r)?;
        }
        // Deactivated users are no longer managed: a later file naming them manages them again.
        params.store.unmanage(&params.tenant, &done).await?;
    }
    Ok(())
}
