//! The import pipeline for one tenant against the real stack: a file server (vsftpd over FTPS
//! unless a test says otherwise), the platform fake over HTTP, the SMTP sink. Each test has its own
//! tenant (account, fake, registry).
//!
//! The core scenarios run on each of the three servers the worker must work with, as three tests
//! each (`<scenario>::vsftpd`, `::proftpd`, `::sftp`): vsftpd and ProFTPD over explicit FTPS, both
//! requiring TLS session reuse on every data connection (ProFTPD with its default TLS options),
//! and OpenSSH's SFTP with the host key pinned. Each also reads the server's own log: no data
//! connection was refused, and no temporary or empty file is left on the account.

use std::time::{Duration, Instant};

use platform_fake::Faults;
use worker::outcome::{Permanent, Retryable};
use worker::{JobError, Outcome};

use harness::fixtures::{HEADER, csv_rows};
use harness::tenant_env::{Options, Server, TenantEnv};

fn three_users() -> String {
    format!(
        "{HEADER}\n\
         ada,Ada,Lovelace,ada@example.org,Engineering,Analysts;Pioneers,Activated\n\
         alan,Alan,Turing,alan@example.org,engineering,Pioneers,\n\
         grace,Grace,Hopper,grace@example.org,Support,,Deactivated\n"
    )
}

/// Runs one scenario against each of the three servers, as three tests.
macro_rules! on_every_server {
    ($name:ident) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn vsftpd() {
                super::$name(Server::Vsftpd).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn proftpd() {
                super::$name(Server::Proftpd).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sftp() {
                super::$name(Server::Sftp).await;
            }
        }
    };
}

/// What every run on every server must leave: no data connection refused by the server, no
/// temporary or empty file on the account.
async fn assert_clean(env: &TenantEnv) {
    let server = env.account.server;
    let refused = env.account.refused_data_connections().await;
    assert!(
        refused.is_empty(),
        "{server:?}: refused data connections: {refused:#?}"
    );
    let partial = env.account.partial_files();
    assert!(
        partial.is_empty(),
        "{server:?}: temporary or empty files left: {partial:?}"
    );
}

/// The one file in a folder of the account whose name ends with `suffix`.
fn one_file(env: &TenantEnv, dir: &str, suffix: &str) -> String {
    let names: Vec<String> = env
        .account
        .list(dir)
        .into_iter()
        .filter(|n| n.ends_with(suffix))
        .collect();
    assert_eq!(names.len(), 1, "one {suffix} file in {dir}: {names:?}");
    names[0].clone()
}

fn json(bytes: Option<Vec<u8>>, what: &str) -> serde_json::Value {
    let bytes = bytes.unwrap_or_else(|| panic!("no {what}"));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{what} is not JSON: {e}"))
}

