//! `behalf policy diff`: what a change to the policy files changes, for the person reviewing
//! it. Pure: two loaded [`PolicySet`]s in, a [`Diff`] out, no I/O.
//!
//! - Grants are compared per tenant and by id. A grant only in NEW is added, one only in OLD is
//!   removed (so is one whose `service` changed: it now grants something else). A grant in both
//!   is compared entry by entry: `who`, `clients`, `allow` routes, and its `rate` and `daily`
//!   limits.
//! - Tool access is compared as the set of (who, tool) pairs the `[[tool_access]]` rules give.
//! - Services are compared by name: origins, credential, inject form, `tls_roots` and the
//!   `allow_*` and `scrub_responses` flags.
//! - `behalf.toml` is compared where it decides who is who and whom behalf trusts: `dev`, the
//!   identity issuers and `upstream_roots`.
//!
//! Each [`Change`] has a [`Class`]: a gain or a loss of access, a security-relevant change (a
//! credential going somewhere new, a guard turned off, a new issuer) or another change. A gain
//! or loss that other grants already give (a grant renamed, a route moved between grants,
//! `GET /a/x` added where `GET /a/*` was granted) names those grants and is classed as
//! [`Class::Other`]: the files changed, who may do what did not. That check only trusts what
//! it can prove without knowing group membership: the same entry, `*`, and route patterns that
//! cover the route in question, in grants with the same limits.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use serde::Serialize;

use super::PolicySet;
use super::service::{CredentialRef, CredentialScope, Inject, Service};
use super::settings::{Issuer, IssuerTenants, KeySource};
use super::tenant::{ClientPattern, Grant, Route, Tenant, Who};
use crate::principal::TenantId;

#[cfg(test)]
mod tests;

/// Everything that differs between two policy sets, grouped for reading.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Diff {
    /// Tenants whose grants or tool access differ, by name.
    pub tenants: Vec<TenantDiff>,
    /// Services that differ, by name.
    pub services: Vec<ServiceDiff>,
    /// Changes to `behalf.toml` that decide who is who and whom behalf trusts.
    pub settings: Vec<Change>,
}

/// What one tenant's policy gains and loses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantDiff {
    /// The tenant.
    pub tenant: String,
    /// Whether its file is new, gone, or in both sets.
    pub status: Status,
    /// Grants that differ, by id.
    pub grants: Vec<GrantDiff>,
    /// (who, tool) pairs gained, then lost.
    pub tool_access: Vec<Change>,
}

/// One grant that differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrantDiff {
    /// Its id.
    pub id: String,
    /// The service it is for.
    pub service: String,
    /// Added, removed, or changed in place.
    pub status: Status,
    /// Its `who`, as in NEW (as in OLD when removed).
    pub who: Vec<String>,
    /// Its `clients`, as in NEW (as in OLD when removed).
    pub clients: Vec<String>,
    /// Added or removed: the one change, the whole grant. Changed: one per entry.
    pub changes: Vec<Change>,
}

/// One service that differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceDiff {
    /// The service.
    pub service: String,
    /// Whether it is new, gone, or in both sets.
    pub status: Status,
    /// What differs.
    pub changes: Vec<Change>,
}

/// Whether something is new in NEW, gone from it, or in both and different.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Only in NEW.
    Added,
    /// Only in OLD.
    Removed,
    /// In both, different.
    Changed,
}

/// What a change means for access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// Someone may do something they could not.
    Gain,
    /// Someone may no longer do something they could.
    Loss,
    /// A credential goes somewhere new, a guard is off, or a new party is trusted.
    Security,
    /// Anything else, including gains and losses that other rules make no difference.
    Other,
}

/// One difference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// What it means for access.
    pub class: Class,
    /// Whether the thing was added, removed or changed.
    pub status: Status,
    /// The thing.
    pub what: What,
    /// For a gain or loss: the grants (for tool access, the `*` rule) on the other side that
    /// already give the same access. Empty when access really changes.
    pub unchanged_by: Vec<String>,
}

