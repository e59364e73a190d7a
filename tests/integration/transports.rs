//! The tenant's account over every server and transport it must work with — vsftpd and ProFTPD
//! (explicit FTPS; both require every data connection to resume the control connection's TLS
//! session) and OpenSSH (SFTP, the host key pinned) — each reached through
//! `worker::account::Connector`, as the pipeline reaches it. Every behaviour is one function run
//! against the three servers; what happened is read back from the account's folder on disk and
//! from the servers' own logs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use shared::ApiKey;
use shared::registry::{Registry, Tenant};
use shared::settings::FtpsSettings;
use tokio::io::AsyncRead;
use worker::account::ftps::FtpsConnector;
use worker::account::sftp::SftpConnector;
use worker::account::{self, Account, AccountError, Connector, Resilient};

use harness::Server as Kind;
use harness::servers::sessions::kill_sessions;

/// The account as the test sees it on disk.
enum Disk {
    Vsftpd(harness::FtpAccount),
    Proftpd(harness::ProftpdAccount),
    Sftp(harness::SftpAccount),
}

impl Disk {
    fn list(&self, dir: &str) -> Vec<String> {
        match self {
            Disk::Vsftpd(a) => a.list(dir),
            Disk::Proftpd(a) => a.list(dir),
            Disk::Sftp(a) => a.list(dir),
        }
    }
    fn read(&self, rel: &str) -> Option<Vec<u8>> {
        match self {
            Disk::Vsftpd(a) => a.read(rel),
            Disk::Proftpd(a) => a.read(rel),
            Disk::Sftp(a) => a.read(rel),
        }
    }
    fn put(&self, rel: &str, bytes: &[u8]) {
        match self {
            Disk::Vsftpd(a) => a.put(rel, bytes),
            Disk::Proftpd(a) => a.put(rel, bytes),
            Disk::Sftp(a) => a.put(rel, bytes),
        }
    }
    fn user(&self) -> &str {
        match self {
            Disk::Vsftpd(a) => &a.user,
            Disk::Proftpd(a) => &a.user,
            Disk::Sftp(a) => &a.user,
        }
    }
    fn password(&self) -> &str {
        match self {
            Disk::Vsftpd(a) => &a.password,
            Disk::Proftpd(a) => &a.password,
            Disk::Sftp(a) => &a.password,
        }
    }
}

/// One tenant on one server, with the worker's connector.
struct Env {
    kind: Kind,
    disk: Disk,
    tenant: Tenant,
    connector: Connector,
    /// The log that says whether a data connection was refused (FTPS servers).
    refusal_log: Option<PathBuf>,
}

const FULL: [&str; 4] = ["uploads", "tmp", "log", "reports"];

fn ftps_connector(ca_file: &Path) -> FtpsConnector {
    FtpsConnector::from_settings(&FtpsSettings {
        ca_file: Some(ca_file.to_owned()),
        connect_timeout: Duration::from_secs(10),
        io_timeout: Duration::from_secs(30),
    })
    .unwrap_or_else(|e| panic!("connector: {e}"))
}

fn sftp_connector() -> SftpConnector {
    SftpConnector::new(Duration::from_secs(10), Duration::from_secs(30), None)
}

/// The tenant's registry entry, read by the registry's own parser.
fn tenant(name: &str, access: &str) -> Tenant {
    let text = format!(
        "[[tenant]]\n\
         name = \"{name}\"\n\
         region = \"eu\"\n\
         portal_domain = \"{name}.learning-admin.com\"\n\
         api_base_url = \"http://127.0.0.1:9/\"\n\
         admin = {{ username = \"admin\", email = \"admin@example.com\" }}\n\
         {access}\n"
    );
    let registry =
        Registry::parse(Path::new("transports.toml"), &text).unwrap_or_else(|e| panic!("{e}"));
    registry
        .get(name)
        .cloned()
        .unwrap_or_else(|| panic!("tenant {name} not in the registry"))
}

impl Env {
    /// A tenant on `kind` whose account holds `folders`.
    async fn new(kind: Kind, folders: &[&str]) -> Env {
        Self::with_host_key(kind, folders, None).await
    }

