//! SIGSTOP trials: a `worker run` process is stopped mid-import for longer than its lock's TTL;
//! meanwhile another worker takes the tenant with a new job and completes it; then the stopped
//! worker is resumed. It must notice that its lock is gone and make no further side effect: the
//! platform fake's count of write calls must not move from the resume until the stale job has
//! settled (handed back, then found already processed). Any write in that span is counted as an
//! overlap.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::Utc;
use platform_fake::Faults;
use rand::Rng;
use rand::rngs::StdRng;

use harness::fixtures::{tenant_log, usernames, users_csv};
use harness::fleet_env::{FleetEnv, FleetOptions};

use crate::Plan;
use crate::common::{self, Events, job_lines, missing_users, signal, spawn_worker};
use crate::table::Row;

const LOCK_TTL: Duration = Duration::from_secs(2);

pub async fn run(plan: Plan, mut rng: StdRng) -> Result<Row> {
    let env = FleetEnv::new(FleetOptions {
        tenants: 1,
        lock_ttl: "2s",
        concurrency: 2,
        // A stopped worker keeps what the broker already pushed to it: with prefetch 1 the
        // takeover job goes to the other worker.
        prefetch: 1,
        ..FleetOptions::default()
    })
    .await;
    env.fake.set_faults(Faults {
        latency_ms: 25,
        ..Faults::default()
    });
    let result = trials(&env, plan, &mut rng).await;
    env.cleanup().await;
    result
}

async fn trials(env: &FleetEnv, plan: Plan, rng: &mut StdRng) -> Result<Row> {
    let mut row = Row::new("sigstop");
    let account = &env.accounts[0];
    let tenant = env.tenant(0).to_owned();
    let domain = env.domain(0);
    let users = plan.users.max(40);
    let mut stale_writes = Vec::new();
    let mut noticed = 0;
    let mut stop_lengths: Vec<f64> = Vec::new();
    for i in 0..plan.stops {
        let tag = format!("s{i}u");
        let names = usernames(&tag, users);
        account.put("uploads/user-import.csv", users_csv(&tag, users).as_bytes());
        let (mut victim, pid) = spawn_worker(env)?;
        let job = env.publish_job(&tenant, Utc::now()).await;
        row.jobs += 1;
        common::until(
            Duration::from_secs(60),
            "the import to be under way",
            || {
                names
                    .iter()
                    .filter(|u| env.fake.user(&domain, u).is_some())
                    .count()
                    >= 3
            },
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..200))).await;
        signal(pid, "STOP")?;
        let stopped = Instant::now();
        row.faults += 1;
        row.runs += 1;
        // Past the TTL: the lock expires while the worker cannot renew it.
        tokio::time::sleep(LOCK_TTL + Duration::from_secs(1)).await;

        let (tx, mut events) = Events::new();
        let other = env.spawn_worker(&format!("takeover-{i}"), tx);
        let takeover = env.publish_job(&tenant, Utc::now()).await;
        row.jobs += 1;
        let done = events
            .wait_settled(&takeover.job_id, Duration::from_secs(90))
            .await?;
        if done.disposition != "imported" {
            anyhow::bail!(
                "the takeover job ended {} ({}), not imported",
                done.disposition,
                done.reason
            );
        }

        let writes_at_resume = env.fake.calls(&domain).writes();
        let resumed = Instant::now();
        stop_lengths.push(stopped.elapsed().as_secs_f64());
        signal(pid, "CONT")?;
        // The stale run stops (its log says it will be retried), then the job runs again and
        // finds the file already processed.
        let settled = common::until(Duration::from_secs(60), "the resumed job to settle", || {
            events.settled(&job.job_id).is_some()
                || job_lines(&tenant_log(account), &job.job_id)
                    .iter()
                    .any(|l| l.contains("end: skipped") || l.contains("end: imported"))
        })
        .await;
        if settled.is_err() {
            row.lost += 1;
        } else {
            row.recovery.push(resumed.elapsed());
        }
        let lines = job_lines(&tenant_log(account), &job.job_id);
        if lines.iter().any(|l| l.contains("will be retried")) {
            noticed += 1;
        }
        let writes = env.fake.calls(&domain).writes() - writes_at_resume;
        stale_writes.push(writes);
        row.overlaps += writes as usize;
        row.overlaps += events.overlapping_runs(&tenant);
        row.missing_users += missing_users(env, 0, &names);
        victim.start_kill().context("ending the resumed worker")?;
        let _ = victim.wait().await;
        other.shutdown().await;
    }
    row.duplicate_creates = env.fake.calls(&domain).duplicate_creates();
    row.notes = format!(
        "workers stopped mid-import for {:.1}-{:.1} s (lock TTL {LOCK_TTL:?}, request timeout 5 s) \
         while another worker took the tenant; resumed workers that stopped their job and handed \
         it back: {noticed}/{}; API writes by a resumed worker before its job settled: \
         {stale_writes:?}",
        stop_lengths.iter().copied().fold(f64::INFINITY, f64::min),
        stop_lengths.iter().copied().fold(0.0, f64::max),
        row.runs
    );
    Ok(row)
}
