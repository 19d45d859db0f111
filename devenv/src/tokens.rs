//! Bearer tokens an emulated authorization server issued: opaque random strings, each with what
//! it grants and when it expires. Auth0, Logto and Entra ID keep theirs here.

use std::collections::HashMap;

use jiff::{SignedDuration, Timestamp};

use super::random_alnum;

pub(crate) struct IssuedTokens<G> {
    ttl_secs: i64,
    issued: HashMap<String, Issued<G>>,
}

struct Issued<G> {
    grant: G,
    expires: Timestamp,
}

/// What a presented token turns out to be.
pub(crate) enum Presented<'a, G> {
    Unknown,
    Expired,
    Valid(&'a G),
}

impl<G> IssuedTokens<G> {
    pub fn new(ttl_secs: i64) -> Self {
        Self { ttl_secs, issued: HashMap::new() }
    }

    /// The lifetime of tokens issued from now on, as `expires_in` reports it.
    pub fn ttl_secs(&self) -> i64 {
        self.ttl_secs
    }

    pub fn set_ttl(&mut self, secs: u64) {
        self.ttl_secs = i64::try_from(secs).unwrap_or(i64::MAX);
    }

    /// A new token of `len` random characters granting `grant` for the current lifetime.
    pub fn issue(&mut self, grant: G, len: usize) -> String {
        let token = random_alnum(len);
        let expires = Timestamp::now().saturating_add(SignedDuration::from_secs(self.ttl_secs)).expect("a duration, not a span");
        self.issued.insert(token.clone(), Issued { grant, expires });
        token
    }

    pub fn presented(&self, token: &str) -> Presented<'_, G> {
        match self.issued.get(token) {
            None => Presented::Unknown,
            Some(issued) if issued.expires <= Timestamp::now() => Presented::Expired,
            Some(issued) => Presented::Valid(&issued.grant),
        }
    }

    /// The grant of an issued, unexpired token.
    pub fn valid(&self, token: &str) -> Option<&G> {
        match self.presented(token) {
            Presented::Valid(grant) => Some(grant),
            Presented::Unknown | Presented::Expired => None,
        }
    }

    /// Forgets every token, as if all had expired or the signing keys had rotated.
    pub fn revoke_all(&mut self) {
        self.issued.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_valid_until_they_expire_or_are_revoked() {
        let mut tokens = IssuedTokens::new(3600);
        let token = tokens.issue("read", 32);
        assert_eq!(token.len(), 32);
        assert_eq!(tokens.valid(&token), Some(&"read"));
        assert!(matches!(tokens.presented("other"), Presented::Unknown));
        tokens.set_ttl(0);
        let expired = tokens.issue("write", 32);
        assert!(matches!(tokens.presented(&expired), Presented::Expired));
        assert_eq!(tokens.ttl_secs(), 0);
        tokens.revoke_all();
        assert!(tokens.valid(&token).is_none());
    }
}
