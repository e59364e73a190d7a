//! Reading the tenant's CSV and applying it. Two passes over the local copy: the first validates
//! every row and finds duplicate usernames without any API call; the second applies the valid rows
//! with bounded concurrency and writes one result per row, in file order. Memory stays bounded: rows
//! stream through a bounded channel and a bounded window of rows is in flight. When the
//! mass-change guard plans first, the plan's reads are kept on disk and the import uses them: one
//! `GetUser` per row in all (see docs/platform-api.md for the plan→apply gap).

pub mod apply;
pub mod decode;
pub mod full_sync;
pub mod names;
pub mod reader;
pub mod rejects;
pub mod results;
pub mod row;
pub mod store;
pub mod template;
pub mod undo;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use shared::registry::ImportOptions;
use tokio::sync::mpsc;

use crate::outcome::Counts;
use crate::platform::model::ProfileFields;
use crate::platform::{ApiError, PlatformClient};
use apply::{ApplyContext, CreateFirst, PreRead, RowResult, RowStatus};
use names::{NameSpill, PairSpill, key_hash};
use reader::{BoundedReader, Item};
use results::ResultsWriter;
use row::RowError;
use store::{ImportStore, StoreError};
use template::{HeaderError, Template};

/// Why the import as a whole could not run.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0}")]
    Header(#[from] HeaderError),
    #[error("the file cannot be read as CSV: {0}")]
    Unreadable(String),
    #[error("the file has more than {0} rows")]
    TooManyRows(u64),
    #[error("the platform API refused the credentials (HTTP {0})")]
    Credentials(u16),
    #[error("the platform API could not be used: {0}")]
    Api(ApiError),
    #[error("local I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("stopped before the end: the job was cancelled")]
    Cancelled,
    /// A task of the import died (a panic): a fault of this worker, not of the file.
    #[error("the import's worker task failed: {0}")]
    WorkerFault(String),
}

impl From<apply::Stop> for ImportError {
    fn from(stop: apply::Stop) -> Self {
        match stop {
            apply::Stop::Credentials(code) => ImportError::Credentials(code),
            apply::Stop::Cancelled => ImportError::Cancelled,
        }
    }
}

/// What the import did, for the log, the email and the outcome.
#[derive(Debug)]
pub struct ImportSummary {
    pub counts: Counts,
    pub unknown_columns: Vec<String>,
    /// The first problems (invalid, failed, unconfirmed rows), for the email body.
    pub first_problems: Vec<RowResult>,
    pub results_file: PathBuf,
    /// The rows that ended invalid or failed, in the upload's own format; `None` when none did.
    pub rejects: Option<rejects::Rejects>,
    pub delimiter: char,
    pub encoding: decode::TextEncoding,
    /// A verify-only run: the counts say what would have happened; nothing was written.
    pub verify: bool,
}

/// How a run ended: done, or held by the mass-change guard before any write.
#[derive(Debug)]
pub enum Run {
    Done(ImportSummary),
    Held(Held),
}

/// What the mass-change guard found: the run would make more changes than the tenant allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// Users the run would deactivate (`Account state` and full sync).
    pub deactivations: u64,
    /// Existing users the run would update or activate.
    pub updates: u64,
    /// Existing users the run touches (the base of the percentages).
    pub existing: u64,
}

/// Limits and options of one run.
#[derive(Debug, Clone)]
pub struct ImportParams {
    pub options: ImportOptions,
    pub concurrency: usize,
    pub max_rows: u64,
    pub progress_every: u64,
    /// Longest record, in bytes (UTF-8); longer ones are reported per row, never buffered.
    pub max_record_bytes: usize,
    /// Verify only: read, decide and report; no write to the platform, no change to the store.
    pub verify: bool,
    /// The admin confirmed this file: the mass-change guard does not hold it.
    pub confirmed: bool,
    /// Ignore the stored row fingerprints (and forget them): every row is sent.
    pub force_full: bool,
    pub tenant: String,
    /// The nominated admin's username: never changed (a protected user), never deactivated by a
    /// full sync.
    pub admin: String,
    pub store: ImportStore,
    /// Where each user's state before the run's writes goes, for an undo (never in a dry run).
    pub journal: Option<Arc<undo::Journal>>,
}

impl ImportParams {
    /// Whether the import must leave `username` alone: the nominated admin, or a name matching
    /// `protected_users`.
    pub fn protects(&self, username: &str) -> bool {
        username.eq_ignore_ascii_case(&self.admin) || self.options.protects(username)
    }

