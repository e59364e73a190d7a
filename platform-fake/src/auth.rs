//! HTTP Basic authentication as the platform does it: user = the tenant's portal domain,
//! password = its API key.
//!
//! No `Authorization` header, another scheme, or Basic credentials that do not decode to
//! `user:password` → 401 (credentials missing); well-formed Basic credentials for an unknown
//! domain or with the wrong key → 403 (credentials not valid).

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::state::{Store, normalize_domain};

/// Why a request is not authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AuthError {
    /// 401.
    Missing,
    /// 403.
    Invalid,
}

/// Basic credentials as sent. `Debug` never shows the key.
pub(crate) struct Credentials {
    pub domain: String,
    pub api_key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("domain", &self.domain)
            .field("api_key", &"[redacted]")
            .finish()
    }
}

/// Reads Basic credentials from the headers.
pub(crate) fn credentials(headers: &HeaderMap) -> Result<Credentials, AuthError> {
    let value = headers
        .get(AUTHORIZATION)
        .ok_or(AuthError::Missing)?
        .to_str()
        .map_err(|_| AuthError::Missing)?;
    let (scheme, encoded) = value.trim().split_once(' ').ok_or(AuthError::Missing)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(AuthError::Missing);
    }
    let decoded = STANDARD
        .decode(encoded.trim())
        .map_err(|_| AuthError::Missing)?;
    let decoded = String::from_utf8(decoded).map_err(|_| AuthError::Missing)?;
    let (domain, api_key) = decoded.split_once(':').ok_or(AuthError::Missing)?;
    Ok(Credentials {
        domain: domain.to_owned(),
        api_key: api_key.to_owned(),
    })
}

/// The normalised domain of the tenant the headers authenticate.
pub(crate) fn authenticate(store: &Store, headers: &HeaderMap) -> Result<String, AuthError> {
    let given = credentials(headers)?;
    match store.tenant(&given.domain) {
        Some(tenant) if constant_time_eq(tenant.api_key.as_bytes(), given.api_key.as_bytes()) => {
            Ok(normalize_domain(&given.domain))
        }
        _ => Err(AuthError::Invalid),
    }
}

/// Compares without an early exit on the first differing byte (a habit worth keeping even in a
/// fake: the same code shape tends to get copied).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(AUTHORIZATION, value);
        }
        headers
    }

    fn basic(user_pass: &str) -> HeaderMap {
        headers(&format!("Basic {}", STANDARD.encode(user_pass)))
    }

    fn store() -> Store {
        let mut store = Store::default();
        store.add_tenant("acme.learning-admin.com", "s3cret");
        store
    }

    #[test]
    fn the_right_domain_and_key_authenticate() {
        let store = store();
        let ok = authenticate(&store, &basic("ACME.learning-admin.com:s3cret"));
        assert_eq!(ok, Ok("acme.learning-admin.com".to_owned()));
    }

    #[test]
    fn missing_or_malformed_credentials_are_401() {
        let store = store();
        for h in [
            HeaderMap::new(),
            headers("Bearer abc"),
            headers("Basic !!!notbase64"),
            basic("no-colon-here"),
        ] {
            assert_eq!(authenticate(&store, &h), Err(AuthError::Missing));
        }
    }

    #[test]
    fn a_wrong_key_or_unknown_domain_is_403() {
        let store = store();
        for h in [
            basic("acme.learning-admin.com:wrong"),
            basic("acme.learning-admin.com:"),
            basic("globex.learning-admin.com:s3cret"),
        ] {
            assert_eq!(authenticate(&store, &h), Err(AuthError::Invalid));
        }
    }

    #[test]
    fn credentials_never_show_the_key_in_debug() {
        let shown = format!(
            "{:?}",
            credentials(&basic("acme.learning-admin.com:s3cret"))
        );
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
