//! The pipeline for one job of one tenant: fetch → hash → import → report. [`process_job`] is the
//! single entry point: the queue consumer calls it, `worker once` calls it, tests call it.
//! Stages never read the environment or open their own clients: everything comes in [`Deps`].
//! Around the stages: the upload must have settled before it is imported ([`settle`]), an imported
//! file is archived ([`archive`]), every run leaves a JSON summary ([`summary`]), and alerts go to
//! the admin when the account goes quiet or a login is refused ([`crate::alerts`]).

pub mod alerting;
pub mod archive;
pub mod fetch;
pub mod guard;
pub mod hash;
pub mod import;
pub mod log;
pub mod report;
pub mod settle;
pub mod span;
pub mod summary;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use chrono::Utc;
use shared::job::Trigger;
use shared::registry::secrets::SecretSource;
use shared::registry::{Registry, Tenant};
use shared::settings::Settings;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing::field::Empty;
use uuid::Uuid;

use crate::alerts::Alerts;
use crate::email::Mailer;
use crate::fleet::lock::Lease;
use crate::ftps::{FtpsConnector, FtpsError, FtpsSession};
use crate::import::StopCheck;
use crate::import::store::ImportStore;
use crate::metrics::{Stage, WorkerMetrics};
use crate::outcome::{JobError, Outcome, Permanent, Retryable};
use crate::platform::PlatformClient;
use log::{LogTarget, TenantLog};
use summary::RunSummary;

/// Everything a job needs, built once at start-up.
#[derive(Debug)]
pub struct Deps {
    pub settings: Settings,
    registry: RwLock<Arc<Registry>>,
    pub secrets: SecretSource,
    pub http: reqwest::Client,
    pub ftps: FtpsConnector,
    pub mailer: Mailer,
    /// What the import remembers per tenant (Redis; connects only when an option needs it).
    pub store: ImportStore,
    /// Alert state (Redis, under the fleet's key prefix).
    pub alerts: Alerts,
    /// The process's metrics (`/metrics` of `worker run`).
    pub metrics: Arc<WorkerMetrics>,
}

impl Deps {
    pub fn build(
        settings: Settings,
        registry: Registry,
        secrets: SecretSource,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            http: PlatformClient::http_client(&settings.platform)?,
            ftps: FtpsConnector::from_settings(&settings.ftps)?,
            mailer: Mailer::from_settings(&settings.smtp)?,
            store: ImportStore::from_settings(&settings.redis)?,
            alerts: Alerts::from_settings(&settings.redis)?,
            metrics: Arc::new(WorkerMetrics::default()),
            registry: RwLock::new(Arc::new(registry)),
            secrets,
            settings,
        })
    }

    pub fn registry(&self) -> Arc<Registry> {
        match self.registry.read() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Swaps in a reloaded registry; jobs already running keep the one they started with.
    pub fn replace_registry(&self, registry: Registry) {
        match self.registry.write() {
            Ok(mut r) => *r = Arc::new(registry),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(registry),
        }
    }
}

/// Who asked for the job, and the signal to stop it.
#[derive(Debug, Clone)]
pub struct JobContext {
    pub job_id: Uuid,
    pub trigger: Trigger,
    /// Fires when the job must stop before its next side effect: its tenant lock was lost, it
    /// ran past its time, or the worker is shutting down. The job then ends as
    /// `Retryable::Cancelled` and is handed back.
    pub cancel: CancellationToken,
    /// The lock's fencing number, when the job runs under a lock; written to the tenant log.
    pub fence: Option<u64>,
    /// Until when the tenant lock is known to be ours, when the job runs under a lock: once it
    /// has run out the job stops before its next side effect, even if no renewal has told it yet
    /// (a worker resumed after being frozen past the lock's TTL).
    pub lease: Option<Lease>,
}

impl JobContext {
    /// A job started by hand (`worker once`, tests): no lock, never cancelled.
    pub fn manual(job_id: Uuid) -> Self {
        Self {
            job_id,
            trigger: Trigger::Manual,
            cancel: CancellationToken::new(),
            fence: None,
            lease: None,
        }
    }

