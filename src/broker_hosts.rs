//! The operator-level allowlist of broker management hosts (`--broker-hosts`).
//!
//! Whoever may create an IdentityBroker chooses the host the operator sends that namespace's
//! broker credential to; the allowlist bounds that choice to hosts the platform team accepts.
//! A pattern is an exact host (`auth.example.com`) or a suffix wildcard (`*.auth0.com`, which
//! matches any depth below `auth0.com`, never `auth0.com` itself), with an optional `:port` on
//! exact hosts. IP literals, loopback and link-local names (`localhost`, `*.localhost`,
//! `*.local`) and ports other than 443 are admitted only by a pattern naming them exactly: a
//! wildcard never admits them, so a wildcard can never open the way to internal services.

use std::{fmt, net::IpAddr, str::FromStr};

/// The default allowlist: the vendors' own hosts. Self-hosted Logto and Auth0 custom domains are
/// added by the platform team.
pub const DEFAULT_BROKER_HOSTS: &str = "*.auth0.com,*.logto.app,api.cloudflare.com,api.unified.to,api-eu.unified.to,api-au.unified.to";

const HTTPS_PORT: u16 = 443;

/// Broker hosts the operator may call, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerHosts(Vec<HostPattern>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// One host and port.
    Exact { host: String, port: u16 },
    /// Any name ending in `.suffix` (stored with the leading dot), on port 443.
    Below { suffix: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostPatternError {
    #[error("--broker-hosts is empty: no broker could be reached")]
    Empty,
    #[error("broker host pattern {0:?} is not HOST, HOST:PORT or *.SUFFIX (no scheme or path)")]
    Shape(String),
    #[error("broker host pattern {0:?}: a wildcard may not carry a port; list HOST:PORT exactly")]
    WildcardPort(String),
    #[error("broker host pattern {0:?}: a wildcard must be *.SUFFIX with a dotted suffix and no IP literal")]
    WildcardSuffix(String),
}

impl FromStr for BrokerHosts {
    type Err = HostPatternError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let patterns = text.split(',').map(str::trim).filter(|p| !p.is_empty()).map(HostPattern::parse).collect::<Result<Vec<_>, _>>()?;
        if patterns.is_empty() {
            return Err(HostPatternError::Empty);
        }
        Ok(BrokerHosts(patterns))
    }
}

impl Default for BrokerHosts {
    fn default() -> Self {
        DEFAULT_BROKER_HOSTS.parse().expect("the default broker hosts parse")
    }
}

impl fmt::Display for BrokerHosts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: Vec<String> = self.0.iter().map(HostPattern::to_string).collect();
        f.write_str(&shown.join(","))
    }
}

impl BrokerHosts {
    /// Whether the operator may call `authority` (`host` or `host:port`, as the broker clients
    /// address it; no port means 443).
    pub fn allows(&self, authority: &str) -> bool {
        let Some((host, port)) = split_authority(authority) else { return false };
        self.0.iter().any(|pattern| pattern.admits(&host, port))
    }
}

impl HostPattern {
    fn parse(text: &str) -> Result<Self, HostPatternError> {
        let shape = || HostPatternError::Shape(text.to_owned());
        if text.contains("://") || text.contains('/') {
            return Err(shape());
        }
        if let Some(suffix) = text.strip_prefix("*.") {
            if suffix.contains(':') && !suffix.contains('[') {
                return Err(HostPatternError::WildcardPort(text.to_owned()));
            }
            let suffix = normalize(suffix);
            if !suffix.contains('.') || !is_dns_name(&suffix) || is_special(&suffix) {
                return Err(HostPatternError::WildcardSuffix(text.to_owned()));
            }
            return Ok(HostPattern::Below { suffix: format!(".{suffix}") });
        }
        let (host, port) = split_authority(text).ok_or_else(shape)?;
        if host.parse::<IpAddr>().is_err() && !is_dns_name(&host) {
            return Err(shape());
        }
        Ok(HostPattern::Exact { host, port })
    }

    fn admits(&self, host: &str, port: u16) -> bool {
        match self {
            HostPattern::Exact { host: allowed, port: allowed_port } => allowed == host && *allowed_port == port,
            HostPattern::Below { suffix } => port == HTTPS_PORT && !is_special(host) && host.ends_with(suffix.as_str()),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact { host, port: HTTPS_PORT } => write!(f, "{}", bracketed(host)),
            HostPattern::Exact { host, port } => write!(f, "{}:{port}", bracketed(host)),
            HostPattern::Below { suffix } => write!(f, "*{suffix}"),
        }
    }
}

fn bracketed(host: &str) -> String {
    if host.contains(':') { format!("[{host}]") } else { host.to_owned() }
}

/// `(host, port)` of `host`, `host:port`, `[v6]` or `[v6]:port`: the host lower-cased without a
/// trailing dot and IPv6 without brackets; None when it is not one of these shapes.
fn split_authority(authority: &str) -> Option<(String, u16)> {
    let authority = authority.trim();
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        v6.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?),
        };
        (v6, port)
    } else if authority.parse::<std::net::Ipv6Addr>().is_ok() {
        (authority, None)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        None => HTTPS_PORT,
        Some(digits) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => digits.parse().ok().filter(|p| *p != 0)?,
        Some(_) => return None,
    };
    let host = normalize(host);
    (!host.is_empty()).then_some((host, port))
}

