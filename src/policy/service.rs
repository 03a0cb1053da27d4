//! Services (`services/*.toml`): an upstream API's origins, the credential it uses and how that
//! credential is injected.

use std::fmt;
use std::path::PathBuf;

use http::HeaderName;
use serde::Deserialize;
use toml::Spanned;

use super::load::Document;
use super::origin::{OriginPattern, Scheme};
use super::source::{Diagnostics, Location, SourceFile};

/// A service name: 1–64 of `[a-z0-9_-]`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName(Box<str>);

/// A tool name (its directory's name): 1–64 of `[a-z0-9_-]`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ToolName(Box<str>);

/// A credential's name within its namespace: 1–128 of `[A-Za-z0-9._-]`, not starting with `.`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CredentialName(Box<str>);

fn is_slug(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl ServiceName {
    /// Parses a service name.
    pub fn parse(s: &str) -> Result<Self, String> {
        if is_slug(s) {
            Ok(Self(s.into()))
        } else {
            Err(format!(
                "service name `{s}` must be 1-64 of a-z 0-9 _ - starting with a letter or digit"
            ))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl ToolName {
    /// Parses a tool name.
    pub fn parse(s: &str) -> Result<Self, String> {
        if is_slug(s) {
            Ok(Self(s.into()))
        } else {
            Err(format!(
                "tool name `{s}` must be 1-64 of a-z 0-9 _ - starting with a letter or digit"
            ))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl CredentialName {
    /// Parses a credential name.
    pub fn parse(s: &str) -> Result<Self, String> {
        let ok = (1..=128).contains(&s.len())
            && !s.starts_with('.')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(Self(s.into()))
        } else {
            Err(format!(
                "credential name `{s}` must be 1-128 of A-Z a-z 0-9 . _ - not starting with `.`"
            ))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }
    )*};
}
display_as_str!(ServiceName, ToolName, CredentialName);

/// Whose namespace a credential lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CredentialScope {
    /// `(tenant, user, name)`: each user has their own.
    User,
    /// `(tenant, name)`: shared by the tenant.
    Tenant,
}

/// Which credential a service injects: a name and a scope, never a value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CredentialRef {
    /// The credential's name.
    pub name: CredentialName,
    /// Its namespace.
    pub scope: CredentialScope,
}

impl CredentialRef {
    /// Parses the `scope:name` form used in policy tests (`user:github_token`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (scope, name) = s
            .split_once(':')
            .ok_or_else(|| format!("credential `{s}` must be `user:NAME` or `tenant:NAME`"))?;
        let scope = match scope {
            "user" => CredentialScope::User,
            "tenant" => CredentialScope::Tenant,
            _ => {
                return Err(format!(
                    "credential `{s}` must be `user:NAME` or `tenant:NAME`"
                ));
            }
        };
        Ok(Self {
            name: CredentialName::parse(name)?,
            scope,
        })
    }
}

impl fmt::Display for CredentialRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scope = match self.scope {
            CredentialScope::User => "user",
            CredentialScope::Tenant => "tenant",
        };
        write!(f, "{scope}:{}", self.name)
    }
}

/// A header value template with exactly one `{credential}` (or `{placeholder}`) slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    prefix: Box<str>,
    suffix: Box<str>,
}

impl Template {
    /// Parses a template around the one `{slot}`; no other braces, no control characters.
    pub fn parse(s: &str, slot: &str) -> Result<Self, String> {
        let marker = format!("{{{slot}}}");
        let Some((prefix, suffix)) = s.split_once(&marker) else {
            return Err(format!(
                "template `{s}` must contain `{marker}` exactly once"
            ));
        };
        if prefix.contains(['{', '}']) || suffix.contains(['{', '}']) {
            return Err(format!(
                "template `{s}` must contain `{marker}` exactly once and no other `{{` or `}}`"
            ));
        }
        if s.chars().any(|c| c.is_control() || !c.is_ascii()) {
            return Err(format!(
                "template `{s}` must be printable ASCII (it becomes a header value)"
            ));
        }
        Ok(Self {
            prefix: prefix.into(),
            suffix: suffix.into(),
        })
    }

    /// The text before the slot.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The text after the slot.
    pub fn suffix(&self) -> &str {
        &self.suffix
    }
}

/// How a service's credential is placed on the request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Inject {
    /// A header whose value is the template with `{credential}` filled in.
    Header {
        /// The header.
        name: HeaderName,
        /// Its value around the credential.
        template: Template,
    },
    /// HTTP Basic: the given username, the credential as password.
    Basic {
        /// The username.
        username: String,
    },
    /// A query parameter, replacing any the caller set.
    Query {
        /// The parameter name.
        param: String,
    },
    /// The tool sends a per-invocation random placeholder in this header and template; the
    /// boundary swaps it for the credential.
    Placeholder {
        /// The header the placeholder must arrive in.
        name: HeaderName,
        /// Its value around the placeholder (and, once swapped, the credential).
        template: Template,
    },
    /// AWS Signature Version 4.
    AwsSigv4 {
        /// AWS region, e.g. `us-east-1`.
        region: String,
        /// AWS service, e.g. `s3`.
        service: String,
    },
}

