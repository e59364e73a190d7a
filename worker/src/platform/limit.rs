//! A client-side rate limit per platform host, shared by every job of one worker process: at most
//! `requests_per_second` requests started in any window of a second (plus [`WINDOW_GUARD`]), and
//! at most `concurrency` in flight, whichever tenants they are for. A region's platform host is
//! shared by all its tenants, so this is where a fleet is held under the platform's published or
//! observed limit instead of learning it from 429s (which are still honoured: see `retry`).
//!
//! Built once at start-up ([`RateLimits::from_settings`]) and handed to every
//! [`super::PlatformClient`] with [`super::PlatformClient::with_rate_limits`]. The fleet-wide limit
//! is this per-worker limit times the number of workers serving the region; set it accordingly.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use url::Url;

/// Added to the one-second window: a request's time in flight varies by a few milliseconds, and a
/// platform counting by arrival must still never see more than the limit in a second.
pub const WINDOW_GUARD: Duration = Duration::from_millis(20);

pub use shared::settings::{HostLimit, RateLimitSettings};

/// The limiters of one worker, one per host, made on first use.
#[derive(Debug, Default)]
pub struct RateLimits {
    settings: RateLimitSettings,
    hosts: Mutex<HashMap<String, Arc<HostLimiter>>>,
}

impl RateLimits {
    pub fn from_settings(settings: &RateLimitSettings) -> Arc<Self> {
        Arc::new(Self {
            settings: settings.clone(),
            hosts: Mutex::default(),
        })
    }

    /// No limit anywhere.
    pub fn unlimited() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The limiter for `base`'s host, shared with every other client of that host; `None` when
    /// no limit applies to it.
    pub fn for_url(&self, base: &Url) -> Option<Arc<HostLimiter>> {
        let host = base.host_str()?.to_ascii_lowercase();
        let with_port = base.port().map(|p| format!("{host}:{p}"));
        let (key, limit) = with_port
            .as_ref()
            .and_then(|k| self.settings.hosts.get(k).map(|l| (k.clone(), *l)))
            .or_else(|| self.settings.hosts.get(&host).map(|l| (host.clone(), *l)))
            .or_else(|| {
                self.settings
                    .default
                    .map(|l| (with_port.clone().unwrap_or_else(|| host.clone()), l))
            })?;
        if limit.requests_per_second == 0 && limit.concurrency == 0 {
            return None;
        }
        let mut hosts = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        Some(
            hosts
                .entry(key)
                .or_insert_with(|| Arc::new(HostLimiter::new(limit)))
                .clone(),
        )
    }
}

/// The limit of one host: a sliding log of the last requests' start times, and a semaphore.
#[derive(Debug)]
pub struct HostLimiter {
    rate: usize,
    started: Mutex<VecDeque<Instant>>,
    permits: Option<Arc<Semaphore>>,
}

/// Held while a request is in flight (the host's concurrency slot, if it has a limit).
#[derive(Debug)]
pub struct HostPermit(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

impl HostLimiter {
    fn new(limit: HostLimit) -> Self {
        Self {
            rate: limit.requests_per_second as usize,
            started: Mutex::new(VecDeque::with_capacity(limit.requests_per_second as usize)),
            permits: (limit.concurrency > 0)
                .then(|| Arc::new(Semaphore::new(limit.concurrency as usize))),
        }
    }

    /// Waits for a slot of the host and for the rate to allow one more request, then counts it as
    /// started now.
    pub async fn acquire(&self) -> HostPermit {
        let permit = match &self.permits {
            // The semaphore is never closed.
            Some(s) => s.clone().acquire_owned().await.ok(),
            None => None,
        };
        if self.rate > 0 {
            let window = Duration::from_secs(1) + WINDOW_GUARD;
            loop {
                let wait = {
                    let mut started = self.started.lock().unwrap_or_else(PoisonError::into_inner);
                    let now = Instant::now();
                    while started
                        .front()
                        .is_some_and(|t| now.duration_since(*t) >= window)
                    {
                        started.pop_front();
                    }
                    if started.len() < self.rate {
                        started.push_back(now);
                        None
                    } else {
                        started.front().map(|t| *t + window - now)
                    }
                };
                match wait {
                    None => break,
                    Some(d) => tokio::time::sleep(d).await,
                }
            }
        }
        HostPermit(permit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn hosts_share_one_limiter_and_unlisted_hosts_take_the_default() {
        let mut settings = RateLimitSettings::default();
        settings.hosts.insert(
            "api.eu.example.com".into(),
            HostLimit {
                requests_per_second: 100,
                concurrency: 0,
            },
        );
        let limits = RateLimits::from_settings(&settings);
        let a = limits.for_url(&url("https://API.eu.example.com/eu/"));
        let b = limits.for_url(&url("https://api.eu.example.com/other/"));
        assert!(a.is_some() && b.is_some());
        assert!(a.zip(b).is_some_and(|(a, b)| Arc::ptr_eq(&a, &b)));
        assert!(
            limits
                .for_url(&url("https://api.us.example.com/"))
                .is_none()
        );
        settings.default = Some(HostLimit {
            requests_per_second: 5,
            concurrency: 2,
        });
        let limits = RateLimits::from_settings(&settings);
        assert!(limits.for_url(&url("http://127.0.0.1:8089/")).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn no_more_than_the_rate_start_within_a_window() {
        let limiter = HostLimiter::new(HostLimit {
            requests_per_second: 10,
            concurrency: 0,
        });
        let t0 = Instant::now();
        let mut starts = Vec::new();
        for _ in 0..35 {
            limiter.acquire().await;
            starts.push(Instant::now() - t0);
        }
        let window = Duration::from_secs(1) + WINDOW_GUARD;
        for (i, s) in starts.iter().enumerate() {
            let in_window = starts[i..].iter().filter(|t| **t - *s < window).count();
            assert!(
                in_window <= 10,
                "{in_window} starts within a window from {s:?}"
            );
        }
        // And it does not stall: 35 requests take three windows and a bit, not more.
        assert!(starts[34] < window * 4, "{:?}", starts[34]);
    }
}
