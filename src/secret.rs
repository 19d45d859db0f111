//! Secret values and their keyed fingerprints.
//!
//! A [`SecretValue`] never prints its contents: `Debug` and `Display` redact, and there is no
//! `Serialize`. A [`Fingerprinter`] turns a value into an HMAC-SHA256 tag under an operator-wide
//! key, so status can say "the secret changed" without revealing or enabling an offline guess of
//! the value.

use std::{fmt, sync::LazyLock};

use hmac::{Hmac, Mac};
use regex::Regex;
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
    /// responses that might echo what was sent: as sent, and in each encoding an echo may come
    /// back in (form-urlencoded as in a token request, percent-encoded as in a URL, JSON-escaped
    /// as in a JSON body). Longer forms go first so no form leaves part of another behind.
    pub fn scrub(&self, text: &str) -> String {
        if self.0.len() < 4 {
            return text.to_owned();
        }
        let mut forms = self.encoded_forms();
        forms.sort_by_key(|form| std::cmp::Reverse(form.len()));
        forms.into_iter().fold(text.to_owned(), |text, form| text.replace(&form, REDACTED))
    }

    /// The value and its encoded forms, without duplicates.
    fn encoded_forms(&self) -> Vec<String> {
        let form: String = url::form_urlencoded::byte_serialize(self.0.as_bytes()).collect();
        let json = serde_json::to_string(&self.0).expect("a string serializes");
        let json = json[1..json.len() - 1].to_owned();
        let percent = percent_encoded(&self.0);
        // Hex digits of percent escapes may come back in either case.
        let lower = [lowercase_escapes(&form), lowercase_escapes(&percent)];
        let mut forms = vec![self.0.clone(), form, percent, json];
        forms.extend(lower);
        forms.sort();
        forms.dedup();
        forms
    }
}

/// What replaces a secret in text.
const REDACTED: &str = "[redacted]";

/// The longest upstream text an error message keeps (characters), after scrubbing.
pub const MAX_MESSAGE_CHARS: usize = 200;

/// Upstream text made fit for a condition message, and stable for the same cause: every form of
/// every secret in play is removed first; a JSON error body is reduced to its code and message
/// (Graph's `innerError`, with its request ids and date, goes); then the first meaningful line is
/// kept without the ids and times upstreams embed (AADSTS "Trace ID", "Correlation ID",
/// "Timestamp", `request-id`, date-times), and cut to [`MAX_MESSAGE_CHARS`]. Scrubbing comes
/// first: in the other order a secret straddling the cut would leave its prefix behind,
/// unrecognisable to the scrub. Every path that puts upstream text into status goes through here,
/// so a failure repeated with fresh ids writes the same message, not a new status each time.
pub fn safe_message(text: &str, secrets: &[&SecretValue]) -> String {
    let scrub = |text: String| secrets.iter().fold(text, |text, secret| secret.scrub(&text));
    let scrubbed = scrub(text.to_owned());
    // Decoding the JSON undoes escapes the first scrub cannot recognise (`\u0061` for `a`), so
    // the decoded text is scrubbed again.
    let summary = json_error_summary(&scrubbed).map(scrub).unwrap_or(scrubbed);
    let line = summary.lines().map(without_volatile_parts).find(|line| !line.is_empty()).unwrap_or_default();
    if line.chars().count() > MAX_MESSAGE_CHARS { format!("{}…", line.chars().take(MAX_MESSAGE_CHARS).collect::<String>()) } else { line }
}

/// "code: message" of the JSON error shapes upstreams send: Graph's and other OData services'
/// `{"error": {"code", "message", "innerError"}}`, OAuth's `{"error", "error_description"}`, and a
/// plain `{"message"}`. None for anything else, which is then treated as text.
fn json_error_summary(text: &str) -> Option<String> {
    let body: serde_json::Value = serde_json::from_str(text.trim()).ok()?;
    let text_of = |v: &serde_json::Value| v.as_str().map(str::to_owned).or_else(|| v.as_i64().map(|n| n.to_string()));
    let (code, message) = match body.get("error") {
        Some(error @ serde_json::Value::Object(_)) => (error.get("code").and_then(text_of), error.get("message").and_then(text_of)),
        Some(error) => (text_of(error), body.get("error_description").or_else(|| body.get("message")).and_then(text_of)),
        None => (body.get("code").and_then(text_of), body.get("message").and_then(text_of)),
    };
    match (code, message) {
        (Some(code), Some(message)) => Some(format!("{code}: {message}")),
        (None, Some(text)) | (Some(text), None) => Some(text),
        (None, None) => None,
    }
}

/// `line` without request, trace and correlation ids, timestamps and date-times, whitespace
/// collapsed.
fn without_volatile_parts(line: &str) -> String {
    static LABELLED_ID: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r#"(?i)["']?\b(?:x-ms-)?(?:client[ _-]?request|request|correlation|trace|activity|ray)[ _-]?id["']?\s*[:=]\s*["']?[\w.:-]+["']?[,;]?"#)
            .expect("a valid pattern")
    });
    static LABELLED_TIME: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r#"(?i)["']?\b(?:timestamp|date|time)["']?\s*[:=]\s*["']?\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?["']?[,;]?"#)
            .expect("a valid pattern")
    });
    static DATE_TIME: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?").expect("a valid pattern"));
    let line = LABELLED_ID.replace_all(line, "");
    let line = LABELLED_TIME.replace_all(&line, "");
    let line = DATE_TIME.replace_all(&line, "");
    let collapsed = line.split_whitespace().collect::<Vec<_>>().join(" ");
    // What held only ids, e.g. "(request-id: …)", is left empty.
    collapsed.replace(" ()", "").replace("()", "").replace(" []", "")
}

