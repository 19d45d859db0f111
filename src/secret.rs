//! Secret values and their keyed fingerprints.
//!
//! A [`SecretValue`] never prints its contents: `Debug` and `Display` redact, and there is no
//! `Serialize`. A [`Fingerprinter`] turns a value into an HMAC-SHA256 tag under an operator-wide
//! key, so status can say "the secret changed" without revealing or enabling an offline guess of
//! the value.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A secret string that refuses to be printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(String);

impl SecretValue {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The plain value, for the one place that must send it (a request body).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Removes every occurrence of the value from `text`, for messages built from upstream
    /// responses that might echo what was sent.
    pub fn scrub(&self, text: &str) -> String {
        if self.0.len() < 4 {
            return text.to_owned();
        }
        text.replace(&self.0, "[redacted]")
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue([redacted])")
    }
}

impl fmt::Display for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Keyed fingerprints of secret values (HMAC-SHA256, truncated to 128 bits, hex).
#[derive(Clone)]
pub struct Fingerprinter {
    key: Vec<u8>,
}

impl fmt::Debug for Fingerprinter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Fingerprinter([redacted key])")
    }
}

/// Prefix that names the scheme, so a future change of scheme is visible in status.
const FINGERPRINT_PREFIX: &str = "hmac-sha256:";

impl Fingerprinter {
    pub fn new(key: impl Into<Vec<u8>>) -> Self {
        Self { key: key.into() }
    }

    /// A fresh random 256-bit key.
    pub fn random_key() -> Vec<u8> {
        use rand::RngCore;
        let mut key = vec![0u8; 32];
        rand::rng().fill_bytes(&mut key);
        key
    }

    pub fn fingerprint(&self, value: &SecretValue) -> String {
        self.fingerprint_bytes(value.expose().as_bytes())
    }

    pub fn fingerprint_bytes(&self, value: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC accepts any key length");
        mac.update(value);
        let tag = mac.finalize().into_bytes();
        format!("{FINGERPRINT_PREFIX}{}", hex::encode(&tag[..16]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_redact() {
        let s = SecretValue::new("canary-value-123");
        assert!(!format!("{s:?}").contains("canary"));
        assert!(!format!("{s}").contains("canary"));
        assert!(!format!("{:?}", Some(&s)).contains("canary"));
    }

    #[test]
    fn scrub_removes_the_value() {
        let s = SecretValue::new("abc8Q~secret");
        assert_eq!(s.scrub("bad value abc8Q~secret here"), "bad value [redacted] here");
    }

    #[test]
    fn fingerprint_is_keyed_and_stable() {
        let a = Fingerprinter::new(b"key-a".to_vec());
        let b = Fingerprinter::new(b"key-b".to_vec());
        let v = SecretValue::new("value");
        assert_eq!(a.fingerprint(&v), a.fingerprint(&v));
        assert_ne!(a.fingerprint(&v), b.fingerprint(&v));
        assert!(a.fingerprint(&v).starts_with("hmac-sha256:"));
        assert_eq!(a.fingerprint(&v).len(), "hmac-sha256:".len() + 32);
        // Not a plain hash of the value.
        use sha2::Digest;
        let plain = hex::encode(sha2::Sha256::digest(b"value"));
        assert!(!plain.starts_with(&a.fingerprint(&v)["hmac-sha256:".len()..]));
    }
}
