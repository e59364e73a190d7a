//! When the pipeline alerts the nominated admin: a refused login (FTPS or API) after a run failed
//! on it, and a quiet account after a run found nothing new. What is sent and how it is
//! de-duplicated is in [`crate::alerts`].

use chrono::Utc;
use shared::registry::Tenant;

use super::Deps;
use super::log::TenantLog;
use crate::alerts::{self, LoginKind};
use crate::outcome::{JobError, Permanent};

/// Emails the admin when the FTPS server or the API refused the tenant's credentials (at most
/// once a day per kind).
pub async fn login_refused(
    deps: &Deps,
    tenant: &Tenant,
    error: &JobError,
    log: Option<&TenantLog>,
) {
    let kind = match error {
        JobError::Permanent(Permanent::FtpsCredentials) => LoginKind::Ftps,
        JobError::Permanent(Permanent::ApiCredentials(code)) => LoginKind::Api(*code),
        _ => return,
    };
    if !tenant.alerts.login_failures {
        return;
    }
    let today = Utc::now().date_naive();
    if !deps
        .alerts
        .login_first_today(tenant.name.as_str(), kind, today)
        .await
    {
        return;
    }
    let sent = alerts::send(
        &deps.mailer,
        tenant,
        &alerts::login_subject(tenant, kind),
        alerts::login_body(tenant, kind),
    )
    .await;
    let line = match &sent {
        Ok(()) => format!(
            "alert: login refused, emailed to the nominated admin ({})",
            tenant.admin.username
        ),
        Err(why) => format!("alert: login refused, but the alert email could not be sent: {why}"),
    };
    match log {
        Some(log) => log.line(line),
        None => tracing::warn!(alert_sent = sent.is_ok(), "{line}"),
    }
}

/// Emails the admin when no new file has arrived for `alerts.no_file_days` (once per quiet spell).
pub async fn no_new_file(deps: &Deps, tenant: &Tenant, log: &TenantLog) {
    let days = tenant.alerts.no_file_days;
    if days == 0 {
        return;
    }
    let name = tenant.name.as_str();
    let last = match deps.alerts.no_file_due(name, days, Utc::now()).await {
        Ok(Some(last)) => last,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(error = %e, "the no-file alert could not be judged");
            return;
        }
    };
    let sent = alerts::send(
        &deps.mailer,
        tenant,
        &alerts::no_file_subject(tenant, days),
        alerts::no_file_body(tenant, last, days),
    )
    .await;
    match sent {
        Ok(()) => log.line(format!(
            "alert: no new file for {days} days (last on {}), emailed to the nominated admin ({})",
            last.format("%Y-%m-%d %H:%M UTC"),
            tenant.admin.username
        )),
        Err(why) => {
            log.line(format!(
                "alert: no new file for {days} days, but the alert email could not be sent: {why}"
            ));
            if let Err(e) = deps.alerts.unsend(name).await {
                tracing::warn!(error = %e, "a failed no-file alert could not be reset");
            }
        }
    }
}
