//! OpenSSH's `sshd` serving SFTP only, one per test process, on a free loopback port, with
//! per-test accounts: real Linux users, each chrooted (`ChrootDirectory`, `internal-sftp`).
//!
//! The recipe is the one in `shared/STACK.md`: the server's own Ed25519 host key, `UsePAM no`,
//! password and public-key logins, `Subsystem sftp internal-sftp`, and a `Match User` block for
//! the test users only (`AllowUsers` keeps every other account of the machine out). A chroot
//! folder must belong to root and be writable by nobody else, all the way up (so it cannot live
//! under /tmp); each account is `<jail>/<user>` (root's) holding `home/` (the user's), where the
//! session starts (`internal-sftp -d /home`): the account's `/uploads` is `<jail>/<user>/home/uploads`.
//! Users carry the same comment tag as the vsftpd harness's, so a later test process removes the
//! users of one that was killed.

use super::files::AccountFiles;
use std::fmt;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::process::{self, Output, Supervised, run};
use super::process_dir;
use crate::unique;

/// The folder every process's jails live under (root's, 0755, not under /tmp).
const JAIL_PARENT: &str = "/srv/ui-it-sftp";
/// The comment (GECOS) tag of harness-made users (the same as `ftps`'s, for the stale sweep).
const GECOS_TAG: &str = "ui-it pid=";
/// Test users' names start with this; sshd lets only them in.
const USER_PREFIX: &str = "sf";

/// The SFTP server of this test process.
#[derive(Debug)]
pub struct SftpServer {
    pub host: String,
    pub port: u16,
    /// The server's host key, as pinned in a registry (`ssh-ed25519 AAAA…`).
    pub host_key: String,
    /// Another Ed25519 key, that the server does not have (for "a different key is refused").
    pub other_host_key: String,
    /// sshd's log (`-e`: to the output file).
    pub log_file: PathBuf,
    jail: PathBuf,
    keys: PathBuf,
    _server: Supervised,
}

/// The SFTP server of this test process, started on first use.
pub async fn sftp() -> &'static SftpServer {
    static SERVER: OnceLock<SftpServer> = OnceLock::new();
    if let Some(server) = SERVER.get() {
        return server;
    }
    match tokio::task::spawn_blocking(|| SERVER.get_or_init(start)).await {
        Ok(server) => server,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("harness: the SFTP start-up task failed: {e}"),
        },
    }
}

fn keygen(path: &Path) -> String {
    let _ = fs::remove_file(path);
    let out = run(
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "ui-it",
            "-f",
            &path.to_string_lossy(),
        ],
        None,
    );
    assert!(out.success(), "harness: ssh-keygen failed: {}", out.stderr);
    let public = path.with_extension("pub");
    fs::read_to_string(&public)
        .unwrap_or_else(|e| panic!("harness: cannot read {}: {e}", public.display()))
        .trim()
        .to_owned()
}

