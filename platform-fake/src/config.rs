//! What the fake starts with: its tenants and its faults.

use serde::{Deserialize, Serialize};

use crate::faults::Faults;

/// The fake's start-up configuration.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FakeConfig {
    pub tenants: Vec<TenantSeed>,
    pub faults: Faults,
}

/// A tenant to create at start-up.
///
/// `Debug` is written by hand so the API key never lands in a log line.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TenantSeed {
    /// The portal domain, e.g. `acme.learning-admin.com` (the Basic-auth user).
    pub domain: String,
    /// The API key (the Basic-auth password).
    pub api_key: String,
}

impl TenantSeed {
    pub fn new(domain: impl Into<String>, api_key: impl Into<String>) -> Self {
        Self {
            domain: domain.into(),
            api_key: api_key.into(),
        }
    }

    /// Parses `DOMAIN=KEY`. The error never repeats the input (it may hold a key).
    pub fn parse(line: &str) -> Result<Self, String> {
        let (domain, key) = line
            .split_once('=')
            .ok_or_else(|| "expected DOMAIN=KEY".to_owned())?;
        let (domain, key) = (domain.trim(), key.trim());
        if domain.is_empty() || key.is_empty() {
            return Err("expected DOMAIN=KEY with both parts non-empty".to_owned());
        }
        Ok(Self::new(domain, key))
    }
}

impl std::fmt::Debug for TenantSeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantSeed")
            .field("domain", &self.domain)
            .field("api_key", &"[redacted]")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_seed_parses_from_domain_equals_key() {
        assert_eq!(
            TenantSeed::parse(" acme.learning-admin.com = k=ey "),
            Ok(TenantSeed::new("acme.learning-admin.com", "k=ey"))
        );
        assert!(TenantSeed::parse("acme.learning-admin.com").is_err());
        assert!(TenantSeed::parse("=key").is_err());
        assert!(TenantSeed::parse("acme.learning-admin.com=").is_err());
    }

    #[test]
    fn a_tenant_seed_never_shows_its_key() {
        let shown = format!("{:?}", TenantSeed::new("acme.learning-admin.com", "s3cret"));
        assert!(
            shown.contains("acme") && !shown.contains("s3cret"),
            "{shown}"
        );
        let err = TenantSeed::parse("s3cret-without-domain")
            .err()
            .unwrap_or_default();
        assert!(!err.contains("s3cret"), "{err}");
    }
}
