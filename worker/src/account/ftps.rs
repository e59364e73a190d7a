//! The FTPS client: explicit TLS (AUTH TLS, PROT P) over rustls, the server certificate always
//! verified (against a configured CA file, else the Mozilla roots), passive data connections made
//! to the control connection's peer (the address inside a PASV answer is never used), and every
//! operation bounded by a timeout. [`FtpsSession`] is the first implementation of
//! [`Account`].
//!
//! Servers that require the data connections to resume the control connection's TLS session
//! (vsftpd's `require_ssl_reuse=YES`, ProFTPD's default) are met on TLS 1.2 and TLS 1.3:
//! - each control connection has its own session store ([`SessionTickets`]), so a data connection
//!   can only ever resume *this* control connection's session;
//! - a TLS 1.2 session is kept and offered on every data connection;
//! - a TLS 1.3 ticket can be used once (rustls hands it out once and cannot copy it), and servers
//!   differ in how many they give: OpenSSL-based vsftpd sends a new one on each data connection,
//!   ProFTPD sends two at login and none on uploads. When the store has no ticket left, the
//!   session logs in again on a new control connection before the next data connection (fresh
//!   tickets) instead of being refused with `425 … did not reuse TLS session`.
//!
//! Uploads go to a temporary name in the target's folder and are renamed into place, so a file
//! is on the account complete or not at all.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{
    ClientSessionStore, Resumption, Tls12ClientSessionValue, Tls13ClientSessionValue,
    WebPkiServerVerifier,
};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, NamedGroup, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use shared::ApiKey;
use shared::settings::FtpsSettings;
use suppaftp::tokio::{AsyncRustlsConnector, AsyncRustlsFtpStream};
use suppaftp::{FtpError, Mode, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{Account, AccountError, Stat, temp_name};

/// Built once at start-up; opens one session per job.
#[derive(Clone)]
pub struct FtpsConnector {
    roots: Arc<RootCertStore>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    connect_timeout: Duration,
    io_timeout: Duration,
}

impl std::fmt::Debug for FtpsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FtpsConnector")
            .field("roots", &self.roots.len())
            .field("connect_timeout", &self.connect_timeout)
            .field("io_timeout", &self.io_timeout)
            .finish()
    }
}

