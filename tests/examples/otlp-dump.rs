//! `otlp-dump`: a tiny OTLP/gRPC receiver for looking at the fleet's traces locally, where no
//! OpenTelemetry Collector or Jaeger is at hand (`fake-opentelemetry-collector`, on a free port).
//!
//! ```text
//! cargo run -p tests --example otlp-dump            # prints the endpoint to export
//! OTEL_EXPORTER_OTLP_PROTOCOL=grpc OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:PORT scheduler --config … once
//! ```
//!
//! Each span is printed when it arrives (one line: trace, span, parent, kind, name, duration,
//! attributes); once a trace has been quiet for 10 s it is printed again as a tree. `--json`
//! prints every span as one JSON object per line instead.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fake_opentelemetry_collector::{ExportedSpan, FakeCollectorServer};

const QUIET: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() {
    let json = std::env::args().any(|a| a == "--json");
    let mut server = match FakeCollectorServer::start().await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot start the receiver: {e}");
            std::process::exit(1);
        }
    };
    eprintln!(
        "otlp-dump: receiving OTLP/gRPC; in another shell:\n  export OTEL_EXPORTER_OTLP_PROTOCOL=grpc OTEL_EXPORTER_OTLP_ENDPOINT={}",
        server.endpoint()
    );
    let mut traces: BTreeMap<String, (Instant, Vec<ExportedSpan>)> = BTreeMap::new();
    loop {
        for span in server.exported_spans(1, Duration::from_millis(500)).await {
            if json {
                println!("{}", serde_json::to_string(&span).unwrap_or_default());
                continue;
            }
            println!("{}", line(&span));
            let entry = traces
                .entry(span.trace_id.clone())
                .or_insert_with(|| (Instant::now(), Vec::new()));
            entry.0 = Instant::now();
            entry.1.push(span);
        }
        let quiet: Vec<String> = traces
            .iter()
            .filter(|(_, (last, _))| last.elapsed() >= QUIET)
            .map(|(id, _)| id.clone())
            .collect();
        for id in quiet {
            if let Some((_, spans)) = traces.remove(&id) {
                print_tree(&id, &spans);
            }
        }
    }
}

fn line(s: &ExportedSpan) -> String {
    let attrs: Vec<String> = s
        .attributes
        .iter()
        .filter(|(k, _)| !k.starts_with("code.") && !k.starts_with("thread.") && *k != "target")
        .map(|(k, v)| format!("{k}={}", value(v)))
        .collect();
    format!(
        "trace={} span={} parent={} {} {:?} {:.1} ms {}",
        &s.trace_id[..8.min(s.trace_id.len())],
        s.span_id,
        if s.parent_span_id.is_empty() {
            "-"
        } else {
            &s.parent_span_id
        },
        s.kind.trim_start_matches("SPAN_KIND_").to_lowercase(),
        s.name,
        duration_ms(s),
        attrs.join(" ")
    )
}

fn print_tree(trace: &str, spans: &[ExportedSpan]) {
    println!("── trace {trace} ({} spans)", spans.len());
    let mut sorted: Vec<&ExportedSpan> = spans.iter().collect();
    sorted.sort_by_key(|s| s.start_time_unix_nano);
    let roots = sorted
        .iter()
        .filter(|s| !spans.iter().any(|p| p.span_id == s.parent_span_id));
    for root in roots {
        print_node(root, &sorted, 0);
    }
}

fn print_node(s: &ExportedSpan, all: &[&ExportedSpan], depth: usize) {
    let status = match &s.status {
        Some(st) if st.code == "STATUS_CODE_ERROR" => format!("  ERROR {}", st.message),
        _ => String::new(),
    };
    println!(
        "{}{} ({:.1} ms){status}",
        "   ".repeat(depth + 1),
        s.name,
        duration_ms(s)
    );
    for child in all.iter().filter(|c| c.parent_span_id == s.span_id) {
        print_node(child, all, depth + 1);
    }
}

fn duration_ms(s: &ExportedSpan) -> f64 {
    s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano) as f64 / 1e6
}

/// `Some(AnyValue { value: Some(StringValue("x")) })` → `x`.
fn value(debug: &str) -> String {
    for kind in ["StringValue(", "IntValue(", "BoolValue(", "DoubleValue("] {
        if let Some(i) = debug.find(kind) {
            let rest = &debug[i + kind.len()..];
            if let Some(end) = rest.rfind(')') {
                let inner = rest[..end].trim_end_matches([')', ' ', '}']);
                return inner.trim_matches('"').to_owned();
            }
        }
    }
    debug.to_owned()
}
