//! The servers the harness starts itself, one module per server: `ftps` (vsftpd with explicit
//! FTPS), `proftpd` (ProFTPD with explicit FTPS, run from the unpacked Debian packages), `sftp`
//! (OpenSSH's sshd serving chrooted SFTP accounts), `smtp` (the mail sink), `rabbitmq` (private
//! broker nodes). They share `process`
//! (children, ports, readiness), `certs` (the test CA and TLS client config) and this process's
//! scratch directory.
//!
//! vsftpd and the SMTP sink are started once per test process, lazily, on free ports, with their
//! own certificates and temporary directories, and are stopped when the process ends, however it
//! ends (see `process`). A private RabbitMQ node is started per test that asks for one. A
//! missing server binary fails the test with a clear message; nothing is skipped. Leftovers of a
//! test process that was killed (its temporary directory, its FTP users) are removed by the next
//! test process that starts a server.
//!
//! Adding a server: a module here with a lazily started, process-wide instance
//! (`pub async fn <server>() -> &'static <Server>`, as `ftps::ftps`) or a per-test one (as
//! `rabbitmq::private_broker`), started with `process::Supervised` under `process_dir()`, and its
//! public items re-exported from the crate root.

pub mod certs;
pub mod files;
pub mod ftps;
pub mod process;
pub mod proftpd;
pub mod rabbitmq;
pub mod sessions;
pub mod sftp;
pub mod smtp;
pub mod smtp_relay;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The file server a tenant's account is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Server {
    /// vsftpd, explicit FTPS (`require_ssl_reuse=YES`).
    #[default]
    Vsftpd,
    /// ProFTPD, explicit FTPS with its default TLS options (session reuse required).
    Proftpd,
    /// OpenSSH's sshd, chrooted `internal-sftp`, its host key pinned in the registry.
    Sftp,
}

/// This process's scratch directory (`$TMPDIR/ui-it-<pid>-<random>`, mode 0755), made on first
/// use after removing the leftovers of dead test processes. It is kept after the process ends so
/// server logs can be read after a failure; the next run removes it.
fn process_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        ftps::remove_stale_accounts();
        remove_stale_dirs();
        let dir = std::env::temp_dir().join(format!(
            "ui-it-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        process::public_dir(&dir);
        dir
    })
}

fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("ui-it-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !process::pid_alive(pid) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
