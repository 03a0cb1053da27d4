//! Server settings from `policies/behalf.toml`. Every key is optional; nothing insecure is a
//! default (the development conveniences exist only with `dev = true`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::load::Document;
use super::source::{Diagnostics, SourceFile};
use super::units;
use crate::principal::TenantId;

/// Validated server settings, with relative paths resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Development mode: the dev issuer, a generated master key and `--connect-to`.
    pub dev: bool,
    /// Where state files live (created 0700).
    pub state_dir: PathBuf,
    /// Where tool directories live.
    pub tools_dir: PathBuf,
    /// Listen addresses.
    pub listen: Listen,
    /// Configured identity issuers: the only ones trusted.
    pub issuers: Vec<Issuer>,
    /// The secret backend.
    pub secrets: Secrets,
    /// Extra PEM roots trusted for every upstream.
    pub upstream_roots: Vec<PathBuf>,
    /// Audit log settings.
    pub audit: Audit,
    /// Resource limits.
    pub limits: Limits,
}

/// Where the front doors listen.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    /// The sidecar API.
    pub api: SocketAddr,
    /// The forward proxy.
    pub proxy: SocketAddr,
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            api: SocketAddr::from(([127, 0, 0, 1], 7777)),
            proxy: SocketAddr::from(([127, 0, 0, 1], 7778)),
        }
    }
}

/// A JWT signature algorithm an issuer may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum Algorithm {
    /// Ed25519.
    EdDSA,
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// RSA PKCS#1 v1.5 with SHA-256.
    RS256,
    /// HMAC-SHA256 with a shared key file.
    HS256,
}

/// Where an issuer's verification keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A JWKS document on disk.
    JwksFile(PathBuf),
    /// A JWKS document fetched over HTTPS, cached and refreshed on an unknown `kid`.
    JwksUrl(String),
    /// A shared HS256 key on disk.
    KeyFile(PathBuf),
}

/// Which tenants an issuer may speak for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssuerTenants {
    /// Every token from this issuer is for this tenant; a tenant claim must agree if present.
    Fixed(TenantId),
    /// The tenant claim must name one of these.
    Listed(Vec<TenantId>),
}

/// A trusted identity issuer.
#[derive(Debug, Clone, PartialEq)]
pub struct Issuer {
    /// Name used in logs.
    pub name: String,
    /// Pinned algorithms; a token naming another is rejected.
    pub algorithms: Vec<Algorithm>,
    /// Verification keys.
    pub keys: KeySource,
    /// Required `iss`.
    pub issuer: String,
    /// Required `aud`.
    pub audience: String,
    /// Tenants this issuer may speak for.
    pub tenants: IssuerTenants,
    /// Claim holding the tenant.
    pub tenant_claim: String,
    /// Claim holding the groups.
    pub groups_claim: String,
    /// Tokens living longer than this are rejected.
    pub max_ttl: Duration,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    pub clock_skew: Duration,
    /// The claim that marks a token as an admin of its own tenant (the admin API); `None`:
    /// this issuer's tokens are never admins.
    pub admin: Option<AdminClaim>,
}

/// `admin = { claim = "...", value = "..." }` on an issuer: a verified token from it is an
/// admin of the tenant it was verified for when `claim` equals `value`, or is an array
/// holding it.
///
/// # Security
///
/// Only ever widens what a token of *this* issuer may do, within the tenant the issuer already
/// speaks for; a claim of any other shape makes no admin (and rejects nothing).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminClaim {
    /// The claim's name, e.g. `behalf_roles`.
    pub claim: String,
    /// The value that marks an admin, e.g. `secrets-admin`.
    pub value: String,
}

/// The secret backend kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// One encrypted file in `state_dir`.
    File,
    /// `BEHALF_SECRET__...` environment variables (read-only).
    Env,
    /// A mounted folder `<root>/<tenant>/[<user>/]<name>` (read-only).
    Dir,
}

