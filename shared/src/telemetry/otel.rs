//! Where spans go, from the standard OpenTelemetry variables (read from the environment map `main`
//! passes in):
//!
//! | variable | effect |
//! |---|---|
//! | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` | the collector's traces URL, used as it is (`http://host:4318/v1/traces`, or `http://host:4317` for gRPC) |
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | else: the collector's base URL; over HTTP `/v1/traces` is appended, as the specification says. Neither set: nothing is exported |
//! | `OTEL_TRACES_EXPORTER` | `otlp` (default) or `none` (export off) |
//! | `OTEL_SDK_DISABLED` | `true`: export off |
//! | `OTEL_SERVICE_NAME` | `service.name` (default: the binary's, `user-import-worker` / `user-import-scheduler`) |
//! | `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, else `OTEL_EXPORTER_OTLP_PROTOCOL` | `http/protobuf` (the default, as the specification's) or `grpc`; `http/json` and anything else are refused at start-up |
//!
//! The SDK and the exporter read the rest themselves from the process environment:
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`,
//! `OTEL_BSP_*` (batching: spans leave every 5 s, and at shutdown).
//!
//! Over gRPC there is no TLS (tonic's would be a second stack; a collector is reached on the pod
//! network or as a sidecar), so an `https://` gRPC endpoint is refused with a clear message. Over
//! HTTP the client is reqwest with the binaries' one TLS stack (rustls, aws-lc-rs), so `https://`
//! is accepted.

use std::collections::HashMap;

use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;

/// A telemetry setting that cannot work; `main` exits with it at start-up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("{var}={value:?}: {why}")]
    Config {
        var: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(String),
}

/// How spans travel to the collector (`OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// `grpc`: OTLP/gRPC, usually port 4317.
    Grpc,
    /// `http/protobuf`: OTLP/HTTP with protobuf bodies, usually port 4318; the specification's
    /// default.
    HttpProtobuf,
}

/// The export settings of one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtelConfig {
    pub service_name: String,
    pub protocol: OtlpProtocol,
    /// `None`: spans are made (trace ids in logs and messages) but not exported. Over HTTP, the
    /// full traces URL.
    endpoint: Option<String>,
}

const TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
const TRACES_EXPORTER: &str = "OTEL_TRACES_EXPORTER";
const SDK_DISABLED: &str = "OTEL_SDK_DISABLED";
const SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
const TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
const PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";

impl OtelConfig {
    pub fn from_env(
        env: &HashMap<String, String>,
        default_service: &str,
    ) -> Result<Self, TelemetryError> {
        let get = |var: &str| {
            env.get(var)
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        let service_name = get(SERVICE_NAME).unwrap_or_else(|| default_service.to_owned());
        let mut protocol = OtlpProtocol::HttpProtobuf;
        for var in [TRACES_PROTOCOL, PROTOCOL] {
            if let Some(p) = get(var) {
                protocol = match p.as_str() {
                    "grpc" => OtlpProtocol::Grpc,
                    "http/protobuf" => OtlpProtocol::HttpProtobuf,
                    _ => {
                        return Err(config_error(
                            env,
                            var,
                            "`http/protobuf` (the default) and `grpc` are built in",
                        ));
                    }
                };
                break;
            }
        }
        let off = Self {
            service_name: service_name.clone(),
            protocol,
            endpoint: None,
        };
        if get(SDK_DISABLED).is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(off);
        }
        match get(TRACES_EXPORTER)
            .map(|v| v.to_ascii_lowercase())
            .as_deref()
        {
            None | Some("otlp") => {}
            Some("none") => return Ok(off),
            Some(_) => {
                return Err(config_error(
                    env,
                    TRACES_EXPORTER,
                    "only `otlp` and `none` are supported",
                ));
            }
        }
        let Some((var, endpoint)) = get(TRACES_ENDPOINT)
            .map(|e| (TRACES_ENDPOINT, e))
            .or_else(|| get(ENDPOINT).map(|e| (ENDPOINT, e)))
        else {
            return Ok(off);
        };
        let endpoint = match protocol {
            OtlpProtocol::Grpc if !endpoint.starts_with("http://") => {
                return Err(config_error(
                    env,
                    var,
                    "a gRPC endpoint must be plain, `http://host:4317` (the gRPC exporter has no \
                     TLS; use http/protobuf for https)",
                ));
            }
            OtlpProtocol::Grpc => endpoint,
            OtlpProtocol::HttpProtobuf
                if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) =>
            {
                return Err(config_error(
                    env,
                    var,
                    "the endpoint must be a URL, `http://host:4318` or `https://…`",
                ));
            }
            // The generic variable is a base URL: the signal's path is appended (the OTLP
            // exporter specification); the traces variable is the whole URL.
            OtlpProtocol::HttpProtobuf if var == ENDPOINT => {
                format!("{}/v1/traces", endpoint.trim_end_matches('/'))
            }
            OtlpProtocol::HttpProtobuf => endpoint,
        };
        Ok(Self {
            service_name,
            protocol,
            endpoint: Some(endpoint),
        })
    }

    /// The collector spans are exported to, if any.
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    /// The tracer provider: a batch exporter to the endpoint, or none. Must run inside a Tokio
    /// runtime when exporting over gRPC (the channel is spawned on it).
    pub fn provider(&self) -> Result<SdkTracerProvider, TelemetryError> {
        let resource = Resource::builder()
            .with_service_name(self.service_name.clone())
            .build();
        let builder = SdkTracerProvider::builder().with_resource(resource);
        let Some(endpoint) = &self.endpoint else {
            return Ok(builder.build());
        };
        let exporter = match self.protocol {
            OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build(),
            // Set, not left to the exporter's own reading of the environment: the map `main`
            // passed in is what decides.
            OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(endpoint.clone())
                .build(),
        }
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        Ok(builder.with_batch_exporter(exporter).build())
    }
}

