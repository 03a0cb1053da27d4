//! Step 1, normalise: the request's target as an absolute, normalised [`Target`]; framing
//! tricks rejected.
//!
//! Contract: the returned target is what is decided on and what is sent. The caller's `Host`
//! is not trusted: it is dropped and rebuilt from the target later, so a `Host` that disagrees
//! with an absolute-form target changes nothing.

use http::header;
use http::request::Parts;

use super::EgressError;
use crate::policy::Target;

/// Parses and normalises an absolute-form request target.
pub fn normalise(parts: &Parts) -> Result<Target, EgressError> {
    let bad = |m: &str| EgressError::BadRequest(m.to_owned());
    let uri = &parts.uri;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(bad(
            "the request target must be an absolute URL (http://host/path); configure the \
             client to use behalf as its HTTP proxy",
        ));
    };
    if parts.headers.get_all(header::HOST).iter().count() > 1 {
        return Err(bad("the request has more than one Host header"));
    }
    if parts.headers.contains_key(header::CONTENT_LENGTH)
        && parts.headers.contains_key(header::TRANSFER_ENCODING)
    {
        return Err(bad(
            "the request has both Content-Length and Transfer-Encoding (request smuggling)",
        ));
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let url = format!("{scheme}://{}{path}", authority.as_str());
    Target::parse(&url).map_err(|e| EgressError::BadRequest(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::get(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn absolute_targets_are_normalised() {
        let t = normalise(&parts("http://API.example.com:80//a/./b?x=1", &[])).unwrap();
        assert_eq!(t.to_string(), "http://api.example.com/a/b?x=1");
    }

    #[test]
    fn tricks_are_rejected() {
        assert!(normalise(&parts("/relative", &[])).is_err());
        assert!(normalise(&parts("http://u@x.com/", &[])).is_err());
        assert!(normalise(&parts("http://x.com/a%2fb", &[])).is_err());
        assert!(normalise(&parts("http://x.com/", &[("host", "a"), ("host", "b")])).is_err());
        let smuggle = [("content-length", "5"), ("transfer-encoding", "chunked")];
        assert!(normalise(&parts("http://x.com/", &smuggle)).is_err());
    }
}
