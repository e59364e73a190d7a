//! Import benchmarks (see `bench::import`):
//! - `rate`: rows/s and API requests/s against an in-process platform fake with a fixed latency,
//!   for a create pass, an update pass and an unchanged pass of the same users;
//! - `rss`: one import against a platform fake in another process, then this process's peak RSS;
//! - `options`: what the tenant options cost or save: an unchanged pass checked on the platform vs
//!   skipped by `skip_unchanged` (Redis), and an update pass with and without the mass-change
//!   guard's plan.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use bench::import::{Pass, Platform};
use clap::{Parser, Subcommand};
use platform_fake::{FakeConfig, Faults, TenantSeed};
use shared::ApiKey;
use worker::platform::PlatformClient;

#[derive(Debug, Parser)]
#[command(name = "bench-import")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Rows/s and requests/s against an in-process fake with `--latency-ms` per request.
    Rate {
        #[arg(long, default_value_t = 2000)]
        rows: u64,
        /// Requests in flight; repeat for several runs (each with a fresh fake).
        #[arg(long = "concurrency", default_values_t = [8, 32])]
        concurrency: Vec<usize>,
        #[arg(long, default_value_t = 20)]
        latency_ms: u64,
        #[arg(long, default_value_t = 5)]
        poll_ms: u64,
        /// The fake answers a write's final status in its 202 (no poll needed).
        #[arg(long)]
        final_in_answer: bool,
        #[arg(long)]
        work_dir: Option<PathBuf>,
    },
    /// Unchanged rows checked vs skipped (`skip_unchanged`), updates with and without the guard.
    Options {
        #[arg(long, default_value_t = 5000)]
        rows: u64,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, default_value_t = 20)]
        latency_ms: u64,
        #[arg(long, default_value_t = 5)]
        poll_ms: u64,
        /// The Redis `skip_unchanged` uses (a key prefix of its own, deleted at the end).
        #[arg(long, default_value = "redis://127.0.0.1:6379/")]
        redis_url: String,
        #[arg(long)]
        work_dir: Option<PathBuf>,
    },
    /// One import of `--file` against the fake at `--base-url`; prints the peak RSS.
    Rss {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        base_url: String,
        #[arg(long)]
        domain: String,
        /// File holding the tenant's API key on the fake.
        #[arg(long)]
        key_file: PathBuf,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 5)]
        poll_ms: u64,
        #[arg(long)]
        work_dir: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Rate {
            rows,
            concurrency,
            latency_ms,
            poll_ms,
            final_in_answer,
            work_dir,
        } => {
            let dir = tempfile::tempdir_in(work_dir.unwrap_or_else(std::env::temp_dir))?;
            for c in concurrency {
                rate(
                    rows,
                    c,
                    latency_ms,
                    Duration::from_millis(poll_ms),
                    final_in_answer,
                    dir.path(),
                )
                .await?;
            }
            Ok(())
        }
        Command::Options {
            rows,
            concurrency,
            latency_ms,
            poll_ms,
            redis_url,
            work_dir,
        } => {
            let dir = tempfile::tempdir_in(work_dir.unwrap_or_else(std::env::temp_dir))?;
            options(
                rows,
                concurrency,
                latency_ms,
                Duration::from_millis(poll_ms),
                &redis_url,
                dir.path(),
            )
            .await
        }
        Command::Rss {
            file,
            base_url,
            domain,
            key_file,
            concurrency,
            poll_ms,
            work_dir,
        } => {
            let key = std::fs::read_to_string(&key_file)
                .with_context(|| format!("reading {}", key_file.display()))?;
            let platform = Platform {
                base_url,
                domain,
                key: ApiKey::new(key.trim()),
            };
            let work_dir = work_dir.unwrap_or_else(std::env::temp_dir);
            rss(
                &platform,
                &file,
                concurrency,
                Duration::from_millis(poll_ms),
                &work_dir,
            )
            .await
        }
    }
}

/// A platform fake in this process, one tenant, `latency_ms` added to every call; keep the handle
/// alive while it is used.
async fn in_process_fake(
    latency_ms: u64,
    final_in_answer: bool,
) -> anyhow::Result<(platform_fake::FakeHandle, Platform)> {
    let domain = "bench.learning-admin.com";
    let key = "bench-key";
    let fake = platform_fake::spawn(FakeConfig {
        tenants: vec![TenantSeed::new(domain, key)],
        faults: Faults {
            latency_ms,
            final_status_in_answer: final_in_answer,
            ..Faults::default()
        },
    })
    .await?;
    let platform = Platform {
        base_url: fake.base_url(),
        domain: domain.into(),
        key: ApiKey::new(key),
    };
    Ok((fake, platform))
}

