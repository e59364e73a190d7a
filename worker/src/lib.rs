//! The worker: consumes user-import jobs and runs, for one tenant at a time, fetch (FTPS) → hash
//! (SHA1 marker) → import (platform API) → report (log, results CSV, email). `main.rs` only parses
//! flags and builds [`pipeline::Deps`]; everything else is here, testable without a process.

pub mod account;
pub mod alerts;
pub mod email;
pub mod fleet;
pub mod import;
pub mod metrics;
pub mod once;
pub mod outcome;
pub mod pipeline;
pub mod platform;

/// The FTPS implementation of the tenant's account, where it was before the account interface.
pub use account::ftps;

pub use outcome::{Counts, JobError, Outcome};
pub use pipeline::{Deps, JobContext, process_job};