    /// The result of a row naming a protected user (as its username or its new username): it is
    /// reported and nothing is sent for it.
    fn protected_row(&self, input: &row::RowInput) -> Option<RowResult> {
        let name = std::iter::once(&input.username)
            .chain(input.new_username.as_ref())
            .find(|name| self.protects(name))?;
        let who = if name.eq_ignore_ascii_case(&self.admin) {
            "the nominated admin"
        } else {
            "a protected user (import.protected_users)"
        };
        Some(RowResult {
            line: input.line,
            username: input.username.clone(),
            action: "none".into(),
            status: RowStatus::Protected,
            message: format!("{name:?} is {who}: the import never changes it"),
        })
    }
}

const FIRST_PROBLEMS: usize = 50;

/// Asked before every write; see [`crate::platform::StopCheck`].
pub use crate::platform::StopCheck;

/// Runs the import of `file`. Progress lines are sent to `progress` (the tenant log).
pub async fn run(
    file: &Path,
    results_path: &Path,
    client: &PlatformClient,
    params: &ImportParams,
    progress: &mpsc::UnboundedSender<String>,
    cancel: &dyn StopCheck,
) -> Result<Run, ImportError> {
    let fields = profile_fields(client).await?;
    // Decode to UTF-8 first (a sibling temp file, removed when this function returns).
    let decoded = Decoded::of(file).await?;
    let (file, encoding) = (decoded.path(file), decoded.encoding);
    let delimiter = sniff_delimiter(file)?;
    let mut first = first_pass_off_thread(file, delimiter, &fields, params).await?;
    let unknown: Vec<String> = first
        .template
        .unknown_columns()
        .into_iter()
        .map(str::to_owned)
        .collect();
    let _ = progress.send(validated_line(encoding, delimiter, &first, &unknown));
    forget_fingerprints_if_forced(params, progress).await?;
    let file_users = first.file_users.take();
    let absent = full_sync::absent_users(params, &first, file_users, progress).await?;

    let mandatory = Template::mandatory_keys(&fields);
    let guesses = CreateFirst::default();
    let pass = Pass {
        file,
        delimiter,
        first: &first,
        params,
        client,
        mandatory: &mandatory,
        cancel,
        create_first: &guesses,
    };
    // The plan's reads, on disk: the import works from them instead of reading every user again.
    let planned = match guard_plan(&pass, absent.len() as u64, progress).await? {
        Plan::Held(held) => return Ok(Run::Held(held)),
        Plan::Go(planned) => planned,
    };

    let mut tally = Tally::new(results_path, params, first.rows, progress)?;
    let mut record = |r: RowResult| tally.record(r);
    pass.rows(params.verify, None, planned, &mut record).await?;
    full_sync::deactivate(client, params, &absent, cancel, &mut record).await?;
    let (counts, first_problems, rejected) = tally.finish()?;
    let rejects = rejects_off_thread(file, delimiter, params, rejected, results_path).await?;
    Ok(Run::Done(ImportSummary {
        counts,
        unknown_columns: unknown,
        first_problems,
        results_file: results_path.to_owned(),
        rejects,
        delimiter: delimiter as char,
        encoding,
        verify: params.verify,
    }))
}

/// [`rejects::extract`] on a blocking thread, into the results file's folder.
async fn rejects_off_thread(
    file: &Path,
    delimiter: u8,
    params: &ImportParams,
    rejected: rejects::RejectLines,
    results_path: &Path,
) -> Result<Option<rejects::Rejects>, ImportError> {
    let (file, max) = (file.to_owned(), params.max_record_bytes);
    let dir = results_path.parent().unwrap_or(Path::new(".")).to_owned();
    tokio::task::spawn_blocking(move || rejects::extract(&file, delimiter, max, rejected, &dir))
        .await
        .map_err(|e| ImportError::WorkerFault(e.to_string()))?
        .map_err(ImportError::Io)
}

/// The tenant's profile fields, with the API's refusal mapped to why the import cannot run.
async fn profile_fields(client: &PlatformClient) -> Result<ProfileFields, ImportError> {
    client.profile_fields().await.map_err(|e| match e {
        ApiError::Credentials(code) => ImportError::Credentials(code),
        ApiError::Stopped => ImportError::Cancelled,
        other => ImportError::Api(other),
    })
}

/// The file decoded to UTF-8: the encoding it was in and, when it was not UTF-8 already, the
/// converted copy (removed when this value is dropped).
struct Decoded {
    copy: tempfile::NamedTempFile,
    encoding: decode::TextEncoding,
    converted: bool,
}