impl FtpsConnector {
    pub fn from_settings(settings: &FtpsSettings) -> anyhow::Result<Self> {
        let mut roots = RootCertStore::empty();
        match &settings.ca_file {
            Some(path) => {
                let certs = load_pem_certs(path)?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    anyhow::bail!("ftps.ca_file {}: no usable CA certificate", path.display());
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        Ok(Self {
            roots: Arc::new(roots),
            provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
            connect_timeout: settings.connect_timeout,
            io_timeout: settings.io_timeout,
        })
    }

    /// Connects, upgrades to TLS, logs in. The TLS config is made per session so that a refused
    /// certificate is known as such (see [`RecordingVerifier`]) and the session cache that
    /// `require_ssl_reuse` servers demand is shared by this session's data connections.
    pub async fn connect(
        &self,
        host: &str,
        port: u16,
        user: &str,
        key: &ApiKey,
    ) -> Result<FtpsSession, AccountError> {
        let (stream, tickets) = self.login(host, port, user, key).await?;
        Ok(FtpsSession {
            stream,
            tickets,
            io: self.io_timeout,
            again: Login {
                connector: self.clone(),
                host: host.to_owned(),
                port,
                user: user.to_owned(),
                key: key.clone(),
            },
            relogins: 0,
            append_refused: false,
            leftover: None,
        })
    }

    /// One control connection, logged in, with its own TLS session store.
    async fn login(
        &self,
        host: &str,
        port: u16,
        user: &str,
        key: &ApiKey,
    ) -> Result<(AsyncRustlsFtpStream, Arc<SessionTickets>), AccountError> {
        let tickets = Arc::new(SessionTickets::default());
        let refusal = Arc::new(Mutex::new(None));
        let verifier =
            WebPkiServerVerifier::builder_with_provider(self.roots.clone(), self.provider.clone())
                .build()
                .map_err(|e| AccountError::Certificate(e.to_string()))?;
        let config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| AccountError::Transport(e.to_string()))?
            // Not a way around verification: the wrapper calls the WebPKI verifier and only
            // remembers why it refused, so the refusal can be told apart from a network error.
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(RecordingVerifier {
                inner: verifier,
                refusal: refusal.clone(),
            }))
            .with_no_client_auth();
        let mut config = config;
        config.resumption = Resumption::store(tickets.clone());
        let connector =
            AsyncRustlsConnector::from(tokio_rustls::TlsConnector::from(Arc::new(config)));

        let io = self.io_timeout;
        let addr = format!("{host}:{port}");
        let plain = bounded(
            self.connect_timeout,
            AsyncRustlsFtpStream::connect(addr.as_str()),
        )
        .await?
        .map_err(transport)?;
        let secured = bounded(io, plain.into_secure(connector, host)).await?;
        let mut stream = match secured {
            Ok(s) => s,
            Err(e) => {
                let refused = refusal.lock().ok().and_then(|r| r.clone());
                return Err(match refused {
                    Some(why) => AccountError::Certificate(why),
                    None => transport(e),
                });
            }
        };
        // Data connections go to the control connection's peer, whatever address PASV names.
        stream.set_mode(Mode::Passive);
        stream.set_passive_nat_workaround(true);
        match bounded(io, stream.login(user, key.expose())).await? {
            Ok(()) => {}
            Err(FtpError::UnexpectedResponse(r))
                if matches!(r.status, Status::NotLoggedIn | Status::InvalidCredentials) =>
            {
                return Err(AccountError::Credentials);
            }
            Err(e) => return Err(transport(e)),
        }
        bounded(io, stream.transfer_type(suppaftp::types::FileType::Binary))
            .await?
            .map_err(transport)?;
        Ok((stream, tickets))
    }
}

/// What it takes to log in again (fresh TLS 1.3 tickets).
struct Login {
    connector: FtpsConnector,
    host: String,
    port: u16,
    user: String,
    key: ApiKey,
}

/// One logged-in FTPS control connection.
pub struct FtpsSession {
    stream: AsyncRustlsFtpStream,
    tickets: Arc<SessionTickets>,
    io: Duration,
    again: Login,
    relogins: u32,
    /// The server refused APPE to an existing file once: append by rewriting from then on.
    append_refused: bool,
    /// A failed upload's temporary file that could not be removed.
    leftover: Option<String>,
}

/// The largest file an append rewrites when the server refuses APPE (the run log is far smaller).
const REWRITE_MAX_BYTES: u64 = 64 << 20;

impl FtpsSession {
    /// How many times this session logged in again for fresh TLS 1.3 tickets.
    pub fn relogins(&self) -> u32 {
        self.relogins
    }

    /// Before a data connection: a TLS 1.3 session without a ticket left could not resume, and
    /// a server that requires resumption would refuse the connection; log in again first.
    async fn ready_for_data(&mut self) -> Result<(), AccountError> {
        if !self.tickets.exhausted() {
            return Ok(());
        }
        let a = &self.again;
        let (stream, tickets) = a.connector.login(&a.host, a.port, &a.user, &a.key).await?;
        let old = std::mem::replace(&mut self.stream, stream);
        self.tickets = tickets;
        self.relogins += 1;
        tracing::debug!(
            relogins = self.relogins,
            "ftps: new control connection for fresh TLS session tickets"
        );
        let mut old = old;
        let _ = bounded(self.io, old.quit()).await;
        Ok(())
    }
}

