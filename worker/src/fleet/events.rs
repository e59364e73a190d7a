//! A record per delivery handled, for the fleet's observers (metrics, tests' ledgers): who ran
//! which tenant, from when to when, and how it ended.

use chrono::{DateTime, Utc};
use lapin::message::Delivery;

use super::disposition::Disposition;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEvent {
    pub worker_id: String,
    pub tenant: String,
    pub job_id: String,
    pub message_id: String,
    /// When the lock was taken and the pipeline started; `None` when no pipeline ran.
    pub started: Option<DateTime<Utc>>,
    /// When the pipeline ended, before the lock was released.
    pub ended: Option<DateTime<Utc>>,
    /// [`Disposition::label`]: an outcome (`imported`, `no-file`, …), `skipped-busy`,
    /// `retry-scheduled`, `handed-back`, `dead-lettered`, `duplicate` (a tick delivered twice).
    pub disposition: &'static str,
    /// The failure reason or outcome label behind the disposition.
    pub reason: String,
}

impl JobEvent {
    /// The event of a delivery just taken (settled as a dead letter until told otherwise).
    pub fn new(worker_id: &str, delivery: &Delivery) -> Self {
        Self {
            worker_id: worker_id.to_owned(),
            tenant: String::new(),
            job_id: String::new(),
            message_id: delivery
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.as_str().to_owned())
                .unwrap_or_default(),
            started: None,
            ended: None,
            disposition: "dead-lettered",
            reason: String::new(),
        }
    }

    /// How the delivery was settled, as observers see it.
    pub fn settled(&mut self, disposition: &Disposition) {
        self.disposition = disposition.label();
        self.reason = disposition.reason().to_owned();
    }
}
