//! Undoing a run. While an import writes, each user it changes leaves one line in the run's undo
//! journal (JSON lines, streamed to a local file, then kept on the tenant's account beside the
//! report as `/reports/<report name>.undo.jsonl`): the user's state *before* the run, for what the
//! run changed — the profile fields it set, the groups it added, the state it changed, the name
//! it renamed — or that the run created the user. It is the `GetUser` read every row already
//! makes before writing, so keeping it costs no call.
//!
//! An undo reads a journal back and, for each user, reads it again and sends what puts it back:
//! the fields and the name as they were, the groups the run added removed, the state as it was;
//! a user the run created is deactivated (never deleted). What is already as it was is left.
//! Protected users are never touched, as in an import. The undo goes through the mass-change
//! guard like an import: its deactivations and updates are counted from the journal first.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use super::apply::{PreRead, RowResult, RowStatus};
use super::row::{RowInput, StateChange};
use super::{Held, ImportError, ImportParams, ImportSummary, Run, StopCheck, Tally};
use crate::platform::model::{UserRecord, WriteResult};
use crate::platform::{ApiError, PlatformClient};

/// The journal's first line: which run it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalHeader {
    /// Always 1: the format of the lines that follow.
    pub undo_journal: u32,
    pub job_id: String,
    pub sha1: String,
    /// RFC 3339.
    pub started_at: String,
}

/// What a run changed on one user, with what was there before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "kebab-case")]
pub enum Change {
    /// The run created this user.
    Created { line: u64, username: String },
    /// The run changed this existing user.
    Changed {
        line: u64,
        /// The user's name after the run.
        username: String,
        /// Its name before, when the run renamed it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        renamed_from: Option<String>,
        /// The profile fields the run set, with their values before (`""`: empty).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        profile: BTreeMap<String, String>,
        /// The groups the run added.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        groups_added: Vec<String>,
        /// The state before, when the run changed it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        state: Option<String>,
    },
}

impl Change {
    fn line(&self) -> u64 {
        match self {
            Change::Created { line, .. } | Change::Changed { line, .. } => *line,
        }
    }

    fn username(&self) -> &str {
        match self {
            Change::Created { username, .. } | Change::Changed { username, .. } => username,
        }
    }

    /// Whether undoing it deactivates a user (the guard counts these apart).
    fn deactivates(&self) -> bool {
        match self {
            Change::Created { .. } => true,
            Change::Changed { state, .. } => state
                .as_deref()
                .is_some_and(|s| s.eq_ignore_ascii_case("deactivated")),
        }
    }
}

/// The run's journal, written as rows finish (from concurrent tasks; one line each).
#[derive(Debug)]
pub struct Journal {
    out: Mutex<std::io::BufWriter<std::fs::File>>,
    changes: AtomicU64,
    /// A line could not be written: the journal is incomplete (said in the log).
    failed: AtomicBool,
}

impl Journal {
    /// Creates the journal at `path` with its header line.
    pub fn create(path: &Path, header: &JournalHeader) -> std::io::Result<Self> {
        let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::fs::File::create(path)?);
        serde_json::to_writer(&mut out, header)?;
        out.write_all(b"\n")?;
        Ok(Self {
            out: Mutex::new(out),
            changes: AtomicU64::new(0),
            failed: AtomicBool::new(false),
        })
    }

    /// Adds one user's change.
    pub fn record(&self, change: &Change) {
        let written = match self.out.lock() {
            Ok(mut out) => serde_json::to_writer(&mut *out, change)
                .map_err(std::io::Error::from)
                .and_then(|()| out.write_all(b"\n")),
            Err(_) => Err(std::io::Error::other("poisoned")),
        };
        match written {
            Ok(()) => self.changes.fetch_add(1, Ordering::Relaxed),
            Err(_) => {
                self.failed.store(true, Ordering::Relaxed);
                0
            }
        };
    }

    /// Flushes the file; (changes recorded, whether every one was).
    pub fn finish(&self) -> (u64, bool) {
        let flushed = self
            .out
            .lock()
            .map(|mut o| o.flush().is_ok())
            .unwrap_or(false);
        (
            self.changes.load(Ordering::Relaxed),
            flushed && !self.failed.load(Ordering::Relaxed),
        )
    }
}

