//! Fault injection: the knobs ([`Faults`]) and the per-request decision drawn from them.
//!
//! Every authenticated API request first waits `latency_ms`, then one fault at most is drawn, in
//! this order, each with its own probability: drop the connection, hang, answer 429, answer 5xx.

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// How long a request picked for a timeout hangs before it is answered: longer than any sane
/// client timeout.
pub const TIMEOUT_HANG: Duration = Duration::from_secs(300);

/// The faults the fake injects into API calls (never into `/_fake/*`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Added to every API call.
    pub latency_ms: u64,
    /// 0.0..=1.0: the share of calls answered 500, 502 or 503 (picked at random).
    pub error_5xx_rate: f64,
    /// 0.0..=1.0: the share of calls answered 429 with `Retry-After`.
    pub rate_429: f64,
    /// The `Retry-After` value in seconds (default 1).
    pub retry_after_secs: u64,
    /// How long a `SetUser`/`SetUsers` tid stays pending (status 1).
    pub status_delay_ms: u64,
    /// 0.0..=1.0: the share of calls that hang for [`TIMEOUT_HANG`] before being processed.
    pub timeout_rate: f64,
    /// 0.0..=1.0: the share of calls whose TCP connection is closed without an answer.
    pub drop_rate: f64,
    /// The platform's own rate limit (0: none): a request beyond this many in one wall-clock
    /// second, all tenants together, is answered 429 with `Retry-After: 1`.
    pub requests_per_second_limit: u64,
    /// A write whose status is final at once (`status_delay_ms = 0`) says so in its `202` body
    /// (`status` 2 or 3 with `errors`), as a platform that completes quick writes inline would:
    /// a client that reads the body needs no poll.
    pub final_status_in_answer: bool,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            error_5xx_rate: 0.0,
            rate_429: 0.0,
            retry_after_secs: 1,
            status_delay_ms: 0,
            timeout_rate: 0.0,
            drop_rate: 0.0,
            requests_per_second_limit: 0,
            final_status_in_answer: false,
        }
    }
}

impl Faults {
    /// Checks that every rate is a number in 0.0..=1.0.
    pub fn validate(&self) -> Result<(), String> {
        let rates = [
            ("error_5xx_rate", self.error_5xx_rate),
            ("rate_429", self.rate_429),
            ("timeout_rate", self.timeout_rate),
            ("drop_rate", self.drop_rate),
        ];
        for (name, rate) in rates {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be within 0.0..=1.0, got {rate}"));
            }
        }
        Ok(())
    }

    /// The same faults with every rate forced into 0.0..=1.0 (NaN counts as 0).
    pub fn clamped(mut self) -> Self {
        for rate in [
            &mut self.error_5xx_rate,
            &mut self.rate_429,
            &mut self.timeout_rate,
            &mut self.drop_rate,
        ] {
            *rate = if rate.is_nan() {
                0.0
            } else {
                rate.clamp(0.0, 1.0)
            };
        }
        self
    }

    pub fn latency(&self) -> Duration {
        Duration::from_millis(self.latency_ms)
    }

    pub fn status_delay(&self) -> Duration {
        Duration::from_millis(self.status_delay_ms)
    }

    /// Draws the fault (if any) for one request.
    pub(crate) fn draw(&self, rng: &mut impl Rng) -> Fault {
        let mut hit = |rate: f64| rate > 0.0 && rng.random::<f64>() < rate;
        if hit(self.drop_rate) {
            Fault::Drop
        } else if hit(self.timeout_rate) {
            Fault::Hang
        } else if hit(self.rate_429) {
            Fault::RateLimited {
                retry_after_secs: self.retry_after_secs,
            }
        } else if hit(self.error_5xx_rate) {
            let status = [500, 502, 503][rng.random_range(0..3)];
            Fault::ServerError { status }
        } else {
            Fault::None
        }
    }
}

/// What happens to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    None,
    Drop,
    Hang,
    RateLimited { retry_after_secs: u64 },
    ServerError { status: u16 },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_faults_by_default_and_retry_after_defaults_to_one_second() {
        let faults = Faults::default();
        assert_eq!(faults.retry_after_secs, 1);
        let mut rng = rand::rng();
        assert!((0..1000).all(|_| faults.draw(&mut rng) == Fault::None));
    }

    #[test]
    fn a_rate_of_one_always_fires_and_drop_wins_over_the_rest() {
        let mut rng = rand::rng();
        let all = Faults {
            drop_rate: 1.0,
            timeout_rate: 1.0,
            rate_429: 1.0,
            error_5xx_rate: 1.0,
            ..Faults::default()
        };
        assert_eq!(all.draw(&mut rng), Fault::Drop);
        let limited = Faults {
            rate_429: 1.0,
            retry_after_secs: 7,
            ..Faults::default()
        };
        assert_eq!(
            limited.draw(&mut rng),
            Fault::RateLimited {
                retry_after_secs: 7
            }
        );
        let errors = Faults {
            error_5xx_rate: 1.0,
            ..Faults::default()
        };
        for _ in 0..100 {
            assert!(matches!(
                errors.draw(&mut rng),
                Fault::ServerError {
                    status: 500 | 502 | 503
                }
            ));
        }
    }

    #[test]
    fn rates_outside_zero_to_one_are_refused_or_clamped() {
        let bad = Faults {
            rate_429: 1.5,
            drop_rate: f64::NAN,
            ..Faults::default()
        };
        assert!(bad.validate().is_err());
        let clamped = bad.clamped();
        assert_eq!((clamped.rate_429, clamped.drop_rate), (1.0, 0.0));
        assert!(clamped.validate().is_ok());
    }

    #[test]
    fn partial_json_keeps_the_defaults_and_unknown_keys_are_refused() {
        let parsed: Result<Faults, _> = serde_json::from_str(r#"{"rate_429": 0.5}"#);
        assert!(
            matches!(
                parsed,
                Ok(Faults {
                    rate_429: 0.5,
                    retry_after_secs: 1,
                    ..
                })
            ),
            "{parsed:?}"
        );
        let unknown: Result<Faults, _> = serde_json::from_str(r#"{"rate429": 0.5}"#);
        assert!(unknown.is_err());
    }
}
