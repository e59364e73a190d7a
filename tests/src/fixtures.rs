//! What the tests, the fault trials and the benchmarks write for a run and read back after it,
//! written once: import files, the registry's `[[tenant]]` entries, a test worker's settings
//! file, and the tenant's log and reports as they are on its account.

use std::path::{Path, PathBuf};

use crate::servers::files::AccountFiles;

/// The header of an import file: the columns every generated file has.
pub const HEADER: &str =
    "Username,First name,Surname,Email address,Department,Groups,Account state";

/// Where the worker writes the tenant's log on its account.
pub const TENANT_LOG: &str = "log/user-import.log";

/// A file of `n` new users whose usernames are `tag` and a three-digit number ([`usernames`]).
pub fn users_csv(tag: &str, n: usize) -> String {
    let mut csv = format!("{HEADER}\n");
    for i in 0..n {
        csv.push_str(&format!(
            "{tag}{i:03},First{i},Last{i},{tag}{i}@example.org,Sales,,\n"
        ));
    }
    csv
}

/// The usernames of [`users_csv`]`(tag, n)`.
pub fn usernames(tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{tag}{i:03}")).collect()
}

/// Parses a CSV text (a report, a results file) into rows of cells, the header first.
pub fn csv_rows(text: &str) -> Vec<Vec<String>> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(text.as_bytes())
        .records()
        .map(|rec| {
            rec.unwrap_or_else(|e| panic!("report is not CSV: {e}"))
                .iter()
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

/// The tenant's log on its account, as written so far (empty when there is none yet).
pub fn tenant_log(account: &AccountFiles) -> String {
    account
        .read(TENANT_LOG)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// One `[[tenant]]` entry of a registry file. [`TenantEntry::new`] fills in a tenant of region
/// `eu` that no test server answers for; a test points it at its servers with struct update
/// syntax.
#[derive(Debug, Clone)]
pub struct TenantEntry {
    pub name: String,
    pub region: String,
    pub portal_domain: String,
    pub api_base_url: String,
    pub ftps_host: String,
    /// The registry's default port when `None`.
    pub ftps_port: Option<u16>,
    pub admin_username: String,
    pub admin_email: String,
    /// Further lines of the entry, as they are (`enabled = false`, `schedule = "…"`,
    /// `files = { … }`); sub-tables such as `[tenant.import]` must come after the entry.
    pub extra: String,
}

impl TenantEntry {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            region: "eu".to_owned(),
            portal_domain: format!("{name}.learning-admin.com"),
            api_base_url: "https://api.learning-admin.com/eu".to_owned(),
            ftps_host: "ftp-eu.learning-admin.com".to_owned(),
            ftps_port: None,
            admin_username: "admin".to_owned(),
            admin_email: format!("admin@{name}.example"),
            extra: String::new(),
        }
    }

    /// The entry as registry TOML, starting with a blank line so entries can be concatenated.
    pub fn toml(&self) -> String {
        let port = self
            .ftps_port
            .map(|p| format!("ftps_port = {p}\n"))
            .unwrap_or_default();
        let mut extra = self.extra.clone();
        if !extra.is_empty() && !extra.ends_with('\n') {
            extra.push('\n');
        }
        format!(
            r#"
[[tenant]]
name = "{name}"
region = "{region}"
portal_domain = "{domain}"
api_base_url = "{base}"
ftps_host = "{host}"
{port}admin = {{ username = "{admin}", email = "{email}" }}
{extra}"#,
            name = self.name,
            region = self.region,
            domain = self.portal_domain,
            base = self.api_base_url,
            host = self.ftps_host,
            admin = self.admin_username,
            email = self.admin_email,
        )
    }
}

/// The settings file of a worker under test: the harness's FTPS CA and SMTP sink, the test's
/// Redis prefix, and platform back-offs short enough for tests.
#[derive(Debug, Clone)]
pub struct SettingsFile {
    pub work_dir: PathBuf,
    pub registry: PathBuf,
    /// The CA the worker trusts for FTPS.
    pub ca_file: PathBuf,
    pub smtp_host: String,
    pub smtp_port: u16,
    /// `smtp.timeout` (the settings' default when `None`).
    pub smtp_timeout: Option<&'static str>,
    pub request_timeout: &'static str,
    pub redis_url: String,
    pub redis_prefix: String,
    pub import_concurrency: usize,
    pub progress_every: usize,
    /// Text appended as it is, after the `[import]` table: keys of that table, or more tables
    /// (`[amqp]`, `[worker]`, …).
    pub extra: String,
}

impl SettingsFile {
    pub fn toml(&self) -> String {
        let smtp_timeout = self
            .smtp_timeout
            .map(|t| format!("timeout = \"{t}\"\n"))
            .unwrap_or_default();
        format!(
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
{smtp_timeout}[platform]
request_timeout = "{request_timeout}"
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
progress_every = {progress_every}
{extra}
"#,
            work = self.work_dir.display(),
            registry = self.registry.display(),
            ca = self.ca_file.display(),
            smtp_host = self.smtp_host,
            smtp_port = self.smtp_port,
            request_timeout = self.request_timeout,
            redis_url = self.redis_url,
            redis_prefix = self.redis_prefix,
            concurrency = self.import_concurrency,
            progress_every = self.progress_every,
            extra = self.extra,
        )
    }

    /// Writes the file to `path`.
    pub fn write(&self, path: &Path) {
        std::fs::write(path, self.toml())
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
}

/// The one file of a zip attachment: its name and its bytes.
pub fn unzip_one(bytes: &[u8]) -> (String, Vec<u8>) {
    use std::io::Read;
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .unwrap_or_else(|e| panic!("the attachment is not a zip: {e}"));
    assert_eq!(archive.len(), 1, "one file in the zip");
    let mut file = archive
        .by_index(0)
        .unwrap_or_else(|e| panic!("reading the zip: {e}"));
    let mut out = Vec::new();
    file.read_to_end(&mut out)
        .unwrap_or_else(|e| panic!("unzipping: {e}"));
    let name = file
        .name()
        .unwrap_or_else(|e| panic!("the name in the zip: {e}"))
        .into_owned();
    (name, out)
}

/// A user of the platform fake with the template's usual fields.
pub fn fake_user(
    name: &str,
    forename: &str,
    surname: &str,
    department: &str,
) -> platform_fake::FakeUser {
    platform_fake::FakeUser::new(name)
        .with_field("forename", forename)
        .with_field("surname", surname)
        .with_field("mail", format!("{name}@example.org"))
        .with_field("department", department)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use shared::registry::Registry;

    use super::{TenantEntry, usernames, users_csv};

    #[test]
    fn a_users_file_holds_the_usernames_it_names() {
        let csv = users_csv("u", 3);
        for name in usernames("u", 3) {
            assert!(csv.contains(&format!("\n{name},")), "{name} in {csv}");
        }
        assert_eq!(csv.lines().count(), 4);
    }

    #[test]
    fn tenant_entries_parse_as_a_registry() {
        let mut text = TenantEntry::new("alpha").toml();
        text.push_str(
            &TenantEntry {
                ftps_port: Some(2121),
                extra: "enabled = false".into(),
                ..TenantEntry::new("beta")
            }
            .toml(),
        );
        let registry = Registry::parse(Path::new("fixtures.toml"), &text)
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(registry.get("alpha").is_some());
        assert!(registry.get("beta").is_some());
    }
}
