//! Redis faults longer and harder than `redis-restart`, each on a private `redis-server` this run
//! starts on a free port (never the machine's), plus the first round of a fresh deployment:
//!
//! - `redis-outage`: Redis is down for two minutes while 12 jobs (12 tenants, a new file each)
//!   are queued and two in-process workers consume. Evidence: no dead letter (the dead-letter
//!   queue is read back), every job ends `imported` exactly once (job events), the fake holds
//!   every user, each created once.
//! - `redis-loss`: whole jobs under a 60 s lock TTL while Redis loses its data three ways:
//!   `FLUSHALL`, a restart from a snapshot taken before the round's runs (its fence counters one
//!   round old), a restart empty. Three workers, two tenants with imports of about half a minute
//!   (the fake answers slowly), longer than a renewal period, so the holder from before meets
//!   the loss at a renewal and stops; each fault lands mid-import and a fresh job per tenant
//!   follows at once. Evidence: no two runs of a tenant
//!   overlap by the job events, nor by the fake's write log (every write falls inside exactly one
//!   run of its tenant); the lock fence of every run (the tenant log's start lines) is new.
//! - `fresh-tenants`: 40 brand-new tenants, one worker, prefetch 4, lock TTL 60 s, on the
//!   machine's Redis (a prefix of its own, so a new fleet for the epoch): two rounds of a new
//!   file per tenant. Evidence: the first round takes at most 1.5 times the second (no lock TTL
//!   waited per new tenant).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use chrono::Utc;
use platform_fake::Faults;
use rand::rngs::StdRng;
use shared::job::JobV1;

use harness::fixtures::{tenant_log, usernames, users_csv};
use harness::fleet_env::{FleetEnv, FleetOptions};

use crate::Plan;
use crate::common::{self, Events, missing_users};
use crate::table::Row;

/// A private Redis on 127.0.0.1 with its files in a temp dir: snapshots can be saved and loaded.
struct PrivateRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<tokio::process::Child>,
}

