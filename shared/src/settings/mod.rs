//! Runtime settings of the worker and the scheduler: a TOML file, then environment overrides
//! (`USER_IMPORT__<SECTION>__<KEY>=value`), then validation, once, at start-up. Every setting has a
//! default; unknown keys (in the file or in the environment) are refused so a typo is not silently
//! ignored. Durations are written the human way (`"30s"`, `"5m"`).

mod env;
pub mod preflight;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::secret::Secret;
use crate::telemetry::LogFormat;

pub use env::ENV_PREFIX;

/// Why the settings could not be loaded; names the file or variable and the key.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read settings file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("settings file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("settings{origin}: {message}")]
    Invalid { origin: String, message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub registry: RegistrySettings,
    pub amqp: AmqpSettings,
    pub redis: RedisSettings,
    pub ftps: FtpsSettings,
    pub smtp: SmtpSettings,
    pub platform: PlatformSettings,
    pub import: ImportSettings,
    pub http: HttpSettings,
    pub worker: WorkerSettings,
    pub scheduler: SchedulerSettings,
    /// Where fetched files are kept while a job runs; the system temp dir when unset.
    pub work_dir: Option<PathBuf>,
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrySettings {
    /// The tenant registry (TOML).
    pub file: PathBuf,
    /// A directory holding one file per tenant, named after the tenant, with its API key (the way a
    /// Kubernetes Secret is mounted). When unset, or when a tenant has no file there, the key is
    /// read from the variable `USER_IMPORT_API_KEY_<TENANT>` (upper case, `-` as `_`).
    pub secrets_dir: Option<PathBuf>,
}

/// RabbitMQ's default `consumer_timeout` (since 3.8.15): 30 minutes.
pub const CONSUMER_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30 * 60);

/// Room between the end of a job (its time limit) and the broker's `consumer_timeout`: the
/// release of the lock, the retry or dead-letter publish and its confirm, the ack.
pub const SETTLE_MARGIN: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmqpSettings {
    /// May hold a password: kept as a secret.
    pub url: Secret,
    /// The jobs' exchange; every other name derives from it: queue `<exchange>.<region>`,
    /// dead-letter exchange `<exchange>.dlx`, dead-letter queue `<exchange>.<region>.dead`, retry
    /// queues `<exchange>.<region>.retry.<ms>`.
    pub exchange: String,
    /// Deliveries a worker takes at once; also the number of jobs it runs at once.
    pub prefetch: u16,
    /// Quorum-queue `x-delivery-limit`: deliveries of one message (crashes, hand-backs) before the
    /// broker dead-letters it.
    pub delivery_limit: u32,
    /// A job that failed in a retryable way waits in a delay queue and comes back: one delay per
    /// retry, then it is dead-lettered.
    #[serde(deserialize_with = "durations")]
    pub retry_delays: Vec<Duration>,
    /// The broker's `consumer_timeout` (rabbitmq.conf; RabbitMQ's default is 30 min): a delivery
    /// not acked within it makes the broker close the worker's channel and redeliver the job while
    /// it still runs. Not sent to the broker: it tells the settings what the broker has, so that a
    /// `worker.job_timeout` that does not fit under it is refused. Raise both together.
    #[serde(with = "humantime_serde")]
    pub consumer_timeout: Duration,
}

fn durations<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    let raw = Vec::<String>::deserialize(d)?;
    raw.iter()
        .map(|s| humantime::parse_duration(s).map_err(serde::de::Error::custom))
        .collect()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    pub url: Secret,
    /// Every key this fleet writes starts with it.
    pub key_prefix: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FtpsSettings {
    /// PEM file of the CA(s) that sign the FTPS servers' certificates. When unset, the Mozilla root
    /// store is used. There is no setting that turns verification off.
    pub ca_file: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Bound on any one read or write on the control or data connection.
    #[serde(with = "humantime_serde")]
    pub io_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS (required, not opportunistic). Port 587.
    Starttls,
    /// TLS from the first byte (SMTPS). Port 465.
    Tls,
    /// No TLS: only for a local sink on loopback.
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    /// PEM CA file for the SMTP server's certificate; the Mozilla roots when unset.
    pub ca_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Secret,
    /// The `From:` of report emails.
    pub from: String,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlatformSettings {
    /// Total time allowed for one HTTP request to the platform API.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Attempts per API call before its row is reported failed (429s, 5xx, timeouts, resets).
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// A `Retry-After` longer than this is treated as this (a hostile or broken header must not
    /// park a job for hours).
    #[serde(with = "humantime_serde")]
    pub retry_after_max: Duration,
    #[serde(with = "humantime_serde")]
    pub status_poll_interval: Duration,
    /// How long a row's asynchronous status may stay pending before the row is reported
    /// `unconfirmed`.
    #[serde(with = "humantime_serde")]
    pub status_timeout: Duration,
    /// Client-side limits per API host, shared by the jobs of one worker (none by default).
    #[serde(default)]
    pub rate_limits: RateLimitSettings,
}

/// The limit for one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostLimit {
    /// Requests started per second, over all jobs of this worker (0: no rate limit).
    #[serde(default)]
    pub requests_per_second: u32,
    /// Requests in flight at once, over all jobs of this worker (0: no limit beyond each job's).
    #[serde(default)]
    pub concurrency: u32,
}