    fn check(&self) -> Result<(), JobError> {
        if self.should_stop() {
            Err(Retryable::Cancelled.into())
        } else {
            Ok(())
        }
    }
}

impl StopCheck for JobContext {
    /// Cancelled, or the lease ran out (which cancels the job, so everything watching the token
    /// stops too).
    fn should_stop(&self) -> bool {
        if self.cancel.is_cancelled() {
            return true;
        }
        if self.lease.as_ref().is_some_and(|l| !l.valid()) {
            tracing::warn!("the tenant lock's lease ran out: stopping the job");
            self.cancel.cancel();
            return true;
        }
        false
    }
}

/// Runs the whole pipeline for `tenant`, in a `job` span (see [`span`]).
pub async fn process_job(deps: &Deps, tenant: &str, job: JobContext) -> Result<Outcome, JobError> {
    let span = span::job_span(tenant, &job);
    let result = run(deps, tenant, &job).instrument(span.clone()).await;
    span::record_outcome(&span, &result);
    // Verify-only counts are what would have happened: not rows applied.
    if let Ok(Outcome::Imported { counts, .. }) = &result {
        deps.metrics.rows(counts);
    }
    if result.is_ok() {
        deps.metrics.tenant_succeeded(tenant, chrono::Utc::now());
    }
    result
}

async fn run(deps: &Deps, tenant_name: &str, job: &JobContext) -> Result<Outcome, JobError> {
    let registry = deps.registry();
    let tenant = registry
        .get(tenant_name)
        .ok_or_else(|| Permanent::UnknownTenant(tenant_name.chars().take(64).collect()))?;
    if !tenant.enabled && job.trigger == Trigger::Schedule {
        return Err(Permanent::DisabledTenant(tenant.name.to_string()).into());
    }
    let key = deps
        .secrets
        .api_key(&tenant.name)
        .map_err(|e| Permanent::MissingKey(e.to_string()))?;
    let started = Utc::now();
    let mut summary = RunSummary::start(tenant.name.as_str(), job.job_id, job.trigger, started);

    let mut session = match connect(deps, tenant, &key).await {
        Ok(s) => s,
        Err(e) => {
            alerting::login_refused(deps, tenant, &e, None).await;
            return Err(e);
        }
    };
    let log_session = connect(deps, tenant, &key).await?;
    let target = LogTarget {
        connector: deps.ftps.clone(),
        host: tenant.ftps_host.clone(),
        port: tenant.ftps_port,
        user: tenant.name.to_string(),
        key: key.clone(),
    };
    let (log, log_task) = TenantLog::start(target, Some(log_session), job.job_id);
    log.line(format!(
        "start: tenant {} acting as {}, trigger {:?}{}",
        tenant.name,
        tenant.admin.username,
        job.trigger,
        job.fence
            .map(|f| format!(", lock fence {f}"))
            .unwrap_or_default()
    ));
    let result = stages(deps, tenant, &key, job, &mut session, &log, &mut summary).await;
    // A job that lost its lock (or is being stopped) makes no further side effect: another run
    // owns the tenant now, and will alert and summarise itself.
    if !job.should_stop() {
        match &result {
            Err(e) => alerting::login_refused(deps, tenant, e, Some(&log)).await,
            Ok(
                Outcome::NoFile
                | Outcome::AlreadyProcessed { .. }
                | Outcome::UploadIncomplete { .. },
            ) => alerting::no_new_file(deps, tenant, &log).await,
            Ok(Outcome::Imported { .. } | Outcome::Verified { .. } | Outcome::Held { .. }) => {}
        }
        summary.finish(&result, Utc::now());
        match summary::write(&mut session, &summary).await {
            Ok(()) => log.line(format!("summary written: {}", summary::LATEST_PATH)),
            Err(e) => log.line(format!("the run summary could not be written: {e}")),
        }
    }
    match &result {
        Ok(Outcome::NoFile) => log.line("end: no file at /uploads/user-import.csv"),
        Ok(Outcome::UploadIncomplete { size_before, size_after }) => log.line(format!(
            "end: left for the next run: the file is still being uploaded (it changed while being looked at: {size_before} bytes, then {})",
            size_after.map_or_else(|| "gone".to_owned(), |s| format!("{s} bytes"))
        )),
        Ok(Outcome::AlreadyProcessed { sha1 }) => {
            if tenant.import.verify_only {
                log.line(format!("end: skipped, this file (SHA1 {sha1}) was already verified; delete /tmp/{sha1}.verified to verify it again"))
            } else {
                log.line(format!("end: skipped, this file (SHA1 {sha1}) was already processed; delete /tmp/{sha1}.sha1 to import it again"))
            }
        }
        Ok(Outcome::Imported { counts, .. }) => log.line(format!(
            "end: imported: {} rows, {} created, {} updated, {} unchanged, {} invalid, {} failed, {} unconfirmed",
            counts.rows, counts.created, counts.updated, counts.unchanged, counts.invalid, counts.failed, counts.unconfirmed
        ) + &if counts.deactivated > 0 { format!(", {} deactivated by full sync", counts.deactivated) } else { String::new() }),
        Ok(Outcome::Verified { counts, .. }) => log.line(format!(
            "end: verified only, nothing written: {} rows, {} would be created, {} would be updated, {} unchanged, {} with errors, {} would be deactivated by full sync",
            counts.rows, counts.created, counts.updated, counts.unchanged, counts.invalid + counts.failed, counts.deactivated
        )),
        Ok(Outcome::Held { sha1, deactivations, updates, .. }) => log.line(format!(
            "end: held by the mass-change guard ({deactivations} deactivations, {updates} updates): nothing written; upload {} holding {sha1} to confirm",
            guard::CONFIRM_PATH
        )),
        Err(e) => log.line(format!(
            "end: {} ({}): {e}",
            if e.is_retryable() { "failed, will be retried" } else { "failed" },
            e.reason()
        )),
    }
    session.quit().await;
    let stats = log_task.close(log).await;
    if stats.lost > 0 {
        tracing::warn!(lost = stats.lost, "some tenant log lines were not written");
    }
    result
}

