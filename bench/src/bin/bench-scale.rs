//! `bench-scale`: one region's fleet at the scale of thousands of tenants (`make bench-scale` =
//! `scripts/bench-scale.sh`, release build; figures in BENCHMARKS.md, not a timed test).
//!
//! Set-up: T tenants (default 2,000), each a real account on one vsftpd (a Linux user, PAM
//! login), one platform fake knowing all of them (20 ms added to every API call), the machine's
//! RabbitMQ and Redis under the run's own exchange and key prefix, an SMTP sink. The tenants'
//! files, by index `i`:
//! - `i % new_every == 0` (a tenth): a new file of R rows (default 20) before each round;
//! - `i % refused_every == 1` (a few): a file without a `Username` column (refused, told once);
//! - `i % 10` in 1..=5: a file already imported (its marker in `/tmp`): no change;
//! - the rest: no file.
//!
//! Three rounds, each a midnight tick (day 1, 2, 3 from now): S schedulers (default 3, each its
//! own connections, as replicas) poll the same midnight at once; the ledger must publish each
//! tenant's tick exactly once. One worker runs all the time (the fleet's minimum); every
//! `--poll` seconds (15, KEDA's polling interval) the bench reads the queue depth and starts
//! workers up to ceil(depth ÷ 4) (the ScaledObject's QueueLength 4), at most `--max-workers` (4),
//! the way KEDA scales the Deployment; the extra workers stop at the end of the round. Round 3
//! has no new file anywhere: its figures are those of no-change jobs.
//!
//! Per round it prints: the schedulers' publish time, the time from the first publish to the
//! last job's end, jobs by outcome, jobs/s of each worker while it ran, the CPU time of this
//! process (workers, fake, SMTP sink, schedulers) and of vsftpd per job, the FTPS connections
//! per job (vsftpd's log), the machine's busy share, and the queue depth over time. At the end:
//! Redis memory per tenant (the run's keys) and round 1 ÷ round 2.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use chrono::{DateTime, Days, Utc};
use clap::Parser;
use platform_fake::Faults;
use scheduler::{Options, Scheduler};
use sha1::{Digest, Sha1};
use shared::health::Health;
use shared::registry::Registry;
use tokio::sync::mpsc;
use worker::fleet::JobEvent;

use bench::fleet::{delete_keys, machine_jiffies, print_machine, tree_cpu_secs};
use harness::fixtures::users_csv;
use harness::fleet_env::{FleetEnv, FleetOptions, WorkerHandle};

#[derive(Debug, Parser)]
#[command(name = "bench-scale")]
struct Args {
    /// Tenants in the region.
    #[arg(long, default_value_t = 2000)]
    tenants: usize,
    /// Rows in each new file.
    #[arg(long, default_value_t = 20)]
    rows: usize,
    /// Every n-th tenant gets a new file before rounds 1 and 2.
    #[arg(long, default_value_t = 10)]
    new_every: usize,
    /// Every n-th tenant (offset 1) has a file without a Username column.
    #[arg(long, default_value_t = 400)]
    refused_every: usize,
    /// Scheduler replicas polling the same midnight.
    #[arg(long, default_value_t = 3)]
    schedulers: usize,
    /// Most workers the scaler starts.
    #[arg(long, default_value_t = 4)]
    max_workers: usize,
    /// Seconds between two looks of the scaler at the queue.
    #[arg(long, default_value_t = 15)]
    poll: u64,
    /// Prefetch of each worker (and the scaler's messages per worker).
    #[arg(long, default_value_t = 4)]
    prefetch: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    New,
    Refused,
    Unchanged,
    NoFile,
}

fn kind(args: &Args, i: usize) -> Kind {
    if i.is_multiple_of(args.new_every) {
        Kind::New
    } else if i % args.refused_every == 1 {
        Kind::Refused
    } else if (1..=5).contains(&(i % 10)) {
        Kind::Unchanged
    } else {
        Kind::NoFile
    }
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("bench-scale: error: {e:#}");
        std::process::exit(1);
    }
}

