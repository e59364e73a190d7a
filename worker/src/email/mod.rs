//! Report emails to the tenant's recipients (`notify`, the nominated admin by default), over SMTP with STARTTLS, implicit TLS, or (for a
//! local sink only) none. lettre builds the message (headers, text and HTML parts, MIME
//! structure) and speaks SMTP; each delivery is its own connection (greeting, EHLO, STARTTLS,
//! AUTH, MAIL, RCPT, DATA, QUIT).
//!
//! The report attachment is a zipped CSV ([`attachment_from_file`]): the results file is streamed
//! into a zip on disk (deflate, about a tenth of the CSV). The message is formatted with a
//! placeholder where the attachment's body goes, and sent in parts: the bytes before it, the zip
//! read from its file and base64-encoded ~78 KiB at a time, the bytes after it. What an email
//! costs in memory is one part, whatever the attachment's size. Above [`ZIP_ATTACHMENT_LIMIT`]
//! (compressed) nothing is attached; the report stays on the tenant's account.

mod attachment;

use std::borrow::Cow;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use lettre::message::header::ContentTransferEncoding;
use lettre::message::header::ContentType;
use lettre::message::{Attachment, Body, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::Error as SmtpError;
use lettre::transport::smtp::authentication::{Credentials, DEFAULT_MECHANISMS};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, Tls, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail as MailFrom, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use lettre::{Address, Message};

use attachment::Base64Parts;
pub use attachment::{Content, MailAttachment};
use shared::EmailAddress;
use shared::settings::{SmtpSettings, SmtpTls};

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("cannot build the message: {0}")]
    Build(String),
    #[error("SMTP: {0}")]
    Send(String),
    #[error("cannot build the attachment: {0}")]
    Attachment(String),
}

/// The largest zipped report attached to an email, in bytes: 4 MiB (about 5.5 MB once
/// base64-encoded). Not a memory bound (the message is sent from the zip's file part by part,
/// see [`Mailer::send`]) but what mail relays and inboxes commonly take. A results CSV
/// compresses about eightfold, so this covers some 800 k rows of a typical report; a larger
/// report is only on the tenant's account.
pub const ZIP_ATTACHMENT_LIMIT: u64 = 4 * 1024 * 1024;

/// The CSV at `path` as a zip attachment named `<name>.zip` holding `<name>.csv` (`name` without
/// an extension), or `None` when the zip is larger than `limit` bytes. The zip is written to an
/// unlinked temporary file beside `path` by streaming and read from there while the message is
/// sent: neither the zip nor the message is ever whole in memory.
pub async fn attachment_from_file(
    path: &Path,
    name: &str,
    limit: u64,
) -> Result<Option<MailAttachment>, MailError> {
    let (path, name) = (path.to_owned(), name.to_owned());
    tokio::task::spawn_blocking(move || attachment::zip_csv(&path, &name, limit))
        .await
        .map_err(|e| MailError::Attachment(e.to_string()))?
        .map_err(|e| MailError::Attachment(e.to_string()))
}

#[derive(Clone)]
pub struct Mailer {
    host: String,
    port: u16,
    tls: Tls,
    credentials: Option<Credentials>,
    /// Bounds the connection and every read and write on it.
    timeout: Duration,
    hello: ClientId,
    from: Mailbox,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("from", &self.from.to_string())
            .finish()
    }
}

/// An attachment's placeholder in the formatted message, and the content that goes there.
type Placed = (Vec<u8>, Content);

/// 45 bytes no message would hold by chance: base64-encoded, one line of 60 characters.
fn placeholder() -> Vec<u8> {
    format!(
        "user-import-attachment-{:022x}",
        rand::random::<u128>() >> 40
    )
    .into_bytes()
}

/// A formatted message as it goes out: the bytes before the attachment's body, the attachment
/// (base64-encoded on the way), the bytes after it.
#[derive(Debug)]
struct Outgoing {
    head: Vec<u8>,
    attachment: Option<Content>,
    tail: Vec<u8>,
}

