//! The scheduler's own view of the settings, validated once. A few bounds have no key in
//! `shared`'s settings yet (the claim TTL, the timeouts): they are fixed here, with defaults that
//! keep the claim longer than anything done while holding it.

use std::time::Duration;

use shared::Region;
use shared::settings::Settings;

use crate::error::SchedulerError;

#[derive(Debug, Clone)]
pub struct Options {
    /// The jobs' exchange; queues are `<exchange>.<region>`.
    pub exchange: String,
    pub delivery_limit: u32,
    pub retry_delays: Vec<Duration>,
    /// Regions served; empty means every region of the registry.
    pub regions: Vec<String>,
    /// A tick at most this old is still published; older ones never are.
    pub catch_up_window: Duration,
    /// How often the registry file's modification time is checked.
    pub reload_interval: Duration,
    /// Every Redis key starts with it (`<prefix>:sched:<tenant>:…`).
    pub key_prefix: String,
    /// How long a replica's claim on a tick lives if it never commits (it died).
    pub claim_ttl: Duration,
    /// Bound on one publish, confirm included.
    pub publish_timeout: Duration,
    /// Bound on one attempt to connect to the broker (connection, channel, topology).
    pub connect_timeout: Duration,
    /// Bound on one Redis command (connecting included).
    pub redis_timeout: Duration,
    /// The loop polls at least this often, whatever the schedules say.
    pub max_poll_interval: Duration,
    /// Ticks published at once within one poll.
    pub publish_concurrency: usize,
}

impl Options {
    pub const DEFAULT_CLAIM_TTL: Duration = Duration::from_secs(30);
    pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_secs(3);
    pub const DEFAULT_MAX_POLL_INTERVAL: Duration = Duration::from_secs(30);
    pub const DEFAULT_PUBLISH_CONCURRENCY: usize = 16;

    /// Takes what the scheduler uses from the settings and validates it.
    pub fn from_settings(settings: &Settings) -> Result<Self, SchedulerError> {
        let options = Self {
            exchange: settings.amqp.exchange.clone(),
            delivery_limit: settings.amqp.delivery_limit,
            retry_delays: settings.amqp.retry_delays.clone(),
            regions: settings.scheduler.regions.clone(),
            catch_up_window: settings.scheduler.catch_up_window,
            reload_interval: settings.scheduler.reload_interval,
            key_prefix: settings.redis.key_prefix.clone(),
            claim_ttl: Self::DEFAULT_CLAIM_TTL,
            publish_timeout: Self::DEFAULT_PUBLISH_TIMEOUT,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            redis_timeout: Self::DEFAULT_REDIS_TIMEOUT,
            max_poll_interval: Self::DEFAULT_MAX_POLL_INTERVAL,
            publish_concurrency: Self::DEFAULT_PUBLISH_CONCURRENCY,
        };
        options.validate()?;
        Ok(options)
    }

    pub fn validate(&self) -> Result<(), SchedulerError> {
        let bad = |m: String| Err(SchedulerError::Config(m));
        for region in &self.regions {
            if let Err(e) = Region::parse(region) {
                return bad(format!("scheduler.regions: {e}"));
            }
        }
        if self.catch_up_window < Duration::from_secs(1) {
            return bad("scheduler.catch_up_window must be at least 1s".into());
        }
        if self.catch_up_window > Duration::from_secs(366 * 24 * 3600) {
            return bad("scheduler.catch_up_window must be at most a year".into());
        }
        if self.reload_interval < Duration::from_secs(1) {
            return bad("scheduler.reload_interval must be at least 1s".into());
        }
        if self.key_prefix.is_empty() {
            return bad("redis.key_prefix must not be empty".into());
        }
        // Holding a claim: re-read `last`, publish, commit. It must not expire meanwhile, or a
        // second replica could publish the same tick.
        let held = self
            .publish_timeout
            .saturating_add(self.redis_timeout.saturating_mul(2));
        if self.claim_ttl <= held {
            return bad(format!(
                "the claim TTL ({:?}) must exceed the publish timeout plus two Redis round trips ({held:?})",
                self.claim_ttl
            ));
        }
        if self.publish_concurrency == 0 {
            return bad("publish concurrency must be at least 1".into());
        }
        if self.max_poll_interval.is_zero() {
            return bad("the poll interval must be above 0".into());
        }
        Ok(())
    }

    /// Whether this scheduler publishes for `region`.
    pub fn serves(&self, region: &Region) -> bool {
        self.regions.is_empty() || self.regions.iter().any(|r| r == region.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> Options {
        match Options::from_settings(&Settings::default()) {
            Ok(o) => o,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn the_defaults_are_valid_and_serve_every_region() {
        let o = options();
        assert_eq!(o.exchange, "user-import");
        assert!(o.serves(&Region::parse("eu").unwrap_or_else(|e| panic!("{e}"))));
    }

    #[test]
    fn a_claim_shorter_than_a_publish_is_refused() {
        let mut o = options();
        o.claim_ttl = o.publish_timeout;
        assert!(matches!(o.validate(), Err(SchedulerError::Config(_))));
    }

    #[test]
    fn a_bad_region_is_refused_and_listed_regions_limit_what_is_served() {
        let mut o = options();
        o.regions = vec!["EU".into()];
        assert!(o.validate().is_err());
        o.regions = vec!["eu".into()];
        assert!(o.validate().is_ok());
        let us = Region::parse("us").unwrap_or_else(|e| panic!("{e}"));
        assert!(!o.serves(&us));
    }
}