async fn run() -> Result<()> {
    let args = Args::parse();
    ensure!(
        args.tenants > 0 && args.new_every > 0 && args.refused_every > 1 && args.max_workers > 0,
        "sizes must be positive (refused_every above 1)"
    );
    print_machine();
    let set_up = Instant::now();
    let env = FleetEnv::new(FleetOptions {
        tenants: args.tenants,
        prefetch: args.prefetch,
        concurrency: 4,
        lock_ttl: "60s",
        ..FleetOptions::default()
    })
    .await;
    env.fake.set_faults(Faults {
        latency_ms: 20,
        ..Faults::default()
    });
    seed_files(&args, &env);
    let kinds = (0..args.tenants).fold(BTreeMap::new(), |mut m, i| {
        *m.entry(format!("{:?}", kind(&args, i))).or_insert(0usize) += 1;
        m
    });
    println!(
        "set-up: {} tenants ({kinds:?}) in {:.1} s; lock TTL 60 s, prefetch {}, import \
         concurrency 4, API latency 20 ms, {} schedulers, workers 1..={} (1 per {} queued, \
         looked at every {} s)",
        args.tenants,
        set_up.elapsed().as_secs_f64(),
        args.prefetch,
        args.schedulers,
        args.max_workers,
        args.prefetch,
        args.poll,
    );
    let result = rounds(&args, &env).await;
    env.cleanup().await;
    delete_keys(&env.prefix).await?;
    result
}

/// The files of the tenants that keep theirs across rounds: the already-imported ones (with
/// their marker) and the refused ones.
fn seed_files(args: &Args, env: &FleetEnv) {
    for (i, account) in env.accounts.iter().enumerate() {
        match kind(args, i) {
            Kind::Unchanged => {
                let csv = users_csv(&format!("s{i}x"), args.rows);
                let sha1 = hex::encode(Sha1::digest(csv.as_bytes()));
                account.put("uploads/user-import.csv", csv.as_bytes());
                account.put(
                    &format!("tmp/{sha1}.sha1"),
                    format!("{sha1}  user-import.csv\n").as_bytes(),
                );
            }
            Kind::Refused => account.put(
                "uploads/user-import.csv",
                b"Email,FirstName\nnobody@example.org,No\n",
            ),
            Kind::New | Kind::NoFile => {}
        }
    }
}

async fn rounds(args: &Args, env: &FleetEnv) -> Result<()> {
    let schedulers = schedulers(args, env).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    // The fleet's minimum: one worker all the time.
    let first = env.spawn_worker("scale-w0", tx.clone());
    let mut finish = Vec::new();
    for round in 1..=3u64 {
        if round < 3 {
            for (i, account) in env.accounts.iter().enumerate() {
                if kind(args, i) == Kind::New {
                    account.put(
                        "uploads/user-import.csv",
                        users_csv(&format!("u{i}r{round}x"), args.rows).as_bytes(),
                    );
                }
            }
        }
        let midnight = Utc::now()
            .date_naive()
            .and_hms_opt(0, 0, 0)
            .context("midnight")?;
        let tick = midnight.and_utc() + Days::new(round);
        let figures = one_round(args, env, &schedulers, &tx, &mut rx, round, tick).await?;
        finish.push(figures);
    }
    first.shutdown().await;
    for s in &schedulers {
        s.close().await;
    }
    redis_memory(args, env).await?;
    let (r1, r2) = (finish[0], finish[1]);
    println!(
        "\nround 1 (every tenant's first lock) {r1:.1} s vs round 2 {r2:.1} s: ratio {:.2}",
        r1 / r2
    );
    Ok(())
}

async fn schedulers(args: &Args, env: &FleetEnv) -> Result<Vec<Scheduler>> {
    let mut settings = env.settings();
    settings.scheduler.regions = vec!["eu".into()];
    let mut out = Vec::new();
    for _ in 0..args.schedulers {
        let registry = Registry::load(&settings.registry.file)?;
        let s = Scheduler::new(
            Options::from_settings(&settings)?,
            &settings.amqp.url,
            &settings.redis.url,
            registry,
            Arc::new(Health::default()),
        )?;
        s.connect().await?;
        out.push(s);
    }
    Ok(out)
}

