//! Redis losing data under the tenant locks, on a private `redis-server` each test starts on a free
//! port (no persistence unless the test saves a snapshot itself): an empty restart, a restart from
//! an older snapshot and `FLUSHALL` are each detected for the whole fleet, no lock is granted until
//! the holder from before has stopped (at most one TTL), and no fencing number is handed out twice.
//! Also the scheduler's side: a tick it already published is not published again after its Redis
//! records are gone.

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
    let prefix = crate::harness::unique("loss");
    let l = healthy(&redis, &prefix).await;
    let second_worker = locks(&redis, &prefix);
    for (locks, tenant) in [(&l, "new-a"), (&second_worker, "new-b")] {
        match try_acquire(locks, tenant).await {
            Acquire::Acquired(g) => {
                let _ = g.release().await;
            }
            other => panic!("a brand-new tenant got {other:?}"),
        }
    }
}

#[tokio::test]
async fn flushall_makes_the_fleet_wait_at_most_a_ttl_and_no_fence_repeats() {
    let redis = PrivateRedis::start().await;
    let prefix = crate::harness::unique("loss");
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
    let prefix = crate::harness::unique("loss");
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
    let prefix = crate::harness::unique("loss");
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
