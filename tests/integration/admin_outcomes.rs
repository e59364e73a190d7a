//! What the tenant admin is told, on the real stack (vsftpd, the platform fake, the SMTP sink):
//! each kind of refused file (no Username column, binary, empty, a header over a limit, too large)
//! sends one email naming its reason, is recognised by its marker at the next tick (nothing more
//! sent or written), and a corrected upload imports; the demo file's invalid count is the same
//! everywhere it is shown; lone-CR line numbers and whitespace-only lines; the reject file, fixed
//! and uploaded again; and `/uploads/user-import.rerun`.

use std::collections::BTreeMap;
use std::path::Path;

use worker::outcome::Permanent;
use worker::{JobError, Outcome};

use harness::ReceivedMail;
use harness::fixtures::{HEADER, csv_rows};
use harness::tenant_env::{FAST_SETTLE, Options, TenantEnv};

/// Every file on the account except the two every run writes by design (the log, appended, and
/// `latest-summary.json`, overwritten), by path.
fn account_files(env: &TenantEnv) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{e}"))
            .flatten()
        {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
                continue;
            }
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            if rel != "log/user-import.log" && rel != "reports/latest-summary.json" {
                out.insert(rel, std::fs::read(&path).unwrap_or_default());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&env.account.root, &env.account.root, &mut out);
    out
}

/// Every message the sink holds for the tenant's admin, in arrival order.
async fn admin_mails(env: &TenantEnv) -> Vec<ReceivedMail> {
    harness::smtp()
        .await
        .all_messages()
        .into_iter()
        .filter(|m| {
            m.envelope_to
                .iter()
                .any(|t| t.eq_ignore_ascii_case(&env.admin_email))
        })
        .collect()
}

fn usernames(env: &TenantEnv) -> Vec<String> {
    env.fake
        .users(&env.domain)
        .into_iter()
        .map(|u| u.username)
        .collect()
}

const CORRECTED: &str = "Username,First name,Surname,Email address,Department\n\
                         ann,Ann,Lee,ann@example.org,Sales\n\
                         bob,Bob,Ray,bob@example.org,HR\n";

