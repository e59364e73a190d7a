//! The file's text encoding, found and normalised to UTF-8 before parsing. Spreadsheet exports
//! come as UTF-8 (with or without a byte-order mark), "Unicode text" (UTF-16 with a BOM), or a
//! legacy code page; bytes that are not valid UTF-8 and carry no BOM are read as Windows-1252.
//! A file with NUL bytes that is not UTF-16 is binary, not a CSV. Everything streams through a
//! fixed buffer: memory does not grow with the file.

use std::io::{Read, Write};
use std::path::Path;

/// What the file was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextEncoding {
    Utf8,
    Utf8Bom,
    Utf16Le,
    Utf16Be,
    Windows1252,
}

impl TextEncoding {
    pub fn label(self) -> &'static str {
        match self {
            TextEncoding::Utf8 => "UTF-8",
            TextEncoding::Utf8Bom => "UTF-8 with BOM",
            TextEncoding::Utf16Le => "UTF-16 LE",
            TextEncoding::Utf16Be => "UTF-16 BE",
            TextEncoding::Windows1252 => "Windows-1252",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the file is binary, not a CSV text file (it holds NUL bytes)")]
    Binary,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

const CHUNK: usize = 64 * 1024;

/// Finds the encoding; for anything but UTF-8, writes a UTF-8 copy to `out` and returns true.
pub fn normalise(input: &Path, out: &Path) -> Result<(TextEncoding, bool), DecodeError> {
    let mut f = std::fs::File::open(input)?;
    let mut head = [0u8; 3];
    let n = read_up_to(&mut f, &mut head)?;
    let encoding = match &head[..n] {
        [0xEF, 0xBB, 0xBF] => TextEncoding::Utf8Bom,
        [0xFF, 0xFE, ..] => TextEncoding::Utf16Le,
        [0xFE, 0xFF, ..] => TextEncoding::Utf16Be,
        _ => {
            if is_utf8_text(input)? {
                TextEncoding::Utf8
            } else {
                TextEncoding::Windows1252
            }
        }
    };
    let source = match encoding {
        TextEncoding::Utf8 | TextEncoding::Utf8Bom => return Ok((encoding, false)),
        TextEncoding::Utf16Le => encoding_rs::UTF_16LE,
        TextEncoding::Utf16Be => encoding_rs::UTF_16BE,
        TextEncoding::Windows1252 => encoding_rs::WINDOWS_1252,
    };
    transcode(input, out, source)?;
    Ok((encoding, true))
}

fn read_up_to(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Valid UTF-8 throughout, and no NUL byte (binary content is refused here).
fn is_utf8_text(path: &Path) -> Result<bool, DecodeError> {
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; CHUNK + 4];
    let mut carry = 0usize;
    let mut valid = true;
    loop {
        let n = f.read(&mut buf[carry..carry + CHUNK])?;
        if n == 0 {
            return Ok(valid && carry == 0);
        }
        let len = carry + n;
        if buf[carry..len].contains(&0) {
            return Err(DecodeError::Binary);
        }
        if valid {
            match std::str::from_utf8(&buf[..len]) {
                Ok(_) => carry = 0,
                // A character cut by the chunk boundary: keep its bytes for the next round.
                Err(e) if e.error_len().is_none() => {
                    let keep = len - e.valid_up_to();
                    buf.copy_within(e.valid_up_to()..len, 0);
                    carry = keep;
                }
                // Keep scanning for NUL bytes, but the answer is no.
                Err(_) => {
                    valid = false;
                    carry = 0;
                }
            }
        }
    }
}

fn transcode(
    input: &Path,
    out: &Path,
    source: &'static encoding_rs::Encoding,
) -> Result<(), DecodeError> {
    // BOM handling on: the decoder drops the UTF-16 byte-order mark.
    let mut decoder = source.new_decoder_with_bom_removal();
    let mut f = std::fs::File::open(input)?;
    let mut w = std::io::BufWriter::new(std::fs::File::create(out)?);
    let mut inbuf = vec![0u8; CHUNK];
    let mut text = String::with_capacity(CHUNK * 3 + 16);
    loop {
        let n = f.read(&mut inbuf)?;
        let last = n == 0;
        let mut consumed = 0;
        loop {
            text.clear();
            let (result, read, _) = decoder.decode_to_string(&inbuf[consumed..n], &mut text, last);
            consumed += read;
            if text.contains('\0') {
                return Err(DecodeError::Binary);
            }
            w.write_all(text.as_bytes())?;
            if result == encoding_rs::CoderResult::InputEmpty {
                break;
            }
        }
        if last {
            break;
        }
    }
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(bytes: &[u8]) -> Result<(TextEncoding, String), DecodeError> {
        let dir = tempfile::tempdir()?;
        let (i, o) = (dir.path().join("in"), dir.path().join("out"));
        std::fs::write(&i, bytes)?;
        let (enc, converted) = normalise(&i, &o)?;
        let text = std::fs::read(if converted { &o } else { &i })?;
        Ok((enc, String::from_utf8_lossy(&text).into_owned()))
    }

    #[test]
    fn each_encoding_is_found_and_read() -> Result<(), DecodeError> {
        assert_eq!(
            roundtrip("Username\nzoë\n".as_bytes())?.0,
            TextEncoding::Utf8
        );
        assert_eq!(
            roundtrip(b"\xEF\xBB\xBFUsername\n")?.0,
            TextEncoding::Utf8Bom
        );
        let mut le = vec![0xFF, 0xFE];
        le.extend(
            "Username\nzoë\n"
                .encode_utf16()
                .flat_map(|u| u.to_le_bytes()),
        );
        assert_eq!(
            roundtrip(&le)?,
            (TextEncoding::Utf16Le, "Username\nzoë\n".into())
        );
        let mut be = vec![0xFE, 0xFF];
        be.extend(
            "Username\nzoë\n"
                .encode_utf16()
                .flat_map(|u| u.to_be_bytes()),
        );
        assert_eq!(
            roundtrip(&be)?,
            (TextEncoding::Utf16Be, "Username\nzoë\n".into())
        );
        assert_eq!(
            roundtrip(b"Username\nzo\xEB \x80\n")?,
            (TextEncoding::Windows1252, "Username\nzoë €\n".into())
        );
        Ok(())
    }

    #[test]
    fn a_character_cut_by_the_buffer_is_still_utf8() -> Result<(), DecodeError> {
        let mut s = "a".repeat(CHUNK - 1);
        s.push('ë'); // two bytes straddling the first chunk boundary
        assert_eq!(roundtrip(s.as_bytes())?.0, TextEncoding::Utf8);
        Ok(())
    }

    #[test]
    fn nul_bytes_mean_binary() {
        assert!(matches!(
            roundtrip(b"PK\x03\x04\x00\x00zip"),
            Err(DecodeError::Binary)
        ));
        assert!(matches!(
            roundtrip(b"\xFF\xFEU\x00\x00\x00"),
            Err(DecodeError::Binary)
        ));
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Any bytes: an encoding or "binary", never a panic; what comes out is UTF-8.
        #[test]
        fn any_bytes_decode_to_utf8_or_binary(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
            let (i, o) = (dir.path().join("in"), dir.path().join("out"));
            std::fs::write(&i, &bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            match normalise(&i, &o) {
                Ok((_, converted)) => {
                    let text = std::fs::read(if converted { &o } else { &i })
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    let skip = if text.starts_with(b"\xEF\xBB\xBF") { 3 } else { 0 };
                    prop_assert!(std::str::from_utf8(&text[skip..]).is_ok());
                }
                Err(DecodeError::Binary) => {}
                Err(e) => return Err(TestCaseError::fail(e.to_string())),
            }
        }
    }
}
