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
use super::target::Target;

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

/// The hash an HMAC signature uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HmacAlgorithm {
    /// HMAC-SHA256.
    Sha256,
    /// HMAC-SHA512.
    Sha512,
}

/// How an HMAC signature is written into its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignatureEncoding {
    /// Lower-case hex.
    Hex,
    /// Standard base64 with padding.
    Base64,
}

/// How the signing time is written (in the message and the timestamp header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimestampFormat {
    /// Seconds since the Unix epoch, e.g. `1531420618`.
    Unix,
    /// Milliseconds since the Unix epoch, e.g. `1531420618000`.
    UnixMs,
    /// RFC 3339 in UTC to the second, e.g. `2018-07-12T18:36:58Z`.
    Rfc3339,
}

/// One piece of an HMAC message template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessagePart {
    /// Text taken as written.
    Literal(String),
    /// `{method}`: the request method, e.g. `POST`.
    Method,
    /// `{path}`: the path and query as sent, e.g. `/v1/items?limit=2`.
    Path,
    /// `{timestamp}`: the signing time in the form's [`TimestampFormat`].
    Timestamp,
    /// `{body}`: the request body's bytes.
    Body,
}

/// A configurable HMAC signature over parts of the request, keyed by the credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HmacForm {
    /// The header the signature goes in.
    pub header: HeaderName,
    /// The hash.
    pub algorithm: HmacAlgorithm,
    /// How the signature bytes are written.
    pub encoding: SignatureEncoding,
    /// What is signed.
    pub message: Vec<MessagePart>,
    /// Text put before the encoded signature in the header (e.g. `v0=`); printable ASCII.
    pub prefix: String,
    /// The header that carries the signing time, if any.
    pub timestamp_header: Option<HeaderName>,
    /// How the signing time is written.
    pub timestamp: TimestampFormat,
}

impl HmacForm {
    /// Whether the message signs the request body.
    pub fn signs_body(&self) -> bool {
        self.message.contains(&MessagePart::Body)
    }

    /// Parses a message template: text with `{method}`, `{path}`, `{timestamp}` and `{body}`
    /// placeholders; `{{` and `}}` stand for literal braces.
    pub fn parse_message(s: &str) -> Result<Vec<MessagePart>, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = s;
        while let Some(c) = rest.chars().next() {
            if rest.starts_with("{{") || rest.starts_with("}}") {
                literal.push(c);
                rest = &rest[2..];
            } else if c == '{' {
                let Some(end) = rest.find('}') else {
                    return Err(format!(
                        "message `{s}` has a `{{` without a closing `}}` (write `{{{{` for a \
                         literal brace)"
                    ));
                };
                let part = match &rest[1..end] {
                    "method" => MessagePart::Method,
                    "path" => MessagePart::Path,
                    "timestamp" => MessagePart::Timestamp,
                    "body" => MessagePart::Body,
                    other => {
                        return Err(format!(
                            "message `{s}` has an unknown placeholder `{{{other}}}`; expected \
                             `{{method}}`, `{{path}}`, `{{timestamp}}` or `{{body}}`"
                        ));
                    }
                };
                if !literal.is_empty() {
                    parts.push(MessagePart::Literal(std::mem::take(&mut literal)));
                }
                parts.push(part);
                rest = &rest[end + 1..];
            } else if c == '}' {
                return Err(format!(
                    "message `{s}` has a `}}` without an opening `{{` (write `}}}}` for a \
                     literal brace)"
                ));
            } else {
                literal.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
        if !literal.is_empty() {
            parts.push(MessagePart::Literal(literal));
        }
        if parts.iter().all(|p| matches!(p, MessagePart::Literal(_))) {
            return Err(format!(
                "message `{s}` signs nothing of the request; use at least one of `{{method}}`, \
                 `{{path}}`, `{{timestamp}}` or `{{body}}`"
            ));
        }
        Ok(parts)
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
        /// Sign `UNSIGNED-PAYLOAD` and stream the body, instead of buffering it to hash it.
        unsigned_payload: bool,
    },
    /// An HMAC signature over parts of the request, keyed by the credential.
    Hmac(HmacForm),
    /// An OAuth2 access token obtained with the credential, sent as `Authorization: Bearer`.
    OAuth2(Box<OAuth2Form>),
}

/// Which OAuth2 grant exchanges the credential for access tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OAuth2Grant {
    /// `client_credentials`: the client id and secret alone.
    ClientCredentials,
    /// `refresh_token`: the credential's refresh token (which the provider may rotate).
    RefreshToken,
}

