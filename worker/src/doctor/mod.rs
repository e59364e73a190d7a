//! `worker doctor --tenant NAME` (or `--all`): the onboarding checklist of docs/operations.md, run
//! against a tenant's real account, platform and mail route, without changing anything on them —
//! except one probe file written and removed in each of the account's folders. Each step gets a
//! [`Verdict`], a line of detail and, when it is not ok, a hint saying what to do; a step that
//! needs an earlier one that failed is [`Verdict::Skipped`], naming it.
//!
//! The check groups, one file each: [`account`] (connect, TLS or host key, login, folders, the
//! file), [`platform`] (the API and the admin), [`mail`] (SMTP, over the small dialogue of
//! [`smtp`]) and [`schedule`] (the next ticks). A driver, like `once.rs`: it may use the clients
//! (account/, platform/, email.rs), never the pipeline.

pub mod account;
pub mod mail;
pub mod platform;
pub mod schedule;
pub mod smtp;

use serde::Serialize;
use serde_json::Value;
use shared::ApiKey;
use shared::registry::{Tenant, Transport};

use crate::deps::Deps;

/// What a step found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    /// Worth a look, but the tenant would run (no file uploaded yet, for example).
    Warn,
    /// The tenant would not run (or not fully) until this is fixed.
    Fail,
    /// Not checked: an earlier step it needs did not pass.
    Skipped,
}

/// One step of the checklist. `step` is its stable name (`connect`, `tls`, …).
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub step: &'static str,
    pub verdict: Verdict,
    pub detail: String,
    /// What to do about a step that is not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// What the step read, for machines (fields, sizes, times).
    #[serde(skip_serializing_if = "Value::is_null")]
    pub data: Value,
}

impl Step {
    pub fn ok(step: &'static str, detail: impl Into<String>) -> Self {
        Self::new(step, Verdict::Ok, detail.into(), None)
    }

    pub fn warn(step: &'static str, detail: impl Into<String>, hint: impl Into<String>) -> Self {
        Self::new(step, Verdict::Warn, detail.into(), Some(hint.into()))
    }

    pub fn fail(step: &'static str, detail: impl Into<String>, hint: impl Into<String>) -> Self {
        Self::new(step, Verdict::Fail, detail.into(), Some(hint.into()))
    }

    /// Not run because `needs` (a step's name) did not pass.
    pub fn skipped(step: &'static str, needs: &str) -> Self {
        Self::new(
            step,
            Verdict::Skipped,
            format!("skipped: needs {needs}"),
            None,
        )
    }

    pub fn with_data(mut self, data: Value) -> Self {
        self.data = data;
        self
    }

    fn new(step: &'static str, verdict: Verdict, detail: String, hint: Option<String>) -> Self {
        Self {
            step,
            verdict,
            detail,
            hint,
            data: Value::Null,
        }
    }

    pub fn passed(&self) -> bool {
        matches!(self.verdict, Verdict::Ok | Verdict::Warn)
    }
}

/// The checklist of one tenant.
#[derive(Debug, Clone, Serialize)]
pub struct TenantReport {
    pub tenant: String,
    /// No step failed or was skipped: the tenant would run.
    pub would_run: bool,
    pub steps: Vec<Step>,
}

impl TenantReport {
    fn new(tenant: &str, steps: Vec<Step>) -> Self {
        Self {
            tenant: tenant.to_owned(),
            would_run: steps.iter().all(Step::passed),
            steps,
        }
    }

    /// The step of that name, if it was reported.
    pub fn step(&self, name: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.step == name)
    }
}

/// The reports of `--all`, as one JSON document.
#[derive(Debug, Serialize)]
pub struct AllReports<'a> {
    /// Every tenant would run.
    pub would_run: bool,
    pub tenants: &'a [TenantReport],
}

/// The doctor's options beyond which tenants.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Also send the admin one test email (otherwise the SMTP dialogue stops before `DATA`).
    pub send_test_email: bool,
}

/// The names of the steps in order; a tenant's report has each of them once (an SFTP tenant's
/// `tls` step is `host_key`).
pub const STEPS: [&str; 10] = [
    "registry", "connect", "tls", "login", "folders", "file", "api", "admin", "smtp", "schedule",
];

