//! Undoing a run on the admin's request (see [`crate::import::undo`] for what is restored).
//!
//! - Every import (not a dry run) keeps its undo journal beside its report:
//!   `/reports/<report name>.undo.jsonl`, kept `files.undo_retention_days`.
//! - The admin uploads `/uploads/user-import.undo`, a text file naming the run: its job id or its
//!   file's SHA1 (both are in the report email). The next run takes it instead of the user file
//!   (which waits for the run after): it is fetched, hashed and marked like a file
//!   (`/tmp/<sha1>.sha1` once done), goes through the mass-change guard (held until
//!   `/uploads/user-import.confirm` names the request's SHA1), and is reported like an import
//!   (`/reports/user-import-undo-…csv`, the email, the summary).
//! - A request naming no run with a journal, a run older than the retention, or a run undone
//!   before (`/tmp/<journal name>.undone`) is refused: one email, remembered like a refused file.

use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};

use super::{Step, fetch, guard, import};
use crate::account::AccountError;
use crate::import::Run;
use crate::import::undo::{self, JournalHeader};
use crate::job::{JobRun, Plan, UndoTarget, account_error};
use crate::layout::{MARKER_DIR, REPORTS_DIR, UNDO_PATH};
use crate::outcome::{JobError, Permanent, Retryable};

/// An undo request only names a run: anything larger is not one.
const REQUEST_MAX_BYTES: u64 = 4096;
/// The largest journal fetched (a journal line is a few hundred bytes per user changed).
const JOURNAL_MAX_BYTES: u64 = 2 << 30;
const PREFIX: &str = "user-import-";
const SUFFIX: &str = ".undo.jsonl";
const TIME_FORMAT: &str = "%Y%m%dT%H%M%SZ";

/// Whether this run works on an undo request.
pub fn is_undo(job: &JobRun<'_>) -> bool {
    job.found.plan.undo
}

/// The journal's path for a report at `report_path` (`….csv`).
pub fn journal_path(report_path: &str) -> String {
    format!("{}{SUFFIX}", report_path.trim_end_matches(".csv"))
}

/// When the run of a journal started, from its name; `None` for a name that is not a journal.
pub fn journal_time(name: &str) -> Option<DateTime<Utc>> {
    let rest = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    let (time, hash) = rest.split_once('-')?;
    if hash.is_empty() || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    NaiveDateTime::parse_from_str(time, TIME_FORMAT)
        .ok()
        .map(|t| t.and_utc())
}

/// The marker of an undone run.
pub fn undone_name(journal_name: &str) -> String {
    format!("{journal_name}.undone")
}

/// Takes the run when an undo request is there and not done or refused before. `Ok(false)`: the
/// run goes on with the user file.
pub async fn take_request(job: &mut JobRun<'_>) -> Result<bool, JobError> {
    let dir = fetch::work_dir(job);
    let file = match job.fetch_file(UNDO_PATH, REQUEST_MAX_BYTES, &dir).await {
        Ok(Some(file)) => file,
        Ok(None) => return Ok(false),
        Err(AccountError::TooLarge { limit }) => {
            job.log(format!(
                "{UNDO_PATH} is larger than {limit} bytes: not an undo request; ignored"
            ));
            return Ok(false);
        }
        Err(e) => return Err(account_error(e)),
    };
    let names = job.list(MARKER_DIR).await?;
    let sha1 = file.sha1.to_string();
    if names.contains(&format!("{sha1}.sha1")) || names.contains(&format!("{sha1}.refused")) {
        return Ok(false);
    }
    fetch::found(job, UNDO_PATH, file);
    job.found.plan = Plan {
        source: UNDO_PATH,
        undo: true,
        ..Plan::default()
    };
    Ok(true)
}

/// The import stage of an undo run: finds the run, then undoes it (or the guard holds it).
pub async fn run(job: &mut JobRun<'_>) -> Result<Step, JobError> {
    let Some(request) = &job.found.file else {
        return Err(Retryable::WorkerFault("undo before fetch".into()).into());
    };
    let text = tokio::fs::read(request.file.path())
        .await
        .map_err(fetch::local_io)?;
    let text = String::from_utf8_lossy(&text);
    let wanted = text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    let target = find(job, &wanted).await?;
    let h = &target.header;
    job.log(format!(
        "undo requested: the run of job {} ({}, file SHA1 {}), journal {REPORTS_DIR}/{}",
        h.job_id, h.started_at, h.sha1, target.name
    ));
    let params = import::params(job);
    let client = job.platform(params.concurrency);
    let results = import::results_file(job)?;
    let progress = job.progress();
    let ran = undo::run(
        target.local.file.path(),
        results.path(),
        &client,
        &params,
        &progress,
        job.gate(),
    )
    .await;
    drop(progress);
    job.metrics().api(client.stats());
    let summary = match ran.map_err(import::job_error)? {
        Run::Done(summary) => summary,
        Run::Held(h) => return guard::hold(job, h).await,
    };
    job.log(format!("undo done: {} users", summary.counts.rows));
    job.found.imported = Some(summary);
    job.found.results = Some(results);
    job.found.undoing = Some(target);
    Ok(Step::Next)
}