/// Secret store settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Secrets {
    /// Which backend.
    pub backend: Backend,
    /// Env var holding the master key (file backend).
    pub master_key_env: String,
    /// File holding the master key (file backend), instead of the env var.
    pub master_key_file: Option<PathBuf>,
    /// The folder read by the `dir` backend.
    pub root: Option<PathBuf>,
}

/// Audit log settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Audit {
    /// Rotate the log file past this size.
    pub rotate_bytes: u64,
}

/// Resource limits.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Wall-clock limit of one tool invocation.
    #[serde(deserialize_with = "units::duration")]
    pub tool_timeout: Duration,
    /// Linear memory limit of one tool instance.
    #[serde(deserialize_with = "units::size")]
    pub tool_memory: u64,
    /// Concurrent tool invocations per tenant.
    pub tool_concurrency_per_tenant: u32,
    /// Size quota of one private tool state directory (per tenant, user and tool).
    #[serde(deserialize_with = "units::size")]
    pub tool_state_quota: u64,
    /// Largest output (stdout) of one tool invocation.
    #[serde(deserialize_with = "units::size")]
    pub tool_output: u64,
    /// Most stderr kept (and logged) from one tool invocation; the rest is dropped.
    #[serde(deserialize_with = "units::size")]
    pub tool_log: u64,
    /// Largest request body forwarded.
    #[serde(deserialize_with = "units::size")]
    pub max_request_body: u64,
    /// Largest response body relayed.
    #[serde(deserialize_with = "units::size")]
    pub max_response_body: u64,
    /// Limit for one upstream exchange.
    #[serde(deserialize_with = "units::duration")]
    pub upstream_timeout: Duration,
    /// Concurrent client connections per listener; more wait in the accept queue.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            tool_timeout: Duration::from_secs(10),
            tool_memory: 64 << 20,
            tool_concurrency_per_tenant: 16,
            tool_state_quota: 10 << 20,
            tool_output: 1 << 20,
            tool_log: 64 << 10,
            max_request_body: 10 << 20,
            max_response_body: 64 << 20,
            upstream_timeout: Duration::from_secs(30),
            max_connections: 1024,
        }
    }
}

// === raw file shapes ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIssuer {
    name: Spanned<String>,
    algorithms: Spanned<Vec<Algorithm>>,
    jwks_file: Option<String>,
    jwks_url: Option<Spanned<String>>,
    key_file: Option<String>,
    issuer: String,
    audience: String,
    tenants: Option<Vec<Spanned<String>>>,
    tenant: Option<Spanned<String>>,
    #[serde(default = "default_tenant_claim")]
    tenant_claim: String,
    #[serde(default = "default_groups_claim")]
    groups_claim: String,
    #[serde(default = "default_max_ttl", deserialize_with = "units::duration")]
    max_ttl: Duration,
    #[serde(default = "default_clock_skew", deserialize_with = "units::duration")]
    clock_skew: Duration,
    admin: Option<Spanned<AdminClaim>>,
}

