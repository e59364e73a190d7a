//! The SMTP sink, one per test process: Debian's aiosmtpd storing every message in a Maildir,
//! and the parsed messages handed back to tests by recipient.
//!
//! Debian's `/usr/bin/python3` is used on purpose: it is the interpreter that sees the
//! `python3-aiosmtpd` package (a pyenv `python3` earlier on PATH does not). aiosmtpd's Mailbox
//! handler adds `X-MailFrom` and `X-RcptTo` headers with the SMTP envelope, which is how a
//! message is matched to the recipient a test waits for, Bcc included.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use mail_parser::{MessageParser, MimeHeaders};

use super::process::{self, Supervised};
use super::process_dir;

const PYTHON: &str = "/usr/bin/python3";

/// The SMTP sink of this test process (plain SMTP, no authentication).
#[derive(Debug)]
pub struct SmtpSink {
    /// Always "127.0.0.1".
    pub host: String,
    pub port: u16,
    /// The Maildir the sink writes to (messages land in `new/`).
    pub maildir: PathBuf,
    /// The sink's own output.
    pub log_file: PathBuf,
    _server: Supervised,
}

/// One received message.
#[derive(Debug, Clone)]
pub struct ReceivedMail {
    /// The message as stored (headers folded, bodies still transfer-encoded).
    pub raw: String,
    /// Top-level headers in order, names as written, values unfolded and trimmed (not decoded).
    pub headers: Vec<(String, String)>,
    /// The decoded `Subject`.
    pub subject: String,
    /// The addresses of the `To` header.
    pub to: Vec<String>,
    /// The address of the `From` header.
    pub from: String,
    /// The SMTP envelope recipients (`RCPT TO`), as recorded by the sink.
    pub envelope_to: Vec<String>,
    /// The decoded text/plain body (the first one; empty if there is none).
    pub body_text: String,
    /// The decoded text/html body (the first one; empty if there is none). Read it with
    /// [`html_tables`], not by searching the text.
    pub body_html: String,
    /// The MIME type of every part, depth first (`multipart/mixed`, `text/plain`, …).
    pub part_types: Vec<String>,
    /// Attachments: file name and decoded bytes.
    pub attachments: Vec<(String, Vec<u8>)>,
}

impl ReceivedMail {
    /// The first header of that name (case-insensitive), unfolded.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn is_for(&self, address: &str) -> bool {
        self.envelope_to
            .iter()
            .chain(&self.to)
            .any(|a| a.eq_ignore_ascii_case(address))
    }
}

/// The SMTP sink of this test process, started on first use.
pub async fn smtp() -> &'static SmtpSink {
    static SMTP: OnceLock<SmtpSink> = OnceLock::new();
    if let Some(sink) = SMTP.get() {
        return sink;
    }
    match tokio::task::spawn_blocking(|| SMTP.get_or_init(start)).await {
        Ok(sink) => sink,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("harness: the SMTP start-up task failed: {e}"),
        },
    }
}

fn start() -> SmtpSink {
    process::require_program(Path::new(PYTHON));
    let check = process::run(PYTHON, &["-c", "import aiosmtpd"], None);
    assert!(
        check.success(),
        "harness: {PYTHON} cannot import aiosmtpd: install the Debian package python3-aiosmtpd \
         (scripts/stack.sh up does it): {}",
        check.stderr.trim()
    );
    let dir = process_dir().join("smtp");
    process::public_dir(&dir);
    let maildir = dir.join("mail");
    // Python's mailbox.Maildir makes tmp/ new/ cur/ only when the folder itself is missing;
    // made here explicitly, delivery does not depend on that.
    for sub in ["tmp", "new", "cur"] {
        process::public_dir(&maildir.join(sub));
    }
    let log_file = dir.join("aiosmtpd.log");
    let mut last_error = String::new();
    // Like vsftpd: a port taken between picking and binding is retried on a new one.
    for _attempt in 0..3 {
        let port = process::free_port();
        let listen = format!("127.0.0.1:{port}");
        let server = Supervised::spawn(
            "the SMTP sink (aiosmtpd)",
            Path::new(PYTHON),
            &[
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &listen,
                "-c",
                "aiosmtpd.handlers.Mailbox",
                &maildir.to_string_lossy(),
            ],
            &log_file,
        );
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        match server.wait_for_greeting(addr, process::READY_TIMEOUT) {
            Ok(()) => {
                return SmtpSink {
                    host: "127.0.0.1".to_owned(),
                    port,
                    maildir,
                    log_file,
                    _server: server,
                };
            }
            Err(e) if server.exited().is_some() => last_error = e,
            Err(e) => panic!("harness: {e}"),
        }
    }
    panic!("harness: the SMTP sink failed to start three times; last failure: {last_error}");
}

