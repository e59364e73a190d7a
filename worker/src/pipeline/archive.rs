//! Stage archive: after an import, the exact bytes that were imported (the local copy, whose SHA1 is the
//! marker's) are uploaded to `/archive/user-import-<UTC time>-<short SHA1>.csv`, and archived files
//! older than the tenant's retention are deleted. `/uploads/user-import.csv` stays in place: the
//! tenant overwrites it with the next version, and its marker keeps it from being imported twice.
//! Only files named as this stage names them are ever deleted; the age is read from the name, so
//! it does not depend on the server's clock or on MDTM.

use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use shared::Sha1Digest;

use super::Step;
use crate::job::JobRun;
use crate::layout::ARCHIVE_DIR;
use crate::outcome::JobError;
const PREFIX: &str = "user-import-";
const TIME_FORMAT: &str = "%Y%m%dT%H%M%SZ";

pub fn archive_name(at: DateTime<Utc>, sha1: &Sha1Digest) -> String {
    format!("{PREFIX}{}-{}.csv", at.format(TIME_FORMAT), sha1.short())
}

/// When an archived file was made, from its name; `None` for a name this stage did not make.
pub fn archived_at(name: &str) -> Option<DateTime<Utc>> {
    let rest = name.strip_prefix(PREFIX)?.strip_suffix(".csv")?;
    let (time, hash) = rest.split_once('-')?;
    if hash.is_empty() || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    NaiveDateTime::parse_from_str(time, TIME_FORMAT)
        .ok()
        .map(|t| t.and_utc())
}

/// The archived files older than `retention_days` at `now`.
pub fn expired(names: &[String], now: DateTime<Utc>, retention_days: u32) -> Vec<String> {
    let cutoff = now - TimeDelta::days(i64::from(retention_days));
    names
        .iter()
        .filter(|n| archived_at(n).is_some_and(|t| t < cutoff))
        .cloned()
        .collect()
}

/// Whether this run archives: an import (not a dry run) of a tenant that keeps an archive.
pub fn applies(job: &JobRun<'_>) -> bool {
    !job.found.plan.dry_run && !job.found.plan.undo && job.tenant().files.archive_retention_days > 0
}

/// The import is done and marked: archive trouble is logged, never fails the job.
pub async fn run(job: &mut JobRun<'_>) -> Result<Step, JobError> {
    let retention_days = job.tenant().files.archive_retention_days;
    if job.gate().check().is_err() {
        job.log("not archived: the job was stopped after the import was done");
        return Ok(Step::Next);
    }
    match archive(job, retention_days).await {
        Ok((path, deleted)) => {
            job.log(format!("archived: {path}"));
            if !deleted.is_empty() {
                job.log(format!(
                    "archive: deleted {} file(s) older than {retention_days} days: {}",
                    deleted.len(),
                    deleted.join(", ")
                ));
            }
            job.record.archive_path = Some(path);
        }
        Err(e) => job.log(format!("the file could not be archived: {e}")),
    }
    Ok(Step::Next)
}

/// Archives the run's file and prunes the archive; returns the copy's path and what was deleted.
async fn archive(job: &JobRun<'_>, retention_days: u32) -> Result<(String, Vec<String>), JobError> {
    let Some(file) = &job.found.file else {
        return Ok((String::new(), Vec::new()));
    };
    let at = job.record.started_at;
    job.mkdir(ARCHIVE_DIR).await?;
    let path = format!("{ARCHIVE_DIR}/{}", archive_name(at, &file.sha1));
    job.put_file(&path, file.file.path()).await?;
    let names = job.list(ARCHIVE_DIR).await?;
    let mut deleted = Vec::new();
    for name in expired(&names, at, retention_days) {
        job.remove(&format!("{ARCHIVE_DIR}/{name}")).await?;
        deleted.push(name);
    }
    Ok((path, deleted))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .unwrap_or_else(|e| panic!("{e}"))
            .with_timezone(&Utc)
    }

    #[test]
    fn an_archive_name_carries_its_time() {
        let at = utc("2026-03-04T05:06:07Z");
        let name = archive_name(at, &Sha1Digest::from_bytes([0xab; 20]));
        assert!(
            name.starts_with("user-import-20260304T050607Z-abab"),
            "{name}"
        );
        assert_eq!(archived_at(&name), Some(at));
    }

    #[test]
    fn only_archived_files_past_retention_expire() {
        let now = utc("2026-03-31T12:00:00Z");
        let names: Vec<String> = [
            "user-import-20260301T115959Z-abcdef12.csv", // 30 days and 1 s
            "user-import-20260301T120001Z-abcdef12.csv", // just inside
            "user-import-20250101T000000Z-0123abcd.csv",
            "my-notes.csv",
            "user-import-2025-old.csv",
            "user-import-20250101T000000Z-notahash.csv",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            expired(&names, now, 30),
            vec![
                "user-import-20260301T115959Z-abcdef12.csv".to_owned(),
                "user-import-20250101T000000Z-0123abcd.csv".to_owned()
            ]
        );
    }
}
