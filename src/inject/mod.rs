//! Step 5, inject: place the principal's credential on an allowed, cleaned request, in the
//! form the service names.
//!
//! # Security
//!
//! Called only after the decision was Allow and the credential was resolved in the verified
//! principal's namespace. Injected header values are marked sensitive (hyper keeps them out of
//! HPACK tables and debug output). The forms that were injected are returned so that the
//! scrub step can remove every one of them from the response.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::HeaderValue;
use http::header::AUTHORIZATION;
use http::request::Parts;
use zeroize::Zeroizing;

use crate::policy::{Inject, Target, service::Template};
use crate::secrets::Secret;

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
        Inject::AwsSigv4 { .. } => return Err(InjectError::Unsupported("aws_sigv4")),
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
}
