//! The scheduler: publishes exactly one user-import job per tenant per tick of the tenant's
//! schedule, with any number of replicas and across restarts. `main.rs` only parses flags, loads
//! the settings and the registry, installs the signal handlers and calls [`run()`]; everything else
//! is here, testable without a process.
//!
//! # Ticks ([`ticks`])
//! The tick due at `now` is the latest `T` of the tenant's schedule (cron + time zone) with
//! `now - catch_up_window < T <= now` and `T > last`, where `last` is the last tick published for
//! the tenant. Ticks missed while no scheduler ran coalesce into the latest one; nothing older
//! than the window is published. The loop polls at start (catch-up) and then every
//! min(time to the earliest next tick, 30 s).
//!
//! # One job per tick ([`ledger`], Redis)
//! Keys, with `<p>` = `redis.key_prefix`:
//! - `<p>:sched:<tenant>:last`: the last tick published (Unix seconds);
//! - `<p>:sched:<tenant>:claim`: `<tick>:<random token>`, `SET NX PX <claim_ttl>` (30 s).
//!
//! To publish tick `T` a replica:
//! 1. claims it: `SET <p>:sched:<tenant>:claim "<T>:<token>" NX PX 30000`; if the key exists,
//!    another replica is on it (reported as *busy*);
//! 2. re-reads `last` and skips if `last >= T` (another replica published it first);
//! 3. publishes with a broker confirm ([`publisher`]);
//! 4. commits with one Lua script ([`ledger::COMMIT`]): `last = max(last, T)` and the claim deleted
//!    only if it still holds our value.
//!
//! A publish that fails releases the claim by compare-and-delete ([`ledger::RELEASE`]) and the
//! loop retries the tick with backoff. A replica that dies holding a claim leaves a key that
//! expires after the claim TTL; the next poll of any replica then publishes the tick. The claim
//! TTL exceeds everything done while holding it (publish timeout + two Redis round trips), so a
//! live replica's claim does not expire under it.
//!
//! **The one remaining window:** a replica whose publish was confirmed but which dies (or loses
//! Redis for good) before the commit leaves `last` behind; once its claim expires, another replica
//! publishes the same tick again, so the queue holds two jobs with the same `message_id`. The
//! worker makes that harmless: it records the first fresh delivery of each scheduled tick in Redis
//! and acks a second one as `duplicate` without running it (`docs/fleet.md`; the chaos suite's
//! `scheduler-replicas` trial crashes replicas mid-poll and counts the jobs accepted per tick).
//! A publish whose confirm never arrives (timeout, connection lost after the broker took the
//! message) cannot be told from a lost one: it is retried, which is the same case with the same
//! remedy.
//!
//! # Publishing ([`publisher`])
//! One connection and one channel in confirm mode; the topology of every served region
//! (`scheduler.regions`, or every region of the registry when empty) declared at each connection.
//! Messages are persistent, `message_id` = `<tenant>:<tick>`, a new UUID v4 `job_id`, trigger
//! `schedule` (`manual` for [`Scheduler::trigger`]). A returned (unroutable) or nacked message is
//! a failure. On a broker error the connection is dropped and the loop reconnects with backoff.
//! `Health::broker` and `Health::redis` follow the connections.
//!
//! # Traces
//! A poll is a span (a trace of its own); each tenant's tick is the root span of its job's trace,
//! linked to the poll; the publish is a producer span under it whose context travels in the
//! message's `traceparent` header, so the worker continues the same trace (docs/observability.md).
//!
//! # Modules
//! [`ticks`] (pure tick logic), [`ledger`] (Redis claim and commit), [`publisher`] (AMQP),
//! [`scheduler`] (poll, once, trigger, registry reload), [`run`](mod@run) (the loop),
//! [`report`] (what a poll did), [`options`] (validated settings), [`backoff`], [`metrics`],
//! [`error`].

pub mod backoff;
pub mod error;
pub mod ledger;
pub mod metrics;
pub mod options;
pub mod publisher;
pub mod report;
pub mod run;
pub mod scheduler;
pub mod ticks;

pub use error::SchedulerError;
pub use ledger::{Claim, Ledger};
pub use options::Options;
pub use publisher::{Publisher, PublisherConfig};
pub use report::{NextTick, PollReport, TickFailure};
pub use run::run;
pub use scheduler::{Scheduler, next_ticks};

/// The time types of this API (`DateTime<Utc>`), for callers that do not depend on chrono
/// themselves (the integration tests).
pub use chrono;