    async fn with_host_key(kind: Kind, folders: &[&str], host_key: Option<&str>) -> Env {
        match kind {
            Kind::Vsftpd => {
                let server = harness::ftps().await;
                let account = server.create_account_with_prefix("tv");
                for sub in FULL {
                    if !folders.contains(&sub) {
                        account.remove(sub);
                    }
                }
                let tenant = tenant(
                    &account.user,
                    &format!(
                        "ftps_host = \"{}\"\nftps_port = {}",
                        server.host, server.port
                    ),
                );
                Env {
                    kind,
                    tenant,
                    connector: Connector::new(ftps_connector(&server.ca_file), sftp_connector()),
                    refusal_log: Some(server.log_file.clone()),
                    disk: Disk::Vsftpd(account),
                }
            }
            Kind::Proftpd => {
                let server = harness::proftpd().await;
                let account = server.create_account(folders);
                let tenant = tenant(
                    &account.user,
                    &format!(
                        "ftps_host = \"{}\"\nftps_port = {}",
                        server.host, server.port
                    ),
                );
                Env {
                    kind,
                    tenant,
                    connector: Connector::new(ftps_connector(&server.ca_file), sftp_connector()),
                    refusal_log: Some(server.tls_log.clone()),
                    disk: Disk::Proftpd(account),
                }
            }
            Kind::Sftp => {
                let server = harness::sftp().await;
                let account = server.create_account(folders);
                let key = host_key.unwrap_or(&server.host_key);
                let tenant = tenant(
                    &account.user,
                    &format!(
                        "transport = \"sftp\"\nftps_host = \"{}\"\nsftp_port = {}\nsftp_host_key = \"{key}\"",
                        server.host, server.port
                    ),
                );
                let ca = harness::ftps().await.ca_file.clone();
                Env {
                    kind,
                    tenant,
                    connector: Connector::new(ftps_connector(&ca), sftp_connector()),
                    refusal_log: None,
                    disk: Disk::Sftp(account),
                }
            }
        }
    }

    fn key(&self) -> ApiKey {
        ApiKey::new(self.disk.password().to_owned())
    }

    async fn connect(&self) -> Box<dyn Account> {
        self.connector
            .connect(&self.tenant, &self.key())
            .await
            .unwrap_or_else(|e| panic!("{:?}: login: {e}", self.kind))
    }

    /// Data connections the server refused for this account (none may be).
    fn refused_data_connections(&self) -> Vec<String> {
        let Some(log) = &self.refusal_log else {
            return Vec::new();
        };
        let text = std::fs::read_to_string(log).unwrap_or_default();
        match self.kind {
            // ProFTPD's TLS log does not name the user; only this module's tests use it.
            Kind::Proftpd => text
                .lines()
                .filter(|l| l.contains("rejecting data connection"))
                .map(str::to_owned)
                .collect(),
            _ => {
                let tag = format!("[{}]", self.disk.user());
                text.lines()
                    .filter(|l| l.contains(&tag))
                    .filter(|l| l.contains("\"522 ") || l.contains("\"425 "))
                    .map(str::to_owned)
                    .collect()
            }
        }
    }

    /// SIGKILLs the server-side processes of this account's sessions; how many were killed.
    fn kill_sessions(&self) -> usize {
        kill_sessions(self.kind, self.disk.user())
    }
}

/// Panics with the error (these are tests: a failure is the test's failure).
trait Must<T> {
    fn must(self) -> T;
    fn must_be(self, what: &str) -> T;
}

impl<T, E: std::fmt::Display> Must<T> for Result<T, E> {
    fn must(self) -> T {
        self.unwrap_or_else(|e| panic!("{e}"))
    }
    fn must_be(self, what: &str) -> T {
        self.unwrap_or_else(|e| panic!("{what}: {e}"))
    }
}

impl<T> Must<T> for Option<T> {
    fn must(self) -> T {
        self.unwrap_or_else(|| panic!("nothing there"))
    }
    fn must_be(self, what: &str) -> T {
        self.unwrap_or_else(|| panic!("{what}: nothing there"))
    }
}

trait MustFail {
    fn must_fail(self, what: &str) -> AccountError;
}

impl<T> MustFail for Result<T, AccountError> {
    fn must_fail(self, what: &str) -> AccountError {
        match self {
            Ok(_) => panic!("{what}"),
            Err(e) => e,
        }
    }
}

/// Downloads a whole file through the account.
async fn fetch(session: &mut dyn Account, path: &str) -> Option<Vec<u8>> {
    account::read_small(session, path, 1 << 30)
        .await
        .unwrap_or_else(|e| panic!("download {path}: {e}"))
}

/// Temporary upload names left in a folder (none may be).
fn leftovers(disk: &Disk, dir: &str) -> Vec<String> {
    disk.list(dir)
        .into_iter()
        .filter(|n| account::is_temp_name(n))
        .collect()
}

