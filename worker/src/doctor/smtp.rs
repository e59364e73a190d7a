//! A small SMTP dialogue that asks the relay whether it would take mail for an address, without
//! sending any: greeting, `EHLO`, `STARTTLS` (when `smtp.tls = "starttls"`; `"tls"` is TLS from
//! the first byte), `AUTH PLAIN` (when `smtp.username` is set), `MAIL FROM`, `RCPT TO`, then
//! `RSET` and `QUIT` — never `DATA`. lettre's transport only sends whole messages, hence this.
//!
//! The TLS trust is the mailer's: the CA of `smtp.ca_file`, else the Mozilla roots; the
//! certificate is always verified. Every read and write is bounded by `smtp.timeout`, a reply by
//! [`MAX_REPLY_LINES`] lines of at most [`MAX_LINE`] bytes.

use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls_pki_types::pem::PemObject;
use shared::settings::{SmtpSettings, SmtpTls};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

const MAX_LINE: u64 = 4096;
const MAX_REPLY_LINES: usize = 100;

/// Why the relay would not take the address, by what the operator fixes.
#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    #[error("cannot connect to {addr}: {why}")]
    Connect { addr: String, why: String },
    #[error("TLS with {host}: {why}")]
    Tls { host: String, why: String },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connection lost: {0}")]
    Io(String),
    /// The server answered a command with an error code.
    #[error("{command} refused: {code} {text}")]
    Refused {
        command: &'static str,
        code: u16,
        text: String,
    },
    #[error("unexpected answer: {0}")]
    Protocol(String),
    #[error("settings: {0}")]
    Settings(String),
}

/// What the relay said on the way to accepting the recipient.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The greeting line (`220 …`), without its code.
    pub greeting: String,
    pub tls: bool,
    pub authenticated: bool,
    /// The `RCPT TO` answer, code and text.
    pub rcpt: String,
}

/// One server reply: its code and its lines' text joined.
#[derive(Debug, Clone)]
struct Reply {
    code: u16,
    text: String,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Conn {
    stream: BufReader<Box<dyn Io>>,
    timeout: Duration,
}

/// Asks the relay of `settings` whether it accepts mail from `smtp.from` to `to`; sends none.
pub async fn probe_recipient(settings: &SmtpSettings, to: &str) -> Result<Accepted, SmtpError> {
    let from = envelope_from(&settings.from)?;
    let mut conn = Conn::open(settings).await?;
    let greeting = conn.reply().await?;
    if greeting.code != 220 {
        return Err(refused("greeting", greeting));
    }
    let helo_name = from.rsplit_once('@').map_or("localhost", |(_, d)| d);
    let mut ehlo = conn
        .expect("EHLO", &format!("EHLO {helo_name}"), 250)
        .await?;
    let tls = settings.tls != SmtpTls::None;
    if settings.tls == SmtpTls::Starttls {
        conn.expect("STARTTLS", "STARTTLS", 220).await?;
        conn = conn.starttls(settings).await?;
        ehlo = conn
            .expect("EHLO", &format!("EHLO {helo_name}"), 250)
            .await?;
    }
    let authenticated = match (&settings.username, settings.password.expose()) {
        (Some(user), Some(password)) => {
            conn.auth_plain(&ehlo, user, password).await?;
            true
        }
        _ => false,
    };
    conn.expect("MAIL FROM", &format!("MAIL FROM:<{from}>"), 250)
        .await?;
    let rcpt = conn.command(&format!("RCPT TO:<{to}>")).await?;
    // Whatever the answer, the transaction is abandoned and the session closed politely.
    let _ = conn.command("RSET").await;
    let _ = conn.command("QUIT").await;
    if !(rcpt.code == 250 || rcpt.code == 251) {
        return Err(refused("RCPT TO", rcpt));
    }
    Ok(Accepted {
        greeting: greeting.text,
        tls,
        authenticated,
        rcpt: format!("{} {}", rcpt.code, rcpt.text),
    })
}

fn refused(command: &'static str, r: Reply) -> SmtpError {
    SmtpError::Refused {
        command,
        code: r.code,
        text: r.text,
    }
}

/// The bare address of `smtp.from` (`"User import <ui@example.com>"` → `ui@example.com`).
fn envelope_from(from: &str) -> Result<String, SmtpError> {
    let mailbox: lettre::message::Mailbox = from
        .parse()
        .map_err(|e| SmtpError::Settings(format!("smtp.from {from:?}: {e}")))?;
    Ok(mailbox.email.to_string())
}

async fn bounded<T>(limit: Duration, fut: impl Future<Output = T>) -> Result<T, SmtpError> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| SmtpError::Timeout(limit))
}

