//! The scheduler library's errors. The split the caller acts on is [`SchedulerError::is_retryable`]:
//! a broker or Redis failure is retried by the loop with backoff; bad settings, a bad registry or
//! an unknown tenant are not.

use std::time::Duration;

use shared::amqp::PublishError;
use shared::registry::RegistryError;

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// Settings the scheduler cannot run with.
    #[error("scheduler settings: {0}")]
    Config(String),
    /// The tenant registry did not load.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// `trigger` for a tenant the registry does not list.
    #[error("unknown tenant {0:?}: not in the tenant registry")]
    UnknownTenant(String),
    /// Connecting to the broker or declaring the topology failed (message redacted).
    #[error("broker: {0}")]
    Broker(String),
    /// A command to Redis failed (message redacted).
    #[error("redis: {0}")]
    Redis(String),
    /// A value in Redis that this scheduler did not write.
    #[error("redis key {key} holds {value:?}, not a Unix time in seconds")]
    Ledger { key: String, value: String },
    /// The broker refused, returned or did not confirm the message.
    #[error("publish: {0}")]
    Publish(#[from] PublishError),
    /// The broker did not confirm within the bound.
    #[error("publish: no confirm from the broker within {0:?}")]
    PublishTimeout(Duration),
    /// Shutdown was requested while waiting.
    #[error("shutting down")]
    Cancelled,
}

impl SchedulerError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Broker(_)
            | Self::Redis(_)
            | Self::Publish(_)
            | Self::PublishTimeout(_)
            | Self::Ledger { .. } => true,
            Self::Config(_) | Self::Registry(_) | Self::UnknownTenant(_) | Self::Cancelled => false,
        }
    }

    /// A short machine-readable kind, for `error.type` on spans.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Config(_) => "config",
            Self::Registry(_) => "registry",
            Self::UnknownTenant(_) => "unknown-tenant",
            Self::Broker(_) => "broker",
            Self::Redis(_) => "redis",
            Self::Ledger { .. } => "ledger",
            Self::Publish(PublishError::Returned(_)) => "publish-returned",
            Self::Publish(PublishError::Nacked) => "publish-nacked",
            Self::Publish(_) => "publish",
            Self::PublishTimeout(_) => "publish-timeout",
            Self::Cancelled => "cancelled",
        }
    }
}

/// `text` with every copy of the connection URL, and of the password inside it, replaced by
/// `[redacted]`: client libraries may quote what they were given in their errors.
pub(crate) fn redact_url(text: &str, url: Option<&str>) -> String {
    let Some(url) = url else {
        return text.to_owned();
    };
    let mut text = shared::secret::redact(text, url);
    if let Ok(parsed) = url::Url::parse(url)
        && let Some(password) = parsed.password()
    {
        text = shared::secret::redact(&text, password);
        text = shared::secret::redact(&text, &percent_decode(password));
    }
    text
}

/// `%40` → `@`: the password as the client library sees it.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_their_passwords_are_redacted() {
        let url = "amqp://user:p%40ss@broker:5672/%2f";
        let text = format!("cannot connect to {url}: bad password p%40ss / p@ss");
        let out = redact_url(&text, Some(url));
        assert!(!out.contains("p%40ss"), "{out}");
        assert!(!out.contains("p@ss"), "{out}");
        assert!(out.contains("[redacted]"), "{out}");
        assert_eq!(redact_url("plain", None), "plain");
    }

    #[test]
    fn broker_and_redis_failures_are_retryable_and_an_unknown_tenant_is_not() {
        assert!(SchedulerError::Broker("x".into()).is_retryable());
        assert!(SchedulerError::Redis("x".into()).is_retryable());
        assert!(SchedulerError::Publish(PublishError::Nacked).is_retryable());
        assert!(!SchedulerError::UnknownTenant("x".into()).is_retryable());
        assert!(!SchedulerError::Config("x".into()).is_retryable());
    }
}
