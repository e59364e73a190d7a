//! The test harness: real servers and unique names for the integration tests.
//!
//! Tests run as threads of one process and may run in parallel; other test processes may run on
//! the same machine at the same time. So:
//! - RabbitMQ and Redis are the machine's (`amqp_url`, `redis_url`); each test isolates itself
//!   with names from `unique` (queues, exchanges, key prefixes). A test that restarts the broker
//!   gets a private RabbitMQ node of its own (`private_broker`).
//! - vsftpd (`ftps`) and the SMTP sink (`smtp`) are started once per test process, lazily, on
//!   free ports, with their own certificates and temporary directories, and are stopped when the
//!   process ends, however it ends (see `process`). Each test gets its own FTP account
//!   (`FtpsServer::create_account`) and its own recipient addresses.
//! - A missing server binary fails the test with a clear message; nothing is skipped.
//!
//! Files: `process` (children, ports, readiness), `certs` (test CA and TLS client config),
//! `ftps` (vsftpd and accounts), `proftpd` (ProFTPD from the unpacked packages, virtual
//! accounts), `sftp` (OpenSSH's sshd, chrooted SFTP accounts), `smtp` (the mail sink and received mail), `rabbitmq` (private
//! broker nodes).
//!
//! Leftovers of a test process that was killed (its temporary directory, its FTP users) are
//! removed by the next test process that starts a server.

#![allow(dead_code)] // Each test uses a part of the harness; the whole API is kept on purpose.

mod certs;
mod ftps;
mod process;
mod proftpd;
mod rabbitmq;
mod sftp;
mod smtp;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

// The public API for pipeline tests: not every item is used by every test module yet.
#[allow(unused_imports)]
pub use certs::{TestCerts, client_config};
#[allow(unused_imports)]
pub use ftps::{FtpAccount, FtpsServer, PASV_ADDRESS, ftps};
#[allow(unused_imports)]
pub use proftpd::{ProftpdAccount, ProftpdServer, proftpd};
#[allow(unused_imports)]
pub use rabbitmq::{PrivateBroker, private_broker};
#[allow(unused_imports)]
pub use sftp::{SftpAccount, SftpServer, sftp};
#[allow(unused_imports)]
pub use smtp::{ReceivedMail, SmtpSink, smtp};

/// The broker for tests: env `UI_TEST_AMQP_URL`, else the machine's RabbitMQ.
pub fn amqp_url() -> String {
    std::env::var("UI_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// Redis for tests: env `UI_TEST_REDIS_URL`, else the machine's Redis.
pub fn redis_url() -> String {
    std::env::var("UI_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_owned())
}

/// A short, lowercase, unique name such as `t-3f9a2c1b`: valid as a Linux user name (at most 32
/// characters, starting with a letter), a DNS label, a queue name and a Redis key prefix.
///
/// `prefix` is lowercased, characters outside `[a-z0-9-]` become `-`, and it is cut to 22
/// characters; one that does not start with a letter gets a leading `t`. Names are unique
/// within the process (checked) and across processes (32 random bits).
pub fn unique(prefix: &str) -> String {
    static ISSUED: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let mut clean: String = prefix
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(22)
        .collect();
    if !clean.starts_with(|c: char| c.is_ascii_lowercase()) {
        clean.insert(0, 't');
        clean.truncate(22);
    }
    let issued = ISSUED.get_or_init(Mutex::default);
    let mut issued = issued.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let name = format!("{clean}-{:08x}", rand::random::<u32>());
        if issued.insert(name.clone()) {
            return name;
        }
    }
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

#[cfg(test)]
mod tests {
    use super::unique;

    #[test]
    fn unique_names_are_valid_linux_user_names() {
        for prefix in [
            "t",
            "Tenant",
            "9lives",
            "a_b.c",
            "",
            "a-very-long-prefix-that-goes-on-and-on",
        ] {
            let name = unique(prefix);
            assert!(name.len() <= 32, "{name}");
            assert!(name.starts_with(|c: char| c.is_ascii_lowercase()), "{name}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{name}"
            );
        }
        assert_ne!(unique("t"), unique("t"));
        assert!(unique("t").len() == 10);
    }
}
