//! The tick ledger in Redis: which tick was last published for each tenant, and the short claim a
//! replica holds while it publishes one. This is what makes "one job per tenant per tick" hold
//! across replicas and restarts.
//!
//! Keys, with `<p>` the settings' `redis.key_prefix`:
//! - `<p>:sched:<tenant>:last`: the last tick published, as Unix seconds. Kept for the catch-up
//!   window plus [`LAST_TTL_MARGIN`] after its last write, so a tenant removed from the registry
//!   leaves nothing behind for ever, while a key that matters (a tick still inside the window) is
//!   always there.
//! - `<p>:sched:<tenant>:claim`: `<tick>:<random token>`, set with `NX PX <claim_ttl>` by the
//!   replica about to publish that tenant's tick. It expires by itself if that replica dies.
//!
//! The commit is one Lua script ([`COMMIT`]), so `last` moves forward and our claim goes in one
//! step; the release of a claim after a failed publish is a compare-and-delete ([`RELEASE`]).
//!
//! **When Redis loses data** (an empty restart, an older snapshot, a failover, a flush), `last`
//! is gone or older, and the tick just published would be published again. So each replica also
//! keeps, in memory, the latest tick it knows for every tenant: what it committed and what it read
//! from Redis. Every read answers the later of the two, and a tick Redis forgot is written back
//! (the commit script with a claim that is not ours moves only `last`), so the other replicas see
//! it too. This covers a loss while the replicas run. What it cannot cover: a tick another replica
//! published after this one's last read, and a loss while every replica restarts; the worker's
//! record of the tick run, kept in the tenant's account, is the last line there (docs/fleet.md).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};
use shared::TenantName;
use shared::health::Health;
use shared::secret::Secret;
use uuid::Uuid;

use crate::error::{SchedulerError, redact_url};

/// How long `last` outlives the catch-up window.
pub const LAST_TTL_MARGIN: Duration = Duration::from_secs(30 * 24 * 3600);

/// `last = max(last, tick)` (refreshing its TTL when it moves), then delete the claim if it still
/// holds our value. Returns 1 when the claim was still ours, 0 when it had expired or been taken.
///
/// `KEYS[1]` = last, `KEYS[2]` = claim; `ARGV[1]` = tick (Unix seconds), `ARGV[2]` = our claim value,
/// `ARGV[3]` = the TTL of `last` in milliseconds.
pub const COMMIT: &str = r#"
local tick = tonumber(ARGV[1])
local last = tonumber(redis.call('GET', KEYS[1]) or '')
if last == nil or last < tick then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
end
if redis.call('GET', KEYS[2]) == ARGV[2] then
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
"#;

/// Compare-and-delete of a claim. `KEYS[1]` = claim; `ARGV[1]` = our claim value.
pub const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// A claim this replica holds on one tenant's tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub tenant: TenantName,
    pub tick: DateTime<Utc>,
    /// `<tick>:<token>`: what the claim key holds while it is ours.
    pub value: String,
}

/// The Redis side of the scheduler. Cheap to clone: the connection manager is shared and
/// reconnects by itself.
#[derive(Clone)]
pub struct Ledger {
    conn: ConnectionManager,
    prefix: String,
    claim_ttl: Duration,
    last_ttl: Duration,
    url: Secret,
    health: Arc<Health>,
    commit: Arc<Script>,
    release: Arc<Script>,
    /// The latest tick this replica knows was published, per tenant: survives Redis losing data.
    known: Arc<Mutex<HashMap<TenantName, DateTime<Utc>>>>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("prefix", &self.prefix)
            .field("claim_ttl", &self.claim_ttl)
            .field("last_ttl", &self.last_ttl)
            .finish_non_exhaustive()
    }
}

