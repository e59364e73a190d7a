//! FTPS fetch+hash benchmark (see `bench::fetch`): downloads a file over the worker's FTPS client
//! and prints one `ftps-ours` line per run; `sha1-rate` prints the SHA1 implementation's speed.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use shared::ApiKey;
use shared::settings::FtpsSettings;
use worker::account::ftps::FtpsConnector;

#[derive(Debug, Parser)]
#[command(name = "bench-ftps")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Download a file over FTPS `--runs` times.
    Download(Download),
    /// Hash `--mib` MiB of memory with the worker's SHA1 implementation.
    Sha1Rate {
        #[arg(long, default_value_t = 1024)]
        mib: u64,
    },
}

#[derive(Debug, clap::Args)]
struct Download {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 2121)]
    port: u16,
    #[arg(long, default_value = "demo")]
    user: String,
    /// File holding the FTPS password (the tenant's API key).
    #[arg(long)]
    key_file: PathBuf,
    /// PEM CA file the server's certificate must chain to.
    #[arg(long)]
    ca_file: PathBuf,
    /// Path on the server.
    #[arg(long)]
    path: String,
    #[arg(long, default_value_t = 1)]
    runs: u32,
    #[arg(long, value_enum, default_value_t = SinkArg::File)]
    sink: SinkArg,
    /// Skip the SHA1 (diagnosis only: with `--sink discard`; the file sink is the pipeline's
    /// fetch, which always hashes).
    #[arg(long)]
    no_hash: bool,
    /// Where the temporary file goes (the worker's `work_dir`); the system temp dir by default.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Largest file accepted.
    #[arg(long, default_value_t = 4 << 30)]
    max_bytes: u64,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SinkArg {
    /// A temporary file, written by the pipeline's fetch.
    File,
    /// Drop the bytes.
    Discard,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Download(d) => download(d).await,
        Command::Sha1Rate { mib } => {
            let rate = bench::fetch::sha1_rate(mib << 20, 256 * 1024);
            println!("sha1-rate impl=sha1-crate mib={mib} mib_s={rate:.1}");
            Ok(())
        }
    }
}

async fn download(d: Download) -> anyhow::Result<()> {
    if d.no_hash && matches!(d.sink, SinkArg::File) {
        anyhow::bail!("--no-hash goes with --sink discard: the pipeline's fetch always hashes");
    }
    let key = std::fs::read_to_string(&d.key_file)
        .with_context(|| format!("reading {}", d.key_file.display()))?;
    let settings = FtpsSettings {
        ca_file: Some(d.ca_file.clone()),
        ..FtpsSettings::default()
    };
    let connector = FtpsConnector::from_settings(&settings)?;
    let target = bench::fetch::Target {
        host: d.host,
        port: d.port,
        user: d.user,
        key: ApiKey::new(key.trim()),
        path: d.path,
    };
    let sink = match d.sink {
        SinkArg::File => {
            bench::fetch::Sink::TempFile(d.work_dir.unwrap_or_else(std::env::temp_dir))
        }
        SinkArg::Discard => bench::fetch::Sink::Discard,
    };
    let sink_name = match d.sink {
        SinkArg::File => "file",
        SinkArg::Discard => "discard",
    };
    for run in 1..=d.runs {
        let r = bench::fetch::download_once(&connector, &target, &sink, !d.no_hash, d.max_bytes)
            .await
            .with_context(|| format!("run {run}"))?;
        println!(
            "ftps-ours run={run} sink={sink_name} hash={} bytes={} total_s={:.3} transfer_s={:.3} mib_s={:.1} sha1={}",
            if d.no_hash { "off" } else { "on" },
            r.bytes,
            r.total.as_secs_f64(),
            r.transfer.as_secs_f64(),
            r.mib_per_sec(),
            r.sha1.as_deref().unwrap_or("-"),
        );
    }
    Ok(())
}
