//! Traces, metrics and logs of the real binaries: `scheduler once` / `scheduler run` and
//! `worker run` run as processes against the real broker, Redis, FTPS, SMTP sink and platform fake,
//! exporting their spans over OTLP/gRPC to a collector in this test process
//! (`fake-opentelemetry-collector` on port 0). What they export, log, serve on `/metrics`, write to
//! the tenant's account and email is what is checked.
//!
//! Spans reach the collector in batches every 5 s and at shutdown: a `scheduler once` ends long
//! before a batch, so its spans arriving at all shows the flush on shutdown (the worker is stopped
//! with SIGTERM before its spans are read, for the same reason).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use fake_opentelemetry_collector::{ExportedSpan, FakeCollectorServer};
use serde_json::Value;
use tokio::process::Child;

use harness::binaries::scheduler_binary;
use harness::fixtures::{self, users_csv};
use harness::fleet_env::{FleetEnv, FleetOptions};

const ROWS: usize = 4;

/// The collector, drained continuously (its channel holds 64 spans; an exporter blocks on a full
/// one).
struct Collector {
    endpoint: String,
    spans: Arc<Mutex<Vec<ExportedSpan>>>,
    drain: tokio::task::JoinHandle<()>,
}

impl Collector {
    async fn start() -> Self {
        let mut server = FakeCollectorServer::start()
            .await
            .unwrap_or_else(|e| panic!("cannot start the OTLP collector: {e}"));
        let endpoint = server.endpoint();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let sink = spans.clone();
        let drain = tokio::spawn(async move {
            loop {
                let got = server.exported_spans(1, Duration::from_millis(100)).await;
                sink.lock().unwrap_or_else(|p| p.into_inner()).extend(got);
            }
        });
        Self {
            endpoint,
            spans,
            drain,
        }
    }

    fn spans(&self) -> Vec<ExportedSpan> {
        self.spans.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until `pred` holds for the spans received so far.
    async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[ExportedSpan]) -> bool,
    ) -> Vec<ExportedSpan> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if pred(&spans) {
                return spans;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; spans: {:#?}",
                spans
                    .iter()
                    .map(|s| (&s.name, &s.trace_id))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.drain.abort();
    }
}

/// One tenant with a file of `ROWS` users, a collector, and a `worker run` process with JSON logs,
/// exporting its spans to the collector when `export`.
struct Observed {
    env: FleetEnv,
    collector: Collector,
    worker: Child,
    worker_log: PathBuf,
    rust_log: String,
}

