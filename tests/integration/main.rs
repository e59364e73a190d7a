//! The integration test binary: every test runs against real servers (RabbitMQ, Redis, vsftpd with
//! explicit FTPS, an SMTP sink, the platform fake over HTTP). A test whose server is missing fails.
//!
//! Modules:
//! - `harness`: starts and hands out the real servers, one set per test process, each test with its
//!   own names, accounts and ports.
//! - `services`: proves each external service is real (AMQP confirm/ack, Redis SET NX PX, FTPS with
//!   verified certificates, SMTP delivery read back).
//! - `fake_api`: the platform fake behaves as the public API reference says.
//! - `corpus`: the odd and bad files of `tests/corpus/`, each with its expected outcome.
//! - `tenant_env`: one tenant wired to the real servers, with the worker's `Deps`.
//! - `pipeline`: fetch → hash → import → report for one tenant, end to end.
//! - `tenant_options`: the tenant admin's options: verify-only, skip unchanged rows, the
//!   mass-change guard and its confirmation, full sync.
//! - `tenant_files`: what tenant admins get around the import: upload completeness, the archive,
//!   the run summary JSON, and alert emails (no new file, refused logins).
//! - `fleet_env`: several tenants, the test's own queues and Redis prefix, workers in-process or
//!   as processes.
//! - `scheduler`: ticks published once per tenant, with replicas, catch-up and claims.
//! - `broker_restart_support`: a private RabbitMQ node really restarts, and messages survive.
//! - `security`: PASV address ignored, TLS session reuse, tenant isolation, disabled tenants,
//!   no header injection from the file.
//! - `fleet`: workers on the real broker and Redis: lock, dead letters, crash, shutdown.
//! - `observability`: the `scheduler` and `worker` processes' traces (one trace per job, exported
//!   over OTLP to a collector in the test), `/metrics` of both, JSON logs with trace ids, and no
//!   secret in anything they emit, even at `trace`.

mod broker_restart_support;
mod corpus;
mod fake_api;
mod fleet;
mod fleet_env;
mod harness;
mod import_engine;
mod observability;
mod pipeline;
mod rate_limit;
mod scheduler;
mod security;
mod services;
mod tenant_env;
mod tenant_files;
mod tenant_options;