impl SmtpSink {
    /// Waits until at least `n` messages addressed to `to` (envelope recipient or `To` header,
    /// case-insensitive) have arrived, and returns all of them in arrival order. Panics with
    /// what did arrive if that takes longer than `timeout`.
    ///
    /// Polls the Maildir on a blocking thread with real time, so it also works in tests that
    /// pause tokio's clock.
    pub async fn wait_for_messages(
        &self,
        to: &str,
        n: usize,
        timeout: Duration,
    ) -> Vec<ReceivedMail> {
        let maildir = self.maildir.clone();
        let to = to.to_owned();
        let task = tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + timeout;
            loop {
                let all = read_maildir(&maildir);
                let matching: Vec<ReceivedMail> =
                    all.iter().filter(|m| m.is_for(&to)).cloned().collect();
                if matching.len() >= n {
                    return matching;
                }
                if Instant::now() >= deadline {
                    let seen: Vec<String> = all
                        .iter()
                        .map(|m| format!("{:?} to {:?}", m.subject, m.envelope_to))
                        .collect();
                    panic!(
                        "harness: timed out after {timeout:?} waiting for {n} message(s) to {to}: \
                         {} arrived for it; all messages in {}: {seen:?}",
                        matching.len(),
                        maildir.display()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        match task.await {
            Ok(mails) => mails,
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(e) => panic!("harness: the mail polling task failed: {e}"),
            },
        }
    }

    /// Every message received so far, in arrival order.
    pub fn all_messages(&self) -> Vec<ReceivedMail> {
        read_maildir(&self.maildir)
    }
}

/// Reads and parses `new/` (and `cur/`, should anything move messages there), in arrival order.
fn read_maildir(maildir: &Path) -> Vec<ReceivedMail> {
    let mut files: Vec<(std::time::SystemTime, String, PathBuf)> = Vec::new();
    for sub in ["new", "cur"] {
        let Ok(entries) = fs::read_dir(maildir.join(sub)) else {
            continue;
        };
        for entry in entries.flatten() {
            let modified = entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            let name = entry.file_name().to_string_lossy().into_owned();
            files.push((modified, name, entry.path()));
        }
    }
    // Maildir names start with the delivery time; the mtime breaks ties across seconds.
    files.sort();
    files
        .into_iter()
        .filter_map(|(_, _, path)| fs::read(&path).ok())
        .map(|bytes| parse(&bytes))
        .collect()
}

/// Parses one stored message.
pub fn parse(bytes: &[u8]) -> ReceivedMail {
    let raw = String::from_utf8_lossy(bytes).into_owned();
    let Some(msg) = MessageParser::default().parse(bytes) else {
        return ReceivedMail {
            raw,
            headers: Vec::new(),
            subject: String::new(),
            to: Vec::new(),
            from: String::new(),
            envelope_to: Vec::new(),
            body_text: String::new(),
            body_html: String::new(),
            part_types: Vec::new(),
            attachments: Vec::new(),
        };
    };
    let headers: Vec<(String, String)> = msg
        .headers_raw()
        .map(|(name, value)| {
            let unfolded = value.split_whitespace().collect::<Vec<_>>().join(" ");
            (name.to_owned(), unfolded)
        })
        .collect();
    let addresses = |a: Option<&mail_parser::Address<'_>>| -> Vec<String> {
        a.map(|a| {
            a.iter()
                .filter_map(|x| x.address())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
    };
    let envelope_to = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("X-RcptTo"))
        .flat_map(|(_, v)| v.split(','))
        .map(|a| a.trim().trim_matches(['<', '>']).to_owned())
        .filter(|a| !a.is_empty())
        .collect();
    ReceivedMail {
        subject: msg.subject().unwrap_or_default().to_owned(),
        to: addresses(msg.to()),
        from: addresses(msg.from()).into_iter().next().unwrap_or_default(),
        envelope_to,
        body_text: msg.body_text(0).map(|b| b.into_owned()).unwrap_or_default(),
        body_html: html_part(&msg),
        part_types: msg
            .parts
            .iter()
            .map(|p| {
                p.content_type()
                    .map(|ct| format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or_default()))
                    .unwrap_or_default()
            })
            .collect(),
        attachments: msg
            .attachments()
            .map(|part| {
                let name = part.attachment_name().unwrap_or_default().to_owned();
                (name, part.contents().to_vec())
            })
            .collect(),
        headers,
        raw,
    }
}

/// The decoded body of the first `text/html` part, as sent (mail-parser's `body_html` would
/// make one from the text part when there is none).
fn html_part(msg: &mail_parser::Message<'_>) -> String {
    msg.parts
        .iter()
        .find(|p| {
            p.content_type()
                .is_some_and(|ct| ct.ctype() == "text" && ct.subtype() == Some("html"))
        })
        .and_then(|p| match &p.body {
            mail_parser::PartType::Html(h) => Some(h.to_string()),
            mail_parser::PartType::Text(t) => Some(t.to_string()),
            _ => None,
        })
        .unwrap_or_default()
}

/// An HTML document as parsed by an HTML parser: its tables and the names of its elements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HtmlDoc {
    /// Every `<table>` by its `id` (empty when it has none): its rows, each the text of its
    /// `<th>`/`<td>` cells, entities decoded.
    pub tables: Vec<(String, Vec<Vec<String>>)>,
    /// The lowercase name of every element in the document, in order.
    pub elements: Vec<String>,
}

