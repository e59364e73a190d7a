//! SIGKILL trials: a `worker run` process is killed at a random point of a chosen stage (fetch,
//! hash, import, report) while an in-process worker competes for the same queue. Evidence: the
//! killed job must complete (or be dead-lettered with a reason), the competing worker must never
//! run the tenant while the killed one could still hold it, no user may be created twice, and
//! every user of the file must be on the platform at the end.
//!
//! Lanes (one tenant each, with its own queues, Redis prefix and fake) run side by side; trials
//! within a lane run one after the other.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::Utc;
use platform_fake::Faults;
use rand::Rng;
use rand::rngs::StdRng;

use harness::fixtures::{tenant_log, usernames, users_csv};
use harness::fleet_env::{FleetEnv, FleetOptions};

use crate::Plan;
use crate::common::{self, Events, dead_letters, job_lines, missing_users, spawn_worker};
use crate::table::Row;

/// A stage, the sign that it has begun, and how long after that sign a kill may land (random
/// within the window, in ms). Signs are FTP commands in vsftpd's log (written as they arrive) or,
/// for the import, the platform fake's first call of the job.
const STAGES: [(&str, Sign, u64); 4] = [
    ("fetch", Sign::Ftp("RETR /uploads/user-import.csv"), 10),
    ("hash", Sign::Ftp("NLST /tmp"), 5),
    ("import", Sign::Api, 0), // window: the import's expected length
    ("report", Sign::Ftp("STOR /reports/"), 25),
];

#[derive(Clone, Copy)]
enum Sign {
    Ftp(&'static str),
    Api,
}

/// The FTP commands of `user` in vsftpd's log after byte `from`.
fn ftp_commands(log: &std::path::Path, from: u64, user: &str) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(log)
        && f.seek(SeekFrom::Start(from)).is_ok()
    {
        let _ = f.read_to_string(&mut text);
    }
    let tag = format!("[{user}] FTP command");
    text.lines()
        .filter(|l| l.contains(&tag))
        .filter_map(|l| {
            l.rsplit_once(", \"")
                .map(|(_, c)| c.trim_end_matches('"').to_owned())
        })
        .collect()
}

/// What one lane saw.
#[derive(Default)]
struct Lane {
    kills: u64,
    jobs: usize,
    lost: usize,
    dead: Vec<String>,
    overlaps: usize,
    duplicate_creates: u64,
    missing: usize,
    recovery: Vec<Duration>,
    by_target: BTreeMap<&'static str, usize>,
    by_reached: BTreeMap<String, usize>,
    after_end: usize,
}