impl Inject {
    /// The form's name as written in files.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Header { .. } => "header",
            Self::Basic { .. } => "basic",
            Self::Query { .. } => "query",
            Self::Placeholder { .. } => "placeholder",
            Self::AwsSigv4 { .. } => "aws_sigv4",
        }
    }
}

/// An upstream API.
#[derive(Debug, Clone)]
pub struct Service {
    /// Its unique name.
    pub name: ServiceName,
    /// The origins it claims.
    pub origins: Vec<OriginPattern>,
    /// The credential injected, if any.
    pub credential: Option<CredentialRef>,
    /// How it is injected (present exactly when `credential` is).
    pub inject: Option<Inject>,
    /// Scrub injected credential forms from responses.
    pub scrub_responses: bool,
    /// Extra PEM roots for this service only.
    pub tls_roots: Vec<PathBuf>,
    /// Turn off the SSRF guard for this service.
    pub allow_private_ips: bool,
    /// `http://` origins may carry its credential.
    pub allow_plaintext: bool,
    /// `*.` origins may carry its credential.
    pub allow_wildcard_origins: bool,
    /// Where the service's `name` is written.
    pub defined_at: Location,
    /// Where each origin is written (parallel to `origins`).
    pub origin_locations: Vec<Location>,
}

// === raw file shape ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Spanned<String>,
    origins: Spanned<Vec<Spanned<String>>>,
    credential: Option<Spanned<RawCredential>>,
    inject: Option<Spanned<RawInject>>,
    #[serde(default = "yes")]
    scrub_responses: bool,
    #[serde(default)]
    tls_roots: Vec<String>,
    #[serde(default)]
    allow_private_ips: bool,
    #[serde(default)]
    allow_plaintext: bool,
    #[serde(default)]
    allow_wildcard_origins: bool,
}

