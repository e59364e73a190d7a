//! The job's own lines around the stages, and when the run alerts the tenant's recipients
//! (`notify`): a refused login (FTPS or API) after a run failed on it, a run stopped by its time
//! limit, a run the fleet gives up on ([`super::failure`]), and a quiet account after a run found
//! nothing new. What is sent and how it is de-duplicated is in [`crate::alerts`].

use chrono::Utc;

use crate::alerts::{self, LoginKind};
use crate::job::{JobRun, Mail};
use crate::outcome::{JobError, Outcome, Permanent};

/// The log's first line.
pub fn start_line(job: &JobRun<'_>) -> String {
    let (tenant, ctx) = (job.tenant(), job.context());
    format!(
        "start: tenant {} acting as {}, trigger {:?}{}",
        tenant.name,
        tenant.admin.username,
        ctx.trigger,
        ctx.fence
            .map(|f| format!(", lock fence {f}"))
            .unwrap_or_default()
    )
}

/// The alerts a finished run may call for.
pub async fn after(job: &JobRun<'_>, result: &Result<Outcome, JobError>) {
    match result {
        Err(JobError::Permanent(Permanent::JobTimeout(limit))) => {
            super::time_limit::tell(job, *limit).await
        }
        Err(e) => {
            login_refused(job, e).await;
            super::failure::tell_if_given_up(job, e).await;
        }
        Ok(
            Outcome::NoFile | Outcome::AlreadyProcessed { .. } | Outcome::UploadIncomplete { .. },
        ) => no_new_file(job).await,
        Ok(
            Outcome::Imported { .. }
            | Outcome::Verified { .. }
            | Outcome::Held { .. }
            | Outcome::DuplicateTick { .. }
            | Outcome::Superseded { .. },
        ) => {}
    }
}

/// Emails the admin when the FTPS server or the API refused the tenant's credentials (at most
/// once a day per kind).
async fn login_refused(job: &JobRun<'_>, error: &JobError) {
    let kind = match error {
        JobError::Permanent(Permanent::FtpsCredentials) => LoginKind::Ftps,
        JobError::Permanent(Permanent::ApiCredentials(code)) => LoginKind::Api(*code),
        _ => return,
    };
    let tenant = job.tenant();
    if !tenant.alerts.login_failures {
        return;
    }
    let today = Utc::now().date_naive();
    if !job
        .alerts()
        .login_first_today(tenant.name.as_str(), kind, today)
        .await
    {
        return;
    }
    let sent = job
        .email(Mail {
            subject: alerts::login_subject(tenant, kind),
            body: alerts::login_body(tenant, kind),
            ..Mail::default()
        })
        .await;
    job.log(match &sent {
        Ok(()) => format!("alert: login refused, emailed to {}", job.recipients()),
        Err(why) => format!("alert: login refused, but the alert email could not be sent: {why}"),
    });
}

/// Emails the admin when no new file has arrived for `alerts.no_file_days` (once per quiet spell).
async fn no_new_file(job: &JobRun<'_>) {
    let tenant = job.tenant();
    let days = tenant.alerts.no_file_days;
    if days == 0 {
        return;
    }
    let name = tenant.name.as_str();
    let last = match job.alerts().no_file_due(name, days, Utc::now()).await {
        Ok(Some(last)) => last,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(error = %e, "the no-file alert could not be judged");
            return;
        }
    };
    let sent = job
        .email(Mail {
            subject: alerts::no_file_subject(tenant, days),
            body: alerts::no_file_body(tenant, last, days),
            ..Mail::default()
        })
        .await;
    match sent {
        Ok(()) => job.log(format!(
            "alert: no new file for {days} days (last on {}), emailed to {}",
            last.format("%Y-%m-%d %H:%M UTC"),
            job.recipients()
        )),
        Err(why) => {
            job.log(format!(
                "alert: no new file for {days} days, but the alert email could not be sent: {why}"
            ));
            if let Err(e) = job.alerts().unsend(name).await {
                tracing::warn!(error = %e, "a failed no-file alert could not be reset");
            }
        }
    }
}
