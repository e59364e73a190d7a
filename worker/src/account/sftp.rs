//! The SFTP client, the second implementation of [`Account`]: SSH (russh) with the server's host
//! key checked against the tenant's pinned keys — there is no setting that skips the check and
//! no trust on first use — then password authentication with the tenant's API key (or, when the
//! secret source holds one, a private key first), then the `sftp` subsystem (russh-sftp).
//!
//! Every step is bounded: connecting by the connect timeout, each request by the I/O timeout.
//! SSH keepalives (every [`KEEPALIVE_INTERVAL`]) keep an idle session open through a long import
//! and notice a server that has gone.
//!
//! Paths are taken from the folder the server logs the account into (as FTP servers show a
//! chrooted home as `/`): with OpenSSH's usual `ChrootDirectory` + `internal-sftp -d /home`,
//! `/uploads` is `/home/uploads` on the wire; a server that starts at `/` is unchanged.
//!
//! Uploads are written to a temporary name and renamed into place. SFTP's rename (as OpenSSH
//! serves it) refuses to replace an existing file, so an existing target is removed first: the
//! target is briefly absent, never partial.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::DateTime;
use russh::client;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey};
use russh_sftp::client::SftpSession;
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::{OpenFlags, StatusCode};
use shared::ApiKey;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt};

use super::{Account, AccountError, Stat, temp_name};

/// SSH keepalive requests on an idle session.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// Built once at start-up; opens one session per job.
#[derive(Debug, Clone)]
pub struct SftpConnector {
    connect_timeout: Duration,
    io_timeout: Duration,
    /// Where a tenant's private key may be (`<dir>/<tenant>.ssh-key`, OpenSSH format, no
    /// passphrase): the mounted secrets folder.
    key_dir: Option<PathBuf>,
}

/// Where a tenant's SFTP account is and how its server is recognised.
#[derive(Debug, Clone, Copy)]
pub struct SftpTarget<'a> {
    pub host: &'a str,
    pub port: u16,
    pub user: &'a str,
    /// OpenSSH public keys (`ssh-ed25519 AAAA…`); the server must present one of them.
    pub host_keys: &'a [String],
}

impl SftpConnector {
    pub fn new(connect_timeout: Duration, io_timeout: Duration, key_dir: Option<PathBuf>) -> Self {
        Self {
            connect_timeout,
            io_timeout,
            key_dir,
        }
    }

    /// Connects, checks the host key, authenticates, opens the SFTP subsystem.
    pub async fn connect(
        &self,
        target: SftpTarget<'_>,
        key: &ApiKey,
    ) -> Result<SftpAccount, AccountError> {
        let mut handle = self.open_ssh(target).await?;
        self.authenticate(&mut handle, target, key).await?;
        let io = self.io_timeout;
        let (sftp, base) = open_sftp(&handle, io).await?;
        Ok(SftpAccount {
            handle,
            sftp,
            io,
            base,
            leftover: None,
        })
    }

    /// Opens the SSH connection, accepting only a server that presents a pinned host key.
    async fn open_ssh(
        &self,
        target: SftpTarget<'_>,
    ) -> Result<client::Handle<PinnedHostKey>, AccountError> {
        let pinned = parse_host_keys(target.host_keys)?;
        let refusal = Arc::new(Mutex::new(None));
        let handler = PinnedHostKey {
            pinned,
            refusal: refusal.clone(),
        };
        let config = Arc::new(client::Config {
            // No inactivity timeout: a job's session is idle during an import on purpose.
            inactivity_timeout: None,
            keepalive_interval: Some(KEEPALIVE_INTERVAL),
            keepalive_max: 3,
            nodelay: true,
            ..client::Config::default()
        });
        let connected = bounded(
            self.connect_timeout,
            client::connect(config, (target.host, target.port), handler),
        )
        .await;
        let refused = || refusal.lock().ok().and_then(|r| r.clone());
        match connected {
            Ok(Ok(h)) => Ok(h),
            Ok(Err(e)) => Err(match refused() {
                Some(why) => AccountError::HostKey(why),
                None => AccountError::Transport(format!("ssh: {e}")),
            }),
            Err(timeout) => Err(refused().map(AccountError::HostKey).unwrap_or(timeout)),
        }
    }