/// Runs one behaviour against each of the three servers, as three tests.
macro_rules! on_every_server {
    ($name:ident) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread")]
            async fn vsftpd() {
                super::$name(Kind::Vsftpd).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn proftpd() {
                super::$name(Kind::Proftpd).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn sftp() {
                super::$name(Kind::Sftp).await;
            }
        }
    };
}

async fn every_operation_works_through_the_connector(kind: Kind) {
    let env = Env::new(kind, &FULL).await;
    let mut s = env.connect().await;
    env.disk.put("/uploads/user-import.csv", b"Username\nada\n");

    assert_eq!(s.list("/uploads").await.must(), vec!["user-import.csv"]);
    assert_eq!(s.size("/uploads/user-import.csv").await.must(), Some(13));
    let stat = s
        .stat("/uploads/user-import.csv")
        .await
        .must()
        .must_be("stat");
    assert_eq!(stat.size, 13);
    assert!(stat.modified.is_some(), "{kind:?}: a modification time");
    assert_eq!(
        fetch(&mut *s, "/uploads/user-import.csv").await.as_deref(),
        Some(&b"Username\nada\n"[..])
    );
    assert_eq!(s.size("/uploads/missing.csv").await.must(), None);
    assert_eq!(fetch(&mut *s, "/uploads/missing.csv").await, None);
    assert!(s.list("/no-such-folder").await.must().is_empty());

    let n = s
        .upload("/reports/r.csv", &mut &b"first\n"[..])
        .await
        .must();
    assert_eq!(n, 6);
    s.upload("/reports/r.csv", &mut &b"replaced\n"[..])
        .await
        .must();
    assert_eq!(
        env.disk.read("/reports/r.csv").as_deref(),
        Some(&b"replaced\n"[..])
    );
    s.append("/log/run.log", b"one\n").await.must();
    s.append("/log/run.log", b"two\n").await.must();
    assert_eq!(
        env.disk.read("/log/run.log").as_deref(),
        Some(&b"one\ntwo\n"[..])
    );
    s.rename("/reports/r.csv", "/reports/renamed.csv")
        .await
        .must();
    assert_eq!(env.disk.list("/reports"), vec!["renamed.csv"]);
    s.remove("/reports/renamed.csv").await.must();
    s.remove("/reports/renamed.csv").await.must();
    assert!(env.disk.list("/reports").is_empty());
    s.mkdir("/archive").await.must();
    s.mkdir("/archive").await.must();
    assert!(env.disk.list("").contains(&"archive".to_owned()));
    s.keepalive().await.must();
    assert!(leftovers(&env.disk, "/reports").is_empty());
    s.quit().await;
}
on_every_server!(every_operation_works_through_the_connector);