/// `platform.rate_limits` in the worker's settings: a limit per API host (`host` or `host:port`
/// of the tenants' `api_base_url`, so per region), and a default for hosts not listed.
///
/// ```toml
/// [platform.rate_limits]
/// default = { requests_per_second = 50, concurrency = 32 }
/// [platform.rate_limits.hosts]
/// "api.eu.learning-admin.com" = { requests_per_second = 100, concurrency = 64 }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSettings {
    #[serde(default)]
    pub default: Option<HostLimit>,
    #[serde(default)]
    pub hosts: BTreeMap<String, HostLimit>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImportSettings {
    /// Rows in flight at once per job (a tenant's `limits.api_concurrency` may lower it).
    pub concurrency: usize,
    /// A progress line goes to the tenant's log every this many rows.
    pub progress_every: u64,
    /// Largest file fetched (a tenant's `limits.max_file_bytes` may lower it).
    pub max_file_bytes: u64,
    /// Longest single CSV record, in bytes.
    pub max_record_bytes: usize,
    /// Most rows read from one file.
    pub max_rows: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Health, readiness and metrics.
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSettings {
    /// The region whose queue this worker consumes.
    pub region: String,
    /// The tenant lock's time to live; renewed every third of it while the job runs.
    #[serde(with = "humantime_serde")]
    pub lock_ttl: Duration,
    /// Longest a job may run; with [`SETTLE_MARGIN`] it must fit under `amqp.consumer_timeout`
    /// (checked at load).
    #[serde(with = "humantime_serde")]
    pub job_timeout: Duration,
    /// On SIGTERM, how long running jobs may take to finish before they are stopped and handed
    /// back; keep it below Kubernetes' termination grace period.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            region: "eu".into(),
            lock_ttl: Duration::from_secs(60),
            job_timeout: Duration::from_secs(25 * 60),
            drain_timeout: Duration::from_secs(25),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerSettings {
    /// A tick missed while no scheduler ran is still published if it is at most this old;
    /// several missed ticks of one tenant make one job.
    #[serde(with = "humantime_serde")]
    pub catch_up_window: Duration,
    /// How often the registry file is checked for changes (SIGHUP reloads at once).
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// Regions this scheduler publishes for; empty means every region in the registry.
    pub regions: Vec<String>,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        Self {
            catch_up_window: Duration::from_secs(6 * 3600),
            reload_interval: Duration::from_secs(30),
            regions: Vec::new(),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            registry: RegistrySettings::default(),
            amqp: AmqpSettings::default(),
            redis: RedisSettings::default(),
            ftps: FtpsSettings::default(),
            smtp: SmtpSettings::default(),
            platform: PlatformSettings::default(),
            import: ImportSettings::default(),
            http: HttpSettings::default(),
            worker: WorkerSettings::default(),
            scheduler: SchedulerSettings::default(),
            work_dir: None,
            log_format: LogFormat::Text,
        }
    }
}

impl Default for RegistrySettings {
    fn default() -> Self {
        Self {
            file: PathBuf::from("tenants.toml"),
            secrets_dir: None,
        }
    }
}

impl Default for AmqpSettings {
    fn default() -> Self {
        Self {
            url: Secret::new("amqp://guest:guest@127.0.0.1:5672/%2f"),
            exchange: "user-import".into(),
            prefetch: 4,
            delivery_limit: 5,
            retry_delays: vec![
                Duration::from_secs(30),
                Duration::from_secs(120),
                Duration::from_secs(600),
            ],
            consumer_timeout: CONSUMER_TIMEOUT_DEFAULT,
        }
    }
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: Secret::new("redis://127.0.0.1:6379/"),
            key_prefix: "user-import".into(),
        }
    }
}

impl Default for FtpsSettings {
    fn default() -> Self {
        Self {
            ca_file: None,
            connect_timeout: Duration::from_secs(15),
            io_timeout: Duration::from_secs(60),
        }
    }
}

