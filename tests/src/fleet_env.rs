//! Several tenants and workers wired to the real servers for fleet tests: one FTPS account per
//! tenant, one platform fake knowing every tenant, a registry and settings in a temp dir, the
//! test's own exchange (so its own queues) and Redis key prefix. Workers run in-process
//! (`worker::fleet::run`) or as `worker run` processes (for SIGKILL/SIGTERM).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use platform_fake::{FakeConfig, FakeHandle, TenantSeed};
use shared::amqp::{Topology, confirm_mode, job_properties, publish_confirmed};
use shared::job::{JobMessage, JobV1, Trigger};
use shared::registry::Registry;
use shared::registry::secrets::SecretSource;
use shared::settings::Settings;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use worker::Deps;
use worker::fleet::{FleetDeps, JobEvent};

use crate::FtpAccount;
use crate::binaries::worker_binary;
use crate::fixtures::{SettingsFile, TenantEntry};

#[derive(Debug)]
pub struct FleetEnv {
    pub accounts: Vec<FtpAccount>,
    pub fake: FakeHandle,
    pub exchange: String,
    pub prefix: String,
    pub amqp_url: String,
    pub dir: tempfile::TempDir,
    pub settings_path: PathBuf,
    pub env: HashMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct FleetOptions {
    pub tenants: usize,
    pub amqp_url: Option<String>,
    /// Redis (the machine's when `None`), e.g. a private instance a test restarts.
    pub redis_url: Option<String>,
    pub lock_ttl: &'static str,
    /// `worker.job_timeout`.
    pub job_timeout: &'static str,
    pub prefetch: u16,
    pub concurrency: usize,
    pub drain_timeout: &'static str,
    /// The tenants' cron schedule (the registry default when `None`).
    pub schedule: Option<&'static str>,
    /// Every tenant's FTPS password and API key (random when `None`).
    pub password: Option<String>,
    /// Tenants (by index) written with `enabled = false`.
    pub disabled: Vec<usize>,
}

impl Default for FleetOptions {
    fn default() -> Self {
        Self {
            tenants: 3,
            amqp_url: None,
            redis_url: None,
            lock_ttl: "3s",
            job_timeout: "120s",
            prefetch: 2,
            concurrency: 4,
            drain_timeout: "5s",
            schedule: None,
            password: None,
            disabled: Vec::new(),
        }
    }
}

/// A running in-process worker.
#[derive(Debug)]
pub struct WorkerHandle {
    pub stop: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

impl WorkerHandle {
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(40), self.task).await;
    }
}

impl FleetEnv {
    pub async fn new(opts: FleetOptions) -> Self {
        let ftps = crate::ftps().await;
        let smtp = crate::smtp().await;
        let accounts: Vec<FtpAccount> = (0..opts.tenants)
            .map(|_| ftps.create_account_with("t", opts.password.as_deref()))
            .collect();
        let fake = platform_fake::spawn(FakeConfig {
            tenants: accounts
                .iter()
                .map(|a| {
                    TenantSeed::new(format!("{}.learning-admin.com", a.user), a.password.clone())
                })
                .collect(),
            ..FakeConfig::default()
        })
        .await
        .unwrap_or_else(|e| panic!("cannot start the platform fake: {e}"));
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut registry = String::new();
        for (i, a) in accounts.iter().enumerate() {
            let mut extra = format!(
                "enabled = {}\nfiles = {{ settle = \"100ms\" }}\n",
                !opts.disabled.contains(&i)
            );
            if let Some(schedule) = opts.schedule {
                extra.push_str(&format!("schedule = \"{schedule}\"\n"));
            }
            registry.push_str(
                &TenantEntry {
                    api_base_url: fake.base_url(),
                    ftps_host: ftps.host.clone(),
                    ftps_port: Some(ftps.port),
                    admin_username: format!("{}.admin", a.user),
                    admin_email: format!("admin@{}.example.com", a.user),
                    extra,
                    ..TenantEntry::new(&a.user)
                }
                .toml(),
            );
        }
        let registry_path = dir.path().join("tenants.toml");
        std::fs::write(&registry_path, registry).unwrap_or_else(|e| panic!("{e}"));
        let exchange = crate::unique("x");
        let prefix = crate::unique("p");
        let amqp_url = opts.amqp_url.clone().unwrap_or_else(crate::amqp_url);
        let settings_path = dir.path().join("settings.toml");
        SettingsFile {
            work_dir: dir.path().to_owned(),
            registry: registry_path.clone(),
            ca_file: ftps.ca_file.clone(),
            smtp_host: smtp.host.clone(),
            smtp_port: smtp.port,
            smtp_timeout: None,
            request_timeout: "5s",
            redis_url: opts.redis_url.clone().unwrap_or_else(crate::redis_url),
            redis_prefix: prefix.clone(),
            import_concurrency: opts.concurrency,
            progress_every: 10,
            extra: format!(
                r#"[amqp]
url = "{amqp_url}"
exchange = "{exchange}"
prefetch = {prefetch}
delivery_limit = 10
retry_delays = ["1s", "2s", "2s"]
[worker]
region = "eu"
lock_ttl = "{lock_ttl}"
job_timeout = "{job_timeout}"
drain_timeout = "{drain}"
[http]
listen = "127.0.0.1:0"
"#,
                prefetch = opts.prefetch,
                lock_ttl = opts.lock_ttl,
                job_timeout = opts.job_timeout,
                drain = opts.drain_timeout,
            ),
        }
        .write(&settings_path);
        let env: HashMap<String, String> = accounts
            .iter()
            .map(|a| {
                let name = shared::TenantName::parse(&a.user).unwrap_or_else(|e| panic!("{e}"));
                (SecretSource::env_var_for(&name), a.password.clone())
            })
            .collect();
        Self {
            accounts,
            fake,
            exchange,
            prefix,
            amqp_url,
            dir,
            settings_path,
            env,
        }
    }

