//! vsftpd with explicit FTPS, one per test process, and per-test FTP accounts (real Linux users).
//!
//! The configuration follows the recipe in `shared/STACK.md` (the same one `scripts/stack.sh`
//! writes): chroot with `allow_writeable_chroot`, TLS forced for logins and data, session reuse
//! required on data connections, passive ports on a block found free at start-up and announced
//! as 127.0.0.1. Accounts carry the creating test process's pid in their comment field so a
//! later test process can delete the accounts of one that was killed before its `Drop`s ran.

use super::files::AccountFiles;
use std::fmt;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::certs::{self, TestCerts};
use super::process::{self, Output, Supervised, run};
use super::process_dir;
use crate::unique;

/// The comment (GECOS) field of harness-made users starts with this, followed by the pid.
const GECOS_TAG: &str = "ui-it pid=";

/// The FTPS server of this test process.
#[derive(Debug)]
pub struct FtpsServer {
    /// Always "127.0.0.1" (the certificate also names `localhost`).
    pub host: String,
    pub port: u16,
    /// The CA that signed the server certificate: trust only this one.
    pub ca_file: PathBuf,
    /// An unrelated CA, for "an unknown CA is refused" tests.
    pub other_ca_file: PathBuf,
    /// The passive data port range (inclusive).
    pub pasv_ports: (u16, u16),
    /// vsftpd's own log (every command and response; passwords are masked by vsftpd).
    pub log_file: PathBuf,
    homes: PathBuf,
    _server: Supervised,
}

/// The FTPS server of this test process, started on first use.
pub async fn ftps() -> &'static FtpsServer {
    static FTPS: OnceLock<FtpsServer> = OnceLock::new();
    if let Some(server) = FTPS.get() {
        return server;
    }
    // Start-up runs commands and blocks: keep it off the test's async worker threads.
    match tokio::task::spawn_blocking(|| FTPS.get_or_init(start)).await {
        Ok(server) => server,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("harness: the FTPS start-up task failed: {e}"),
        },
    }
}

fn start() -> FtpsServer {
    require_root();
    let vsftpd = find_vsftpd();
    // vsftpd's `secure_chroot_dir`: must exist, be empty and not writable by others.
    fs::create_dir_all("/var/run/vsftpd/empty")
        .unwrap_or_else(|e| panic!("harness: cannot create /var/run/vsftpd/empty: {e}"));
    let dir = process_dir().join("ftps");
    process::public_dir(&dir);
    let certs = certs::generate(&dir.join("certs"));
    let homes = dir.join("homes");
    process::public_dir(&homes);
    let log_file = dir.join("vsftpd.log");
    let out_file = dir.join("vsftpd.out");

    // The control port is picked by binding port 0, then handed to vsftpd: another process
    // may take it in between, so a server that dies at start-up is retried on new ports.
    let mut last_error = String::new();
    for _attempt in 0..3 {
        let port = process::free_port();
        let pasv_ports = process::free_port_block(40);
        let conf = dir.join("vsftpd.conf");
        fs::write(&conf, vsftpd_conf(port, pasv_ports, &certs, &log_file))
            .unwrap_or_else(|e| panic!("harness: cannot write {}: {e}", conf.display()));
        let server = Supervised::spawn("vsftpd", &vsftpd, &[&conf.to_string_lossy()], &out_file);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        match server.wait_for_greeting(addr, process::READY_TIMEOUT) {
            Ok(()) => {
                return FtpsServer {
                    host: "127.0.0.1".to_owned(),
                    port,
                    ca_file: certs.ca_file.clone(),
                    other_ca_file: certs.other_ca_file.clone(),
                    pasv_ports,
                    log_file,
                    homes,
                    _server: server,
                };
            }
            Err(e) if server.exited().is_some() => last_error = e,
            Err(e) => panic!("harness: {e}"),
        }
    }
    panic!("harness: vsftpd failed to start three times; last failure: {last_error}");
}

