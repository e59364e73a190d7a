//! A SHA1 digest in its 40-character lowercase hex form: the identity of one version of a file.

use super::{ParseError, string_newtype};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Sha1Digest(String);

impl Sha1Digest {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        if raw.len() != 40 || !raw.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
            return Err(ParseError::new(
                "sha1 digest",
                raw,
                "must be 40 lowercase hex digits",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// From the 20 raw bytes a hasher returns.
    pub fn from_bytes(bytes: [u8; 20]) -> Self {
        use std::fmt::Write;
        let mut s = String::with_capacity(40);
        for b in bytes {
            let _ = write!(s, "{b:02x}");
        }
        Self(s)
    }

    /// The first 12 hex digits, for file names people read.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

string_newtype!(Sha1Digest);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_and_hex_agree() {
        let d = Sha1Digest::from_bytes([0xab; 20]);
        assert_eq!(d.as_str(), "ab".repeat(20));
        assert_eq!(Sha1Digest::parse(d.as_str()), Ok(d.clone()));
        assert_eq!(d.short(), "abababababab");
    }

    #[test]
    fn not_a_digest_is_refused() {
        assert!(Sha1Digest::parse(&"A".repeat(40)).is_err());
        assert!(Sha1Digest::parse("abc").is_err());
    }
}
