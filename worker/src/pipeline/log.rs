//! The tenant's progress log, `/log/user-import.log` on its FTPS account, appended while the job
//! runs. It has its own FTPS session, owned by a small task, so a long import never leaves the
//! job's other session idle for it; a broken connection is re-opened, and lines that could not be
//! written are kept and tried again. Lines carry a UTC timestamp and the job id, never a user's
//! data or a secret.

use chrono::{SecondsFormat, Utc};
use shared::ApiKey;
use shared::registry::Tenant;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::account::{Account, Connector};

pub const LOG_DIR: &str = "/log";
pub const LOG_PATH: &str = "/log/user-import.log";

/// Where the log goes.
#[derive(Debug, Clone)]
pub struct LogTarget {
    pub connector: Connector,
    pub tenant: Tenant,
    pub key: ApiKey,
}

/// Sends lines to the log task; cheap to clone.
#[derive(Debug, Clone)]
pub struct TenantLog {
    tx: mpsc::UnboundedSender<String>,
    job: Uuid,
}

/// What the log task managed to write.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LogStats {
    pub written: u64,
    pub lost: u64,
}

/// The running log task; `close` flushes it.
#[derive(Debug)]
pub struct LogTask {
    handle: tokio::task::JoinHandle<LogStats>,
}

impl TenantLog {
    /// Starts the log task. `session`, when given, is used first (saves a login).
    pub fn start(
        target: LogTarget,
        session: Option<Box<dyn Account>>,
        job: Uuid,
    ) -> (Self, LogTask) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = tokio::spawn(pump(target, session, rx));
        (Self { tx, job }, LogTask { handle })
    }

    pub fn line(&self, message: impl AsRef<str>) {
        let stamp = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
        // One entry per line: a message never breaks the log's line structure.
        let message: String = message
            .as_ref()
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let _ = self
            .tx
            .send(format!("{stamp} [job {}] {message}\n", self.job));
    }

    /// A sender for raw messages (each becomes a stamped line), for stages that only report text.
    pub fn sender(&self) -> mpsc::UnboundedSender<String> {
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let me = self.clone();
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                me.line(m);
            }
        });
        tx
    }
}

impl LogTask {
    /// Waits until every line sent before `log` was dropped is written (or given up).
    pub async fn close(self, log: TenantLog) -> LogStats {
        drop(log);
        self.handle.await.unwrap_or_default()
    }
}

async fn pump(
    target: LogTarget,
    mut session: Option<Box<dyn Account>>,
    mut rx: mpsc::UnboundedReceiver<String>,
) -> LogStats {
    let mut stats = LogStats::default();
    let mut pending = String::new();
    let mut pending_lines = 0u64;
    let mut dir_ready = false;
    loop {
        let Some(first) = rx.recv().await else { break };
        pending.push_str(&first);
        pending_lines += 1;
        // Batch whatever else is already queued into one APPE.
        while let Ok(more) = rx.try_recv() {
            pending.push_str(&more);
            pending_lines += 1;
        }
        if flush(&target, &mut session, &mut pending, &mut dir_ready).await {
            stats.written += pending_lines;
            pending_lines = 0;
        }
    }
    if pending_lines > 0 {
        if flush(&target, &mut session, &mut pending, &mut dir_ready).await {
            stats.written += pending_lines;
        } else {
            tracing::warn!(
                lines = pending_lines,
                "tenant log lines could not be written"
            );
            stats.lost += pending_lines;
        }
    }
    if let Some(s) = session {
        s.quit().await;
    }
    stats
}

/// Appends `pending`; on failure re-opens the session once. True when written.
async fn flush(
    target: &LogTarget,
    session: &mut Option<Box<dyn Account>>,
    pending: &mut String,
    dir_ready: &mut bool,
) -> bool {
    for _ in 0..2 {
        if session.is_none() {
            match target.connector.connect(&target.tenant, &target.key).await {
                Ok(s) => *session = Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open the tenant log connection");
                    return false;
                }
            }
        }
        let Some(s) = session.as_mut() else {
            return false;
        };
        if !*dir_ready {
            let _ = s.mkdir(LOG_DIR).await;
            *dir_ready = true;
        }
        match s.append(LOG_PATH, pending.as_bytes()).await {
            Ok(()) => {
                pending.clear();
                return true;
            }
            Err(e) => {
                tracing::warn!(error = %e, "appending to the tenant log failed; reconnecting");
                *session = None;
            }
        }
    }
    false
}
