//! The tenant admin's options of the import (docs/tenant-admin.md), end to end for one tenant
//! against vsftpd, the platform fake, the SMTP sink and the machine's Redis (a key prefix per
//! test): verify-only, skipping unchanged rows, the mass-change guard and full sync.

use platform_fake::{DEACTIVATED, FakeUser, call};
use worker::outcome::{Permanent, Retryable};
use worker::{JobError, Outcome};

use harness::fixtures::fake_user as user;
use harness::fixtures::{HEADER, csv_rows};
use harness::tenant_env::{Options, TenantEnv};

fn with_import(lines: &str) -> Options {
    Options {
        tenant_import: lines.to_owned(),
        ..Options::default()
    }
}

/// Write calls the platform got (reads are `GetUser`, `GetProfileFields`, `status`).
fn writes(env: &TenantEnv) -> u64 {
    let calls = env.fake.calls(&env.domain);
    calls.get(call::SET_USER) + calls.get(call::SET_USERS) + calls.get(call::DELETE_USER)
}

/// The rows of the one report whose name starts with `prefix`, header first.
fn report_rows(env: &TenantEnv, prefix: &str) -> Vec<Vec<String>> {
    let names: Vec<String> = env
        .reports()
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect();
    assert_eq!(names.len(), 1, "one {prefix}* report: {:?}", env.reports());
    csv_rows(&env.report(&names[0]))
}