/// What one round of `n` jobs gave.
#[derive(Default)]
struct Round {
    outcomes: BTreeMap<String, usize>,
    per_worker: BTreeMap<String, usize>,
    retries: usize,
}

/// Runs one midnight round and prints its figures; returns the seconds from the first publish
/// to the last job's end.
async fn one_round(
    args: &Args,
    env: &FleetEnv,
    schedulers: &[Scheduler],
    tx: &mpsc::UnboundedSender<JobEvent>,
    rx: &mut mpsc::UnboundedReceiver<JobEvent>,
    round: u64,
    tick: DateTime<Utc>,
) -> Result<f64> {
    println!("\n== round {round}: the midnight tick {tick}");
    let connects_before = vsftpd_connects().await;
    let (cpu_before, own_before) = tree_cpu_secs();
    let machine_before = machine_jiffies();
    let started = Instant::now();
    let polls = poll_all(schedulers, tick + chrono::Duration::seconds(2)).await?;
    let published_in = started.elapsed();
    let mut jobs = HashSet::new();
    let (mut busy, mut already) = (0, 0);
    for report in &polls {
        ensure!(
            report.failed.is_empty(),
            "ticks failed: {:?}",
            report.failed
        );
        jobs.extend(report.jobs.iter().map(|j| j.job_id.to_string()));
        busy += report.busy.len();
        already += report.already_published.len();
    }
    let by_replica: Vec<usize> = polls.iter().map(|p| p.published.len()).collect();
    println!(
        "publish: {} jobs by {} schedulers in {:.2} s (per replica {by_replica:?}; claims another \
         replica held: {busy}, found already published: {already})",
        jobs.len(),
        schedulers.len(),
        published_in.as_secs_f64()
    );
    ensure!(
        jobs.len() == args.tenants,
        "{} ticks published once, expected {}",
        jobs.len(),
        args.tenants
    );
    let (outcome, extra, depth_series) = drain(args, env, tx, rx, &jobs, started).await?;
    let took = outcome.0;
    let (cpu_after, own_after) = tree_cpu_secs();
    let machine_after = machine_jiffies();
    let connects = vsftpd_connects().await.saturating_sub(connects_before);
    let n = args.tenants as f64;
    println!(
        "finished: {} jobs in {took:.1} s from the first publish = {:.1} jobs/s; outcomes {:?}; \
         deliveries retried: {}",
        args.tenants,
        n / took,
        outcome.1.outcomes,
        outcome.1.retries
    );
    for (worker, count) in &outcome.1.per_worker {
        let ran = extra.get(worker).copied().unwrap_or(took);
        println!(
            "  {worker}: {count} jobs in its {ran:.1} s = {:.1} jobs/s",
            *count as f64 / ran
        );
    }
    let busy_share = (machine_after.0 - machine_before.0) as f64
        / (machine_after.1 - machine_before.1).max(1) as f64;
    println!(
        "CPU: {:.1} ms per job ({:.1} ms in this process: workers, fake, SMTP sink, schedulers; \
         the rest vsftpd); FTPS connections: {connects} = {:.2} per job; the machine's cores \
         were {:.0} % busy",
        (cpu_after - cpu_before) / n * 1000.0,
        (own_after - own_before) / n * 1000.0,
        connects as f64 / n,
        busy_share * 100.0
    );
    let series: Vec<String> = depth_series
        .iter()
        .map(|(s, d, w)| format!("{s:.0}s:{d}/{w}w"))
        .collect();
    println!(
        "queue depth (ready) / workers over time: {}",
        series.join(" ")
    );
    Ok(took)
}

/// Every scheduler polls the same moment at once, as replicas do at midnight.
async fn poll_all(
    schedulers: &[Scheduler],
    now: DateTime<Utc>,
) -> Result<Vec<scheduler::PollReport>> {
    let polls = futures::future::join_all(schedulers.iter().map(|s| s.poll_at(now))).await;
    Ok(polls.into_iter().collect::<Result<Vec<_>, _>>()?)
}

type Drained = ((f64, Round), HashMap<String, f64>, Vec<(f64, u32, usize)>);