/// What a row's writes (`steps`, in the report's `action` words) changed, from what was read
/// before them; `None` when nothing was sent.
pub fn before_image(row: &RowInput, read: Option<&PreRead>, steps: &[&str]) -> Option<Change> {
    let has = |s: &str| steps.contains(&s);
    if !(has("create") || has("update") || has("activate") || has("deactivate")) {
        return None;
    }
    let (current, renamed) =
        read.map_or((None, None), |r| (r.current.as_ref(), r.renamed.as_ref()));
    let (user, uid, rename) = match (current, renamed, &row.new_username) {
        (Some(u), _, _) => (u, row.username.clone(), row.new_username.clone()),
        (None, Some(u), Some(new)) => (u, new.clone(), None),
        _ if has("create") => {
            let username = row.new_username.as_ref().unwrap_or(&row.username).clone();
            return Some(Change::Created {
                line: row.line,
                username,
            });
        }
        // Created by someone else meanwhile (a 409) and updated: not known what it was.
        _ => return None,
    };
    let updated = has("update");
    let profile = row
        .profile
        .iter()
        .filter(|_| updated)
        .filter_map(|(k, v)| {
            let was = user.profile_text(k).unwrap_or_default();
            (&was != v).then(|| (k.clone(), was))
        })
        .collect();
    let had: BTreeSet<String> = user.groups.iter().map(|g| g.name.to_lowercase()).collect();
    let groups_added = row
        .groups
        .iter()
        .filter(|g| updated && !had.contains(&g.to_lowercase()))
        .cloned()
        .collect();
    let renamed_to = rename.filter(|_| updated);
    let state_changed = row.state.is_some() && (has("activate") || has("deactivate"));
    Some(Change::Changed {
        line: row.line,
        username: renamed_to.clone().unwrap_or_else(|| uid.clone()),
        renamed_from: renamed_to.map(|_| uid),
        profile,
        groups_added,
        state: state_changed.then(|| user.state.clone().unwrap_or_else(|| "Activated".into())),
    })
}

/// A full-sync deactivation, for the journal.
pub fn deactivated_absent(uid: &str) -> Change {
    Change::Changed {
        line: 0,
        username: uid.to_owned(),
        renamed_from: None,
        profile: BTreeMap::new(),
        groups_added: Vec::new(),
        state: Some("Activated".into()),
    }
}

/// Reads the journal's header line. The journal is on the tenant's account, where it can be
/// edited: a header whose job id, SHA1 or time is not one is refused, so none of its text reaches
/// an email unchecked.
pub fn read_header(journal: &Path) -> Result<JournalHeader, ImportError> {
    let mut first = String::new();
    std::io::BufReader::new(std::fs::File::open(journal)?).read_line(&mut first)?;
    let bad = |what: &str| ImportError::Unreadable(format!("the undo journal's header: {what}"));
    let header: JournalHeader = serde_json::from_str(&first).map_err(|e| bad(&e.to_string()))?;
    if header.undo_journal != 1 {
        return Err(bad("an unknown format"));
    }
    if uuid::Uuid::parse_str(&header.job_id).is_err() {
        return Err(bad("the job id is not one"));
    }
    if shared::Sha1Digest::parse(&header.sha1).is_err() {
        return Err(bad("the SHA1 is not one"));
    }
    if chrono::DateTime::parse_from_rfc3339(&header.started_at).is_err() {
        return Err(bad("the start time is not one"));
    }
    Ok(header)
}

/// The journal's changes, in order (the header skipped).
fn changes(journal: &Path) -> Result<impl Iterator<Item = Result<Change, String>>, ImportError> {
    let lines = std::io::BufReader::new(std::fs::File::open(journal)?).lines();
    Ok(lines.skip(1).filter_map(|line| match line {
        Ok(l) if l.trim().is_empty() => None,
        Ok(l) => Some(serde_json::from_str::<Change>(&l).map_err(|e| e.to_string())),
        Err(e) => Some(Err(e.to_string())),
    }))
}

