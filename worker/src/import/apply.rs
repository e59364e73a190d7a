//! Applies one valid row to the platform. Strategy (documented in docs/import-format.md): ask
//! `GetUser` first, then send only what differs — create a missing user, update changed fields and
//! add missing groups, then activate or deactivate if the state differs — and follow every accepted
//! write to its final status. A create answered 409 (someone created the user meanwhile, or our
//! earlier attempt did get through) falls back to the update path once. Users are never deleted.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value, json};

use crate::import::row::{RowInput, StateChange};
use crate::platform::StopCheck;
use crate::platform::model::{UserRecord, WriteResult};
use crate::platform::{ApiError, PlatformClient};

/// What was done for a row, as written in the report's `action` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Create,
    Update,
    None,
}

/// The row's final result, as written in the report's `result` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowStatus {
    Created,
    Updated,
    Unchanged,
    Invalid,
    Failed,
    Unconfirmed,
    /// Deactivated: by the row's `Account state` (a row of the file, `line > 0`), or as a user
    /// absent from the file by `full_sync` (`line == 0`).
    Deactivated,
    /// A protected user (`import.protected_users`, or the nominated admin): nothing was sent.
    Protected,
}

impl RowStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RowStatus::Created => "created",
            RowStatus::Updated => "updated",
            RowStatus::Unchanged => "unchanged",
            RowStatus::Invalid => "invalid",
            RowStatus::Failed => "failed",
            RowStatus::Unconfirmed => "unconfirmed",
            RowStatus::Deactivated => "deactivated",
            RowStatus::Protected => "protected",
        }
    }

    /// The result column of a verify-only run: what the row would do.
    pub fn as_verify_str(self) -> &'static str {
        match self {
            RowStatus::Created => "would-create",
            RowStatus::Updated => "would-update",
            RowStatus::Deactivated => "would-deactivate",
            RowStatus::Invalid => "error",
            other => other.as_str(),
        }
    }

    pub fn is_problem(self) -> bool {
        matches!(
            self,
            RowStatus::Invalid | RowStatus::Failed | RowStatus::Unconfirmed
        )
    }
}

/// One line of the per-record report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowResult {
    pub line: u64,
    pub username: String,
    /// What was sent, e.g. `create`, `update+deactivate`, `none`.
    pub action: String,
    pub status: RowStatus,
    pub message: String,
}

/// What a dry run read for a row (`GetUser`, and for a rename whose old name is gone, the new
/// name's), kept by the mass-change guard's plan so that the import that follows reads no user
/// twice. The import then works from a read as old as the plan: see docs/platform-api.md.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PreRead {
    pub line: u64,
    pub current: Option<UserRecord>,
    pub renamed: Option<UserRecord>,
}

/// Why the whole import stops at this row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The platform refused our credentials in the middle of the import.
    Credentials(u16),
    /// The job was cancelled (lock lost, time up, shutdown): no further write is sent.
    Cancelled,
}

/// Everything a row needs besides its input.
#[derive(Debug)]
pub struct ApplyContext<'a> {
    pub client: &'a PlatformClient,
    /// Mandatory profile fields a new user must have: (key, label).
    pub mandatory: &'a [(String, String)],
    /// Checked before every write.
    pub cancel: &'a dyn StopCheck,
    /// Verify-only (and the mass-change guard's plan): read with `GetUser`, decide, write nothing.
    pub dry_run: bool,
    /// Creating a user the fleet knows is new without reading it first (never in a dry run).
    pub create_first: Option<&'a CreateFirst>,
    /// Where the user's state before the row's writes goes, for an undo (never in a dry run).
    pub journal: Option<&'a super::undo::Journal>,
}

/// The run's record of creates sent without a `GetUser` first: a `409` means the guess was
/// wrong (the row then goes the update path, one call more). Guesses start slowly — at most 4 in
/// flight, one more for each that proved right — and stop for the rest of the run once more than
/// 5 + 10 % of them were wrong, so a store that knows little costs about ten calls, not one per
/// row in flight.
#[derive(Debug, Default)]
pub struct CreateFirst {
    in_flight: AtomicU64,
    right: AtomicU64,
    wrong: AtomicU64,
}

