//! `worker doctor`, run as a process against a tenant's real stack (vsftpd or OpenSSH SFTP, the
//! platform fake, the SMTP sink): all green for a good tenant; for each of a wrong key, a
//! certificate from an unknown CA, a missing folder, an unknown admin and an unreachable SMTP
//! host, the step that is wrong fails with its hint and the exit code is not 0. Nothing changes
//! on the account (its files before and after; no probe left) or on the platform (read calls
//! only). Its SMTP dialogue over STARTTLS and TLS, against a relay of the test's own with the
//! harness's certificates: verified, and nothing sent before it is.

use std::path::Path;

use platform_fake::{FakeConfig, FakeUser, TenantSeed};
use serde_json::Value;

use harness::fixtures::{SettingsFile, TenantEntry};
use harness::servers::smtp_relay::{relay, settings as smtp_settings};
use harness::tenant_env::{Options, TenantEnv};

const CSV: &str = "Username,First name,Surname,Department\nann,Ann,Lee,Sales\n";

/// What one run of the doctor answered.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("{e}: stdout {:?}\nstderr:\n{}", self.stdout, self.stderr))
    }
}

fn key_var(tenant: &str) -> String {
    shared::registry::secrets::SecretSource::env_var_for(
        &shared::TenantName::parse(tenant).unwrap_or_else(|e| panic!("{e}")),
    )
}

/// `worker --config SETTINGS doctor ARGS…` with the tenant's key (`key`) and more variables.
async fn doctor(
    settings: &Path,
    tenant: &str,
    key: &str,
    env: &[(&str, &str)],
    args: &[&str],
) -> Run {
    let out = tokio::process::Command::new(harness::binaries::worker_binary())
        .arg("--config")
        .arg(settings)
        .arg("doctor")
        .args(args)
        .env(key_var(tenant), key)
        .envs(env.iter().copied())
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run the worker: {e}"));
    let run = Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        !run.stdout.contains(key) && !run.stderr.contains(key),
        "the key is never printed"
    );
    run
}

/// The doctor's JSON for the env's tenant, with its key and `env` variables.
async fn doctor_json(env: &TenantEnv, key: &str, vars: &[(&str, &str)]) -> (Option<i32>, Value) {
    let run = doctor(
        &env.settings_path,
        env.tenant(),
        key,
        vars,
        &["--tenant", env.tenant(), "--json"],
    )
    .await;
    (run.code, run.json())
}

fn step<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["step"] == name))
        .unwrap_or_else(|| panic!("no step {name} in {report:#}"))
}

fn verdict<'a>(report: &'a Value, name: &str) -> &'a str {
    step(report, name)["verdict"].as_str().unwrap_or("")
}

/// Whether a step's text field (`detail`, `hint`) holds `text`.
fn says(step: &Value, field: &str, text: &str) -> bool {
    step[field].as_str().is_some_and(|t| t.contains(text))
}

/// A tenant that would run: every folder, a file, the admin on the platform.
async fn good_tenant(opts: Options) -> TenantEnv {
    let env = TenantEnv::with(opts).await;
    env.account.make_folder("archive");
    env.upload(CSV);
    env.fake.insert_user(
        &env.domain,
        FakeUser::new(format!("{}.admin", env.tenant())),
    );
    env
}

/// Every step ok: the verdicts by name.
fn assert_all_ok(report: &Value) {
    let steps = report["steps"].as_array().cloned().unwrap_or_default();
    assert_eq!(steps.len(), 10, "{report:#}");
    for s in &steps {
        assert_eq!(s["verdict"], "ok", "{s:#}\n{report:#}");
    }
    assert_eq!(report["would_run"], true);
}

/// No probe file of the doctor anywhere on the account.
fn no_probe_left(files: &std::collections::BTreeMap<String, (Option<u64>, std::time::SystemTime)>) {
    let left: Vec<_> = files
        .keys()
        .filter(|p| p.contains("user-import-doctor") || p.contains(".part-"))
        .collect();
    assert!(left.is_empty(), "left on the account: {left:?}");
}

