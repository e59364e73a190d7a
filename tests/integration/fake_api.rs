//! The platform fake behaves as the public API reference says, over real HTTP: each test spawns
//! its own fake on a free port with its own tenant and talks to it with reqwest.

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use platform_fake::{FakeConfig, FakeHandle, FakeUser, Faults, TenantSeed, call};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// How long a test waits for a tid to turn final.
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// One fake with one tenant, and a client for it.
struct Fake {
    handle: FakeHandle,
    http: reqwest::Client,
    domain: String,
    key: String,
}

impl Fake {
    async fn start(faults: Faults) -> anyhow::Result<Self> {
        let domain = format!("t{}.learning-admin.com", uuid::Uuid::new_v4().simple());
        let key = format!("key-{}", uuid::Uuid::new_v4().simple());
        let config = FakeConfig {
            tenants: vec![TenantSeed {
                domain: domain.clone(),
                api_key: key.clone(),
            }],
            faults,
        };
        let handle = platform_fake::spawn(config).await?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self {
            handle,
            http,
            domain,
            key,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.handle.base_url())
    }

    /// `POST /<name>` with the tenant's credentials.
    async fn call(&self, name: &str, body: Value) -> anyhow::Result<reqwest::Response> {
        let response = self
            .http
            .post(self.url(&format!("/{name}")))
            .basic_auth(&self.domain, Some(&self.key))
            .json(&body)
            .send()
            .await?;
        Ok(response)
    }

    /// `GET <location>` with the tenant's credentials, as JSON.
    async fn status(&self, location: &str) -> anyhow::Result<Value> {
        let response = self
            .http
            .get(self.url(location))
            .basic_auth(&self.domain, Some(&self.key))
            .send()
            .await?;
        ensure!(
            response.status() == StatusCode::OK,
            "status answered {}",
            response.status()
        );
        Ok(response.json().await?)
    }

