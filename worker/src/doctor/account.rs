//! The account's checks: `connect` (DNS and TCP), `tls` (FTPS: the certificate verified) or
//! `host_key` (SFTP: the pinned host key), `login` (the tenant's key), `folders` (each present
//! and writable: a probe file written, removed, and seen gone) and `file` (the upload's size and
//! time). The session is the one jobs use ([`Connector::connect_once`]), so what passes here is
//! what a job will meet.

use std::time::{Duration, Instant};

use serde_json::json;
use shared::ApiKey;
use shared::registry::{Tenant, Transport};

use super::Step;
use crate::account::{Account, AccountError};
use crate::deps::Deps;
use crate::layout;

/// The folders a run needs on the account, `/uploads` first (the tenant's; the others the
/// worker writes to).
pub const FOLDERS: [&str; 5] = [
    layout::UPLOAD_DIR,
    layout::MARKER_DIR,
    layout::LOG_DIR,
    layout::REPORTS_DIR,
    layout::ARCHIVE_DIR,
];

/// The name of the server-identity step for the tenant's transport.
fn identity_step(tenant: &Tenant) -> &'static str {
    match tenant.transport {
        Transport::Ftps => "tls",
        Transport::Sftp => "host_key",
    }
}

fn port_of(tenant: &Tenant) -> u16 {
    match tenant.transport {
        Transport::Ftps => tenant.ftps_port,
        Transport::Sftp => tenant.sftp_port,
    }
}

/// The account's steps, in order: connect, tls/host_key, login, folders, file.
pub async fn check(deps: &Deps, tenant: &Tenant, key: Option<&ApiKey>) -> Vec<Step> {
    let identity = identity_step(tenant);
    let connect = connect(tenant, deps.settings.ftps.connect_timeout).await;
    if !connect.passed() {
        return skip_after(connect, &[identity, "login", "folders", "file"], "connect");
    }
    let Some(key) = key else {
        return skip_after(connect, &[identity, "login", "folders", "file"], "registry");
    };
    let mut session = match deps.accounts.connect_once(tenant, key).await {
        Ok(s) => s,
        Err(AccountError::Credentials) => {
            let mut steps = vec![connect, identity_ok(deps, tenant)];
            steps.push(Step::fail(
                "login",
                format!("login as {} refused", tenant.name),
                "the key in the Secret is not the account's password: compare them, or \
                 rotate the key (docs/operations.md, \"Rotate a tenant's key\")",
            ));
            steps.extend(["folders", "file"].map(|s| Step::skipped(s, "login")));
            return steps;
        }
        Err(e) => {
            let steps = vec![connect, identity_failed(tenant, &e)];
            return skip_after_all(steps, &["login", "folders", "file"], identity);
        }
    };
    let mut steps = vec![connect, identity_ok(deps, tenant)];
    steps.push(Step::ok("login", format!("logged in as {}", tenant.name)));
    steps.push(folders(session.as_mut()).await);
    steps.push(file(session.as_mut()).await);
    session.quit().await;
    steps
}

fn skip_after(first: Step, rest: &[&'static str], needs: &str) -> Vec<Step> {
    skip_after_all(vec![first], rest, needs)
}

fn skip_after_all(mut steps: Vec<Step>, rest: &[&'static str], needs: &str) -> Vec<Step> {
    steps.extend(rest.iter().map(|s| Step::skipped(s, needs)));
    steps
}

/// DNS, then a TCP connection to the first address that answers (closed at once).
pub async fn connect(tenant: &Tenant, timeout: Duration) -> Step {
    let (host, port) = (tenant.ftps_host.as_str(), port_of(tenant));
    let addrs: Vec<std::net::SocketAddr> =
        match tokio::time::timeout(timeout, tokio::net::lookup_host((host, port))).await {
            Ok(Ok(a)) => a.collect(),
            Ok(Err(e)) => return dns_failed(host, &e.to_string()),
            Err(_) => return dns_failed(host, &format!("no answer within {timeout:?}")),
        };
    if addrs.is_empty() {
        return dns_failed(host, "no address");
    }
    let mut last = String::new();
    for addr in &addrs {
        let started = Instant::now();
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_stream)) => {
                let ms = started.elapsed().as_millis();
                return Step::ok(
                    "connect",
                    format!("{host}:{port} → {addr}, connected in {ms} ms"),
                )
                .with_data(json!({"host": host, "port": port, "address": addr.to_string()}));
            }
            Ok(Err(e)) => last = format!("{addr}: {e}"),
            Err(_) => last = format!("{addr}: no answer within {timeout:?}"),
        }
    }
    Step::fail(
        "connect",
        format!("{host}:{port} resolves, but no connection: {last}"),
        "is the port right (ftps_port / sftp_port in the registry)? Then the tenant's firewall \
         (it must let our egress addresses in) and our egress NetworkPolicy",
    )
}

fn dns_failed(host: &str, why: &str) -> Step {
    Step::fail(
        "connect",
        format!("{host} does not resolve: {why}"),
        "check ftps_host in the registry (a typo?) and that the name is public DNS",
    )
}

