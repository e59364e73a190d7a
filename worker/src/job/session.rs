//! The job's one session on the tenant's account, shared by the job and its log (one login per
//! job). A session found broken is dropped; the next use logs in again. While the job is busy
//! elsewhere (a long import), the log keeps the session alive (see `log`).

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use shared::ApiKey;
use shared::registry::Tenant;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Mutex, MutexGuard};

use crate::account::{Account, AccountError, Connector, Stat};

#[derive(Debug, Clone)]
pub(super) struct Session {
    slot: Arc<Mutex<Slot>>,
    connector: Connector,
    tenant: Tenant,
    key: ApiKey,
}

/// The logged-in session, or the stand-in until there is one.
#[derive(Debug)]
pub(super) struct Slot {
    account: Box<dyn Account>,
    open: bool,
}

impl Deref for Slot {
    type Target = dyn Account;
    fn deref(&self) -> &Self::Target {
        self.account.as_ref()
    }
}

impl DerefMut for Slot {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.account.as_mut()
    }
}

impl Session {
    pub(super) fn new(connector: Connector, tenant: Tenant, key: ApiKey) -> Self {
        Self {
            slot: Arc::new(Mutex::new(Slot {
                account: Box::new(Closed),
                open: false,
            })),
            connector,
            tenant,
            key,
        }
    }

    /// Logs in now (the job's first contact with the account).
    pub(super) async fn open(&self) -> Result<(), AccountError> {
        self.get().await.map(drop)
    }

    /// The session, logged in again if it was dropped.
    pub(super) async fn get(&self) -> Result<MutexGuard<'_, Slot>, AccountError> {
        let mut slot = self.slot.lock().await;
        if !slot.open {
            slot.account = self.connector.connect(&self.tenant, &self.key).await?;
            slot.open = true;
        }
        Ok(slot)
    }

    /// The session, if it is open and nobody is using it.
    pub(super) fn idle(&self) -> Option<MutexGuard<'_, Slot>> {
        self.slot.try_lock().ok().filter(|s| s.open)
    }

    /// Drops a broken session; the next `get` logs in again.
    pub(super) async fn reset(&self) {
        let mut slot = self.slot.lock().await;
        slot.account = Box::new(Closed);
        slot.open = false;
    }

    pub(super) async fn close(&self) {
        let mut slot = self.slot.lock().await;
        if slot.open {
            slot.open = false;
            std::mem::replace(&mut slot.account, Box::new(Closed))
                .quit()
                .await;
        }
    }
}

/// No session: every call fails as a transport error.
#[derive(Debug)]
struct Closed;

fn closed<T>() -> Result<T, AccountError> {
    Err(AccountError::Transport("not connected".into()))
}

#[async_trait::async_trait]
impl Account for Closed {
    async fn size(&mut self, _: &str) -> Result<Option<u64>, AccountError> {
        closed()
    }
    async fn stat(&mut self, _: &str) -> Result<Option<Stat>, AccountError> {
        closed()
    }
    async fn list(&mut self, _: &str) -> Result<Vec<String>, AccountError> {
        closed()
    }
    async fn download(
        &mut self,
        _: &str,
        _: &mut (dyn AsyncWrite + Unpin + Send),
        _: u64,
        _: &mut (dyn for<'b> FnMut(&'b [u8]) + Send),
    ) -> Result<Option<u64>, AccountError> {
        closed()
    }
    async fn upload(
        &mut self,
        _: &str,
        _: &mut (dyn AsyncRead + Unpin + Send),
    ) -> Result<u64, AccountError> {
        closed()
    }
    async fn append(&mut self, _: &str, _: &[u8]) -> Result<(), AccountError> {
        closed()
    }
    async fn rename(&mut self, _: &str, _: &str) -> Result<(), AccountError> {
        closed()
    }
    async fn remove(&mut self, _: &str) -> Result<(), AccountError> {
        closed()
    }
    async fn mkdir(&mut self, _: &str) -> Result<(), AccountError> {
        closed()
    }
    async fn keepalive(&mut self) -> Result<(), AccountError> {
        closed()
    }
    async fn quit(self: Box<Self>) {}
}