/// Undoes the run whose journal is `journal`: one result per user in the journal, in its order.
/// Held by the mass-change guard (before any call) when the changes it would make are too many.
pub async fn run(
    journal: &Path,
    results_path: &Path,
    client: &PlatformClient,
    params: &ImportParams,
    progress: &mpsc::UnboundedSender<String>,
    cancel: &dyn StopCheck,
) -> Result<Run, ImportError> {
    let held = plan(journal)?;
    let _ = progress.send(format!(
        "undo: the journal lists {} users; undoing would deactivate at most {} and update at most {}",
        held.existing, held.deactivations, held.updates
    ));
    let guard = &params.options.mass_change_guard;
    if !params.confirmed
        && (guard.deactivations_exceeded(held.deactivations, held.existing)
            || guard.updates_exceeded(held.updates, held.existing))
    {
        return Ok(Run::Held(held));
    }
    let mut tally = Tally::new(results_path, params, held.existing, progress)?;
    let ctx = UndoContext {
        client,
        params,
        cancel,
    };
    let ctx = &ctx;
    let mut results = futures::stream::iter(changes(journal)?.enumerate())
        .map(|(i, change)| async move { ctx.one(i as u64 + 1, change).await })
        .buffered(params.concurrency.max(1));
    while let Some(r) = results.next().await {
        tally.record(r?)?;
    }
    drop(results);
    // An undo has no uploaded rows to hand back: no reject file.
    let (counts, first_problems, _rejected) = tally.finish()?;
    Ok(Run::Done(ImportSummary {
        counts,
        unknown_columns: Vec::new(),
        first_problems,
        results_file: results_path.to_owned(),
        rejects: None,
        delimiter: ',',
        encoding: super::decode::TextEncoding::Utf8,
        verify: false,
    }))
}

/// The guard's counts, from the journal alone: every user listed exists (or did), the created
/// ones and those that were deactivated before are deactivations, the rest updates.
fn plan(journal: &Path) -> Result<Held, ImportError> {
    let mut held = Held {
        deactivations: 0,
        updates: 0,
        existing: 0,
    };
    for change in changes(journal)? {
        held.existing += 1;
        match change {
            Ok(c) if c.deactivates() => held.deactivations += 1,
            Ok(_) => held.updates += 1,
            Err(_) => {}
        }
    }
    Ok(held)
}

struct UndoContext<'a> {
    client: &'a PlatformClient,
    params: &'a ImportParams,
    cancel: &'a dyn StopCheck,
}

/// Why one user's undo did not go through.
enum Failure {
    Stop(ImportError),
    Failed(String),
    Unconfirmed(String),
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Credentials(code) => Failure::Stop(ImportError::Credentials(code)),
            ApiError::Stopped => Failure::Stop(ImportError::Cancelled),
            other => Failure::Failed(other.to_string()),
        }
    }
}

