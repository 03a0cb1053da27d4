//! Tenants (`tenants/*.toml`): who in one tenant may invoke which tools, and which grants let
//! them call which routes of which service through which clients.

use std::fmt;

use http::Method;
use serde::Deserialize;
use toml::Spanned;

use super::load::Document;
use super::path::PathPattern;
use super::service::{ServiceName, ToolName};
use super::source::{Diagnostics, Location, SourceFile};
use crate::principal::{GroupId, Principal, TenantId, UserId};

/// Who a rule is for, within its tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// `*`: any member of the tenant.
    Anyone,
    /// `user:ID`.
    User(UserId),
    /// `group:ID`.
    Group(GroupId),
}

impl Who {
    /// Whether the principal is covered (the caller has already checked the tenant).
    pub fn covers(&self, principal: &Principal) -> bool {
        match self {
            Self::Anyone => true,
            Self::User(u) => principal.user == *u,
            Self::Group(g) => principal.in_group(g),
        }
    }

    /// Parses `*`, `user:ID` or `group:ID` for a rule in `tenant`'s file. `user:T/ID` and
    /// `group:T/ID` are accepted only when `T` is this tenant.
    fn parse(s: &str, tenant: &TenantId) -> Result<Self, String> {
        if s == "*" {
            return Ok(Self::Anyone);
        }
        let (kind, id) = s
            .split_once(':')
            .ok_or_else(|| format!("`{s}` must be `*`, `user:ID` or `group:ID`"))?;
        let id = match id.split_once('/') {
            Some((t, id)) if t == tenant.as_str() => id,
            Some((t, _)) => {
                return Err(format!(
                    "`{s}` names tenant `{t}`, but this file is tenant `{tenant}`'s; a tenant \
                     file may only grant to its own members"
                ));
            }
            None => id,
        };
        match kind {
            "user" => UserId::parse(id).map(Self::User).map_err(|e| e.to_string()),
            "group" => GroupId::parse(id)
                .map(Self::Group)
                .map_err(|e| e.to_string()),
            "tenant" if id != tenant.as_str() => Err(format!(
                "`{s}` names tenant `{id}`, but this file is tenant `{tenant}`'s; a tenant file \
                 may only grant to its own members"
            )),
            "tenant" => Ok(Self::Anyone),
            _ => Err(format!("`{s}` must be `*`, `user:ID` or `group:ID`")),
        }
    }
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Anyone => f.write_str("*"),
            Self::User(u) => write!(f, "user:{u}"),
            Self::Group(g) => write!(f, "group:{g}"),
        }
    }
}

/// Who sends a request into the egress pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Client {
    /// A tool invocation.
    Tool(ToolName),
    /// The forward proxy.
    Proxy,
}

impl Client {
    /// Parses `proxy` or `tool:NAME`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "proxy" => Ok(Self::Proxy),
            _ => match s.strip_prefix("tool:") {
                Some(name) => ToolName::parse(name).map(Self::Tool),
                None => Err(format!("client `{s}` must be `proxy` or `tool:NAME`")),
            },
        }
    }
}

impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tool(t) => write!(f, "tool:{t}"),
            Self::Proxy => f.write_str("proxy"),
        }
    }
}

/// Which clients a grant admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientPattern {
    /// `*`: any client.
    Any,
    /// Exactly this client.
    Is(Client),
}

impl ClientPattern {
    /// Whether `client` is admitted.
    pub fn admits(&self, client: &Client) -> bool {
        match self {
            Self::Any => true,
            Self::Is(c) => c == client,
        }
    }
}

impl fmt::Display for ClientPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Is(c) => c.fmt(f),
        }
    }
}

/// One allowed route: an exact method and a path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The method, compared exactly.
    pub method: Method,
    /// The path pattern.
    pub path: PathPattern,
}

