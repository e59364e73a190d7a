//! `worker once --tenant NAME`: the whole pipeline for one tenant, no broker and no lock, for
//! operators and local runs. Prints one JSON line; the exit code tells success.

use uuid::Uuid;

use crate::deps::Deps;
use crate::job::JobContext;
use crate::job::record::once_json;
use crate::pipeline::process_job;

/// Runs one job now; returns the JSON line and whether it succeeded.
pub async fn run_once(deps: &Deps, tenant: &str) -> (serde_json::Value, bool) {
    let job_id = Uuid::new_v4();
    let started = std::time::Instant::now();
    let result = process_job(deps, tenant, JobContext::manual(job_id)).await;
    let line = once_json(tenant, job_id, &result, started.elapsed().as_millis());
    (line, result.is_ok())
}
