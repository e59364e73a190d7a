//! A fleet region (`eu`, `us`, …): it names the queue a tenant's jobs go to.

use super::{ParseError, string_newtype};

/// Lowercase ASCII letters and digits, 1 to 16 characters, so it is safe inside a queue name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Region(String);

impl Region {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        if raw.is_empty() || raw.len() > 16 {
            return Err(ParseError::new("region", raw, "must be 1 to 16 characters"));
        }
        if !raw
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        {
            return Err(ParseError::new(
                "region",
                raw,
                "may hold only lowercase letters and digits",
            ));
        }
        Ok(Self(raw.to_owned()))
    }
}

string_newtype!(Region);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_names_are_queue_safe() {
        assert!(Region::parse("eu").is_ok());
        assert!(Region::parse("us2").is_ok());
        for bad in ["", "EU", "eu.west", "eu west", "eu-west-1-and-more-x"] {
            assert!(Region::parse(bad).is_err(), "{bad:?}");
        }
    }
}