/// What a [`Change`] is about. Values are written as in the policy files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum What {
    /// A whole grant.
    Grant {
        /// Its id.
        id: String,
        /// Its service.
        service: String,
        /// Its `who`.
        who: Vec<String>,
        /// Its `clients`.
        clients: Vec<String>,
        /// Its routes.
        allow: Vec<String>,
        /// Its limits, e.g. `rate 60/min`.
        limits: Vec<String>,
    },
    /// A `who` entry of a grant.
    Who {
        /// The entry.
        who: String,
    },
    /// A `clients` entry of a grant.
    Client {
        /// The entry.
        client: String,
    },
    /// An `allow` route of a grant.
    Route {
        /// The route, e.g. `GET /repos/acme/**`.
        route: String,
    },
    /// A grant's limit (`rate` or `daily`); `None` is unlimited.
    Limit {
        /// `rate` or `daily`.
        limit: String,
        /// Before.
        old: Option<String>,
        /// After.
        new: Option<String>,
    },
    /// One (who, tool) pair of tool access.
    ToolAccess {
        /// Who.
        who: String,
        /// The tool.
        tool: String,
    },
    /// A whole service.
    Service {
        /// Its origins.
        origins: Vec<String>,
        /// The credential it injects and how, if any.
        injects: Option<String>,
    },
    /// One origin of a service.
    Origin {
        /// The origin.
        origin: String,
        /// The credential the service injects, when a new origin will receive it.
        receives: Option<String>,
    },
    /// The credential a service injects (`scope:name`); `None` is none.
    Credential {
        /// Before.
        old: Option<String>,
        /// After.
        new: Option<String>,
        /// How the new credential is injected.
        inject: Option<String>,
    },
    /// How a service injects its credential.
    Inject {
        /// Before.
        old: String,
        /// After.
        new: String,
        /// Origins outside the service's own that now receive the credential (an OAuth2
        /// token or revocation endpoint).
        now_sent_to: Vec<String>,
    },
    /// A service flag: `allow_private_ips`, `allow_plaintext`, `allow_wildcard_origins` or
    /// `scrub_responses`.
    Flag {
        /// The key.
        flag: String,
        /// Its new value.
        on: bool,
    },
    /// An extra PEM root of a service (`tls_roots`), relative to the policies dir's parent.
    TlsRoot {
        /// The file.
        root: String,
    },
    /// Development mode (`dev`).
    Dev {
        /// Its new value.
        on: bool,
    },
    /// A whole identity issuer.
    Issuer {
        /// Its name.
        issuer: String,
        /// The tenants it may speak for.
        tenants: Vec<String>,
    },
    /// A tenant an identity issuer may speak for.
    IssuerTenant {
        /// The issuer's name.
        issuer: String,
        /// The tenant.
        tenant: String,
    },
    /// Another setting of an identity issuer.
    IssuerSetting {
        /// The issuer's name.
        issuer: String,
        /// The key, e.g. `keys` or `groups_claim`.
        setting: String,
        /// Before.
        old: String,
        /// After.
        new: String,
    },
    /// A PEM root trusted for every upstream (`upstream_roots`).
    UpstreamRoot {
        /// The file, relative to the policies dir's parent.
        root: String,
    },
}

/// How many changes of each class a [`Diff`] holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// [`Class::Gain`].
    pub gains: usize,
    /// [`Class::Loss`].
    pub losses: usize,
    /// [`Class::Security`].
    pub security: usize,
    /// [`Class::Other`].
    pub other: usize,
}

/// Compares two policy sets: what NEW gives or takes away relative to OLD. Pure.
pub fn diff(old: &PolicySet, new: &PolicySet) -> Diff {
    Diff {
        tenants: tenants(old, new),
        services: services(old, new),
        settings: settings(old, new),
    }
}

// === impl Diff ===

impl Diff {
    /// Whether the two sets give the same access with the same settings.
    pub fn is_empty(&self) -> bool {
        self.changes().next().is_none()
    }

    /// Every change, in report order.
    pub fn changes(&self) -> impl Iterator<Item = &Change> {
        let tenants = self.tenants.iter().flat_map(|t| {
            t.grants
                .iter()
                .flat_map(|g| &g.changes)
                .chain(&t.tool_access)
        });
        let services = self.services.iter().flat_map(|s| &s.changes);
        tenants.chain(services).chain(&self.settings)
    }

    /// How many changes of each class there are.
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for c in self.changes() {
            match c.class {
                Class::Gain => s.gains += 1,
                Class::Loss => s.losses += 1,
                Class::Security => s.security += 1,
                Class::Other => s.other += 1,
            }
        }
        s
    }
}

/// The report: a section per tenant, service and `settings`, a line per change marked by
/// [`Change::marker`], then the [`Summary`]; or `no differences`.
impl fmt::Display for Diff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return writeln!(f, "no differences");
        }
        for t in &self.tenants {
            writeln!(f, "tenant {}{}", t.tenant, section_status(t.status))?;
            for g in &t.grants {
                if g.status == Status::Changed {
                    writeln!(
                        f,
                        "  ~ grant {}: {} via {} → {}",
                        g.id,
                        g.who.join(", "),
                        g.clients.join(", "),
                        g.service
                    )?;
                    for c in &g.changes {
                        writeln!(f, "      {} {c}", c.marker())?;
                    }
                } else {
                    for c in &g.changes {
                        writeln!(f, "  {} {c}", c.marker())?;
                    }
                }
            }
            for c in &t.tool_access {
                writeln!(f, "  {} {c}", c.marker())?;
            }
        }
        for s in &self.services {
            writeln!(f, "service {}{}", s.service, section_status(s.status))?;
            for c in &s.changes {
                writeln!(f, "  {} {c}", c.marker())?;
            }
        }
        if !self.settings.is_empty() {
            writeln!(f, "settings (behalf.toml)")?;
            for c in &self.settings {
                writeln!(f, "  {} {c}", c.marker())?;
            }
        }
        writeln!(f)?;
        writeln!(f, "{}", self.summary())
    }
}

fn section_status(status: Status) -> &'static str {
    match status {
        Status::Added => " (new)",
        Status::Removed => " (removed)",
        Status::Changed => "",
    }
}

