//! Stage import: the platform import of the fetched file (or its dry run: verify-only, or the
//! mass-change guard's look) by the import engine ([`crate::import`]), with the job's platform
//! client, which asks the job's gate before every request. Results go to a local CSV for the
//! report; a file the guard holds goes to [`guard::hold`].

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use super::{Step, fetch, guard};
use crate::import::undo::{Journal, JournalHeader};
use crate::import::{ImportError, ImportParams, Run};
use crate::job::JobRun;
use crate::outcome::{JobError, Permanent, Retryable};
use crate::platform::ApiError;

pub async fn run(job: &mut JobRun<'_>) -> Result<Step, JobError> {
    if super::undo::is_undo(job) {
        return super::undo::run(job).await;
    }
    let Some(file) = &job.found.file else {
        return Err(Retryable::WorkerFault("import before fetch".into()).into());
    };
    let plan = job.found.plan.clone();
    job.log(if plan.dry_run {
        "new version of the file: verifying only (nothing will be written)"
    } else if plan.confirmed {
        "new version of the file: importing (confirmed by the admin)"
    } else {
        "new version of the file: importing"
    });
    let mut params = params(job);
    let span = tracing::Span::current();
    span.record("concurrency", params.concurrency);
    let client = job.platform(params.concurrency);
    let results = results_file(job)?;
    let journal = journal(job)?;
    params.journal = journal.as_ref().map(|(_, j)| j.clone());
    let progress = job.progress();
    let ran = crate::import::run(
        file.file.path(),
        results.path(),
        &client,
        &params,
        &progress,
        job.gate(),
    )
    .await;
    drop(progress);
    let stats = client.stats();
    job.metrics().api(stats);
    for (field, counter) in [
        ("api.requests", &stats.requests),
        ("api.retries", &stats.retries),
        ("api.rate_limited", &stats.rate_limited),
        ("api.server_errors", &stats.server_errors),
        ("api.transport_errors", &stats.transport_errors),
    ] {
        span.record(field, counter.load(Relaxed));
    }
    let summary = match ran.map_err(job_error)? {
        Run::Done(summary) => summary,
        Run::Held(h) => return guard::hold(job, h).await,
    };
    if let Some(file) = job.record.file.as_mut() {
        file.encoding = Some(summary.encoding.label());
        file.delimiter = Some(summary.delimiter.to_string());
    }
    job.log(format!(
        "{} done: {} rows; API requests {}, retries {}, rate-limited {}",
        if plan.dry_run { "verify" } else { "import" },
        summary.counts.rows,
        stats.requests.load(Relaxed),
        stats.retries.load(Relaxed),
        stats.rate_limited.load(Relaxed),
    ));
    job.found.imported = Some(summary);
    // The results file lives as long as the run: the report uploads and attaches it.
    job.found.results = Some(results);
    if let Some(journal) = journal {
        keep_journal(job, journal);
    }
    Ok(Step::Next)
}

/// The journal, complete: kept for the report, which puts it on the account.
fn keep_journal(job: &mut JobRun<'_>, (file, journal): (tempfile::NamedTempFile, Arc<Journal>)) {
    let (changes, complete) = journal.finish();
    job.log(if complete {
        format!("undo journal: {changes} users changed")
    } else {
        format!(
            "undo journal: {changes} users changed, some could not be recorded: this run cannot be fully undone"
        )
    });
    job.found.journal = Some(file);
}

/// The local file the per-row results go to.
pub(super) fn results_file(job: &JobRun<'_>) -> Result<tempfile::NamedTempFile, JobError> {
    tempfile::Builder::new()
        .prefix("user-import-results-")
        .suffix(".csv")
        .tempfile_in(fetch::work_dir(job))
        .map_err(fetch::local_io)
}

/// The run's undo journal (a local file, kept on the account by the report), unless the run writes
/// nothing or the tenant keeps no journal.
fn journal(job: &JobRun<'_>) -> Result<Option<(tempfile::NamedTempFile, Arc<Journal>)>, JobError> {
    let Some(file) = &job.found.file else {
        return Ok(None);
    };
    if job.found.plan.dry_run || job.tenant().files.undo_retention_days == 0 {
        return Ok(None);
    }
    let local = tempfile::Builder::new()
        .prefix("user-import-undo-")
        .suffix(".jsonl")
        .tempfile_in(fetch::work_dir(job))
        .map_err(fetch::local_io)?;
    let header = JournalHeader {
        undo_journal: 1,
        job_id: job.context().job_id.to_string(),
        sha1: file.sha1.to_string(),
        started_at: job.record.started_at.to_rfc3339(),
    };
    let journal = Journal::create(local.path(), &header).map_err(fetch::local_io)?;
    Ok(Some((local, Arc::new(journal))))
}

pub(super) fn params(job: &JobRun<'_>) -> ImportParams {
    let (settings, tenant, plan) = (&job.settings().import, job.tenant(), &job.found.plan);
    let concurrency = tenant
        .limits
        .api_concurrency
        .map_or(settings.concurrency, |c| c.min(settings.concurrency));
    ImportParams {
        options: tenant.import.clone(),
        concurrency,
        max_rows: tenant
            .limits
            .max_rows
            .map_or(settings.max_rows, |m| m.min(settings.max_rows)),
        progress_every: settings.progress_every,
        max_record_bytes: settings.max_record_bytes,
        verify: plan.dry_run,
        confirmed: plan.confirmed,
        force_full: plan.force_full,
        tenant: tenant.name.to_string(),
        admin: tenant.admin.username.clone(),
        store: job.store().clone(),
        journal: None,
    }
}

/// What an import failure means for the job.
pub(super) fn job_error(e: ImportError) -> JobError {
    match e {
        ImportError::Credentials(code) => Permanent::ApiCredentials(code).into(),
        ImportError::Header(h) => Permanent::UnreadableFile(h.to_string()).into(),
        ImportError::Unreadable(m) => Permanent::UnreadableFile(m).into(),
        ImportError::TooManyRows(n) => {
            Permanent::UnreadableFile(format!("more than {n} rows")).into()
        }
        ImportError::Api(ApiError::Protocol(m)) => Permanent::ApiProtocol(m).into(),
        ImportError::Api(other) => Retryable::Api(other.to_string()).into(),
        ImportError::Io(e) => Retryable::Io(e.to_string()).into(),
        ImportError::Store(e) => Retryable::Store(e.to_string()).into(),
        ImportError::Cancelled => Retryable::Cancelled.into(),
        ImportError::WorkerFault(m) => Retryable::WorkerFault(m).into(),
    }
}
