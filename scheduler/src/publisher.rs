//! Publishing jobs: one AMQP connection and one channel in confirm mode, the topology of every
//! region served declared on each (re)connection, persistent messages with a broker confirm. A
//! message the broker returns (no queue bound for the region) or nacks is a failure, never a
//! success.
//!
//! A broker error or a confirm that does not come within `publish_timeout` drops the connection;
//! the next [`Publisher::connect`] (one bounded attempt) or [`Publisher::connect_with_backoff`]
//! (attempts until it succeeds or shutdown, each logged) makes a new one. Publishing never
//! connects by itself, so a publish is always bounded by `publish_timeout`, which the claim TTL
//! must exceed. The readiness flag `Health::broker` follows the connection.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::{Channel, Connection, ConnectionProperties};
use shared::amqp::{self, PublishError, Topology};
use shared::health::Health;
use shared::job::{JobMessage, JobV1};
use shared::secret::Secret;
use shared::telemetry;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::error::{SchedulerError, redact_url};

/// What the publisher needs to know.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    pub url: Secret,
    pub exchange: String,
    pub delivery_limit: u32,
    pub retry_delays: Vec<Duration>,
    /// Regions whose topology is declared on every connection.
    pub regions: Vec<String>,
    pub connect_timeout: Duration,
    pub publish_timeout: Duration,
}

struct Live {
    conn: Connection,
    channel: Channel,
    generation: u64,
}

/// The scheduler's one broker connection.
pub struct Publisher {
    config: PublisherConfig,
    regions: Mutex<BTreeSet<String>>,
    live: tokio::sync::Mutex<Option<Live>>,
    generation: std::sync::atomic::AtomicU64,
    health: Arc<Health>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("exchange", &self.config.exchange)
            .field("regions", &self.regions())
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// Builds a publisher without connecting.
    pub fn new(config: PublisherConfig, health: Arc<Health>) -> Self {
        let regions = config.regions.iter().cloned().collect();
        Self {
            config,
            regions: Mutex::new(regions),
            live: tokio::sync::Mutex::new(None),
            generation: std::sync::atomic::AtomicU64::new(0),
            health,
        }
    }

    pub fn exchange(&self) -> &str {
        &self.config.exchange
    }

    /// The regions declared on every connection.
    pub fn regions(&self) -> Vec<String> {
        match self.regions.lock() {
            Ok(r) => r.iter().cloned().collect(),
            Err(poisoned) => poisoned.into_inner().iter().cloned().collect(),
        }
    }

    fn topology(&self, region: &str) -> Topology {
        Topology::new(
            &self.config.exchange,
            region,
            self.config.delivery_limit,
            &self.config.retry_delays,
        )
    }

    /// Whether the connection and its channel are up.
    pub async fn is_connected(&self) -> bool {
        let live = self.live.lock().await;
        let up = live
            .as_ref()
            .is_some_and(|l| l.conn.status().connected() && l.channel.status().connected());
        self.health.set_broker(up);
        up
    }

    /// One bounded attempt to connect (a no-op when connected): connection, channel, confirm
    /// mode, then the topology of every region served.
    pub async fn connect(&self) -> Result<(), SchedulerError> {
        let mut live = self.live.lock().await;
        if live
            .as_ref()
            .is_some_and(|l| l.conn.status().connected() && l.channel.status().connected())
        {
            return Ok(());
        }
        *live = None;
        match tokio::time::timeout(self.config.connect_timeout, self.open()).await {
            Ok(Ok((conn, channel))) => {
                let generation = self
                    .generation
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    + 1;
                *live = Some(Live {
                    conn,
                    channel,
                    generation,
                });
                self.health.set_broker(true);
                tracing::info!(exchange = %self.config.exchange, regions = ?self.regions(), "connected to the broker");
                Ok(())
            }
            Ok(Err(e)) => {
                self.health.set_broker(false);
                Err(e)
            }
            Err(_) => {
                self.health.set_broker(false);
                Err(SchedulerError::Broker(format!(
                    "no connection within {:?}",
                    self.config.connect_timeout
                )))
            }
        }
    }

