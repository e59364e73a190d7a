//! Where things are on a tenant's account: the contract the tenant sees (docs/tenant-admin*.md).
//! One place, so the pipeline's stages and the end-of-run record name the same paths.

pub const UPLOAD_DIR: &str = "/uploads";
/// The file to import; the tenant overwrites it each time.
pub const UPLOAD_PATH: &str = "/uploads/user-import.csv";
/// A file uploaded under this name is verified only (never imported), once per version.
pub const VERIFY_UPLOAD_PATH: &str = "/uploads/user-import.verify.csv";
/// With `skip_unchanged`: its presence makes the next import send every row (then it is removed).
pub const FULL_FLAG_NAME: &str = "user-import.full";
pub const FULL_FLAG_PATH: &str = "/uploads/user-import.full";
/// Its presence makes the next run import the current file again although its marker is there
/// (then it is removed): a re-run without deleting markers.
pub const RERUN_PATH: &str = "/uploads/user-import.rerun";
/// The admin's confirmation of a file held by the mass-change guard.
pub const CONFIRM_PATH: &str = "/uploads/user-import.confirm";
/// The admin's request to undo a run: a text file naming its job id or its file's SHA1.
pub const UNDO_PATH: &str = "/uploads/user-import.undo";
/// The markers: `<sha1>.sha1` (imported), `<sha1>.verified`, `<sha1>.held`.
pub const MARKER_DIR: &str = "/tmp";
pub const REPORTS_DIR: &str = "/reports";
/// The run summary of the latest run, whatever its outcome.
pub const LATEST_SUMMARY_PATH: &str = "/reports/latest-summary.json";
pub const ARCHIVE_DIR: &str = "/archive";
pub const LOG_DIR: &str = "/log";
/// The tenant's progress log, appended while a job runs.
pub const LOG_PATH: &str = "/log/user-import.log";
/// The tick last run of a scheduled job, beside the markers: what makes a tick published again
/// after Redis lost its records run once (docs/fleet.md, "Ticks after Redis data loss").
pub const LAST_TICK_PATH: &str = "/tmp/last-tick";
