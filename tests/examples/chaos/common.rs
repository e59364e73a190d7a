//! What the trials share: the worker processes they start (so they can all be killed when the run
//! ends, however it ends), signals, files, waits, job events and the queues' depth.

use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use worker::fleet::JobEvent;

use harness::fleet_env::FleetEnv;

/// Processes started by this run: `(pid, whole run)`. A trial's own are killed when the trial
/// ends; those of a trial that runs alongside the others (`whole run`) only when the run ends.
static STARTED: Mutex<Vec<(u32, bool)>> = Mutex::new(Vec::new());

/// Starts `worker run` for `env` and remembers its pid.
pub fn spawn_worker(env: &FleetEnv) -> Result<(tokio::process::Child, u32)> {
    let child = env.spawn_worker_process();
    let pid = child.id().context("the worker process has no pid")?;
    track(pid);
    Ok((child, pid))
}

/// Remembers a process a trial started, to be killed when the trial ends.
pub fn track(pid: u32) {
    STARTED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((pid, false));
}

/// Remembers a process of a trial that runs alongside the others, to be killed when the run
/// ends (not when another trial ends).
pub fn track_for_run(pid: u32) {
    STARTED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((pid, true));
}

/// SIGKILLs every process the trials started that is still there (`whole_run`: also those of
/// the trials that run alongside).
pub fn kill_started_processes(whole_run: bool) {
    let pids: Vec<u32> = {
        let mut started = STARTED.lock().unwrap_or_else(|p| p.into_inner());
        let (kill, keep): (Vec<_>, Vec<_>) =
            started.drain(..).partition(|(_, run)| whole_run || !run);
        *started = keep;
        kill.into_iter().map(|(pid, _)| pid).collect()
    };
    for pid in pids {
        let _ = signal(pid, "KILL");
    }
}

/// Sends `SIG<name>` to `pid`.
pub fn signal(pid: u32, name: &str) -> Result<()> {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stderr(std::process::Stdio::null())
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -{name} {pid} failed");
    }
    Ok(())
}

/// The log lines of one job (every run of it).
pub fn job_lines(log: &str, job: &uuid::Uuid) -> Vec<String> {
    let tag = format!("[job {job}]");
    log.lines()
        .filter(|l| l.contains(&tag))
        .map(str::to_owned)
        .collect()
}

/// Polls `check` every 20 ms until it holds; an error after `timeout`.
pub async fn until(timeout: Duration, what: &str, check: impl FnMut() -> bool) -> Result<()> {
    until_every(timeout, Duration::from_millis(20), what, check).await
}

/// Polls `check` every `every` until it holds; an error after `timeout`.
pub async fn until_every(
    timeout: Duration,
    every: Duration,
    what: &str,
    mut check: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    while !check() {
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(every).await;
    }
    Ok(())
}

/// The settled deliveries of the in-process workers, as they come.
#[derive(Debug)]
pub struct Events {
    pub rx: mpsc::UnboundedReceiver<JobEvent>,
    pub all: Vec<JobEvent>,
}

/// Dispositions after which a job is done for good (or was redundant).
pub const TERMINAL: [&str; 6] = [
    "imported",
    "already-processed",
    "no-file",
    "skipped-busy",
    "duplicate",
    "superseded",
];

impl Events {
    pub fn new() -> (mpsc::UnboundedSender<JobEvent>, Self) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            tx,
            Self {
                rx,
                all: Vec::new(),
            },
        )
    }

    pub fn drain(&mut self) {
        while let Ok(e) = self.rx.try_recv() {
            self.all.push(e);
        }
    }

    /// The event that ended `job` (completed or dead-lettered), if any yet.
    pub fn settled(&mut self, job: &uuid::Uuid) -> Option<JobEvent> {
        self.drain();
        let id = job.to_string();
        self.all
            .iter()
            .find(|e| {
                e.job_id == id
                    && (TERMINAL.contains(&e.disposition) || e.disposition == "dead-lettered")
            })
            .cloned()
    }

    /// Waits until `job` settles.
    pub async fn wait_settled(&mut self, job: &uuid::Uuid, timeout: Duration) -> Result<JobEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(e) = self.settled(job) {
                return Ok(e);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("job {job} did not settle within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs of `tenant` (pipeline started) that overlap in time: each pair counted once.
    pub fn overlapping_runs(&mut self, tenant: &str) -> usize {
        self.drain();
        let runs: Vec<(DateTime<Utc>, DateTime<Utc>)> = self
            .all
            .iter()
            .filter(|e| e.tenant == tenant)
            .filter_map(|e| Some((e.started?, e.ended?)))
            .collect();
        let mut n = 0;
        for (i, a) in runs.iter().enumerate() {
            for b in &runs[i + 1..] {
                if a.0 < b.1 && b.0 < a.1 {
                    n += 1;
                }
            }
        }
        n
    }
}

/// The job ids of the messages now in `env`'s dead-letter queue, with their reasons (taken off
/// the queue).
pub async fn dead_letters(env: &FleetEnv) -> Vec<(String, String)> {
    env.dead_letters()
        .await
        .into_iter()
        .map(|(body, props)| {
            let job = match shared::job::JobMessage::decode(&body) {
                Ok(shared::job::JobMessage::V1(j)) => j.job_id.to_string(),
                Err(_) => String::from_utf8_lossy(&body).chars().take(40).collect(),
            };
            let reason = shared::amqp::header_str(&props, shared::amqp::HEADER_REASON)
                .unwrap_or_default()
                .to_owned();
            (job, reason)
        })
        .collect()
}

/// Users of `names` that `env`'s platform fake does not have for tenant `i`.
pub fn missing_users(env: &FleetEnv, i: usize, names: &[String]) -> usize {
    let domain = env.domain(i);
    names
        .iter()
        .filter(|u| env.fake.user(&domain, u).is_none())
        .count()
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
