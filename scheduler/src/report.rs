//! What a poll reports, tenant by tenant, and what `scheduler next` lists.

use chrono::{DateTime, Utc};
use shared::TenantName;
use shared::job::JobV1;

use crate::error::SchedulerError;

/// What one poll (or one `once` round) did, tenant by tenant; every list is sorted by tenant.
#[derive(Debug, Default)]
pub struct PollReport {
    /// Ticks this replica published, with their jobs in `jobs` (same order).
    pub published: Vec<(TenantName, DateTime<Utc>)>,
    pub jobs: Vec<JobV1>,
    /// Ticks another replica held the claim of: it publishes them, or its claim expires and a
    /// later poll does.
    pub busy: Vec<(TenantName, DateTime<Utc>)>,
    /// Ticks found already published once the claim was taken (another replica was faster).
    pub already_published: Vec<(TenantName, DateTime<Utc>)>,
    /// Ticks that failed; the claim was released, so the next poll retries them.
    pub failed: Vec<TickFailure>,
}

/// One tick that could not be published.
#[derive(Debug)]
pub struct TickFailure {
    pub tenant: TenantName,
    pub tick: Option<DateTime<Utc>>,
    pub error: SchedulerError,
}

impl PollReport {
    pub(crate) fn sort(&mut self) {
        let mut pairs: Vec<_> = self.published.drain(..).zip(self.jobs.drain(..)).collect();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        (self.published, self.jobs) = pairs.into_iter().unzip();
        self.busy.sort();
        self.already_published.sort();
        self.failed.sort_by(|a, b| a.tenant.cmp(&b.tenant));
    }

    /// Whether any tick failed.
    pub fn has_failures(&self) -> bool {
        !self.failed.is_empty()
    }
}

/// A tenant's next tick, for `scheduler next`.
#[derive(Debug, Clone)]
pub struct NextTick {
    pub tenant: TenantName,
    pub region: String,
    pub enabled: bool,
    /// Whether this scheduler publishes for the tenant's region.
    pub served: bool,
    pub next: Option<DateTime<Utc>>,
    pub schedule: String,
    pub description: String,
}
