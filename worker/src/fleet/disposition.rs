//! What happens to a delivery once its job has ended: ack, retry later through a delay queue,
//! hand back to the queue, or dead-letter with a reason. A delivery is acked only after whatever
//! replaces it (a retry, a dead letter) was confirmed by the broker; if that publish fails, the
//! delivery is handed back instead, so nothing is lost.

use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use shared::amqp::{HEADER_ATTEMPT, HEADER_MESSAGE, HEADER_REASON, Topology, publish_confirmed};

/// Header: the job was already in progress somewhere (handed back, or delayed because its
/// tenant was locked after a redelivery), so finding its tenant locked must not drop it.
pub const HEADER_HANDED_BACK: &str = "x-handed-back";
/// Header: how often a handed-back job found its tenant locked.
pub const HEADER_BUSY_BOUNCES: &str = "x-busy-bounces";

pub async fn ack(delivery: &Delivery) {
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
pub async fn hand_back(delivery: &Delivery) {
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
pub async fn retry_later(
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
pub async fn dead_letter(
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