impl Decoded {
    /// Decodes `file` into a sibling temp file, off the async threads.
    async fn of(file: &Path) -> Result<Self, ImportError> {
        let copy = tempfile::Builder::new()
            .prefix("user-import-utf8-")
            .tempfile_in(file.parent().unwrap_or(Path::new(".")))?;
        let (input, out) = (file.to_owned(), copy.path().to_owned());
        let (encoding, converted) =
            tokio::task::spawn_blocking(move || decode::normalise(&input, &out))
                .await
                .map_err(|e| ImportError::WorkerFault(e.to_string()))?
                .map_err(|e| match e {
                    decode::DecodeError::Binary => ImportError::Unreadable(e.to_string()),
                    decode::DecodeError::Io(io) => ImportError::Io(io),
                })?;
        Ok(Self {
            copy,
            encoding,
            converted,
        })
    }

    /// The file to read: the converted copy, or `original` when it needed no conversion.
    fn path<'a>(&'a self, original: &'a Path) -> &'a Path {
        if self.converted {
            self.copy.path()
        } else {
            original
        }
    }
}

/// [`first_pass`] on a blocking thread.
async fn first_pass_off_thread(
    file: &Path,
    delimiter: u8,
    fields: &ProfileFields,
    params: &ImportParams,
) -> Result<FirstPass, ImportError> {
    let (file, fields, params) = (file.to_owned(), fields.clone(), params.clone());
    tokio::task::spawn_blocking(move || first_pass(&file, delimiter, &fields, &params))
        .await
        .map_err(|e| ImportError::WorkerFault(e.to_string()))?
}

/// The progress line saying how the file was read and what the first pass found.
fn validated_line(
    encoding: decode::TextEncoding,
    delimiter: u8,
    first: &FirstPass,
    unknown: &[String],
) -> String {
    format!(
        "file encoding {}, delimiter {:?}; validated {} rows: {} invalid{}{}",
        encoding.label(),
        delimiter as char,
        first.rows,
        first.invalid,
        if first.duplicate_rows > 0 {
            format!(
                " ({} of them for a username in more than one row)",
                first.duplicate_rows
            )
        } else {
            String::new()
        },
        if unknown.is_empty() {
            String::new()
        } else {
            format!("; ignored unknown columns: {}", unknown.join(", "))
        }
    )
}

/// A full re-push (with `skip_unchanged`, not verify-only) forgets the stored row fingerprints.
async fn forget_fingerprints_if_forced(
    params: &ImportParams,
    progress: &mpsc::UnboundedSender<String>,
) -> Result<(), ImportError> {
    if params.options.skip_unchanged && params.force_full && !params.verify {
        params.store.forget_all(&params.tenant).await?;
        let _ = progress.send("full re-push asked for: row fingerprints forgotten".into());
    }
    Ok(())
}

/// What the mass-change guard decided: hold the run, or go on (with the plan's reads, if it
/// planned).
enum Plan {
    Held(Held),
    Go(Option<ReadsIn>),
}

/// Whether the first pass's counts alone could exceed the mass-change guard's limits, so that
/// the run must be planned before any write.
fn may_hold(params: &ImportParams, first: &FirstPass, absent: u64) -> bool {
    let guard = &params.options.mass_change_guard;
    !params.verify
        && !params.confirmed
        && guard.enabled
        && (first.valid > guard.max_update_count
            || first.deactivate_rows + absent > guard.max_deactivate_count)
}

/// The mass-change guard: when the run may exceed its limits, every row is decided as for
/// verify-only, nothing written, and the run is held if the changes are too many; what the plan
/// read is kept on disk for the import.
async fn guard_plan(
    pass: &Pass<'_>,
    absent: u64,
    progress: &mpsc::UnboundedSender<String>,
) -> Result<Plan, ImportError> {
    if !may_hold(pass.params, pass.first, absent) {
        return Ok(Plan::Go(None));
    }
    let mut held = Held {
        deactivations: absent,
        updates: 0,
        existing: absent,
    };
    let mut reads = ReadsOut::new()?;
    pass.rows(true, Some(&mut reads), None, |r| {
        held.count(&r);
        Ok(())
    })
    .await?;
    let _ = progress.send(format!(
        "mass-change guard: the file would deactivate {} and update {} of {} existing users",
        held.deactivations, held.updates, held.existing
    ));
    let guard = &pass.params.options.mass_change_guard;
    if guard.deactivations_exceeded(held.deactivations, held.existing)
        || guard.updates_exceeded(held.updates, held.existing)
    {
        return Ok(Plan::Held(held));
    }
    Ok(Plan::Go(Some(reads.into_reader()?)))
}

