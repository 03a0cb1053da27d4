//! Step 3, clean: strip everything a caller could use to smuggle a credential, an identity, a
//! method or a protocol switch past the decision.
//!
//! Contract: after `clean`, the request carries no `Authorization`, `Proxy-Authorization`,
//! method-override, `Upgrade`, `HTTP2-Settings`, `TE` (but `trailers`), hop-by-hop header, or
//! (when the service scrubs responses) `Range`/`If-Range`; the service's inject header remains
//! only when it carries exactly this invocation's placeholder for this service. A placeholder
//! anywhere else, or one scoped to another service, is a denial.

use http::header::{self, HeaderName};
use http::request::Parts;

use super::{EgressError, Placeholders};
use crate::policy::{Inject, Service, Target};

const METHOD_OVERRIDES: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];
const HOP_BY_HOP: [&str; 3] = ["keep-alive", "proxy-connection", "http2-settings"];

/// Cleans a request allowed for `service`.
pub fn clean(
    parts: &mut Parts,
    target: &Target,
    service: &Service,
    placeholders: &Placeholders,
) -> Result<(), EgressError> {
    check_placeholders(parts, target, service, placeholders)?;
    let headers = &mut parts.headers;
    // The one header a caller may set itself: exactly this invocation's placeholder, in the
    // service's placeholder header and template. Everything else named for injection goes.
    let kept_placeholder = match &service.inject {
        Some(Inject::Placeholder { name, template }) => placeholders
            .for_service(&service.name)
            .map(|p| format!("{}{p}{}", template.prefix(), template.suffix()))
            .and_then(|expected| {
                let v = headers.get(name)?;
                (v.as_bytes() == expected.as_bytes()).then(|| (name.clone(), v.clone()))
            }),
        _ => None,
    };
    // Headers named by `Connection` are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    headers.remove(header::CONNECTION);
    headers.remove(header::HOST);
    headers.remove(header::PROXY_AUTHORIZATION);
    headers.remove(header::AUTHORIZATION);
    headers.remove(header::UPGRADE);
    // The client frames the body itself (chunked for HTTP/1.1, DATA frames for HTTP/2).
    headers.remove(header::TRANSFER_ENCODING);
    for name in METHOD_OVERRIDES.iter().chain(&HOP_BY_HOP) {
        headers.remove(*name);
    }
    let keep_trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    headers.remove(header::TE);
    if keep_trailers {
        headers.insert(header::TE, http::HeaderValue::from_static("trailers"));
    }
    if service.scrub_responses && service.credential.is_some() {
        // A scrubbed response must be readable: no byte ranges that could reassemble a
        // credential across requests, no compression that could hide one.
        headers.remove(header::RANGE);
        headers.remove(header::IF_RANGE);
        headers.insert(
            header::ACCEPT_ENCODING,
            http::HeaderValue::from_static("identity"),
        );
    }
    if let Some(Inject::Header { name, .. } | Inject::Placeholder { name, .. }) = &service.inject {
        headers.remove(name);
    }
    if let Some((name, value)) = kept_placeholder {
        headers.insert(name, value);
    }
    Ok(())
}

/// A placeholder may appear only in its own service's inject header.
fn check_placeholders(
    parts: &Parts,
    target: &Target,
    service: &Service,
    placeholders: &Placeholders,
) -> Result<(), EgressError> {
    if placeholders.is_empty() {
        return Ok(());
    }
    let allowed_header = match &service.inject {
        Some(Inject::Placeholder { name, .. }) => Some(name),
        _ => None,
    };
    let refuse = |owner: &str, place: String| EgressError::Refused {
        message: format!(
            "a placeholder for service `{owner}` was found in {place} of a request to {}",
            target.origin
        ),
        hint: format!(
            "send a placeholder only in the header its service names, and only to that \
             service's origins (this request is for service `{}`)",
            service.name
        ),
    };
    let url = format!("{}?{}", target.path, target.query.as_deref().unwrap_or(""));
    for (owner, value) in placeholders.iter() {
        if url.contains(value) {
            return Err(refuse(owner.as_str(), "the URL".into()));
        }
        for (name, v) in &parts.headers {
            if !contains(v.as_bytes(), value.as_bytes()) {
                continue;
            }
            let own_header = *owner == service.name && allowed_header == Some(name);
            if !own_header {
                return Err(refuse(owner.as_str(), format!("header `{name}`")));
            }
        }
    }
    Ok(())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