/// `3 gains, 2 losses, 1 security-relevant change`, then `, N other changes` if any.
impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = |count: usize, one: &str, many: &str| {
            format!("{count} {}", if count == 1 { one } else { many })
        };
        write!(
            f,
            "{}, {}, {}",
            n(self.gains, "gain", "gains"),
            n(self.losses, "loss", "losses"),
            n(
                self.security,
                "security-relevant change",
                "security-relevant changes"
            )
        )?;
        if self.other > 0 {
            write!(f, ", {}", n(self.other, "other change", "other changes"))?;
        }
        Ok(())
    }
}

// === impl Change ===

impl Change {
    /// A gain (added) or loss (removed) of access, unless `unchanged_by` still gives it.
    fn access(status: Status, what: What, unchanged_by: Vec<String>) -> Self {
        let class = match status {
            _ if !unchanged_by.is_empty() => Class::Other,
            Status::Added => Class::Gain,
            Status::Removed => Class::Loss,
            Status::Changed => Class::Other,
        };
        Self {
            class,
            status,
            what,
            unchanged_by,
        }
    }

    fn new(class: Class, status: Status, what: What) -> Self {
        Self {
            class,
            status,
            what,
            unchanged_by: Vec::new(),
        }
    }

    /// `!` for a security-relevant change, else `+`, `-` or `~` for added, removed, changed.
    pub fn marker(&self) -> char {
        match (self.class, self.status) {
            (Class::Security, _) => '!',
            (_, Status::Added) => '+',
            (_, Status::Removed) => '-',
            (_, Status::Changed) => '~',
        }
    }
}

/// The change as one line of the report, without its marker.
impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let added = self.status == Status::Added;
        match &self.what {
            What::Grant {
                id,
                service,
                who,
                clients,
                allow,
                limits,
            } => {
                write!(
                    f,
                    "grant {id}: {} via {} → {service}  {}",
                    who.join(", "),
                    clients.join(", "),
                    allow.join(", ")
                )?;
                if !limits.is_empty() {
                    write!(f, "  ({})", limits.join(", "))?;
                }
            }
            What::Who { who } => write!(f, "who {who}")?,
            What::Client { client } => write!(f, "client {client}")?,
            What::Route { route } => write!(f, "route {route}")?,
            What::Limit { limit, old, new } => {
                let v = |v: &Option<String>| v.clone().unwrap_or_else(|| "unlimited".into());
                write!(f, "{limit} {} → {}", v(old), v(new))?;
            }
            What::ToolAccess { who, tool } => write!(
                f,
                "tool_access: {who} {} tool {tool}",
                if added { "gains" } else { "loses" }
            )?,
            What::Service { origins, injects } => {
                let injects = injects
                    .as_ref()
                    .map_or_else(|| "no credential".to_owned(), |i| format!("injects {i}"));
                match self.status {
                    Status::Removed => {
                        write!(f, "service removed (was {}; {injects})", origins.join(" "))?;
                    }
                    _ => write!(f, "service added: {}; {injects}", origins.join(" "))?,
                }
            }
            What::Origin { origin, receives } => match receives {
                Some(credential) if added => {
                    write!(f, "new origin {origin} receives {credential}")?;
                }
                _ => write!(f, "origin {origin}")?,
            },
            What::Credential { old, new, inject } => match (old, new) {
                (None, Some(new)) => {
                    write!(f, "starts injecting {new}")?;
                    if let Some(inject) = inject {
                        write!(f, " by {inject}")?;
                    }
                }
                (Some(old), None) => write!(f, "stops injecting {old}")?,
                (old, new) => {
                    let v = |v: &Option<String>| v.clone().unwrap_or_else(|| "none".into());
                    write!(f, "credential {} → {}", v(old), v(new))?;
                    if self.class == Class::Security {
                        f.write_str(" (one credential, shared by the whole tenant)")?;
                    }
                }
            },
            What::Inject {
                old,
                new,
                now_sent_to,
            } => {
                if old == new {
                    // A detail the one-line description leaves out (an HMAC message, an
                    // OAuth2 client_auth or connect setting).
                    write!(f, "inject {new}: settings changed")?;
                } else {
                    write!(f, "inject {old} → {new}")?;
                }
                if !now_sent_to.is_empty() {
                    write!(
                        f,
                        " (the credential is now sent to {})",
                        now_sent_to.join(", ")
                    )?;
                }
            }
            What::Flag { flag, on } => {
                let state = if *on { "on" } else { "off" };
                let why = match (flag.as_str(), on) {
                    ("allow_private_ips", true) => " (SSRF guard off)",
                    ("allow_private_ips", false) => " (SSRF guard on)",
                    ("allow_plaintext", true) => {
                        " (the credential may cross the network unencrypted)"
                    }
                    ("allow_wildcard_origins", true) => {
                        " (the credential goes to every host a `*.` origin matches)"
                    }
                    ("scrub_responses", false) => {
                        " (credentials echoed in responses are no longer scrubbed)"
                    }
                    _ => "",
                };
                if added {
                    write!(f, "{flag} = {on}{why}")?;
                } else {
                    write!(f, "{flag} turned {state}{why}")?;
                }
            }
            What::TlsRoot { root } if added => write!(f, "tls_roots: now trusts {root}")?,
            What::TlsRoot { root } => write!(f, "tls_roots: no longer trusts {root}")?,
            What::Dev { on: true } => f.write_str(
                "dev turned on (development mode: the dev identity issuer, a generated master \
                 key, --connect-to)",
            )?,
            What::Dev { on: false } => f.write_str("dev turned off")?,
            What::Issuer { issuer, tenants } if added => write!(
                f,
                "issuer {issuer} trusted, for tenant{} {}",
                if tenants.len() == 1 { "" } else { "s" },
                tenants.join(", ")
            )?,
            What::Issuer { issuer, .. } => write!(f, "issuer {issuer} no longer trusted")?,
            What::IssuerTenant { issuer, tenant } if added => {
                write!(f, "issuer {issuer} may now speak for tenant {tenant}")?;
            }
            What::IssuerTenant { issuer, tenant } => {
                write!(f, "issuer {issuer} no longer speaks for tenant {tenant}")?;
            }
            What::IssuerSetting {
                issuer,
                setting,
                old,
                new,
            } => write!(f, "issuer {issuer}: {setting} {old} → {new}")?,
            What::UpstreamRoot { root } if added => {
                write!(f, "upstream_roots: every upstream now trusts {root}")?;
            }
            What::UpstreamRoot { root } => write!(f, "upstream_roots: no longer trusts {root}")?,
        }
        if !self.unchanged_by.is_empty() {
            let by = self.unchanged_by.join(", ");
            match (&self.what, added) {
                (What::ToolAccess { .. }, true) => {
                    write!(f, "   (access unchanged: {by} already had it)")?;
                }
                (What::ToolAccess { .. }, false) => {
                    write!(f, "   (access unchanged: {by} still has it)")?;
                }
                (_, true) => write!(f, "   (access unchanged: already granted by {by})")?,
                (_, false) => write!(f, "   (access unchanged: still granted by {by})")?,
            }
        }
        Ok(())
    }
}

