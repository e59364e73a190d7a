//! FTPS fetch+hash: one download of a file over the worker's own account client
//! ([`worker::account::ftps::FtpsConnector`], used through the [`worker::account::Account`]
//! interface the pipeline uses). The file sink takes the steps of the pipeline's fetch stage
//! (`worker::pipeline::fetch::fetch`): SIZE against the limit, then `Account::download` into a
//! temporary file through a 256 KiB `BufWriter`, SHA1 on the way. That stage reads through a
//! `JobRun` (a tenant's settings, lease and log), which a bare download does not have, so the
//! steps are taken here on the same interface. The clock covers what a `curl` run covers:
//! connect, TLS, login, SIZE, RETR, the transfer and QUIT.
//!
//! The discard sink splits the cost for a diagnosis: the same download with the bytes dropped,
//! hashed or not.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use sha1::{Digest, Sha1};
use shared::ApiKey;
use tokio::io::{AsyncWrite, BufWriter};
use worker::account::Account;
use worker::account::ftps::FtpsConnector;

/// Where the file is and who reads it.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub key: ApiKey,
    pub path: String,
}

/// Where the downloaded bytes go.
#[derive(Debug, Clone)]
pub enum Sink {
    /// A temporary file in this directory, as `fetch` writes it (the real pipeline).
    TempFile(PathBuf),
    /// Nowhere (`tokio::io::sink`): the transfer and TLS alone.
    Discard,
}

/// What one download measured.
#[derive(Debug, Clone)]
pub struct Run {
    pub bytes: u64,
    /// Connect to QUIT, like a `curl` process's wall time.
    pub total: Duration,
    /// RETR to the end of the transfer.
    pub transfer: Duration,
    /// `None` when hashing was off.
    pub sha1: Option<String>,
}

impl Run {
    pub fn mib_per_sec(&self) -> f64 {
        self.bytes as f64 / crate::MIB / self.total.as_secs_f64()
    }
}

/// Downloads `target.path` once. `max_bytes` replaces the tenant's file-size limit. `hash`
/// applies to the discard sink only: the pipeline's fetch always hashes.
pub async fn download_once(
    connector: &FtpsConnector,
    target: &Target,
    sink: &Sink,
    hash: bool,
    max_bytes: u64,
) -> anyhow::Result<Run> {
    let started = Instant::now();
    let mut session: Box<dyn Account> = Box::new(
        connector
            .connect(&target.host, target.port, &target.user, &target.key)
            .await?,
    );
    // As the fetch stage does: SIZE first, a file over the limit refused before any transfer.
    let size = session
        .size(&target.path)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no file {} on the server", target.path))?;
    anyhow::ensure!(
        size <= max_bytes,
        "{size} bytes, over the limit of {max_bytes}"
    );
    let mut hasher = (hash || matches!(sink, Sink::TempFile(_))).then(Sha1::new);
    let mut inspect = |chunk: &[u8]| {
        if let Some(h) = hasher.as_mut() {
            h.update(chunk);
        }
    };
    let transfer_started = Instant::now();
    // The temporary file is kept until the clock stops, as curl's output file is.
    let (bytes, _file) = match sink {
        Sink::TempFile(dir) => {
            let file = tempfile::Builder::new()
                .prefix("user-import-")
                .suffix(".csv")
                .tempfile_in(dir)?;
            let mut out =
                BufWriter::with_capacity(256 * 1024, tokio::fs::File::from_std(file.reopen()?));
            let n = download(session.as_mut(), target, &mut out, max_bytes, &mut inspect).await?;
            (n, Some(file))
        }
        Sink::Discard => {
            let mut out = tokio::io::sink();
            let n = download(session.as_mut(), target, &mut out, max_bytes, &mut inspect).await?;
            (n, None)
        }
    };
    let transfer = transfer_started.elapsed();
    session.quit().await;
    let total = started.elapsed();
    if bytes != size {
        anyhow::bail!("SIZE said {size} bytes, the transfer brought {bytes}");
    }
    Ok(Run {
        bytes,
        total,
        transfer,
        sha1: hasher.map(|h| hex::encode(h.finalize())),
    })
}

async fn download<W: AsyncWrite + Unpin + Send>(
    session: &mut dyn Account,
    target: &Target,
    out: &mut W,
    max_bytes: u64,
    inspect: &mut (dyn for<'b> FnMut(&'b [u8]) + Send),
) -> anyhow::Result<u64> {
    session
        .download(&target.path, out, max_bytes, inspect)
        .await?
        .ok_or_else(|| anyhow::anyhow!("{} vanished between SIZE and RETR", target.path))
}

/// SHA1 of `total` bytes of memory in `chunk`-sized updates: the hash's own speed, MiB/s.
pub fn sha1_rate(total: u64, chunk: usize) -> f64 {
    let buf: Vec<u8> = (0..chunk).map(|i| (i * 31 % 251) as u8).collect();
    let mut hasher = Sha1::new();
    let started = Instant::now();
    let mut done = 0u64;
    while done < total {
        hasher.update(&buf);
        done += chunk as u64;
    }
    std::hint::black_box(hasher.finalize());
    done as f64 / crate::MIB / started.elapsed().as_secs_f64()
}
