//! A session that survives a job of any length: [`Resilient`] wraps one transport's session and
//! logs in again (same tenant, same key) when the connection is gone — closed by the server's
//! idle timeout during a long import, or lost mid-job — without re-running what already
//! succeeded. It is what [`super::Connector::connect`] hands out, so every caller gets it.
//!
//! What is re-run after a reconnect, and what is not:
//! - reads and idempotent writes (`size`, `stat`, `list`, `remove`, `mkdir`, `keepalive`) are
//!   run again once on the new connection;
//! - `rename` is checked first (the source gone and the target there: it had happened);
//! - `append` sends only the bytes that did not arrive: the file's size before and after tells;
//! - `upload` and `download` are not re-run (their reader and writer have moved on): the error is
//!   returned, the connection is made again for the next command, and a cut-off upload's
//!   temporary file is removed;
//! - before an `upload`, `append` or `download` after [`Resilient::PROBE_AFTER`] of silence, a
//!   NOOP checks the connection first, so a session closed while idle costs a reconnect, not a
//!   failed transfer.
//!
//! An upload or append into a folder that is missing creates the folder and tries again, when
//! nothing was sent yet.

use std::time::{Duration, Instant};

use shared::ApiKey;
use shared::registry::Tenant;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{Account, AccountError, Connector, Stat};

/// One tenant's session that reconnects by itself (see the module documentation).
pub struct Resilient {
    inner: Option<Box<dyn Account>>,
    connector: Connector,
    tenant: Tenant,
    key: ApiKey,
    last_used: Instant,
    probe_after: Duration,
    reconnects: u32,
}

impl std::fmt::Debug for Resilient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resilient")
            .field("tenant", &self.tenant.name)
            .field("connected", &self.inner.is_some())
            .field("reconnects", &self.reconnects)
            .finish_non_exhaustive()
    }
}

/// Trouble that a new connection may cure.
fn is_connection_trouble(e: &AccountError) -> bool {
    matches!(e, AccountError::Transport(_) | AccountError::Timeout(_))
}

impl Resilient {
    /// A transfer after this much silence is preceded by a NOOP. Well under any server's idle
    /// timeout (vsftpd's default is 300 s), so a live session is never dropped by mistake.
    pub const PROBE_AFTER: Duration = Duration::from_secs(30);

    /// Logs in (the first connection's errors, such as wrong credentials, are returned as is).
    pub async fn open(
        connector: Connector,
        tenant: Tenant,
        key: ApiKey,
    ) -> Result<Self, AccountError> {
        let inner = connector.connect_once(&tenant, &key).await?;
        Ok(Self {
            inner: Some(inner),
            connector,
            tenant,
            key,
            last_used: Instant::now(),
            probe_after: Self::PROBE_AFTER,
            reconnects: 0,
        })
    }

    /// Checks the connection before a transfer after `silence` instead of
    /// [`Self::PROBE_AFTER`] (zero: before every transfer).
    pub fn set_probe_after(&mut self, silence: Duration) {
        self.probe_after = silence;
    }

    /// How many times the session logged in again.
    pub fn reconnects(&self) -> u32 {
        self.reconnects
    }

    /// The live session, connecting again when the last one was lost.
    async fn session(&mut self) -> Result<&mut Box<dyn Account>, AccountError> {
        if self.inner.is_none() {
            let session = self.connector.connect_once(&self.tenant, &self.key).await?;
            self.reconnects += 1;
            tracing::info!(
                tenant = %self.tenant.name,
                reconnects = self.reconnects,
                "account: logged in again after losing the connection"
            );
            self.inner = Some(session);
        }
        self.last_used = Instant::now();
        match self.inner.as_mut() {
            Some(s) => Ok(s),
            None => Err(AccountError::Transport("no session".into())),
        }
    }

    /// Before a transfer: after a long silence, make sure the connection is still there.
    async fn probed(&mut self) -> Result<&mut Box<dyn Account>, AccountError> {
        if self.inner.is_some() && self.last_used.elapsed() >= self.probe_after {
            let alive = match self.inner.as_mut() {
                Some(s) => s.keepalive().await.is_ok(),
                None => false,
            };
            if !alive {
                self.drop_session();
            }
        }
        self.session().await
    }

    /// The connection's state is unknown after trouble: the next command starts afresh.
    fn drop_session(&mut self) {
        // Nothing to say politely on a connection that failed; dropping it closes it.
        self.inner = None;
    }

    /// Notes trouble and passes the result on.
    fn seen<T>(&mut self, r: Result<T, AccountError>) -> Result<T, AccountError> {
        if let Err(e) = &r
            && is_connection_trouble(e)
        {
            self.drop_session();
        }
        r
    }

    /// Removes what a cut-off upload left (its session could not: the connection was gone).
    /// Listing cannot find it: FTP servers leave dot files out of `NLST`.
    async fn remove_leftover(&mut self, temp: &str) -> Result<(), AccountError> {
        let r = self.session().await?.remove(temp).await;
        self.seen(r)
    }

    /// The folder of `path`, for "create it when missing".
    fn parent(path: &str) -> Option<&str> {
        path.rsplit_once('/')
            .map(|(dir, _)| dir)
            .filter(|d| !d.is_empty())
    }
}

