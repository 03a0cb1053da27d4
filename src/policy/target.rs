//! A request target (`METHOD scheme://host[:port]/path?query`) normalised for deciding: the
//! origin and path that are decided on are the ones that are sent.

use std::fmt;

use http::Method;

use super::origin::{Origin, OriginError, split_url};
use super::path::{PathError, normalize_path};

/// Why a request target was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// The scheme, authority or host.
    #[error("bad target: {0}")]
    Origin(#[from] OriginError),
    /// The path.
    #[error("bad target path: {0}")]
    Path(#[from] PathError),
    /// A fragment (`#...`), which is never sent.
    #[error("bad target: a fragment (`#...`) is not part of a request")]
    Fragment,
    /// The query contains bytes that are never valid.
    #[error("bad target: the query contains a control character, space or non-ASCII byte")]
    Query,
    /// The method is not a valid token.
    #[error("bad method `{0}`: methods are upper-case tokens such as GET or POST")]
    Method(String),
}

/// A normalised absolute request target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Scheme, host and port.
    pub origin: Origin,
    /// The normalised path.
    pub path: String,
    /// The raw query, without `?`, if any.
    pub query: Option<String>,
}

impl Target {
    /// Parses and normalises an absolute URL.
    pub fn parse(url: &str) -> Result<Self, TargetError> {
        let (scheme, authority, rest) = split_url(url)?;
        let origin = Origin::from_parts(scheme, authority)?;
        if rest.contains('#') {
            return Err(TargetError::Fragment);
        }
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        if query.is_some_and(|q| {
            q.bytes()
                .any(|b| b.is_ascii_control() || b == b' ' || !b.is_ascii())
        }) {
            return Err(TargetError::Query);
        }
        Ok(Self {
            origin,
            path: normalize_path(path)?,
            query: query.map(str::to_owned),
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.origin, self.path)?;
        if let Some(q) = &self.query {
            write!(f, "?{q}")?;
        }
        Ok(())
    }
}

/// Parses `METHOD URL` as written in policy tests and `policy explain`.
pub fn parse_request_line(line: &str) -> Result<(Method, Target), TargetError> {
    let (method, url) = line
        .trim()
        .split_once(' ')
        .ok_or_else(|| TargetError::Method(line.to_owned()))?;
    Ok((parse_method(method)?, Target::parse(url.trim())?))
}

/// Parses an upper-case HTTP method token.
pub fn parse_method(method: &str) -> Result<Method, TargetError> {
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(TargetError::Method(method.to_owned()));
    }
    Method::from_bytes(method.as_bytes()).map_err(|_| TargetError::Method(method.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_normalised() {
        let t = Target::parse("HTTPS://API.GitHub.com:443//repos/./acme/../acme/x?a=1").unwrap();
        assert_eq!(t.to_string(), "https://api.github.com/repos/acme/x?a=1");
        assert!(Target::parse("https://u@x.com/").is_err());
        assert!(Target::parse("https://x.com/a#b").is_err());
        assert!(Target::parse("https://x.com/a%2fb").is_err());
        assert!(Target::parse("https://x.com/a?b c").is_err());
    }

    #[test]
    fn request_lines() {
        let (m, t) = parse_request_line("POST https://x.com/a").unwrap();
        assert_eq!(m, Method::POST);
        assert_eq!(t.path, "/a");
        assert!(parse_request_line("post https://x.com/a").is_err());
        assert!(parse_request_line("https://x.com/a").is_err());
    }
}
