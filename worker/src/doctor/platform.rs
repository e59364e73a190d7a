//! The platform's checks, read calls only: `api` (`GetProfileFields` with the tenant's key: the
//! fields, their modes, and so the CSV header the file should have) and `admin` (`GetUser` of the
//! nominated admin).

use serde_json::json;
use shared::ApiKey;
use shared::registry::Tenant;

use super::Step;
use crate::deps::Deps;
use crate::platform::model::{FieldMode, ProfileFields};
use crate::platform::{ApiError, PlatformClient};

/// Attempts per call: enough to ride out one 429 or 5xx, few enough that an unreachable API is
/// told in seconds.
const MAX_ATTEMPTS: u32 = 3;

/// The `api` and `admin` steps.
pub async fn check(deps: &Deps, tenant: &Tenant, key: Option<&ApiKey>) -> Vec<Step> {
    let Some(key) = key else {
        return vec![
            Step::skipped("api", "registry"),
            Step::skipped("admin", "registry"),
        ];
    };
    let mut settings = deps.settings.platform.clone();
    settings.max_attempts = settings.max_attempts.clamp(1, MAX_ATTEMPTS);
    let client = PlatformClient::new(deps.http.clone(), tenant, key.clone(), &settings, 1)
        .with_rate_limits(&deps.rate_limits);
    let api = match client.profile_fields().await {
        Ok(fields) => fields_step(tenant, &fields),
        Err(e) => api_failed(tenant, &e),
    };
    if !api.passed() {
        return vec![api, Step::skipped("admin", "api")];
    }
    vec![api, admin(&client, tenant).await]
}

/// The columns a file may have: the fields' labels in the platform's order; the mandatory ones
/// named apart (a new user needs them).
fn fields_step(tenant: &Tenant, fields: &ProfileFields) -> Step {
    let mut ordered: Vec<_> = fields.iter().collect();
    ordered.sort_by_key(|(key, f)| (f.order, (*key).clone()));
    let header: Vec<&str> = ordered.iter().map(|(_, f)| f.label.as_str()).collect();
    let mandatory: Vec<&str> = ordered
        .iter()
        .filter(|(_, f)| f.mode == FieldMode::Mandatory)
        .map(|(_, f)| f.label.as_str())
        .collect();
    let list: Vec<_> = ordered
        .iter()
        .map(|(key, f)| json!({"key": key, "label": f.label, "mode": f.mode, "type": f.kind}))
        .collect();
    Step::ok(
        "api",
        format!(
            "{} answers for {}: {} profile fields; the CSV header: {} (mandatory for a new \
             user: {}; also allowed: New username, Password, Account state, Groups)",
            tenant.api_base_url,
            tenant.portal_domain,
            fields.len(),
            header.join(","),
            if mandatory.is_empty() {
                "none".to_owned()
            } else {
                mandatory.join(", ")
            },
        ),
    )
    .with_data(json!({"fields": list, "header": header.join(","), "mandatory": mandatory}))
}

fn api_failed(tenant: &Tenant, e: &ApiError) -> Step {
    let hint = match e {
        ApiError::Credentials(_) => {
            "the platform refuses the key for this portal: check portal_domain in the registry \
             and the key in the Secret (the same key as the account's); a key revoked on the \
             platform must be rotated (docs/operations.md)"
        }
        ApiError::Exhausted { .. } => {
            "the API did not answer: check api_base_url in the registry (its region) and our \
             egress to it; the platform's status page if it is down"
        }
        _ => "an unexpected answer: check api_base_url (it must be the API, not the portal)",
    };
    Step::fail(
        "api",
        format!(
            "GetProfileFields at {} for {}: {e}",
            tenant.api_base_url, tenant.portal_domain
        ),
        hint,
    )
}

async fn admin(client: &PlatformClient, tenant: &Tenant) -> Step {
    let admin = &tenant.admin.username;
    match client.get_user(admin).await {
        Ok(Some(user)) => {
            let state = user.state.clone();
            // The platform's words, as the import reads them ("Activated", "Deactivated").
            let inactive = state
                .as_deref()
                .is_some_and(|s| s.eq_ignore_ascii_case("deactivated"));
            let data = json!({"username": admin, "state": state});
            if inactive {
                Step::warn(
                    "admin",
                    format!(
                        "the admin {admin} exists but is {}",
                        state.as_deref().unwrap_or("")
                    ),
                    "the platform may refuse to act as a deactivated admin: ask the tenant to \
                     activate it",
                )
                .with_data(data)
            } else {
                Step::ok("admin", format!("the admin {admin} exists")).with_data(data)
            }
        }
        Ok(None) => Step::fail(
            "admin",
            format!("no user {admin:?} on the platform"),
            "admin.username in the registry must be an existing global administrator: fix the \
             name, or ask the tenant to create that user",
        )
        .with_data(json!({"username": admin})),
        Err(e) => Step::fail(
            "admin",
            format!("GetUser {admin:?}: {e}"),
            "the API answered GetProfileFields but not GetUser: try again; if it stays, ask the \
             platform",
        ),
    }
}