fn identity_ok(deps: &Deps, tenant: &Tenant) -> Step {
    match tenant.transport {
        Transport::Ftps => {
            let trust = match &deps.settings.ftps.ca_file {
                Some(p) => format!("the CA of ftps.ca_file {}", p.display()),
                None => "the Mozilla root CAs".to_owned(),
            };
            Step::ok(
                "tls",
                format!(
                    "AUTH TLS; certificate for {} verified against {trust}",
                    tenant.ftps_host
                ),
            )
        }
        Transport::Sftp => Step::ok(
            "host_key",
            format!(
                "the server's host key is one of the {} pinned in the registry",
                tenant.sftp_host_keys.len()
            ),
        ),
    }
}

fn identity_failed(tenant: &Tenant, e: &AccountError) -> Step {
    let step = identity_step(tenant);
    match e {
        AccountError::Certificate(why) => Step::fail(
            step,
            format!("certificate refused: {why}"),
            "the server's certificate must chain to a CA we trust (ftps.ca_file, else the \
             Mozilla roots), name ftps_host and be in date: ask the tenant to fix it, or add \
             their private CA to ftps.ca_file; verification is never turned off",
        ),
        AccountError::HostKey(why) => Step::fail(
            step,
            format!("host key refused: {why}"),
            "the server's host key is not the one pinned (sftp_host_key): get the key from the \
             tenant by a trusted channel (ssh-keyscan only shows what answers) and update the \
             registry",
        ),
        other => Step::fail(
            step,
            format!("the handshake failed: {other}"),
            match tenant.transport {
                Transport::Ftps => {
                    "is it an FTPS server with explicit TLS (AUTH TLS) on that port? Implicit \
                     FTPS (port 990) and plain FTP are not supported"
                }
                Transport::Sftp => "is it an SSH server with the sftp subsystem on that port?",
            },
        ),
    }
}

/// Each folder of [`FOLDERS`]: listed in the root, then a probe file uploaded (to a temporary
/// name and renamed, as every upload of a run), removed, and asked for again.
async fn folders(session: &mut dyn Account) -> Step {
    let root = match session.list("/").await {
        Ok(names) => names,
        Err(e) => {
            return Step::fail(
                "folders",
                format!("cannot list the account's root: {e}"),
                "the account must be able to list its root folder",
            );
        }
    };
    let mut problems = Vec::new();
    let mut data = Vec::new();
    for dir in FOLDERS {
        let present = root.iter().any(|n| n == dir.trim_start_matches('/'));
        let writable = if present {
            match probe(session, dir).await {
                Ok(()) => Some(true),
                Err(why) => {
                    problems.push(format!("{dir} {why}"));
                    Some(false)
                }
            }
        } else {
            problems.push(format!("{dir} is missing"));
            None
        };
        data.push(json!({"path": dir, "present": present, "writable": writable}));
    }
    let data = json!(data);
    if problems.is_empty() {
        return Step::ok(
            "folders",
            format!(
                "{} present and writable (probe written and removed)",
                FOLDERS.join(", ")
            ),
        )
        .with_data(data);
    }
    Step::fail(
        "folders",
        problems.join("; "),
        "create the missing folders on the account, owned by the tenant's user and writable by \
         it (the tenant's FTP admin does; the doctor creates nothing)",
    )
    .with_data(data)
}

/// A probe file in `dir`: written, removed, and seen gone. The error says why not.
async fn probe(session: &mut dyn Account, dir: &str) -> Result<(), String> {
    let name = format!(".user-import-doctor-{:08x}", rand::random::<u32>());
    let path = format!("{dir}/{name}");
    let mut body: &[u8] = b"user-import doctor probe: safe to delete\n";
    if let Err(e) = session.upload(&path, &mut body).await {
        let left = session
            .take_leftover()
            .map(|temp| format!(" (its temporary file {temp} may be left: remove it by hand)"))
            .unwrap_or_default();
        return Err(match e {
            AccountError::Refused(why) => format!("is not writable: {why}{left}"),
            e => format!("could not be written to: {e}{left}"),
        });
    }
    if let Err(e) = session.remove(&path).await {
        return Err(format!(
            "is writable, but the probe {path} could not be removed ({e}): remove it by hand"
        ));
    }
    // SIZE (SFTP: stat), not a listing: FTP servers leave dot files out of NLST.
    match session.size(&path).await {
        Ok(Some(_)) => Err(format!(
            "is writable, but the probe {path} is still there after removing it: remove it by hand"
        )),
        Ok(None) => Ok(()),
        Err(e) => Err(format!("cannot be read back: {e}")),
    }
}

/// `/uploads/user-import.csv`: its size and modification time. No file is not a failure: the
/// run ends `no-file`.
async fn file(session: &mut dyn Account) -> Step {
    let path = layout::UPLOAD_PATH;
    match session.stat(path).await {
        Ok(Some(stat)) => {
            let when = stat
                .modified
                .map(|t| format!("{}Z", t.format("%Y-%m-%dT%H:%M:%S")));
            Step::ok(
                "file",
                format!(
                    "{path}: {} bytes, modified {}",
                    stat.size,
                    when.as_deref().unwrap_or("(the server does not say)")
                ),
            )
            .with_data(json!({"path": path, "present": true, "size": stat.size, "modified": when}))
        }
        Ok(None) => Step::warn(
            "file",
            format!("{path}: no file yet"),
            "not an error: the run ends no-file until the tenant uploads one (the tenant admin \
             guide says how)",
        )
        .with_data(json!({"path": path, "present": false})),
        Err(e) => Step::fail(
            "file",
            format!("{path}: cannot be read: {e}"),
            "the account must let its user read /uploads",
        ),
    }
}
