//! The per-tenant lock in Redis: `SET <prefix>:lock:<tenant> <random token> NX PX <ttl>`, renewed
//! every third of the TTL while the job runs, released by compare-and-delete. Each acquisition also
//! takes a fencing number (`<prefix>:fencing:<tenant>`), written to the tenant's log, so two runs
//! can always be told apart; fencing numbers never repeat for a tenant, across Redis data loss too.
//! When a renewal finds the lock gone or taken, finds that Redis lost data since the lock was
//! taken, or renewals have failed for a whole TTL, the guard's `lost` token fires and the job stops
//! before its next side effect.
//!
//! Redis data loss (an empty restart, an older snapshot, a failover, a flush) is detected for the
//! whole fleet at once by the [`epoch`] record, checked inside the same script that takes or renews
//! a lock. After a loss, no lock is granted until every holder from before has stopped, one TTL at
//! most, the same deadline for every worker: [`Locks::try_acquire`] answers [`Acquire::Wait`]
//! meanwhile, and [`Locks::acquire`] waits it out.
//!
//! The renewer only looks every third of the TTL, so it cannot be the only guard: a worker that
//! was frozen (SIGSTOP, a paused VM, a long GC-like stall) past the TTL resumes with its requests
//! in flight and would send its next write before the renewer runs. So the guard also keeps a
//! [`Lease`]: the instant until which the lock is known to be ours (the last successful SET or
//! renewal, as sent, plus four fifths of the TTL), checked locally, without a round trip, before
//! every side effect.

mod epoch;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

pub use crate::job::Lease;

const RELEASE: &str = r#"
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
else
  return 0
end"#;

/// Takes tenant locks.
#[derive(Clone)]
pub struct Locks {
    conn: ConnectionManager,
    prefix: String,
    ttl: Duration,
    /// The epoch id this worker last saw: when the record is gone while we had seen one, Redis
    /// lost data (not a brand-new fleet).
    seen: Arc<Mutex<String>>,
    acquire: Arc<redis::Script>,
    renew: Arc<redis::Script>,
    check: Arc<redis::Script>,
}

impl std::fmt::Debug for Locks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Locks")
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// What [`Locks::acquire`] got.
#[derive(Debug)]
pub enum Acquire {
    /// The lock is ours until the guard is released, dropped or `lost` fires.
    Acquired(LockGuard),
    /// Another job holds the tenant.
    Busy,
    /// Redis lost its data: no lock is granted (for any tenant) for this long, by when every
    /// holder from before has stopped. Nothing was taken; ask again after it. At most one TTL.
    Wait(Duration),
}

/// A held lock. Dropping it without `release` stops the renewals and lets the lock expire.
#[derive(Debug)]
pub struct LockGuard {
    conn: ConnectionManager,
    key: String,
    token: String,
    /// The fencing number: above every number the tenant had before, losses of Redis included.
    pub fence: u64,
    /// The Redis epoch the lock was taken in.
    pub epoch: String,
    lost: CancellationToken,
    lease: Lease,
    renewer: tokio::task::JoinHandle<()>,
}

/// A random id: lock tokens and epoch ids.
fn random_id() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    hex::encode(bytes)
}