/// Runs an idempotent command, again once on a new connection after connection trouble.
macro_rules! twice {
    ($self:ident, |$s:ident| $call:expr) => {{
        let first = {
            let $s = $self.session().await?;
            $call.await
        };
        match first {
            Err(e) if is_connection_trouble(&e) => {
                tracing::debug!(error = %e, "account: connection trouble, trying again");
                $self.drop_session();
                let again = {
                    let $s = $self.session().await?;
                    $call.await
                };
                $self.seen(again)
            }
            other => other,
        }
    }};
}

#[async_trait::async_trait]
impl Account for Resilient {
    async fn size(&mut self, path: &str) -> Result<Option<u64>, AccountError> {
        twice!(self, |s| s.size(path))
    }

    async fn stat(&mut self, path: &str) -> Result<Option<Stat>, AccountError> {
        twice!(self, |s| s.stat(path))
    }

    async fn list(&mut self, dir: &str) -> Result<Vec<String>, AccountError> {
        twice!(self, |s| s.list(dir))
    }

    async fn download(
        &mut self,
        path: &str,
        dest: &mut (dyn AsyncWrite + Unpin + Send),
        max_bytes: u64,
        inspect: &mut (dyn for<'b> FnMut(&'b [u8]) + Send),
    ) -> Result<Option<u64>, AccountError> {
        let r = self
            .probed()
            .await?
            .download(path, dest, max_bytes, inspect)
            .await;
        self.seen(r)
    }

    async fn upload(
        &mut self,
        path: &str,
        src: &mut (dyn AsyncRead + Unpin + Send),
    ) -> Result<u64, AccountError> {
        let mut counted = Counted {
            inner: src,
            read: 0,
        };
        let first = self.probed().await?.upload(path, &mut counted).await;
        let r = match first {
            // Refused before a byte was read: most likely a missing folder.
            Err(AccountError::Refused(why)) if counted.read == 0 => match Self::parent(path) {
                Some(dir) if self.mkdir(dir).await.is_ok() => {
                    self.session().await?.upload(path, &mut counted).await
                }
                _ => Err(AccountError::Refused(why)),
            },
            other => other,
        };
        if r.is_err() {
            let leftover = self.inner.as_mut().and_then(|s| s.take_leftover());
            if r.as_ref().is_err_and(is_connection_trouble) {
                self.drop_session();
            }
            if let Some(temp) = leftover
                && let Err(e) = self.remove_leftover(&temp).await
            {
                tracing::warn!(error = %e, "account: a cut-off upload's temporary file stays");
            }
        }
        r
    }

    async fn append(&mut self, path: &str, bytes: &[u8]) -> Result<(), AccountError> {
        let session = self.probed().await?;
        let before = session.size(path).await;
        let before = self.seen(before)?.unwrap_or(0);
        let first = self.session().await?.append(path, bytes).await;
        match first {
            Ok(()) => Ok(()),
            Err(AccountError::Refused(why)) => match Self::parent(path) {
                Some(dir) if self.mkdir(dir).await.is_ok() => {
                    let r = self.session().await?.append(path, bytes).await;
                    self.seen(r)
                }
                _ => Err(AccountError::Refused(why)),
            },
            Err(e) if is_connection_trouble(&e) => {
                tracing::debug!(error = %e, "account: append cut off; sending what did not arrive");
                self.drop_session();
                let now = self.session().await?.size(path).await;
                let now = self.seen(now)?.unwrap_or(0);
                let arrived = usize::try_from(now.saturating_sub(before)).unwrap_or(usize::MAX);
                if arrived >= bytes.len() {
                    return Ok(());
                }
                let r = self.session().await?.append(path, &bytes[arrived..]).await;
                self.seen(r)
            }
            Err(e) => Err(e),
        }
    }

    async fn rename(&mut self, from: &str, to: &str) -> Result<(), AccountError> {
        let first = self.session().await?.rename(from, to).await;
        match first {
            Err(e) if is_connection_trouble(&e) => {
                self.drop_session();
                let gone = self.size(from).await?.is_none();
                let there = self.size(to).await?.is_some();
                if gone && there {
                    return Ok(());
                }
                let r = self.session().await?.rename(from, to).await;
                self.seen(r)
            }
            other => other,
        }
    }

    async fn remove(&mut self, path: &str) -> Result<(), AccountError> {
        twice!(self, |s| s.remove(path))
    }

    async fn mkdir(&mut self, dir: &str) -> Result<(), AccountError> {
        twice!(self, |s| s.mkdir(dir))
    }

    /// NOOP; a connection found dead is replaced, so the session is alive afterwards.
    async fn keepalive(&mut self) -> Result<(), AccountError> {
        twice!(self, |s| s.keepalive())
    }

    fn take_leftover(&mut self) -> Option<String> {
        self.inner.as_mut().and_then(|s| s.take_leftover())
    }

    async fn quit(self: Box<Self>) {
        if let Some(inner) = self.inner {
            inner.quit().await;
        }
    }
}

/// Counts what an upload read from its source (nothing read: it can be tried again).
struct Counted<'a> {
    inner: &'a mut (dyn AsyncRead + Unpin + Send),
    read: u64,
}

impl AsyncRead for Counted<'_> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut *self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        self.read += n as u64;
        r
    }
}