/// The journal of the run `wanted` names (a job id or a SHA1), newest first; refused when there
/// is none, it is older than the retention, or it was undone before.
async fn find(job: &JobRun<'_>, wanted: &str) -> Result<UndoTarget, JobError> {
    let refuse = |why: String| -> JobError { Permanent::UndoRefused(why).into() };
    let by_sha1 = shared::Sha1Digest::parse(wanted).ok();
    let by_job = uuid::Uuid::parse_str(wanted).ok();
    if by_sha1.is_none() && by_job.is_none() {
        return Err(refuse(format!(
            "{UNDO_PATH} holds {:?}: neither a job id nor a file SHA1",
            wanted.chars().take(80).collect::<String>()
        )));
    }
    let mut journals: Vec<(DateTime<Utc>, String)> = job
        .list(REPORTS_DIR)
        .await?
        .into_iter()
        .filter_map(|n| journal_time(&n).map(|t| (t, n)))
        .collect();
    journals.sort_by(|a, b| b.cmp(a));
    let dir = fetch::work_dir(job);
    for (at, name) in journals {
        if let Some(sha1) = &by_sha1
            && !name.ends_with(&format!("-{}{SUFFIX}", sha1.short()))
        {
            continue;
        }
        let path = format!("{REPORTS_DIR}/{name}");
        let Some(local) = job
            .fetch_file(&path, JOURNAL_MAX_BYTES, &dir)
            .await
            .map_err(account_error)?
        else {
            continue;
        };
        let Ok(header) = undo::read_header(local.file.path()) else {
            continue;
        };
        if !names_run(&header, by_sha1.as_ref(), by_job.as_ref()) {
            continue;
        }
        check(job, at, &name).await?;
        return Ok(UndoTarget {
            name,
            header,
            local,
        });
    }
    Err(refuse(format!(
        "no run with the job id or file SHA1 {wanted} has an undo journal in {REPORTS_DIR} \
         (runs are kept {} days)",
        job.tenant().files.undo_retention_days
    )))
}

fn names_run(
    header: &JournalHeader,
    sha1: Option<&shared::Sha1Digest>,
    job_id: Option<&uuid::Uuid>,
) -> bool {
    sha1.is_some_and(|s| header.sha1.eq_ignore_ascii_case(s.as_str()))
        || job_id.is_some_and(|j| header.job_id.eq_ignore_ascii_case(&j.to_string()))
}

/// Refuses a run older than the retention, or undone before.
async fn check(job: &JobRun<'_>, at: DateTime<Utc>, name: &str) -> Result<(), JobError> {
    let days = job.tenant().files.undo_retention_days;
    if Utc::now() - at > TimeDelta::days(i64::from(days)) {
        return Err(Permanent::UndoRefused(format!(
            "the run of {} is older than the undo retention of {days} days",
            at.format("%Y-%m-%d %H:%M UTC")
        ))
        .into());
    }
    let marker = undone_name(name);
    if job.exists(MARKER_DIR, &marker).await? {
        return Err(Permanent::UndoRefused(format!(
            "that run was undone before ({MARKER_DIR}/{marker})"
        ))
        .into());
    }
    Ok(())
}

/// After the undo's report: the run is marked undone, so it is not undone twice.
pub async fn mark_undone(job: &JobRun<'_>) {
    let Some(target) = &job.found.undoing else {
        return;
    };
    let marker = format!("{MARKER_DIR}/{}", undone_name(&target.name));
    let text = format!(
        "undone by job {} at {}\n",
        job.context().job_id,
        Utc::now().to_rfc3339()
    );
    job.log(match job.put_bytes(&marker, text.as_bytes()).await {
        Ok(_) => format!("undone: {marker} written; that run cannot be undone again"),
        Err(e) => format!("the undone marker {marker} could not be written: {e}"),
    });
}

/// The journal of an import, once its report is on the account: beside it, so the run can be
/// undone; journals older than the retention are deleted.
pub async fn keep_journal(job: &JobRun<'_>, report_path: &str) {
    let Some(journal) = &job.found.journal else {
        return;
    };
    let path = journal_path(report_path);
    job.log(match job.put_file(&path, journal.path()).await {
        Ok(_) => format!("undo journal written: {path}"),
        Err(e) => format!("the undo journal could not be written ({e}): this run cannot be undone"),
    });
    let days = job.tenant().files.undo_retention_days;
    let Ok(names) = job.list(REPORTS_DIR).await else {
        return;
    };
    let cutoff = job.record.started_at - TimeDelta::days(i64::from(days));
    for name in names {
        if journal_time(&name).is_some_and(|t| t < cutoff) {
            let gone = job.remove(&format!("{REPORTS_DIR}/{name}")).await;
            if let Err(e) = gone {
                job.log(format!(
                    "an expired undo journal {name} could not be deleted: {e}"
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_journal_is_named_after_its_report_and_dated_by_its_name() {
        let path = journal_path("/reports/user-import-20260102T030405Z-abcdef012345.csv");
        assert_eq!(
            path,
            "/reports/user-import-20260102T030405Z-abcdef012345.undo.jsonl"
        );
        let name = path.rsplit('/').next().unwrap_or_default();
        assert_eq!(
            journal_time(name).map(|t| t.to_rfc3339()),
            Some("2026-01-02T03:04:05+00:00".to_owned())
        );
        assert_eq!(journal_time("user-import-20260102T030405Z-abc.csv"), None);
        assert_eq!(
            journal_time("user-import-undo-20260102T030405Z-abc.csv"),
            None
        );
    }
}