/// Import, the tenant's log, the report, the email, the archive and the run summary.
async fn a_new_file_creates_its_users_with_log_report_archive_and_summary(server: Server) {
    let env = TenantEnv::on(server).await;
    let csv = three_users();
    env.upload(&csv);
    let counts = env.run_imported().await;
    assert_eq!(
        (counts.rows, counts.created, counts.invalid, counts.failed),
        (3, 3, 0, 0),
        "{server:?}: {counts:?}"
    );

    let users = env.fake.users(&env.domain);
    assert_eq!(
        users
            .iter()
            .map(|u| u.username.as_str())
            .collect::<Vec<_>>(),
        ["ada", "alan", "grace"]
    );
    let ada = &users[0];
    assert_eq!(ada.profile.get("forename").map(String::as_str), Some("Ada"));
    assert_eq!(
        ada.profile.get("mail").map(String::as_str),
        Some("ada@example.org")
    );
    assert_eq!(
        ada.profile.get("department").map(String::as_str),
        Some("Engineering")
    );
    assert!(
        ada.groups.contains("Analysts") && ada.groups.contains("Pioneers"),
        "{:?}",
        ada.groups
    );
    assert_eq!(
        users[1].profile.get("department").map(String::as_str),
        Some("Engineering"),
        "choice spelled the platform's way"
    );
    assert_eq!(users[2].state, "Deactivated");
    assert_eq!(ada.state, "Activated");

    let log = env.log();
    for needle in [
        "start:",
        "file found",
        "SHA1",
        "new version",
        "end: imported: 3 rows, 3 created",
        "archived: /archive/",
        "summary written: /reports/latest-summary.json",
    ] {
        assert!(
            log.contains(needle),
            "{server:?}: log lacks {needle:?}:\n{log}"
        );
    }
    assert!(
        !log.contains("Lovelace") && !log.contains("ada@example.org"),
        "no per-user detail in the log:\n{log}"
    );
    assert_eq!(
        log.lines().filter(|l| l.contains("start:")).count(),
        1,
        "{server:?}: each log line once:\n{log}"
    );
    assert_eq!(env.markers().len(), 1);

    // The report, and its copy in the one email.
    let report = one_file(&env, "reports", ".csv");
    let rows = csv_rows(&env.report(&report));
    assert_eq!(rows.len(), 4, "header + one row per record: {rows:?}");
    assert!(rows[1..].iter().all(|r| r[3] == "created"), "{rows:?}");
    let mails = env.mails(1).await;
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].attachments.len(), 1);
    let (_, zipped) = &mails[0].attachments[0];
    let (inner, bytes) = harness::fixtures::unzip_one(zipped);
    assert_eq!(inner, report);
    assert_eq!(csv_rows(&String::from_utf8_lossy(&bytes)), rows);

    // The archive holds the imported bytes.
    let archived = one_file(&env, "archive", ".csv");
    assert_eq!(
        env.account.read(&format!("archive/{archived}")).as_deref(),
        Some(csv.as_bytes())
    );

    // The run summary: the latest, and one next to the report.
    let latest = json(
        env.account.read("reports/latest-summary.json"),
        "latest summary",
    );
    assert_eq!(latest["outcome"], "imported", "{latest}");
    assert_eq!(latest["counts"]["created"], 3, "{latest}");
    assert_eq!(latest["email_sent"], true, "{latest}");
    assert_eq!(
        latest["archive_path"],
        format!("/archive/{archived}").as_str(),
        "{latest}"
    );
    let next_to = json(
        env.account
            .read(&format!("reports/{}", report.replace(".csv", ".json"))),
        "summary next to the report",
    );
    assert_eq!(next_to, latest);
    assert_clean(&env).await;
}
on_every_server!(a_new_file_creates_its_users_with_log_report_archive_and_summary);

async fn the_same_file_again_is_skipped_without_any_api_call(server: Server) {
    let env = TenantEnv::on(server).await;
    env.upload(&three_users());
    env.run_imported().await;
    env.fake.reset_calls();
    let outcome = env.run().await;
    assert!(
        matches!(outcome, Ok(Outcome::AlreadyProcessed { .. })),
        "{server:?}: {outcome:?}"
    );
    assert_eq!(
        env.fake.calls(&env.domain).total(),
        0,
        "{:?}",
        env.fake.calls(&env.domain)
    );
    assert!(env.log().contains("already processed"), "{}", env.log());
    assert_eq!(
        env.mails(1).await.len(),
        1,
        "no second email for a skipped file"
    );
    let latest = json(
        env.account.read("reports/latest-summary.json"),
        "latest summary",
    );
    assert_eq!(latest["outcome"], "already-processed", "{latest}");
    assert_eq!(env.account.list("archive").len(), 1, "archived once");
    assert_clean(&env).await;
}
on_every_server!(the_same_file_again_is_skipped_without_any_api_call);

async fn deleting_the_marker_runs_the_file_again(server: Server) {
    let env = TenantEnv::on(server).await;
    env.upload(&three_users());
    env.run_imported().await;
    let markers = env.markers();
    assert_eq!(markers.len(), 1);
    env.account.remove(&format!("tmp/{}", markers[0]));
    env.fake.reset_calls();
    let counts = env.run_imported().await;
    assert_eq!(
        (counts.rows, counts.unchanged),
        (3, 3),
        "re-run is harmless: {counts:?}"
    );
    let calls = env.fake.calls(&env.domain);
    assert_eq!(calls.get("SetUser"), 0, "nothing to write: {calls:?}");
    assert!(calls.get("GetUser") >= 3, "{calls:?}");
    assert_eq!(env.markers(), markers);
    assert_eq!(
        env.log().matches("end: imported").count(),
        2,
        "{server:?}: two runs:\n{}",
        env.log()
    );
    assert_clean(&env).await;
}
on_every_server!(deleting_the_marker_runs_the_file_again);