async fn no_data_connection_is_refused_over_twelve_uploads_on_one_session(kind: Kind) {
    let env = Env::new(kind, &FULL).await;
    let mut s = env.connect().await;
    for i in 0..12 {
        let body = format!("upload {i}\n");
        s.upload(&format!("/tmp/f{i}.txt"), &mut body.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{kind:?}: upload {i}: {e}"));
        s.append("/log/run.log", body.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{kind:?}: append {i}: {e}"));
        if i % 4 == 0 {
            assert_eq!(s.list("/tmp").await.must().len(), i + 1);
            assert!(fetch(&mut *s, &format!("/tmp/f{i}.txt")).await.is_some());
        }
    }
    s.quit().await;
    assert_eq!(env.disk.list("/tmp").len(), 12);
    let log = env.disk.read("/log/run.log").unwrap_or_default();
    assert_eq!(String::from_utf8_lossy(&log).lines().count(), 12);
    let refused = env.refused_data_connections();
    assert!(refused.is_empty(), "{kind:?}: refused: {refused:#?}");
}
on_every_server!(no_data_connection_is_refused_over_twelve_uploads_on_one_session);

async fn an_account_with_only_uploads_gets_its_folders(kind: Kind) {
    let env = Env::new(kind, &["uploads"]).await;
    let mut s = env.connect().await;
    // Missing folders are "nothing there", not errors.
    assert!(s.list("/tmp").await.must().is_empty());
    assert_eq!(s.size("/log/run.log").await.must(), None);
    // An upload or append into a missing folder creates it.
    s.upload("/archive/a.csv", &mut &b"x\n"[..]).await.must();
    s.append("/log/run.log", b"line\n").await.must();
    account::ensure_folders(&mut *s).await.must();
    account::ensure_folders(&mut *s).await.must();
    let root = env.disk.list("");
    for dir in ["uploads", "tmp", "log", "reports", "archive"] {
        assert!(
            root.contains(&dir.to_owned()),
            "{kind:?}: {dir} in {root:?}"
        );
    }
    assert_eq!(
        env.disk.read("/archive/a.csv").as_deref(),
        Some(&b"x\n"[..])
    );
    assert_eq!(
        env.disk.read("/log/run.log").as_deref(),
        Some(&b"line\n"[..])
    );
    s.quit().await;
}
on_every_server!(an_account_with_only_uploads_gets_its_folders);

/// A source that gives `good` bytes, then fails like a disk read error.
struct Failing {
    good: Vec<u8>,
}

impl AsyncRead for Failing {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.good.is_empty() {
            return std::task::Poll::Ready(Err(std::io::Error::other("the source broke")));
        }
        let n = self.good.len().min(buf.remaining());
        let rest = self.good.split_off(n);
        buf.put_slice(&self.good);
        self.good = rest;
        std::task::Poll::Ready(Ok(()))
    }
}

async fn an_interrupted_upload_leaves_no_partial_file(kind: Kind) {
    let env = Env::new(kind, &FULL).await;
    let mut s = env.connect().await;
    s.upload("/reports/kept.csv", &mut &b"complete\n"[..])
        .await
        .must();
    let mut broken = Failing {
        good: vec![b'x'; 300_000],
    };
    let err = s
        .upload("/reports/new.csv", &mut broken)
        .await
        .must_fail("the upload must fail");
    eprintln!("{kind:?}: interrupted upload: {err}");
    let mut broken = Failing {
        good: vec![b'y'; 1000],
    };
    s.upload("/reports/kept.csv", &mut broken)
        .await
        .must_fail("the replacement must fail");
    // The session still works, and nothing partial is there: no new file, the old one intact.
    assert_eq!(s.list("/reports").await.must(), vec!["kept.csv"]);
    assert_eq!(env.disk.list("/reports"), vec!["kept.csv"]);
    assert_eq!(
        env.disk.read("/reports/kept.csv").as_deref(),
        Some(&b"complete\n"[..])
    );
    s.quit().await;
}
on_every_server!(an_interrupted_upload_leaves_no_partial_file);

/// A source of `total` bytes that kills the account's sessions once `after` bytes were read.
struct KillingSource {
    kind: Kind,
    user: String,
    total: usize,
    read: usize,
    after: usize,
    killed: usize,
}

impl AsyncRead for KillingSource {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.read >= self.after && self.killed == 0 {
            self.killed = kill_sessions(self.kind, &self.user);
        }
        let n = (self.total - self.read).min(buf.remaining()).min(64 * 1024);
        buf.put_slice(&vec![b'k'; n]);
        self.read += n;
        std::task::Poll::Ready(Ok(()))
    }
}

async fn a_session_killed_mid_upload_leaves_no_partial_or_temporary_file(kind: Kind) {
    let env = Env::new(kind, &FULL).await;
    let mut s = env.connect().await;
    s.upload("/reports/kept.csv", &mut &b"complete\n"[..])
        .await
        .must();
    let mut source = KillingSource {
        kind,
        user: env.disk.user().to_owned(),
        total: 256 << 20,
        read: 0,
        after: 4 << 20,
        killed: 0,
    };
    let err = s
        .upload("/reports/kept.csv", &mut source)
        .await
        .must_fail("the upload must fail");
    assert!(
        source.killed > 0,
        "{kind:?}: no session process was found to kill"
    );
    assert!(
        matches!(err, AccountError::Transport(_) | AccountError::Timeout(_)),
        "{kind:?}: {err:?}"
    );
    assert!(
        source.read < source.total,
        "{kind:?}: the upload finished before the kill"
    );
    assert_eq!(
        env.disk.list("/reports"),
        vec!["kept.csv"],
        "{kind:?}: no temporary file left"
    );
    assert_eq!(
        env.disk.read("/reports/kept.csv").as_deref(),
        Some(&b"complete\n"[..])
    );
    s.quit().await;
}
on_every_server!(a_session_killed_mid_upload_leaves_no_partial_or_temporary_file);

async fn a_wrong_password_is_refused_as_credentials(kind: Kind) {
    let env = Env::new(kind, &FULL).await;
    let err = env
        .connector
        .connect(&env.tenant, &ApiKey::new("not-the-password"))
        .await
        .must_fail("a wrong password must be refused");
    assert!(
        matches!(err, AccountError::Credentials),
        "{kind:?}: {err:?}"
    );
}
on_every_server!(a_wrong_password_is_refused_as_credentials);