impl UndoContext<'_> {
    /// Undoes one journal line (`index`: its place in the journal, the report's line).
    async fn one(
        &self,
        index: u64,
        change: Result<Change, String>,
    ) -> Result<RowResult, ImportError> {
        let change = match change {
            Ok(c) => c,
            Err(e) => {
                return Ok(result(
                    index,
                    "",
                    "none",
                    RowStatus::Invalid,
                    format!("unreadable journal line: {e}"),
                ));
            }
        };
        let name = change.username().to_owned();
        if self.params.protects(&name) {
            let why = "a protected user: the undo never changes it".to_owned();
            return Ok(result(index, &name, "none", RowStatus::Protected, why));
        }
        let mut steps: Vec<&'static str> = Vec::new();
        let outcome = match &change {
            Change::Created { username, .. } => self.deactivate_created(username, &mut steps).await,
            Change::Changed { .. } => self.restore(&change, &mut steps).await,
        };
        if !steps.is_empty() {
            self.forget(&change).await?;
        }
        let action = if steps.is_empty() {
            "none".to_owned()
        } else {
            steps.join("+")
        };
        let from_line = match change.line() {
            0 => "a full-sync deactivation".to_owned(),
            l => format!("line {l} of the undone file"),
        };
        Ok(match outcome {
            Ok((status, note)) => result(
                index,
                &name,
                &action,
                status,
                format!("{from_line}: {note}"),
            ),
            Err(Failure::Stop(e)) => return Err(e),
            Err(Failure::Failed(m)) => result(index, &name, &action, RowStatus::Failed, m),
            Err(Failure::Unconfirmed(m)) => {
                result(index, &name, &action, RowStatus::Unconfirmed, m)
            }
        })
    }

    /// A user the run created is deactivated (never deleted).
    async fn deactivate_created(
        &self,
        username: &str,
        steps: &mut Vec<&'static str>,
    ) -> Result<(RowStatus, String), Failure> {
        let Some(now) = self.client.get_user(username).await? else {
            return Ok((
                RowStatus::Unchanged,
                "created by the run, no longer there".into(),
            ));
        };
        if is_state(&now, "deactivated") {
            return Ok((
                RowStatus::Unchanged,
                "created by the run, already deactivated".into(),
            ));
        }
        steps.push("deactivate");
        self.state(username, StateChange::Deactivate).await?;
        Ok((
            RowStatus::Deactivated,
            "created by the run: deactivated".into(),
        ))
    }

    /// A user the run changed gets back what it had: fields, name, groups, state.
    async fn restore(
        &self,
        change: &Change,
        steps: &mut Vec<&'static str>,
    ) -> Result<(RowStatus, String), Failure> {
        let Change::Changed {
            username,
            renamed_from,
            profile,
            groups_added,
            state,
            ..
        } = change
        else {
            return Ok((RowStatus::Unchanged, String::new()));
        };
        let Some(now) = self.client.get_user(username).await? else {
            return Err(Failure::Failed(format!("{username:?} no longer exists")));
        };
        let mut fields = Map::new();
        for (k, was) in profile {
            if now.profile_text(k).unwrap_or_default() != *was {
                fields.insert(k.clone(), Value::String(was.clone()));
            }
        }
        if let Some(old) = renamed_from {
            fields.insert("username".into(), Value::String(old.clone()));
        }
        let has: BTreeSet<String> = now.groups.iter().map(|g| g.name.to_lowercase()).collect();
        let remove: Vec<Value> = groups_added
            .iter()
            .filter(|g| has.contains(&g.to_lowercase()))
            .map(|g| json!({"name": g, "action": "remove"}))
            .collect();
        let mut status = RowStatus::Unchanged;
        if !fields.is_empty() || !remove.is_empty() {
            let mut body =
                json!({"params": {"action": "update", "uid": username}, "profile": fields});
            if !remove.is_empty() {
                body["groups"] = Value::Array(remove);
            }
            steps.push("update");
            self.write(&body, username).await?;
            status = RowStatus::Updated;
        }
        let uid = renamed_from.as_deref().unwrap_or(username);
        if let Some(was) = state
            && !is_state(&now, was)
        {
            let change = if was.eq_ignore_ascii_case("deactivated") {
                StateChange::Deactivate
            } else {
                StateChange::Activate
            };
            steps.push(if change == StateChange::Deactivate {
                "deactivate"
            } else {
                "activate"
            });
            self.state(uid, change).await?;
            status = match change {
                StateChange::Deactivate => RowStatus::Deactivated,
                StateChange::Activate => RowStatus::Updated,
            };
        }
        let note = if status == RowStatus::Unchanged {
            "already as before the run"
        } else {
            "restored as before the run"
        };
        Ok((status, note.into()))
    }

    /// The fleet's memory of the user follows the undo: its row fingerprint is forgotten (so the
    /// same row is sent again by the next import) and a user the run created is no longer
    /// managed by full sync.
    async fn forget(&self, change: &Change) -> Result<(), ImportError> {
        let (store, tenant) = (&self.params.store, self.params.tenant.as_str());
        let options = &self.params.options;
        let names: Vec<&str> = match change {
            Change::Created { username, .. } => vec![username],
            Change::Changed {
                username,
                renamed_from,
                ..
            } => std::iter::once(username.as_str())
                .chain(renamed_from.as_deref())
                .collect(),
        };
        if options.skip_unchanged {
            for name in &names {
                store.forget(tenant, name).await?;
            }
        }
        if options.full_sync
            && let Change::Created { username, .. } = change
        {
            store
                .unmanage(tenant, std::slice::from_ref(username))
                .await?;
        }
        Ok(())
    }

    async fn state(&self, uid: &str, change: StateChange) -> Result<(), Failure> {
        let action = match change {
            StateChange::Activate => "activate",
            StateChange::Deactivate => "deactivate",
        };
        self.write(&json!({"params": {"action": action, "uid": uid}}), uid)
            .await
    }

    /// One write, followed to its final status; stops first once the job must stop.
    async fn write(&self, body: &Value, uid: &str) -> Result<(), Failure> {
        if self.cancel.should_stop() {
            return Err(Failure::Stop(ImportError::Cancelled));
        }
        let accepted = self.client.set_user(body).await?;
        match self.client.wait_for(&accepted, uid).await? {
            WriteResult::Succeeded => Ok(()),
            WriteResult::Failed(why) => {
                Err(Failure::Failed(format!("the platform refused it: {why}")))
            }
            WriteResult::Unconfirmed => Err(Failure::Unconfirmed(format!(
                "accepted (tid {}) but not confirmed before the status timeout",
                accepted.tid.0
            ))),
        }
    }
}

