//! FTPS fetch+hash: one download of a file with the worker's own code. The file sink is the
//! pipeline's fetch itself ([`worker::account::fetch_file`]: SIZE, RETR streamed to a
//! temporary file through its buffered writer, SHA1 on the way), on an account opened by the
//! worker's FTPS client ([`worker::account::ftps::FtpsConnector`]). The clock covers what a
//! `curl` run covers: connect, TLS, login, SIZE, RETR, the transfer and QUIT.
//!
//! The discard sink splits the cost for a diagnosis: the same account's
//! [`worker::account::Account::download`] with the bytes dropped, hashed or not.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use sha1::{Digest, Sha1};
use shared::ApiKey;
use worker::account::Account;
use worker::account::fetch_file;
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
    let missing = || anyhow::anyhow!("no file {} on the server", target.path);
    // The temporary file is kept until the clock stops, as curl's output file is.
    let (bytes, transfer, sha1, _file) = match sink {
        Sink::TempFile(dir) => {
            // SIZE is inside the pipeline's fetch, so inside this transfer time too.
            let transfer_started = Instant::now();
            let fetched = fetch_file(session.as_mut(), &target.path, max_bytes, dir)
                .await?
                .ok_or_else(missing)?;
            let transfer = transfer_started.elapsed();
            let sha1 = fetched.sha1.as_str().to_owned();
            (fetched.size, transfer, Some(sha1), Some(fetched.file))
        }
        Sink::Discard => {
            let size = session.size(&target.path).await?.ok_or_else(missing)?;
            let mut hasher = hash.then(Sha1::new);
            let transfer_started = Instant::now();
            let bytes = session
                .download(
                    &target.path,
                    &mut tokio::io::sink(),
                    max_bytes,
                    &mut |chunk| {
                        if let Some(h) = hasher.as_mut() {
                            h.update(chunk);
                        }
                    },
                )
                .await?
                .ok_or_else(|| anyhow::anyhow!("{} vanished between SIZE and RETR", target.path))?;
            let transfer = transfer_started.elapsed();
            if bytes != size {
                anyhow::bail!("SIZE said {size} bytes, the transfer brought {bytes}");
            }
            (
                bytes,
                transfer,
                hasher.map(|h| hex::encode(h.finalize())),
                None,
            )
        }
    };
    session.quit().await;
    let total = started.elapsed();
    Ok(Run {
        bytes,
        total,
        transfer,
        sha1,
    })
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
