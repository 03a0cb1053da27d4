//! Origins (`scheme://host[:port]`): parsing, host normalisation and one-label wildcards.
//!
//! Hosts are compared after lowercasing, IDNA to ASCII and trailing-dot removal. Matching is
//! whole-host equality or, for `*.parent`, exactly one label in front of `parent`; so a host
//! can only ever match on a label boundary (`github.com` never matches `evil-github.com` or
//! `github.com.evil.com`). The port is part of the origin; a default port written out is the
//! same origin as one left out.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// The URL schemes behalf speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

impl Scheme {
    /// Parses `http` or `https`, case-insensitively.
    pub fn parse(s: &str) -> Result<Self, OriginError> {
        if s.eq_ignore_ascii_case("https") {
            Ok(Self::Https)
        } else if s.eq_ignore_ascii_case("http") {
            Ok(Self::Http)
        } else {
            Err(OriginError::Scheme(s.to_owned()))
        }
    }

    /// The port used when none is written.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Http => 80,
            Self::Https => 443,
        }
    }

    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }
}

/// Why an origin or host was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OriginError {
    /// Not of the form `scheme://host[:port]`.
    #[error("expected `scheme://host[:port]`, found `{0}`")]
    Shape(String),
    /// A scheme other than http or https.
    #[error("scheme `{0}` is not supported; use `https` (or `http`)")]
    Scheme(String),
    /// `user@` in the authority.
    #[error("origin must not contain userinfo (`user@`)")]
    Userinfo,
    /// A path, query or fragment after the authority.
    #[error(
        "origin must not have a path, query or fragment (found `{0}`); write only `scheme://host[:port]`"
    )]
    Path(String),
    /// The port was not a number in 1..=65535.
    #[error("port `{0}` is not a number from 1 to 65535")]
    Port(String),
    /// The host is empty or not a valid DNS name or IP literal.
    #[error("host `{0}` is not a valid DNS name or IP address")]
    Host(String),
    /// A wildcard anywhere but as the whole first label.
    #[error(
        "wildcard host `{0}` is not allowed; only `*.` as the whole first label (`*.example.com`)"
    )]
    Wildcard(String),
}

/// A normalised host name or IP literal (IPv6 in brackets).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Host(Box<str>);

