//! The FTPS client: explicit TLS (AUTH TLS, PROT P) over rustls, the server certificate always
//! verified (against a configured CA file, else the Mozilla roots), passive data connections made
//! to the control connection's peer (the address inside a PASV answer is never used), and every
//! operation bounded by a timeout. [`FtpsSession`] is the first implementation of
//! [`Account`].

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

use super::{Account, AccountError, Stat};

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
            .map_err(transport)
    }

    async fn download(
        &mut self,
        path: &str,
        dest: &mut (dyn AsyncWrite + Unpin + Send),
        max_bytes: u64,
        inspect: &mut (dyn for<'b> FnMut(&'b [u8]) + Send),
    ) -> Result<Option<u64>, AccountError> {
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

    async fn append(&mut self, path: &str, bytes: &[u8]) -> Result<(), AccountError> {
        let mut reader = bytes;
        bounded(self.io, self.stream.append_file(path, &mut reader))
            .await?
            .map_err(transport)?;
        Ok(())
    }

    async fn upload(
        &mut self,
        path: &str,
        reader: &mut (dyn AsyncRead + Unpin + Send),
    ) -> Result<u64, AccountError> {
        bounded(self.io, self.stream.put_file(path, &mut &mut *reader))
            .await?
            .map_err(transport)
    }

    async fn mkdir(&mut self, dir: &str) -> Result<(), AccountError> {
        match bounded(self.io, self.stream.mkdir(dir)).await? {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(transport(e)),
        }
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

/// Runs `fut` within `limit`.
async fn bounded<T>(limit: Duration, fut: impl Future<Output = T>) -> Result<T, AccountError> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| AccountError::Timeout(limit))
}

fn is_not_found(e: &FtpError) -> bool {
    matches!(e, FtpError::UnexpectedResponse(r) if r.status == Status::FileUnavailable)
}

fn transport(e: FtpError) -> AccountError {
    AccountError::Transport(e.to_string())
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
