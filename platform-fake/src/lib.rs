//! A fake of the tenant platform's public user API (see `README.md` for what it assumes where
//! the public reference is silent), with fault injection: latency, 429, 5xx, hangs and dropped
//! connections.
//!
//! Integration tests start it in-process with [`spawn`] on a free port and talk to it over real
//! HTTP; benchmarks and the local demo run the `platform-fake` binary and drive it through the
//! `/_fake/*` admin routes. It is never part of the production image.
//!
//! Code map: `handle` (start, in-process control) → `app` (router, shared state) → `api`
//! (platform routes) and `admin` (`/_fake/*`); `auth`, `faults` and `conn` (droppable
//! connections) sit in front of `api`; `wire` turns JSON into `command`s, which `tenant`
//! applies and `state` records as tids; `validate` checks profile values; `model` holds the
//! public data types.

mod admin;
mod api;
mod app;
mod auth;
pub mod cli;
mod command;
mod config;
mod conn;
mod faults;
mod handle;
mod model;
mod reply;
mod state;
mod tenant;
mod validate;
mod wire;

use std::future::Future;
use std::net::SocketAddr;

pub use command::MAX_SET_USERS;
pub use config::{FakeConfig, TenantSeed};
pub use faults::{Faults, TIMEOUT_HANG};
pub use handle::{FakeHandle, spawn, spawn_on};
pub use model::{
    ACTIVATED, CallCounts, DEACTIVATED, FakeUser, FieldMode, FieldType, ProfileField, call,
    seed_profile_fields,
};
pub use state::status;

/// Runs the fake on `listen` until `shutdown` completes: the binary's whole life.
///
/// Prints `listening on http://ADDR` on stdout once bound, so scripts can wait for it.
pub async fn run(
    listen: SocketAddr,
    config: FakeConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let handle = spawn_on(listen, config).await?;
    tracing::info!(addr = %handle.addr(), "platform fake listening");
    println!("listening on {}", handle.base_url());
    shutdown.await;
    tracing::info!("shutting down");
    handle.shutdown().await;
    Ok(())
}