/// The address vsftpd names in its PASV answers. Not the one it listens on: a client that
/// obeys it cannot connect (nothing listens on 127.0.0.2), so every FTPS test also proves the
/// worker ignores the address the server names and connects to the control connection's peer.
pub const PASV_ADDRESS: &str = "127.0.0.2";

/// vsftpd exits with status 2 and no message on an unknown or malformed line: keep to the
/// options of the verified recipe. The idle timeouts (`idle_session_timeout`, 300 s, and
/// `data_connection_timeout`) are left at vsftpd's defaults: the long-import trial
/// (`examples/chaos/long.rs`) relies on a job's session outliving the default idle timeout.
fn vsftpd_conf(port: u16, pasv: (u16, u16), certs: &TestCerts, log_file: &Path) -> String {
    format!(
        "listen=YES\n\
         listen_address=127.0.0.1\n\
         listen_port={port}\n\
         background=NO\n\
         anonymous_enable=NO\n\
         local_enable=YES\n\
         write_enable=YES\n\
         local_umask=022\n\
         chroot_local_user=YES\n\
         allow_writeable_chroot=YES\n\
         secure_chroot_dir=/var/run/vsftpd/empty\n\
         pam_service_name=vsftpd\n\
         pasv_enable=YES\n\
         pasv_min_port={}\n\
         pasv_max_port={}\n\
         pasv_address={PASV_ADDRESS}\n\
         ssl_enable=YES\n\
         rsa_cert_file={}\n\
         rsa_private_key_file={}\n\
         force_local_logins_ssl=YES\n\
         force_local_data_ssl=YES\n\
         require_ssl_reuse=YES\n\
         xferlog_enable=YES\n\
         xferlog_std_format=NO\n\
         log_ftp_protocol=YES\n\
         vsftpd_log_file={}\n",
        pasv.0,
        pasv.1,
        certs.server_cert.display(),
        certs.server_key.display(),
        log_file.display(),
    )
}

fn require_root() {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or("");
    assert!(
        uid == "0",
        "harness: the FTPS tests must run as root (they start vsftpd and create Linux users)"
    );
}

fn find_vsftpd() -> PathBuf {
    let sbin = PathBuf::from("/usr/sbin/vsftpd");
    let path = if sbin.is_file() {
        sbin
    } else {
        PathBuf::from("vsftpd")
    };
    process::require_program(&path);
    path
}

/// Serialises this process's edits of /etc/passwd; other processes are handled by retrying.
static PASSWD: Mutex<()> = Mutex::new(());

/// Runs a shadow-utils command, retrying while another process holds the passwd/group locks.
fn run_passwd_tool(program: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = run(program, args, stdin);
        let locked = out.stderr.contains("lock") || out.stderr.contains("try again");
        if out.success() || !locked || Instant::now() >= deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(rand::random_range(20..120)));
    }
}

impl FtpsServer {
    /// A new Linux user with a unique name (`t-xxxxxxxx`), a random 32-hex-digit password and a
    /// home holding `uploads/ tmp/ log/ reports/`, all owned by it. It can log in at once.
    pub fn create_account(&self) -> FtpAccount {
        self.create_account_with_prefix("t")
    }

    /// Same as `create_account`, with the user name starting with `prefix` (see `unique`).
    pub fn create_account_with_prefix(&self, prefix: &str) -> FtpAccount {
        self.create_account_with(prefix, None)
    }

