//! What `check-config` verifies beyond parsing: everything start-up or a job would otherwise fail on
//! later. Files named in the settings are readable (a CA file holds a certificate), directories
//! exist, the secrets source is there, and every enabled tenant has a usable API key.
//! Each check returns every problem it finds, not only the first, so one run lists them all.

use std::path::{Path, PathBuf};

use crate::registry::Registry;
use crate::registry::secrets::{SecretError, SecretSource};
use crate::settings::Settings;

/// One thing start-up or a job would fail on. Never quotes a secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConfigProblem {
    #[error("{key} {path}: cannot read it: {message}")]
    Unreadable {
        key: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("{key} {path}: no PEM certificate in it")]
    NoCertificate { key: &'static str, path: PathBuf },
    #[error("{key} {path}: not a directory")]
    NotADirectory { key: &'static str, path: PathBuf },
    #[error("{0}")]
    TenantKey(SecretError),
}

/// The files and directories the settings name: `ftps.ca_file` and `smtp.ca_file` (readable, with
/// a certificate), `registry.secrets_dir` and `work_dir` (existing, readable directories).
pub fn files(settings: &Settings) -> Vec<ConfigProblem> {
    let mut problems = Vec::new();
    for (key, path) in [
        ("ftps.ca_file", &settings.ftps.ca_file),
        ("smtp.ca_file", &settings.smtp.ca_file),
    ] {
        if let Some(path) = path
            && let Err(p) = ca_file(key, path)
        {
            problems.push(p);
        }
    }
    for (key, path) in [
        ("registry.secrets_dir", &settings.registry.secrets_dir),
        ("work_dir", &settings.work_dir),
    ] {
        if let Some(path) = path
            && let Err(p) = directory(key, path)
        {
            problems.push(p);
        }
    }
    problems
}

/// Every enabled tenant's API key, read as a job would read it (a disabled tenant runs only by
/// hand, and is not checked).
pub fn tenant_keys(registry: &Registry, secrets: &SecretSource) -> Vec<ConfigProblem> {
    registry
        .tenants()
        .filter(|t| t.enabled)
        .filter_map(|t| secrets.api_key(&t.name).err())
        .map(ConfigProblem::TenantKey)
        .collect()
}

fn ca_file(key: &'static str, path: &Path) -> Result<(), ConfigProblem> {
    let text = std::fs::read(path).map_err(|e| ConfigProblem::Unreadable {
        key,
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    if !String::from_utf8_lossy(&text).contains("-----BEGIN CERTIFICATE-----") {
        return Err(ConfigProblem::NoCertificate {
            key,
            path: path.to_owned(),
        });
    }
    Ok(())
}

fn directory(key: &'static str, path: &Path) -> Result<(), ConfigProblem> {
    let unreadable = |e: std::io::Error| ConfigProblem::Unreadable {
        key,
        path: path.to_owned(),
        message: e.to_string(),
    };
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    if !meta.is_dir() {
        return Err(ConfigProblem::NotADirectory {
            key,
            path: path.to_owned(),
        });
    }
    std::fs::read_dir(path).map_err(unreadable)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn tenant(name: &str, enabled: bool) -> String {
        format!(
            r#"
[[tenant]]
name = "{name}"
region = "eu"
portal_domain = "{name}.learning-admin.com"
api_base_url = "https://api.learning-admin.com/eu"
ftps_host = "ftp-eu.learning-admin.com"
admin = {{ username = "admin", email = "admin@{name}.example" }}
enabled = {enabled}
"#
        )
    }

    #[test]
    fn missing_or_wrong_files_and_directories_are_each_named() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let not_pem = dir.path().join("not-a-cert.txt");
        std::fs::write(&not_pem, "hello")?;
        let mut settings = Settings::default();
        settings.ftps.ca_file = Some(dir.path().join("missing-ca.pem"));
        settings.smtp.ca_file = Some(not_pem.clone());
        settings.registry.secrets_dir = Some(dir.path().join("no-secrets"));
        settings.work_dir = Some(not_pem.clone());
        let problems = files(&settings);
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(matches!(
            &problems[0],
            ConfigProblem::Unreadable {
                key: "ftps.ca_file",
                ..
            }
        ));
        assert!(matches!(
            &problems[1],
            ConfigProblem::NoCertificate {
                key: "smtp.ca_file",
                ..
            }
        ));
        assert!(matches!(
            &problems[2],
            ConfigProblem::Unreadable {
                key: "registry.secrets_dir",
                ..
            }
        ));
        assert!(matches!(
            &problems[3],
            ConfigProblem::NotADirectory {
                key: "work_dir",
                ..
            }
        ));
        assert!(problems[0].to_string().contains("missing-ca.pem"));

        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, CERT)?;
        settings.ftps.ca_file = Some(ca.clone());
        settings.smtp.ca_file = Some(ca);
        settings.registry.secrets_dir = Some(dir.path().to_owned());
        settings.work_dir = None;
        assert!(files(&settings).is_empty());
        assert!(files(&Settings::default()).is_empty(), "nothing named");
        Ok(())
    }

    #[test]
    fn every_enabled_tenant_without_a_usable_key_is_named_and_no_key_is_shown()
    -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("tenants.toml");
        let text = [
            tenant("has-file", true),
            tenant("has-env", true),
            tenant("missing", true),
            tenant("broken", true),
            tenant("off", false),
        ]
        .concat();
        std::fs::write(&path, text)?;
        let registry = Registry::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let secrets = dir.path().join("secrets");
        std::fs::create_dir(&secrets)?;
        std::fs::write(secrets.join("has-file"), "key-1\n")?;
        std::fs::write(secrets.join("broken"), "secret-part\nsecond line\n")?;
        let env = HashMap::from([("USER_IMPORT_API_KEY_HAS_ENV".to_owned(), "key-2".to_owned())]);
        let problems = tenant_keys(&registry, &SecretSource::new(Some(secrets), &env));
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 2, "{text:#?}");
        assert!(text.iter().any(|t| t.contains("missing")), "{text:#?}");
        assert!(text.iter().any(|t| t.contains("broken")), "{text:#?}");
        assert!(
            !text.iter().any(|t| t.contains("off")),
            "a disabled tenant is not checked"
        );
        assert!(!text.concat().contains("secret-part"));
        Ok(())
    }
}
