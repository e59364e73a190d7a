//! Alerts to the tenant's nominated admin, besides the run report: "no new file for N days"
//! (`alerts.no_file_days`, off by default) and "login refused" by the FTPS server or the platform
//! API (`alerts.login_failures`, on by default). Both are de-duplicated through Redis, under the
//! fleet's key prefix:
//!
//! - `<prefix>:alerts:<tenant>:new-file` holds the SHA1 and time of the last new version seen; the
//!   clock starts at the first run that looks (no alert on a tenant just switched on).
//! - `<prefix>:alerts:<tenant>:no-file-alerted` holds the `new-file` time an alert was sent for:
//!   one email per quiet spell, none again until a new file arrives and goes quiet in turn.
//! - `<prefix>:alerts:<tenant>:login:<ftps|api>:<UTC date>` (expiring after two days): one email
//!   per kind of refusal per UTC day.
//!
//! Alert trouble never changes a job's outcome. Without Redis, the no-file alert cannot be
//! judged and is skipped (logged); a login alert is sent anyway, as an alert sent twice is better
//! than one lost.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeDelta, TimeZone, Utc};
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use shared::registry::Tenant;
use shared::settings::RedisSettings;
use tokio::sync::OnceCell;

/// Which login was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginKind {
    Ftps,
    /// The platform API, with its HTTP status.
    Api(u16),
}

impl LoginKind {
    fn key_part(self) -> &'static str {
        match self {
            LoginKind::Ftps => "ftps",
            LoginKind::Api(_) => "api",
        }
    }
}

/// The alert store, built once at start-up; it connects on first use, so a run with no alert to
/// judge never touches Redis.
#[derive(Clone)]
pub struct Alerts {
    client: Option<redis::Client>,
    conn: Arc<OnceCell<ConnectionManager>>,
    prefix: String,
}

impl std::fmt::Debug for Alerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alerts")
            .field("redis", &self.client.is_some())
            .field("prefix", &self.prefix)
            .finish()
    }
}

const DAY_SECS: u64 = 24 * 3600;

impl Alerts {
    pub fn from_settings(s: &RedisSettings) -> anyhow::Result<Self> {
        let client = s
            .url
            .expose()
            .map(redis::Client::open)
            .transpose()
            .map_err(|e| anyhow::anyhow!("redis.url: {e}"))?;
        Ok(Self {
            client,
            conn: Arc::new(OnceCell::new()),
            prefix: s.key_prefix.clone(),
        })
    }

    pub fn key(&self, tenant: &str, what: &str) -> String {
        format!("{}:alerts:{tenant}:{what}", self.prefix)
    }

    /// The connection, made on first use (a failed attempt is tried again by the next call).
    async fn conn(&self) -> Result<ConnectionManager, redis::RedisError> {
        let Some(client) = &self.client else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "redis.url is not set",
            )));
        };
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(3)))
            .set_response_timeout(Some(Duration::from_secs(3)))
            .set_number_of_retries(1);
        self.conn
            .get_or_try_init(|| ConnectionManager::new_with_config(client.clone(), config))
            .await
            .cloned()
    }

    /// Remembers that this version of the tenant's file was refused (kept 30 days): where the
    /// account cannot hold the refusal marker (a read-only `/tmp`), this keeps the same file from
    /// being tried, and reported, at every run.
    pub async fn refused(&self, tenant: &str, sha1: &str) -> Result<(), redis::RedisError> {
        let mut conn = self.conn().await?;
        let key = self.key(tenant, &format!("refused:{sha1}"));
        conn.set_ex(key, "1", 30 * DAY_SECS).await
    }

    /// Whether this version was refused before (see [`Self::refused`]).
    pub async fn was_refused(&self, tenant: &str, sha1: &str) -> Result<bool, redis::RedisError> {
        let mut conn = self.conn().await?;
        conn.exists(self.key(tenant, &format!("refused:{sha1}")))
            .await
    }

    /// Records that a version not seen before arrived (only when the no-file alert is on).
    pub async fn new_file(
        &self,
        tenant: &str,
        sha1: &str,
        now: DateTime<Utc>,
    ) -> Result<(), redis::RedisError> {
        let mut conn = self.conn().await?;
        let key = self.key(tenant, "new-file");
        let seen: Option<String> = conn.hget(&key, "sha1").await?;
        if seen.as_deref() != Some(sha1) {
            let _: () = conn
                .hset_multiple(
                    &key,
                    &[("sha1", sha1), ("at", &now.timestamp().to_string())],
                )
                .await?;
        }
        Ok(())
    }

    /// Whether a no-file alert is due now; it is then counted as sent (call [`Self::unsend`] if
    /// the email fails). Returns the time of the last new file.
    pub async fn no_file_due(
        &self,
        tenant: &str,
        days: u32,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, redis::RedisError> {
        let mut conn = self.conn().await?;
        let key = self.key(tenant, "new-file");
        let at: Option<i64> = conn.hget(&key, "at").await?;
        let Some(at) = at else {
            // The first look: start the clock.
            let _: bool = conn.hset_nx(&key, "at", now.timestamp()).await?;
            return Ok(None);
        };
        let Some(last) = Utc.timestamp_opt(at, 0).single() else {
            return Ok(None);
        };
        if !quiet_for(last, now, days) {
            return Ok(None);
        }
        let sent_key = self.key(tenant, "no-file-alerted");
        let sent: Option<i64> = conn.get(&sent_key).await?;
        if sent == Some(at) {
            return Ok(None);
        }
        let _: () = conn.set(&sent_key, at).await?;
        Ok(Some(last))
    }

    /// Forgets a no-file alert that could not be sent, so the next run tries again.
    pub async fn unsend(&self, tenant: &str) -> Result<(), redis::RedisError> {
        let _: () = self
            .conn()
            .await?
            .del(self.key(tenant, "no-file-alerted"))
            .await?;
        Ok(())
    }

    /// Whether this refusal is the first of its kind today (true as well when Redis cannot say).
    pub async fn login_first_today(&self, tenant: &str, kind: LoginKind, today: NaiveDate) -> bool {
        self.first_today(tenant, &format!("login:{}", kind.key_part()), today)
            .await
    }

    /// Whether a job of this tenant that the fleet gave up on, for this reason, is the first
    /// today (true as well when Redis cannot say).
    pub async fn failure_first_today(&self, tenant: &str, reason: &str, today: NaiveDate) -> bool {
        self.first_today(tenant, &format!("failed:{reason}"), today)
            .await
    }

    async fn first_today(&self, tenant: &str, what: &str, today: NaiveDate) -> bool {
        let key = self.key(tenant, &format!("{what}:{}", today.format("%Y-%m-%d")));
        let first = async {
            let mut conn = self.conn().await?;
            let set: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(1)
                .arg("NX")
                .arg("EX")
                .arg(2 * DAY_SECS)
                .query_async(&mut conn)
                .await?;
            Ok::<bool, redis::RedisError>(set.is_some())
        };
        match first.await {
            Ok(first) => first,
            Err(e) => {
                tracing::warn!(error = %e, what, "alert store unavailable; sending the alert without de-duplication");
                true
            }
        }
    }
}

