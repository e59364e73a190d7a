//! An email address fit to put in an SMTP envelope and a `To:` header.

use super::{ParseError, string_newtype};

/// `local@domain` with a dotted domain, at most 254 characters and no white space or control
/// characters (so it can never smuggle a header line).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EmailAddress(String);

impl EmailAddress {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let err = |reason| ParseError::new("email address", raw, reason);
        if raw.len() > 254 {
            return Err(err("is longer than 254 characters"));
        }
        if raw
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | '"'))
        {
            return Err(err("holds white space, a control or a reserved character"));
        }
        let Some((local, domain)) = raw.rsplit_once('@') else {
            return Err(err("has no '@'"));
        };
        if local.is_empty() || local.len() > 64 || local.contains('@') {
            return Err(err("has an empty, overlong or ambiguous local part"));
        }
        let labels: Vec<&str> = domain.split('.').collect();
        if labels.len() < 2
            || labels.iter().any(|l| {
                l.is_empty()
                    || l.len() > 63
                    || l.starts_with('-')
                    || l.ends_with('-')
                    || !l.chars().all(|c| c.is_alphanumeric() || c == '-')
            })
        {
            return Err(err("has an invalid domain"));
        }
        Ok(Self(raw.to_owned()))
    }
}

string_newtype!(EmailAddress);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_addresses_parse() {
        for ok in [
            "a@b.co",
            "first.last+tag@sub.example.org",
            "o'brien@example.ie",
        ] {
            assert!(EmailAddress::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn malformed_or_header_smuggling_addresses_are_refused() {
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a@localhost",
            "a@b..com",
            "a b@c.com",
            "a@b.com\r\nBcc: x@y.com",
            "a@-b.com",
            "<a@b.com>",
            "a@b@c.com",
        ] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad:?}");
        }
    }
}
