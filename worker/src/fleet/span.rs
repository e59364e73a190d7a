//! The span of one delivery: `process <queue>`, a consumer span after the OpenTelemetry messaging
//! conventions for RabbitMQ. It continues the trace of the message's `traceparent` header (the
//! scheduler's producer span), so one job is one trace from the tick to the last stage; the job's
//! span (`pipeline`) is its child. How the delivery was settled is recorded on it at the end.

use lapin::message::Delivery;
use shared::amqp::{HEADER_TRACEPARENT, Topology, header_str};
use shared::telemetry;
use tracing::field::Empty;

use super::disposition::Disposition;

/// The span of `delivery`, to instrument its handling with; created before it is entered (the
/// remote parent can only be set then).
pub fn consumer_span(topo: &Topology, delivery: &Delivery) -> tracing::Span {
    let name = format!("process {}", topo.queue);
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|m| m.as_str())
        .unwrap_or_default();
    let span = tracing::info_span!(
        "process",
        otel.name = name.as_str(),
        otel.kind = "consumer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = delivery.exchange.as_str(),
        messaging.rabbitmq.destination.routing_key = delivery.routing_key.as_str(),
        messaging.destination.subscription.name = topo.queue.as_str(),
        messaging.message.id = message_id,
        messaging.message.body.size = delivery.data.len(),
        messaging.rabbitmq.message.delivery_tag = delivery.delivery_tag,
        tenant = Empty,
        job_id = Empty,
        attempt = Empty,
        disposition = Empty,
        reason = Empty,
        trace_id = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
        error.type = Empty,
    );
    telemetry::propagation::continue_trace(
        &span,
        header_str(&delivery.properties, HEADER_TRACEPARENT).as_deref(),
    );
    if let Some(id) = telemetry::propagation::trace_id(&span) {
        span.record("trace_id", id);
    }
    span
}

/// Records the disposition and its reason; a dead letter, or a retry of a failed job, marks the
/// span as failed (a busy tenant's wait does not).
pub fn record_settled(span: &tracing::Span, disposition: &Disposition) {
    let (label, reason) = (disposition.label(), disposition.reason());
    span.record("disposition", label);
    span.record("reason", reason);
    if disposition.is_failure() {
        telemetry::record_error(span, reason, &format!("{label}: {reason}"));
    }
}
