//! Dead letters of the jobs queue are kept until the dead-letter queue has them (at least once),
//! on the machine's broker, with the test's own exchange.

use std::time::Duration;

use lapin::options::{BasicGetOptions, BasicNackOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties};
use shared::amqp::{Topology, confirm_mode, job_properties, publish_confirmed};
use shared::job::{JobMessage, JobV1, Trigger};

/// The broker's statistics of the queue: every message (those waiting to be dead-lettered
/// included) and the ready ones. Refreshed every few seconds, so read them through [`settled`].
fn counts(queue: &str) -> Option<(u64, u64)> {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "list_queues",
            "--quiet",
            "--no-table-headers",
            "-p",
            "/",
            "name",
            "messages",
            "messages_ready",
        ])
        .output()
        .unwrap_or_else(|e| panic!("rabbitmqctl must be installed: {e}"));
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        match cols[..] {
            [name, all, ready] if name == queue => Some((all.parse().ok()?, ready.parse().ok()?)),
            _ => None,
        }
    })
}

/// Publishes a marker after the rejected message and waits until the statistics show it ready:
/// they are then newer than the reject. Returns every message the queue holds, marker included.
async fn settled(ch: &Channel, queue: &str, body: &[u8], job: &JobV1) -> u64 {
    publish_confirmed(ch, "", queue, body, job_properties(job, 0, None))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for _ in 0..300 {
        if let Some((all, 1)) = counts(queue) {
            return all;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the broker's statistics of {queue} never showed the marker");
}

/// Takes the one message of `queue` and rejects it without requeue: it is dead-lettered.
async fn reject_one(ch: &Channel, queue: &str) {
    let delivery = ch
        .basic_get(queue.into(), BasicGetOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("the job is in {queue}"));
    delivery
        .nack(BasicNackOptions {
            requeue: false,
            ..BasicNackOptions::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn a_dead_letter_is_kept_by_the_jobs_queue_while_the_dead_letter_queue_is_missing() {
    let exchange = harness::unique("dlx-test");
    let topo = Topology::new(&exchange, "eu", 5, &[Duration::from_secs(30)]);
    let conn = Connection::connect(&harness::amqp_url(), ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("the broker must be running: {e}"));
    let ch = conn
        .create_channel()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    topo.declare(&ch).await.unwrap_or_else(|e| panic!("{e}"));
    // Declaring again with the same arguments is accepted (both binaries do it at every start).
    topo.declare(&ch).await.unwrap_or_else(|e| panic!("{e}"));
    confirm_mode(&ch).await.unwrap_or_else(|e| panic!("{e}"));
    // The dead-letter queue is gone (deleted, or its node down): nowhere to put a dead letter.
    ch.queue_delete(
        topo.dead_queue.as_str().into(),
        QueueDeleteOptions::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let job = JobV1 {
        job_id: uuid::Uuid::new_v4(),
        tenant: "acme".into(),
        region: "eu".into(),
        scheduled_for: chrono::Utc::now(),
        trigger: Trigger::Manual,
    };
    let body = JobMessage::V1(job.clone()).encode();
    publish_confirmed(
        &ch,
        &topo.exchange,
        &topo.region,
        &body,
        job_properties(&job, 0, None),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    reject_one(&ch, &topo.queue).await;

    // The control: a quorum queue with the default strategy drops such a dead letter.
    let control = format!("{}.control", topo.queue);
    let mut args = FieldTable::default();
    for (k, v) in [
        ("x-queue-type", "quorum"),
        ("x-dead-letter-exchange", topo.dlx.as_str()),
        ("x-dead-letter-routing-key", topo.region.as_str()),
    ] {
        args.insert(k.into(), AMQPValue::LongString(v.into()));
    }
    ch.queue_declare(
        control.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        args,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    publish_confirmed(&ch, "", &control, &body, job_properties(&job, 0, None))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    reject_one(&ch, &control).await;
    assert_eq!(
        settled(&ch, &control, &body, &job).await,
        1,
        "the control queue kept its dead letter: only the marker should be left"
    );

    // The jobs queue still holds its dead letter besides the marker, and never delivers it again.
    assert_eq!(
        settled(&ch, &topo.queue, &body, &job).await,
        2,
        "the dead letter was dropped"
    );
    let marker = ch
        .basic_get(topo.queue.as_str().into(), BasicGetOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(marker.is_some(), "the marker is ready");
    let again = ch
        .basic_get(topo.queue.as_str().into(), BasicGetOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(again.is_none(), "a dead letter is not delivered again");

    for q in [
        topo.queue.clone(),
        control,
        topo.retry_queue(Duration::from_secs(30)),
    ] {
        let _ = ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "done".into()).await;
}