/// Serialised as its [`What`] fields beside `class`, `status`, `unchanged_by` and `text` (the
/// report line without its marker).
impl Serialize for Change {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Json<'a> {
            class: Class,
            status: Status,
            #[serde(flatten)]
            what: &'a What,
            #[serde(skip_serializing_if = "<[String]>::is_empty")]
            unchanged_by: &'a [String],
            text: String,
        }
        Json {
            class: self.class,
            status: self.status,
            what: &self.what,
            unchanged_by: &self.unchanged_by,
            text: self.to_string(),
        }
        .serialize(serializer)
    }
}

// === tenants ===

fn tenants(old: &PolicySet, new: &PolicySet) -> Vec<TenantDiff> {
    let names: BTreeSet<&TenantId> = old
        .tenants()
        .into_iter()
        .chain(new.tenants())
        .map(|t| &t.name)
        .collect();
    let mut out = Vec::new();
    for name in names {
        let (o, n) = (old.tenant(name), new.tenant(name));
        let status = match (o, n) {
            (Some(_), Some(_)) => Status::Changed,
            (None, _) => Status::Added,
            (_, None) => Status::Removed,
        };
        let grants = grants(grants_of(o), grants_of(n));
        let tool_access = tool_access(o, n);
        if !grants.is_empty() || !tool_access.is_empty() {
            out.push(TenantDiff {
                tenant: name.to_string(),
                status,
                grants,
                tool_access,
            });
        }
    }
    out
}

fn grants_of(t: Option<&Tenant>) -> &[Grant] {
    t.map_or(&[], |t| t.grants.as_slice())
}

/// One tenant's grants, by id.
fn grants(old: &[Grant], new: &[Grant]) -> Vec<GrantDiff> {
    let ids: BTreeSet<&str> = old.iter().chain(new).map(|g| g.id.as_str()).collect();
    let mut out = Vec::new();
    for id in ids {
        let o = old.iter().find(|g| g.id == id);
        let n = new.iter().find(|g| g.id == id);
        match (o, n) {
            (Some(o), Some(n)) if o.service == n.service => {
                let changes = grant_changes(o, n, old, new);
                if !changes.is_empty() {
                    out.push(grant_diff(n, Status::Changed, changes));
                }
            }
            (o, n) => {
                // A grant whose service changed is another grant under the same id.
                if let Some(o) = o {
                    let change = whole_grant(o, Status::Removed, new);
                    out.push(grant_diff(o, Status::Removed, vec![change]));
                }
                if let Some(n) = n {
                    let change = whole_grant(n, Status::Added, old);
                    out.push(grant_diff(n, Status::Added, vec![change]));
                }
            }
        }
    }
    out
}

fn grant_diff(g: &Grant, status: Status, changes: Vec<Change>) -> GrantDiff {
    GrantDiff {
        id: g.id.clone(),
        service: g.service.to_string(),
        status,
        who: strings(&g.who),
        clients: strings(&g.clients),
        changes,
    }
}

