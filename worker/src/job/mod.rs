//! The running job as one value, [`JobRun`]: it owns the tenant, its key, the session on the
//! tenant's account, the tenant log, the job's [`Gate`] (its cancellation and its tenant lock's
//! lease) and the [`RunRecord`] of what happened. Every side effect of a job goes through it —
//! account writes, platform writes (the client it hands out asks the gate before every attempt),
//! emails and log lines — and each asks the gate first, so "no write after the lock is lost" holds
//! because there is no other way to write.
//!
//! This is the bottom of the worker's job code: it knows the clients (account, platform, email)
//! and the import engine's result types, never the pipeline or the fleet above it.

pub mod lease;
pub mod log;
pub mod record;
mod session;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use shared::ApiKey;
use shared::job::Trigger;
use shared::registry::Tenant;
use tokio::io::AsyncRead;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::account::{self, AccountError, Stat};
use crate::deps::Deps;
use crate::import::{Held, ImportSummary};
use crate::outcome::{JobError, Permanent, Retryable};
use crate::platform::{PlatformClient, StopCheck};
pub use lease::Lease;
use log::TenantLog;
pub use record::RunRecord;
use session::Session;

/// Who asked for the job, and the signals to stop it.
#[derive(Debug, Clone)]
pub struct JobContext {
    pub job_id: Uuid,
    pub trigger: Trigger,
    /// The tick a scheduled job is for (for a job started by hand: when it was asked for).
    pub scheduled_for: DateTime<Utc>,
    /// Fires when the job must stop before its next piece of work: its tenant lock was lost, it
    /// ran past its time, or the worker is shutting down. The job then ends as
    /// `Retryable::Cancelled` and is handed back, unless its time ran out (`time_up`).
    pub cancel: CancellationToken,
    /// Fires, before `cancel`, when the job ran past `worker.job_timeout`: it then ends as
    /// `Permanent::JobTimeout` (`job-timeout`), still holding its tenant, and says so in the
    /// tenant log, the run summary and an email to the admin.
    pub time_up: CancellationToken,
    /// The lock's fencing number, when the job runs under a lock; written to the tenant log.
    pub fence: Option<u64>,
    /// The tenant lock, when the job runs under one: once it is lost, nothing more is written,
    /// not even the log's last line.
    pub lock: Option<LockHold>,
    /// The fleet gives up on this job if this run fails, even for a reason that is retried
    /// otherwise (its last retry): a failure is then told to the tenant's recipients.
    pub last_attempt: bool,
}

/// What the job knows of its tenant lock without asking Redis.
#[derive(Debug, Clone)]
pub struct LockHold {
    /// Until when the lock is known to be ours.
    pub lease: Lease,
    /// Fires when a renewal found the lock gone or taken.
    pub lost: CancellationToken,
}

impl JobContext {
    /// A job started by hand (`worker once`, tests): no lock, never cancelled.
    pub fn manual(job_id: Uuid) -> Self {
        Self {
            job_id,
            trigger: Trigger::Manual,
            scheduled_for: Utc::now(),
            cancel: CancellationToken::new(),
            time_up: CancellationToken::new(),
            fence: None,
            lock: None,
            last_attempt: false,
        }
    }

    pub fn gate(&self) -> Gate {
        Gate {
            cancel: self.cancel.clone(),
            lock: self.lock.clone(),
        }
    }
}

/// Asked before every side effect. Two questions: may the job still *work* (not cancelled, lock
/// held), and is the lock still *held* (enough for the record of how the job ended: a job
/// stopped by a shutdown still owns its tenant, one that lost its lock owns nothing).
#[derive(Debug, Clone)]
pub struct Gate {
    cancel: CancellationToken,
    lock: Option<LockHold>,
}

impl Gate {
    /// Whether the tenant is still ours (always, without a lock). A lease that ran out cancels
    /// the job too, so everything watching its token stops.
    pub fn lock_held(&self) -> bool {
        let Some(lock) = &self.lock else { return true };
        if lock.lost.is_cancelled() {
            self.cancel.cancel();
            return false;
        }
        if !lock.lease.valid() {
            if !self.cancel.is_cancelled() {
                tracing::warn!("the tenant lock's lease ran out: stopping the job");
            }
            self.cancel.cancel();
            return false;
        }
        true
    }

    /// Whether the job must stop: cancelled, or its lock gone.
    pub fn should_stop(&self) -> bool {
        !self.lock_held() || self.cancel.is_cancelled()
    }

    /// `Err(Cancelled)` once the job must stop.
    pub fn check(&self) -> Result<(), JobError> {
        if self.should_stop() {
            Err(Retryable::Cancelled.into())
        } else {
            Ok(())
        }
    }

