//! The test harness, as a library: real servers, unique names, tenants and fleets wired to them,
//! and the fixtures the tests, the fault trials (`examples/chaos`) and the benchmarks share.
//!
//! Tests run as threads of one process and may run in parallel; other test processes may run on
//! the same machine at the same time. So:
//! - RabbitMQ and Redis are the machine's ([`amqp_url`], [`redis_url`]); each test isolates
//!   itself with names from [`unique`] (queues, exchanges, key prefixes). A test that restarts
//!   the broker gets a private RabbitMQ node of its own ([`private_broker`]).
//! - vsftpd ([`ftps`]) and the SMTP sink ([`smtp`]) are started once per test process (see
//!   [`servers`]). Each test gets its own FTP account ([`FtpsServer::create_account`]) and its
//!   own recipient addresses.
//!
//! Code map:
//! - [`servers`]: the servers the harness starts, one module per server.
//! - [`tenant_env`]: one tenant wired to the servers, with the worker's `Deps`.
//! - [`fleet_env`]: several tenants, the test's own queues and Redis prefix, workers in-process
//!   or as processes.
//! - [`fixtures`]: import files, the settings and registry files, readings of what a run left.
//! - [`binaries`]: the workspace's `worker` and `scheduler` binaries, built on demand.

pub mod binaries;
pub mod fixtures;
pub mod fleet_env;
pub mod servers;
pub mod tenant_env;

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

pub use servers::Server;
pub use servers::certs::{TestCerts, client_config};
pub use servers::ftps::{FtpAccount, FtpsServer, PASV_ADDRESS, ftps};
pub use servers::proftpd::{ProftpdAccount, ProftpdServer, proftpd, proftpd_tls12};
pub use servers::rabbitmq::{PrivateBroker, private_broker};
pub use servers::sftp::{SftpAccount, SftpServer, sftp};
pub use servers::smtp::{HtmlDoc, ReceivedMail, SmtpSink, parse_html, smtp};

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
