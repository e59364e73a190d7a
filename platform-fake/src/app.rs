//! The shared application state of the HTTP server and the router that puts the API and the
//! admin routes together.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::Response;
use tokio_util::sync::CancellationToken;

use crate::reply;
use crate::state::Shared;

/// What every handler gets.
#[derive(Clone, Debug)]
pub(crate) struct App {
    pub store: Arc<Shared>,
    /// Cancelled when the fake shuts down: hanging requests give up at once.
    pub shutdown: CancellationToken,
}

impl App {
    /// Sleeps for `duration`; `false` if the fake started shutting down meanwhile.
    pub(crate) async fn pause(&self, duration: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(duration) => true,
            () = self.shutdown.cancelled() => false,
        }
    }
}

/// The answer to a request cut short by shutdown.
pub(crate) fn shutting_down() -> Response {
    reply::error(StatusCode::SERVICE_UNAVAILABLE, "the fake is shutting down")
}

/// The whole HTTP surface: the platform API plus `/_fake/*`.
pub(crate) fn router(app: App) -> Router {
    Router::new()
        .merge(crate::admin::routes())
        .merge(crate::api::routes())
        .fallback(|| async { reply::not_found("no such call") })
        .method_not_allowed_fallback(|| async {
            reply::error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        })
        .with_state(app)
}