fn root_dir(path: &Path, mode: u32) {
    fs::create_dir_all(path)
        .unwrap_or_else(|e| panic!("harness: cannot create {}: {e}", path.display()));
    std::os::unix::fs::chown(path, Some(0), Some(0))
        .unwrap_or_else(|e| panic!("harness: cannot chown {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("harness: cannot chmod {}: {e}", path.display()));
}

/// Removes the jails of test processes that no longer exist.
fn remove_stale_jails() {
    let Ok(entries) = fs::read_dir(JAIL_PARENT) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !process::pid_alive(pid) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn start() -> SftpServer {
    let sshd = PathBuf::from("/usr/sbin/sshd");
    process::require_program(&sshd);
    // sshd's privilege separation folder.
    root_dir(Path::new("/run/sshd"), 0o755);
    let dir = process_dir().join("sftp");
    process::public_dir(&dir);
    root_dir(Path::new(JAIL_PARENT), 0o755);
    remove_stale_jails();
    let jail = Path::new(JAIL_PARENT).join(format!(
        "{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    root_dir(&jail, 0o755);
    let keys = dir.join("authorized");
    root_dir(&keys, 0o755);
    let host_key_file = dir.join("host_ed25519");
    let host_key = keygen(&host_key_file);
    let other_host_key = keygen(&dir.join("other_ed25519"));
    let log_file = dir.join("sshd.log");

    let mut last_error = String::new();
    for _attempt in 0..3 {
        let port = process::free_port();
        let conf = dir.join("sshd_config");
        let text = format!(
            "ListenAddress 127.0.0.1\n\
             Port {port}\n\
             HostKey {host_key}\n\
             PidFile {dir}/sshd.pid\n\
             UsePAM no\n\
             PermitRootLogin no\n\
             PasswordAuthentication yes\n\
             KbdInteractiveAuthentication no\n\
             PubkeyAuthentication yes\n\
             AuthorizedKeysFile {keys}/%u\n\
             StrictModes no\n\
             AllowUsers {USER_PREFIX}-*\n\
             MaxStartups 100:30:200\n\
             MaxAuthTries 3\n\
             LogLevel VERBOSE\n\
             Subsystem sftp internal-sftp\n\
             Match User {USER_PREFIX}-*\n\
             \x20 ChrootDirectory {jail}/%u\n\
             \x20 ForceCommand internal-sftp -d /home\n\
             \x20 AllowTcpForwarding no\n\
             \x20 X11Forwarding no\n",
            host_key = host_key_file.display(),
            dir = dir.display(),
            keys = keys.display(),
            jail = jail.display(),
        );
        fs::write(&conf, text)
            .unwrap_or_else(|e| panic!("harness: cannot write {}: {e}", conf.display()));
        let conf_arg = conf.to_string_lossy().into_owned();
        let server = Supervised::spawn("sshd", &sshd, &["-D", "-e", "-f", &conf_arg], &log_file);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        match wait_for_banner(&server, addr) {
            Ok(()) => {
                return SftpServer {
                    host: "127.0.0.1".to_owned(),
                    port,
                    host_key,
                    other_host_key,
                    log_file,
                    jail,
                    keys,
                    _server: server,
                };
            }
            Err(e) if server.exited().is_some() => last_error = e,
            Err(e) => panic!("harness: {e}\n{}", process::log_tail(&log_file, 20)),
        }
    }
    panic!("harness: sshd failed to start three times; last failure: {last_error}");
}

/// sshd greets with `SSH-2.0-…`.
fn wait_for_banner(server: &Supervised, addr: SocketAddr) -> Result<(), String> {
    use std::io::{BufRead, BufReader};
    let deadline = Instant::now() + process::READY_TIMEOUT;
    loop {
        if let Some(status) = server.exited() {
            return Err(format!("sshd exited at start-up ({status})"));
        }
        if let Ok(stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
            let mut line = String::new();
            if BufReader::new(stream).read_line(&mut line).is_ok() && line.starts_with("SSH-2.0-") {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("sshd did not greet on {addr} in time"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

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

impl SftpServer {
    /// A new user (`sf-xxxxxxxx`, random password) whose account root holds `folders`
    /// (e.g. `["uploads", "tmp", "log", "reports"]`), all the user's.
    pub fn create_account(&self, folders: &[&str]) -> SftpAccount {
        let _guard = PASSWD.lock().unwrap_or_else(|p| p.into_inner());
        let gecos = format!("{GECOS_TAG}{}", std::process::id());
        for _ in 0..5 {
            let user = unique(USER_PREFIX);
            let chroot = self.jail.join(&user);
            // The passwd home is the chroot itself (never a shared folder such as /home: the
            // stale-user sweep runs `userdel -r`, which deletes it).
            let home_arg = chroot.to_string_lossy().into_owned();
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
                continue;
            }
            assert!(out.success(), "harness: useradd {user}: {}", out.stderr);
            let password = format!("{:032x}", rand::random::<u128>());
            let out = run_passwd_tool("chpasswd", &[], Some(&format!("{user}:{password}\n")));
            assert!(out.success(), "harness: chpasswd {user}: {}", out.stderr);
            let ids = run("id", &["-u", &user], None);
            let uid: u32 = ids
                .stdout
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("harness: id -u {user}"));
            let ids = run("id", &["-g", &user], None);
            let gid: u32 = ids
                .stdout
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("harness: id -g {user}"));
            root_dir(&chroot, 0o755);
            return SftpAccount {
                user,
                password,
                files: AccountFiles::new(chroot.join("home"), uid, gid).with_folders(folders),
                chroot,
                keys: self.keys.clone(),
            };
        }
        panic!("harness: could not find a free user name after 5 tries");
    }
}

/// A per-test SFTP account. Dropping it deletes the user and its chroot.
pub struct SftpAccount {
    pub user: String,
    pub password: String,
    /// The account's root (`/` over SFTP) is `files.root`, inside the chroot.
    files: AccountFiles,
    chroot: PathBuf,
    keys: PathBuf,
}

impl std::ops::Deref for SftpAccount {
    type Target = AccountFiles;
    fn deref(&self) -> &AccountFiles {
        &self.files
    }
}

impl fmt::Debug for SftpAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SftpAccount")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("root", &self.files.root)
            .finish()
    }
}

impl SftpAccount {
    /// Lets the holder of `public_key` (an OpenSSH public key line) log in.
    pub fn authorize_key(&self, public_key: &str) {
        let file = self.keys.join(&self.user);
        fs::write(&file, format!("{public_key}\n"))
            .unwrap_or_else(|e| panic!("harness: cannot write {}: {e}", file.display()));
    }
}

impl Drop for SftpAccount {
    fn drop(&mut self) {
        let _guard = PASSWD.lock().unwrap_or_else(|p| p.into_inner());
        let out = run_passwd_tool("userdel", &["-f", &self.user], None);
        if !out.success() && out.code != Some(6) {
            eprintln!(
                "harness: userdel {} failed: {}",
                self.user,
                out.stderr.trim()
            );
        }
        let _ = fs::remove_file(self.keys.join(&self.user));
        let _ = fs::remove_dir_all(&self.chroot);
    }
}
