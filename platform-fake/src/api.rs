//! The platform's public user API: `POST /<CallName>` and `GET /status/<tid>`.
//!
//! Every call goes through [`admit`] first: authentication, counting, then fault injection. Only
//! then is the body parsed (400 on a bad one) and the call performed.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::header::LOCATION;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::app::{App, shutting_down};
use crate::auth;
use crate::conn::ConnInfo;
use crate::faults::{Fault, TIMEOUT_HANG};
use crate::model::{FakeUser, call};
use crate::reply::ApiError;
use crate::state::StatusLookup;
use crate::{reply, wire};

pub(crate) fn routes() -> Router<App> {
    Router::new()
        .route("/status/{tid}", get(status))
        .route("/{call}", post(rpc))
}

/// The call names the API knows, as counted.
fn known_call(name: &str) -> Option<&'static str> {
    [
        call::GET_PROFILE_FIELDS,
        call::GET_USER,
        call::SET_USER,
        call::SET_USERS,
        call::DELETE_USER,
    ]
    .into_iter()
    .find(|known| *known == name)
}

/// Authenticates, counts the call, then applies the configured faults. `Ok(domain)` means the
/// request goes on to be served.
async fn admit(
    app: &App,
    headers: &HeaderMap,
    conn: &ConnInfo,
    call: &'static str,
) -> Result<String, Response> {
    let (domain, faults) = {
        let mut store = app.store.lock();
        let domain = auth::authenticate(&store, headers).map_err(reply::unauthenticated)?;
        let within_limit = store.count_request();
        if let Some(tenant) = store.tenant_mut(&domain) {
            tenant.calls.record(call);
            if [call::SET_USER, call::SET_USERS, call::DELETE_USER].contains(&call) {
                tenant.write_log.push(std::time::SystemTime::now());
            }
            if !within_limit {
                tenant.calls.injected_429 += 1;
            }
        }
        if !within_limit {
            return Err(reply::rate_limited(1));
        }
        (domain, store.faults.clone())
    };
    if faults.latency_ms > 0 && !app.pause(faults.latency()).await {
        return Err(shutting_down());
    }
    let fault = faults.draw(&mut rand::rng());
    if fault != Fault::None {
        tracing::debug!(tenant = %domain, call, ?fault, peer = %conn.remote, "injecting a fault");
        let mut store = app.store.lock();
        if let Some(tenant) = store.tenant_mut(&domain) {
            let counts = &mut tenant.calls;
            match fault {
                Fault::None => {}
                Fault::Drop => counts.injected_drops += 1,
                Fault::Hang => counts.injected_timeouts += 1,
                Fault::RateLimited { .. } => counts.injected_429 += 1,
                Fault::ServerError { .. } => counts.injected_5xx += 1,
            }
        }
    }
    match fault {
        Fault::None => Ok(domain),
        Fault::Drop => {
            conn.kill();
            // Never reaches the client: the connection fails before hyper can write it.
            Err(StatusCode::INTERNAL_SERVER_ERROR.into_response())
        }
        Fault::Hang => {
            if app.pause(TIMEOUT_HANG).await {
                Ok(domain)
            } else {
                Err(shutting_down())
            }
        }
        Fault::RateLimited { retry_after_secs } => Err(reply::rate_limited(retry_after_secs)),
        Fault::ServerError { status } => Err(reply::server_error(status)),
    }
}