impl Conn {
    async fn open(settings: &SmtpSettings) -> Result<Self, SmtpError> {
        let addr = format!("{}:{}", settings.host, settings.port);
        let tcp = bounded(
            settings.timeout,
            tokio::net::TcpStream::connect((settings.host.as_str(), settings.port)),
        )
        .await
        .map_err(|e| SmtpError::Connect {
            addr: addr.clone(),
            why: e.to_string(),
        })?
        .map_err(|e| SmtpError::Connect {
            addr: addr.clone(),
            why: e.to_string(),
        })?;
        let stream: Box<dyn Io> = if settings.tls == SmtpTls::Tls {
            Box::new(tls_wrap(settings, tcp).await?)
        } else {
            Box::new(tcp)
        };
        Ok(Self {
            stream: BufReader::new(stream),
            timeout: settings.timeout,
        })
    }

    /// Upgrades the connection after `220` to `STARTTLS`. Bytes the server sent before the
    /// handshake would be read as if they came over TLS: refused.
    async fn starttls(self, settings: &SmtpSettings) -> Result<Self, SmtpError> {
        if !self.stream.buffer().is_empty() {
            return Err(SmtpError::Protocol(
                "the server sent data after agreeing to STARTTLS".into(),
            ));
        }
        let inner = self.stream.into_inner();
        let tls = tls_wrap(settings, inner).await?;
        Ok(Self {
            stream: BufReader::new(Box::new(tls)),
            timeout: self.timeout,
        })
    }

    async fn reply(&mut self) -> Result<Reply, SmtpError> {
        let mut lines = Vec::new();
        loop {
            let mut raw = Vec::new();
            let n = bounded(
                self.timeout,
                (&mut self.stream)
                    .take(MAX_LINE)
                    .read_until(b'\n', &mut raw),
            )
            .await?
            .map_err(|e| SmtpError::Io(e.to_string()))?;
            if n == 0 {
                return Err(SmtpError::Io("closed by the server".into()));
            }
            let line = String::from_utf8_lossy(&raw);
            let line = line.trim_end();
            let code: u16 = line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| SmtpError::Protocol(format!("{line:?}")))?;
            lines.push(line.get(4..).unwrap_or("").to_owned());
            let more = line.as_bytes().get(3) == Some(&b'-');
            if !more {
                return Ok(Reply {
                    code,
                    text: lines.join(" / "),
                });
            }
            if lines.len() >= MAX_REPLY_LINES {
                return Err(SmtpError::Protocol("a reply of too many lines".into()));
            }
        }
    }

    async fn command(&mut self, line: &str) -> Result<Reply, SmtpError> {
        let stream = self.stream.get_mut();
        bounded(self.timeout, async {
            stream.write_all(line.as_bytes()).await?;
            stream.write_all(b"\r\n").await?;
            stream.flush().await
        })
        .await?
        .map_err(|e| SmtpError::Io(e.to_string()))?;
        self.reply().await
    }

    /// Sends `line`; an answer other than `code` is a refusal of `command`.
    async fn expect(
        &mut self,
        command: &'static str,
        line: &str,
        code: u16,
    ) -> Result<Reply, SmtpError> {
        let reply = self.command(line).await?;
        if reply.code == code {
            Ok(reply)
        } else {
            Err(refused(command, reply))
        }
    }

    /// `AUTH PLAIN` with the credentials in the command (RFC 4616); never logged.
    async fn auth_plain(&mut self, ehlo: &Reply, user: &str, pw: &str) -> Result<(), SmtpError> {
        let offers_plain = ehlo.text.split(" / ").any(|l| {
            let l = l.to_ascii_uppercase();
            l.starts_with("AUTH") && l.split([' ', '=']).any(|m| m == "PLAIN")
        });
        if !offers_plain {
            return Err(SmtpError::Protocol(
                "smtp.username is set but the server offers no AUTH PLAIN".into(),
            ));
        }
        let token = base64(format!("\0{user}\0{pw}").as_bytes());
        self.expect("AUTH", &format!("AUTH PLAIN {token}"), 235)
            .await
            .map(|_| ())
    }
}

async fn tls_wrap<S: AsyncRead + AsyncWrite + Unpin + Send>(
    settings: &SmtpSettings,
    stream: S,
) -> Result<tokio_rustls::client::TlsStream<S>, SmtpError> {
    let tls_error = |why: String| SmtpError::Tls {
        host: settings.host.clone(),
        why,
    };
    let config = tls_config(settings).map_err(tls_error)?;
    let name = ServerName::try_from(settings.host.clone()).map_err(|e| tls_error(e.to_string()))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    bounded(settings.timeout, connector.connect(name, stream))
        .await?
        .map_err(|e| tls_error(e.to_string()))
}

