//! The whole fake platform in memory: tenants by portal domain, the tids of accepted
//! `SetUser`/`SetUsers` requests with when their status turns final, and the current faults.
//!
//! One `std::sync::Mutex` guards it all ([`Shared`]); it is never held across an `.await`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::time::Instant;

use crate::command::Outcome;
use crate::faults::Faults;
use crate::tenant::Tenant;

/// The platform's tid status codes.
pub mod status {
    pub const UNKNOWN: u8 = 0;
    pub const PENDING: u8 = 1;
    pub const SUCCESS: u8 = 2;
    pub const FAILED: u8 = 3;
}

/// Portal domains compare case-insensitively, as host names do.
pub(crate) fn normalize_domain(domain: &str) -> String {
    domain.trim().to_ascii_lowercase()
}

/// An accepted request: its final outcome (already applied) and when it stops being pending.
#[derive(Debug)]
struct Task {
    domain: String,
    outcome: Outcome,
    final_at: Instant,
}

/// What `/status/<tid>` shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StatusView {
    pub tid: String,
    pub status: u8,
    pub message: String,
    pub errors: BTreeMap<String, String>,
}

/// The answer to a status lookup by one tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum StatusLookup {
    /// One of the tenant's own tids (or a tid nobody was given: status 0).
    Found(StatusView),
    /// Another tenant's tid.
    Foreign,
}

#[derive(Debug, Default)]
pub(crate) struct Store {
    tenants: HashMap<String, Tenant>,
    tasks: HashMap<String, Task>,
    pub faults: Faults,
    /// Authenticated requests by wall-clock second (Unix time), all tenants: what a platform's
    /// rate limit counts. The last hour is kept.
    pub per_second: BTreeMap<u64, u64>,
}

impl Store {
    /// Adds a tenant, or gives an existing one a new API key (its users stay).
    pub(crate) fn add_tenant(&mut self, domain: &str, api_key: &str) {
        let domain = normalize_domain(domain);
        match self.tenants.get_mut(&domain) {
            Some(tenant) => api_key.clone_into(&mut tenant.api_key),
            None => {
                self.tenants.insert(domain, Tenant::new(api_key));
            }
        }
    }

    pub(crate) fn tenant(&self, domain: &str) -> Option<&Tenant> {
        self.tenants.get(&normalize_domain(domain))
    }

    pub(crate) fn tenant_mut(&mut self, domain: &str) -> Option<&mut Tenant> {
        self.tenants.get_mut(&normalize_domain(domain))
    }

    pub(crate) fn tenants_mut(&mut self) -> impl Iterator<Item = &mut Tenant> {
        self.tenants.values_mut()
    }

    /// Records an accepted request's outcome under a new tid, pending until `now + delay`.
    pub(crate) fn submit(&mut self, domain: &str, outcome: Outcome, now: Instant) -> String {
        let tid = uuid::Uuid::new_v4().simple().to_string();
        let task = Task {
            domain: normalize_domain(domain),
            outcome,
            final_at: now + self.faults.status_delay(),
        };
        self.tasks.insert(tid.clone(), task);
        tid
    }

    /// Counts one request in the current wall-clock second; `false` when that goes beyond the
    /// configured `requests_per_second_limit` (the request is then answered 429).
    pub(crate) fn count_request(&mut self) -> bool {
        let second = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let n = self.per_second.entry(second).or_insert(0);
        *n += 1;
        let within = self.faults.requests_per_second_limit == 0
            || *n <= self.faults.requests_per_second_limit;
        if self.per_second.len() > 3600 {
            self.per_second.pop_first();
        }
        within
    }

    /// What `domain` sees for `tid` at `now`.
    pub(crate) fn status(&self, domain: &str, tid: &str, now: Instant) -> StatusLookup {
        let Some(task) = self.tasks.get(tid) else {
            return StatusLookup::Found(StatusView {
                tid: tid.to_owned(),
                status: status::UNKNOWN,
                message: "unknown tid".to_owned(),
                errors: BTreeMap::new(),
            });
        };
        if task.domain != normalize_domain(domain) {
            return StatusLookup::Foreign;
        }
        let view = if now < task.final_at {
            StatusView {
                tid: tid.to_owned(),
                status: status::PENDING,
                message: "pending".to_owned(),
                errors: BTreeMap::new(),
            }
        } else {
            StatusView {
                tid: tid.to_owned(),
                status: if task.outcome.success {
                    status::SUCCESS
                } else {
                    status::FAILED
                },
                message: task.outcome.message.clone(),
                errors: task.outcome.errors.clone(),
            }
        };
        StatusLookup::Found(view)
    }
}

/// The store behind its lock.
#[derive(Debug, Default)]
pub(crate) struct Shared(Mutex<Store>);

impl Shared {
    /// Locks the store. A panic while it was held cannot leave it half-updated in a way that
    /// matters to a fake, so a poisoned lock is simply taken over.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Store> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn store() -> Store {
        let mut store = Store::default();
        store.add_tenant("Acme.learning-admin.com", "k1");
        store.add_tenant("globex.learning-admin.com", "k2");
        store
    }

    #[test]
    fn domains_are_case_insensitive_and_re_adding_keeps_users() {
        let mut store = store();
        let acme = store.tenant_mut("ACME.learning-admin.com");
        assert!(acme.is_some());
        if let Some(acme) = acme {
            acme.insert_user(crate::model::FakeUser::new("ada"));
        }
        store.add_tenant("acme.learning-admin.com", "k3");
        let acme = store.tenant("acme.learning-admin.com");
        assert_eq!(
            acme.map(|t| (t.api_key.as_str(), t.users.len())),
            Some(("k3", 1))
        );
    }

    #[test]
    fn a_tid_stays_pending_for_the_status_delay_then_shows_its_outcome() {
        let mut store = store();
        store.faults.status_delay_ms = 500;
        let t0 = Instant::now();
        let tid = store.submit("acme.learning-admin.com", Outcome::success("done"), t0);
        let at = |ms| {
            store.status(
                "acme.learning-admin.com",
                &tid,
                t0 + Duration::from_millis(ms),
            )
        };
        assert!(matches!(
            at(0),
            StatusLookup::Found(StatusView {
                status: status::PENDING,
                ..
            })
        ));
        assert!(matches!(
            at(499),
            StatusLookup::Found(StatusView {
                status: status::PENDING,
                ..
            })
        ));
        assert!(matches!(
            at(500),
            StatusLookup::Found(StatusView {
                status: status::SUCCESS,
                ..
            })
        ));
    }

    #[test]
    fn a_failed_outcome_shows_status_3_with_its_errors() {
        let mut store = store();
        let t0 = Instant::now();
        let outcome = Outcome::failed("ada", &["bad".to_owned()]);
        let tid = store.submit("acme.learning-admin.com", outcome, t0);
        let StatusLookup::Found(view) = store.status("acme.learning-admin.com", &tid, t0) else {
            panic!("own tid not found")
        };
        assert_eq!(view.status, status::FAILED);
        assert_eq!(view.errors["ada"], "bad");
    }

    #[test]
    fn another_tenants_tid_is_foreign_and_an_unknown_tid_is_status_0() {
        let mut store = store();
        let t0 = Instant::now();
        let tid = store.submit("acme.learning-admin.com", Outcome::success("done"), t0);
        assert_eq!(
            store.status("globex.learning-admin.com", &tid, t0),
            StatusLookup::Foreign
        );
        assert!(matches!(
            store.status("globex.learning-admin.com", "nope", t0),
            StatusLookup::Found(StatusView {
                status: status::UNKNOWN,
                ..
            })
        ));
    }
}