async fn a_session_killed_mid_download_fails_as_transport_trouble_and_the_next_command_logs_in_again(
    kind: Kind,
) {
    let env = Env::new(kind, &FULL).await;
    env.disk.put("/uploads/big.csv", &vec![b'z'; 64 << 20]);
    let mut s = env.connect().await;
    let mut killed = 0;
    let mut seen = 0u64;
    let mut sink = tokio::io::sink();
    let result = s
        .download("/uploads/big.csv", &mut sink, 1 << 30, &mut |chunk| {
            seen += chunk.len() as u64;
            if killed == 0 {
                killed = env.kill_sessions();
            }
        })
        .await;
    assert!(killed > 0, "{kind:?}: no session process was found to kill");
    let err = result.must_fail("the download must fail");
    assert!(
        matches!(err, AccountError::Transport(_) | AccountError::Timeout(_)),
        "{kind:?}: {err:?} is not transport trouble (retryable)"
    );
    assert!(
        seen < 64 << 20,
        "{kind:?}: the whole file arrived before the kill"
    );
    // The same session object carries on, on a new connection.
    assert_eq!(s.list("/uploads").await.must(), vec!["big.csv"]);
    s.quit().await;
}
on_every_server!(
    a_session_killed_mid_download_fails_as_transport_trouble_and_the_next_command_logs_in_again
);

async fn a_session_closed_while_idle_is_logged_in_again_before_the_next_write(kind: Kind) {
    let env = Env::new(kind, &FULL).await;
    let mut s = Resilient::open(env.connector.clone(), env.tenant.clone(), env.key())
        .await
        .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
    // Every transfer is checked first, as one after a long import would be.
    s.set_probe_after(Duration::ZERO);
    s.append("/log/run.log", b"before\n").await.must();
    assert!(env.kill_sessions() > 0, "{kind:?}: no session to kill");
    s.upload("/reports/r.csv", &mut &b"report\n"[..])
        .await
        .unwrap_or_else(|e| panic!("{kind:?}: upload after the kill: {e}"));
    assert!(env.kill_sessions() > 0, "{kind:?}: no session to kill");
    s.append("/log/run.log", b"after\n").await.must();
    assert!(env.kill_sessions() > 0, "{kind:?}: no session to kill");
    assert_eq!(s.size("/reports/r.csv").await.must(), Some(7));
    assert_eq!(s.reconnects(), 3);
    assert_eq!(
        env.disk.read("/reports/r.csv").as_deref(),
        Some(&b"report\n"[..])
    );
    assert_eq!(
        env.disk.read("/log/run.log").as_deref(),
        Some(&b"before\nafter\n"[..]),
        "{kind:?}: each line once"
    );
    Box::new(s).quit().await;
}
on_every_server!(a_session_closed_while_idle_is_logged_in_again_before_the_next_write);

