//! A CSV reader with bounded memory: records are parsed by `csv-core` into a fixed buffer of
//! `max_record_bytes`; a record that does not fit (or has more than `MAX_FIELDS` cells) is skipped
//! to its end and reported as too long, never buffered whole. Blank lines, and lines holding only
//! white space, are skipped. Line numbers are those of the line where each record starts (1-based),
//! as a spreadsheet shows them, whatever the line ending: LF, CRLF or a lone CR (old Mac exports)
//! each end one line. A quote that is never closed swallows the rest of the file into one record:
//! that record is reported as [`Item::UnterminatedQuote`] naming the line where the quote opened.

use std::io::Read;

use csv_core::ReadRecordResult;

/// More cells than any template has; a row beyond it is refused.
pub const MAX_FIELDS: usize = 512;

/// One record, or why it could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Record {
        line: u64,
        fields: Vec<String>,
    },
    TooLong {
        line: u64,
        limit: usize,
    },
    TooManyFields {
        line: u64,
    },
    NotUtf8 {
        line: u64,
    },
    /// A quoted cell opened on `quote_line` and still open at the end of the file: everything
    /// from there on was read as that one cell.
    UnterminatedQuote {
        line: u64,
        quote_line: u64,
    },
}

impl Item {
    pub fn line(&self) -> u64 {
        match self {
            Item::Record { line, .. }
            | Item::TooLong { line, .. }
            | Item::TooManyFields { line }
            | Item::NotUtf8 { line }
            | Item::UnterminatedQuote { line, .. } => *line,
        }
    }
}

pub struct BoundedReader<R> {
    src: R,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
    eof: bool,
    core: csv_core::Reader,
    out: Vec<u8>,
    ends: Vec<usize>,
    scratch: Vec<u8>,
    scratch_ends: Vec<usize>,
    /// Line breaks consumed so far: gives each record's starting line.
    newlines: u64,
    /// The last byte consumed was a CR: a LF right after it ends no further line.
    after_cr: bool,
    delimiter: u8,
    /// Where the current record's parse stands, as far as quotes are concerned.
    quote: QuoteState,
    /// The line where the current record's open quote (if any) started.
    quote_line: u64,
    /// Bytes consumed so far, and where the last record returned began: its span in the file.
    offset: u64,
    record_start: u64,
}

/// A shadow of `csv-core`'s quoting rules (a quote opens a cell only as its first byte; `""`
/// inside is a literal quote), kept only to know whether a record ended inside a quote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QuoteState {
    StartOfCell,
    Unquoted,
    Quoted,
    /// A quote inside a quoted cell: closes it, unless another quote follows.
    QuoteInQuoted,
}

impl<R> std::fmt::Debug for BoundedReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundedReader")
            .field("max_record_bytes", &self.out.len())
            .finish_non_exhaustive()
    }
}

impl<R: Read> BoundedReader<R> {
    pub fn new(src: R, delimiter: u8, max_record_bytes: usize) -> Self {
        Self {
            src,
            buf: vec![0; 64 * 1024],
            pos: 0,
            len: 0,
            eof: false,
            core: csv_core::ReaderBuilder::new().delimiter(delimiter).build(),
            out: vec![0; max_record_bytes.max(1)],
            ends: vec![0; MAX_FIELDS],
            scratch: vec![0; 4096],
            scratch_ends: vec![0; 64],
            newlines: 0,
            after_cr: false,
            delimiter,
            quote: QuoteState::StartOfCell,
            quote_line: 0,
            offset: 0,
            record_start: 0,
        }
    }

    /// Where the item last returned by [`Self::next_item`] lies in the input: from its first byte
    /// to the end of its line break (or of the input), as byte offsets. The reject file copies
    /// rows by these spans, exactly as they were uploaded.
    pub fn span(&self) -> (u64, u64) {
        (self.record_start, self.offset)
    }

