//! The `schedule` step: the tenant's next ticks, in its time zone and in UTC, from the same
//! [`shared::registry::Schedule`] the scheduler evaluates.

use chrono::{DateTime, Utc};
use serde_json::json;
use shared::registry::Tenant;

use super::Step;

/// How many ticks are shown.
pub const NEXT_TICKS: usize = 3;

/// The next [`NEXT_TICKS`] ticks after `now`.
pub fn check(tenant: &Tenant, now: DateTime<Utc>) -> Step {
    let schedule = &tenant.schedule;
    let tz = schedule.timezone();
    let mut ticks = Vec::new();
    let mut after = now;
    while ticks.len() < NEXT_TICKS {
        let Some(next) = schedule.next_after(after) else {
            break;
        };
        ticks.push(next);
        after = next;
    }
    if ticks.is_empty() {
        return Step::fail(
            "schedule",
            format!("{:?} in {tz} has no future tick", schedule.expr()),
            "fix schedule / timezone in the registry (a cron expression that can fire)",
        );
    }
    let local: Vec<String> = ticks
        .iter()
        .map(|t| {
            t.with_timezone(&tz)
                .format("%a %Y-%m-%d %H:%M %Z")
                .to_string()
        })
        .collect();
    let data = json!({
        "expr": schedule.expr(),
        "timezone": tz.name(),
        "next": ticks.iter().zip(&local).map(|(utc, local)| json!({
            "utc": utc.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "local": local,
        })).collect::<Vec<_>>(),
    });
    let utc_note = if tz.name() == "UTC" {
        String::new()
    } else {
        format!(" (the first is {} UTC)", ticks[0].format("%Y-%m-%d %H:%M"))
    };
    Step::ok(
        "schedule",
        format!(
            "{:?}, {}: next {}{utc_note}",
            schedule.expr(),
            schedule.describe(),
            local.join(", "),
        ),
    )
    .with_data(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::registry::Schedule;

    #[test]
    fn the_next_ticks_are_shown_in_the_tenants_time_zone() {
        let text = r#"
[[tenant]]
name = "acme"
region = "eu"
portal_domain = "acme.learning-admin.com"
api_base_url = "https://api.learning-admin.com/eu"
ftps_host = "ftp.example.com"
admin = { username = "admin", email = "admin@acme.example" }
schedule = "30 2 * * MON-FRI"
timezone = "Europe/Berlin"
"#;
        let registry = shared::registry::Registry::parse(std::path::Path::new("t.toml"), text)
            .unwrap_or_else(|e| panic!("{e}"));
        let tenant = registry.get("acme").unwrap_or_else(|| panic!("acme"));
        let now = DateTime::parse_from_rfc3339("2026-03-06T10:00:00Z")
            .map(|d| d.with_timezone(&Utc))
            .unwrap_or_else(|e| panic!("{e}"));
        let step = check(tenant, now);
        assert_eq!(step.verdict, super::super::Verdict::Ok, "{step:?}");
        assert_eq!(step.data["next"][0]["utc"], "2026-03-09T01:30:00Z");
        assert_eq!(step.data["next"][0]["local"], "Mon 2026-03-09 02:30 CET");
        assert_eq!(step.data["next"][2]["local"], "Wed 2026-03-11 02:30 CET");
        assert_eq!(step.data["timezone"], "Europe/Berlin");
        let _ = Schedule::DEFAULT_EXPR;
    }
}