impl Ledger {
    /// Builds the client without connecting: the first command connects. Every command is
    /// bounded by `timeout`.
    pub fn new(
        url: &Secret,
        prefix: &str,
        claim_ttl: Duration,
        catch_up_window: Duration,
        timeout: Duration,
        health: Arc<Health>,
    ) -> Result<Self, SchedulerError> {
        let raw = url
            .expose()
            .ok_or_else(|| SchedulerError::Config("redis.url is not set".into()))?;
        let client = redis::Client::open(raw).map_err(|e| {
            SchedulerError::Config(format!(
                "redis.url: {}",
                redact_url(&e.to_string(), Some(raw))
            ))
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| SchedulerError::Redis(redact_url(&e.to_string(), Some(raw))))?;
        Ok(Self {
            conn,
            prefix: prefix.to_owned(),
            claim_ttl,
            last_ttl: catch_up_window.saturating_add(LAST_TTL_MARGIN),
            url: url.clone(),
            health,
            commit: Arc::new(Script::new(COMMIT)),
            release: Arc::new(Script::new(RELEASE)),
            known: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// `<prefix>:sched:<tenant>:last`.
    pub fn last_key(&self, tenant: &TenantName) -> String {
        format!("{}:sched:{tenant}:last", self.prefix)
    }

    /// `<prefix>:sched:<tenant>:claim`.
    pub fn claim_key(&self, tenant: &TenantName) -> String {
        format!("{}:sched:{tenant}:claim", self.prefix)
    }

    pub fn claim_ttl(&self) -> Duration {
        self.claim_ttl
    }

    /// A round trip to Redis; keeps the readiness flag honest while nothing is due.
    pub async fn ping(&self) -> Result<(), SchedulerError> {
        let mut conn = self.conn.clone();
        let r: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
        self.track(r).map(|_| ())
    }

    /// The last tick published for each tenant, in one round trip.
    pub async fn last_ticks(
        &self,
        tenants: &[&TenantName],
    ) -> Result<Vec<Result<Option<DateTime<Utc>>, SchedulerError>>, SchedulerError> {
        if tenants.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = tenants.iter().map(|t| self.last_key(t)).collect();
        let mut conn = self.conn.clone();
        // MGET of one key answers a plain value, not a list: ask through `cmd` so it is a list.
        let r: redis::RedisResult<Vec<Option<String>>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut conn).await;
        let values = self.track(r)?;
        let mut out = Vec::with_capacity(keys.len());
        for ((key, value), tenant) in keys.into_iter().zip(values).zip(tenants) {
            out.push(match parse_tick(key, value) {
                Ok(stored) => Ok(self.reconcile(tenant, stored).await),
                Err(e) => Err(e),
            });
        }
        Ok(out)
    }

    /// The later of what Redis holds and what this replica knows; remembers the result, and
    /// writes back a tick Redis forgot.
    async fn reconcile(
        &self,
        tenant: &TenantName,
        stored: Option<DateTime<Utc>>,
    ) -> Option<DateTime<Utc>> {
        let known = self.remember(tenant, stored);
        if known > stored
            && let Some(tick) = known
        {
            tracing::warn!(
                tenant = %tenant,
                known = %tick.to_rfc3339(),
                stored = stored.map(|t| t.to_rfc3339()).unwrap_or_else(|| "none".into()),
                "Redis lost the record of a published tick: keeping this replica's and writing it back"
            );
            let repair = Claim {
                tenant: tenant.clone(),
                tick,
                // Not a claim anyone holds: the commit script then only moves `last`.
                value: format!("repair:{}", Uuid::new_v4().simple()),
            };
            if let Err(e) = self.commit(&repair).await {
                tracing::warn!(error = %e, "cannot write the tick back yet; the next poll tries again");
            }
        }
        known
    }

    /// Records `tick` as known for `tenant` (if later than what is known); returns the latest.
    fn remember(&self, tenant: &TenantName, tick: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let entry = known.get(tenant).copied();
        match (entry, tick) {
            (Some(k), Some(t)) if t > k => {
                known.insert(tenant.clone(), t);
                Some(t)
            }
            (None, Some(t)) => {
                known.insert(tenant.clone(), t);
                Some(t)
            }
            (k, _) => k,
        }
    }

    /// The last tick published for one tenant.
    pub async fn last_tick(
        &self,
        tenant: &TenantName,
    ) -> Result<Option<DateTime<Utc>>, SchedulerError> {
        let key = self.last_key(tenant);
        let mut conn = self.conn.clone();
        let r: redis::RedisResult<Option<String>> = conn.get(&key).await;
        let value = self.track(r)?;
        let stored = parse_tick(key, value)?;
        Ok(self.reconcile(tenant, stored).await)
    }

    /// Claims `tick` for `tenant` (`SET NX PX`); `None` when another replica holds the claim.
    pub async fn claim(
        &self,
        tenant: &TenantName,
        tick: DateTime<Utc>,
    ) -> Result<Option<Claim>, SchedulerError> {
        let value = format!("{}:{}", tick.timestamp(), Uuid::new_v4().simple());
        let mut conn = self.conn.clone();
        let r: redis::RedisResult<Option<String>> = redis::cmd("SET")
            .arg(self.claim_key(tenant))
            .arg(&value)
            .arg("NX")
            .arg("PX")
            .arg(millis(self.claim_ttl))
            .query_async(&mut conn)
            .await;
        Ok(self.track(r)?.map(|_| Claim {
            tenant: tenant.clone(),
            tick,
            value,
        }))
    }

    /// Gives a claim back (compare-and-delete); `false` when it was no longer ours.
    pub async fn release(&self, claim: &Claim) -> Result<bool, SchedulerError> {
        let mut conn = self.conn.clone();
        let r: redis::RedisResult<i64> = self
            .release
            .key(self.claim_key(&claim.tenant))
            .arg(&claim.value)
            .invoke_async(&mut conn)
            .await;
        Ok(self.track(r)? == 1)
    }

    /// Records the claim's tick as published and drops the claim, atomically ([`COMMIT`]).
    /// `false` when the claim had expired or been taken before the commit: `last` still moves.
    pub async fn commit(&self, claim: &Claim) -> Result<bool, SchedulerError> {
        // Known as published from now on, whether or not Redis keeps it.
        self.remember(&claim.tenant, Some(claim.tick));
        let mut conn = self.conn.clone();
        let r: redis::RedisResult<i64> = self
            .commit
            .key(self.last_key(&claim.tenant))
            .key(self.claim_key(&claim.tenant))
            .arg(claim.tick.timestamp())
            .arg(&claim.value)
            .arg(millis(self.last_ttl))
            .invoke_async(&mut conn)
            .await;
        Ok(self.track(r)? == 1)
    }

    /// Maps a Redis result to ours, redacted, and moves the readiness flag with it.
    fn track<T>(&self, r: redis::RedisResult<T>) -> Result<T, SchedulerError> {
        match r {
            Ok(v) => {
                self.health.set_redis(true);
                Ok(v)
            }
            Err(e) => {
                // A server-side script error is Redis answering: the connection is fine.
                if e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                {
                    self.health.set_redis(false);
                }
                Err(SchedulerError::Redis(redact_url(
                    &e.to_string(),
                    self.url.expose(),
                )))
            }
        }
    }
}

fn parse_tick(key: String, value: Option<String>) -> Result<Option<DateTime<Utc>>, SchedulerError> {
    let Some(value) = value else {
        return Ok(None);
    };
    value
        .parse::<i64>()
        .ok()
        .and_then(|secs| DateTime::from_timestamp(secs, 0))
        .map(Some)
        .ok_or(SchedulerError::Ledger { key, value })
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn what_a_replica_knows_only_moves_forward() {
        let ledger = Ledger::new(
            &Secret::new("redis://127.0.0.1:1/"),
            "p",
            Duration::from_secs(30),
            Duration::from_secs(3600),
            Duration::from_secs(1),
            Arc::new(Health::default()),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let acme = TenantName::parse("acme").unwrap_or_else(|e| panic!("{e}"));
        let t = |s: i64| DateTime::from_timestamp(1_767_225_600 + s, 0);
        assert_eq!(ledger.remember(&acme, None), None);
        assert_eq!(ledger.remember(&acme, t(60)), t(60));
        assert_eq!(ledger.remember(&acme, None), t(60), "Redis forgot it");
        assert_eq!(ledger.remember(&acme, t(0)), t(60), "an older snapshot");
        assert_eq!(ledger.remember(&acme, t(120)), t(120));
    }

    #[test]
    fn a_stored_tick_is_unix_seconds() {
        let t = DateTime::from_timestamp(1_767_225_600, 0);
        assert_eq!(
            parse_tick("k".into(), Some("1767225600".into())).ok(),
            Some(t)
        );
        assert_eq!(parse_tick("k".into(), None).ok(), Some(None));
        assert!(matches!(
            parse_tick("k".into(), Some("yesterday".into())),
            Err(SchedulerError::Ledger { .. })
        ));
    }
}
