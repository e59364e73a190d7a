//! A tenant's schedule: a cron expression evaluated in a time zone (default daily 00:00 UTC).

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;

#[derive(Debug, Clone)]
pub struct Schedule {
    expr: String,
    cron: Cron,
    tz: Tz,
}

impl Schedule {
    pub const DEFAULT_EXPR: &'static str = "0 0 * * *";

    /// Parses a cron expression (5 fields, or 6/7 with seconds/year; `@daily` and friends) and an
    /// IANA time-zone name.
    pub fn parse(expr: &str, tz: &str) -> Result<Self, (&'static str, String)> {
        let cron: Cron = expr.parse().map_err(|e| {
            (
                "schedule",
                format!("{expr:?} is not a cron expression: {e}"),
            )
        })?;
        let tz: Tz = tz
            .parse()
            .map_err(|_| ("timezone", format!("{tz:?} is not an IANA time zone")))?;
        Ok(Self {
            expr: expr.to_owned(),
            cron,
            tz,
        })
    }

    pub fn expr(&self) -> &str {
        &self.expr
    }

    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// The first tick strictly after `after`, in UTC.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.tz);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// A description people read ("At 00:00").
    pub fn describe(&self) -> String {
        format!("{} ({})", self.cron.describe(), self.tz)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|d| d.with_timezone(&Utc))
            .unwrap_or_default()
    }

    #[test]
    fn the_default_runs_at_midnight_utc() {
        let s = Schedule::parse(Schedule::DEFAULT_EXPR, "UTC").ok();
        let next = s.and_then(|s| s.next_after(at("2026-03-04T10:00:00Z")));
        assert_eq!(next, Some(at("2026-03-05T00:00:00Z")));
    }

    #[test]
    fn a_time_zone_moves_the_tick() {
        let s = Schedule::parse("30 2 * * MON-FRI", "Europe/Berlin").ok();
        // Friday 2026-03-06 10:00 UTC -> next weekday 02:30 Berlin (UTC+1) is Monday 01:30 UTC.
        let next = s.and_then(|s| s.next_after(at("2026-03-06T10:00:00Z")));
        assert_eq!(next, Some(at("2026-03-09T01:30:00Z")));
    }

    #[test]
    fn bad_expressions_and_zones_name_their_field() {
        assert_eq!(
            Schedule::parse("61 * * * *", "UTC").err().map(|e| e.0),
            Some("schedule")
        );
        assert_eq!(
            Schedule::parse("@daily", "Mars/Base").err().map(|e| e.0),
            Some("timezone")
        );
    }
}
