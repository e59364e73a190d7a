//! The private broker of the harness (`harness::private_broker`) really restarts: a client's
//! connection is dropped, and a persistent message in a durable quorum queue survives.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};

/// Bounds every network step so a broken broker fails the test instead of hanging it.
const STEP: Duration = Duration::from_secs(20);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(STEP, fut)
        .await
        .with_context(|| format!("{what} took longer than {STEP:?}"))
}

fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_message_in_a_quorum_queue_survives_a_private_broker_restart() -> Result<()> {
    let started = Instant::now();
    let broker = harness::private_broker().await;
    eprintln!(
        "private broker {} up in {:?}",
        broker.node,
        started.elapsed()
    );
    let url = broker.amqp_url();
    assert_ne!(broker.port, 5672, "never the machine's broker");

    let conn = within(
        "amqp connect",
        Connection::connect(&url, ConnectionProperties::default()),
    )
    .await?
    .context("connecting to the private broker")?;
    let channel = conn.create_channel().await?;
    let queue = harness::unique("restart");
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.as_str().into(), durable, quorum())
        .await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let body = format!("survives {queue}");
    let confirmation = within(
        "publish confirm",
        channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body.as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?,
    )
    .await??;
    match confirmation {
        Confirmation::Ack(None) => {}
        Confirmation::Ack(Some(returned)) => bail!("the broker returned the message: {returned:?}"),
        other => bail!("expected an ack, got {other:?}"),
    }

    let restart = Instant::now();
    broker.restart().await;
    eprintln!("restart of {} took {:?}", broker.node, restart.elapsed());

    // The old connection was closed by the broker: an operation on it fails (bounded, so a
    // connection that silently stayed open fails the test instead of hanging it).
    let old = within(
        "an operation on the old connection",
        channel.queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await?;
    ensure!(
        old.is_err(),
        "the connection from before the restart still works: {old:?}"
    );
    ensure!(
        !conn.status().connected(),
        "the old connection still reports itself connected"
    );

    let conn = within(
        "amqp reconnect",
        Connection::connect(&url, ConnectionProperties::default()),
    )
    .await?
    .context("reconnecting to the private broker")?;
    let channel = conn.create_channel().await?;
    // Redeclaring with the same arguments checks the queue came back as a durable quorum queue.
    let declared = channel
        .queue_declare(queue.as_str().into(), durable, quorum())
        .await?;
    assert_eq!(declared.message_count(), 1, "{queue} after the restart");
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let delivery = within("delivery after the restart", consumer.next())
        .await?
        .context("the consumer stream ended")??;
    assert_eq!(delivery.data, body.as_bytes());
    delivery.ack(BasicAckOptions::default()).await?;
    conn.close(200, "done".into()).await?;
    Ok(())
}
