//! The corpus of odd and bad files (`tests/corpus/`, expectations in `expected.toml`): each file
//! goes through the import (decoding, parsing, validation, the API calls against the platform
//! fake) and every expectation is checked: the file-level outcome or error, the counts, each
//! listed line's result and message, the values the platform received, the report's cells.

use std::path::{Path, PathBuf};
use std::time::Duration;

use platform_fake::{FakeConfig, FakeHandle};
use serde::Deserialize;
use shared::registry::Registry;
use shared::settings::Settings;
use worker::import::{ImportError, ImportParams};
use worker::platform::PlatformClient;

use harness::fixtures::{TenantEntry, csv_rows};

#[derive(Debug, Deserialize)]
struct Expected {
    case: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    file: String,
    outcome: String,
    #[serde(default)]
    error: String,
    encoding: Option<String>,
    #[serde(default)]
    rows: u64,
    #[serde(default)]
    created: u64,
    #[serde(default)]
    invalid: u64,
    #[serde(default)]
    failed: u64,
    #[serde(default)]
    row: Vec<(u64, String, String)>,
    #[serde(default)]
    profile: Vec<(String, String, String)>,
    #[serde(default)]
    groups: Vec<(String, String)>,
    #[serde(default)]
    state: Vec<(String, String)>,
    #[serde(default)]
    report_cells: Vec<(u64, String, String)>,
    #[serde(default)]
    unknown_columns: Vec<String>,
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

/// Runs one file; returns the import result, the progress lines and the report rows.
async fn import_one(
    fake: &FakeHandle,
    file: &Path,
) -> (
    String,
    Result<worker::import::ImportSummary, ImportError>,
    Vec<String>,
    Vec<Vec<String>>,
) {
    let name = harness::unique("c");
    let domain = format!("{name}.learning-admin.com");
    fake.add_tenant(&domain, "corpus-key");
    let registry = Registry::parse(
        Path::new("corpus.toml"),
        &TenantEntry {
            portal_domain: domain.clone(),
            api_base_url: fake.base_url(),
            ftps_host: "127.0.0.1".to_owned(),
            admin_email: "admin@example.com".to_owned(),
            ..TenantEntry::new(&name)
        }
        .toml(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let tenant = registry.get(&name).unwrap_or_else(|| panic!("tenant"));
    let mut settings = Settings::default();
    settings.platform.status_poll_interval = Duration::from_millis(10);
    let http = PlatformClient::http_client(&settings.platform).unwrap_or_else(|e| panic!("{e}"));
    let client = PlatformClient::new(
        http,
        tenant,
        shared::ApiKey::new("corpus-key"),
        &settings.platform,
        4,
    );
    let params = ImportParams {
        options: tenant.import.clone(),
        concurrency: 4,
        max_rows: 10_000,
        progress_every: 1000,
        max_record_bytes: settings.import.max_record_bytes,
        verify: false,
        confirmed: false,
        force_full: false,
        tenant: name.clone(),
        admin: tenant.admin.username.clone(),
        // The corpus uses no option that needs Redis: a store without a URL fails if used.
        store: worker::import::store::ImportStore::from_settings(
            &shared::settings::RedisSettings {
                url: shared::secret::Secret::default(),
                key_prefix: "corpus".into(),
            },
        )
        .unwrap_or_else(|e| panic!("{e}")),
        journal: None,
    };
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let local = dir.path().join("user-import.csv");
    std::fs::copy(file, &local).unwrap_or_else(|e| panic!("{e}"));
    let results = dir.path().join("results.csv");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let cancel = tokio_util::sync::CancellationToken::new();
    let result = worker::import::run(&local, &results, &client, &params, &tx, &cancel)
        .await
        .map(|run| match run {
            worker::import::Run::Done(summary) => summary,
            worker::import::Run::Held(h) => panic!("a corpus file was held: {h:?}"),
        });
    drop(tx);
    let mut progress = Vec::new();
    while let Some(line) = rx.recv().await {
        progress.push(line);
    }
    let report = std::fs::read_to_string(&results)
        .map(|t| csv_rows(&t))
        .unwrap_or_default();
    (domain, result, progress, report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_file_of_the_corpus_gives_its_expected_outcome() {
    let text = std::fs::read_to_string(corpus_dir().join("expected.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let expected: Expected = toml::from_str(&text).unwrap_or_else(|e| panic!("expected.toml: {e}"));
    assert!(
        expected.case.len() >= 30,
        "the corpus has at least 30 files"
    );
    // Every file of the corpus has an expectation, and the other way round.
    let mut files: Vec<String> = std::fs::read_dir(corpus_dir())
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n != "expected.toml")
        .collect();
    files.sort();
    let mut named: Vec<String> = expected.case.iter().map(|c| c.file.clone()).collect();
    named.sort();
    assert_eq!(
        files, named,
        "corpus files and expectations match one to one"
    );

    let fake = platform_fake::spawn(FakeConfig::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut failures = Vec::new();
    for case in &expected.case {
        let (domain, result, progress, report) =
            import_one(&fake, &corpus_dir().join(&case.file)).await;
        if let Err(why) = check(case, &fake, &domain, &result, &progress, &report) {
            failures.push(format!("{}: {why}", case.file));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn check(
    case: &Case,
    fake: &FakeHandle,
    domain: &str,
    result: &Result<worker::import::ImportSummary, ImportError>,
    progress: &[String],
    report: &[Vec<String>],
) -> Result<(), String> {
    match (case.outcome.as_str(), result) {
        ("failed", Err(e)) => {
            let shown = e.to_string();
            return if shown.contains(&case.error) {
                Ok(())
            } else {
                Err(format!("error {shown:?} lacks {:?}", case.error))
            };
        }
        ("failed", Ok(s)) => return Err(format!("expected a failure, got {:?}", s.counts)),
        (_, Err(e)) => return Err(format!("expected an import, got error: {e}")),
        _ => {}
    }
    let Ok(summary) = result else {
        return Err("unreachable".into());
    };
    let c = &summary.counts;
    if (c.rows, c.created, c.invalid, c.failed)
        != (case.rows, case.created, case.invalid, case.failed)
    {
        return Err(format!(
            "counts rows/created/invalid/failed = {}/{}/{}/{}, expected {}/{}/{}/{}",
            c.rows,
            c.created,
            c.invalid,
            c.failed,
            case.rows,
            case.created,
            case.invalid,
            case.failed
        ));
    }
    // One notion of invalid: the validation line says the number the end counts.
    if !progress
        .iter()
        .any(|p| p.contains(&format!("validated {} rows: {} invalid", c.rows, c.invalid)))
    {
        return Err(format!(
            "the validation line does not say {} invalid: {progress:?}",
            c.invalid
        ));
    }
    if report.len() as u64 != case.rows + 1 {
        return Err(format!(
            "the report has {} lines for {} rows",
            report.len(),
            case.rows
        ));
    }
    if let Some(enc) = &case.encoding
        && summary.encoding.label() != enc
    {
        return Err(format!(
            "encoding {} expected {enc}",
            summary.encoding.label()
        ));
    }
    for (line, result, message) in &case.row {
        let Some(r) = report.iter().find(|r| r[0] == line.to_string()) else {
            return Err(format!("no report line for {line}: {report:?}"));
        };
        if &r[3] != result || !r[4].contains(message.as_str()) {
            return Err(format!(
                "line {line}: got {r:?}, expected {result} / {message:?}"
            ));
        }
    }
    for (line, column, value) in &case.report_cells {
        let idx = ["line", "username", "action", "result", "message"]
            .iter()
            .position(|c| c == column)
            .ok_or_else(|| format!("no column {column}"))?;
        let r = report
            .iter()
            .find(|r| r[0] == line.to_string())
            .ok_or("no such line")?;
        if &r[idx] != value {
            return Err(format!(
                "report line {line} {column} = {:?}, expected {value:?}",
                r[idx]
            ));
        }
    }
    for (user, key, value) in &case.profile {
        let got = fake
            .user(domain, user)
            .and_then(|u| u.profile.get(key).cloned());
        if got.as_deref() != Some(value.as_str()) {
            return Err(format!("{user}.{key} = {got:?}, expected {value:?}"));
        }
    }
    for (user, group) in &case.groups {
        if !fake
            .user(domain, user)
            .is_some_and(|u| u.groups.contains(group))
        {
            return Err(format!("{user} is not in group {group}"));
        }
    }
    for (user, state) in &case.state {
        let got = fake.user(domain, user).map(|u| u.state);
        if got.as_deref() != Some(state.as_str()) {
            return Err(format!("{user} state {got:?}, expected {state}"));
        }
    }
    for col in &case.unknown_columns {
        if !summary.unknown_columns.contains(col)
            || !progress.iter().any(|p| p.contains(col.as_str()))
        {
            return Err(format!(
                "unknown column {col} not reported: {:?}",
                summary.unknown_columns
            ));
        }
    }
    Ok(())
}
