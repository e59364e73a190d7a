use std::path::Path;

use super::*;

const GOOD: &str = r#"
[defaults]
timezone = "UTC"
ftps_port = 2121

[[tenant]]
name = "acme"
region = "eu"
portal_domain = "acme.learning-admin.com"
api_base_url = "https://api.learning-admin.com/eu"
ftps_host = "ftp-eu.learning-admin.com"
admin = { username = "jane.admin", email = "jane@acme.example" }
limits = { api_concurrency = 4 }

[[tenant]]
name = "beta"
region = "us"
portal_domain = "beta.learning-admin.com"
api_base_url = "http://127.0.0.1:8089"
ftps_host = "127.0.0.1"
ftps_port = 21
admin = { username = "root", email = "it@beta.example" }
schedule = "30 2 * * MON-FRI"
timezone = "America/New_York"
enabled = false
import = { empty_cells = "clear", groups_separator = "|" }
"#;

fn parse(text: &str) -> Result<Registry, RegistryError> {
    Registry::parse(Path::new("tenants.toml"), text)
}

#[test]
fn a_good_registry_loads_with_defaults_applied() -> Result<(), RegistryError> {
    let r = parse(GOOD)?;
    assert_eq!(r.len(), 2);
    let acme = r.get("acme").ok_or_else(|| panic!("acme"))?;
    assert_eq!(acme.ftps_port, 2121, "from [defaults]");
    assert_eq!(acme.schedule.expr(), "0 0 * * *", "default schedule");
    assert!(acme.enabled);
    assert_eq!(acme.limits.api_concurrency, Some(4));
    assert_eq!(
        acme.api_base_url.as_str(),
        "https://api.learning-admin.com/eu/"
    );
    let beta = r.get("beta").ok_or_else(|| panic!("beta"))?;
    assert_eq!(beta.ftps_port, 21, "the tenant overrides [defaults]");
    assert!(!beta.enabled);
    assert_eq!(beta.import.empty_cells, EmptyCells::Clear);
    assert_eq!(beta.import.groups_separator, '|');
    assert!(r.get("nobody").is_none());
    assert!(r.get("../etc").is_none());
    Ok(())
}

fn error_of(text: &str) -> RegistryError {
    match parse(text) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e,
    }
}

fn acme_with(line_from: &str, line_to: &str) -> String {
    let text = GOOD.replacen(line_from, line_to, 1);
    assert_ne!(text, GOOD, "the replacement {line_from:?} must apply");
    text
}

