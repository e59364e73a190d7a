//! `/_fake/*`: unauthenticated admin routes to drive the fake from outside the process (the
//! binary's local use, benchmarks). They are never fault-injected and never counted.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::json;

use crate::app::App;
use crate::faults::Faults;
use crate::model::{ACTIVATED, DEACTIVATED, FakeUser};
use crate::reply;

pub(crate) fn routes() -> Router<App> {
    Router::new()
        .route("/_fake/health", get(health))
        .route("/_fake/tenants", post(add_tenant))
        .route("/_fake/tenants/{domain}/users", get(users))
        .route(
            "/_fake/tenants/{domain}/users/{username}",
            put(seed_user).get(user),
        )
        .route("/_fake/tenants/{domain}/calls", get(calls))
        .route("/_fake/faults", put(set_faults).get(faults))
        .route("/_fake/reset-calls", post(reset_calls))
}

/// Parses a JSON body into a 400 with a message, never axum's plain-text rejections.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("invalid body: {e}"))
}

fn unknown_tenant(domain: &str) -> Response {
    reply::not_found(format!("no such tenant '{domain}'"))
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// The body of `POST /_fake/tenants` (no `Debug`: it holds a key).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTenant {
    domain: String,
    api_key: String,
}

async fn add_tenant(State(app): State<App>, body: Bytes) -> Response {
    let tenant: NewTenant = match parse(&body) {
        Ok(t) => t,
        Err(message) => return reply::bad_request(message),
    };
    if tenant.domain.trim().is_empty() || tenant.api_key.is_empty() {
        return reply::bad_request("domain and api_key must not be empty");
    }
    app.store.lock().add_tenant(&tenant.domain, &tenant.api_key);
    tracing::info!(tenant = %tenant.domain, "tenant added");
    let domain = crate::state::normalize_domain(&tenant.domain);
    (StatusCode::CREATED, Json(json!({ "domain": domain }))).into_response()
}

async fn users(State(app): State<App>, Path(domain): Path<String>) -> Response {
    let store = app.store.lock();
    match store.tenant(&domain) {
        Some(tenant) => Json(tenant.users.values().collect::<Vec<_>>()).into_response(),
        None => unknown_tenant(&domain),
    }
}

async fn user(
    State(app): State<App>,
    Path((domain, username)): Path<(String, String)>,
) -> Response {
    let store = app.store.lock();
    let Some(tenant) = store.tenant(&domain) else {
        return unknown_tenant(&domain);
    };
    match tenant.users.get(&username) {
        Some(user) => Json(user).into_response(),
        None => reply::not_found(format!("no such user '{username}'")),
    }
}

/// Seeds (or replaces) a user as given, without the API's validation. The body is a
/// [`FakeUser`]; `username` may be left out (the path names the user) but must match if given.
async fn seed_user(
    State(app): State<App>,
    Path((domain, username)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let mut user: FakeUser = match parse(&body) {
        Ok(user) => user,
        Err(message) => return reply::bad_request(message),
    };
    if !user.username.is_empty() && user.username != username {
        return reply::bad_request("the body's username differs from the path's");
    }
    if user.state != ACTIVATED && user.state != DEACTIVATED {
        return reply::bad_request(format!("state must be {ACTIVATED} or {DEACTIVATED}"));
    }
    user.username = username;
    let mut store = app.store.lock();
    let Some(tenant) = store.tenant_mut(&domain) else {
        return unknown_tenant(&domain);
    };
    tenant.insert_user(user.clone());
    Json(user).into_response()
}

async fn calls(State(app): State<App>, Path(domain): Path<String>) -> Response {
    let store = app.store.lock();
    match store.tenant(&domain) {
        Some(tenant) => Json(&tenant.calls).into_response(),
        None => unknown_tenant(&domain),
    }
}

async fn set_faults(State(app): State<App>, body: Bytes) -> Response {
    let faults: Faults = match parse(&body) {
        Ok(f) => f,
        Err(message) => return reply::bad_request(message),
    };
    if let Err(message) = faults.validate() {
        return reply::bad_request(message);
    }
    tracing::info!(?faults, "faults set");
    app.store.lock().faults = faults.clone();
    Json(faults).into_response()
}

async fn faults(State(app): State<App>) -> Response {
    Json(app.store.lock().faults.clone()).into_response()
}

async fn reset_calls(State(app): State<App>) -> StatusCode {
    let mut store = app.store.lock();
    for tenant in store.tenants_mut() {
        tenant.calls = Default::default();
    }
    StatusCode::NO_CONTENT
}
