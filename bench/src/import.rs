//! Import rate and memory: [`worker::import::run`] on a local file with a
//! [`worker::platform::PlatformClient`] built as `worker::pipeline` builds it, against the platform
//! fake (in this process, or another one so that its memory is not counted).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use harness::fixtures::TenantEntry;
use shared::ApiKey;
use shared::registry::{ImportOptions, MassChangeGuard, Registry, Tenant};
use shared::settings::{ImportSettings, PlatformSettings, RedisSettings};
use worker::Counts;
use worker::import::store::ImportStore;
use worker::import::{ImportParams, Run};
use worker::platform::PlatformClient;

/// The platform (fake) the import talks to.
#[derive(Debug, Clone)]
pub struct Platform {
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
    /// `<tenant>.learning-admin.com`.
    pub domain: String,
    pub key: ApiKey,
}

/// A registry entry for `platform`, parsed and validated by `shared` as the worker's registry is.
pub fn tenant(platform: &Platform) -> anyhow::Result<Tenant> {
    let name = platform
        .domain
        .split('.')
        .next()
        .ok_or_else(|| anyhow::anyhow!("no tenant name in {}", platform.domain))?;
    let text = TenantEntry {
        portal_domain: platform.domain.clone(),
        api_base_url: platform.base_url.clone(),
        ftps_host: "127.0.0.1".to_owned(),
        admin_username: "bench.admin".to_owned(),
        admin_email: "admin@bench.example.com".to_owned(),
        ..TenantEntry::new(name)
    }
    .toml();
    let registry = Registry::parse(Path::new("<bench registry>"), &text)?;
    registry
        .get(name)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("tenant {name} missing from the bench registry"))
}

/// The platform settings of a benchmark: the defaults with a short status poll interval (the fake
/// answers a write's status at once unless told otherwise).
pub fn platform_settings(status_poll_interval: Duration) -> PlatformSettings {
    PlatformSettings {
        status_poll_interval,
        ..PlatformSettings::default()
    }
}

/// One import of one file.
#[derive(Debug, Clone)]
pub struct Pass {
    pub counts: Counts,
    pub elapsed: Duration,
    /// API requests sent, `GetProfileFields` and retries included.
    pub requests: u64,
    pub retries: u64,
    /// This process's memory when the first pass (validation, duplicate detection) had finished,
    /// taken when its progress line (`… validated N rows …`) arrived.
    pub after_validation: Option<crate::proc::Memory>,
}

impl Pass {
    pub fn rows_per_sec(&self) -> f64 {
        self.counts.rows as f64 / self.elapsed.as_secs_f64()
    }