/// How a guess turned out.
enum Guess {
    Right,
    Wrong,
    /// The create failed otherwise: says nothing about the guess.
    Unknown,
}

impl CreateFirst {
    /// Reserves a guess when the run still guesses and has room for one more in flight.
    fn try_start(&self) -> bool {
        let (right, wrong) = (
            self.right.load(Ordering::Relaxed),
            self.wrong.load(Ordering::Relaxed),
        );
        if wrong > 5 + (right + wrong) / 10 {
            return false;
        }
        if self.in_flight.fetch_add(1, Ordering::Relaxed) >= 4 + right {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn done(&self, guess: Guess) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        match guess {
            Guess::Right => self.right.fetch_add(1, Ordering::Relaxed),
            Guess::Wrong => self.wrong.fetch_add(1, Ordering::Relaxed),
            Guess::Unknown => 0,
        };
    }

    /// (guesses that were right, guesses answered 409).
    pub fn figures(&self) -> (u64, u64) {
        (
            self.right.load(Ordering::Relaxed),
            self.wrong.load(Ordering::Relaxed),
        )
    }
}

/// Applies `row`. `known_new`: the fleet's store has never seen this username (see
/// docs/platform-api.md: the user is then created without a read, when the row allows it).
/// `pre`: the plan's read of this row, used instead of reading again. A dry run returns what it
/// read, for the next pass.
pub async fn apply(
    ctx: &ApplyContext<'_>,
    row: RowInput,
    known_new: bool,
    pre: Option<PreRead>,
) -> Result<(RowResult, Option<PreRead>), Stop> {
    if ctx.cancel.should_stop() {
        return Err(Stop::Cancelled);
    }
    let mut steps: Vec<&'static str> = Vec::new();
    let line = row.line;
    let mut read = None;
    let result = run(ctx, &row, known_new, pre, &mut read, &mut steps).await;
    // Whatever the row's end, what was sent may have taken effect: the journal has it.
    if let Some(journal) = ctx.journal
        && let Some(change) = super::undo::before_image(&row, read.as_ref(), &steps)
    {
        journal.record(&change);
    }
    let action = if steps.is_empty() {
        "none".to_owned()
    } else {
        steps.join("+")
    };
    let (status, message) = match result {
        Ok((status, message)) => (status, message),
        Err(Failure::Credentials(code)) => return Err(Stop::Credentials(code)),
        Err(Failure::Cancelled) => return Err(Stop::Cancelled),
        Err(Failure::Failed(m)) => (RowStatus::Failed, m),
        Err(Failure::Unconfirmed(m)) => (RowStatus::Unconfirmed, m),
    };
    // Always the row's own Username: a rename that failed must not be reported under the name
    // it asked for (which may be another user's).
    Ok((
        RowResult {
            line,
            username: row.username.clone(),
            action,
            status,
            message,
        },
        read.filter(|_| ctx.dry_run),
    ))
}

enum Failure {
    Credentials(u16),
    Cancelled,
    Failed(String),
    Unconfirmed(String),
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Credentials(code) => Failure::Credentials(code),
            ApiError::Stopped => Failure::Cancelled,
            ApiError::NotFound => Failure::Failed("the user no longer exists".into()),
            other => Failure::Failed(other.to_string()),
        }
    }
}

/// Whether `row` may be created without reading the user first: known to be new, no rename
/// (the old name may exist), every mandatory field there (else an existing user's row would be
/// refused for lacking them), and the run has not given up guessing.
fn may_create_first(ctx: &ApplyContext<'_>, row: &RowInput, known_new: bool) -> bool {
    known_new
        && !ctx.dry_run
        && row.new_username.is_none()
        && ctx
            .mandatory
            .iter()
            .all(|(key, _)| row.profile.iter().any(|(k, v)| k == key && !v.is_empty()))
}