impl Held {
    /// Counts one planned row's change.
    fn count(&mut self, r: &RowResult) {
        if matches!(
            r.status,
            RowStatus::Updated | RowStatus::Unchanged | RowStatus::Deactivated
        ) {
            self.existing += 1;
        }
        if r.action.contains("deactivate") {
            self.deactivations += 1;
        }
        if matches!(r.status, RowStatus::Updated | RowStatus::Deactivated)
            && r.action != "deactivate"
        {
            self.updates += 1;
        }
    }
}

/// Where each row's result goes: the counts, the results file, the first problems and, every
/// `progress_every` rows, a progress line.
struct Tally<'a> {
    writer: ResultsWriter,
    counts: Counts,
    first_problems: Vec<RowResult>,
    /// The lines of the rows that ended invalid or failed, for the reject file.
    rejected: rejects::RejectLines,
    progress: &'a mpsc::UnboundedSender<String>,
    progress_every: u64,
    /// Rows of the file, as the first pass counted them.
    file_rows: u64,
}

impl<'a> Tally<'a> {
    /// Creates the results file.
    fn new(
        results_path: &Path,
        params: &ImportParams,
        file_rows: u64,
        progress: &'a mpsc::UnboundedSender<String>,
    ) -> Result<Self, ImportError> {
        Ok(Self {
            writer: ResultsWriter::create(results_path, params.verify)?,
            counts: Counts::default(),
            first_problems: Vec::new(),
            rejected: rejects::RejectLines::new()?,
            progress,
            progress_every: params.progress_every,
            file_rows,
        })
    }

    /// Takes one row's result.
    fn record(&mut self, r: RowResult) -> Result<(), ImportError> {
        count_status(&mut self.counts, &r);
        self.writer.write(&r)?;
        if matches!(r.status, RowStatus::Invalid | RowStatus::Failed) && r.line > 0 {
            self.rejected.push(r.line)?;
        }
        if r.status.is_problem() && self.first_problems.len() < FIRST_PROBLEMS {
            self.first_problems.push(r);
        }
        let counts = &self.counts;
        if counts.rows.is_multiple_of(self.progress_every) && counts.deactivated == 0 {
            let _ = self.progress.send(format!(
                "progress: {}/{} rows, {} ok, {} invalid, {} failed",
                counts.rows,
                self.file_rows,
                counts.ok(),
                counts.invalid,
                counts.failed + counts.unconfirmed
            ));
        }
        Ok(())
    }

    /// Closes the results file; the counts, the first problems and the rejected lines.
    fn finish(self) -> Result<(Counts, Vec<RowResult>, rejects::RejectLines), ImportError> {
        self.writer.finish()?;
        Ok((self.counts, self.first_problems, self.rejected))
    }
}

/// Counts one result by its status.
fn count_status(counts: &mut Counts, r: &RowResult) {
    counts.rows += 1;
    match r.status {
        RowStatus::Created => counts.created += 1,
        RowStatus::Updated => counts.updated += 1,
        RowStatus::Unchanged => counts.unchanged += 1,
        RowStatus::Invalid => counts.invalid += 1,
        RowStatus::Failed => counts.failed += 1,
        RowStatus::Unconfirmed => counts.unconfirmed += 1,
        RowStatus::Protected => counts.protected += 1,
        RowStatus::Deactivated if r.line > 0 => counts.deactivated_by_state += 1,
        RowStatus::Deactivated => {
            // Full sync: not a row of the file.
            counts.rows -= 1;
            counts.deactivated += 1;
        }
    }
}

/// One pass over the rows: validated again, then decided (and, unless `dry_run`, applied), one
/// result per row in file order.
struct Pass<'a> {
    file: &'a Path,
    delimiter: u8,
    first: &'a FirstPass,
    params: &'a ImportParams,
    client: &'a PlatformClient,
    mandatory: &'a [(String, String)],
    cancel: &'a dyn StopCheck,
    create_first: &'a CreateFirst,
}

