//! What keeps a tenant admin in control of the import, end to end for one tenant against vsftpd,
//! the platform fake, the SMTP sink and the machine's Redis (a key prefix per test): the `notify`
//! recipients, protected users, the report email's HTML part (parsed, with injection attempts
//! from the file), and undoing a run.

use platform_fake::{ACTIVATED, DEACTIVATED, FakeUser, call};
use worker::Outcome;

use harness::fixtures::fake_user as user;
use harness::fixtures::{HEADER, csv_rows};
use harness::tenant_env::{FAST_SETTLE, Options, TenantEnv};
use harness::{ReceivedMail, parse_html};

/// An address no other test uses.
fn unique_address(local: &str) -> String {
    format!(
        "{local}-{}@notify.example.com",
        uuid::Uuid::new_v4().simple()
    )
}

/// The rows of the newest report, header first.
fn newest_report(env: &TenantEnv) -> Vec<Vec<String>> {
    let reports = env.reports();
    let name = reports
        .iter()
        .rfind(|n| !n.ends_with(".rejects.csv"))
        .unwrap_or_else(|| panic!("no report: {reports:?}\n{}", env.log()));
    csv_rows(&env.report(name))
}

/// `(action, result)` of the report row for `username`.
fn result_of(rows: &[Vec<String>], username: &str) -> (String, String) {
    let r = rows
        .iter()
        .find(|r| r.get(1).map(String::as_str) == Some(username))
        .unwrap_or_else(|| panic!("no row for {username} in {rows:?}"));
    (r[2].clone(), r[3].clone())
}

