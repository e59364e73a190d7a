//! The pipeline for one job of one tenant: fetch → hash → import → report. [`process_job`] is the
//! single entry point: the queue consumer calls it, `worker once` calls it, tests call it.
//! Stages never read the environment or open their own clients: everything comes in [`Deps`].
//! Around the stages: the upload must have settled before it is imported ([`settle`]), an imported
//! file is archived ([`archive`]), every run leaves a JSON summary ([`summary`]), and alerts go to
//! the admin when the account goes quiet or a login is refused ([`crate::alerts`]).

pub mod alerting;
pub mod archive;
pub mod fetch;
pub mod hash;
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
use crate::ftps::{FtpsConnector, FtpsError, FtpsSession};
use crate::import::{ImportError, ImportParams};
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
}

impl JobContext {
    /// A job started by hand (`worker once`, tests): no lock, never cancelled.
    pub fn manual(job_id: Uuid) -> Self {
        Self {
            job_id,
            trigger: Trigger::Manual,
            cancel: CancellationToken::new(),
            fence: None,
        }
    }

    fn check(&self) -> Result<(), JobError> {
        if self.cancel.is_cancelled() {
            Err(Retryable::Cancelled.into())
        } else {
            Ok(())
        }
    }
}

/// Runs the whole pipeline for `tenant`, in a `job` span (see [`span`]).
pub async fn process_job(deps: &Deps, tenant: &str, job: JobContext) -> Result<Outcome, JobError> {
    let span = span::job_span(tenant, &job);
    let result = run(deps, tenant, &job).instrument(span.clone()).await;
    span::record_outcome(&span, &result);
    if let Ok(Outcome::Imported { counts, .. }) = &result {
        deps.metrics.rows(counts);
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
    if !job.cancel.is_cancelled() {
        match &result {
            Err(e) => alerting::login_refused(deps, tenant, e, Some(&log)).await,
            Ok(
                Outcome::NoFile
                | Outcome::AlreadyProcessed { .. }
                | Outcome::UploadIncomplete { .. },
            ) => alerting::no_new_file(deps, tenant, &log).await,
            Ok(Outcome::Imported { .. }) => {}
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
            log.line(format!("end: skipped, this file (SHA1 {sha1}) was already processed; delete /tmp/{sha1}.sha1 to import it again"))
        }
        Ok(Outcome::Imported { counts, .. }) => log.line(format!(
            "end: imported: {} rows, {} created, {} updated, {} unchanged, {} invalid, {} failed, {} unconfirmed",
            counts.rows, counts.created, counts.updated, counts.unchanged, counts.invalid, counts.failed, counts.unconfirmed
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
    let started = summary.started_at;
    let settings = &deps.settings;
    let metrics = &deps.metrics;
    let max_bytes = tenant
        .limits
        .max_file_bytes
        .map_or(settings.import.max_file_bytes, |l| {
            l.min(settings.import.max_file_bytes)
        });
    let work_dir: PathBuf = settings.work_dir.clone().unwrap_or_else(std::env::temp_dir);

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
    let seen = metrics
        .time(
            Stage::Hash,
            hash::already_processed(session, &fetched.sha1).instrument(span.clone()),
        )
        .await
        .map_err(ftps_error);
    span::failed_on(&span, &seen);
    let seen = seen?;
    summary.stage("hash", clock.elapsed());
    span.record("already_processed", seen);
    if seen {
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
    log.line("new version of the file: importing");

    // import
    let concurrency = tenant
        .limits
        .api_concurrency
        .map_or(settings.import.concurrency, |c| {
            c.min(settings.import.concurrency)
        });
    let client = PlatformClient::new(
        deps.http.clone(),
        tenant,
        key.clone(),
        &settings.platform,
        concurrency,
    );
    let params = ImportParams {
        options: tenant.import.clone(),
        concurrency,
        max_rows: tenant
            .limits
            .max_rows
            .map_or(settings.import.max_rows, |m| {
                m.min(settings.import.max_rows)
            }),
        progress_every: settings.import.progress_every,
        max_record_bytes: settings.import.max_record_bytes,
    };
    let results = tempfile::Builder::new()
        .prefix("user-import-results-")
        .suffix(".csv")
        .tempfile_in(&work_dir)
        .map_err(|e| Retryable::Io(e.to_string()))?;
    let progress = log.sender();
    let span = tracing::info_span!(
        "import",
        concurrency,
        api.requests = Empty,
        api.retries = Empty,
        api.rate_limited = Empty,
        api.server_errors = Empty,
        api.transport_errors = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
        error.type = Empty,
    );
    let clock = Instant::now();
    let imported = metrics
        .time(
            Stage::Import,
            crate::import::run(
                fetched.file.path(),
                results.path(),
                &client,
                &params,
                &progress,
                &job.cancel,
            )
            .instrument(span.clone()),
        )
        .await;
    drop(progress);
    let stats = client.stats();
    metrics.api(stats);
    for (field, counter) in [
        ("api.requests", &stats.requests),
        ("api.retries", &stats.retries),
        ("api.rate_limited", &stats.rate_limited),
        ("api.server_errors", &stats.server_errors),
        ("api.transport_errors", &stats.transport_errors),
    ] {
        span.record(field, counter.load(std::sync::atomic::Ordering::Relaxed));
    }
    summary.stage("import", clock.elapsed());
    let imported = imported.map_err(|e| match e {
        ImportError::Credentials(code) => JobError::from(Permanent::ApiCredentials(code)),
        ImportError::Header(h) => Permanent::UnreadableFile(h.to_string()).into(),
        ImportError::Unreadable(m) => Permanent::UnreadableFile(m).into(),
        ImportError::TooManyRows(n) => {
            Permanent::UnreadableFile(format!("more than {n} rows")).into()
        }
        ImportError::Api(crate::platform::ApiError::Protocol(m)) => {
            Permanent::ApiProtocol(m).into()
        }
        ImportError::Api(other) => Retryable::Api(other.to_string()).into(),
        ImportError::Io(e) => Retryable::Io(e.to_string()).into(),
        ImportError::Cancelled => Retryable::Cancelled.into(),
    });
    span::failed_on(&span, &imported);
    let imported = imported?;
    if let Some(file) = summary.file.as_mut() {
        file.encoding = Some(imported.encoding.label());
        file.delimiter = Some(imported.delimiter.to_string());
    }
    log.line(format!(
        "import done: {} rows; API requests {}, retries {}, rate-limited {}",
        imported.counts.rows,
        stats.requests.load(std::sync::atomic::Ordering::Relaxed),
        stats.retries.load(std::sync::atomic::Ordering::Relaxed),
        stats
            .rate_limited
            .load(std::sync::atomic::Ordering::Relaxed),
    ));

    // report
    let report_span = tracing::info_span!(
        "report",
        email_sent = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
        error.type = Empty,
    );
    let clock = Instant::now();
    let report_path = report::report_path(started, &fetched.sha1);
    let email_sent = async {
        job.check()?;
        report::upload_results(session, &imported, &report_path)
            .await
            .map_err(ftps_error)?;
        log.line(format!("report written: {report_path}"));
        let ctx = report::EmailContext {
            tenant,
            summary: &imported,
            sha1: &fetched.sha1,
            size: fetched.size,
            report_path: &report_path,
            job_id: &job.job_id.to_string(),
        };
        job.check()?;
        let email_sent = match report::email(&deps.mailer, &ctx).await {
            Ok(()) => {
                log.line(format!(
                    "report emailed to the nominated admin ({})",
                    tenant.admin.username
                ));
                true
            }
            Err(why) => {
                // The import is done and its report is on the account: record, do not redo.
                log.line(format!("the report email could not be sent: {why}"));
                false
            }
        };
        job.check()?;
        hash::write_marker(session, &fetched.sha1)
            .await
            .map_err(ftps_error)?;
        log.line(format!("marker written: /tmp/{}.sha1", fetched.sha1));
        Ok::<bool, JobError>(email_sent)
    }
    .instrument(report_span.clone());
    let email_sent = metrics.time(Stage::Report, email_sent).await;
    span::failed_on(&report_span, &email_sent);
    summary.stage("report", clock.elapsed());
    let email_sent = email_sent?;
    report_span.record("email_sent", email_sent);

    // archive: the import is done and marked; archive trouble is logged, never fails the job
    if tenant.files.archive_retention_days > 0 {
        let clock = Instant::now();
        summary.archive_path = archive::archive_logged(
            session,
            &fetched,
            started,
            tenant.files.archive_retention_days,
            log,
            &job.cancel,
        )
        .await;
        summary.stage("archive", clock.elapsed());
    }

    Ok(Outcome::Imported {
        sha1: fetched.sha1.to_string(),
        counts: imported.counts,
        report_path,
        email_sent,
    })
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
