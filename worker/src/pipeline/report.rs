//! Stage report: the per-record results CSV goes to `/reports/` (one file per processed version,
//! named with the time and the short hash), the tenant's recipients (`notify`) get an email with
//! the counts in the subject, a text and an HTML part, and the results attached, and then — only
//! then — the `/tmp` marker is written. A confirmed file's confirmation, a used full-push flag and
//! a used re-run request are removed last. Rows that ended invalid or failed also go to
//! `<report name>.rejects.csv`, in the upload's own format, for the admin to fix and upload again.

use chrono::{DateTime, Utc};
use shared::Sha1Digest;
use shared::registry::Tenant;

use super::{Step, guard, hash, undo};
use crate::email;
use crate::import::ImportSummary;
use crate::import::apply::RowResult;
use crate::import::undo::JournalHeader;
use crate::job::{JobRun, Mail, Plan};
use crate::layout::{CONFIRM_PATH, FULL_FLAG_PATH, REPORTS_DIR, RERUN_PATH, UPLOAD_PATH};
use crate::outcome::{JobError, Outcome, Retryable};

/// A verify-only run's report is `user-import-verify-…`, so it is never taken for an import's.
pub fn report_path_for(started: DateTime<Utc>, sha1: &Sha1Digest, dry_run: bool) -> String {
    format!(
        "{REPORTS_DIR}/user-import-{}{}-{}.csv",
        if dry_run { "verify-" } else { "" },
        started.format("%Y%m%dT%H%M%SZ"),
        sha1.short()
    )
}

pub async fn run(job: &mut JobRun<'_>) -> Result<Step, JobError> {
    let (Some(file), Some(summary)) = (&job.found.file, &job.found.imported) else {
        return Err(Retryable::WorkerFault("report before import".into()).into());
    };
    let plan = job.found.plan.clone();
    let sha1 = file.sha1.clone();
    let report_path = if plan.undo {
        undo_report_path(job.record.started_at, &sha1)
    } else {
        report_path_for(job.record.started_at, &sha1, plan.dry_run)
    };
    job.mkdir(REPORTS_DIR).await?;
    job.put_file(&report_path, &summary.results_file).await?;
    job.log(format!("report written: {report_path}"));
    let rejects_path = write_rejects(job, summary, &report_path).await?;
    undo::keep_journal(job, &report_path).await;
    let ctx = EmailContext {
        tenant: job.tenant(),
        summary,
        sha1: &sha1,
        source: plan.source,
        size: file.size,
        report_path: &report_path,
        rejects: rejects_path
            .as_deref()
            .zip(summary.rejects.as_ref().map(|r| r.rows)),
        job_id: &job.context().job_id.to_string(),
        undoing: job.found.undoing.as_ref().map(|t| &t.header),
    };
    let email_sent = send(job, &ctx).await;
    tracing::Span::current().record("email_sent", email_sent);
    hash::write_marker(job, &sha1, plan.dry_run).await?;
    job.log(format!(
        "marker written: /tmp/{}",
        hash::marker_name(&sha1, plan.dry_run)
    ));
    undo::mark_undone(job).await;
    clear_requests(job, &plan, &sha1).await;
    job.record.rejects_path = rejects_path;
    let (sha1, counts) = (sha1.to_string(), summary.counts.clone());
    job.found.outcome = Some(if plan.dry_run {
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
    });
    Ok(Step::Next)
}

/// The reject file's path next to its report (`….csv` → `….rejects.csv`).
pub fn rejects_path_for(report_path: &str) -> String {
    let stem = report_path.strip_suffix(".csv").unwrap_or(report_path);
    format!("{stem}.rejects.csv")
}

/// Uploads the rows that ended invalid or failed next to the report; its path, if there were any.
async fn write_rejects(
    job: &JobRun<'_>,
    summary: &ImportSummary,
    report_path: &str,
) -> Result<Option<String>, JobError> {
    let Some(rejects) = &summary.rejects else {
        return Ok(None);
    };
    let path = rejects_path_for(report_path);
    job.put_file(&path, &rejects.path).await?;
    job.log(format!(
        "rejected rows written: {path} ({} rows, in the file's own format)",
        rejects.rows
    ));
    Ok(Some(path))
}