/// The counts table of a report email's HTML part, as `(label, value)` pairs.
fn html_counts(mail: &ReceivedMail) -> Vec<(String, String)> {
    let doc = parse_html(&mail.body_html);
    let rows = doc
        .table("counts")
        .unwrap_or_else(|| panic!("no counts table in the HTML part: {doc:?}"));
    rows.iter()
        .map(|r| {
            assert_eq!(r.len(), 2, "a label and a value: {r:?}");
            (r[0].clone(), r[1].clone())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_notify_recipient_gets_the_report_and_the_admin_only_acts() {
    let (hr, it) = (unique_address("hr"), unique_address("it"));
    let env = TenantEnv::with(Options {
        tenant_settings: format!("{FAST_SETTLE}\nnotify = [\"{hr}\", \"{it}\"]"),
        ..Options::default()
    })
    .await;
    env.upload(&format!(
        "{HEADER}\nada,Ada,Lovelace,ada@example.org,Sales,,\nbad user,B,U,b@example.org,Sales,,\n"
    ));
    let counts = env.run_imported().await;
    assert_eq!((counts.created, counts.invalid), (1, 1), "{counts:?}");

    let smtp = harness::smtp().await;
    for address in [&hr, &it] {
        // Both messages name both recipients in `To`; the envelope says who each was sent to.
        let mails: Vec<ReceivedMail> = smtp
            .wait_for_messages(address, 2, std::time::Duration::from_secs(20))
            .await
            .into_iter()
            .filter(|m| m.envelope_to.contains(address))
            .collect();
        assert_eq!(mails.len(), 1, "one report each");
        let mail = &mails[0];
        assert_eq!(mail.envelope_to, vec![address.clone()], "its own envelope");
        let mut to = mail.to.clone();
        to.sort();
        let mut both = vec![hr.clone(), it.clone()];
        both.sort();
        assert_eq!(to, both, "the To header names every recipient");
        assert!(mail.subject.contains("User import"), "{}", mail.subject);
        assert!(
            mail.body_text.contains("Created:     1"),
            "{}",
            mail.body_text
        );
        assert_eq!(mail.attachments.len(), 1, "the report is attached");
        assert_eq!(
            html_counts(mail).into_iter().find(|(l, _)| l == "Created"),
            Some(("Created".into(), "1".into()))
        );
    }
    assert!(
        smtp.all_messages()
            .iter()
            .all(|m| !m.envelope_to.contains(&env.admin_email) && !m.to.contains(&env.admin_email)),
        "with a notify list the admin's address gets nothing"
    );
    assert!(
        env.log().contains("report emailed to 2 recipient(s)"),
        "{}",
        env.log()
    );

    // A refusal goes to the same list.
    env.upload("Name,Surname\nAda,Lovelace\n");
    let refused = env.run().await;
    assert!(refused.is_err(), "{refused:?}");
    for address in [&hr, &it] {
        let mails: Vec<ReceivedMail> = smtp
            .wait_for_messages(address, 4, std::time::Duration::from_secs(20))
            .await
            .into_iter()
            .filter(|m| m.envelope_to.contains(address) && m.subject.contains("REFUSED"))
            .collect();
        assert_eq!(mails.len(), 1, "the refusal reached {address}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_users_are_never_changed_by_a_row_a_deactivation_or_full_sync() {
    let env = TenantEnv::with(Options {
        tenant_import: "full_sync = true\nprotected_users = [\"ceo\", \"svc.*\"]".into(),
        ..Options::default()
    })
    .await;
    let admin = format!("{}.admin", env.tenant());
    for u in [
        user("ceo", "Chief", "Exec", "Finance"),
        user("svc.backup", "Backup", "Service", "Support"),
        user("svc.legacy", "Legacy", "Service", "Support"),
        user(&admin, "The", "Admin", "Support"),
        user("old", "Old", "Timer", "Sales"),
    ] {
        env.fake.insert_user(&env.domain, u);
    }
    // Users earlier runs wrote, as the fleet's store remembers them: full sync may deactivate
    // the ones absent from the file, but never a protected one.
    let redis = redis::Client::open(harness::redis_url()).unwrap_or_else(|e| panic!("{e}"));
    let mut conn = redis
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("redis: {e}"));
    let key = format!("{}:managed:{}", env.redis_prefix, env.tenant());
    let _: u64 = redis::AsyncCommands::sadd(&mut conn, &key, &["svc.legacy", "old", "ceo"])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let before = env.fake.users(&env.domain);
    env.upload(&format!(
        "{HEADER}\n\
         ceo,Changed,Name,ceo@example.org,Sales,Board,\n\
         SVC.Backup,Backup,Service,svc.backup@example.org,Support,,Deactivated\n\
         {admin},The,Admin,admin@example.org,Sales,,Deactivated\n\
         svc.new,New,Service,svc.new@example.org,Support,,\n\
         ada,Ada,Lovelace,ada@example.org,Sales,,\n"
    ));
    let counts = env.run_imported().await;
    assert_eq!(
        (
            counts.rows,
            counts.protected,
            counts.created,
            counts.deactivated
        ),
        (5, 4, 1, 1),
        "{counts:?}"
    );

    // Nothing was sent for them: one create (ada), one SetUsers (old), no read of a protected one.
    let calls = env.fake.calls(&env.domain);
    assert_eq!(calls.get(call::SET_USER), 1, "{calls:?}");
    assert_eq!(calls.get(call::SET_USERS), 1, "{calls:?}");
    assert_eq!(calls.get(call::GET_USER), 1, "only ada is read: {calls:?}");
    let after = env.fake.users(&env.domain);
    for name in ["ceo", "svc.backup", "svc.legacy", admin.as_str()] {
        let was = before.iter().find(|u| u.username == name);
        let is = after.iter().find(|u| u.username == name);
        assert_eq!(is, was, "{name} untouched");
        assert_eq!(is.map(|u| u.state.as_str()), Some(ACTIVATED), "{name}");
    }
    assert!(
        env.fake.user(&env.domain, "svc.new").is_none(),
        "not created"
    );
    assert_eq!(
        env.fake.user(&env.domain, "old").map(|u| u.state),
        Some(DEACTIVATED.into()),
        "full sync ran for the others"
    );

    let rows = newest_report(&env);
    for name in ["ceo", "SVC.Backup", admin.as_str(), "svc.new"] {
        assert_eq!(result_of(&rows, name), ("none".into(), "protected".into()));
    }
    let summary: serde_json::Value = serde_json::from_slice(
        &env.account
            .read("reports/latest-summary.json")
            .unwrap_or_else(|| panic!("no summary")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(summary["counts"]["protected"], 4, "{summary}");
    let mail = &env.mails(1).await[0];
    assert!(
        mail.body_text.contains("Protected:   4"),
        "{}",
        mail.body_text
    );
    assert!(
        html_counts(mail).contains(&(
            "Protected (protected users: not changed)".into(),
            "4".into()
        )),
        "{:?}",
        html_counts(mail)
    );
    assert!(env.log().contains("4 protected"), "{}", env.log());
    let _: u64 = redis::AsyncCommands::del(&mut conn, &key)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_email_has_an_html_part_with_the_counts_and_nothing_from_the_file_gets_through()
{
    let env = TenantEnv::new().await;
    let script = "<script>alert(1)</script>";
    let crlf = "x\r\nBcc: evil@attacker.example\r\nSubject: pwned\r\n\r\n<b>hi</b>";
    env.upload(&format!(
        "{HEADER}\n\
         ada,Ada,Lovelace,ada@example.org,Sales,,\n\
         {script},Eve,Hacker,not-an-address,Sales,,\n\
         \"{crlf}\",Bob,Builder,bob@example.org,Sales,,\n"
    ));
    let counts = env.run_imported().await;
    assert_eq!(
        (counts.rows, counts.created, counts.invalid),
        (3, 1, 2),
        "{counts:?}"
    );
    let mail = &env.mails(1).await[0];

    // Both parts, as alternatives, beside the attachment.
    for part in [
        "multipart/mixed",
        "multipart/alternative",
        "text/plain",
        "text/html",
    ] {
        assert!(
            mail.part_types.iter().any(|t| t == part),
            "{part} in {:?}",
            mail.part_types
        );
    }
    let counts_table = html_counts(mail);
    for (label, value) in [
        ("Rows", "3"),
        ("Created", "1"),
        ("Updated", "0"),
        ("Unchanged", "0"),
        ("Invalid", "2"),
        ("Failed", "0"),
        ("Unconfirmed", "0"),
    ] {
        assert!(
            counts_table.contains(&(label.into(), value.into())),
            "{label} = {value} in {counts_table:?}"
        );
    }

    // The HTML part: the values arrive as text, never as elements.
    let doc = parse_html(&mail.body_html);
    assert!(
        !doc.elements.iter().any(|e| e == "script" || e == "b"),
        "no element from the file: {:?}",
        doc.elements
    );
    let problems = doc
        .table("problems")
        .unwrap_or_else(|| panic!("no problems table: {doc:?}"));
    let usernames: Vec<&str> = problems.iter().skip(1).map(|r| r[1].as_str()).collect();
    assert!(usernames.contains(&script), "{usernames:?}");
    let flattened = usernames
        .iter()
        .find(|u| u.contains("Bcc"))
        .unwrap_or_else(|| panic!("{usernames:?}"));
    assert!(!flattened.contains(['\r', '\n']), "{flattened:?}");
    assert!(
        flattened.contains("<b>hi</b>"),
        "shown as text: {flattened:?}"
    );
    assert!(
        mail.body_html.contains("&lt;script&gt;"),
        "escaped in the source"
    );

    // The text part: the values are there, on their own lines only.
    assert!(mail.body_text.contains(script), "{}", mail.body_text);
    assert!(
        !mail
            .body_text
            .lines()
            .any(|l| l.starts_with("Bcc:") || l.starts_with("Subject:")),
        "{}",
        mail.body_text
    );
    // The headers: nothing added, the recipient alone.
    assert!(mail.header("Bcc").is_none(), "{:?}", mail.headers);
    assert_eq!(
        mail.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("subject"))
            .count(),
        1
    );
    assert!(!mail.subject.contains("pwned"), "{}", mail.subject);
    assert_eq!(mail.envelope_to, vec![env.admin_email.clone()]);
}

/// The run summary on the account.
fn latest_summary(env: &TenantEnv) -> serde_json::Value {
    serde_json::from_slice(
        &env.account
            .read("reports/latest-summary.json")
            .unwrap_or_else(|| panic!("no run summary\n{}", env.log())),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn request_undo(env: &TenantEnv, text: &str) {
    env.account.put("uploads/user-import.undo", text.as_bytes());
}

/// Users by name, without the ones named in `except`.
fn users_but(users: &[FakeUser], except: &[&str]) -> Vec<FakeUser> {
    users
        .iter()
        .filter(|u| !except.contains(&u.username.as_str()))
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undo_puts_every_user_back_deactivates_the_created_ones_and_is_not_done_twice() {
    let env = TenantEnv::new().await;
    for u in [
        user("alan", "Alan", "Turing", "Engineering").with_group("Staff"),
        user("grace", "Grace", "Hopper", "Support"),
        user("kate", "Kate", "Bell", "Sales"),
        user("lin", "Lin", "Wu", "Sales"),
    ] {
        env.fake.insert_user(&env.domain, u);
    }
    let before = env.fake.users(&env.domain);
    env.upload(&format!(
        "{HEADER}\n\
         ada,Ada,Lovelace,ada@example.org,Engineering,,\n\
         bob,Bob,Builder,bob@example.org,Sales,,\n\
         alan,Alan,Turing,alan@example.org,Finance,Staff,\n\
         grace,Grace,Brewster,grace@example.org,Support,Pioneers,\n\
         kate,Kate,Bell,kate@example.org,Sales,,Deactivated\n\
         lin,Lin,Wu,lin@example.org,Sales,,\n"
    ));
    let counts = env.run_imported().await;
    assert_eq!(
        (
            counts.created,
            counts.updated,
            counts.deactivated_by_state,
            counts.unchanged
        ),
        (2, 2, 1, 1),
        "{counts:?}"
    );
    let job_id = latest_summary(&env)["job_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no job id"))
        .to_owned();
    let grace = env.fake.user(&env.domain, "grace");
    assert!(
        grace.is_some_and(|g| g.groups.contains("Pioneers") && g.profile["surname"] == "Brewster"),
        "the run changed grace"
    );
    let journals: Vec<String> = env
        .account
        .list("reports")
        .into_iter()
        .filter(|n| n.ends_with(".undo.jsonl"))
        .collect();
    assert_eq!(journals.len(), 1, "{:?}", env.account.list("reports"));

    // The undo, asked by job id: the next run takes it.
    request_undo(&env, &format!("{job_id}\n"));
    env.fake.reset_calls();
    let undo = env.run().await;
    let Ok(Outcome::Imported {
        counts,
        report_path,
        ..
    }) = undo
    else {
        panic!("expected the undo to run, got {undo:?}\n{}", env.log());
    };
    assert!(
        report_path.starts_with("/reports/user-import-undo-"),
        "{report_path}"
    );
    assert_eq!(
        (
            counts.rows,
            counts.updated,
            counts.deactivated_by_state,
            counts.unchanged
        ),
        (5, 3, 2, 0),
        "alan, grace restored, kate activated; ada and bob deactivated: {counts:?}\n{}",
        env.log()
    );
    let after = env.fake.users(&env.domain);
    assert_eq!(
        users_but(&after, &["ada", "bob"]),
        before,
        "every user as before the run"
    );
    for created in ["ada", "bob"] {
        assert_eq!(
            env.fake.user(&env.domain, created).map(|u| u.state),
            Some(DEACTIVATED.into()),
            "{created} is deactivated, not deleted"
        );
    }
    assert_eq!(env.fake.calls(&env.domain).get(call::DELETE_USER), 0);
    let rows = csv_rows(&env.report(report_path.trim_start_matches("/reports/")));
    assert_eq!(
        result_of(&rows, "ada"),
        ("deactivate".into(), "deactivated".into())
    );
    assert_eq!(
        result_of(&rows, "kate"),
        ("activate".into(), "updated".into())
    );
    let mails = env.mails(2).await;
    assert!(mails[1].subject.contains("UNDO"), "{}", mails[1].subject);
    assert!(
        mails[1].body_text.contains(&job_id),
        "{}",
        mails[1].body_text
    );
    assert_eq!(latest_summary(&env)["outcome"], "imported");

    // Undoing it again (now named by its file's SHA1) is refused, once, with an email.
    let sha1 = latest_sha1_of_first_run(&env, &journals[0]);
    request_undo(&env, &format!("{sha1}\n"));
    env.fake.reset_calls();
    let again = env.run().await;
    assert!(
        matches!(&again, Err(worker::JobError::Permanent(worker::outcome::Permanent::UndoRefused(why))) if why.contains("undone before")),
        "{again:?}\n{}",
        env.log()
    );
    assert_eq!(env.fake.calls(&env.domain).writes(), 0, "nothing written");
    let mails = env.mails(3).await;
    assert!(mails[2].subject.contains("REFUSED"), "{}", mails[2].subject);
    assert!(
        mails[2].body_text.contains("undone before"),
        "{}",
        mails[2].body_text
    );
    assert_eq!(env.fake.users(&env.domain), after, "nothing changed");
    // The refused request is remembered: the next run imports nothing and sends nothing.
    let next = env.run().await;
    assert!(
        matches!(next, Ok(Outcome::AlreadyProcessed { .. })),
        "{next:?}\n{}",
        env.log()
    );
    assert_eq!(
        harness::smtp()
            .await
            .all_messages()
            .iter()
            .filter(|m| m.envelope_to.contains(&env.admin_email))
            .count(),
        3
    );
}

/// The SHA1 of the file of the run whose journal is `journal`, from the journal's header.
fn latest_sha1_of_first_run(env: &TenantEnv, journal: &str) -> String {
    let text = String::from_utf8(
        env.account
            .read(&format!("reports/{journal}"))
            .unwrap_or_default(),
    )
    .unwrap_or_default();
    let header: serde_json::Value = serde_json::from_str(text.lines().next().unwrap_or_default())
        .unwrap_or_else(|e| panic!("journal header: {e}: {text}"));
    header["sha1"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undo_over_the_guards_threshold_is_held_until_confirmed() {
    let env = TenantEnv::with(Options {
        tenant_import:
            "mass_change_guard = { max_deactivate_count = 1, max_deactivate_percent = 0 }".into(),
        ..Options::default()
    })
    .await;
    env.upload(&format!(
        "{HEADER}\n\
         ada,Ada,Lovelace,ada@example.org,Engineering,,\n\
         bob,Bob,Builder,bob@example.org,Sales,,\n\
         cy,Cy,Young,cy@example.org,Sales,,\n"
    ));
    let Ok(Outcome::Imported { sha1, .. }) = env.run().await else {
        panic!("the import runs: creates are not guarded\n{}", env.log());
    };
    request_undo(&env, &format!("{sha1}  user-import.csv\n"));
    env.fake.reset_calls();
    let held = env.run().await;
    let Ok(Outcome::Held {
        sha1: request,
        deactivations,
        ..
    }) = held
    else {
        panic!("expected the undo to be held, got {held:?}\n{}", env.log());
    };
    assert_eq!(deactivations, 3);
    assert_eq!(env.fake.calls(&env.domain).writes(), 0, "nothing written");
    assert!(
        env.fake
            .users(&env.domain)
            .iter()
            .all(|u| u.state == ACTIVATED)
    );
    let mails = env.mails(2).await;
    assert!(mails[1].subject.contains("HELD"), "{}", mails[1].subject);

    // Confirmed with the request's SHA1, the next run undoes the import.
    env.account.put(
        "uploads/user-import.confirm",
        format!("{request}\n").as_bytes(),
    );
    let counts = env.run_imported().await;
    assert_eq!(counts.deactivated_by_state, 3, "{counts:?}\n{}", env.log());
    assert!(
        env.fake
            .users(&env.domain)
            .iter()
            .all(|u| u.state == DEACTIVATED)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undo_gives_a_renamed_user_its_old_name_and_fields_back() {
    // With skip_unchanged, the undo also forgets the row's fingerprint: the same row is sent
    // again by the next import.
    let env = TenantEnv::with(Options {
        tenant_import: "skip_unchanged = true".into(),
        ..Options::default()
    })
    .await;
    env.fake.insert_user(
        &env.domain,
        user("ada", "Ada", "Byron", "Engineering").with_group("Staff"),
    );
    let before = env.fake.users(&env.domain);
    env.upload(
        "Username,New username,First name,Surname,Email address,Department,Groups\n\
         ada,ada.lovelace,Ada,Lovelace,ada@example.org,Engineering,Staff;Pioneers\n",
    );
    assert_eq!(env.run_imported().await.updated, 1);
    assert!(env.fake.user(&env.domain, "ada.lovelace").is_some());
    let job_id = latest_summary(&env)["job_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    request_undo(&env, &job_id);
    let counts = env.run_imported().await;
    assert_eq!(
        (counts.rows, counts.updated),
        (1, 1),
        "{counts:?}\n{}",
        env.log()
    );
    assert_eq!(
        env.fake.users(&env.domain),
        before,
        "the old name, surname and groups are back\n{}",
        env.log()
    );

    // The same row again (a new version of the file): applied again, not skipped.
    env.upload(
        "Username,New username,First name,Surname,Email address,Department,Groups\n\
         ada,ada.lovelace,Ada,Lovelace,ada@example.org,Engineering,Staff;Pioneers\n\n",
    );
    let counts = env.run_imported().await;
    assert_eq!(counts.updated, 1, "{counts:?}\n{}", env.log());
    assert!(env.fake.user(&env.domain, "ada.lovelace").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undo_of_a_run_older_than_the_retention_is_refused_with_an_email() {
    let env = TenantEnv::new().await;
    env.upload(&format!(
        "{HEADER}\nada,Ada,Lovelace,ada@example.org,Sales,,\n"
    ));
    let Ok(Outcome::Imported { sha1, .. }) = env.run().await else {
        panic!("imported\n{}", env.log());
    };
    // The run's journal, as it would be named had the run been in 2020.
    let journal = env
        .account
        .list("reports")
        .into_iter()
        .find(|n| n.ends_with(".undo.jsonl"))
        .unwrap_or_else(|| panic!("no journal: {:?}", env.account.list("reports")));
    let text = env
        .account
        .read(&format!("reports/{journal}"))
        .unwrap_or_default();
    env.account.remove(&format!("reports/{journal}"));
    env.account.put(
        &format!(
            "reports/user-import-20200101T000000Z-{}.undo.jsonl",
            &sha1[..12]
        ),
        &text,
    );
    request_undo(&env, &sha1);
    env.fake.reset_calls();
    let refused = env.run().await;
    assert!(
        matches!(&refused, Err(worker::JobError::Permanent(worker::outcome::Permanent::UndoRefused(why))) if why.contains("older than the undo retention of 30 days")),
        "{refused:?}\n{}",
        env.log()
    );
    assert_eq!(env.fake.calls(&env.domain).writes(), 0);
    let mails = env.mails(2).await;
    assert!(mails[1].subject.contains("REFUSED"), "{}", mails[1].subject);
    assert_eq!(
        env.fake.user(&env.domain, "ada").map(|u| u.state),
        Some(ACTIVATED.into())
    );
}
