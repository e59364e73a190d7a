//! Until when a tenant lock is known to be ours, by this process's monotonic clock (which keeps
//! running while the process is stopped). The lock's renewer (in the fleet) extends it; the job
//! checks it locally, without a round trip, before every side effect: a worker frozen past the
//! lock's TTL (SIGSTOP, a paused VM) resumes with its lease run out and sends nothing more, even
//! before the renewer has noticed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Cheap to clone and to check; clones share the deadline.
#[derive(Debug, Clone)]
pub struct Lease {
    until: Arc<Mutex<tokio::time::Instant>>,
    ttl: Duration,
}

impl Lease {
    /// A lease for a lock whose SET (or renewal) was sent at `sent` with `ttl`.
    pub fn new(sent: tokio::time::Instant, ttl: Duration) -> Self {
        Self {
            until: Arc::new(Mutex::new(sent + Self::span(ttl))),
            ttl,
        }
    }

    /// Four fifths of the TTL: the lock may expire in Redis no sooner than a TTL after the
    /// command was sent; the rest is room for a write sent just before the end to land in time.
    fn span(ttl: Duration) -> Duration {
        ttl - ttl / 5
    }

    /// The lock's time to live.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A renewal sent at `sent` succeeded.
    pub fn renewed(&self, sent: tokio::time::Instant) {
        let mut until = self.until.lock().unwrap_or_else(|p| p.into_inner());
        *until = (*until).max(sent + Self::span(self.ttl));
    }

    /// Whether the lock is still known to be ours now.
    pub fn valid(&self) -> bool {
        tokio::time::Instant::now() < *self.until.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::Lease;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_lease_runs_out_before_the_lock_can_expire_and_a_renewal_extends_it() {
        let ttl = Duration::from_secs(10);
        let lease = Lease::new(tokio::time::Instant::now(), ttl);
        assert!(lease.valid());
        tokio::time::advance(Duration::from_secs(7)).await;
        assert!(lease.valid(), "7 s into a 10 s lock");
        lease.renewed(tokio::time::Instant::now());
        tokio::time::advance(Duration::from_secs(7)).await;
        assert!(lease.valid(), "renewed at 7 s: good until 15 s");
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(
            !lease.valid(),
            "past four fifths of the TTL after the last renewal"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_older_renewal_never_shortens_a_lease() {
        let ttl = Duration::from_secs(10);
        let start = tokio::time::Instant::now();
        let lease = Lease::new(start, ttl);
        tokio::time::advance(Duration::from_secs(5)).await;
        lease.renewed(tokio::time::Instant::now());
        lease.renewed(start);
        tokio::time::advance(Duration::from_secs(7)).await;
        assert!(lease.valid(), "at 12 s: good until 13 s");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!lease.valid(), "at 13 s");
    }
}
