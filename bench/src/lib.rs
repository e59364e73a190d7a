//! Benchmarks of the worker's pipeline: figures for `BENCHMARKS.md`, not timed tests. Each
//! benchmark drives the worker's own library code (`worker::ftps`, `worker::import`,
//! `worker::platform`) the way `worker::pipeline` does, against the local stack or the platform
//! fake, and prints what it measured.
//!
//! Code map: `csvgen` writes import files; `fetch` is the FTPS fetch+hash benchmark; `import`
//! the import-rate and peak-RSS benchmark; `proc` reads the process's memory figures; `stats`
//! reduces repeated runs to best and median. The binaries in `src/bin` only parse flags and call
//! one of these; `scripts/bench-pipeline.sh` runs them all.

pub mod csvgen;
pub mod fetch;
pub mod import;
pub mod proc;
pub mod stats;

/// Bytes in a mebibyte, for MiB/s figures.
pub const MIB: f64 = 1024.0 * 1024.0;
