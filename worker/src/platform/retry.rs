//! When to try an API call again and how long to wait: exponential backoff with jitter for 5xx,
//! timeouts and broken connections; the server's `Retry-After` (capped) for 429.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base: Duration,
    pub max: Duration,
    pub retry_after_max: Duration,
}

impl RetryPolicy {
    /// "Full jitter" backoff: a random delay in [d/2, d] with d = min(max, base·2^(attempt-1)).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        let d = exp.min(self.max);
        let half = d / 2;
        let jitter = rand::rng().random_range(0..=half.as_millis() as u64);
        half + Duration::from_millis(jitter)
    }

    /// The wait a 429 asks for: `Retry-After` seconds (or an HTTP date, not used by the
    /// platform: then the backoff), capped, plus up to 10% jitter so a fleet does not come back
    /// in lockstep.
    pub fn after_429(&self, retry_after: Option<&str>, attempt: u32) -> Duration {
        let asked = retry_after
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        match asked {
            Some(d) => {
                let d = d.min(self.retry_after_max);
                let jitter = rand::rng().random_range(0..=(d.as_millis() as u64 / 10));
                d + Duration::from_millis(jitter)
            }
            None => self.backoff(attempt),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(100),
            max: Duration::from_secs(2),
            retry_after_max: Duration::from_secs(60),
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = policy();
        for _ in 0..50 {
            let b1 = p.backoff(1);
            assert!(b1 >= Duration::from_millis(50) && b1 <= Duration::from_millis(100));
            let b4 = p.backoff(4);
            assert!(b4 >= Duration::from_millis(400) && b4 <= Duration::from_millis(800));
            assert!(p.backoff(30) <= Duration::from_secs(2));
        }
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let p = policy();
        let d = p.after_429(Some("3"), 1);
        assert!(d >= Duration::from_secs(3) && d <= Duration::from_millis(3300));
        assert!(p.after_429(Some("86400"), 1) <= Duration::from_secs(66));
        assert!(p.after_429(Some("soon"), 1) <= Duration::from_millis(100));
    }
}