async fn rate(
    rows: u64,
    concurrency: usize,
    latency_ms: u64,
    poll: Duration,
    final_in_answer: bool,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    let (fake, platform) = in_process_fake(latency_ms, final_in_answer).await?;
    let tenant = bench::import::tenant(&platform)?;
    let settings = bench::import::platform_settings(poll);
    let http = PlatformClient::http_client(&settings)?;
    let first = dir.join(format!("rate-{rows}-v0.csv"));
    let second = dir.join(format!("rate-{rows}-v1.csv"));
    bench::csvgen::write(&first, rows, 0)?;
    bench::csvgen::write(&second, rows, 1)?;
    let bound = concurrency as f64 * 1000.0 / latency_ms as f64;
    let slept = bench::import::timer_probe(Duration::from_millis(latency_ms), 50).await;
    println!(
        "import-timer sleep_ms={latency_ms} mean_ms={:.2}",
        slept.as_secs_f64() * 1000.0
    );
    let probe =
        bench::import::probe(&http, &tenant, &platform, &settings, concurrency, rows).await?;
    println!(
        "import-probe concurrency={concurrency} latency_ms={latency_ms} requests={} req_s={:.1} bound_req_s={bound:.0} req_pct={:.1} mean_latency_ms={:.2}",
        probe.requests,
        probe.requests_per_sec(),
        100.0 * probe.requests_per_sec() / bound,
        probe.mean_latency.as_secs_f64() * 1000.0,
    );
    for (label, file) in [
        ("create", &first),
        ("update", &second),
        ("unchanged", &second),
    ] {
        fake.reset_calls();
        let pass =
            bench::import::run_pass(&http, &tenant, &platform, &settings, concurrency, file, dir)
                .await
                .with_context(|| format!("{label} pass"))?;
        let calls = fake.calls(&platform.domain);
        let per_row = pass.calls_per_row();
        let row_bound = bound / per_row.max(1.0);
        // The bound from the latency a bare request really has here (the probe's mean), not the
        // fake's nominal one: concurrency ÷ (calls per row × measured latency).
        let measured_bound =
            concurrency as f64 / (per_row.max(1.0) * probe.mean_latency.as_secs_f64());
        println!(
            "import-rate concurrency={concurrency} latency_ms={latency_ms} pass={label} rows={} secs={:.2} rows_s={:.1} row_bound_s={:.1} rows_pct={:.1} measured_row_bound_s={measured_bound:.1} of_measured_pct={:.1} requests={} req_s={:.1} bound_req_s={:.0} req_pct={:.1} of_probe_pct={:.1} calls_per_row={:.2} created={} updated={} unchanged={} problems={} retries={} fake_calls=GetUser:{},SetUser:{},status:{}",
            pass.counts.rows,
            pass.elapsed.as_secs_f64(),
            pass.rows_per_sec(),
            row_bound,
            100.0 * pass.rows_per_sec() / row_bound,
            100.0 * pass.rows_per_sec() / measured_bound,
            pass.requests,
            pass.requests_per_sec(),
            bound,
            100.0 * pass.requests_per_sec() / bound,
            100.0 * pass.requests_per_sec() / probe.requests_per_sec(),
            per_row,
            pass.counts.created,
            pass.counts.updated,
            pass.counts.unchanged,
            pass.problems(),
            pass.retries,
            calls.get("GetUser"),
            calls.get("SetUser"),
            calls.get("status"),
        );
        check(&pass, label)?;
    }
    fake.shutdown().await;
    Ok(())
}