/// `POST /<CallName>`.
async fn rpc(
    State(app): State<App>,
    ConnectInfo(conn): ConnectInfo<ConnInfo>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(call) = known_call(&name) else {
        // Credentials are checked before the call name, as a gateway in front would.
        return match auth::authenticate(&app.store.lock(), &headers) {
            Err(error) => reply::unauthenticated(error),
            Ok(_) => reply::not_found(format!("no such call '{name}'")),
        };
    };
    let domain = match admit(&app, &headers, &conn, call).await {
        Ok(domain) => domain,
        Err(response) => return response,
    };
    tracing::debug!(tenant = %domain, call, "serving");
    let result = match call {
        call::GET_PROFILE_FIELDS => get_profile_fields(&app, &domain, &body),
        call::GET_USER => get_user(&app, &domain, &body),
        call::SET_USER => set_user(&app, &domain, &body),
        call::SET_USERS => set_users(&app, &domain, &body),
        _ => delete_user(&app, &domain, &body),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

type Answer = Result<Response, ApiError>;

/// The tenant authenticated a moment ago; tenants are never removed, so this cannot happen,
/// but a 404 is a better answer than a panic.
fn tenant_gone() -> ApiError {
    ApiError::NotFound("no such tenant".to_owned())
}

fn get_profile_fields(app: &App, domain: &str, body: &[u8]) -> Answer {
    wire::no_params(body).map_err(ApiError::BadRequest)?;
    let store = app.store.lock();
    let tenant = store.tenant(domain).ok_or_else(tenant_gone)?;
    Ok(Json(&tenant.fields).into_response())
}

fn user_json(user: &FakeUser) -> Value {
    let mut profile = serde_json::Map::new();
    profile.insert("username".into(), Value::from(user.username.as_str()));
    for (key, value) in &user.profile {
        profile.insert(key.clone(), Value::from(value.as_str()));
    }
    let groups: Vec<Value> = user.groups.iter().map(|g| json!({ "name": g })).collect();
    json!({
        "params": { "uid": user.username },
        "profile": profile,
        "groups": groups,
        "state": user.state,
    })
}

fn get_user(app: &App, domain: &str, body: &[u8]) -> Answer {
    let uid = wire::uid(body).map_err(ApiError::BadRequest)?;
    let store = app.store.lock();
    let tenant = store.tenant(domain).ok_or_else(tenant_gone)?;
    let user = tenant
        .users
        .get(&uid)
        .ok_or_else(|| ApiError::NotFound(format!("no such user '{uid}'")))?;
    Ok(Json(user_json(user)).into_response())
}

/// `202` with the tid; its body carries the final status when the faults say so and it is final
/// already, else "pending".
fn accepted(app: &App, domain: &str, tid: &str) -> Response {
    let inline = {
        let store = app.store.lock();
        store
            .faults
            .final_status_in_answer
            .then(|| store.status(domain, tid, Instant::now()))
    };
    let body = match inline {
        Some(StatusLookup::Found(view)) if view.status != crate::state::status::PENDING => json!({
            "tid": tid,
            "status": view.status,
            "message": view.message,
            "errors": view.errors,
        }),
        _ => json!({ "tid": tid, "status": crate::state::status::PENDING, "message": "accepted" }),
    };
    (
        StatusCode::ACCEPTED,
        [(LOCATION, format!("/status/{tid}"))],
        Json(body),
    )
        .into_response()
}

fn set_user(app: &App, domain: &str, body: &[u8]) -> Answer {
    let command = wire::set_user(body).map_err(ApiError::BadRequest)?;
    let mut store = app.store.lock();
    let tenant = store.tenant_mut(domain).ok_or_else(tenant_gone)?;
    let outcome = tenant.set_user(command)?;
    let tid = store.submit(domain, outcome, Instant::now());
    drop(store);
    Ok(accepted(app, domain, &tid))
}

fn set_users(app: &App, domain: &str, body: &[u8]) -> Answer {
    let command = wire::set_users(body).map_err(ApiError::BadRequest)?;
    let mut store = app.store.lock();
    let tenant = store.tenant_mut(domain).ok_or_else(tenant_gone)?;
    let outcome = tenant.set_users(command)?;
    let tid = store.submit(domain, outcome, Instant::now());
    drop(store);
    Ok(accepted(app, domain, &tid))
}

fn delete_user(app: &App, domain: &str, body: &[u8]) -> Answer {
    let uid = wire::uid(body).map_err(ApiError::BadRequest)?;
    let mut store = app.store.lock();
    let tenant = store.tenant_mut(domain).ok_or_else(tenant_gone)?;
    tenant.delete_user(&uid)?;
    let body = json!({ "params": { "uid": uid }, "message": format!("user '{uid}' deleted") });
    Ok(Json(body).into_response())
}

/// `GET /status/<tid>`.
async fn status(
    State(app): State<App>,
    ConnectInfo(conn): ConnectInfo<ConnInfo>,
    Path(tid): Path<String>,
    headers: HeaderMap,
) -> Response {
    let domain = match admit(&app, &headers, &conn, call::STATUS).await {
        Ok(domain) => domain,
        Err(response) => return response,
    };
    let lookup = app.store.lock().status(&domain, &tid, Instant::now());
    match lookup {
        StatusLookup::Found(view) => Json(json!({
            "message": view.message,
            "status": view.status,
            "tid": view.tid,
            "errors": view.errors,
        }))
        .into_response(),
        StatusLookup::Foreign => reply::not_found(format!("no such tid '{tid}'")),
    }
}
