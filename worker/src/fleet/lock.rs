//! The per-tenant lock in Redis: `SET <prefix>:lock:<tenant> <random token> NX PX <ttl>`, renewed
//! every third of the TTL while the job runs, released by compare-and-delete. Each acquisition also
//! takes a fencing number (`INCR <prefix>:fence:<tenant>`), written to the tenant's log, so two
//! runs can always be told apart. When a renewal finds the lock gone or taken, or renewals have
//! failed for a whole TTL, the guard's `lost` token fires and the job stops before its next side
//! effect.
//!
//! The renewer only looks every third of the TTL, so it cannot be the only guard: a worker that
//! was frozen (SIGSTOP, a paused VM, a long GC-like stall) past the TTL resumes with its requests
//! in flight and would send its next write before the renewer runs. So the guard also keeps a
//! [`Lease`]: the instant until which the lock is known to be ours (the last successful SET or
//! renewal, as sent, plus four fifths of the TTL), checked locally, without a round trip, before
//! every side effect.

use std::time::Duration;

use rand::Rng;
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

pub use crate::job::Lease;

const RENEW: &str = r#"
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
else
  return 0
end"#;

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
}

impl std::fmt::Debug for Locks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Locks")
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// A held lock. Dropping it without `release` stops the renewals and lets the lock expire.
#[derive(Debug)]
pub struct LockGuard {
    conn: ConnectionManager,
    key: String,
    token: String,
    pub fence: u64,
    lost: CancellationToken,
    lease: Lease,
    renewer: tokio::task::JoinHandle<()>,
}

impl Locks {
    pub fn new(conn: ConnectionManager, prefix: &str, ttl: Duration) -> Self {
        Self {
            conn,
            prefix: prefix.to_owned(),
            ttl,
        }
    }

    /// The lock's time to live.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn key(&self, tenant: &str) -> String {
        format!("{}:lock:{tenant}", self.prefix)
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

    /// `Ok(None)`: someone else holds the tenant.
    pub async fn acquire(&self, tenant: &str) -> Result<Option<LockGuard>, redis::RedisError> {
        let key = self.key(tenant);
        let token: String = {
            let bytes: [u8; 16] = rand::rng().random();
            hex::encode(bytes)
        };
        let mut conn = self.conn.clone();
        let sent = tokio::time::Instant::now();
        let set: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(self.ttl.as_millis() as u64)
            .query_async(&mut conn)
            .await?;
        if set.is_none() {
            return Ok(None);
        }
        let fence: u64 = redis::cmd("INCR")
            .arg(format!("{}:fence:{tenant}", self.prefix))
            .query_async(&mut conn)
            .await?;
        let lost = CancellationToken::new();
        let lease = Lease::new(sent, self.ttl);
        let renewer = tokio::spawn(renew(
            self.conn.clone(),
            key.clone(),
            token.clone(),
            lease.clone(),
            lost.clone(),
        ));
        Ok(Some(LockGuard {
            conn: self.conn.clone(),
            key,
            token,
            fence,
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

async fn renew(
    mut conn: ConnectionManager,
    key: String,
    token: String,
    lease: Lease,
    lost: CancellationToken,
) {
    let ttl = lease.ttl();
    let every = ttl / 3;
    let mut last_ok = tokio::time::Instant::now();
    let script = redis::Script::new(RENEW);
    loop {
        tokio::time::sleep(every).await;
        let sent = tokio::time::Instant::now();
        let renewed: Result<i64, _> = script
            .key(&key)
            .arg(&token)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await;
        match renewed {
            Ok(1) => {
                last_ok = sent;
                lease.renewed(sent);
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