/// Receives the round's job events until every job has ended, scaling workers on the queue's
/// depth; stops the workers it started. Returns the round's time and outcomes, each extra
/// worker's running time, and the depth samples (seconds, depth, workers).
async fn drain(
    args: &Args,
    env: &FleetEnv,
    tx: &mpsc::UnboundedSender<JobEvent>,
    rx: &mut mpsc::UnboundedReceiver<JobEvent>,
    jobs: &HashSet<String>,
    started: Instant,
) -> Result<Drained> {
    let mut round = Round::default();
    let mut done = HashSet::new();
    let mut extra: Vec<(String, Instant, WorkerHandle)> = Vec::new();
    let mut samples = Vec::new();
    // KEDA looks at the queue on its own cadence: the first look a whole interval after the
    // publish is the slowest case.
    let mut next_look = Instant::now() + Duration::from_secs(args.poll);
    let mut next_sample = Instant::now();
    let deadline = started + Duration::from_secs(1800);
    while done.len() < jobs.len() {
        let now = Instant::now();
        ensure!(
            now < deadline,
            "{} of {} jobs ended in 30 min",
            done.len(),
            jobs.len()
        );
        if now >= next_sample || now >= next_look {
            let depth = env.queued().await?;
            if now >= next_sample {
                samples.push((started.elapsed().as_secs_f64(), depth, 1 + extra.len()));
                next_sample += Duration::from_secs(5);
            }
            if now >= next_look {
                let want = (depth as usize).div_ceil(args.prefetch as usize);
                while 1 + extra.len() < want.clamp(1, args.max_workers) {
                    let name = format!("scale-w{}", 1 + extra.len());
                    let handle = env.spawn_worker(&name, tx.clone());
                    extra.push((name, Instant::now(), handle));
                }
                next_look += Duration::from_secs(args.poll);
            }
        }
        let wait = next_sample
            .min(next_look)
            .saturating_duration_since(Instant::now());
        let Ok(event) = tokio::time::timeout(wait, rx.recv()).await else {
            continue;
        };
        let event = event.context("the workers stopped")?;
        if !jobs.contains(&event.job_id) {
            continue;
        }
        match event.disposition {
            "retry-scheduled" | "handed-back" | "skipped-busy" => round.retries += 1,
            label => {
                if done.insert(event.job_id.clone()) {
                    *round.outcomes.entry(label.to_owned()).or_default() += 1;
                    *round.per_worker.entry(event.worker_id.clone()).or_default() += 1;
                } else {
                    bail!("job {} of {} ended twice", event.job_id, event.tenant);
                }
            }
        }
    }
    let took = started.elapsed().as_secs_f64();
    let mut ran = HashMap::new();
    for (name, since, handle) in extra {
        ran.insert(name, since.elapsed().as_secs_f64());
        handle.shutdown().await;
    }
    Ok(((took, round), ran, samples))
}

/// Logins vsftpd has seen so far (`CONNECT` lines of its log: one per control connection).
async fn vsftpd_connects() -> usize {
    let log = &harness::ftps().await.log_file;
    std::fs::read_to_string(log)
        .map(|t| t.lines().filter(|l| l.contains("CONNECT: Client")).count())
        .unwrap_or(0)
}

/// Redis memory of the run's keys (`MEMORY USAGE` of each), per tenant.
async fn redis_memory(args: &Args, env: &FleetEnv) -> Result<()> {
    let client = redis::Client::open(harness::redis_url())?;
    let mut con = client.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", env.prefix))
        .query_async(&mut con)
        .await?;
    let mut bytes = 0u64;
    let mut by_kind: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for key in &keys {
        let b: Option<u64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(key)
            .query_async(&mut con)
            .await?;
        let b = b.unwrap_or(0);
        bytes += b;
        let kind = key
            .strip_prefix(&env.prefix)
            .and_then(|k| k.trim_start_matches(':').split(':').next())
            .unwrap_or("?")
            .to_owned();
        let e = by_kind.entry(kind).or_default();
        e.0 += 1;
        e.1 += b;
    }
    println!(
        "\nRedis: {} keys, {:.1} KiB = {:.0} bytes per tenant; by kind (keys, bytes): {by_kind:?}",
        keys.len(),
        bytes as f64 / 1024.0,
        bytes as f64 / args.tenants as f64
    );
    Ok(())
}