fn script(body: &str) -> Arc<redis::Script> {
    Arc::new(redis::Script::new(&format!("{}\n{body}", epoch::PRELUDE)))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Locks {
    pub fn new(conn: ConnectionManager, prefix: &str, ttl: Duration) -> Self {
        Self {
            conn,
            prefix: prefix.to_owned(),
            ttl,
            seen: Arc::new(Mutex::new(String::new())),
            acquire: script(epoch::ACQUIRE),
            renew: script(epoch::RENEW),
            check: script(epoch::CHECK),
        }
    }

    /// The lock's time to live.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn key(&self, tenant: &str) -> String {
        format!("{}:lock:{tenant}", self.prefix)
    }

    fn epoch_key(&self) -> String {
        format!("{}:epoch", self.prefix)
    }

    fn seen(&self) -> String {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn saw(&self, id: &str) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if *seen != id {
            if !seen.is_empty() {
                tracing::warn!(
                    "Redis lost data (restart, older snapshot, failover or flush): a new lock epoch began"
                );
            }
            id.clone_into(&mut seen);
        }
    }

    /// Checks the Redis epoch without taking a lock: `Some(wait)` while no lock is granted after a
    /// data loss, `None` when locks are granted. Call it periodically (the Redis ping): a worker
    /// then knows the epoch from its start, so a loss is detected even by a worker that has taken
    /// no lock yet, and as early as possible (the fleet's deadline is one TTL after the first
    /// worker noticed).
    pub async fn check_epoch(&self) -> Result<Option<Duration>, redis::RedisError> {
        let mut conn = self.conn.clone();
        let (id, wait): (String, String) = self
            .check
            .key(self.epoch_key())
            .arg(millis(self.ttl))
            .arg(self.seen())
            .arg(random_id())
            .invoke_async(&mut conn)
            .await?;
        self.saw(&id);
        let wait: u64 = wait.parse().map_err(|_| {
            redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "unexpected reply of the epoch script",
            ))
        })?;
        Ok((wait > 0).then(|| Duration::from_millis(wait)))
    }

    /// Records `job_id` as the job of `tenant`'s tick `tick` (kept two days: a second job for a
    /// tick is published a claim TTL after the first, and waits no longer than the queue's
    /// backlog), unless another job was recorded first. True when the tick is `job_id`'s.
    pub async fn claim_tick(
        &self,
        tenant: &str,
        tick: chrono::DateTime<chrono::Utc>,
        job_id: &str,
    ) -> Result<bool, redis::RedisError> {
        let key = format!(
            "{}:tick:{tenant}:{}",
            self.prefix,
            tick.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
        );
        let mut conn = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(job_id)
            .arg("NX")
            .arg("EX")
            .arg(2 * 24 * 3600)
            .query_async(&mut conn)
            .await?;
        if set.is_some() {
            return Ok(true);
        }
        let recorded: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
        Ok(recorded.as_deref() == Some(job_id))
    }

    /// [`Locks::try_acquire`], waiting out a Redis data loss here: `Ok(None)` when another job
    /// holds the tenant. The wait holds the caller (and its delivery) for at most a TTL per loss.
    pub async fn acquire(&self, tenant: &str) -> Result<Option<LockGuard>, redis::RedisError> {
        loop {
            match self.try_acquire(tenant).await? {
                Acquire::Acquired(guard) => return Ok(Some(guard)),
                Acquire::Busy => return Ok(None),
                Acquire::Wait(d) => {
                    tracing::info!(
                        wait_ms = millis(d),
                        "Redis lost data: waiting until every lock holder from before has stopped"
                    );
                    tokio::time::sleep(d).await;
                }
            }
        }
    }

    /// Takes `tenant`'s lock: [`Acquire::Busy`] when another job holds it, [`Acquire::Wait`]
    /// while the fleet waits out a Redis data loss (nothing taken; ask again after the duration).
    /// A brand-new tenant on a healthy Redis is [`Acquire::Acquired`] at once.
    pub async fn try_acquire(&self, tenant: &str) -> Result<Acquire, redis::RedisError> {
        let key = self.key(tenant);
        let token = random_id();
        let mut conn = self.conn.clone();
        let sent = tokio::time::Instant::now();
        let reply: Vec<String> = self
            .acquire
            .key(self.epoch_key())
            .key(&key)
            .key(format!("{}:fencing:{tenant}", self.prefix))
            .arg(millis(self.ttl))
            .arg(self.seen())
            .arg(random_id())
            .arg(&token)
            .invoke_async(&mut conn)
            .await?;
        let Some((reply, epoch)) = epoch::parse(&reply) else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "unexpected reply of the lock script",
            )));
        };
        self.saw(&epoch);
        let fence = match reply {
            epoch::Reply::Wait(d) => return Ok(Acquire::Wait(d)),
            epoch::Reply::Busy => return Ok(Acquire::Busy),
            epoch::Reply::Acquired(fence) => fence,
        };
        let lost = CancellationToken::new();
        let lease = Lease::new(sent, self.ttl);
        let renewer = tokio::spawn(renew(
            Renewal {
                conn: self.conn.clone(),
                script: self.renew.clone(),
                epoch_key: self.epoch_key(),
                key: key.clone(),
                token: token.clone(),
                epoch: epoch.clone(),
            },
            lease.clone(),
            lost.clone(),
        ));
        Ok(Acquire::Acquired(LockGuard {
            conn: self.conn.clone(),
            key,
            token,
            fence,
            epoch,
            lost,
            lease,
            renewer,
        }))
    }
}

impl LockGuard {
    /// Fires when the lock is no longer ours.
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Until when the lock is known to be ours (see [`Lease`]).
    pub fn lease(&self) -> Lease {
        self.lease.clone()
    }

    /// Stops renewing and deletes the key if it still holds our token. True if it did.
    pub async fn release(self) -> Result<bool, redis::RedisError> {
        self.renewer.abort();
        let mut conn = self.conn.clone();
        let n: i64 = redis::Script::new(RELEASE)
            .key(&self.key)
            .arg(&self.token)
            .invoke_async(&mut conn)
            .await?;
        Ok(n == 1)
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

/// What the renewer sends.
struct Renewal {
    conn: ConnectionManager,
    script: Arc<redis::Script>,
    epoch_key: String,
    key: String,
    token: String,
    epoch: String,
}

async fn renew(mut r: Renewal, lease: Lease, lost: CancellationToken) {
    let ttl = lease.ttl();
    let every = ttl / 3;
    let mut last_ok = tokio::time::Instant::now();
    let key = r.key.as_str();
    loop {
        tokio::time::sleep(every).await;
        let sent = tokio::time::Instant::now();
        let renewed: Result<i64, _> = r
            .script
            .key(&r.epoch_key)
            .key(key)
            .arg(millis(ttl))
            .arg(&r.epoch)
            .arg(random_id())
            .arg(&r.token)
            .invoke_async(&mut r.conn)
            .await;
        match renewed {
            Ok(1) => {
                last_ok = sent;
                lease.renewed(sent);
            }
            Ok(-1) => {
                tracing::warn!(
                    key,
                    "Redis lost data since the tenant lock was taken: the lock is no longer ours"
                );
                lost.cancel();
                return;
            }
            Ok(_) => {
                tracing::warn!(key, "the tenant lock was lost (expired or taken)");
                lost.cancel();
                return;
            }
            Err(e) => {
                tracing::warn!(key, error = %e, "renewing the tenant lock failed");
                if last_ok.elapsed() >= ttl {
                    // It has expired by now for everyone else.
                    lost.cancel();
                    return;
                }
            }
        }
    }
}
