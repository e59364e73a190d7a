//! What a tenant admin gets around the import itself, end to end against the real stack (vsftpd
//! over FTPS, the platform fake, the SMTP sink, the machine's Redis): upload completeness, the
//! archive and its retention, the run summary JSON, and the alert emails.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use redis::AsyncCommands;
use worker::outcome::{Permanent, Retryable};
use worker::{Deps, JobContext, JobError, Outcome};

use harness::fixtures::HEADER;
use harness::tenant_env::{Options, TenantEnv};

fn users(names: &[&str]) -> String {
    let mut csv = format!("{HEADER}\n");
    for n in names {
        csv.push_str(&format!("{n},First,Last,{n}@example.org,Sales,,\n"));
    }
    csv
}

fn json(bytes: Option<Vec<u8>>, what: &str) -> serde_json::Value {
    let bytes = bytes.unwrap_or_else(|| panic!("{what} is missing"));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{what} is not JSON: {e}"))
}

async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(harness::redis_url())
        .unwrap_or_else(|e| panic!("redis url: {e}"))
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("Redis at {} is required: {e}", harness::redis_url()))
}

/// Deletes the test's Redis keys.
async fn forget(env: &TenantEnv) {
    let mut conn = redis().await;
    let keys: Vec<String> = conn
        .keys(format!("{}:*", env.redis_prefix()))
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<(), _> = conn.del(keys).await;
    }
}

/// The alert emails (not run reports) the admin received so far.
fn alerts_for(env: &TenantEnv, harness_mails: &[harness::ReceivedMail]) -> Vec<String> {
    harness_mails
        .iter()
        .filter(|m| {
            m.to.iter()
                .any(|t| t.eq_ignore_ascii_case(&env.admin_email))
                && m.subject.contains("User import alert")
        })
        .map(|m| m.subject.clone())
        .collect()
}

async fn alert_subjects(env: &TenantEnv) -> Vec<String> {
    alerts_for(env, &harness::smtp().await.all_messages())
}

// ---------------------------------------------------------------------------------------------
// Run summary JSON

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_run_leaves_a_summary_and_an_import_leaves_one_next_to_its_report() {
    let env = TenantEnv::new().await;

    let outcome = env.run().await;
    assert!(matches!(outcome, Ok(Outcome::NoFile)), "{outcome:?}");
    let latest = json(
        env.account.read("reports/latest-summary.json"),
        "latest summary",
    );
    assert_eq!(latest["schema"], 1);
    assert_eq!(latest["outcome"], "no-file");
    assert_eq!(latest["tenant"], env.tenant());
    assert_eq!(latest["trigger"], "manual");
    assert!(latest["file"].is_null() && latest["counts"].is_null());

    let csv = users(&["ann", "bob"]);
    env.upload(&csv);
    let outcome = env.run().await;
    let Ok(Outcome::Imported {
        sha1, report_path, ..
    }) = &outcome
    else {
        panic!("expected an import, got {outcome:?}\n{}", env.log());
    };
    let reports = env.reports();
    assert_eq!(reports.len(), 1, "{reports:?}");
    let json_name = reports[0].replace(".csv", ".json");
    let summary = json(
        env.account.read(&format!("reports/{json_name}")),
        "summary next to the report",
    );
    assert_eq!(summary["schema"], 1);
    assert_eq!(summary["outcome"], "imported");
    assert_eq!(summary["report_path"], report_path.as_str());
    assert_eq!(summary["email_sent"], true);
    assert_eq!(summary["file"]["path"], "/uploads/user-import.csv");
    assert_eq!(summary["file"]["size"], csv.len() as u64);
    assert_eq!(summary["file"]["sha1"], sha1.as_str());
    assert_eq!(summary["file"]["encoding"], "UTF-8");
    assert_eq!(summary["file"]["delimiter"], ",");
    assert_eq!(summary["counts"]["rows"], 2, "{summary}");
    assert_eq!(summary["counts"]["created"], 2, "{summary}");
    assert_eq!(summary["counts"]["failed"], 0, "{summary}");
    for stage in ["fetch", "hash", "settle", "import", "report", "archive"] {
        assert!(
            summary["durations_ms"][stage].is_u64(),
            "no {stage} duration: {summary}"
        );
    }
    let started = summary["started_at"].as_str().unwrap_or_default();
    let finished = summary["finished_at"].as_str().unwrap_or_default();
    assert!(!started.is_empty() && finished >= started, "{summary}");
    assert!(summary["job_id"].is_string());
    let latest = json(
        env.account.read("reports/latest-summary.json"),
        "latest summary",
    );
    assert_eq!(latest, summary, "the latest summary is this run's");
    assert!(
        env.log()
            .contains("summary written: /reports/latest-summary.json")
    );

    // The same file again: a heartbeat, and the import's own summary is kept as it was.
    let outcome = env.run().await;
    assert!(
        matches!(outcome, Ok(Outcome::AlreadyProcessed { .. })),
        "{outcome:?}"
    );
    let latest = json(
        env.account.read("reports/latest-summary.json"),
        "latest summary",
    );
    assert_eq!(latest["outcome"], "already-processed");
    assert_eq!(latest["file"]["sha1"], sha1.as_str());
    assert_ne!(latest["job_id"], summary["job_id"]);
    let kept = json(
        env.account.read(&format!("reports/{json_name}")),
        "summary next to the report",
    );
    assert_eq!(kept, summary);
    forget(&env).await;
}

