//! Logs and traces for both binaries, set up once by `main` with [`init`]:
//! - logs to stderr (stdout is kept for machine-readable results), human-readable text or one JSON
//!   object per line; the level comes from `RUST_LOG` (default `info`);
//! - spans to OpenTelemetry through `tracing-opentelemetry`, exported over OTLP/gRPC when the
//!   standard `OTEL_*` variables ask for it ([`otel`]); trace ids are made and propagated through
//!   the AMQP headers ([`propagation`]) even when nothing is exported, so logs still correlate.
//!
//! Secrets: the FTP library logs every control command, `PASS <api key>` included, at `trace`;
//! the AMQP client dumps every frame at `trace`, the connection's `StartOk` with the broker
//! password as a byte list (`response: LongString([0, 103, …])`) included. Whatever `RUST_LOG` says
//! (a global level, a `lapin=trace` or a span directive), nothing below `info` of the libraries that
//! speak a protocol carrying credentials ([`CAPPED_AT_INFO`]: FTP, AMQP, SMTP, Redis) reaches a log
//! line or a span. Only this project's spans are exported, and nothing of the exporter's own gRPC
//! stack is fed back into it.

pub mod otel;
pub mod propagation;

use std::collections::HashMap;

use tracing::Level;
use tracing_subscriber::filter::{EnvFilter, FilterExt, LevelFilter, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

pub use otel::{OtelConfig, TelemetryError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The crates whose spans are exported: the trace of a job is this project's spans (libraries'
/// events inside them are kept as span events, at the `RUST_LOG` level; their own spans, such as a
/// broker connection's I/O loop, would be traces of their own and are left out).
const TRACED_CRATES: &[&str] = &["worker", "scheduler", "shared"];

/// Libraries that see credentials on the wire and log what they send below `info`: held at `info`
/// whatever `RUST_LOG` asks (`amq_protocol*` are the AMQP client's codec crates, each its own
/// target; `lettre` and `redis` log their commands, `AUTH` included, when their logging is on).
const CAPPED_AT_INFO: &[&str] = &[
    "suppaftp",
    "lapin",
    "amq_protocol",
    "amq_protocol_tcp",
    "amq_protocol_types",
    "amq_protocol_uri",
    "tcp_stream",
    "lettre",
    "redis",
];

/// Targets whose events never reach the span exporter: the exporter's own gRPC/HTTP stack (an
/// event of its own export would be exported in turn) and the SDK itself.
const NOT_TRACED: &[&str] = &[
    "h2",
    "hyper",
    "hyper_util",
    "tonic",
    "tower",
    "opentelemetry",
    "opentelemetry_sdk",
    "opentelemetry_otlp",
];

/// What [`init`] set up; [`Telemetry::shutdown`] flushes the spans not yet exported. Call it at
/// the end of `main`, on a thread that is not a runtime worker, while the Tokio runtime is still
/// alive (the gRPC channel runs on it).
#[derive(Debug)]
pub struct Telemetry {
    provider: opentelemetry_sdk::trace::SdkTracerProvider,
}

impl Telemetry {
    /// Exports what is left and stops the exporter (bounded: 5 s).
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "flushing the remaining spans failed");
        }
    }
}

/// Installs the global subscriber: logs (filtered by `RUST_LOG`) and spans (the same filter; this
/// project's spans only, no event of the exporter's own stack). `env` is the process environment
/// (`RUST_LOG`, `OTEL_*`); `service` the default `service.name`. Must run inside a Tokio runtime
/// when exporting.
pub fn init(
    service: &str,
    format: LogFormat,
    env: &HashMap<String, String>,
) -> Result<Telemetry, TelemetryError> {
    let config = OtelConfig::from_env(env, service)?;
    let provider = config.provider()?;
    let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "user-import");

    // A second call (tests) keeps the first subscriber.
    let _ = subscriber(format, env, tracer).try_init();
    tracing::info!(
        service = config.service_name,
        otlp_endpoint = config.endpoint().unwrap_or("none (export off)"),
        "traces"
    );
    Ok(Telemetry { provider })
}

/// The subscriber [`init`] installs: logs and this project's spans, both under `RUST_LOG`.
fn subscriber(
    format: LogFormat,
    env: &HashMap<String, String>,
    tracer: opentelemetry_sdk::trace::Tracer,
) -> impl tracing::Subscriber + Send + Sync {
    let logs = match format {
        LogFormat::Text => fmt::layer().with_writer(std::io::stderr).boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .boxed(),
    }
    .with_filter(level_filter(env).and(never_below_info()));
    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(
            level_filter(env).and(never_below_info()).and(
                filter_fn(|meta| {
                    let of = |targets: &[&str]| {
                        targets.iter().any(|t| is_target_or_child(meta.target(), t))
                    };
                    if meta.is_span() {
                        of(TRACED_CRATES)
                    } else {
                        !of(NOT_TRACED)
                    }
                })
                .with_max_level_hint(LevelFilter::TRACE),
            ),
        );
    tracing_subscriber::registry().with(logs).with(spans)
}