async fn stages(
    deps: &Deps,
    tenant: &Tenant,
    key: &shared::ApiKey,
    job: &JobContext,
    session: &mut FtpsSession,
    log: &TenantLog,
    summary: &mut RunSummary,
) -> Result<Outcome, JobError> {
    let settings = &deps.settings;
    let metrics = &deps.metrics;
    let max_bytes = tenant
        .limits
        .max_file_bytes
        .map_or(settings.import.max_file_bytes, |l| {
            l.min(settings.import.max_file_bytes)
        });
    let work_dir: PathBuf = settings.work_dir.clone().unwrap_or_else(std::env::temp_dir);

    // A verify upload not verified yet takes this run (the import waits for the next one).
    job.check()?;
    if let Some(outcome) = verify_upload(
        deps, tenant, key, job, session, log, summary, max_bytes, &work_dir,
    )
    .await?
    {
        return Ok(outcome);
    }

    // fetch, after a first look at the file's size and time (see `settle`)
    job.check()?;
    let clock = Instant::now();
    let first = settle::look(session, fetch::UPLOAD_PATH)
        .await
        .map_err(ftps_error)?;
    let Some(first) = first else {
        summary.stage("fetch", clock.elapsed());
        return Ok(Outcome::NoFile);
    };
    let span = tracing::info_span!(
        "fetch",
        file.size = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
        error.type = Empty,
    );
    let fetched = metrics
        .time(
            Stage::Fetch,
            fetch::fetch(session, max_bytes, &work_dir).instrument(span.clone()),
        )
        .await
        .map_err(|e| match e {
            FtpsError::TooLarge { limit } => JobError::from(Permanent::FileTooLarge {
                size: limit + 1,
                limit,
            }),
            other => ftps_error(other),
        });
    span::failed_on(&span, &fetched);
    summary.stage("fetch", clock.elapsed());
    let Some(fetched) = fetched? else {
        return Ok(Outcome::NoFile);
    };
    summary.file = Some(summary::FileSummary {
        path: fetch::UPLOAD_PATH,
        size: fetched.size,
        sha1: Some(fetched.sha1.to_string()),
        ..Default::default()
    });
    span.record("file.size", fetched.size);
    log.line(format!(
        "file found: /uploads/user-import.csv, {} bytes, SHA1 {}",
        fetched.size, fetched.sha1
    ));

    // hash
    let clock = Instant::now();
    let span = tracing::info_span!(
        "hash",
        file.sha1 = %fetched.sha1,
        already_processed = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
        error.type = Empty,
    );
    let verify = tenant.import.verify_only;
    let marker = hash::marker_name_for(&fetched.sha1, verify);
    let seen = metrics
        .time(
            Stage::Hash,
            session
                .exists_in(hash::MARKER_DIR, &marker)
                .instrument(span.clone()),
        )
        .await
        .map_err(ftps_error);
    span::failed_on(&span, &seen);
    let seen = seen?;
    summary.stage("hash", clock.elapsed());
    span.record("already_processed", seen);
    if seen {
        if verify {
            log.line(format!(
                "verify only: this file was verified before (/tmp/{marker})"
            ));
        }
        return Ok(Outcome::AlreadyProcessed {
            sha1: fetched.sha1.to_string(),
        });
    }

    // settle: a new version is imported only if it stood still for the settle interval
    job.check()?;
    let clock = Instant::now();
    settle::wait(&first, tenant.files.settle, &job.cancel).await;
    job.check()?;
    let second = settle::look(session, fetch::UPLOAD_PATH)
        .await
        .map_err(ftps_error)?;
    summary.stage("settle", clock.elapsed());
    if !settle::settled(&first, second.as_ref(), fetched.size) {
        return Ok(Outcome::UploadIncomplete {
            size_before: first.size,
            size_after: second.map(|s| s.size),
        });
    }
    if tenant.alerts.no_file_days > 0
        && let Err(e) = deps
            .alerts
            .new_file(tenant.name.as_str(), fetched.sha1.as_str(), Utc::now())
            .await
    {
        tracing::warn!(error = %e, "the arrival of a new file could not be recorded for alerts");
    }

    // The mass-change guard: a held file waits for the admin's confirmation, without API calls.
    let guard_enabled = tenant.import.mass_change_guard.enabled && !verify;
    let guard_state = if guard_enabled {
        guard::state(session, &fetched.sha1)
            .await
            .map_err(ftps_error)?
    } else {
        guard::State::Open
    };
    if let guard::State::Held(h) = &guard_state {
        log.line("this file is held by the mass-change guard and not confirmed yet");
        return Ok(Outcome::Held {
            sha1: fetched.sha1.to_string(),
            deactivations: h.deactivations,
            updates: h.updates,
            existing: h.existing,
            email_sent: false,
        });
    }
    let confirmed = guard_state == guard::State::Confirmed;
    let force_full = tenant.import.skip_unchanged
        && !verify
        && session
            .exists_in(fetch::UPLOAD_DIR, fetch::FULL_FLAG_NAME)
            .await
            .map_err(ftps_error)?;
    job.check()?;
    let plan = import::Plan {
        source: fetch::UPLOAD_PATH,
        verify,
        confirmed,
        force_full,
    };
    import::import_and_report(
        deps, tenant, key, job, session, log, summary, &fetched, &plan,
    )
    .await
}

