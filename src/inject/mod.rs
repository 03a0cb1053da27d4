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
pub mod oauth2;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::HeaderValue;
use http::header::AUTHORIZATION;
use http::request::Parts;
use std::time::SystemTime;

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
    /// The stored credential or the request cannot be signed (never names a credential value).
    #[error("inject form `{0}` could not sign the request: {1}")]
    Signing(&'static str, String),
    /// The form signs the body, and the caller passed [`Payload::Streaming`].
    #[error("inject form `{0}` signs the request body, which was not buffered")]
    BodyNotBuffered(&'static str),
}

/// What step 5 can see of the request body.
#[derive(Debug, Clone, Copy)]
pub enum Payload<'a> {
    /// The whole body, as it will be sent (empty for a bodyless request).
    Buffered(&'a [u8]),
    /// The body streams after injection; forms that sign it refuse.
    Streaming,
}

/// Every byte string that was placed on the request, for response scrubbing.
#[derive(Default)]
pub struct Injected {
    forms: Vec<Zeroizing<Vec<u8>>>,
    raw: Option<Zeroizing<Vec<u8>>>,
    /// Whether a form is new on every request (a signature), so the set is never seen again.
    signed: bool,
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

    /// Also scrubs `form`: a value held for this request but not placed on it, such as an
    /// OAuth2 client secret or refresh token, or a token an earlier attempt carried.
    pub fn also(&mut self, form: &[u8]) {
        self.add(form.to_vec());
        self.forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
    }

    /// Whether nothing was injected.
    pub fn is_empty(&self) -> bool {
        self.forms.is_empty()
    }

    /// Whether some form is a per-request signature (SigV4, HMAC): the same set of forms will
    /// not come again, so nothing derived from it is worth keeping.
    pub fn is_signed(&self) -> bool {
        self.signed
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

/// Injects `secret` into the request (headers in `parts`, query in `target`) by `form`,
/// signing `payload` where the form signs the body, at time `now`.
///
/// For [`Inject::OAuth2`], `secret` is the access token (see [`oauth2::Tokens`]), not the
/// stored credential.
pub fn inject(
    parts: &mut Parts,
    target: &mut Target,
    form: &Inject,
    secret: &Secret,
    payload: Payload<'_>,
    now: SystemTime,
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
        Inject::AwsSigv4 {
            region,
            service,
            unsigned_payload,
        } => {
            let payload_hash = match (payload, unsigned_payload) {
                (_, true) => sigv4::UNSIGNED_PAYLOAD.to_owned(),
                (Payload::Buffered(body), false) => sigv4::payload_sha256(body),
                (Payload::Streaming, false) => {
                    return Err(InjectError::BodyNotBuffered("aws_sigv4"));
                }
            };
            let creds = SigV4Credentials::parse(secret)
                .map_err(|e| InjectError::Signing("aws_sigv4", e.to_string()))?;
            let forms = sigv4::sign_request(
                parts,
                target,
                region,
                service,
                &payload_hash,
                &creds,
                now.into(),
            )
            .map_err(|e| InjectError::Signing("aws_sigv4", e.to_string()))?;
            injected.raw = Some(Zeroizing::new(creds.secret_access_key.expose().to_vec()));
            injected.signed = true;
            for form in forms {
                injected.add(form.to_vec());
            }
        }
        Inject::Hmac(hmac_form) => {
            let body = match payload {
                Payload::Buffered(body) => body,
                Payload::Streaming if hmac_form.signs_body() => {
                    return Err(InjectError::BodyNotBuffered("hmac"));
                }
                Payload::Streaming => b"",
            };
            let path_and_query = match &target.query {
                Some(q) => format!("{}?{q}", target.path),
                None => target.path.clone(),
            };
            let headers = hmac::sign(hmac_form, &parts.method, &path_and_query, body, now, raw)?;
            if let Some((_, signature)) = headers.first() {
                injected.add(signature.as_bytes());
                injected.signed = true;
            }
            for (name, value) in headers {
                parts.headers.insert(name, value);
            }
        }
        Inject::OAuth2(_) => {
            let mut value = Zeroizing::new(b"Bearer ".to_vec());
            value.extend_from_slice(raw);
            parts
                .headers
                .insert(AUTHORIZATION, header_value(&value, "access token")?);
            injected.add(value.to_vec());
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

    const EMPTY: Payload<'static> = Payload::Buffered(b"");

    fn now() -> SystemTime {
        SystemTime::now()
    }

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
        let got = inject(
            &mut p,
            &mut t,
            &form,
            &Secret::from_text("tok"),
            EMPTY,
            now(),
        )
        .unwrap();
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
        inject(
            &mut p,
            &mut t,
            &form,
            &Secret::from_text("s3cret"),
            EMPTY,
            now(),
        )
        .unwrap();
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
        inject(
            &mut p,
            &mut t,
            &form,
            &Secret::from_text("a b&c"),
            EMPTY,
            now(),
        )
        .unwrap();
        assert_eq!(t.query.as_deref(), Some("q=1&z&api_key=a+b%26c"));
    }

    #[test]
    fn header_unsafe_secrets_are_refused() {
        let (mut p, mut t) = (parts(), Target::parse("https://x.test/a").unwrap());
        let form = Inject::Header {
            name: HeaderName::from_static("x-key"),
            template: Template::parse("{credential}", "credential").unwrap(),
        };
        let err = inject(
            &mut p,
            &mut t,
            &form,
            &Secret::from_text("a\r\nX-Evil: 1"),
            EMPTY,
            now(),
        )
        .unwrap_err();
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
        let got = inject(
            &mut p,
            &mut t,
            &form,
            &Secret::from_text("k3y"),
            EMPTY,
            now(),
        )
        .unwrap();
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
    fn hmac_signs_the_buffered_body_and_refuses_a_streaming_one() {
        let form = generic_hmac("{method}\n{path}\n{timestamp}\n{body}");
        let (mut p, mut t) = (
            request("POST", &[("content-length", "12")]),
            Target::parse("https://x.test/a").unwrap(),
        );
        let body = b"{\"qty\":\"\xff\"}";
        inject(
            &mut p,
            &mut t,
            &form,
            &Secret::from_text("k3y"),
            Payload::Buffered(body),
            now(),
        )
        .unwrap();
        let ts = p.headers.get("x-timestamp").unwrap().to_str().unwrap();
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA512, b"k3y");
        let sig = STANDARD
            .decode(p.headers.get("x-signature").unwrap().as_bytes())
            .unwrap();
        let mut msg = format!("POST\n/a\n{ts}\n").into_bytes();
        msg.extend_from_slice(body);
        ring::hmac::verify(&key, &msg, &sig).unwrap();

        let (mut p, mut t) = (
            request("POST", &[]),
            Target::parse("https://x.test/a").unwrap(),
        );
        let err = inject(
            &mut p,
            &mut t,
            &form,
            &Secret::from_text("k3y"),
            Payload::Streaming,
            now(),
        )
        .unwrap_err();
        assert!(matches!(err, InjectError::BodyNotBuffered("hmac")), "{err}");
        assert!(!p.headers.contains_key("x-signature"));
    }

    #[test]
    fn hmac_without_body_in_the_message_signs_any_request() {
        let form = generic_hmac("{method} {path} {timestamp}");
        let mut p = request("POST", &[("content-length", "12")]);
        let mut t = Target::parse("https://x.test/a").unwrap();
        inject(
            &mut p,
            &mut t,
            &form,
            &Secret::from_text("k3y"),
            Payload::Streaming,
            now(),
        )
        .unwrap();
        let ts = p.headers.get("x-timestamp").unwrap().to_str().unwrap();
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA512, b"k3y");
        let sig = STANDARD
            .decode(p.headers.get("x-signature").unwrap().as_bytes())
            .unwrap();
        ring::hmac::verify(&key, format!("POST /a {ts}").as_bytes(), &sig).unwrap();
    }
}
