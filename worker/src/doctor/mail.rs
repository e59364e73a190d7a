//! The `smtp` step: the relay of `[smtp]` reachable and accepting the nominated admin's address
//! (the dialogue of [`super::smtp`], no message), and with `--send-test-email` one test email
//! through the mailer the reports use.

use serde_json::json;
use shared::registry::Tenant;

use super::smtp::{SmtpError, probe_recipient};
use super::{Options, Step};
use crate::deps::Deps;

pub async fn check(deps: &Deps, tenant: &Tenant, opts: Options) -> Step {
    let smtp = &deps.settings.smtp;
    let to = tenant.admin.email.as_str();
    let relay = format!("{}:{}", smtp.host, smtp.port);
    let accepted = match probe_recipient(smtp, to).await {
        Ok(a) => a,
        Err(e) => return failed(&relay, to, &e),
    };
    let data = json!({
        "relay": relay,
        "to": to,
        "tls": accepted.tls,
        "authenticated": accepted.authenticated,
        "rcpt": accepted.rcpt,
        "test_email_sent": opts.send_test_email,
    });
    let how = match (accepted.tls, accepted.authenticated) {
        (true, true) => "over TLS, authenticated",
        (true, false) => "over TLS",
        (false, true) => "without TLS, authenticated",
        (false, false) => "without TLS",
    };
    let mut detail = format!("{relay} accepts {to} ({how}; RCPT TO: {})", accepted.rcpt);
    if opts.send_test_email {
        let body = format!(
            "This is a test email from the user import's onboarding check (worker doctor) for \
             tenant {}. Import reports will come to this address.\n",
            tenant.name
        );
        let subject = format!("User import: test email for {}", tenant.name);
        if let Err(e) = deps
            .mailer
            .send(
                &tenant.notify,
                crate::email::Mail {
                    subject,
                    body,
                    ..crate::email::Mail::default()
                },
                1,
            )
            .await
        {
            return Step::fail(
                "smtp",
                format!("{detail}, but the test email was not sent: {e}"),
                "the relay took the address but not the message: its size or content rules, \
                 or smtp.from",
            )
            .with_data(data);
        }
        detail.push_str("; test email sent");
    } else {
        detail.push_str("; no email sent");
    }
    Step::ok("smtp", detail).with_data(data)
}

fn failed(relay: &str, to: &str, e: &SmtpError) -> Step {
    let hint = match e {
        SmtpError::Connect { .. } | SmtpError::Timeout(_) | SmtpError::Io(_) => {
            "check smtp.host and smtp.port, that the relay is up, and our egress to it"
        }
        SmtpError::Tls { .. } => {
            "check smtp.tls (starttls on 587, tls on 465) and smtp.ca_file: the relay's \
             certificate must chain to it (or to the Mozilla roots) and name smtp.host"
        }
        SmtpError::Refused {
            command: "RCPT TO", ..
        } => {
            "the relay refuses the admin's address: check admin.email in the registry, and the \
             relay's allow-list of recipient domains"
        }
        SmtpError::Refused {
            command: "MAIL FROM" | "AUTH",
            ..
        } => {
            "the relay refuses us as sender: smtp.from, smtp.username / smtp.password, the \
             relay's allow-list of our addresses"
        }
        _ => "check the [smtp] settings against what the relay expects",
    };
    Step::fail("smtp", format!("{relay}, to {to}: {e}"), hint)
}
