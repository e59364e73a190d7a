//! The integration test binary: every test runs against real servers (RabbitMQ, Redis, vsftpd with
//! explicit FTPS, an SMTP sink, the platform fake over HTTP). A test whose server is missing fails.
//!
//! The harness (the servers, `TenantEnv`, `FleetEnv`, the fixtures) is this package's library,
//! `harness` (`tests/src`), shared with the fault trials and the benchmarks.
//!
//! Modules:
//! - `services`: proves each external service is real (AMQP confirm/ack, Redis SET NX PX, FTPS with
//!   verified certificates, SMTP delivery read back).
//! - `fake_api`: the platform fake behaves as the public API reference says.
//! - `corpus`: the odd and bad files of `tests/corpus/`, each with its expected outcome.
//! - `refusal`: a refused write or file is told to the admin once and not run again.
//! - `admin_outcomes`: what the tenant admin is told: each refused file once (and its correction
//!   imported), one invalid count everywhere, lone-CR line numbers, the reject file fixed and
//!   uploaded again, the re-run request.
//! - `job_run`: a job that lost its tenant lock writes nothing more, of any kind.
//! - `pipeline`: fetch → hash → import → report → archive → summary for one tenant, end to end;
//!   the core scenarios on vsftpd, ProFTPD and OpenSSH SFTP each (no data connection refused, no
//!   partial file left, also when a session is killed during an upload).
//! - `tenant_options`: the tenant admin's options: verify-only, skip unchanged rows, the
//!   mass-change guard and its confirmation, full sync.
//! - `tenant_safeguards`: the tenant admin stays in control: `notify` recipients, protected
//!   users, the report email's HTML part (parsed, injection from the file), undoing a run.
//! - `tenant_files`: what tenant admins get around the import: upload completeness, the archive,
//!   the run summary JSON, and alert emails (no new file, refused logins).
//! - `scheduler`: ticks published once per tenant, with replicas, catch-up and claims.
//! - `broker_restart`: the harness's private RabbitMQ node really restarts, and messages survive.
//! - `security`: PASV address ignored, TLS session reuse, tenant isolation, disabled tenants,
//!   no header injection from the file.
//! - `fleet`: workers on the real broker and Redis: lock, dead letters, crash, shutdown.
//! - `dead_letters`: the jobs queue dead-letters at least once.
//! - `redis_loss`: Redis losing data (empty restart, older snapshot, FLUSHALL) under the locks.
//! - `transports`: the tenant's account through `worker::account::Connector` on vsftpd, ProFTPD
//!   (TLS session reuse required) and OpenSSH SFTP (pinned host key): every operation, no data
//!   connection refused, folders created, no partial upload, refused logins and host keys, lost
//!   sessions logged in again.
//! - `observability`: the `scheduler` and `worker` processes' traces (one trace per job, exported
//!   over OTLP to a collector in the test), `/metrics` of both, JSON logs with trace ids, and no
//!   secret in anything they emit, even at `trace`.
//! - `doctor`: `worker doctor` as a process: all green for a good FTPS and SFTP tenant; a wrong
//!   key, an unknown CA, a missing folder, an unknown admin, an unreachable SMTP host each fail
//!   their step with its hint; nothing changes on the account or the platform; its SMTP dialogue
//!   over STARTTLS and TLS with the relay's certificate verified.
//! - `mailer`: the report email over STARTTLS and TLS from the first byte, its attachment sent
//!   from its file part by part and received byte for byte.
//! - `monitoring`: every metric the alert rules and the dashboard use is served by the binaries.

mod admin_outcomes;
mod broker_restart;
mod corpus;
mod dead_letters;
mod doctor;
mod fake_api;
mod fleet;
mod import_engine;
mod job_run;
mod mailer;
mod monitoring;
mod observability;
mod otlp_http;
mod pipeline;
mod rate_limit;
mod redis_loss;
mod refusal;
mod scheduler;
mod security;
mod services;
mod tenant_files;
mod tenant_options;
mod tenant_safeguards;
mod transports;