impl Host {
    /// Normalises a host: lowercase, IDNA to ASCII, one trailing dot removed, IPv6 literals in
    /// canonical bracketed form. Rejects empty labels and anything that is not a DNS name.
    pub fn parse(raw: &str) -> Result<Self, OriginError> {
        let bad = || OriginError::Host(raw.chars().take(100).collect());
        if let Some(inner) = raw.strip_prefix('[') {
            let inner = inner.strip_suffix(']').ok_or_else(bad)?;
            let ip: Ipv6Addr = inner.parse().map_err(|_| bad())?;
            return Ok(Self(format!("[{ip}]").into()));
        }
        let trimmed = raw.strip_suffix('.').unwrap_or(raw);
        if trimmed.is_empty() || trimmed.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(bad());
        }
        let ascii = idna::domain_to_ascii(trimmed).map_err(|_| bad())?;
        let valid_label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if ascii.is_empty() || ascii.len() > 253 || !ascii.split('.').all(valid_label) {
            return Err(bad());
        }
        if let Ok(ip) = ascii.parse::<Ipv4Addr>() {
            return Ok(Self(ip.to_string().into()));
        }
        // A name ending in a number is an IPv4 address to URL parsers and resolvers
        // (`2130706433`, `0x7f.1`, `127.1`); only the canonical dotted quad is accepted.
        let last = ascii.rsplit('.').next().unwrap_or("");
        let numeric = last.bytes().all(|b| b.is_ascii_digit())
            || last
                .strip_prefix("0x")
                .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
        if numeric {
            return Err(bad());
        }
        Ok(Self(ascii.into()))
    }

    /// The normalised host.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The host without its first label, if it has more than one.
    fn parent(&self) -> Option<&str> {
        if self.0.starts_with('[') {
            return None;
        }
        self.0.split_once('.').map(|(_, rest)| rest)
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A concrete origin: scheme, normalised host and port (always explicit internally).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Origin {
    /// http or https.
    pub scheme: Scheme,
    /// The normalised host.
    pub host: Host,
    /// The port; the scheme's default when none was written.
    pub port: u16,
}

impl Origin {
    /// Parses `scheme://host[:port]` with nothing after the authority.
    pub fn parse(raw: &str) -> Result<Self, OriginError> {
        let (scheme, authority, rest) = split_url(raw)?;
        if !rest.is_empty() {
            return Err(OriginError::Path(rest.to_owned()));
        }
        Self::from_parts(scheme, authority)
    }

    /// Builds an origin from a scheme and an authority (`host[:port]`).
    pub fn from_parts(scheme: Scheme, authority: &str) -> Result<Self, OriginError> {
        let (host, port) = split_authority(authority)?;
        Ok(Self {
            scheme,
            host: Host::parse(host)?,
            port: port.unwrap_or(scheme.default_port()),
        })
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.host)?;
        if self.port != self.scheme.default_port() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

/// An origin as written in a service file: exact, or `*.parent` matching one label.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OriginPattern {
    /// Exactly this origin.
    Exact(Origin),
    /// Any host with exactly one more label than `parent`, same scheme and port.
    Wildcard {
        /// http or https.
        scheme: Scheme,
        /// The normalised host after `*.`.
        parent: Host,
        /// The port.
        port: u16,
    },
}

impl OriginPattern {
    /// Parses an origin that may start its host with `*.`.
    pub fn parse(raw: &str) -> Result<Self, OriginError> {
        let (scheme, authority, rest) = split_url(raw)?;
        if !rest.is_empty() {
            return Err(OriginError::Path(rest.to_owned()));
        }
        if !authority.contains('*') {
            return Origin::from_parts(scheme, authority).map(Self::Exact);
        }
        let (host, port) = split_authority(authority)?;
        let wildcard = || OriginError::Wildcard(host.to_owned());
        let parent = host
            .strip_prefix("*.")
            .filter(|p| !p.contains('*'))
            .ok_or_else(wildcard)?;
        let parent = Host::parse(parent)?;
        // A wildcard directly under a top-level domain (`*.com`) is never what anyone means.
        // Checked on the normalised host: a trailing dot (`*.com.`) must not hide one.
        if !parent.as_str().contains('.') {
            return Err(wildcard());
        }
        Ok(Self::Wildcard {
            scheme,
            parent,
            port: port.unwrap_or(scheme.default_port()),
        })
    }

    /// Whether this pattern covers `origin`.
    pub fn matches(&self, origin: &Origin) -> bool {
        match self {
            Self::Exact(o) => o == origin,
            Self::Wildcard {
                scheme,
                parent,
                port,
            } => {
                *scheme == origin.scheme
                    && *port == origin.port
                    && origin.host.parent() == Some(parent.as_str())
            }
        }
    }

    /// The scheme.
    pub fn scheme(&self) -> Scheme {
        match self {
            Self::Exact(o) => o.scheme,
            Self::Wildcard { scheme, .. } => *scheme,
        }
    }

    /// Whether this is a `*.` pattern.
    pub fn is_wildcard(&self) -> bool {
        matches!(self, Self::Wildcard { .. })
    }
}

impl fmt::Display for OriginPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(o) => o.fmt(f),
            Self::Wildcard {
                scheme,
                parent,
                port,
            } => {
                write!(f, "{}://*.{parent}", scheme.as_str())?;
                if *port != scheme.default_port() {
                    write!(f, ":{port}")?;
                }
                Ok(())
            }
        }
    }
}

/// Splits `scheme://authority rest` where `rest` starts at the first `/`, `?` or `#`.
/// Rejects userinfo, whitespace and control characters.
pub(crate) fn split_url(raw: &str) -> Result<(Scheme, &str, &str), OriginError> {
    let shape = || OriginError::Shape(raw.chars().take(100).collect());
    if raw.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(shape());
    }
    let (scheme, after) = raw.split_once("://").ok_or_else(shape)?;
    let scheme = Scheme::parse(scheme)?;
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (authority, rest) = after.split_at(end);
    if authority.contains('@') {
        return Err(OriginError::Userinfo);
    }
    if authority.is_empty() {
        return Err(shape());
    }
    Ok((scheme, authority, rest))
}

