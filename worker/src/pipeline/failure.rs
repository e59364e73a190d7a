//! A run the fleet gives up on is told to the tenant's recipients (`notify`): a permanent failure
//! that is neither the file's (a refusal, told by [`super::refusal`]) nor a refused login (its
//! own alert, [`super::alerting`]), and a failure that is otherwise retried when this run was the
//! job's last attempt. Without it, a job dead-lettered after its retries, or failed on the
//! server's certificate, would leave the admin waiting for a report that never comes. At most
//! one such email a day per tenant and reason ([`crate::alerts::Alerts::failure_first_today`]).

use chrono::Utc;

use super::refusal;
use crate::job::{JobRun, Mail};
use crate::outcome::{JobError, Permanent, Retryable};

/// Emails the recipients when the fleet gives up on this run (see the module's header).
pub async fn tell_if_given_up(job: &JobRun<'_>, error: &JobError) {
    let Some(hint) = given_up(error, job.context().last_attempt) else {
        return;
    };
    let tenant = job.tenant();
    let reason = error.reason();
    if !job
        .alerts()
        .failure_first_today(tenant.name.as_str(), reason, Utc::now().date_naive())
        .await
    {
        job.log(format!(
            "the fleet gives up on this run ({reason}); the recipients were told today already"
        ));
        return;
    }
    let mail = Mail {
        subject: format!("[{}] User import FAILED: {reason}", tenant.name),
        body: body(job, error, hint),
        ..Mail::default()
    };
    job.log(match job.email(mail).await {
        Ok(()) => format!(
            "the fleet gives up on this run ({reason}): emailed {}",
            job.recipients()
        ),
        Err(e) => format!("the fleet gives up on this run ({reason}); the email failed: {e}"),
    });
}

/// What to tell the admin when the fleet gives up on a run that failed with `error`; `None`
/// when it does not give up, or when another message tells this failure.
pub fn given_up(error: &JobError, last_attempt: bool) -> Option<&'static str> {
    match error {
        JobError::Permanent(p) if refusal::is_refusal(p) => None,
        JobError::Permanent(Permanent::FtpsCredentials | Permanent::ApiCredentials(_)) => None,
        // Told by the time limit's own message (`super::time_limit`).
        JobError::Permanent(Permanent::JobTimeout(_)) => None,
        JobError::Permanent(p) => Some(permanent_hint(p)),
        JobError::Retryable(_) if !last_attempt => None,
        JobError::Retryable(r) => Some(retried_hint(r)),
    }
}

fn permanent_hint(p: &Permanent) -> &'static str {
    match p {
        Permanent::MissingKey(_) => {
            "The import service has no API key for your tenant, so it cannot log in anywhere.\n\
             Please ask support to add it; nothing was changed."
        }
        Permanent::FtpsCertificate(_) => {
            "The FTPS server's certificate was not trusted, so no file was fetched. If the\n\
             server's certificate changed, support has to update the authority the import trusts."
        }
        Permanent::HostKey(_) => {
            "The SFTP server's host key is not the one pinned for your tenant, so the connection\n\
             was refused (it could be another server). Support has to confirm the new key and pin it."
        }
        Permanent::ApiProtocol(_) => {
            "The platform API answered in a way the import does not understand, and the run\n\
             stopped there. Support has to look into it (the log names the request)."
        }
        _ => "Support has to look into it; the progress log says where the run stopped.",
    }
}

fn retried_hint(r: &Retryable) -> &'static str {
    match r {
        Retryable::Ftps(_) => {
            "The FTPS/SFTP server could not be reached, or broke off, on every try."
        }
        Retryable::Api(_) => "The platform API was unavailable (errors or time-outs) on every try.",
        Retryable::Cancelled => {
            "The run was stopped before it could finish (it ran past its time limit or was\n\
             interrupted) on every try."
        }
        Retryable::Io(_) | Retryable::Store(_) | Retryable::WorkerFault(_) => {
            "The import service itself had a fault on every try; its operators are alerted by\n\
             their monitoring."
        }
    }
}

fn body(job: &JobRun<'_>, error: &JobError, hint: &str) -> String {
    format!(
        "The user import for {domain} could not be completed, and the import service has\n\
         stopped trying this run.\n\n\
         Reason: {reason}: {error}\n\
         Job:    {job_id}\n\n\
         {hint}\n\n\
         What was done before the failure is in the progress log /log/user-import.log; the rest\n\
         was not done. The file stays in /uploads: the next scheduled run tries again (a version\n\
         that was fully imported has its marker and is not imported twice).\n\n\
         This alert is sent at most once a day for the same reason.\n",
        domain = job.tenant().portal_domain,
        reason = error.reason(),
        job_id = job.context().job_id,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fleet_gives_up_on_permanent_failures_and_on_a_last_retry_only() {
        let cert = JobError::Permanent(Permanent::FtpsCertificate("unknown issuer".into()));
        assert!(given_up(&cert, false).is_some());
        let api = JobError::Retryable(Retryable::Api("503".into()));
        assert!(given_up(&api, false).is_none(), "retried: not yet");
        assert!(given_up(&api, true).is_some(), "the last attempt");
        // Told by their own messages: the file's refusal, the login alerts.
        let refused = JobError::Permanent(Permanent::UnreadableFile("empty".into()));
        assert!(given_up(&refused, true).is_none());
        assert!(given_up(&JobError::Permanent(Permanent::FtpsCredentials), true).is_none());
        assert!(given_up(&JobError::Permanent(Permanent::ApiCredentials(401)), true).is_none());
    }
}