fn is_state(user: &UserRecord, state: &str) -> bool {
    user.state
        .as_deref()
        .unwrap_or("Activated")
        .eq_ignore_ascii_case(state)
}

fn result(
    line: u64,
    username: &str,
    action: &str,
    status: RowStatus,
    message: String,
) -> RowResult {
    RowResult {
        line,
        username: username.to_owned(),
        action: action.to_owned(),
        status,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::model::GroupRef;

    fn row(username: &str) -> RowInput {
        RowInput {
            line: 2,
            username: username.into(),
            new_username: None,
            password: None,
            profile: vec![
                ("surname".into(), "New".into()),
                ("forename".into(), "Ada".into()),
            ],
            groups: vec!["Staff".into(), "Math".into()],
            state: None,
        }
    }

    fn read(state: &str) -> PreRead {
        PreRead {
            line: 2,
            current: Some(UserRecord {
                profile: [
                    ("surname".to_owned(), json!("Old")),
                    ("forename".to_owned(), json!("Ada")),
                ]
                .into(),
                groups: vec![GroupRef {
                    name: "staff".into(),
                }],
                state: Some(state.into()),
            }),
            renamed: None,
        }
    }

    #[test]
    fn the_before_image_holds_only_what_the_run_changed() {
        let mut r = row("ada");
        r.state = Some(StateChange::Deactivate);
        let got = before_image(&r, Some(&read("Activated")), &["update", "deactivate"]);
        assert_eq!(
            got,
            Some(Change::Changed {
                line: 2,
                username: "ada".into(),
                renamed_from: None,
                profile: [("surname".to_owned(), "Old".to_owned())].into(),
                groups_added: vec!["Math".into()],
                state: Some("Activated".into()),
            })
        );
        assert_eq!(
            before_image(&r, Some(&read("Activated")), &[]),
            None,
            "nothing sent"
        );
        assert_eq!(
            before_image(&row("bob"), None, &["create"]),
            Some(Change::Created {
                line: 2,
                username: "bob".into()
            })
        );
    }

    #[test]
    fn a_header_that_is_not_one_is_refused() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("j.jsonl");
        let good = JournalHeader {
            undo_journal: 1,
            job_id: "0b6f3f1e-1b7a-4c52-9d4e-6c1f0e7a2b11".into(),
            sha1: "ab".repeat(20),
            started_at: "2026-03-02T06:00:00+00:00".into(),
        };
        drop(Journal::create(&path, &good)?);
        assert_eq!(read_header(&path).ok(), Some(good.clone()));
        let tampered = JournalHeader {
            job_id: "x\r\nBcc: evil@attacker.example".into(),
            ..good
        };
        drop(Journal::create(&path, &tampered)?);
        assert!(read_header(&path).is_err());
        Ok(())
    }

    #[test]
    fn a_journal_line_reads_back() -> Result<(), serde_json::Error> {
        let c = Change::Changed {
            line: 3,
            username: "b".into(),
            renamed_from: Some("a".into()),
            profile: BTreeMap::new(),
            groups_added: vec!["G".into()],
            state: None,
        };
        let text = serde_json::to_string(&c)?;
        assert_eq!(serde_json::from_str::<Change>(&text)?, c);
        Ok(())
    }
}