/// `/uploads/user-import.verify.csv`, when there and not verified yet: verified only (never
/// imported), reported, and marked `/tmp/<sha1>.verified`. `None`: nothing to verify.
#[allow(clippy::too_many_arguments)]
async fn verify_upload(
    deps: &Deps,
    tenant: &Tenant,
    key: &shared::ApiKey,
    job: &JobContext,
    session: &mut FtpsSession,
    log: &TenantLog,
    summary: &mut RunSummary,
    max_bytes: u64,
    work_dir: &std::path::Path,
) -> Result<Option<Outcome>, JobError> {
    let fetched =
        match fetch::fetch_from(session, fetch::VERIFY_UPLOAD_PATH, max_bytes, work_dir).await {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(None),
            // Never in the way of the import: said in the log, and the run goes on.
            Err(FtpsError::TooLarge { limit }) => {
                log.line(format!(
                    "{} is larger than the limit of {limit} bytes: not verified",
                    fetch::VERIFY_UPLOAD_PATH
                ));
                return Ok(None);
            }
            Err(e) => return Err(ftps_error(e)),
        };
    let marker = hash::marker_name_for(&fetched.sha1, true);
    if session
        .exists_in(hash::MARKER_DIR, &marker)
        .await
        .map_err(ftps_error)?
    {
        log.line(format!(
            "{} was verified before (/tmp/{marker}); ignored",
            fetch::VERIFY_UPLOAD_PATH
        ));
        return Ok(None);
    }
    log.line(format!(
        "file found: {}, {} bytes, SHA1 {}",
        fetch::VERIFY_UPLOAD_PATH,
        fetched.size,
        fetched.sha1
    ));
    summary.file = Some(summary::FileSummary {
        path: fetch::VERIFY_UPLOAD_PATH,
        size: fetched.size,
        sha1: Some(fetched.sha1.to_string()),
        ..Default::default()
    });
    let plan = import::Plan {
        source: fetch::VERIFY_UPLOAD_PATH,
        verify: true,
        confirmed: false,
        force_full: false,
    };
    let result = import::import_and_report(
        deps, tenant, key, job, session, log, summary, &fetched, &plan,
    )
    .await;
    match result {
        Err(JobError::Permanent(why)) => {
            // A file that cannot be verified is not tried again (its marker), so the import of
            // /uploads/user-import.csv is not held up by it; the reason is in the log.
            log.line(format!(
                "{} cannot be verified: {why}",
                fetch::VERIFY_UPLOAD_PATH
            ));
            if let Err(e) = hash::write_marker_for(session, &fetched.sha1, true).await {
                log.line(format!("the verify marker could not be written: {e}"));
            }
            Err(JobError::Permanent(why))
        }
        other => other.map(Some),
    }
}