async fn an_account_with_only_uploads_imports_and_gets_its_folders(server: Server) {
    let env = TenantEnv::with(Options {
        server,
        folders: &["uploads"],
        ..Options::default()
    })
    .await;
    assert_eq!(env.account.list(""), ["uploads"]);
    env.upload(&three_users());
    let counts = env.run_imported().await;
    assert_eq!(counts.created, 3, "{server:?}: {counts:?}");
    let root = env.account.list("");
    for dir in ["uploads", "tmp", "log", "reports", "archive"] {
        assert!(
            root.contains(&dir.to_owned()),
            "{server:?}: {dir} in {root:?}"
        );
    }
    assert_eq!(env.markers().len(), 1);
    assert_eq!(env.reports().len(), 1);
    assert_eq!(env.account.list("archive").len(), 1);
    assert!(env.log().contains("end: imported: 3 rows, 3 created"));
    assert_clean(&env).await;
}
on_every_server!(an_account_with_only_uploads_imports_and_gets_its_folders);

/// A file of `n` new users, each row padded with 60 extra columns of 1,000 characters (cells
/// under the import's 1,024-character limit, rows under its 64 KiB record limit): about 60 kB a
/// row, so that archiving it takes long enough to be cut off.
fn padded_users(n: usize) -> String {
    const COLUMNS: usize = 60;
    let filler: String = std::iter::repeat_n(format!(",{}", "x".repeat(1000)), COLUMNS).collect();
    let extra: String = (1..=COLUMNS).map(|c| format!(",Notes {c}")).collect();
    let mut csv = format!("{HEADER}{extra}\n");
    for i in 0..n {
        csv.push_str(&format!(
            "big{i:03},First{i},Last{i},big{i}@example.org,Sales,,{filler}\n"
        ));
    }
    csv
}

/// Waits until an upload into `/archive` is under way (its temporary file is there), then kills
/// the account's sessions on the server; how many processes were killed.
async fn kill_during_the_archive_upload(env: &TenantEnv) -> usize {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let uploading = env
            .account
            .list("archive")
            .iter()
            .any(|n| worker::account::is_temp_name(n));
        if uploading {
            return env.account.kill_sessions();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("no archive upload started within 120 s\n{}", env.log());
}

async fn a_session_killed_during_an_upload_leaves_no_partial_file(server: Server) {
    let env = TenantEnv::on(server).await;
    env.upload(&padded_users(300));
    let (outcome, killed) = tokio::join!(env.run(), kill_during_the_archive_upload(&env));
    assert!(
        killed > 0,
        "{server:?}: no session process was found to kill"
    );
    assert!(
        matches!(outcome, Ok(Outcome::Imported { .. })),
        "{server:?}: archive trouble never fails an import: {outcome:?}\n{}",
        env.log()
    );
    let log = env.log();
    assert!(
        log.contains("the file could not be archived"),
        "{server:?}: the kill cut the archive upload off:\n{log}"
    );
    // The run went on, on a new session: its summary was written after the kill.
    let latest = json(
        env.account.read("reports/latest-summary.json"),
        "latest summary",
    );
    assert_eq!(latest["outcome"], "imported", "{latest}");
    assert_eq!(env.markers().len(), 1);
    assert_eq!(env.reports().len(), 1);
    let archive = env.account.list("archive");
    assert!(
        archive.is_empty(),
        "{server:?}: nothing archived: {archive:?}"
    );
    assert_clean(&env).await;
}
on_every_server!(a_session_killed_during_an_upload_leaves_no_partial_file);

/// Waits until the worker's download of the upload is under way (its local copy in the work
/// folder is growing), then kills the account's sessions on the server; how many were killed.
async fn kill_during_the_download(env: &TenantEnv) -> usize {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let downloading = std::fs::read_dir(env._dir.path())
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with("user-import-")
                    && name.ends_with(".csv")
                    && e.metadata().is_ok_and(|m| m.len() > 0)
            });
        if downloading {
            return env.account.kill_sessions();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("no download started within 120 s\n{}", env.log());
}

/// A session killed while the upload is being downloaded fails the run as a retryable
/// transport error (the fleet retries it); the retry imports the file, and each user is
/// created once.
async fn a_session_killed_mid_download_is_retried_and_imported_once(server: Server) {
    let env = TenantEnv::on(server).await;
    let rows = 600;
    env.upload(&padded_users(rows));
    let (first, killed) = tokio::join!(env.run(), kill_during_the_download(&env));
    assert!(
        killed > 0,
        "{server:?}: no session process was found to kill"
    );
    assert!(
        matches!(first, Err(JobError::Retryable(Retryable::Ftps(_)))),
        "{server:?}: a download cut off is a retryable transport error: {first:?}\n{}",
        env.log()
    );
    assert!(env.markers().is_empty(), "{server:?}: no marker yet");
    let counts = env.run_imported().await;
    assert_eq!(counts.created, rows as u64, "{server:?}: {counts:?}");
    let calls = env.fake.calls(&env.domain);
    assert_eq!(
        calls.get(platform_fake::call::SET_USER),
        rows as u64,
        "{server:?}: each user written once"
    );
    assert_eq!(env.markers().len(), 1);
    assert_eq!(env.reports().len(), 1);
    assert_clean(&env).await;
}
on_every_server!(a_session_killed_mid_download_is_retried_and_imported_once);