    pub fn cancelled(&self) -> &CancellationToken {
        &self.cancel
    }
}

impl StopCheck for Gate {
    fn should_stop(&self) -> bool {
        Gate::should_stop(self)
    }
}

pub use crate::account::LocalFile;

/// A message for the tenant's recipients.
pub use crate::email::Mail;

/// Which file the run works on, and what it may do with it.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Where the file came from on the account (shown in the log and the email).
    pub source: &'static str,
    /// Nothing is written to the platform or the store: a verify-only run, or the guard's look.
    pub dry_run: bool,
    /// The admin confirmed this held file.
    pub confirmed: bool,
    /// Send every row, ignoring the row fingerprints.
    pub force_full: bool,
    /// The admin asked for this file to run again (`/uploads/user-import.rerun`): its marker
    /// does not skip it, and the request is removed once the run is reported.
    pub rerun: bool,
    /// The file is the admin's undo request (`/uploads/user-import.undo`), not a user file.
    pub undo: bool,
}

/// What the stages hand on to each other.
#[derive(Debug, Default)]
pub struct Findings {
    pub plan: Plan,
    /// The file being worked on, once fetched.
    pub file: Option<LocalFile>,
    /// The first look at the upload (size and time), for the settle check.
    pub first_look: Option<(Stat, tokio::time::Instant)>,
    /// The import's summary, once it ran to its end.
    pub imported: Option<ImportSummary>,
    /// The import's per-row results (`imported.results_file`), removed with the run.
    pub results: Option<tempfile::NamedTempFile>,
    /// What the mass-change guard found, when it held the file.
    pub held: Option<Held>,
    /// How the run ended, once the report is done (the archive comes after).
    pub outcome: Option<crate::outcome::Outcome>,
    /// An import's undo journal (local), kept on the account beside the report.
    pub journal: Option<tempfile::NamedTempFile>,
    /// An undo run: the journal of the run it undoes.
    pub undoing: Option<UndoTarget>,
    /// The latest tick recorded on the account (a scheduled job's), as read at its start.
    pub last_tick: Option<DateTime<Utc>>,
}

/// The run an undo request names: its journal, found on the account and fetched.
#[derive(Debug)]
pub struct UndoTarget {
    /// The journal's file name in `/reports`.
    pub name: String,
    pub header: crate::import::undo::JournalHeader,
    pub local: LocalFile,
}

/// One job of one tenant, running. See the module's documentation.
#[derive(Debug)]
pub struct JobRun<'d> {
    deps: &'d Deps,
    tenant: Tenant,
    key: ApiKey,
    ctx: JobContext,
    gate: Gate,
    session: Session,
    log: TenantLog,
    log_task: Option<log::LogTask>,
    /// The stages are over and the job ended because its time ran out: it still owns its
    /// tenant, so it may write its record (summary, tick record, the admin's email) while the
    /// lock is held, though its gate says stop.
    wrapping_up: bool,
    /// What happened so far; the end of the job is derived from it.
    pub record: RunRecord,
    pub found: Findings,
}

impl<'d> JobRun<'d> {
    /// Resolves the tenant and its key. No I/O: the account is opened by [`JobRun::connect`].
    pub fn new(deps: &'d Deps, tenant_name: &str, ctx: JobContext) -> Result<Self, JobError> {
        let registry = deps.registry();
        let tenant = registry
            .get(tenant_name)
            .ok_or_else(|| Permanent::UnknownTenant(tenant_name.chars().take(64).collect()))?
            .clone();
        if !tenant.enabled && ctx.trigger == Trigger::Schedule {
            return Err(Permanent::DisabledTenant(tenant.name.to_string()).into());
        }
        let key = deps
            .secrets
            .api_key(&tenant.name)
            .map_err(|e| Permanent::MissingKey(e.to_string()))?;
        let gate = ctx.gate();
        let session = Session::new(deps.accounts.clone(), tenant.clone(), key.clone());
        let record = RunRecord::start(&tenant, &ctx);
        let log = TenantLog::detached(ctx.job_id);
        Ok(Self {
            deps,
            tenant,
            key,
            ctx,
            gate,
            session,
            log,
            log_task: None,
            wrapping_up: false,
            record,
            found: Findings::default(),
        })
    }

    /// Logs in to the tenant's account and starts the tenant log on that session.
    pub async fn connect(&mut self) -> Result<(), JobError> {
        self.session.open().await.map_err(account_error)?;
        let (log, task) =
            TenantLog::start(self.session.clone(), self.gate.clone(), self.ctx.job_id);
        self.log = log;
        self.log_task = Some(task);
        Ok(())
    }

