//! Hash: the file's SHA1 (computed while fetching) names a marker in the tenant's `/tmp`. A marker
//! present means this exact version was processed; deleting it forces the next run to import
//! again. The marker holds `<sha1>  user-import.csv`, the `sha1sum` format, so `sha1sum -c` works
//! on a copy of the file.

use shared::Sha1Digest;

use crate::account::{self, Account, AccountError};

pub const MARKER_DIR: &str = "/tmp";

pub fn marker_name(sha1: &Sha1Digest) -> String {
    format!("{sha1}.sha1")
}

/// The marker of a verify-only run is `<sha1>.verified`: it keeps the same file from being
/// verified again, and does not keep it from being imported once verify-only is turned off.
pub fn marker_name_for(sha1: &Sha1Digest, verify: bool) -> String {
    if verify {
        format!("{sha1}.verified")
    } else {
        marker_name(sha1)
    }
}

pub async fn write_marker_for(
    session: &mut dyn Account,
    sha1: &Sha1Digest,
    verify: bool,
) -> Result<(), AccountError> {
    if !verify {
        return write_marker(session, sha1).await;
    }
    session.mkdir(MARKER_DIR).await?;
    let contents = marker_contents(sha1);
    let path = format!("{MARKER_DIR}/{}", marker_name_for(sha1, true));
    session
        .upload(&path, &mut contents.as_bytes())
        .await
        .map(|_| ())
}

pub fn marker_path(sha1: &Sha1Digest) -> String {
    format!("{MARKER_DIR}/{}", marker_name(sha1))
}

pub fn marker_contents(sha1: &Sha1Digest) -> String {
    format!("{sha1}  user-import.csv\n")
}

pub async fn already_processed(
    session: &mut dyn Account,
    sha1: &Sha1Digest,
) -> Result<bool, AccountError> {
    account::exists_in(session, MARKER_DIR, &marker_name(sha1)).await
}

pub async fn write_marker(
    session: &mut dyn Account,
    sha1: &Sha1Digest,
) -> Result<(), AccountError> {
    session.mkdir(MARKER_DIR).await?;
    let contents = marker_contents(sha1);
    session
        .upload(&marker_path(sha1), &mut contents.as_bytes())
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_is_in_sha1sum_format() {
        let d = Sha1Digest::from_bytes([1; 20]);
        assert_eq!(marker_path(&d), format!("/tmp/{}.sha1", "01".repeat(20)));
        assert_eq!(
            marker_contents(&d),
            format!("{}  user-import.csv\n", "01".repeat(20))
        );
    }
}
