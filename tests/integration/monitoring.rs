//! The monitoring kit against the real binaries: every metric name that an alert rule
//! (`deploy/monitoring/rules/`) or a dashboard panel (`deploy/monitoring/dashboards/`) uses is in
//! the `/metrics` of a `worker run` and a `scheduler run` that have just handled a job, except
//! RabbitMQ's own exporter's names (listed below and in `deploy/monitoring/README.md`).
//! `scripts/monitoring-check.sh` runs this test after `promtool check rules` / `test rules`.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use harness::binaries::scheduler_binary;
use harness::fixtures::HEADER;
use harness::fleet_env::{FleetEnv, FleetOptions};

/// RabbitMQ's exporter (rabbitmq_prometheus, per-object metrics): the only names not ours.
const RABBITMQ_EXPORTER: [&str; 3] = [
    "rabbitmq_queue_messages_ready",
    "rabbitmq_queue_messages_unacked",
    "rabbitmq_queue_consumers",
];

fn kit_file(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/monitoring")
        .join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `worker_*`, `scheduler_*` and `rabbitmq_*` word of `text` (expressions, and the
/// comments, which name only real metrics too).
fn metric_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| {
            ["worker_", "scheduler_", "rabbitmq_"]
                .iter()
                .any(|p| w.starts_with(p) && w.len() > p.len())
        })
        .map(str::to_owned)
        .collect()
}

/// The sample names a `/metrics` body exposes, from its `# TYPE` lines (OpenMetrics: a counter
/// `x` has samples `x_total`, a histogram `x_bucket`, `x_sum`, `x_count`).
fn exposed_names(body: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in body.lines() {
        let mut words = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            match kind {
                "counter" => {
                    names.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
                _ => {
                    names.insert(name.to_owned());
                }
            }
        }
    }
    names
}

async fn wait_for_addr(log: &Path, message: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(addr) = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l["message"] == message)
            .and_then(|l| l["addr"].as_str().map(str::to_owned))
        {
            return addr;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no log line {message:?} in {}:\n{text}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn scrape(addr: &str) -> String {
    let resp = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap_or_else(|e| panic!("scraping {addr}: {e}"));
    assert!(resp.status().is_success(), "{}", resp.status());
    resp.text().await.unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_metric_a_rule_or_a_dashboard_panel_names_is_served_by_the_worker_or_the_scheduler() {
    let mut used = metric_names(&kit_file("rules/user-import.rules.yaml"));
    used.extend(metric_names(&kit_file("dashboards/user-import-fleet.json")));
    assert!(
        used.len() > 10 && used.contains("worker_tenant_last_success_timestamp_seconds"),
        "too few names read from the kit: {used:?}"
    );

    // One tenant with a file; `scheduler run` publishes the every-minute tick just passed at
    // start (catch-up) and the worker imports it: the families that only appear with a sample
    // (jobs by disposition, the tenant's last success) are then there.
    let env = FleetEnv::new(FleetOptions {
        tenants: 1,
        schedule: Some("* * * * *"),
        ..FleetOptions::default()
    })
    .await;
    env.accounts[0].put(
        "uploads/user-import.csv",
        format!("{HEADER}\nmon001,First,Last,mon001@example.org,Sales,,\n").as_bytes(),
    );
    let worker_log = env.dir.path().join("worker.log");
    let _worker =
        env.spawn_worker_process_with(&[("USER_IMPORT__LOG_FORMAT", "json")], &worker_log);
    let scheduler_log = env.dir.path().join("scheduler.log");
    let _scheduler = env
        .command(
            scheduler_binary(),
            &["run"],
            &[("USER_IMPORT__LOG_FORMAT", "json")],
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(
            std::fs::File::create(&scheduler_log).unwrap_or_else(|e| panic!("{e}")),
        ))
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start the scheduler: {e}"));
    let worker_addr = wait_for_addr(&worker_log, "health, readiness and metrics served").await;
    let scheduler_addr =
        wait_for_addr(&scheduler_log, "health, readiness and metrics listening").await;

    let tenant_series = format!(
        "worker_tenant_last_success_timestamp_seconds{{tenant=\"{}\"}}",
        env.tenant(0)
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let worker_metrics = loop {
        let m = scrape(&worker_addr).await;
        if m.contains(&tenant_series) {
            break m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the tenant's job did not succeed:\n{m}\nworker log:\n{}",
            std::fs::read_to_string(&worker_log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let scheduler_metrics = scrape(&scheduler_addr).await;
    assert!(
        worker_metrics.contains("worker_ready 1\n"),
        "{worker_metrics}"
    );
    assert!(
        scheduler_metrics.contains("scheduler_ready 1\n"),
        "{scheduler_metrics}"
    );

    let mut exposed = exposed_names(&worker_metrics);
    exposed.extend(exposed_names(&scheduler_metrics));
    exposed.extend(RABBITMQ_EXPORTER.iter().map(|s| (*s).to_owned()));
    let missing: Vec<&String> = used.difference(&exposed).collect();
    assert!(
        missing.is_empty(),
        "named by a rule or a panel but served by neither binary: {missing:?}\nexposed: {exposed:?}"
    );
    env.cleanup().await;
}