    /// Accounts for bytes the parser consumed: line breaks (LF, CRLF and a lone CR count one
    /// each) and the quote state.
    fn consumed(&mut self, bytes_start: usize, n: usize) {
        self.offset += n as u64;
        for i in bytes_start..bytes_start + n {
            let b = self.buf[i];
            let line_break = match b {
                b'\n' => !self.after_cr,
                b'\r' => true,
                _ => false,
            };
            if line_break {
                self.newlines += 1;
            }
            self.after_cr = b == b'\r';
            self.quote = match (self.quote, b) {
                (QuoteState::StartOfCell, b'"') => {
                    self.quote_line = self.newlines + 1;
                    QuoteState::Quoted
                }
                (QuoteState::Quoted, b'"') => QuoteState::QuoteInQuoted,
                (QuoteState::Quoted, _) => QuoteState::Quoted,
                (QuoteState::QuoteInQuoted, b'"') => QuoteState::Quoted,
                (_, b'\r' | b'\n') => QuoteState::StartOfCell,
                (_, d) if d == self.delimiter => QuoteState::StartOfCell,
                _ => QuoteState::Unquoted,
            };
        }
    }

    fn fill(&mut self) -> std::io::Result<()> {
        if self.pos == self.len && !self.eof {
            self.pos = 0;
            self.len = self.src.read(&mut self.buf)?;
            if self.len == 0 {
                self.eof = true;
            }
        }
        Ok(())
    }

    /// The next record; `Ok(None)` at the end of the file.
    pub fn next_item(&mut self) -> std::io::Result<Option<Item>> {
        loop {
            self.skip_line_breaks()?;
            self.record_start = self.offset;
            let line = self.newlines + 1;
            let nend = match self.parse_record(line)? {
                Parsed::End => return Ok(None),
                // Ended by the end of the file inside a quote: the quote, not the size, is the news.
                _ if self.quote == QuoteState::Quoted && self.eof && self.pos == self.len => {
                    return Ok(Some(Item::UnterminatedQuote {
                        line,
                        quote_line: self.quote_line,
                    }));
                }
                Parsed::Overflow(item) => return Ok(Some(item)),
                Parsed::Fields(nend) => nend,
            };
            if !self.is_blank(nend) {
                return Ok(Some(self.record(line, nend)));
            }
        }
    }

    /// Consumes the line breaks between records (the rest of a CRLF, blank lines), so the
    /// record's first byte is on the line we name.
    fn skip_line_breaks(&mut self) -> std::io::Result<()> {
        loop {
            self.fill()?;
            match self.buf[self.pos..self.len].first() {
                Some(b'\n' | b'\r') => {
                    self.consumed(self.pos, 1);
                    self.pos += 1;
                }
                _ => return Ok(()),
            }
        }
    }

    /// Parses one record starting on `line` into `out` and `ends`; past the bounds, the rest of
    /// it is parsed into the scratch buffers and dropped.
    fn parse_record(&mut self, line: u64) -> std::io::Result<Parsed> {
        self.quote = QuoteState::StartOfCell;
        let (mut nout, mut nend) = (0usize, 0usize);
        let mut overflow: Option<Item> = None;
        loop {
            self.fill()?;
            let input = &self.buf[self.pos..self.len];
            let (res, nin, o, e) = if overflow.is_some() {
                self.core
                    .read_record(input, &mut self.scratch, &mut self.scratch_ends)
            } else {
                self.core
                    .read_record(input, &mut self.out[nout..], &mut self.ends[nend..])
            };
            self.consumed(self.pos, nin);
            self.pos += nin;
            if overflow.is_none() {
                nout += o;
                nend += e;
            }
            match res {
                ReadRecordResult::InputEmpty => continue,
                ReadRecordResult::OutputFull => {
                    overflow.get_or_insert(Item::TooLong {
                        line,
                        limit: self.out.len(),
                    });
                }
                ReadRecordResult::OutputEndsFull => {
                    overflow.get_or_insert(Item::TooManyFields { line });
                }
                ReadRecordResult::Record => break,
                ReadRecordResult::End => return Ok(Parsed::End),
            }
        }
        Ok(overflow.map_or(Parsed::Fields(nend), Parsed::Overflow))
    }