impl PrivateRedis {
    async fn start() -> Result<Self> {
        let mut r = Self {
            port: common::free_port()?,
            dir: tempfile::tempdir()?,
            child: None,
        };
        r.up().await?;
        Ok(r)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn dump(&self) -> std::path::PathBuf {
        self.dir.path().join("dump.rdb")
    }

    /// Starts the server; it loads `dump.rdb` when there is one.
    async fn up(&mut self) -> Result<()> {
        let dir = self.dir.path().to_string_lossy().into_owned();
        let port = self.port.to_string();
        let child = tokio::process::Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .args([
                "--appendonly",
                "no",
                "--dir",
                &dir,
                "--dbfilename",
                "dump.rdb",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start redis-server (is it installed?)")?;
        // Tracked for the whole run: `redis-outage` runs alongside other trials, whose ends
        // must not kill its Redis.
        if let Some(pid) = child.id() {
            common::track_for_run(pid);
        }
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.cmd(&["PING"]).await.is_err() {
            if Instant::now() > deadline {
                bail!("the private redis-server on {} did not answer", self.port);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Kills the server without saving (a crash, for an unpersisted Redis).
    async fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }

    async fn cmd(&self, args: &[&str]) -> Result<redis::Value> {
        let client = redis::Client::open(self.url())?;
        let mut c = client.get_multiplexed_async_connection().await?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        Ok(cmd.query_async(&mut c).await?)
    }
}

/// Publishes one job per tenant (a tick of now) and returns them.
async fn publish_all(env: &FleetEnv) -> Vec<JobV1> {
    let mut jobs = Vec::new();
    for i in 0..env.accounts.len() {
        jobs.push(env.publish_job(env.tenant(i), Utc::now()).await);
    }
    jobs
}

/// Redis down for two minutes with 12 jobs queued.
pub async fn outage(_plan: Plan, _rng: StdRng) -> Result<Row> {
    let mut redis = PrivateRedis::start().await?;
    let env = FleetEnv::new(FleetOptions {
        tenants: 12,
        redis_url: Some(redis.url()),
        lock_ttl: "3s",
        prefetch: 4,
        concurrency: 2,
        ..FleetOptions::default()
    })
    .await;
    let result = outage_on(&env, &mut redis).await;
    env.cleanup().await;
    redis.down().await;
    result
}

const OUTAGE: Duration = Duration::from_secs(120);
const OUTAGE_USERS: usize = 5;

async fn outage_on(env: &FleetEnv, redis: &mut PrivateRedis) -> Result<Row> {
    let mut row = Row::new("redis-outage");
    let names: Vec<Vec<String>> = (0..env.accounts.len())
        .map(|i| {
            let tag = format!("o{i}u");
            env.accounts[i].put(
                "uploads/user-import.csv",
                users_csv(&tag, OUTAGE_USERS).as_bytes(),
            );
            usernames(&tag, OUTAGE_USERS)
        })
        .collect();
    redis.down().await;
    let (tx, mut events) = Events::new();
    let workers = [
        env.spawn_worker("outage-a", tx.clone()),
        env.spawn_worker("outage-b", tx),
    ];
    let jobs = publish_all(env).await;
    row.runs = 1;
    row.faults = 1;
    row.jobs = jobs.len();
    // The fault is the outage's length itself; nothing is waited for here.
    tokio::time::sleep(OUTAGE).await;
    redis.up().await?;
    let back = Instant::now();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for j in &jobs {
        match events
            .wait_settled(&j.job_id, Duration::from_secs(180))
            .await
        {
            Ok(e) => *outcomes.entry(e.disposition.to_owned()).or_default() += 1,
            Err(_) => row.lost += 1,
        }
    }
    row.recovery.push(back.elapsed());
    for w in workers {
        w.shutdown().await;
    }
    events.drain();
    let bounces = events
        .all
        .iter()
        .filter(|e| e.reason == "redis-unavailable")
        .count();
    // Imported more than once: a second `imported` event for one job.
    let imported_twice = jobs
        .iter()
        .filter(|j| {
            let id = j.job_id.to_string();
            events
                .all
                .iter()
                .filter(|e| e.job_id == id && e.disposition == "imported")
                .count()
                > 1
        })
        .count();
    let dead = common::dead_letters(env).await;
    row.dead_lettered = dead.len();
    let mut creates = 0;
    for (i, names) in names.iter().enumerate() {
        row.missing_users += missing_users(env, i, names);
        let calls = env.fake.calls(&env.domain(i));
        row.duplicate_creates += calls.duplicate_creates();
        creates += calls.creates.values().sum::<u64>();
        row.overlaps += events.overlapping_runs(env.tenant(i));
    }
    row.overlaps += imported_twice;
    row.notes = format!(
        "a private redis-server down for {} s with {} jobs queued (12 tenants, {OUTAGE_USERS} new \
         users each), 2 workers: deliveries that met the outage and waited in the delay queue: \
         {bounces}; jobs → {outcomes:?}; dead letters {}; users created at the fake {creates} \
         (each once); recovery = Redis back → the last job imported",
        OUTAGE.as_secs(),
        jobs.len(),
        dead.len(),
    );
    if !dead.is_empty() || outcomes.get("imported") != Some(&jobs.len()) {
        row.error = Some(format!(
            "every job must be imported once with no dead letter: {outcomes:?}, dead letters \
             {dead:?}"
        ));
    }
    Ok(row)
}

/// How Redis loses its data in a round of `redis-loss`.
#[derive(Debug, Clone, Copy)]
enum Loss {
    Snapshot,
    Flushall,
    EmptyRestart,
}

/// Enough for an import of about half a minute at 250 ms per call: longer than a renewal
/// period (a third of the TTL), so the holder from before meets the loss at a renewal and stops.
const LOSS_USERS: usize = 120;

/// Whole jobs under a 60 s TTL while Redis loses its data.
pub async fn loss(_plan: Plan, _rng: StdRng) -> Result<Row> {
    let mut redis = PrivateRedis::start().await?;
    let env = FleetEnv::new(FleetOptions {
        tenants: 2,
        redis_url: Some(redis.url()),
        lock_ttl: "60s",
        prefetch: 1,
        concurrency: 2,
        ..FleetOptions::default()
    })
    .await;
    let result = loss_on(&env, &mut redis).await;
    env.cleanup().await;
    redis.down().await;
    result
}

async fn loss_on(env: &FleetEnv, redis: &mut PrivateRedis) -> Result<Row> {
    let mut row = Row::new("redis-loss");
    env.fake.set_faults(Faults {
        latency_ms: 250,
        ..Faults::default()
    });
    let (tx, mut events) = Events::new();
    let workers = [
        env.spawn_worker("loss-a", tx.clone()),
        env.spawn_worker("loss-b", tx.clone()),
        env.spawn_worker("loss-c", tx),
    ];
    let mut notes = Vec::new();
    let mut result = Ok(());
    for (round, loss) in [Loss::Flushall, Loss::Snapshot, Loss::EmptyRestart]
        .into_iter()
        .enumerate()
    {
        match loss_round(env, redis, &mut events, &mut row, round, loss).await {
            Ok(note) => notes.push(note),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    for w in workers {
        w.shutdown().await;
    }
    result?;
    let (fences, reused) = fences(env);
    events.drain();
    // Holders from before the loss stopped by it (a renewal in the new epoch) and retried.
    let stopped = events
        .all
        .iter()
        .filter(|e| e.disposition == "retry-scheduled" && e.reason == "cancelled")
        .count();
    row.overlaps += reused;
    for i in 0..env.accounts.len() {
        row.overlaps += events.overlapping_runs(env.tenant(i));
        row.overlaps += stray_writes(env, i, &mut events);
        row.duplicate_creates += env.fake.calls(&env.domain(i)).duplicate_creates();
    }
    row.notes = format!(
        "lock TTL 60 s, 3 workers, 2 tenants × {LOSS_USERS} users a round (250 ms per API call); \
         {}; holders stopped by the loss and retried: {stopped}; fences seen {fences}, reused \
         {reused}; writes of the fake's write log outside exactly one run of their tenant: \
         counted as overlaps; recovery = the loss → the interrupted job completed",
        notes.join("; ")
    );
    Ok(row)
}

async fn loss_round(
    env: &FleetEnv,
    redis: &mut PrivateRedis,
    events: &mut Events,
    row: &mut Row,
    round: usize,
    loss: Loss,
) -> Result<String> {
    let names: Vec<Vec<String>> = (0..env.accounts.len())
        .map(|i| {
            let tag = format!("l{round}t{i}u");
            env.accounts[i].put(
                "uploads/user-import.csv",
                users_csv(&tag, LOSS_USERS).as_bytes(),
            );
            usernames(&tag, LOSS_USERS)
        })
        .collect();
    if matches!(loss, Loss::Snapshot) {
        // The snapshot is taken before the runs: no lock of theirs is in it.
        redis.cmd(&["SAVE"]).await?;
    }
    let jobs = publish_all(env).await;
    for (i, names) in names.iter().enumerate() {
        let domain = env.domain(i);
        common::until(
            Duration::from_secs(180),
            "the imports to be under way",
            || {
                names
                    .iter()
                    .filter(|u| env.fake.user(&domain, u).is_some())
                    .count()
                    >= 3
            },
        )
        .await?;
    }
    match loss {
        Loss::Snapshot => {
            redis.down().await;
            redis.up().await?;
        }
        Loss::Flushall => {
            redis.cmd(&["FLUSHALL"]).await?;
        }
        Loss::EmptyRestart => {
            redis.down().await;
            let _ = std::fs::remove_file(redis.dump());
            redis.up().await?;
        }
    }
    let lost_at = Utc::now();
    let fresh = publish_all(env).await;
    row.runs += 1;
    row.faults += 1;
    row.jobs += jobs.len() + fresh.len();
    let mut outcomes = Vec::new();
    for j in jobs.iter().chain(&fresh) {
        match events
            .wait_settled(&j.job_id, Duration::from_secs(300))
            .await
        {
            Ok(e) if e.disposition == "dead-lettered" => {
                row.dead_lettered += 1;
                outcomes.push(format!("dead-lettered ({})", e.reason));
            }
            Ok(e) => {
                if jobs.iter().any(|o| o.job_id == j.job_id)
                    && let Some(end) = e.ended
                {
                    row.recovery
                        .push((end - lost_at).to_std().unwrap_or_default());
                }
                outcomes.push(e.disposition.to_owned());
            }
            Err(_) => {
                row.lost += 1;
                outcomes.push("lost".to_owned());
            }
        }
    }
    for (i, names) in names.iter().enumerate() {
        row.missing_users += missing_users(env, i, names);
    }
    let (interrupted, contenders) = outcomes.split_at(jobs.len());
    Ok(format!(
        "{loss:?}: interrupted jobs → {interrupted:?}, fresh jobs → {contenders:?}"
    ))
}

/// The lock fences of every run in the tenants' logs (`start: …, lock fence N`): how many, and
/// how many were handed out a second time (the same fence in two runs of a tenant).
fn fences(env: &FleetEnv) -> (usize, usize) {
    let (mut seen, mut reused) = (0, 0);
    for account in &env.accounts {
        let mut set = BTreeSet::new();
        for line in tenant_log(account).lines() {
            let Some((_, fence)) = line.split_once(", lock fence ") else {
                continue;
            };
            seen += 1;
            if !set.insert(fence.trim().to_owned()) {
                reused += 1;
            }
        }
    }
    (seen, reused)
}

/// Writes of tenant `i` in the fake's write log that do not fall inside exactly one run of the
/// tenant (a run is from its job's start to its end, by the workers' events).
fn stray_writes(env: &FleetEnv, i: usize, events: &mut Events) -> usize {
    events.drain();
    let tenant = env.tenant(i);
    let runs: Vec<(SystemTime, SystemTime)> = events
        .all
        .iter()
        .filter(|e| e.tenant == tenant)
        .filter_map(|e| Some((e.started?.into(), e.ended?.into())))
        .collect();
    env.fake
        .write_log(&env.domain(i))
        .iter()
        .filter(|w| runs.iter().filter(|(s, e)| s <= *w && *w <= e).count() != 1)
        .count()
}

const FRESH_TENANTS: usize = 40;
const FRESH_USERS: usize = 5;

/// 40 brand-new tenants on one worker with prefetch 4 and a 60 s TTL: two rounds, timed.
pub async fn fresh(_plan: Plan, _rng: StdRng) -> Result<Row> {
    let env = FleetEnv::new(FleetOptions {
        tenants: FRESH_TENANTS,
        lock_ttl: "60s",
        prefetch: 4,
        concurrency: 2,
        ..FleetOptions::default()
    })
    .await;
    let result = fresh_on(&env).await;
    env.cleanup().await;
    result
}

async fn fresh_on(env: &FleetEnv) -> Result<Row> {
    let mut row = Row::new("fresh-tenants");
    let (tx, mut events) = Events::new();
    let worker = env.spawn_worker("fresh", tx);
    let mut took = Vec::new();
    let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
    for round in 0..2 {
        let mut names = Vec::new();
        for i in 0..env.accounts.len() {
            let tag = format!("f{round}t{i}u");
            env.accounts[i].put(
                "uploads/user-import.csv",
                users_csv(&tag, FRESH_USERS).as_bytes(),
            );
            names.push(usernames(&tag, FRESH_USERS));
        }
        let started = Instant::now();
        let jobs = publish_all(env).await;
        for j in &jobs {
            match events
                .wait_settled(&j.job_id, Duration::from_secs(900))
                .await
            {
                Ok(e) => *outcomes.entry(e.disposition).or_default() += 1,
                Err(_) => row.lost += 1,
            }
        }
        took.push(started.elapsed());
        row.runs += 1;
        row.jobs += jobs.len();
        for (i, names) in names.iter().enumerate() {
            row.missing_users += missing_users(env, i, names);
        }
    }
    worker.shutdown().await;
    for i in 0..env.accounts.len() {
        row.overlaps += events.overlapping_runs(env.tenant(i));
        row.duplicate_creates += env.fake.calls(&env.domain(i)).duplicate_creates();
    }
    let ratio = took[0].as_secs_f64() / took[1].as_secs_f64().max(0.001);
    row.notes = format!(
        "{FRESH_TENANTS} brand-new tenants, 1 worker, prefetch 4, lock TTL 60 s, a new file of \
         {FRESH_USERS} users per tenant each round: first round {:.1} s, second {:.1} s \
         (ratio {ratio:.2}, must be ≤ 1.5); jobs → {outcomes:?}",
        took[0].as_secs_f64(),
        took[1].as_secs_f64()
    );
    if ratio > 1.5 || outcomes.get("imported") != Some(&(2 * FRESH_TENANTS)) {
        row.error = Some(format!(
            "the first round must take at most 1.5 × the second, every job imported: ratio \
             {ratio:.2}, {outcomes:?}"
        ));
    }
    Ok(row)
}
