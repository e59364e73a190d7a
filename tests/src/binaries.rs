//! The workspace's `worker` and `scheduler` binaries, for tests and trials that run them as
//! processes: cargo does not build a dependency's binaries for another package's tests, so they
//! are built here, once per process, with the same profile directory as the running executable.

use std::path::PathBuf;
use std::sync::OnceLock;

/// The `worker` binary, built once per test process (cargo does not build a dependency's binaries
/// for another package's tests).
pub fn worker_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_binary("worker")).clone()
}

/// The `scheduler` binary, built once per test process.
pub fn scheduler_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_binary("scheduler")).clone()
}

/// Builds the binary `name` of the package `name` into the running executable's profile
/// directory and returns its path.
fn workspace_binary(name: &str) -> PathBuf {
    let dir = profile_dir();
    let mut args = vec!["build", "--quiet", "-p", name, "--bin", name];
    if dir.file_name().is_some_and(|n| n == "release") {
        args.push("--release");
    }
    let status = std::process::Command::new(env!("CARGO"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo: {e}"));
    assert!(status.success(), "building the {name} binary failed");
    let bin = dir.join(name);
    assert!(bin.exists(), "no {name} binary at {}", bin.display());
    bin
}

/// The profile directory (`target/debug`, `target/release`) of the running executable: a test
/// binary runs from its `deps/`, an example from its `examples/`, a binary from the directory
/// itself.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("{e}"));
    let dir = exe
        .parent()
        .unwrap_or_else(|| panic!("no directory above {}", exe.display()));
    let dir = if dir.ends_with("deps") || dir.ends_with("examples") {
        dir.parent().unwrap_or(dir)
    } else {
        dir
    };
    dir.to_path_buf()
}
