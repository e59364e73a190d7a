//! One row per trial and the table they make.

use std::time::Duration;

/// What one trial saw. Every count comes from the parts themselves (see each trial's module).
#[derive(Debug, Default, Clone)]
pub struct Row {
    pub trial: String,
    /// How many times the trial was run.
    pub runs: usize,
    /// Faults injected (kills, stops, restarts, injected API faults, ...).
    pub faults: u64,
    /// Jobs published.
    pub jobs: usize,
    /// Published jobs that neither completed nor sit in the dead-letter queue with a reason.
    pub lost: usize,
    /// Jobs that ended in the dead-letter queue (with their reason, in `notes`).
    pub dead_lettered: usize,
    /// Two runs of one tenant at once, or a side effect of a run after its lock was lost.
    pub overlaps: usize,
    /// Users created more than once (the platform fake's per-username create counts).
    pub duplicate_creates: u64,
    /// Users of a completed import that are not on the platform.
    pub missing_users: usize,
    /// Fault end → the affected job completed.
    pub recovery: Vec<Duration>,
    pub notes: String,
    /// The trial could not run to its end.
    pub error: Option<String>,
}

impl Row {
    pub fn new(trial: &str) -> Self {
        Self {
            trial: trial.to_owned(),
            ..Self::default()
        }
    }

    pub fn error(trial: &str, why: String) -> Self {
        Self {
            trial: trial.to_owned(),
            error: Some(why),
            ..Self::default()
        }
    }

    pub fn passed(&self) -> bool {
        self.error.is_none()
            && self.lost == 0
            && self.overlaps == 0
            && self.duplicate_creates == 0
            && self.missing_users == 0
    }

    pub fn verdict(&self) -> String {
        if let Some(e) = &self.error {
            return format!("did not complete: {e}");
        }
        let mut bad = Vec::new();
        for (n, what) in [
            (self.lost as u64, "jobs lost"),
            (self.overlaps as u64, "overlapping runs"),
            (self.duplicate_creates, "duplicate creates"),
            (self.missing_users as u64, "users missing"),
        ] {
            if n > 0 {
                bad.push(format!("{n} {what}"));
            }
        }
        if bad.is_empty() {
            "ok".into()
        } else {
            bad.join(", ")
        }
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

fn recovery(r: &[Duration]) -> String {
    if r.is_empty() {
        return "-".into();
    }
    let mut v = r.to_vec();
    v.sort();
    let p50 = v[v.len() / 2];
    let max = v[v.len() - 1];
    format!("{} / {}", secs(p50), secs(max))
}

/// A plain-text table, one line per trial, then the notes.
pub fn render(rows: &[Row]) -> String {
    let header = [
        "trial",
        "runs",
        "faults",
        "jobs",
        "lost",
        "dead-let.",
        "overlaps",
        "dup creates",
        "users missing",
        "recovery p50 / max",
        "result",
    ];
    let lines: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.trial.clone(),
                r.runs.to_string(),
                r.faults.to_string(),
                r.jobs.to_string(),
                r.lost.to_string(),
                r.dead_lettered.to_string(),
                r.overlaps.to_string(),
                r.duplicate_creates.to_string(),
                r.missing_users.to_string(),
                recovery(&r.recovery),
                if r.passed() {
                    "ok".into()
                } else {
                    "FAIL".into()
                },
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for l in &lines {
        for (w, c) in widths.iter_mut().zip(l) {
            *w = (*w).max(c.len());
        }
    }
    let fmt = |cells: &[String]| -> String {
        let mut s = String::from("|");
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i == 0 {
                s.push_str(&format!(" {c:<w$} |"));
            } else {
                s.push_str(&format!(" {c:>w$} |"));
            }
        }
        s.push('\n');
        s
    };
    let mut out = fmt(&header.map(str::to_owned));
    out.push('|');
    for (i, w) in widths.iter().enumerate() {
        out.push_str(&"-".repeat(w + 1));
        out.push(if i == 0 { '-' } else { ':' });
        out.push('|');
    }
    out.push('\n');
    for l in &lines {
        out.push_str(&fmt(l));
    }
    for r in rows {
        if !r.notes.is_empty() {
            out.push_str(&format!("- {}: {}\n", r.trial, r.notes));
        }
        if let Some(e) = &r.error {
            out.push_str(&format!("- {}: ERROR: {e}\n", r.trial));
        }
    }
    out
}
