//! `bench-fleet`: the fleet's figures against the real RabbitMQ and Redis, a real vsftpd, the SMTP
//! sink and the platform fake (`scripts/bench-fleet.sh` runs it in release mode and keeps the
//! output in `docs/bench-fleet-latest.txt`). Figures, not tests: nothing here asserts a speed.
//!
//! 1. **publish**: `scheduler once` for a registry of N tenants (default 10,000): claim in Redis,
//!    persistent publish with publisher confirms and the mandatory flag, commit — the scheduler's
//!    own code, timed from the first claim to the last commit; the queue depth is read back.
//! 2. **latency**: publish → pipeline start on an idle fleet (one worker, nothing queued): a
//!    confirmed publish of one job at a time, timed from just before the publish to the moment
//!    the worker starts the pipeline (lock taken: `JobEvent::started`); the job then runs to its
//!    end (no file: the cheapest job) before the next is published.
//! 3. **throughput**: T tenants (default 200), each with a file of R rows (default 20) never seen
//!    before, against the fake with 20 ms added to every API call; 1, 2 and 4 workers (each its
//!    own AMQP and Redis connections, prefetch P, in this process), timed from the first publish
//!    to the last `imported`. Every job must end `imported` (a delivery the fleet retries by
//!    itself is counted and shown) and the fake must hold T × R users, or the run fails. The CPU
//!    time of this process (workers, fake, SMTP sink) and of vsftpd is printed per job.
//!
//! ```text
//! cargo run --release -p bench --bin bench-fleet -- [--publish N] [--latency N]
//!     [--tenants T] [--rows R] [--workers 1,2,4] [--prefetch P] [--only publish,latency,throughput]
//! ```
//!
//! The servers, tenants and workers are the integration tests' own (the `harness` library of the
//! `tests` package).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use chrono::Utc;
use clap::Parser;
use lapin::{Connection, ConnectionProperties};
use platform_fake::Faults;
use scheduler::{Options, Scheduler};
use shared::health::Health;
use shared::job::{JobMessage, JobV1, Trigger};
use shared::registry::Registry;
use shared::secret::Secret;
use shared::settings::Settings;
use tokio::sync::mpsc;

use harness::fixtures::{TenantEntry, users_csv};
use harness::fleet_env::{self, FleetEnv, FleetOptions};

#[derive(Debug, Parser)]
#[command(name = "bench-fleet")]
struct Args {
    /// Tenants published by `scheduler once`.
    #[arg(long, default_value_t = 10_000)]
    publish: usize,
    /// Jobs timed from publish to pipeline start, one at a time.
    #[arg(long, default_value_t = 200)]
    latency: usize,
    /// Tenants of the throughput runs, each with one new file.
    #[arg(long, default_value_t = 200)]
    tenants: usize,
    /// New rows in each tenant's file.
    #[arg(long, default_value_t = 20)]
    rows: usize,
    /// Worker counts of the throughput runs, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    workers: Vec<usize>,
    /// Prefetch of each worker.
    #[arg(long, default_value_t = 4)]
    prefetch: u16,
    /// The benchmarks to run.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "publish,latency,throughput"
    )]
    only: Vec<String>,
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("bench-fleet: error: {e:#}");
        std::process::exit(1);
    }
}

async fn run() -> Result<()> {
    let args = Args::parse();
    ensure!(
        args.tenants > 0 && args.rows > 0 && args.prefetch > 0,
        "sizes must be positive"
    );
    bench::fleet::print_machine();
    if args.only.iter().any(|o| o == "publish") {
        publish(args.publish).await?;
    }
    if args.only.iter().any(|o| o == "latency") {
        latency(args.latency).await?;
    }
    if args.only.iter().any(|o| o == "throughput") {
        throughput(&args).await?;
    }
    Ok(())
}