/// A grant added or removed as a whole; `other` is the tenant's grants on the other side.
fn whole_grant(g: &Grant, status: Status, other: &[Grant]) -> Change {
    let mut limits = Vec::new();
    if let Some(rate) = &g.rate {
        limits.push(format!("rate {rate}"));
    }
    if let Some(daily) = g.daily {
        limits.push(format!("daily {daily}"));
    }
    let what = What::Grant {
        id: g.id.clone(),
        service: g.service.to_string(),
        who: strings(&g.who),
        clients: strings(&g.clients),
        allow: strings(&g.allow),
        limits,
    };
    let unchanged_by = covered_by(g, &g.who, &g.clients, &g.allow, other);
    Change::access(status, what, unchanged_by)
}

/// The entries a grant in both sets gained and lost; `old_all` and `new_all` are the tenant's
/// grants on each side, for [`covered_by`].
fn grant_changes(o: &Grant, n: &Grant, old_all: &[Grant], new_all: &[Grant]) -> Vec<Change> {
    let mut out = Vec::new();
    let (added, removed) = added_removed(&o.who, &n.who);
    for w in added {
        let by = covered_by(n, std::slice::from_ref(w), &n.clients, &n.allow, old_all);
        out.push(Change::access(
            Status::Added,
            What::Who { who: w.to_string() },
            by,
        ));
    }
    for w in removed {
        let by = covered_by(o, std::slice::from_ref(w), &o.clients, &o.allow, new_all);
        out.push(Change::access(
            Status::Removed,
            What::Who { who: w.to_string() },
            by,
        ));
    }
    let (added, removed) = added_removed(&o.clients, &n.clients);
    for c in added {
        let by = covered_by(n, &n.who, std::slice::from_ref(c), &n.allow, old_all);
        let what = What::Client {
            client: c.to_string(),
        };
        out.push(Change::access(Status::Added, what, by));
    }
    for c in removed {
        let by = covered_by(o, &o.who, std::slice::from_ref(c), &o.allow, new_all);
        let what = What::Client {
            client: c.to_string(),
        };
        out.push(Change::access(Status::Removed, what, by));
    }
    let (added, removed) = added_removed(&o.allow, &n.allow);
    for r in added {
        let by = covered_by(n, &n.who, &n.clients, std::slice::from_ref(r), old_all);
        let what = What::Route {
            route: r.to_string(),
        };
        out.push(Change::access(Status::Added, what, by));
    }
    for r in removed {
        let by = covered_by(o, &o.who, &o.clients, std::slice::from_ref(r), new_all);
        let what = What::Route {
            route: r.to_string(),
        };
        out.push(Change::access(Status::Removed, what, by));
    }
    let limit = |name: &str, old: Option<String>, new: Option<String>| {
        (old != new).then(|| {
            Change::new(
                Class::Other,
                Status::Changed,
                What::Limit {
                    limit: name.to_owned(),
                    old,
                    new,
                },
            )
        })
    };
    let rate = |g: &Grant| g.rate.as_ref().map(ToString::to_string);
    let daily = |g: &Grant| g.daily.map(|d| d.to_string());
    out.extend(limit("rate", rate(o), rate(n)));
    out.extend(limit("daily", daily(o), daily(n)));
    out
}

/// The ids of the grants in `other` that give every (who, client, route) combination of the
/// entries given, for `grant`'s service and with its limits, sorted; empty unless all of them
/// are given.
fn covered_by(
    grant: &Grant,
    who: &[Who],
    clients: &[ClientPattern],
    routes: &[Route],
    other: &[Grant],
) -> Vec<String> {
    let mut ids = BTreeSet::new();
    for w in who {
        for c in clients {
            for r in routes {
                let by = other.iter().find(|g| {
                    g.service == grant.service
                        // Else the same request would be counted against other limits.
                        && g.rate == grant.rate
                        && g.daily == grant.daily
                        && g.who.iter().any(|x| x == w || *x == Who::Anyone)
                        && g.clients.iter().any(|x| x == c || *x == ClientPattern::Any)
                        && g.allow.iter().any(|x| route_covers(x, r))
                });
                match by {
                    Some(g) => ids.insert(g.id.clone()),
                    None => return Vec::new(),
                };
            }
        }
    }
    ids.into_iter().collect()
}

/// Whether every request `specific` allows, `general` allows too.
fn route_covers(general: &Route, specific: &Route) -> bool {
    general.method == specific.method
        && path_covers(
            &segments(&general.path.to_string()),
            &segments(&specific.path.to_string()),
        )
}

/// A route pattern's segment; a trailing slash is not significant, as in matching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Segment<'a> {
    Literal(&'a str),
    /// `*`
    One,
    /// `**`
    Any,
}

fn segments(pattern: &str) -> Vec<Segment<'_>> {
    pattern
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| match s {
            "*" => Segment::One,
            "**" => Segment::Any,
            s => Segment::Literal(s),
        })
        .collect()
}

/// Whether `general` matches every path `specific` matches, decided by matching `general`
/// against `specific`'s segments as symbols: `*` takes a literal or `*`, `**` takes anything.
/// Sound, and conservative: it can miss an inclusion (`/*/**` in `/**/*`), never invent one.
fn path_covers(general: &[Segment<'_>], specific: &[Segment<'_>]) -> bool {
    match general.split_first() {
        None => specific.is_empty(),
        Some((Segment::Any, rest)) => {
            (0..=specific.len()).any(|i| path_covers(rest, &specific[i..]))
        }
        Some((Segment::One, rest)) => {
            matches!(specific.first(), Some(Segment::Literal(_) | Segment::One))
                && path_covers(rest, &specific[1..])
        }
        Some((Segment::Literal(a), rest)) => {
            specific.first() == Some(&Segment::Literal(a)) && path_covers(rest, &specific[1..])
        }
    }
}