/// Removes what the admin asked for once it is done: a confirmation, a full re-push, a re-run.
async fn clear_requests(job: &JobRun<'_>, plan: &Plan, sha1: &Sha1Digest) {
    if plan.confirmed {
        job.log(match guard::clear(job, sha1).await {
            Ok(()) => format!("confirmation used: {CONFIRM_PATH} and the held marker removed"),
            Err(e) => format!("the confirmation could not be removed: {e}"),
        });
    }
    for (asked, path, what) in [
        (plan.force_full, FULL_FLAG_PATH, "full re-push"),
        (plan.rerun, RERUN_PATH, "re-run"),
    ] {
        if asked {
            job.log(match job.remove(path).await {
                Ok(()) => format!("{what} done: {path} removed"),
                Err(e) => format!("{path} could not be removed: {e}"),
            });
        }
    }
}

/// An undo run's report: `user-import-undo-<time>-<short SHA1 of the request>.csv`.
pub fn undo_report_path(started: DateTime<Utc>, sha1: &Sha1Digest) -> String {
    format!(
        "{REPORTS_DIR}/user-import-undo-{}-{}.csv",
        started.format("%Y%m%dT%H%M%SZ"),
        sha1.short()
    )
}

/// Sends the report email and says so in the log; whether it was sent.
async fn send(job: &JobRun<'_>, ctx: &EmailContext<'_>) -> bool {
    match email(job, ctx).await {
        Ok(()) => {
            job.log(format!("report emailed to {}", job.recipients()));
            true
        }
        Err(why) => {
            // The import is done and its report is on the account: record, do not redo.
            job.log(format!("the report email could not be sent: {why}"));
            false
        }
    }
}

/// The subject: tenant, outcome and counts, readable in an inbox list.
pub fn subject(
    tenant: &Tenant,
    summary: &ImportSummary,
    undoing: Option<&JournalHeader>,
) -> String {
    let c = &summary.counts;
    let problems = c.invalid + c.failed + c.unconfirmed;
    if let Some(h) = undoing {
        return format!(
            "[{}] User import UNDO of job {}: {} users, {} restored, {} deactivated, {} unchanged, {} with problems",
            tenant.name, h.job_id, c.rows, c.updated, c.deactivated_by_state, c.unchanged, problems
        );
    }
    if summary.verify {
        return format!(
            "[{}] User import VERIFY ONLY (nothing changed): {} rows, {} would be created, {} would be updated, {} unchanged, {} with errors",
            tenant.name, c.rows, c.created, c.updated, c.unchanged, problems
        );
    }
    format!(
        "[{}] User import: {} rows, {} created, {} updated, {} unchanged, {} with problems",
        tenant.name, c.rows, c.created, c.updated, c.unchanged, problems
    )
}

#[derive(Debug)]
pub struct EmailContext<'a> {
    pub tenant: &'a Tenant,
    pub summary: &'a ImportSummary,
    pub sha1: &'a Sha1Digest,
    /// The file's path on the account.
    pub source: &'a str,
    pub size: u64,
    pub report_path: &'a str,
    /// The reject file's path and its number of rows, when rows were rejected.
    pub rejects: Option<(&'a str, u64)>,
    pub job_id: &'a str,
    /// An undo run: the run it undoes.
    pub undoing: Option<&'a JournalHeader>,
}

/// One line of the email's counts: label, count, and what it counts when the label alone does
/// not say. The text and the HTML part both render this list.
pub type CountRow = (&'static str, u64, &'static str);

/// The counts the email shows, in order. Only the lines that say something for this tenant: a
/// count of full-sync deactivations when full sync is on, Account-state deactivations and
/// protected users when there were any.
pub fn count_rows(ctx: &EmailContext<'_>) -> Vec<CountRow> {
    let c = &ctx.summary.counts;
    let mut rows: Vec<CountRow> = vec![
        ("Rows", c.rows, ""),
        ("Created", c.created, ""),
        ("Updated", c.updated, ""),
        ("Unchanged", c.unchanged, ""),
        ("Invalid", c.invalid, ""),
        ("Failed", c.failed, ""),
        ("Unconfirmed", c.unconfirmed, ""),
    ];
    if c.deactivated_by_state > 0 {
        rows.push((
            "Deactivated",
            c.deactivated_by_state,
            "by the file's Account state column",
        ));
    }
    if ctx.tenant.import.full_sync {
        rows.push((
            "Deactivated",
            c.deactivated,
            "full sync: absent from the file",
        ));
    }
    if c.protected > 0 {
        rows.push(("Protected", c.protected, "protected users: not changed"));
    }
    rows
}

