//! The one client of the tenant platform's public API (see `docs/platform-api.md`): RPC-style
//! `POST <base>/<Call>` with Basic auth (portal domain, API key), asynchronous writes answered
//! `202 + Location: /status/<tid>`, and the retry rules: 429 waits for `Retry-After`, 5xx, timeouts
//! and broken connections back off with jitter, all within a bounded number of attempts. A
//! semaphore bounds the requests in flight for one job; waits never hold a permit.

mod limit;
pub mod model;
mod retry;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use serde::Serialize;
use serde_json::{Value, json};
use shared::ApiKey;
use shared::registry::Tenant;
use shared::settings::PlatformSettings;

use tokio::sync::Semaphore;
use url::Url;

pub use limit::{HostLimit, HostLimiter, RateLimitSettings, RateLimits};
use model::{ProfileFields, StatusReport, UserRecord, WriteResult};
pub use retry::RetryPolicy;

/// Asked before every attempt of every request: once it says stop, the client sends nothing more
/// and answers [`ApiError::Stopped`]. The job's gate says stop once the job is cancelled or its
/// tenant lock's lease has run out; a plain token does for callers without a lock.
pub trait StopCheck: std::fmt::Debug + Send + Sync {
    fn should_stop(&self) -> bool;
}

impl StopCheck for tokio_util::sync::CancellationToken {
    fn should_stop(&self) -> bool {
        self.is_cancelled()
    }
}

/// Why a call did not give the answer the caller wanted; the caller decides per variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("credentials refused (HTTP {0})")]
    Credentials(u16),
    #[error("not found")]
    NotFound,
    #[error("already exists")]
    Conflict,
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("gave up after {attempts} attempts, last: {last}")]
    Exhausted { attempts: u32, last: String },
    #[error("unexpected answer: {0}")]
    Protocol(String),
    /// The job was told to stop (see [`PlatformClient::with_stop`]): no request was sent.
    #[error("stopped before sending: the job was cancelled")]
    Stopped,
}

/// Counters of what the API did to us, for the job result and metrics.
#[derive(Debug, Default, Serialize)]
pub struct ApiStats {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub rate_limited: AtomicU64,
    pub server_errors: AtomicU64,
    pub transport_errors: AtomicU64,
}

impl ApiStats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A write accepted by the platform, to be followed to its final status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tid(pub String);

/// A `202` answer: the write's tid, and its final status when the answer's body already said it
/// (then no poll is needed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub tid: Tid,
    pub final_report: Option<StatusReport>,
    /// The body said the write is still pending (as opposed to saying nothing).
    pub pending: bool,
}

/// The API as seen by one job of one tenant.
#[derive(Clone)]
pub struct PlatformClient {
    http: reqwest::Client,
    base: Url,
    domain: String,
    key: ApiKey,
    policy: RetryPolicy,
    permits: Arc<Semaphore>,
    poll_interval: Duration,
    status_timeout: Duration,
    stats: Arc<ApiStats>,
    stop: Option<Arc<dyn StopCheck>>,
    /// The worker-wide limit of this client's host, if any (see [`RateLimits`]).
    host: Option<Arc<HostLimiter>>,
}

impl std::fmt::Debug for PlatformClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlatformClient")
            .field("base", &self.base.as_str())
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

struct Answer {
    status: StatusCode,
    location: Option<String>,
    body: bytes_like::Body,
}

/// Keeps the body's bytes without naming the `bytes` crate.
mod bytes_like {
    pub type Body = Vec<u8>;
}

impl PlatformClient {
    /// `http` is the process-wide client (built once, with its timeout); `concurrency` bounds the
    /// requests this job has in flight.
    pub fn new(
        http: reqwest::Client,
        tenant: &Tenant,
        key: ApiKey,
        settings: &PlatformSettings,
        concurrency: usize,
    ) -> Self {
        Self {
            http,
            base: tenant.api_base_url.clone(),
            domain: tenant.portal_domain.to_string(),
            key,
            policy: RetryPolicy {
                max_attempts: settings.max_attempts,
                base: settings.backoff_base,
                max: settings.backoff_max,
                retry_after_max: settings.retry_after_max,
            },
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            poll_interval: settings.status_poll_interval,
            status_timeout: settings.status_timeout,
            stats: Arc::new(ApiStats::default()),
            stop: None,
            host: None,
        }
    }

    /// How long a write's status is left before its first poll (it grows from there).
    pub fn poll_interval(&self) -> Duration {
        self.poll_interval
    }

