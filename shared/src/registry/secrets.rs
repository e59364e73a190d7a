//! Where tenants' API keys come from: a directory with one file per tenant (a mounted Kubernetes
//! Secret), else the variable `USER_IMPORT_API_KEY_<TENANT>`. Keys are read when a job needs them,
//! so a rotated Secret is picked up without a restart.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::domain::TenantName;
use crate::secret::ApiKey;

#[derive(Debug, Clone, thiserror::Error)]
pub enum SecretError {
    #[error("no API key for tenant {tenant}: no file {file} and no variable {var}")]
    Missing {
        tenant: String,
        file: String,
        var: String,
    },
    #[error("cannot read the API key file of tenant {tenant}: {message}")]
    Unreadable { tenant: String, message: String },
    #[error("the API key of tenant {tenant} is empty or not one line")]
    Malformed { tenant: String },
}

#[derive(Clone)]
pub struct SecretSource {
    dir: Option<PathBuf>,
    env: HashMap<String, String>,
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretSource")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl SecretSource {
    /// Keeps only the `USER_IMPORT_API_KEY_*` variables of `env`.
    pub fn new(dir: Option<PathBuf>, env: &HashMap<String, String>) -> Self {
        let env = env
            .iter()
            .filter(|(k, _)| k.starts_with(ENV_KEY_PREFIX))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Self { dir, env }
    }

    pub fn env_var_for(tenant: &TenantName) -> String {
        format!(
            "{ENV_KEY_PREFIX}{}",
            tenant.as_str().to_ascii_uppercase().replace('-', "_")
        )
    }

    pub fn api_key(&self, tenant: &TenantName) -> Result<ApiKey, SecretError> {
        let var = Self::env_var_for(tenant);
        let file = self.dir.as_ref().map(|d| d.join(tenant.as_str()));
        let value = match &file {
            Some(path) if path.exists() => {
                std::fs::read_to_string(path).map_err(|e| SecretError::Unreadable {
                    tenant: tenant.to_string(),
                    message: e.to_string(),
                })?
            }
            _ => match self.env.get(&var) {
                Some(v) => v.clone(),
                None => {
                    return Err(SecretError::Missing {
                        tenant: tenant.to_string(),
                        file: file
                            .map(|p| p.display().to_string())
                            .unwrap_or_else(|| "(no secrets dir)".into()),
                        var,
                    });
                }
            },
        };
        // A Secret file usually ends with a newline; anything else inside is an error.
        let key = value.trim_end_matches(['\r', '\n']);
        if key.is_empty() || key.contains(['\r', '\n']) || key.chars().any(char::is_control) {
            return Err(SecretError::Malformed {
                tenant: tenant.to_string(),
            });
        }
        Ok(ApiKey::new(key))
    }
}

const ENV_KEY_PREFIX: &str = "USER_IMPORT_API_KEY_";

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> TenantName {
        TenantName::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_file_wins_over_the_environment() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("acme"), "from-file\n")?;
        let env = HashMap::from([
            (
                "USER_IMPORT_API_KEY_ACME".to_string(),
                "from-env".to_string(),
            ),
            (
                "USER_IMPORT_API_KEY_BETA_2".to_string(),
                "beta-env".to_string(),
            ),
        ]);
        let src = SecretSource::new(Some(dir.path().to_owned()), &env);
        assert_eq!(
            src.api_key(&name("acme"))
                .map(|k| k.expose().to_owned())
                .ok(),
            Some("from-file".into())
        );
        assert_eq!(
            src.api_key(&name("beta-2"))
                .map(|k| k.expose().to_owned())
                .ok(),
            Some("beta-env".into())
        );
        Ok(())
    }

    #[test]
    fn a_missing_or_broken_key_is_an_error_that_does_not_show_the_key() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("bad"), "line1\nline2\n")?;
        let src = SecretSource::new(Some(dir.path().to_owned()), &HashMap::new());
        let e = src
            .api_key(&name("nobody"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("USER_IMPORT_API_KEY_NOBODY"), "{e}");
        let e = src
            .api_key(&name("bad"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("not one line") && !e.contains("line1"), "{e}");
        Ok(())
    }
}