    async fn open(&self) -> Result<(Connection, Channel), SchedulerError> {
        let url = self
            .config
            .url
            .expose()
            .ok_or_else(|| SchedulerError::Config("amqp.url is not set".into()))?;
        let broker = |what: &str, e: lapin::Error| {
            SchedulerError::Broker(format!("{what}: {}", redact_url(&e.to_string(), Some(url))))
        };
        let props =
            ConnectionProperties::default().with_connection_name("user-import-scheduler".into());
        let conn = Connection::connect(url, props)
            .await
            .map_err(|e| broker("connect", e))?;
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| broker("open a channel", e))?;
        amqp::confirm_mode(&channel)
            .await
            .map_err(|e| broker("confirm mode", e))?;
        for region in self.regions() {
            self.topology(&region)
                .declare(&channel)
                .await
                .map_err(|e| broker(&format!("declare the topology of region {region}"), e))?;
        }
        Ok((conn, channel))
    }

    /// Connects, retrying with backoff until it succeeds or `shutdown` fires. Each attempt is
    /// bounded by `connect_timeout` and logged.
    pub async fn connect_with_backoff(
        &self,
        shutdown: &CancellationToken,
    ) -> Result<(), SchedulerError> {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut attempt: u32 = 0;
        loop {
            if shutdown.is_cancelled() {
                return Err(SchedulerError::Cancelled);
            }
            attempt = attempt.saturating_add(1);
            match self.connect().await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(attempt, retry_in = ?delay, error = %e, "cannot connect to the broker");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Err(SchedulerError::Cancelled),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Adds a region to those served; declares its topology now when connected.
    pub async fn serve_region(&self, region: &str) -> Result<(), SchedulerError> {
        let added = match self.regions.lock() {
            Ok(mut r) => r.insert(region.to_owned()),
            Err(poisoned) => poisoned.into_inner().insert(region.to_owned()),
        };
        if !added {
            return Ok(());
        }
        let channel = {
            let live = self.live.lock().await;
            live.as_ref().map(|l| (l.channel.clone(), l.generation))
        };
        if let Some((channel, generation)) = channel
            && let Err(e) = self.topology(region).declare(&channel).await
        {
            self.drop_connection(generation).await;
            return Err(SchedulerError::Broker(format!(
                "declare the topology of region {region}: {e}"
            )));
        }
        Ok(())
    }

    /// Publishes one job (persistent, `message_id` = `<tenant>:<scheduled_for>`) and waits for the
    /// broker's confirm, at most `publish_timeout`. Traced as a producer span (`publish
    /// <exchange>`, the OpenTelemetry messaging conventions for RabbitMQ) whose context travels in
    /// the message's `traceparent` header.
    pub async fn publish(&self, job: &JobV1) -> Result<(), SchedulerError> {
        let body = JobMessage::V1(job.clone()).encode();
        let name = format!("publish {}", self.config.exchange);
        let span = tracing::info_span!(
            "publish",
            otel.name = name.as_str(),
            otel.kind = "producer",
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
            error.type = tracing::field::Empty,
            messaging.system = "rabbitmq",
            messaging.operation.type = "send",
            messaging.operation.name = "publish",
            messaging.destination.name = self.config.exchange.as_str(),
            messaging.rabbitmq.destination.routing_key = job.region.as_str(),
            messaging.message.id = job.message_id().as_str(),
            messaging.message.body.size = body.len(),
            tenant = job.tenant.as_str(),
            job_id = %job.job_id,
        );
        let traceparent = telemetry::propagation::traceparent(&span);
        let result = self
            .publish_message(job, &body, traceparent.as_deref())
            .instrument(span.clone())
            .await;
        if let Err(e) = &result {
            telemetry::record_error(&span, e.kind(), &e.to_string());
        }
        result
    }

    async fn publish_message(
        &self,
        job: &JobV1,
        body: &[u8],
        traceparent: Option<&str>,
    ) -> Result<(), SchedulerError> {
        let (channel, generation) = {
            let live = self.live.lock().await;
            match live.as_ref() {
                Some(l) => (l.channel.clone(), l.generation),
                None => return Err(SchedulerError::Broker("not connected".into())),
            }
        };
        let props = amqp::job_properties(job, 0, traceparent);
        let result = tokio::time::timeout(
            self.config.publish_timeout,
            amqp::publish_confirmed(&channel, &self.config.exchange, &job.region, body, props),
        )
        .await;
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e @ (PublishError::Returned(_) | PublishError::Nacked))) => Err(e.into()),
            Ok(Err(e)) => {
                // The channel or the connection is broken: the next connect makes a new one.
                self.drop_connection(generation).await;
                Err(e.into())
            }
            Err(_) => {
                self.drop_connection(generation).await;
                Err(SchedulerError::PublishTimeout(self.config.publish_timeout))
            }
        }
    }

    /// Drops the connection if it is still the one of `generation` (a newer one is kept).
    async fn drop_connection(&self, generation: u64) {
        let mut live = self.live.lock().await;
        if live.as_ref().is_some_and(|l| l.generation == generation) {
            if let Some(old) = live.take() {
                tracing::warn!("dropping the broker connection after an error");
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    old.conn.close(200, "scheduler reconnecting".into()),
                )
                .await;
            }
            self.health.set_broker(false);
        }
    }

    /// Closes the connection (at shutdown).
    pub async fn close(&self) {
        let mut live = self.live.lock().await;
        if let Some(old) = live.take() {
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                old.conn.close(200, "scheduler stopping".into()),
            )
            .await;
        }
        self.health.set_broker(false);
    }
}