/// Tool access as (who, tool) pairs: those gained, then those lost.
fn tool_access(old: Option<&Tenant>, new: Option<&Tenant>) -> Vec<Change> {
    let pairs = |t: Option<&Tenant>| -> BTreeSet<(String, String)> {
        t.into_iter()
            .flat_map(|t| &t.tool_access)
            .flat_map(|a| {
                a.who.iter().flat_map(|w| {
                    a.tools
                        .iter()
                        .map(move |tool| (w.to_string(), tool.to_string()))
                })
            })
            .collect()
    };
    let (old, new) = (pairs(old), pairs(new));
    let anyone = Who::Anyone.to_string();
    let change = |status, (who, tool): &(String, String), other: &BTreeSet<_>| {
        let by = if other.contains(&(anyone.clone(), tool.clone())) {
            vec![anyone.clone()]
        } else {
            Vec::new()
        };
        let what = What::ToolAccess {
            who: who.clone(),
            tool: tool.clone(),
        };
        Change::access(status, what, by)
    };
    let gained = new.difference(&old).map(|p| change(Status::Added, p, &old));
    let lost = old
        .difference(&new)
        .map(|p| change(Status::Removed, p, &new));
    gained.chain(lost).collect()
}

// === services ===

fn services(old: &PolicySet, new: &PolicySet) -> Vec<ServiceDiff> {
    let names: BTreeSet<&str> = old
        .services()
        .iter()
        .chain(new.services())
        .map(|s| s.name.as_str())
        .collect();
    let mut out = Vec::new();
    for name in names {
        let (status, changes) = match (service_named(old, name), service_named(new, name)) {
            (Some(o), Some(n)) => (
                Status::Changed,
                service_changes(o, n, old.base(), new.base()),
            ),
            (None, Some(n)) => (Status::Added, new_service(n, new.base())),
            (Some(o), None) => {
                let what = What::Service {
                    origins: strings(&o.origins),
                    injects: injects(o),
                };
                (
                    Status::Removed,
                    vec![Change::new(Class::Other, Status::Removed, what)],
                )
            }
            (None, None) => continue,
        };
        if !changes.is_empty() {
            out.push(ServiceDiff {
                service: name.to_owned(),
                status,
                changes,
            });
        }
    }
    out
}

fn service_named<'p>(set: &'p PolicySet, name: &str) -> Option<&'p Service> {
    set.services().iter().find(|s| s.name.as_str() == name)
}

/// A new service: itself (security-relevant when it injects a credential), then whatever it
/// turns on that a reviewer should see.
fn new_service(s: &Service, base: &Path) -> Vec<Change> {
    let carries = s.credential.is_some();
    let class = if carries {
        Class::Security
    } else {
        Class::Other
    };
    let what = What::Service {
        origins: strings(&s.origins),
        injects: injects(s),
    };
    let mut out = vec![Change::new(class, Status::Added, what)];
    for (flag, on) in flags(s) {
        if on == risky(flag) {
            let what = What::Flag {
                flag: flag.to_owned(),
                on,
            };
            out.push(Change::new(Class::Security, Status::Added, what));
        }
    }
    for root in &s.tls_roots {
        let what = What::TlsRoot {
            root: relative(root, base),
        };
        let class = if carries {
            Class::Security
        } else {
            Class::Other
        };
        out.push(Change::new(class, Status::Added, what));
    }
    out
}