impl Pass<'_> {
    /// `reads_out`: where a dry run keeps what it read; `reads_in`: the reads of an earlier dry
    /// run over the same file, used instead of reading again.
    async fn rows(
        &self,
        dry_run: bool,
        mut reads_out: Option<&mut ReadsOut>,
        mut reads_in: Option<ReadsIn>,
        mut sink: impl FnMut(RowResult) -> Result<(), ImportError>,
    ) -> Result<(), ImportError> {
        let params = self.params;
        let ctx = ApplyContext {
            client: self.client,
            mandatory: self.mandatory,
            cancel: self.cancel,
            dry_run,
            create_first: (!dry_run).then_some(self.create_first),
            journal: params.journal.as_deref().filter(|_| !dry_run),
        };
        let (tx, rx) = mpsc::channel::<Result<row::RowInput, RowError>>(params.concurrency * 8);
        let reader = {
            let (file, template, options, dups) = (
                self.file.to_owned(),
                self.first.template.clone(),
                params.options.clone(),
                self.first.duplicates.clone(),
            );
            let max_record_bytes = params.max_record_bytes;
            let delimiter = self.delimiter;
            tokio::task::spawn_blocking(move || {
                second_pass(
                    &file,
                    delimiter,
                    max_record_bytes,
                    &template,
                    &options,
                    &dups,
                    &tx,
                )
            })
        };
        let window = window(params.concurrency, ctx.client.poll_interval());
        let ctx = &ctx;
        let mut results = tokio_stream_of(rx)
            .map(move |item| {
                // Rows come in file order, as the plan's reads were written.
                let pre = match (&item, reads_in.as_mut()) {
                    (Ok(input), Some(reads)) => reads.take(input.line),
                    _ => None,
                };
                async move {
                    match item {
                        Ok(input) => one_row(ctx, params, input, pre).await,
                        Err(e) => Ok((
                            RowResult {
                                line: e.line,
                                username: e.username,
                                action: "none".into(),
                                status: RowStatus::Invalid,
                                message: e.message,
                            },
                            None,
                        )),
                    }
                }
            })
            .buffered(window);
        while let Some(r) = results.next().await {
            let (r, read) = r?;
            if let (Some(out), Some(read)) = (reads_out.as_deref_mut(), read) {
                out.write(&read)?;
            }
            sink(r)?;
        }
        drop(results);
        reader
            .await
            .map_err(|e| ImportError::Unreadable(e.to_string()))??;
        Ok(())
    }
}

/// Rows in flight: 4 per request slot, plus room for rows that only wait for their status poll
/// (they hold no request slot): one more per slot for each 25 ms of the poll interval, so that
/// the default 500 ms interval does not cap the import below its call bound (a window of 4 ×
/// concurrency gave 45 % of it, BENCHMARKS.md). At most 4,096 rows: their data is a few MiB.
fn window(concurrency: usize, poll_interval: std::time::Duration) -> usize {
    let waiting = usize::try_from(poll_interval.as_millis() / 25).unwrap_or(usize::MAX);
    concurrency
        .max(1)
        .saturating_mul(4usize.saturating_add(waiting))
        .min(4096)
}

/// One valid row: skipped when its fingerprint is unchanged, else applied; then the store
/// remembers what happened (never in a dry run).
async fn one_row(
    ctx: &ApplyContext<'_>,
    params: &ImportParams,
    input: row::RowInput,
    pre: Option<PreRead>,
) -> Result<(RowResult, Option<PreRead>), ImportError> {
    if let Some(r) = params.protected_row(&input) {
        return Ok((r, None));
    }
    let (store, tenant) = (&params.store, params.tenant.as_str());
    let options = &params.options;
    let fingerprint = options.skip_unchanged.then(|| input.fingerprint());
    let username = input.username.clone();
    let shown = input
        .new_username
        .clone()
        .unwrap_or_else(|| username.clone());
    // The store's answer also says whether the fleet ever wrote this user (see
    // docs/platform-api.md, "the fleet knows it is new").
    let stored = match fingerprint.as_deref().filter(|_| !params.force_full) {
        Some(_) => Some(store.fingerprint(tenant, &username).await?),
        None => None,
    };
    let known_new = matches!(stored, Some(None));
    if let Some(fp) = fingerprint.as_deref()
        && let Some(Some((stored, at))) = stored
    {
        let max_age = i64::from(options.skip_unchanged_max_age_days) * 86_400;
        if stored == fp && chrono::Utc::now().timestamp() - at < max_age {
            if options.full_sync && !ctx.dry_run {
                store.manage(tenant, &shown).await?;
            }
            return Ok((
                RowResult {
                    line: input.line,
                    username: username.clone(),
                    action: "none".into(),
                    status: RowStatus::Unchanged,
                    message: "same as at the last import: not sent".into(),
                },
                None,
            ));
        }
    }
    let (r, read) = apply::apply(ctx, input, known_new, pre).await?;
    if ctx.dry_run {
        return Ok((r, read));
    }
    let ok = matches!(
        r.status,
        RowStatus::Created | RowStatus::Updated | RowStatus::Unchanged
    );
    if let Some(fp) = fingerprint {
        if ok {
            store
                .remember(tenant, &username, &fp, chrono::Utc::now().timestamp())
                .await?;
        } else {
            store.forget(tenant, &username).await?;
        }
    }
    if options.full_sync && ok {
        // Managed under the name it has now (the new one after a rename).
        store.manage(tenant, &shown).await?;
    }
    Ok((r, None))
}

