//! Redis losing data under the tenant locks, on a private `redis-server` each test starts on a free
//! port (no persistence unless the test saves a snapshot itself): an empty restart, a restart from
//! an older snapshot and `FLUSHALL` are each detected for the whole fleet, no lock is granted until
//! the holder from before has stopped (at most one TTL), and no fencing number is handed out twice.
//! Also the scheduler's side: a tick a running scheduler already published is not published again
//! after its Redis records are gone.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use worker::fleet::lock::{Acquire, LockGuard, Locks};

const TTL: Duration = Duration::from_secs(3);

/// A `redis-server` of the test's own, on a free port, with its files in a temp dir.
struct PrivateRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateRedis {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let port = free_port();
        let mut redis = Self {
            port,
            dir,
            child: None,
        };
        redis.spawn().await;
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn dump(&self) -> PathBuf {
        self.dir.path().join("dump.rdb")
    }

    /// Starts the server on the same port and directory: it loads `dump.rdb` if there is one.
    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--dir", &self.dir.path().to_string_lossy()])
            .args(["--dbfilename", "dump.rdb"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("redis-server must be installed: {e}"));
        self.child = Some(child);
        let client = redis::Client::open(self.url()).unwrap_or_else(|e| panic!("{e}"));
        for _ in 0..100 {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "the private redis-server on port {} did not start",
            self.port
        );
    }

