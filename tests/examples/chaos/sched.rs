//! Scheduler replicas: three in-process `Scheduler`s (each with its own broker and Redis
//! connections, as three processes would have) poll the same simulated ticks, one minute apart,
//! for five tenants scheduled every minute. Before a tick, each replica is restarted (closed and
//! replaced by a new one) with some probability; during a tick, one replica may crash mid-poll
//! (its task aborted at a random point, leaving whatever claim it held to expire) and is then
//! replaced. Replicas poll each tick again until every tenant's tick is recorded, as the real loop
//! would. Evidence: the queue, drained at the end, holds exactly one job per tenant per tick.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use lapin::options::{BasicGetOptions, ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};
use rand::Rng;
use rand::rngs::StdRng;
use scheduler::chrono::{DateTime, TimeDelta, Utc};
use scheduler::{Options, Scheduler};
use shared::amqp::Topology;
use shared::health::Health;
use shared::job::JobMessage;
use shared::registry::Registry;
use shared::secret::Secret;
use shared::settings::Settings;

use crate::Plan;
use crate::harness;
use crate::table::Row;

const TENANTS: usize = 5;
const REPLICAS: usize = 3;
const REGION: &str = "eu";

struct World {
    options: Options,
    registry: std::path::PathBuf,
    tenants: Vec<String>,
    redis: redis::aio::MultiplexedConnection,
    _dir: tempfile::TempDir,
}

impl World {
    async fn replica(&self) -> Result<Arc<Scheduler>> {
        let s = Arc::new(Scheduler::new(
            self.options.clone(),
            &Secret::new(harness::amqp_url()),
            &Secret::new(harness::redis_url()),
            Registry::load(&self.registry)?,
            Arc::new(Health::default()),
        )?);
        tokio::time::timeout(Duration::from_secs(20), s.connect())
            .await
            .context("scheduler connect timed out")??;
        Ok(s)
    }

    async fn last(&self, tenant: &str) -> Result<Option<i64>> {
        let mut con = self.redis.clone();
        let v: Option<String> = redis::cmd("GET")
            .arg(format!("{}:sched:{tenant}:last", self.options.key_prefix))
            .query_async(&mut con)
            .await?;
        Ok(v.and_then(|v| v.parse().ok()))
    }
}

pub async fn run(plan: Plan, mut rng: StdRng) -> Result<Row> {
    let exchange = harness::unique("chaos-sx");
    let prefix = harness::unique("chaos-sk");
    let dir = tempfile::tempdir()?;
    let registry = dir.path().join("tenants.toml");
    let mut tenants = Vec::new();
    let mut text = String::new();
    for _ in 0..TENANTS {
        let name = harness::unique("chaos-s");
        text.push_str(&format!(
            r#"
[[tenant]]
name = "{name}"
region = "{REGION}"
portal_domain = "{name}.learning-admin.com"
api_base_url = "https://api.learning-admin.com/{REGION}"
ftps_host = "ftp-{REGION}.learning-admin.com"
admin = {{ username = "admin", email = "admin@{name}.example" }}
schedule = "* * * * *"
"#
        ));
        tenants.push(name);
    }
    std::fs::write(&registry, text)?;
    let mut settings = Settings::default();
    settings.amqp.exchange = exchange.clone();
    settings.amqp.retry_delays = Vec::new();
    settings.redis.key_prefix = prefix.clone();
    settings.scheduler.regions = vec![REGION.into()];
    settings.scheduler.catch_up_window = Duration::from_secs(24 * 3600);
    let mut options = Options::from_settings(&settings)?;
    options.publish_timeout = Duration::from_secs(1);
    options.redis_timeout = Duration::from_millis(500);
    options.claim_ttl = Duration::from_millis(2500);
    let redis = redis::Client::open(harness::redis_url())?
        .get_multiplexed_async_connection()
        .await
        .context("connecting to Redis")?;
    let world = World {
        options,
        registry,
        tenants,
        redis,
        _dir: dir,
    };
    let topology = Topology::new(
        &exchange,
        REGION,
        world.options.delivery_limit,
        &world.options.retry_delays,
    );
    let result = ticks(&world, plan, &mut rng, &topology).await;
    cleanup(&world, &topology).await;
    result
}

async fn ticks(world: &World, plan: Plan, rng: &mut StdRng, topology: &Topology) -> Result<Row> {
    let mut row = Row::new("scheduler-replicas");
    let mut replicas = Vec::new();
    for _ in 0..REPLICAS {
        replicas.push(world.replica().await?);
    }
    let base: DateTime<Utc> = "2031-01-01T00:00:00Z".parse()?;
    let (mut restarts, mut crashes) = (0u64, 0u64);
    let mut catch_up = Vec::new();
    for k in 0..plan.ticks {
        let t = base + TimeDelta::minutes(k as i64);
        for r in replicas.iter_mut() {
            if rng.random_bool(0.15) {
                r.close().await;
                *r = world.replica().await?;
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
                    replicas[i] = world.replica().await?;
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
            for tenant in &world.tenants {
                if world.last(tenant).await? != Some(t.timestamp()) {
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

    // Exactly one job per tenant per tick.
    let conn = Connection::connect(&harness::amqp_url(), ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let mut per_tick: BTreeMap<(String, DateTime<Utc>), usize> = BTreeMap::new();
    while let Some(msg) = ch
        .basic_get(
            topology.queue.as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await?
    {
        let JobMessage::V1(job) = JobMessage::decode(&msg.delivery.data)?;
        *per_tick.entry((job.tenant, job.scheduled_for)).or_default() += 1;
    }
    let _ = conn.close(200, "done".into()).await;
    let expected = plan.ticks * world.tenants.len();
    let mut missing = 0;
    let mut duplicates = 0;
    for k in 0..plan.ticks {
        let t = base + TimeDelta::minutes(k as i64);
        for tenant in &world.tenants {
            match per_tick.get(&(tenant.clone(), t)).copied().unwrap_or(0) {
                0 => missing += 1,
                1 => {}
                n => duplicates += n - 1,
            }
        }
    }
    let stray = per_tick
        .keys()
        .filter(|(_, t)| *t < base || *t >= base + TimeDelta::minutes(plan.ticks as i64))
        .count();
    row.runs = plan.ticks;
    row.jobs = expected;
    row.faults = restarts + crashes;
    row.lost = missing;
    row.overlaps = duplicates + stray;
    row.recovery = catch_up;
    row.notes = format!(
        "{REPLICAS} replicas, {} tenants, {} simulated ticks; {restarts} restarts between ticks, \
         {crashes} crashes mid-poll; jobs expected {expected}, missing {missing}, extra for a tick \
         {duplicates}, for no tick {stray} (extra jobs are counted as overlaps); recovery = time \
         until a tick held by a crashed replica's claim was published",
        world.tenants.len(),
        plan.ticks
    );
    Ok(row)
}

async fn cleanup(world: &World, topology: &Topology) {
    if let Ok(conn) =
        Connection::connect(&harness::amqp_url(), ConnectionProperties::default()).await
        && let Ok(ch) = conn.create_channel().await
    {
        for q in [&topology.queue, &topology.dead_queue] {
            let _ = ch
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        for x in [&topology.exchange, &topology.dlx] {
            let _ = ch
                .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
        let _ = conn.close(200, "done".into()).await;
    }
    let mut con = world.redis.clone();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:*", world.options.key_prefix))
        .query_async(&mut con)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<i64, _> = redis::cmd("DEL").arg(&keys).query_async(&mut con).await;
    }
}
