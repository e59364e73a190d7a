//! The per-record results CSV (`line,username,action,result,message`), written row by row to a
//! local file as results come in, so memory does not grow with the file. Cells a spreadsheet
//! would run as a formula are neutralised.

use std::path::Path;

use crate::import::apply::RowResult;

pub const HEADER: [&str; 5] = ["line", "username", "action", "result", "message"];

/// Prefixes a cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage return with `'`, the
/// OWASP advice for CSV injection; other cells are left as they are.
pub fn neutralise(cell: &str) -> std::borrow::Cow<'_, str> {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        std::borrow::Cow::Owned(format!("'{cell}"))
    } else {
        std::borrow::Cow::Borrowed(cell)
    }
}

#[derive(Debug)]
pub struct ResultsWriter {
    out: csv::Writer<std::io::BufWriter<std::fs::File>>,
    /// Verify-only: the result column says what would happen (`would-create`, …).
    verify: bool,
}

impl ResultsWriter {
    pub fn create(path: &Path, verify: bool) -> std::io::Result<Self> {
        let file = std::fs::File::create(path)?;
        let mut out = csv::WriterBuilder::new()
            .terminator(csv::Terminator::CRLF)
            .from_writer(std::io::BufWriter::new(file));
        out.write_record(HEADER).map_err(std::io::Error::other)?;
        Ok(Self { out, verify })
    }

    pub fn write(&mut self, r: &RowResult) -> std::io::Result<()> {
        // Line 0: not a row of the file (a full-sync deactivation).
        let line = if r.line == 0 {
            String::new()
        } else {
            r.line.to_string()
        };
        let result = if self.verify {
            r.status.as_verify_str()
        } else {
            r.status.as_str()
        };
        self.out
            .write_record([
                line.as_str(),
                &neutralise(&r.username),
                &r.action,
                result,
                &neutralise(&r.message),
            ])
            .map_err(std::io::Error::other)
    }

    pub fn finish(mut self) -> std::io::Result<()> {
        self.out.flush()?;
        let inner = self
            .out
            .into_inner()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        inner.into_inner().map_err(|e| e.into_error())?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_cells_are_neutralised() {
        for bad in ["=1+1", "+1", "-2", "@SUM(A1)", "\tx", "\rx"] {
            assert!(neutralise(bad).starts_with('\''), "{bad:?}");
        }
        assert_eq!(neutralise("jane"), "jane");
        assert_eq!(neutralise("a=b"), "a=b");
    }

    fn row(line: u64, status: crate::import::apply::RowStatus) -> RowResult {
        RowResult {
            line,
            username: "ada".into(),
            action: "create".into(),
            status,
            message: String::new(),
        }
    }

    fn written(verify: bool, rows: &[RowResult]) -> String {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("r.csv");
        let mut w = ResultsWriter::create(&path, verify).unwrap_or_else(|e| panic!("{e}"));
        for r in rows {
            w.write(r).unwrap_or_else(|e| panic!("{e}"));
        }
        w.finish().unwrap_or_else(|e| panic!("{e}"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_verify_report_says_what_would_happen() {
        use crate::import::apply::RowStatus;
        let rows = [
            row(2, RowStatus::Created),
            row(3, RowStatus::Invalid),
            row(0, RowStatus::Deactivated),
        ];
        assert_eq!(
            written(true, &rows),
            "line,username,action,result,message\r\n2,ada,create,would-create,\r\n\
             3,ada,create,error,\r\n,ada,create,would-deactivate,\r\n"
        );
        assert!(written(false, &rows).contains("2,ada,create,created,\r\n"));
    }
}