impl Route {
    /// Parses `METHOD /path/pattern`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (method, path) = s.split_once(' ').ok_or_else(|| {
            format!("route `{s}` must be `METHOD /path`, e.g. \"GET /repos/acme/**\"")
        })?;
        let valid_method = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase());
        if !valid_method {
            return Err(format!(
                "route `{s}`: method `{method}` must be an upper-case HTTP method such as GET"
            ));
        }
        let method = Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        let path =
            PathPattern::parse(path.trim_start()).map_err(|e| format!("route `{s}`: {e}"))?;
        Ok(Self { method, path })
    }

    /// Whether a request's method and normalised path are allowed.
    pub fn matches(&self, method: &Method, normalized_path: &str) -> bool {
        self.method == method && self.path.matches(normalized_path)
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

/// A grant: who may, through which clients, call which routes of which service.
#[derive(Debug, Clone)]
pub struct Grant {
    /// Unique within its tenant.
    pub id: String,
    /// Who it is for.
    pub who: Vec<Who>,
    /// Which clients it admits.
    pub clients: Vec<ClientPattern>,
    /// The service's name.
    pub service: ServiceName,
    /// The allowed routes.
    pub allow: Vec<Route>,
    /// Where `[[grant]]` is written.
    pub at: Location,
}

/// Tool access: who may invoke which tools.
#[derive(Debug, Clone)]
pub struct ToolAccess {
    /// Who it is for.
    pub who: Vec<Who>,
    /// The tools.
    pub tools: Vec<ToolName>,
    /// Where `[[tool_access]]` is written.
    pub at: Location,
}

/// One tenant's policy.
#[derive(Debug, Clone)]
pub struct Tenant {
    /// The tenant.
    pub name: TenantId,
    /// Tool access rules, in file order.
    pub tool_access: Vec<ToolAccess>,
    /// Grants, in file order.
    pub grants: Vec<Grant>,
    /// Where `[tenant]` is written.
    pub at: Location,
    /// Where each named tool is referenced, for the existence check.
    pub(crate) tool_refs: Vec<(ToolName, Location)>,
    /// Where each grant names its service, for the existence check.
    pub(crate) service_refs: Vec<Location>,
}

// === raw file shape ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    name: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToolAccess {
    who: Vec<Spanned<String>>,
    tools: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrant {
    id: Spanned<String>,
    who: Vec<Spanned<String>>,
    clients: Vec<Spanned<String>>,
    service: Spanned<String>,
    allow: Vec<Spanned<String>>,
}

impl Tenant {
    /// Parses one tenant file, recording every problem found in it.
    pub(crate) fn parse(file: &SourceFile, diags: &mut Diagnostics) -> Option<Self> {
        let doc = Document::parse(file, &["tenant", "tool_access", "grant"], diags)?;
        let Some(raw) = doc.get::<RawTenant>("tenant", diags) else {
            if !doc.has("tenant") {
                diags.error(
                    file.whole(),
                    "expected a `[tenant]` table with `name = \"...\"`",
                );
            }
            return None;
        };
        let at = |span| file.at(span);
        let name = match TenantId::parse(raw.name.get_ref()) {
            Ok(n) => n,
            Err(e) => {
                diags.error(at(raw.name.span()), e.to_string());
                return None;
            }
        };
        let stem = file.path.file_stem().map(|s| s.to_string_lossy());
        if stem.as_deref() != Some(name.as_str()) {
            diags.error(
                at(raw.name.span()),
                format!(
                    "this file declares tenant `{name}` but is named `{}`; name each tenant \
                     file after its tenant (`tenants/{name}.toml`)",
                    file.path.display()
                ),
            );
        }
        let mut ok = true;
        let who_list = |list: &[Spanned<String>], ok: &mut bool, diags: &mut Diagnostics| {
            let mut out = Vec::new();
            for w in list {
                match Who::parse(w.get_ref(), &name) {
                    Ok(w) => out.push(w),
                    Err(e) => {
                        diags.error(at(w.span()), e);
                        *ok = false;
                    }
                }
            }
            out
        };

        let mut tool_refs = Vec::new();
        let mut tool_access = Vec::new();
        for (entry_at, raw) in doc.items::<RawToolAccess>("tool_access", diags) {
            let who = who_list(&raw.who, &mut ok, diags);
            if raw.who.is_empty() {
                diags.error(
                    entry_at.clone(),
                    "`who` must name at least one user, group or `*`",
                );
                ok = false;
            }
            let mut tools = Vec::new();
            for t in &raw.tools {
                match ToolName::parse(t.get_ref()) {
                    Ok(name) => {
                        tool_refs.push((name.clone(), at(t.span())));
                        tools.push(name);
                    }
                    Err(e) => {
                        diags.error(at(t.span()), e);
                        ok = false;
                    }
                }
            }
            tool_access.push(ToolAccess {
                who,
                tools,
                at: entry_at,
            });
        }

        let mut grants: Vec<Grant> = Vec::new();
        let mut service_refs = Vec::new();
        for (entry_at, raw) in doc.items::<RawGrant>("grant", diags) {
            let id = raw.id.get_ref().clone();
            let id_ok = !id.is_empty()
                && id.len() <= 128
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
            if !id_ok {
                diags.error(
                    at(raw.id.span()),
                    format!("grant id `{id}` must be 1-128 of A-Z a-z 0-9 _ - ."),
                );
                ok = false;
            }
            if let Some(first) = grants.iter().find(|g| g.id == id) {
                diags.error(
                    at(raw.id.span()),
                    format!(
                        "duplicate grant id `{id}` in tenant `{name}` (first defined at {})",
                        first.at
                    ),
                );
                ok = false;
            }
            let who = who_list(&raw.who, &mut ok, diags);
            if raw.who.is_empty() {
                diags.error(
                    entry_at.clone(),
                    "`who` must name at least one user, group or `*`",
                );
                ok = false;
            }
            let mut clients = Vec::new();
            for c in &raw.clients {
                let parsed = if c.get_ref() == "*" {
                    Ok(ClientPattern::Any)
                } else {
                    Client::parse(c.get_ref()).map(ClientPattern::Is)
                };
                match parsed {
                    Ok(p) => {
                        if let ClientPattern::Is(Client::Tool(t)) = &p {
                            tool_refs.push((t.clone(), at(c.span())));
                        }
                        clients.push(p);
                    }
                    Err(e) => {
                        diags.error(at(c.span()), format!("{e}, or `*`"));
                        ok = false;
                    }
                }
            }
            if raw.clients.is_empty() {
                diags.error(
                    entry_at.clone(),
                    "`clients` must name at least one of `proxy`, `tool:NAME` or `*`",
                );
                ok = false;
            }
            let mut allow = Vec::new();
            for r in &raw.allow {
                match Route::parse(r.get_ref()) {
                    Ok(route) => allow.push(route),
                    Err(e) => {
                        diags.error(at(r.span()), e);
                        ok = false;
                    }
                }
            }
            if raw.allow.is_empty() {
                diags.error(entry_at.clone(), "`allow` must list at least one route");
                ok = false;
            }
            let service = match ServiceName::parse(raw.service.get_ref()) {
                Ok(s) => s,
                Err(e) => {
                    diags.error(at(raw.service.span()), e);
                    ok = false;
                    continue;
                }
            };
            service_refs.push(at(raw.service.span()));
            grants.push(Grant {
                id,
                who,
                clients,
                service,
                allow,
                at: entry_at,
            });
        }
        if !ok {
            return None;
        }
        Some(Self {
            name,
            tool_access,
            grants,
            at: doc.key_at("tenant"),
            tool_refs,
            service_refs,
        })
    }
}
