//! ProFTPD with explicit FTPS, one per test process, beside vsftpd, and per-test virtual accounts.
//!
//! Debian's ProFTPD package conflicts with vsftpd's, so it runs from the unpacked packages that
//! `scripts/proftpd-prepare.sh` keeps in a cache folder (the script is run here when the tree is
//! missing, so a cold machine works). The configuration is the recipe in `shared/STACK.md`: TLS
//! required, `TLSProtocol TLSv1.2 TLSv1.3` and **ProFTPD's default TLS options** — a data
//! connection that does not resume the control connection's TLS session is refused (`425`), as
//! on many production servers. Accounts are virtual users (`AuthUserFile`), chrooted to their
//! home, all mapped to one uid that exists nowhere else; a `NLST` of a missing folder answers
//! `450`, where vsftpd answers an empty `226`.

use super::files::AccountFiles;
use std::fmt;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use super::certs;
use super::process::{self, Supervised, run};
use super::process_dir;
use crate::unique;

/// The uid and gid every virtual user's files belong to (no such user in /etc/passwd).
pub const VIRTUAL_ID: u32 = 2999;

/// The ProFTPD server of this test process.
#[derive(Debug)]
pub struct ProftpdServer {
    /// Always "127.0.0.1" (the certificate also names `localhost`).
    pub host: String,
    pub port: u16,
    /// The CA that signed the server certificate.
    pub ca_file: PathBuf,
    /// The TLS log (`TLSLog`): every data connection's resumption verdict is written there.
    pub tls_log: PathBuf,
    /// The system log, and every command with its answer (`ExtendedLog … ALL`).
    pub log_file: PathBuf,
    pub command_log: PathBuf,
    dir: PathBuf,
    homes: PathBuf,
    users: Mutex<()>,
    _server: Supervised,
}

/// The ProFTPD server of this test process (TLS 1.2 and 1.3: clients negotiate 1.3), started on
/// first use.
pub async fn proftpd() -> &'static ProftpdServer {
    static SERVER: OnceLock<ProftpdServer> = OnceLock::new();
    started(&SERVER, "TLSv1.2 TLSv1.3").await
}

/// A second ProFTPD that speaks TLS 1.2 only (the resumption of TLS 1.2 sessions).
pub async fn proftpd_tls12() -> &'static ProftpdServer {
    static SERVER: OnceLock<ProftpdServer> = OnceLock::new();
    started(&SERVER, "TLSv1.2").await
}

async fn started(
    cell: &'static OnceLock<ProftpdServer>,
    protocols: &'static str,
) -> &'static ProftpdServer {
    if let Some(server) = cell.get() {
        return server;
    }
    match tokio::task::spawn_blocking(move || cell.get_or_init(|| start(protocols))).await {
        Ok(server) => server,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("harness: the ProFTPD start-up task failed: {e}"),
        },
    }
}

/// The unpacked tree (`…/root`), fetched by the shared script when missing.
fn prepared_root() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/proftpd-prepare.sh");
    let out = run(&script.to_string_lossy(), &[], None);
    assert!(
        out.success(),
        "harness: {} failed: {}",
        script.display(),
        out.stderr
    );
    let root = PathBuf::from(out.stdout.trim());
    assert!(
        root.join("usr/sbin/proftpd").is_file(),
        "harness: {} named {}, which has no usr/sbin/proftpd",
        script.display(),
        root.display()
    );
    root
}

