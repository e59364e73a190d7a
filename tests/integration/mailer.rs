//! `worker::email::Mailer` over STARTTLS and over TLS from the first byte, against a relay in the
//! test that verifies nothing but speaks real SMTP and TLS (the test CA's certificate, checked by
//! the mailer): the report attachment, read from its file part by part while sending, arrives
//! byte for byte; a body line that starts with a dot survives the SMTP dot-stuffing.

use std::io::Write;
use std::sync::Arc;

use harness::servers::smtp_relay::{Seen, relay, settings};
use shared::settings::SmtpTls;
use worker::email::{Content, Mail, MailAttachment, Mailer};

/// 300 KiB of varied bytes in an unlinked file: several of the parts the mailer sends.
fn attachment_file() -> (Vec<u8>, MailAttachment) {
    let bytes: Vec<u8> = (0..300 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut file = tempfile::tempfile().unwrap_or_else(|e| panic!("{e}"));
    file.write_all(&bytes).unwrap_or_else(|e| panic!("{e}"));
    let attachment = MailAttachment {
        filename: "user-import-report.zip".into(),
        content_type: "application/zip",
        content: Content::File(Arc::new(file), bytes.len() as u64),
    };
    (bytes, attachment)
}

async fn send_over(tls: SmtpTls, implicit: bool) -> Seen {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let certs = harness::servers::certs::generate(dir.path());
    let (port, relay) = relay(&certs, implicit);
    let mailer = Mailer::from_settings(&settings(port, tls, &certs.ca_file))
        .unwrap_or_else(|e| panic!("{e}"));
    let (bytes, attachment) = attachment_file();
    let to = shared::EmailAddress::parse("admin@acme.example").unwrap_or_else(|e| panic!("{e}"));
    let delivery = mailer
        .send(
            &[to],
            Mail {
                subject: "[acme] User import: 3 rows".into(),
                body: "Counts below.\n.a line that starts with a dot\n..and two\n".into(),
                html: Some("<p>Counts</p>".into()),
                attachment: Some(attachment),
            },
            1,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(delivery.delivered, vec!["admin@acme.example".to_owned()]);
    let seen = relay.join().unwrap_or_default();
    let mail = harness::servers::smtp::parse(&seen.data);
    assert_eq!(mail.subject, "[acme] User import: 3 rows");
    assert_eq!(
        mail.attachments,
        vec![("user-import-report.zip".to_owned(), bytes)],
        "the attachment arrives byte for byte"
    );
    assert_eq!(
        mail.body_text.replace("\r\n", "\n"),
        "Counts below.\n.a line that starts with a dot\n..and two\n"
    );
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_with_its_attachment_goes_out_over_starttls_byte_for_byte() {
    let seen = send_over(SmtpTls::Starttls, false).await;
    assert_eq!(seen.commands[1], "plain: STARTTLS", "{:?}", seen.commands);
    let after: Vec<&str> = seen.commands[2..].iter().map(String::as_str).collect();
    assert!(after[0].starts_with("EHLO "), "{after:?}");
    assert_eq!(
        after[1..],
        [
            "MAIL FROM:<ui@fleet.example.com>",
            "RCPT TO:<admin@acme.example>",
            "DATA",
            "QUIT"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_with_its_attachment_goes_out_over_tls_from_the_first_byte() {
    let seen = send_over(SmtpTls::Tls, true).await;
    assert!(seen.commands[0].starts_with("EHLO "), "{:?}", seen.commands);
    assert!(seen.commands.iter().all(|c| !c.starts_with("plain:")));
    assert_eq!(seen.commands.last().map(String::as_str), Some("QUIT"));
}