/// `(username, action, result)` of a report row, by username.
fn row_of<'a>(rows: &'a [Vec<String>], username: &str) -> (&'a str, &'a str) {
    let r = rows
        .iter()
        .find(|r| r.get(1).map(String::as_str) == Some(username))
        .unwrap_or_else(|| panic!("no row for {username} in {rows:?}"));
    (r[2].as_str(), r[3].as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verify_only_run_reports_what_each_row_would_do_and_writes_nothing() {
    let env = TenantEnv::with(with_import("verify_only = true")).await;
    env.fake.insert_user(
        &env.domain,
        user("alan", "Alan", "Turing", "Engineering").with_group("Pioneers"),
    );
    env.fake
        .insert_user(&env.domain, user("grace", "Grace", "Hopper", "Support"));
    env.fake
        .insert_user(&env.domain, user("kate", "Kate", "Bell", "Sales"));
    env.fake.insert_user(
        &env.domain,
        FakeUser {
            state: DEACTIVATED.into(),
            ..user("lin", "Lin", "Wu", "Sales")
        },
    );
    let before = env.fake.users(&env.domain);
    env.upload(&format!(
        "{HEADER}\n\
         ada,Ada,Lovelace,ada@example.org,Engineering,,\n\
         alan,Alan,Turing,alan@example.org,Engineering,Pioneers,\n\
         grace,Grace,Brewster,grace@example.org,Support,,\n\
         kate,Kate,Bell,kate@example.org,Sales,,Deactivated\n\
         lin,Lin,Wu,lin@example.org,Sales,,Activated\n\
         bad user,Bad,User,bad@example.org,Sales,,\n"
    ));

    let outcome = env.run().await;
    let Ok(Outcome::Verified { counts, .. }) = outcome else {
        panic!(
            "expected a verify-only outcome, got {outcome:?}\n{}",
            env.log()
        );
    };
    assert_eq!(
        (
            counts.rows,
            counts.created,
            counts.updated,
            counts.unchanged,
            counts.invalid,
            counts.deactivated_by_state
        ),
        (6, 1, 2, 1, 1, 1),
        "{counts:?}"
    );
    assert_eq!(writes(&env), 0, "{:?}", env.fake.calls(&env.domain));
    assert_eq!(env.fake.users(&env.domain), before, "nothing changed");

    let rows = report_rows(&env, "user-import-verify-");
    assert_eq!(rows[0], ["line", "username", "action", "result", "message"]);
    assert_eq!(row_of(&rows, "ada"), ("create", "would-create"));
    assert_eq!(row_of(&rows, "alan"), ("none", "unchanged"));
    assert_eq!(row_of(&rows, "grace"), ("update", "would-update"));
    assert_eq!(row_of(&rows, "kate"), ("deactivate", "would-deactivate"));
    assert_eq!(row_of(&rows, "lin"), ("activate", "would-update"));
    assert_eq!(row_of(&rows, "bad user"), ("none", "error"));

    // The run summary says what happened; a verified file is not archived.
    let latest: serde_json::Value = serde_json::from_slice(
        &env.account
            .read("reports/latest-summary.json")
            .unwrap_or_else(|| panic!("no run summary\n{}", env.log())),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(latest["outcome"], "verified", "{latest}");
    assert_eq!(latest["counts"]["created"], 1, "{latest}");
    assert!(
        env.account.list("archive").is_empty(),
        "a verify-only run archives nothing: {:?}",
        env.account.list("archive")
    );

    let mail = env.mails(1).await;
    assert!(
        mail[0].subject.contains("VERIFY ONLY"),
        "{}",
        mail[0].subject
    );
    assert!(env.log().contains("verifying only"), "{}", env.log());
    assert!(
        env.markers().is_empty(),
        "no import marker: {:?}",
        env.account.list("tmp")
    );
    assert_eq!(env.account.list("tmp").len(), 1, "the .verified marker");

    // The same file again in verify mode: skipped. With verify-only off: imported for real.
    assert!(matches!(
        env.run().await,
        Ok(Outcome::AlreadyProcessed { .. })
    ));
    assert!(env.log().contains("was already verified"), "{}", env.log());
    env.set_tenant_import("");
    let counts = env.run_imported().await;
    assert_eq!(
        (counts.created, counts.updated, counts.deactivated_by_state),
        (1, 2, 1),
        "{counts:?}"
    );
    assert!(env.fake.user(&env.domain, "ada").is_some());
    assert_eq!(
        env.fake.user(&env.domain, "kate").map(|u| u.state),
        Some(DEACTIVATED.into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verify_upload_is_verified_once_and_does_not_block_the_import() {
    let env = TenantEnv::new().await;
    env.account
        .put("uploads/user-import.verify.csv", three_rows().as_bytes());
    let outcome = env.run().await;
    let Ok(Outcome::Verified { counts, .. }) = outcome else {
        panic!(
            "expected a verify-only outcome, got {outcome:?}\n{}",
            env.log()
        );
    };
    assert_eq!((counts.rows, counts.created), (3, 3), "{counts:?}");
    assert_eq!(writes(&env), 0);
    assert!(env.fake.users(&env.domain).is_empty());
    let rows = report_rows(&env, "user-import-verify-");
    assert_eq!(row_of(&rows, "ada"), ("create", "would-create"));
    let mail = env.mails(1).await;
    assert!(
        mail[0]
            .body_text
            .contains("/uploads/user-import.verify.csv"),
        "{}",
        mail[0].body_text
    );

    // Verified once: the next run goes on to the import, which has no file yet; then imports.
    assert!(matches!(env.run().await, Ok(Outcome::NoFile)));
    assert!(env.log().contains("was verified before"), "{}", env.log());
    env.upload(&three_rows());
    assert_eq!(env.run_imported().await.created, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verify_upload_that_cannot_be_read_does_not_hold_up_the_import() {
    let env = TenantEnv::new().await;
    env.account.put(
        "uploads/user-import.verify.csv",
        b"First name,Surname\nAda,Lovelace\n",
    );
    env.upload(&three_rows());
    let outcome = env.run().await;
    assert!(
        matches!(
            outcome,
            Err(JobError::Permanent(Permanent::UnreadableFile(_)))
        ),
        "{outcome:?}"
    );
    assert!(
        env.log().contains("cannot be verified") && env.log().contains("no Username column"),
        "{}",
        env.log()
    );
    assert_eq!(writes(&env), 0);
    // Not tried again: the next run imports /uploads/user-import.csv.
    assert_eq!(env.run_imported().await.created, 3);
}

fn three_rows() -> String {
    format!(
        "{HEADER}\n\
         ada,Ada,Lovelace,ada@example.org,Engineering,Analysts,\n\
         alan,Alan,Turing,alan@example.org,Engineering,Pioneers,\n\
         grace,Grace,Hopper,grace@example.org,Support,,\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_unchanged_sends_no_call_for_a_row_unchanged_since_the_last_import() {
    let env = TenantEnv::with(with_import("skip_unchanged = true")).await;
    env.upload(&three_rows());
    assert_eq!(env.run_imported().await.created, 3);
    let first_reports = env.reports();

    env.upload(&format!(
        "{HEADER}\n\
         ada,Ada,Lovelace,ada@example.org,Engineering,Analysts,\n\
         alan,Alan,Turing,alan@example.org,Engineering,Pioneers,\n\
         grace,Grace,Brewster,grace@example.org,Support,,\n\
         kate,Kate,Bell,kate@example.org,Sales,,\n"
    ));
    env.fake.reset_calls();
    let counts = env.run_imported().await;
    assert_eq!(
        (counts.unchanged, counts.updated, counts.created),
        (2, 1, 1),
        "{counts:?}"
    );
    let calls = env.fake.calls(&env.domain);
    assert_eq!(
        calls.get(call::GET_USER),
        1,
        "only grace is looked up; kate, whom the store never saw, is created without: {calls:?}"
    );
    let new_reports: Vec<String> = env
        .reports()
        .into_iter()
        .filter(|r| !first_reports.contains(r))
        .collect();
    assert_eq!(new_reports.len(), 1, "{new_reports:?}");
    let latest = csv_rows(&env.report(&new_reports[0]));
    let ada = latest
        .iter()
        .find(|r| r[1] == "ada")
        .unwrap_or_else(|| panic!("{latest:?}"));
    assert_eq!((ada[2].as_str(), ada[3].as_str()), ("none", "unchanged"));
    assert!(ada[4].contains("not sent"), "{ada:?}");

    // A change made on the platform is not seen while the row is unchanged; the full re-push
    // flag sends every row again, and is removed afterwards.
    env.fake.insert_user(
        &env.domain,
        user("ada", "Ada", "Byron", "Engineering").with_group("Analysts"),
    );
    env.account.put("uploads/user-import.full", b"");
    // The same rows with a blank line more: a new version of the file, with the same rows.
    env.upload(&format!("{}\n\n", env_file_again()));
    env.fake.reset_calls();
    let counts = env.run_imported().await;
    assert_eq!(env.fake.calls(&env.domain).get(call::GET_USER), 4);
    assert_eq!(counts.updated, 1, "ada repaired: {counts:?}");
    assert_eq!(
        env.fake
            .user(&env.domain, "ada")
            .and_then(|u| u.profile.get("surname").cloned()),
        Some("Lovelace".into())
    );
    assert!(
        !env.account
            .list("uploads")
            .contains(&"user-import.full".to_string()),
        "{:?}",
        env.account.list("uploads")
    );
}

fn env_file_again() -> String {
    format!(
        "{HEADER}\n\
         ada,Ada,Lovelace,ada@example.org,Engineering,Analysts,\n\
         alan,Alan,Turing,alan@example.org,Engineering,Pioneers,\n\
         grace,Grace,Brewster,grace@example.org,Support,,\n\
         kate,Kate,Bell,kate@example.org,Sales,,"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_option_that_needs_redis_fails_clearly_when_redis_is_not_there() {
    let env = TenantEnv::with(Options {
        redis_url: Some("redis://127.0.0.1:1/".into()),
        ..with_import("skip_unchanged = true")
    })
    .await;
    env.upload(&three_rows());
    let outcome = env.run().await;
    let Err(JobError::Retryable(Retryable::Store(why))) = &outcome else {
        panic!("expected a Redis error, got {outcome:?}");
    };
    assert!(why.contains("skip_unchanged"), "{why}");
    assert!(env.markers().is_empty(), "the file will be imported again");
    assert!(env.log().contains("redis-unavailable"), "{}", env.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mass_deactivation_is_held_until_the_admin_confirms_it() {
    let env = TenantEnv::with(with_import(
        "mass_change_guard = { max_deactivate_count = 2, max_deactivate_percent = 10 }",
    ))
    .await;
    for name in ["u1", "u2", "u3", "u4", "u5"] {
        env.fake
            .insert_user(&env.domain, user(name, "U", name, "Sales"));
    }
    let mut file = format!("{HEADER}\n");
    for (name, state) in [
        ("u1", "Deactivated"),
        ("u2", "Deactivated"),
        ("u3", "Deactivated"),
        ("u4", ""),
        ("u5", ""),
    ] {
        file.push_str(&format!(
            "{name},U,{name},{name}@example.org,Sales,,{state}\n"
        ));
    }
    env.upload(&file);

    let outcome = env.run().await;
    let Ok(Outcome::Held {
        sha1,
        deactivations,
        existing,
        email_sent,
        ..
    }) = outcome
    else {
        panic!(
            "expected the run to be held, got {outcome:?}\n{}",
            env.log()
        );
    };
    assert_eq!((deactivations, existing, email_sent), (3, 5, true));
    assert_eq!(writes(&env), 0);
    assert!(env.markers().is_empty());
    assert!(
        env.account.list("tmp").contains(&format!("{sha1}.held")),
        "{:?}",
        env.account.list("tmp")
    );
    let mail = env.mails(1).await;
    assert!(mail[0].subject.contains("HELD"), "{}", mail[0].subject);
    assert!(
        mail[0].body_text.contains(&sha1) && mail[0].body_text.contains("user-import.confirm"),
        "{}",
        mail[0].body_text
    );

    // Still held on the next run, without any API call, and with a wrong confirmation.
    env.account
        .put("uploads/user-import.confirm", b"yes, go ahead\n");
    env.fake.reset_calls();
    let again = env.run().await;
    assert!(
        matches!(
            again,
            Ok(Outcome::Held {
                email_sent: false,
                ..
            })
        ),
        "{again:?}"
    );
    assert_eq!(env.fake.calls(&env.domain).total(), 0);

    // Confirmed: imported, and the confirmation and held marker are gone.
    env.account.put(
        "uploads/user-import.confirm",
        format!("{sha1}\n").as_bytes(),
    );
    let counts = env.run_imported().await;
    assert_eq!(counts.deactivated_by_state, 3, "{counts:?}");
    for name in ["u1", "u2", "u3"] {
        assert_eq!(
            env.fake.user(&env.domain, name).map(|u| u.state),
            Some(DEACTIVATED.into())
        );
    }
    assert_eq!(env.markers().len(), 1);
    let tmp = env.account.list("tmp");
    assert!(!tmp.contains(&format!("{sha1}.held")), "{tmp:?}");
    assert!(
        !env.account
            .list("uploads")
            .contains(&"user-import.confirm".to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_sync_deactivates_managed_users_absent_from_the_file_but_never_the_admin() {
    let env = TenantEnv::with(with_import("full_sync = true")).await;
    let admin = format!("{}.admin", env.tenant());
    env.fake
        .insert_user(&env.domain, user("outsider", "Out", "Sider", "Sales"));
    env.fake
        .insert_user(&env.domain, user(&admin, "The", "Admin", "Support"));
    env.upload(&format!(
        "{HEADER}\n\
         {admin},The,Admin,admin@example.org,Support,,\n\
         ada,Ada,Lovelace,ada@example.org,Engineering,,\n\
         alan,Alan,Turing,alan@example.org,Engineering,,\n\
         grace,Grace,Hopper,grace@example.org,Support,,\n"
    ));
    let counts = env.run_imported().await;
    // The admin's row is never applied: the nominated admin is a protected user.
    assert_eq!((counts.created, counts.protected), (3, 1), "{counts:?}");

    // The next file: only ada, and a row that is invalid for grace (she stays).
    env.upload(&format!(
        "{HEADER}\n\
         ada,Ada,Lovelace,ada@example.org,Engineering,,\n\
         grace,Grace,Hopper,not-an-address,Support,,\n"
    ));
    env.fake.reset_calls();
    let first_reports = env.reports();
    let counts = env.run_imported().await;
    assert_eq!((counts.deactivated, counts.invalid), (1, 1), "{counts:?}");
    assert_eq!(env.fake.calls(&env.domain).get(call::SET_USERS), 1);
    let state = |u: &str| env.fake.user(&env.domain, u).map(|u| u.state);
    assert_eq!(state("alan"), Some(DEACTIVATED.into()));
    for kept in [admin.as_str(), "ada", "grace", "outsider"] {
        assert_eq!(state(kept), Some("Activated".into()), "{kept}");
    }
    let new_reports: Vec<String> = env
        .reports()
        .into_iter()
        .filter(|r| !first_reports.contains(r))
        .collect();
    let rows = csv_rows(&env.report(&new_reports[0]));
    let alan = rows
        .iter()
        .find(|r| r[1] == "alan")
        .unwrap_or_else(|| panic!("{rows:?}"));
    assert_eq!(
        (alan[0].as_str(), alan[2].as_str(), alan[3].as_str()),
        ("", "deactivate", "deactivated")
    );

    // A header without rows deactivates nobody.
    env.upload(&format!("{HEADER}\n"));
    env.fake.reset_calls();
    let counts = env.run_imported().await;
    assert_eq!(counts.deactivated, 0, "{counts:?}");
    assert_eq!(env.fake.calls(&env.domain).get(call::SET_USERS), 0);
    assert_eq!(state("ada"), Some("Activated".into()));
    assert!(env.log().contains("the file has no rows"), "{}", env.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_sync_deactivates_in_chunks_of_500_and_the_guard_counts_it() {
    let env = TenantEnv::with(with_import("full_sync = true")).await;
    // 1,201 users the import manages (as earlier runs would have recorded), none in the file.
    let names: Vec<String> = (0..1201).map(|i| format!("old{i:04}")).collect();
    for n in &names {
        env.fake.insert_user(&env.domain, FakeUser::new(n));
    }
    let redis = redis::Client::open(harness::redis_url()).unwrap_or_else(|e| panic!("{e}"));
    let mut conn = redis
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("redis: {e}"));
    let key = format!("{}:managed:{}", env.redis_prefix, env.tenant());
    let _: u64 = redis::AsyncCommands::sadd(&mut conn, &key, &names)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    env.upload(&format!(
        "{HEADER}\nada,Ada,Lovelace,ada@example.org,Engineering,,\n"
    ));

    // The guard (default thresholds) counts the full-sync deactivations and holds the run.
    let outcome = env.run().await;
    let Ok(Outcome::Held {
        sha1,
        deactivations,
        ..
    }) = outcome
    else {
        panic!("expected a hold, got {outcome:?}\n{}", env.log());
    };
    assert_eq!(deactivations, 1201);
    assert_eq!(writes(&env), 0);

    env.account.put(
        "uploads/user-import.confirm",
        format!("{sha1}\n").as_bytes(),
    );
    env.fake.reset_calls();
    let counts = env.run_imported().await;
    assert_eq!(counts.deactivated, 1201, "{counts:?}");
    assert_eq!(
        env.fake.calls(&env.domain).get(call::SET_USERS),
        3,
        "500 + 500 + 201"
    );
    assert!(
        env.fake
            .users(&env.domain)
            .iter()
            .filter(|u| u.username.starts_with("old"))
            .all(|u| u.state == DEACTIVATED)
    );
    let left: Vec<String> = redis::AsyncCommands::smembers(&mut conn, &key)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(left, ["ada"], "deactivated users are no longer managed");
    let _: u64 = redis::AsyncCommands::del(&mut conn, &key)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}
