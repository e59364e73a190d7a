//! The reject file: the rows of the file that ended `invalid` or `failed`, in the upload's own
//! format (its header line as uploaded, its delimiter and line breaks), as UTF-8, so that the
//! admin corrects them there and uploads that file as the next `user-import.csv`.
//!
//! Memory stays bounded whatever the file: while the import runs, the line numbers of rejected
//! rows go to a temporary file (8 bytes each, in file order, as results come); afterwards one more
//! pass over the (UTF-8) file finds each of those rows by its starting line and copies its bytes
//! as they were uploaded ([`BoundedReader::span`]), streamed, even for a row over the size limit.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::reader::BoundedReader;

/// The rejected rows of a run, on local disk (removed when this value is dropped).
#[derive(Debug)]
pub struct Rejects {
    pub path: tempfile::TempPath,
    /// How many rows it holds (the header not counted).
    pub rows: u64,
}

/// The starting lines of the rejected rows, spilled to a temporary file as they come.
#[derive(Debug)]
pub struct RejectLines {
    out: BufWriter<File>,
    count: u64,
}

impl RejectLines {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            out: BufWriter::with_capacity(64 * 1024, tempfile::tempfile()?),
            count: 0,
        })
    }

    /// Notes a rejected row by the line it starts on (lines come in file order).
    pub fn push(&mut self, line: u64) -> std::io::Result<()> {
        self.count += 1;
        self.out.write_all(&line.to_le_bytes())
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    fn into_reader(self) -> std::io::Result<LinesIn> {
        let mut f = self.out.into_inner().map_err(|e| e.into_error())?;
        f.rewind()?;
        Ok(LinesIn(BufReader::with_capacity(64 * 1024, f)))
    }
}

struct LinesIn(BufReader<File>);

impl LinesIn {
    fn next_line(&mut self) -> std::io::Result<Option<u64>> {
        let mut b = [0u8; 8];
        match self.0.read_exact(&mut b) {
            Ok(()) => Ok(Some(u64::from_le_bytes(b))),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Writes the rows at `lines` of `file` (UTF-8, its header first) to a new temporary file in
/// `dir`; `None` when no row was rejected. Blocking: call it off the async threads.
pub fn extract(
    file: &Path,
    delimiter: u8,
    max_record_bytes: usize,
    lines: RejectLines,
    dir: &Path,
) -> std::io::Result<Option<Rejects>> {
    if lines.count() == 0 {
        return Ok(None);
    }
    let mut wanted = lines.into_reader()?;
    let out = tempfile::Builder::new()
        .prefix("user-import-rejects-")
        .suffix(".csv")
        .tempfile_in(dir)?;
    let mut w = BufWriter::with_capacity(64 * 1024, out.reopen()?);
    let terminator = line_break_of(file)?;
    let mut raw = File::open(file)?;
    let input = BufReader::with_capacity(64 * 1024, File::open(file)?);
    let mut rdr = BoundedReader::new(input, delimiter, max_record_bytes);
    if rdr.next_item()?.is_none() {
        return Ok(None);
    }
    copy_span(&mut raw, rdr.span(), &mut w, terminator)?;
    let (mut next, mut rows) = (wanted.next_line()?, 0);
    while let Some(item) = rdr.next_item()? {
        while next.is_some_and(|l| l < item.line()) {
            next = wanted.next_line()?;
        }
        let Some(line) = next else { break };
        if line == item.line() {
            copy_span(&mut raw, rdr.span(), &mut w, terminator)?;
            rows += 1;
            next = wanted.next_line()?;
        }
    }
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(Some(Rejects {
        path: out.into_temp_path(),
        rows,
    }))
}

/// Copies the bytes of `span` from `raw` to `w`, its own line break replaced by `terminator`
/// (so that a last row without one still ends its line). Streamed: a row of any size.
fn copy_span(
    raw: &mut File,
    (start, end): (u64, u64),
    w: &mut impl Write,
    terminator: &[u8],
) -> std::io::Result<()> {
    let len = end.saturating_sub(start);
    // A record ends with at most a CR LF.
    let tail_len = len.min(2);
    raw.seek(SeekFrom::Start(start))?;
    std::io::copy(&mut (&mut *raw).take(len - tail_len), w)?;
    let mut tail = [0u8; 2];
    let tail = &mut tail[..tail_len as usize];
    raw.read_exact(tail)?;
    let kept = tail
        .iter()
        .rposition(|b| !matches!(b, b'\r' | b'\n'))
        .map_or(0, |i| i + 1);
    w.write_all(&tail[..kept])?;
    w.write_all(terminator)
}

/// The file's line break, from its header line: CR LF, LF or a lone CR (CR LF when there is none).
fn line_break_of(file: &Path) -> std::io::Result<&'static [u8]> {
    let mut head = vec![0u8; 64 * 1024];
    let n = File::open(file)?.read(&mut head)?;
    let mut quoted = false;
    for (i, &b) in head[..n].iter().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b'\n' if !quoted => return Ok(b"\n"),
            b'\r' if !quoted => {
                return Ok(if head.get(i + 1) == Some(&b'\n') && i + 1 < n {
                    b"\r\n"
                } else {
                    b"\r"
                });
            }
            _ => {}
        }
    }
    Ok(b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejects_of(text: &[u8], lines: &[u64]) -> Option<(String, u64)> {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("f.csv");
        std::fs::write(&file, text).unwrap_or_else(|e| panic!("{e}"));
        let mut spill = RejectLines::new().unwrap_or_else(|e| panic!("{e}"));
        for l in lines {
            spill.push(*l).unwrap_or_else(|e| panic!("{e}"));
        }
        let delimiter = if text.contains(&b';') { b';' } else { b',' };
        extract(&file, delimiter, 1024, spill, dir.path())
            .unwrap_or_else(|e| panic!("{e}"))
            .map(|r| {
                let text = std::fs::read_to_string(&r.path).unwrap_or_else(|e| panic!("{e}"));
                (text, r.rows)
            })
    }

    #[test]
    fn the_rejected_rows_are_copied_as_uploaded_under_the_header() {
        let text =
            b"Username;Surname\r\nann;Lee\r\n\"bo\nb\";\"O\"\"Neil\"\r\n\r\ncy;Z\r\ndee;\"x;y\"";
        let (got, rows) = rejects_of(text, &[3, 7]).unwrap_or_else(|| panic!("rejects"));
        assert_eq!(
            got,
            "Username;Surname\r\n\"bo\nb\";\"O\"\"Neil\"\r\ndee;\"x;y\"\r\n"
        );
        assert_eq!(rows, 2);
    }

    #[test]
    fn lone_cr_lines_keep_their_line_break_and_nothing_rejected_writes_nothing() {
        let text = b"Username,Surname\rann,Lee\rbob,Ray\r";
        let (got, _) = rejects_of(text, &[3]).unwrap_or_else(|| panic!("rejects"));
        assert_eq!(got, "Username,Surname\rbob,Ray\r");
        assert!(rejects_of(text, &[]).is_none());
    }

    #[test]
    fn a_row_over_the_limit_and_an_unclosed_quote_are_copied_whole() {
        let mut text = b"Username,Surname\nann,Lee\n".to_vec();
        let long = format!("big,{}\n", "x".repeat(5000));
        text.extend(long.as_bytes());
        text.extend(b"ok,1\nbad,\"never closed\nmore\n");
        let (got, rows) = rejects_of(&text, &[3, 5]).unwrap_or_else(|| panic!("rejects"));
        assert_eq!(rows, 2);
        assert_eq!(
            got,
            format!("Username,Surname\n{long}bad,\"never closed\nmore\n")
        );
    }
}
