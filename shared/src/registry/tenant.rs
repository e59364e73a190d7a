//! One tenant's entry: parsed from its TOML table (defaults merged in), then validated field by
//! field so an error can name the field.

use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::Schedule;
use crate::domain::{EmailAddress, PortalDomain, Region, TenantName};

/// A validated tenant.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub name: TenantName,
    pub region: Region,
    pub portal_domain: PortalDomain,
    /// Base URL of the platform API for the tenant's region; calls are `POST <base>/<CallName>`.
    pub api_base_url: Url,
    /// The file server's host, for FTPS and SFTP alike.
    pub ftps_host: String,
    pub ftps_port: u16,
    /// How the tenant's account is reached (FTPS unless the registry says `transport = "sftp"`).
    pub transport: Transport,
    pub sftp_port: u16,
    /// The SFTP server's host keys, OpenSSH format (`ssh-ed25519 AAAA…`): the server must present
    /// one of them. Two during a key rotation. Always at least one when the transport is SFTP.
    pub sftp_host_keys: Vec<String>,
    pub admin: Admin,
    /// Who gets the run reports and alerts: the registry's `notify` list, or the admin's address
    /// when it has none. Never empty. The admin stays the actor on the platform either way.
    pub notify: Vec<EmailAddress>,
    pub schedule: Schedule,
    pub enabled: bool,
    pub limits: TenantLimits,
    pub import: ImportOptions,
    pub files: FileOptions,
    pub alerts: AlertOptions,
}

/// How the worker reaches a tenant's account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Explicit FTPS (AUTH TLS), the default.
    #[default]
    Ftps,
    /// SFTP (SSH), with a pinned host key.
    Sftp,
}

/// One string or a list of them: `sftp_host_key = "ssh-ed25519 AAAA…"` (a list during a key
/// rotation), `notify = "hr@acme.example"` or a list of addresses.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum HostKeys {
    One(String),
    Many(Vec<String>),
}

impl Default for HostKeys {
    fn default() -> Self {
        HostKeys::Many(Vec::new())
    }
}

impl HostKeys {
    fn into_vec(self) -> Vec<String> {
        match self {
            HostKeys::One(k) => vec![k],
            HostKeys::Many(v) => v,
        }
    }
}

/// The host key types the SFTP client verifies. RSA is not among them: pin the server's Ed25519
/// or ECDSA key (OpenSSH servers have both by default).
const HOST_KEY_TYPES: [&str; 4] = [
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
];

/// `TYPE BASE64 [comment]`, of a type the client verifies; the key itself is read by the worker.
fn check_host_key(key: &str) -> Result<(), String> {
    let mut parts = key.split_whitespace();
    let (Some(kind), Some(data)) = (parts.next(), parts.next()) else {
        return Err("must be an OpenSSH public key: \"ssh-ed25519 AAAA…\"".into());
    };
    if !HOST_KEY_TYPES.contains(&kind) {
        return Err(format!(
            "key type {kind:?} is not one of {} (pin the server's Ed25519 or ECDSA key)",
            HOST_KEY_TYPES.join(", ")
        ));
    }
    let base64 = data
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='));
    if !base64 || data.len() % 4 != 0 || data.len() < 32 {
        return Err("the key data is not base64".into());
    }
    Ok(())
}

/// The nominated admin: the identity the import acts as (recorded in the log and the report), never
/// changed by the import, and the recipient of the status report unless `notify` names others.
/// Never a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    pub username: String,
    pub email: EmailAddress,
}

/// Per-tenant bounds; each may only lower the fleet-wide setting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantLimits {
    pub max_file_bytes: Option<u64>,
    pub api_concurrency: Option<usize>,
    pub max_rows: Option<u64>,
}

/// What an empty cell in the file means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmptyCells {
    /// Leave the user's field as it is (the default: a blank column never wipes data).
    #[default]
    Keep,
    /// Clear the field on the user.
    Clear,
}

/// How this tenant's file is read and applied (see docs/tenant-admin.md).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImportOptions {
    pub empty_cells: EmptyCells,
    /// Separates group names inside the `Groups` cell.
    pub groups_separator: char,
    /// Validate and report what each row would do; write nothing to the platform.
    pub verify_only: bool,
    /// Send nothing for a row whose fingerprint matches the last successful import of it.
    pub skip_unchanged: bool,
    /// Fingerprints older than this many days no longer skip a row (it is checked again).
    pub skip_unchanged_max_age_days: u32,
    /// Deactivate the users this import manages that are absent from the file.
    pub full_sync: bool,
    /// Holds a run that would deactivate or update too many users.
    pub mass_change_guard: MassChangeGuard,
    /// Usernames the import never changes (the nominated admin is always one): exact names or
    /// patterns with `*` (any run of characters) and `?` (one character), case-insensitive.
    pub protected_users: Vec<String>,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            empty_cells: EmptyCells::Keep,
            groups_separator: ';',
            verify_only: false,
            skip_unchanged: false,
            skip_unchanged_max_age_days: 7,
            full_sync: false,
            mass_change_guard: MassChangeGuard::default(),
            protected_users: Vec::new(),
        }
    }
}