/// 1. `scheduler once` for `n` tenants.
async fn publish(n: usize) -> Result<()> {
    println!("\n== publish + confirm: `scheduler once` for {n} tenants (one region)");
    let dir = tempfile::tempdir()?;
    let registry_path = dir.path().join("tenants.toml");
    let tag = harness::unique("bp");
    let mut text = String::with_capacity(n * 300);
    for i in 0..n {
        text.push_str(&TenantEntry::new(&format!("{tag}-{i:05}")).toml());
    }
    std::fs::write(&registry_path, text)?;
    let mut settings = Settings::default();
    settings.amqp.exchange = harness::unique("bench-x");
    settings.redis.key_prefix = harness::unique("bench-k");
    settings.scheduler.regions = vec!["eu".into()];
    let options = Options::from_settings(&settings)?;
    let registry = Registry::load(&registry_path)?;
    let scheduler = Scheduler::new(
        options.clone(),
        &Secret::new(harness::amqp_url()),
        &Secret::new(harness::redis_url()),
        registry,
        Arc::new(Health::default()),
    )?;
    scheduler.connect().await?;
    let started = Instant::now();
    let report = scheduler.once_at(Utc::now()).await?;
    let took = started.elapsed();
    let queue = format!("{}.eu", settings.amqp.exchange);
    let conn = Connection::connect(&harness::amqp_url(), ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let depth = fleet_env::queue_depth(&ch, &queue).await?;
    println!(
        "published {} (failed {}, busy {}) in {:.2} s = {:.0} jobs/s (publish_concurrency {}); \
         queue depth read back: {depth}",
        report.published.len(),
        report.failed.len(),
        report.busy.len(),
        took.as_secs_f64(),
        report.published.len() as f64 / took.as_secs_f64(),
        options.publish_concurrency,
    );
    scheduler.close().await;
    // Clean up: the test's queues, exchanges and ledger keys.
    let topology = shared::amqp::Topology::new(
        &settings.amqp.exchange,
        "eu",
        settings.amqp.delivery_limit,
        &settings.amqp.retry_delays,
    );
    fleet_env::delete_topology(&ch, &topology).await;
    let _ = conn.close(200, "done".into()).await;
    bench::fleet::delete_keys(&settings.redis.key_prefix).await?;
    ensure!(
        report.published.len() == n && depth as usize == n,
        "expected {n} jobs published and queued, got {} published and {depth} queued",
        report.published.len()
    );
    Ok(())
}

/// 2. publish → pipeline start, one job at a time on an idle fleet.
async fn latency(n: usize) -> Result<()> {
    println!("\n== publish -> pipeline start on an idle fleet: {n} jobs, one at a time, 1 worker");
    let env = FleetEnv::new(FleetOptions {
        tenants: 1,
        ..FleetOptions::default()
    })
    .await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let worker = env.spawn_worker("bench-w1", tx);
    // The worker's first job also opens its FTPS and SMTP paths: a warm-up not counted.
    // One publishing channel for all jobs, as the scheduler keeps one.
    let conn = Connection::connect(&env.amqp_url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    env.topology().declare(&ch).await?;
    shared::amqp::confirm_mode(&ch).await?;
    let mut samples = Vec::with_capacity(n);
    for i in 0..=n {
        let before = Utc::now();
        let job = JobV1 {
            job_id: uuid::Uuid::new_v4(),
            tenant: env.tenant(0).to_owned(),
            region: "eu".into(),
            scheduled_for: before,
            trigger: Trigger::Schedule,
        };
        shared::amqp::publish_confirmed(
            &ch,
            &env.exchange,
            "eu",
            &JobMessage::V1(job.clone()).encode(),
            shared::amqp::job_properties(&job, 0, None),
        )
        .await?;
        let event = loop {
            let e = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .context("no job event within 30 s")?
                .context("the worker stopped")?;
            if e.job_id == job.job_id.to_string() {
                break e;
            }
        };
        ensure!(
            event.disposition == "no-file",
            "job {i} ended {} ({}), expected no-file",
            event.disposition,
            event.reason
        );
        let started = event.started.context("the job never started")?;
        if i > 0 {
            samples.push((started - before).to_std().unwrap_or_default());
        }
    }
    let _ = conn.close(200, "done".into()).await;
    worker.shutdown().await;
    env.cleanup().await;
    bench::fleet::delete_keys(&env.prefix).await?;
    samples.sort();
    let pick = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "latency: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples)",
        ms(pick(0.50)),
        ms(pick(0.90)),
        ms(pick(0.99)),
        ms(pick(1.0)),
        samples.len()
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// 3. T tenants × R new rows with 1, 2, 4 workers.
async fn throughput(args: &Args) -> Result<()> {
    println!(
        "\n== throughput: {} tenants x {} new rows, API latency 20 ms, import concurrency 4, \
         prefetch {} per worker",
        args.tenants, args.rows, args.prefetch
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let mut base = None;
    for &workers in &args.workers {
        let run = throughput_run(args, workers).await?;
        let secs = run.took.as_secs_f64();
        let rate = args.tenants as f64 / secs;
        let speedup = base.map_or(1.0, |b: f64| rate / b);
        base.get_or_insert(rate);
        let cpu_per_job = run.cpu_secs / args.tenants as f64;
        println!(
            "workers {workers}: {} jobs in {secs:.1} s = {rate:.1} jobs/s, {:.0} rows/s; \
             x{speedup:.2} of 1 worker; retried deliveries: {}{}",
            args.tenants,
            (args.tenants * args.rows) as f64 / secs,
            run.retries.len(),
            if run.retries.is_empty() {
                String::new()
            } else {
                format!(" ({})", run.retries.join(", "))
            },
        );
        println!(
            "  CPU: {:.0} ms per job for the whole test fleet ({:.0} ms in this process: workers, \
             fake, SMTP sink; the rest in vsftpd) = {:.2} of {cores} cores busy; the machine's cores were {:.0} % busy in all \
             (others' load included); a CPU-bound ceiling of {:.1} jobs/s on {cores} free cores",
            cpu_per_job * 1000.0,
            run.own_cpu_secs / args.tenants as f64 * 1000.0,
            run.cpu_secs / secs,
            run.machine_busy * 100.0,
            cores / cpu_per_job,
        );
    }
    Ok(())
}

struct RunFigures {
    took: Duration,
    cpu_secs: f64,
    /// This process alone: the workers, the fake and the SMTP sink (the rest is vsftpd).
    own_cpu_secs: f64,
    machine_busy: f64,
    /// The reasons of the deliveries that ended in a retry before their job was imported.
    retries: Vec<String>,
}

async fn throughput_run(args: &Args, workers: usize) -> Result<RunFigures> {
    let env = FleetEnv::new(FleetOptions {
        tenants: args.tenants,
        prefetch: args.prefetch,
        concurrency: 4,
        lock_ttl: "30s",
        ..FleetOptions::default()
    })
    .await;
    env.fake.set_faults(Faults {
        latency_ms: 20,
        ..Faults::default()
    });
    for (t, account) in env.accounts.iter().enumerate() {
        account.put(
            "uploads/user-import.csv",
            users_csv(&format!("u{t}x"), args.rows).as_bytes(),
        );
    }
    // Tenants that have run before: a tenant's very first lock on a Redis waits one lock TTL
    // (the fence counter starts at 1, see worker::fleet), which is not what is measured here.
    {
        let client = redis::Client::open(harness::redis_url())?;
        let mut con = client.get_multiplexed_async_connection().await?;
        for t in 0..args.tenants {
            let _: () = redis::cmd("SET")
                .arg(format!("{}:fence:{}", env.prefix, env.tenant(t)))
                .arg(1)
                .query_async(&mut con)
                .await?;
        }
    }
    // Publish everything first, then start the workers: the clock runs from the first delivery
    // a worker can take to the last job's end.
    let mut jobs = std::collections::HashSet::new();
    for t in 0..args.tenants {
        jobs.insert(
            env.publish_job(env.tenant(t), Utc::now())
                .await
                .job_id
                .to_string(),
        );
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (cpu_before, own_before) = bench::fleet::tree_cpu_secs();
    let machine_before = bench::fleet::machine_jiffies();
    let started = Instant::now();
    let handles: Vec<_> = (0..workers)
        .map(|w| env.spawn_worker(&format!("bench-w{w}"), tx.clone()))
        .collect();
    // A job may be retried (the fleet's own retry with backoff, e.g. when the test FTPS server is
    // slow to answer on a saturated machine): it counts once it is imported; retries are shown.
    let mut done = std::collections::HashSet::new();
    let mut retries = Vec::new();
    let deadline = Duration::from_secs(600);
    while done.len() < args.tenants {
        let e = tokio::time::timeout(deadline.saturating_sub(started.elapsed()), rx.recv())
            .await
            .with_context(|| {
                format!(
                    "{} of {} jobs done after {deadline:?}",
                    done.len(),
                    args.tenants
                )
            })?
            .context("the workers stopped")?;
        if !jobs.contains(&e.job_id) {
            continue;
        }
        match e.disposition {
            "imported" => {
                done.insert(e.job_id);
            }
            "retry-scheduled" | "handed-back" | "skipped-busy" => retries.push(e.reason),
            other => bail!("tenant {} ended {other} ({})", e.tenant, e.reason),
        }
    }
    let took = started.elapsed();
    let (cpu_after, own_after) = bench::fleet::tree_cpu_secs();
    let cpu_secs = cpu_after - cpu_before;
    let own_cpu_secs = own_after - own_before;
    let machine_after = bench::fleet::machine_jiffies();
    let machine_busy = (machine_after.0 - machine_before.0) as f64
        / (machine_after.1 - machine_before.1).max(1) as f64;
    for h in handles {
        h.shutdown().await;
    }
    let imported: usize = (0..args.tenants)
        .map(|t| {
            let prefix = format!("u{t}x");
            env.fake
                .users(&env.domain(t))
                .iter()
                .filter(|u| u.username.starts_with(&prefix))
                .count()
        })
        .sum();
    env.cleanup().await;
    bench::fleet::delete_keys(&env.prefix).await?;
    ensure!(
        imported == args.tenants * args.rows,
        "the fake holds {imported} imported users, expected {}",
        args.tenants * args.rows
    );
    Ok(RunFigures {
        took,
        cpu_secs,
        own_cpu_secs,
        machine_busy,
        retries,
    })
}