fn service_changes(o: &Service, n: &Service, old_base: &Path, new_base: &Path) -> Vec<Change> {
    let mut out = Vec::new();
    let receives = n.credential.as_ref().map(ToString::to_string);
    let (added, removed) = added_removed(&o.origins, &n.origins);
    for origin in added {
        // A new origin of a service that injects is a new place its credential goes.
        let class = if receives.is_some() {
            Class::Security
        } else {
            Class::Gain
        };
        let what = What::Origin {
            origin: origin.to_string(),
            receives: receives.clone(),
        };
        out.push(Change::new(class, Status::Added, what));
    }
    for origin in removed {
        let what = What::Origin {
            origin: origin.to_string(),
            receives: None,
        };
        out.push(Change::new(Class::Loss, Status::Removed, what));
    }

    if o.credential != n.credential {
        let class = match (&o.credential, &n.credential) {
            (None, Some(_)) => Class::Security,
            // Every member of the tenant now acts with the same credential.
            (Some(a), Some(b))
                if a.scope == CredentialScope::User && b.scope == CredentialScope::Tenant =>
            {
                Class::Security
            }
            _ => Class::Other,
        };
        let what = What::Credential {
            old: o.credential.as_ref().map(ToString::to_string),
            new: n.credential.as_ref().map(ToString::to_string),
            inject: match (&o.credential, &n.inject) {
                (None, Some(i)) => Some(describe_inject(i)),
                _ => None,
            },
        };
        out.push(Change::new(class, Status::Changed, what));
    }
    if let (Some(oi), Some(ni)) = (&o.inject, &n.inject)
        && oi != ni
    {
        let before = endpoints(oi);
        let now_sent_to: Vec<String> = endpoints(ni).difference(&before).cloned().collect();
        let class = if now_sent_to.is_empty() {
            Class::Other
        } else {
            Class::Security
        };
        let what = What::Inject {
            old: describe_inject(oi),
            new: describe_inject(ni),
            now_sent_to,
        };
        out.push(Change::new(class, Status::Changed, what));
    }

    for ((flag, was), (_, is)) in flags(o).into_iter().zip(flags(n)) {
        if was != is {
            let class = if is == risky(flag) {
                Class::Security
            } else {
                Class::Other
            };
            let what = What::Flag {
                flag: flag.to_owned(),
                on: is,
            };
            out.push(Change::new(class, Status::Changed, what));
        }
    }

    let old_roots: Vec<String> = o.tls_roots.iter().map(|r| relative(r, old_base)).collect();
    let new_roots: Vec<String> = n.tls_roots.iter().map(|r| relative(r, new_base)).collect();
    let (added, removed) = added_removed(&old_roots, &new_roots);
    for root in added {
        // Another CA may now vouch for the server that receives the credential.
        let class = if receives.is_some() {
            Class::Security
        } else {
            Class::Other
        };
        let what = What::TlsRoot { root: root.clone() };
        out.push(Change::new(class, Status::Added, what));
    }
    for root in removed {
        let what = What::TlsRoot { root: root.clone() };
        out.push(Change::new(Class::Other, Status::Removed, what));
    }
    out
}

/// The service flags, in the order they are reported.
fn flags(s: &Service) -> [(&'static str, bool); 4] {
    [
        ("allow_private_ips", s.allow_private_ips),
        ("allow_plaintext", s.allow_plaintext),
        ("allow_wildcard_origins", s.allow_wildcard_origins),
        ("scrub_responses", s.scrub_responses),
    ]
}

/// The value of a flag that weakens a guard.
fn risky(flag: &str) -> bool {
    flag != "scrub_responses"
}

/// `user:github_token by header authorization ...`, or `None` for a service without one.
fn injects(s: &Service) -> Option<String> {
    let c: &CredentialRef = s.credential.as_ref()?;
    Some(match &s.inject {
        Some(i) => format!("{c} by {}", describe_inject(i)),
        None => c.to_string(),
    })
}

fn describe_inject(i: &Inject) -> String {
    match i {
        Inject::Header { name, template } => format!(
            "header {name} = \"{}{{credential}}{}\"",
            template.prefix(),
            template.suffix()
        ),
        Inject::Basic { username } => format!("basic (username {username})"),
        Inject::Query { param } => format!("query parameter {param}"),
        Inject::Placeholder { name, template } => format!(
            "placeholder in header {name} = \"{}{{placeholder}}{}\"",
            template.prefix(),
            template.suffix()
        ),
        Inject::AwsSigv4 {
            region,
            service,
            unsigned_payload,
        } => format!(
            "aws_sigv4 ({service}, {region}{})",
            if *unsigned_payload {
                ", unsigned payload"
            } else {
                ""
            }
        ),
        Inject::Hmac(h) => format!("hmac ({:?}) in header {}", h.algorithm, h.header),
        Inject::OAuth2(o) => {
            let mut d = format!("oauth2 ({} grant at {}", o.grant.as_str(), o.token_url);
            if !o.scopes.is_empty() {
                d.push_str(&format!(", scopes {}", o.scopes.join(" ")));
            }
            if let Some(audience) = &o.audience {
                d.push_str(&format!(", audience {audience}"));
            }
            d.push(')');
            d
        }
    }
}

/// Origins besides the service's own that an inject form sends the credential to.
fn endpoints(i: &Inject) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if let Inject::OAuth2(o) = i {
        out.insert(o.token_url.origin.to_string());
        if let Some(revoke) = o.connect.as_ref().and_then(|c| c.revoke_url.as_ref()) {
            out.insert(revoke.origin.to_string());
        }
    }
    out
}

// === settings ===

fn settings(old: &PolicySet, new: &PolicySet) -> Vec<Change> {
    let (o, n) = (old.settings(), new.settings());
    let mut out = Vec::new();
    if o.dev != n.dev {
        let class = if n.dev { Class::Security } else { Class::Other };
        out.push(Change::new(class, Status::Changed, What::Dev { on: n.dev }));
    }

    let names: BTreeSet<&str> = o
        .issuers
        .iter()
        .chain(&n.issuers)
        .map(|i| i.name.as_str())
        .collect();
    for name in names {
        let a = o.issuers.iter().find(|i| i.name == name);
        let b = n.issuers.iter().find(|i| i.name == name);
        match (a, b) {
            (Some(a), Some(b)) => {
                out.extend(issuer_changes(a, b, old.base(), new.base()));
            }
            (None, Some(b)) => {
                let what = What::Issuer {
                    issuer: name.to_owned(),
                    tenants: issuer_tenants(b),
                };
                out.push(Change::new(Class::Security, Status::Added, what));
            }
            (Some(a), None) => {
                let what = What::Issuer {
                    issuer: name.to_owned(),
                    tenants: issuer_tenants(a),
                };
                out.push(Change::new(Class::Other, Status::Removed, what));
            }
            (None, None) => {}
        }
    }

    let old_roots: Vec<String> = o
        .upstream_roots
        .iter()
        .map(|r| relative(r, old.base()))
        .collect();
    let new_roots: Vec<String> = n
        .upstream_roots
        .iter()
        .map(|r| relative(r, new.base()))
        .collect();
    let (added, removed) = added_removed(&old_roots, &new_roots);
    for root in added {
        let what = What::UpstreamRoot { root: root.clone() };
        out.push(Change::new(Class::Security, Status::Added, what));
    }
    for root in removed {
        let what = What::UpstreamRoot { root: root.clone() };
        out.push(Change::new(Class::Other, Status::Removed, what));
    }
    out
}