impl ImportOptions {
    /// The most `protected_users` entries a tenant may list.
    pub const MAX_PROTECTED: usize = 1000;

    /// Whether `username` matches one of `protected_users` (the admin is checked by the caller).
    pub fn protects(&self, username: &str) -> bool {
        self.protected_users
            .iter()
            .any(|pattern| glob_matches(pattern, username))
    }
}

/// A case-insensitive match of `name` against `pattern`, where `*` is any run of characters
/// (none included) and `?` exactly one. Linear in practice: the classic backtracking on the last
/// `*` only.
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().flat_map(char::to_lowercase).collect();
    let n: Vec<char> = name.chars().flat_map(char::to_lowercase).collect();
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(&c) if c == '?' || c == n[ni] => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Checks one `protected_users` entry.
fn check_protected(pattern: &str) -> Result<(), String> {
    if pattern.trim().is_empty() || pattern.chars().any(char::is_control) {
        return Err("each entry must be a non-empty user name or pattern".into());
    }
    if pattern.chars().all(|c| c == '*') {
        return Err(format!(
            "{pattern:?} protects every user: the import would change nothing (use \
             import.verify_only or disable the tenant instead)"
        ));
    }
    Ok(())
}

/// Thresholds of the mass-change guard. A run is held when the deactivations (or the updates) it
/// would make exceed **both** the count and the percentage of the users it touches that exist.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MassChangeGuard {
    pub enabled: bool,
    pub max_deactivate_count: u64,
    pub max_deactivate_percent: u8,
    pub max_update_count: u64,
    pub max_update_percent: u8,
}

impl Default for MassChangeGuard {
    fn default() -> Self {
        Self {
            enabled: true,
            max_deactivate_count: 25,
            max_deactivate_percent: 10,
            max_update_count: 500,
            max_update_percent: 50,
        }
    }
}

/// What happens to the tenant's file around an import (`[tenants.<name>.files]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileOptions {
    /// The file's size and modification time are looked at twice, at least this far apart; a
    /// file still changing is left for the next run (an upload in progress is never imported).
    #[serde(with = "humantime_serde")]
    pub settle: Duration,
    /// Each imported file is copied to `/archive/` and kept this many days; 0 = no archive.
    pub archive_retention_days: u32,
    /// How many days a run can be undone: its undo journal (`/reports/<report>.undo.jsonl`) is
    /// kept that long; 0 = no journal is written and no run can be undone.
    pub undo_retention_days: u32,
}

impl FileOptions {
    /// The longest settle interval: a job must not hold its tenant lock waiting.
    pub const MAX_SETTLE: Duration = Duration::from_secs(300);
    /// Ten years: a longer retention is a typo.
    pub const MAX_RETENTION_DAYS: u32 = 3650;
}

impl Default for FileOptions {
    fn default() -> Self {
        Self {
            settle: Duration::from_secs(5),
            archive_retention_days: 30,
            undo_retention_days: 30,
        }
    }
}

impl MassChangeGuard {
    /// Whether `changes` out of `base` existing users goes over both thresholds.
    pub fn exceeded(count: u64, percent: u8, changes: u64, base: u64) -> bool {
        changes > count && changes.saturating_mul(100) > u64::from(percent).saturating_mul(base)
    }

    pub fn deactivations_exceeded(&self, changes: u64, base: u64) -> bool {
        self.enabled
            && Self::exceeded(
                self.max_deactivate_count,
                self.max_deactivate_percent,
                changes,
                base,
            )
    }

    pub fn updates_exceeded(&self, changes: u64, base: u64) -> bool {
        self.enabled
            && Self::exceeded(
                self.max_update_count,
                self.max_update_percent,
                changes,
                base,
            )
    }
}

/// The emails sent to the nominated admin besides the run report (`[tenants.<name>.alerts]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertOptions {
    /// Alert when no new file has arrived for this many days; 0 = off.
    pub no_file_days: u32,
    /// Alert when the FTPS server or the platform API refuses the tenant's credentials.
    pub login_failures: bool,
}