/// The row's calls in order: a guessed create, else read, create or update, then the state.
async fn run(
    ctx: &ApplyContext<'_>,
    row: &RowInput,
    known_new: bool,
    pre: Option<PreRead>,
    read: &mut Option<PreRead>,
    steps: &mut Vec<&'static str>,
) -> Result<(RowStatus, String), Failure> {
    if pre.is_none()
        && let Some(done) = create_unread(ctx, row, known_new, steps).await?
    {
        return Ok(done);
    }
    let (current, renamed) = read_user(ctx, row, pre).await?;
    // For the next pass of a dry run, and for the undo journal of a write.
    if ctx.dry_run || ctx.journal.is_some() {
        *read = Some(PreRead {
            line: row.line,
            current: current.clone(),
            renamed: renamed.clone(),
        });
    }
    let mut target = Target::from_read(row, current, renamed);
    let mut notes: Vec<String> = Vec::new();
    let status = write_user(ctx, row, &mut target, &mut notes, steps).await?;
    notes.extend(target.name_note(row, status, steps));
    let status = state_change(
        ctx,
        row,
        target.current.as_ref(),
        &target.uid,
        status,
        steps,
    )
    .await?;
    Ok((status, notes.join("; ")))
}

/// Creates the user without reading it first when the row and the run's guesses allow it (see
/// [`CreateFirst`]): the row's result when it was new, `None` when the row goes the usual path.
async fn create_unread(
    ctx: &ApplyContext<'_>,
    row: &RowInput,
    known_new: bool,
    steps: &mut Vec<&'static str>,
) -> Result<Option<(RowStatus, String)>, Failure> {
    if !may_create_first(ctx, row, known_new) {
        return Ok(None);
    }
    let Some(guesses) = ctx.create_first.filter(|g| g.try_start()) else {
        return Ok(None);
    };
    let created = create(ctx, row, steps).await;
    guesses.done(match &created {
        Ok(Created::Yes) => Guess::Right,
        Ok(Created::Exists) => Guess::Wrong,
        Err(_) => Guess::Unknown,
    });
    match created? {
        Created::Yes => {
            let status =
                state_change(ctx, row, None, &row.username, RowStatus::Created, steps).await?;
            Ok(Some((status, String::new())))
        }
        // Exists after all: the usual path, from the read.
        Created::Exists => {
            steps.pop();
            Ok(None)
        }
    }
}

/// The user as it is (and, for a rename whose old name is gone, the new name's): from the
/// plan's read when there is one, else read now.
async fn read_user(
    ctx: &ApplyContext<'_>,
    row: &RowInput,
    pre: Option<PreRead>,
) -> Result<(Option<UserRecord>, Option<UserRecord>), Failure> {
    if let Some(p) = pre {
        return Ok((p.current, p.renamed));
    }
    let c = ctx.client;
    let current = c.get_user(&row.username).await?;
    let renamed = match (&current, &row.new_username) {
        (None, Some(new)) => c.get_user(new).await?,
        _ => None,
    };
    Ok((current, renamed))
}

/// Whom a row's writes go to.
struct Target {
    /// The user as read (`None`: not there, to be created).
    current: Option<UserRecord>,
    /// The username the writes name.
    uid: String,
    /// The new username still to be sent with the update.
    rename: Option<String>,
}

impl Target {
    /// The row's user, or the new name's when an earlier run already renamed it.
    fn from_read(row: &RowInput, current: Option<UserRecord>, renamed: Option<UserRecord>) -> Self {
        if current.is_none()
            && let Some(new) = &row.new_username
            && let Some(renamed) = renamed
        {
            // Renamed by an earlier run: carry on with the new name.
            return Self {
                current: Some(renamed),
                uid: new.clone(),
                rename: None,
            };
        }
        Self {
            current,
            uid: row.username.clone(),
            rename: row.new_username.clone(),
        }
    }

