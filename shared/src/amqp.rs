//! The AMQP contract both binaries share: the topology (declared idempotently by each), the
//! properties of a job message, and publishing with a broker confirm where a returned or nacked
//! message is a failure.
//!
//! Per region, with `<x>` the configured exchange (`user-import`):
//! - exchange `<x>` (direct, durable), routing key = region;
//! - queue `<x>.<region>`: quorum, `x-delivery-limit`, dead-letters to `<x>.dlx` **at least once**
//!   (`x-dead-letter-strategy: at-least-once`, which needs `x-overflow: reject-publish`): a
//!   dead letter stays in the queue until the dead-letter queue has confirmed it, where the quorum
//!   default (at most once) drops it if the dead-letter queue is missing or down. RabbitMQ 3.10 and
//!   later (with the `stream_queue` feature flag, on by default); older brokers refuse the
//!   argument. The queue has no length limit, so `reject-publish` never refuses a job;
//! - exchange `<x>.dlx` (direct, durable) and queue `<x>.<region>.dead` (quorum);
//! - delay queues `<x>.<region>.retry.<ms>` (classic, durable, `x-message-ttl`), whose expired
//!   messages dead-letter back to `<x>` with the region's key: a retry with backoff that holds no
//!   consumer and spins no loop.
//!
//! The broker-wide `consumer_timeout` (RabbitMQ 3.10 has no per-queue one; its default is 30 min)
//! must stay above the worker's `job_timeout` (default 25 min): `amqp.consumer_timeout` says what
//! the broker has, and the settings refuse a `job_timeout` that does not fit under it.
//!
//! A queue's arguments cannot change once declared: a declare with other arguments fails with
//! `PRECONDITION_FAILED` and closes the channel. A jobs queue declared before at-least-once dead
//! lettering must be migrated once (docs/fleet.md): stop the scheduler, let the workers drain the
//! queue, stop them, delete the queue (`rabbitmqctl delete_queue <x>.<region>`), start the new
//! version, which declares it again. Scheduled jobs are published again by the next tick.

use std::time::Duration;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, ExchangeKind};

use crate::job::JobV1;

/// Header: how many times the worker has already retried this job (0 on the first delivery).
pub const HEADER_ATTEMPT: &str = "x-attempt";
/// Headers on a dead-lettered job: why, in a word and in a sentence.
pub const HEADER_REASON: &str = "x-failure-reason";
pub const HEADER_MESSAGE: &str = "x-failure-message";
/// W3C trace context.
pub const HEADER_TRACEPARENT: &str = "traceparent";
/// The AMQP `type` of a job message.
pub const JOB_TYPE: &str = "user-import.job.v1";

/// The names and arguments of one region's topology.
#[derive(Debug, Clone)]
pub struct Topology {
    pub exchange: String,
    pub dlx: String,
    pub region: String,
    pub queue: String,
    pub dead_queue: String,
    pub delivery_limit: u32,
    pub retry_delays: Vec<Duration>,
}

impl Topology {
    pub fn new(
        exchange: &str,
        region: &str,
        delivery_limit: u32,
        retry_delays: &[Duration],
    ) -> Self {
        Self {
            exchange: exchange.to_owned(),
            dlx: format!("{exchange}.dlx"),
            region: region.to_owned(),
            queue: format!("{exchange}.{region}"),
            dead_queue: format!("{exchange}.{region}.dead"),
            delivery_limit,
            retry_delays: retry_delays.to_vec(),
        }
    }

    pub fn retry_queue(&self, delay: Duration) -> String {
        format!("{}.retry.{}", self.queue, delay.as_millis())
    }

    /// The delay before retry number `attempt` (1-based); `None` once the delays are used up.
    pub fn retry_delay(&self, attempt: u32) -> Option<Duration> {
        self.retry_delays
            .get(attempt.checked_sub(1)? as usize)
            .copied()
    }