impl Outgoing {
    /// `raw` cut around the base64 line of `placeholder`, where `content` goes.
    fn around(raw: Vec<u8>, placeholder: &[u8], content: Content) -> Result<Self, MailError> {
        use base64::Engine;
        let marker = base64::engine::general_purpose::STANDARD.encode(placeholder);
        let at = raw
            .windows(marker.len())
            .position(|w| w == marker.as_bytes())
            .ok_or_else(|| {
                MailError::Build("the attachment placeholder is not in the message".into())
            })?;
        Ok(Self {
            tail: raw[at + marker.len()..].to_vec(),
            head: raw[..at].to_vec(),
            attachment: Some(content),
        })
    }

    /// The message's parts in order; a read error of the attachment is left in `failed`.
    fn parts<'a>(
        &'a self,
        failed: &'a Mutex<Option<std::io::Error>>,
    ) -> impl Iterator<Item = Cow<'a, [u8]>> + Send + 'a {
        let body = self
            .attachment
            .iter()
            .flat_map(move |c| Base64Parts::new(c, failed).map(Cow::Owned));
        std::iter::once(Cow::Borrowed(self.head.as_slice()))
            .chain(body)
            .chain(std::iter::once(Cow::Borrowed(self.tail.as_slice())))
    }

    fn is_ascii(&self) -> bool {
        self.head.is_ascii() && self.tail.is_ascii()
    }

    /// Its size as sent, the attachment base64-encoded.
    fn len(&self) -> u64 {
        let body = self.attachment.as_ref().map_or(0, |c| {
            let encoded = c.len().div_ceil(3) * 4;
            encoded + 2 * encoded.div_ceil(76).saturating_sub(1)
        });
        self.head.len() as u64 + body + self.tail.len() as u64
    }
}

impl Mailer {
    pub fn from_settings(s: &SmtpSettings) -> anyhow::Result<Self> {
        let from: Mailbox = s
            .from
            .parse()
            .map_err(|e| anyhow::anyhow!("smtp.from {:?}: {e}", s.from))?;
        let tls_params = || -> anyhow::Result<TlsParameters> {
            let mut b = TlsParameters::builder(s.host.clone());
            if let Some(ca) = &s.ca_file {
                let pem = std::fs::read(ca)
                    .map_err(|e| anyhow::anyhow!("smtp.ca_file {}: {e}", ca.display()))?;
                b = b.add_root_certificate(
                    Certificate::from_pem(&pem)
                        .map_err(|e| anyhow::anyhow!("smtp.ca_file {}: {e}", ca.display()))?,
                );
            }
            Ok(b.build_rustls()?)
        };
        let tls = match s.tls {
            SmtpTls::Starttls => Tls::Required(tls_params()?),
            SmtpTls::Tls => Tls::Wrapper(tls_params()?),
            SmtpTls::None => Tls::None,
        };
        let credentials = match (&s.username, s.password.expose()) {
            (Some(user), Some(pw)) => Some(Credentials::new(user.clone(), pw.to_owned())),
            _ => None,
        };
        Ok(Self {
            host: s.host.clone(),
            port: s.port,
            tls,
            credentials,
            timeout: s.timeout,
            hello: ClientId::default(),
            from,
        })
    }

    /// Sends one message to every recipient (all named in its `To` header, each its own SMTP
    /// envelope so that one refused address does not keep the others from getting it); tries each
    /// `attempts` times with a growing pause between tries. `Err` when nobody got it.
    pub async fn send(
        &self,
        to: &[EmailAddress],
        mail: Mail,
        attempts: u32,
    ) -> Result<Delivery, MailError> {
        let recipients = to
            .iter()
            .map(|a| {
                a.as_str()
                    .parse::<Address>()
                    .map_err(|e| MailError::Build(format!("recipient: {e}")))
            })
            .collect::<Result<Vec<Address>, MailError>>()?;
        if recipients.is_empty() {
            return Err(MailError::Build("no recipient".into()));
        }
        // The message is formatted with a placeholder for the attachment's body, which is
        // base64-encoded from the attachment's file part by part while sending: the message is
        // never whole in memory, whatever the attachment's size.
        let (message, attachment) = self.build(&recipients, mail)?;
        let raw = message.formatted();
        drop(message);
        let message = match attachment {
            Some((placeholder, content)) => Outgoing::around(raw, &placeholder, content)?,
            None => Outgoing {
                head: raw,
                attachment: None,
                tail: Vec::new(),
            },
        };
        let mut delivery = Delivery::default();
        for to in recipients {
            match self.send_to(&to, &message, attempts).await {
                Ok(()) => delivery.delivered.push(to.to_string()),
                Err(why) => delivery.failed.push((to.to_string(), why)),
            }
        }
        if delivery.delivered.is_empty() {
            let why: Vec<String> = delivery
                .failed
                .iter()
                .map(|(to, why)| format!("{to}: {why}"))
                .collect();
            return Err(MailError::Send(why.join("; ")));
        }
        Ok(delivery)
    }

