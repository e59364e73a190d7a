//! The scheduler against the machine's RabbitMQ and Redis: one job per tenant per tick with
//! several replicas, catch-up within the window, a dead replica's claim, manual triggers, `once`
//! rounds, and a returned (unroutable) publish reported as a failure.
//!
//! Each test has its own exchange (so its queues `<x>.<region>` are its own), Redis key prefix and
//! registry file, and deletes its queues, exchanges and keys at the end. Times are explicit
//! (`poll_at(t)`), so no test waits for the clock, except for a Redis claim to expire.

use std::collections::BTreeSet;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures::FutureExt;
use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use scheduler::chrono::{DateTime, TimeDelta, Utc};
use scheduler::{Options, PollReport, Publisher, PublisherConfig, Scheduler, SchedulerError};
use shared::TenantName;
use shared::amqp::{PublishError, Topology};
use shared::health::Health;
use shared::job::{JobMessage, JobV1, Trigger};
use shared::registry::Registry;
use shared::secret::Secret;
use shared::settings::Settings;

use harness::fixtures::TenantEntry;

/// Bounds every network step so a broken service fails the test instead of hanging it.
const STEP: Duration = Duration::from_secs(30);
const REGION: &str = "eu";

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(STEP, fut)
        .await
        .with_context(|| format!("{what} took longer than {STEP:?}"))
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .map(|d| d.with_timezone(&Utc))
        .unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// One test's world: exchange, key prefix, registry file, a channel and a Redis connection of its
/// own to look at what the schedulers did.
struct Env {
    exchange: String,
    prefix: String,
    registry: PathBuf,
    tenants: Vec<String>,
    options: Options,
    conn: Connection,
    channel: Channel,
    redis: redis::aio::MultiplexedConnection,
    _dir: tempfile::TempDir,
}

/// A tenant of the test registry: name suffix, cron, enabled.
struct T(&'static str, &'static str, bool);

impl Env {
    async fn new(tenants: &[T]) -> Result<Self> {
        let exchange = harness::unique("sched-x");
        let prefix = harness::unique("sched-k");
        let dir = tempfile::tempdir()?;
        let registry = dir.path().join("tenants.toml");
        let mut names = Vec::new();
        let mut text = String::new();
        for T(label, schedule, enabled) in tenants {
            let name = harness::unique(label);
            text.push_str(
                &TenantEntry {
                    region: REGION.to_owned(),
                    api_base_url: format!("https://api.learning-admin.com/{REGION}"),
                    ftps_host: format!("ftp-{REGION}.learning-admin.com"),
                    extra: format!("schedule = \"{schedule}\"\nenabled = {enabled}"),
                    ..TenantEntry::new(&name)
                }
                .toml(),
            );
            names.push(name);
        }
        std::fs::write(&registry, text)?;

        let mut settings = Settings::default();
        settings.amqp.exchange = exchange.clone();
        settings.amqp.retry_delays = Vec::new();
        settings.redis.key_prefix = prefix.clone();
        settings.scheduler.regions = vec![REGION.into()];
        let options = Options::from_settings(&settings)?;

        let conn = within(
            "amqp connect",
            Connection::connect(&harness::amqp_url(), ConnectionProperties::default()),
        )
        .await?
        .context("connecting to RabbitMQ")?;
        let channel = conn.create_channel().await?;
        let client = redis::Client::open(harness::redis_url())?;
        let redis = within("redis connect", client.get_multiplexed_async_connection())
            .await?
            .context("connecting to Redis")?;
        Ok(Self {
            exchange,
            prefix,
            registry,
            tenants: names,
            options,
            conn,
            channel,
            redis,
            _dir: dir,
        })
    }

    fn tenant(&self, i: usize) -> &str {
        &self.tenants[i]
    }

    fn queue(&self) -> String {
        format!("{}.{REGION}", self.exchange)
    }

    fn topology(&self) -> Topology {
        Topology::new(
            &self.exchange,
            REGION,
            self.options.delivery_limit,
            &self.options.retry_delays,
        )
    }

    /// A replica with its own connections (not connected yet).
    fn replica_with(&self, options: Options) -> Result<Arc<Scheduler>> {
        let registry = Registry::load(&self.registry)?;
        Ok(Arc::new(Scheduler::new(
            options,
            &Secret::new(harness::amqp_url()),
            &Secret::new(harness::redis_url()),
            registry,
            Arc::new(Health::default()),
        )?))
    }