impl Default for SmtpSettings {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 587,
            tls: SmtpTls::Starttls,
            ca_file: None,
            username: None,
            password: Secret::default(),
            from: "User import <user-import@localhost.localdomain>".into(),
            timeout: Duration::from_secs(30),
        }
    }
}

impl Default for PlatformSettings {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            max_attempts: 8,
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            retry_after_max: Duration::from_secs(120),
            status_poll_interval: Duration::from_millis(500),
            status_timeout: Duration::from_secs(300),
            rate_limits: RateLimitSettings::default(),
        }
    }
}

impl Default for ImportSettings {
    fn default() -> Self {
        Self {
            concurrency: 8,
            progress_every: 500,
            max_file_bytes: 256 * 1024 * 1024,
            max_record_bytes: 64 * 1024,
            max_rows: 2_000_000,
        }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 9090)),
        }
    }
}

impl Settings {
    /// Loads the file (if any), applies `USER_IMPORT__…` overrides from `env`, and validates.
    pub fn load(file: Option<&Path>, env: &HashMap<String, String>) -> Result<Self, SettingsError> {
        let (mut table, origin) = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                let table: toml::Table =
                    toml::from_str(&text).map_err(|e| SettingsError::Parse {
                        path: path.to_owned(),
                        message: e.message().to_owned(),
                    })?;
                (table, format!(" ({})", path.display()))
            }
            None => (toml::Table::new(), String::new()),
        };
        env::apply_overrides(&mut table, env)?;
        let settings: Settings = Settings::deserialize(toml::Value::Table(table)).map_err(|e| {
            SettingsError::Invalid {
                origin: origin.clone(),
                message: e.message().to_owned(),
            }
        })?;
        settings
            .validate()
            .map_err(|message| SettingsError::Invalid { origin, message })?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), String> {
        if self.import.concurrency == 0 || self.import.concurrency > 256 {
            return Err("import.concurrency must be 1 to 256".into());
        }
        if self.import.max_file_bytes == 0 {
            return Err("import.max_file_bytes must be above 0".into());
        }
        if self.import.max_record_bytes < 1024 {
            return Err("import.max_record_bytes must be at least 1024".into());
        }
        if self.import.progress_every == 0 {
            return Err("import.progress_every must be above 0".into());
        }
        if self.platform.max_attempts == 0 {
            return Err("platform.max_attempts must be at least 1".into());
        }
        if self.amqp.prefetch == 0 {
            return Err("amqp.prefetch must be at least 1".into());
        }
        if self.amqp.exchange.is_empty()
            || !self
                .amqp
                .exchange
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err("amqp.exchange must be letters, digits, '-', '_' or '.'".into());
        }
        if self.amqp.delivery_limit == 0 {
            return Err("amqp.delivery_limit must be at least 1".into());
        }
        if self.amqp.retry_delays.iter().any(|d| d.is_zero()) {
            return Err("amqp.retry_delays must all be above 0".into());
        }
        if crate::Region::parse(&self.worker.region).is_err() {
            return Err(format!(
                "worker.region {:?} is not a region name",
                self.worker.region
            ));
        }
        if self.worker.job_timeout + SETTLE_MARGIN > self.amqp.consumer_timeout {
            return Err(format!(
                "worker.job_timeout ({}) plus {} to settle must stay below amqp.consumer_timeout ({}), \
                 the broker's consumer_timeout: lower the first, or raise the broker's and then the second",
                humantime::format_duration(self.worker.job_timeout),
                humantime::format_duration(SETTLE_MARGIN),
                humantime::format_duration(self.amqp.consumer_timeout),
            ));
        }
        if self.worker.lock_ttl < Duration::from_secs(1) {
            return Err("worker.lock_ttl must be at least 1s".into());
        }
        if self
            .smtp
            .from
            .parse::<lettre_free_mailbox::Mailbox>()
            .is_err()
        {
            return Err(format!("smtp.from {:?} is not an address", self.smtp.from));
        }
        Ok(())
    }
}

/// A tiny check of `Name <addr>` or `addr`, so this crate need not depend on the mail library.
mod lettre_free_mailbox {
    pub struct Mailbox;
    impl std::str::FromStr for Mailbox {
        type Err = ();
        fn from_str(s: &str) -> Result<Self, ()> {
            let addr = match (s.rfind('<'), s.rfind('>')) {
                (Some(a), Some(b)) if a < b && b == s.len() - 1 => &s[a + 1..b],
                (None, None) => s.trim(),
                _ => return Err(()),
            };
            crate::EmailAddress::parse(addr)
                .map(|_| Mailbox)
                .map_err(|_| ())
        }
    }
}

#[cfg(test)]
mod tests;