    /// The message: the text (and, when there is one, its HTML alternative), then the attachment
    /// — as a base64 placeholder, returned with the attachment's content for [`Outgoing::around`].
    fn build(&self, to: &[Address], mail: Mail) -> Result<(Message, Option<Placed>), MailError> {
        // Subjects are built from counts and validated names, but never let a line break through.
        let subject: String = mail.subject.chars().filter(|c| !c.is_control()).collect();
        let mut builder = Message::builder().from(self.from.clone()).subject(subject);
        for address in to {
            builder = builder.to(Mailbox::new(None, address.clone()));
        }
        let text = SinglePart::builder()
            .header(ContentType::TEXT_PLAIN)
            .body(mail.body);
        let html = mail.html.map(|html| {
            SinglePart::builder()
                .header(ContentType::TEXT_HTML)
                .body(html)
        });
        let mut spliced = None;
        let attachment = match mail.attachment {
            Some(a) => {
                let ct = ContentType::parse(a.content_type)
                    .map_err(|e| MailError::Build(e.to_string()))?;
                let placeholder = placeholder();
                let body =
                    Body::new_with_encoding(placeholder.clone(), ContentTransferEncoding::Base64)
                        .map_err(|_| MailError::Build("the attachment placeholder".into()))?;
                spliced = Some((placeholder, a.content));
                Some(Attachment::new(a.filename).body(body, ct))
            }
            None => None,
        };
        let message = match (html, attachment) {
            (None, None) => builder.singlepart(text),
            (None, Some(a)) => builder.multipart(MultiPart::mixed().singlepart(text).singlepart(a)),
            (Some(html), None) => {
                builder.multipart(MultiPart::alternative().singlepart(text).singlepart(html))
            }
            (Some(html), Some(a)) => builder.multipart(
                MultiPart::mixed()
                    .multipart(MultiPart::alternative().singlepart(text).singlepart(html))
                    .singlepart(a),
            ),
        }
        .map_err(|e| MailError::Build(e.to_string()))?;
        Ok((message, spliced))
    }