pub async fn run(plan: Plan, mut rng: StdRng) -> Result<Row> {
    let per_lane = plan.kills.div_ceil(plan.lanes);
    let mut lanes = Vec::new();
    for lane in 0..plan.lanes {
        let seed: u64 = rng.random();
        lanes.push(tokio::spawn(run_lane(plan, lane, per_lane, seed)));
    }
    let mut row = Row::new("sigkill");
    let mut by_target: BTreeMap<&str, usize> = BTreeMap::new();
    let mut by_reached: BTreeMap<String, usize> = BTreeMap::new();
    let mut after_end = 0;
    let mut dead = Vec::new();
    for l in lanes {
        let l = l.await.context("a lane panicked")??;
        row.runs += l.kills as usize;
        row.faults += l.kills;
        row.jobs += l.jobs;
        row.lost += l.lost;
        row.dead_lettered += l.dead.len();
        row.overlaps += l.overlaps;
        row.duplicate_creates += l.duplicate_creates;
        row.missing_users += l.missing;
        row.recovery.extend(l.recovery);
        for (k, v) in l.by_target {
            *by_target.entry(k).or_default() += v;
        }
        for (k, v) in l.by_reached {
            *by_reached.entry(k).or_default() += v;
        }
        after_end += l.after_end;
        dead.extend(l.dead);
    }
    let fmt = |m: &BTreeMap<String, usize>| -> String {
        m.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let targets: BTreeMap<String, usize> = by_target
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    row.notes = format!(
        "{} workers killed; aimed at: {}; last stage in the log at the kill: {}; {after_end} \
         kills landed after the job had ended (it was not run again){}",
        row.faults,
        fmt(&targets),
        fmt(&by_reached),
        if dead.is_empty() {
            String::new()
        } else {
            format!("; dead-lettered: {}", dead.join(", "))
        }
    );
    Ok(row)
}

fn redis_has(redis: &mut redis::Connection, key: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(key)
        .query::<i64>(redis)
        .is_ok_and(|n| n == 1)
}

async fn run_lane(plan: Plan, lane: usize, trials: usize, seed: u64) -> Result<Lane> {
    use rand::SeedableRng;
    let mut rng = StdRng::seed_from_u64(seed);
    let env = FleetEnv::new(FleetOptions {
        tenants: 1,
        lock_ttl: "2s",
        concurrency: 2,
        // One delivery per worker at a time: the killed worker holds only the job it runs, so
        // every other delivery is settled by the in-process worker, whose events are watched.
        prefetch: 1,
        ..FleetOptions::default()
    })
    .await;
    let latency = 10;
    env.fake.set_faults(Faults {
        latency_ms: latency,
        ..Faults::default()
    });
    let result = lane_trials(&env, plan, lane, trials, &mut rng, latency).await;
    env.cleanup().await;
    result
}

async fn lane_trials(
    env: &FleetEnv,
    plan: Plan,
    lane: usize,
    trials: usize,
    rng: &mut StdRng,
    latency: u64,
) -> Result<Lane> {
    let mut out = Lane::default();
    let account = &env.accounts[0];
    let tenant = env.tenant(0).to_owned();
    let import_window = (plan.users as u64 * 2 * latency / 2).max(50);
    let domain = env.domain(0);
    let lock_key = format!("{}:lock:{tenant}", env.prefix);
    let mut redis = redis::Client::open(harness::redis_url())?.get_connection()?;
    for i in 0..trials {
        let (stage, sign, window) = STAGES[i % STAGES.len()];
        let window = if window == 0 { import_window } else { window };
        let tag = format!("k{lane}n{i}u");
        let names = usernames(&tag, plan.users);
        account.put(
            "uploads/user-import.csv",
            users_csv(&tag, plan.users).as_bytes(),
        );

        let ftp_log = &harness::ftps().await.log_file;
        let from = std::fs::metadata(ftp_log).map(|m| m.len()).unwrap_or(0);
        let api_before = env.fake.calls(&domain).total();
        let (mut victim, _pid) = spawn_worker(env)?;
        let job = env.publish_job(&tenant, Utc::now()).await;
        out.jobs += 1;
        // Once the killed worker holds the tenant, a second worker competes for the queue and a
        // redundant job arrives for the tenant: it must be skipped, never run alongside.
        common::until_every(
            Duration::from_secs(60),
            Duration::from_millis(2),
            "the tenant lock",
            || redis_has(&mut redis, &lock_key),
        )
        .await?;
        let (tx, mut events) = Events::new();
        let competitor = env.spawn_worker(&format!("w{lane}-{i}"), tx);
        let redundant = env.publish_job(&tenant, Utc::now()).await;
        out.jobs += 1;
        common::until_every(
            Duration::from_secs(60),
            Duration::from_millis(2),
            &format!("the {stage} stage of job {}", job.job_id),
            || match sign {
                Sign::Ftp(cmd) => ftp_commands(ftp_log, from, &tenant)
                    .iter()
                    .any(|c| c.starts_with(cmd)),
                Sign::Api => env.fake.calls(&domain).total() > api_before,
            },
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..=window))).await;
        victim.start_kill().context("SIGKILL")?;
        let _ = victim.wait().await;
        let killed_at = Utc::now();
        let killed = Instant::now();
        out.kills += 1;
        *out.by_target.entry(stage).or_default() += 1;

        let lines = job_lines(&tenant_log(account), &job.job_id);
        let ended_before_kill = lines.iter().any(|l| l.contains("end: imported"));
        let cmds = ftp_commands(ftp_log, from, &tenant);
        let sent = |p: &str| cmds.iter().any(|c| c.starts_with(p));
        let reached = if ended_before_kill {
            "ended"
        } else if sent("STOR /tmp/") {
            "report (marker written)"
        } else if sent("STOR /reports/") {
            "report"
        } else if env.fake.calls(&domain).total() > api_before {
            "import"
        } else if sent("NLST /tmp") {
            "hash"
        } else if sent("RETR /uploads/user-import.csv") {
            "fetch"
        } else {
            "before fetch"
        };
        *out.by_reached.entry(reached.to_owned()).or_default() += 1;

        // The killed job must come back and complete, unless it had completed before the kill.
        // `None`: lost (it neither completed nor was dead-lettered); `Some(None)`: completed by
        // the killed worker before the kill.
        let settled = if ended_before_kill {
            match events
                .wait_settled(&job.job_id, Duration::from_secs(10))
                .await
            {
                Ok(e) => Some(Some(e)),
                Err(_) if env.queued().await? == 0 => {
                    out.after_end += 1;
                    Some(None)
                }
                Err(_) => None,
            }
        } else {
            events
                .wait_settled(&job.job_id, Duration::from_secs(90))
                .await
                .ok()
                .map(Some)
        };
        let completed = match &settled {
            None => {
                eprintln!("chaos: sigkill: the killed job {} was lost", job.job_id);
                out.lost += 1;
                false
            }
            Some(None) => true,
            Some(Some(e)) if e.disposition == "dead-lettered" => {
                out.dead.push(format!("{} ({})", e.job_id, e.reason));
                false
            }
            Some(Some(e)) => {
                if let Some(end) = e.ended {
                    out.recovery.push(
                        (end - killed_at)
                            .to_std()
                            .unwrap_or_else(|_| killed.elapsed()),
                    );
                }
                true
            }
        };
        if completed {
            out.missing += missing_users(env, 0, &names);
        }
        if events
            .wait_settled(&redundant.job_id, Duration::from_secs(60))
            .await
            .is_err()
        {
            eprintln!(
                "chaos: sigkill: the redundant job {} was lost",
                redundant.job_id
            );
            out.lost += 1;
        }
        // The competitor must not have run the tenant while the killed worker was alive (unless
        // the killed worker had finished and released the tenant before the kill).
        events.drain();
        if !ended_before_kill {
            out.overlaps += events
                .all
                .iter()
                .filter(|e| e.tenant == tenant && e.started.is_some_and(|s| s < killed_at))
                .count();
        }
        out.overlaps += events.overlapping_runs(&tenant);
        competitor.shutdown().await;
    }
    // Dead letters are not lost (they carry their reason); anything else left is.
    let dead = dead_letters(env).await;
    let calls = env.fake.calls(&env.domain(0));
    out.duplicate_creates = calls.duplicate_creates();
    for (job, reason) in dead {
        if !out.dead.iter().any(|d| d.starts_with(&job)) {
            out.dead.push(format!("{job} ({reason})"));
        }
    }
    Ok(out)
}
