//! How a job ends. Terminal outcomes (`Outcome`) are acked; a `JobError` is either permanent
//! (dead-letter at once: retrying cannot help) or retryable (network, 5xx, broker: try again later).
//! The split is made by type where the error arises, never by reading a message.

use serde::Serialize;

/// Row counts of an import, as shown in the log, the email subject and the JSON result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Data rows read from the file (header excluded).
    pub rows: u64,
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    /// Rows refused by validation before any call for them.
    pub invalid: u64,
    /// Rows the platform refused, or whose calls failed after every retry.
    pub failed: u64,
    /// Rows whose write was accepted but whose final status did not arrive in time.
    pub unconfirmed: u64,
    /// Users absent from the file deactivated by full sync (not rows of the file).
    pub deactivated: u64,
    /// Rows whose `Account state` deactivated an existing user (not counted in `updated`).
    pub deactivated_by_state: u64,
    /// Rows for protected users (`import.protected_users`, the nominated admin): never changed.
    pub protected: u64,
}

impl Counts {
    pub fn ok(&self) -> u64 {
        self.created + self.updated + self.unchanged + self.deactivated_by_state
    }
}

/// A terminal outcome of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    /// `/uploads/user-import.csv` is not there.
    NoFile,
    /// This exact version of the file was processed before (its marker is in `/tmp`).
    AlreadyProcessed { sha1: String },
    /// The file's size or modification time changed between two looks (an upload still in
    /// progress): it is left untouched for the next run.
    UploadIncomplete {
        size_before: u64,
        size_after: Option<u64>,
    },
    /// The file was imported to its end (per-row failures included).
    Imported {
        sha1: String,
        counts: Counts,
        report_path: String,
        email_sent: bool,
    },
    /// Verify only: every row was checked and reported; nothing was written to the platform.
    Verified {
        sha1: String,
        counts: Counts,
        report_path: String,
        email_sent: bool,
    },
    /// The mass-change guard held the file: nothing was written; the admin must confirm it.
    Held {
        sha1: String,
        deactivations: u64,
        updates: u64,
        existing: u64,
        email_sent: bool,
    },
    /// A scheduled tick the account's tick record says already ran, by another job (published
    /// again after Redis lost its records): nothing was done.
    DuplicateTick { recorded_job: uuid::Uuid },
    /// A scheduled tick older than the one the account's tick record says ran last (a late
    /// delivery, a retry overtaken by the next tick): the later run covered it, nothing was done.
    Superseded {
        recorded: chrono::DateTime<chrono::Utc>,
        recorded_job: uuid::Uuid,
    },
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::NoFile => "no-file",
            Outcome::AlreadyProcessed { .. } => "already-processed",
            Outcome::UploadIncomplete { .. } => "upload-incomplete",
            Outcome::Imported { .. } => "imported",
            Outcome::Verified { .. } => "verified",
            Outcome::Held { .. } => "held",
            Outcome::DuplicateTick { .. } => "duplicate-tick",
            Outcome::Superseded { .. } => "superseded",
        }
    }
}

/// Why a job could not reach a terminal outcome.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("permanent failure: {0}")]
    Permanent(#[source] Permanent),
    #[error("retryable failure: {0}")]
    Retryable(#[source] Retryable),
}

impl JobError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, JobError::Retryable(_))
    }

    /// A short machine-readable reason (`bad-ftps-credentials`, `network`, …).
    pub fn reason(&self) -> &'static str {
        match self {
            JobError::Permanent(p) => p.reason(),
            JobError::Retryable(r) => r.reason(),
        }
    }
}

/// Failures that retrying cannot fix: they need an operator or the tenant.
#[derive(Debug, thiserror::Error)]
pub enum Permanent {
    #[error("unknown tenant {0:?}")]
    UnknownTenant(String),
    #[error("tenant {0} is disabled")]
    DisabledTenant(String),
    #[error("{0}")]
    MissingKey(String),
    #[error("the FTPS server refused the tenant's credentials")]
    FtpsCredentials,
    #[error("the FTPS server's certificate was refused: {0}")]
    FtpsCertificate(String),
    #[error("the platform API refused the tenant's credentials (HTTP {0})")]
    ApiCredentials(u16),
    #[error("the file is larger than the limit of {limit} bytes ({size} bytes)")]
    FileTooLarge { size: u64, limit: u64 },
    #[error("the file cannot be imported: {0}")]
    UnreadableFile(String),
    #[error("the platform API answered in a way this release does not understand: {0}")]
    ApiProtocol(String),
    #[error("the tenant's account refused a write: {0}")]
    AccountRefused(String),
    #[error("the server's host key is not the pinned one: {0}")]
    HostKey(String),
    /// `/uploads/user-import.undo` cannot be carried out (no such run, too old, undone before).
    #[error("the undo cannot be done: {0}")]
    UndoRefused(String),
    /// The job ran past `worker.job_timeout` and was stopped (what it did so far stays done).
    #[error("the job ran past its time limit of {} s and was stopped", .0.as_secs())]
    JobTimeout(std::time::Duration),
}

impl Permanent {
    pub fn reason(&self) -> &'static str {
        match self {
            Permanent::UnknownTenant(_) => "unknown-tenant",
            Permanent::DisabledTenant(_) => "disabled-tenant",
            Permanent::MissingKey(_) => "missing-api-key",
            Permanent::FtpsCredentials => "bad-ftps-credentials",
            Permanent::FtpsCertificate(_) => "ftps-certificate",
            Permanent::ApiCredentials(_) => "bad-api-credentials",
            Permanent::FileTooLarge { .. } => "file-too-large",
            Permanent::UnreadableFile(_) => "unreadable-file",
            Permanent::ApiProtocol(_) => "api-protocol",
            Permanent::AccountRefused(_) => "account-refused",
            Permanent::HostKey(_) => "host-key-refused",
            Permanent::UndoRefused(_) => "undo-refused",
            Permanent::JobTimeout(_) => "job-timeout",
        }
    }
}

/// Failures that may pass: the job is tried again later, then dead-lettered.
#[derive(Debug, thiserror::Error)]
pub enum Retryable {
    #[error("FTPS: {0}")]
    Ftps(String),
    #[error("platform API unavailable: {0}")]
    Api(String),
    #[error("local I/O: {0}")]
    Io(String),
    #[error("{0}")]
    Store(String),
    #[error("the job was cancelled before it finished")]
    Cancelled,
    /// A bug or a crash inside this worker (a panic, a task that died): not the tenant's doing,
    /// and another attempt (maybe on another worker) may not meet it.
    #[error("worker fault: {0}")]
    WorkerFault(String),
}

impl Retryable {
    pub fn reason(&self) -> &'static str {
        match self {
            Retryable::Ftps(_) => "ftps-unavailable",
            Retryable::Api(_) => "api-unavailable",
            Retryable::Io(_) => "local-io",
            Retryable::Store(_) => "redis-unavailable",
            Retryable::Cancelled => "cancelled",
            Retryable::WorkerFault(_) => "worker-fault",
        }
    }
}

impl From<Permanent> for JobError {
    fn from(p: Permanent) -> Self {
        JobError::Permanent(p)
    }
}

impl From<Retryable> for JobError {
    fn from(r: Retryable) -> Self {
        JobError::Retryable(r)
    }
}