    /// A blank line parses as one empty field, a line of spaces as one blank field: not records.
    fn is_blank(&self, nend: usize) -> bool {
        nend == 1
            && self.out[..self.ends[0]]
                .iter()
                .all(|b| matches!(b, b' ' | b'\t'))
    }

    /// The record just parsed, its `nend` cells as text, or [`Item::NotUtf8`].
    fn record(&self, line: u64, nend: usize) -> Item {
        let mut fields = Vec::with_capacity(nend);
        let mut start = 0;
        for &end in &self.ends[..nend] {
            match std::str::from_utf8(&self.out[start..end]) {
                Ok(s) => fields.push(s.to_owned()),
                Err(_) => return Item::NotUtf8 { line },
            }
            start = end;
        }
        Item::Record { line, fields }
    }
}

/// How parsing one record ended.
enum Parsed {
    /// The record fitted: its number of cells.
    Fields(usize),
    /// The record did not fit: why.
    Overflow(Item),
    /// The end of the file: no record.
    End,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(text: &[u8], max: usize) -> Vec<Item> {
        let mut r = BoundedReader::new(text, b',', max);
        let mut out = Vec::new();
        while let Some(i) = r.next_item().unwrap_or_else(|e| panic!("{e}")) {
            out.push(i);
        }
        out
    }

