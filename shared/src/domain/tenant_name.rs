//! A tenant's name: the first label of its portal hostname, also its FTPS user name.

use super::{ParseError, string_newtype};

/// Lowercase ASCII letters, digits and `-`; starts with a letter; at most 32 characters (a name that
/// is also a login on the FTPS server must fit the usual user-name limits).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TenantName(String);

impl TenantName {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let err = |reason| ParseError::new("tenant name", raw, reason);
        if raw.is_empty() {
            return Err(err("is empty"));
        }
        if raw.len() > 32 {
            return Err(err("is longer than 32 characters"));
        }
        if !raw.starts_with(|c: char| c.is_ascii_lowercase()) {
            return Err(err("must start with a lowercase letter"));
        }
        if raw.ends_with('-') {
            return Err(err("must not end with '-'"));
        }
        if !raw
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(err("may hold only lowercase letters, digits and '-'"));
        }
        Ok(Self(raw.to_owned()))
    }
}

string_newtype!(TenantName);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostname_label_is_a_tenant_name() {
        assert_eq!(
            TenantName::parse("acme-2").map(|t| t.to_string()),
            Ok("acme-2".into())
        );
    }

    #[test]
    fn names_that_cannot_be_a_login_are_refused() {
        for bad in [
            "",
            "Acme",
            "2acme",
            "acme_x",
            "acme-",
            "a b",
            "../etc",
            &"a".repeat(33),
        ] {
            assert!(TenantName::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
