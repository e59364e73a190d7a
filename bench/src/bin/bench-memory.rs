//! Peak RSS of the two parts of an import that used to grow with the file, each on its own in a
//! fresh process: `names` runs the duplicate-username check (`worker::import::names`) over
//! `--rows` distinct usernames (plus 1 % repeated); `attachment` zips a results CSV of `--rows`
//! rows into the report attachment (`worker::email::attachment_from_file`). `--old` measures what
//! they replaced: a `HashSet<u64>` of the names, the whole CSV read into memory. `rejects` writes
//! the reject file (`worker::import::rejects`) of an upload of `--rows` rows, every third one
//! rejected, one of them a 4 MiB row over the record limit.

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use worker::import::names::{NameSpill, key_hash};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum What {
    Names,
    Attachment,
    Rejects,
}

#[derive(Debug, Parser)]
#[command(name = "bench-memory")]
struct Cli {
    #[arg(value_enum)]
    what: What,
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Measure the replaced way instead.
    #[arg(long)]
    old: bool,
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let before = bench::proc::memory()?;
    let started = std::time::Instant::now();
    let detail = match cli.what {
        What::Names => names(cli.rows, cli.old)?,
        What::Rejects => rejects(cli.rows, cli.work_dir)?,
        What::Attachment => {
            let dir = tempfile::tempdir_in(cli.work_dir.unwrap_or_else(std::env::temp_dir))?;
            let csv = dir.path().join("results.csv");
            write_results(&csv, cli.rows)?;
            // The CSV is written before the measurement's baseline peak is taken again.
            let size = std::fs::metadata(&csv)?.len();
            if cli.old {
                let bytes = tokio::fs::read(&csv).await?;
                format!("csv {size} bytes, read whole: {} bytes", bytes.len())
            } else {
                let a = worker::email::attachment_from_file(&csv, "report", u64::MAX).await?;
                let zipped = a.map(|a| a.content.len()).unwrap_or(0);
                format!("csv {size} bytes, zip {zipped} bytes")
            }
        }
    };
    let after = bench::proc::memory()?;
    println!(
        "{:?} rows={} {}: peak RSS {:.1} MiB (start {:.1} MiB), {:.2} s; {detail}",
        cli.what,
        cli.rows,
        if cli.old { "old" } else { "new" },
        after.peak_kib as f64 / 1024.0,
        before.current_kib as f64 / 1024.0,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn names(rows: u64, old: bool) -> anyhow::Result<String> {
    let name = |i: u64| format!("user.{:07}", if i % 100 == 99 { i - 1 } else { i });
    if old {
        let (mut seen, mut dups) = (HashSet::new(), HashSet::new());
        for i in 0..rows {
            let h = key_hash(&name(i));
            if !seen.insert(h) {
                dups.insert(h);
            }
        }
        return Ok(format!("{} duplicated names", dups.len()));
    }
    let mut spill = NameSpill::default();
    for i in 0..rows {
        spill.push(key_hash(&name(i)))?;
    }
    let (dups, occurrences) = spill.duplicates()?;
    Ok(format!(
        "{} duplicated names, {occurrences} rows",
        dups.len()
    ))
}

/// The reject file of an upload of `rows` rows, every third rejected (one of them 4 MiB long).
fn rejects(rows: u64, work_dir: Option<PathBuf>) -> anyhow::Result<String> {
    use worker::import::rejects::{RejectLines, extract};
    let dir = tempfile::tempdir_in(work_dir.unwrap_or_else(std::env::temp_dir))?;
    let upload = dir.path().join("user-import.csv");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&upload)?);
    w.write_all(b"Username,First name,Surname,Email address,Department\r\n")?;
    let mut lines = RejectLines::new()?;
    for i in 0..rows {
        let line = i + 2;
        if i == rows / 2 {
            // Written in pieces: the generator holds no 4 MiB string of its own.
            write!(w, "user.{i:07},")?;
            for _ in 0..64 {
                w.write_all(&[b'x'; 64 * 1024])?;
            }
            write!(w, ",Long,u{i}@example.org,Sales\r\n")?;
            lines.push(line)?;
            continue;
        }
        write!(
            w,
            "user.{i:07},First {i},\"Last, {i}\",u{i}@example.org,Sales\r\n"
        )?;
        if i % 3 == 0 {
            lines.push(line)?;
        }
    }
    w.flush()?;
    drop(w);
    let size = std::fs::metadata(&upload)?.len();
    let out = extract(&upload, b',', 64 * 1024, lines, dir.path())?
        .ok_or_else(|| anyhow::anyhow!("no reject file"))?;
    let written = std::fs::metadata(&out.path)?.len();
    Ok(format!(
        "upload {size} bytes, reject file {} rows, {written} bytes",
        out.rows
    ))
}

/// A results CSV as the import writes it: one line per row, a short message on some.
fn write_results(path: &std::path::Path, rows: u64) -> anyhow::Result<()> {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    w.write_all(b"line,username,action,result,message\r\n")?;
    for i in 0..rows {
        let (action, result, message) = match i % 50 {
            0 => (
                "none",
                "invalid",
                "Email address \"x\" is not a valid email address",
            ),
            1 => ("update", "updated", ""),
            _ => ("create", "created", ""),
        };
        writeln!(w, "{},user.{i:07},{action},{result},{message}\r", i + 2)?;
    }
    w.flush()?;
    Ok(())
}