    /// Declares everything; safe to call again with the same settings.
    pub async fn declare(&self, ch: &Channel) -> Result<(), lapin::Error> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        ch.exchange_declare(
            self.exchange.as_str().into(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await?;
        ch.exchange_declare(
            self.dlx.as_str().into(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await?;
        let qopts = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let mut main = FieldTable::default();
        main.insert("x-queue-type".into(), string("quorum"));
        main.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(i64::from(self.delivery_limit)),
        );
        main.insert("x-dead-letter-exchange".into(), string(&self.dlx));
        main.insert("x-dead-letter-routing-key".into(), string(&self.region));
        main.insert("x-dead-letter-strategy".into(), string("at-least-once"));
        main.insert("x-overflow".into(), string("reject-publish"));
        ch.queue_declare(self.queue.as_str().into(), qopts, main)
            .await?;
        self.bind(ch, &self.queue, &self.exchange).await?;

        let mut dead = FieldTable::default();
        dead.insert("x-queue-type".into(), string("quorum"));
        ch.queue_declare(self.dead_queue.as_str().into(), qopts, dead)
            .await?;
        self.bind(ch, &self.dead_queue, &self.dlx).await?;

        for delay in &self.retry_delays {
            let mut args = FieldTable::default();
            args.insert(
                "x-message-ttl".into(),
                AMQPValue::LongLongInt(delay.as_millis() as i64),
            );
            args.insert("x-dead-letter-exchange".into(), string(&self.exchange));
            args.insert("x-dead-letter-routing-key".into(), string(&self.region));
            ch.queue_declare(self.retry_queue(*delay).as_str().into(), qopts, args)
                .await?;
        }
        Ok(())
    }

    async fn bind(&self, ch: &Channel, queue: &str, exchange: &str) -> Result<(), lapin::Error> {
        ch.queue_bind(
            queue.into(),
            exchange.into(),
            self.region.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
    }
}

fn string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// Properties of a job message: persistent, JSON, `message_id` = `<tenant>:<scheduled_for>`.
pub fn job_properties(job: &JobV1, attempt: u32, traceparent: Option<&str>) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(HEADER_ATTEMPT.into(), AMQPValue::LongUInt(attempt));
    if let Some(tp) = traceparent {
        headers.insert(HEADER_TRACEPARENT.into(), string(tp));
    }
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from("application/json"))
        .with_message_id(ShortString::from(job.message_id()))
        .with_type(ShortString::from(JOB_TYPE))
        .with_timestamp(job.scheduled_for.timestamp().max(0) as u64)
        .with_headers(headers)
}

/// A header's value as text or number, from a delivery's properties.
pub fn header<'a>(props: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
    props.headers().as_ref()?.inner().get(name)
}

pub fn header_u32(props: &BasicProperties, name: &str) -> Option<u32> {
    match header(props, name)? {
        AMQPValue::LongUInt(n) => Some(*n),
        AMQPValue::LongInt(n) => u32::try_from(*n).ok(),
        AMQPValue::LongLongInt(n) => u32::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(u32::from(*n)),
        AMQPValue::ShortInt(n) => u32::try_from(*n).ok(),
        AMQPValue::ShortShortUInt(n) => Some(u32::from(*n)),
        _ => None,
    }
}

pub fn header_str(props: &BasicProperties, name: &str) -> Option<String> {
    match header(props, name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// Why a publish did not land.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker returned the message as unroutable ({0})")]
    Returned(String),
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("publisher confirms are not enabled on this channel")]
    NotConfirmed,
}

/// Puts a channel in confirm mode.
pub async fn confirm_mode(ch: &Channel) -> Result<(), lapin::Error> {
    ch.confirm_select(ConfirmSelectOptions::default()).await
}

/// Publishes with `mandatory` and waits for the broker's confirm.
pub async fn publish_confirmed(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    props: BasicProperties,
) -> Result<(), PublishError> {
    let confirm = ch
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            props,
        )
        .await?
        .await?;
    match confirm {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(returned)) => Err(PublishError::Returned(format!(
            "{} {}",
            returned.reply_code, returned.reply_text
        ))),
        Confirmation::Nack(_) => Err(PublishError::Nacked),
        Confirmation::NotRequested => Err(PublishError::NotConfirmed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_derive_from_the_exchange_and_region() {
        let t = Topology::new(
            "user-import",
            "eu",
            5,
            &[Duration::from_secs(30), Duration::from_secs(120)],
        );
        assert_eq!(t.queue, "user-import.eu");
        assert_eq!(t.dead_queue, "user-import.eu.dead");
        assert_eq!(t.dlx, "user-import.dlx");
        assert_eq!(
            t.retry_queue(Duration::from_secs(30)),
            "user-import.eu.retry.30000"
        );
        assert_eq!(t.retry_delay(1), Some(Duration::from_secs(30)));
        assert_eq!(t.retry_delay(2), Some(Duration::from_secs(120)));
        assert_eq!(t.retry_delay(3), None);
        assert_eq!(t.retry_delay(0), None);
    }
}