    /// Logs in with the tenant's private key when the secrets folder holds one, else (or when
    /// it is refused) with the password, the tenant's API key.
    async fn authenticate(
        &self,
        handle: &mut client::Handle<PinnedHostKey>,
        target: SftpTarget<'_>,
        key: &ApiKey,
    ) -> Result<(), AccountError> {
        let io = self.io_timeout;
        let mut authenticated = false;
        if let Some(private) = self.private_key(target.user)? {
            let hash = bounded(io, handle.best_supported_rsa_hash())
                .await?
                .ok()
                .flatten()
                .flatten();
            let with_alg = PrivateKeyWithHashAlg::new(Arc::new(private), hash);
            authenticated = bounded(io, handle.authenticate_publickey(target.user, with_alg))
                .await?
                .map_err(ssh_error)?
                .success();
        }
        if !authenticated {
            authenticated = bounded(io, handle.authenticate_password(target.user, key.expose()))
                .await?
                .map_err(ssh_error)?
                .success();
        }
        if !authenticated {
            return Err(AccountError::Credentials);
        }
        Ok(())
    }

    /// The tenant's private key from the secrets folder, when there is one.
    fn private_key(&self, tenant: &str) -> Result<Option<PrivateKey>, AccountError> {
        let Some(dir) = &self.key_dir else {
            return Ok(None);
        };
        let path = dir.join(format!("{tenant}.ssh-key"));
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(AccountError::LocalIo(e)),
        };
        PrivateKey::from_openssh(text.trim())
            .map(Some)
            .map_err(|e| AccountError::Credentials.with_log(&path, &e.to_string()))
    }
}

/// Opens the `sftp` subsystem on a logged-in connection; also answers the login folder (without
/// its trailing `/`), the account's root.
async fn open_sftp(
    handle: &client::Handle<PinnedHostKey>,
    io: Duration,
) -> Result<(SftpSession, String), AccountError> {
    let channel = bounded(io, handle.channel_open_session())
        .await?
        .map_err(ssh_error)?;
    bounded(io, channel.request_subsystem(true, "sftp"))
        .await?
        .map_err(ssh_error)?;
    let config = russh_sftp::client::Config {
        request_timeout_secs: io.as_secs().max(1),
        ..russh_sftp::client::Config::default()
    };
    let sftp = bounded(
        io,
        SftpSession::new_with_config(channel.into_stream(), config),
    )
    .await?
    .map_err(|e| AccountError::Transport(format!("sftp: {e}")))?;
    let base = bounded(io, sftp.canonicalize("."))
        .await?
        .map_err(|e| AccountError::Transport(format!("sftp: {e}")))?;
    let base = base.trim_end_matches('/').to_owned();
    Ok((sftp, base))
}

impl AccountError {
    /// A credential that cannot be used is refused like a wrong one; the file is named in the
    /// log (never its contents).
    fn with_log(self, path: &Path, why: &str) -> Self {
        tracing::warn!(file = %path.display(), error = why, "sftp: private key unusable");
        self
    }
}

/// Parses the pinned keys; none, or one that does not parse, is a configuration error.
fn parse_host_keys(keys: &[String]) -> Result<Vec<PublicKey>, AccountError> {
    if keys.is_empty() {
        return Err(AccountError::HostKey(
            "no host key is pinned for this tenant (registry: sftp_host_key)".into(),
        ));
    }
    keys.iter()
        .map(|k| {
            PublicKey::from_openssh(k.trim())
                .map_err(|e| AccountError::HostKey(format!("pinned host key does not parse: {e}")))
        })
        .collect()
}

/// Accepts the server only if it presents one of the pinned keys; remembers why it refused.
struct PinnedHostKey {
    pinned: Vec<PublicKey>,
    refusal: Arc<Mutex<Option<String>>>,
}