/// How many problem rows the HTML part shows (the text shows all the summary kept).
const HTML_PROBLEMS: usize = 10;

pub fn body(ctx: &EmailContext<'_>) -> String {
    let mut b = String::new();
    if let Some(h) = ctx.undoing {
        b.push_str(&format!(
            "UNDO: this run undid the run of job {} ({}, file SHA1 {}): the fields and states it\n\
             changed were restored, the users it created deactivated, the groups it added removed.\n\n",
            h.job_id, h.started_at, h.sha1
        ));
    }
    if ctx.summary.verify {
        b.push_str(
            "VERIFY ONLY: this run changed nothing on the platform. The counts and the report say\n\
             what an import of this file would do (result column: would-create, would-update,\n\
             would-deactivate, unchanged, error).\n\n",
        );
    }
    b.push_str(&format!(
        "The user import for {} has run.\n\n\
         Acting as:   {}\n\
         File:        {} ({} bytes, SHA1 {})\n\
         Job:         {}\n\n",
        ctx.tenant.portal_domain,
        ctx.tenant.admin.username,
        ctx.source,
        ctx.size,
        ctx.sha1,
        ctx.job_id,
    ));
    for (label, n, note) in count_rows(ctx) {
        let label = format!("{label}:");
        if note.is_empty() {
            b.push_str(&format!("{label:<13}{n}\n"));
        } else {
            b.push_str(&format!("{label:<13}{n} ({note})\n"));
        }
    }
    b.push('\n');
    if !ctx.summary.unknown_columns.is_empty() {
        b.push_str(&format!(
            "Columns not recognised (ignored): {}\n\n",
            one_line(&ctx.summary.unknown_columns.join(", "), 2000)
        ));
    }
    if !ctx.summary.first_problems.is_empty() {
        b.push_str("Rows with problems (the first ones; every row is in the attached report):\n");
        for p in &ctx.summary.first_problems {
            b.push_str(&problem_line(p));
        }
        b.push('\n');
    }
    if let Some((path, rows)) = ctx.rejects {
        b.push_str(&rejects_note(path, rows, ctx.tenant.import.full_sync));
    }
    b.push_str(&format!(
        "The record-by-record report is attached and kept on your FTPS account as {}.\n\
         The progress log is /log/user-import.log.\n",
        ctx.report_path
    ));
    b
}

/// How to fix the rejected rows: the reject file, then one re-upload (not with full sync, which
/// would deactivate every managed user absent from so short a file).
fn rejects_note(path: &str, rows: u64, full_sync: bool) -> String {
    let head = format!(
        "To fix them: the {rows} rows that were invalid or failed are in {path},\n\
         in your file's own format (its header and delimiter). "
    );
    if full_sync {
        return format!(
            "{head}Your tenant uses full sync: do NOT\n\
             upload that file on its own (every user absent from it would be deactivated); correct\n\
             those rows in your full export and upload that.\n\n"
        );
    }
    format!(
        "{head}Correct those rows there (the\n\
         report says what is wrong with each) and upload that file as {UPLOAD_PATH}:\n\
         the next run imports them.\n\n"
    )
}

