//! Upload completeness: the file's size and modification time (MDTM) are looked at twice, at
//! least the tenant's settle interval apart, and the downloaded length is compared with both. A
//! file that changed in between is still being uploaded: it is left for the next run, with no
//! import and no marker. The first look is taken before the download and the second after it, so
//! the download's own time counts towards the interval.

use std::time::Duration;

use chrono::NaiveDateTime;
use tokio::time::Instant;

use crate::account::{Account, AccountError};

/// What one look at the file saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Look {
    pub size: u64,
    /// `None` when the server does not answer MDTM for it; the size alone is then compared.
    pub modified: Option<NaiveDateTime>,
    pub at: Instant,
}

/// Looks at `path`; `Ok(None)` when there is no file.
pub async fn look(session: &mut dyn Account, path: &str) -> Result<Option<Look>, AccountError> {
    let at = Instant::now();
    Ok(session.stat(path).await?.map(|s| Look {
        size: s.size,
        modified: s.modified,
        at,
    }))
}

/// Sleeps until `settle` has passed since `first`, or until `cancel` fires.
pub async fn wait(first: &Look, settle: Duration, cancel: &tokio_util::sync::CancellationToken) {
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = tokio::time::sleep_until(first.at + settle) => {}
    }
}

/// Whether the file stood still: same size and time at both looks, and the download as long.
pub fn settled(first: &Look, second: Option<&Look>, downloaded: u64) -> bool {
    match second {
        None => false,
        Some(second) => {
            first.size == second.size
                && first.size == downloaded
                && first.modified == second.modified
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(size: u64, secs: u32) -> Look {
        Look {
            size,
            modified: chrono::NaiveDate::from_ymd_opt(2026, 1, 1)
                .and_then(|d| d.and_hms_opt(0, 0, secs)),
            at: Instant::now(),
        }
    }

    #[test]
    fn a_file_that_stood_still_is_settled() {
        assert!(settled(&at(10, 1), Some(&at(10, 1)), 10));
    }

    #[test]
    fn a_growing_touched_vanished_or_short_file_is_not() {
        assert!(!settled(&at(10, 1), Some(&at(12, 1)), 10), "grew");
        assert!(!settled(&at(10, 1), Some(&at(10, 2)), 10), "rewritten");
        assert!(!settled(&at(10, 1), None, 10), "gone");
        assert!(
            !settled(&at(10, 1), Some(&at(10, 1)), 8),
            "changed under the download"
        );
    }
}