/// The plan's reads, one JSON line per row it read, in file order, in a temporary file: what
/// the plan learnt costs disk, not memory.
#[derive(Debug)]
struct ReadsOut(std::io::BufWriter<std::fs::File>);

impl ReadsOut {
    fn new() -> std::io::Result<Self> {
        Ok(Self(std::io::BufWriter::with_capacity(
            64 * 1024,
            tempfile::tempfile()?,
        )))
    }

    fn write(&mut self, read: &PreRead) -> std::io::Result<()> {
        use std::io::Write;
        serde_json::to_writer(&mut self.0, read)?;
        self.0.write_all(b"\n")
    }

    fn into_reader(self) -> std::io::Result<ReadsIn> {
        use std::io::Seek;
        let mut f = self.0.into_inner().map_err(|e| e.into_error())?;
        f.rewind()?;
        Ok(ReadsIn {
            lines: std::io::BufReader::with_capacity(64 * 1024, f),
            next: None,
            done: false,
        })
    }
}

/// Reads [`ReadsOut`] back in step with the rows. Small buffered reads of a local file, made as
/// each row is taken from the channel.
#[derive(Debug)]
struct ReadsIn {
    lines: std::io::BufReader<std::fs::File>,
    next: Option<PreRead>,
    done: bool,
}

impl ReadsIn {
    /// The plan's read for the row on `line`, if it read that row. A spill that cannot be read
    /// back only means the row is read from the API again.
    fn take(&mut self, line: u64) -> Option<PreRead> {
        use std::io::BufRead;
        loop {
            match &self.next {
                Some(p) if p.line == line => return self.next.take(),
                Some(p) if p.line > line => return None,
                _ if self.done => return None,
                _ => {
                    let mut text = String::new();
                    self.next = match self.lines.read_line(&mut text) {
                        Ok(n) if n > 0 => serde_json::from_str(&text).ok(),
                        _ => None,
                    };
                    self.done = self.next.is_none();
                }
            }
        }
    }
}

fn tokio_stream_of<T>(mut rx: mpsc::Receiver<T>) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Comma, semicolon or tab: whichever the header line (outside quotes) holds most of.
fn sniff_delimiter(file: &Path) -> Result<u8, ImportError> {
    use std::io::Read;
    let mut head = vec![0u8; 64 * 1024];
    let mut f = std::fs::File::open(file)?;
    let n = f.read(&mut head)?;
    let mut counts = [0usize; 3];
    let mut quoted = false;
    for &b in &head[..n] {
        match b {
            b'"' => quoted = !quoted,
            // The header ends at its line break, whichever the file uses (a lone CR too).
            b'\n' | b'\r' if !quoted => break,
            b',' if !quoted => counts[0] += 1,
            b';' if !quoted => counts[1] += 1,
            b'\t' if !quoted => counts[2] += 1,
            _ => {}
        }
    }
    let best = [b',', b';', b'\t']
        .into_iter()
        .zip(counts)
        .max_by_key(|(d, c)| (*c, *d == b','))
        .map(|(d, _)| d)
        .unwrap_or(b',');
    Ok(best)
}

fn reader(
    file: &Path,
    delimiter: u8,
    max_record_bytes: usize,
) -> Result<BoundedReader<std::io::BufReader<std::fs::File>>, ImportError> {
    let f = std::io::BufReader::with_capacity(64 * 1024, std::fs::File::open(file)?);
    Ok(BoundedReader::new(f, delimiter, max_record_bytes))
}

struct FirstPass {
    template: Template,
    rows: u64,
    /// Rows refused from the file alone: by validation, or for a username that appears in more
    /// than one row. The same notion as the final `invalid` count.
    invalid: u64,
    /// Of `invalid`: rows refused for a duplicated username.
    duplicate_rows: u64,
    /// Valid rows.
    valid: u64,
    /// Valid rows asking for `Deactivated`.
    deactivate_rows: u64,
    /// Rows whose username cannot be read (full sync then deactivates nobody).
    nameless: u64,
    /// Hashes of usernames (lowercase) that appear in more than one row, sorted.
    duplicates: Vec<u64>,
    /// With full sync: every username and new username of the file, valid or not (taken by
    /// full sync once, see [`full_sync::absent_users`]).
    file_users: Option<NameSpill>,
}