impl OAuth2Grant {
    /// The `grant_type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientCredentials => "client_credentials",
            Self::RefreshToken => "refresh_token",
        }
    }
}

/// How the client authenticates to the token endpoint (RFC 6749 section 2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientAuth {
    /// HTTP Basic with the form-urlencoded client id and secret (`client_secret_basic`).
    Basic,
    /// `client_id` and `client_secret` in the form body (`client_secret_post`).
    Body,
}

/// The `oauth2` inject form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuth2Form {
    /// The token endpoint.
    pub token_url: Target,
    /// The grant used.
    pub grant: OAuth2Grant,
    /// Scopes requested (sent space-joined as `scope`), if any.
    pub scopes: Vec<String>,
    /// An `audience` parameter, for providers that want one.
    pub audience: Option<String>,
    /// How the client authenticates.
    pub client_auth: ClientAuth,
    /// How end users connect their own accounts, when they may.
    pub connect: Option<ConnectForm>,
}

/// Account connect for an `oauth2` service (authorization code with PKCE): where users are
/// sent to consent, and with which app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectForm {
    /// The provider's authorization endpoint.
    pub authorize_url: Target,
    /// Extra query parameters for it (e.g. `access_type = "offline"`).
    pub authorize_params: Vec<(String, String)>,
    /// The provider's token revocation endpoint (RFC 7009), if any.
    pub revoke_url: Option<Target>,
    /// The tenant-scoped credential holding the app's `{"client_id", "client_secret"}`.
    pub client: CredentialName,
    /// The external URL at which behalf's API is reached, without a trailing `/`.
    pub redirect_base: String,
}