async fn connect(
    deps: &Deps,
    tenant: &Tenant,
    key: &shared::ApiKey,
) -> Result<FtpsSession, JobError> {
    deps.ftps
        .connect(
            &tenant.ftps_host,
            tenant.ftps_port,
            tenant.name.as_str(),
            key,
        )
        .await
        .map_err(ftps_error)
}

fn ftps_error(e: FtpsError) -> JobError {
    match e {
        FtpsError::Credentials => Permanent::FtpsCredentials.into(),
        FtpsError::Certificate(why) => Permanent::FtpsCertificate(why).into(),
        FtpsError::TooLarge { limit } => Permanent::FileTooLarge {
            size: limit + 1,
            limit,
        }
        .into(),
        FtpsError::LocalIo(e) => Retryable::Io(e.to_string()).into(),
        other => Retryable::Ftps(other.to_string()).into(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{JobContext, StopCheck};
    use crate::fleet::lock::Lease;

    #[tokio::test(start_paused = true)]
    async fn a_job_whose_lock_lease_ran_out_stops_and_cancels_its_token() {
        let mut job = JobContext::manual(uuid::Uuid::new_v4());
        job.lease = Some(Lease::new(
            tokio::time::Instant::now(),
            Duration::from_secs(5),
        ));
        assert!(!job.should_stop());
        assert!(job.check().is_ok());
        // Frozen past the TTL: no renewal ran, nothing cancelled the token.
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(!job.cancel.is_cancelled());
        assert!(job.should_stop());
        assert!(job.check().is_err());
        assert!(job.cancel.is_cancelled(), "the watchers see it too");
    }
}