/// Splits `host[:port]`, handling bracketed IPv6 literals.
fn split_authority(authority: &str) -> Result<(&str, Option<u16>), OriginError> {
    let (host, port) = if authority.starts_with('[') {
        match authority.find(']') {
            Some(i) => {
                let (h, p) = authority.split_at(i + 1);
                match p.strip_prefix(':') {
                    Some(p) => (h, Some(p)),
                    None if p.is_empty() => (h, None),
                    None => return Err(OriginError::Host(authority.to_owned())),
                }
            }
            None => return Err(OriginError::Host(authority.to_owned())),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => {
            let n: u16 = p
                .parse()
                .ok()
                .filter(|n| *n != 0 && p.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| OriginError::Port(p.to_owned()))?;
            Some(n)
        }
    };
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(s: &str) -> Origin {
        Origin::parse(s).unwrap()
    }

    fn pat(s: &str) -> OriginPattern {
        OriginPattern::parse(s).unwrap()
    }

    #[test]
    fn hosts_match_only_whole_hosts() {
        let github = pat("https://github.com");
        assert!(github.matches(&origin("https://github.com")));
        assert!(!github.matches(&origin("https://evil-github.com")));
        assert!(!github.matches(&origin("https://github.com.evil.com")));
        assert!(!github.matches(&origin("https://api.github.com")));
        assert!(!github.matches(&origin("https://githubXcom")));
    }

    #[test]
    fn case_and_trailing_dot_are_normalised() {
        assert!(pat("https://github.com").matches(&origin("https://GITHUB.COM.")));
        assert!(pat("https://GitHub.Com").matches(&origin("https://github.com")));
        assert!(Origin::parse("https://github.com..").is_err());
    }

    #[test]
    fn unicode_and_punycode_are_the_same_host() {
        let p = pat("https://bücher.example");
        assert!(p.matches(&origin("https://xn--bcher-kva.example")));
        assert!(pat("https://xn--bcher-kva.example").matches(&origin("https://BÜCHER.example")));
    }

    #[test]
    fn wildcard_matches_exactly_one_label() {
        let p = pat("https://*.example.com");
        assert!(p.matches(&origin("https://a.example.com")));
        assert!(!p.matches(&origin("https://example.com")));
        assert!(!p.matches(&origin("https://a.b.example.com")));
        assert!(!p.matches(&origin("https://a.evil-example.com")));
        assert!(!p.matches(&origin("https://a.example.com:8443")));
        assert!(!p.matches(&origin("http://a.example.com")));
        for bad in [
            "https://a*.example.com",
            "https://*.*.com",
            "https://*",
            "https://x.*.com",
            "https://*.com",
        ] {
            assert!(OriginPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn port_is_part_of_the_origin() {
        let p = pat("https://api.github.com");
        assert!(p.matches(&origin("https://api.github.com:443")));
        assert!(!p.matches(&origin("https://api.github.com:8443")));
        assert!(!p.matches(&origin("http://api.github.com")));
        assert!(pat("http://x.test:80").matches(&origin("http://x.test")));
        assert_eq!(
            origin("https://api.github.com:443").to_string(),
            "https://api.github.com"
        );
    }

    #[test]
    fn malformed_origins_are_rejected() {
        assert_eq!(
            Origin::parse("https://u:p@x.com"),
            Err(OriginError::Userinfo)
        );
        assert!(matches!(
            Origin::parse("https://x.com/api"),
            Err(OriginError::Path(_))
        ));
        assert!(matches!(
            Origin::parse("https://x.com:0"),
            Err(OriginError::Port(_))
        ));
        assert!(matches!(
            Origin::parse("https://x.com:99999"),
            Err(OriginError::Port(_))
        ));
        assert!(matches!(
            Origin::parse("https://x.com:+80"),
            Err(OriginError::Port(_))
        ));
        assert!(matches!(
            Origin::parse("ftp://x.com"),
            Err(OriginError::Scheme(_))
        ));
        assert!(Origin::parse("https://x_y.com").is_err());
        assert!(Origin::parse("https://x.com\r\n").is_err());
        assert!(Origin::parse("x.com").is_err());
    }

    #[test]
    fn other_ipv4_notations_are_rejected() {
        for bad in [
            "http://2130706433",
            "http://0x7f000001",
            "http://0x7f.0.0.1",
            "http://127.1",
            "http://0177.0.0.1",
            "http://017700000001",
            "http://1.2.3.04",
        ] {
            assert!(Origin::parse(bad).is_err(), "{bad}");
        }
        assert!(Origin::parse("http://x1.example").is_ok());
    }

    #[test]
    fn ip_literals_are_canonical() {
        assert_eq!(
            origin("http://[0:0::1]:8080").to_string(),
            "http://[::1]:8080"
        );
        assert_eq!(origin("http://127.0.0.1").host.as_str(), "127.0.0.1");
    }
}
