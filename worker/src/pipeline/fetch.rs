//! Fetch: stream `/uploads/user-import.csv` to a local temporary file, hashing it on the way (one
//! pass, a fixed-size buffer), refusing files over the size limit before and during the transfer.

use std::path::Path;

use sha1::{Digest, Sha1};
use shared::Sha1Digest;
use tokio::io::BufWriter;

use crate::account::{Account, AccountError};

pub const UPLOAD_PATH: &str = "/uploads/user-import.csv";
pub const UPLOAD_DIR: &str = "/uploads";
/// A file uploaded under this name is verified only (never imported), once per version.
pub const VERIFY_UPLOAD_PATH: &str = "/uploads/user-import.verify.csv";
/// With `skip_unchanged`: its presence makes the next import send every row (then it is removed).
pub const FULL_FLAG_NAME: &str = "user-import.full";

pub fn full_flag_path() -> String {
    format!("{UPLOAD_DIR}/{FULL_FLAG_NAME}")
}

/// The local copy of the tenant's file.
#[derive(Debug)]
pub struct Fetched {
    pub file: tempfile::NamedTempFile,
    pub size: u64,
    pub sha1: Sha1Digest,
}

/// `Ok(None)`: there is no file at `/uploads/user-import.csv`.
pub async fn fetch(
    session: &mut dyn Account,
    max_bytes: u64,
    work_dir: &Path,
) -> Result<Option<Fetched>, AccountError> {
    fetch_from(session, UPLOAD_PATH, max_bytes, work_dir).await
}

/// `Ok(None)`: there is no file at `path`.
pub async fn fetch_from(
    session: &mut dyn Account,
    path: &str,
    max_bytes: u64,
    work_dir: &Path,
) -> Result<Option<Fetched>, AccountError> {
    // SIZE first: a file over the limit is refused without moving a byte.
    match session.size(path).await? {
        None => return Ok(None),
        Some(size) if size > max_bytes => return Err(AccountError::TooLarge { limit: max_bytes }),
        Some(_) => {}
    }
    let file = tempfile::Builder::new()
        .prefix("user-import-")
        .suffix(".csv")
        .tempfile_in(work_dir)?;
    let mut out = BufWriter::with_capacity(256 * 1024, tokio::fs::File::from_std(file.reopen()?));
    let mut hasher = Sha1::new();
    let size = session
        .download(path, &mut out, max_bytes, &mut |chunk| hasher.update(chunk))
        .await?;
    let Some(size) = size else {
        // Deleted between SIZE and RETR.
        return Ok(None);
    };
    let sha1 = Sha1Digest::from_bytes(hasher.finalize().into());
    Ok(Some(Fetched { file, size, sha1 }))
}