fn start(protocols: &str) -> ProftpdServer {
    let root = prepared_root();
    let dir = process_dir().join(format!("proftpd-{}", protocols.replace(' ', "-")));
    process::public_dir(&dir);
    let certs = certs::generate(&dir.join("certs"));
    let homes = dir.join("homes");
    process::public_dir(&homes);
    let passwd = dir.join("ftpd.passwd");
    let group = dir.join("ftpd.group");
    write_private(&passwd, "");
    write_private(&group, &format!("uiit:x:{VIRTUAL_ID}:\n"));
    let log_file = dir.join("proftpd.log");
    let tls_log = dir.join("tls.log");
    let command_log = dir.join("commands.log");
    let out_file = dir.join("proftpd.out");
    let program = root.join("usr/sbin/proftpd");

    let mut last_error = String::new();
    for _attempt in 0..3 {
        let port = process::free_port();
        let pasv = process::free_port_block(60);
        let conf = dir.join("proftpd.conf");
        let text = format!(
            "ServerType standalone\n\
             ServerName \"ui-it ProFTPD\"\n\
             DefaultServer on\n\
             UseIPv6 off\n\
             DefaultAddress 127.0.0.1\n\
             SocketBindTight on\n\
             Port {port}\n\
             PassivePorts {} {}\n\
             MasqueradeAddress {pasv_address}\n\
             User nobody\n\
             Group nogroup\n\
             MaxInstances 100\n\
             ModulePath {modules}\n\
             LoadModule mod_tls.c\n\
             PidFile {dir}/proftpd.pid\n\
             ScoreboardFile {dir}/proftpd.scoreboard\n\
             <IfModule mod_delay.c>\n  DelayEngine off\n</IfModule>\n\
             WtmpLog off\n\
             UseReverseDNS off\n\
             SystemLog {log}\n\
             TransferLog {dir}/xfer.log\n\
             ExtendedLog {commands} ALL\n\
             AuthPAM off\n\
             AuthOrder mod_auth_file.c\n\
             AuthUserFile {passwd}\n\
             AuthGroupFile {group}\n\
             RequireValidShell off\n\
             DefaultRoot ~\n\
             Umask 022\n\
             AllowOverwrite on\n\
             TLSEngine on\n\
             TLSRequired on\n\
             TLSProtocol {protocols}\n\
             TLSRSACertificateFile {cert}\n\
             TLSRSACertificateKeyFile {key}\n\
             TLSVerifyClient off\n\
             TLSLog {tls}\n",
            pasv.0,
            pasv.1,
            pasv_address = super::ftps::PASV_ADDRESS,
            modules = root.join("usr/lib/proftpd").display(),
            dir = dir.display(),
            log = log_file.display(),
            commands = command_log.display(),
            passwd = passwd.display(),
            group = group.display(),
            cert = certs.server_cert.display(),
            key = certs.server_key.display(),
            tls = tls_log.display(),
        );
        fs::write(&conf, text)
            .unwrap_or_else(|e| panic!("harness: cannot write {}: {e}", conf.display()));
        let conf_arg = conf.to_string_lossy().into_owned();
        let libs = root.join("usr/lib/x86_64-linux-gnu");
        let env_arg = format!("LD_LIBRARY_PATH={}", libs.display());
        let server = Supervised::spawn(
            "proftpd",
            Path::new("/usr/bin/env"),
            &[&env_arg, &program.to_string_lossy(), "-n", "-c", &conf_arg],
            &out_file,
        );
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        match server.wait_for_greeting(addr, process::READY_TIMEOUT) {
            Ok(()) => {
                return ProftpdServer {
                    host: "127.0.0.1".to_owned(),
                    port,
                    ca_file: certs.ca_file.clone(),
                    tls_log,
                    log_file,
                    command_log,
                    dir,
                    homes,
                    users: Mutex::new(()),
                    _server: server,
                };
            }
            Err(e) if server.exited().is_some() => last_error = e,
            Err(e) => panic!("harness: {e}"),
        }
    }
    panic!("harness: ProFTPD failed to start three times; last failure: {last_error}");
}

/// ProFTPD refuses an `AuthUserFile` others can read or write.
fn write_private(path: &Path, text: &str) {
    fs::write(path, text)
        .unwrap_or_else(|e| panic!("harness: cannot write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(0o440))
        .unwrap_or_else(|e| panic!("harness: cannot chmod {}: {e}", path.display()));
}

impl ProftpdServer {
    /// A virtual user with a unique name and a random password, whose home holds the given
    /// folders (e.g. `["uploads", "tmp", "log", "reports"]`). ProFTPD reads the user file at each
    /// login, so the account works at once.
    pub fn create_account(&self, folders: &[&str]) -> ProftpdAccount {
        let _guard = self.users.lock().unwrap_or_else(|p| p.into_inner());
        let user = unique("pf");
        let password = format!("{:032x}", rand::random::<u128>());
        let hash = run("openssl", &["passwd", "-6", "-stdin"], Some(&password));
        assert!(hash.success(), "harness: openssl passwd: {}", hash.stderr);
        let home = self.homes.join(&user);
        let passwd = self.dir.join("ftpd.passwd");
        let mut text = fs::read_to_string(&passwd).unwrap_or_default();
        text.push_str(&format!(
            "{user}:{}:{VIRTUAL_ID}:{VIRTUAL_ID}::{}:/bin/false\n",
            hash.stdout.trim(),
            home.display()
        ));
        fs::set_permissions(&passwd, fs::Permissions::from_mode(0o640))
            .unwrap_or_else(|e| panic!("harness: cannot chmod {}: {e}", passwd.display()));
        write_private(&passwd, &text);
        ProftpdAccount {
            user,
            password,
            files: AccountFiles::new(home, VIRTUAL_ID, VIRTUAL_ID).with_folders(folders),
        }
    }
}

/// A per-test ProFTPD account. Dropping it removes its home (the user line stays: harmless, and
/// the file goes with the process's scratch folder).
pub struct ProftpdAccount {
    pub user: String,
    pub password: String,
    files: AccountFiles,
}

impl std::ops::Deref for ProftpdAccount {
    type Target = AccountFiles;
    fn deref(&self) -> &AccountFiles {
        &self.files
    }
}

impl fmt::Debug for ProftpdAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProftpdAccount")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("home", &self.files.root)
            .finish()
    }
}

impl Drop for ProftpdAccount {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.files.root);
    }
}