async fn options(
    rows: u64,
    concurrency: usize,
    latency_ms: u64,
    poll: Duration,
    redis_url: &str,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    use shared::registry::{ImportOptions, MassChangeGuard};
    let (fake, platform) = in_process_fake(latency_ms, false).await?;
    let tenant = bench::import::tenant(&platform)?;
    let settings = bench::import::platform_settings(poll);
    let http = PlatformClient::http_client(&settings)?;
    let prefix = format!("bench-options-{}", std::process::id());
    let store =
        worker::import::store::ImportStore::from_settings(&shared::settings::RedisSettings {
            url: shared::secret::Secret::new(redis_url),
            key_prefix: prefix.clone(),
        })?;
    let v0 = dir.join(format!("options-{rows}-v0.csv"));
    let v1 = dir.join(format!("options-{rows}-v1.csv"));
    bench::csvgen::write(&v0, rows, 0)?;
    bench::csvgen::write(&v1, rows, 1)?;
    let plain = bench::import::apply_path_options();
    let skip = ImportOptions {
        skip_unchanged: true,
        ..plain.clone()
    };
    // The guard on, with thresholds no change can pass (updates ≤ 100 % of the existing users):
    // its plan runs, then the import, as for a file the admin would not be asked about.
    let guarded = ImportOptions {
        mass_change_guard: MassChangeGuard {
            max_update_percent: 100,
            max_deactivate_percent: 100,
            ..MassChangeGuard::default()
        },
        ..plain.clone()
    };
    let passes: [(&str, &std::path::Path, &ImportOptions, &str); 6] = [
        ("create", &v0, &plain, "created"),
        ("unchanged-checked", &v0, &plain, "unchanged"),
        ("skip-first", &v0, &skip, "unchanged"),
        ("unchanged-skipped", &v0, &skip, "unchanged"),
        ("update", &v1, &plain, "updated"),
        ("update-guarded", &v0, &guarded, "updated"),
    ];
    for (label, file, opts, expect) in passes {
        fake.reset_calls();
        let pass = bench::import::run_pass_with(
            &http,
            &tenant,
            &platform,
            &settings,
            concurrency,
            file,
            dir,
            opts.clone(),
            store.clone(),
        )
        .await
        .with_context(|| format!("{label} pass"))?;
        let calls = fake.calls(&platform.domain);
        let c = &pass.counts;
        let got = match expect {
            "created" => c.created,
            "updated" => c.updated,
            _ => c.unchanged,
        };
        if got != c.rows || pass.problems() > 0 {
            anyhow::bail!("{label} pass: not every row was {expect}: {c:?}");
        }
        println!(
            "import-options concurrency={concurrency} latency_ms={latency_ms} pass={label} rows={} secs={:.2} rows_s={:.1} requests={} calls_per_row={:.2} fake_calls=GetUser:{},SetUser:{},status:{}",
            c.rows,
            pass.elapsed.as_secs_f64(),
            pass.rows_per_sec(),
            pass.requests,
            pass.calls_per_row(),
            calls.get("GetUser"),
            calls.get("SetUser"),
            calls.get("status"),
        );
    }
    store.forget_all(tenant.name.as_str()).await?;
    fake.shutdown().await;
    Ok(())
}

async fn rss(
    platform: &Platform,
    file: &std::path::Path,
    concurrency: usize,
    poll: Duration,
    work_dir: &std::path::Path,
) -> anyhow::Result<()> {
    let before = bench::proc::memory()?;
    let tenant = bench::import::tenant(platform)?;
    let settings = bench::import::platform_settings(poll);
    let http = PlatformClient::http_client(&settings)?;
    let pass = bench::import::run_pass(
        &http,
        &tenant,
        platform,
        &settings,
        concurrency,
        file,
        work_dir,
    )
    .await?;
    let after = bench::proc::memory()?;
    println!(
        "import-rss file={} bytes={} rows={} concurrency={concurrency} secs={:.1} rows_s={:.0} req_s={:.0} created={} problems={} peak_rss_kib={} peak_rss_mib={:.1} peak_after_validation_kib={} rss_after_validation_kib={} rss_at_end_kib={} rss_at_start_kib={}",
        file.display(),
        std::fs::metadata(file)?.len(),
        pass.counts.rows,
        pass.elapsed.as_secs_f64(),
        pass.rows_per_sec(),
        pass.requests_per_sec(),
        pass.counts.created,
        pass.problems(),
        after.peak_kib,
        after.peak_kib as f64 / 1024.0,
        pass.after_validation.map_or(0, |m| m.peak_kib),
        pass.after_validation.map_or(0, |m| m.current_kib),
        after.current_kib,
        before.current_kib,
    );
    check(&pass, "create")
}

/// A benchmark whose rows did not all go through says nothing about speed: fail loudly.
fn check(pass: &Pass, label: &str) -> anyhow::Result<()> {
    let expected = match label {
        "create" => pass.counts.created,
        "update" => pass.counts.updated,
        _ => pass.counts.unchanged,
    };
    if expected != pass.counts.rows || pass.problems() > 0 {
        anyhow::bail!(
            "{label} pass: not every row was {label}d as expected: {:?}",
            pass.counts
        );
    }
    Ok(())
}
