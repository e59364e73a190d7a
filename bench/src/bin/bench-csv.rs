//! Writes an import file for the benchmarks (see `bench::csvgen`).

use std::path::PathBuf;

use clap::Parser;

/// Writes a user-import CSV of new users.
#[derive(Debug, Parser)]
#[command(name = "bench-csv")]
struct Cli {
    /// Data rows (the header comes on top).
    #[arg(long)]
    rows: u64,
    /// 0 for the first import; 1 changes every user's department (an update).
    #[arg(long, default_value_t = 0)]
    variant: u64,
    #[arg(long)]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let bytes = bench::csvgen::write(&cli.out, cli.rows, cli.variant)?;
    println!(
        "bench-csv: wrote {} rows (variant {}), {} bytes, to {}",
        cli.rows,
        cli.variant,
        bytes,
        cli.out.display()
    );
    Ok(())
}