    /// Polls `location` until the tid is no longer pending.
    async fn wait_final(&self, location: &str) -> anyhow::Result<Value> {
        let started = Instant::now();
        loop {
            let status = self.status(location).await?;
            if status["status"] != 1 {
                return Ok(status);
            }
            if started.elapsed() > STATUS_TIMEOUT {
                bail!("{location} still pending after {STATUS_TIMEOUT:?}: {status}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

fn create_body(username: &str, department: &str) -> Value {
    json!({
        "params": { "action": "create", "auth_mode": "forms", "send_welcome": false },
        "profile": {
            "username": username,
            "forename": "Ada",
            "surname": "Lovelace",
            "mail": "ada@example.com",
            "department": department,
            "start_date": "2024-02-29",
        },
        "password": { "value": "correct horse" },
        "groups": [{ "name": "Staff" }, { "name": "Analysts" }],
    })
}

/// The `Location` of a 202 answer.
fn location(response: &reqwest::Response) -> anyhow::Result<String> {
    ensure!(
        response.status() == StatusCode::ACCEPTED,
        "expected 202, got {}",
        response.status()
    );
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .context("202 without Location")?
        .to_str()?
        .to_owned();
    ensure!(location.starts_with("/status/"), "Location is {location}");
    Ok(location)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_user_is_pending_then_succeeds_and_get_user_returns_it() -> anyhow::Result<()> {
    let fake = Fake::start(Faults {
        status_delay_ms: 2_000,
        ..Faults::default()
    })
    .await?;

    let response = fake
        .call(call::SET_USER, create_body("ada", "Engineering"))
        .await?;
    let location = location(&response)?;
    let accepted: Value = response.json().await?;
    assert_eq!(accepted["status"], 1);
    assert_eq!(
        format!("/status/{}", accepted["tid"].as_str().unwrap_or_default()),
        location
    );

    let pending = fake.status(&location).await?;
    assert_eq!(pending["status"], 1, "{pending}");

    let done = fake.wait_final(&location).await?;
    assert_eq!(done["status"], 2, "{done}");
    assert_eq!(done["errors"], json!({}));

    let user: Value = fake
        .call(call::GET_USER, json!({ "params": { "uid": "ada" } }))
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(user["params"]["uid"], "ada");
    assert_eq!(user["profile"]["username"], "ada");
    assert_eq!(user["profile"]["forename"], "Ada");
    assert_eq!(user["profile"]["department"], "Engineering");
    assert_eq!(user["profile"]["start_date"], "2024-02-29");
    assert_eq!(
        user["groups"],
        json!([{ "name": "Analysts" }, { "name": "Staff" }])
    );
    assert_eq!(user["state"], "Activated");

    let stored = fake
        .handle
        .user(&fake.domain, "ada")
        .context("not stored")?;
    assert!(stored.password_set);
    assert_eq!(stored.auth_mode.as_deref(), Some("forms"));
    fake.handle.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_an_existing_user_again_is_a_conflict() -> anyhow::Result<()> {
    // A long status delay: the user exists as soon as the first create is accepted.
    let fake = Fake::start(Faults {
        status_delay_ms: 60_000,
        ..Faults::default()
    })
    .await?;
    let first = fake
        .call(call::SET_USER, create_body("ada", "Sales"))
        .await?;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let second = fake
        .call(call::SET_USER, create_body("ada", "Sales"))
        .await?;
    assert_eq!(second.status(), StatusCode::CONFLICT);
    let body: Value = second.json().await?;
    assert!(body["message"].is_string(), "{body}");
    assert_eq!(fake.handle.calls(&fake.domain).get(call::SET_USER), 2);
    fake.handle.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updating_a_missing_user_is_not_found() -> anyhow::Result<()> {
    let fake = Fake::start(Faults::default()).await?;
    let response = fake
        .call(
            call::SET_USER,
            json!({ "params": { "action": "update", "uid": "ghost" }, "profile": { "surname": "X" } }),
        )
        .await?;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body: Value = response.json().await?;
    assert!(body["message"].is_string(), "{body}");
    fake.handle.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_merges_the_profile_renames_and_changes_groups() -> anyhow::Result<()> {
    let fake = Fake::start(Faults::default()).await?;
    fake.handle.insert_user(
        &fake.domain,
        FakeUser::new("ada")
            .with_field("forename", "Ada")
            .with_field("surname", "Lovelace")
            .with_field("department", "HR")
            .with_field("mail", "ada@example.com")
            .with_group("Staff"),
    );
    let response = fake
        .call(
            call::SET_USER,
            json!({
                "params": { "action": "update", "uid": "ada" },
                "profile": { "username": "ada.king", "surname": "King", "mail": "" },
                "groups": [{ "name": "Staff", "action": "remove" }, { "name": "Math", "action": "add" }],
            }),
        )
        .await?;
    let status = fake.wait_final(&location(&response)?).await?;
    assert_eq!(status["status"], 2, "{status}");

    assert!(fake.handle.user(&fake.domain, "ada").is_none());
    let user = fake
        .handle
        .user(&fake.domain, "ada.king")
        .context("renamed user missing")?;
    assert_eq!(
        user.profile.get("surname").map(String::as_str),
        Some("King")
    );
    assert_eq!(
        user.profile.get("forename").map(String::as_str),
        Some("Ada")
    );
    assert!(!user.profile.contains_key("mail"));
    assert_eq!(user.groups.iter().collect::<Vec<_>>(), vec!["Math"]);
    fake.handle.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_single_choice_value_fails_the_status_for_that_uid_and_creates_nothing()
-> anyhow::Result<()> {
    let fake = Fake::start(Faults::default()).await?;
    let response = fake
        .call(call::SET_USER, create_body("bob", "Marketing"))
        .await?;
    let status = fake.wait_final(&location(&response)?).await?;
    assert_eq!(status["status"], 3, "{status}");
    let error = status["errors"]["bob"].as_str().unwrap_or_default();
    assert!(error.contains("department"), "{status}");

    let get = fake
        .call(call::GET_USER, json!({ "params": { "uid": "bob" } }))
        .await?;
    assert_eq!(get.status(), StatusCode::NOT_FOUND);
    assert!(fake.handle.users(&fake.domain).is_empty());
    fake.handle.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_429_carries_a_retry_after_header() -> anyhow::Result<()> {
    let fake = Fake::start(Faults {
        rate_429: 1.0,
        retry_after_secs: 7,
        ..Faults::default()
    })
    .await?;
    let response = fake.call(call::GET_PROFILE_FIELDS, json!({})).await?;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .context("429 without Retry-After")?;
    assert_eq!(retry_after.to_str()?, "7");

    let calls = fake.handle.calls(&fake.domain);
    assert_eq!(calls.get(call::GET_PROFILE_FIELDS), 1);
    assert_eq!(calls.injected_429, 1);

    // Faults can be lifted at run time.
    fake.handle.set_faults(Faults::default());
    let fields: Value = fake
        .call(call::GET_PROFILE_FIELDS, json!({}))
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(fields["department"]["type"], "SingleChoice");
    assert_eq!(fields["department"]["mode"], "Mandatory");
    assert_eq!(fields["forename"]["label"], "First name");
    fake.handle.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_is_forbidden_and_missing_credentials_are_unauthorized() -> anyhow::Result<()> {
    let fake = Fake::start(Faults::default()).await?;
    let body = json!({ "params": { "uid": "ada" } });

    let wrong_key = fake
        .http
        .post(fake.url("/GetUser"))
        .basic_auth(&fake.domain, Some("not-the-key"))
        .json(&body)
        .send()
        .await?;
    assert_eq!(wrong_key.status(), StatusCode::FORBIDDEN);

    let unknown_domain = fake
        .http
        .post(fake.url("/GetUser"))
        .basic_auth("nobody.learning-admin.com", Some(&fake.key))
        .json(&body)
        .send()
        .await?;
    assert_eq!(unknown_domain.status(), StatusCode::FORBIDDEN);

    let anonymous = fake
        .http
        .post(fake.url("/GetUser"))
        .json(&body)
        .send()
        .await?;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    let bearer = fake
        .http
        .post(fake.url("/GetUser"))
        .bearer_auth(&fake.key)
        .json(&body)
        .send()
        .await?;
    assert_eq!(bearer.status(), StatusCode::UNAUTHORIZED);

    // Unauthenticated requests are not counted.
    assert_eq!(fake.handle.calls(&fake.domain).total(), 0);
    fake.handle.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_users_with_501_uids_is_a_bad_request_and_500_are_accepted() -> anyhow::Result<()> {
    let fake = Fake::start(Faults::default()).await?;
    fake.handle.insert_user(&fake.domain, FakeUser::new("u0"));
    let uids = |n: usize| (0..n).map(|i| format!("u{i}")).collect::<Vec<_>>();

    let too_many = fake
        .call(
            call::SET_USERS,
            json!({ "params": { "action": "deactivate", "uids": uids(501) } }),
        )
        .await?;
    assert_eq!(too_many.status(), StatusCode::BAD_REQUEST);
    let body: Value = too_many.json().await?;
    assert!(body["message"].is_string(), "{body}");
    let untouched = fake.handle.user(&fake.domain, "u0").context("u0 missing")?;
    assert_eq!(untouched.state, "Activated");

    let at_limit = fake
        .call(
            call::SET_USERS,
            json!({ "params": { "action": "deactivate", "uids": uids(500) } }),
        )
        .await?;
    let status = fake.wait_final(&location(&at_limit)?).await?;
    // u0 was deactivated; the 499 unknown uids are listed.
    assert_eq!(status["status"], 2, "{status}");
    assert_eq!(status["errors"].as_object().map(|e| e.len()), Some(499));
    assert!(status["errors"]["u0"].is_null());
    let changed = fake.handle.user(&fake.domain, "u0").context("u0 missing")?;
    assert_eq!(changed.state, "Deactivated");
    fake.handle.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_drop_closes_the_connection_without_an_answer() -> anyhow::Result<()> {
    let fake = Fake::start(Faults {
        drop_rate: 1.0,
        ..Faults::default()
    })
    .await?;
    let result = fake
        .call(call::GET_USER, json!({ "params": { "uid": "ada" } }))
        .await;
    let error = match result {
        Ok(response) => bail!("expected a connection error, got {}", response.status()),
        Err(error) => error.downcast::<reqwest::Error>()?,
    };
    assert!(error.status().is_none(), "{error:?}");
    assert!(!error.is_timeout(), "{error:?}");
    assert!(error.is_request(), "{error:?}");

    let calls = fake.handle.calls(&fake.domain);
    assert_eq!(calls.injected_drops, 1);
    assert_eq!(calls.get(call::GET_USER), 1);

    // The admin routes are never faulted, and the fake keeps serving once drops stop.
    let health = fake.http.get(fake.url("/_fake/health")).send().await?;
    assert_eq!(health.status(), StatusCode::OK);
    fake.handle.set_faults(Faults::default());
    let fields = fake.call(call::GET_PROFILE_FIELDS, json!({})).await?;
    assert_eq!(fields.status(), StatusCode::OK);
    fake.handle.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_timeout_outlasts_the_client_and_does_not_hold_up_shutdown()
-> anyhow::Result<()> {
    let fake = Fake::start(Faults {
        timeout_rate: 1.0,
        ..Faults::default()
    })
    .await?;
    let result = fake
        .http
        .post(fake.url("/GetProfileFields"))
        .basic_auth(&fake.domain, Some(&fake.key))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    match result {
        Ok(response) => bail!("expected a timeout, got {}", response.status()),
        Err(error) => assert!(error.is_timeout(), "{error:?}"),
    }
    assert_eq!(fake.handle.calls(&fake.domain).injected_timeouts, 1);

    // A request still hanging when the fake stops is cut short.
    let hanging = tokio::spawn({
        let request = fake
            .http
            .post(fake.url("/GetProfileFields"))
            .basic_auth(&fake.domain, Some(&fake.key));
        async move { request.send().await }
    });
    let started = Instant::now();
    while fake.handle.calls(&fake.domain).injected_timeouts < 2 {
        ensure!(
            started.elapsed() < STATUS_TIMEOUT,
            "second request never arrived"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    tokio::time::timeout(Duration::from_secs(8), fake.handle.shutdown())
        .await
        .context("shutdown waited on a hanging request")?;
    let answer = hanging.await??;
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tid_is_visible_only_to_its_tenant_and_an_unknown_tid_is_status_0() -> anyhow::Result<()>
{
    let fake = Fake::start(Faults::default()).await?;
    let other = format!("o{}.learning-admin.com", uuid::Uuid::new_v4().simple());
    fake.handle.add_tenant(&other, "other-key");
    fake.handle.insert_user(&fake.domain, FakeUser::new("ada"));

    let response = fake
        .call(
            call::SET_USER,
            json!({ "params": { "action": "deactivate", "uid": "ada" } }),
        )
        .await?;
    let location = location(&response)?;
    assert_eq!(fake.wait_final(&location).await?["status"], 2);

    let foreign = fake
        .http
        .get(fake.url(&location))
        .basic_auth(&other, Some("other-key"))
        .send()
        .await?;
    assert_eq!(foreign.status(), StatusCode::NOT_FOUND);

    let unknown = fake.status("/status/no-such-tid").await?;
    assert_eq!(unknown["status"], 0, "{unknown}");
    assert_eq!(fake.handle.calls(&fake.domain).get(call::STATUS), 2);
    fake.handle.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_and_unknown_calls_get_json_errors() -> anyhow::Result<()> {
    let fake = Fake::start(Faults::default()).await?;
    let malformed = fake
        .http
        .post(fake.url("/SetUser"))
        .basic_auth(&fake.domain, Some(&fake.key))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body("{\"params\": ")
        .send()
        .await?;
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    let body: Value = malformed.json().await?;
    assert!(body["message"].is_string(), "{body}");

    let no_username = fake
        .call(
            call::SET_USER,
            json!({ "params": { "action": "create" }, "profile": { "forename": "Ada" } }),
        )
        .await?;
    assert_eq!(no_username.status(), StatusCode::BAD_REQUEST);

    let unknown = fake.call("GetUsers", json!({})).await?;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let body: Value = unknown.json().await?;
    assert!(body["message"].is_string(), "{body}");
    fake.handle.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_user_answers_200_then_404() -> anyhow::Result<()> {
    let fake = Fake::start(Faults::default()).await?;
    fake.handle.insert_user(&fake.domain, FakeUser::new("ada"));
    let body = json!({ "params": { "uid": "ada" } });
    let first = fake.call(call::DELETE_USER, body.clone()).await?;
    assert_eq!(first.status(), StatusCode::OK);
    let second = fake.call(call::DELETE_USER, body).await?;
    assert_eq!(second.status(), StatusCode::NOT_FOUND);
    assert!(fake.handle.users(&fake.domain).is_empty());
    fake.handle.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_routes_seed_users_set_faults_and_report_calls() -> anyhow::Result<()> {
    let fake = Fake::start(Faults::default()).await?;
    let domain = format!("a{}.learning-admin.com", uuid::Uuid::new_v4().simple());

    let added = fake
        .http
        .post(fake.url("/_fake/tenants"))
        .json(&json!({ "domain": domain, "api_key": "k" }))
        .send()
        .await?;
    assert_eq!(added.status(), StatusCode::CREATED);

    let seeded = fake
        .http
        .put(fake.url(&format!("/_fake/tenants/{domain}/users/ada")))
        .json(&json!({ "profile": { "forename": "Ada" }, "groups": ["Staff"] }))
        .send()
        .await?;
    assert_eq!(seeded.status(), StatusCode::OK);

    let user: Value = fake
        .http
        .post(fake.url("/GetUser"))
        .basic_auth(&domain, Some("k"))
        .json(&json!({ "params": { "uid": "ada" } }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(user["profile"]["forename"], "Ada");
    assert_eq!(user["groups"], json!([{ "name": "Staff" }]));

    let users: Value = fake
        .http
        .get(fake.url(&format!("/_fake/tenants/{domain}/users")))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(users[0]["username"], "ada");

    let calls: Value = fake
        .http
        .get(fake.url(&format!("/_fake/tenants/{domain}/calls")))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(calls["calls"]["GetUser"], 1);

    let bad_faults = fake
        .http
        .put(fake.url("/_fake/faults"))
        .json(&json!({ "rate_429": 2.0 }))
        .send()
        .await?;
    assert_eq!(bad_faults.status(), StatusCode::BAD_REQUEST);
    let set = fake
        .http
        .put(fake.url("/_fake/faults"))
        .json(&json!({ "latency_ms": 5 }))
        .send()
        .await?;
    assert_eq!(set.status(), StatusCode::OK);
    assert_eq!(fake.handle.faults().latency_ms, 5);
    assert_eq!(fake.handle.faults().retry_after_secs, 1);

    let reset = fake
        .http
        .post(fake.url("/_fake/reset-calls"))
        .send()
        .await?;
    assert_eq!(reset.status(), StatusCode::NO_CONTENT);
    assert_eq!(fake.handle.calls(&domain).total(), 0);
    fake.handle.shutdown().await;
    Ok(())
}
