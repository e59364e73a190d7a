//! Newtypes that parse: a value of one of these types has been validated once, at the edge.

mod email;
mod portal_domain;
mod region;
mod sha1_digest;
mod tenant_name;

pub use email::EmailAddress;
pub use portal_domain::PortalDomain;
pub use region::Region;
pub use sha1_digest::Sha1Digest;
pub use tenant_name::TenantName;

/// Why a value did not parse; the message names the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {value:?}: {reason}")]
pub struct ParseError {
    pub kind: &'static str,
    pub value: String,
    pub reason: &'static str,
}

impl ParseError {
    pub(crate) fn new(kind: &'static str, value: &str, reason: &'static str) -> Self {
        // Cut what we echo back: a hostile value should not flood a log line.
        let value: String = value.chars().take(80).collect();
        Self {
            kind,
            value,
            reason,
        }
    }
}

/// Implements `Display`, `AsRef<str>`, `FromStr` and serde (as a validated string) for a newtype
/// with a `parse(&str) -> Result<Self, ParseError>` constructor.
macro_rules! string_newtype {
    ($ty:ident) => {
        impl $ty {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl std::str::FromStr for $ty {
            type Err = $crate::domain::ParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(&raw).map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use string_newtype;
