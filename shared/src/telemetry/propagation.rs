//! The W3C trace context across the queue: the scheduler's producer span goes into the job
//! message's `traceparent` header ([`traceparent`]), and the worker's consumer span continues
//! that trace ([`continue_trace`]). Retries and dead letters copy the delivery's headers, so a
//! retried job stays in its trace. [`trace_id`] puts the id on a span for the logs.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::amqp::HEADER_TRACEPARENT;

/// The `traceparent` of `span` (`00-<trace id>-<span id>-<flags>`); `None` when the span is not
/// traced (no OpenTelemetry layer, or filtered out).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove(HEADER_TRACEPARENT)
}

/// Makes `span` a child of the remote span named by `traceparent`. Must be called before the span
/// is first entered; an absent or malformed header leaves the span a root of its own trace.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(tp) = traceparent else {
        return;
    };
    let carrier = HashMap::from([(HEADER_TRACEPARENT.to_owned(), tp.to_owned())]);
    let parent = TraceContextPropagator::new().extract(&carrier);
    if !parent.span().span_context().is_valid() {
        tracing::debug!("ignoring a malformed traceparent header");
        return;
    }
    if let Err(e) = span.set_parent(parent) {
        tracing::debug!(error = %e, "cannot continue the trace of the message");
    }
}

/// The trace id of `span` in hex, or `None` when it is not traced. Starts the span's
/// OpenTelemetry context, so the parent must be set before (see [`continue_trace`]).
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_without_telemetry_has_no_trace_context() {
        let span = tracing::info_span!("x");
        assert_eq!(traceparent(&span), None);
        assert_eq!(trace_id(&span), None);
        continue_trace(&span, Some("garbage"));
        continue_trace(&span, None);
    }

    #[test]
    fn a_child_continues_the_trace_of_its_remote_parent() {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "t");
        let subscriber = tracing_subscriber::layer::SubscriberExt::with(
            tracing_subscriber::registry(),
            tracing_opentelemetry::layer().with_tracer(tracer),
        );
        tracing::subscriber::with_default(subscriber, || {
            let producer = tracing::info_span!("publish");
            let tp = traceparent(&producer).unwrap_or_else(|| panic!("no traceparent"));
            let parts: Vec<&str> = tp.split('-').collect();
            assert_eq!(parts.len(), 4, "{tp}");
            assert_eq!(parts[0], "00");
            assert_eq!(parts[3], "01", "sampled");

            let consumer = tracing::info_span!("process");
            continue_trace(&consumer, Some(&tp));
            assert_eq!(trace_id(&consumer).as_deref(), Some(parts[1]));
            let child = consumer.in_scope(|| tracing::info_span!("job"));
            assert_eq!(trace_id(&child).as_deref(), Some(parts[1]));
            let other = tracing::info_span!("another");
            assert_ne!(trace_id(&other).as_deref(), Some(parts[1]));
        });
    }
}
