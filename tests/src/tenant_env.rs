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

use crate::fixtures::{self, SettingsFile, TenantEntry};
use crate::{FtpAccount, ReceivedMail};

#[derive(Debug)]
pub struct TenantEnv {
    pub account: FtpAccount,
    pub fake: FakeHandle,
    pub domain: String,
    pub admin_email: String,
    /// Holds the registry, settings and work files for the test's lifetime.
    pub _dir: tempfile::TempDir,
    pub settings_path: PathBuf,
    pub deps: Deps,
    /// The registry text up to the tenant's `[tenant.import]` table.
    pub registry_base: String,
    registry_path: PathBuf,
    /// The test's own Redis key prefix.
    pub redis_prefix: String,
}

/// What a test may change before the `Deps` are built.
#[derive(Debug, Clone)]
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
        let ftps = crate::ftps().await;
        let smtp = crate::smtp().await;
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
        let registry = TenantEntry {
            portal_domain: domain.clone(),
            api_base_url: fake.base_url(),
            ftps_host: ftps.host.clone(),
            ftps_port: Some(ftps.port),
            admin_username: format!("{}.admin", account.user),
            admin_email: admin_email.clone(),
            extra: opts.tenant_settings.clone(),
            ..TenantEntry::new(&account.user)
        }
        .toml();
        let registry_path = dir.path().join("tenants.toml");
        std::fs::write(
            &registry_path,
            format!("{registry}[tenant.import]\n{}\n", opts.tenant_import),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let redis_prefix = redis_prefix_of(&account.user);
        let settings_path = dir.path().join("settings.toml");
        SettingsFile {
            work_dir: dir.path().to_owned(),
            registry: registry_path.clone(),
            ca_file: opts.ca_file.clone().unwrap_or_else(|| ftps.ca_file.clone()),
            smtp_host: smtp.host.clone(),
            smtp_port: smtp.port,
            smtp_timeout: Some("10s"),
            request_timeout: "3s",
            redis_url: opts.redis_url.clone().unwrap_or_else(crate::redis_url),
            redis_prefix: redis_prefix.clone(),
            import_concurrency: opts.concurrency,
            progress_every: 2,
            extra: opts.extra_settings.clone(),
        }
        .write(&settings_path);
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
        fixtures::tenant_log(&self.account)
    }

    /// The per-record reports (CSV) on the account, by name (reject files not included).
    pub fn reports(&self) -> Vec<String> {
        self.account
            .list("reports")
            .into_iter()
            .filter(|n| n.ends_with(".csv") && !n.ends_with(".rejects.csv"))
            .collect()
    }

    /// The reject files (`<report name>.rejects.csv`) on the account, by name.
    pub fn rejects(&self) -> Vec<String> {
        self.account
            .list("reports")
            .into_iter()
            .filter(|n| n.ends_with(".rejects.csv"))
            .collect()
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
        crate::smtp()
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