    /// One recipient, tried `attempts` times; a permanent refusal (5xx) is not tried again.
    async fn send_to(&self, to: &Address, message: &Outgoing, attempts: u32) -> Result<(), String> {
        let mut last = String::new();
        for attempt in 1..=attempts.max(1) {
            match self.deliver(to, message).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    last = e.to_string();
                    if e.is_permanent() {
                        break;
                    }
                    if attempt < attempts {
                        tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
                    }
                }
            }
        }
        Err(last)
    }

    /// One delivery on a connection of its own, bounded as a whole by `smtp.timeout` per command
    /// and per MiB of message: greeting and EHLO, STARTTLS (or TLS from the first byte), AUTH,
    /// MAIL, RCPT, DATA with the message in parts, QUIT.
    async fn deliver(&self, to: &Address, message: &Outgoing) -> Result<(), DeliveryError> {
        let mib = u32::try_from(message.len() >> 20).unwrap_or(u32::MAX);
        let limit = self.timeout.saturating_mul(6u32.saturating_add(mib));
        tokio::time::timeout(limit, self.deliver_unbounded(to, message))
            .await
            .map_err(|_| DeliveryError::TimedOut(limit))?
    }

    async fn deliver_unbounded(
        &self,
        to: &Address,
        message: &Outgoing,
    ) -> Result<(), DeliveryError> {
        let wrapper = match &self.tls {
            Tls::Wrapper(p) => Some(p.clone()),
            _ => None,
        };
        let mut conn = AsyncSmtpConnection::connect_tokio1(
            (self.host.as_str(), self.port),
            Some(self.timeout),
            &self.hello,
            wrapper,
            None,
        )
        .await?;
        let failed = Mutex::new(None);
        let sent = self.transaction(&mut conn, to, message, &failed).await;
        match sent {
            Ok(()) => {
                let _ = conn.quit().await;
            }
            Err(_) => conn.abort().await,
        }
        sent?;
        match failed.lock().map(|mut slot| slot.take()) {
            Ok(None) => Ok(()),
            Ok(Some(e)) => Err(DeliveryError::Attachment(e.to_string())),
            Err(_) => Err(DeliveryError::Attachment("its reader panicked".into())),
        }
    }

    async fn transaction(
        &self,
        conn: &mut AsyncSmtpConnection,
        to: &Address,
        message: &Outgoing,
        failed: &Mutex<Option<std::io::Error>>,
    ) -> Result<(), SmtpError> {
        if let Tls::Required(p) = &self.tls {
            conn.starttls(p.clone(), &self.hello).await?;
        }
        if let Some(c) = &self.credentials {
            conn.auth(DEFAULT_MECHANISMS, c).await?;
        }
        // lettre encodes every body and header as 7-bit; 8BITMIME only for what is not.
        let mut params = Vec::new();
        if !message.is_ascii() && conn.server_info().supports_feature(Extension::EightBitMime) {
            params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        conn.command(MailFrom::new(Some(self.from.email.clone()), params))
            .await?;
        conn.command(Rcpt::new(to.clone(), vec![])).await?;
        conn.command(Data).await?;
        conn.message_iter(message.parts(failed)).await?;
        Ok(())
    }
}

/// Why one delivery failed.
#[derive(Debug, thiserror::Error)]
enum DeliveryError {
    #[error("{0}")]
    Smtp(#[from] SmtpError),
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    /// The relay may have taken a message whose attachment is cut short: not sent again.
    #[error("the attachment could not be read while sending ({0}): the message may be incomplete")]
    Attachment(String),
}

impl DeliveryError {
    fn is_permanent(&self) -> bool {
        match self {
            DeliveryError::Smtp(e) => e.is_permanent(),
            DeliveryError::TimedOut(_) => false,
            DeliveryError::Attachment(_) => true,
        }
    }
}

/// A message for the tenant's recipients: a plain-text body, and optionally an HTML alternative
/// of it and an attachment.
#[derive(Debug, Default)]
pub struct Mail {
    pub subject: String,
    pub body: String,
    /// The same content as HTML (every value from the file escaped), sent beside the text.
    pub html: Option<String>,
    pub attachment: Option<MailAttachment>,
}

/// Who got a message.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub delivered: Vec<String>,
    /// Recipients that did not get it, with why.
    pub failed: Vec<(String, String)>,
}