/// Just the name of a service whose table is otherwise invalid.
#[derive(Deserialize)]
struct NameOnly {
    name: String,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredential {
    name: Spanned<String>,
    scope: CredentialScope,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInject {
    header: Option<Spanned<String>>,
    template: Option<Spanned<String>>,
    basic: Option<RawBasic>,
    query: Option<Spanned<String>>,
    placeholder: Option<RawPlaceholder>,
    aws_sigv4: Option<RawSigv4>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBasic {
    username: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlaceholder {
    header: Spanned<String>,
    template: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSigv4 {
    region: String,
    service: String,
}

impl Service {
    /// Parses one service file, recording every problem found in it. On failure, returns the
    /// service's name if that much was valid, so that grants naming it are not reported again.
    pub(crate) fn parse(
        file: &SourceFile,
        base: &std::path::Path,
        diags: &mut Diagnostics,
    ) -> Result<Self, Option<ServiceName>> {
        let doc = Document::parse(file, &["service"], diags).ok_or(None)?;
        let Some(raw) = doc.get::<RawService>("service", diags) else {
            if !doc.has("service") {
                diags.error(file.whole(), "expected a `[service]` table");
            }
            // The shape is wrong, but the name may still be readable.
            let name = doc
                .get::<NameOnly>("service", &mut Diagnostics::default())
                .and_then(|n| ServiceName::parse(&n.name).ok());
            return Err(name);
        };
        let mut ok = true;
        let mut fail = |diags: &mut Diagnostics, at: Location, msg: String| {
            diags.error(at, msg);
            ok = false;
        };
        let at = |span| file.at(span);

        let name = ServiceName::parse(raw.name.get_ref())
            .map_err(|e| fail(diags, at(raw.name.span()), e))
            .ok();

        let credential = raw.credential.as_ref().and_then(|c| {
            let c = c.get_ref();
            match CredentialName::parse(c.name.get_ref()) {
                Ok(name) => Some(CredentialRef {
                    name,
                    scope: c.scope,
                }),
                Err(e) => {
                    fail(diags, at(c.name.span()), e);
                    None
                }
            }
        });

        let inject = raw
            .inject
            .as_ref()
            .and_then(|i| match parse_inject(i.get_ref()) {
                Ok(inject) => Some(inject),
                Err((span, msg)) => {
                    fail(diags, at(span.unwrap_or(i.span())), msg);
                    None
                }
            });
        match (&raw.credential, &raw.inject) {
            (Some(c), None) => fail(
                diags,
                at(c.span()),
                "a service with a `credential` needs `inject` saying how to place it \
                 (e.g. `inject = { header = \"Authorization\", template = \"Bearer {credential}\" }`)"
                    .into(),
            ),
            (None, Some(i)) => fail(
                diags,
                at(i.span()),
                "`inject` needs a `credential = { name = \"...\", scope = \"user\" }` to inject"
                    .into(),
            ),
            _ => {}
        }

        let mut origins = Vec::new();
        let mut origin_locations = Vec::new();
        if raw.origins.get_ref().is_empty() {
            fail(
                diags,
                at(raw.origins.span()),
                "`origins` must list at least one `scheme://host[:port]`".into(),
            );
        }
        for o in raw.origins.get_ref() {
            match OriginPattern::parse(o.get_ref()) {
                Ok(p) => {
                    if raw.credential.is_some() {
                        if p.scheme() == Scheme::Http && !raw.allow_plaintext {
                            fail(
                                diags,
                                at(o.span()),
                                format!(
                                    "origin `{}` is plain http and this service injects a \
                                     credential; use https, or set `allow_plaintext = true` if \
                                     the credential may cross the network unencrypted",
                                    o.get_ref()
                                ),
                            );
                        }
                        if p.is_wildcard() && !raw.allow_wildcard_origins {
                            fail(
                                diags,
                                at(o.span()),
                                format!(
                                    "origin `{}` is a wildcard and this service injects a \
                                     credential; list the hosts, or set \
                                     `allow_wildcard_origins = true` to send it to every match",
                                    o.get_ref()
                                ),
                            );
                        }
                    }
                    origins.push(p);
                    origin_locations.push(at(o.span()));
                }
                Err(e) => fail(diags, at(o.span()), format!("invalid origin: {e}")),
            }
        }
        let name = match name {
            Some(name) if ok => name,
            name => return Err(name),
        };
        Ok(Self {
            name,
            origins,
            credential,
            inject,
            scrub_responses: raw.scrub_responses,
            tls_roots: raw.tls_roots.iter().map(|p| base.join(p)).collect(),
            allow_private_ips: raw.allow_private_ips,
            allow_plaintext: raw.allow_plaintext,
            allow_wildcard_origins: raw.allow_wildcard_origins,
            defined_at: at(raw.name.span()),
            origin_locations,
        })
    }
}

type InjectError = (Option<std::ops::Range<usize>>, String);

fn header_name(s: &Spanned<String>) -> Result<HeaderName, InjectError> {
    HeaderName::from_bytes(s.get_ref().as_bytes()).map_err(|_| {
        (
            Some(s.span()),
            format!("`{}` is not a valid HTTP header name", s.get_ref()),
        )
    })
}

fn template(s: &Spanned<String>, slot: &str) -> Result<Template, InjectError> {
    Template::parse(s.get_ref(), slot).map_err(|e| (Some(s.span()), e))
}

fn parse_inject(raw: &RawInject) -> Result<Inject, InjectError> {
    let forms = [
        raw.header.is_some() || raw.template.is_some(),
        raw.basic.is_some(),
        raw.query.is_some(),
        raw.placeholder.is_some(),
        raw.aws_sigv4.is_some(),
    ];
    if forms.iter().filter(|f| **f).count() != 1 {
        return Err((
            None,
            "`inject` must use exactly one form: { header, template }, { basic }, { query }, \
             { placeholder } or { aws_sigv4 }"
                .into(),
        ));
    }
    if let (Some(h), t) = (&raw.header, &raw.template) {
        let Some(t) = t else {
            return Err((
                Some(h.span()),
                "header injection needs `template`, e.g. \"Bearer {credential}\"".into(),
            ));
        };
        return Ok(Inject::Header {
            name: header_name(h)?,
            template: template(t, "credential")?,
        });
    }
    if let Some(t) = &raw.template {
        return Err((
            Some(t.span()),
            "`template` needs `header` naming where it goes".into(),
        ));
    }
    if let Some(b) = &raw.basic {
        if b.username.contains(':') || b.username.chars().any(char::is_control) {
            return Err((
                None,
                "basic `username` must not contain `:` or control characters".into(),
            ));
        }
        return Ok(Inject::Basic {
            username: b.username.clone(),
        });
    }
    if let Some(q) = &raw.query {
        let valid = !q.get_ref().is_empty()
            && q.get_ref()
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !valid {
            return Err((
                Some(q.span()),
                format!(
                    "query parameter `{}` must be 1+ of A-Z a-z 0-9 _ - .",
                    q.get_ref()
                ),
            ));
        }
        return Ok(Inject::Query {
            param: q.get_ref().clone(),
        });
    }
    if let Some(p) = &raw.placeholder {
        return Ok(Inject::Placeholder {
            name: header_name(&p.header)?,
            template: template(&p.template, "placeholder")?,
        });
    }
    let s = raw
        .aws_sigv4
        .as_ref()
        .expect("exactly one form is set and every other form returned above");
    Ok(Inject::AwsSigv4 {
        region: s.region.clone(),
        service: s.service.clone(),
    })
}
