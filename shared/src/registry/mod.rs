//! The tenant registry: one TOML file listing every tenant the fleet serves. It holds no secret; a
//! tenant's API key comes from [`secrets::SecretSource`].
//!
//! ```toml
//! [defaults]                      # optional; every key may be set per tenant too
//! schedule = "0 0 * * *"          # cron, 5 to 7 fields, `@daily` etc.
//! timezone = "UTC"
//! ftps_port = 21
//!
//! [[tenant]]
//! name = "acme"                   # first label of portal_domain; also the FTPS user
//! region = "eu"
//! portal_domain = "acme.learning-admin.com"
//! api_base_url = "https://api.learning-admin.com/eu"
//! ftps_host = "ftp-eu.learning-admin.com"
//! admin = { username = "jane.admin", email = "jane@acme.example" }
//! ```
//!
//! Every error names the file, the tenant and the field.

mod schedule;
pub mod secrets;
mod tenant;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::domain::TenantName;

pub use schedule::Schedule;
pub use tenant::{
    Admin, AlertOptions, EmptyCells, FileOptions, ImportOptions, MassChangeGuard, Tenant,
    TenantLimits, Transport,
};

/// An error in the registry file, pointing at the tenant and field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct RegistryError {
    pub file: PathBuf,
    /// The tenant's name, or `#<index>` (1-based) when the entry has no readable name.
    pub tenant: Option<String>,
    pub field: Option<String>,
    pub message: String,
}

impl RegistryError {
    fn render(&self) -> String {
        let mut s = format!("tenant registry {}", self.file.display());
        if let Some(t) = &self.tenant {
            s.push_str(&format!(": tenant {t}"));
        }
        if let Some(f) = &self.field {
            s.push_str(&format!(": field `{f}`"));
        }
        s.push_str(": ");
        s.push_str(&self.message);
        s
    }
}

/// The validated registry.
#[derive(Debug, Clone)]
pub struct Registry {
    path: PathBuf,
    tenants: BTreeMap<TenantName, Tenant>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    defaults: toml::Table,
    #[serde(default)]
    tenant: Vec<toml::Table>,
}

impl Registry {
    pub fn load(path: &Path) -> Result<Self, RegistryError> {
        let text = std::fs::read_to_string(path).map_err(|e| RegistryError {
            file: path.to_owned(),
            tenant: None,
            field: None,
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(path, &text)
    }

    /// Parses registry text; `path` only names the source in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, RegistryError> {
        let err = |tenant: Option<String>, field: Option<String>, message: String| RegistryError {
            file: path.to_owned(),
            tenant,
            field,
            message,
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let field = backticked(e.message());
            err(None, field, e.message().trim().to_owned())
        })?;
        let mut tenants = BTreeMap::new();
        for (i, entry) in raw.tenant.into_iter().enumerate() {
            let label = entry
                .get("name")
                .and_then(|v| v.as_str())
                .map(str::to_owned)
                .unwrap_or_else(|| format!("#{}", i + 1));
            let mut merged = raw.defaults.clone();
            merged.extend(entry);
            let tenant = tenant::from_table(merged)
                .map_err(|(field, message)| err(Some(label.clone()), field, message))?;
            if tenants.contains_key(&tenant.name) {
                return Err(err(
                    Some(label),
                    Some("name".into()),
                    "is listed twice".into(),
                ));
            }
            tenants.insert(tenant.name.clone(), tenant);
        }
        Ok(Self {
            path: path.to_owned(),
            tenants,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, name: &str) -> Option<&Tenant> {
        let name = TenantName::parse(name).ok()?;
        self.tenants.get(&name)
    }

    pub fn tenants(&self) -> impl Iterator<Item = &Tenant> {
        self.tenants.values()
    }

    pub fn len(&self) -> usize {
        self.tenants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }
}

/// The first `name` in backticks of a serde message (`missing field `region``).
fn backticked(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_owned())
}

#[cfg(test)]
mod tests;