#[tokio::test(flavor = "multi_thread")]
async fn an_sftp_server_whose_host_key_is_not_the_pinned_one_is_refused() {
    let other = harness::sftp().await.other_host_key.clone();
    let env = Env::with_host_key(Kind::Sftp, &FULL, Some(&other)).await;
    let err = env
        .connector
        .connect(&env.tenant, &env.key())
        .await
        .must_fail("a different host key must be refused");
    let AccountError::HostKey(why) = &err else {
        panic!("{err:?} is not a host key refusal");
    };
    assert!(why.contains("not the pinned key"), "{why}");
    assert!(why.contains("SHA256:"), "the fingerprints are shown: {why}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_sftp_account_can_log_in_with_a_private_key_from_the_secrets_folder() {
    let env = Env::new(Kind::Sftp, &FULL).await;
    let Disk::Sftp(account) = &env.disk else {
        unreachable!()
    };
    let secrets = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let key_file = secrets.path().join("client");
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key_file)
        .status()
        .unwrap_or_else(|e| panic!("ssh-keygen: {e}"));
    assert!(out.success());
    let public = std::fs::read_to_string(key_file.with_extension("pub")).unwrap_or_default();
    account.authorize_key(public.trim());
    std::fs::rename(
        &key_file,
        secrets.path().join(format!("{}.ssh-key", account.user)),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let ca = harness::ftps().await.ca_file.clone();
    let connector = Connector::new(
        ftps_connector(&ca),
        SftpConnector::new(
            Duration::from_secs(10),
            Duration::from_secs(30),
            Some(secrets.path().to_owned()),
        ),
    );
    // A wrong API key: only the private key can let it in.
    let mut s = connector
        .connect(&env.tenant, &ApiKey::new("not-the-password"))
        .await
        .unwrap_or_else(|e| panic!("public-key login: {e}"));
    assert!(s.list("/uploads").await.must().is_empty());
    s.quit().await;
    let log = std::fs::read_to_string(&harness::sftp().await.log_file).unwrap_or_default();
    assert!(
        log.lines()
            .any(|l| l.contains("Accepted publickey for") && l.contains(&account.user)),
        "sshd did not log a public-key login for {}",
        account.user
    );
}

/// Twelve uploads and lists on one FTPS session straight from the FTPS connector, so the
/// session's own count of logins for fresh TLS tickets can be read.
async fn twelve_transfers(server: &harness::ProftpdServer) -> u32 {
    let account = server.create_account(&FULL);
    let mut s = ftps_connector(&server.ca_file)
        .connect(
            &server.host,
            server.port,
            &account.user,
            &ApiKey::new(account.password.clone()),
        )
        .await
        .must_be("login");
    for i in 0..12 {
        s.upload(&format!("/tmp/f{i}.txt"), &mut &b"x"[..])
            .await
            .must_be("upload");
        assert_eq!(s.list("/tmp").await.must().len(), i + 1);
    }
    let relogins = s.relogins();
    Box::new(s).quit().await;
    relogins
}

#[tokio::test(flavor = "multi_thread")]
async fn proftpd_over_tls_1_2_resumes_the_one_control_session_on_every_data_connection() {
    let server = harness::proftpd_tls12().await;
    let relogins = twelve_transfers(server).await;
    assert_eq!(relogins, 0, "a TLS 1.2 session is reused, never used up");
    let log = std::fs::read_to_string(&server.tls_log).unwrap_or_default();
    assert!(!log.contains("rejecting data connection"), "{log}");
    assert!(
        log.lines()
            .filter(|l| l.contains("client reused TLS session for data connection"))
            .count()
            >= 24,
        "every data connection resumed over TLS 1.2:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn proftpd_over_tls_1_3_gets_fresh_tickets_instead_of_a_refused_data_connection() {
    let server = harness::proftpd().await;
    let relogins = twelve_transfers(server).await;
    // ProFTPD gives two tickets at login and none on an upload: a new login every few uploads.
    assert!(relogins > 0, "the tickets were never used up?");
    let log = std::fs::read_to_string(&server.tls_log).unwrap_or_default();
    assert!(!log.contains("rejecting data connection"), "{log}");
    assert!(
        log.contains("TLSv1.3 connection accepted"),
        "the control connections spoke TLS 1.3:\n{log}"
    );
    assert!(
        log.contains("client reused TLS session for data connection"),
        "data connections resumed:\n{log}"
    );
    eprintln!("ProFTPD TLS 1.3: 24 data connections, {relogins} extra logins");
}

/// Every file of the hostile-input corpus (`tests/corpus/`: CRLF, lone CR, BOMs, UTF-16, NUL
/// bytes, binary) fetched from each server arrives byte for byte, with the SHA1 of the source:
/// no transfer mode or server rewrites line endings or bytes before the import sees them.
async fn every_corpus_file_arrives_byte_for_byte(kind: Kind) {
    let env = Env::new(kind, &FULL).await;
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&corpus)
        .must()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "csv"))
        .collect();
    files.sort();
    assert!(files.len() >= 30, "the corpus is there: {files:?}");
    let work = tempfile::tempdir().must();
    let mut s = env.connect().await;
    for file in &files {
        let bytes = std::fs::read(file).must();
        env.disk.put("/uploads/user-import.csv", &bytes);
        let local =
            account::fetch_file(s.as_mut(), "/uploads/user-import.csv", 1 << 30, work.path())
                .await
                .must()
                .unwrap_or_else(|| panic!("{kind:?}: {} is not on the account", file.display()));
        let got = std::fs::read(local.file.path()).must();
        assert!(
            got == bytes,
            "{kind:?}: {} arrived changed ({} bytes sent, {} received)",
            file.display(),
            bytes.len(),
            got.len()
        );
        assert_eq!(
            local.sha1.to_string(),
            hex::encode(<sha1::Sha1 as sha1::Digest>::digest(&bytes)),
            "{kind:?}: {}",
            file.display()
        );
    }
    s.quit().await;
}
on_every_server!(every_corpus_file_arrives_byte_for_byte);
