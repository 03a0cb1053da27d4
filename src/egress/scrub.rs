//! Step 8, scrub: remove every injected form of the credential from the response.
//!
//! Contract: the response the caller receives contains none of the byte strings in
//! [`Injected`] when the service has `scrub_responses` on. This slot is a pass-through for
//! now; HTTPS interception (the next front door) fills it with a streaming multi-pattern
//! replacer.

use http::response::Parts;

use super::body::BoxBody;
use crate::inject::Injected;
use crate::policy::Service;

/// Scrubs a response. Currently passes the response through unchanged.
pub fn scrub(
    _parts: &mut Parts,
    body: BoxBody,
    _injected: &Injected,
    _service: &Service,
) -> BoxBody {
    body
}
