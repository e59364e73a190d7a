//! The tenant's progress log, `/log/user-import.log` on its account, appended while the job runs.
//! A small task owns the appending: lines are batched into one append, a broken session is
//! re-opened, and lines that could not be written are tried again. It writes only while the job
//! holds its tenant lock (the [`Gate`]): a line sent after the lock was lost is dropped. While
//! no line comes, the task keeps the session alive (a NOOP when it has been idle), so a long
//! import does not lose its session to the server's idle timeout.
//!
//! Lines carry a UTC timestamp and the job id, never a user's data or a secret.

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::Gate;
use super::session::Session;
use crate::layout::{LOG_DIR, LOG_PATH};

/// How long the session may sit idle before the log task sends a NOOP (servers' idle timeouts
/// are typically 300 s or more).
const KEEPALIVE_EVERY: Duration = Duration::from_secs(60);

/// Sends lines to the log task; cheap to clone.
#[derive(Debug, Clone)]
pub struct TenantLog {
    tx: Option<mpsc::UnboundedSender<String>>,
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
    /// A log with nowhere to write yet (before the account is open): lines go to the process's
    /// own log only.
    pub(super) fn detached(job: Uuid) -> Self {
        Self { tx: None, job }
    }

    pub(super) fn start(session: Session, gate: Gate, job: Uuid) -> (Self, LogTask) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = tokio::spawn(pump(session, gate, rx));
        (Self { tx: Some(tx), job }, LogTask { handle })
    }

    pub fn line(&self, message: impl AsRef<str>) {
        let Some(tx) = &self.tx else {
            tracing::info!(line = message.as_ref(), "tenant log (not connected)");
            return;
        };
        let stamp = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
        // One entry per line: a message never breaks the log's line structure.
        let message: String = message
            .as_ref()
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let _ = tx.send(format!("{stamp} [job {}] {message}\n", self.job));
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
    pub(super) async fn close(self, log: TenantLog) -> LogStats {
        drop(log);
        self.handle.await.unwrap_or_default()
    }
}

async fn pump(session: Session, gate: Gate, mut rx: mpsc::UnboundedReceiver<String>) -> LogStats {
    let mut stats = LogStats::default();
    let mut pending = String::new();
    let mut pending_lines = 0u64;
    let mut dir_ready = false;
    loop {
        let first = tokio::select! {
            next = rx.recv() => match next {
                Some(line) => line,
                None => break,
            },
            _ = tokio::time::sleep(KEEPALIVE_EVERY) => {
                keepalive(&session).await;
                continue;
            }
        };
        pending.push_str(&first);
        pending_lines += 1;
        // Batch whatever else is already queued into one append.
        while let Ok(more) = rx.try_recv() {
            pending.push_str(&more);
            pending_lines += 1;
        }
        if !gate.lock_held() {
            stats.lost += pending_lines;
            (pending_lines, pending) = (0, String::new());
            continue;
        }
        if flush(&session, &mut pending, &mut dir_ready).await {
            stats.written += pending_lines;
            pending_lines = 0;
        }
    }
    if pending_lines > 0 {
        if gate.lock_held() && flush(&session, &mut pending, &mut dir_ready).await {
            stats.written += pending_lines;
        } else {
            tracing::warn!(
                lines = pending_lines,
                "tenant log lines could not be written"
            );
            stats.lost += pending_lines;
        }
    }
    stats
}

/// A NOOP on the session if it is open and idle; a broken one is dropped (the next use logs in
/// again).
async fn keepalive(session: &Session) {
    let broken = match session.idle() {
        Some(mut account) => account.keepalive().await.is_err(),
        None => false,
    };
    if broken {
        session.reset().await;
    }
}

/// Appends `pending`; on failure re-opens the session once. True when written.
async fn flush(session: &Session, pending: &mut String, dir_ready: &mut bool) -> bool {
    for _ in 0..2 {
        let mut account = match session.get().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the tenant log connection");
                return false;
            }
        };
        if !*dir_ready {
            let _ = account.mkdir(LOG_DIR).await;
            *dir_ready = true;
        }
        match account.append(LOG_PATH, pending.as_bytes()).await {
            Ok(()) => {
                pending.clear();
                return true;
            }
            Err(e) => {
                tracing::warn!(error = %e, "appending to the tenant log failed; reconnecting");
                drop(account);
                session.reset().await;
            }
        }
    }
    false
}