impl client::Handler for PinnedHostKey {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        offered: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let verdict = match offered {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => {
                if self.pinned.iter().any(|p| p.key_data() == key.key_data()) {
                    None
                } else {
                    Some(format!(
                        "the server presented {} {}, which is not the pinned key ({})",
                        key.algorithm().as_str(),
                        key.fingerprint(HashAlg::Sha256),
                        self.pinned
                            .iter()
                            .map(|p| p.fingerprint(HashAlg::Sha256).to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                }
            }
            russh::keys::PublicKeyOrCertificate::Certificate(_) => Some(
                "the server presented a host certificate; only pinned host keys are accepted"
                    .into(),
            ),
        };
        match verdict {
            None => Ok(true),
            Some(why) => {
                if let Ok(mut r) = self.refusal.lock() {
                    *r = Some(why);
                }
                Ok(false)
            }
        }
    }
}

/// One logged-in SFTP session.
pub struct SftpAccount {
    handle: client::Handle<PinnedHostKey>,
    sftp: SftpSession,
    io: Duration,
    /// The login folder ("" when it is `/`): the account's root.
    base: String,
    /// A failed upload's temporary file that could not be removed.
    leftover: Option<String>,
}

impl std::fmt::Debug for SftpAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SftpAccount").finish_non_exhaustive()
    }
}

impl SftpAccount {
    /// The server path of an account path.
    fn at(&self, path: &str) -> String {
        let rel = path.trim_start_matches('/');
        format!("{}/{rel}", self.base)
    }

    async fn exists(&mut self, path: &str) -> Result<bool, AccountError> {
        Ok(self.size(path).await?.is_some())
    }

    /// Renames, replacing an existing target (SFTP's rename does not).
    async fn rename_over(&mut self, from: &str, to: &str) -> Result<(), AccountError> {
        let (wire_from, wire_to) = (self.at(from), self.at(to));
        match bounded(self.io, self.sftp.rename(&wire_from, &wire_to)).await? {
            Ok(()) => return Ok(()),
            Err(e) if !self.exists(to).await? => return Err(write_error(e)),
            Err(_) => {}
        }
        self.remove(to).await?;
        bounded(self.io, self.sftp.rename(wire_from, wire_to))
            .await?
            .map_err(write_error)
    }

    /// Best effort: a temporary upload that failed does not stay on the account.
    async fn discard(&mut self, temp: &str) {
        let gone = matches!(
            bounded(self.io, self.sftp.remove_file(self.at(temp))).await,
            Ok(Ok(()))
        );
        if !gone {
            self.leftover = Some(temp.to_owned());
        }
    }

    async fn write_temp(
        &mut self,
        temp: &str,
        reader: &mut (dyn AsyncRead + Unpin + Send),
    ) -> Result<u64, AccountError> {
        let mut file = bounded(self.io, self.sftp.create(self.at(temp)))
            .await?
            .map_err(write_error)?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            bounded(self.io, file.write_all(&buf[..n]))
                .await?
                .map_err(|e| AccountError::Transport(format!("writing {temp}: {e}")))?;
            total += n as u64;
        }
        bounded(self.io, file.shutdown())
            .await?
            .map_err(|e| AccountError::Transport(format!("closing {temp}: {e}")))?;
        Ok(total)
    }
}

#[async_trait::async_trait]
impl Account for SftpAccount {
    async fn size(&mut self, path: &str) -> Result<Option<u64>, AccountError> {
        Ok(self.stat(path).await?.map(|s| s.size))
    }

    async fn stat(&mut self, path: &str) -> Result<Option<Stat>, AccountError> {
        match bounded(self.io, self.sftp.metadata(self.at(path))).await? {
            Ok(m) if m.is_dir() => Ok(None),
            Ok(m) => Ok(Some(Stat {
                size: m.size.unwrap_or(0),
                modified: m
                    .mtime
                    .and_then(|t| DateTime::from_timestamp(i64::from(t), 0))
                    .map(|t| t.naive_utc()),
            })),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(transport(e)),
        }
    }

    async fn list(&mut self, dir: &str) -> Result<Vec<String>, AccountError> {
        match bounded(self.io, self.sftp.read_dir(self.at(dir))).await? {
            Ok(entries) => Ok(entries
                .map(|e| e.file_name())
                .filter(|n| n != "." && n != "..")
                .collect()),
            Err(e) if is_not_found(&e) => Ok(Vec::new()),
            Err(e) => Err(transport(e)),
        }
    }

