//! The import engine on its own (no FTPS, no queue) against the platform fake over HTTP: the
//! names and counts its results carry, and what it costs the API per row.

use std::path::Path;
use std::time::Duration;

use platform_fake::{FakeHandle, FakeUser};
use shared::registry::{ImportOptions, Registry};
use shared::settings::Settings;
use worker::import::{ImportParams, ImportSummary, Run};
use worker::platform::PlatformClient;

use harness::fixtures::csv_rows;

/// A tenant on the fake, and what one import of a file gave.
pub(crate) struct Imported {
    pub summary: ImportSummary,
    pub progress: Vec<String>,
    pub report: Vec<Vec<String>>,
}

/// A fresh tenant on `fake`: its portal domain and the client the import uses.
pub(crate) fn tenant(fake: &FakeHandle, settings: &Settings) -> (String, PlatformClient) {
    let name = harness::unique("ie");
    let domain = format!("{name}.learning-admin.com");
    fake.add_tenant(&domain, "engine-key");
    let registry = Registry::parse(
        Path::new("engine.toml"),
        &format!(
            r#"[[tenant]]
name = "{name}"
region = "eu"
portal_domain = "{domain}"
api_base_url = "{}"
ftps_host = "127.0.0.1"
admin = {{ username = "admin", email = "admin@example.com" }}
"#,
            fake.base_url()
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let tenant = registry.get(&name).unwrap_or_else(|| panic!("tenant"));
    let http = PlatformClient::http_client(&settings.platform).unwrap_or_else(|e| panic!("{e}"));
    let client = PlatformClient::new(
        http,
        tenant,
        shared::ApiKey::new("engine-key"),
        &settings.platform,
        4,
    );
    (domain, client)
}

pub(crate) fn settings() -> Settings {
    let mut settings = Settings::default();
    settings.platform.status_poll_interval = Duration::from_millis(10);
    settings
}

/// Imports `csv` (no Redis: the options used need no store).
pub(crate) async fn import(
    client: &PlatformClient,
    csv: &str,
    options: ImportOptions,
    concurrency: usize,
) -> Imported {
    let params = ImportParams {
        options,
        concurrency,
        max_rows: 100_000,
        progress_every: 100_000,
        max_record_bytes: Settings::default().import.max_record_bytes,
        verify: false,
        confirmed: true,
        force_full: false,
        tenant: harness::unique("ie"),
        admin: "admin".into(),
        store: worker::import::store::ImportStore::from_settings(
            &shared::settings::RedisSettings {
                url: shared::secret::Secret::default(),
                key_prefix: "engine".into(),
            },
        )
        .unwrap_or_else(|e| panic!("{e}")),
    };
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let local = dir.path().join("user-import.csv");
    std::fs::write(&local, csv).unwrap_or_else(|e| panic!("{e}"));
    let results = dir.path().join("results.csv");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let cancel = tokio_util::sync::CancellationToken::new();
    let run = worker::import::run(&local, &results, client, &params, &tx, &cancel)
        .await
        .unwrap_or_else(|e| panic!("import: {e}"));
    let Run::Done(summary) = run else {
        panic!("held")
    };
    drop(tx);
    let mut progress = Vec::new();
    while let Some(line) = rx.recv().await {
        progress.push(line);
    }
    let report = csv_rows(&std::fs::read_to_string(&results).unwrap_or_else(|e| panic!("{e}")));
    Imported {
        summary,
        progress,
        report,
    }
}

const HEADER: &str = "Username,New username,First name,Surname,Email address,Department\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_to_a_taken_name_is_reported_under_the_rows_own_username() {
    let fake = platform_fake::spawn(Default::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (domain, client) = tenant(&fake, &settings());
    for name in ["ada", "alan"] {
        fake.insert_user(
            &domain,
            FakeUser::new(name)
                .with_field("forename", name)
                .with_field("surname", "X"),
        );
    }
    let csv = format!("{HEADER}ada,alan,Ada,Lovelace,ada@example.org,Sales\n");
    let got = import(&client, &csv, ImportOptions::default(), 2).await;
    let row = &got.report[1];
    assert_eq!(row[0], "2");
    assert_eq!(row[1], "ada", "the row's own username, not the taken one");
    assert_eq!(row[3], "failed");
    assert!(row[4].contains("alan"), "{row:?}");
    assert_eq!(got.summary.counts.failed, 1);
    assert_eq!(
        fake.user(&domain, "alan")
            .map(|u| u.profile["surname"].clone()),
        Some("X".to_owned()),
        "the other user is untouched"
    );
    assert!(
        !got.progress.is_empty(),
        "the validation line was sent: {:?}",
        got.progress
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successful_rename_names_the_row_and_says_the_new_name() {
    let fake = platform_fake::spawn(Default::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (domain, client) = tenant(&fake, &settings());
    fake.insert_user(
        &domain,
        FakeUser::new("ada")
            .with_field("forename", "Ada")
            .with_field("surname", "L"),
    );
    let csv = format!("{HEADER}ada,ada.l,Ada,Lovelace,ada@example.org,Sales\n");
    let got = import(&client, &csv, ImportOptions::default(), 2).await;
    let row = &got.report[1];
    assert_eq!((row[1].as_str(), row[3].as_str()), ("ada", "updated"));
    assert!(row[4].contains("renamed to \"ada.l\""), "{row:?}");
    assert!(fake.user(&domain, "ada.l").is_some());
}

fn demo_file() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/demo/user-import.csv");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_file_has_one_invalid_count_from_validation_to_the_report() {
    let fake = platform_fake::spawn(Default::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (domain, client) = tenant(&fake, &settings());
    // Edsger exists and is active: his row's `Deactivated` is a deactivation by Account state.
    fake.insert_user(
        &domain,
        FakeUser::new("edsger.dijkstra")
            .with_field("forename", "Edsger")
            .with_field("surname", "Dijkstra"),
    );
    let got = import(&client, &demo_file(), ImportOptions::default(), 4).await;
    let c = &got.summary.counts;
    let in_report = |result: &str| got.report.iter().filter(|r| r[3] == result).count() as u64;
    assert_eq!(c.invalid, 2, "{c:?}");
    assert_eq!(in_report("invalid"), c.invalid);
    assert!(
        got.progress
            .iter()
            .any(|p| p.contains("validated 8 rows: 2 invalid")),
        "the validation line counts what the end counts: {:?}",
        got.progress
    );
    // "A new user needs Surname" is known only after GetUser: failed, not invalid.
    assert_eq!(c.failed, 1);
    assert_eq!(in_report("failed"), 1);
    assert_eq!((c.deactivated_by_state, c.deactivated), (1, 0), "{c:?}");
    assert_eq!(in_report("deactivated"), 1);
    assert_eq!(in_report("updated"), c.updated);
    assert_eq!(
        c.rows,
        c.created + c.updated + c.unchanged + c.deactivated_by_state + c.invalid + c.failed,
        "every row counted once: {c:?}"
    );
    assert_eq!(
        fake.user(&domain, "edsger.dijkstra").map(|u| u.state),
        Some("Deactivated".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_usernames_are_counted_invalid_by_validation() {
    let fake = platform_fake::spawn(Default::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (_, client) = tenant(&fake, &settings());
    let csv = format!(
        "{HEADER}ada,,Ada,L,a@x.org,Sales\nADA,,Ada,L,a@x.org,Sales\nbob,ada,Bob,B,b@x.org,Sales\nAda.B,ada.b,Ada,B,ab@x.org,Sales\ncy,,Cy,C,c@x.org,Sales\n"
    );
    let got = import(&client, &csv, ImportOptions::default(), 2).await;
    let c = &got.summary.counts;
    // ada ×2 and bob→ada: 3 rows; a case-only rename (Ada.B → ada.b) is no duplicate.
    assert_eq!((c.invalid, c.created), (3, 2), "{c:?}");
    assert!(
        got.progress
            .iter()
            .any(|p| p.contains("validated 5 rows: 3 invalid (3 of them for a username")),
        "{:?}",
        got.progress
    );
}