impl Observed {
    async fn start(opts: FleetOptions, rust_log: &str, export: bool) -> Self {
        let env = FleetEnv::new(FleetOptions { tenants: 1, ..opts }).await;
        env.accounts[0].put("uploads/user-import.csv", users_csv("obs", ROWS).as_bytes());
        let collector = Collector::start().await;
        let worker_log = env.dir.path().join("worker.log");
        let mut vars = vec![("RUST_LOG", rust_log), ("USER_IMPORT__LOG_FORMAT", "json")];
        if export {
            vars.push(("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.endpoint));
            vars.push(("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"));
        }
        let worker = env.spawn_worker_process_with(&vars, &worker_log);
        Self {
            env,
            collector,
            worker,
            worker_log,
            rust_log: rust_log.to_owned(),
        }
    }

    /// Runs `scheduler once` (exporting to the collector); returns its JSON report and stderr.
    async fn scheduler_once(&self) -> (Value, String) {
        let out = self
            .env
            .command(
                scheduler_binary(),
                &["once"],
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", &self.collector.endpoint),
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                    ("RUST_LOG", &self.rust_log),
                    ("USER_IMPORT__LOG_FORMAT", "json"),
                ],
            )
            .output()
            .await
            .unwrap_or_else(|e| panic!("cannot run the scheduler: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "scheduler once failed: {stdout}\n{}",
            tail(&stderr)
        );
        let report: Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("scheduler once printed no JSON ({e}): {stdout}"));
        assert_eq!(
            report["published"].as_array().map(Vec::len),
            Some(1),
            "{report}"
        );
        (report, stderr)
    }

    /// The worker's `/metrics` address, from its start-up log line.
    async fn metrics_addr(&self) -> String {
        wait_for_log_field(
            &self.worker_log,
            "health, readiness and metrics served",
            "addr",
        )
        .await
    }

    /// SIGTERM, then the exit status (the drain and the final span flush happen before it).
    async fn stop_worker(&mut self) {
        sigterm(&self.worker);
        let status = tokio::time::timeout(Duration::from_secs(60), self.worker.wait())
            .await
            .unwrap_or_else(|_| panic!("the worker did not exit after SIGTERM"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            status.success(),
            "worker exit: {status}; log:\n{}",
            tail(&self.log())
        );
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.worker_log).unwrap_or_default()
    }

    fn queue(&self) -> String {
        self.env.topology().queue
    }
}

fn sigterm(child: &Child) {
    let pid = child
        .id()
        .unwrap_or_else(|| panic!("the process already exited"));
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap_or_else(|e| panic!("kill: {e}"));
    assert!(status.success(), "kill -TERM {pid} failed");
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The JSON log lines of a file (other lines skipped).
fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

/// Waits for the JSON log line with `message` in `log` and returns its string field `field`.
async fn wait_for_log_field(log: &Path, message: &str, field: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(v) = json_lines(&text)
            .into_iter()
            .find(|l| l["message"] == message)
            .and_then(|l| l[field].as_str().map(str::to_owned))
        {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no log line {message:?} in {}:\n{}",
            log.display(),
            tail(&text)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn scrape(addr: &str) -> String {
    let resp = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap_or_else(|e| panic!("scraping {addr}: {e}"));
    assert!(resp.status().is_success(), "{}", resp.status());
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    resp.text().await.unwrap_or_else(|e| panic!("{e}"))
}

/// The value of a sample line `name{labels} value` (exact name and labels), if present.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// An attribute's value as text. The collector keeps values in their `Debug` form
/// (`Some(AnyValue { value: Some(StringValue("x")) })`).
fn attr(span: &ExportedSpan, key: &str) -> Option<String> {
    let raw = span.attributes.get(key)?;
    if let Some(i) = raw.find("StringValue(\"") {
        let rest = &raw[i + "StringValue(\"".len()..];
        return rest.rfind("\")").map(|end| rest[..end].to_owned());
    }
    for kind in ["IntValue(", "BoolValue(", "DoubleValue("] {
        if let Some(i) = raw.find(kind) {
            let rest = &raw[i + kind.len()..];
            return rest.find(')').map(|end| rest[..end].to_owned());
        }
    }
    None
}

fn one<'a>(
    spans: &'a [ExportedSpan],
    what: &str,
    pred: impl Fn(&ExportedSpan) -> bool,
) -> &'a ExportedSpan {
    let found: Vec<&ExportedSpan> = spans.iter().filter(|s| pred(s)).collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {what} span, got {}: {found:#?}",
        found.len()
    );
    found[0]
}

fn assert_attrs(span: &ExportedSpan, expected: &[(&str, &str)]) {
    for (k, v) in expected {
        assert_eq!(
            attr(span, k).as_deref(),
            Some(*v),
            "{} attribute {k}: {:#?}",
            span.name,
            span.attributes
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_is_one_trace_from_the_scheduler_tick_through_the_queue_to_every_pipeline_stage() {
    let mut obs = Observed::start(FleetOptions::default(), "info,worker=trace", true).await;
    let (report, _) = obs.scheduler_once().await;
    let published = &report["published"][0];
    let job_id = published["job_id"].as_str().unwrap_or_default().to_owned();
    let message_id = published["message_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let queue = obs.queue();
    let process_name = format!("process {queue}");
    obs.collector
        .wait_for("the worker's process span", Duration::from_secs(90), |s| {
            s.iter().any(|s| s.name == process_name)
        })
        .await;
    obs.stop_worker().await;
    let spans = obs.collector.spans();
    let env = &obs.env;
    let tenant = env.tenant(0);

    // The scheduler: a poll span (a trace of its own), a tick span per tenant (the job's root,
    // linked to the poll), a producer span per publish.
    let poll = one(&spans, "poll", |s| s.name == "poll");
    assert_attrs(poll, &[("mode", "once"), ("published", "1")]);
    let tick = one(&spans, "tick", |s| s.name == "tick");
    let trace = tick.trace_id.clone();
    assert_ne!(poll.trace_id, trace, "a job's trace is its own");
    assert_eq!(
        tick.parent_span_id, "",
        "the tick is the root of the job's trace"
    );
    assert!(
        tick.links.iter().any(|l| l.span_id == poll.span_id),
        "the tick links to its poll: {:#?}",
        tick.links
    );
    assert_attrs(
        tick,
        &[
            ("tenant", tenant),
            ("outcome", "published"),
            ("job_id", &job_id),
            ("trace_id", &trace),
        ],
    );
    let publish_name = format!("publish {}", env.exchange);
    let publish = one(&spans, "publish", |s| s.name == publish_name);
    assert_eq!(publish.kind, "SPAN_KIND_PRODUCER");
    assert_eq!(publish.trace_id, trace);
    assert_eq!(publish.parent_span_id, tick.span_id);
    assert_attrs(
        publish,
        &[
            ("messaging.system", "rabbitmq"),
            ("messaging.operation.type", "send"),
            ("messaging.operation.name", "publish"),
            ("messaging.destination.name", &env.exchange),
            ("messaging.rabbitmq.destination.routing_key", "eu"),
            ("messaging.message.id", &message_id),
            ("tenant", tenant),
            ("job_id", &job_id),
        ],
    );

    // The worker: a consumer span continuing the publish span's trace through the traceparent
    // header, the job's span under it, the stages under that.
    let process = one(&spans, "process", |s| s.name == process_name);
    assert_eq!(process.kind, "SPAN_KIND_CONSUMER");
    assert_eq!(process.trace_id, trace, "the worker continues the trace");
    assert_eq!(process.parent_span_id, publish.span_id);
    assert_attrs(
        process,
        &[
            ("messaging.system", "rabbitmq"),
            ("messaging.operation.type", "process"),
            ("messaging.operation.name", "process"),
            ("messaging.destination.name", &env.exchange),
            ("messaging.rabbitmq.destination.routing_key", "eu"),
            ("messaging.destination.subscription.name", &queue),
            ("messaging.message.id", &message_id),
            ("tenant", tenant),
            ("job_id", &job_id),
            ("attempt", "0"),
            ("disposition", "imported"),
            ("reason", "imported"),
        ],
    );
    let rows = ROWS.to_string();
    let job = one(&spans, "job", |s| s.name == "job");
    assert_eq!(job.trace_id, trace);
    assert_eq!(job.parent_span_id, process.span_id);
    assert_attrs(
        job,
        &[
            ("tenant", tenant),
            ("job_id", &job_id),
            ("trace_id", &trace),
            ("outcome", "imported"),
            ("rows.total", &rows),
            ("rows.created", &rows),
            ("rows.updated", "0"),
            ("rows.invalid", "0"),
            ("rows.failed", "0"),
        ],
    );
    let mut starts = Vec::new();
    for stage in ["fetch", "hash", "import", "report"] {
        let s = one(&spans, stage, |s| s.name == stage);
        assert_eq!(s.trace_id, trace, "{stage}");
        assert_eq!(
            s.parent_span_id, job.span_id,
            "{stage} is a child of the job"
        );
        assert!(
            s.status
                .as_ref()
                .is_none_or(|st| st.code == "STATUS_CODE_UNSET"),
            "{stage}: {:?}",
            s.status
        );
        starts.push(s.start_time_unix_nano);
    }
    assert!(starts.windows(2).all(|w| w[0] <= w[1]), "stages in order");
    let import = one(&spans, "import", |s| s.name == "import");
    let requests: u64 = attr(import, "api.requests")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(requests >= ROWS as u64, "{:#?}", import.attributes);
    // API calls are events of the import span (at `trace`): the call, the status and the attempt.
    let calls: Vec<_> = import
        .events
        .iter()
        .filter(|e| e.name == "api call")
        .collect();
    assert!(!calls.is_empty(), "{:#?}", import.events);
    for e in &calls {
        let keys: Vec<&str> = e
            .attributes
            .keys()
            .map(String::as_str)
            .filter(|k| !k.starts_with("code.") && !["level", "target"].contains(k))
            .collect();
        assert_eq!(keys, ["attempt", "call", "status"], "{e:#?}");
    }
    assert_eq!(
        fetch_file_size(&spans),
        Some(users_csv("obs", ROWS).len().to_string())
    );

    // The JSON logs: every line inside the job carries its trace id (on the job's span, listed
    // in `spans`, or in `span` for a line logged with the job as its explicit parent).
    let lines = json_lines(&obs.log());
    let in_job: Vec<(&Value, &Value)> = lines
        .iter()
        .filter_map(|l| job_span_of(l).map(|s| (l, s)))
        .collect();
    assert!(
        in_job.iter().any(|(l, _)| l["message"] == "job finished"),
        "{}",
        tail(&obs.log())
    );
    assert!(
        in_job
            .iter()
            .any(|(l, _)| l["span"]["name"] == "import" && l["message"] == "api call"),
        "log lines from inside the stages too"
    );
    for (l, job_span) in &in_job {
        assert_eq!(job_span["trace_id"], trace.as_str(), "{l}");
    }
    env.cleanup().await;
}

/// The `job` span of a JSON log line, if the line was logged inside one.
fn job_span_of(line: &Value) -> Option<&Value> {
    line["spans"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(std::iter::once(&line["span"]))
        .find(|s| s["name"] == "job")
}

fn fetch_file_size(spans: &[ExportedSpan]) -> Option<String> {
    spans
        .iter()
        .find(|s| s.name == "fetch")
        .and_then(|s| attr(s, "file.size"))
}

/// A tenant key that is easy to find in any form: with characters that URL-encoding changes, and
/// a random core.
fn canary_key() -> (String, String) {
    let core = format!("{:016x}", rand::random::<u64>());
    (format!("canary+K3y/{core}="), core)
}

/// Every form in which the key could leak: as is, its random core (catches truncated or escaped
/// copies), URL-encoded, and base64 (alone, and as HTTP Basic credentials `domain:key`).
fn secret_forms(key: &str, core: &str, domain: &str) -> Vec<(&'static str, String)> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let url_encoded: String = key
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    vec![
        ("the key", key.to_owned()),
        ("the key's random core", core.to_owned()),
        ("the key URL-encoded", url_encoded),
        ("the key in base64", b64.encode(key)),
        (
            "the Basic credentials in base64",
            b64.encode(format!("{domain}:{key}")),
        ),
    ]
}

fn leaks(forms: &[(&'static str, String)], text: &str) -> Vec<&'static str> {
    forms
        .iter()
        .filter(|(_, f)| text.contains(f.as_str()))
        .map(|(what, _)| *what)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_secret_reaches_logs_spans_metrics_reports_or_email_even_at_trace_level() {
    let (key, core) = canary_key();
    // The most verbose level there is, plus directives that try to open the FTP library (which
    // traces `PASS <key>`) by name and by span.
    let mut obs = Observed::start(
        FleetOptions {
            password: Some(key.clone()),
            ..FleetOptions::default()
        },
        "trace,suppaftp=trace,[job]=trace",
        true,
    )
    .await;
    let env = &obs.env;
    let domain = env.domain(0);
    let forms = secret_forms(&key, &core, &domain);
    // The scanner finds every form (a scan that cannot fail proves nothing).
    for (what, form) in &forms {
        assert!(
            leaks(&forms, &format!("..{form}..")).contains(what),
            "{what}"
        );
    }
    let basic = format!(
        "Authorization: Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{domain}:{key}"))
    );
    assert!(leaks(&forms, &basic).contains(&"the Basic credentials in base64"));

    let (report, scheduler_stderr) = obs.scheduler_once().await;
    let queue = obs.queue();
    let process_name = format!("process {queue}");
    obs.collector
        .wait_for("the worker's process span", Duration::from_secs(90), |s| {
            s.iter().any(|s| s.name == process_name)
        })
        .await;
    let admin = format!("admin@{}.example.com", env.tenant(0));
    let mails = harness::smtp()
        .await
        .wait_for_messages(&admin, 1, Duration::from_secs(30))
        .await;
    let metrics = scrape(&obs.metrics_addr().await).await;
    obs.stop_worker().await;
    let spans = obs.collector.spans();
    let env = &obs.env;

    // What is scanned, each checked not to be empty of what would carry the key if it leaked.
    let worker_log = obs.log();
    assert!(
        worker_log.contains("\"level\":\"TRACE\""),
        "the worker logged at trace"
    );
    assert!(
        json_lines(&worker_log).iter().any(|l| l["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("hyper") || t.starts_with("reqwest"))),
        "the HTTP client's own logs were on"
    );
    assert!(
        worker_log.contains("\"message\":\"api call\""),
        "API calls were logged"
    );
    assert!(
        spans.iter().any(|s| s.name == "import"),
        "the job's spans were exported"
    );
    let spans_text = serde_json::to_string(&spans).unwrap_or_default();
    assert!(metrics.contains("worker_api_requests_total"));
    let reports: Vec<String> = env.accounts[0]
        .list("reports")
        .into_iter()
        .filter(|n| n.ends_with(".csv"))
        .collect();
    assert_eq!(reports.len(), 1, "{reports:?}");
    let report_csv = String::from_utf8_lossy(
        &env.accounts[0]
            .read(&format!("reports/{}", reports[0]))
            .unwrap_or_default(),
    )
    .into_owned();
    assert!(report_csv.lines().count() > ROWS, "{report_csv}");
    let tenant_log = fixtures::tenant_log(&env.accounts[0]);
    assert!(tenant_log.contains("end: imported"), "{tenant_log}");
    let mail = &mails[0];
    assert!(!mail.attachments.is_empty(), "the report is attached");

    let mut found = Vec::new();
    let mut scan = |source: &str, text: &str| {
        for what in leaks(&forms, text) {
            found.push(format!("{what} in {source}"));
        }
    };
    scan("the worker's stderr", &worker_log);
    scan("the scheduler's stderr", &scheduler_stderr);
    scan("the scheduler's stdout", &report.to_string());
    scan("the exported spans", &spans_text);
    scan("/metrics", &metrics);
    scan("the /reports CSV", &report_csv);
    scan("the tenant log", &tenant_log);
    scan("the email as sent", &mail.raw);
    scan("the email's subject", &mail.subject);
    scan("the email's body", &mail.body_text);
    for (name, zipped) in &mail.attachments {
        let (_, bytes) = harness::fixtures::unzip_one(zipped);
        scan(
            &format!("the email attachment {name}"),
            &String::from_utf8_lossy(&bytes),
        );
    }
    assert!(found.is_empty(), "the tenant's key leaked: {found:#?}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_of_both_binaries_count_the_job_its_rows_stages_and_publishes() {
    // Export off (no endpoint): the metrics do not depend on tracing. An every-minute schedule:
    // `scheduler run` publishes the tick just passed at start (catch-up).
    let mut obs = Observed::start(
        FleetOptions {
            schedule: Some("* * * * *"),
            ..FleetOptions::default()
        },
        "info",
        false,
    )
    .await;
    let env = &obs.env;
    let scheduler_log = env.dir.path().join("scheduler.log");
    let mut scheduler = env
        .command(
            scheduler_binary(),
            &["run"],
            &[("RUST_LOG", "info"), ("USER_IMPORT__LOG_FORMAT", "json")],
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(
            std::fs::File::create(&scheduler_log).unwrap_or_else(|e| panic!("{e}")),
        ))
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start the scheduler: {e}"));
    let scheduler_addr = wait_for_log_field(
        &scheduler_log,
        "health, readiness and metrics listening",
        "addr",
    )
    .await;
    let worker_addr = obs.metrics_addr().await;

    let imported = "worker_jobs_total{disposition=\"imported\",reason=\"imported\"}";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let worker_metrics = loop {
        let m = scrape(&worker_addr).await;
        if sample(&m, imported).is_some() {
            break m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no imported job counted:\n{m}\nworker log:\n{}",
            tail(&obs.log())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        sample(&worker_metrics, imported),
        Some(1.0),
        "{worker_metrics}"
    );
    assert_eq!(
        sample(&worker_metrics, "worker_rows_total{result=\"created\"}"),
        Some(ROWS as f64),
        "{worker_metrics}"
    );
    assert_eq!(
        sample(&worker_metrics, "worker_rows_total{result=\"failed\"}"),
        Some(0.0)
    );
    for stage in ["fetch", "hash", "import", "report"] {
        let count = sample(
            &worker_metrics,
            &format!("worker_stage_duration_seconds_count{{stage=\"{stage}\"}}"),
        );
        assert!(count.is_some_and(|c| c >= 1.0), "{stage}: {worker_metrics}");
        let inf = sample(
            &worker_metrics,
            &format!("worker_stage_duration_seconds_bucket{{le=\"+Inf\",stage=\"{stage}\"}}"),
        );
        assert_eq!(inf, count, "{stage}");
    }
    assert!(
        sample(&worker_metrics, "worker_api_requests_total").is_some_and(|n| n >= ROWS as f64),
        "{worker_metrics}"
    );
    for series in [
        "worker_api_rate_limited_total",
        "worker_api_server_errors_total",
        "worker_consumer_reconnects_total",
    ] {
        assert_eq!(sample(&worker_metrics, series), Some(0.0), "{series}");
    }

    let scheduler_metrics = scrape(&scheduler_addr).await;
    assert!(
        sample(&scheduler_metrics, "scheduler_ticks_published_total").is_some_and(|n| n >= 1.0),
        "{scheduler_metrics}"
    );
    assert!(
        sample(&scheduler_metrics, "scheduler_polls_total").is_some_and(|n| n >= 1.0),
        "{scheduler_metrics}"
    );
    assert_eq!(
        sample(&scheduler_metrics, "scheduler_tick_failures_total"),
        Some(0.0)
    );

    sigterm(&scheduler);
    let status = tokio::time::timeout(Duration::from_secs(30), scheduler.wait())
        .await
        .unwrap_or_else(|_| panic!("the scheduler did not exit after SIGTERM"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "scheduler exit: {status}");
    obs.stop_worker().await;
    obs.env.cleanup().await;
}

/// The levels that open every library's own logging, AMQP frames and Redis and SMTP commands
/// included, by name.
const EVERYTHING: &str =
    "trace,lapin=trace,amq_protocol=trace,amq_protocol_types=trace,redis=trace,lettre=trace";

/// Every form a credential takes on the wire or in a `Debug` dump: as is, as the byte list of a
/// frame (`[0, 99, …]`, with and without spaces), hex, base64 alone and as `AUTH PLAIN`'s
/// `\0user\0password`.
fn credential_forms(user: &str, secret: &str) -> Vec<(String, String)> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let bytes = |sep: &str| {
        secret
            .bytes()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(sep)
    };
    let plain = format!("\0{user}\0{secret}");
    vec![
        ("text", secret.to_owned()),
        ("a byte list", bytes(", ")),
        ("a compact byte list", bytes(",")),
        ("hex", hex::encode(secret)),
        ("upper-case hex", hex::encode_upper(secret)),
        ("base64", b64.encode(secret)),
        ("base64 of AUTH PLAIN", b64.encode(plain.as_bytes())),
    ]
    .into_iter()
    .map(|(what, form)| (format!("{secret} as {what}"), form))
    .collect()
}

/// A RabbitMQ user of the test's own on the machine's broker (full rights on `/`), deleted after.
struct BrokerUser(String);

impl BrokerUser {
    fn add(user: &str, password: &str) -> Self {
        let ctl = |args: &[&str]| {
            let out = std::process::Command::new("rabbitmqctl")
                .args(args)
                .output()
                .unwrap_or_else(|e| panic!("rabbitmqctl must be installed: {e}"));
            assert!(
                out.status.success(),
                "rabbitmqctl {}: {}",
                args[0],
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ctl(&["add_user", user, password]);
        let added = Self(user.to_owned());
        ctl(&["set_permissions", "-p", "/", user, ".*", ".*", ".*"]);
        added
    }
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_user", &self.0])
            .output();
    }
}

/// A Redis ACL user of the test's own on the machine's Redis, deleted after.
struct RedisUser(String);

impl RedisUser {
    fn add(user: &str, password: &str) -> Self {
        let mut conn = redis::Client::open(harness::redis_url())
            .and_then(|c| c.get_connection())
            .unwrap_or_else(|e| panic!("{e}"));
        let _: () = redis::cmd("ACL")
            .arg(
                &[
                    "SETUSER",
                    user,
                    "on",
                    &format!(">{password}"),
                    "~*",
                    "&*",
                    "+@all",
                ][..],
            )
            .query(&mut conn)
            .unwrap_or_else(|e| panic!("ACL SETUSER: {e}"));
        Self(user.to_owned())
    }

    /// Whether a client is connected as this user now.
    fn connected(&self) -> bool {
        let list: String = redis::Client::open(harness::redis_url())
            .and_then(|c| c.get_connection())
            .and_then(|mut c| redis::cmd("CLIENT").arg("LIST").query(&mut c))
            .unwrap_or_default();
        list.contains(&format!("user={} ", self.0))
    }
}

impl Drop for RedisUser {
    fn drop(&mut self) {
        if let Ok(mut c) =
            redis::Client::open(harness::redis_url()).and_then(|c| c.get_connection())
        {
            let _: redis::RedisResult<i64> =
                redis::cmd("ACL").arg("DELUSER").arg(&self.0).query(&mut c);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_broker_redis_or_smtp_credential_reaches_any_output_at_trace_level_in_any_encoding() {
    let tag = format!("{:012x}", rand::random::<u64>() >> 16);
    let user = format!("canary-{tag}");
    let (amqp_pw, wrong_pw) = (format!("amqpCanary{tag}"), format!("wrongCanary{tag}"));
    let (redis_pw, smtp_pw) = (format!("redisCanary{tag}"), format!("smtpCanary{tag}"));
    let _broker_user = BrokerUser::add(&user, &amqp_pw);
    let redis_user = RedisUser::add(&user, &redis_pw);
    let env = FleetEnv::new(FleetOptions {
        tenants: 1,
        amqp_url: Some(format!("amqp://{user}:{amqp_pw}@127.0.0.1:5672/%2f")),
        redis_url: Some(format!("redis://{user}:{redis_pw}@127.0.0.1:6379/")),
        ..FleetOptions::default()
    })
    .await;
    env.accounts[0].put("uploads/user-import.csv", users_csv("obs", ROWS).as_bytes());
    let forms: Vec<(String, String)> = [&amqp_pw, &wrong_pw, &redis_pw, &smtp_pw]
        .into_iter()
        .flat_map(|pw| credential_forms(&user, pw))
        .collect();
    let found_in = |text: &str| -> Vec<String> {
        forms
            .iter()
            .filter(|(_, f)| text.contains(f.as_str()))
            .map(|(what, _)| what.clone())
            .collect()
    };
    // The scanner finds the AMQP frame's own dump of the PLAIN response (a scan that cannot fail
    // proves nothing).
    let frame_dump = format!(
        "response: LongString({:?})",
        format!("\0{user}\0{amqp_pw}").into_bytes()
    );
    assert!(!found_in(&frame_dump).is_empty(), "{frame_dump}");

    // A worker and a scheduler with the right credentials, one job end to end.
    let worker_log = env.dir.path().join("worker.log");
    let smtp_vars = [
        ("RUST_LOG", EVERYTHING),
        ("USER_IMPORT__LOG_FORMAT", "json"),
        ("USER_IMPORT__SMTP__USERNAME", user.as_str()),
        ("USER_IMPORT__SMTP__PASSWORD", smtp_pw.as_str()),
    ];
    let mut worker = env.spawn_worker_process_with(&smtp_vars, &worker_log);
    let scheduler = env
        .command(scheduler_binary(), &["once"], &[("RUST_LOG", EVERYTHING)])
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run the scheduler: {e}"));
    assert!(
        scheduler.status.success(),
        "scheduler once: {}",
        tail(&String::from_utf8_lossy(&scheduler.stderr))
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while !String::from_utf8_lossy(
        &env.accounts[0]
            .read("log/user-import.log")
            .unwrap_or_default(),
    )
    .contains("end: ")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the job never ended; worker log:\n{}",
            tail(&std::fs::read_to_string(&worker_log).unwrap_or_default())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        redis_user.connected(),
        "the worker is connected to Redis as the canary user"
    );
    let connections = std::process::Command::new("rabbitmqctl")
        .args(["list_connections", "user"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    assert!(
        connections.lines().any(|l| l.trim() == user),
        "the worker is connected to the broker as the canary user: {connections}"
    );
    sigterm(&worker);
    let _ = tokio::time::timeout(Duration::from_secs(60), worker.wait()).await;

    // The same binaries with a wrong broker password.
    let wrong_url = format!("amqp://{user}:{wrong_pw}@127.0.0.1:5672/%2f");
    let wrong = [
        ("RUST_LOG", EVERYTHING),
        ("USER_IMPORT__AMQP__URL", wrong_url.as_str()),
    ];
    let refused = env
        .command(scheduler_binary(), &["once"], &wrong)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run the scheduler: {e}"));
    assert!(!refused.status.success(), "a wrong password was accepted");
    let refused_log = env.dir.path().join("worker-refused.log");
    let mut refused_worker = env.spawn_worker_process_with(&wrong, &refused_log);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&refused_log)
        .unwrap_or_default()
        .contains("reconnecting")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker with a wrong password never tried the broker"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = refused_worker.start_kill();
    let _ = refused_worker.wait().await;

    let outputs = [
        (
            "the worker's logs",
            std::fs::read_to_string(&worker_log).unwrap_or_default(),
        ),
        (
            "the scheduler's stderr",
            String::from_utf8_lossy(&scheduler.stderr).into_owned(),
        ),
        (
            "the scheduler's stdout",
            String::from_utf8_lossy(&scheduler.stdout).into_owned(),
        ),
        (
            "the refused scheduler's stderr",
            String::from_utf8_lossy(&refused.stderr).into_owned(),
        ),
        (
            "the refused scheduler's stdout",
            String::from_utf8_lossy(&refused.stdout).into_owned(),
        ),
        (
            "the refused worker's logs",
            std::fs::read_to_string(&refused_log).unwrap_or_default(),
        ),
    ];
    assert!(
        outputs[0].1.contains("\"level\":\"TRACE\""),
        "the worker logged at trace"
    );
    let mut leaked = Vec::new();
    for (source, text) in &outputs {
        assert!(
            source.contains("stdout") || !text.is_empty(),
            "{source} is empty"
        );
        for what in found_in(text) {
            leaked.push(format!("{what} in {source}"));
        }
    }
    assert!(leaked.is_empty(), "credentials leaked: {leaked:#?}");
    env.cleanup().await;
}
