//! The tenant's account: its folders and files on the file server (`/uploads`, `/tmp`, `/log`,
//! `/reports`, `/archive`), behind one interface, [`Account`]. FTPS ([`ftps`]) and SFTP
//! ([`sftp`]) implement it; the tenant's registry entry (`transport`) says which one it uses. Nothing above this module knows which protocol it talks: the pipeline reads and
//! writes through `dyn Account`, which it gets from [`Connector::connect`].
//!
//! A session from [`Connector::connect`] survives a job of any length ([`Resilient`]): it logs in
//! again when the connection is gone and re-runs only what is safe to re-run. Uploads are never
//! left partial: every implementation writes to a temporary name ([`temp_name`]) and renames it
//! into place. [`ensure_folders`] creates the account's folders when they are missing.
//!
//! This is a client: it never imports the pipeline, the import or the fleet.

pub mod ftps;
pub mod resilient;
pub mod sftp;

pub use resilient::Resilient;

use std::time::Duration;

use chrono::NaiveDateTime;
use shared::ApiKey;
use shared::registry::{Tenant, Transport};
use shared::settings::Settings;
use tokio::io::{AsyncRead, AsyncWrite};

/// What went wrong talking to the tenant's account, sorted by what the caller does about it.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("login refused")]
    Credentials,
    #[error("server certificate refused: {0}")]
    Certificate(String),
    #[error("file larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The account refused a write (STOR, APPE, MKD, rename: permissions, quota, a bad name). The
    /// server is up and will refuse it again: the caller may make it permanent.
    #[error("refused by the account: {0}")]
    Refused(String),
    /// The server's host key is not the pinned one (SFTP): permanent until the registry says
    /// otherwise.
    #[error("server host key refused: {0}")]
    HostKey(String),
    /// Network trouble, a closed connection, a server error worth retrying.
    #[error("{0}")]
    Transport(String),
    #[error("local file: {0}")]
    LocalIo(#[from] std::io::Error),
}

/// A file's size and modification time (UTC, to the second; `None` when the server does not
/// tell).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub size: u64,
    pub modified: Option<NaiveDateTime>,
}

/// One logged-in session on a tenant's account. Paths are absolute from the account's root.
/// "No such file" is never an error: it is `None`, an empty list, or (for `remove`) success.
#[async_trait::async_trait]
pub trait Account: Send + std::fmt::Debug {
    /// The size of a file, `None` if there is none.
    async fn size(&mut self, path: &str) -> Result<Option<u64>, AccountError>;
    /// Size and modification time, `None` if there is no file.
    async fn stat(&mut self, path: &str) -> Result<Option<Stat>, AccountError>;
    /// The names (not paths) of the entries of `dir`; empty when the folder is missing.
    async fn list(&mut self, dir: &str) -> Result<Vec<String>, AccountError>;
    /// Streams `path` into `dest`, handing each chunk to `inspect` (a hasher) on the way, and
    /// refuses to go past `max_bytes`. `Ok(None)` when there is no file.
    async fn download(
        &mut self,
        path: &str,
        dest: &mut (dyn AsyncWrite + Unpin + Send),
        max_bytes: u64,
        inspect: &mut (dyn for<'b> FnMut(&'b [u8]) + Send),
    ) -> Result<Option<u64>, AccountError>;
    /// Uploads (replaces) a file; returns the bytes written.
    async fn upload(
        &mut self,
        path: &str,
        src: &mut (dyn AsyncRead + Unpin + Send),
    ) -> Result<u64, AccountError>;
    /// Appends to a file, created if missing.
    async fn append(&mut self, path: &str, bytes: &[u8]) -> Result<(), AccountError>;
    async fn rename(&mut self, from: &str, to: &str) -> Result<(), AccountError>;
    /// Deletes a file; one already gone is fine.
    async fn remove(&mut self, path: &str) -> Result<(), AccountError>;
    /// Creates a folder; an existing one is fine.
    async fn mkdir(&mut self, dir: &str) -> Result<(), AccountError>;
    /// Keeps an idle session open (the server's idle timeout).
    async fn keepalive(&mut self) -> Result<(), AccountError>;
    /// The temporary file of a failed upload that this session could not remove (its
    /// connection was gone); taken once. A new session removes it (see [`Resilient`]).
    fn take_leftover(&mut self) -> Option<String> {
        None
    }
    /// Ends the session politely (errors ignored: it is going anyway).
    async fn quit(self: Box<Self>);
}

/// The temporary name an upload is written to before it is renamed into place: in the same
/// folder (a rename never crosses folders), hidden (a leading dot), and unique
/// (`/reports/r.csv` → `/reports/.r.csv.part-3f9a2c1b`).
pub fn temp_name(path: &str) -> String {
    let (dir, name) = match path.rsplit_once('/') {
        Some((dir, name)) => (dir, name),
        None => ("", path),
    };
    let tag: u32 = rand::random();
    if dir.is_empty() && !path.starts_with('/') {
        format!(".{name}.part-{tag:08x}")
    } else {
        format!("{dir}/.{name}.part-{tag:08x}")
    }
}

/// Whether `name` is one of [`temp_name`]'s (an upload in progress or one that was cut off).
pub fn is_temp_name(name: &str) -> bool {
    let name = name.rsplit('/').next().unwrap_or(name);
    name.starts_with('.')
        && name
            .rsplit_once(".part-")
            .is_some_and(|(_, tag)| tag.len() == 8 && tag.chars().all(|c| c.is_ascii_hexdigit()))
}