    /// Takes the worker-wide limit of this client's host from `limits` (built once per process
    /// with [`RateLimits::from_settings`]): every request then also waits for the host's rate and
    /// concurrency, shared with every other job of the worker on that host.
    pub fn with_rate_limits(mut self, limits: &RateLimits) -> Self {
        self.host = limits.for_url(&self.base);
        self
    }

    /// Asks `stop` before every attempt of every request, retries included, once the request
    /// holds its concurrency permit: the last moment before bytes leave. A job whose tenant lock
    /// ran out while it waited (a backoff, a permit, a frozen process) sends nothing more.
    pub fn with_stop(mut self, stop: Arc<dyn StopCheck>) -> Self {
        self.stop = Some(stop);
        self
    }

    pub fn stats(&self) -> &ApiStats {
        &self.stats
    }

    /// Builds the process-wide HTTP client: rustls, a total timeout per request, no redirects (an
    /// RPC API that redirects a POST is misconfigured, and credentials must not follow it).
    pub fn http_client(settings: &PlatformSettings) -> anyhow::Result<reqwest::Client> {
        Ok(reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("user-import-worker/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(64)
            .build()?)
    }

    pub async fn profile_fields(&self) -> Result<ProfileFields, ApiError> {
        let a = self.rpc("GetProfileFields", &json!({"params": {}})).await?;
        match a.status {
            StatusCode::OK => parse(&a.body),
            other => Err(unexpected("GetProfileFields", other, &a.body)),
        }
    }

    pub async fn get_user(&self, uid: &str) -> Result<Option<UserRecord>, ApiError> {
        let a = self
            .rpc("GetUser", &json!({"params": {"uid": uid}}))
            .await?;
        match a.status {
            StatusCode::OK => parse(&a.body).map(Some),
            StatusCode::NOT_FOUND => Ok(None),
            StatusCode::BAD_REQUEST => Err(ApiError::BadRequest(message_of(&a.body))),
            other => Err(unexpected("GetUser", other, &a.body)),
        }
    }

    /// `SetUser` with any action; `Ok` once accepted (202).
    pub async fn set_user(&self, body: &Value) -> Result<Accepted, ApiError> {
        self.write("SetUser", body).await
    }

    /// `SetUsers` activate/deactivate for at most 500 uids.
    pub async fn set_users(&self, action: &str, uids: &[String]) -> Result<Accepted, ApiError> {
        if uids.len() > 500 {
            return Err(ApiError::BadRequest(
                "SetUsers takes at most 500 uids".into(),
            ));
        }
        self.write(
            "SetUsers",
            &json!({"params": {"action": action, "uids": uids}}),
        )
        .await
    }

    async fn write(&self, call: &str, body: &Value) -> Result<Accepted, ApiError> {
        let a = self.rpc(call, body).await?;
        match a.status {
            StatusCode::ACCEPTED => {
                let location = a
                    .location
                    .ok_or_else(|| ApiError::Protocol(format!("{call}: 202 without Location")))?;
                let tid = tid_of(&location)
                    .map(|t| Tid(t.to_owned()))
                    .ok_or_else(|| {
                        ApiError::Protocol(format!("{call}: Location {location:?} has no tid"))
                    })?;
                // The body is not promised by the reference: read its status when it is there.
                let report = serde_json::from_slice::<StatusReport>(&a.body).ok();
                Ok(Accepted {
                    tid,
                    pending: report.as_ref().is_some_and(|r| r.status == 1),
                    final_report: report.filter(|r| matches!(r.status, 2 | 3)),
                })
            }
            StatusCode::CONFLICT => Err(ApiError::Conflict),
            StatusCode::NOT_FOUND => Err(ApiError::NotFound),
            StatusCode::BAD_REQUEST => Err(ApiError::BadRequest(message_of(&a.body))),
            other => Err(unexpected(call, other, &a.body)),
        }
    }

    /// Polls `/status/<tid>` until it is final or the status timeout passes. `uid` picks the
    /// per-user error out of `errors`.
    pub async fn wait_for(&self, accepted: &Accepted, uid: &str) -> Result<WriteResult, ApiError> {
        let Some(report) = self.wait_final(accepted).await? else {
            return Ok(WriteResult::Unconfirmed);
        };
        match report.status {
            2 => Ok(WriteResult::Succeeded),
            _ => {
                let why = report
                    .errors
                    .get(uid)
                    .cloned()
                    .or_else(|| report.errors.values().next().cloned())
                    .filter(|m| !m.is_empty())
                    .unwrap_or_else(|| {
                        if report.status == 0 {
                            "the platform does not know this write".into()
                        } else if report.message.is_empty() {
                            "failed without a message".into()
                        } else {
                            report.message.clone()
                        }
                    });
                Ok(WriteResult::Failed(why))
            }
        }
    }

    /// The final report of an accepted write (0, 2 or 3): the `202` body's when it was final
    /// already (no request), else polled from `/status/<tid>` with backoff; `None` when the status
    /// timeout passes first. `SetUsers` reads its per-uid `errors` from it.
    pub async fn wait_final(&self, accepted: &Accepted) -> Result<Option<StatusReport>, ApiError> {
        if let Some(report) = &accepted.final_report {
            return Ok(Some(report.clone()));
        }
        let tid = &accepted.tid;
        let deadline = tokio::time::Instant::now() + self.status_timeout;
        let mut interval = self.poll_interval;
        // Said pending a moment ago: asking at once would only hear it again.
        if accepted.pending {
            if tokio::time::Instant::now() + interval > deadline {
                return Ok(None);
            }
            tokio::time::sleep(interval).await;
        }
        loop {
            let report = self.status(tid).await?;
            match report.status {
                0 | 2 | 3 => return Ok(Some(report)),
                _ => {}
            }
            if tokio::time::Instant::now() + interval > deadline {
                return Ok(None);
            }
            tokio::time::sleep(interval).await;
            // Back off for long-pending writes: ×1.5 a poll, up to 8× the interval.
            interval = (interval + interval / 2).min(self.poll_interval * 8);
        }
    }

    /// The raw status of a write (for `SetUsers`, whose errors are per uid).
    pub async fn status(&self, tid: &Tid) -> Result<StatusReport, ApiError> {
        let url = self
            .base
            .join(&format!("status/{}", tid.0))
            .map_err(|e| ApiError::Protocol(e.to_string()))?;
        let a = self.send(reqwest::Method::GET, url, None, "status").await?;
        match a.status {
            StatusCode::OK => parse(&a.body),
            StatusCode::NOT_FOUND => Ok(StatusReport {
                message: "unknown tid".into(),
                status: 0,
                errors: Default::default(),
            }),
            other => Err(unexpected("status", other, &a.body)),
        }
    }

    async fn rpc(&self, call: &str, body: &Value) -> Result<Answer, ApiError> {
        let url = self
            .base
            .join(call)
            .map_err(|e| ApiError::Protocol(e.to_string()))?;
        self.send(reqwest::Method::POST, url, Some(body), call)
            .await
    }

    /// One logical call: retried on 429, 5xx, timeouts and transport errors.
    async fn send(
        &self,
        method: reqwest::Method,
        url: Url,
        body: Option<&Value>,
        call: &str,
    ) -> Result<Answer, ApiError> {
        let mut last = String::new();
        for attempt in 1..=self.policy.max_attempts {
            if attempt > 1 {
                ApiStats::bump(&self.stats.retries);
            }
            let outcome = self.attempt(&method, &url, body).await?;
            trace_attempt(call, attempt, &outcome);
            let wait = match self.judge(call, attempt, outcome) {
                Judged::Done(answer) => return answer,
                Judged::Retry { wait, why } => {
                    last = why;
                    wait
                }
            };
            if attempt < self.policy.max_attempts {
                tracing::debug!(
                    call,
                    attempt,
                    wait_ms = wait.as_millis() as u64,
                    last,
                    "retrying"
                );
                tokio::time::sleep(wait).await;
            }
        }
        Err(ApiError::Exhausted {
            attempts: self.policy.max_attempts,
            last,
        })
    }

    /// Sends one attempt once the job's slot and the host's are held and the stop check allows
    /// it; the inner error is the transport's (no answer), the outer one ends the call.
    async fn attempt(
        &self,
        method: &reqwest::Method,
        url: &Url,
        body: Option<&Value>,
    ) -> Result<Result<Reply, reqwest::Error>, ApiError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| ApiError::Protocol("request limiter closed".into()))?;
        // The host's worker-wide slot and rate, after the job's own slot.
        let _host = match &self.host {
            Some(h) => Some(h.acquire().await),
            None => None,
        };
        if self.stop.as_ref().is_some_and(|s| s.should_stop()) {
            return Err(ApiError::Stopped);
        }
        ApiStats::bump(&self.stats.requests);
        let mut req = self
            .http
            .request(method.clone(), url.clone())
            .basic_auth(&self.domain, Some(self.key.expose()));
        if let Some(b) = body {
            req = req.json(b);
        }
        // The body is read while the slots are still held.
        Ok(match req.send().await {
            Ok(resp) => Reply::read(resp).await,
            Err(e) => Err(e),
        })
    }

    /// Decides what an attempt's outcome means: the call's answer or error, or a retry after a
    /// wait (counted in the stats).
    fn judge(&self, call: &str, attempt: u32, outcome: Result<Reply, reqwest::Error>) -> Judged {
        let reply = match outcome {
            Ok(reply) => reply,
            Err(e) => {
                ApiStats::bump(&self.stats.transport_errors);
                // reqwest's message names the URL (never the credentials, which are in a
                // header); keep the kind and drop the chain of sources.
                return Judged::Retry {
                    why: format!("{call}: {}", transport_kind(&e)),
                    wait: self.policy.backoff(attempt),
                };
            }
        };
        let status = reply.status;
        if status == StatusCode::TOO_MANY_REQUESTS {
            ApiStats::bump(&self.stats.rate_limited);
            Judged::Retry {
                why: format!("{call}: HTTP 429"),
                wait: self.policy.after_429(reply.retry_after.as_deref(), attempt),
            }
        } else if status.is_server_error() {
            ApiStats::bump(&self.stats.server_errors);
            Judged::Retry {
                why: format!("{call}: HTTP {}", status.as_u16()),
                wait: self.policy.backoff(attempt),
            }
        } else if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            Judged::Done(Err(ApiError::Credentials(status.as_u16())))
        } else {
            Judged::Done(Ok(Answer {
                status,
                location: reply.location,
                body: reply.body,
            }))
        }
    }
}