impl AlertOptions {
    pub const MAX_NO_FILE_DAYS: u32 = 366;
}

impl Default for AlertOptions {
    fn default() -> Self {
        Self {
            no_file_days: 0,
            login_failures: true,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    name: String,
    region: String,
    portal_domain: String,
    api_base_url: String,
    ftps_host: String,
    #[serde(default = "default_ftps_port")]
    ftps_port: u16,
    /// Read as text so that a wrong value is reported against this field.
    #[serde(default)]
    transport: Option<String>,
    #[serde(default = "default_sftp_port")]
    sftp_port: u16,
    #[serde(default)]
    sftp_host_key: HostKeys,
    admin: RawAdmin,
    /// Read as text so that each address is checked and reported against this field.
    #[serde(default)]
    notify: Option<HostKeys>,
    #[serde(default = "default_schedule")]
    schedule: String,
    #[serde(default = "default_timezone")]
    timezone: String,
    #[serde(default = "default_enabled")]
    enabled: bool,
    #[serde(default)]
    limits: TenantLimits,
    #[serde(default)]
    import: ImportOptions,
    #[serde(default)]
    files: FileOptions,
    #[serde(default)]
    alerts: AlertOptions,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    username: String,
    email: String,
}

fn default_ftps_port() -> u16 {
    21
}
fn default_sftp_port() -> u16 {
    22
}
fn default_schedule() -> String {
    Schedule::DEFAULT_EXPR.into()
}
fn default_timezone() -> String {
    "UTC".into()
}
fn default_enabled() -> bool {
    true
}

type FieldError = (Option<String>, String);

fn field(name: &str, message: impl std::fmt::Display) -> FieldError {
    (Some(name.to_owned()), message.to_string())
}

pub(super) fn from_table(table: toml::Table) -> Result<Tenant, FieldError> {
    let raw = RawTenant::deserialize(toml::Value::Table(table)).map_err(|e| {
        (
            super::backticked(e.message()),
            e.message().trim().to_owned(),
        )
    })?;
    let name = TenantName::parse(&raw.name).map_err(|e| field("name", e))?;
    let region = Region::parse(&raw.region).map_err(|e| field("region", e))?;
    let portal_domain =
        PortalDomain::parse(&raw.portal_domain).map_err(|e| field("portal_domain", e))?;
    if portal_domain.first_label() != name.as_str() {
        return Err(field(
            "portal_domain",
            format!(
                "its first label {:?} must be the tenant's name {:?}",
                portal_domain.first_label(),
                name.as_str()
            ),
        ));
    }
    let api_base_url = parse_api_url(&raw.api_base_url).map_err(|m| field("api_base_url", m))?;
    if raw.ftps_host.is_empty()
        || !raw
            .ftps_host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
    {
        return Err(field("ftps_host", "must be a hostname or an IP address"));
    }
    if raw.ftps_port == 0 {
        return Err(field("ftps_port", "must be 1 to 65535"));
    }
    let transport = match raw.transport.as_deref() {
        None | Some("ftps") => Transport::Ftps,
        Some("sftp") => Transport::Sftp,
        Some(other) => {
            return Err(field(
                "transport",
                format!("{other:?} is not \"ftps\" or \"sftp\""),
            ));
        }
    };
    if raw.sftp_port == 0 {
        return Err(field("sftp_port", "must be 1 to 65535"));
    }
    let sftp_host_keys = raw.sftp_host_key.into_vec();
    for key in &sftp_host_keys {
        check_host_key(key).map_err(|m| field("sftp_host_key", m))?;
    }
    if transport == Transport::Sftp && sftp_host_keys.is_empty() {
        return Err(field(
            "sftp_host_key",
            "is required with transport = \"sftp\": the server's host key is always verified",
        ));
    }
    if raw.admin.username.trim().is_empty() || raw.admin.username.chars().any(char::is_control) {
        return Err(field("admin.username", "must be a non-empty user name"));
    }
    let email = EmailAddress::parse(&raw.admin.email).map_err(|e| field("admin.email", e))?;
    let notify = notify_list(raw.notify.map(HostKeys::into_vec).as_deref(), &email)?;
    let schedule = Schedule::parse(&raw.schedule, &raw.timezone).map_err(|(f, m)| field(f, m))?;
    if raw.limits.api_concurrency == Some(0) {
        return Err(field("limits.api_concurrency", "must be at least 1"));
    }
    if raw.limits.max_file_bytes == Some(0) {
        return Err(field("limits.max_file_bytes", "must be above 0"));
    }
    if raw.import.groups_separator.is_alphanumeric() || raw.import.groups_separator.is_control() {
        return Err(field(
            "import.groups_separator",
            "must be a punctuation character such as ';' or '|'",
        ));
    }
    if raw.import.protected_users.len() > ImportOptions::MAX_PROTECTED {
        return Err(field(
            "import.protected_users",
            format!("lists more than {} entries", ImportOptions::MAX_PROTECTED),
        ));
    }
    for pattern in &raw.import.protected_users {
        check_protected(pattern).map_err(|m| field("import.protected_users", m))?;
    }
    let guard = &raw.import.mass_change_guard;
    for (name, percent) in [
        ("max_deactivate_percent", guard.max_deactivate_percent),
        ("max_update_percent", guard.max_update_percent),
    ] {
        if percent > 100 {
            return Err(field(
                &format!("import.mass_change_guard.{name}"),
                "must be 0 to 100",
            ));
        }
    }
    if raw.import.skip_unchanged_max_age_days == 0 {
        return Err(field(
            "import.skip_unchanged_max_age_days",
            "must be at least 1",
        ));
    }
    if raw.files.settle > FileOptions::MAX_SETTLE {
        return Err(field(
            "files.settle",
            format!(
                "must be at most {}",
                humantime::format_duration(FileOptions::MAX_SETTLE)
            ),
        ));
    }
    if raw.files.archive_retention_days > FileOptions::MAX_RETENTION_DAYS {
        return Err(field(
            "files.archive_retention_days",
            format!(
                "must be 0 (no archive) to {}",
                FileOptions::MAX_RETENTION_DAYS
            ),
        ));
    }
    if raw.files.undo_retention_days > FileOptions::MAX_RETENTION_DAYS {
        return Err(field(
            "files.undo_retention_days",
            format!("must be 0 (no undo) to {}", FileOptions::MAX_RETENTION_DAYS),
        ));
    }
    if raw.alerts.no_file_days > AlertOptions::MAX_NO_FILE_DAYS {
        return Err(field(
            "alerts.no_file_days",
            format!("must be 0 (off) to {}", AlertOptions::MAX_NO_FILE_DAYS),
        ));
    }
    Ok(Tenant {
        name,
        region,
        portal_domain,
        api_base_url,
        ftps_host: raw.ftps_host,
        ftps_port: raw.ftps_port,
        transport,
        sftp_port: raw.sftp_port,
        sftp_host_keys,
        admin: Admin {
            username: raw.admin.username,
            email,
        },
        notify,
        schedule,
        enabled: raw.enabled,
        limits: raw.limits,
        import: raw.import,
        files: raw.files,
        alerts: raw.alerts,
    })
}

/// The most addresses `notify` may list.
const MAX_NOTIFY: usize = 20;

/// The `notify` addresses, checked one by one (duplicates dropped, order kept); the admin's
/// address when the field is absent.
fn notify_list(
    raw: Option<&[String]>,
    admin: &EmailAddress,
) -> Result<Vec<EmailAddress>, FieldError> {
    let Some(raw) = raw else {
        return Ok(vec![admin.clone()]);
    };
    if raw.is_empty() {
        return Err(field(
            "notify",
            "must list at least one address (leave it out to notify the admin)",
        ));
    }
    if raw.len() > MAX_NOTIFY {
        return Err(field(
            "notify",
            format!("lists more than {MAX_NOTIFY} addresses"),
        ));
    }
    let mut list: Vec<EmailAddress> = Vec::with_capacity(raw.len());
    for (i, address) in raw.iter().enumerate() {
        let parsed = EmailAddress::parse(address).map_err(|e| field(&format!("notify[{i}]"), e))?;
        if !list
            .iter()
            .any(|a| a.as_str().eq_ignore_ascii_case(parsed.as_str()))
        {
            list.push(parsed);
        }
    }
    Ok(list)
}

/// HTTPS, or plain HTTP to a loopback address (the local fake); never credentials in the URL.
fn parse_api_url(raw: &str) -> Result<Url, String> {
    let mut url = Url::parse(raw).map_err(|e| format!("{raw:?} is not a URL: {e}"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not hold credentials".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment".into());
    }
    let loopback = matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => return Err("must use https (plain http is allowed only on loopback)".into()),
        other => return Err(format!("scheme {other:?} is not http(s)")),
    }
    // A trailing slash makes `join("SetUser")` append rather than replace the last segment.
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}
