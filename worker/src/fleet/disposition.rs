//! What happens to a delivery, as a value ([`Disposition`]), and settling it: ack, retry later
//! through a delay queue, hand back to the queue, or dead-letter with a reason. A delivery is acked only after whatever
//! replaces it (a retry, a dead letter) was confirmed by the broker; if that publish fails, the
//! delivery is handed back instead, so nothing is lost.

use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use shared::amqp::{HEADER_ATTEMPT, HEADER_MESSAGE, HEADER_REASON, Topology, publish_confirmed};

/// How a delivery is settled, and why. Decided by the admission or after the job; carried out
/// by [`settle`]; observed through its [`label`](Disposition::label) and reason.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    /// The job reached a terminal outcome (its label): acked.
    Done(&'static str),
    /// A second delivery of a scheduled tick already run: acked.
    Duplicate,
    /// A fresh job whose tenant is busy with another: acked (the running one covers it).
    SkippedBusy,
    /// Back through a delay queue after `delay`, with these headers set; then acked. `failure`:
    /// the job failed (a busy tenant's wait is not a failure).
    RetryLater {
        delay: std::time::Duration,
        reason: &'static str,
        headers: Vec<(&'static str, AMQPValue)>,
        failure: bool,
    },
    /// Back to the queue now (shutdown, a dependency of the fleet unreachable).
    HandBack { reason: &'static str },
    /// To the dead-letter queue with its reason and message; then acked.
    DeadLetter {
        reason: &'static str,
        message: String,
    },
}

impl Disposition {
    /// The name observers see (`worker_jobs_total{disposition}`, the span, the fleet's events).
    pub fn label(&self) -> &'static str {
        match self {
            Disposition::Done(outcome) => outcome,
            Disposition::Duplicate => "duplicate",
            Disposition::SkippedBusy => "skipped-busy",
            Disposition::RetryLater { .. } => "retry-scheduled",
            Disposition::HandBack { .. } => "handed-back",
            Disposition::DeadLetter { .. } => "dead-lettered",
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            Disposition::Done(outcome) => outcome,
            Disposition::Duplicate => "duplicate-tick",
            Disposition::SkippedBusy => "busy",
            Disposition::RetryLater { reason, .. }
            | Disposition::HandBack { reason }
            | Disposition::DeadLetter { reason, .. } => reason,
        }
    }

    /// Whether the job failed (a dead letter, a retry of a failed job).
    pub fn is_failure(&self) -> bool {
        match self {
            Disposition::DeadLetter { .. } => true,
            Disposition::RetryLater { failure, .. } => *failure,
            _ => false,
        }
    }
}

/// Carries out `disposition` on `delivery`. False when a retry or dead-letter publish was not
/// confirmed (the delivery was handed back instead).
pub async fn settle(
    pub_ch: &Channel,
    topology: &Topology,
    delivery: &Delivery,
    disposition: &Disposition,
    attempt: u32,
) -> bool {
    match disposition {
        Disposition::Done(_) | Disposition::Duplicate | Disposition::SkippedBusy => {
            ack(delivery).await;
            true
        }
        Disposition::HandBack { .. } => {
            hand_back(delivery).await;
            true
        }
        Disposition::RetryLater { delay, headers, .. } => {
            retry_later(pub_ch, topology, delivery, *delay, headers).await
        }
        Disposition::DeadLetter { reason, message } => {
            dead_letter(pub_ch, topology, delivery, reason, message, attempt).await
        }
    }
}

/// Header: the job was already in progress somewhere (handed back, or delayed because its
/// tenant was locked after a redelivery), so finding its tenant locked must not drop it.
pub const HEADER_HANDED_BACK: &str = "x-handed-back";
/// Header: how often a handed-back job found its tenant locked.
pub const HEADER_BUSY_BOUNCES: &str = "x-busy-bounces";
/// Header: when (Unix time, ms) a handed-back job first found its tenant locked.
pub const HEADER_BUSY_SINCE: &str = "x-busy-since";

async fn ack(delivery: &Delivery) {
    match delivery.ack(BasicAckOptions::default()).await {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            tag = delivery.delivery_tag,
            "the ack was not sent (channel gone): the broker will redeliver"
        ),
        Err(e) => {
            tracing::warn!(tag = delivery.delivery_tag, error = %e, "the ack failed: the broker will redeliver")
        }
    }
}

/// Gives the delivery back to the queue now (another worker, or this one, takes it).
async fn hand_back(delivery: &Delivery) {
    let requeue = BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    };
    if let Err(e) = delivery.nack(requeue).await {
        tracing::warn!(tag = delivery.delivery_tag, error = %e, "handing back failed: the broker will redeliver");
    }
}

fn with_headers(delivery: &Delivery, set: &[(&str, AMQPValue)]) -> lapin::BasicProperties {
    let mut headers: FieldTable = delivery.properties.headers().clone().unwrap_or_default();
    for (k, v) in set {
        headers.insert(ShortString::from(*k), v.clone());
    }
    delivery.properties.clone().with_headers(headers)
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// Sends the job to the delay queue for `delay`, to come back afterwards; then acks.
async fn retry_later(
    pub_ch: &Channel,
    topology: &Topology,
    delivery: &Delivery,
    delay: std::time::Duration,
    headers: &[(&str, AMQPValue)],
) -> bool {
    let props = with_headers(delivery, headers);
    let queue = topology.retry_queue(delay);
    match publish_confirmed(pub_ch, "", &queue, &delivery.data, props).await {
        Ok(()) => {
            ack(delivery).await;
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, queue, "cannot schedule the retry: handing the delivery back");
            hand_back(delivery).await;
            false
        }
    }
}

/// Moves the job to the dead-letter queue with its reason; then acks.
async fn dead_letter(
    pub_ch: &Channel,
    topology: &Topology,
    delivery: &Delivery,
    reason: &str,
    message: &str,
    attempt: u32,
) -> bool {
    let message: String = message.chars().take(1000).collect();
    let props = with_headers(
        delivery,
        &[
            (HEADER_REASON, text(reason)),
            (HEADER_MESSAGE, text(&message)),
            (HEADER_ATTEMPT, AMQPValue::LongUInt(attempt)),
        ],
    );
    match publish_confirmed(
        pub_ch,
        &topology.dlx,
        &topology.region,
        &delivery.data,
        props,
    )
    .await
    {
        Ok(()) => {
            ack(delivery).await;
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot dead-letter: handing the delivery back");
            hand_back(delivery).await;
            false
        }
    }
}
