//! Report emails to the tenant's recipients (`notify`, the nominated admin by default), over SMTP with STARTTLS, implicit TLS, or (for a
//! local sink only) none. The transport and its connection pool are built once at start-up.
//!
//! The report attachment is a zipped CSV ([`attachment_from_file`]): the results file is streamed
//! into a zip on disk (deflate, about a tenth of the CSV), and only that is read into memory —
//! lettre builds whole messages in memory, so the attachment's size is what the email costs.
//! Above [`ZIP_ATTACHMENT_LIMIT`] (compressed) nothing is attached; the report stays on the
//! tenant's account.

use std::io::{BufReader, Read, Seek};
use std::path::{Path, PathBuf};
use std::time::Duration;

use lettre::address::Envelope;
use lettre::message::header::ContentTransferEncoding;
use lettre::message::header::ContentType;
use lettre::message::{Attachment, Body, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
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

/// The largest zipped report attached to an email, in bytes: 4 MiB. The message is sent from
/// memory: the zip, then the formatted message with the zip base64-encoded into it (about 2.4×
/// the zip at the peak, see [`Mailer::send`]): up to ~10 MiB on top of an import's ~26 MiB at
/// concurrency 8, which is over the 32 MiB budget for a zip near this limit (BENCHMARKS.md,
/// "Peak RSS of whole imports"). A results CSV compresses about eightfold, so this covers some
/// 800 k rows of a typical report; a larger report is only on the tenant's account.
pub const ZIP_ATTACHMENT_LIMIT: u64 = 4 * 1024 * 1024;

/// The CSV at `path` as a zip attachment named `<name>.zip` holding `<name>.csv` (`name` without
/// an extension), or `None` when the zip is larger than `limit` bytes. The zip is written to a
/// temporary file beside `path` by streaming (memory stays at the compressor's few hundred KiB
/// whatever the CSV's size); only a zip within the limit is read into memory.
pub async fn attachment_from_file(
    path: &Path,
    name: &str,
    limit: u64,
) -> Result<Option<MailAttachment>, MailError> {
    let (path, name) = (path.to_owned(), name.to_owned());
    tokio::task::spawn_blocking(move || zip_csv(&path, &name, limit))
        .await
        .map_err(|e| MailError::Attachment(e.to_string()))?
        .map_err(|e| MailError::Attachment(e.to_string()))
}

fn zip_csv(path: &PathBuf, name: &str, limit: u64) -> std::io::Result<Option<MailAttachment>> {
    let name = name.trim_end_matches(".csv").trim_end_matches(".zip");
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut zip = zip::ZipWriter::new(tempfile::tempfile_in(dir)?);
    let size = std::fs::metadata(path)?.len();
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .large_file(size >= u64::from(u32::MAX));
    zip.start_file(format!("{name}.csv"), options)
        .map_err(std::io::Error::other)?;
    let mut csv = BufReader::with_capacity(64 * 1024, std::fs::File::open(path)?);
    std::io::copy(&mut csv, &mut zip)?;
    let mut file = zip.finish().map_err(std::io::Error::other)?;
    let zipped = file.stream_position()?;
    if zipped > limit {
        return Ok(None);
    }
    file.rewind()?;
    let mut bytes = Vec::with_capacity(zipped as usize);
    file.read_to_end(&mut bytes)?;
    Ok(Some(MailAttachment {
        filename: format!("{name}.zip"),
        content_type: "application/zip",
        bytes,
    }))
}

#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("from", &self.from.to_string())
            .finish()
    }
}

/// An attachment's placeholder in the formatted message, and the bytes that replace it.
type Spliced = (Vec<u8>, Vec<u8>);

/// 45 bytes no message would hold by chance: base64-encoded, one line of 60 characters.
fn placeholder() -> Vec<u8> {
    format!(
        "user-import-attachment-{:022x}",
        rand::random::<u128>() >> 40
    )
    .into_bytes()
}