fn header_of<R: std::io::Read>(rdr: &mut BoundedReader<R>) -> Result<Vec<String>, ImportError> {
    match rdr.next_item()? {
        Some(Item::Record { fields, .. }) => Ok(fields),
        None => Err(HeaderError::Empty.into()),
        Some(Item::TooLong { limit, .. }) => Err(ImportError::Unreadable(format!(
            "the header row is longer than {limit} bytes"
        ))),
        Some(Item::TooManyFields { .. }) => Err(ImportError::Unreadable(format!(
            "the header row has more than {} columns",
            reader::MAX_FIELDS
        ))),
        Some(Item::NotUtf8 { .. }) => {
            Err(ImportError::Unreadable("the header row is not text".into()))
        }
        Some(Item::UnterminatedQuote { quote_line, .. }) => Err(ImportError::Unreadable(format!(
            "the quote opened on line {quote_line} is never closed"
        ))),
    }
}

/// A record's problem as a row error (the row is reported, nothing is sent for it).
fn item_error(item: &Item) -> Option<RowError> {
    let message = match item {
        Item::Record { .. } => return None,
        Item::TooLong { limit, .. } => format!("the row is longer than {limit} bytes"),
        Item::TooManyFields { .. } => format!("the row has more than {} cells", reader::MAX_FIELDS),
        Item::NotUtf8 { .. } => "the row is not valid text".into(),
        Item::UnterminatedQuote { quote_line, .. } => format!(
            "the quote (\") opened on line {quote_line} is never closed, so the rest of the file was read as one cell and not imported: close the quote or remove it"
        ),
    };
    Some(RowError {
        line: item.line(),
        username: String::new(),
        message,
    })
}

/// The names a valid row claims: its username, and its new username unless that is the same
/// name in another case (a case-only rename claims no second name).
fn claimed_names(input: &row::RowInput) -> (u64, Option<u64>) {
    let first = key_hash(&input.username);
    let second = input
        .new_username
        .as_deref()
        .map(key_hash)
        .filter(|h| *h != first);
    (first, second)
}

/// Validates and counts every row and notes the names they hold, without any API call.
fn first_pass(
    file: &Path,
    delimiter: u8,
    fields: &ProfileFields,
    params: &ImportParams,
) -> Result<FirstPass, ImportError> {
    let mut rdr = reader(file, delimiter, params.max_record_bytes)?;
    let template = Template::from_header(&header_of(&mut rdr)?, fields)?;
    let mut tally = FirstTally::new(params.options.full_sync);
    while let Some(item) = rdr.next_item()? {
        tally.rows += 1;
        if tally.rows > params.max_rows {
            return Err(ImportError::TooManyRows(params.max_rows));
        }
        let Item::Record { line, fields } = item else {
            // Reported in the second pass.
            tally.unreadable();
            continue;
        };
        let cells: Vec<&str> = fields.iter().map(String::as_str).collect();
        match row::validate(line, &cells, &template, &params.options) {
            Ok(input) => tally.valid_row(&input)?,
            Err(e) => tally.invalid_row(&e, &template, &cells)?,
        }
    }
    tally.finish(template)
}

/// What the first pass gathers, row by row: the counts, and the names the rows hold.
struct FirstTally {
    rows: u64,
    invalid: u64,
    valid: u64,
    deactivate_rows: u64,
    nameless: u64,
    // Bounded memory (see `names`): the names of valid rows for the duplicate check, the rows
    // naming two users for an exact count, and with full sync every name of the file.
    claimed: NameSpill,
    pairs: PairSpill,
    file_users: Option<NameSpill>,
}

impl FirstTally {
    /// Nothing counted yet; every name of the file is kept only with full sync.
    fn new(full_sync: bool) -> Self {
        Self {
            rows: 0,
            invalid: 0,
            valid: 0,
            deactivate_rows: 0,
            nameless: 0,
            claimed: NameSpill::default(),
            pairs: PairSpill::default(),
            file_users: full_sync.then(NameSpill::default),
        }
    }

    /// A record that could not be read: invalid, and naming nobody.
    fn unreadable(&mut self) {
        self.invalid += 1;
        self.nameless += 1;
    }