    pub fn settings(&self) -> Settings {
        Settings::load(Some(&self.settings_path), &self.env).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn topology(&self) -> Topology {
        let s = self.settings();
        Topology::new(
            &s.amqp.exchange,
            "eu",
            s.amqp.delivery_limit,
            &s.amqp.retry_delays,
        )
    }

    pub fn domain(&self, i: usize) -> String {
        format!("{}.learning-admin.com", self.accounts[i].user)
    }

    pub fn tenant(&self, i: usize) -> &str {
        &self.accounts[i].user
    }

    /// Starts a worker in this process; its events go to `events`.
    pub fn spawn_worker(
        &self,
        name: &str,
        events: mpsc::UnboundedSender<JobEvent>,
    ) -> WorkerHandle {
        let settings = self.settings();
        let registry = Registry::load(&settings.registry.file).unwrap_or_else(|e| panic!("{e}"));
        let secrets = SecretSource::new(None, &self.env);
        let health = Arc::new(shared::health::Health::default());
        let fleet = FleetDeps::from_settings(&settings, health, Some(events), name.to_owned())
            .unwrap_or_else(|e| panic!("{e:#}"));
        let deps = Deps::build(settings, registry, secrets).unwrap_or_else(|e| panic!("{e:#}"));
        let stop = CancellationToken::new();
        let task = tokio::spawn(worker::fleet::run(
            Arc::new(deps),
            Arc::new(fleet),
            stop.clone(),
        ));
        WorkerHandle { stop, task }
    }

    /// Starts `worker run` as a process with this env's settings and keys.
    pub fn spawn_worker_process(&self) -> tokio::process::Child {
        let log = self
            .dir
            .path()
            .join(format!("worker-{}.log", crate::unique("w")));
        self.spawn_worker_process_with(&[("RUST_LOG", "info,worker=debug")], &log)
    }

    /// Starts `worker run` with extra environment variables, its stderr (the logs) to `log`.
    pub fn spawn_worker_process_with(
        &self,
        vars: &[(&str, &str)],
        log: &std::path::Path,
    ) -> tokio::process::Child {
        let mut cmd = self.command(worker_binary(), &["run"], vars);
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::from(
                std::fs::File::create(log).unwrap_or_else(|e| panic!("{e}")),
            ))
            .kill_on_drop(true);
        cmd.spawn()
            .unwrap_or_else(|e| panic!("cannot start the worker: {e}"))
    }