/// Runs the checklist for one tenant of the registry.
pub async fn check_tenant(deps: &Deps, name: &str, opts: Options) -> TenantReport {
    let registry = deps.registry();
    let Some(tenant) = registry.get(name) else {
        let mut steps = vec![Step::fail(
            "registry",
            format!("no tenant {name:?} in {}", registry.path().display()),
            "add its [[tenant]] entry to the registry (docs/operations.md), or check the name",
        )];
        steps.extend(STEPS[1..].iter().map(|s| Step::skipped(s, "registry")));
        return TenantReport::new(name, steps);
    };
    let (registry_step, key) = registry_step(deps, tenant);
    let mut steps = vec![registry_step];
    steps.extend(account::check(deps, tenant, key.as_ref()).await);
    steps.extend(platform::check(deps, tenant, key.as_ref()).await);
    steps.push(mail::check(deps, tenant, opts).await);
    steps.push(schedule::check(tenant, chrono::Utc::now()));
    TenantReport::new(name, steps)
}

/// Every enabled tenant of the registry, four at a time, in the registry's order.
pub async fn check_all(deps: &Deps, opts: Options) -> Vec<TenantReport> {
    use futures::StreamExt;
    let registry = deps.registry();
    let names: Vec<String> = registry
        .tenants()
        .filter(|t| t.enabled)
        .map(|t| t.name.to_string())
        .collect();
    futures::stream::iter(names)
        .map(|name| async move { check_tenant(deps, &name, opts).await })
        .buffered(4)
        .collect()
        .await
}

/// The tenant is in the registry; is it enabled, and is its key where the worker looks?
fn registry_step(deps: &Deps, tenant: &Tenant) -> (Step, Option<ApiKey>) {
    let transport = match tenant.transport {
        Transport::Ftps => format!("ftps {}:{}", tenant.ftps_host, tenant.ftps_port),
        Transport::Sftp => format!("sftp {}:{}", tenant.ftps_host, tenant.sftp_port),
    };
    let data = serde_json::json!({
        "region": tenant.region.to_string(),
        "transport": transport,
        "portal_domain": tenant.portal_domain.to_string(),
        "enabled": tenant.enabled,
    });
    let key = match deps.secrets.api_key(&tenant.name) {
        Ok(k) => k,
        Err(e) => {
            let step = Step::fail(
                "registry",
                format!("{e}"),
                "put the tenant's key in the Secret (docs/operations.md, \"Add a tenant\")",
            );
            return (step.with_data(data), None);
        }
    };
    let step = if tenant.enabled {
        Step::ok(
            "registry",
            format!("enabled, region {}, {transport}; key found", tenant.region),
        )
    } else {
        Step::fail(
            "registry",
            format!("disabled (enabled = false), {transport}; key found"),
            "the scheduler publishes no tick for it: set enabled = true when it is ready",
        )
    };
    (step.with_data(data), Some(key))
}

/// The reports as people read them: one line per step, its hint below it.
pub fn render(reports: &[TenantReport]) -> String {
    let mut out = String::new();
    for r in reports {
        out.push_str(&format!("tenant {}\n", r.tenant));
        for s in &r.steps {
            let mark = match s.verdict {
                Verdict::Ok => "ok  ",
                Verdict::Warn => "warn",
                Verdict::Fail => "FAIL",
                Verdict::Skipped => "skip",
            };
            out.push_str(&format!("  {mark}  {:<9} {}\n", s.step, s.detail));
            if let Some(hint) = &s.hint {
                out.push_str(&format!("        {:<9} → {hint}\n", ""));
            }
        }
        let failed = r
            .steps
            .iter()
            .filter(|s| s.verdict == Verdict::Fail)
            .count();
        if r.would_run {
            out.push_str(&format!("  => {} would run\n\n", r.tenant));
        } else {
            out.push_str(&format!(
                "  => {} would NOT run: {failed} step(s) failed\n\n",
                r.tenant
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_would_run_only_when_no_step_failed_or_was_skipped() {
        let good = TenantReport::new(
            "t",
            vec![Step::ok("connect", "x"), Step::warn("file", "no file", "h")],
        );
        assert!(good.would_run);
        let bad = TenantReport::new(
            "t",
            vec![
                Step::fail("connect", "x", "h"),
                Step::skipped("tls", "connect"),
            ],
        );
        assert!(!bad.would_run);
        let text = render(&[bad]);
        assert!(text.contains("FAIL  connect"), "{text}");
        assert!(text.contains("skipped: needs connect"), "{text}");
        assert!(text.contains("would NOT run: 1 step(s) failed"), "{text}");
    }

    #[test]
    fn the_json_of_a_step_names_its_verdict_in_lowercase() {
        let s = Step::fail("login", "login refused", "the key");
        let v = serde_json::to_value(&s).unwrap_or_default();
        assert_eq!(v["verdict"], "fail");
        assert_eq!(v["hint"], "the key");
        assert!(v.get("data").is_none());
    }
}