/// The HTML part: the same counts as a small table, the first problem rows, and where the report
/// is. Every value that comes from the file (usernames, messages, column names) is escaped.
pub fn html(ctx: &EmailContext<'_>) -> String {
    use crate::email::escape_html as e;
    let mut h = String::from(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>User import report</title></head>\n<body>\n",
    );
    if let Some(u) = ctx.undoing {
        h.push_str(&format!(
            "<p><strong>UNDO</strong> of the run of job {} ({}, file SHA1 {}).</p>\n",
            e(&u.job_id),
            e(&u.started_at),
            e(&u.sha1)
        ));
    }
    if ctx.summary.verify {
        h.push_str("<p><strong>VERIFY ONLY</strong>: this run changed nothing on the platform; the counts say what an import of this file would do.</p>\n");
    }
    h.push_str(&format!(
        "<p>The user import for {} has run, acting as {}.<br>File: {} ({} bytes, SHA1 {}). Job: {}.</p>\n",
        e(ctx.tenant.portal_domain.as_str()),
        e(&ctx.tenant.admin.username),
        e(ctx.source),
        ctx.size,
        ctx.sha1,
        e(ctx.job_id),
    ));
    h.push_str("<table id=\"counts\">\n");
    for (label, n, note) in count_rows(ctx) {
        let label = if note.is_empty() {
            label.to_owned()
        } else {
            format!("{label} ({note})")
        };
        h.push_str(&format!("<tr><th>{}</th><td>{n}</td></tr>\n", e(&label)));
    }
    h.push_str("</table>\n");
    if !ctx.summary.unknown_columns.is_empty() {
        h.push_str(&format!(
            "<p>Columns not recognised (ignored): {}</p>\n",
            e(&one_line(&ctx.summary.unknown_columns.join(", "), 2000))
        ));
    }
    let problems = &ctx.summary.first_problems;
    if !problems.is_empty() {
        h.push_str(&format!(
            "<p>Rows with problems (the first {} of them; every row is in the report):</p>\n\
             <table id=\"problems\">\n<tr><th>Line</th><th>Username</th><th>Result</th><th>Message</th></tr>\n",
            problems.len().min(HTML_PROBLEMS)
        ));
        for p in problems.iter().take(HTML_PROBLEMS) {
            h.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                p.line,
                e(&one_line(&p.username, 80)),
                p.status.as_str(),
                e(&one_line(&p.message, 300)),
            ));
        }
        h.push_str("</table>\n");
    }
    if let Some((path, rows)) = ctx.rejects {
        h.push_str(&format!(
            "<p>The {rows} rows that were invalid or failed are in <code>{}</code>, in your \
             file's own format: correct them there and upload it again.</p>\n",
            e(path)
        ));
    }
    h.push_str(&format!(
        "<p>The record-by-record report is attached and kept on your FTPS account as <code>{}</code>.<br>\
         The progress log is <code>/log/user-import.log</code>.</p>\n</body></html>\n",
        e(ctx.report_path)
    ));
    h
}

/// `text` on one line, at most `max` characters: a line break or other control character from the
/// file becomes a space, so a value cannot start a line of its own in the email.
fn one_line(text: &str, max: usize) -> String {
    text.chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn problem_line(p: &RowResult) -> String {
    format!(
        "  line {}: {} - {}: {}\n",
        p.line,
        one_line(&p.username, 80),
        p.status.as_str(),
        one_line(&p.message, 300)
    )
}

/// Sends the report email; `Err` carries why, and the caller records it in the log.
async fn email(job: &JobRun<'_>, ctx: &EmailContext<'_>) -> Result<(), String> {
    let size = tokio::fs::metadata(&ctx.summary.results_file)
        .await
        .map(|m| m.len())
        .map_err(|e| e.to_string())?;
    let mut text = body(ctx);
    let name = ctx
        .report_path
        .rsplit('/')
        .next()
        .and_then(|n| n.strip_suffix(".csv"))
        .unwrap_or("user-import-report");
    // Zipped (spreadsheets open it, and it is about a tenth of the CSV), built by streaming.
    let attachment =
        email::attachment_from_file(&ctx.summary.results_file, name, email::ZIP_ATTACHMENT_LIMIT)
            .await
            .map_err(|e| e.to_string())?;
    if attachment.is_none() {
        text.push_str(&format!(
            "\nThe report ({size} bytes) is too large to attach, even zipped; fetch it from {}.\n",
            ctx.report_path
        ));
    }
    job.email(Mail {
        subject: subject(ctx.tenant, ctx.summary, ctx.undoing),
        body: text,
        html: Some(html(ctx)),
        attachment,
    })
    .await
}

#[cfg(test)]
mod rejects_tests {
    use super::*;

    #[test]
    fn the_reject_file_sits_next_to_its_report_and_full_sync_is_warned_off_uploading_it() {
        let report = "/reports/user-import-20260101T000000Z-abcdef12.csv";
        let rejects = rejects_path_for(report);
        assert_eq!(
            rejects,
            "/reports/user-import-20260101T000000Z-abcdef12.rejects.csv"
        );
        let plain = rejects_note(&rejects, 3, false);
        assert!(
            plain.contains("upload that file as /uploads/user-import.csv"),
            "{plain}"
        );
        let synced = rejects_note(&rejects, 3, true);
        assert!(
            synced.contains("do NOT") && !synced.contains("upload that file as"),
            "{synced}"
        );
    }
}