// ---------------------------------------------------------------------------------------------
// Upload completeness

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_still_growing_is_left_for_the_next_run_and_imported_once_it_stands_still() {
    let env = TenantEnv::with(Options {
        tenant_settings: r#"files = { settle = "1500ms" }"#.into(),
        ..Options::default()
    })
    .await;
    env.upload(&users(&["u0"]));
    let path = env.account.path("uploads/user-import.csv");

    // The "upload": whole lines appended every 20 ms until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let path = path.clone();
        std::thread::spawn(move || {
            let mut n = 1;
            while !stop.load(Ordering::SeqCst) {
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .unwrap_or_else(|e| panic!("append: {e}"));
                f.write_all(format!("u{n},First,Last,u{n}@example.org,Sales,,\n").as_bytes())
                    .unwrap_or_else(|e| panic!("append: {e}"));
                n += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            n
        })
    };

    let outcome = env.run().await;
    stop.store(true, Ordering::SeqCst);
    let lines = writer
        .join()
        .unwrap_or_else(|_| panic!("the writer panicked"));
    let Ok(Outcome::UploadIncomplete {
        size_before,
        size_after,
    }) = outcome
    else {
        panic!("expected upload-incomplete, got {outcome:?}\n{}", env.log());
    };
    assert!(
        size_after.is_some_and(|after| after > size_before),
        "{size_before} then {size_after:?}"
    );
    assert!(env.fake.users(&env.domain).is_empty(), "nothing imported");
    assert_eq!(env.fake.calls(&env.domain).total(), 0, "no API call");
    assert!(env.markers().is_empty(), "no marker");
    assert!(env.reports().is_empty(), "no report");
    let log = env.log();
    assert!(
        log.contains("end: left for the next run: the file is still being uploaded"),
        "{log}"
    );
    let latest = json(
        env.account.read("reports/latest-summary.json"),
        "latest summary",
    );
    assert_eq!(latest["outcome"], "upload-incomplete");

    // Standing still now: the next run imports all of it.
    let counts = env.run_imported().await;
    assert_eq!(counts.rows, lines as u64, "every line written: {counts:?}");
    assert_eq!(counts.created, lines as u64);
    assert_eq!(env.markers().len(), 1);
    forget(&env).await;
}

