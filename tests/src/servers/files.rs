//! The files of a test account on disk, as the server shows them: the one implementation of
//! `path`, `put`, `read`, `list` and `remove` that the vsftpd, ProFTPD and SFTP accounts share
//! (each derefs to it). Folders and files made here belong to the account's user.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// An account's root folder (`/` over FTP or SFTP) and the ids its files belong to.
#[derive(Debug)]
pub struct AccountFiles {
    /// The account's root on disk.
    pub root: PathBuf,
    uid: u32,
    gid: u32,
}

impl AccountFiles {
    /// The files below `root`, which is made (owned by `uid:gid`) if missing.
    pub fn new(root: PathBuf, uid: u32, gid: u32) -> Self {
        let files = Self { root, uid, gid };
        files.make_dir(&files.root);
        files
    }

    /// Makes each of `folders` below the root.
    pub fn with_folders(self, folders: &[&str]) -> Self {
        for sub in folders {
            self.make_dir(&self.root.join(sub));
        }
        self
    }

    /// The path of `rel` (as seen by a client, e.g. "/uploads/user-import.csv") on disk.
    pub fn path(&self, rel: &str) -> PathBuf {
        let rel = Path::new(rel.trim_start_matches('/'));
        assert!(
            rel.components().all(|c| matches!(c, Component::Normal(_))),
            "harness: {rel:?} must be a plain relative path inside the account"
        );
        self.root.join(rel)
    }

    /// Makes a folder (and its missing parents), owned by the user.
    pub fn make_folder(&self, rel: &str) {
        self.make_dir(&self.path(rel));
    }

    /// Every file and folder below the root, recursively: relative path → size (`None` for a
    /// folder) and modification time. What a test compares before and after to show that
    /// nothing on the account changed.
    pub fn snapshot(
        &self,
    ) -> std::collections::BTreeMap<String, (Option<u64>, std::time::SystemTime)> {
        let mut out = std::collections::BTreeMap::new();
        let mut todo = vec![self.root.clone()];
        while let Some(dir) = todo.pop() {
            let entries = fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("harness: cannot list {}: {e}", dir.display()));
            for entry in entries.flatten() {
                let path = entry.path();
                let meta = fs::symlink_metadata(&path)
                    .unwrap_or_else(|e| panic!("harness: cannot stat {}: {e}", path.display()));
                let rel = path
                    .strip_prefix(&self.root)
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                let modified = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                if meta.is_dir() {
                    // A folder's own time changes with any entry made in it: its contents say
                    // what changed.
                    out.insert(rel, (None, std::time::UNIX_EPOCH));
                    todo.push(path);
                } else {
                    out.insert(rel, (Some(meta.len()), modified));
                }
            }
        }
        out
    }

    /// Writes a file (creating its folders), owned by the user.
    pub fn put(&self, rel: &str, bytes: &[u8]) {
        let path = self.path(rel);
        if let Some(parent) = path.parent() {
            self.make_dir(parent);
        }
        fs::write(&path, bytes)
            .unwrap_or_else(|e| panic!("harness: cannot write {}: {e}", path.display()));
        self.chown(&path);
    }

    /// A file's bytes, or `None` if it does not exist.
    pub fn read(&self, rel: &str) -> Option<Vec<u8>> {
        let path = self.path(rel);
        match fs::read(&path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => panic!("harness: cannot read {}: {e}", path.display()),
        }
    }

    /// The names in a folder (`""` or `"/"`: the root), sorted; empty if it does not exist.
    pub fn list(&self, rel_dir: &str) -> Vec<String> {
        let path = if rel_dir.trim_matches('/').is_empty() {
            self.root.clone()
        } else {
            self.path(rel_dir)
        };
        let mut names: Vec<String> = match fs::read_dir(&path) {
            Ok(entries) => entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(e) if e.kind() == ErrorKind::NotFound => return Vec::new(),
            Err(e) => panic!("harness: cannot list {}: {e}", path.display()),
        };
        names.sort();
        names
    }

    /// Removes a file or a folder tree; nothing if it does not exist.
    pub fn remove(&self, rel: &str) {
        let path = self.path(rel);
        let result = if path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        match result {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => panic!("harness: cannot remove {}: {e}", path.display()),
        }
    }

    /// Creates `dir` and its missing parents up to the root, each owned by the user.
    fn make_dir(&self, dir: &Path) {
        if dir.is_dir() {
            return;
        }
        if dir != self.root
            && let Some(parent) = dir.parent()
        {
            self.make_dir(parent);
        }
        fs::create_dir(dir)
            .or_else(|e| if dir.is_dir() { Ok(()) } else { Err(e) })
            .unwrap_or_else(|e| panic!("harness: cannot create {}: {e}", dir.display()));
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("harness: cannot chmod {}: {e}", dir.display()));
        self.chown(dir);
    }

    fn chown(&self, path: &Path) {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
            .unwrap_or_else(|e| panic!("harness: cannot chown {}: {e}", path.display()));
    }
}