    fn rec(line: u64, fields: &[&str]) -> Item {
        Item::Record {
            line,
            fields: fields.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn quotes_newlines_crlf_and_blank_lines() {
        let got = items(b"a,b\r\n\"x\ny\",\"say \"\"hi\"\"\"\r\n\r\nc,d\n", 1024);
        assert_eq!(
            got,
            vec![
                rec(1, &["a", "b"]),
                rec(2, &["x\ny", "say \"hi\""]),
                rec(5, &["c", "d"]),
            ]
        );
    }

    #[test]
    fn a_record_over_the_limit_is_skipped_not_buffered() {
        let mut text = b"h1,h2\n".to_vec();
        text.extend(b"\"");
        text.extend(std::iter::repeat_n(b'x', 100_000));
        text.extend(b"\",y\nok,1\n");
        let got = items(&text, 1024);
        assert_eq!(
            got,
            vec![
                rec(1, &["h1", "h2"]),
                Item::TooLong {
                    line: 2,
                    limit: 1024
                },
                rec(3, &["ok", "1"]),
            ]
        );
    }

    #[test]
    fn too_many_fields_and_bad_utf8_are_items_with_their_line() {
        let many = ",".repeat(MAX_FIELDS + 5);
        let text = format!("a\n{many}\nb\n");
        let got = items(text.as_bytes(), 1 << 20);
        assert_eq!(got[1], Item::TooManyFields { line: 2 });
        assert_eq!(got[2], rec(3, &["b"]));
        let got = items(b"a\n\xff\xfe\nb\n", 1024);
        assert_eq!(got[1], Item::NotUtf8 { line: 2 });
    }

    #[test]
    fn an_unterminated_quote_is_named_with_the_line_it_opened_on() {
        let got = items(b"a,b\nx,y\nz,\"never closed\nmore\n", 1024);
        assert_eq!(
            got,
            vec![
                rec(1, &["a", "b"]),
                rec(2, &["x", "y"]),
                Item::UnterminatedQuote {
                    line: 3,
                    quote_line: 3
                },
            ]
        );
        // Over the size limit too: the quote is what the admin must fix.
        let mut text = b"a\n\"".to_vec();
        text.extend(std::iter::repeat_n(b'x', 10_000));
        let got = items(&text, 64);
        assert_eq!(
            got[1],
            Item::UnterminatedQuote {
                line: 2,
                quote_line: 2
            }
        );
        // A quote closed by the last byte, and a literal quote mid-cell, are not unterminated.
        assert_eq!(items(b"a\n\"ok\"", 64)[1], rec(2, &["ok"]));
        assert_eq!(items(b"a\nO\"Brien\n", 64)[1], rec(2, &["O\"Brien"]));
    }

    #[test]
    fn every_line_ending_counts_one_line() {
        let lf = items(b"a,b\nc,d\ne,f\n", 1024);
        let crlf = items(b"a,b\r\nc,d\r\ne,f\r\n", 1024);
        let cr = items(b"a,b\rc,d\re,f\r", 1024);
        let want = vec![
            rec(1, &["a", "b"]),
            rec(2, &["c", "d"]),
            rec(3, &["e", "f"]),
        ];
        assert_eq!(lf, want);
        assert_eq!(crlf, want);
        assert_eq!(cr, want);
        // Blank lines and quoted line breaks, lone CRs throughout.
        let got = items(b"a,b\r\r\"x\ry\",z\r\rc,d", 1024);
        assert_eq!(
            got,
            vec![
                rec(1, &["a", "b"]),
                rec(3, &["x\ry", "z"]),
                rec(6, &["c", "d"])
            ]
        );
        // CRLF split across the reader's buffer still counts once.
        let mut text = "h\n".to_string();
        while text.len() < 64 * 1024 - 1 {
            text.push_str("x\n");
        }
        let before = text.matches('\n').count() as u64;
        text.push_str("\r\nlast\n");
        let got = items(text.as_bytes(), 1024);
        assert_eq!(got.last(), Some(&rec(before + 2, &["last"])));
    }

    #[test]
    fn each_item_spans_its_bytes_from_its_first_to_its_line_break() {
        let text = b"a,b\r\n\r\n\"x\ny\",z\n  \nc,d";
        let mut r = BoundedReader::new(&text[..], b',', 1024);
        let mut spans = Vec::new();
        while r.next_item().unwrap_or_else(|e| panic!("{e}")).is_some() {
            let (start, end) = r.span();
            spans.push(String::from_utf8_lossy(&text[start as usize..end as usize]).into_owned());
        }
        // Each from its first byte, blank lines before it left out; its own line break at most.
        let trimmed: Vec<&str> = spans
            .iter()
            .map(|s| s.trim_end_matches(['\r', '\n']))
            .collect();
        assert_eq!(trimmed, ["a,b", "\"x\ny\",z", "c,d"], "{spans:?}");
    }

    #[test]
    fn a_line_of_white_space_is_blank() {
        let got = items(b"a,b\n   \n\t \nc,d\n", 1024);
        assert_eq!(got, vec![rec(1, &["a", "b"]), rec(4, &["c", "d"])]);
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Any bytes: no panic, every record fits the bound, lines never go backwards, and the
        /// reader ends.
        #[test]
        fn any_input_is_read_within_bounds(
            bytes in proptest::collection::vec(
                prop_oneof![Just(b','), Just(b'"'), Just(b'\n'), Just(b'\r'), Just(b';'), any::<u8>()],
                0..1024,
            ),
            max in 1usize..256,
        ) {
            let mut r = BoundedReader::new(&bytes[..], b',', max);
            let mut last_line = 0;
            let mut n = 0;
            while let Some(item) = r.next_item().map_err(|e| TestCaseError::fail(e.to_string()))? {
                n += 1;
                prop_assert!(n <= bytes.len() + 1, "more records than bytes");
                prop_assert!(item.line() >= last_line);
                last_line = item.line();
                if let Item::Record { fields, .. } = &item {
                    let total: usize = fields.iter().map(String::len).sum();
                    prop_assert!(total <= max);
                    prop_assert!(fields.len() <= MAX_FIELDS);
                }
            }
        }
    }
}
