//! What the import remembers about a tenant between runs, in Redis under the fleet's key prefix:
//! - `<prefix>:rows:<tenant>`: hash, lowercase username → `<row fingerprint>:<unix seconds>`, the
//!   fingerprint of the row as last applied successfully (`skip_unchanged`);
//! - `<prefix>:managed:<tenant>`: set of the usernames this import created or updated (or found
//!   unchanged) and so manages (`full_sync`).
//!
//! Only runs that use one of those options touch Redis; the client connects lazily, so `worker
//! once` works without Redis for a tenant that uses neither.

use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;

/// Redis could not be used; the job is retried later.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "redis (needed for the tenant's skip_unchanged or full_sync option) could not be used: {0}"
)]
pub struct StoreError(pub String);

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        StoreError(e.to_string())
    }
}

/// The per-tenant memory of the import.
#[derive(Clone)]
pub struct ImportStore {
    conn: Option<ConnectionManager>,
    prefix: String,
}

impl std::fmt::Debug for ImportStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportStore")
            .field("prefix", &self.prefix)
            .field("configured", &self.conn.is_some())
            .finish()
    }
}

impl ImportStore {
    /// Builds the client from `redis.url` without connecting. An unset URL gives a store whose
    /// every use fails with a clear error.
    pub fn from_settings(settings: &shared::settings::RedisSettings) -> anyhow::Result<Self> {
        let conn = match settings.url.expose() {
            None => None,
            Some(url) => {
                let client =
                    redis::Client::open(url).map_err(|e| anyhow::anyhow!("redis.url: {e}"))?;
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(5)))
                    .set_response_timeout(Some(Duration::from_secs(5)))
                    .set_max_delay(Duration::from_secs(2));
                Some(redis::aio::ConnectionManager::new_lazy_with_config(
                    client, config,
                )?)
            }
        };
        Ok(Self {
            conn,
            prefix: settings.key_prefix.clone(),
        })
    }

    fn conn(&self) -> Result<ConnectionManager, StoreError> {
        self.conn
            .clone()
            .ok_or_else(|| StoreError("redis.url is not set".into()))
    }

    pub fn rows_key(&self, tenant: &str) -> String {
        format!("{}:rows:{tenant}", self.prefix)
    }

    pub fn managed_key(&self, tenant: &str) -> String {
        format!("{}:managed:{tenant}", self.prefix)
    }

    /// The stored fingerprint of a row and when it was stored (unix seconds).
    pub async fn fingerprint(
        &self,
        tenant: &str,
        username: &str,
    ) -> Result<Option<(String, i64)>, StoreError> {
        let v: Option<String> = self
            .conn()?
            .hget(self.rows_key(tenant), username.to_lowercase())
            .await?;
        Ok(v.and_then(|v| {
            let (fp, at) = v.split_once(':')?;
            Some((fp.to_owned(), at.parse().ok()?))
        }))
    }

    pub async fn remember(
        &self,
        tenant: &str,
        username: &str,
        fingerprint: &str,
        at: i64,
    ) -> Result<(), StoreError> {
        let () = self
            .conn()?
            .hset(
                self.rows_key(tenant),
                username.to_lowercase(),
                format!("{fingerprint}:{at}"),
            )
            .await?;
        Ok(())
    }

    pub async fn forget(&self, tenant: &str, username: &str) -> Result<(), StoreError> {
        let _: u64 = self
            .conn()?
            .hdel(self.rows_key(tenant), username.to_lowercase())
            .await?;
        Ok(())
    }

    /// Forgets every fingerprint of the tenant (a forced full re-push).
    pub async fn forget_all(&self, tenant: &str) -> Result<(), StoreError> {
        let _: u64 = self.conn()?.del(self.rows_key(tenant)).await?;
        Ok(())
    }

    pub async fn manage(&self, tenant: &str, username: &str) -> Result<(), StoreError> {
        let _: u64 = self
            .conn()?
            .sadd(self.managed_key(tenant), username)
            .await?;
        Ok(())
    }

    pub async fn unmanage(&self, tenant: &str, usernames: &[String]) -> Result<(), StoreError> {
        if usernames.is_empty() {
            return Ok(());
        }
        let _: u64 = self
            .conn()?
            .srem(self.managed_key(tenant), usernames)
            .await?;
        Ok(())
    }

    /// Every user this import manages for the tenant.
    pub async fn managed(&self, tenant: &str) -> Result<Vec<String>, StoreError> {
        let mut v: Vec<String> = self.conn()?.smembers(self.managed_key(tenant)).await?;
        v.sort();
        Ok(v)
    }
}
