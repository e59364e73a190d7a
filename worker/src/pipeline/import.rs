//! Import and report for one fetched file: the platform import (or its verify-only / guard
//! plan), then the results CSV in `/reports/`, the email, and only then the marker. A run the
//! mass-change guard holds leaves the held marker and emails the admin instead.

use std::path::PathBuf;
use std::time::Instant;

use shared::registry::Tenant;
use tracing::Instrument;
use tracing::field::Empty;

use super::summary::RunSummary;
use super::{Deps, JobContext, archive, fetch, ftps_error, guard, hash, report, span};
use crate::account::Account;
use crate::import::{ImportError, ImportParams, Run};
use crate::metrics::Stage;
use crate::outcome::{JobError, Outcome, Permanent, Retryable};
use crate::pipeline::log::TenantLog;
use crate::platform::PlatformClient;

/// What this run does with the file.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Where the file came from (shown in the log and the email).
    pub source: &'static str,
    /// Verify only: no write to the platform.
    pub verify: bool,
    /// The admin confirmed this held file.
    pub confirmed: bool,
    /// Send every row, ignoring the row fingerprints.
    pub force_full: bool,
}

#[allow(clippy::too_many_arguments)]
pub async fn import_and_report(
    deps: &Deps,
    tenant: &Tenant,
    key: &shared::ApiKey,
    job: &JobContext,
    session: &mut dyn Account,
    log: &TenantLog,
    run_summary: &mut RunSummary,
    fetched: &fetch::Fetched,
    plan: &Plan,
) -> Result<Outcome, JobError> {
    let started = run_summary.started_at;
    let settings = &deps.settings;
    let metrics = &deps.metrics;
    let work_dir: PathBuf = settings.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let Plan {
        verify,
        confirmed,
        force_full,
        ..
    } = *plan;
    let marker = hash::marker_name_for(&fetched.sha1, verify);
    log.line(if verify {
        "new version of the file: verifying only (nothing will be written)"
    } else if confirmed {
        "new version of the file: importing (confirmed by the admin)"
    } else {
        "new version of the file: importing"
    });

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
    )
    .with_stop(std::sync::Arc::new(job.clone()));
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
        verify,
        confirmed,
        force_full,
        tenant: tenant.name.to_string(),
        admin: tenant.admin.username.clone(),
        store: deps.store.clone(),
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
    let summary = metrics
        .time(
            Stage::Import,
            crate::import::run(
                fetched.file.path(),
                results.path(),
                &client,
                &params,
                &progress,
                job,
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
    run_summary.stage("import", clock.elapsed());
    let summary = summary.map_err(|e| match e {
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
        ImportError::Store(e) => Retryable::Store(e.to_string()).into(),
        ImportError::Cancelled => Retryable::Cancelled.into(),
    });
    span::failed_on(&span, &summary);
    let summary = match summary? {
        Run::Done(summary) => summary,
        Run::Held(h) => return hold(deps, tenant, job, session, log, fetched, h).await,
    };
    if let Some(file) = run_summary.file.as_mut() {
        file.encoding = Some(summary.encoding.label());
        file.delimiter = Some(summary.delimiter.to_string());
    }
    log.line(format!(
        "{} done: {} rows; API requests {}, retries {}, rate-limited {}",
        if verify { "verify" } else { "import" },
        summary.counts.rows,
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
    let report_path = report::report_path_for(started, &fetched.sha1, verify);
    let email_sent = async {
        job.check()?;
        report::upload_results(session, &summary, &report_path)
            .await
            .map_err(ftps_error)?;
        log.line(format!("report written: {report_path}"));
        let ctx = report::EmailContext {
            tenant,
            summary: &summary,
            sha1: &fetched.sha1,
            source: plan.source,
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
        hash::write_marker_for(session, &fetched.sha1, verify)
            .await
            .map_err(ftps_error)?;
        log.line(format!("marker written: /tmp/{marker}"));
        if confirmed {
            match guard::clear(session, &fetched.sha1).await {
                Ok(()) => log.line(format!(
                    "confirmation used: {} and the held marker removed",
                    guard::CONFIRM_PATH
                )),
                Err(e) => log.line(format!("the confirmation could not be removed: {e}")),
            }
        }
        if force_full {
            match session.remove(&fetch::full_flag_path()).await {
                Ok(()) => log.line(format!(
                    "full re-push done: {} removed",
                    fetch::full_flag_path()
                )),
                Err(e) => log.line(format!(
                    "{} could not be removed: {e}",
                    fetch::full_flag_path()
                )),
            }
        }
        Ok::<bool, JobError>(email_sent)
    }
    .instrument(report_span.clone());
    let email_sent = metrics.time(Stage::Report, email_sent).await;
    span::failed_on(&report_span, &email_sent);
    run_summary.stage("report", clock.elapsed());
    let email_sent = email_sent?;
    report_span.record("email_sent", email_sent);

    // archive: the import is done and marked; archive trouble is logged, never fails the job
    if !verify && tenant.files.archive_retention_days > 0 {
        let clock = Instant::now();
        run_summary.archive_path = archive::archive_logged(
            session,
            fetched,
            started,
            tenant.files.archive_retention_days,
            log,
            job,
        )
        .await;
        run_summary.stage("archive", clock.elapsed());
    }

    let (sha1, counts) = (fetched.sha1.to_string(), summary.counts);
    Ok(if verify {
        Outcome::Verified {
            sha1,
            counts,
            report_path,
            email_sent,
        }
    } else {
        Outcome::Imported {
            sha1,
            counts,
            report_path,
            email_sent,
        }
    })
}

/// The mass-change guard held the file: the held marker goes on the account (so the next runs
/// wait without API calls) and the admin is told how to confirm.
async fn hold(
    deps: &Deps,
    tenant: &Tenant,
    job: &JobContext,
    session: &mut dyn Account,
    log: &TenantLog,
    fetched: &fetch::Fetched,
    h: crate::import::Held,
) -> Result<Outcome, JobError> {
    job.check()?;
    guard::write_held(session, &fetched.sha1, &h)
        .await
        .map_err(ftps_error)?;
    log.line(format!(
        "held: /tmp/{} written; nothing was changed",
        guard::held_name(&fetched.sha1)
    ));
    let email_sent = match guard::email(&deps.mailer, tenant, &h, &fetched.sha1, fetched.size).await
    {
        Ok(()) => {
            log.line(format!(
                "the nominated admin ({}) was emailed how to confirm",
                tenant.admin.username
            ));
            true
        }
        Err(why) => {
            log.line(format!("the held email could not be sent: {why}"));
            false
        }
    };
    Ok(Outcome::Held {
        sha1: fetched.sha1.to_string(),
        deactivations: h.deactivations,
        updates: h.updates,
        existing: h.existing,
        email_sent,
    })
}