/// `raw` with the base64 line of `placeholder` replaced by `bytes` in base64, in lines of 76
/// characters (RFC 2045) separated by CRLF, written into one buffer of the final size.
fn splice_base64(raw: Vec<u8>, placeholder: &[u8], bytes: &[u8]) -> Result<Vec<u8>, MailError> {
    use base64::Engine;
    let marker = base64::engine::general_purpose::STANDARD.encode(placeholder);
    let at = raw
        .windows(marker.len())
        .position(|w| w == marker.as_bytes())
        .ok_or_else(|| {
            MailError::Build("the attachment placeholder is not in the message".into())
        })?;
    let encoded_len = bytes.len().div_ceil(3) * 4;
    let lines = encoded_len.div_ceil(76);
    let mut out = Vec::with_capacity(raw.len() - marker.len() + encoded_len + 2 * lines);
    out.extend_from_slice(&raw[..at]);
    // 57 input bytes make one 76-character line.
    for (i, chunk) in bytes.chunks(57).enumerate() {
        if i > 0 {
            out.extend_from_slice(b"\r\n");
        }
        let mut line = [0u8; 76];
        let n = base64::engine::general_purpose::STANDARD
            .encode_slice(chunk, &mut line)
            .map_err(|e| MailError::Build(e.to_string()))?;
        out.extend_from_slice(&line[..n]);
    }
    out.extend_from_slice(&raw[at + marker.len()..]);
    Ok(out)
}

/// A file attached to a message.
#[derive(Debug, Clone)]
pub struct MailAttachment {
    pub filename: String,
    pub content_type: &'static str,
    pub bytes: Vec<u8>,
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
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(s.host.as_str())
            .port(s.port)
            .tls(tls)
            .timeout(Some(s.timeout));
        if let (Some(user), Some(pw)) = (&s.username, s.password.expose()) {
            builder = builder.credentials(Credentials::new(user.clone(), pw.to_owned()));
        }
        Ok(Self {
            transport: builder.build(),
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
        // The attachment's bytes go into the formatted message once, base64-encoded in place of a
        // placeholder, instead of lettre encoding them into the message's body and then copying
        // that into the formatted message. One copy of the message in memory while sending (with
        // the zip itself), not one per attempt or recipient.
        let (message, attachment) = self.build(&recipients, mail)?;
        let raw = match attachment {
            Some((placeholder, bytes)) => splice_base64(message.formatted(), &placeholder, &bytes)?,
            None => message.formatted(),
        };
        drop(message);
        let mut delivery = Delivery::default();
        for to in recipients {
            let envelope = Envelope::new(self.from.email.clone().into(), vec![to.clone()])
                .map_err(|e| MailError::Build(e.to_string()))?;
            match self.send_raw(&envelope, &raw, attempts).await {
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
    /// — as a base64 placeholder, returned with the attachment's bytes for [`splice_base64`].
    fn build(&self, to: &[Address], mail: Mail) -> Result<(Message, Option<Spliced>), MailError> {
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
                spliced = Some((placeholder, a.bytes));
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

    /// One envelope, tried `attempts` times; a permanent refusal (5xx) is not tried again.
    async fn send_raw(&self, envelope: &Envelope, raw: &[u8], attempts: u32) -> Result<(), String> {
        let mut last = String::new();
        for attempt in 1..=attempts.max(1) {
            match self.transport.send_raw(envelope, raw).await {
                Ok(_) => return Ok(()),
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
        assert!(
            a.bytes.len() * 5 < original.len(),
            "compressed {} of {}",
            a.bytes.len(),
            original.len()
        );
        let mut archive =
            zip::ZipArchive::new(std::io::Cursor::new(a.bytes)).unwrap_or_else(|e| panic!("{e}"));
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

    #[test]
    fn the_attachment_is_base64_encoded_in_place_of_its_placeholder_in_lines_of_76() {
        use base64::Engine;
        let placeholder = placeholder();
        assert_eq!(placeholder.len(), 45, "one base64 line of 60");
        let marker = base64::engine::general_purpose::STANDARD.encode(&placeholder);
        let raw = format!("Subject: x\r\n\r\n--b\r\n{marker}\r\n--b--\r\n").into_bytes();
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let out = splice_base64(raw, &placeholder, &bytes).unwrap_or_else(|e| panic!("{e}"));
        let text = String::from_utf8(out).unwrap_or_else(|e| panic!("{e}"));
        let body = text
            .strip_prefix("Subject: x\r\n\r\n--b\r\n")
            .and_then(|t| t.strip_suffix("\r\n--b--\r\n"))
            .unwrap_or_else(|| panic!("the rest of the message is kept: {text}"));
        let lines: Vec<&str> = body.split("\r\n").collect();
        assert!(lines.iter().all(|l| l.len() <= 76), "RFC 2045 line length");
        assert_eq!(lines.len(), 10_000usize.div_ceil(57));
        let back = base64::engine::general_purpose::STANDARD
            .decode(lines.concat())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, bytes);
        // A message without the placeholder is an error, not a message without its attachment.
        assert!(splice_base64(b"no marker".to_vec(), &placeholder, &bytes).is_err());
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