    /// A connected replica.
    async fn replica(&self) -> Result<Arc<Scheduler>> {
        let s = self.replica_with(self.options.clone())?;
        within("scheduler connect", s.connect()).await??;
        ensure!(
            s.health().ready(),
            "a connected scheduler reports ready: {:?}",
            s.health()
        );
        Ok(s)
    }

    fn last_key(&self, tenant: &str) -> String {
        format!("{}:sched:{tenant}:last", self.prefix)
    }

    fn claim_key(&self, tenant: &str) -> String {
        format!("{}:sched:{tenant}:claim", self.prefix)
    }

    async fn redis_get(&self, key: &str) -> Result<Option<String>> {
        let mut con = self.redis.clone();
        Ok(redis::cmd("GET").arg(key).query_async(&mut con).await?)
    }

    async fn redis_set(&self, key: &str, value: &str, px: Option<u64>) -> Result<()> {
        let mut con = self.redis.clone();
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value);
        if let Some(ms) = px {
            cmd.arg("PX").arg(ms);
        }
        let _: String = cmd.query_async(&mut con).await?;
        Ok(())
    }

    /// Every message in the region's queue, taken off it.
    async fn drain(&self) -> Result<Vec<(BasicProperties, JobV1)>> {
        let mut out = Vec::new();
        let queue = self.queue();
        while let Some(msg) = within(
            "basic.get",
            self.channel
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true }),
        )
        .await??
        {
            let JobMessage::V1(job) = JobMessage::decode(&msg.delivery.data)?;
            out.push((msg.delivery.properties, job));
        }
        Ok(out)
    }

    /// Deletes what the test created: queues, exchanges, Redis keys.
    async fn cleanup(self) {
        let topo = self.topology();
        for q in [&topo.queue, &topo.dead_queue] {
            let _ = self
                .channel
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        for x in [&topo.exchange, &topo.dlx] {
            let _ = self
                .channel
                .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
        let mut con = self.redis.clone();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.prefix))
            .query_async(&mut con)
            .await
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<i64, _> = redis::cmd("DEL").arg(&keys).query_async(&mut con).await;
        }
        let _ = self.conn.close(200, "done".into()).await;
    }
}

