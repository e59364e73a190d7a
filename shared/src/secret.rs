//! Secrets in a type that never prints: a tenant's API key (which is also its FTPS password) and any
//! other credential the settings hold.

use secrecy::{ExposeSecret, SecretString};

/// A tenant's API key. `Debug` and `Display` print `[redacted]`; the only way to the value is
/// [`ApiKey::expose`], called where the key goes on the wire (Basic auth, FTPS login).
#[derive(Clone)]
pub struct ApiKey(SecretString);

impl ApiKey {
    pub fn new(value: impl Into<String>) -> Self {
        Self(SecretString::from(value.into()))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey([redacted])")
    }
}

impl std::fmt::Display for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A credential from the settings (an SMTP password, a broker URL with a password in it).
#[derive(Clone, Default)]
pub struct Secret(Option<SecretString>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(Some(SecretString::from(value.into())))
    }

    pub fn expose(&self) -> Option<&str> {
        self.0.as_ref().map(|s| s.expose_secret())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(_) => f.write_str("Secret([redacted])"),
            None => f.write_str("Secret(None)"),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self::new(<String as serde::Deserialize>::deserialize(d)?))
    }
}

/// Replaces every occurrence of `secret` in `text` with `[redacted]`: the last line of defence for
/// error messages that quote a URL or a server's answer.
pub fn redact(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        return text.to_owned();
    }
    text.replace(secret, "[redacted]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_never_print() {
        let k = ApiKey::new("s3cr3t-canary");
        assert!(!format!("{k:?} {k}").contains("s3cr3t"));
        assert_eq!(k.expose(), "s3cr3t-canary");
        let s = Secret::new("pw");
        assert!(!format!("{s:?}").contains("pw"));
    }

    #[test]
    fn redact_removes_every_copy() {
        assert_eq!(redact("a KEY b KEY", "KEY"), "a [redacted] b [redacted]");
        assert_eq!(redact("abc", ""), "abc");
    }
}