    /// A command for one of the binaries with this env's settings and keys (no `OTEL_*` or
    /// `RUST_LOG` from the test process: only `vars`).
    pub fn command(
        &self,
        program: PathBuf,
        args: &[&str],
        vars: &[(&str, &str)],
    ) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(program);
        cmd.arg("--config").arg(&self.settings_path).args(args);
        for (k, _) in std::env::vars() {
            if k.starts_with("OTEL_") || k == "RUST_LOG" {
                cmd.env_remove(k);
            }
        }
        cmd.envs(&self.env).envs(vars.iter().copied());
        cmd
    }

    /// A confirmed publish of a job for tenant `i` (or any tenant name) to this env's exchange.
    pub async fn publish_job(
        &self,
        tenant: &str,
        scheduled_for: chrono::DateTime<chrono::Utc>,
    ) -> JobV1 {
        let job = JobV1 {
            job_id: uuid::Uuid::new_v4(),
            tenant: tenant.to_owned(),
            region: "eu".into(),
            scheduled_for,
            trigger: Trigger::Schedule,
        };
        let props = job_properties(&job, 0, None);
        self.publish_raw(&JobMessage::V1(job.clone()).encode(), props)
            .await;
        job
    }

    pub async fn publish_raw(&self, body: &[u8], props: lapin::BasicProperties) {
        let (conn, ch) = self.channel().await.unwrap_or_else(|e| panic!("amqp: {e}"));
        self.topology()
            .declare(&ch)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        confirm_mode(&ch).await.unwrap_or_else(|e| panic!("{e}"));
        publish_confirmed(&ch, &self.exchange, "eu", body, props)
            .await
            .unwrap_or_else(|e| panic!("publish: {e}"));
        let _ = conn.close(200, "done".into()).await;
    }

    /// Reads (and acks) every message now in the dead-letter queue.
    pub async fn dead_letters(&self) -> Vec<(Vec<u8>, lapin::BasicProperties)> {
        let (conn, ch) = self.channel().await.unwrap_or_else(|e| panic!("amqp: {e}"));
        let mut out = Vec::new();
        while let Some(msg) = ch
            .basic_get(
                self.topology().dead_queue.as_str().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"))
        {
            out.push((msg.delivery.data.clone(), msg.delivery.properties.clone()));
        }
        let _ = conn.close(200, "done".into()).await;
        out
    }

    /// A connection to this env's broker, and a channel on it.
    async fn channel(&self) -> Result<(Connection, lapin::Channel), lapin::Error> {
        let conn = Connection::connect(&self.amqp_url, ConnectionProperties::default()).await?;
        let ch = conn.create_channel().await?;
        Ok((conn, ch))
    }

    /// Messages ready in this env's work queue and retry queues (unacknowledged ones are not
    /// counted); a queue not declared yet counts as empty.
    pub async fn queued(&self) -> Result<u32, lapin::Error> {
        let (conn, ch) = self.channel().await?;
        let t = self.topology();
        let mut queues = vec![t.queue.clone()];
        queues.extend(t.retry_delays.iter().map(|d| t.retry_queue(*d)));
        let mut n = 0;
        for q in queues {
            if let Ok(depth) = queue_depth(&ch, &q).await {
                n += depth;
            }
        }
        let _ = conn.close(200, "done".into()).await;
        Ok(n)
    }

    /// Deletes this env's queues and exchanges.
    pub async fn cleanup(&self) {
        let Ok((conn, ch)) = self.channel().await else {
            return;
        };
        delete_topology(&ch, &self.topology()).await;
        let _ = conn.close(200, "done".into()).await;
    }
}

/// Messages ready in `queue`, read by a passive declare (an error when there is no such queue).
pub async fn queue_depth(ch: &lapin::Channel, queue: &str) -> Result<u32, lapin::Error> {
    let declared = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(declared.message_count())
}

/// Deletes a topology's queues and exchanges (best effort: what is gone already is fine).
pub async fn delete_topology(ch: &lapin::Channel, t: &Topology) {
    let mut queues = vec![t.queue.clone(), t.dead_queue.clone()];
    queues.extend(t.retry_delays.iter().map(|d| t.retry_queue(*d)));
    for q in queues {
        let _ = ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for x in [&t.exchange, &t.dlx] {
        let _ = ch
            .exchange_delete(
                x.as_str().into(),
                lapin::options::ExchangeDeleteOptions::default(),
            )
            .await;
    }
}

/// Receives events until `pred` holds for the collected list, or panics after `timeout`.
pub async fn collect_until(
    rx: &mut mpsc::UnboundedReceiver<JobEvent>,
    timeout: Duration,
    pred: impl Fn(&[JobEvent]) -> bool,
) -> Vec<JobEvent> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while !pred(&got) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(e)) => got.push(e),
            Ok(None) => panic!("the event channel closed; got {got:#?}"),
            Err(_) => panic!("timed out waiting for events; got {got:#?}"),
        }
    }
    got
}