#[test]
fn errors_name_the_file_the_tenant_and_the_field() {
    let cases = [
        (acme_with(r#"region = "eu""#, r#"region = "EU""#), "region"),
        (acme_with(r#"region = "eu""#, r#"regoin = "eu""#), "regoin"),
        (acme_with(r#"region = "eu""#, ""), "region"),
        (
            acme_with("jane@acme.example", "not-an-address"),
            "admin.email",
        ),
        (
            acme_with(r#"portal_domain = "acme."#, r#"portal_domain = "acne."#),
            "portal_domain",
        ),
        (
            acme_with(
                "https://api.learning-admin.com/eu",
                "http://api.learning-admin.com/eu",
            ),
            "api_base_url",
        ),
        (
            acme_with(r#"timezone = "UTC""#, r#"timezone = "Mars/Olympus""#),
            "timezone",
        ),
        (
            acme_with("api_concurrency = 4", "api_concurrency = 0"),
            "limits.api_concurrency",
        ),
    ];
    for (text, field) in cases {
        let e = error_of(&text);
        assert_eq!(e.file, Path::new("tenants.toml"));
        assert_eq!(e.tenant.as_deref(), Some("acme"), "{e}");
        assert_eq!(e.field.as_deref(), Some(field), "{e}");
        let shown = e.to_string();
        assert!(
            shown.contains("tenants.toml") && shown.contains("acme") && shown.contains(field),
            "{shown}"
        );
    }
}

#[test]
fn a_bad_schedule_names_the_schedule_field() {
    let text = GOOD.replace("30 2 * * MON-FRI", "every day");
    let e = error_of(&text);
    assert_eq!(
        (e.tenant.as_deref(), e.field.as_deref()),
        (Some("beta"), Some("schedule"))
    );
}

#[test]
fn a_tenant_listed_twice_is_refused() {
    let text = format!(
        "{GOOD}\n{}",
        &GOOD[GOOD.find("[[tenant]]").unwrap_or(0)
            ..GOOD.find("[[tenant]]\nname = \"beta\"").unwrap_or(0)]
    );
    let e = error_of(&text);
    assert_eq!(e.field.as_deref(), Some("name"), "{e}");
}

#[test]
fn an_entry_without_a_name_is_named_by_its_position() {
    let e = error_of("[[tenant]]\nregion = \"eu\"\n");
    assert_eq!(e.tenant.as_deref(), Some("#1"));
    assert_eq!(e.field.as_deref(), Some("name"), "{e}");
}

#[test]
fn toml_syntax_errors_name_the_file() {
    let e = error_of("[[tenant]\nname=");
    assert!(
        e.to_string().starts_with("tenant registry tenants.toml"),
        "{e}"
    );
}

#[test]
fn the_shipped_example_registry_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/tenants.example.toml");
    let r = Registry::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(r.get("demo").is_some());
}

#[test]
fn the_tenant_admin_options_default_to_safe_values() -> Result<(), RegistryError> {
    let r = parse(GOOD)?;
    let acme = r.get("acme").ok_or_else(|| panic!("acme"))?;
    let o = &acme.import;
    assert!(!o.verify_only && !o.skip_unchanged && !o.full_sync);
    assert!(o.mass_change_guard.enabled);
    assert_eq!(o.skip_unchanged_max_age_days, 7);
    Ok(())
}

#[test]
fn the_tenant_admin_options_are_read_from_the_import_table() -> Result<(), RegistryError> {
    let text = acme_with(
        "limits = { api_concurrency = 4 }",
        "limits = { api_concurrency = 4 }\n\
         import = { verify_only = true, skip_unchanged = true, full_sync = true, \
         mass_change_guard = { max_deactivate_count = 3, max_update_percent = 20 } }",
    );
    let r = parse(&text)?;
    let o = &r.get("acme").ok_or_else(|| panic!("acme"))?.import;
    assert!(o.verify_only && o.skip_unchanged && o.full_sync);
    assert_eq!(o.mass_change_guard.max_deactivate_count, 3);
    assert_eq!(o.mass_change_guard.max_update_percent, 20);
    assert_eq!(o.mass_change_guard.max_update_count, 500, "default kept");
    Ok(())
}

#[test]
fn bad_tenant_admin_options_name_their_field() {
    for (import, field) in [
        (
            "import = { mass_change_guard = { max_update_percent = 101 } }",
            "import.mass_change_guard.max_update_percent",
        ),
        (
            "import = { skip_unchanged_max_age_days = 0 }",
            "import.skip_unchanged_max_age_days",
        ),
        ("import = { full_synk = true }", "full_synk"),
    ] {
        let text = acme_with(
            "limits = { api_concurrency = 4 }",
            &format!("limits = {{ api_concurrency = 4 }}\n{import}"),
        );
        let e = error_of(&text);
        assert_eq!(e.tenant.as_deref(), Some("acme"), "{e}");
        assert_eq!(e.field.as_deref(), Some(field), "{e}");
    }
}

#[test]
fn the_guard_holds_only_over_both_thresholds() {
    use super::MassChangeGuard;
    let g = MassChangeGuard::default();
    assert!(!g.deactivations_exceeded(25, 100), "count not exceeded");
    assert!(!g.deactivations_exceeded(30, 1000), "3% is under 10%");
    assert!(g.deactivations_exceeded(30, 100));
    assert!(g.updates_exceeded(501, 600));
    let off = MassChangeGuard {
        enabled: false,
        ..MassChangeGuard::default()
    };
    assert!(!off.deactivations_exceeded(1000, 1000));
}

#[test]
fn file_and_alert_settings_have_safe_defaults_and_are_checked() {
    let r = parse(GOOD).unwrap_or_else(|e| panic!("{e}"));
    let acme = r.get("acme").unwrap_or_else(|| panic!("acme"));
    assert_eq!(acme.files, FileOptions::default());
    assert_eq!(acme.files.settle, std::time::Duration::from_secs(5));
    assert_eq!(acme.files.archive_retention_days, 30);
    assert_eq!(acme.alerts.no_file_days, 0, "the no-file alert is off");
    assert!(acme.alerts.login_failures, "login alerts are on");

    let set = acme_with(
        "limits = { api_concurrency = 4 }",
        "limits = { api_concurrency = 4 }\nfiles = { settle = \"750ms\", archive_retention_days = 0 }\nalerts = { no_file_days = 3, login_failures = false }",
    );
    let r = parse(&set).unwrap_or_else(|e| panic!("{e}"));
    let acme = r.get("acme").unwrap_or_else(|| panic!("acme"));
    assert_eq!(acme.files.settle, std::time::Duration::from_millis(750));
    assert_eq!(acme.files.archive_retention_days, 0);
    assert_eq!(acme.alerts.no_file_days, 3);
    assert!(!acme.alerts.login_failures);

    for (line, field) in [
        ("files = { settle = \"1h\" }", "files.settle"),
        (
            "files = { archive_retention_days = 99999 }",
            "files.archive_retention_days",
        ),
        ("alerts = { no_file_days = 1000 }", "alerts.no_file_days"),
    ] {
        let e = error_of(&acme_with(
            "limits = { api_concurrency = 4 }",
            &format!("limits = {{ api_concurrency = 4 }}\n{line}"),
        ));
        assert_eq!(e.tenant.as_deref(), Some("acme"), "{e}");
        assert_eq!(e.field.as_deref(), Some(field), "{e}");
    }
    let e = error_of(&acme_with(
        "limits = { api_concurrency = 4 }",
        "limits = { api_concurrency = 4 }\nalerts = { no_file_dayz = 2 }",
    ));
    assert!(e.to_string().contains("no_file_dayz"), "{e}");
}

const HOST_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHZ2f6r3l0C8xg8b0mU1qv8M2yYg3b6QmN6tZQ8J3a7c sftp-eu";

#[test]
fn the_transport_is_ftps_unless_the_tenant_says_sftp() {
    let r = parse(GOOD).unwrap_or_else(|e| panic!("{e}"));
    let acme = r.get("acme").unwrap_or_else(|| panic!("acme"));
    assert_eq!(acme.transport, Transport::Ftps);
    assert_eq!(acme.sftp_port, 22);
    assert!(acme.sftp_host_keys.is_empty());

    let sftp = acme_with(
        "limits = { api_concurrency = 4 }",
        &format!(
            "limits = {{ api_concurrency = 4 }}\ntransport = \"sftp\"\nsftp_port = 2222\nsftp_host_key = \"{HOST_KEY}\""
        ),
    );
    let r = parse(&sftp).unwrap_or_else(|e| panic!("{e}"));
    let acme = r.get("acme").unwrap_or_else(|| panic!("acme"));
    assert_eq!(acme.transport, Transport::Sftp);
    assert_eq!(acme.sftp_port, 2222);
    assert_eq!(acme.sftp_host_keys, vec![HOST_KEY.to_owned()]);
}

#[test]
fn two_host_keys_can_be_pinned_during_a_rotation() {
    let text = acme_with(
        "limits = { api_concurrency = 4 }",
        &format!(
            "limits = {{ api_concurrency = 4 }}\ntransport = \"sftp\"\nsftp_host_key = [\"{HOST_KEY}\", \"ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBJ8=\"]"
        ),
    );
    let r = parse(&text).unwrap_or_else(|e| panic!("{e}"));
    let acme = r.get("acme").unwrap_or_else(|| panic!("acme"));
    assert_eq!(acme.sftp_host_keys.len(), 2);
}

#[test]
fn an_sftp_tenant_without_a_valid_pinned_host_key_is_refused() {
    for (extra, field) in [
        ("transport = \"sftp\"".to_owned(), "sftp_host_key"),
        (
            "transport = \"sftp\"\nsftp_host_key = \"ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7\""
                .to_owned(),
            "sftp_host_key",
        ),
        (
            "transport = \"sftp\"\nsftp_host_key = \"not a key\"".to_owned(),
            "sftp_host_key",
        ),
        (
            format!("transport = \"sftp\"\nsftp_host_key = \"{HOST_KEY}\"\nsftp_port = 0"),
            "sftp_port",
        ),
        ("transport = \"scp\"".to_owned(), "transport"),
    ] {
        let e = error_of(&acme_with(
            "limits = { api_concurrency = 4 }",
            &format!("limits = {{ api_concurrency = 4 }}\n{extra}"),
        ));
        assert_eq!(e.tenant.as_deref(), Some("acme"), "{e}");
        assert_eq!(e.field.as_deref(), Some(field), "{extra}: {e}");
    }
}

#[test]
fn notify_lists_the_recipients_and_defaults_to_the_admin() -> Result<(), RegistryError> {
    let r = parse(GOOD)?;
    let acme = r.get("acme").ok_or_else(|| panic!("acme"))?;
    let only_admin: Vec<&str> = acme.notify.iter().map(|a| a.as_str()).collect();
    assert_eq!(only_admin, ["jane@acme.example"]);
    let text = acme_with(
        "limits = { api_concurrency = 4 }",
        "limits = { api_concurrency = 4 }\nnotify = [\"hr@acme.example\", \"it@acme.example\", \"HR@acme.example\"]",
    );
    let r = parse(&text)?;
    let acme = r.get("acme").ok_or_else(|| panic!("acme"))?;
    let list: Vec<&str> = acme.notify.iter().map(|a| a.as_str()).collect();
    assert_eq!(
        list,
        ["hr@acme.example", "it@acme.example"],
        "duplicates dropped"
    );
    assert_eq!(
        acme.admin.email.as_str(),
        "jane@acme.example",
        "the admin stays"
    );
    for (bad, field) in [
        (
            "notify = [\"hr@acme.example\", \"not an address\"]",
            "notify[1]",
        ),
        ("notify = []", "notify"),
    ] {
        let e = error_of(&acme_with(
            "limits = { api_concurrency = 4 }",
            &format!("limits = {{ api_concurrency = 4 }}\n{bad}"),
        ));
        assert_eq!(e.field.as_deref(), Some(field), "{bad}: {e}");
    }
    Ok(())
}

#[test]
fn protected_users_match_names_and_patterns_case_insensitively() -> Result<(), RegistryError> {
    let text = acme_with(
        "limits = { api_concurrency = 4 }",
        "limits = { api_concurrency = 4 }\nimport = { protected_users = [\"ceo\", \"svc.*\", \"temp-??\"] }",
    );
    let r = parse(&text)?;
    let import = &r.get("acme").ok_or_else(|| panic!("acme"))?.import;
    for name in ["ceo", "CEO", "svc.backup", "svc.", "temp-01"] {
        assert!(import.protects(name), "{name}");
    }
    for name in ["ceo2", "asvc.backup", "temp-1", "temp-001", "jane"] {
        assert!(!import.protects(name), "{name}");
    }
    for bad in ["[\"\"]", "[\"*\"]", "[\"a\\u0007\"]"] {
        let e = error_of(&acme_with(
            "limits = { api_concurrency = 4 }",
            &format!("limits = {{ api_concurrency = 4 }}\nimport = {{ protected_users = {bad} }}"),
        ));
        assert_eq!(
            e.field.as_deref(),
            Some("import.protected_users"),
            "{bad}: {e}"
        );
    }
    Ok(())
}

#[test]
fn a_glob_backtracks_over_its_stars() {
    use super::tenant::glob_matches;
    assert!(glob_matches("a*b*c", "axxbyyc"));
    assert!(glob_matches("a*b*c", "abbbc"));
    assert!(!glob_matches("a*b*c", "axxbyy"));
    assert!(glob_matches("*", ""));
    assert!(glob_matches("**x", "x"));
    assert!(!glob_matches("?", ""));
}