impl HtmlDoc {
    /// The rows of the table with this `id`.
    pub fn table(&self, id: &str) -> Option<&[Vec<String>]> {
        self.tables
            .iter()
            .find(|(i, _)| i == id)
            .map(|(_, rows)| rows.as_slice())
    }
}

/// Parses `html` with an HTML parser (`tl`), not by searching the text.
pub fn parse_html(html: &str) -> HtmlDoc {
    let dom = tl::parse(html, tl::ParserOptions::default())
        .unwrap_or_else(|e| panic!("harness: the HTML part does not parse: {e}"));
    let parser = dom.parser();
    let tag_of = |h: &tl::NodeHandle| h.get(parser).and_then(|n| n.as_tag());
    let elements = dom
        .nodes()
        .iter()
        .filter_map(|n| n.as_tag())
        .map(|t| t.name().as_utf8_str().to_lowercase())
        .collect();
    let mut tables = Vec::new();
    for table in dom.query_selector("table").into_iter().flatten() {
        let Some(tag) = tag_of(&table) else { continue };
        let id = tag
            .attributes()
            .id()
            .map(|i| i.as_utf8_str().into_owned())
            .unwrap_or_default();
        let mut rows = Vec::new();
        for tr in tag.query_selector(parser, "tr").into_iter().flatten() {
            let Some(tr) = tag_of(&tr) else { continue };
            let cells = tr
                .children()
                .top()
                .iter()
                .filter_map(tag_of)
                .filter(|c| matches!(c.name().as_utf8_str().as_ref(), "td" | "th"))
                .map(|c| decode_entities(&c.inner_text(parser)))
                .collect();
            rows.push(cells);
        }
        tables.push((id, rows));
    }
    HtmlDoc { tables, elements }
}

/// The five entities an HTML escape writes, and numeric ones, decoded.
fn decode_entities(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let Some(end) = rest.find(';').filter(|e| *e <= 10) else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..end];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix('#')
                .and_then(|n| match n.strip_prefix(['x', 'X']) {
                    Some(hex) => u32::from_str_radix(hex, 16).ok(),
                    None => n.parse().ok(),
                })
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}
