//! The worker: consumes user-import jobs and runs, for one tenant at a time, fetch (FTPS) → hash
//! (SHA1 marker) → import (platform API) → report (log, results CSV, email). `main.rs` only parses
//! flags and builds [`pipeline::Deps`]; everything else is here, testable without a process.

pub mod account;
pub mod alerts;
pub mod deps;
pub mod doctor;
pub mod email;
pub mod fleet;
pub mod import;
pub mod job;
pub mod layout;
pub mod metrics;
pub mod once;
pub mod outcome;
pub mod pipeline;
pub mod platform;

/// The FTPS implementation of the tenant's account, where it was before the account interface.
pub use account::ftps;

pub use deps::Deps;
pub use job::JobContext;
pub use outcome::{Counts, JobError, Outcome};
pub use pipeline::process_job;

#[cfg(test)]
mod layering {
    //! The worker's arrows point down (see ARCHITECTURE.md): a client never imports the code that
    //! uses it, the job core never imports the pipeline, the pipeline never imports its drivers.
    //! Read off the sources, so a wrong-way `use` fails the build's tests, not a review.

    use std::path::Path;

    /// Each layer, and the modules it must never name.
    const RULES: &[(&str, &[&str])] = &[
        (
            "account",
            &[
                "pipeline", "import", "fleet", "job", "once", "platform", "doctor",
            ],
        ),
        (
            "platform",
            &[
                "pipeline", "import", "fleet", "job", "once", "account", "doctor",
            ],
        ),
        (
            "email.rs",
            &["pipeline", "import", "fleet", "job", "once", "doctor"],
        ),
        (
            "import",
            &["pipeline", "fleet", "job", "once", "account", "doctor"],
        ),
        ("job", &["pipeline", "fleet", "once", "doctor"]),
        ("pipeline", &["fleet", "once", "doctor"]),
        ("layout.rs", &["pipeline", "fleet", "job", "once", "doctor"]),
        ("deps.rs", &["pipeline", "fleet", "job", "once", "doctor"]),
        // A driver beside once.rs: the clients only, never the job core or the pipeline (what
        // it checks must not be able to write through a job), nor the other drivers.
        ("doctor", &["pipeline", "job", "import", "fleet", "once"]),
    ];

    fn sources(path: &Path, out: &mut Vec<(String, String)>) {
        if path.is_dir() {
            for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
                sources(&entry.path(), out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            out.push((path.display().to_string(), text));
        }
    }

    #[test]
    fn no_module_imports_a_layer_above_it() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut wrong = Vec::new();
        let mut checked = 0;
        for (layer, forbidden) in RULES {
            let mut files = Vec::new();
            sources(&src.join(layer), &mut files);
            assert!(!files.is_empty(), "no sources for {layer}");
            checked += files.len();
            for (file, text) in &files {
                // Only code counts: a doc link to a higher layer is not an arrow.
                let text: String = text
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("//"))
                    .collect::<Vec<_>>()
                    .join("\n");
                for module in *forbidden {
                    for pattern in [
                        format!("crate::{module}::"),
                        format!("crate::{module};"),
                        format!("crate::{{{module}"),
                    ] {
                        if text.contains(&pattern) {
                            wrong.push(format!("{file} names {pattern}"));
                        }
                    }
                }
            }
        }
        assert!(checked > 20, "only {checked} files read");
        assert!(
            wrong.is_empty(),
            "arrows pointing up:\n{}",
            wrong.join("\n")
        );
    }
}