fn issuer_changes(a: &Issuer, b: &Issuer, old_base: &Path, new_base: &Path) -> Vec<Change> {
    let issuer = || a.name.clone();
    let mut out = Vec::new();
    let (old_tenants, new_tenants) = (issuer_tenants(a), issuer_tenants(b));
    let (added, removed) = added_removed(&old_tenants, &new_tenants);
    for tenant in added {
        let what = What::IssuerTenant {
            issuer: issuer(),
            tenant: tenant.clone(),
        };
        out.push(Change::new(Class::Security, Status::Added, what));
    }
    for tenant in removed {
        let what = What::IssuerTenant {
            issuer: issuer(),
            tenant: tenant.clone(),
        };
        out.push(Change::new(Class::Other, Status::Removed, what));
    }
    let admin = |i: &Issuer| {
        i.admin.as_ref().map_or_else(
            || "none".to_owned(),
            |c| format!("{} = {}", c.claim, c.value),
        )
    };
    let algorithms = |i: &Issuer| format!("{:?}", i.algorithms);
    let duration = |d| humantime::format_duration(d).to_string();
    // (setting, before, after, whether a change lets other tokens in or other people be
    // members or admins)
    let settings = [
        (
            "keys",
            keys(&a.keys, old_base),
            keys(&b.keys, new_base),
            true,
        ),
        ("issuer", a.issuer.clone(), b.issuer.clone(), false),
        ("audience", a.audience.clone(), b.audience.clone(), false),
        ("algorithms", algorithms(a), algorithms(b), false),
        (
            "tenant_claim",
            a.tenant_claim.clone(),
            b.tenant_claim.clone(),
            true,
        ),
        (
            "groups_claim",
            a.groups_claim.clone(),
            b.groups_claim.clone(),
            true,
        ),
        (
            "max_ttl",
            duration(a.max_ttl),
            duration(b.max_ttl),
            b.max_ttl > a.max_ttl,
        ),
        (
            "clock_skew",
            duration(a.clock_skew),
            duration(b.clock_skew),
            false,
        ),
        ("admin", admin(a), admin(b), b.admin.is_some()),
    ];
    for (setting, old, new, security) in settings {
        if old != new {
            let class = if security {
                Class::Security
            } else {
                Class::Other
            };
            let what = What::IssuerSetting {
                issuer: issuer(),
                setting: setting.to_owned(),
                old,
                new,
            };
            out.push(Change::new(class, Status::Changed, what));
        }
    }
    out
}

fn issuer_tenants(i: &Issuer) -> Vec<String> {
    match &i.tenants {
        IssuerTenants::Fixed(t) => vec![t.to_string()],
        IssuerTenants::Listed(list) => strings(list),
    }
}

fn keys(k: &KeySource, base: &Path) -> String {
    match k {
        KeySource::JwksFile(p) => format!("jwks_file {}", relative(p, base)),
        KeySource::JwksUrl(u) => format!("jwks_url {u}"),
        KeySource::KeyFile(p) => format!("key_file {}", relative(p, base)),
    }
}

// === helpers ===

fn strings<T: ToString>(items: &[T]) -> Vec<String> {
    items.iter().map(ToString::to_string).collect()
}

/// The entries of `new` not in `old`, and of `old` not in `new`, compared as written, each in
/// file order.
fn added_removed<'a, T: ToString>(old: &'a [T], new: &'a [T]) -> (Vec<&'a T>, Vec<&'a T>) {
    let (o, n): (BTreeSet<String>, BTreeSet<String>) = (
        old.iter().map(ToString::to_string).collect(),
        new.iter().map(ToString::to_string).collect(),
    );
    let mut seen = BTreeSet::new();
    let added = new
        .iter()
        .filter(|x| {
            let s = x.to_string();
            !o.contains(&s) && seen.insert(s)
        })
        .collect();
    let mut seen = BTreeSet::new();
    let removed = old
        .iter()
        .filter(|x| {
            let s = x.to_string();
            !n.contains(&s) && seen.insert(s)
        })
        .collect();
    (added, removed)
}

/// A path as written in the files: relative to the policies dir's parent when it is under it.
fn relative(path: &Path, base: &Path) -> String {
    path.strip_prefix(base)
        .unwrap_or(path)
        .display()
        .to_string()
}