/// Marks `span` as failed, the OpenTelemetry way: status `ERROR` with `message`, and `error.type`
/// = `kind` (a short machine-readable reason). The span must declare `otel.status_code`,
/// `otel.status_description` and `error.type` (as `tracing::field::Empty`). `message` must hold
/// no secret (error types here never quote one).
pub fn record_error(span: &tracing::Span, kind: &str, message: &str) {
    span.record("otel.status_code", "ERROR");
    span.record("otel.status_description", message);
    span.record("error.type", kind);
}

/// `RUST_LOG`, or `info`.
fn level_filter(env: &HashMap<String, String>) -> EnvFilter {
    env.get("RUST_LOG")
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new("info"))
}

/// A filter no `RUST_LOG` directive can widen: the [`CAPPED_AT_INFO`] targets and their modules
/// only at `info` and above.
fn never_below_info()
-> tracing_subscriber::filter::FilterFn<impl Fn(&tracing::Metadata<'_>) -> bool> {
    // The hint keeps `RUST_LOG`'s as the subscriber's maximum level: without it, every disabled
    // `trace!` of a hot path would be asked about one by one.
    filter_fn(|meta| passes_caps(meta.target(), *meta.level()))
        .with_max_level_hint(LevelFilter::TRACE)
}

/// Whether an event of `target` at `level` passes every [`CAPPED_AT_INFO`] floor.
fn passes_caps(target: &str, level: Level) -> bool {
    CAPPED_AT_INFO
        .iter()
        .all(|capped| allowed(target, level, capped))
}

/// Whether an event of `target` at `level` passes the `info` floor set for `capped`.
fn allowed(target: &str, level: Level, capped: &str) -> bool {
    !is_target_or_child(target, capped) || level <= Level::INFO
}

fn is_target_or_child(target: &str, of: &str) -> bool {
    target
        .strip_prefix(of)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_match_by_crate_and_module_only() {
        assert!(is_target_or_child("suppaftp", "suppaftp"));
        assert!(is_target_or_child(
            "suppaftp::async_ftp::tokio_ftp::control",
            "suppaftp"
        ));
        assert!(!is_target_or_child("suppaftpx", "suppaftp"));
        assert!(!is_target_or_child("worker::ftps", "suppaftp"));
    }

    #[test]
    fn the_level_of_rust_log_stays_the_subscribers_maximum() {
        // Hot paths (one `trace!` per API call) then cost one comparison when disabled.
        // The subscriber's own hint, not `LevelFilter::current()`: that one is process-wide and
        // moves with the scoped subscribers other tests install meanwhile.
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "test");
        for (rust_log, expected) in [
            ("info", LevelFilter::INFO),
            ("warn", LevelFilter::WARN),
            ("debug", LevelFilter::DEBUG),
        ] {
            let env = HashMap::from([("RUST_LOG".to_owned(), rust_log.to_owned())]);
            for format in [LogFormat::Json, LogFormat::Text] {
                let subscriber = subscriber(format, &env, tracer.clone());
                assert_eq!(
                    tracing::Subscriber::max_level_hint(&subscriber),
                    Some(expected),
                    "RUST_LOG={rust_log}"
                );
            }
        }
    }

    #[test]
    fn the_ftp_library_is_held_at_info_whatever_the_level() {
        let control = "suppaftp::async_ftp::tokio_ftp::control";
        assert!(!allowed(control, Level::TRACE, "suppaftp"));
        assert!(!allowed("suppaftp", Level::DEBUG, "suppaftp"));
        assert!(allowed("suppaftp", Level::INFO, "suppaftp"));
        assert!(allowed("suppaftp", Level::WARN, "suppaftp"));
        assert!(allowed("worker::ftps", Level::TRACE, "suppaftp"));
    }

    #[test]
    fn the_amqp_smtp_and_redis_clients_are_held_at_info_whatever_the_level() {
        let held = [
            "lapin::channels",
            "lapin",
            "amq_protocol::frame",
            "amq_protocol_tcp",
            "amq_protocol_types::types",
            "lettre::transport::smtp::client::async_connection",
            "redis::aio",
            "suppaftp::async_ftp",
        ];
        for target in held {
            assert!(!passes_caps(target, Level::TRACE), "{target} at trace");
            assert!(!passes_caps(target, Level::DEBUG), "{target} at debug");
            assert!(passes_caps(target, Level::INFO), "{target} at info");
            assert!(passes_caps(target, Level::WARN), "{target} at warn");
        }
        assert!(passes_caps("worker::fleet", Level::TRACE));
        assert!(passes_caps("lapinx", Level::TRACE));
    }
}