impl std::fmt::Debug for FtpsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FtpsSession").finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl Account for FtpsSession {
    async fn size(&mut self, path: &str) -> Result<Option<u64>, AccountError> {
        match bounded(self.io, self.stream.size(path)).await? {
            Ok(n) => Ok(Some(n as u64)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(transport(e)),
        }
    }

    /// SIZE, then MDTM (UTC, to the second). MDTM is an extension: a server that refuses it still
    /// has SIZE to go by, and the time is then `None`.
    async fn stat(&mut self, path: &str) -> Result<Option<Stat>, AccountError> {
        let Some(size) = self.size(path).await? else {
            return Ok(None);
        };
        let modified = match bounded(self.io, self.stream.mdtm(path)).await? {
            Ok(t) => Some(t),
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(_) => None,
        };
        Ok(Some(Stat { size, modified }))
    }

    async fn list(&mut self, dir: &str) -> Result<Vec<String>, AccountError> {
        self.ready_for_data().await?;
        let names = match bounded(self.io, self.stream.nlst(Some(dir))).await? {
            Ok(n) => n,
            Err(e) if is_not_found(&e) => return Ok(Vec::new()),
            Err(e) => return Err(transport(e)),
        };
        Ok(names
            .iter()
            .filter_map(|n| n.rsplit('/').next().map(str::trim))
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect())
    }

    async fn remove(&mut self, path: &str) -> Result<(), AccountError> {
        match bounded(self.io, self.stream.rm(path)).await? {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(transport(e)),
        }
    }

    async fn rename(&mut self, from: &str, to: &str) -> Result<(), AccountError> {
        bounded(self.io, self.stream.rename(from, to))
            .await?
            .map_err(write_error)
    }

    async fn download(
        &mut self,
        path: &str,
        dest: &mut (dyn AsyncWrite + Unpin + Send),
        max_bytes: u64,
        inspect: &mut (dyn for<'b> FnMut(&'b [u8]) + Send),
    ) -> Result<Option<u64>, AccountError> {
        self.ready_for_data().await?;
        let mut transfer = match bounded(self.io, self.stream.retr_as_stream(path)).await? {
            Ok(t) => t,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(transport(e)),
        };
        let mut buf = vec![0u8; 256 * 1024];
        let mut total: u64 = 0;
        loop {
            let n = bounded(self.io, transfer.read(&mut buf))
                .await?
                .map_err(|e| AccountError::Transport(format!("reading {path}: {e}")))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > max_bytes {
                // Dropping the transfer closes the data connection; the server's 426 is drained
                // by the next command or goes with the session.
                drop(transfer);
                return Err(AccountError::TooLarge { limit: max_bytes });
            }
            inspect(&buf[..n]);
            dest.write_all(&buf[..n]).await?;
        }
        dest.flush().await?;
        bounded(self.io, transfer.finish())
            .await?
            .map_err(transport)?;
        Ok(Some(total))
    }

    /// APPE; on a server that does not permit appending to an existing file (ProFTPD without
    /// `AllowStoreRestart`), the file is rewritten whole: read, then uploaded with the new bytes
    /// (to a temporary name, renamed into place), so it never holds a line twice or half.
    async fn append(&mut self, path: &str, bytes: &[u8]) -> Result<(), AccountError> {
        if !self.append_refused {
            self.ready_for_data().await?;
            let mut reader = bytes;
            match bounded(self.io, self.stream.append_file(path, &mut reader)).await? {
                Ok(_) => return Ok(()),
                Err(e) if is_append_not_permitted(&e) => {
                    tracing::debug!("ftps: APPE not permitted; appending by rewriting the file");
                    self.append_refused = true;
                }
                Err(e) => return Err(write_error(e)),
            }
        }
        let mut whole = Vec::new();
        if self
            .download(path, &mut whole, REWRITE_MAX_BYTES, &mut |_| {})
            .await?
            .is_none()
        {
            whole.clear();
        }
        whole.extend_from_slice(bytes);
        self.upload(path, &mut whole.as_slice()).await?;
        Ok(())
    }

    /// STOR to a temporary name beside the target, then RNFR/RNTO into place (both servers
    /// replace an existing target, as rename(2) does). On any failure the temporary file is
    /// removed when the connection still allows it.
    async fn upload(
        &mut self,
        path: &str,
        reader: &mut (dyn AsyncRead + Unpin + Send),
    ) -> Result<u64, AccountError> {
        self.ready_for_data().await?;
        let temp = temp_name(path);
        let stored = match bounded(self.io, self.stream.put_file(&temp, &mut &mut *reader)).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                let e = write_error(e);
                self.discard(&temp).await;
                return Err(e);
            }
            Err(timeout) => {
                self.discard(&temp).await;
                return Err(timeout);
            }
        };
        if let Err(e) = self.rename(&temp, path).await {
            self.discard(&temp).await;
            return Err(e);
        }
        Ok(stored)
    }

    async fn mkdir(&mut self, dir: &str) -> Result<(), AccountError> {
        match bounded(self.io, self.stream.mkdir(dir)).await? {
            Ok(()) => Ok(()),
            // 550/553 "File exists" is fine; anything else that stays missing is a refusal.
            Err(e) if is_refusal(&e) => {
                if self.is_dir(dir).await? {
                    Ok(())
                } else {
                    Err(write_error(e))
                }
            }
            Err(e) => Err(transport(e)),
        }
    }

    fn take_leftover(&mut self) -> Option<String> {
        self.leftover.take()
    }

    async fn keepalive(&mut self) -> Result<(), AccountError> {
        bounded(self.io, self.stream.noop())
            .await?
            .map_err(transport)
    }

    async fn quit(mut self: Box<Self>) {
        let _ = bounded(self.io, self.stream.quit()).await;
    }
}

