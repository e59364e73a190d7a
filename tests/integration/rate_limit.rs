//! The client-side rate limit per platform host (`worker::platform::RateLimits`): several jobs of
//! one worker share it, so the platform never sees more than the limit, and no 429.

use std::sync::Arc;

use platform_fake::{FakeConfig, Faults};
use shared::registry::ImportOptions;
use worker::platform::{HostLimit, RateLimitSettings, RateLimits};

use crate::import_engine::{import, settings, tenant};

const HEADER: &str = "Username,First name,Surname,Email address,Department\n";

fn file(prefix: &str, rows: usize) -> String {
    let mut csv = HEADER.to_owned();
    for i in 0..rows {
        csv.push_str(&format!("{prefix}{i},F,S,{prefix}{i}@x.org,HR\n"));
    }
    csv
}

/// Four imports at once against one fake whose own limit is 100 requests/s; the clients share
/// `limits`. Returns the fake's requests per second and the 429s it sent.
async fn four_imports(limits: Option<Arc<RateLimits>>, rows: usize) -> (Vec<(u64, u64)>, u64) {
    let fake = platform_fake::spawn(FakeConfig {
        faults: Faults {
            requests_per_second_limit: 100,
            final_status_in_answer: true,
            ..Faults::default()
        },
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let settings = settings();
    let mut jobs = Vec::new();
    let mut domains = Vec::new();
    for t in 0..4 {
        let (domain, client) = tenant(&fake, &settings);
        let client = match &limits {
            Some(l) => client.with_rate_limits(l),
            None => client,
        };
        domains.push(domain);
        let csv = file(&format!("t{t}u"), rows);
        jobs.push(tokio::spawn(async move {
            import(&client, &csv, ImportOptions::default(), 8).await
        }));
    }
    for job in jobs {
        let got = job.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            got.summary.counts.created, rows as u64,
            "every row imported"
        );
    }
    let rejected = domains
        .iter()
        .map(|d| fake.calls(d).injected_429)
        .sum::<u64>();
    (fake.requests_per_second(), rejected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_imports_sharing_a_limit_of_100_per_second_stay_under_it_and_meet_no_429() {
    let limits = RateLimits::from_settings(&RateLimitSettings {
        default: Some(HostLimit {
            requests_per_second: 100,
            concurrency: 0,
        }),
        ..Default::default()
    });
    let (per_second, rejected) = four_imports(Some(limits), 100).await;
    let total: u64 = per_second.iter().map(|(_, n)| n).sum();
    // 4 × (GetProfileFields + 100 × (GetUser + SetUser)).
    assert_eq!(total, 4 * 201, "{per_second:?}");
    assert!(
        per_second.iter().all(|(_, n)| *n <= 100),
        "at most 100 in every second: {per_second:?}"
    );
    assert_eq!(rejected, 0, "no 429: {per_second:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_limit_the_same_imports_meet_the_platforms_429s() {
    // The control: the fake's own limit is real, so the test above shows the client's.
    let (per_second, rejected) = four_imports(None, 40).await;
    assert!(rejected > 0, "{per_second:?}");
    assert!(per_second.iter().any(|(_, n)| *n > 100), "{per_second:?}");
}
