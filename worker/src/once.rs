//! `worker once --tenant NAME`: the whole pipeline for one tenant, no broker and no lock, for
//! operators and local runs. Prints one JSON line; the exit code tells success.

use serde_json::json;
use uuid::Uuid;

use crate::outcome::{JobError, Outcome};
use crate::pipeline::{Deps, JobContext, process_job};

/// The JSON line `worker once` prints.
pub fn result_json(
    tenant: &str,
    job_id: Uuid,
    result: &Result<Outcome, JobError>,
    elapsed_ms: u128,
) -> serde_json::Value {
    match result {
        Ok(outcome) => {
            let mut v = serde_json::to_value(outcome).unwrap_or_else(|_| json!({}));
            v["tenant"] = json!(tenant);
            v["job_id"] = json!(job_id);
            v["elapsed_ms"] = json!(elapsed_ms as u64);
            v
        }
        Err(e) => json!({
            "tenant": tenant,
            "job_id": job_id,
            "outcome": "failed",
            "retryable": e.is_retryable(),
            "reason": e.reason(),
            "error": e.to_string(),
            "elapsed_ms": elapsed_ms as u64,
        }),
    }
}

/// Runs one job now; returns the JSON line and whether it succeeded.
pub async fn run_once(deps: &Deps, tenant: &str) -> (serde_json::Value, bool) {
    let job_id = Uuid::new_v4();
    let started = std::time::Instant::now();
    let result = process_job(deps, tenant, JobContext::manual(job_id)).await;
    let ok = result.is_ok();
    (
        result_json(tenant, job_id, &result, started.elapsed().as_millis()),
        ok,
    )
}