    /// Same as `create_account_with_prefix`, with the given password (random when `None`); the
    /// secret-scanning tests use a recognisable one. No `:` or line break in it (chpasswd).
    pub fn create_account_with(&self, prefix: &str, password: Option<&str>) -> FtpAccount {
        let _guard = PASSWD.lock().unwrap_or_else(|p| p.into_inner());
        let gecos = format!("{GECOS_TAG}{}", std::process::id());
        for _ in 0..5 {
            let user = unique(prefix);
            let home = self.homes.join(&user);
            let home_arg = home.to_string_lossy().into_owned();
            // -M: a bare home made below (no /etc/skel dotfiles in listings). /bin/bash is in
            // /etc/shells, which vsftpd's PAM stack (pam_shells) requires.
            let out = run_passwd_tool(
                "useradd",
                &[
                    "-M",
                    "-d",
                    &home_arg,
                    "-s",
                    "/bin/bash",
                    "-c",
                    &gecos,
                    &user,
                ],
                None,
            );
            if out.code == Some(9) {
                continue; // the name exists (another process drew the same one)
            }
            assert!(
                out.success(),
                "harness: useradd {user} failed: {}",
                out.stderr
            );
            let password = password
                .map(str::to_owned)
                .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
            let out = run_passwd_tool("chpasswd", &[], Some(&format!("{user}:{password}\n")));
            assert!(
                out.success(),
                "harness: chpasswd for {user} failed: {}",
                out.stderr
            );
            let (uid, gid) = passwd_ids(&user);
            return FtpAccount {
                user,
                password,
                files: AccountFiles::new(home, uid, gid)
                    .with_folders(&["uploads", "tmp", "log", "reports"]),
            };
        }
        panic!("harness: could not find a free user name after 5 tries");
    }
}

/// uid and gid of a user, from /etc/passwd.
fn passwd_ids(user: &str) -> (u32, u32) {
    let passwd = fs::read_to_string("/etc/passwd")
        .unwrap_or_else(|e| panic!("harness: cannot read /etc/passwd: {e}"));
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 4 && f[0] == user)
        .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
        .unwrap_or_else(|| panic!("harness: user {user} is not in /etc/passwd"))
}

/// Deletes the users left by test processes that no longer exist.
pub(super) fn remove_stale_accounts() {
    let Ok(passwd) = fs::read_to_string("/etc/passwd") else {
        return;
    };
    let stale: Vec<String> = passwd
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            let pid: u32 = f.get(4)?.strip_prefix(GECOS_TAG)?.parse().ok()?;
            (!process::pid_alive(pid)).then(|| f[0].to_owned())
        })
        .collect();
    let _guard = PASSWD.lock().unwrap_or_else(|p| p.into_inner());
    for user in stale {
        let _ = run_passwd_tool("userdel", &["-f", "-r", &user], None);
    }
}

/// A per-test FTP account. Dropping it deletes the user and its home.
pub struct FtpAccount {
    pub user: String,
    pub password: String,
    files: AccountFiles,
}

impl std::ops::Deref for FtpAccount {
    type Target = AccountFiles;
    fn deref(&self) -> &AccountFiles {
        &self.files
    }
}

impl fmt::Debug for FtpAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FtpAccount")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("home", &self.files.root)
            .finish()
    }
}

impl Drop for FtpAccount {
    fn drop(&mut self) {
        // -f: a vsftpd session of this user may still be closing.
        let _guard = PASSWD.lock().unwrap_or_else(|p| p.into_inner());
        let out = run_passwd_tool("userdel", &["-f", "-r", &self.user], None);
        if !out.success() && out.code != Some(12) {
            // Never panic in drop (it may run while a failed test unwinds).
            eprintln!(
                "harness: userdel {} failed: {}",
                self.user,
                out.stderr.trim()
            );
        }
        let _ = fs::remove_dir_all(&self.files.root);
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::{TestCerts, vsftpd_conf};

    #[test]
    fn the_idle_timeouts_are_left_at_vsftpds_defaults() {
        let certs = TestCerts {
            ca_file: PathBuf::from("ca.pem"),
            other_ca_file: PathBuf::from("other.pem"),
            server_cert: PathBuf::from("server.pem"),
            server_key: PathBuf::from("server.key"),
        };
        let conf = vsftpd_conf(2121, (30000, 30039), &certs, &PathBuf::from("vsftpd.log"));
        assert!(conf.contains("require_ssl_reuse=YES"), "{conf}");
        for key in ["idle_session_timeout", "data_connection_timeout"] {
            assert!(!conf.contains(key), "{key} is set:\n{conf}");
        }
    }
}
