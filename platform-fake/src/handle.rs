//! Starting the fake server and driving it in-process: [`spawn`], [`spawn_on`], [`FakeHandle`].

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::app::{App, router};
use crate::config::FakeConfig;
use crate::conn::{ConnInfo, KillableListener};
use crate::faults::Faults;
use crate::model::{CallCounts, FakeUser};
use crate::state::Shared;

/// How long [`FakeHandle::shutdown`] waits for open connections to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Starts the fake on `127.0.0.1:0` (a free port; see [`FakeHandle::addr`]).
pub async fn spawn(config: FakeConfig) -> anyhow::Result<FakeHandle> {
    spawn_on(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
}

/// Starts the fake on `addr`.
pub async fn spawn_on(addr: SocketAddr, config: FakeConfig) -> anyhow::Result<FakeHandle> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the platform fake to {addr}"))?;
    let addr = listener
        .local_addr()
        .context("reading the platform fake's bound address")?;

    let store = Arc::new(Shared::default());
    {
        let mut store = store.lock();
        for tenant in &config.tenants {
            store.add_tenant(&tenant.domain, &tenant.api_key);
        }
        store.faults = config.faults.clone().clamped();
    }
    let shutdown = CancellationToken::new();
    let app = App {
        store: Arc::clone(&store),
        shutdown: shutdown.clone(),
    };
    let service = router(app).into_make_service_with_connect_info::<ConnInfo>();
    let server = axum::serve(KillableListener(listener), service)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let task = tokio::spawn(async move {
        if let Err(error) = server.await {
            tracing::error!(%error, "the platform fake stopped");
        }
    });
    tracing::debug!(%addr, tenants = config.tenants.len(), "platform fake started");
    Ok(FakeHandle {
        addr,
        store,
        shutdown,
        task: Some(task),
    })
}

/// A running fake. Dropping it stops the server too (without waiting).
#[derive(Debug)]
pub struct FakeHandle {
    addr: SocketAddr,
    store: Arc<Shared>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl FakeHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds a tenant, or gives an existing one a new key (its users stay).
    pub fn add_tenant(&self, domain: &str, api_key: &str) {
        self.store.lock().add_tenant(domain, api_key);
    }

    /// Replaces the faults (rates are clamped into 0.0..=1.0).
    pub fn set_faults(&self, faults: Faults) {
        self.store.lock().faults = faults.clamped();
    }

    /// The current faults.
    pub fn faults(&self) -> Faults {
        self.store.lock().faults.clone()
    }

    /// The tenant's users, sorted by username (empty for an unknown tenant).
    pub fn users(&self, domain: &str) -> Vec<FakeUser> {
        let store = self.store.lock();
        store
            .tenant(domain)
            .map(|t| t.users.values().cloned().collect())
            .unwrap_or_default()
    }

    /// One user of the tenant.
    pub fn user(&self, domain: &str, username: &str) -> Option<FakeUser> {
        let store = self.store.lock();
        store.tenant(domain)?.users.get(username).cloned()
    }

    /// The groups that exist on the tenant.
    pub fn groups(&self, domain: &str) -> BTreeSet<String> {
        let store = self.store.lock();
        store
            .tenant(domain)
            .map(|t| t.groups.clone())
            .unwrap_or_default()
    }

    /// Seeds (or replaces) a user as given, without the API's validation. A `username` key in
    /// its profile is dropped. Ignored, with a warning, for an unknown tenant.
    pub fn insert_user(&self, domain: &str, user: FakeUser) {
        let mut store = self.store.lock();
        match store.tenant_mut(domain) {
            Some(tenant) => tenant.insert_user(user),
            None => tracing::warn!(tenant = domain, "insert_user: no such tenant"),
        }
    }

    /// The tenant's call counters (all zero for an unknown tenant).
    pub fn calls(&self, domain: &str) -> CallCounts {
        let store = self.store.lock();
        store
            .tenant(domain)
            .map(|t| t.calls.clone())
            .unwrap_or_default()
    }

    /// Authenticated requests per wall-clock second (Unix time, ascending), all tenants
    /// together: what the platform's rate limit sees.
    pub fn requests_per_second(&self) -> Vec<(u64, u64)> {
        let store = self.store.lock();
        store.per_second.iter().map(|(s, n)| (*s, *n)).collect()
    }

    /// When each of the tenant's write requests arrived, in order (empty for an unknown tenant).
    pub fn write_log(&self, domain: &str) -> Vec<std::time::SystemTime> {
        let store = self.store.lock();
        store
            .tenant(domain)
            .map(|t| t.write_log.clone())
            .unwrap_or_default()
    }

    /// Zeroes every tenant's call counters (and its write log).
    pub fn reset_calls(&self) {
        let mut store = self.store.lock();
        for tenant in store.tenants_mut() {
            tenant.calls = CallCounts::default();
            tenant.write_log.clear();
        }
    }

    /// Stops accepting, ends hanging requests, and waits (boundedly) for open connections.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
        {
            tracing::warn!("the platform fake did not stop in time; aborting it");
            task.abort();
        }
    }
}

impl Drop for FakeHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
