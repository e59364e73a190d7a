//! `chaos`: fault trials against the real local stack, with figures.
//!
//! ```text
//! cargo run -p tests --example chaos -- [--short|--long] [--seed N] [--only NAME,...]
//! ```
//!
//! Every trial injects real faults into real parts: `worker run` processes killed with SIGKILL or
//! stopped with SIGSTOP, a private `redis-server` and a private RabbitMQ node restarted, the
//! platform fake answering 5xx, 429 and hanging, three scheduler replicas restarted between
//! simulated ticks. What happened is then read back from the parts themselves: the platform
//! fake's users and per-username create counts, the tenants' logs on the FTPS server, the
//! workers' job events, the queues. See `docs/reliability.md` for what each trial does and how to
//! read the table.
//!
//! `--only long-import` runs the trial that is not in the default selection: imports that last
//! longer than vsftpd's 300 s idle timeout, over FTPS and SFTP (`long.rs`), bounded at 15 min.
//!
//! The run is bounded (`--short` 5 min, `--long` 30 min): past that it stops itself, kills the
//! workers it started and exits 2. It exits 1 when any job was lost, any tenant ran twice at once,
//! any user was created twice or is missing, or a trial could not run; 0 otherwise. Everything
//! it talks to is on 127.0.0.1.

mod common;
mod ftps;
mod kill;
mod long;
mod redis_faults;
mod restart;
mod sched;
mod stop;
mod storm;
mod table;

use std::time::{Duration, Instant};

use futures::FutureExt;
use rand::SeedableRng;
use rand::rngs::StdRng;

use table::Row;

/// How much of everything a run does.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub long: bool,
    /// SIGKILL trials (spread over `lanes` tenants, each with its own queues and workers).
    pub kills: usize,
    pub lanes: usize,
    pub stops: usize,
    /// Users per uploaded file.
    pub users: usize,
    pub storm_tenants: usize,
    pub ticks: usize,
    pub restarts: usize,
    pub budget: Duration,
}

impl Plan {
    fn short() -> Self {
        Self {
            long: false,
            kills: 32,
            lanes: 4,
            stops: 2,
            users: 30,
            storm_tenants: 2,
            ticks: 40,
            restarts: 1,
            budget: Duration::from_secs(300),
        }
    }

    fn long() -> Self {
        Self {
            long: true,
            kills: 120,
            lanes: 4,
            stops: 6,
            users: 60,
            storm_tenants: 3,
            ticks: 300,
            restarts: 3,
            budget: Duration::from_secs(1800),
        }
    }
}

struct Args {
    plan: Plan,
    seed: u64,
    only: Option<Vec<String>>,
}

const TRIALS: [&str; 12] = [
    "sigkill",
    "sigstop",
    "api-storm",
    "scheduler",
    "redis",
    "rabbitmq",
    "smtp",
    "ftps",
    "redis-outage",
    "redis-loss",
    "fresh-tenants",
    "long-import",
];

/// Trials run only when named with `--only` (they last longer than a run's budget).
const NOT_BY_DEFAULT: [&str; 1] = ["long-import"];

/// The long-import trial's own bound (two imports of about 500 s, side by side).
const LONG_IMPORT_BUDGET: Duration = Duration::from_secs(900);

/// Trials of the long run only (a short run does them when `--only` names them).
const LONG_ONLY: [&str; 2] = ["redis-loss", "fresh-tenants"];

