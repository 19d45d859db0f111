//! Go-style durations (`90s`, `1h30m`, `720h`) as used across Kubernetes APIs, so CEL's
//! `duration()` can check minimums in the CRD and the controller parses the same text.

use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a duration like 90s, 15m, 1h30m or 720h")]
pub struct DurationParseError(pub String);

/// Parses a sequence of `<number><unit>` with units ms, s, m, h.
pub fn parse(text: &str) -> Result<Duration, DurationParseError> {
    let err = || DurationParseError(text.to_owned());
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(err());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
        if digits == 0 {
            return Err(err());
        }
        let value: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(err()),
        };
        total += unit.checked_mul(u32::try_from(value).map_err(|_| err())?).ok_or_else(err)?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// Formats whole seconds as Go would print them (`1h0m0s` style is avoided for readability).
pub fn format(d: Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// CEL regex shared by every duration field; `duration()` accepts exactly these forms.
pub const PATTERN: &str = "^([0-9]+(ms|s|m|h))+$";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("720h").unwrap(), Duration::from_secs(720 * 3600));
        assert_eq!(parse("1500ms").unwrap(), Duration::from_millis(1500));
    }

    #[test]
    fn rejects_other_text() {
        for bad in ["", "1", "h", "30d", "1.5h", "-1h", "1h 30m", "1x"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats_round_trip() {
        for d in [Duration::from_secs(5400), Duration::from_secs(59), Duration::from_secs(3600), Duration::ZERO] {
            assert_eq!(parse(&format(d)).unwrap(), d);
        }
    }
}