fn normalize(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

fn is_dns_name(host: &str) -> bool {
    host.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    })
}

/// Hosts only an exact pattern admits: IP literals (including the all-numeric forms a URL parser
/// reads as IPv4), loopback names and link-local (mDNS) names.
fn is_special(host: &str) -> bool {
    let last_label = host.rsplit('.').next().unwrap_or(host);
    host.parse::<IpAddr>().is_ok()
        || host.contains(':')
        || last_label.bytes().all(|b| b.is_ascii_digit())
        || last_label.starts_with("0x")
        || host == "localhost"
        || host.ends_with(".localhost")
        || host == "localhost.localdomain"
        || host.ends_with(".local")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(text: &str) -> BrokerHosts {
        text.parse().unwrap()
    }

    #[test]
    fn defaults_admit_the_vendor_hosts() {
        let defaults = BrokerHosts::default();
        for host in [
            "acme.auth0.com",
            "acme.eu.auth0.com",
            "acme.us.auth0.com",
            "acme.au.auth0.com",
            "acme.jp.auth0.com",
            "ACME.EU.Auth0.com.",
            "abc123.logto.app",
            "api.cloudflare.com",
            "api.unified.to",
            "api-eu.unified.to",
            "api-au.unified.to",
            "abc123.logto.app:443",
        ] {
            assert!(defaults.allows(host), "{host}");
        }
        for host in [
            "auth0.com",
            "evil.internal",
            "auth0.com.evil.internal",
            "evilauth0.com",
            "abc123.logto.app:8443",
            "api.cloudflare.com:8443",
            "cloudflare.com",
            "api-us.unified.to",
            "10.0.0.1",
            "10.0.0.1:8443",
            "[::1]",
            "localhost",
            "",
            "acme.eu.auth0.com:",
            "acme.eu.auth0.com:x",
        ] {
            assert!(!defaults.allows(host), "{host}");
        }
    }

    #[test]
    fn wildcards_never_admit_ip_literals_loopback_or_other_ports() {
        let list = hosts("*.example.com,*.corp.internal");
        assert!(list.allows("a.example.com"));
        assert!(list.allows("a.b.c.example.com"), "any depth");
        assert!(!list.allows("example.com"), "the suffix itself is not below it");
        assert!(!list.allows("a.example.com:8443"));
        assert!(!list.allows("a.example.com:80"));
        assert!(list.allows("a.example.com:443"));
        for internal in ["10.0.0.1", "[::1]:443", "::1", "169.254.169.254", "localhost", "printer.local", "2130706433"] {
            assert!(!list.allows(internal), "{internal}");
        }
    }

    #[test]
    fn exact_patterns_admit_what_they_name_only() {
        let list = hosts("auth.example.com, logto.corp:8443, 10.0.0.5, [fd00::1]:9443, localhost:3001");
        assert!(list.allows("auth.example.com"));
        assert!(list.allows("auth.example.com:443"));
        assert!(!list.allows("auth.example.com:8443"), "a port is part of the pattern");
        assert!(!list.allows("sub.auth.example.com"));
        assert!(list.allows("logto.corp:8443"));
        assert!(!list.allows("logto.corp"), "listed with another port");
        assert!(list.allows("10.0.0.5"));
        assert!(!list.allows("10.0.0.6"));
        assert!(!list.allows("10.0.0.5:8443"));
        assert!(list.allows("[fd00::1]:9443"));
        assert!(!list.allows("[fd00::1]"));
        assert!(list.allows("localhost:3001"));
        assert!(!list.allows("localhost"));
    }

    #[test]
    fn bad_patterns_are_clear_errors() {
        assert_eq!("".parse::<BrokerHosts>(), Err(HostPatternError::Empty));
        assert_eq!(" , ".parse::<BrokerHosts>(), Err(HostPatternError::Empty));
        for shape in ["https://auth.example.com", "auth.example.com/api", "auth.example.com:x", "auth.example.com:0", "a b", "*"] {
            assert!(matches!(shape.parse::<BrokerHosts>(), Err(HostPatternError::Shape(_))), "{shape}");
        }
        assert!(matches!("*.example.com:8443".parse::<BrokerHosts>(), Err(HostPatternError::WildcardPort(_))));
        for suffix in ["*.com", "*.10.0.0", "*.", "*.localhost.localhost", "*.a..b"] {
            assert!(matches!(suffix.parse::<BrokerHosts>(), Err(HostPatternError::WildcardSuffix(_))), "{suffix}");
        }
    }

    #[test]
    fn shown_as_parsed() {
        assert_eq!(BrokerHosts::default().to_string(), DEFAULT_BROKER_HOSTS);
        assert_eq!(
            hosts("A.example.com:443,b.example.com:8443,[FD00::1]:9443,*.X.org").to_string(),
            "a.example.com,b.example.com:8443,[fd00::1]:9443,*.x.org"
        );
    }
}