/// `text` with `&`, `<`, `>`, `"` and `'` escaped, for an HTML text node or attribute value.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::path::PathBuf;

    use super::*;

    fn results_csv(dir: &Path, rows: usize) -> PathBuf {
        let path = dir.join("results.csv");
        let mut text = String::from("line,username,action,result,message\r\n");
        for i in 0..rows {
            text.push_str(&format!("{},user.{i},create,created,\r\n", i + 2));
        }
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        path
    }

    #[tokio::test]
    async fn the_report_is_attached_as_a_zip_holding_the_csv() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let csv = results_csv(dir.path(), 50_000);
        let a = attachment_from_file(&csv, "user-import-20260101T000000Z-abc.csv", u64::MAX)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("within the limit"));
        assert_eq!(a.filename, "user-import-20260101T000000Z-abc.zip");
        assert_eq!(a.content_type, "application/zip");
        let original = std::fs::read(&csv).unwrap_or_else(|e| panic!("{e}"));
        let zipped = a.content.to_vec().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(zipped.len() as u64, a.content.len());
        assert!(
            zipped.len() * 5 < original.len(),
            "compressed {} of {}",
            zipped.len(),
            original.len()
        );
        let mut archive =
            zip::ZipArchive::new(std::io::Cursor::new(zipped)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(archive.len(), 1);
        let mut inner = archive.by_index(0).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            inner.name().map(|n| n.into_owned()).ok().as_deref(),
            Some("user-import-20260101T000000Z-abc.csv")
        );
        let mut back = Vec::new();
        inner
            .read_to_end(&mut back)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, original);
    }

    /// The message as sent: its parts concatenated.
    fn sent(message: &Outgoing, failed: &Mutex<Option<std::io::Error>>) -> Vec<u8> {
        message.parts(failed).flat_map(|p| p.into_owned()).collect()
    }

    #[test]
    fn the_attachment_is_base64_encoded_in_place_of_its_placeholder_in_lines_of_76() {
        use base64::Engine;
        let placeholder = placeholder();
        assert_eq!(placeholder.len(), 45, "one base64 line of 60");
        let marker = base64::engine::general_purpose::STANDARD.encode(&placeholder);
        let raw = format!("Subject: x\r\n\r\n--b\r\n{marker}\r\n--b--\r\n").into_bytes();
        // Larger than one part, not a whole number of lines: the parts' seams are tested too.
        let bytes: Vec<u8> = (0..200_001u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut file = tempfile::tempfile().unwrap_or_else(|e| panic!("{e}"));
        std::io::Write::write_all(&mut file, &bytes).unwrap_or_else(|e| panic!("{e}"));
        for content in [
            Content::Bytes(bytes.clone().into()),
            Content::File(std::sync::Arc::new(file), bytes.len() as u64),
        ] {
            let message = Outgoing::around(raw.clone(), &placeholder, content)
                .unwrap_or_else(|e| panic!("{e}"));
            let failed = Mutex::new(None);
            assert!(message.parts(&failed).count() > 3, "sent in parts");
            let out = sent(&message, &failed);
            assert_eq!(out.len() as u64, message.len());
            let text = String::from_utf8(out).unwrap_or_else(|e| panic!("{e}"));
            let body = text
                .strip_prefix("Subject: x\r\n\r\n--b\r\n")
                .and_then(|t| t.strip_suffix("\r\n--b--\r\n"))
                .unwrap_or_else(|| panic!("the rest of the message is kept"));
            let lines: Vec<&str> = body.split("\r\n").collect();
            assert!(lines.iter().all(|l| l.len() <= 76), "RFC 2045 line length");
            assert_eq!(lines.len(), bytes.len().div_ceil(57));
            let back = base64::engine::general_purpose::STANDARD
                .decode(lines.concat())
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(back, bytes);
            assert!(failed.lock().map(|f| f.is_none()).unwrap_or(false));
        }
        // A message without the placeholder is an error, not a message without its attachment.
        assert!(
            Outgoing::around(
                b"no marker".to_vec(),
                &placeholder,
                Content::Bytes(bytes.into())
            )
            .is_err()
        );
    }

    #[test]
    fn an_attachment_that_cannot_be_read_is_reported_not_sent_as_if_whole() {
        let placeholder = placeholder();
        let marker = {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(&placeholder)
        };
        let raw = format!("head\r\n{marker}\r\ntail").into_bytes();
        // The file is shorter than the length it is said to have.
        let mut file = tempfile::tempfile().unwrap_or_else(|e| panic!("{e}"));
        std::io::Write::write_all(&mut file, &[1u8; 1000]).unwrap_or_else(|e| panic!("{e}"));
        let message = Outgoing::around(
            raw,
            &placeholder,
            Content::File(std::sync::Arc::new(file), 500_000),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let failed = Mutex::new(None);
        let out = sent(&message, &failed);
        assert!((out.len() as u64) < message.len());
        let error = failed.lock().map(|mut f| f.take()).ok().flatten();
        assert!(error.is_some(), "the read error is kept for the sender");
    }

    #[tokio::test]
    async fn a_zip_over_the_limit_is_not_attached() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let csv = results_csv(dir.path(), 1000);
        let got = attachment_from_file(&csv, "r", 100)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(got.is_none());
        // The temporary zip is gone with it: only the CSV is left.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap_or_else(|e| panic!("{e}"))
            .collect();
        assert_eq!(left.len(), 1);
    }
}
