//! The fleet on the real broker and Redis: workers consuming a region's queue, the tenant lock,
//! dead letters, crashes and shutdowns. Each test has its own exchange (so its own queues) and
//! Redis key prefix.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use platform_fake::Faults;
use shared::amqp::{HEADER_REASON, header_str};
use tokio::sync::mpsc;

use harness::fixtures::{tenant_log, users_csv};
use harness::fleet_env::{FleetEnv, FleetOptions, collect_until};

/// Waits until `check` holds, polling; panics with `what` after `timeout`.
async fn eventually(timeout: Duration, what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_never_run_one_tenant_at_the_same_time() {
    let env = FleetEnv::new(FleetOptions::default()).await;
    for (i, a) in env.accounts.iter().enumerate() {
        a.put(
            "uploads/user-import.csv",
            users_csv(&format!("t{i}u"), 5).as_bytes(),
        );
    }
    env.fake.set_faults(Faults {
        latency_ms: 10,
        ..Faults::default()
    });
    let (tx, mut rx) = mpsc::unbounded_channel();
    let workers = vec![
        env.spawn_worker("w1", tx.clone()),
        env.spawn_worker("w2", tx.clone()),
        env.spawn_worker("w3", tx.clone()),
    ];
    // 8 jobs per tenant, published at once: without the lock they would overlap.
    let t0 = Utc::now();
    let mut published = 0;
    for round in 0..8 {
        for i in 0..env.accounts.len() {
            env.publish_job(env.tenant(i), t0 + chrono::Duration::seconds(round))
                .await;
            published += 1;
        }
    }
    let events = collect_until(&mut rx, Duration::from_secs(90), |e| e.len() >= published).await;
    for w in workers {
        w.shutdown().await;
    }

    // Every delivery reached a terminal disposition: nothing lost.
    let mut by_disposition: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &events {
        *by_disposition.entry(e.disposition).or_default() += 1;
    }
    assert_eq!(events.len(), published, "{by_disposition:?}");
    // `superseded`: a job of an earlier tick that came after a later tick's run (the tick
    // record on the tenant's account).
    assert!(
        events.iter().all(|e| matches!(
            e.disposition,
            "imported" | "already-processed" | "skipped-busy" | "superseded"
        )),
        "{by_disposition:?}"
    );
    // The ledger: per tenant, no two pipeline runs overlap.
    type Run<'a> = (chrono::DateTime<Utc>, chrono::DateTime<Utc>, &'a str);
    let mut runs: BTreeMap<&str, Vec<Run>> = BTreeMap::new();
    for e in &events {
        if let (Some(s), Some(t)) = (e.started, e.ended) {
            runs.entry(e.tenant.as_str())
                .or_default()
                .push((s, t, e.worker_id.as_str()));
        }
    }
    assert_eq!(runs.len(), env.accounts.len(), "every tenant ran");
    let mut workers_seen = std::collections::BTreeSet::new();
    for (tenant, mut spans) in runs {
        spans.sort();
        for pair in spans.windows(2) {
            assert!(
                pair[0].1 <= pair[1].0,
                "tenant {tenant}: runs overlap: {pair:?}"
            );
        }
        workers_seen.extend(spans.iter().map(|s| s.2));
    }
    assert!(
        workers_seen.len() >= 2,
        "the jobs were spread over workers: {workers_seen:?}"
    );
    assert!(
        by_disposition.get("skipped-busy").copied().unwrap_or(0) > 0,
        "contention happened: {by_disposition:?}"
    );
    for i in 0..env.accounts.len() {
        assert_eq!(env.fake.users(&env.domain(i)).len(), 5);
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_message_is_dead_lettered_with_a_reason_and_does_not_hold_up_the_others() {
    let env = FleetEnv::new(FleetOptions {
        tenants: 1,
        ..FleetOptions::default()
    })
    .await;
    env.accounts[0].put("uploads/user-import.csv", users_csv("p", 2).as_bytes());
    let (tx, mut rx) = mpsc::unbounded_channel();
    // Poison first, so a worker that choked on it would never reach the good job.
    env.publish_raw(
        b"{ this is not json",
        lapin::BasicProperties::default().with_delivery_mode(2),
    )
    .await;
    env.publish_job("nobody-at-all", Utc::now()).await;
    env.publish_job(env.tenant(0), Utc::now()).await;
    let worker = env.spawn_worker("w1", tx);
    let events = collect_until(&mut rx, Duration::from_secs(60), |e| e.len() >= 3).await;
    worker.shutdown().await;
    assert!(
        events
            .iter()
            .any(|e| e.tenant == env.tenant(0) && e.disposition == "imported"),
        "{events:#?}"
    );
    let dead = env.dead_letters().await;
    let mut reasons: Vec<String> = dead
        .iter()
        .map(|(_, p)| header_str(p, HEADER_REASON).unwrap_or_default())
        .collect();
    reasons.sort();
    assert_eq!(reasons, ["bad-message", "unknown-tenant"], "{dead:?}");
    assert!(
        dead.iter().any(|(body, _)| body == b"{ this is not json"),
        "the poison body is kept as it was"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_mid_import_loses_no_job() {
    let env = FleetEnv::new(FleetOptions {
        tenants: 1,
        concurrency: 2,
        ..FleetOptions::default()
    })
    .await;
    env.accounts[0].put("uploads/user-import.csv", users_csv("k", 60).as_bytes());
    env.fake.set_faults(Faults {
        latency_ms: 40,
        ..Faults::default()
    });
    let domain = env.domain(0);
    let mut first = env.spawn_worker_process();
    env.publish_job(env.tenant(0), Utc::now()).await;
    eventually(
        Duration::from_secs(60),
        "the import to be under way",
        || env.fake.users(&domain).len() >= 5,
    )
    .await;
    first.start_kill().unwrap_or_else(|e| panic!("{e}")); // SIGKILL
    let _ = first.wait().await;
    let created_at_kill = env.fake.users(&domain).len();
    assert!(
        created_at_kill < 60,
        "killed mid-import ({created_at_kill} of 60)"
    );

    let (tx, mut rx) = mpsc::unbounded_channel();
    let second = env.spawn_worker("w2", tx);
    let events = collect_until(&mut rx, Duration::from_secs(120), |e| {
        e.iter().any(|e| e.disposition == "imported")
    })
    .await;
    second.shutdown().await;
    assert_eq!(
        env.fake.users(&domain).len(),
        60,
        "every user created once the job was redelivered"
    );
    assert!(
        env.accounts[0]
            .list("tmp")
            .iter()
            .any(|n| n.ends_with(".sha1")),
        "the marker was written"
    );
    assert!(
        events.iter().all(|e| e.disposition != "skipped-busy"),
        "a redelivered job is never dropped as busy: {events:#?}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_during_a_job_drains_releases_the_lock_and_exits_zero() {
    let env = FleetEnv::new(FleetOptions {
        tenants: 1,
        concurrency: 2,
        drain_timeout: "2s",
        lock_ttl: "10s",
        ..FleetOptions::default()
    })
    .await;
    env.accounts[0].put("uploads/user-import.csv", users_csv("s", 80).as_bytes());
    env.fake.set_faults(Faults {
        latency_ms: 40,
        ..Faults::default()
    });
    let domain = env.domain(0);
    let mut proc = env.spawn_worker_process();
    env.publish_job(env.tenant(0), Utc::now()).await;
    eventually(
        Duration::from_secs(60),
        "the import to be under way",
        || env.fake.users(&domain).len() >= 3,
    )
    .await;
    let pid = proc.id().unwrap_or_else(|| panic!("no pid"));
    let term = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    assert!(term.is_ok_and(|s| s.success()));
    let status = tokio::time::timeout(Duration::from_secs(30), proc.wait())
        .await
        .unwrap_or_else(|_| panic!("the worker did not exit after SIGTERM"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status.code(), Some(0), "exit 0 after draining");
    let mut redis = redis::Client::open(harness::redis_url())
        .unwrap_or_else(|e| panic!("{e}"))
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let lock: Option<String> = redis::cmd("GET")
        .arg(format!("{}:lock:{}", env.prefix, env.tenant(0)))
        .query_async(&mut redis)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(lock, None, "the lock was released, not left to expire");
    assert!(
        env.fake.users(&domain).len() < 80,
        "the job was handed back mid-way, not finished"
    );

    // The handed-back job is not lost: another worker finishes it.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let next = env.spawn_worker("w2", tx);
    collect_until(&mut rx, Duration::from_secs(120), |e| {
        e.iter().any(|e| e.disposition == "imported")
    })
    .await;
    next.shutdown().await;
    assert_eq!(env.fake.users(&domain).len(), 80);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_tick_from_three_scheduler_replicas_makes_exactly_one_job_and_one_run_per_tenant() {
    let env = FleetEnv::new(FleetOptions {
        tenants: 4,
        ..FleetOptions::default()
    })
    .await;
    for (i, a) in env.accounts.iter().enumerate() {
        a.put(
            "uploads/user-import.csv",
            users_csv(&format!("r{i}u"), 3).as_bytes(),
        );
    }
    let settings = env.settings();
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let registry = shared::registry::Registry::load(&settings.registry.file)
            .unwrap_or_else(|e| panic!("{e}"));
        let s = scheduler::Scheduler::from_settings(
            &settings,
            registry,
            std::sync::Arc::new(shared::health::Health::default()),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        s.connect().await.unwrap_or_else(|e| panic!("{e}"));
        replicas.push(s);
    }
    // The tenants' default schedule ticks at midnight UTC; all replicas poll just after one.
    let tick = chrono::DateTime::parse_from_rfc3339("2026-11-25T00:00:00Z")
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|e| panic!("{e}"));
    let now = tick + chrono::Duration::seconds(20);
    let reports = futures::future::join_all(replicas.iter().map(|r| r.poll_at(now))).await;
    let published: usize = reports
        .iter()
        .map(|r| {
            r.as_ref()
                .map(|r| r.published.len())
                .unwrap_or_else(|e| panic!("{e}"))
        })
        .sum();
    assert_eq!(
        published,
        env.accounts.len(),
        "one publish per tenant across the replicas"
    );

    let (tx, mut rx) = mpsc::unbounded_channel();
    let workers = vec![
        env.spawn_worker("w1", tx.clone()),
        env.spawn_worker("w2", tx),
    ];
    let events = collect_until(&mut rx, Duration::from_secs(60), |e| {
        e.len() >= env.accounts.len()
    })
    .await;
    // Nothing more arrives: no duplicate job was queued.
    let late = tokio::time::timeout(Duration::from_secs(3), rx.recv()).await;
    for w in workers {
        w.shutdown().await;
    }
    for r in &replicas {
        r.close().await;
    }
    assert!(late.is_err(), "an extra job ran: {late:?}");
    let mut tenants: Vec<&str> = events.iter().map(|e| e.tenant.as_str()).collect();
    tenants.sort();
    let mut expected: Vec<&str> = (0..env.accounts.len()).map(|i| env.tenant(i)).collect();
    expected.sort();
    assert_eq!(tenants, expected, "one pipeline run per tenant");
    assert!(
        events
            .iter()
            .all(|e| e.disposition == "imported" && e.started.is_some()),
        "{events:#?}"
    );
    assert!(
        events
            .iter()
            .all(|e| e.message_id.ends_with("2026-11-25T00:00:00+00:00")),
        "{events:#?}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_broker_restart_mid_run_the_scheduler_and_workers_recover_and_the_jobs_finish() {
    let broker = harness::private_broker().await;
    let env = FleetEnv::new(FleetOptions {
        tenants: 3,
        amqp_url: Some(broker.amqp_url()),
        // Every 2 seconds, so the scheduler has ticks to publish before and after the restart.
        schedule: Some("*/2 * * * * *"),
        ..FleetOptions::default()
    })
    .await;
    for (i, a) in env.accounts.iter().enumerate() {
        a.put(
            "uploads/user-import.csv",
            users_csv(&format!("b{i}u"), 40).as_bytes(),
        );
    }
    env.fake.set_faults(Faults {
        latency_ms: 30,
        ..Faults::default()
    });
    let settings = env.settings();
    let registry =
        shared::registry::Registry::load(&settings.registry.file).unwrap_or_else(|e| panic!("{e}"));
    let sched = std::sync::Arc::new(
        scheduler::Scheduler::from_settings(
            &settings,
            registry,
            std::sync::Arc::new(shared::health::Health::default()),
        )
        .unwrap_or_else(|e| panic!("{e}")),
    );
    let stop_sched = tokio_util::sync::CancellationToken::new();
    let sched_task = {
        let (sched, stop) = (sched.clone(), stop_sched.clone());
        tokio::spawn(async move {
            let reload = tokio::sync::Notify::new();
            scheduler::run(&sched, &reload, stop).await
        })
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let workers = vec![
        env.spawn_worker("w1", tx.clone()),
        env.spawn_worker("w2", tx),
    ];

    eventually(Duration::from_secs(60), "imports under way", || {
        (0..3).any(|i| !env.fake.users(&env.domain(i)).is_empty())
    })
    .await;
    broker.restart().await;
    let restarted = Utc::now();

    // Recovery: every tenant's file is fully imported, and jobs published after the restart
    // (by the reconnected scheduler) were consumed (by the reconnected workers).
    let events = collect_until(&mut rx, Duration::from_secs(120), |events| {
        (0..3).all(|i| {
            events.iter().any(|e| {
                e.tenant == env.tenant(i)
                    && e.started.is_some_and(|s| s > restarted)
                    && matches!(e.disposition, "imported" | "already-processed")
            })
        })
    })
    .await;
    stop_sched.cancel();
    let sched_result = tokio::time::timeout(Duration::from_secs(20), sched_task).await;
    for w in workers {
        w.shutdown().await;
    }
    sched.close().await;
    assert!(
        matches!(sched_result, Ok(Ok(Ok(())))),
        "the scheduler loop ended cleanly: {sched_result:?}"
    );
    for i in 0..3 {
        assert_eq!(
            env.fake.users(&env.domain(i)).len(),
            40,
            "tenant {i} fully imported"
        );
        assert!(
            env.accounts[i]
                .list("tmp")
                .iter()
                .any(|n| n.ends_with(".sha1")),
            "tenant {i} has its marker"
        );
    }
    assert!(
        events.iter().all(|e| e.disposition != "dead-lettered"),
        "nothing was dead-lettered by the restart: {events:#?}"
    );
}

/// A worker frozen (SIGSTOP) while its requests are in flight, for longer than both its lock's
/// TTL and the HTTP request timeout, resumes with expired timers: its renewer has not yet looked,
/// and its timed-out requests are due for a retry. Neither may reach the platform: the lease says
/// the lock is gone, and the client asks before every attempt. The job is handed back and
/// completed later.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_frozen_past_its_lock_ttl_sends_no_request_after_it_resumes() {
    let env = FleetEnv::new(FleetOptions {
        tenants: 1,
        lock_ttl: "2s",
        prefetch: 1,
        concurrency: 2,
        ..FleetOptions::default()
    })
    .await;
    env.accounts[0].put("uploads/user-import.csv", users_csv("z", 12).as_bytes());
    let domain = env.domain(0);
    env.fake.set_faults(Faults {
        latency_ms: 1500,
        ..Faults::default()
    });
    let worker_log = env.dir.path().join("frozen-worker.log");
    let mut proc = env.spawn_worker_process_with(&[("RUST_LOG", "info,worker=debug")], &worker_log);
    let job = env.publish_job(env.tenant(0), Utc::now()).await;
    eventually(Duration::from_secs(60), "a write in flight", || {
        env.fake.calls(&domain).get("SetUser") >= 1
    })
    .await;
    let pid = proc.id().unwrap_or_else(|| panic!("no pid")).to_string();
    let signal = |sig: &str| {
        let status = std::process::Command::new("kill")
            .args([sig, &pid])
            .status();
        assert!(status.is_ok_and(|s| s.success()), "kill {sig}");
    };
    signal("-STOP");
    // Past the lock TTL (2 s) and the request timeout (5 s); the fake answers meanwhile.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let calls_at_resume = env.fake.calls(&domain).total();
    signal("-CONT");
    let log_of_job = || {
        let log = tenant_log(&env.accounts[0]);
        log.lines()
            .filter(|l| l.contains(&job.job_id.to_string()))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    // The stale run stops (the worker's own log says so) and, having lost its lock, writes
    // nothing more to the tenant's account, not even its last log line.
    eventually(Duration::from_secs(30), "the stale run to stop", || {
        std::fs::read_to_string(&worker_log)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("job failed") && l.contains("cancelled"))
    })
    .await;
    assert!(
        !log_of_job()
            .iter()
            .any(|l| l.contains("end: failed, will be retried (cancelled)")),
        "the stale run wrote its end line after losing its lock: {:?}",
        log_of_job()
    );
    // The hand-back waits a retry delay (1 s) before the job runs again.
    assert_eq!(
        env.fake.calls(&domain).total(),
        calls_at_resume,
        "no request from the resumed worker before its job stopped"
    );
    env.fake.set_faults(Faults::default());
    eventually(Duration::from_secs(60), "the job to complete", || {
        log_of_job().iter().any(|l| l.contains("end: imported"))
    })
    .await;
    assert_eq!(env.fake.users(&domain).len(), 12, "every user, once");
    assert_eq!(env.fake.calls(&domain).duplicate_creates(), 0);
    proc.start_kill().unwrap_or_else(|e| panic!("{e}"));
    let _ = proc.wait().await;
    env.cleanup().await;
}

/// Redis losing this fleet's keys (what an empty restart or a flush does to them) while a job
/// runs: a fresh job for the tenant finds the tenant free, but the running job only learns at its
/// next renewal. The lock epoch is gone too, so no lock is granted for one TTL, by when the
/// running job has stopped: the two runs never overlap (`redis_loss` has the real restarts and
/// FLUSHALL; here only the fleet's keys go, so a member that knew the epoch notices).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_redis_lost_its_locks_a_new_holder_starts_only_once_the_old_one_stopped() {
    let env = FleetEnv::new(FleetOptions {
        tenants: 1,
        lock_ttl: "3s",
        prefetch: 1,
        concurrency: 2,
        ..FleetOptions::default()
    })
    .await;
    env.accounts[0].put("uploads/user-import.csv", users_csv("r", 40).as_bytes());
    let domain = env.domain(0);
    env.fake.set_faults(Faults {
        latency_ms: 40,
        ..Faults::default()
    });
    let mut redis = redis::Client::open(harness::redis_url())
        .unwrap_or_else(|e| panic!("{e}"))
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let lock_key = format!("{}:lock:{}", env.prefix, env.tenant(0));
    let fence_key = format!("{}:fencing:{}", env.prefix, env.tenant(0));
    let epoch_key = format!("{}:epoch", env.prefix);
    // A third member of the fleet, which knows the epoch (as every worker does once it checked it).
    let third = worker::fleet::Locks::new(
        redis::aio::ConnectionManager::new(
            redis::Client::open(harness::redis_url()).unwrap_or_else(|e| panic!("{e}")),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}")),
        &env.prefix,
        Duration::from_secs(3),
    );
    let _ = third.check_epoch().await.unwrap_or_else(|e| panic!("{e}"));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let a = env.spawn_worker("a", tx.clone());
    let b = env.spawn_worker("b", tx);
    let first = env.publish_job(env.tenant(0), Utc::now()).await;
    eventually(
        Duration::from_secs(60),
        "the import to be under way",
        || env.fake.users(&domain).len() >= 3,
    )
    .await;
    // What an empty restart does to this tenant's keys.
    let _: i64 = redis::cmd("DEL")
        .arg(&lock_key)
        .arg(&fence_key)
        .arg(&epoch_key)
        .query_async(&mut redis)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // The first member to look notices the loss and sets the fleet's deadline.
    assert!(
        third
            .check_epoch()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .is_some(),
        "the loss was noticed"
    );
    let second = env.publish_job(env.tenant(0), Utc::now()).await;
    let (first_id, second_id) = (first.job_id.to_string(), second.job_id.to_string());
    // Once locks are granted again the two jobs race for the tenant: the second, fresh, is
    // skipped if the first's retry wins (a job for the tenant is running), or runs first — and
    // then the first's retry, an older tick than the one the account recorded, is superseded.
    let events = collect_until(&mut rx, Duration::from_secs(120), |e| {
        let settled = |id: &str, how: &[&str]| {
            e.iter()
                .any(|e| e.job_id == id && how.contains(&e.disposition))
        };
        settled(&first_id, &["imported", "already-processed", "superseded"])
            && settled(
                &second_id,
                &["imported", "already-processed", "skipped-busy"],
            )
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
    let runs: Vec<_> = events
        .iter()
        .filter_map(|e| Some((e.job_id.as_str(), e.started?, e.ended?)))
        .collect();
    for (i, x) in runs.iter().enumerate() {
        for y in &runs[i + 1..] {
            assert!(
                !(x.1 < y.2 && y.1 < x.2),
                "two runs of the tenant overlapped: {x:?} and {y:?}"
            );
        }
    }
    assert!(
        runs.iter().any(|r| r.0 == first_id),
        "the first job ran: {events:#?}"
    );
    assert_eq!(env.fake.users(&domain).len(), 40);
    assert_eq!(env.fake.calls(&domain).duplicate_creates(), 0);
    env.cleanup().await;
}

/// A scheduler replica that dies between its publish and its commit leaves the tick to be
/// published again by another once its claim expires: two jobs for one tick. The worker runs the
/// first and drops the second as a duplicate, whenever it comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tick_published_twice_runs_once() {
    let env = FleetEnv::new(FleetOptions {
        tenants: 1,
        ..FleetOptions::default()
    })
    .await;
    let tick = chrono::DateTime::parse_from_rfc3339("2031-03-01T10:00:00Z")
        .unwrap_or_else(|e| panic!("{e}"))
        .with_timezone(&Utc);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let worker = env.spawn_worker("w", tx);
    let first = env.publish_job(env.tenant(0), tick).await;
    collect_until(&mut rx, Duration::from_secs(60), |e| {
        e.iter().any(|e| e.job_id == first.job_id.to_string())
    })
    .await;
    let again = env.publish_job(env.tenant(0), tick).await;
    let next = env
        .publish_job(env.tenant(0), tick + chrono::TimeDelta::minutes(1))
        .await;
    let events = collect_until(&mut rx, Duration::from_secs(60), |e| {
        [&again, &next]
            .iter()
            .all(|j| e.iter().any(|e| e.job_id == j.job_id.to_string()))
    })
    .await;
    worker.shutdown().await;
    let of = |j: &shared::job::JobV1| {
        events
            .iter()
            .find(|e| e.job_id == j.job_id.to_string())
            .map(|e| e.disposition)
    };
    assert_eq!(of(&again), Some("duplicate"), "{events:#?}");
    assert_eq!(
        of(&next),
        Some("no-file"),
        "the next tick runs: {events:#?}"
    );
    env.cleanup().await;
}

/// A tenant added to the registry after the worker read it: the scheduler publishes its first
/// job as soon as it has read the file, and the worker reads the file again rather than
/// dead-lettering the job as for an unknown tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_added_to_the_registry_while_the_worker_runs_gets_its_first_job_imported() {
    let env = FleetEnv::new(FleetOptions {
        tenants: 2,
        ..FleetOptions::default()
    })
    .await;
    let path = env.settings().registry.file;
    let full = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
    let second = full
        .match_indices("[[tenant]]")
        .nth(1)
        .map(|(i, _)| i)
        .unwrap_or_else(|| panic!("two tenants in {full}"));
    std::fs::write(&path, &full[..second]).unwrap_or_else(|e| panic!("{e}"));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let worker = env.spawn_worker("w", tx);
    // The support team adds the tenant; its first job arrives before any periodic reload.
    std::fs::write(&path, &full).unwrap_or_else(|e| panic!("{e}"));
    env.accounts[1].put("uploads/user-import.csv", users_csv("added", 3).as_bytes());
    env.publish_job(env.tenant(1), Utc::now()).await;
    let events = collect_until(&mut rx, Duration::from_secs(60), |e| !e.is_empty()).await;
    worker.shutdown().await;
    assert_eq!(
        (events[0].tenant.as_str(), events[0].disposition),
        (env.tenant(1), "imported"),
        "{events:#?}"
    );
    assert_eq!(env.fake.users(&env.domain(1)).len(), 3);
    assert!(env.dead_letters().await.is_empty());
    env.cleanup().await;
}

/// A job the fleet gives up on (the platform answering 503 on every try, through every retry of
/// the job) ends dead-lettered with its reason, and the tenant's admin gets exactly one email
/// saying so — none for the retries before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_dead_lettered_after_its_retries_tells_the_admin_once() {
    let mut env = FleetEnv::new(FleetOptions {
        tenants: 1,
        ..FleetOptions::default()
    })
    .await;
    // One API attempt per run, so each of the job's runs fails fast.
    env.env
        .insert("USER_IMPORT__PLATFORM__MAX_ATTEMPTS".into(), "1".into());
    env.fake.set_faults(Faults {
        error_5xx_rate: 1.0,
        ..Faults::default()
    });
    env.accounts[0].put("uploads/user-import.csv", users_csv("gu", 3).as_bytes());
    let admin = format!("admin@{}.example.com", env.tenant(0));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let worker = env.spawn_worker("w1", tx);
    let job = env.publish_job(env.tenant(0), Utc::now()).await;
    let events = collect_until(&mut rx, Duration::from_secs(90), |e| {
        e.iter().any(|e| e.disposition == "dead-lettered")
    })
    .await;
    worker.shutdown().await;
    let mine: Vec<&str> = events
        .iter()
        .filter(|e| e.job_id == job.job_id.to_string())
        .map(|e| e.disposition)
        .collect();
    // FleetEnv's retry delays are 1 s, 2 s, 2 s: three retries, then the dead letter.
    assert_eq!(
        mine,
        [
            "retry-scheduled",
            "retry-scheduled",
            "retry-scheduled",
            "dead-lettered"
        ],
        "{events:#?}"
    );
    let mails = harness::smtp()
        .await
        .wait_for_messages(&admin, 1, Duration::from_secs(20))
        .await;
    assert_eq!(
        mails.len(),
        1,
        "one email, for the last attempt only: {mails:#?}"
    );
    let mail = &mails[0];
    assert_eq!(
        mail.subject,
        format!("[{}] User import FAILED: api-unavailable", env.tenant(0))
    );
    assert!(
        mail.body_text.contains("stopped trying this run")
            && mail.body_text.contains(&job.job_id.to_string())
            && mail.body_text.contains("on every try"),
        "{}",
        mail.body_text
    );
    let dead = env.dead_letters().await;
    let reasons: Vec<String> = dead
        .iter()
        .map(|(_, p)| header_str(p, HEADER_REASON).unwrap_or_default())
        .collect();
    assert_eq!(reasons, ["api-unavailable"], "{dead:?}");
    assert!(
        tenant_log(&env.accounts[0]).contains("the fleet gives up on this run (api-unavailable)"),
        "the log says so too"
    );
    // Nothing reached the platform's users: every call was answered 503.
    assert!(
        env.fake
            .users(&env.domain(0))
            .iter()
            .all(|u| !u.username.starts_with("gu"))
    );
    env.cleanup().await;
}

/// A job past `worker.job_timeout` (2 s here, with the fake answering each call in 150 ms so 100
/// users take longer): it ends `job-timeout`, not as a cancellation to retry; the tenant log,
/// the run summary and an email to the admin say so; its dead letter carries that reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_past_its_time_limit_ends_as_job_timeout_and_the_tenant_and_the_admin_are_told() {
    let env = FleetEnv::new(FleetOptions {
        tenants: 1,
        job_timeout: "2s",
        ..FleetOptions::default()
    })
    .await;
    env.accounts[0].put("uploads/user-import.csv", users_csv("slow", 100).as_bytes());
    env.fake.set_faults(Faults {
        latency_ms: 150,
        ..Faults::default()
    });
    let (tx, mut rx) = mpsc::unbounded_channel();
    let worker = env.spawn_worker("w1", tx);
    let job = env.publish_job(env.tenant(0), Utc::now()).await;
    let events = collect_until(&mut rx, Duration::from_secs(60), |e| {
        e.iter().any(|e| e.job_id == job.job_id.to_string())
    })
    .await;
    worker.shutdown().await;
    let event = &events[events.len() - 1];
    assert_eq!(
        (event.disposition, event.reason.as_str()),
        ("dead-lettered", "job-timeout"),
        "{events:#?}"
    );
    let dead = env.dead_letters().await;
    let reasons: Vec<String> = dead
        .iter()
        .map(|(_, p)| header_str(p, HEADER_REASON).unwrap_or_default())
        .collect();
    assert_eq!(reasons, ["job-timeout"], "not `cancelled`");
    let users = env.fake.users(&env.domain(0)).len();
    assert!(users < 100, "stopped part-way: {users} users");

    let log = tenant_log(&env.accounts[0]);
    assert!(
        log.contains("stopped: the job ran past its time limit of 2 s"),
        "{log}"
    );
    assert!(log.contains("end: failed (job-timeout)"), "{log}");
    let summary = env.accounts[0]
        .read("reports/latest-summary.json")
        .unwrap_or_else(|| panic!("a run summary"));
    let summary: serde_json::Value =
        serde_json::from_slice(&summary).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(summary["error"]["reason"], "job-timeout", "{summary}");
    let admin = format!("admin@{}.example.com", env.tenant(0));
    let mails = harness::smtp()
        .await
        .wait_for_messages(&admin, 1, Duration::from_secs(30))
        .await;
    let stopped: Vec<_> = mails
        .iter()
        .filter(|m| m.subject.contains("User import STOPPED: job-timeout"))
        .collect();
    assert_eq!(stopped.len(), 1, "{mails:#?}");
    assert!(
        stopped[0].body_text.contains("time limit of 2 s"),
        "{}",
        stopped[0].body_text
    );
    env.cleanup().await;
}
