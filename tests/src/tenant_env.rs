//! One tenant wired to real servers for a pipeline test: its own account on one of the harness's
//! file servers ([`Server`]: vsftpd by default, ProFTPD, or OpenSSH SFTP; user = tenant name,
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
pub use crate::servers::Server;
use crate::servers::files::AccountFiles;
use crate::{FtpAccount, ProftpdAccount, ReceivedMail, SftpAccount};

/// The folders a new account holds (`Options::folders`' default).
pub const ACCOUNT_FOLDERS: &[&str] = &["uploads", "tmp", "log", "reports"];

/// The tenant's account on its server: its login and its files as the server shows them.
pub struct TenantAccount {
    pub user: String,
    pub password: String,
    pub server: Server,
    held: Held,
}

/// Keeps the server's account alive (dropping it deletes the account).
enum Held {
    Vsftpd(FtpAccount),
    Proftpd(ProftpdAccount),
    Sftp(SftpAccount),
}

impl std::ops::Deref for TenantAccount {
    type Target = AccountFiles;
    fn deref(&self) -> &AccountFiles {
        match &self.held {
            Held::Vsftpd(a) => a,
            Held::Proftpd(a) => a,
            Held::Sftp(a) => a,
        }
    }
}

impl std::fmt::Debug for TenantAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantAccount")
            .field("user", &self.user)
            .field("server", &self.server)
            .field("root", &self.root)
            .finish()
    }
}

impl TenantAccount {
    /// A new account on `server` whose root holds `folders`.
    pub async fn create(server: Server, folders: &[&str]) -> Self {
        let held = match server {
            Server::Vsftpd => {
                let account = crate::ftps().await.create_account();
                for sub in ACCOUNT_FOLDERS {
                    if !folders.contains(sub) {
                        account.remove(sub);
                    }
                }
                Held::Vsftpd(account)
            }
            Server::Proftpd => Held::Proftpd(crate::proftpd().await.create_account(folders)),
            Server::Sftp => Held::Sftp(crate::sftp().await.create_account(folders)),
        };
        let (user, password) = match &held {
            Held::Vsftpd(a) => (a.user.clone(), a.password.clone()),
            Held::Proftpd(a) => (a.user.clone(), a.password.clone()),
            Held::Sftp(a) => (a.user.clone(), a.password.clone()),
        };
        Self {
            user,
            password,
            server,
            held,
        }
    }

    /// How the registry reaches the account: (host, FTPS port, further lines of the entry).
    async fn registry_access(&self) -> (String, Option<u16>, String) {
        match self.server {
            Server::Vsftpd => {
                let s = crate::ftps().await;
                (s.host.clone(), Some(s.port), String::new())
            }
            Server::Proftpd => {
                let s = crate::proftpd().await;
                (s.host.clone(), Some(s.port), String::new())
            }
            Server::Sftp => {
                let s = crate::sftp().await;
                let lines = format!(
                    "transport = \"sftp\"\nsftp_port = {}\nsftp_host_key = \"{}\"\n",
                    s.port, s.host_key
                );
                (s.host.clone(), None, lines)
            }
        }
    }

    /// The CA the worker must trust for the account's FTPS server (vsftpd's for SFTP, unused).
    async fn ca_file(&self) -> PathBuf {
        match self.server {
            Server::Proftpd => crate::proftpd().await.ca_file.clone(),
            _ => crate::ftps().await.ca_file.clone(),
        }
    }

    /// The data connections the server refused for this account (`425`/`522` answers), read
    /// from the server's own log; always empty for SFTP, which has no data connections.
    pub async fn refused_data_connections(&self) -> Vec<String> {
        let (log, tag) = match self.server {
            Server::Vsftpd => (
                crate::ftps().await.log_file.clone(),
                format!("[{}]", self.user),
            ),
            // ExtendedLog's default format: `host - user [time] "command" code bytes`.
            Server::Proftpd => (
                crate::proftpd().await.command_log.clone(),
                format!(" {} [", self.user),
            ),
            Server::Sftp => return Vec::new(),
        };
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let mut refused: Vec<String> = text
            .lines()
            .filter(|l| l.contains(&tag))
            .filter(|l| refused_answer(self.server, l))
            .map(str::to_owned)
            .collect();
        if self.server == Server::Proftpd {
            // mod_tls's own verdict; its log does not name the user, and no test of this
            // process may ever be refused.
            let tls = crate::proftpd().await.tls_log.clone();
            let text = std::fs::read_to_string(&tls).unwrap_or_default();
            refused.extend(
                text.lines()
                    .filter(|l| {
                        l.contains("rejecting data connection") || l.contains("did not reuse")
                    })
                    .map(str::to_owned),
            );
        }
        refused
    }

    /// SIGKILLs the server-side processes of the account's sessions (see
    /// [`kill_sessions`](crate::servers::sessions::kill_sessions)); how many were killed.
    pub fn kill_sessions(&self) -> usize {
        crate::servers::sessions::kill_sessions(self.server, &self.user)
    }

    /// Files left on the account that an interrupted upload may leave: temporary upload names
    /// and empty files, anywhere below the root (paths relative to it).
    pub fn partial_files(&self) -> Vec<String> {
        let mut found = Vec::new();
        let mut dirs = vec![self.root.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let name = entry.file_name().to_string_lossy().into_owned();
                let empty = entry.metadata().map(|m| m.len() == 0).unwrap_or(false);
                if empty || worker::account::is_temp_name(&name) {
                    let rel = path.strip_prefix(&self.root).unwrap_or(&path);
                    found.push(rel.display().to_string());
                }
            }
        }
        found.sort();
        found
    }
}

