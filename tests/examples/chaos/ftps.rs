//! The FTPS server dies mid-download: as soon as vsftpd logs the tenant's
//! `RETR /uploads/user-import.csv`, the processes of that FTP session (the unprivileged one that
//! runs as the tenant's user, and its privileged parent) are SIGKILLed, so the control and data
//! connections drop under the transfer. The file is a few MB (rows padded with extra columns,
//! which the import reports once and ignores) so that the transfer is still running
//! when the kill lands; whether it was is read back from vsftpd's log (no `OK DOWNLOAD` line of
//! that session before the kill) and shown. The vsftpd listener stays up, as a restarted server
//! would be. Evidence: the job is retried by the fleet and imported once, every user is on the
//! platform, none created twice, the two runs of the tenant never overlap.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use chrono::Utc;
use rand::rngs::StdRng;

use harness::fixtures::HEADER;
use harness::fixtures::usernames;
use harness::fleet_env::{FleetEnv, FleetOptions};

use crate::Plan;
use crate::common::{Events, missing_users};
use crate::table::Row;

/// A file of `n` new users, each row padded with 40 extra columns of 1,000 characters (cells
/// stay under the import's 1,024-character limit, rows under its 64 KiB record limit).
fn padded_csv(tag: &str, n: usize) -> String {
    const COLUMNS: usize = 40;
    let filler: String = std::iter::repeat_n(format!(",{}", "x".repeat(1000)), COLUMNS).collect();
    let extra: String = (1..=COLUMNS).map(|c| format!(",Notes {c}")).collect();
    let mut csv = format!("{HEADER}{extra}\n");
    for i in 0..n {
        csv.push_str(&format!(
            "{tag}{i:03},First{i},Last{i},{tag}{i}@example.org,Sales,,{filler}\n"
        ));
    }
    csv
}

/// vsftpd's log from byte `from`.
fn log_since(log: &std::path::Path, from: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(log)
        && f.seek(SeekFrom::Start(from)).is_ok()
    {
        let _ = f.read_to_string(&mut text);
    }
    text
}

pub async fn run(plan: Plan, _rng: StdRng) -> Result<Row> {
    let env = FleetEnv::new(FleetOptions {
        tenants: 1,
        lock_ttl: "3s",
        ..FleetOptions::default()
    })
    .await;
    let mut row = Row::new("ftps-down");
    let result = trials(&env, plan, &mut row).await;
    env.cleanup().await;
    result?;
    Ok(row)
}

async fn trials(env: &FleetEnv, plan: Plan, row: &mut Row) -> Result<()> {
    let log_file = harness::ftps().await.log_file.clone();
    let user = env.tenant(0).to_owned();
    let domain = env.domain(0);
    let (tx, mut events) = Events::new();
    let workers = [
        env.spawn_worker("ftps-a", tx.clone()),
        env.spawn_worker("ftps-b", tx),
    ];
    let mut mid_download = 0;
    let mut retried = 0;
    let mut outcomes = Vec::new();
    let result = async {
        for i in 0..plan.restarts.max(2) {
            let tag = format!("f{i}u");
            let users = 120;
            let names = usernames(&tag, users);
            // ~5 MB: the transfer takes long enough for the kill to land inside it.
            env.accounts[0].put(
                "uploads/user-import.csv",
                padded_csv(&tag, users).as_bytes(),
            );
            let from = std::fs::metadata(&log_file).map_or(0, |m| m.len());
            let job = env.publish_job(&user, Utc::now()).await;
            let tag_line = format!("[{user}] FTP command");
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if log_since(&log_file, from).lines().any(|l| {
                    l.contains(&tag_line) && l.contains("\"RETR /uploads/user-import.csv\"")
                }) {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("the download never started (no RETR in vsftpd's log)");
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let killed = harness::servers::sessions::kill_sessions(harness::Server::Vsftpd, &user);
            let at_kill = log_since(&log_file, from);
            // The file's own download (a scheduled job also downloads its tick record first).
            let done_before = at_kill.lines().any(|l| {
                l.contains(&format!("[{user}] OK DOWNLOAD"))
                    && l.contains("/uploads/user-import.csv")
            });
            if killed > 0 && !done_before {
                mid_download += 1;
            }
            let back = Utc::now();
            row.runs += 1;
            row.faults += 1;
            row.jobs += 1;
            match events
                .wait_settled(&job.job_id, Duration::from_secs(120))
                .await
            {
                Ok(e) if e.disposition == "dead-lettered" => {
                    row.dead_lettered += 1;
                    outcomes.push(format!("dead-lettered ({})", e.reason));
                }
                Ok(e) => {
                    if let Some(end) = e.ended {
                        row.recovery.push((end - back).to_std().unwrap_or_default());
                    }
                    outcomes.push(e.disposition.to_owned());
                    if e.disposition != "imported" {
                        bail!("the interrupted job ended {} ({})", e.disposition, e.reason);
                    }
                }
                Err(_) => {
                    row.lost += 1;
                    outcomes.push("lost".into());
                }
            }
            row.missing_users += missing_users(env, 0, &names);
            events.drain();
            let id = job.job_id.to_string();
            retried += events
                .all
                .iter()
                .filter(|e| e.job_id == id && e.disposition == "retry-scheduled")
                .count();
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    row.overlaps += events.overlapping_runs(&user);
    row.duplicate_creates = env.fake.calls(&domain).duplicate_creates();
    for w in workers {
        w.shutdown().await;
    }
    result?;
    if mid_download == 0 || retried == 0 {
        bail!(
            "no kill landed while the file was being downloaded ({mid_download}) or no job was \
             retried ({retried}): the trial proved nothing"
        );
    }
    row.notes = format!(
        "the tenant's vsftpd session SIGKILLed on its RETR of a ~5 MB file, {} times; still \
         downloading when killed: {mid_download}; deliveries retried by the fleet: {retried}; \
         jobs → {}",
        row.faults,
        outcomes.join(", ")
    );
    Ok(())
}
