//! Stage report: the per-record results CSV goes to `/reports/` (one file per processed version,
//! named with the time and the short hash), the nominated admin gets an email with the counts in
//! the subject and the results attached, and then — only then — the `/tmp` marker is written. A
//! confirmed file's confirmation and a used full-push flag are removed last.

use chrono::{DateTime, Utc};
use shared::Sha1Digest;
use shared::registry::Tenant;

use super::{Step, guard, hash};
use crate::email;
use crate::import::ImportSummary;
use crate::import::apply::RowResult;
use crate::job::{JobRun, Mail};
use crate::layout::{CONFIRM_PATH, FULL_FLAG_PATH, REPORTS_DIR};
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
    let report_path = report_path_for(job.record.started_at, &sha1, plan.dry_run);
    job.mkdir(REPORTS_DIR).await?;
    job.put_file(&report_path, &summary.results_file).await?;
    job.log(format!("report written: {report_path}"));
    let ctx = EmailContext {
        tenant: job.tenant(),
        summary,
        sha1: &sha1,
        source: plan.source,
        size: file.size,
        report_path: &report_path,
        job_id: &job.context().job_id.to_string(),
    };
    let email_sent = match email(job, &ctx).await {
        Ok(()) => {
            job.log(format!(
                "report emailed to the nominated admin ({})",
                job.tenant().admin.username
            ));
            true
        }
        Err(why) => {
            // The import is done and its report is on the account: record, do not redo.
            job.log(format!("the report email could not be sent: {why}"));
            false
        }
    };
    tracing::Span::current().record("email_sent", email_sent);
    hash::write_marker(job, &sha1, plan.dry_run).await?;
    job.log(format!(
        "marker written: /tmp/{}",
        hash::marker_name(&sha1, plan.dry_run)
    ));
    if plan.confirmed {
        job.log(match guard::clear(job, &sha1).await {
            Ok(()) => format!("confirmation used: {CONFIRM_PATH} and the held marker removed"),
            Err(e) => format!("the confirmation could not be removed: {e}"),
        });
    }
    if plan.force_full {
        job.log(match job.remove(FULL_FLAG_PATH).await {
            Ok(()) => format!("full re-push done: {FULL_FLAG_PATH} removed"),
            Err(e) => format!("{FULL_FLAG_PATH} could not be removed: {e}"),
        });
    }
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

/// The subject: tenant, outcome and counts, readable in an inbox list.
pub fn subject(tenant: &Tenant, summary: &ImportSummary) -> String {
    let c = &summary.counts;
    let problems = c.invalid + c.failed + c.unconfirmed;
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
    pub job_id: &'a str,
}

pub fn body(ctx: &EmailContext<'_>) -> String {
    let c = &ctx.summary.counts;
    let mut b = String::new();
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
         Job:         {}\n\n\
         Rows:        {}\n\
         Created:     {}\n\
         Updated:     {}\n\
         Unchanged:   {}\n\
         Invalid:     {}\n\
         Failed:      {}\n\
         Unconfirmed: {}\n",
        ctx.tenant.portal_domain,
        ctx.tenant.admin.username,
        ctx.source,
        ctx.size,
        ctx.sha1,
        ctx.job_id,
        c.rows,
        c.created,
        c.updated,
        c.unchanged,
        c.invalid,
        c.failed,
        c.unconfirmed,
    ));
    // Only the lines that say something for this tenant: a count of full-sync deactivations
    // when full sync is on, and Account-state deactivations when there were any.
    if c.deactivated_by_state > 0 {
        b.push_str(&format!(
            "Deactivated: {} (by the file's Account state column)\n",
            c.deactivated_by_state
        ));
    }
    if ctx.tenant.import.full_sync {
        b.push_str(&format!(
            "Deactivated: {} (full sync: absent from the file)\n",
            c.deactivated
        ));
    }
    b.push('\n');
    if !ctx.summary.unknown_columns.is_empty() {
        b.push_str(&format!(
            "Columns not recognised (ignored): {}\n\n",
            ctx.summary.unknown_columns.join(", ")
        ));
    }
    if !ctx.summary.first_problems.is_empty() {
        b.push_str("Rows with problems (the first ones; every row is in the attached report):\n");
        for p in &ctx.summary.first_problems {
            b.push_str(&problem_line(p));
        }
        b.push('\n');
    }
    b.push_str(&format!(
        "The record-by-record report is attached and kept on your FTPS account as {}.\n\
         The progress log is /log/user-import.log.\n",
        ctx.report_path
    ));
    b
}

fn problem_line(p: &RowResult) -> String {
    format!(
        "  line {}: {} - {}: {}\n",
        p.line,
        p.username.chars().take(80).collect::<String>(),
        p.status.as_str(),
        p.message.chars().take(300).collect::<String>()
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
        subject: subject(ctx.tenant, ctx.summary),
        body: text,
        attachment,
    })
    .await
}
