//! Which tick of a tenant's schedule is due: pure functions of the schedule, the time, the
//! catch-up window and the last tick published. No clock, no I/O.
//!
//! The tick due at `now` is the latest `T` of the schedule with
//! `now - catch_up_window < T <= now` and `T > last_published`. Several ticks missed while no
//! scheduler ran therefore coalesce into the latest one, and nothing older than the window is
//! ever published.

use std::time::Duration;

use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use shared::registry::Schedule;

/// Added to the time until the next tick before sleeping, so the poll that wakes for a tick
/// finds the clock past it.
const NUDGE: Duration = Duration::from_millis(10);

/// The tick due at `now`, if any (see the module docs).
pub fn due_tick(
    schedule: &Schedule,
    now: DateTime<Utc>,
    catch_up_window: Duration,
    last_published: Option<DateTime<Utc>>,
) -> Option<DateTime<Utc>> {
    let window_start = window_start(now, catch_up_window);
    let after = match last_published {
        Some(last) if last > window_start => last,
        _ => window_start,
    };
    latest_tick_in(schedule, after, now)
}

/// The start (exclusive) of the window that ends at `now`.
pub fn window_start(now: DateTime<Utc>, window: Duration) -> DateTime<Utc> {
    let window = TimeDelta::from_std(window).unwrap_or(TimeDelta::MAX);
    now.checked_sub_signed(window)
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// The latest tick `T` with `after < T <= until`.
///
/// The schedule only answers "next tick after", so this searches backwards from `until` in
/// doubling steps until a step holds a tick, then walks forward through that step: a few calls
/// whatever the window, instead of one per tick of the window.
pub fn latest_tick_in(
    schedule: &Schedule,
    after: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    if after >= until {
        return None;
    }
    let mut step = TimeDelta::seconds(1);
    loop {
        let start = until
            .checked_sub_signed(step)
            .filter(|s| *s > after)
            .unwrap_or(after);
        if let Some(first) = schedule.next_after(start).filter(|t| *t <= until) {
            let mut latest = first;
            while let Some(next) = schedule.next_after(latest).filter(|t| *t <= until) {
                latest = next;
            }
            return Some(latest);
        }
        if start == after {
            return None;
        }
        step = step.checked_mul(2).unwrap_or(TimeDelta::MAX);
    }
}

/// The tenant's next tick strictly after `now`.
pub fn next_tick(schedule: &Schedule, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    schedule.next_after(now)
}

/// How long the loop sleeps: until the earliest next tick (plus a nudge), at most `max`.
pub fn poll_delay(
    earliest_next: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    max: Duration,
) -> Duration {
    match earliest_next {
        Some(next) => (next - now)
            .to_std()
            .unwrap_or(Duration::ZERO)
            .saturating_add(NUDGE)
            .min(max),
        None => max,
    }
}

/// The tick of `scheduler once`: now, to the second.
pub fn round_tick(now: DateTime<Utc>) -> DateTime<Utc> {
    now.trunc_subsecs(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|d| d.with_timezone(&Utc))
            .unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn schedule(expr: &str, tz: &str) -> Schedule {
        Schedule::parse(expr, tz).unwrap_or_else(|e| panic!("{expr} {tz}: {e:?}"))
    }

    const HOUR: Duration = Duration::from_secs(3600);
    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn the_tick_at_now_is_due_and_the_next_second_is_not() {
        let s = schedule("0 0 * * *", "UTC");
        let midnight = at("2026-03-05T00:00:00Z");
        assert_eq!(due_tick(&s, midnight, HOUR, None), Some(midnight));
        let before = at("2026-03-04T23:59:59Z");
        assert_eq!(due_tick(&s, before, HOUR, None), None);
    }

    #[test]
    fn several_missed_ticks_coalesce_into_the_latest() {
        let s = schedule("* * * * *", "UTC");
        let now = at("2026-03-05T10:00:30Z");
        let last = at("2026-03-05T09:57:00Z");
        assert_eq!(
            due_tick(&s, now, HOUR, Some(last)),
            Some(at("2026-03-05T10:00:00Z"))
        );
    }

    #[test]
    fn a_tick_already_published_is_not_due_again() {
        let s = schedule("* * * * *", "UTC");
        let tick = at("2026-03-05T10:00:00Z");
        assert_eq!(due_tick(&s, tick, HOUR, Some(tick)), None);
        assert_eq!(
            due_tick(&s, at("2026-03-05T10:00:59.999Z"), HOUR, Some(tick)),
            None
        );
        // A later `once` round counts as published too.
        let later = at("2026-03-05T10:00:42Z");
        assert_eq!(
            due_tick(&s, at("2026-03-05T10:00:50Z"), HOUR, Some(later)),
            None
        );
        assert_eq!(
            due_tick(&s, at("2026-03-05T10:01:00Z"), HOUR, Some(later)),
            Some(at("2026-03-05T10:01:00Z"))
        );
    }

    #[test]
    fn nothing_older_than_the_window_is_published() {
        let s = schedule("0 * * * *", "UTC");
        let now = at("2026-03-05T10:07:00Z");
        assert_eq!(due_tick(&s, now, 5 * MINUTE, None), None);
        assert_eq!(
            due_tick(&s, now, 10 * MINUTE, None),
            Some(at("2026-03-05T10:00:00Z"))
        );
        // The window's start is exclusive.
        assert_eq!(due_tick(&s, now, 7 * MINUTE, None), None);
        // A last tick before the window changes nothing: the window still bounds the search.
        assert_eq!(
            due_tick(&s, now, 5 * MINUTE, Some(at("2026-03-05T08:00:00Z"))),
            None
        );
    }

    #[test]
    fn a_long_window_with_a_dense_schedule_finds_the_latest_tick() {
        let s = schedule("*/5 * * * * *", "UTC");
        let now = at("2026-03-05T10:00:07.250Z");
        assert_eq!(
            due_tick(&s, now, Duration::from_secs(7 * 24 * 3600), None),
            Some(at("2026-03-05T10:00:05Z"))
        );
    }

    #[test]
    fn an_irregular_schedule_finds_its_latest_tick_far_back() {
        // Every minute from 09:00 to 09:59, then nothing until the next morning.
        let s = schedule("* 9 * * *", "UTC");
        let now = at("2026-03-05T13:30:00Z");
        assert_eq!(
            due_tick(&s, now, 6 * HOUR, None),
            Some(at("2026-03-05T09:59:00Z"))
        );
    }

    #[test]
    fn ticks_follow_the_tenants_time_zone_and_its_summer_time() {
        let s = schedule("0 0 * * *", "America/New_York");
        // Winter: midnight in New York is 05:00 UTC.
        assert_eq!(
            due_tick(&s, at("2026-01-15T06:00:00Z"), 6 * HOUR, None),
            Some(at("2026-01-15T05:00:00Z"))
        );
        // Summer: 04:00 UTC.
        assert_eq!(
            due_tick(&s, at("2026-07-15T06:00:00Z"), 6 * HOUR, None),
            Some(at("2026-07-15T04:00:00Z"))
        );
        // Midnight UTC is not midnight in New York.
        assert_eq!(due_tick(&s, at("2026-07-15T00:30:00Z"), HOUR, None), None);

        let berlin = schedule("30 2 * * MON-FRI", "Europe/Berlin");
        // Monday 2026-03-09 02:30 in Berlin (UTC+1) is 01:30 UTC.
        assert_eq!(
            due_tick(&berlin, at("2026-03-09T02:00:00Z"), HOUR, None),
            Some(at("2026-03-09T01:30:00Z"))
        );
        // Saturday has no tick.
        assert_eq!(
            due_tick(&berlin, at("2026-03-07T02:00:00Z"), HOUR, None),
            None
        );
    }

    #[test]
    fn the_loop_sleeps_until_the_next_tick_but_never_longer_than_the_bound() {
        let now = at("2026-03-05T10:00:00Z");
        let max = Duration::from_secs(30);
        assert_eq!(
            poll_delay(Some(at("2026-03-05T10:00:05Z")), now, max),
            Duration::from_secs(5) + NUDGE
        );
        assert_eq!(poll_delay(Some(at("2026-03-05T11:00:00Z")), now, max), max);
        assert_eq!(poll_delay(None, now, max), max);
        assert_eq!(
            poll_delay(Some(at("2026-03-05T09:59:00Z")), now, max),
            NUDGE
        );
    }

    #[test]
    fn the_next_tick_is_strictly_after_now() {
        let s = schedule("0 0 * * *", "UTC");
        assert_eq!(
            next_tick(&s, at("2026-03-05T00:00:00Z")),
            Some(at("2026-03-06T00:00:00Z"))
        );
    }

    #[test]
    fn a_once_round_is_now_to_the_second() {
        assert_eq!(
            round_tick(at("2026-03-05T10:00:07.999Z")),
            at("2026-03-05T10:00:07Z")
        );
    }
}
