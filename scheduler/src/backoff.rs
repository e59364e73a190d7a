//! Exponential backoff with jitter, for reconnecting and for retrying a poll that failed.

use std::time::Duration;

/// Delays that double from `base` up to `max`, each with up to 25% taken off at random so
/// replicas that failed together do not retry together.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            failures: 0,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let factor = 2u32.saturating_pow(self.failures.min(20));
        self.failures = self.failures.saturating_add(1);
        let full = self.base.saturating_mul(factor).min(self.max);
        full.mul_f64(1.0 - rand::random::<f64>() * 0.25)
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_bound_and_reset() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        let bounds = [1, 2, 4, 8, 10, 10, 10, 10];
        for (d, hi) in delays.iter().zip(bounds) {
            let hi = Duration::from_secs(hi);
            assert!(*d <= hi && *d >= hi.mul_f64(0.75), "{d:?} vs {hi:?}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
    }
}