    pub fn requests_per_sec(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    /// Requests per row, the one `GetProfileFields` of the run left out.
    pub fn calls_per_row(&self) -> f64 {
        self.requests.saturating_sub(1) as f64 / self.counts.rows.max(1) as f64
    }

    /// Rows that did not end as created, updated or unchanged.
    pub fn problems(&self) -> u64 {
        self.counts.invalid + self.counts.failed + self.counts.unconfirmed
    }
}

/// Imports `file` once with a fresh client (fresh counters), as `worker::pipeline` does for a
/// job: the results go to a file in `work_dir`, progress lines are drained and dropped.
pub async fn run_pass(
    http: &reqwest::Client,
    tenant: &Tenant,
    platform: &Platform,
    settings: &PlatformSettings,
    concurrency: usize,
    file: &Path,
    work_dir: &Path,
) -> anyhow::Result<Pass> {
    // No option that needs Redis is on: a store without a URL fails if used.
    let store = ImportStore::from_settings(&RedisSettings {
        url: shared::secret::Secret::default(),
        key_prefix: "bench".into(),
    })?;
    run_pass_with(
        http,
        tenant,
        platform,
        settings,
        concurrency,
        file,
        work_dir,
        apply_path_options(),
        store,
    )
    .await
}

/// The fleet's default options, except the mass-change guard: its plan (a read-only pass before a
/// file that could pass a count limit) is not part of the apply path these passes measure.
pub fn apply_path_options() -> ImportOptions {
    ImportOptions {
        mass_change_guard: MassChangeGuard {
            enabled: false,
            ..MassChangeGuard::default()
        },
        ..ImportOptions::default()
    }
}

/// [`run_pass`] with the tenant's import options and the Redis store they may need.
#[allow(clippy::too_many_arguments)]
pub async fn run_pass_with(
    http: &reqwest::Client,
    tenant: &Tenant,
    platform: &Platform,
    settings: &PlatformSettings,
    concurrency: usize,
    file: &Path,
    work_dir: &Path,
    options: ImportOptions,
    store: ImportStore,
) -> anyhow::Result<Pass> {
    let client = PlatformClient::new(
        http.clone(),
        tenant,
        platform.key.clone(),
        settings,
        concurrency,
    );
    // The fleet's defaults, as `worker::pipeline` builds them for a tenant without limits.
    let defaults = ImportSettings::default();
    let params = ImportParams {
        options,
        concurrency,
        max_rows: defaults.max_rows,
        progress_every: 10_000,
        max_record_bytes: defaults.max_record_bytes,
        verify: false,
        confirmed: false,
        force_full: false,
        tenant: tenant.name.to_string(),
        admin: tenant.admin.username.clone(),
        store,
        journal: None,
    };
    let results: PathBuf = tempfile::Builder::new()
        .prefix("bench-results-")
        .suffix(".csv")
        .tempfile_in(work_dir)?
        .into_temp_path()
        .keep()?;
    let (progress, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    let drain = tokio::spawn(async move {
        let mut after_validation = None;
        while let Some(line) = lines.recv().await {
            if after_validation.is_none() && line.contains("validated") {
                after_validation = crate::proc::memory().ok();
            }
        }
        after_validation
    });
    // Never cancelled: a benchmark runs to the end.
    let cancel = tokio_util::sync::CancellationToken::new();
    let started = Instant::now();
    let summary = worker::import::run(file, &results, &client, &params, &progress, &cancel).await;
    let elapsed = started.elapsed();
    drop(progress);
    let after_validation = drain.await?;
    std::fs::remove_file(&results)?;
    let summary = match summary? {
        Run::Done(summary) => summary,
        Run::Held(h) => anyhow::bail!("the import was held: {h:?}"),
    };
    let stats = client.stats();
    Ok(Pass {
        counts: summary.counts,
        elapsed,
        requests: stats.requests.load(Ordering::Relaxed),
        retries: stats.retries.load(Ordering::Relaxed),
        after_validation,
    })
}

/// The request rate the client and the fake reach with nothing else going on.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    pub requests: u64,
    pub elapsed: Duration,
    /// Mean time of one request as its caller sees it.
    pub mean_latency: Duration,
}

impl Probe {
    pub fn requests_per_sec(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

/// `requests` `GetUser` calls of a missing user (404), `concurrency` at a time, through the same
/// client and semaphore as an import: the ceiling an import at this concurrency can reach against
/// this fake, without CSV reading, row logic or writes.
pub async fn probe(
    http: &reqwest::Client,
    tenant: &Tenant,
    platform: &Platform,
    settings: &PlatformSettings,
    concurrency: usize,
    requests: u64,
) -> anyhow::Result<Probe> {
    let client = PlatformClient::new(
        http.clone(),
        tenant,
        platform.key.clone(),
        settings,
        concurrency,
    );
    let per_task = requests.div_ceil(concurrency as u64);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let client = client.clone();
        tasks.spawn(async move {
            let mut busy = Duration::ZERO;
            for _ in 0..per_task {
                let t = Instant::now();
                client.get_user("bench.probe-nobody").await?;
                busy += t.elapsed();
            }
            Ok::<Duration, worker::platform::ApiError>(busy)
        });
    }
    let mut busy = Duration::ZERO;
    while let Some(done) = tasks.join_next().await {
        busy += done??;
    }
    let elapsed = started.elapsed();
    let sent = per_task * concurrency as u64;
    Ok(Probe {
        requests: sent,
        elapsed,
        mean_latency: busy / sent.max(1) as u32,
    })
}

/// Mean time a `tokio::time::sleep(latency)` really takes in this process: the fake's injected
/// latency is such a sleep, so this, not `latency`, is the floor of a request's duration.
pub async fn timer_probe(latency: Duration, samples: u32) -> Duration {
    let started = Instant::now();
    for _ in 0..samples {
        tokio::time::sleep(latency).await;
    }
    started.elapsed() / samples.max(1)
}
