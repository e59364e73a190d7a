//! The running job owns its writes: once its tenant lock is lost, no kind of write reaches its
//! server — not the account (files, folders, renames, removals, markers, log lines), not the
//! platform, not the SMTP sink. Checked at the servers: the account's files on disk, the fake's
//! call counts, the sink's mailbox.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;
use shared::Sha1Digest;
use tokio_util::sync::CancellationToken;
use worker::job::{JobRun, Lease, LockHold, Mail};
use worker::pipeline::hash;
use worker::{JobContext, JobError};

use harness::tenant_env::TenantEnv;

/// Every file of the account with its bytes.
fn files(env: &TenantEnv) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![env.account.path("")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.insert(format!("{}/", path.display()), Vec::new());
                dirs.push(path);
            } else {
                out.insert(
                    path.display().to_string(),
                    std::fs::read(&path).unwrap_or_default(),
                );
            }
        }
    }
    out
}

async fn wait_for_log_line(env: &TenantEnv, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !env.log().contains(line) {
        assert!(Instant::now() < deadline, "{line:?} never reached the log");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn mails_to(admin: &str, all: &[harness::ReceivedMail]) -> usize {
    all.iter()
        .filter(|m| m.envelope_to.iter().any(|t| t == admin))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_lock_is_lost_no_write_of_any_kind_reaches_its_server() {
    let env = TenantEnv::new().await;
    env.account.put("uploads/user-import.full", b"");
    env.account
        .put("uploads/user-import.confirm", b"a confirmation");
    let lost = CancellationToken::new();
    let mut ctx = JobContext::manual(uuid::Uuid::new_v4());
    ctx.lock = Some(LockHold {
        lease: Lease::new(tokio::time::Instant::now(), Duration::from_secs(60)),
        lost: lost.clone(),
    });
    let mut job = JobRun::new(&env.deps, env.tenant(), ctx).unwrap_or_else(|e| panic!("{e}"));
    job.connect().await.unwrap_or_else(|e| panic!("{e}"));
    // While the lock is held, each kind of write does reach its server.
    job.log("a line while the lock is held");
    wait_for_log_line(&env, "a line while the lock is held").await;
    job.put_bytes("/reports/while-held.txt", b"held")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        env.account.read("reports/while-held.txt").as_deref(),
        Some(&b"held"[..])
    );

    let files_before = files(&env);
    let calls_before = env.fake.calls(&env.domain).total();
    let smtp = harness::smtp().await;
    let mails_before = mails_to(&env.admin_email, &smtp.all_messages());

    lost.cancel();
    let stopped = |r: Result<(), JobError>, what: &str| {
        assert!(
            matches!(&r, Err(e) if e.reason() == "cancelled"),
            "{what}: {r:?}"
        );
    };
    stopped(
        job.put_bytes("/reports/after.txt", b"late").await.map(drop),
        "upload",
    );
    stopped(job.mkdir("/late-folder").await, "mkdir");
    stopped(
        job.rename("/uploads/user-import.full", "/uploads/renamed")
            .await,
        "rename",
    );
    stopped(
        job.remove("/uploads/user-import.full").await,
        "full-push flag removal",
    );
    stopped(
        job.remove("/uploads/user-import.confirm").await,
        "confirmation removal",
    );
    let sha1 = Sha1Digest::from_bytes([7; 20]);
    stopped(hash::write_marker(&job, &sha1, false).await, "marker");
    stopped(hash::write_marker(&job, &sha1, true).await, "verify marker");
    let client = job.platform(2);
    let write = client
        .set_user(&json!({"Username": "late", "Email": "late@example.com"}))
        .await;
    assert!(
        matches!(write, Err(worker::platform::ApiError::Stopped)),
        "platform write: {write:?}"
    );
    let mailed = job
        .email(Mail {
            subject: "late".into(),
            body: "late".into(),
            ..Mail::default()
        })
        .await;
    assert!(mailed.is_err(), "email: {mailed:?}");
    job.log("a line after the lock was lost");
    let _record = job.close().await;

    // Nothing reached a server.
    assert_eq!(files(&env), files_before, "the account is untouched");
    assert!(!env.log().contains("after the lock was lost"));
    assert_eq!(
        env.fake.calls(&env.domain).total(),
        calls_before,
        "no request reached the platform"
    );
    assert_eq!(
        mails_to(&env.admin_email, &smtp.all_messages()),
        mails_before,
        "no mail reached the sink"
    );
}