    /// The note on the row's name (renamed now, created under the new name, renamed before);
    /// after a rename the state change names the new username.
    fn name_note(&mut self, row: &RowInput, status: RowStatus, steps: &[&str]) -> Option<String> {
        if let Some(new) = self.rename.take().filter(|_| steps.contains(&"update")) {
            let note = format!("renamed to {new:?}");
            self.uid = new;
            Some(note)
        } else if status == RowStatus::Created
            && let Some(new) = &row.new_username
        {
            Some(format!("created as {new:?}"))
        } else if self.uid != row.username {
            Some(format!("already renamed to {:?}", self.uid))
        } else {
            None
        }
    }
}

/// Creates the user when it is not there (updating it instead when the create meets it), else
/// updates what differs.
async fn write_user(
    ctx: &ApplyContext<'_>,
    row: &RowInput,
    target: &mut Target,
    notes: &mut Vec<String>,
    steps: &mut Vec<&'static str>,
) -> Result<RowStatus, Failure> {
    let Some(user) = &target.current else {
        return match create(ctx, row, steps).await? {
            Created::Yes => Ok(RowStatus::Created),
            Created::Exists => update_after_conflict(ctx, row, target, steps).await,
        };
    };
    if row.password.is_some() {
        notes.push("password ignored for an existing user".into());
    }
    update(ctx, row, &target.uid, target.rename.as_deref(), user, steps).await
}

/// A create answered 409: the user was created meanwhile (or our own earlier attempt got
/// through), so it is read under the name the row creates and updated instead.
async fn update_after_conflict(
    ctx: &ApplyContext<'_>,
    row: &RowInput,
    target: &mut Target,
    steps: &mut Vec<&'static str>,
) -> Result<RowStatus, Failure> {
    steps.pop();
    target.uid = row
        .new_username
        .clone()
        .unwrap_or_else(|| row.username.clone());
    target.rename = None;
    let now =
        ctx.client.get_user(&target.uid).await?.ok_or_else(|| {
            Failure::Failed("create answered 409 but the user is not there".into())
        })?;
    update(ctx, row, &target.uid, None, &now, steps).await
}

/// Activates or deactivates the user when the row asks for a state it does not have.
async fn state_change(
    ctx: &ApplyContext<'_>,
    row: &RowInput,
    current: Option<&UserRecord>,
    uid: &str,
    mut status: RowStatus,
    steps: &mut Vec<&'static str>,
) -> Result<RowStatus, Failure> {
    let c = ctx.client;
    if let Some(change) = row.state {
        let already = match (current, change) {
            (None, StateChange::Activate) => true, // new users start activated
            (None, StateChange::Deactivate) => false,
            (Some(u), StateChange::Activate) => is_state(u, "activated"),
            (Some(u), StateChange::Deactivate) => is_state(u, "deactivated"),
        };
        if !already {
            let action = match change {
                StateChange::Activate => "activate",
                StateChange::Deactivate => "deactivate",
            };
            steps.push(action);
            guard(ctx)?;
            if !ctx.dry_run {
                let tid = c
                    .set_user(&json!({"params": {"action": action, "uid": uid}}))
                    .await?;
                follow(c, &tid, uid).await?;
            }
            status = match change {
                // Counted apart from updates: a deactivation by the row's Account state.
                // A new user created deactivated stays counted as created.
                StateChange::Deactivate if current.is_some() => RowStatus::Deactivated,
                _ if status == RowStatus::Unchanged => RowStatus::Updated,
                _ => status,
            };
        }
    }
    Ok(status)
}

/// Stops before a write once the job is cancelled.
fn guard(ctx: &ApplyContext<'_>) -> Result<(), Failure> {
    if ctx.cancel.should_stop() {
        Err(Failure::Cancelled)
    } else {
        Ok(())
    }
}

fn is_state(user: &UserRecord, state: &str) -> bool {
    user.state
        .as_deref()
        .is_some_and(|s| s.eq_ignore_ascii_case(state))
}

enum Created {
    Yes,
    Exists,
}