impl FtpsSession {
    /// Best effort: a temporary upload that failed does not stay on the account.
    async fn discard(&mut self, temp: &str) {
        if let Err(e) = self.remove(temp).await {
            tracing::debug!(error = %e, "ftps: a failed upload's temporary file stays for now");
            self.leftover = Some(temp.to_owned());
        }
    }

    /// Whether `dir` is a folder (CWD into it, then back to the root).
    async fn is_dir(&mut self, dir: &str) -> Result<bool, AccountError> {
        let entered = match bounded(self.io, self.stream.cwd(dir)).await? {
            Ok(()) => true,
            Err(e) if is_refusal(&e) || is_not_found(&e) => false,
            Err(e) => return Err(transport(e)),
        };
        if entered {
            bounded(self.io, self.stream.cwd("/"))
                .await?
                .map_err(transport)?;
        }
        Ok(entered)
    }
}

/// Runs `fut` within `limit`.
async fn bounded<T>(limit: Duration, fut: impl Future<Output = T>) -> Result<T, AccountError> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| AccountError::Timeout(limit))
}

/// "No such file": 550, or 450 when its text says so (ProFTPD answers `NLST` of a missing
/// folder `450 No files found`; a plain 450 is a busy file, which is worth retrying).
fn is_not_found(e: &FtpError) -> bool {
    let FtpError::UnexpectedResponse(r) = e else {
        return false;
    };
    match r.status {
        Status::FileUnavailable => true,
        Status::RequestFileActionIgnored => {
            let text = r.as_string().unwrap_or_default().to_ascii_lowercase();
            [
                "no such file",
                "not found",
                "no files found",
                "does not exist",
            ]
            .iter()
            .any(|t| text.contains(t))
        }
        _ => false,
    }
}

/// `451 …: Append/Restart not permitted`: ProFTPD's answer to APPE on an existing file unless
/// `AllowStoreRestart` is on (off by default).
fn is_append_not_permitted(e: &FtpError) -> bool {
    matches!(e, FtpError::UnexpectedResponse(r)
        if r.status == Status::ActionAborted
            && r.as_string().unwrap_or_default().to_ascii_lowercase().contains("not permitted"))
}