/// An HTTP answer as read by one attempt, before the retry rules judge it.
struct Reply {
    status: StatusCode,
    location: Option<String>,
    retry_after: Option<String>,
    body: bytes_like::Body,
}

impl Reply {
    /// Reads the status, the two headers the client uses and the whole body.
    async fn read(resp: reqwest::Response) -> Result<Self, reqwest::Error> {
        let header = |name| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let status = resp.status();
        let location = header(reqwest::header::LOCATION);
        let retry_after = header(reqwest::header::RETRY_AFTER);
        let body = resp.bytes().await?.to_vec();
        Ok(Self {
            status,
            location,
            retry_after,
            body,
        })
    }
}

/// What an attempt leads to.
enum Judged {
    /// The call is over: its answer, or an error no retry can mend.
    Done(Result<Answer, ApiError>),
    /// Worth another attempt after `wait`; `why` is the last failure, kept for the final error.
    Retry { wait: Duration, why: String },
}

/// One event per attempt (a span event of `import` when traced at this level): the call, the
/// status and the attempt; never the URL's ids, a body or a header.
fn trace_attempt(call: &str, attempt: u32, outcome: &Result<Reply, reqwest::Error>) {
    match outcome {
        Ok(reply) => {
            tracing::trace!(call, status = reply.status.as_u16(), attempt, "api call")
        }
        Err(e) => tracing::trace!(call, error = transport_kind(e), attempt, "api call"),
    }
}

