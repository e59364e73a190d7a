//! Imports that last longer than the file server's idle timeout: 1,000 new users with the
//! platform fake answering every call after 1 s, 6 calls at a time (three calls per new user: the
//! mass-change guard's look-up, then the import's `GetUser` and `SetUser`; about 500 s), for one
//! tenant on vsftpd and one on OpenSSH SFTP, side by side. vsftpd runs with
//! its `idle_session_timeout` left at the default, 300 s (the harness's configuration does not
//! set it); sshd's defaults never drop an idle client, so there the trial is the same full run.
//!
//! Throughout the import the job's session only waits: no transfer between the fetch and the
//! report. The tenant log's task keeps it alive (a NOOP when idle), and a session that is gone
//! anyway is logged in again before the next write. Evidence, read back from the parts: the
//! outcome is `imported` after more than 300 s; the report is on the account, one email reached
//! the admin, the marker is written; every user is on the platform and was created once (the
//! fake's per-username create counts); no data connection was refused (vsftpd's log) and no
//! temporary or empty file is left on the account. The NOOPs vsftpd logged for the tenant are
//! shown in the notes.
//!
//! Not in the default selection (`--only long-import` runs it): `scripts/test.sh` starts it in
//! the background at the beginning of the run, so its wall time overlaps the other steps.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use platform_fake::Faults;
use worker::Outcome;

use harness::fixtures::{usernames, users_csv};
use harness::tenant_env::{Options, Server, TenantEnv};

use crate::table::Row;

/// Rows in the file.
const ROWS: usize = 1000;
/// Every API call waits this long at the fake.
const LATENCY_MS: u64 = 1000;
/// Calls at once (1,000 rows × 3 calls × 1 s / 6 ≈ 500 s).
const CONCURRENCY: usize = 6;
/// vsftpd's default `idle_session_timeout`: the import must outlast it.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Both servers at once; one row each.
pub async fn run() -> Result<Vec<Row>> {
    let (ftps, sftp) = tokio::join!(
        one("long-import-vsftpd", Server::Vsftpd),
        one("long-import-sftp", Server::Sftp)
    );
    Ok(vec![ftps, sftp])
}

async fn one(trial: &str, server: Server) -> Row {
    let mut row = Row::new(trial);
    if let Err(e) = import(&mut row, server).await {
        row.error = Some(format!("{e:#}"));
    }
    row
}

async fn import(row: &mut Row, server: Server) -> Result<()> {
    let env = TenantEnv::with(Options {
        server,
        concurrency: CONCURRENCY,
        // The production default: no log line for a long time, so the session really idles.
        progress_every: 500,
        ..Options::default()
    })
    .await;
    let tag = "lg";
    env.upload(&users_csv(tag, ROWS));
    env.fake.set_faults(Faults {
        latency_ms: LATENCY_MS,
        ..Faults::default()
    });
    row.runs = 1;
    row.jobs = 1;
    let started = Instant::now();
    let outcome = env.run().await;
    let took = started.elapsed();
    env.fake.set_faults(Faults::default());

    let calls = env.fake.calls(&env.domain);
    row.duplicate_creates = calls.duplicate_creates();
    let names = usernames(tag, ROWS);
    row.missing_users = names
        .iter()
        .filter(|n| calls.creates.get(n.as_str()).copied() != Some(1))
        .count()
        .max(ROWS.saturating_sub(env.fake.users(&env.domain).len()));
    row.recovery = vec![took];
    let noops = noops(&env).await;
    row.notes = format!(
        "{ROWS} rows, {} API calls at {LATENCY_MS} ms each, {CONCURRENCY} at a time: {:.0} s; {noops}",
        calls.calls.values().sum::<u64>(),
        took.as_secs_f64()
    );
    match &outcome {
        Ok(Outcome::Imported { counts, .. }) if counts.created == ROWS as u64 => {}
        other => {
            row.lost = 1;
            bail!(
                "expected {ROWS} users imported, got {other:?}\n{}",
                env.log()
            );
        }
    }
    if took <= IDLE_TIMEOUT {
        bail!(
            "the import took {:.0} s, not longer than the {} s idle timeout: it shows nothing",
            took.as_secs_f64(),
            IDLE_TIMEOUT.as_secs()
        );
    }
    check_account(&env).await
}

/// The report, the one email, the marker; nothing refused, nothing partial.
async fn check_account(env: &TenantEnv) -> Result<()> {
    let reports = env.reports();
    if reports.len() != 1 {
        bail!("expected one report on the account, found {reports:?}");
    }
    if env.markers().len() != 1 {
        bail!("expected one marker, found {:?}", env.markers());
    }
    let mails = env.mails(1).await;
    if mails.len() != 1 {
        bail!("expected one email to the admin, got {}", mails.len());
    }
    let log = env.log();
    if log.lines().filter(|l| l.contains("end: imported")).count() != 1 {
        bail!("expected one end line in the tenant log:\n{log}");
    }
    let refused = env.account.refused_data_connections().await;
    if !refused.is_empty() {
        bail!("refused data connections: {refused:#?}");
    }
    let partial = env.account.partial_files();
    if !partial.is_empty() {
        bail!("temporary or empty files left on the account: {partial:?}");
    }
    Ok(())
}

/// How the session was kept: the NOOPs vsftpd answered for the tenant (its log names the user).
async fn noops(env: &TenantEnv) -> String {
    if env.account.server != Server::Vsftpd {
        return "SFTP: no idle timeout at sshd's defaults".into();
    }
    let log = std::fs::read_to_string(&harness::ftps().await.log_file).unwrap_or_default();
    let tag = format!("[{}]", env.account.user);
    let mine = |needle: &str| {
        log.lines()
            .filter(|l| l.contains(&tag) && l.contains(needle))
            .count()
    };
    format!(
        "vsftpd answered {} NOOPs, {} logins, {} idle timeouts",
        mine("\"NOOP\""),
        mine("OK LOGIN"),
        mine("\"421 Timeout")
    )
}
