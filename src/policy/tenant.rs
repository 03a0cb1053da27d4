//! Tenants (`tenants/*.toml`): who in one tenant may invoke which tools, and which grants let
//! them call which routes of which service through which clients.

use std::fmt;
use std::time::Duration;

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

/// A request rate written `N/s`, `N/min` or `N/h` (a grant's `rate`): at most `count`
/// requests per `period`, in bursts of up to `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    count: u32,
    unit: RateUnit,
}

/// The period a [`Rate`] is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RateUnit {
    Second,
    Minute,
    Hour,
}

impl Rate {
    /// The largest `N`: beyond it, the spacing of requests would fall below a microsecond.
    pub const MAX_COUNT: u32 = 1_000_000;

    /// Parses `N/s`, `N/min` or `N/h` with `1 <= N <= 1000000`, e.g. `"60/min"`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` must be N/s, N/min or N/h, e.g. \"60/min\"");
        let (count, unit) = s.split_once('/').ok_or_else(bad)?;
        let unit = match unit {
            "s" => RateUnit::Second,
            "min" => RateUnit::Minute,
            "h" => RateUnit::Hour,
            _ => return Err(bad()),
        };
        if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        match count.parse::<u32>() {
            Ok(0) => Err(format!("`{s}`: N must be at least 1")),
            Ok(count) if count <= Self::MAX_COUNT => Ok(Self { count, unit }),
            _ => Err(format!("`{s}`: N must be at most {}", Self::MAX_COUNT)),
        }
    }

    /// How many requests a period admits (also the largest burst).
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The period.
    pub fn period(&self) -> Duration {
        Duration::from_secs(match self.unit {
            RateUnit::Second => 1,
            RateUnit::Minute => 60,
            RateUnit::Hour => 3600,
        })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.unit {
            RateUnit::Second => "s",
            RateUnit::Minute => "min",
            RateUnit::Hour => "h",
        };
        write!(f, "{}/{unit}", self.count)
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
    /// `rate`: requests per period for each user of the grant, if limited.
    pub rate: Option<Rate>,
    /// `daily`: requests per UTC day for each user of the grant, if limited.
    pub daily: Option<u32>,
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
    rate: Option<Spanned<String>>,
    daily: Option<Spanned<i64>>,
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
            let rate = match raw.rate.as_ref().map(|r| (r, Rate::parse(r.get_ref()))) {
                None => None,
                Some((_, Ok(rate))) => Some(rate),
                Some((r, Err(e))) => {
                    diags.error(at(r.span()), format!("`rate` {e}"));
                    ok = false;
                    None
                }
            };
            let daily = match &raw.daily {
                None => None,
                Some(d) => match u32::try_from(*d.get_ref()) {
                    Ok(n) if n >= 1 => Some(n),
                    _ => {
                        diags.error(
                            at(d.span()),
                            format!(
                                "`daily` {} must be a number of requests per UTC day, from 1 \
                                 to {}",
                                d.get_ref(),
                                u32::MAX
                            ),
                        );
                        ok = false;
                        None
                    }
                },
            };
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
                rate,
                daily,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        let r = Rate::parse("60/min").unwrap();
        assert_eq!((r.count(), r.period()), (60, Duration::from_secs(60)));
        assert_eq!(r.to_string(), "60/min");
        assert_eq!(Rate::parse("1/s").unwrap().period(), Duration::from_secs(1));
        assert_eq!(
            Rate::parse("5/h").unwrap().period(),
            Duration::from_secs(3600)
        );
        assert_eq!(Rate::parse("1000000/s").unwrap().count(), 1_000_000);
        for bad in [
            "60 per minute",
            "60/m",
            "60/sec",
            "60/ min",
            " 60/min",
            "60/Min",
            "/min",
            "+5/min",
            "-1/s",
            "1.5/s",
            "60",
            "",
        ] {
            let e = Rate::parse(bad).unwrap_err();
            assert!(e.contains("must be N/s, N/min or N/h"), "{bad:?}: {e}");
        }
        assert!(Rate::parse("0/s").unwrap_err().contains("at least 1"));
        assert!(
            Rate::parse("1000001/s")
                .unwrap_err()
                .contains("at most 1000000")
        );
        assert!(
            Rate::parse("99999999999/s")
                .unwrap_err()
                .contains("at most")
        );
    }

    fn parse(text: &str) -> Result<Tenant, Vec<String>> {
        let file = SourceFile::new("tenants/acme.toml", text);
        let mut diags = Diagnostics::default();
        let tenant = Tenant::parse(&file, &mut diags);
        let all: Vec<String> = diags
            .into_sorted()
            .iter()
            .map(ToString::to_string)
            .collect();
        match tenant {
            Some(t) if all.is_empty() => Ok(t),
            _ => Err(all),
        }
    }

    const GRANT: &str = "[tenant]\nname = \"acme\"\n\n[[grant]]\nid = \"g\"\nwho = [\"*\"]\n\
                         clients = [\"proxy\"]\nservice = \"github\"\nallow = [\"GET /**\"]\n";

    #[test]
    fn grant_limits_are_optional_and_parsed() {
        let t = parse(GRANT).unwrap();
        assert_eq!((t.grants[0].rate, t.grants[0].daily), (None, None));

        let t = parse(&format!("{GRANT}rate = \"3/min\"\ndaily = 1000\n")).unwrap();
        assert_eq!(t.grants[0].rate, Some(Rate::parse("3/min").unwrap()));
        assert_eq!(t.grants[0].daily, Some(1000));
    }

    #[test]
    fn bad_grant_limits_name_file_line_and_column() {
        // Line 10 is the first line after GRANT.
        let errors = parse(&format!("{GRANT}rate = \"60 per minute\"\n")).unwrap_err();
        assert_eq!(
            errors,
            [
                "tenants/acme.toml:10:8: error: `rate` `60 per minute` must be N/s, N/min or N/h, \
              e.g. \"60/min\""
            ]
        );
        let errors = parse(&format!("{GRANT}rate = \"0/h\"\ndaily = 0\n")).unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("tenants/acme.toml:10:8: error: `rate` `0/h`: N must be"));
        assert!(
            errors[1].starts_with("tenants/acme.toml:11:9: error: `daily` 0 must be a number"),
            "{errors:?}"
        );
        let errors = parse(&format!("{GRANT}daily = -3\n")).unwrap_err();
        assert!(errors[0].starts_with("tenants/acme.toml:10:9: error: `daily` -3"));
        let errors = parse(&format!("{GRANT}daily = 4294967296\n")).unwrap_err();
        assert!(errors[0].contains("from 1 to 4294967295"), "{errors:?}");
        // The wrong type is the TOML layer's error, still pointing at the value.
        let errors = parse(&format!("{GRANT}rate = 60\n")).unwrap_err();
        assert!(
            errors[0].starts_with("tenants/acme.toml:10:8: error: "),
            "{errors:?}"
        );
        let errors = parse(&format!("{GRANT}daily = \"1000\"\n")).unwrap_err();
        assert!(
            errors[0].starts_with("tenants/acme.toml:10:9: error: "),
            "{errors:?}"
        );
    }
}