    /// Stops the server without saving (what a crash or a kill does to an unpersisted Redis).
    async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn cmd(&self, args: &[&str]) -> redis::Value {
        let client = redis::Client::open(self.url()).unwrap_or_else(|e| panic!("{e}"));
        let mut c = client
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    async fn hget(&self, key: &str, field: &str) -> Option<String> {
        match self.cmd(&["HGET", key, field]).await {
            redis::Value::BulkString(b) => Some(String::from_utf8_lossy(&b).into_owned()),
            _ => None,
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// One worker's `Locks`, with the timeouts the worker uses.
fn locks(redis: &PrivateRedis, prefix: &str) -> Locks {
    let client = redis::Client::open(redis.url()).unwrap_or_else(|e| panic!("{e}"));
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_max_delay(Duration::from_millis(200));
    let conn =
        ConnectionManager::new_lazy_with_config(client, config).unwrap_or_else(|e| panic!("{e}"));
    Locks::new(conn, prefix, TTL)
}

/// Takes the lock, waiting out every `Wait` (and Redis still reconnecting); returns the guard and
/// the waits it was told.
async fn acquire(locks: &Locks, tenant: &str) -> (LockGuard, Vec<Duration>) {
    let mut waits = Vec::new();
    for _ in 0..100 {
        match locks.try_acquire(tenant).await {
            Ok(Acquire::Acquired(guard)) => return (guard, waits),
            Ok(Acquire::Wait(d)) => {
                waits.push(d);
                tokio::time::sleep(d).await;
            }
            Ok(Acquire::Busy) => panic!("{tenant} is held by someone else"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!("no lock on {tenant} after 100 attempts");
}

/// The first answer that is not a connection error (Redis may still be coming back).
async fn try_acquire(locks: &Locks, tenant: &str) -> Acquire {
    for _ in 0..100 {
        match locks.try_acquire(tenant).await {
            Ok(a) => return a,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!("Redis did not answer for {tenant}");
}

/// Waits (bounded) until the holder is told its lock is lost.
async fn lost(guard: &LockGuard) {
    tokio::time::timeout(3 * TTL, guard.lost().cancelled())
        .await
        .unwrap_or_else(|_| panic!("the holder from before was never told its lock is lost"));
}

/// The epoch is established (a first lock taken and released), as in a fleet already running.
async fn healthy(redis: &PrivateRedis, prefix: &str) -> Locks {
    let l = locks(redis, prefix);
    let (guard, _) = acquire(&l, "warm-up").await;
    let _ = guard.release().await;
    l
}

/// After the loss: the other worker is told to wait, for every tenant, at most one TTL; when it
/// gets the lock the holder from before has been told to stop or its lease has run out; its fence
/// is above every fence handed out before.
async fn after_loss(redis: &PrivateRedis, prefix: &str, holder: LockGuard, tenant: &str) -> u64 {
    let other = locks(redis, prefix);
    let Acquire::Wait(wait) = try_acquire(&other, tenant).await else {
        panic!("a lock was granted right after Redis lost its data");
    };
    assert!(wait > Duration::ZERO && wait <= TTL, "waits {wait:?}");
    assert!(
        matches!(
            try_acquire(&other, "brand-new").await,
            Acquire::Wait(d) if d <= wait
        ),
        "the wait is for the whole fleet, with one deadline"
    );
    lost(&holder).await;
    let (guard, _) = acquire(&other, tenant).await;
    assert!(
        holder.lost().is_cancelled() || !holder.lease().valid(),
        "the holder from before still ran when the lock was granted again"
    );
    assert!(
        guard.fence > holder.fence,
        "fence {} after the loss, {} before",
        guard.fence,
        holder.fence
    );
    assert_ne!(guard.epoch, holder.epoch, "a new epoch began");
    guard.fence
}

#[tokio::test]
async fn a_brand_new_tenant_on_a_healthy_redis_is_locked_at_once() {
    let redis = PrivateRedis::start().await;
    let prefix = harness::unique("loss");
    let l = healthy(&redis, &prefix).await;
    let second_worker = locks(&redis, &prefix);
    // 40 brand-new tenants (the issue's fresh deployment), spread over two workers: each is
    // locked at the first attempt, none is told to wait.
    let mut guards = Vec::new();
    for i in 0..40 {
        let worker = if i % 2 == 0 { &l } else { &second_worker };
        match try_acquire(worker, &format!("new-{i}")).await {
            Acquire::Acquired(g) => guards.push(g),
            other => panic!("brand-new tenant {i} got {other:?}"),
        }
    }
    for g in guards {
        let _ = g.release().await;
    }
}

#[tokio::test]
async fn flushall_makes_the_fleet_wait_at_most_a_ttl_and_no_fence_repeats() {
    let redis = PrivateRedis::start().await;
    let prefix = harness::unique("loss");
    let l = healthy(&redis, &prefix).await;
    let (holder, _) = acquire(&l, "acme").await;
    redis.cmd(&["FLUSHALL"]).await;
    after_loss(&redis, &prefix, holder, "acme").await;
    assert_eq!(
        redis
            .hget(&format!("{prefix}:epoch"), "cause")
            .await
            .as_deref(),
        Some("flushed")
    );
}

#[tokio::test]
async fn an_empty_restart_makes_the_fleet_wait_at_most_a_ttl_and_no_fence_repeats() {
    let mut redis = PrivateRedis::start().await;
    let prefix = harness::unique("loss");
    let l = healthy(&redis, &prefix).await;
    let (holder, _) = acquire(&l, "acme").await;
    redis.stop().await;
    redis.spawn().await;
    assert!(!redis.dump().exists(), "nothing to load: an empty restart");
    after_loss(&redis, &prefix, holder, "acme").await;
}

#[tokio::test]
async fn a_restart_from_an_older_snapshot_makes_the_fleet_wait_and_no_fence_repeats() {
    let mut redis = PrivateRedis::start().await;
    let prefix = harness::unique("loss");
    let l = healthy(&redis, &prefix).await;
    let (first, _) = acquire(&l, "acme").await;
    let before_snapshot = first.fence;
    let _ = first.release().await;
    redis.cmd(&["SAVE"]).await;
    let (holder, _) = acquire(&l, "acme").await;
    assert_eq!(holder.fence, before_snapshot + 1);
    redis.stop().await;
    redis.spawn().await;
    let fencing = format!("{prefix}:fencing:acme");
    assert_eq!(
        redis.hget(&fencing, "n").await,
        Some(before_snapshot.to_string()),
        "the restart loaded the older snapshot: the counter is back one lock"
    );
    let fence = after_loss(&redis, &prefix, holder, "acme").await;
    assert_ne!(fence, before_snapshot + 1);
    assert_eq!(
        redis
            .hget(&format!("{prefix}:epoch"), "cause")
            .await
            .as_deref(),
        Some("restarted")
    );
}

/// A scheduler of the test's own (exchange, key prefix) on the private Redis, for one tenant
/// ticking every minute.
fn scheduler(
    redis: &PrivateRedis,
    exchange: &str,
    prefix: &str,
    registry: &std::path::Path,
) -> scheduler::Scheduler {
    let mut settings = shared::settings::Settings::default();
    settings.amqp.exchange = exchange.to_owned();
    settings.redis.key_prefix = prefix.to_owned();
    let registry = shared::registry::Registry::load(registry).unwrap_or_else(|e| panic!("{e}"));
    scheduler::Scheduler::new(
        scheduler::Options::from_settings(&settings).unwrap_or_else(|e| panic!("{e}")),
        &shared::secret::Secret::new(harness::amqp_url()),
        &shared::secret::Secret::new(redis.url()),
        registry,
        std::sync::Arc::new(shared::health::Health::default()),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn after_redis_lost_its_records_a_running_scheduler_does_not_publish_the_same_tick_again() {
    let redis = PrivateRedis::start().await;
    let exchange = harness::unique("loss-x");
    let prefix = harness::unique("loss");
    let tenant = harness::unique("acme");
    let registry = redis.dir.path().join("tenants.toml");
    std::fs::write(
        &registry,
        format!(
            r#"
[[tenant]]
name = "{tenant}"
region = "eu"
portal_domain = "{tenant}.learning-admin.com"
api_base_url = "https://api.learning-admin.com/eu"
ftps_host = "ftp-eu.learning-admin.com"
admin = {{ username = "admin", email = "admin@{tenant}.example" }}
schedule = "* * * * *"
"#
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let s = scheduler(&redis, &exchange, &prefix, &registry);
    let tick = chrono::DateTime::parse_from_rfc3339("2031-05-01T10:00:00Z")
        .unwrap_or_else(|e| panic!("{e}"))
        .with_timezone(&chrono::Utc);
    let first = s
        .poll_at(tick + chrono::TimeDelta::seconds(5))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first.published.len(), 1, "{first:?}");
    let last = format!("{prefix}:sched:{tenant}:last");
    assert!(matches!(
        redis.cmd(&["EXISTS", &last]).await,
        redis::Value::Int(1)
    ));

    redis.cmd(&["FLUSHALL"]).await;
    let again = s
        .poll_at(tick + chrono::TimeDelta::seconds(20))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(again.published.is_empty(), "published again: {again:?}");
    assert_eq!(
        redis.cmd(&["GET", &last]).await,
        redis::Value::BulkString(tick.timestamp().to_string().into_bytes()),
        "the forgotten tick was written back for the other replicas"
    );
    let next = s
        .poll_at(tick + chrono::TimeDelta::seconds(65))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        next.published.len(),
        1,
        "the next tick is published: {next:?}"
    );

    // The limit: a replica started after the loss, with nothing in Redis, cannot know (the
    // worker's record of the run in the tenant's account catches that one).
    redis.cmd(&["FLUSHALL"]).await;
    let fresh = scheduler(&redis, &exchange, &prefix, &registry);
    let blind = fresh
        .poll_at(tick + chrono::TimeDelta::seconds(70))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(blind.published.len(), 1, "{blind:?}");

    s.close().await;
    fresh.close().await;
    let topo = shared::amqp::Topology::new(
        &exchange,
        "eu",
        5,
        &shared::settings::Settings::default().amqp.retry_delays,
    );
    if let Ok(conn) =
        lapin::Connection::connect(&harness::amqp_url(), lapin::ConnectionProperties::default())
            .await
        && let Ok(ch) = conn.create_channel().await
    {
        let mut queues = vec![topo.queue.clone(), topo.dead_queue.clone()];
        queues.extend(topo.retry_delays.iter().map(|d| topo.retry_queue(*d)));
        for q in queues {
            let _ = ch
                .queue_delete(
                    q.as_str().into(),
                    lapin::options::QueueDeleteOptions::default(),
                )
                .await;
        }
        let _ = conn.close(200, "done".into()).await;
    }
}

/// Redis data loss between two ticks: the tick that ran is published again (a scheduler replica
/// started after the loss knows nothing, as above) while a new file waits on the account. The
/// worker's Redis record of the tick is gone too; the record on the tenant's account
/// (`/tmp/last-tick`) recognises the tick: it is dropped as a duplicate and imports nothing. The
/// next tick runs and imports the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_redis_lost_its_data_a_tick_published_again_is_not_run_again_and_the_next_one_runs() {
    use harness::fleet_env::{FleetEnv, FleetOptions, collect_until};
    let redis = PrivateRedis::start().await;
    let env = FleetEnv::new(FleetOptions {
        tenants: 1,
        redis_url: Some(redis.url()),
        ..FleetOptions::default()
    })
    .await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let worker = env.spawn_worker("w", tx);
    let tick = chrono::DateTime::parse_from_rfc3339("2031-06-01T10:00:00Z")
        .unwrap_or_else(|e| panic!("{e}"))
        .with_timezone(&chrono::Utc);
    let done = |job: &shared::job::JobV1| {
        let id = job.job_id.to_string();
        move |e: &[worker::fleet::JobEvent]| e.iter().any(|e| e.job_id == id)
    };
    let first = env.publish_job(env.tenant(0), tick).await;
    let events = collect_until(&mut rx, Duration::from_secs(60), done(&first)).await;
    assert_eq!(events[events.len() - 1].disposition, "no-file");
    let record = env.accounts[0]
        .read("tmp/last-tick")
        .unwrap_or_else(|| panic!("the tick record on the account"));
    assert!(
        String::from_utf8_lossy(&record).contains(&first.job_id.to_string()),
        "{record:?}"
    );

    redis.cmd(&["FLUSHALL"]).await;
    env.accounts[0].put(
        "uploads/user-import.csv",
        harness::fixtures::users_csv("tick", 5).as_bytes(),
    );
    let again = env.publish_job(env.tenant(0), tick).await;
    let events = collect_until(&mut rx, Duration::from_secs(60), done(&again)).await;
    let dropped = &events[events.len() - 1];
    assert_eq!(dropped.disposition, "duplicate", "{events:#?}");
    assert_eq!(dropped.reason, "duplicate-tick");
    assert!(
        env.fake.users(&env.domain(0)).is_empty(),
        "the tick published again imported nothing"
    );
    assert_eq!(env.fake.calls(&env.domain(0)).total(), 0, "no API call");

    let next = env
        .publish_job(env.tenant(0), tick + chrono::TimeDelta::minutes(1))
        .await;
    let events = collect_until(&mut rx, Duration::from_secs(60), done(&next)).await;
    worker.shutdown().await;
    assert_eq!(
        events[events.len() - 1].disposition,
        "imported",
        "{events:#?}"
    );
    assert_eq!(env.fake.users(&env.domain(0)).len(), 5);
    assert_eq!(env.fake.calls(&env.domain(0)).duplicate_creates(), 0);
    env.cleanup().await;
}

/// A job started by hand is never held back by the tick record: its trigger is not a tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_started_by_hand_runs_whatever_tick_the_account_recorded() {
    let env = harness::tenant_env::TenantEnv::new().await;
    env.account.put(
        "tmp/last-tick",
        br#"{"tick":"2999-01-01T00:00:00Z","job_id":"00000000-0000-0000-0000-000000000000"}"#,
    );
    env.upload(&harness::fixtures::users_csv("hand", 3));
    let result = env.run().await;
    assert!(
        matches!(&result, Ok(worker::Outcome::Imported { .. })),
        "{result:?}"
    );
    assert_eq!(env.fake.users(&env.domain).len(), 3);
}
