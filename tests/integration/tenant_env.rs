//! One tenant wired to real servers for a pipeline test: its own FTPS account (user = tenant name,
//! password = API key), its own platform fake on port 0 knowing that key, the process's SMTP sink,
//! a registry and settings written to a temp dir, and the worker's `Deps` built from them exactly
//! as `main` builds them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use platform_fake::{FakeConfig, FakeHandle, TenantSeed};
use shared::registry::Registry;
use shared::registry::secrets::SecretSource;
use shared::settings::Settings;
use worker::{Deps, JobContext, JobError, Outcome};

use crate::harness::{self, FtpAccount, ReceivedMail};

pub const HEADER: &str =
    "Username,First name,Surname,Email address,Department,Groups,Account state";

pub struct TenantEnv {
    pub account: FtpAccount,
    pub fake: FakeHandle,
    pub domain: String,
    pub admin_email: String,
    /// Holds the registry, settings and work files for the test's lifetime.
    pub _dir: tempfile::TempDir,
    pub settings_path: PathBuf,
    pub deps: Deps,
    /// The registry as first written, without the tenant's `[tenant.import]` table.
    /// The registry text up to the tenant's `[tenant.import]` table.
    pub registry_base: String,
    registry_path: PathBuf,
    /// The test's own Redis key prefix.
    pub redis_prefix: String,
}

/// What a test may change before the `Deps` are built.
pub struct Options {
    /// The key the platform fake accepts (default: the FTPS password, as in production).
    pub api_key_on_platform: Option<String>,
    /// The CA file the worker trusts (default: the harness CA).
    pub ca_file: Option<PathBuf>,
    pub concurrency: usize,
    pub extra_settings: String,
    /// Lines of the tenant's `[tenant.import]` table (e.g. `verify_only = true`).
    pub tenant_import: String,
    /// `redis.url` (default: the test Redis).
    pub redis_url: Option<String>,
    /// Lines added to the tenant's registry entry (its `files`, `alerts`, … tables). The default
    /// shortens the settle interval so that tests do not wait the production default.
    pub tenant_settings: String,
}

/// The tenant settings of [`Options::default`].
pub const FAST_SETTLE: &str = r#"files = { settle = "100ms" }"#;

impl Default for Options {
    fn default() -> Self {
        Self {
            api_key_on_platform: None,
            ca_file: None,
            concurrency: 4,
            extra_settings: String::new(),
            tenant_import: String::new(),
            redis_url: None,
            tenant_settings: FAST_SETTLE.to_owned(),
        }
    }
}

impl TenantEnv {
    pub async fn new() -> Self {
        Self::with(Options::default()).await
    }