    /// Whether the account was opened (the log and the summary have somewhere to go).
    pub fn connected(&self) -> bool {
        self.log_task.is_some()
    }

    pub fn tenant(&self) -> &Tenant {
        &self.tenant
    }

    pub fn context(&self) -> &JobContext {
        &self.ctx
    }

    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    pub fn settings(&self) -> &shared::settings::Settings {
        &self.deps.settings
    }

    pub fn metrics(&self) -> &crate::metrics::WorkerMetrics {
        &self.deps.metrics
    }

    pub fn store(&self) -> &crate::import::store::ImportStore {
        &self.deps.store
    }

    pub fn alerts(&self) -> &crate::alerts::Alerts {
        &self.deps.alerts
    }

    /// `Err(Cancelled)` once the job must stop (see [`JobRun::wrap_up`] for the one exception).
    pub fn check(&self) -> Result<(), JobError> {
        if self.wrapping_up && self.gate.lock_held() {
            return Ok(());
        }
        self.gate.check()
    }

    /// Whether the job may still write the record of how it ended: it was not stopped, or it was
    /// stopped by its time limit and still holds its tenant.
    pub fn may_record_end(&self) -> bool {
        self.check().is_ok()
    }

    /// After the stages of a job whose time ran out: it owns its tenant until it releases the
    /// lock, so its end is recorded like any other failed run's (the platform client, whose
    /// gate is the job's, stays stopped).
    pub fn wrap_up(&mut self) {
        self.wrapping_up = true;
    }

    /// Whether the job's time limit stopped it.
    pub fn timed_out(&self) -> bool {
        self.ctx.time_up.is_cancelled()
    }

    /// Appends a line to the tenant log (written only while the lock is held).
    pub fn log(&self, line: impl AsRef<str>) {
        self.log.line(line);
    }

    /// A sender of raw progress messages for the import (each becomes a log line).
    pub fn progress(&self) -> tokio::sync::mpsc::UnboundedSender<String> {
        self.log.sender()
    }

    /// The platform client for this job: it asks the gate before every attempt of every
    /// request, retries included.
    pub fn platform(&self, concurrency: usize) -> PlatformClient {
        PlatformClient::new(
            self.deps.http.clone(),
            &self.tenant,
            self.key.clone(),
            &self.deps.settings.platform,
            concurrency,
        )
        .with_rate_limits(&self.deps.rate_limits)
        .with_stop(Arc::new(self.gate.clone()))
    }

    // Reads: harmless after the lock is lost, so they only need the session.

    pub async fn stat(&self, path: &str) -> Result<Option<Stat>, JobError> {
        let mut a = self.session.get().await.map_err(account_error)?;
        a.stat(path).await.map_err(account_error)
    }

    pub async fn size(&self, path: &str) -> Result<Option<u64>, AccountError> {
        self.session.get().await?.size(path).await
    }

    pub async fn list(&self, dir: &str) -> Result<Vec<String>, JobError> {
        let mut a = self.session.get().await.map_err(account_error)?;
        a.list(dir).await.map_err(account_error)
    }

    pub async fn exists(&self, dir: &str, name: &str) -> Result<bool, JobError> {
        Ok(self.list(dir).await?.iter().any(|n| n == name))
    }

    pub async fn read_small(&self, path: &str, max: u64) -> Result<Option<Vec<u8>>, AccountError> {
        let mut a = self.session.get().await?;
        account::read_small(&mut **a, path, max).await
    }

    /// Fetches `path` to a local temporary file in `dir`, hashed on the way (see
    /// [`account::fetch_file`]); `Ok(None)`: no such file.
    pub async fn fetch_file(
        &self,
        path: &str,
        max_bytes: u64,
        dir: &std::path::Path,
    ) -> Result<Option<LocalFile>, AccountError> {
        let mut a = self.session.get().await?;
        account::fetch_file(&mut **a, path, max_bytes, dir).await
    }

    // Writes: each asks the gate first.

    pub async fn put(
        &self,
        path: &str,
        src: &mut (dyn AsyncRead + Unpin + Send),
    ) -> Result<u64, JobError> {
        self.check()?;
        let mut a = self.session.get().await.map_err(account_error)?;
        a.upload(path, src).await.map_err(account_error)
    }

    pub async fn put_bytes(&self, path: &str, bytes: &[u8]) -> Result<u64, JobError> {
        let mut src = bytes;
        self.put(path, &mut src).await
    }

    pub async fn put_file(&self, path: &str, local: &std::path::Path) -> Result<u64, JobError> {
        let mut file = tokio::fs::File::open(local)
            .await
            .map_err(|e| Retryable::Io(e.to_string()))?;
        self.put(path, &mut file).await
    }

