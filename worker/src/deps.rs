//! Everything a job needs, built once at start-up: the settings, the registry (reloadable), the
//! key source and the clients. Jobs reach the clients that write (the account connector, the
//! mailer) only through their [`crate::job::JobRun`].

use std::sync::{Arc, RwLock};

use shared::registry::Registry;
use shared::registry::secrets::SecretSource;
use shared::settings::Settings;

use crate::account::Connector;
use crate::alerts::Alerts;
use crate::email::Mailer;
use crate::import::store::ImportStore;
use crate::metrics::WorkerMetrics;
use crate::platform::{PlatformClient, RateLimits};

#[derive(Debug)]
pub struct Deps {
    pub settings: Settings,
    registry: RwLock<Arc<Registry>>,
    pub secrets: SecretSource,
    pub http: reqwest::Client,
    /// Opens sessions on tenants' accounts.
    pub accounts: Connector,
    pub mailer: Mailer,
    /// What the import remembers per tenant (Redis; connects only when an option needs it).
    pub store: ImportStore,
    /// Alert state (Redis, under the fleet's key prefix).
    pub alerts: Alerts,
    /// The process's metrics (`/metrics` of `worker run`).
    pub metrics: Arc<WorkerMetrics>,
    /// The client-side limits per platform host, shared by every job of this process.
    pub rate_limits: Arc<RateLimits>,
}

impl Deps {
    pub fn build(
        settings: Settings,
        registry: Registry,
        secrets: SecretSource,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            http: PlatformClient::http_client(&settings.platform)?,
            accounts: Connector::from_settings(&settings)?,
            mailer: Mailer::from_settings(&settings.smtp)?,
            store: ImportStore::from_settings(&settings.redis)?,
            alerts: Alerts::from_settings(&settings.redis)?,
            metrics: Arc::new(WorkerMetrics::default()),
            rate_limits: RateLimits::from_settings(&settings.platform.rate_limits),
            registry: RwLock::new(Arc::new(registry)),
            secrets,
            settings,
        })
    }

    pub fn registry(&self) -> Arc<Registry> {
        match self.registry.read() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reads the registry file again and swaps it in when it loads (a file that does not load is
    /// logged and the current registry kept). True when it was swapped in.
    pub fn reload_registry(&self) -> bool {
        match Registry::load(&self.settings.registry.file) {
            Ok(registry) => {
                tracing::info!(tenants = registry.len(), "registry reloaded");
                self.replace_registry(registry);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "the registry could not be reloaded; keeping the current one");
                false
            }
        }
    }

    /// Swaps in a reloaded registry; jobs already running keep the one they started with.
    pub fn replace_registry(&self, registry: Registry) {
        match self.registry.write() {
            Ok(mut r) => *r = Arc::new(registry),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(registry),
        }
    }
}
