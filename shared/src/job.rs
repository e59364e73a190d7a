//! The job message: the only type that crosses the queue. It is a versioned wire format, separate
//! from the domain types, so workers of two releases can run side by side during a rolling deploy.
//! It never holds a secret: a worker resolves the tenant's settings and key itself.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What made a job: the tenant's schedule or an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Schedule,
    Manual,
}

/// Version 1 of the job body (JSON). Unknown fields are ignored so a newer publisher may add some.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobV1 {
    pub job_id: Uuid,
    pub tenant: String,
    pub region: String,
    pub scheduled_for: DateTime<Utc>,
    pub trigger: Trigger,
}

/// The envelope: `{"v": 1, ...JobV1}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "v")]
pub enum JobMessage {
    #[serde(rename = "1")]
    V1(JobV1),
}

impl JobV1 {
    /// The AMQP `message_id`: one identity per tenant per tick.
    pub fn message_id(&self) -> String {
        format!("{}:{}", self.tenant, self.scheduled_for.to_rfc3339())
    }
}

/// A body that is not a job this release understands.
#[derive(Debug, thiserror::Error)]
#[error("not a job message: {0}")]
pub struct DecodeError(#[from] serde_json::Error);

impl JobMessage {
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain data to a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        Ok(serde_json::from_slice(body)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_round_trips_with_its_version_tag() {
        let job = JobMessage::V1(JobV1 {
            job_id: Uuid::nil(),
            tenant: "acme".into(),
            region: "eu".into(),
            scheduled_for: DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
                .map(|d| d.with_timezone(&Utc))
                .unwrap_or_default(),
            trigger: Trigger::Schedule,
        });
        let body = job.encode();
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains(r#""v":"1""#), "{text}");
        assert!(text.contains(r#""trigger":"schedule""#), "{text}");
        assert_eq!(JobMessage::decode(&body).ok(), Some(job));
    }

    #[test]
    fn garbage_and_unknown_versions_are_decode_errors() {
        assert!(JobMessage::decode(b"not json").is_err());
        assert!(JobMessage::decode(br#"{"v":"9","tenant":"a"}"#).is_err());
    }
}