/// A key the server does not take is the tenant's credentials, not an outage: the job fails for
/// good (`bad-ftps-credentials`, whichever the protocol), and is not retried.
async fn a_wrong_password_fails_the_job_for_good_as_bad_credentials(server: Server) {
    let env = TenantEnv::on(server).await;
    env.upload(&three_users());
    let deps = env.deps_with_key("not-the-password", "", &[]);
    let outcome = worker::process_job(
        &deps,
        env.tenant(),
        worker::JobContext::manual(uuid::Uuid::new_v4()),
    )
    .await;
    let Err(error) = &outcome else {
        panic!("{server:?}: a wrong password must fail the job: {outcome:?}");
    };
    assert!(
        matches!(error, JobError::Permanent(Permanent::FtpsCredentials)),
        "{server:?}: {error:?}"
    );
    assert_eq!(error.reason(), "bad-ftps-credentials");
    assert!(!error.is_retryable(), "{server:?}: not retried");
    assert!(
        env.fake
            .users(&env.domain)
            .iter()
            .all(|u| !["ada", "alan", "grace"].contains(&u.username.as_str())),
        "{server:?}: nothing imported"
    );
}
on_every_server!(a_wrong_password_fails_the_job_for_good_as_bad_credentials);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_updates_its_users() {
    let env = TenantEnv::new().await;
    env.upload(&three_users());
    env.run_imported().await;
    env.upload(&format!(
        "{HEADER}\n\
         ada,Ada,King,ada@example.org,Engineering,Analysts;Pioneers;Countesses,Activated\n\
         alan,Alan,Turing,alan@example.org,Engineering,Pioneers,Deactivated\n\
         grace,Grace,Hopper,grace@example.org,Support,,Deactivated\n"
    ));
    let counts = env.run_imported().await;
    // A row whose Account state deactivates its user is counted apart from updates.
    assert_eq!(
        (
            counts.updated,
            counts.deactivated_by_state,
            counts.unchanged,
            counts.created
        ),
        (1, 1, 1, 0),
        "{counts:?}"
    );
    let ada = env
        .fake
        .user(&env.domain, "ada")
        .unwrap_or_else(|| panic!("ada is gone"));
    assert_eq!(ada.profile.get("surname").map(String::as_str), Some("King"));
    assert!(ada.groups.contains("Countesses"));
    assert_eq!(
        env.fake.user(&env.domain, "alan").map(|u| u.state),
        Some("Deactivated".into())
    );
    assert_eq!(env.markers().len(), 2, "one marker per processed version");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_file_means_no_file() {
    let env = TenantEnv::new().await;
    let outcome = env.run().await;
    assert!(matches!(outcome, Ok(Outcome::NoFile)), "{outcome:?}");
    assert!(env.log().contains("no file"), "{}", env.log());
    assert_eq!(env.fake.calls(&env.domain).total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_the_platform_refuses_is_a_permanent_error_in_the_log_and_the_outcome() {
    let env = TenantEnv::with(Options {
        api_key_on_platform: Some("a-rotated-key-the-worker-does-not-have".into()),
        ..Options::default()
    })
    .await;
    env.upload(&three_users());
    let outcome = env.run().await;
    assert!(
        matches!(
            outcome,
            Err(JobError::Permanent(Permanent::ApiCredentials(403)))
        ),
        "{outcome:?}"
    );
    let log = env.log();
    assert!(
        log.contains("refused the tenant's credentials") && log.contains("bad-api-credentials"),
        "{log}"
    );
    assert!(env.markers().is_empty(), "a failed import leaves no marker");
    assert!(
        !log.contains(&env.account.password),
        "the key never reaches the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ftps_password_is_a_permanent_error() {
    let env = TenantEnv::new().await;
    harness::ftps().await; // the account exists; now the worker is given another key
    let registry = env.deps.registry();
    let tenant = registry
        .get(env.tenant())
        .unwrap_or_else(|| panic!("tenant"));
    let wrong = shared::ApiKey::new("not-the-password");
    let err = env
        .deps
        .accounts
        .ftps()
        .connect(&tenant.ftps_host, tenant.ftps_port, env.tenant(), &wrong)
        .await
        .err();
    assert!(
        matches!(err, Some(worker::account::AccountError::Credentials)),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_from_an_unknown_ca_is_refused() {
    let other = harness::ftps().await.other_ca_file.clone();
    let env = TenantEnv::with(Options {
        ca_file: Some(other),
        ..Options::default()
    })
    .await;
    env.upload(&three_users());
    let outcome = env.run().await;
    match outcome {
        Err(JobError::Permanent(Permanent::FtpsCertificate(why))) => {
            assert!(
                why.to_lowercase().contains("issuer") || why.contains("certificate"),
                "{why}"
            )
        }
        other => panic!("expected a refused certificate, got {other:?}"),
    }
    assert!(env.fake.users(&env.domain).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_ends_right_through_5xx_and_429_storms() {
    let env = TenantEnv::with(Options {
        concurrency: 8,
        ..Options::default()
    })
    .await;
    let mut csv = format!("{HEADER}\n");
    for i in 0..40 {
        csv.push_str(&format!(
            "user{i:02},First{i},Last{i},u{i}@example.org,Sales,Storm,\n"
        ));
    }
    // One bad row: it must stay invalid, storms or not.
    csv.push_str("baddie,Bad,Row,not-an-email,Sales,,\n");
    env.upload(&csv);
    env.fake.set_faults(Faults {
        error_5xx_rate: 0.3,
        rate_429: 0.2,
        retry_after_secs: 1,
        ..Faults::default()
    });
    let counts = env.run_imported().await;
    env.fake.set_faults(Faults::default());
    assert_eq!(
        (
            counts.created,
            counts.invalid,
            counts.failed,
            counts.unconfirmed
        ),
        (40, 1, 0, 0),
        "{counts:?}"
    );
    let users = env.fake.users(&env.domain);
    assert_eq!(users.len(), 40);
    assert!(users.iter().all(|u| u.groups.contains("Storm")
        && u.profile.get("department").map(String::as_str) == Some("Sales")));
    let calls = env.fake.calls(&env.domain);
    assert!(
        calls.injected_5xx > 0 && calls.injected_429 > 0,
        "faults really happened: {calls:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_rows_are_reported_by_line_and_the_valid_ones_imported() {
    let env = TenantEnv::new().await;
    env.upload(&format!(
        "{HEADER},Shoe size\n\
         ok1,Ok,One,ok1@example.org,Sales,,,42\n\
         bad-mail,Bad,Mail,nope,Sales,,,1\n\
         bad-choice,Bad,Choice,bc@example.org,Marketing,,,1\n\
         ok2,Ok,Two,ok2@example.org,HR,,,1\n\
         dup,Dup,First,d1@example.org,HR,,,1\n\
         dup,Dup,Second,d2@example.org,HR,,,1\n\
         ragged,Only,Three\n\
         missing-name,,Nameless,mn@example.org,HR,,,1\n\
         ,No,Username,x@example.org,HR,,,1\n"
    ));
    let counts = env.run_imported().await;
    // "A new user needs First name" is known only after GetUser: failed, not invalid, so that
    // the validation line's invalid count is the end's.
    assert_eq!(
        (counts.rows, counts.created, counts.invalid, counts.failed),
        (9, 2, 6, 1),
        "{counts:?}"
    );
    let names: Vec<String> = env
        .fake
        .users(&env.domain)
        .into_iter()
        .map(|u| u.username)
        .collect();
    assert_eq!(names, ["ok1", "ok2"]);

    let reports = env.reports();
    assert_eq!(reports.len(), 1, "{reports:?}");
    let rows = csv_rows(&env.report(&reports[0]));
    assert_eq!(rows[0], ["line", "username", "action", "result", "message"]);
    let by_line = |line: &str| {
        rows.iter()
            .find(|r| r[0] == line)
            .unwrap_or_else(|| panic!("no line {line} in {rows:?}"))
            .clone()
    };
    assert_eq!(by_line("2")[3], "created");
    assert!(
        by_line("3")[4].contains("Email address"),
        "{:?}",
        by_line("3")
    );
    assert!(by_line("4")[4].contains("Marketing"), "{:?}", by_line("4"));
    assert!(
        by_line("6")[4].contains("more than one row")
            && by_line("7")[4].contains("more than one row")
    );
    assert!(by_line("8")[4].contains("cells"), "{:?}", by_line("8"));
    assert!(
        by_line("9")[4].contains("First name"),
        "a new user needs its mandatory fields: {:?}",
        by_line("9")
    );
    assert!(
        by_line("10")[4].contains("Username is empty"),
        "{:?}",
        by_line("10")
    );
    assert!(
        env.log().contains("Shoe size"),
        "unknown columns reported once in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_email_and_the_report_hold_one_entry_per_record() {
    let env = TenantEnv::new().await;
    env.upload(&format!(
        "{HEADER}\n\
         ada,Ada,Lovelace,ada@example.org,Engineering,,\n\
         =cmd,Evil,Formula,evil@example.org,Sales,,\n\
         bob,Bob,,bob@example.org,Sales,,\n"
    ));
    let counts = env.run_imported().await;
    assert_eq!(counts.rows, 3);
    let reports = env.reports();
    let report = env.report(&reports[0]);
    let rows = csv_rows(&report);
    assert_eq!(rows.len(), 4, "header + one row per record: {rows:?}");
    assert_eq!(rows[2][1], "'=cmd", "formula neutralised: {rows:?}");

    let mails = env.mails(1).await;
    let mail = &mails[0];
    assert!(
        mail.subject.contains(env.tenant()) && mail.subject.contains("3 rows"),
        "{}",
        mail.subject
    );
    assert!(mail.to.iter().any(|t| t == &env.admin_email));
    assert!(
        mail.body_text.contains("Created:     1") || mail.body_text.contains("Created:"),
        "{}",
        mail.body_text
    );
    assert!(
        mail.body_text.contains("line 4"),
        "problems listed: {}",
        mail.body_text
    );
    assert_eq!(mail.attachments.len(), 1);
    let (name, zipped) = &mail.attachments[0];
    let stem = reports[0].trim_end_matches(".csv");
    assert_eq!(name, &format!("{stem}.zip"));
    let (inner, bytes) = harness::fixtures::unzip_one(zipped);
    assert_eq!(inner, reports[0], "the zip holds the report's CSV");
    let attached = csv_rows(&String::from_utf8_lossy(&bytes));
    assert_eq!(attached, rows, "the attachment is the report");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_tenant_is_a_permanent_error() {
    let env = TenantEnv::new().await;
    let outcome = worker::process_job(
        &env.deps,
        "nobody-here",
        worker::JobContext::manual(uuid::Uuid::new_v4()),
    )
    .await;
    assert!(
        matches!(
            outcome,
            Err(JobError::Permanent(Permanent::UnknownTenant(_)))
        ),
        "{outcome:?}"
    );
    let _ = Retryable::Cancelled; // the retryable side is covered by the fleet tests
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_once_prints_one_json_line_and_exits_by_outcome() {
    let env = TenantEnv::new().await;
    env.upload(&three_users());
    let bin = harness::binaries::worker_binary();
    let key_var = shared::registry::secrets::SecretSource::env_var_for(
        &shared::TenantName::parse(env.tenant()).unwrap_or_else(|e| panic!("{e}")),
    );
    let run = async |tenant: &str| {
        let out = tokio::process::Command::new(&bin)
            .arg("--config")
            .arg(&env.settings_path)
            .args(["once", "--tenant", tenant])
            .env(&key_var, &env.account.password)
            .env("RUST_LOG", "debug")
            .output()
            .await
            .unwrap_or_else(|e| panic!("cannot run the worker: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "one JSON line on stdout, got {stdout:?}; stderr:\n{stderr}"
        );
        let json: serde_json::Value =
            serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("{e}: {stdout}"));
        assert!(
            !stdout.contains(&env.account.password) && !stderr.contains(&env.account.password),
            "the key is never printed"
        );
        (out.status.code(), json)
    };
    let (code, json) = run(env.tenant()).await;
    assert_eq!(code, Some(0), "{json}");
    assert_eq!(json["outcome"], "imported", "{json}");
    assert_eq!(json["counts"]["created"], 3, "{json}");
    assert_eq!(env.fake.users(&env.domain).len(), 3);

    let (code, json) = run("nobody").await;
    assert_ne!(code, Some(0));
    assert_eq!(
        (json["outcome"].as_str(), json["reason"].as_str()),
        (Some("failed"), Some("unknown-tenant")),
        "{json}"
    );
}