// ---------------------------------------------------------------------------------------------
// Archive

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_file_is_archived_and_archives_past_retention_are_deleted() {
    let env = TenantEnv::with(Options {
        tenant_settings: r#"files = { settle = "100ms", archive_retention_days = 7 }"#.into(),
        ..Options::default()
    })
    .await;
    let old = "user-import-20200101T000000Z-0123456789ab.csv";
    let recent = format!(
        "user-import-{}-abcdefabcdef.csv",
        (Utc::now() - TimeDelta::days(6)).format("%Y%m%dT%H%M%SZ")
    );
    env.account.put(&format!("archive/{old}"), b"old");
    env.account.put(&format!("archive/{recent}"), b"recent");
    env.account
        .put("archive/keep-me.csv", b"the tenant's own file");

    let csv = users(&["ann"]);
    env.upload(&csv);
    let outcome = env.run().await;
    let Ok(Outcome::Imported { sha1, .. }) = &outcome else {
        panic!("expected an import, got {outcome:?}\n{}", env.log());
    };
    let archive = env.account.list("archive");
    let new: Vec<&String> = archive
        .iter()
        .filter(|n| n.ends_with(&format!("-{}.csv", &sha1[..12])))
        .collect();
    assert_eq!(new.len(), 1, "{archive:?}");
    assert_eq!(
        env.account.read(&format!("archive/{}", new[0])),
        Some(csv.clone().into_bytes()),
        "the archive holds the imported bytes"
    );
    assert!(!archive.contains(&old.to_owned()), "expired: {archive:?}");
    assert!(archive.contains(&recent), "within retention: {archive:?}");
    assert!(
        archive.contains(&"keep-me.csv".to_owned()),
        "not ours: {archive:?}"
    );
    assert_eq!(
        env.account.read("uploads/user-import.csv"),
        Some(csv.into_bytes()),
        "the upload stays in place"
    );
    let log = env.log();
    assert!(
        log.contains(&format!("archived: /archive/{}", new[0])),
        "{log}"
    );
    assert!(log.contains(&format!("older than 7 days: {old}")), "{log}");
    let latest = json(
        env.account.read("reports/latest-summary.json"),
        "latest summary",
    );
    assert_eq!(latest["archive_path"], format!("/archive/{}", new[0]));
    forget(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retention_of_zero_archives_nothing() {
    let env = TenantEnv::with(Options {
        tenant_settings: r#"files = { settle = "100ms", archive_retention_days = 0 }"#.into(),
        ..Options::default()
    })
    .await;
    env.upload(&users(&["ann"]));
    env.run_imported().await;
    assert!(env.account.list("archive").is_empty());
    assert!(!env.log().contains("archived"), "{}", env.log());
    forget(&env).await;
}

// ---------------------------------------------------------------------------------------------
// Alerts

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_api_login_alerts_the_admin_once_a_day() {
    let env = TenantEnv::with(Options {
        api_key_on_platform: Some("a-rotated-key-the-worker-does-not-have".into()),
        ..Options::default()
    })
    .await;
    env.upload(&users(&["ann"]));
    for _ in 0..2 {
        let outcome = env.run().await;
        assert!(
            matches!(
                outcome,
                Err(JobError::Permanent(Permanent::ApiCredentials(401 | 403)))
            ),
            "{outcome:?}"
        );
    }
    let mails = env.mails(1).await;
    let alerts = alerts_for(&env, &mails);
    assert_eq!(alerts.len(), 1, "one alert for two refusals: {alerts:?}");
    assert!(
        alerts[0].contains(env.tenant()) && alerts[0].contains("platform API refused the login"),
        "{}",
        alerts[0]
    );
    let mail = mails
        .iter()
        .find(|m| m.subject == alerts[0])
        .unwrap_or_else(|| panic!("alert"));
    assert!(
        mail.body_text.contains("at most once a day"),
        "{}",
        mail.body_text
    );
    let key = format!(
        "{}:alerts:{}:login:api:{}",
        env.redis_prefix(),
        env.tenant(),
        Utc::now().date_naive().format("%Y-%m-%d")
    );
    let ttl: i64 = redis().await.ttl(&key).await.unwrap_or(-2);
    assert!(ttl > 0, "the de-duplication key {key} expires (ttl {ttl})");
    assert!(
        env.log().contains("alert: login refused, emailed"),
        "{}",
        env.log()
    );
    let latest = json(
        env.account.read("reports/latest-summary.json"),
        "latest summary",
    );
    assert_eq!(latest["outcome"], "failed");
    assert_eq!(latest["error"]["reason"], "bad-api-credentials");
    assert_eq!(latest["error"]["retryable"], false);
    forget(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_ftps_login_alerts_the_admin_unless_turned_off() {
    let env = TenantEnv::new().await;
    // The same settings and registry, but a key the FTPS server does not accept.
    let wrong = |registry_extra: &str| wrong_key_deps(&env, registry_extra, None);
    let run = |deps: Deps| {
        let tenant = env.tenant().to_owned();
        async move {
            worker::process_job(&deps, &tenant, JobContext::manual(uuid::Uuid::new_v4())).await
        }
    };

    // Turned off: refused, no alert.
    let outcome = run(wrong("alerts = { login_failures = false }\n")).await;
    assert!(
        matches!(
            outcome,
            Err(JobError::Permanent(Permanent::FtpsCredentials))
        ),
        "{outcome:?}"
    );
    assert!(alert_subjects(&env).await.is_empty());

    // On (the default): one alert, however many refusals that day.
    for _ in 0..2 {
        let outcome = run(wrong("")).await;
        assert!(
            matches!(
                outcome,
                Err(JobError::Permanent(Permanent::FtpsCredentials))
            ),
            "{outcome:?}"
        );
    }
    let mails = env.mails(1).await;
    let alerts = alerts_for(&env, &mails);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert!(
        alerts[0].contains("FTPS server refused the login"),
        "{}",
        alerts[0]
    );
    forget(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_alert_store_a_login_alert_is_sent_every_time_rather_than_never() {
    let env = TenantEnv::new().await;
    // Nothing listens on port 1: the alert store cannot be reached.
    let run = || {
        let deps = wrong_key_deps(&env, "", Some("redis://127.0.0.1:1/"));
        let tenant = env.tenant().to_owned();
        async move {
            worker::process_job(&deps, &tenant, JobContext::manual(uuid::Uuid::new_v4())).await
        }
    };
    for _ in 0..2 {
        let outcome = run().await;
        assert!(
            matches!(
                outcome,
                Err(JobError::Permanent(Permanent::FtpsCredentials))
            ),
            "{outcome:?}"
        );
    }
    let mails = env.mails(2).await;
    assert_eq!(alerts_for(&env, &mails).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_job_writes_no_summary_and_the_next_run_does() {
    let env = TenantEnv::with(Options {
        api_key_on_platform: Some("a-rotated-key-the-worker-does-not-have".into()),
        ..Options::default()
    })
    .await;
    env.upload(&users(&["ann"]));
    let job = JobContext::manual(uuid::Uuid::new_v4());
    job.cancel.cancel(); // as when the tenant lock is lost
    let outcome = worker::process_job(&env.deps, env.tenant(), job).await;
    assert!(
        matches!(outcome, Err(JobError::Retryable(Retryable::Cancelled))),
        "{outcome:?}"
    );
    assert!(
        env.log().contains("end: failed, will be retried"),
        "{}",
        env.log()
    );
    assert_eq!(env.account.read("reports/latest-summary.json"), None);
    assert!(env.fake.users(&env.domain).is_empty());
    assert!(alert_subjects(&env).await.is_empty());

    // The same tenant's next run does both.
    let outcome = env.run().await;
    assert!(
        matches!(
            outcome,
            Err(JobError::Permanent(Permanent::ApiCredentials(_)))
        ),
        "{outcome:?}"
    );
    let latest = json(
        env.account.read("reports/latest-summary.json"),
        "latest summary",
    );
    assert_eq!(latest["error"]["reason"], "bad-api-credentials");
    assert_eq!(alerts_for(&env, &env.mails(1).await).len(), 1);
    forget(&env).await;
}

/// `Deps` from the test's settings and registry (plus `registry_extra` in the tenant's entry),
/// with a key that neither the FTPS server nor the API accepts.
fn wrong_key_deps(env: &TenantEnv, registry_extra: &str, redis_url: Option<&str>) -> Deps {
    let vars: Vec<(&str, &str)> = redis_url
        .map(|url| ("USER_IMPORT__REDIS__URL", url))
        .into_iter()
        .collect();
    env.deps_with_key("not-the-password", registry_extra, &vars)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_new_file_for_n_days_alerts_once_per_quiet_spell() {
    let env = TenantEnv::with(Options {
        tenant_settings: format!(
            "{}\nalerts = {{ no_file_days = 2 }}",
            harness::tenant_env::FAST_SETTLE
        ),
        ..Options::default()
    })
    .await;
    let key = format!("{}:alerts:{}:new-file", env.redis_prefix(), env.tenant());
    let mut conn = redis().await;
    let backdate = |days: i64| (Utc::now() - TimeDelta::days(days)).timestamp();

    // The first look starts the clock; no alert.
    assert!(matches!(env.run().await, Ok(Outcome::NoFile)));
    let at: Option<i64> = conn.hget(&key, "at").await.unwrap_or(None);
    assert!(
        at.is_some_and(|t| (Utc::now().timestamp() - t).abs() < 120),
        "{at:?}"
    );
    assert!(alert_subjects(&env).await.is_empty());

    // Three days quiet (the stored time moved back, as if the runs had been three days apart).
    let _: () = conn
        .hset(&key, "at", backdate(3))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(env.run().await, Ok(Outcome::NoFile)));
    let mails = env.mails(1).await;
    let alerts = alerts_for(&env, &mails);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert!(
        alerts[0].contains("no new file for 2 days"),
        "{}",
        alerts[0]
    );
    assert!(env.log().contains("alert: no new file for 2 days"));

    // Still quiet: not again.
    assert!(matches!(env.run().await, Ok(Outcome::NoFile)));
    assert_eq!(alert_subjects(&env).await.len(), 1);

    // A new file restarts the clock...
    env.upload(&users(&["ann"]));
    let outcome = env.run().await;
    let Ok(Outcome::Imported { sha1, .. }) = outcome else {
        panic!("expected an import, got {outcome:?}");
    };
    let seen: Option<String> = conn.hget(&key, "sha1").await.unwrap_or(None);
    assert_eq!(seen.as_deref(), Some(sha1.as_str()));
    assert!(matches!(
        env.run().await,
        Ok(Outcome::AlreadyProcessed { .. })
    ));
    assert_eq!(
        alert_subjects(&env).await.len(),
        1,
        "a fresh file is no alert"
    );

    // ...and a new quiet spell gets its own alert.
    let _: () = conn
        .hset(&key, "at", backdate(5))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        env.run().await,
        Ok(Outcome::AlreadyProcessed { .. })
    ));
    let mails = env.mails(3).await; // report + two alerts
    assert_eq!(alerts_for(&env, &mails).len(), 2);
    forget(&env).await;
}