/// Runs `body` with a fresh [`Env`], then cleans up whatever the outcome, a failed assertion
/// (a panic) included.
async fn with_env<F, Fut>(tenants: &[T], body: F) -> Result<()>
where
    F: FnOnce(Arc<Env>) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let env = Arc::new(Env::new(tenants).await?);
    let result = AssertUnwindSafe(body(env.clone())).catch_unwind().await;
    match Arc::try_unwrap(env) {
        Ok(env) => env.cleanup().await,
        Err(_) => eprintln!("the test kept its Env alive: nothing cleaned up"),
    }
    match result {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Polls `t` on every replica at once (each on its own task) and returns their reports.
async fn poll_all(replicas: &[Arc<Scheduler>], t: DateTime<Utc>) -> Result<Vec<PollReport>> {
    let tasks: Vec<_> = replicas
        .iter()
        .map(|s| {
            let s = s.clone();
            tokio::spawn(async move { s.poll_at(t).await })
        })
        .collect();
    let mut reports = Vec::new();
    for task in tasks {
        reports.push(within("poll", task).await???);
    }
    Ok(reports)
}

fn published(reports: &[PollReport]) -> Vec<(String, DateTime<Utc>)> {
    let mut all: Vec<_> = reports
        .iter()
        .flat_map(|r| r.published.iter().map(|(t, tick)| (t.to_string(), *tick)))
        .collect();
    all.sort();
    all
}

fn no_failures(reports: &[PollReport]) -> Result<()> {
    for r in reports {
        if let Some(f) = r.failed.first() {
            bail!("tick of {} failed: {}", f.tenant, f.error);
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_polling_the_same_tick_publish_exactly_one_job_per_tenant() -> Result<()> {
    let tenants: Vec<T> = (0..5).map(|_| T("sched-n", "* * * * *", true)).collect();
    with_env(&tenants, |env| async move {
        let replicas = vec![
            env.replica().await?,
            env.replica().await?,
            env.replica().await?,
        ];
        let t = at("2030-01-01T00:00:00Z");

        let reports = poll_all(&replicas, t).await?;
        no_failures(&reports)?;
        let expected: Vec<(String, DateTime<Utc>)> =
            env.tenants.iter().map(|n| (n.clone(), t)).collect();
        let mut expected = expected;
        expected.sort();
        assert_eq!(
            published(&reports),
            expected,
            "one publish per tenant across the replicas"
        );
        for r in &reports {
            assert_eq!(
                r.published.len() + r.busy.len() + r.already_published.len(),
                env.tenants.len(),
                "every replica accounts for every tenant: {r:?}"
            );
        }

        let messages = env.drain().await?;
        assert_eq!(
            messages.len(),
            env.tenants.len(),
            "exactly N messages in {}",
            env.queue()
        );
        let mut ids = BTreeSet::new();
        let mut seen = BTreeSet::new();
        for (props, job) in &messages {
            assert_eq!(job.trigger, Trigger::Schedule);
            assert_eq!(job.region, REGION);
            assert_eq!(job.scheduled_for, t);
            assert_eq!(
                props.message_id().as_ref().map(|m| m.as_str().to_owned()),
                Some(format!("{}:{}", job.tenant, t.to_rfc3339())),
                "message_id is <tenant>:<tick>"
            );
            assert_eq!(*props.delivery_mode(), Some(2), "persistent");
            assert_eq!(job.job_id.get_version_num(), 4, "job_id is a UUID v4");
            ids.insert(job.job_id);
            seen.insert(job.tenant.clone());
        }
        assert_eq!(ids.len(), env.tenants.len(), "distinct job ids");
        assert_eq!(seen, env.tenants.iter().cloned().collect::<BTreeSet<_>>());

        for name in &env.tenants {
            assert_eq!(
                env.redis_get(&env.last_key(name)).await?,
                Some(t.timestamp().to_string())
            );
            assert_eq!(
                env.redis_get(&env.claim_key(name)).await?,
                None,
                "claims are released"
            );
        }

        // The same tick again, and a second later: nothing.
        for again in [t, t + TimeDelta::seconds(1)] {
            let reports = poll_all(&replicas, again).await?;
            no_failures(&reports)?;
            assert_eq!(published(&reports), vec![], "nothing new at {again}");
        }
        assert_eq!(env.drain().await?.len(), 0, "no second job for the tick");

        // The next tick is published once more, by one replica per tenant.
        let next = t + TimeDelta::minutes(1);
        let reports = poll_all(&replicas, next).await?;
        assert_eq!(published(&reports).len(), env.tenants.len());
        assert_eq!(env.drain().await?.len(), env.tenants.len());

        for s in &replicas {
            s.close().await;
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_downtime_one_poll_publishes_only_the_latest_missed_tick_inside_the_window()
-> Result<()> {
    let tenants = [
        T("sched-recent", "* * * * *", true),
        T("sched-hourly", "0 * * * *", true),
    ];
    with_env(&tenants, |env| async move {
        let mut options = env.options.clone();
        options.catch_up_window = Duration::from_secs(5 * 60);
        let s = env.replica_with(options)?;
        within("connect", s.connect()).await??;
        let (recent, hourly) = (env.tenant(0), env.tenant(1));

        // The every-minute tenant last published 10:03; 10:04, 10:05 and 10:06 were missed.
        let t = at("2030-01-01T10:06:30Z");
        env.redis_set(
            &env.last_key(recent),
            &at("2030-01-01T10:03:00Z").timestamp().to_string(),
            None,
        )
        .await?;
        let report = within("poll", s.poll_at(t)).await??;
        no_failures(std::slice::from_ref(&report))?;
        let latest = at("2030-01-01T10:06:00Z");
        assert_eq!(
            published(std::slice::from_ref(&report)),
            vec![(recent.to_owned(), latest)],
            "one job, for the latest missed tick; the hourly tenant's 10:00 is older than the window"
        );
        let messages = env.drain().await?;
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].1.scheduled_for, latest);
        assert_eq!(
            env.redis_get(&env.last_key(recent)).await?,
            Some(latest.timestamp().to_string())
        );
        assert_eq!(env.redis_get(&env.last_key(hourly)).await?, None);

        // Polling again in the same minute publishes nothing.
        let report = within("poll", s.poll_at(t + TimeDelta::seconds(20))).await??;
        assert!(report.published.is_empty(), "{report:?}");

        // The hourly tenant is not broken: its next tick, inside the window, is published.
        let report = within("poll", s.poll_at(at("2030-01-01T11:00:30Z"))).await??;
        let top = at("2030-01-01T11:00:00Z");
        let mut expected = vec![(recent.to_owned(), top), (hourly.to_owned(), top)];
        expected.sort();
        assert_eq!(published(std::slice::from_ref(&report)), expected);
        assert_eq!(env.drain().await?.len(), 2);
        s.close().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_left_by_a_dead_replica_blocks_the_tick_until_it_expires_then_it_is_published_once()
-> Result<()> {
    with_env(&[T("sched-dead", "0 0 * * *", true)], |env| async move {
        let replicas = vec![
            env.replica().await?,
            env.replica().await?,
            env.replica().await?,
        ];
        let name = env.tenant(0).to_owned();
        let t = at("2030-01-02T00:00:05Z");
        let tick = at("2030-01-02T00:00:00Z");

        // A replica claimed the tick and died: its claim lives 1.5 s.
        let claim = env.claim_key(&name);
        env.redis_set(
            &claim,
            &format!("{}:dead-replica", tick.timestamp()),
            Some(1500),
        )
        .await?;
        let reports = poll_all(&replicas, t).await?;
        no_failures(&reports)?;
        assert_eq!(
            published(&reports),
            vec![],
            "nobody publishes over a live claim"
        );
        for r in &reports {
            assert_eq!(r.busy.len(), 1, "{r:?}");
            assert_eq!(r.busy[0].1, tick);
        }
        assert_eq!(env.drain().await?.len(), 0);

        // Wait (bounded) for Redis to expire the claim.
        let deadline = Instant::now() + Duration::from_secs(15);
        while env.redis_get(&claim).await?.is_some() {
            ensure!(Instant::now() < deadline, "{claim} did not expire");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let reports = poll_all(&replicas, t).await?;
        no_failures(&reports)?;
        assert_eq!(published(&reports), vec![(name.clone(), tick)]);
        let messages = env.drain().await?;
        assert_eq!(messages.len(), 1, "published once");
        assert_eq!(messages[0].1.scheduled_for, tick);

        let reports = poll_all(&replicas, t + TimeDelta::seconds(30)).await?;
        assert_eq!(published(&reports), vec![]);
        for s in &replicas {
            s.close().await;
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_publishes_a_manual_job_now_even_for_a_disabled_tenant_and_refuses_an_unknown_one()
-> Result<()> {
    with_env(&[T("sched-manual", "0 0 * * *", false)], |env| async move {
        let s = env.replica().await?;
        let name = env.tenant(0).to_owned();
        let now = Utc::now();

        let first = within("trigger", s.trigger(&name, now)).await??;
        let second = within("trigger", s.trigger(&name, now)).await??;
        assert_eq!(first.trigger, Trigger::Manual);
        assert_ne!(first.job_id, second.job_id);
        assert!((first.scheduled_for - now).num_milliseconds().abs() < 1000);

        let messages = env.drain().await?;
        assert_eq!(messages.len(), 2, "manual jobs are not deduplicated");
        for (props, job) in &messages {
            assert_eq!(job.trigger, Trigger::Manual);
            assert_eq!(job.tenant, name);
            assert_eq!(
                props.message_id().as_ref().map(|m| m.as_str().to_owned()),
                Some(job.message_id())
            );
            assert_eq!(*props.delivery_mode(), Some(2));
        }
        assert_eq!(
            env.redis_get(&env.last_key(&name)).await?,
            None,
            "a manual job leaves the schedule's ledger alone"
        );

        // Disabled, so a scheduled poll at its tick publishes nothing.
        let report = within("poll", s.poll_at(at("2030-01-01T00:00:00Z"))).await??;
        assert!(report.published.is_empty(), "{report:?}");

        match s.trigger("nobody-here", now).await {
            Err(SchedulerError::UnknownTenant(t)) => assert_eq!(t, "nobody-here"),
            other => bail!("expected an unknown-tenant error, got {other:?}"),
        }
        assert_eq!(env.drain().await?.len(), 0);
        s.close().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_once_rounds_in_the_same_second_publish_one_job_per_tenant() -> Result<()> {
    let tenants = [
        T("sched-once", "0 0 1 1 *", true),
        T("sched-once", "0 0 1 1 *", true),
        T("sched-off", "0 0 1 1 *", false),
    ];
    with_env(&tenants, |env| async move {
        let (a, b) = (env.replica().await?, env.replica().await?);
        let t = at("2030-06-01T12:00:00.100Z");
        let (ra, rb) = {
            let (a2, b2) = (a.clone(), b.clone());
            let ta = tokio::spawn(async move { a2.once_at(t).await });
            let tb =
                tokio::spawn(async move { b2.once_at(t + TimeDelta::milliseconds(700)).await });
            (within("once", ta).await???, within("once", tb).await???)
        };
        let reports = [ra, rb];
        no_failures(&reports)?;
        let tick = at("2030-06-01T12:00:00Z");
        let mut expected = vec![
            (env.tenant(0).to_owned(), tick),
            (env.tenant(1).to_owned(), tick),
        ];
        expected.sort();
        assert_eq!(
            published(&reports),
            expected,
            "the disabled tenant is left out"
        );
        let messages = env.drain().await?;
        assert_eq!(messages.len(), 2);
        assert!(
            messages
                .iter()
                .all(|(_, j)| j.trigger == Trigger::Schedule && j.scheduled_for == tick)
        );

        // The next second is a new round.
        let report = within("once", a.once_at(t + TimeDelta::seconds(1))).await??;
        assert_eq!(report.published.len(), 2);
        assert_eq!(env.drain().await?.len(), 2);
        a.close().await;
        b.close().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_the_broker_returns_as_unroutable_is_a_failure_and_the_tick_is_retried()
-> Result<()> {
    with_env(&[T("sched-noq", "* * * * *", true)], |env| async move {
        let s = env.replica().await?;
        let name = env.tenant(0).to_owned();
        let t = at("2030-01-01T00:00:00Z");

        // The region's queue disappears; the exchange stays, with no binding for the region.
        env.channel
            .queue_delete(env.queue().as_str().into(), QueueDeleteOptions::default())
            .await?;
        let report = within("poll", s.poll_at(t)).await??;
        assert!(report.published.is_empty(), "{report:?}");
        match report.failed.as_slice() {
            [f] => {
                assert_eq!(f.tenant.as_str(), name);
                assert_eq!(f.tick, Some(t));
                assert!(
                    matches!(f.error, SchedulerError::Publish(PublishError::Returned(_))),
                    "expected a returned message, got {}",
                    f.error
                );
                assert!(f.error.is_retryable());
            }
            other => bail!("expected one failure, got {other:?}"),
        }
        assert_eq!(
            env.redis_get(&env.claim_key(&name)).await?,
            None,
            "the claim was released"
        );
        assert_eq!(
            env.redis_get(&env.last_key(&name)).await?,
            None,
            "the tick is not recorded"
        );

        // Once the queue is back, the next poll publishes the tick.
        env.topology().declare(&env.channel).await?;
        let report = within("poll", s.poll_at(t)).await??;
        no_failures(std::slice::from_ref(&report))?;
        assert_eq!(
            published(std::slice::from_ref(&report)),
            vec![(name.clone(), t)]
        );
        assert_eq!(env.drain().await?.len(), 1);
        s.close().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_reports_a_message_to_an_exchange_without_the_regions_queue_as_returned()
-> Result<()> {
    with_env(&[], |env| async move {
        // The exchange only: no queue, no binding.
        env.channel
            .exchange_declare(
                env.exchange.as_str().into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let health = Arc::new(Health::default());
        let publisher = Publisher::new(
            PublisherConfig {
                url: Secret::new(harness::amqp_url()),
                exchange: env.exchange.clone(),
                delivery_limit: env.options.delivery_limit,
                retry_delays: Vec::new(),
                regions: Vec::new(),
                connect_timeout: Duration::from_secs(10),
                publish_timeout: Duration::from_secs(10),
            },
            health.clone(),
        );
        within("connect", publisher.connect()).await??;
        assert!(health.broker.load(std::sync::atomic::Ordering::Relaxed));
        let job = JobV1 {
            job_id: uuid::Uuid::new_v4(),
            tenant: TenantName::parse("acme")?.to_string(),
            region: REGION.into(),
            scheduled_for: at("2030-01-01T00:00:00Z"),
            trigger: Trigger::Schedule,
        };
        match within("publish", publisher.publish(&job)).await? {
            Err(SchedulerError::Publish(PublishError::Returned(why))) => {
                assert!(why.contains("312") || why.contains("NO_ROUTE"), "{why}");
            }
            other => bail!("expected the message to be returned, got {other:?}"),
        }
        // A returned message is the broker answering: the connection stays up.
        assert!(publisher.is_connected().await);
        publisher.close().await;
        assert!(!health.broker.load(std::sync::atomic::Ordering::Relaxed));
        Ok(())
    })
    .await
}