fn parse_args() -> Result<Args, String> {
    let mut plan = Plan::short();
    let mut seed = rand::random::<u32>() as u64;
    let mut only = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--short" => plan = Plan::short(),
            "--long" => plan = Plan::long(),
            "--seed" => {
                seed = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or("--seed needs a number")?;
            }
            "--only" => {
                let list: Vec<String> = args
                    .next()
                    .ok_or("--only needs a comma-separated list of trials")?
                    .split(',')
                    .map(str::to_owned)
                    .collect();
                if let Some(bad) = list.iter().find(|t| !TRIALS.contains(&t.as_str())) {
                    return Err(format!(
                        "unknown trial {bad:?}; trials: {}",
                        TRIALS.join(", ")
                    ));
                }
                only = Some(list);
            }
            "-h" | "--help" => {
                println!(
                    "chaos [--short|--long] [--seed N] [--only {}]",
                    TRIALS.join(",")
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(Args { plan, seed, only })
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(64);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(run(args));
    common::kill_started_processes(true);
    std::process::exit(code);
}

async fn run(args: Args) -> i32 {
    let started = Instant::now();
    let plan = args.plan;
    // Built before the clock starts: cargo builds the worker binary once.
    let _ = harness::binaries::worker_binary();
    let wanted = |name: &str| match &args.only {
        Some(only) => only.iter().any(|t| t == name),
        None => !NOT_BY_DEFAULT.contains(&name) && (plan.long || !LONG_ONLY.contains(&name)),
    };
    let budget = if wanted("long-import") {
        plan.budget.max(LONG_IMPORT_BUDGET)
    } else {
        plan.budget
    };
    eprintln!(
        "chaos: {} run, seed {} (repeat with --seed {}), budget {:?}",
        if plan.long { "long" } else { "short" },
        args.seed,
        args.seed,
        budget
    );
    let mut seed = args.seed;
    let mut next_rng = || {
        seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        StdRng::seed_from_u64(seed)
    };
    // The two-minute Redis outage mostly waits: it runs alongside the other trials (its own
    // private Redis, queues and tenants), so it adds little to the run's length.
    let outage_rng = next_rng();
    let outage = async {
        if wanted("redis-outage") {
            Some(guarded("redis-outage", redis_faults::outage(plan, outage_rng)).await)
        } else {
            None
        }
    };
    let trials = async {
        let mut rows = Vec::new();
        // One at a time: the machine has two cores, and a trial's timings are its own.
        if wanted("sigkill") {
            rows.push(guarded("sigkill", kill::run(plan, next_rng())).await);
        }
        if wanted("sigstop") {
            rows.push(guarded("sigstop", stop::run(plan, next_rng())).await);
        }
        if wanted("api-storm") {
            rows.extend(guarded_rows("api-storm", storm::run(plan, next_rng())).await);
        }
        if wanted("scheduler") {
            rows.push(guarded("scheduler", sched::run(plan, next_rng())).await);
        }
        if wanted("redis") {
            rows.push(guarded("redis-restart", restart::redis(plan, next_rng())).await);
        }
        if wanted("rabbitmq") {
            rows.push(guarded("rabbitmq-restart", restart::rabbitmq(plan, next_rng())).await);
        }
        if wanted("smtp") {
            rows.push(guarded("smtp-down", restart::smtp(plan, next_rng())).await);
        }
        if wanted("ftps") {
            rows.push(guarded("ftps-down", ftps::run(plan, next_rng())).await);
        }
        if wanted("fresh-tenants") {
            rows.push(guarded("fresh-tenants", redis_faults::fresh(plan, next_rng())).await);
        }
        if wanted("redis-loss") {
            rows.push(guarded("redis-loss", redis_faults::loss(plan, next_rng())).await);
        }
        rows
    };
    let trials = async {
        let (mut rows, outage) = tokio::join!(trials, outage);
        rows.extend(outage);
        rows
    };
    // Mostly waiting on the fake's latency: it runs beside the other trials.
    let trials = async {
        let long = async {
            if wanted("long-import") {
                // Not `guarded_rows`: it starts no worker process, and must not kill those of the
                // trials running beside it.
                caught("long-import", long::run()).await
            } else {
                Vec::new()
            }
        };
        let (mut rows, long) = tokio::join!(trials, long);
        rows.extend(long);
        rows
    };
    let interrupted = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => "SIGINT",
            _ = async {
                match term.as_mut() {
                    Some(t) => { t.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => "SIGTERM",
        }
    };
    let rows = tokio::select! {
        rows = tokio::time::timeout(budget, trials) => match rows {
            Ok(rows) => rows,
            Err(_) => {
                eprintln!(
                    "chaos: FAILED: the run did not finish within its budget of {:?}; the \
                     workers it started are killed",
                    budget
                );
                return 2;
            }
        },
        signal = interrupted => {
            eprintln!("chaos: stopped by {signal}; the workers it started are killed");
            return 130;
        }
    };
    println!();
    println!(
        "chaos: {} run, seed {}, {:.0} s",
        if plan.long { "long" } else { "short" },
        args.seed,
        started.elapsed().as_secs_f64()
    );
    print!("{}", table::render(&rows));
    let bad: Vec<&Row> = rows.iter().filter(|r| !r.passed()).collect();
    if bad.is_empty() {
        println!("chaos: PASSED: nothing lost, no tenant ran twice at once, no user created twice");
        0
    } else {
        for r in &bad {
            println!("chaos: FAILED: {}: {}", r.trial, r.verdict());
        }
        1
    }
}

/// Runs one trial; a panic or an error becomes a failed row instead of ending the run.
async fn guarded(name: &str, trial: impl Future<Output = anyhow::Result<Row>>) -> Row {
    guarded_rows(name, trial.map(|r| r.map(|row| vec![row])))
        .await
        .pop()
        .unwrap_or_else(|| Row::error(name, "the trial returned no row".into()))
}

async fn guarded_rows(
    name: &str,
    trial: impl Future<Output = anyhow::Result<Vec<Row>>>,
) -> Vec<Row> {
    let rows = caught(name, trial).await;
    common::kill_started_processes(false);
    rows
}

/// Runs one trial; a panic or an error becomes a failed row.
async fn caught(name: &str, trial: impl Future<Output = anyhow::Result<Vec<Row>>>) -> Vec<Row> {
    eprintln!("chaos: {name}: starting");
    let started = Instant::now();
    let result = std::panic::AssertUnwindSafe(trial).catch_unwind().await;
    let rows = match result {
        Ok(Ok(rows)) => rows,
        Ok(Err(e)) => vec![Row::error(name, format!("{e:#}"))],
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "panicked".into());
            vec![Row::error(name, why)]
        }
    };
    eprintln!(
        "chaos: {name}: done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    rows
}