/// Whether `days` (above 0) have passed since `last`.
pub fn quiet_for(last: DateTime<Utc>, now: DateTime<Utc>, days: u32) -> bool {
    days > 0 && now - last >= TimeDelta::days(i64::from(days))
}

pub fn no_file_subject(tenant: &Tenant, days: u32) -> String {
    format!(
        "[{}] User import alert: no new file for {days} days",
        tenant.name
    )
}

pub fn no_file_body(tenant: &Tenant, last: DateTime<Utc>, days: u32) -> String {
    format!(
        "No new version of /uploads/user-import.csv has arrived for {} since {} \
         (the alert threshold is {days} days).\n\n\
         The scheduled runs go on; the next new file will be imported as usual. This alert is \
         sent once per quiet spell: the next one only after a new file has arrived and the \
         account has gone quiet again.\n\
         The threshold is alerts.no_file_days in the tenant's settings (0 turns the alert off).\n",
        tenant.portal_domain,
        last.format("%Y-%m-%d %H:%M UTC"),
    )
}

pub fn login_subject(tenant: &Tenant, kind: LoginKind) -> String {
    match kind {
        LoginKind::Ftps => format!(
            "[{}] User import alert: the FTPS server refused the login",
            tenant.name
        ),
        LoginKind::Api(code) => format!(
            "[{}] User import alert: the platform API refused the login (HTTP {code})",
            tenant.name
        ),
    }
}

pub fn login_body(tenant: &Tenant, kind: LoginKind) -> String {
    let what = match kind {
        LoginKind::Ftps => format!(
            "The FTPS server {} refused the login of the account {}: no file could be fetched.",
            tenant.ftps_host, tenant.name
        ),
        LoginKind::Api(code) => format!(
            "The platform API of {} refused the tenant's API key (HTTP {code}): no user was \
             changed. The file stays in /uploads and will be imported once the key is accepted.",
            tenant.portal_domain
        ),
    };
    format!(
        "{what}\n\n\
         The API key is both the FTPS password and the platform API key; it may have been \
         rotated on one side only, or revoked. Runs go on failing until it is put right.\n\
         This alert is sent at most once a day for each kind of refusal.\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .unwrap_or_else(|e| panic!("{e}"))
            .with_timezone(&Utc)
    }

    #[test]
    fn quiet_means_at_least_the_threshold_and_zero_is_off() {
        let last = utc("2026-01-01T00:00:00Z");
        assert!(!quiet_for(last, utc("2026-01-02T23:59:59Z"), 2));
        assert!(quiet_for(last, utc("2026-01-03T00:00:00Z"), 2));
        assert!(!quiet_for(last, utc("2027-01-01T00:00:00Z"), 0));
    }

    #[test]
    fn keys_live_under_the_fleet_prefix() -> anyhow::Result<()> {
        // Built outside a runtime, without connecting.
        let a = Alerts::from_settings(&RedisSettings::default())?;
        assert_eq!(
            a.key("acme", "new-file"),
            "user-import:alerts:acme:new-file"
        );
        Ok(())
    }
}
