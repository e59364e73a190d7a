//! Restarts of the fleet's own services mid-run, on private instances this run starts (never the
//! machine's): a `redis-server` on a free port, killed and started again empty (the worst case: no
//! persistence, so every lock and fence counter is gone), and a private RabbitMQ node restarted
//! with `stop_app`/`start_app`. Two in-process workers share the queue; while a job is importing
//! the service is restarted, and a fresh job for the same tenant is published as soon as it is
//! back. Evidence: the interrupted job completes, the two runs of the tenant never overlap, every
//! user is on the platform, none is created twice.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::Utc;
use platform_fake::Faults;
use rand::Rng;
use rand::rngs::StdRng;

use harness::fixtures::{tenant_log, usernames, users_csv};
use harness::fleet_env::{FleetEnv, FleetOptions};

use crate::Plan;
use crate::common::{self, Events, missing_users};
use crate::table::Row;

/// A private, empty Redis on 127.0.0.1.
struct PrivateRedis {
    port: u16,
    child: Option<tokio::process::Child>,
}

impl PrivateRedis {
    async fn start() -> Result<Self> {
        let mut r = Self {
            port: common::free_port()?,
            child: None,
        };
        r.up().await?;
        Ok(r)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    async fn up(&mut self) -> Result<()> {
        let child = tokio::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start redis-server (is it installed?)")?;
        if let Some(pid) = child.id() {
            common::track(pid);
        }
        self.child = Some(child);
        let client = redis::Client::open(self.url())?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the private redis-server on {} did not answer", self.port);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }
}

pub async fn redis(plan: Plan, mut rng: StdRng) -> Result<Row> {
    let mut redis = PrivateRedis::start().await?;
    let env = FleetEnv::new(FleetOptions {
        tenants: 1,
        redis_url: Some(redis.url()),
        lock_ttl: "3s",
        concurrency: 2,
        ..FleetOptions::default()
    })
    .await;
    let mut row = Row::new("redis-restart");
    let result = async {
        for i in 0..plan.restarts {
            let outage = Duration::from_millis(rng.random_range(300..1500));
            let mut restart = async || {
                redis.down().await;
                tokio::time::sleep(outage).await;
                redis.up().await
            };
            interrupted_job(&env, plan, &mut row, &format!("r{i}u"), &mut restart).await?;
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    env.cleanup().await;
    redis.down().await;
    result?;
    row.notes = format!(
        "a private redis-server, killed and started again empty (no persistence: locks and fence \
         counters are lost) mid-import, {} times; {}",
        row.faults, row.notes
    );
    Ok(row)
}

pub async fn rabbitmq(plan: Plan, _rng: StdRng) -> Result<Row> {
    let broker = harness::private_broker().await;
    let env = FleetEnv::new(FleetOptions {
        tenants: 1,
        amqp_url: Some(broker.amqp_url()),
        lock_ttl: "3s",
        concurrency: 2,
        ..FleetOptions::default()
    })
    .await;
    let mut row = Row::new("rabbitmq-restart");
    let runs = if plan.long { 2 } else { 1 };
    let result = async {
        for i in 0..runs {
            let mut restart = async || {
                broker.restart().await;
                Ok(())
            };
            interrupted_job(&env, plan, &mut row, &format!("q{i}u"), &mut restart).await?;
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    env.cleanup().await;
    result?;
    row.notes = format!(
        "a private RabbitMQ node restarted (stop_app/start_app) mid-import, {} times; {}",
        row.faults, row.notes
    );
    Ok(row)
}

/// One job interrupted by `restart`, a fresh job for the tenant right after it, both to
/// completion, with two in-process workers.
async fn interrupted_job(
    env: &FleetEnv,
    plan: Plan,
    row: &mut Row,
    tag: &str,
    restart: &mut impl AsyncFnMut() -> Result<()>,
) -> Result<()> {
    let users = plan.users.max(40);
    let names = usernames(tag, users);
    let domain = env.domain(0);
    let tenant = env.tenant(0).to_owned();
    env.accounts[0].put("uploads/user-import.csv", users_csv(tag, users).as_bytes());
    env.fake.set_faults(Faults {
        latency_ms: 40,
        ..Faults::default()
    });
    let (tx, mut events) = Events::new();
    let workers = [
        env.spawn_worker(&format!("{tag}-a"), tx.clone()),
        env.spawn_worker(&format!("{tag}-b"), tx),
    ];
    let job = env.publish_job(&tenant, Utc::now()).await;
    let before = names
        .iter()
        .filter(|u| env.fake.user(&domain, u).is_some())
        .count();
    common::until(
        Duration::from_secs(60),
        "the import to be under way",
        || {
            names
                .iter()
                .filter(|u| env.fake.user(&domain, u).is_some())
                .count()
                >= before + 3
        },
    )
    .await?;
    restart().await?;
    let back = Utc::now();
    let fresh = env.publish_job(&tenant, Utc::now()).await;
    row.runs += 1;
    row.faults += 1;
    row.jobs += 2;
    let mut outcomes = Vec::new();
    for j in [&job, &fresh] {
        match events
            .wait_settled(&j.job_id, Duration::from_secs(120))
            .await
        {
            Ok(e) if e.disposition == "dead-lettered" => {
                row.dead_lettered += 1;
                outcomes.push(format!("dead-lettered ({})", e.reason));
            }
            Ok(e) => {
                if j.job_id == job.job_id
                    && let Some(end) = e.ended
                {
                    row.recovery.push((end - back).to_std().unwrap_or_default());
                }
                outcomes.push(e.disposition.to_owned());
            }
            Err(_) => {
                row.lost += 1;
                outcomes.push("lost".into());
            }
        }
    }
    row.missing_users += missing_users(env, 0, &names);
    row.overlaps += events.overlapping_runs(&tenant);
    row.duplicate_creates = env.fake.calls(&domain).duplicate_creates();
    for w in workers {
        w.shutdown().await;
    }
    row.notes.push_str(&format!(
        "interrupted job → {}, fresh job → {}; ",
        outcomes[0], outcomes[1]
    ));
    Ok(())
}

/// The SMTP server is down at report time (nothing listens on its port): the report email fails.
/// The import must complete once and not be redone: the failure is recorded in the tenant log,
/// the per-record report is on the FTPS account, the SHA1 marker is written, and a second job for
/// the same file finds it already processed.
pub async fn smtp(plan: Plan, _rng: StdRng) -> Result<Row> {
    let env = FleetEnv::new(FleetOptions {
        tenants: 1,
        ..FleetOptions::default()
    })
    .await;
    let dead_port = common::free_port()?;
    let text = std::fs::read_to_string(&env.settings_path)?;
    let smtp = harness::smtp().await;
    let from = format!("[smtp]\nhost = \"{}\"\nport = {}\n", smtp.host, smtp.port);
    if !text.contains(&from) {
        bail!("the settings have no [smtp] section as expected");
    }
    let to = format!("[smtp]\nhost = \"127.0.0.1\"\nport = {dead_port}\n");
    std::fs::write(&env.settings_path, text.replace(&from, &to))?;
    let result = smtp_down(&env, plan).await;
    env.cleanup().await;
    result
}

async fn smtp_down(env: &FleetEnv, plan: Plan) -> Result<Row> {
    let mut row = Row::new("smtp-down");
    let account = &env.accounts[0];
    let domain = env.domain(0);
    let tenant = env.tenant(0).to_owned();
    let names = usernames("m0u", plan.users);
    account.put(
        "uploads/user-import.csv",
        users_csv("m0u", plan.users).as_bytes(),
    );
    let (tx, mut events) = Events::new();
    let worker = env.spawn_worker("smtp", tx);
    let job = env.publish_job(&tenant, Utc::now()).await;
    row.runs = 1;
    row.faults = 1;
    row.jobs = 2;
    let first = events
        .wait_settled(&job.job_id, Duration::from_secs(120))
        .await;
    let again = env.publish_job(&tenant, Utc::now()).await;
    let second = events
        .wait_settled(&again.job_id, Duration::from_secs(60))
        .await;
    worker.shutdown().await;
    let mut outcomes = Vec::new();
    for e in [&first, &second] {
        match e {
            Ok(e) if e.disposition == "dead-lettered" => {
                row.dead_lettered += 1;
                outcomes.push(format!("dead-lettered ({})", e.reason));
            }
            Ok(e) => outcomes.push(e.disposition.to_owned()),
            Err(_) => {
                row.lost += 1;
                outcomes.push("lost".into());
            }
        }
    }
    let log = tenant_log(account);
    let lines = common::job_lines(&log, &job.job_id);
    let recorded = lines
        .iter()
        .any(|l| l.contains("the report email could not be sent"));
    let starts = lines.iter().filter(|l| l.contains("start:")).count();
    let reports = account.list("reports").len();
    let markers = account
        .list("tmp")
        .iter()
        .filter(|n| n.ends_with(".sha1"))
        .count();
    row.missing_users = missing_users(env, 0, &names);
    let calls = env.fake.calls(&domain);
    row.duplicate_creates = calls.duplicate_creates();
    // Redone = the import ran a second time: a second start of the job, or a second job that
    // did more than find the file already processed.
    if starts > 1 || outcomes[1] != "already-processed" {
        row.overlaps += 1;
    }
    if !recorded || reports == 0 || markers == 0 {
        bail!(
            "the report was not handled as it should: email failure recorded {recorded}, report \
             files {reports}, markers {markers}"
        );
    }
    row.notes = format!(
        "SMTP unreachable for the whole job: job → {}, failure recorded in the tenant log: \
         {recorded}, per-record report on FTPS: {reports}, marker: {markers}; the same file \
         again → {} (not redone); API writes {} for {} users",
        outcomes[0],
        outcomes[1],
        calls.writes(),
        plan.users
    );
    Ok(row)
}
