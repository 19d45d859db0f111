//! Microsoft Graph: the application's `passwordCredentials`, to learn when the held secret
//! expires. Graph only shows a credential's `hint` (its first three characters), so the held
//! value is matched by hint; several credentials may share one.

use std::time::Duration;

use serde::Deserialize;

use crate::{crd::conditions::Reason, secret::SecretValue, upstream::TransportError};

/// One of the application's client secrets, as Graph describes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PasswordCredential {
    pub key_id: String,
    #[serde(default)]
    pub hint: Option<String>,
    pub end_date_time: jiff::Timestamp,
}

/// The expiry Graph gives for the held secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretExpiry {
    pub expires_at: jiff::Timestamp,
    pub key_id: String,
    /// How many of the application's credentials share the secret's hint (1 when unambiguous).
    pub same_hint: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error(
        "Microsoft Graph denied reading the application (grant the application permission Application.Read.All, with admin consent, to read secret expiry)"
    )]
    PermissionMissing,
    #[error("the held secret is not one of this application's client secrets (no credential has its first three characters)")]
    SecretNotInApplication,
    #[error("the application was not found in Microsoft Graph")]
    ApplicationNotFound,
    /// Graph (or the login service, for a new Graph token) asked to wait; `retry_after` is the
    /// time left. Not in the text, which must stay the same for the whole block.
    #[error("Microsoft Graph is throttling requests")]
    Throttled { retry_after: Option<Duration> },
    #[error("Microsoft Graph is unreachable: {0}")]
    Unreachable(#[from] TransportError),
    #[error("Microsoft Graph answered HTTP {status}: {message}")]
    Unexpected { status: u16, message: String },
    #[error("a Graph token could not be obtained: {0}")]
    Token(String),
}

impl GraphError {
    pub fn reason(&self) -> Reason {
        match self {
            GraphError::PermissionMissing => Reason::GraphPermissionMissing,
            GraphError::SecretNotInApplication => Reason::SecretNotInApplication,
            GraphError::Unexpected { status, .. } if *status >= 500 => Reason::GraphUnreachable,
            GraphError::ApplicationNotFound | GraphError::Unexpected { .. } | GraphError::Token(_) => Reason::GraphError,
            GraphError::Throttled { .. } | GraphError::Unreachable(_) => Reason::GraphUnreachable,
        }
    }

    /// Graph is down or throttling: it says nothing about the secret, and may answer later.
    pub fn is_transient(&self) -> bool {
        self.reason() == Reason::GraphUnreachable
    }
}

/// Finds the credential whose hint matches the secret; with several, the earliest expiry wins.
pub fn match_secret(credentials: &[PasswordCredential], secret: &SecretValue) -> Result<SecretExpiry, GraphError> {
    let hint: String = secret.expose().chars().take(3).collect();
    let matching: Vec<&PasswordCredential> = credentials.iter().filter(|c| c.hint.as_deref() == Some(hint.as_str())).collect();
    let earliest = matching.iter().min_by_key(|c| c.end_date_time).ok_or(GraphError::SecretNotInApplication)?;
    Ok(SecretExpiry { expires_at: earliest.end_date_time, key_id: earliest.key_id.clone(), same_hint: matching.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(key: &str, hint: &str, end: i64) -> PasswordCredential {
        PasswordCredential { key_id: key.into(), hint: Some(hint.into()), end_date_time: jiff::Timestamp::from_second(end).unwrap() }
    }

    #[test]
    fn matches_by_hint() {
        let creds = [cred("k1", "abc", 100), cred("k2", "xyz", 200)];
        let found = match_secret(&creds, &SecretValue::new("xyz8Q~rest")).unwrap();
        assert_eq!((found.key_id.as_str(), found.same_hint), ("k2", 1));
    }

    #[test]
    fn ambiguous_hints_take_the_earliest_expiry() {
        let creds = [cred("late", "abc", 300), cred("early", "abc", 100), cred("other", "zzz", 50)];
        let found = match_secret(&creds, &SecretValue::new("abc-secret")).unwrap();
        assert_eq!((found.key_id.as_str(), found.same_hint), ("early", 2));
        assert_eq!(found.expires_at.as_second(), 100);
    }

    #[test]
    fn no_match_is_a_specific_error() {
        let err = match_secret(&[cred("k1", "abc", 100)], &SecretValue::new("nope")).unwrap_err();
        assert_eq!(err.reason(), Reason::SecretNotInApplication);
    }

    #[test]
    fn parses_graph_credentials() {
        let json = r#"{"customKeyIdentifier":null,"displayName":"ci","endDateTime":"2027-01-31T10:00:00Z","hint":"abc","keyId":"6f5e2a39-0a42-4a4e-9a55-4f2a3cfe2f0b","secretText":null,"startDateTime":"2025-01-31T10:00:00Z"}"#;
        let c: PasswordCredential = serde_json::from_str(json).unwrap();
        assert_eq!(c.hint.as_deref(), Some("abc"));
        assert_eq!(c.end_date_time.to_string(), "2027-01-31T10:00:00Z");
    }
}