/// `%2F` as `%2f`: the escapes' hex digits in lower case, everything else as is.
fn lowercase_escapes(encoded: &str) -> String {
    let mut out = String::with_capacity(encoded.len());
    let mut hex_left = 0;
    for c in encoded.chars() {
        if hex_left > 0 {
            out.push(c.to_ascii_lowercase());
            hex_left -= 1;
        } else {
            out.push(c);
            hex_left = if c == '%' { 2 } else { 0 };
        }
    }
    out
}

/// RFC 3986 percent-encoding of everything but the unreserved characters.
fn percent_encoded(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue([redacted])")
    }
}

impl fmt::Display for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
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
    fn scrub_removes_the_encoded_forms() {
        let s = SecretValue::new(r#"abc8Q~s+c/r"e\t=1 2"#);
        let echoes = [
            r#"abc8Q~s+c/r"e\t=1 2"#,
            "abc8Q%7Es%2Bc%2Fr%22e%5Ct%3D1+2",
            "abc8Q%7es%2bc%2fr%22e%5ct%3d1+2",
            "abc8Q~s%2Bc%2Fr%22e%5Ct%3D1%202",
            r#"abc8Q~s+c/r\"e\\t=1 2"#,
        ];
        for echo in echoes {
            assert_eq!(s.scrub(&format!("got <{echo}>")), "got <[redacted]>", "{echo}");
        }
    }

    #[test]
    fn safe_message_scrubs_before_it_cuts() {
        let s = SecretValue::new("abc8Q~0123456789-secret-value");
        let straddling = format!("{}{} trailing", "x".repeat(MAX_MESSAGE_CHARS - 5), s.expose());
        let message = safe_message(&straddling, &[&s]);
        assert!(!message.contains("abc8Q"), "{message}");
        assert!(message.starts_with(&"x".repeat(MAX_MESSAGE_CHARS - 5)), "{message}");
        assert_eq!(message.chars().count(), MAX_MESSAGE_CHARS + 1, "bounded, with an ellipsis");
        assert_eq!(safe_message("first\nsecond", &[]), "first");
        assert_eq!(safe_message("short", &[&s]), "short");
    }

    #[test]
    fn the_same_cause_gives_the_same_message_whatever_its_ids_and_times() {
        let aadsts = |trace: &str, at: &str| {
            format!("AADSTS7000215: Invalid client secret provided.\r\nTrace ID: {trace}\r\nCorrelation ID: {trace}\r\nTimestamp: {at}")
        };
        let first = safe_message(&aadsts("0f1e2d3c-aaaa-bbbb-cccc-000000000001", "2026-01-01 00:00:00Z"), &[]);
        assert_eq!(first, "AADSTS7000215: Invalid client secret provided.");
        assert_eq!(safe_message(&aadsts("9a8b7c6d-aaaa-bbbb-cccc-000000000002", "2026-06-30 23:59:59Z"), &[]), first);

        let graph = |id: &str, date: &str| {
            serde_json::json!({"error": {"code": "serviceNotAvailable", "message": "Service unavailable.",
                "innerError": {"date": date, "request-id": id, "client-request-id": id}}})
            .to_string()
        };
        let first = safe_message(&graph("11111111-0000-0000-0000-000000000001", "2026-12-02T07:30:00"), &[]);
        assert_eq!(first, "serviceNotAvailable: Service unavailable.");
        assert_eq!(safe_message(&graph("22222222-0000-0000-0000-000000000002", "2026-12-02T07:31:12"), &[]), first);

        assert_eq!(
            safe_message(r#"{"error": "invalid_client", "error_description": "bad secret\nTrace ID: 1"}"#, &[]),
            "invalid_client: bad secret"
        );
        let text =
            |id: &str| format!("upstream failed (request-id: {id}, timestamp: 2026-12-02T07:30:00.123Z) at 2026-12-02 07:30:00Z, retry");
        assert_eq!(safe_message(&text("abc-123"), &[]), safe_message(&text("def-456"), &[]));
        assert!(!safe_message(&text("abc-123"), &[]).contains("abc-123"));
        assert_eq!(safe_message("Bad Gateway (x-ms-request-id: 42)", &[]), "Bad Gateway");
        assert_eq!(safe_message("\n\n  \nTrace ID: 5\nGateway Timeout", &[]), "Gateway Timeout", "the first meaningful line");
    }

    #[test]
    fn json_errors_are_scrubbed_before_they_are_summarised() {
        let s = SecretValue::new("abc8Q~json-echoed-secret");
        let body = serde_json::json!({"error": {"code": "BadRequest", "message": format!("bad value {}", s.expose())}}).to_string();
        assert_eq!(safe_message(&body, &[&s]), "BadRequest: bad value [redacted]");
    }

    #[test]
    fn a_secret_escaped_in_json_is_scrubbed_once_decoded() {
        let s = SecretValue::new("abc8Q~json-escaped-secret");
        let body = r#"{"error": {"code": "BadRequest", "message": "bad value \u0061bc8Q\u007ejson-escaped-secret"}}"#;
        assert_eq!(safe_message(body, &[&s]), "BadRequest: bad value [redacted]");
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
