//! A record per delivery handled, for the fleet's observers (metrics, tests' ledgers): who ran
//! which tenant, from when to when, and how it ended.

use chrono::{DateTime, Utc};

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
    /// `imported`, `no-file`, `already-processed`, `skipped-busy`, `retry-scheduled`,
    /// `handed-back`, `dead-lettered`, `duplicate` (a scheduled tick delivered twice).
    pub disposition: &'static str,
    /// The failure reason or outcome label behind the disposition.
    pub reason: String,
}