fn default_tenant_claim() -> String {
    "tenant".into()
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_max_ttl() -> Duration {
    Duration::from_secs(3600)
}
fn default_clock_skew() -> Duration {
    Duration::from_secs(60)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecrets {
    #[serde(default = "default_backend")]
    backend: Backend,
    #[serde(default = "default_master_key_env")]
    master_key_env: String,
    master_key_file: Option<String>,
    root: Option<String>,
}

fn default_backend() -> Backend {
    Backend::File
}
fn default_master_key_env() -> String {
    "BEHALF_MASTER_KEY".into()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTls {
    #[serde(default)]
    upstream_roots: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    #[serde(default = "default_rotate", deserialize_with = "units::size")]
    rotate_bytes: u64,
}

fn default_rotate() -> u64 {
    64 << 20
}

/// The top-level keys of `behalf.toml`.
const KEYS: &[&str] = &[
    "dev",
    "state_dir",
    "tools_dir",
    "listen",
    "identity",
    "secrets",
    "tls",
    "audit",
    "limits",
];

impl Settings {
    /// Settings for a policy set without `behalf.toml`: all defaults, relative to `base`.
    pub fn defaults(base: &Path) -> Self {
        Self {
            dev: false,
            state_dir: base.join("state"),
            tools_dir: base.join("tools"),
            listen: Listen::default(),
            issuers: Vec::new(),
            secrets: Secrets {
                backend: Backend::File,
                master_key_env: default_master_key_env(),
                master_key_file: None,
                root: None,
            },
            upstream_roots: Vec::new(),
            audit: Audit {
                rotate_bytes: default_rotate(),
            },
            limits: Limits::default(),
        }
    }

    /// Parses `behalf.toml`, recording every problem in `diags`. Relative paths are resolved
    /// against `base` (the policies dir's parent).
    pub(crate) fn parse(file: &SourceFile, base: &Path, diags: &mut Diagnostics) -> Self {
        let mut settings = Self::defaults(base);
        let Some(doc) = Document::parse(file, KEYS, diags) else {
            return settings;
        };
        let resolve = |p: &str| base.join(p);
        if let Some(dev) = doc.get::<bool>("dev", diags) {
            settings.dev = dev;
        }
        if let Some(p) = doc.get::<String>("state_dir", diags) {
            settings.state_dir = resolve(&p);
        }
        if let Some(p) = doc.get::<String>("tools_dir", diags) {
            settings.tools_dir = resolve(&p);
        }
        if let Some(listen) = doc.get::<Listen>("listen", diags) {
            settings.listen = listen;
        }
        if let Some(limits) = doc.get::<Limits>("limits", diags) {
            settings.limits = limits;
        }
        if let Some(audit) = doc.get::<RawAudit>("audit", diags) {
            settings.audit.rotate_bytes = audit.rotate_bytes;
        }
        if let Some(tls) = doc.get::<RawTls>("tls", diags) {
            settings.upstream_roots = tls.upstream_roots.iter().map(|p| resolve(p)).collect();
        }
        if let Some(s) = doc.get::<RawSecrets>("secrets", diags) {
            settings.secrets = Secrets {
                backend: s.backend,
                master_key_env: s.master_key_env,
                master_key_file: s.master_key_file.as_deref().map(resolve),
                root: s.root.as_deref().map(resolve),
            };
            if s.backend == Backend::Dir && s.root.is_none() {
                diags.error(
                    doc.key_at("secrets"),
                    "backend \"dir\" needs `root`, the folder holding <tenant>/[<user>/]<name> files",
                );
            }
        }
        if let Some(identity) = doc.table("identity", &["issuer"], diags) {
            for (at, raw) in identity.items::<RawIssuer>("issuer", diags) {
                let Some(issuer) = Issuer::validate(raw, file, base, diags) else {
                    continue;
                };
                if settings.issuers.iter().any(|i| i.name == issuer.name) {
                    diags.error(at, format!("duplicate issuer name `{}`", issuer.name));
                } else if settings.issuers.iter().any(|i| i.issuer == issuer.issuer)
                    || issuer.issuer == crate::identity::dev::ISSUER
                {
                    // The token's `iss` selects the issuer, so it must name exactly one.
                    diags.error(
                        at,
                        format!(
                            "issuer `{}`: `issuer = \"{}\"` is already used by another issuer \
                             (or reserved for development tokens); each `iss` must be unique",
                            issuer.name, issuer.issuer
                        ),
                    );
                } else {
                    settings.issuers.push(issuer);
                }
            }
        }
        settings
    }
}

impl Issuer {
    fn validate(
        raw: RawIssuer,
        file: &SourceFile,
        base: &Path,
        diags: &mut Diagnostics,
    ) -> Option<Self> {
        let mut ok = true;
        let mut fail = |diags: &mut Diagnostics, span, msg: String| {
            diags.error(file.at(span), msg);
            ok = false;
        };
        let name = raw.name.get_ref().clone();
        if name == "dev" {
            fail(
                diags,
                raw.name.span(),
                "issuer name `dev` is reserved for the development issuer".into(),
            );
        }
        let algorithms = raw.algorithms.get_ref().clone();
        if algorithms.is_empty() {
            fail(
                diags,
                raw.algorithms.span(),
                "`algorithms` must name at least one of EdDSA, ES256, RS256, HS256".into(),
            );
        }
        let hs = algorithms.contains(&Algorithm::HS256);
        let sources = [
            raw.jwks_file.is_some(),
            raw.jwks_url.is_some(),
            raw.key_file.is_some(),
        ];
        let keys = match (raw.jwks_file, raw.jwks_url, raw.key_file) {
            (Some(f), None, None) => Some(KeySource::JwksFile(base.join(f))),
            (None, Some(u), None) => {
                if !u.get_ref().starts_with("https://") {
                    fail(
                        diags,
                        u.span(),
                        format!(
                            "`jwks_url` must be an https:// URL, found `{}`",
                            u.get_ref()
                        ),
                    );
                }
                Some(KeySource::JwksUrl(u.into_inner()))
            }
            (None, None, Some(k)) => Some(KeySource::KeyFile(base.join(k))),
            _ => {
                let n = sources.iter().filter(|s| **s).count();
                fail(
                    diags,
                    raw.name.span(),
                    format!(
                        "issuer `{name}` sets {n} key sources; set exactly one of `jwks_file`, \
                         `jwks_url` or `key_file`"
                    ),
                );
                None
            }
        };
        match &keys {
            Some(KeySource::KeyFile(_)) if algorithms != [Algorithm::HS256] => fail(
                diags,
                raw.algorithms.span(),
                "`key_file` is an HS256 shared key; set `algorithms = [\"HS256\"]`".into(),
            ),
            Some(KeySource::JwksFile(_) | KeySource::JwksUrl(_)) if hs => fail(
                diags,
                raw.algorithms.span(),
                "HS256 is only allowed with a `key_file` (a public key must never be used as an \
                 HMAC secret)"
                    .into(),
            ),
            _ => {}
        }
        let tenants = match (raw.tenants, raw.tenant) {
            (Some(list), None) => {
                let mut ids = Vec::new();
                for t in list {
                    match TenantId::parse(t.get_ref()) {
                        Ok(id) => ids.push(id),
                        Err(e) => fail(diags, t.span(), e.to_string()),
                    }
                }
                if ids.is_empty() {
                    fail(
                        diags,
                        raw.name.span(),
                        format!("issuer `{name}` lists no tenants; it could speak for no one"),
                    );
                }
                Some(IssuerTenants::Listed(ids))
            }
            (None, Some(t)) => match TenantId::parse(t.get_ref()) {
                Ok(id) => Some(IssuerTenants::Fixed(id)),
                Err(e) => {
                    fail(diags, t.span(), e.to_string());
                    None
                }
            },
            _ => {
                fail(
                    diags,
                    raw.name.span(),
                    format!(
                        "issuer `{name}` must set exactly one of `tenants = [...]` (the tenants \
                         it may speak for) or `tenant = \"...\"` (a fixed tenant)"
                    ),
                );
                None
            }
        };
        let admin = raw.admin.map(|a| {
            let span = a.span();
            let admin = a.into_inner();
            if admin.claim.is_empty() || admin.value.is_empty() {
                fail(
                    diags,
                    span,
                    "`admin` needs a non-empty `claim` and `value`, e.g. \
                     `admin = { claim = \"behalf_roles\", value = \"secrets-admin\" }`"
                        .into(),
                );
            }
            admin
        });
        if !ok {
            return None;
        }
        Some(Self {
            name,
            algorithms,
            keys: keys?,
            issuer: raw.issuer,
            audience: raw.audience,
            tenants: tenants?,
            tenant_claim: raw.tenant_claim,
            groups_claim: raw.groups_claim,
            max_ttl: raw.max_ttl,
            clock_skew: raw.clock_skew,
            admin,
        })
    }
}