    /// A valid row: counted, and the names it claims kept.
    fn valid_row(&mut self, input: &row::RowInput) -> Result<(), ImportError> {
        self.valid += 1;
        if input.state == Some(row::StateChange::Deactivate) {
            self.deactivate_rows += 1;
        }
        let (first, second) = claimed_names(input);
        self.claimed.push(first)?;
        if let Some(second) = second {
            self.claimed.push(second)?;
            self.pairs.push(first, second)?;
        }
        if let Some(all) = &mut self.file_users {
            all.push(first)?;
            if let Some(second) = second {
                all.push(second)?;
            }
        }
        Ok(())
    }

    /// An invalid row: counted and, with full sync, the names it holds kept.
    fn invalid_row(
        &mut self,
        e: &RowError,
        template: &Template,
        cells: &[&str],
    ) -> Result<(), ImportError> {
        self.invalid += 1;
        if e.username.is_empty() {
            self.nameless += 1;
        } else if let Some(all) = &mut self.file_users {
            all.push(key_hash(&e.username))?;
            // An invalid row's New username cell may name the user too.
            if let Some(new) = new_username_cell(template, cells) {
                all.push(key_hash(new))?;
            }
        }
        Ok(())
    }

    /// The first pass's result: rows claiming a duplicated username become invalid.
    fn finish(self, template: Template) -> Result<FirstPass, ImportError> {
        let (duplicates, occurrences) = self.claimed.duplicates()?;
        // Each row claims at most two names: a row with both of them duplicated counted twice.
        let duplicate_rows = occurrences - self.pairs.both_in(&duplicates)?;
        Ok(FirstPass {
            template,
            rows: self.rows,
            invalid: self.invalid + duplicate_rows,
            duplicate_rows,
            valid: self.valid - duplicate_rows,
            deactivate_rows: self.deactivate_rows,
            nameless: self.nameless,
            duplicates,
            file_users: self.file_users,
        })
    }
}

/// The row's New username cell, trimmed, when the file has that column and the cell is not empty.
fn new_username_cell<'c>(template: &Template, cells: &[&'c str]) -> Option<&'c str> {
    template
        .columns
        .iter()
        .position(|c| *c == template::Column::NewUsername)
        .and_then(|i| cells.get(i))
        .map(|c| c.trim())
        .filter(|c| !c.is_empty())
}

fn second_pass(
    file: &Path,
    delimiter: u8,
    max_record_bytes: usize,
    template: &Template,
    options: &ImportOptions,
    duplicates: &[u64],
    tx: &mpsc::Sender<Result<row::RowInput, RowError>>,
) -> Result<(), ImportError> {
    let mut rdr = reader(file, delimiter, max_record_bytes)?;
    header_of(&mut rdr)?;
    while let Some(item) = rdr.next_item()? {
        let result = match (&item, item_error(&item)) {
            (_, Some(e)) => Err(e),
            (Item::Record { line, fields }, None) => {
                let line = *line;
                let cells: Vec<&str> = fields.iter().map(String::as_str).collect();
                row::validate(line, &cells, template, options).and_then(|input| {
                    let (first, second) = claimed_names(&input);
                    let dup = [Some((first, &input.username)), second.zip(input.new_username.as_ref())]
                        .into_iter()
                        .flatten()
                        .find(|(h, _)| duplicates.binary_search(h).is_ok())
                        .map(|(_, name)| name);
                    match dup {
                        Some(dup) => Err(RowError {
                            line,
                            username: input.username.clone(),
                            message: format!(
                                "username {dup:?} appears in more than one row of the file (as Username or New username); none of those rows was applied"
                            ),
                        }),
                        None => Ok(input),
                    }
                })
            }
            (_, None) => continue,
        };
        if tx.blocking_send(result).is_err() {
            // The consumer stopped (credentials refused, cancelled): nothing more to read.
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_has_room_for_rows_waiting_on_their_status_poll_and_is_bounded() {
        use std::time::Duration;
        // The fleet's default poll interval, 500 ms: 4 + 20 rows per request slot.
        assert_eq!(window(8, Duration::from_millis(500)), 8 * 24);
        // A status final at once (a short interval) needs no more than 4 per slot.
        assert_eq!(window(8, Duration::from_millis(5)), 32);
        assert_eq!(window(0, Duration::ZERO), 4);
        assert_eq!(window(512, Duration::from_secs(60)), 4096);
    }

    #[test]
    fn the_delimiter_is_read_from_the_header_line_whatever_its_ending() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("f.csv");
        // Semicolon header, lone-CR lines, data rows full of commas.
        std::fs::write(&path, "Username;Surname\ra,b,c,d;x\re,f,g,h;y\r")?;
        assert!(matches!(sniff_delimiter(&path), Ok(b';')));
        Ok(())
    }
}