/// The mailer's trust: `smtp.ca_file`, else the Mozilla roots.
fn tls_config(settings: &SmtpSettings) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    match &settings.ca_file {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("smtp.ca_file {}: {e}", path.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("smtp.ca_file {}: {e}", path.display()))?;
            roots.add_parsable_certificates(certs);
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Standard base64 with padding (RFC 4648), for `AUTH PLAIN`.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A scripted relay: answers each command by its verb, records what it was sent.
    async fn relay(rcpt_answer: &'static str) -> (u16, tokio::task::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
        let task = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap_or_else(|e| panic!("{e}"));
            let (read, mut write) = socket.into_split();
            let mut read = BufReader::new(read);
            let mut seen = Vec::new();
            let _ = write.write_all(b"220 relay.test ESMTP ready\r\n").await;
            loop {
                let mut line = String::new();
                if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                    break;
                }
                let line = line.trim_end().to_owned();
                let verb = line.split([' ', ':']).next().unwrap_or("").to_uppercase();
                let answer = match verb.as_str() {
                    "EHLO" => "250-relay.test\r\n250-AUTH LOGIN PLAIN\r\n250 8BITMIME\r\n",
                    "MAIL" => "250 2.1.0 ok\r\n",
                    "RCPT" => rcpt_answer,
                    "RSET" => "250 2.0.0 reset\r\n",
                    "AUTH" => "235 2.7.0 authenticated\r\n",
                    "QUIT" => "221 bye\r\n",
                    _ => "502 5.5.1 not here\r\n",
                };
                seen.push(line);
                let _ = write.write_all(answer.as_bytes()).await;
                if verb == "QUIT" {
                    break;
                }
            }
            seen
        });
        (port, task)
    }

    fn settings(port: u16) -> SmtpSettings {
        SmtpSettings {
            host: "127.0.0.1".into(),
            port,
            tls: SmtpTls::None,
            ca_file: None,
            username: None,
            password: shared::secret::Secret::default(),
            from: "User import <ui@fleet.example.com>".into(),
            timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn an_accepted_recipient_is_asked_for_and_no_message_is_sent() {
        let (port, relay) = relay("250 2.1.5 ok\r\n").await;
        let got = probe_recipient(&settings(port), "admin@acme.example")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got.rcpt, "250 2.1.5 ok");
        assert!(!got.tls && !got.authenticated);
        let seen = relay.await.unwrap_or_default();
        assert_eq!(
            seen,
            [
                "EHLO fleet.example.com",
                "MAIL FROM:<ui@fleet.example.com>",
                "RCPT TO:<admin@acme.example>",
                "RSET",
                "QUIT"
            ]
        );
    }

    #[tokio::test]
    async fn a_refused_recipient_is_an_error_naming_rcpt_and_the_session_still_ends_politely() {
        let (port, relay) = relay("550 5.1.1 no such user here\r\n").await;
        let got = probe_recipient(&settings(port), "nobody@acme.example").await;
        match got {
            Err(SmtpError::Refused {
                command: "RCPT TO",
                code: 550,
                text,
            }) => assert!(text.contains("no such user"), "{text}"),
            other => panic!("{other:?}"),
        }
        let seen = relay.await.unwrap_or_default();
        assert_eq!(seen.last().map(String::as_str), Some("QUIT"));
        assert!(!seen.iter().any(|l| l.starts_with("DATA")), "{seen:?}");
    }

    #[tokio::test]
    async fn credentials_are_sent_with_auth_plain_when_set() {
        let (port, relay) = relay("250 ok\r\n").await;
        let mut s = settings(port);
        s.username = Some("user".into());
        s.password = shared::secret::Secret::new("pass");
        let got = probe_recipient(&s, "a@b.example")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(got.authenticated);
        let seen = relay.await.unwrap_or_default();
        assert_eq!(seen[1], format!("AUTH PLAIN {}", base64(b"\0user\0pass")));
        assert_eq!(base64(b"\0user\0pass"), "AHVzZXIAcGFzcw==");
    }

    #[tokio::test]
    async fn a_closed_port_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
        drop(listener);
        let got = probe_recipient(&settings(port), "a@b.example").await;
        assert!(matches!(got, Err(SmtpError::Connect { .. })), "{got:?}");
    }

    #[test]
    fn base64_pads_as_the_standard_says() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }
}