    pub async fn with(opts: Options) -> Self {
        let ftps = harness::ftps().await;
        let smtp = harness::smtp().await;
        let account = ftps.create_account();
        let domain = format!("{}.learning-admin.com", account.user);
        let platform_key = opts
            .api_key_on_platform
            .clone()
            .unwrap_or_else(|| account.password.clone());
        let fake = platform_fake::spawn(FakeConfig {
            tenants: vec![TenantSeed::new(domain.clone(), platform_key)],
            ..FakeConfig::default()
        })
        .await
        .unwrap_or_else(|e| panic!("cannot start the platform fake: {e}"));
        let admin_email = format!("admin@{}.example.com", account.user);
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let registry = format!(
            r#"
[[tenant]]
name = "{user}"
region = "eu"
portal_domain = "{domain}"
api_base_url = "{base}"
ftps_host = "{host}"
ftps_port = {port}
admin = {{ username = "{user}.admin", email = "{admin_email}" }}
{tenant_settings}
"#,
            user = account.user,
            base = fake.base_url(),
            host = ftps.host,
            port = ftps.port,
            tenant_settings = opts.tenant_settings,
        );
        let registry_path = dir.path().join("tenants.toml");
        std::fs::write(
            &registry_path,
            format!("{registry}[tenant.import]\n{}\n", opts.tenant_import),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let redis_prefix = redis_prefix_of(&account.user);
        let settings = format!(
            r#"
work_dir = "{work}"
[registry]
file = "{registry}"
[ftps]
ca_file = "{ca}"
connect_timeout = "5s"
io_timeout = "20s"
[smtp]
host = "{smtp_host}"
port = {smtp_port}
tls = "none"
from = "User import <user-import@fleet.example.com>"
timeout = "10s"
[platform]
request_timeout = "3s"
max_attempts = 12
backoff_base = "20ms"
backoff_max = "500ms"
retry_after_max = "2s"
status_poll_interval = "20ms"
status_timeout = "10s"
[redis]
url = "{redis_url}"
key_prefix = "{redis_prefix}"
[import]
concurrency = {concurrency}
progress_every = 2
{extra}
"#,
            redis_url = opts.redis_url.clone().unwrap_or_else(harness::redis_url),
            work = dir.path().display(),
            registry = registry_path.display(),
            ca = opts.ca_file.as_ref().unwrap_or(&ftps.ca_file).display(),
            smtp_host = smtp.host,
            smtp_port = smtp.port,
            concurrency = opts.concurrency,
            extra = opts.extra_settings,
        );
        let settings_path = dir.path().join("settings.toml");
        std::fs::write(&settings_path, settings).unwrap_or_else(|e| panic!("{e}"));
        let env = HashMap::from([(
            SecretSource::env_var_for(&name(&account.user)),
            account.password.clone(),
        )]);
        let settings = Settings::load(Some(&settings_path), &env).unwrap_or_else(|e| panic!("{e}"));
        let registry_base = registry;
        let registry = Registry::load(&registry_path).unwrap_or_else(|e| panic!("{e}"));
        let secrets = SecretSource::new(None, &env);
        let deps = Deps::build(settings, registry, secrets).unwrap_or_else(|e| panic!("{e:#}"));
        Self {
            account,
            fake,
            domain,
            admin_email,
            _dir: dir,
            settings_path,
            deps,
            registry_base,
            registry_path,
            redis_prefix,
        }
    }

    /// Replaces the tenant's `[tenant.import]` table, as an operator editing the registry would;
    /// the next run uses it.
    pub fn set_tenant_import(&self, lines: &str) {
        let text = format!("{}[tenant.import]\n{lines}\n", self.registry_base);
        std::fs::write(&self.registry_path, text).unwrap_or_else(|e| panic!("{e}"));
        let registry = Registry::load(&self.registry_path).unwrap_or_else(|e| panic!("{e}"));
        self.deps.replace_registry(registry);
    }

    pub fn tenant(&self) -> &str {
        &self.account.user
    }

    pub fn upload(&self, csv: &str) {
        self.account.put("uploads/user-import.csv", csv.as_bytes());
    }

    pub async fn run(&self) -> Result<Outcome, JobError> {
        worker::process_job(
            &self.deps,
            self.tenant(),
            JobContext::manual(uuid::Uuid::new_v4()),
        )
        .await
    }

    pub async fn run_imported(&self) -> worker::Counts {
        match self.run().await {
            Ok(Outcome::Imported { counts, .. }) => counts,
            other => panic!("expected an import, got {other:?}\nlog:\n{}", self.log()),
        }
    }

    pub fn log(&self) -> String {
        self.account
            .read("log/user-import.log")
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The per-record reports (CSV) on the account, by name.
    pub fn reports(&self) -> Vec<String> {
        let mut r: Vec<String> = self
            .account
            .list("reports")
            .into_iter()
            .filter(|n| n.ends_with(".csv"))
            .collect();
        r.sort();
        r
    }

    /// The tenant's Redis key prefix (the fleet's `redis.key_prefix` in its settings).
    pub fn redis_prefix(&self) -> String {
        self.redis_prefix.clone()
    }

    pub fn report(&self, name: &str) -> String {
        String::from_utf8(
            self.account
                .read(&format!("reports/{name}"))
                .unwrap_or_default(),
        )
        .unwrap_or_default()
    }

    pub fn markers(&self) -> Vec<String> {
        self.account
            .list("tmp")
            .into_iter()
            .filter(|n| n.ends_with(".sha1"))
            .collect()
    }

    pub async fn mails(&self, n: usize) -> Vec<ReceivedMail> {
        harness::smtp()
            .await
            .wait_for_messages(&self.admin_email, n, Duration::from_secs(20))
            .await
    }
}

/// Each test's own Redis keys: the account names are unique per test.
fn redis_prefix_of(user: &str) -> String {
    format!("test-tenant-env-{user}")
}

fn name(s: &str) -> shared::TenantName {
    shared::TenantName::parse(s).unwrap_or_else(|e| panic!("{e}"))
}

/// Parses a report CSV into rows of cells (header first).
pub fn csv_rows(text: &str) -> Vec<Vec<String>> {
    let mut r = csv_reader(text);
    r.records()
        .map(|rec| {
            rec.unwrap_or_else(|e| panic!("report is not CSV: {e}"))
                .iter()
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

fn csv_reader(text: &str) -> csv::Reader<&[u8]> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(text.as_bytes())
}

/// The `worker` binary, built once per test process (cargo does not build a dependency's binaries
/// for another package's tests).
pub fn worker_binary() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| workspace_binary("worker")).clone()
}

/// The `scheduler` binary, built once per test process.
pub fn scheduler_binary() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| workspace_binary("scheduler")).clone()
}

/// Builds the binary `name` of the package `name` and returns its path.
fn workspace_binary(name: &str) -> PathBuf {
    let status = std::process::Command::new(env!("CARGO"))
        .args(["build", "--quiet", "-p", name, "--bin", name])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo: {e}"));
    assert!(status.success(), "building the {name} binary failed");
    // target/debug/deps/integration-… → target/debug/<name>
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("{e}"));
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join(name))
        .unwrap_or_else(|| panic!("no target dir above {}", exe.display()));
    assert!(bin.exists(), "no {name} binary at {}", bin.display());
    bin
}
