//! Scheduler replicas: three in-process `Scheduler`s (each with its own broker and Redis
//! connections, as three processes would have) poll the same simulated ticks, one minute apart,
//! for five tenants scheduled every minute. Before a tick, each replica is restarted (closed and
//! replaced by a new one) with some probability; during a tick, one replica may crash mid-poll
//! (its task aborted at a random point, leaving whatever claim it held to expire) and is then
//! replaced. Replicas poll each tick again until every tenant's tick is recorded, as the real loop
//! would. Two in-process workers consume the jobs (the tenants have no file: each run ends
//! `no-file`). Evidence: the workers' job events show exactly one job accepted per tenant per tick
//! (run, or skipped as busy while the previous tick's run was still going); a tick published twice
//! (a replica that died between its publish and its commit) is dropped by the worker as a
//! `duplicate`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rand::Rng;
use rand::rngs::StdRng;
use scheduler::chrono::{DateTime, TimeDelta, Utc};
use scheduler::{Options, Scheduler};
use shared::health::Health;
use shared::registry::Registry;

use harness::fleet_env::{FleetEnv, FleetOptions};

use crate::Plan;
use crate::common::Events;
use crate::table::Row;

const TENANTS: usize = 5;
/// The dispositions of a tick's job that a worker accepted as that tick's: it ran, or it found
/// the tenant busy with the previous tick's run (simulated ticks come milliseconds apart, not a
/// minute) and was skipped as redundant, or it came after the next tick's run (`superseded`: the
/// tenant's tick record on its account is later). A `duplicate` is a second job for a tick,
/// dropped.
const ACCEPTED: [&str; 5] = [
    "no-file",
    "imported",
    "already-processed",
    "skipped-busy",
    "superseded",
];
const REPLICAS: usize = 3;

async fn replica(env: &FleetEnv, options: &Options) -> Result<Arc<Scheduler>> {
    let settings = env.settings();
    let s = Arc::new(Scheduler::new(
        options.clone(),
        &settings.amqp.url,
        &settings.redis.url,
        Registry::load(&settings.registry.file)?,
        Arc::new(Health::default()),
    )?);
    tokio::time::timeout(Duration::from_secs(20), s.connect())
        .await
        .context("scheduler connect timed out")??;
    Ok(s)
}

pub async fn run(plan: Plan, mut rng: StdRng) -> Result<Row> {
    let env = FleetEnv::new(FleetOptions {
        tenants: TENANTS,
        schedule: Some("* * * * *"),
        lock_ttl: "1s",
        ..FleetOptions::default()
    })
    .await;
    let result = ticks(&env, plan, &mut rng).await;
    env.cleanup().await;
    result
}