/// One refusal kind end to end: one email naming `reason` (and the reason label), the version
/// marked, nothing more at the next tick, then the corrected file imports.
async fn refused_once_then_corrected(env: &TenantEnv, file: &[u8], label: &str, reason: &str) {
    env.account.put("uploads/user-import.csv", file);
    let first = env.run().await;
    match &first {
        Err(JobError::Permanent(p)) => assert_eq!(p.reason(), label, "{p}"),
        other => panic!("expected a refusal, got {other:?}\nlog:\n{}", env.log()),
    }
    let mails = env.mails(1).await;
    assert_eq!(mails.len(), 1, "{mails:#?}");
    assert!(
        mails[0].subject.contains("User import REFUSED") && mails[0].subject.contains(label),
        "{}",
        mails[0].subject
    );
    assert!(
        mails[0].body_text.contains(reason),
        "the email names the reason {reason:?}:\n{}",
        mails[0].body_text
    );
    let markers: Vec<String> = env
        .account
        .list("tmp")
        .into_iter()
        .filter(|n| n.ends_with(".refused"))
        .collect();
    assert_eq!(markers.len(), 1, "{:?}", env.account.list("tmp"));

    // The next tick: recognised by its marker; nothing sent, written or called.
    let (files, calls) = (account_files(env), env.fake.calls(&env.domain).total());
    let second = env.run().await;
    assert!(
        matches!(&second, Ok(Outcome::AlreadyProcessed { .. })),
        "{second:?}"
    );
    let log = env.log();
    assert!(
        log.contains("was refused before") && log.contains(&markers[0]),
        "{log}"
    );
    assert_eq!(account_files(env), files, "nothing more written");
    assert_eq!(env.fake.calls(&env.domain).total(), calls, "no API call");
    assert_eq!(admin_mails(env).await.len(), 1, "no second email");

    // A corrected upload imports at the next tick.
    env.upload(CORRECTED);
    let counts = env.run_imported().await;
    assert_eq!((counts.rows, counts.created), (2, 2), "{counts:?}");
    assert_eq!(usernames(env), ["ann", "bob"]);
    assert_eq!(
        admin_mails(env).await.len(),
        2,
        "the refusal, then the report"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_without_a_username_column_is_refused_once_and_its_correction_imports() {
    let env = TenantEnv::new().await;
    let file = b"Login,First name,Surname\nann,Ann,Lee\n";
    refused_once_then_corrected(&env, file, "unreadable-file", "no Username column").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_file_is_refused_once_and_its_correction_imports() {
    let env = TenantEnv::new().await;
    let file = b"PK\x03\x04\x14\x00\x00\x00\x08\x00\x00\x00!\x00binary\x00\x00";
    refused_once_then_corrected(&env, file, "unreadable-file", "binary").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_file_is_refused_once_and_its_correction_imports() {
    let env = TenantEnv::new().await;
    refused_once_then_corrected(&env, b"", "unreadable-file", "empty").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_over_the_column_limit_is_refused_once_naming_the_limit_and_its_correction_imports()
 {
    let env = TenantEnv::new().await;
    let extra: Vec<String> = (0..600).map(|i| format!("HR column {i}")).collect();
    let file = format!("Username,Surname,{}\nann,Lee\n", extra.join(","));
    refused_once_then_corrected(
        &env,
        file.as_bytes(),
        "unreadable-file",
        "the header row has more than 512 columns",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_longer_than_the_record_limit_is_refused_once_naming_the_limit_and_its_correction_imports()
 {
    let env = TenantEnv::new().await;
    // 80 columns of 1000 characters: over the 64 KiB record limit, under the column limit.
    let extra: Vec<String> = (0..80)
        .map(|i| format!("{i:03}{}", "h".repeat(997)))
        .collect();
    let file = format!("Username,Surname,{}\nann,Lee\n", extra.join(","));
    refused_once_then_corrected(
        &env,
        file.as_bytes(),
        "unreadable-file",
        "the header row is longer than 65536 bytes",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_over_the_size_limit_is_refused_once_by_size_and_time_and_its_correction_imports() {
    let env = TenantEnv::with(Options {
        tenant_settings: format!("{FAST_SETTLE}\nlimits = {{ max_file_bytes = 200 }}"),
        ..Options::default()
    })
    .await;
    let mut file = format!("{HEADER}\n");
    for i in 0..10 {
        file.push_str(&format!("u{i},U,Ser,u{i}@example.org,Sales,,\n"));
    }
    assert!(file.len() > 200);
    refused_once_then_corrected(
        &env,
        file.as_bytes(),
        "file-too-large",
        "larger than the limit of 200 bytes",
    )
    .await;
    // Never downloaded, so marked by its size and time, not a SHA1.
    let size = file.len();
    assert!(
        env.account
            .list("tmp")
            .iter()
            .any(|n| n.starts_with(&format!("too-large-{size}-")) && n.ends_with(".refused")),
        "{:?}",
        env.account.list("tmp")
    );
}

/// The demo's own file (`config/demo/user-import.csv`, as `scripts/demo.sh` uploads it).
fn demo_file() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/demo/user-import.csv");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The number after `prefix` in `text` (e.g. "validated 8 rows: " → 2 in "…: 2 invalid").
fn number_after(text: &str, prefix: &str) -> u64 {
    let at = text
        .find(prefix)
        .unwrap_or_else(|| panic!("no {prefix:?} in:\n{text}"));
    text[at + prefix.len()..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|e| panic!("{prefix:?} in {text}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_file_shows_one_invalid_count_in_the_log_the_summary_the_report_and_the_email() {
    let env = TenantEnv::new().await;
    env.upload(&demo_file());
    let counts = env.run_imported().await;
    let invalid = counts.invalid;
    assert!(invalid > 0, "the demo file has invalid rows: {counts:?}");

    let log = env.log();
    let validated = log
        .lines()
        .find(|l| l.contains("validated "))
        .unwrap_or_else(|| panic!("no validation line:\n{log}"));
    let rows = number_after(validated, "validated ");
    assert_eq!(
        number_after(validated, &format!("validated {rows} rows:")),
        invalid,
        "{validated}"
    );
    let end = log
        .lines()
        .find(|l| l.contains("end: imported"))
        .unwrap_or_else(|| panic!("no end line:\n{log}"));
    assert!(end.contains(&format!(" {invalid} invalid,")), "{end}");

    let summary: serde_json::Value = serde_json::from_slice(
        &env.account
            .read("reports/latest-summary.json")
            .unwrap_or_default(),
    )
    .unwrap_or_else(|e| panic!("summary: {e}"));
    assert_eq!(summary["counts"]["invalid"], invalid, "{summary}");

    let reports = env.reports();
    assert_eq!(reports.len(), 1, "{reports:?}");
    let report = csv_rows(&env.report(&reports[0]));
    let in_report = report.iter().skip(1).filter(|r| r[3] == "invalid").count() as u64;
    assert_eq!(in_report, invalid, "{report:?}");

    let mails = env.mails(1).await;
    assert_eq!(
        number_after(&mails[0].body_text, "Invalid:"),
        invalid,
        "{}",
        mails[0].body_text
    );
    assert!(
        !mails[0].body_text.contains("full sync"),
        "full sync is off: no line about it\n{}",
        mails[0].body_text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_lone_cr_line_endings_every_report_line_is_right_and_a_line_of_spaces_is_skipped() {
    let env = TenantEnv::new().await;
    // Lines: 1 header, 2 ada, 3 spaces only, 4 alan (bad department), 5 empty, 6 grace with a
    // quoted line break (6-7), 8 tabs and spaces, 9 bad mail, 10 zoe.
    let file = "Username,First name,Surname,Email address,Department\r\
                ada,Ada,Lovelace,ada@example.org,Engineering\r\
                \x20  \r\
                alan,Alan,Turing,alan@example.org,Nope\r\
                \r\
                grace,Grace,\"Hopper\rMurray\",grace@example.org,Support\r\
                \t \r\
                bad,Bad,Mail,nope,Sales\r\
                zoe,Zoe,Smith,zoe@example.org,HR\r";
    env.upload(file);
    let counts = env.run_imported().await;
    assert_eq!(
        (counts.rows, counts.created, counts.invalid),
        (5, 3, 2),
        "the line of spaces is no row: {counts:?}"
    );
    let reports = env.reports();
    let report = csv_rows(&env.report(&reports[0]));
    let lines: Vec<(String, String, String)> = report
        .iter()
        .skip(1)
        .map(|r| (r[0].clone(), r[1].clone(), r[3].clone()))
        .collect();
    let want = [
        ("2", "ada", "created"),
        ("4", "alan", "invalid"),
        ("6", "grace", "created"),
        ("9", "bad", "invalid"),
        ("10", "zoe", "created"),
    ]
    .map(|(l, u, s)| (l.to_owned(), u.to_owned(), s.to_owned()));
    assert_eq!(lines, want);
    let grace = env
        .fake
        .user(&env.domain, "grace")
        .unwrap_or_else(|| panic!("grace"));
    assert_eq!(
        grace.profile.get("surname").map(String::as_str),
        Some("Hopper\rMurray")
    );
}

/// 8 rows, 3 of them bad: a bad department (line 3), a bad email (line 6), a new user without
/// its mandatory Surname (line 8, failed at the platform). Semicolons, CRLF, a quoted cell.
const EIGHT_ROWS: &str = "Username;First name;Surname;Email address;Department\r\n\
                          u1;One;Ok;u1@example.org;Sales\r\n\
                          u2;Two;Bad;u2@example.org;Marketing\r\n\
                          u3;Three;Ok;u3@example.org;HR\r\n\
                          u4;Four;Ok;u4@example.org;Support\r\n\
                          u5;Five;\"Semi;colon\";not-an-email;Sales\r\n\
                          u6;Six;Ok;u6@example.org;Finance\r\n\
                          u7;Seven;;u7@example.org;Engineering\r\n\
                          u8;Eight;Ok;u8@example.org;Sales\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reject_file_holds_the_three_bad_rows_as_uploaded_and_once_fixed_imports_exactly_them()
{
    let env = TenantEnv::new().await;
    env.upload(EIGHT_ROWS);
    let counts = env.run_imported().await;
    assert_eq!(
        (counts.rows, counts.created, counts.invalid, counts.failed),
        (8, 5, 2, 1),
        "{counts:?}"
    );
    let rejects = env.rejects();
    assert_eq!(rejects.len(), 1, "{:?}", env.account.list("reports"));
    let reports = env.reports();
    assert_eq!(
        rejects[0],
        reports[0].replace(".csv", ".rejects.csv"),
        "named after its report"
    );
    let text = env.report(&rejects[0]);
    assert_eq!(
        text,
        "Username;First name;Surname;Email address;Department\r\n\
         u2;Two;Bad;u2@example.org;Marketing\r\n\
         u5;Five;\"Semi;colon\";not-an-email;Sales\r\n\
         u7;Seven;;u7@example.org;Engineering\r\n",
        "the original header, delimiter and rows"
    );
    let summary: serde_json::Value = serde_json::from_slice(
        &env.account
            .read("reports/latest-summary.json")
            .unwrap_or_default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        summary["rejects_path"],
        format!("/reports/{}", rejects[0]),
        "{summary}"
    );
    let mail = &env.mails(1).await[0];
    assert!(
        mail.body_text.contains(&format!("/reports/{}", rejects[0]))
            && mail
                .body_text
                .contains("3 rows that were invalid or failed"),
        "{}",
        mail.body_text
    );

    // The admin fixes the three rows in the reject file and uploads it as the next file.
    let fixed = text
        .replace("Marketing", "Sales")
        .replace("not-an-email", "u5@example.org")
        .replace("u7;Seven;;", "u7;Seven;Ok;");
    env.upload(&fixed);
    let writes_before = env.fake.calls(&env.domain).writes();
    let counts = env.run_imported().await;
    assert_eq!(
        (counts.rows, counts.created, counts.invalid, counts.failed),
        (3, 3, 0, 0),
        "{counts:?}"
    );
    assert_eq!(
        env.fake.calls(&env.domain).writes() - writes_before,
        3,
        "exactly the three fixed rows were written"
    );
    assert_eq!(
        usernames(&env),
        ["u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8"]
    );
    assert_eq!(
        env.rejects().len(),
        1,
        "a run without bad rows adds no reject file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_file_imports_the_current_file_again_once_and_is_removed() {
    let env = TenantEnv::new().await;
    env.upload(CORRECTED);
    env.run_imported().await;
    // Changed on the platform since (by hand, say): the re-run puts the file's values back.
    let mut ann = env
        .fake
        .user(&env.domain, "ann")
        .unwrap_or_else(|| panic!("ann"));
    ann.profile.insert("surname".into(), "Changed".into());
    env.fake.insert_user(&env.domain, ann);
    let skipped = env.run().await;
    assert!(
        matches!(skipped, Ok(Outcome::AlreadyProcessed { .. })),
        "{skipped:?}"
    );

    env.account.put("uploads/user-import.rerun", b"");
    let counts = env.run_imported().await;
    assert_eq!((counts.rows, counts.updated), (2, 1), "{counts:?}");
    let ann = env.fake.user(&env.domain, "ann");
    assert_eq!(
        ann.and_then(|u| u.profile.get("surname").cloned())
            .as_deref(),
        Some("Lee")
    );
    assert!(
        env.account.read("uploads/user-import.rerun").is_none(),
        "the request is used once"
    );
    assert!(env.log().contains("re-run done"), "{}", env.log());
    assert_eq!(env.markers().len(), 1, "the same marker, written again");

    let calls = env.fake.calls(&env.domain).total();
    let again = env.run().await;
    assert!(
        matches!(again, Ok(Outcome::AlreadyProcessed { .. })),
        "{again:?}"
    );
    assert_eq!(env.fake.calls(&env.domain).total(), calls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_file_tries_a_refused_version_again() {
    let env = TenantEnv::new().await;
    env.upload("Login,Surname\nann,Lee\n");
    assert!(matches!(
        env.run().await,
        Err(JobError::Permanent(Permanent::UnreadableFile(_)))
    ));
    env.account.put("uploads/user-import.rerun", b"");
    assert!(matches!(
        env.run().await,
        Err(JobError::Permanent(Permanent::UnreadableFile(_)))
    ));
    assert!(env.account.read("uploads/user-import.rerun").is_none());
    assert_eq!(admin_mails(&env).await.len(), 2, "told again, once");
    assert!(matches!(
        env.run().await,
        Ok(Outcome::AlreadyProcessed { .. })
    ));
    assert_eq!(admin_mails(&env).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_file_uploaded_with_a_new_file_is_used_up_by_that_files_run() {
    let env = TenantEnv::new().await;
    env.upload(CORRECTED);
    env.account
        .put("uploads/user-import.rerun", b"again please");
    env.run_imported().await;
    assert!(env.account.read("uploads/user-import.rerun").is_none());
    // So the next tick does not import the same file a second time.
    let calls = env.fake.calls(&env.domain).total();
    assert!(matches!(
        env.run().await,
        Ok(Outcome::AlreadyProcessed { .. })
    ));
    assert_eq!(env.fake.calls(&env.domain).total(), calls);
}
