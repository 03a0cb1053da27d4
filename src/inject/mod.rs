//! Step 5, inject: place the principal's credential on an allowed, cleaned request, in the
//! form the service names.
//!
//! # Security
//!
//! Called only after the decision was Allow and the credential was resolved in the verified
//! principal's namespace. Injected header values are marked sensitive (hyper keeps them out of
//! HPACK tables and debug output). The forms that were injected are returned so that the
//! scrub step can remove every one of them from the response.

pub mod hmac;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::HeaderValue;
use http::header::AUTHORIZATION;
use http::request::Parts;
use zeroize::Zeroizing;

use crate::policy::{Inject, Target, service::Template};
use crate::secrets::{Secret, SigV4Credentials};

pub mod sigv4;

/// Why a credential could not be injected. Never contains the credential.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InjectError {
    /// The stored value cannot be placed in a header (control characters, non-ASCII).
    #[error("the stored credential is not a valid {0} value (control or non-ASCII bytes)")]
    NotHeaderSafe(&'static str),
    /// The form is not available yet.
    #[error("inject form `{0}` is not supported by this build")]
    Unsupported(&'static str),
    /// The stored credential or the request cannot be signed (never names a credential value).
    #[error("inject form `{0}` could not sign the request: {1}")]
    Signing(&'static str, String),
    /// The form signs the request body, which is not yet available when injecting.
    #[error(
        "inject form `{0}` signs the request body, which is not yet supported for requests with \
         a body: only requests that declare none (`Content-Length: 0`, or GET/HEAD/OPTIONS/DELETE \
         without one) are signed; for `hmac`, a message without `{{body}}` signs any request"
    )]
    BodyNotSupported(&'static str),
}

/// Every byte string that was placed on the request, for response scrubbing.
#[derive(Default)]
pub struct Injected {
    forms: Vec<Zeroizing<Vec<u8>>>,
    raw: Option<Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for Injected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Injected({} forms, ***)", self.forms.len())
    }
}

impl Injected {
    fn add(&mut self, form: impl Into<Vec<u8>>) {
        let form = Zeroizing::new(form.into());
        if !form.is_empty() && !self.forms.iter().any(|f| **f == *form) {
            self.forms.push(form);
        }
    }

    /// The forms, longest first.
    pub fn forms(&self) -> impl Iterator<Item = &[u8]> {
        self.forms.iter().map(|f| f.as_slice())
    }

    /// The raw credential the forms were rendered from, when one was injected (so that the
    /// scrubber can derive further encodings of it).
    pub fn raw(&self) -> Option<&[u8]> {
        self.raw
            .as_deref()
            .map(Vec::as_slice)
            .filter(|r| !r.is_empty())
    }

    /// Whether nothing was injected.
    pub fn is_empty(&self) -> bool {
        self.forms.is_empty()
    }
}

fn header_value(bytes: &[u8], what: &'static str) -> Result<HeaderValue, InjectError> {
    if bytes.iter().any(|b| !(0x20..0x7f).contains(b)) {
        return Err(InjectError::NotHeaderSafe(what));
    }
    let mut v = HeaderValue::from_bytes(bytes).map_err(|_| InjectError::NotHeaderSafe(what))?;
    v.set_sensitive(true);
    Ok(v)
}

fn render(template: &Template, secret: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut v = Zeroizing::new(Vec::with_capacity(
        template.prefix().len() + secret.len() + template.suffix().len(),
    ));
    v.extend_from_slice(template.prefix().as_bytes());
    v.extend_from_slice(secret);
    v.extend_from_slice(template.suffix().as_bytes());
    v
}

/// Whether the request's headers say its body is empty: `Content-Length: 0`, or neither
/// `Content-Length` nor `Transfer-Encoding` on a method that carries no body by convention.
fn declares_empty_body(parts: &Parts) -> bool {
    use http::Method;
    use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
    let lengths: Vec<_> = parts.headers.get_all(CONTENT_LENGTH).iter().collect();
    if parts.headers.contains_key(TRANSFER_ENCODING) {
        return false;
    }
    match lengths.as_slice() {
        [] => [Method::GET, Method::HEAD, Method::OPTIONS, Method::DELETE].contains(&parts.method),
        lengths => lengths
            .iter()
            .all(|v| v.to_str().is_ok_and(|s| s.trim() == "0")),
    }
}