/// What went wrong with a request that got no answer, in words that quote nothing of it.
fn transport_kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "connection failed"
    }
}

/// `/status/<tid>` (absolute or relative) → `<tid>`. The tid is then asked for under the tenant's
/// base URL, so a regional base path (`…/eu/`) is kept (see docs/platform-api.md).
fn tid_of(location: &str) -> Option<&str> {
    let path = location.split(['?', '#']).next()?;
    let (_, tid) = path.rsplit_once("status/")?;
    let tid = tid.trim_end_matches('/');
    (!tid.is_empty()
        && tid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
    .then_some(tid)
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::Protocol(format!("invalid JSON: {e}")))
}

fn message_of(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned())
}

fn unexpected(call: &str, status: StatusCode, body: &[u8]) -> ApiError {
    ApiError::Protocol(format!(
        "{call}: HTTP {} {}",
        status.as_u16(),
        message_of(body)
    ))
}

#[cfg(test)]
mod tests {
    use super::tid_of;

    #[test]
    fn the_tid_is_the_last_segment_of_the_location() {
        assert_eq!(tid_of("/status/abc-123"), Some("abc-123"));
        assert_eq!(tid_of("https://api.x.com/eu/status/9f?x=1"), Some("9f"));
        assert_eq!(tid_of("/status/"), None);
        assert_eq!(tid_of("/elsewhere/1"), None);
        assert_eq!(tid_of("/status/../../etc"), None);
    }
}