/// Whether a server log line is a refused data connection.
fn refused_answer(server: Server, line: &str) -> bool {
    match server {
        Server::Vsftpd => line.contains("\"425 ") || line.contains("\"522 "),
        _ => line.contains("\" 425 ") || line.contains("\" 522 "),
    }
}

#[derive(Debug)]
pub struct TenantEnv {
    pub account: TenantAccount,
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
    /// `import.progress_every` (default 2, so that short imports log progress lines).
    pub progress_every: usize,
    pub extra_settings: String,
    /// Lines of the tenant's `[tenant.import]` table (e.g. `verify_only = true`).
    pub tenant_import: String,
    /// `redis.url` (default: the test Redis).
    pub redis_url: Option<String>,
    /// Lines added to the tenant's registry entry (its `files`, `alerts`, … tables). The default
    /// shortens the settle interval so that tests do not wait the production default.
    pub tenant_settings: String,
    /// The server the tenant's account is on.
    pub server: Server,
    /// The folders the account holds when the test starts.
    pub folders: &'static [&'static str],
}

/// The tenant settings of [`Options::default`].
pub const FAST_SETTLE: &str = r#"files = { settle = "100ms" }"#;

impl Default for Options {
    fn default() -> Self {
        Self {
            api_key_on_platform: None,
            ca_file: None,
            concurrency: 4,
            progress_every: 2,
            extra_settings: String::new(),
            tenant_import: String::new(),
            redis_url: None,
            tenant_settings: FAST_SETTLE.to_owned(),
            server: Server::Vsftpd,
            folders: ACCOUNT_FOLDERS,
        }
    }
}

impl TenantEnv {
    pub async fn new() -> Self {
        Self::with(Options::default()).await
    }

    /// A tenant with the default options on `server`.
    pub async fn on(server: Server) -> Self {
        Self::with(Options {
            server,
            ..Options::default()
        })
        .await
    }

    pub async fn with(opts: Options) -> Self {
        let smtp = crate::smtp().await;
        let account = TenantAccount::create(opts.server, opts.folders).await;
        let (host, port, access) = account.registry_access().await;
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
            ftps_host: host,
            ftps_port: port,
            admin_username: format!("{}.admin", account.user),
            admin_email: admin_email.clone(),
            extra: format!("{access}{}", opts.tenant_settings),
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
            ca_file: match opts.ca_file.clone() {
                Some(file) => file,
                None => account.ca_file().await,
            },
            smtp_host: smtp.host.clone(),
            smtp_port: smtp.port,
            smtp_timeout: Some("10s"),
            request_timeout: "3s",
            redis_url: opts.redis_url.clone().unwrap_or_else(crate::redis_url),
            redis_prefix: redis_prefix.clone(),
            import_concurrency: opts.concurrency,
            progress_every: opts.progress_every,
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

    /// This tenant's dependencies with another key (the API key, which is the account's password
    /// too), `vars` added to the environment the settings read, and `registry_extra` appended to
    /// its registry entry (its `[tenant.import]` table, see `registry_base`).
    pub fn deps_with_key(&self, key: &str, registry_extra: &str, vars: &[(&str, &str)]) -> Deps {
        let tenant = shared::TenantName::parse(self.tenant()).unwrap_or_else(|e| panic!("{e}"));
        let mut env: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        env.insert(SecretSource::env_var_for(&tenant), key.to_owned());
        let settings =
            Settings::load(Some(&self.settings_path), &env).unwrap_or_else(|e| panic!("{e}"));
        let path = self._dir.path().join("tenants.toml");
        let text = format!("{}{registry_extra}\n", self.registry_base);
        let registry = Registry::parse(&path, &text).unwrap_or_else(|e| panic!("{e}"));
        Deps::build(settings, registry, SecretSource::new(None, &env))
            .unwrap_or_else(|e| panic!("{e:#}"))
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

#[cfg(test)]
mod tests {
    use super::{Server, refused_answer};

    #[test]
    fn a_refused_data_connection_is_recognised_in_each_servers_log() {
        let vsftpd = r#"Sun Nov 29 19:55:18 2026 [pid 9297] [t-a3eed68f] FTP response: Client "127.0.0.1", "522 SSL connection failed: session reuse required""#;
        assert!(refused_answer(Server::Vsftpd, vsftpd));
        let fine = r#"Sun Nov 29 19:55:18 2026 [pid 9297] [t-a3eed68f] FTP response: Client "127.0.0.1", "226 Transfer done.""#;
        assert!(!refused_answer(Server::Vsftpd, fine));
        let proftpd = r#"127.0.0.1 UNKNOWN pf-1a2b3c4d [29/Nov/2026:19:24:09 +0000] "STOR /tmp/.f.part-0badf00d" 425 -"#;
        assert!(refused_answer(Server::Proftpd, proftpd));
        let fine =
            r#"127.0.0.1 UNKNOWN pf-1a2b3c4d [29/Nov/2026:19:24:09 +0000] "NLST /tmp" 450 -"#;
        assert!(!refused_answer(Server::Proftpd, fine));
    }
}
