//! A tenant's admin-portal domain (`acme.learning-admin.com`): the Basic-auth user of the API.

use super::{ParseError, string_newtype};

/// A lowercase DNS hostname with at least two labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PortalDomain(String);

impl PortalDomain {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let err = |reason| ParseError::new("portal domain", raw, reason);
        if raw.len() > 253 {
            return Err(err("is longer than 253 characters"));
        }
        let labels: Vec<&str> = raw.split('.').collect();
        if labels.len() < 2 {
            return Err(err("must have at least two labels"));
        }
        for l in &labels {
            if l.is_empty()
                || l.len() > 63
                || l.starts_with('-')
                || l.ends_with('-')
                || !l
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            {
                return Err(err("has a label that is not a lowercase hostname label"));
            }
        }
        Ok(Self(raw.to_owned()))
    }

    /// The first label: by the platform's convention, the tenant's name.
    pub fn first_label(&self) -> &str {
        self.0.split('.').next().unwrap_or_default()
    }
}

string_newtype!(PortalDomain);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_label_is_the_tenant() {
        let d = PortalDomain::parse("acme.learning-admin.com").map(|d| d.first_label().to_owned());
        assert_eq!(d, Ok("acme".to_owned()));
    }

    #[test]
    fn non_hostnames_are_refused() {
        for bad in [
            "acme",
            "Acme.com",
            "acme..com",
            "-a.com",
            "a_b.com",
            "a.com/x",
        ] {
            assert!(PortalDomain::parse(bad).is_err(), "{bad:?}");
        }
    }
}
