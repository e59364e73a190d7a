//! The benchmarks, all in one place: figures for `BENCHMARKS.md`, not timed tests.
//!
//! - The pipeline's (`scripts/bench-pipeline.sh`): each drives the worker's own library code
//!   (`worker::account`, `worker::import`, `worker::platform`) against the local stack or
//!   the platform fake, and prints what it measured.
//! - The fleet's (`src/bin/bench-fleet.rs`, `scripts/bench-fleet.sh`): the scheduler and
//!   in-process workers on the real broker and Redis, with the integration tests' harness.
//!
//! Code map: `csvgen` writes import files; `fetch` is the FTPS fetch+hash benchmark; `import`
//! the import-rate and peak-RSS benchmark; `proc` reads the process's memory figures; `stats`
//! reduces repeated runs to best and median. The binaries in `src/bin` parse flags and call one
//! of these, except `bench-fleet`, which holds its three benchmarks itself.

pub mod csvgen;
pub mod fetch;
pub mod fleet;
pub mod import;
pub mod proc;
pub mod stats;

/// Bytes in a mebibyte, for MiB/s figures.
pub const MIB: f64 = 1024.0 * 1024.0;