    async fn download(
        &mut self,
        path: &str,
        dest: &mut (dyn AsyncWrite + Unpin + Send),
        max_bytes: u64,
        inspect: &mut (dyn for<'b> FnMut(&'b [u8]) + Send),
    ) -> Result<Option<u64>, AccountError> {
        let mut file = match bounded(self.io, self.sftp.open(self.at(path))).await? {
            Ok(f) => f,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(transport(e)),
        };
        let mut buf = vec![0u8; 256 * 1024];
        let mut total: u64 = 0;
        loop {
            let n = bounded(self.io, file.read(&mut buf))
                .await?
                .map_err(|e| AccountError::Transport(format!("reading {path}: {e}")))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > max_bytes {
                return Err(AccountError::TooLarge { limit: max_bytes });
            }
            inspect(&buf[..n]);
            dest.write_all(&buf[..n]).await?;
        }
        dest.flush().await?;
        Ok(Some(total))
    }

    async fn upload(
        &mut self,
        path: &str,
        src: &mut (dyn AsyncRead + Unpin + Send),
    ) -> Result<u64, AccountError> {
        let temp = temp_name(path);
        let written = match self.write_temp(&temp, src).await {
            Ok(n) => n,
            Err(e) => {
                self.discard(&temp).await;
                return Err(e);
            }
        };
        if let Err(e) = self.rename_over(&temp, path).await {
            self.discard(&temp).await;
            return Err(e);
        }
        Ok(written)
    }

    async fn append(&mut self, path: &str, bytes: &[u8]) -> Result<(), AccountError> {
        let end = self.size(path).await?.unwrap_or(0);
        let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::APPEND;
        let mut file = bounded(self.io, self.sftp.open_with_flags(self.at(path), flags))
            .await?
            .map_err(write_error)?;
        bounded(self.io, file.seek(std::io::SeekFrom::Start(end)))
            .await?
            .map_err(|e| AccountError::Transport(format!("appending to {path}: {e}")))?;
        bounded(self.io, file.write_all(bytes))
            .await?
            .map_err(|e| AccountError::Transport(format!("appending to {path}: {e}")))?;
        bounded(self.io, file.shutdown())
            .await?
            .map_err(|e| AccountError::Transport(format!("appending to {path}: {e}")))?;
        Ok(())
    }

    async fn rename(&mut self, from: &str, to: &str) -> Result<(), AccountError> {
        self.rename_over(from, to).await
    }

    async fn remove(&mut self, path: &str) -> Result<(), AccountError> {
        match bounded(self.io, self.sftp.remove_file(self.at(path))).await? {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(write_error(e)),
        }
    }

    async fn mkdir(&mut self, dir: &str) -> Result<(), AccountError> {
        match bounded(self.io, self.sftp.create_dir(self.at(dir))).await? {
            Ok(()) => Ok(()),
            Err(e) => match bounded(self.io, self.sftp.metadata(self.at(dir))).await? {
                Ok(m) if m.is_dir() => Ok(()),
                _ => Err(write_error(e)),
            },
        }
    }

    fn take_leftover(&mut self) -> Option<String> {
        self.leftover.take()
    }

    /// One SFTP round trip (SSH keepalives already run in the background).
    async fn keepalive(&mut self) -> Result<(), AccountError> {
        bounded(self.io, self.sftp.canonicalize("/"))
            .await?
            .map(|_| ())
            .map_err(transport)
    }

    async fn quit(self: Box<Self>) {
        let _ = bounded(self.io, async {
            let _ = self.sftp.close().await;
            let _ = self
                .handle
                .disconnect(russh::Disconnect::ByApplication, "", "en")
                .await;
        })
        .await;
    }
}

async fn bounded<T>(limit: Duration, fut: impl Future<Output = T>) -> Result<T, AccountError> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| AccountError::Timeout(limit))
}

fn is_not_found(e: &SftpError) -> bool {
    matches!(e, SftpError::Status(s) if s.status_code == StatusCode::NoSuchFile)
}

/// A write the server refuses (permissions, an unsupported operation) is [`AccountError::Refused`];
/// the rest is transport trouble.
fn write_error(e: SftpError) -> AccountError {
    match &e {
        SftpError::Status(s)
            if matches!(
                s.status_code,
                StatusCode::PermissionDenied | StatusCode::OpUnsupported | StatusCode::NoSuchFile
            ) =>
        {
            AccountError::Refused(e.to_string())
        }
        SftpError::Timeout => AccountError::Transport("sftp: request timed out".into()),
        _ => transport(e),
    }
}

fn transport(e: SftpError) -> AccountError {
    AccountError::Transport(format!("sftp: {e}"))
}

fn ssh_error(e: russh::Error) -> AccountError {
    AccountError::Transport(format!("ssh: {e}"))
}
