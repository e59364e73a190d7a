//! Environment overrides: `USER_IMPORT__SMTP__HOST=mail` sets `smtp.host`. A value is read as a
//! TOML value when it parses as one that is not a bare word (`2525`, `true`, `"30s"`), otherwise
//! as a string, so `USER_IMPORT__SMTP__TLS=none` and `USER_IMPORT__SMTP__PORT=2525` both work.

use std::collections::HashMap;

use super::SettingsError;

pub const ENV_PREFIX: &str = "USER_IMPORT__";

pub(super) fn apply_overrides(
    table: &mut toml::Table,
    env: &HashMap<String, String>,
) -> Result<(), SettingsError> {
    let mut vars: Vec<(&String, &String)> = env
        .iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    vars.sort();
    for (var, raw) in vars {
        let path: Vec<String> = var[ENV_PREFIX.len()..]
            .split("__")
            .map(|s| s.to_ascii_lowercase())
            .collect();
        if path.iter().any(|p| p.is_empty()) {
            return Err(SettingsError::Env {
                var: var.clone(),
                message: "empty key segment".into(),
            });
        }
        set_path(table, &path, parse_value(raw)).map_err(|message| SettingsError::Env {
            var: var.clone(),
            message,
        })?;
    }
    Ok(())
}

fn parse_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&doc) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_owned())),
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("no key".into());
    };
    let mut cur = table;
    for p in parents {
        let entry = cur
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{p}` is not a section"))?;
    }
    cur.insert(last.clone(), value);
    Ok(())
}