async fn ticks(env: &FleetEnv, plan: Plan, rng: &mut StdRng) -> Result<Row> {
    let mut row = Row::new("scheduler-replicas");
    let settings = env.settings();
    let mut options = Options::from_settings(&settings)?;
    options.catch_up_window = Duration::from_secs(24 * 3600);
    options.publish_timeout = Duration::from_secs(1);
    options.redis_timeout = Duration::from_millis(500);
    options.claim_ttl = Duration::from_millis(2500);
    let mut redis = redis::Client::open(harness::redis_url())?
        .get_multiplexed_async_connection()
        .await
        .context("connecting to Redis")?;
    let tenants: Vec<String> = (0..TENANTS).map(|i| env.tenant(i).to_owned()).collect();

    let (tx, mut events) = Events::new();
    let workers = [
        env.spawn_worker("sched-a", tx.clone()),
        env.spawn_worker("sched-b", tx),
    ];
    let mut replicas = Vec::new();
    for _ in 0..REPLICAS {
        replicas.push(replica(env, &options).await?);
    }
    let base: DateTime<Utc> = "2031-01-01T00:00:00Z".parse()?;
    let (mut restarts, mut crashes) = (0u64, 0u64);
    let mut catch_up = Vec::new();
    for k in 0..plan.ticks {
        let t = base + TimeDelta::minutes(k as i64);
        for r in replicas.iter_mut() {
            if rng.random_bool(0.15) {
                r.close().await;
                *r = replica(env, &options).await?;
                restarts += 1;
            }
        }
        let crash = rng
            .random_bool(0.15)
            .then(|| (rng.random_range(0..REPLICAS), rng.random_range(0..15u64)));
        let mut tasks = Vec::new();
        for (i, r) in replicas.iter().enumerate() {
            let r = r.clone();
            let jitter = Duration::from_millis(rng.random_range(0..10));
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(jitter).await;
                r.poll_at(t).await
            }));
            if let Some((who, after)) = crash
                && who == i
            {
                let handle = tasks[i].abort_handle();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(after)).await;
                    handle.abort();
                });
            }
        }
        for (i, task) in tasks.into_iter().enumerate() {
            match task.await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => bail!("a replica's poll failed: {e}"),
                Err(e) if e.is_cancelled() => {
                    crashes += 1;
                    // The crashed process comes back as a new replica.
                    replicas[i] = replica(env, &options).await?;
                }
                Err(e) => bail!("a replica's poll panicked: {e}"),
            }
        }
        // Like the real loop: poll again (same tick, a little later) until every tenant's tick
        // is recorded; a crashed replica's claim has to expire first.
        let started = Instant::now();
        let mut again = 0;
        loop {
            let mut pending = 0;
            for tenant in &tenants {
                let last: Option<String> = redis::cmd("GET")
                    .arg(format!("{}:sched:{tenant}:last", options.key_prefix))
                    .query_async(&mut redis)
                    .await?;
                if last.and_then(|v| v.parse::<i64>().ok()) != Some(t.timestamp()) {
                    pending += 1;
                }
            }
            if pending == 0 {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("tick {t}: {pending} tenants still unpublished after 30 s");
            }
            again += 1;
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = t + TimeDelta::milliseconds(250 * again);
            for r in &replicas {
                r.poll_at(now).await?;
            }
        }
        if again > 0 {
            catch_up.push(started.elapsed());
        }
    }
    for r in &replicas {
        r.close().await;
    }

    // Every job delivered and settled.
    let expected = plan.ticks * tenants.len();
    let key = |message_id: &str| -> Option<(String, DateTime<Utc>)> {
        let (tenant, tick) = message_id.split_once(':')?;
        Some((tenant.to_owned(), tick.parse().ok()?))
    };
    let deadline = Instant::now() + Duration::from_secs(if plan.long { 400 } else { 150 });
    loop {
        events.drain();
        let runs = events
            .all
            .iter()
            .filter(|e| ACCEPTED.contains(&e.disposition))
            .count();
        if runs >= expected && env.queued().await? == 0 {
            // Room for a late duplicate to be settled too.
            tokio::time::sleep(Duration::from_secs(1)).await;
            events.drain();
            if env.queued().await? == 0 {
                break;
            }
        }
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for w in workers {
        w.shutdown().await;
    }
    let mut runs: BTreeMap<(String, DateTime<Utc>), usize> = BTreeMap::new();
    let mut dropped = 0;
    let mut busy = 0;
    for e in &events.all {
        if ACCEPTED.contains(&e.disposition)
            && let Some(k) = key(&e.message_id)
        {
            *runs.entry(k).or_default() += 1;
        }
        match e.disposition {
            "duplicate" => dropped += 1,
            "skipped-busy" => busy += 1,
            _ => {}
        }
    }
    let (mut missing, mut twice) = (0usize, 0usize);
    for k in 0..plan.ticks {
        let t = base + TimeDelta::minutes(k as i64);
        for tenant in &tenants {
            match runs.get(&(tenant.clone(), t)).copied().unwrap_or(0) {
                0 => missing += 1,
                1 => {}
                n => twice += n - 1,
            }
        }
    }
    let dead = crate::common::dead_letters(env).await;
    row.runs = plan.ticks;
    row.jobs = expected;
    row.faults = restarts + crashes;
    row.lost = missing.saturating_sub(dead.len());
    row.dead_lettered = dead.len();
    row.overlaps = twice
        + tenants
            .iter()
            .map(|t| events.overlapping_runs(t))
            .sum::<usize>();
    row.recovery = catch_up;
    row.notes = format!(
        "{REPLICAS} replicas, {} tenants, {} simulated ticks, 2 workers; {restarts} restarts \
         between ticks, {crashes} crashes mid-poll; jobs accepted per tick expected {expected}, \
         missing {missing}, second jobs of a tick accepted {twice}; ticks published twice and \
         dropped by the worker as duplicates: {dropped}; accepted as skipped-busy (the previous \
         tick still running): {busy}; recovery = time until a tick held by a \
         crashed replica's claim was published",
        tenants.len(),
        plan.ticks
    );
    Ok(row)
}