/// The platform saw read calls only, and these ones.
fn only_reads(env: &TenantEnv) {
    let calls = env.fake.calls(&env.domain);
    assert_eq!(calls.writes(), 0, "{calls:?}");
    for call in calls.calls.keys() {
        assert!(
            call == "GetProfileFields" || call == "GetUser",
            "a call other than a read: {call} in {calls:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_tenant_is_all_green_and_nothing_changes_on_the_account_or_the_platform() {
    let env = good_tenant(Options::default()).await;
    let before = env.account.snapshot();
    let (code, report) = doctor_json(&env, &env.account.password, &[]).await;
    assert_eq!(code, Some(0), "{report:#}");
    assert_all_ok(&report);
    assert_eq!(report["tenant"], env.tenant());
    let file = &step(&report, "file")["data"];
    assert_eq!(file["size"], CSV.len(), "{file:#}");
    assert!(
        file["modified"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{file:#}"
    );
    let api = &step(&report, "api")["data"];
    assert!(
        api["header"]
            .as_str()
            .is_some_and(|h| h.starts_with("Username,First name,Surname")),
        "{api:#}"
    );
    assert!(
        api["mandatory"]
            .as_array()
            .is_some_and(|m| m.contains(&"Department".into()))
    );
    let folders = step(&report, "folders")["data"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(folders.len(), 5, "{folders:?}");
    assert!(folders.iter().all(|f| f["writable"] == true), "{folders:?}");
    assert_eq!(
        step(&report, "schedule")["data"]["next"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
    assert!(
        step(&report, "smtp")["detail"]
            .as_str()
            .is_some_and(|d| d.contains("no email sent")),
        "{report:#}"
    );

    // Nothing changed: the same files with the same sizes and times, no probe left.
    let after = env.account.snapshot();
    assert_eq!(before, after);
    no_probe_left(&after);
    // The platform: GetProfileFields and GetUser, nothing else.
    only_reads(&env);
    let calls = env.fake.calls(&env.domain);
    assert_eq!(
        (calls.get("GetProfileFields"), calls.get("GetUser")),
        (1, 1),
        "{calls:?}"
    );
    // No email: the SMTP dialogue stops before DATA.
    let mails = harness::smtp().await.all_messages();
    assert!(
        !mails
            .iter()
            .any(|m| m.envelope_to.iter().any(|t| t == &env.admin_email)),
        "{mails:#?}"
    );

    // The checklist for people, and `--all`, say the same.
    let human = doctor(
        &env.settings_path,
        env.tenant(),
        &env.account.password,
        &[],
        &["--tenant", env.tenant()],
    )
    .await;
    assert_eq!(human.code, Some(0), "{}", human.stdout);
    assert!(
        human
            .stdout
            .contains(&format!("{} would run", env.tenant())),
        "{}",
        human.stdout
    );
    let all = doctor(
        &env.settings_path,
        env.tenant(),
        &env.account.password,
        &[],
        &["--all", "--json"],
    )
    .await;
    assert_eq!(all.code, Some(0), "{}", all.stdout);
    let all = all.json();
    assert_eq!(all["would_run"], true);
    assert_eq!(all["tenants"].as_array().map(Vec::len), Some(1));
    assert_eq!(env.account.snapshot(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_fails_the_login_with_its_hint_and_skips_the_folders() {
    let env = good_tenant(Options::default()).await;
    let before = env.account.snapshot();
    let (code, report) = doctor_json(&env, "not-the-right-key", &[]).await;
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(report["would_run"], false);
    assert_eq!(verdict(&report, "connect"), "ok");
    assert_eq!(verdict(&report, "tls"), "ok");
    let login = step(&report, "login");
    assert_eq!(login["verdict"], "fail", "{report:#}");
    assert!(
        login["hint"].as_str().is_some_and(|h| h.contains("key")),
        "{login:#}"
    );
    assert_eq!(verdict(&report, "folders"), "skipped");
    assert_eq!(verdict(&report, "file"), "skipped");
    // The platform refuses the same wrong key.
    assert_eq!(verdict(&report, "api"), "fail");
    assert_eq!(verdict(&report, "admin"), "skipped");
    assert_eq!(env.account.snapshot(), before);
    only_reads(&env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_an_unknown_ca_fails_the_tls_step_with_its_hint() {
    let other_ca = harness::ftps().await.other_ca_file.clone();
    let env = good_tenant(Options {
        ca_file: Some(other_ca),
        ..Options::default()
    })
    .await;
    let (code, report) = doctor_json(&env, &env.account.password, &[]).await;
    assert_ne!(code, Some(0), "{report:#}");
    assert_eq!(verdict(&report, "connect"), "ok");
    let tls = step(&report, "tls");
    assert_eq!(tls["verdict"], "fail", "{report:#}");
    assert!(says(tls, "detail", "certificate"), "{tls:#}");
    assert!(says(tls, "hint", "ftps.ca_file"), "{tls:#}");
    for later in ["login", "folders", "file"] {
        assert_eq!(verdict(&report, later), "skipped", "{later}");
    }
    // The platform and the mail route are not the account's business: still checked.
    assert_eq!(verdict(&report, "api"), "ok");
    assert_eq!(verdict(&report, "smtp"), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_folder_fails_the_folders_step_naming_it_and_is_not_created() {
    let env = good_tenant(Options::default()).await;
    env.account.remove("reports");
    let before = env.account.snapshot();
    let (code, report) = doctor_json(&env, &env.account.password, &[]).await;
    assert_ne!(code, Some(0), "{report:#}");
    let folders = step(&report, "folders");
    assert_eq!(folders["verdict"], "fail", "{report:#}");
    assert!(
        says(folders, "detail", "/reports is missing"),
        "{folders:#}"
    );
    assert!(says(folders, "hint", "create"), "{folders:#}");
    // The others were probed and are fine; the file step still runs.
    let present: Vec<_> = folders["data"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|f| f["writable"] == true)
        .collect();
    assert_eq!(present.len(), 4, "{folders:#}");
    assert_eq!(verdict(&report, "file"), "ok");
    let after = env.account.snapshot();
    assert_eq!(before, after, "the doctor creates nothing");
    assert!(!after.contains_key("reports"));
    no_probe_left(&after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_that_refuses_writes_fails_the_folders_step_as_not_writable() {
    use std::os::unix::fs::PermissionsExt;
    let env = good_tenant(Options::default()).await;
    let log = env.account.path("log");
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o555))
        .unwrap_or_else(|e| panic!("{e}"));
    let before = env.account.snapshot();
    let (code, report) = doctor_json(&env, &env.account.password, &[]).await;
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(code, Some(0), "{report:#}");
    let folders = step(&report, "folders");
    assert_eq!(folders["verdict"], "fail", "{report:#}");
    assert!(
        says(folders, "detail", "/log is not writable"),
        "{folders:#}"
    );
    let after = env.account.snapshot();
    assert_eq!(before, after);
    no_probe_left(&after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_admin_fails_the_admin_step_with_its_hint() {
    let env = TenantEnv::new().await;
    env.account.make_folder("archive");
    let (code, report) = doctor_json(&env, &env.account.password, &[]).await;
    assert_ne!(code, Some(0), "{report:#}");
    assert_eq!(verdict(&report, "api"), "ok");
    let admin = step(&report, "admin");
    assert_eq!(admin["verdict"], "fail", "{report:#}");
    assert!(
        says(admin, "detail", &format!("{}.admin", env.tenant())),
        "{admin:#}"
    );
    assert!(says(admin, "hint", "admin.username"), "{admin:#}");
    // No file yet is a warning, not a failure: the admin alone makes it not run.
    assert_eq!(verdict(&report, "file"), "warn");
    let failed: Vec<_> = report["steps"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|s| s["verdict"] != "ok" && s["verdict"] != "warn")
        .collect();
    assert_eq!(failed.len(), 1, "{failed:#?}");
    only_reads(&env);
    assert!(env.fake.users(&env.domain).is_empty(), "no user created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_smtp_host_fails_the_smtp_step_with_its_hint() {
    let env = good_tenant(Options::default()).await;
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"));
    let port = closed.to_string();
    let (code, report) = doctor_json(
        &env,
        &env.account.password,
        &[("USER_IMPORT__SMTP__PORT", &port)],
    )
    .await;
    assert_ne!(code, Some(0), "{report:#}");
    let smtp = step(&report, "smtp");
    assert_eq!(smtp["verdict"], "fail", "{report:#}");
    assert!(
        smtp["detail"].as_str().is_some_and(|d| d.contains(&port)),
        "{smtp:#}"
    );
    assert!(says(smtp, "hint", "smtp.host"), "{smtp:#}");
    for other in ["connect", "tls", "login", "folders", "file", "api", "admin"] {
        assert_eq!(verdict(&report, other), "ok", "{other}: {report:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_test_email_sends_the_admin_one_message() {
    let env = good_tenant(Options::default()).await;
    let run = doctor(
        &env.settings_path,
        env.tenant(),
        &env.account.password,
        &[],
        &["--tenant", env.tenant(), "--json", "--send-test-email"],
    )
    .await;
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    let mails = env.mails(1).await;
    assert_eq!(mails.len(), 1, "{mails:#?}");
    assert!(
        mails[0].subject.contains("test email"),
        "{}",
        mails[0].subject
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_tenant_fails_the_registry_step_and_skips_the_rest() {
    let env = TenantEnv::new().await;
    let run = doctor(
        &env.settings_path,
        "nobody-here",
        "whatever-key",
        &[],
        &["--tenant", "nobody-here", "--json"],
    )
    .await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let report = run.json();
    assert_eq!(verdict(&report, "registry"), "fail");
    assert_eq!(verdict(&report, "schedule"), "skipped");
}

/// An SFTP tenant on the harness's sshd with every folder and a file, its platform fake (the
/// admin there), and its settings file; `host_key` is the key pinned in the registry.
struct SftpTenant {
    account: harness::SftpAccount,
    fake: platform_fake::FakeHandle,
    domain: String,
    settings_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn sftp_tenant(host_key: &str) -> SftpTenant {
    let server = harness::sftp().await;
    let account = server.create_account(&["uploads", "tmp", "log", "reports", "archive"]);
    account.put("uploads/user-import.csv", CSV.as_bytes());
    let smtp = harness::smtp().await;
    let domain = format!("{}.learning-admin.com", account.user);
    let fake = platform_fake::spawn(FakeConfig {
        tenants: vec![TenantSeed::new(domain.clone(), account.password.clone())],
        ..FakeConfig::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let admin = format!("{}.admin", account.user);
    fake.insert_user(&domain, FakeUser::new(admin.clone()));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let registry = TenantEntry {
        portal_domain: domain.clone(),
        api_base_url: fake.base_url(),
        ftps_host: server.host.clone(),
        admin_username: admin,
        admin_email: format!("admin@{}.example.com", account.user),
        extra: format!(
            "transport = \"sftp\"\nsftp_port = {}\nsftp_host_key = \"{}\"\nschedule = \"30 2 * * *\"\ntimezone = \"Europe/Berlin\"",
            server.port, host_key
        ),
        ..TenantEntry::new(&account.user)
    }
    .toml();
    let registry_path = dir.path().join("tenants.toml");
    std::fs::write(&registry_path, registry).unwrap_or_else(|e| panic!("{e}"));
    let settings_path = dir.path().join("settings.toml");
    SettingsFile {
        work_dir: dir.path().to_owned(),
        registry: registry_path,
        ca_file: harness::ftps().await.ca_file.clone(),
        smtp_host: smtp.host.clone(),
        smtp_port: smtp.port,
        smtp_timeout: Some("10s"),
        request_timeout: "3s",
        redis_url: harness::redis_url(),
        redis_prefix: harness::unique("doctor"),
        import_concurrency: 1,
        progress_every: 2,
        extra: String::new(),
    }
    .write(&settings_path);

    SftpTenant {
        account,
        fake,
        domain,
        settings_path,
        _dir: dir,
    }
}

impl SftpTenant {
    async fn doctor(&self) -> Run {
        doctor(
            &self.settings_path,
            &self.account.user,
            &self.account.password,
            &[],
            &["--tenant", &self.account.user, "--json"],
        )
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sftp_tenant_is_all_green_with_its_pinned_host_key_and_nothing_changes() {
    let t = sftp_tenant(&harness::sftp().await.host_key).await;
    let (account, fake, domain) = (&t.account, &t.fake, &t.domain);
    let before = account.snapshot();
    let run = t.doctor().await;
    let report = run.json();
    assert_eq!(run.code, Some(0), "{report:#}\n{}", run.stderr);
    let names: Vec<_> = report["steps"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|s| s["step"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(names.contains(&"host_key".to_owned()), "{names:?}");
    for s in report["steps"].as_array().cloned().unwrap_or_default() {
        assert_eq!(s["verdict"], "ok", "{s:#}");
    }
    let next = &step(&report, "schedule")["data"]["next"][0]["local"];
    assert!(next.as_str().is_some_and(|t| t.contains("02:30")), "{next}");
    let after = account.snapshot();
    assert_eq!(before, after);
    no_probe_left(&after);
    let calls = fake.calls(domain);
    assert_eq!(calls.writes(), 0, "{calls:?}");
    assert_eq!(calls.total(), 2, "{calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sftp_server_whose_host_key_is_not_the_pinned_one_fails_the_host_key_step() {
    let t = sftp_tenant(&harness::sftp().await.other_host_key).await;
    let before = t.account.snapshot();
    let run = t.doctor().await;
    let report = run.json();
    assert_eq!(run.code, Some(1), "{report:#}");
    assert_eq!(verdict(&report, "connect"), "ok");
    let host_key = step(&report, "host_key");
    assert_eq!(host_key["verdict"], "fail", "{report:#}");
    assert!(says(host_key, "hint", "sftp_host_key"), "{host_key:#}");
    for later in ["login", "folders", "file"] {
        assert_eq!(verdict(&report, later), "skipped", "{later}");
    }
    assert_eq!(t.account.snapshot(), before);
}

const OVER_TLS: [&str; 5] = [
    "EHLO fleet.example.com",
    "MAIL FROM:<ui@fleet.example.com>",
    "RCPT TO:<admin@acme.example>",
    "RSET",
    "QUIT",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smtp_check_upgrades_with_starttls_and_asks_for_the_admin_over_tls_only() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let certs = harness::servers::certs::generate(dir.path());
    let (port, relay) = relay(&certs, false);
    let settings = smtp_settings(port, shared::settings::SmtpTls::Starttls, &certs.ca_file);
    let got = worker::doctor::smtp::probe_recipient(&settings, "admin@acme.example")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(got.tls);
    let seen = relay.join().unwrap_or_default().commands;
    assert_eq!(
        seen[..2],
        ["plain: EHLO fleet.example.com", "plain: STARTTLS"]
    );
    assert_eq!(seen[2..], OVER_TLS, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smtp_check_speaks_tls_from_the_first_byte_when_told_to() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let certs = harness::servers::certs::generate(dir.path());
    let (port, relay) = relay(&certs, true);
    let settings = smtp_settings(port, shared::settings::SmtpTls::Tls, &certs.ca_file);
    let got = worker::doctor::smtp::probe_recipient(&settings, "admin@acme.example").await;
    assert!(got.is_ok_and(|a| a.tls));
    assert_eq!(relay.join().unwrap_or_default().commands, OVER_TLS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_certificate_from_an_unknown_ca_is_refused_before_any_address_is_sent() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let certs = harness::servers::certs::generate(dir.path());
    let (port, relay) = relay(&certs, false);
    let settings = smtp_settings(
        port,
        shared::settings::SmtpTls::Starttls,
        &certs.other_ca_file,
    );
    let got = worker::doctor::smtp::probe_recipient(&settings, "admin@acme.example").await;
    assert!(
        matches!(got, Err(worker::doctor::smtp::SmtpError::Tls { .. })),
        "{got:?}"
    );
    let seen = relay.join().unwrap_or_default().commands;
    assert_eq!(seen, ["plain: EHLO fleet.example.com", "plain: STARTTLS"]);
}
