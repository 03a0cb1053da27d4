//! Request paths: normalisation (the path that is authorised is the path that is sent) and
//! the `*` / `**` route patterns that grants allow.
//!
//! Normalisation merges slashes, removes plain `.` and `..` segments, decodes percent-encoded
//! unreserved characters and upper-cases the remaining escapes. Anything an upstream might read
//! differently from us is rejected rather than guessed at: an encoded `/`, `\`, `.` or `%`
//! (`%2f`, `%5c`, `%2e`, `%25`), NUL raw or encoded, a raw `\`, control characters, a `..` that
//! would climb above the root, and a segment that is `.` or `..` only once its `;parameters`
//! are stripped (`..;x`, which some servers treat as `..`).

use std::fmt;

/// Why a request path was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("path must start with `/`")]
    NotAbsolute,
    /// A byte that is never valid in a path we forward.
    #[error("path contains {0:?}, which is not allowed")]
    BadByte(char),
    /// `%` not followed by two hex digits.
    #[error("path has a malformed percent-escape")]
    BadEscape,
    /// An escape that would change the path's structure if decoded.
    #[error(
        "path contains `%{0:02X}` (an encoded `{1}`), which is rejected rather than guessed at"
    )]
    EncodedDelimiter(u8, char),
    /// `..` or `.` disguised with `;parameters`.
    #[error("path segment `{0}` is a dot-segment once its `;parameters` are stripped")]
    DisguisedDotSegment(String),
    /// `..` above the root.
    #[error("path climbs above the root with `..`")]
    AboveRoot,
}

/// Normalises a request path (without its query). See the module docs for the rules.
pub fn normalize_path(raw: &str) -> Result<String, PathError> {
    if raw.is_empty() {
        return Ok("/".to_owned());
    }
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let decoded = decode_unreserved(raw)?;
    let mut out: Vec<&str> = Vec::new();
    // Whether the last piece seen ended a directory (`/a/`, `/a/.`, `/a/b/..`).
    let mut ends_dir = false;
    for segment in decoded.split('/').skip(1) {
        let bare = segment.split(';').next().unwrap_or(segment);
        match (bare, segment.len() == bare.len()) {
            ("" | ".", true) => ends_dir = true,
            ("..", true) => {
                out.pop().ok_or(PathError::AboveRoot)?;
                ends_dir = true;
            }
            ("." | "..", false) => {
                return Err(PathError::DisguisedDotSegment(segment.to_owned()));
            }
            _ => {
                out.push(segment);
                ends_dir = false;
            }
        }
    }
    let mut path = String::with_capacity(decoded.len());
    for segment in &out {
        path.push('/');
        path.push_str(segment);
    }
    if out.is_empty() || ends_dir {
        path.push('/');
    }
    Ok(path)
}

/// Checks every byte and escape; decodes escaped unreserved characters and upper-cases the rest.
fn decode_unreserved(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
                let value = std::str::from_utf8(hex)
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .filter(|_| hex.iter().all(u8::is_ascii_hexdigit))
                    .ok_or(PathError::BadEscape)?;
                match value {
                    b'/' | b'\\' | b'.' | b'%' | 0 => {
                        return Err(PathError::EncodedDelimiter(value, value as char));
                    }
                    v if v.is_ascii_alphanumeric() || v == b'-' || v == b'_' || v == b'~' => {
                        out.push(v as char);
                    }
                    v => {
                        out.push('%');
                        out.push_str(&format!("{v:02X}"));
                    }
                }
                i += 3;
            }
            b'\\' | b'#' | b'?' | b' ' => return Err(PathError::BadByte(b as char)),
            b if b.is_ascii_control() || !b.is_ascii() => {
                return Err(PathError::BadByte(b as char));
            }
            _ => {
                out.push(b as char);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// One segment of a route pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// Exactly this (normalised) segment.
    Literal(Box<str>),
    /// `*`: any one segment.
    One,
    /// `**`: any number of segments, including none.
    Any,
}

/// Why a route pattern in a grant is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatternError {
    /// The pattern is not valid as a path.
    #[error("{0}")]
    Path(#[from] PathError),
    /// The pattern is not in normal form, so it could never match as written.
    #[error("path pattern is not normalised; write `{0}`")]
    NotNormal(String),
    /// `*` used as part of a segment.
    #[error("`*` and `**` must be whole path segments (found `{0}`)")]
    PartialWildcard(String),
}

/// A compiled route pattern: `/repos/acme/**`, `/repos/*/issues`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    segments: Box<[Segment]>,
    text: Box<str>,
}

impl PathPattern {
    /// Compiles a pattern. The literal parts must already be in normal form.
    pub fn parse(raw: &str) -> Result<Self, PatternError> {
        let normal = normalize_path(raw)?;
        if normal != raw && normal.trim_end_matches('/') != raw.trim_end_matches('/') {
            return Err(PatternError::NotNormal(normal));
        }
        let segments = normal
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| match s {
                "*" => Ok(Segment::One),
                "**" => Ok(Segment::Any),
                s if s.contains('*') => Err(PatternError::PartialWildcard(s.to_owned())),
                s => Ok(Segment::Literal(s.into())),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            segments,
            text: raw.into(),
        })
    }

    /// Whether a normalised path matches. A trailing slash is not significant.
    pub fn matches(&self, normalized_path: &str) -> bool {
        let mut path = normalized_path.split('/').filter(|s| !s.is_empty());
        match_segments(&self.segments, &mut path)
    }
}