    pub async fn mkdir(&self, dir: &str) -> Result<(), JobError> {
        self.check()?;
        let mut a = self.session.get().await.map_err(account_error)?;
        a.mkdir(dir).await.map_err(account_error)
    }

    pub async fn remove(&self, path: &str) -> Result<(), JobError> {
        self.check()?;
        let mut a = self.session.get().await.map_err(account_error)?;
        a.remove(path).await.map_err(account_error)
    }

    pub async fn rename(&self, from: &str, to: &str) -> Result<(), JobError> {
        self.check()?;
        let mut a = self.session.get().await.map_err(account_error)?;
        a.rename(from, to).await.map_err(account_error)
    }

    /// Emails the tenant's recipients (`notify`, the nominated admin by default); `Err` says why
    /// nobody got it. A recipient that did not get it while others did is said in the log.
    pub async fn email(&self, mail: Mail) -> Result<(), String> {
        self.check().map_err(|e| e.to_string())?;
        let delivery = self
            .deps
            .mailer
            .send(&self.tenant.notify, mail, 3)
            .await
            .map_err(|e| e.to_string())?;
        for (to, why) in &delivery.failed {
            self.log(format!("the email could not be delivered to {to}: {why}"));
        }
        Ok(())
    }

    /// Who the run's emails go to, for the log: `notify`, or the nominated admin.
    pub fn recipients(&self) -> String {
        let t = &self.tenant;
        if t.notify.len() == 1 && t.notify[0] == t.admin.email {
            return format!("the nominated admin ({})", t.admin.username);
        }
        let list: Vec<&str> = t.notify.iter().map(|a| a.as_str()).collect();
        format!("{} recipient(s): {}", list.len(), list.join(", "))
    }

    /// Ends the run: the log's last lines are flushed (while the lock is held) and the session
    /// is closed.
    pub async fn close(mut self) -> RunRecord {
        if let Some(task) = self.log_task.take() {
            let stats = task.close(self.log).await;
            if stats.lost > 0 {
                tracing::warn!(lost = stats.lost, "some tenant log lines were not written");
            }
        }
        self.session.close().await;
        self.record
    }

    /// How long the lock may be held at most (for waits inside a stage).
    pub fn lease_ttl(&self) -> Option<Duration> {
        self.ctx.lock.as_ref().map(|l| l.lease.ttl())
    }
}

/// An account failure, as the job sees it: a refused login or certificate, or a file over the
/// limit, is permanent; the rest may pass.
pub fn account_error(e: AccountError) -> JobError {
    match e {
        AccountError::Credentials => Permanent::FtpsCredentials.into(),
        AccountError::Certificate(why) => Permanent::FtpsCertificate(why).into(),
        AccountError::TooLarge { limit } => Permanent::FileTooLarge {
            size: limit + 1,
            limit,
        }
        .into(),
        AccountError::Refused(why) => Permanent::AccountRefused(why).into(),
        AccountError::HostKey(why) => Permanent::HostKey(why).into(),
        AccountError::LocalIo(e) => Retryable::Io(e.to_string()).into(),
        other => Retryable::Ftps(other.to_string()).into(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_job_whose_lock_lease_ran_out_stops_and_cancels_its_token() {
        let mut job = JobContext::manual(Uuid::new_v4());
        job.lock = Some(LockHold {
            lease: Lease::new(tokio::time::Instant::now(), Duration::from_secs(5)),
            lost: CancellationToken::new(),
        });
        let gate = job.gate();
        assert!(!gate.should_stop());
        assert!(gate.check().is_ok());
        // Frozen past the TTL: no renewal ran, nothing cancelled the token.
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(!job.cancel.is_cancelled());
        assert!(gate.should_stop());
        assert!(!gate.lock_held());
        assert!(gate.check().is_err());
        assert!(job.cancel.is_cancelled(), "the watchers see it too");
    }

    #[test]
    fn a_cancelled_job_without_a_lock_stops_working_but_still_holds_its_tenant() {
        let job = JobContext::manual(Uuid::new_v4());
        let gate = job.gate();
        job.cancel.cancel();
        assert!(gate.should_stop());
        assert!(
            gate.lock_held(),
            "a shutdown leaves the tenant ours until release"
        );
    }

    #[test]
    fn a_lost_lock_holds_nothing() {
        let mut job = JobContext::manual(Uuid::new_v4());
        let lost = CancellationToken::new();
        job.lock = Some(LockHold {
            lease: Lease::new(tokio::time::Instant::now(), Duration::from_secs(60)),
            lost: lost.clone(),
        });
        let gate = job.gate();
        assert!(gate.lock_held());
        lost.cancel();
        assert!(!gate.lock_held());
        assert!(job.cancel.is_cancelled());
    }
}
