//! Import files for the benchmarks: the admin portal's template with every seeded profile field
//! the fake knows, one new user per row. `variant` changes each user's department (and nothing
//! else), so importing variant 1 after variant 0 makes every row an update.

use std::io::Write;
use std::path::Path;

pub const HEADER: &str =
    "Username,First name,Surname,Email address,Department,Employee ID,Start date,Groups";

const DEPARTMENTS: [&str; 5] = ["Sales", "Engineering", "Support", "Finance", "HR"];

/// Writes `rows` data rows (plus the header) to `path`; returns the file's size in bytes.
pub fn write(path: &Path, rows: u64, variant: u64) -> anyhow::Result<u64> {
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    writeln!(out, "{HEADER}")?;
    for i in 0..rows {
        let department = DEPARTMENTS[((i + variant) % DEPARTMENTS.len() as u64) as usize];
        writeln!(
            out,
            "bench.user{i:07},First{i},Surname{i},bench.user{i:07}@bench.example.com,{department},E{i:07},2024-01-{day:02},Group {g};Everyone",
            day = i % 28 + 1,
            g = i % 20,
        )?;
    }
    out.flush()?;
    Ok(std::fs::metadata(path)?.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_variant_only_changes_the_department() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let (a, b) = (dir.path().join("a.csv"), dir.path().join("b.csv"));
        write(&a, 3, 0)?;
        write(&b, 3, 1)?;
        let (a, b) = (std::fs::read_to_string(a)?, std::fs::read_to_string(b)?);
        assert_eq!(a.lines().count(), 4);
        assert_eq!(a.lines().next(), Some(HEADER));
        for (x, y) in a.lines().zip(b.lines()).skip(1) {
            let (x, y): (Vec<&str>, Vec<&str>) = (x.split(',').collect(), y.split(',').collect());
            assert_eq!(x.len(), 8);
            assert_ne!(x[4], y[4]);
            assert_eq!((&x[..4], &x[5..]), (&y[..4], &y[5..]));
        }
        Ok(())
    }
}
