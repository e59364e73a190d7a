//! The report attachment: a zipped CSV kept in an unlinked temporary file, and its base64 form
//! produced part by part while the message is being sent — never the whole attachment, nor the
//! whole message, in memory.

use std::io::{BufReader, Seek};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine;

/// A file attached to a message.
#[derive(Debug, Clone)]
pub struct MailAttachment {
    pub filename: String,
    pub content_type: &'static str,
    pub content: Content,
}

/// An attachment's bytes: in memory (small ones), or in a file read part by part while sending.
#[derive(Debug, Clone)]
pub enum Content {
    Bytes(Arc<[u8]>),
    /// An open file (the report's zip: unlinked, ours alone) and its length.
    File(Arc<std::fs::File>, u64),
}

impl Content {
    pub fn len(&self) -> u64 {
        match self {
            Content::Bytes(b) => b.len() as u64,
            Content::File(_, len) => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Up to `buf.len()` bytes from `offset` (short only at the end).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = usize::try_from(self.len().saturating_sub(offset))
            .unwrap_or(usize::MAX)
            .min(buf.len());
        match self {
            Content::Bytes(b) => {
                let at = usize::try_from(offset).unwrap_or(usize::MAX);
                buf[..want].copy_from_slice(&b[at..at + want]);
            }
            Content::File(f, _) => f.read_exact_at(&mut buf[..want], offset)?,
        }
        Ok(want)
    }

    /// Every byte, read back (tests and benchmarks).
    pub fn to_vec(&self) -> std::io::Result<Vec<u8>> {
        let mut out = vec![0; usize::try_from(self.len()).map_err(std::io::Error::other)?];
        self.read_at(0, &mut out)?;
        Ok(out)
    }
}

/// The CSV at `path` as a zip `<name>.zip` holding `<name>.csv` (`name` without an extension),
/// or `None` when the zip is larger than `limit` bytes. The zip is written by streaming to an
/// unlinked temporary file beside `path` (memory stays at the compressor's few hundred KiB
/// whatever the CSV's size) and stays there: the message reads it while it is sent.
pub(super) fn zip_csv(
    path: &PathBuf,
    name: &str,
    limit: u64,
) -> std::io::Result<Option<MailAttachment>> {
    let name = name.trim_end_matches(".csv").trim_end_matches(".zip");
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut zip = zip::ZipWriter::new(tempfile::tempfile_in(dir)?);
    let size = std::fs::metadata(path)?.len();
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .large_file(size >= u64::from(u32::MAX));
    zip.start_file(format!("{name}.csv"), options)
        .map_err(std::io::Error::other)?;
    let mut csv = BufReader::with_capacity(64 * 1024, std::fs::File::open(path)?);
    std::io::copy(&mut csv, &mut zip)?;
    let mut file = zip.finish().map_err(std::io::Error::other)?;
    let zipped = file.stream_position()?;
    if zipped > limit {
        return Ok(None);
    }
    Ok(Some(MailAttachment {
        filename: format!("{name}.zip"),
        content_type: "application/zip",
        content: Content::File(Arc::new(file), zipped),
    }))
}

/// 57 input bytes make one base64 line of 76 characters (RFC 2045).
const LINE_INPUT: usize = 57;
/// Lines per part handed to the SMTP connection: 1,024 lines, ~78 KiB.
const PART_LINES: usize = 1024;

/// The base64 body of `content` in lines of 76 characters separated by CRLF (none after the last),
/// in parts of [`PART_LINES`] lines. A read error ends the parts early and is left in `failed`:
/// the sender must not report such a message as sent.
pub(super) struct Base64Parts<'a> {
    content: &'a Content,
    offset: u64,
    failed: &'a Mutex<Option<std::io::Error>>,
}

impl<'a> Base64Parts<'a> {
    pub(super) fn new(content: &'a Content, failed: &'a Mutex<Option<std::io::Error>>) -> Self {
        Self {
            content,
            offset: 0,
            failed,
        }
    }
}

impl Iterator for Base64Parts<'_> {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        if self.offset >= self.content.len() {
            return None;
        }
        let mut input = vec![0u8; LINE_INPUT * PART_LINES];
        let n = match self.content.read_at(self.offset, &mut input) {
            Ok(n) => n,
            Err(e) => {
                if let Ok(mut slot) = self.failed.lock() {
                    *slot = Some(e);
                }
                self.offset = self.content.len();
                return None;
            }
        };
        let mut out = Vec::with_capacity(n.div_ceil(LINE_INPUT) * 78 + 2);
        for chunk in input[..n].chunks(LINE_INPUT) {
            if self.offset > 0 || !out.is_empty() {
                out.extend_from_slice(b"\r\n");
            }
            let mut line = [0u8; 76];
            match base64::engine::general_purpose::STANDARD.encode_slice(chunk, &mut line) {
                Ok(len) => out.extend_from_slice(&line[..len]),
                Err(e) => {
                    if let Ok(mut slot) = self.failed.lock() {
                        *slot = Some(std::io::Error::other(e));
                    }
                    self.offset = self.content.len();
                    return None;
                }
            }
        }
        self.offset += n as u64;
        Some(out)
    }
}