fn config_error(
    env: &HashMap<String, String>,
    var: &'static str,
    why: &'static str,
) -> TelemetryError {
    TelemetryError::Config {
        var,
        value: env.get(var).cloned().unwrap_or_default(),
        why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<OtelConfig, TelemetryError> {
        let env = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        OtelConfig::from_env(&env, "user-import-worker")
    }

    #[test]
    fn export_is_off_without_an_endpoint_or_when_turned_off() {
        let c = config(&[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.endpoint(), None);
        assert_eq!(c.service_name, "user-import-worker");
        for off in [
            (TRACES_EXPORTER, "none"),
            (SDK_DISABLED, "true"),
            (ENDPOINT, " "),
        ] {
            let c = config(&[(ENDPOINT, "http://collector:4317"), off])
                .unwrap_or_else(|e| panic!("{e}"));
            let c = if off.0 == ENDPOINT {
                config(&[off]).unwrap_or_else(|e| panic!("{e}"))
            } else {
                c
            };
            assert_eq!(c.endpoint(), None, "{off:?}");
        }
    }

    #[test]
    fn the_traces_endpoint_wins_over_the_generic_one() {
        let c = config(&[
            (ENDPOINT, "http://generic:4317"),
            (TRACES_ENDPOINT, "http://traces:4317"),
            (SERVICE_NAME, "worker-eu"),
            (TRACES_EXPORTER, "otlp"),
            (PROTOCOL, "grpc"),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.endpoint(), Some("http://traces:4317"));
        assert_eq!(c.service_name, "worker-eu");
        let c = config(&[(ENDPOINT, "http://generic:4317"), (PROTOCOL, "grpc")])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.endpoint(), Some("http://generic:4317"));
    }

    #[test]
    fn http_protobuf_is_the_default_and_the_generic_endpoint_gets_the_traces_path() {
        let c = config(&[(ENDPOINT, "http://collector:4318/")]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(c.endpoint(), Some("http://collector:4318/v1/traces"));
        let c = config(&[
            (ENDPOINT, "http://generic:4318"),
            (TRACES_ENDPOINT, "https://traces.example/otlp/v1/traces"),
            (PROTOCOL, "http/protobuf"),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.endpoint(), Some("https://traces.example/otlp/v1/traces"));
    }

    #[test]
    fn grpc_is_chosen_by_the_protocol_variable_and_its_endpoint_is_used_as_is() {
        let c = config(&[(ENDPOINT, "http://collector:4317"), (PROTOCOL, "grpc")])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.protocol, OtlpProtocol::Grpc);
        assert_eq!(c.endpoint(), Some("http://collector:4317"));
        // The traces variable wins over the generic one.
        let c = config(&[
            (ENDPOINT, "http://collector:4317"),
            (PROTOCOL, "grpc"),
            (TRACES_PROTOCOL, "http/protobuf"),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.protocol, OtlpProtocol::HttpProtobuf);
    }

    #[test]
    fn what_is_not_built_in_is_refused_by_name() {
        for (pairs, var) in [
            (vec![(TRACES_EXPORTER, "zipkin")], TRACES_EXPORTER),
            (
                vec![(ENDPOINT, "http://c:4318"), (PROTOCOL, "http/json")],
                PROTOCOL,
            ),
            (
                vec![(TRACES_ENDPOINT, "https://c:4317"), (PROTOCOL, "grpc")],
                TRACES_ENDPOINT,
            ),
            (vec![(ENDPOINT, "c:4317")], ENDPOINT),
            (vec![(ENDPOINT, "c:4317"), (PROTOCOL, "grpc")], ENDPOINT),
        ] {
            match config(&pairs) {
                Err(TelemetryError::Config { var: v, .. }) => assert_eq!(v, var, "{pairs:?}"),
                other => panic!("{pairs:?}: {other:?}"),
            }
        }
    }
}