fn match_segments<'a, I>(pattern: &[Segment], path: &mut I) -> bool
where
    I: Iterator<Item = &'a str> + Clone,
{
    let Some((first, rest)) = pattern.split_first() else {
        return path.next().is_none();
    };
    match first {
        Segment::Any => {
            if rest.is_empty() {
                return true;
            }
            let mut attempt = path.clone();
            loop {
                if match_segments(rest, &mut attempt.clone()) {
                    return true;
                }
                if attempt.next().is_none() {
                    return false;
                }
            }
        }
        Segment::One => path.next().is_some() && match_segments(rest, path),
        Segment::Literal(lit) => path.next() == Some(lit) && match_segments(rest, path),
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, PathError> {
        normalize_path(p)
    }

    #[test]
    fn dot_segments_and_slashes_are_normalised() {
        assert_eq!(norm("/a/../b").unwrap(), "/b");
        assert_eq!(norm("/a/./b").unwrap(), "/a/b");
        assert_eq!(norm("//a").unwrap(), "/a");
        assert_eq!(norm("/a//b///c").unwrap(), "/a/b/c");
        assert_eq!(norm("").unwrap(), "/");
        assert_eq!(norm("/").unwrap(), "/");
        assert_eq!(norm("/a/b/").unwrap(), "/a/b/");
        assert_eq!(norm("/a/b/..").unwrap(), "/a/");
        assert_eq!(norm("/a/%7euser/%41").unwrap(), "/a/~user/A");
        assert_eq!(norm("/a%20b/%c3%a9").unwrap(), "/a%20b/%C3%A9");
    }

    #[test]
    fn path_tricks_are_rejected() {
        assert!(matches!(
            norm("/a/%2e%2e/b"),
            Err(PathError::EncodedDelimiter(b'.', _))
        ));
        assert!(matches!(
            norm("/a/%2E/b"),
            Err(PathError::EncodedDelimiter(b'.', _))
        ));
        assert!(matches!(
            norm("/a%2fb"),
            Err(PathError::EncodedDelimiter(b'/', _))
        ));
        assert!(matches!(
            norm("/a%2Fb"),
            Err(PathError::EncodedDelimiter(b'/', _))
        ));
        assert!(matches!(
            norm("/a%5cb"),
            Err(PathError::EncodedDelimiter(b'\\', _))
        ));
        assert!(matches!(
            norm("/a%252fb"),
            Err(PathError::EncodedDelimiter(b'%', _))
        ));
        assert!(matches!(
            norm("/a%00"),
            Err(PathError::EncodedDelimiter(0, _))
        ));
        assert!(matches!(norm("/a\\b"), Err(PathError::BadByte('\\'))));
        assert!(matches!(norm("/a\0b"), Err(PathError::BadByte('\0'))));
        assert!(matches!(norm("/a\r\nb"), Err(PathError::BadByte('\r'))));
        assert!(matches!(
            norm("/a/..;x/b"),
            Err(PathError::DisguisedDotSegment(_))
        ));
        assert!(matches!(
            norm("/a/.;x/b"),
            Err(PathError::DisguisedDotSegment(_))
        ));
        assert!(matches!(norm("/../a"), Err(PathError::AboveRoot)));
        assert!(matches!(norm("/a/%zz"), Err(PathError::BadEscape)));
        assert!(matches!(norm("/a/%2"), Err(PathError::BadEscape)));
        assert!(matches!(norm("a/b"), Err(PathError::NotAbsolute)));
        assert!(matches!(norm("*"), Err(PathError::NotAbsolute)));
    }

    #[test]
    fn params_that_are_not_dot_segments_are_kept() {
        assert_eq!(norm("/a/b;v=1/c").unwrap(), "/a/b;v=1/c");
    }

    fn matches(pattern: &str, path: &str) -> bool {
        PathPattern::parse(pattern)
            .unwrap()
            .matches(&norm(path).unwrap())
    }

    #[test]
    fn star_is_one_segment_and_double_star_any_number() {
        assert!(matches("/repos/*/issues", "/repos/web/issues"));
        assert!(!matches("/repos/*/issues", "/repos/a/b/issues"));
        assert!(!matches("/repos/*/issues", "/repos/issues"));
        assert!(matches("/repos/**/issues", "/repos/a/b/issues"));
        assert!(matches("/repos/**/issues", "/repos/issues"));
        assert!(matches("/repos/acme/**", "/repos/acme/web/pulls/1"));
        assert!(matches("/repos/acme/**", "/repos/acme"));
        assert!(!matches("/repos/acme/**", "/repos/acmecorp/web"));
        assert!(!matches("/repos/acme/*", "/repos/acme/web/pulls"));
        assert!(matches("/**", "/anything/at/all"));
        assert!(matches("/", "/"));
        assert!(!matches("/", "/a"));
    }

    #[test]
    fn normalisation_happens_before_matching() {
        assert!(matches("/repos/acme/*", "//repos//acme/web"));
        assert!(matches("/b", "/a/../b"));
        assert!(!matches("/a/**", "/a/../b"));
        assert!(matches("/repos/acme/x", "/repos/%61cme/x"));
    }

    #[test]
    fn trailing_slash_is_not_significant() {
        assert!(matches("/a/b", "/a/b/"));
        assert!(matches("/a/b/", "/a/b"));
    }

    #[test]
    fn bad_patterns_are_rejected() {
        assert!(matches!(
            PathPattern::parse("/a/../b"),
            Err(PatternError::NotNormal(_))
        ));
        assert!(matches!(
            PathPattern::parse("//a"),
            Err(PatternError::NotNormal(_))
        ));
        assert!(matches!(
            PathPattern::parse("/a*/b"),
            Err(PatternError::PartialWildcard(_))
        ));
        assert!(matches!(
            PathPattern::parse("/a/***"),
            Err(PatternError::PartialWildcard(_))
        ));
        assert!(PathPattern::parse("a/b").is_err());
        assert!(PathPattern::parse("/a%2fb").is_err());
    }
}
