//! Host and path normalisation and matching: `egress::normalise` on request heads built from
//! arbitrary URIs, the origin parsers, and route patterns against arbitrary paths.
//!
//! Input: `PATTERN\nURI`, e.g. `GET /repos/*/issues/**\nhttp://x.com//repos/a/../b/issues`.
#![no_main]

use behalf::egress::normalise::normalise;
use behalf::policy::path::{PathPattern, normalize_path};
use behalf::policy::tenant::Route;
use behalf::policy::{Host, Origin, OriginPattern, Target};
use libfuzzer_sys::fuzz_target;

/// A normalised path: absolute, no empty, `.` or `..` segment (but a trailing slash).
fn check_normal(path: &str) {
    assert!(path.starts_with('/'), "{path:?}");
    let inner = path.strip_suffix('/').unwrap_or(path);
    for seg in inner.split('/').skip(1) {
        assert!(!seg.is_empty(), "empty segment in {path:?}");
        assert!(seg != "." && seg != "..", "dot segment in {path:?}");
    }
    assert!(!path.contains("//"), "{path:?}");
    // Idempotent: what is decided on is what is sent, and is decided the same way again.
    assert_eq!(normalize_path(path).as_deref(), Ok(path), "not idempotent");
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (pattern, uri) = text.split_once('\n').unwrap_or(("GET /**", text));

    // Origins and hosts: whatever parses prints as something that parses to the same value.
    if let Ok(o) = Origin::parse(uri) {
        assert_eq!(Origin::parse(&o.to_string()).as_ref(), Ok(&o));
    }
    if let Ok(h) = Host::parse(uri) {
        assert_eq!(Host::parse(h.as_str()).as_ref(), Ok(&h));
    }
    if let Ok(p) = OriginPattern::parse(pattern) {
        assert_eq!(OriginPattern::parse(&p.to_string()).as_ref(), Ok(&p));
        if let Ok(o) = Origin::parse(uri) {
            let _ = p.matches(&o);
        }
    }

    // The request head as the proxy sees it.
    let normalised = match http::Request::get(uri).body(()) {
        Ok(req) => {
            let (parts, ()) = req.into_parts();
            normalise(&parts).ok()
        }
        Err(_) => None,
    };
    if let Some(target) = &normalised {
        check_normal(&target.path);
        let again = Target::parse(&target.to_string()).expect("a normalised target re-parses");
        assert_eq!(&again, target, "normalising is not idempotent");
    }

    // Route patterns against the normalised path (or the raw text as a path).
    let path = normalised
        .as_ref()
        .map(|t| t.path.clone())
        .or_else(|| normalize_path(uri).ok());
    if let Some(p) = &path {
        check_normal(p);
    }
    if let Ok(route) = Route::parse(pattern) {
        if let Some(p) = &path {
            let _ = route.matches(&route.method, p);
        }
        // A pattern without wildcards matches exactly its own text.
        let raw = pattern.split_once(' ').map_or("", |(_, p)| p.trim_start());
        if !raw.contains('*') {
            let lit = normalize_path(raw).expect("a valid pattern is a valid path");
            assert!(route.matches(&route.method, &lit), "{pattern:?} vs {lit:?}");
        }
    }
    if let Ok(pat) = PathPattern::parse(pattern)
        && let Some(p) = &path
    {
        let _ = pat.matches(p);
    }
});
