//! The FTPS client: explicit TLS (AUTH TLS, PROT P) over rustls, the server certificate always
//! verified (against a configured CA file, else the Mozilla roots), passive data connections made
//! to the control connection's peer (the address inside a PASV answer is never used), and every
//! operation bounded by a timeout.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use shared::ApiKey;
use shared::settings::FtpsSettings;
use suppaftp::tokio::{AsyncRustlsConnector, AsyncRustlsFtpStream};
use suppaftp::{FtpError, Mode, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What went wrong talking to the FTPS server, sorted by what the caller does about it.
#[derive(Debug, thiserror::Error)]
pub enum FtpsError {
    #[error("login refused")]
    Credentials,
    #[error("server certificate refused: {0}")]
    Certificate(String),
    #[error("no such file")]
    NotFound,
    #[error("file larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Transport(String),
    #[error("local file: {0}")]
    LocalIo(#[from] std::io::Error),
}

impl FtpsError {
    /// Network trouble that a later attempt may not meet.
    pub fn is_transient(&self) -> bool {
        matches!(self, FtpsError::Timeout(_) | FtpsError::Transport(_))
    }
}

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
    ) -> Result<FtpsSession, FtpsError> {
        let refusal = Arc::new(Mutex::new(None));
        let verifier =
            WebPkiServerVerifier::builder_with_provider(self.roots.clone(), self.provider.clone())
                .build()
                .map_err(|e| FtpsError::Certificate(e.to_string()))?;
        let config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| FtpsError::Transport(e.to_string()))?
            // Not a way around verification: the wrapper calls the WebPKI verifier and only
            // remembers why it refused, so the refusal can be told apart from a network error.
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(RecordingVerifier {
                inner: verifier,
                refusal: refusal.clone(),
            }))
            .with_no_client_auth();
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
                    Some(why) => FtpsError::Certificate(why),
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
                return Err(FtpsError::Credentials);
            }
            Err(e) => return Err(transport(e)),
        }
        bounded(io, stream.transfer_type(suppaftp::types::FileType::Binary))
            .await?
            .map_err(transport)?;
        Ok(FtpsSession { stream, io })
    }
}

/// One logged-in FTPS control connection.
pub struct FtpsSession {
    stream: AsyncRustlsFtpStream,
    io: Duration,
}

impl std::fmt::Debug for FtpsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FtpsSession").finish_non_exhaustive()
    }
}

impl FtpsSession {
    /// The size of a file, `None` if there is none.
    pub async fn size(&mut self, path: &str) -> Result<Option<u64>, FtpsError> {
        match bounded(self.io, self.stream.size(path)).await? {
            Ok(n) => Ok(Some(n as u64)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(transport(e)),
        }
    }

    /// The modification time of a file (MDTM, UTC, to the second), `None` if there is none.
    pub async fn modified(
        &mut self,
        path: &str,
    ) -> Result<Option<chrono::NaiveDateTime>, FtpsError> {
        match bounded(self.io, self.stream.mdtm(path)).await? {
            Ok(t) => Ok(Some(t)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(transport(e)),
        }
    }

    /// The names of the entries of `dir` (no paths); empty when the directory is missing.
    pub async fn names_in(&mut self, dir: &str) -> Result<Vec<String>, FtpsError> {
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

    /// Deletes a file; one already gone is fine.
    pub async fn remove(&mut self, path: &str) -> Result<(), FtpsError> {
        match bounded(self.io, self.stream.rm(path)).await? {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(transport(e)),
        }
    }

    /// Streams `path` into `dest`, handing each chunk to `inspect` (the hasher) on the way.
    /// Refuses to go past `max_bytes`. `Ok(None)` when the file does not exist.
    pub async fn download<W, F>(
        &mut self,
        path: &str,
        dest: &mut W,
        max_bytes: u64,
        mut inspect: F,
    ) -> Result<Option<u64>, FtpsError>
    where
        W: AsyncWrite + Unpin,
        F: FnMut(&[u8]),
    {
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
                .map_err(|e| FtpsError::Transport(format!("reading {path}: {e}")))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > max_bytes {
                // Dropping the transfer closes the data connection; the server's 426 is drained
                // by the next command or goes with the session.
                drop(transfer);
                return Err(FtpsError::TooLarge { limit: max_bytes });
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

    /// Appends bytes to a file (created if missing).
    pub async fn append(&mut self, path: &str, bytes: &[u8]) -> Result<(), FtpsError> {
        let mut reader = bytes;
        bounded(self.io, self.stream.append_file(path, &mut reader))
            .await?
            .map_err(transport)?;
        Ok(())
    }

    /// Uploads (replaces) a file from any reader.
    pub async fn put<R: AsyncRead + Unpin>(
        &mut self,
        path: &str,
        reader: &mut R,
    ) -> Result<u64, FtpsError> {
        bounded(self.io, self.stream.put_file(path, reader))
            .await?
            .map_err(transport)
    }

    /// Whether a file of that exact name is in `dir`.
    pub async fn exists_in(&mut self, dir: &str, name: &str) -> Result<bool, FtpsError> {
        let names = match bounded(self.io, self.stream.nlst(Some(dir))).await? {
            Ok(n) => n,
            Err(e) if is_not_found(&e) => return Ok(false),
            Err(e) => return Err(transport(e)),
        };
        Ok(names
            .iter()
            .any(|n| n.rsplit('/').next().map(str::trim) == Some(name)))
    }

    /// A small file's contents (at most `max_bytes`), `None` if there is none.
    pub async fn read_small(
        &mut self,
        path: &str,
        max_bytes: u64,
    ) -> Result<Option<Vec<u8>>, FtpsError> {
        let mut out = Vec::new();
        Ok(self
            .download(path, &mut out, max_bytes, |_| {})
            .await?
            .map(|_| out))
    }

    /// Creates a directory; an existing one is fine.
    pub async fn ensure_dir(&mut self, dir: &str) -> Result<(), FtpsError> {
        match bounded(self.io, self.stream.mkdir(dir)).await? {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(transport(e)),
        }
    }

    pub async fn quit(mut self) {
        let _ = bounded(self.io, self.stream.quit()).await;
    }
}

/// Runs `fut` within `limit`.
async fn bounded<T>(limit: Duration, fut: impl Future<Output = T>) -> Result<T, FtpsError> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| FtpsError::Timeout(limit))
}

fn is_not_found(e: &FtpError) -> bool {
    matches!(e, FtpError::UnexpectedResponse(r) if r.status == Status::FileUnavailable)
}

fn transport(e: FtpError) -> FtpsError {
    FtpsError::Transport(e.to_string())
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