/// Injects `secret` into the request (headers in `parts`, query in `target`) by `form`.
pub fn inject(
    parts: &mut Parts,
    target: &mut Target,
    form: &Inject,
    secret: &Secret,
) -> Result<Injected, InjectError> {
    let raw = secret.expose();
    let mut injected = Injected::default();
    injected.add(raw);
    injected.raw = Some(Zeroizing::new(raw.to_vec()));
    match form {
        Inject::Header { name, template } => {
            let value = render(template, raw);
            parts
                .headers
                .insert(name.clone(), header_value(&value, "header")?);
            injected.add(value.to_vec());
        }
        Inject::Basic { username } => {
            let mut pair = Zeroizing::new(Vec::with_capacity(username.len() + 1 + raw.len()));
            pair.extend_from_slice(username.as_bytes());
            pair.push(b':');
            pair.extend_from_slice(raw);
            let encoded = Zeroizing::new(STANDARD.encode(&pair[..]));
            let value = Zeroizing::new(format!("Basic {}", &*encoded));
            parts
                .headers
                .insert(AUTHORIZATION, header_value(value.as_bytes(), "header")?);
            injected.add(encoded.as_bytes());
        }
        Inject::Query { param } => {
            let encoded: Zeroizing<String> =
                Zeroizing::new(form_urlencoded::byte_serialize(raw).collect());
            let kept = target
                .query
                .as_deref()
                .unwrap_or("")
                .split('&')
                .filter(|pair| !pair.is_empty())
                .filter(|pair| {
                    let key = pair.split('=').next().unwrap_or("");
                    let decoded: String = form_urlencoded::parse(key.as_bytes())
                        .map(|(k, _)| k.into_owned())
                        .collect();
                    decoded != *param
                })
                .collect::<Vec<_>>()
                .join("&");
            let sep = if kept.is_empty() { "" } else { "&" };
            target.query = Some(format!("{kept}{sep}{param}={}", &*encoded));
            injected.add(encoded.as_bytes());
        }
        Inject::Placeholder { name, template } => {
            // `clean` kept this header only if it carries exactly our placeholder.
            if parts.headers.contains_key(name) {
                let value = render(template, raw);
                parts
                    .headers
                    .insert(name.clone(), header_value(&value, "header")?);
                injected.add(value.to_vec());
            }
        }
        Inject::AwsSigv4 { region, service } => {
            // The body reaches the pipeline only after injection, so only a request that says
            // it has none can be signed (with the empty payload hash) here.
            if !declares_empty_body(parts) {
                return Err(InjectError::BodyNotSupported("aws_sigv4"));
            }
            let creds = SigV4Credentials::parse(secret)
                .map_err(|e| InjectError::Signing("aws_sigv4", e.to_string()))?;
            let forms = sigv4::sign_empty_body(
                parts,
                target,
                region,
                service,
                &creds,
                time::OffsetDateTime::now_utc(),
            )
            .map_err(|e| InjectError::Signing("aws_sigv4", e.to_string()))?;
            injected.raw = Some(Zeroizing::new(creds.secret_access_key.expose().to_vec()));
            for form in forms {
                injected.add(form.to_vec());
            }
        }
        Inject::Hmac(hmac_form) => {
            // The body reaches the pipeline only after injection, so `{body}` can be signed
            // only when the request says it has none.
            if hmac_form.signs_body() && !declares_empty_body(parts) {
                return Err(InjectError::BodyNotSupported("hmac"));
            }
            let path_and_query = match &target.query {
                Some(q) => format!("{}?{q}", target.path),
                None => target.path.clone(),
            };
            let headers = hmac::sign(
                hmac_form,
                &parts.method,
                &path_and_query,
                b"",
                std::time::SystemTime::now(),
                raw,
            )?;
            if let Some((_, signature)) = headers.first() {
                injected.add(signature.as_bytes());
            }
            for (name, value) in headers {
                parts.headers.insert(name, value);
            }
        }
    }
    injected.forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
    Ok(injected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::service::Template;
    use http::HeaderName;

    fn parts() -> Parts {
        http::Request::get("https://x.test/")
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    #[test]
    fn header_template_is_rendered_and_sensitive() {
        let (mut p, mut t) = (parts(), Target::parse("https://x.test/a").unwrap());
        let form = Inject::Header {
            name: HeaderName::from_static("authorization"),
            template: Template::parse("Bearer {credential}", "credential").unwrap(),
        };
        let got = inject(&mut p, &mut t, &form, &Secret::from_text("tok")).unwrap();
        let v = p.headers.get("authorization").unwrap();
        assert_eq!(v, "Bearer tok");
        assert!(v.is_sensitive());
        assert!(got.forms().any(|f| f == b"Bearer tok"));
        assert!(got.forms().any(|f| f == b"tok"));
    }

    #[test]
    fn basic_uses_the_credential_as_password() {
        let (mut p, mut t) = (parts(), Target::parse("https://x.test/a").unwrap());
        let form = Inject::Basic {
            username: "x-token".into(),
        };
        inject(&mut p, &mut t, &form, &Secret::from_text("s3cret")).unwrap();
        let expected = format!("Basic {}", STANDARD.encode("x-token:s3cret"));
        assert_eq!(p.headers.get("authorization").unwrap(), expected.as_str());
    }

    #[test]
    fn query_replaces_never_duplicates() {
        let (mut p, mut t) = (
            parts(),
            Target::parse("https://x.test/a?q=1&api_key=evil&api%5Fkey=evil2&z").unwrap(),
        );
        let form = Inject::Query {
            param: "api_key".into(),
        };
        inject(&mut p, &mut t, &form, &Secret::from_text("a b&c")).unwrap();
        assert_eq!(t.query.as_deref(), Some("q=1&z&api_key=a+b%26c"));
    }

    #[test]
    fn header_unsafe_secrets_are_refused() {
        let (mut p, mut t) = (parts(), Target::parse("https://x.test/a").unwrap());
        let form = Inject::Header {
            name: HeaderName::from_static("x-key"),
            template: Template::parse("{credential}", "credential").unwrap(),
        };
        let err = inject(&mut p, &mut t, &form, &Secret::from_text("a\r\nX-Evil: 1")).unwrap_err();
        assert!(!err.to_string().contains("Evil"));
    }

    fn generic_hmac(message: &str) -> Inject {
        use crate::policy::service::{HmacAlgorithm, HmacForm, SignatureEncoding, TimestampFormat};
        Inject::Hmac(HmacForm {
            header: HeaderName::from_static("x-signature"),
            algorithm: HmacAlgorithm::Sha512,
            encoding: SignatureEncoding::Base64,
            message: HmacForm::parse_message(message).unwrap(),
            prefix: String::new(),
            timestamp_header: Some(HeaderName::from_static("x-timestamp")),
            timestamp: TimestampFormat::Unix,
        })
    }

    fn request(method: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder()
            .method(method)
            .uri("https://x.test/");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn hmac_signs_a_bodyless_request_as_sent() {
        let mut p = request("GET", &[("x-signature", "forged-by-the-tool")]);
        let mut t = Target::parse("https://x.test/v1/orders?limit=2").unwrap();
        let form = generic_hmac("{method}\n{path}\n{timestamp}\n{body}");
        let got = inject(&mut p, &mut t, &form, &Secret::from_text("k3y")).unwrap();
        let ts = p.headers.get("x-timestamp").unwrap().to_str().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(now.abs_diff(ts.parse::<u64>().unwrap()) < 5);
        // Verified independently, as an upstream would.
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA512, b"k3y");
        let sig = p.headers.get_all("x-signature").iter().collect::<Vec<_>>();
        assert_eq!(sig.len(), 1, "the caller's value is replaced");
        let sig = STANDARD.decode(sig[0].as_bytes()).unwrap();
        let msg = format!("GET\n/v1/orders?limit=2\n{ts}\n");
        ring::hmac::verify(&key, msg.as_bytes(), &sig).unwrap();
        assert!(p.headers.get("x-signature").unwrap().is_sensitive());
        assert!(p.headers.get("x-timestamp").unwrap().is_sensitive());
        let sent = p.headers.get("x-signature").unwrap().as_bytes();
        assert!(got.forms().any(|f| f == sent));
        assert!(got.forms().any(|f| f == b"k3y"));
    }

    #[test]
    fn hmac_over_a_body_needs_a_declared_empty_body() {
        let form = generic_hmac("{method}\n{path}\n{timestamp}\n{body}");
        for (method, headers) in [
            ("POST", &[][..]),
            ("POST", &[("content-length", "12")][..]),
            ("GET", &[("transfer-encoding", "chunked")][..]),
            (
                "PUT",
                &[("content-length", "0"), ("content-length", "3")][..],
            ),
        ] {
            let (mut p, mut t) = (
                request(method, headers),
                Target::parse("https://x.test/a").unwrap(),
            );
            let err = inject(&mut p, &mut t, &form, &Secret::from_text("k3y")).unwrap_err();
            assert!(
                matches!(err, InjectError::BodyNotSupported("hmac")),
                "{method} {headers:?}"
            );
            assert!(
                err.to_string()
                    .contains("not yet supported for requests with a body")
            );
            assert!(!p.headers.contains_key("x-signature"));
        }
        for (method, headers) in [
            ("POST", &[("content-length", "0")][..]),
            ("DELETE", &[][..]),
            ("HEAD", &[][..]),
        ] {
            let (mut p, mut t) = (
                request(method, headers),
                Target::parse("https://x.test/a").unwrap(),
            );
            inject(&mut p, &mut t, &form, &Secret::from_text("k3y")).unwrap();
            assert!(
                p.headers.contains_key("x-signature"),
                "{method} {headers:?}"
            );
        }
    }

    #[test]
    fn hmac_without_body_in_the_message_signs_any_request() {
        let form = generic_hmac("{method} {path} {timestamp}");
        let mut p = request("POST", &[("content-length", "12")]);
        let mut t = Target::parse("https://x.test/a").unwrap();
        inject(&mut p, &mut t, &form, &Secret::from_text("k3y")).unwrap();
        let ts = p.headers.get("x-timestamp").unwrap().to_str().unwrap();
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA512, b"k3y");
        let sig = STANDARD
            .decode(p.headers.get("x-signature").unwrap().as_bytes())
            .unwrap();
        ring::hmac::verify(&key, format!("POST /a {ts}").as_bytes(), &sig).unwrap();
    }
}
