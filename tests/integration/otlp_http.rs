//! OTLP over HTTP/protobuf, the specification's default protocol: the real `scheduler once` and
//! `worker run` processes, given only `OTEL_EXPORTER_OTLP_ENDPOINT` (no protocol variable), post
//! their spans to `<endpoint>/v1/traces` of a receiver in this test process (axum on port 0,
//! decoding `ExportTraceServiceRequest` with `opentelemetry-proto`), and the job's trace arrives
//! whole: tick → publish → process → job → fetch, hash, import, report.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;

use harness::binaries::scheduler_binary;
use harness::fixtures::HEADER;
use harness::fleet_env::{FleetEnv, FleetOptions};

/// One received span: what the tree is checked with.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    attributes: HashMap<String, String>,
}

#[derive(Debug, Default)]
struct Receiver {
    spans: Mutex<Vec<Received>>,
    /// Content types of the requests, to show they were protobuf.
    content_types: Mutex<Vec<String>>,
}

impl Receiver {
    fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

async fn traces(
    receiver: Arc<Receiver>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, [(&'static str, &'static str); 1], Vec<u8>) {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    receiver
        .content_types
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(content_type);
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (
            StatusCode::BAD_REQUEST,
            [("content-type", "text/plain")],
            b"not an ExportTraceServiceRequest".to_vec(),
        );
    };
    let mut got = Vec::new();
    for rs in request.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .map(|kv| any_value(kv.value.as_ref()))
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for span in ss.spans {
                got.push(Received {
                    service: service.clone(),
                    name: span.name,
                    trace_id: span.trace_id,
                    span_id: span.span_id,
                    parent_span_id: span.parent_span_id,
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), any_value(kv.value.as_ref())))
                        .collect(),
                });
            }
        }
    }
    receiver
        .spans
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .extend(got);
    (
        StatusCode::OK,
        [("content-type", "application/x-protobuf")],
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

fn any_value(v: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    match v.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

/// The receiver on 127.0.0.1, port 0; returns its base URL (`http://127.0.0.1:PORT`).
async fn start_receiver(receiver: Arc<Receiver>) -> String {
    let app = Router::new().route(
        "/v1/traces",
        post(move |headers: HeaderMap, body: Bytes| traces(receiver.clone(), headers, body)),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("cannot bind the OTLP/HTTP receiver: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

fn one<'a>(spans: &'a [Received], what: &str, pred: impl Fn(&Received) -> bool) -> &'a Received {
    let found: Vec<&Received> = spans.iter().filter(|s| pred(s)).collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {what} span, got {}: {:#?}",
        found.len(),
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_exported_over_otlp_http_protobuf_arrives_as_one_whole_span_tree() {
    let receiver = Arc::new(Receiver::default());
    let endpoint = start_receiver(receiver.clone()).await;

    let env = FleetEnv::new(FleetOptions {
        tenants: 1,
        ..FleetOptions::default()
    })
    .await;
    env.accounts[0].put(
        "uploads/user-import.csv",
        format!("{HEADER}\notlp001,First,Last,otlp001@example.org,Sales,,\n").as_bytes(),
    );
    // No OTEL_EXPORTER_OTLP_PROTOCOL: http/protobuf is the default; the generic endpoint is a
    // base URL, to which the exporter's configuration appends /v1/traces.
    let otel = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())];
    let worker_log = env.dir.path().join("worker.log");
    let mut worker = env.spawn_worker_process_with(&otel, &worker_log);
    let out = env
        .command(scheduler_binary(), &["once"], &otel)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run the scheduler: {e}"));
    assert!(
        out.status.success(),
        "scheduler once failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The worker's spans leave in its next batch (5 s) once the job is done; the `report` stage
    // is the last of the job's spans to end.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while !receiver.spans().iter().any(|s| s.name == "report") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no report span received over OTLP/HTTP; got {:?}\nworker log:\n{}",
            receiver
                .spans()
                .iter()
                .map(|s| s.name.clone())
                .collect::<Vec<_>>(),
            std::fs::read_to_string(&worker_log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = worker.start_kill();

    let spans = receiver.spans();
    let tick = one(&spans, "tick", |s| s.name == "tick");
    assert_eq!(tick.service, "user-import-scheduler");
    assert!(tick.parent_span_id.is_empty(), "the tick is the root");
    let trace: Vec<Received> = spans
        .iter()
        .filter(|s| s.trace_id == tick.trace_id)
        .cloned()
        .collect();
    let child_of = |parent: &Received, name_prefix: &str| -> Received {
        one(&trace, name_prefix, |s| {
            s.parent_span_id == parent.span_id && s.name.starts_with(name_prefix)
        })
        .clone()
    };
    let publish = child_of(tick, "publish ");
    assert_eq!(publish.service, "user-import-scheduler");
    assert_eq!(
        publish
            .attributes
            .get("messaging.system")
            .map(String::as_str),
        Some("rabbitmq")
    );
    let process = child_of(&publish, "process ");
    assert_eq!(process.service, "user-import-worker");
    let job = child_of(&process, "job");
    assert_eq!(
        job.attributes.get("outcome").map(String::as_str),
        Some("imported"),
        "{:?}",
        job.attributes
    );
    for stage in ["fetch", "hash", "import", "report"] {
        let s = child_of(&job, stage);
        assert_eq!(s.service, "user-import-worker", "{stage}");
    }
    let content_types = receiver
        .content_types
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    assert!(
        !content_types.is_empty() && content_types.iter().all(|c| c == "application/x-protobuf"),
        "{content_types:?}"
    );
    env.cleanup().await;
}