async fn create(
    ctx: &ApplyContext<'_>,
    row: &RowInput,
    steps: &mut Vec<&'static str>,
) -> Result<Created, Failure> {
    let missing: Vec<&str> = ctx
        .mandatory
        .iter()
        .filter(|(key, _)| !row.profile.iter().any(|(k, v)| k == key && !v.is_empty()))
        .map(|(_, label)| label.as_str())
        .collect();
    if !missing.is_empty() {
        // Known only now that GetUser said the user is new: not a validation error of the
        // file (those are all counted before any call), so counted as failed.
        return Err(Failure::Failed(format!(
            "a new user needs {}: the user was not created",
            missing.join(", ")
        )));
    }
    let username = row.new_username.as_deref().unwrap_or(&row.username);
    let mut profile = Map::new();
    profile.insert("username".into(), Value::String(username.to_owned()));
    for (k, v) in &row.profile {
        if !v.is_empty() {
            profile.insert(k.clone(), Value::String(v.clone()));
        }
    }
    let mut body = json!({
        "params": {"action": "create", "send_welcome": false},
        "profile": profile,
    });
    if let Some(pw) = &row.password {
        body["password"] = json!({"value": pw});
    }
    if !row.groups.is_empty() {
        body["groups"] = Value::Array(row.groups.iter().map(|g| json!({"name": g})).collect());
    }
    steps.push("create");
    guard(ctx)?;
    if ctx.dry_run {
        return Ok(Created::Yes);
    }
    match ctx.client.set_user(&body).await {
        Ok(tid) => {
            follow(ctx.client, &tid, username).await?;
            Ok(Created::Yes)
        }
        Err(ApiError::Conflict) => Ok(Created::Exists),
        Err(e) => Err(e.into()),
    }
}

async fn update(
    ctx: &ApplyContext<'_>,
    row: &RowInput,
    uid: &str,
    rename: Option<&str>,
    current: &UserRecord,
    steps: &mut Vec<&'static str>,
) -> Result<RowStatus, Failure> {
    let mut profile = Map::new();
    for (k, v) in &row.profile {
        let now = current.profile_text(k).unwrap_or_default();
        if &now != v {
            profile.insert(k.clone(), Value::String(v.clone()));
        }
    }
    if let Some(new) = rename {
        profile.insert("username".into(), Value::String(new.to_owned()));
    }
    let have: BTreeSet<String> = current
        .groups
        .iter()
        .map(|g| g.name.to_lowercase())
        .collect();
    let add: Vec<Value> = row
        .groups
        .iter()
        .filter(|g| !have.contains(&g.to_lowercase()))
        .map(|g| json!({"name": g, "action": "add"}))
        .collect();
    if profile.is_empty() && add.is_empty() {
        return Ok(RowStatus::Unchanged);
    }
    let mut body = json!({"params": {"action": "update", "uid": uid}, "profile": profile});
    if !add.is_empty() {
        body["groups"] = Value::Array(add);
    }
    steps.push("update");
    guard(ctx)?;
    if ctx.dry_run {
        return Ok(RowStatus::Updated);
    }
    let tid = match (ctx.client.set_user(&body).await, rename) {
        (Ok(tid), _) => tid,
        (Err(ApiError::Conflict), Some(new)) => {
            return Err(Failure::Failed(format!(
                "New username {new:?} is already taken by another user: the row was not applied"
            )));
        }
        (Err(e), _) => return Err(e.into()),
    };
    follow(ctx.client, &tid, uid).await?;
    Ok(RowStatus::Updated)
}

/// Follows an accepted write to its final status.
async fn follow(
    c: &PlatformClient,
    tid: &crate::platform::Accepted,
    uid: &str,
) -> Result<(), Failure> {
    match c.wait_for(tid, uid).await? {
        WriteResult::Succeeded => Ok(()),
        WriteResult::Failed(why) => Err(Failure::Failed(format!("the platform refused it: {why}"))),
        WriteResult::Unconfirmed => Err(Failure::Unconfirmed(format!(
            "accepted (tid {}) but not confirmed before the status timeout",
            tid.tid.0
        ))),
    }
}