/// The folders of a tenant's account the worker writes to (`/uploads` is the tenant's).
pub const ACCOUNT_FOLDERS: [&str; 4] = ["/tmp", "/log", "/reports", "/archive"];

/// Creates the account's folders ([`ACCOUNT_FOLDERS`]) that are missing; call once per job,
/// after logging in. An account that only has `/uploads` then works like a complete one.
pub async fn ensure_folders(account: &mut dyn Account) -> Result<(), AccountError> {
    for dir in ACCOUNT_FOLDERS {
        account.mkdir(dir).await?;
    }
    Ok(())
}

/// Whether a file of that exact name is in `dir`.
pub async fn exists_in(
    account: &mut dyn Account,
    dir: &str,
    name: &str,
) -> Result<bool, AccountError> {
    Ok(account.list(dir).await?.iter().any(|n| n == name))
}

/// A small file's contents (at most `max_bytes`), `None` if there is none.
pub async fn read_small(
    account: &mut dyn Account,
    path: &str,
    max_bytes: u64,
) -> Result<Option<Vec<u8>>, AccountError> {
    let mut out = Vec::new();
    let got = account
        .download(path, &mut out, max_bytes, &mut |_| {})
        .await?;
    Ok(got.map(|_| out))
}

/// A file fetched from the account: a local temporary copy, hashed on the way.
#[derive(Debug)]
pub struct LocalFile {
    pub file: tempfile::NamedTempFile,
    pub size: u64,
    pub sha1: shared::Sha1Digest,
}

/// Streams `path` to a temporary file in `dir` (256 KiB buffered writes), computing its SHA1 on
/// the way, refusing files over `max_bytes` before (SIZE) and during the transfer. `Ok(None)`:
/// there is no file (or it went between SIZE and the transfer).
pub async fn fetch_file(
    account: &mut dyn Account,
    path: &str,
    max_bytes: u64,
    dir: &std::path::Path,
) -> Result<Option<LocalFile>, AccountError> {
    use sha1::Digest;
    match account.size(path).await? {
        None => return Ok(None),
        Some(size) if size > max_bytes => return Err(AccountError::TooLarge { limit: max_bytes }),
        Some(_) => {}
    }
    let file = tempfile::Builder::new()
        .prefix("user-import-")
        .suffix(".csv")
        .tempfile_in(dir)?;
    let mut out =
        tokio::io::BufWriter::with_capacity(256 * 1024, tokio::fs::File::from_std(file.reopen()?));
    let mut hasher = sha1::Sha1::new();
    let size = account
        .download(path, &mut out, max_bytes, &mut |chunk| hasher.update(chunk))
        .await?;
    Ok(size.map(|size| LocalFile {
        file,
        size,
        sha1: shared::Sha1Digest::from_bytes(hasher.finalize().into()),
    }))
}

/// Opens sessions on tenants' accounts; built once at start-up.
#[derive(Debug, Clone)]
pub struct Connector {
    ftps: ftps::FtpsConnector,
    sftp: sftp::SftpConnector,
}

impl Connector {
    /// SFTP uses the file server's timeouts of `[ftps]`, and looks for a tenant's private key in
    /// the secrets folder (`<registry.secrets_dir>/<tenant>.ssh-key`).
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        Ok(Self {
            ftps: ftps::FtpsConnector::from_settings(&settings.ftps)?,
            sftp: sftp::SftpConnector::new(
                settings.ftps.connect_timeout,
                settings.ftps.io_timeout,
                settings.registry.secrets_dir.clone(),
            ),
        })
    }

    /// From the two connectors (tests and benchmarks).
    pub fn new(ftps: ftps::FtpsConnector, sftp: sftp::SftpConnector) -> Self {
        Self { ftps, sftp }
    }

    /// Logs in to `tenant`'s account with its key. The session reconnects by itself when its
    /// connection is lost (see [`Resilient`]); a wrong key or certificate fails here.
    pub async fn connect(
        &self,
        tenant: &Tenant,
        key: &ApiKey,
    ) -> Result<Box<dyn Account>, AccountError> {
        let session = Resilient::open(self.clone(), tenant.clone(), key.clone()).await?;
        Ok(Box::new(session))
    }

    /// One plain session of the tenant's transport, without reconnection.
    pub async fn connect_once(
        &self,
        tenant: &Tenant,
        key: &ApiKey,
    ) -> Result<Box<dyn Account>, AccountError> {
        match tenant.transport {
            Transport::Ftps => {
                let session = self
                    .ftps
                    .connect(
                        &tenant.ftps_host,
                        tenant.ftps_port,
                        tenant.name.as_str(),
                        key,
                    )
                    .await?;
                Ok(Box::new(session))
            }
            Transport::Sftp => {
                let target = sftp::SftpTarget {
                    host: &tenant.ftps_host,
                    port: tenant.sftp_port,
                    user: tenant.name.as_str(),
                    host_keys: &tenant.sftp_host_keys,
                };
                Ok(Box::new(self.sftp.connect(target, key).await?))
            }
        }
    }

    /// The FTPS connector itself (tests and the FTPS benchmark).
    pub fn ftps(&self) -> &ftps::FtpsConnector {
        &self.ftps
    }

    /// The SFTP connector itself (tests and the SFTP benchmark).
    pub fn sftp(&self) -> &sftp::SftpConnector {
        &self.sftp
    }
}
