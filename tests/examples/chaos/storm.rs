//! Platform API storms: the platform fake answers 30% of the calls with 500/502/503, or answers
//! 429 (with `Retry-After: 1`) to 90% of the calls in bursts (1.5 s on, 1.5 s off), or lets a share of the calls hang past
//! the worker's request timeout. Two in-process workers import a new file for every tenant under
//! each storm. Evidence: every job completes, every user of every file is on the platform, no
//! user is created twice; the faults counted are the fake's own injection counters.

use std::time::{Duration, Instant};

use anyhow::Result;
use chrono::Utc;
use platform_fake::Faults;
use rand::rngs::StdRng;

use harness::fixtures::{usernames, users_csv};
use harness::fleet_env::{FleetEnv, FleetOptions};

use crate::Plan;
use crate::common::{Events, missing_users};
use crate::table::Row;

pub async fn run(plan: Plan, _rng: StdRng) -> Result<Vec<Row>> {
    let env = FleetEnv::new(FleetOptions {
        tenants: plan.storm_tenants,
        lock_ttl: "5s",
        concurrency: 4,
        ..FleetOptions::default()
    })
    .await;
    let result = storms(&env, plan).await;
    env.cleanup().await;
    result
}

async fn storms(env: &FleetEnv, plan: Plan) -> Result<Vec<Row>> {
    let (tx, mut events) = Events::new();
    let workers = [
        env.spawn_worker("storm-a", tx.clone()),
        env.spawn_worker("storm-b", tx),
    ];
    let mut rows = Vec::new();
    let storms: [(&str, Faults, bool); 3] = [
        (
            "api-5xx-30%",
            Faults {
                latency_ms: 2,
                error_5xx_rate: 0.3,
                ..Faults::default()
            },
            false,
        ),
        (
            "api-429-bursts",
            Faults {
                latency_ms: 2,
                rate_429: 0.9,
                retry_after_secs: 1,
                ..Faults::default()
            },
            true,
        ),
        (
            "api-timeouts",
            Faults {
                latency_ms: 2,
                timeout_rate: 0.04,
                ..Faults::default()
            },
            false,
        ),
    ];
    for (round, (name, faults, bursts)) in storms.into_iter().enumerate() {
        let mut row = Row::new(name);
        let before: Vec<_> = (0..env.accounts.len())
            .map(|i| env.fake.calls(&env.domain(i)))
            .collect();
        env.fake.set_faults(faults.clone());
        let mut jobs = Vec::new();
        let mut names = Vec::new();
        let published_at_first = Utc::now();
        for (i, account) in env.accounts.iter().enumerate() {
            let tag = format!("a{round}t{i}u");
            account.put(
                "uploads/user-import.csv",
                users_csv(&tag, plan.users).as_bytes(),
            );
            names.push(usernames(&tag, plan.users));
            jobs.push(env.publish_job(env.tenant(i), Utc::now()).await);
        }
        let started = Instant::now();
        let published_at = published_at_first;
        row.runs = 1;
        row.jobs = jobs.len();
        // Waits for every job; 429 bursts are on for 1.5 s, off for 1.5 s, until the end.
        let deadline = started + Duration::from_secs(150);
        let mut settled = vec![None; jobs.len()];
        while settled.iter().any(Option::is_none) && Instant::now() < deadline {
            for (job, slot) in jobs.iter().zip(settled.iter_mut()) {
                if slot.is_none() {
                    *slot = events.settled(&job.job_id);
                }
            }
            if bursts {
                let on = (started.elapsed().as_millis() / 1500).is_multiple_of(2);
                env.fake.set_faults(if on {
                    faults.clone()
                } else {
                    Faults::default()
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for (i, e) in settled.into_iter().enumerate() {
            match e {
                Some(e) if e.disposition == "dead-lettered" => {
                    row.dead_lettered += 1;
                    row.notes
                        .push_str(&format!("job {} dead-lettered ({}); ", e.job_id, e.reason));
                }
                Some(e) => {
                    row.missing_users += missing_users(env, i, &names[i]);
                    if let Some(end) = e.ended {
                        row.recovery
                            .push((end - published_at).to_std().unwrap_or_default());
                    }
                }
                None => row.lost += 1,
            }
        }
        env.fake.set_faults(Faults::default());
        let mut injected = [0u64; 3];
        for (i, b) in before.iter().enumerate() {
            let now = env.fake.calls(&env.domain(i));
            injected[0] += now.injected_5xx - b.injected_5xx;
            injected[1] += now.injected_429 - b.injected_429;
            injected[2] += now.injected_timeouts - b.injected_timeouts;
            row.duplicate_creates += now.duplicate_creates() - b.duplicate_creates();
            row.faults += (now.injected_5xx - b.injected_5xx)
                + (now.injected_429 - b.injected_429)
                + (now.injected_timeouts - b.injected_timeouts);
        }
        row.overlaps = env
            .accounts
            .iter()
            .enumerate()
            .map(|(i, _)| events.overlapping_runs(env.tenant(i)))
            .sum();
        row.notes.push_str(&format!(
            "{} tenants × {} users; injected 5xx {}, 429 {}, hung calls {}; recovery = job \
             duration under the storm",
            env.accounts.len(),
            plan.users,
            injected[0],
            injected[1],
            injected[2]
        ));
        rows.push(row);
    }
    for w in workers {
        w.shutdown().await;
    }
    Ok(rows)
}
