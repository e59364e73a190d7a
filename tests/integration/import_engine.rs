//! The import engine on its own (no FTPS, no queue) against the platform fake over HTTP: the
//! names and counts its results carry, and what it costs the API per row.

use std::path::Path;
use std::time::Duration;

use platform_fake::{FakeHandle, FakeUser, Faults};
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
    let store =
        worker::import::store::ImportStore::from_settings(&shared::settings::RedisSettings {
            url: shared::secret::Secret::default(),
            key_prefix: "engine".into(),
        })
        .unwrap_or_else(|e| panic!("{e}"));
    import_with(client, csv, options, concurrency, store, "ie").await
}

/// A store on the test stack's Redis, under a key prefix of its own.
pub(crate) fn redis_store() -> worker::import::store::ImportStore {
    worker::import::store::ImportStore::from_settings(&shared::settings::RedisSettings {
        url: shared::secret::Secret::new(harness::redis_url()),
        key_prefix: harness::unique("engine"),
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Imports `csv` for tenant `tenant` of `store`.
pub(crate) async fn import_with(
    client: &PlatformClient,
    csv: &str,
    options: ImportOptions,
    concurrency: usize,
    store: worker::import::store::ImportStore,
    tenant: &str,
) -> Imported {
    let params = ImportParams {
        options,
        concurrency,
        max_rows: 100_000,
        progress_every: 100_000,
        max_record_bytes: Settings::default().import.max_record_bytes,
        verify: false,
        confirmed: false,
        force_full: false,
        tenant: tenant.to_owned(),
        admin: "admin".into(),
        store,
        journal: None,
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

fn fake_config(faults: Faults) -> platform_fake::FakeConfig {
    platform_fake::FakeConfig {
        faults,
        ..Default::default()
    }
}

fn seed(fake: &FakeHandle, domain: &str, name: &str, department: &str) {
    fake.insert_user(
        domain,
        FakeUser::new(name)
            .with_field("forename", "F")
            .with_field("surname", "S")
            .with_field("mail", format!("{name}@x.org"))
            .with_field("department", department),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_answered_final_needs_no_status_poll_and_a_pending_one_is_polled() {
    let fake = platform_fake::spawn(fake_config(Faults {
        final_status_in_answer: true,
        ..Faults::default()
    }))
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let (domain, client) = tenant(&fake, &settings());
    seed(&fake, &domain, "same", "Sales");
    seed(&fake, &domain, "moved", "Sales");
    let csv = format!(
        "{HEADER}same,,F,S,same@x.org,Sales\nmoved,,F,S,moved@x.org,HR\nfresh,,F,S,fresh@x.org,HR\n"
    );
    fake.reset_calls();
    let got = import(&client, &csv, ImportOptions::default(), 2).await;
    let c = &got.summary.counts;
    assert_eq!((c.unchanged, c.updated, c.created), (1, 1, 1), "{c:?}");
    let calls = fake.calls(&domain);
    // Unchanged 1 (GetUser), changed 2, new 2 (GetUser 404 + create); no poll at all.
    assert_eq!(
        (
            calls.get("GetUser"),
            calls.get("SetUser"),
            calls.get("status")
        ),
        (3, 2, 0),
        "{calls:?}"
    );

    // Pending answers are polled, and only after a wait: one poll each when the write is final
    // by then.
    fake.set_faults(Faults {
        final_status_in_answer: true,
        status_delay_ms: 5,
        ..Faults::default()
    });
    let csv = format!("{HEADER}fresh2,,F,S,f2@x.org,HR\nfresh3,,F,S,f3@x.org,HR\n");
    fake.reset_calls();
    let got = import(&client, &csv, ImportOptions::default(), 2).await;
    assert_eq!(got.summary.counts.created, 2);
    assert_eq!(
        fake.calls(&domain).get("status"),
        2,
        "{:?}",
        fake.calls(&domain)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_the_store_never_saw_is_created_without_a_read_and_a_409_falls_back_to_update() {
    let fake = platform_fake::spawn(fake_config(Faults {
        final_status_in_answer: true,
        ..Faults::default()
    }))
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let (domain, client) = tenant(&fake, &settings());
    // On the platform, but never written by the fleet: the guess is wrong for this one.
    seed(&fake, &domain, "old", "Sales");
    let mut csv = HEADER.to_owned();
    for i in 0..10 {
        csv.push_str(&format!("new{i},,F,S,n{i}@x.org,HR\n"));
    }
    csv.push_str("old,,F,S,old@x.org,HR\n");
    let options = ImportOptions {
        skip_unchanged: true,
        ..ImportOptions::default()
    };
    let store = redis_store();
    fake.reset_calls();
    // Concurrency 1: at most 4 rows in flight, all within the first guesses a run allows (more
    // in flight take the read path until guesses prove right).
    let got = import_with(&client, &csv, options.clone(), 1, store.clone(), "t").await;
    let c = &got.summary.counts;
    assert_eq!((c.created, c.updated), (10, 1), "{c:?}");
    let calls = fake.calls(&domain);
    // 10 new: one create each. old: create (409), GetUser, update.
    assert_eq!(
        (
            calls.get("GetUser"),
            calls.get("SetUser"),
            calls.create_conflicts
        ),
        (1, 12, 1),
        "{calls:?}"
    );
    assert_eq!(
        fake.user(&domain, "old")
            .map(|u| u.profile["department"].clone()),
        Some("HR".to_owned()),
        "the 409 went the update path"
    );

    // The same users changed: now known to the store, so read first, never a blind create.
    let csv = csv.replace(",HR\n", ",Sales\n");
    fake.reset_calls();
    let got = import_with(&client, &csv, options, 2, store, "t").await;
    assert_eq!(got.summary.counts.updated, 11);
    let calls = fake.calls(&domain);
    assert_eq!(
        (
            calls.get("GetUser"),
            calls.get("SetUser"),
            calls.create_conflicts
        ),
        (11, 11, 0),
        "{calls:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarded_run_reads_each_user_once_the_plan_and_the_import_share_the_read() {
    let fake = platform_fake::spawn(fake_config(Faults {
        final_status_in_answer: true,
        ..Faults::default()
    }))
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let (domain, client) = tenant(&fake, &settings());
    for i in 0..10 {
        seed(&fake, &domain, &format!("u{i}"), "Sales");
    }
    let mut csv = HEADER.to_owned();
    for i in 0..10 {
        let dept = if i < 5 { "HR" } else { "Sales" };
        csv.push_str(&format!("u{i},,F,S,u{i}@x.org,{dept}\n"));
    }
    for i in 0..3 {
        csv.push_str(&format!("n{i},,F,S,n{i}@x.org,HR\n"));
    }
    // The plan runs (13 valid rows > 2) but does not hold (5 of 10 updated, 100 % allowed).
    let mut options = ImportOptions::default();
    options.mass_change_guard.max_update_count = 2;
    options.mass_change_guard.max_update_percent = 100;
    fake.reset_calls();
    let got = import(&client, &csv, options, 4).await;
    assert!(
        got.progress.iter().any(|p| p.contains("mass-change guard")),
        "the plan ran: {:?}",
        got.progress
    );
    let c = &got.summary.counts;
    assert_eq!((c.updated, c.unchanged, c.created), (5, 5, 3), "{c:?}");
    let calls = fake.calls(&domain);
    assert_eq!(
        (calls.get("GetUser"), calls.get("SetUser")),
        (13, 8),
        "one read per row for plan and import together: {calls:?}"
    );
    assert_eq!(
        fake.user(&domain, "u0")
            .map(|u| u.profile["department"].clone()),
        Some("HR".to_owned())
    );
}