impl ConnectForm {
    /// The redirect URI registered with the provider for `service`.
    pub fn redirect_uri(&self, service: &ServiceName) -> String {
        format!("{}/v1/connect/{service}/callback", self.redirect_base)
    }
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
            Self::Hmac(_) => "hmac",
            Self::OAuth2(_) => "oauth2",
        }
    }

    /// Whether the form needs the whole request body before it can inject: SigV4 hashes it
    /// (unless `unsigned_payload`), HMAC signs it when the message has `{body}`.
    pub fn signs_body(&self) -> bool {
        match self {
            Self::AwsSigv4 {
                unsigned_payload, ..
            } => !unsigned_payload,
            Self::Hmac(h) => h.signs_body(),
            _ => false,
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
    hmac: Option<Spanned<RawHmac>>,
    oauth2: Option<Spanned<RawOAuth2>>,
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
    #[serde(default)]
    unsigned_payload: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOAuth2 {
    token_url: Spanned<String>,
    grant: Spanned<String>,
    #[serde(default)]
    scopes: Vec<Spanned<String>>,
    audience: Option<Spanned<String>>,
    client_auth: Option<Spanned<String>>,
    authorize_url: Option<Spanned<String>>,
    #[serde(default)]
    authorize_params: std::collections::BTreeMap<String, String>,
    revoke_url: Option<Spanned<String>>,
    client: Option<Spanned<String>>,
    redirect_base: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHmac {
    header: Option<Spanned<String>>,
    algorithm: Option<Spanned<String>>,
    encoding: Option<Spanned<String>>,
    message: Option<Spanned<String>>,
    prefix: Option<Spanned<String>>,
    timestamp_header: Option<Spanned<String>>,
    timestamp: Option<Spanned<String>>,
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
        if let (Some(Inject::OAuth2(o)), Some(i), Some(c)) = (&inject, &raw.inject, &credential)
            && o.connect.is_some()
            && c.scope != CredentialScope::User
        {
            fail(
                diags,
                at(i.span()),
                "account connect (`authorize_url`) stores each user's own grant, so the \
                 credential needs scope = \"user\""
                    .into(),
            );
        }
        let plaintext_url = match &inject {
            Some(Inject::OAuth2(o)) => std::iter::once(("token_url", &o.token_url))
                .chain(
                    o.connect
                        .iter()
                        .map(|c| ("authorize_url", &c.authorize_url)),
                )
                .chain(
                    o.connect
                        .iter()
                        .filter_map(|c| c.revoke_url.as_ref().map(|u| ("revoke_url", u))),
                )
                .find(|(_, u)| u.origin.scheme == Scheme::Http),
            _ => None,
        };
        if let (Some((key, url)), Some(i)) = (plaintext_url, &raw.inject)
            && !raw.allow_plaintext
        {
            fail(
                diags,
                at(i.span()),
                format!(
                    "oauth2 `{key}` `{url}` is plain http: the client secret and tokens would \
                     cross the network unencrypted; use https, or set `allow_plaintext = true`"
                ),
            );
        }
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
        raw.hmac.is_some(),
        raw.oauth2.is_some(),
    ];
    if forms.iter().filter(|f| **f).count() != 1 {
        return Err((
            None,
            "`inject` must use exactly one form: { header, template }, { basic }, { query }, \
             { placeholder }, { aws_sigv4 }, { hmac } or { oauth2 }"
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
    if let Some(h) = &raw.hmac {
        return parse_hmac(h).map(Inject::Hmac);
    }
    if let Some(o) = &raw.oauth2 {
        return parse_oauth2(o.get_ref()).map(|o| Inject::OAuth2(Box::new(o)));
    }
    let s = raw
        .aws_sigv4
        .as_ref()
        .expect("exactly one form is set and every other form returned above");
    // Only S3 accepts `UNSIGNED-PAYLOAD` (announced in `X-Amz-Content-Sha256`); every other
    // service hashes the body itself and would reject the signature.
    if s.unsigned_payload && s.service != "s3" {
        return Err((
            None,
            format!(
                "aws_sigv4 `unsigned_payload = true` is only accepted by S3, not `{}`: remove it \
                 (the body is then hashed and signed)",
                s.service
            ),
        ));
    }
    Ok(Inject::AwsSigv4 {
        region: s.region.clone(),
        service: s.service.clone(),
        unsigned_payload: s.unsigned_payload,
    })
}

fn parse_oauth2(raw: &RawOAuth2) -> Result<OAuth2Form, InjectError> {
    let url = &raw.token_url;
    let token_url = Target::parse(url.get_ref()).map_err(|e| {
        (
            Some(url.span()),
            format!(
                "oauth2 `token_url` `{}` is not a valid URL: {e}",
                url.get_ref()
            ),
        )
    })?;
    let grant = match raw.grant.get_ref().as_str() {
        "client_credentials" => OAuth2Grant::ClientCredentials,
        "refresh_token" => OAuth2Grant::RefreshToken,
        other => {
            return Err((
                Some(raw.grant.span()),
                format!(
                    "oauth2 `grant` `{other}` must be \"client_credentials\" or \"refresh_token\""
                ),
            ));
        }
    };
    // RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ).
    let scope_char = |b: u8| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b);
    let mut scopes = Vec::with_capacity(raw.scopes.len());
    for scope in &raw.scopes {
        if scope.get_ref().is_empty() || !scope.get_ref().bytes().all(scope_char) {
            return Err((
                Some(scope.span()),
                format!(
                    "oauth2 scope `{}` must be one scope token: printable ASCII without spaces,                      `\"` or `\\` (list each scope separately)",
                    scope.get_ref().escape_default()
                ),
            ));
        }
        scopes.push(scope.get_ref().clone());
    }
    let audience = match &raw.audience {
        Some(a) if a.get_ref().is_empty() || a.get_ref().chars().any(char::is_control) => {
            return Err((
                Some(a.span()),
                "oauth2 `audience` must be non-empty, without control characters".into(),
            ));
        }
        a => a.as_ref().map(|a| a.get_ref().clone()),
    };
    let client_auth = match raw.client_auth.as_ref().map(|c| (c, c.get_ref().as_str())) {
        None | Some((_, "basic")) => ClientAuth::Basic,
        Some((_, "body")) => ClientAuth::Body,
        Some((c, other)) => {
            return Err((
                Some(c.span()),
                format!("oauth2 `client_auth` `{other}` must be \"basic\" or \"body\""),
            ));
        }
    };
    Ok(OAuth2Form {
        token_url,
        grant,
        scopes,
        audience,
        client_auth,
        connect: parse_connect(raw, grant)?,
    })
}

fn parse_connect(raw: &RawOAuth2, grant: OAuth2Grant) -> Result<Option<ConnectForm>, InjectError> {
    let url = |s: &Spanned<String>, key: &str| {
        Target::parse(s.get_ref()).map_err(|e| {
            (
                Some(s.span()),
                format!("oauth2 `{key}` `{}` is not a valid URL: {e}", s.get_ref()),
            )
        })
    };
    let Some(authorize) = &raw.authorize_url else {
        for (key, set) in [
            ("authorize_params", !raw.authorize_params.is_empty()),
            ("revoke_url", raw.revoke_url.is_some()),
            ("client", raw.client.is_some()),
            ("redirect_base", raw.redirect_base.is_some()),
        ] {
            if set {
                return Err((
                    None,
                    format!("oauth2 `{key}` is for account connect, which needs `authorize_url`"),
                ));
            }
        }
        return Ok(None);
    };
    let authorize_url = url(authorize, "authorize_url")?;
    if grant != OAuth2Grant::RefreshToken {
        return Err((
            Some(authorize.span()),
            "account connect (`authorize_url`) stores each user's refresh token, so it needs \
             grant = \"refresh_token\""
                .into(),
        ));
    }
    let client = raw.client.as_ref().ok_or_else(|| {
        (
            Some(authorize.span()),
            "account connect needs `client`: the name of the tenant credential holding the \
             app's {\"client_id\", \"client_secret\"}"
                .to_owned(),
        )
    })?;
    let client = CredentialName::parse(client.get_ref()).map_err(|e| (Some(client.span()), e))?;
    let base = raw.redirect_base.as_ref().ok_or_else(|| {
        (
            Some(authorize.span()),
            "account connect needs `redirect_base`: the external URL of behalf's API, to which \
             the provider sends users back (`{redirect_base}/v1/connect/{service}/callback`)"
                .to_owned(),
        )
    })?;
    let parsed = url(base, "redirect_base")?;
    let redirect_base = base.get_ref().trim_end_matches('/').to_owned();
    if parsed.query.is_some() || redirect_base.contains('#') {
        return Err((
            Some(base.span()),
            "oauth2 `redirect_base` must have no query or fragment".into(),
        ));
    }
    for (k, v) in &raw.authorize_params {
        let reserved = [
            "response_type",
            "client_id",
            "redirect_uri",
            "scope",
            "state",
            "code_challenge",
            "code_challenge_method",
        ];
        if reserved.contains(&k.as_str()) || v.chars().any(char::is_control) {
            return Err((
                None,
                format!(
                    "oauth2 `authorize_params` may not set `{k}` (behalf sets it) or contain \
                     control characters"
                ),
            ));
        }
    }
    Ok(Some(ConnectForm {
        authorize_url,
        authorize_params: raw
            .authorize_params
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        revoke_url: raw
            .revoke_url
            .as_ref()
            .map(|r| url(r, "revoke_url"))
            .transpose()?,
        client,
        redirect_base,
    }))
}

fn parse_hmac(raw: &Spanned<RawHmac>) -> Result<HmacForm, InjectError> {
    let table = raw.span();
    let raw = raw.get_ref();
    let required =
        |v: &Option<Spanned<String>>, msg: &str| -> Result<Spanned<String>, InjectError> {
            v.clone()
                .ok_or_else(|| (Some(table.clone()), msg.to_owned()))
        };
    let header = required(
        &raw.header,
        "hmac injection needs `header` naming where the signature goes, e.g. \
         header = \"X-Signature\"",
    )?;
    let header = header_name(&header)?;
    let algorithm = required(
        &raw.algorithm,
        "hmac injection needs `algorithm`: \"sha256\" or \"sha512\"",
    )?;
    let algorithm = match algorithm.get_ref().as_str() {
        "sha256" => HmacAlgorithm::Sha256,
        "sha512" => HmacAlgorithm::Sha512,
        other => {
            return Err((
                Some(algorithm.span()),
                format!("hmac `algorithm` `{other}` must be \"sha256\" or \"sha512\""),
            ));
        }
    };
    let encoding = required(
        &raw.encoding,
        "hmac injection needs `encoding`: \"hex\" or \"base64\"",
    )?;
    let encoding = match encoding.get_ref().as_str() {
        "hex" => SignatureEncoding::Hex,
        "base64" => SignatureEncoding::Base64,
        other => {
            return Err((
                Some(encoding.span()),
                format!("hmac `encoding` `{other}` must be \"hex\" or \"base64\""),
            ));
        }
    };
    let message = required(
        &raw.message,
        "hmac injection needs `message`, the signed text, e.g. \
         message = \"v0:{timestamp}:{body}\"",
    )?;
    let parts =
        HmacForm::parse_message(message.get_ref()).map_err(|e| (Some(message.span()), e))?;
    let prefix = match &raw.prefix {
        Some(p) if p.get_ref().chars().any(|c| c.is_control() || !c.is_ascii()) => {
            return Err((
                Some(p.span()),
                format!(
                    "hmac `prefix` `{}` must be printable ASCII (it becomes a header value)",
                    p.get_ref().escape_default()
                ),
            ));
        }
        Some(p) => p.get_ref().clone(),
        None => String::new(),
    };
    let timestamp_header = raw.timestamp_header.as_ref().map(header_name).transpose()?;
    if timestamp_header.as_ref() == Some(&header) {
        let at = raw.timestamp_header.as_ref().map(Spanned::span);
        return Err((
            at,
            "hmac `timestamp_header` must differ from `header`".into(),
        ));
    }
    let timestamp = match &raw.timestamp {
        None => TimestampFormat::Unix,
        Some(t) => match t.get_ref().as_str() {
            "unix" => TimestampFormat::Unix,
            "unix_ms" => TimestampFormat::UnixMs,
            "rfc3339" => TimestampFormat::Rfc3339,
            other => {
                return Err((
                    Some(t.span()),
                    format!(
                        "hmac `timestamp` `{other}` must be \"unix\", \"unix_ms\" or \"rfc3339\""
                    ),
                ));
            }
        },
    };
    if parts.contains(&MessagePart::Timestamp) && timestamp_header.is_none() {
        return Err((
            Some(message.span()),
            "hmac `message` uses `{timestamp}`, so the upstream needs it too: add \
             `timestamp_header`, e.g. timestamp_header = \"X-Timestamp\""
                .into(),
        ));
    }
    Ok(HmacForm {
        header,
        algorithm,
        encoding,
        message: parts,
        prefix,
        timestamp_header,
        timestamp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Diagnostic;

    const FILE: &str = "policies/services/slack.toml";

    /// A service whose line 5 is `inject = { hmac = { <hmac> } }`.
    fn text(hmac: &str) -> String {
        format!(
            "[service]\nname = \"slack\"\norigins = [\"https://hooks.example.com\"]\n\
             credential = {{ name = \"signing_secret\", scope = \"tenant\" }}\n\
             inject = {{ hmac = {{ {hmac} }} }}\n"
        )
    }

    fn parse(hmac: &str) -> Result<Service, Vec<Diagnostic>> {
        let file = SourceFile::new(FILE, text(hmac));
        let mut diags = Diagnostics::default();
        let got = Service::parse(&file, std::path::Path::new("."), &mut diags);
        match got {
            Ok(s) if !diags.has_errors() => Ok(s),
            _ => Err(diags.into_sorted()),
        }
    }

    /// Asserts one error on line 5, at the first character of `at` in that line.
    fn assert_error(hmac: &str, at: &str, phrase: &str) {
        let line = format!("inject = {{ hmac = {{ {hmac} }} }}");
        let column = line.find(at).expect("`at` is on the inject line") + 1;
        let diags = parse(hmac).expect_err("should be rejected");
        assert_eq!(diags.len(), 1, "{diags:?}");
        let d = &diags[0];
        assert_eq!(
            (d.at.file.as_path(), d.at.line, d.at.column),
            (std::path::Path::new(FILE), 5, column),
            "{d}"
        );
        assert!(
            d.message.contains(phrase),
            "`{}` should contain {phrase:?}",
            d.message
        );
    }

    const SLACK: &str = r#"header = "X-Slack-Signature", algorithm = "sha256", encoding = "hex", message = "v0:{timestamp}:{body}", prefix = "v0=", timestamp_header = "X-Slack-Request-Timestamp", timestamp = "unix""#;

    #[test]
    fn slack_style_form_parses() {
        let s = parse(SLACK).unwrap();
        let Some(Inject::Hmac(h)) = &s.inject else {
            panic!("expected hmac, got {:?}", s.inject)
        };
        assert_eq!(s.inject.as_ref().unwrap().kind(), "hmac");
        assert_eq!(h.header, "x-slack-signature");
        assert_eq!(h.algorithm, HmacAlgorithm::Sha256);
        assert_eq!(h.encoding, SignatureEncoding::Hex);
        assert_eq!(
            h.message,
            vec![
                MessagePart::Literal("v0:".into()),
                MessagePart::Timestamp,
                MessagePart::Literal(":".into()),
                MessagePart::Body,
            ]
        );
        assert_eq!(h.prefix, "v0=");
        assert_eq!(
            h.timestamp_header.as_ref().map(HeaderName::as_str),
            Some("x-slack-request-timestamp")
        );
        assert_eq!(h.timestamp, TimestampFormat::Unix);
        assert!(h.signs_body());
    }

    #[test]
    fn generic_form_with_defaults_parses() {
        let s = parse(
            r#"header = "X-Signature", algorithm = "sha512", encoding = "base64", message = "{method}\n{path}\n{timestamp}\n{body}", timestamp_header = "X-Timestamp""#,
        )
        .unwrap();
        let Some(Inject::Hmac(h)) = &s.inject else {
            panic!("expected hmac")
        };
        assert_eq!(h.algorithm, HmacAlgorithm::Sha512);
        assert_eq!(h.encoding, SignatureEncoding::Base64);
        assert_eq!(h.prefix, "");
        assert_eq!(h.timestamp, TimestampFormat::Unix);
        assert_eq!(h.message[1], MessagePart::Literal("\n".into()));
    }

    #[test]
    fn bad_algorithm_encoding_and_timestamp() {
        assert_error(
            &SLACK.replace("\"sha256\"", "\"sha1\""),
            "\"sha1\"",
            "`algorithm` `sha1` must be \"sha256\" or \"sha512\"",
        );
        assert_error(
            &SLACK.replace("\"hex\"", "\"base32\""),
            "\"base32\"",
            "`encoding` `base32` must be \"hex\" or \"base64\"",
        );
        assert_error(
            &SLACK.replace("\"unix\"", "\"iso\""),
            "\"iso\"",
            "`timestamp` `iso` must be \"unix\", \"unix_ms\" or \"rfc3339\"",
        );
    }

    #[test]
    fn unknown_or_unbalanced_placeholders_in_message() {
        for (message, phrase) in [
            ("v0:{timestamp}:{nonce}", "unknown placeholder `{nonce}`"),
            ("v0:{timestamp}:{Body}", "unknown placeholder `{Body}`"),
            (
                "v0:{timestamp:{body}",
                "unknown placeholder `{timestamp:{body}`",
            ),
            ("v0:{timestamp}:{body", "without a closing `}`"),
            ("v0:{timestamp}}:{body}", "`}` without an opening `{`"),
            ("v0:", "signs nothing of the request"),
        ] {
            let hmac = SLACK.replace("v0:{timestamp}:{body}", message);
            assert_error(&hmac, &format!("\"{message}\""), phrase);
        }
    }

    #[test]
    fn missing_keys_point_at_the_hmac_table() {
        for (key, phrase) in [
            (
                r#"header = "X-Slack-Signature", "#,
                "needs `header` naming where the signature goes",
            ),
            (r#"algorithm = "sha256", "#, "needs `algorithm`"),
            (r#"encoding = "hex", "#, "needs `encoding`"),
            (r#"message = "v0:{timestamp}:{body}", "#, "needs `message`"),
        ] {
            // The hmac table's `{`.
            let hmac = SLACK.replace(key, "");
            let table = if key.starts_with("header") {
                "{ algorithm"
            } else {
                "{ header"
            };
            assert_error(&hmac, table, phrase);
        }
    }

    #[test]
    fn header_names_prefix_and_timestamp_header() {
        assert_error(
            &SLACK.replace("\"X-Slack-Signature\"", "\"X Slack\""),
            "\"X Slack\"",
            "`X Slack` is not a valid HTTP header name",
        );
        assert_error(
            &SLACK.replace("\"X-Slack-Request-Timestamp\"", "\"X-Slack-Signature\""),
            "\"X-Slack-Signature\", timestamp = ",
            "must differ from `header`",
        );
        assert_error(
            &SLACK.replace("\"v0=\"", "\"v0\\n\""),
            "\"v0\\n\"",
            "`prefix` `v0\\n` must be printable ASCII",
        );
        let without = SLACK.replace(r#", timestamp_header = "X-Slack-Request-Timestamp""#, "");
        assert_error(
            &without,
            "\"v0:{timestamp}:{body}\"",
            "uses `{timestamp}`, so the upstream needs it too",
        );
    }

    #[test]
    fn hmac_is_exclusive_with_other_forms() {
        let file = SourceFile::new(
            FILE,
            text(SLACK).replace("inject = {", "inject = { query = \"k\","),
        );
        let mut diags = Diagnostics::default();
        assert!(Service::parse(&file, std::path::Path::new("."), &mut diags).is_err());
        let diags = diags.into_sorted();
        assert!(
            diags[0].message.contains("{ hmac } or { oauth2 }"),
            "{diags:?}"
        );
    }

    /// Parses a service whose `inject` is `inject`, with extra top-level keys `extra`.
    fn parse_inject(inject: &str, extra: &str) -> Result<Service, Vec<Diagnostic>> {
        let file = SourceFile::new(
            "policies/services/crm.toml",
            format!(
                "[service]\nname = \"crm\"\norigins = [\"https://api.crm.test\"]\n\
                 credential = {{ name = \"crm\", scope = \"user\" }}\ninject = {inject}\n{extra}"
            ),
        );
        let mut diags = Diagnostics::default();
        match Service::parse(&file, std::path::Path::new("."), &mut diags) {
            Ok(s) if !diags.has_errors() => Ok(s),
            _ => Err(diags.into_sorted()),
        }
    }

    fn first_error(inject: &str, extra: &str) -> String {
        let diags = parse_inject(inject, extra).expect_err("should be rejected");
        assert_eq!(diags[0].at.line, 5, "{diags:?}");
        diags[0].message.clone()
    }

    #[test]
    fn oauth2_form_parses_with_defaults_and_options() {
        let s = parse_inject(
            r#"{ oauth2 = { token_url = "https://auth.crm.test/oauth/token", grant = "refresh_token" } }"#,
            "",
        )
        .unwrap();
        let Some(Inject::OAuth2(o)) = &s.inject else {
            panic!("expected oauth2, got {:?}", s.inject)
        };
        assert_eq!(o.token_url.to_string(), "https://auth.crm.test/oauth/token");
        assert_eq!(o.grant, OAuth2Grant::RefreshToken);
        assert_eq!(o.client_auth, ClientAuth::Basic);
        assert!(o.scopes.is_empty() && o.audience.is_none());
        assert!(!s.inject.as_ref().unwrap().signs_body());

        let s = parse_inject(
            r#"{ oauth2 = { token_url = "https://auth.crm.test/t", grant = "client_credentials", scopes = ["a:read", "b"], audience = "https://api.crm.test", client_auth = "body" } }"#,
            "",
        )
        .unwrap();
        let Some(Inject::OAuth2(o)) = &s.inject else {
            panic!("expected oauth2")
        };
        assert_eq!(o.grant, OAuth2Grant::ClientCredentials);
        assert_eq!(o.scopes, ["a:read", "b"]);
        assert_eq!(o.audience.as_deref(), Some("https://api.crm.test"));
        assert_eq!(o.client_auth, ClientAuth::Body);
    }

    #[test]
    fn oauth2_errors_name_the_key() {
        let form = |body: &str| format!("{{ oauth2 = {{ {body} }} }}");
        let base = r#"token_url = "https://auth.crm.test/t", grant = "refresh_token""#;
        for (body, phrase) in [
            (
                base.replace("refresh_token", "password"),
                "`grant` `password` must be \"client_credentials\" or \"refresh_token\"",
            ),
            (
                format!("{base}, scopes = [\"a b\"]"),
                "scope `a b` must be one scope token",
            ),
            (
                format!("{base}, client_auth = \"jwt\""),
                "`client_auth` `jwt` must be \"basic\" or \"body\"",
            ),
            (
                base.replace("https://auth.crm.test/t", "not a url"),
                "`token_url` `not a url` is not a valid URL",
            ),
            (
                base.replace("https://", "http://"),
                "is plain http: the client secret and tokens would cross the network",
            ),
            (
                format!("{base}, audience = \"\""),
                "`audience` must be non-empty",
            ),
            (
                r#"grant = "refresh_token""#.to_owned(),
                "missing field `token_url`",
            ),
        ] {
            let message = first_error(&form(&body), "");
            assert!(
                message.contains(phrase),
                "{body}: `{message}` should contain {phrase:?}"
            );
        }
        // Plain http is allowed when the service says so.
        parse_inject(
            &form(&base.replace("https://", "http://")),
            "allow_plaintext = true",
        )
        .unwrap();
    }

    #[test]
    fn unsigned_payload_is_for_s3_only() {
        let s = parse_inject(
            r#"{ aws_sigv4 = { region = "eu-west-1", service = "s3", unsigned_payload = true } }"#,
            "",
        )
        .unwrap();
        assert!(!s.inject.as_ref().unwrap().signs_body());
        let s = parse_inject(
            r#"{ aws_sigv4 = { region = "eu-west-1", service = "dynamodb" } }"#,
            "",
        )
        .unwrap();
        assert!(s.inject.as_ref().unwrap().signs_body());
        let message = first_error(
            r#"{ aws_sigv4 = { region = "eu-west-1", service = "dynamodb", unsigned_payload = true } }"#,
            "",
        );
        assert!(
            message.contains("only accepted by S3, not `dynamodb`"),
            "{message}"
        );
    }

    const CONNECT: &str = r#"token_url = "https://auth.crm.test/token", grant = "refresh_token", authorize_url = "https://auth.crm.test/authorize", authorize_params = { access_type = "offline" }, revoke_url = "https://auth.crm.test/revoke", client = "crm_app", redirect_base = "https://agent.example.test/behalf/""#;

    #[test]
    fn connect_keys_parse_and_build_the_redirect_uri() {
        let s = parse_inject(&format!("{{ oauth2 = {{ {CONNECT} }} }}"), "").unwrap();
        let Some(Inject::OAuth2(o)) = &s.inject else {
            panic!("expected oauth2")
        };
        let c = o.connect.as_ref().unwrap();
        assert_eq!(
            c.authorize_url.to_string(),
            "https://auth.crm.test/authorize"
        );
        assert_eq!(
            c.authorize_params,
            [("access_type".into(), "offline".into())]
        );
        assert_eq!(
            c.revoke_url.as_ref().unwrap().to_string(),
            "https://auth.crm.test/revoke"
        );
        assert_eq!(c.client.as_str(), "crm_app");
        assert_eq!(
            c.redirect_uri(&s.name),
            "https://agent.example.test/behalf/v1/connect/crm/callback"
        );
    }

    #[test]
    fn connect_needs_its_keys_a_refresh_grant_and_a_user_credential() {
        let with = |body: &str| format!("{{ oauth2 = {{ {body} }} }}");
        for (body, phrase) in [
            (CONNECT.replace(r#", client = "crm_app""#, ""), "needs `client`"),
            (
                CONNECT.replace(r#", redirect_base = "https://agent.example.test/behalf/""#, ""),
                "needs `redirect_base`",
            ),
            (
                CONNECT.replace("refresh_token", "client_credentials"),
                "needs grant = \"refresh_token\"",
            ),
            (
                CONNECT.replace("access_type", "state"),
                "may not set `state`",
            ),
            (
                r#"token_url = "https://auth.crm.test/token", grant = "refresh_token", client = "crm_app""#.into(),
                "`client` is for account connect, which needs `authorize_url`",
            ),
        ] {
            let message = first_error(&with(&body), "");
            assert!(message.contains(phrase), "`{message}` should contain {phrase:?}");
        }
        let file = SourceFile::new(
            "policies/services/crm.toml",
            format!(
                "[service]\nname = \"crm\"\norigins = [\"https://api.crm.test\"]\n\
                 credential = {{ name = \"crm\", scope = \"tenant\" }}\ninject = {}\n",
                with(CONNECT)
            ),
        );
        let mut diags = Diagnostics::default();
        let _ = Service::parse(&file, std::path::Path::new("."), &mut diags);
        let diags = diags.into_sorted();
        assert!(
            diags[0].message.contains("needs scope = \"user\""),
            "{diags:?}"
        );
    }
}
