//! Health and readiness over HTTP for both binaries: `/healthz` answers while the process serves,
//! `/readyz` only while it is connected to the broker and Redis and not draining. The loops that
//! own the connections flip the flags; the probe only reads them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

/// What readiness depends on.
#[derive(Debug, Default)]
pub struct Health {
    pub broker: AtomicBool,
    pub redis: AtomicBool,
    pub draining: AtomicBool,
}

impl Health {
    pub fn set_broker(&self, up: bool) {
        self.broker.store(up, Ordering::Relaxed);
    }

    pub fn set_redis(&self, up: bool) {
        self.redis.store(up, Ordering::Relaxed);
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn ready(&self) -> bool {
        self.broker.load(Ordering::Relaxed)
            && self.redis.load(Ordering::Relaxed)
            && !self.draining.load(Ordering::Relaxed)
    }

    fn describe(&self) -> String {
        format!(
            "{{\"broker\":{},\"redis\":{},\"draining\":{}}}\n",
            self.broker.load(Ordering::Relaxed),
            self.redis.load(Ordering::Relaxed),
            self.draining.load(Ordering::Relaxed)
        )
    }
}

/// A text body for `/metrics` (OpenMetrics text, as `prometheus-client` encodes it), produced on
/// each scrape.
pub type MetricsFn = Arc<dyn Fn() -> String + Send + Sync>;

const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds `listen` and serves until `shutdown`; returns the bound address (port 0 allowed).
pub async fn serve(
    listen: SocketAddr,
    health: Arc<Health>,
    metrics: Option<MetricsFn>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let ready = health.clone();
    let mut app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let h = ready.clone();
                async move {
                    let code = if h.ready() {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (code, h.describe())
                }
            }),
        );
    if let Some(m) = metrics {
        app = app.route(
            "/metrics",
            get(move || {
                let m = m.clone();
                async move { ([("content-type", OPENMETRICS_CONTENT_TYPE)], m()) }
            }),
        );
    }
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
    Ok(addr)
}
