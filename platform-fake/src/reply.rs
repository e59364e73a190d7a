//! Building the fake's HTTP answers: JSON errors `{"message": ...}` and the fault answers.

use axum::Json;
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::AuthError;
use crate::command::Rejection;

/// A JSON error answer `{"message": ...}`.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let message: String = message.into();
    (status, Json(json!({ "message": message }))).into_response()
}

pub(crate) fn bad_request(message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, message)
}

pub(crate) fn not_found(message: impl Into<String>) -> Response {
    error(StatusCode::NOT_FOUND, message)
}

/// Why an API call (past authentication and faults) is not served: becomes a JSON error.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// 400.
    BadRequest(String),
    /// A synchronous refusal: 400, 404 or 409.
    Rejected(Rejection),
    /// 404.
    NotFound(String),
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> Self {
        Self::Rejected(rejection)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            Self::BadRequest(m) | Self::Rejected(Rejection::BadRequest(m)) => {
                error(StatusCode::BAD_REQUEST, m)
            }
            Self::NotFound(m) | Self::Rejected(Rejection::NotFound(m)) => {
                error(StatusCode::NOT_FOUND, m)
            }
            Self::Rejected(Rejection::Conflict(m)) => error(StatusCode::CONFLICT, m),
        }
    }
}

pub(crate) fn unauthenticated(error_kind: AuthError) -> Response {
    match error_kind {
        AuthError::Missing => {
            let mut response = error(StatusCode::UNAUTHORIZED, "credentials missing");
            response.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Basic realm="platform-fake""#),
            );
            response
        }
        AuthError::Invalid => error(StatusCode::FORBIDDEN, "credentials not valid"),
    }
}

/// An injected 429 with `Retry-After` in seconds.
pub(crate) fn rate_limited(retry_after_secs: u64) -> Response {
    let mut response = error(StatusCode::TOO_MANY_REQUESTS, "rate limited");
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
    response
}

/// An injected 5xx. 500 comes from the "application" as JSON; 502 and 503 look like what a
/// gateway in front of it sends: a short HTML page, so clients must not assume a JSON body.
pub(crate) fn server_error(status: u16) -> Response {
    match StatusCode::from_u16(status) {
        Ok(code) if code != StatusCode::INTERNAL_SERVER_ERROR && code.is_server_error() => {
            let reason = code.canonical_reason().unwrap_or("Server Error");
            let page = format!(
                "<html><head><title>{status} {reason}</title></head>\
                 <body><h1>{status} {reason}</h1></body></html>\n"
            );
            let html = HeaderValue::from_static("text/html; charset=utf-8");
            (code, [(CONTENT_TYPE, html)], page).into_response()
        }
        _ => error(StatusCode::INTERNAL_SERVER_ERROR, "internal server error"),
    }
}