/// A permanent refusal of a write: 550 (permission, not found), 552 (quota), 553 (name), 532.
fn is_refusal(e: &FtpError) -> bool {
    matches!(e, FtpError::UnexpectedResponse(r) if matches!(
        r.status,
        Status::FileUnavailable
            | Status::ExceededStorage
            | Status::BadFilename
            | Status::StoringNeedAccount
    ))
}

/// The error of a STOR, APPE, MKD, RNFR or RNTO: a refusal is [`AccountError::Refused`] (the
/// caller decides it is permanent); anything else is transport trouble.
fn write_error(e: FtpError) -> AccountError {
    if is_refusal(&e) {
        let text = match &e {
            FtpError::UnexpectedResponse(r) => r.as_string().unwrap_or_else(|_| e.to_string()),
            _ => e.to_string(),
        };
        AccountError::Refused(text)
    } else {
        transport(e)
    }
}

fn transport(e: FtpError) -> AccountError {
    AccountError::Transport(e.to_string())
}

/// The TLS session store of one control connection and its data connections (see the module
/// documentation). It only ever holds sessions with the one server this control connection
/// talks to, so the server name is not looked at.
#[derive(Debug, Default)]
pub(crate) struct SessionTickets {
    state: Mutex<TicketState>,
}

#[derive(Debug, Default)]
struct TicketState {
    kx_hint: Option<NamedGroup>,
    tls12: Option<Tls12ClientSessionValue>,
    tls13: VecDeque<Tls13ClientSessionValue>,
    /// The server gave a TLS 1.3 ticket at some point: this is a TLS 1.3 session.
    tls13_seen: bool,
}

impl SessionTickets {
    /// Enough to resume any data connection of a long session; a server sending more is capped.
    const MAX_TLS13: usize = 32;

    fn state(&self) -> std::sync::MutexGuard<'_, TicketState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A TLS 1.3 session with no ticket left: the next data connection could not resume.
    pub(crate) fn exhausted(&self) -> bool {
        let s = self.state();
        s.tls13_seen && s.tls13.is_empty() && s.tls12.is_none()
    }
}

impl ClientSessionStore for SessionTickets {
    fn set_kx_hint(&self, _: ServerName<'static>, group: NamedGroup) {
        self.state().kx_hint = Some(group);
    }

    fn kx_hint(&self, _: &ServerName<'_>) -> Option<NamedGroup> {
        self.state().kx_hint
    }

    fn set_tls12_session(&self, _: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.state().tls12 = Some(value);
    }

    /// Not consumed: a TLS 1.2 session resumes any number of data connections.
    fn tls12_session(&self, _: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.state().tls12.clone()
    }

    fn remove_tls12_session(&self, _: &ServerName<'static>) {
        self.state().tls12 = None;
    }

    fn insert_tls13_ticket(&self, _: ServerName<'static>, value: Tls13ClientSessionValue) {
        let mut s = self.state();
        s.tls13_seen = true;
        if s.tls13.len() >= Self::MAX_TLS13 {
            s.tls13.pop_front();
        }
        s.tls13.push_back(value);
    }

    /// The oldest ticket first: the control connection's own come before those of data
    /// connections (each is usable once; see the module documentation).
    fn take_tls13_ticket(&self, _: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        self.state().tls13.pop_front()
    }
}

fn load_pem_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| anyhow::anyhow!("ftps.ca_file {}: {e}", path.display()))?
        .collect();
    certs.map_err(|e| anyhow::anyhow!("ftps.ca_file {}: {e}", path.display()))
}

/// Delegates every check to the WebPKI verifier and keeps the reason of a refusal.
#[derive(Debug)]
struct RecordingVerifier {
    inner: Arc<WebPkiServerVerifier>,
    refusal: Arc<Mutex<Option<String>>>,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .inspect_err(|e| {
                if let Ok(mut r) = self.refusal.lock() {
                    *r = Some(e.to_string());
                }
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
