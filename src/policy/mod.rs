//! The policy layer: files → validated model → compiled, indexed [`PolicySet`] whose decisions
//! are pure functions with no I/O.
//!
//! - [`load`] reads a policies directory; [`source`] turns spans into `file:line:column`.
//! - [`settings`], [`service`], [`tenant`] are the three kinds of file.
//! - [`origin`], [`path`], [`target`] implement DESIGN.md's matching rules.
//! - [`decide`] answers "may this principal, through this client, make this request?" and
//!   "may they invoke this tool?", with a trace for `behalf policy explain`.
//! - [`testing`] runs `tests/*.toml` policy test cases.
//! - [`diff`] compares two policy sets for a reviewer: who gains or loses which access.

pub mod decide;
pub mod diff;
pub mod load;
pub mod origin;
pub mod path;
pub mod service;
pub mod settings;
pub mod source;
pub mod target;
pub mod tenant;
pub mod testing;
pub(crate) mod units;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use decide::{Allow, Decision, Deny, Explanation, GrantCheck, ToolDecision, ToolDeny};
pub use load::Sources;
pub use origin::{Host, Origin, OriginPattern, Scheme};
pub use service::{CredentialRef, CredentialScope, Inject, Service, ServiceName, ToolName};
pub use settings::Settings;
pub use source::{Diagnostic, Diagnostics, Location, Severity, SourceFile};
pub use target::Target;
pub use tenant::{Client, ClientPattern, Grant, Route, Tenant, ToolAccess, Who};

use crate::principal::TenantId;

/// A policy set that failed to load: every problem found, sorted by location.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", render(.diagnostics))]
pub struct LoadError {
    /// All errors and warnings.
    pub diagnostics: Vec<Diagnostic>,
}

fn render(diagnostics: &[Diagnostic]) -> String {
    let errors = diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let mut out = String::new();
    for d in diagnostics {
        out.push_str(&d.to_string());
        out.push('\n');
    }
    out.push_str(&format!(
        "policy is invalid: {errors} error{}",
        if errors == 1 { "" } else { "s" }
    ));
    out
}

/// A loaded, validated and indexed policy set.
#[derive(Debug, Clone)]
pub struct PolicySet {
    settings: Settings,
    services: Vec<Service>,
    /// Exact origins by host: (scheme, port, service index).
    exact: HashMap<Box<str>, Vec<(Scheme, u16, usize)>>,
    /// `*.parent` origins by parent: (scheme, port, service index).
    wildcard: HashMap<Box<str>, Vec<(Scheme, u16, usize)>>,
    tenants: HashMap<TenantId, TenantPolicy>,
    warnings: Vec<Diagnostic>,
    /// What relative paths in the files were resolved against (the policies dir's parent).
    base: PathBuf,
}

#[derive(Debug, Clone)]
struct TenantPolicy {
    tenant: Tenant,
    /// For each service index, the indices of this tenant's grants for it, in file order.
    grants_by_service: HashMap<usize, Vec<usize>>,
}

impl PolicySet {
    /// Loads a policies directory (`behalf.toml`, `services/`, `tenants/`).
    pub fn load(dir: &Path) -> Result<Self, LoadError> {
        let mut diags = Diagnostics::default();
        let sources = Sources::read(dir, &mut diags);
        Self::build(&sources, diags)
    }

    /// Builds a policy set from files already read (tests, benchmarks, generated policy).
    pub fn from_sources(sources: &Sources) -> Result<Self, LoadError> {
        Self::build(sources, Diagnostics::default())
    }

    fn build(sources: &Sources, mut diags: Diagnostics) -> Result<Self, LoadError> {
        let settings = match &sources.settings {
            Some(file) => Settings::parse(file, &sources.base, &mut diags),
            None => Settings::defaults(&sources.base),
        };
        let mut services = Vec::new();
        // Services with errors of their own: grants naming them are not reported again.
        let mut invalid_services = Vec::new();
        for file in &sources.services {
            match Service::parse(file, &sources.base, &mut diags) {
                Ok(s) => services.push(s),
                Err(name) => invalid_services.extend(name),
            }
        }
        // A provider may rotate the refresh token on every use; behalf must be able to store
        // the new one, or the credential dies at the next restart.
        if settings.secrets.backend != settings::Backend::File {
            for service in &services {
                if let Some(service::Inject::OAuth2(o)) = &service.inject
                    && o.grant == service::OAuth2Grant::RefreshToken
                {
                    diags.error(
                        service.defined_at.clone(),
                        format!(
                            "service `{}` uses the oauth2 refresh_token grant, which needs a \
                             writable secret backend to store rotated refresh tokens, but \
                             [secrets] backend is read-only; use backend = \"file\", or the \
                             client_credentials grant",
                            service.name
                        ),
                    );
                }
            }
        }
        let tenants: Vec<Tenant> = sources
            .tenants
            .iter()
            .filter_map(|f| Tenant::parse(f, &mut diags))
            .collect();

        let mut by_name: HashMap<&ServiceName, usize> = HashMap::new();
        let mut claimed: HashMap<&OriginPattern, usize> = HashMap::new();
        let mut exact: HashMap<Box<str>, Vec<(Scheme, u16, usize)>> = HashMap::new();
        let mut wildcard: HashMap<Box<str>, Vec<(Scheme, u16, usize)>> = HashMap::new();
        for (i, service) in services.iter().enumerate() {
            if let Some(&first) = by_name.get(&service.name) {
                diags.error(
                    service.defined_at.clone(),
                    format!(
                        "duplicate service name `{}` (first defined at {})",
                        service.name, services[first].defined_at
                    ),
                );
                continue;
            }
            by_name.insert(&service.name, i);
            for (origin, at) in service.origins.iter().zip(&service.origin_locations) {
                if let Some(&first) = claimed.get(origin) {
                    diags.error(
                        at.clone(),
                        format!(
                            "origin `{origin}` is already claimed by service `{}` at {}; each \
                             origin belongs to one service",
                            services[first].name, services[first].defined_at
                        ),
                    );
                    continue;
                }
                claimed.insert(origin, i);
                match origin {
                    OriginPattern::Exact(o) => exact.entry(o.host.as_str().into()),
                    OriginPattern::Wildcard { parent, .. } => {
                        wildcard.entry(parent.as_str().into())
                    }
                }
                .or_default()
                .push((origin.scheme(), origin_port(origin), i));
            }
        }

        let tools_present = settings.tools_dir.is_dir();
        let mut tools_warned = false;
        let mut tenant_map: HashMap<TenantId, TenantPolicy> = HashMap::new();
        for tenant in tenants {
            if let Some(first) = tenant_map.get(&tenant.name) {
                diags.error(
                    tenant.at.clone(),
                    format!(
                        "duplicate tenant `{}` (first defined at {})",
                        tenant.name, first.tenant.at
                    ),
                );
                continue;
            }
            let mut grants_by_service: HashMap<usize, Vec<usize>> = HashMap::new();
            for (gi, (grant, at)) in tenant.grants.iter().zip(&tenant.service_refs).enumerate() {
                match by_name.get(&grant.service) {
                    Some(&si) => grants_by_service.entry(si).or_default().push(gi),
                    None if invalid_services.contains(&grant.service) => {}
                    None => diags.error(
                        at.clone(),
                        format!(
                            "grant `{}` names unknown service `{}`; known services: {}",
                            grant.id,
                            grant.service,
                            known(by_name.keys().map(|n| n.as_str()))
                        ),
                    ),
                }
            }
            for (tool, at) in &tenant.tool_refs {
                if !tools_present {
                    if !tools_warned {
                        diags.warning(
                            Location::file(&settings.tools_dir),
                            "tools dir (`tools_dir`) not found, so the tool names in tenant files \
                             are not checked",
                        );
                        tools_warned = true;
                    }
                } else if !settings
                    .tools_dir
                    .join(tool.as_str())
                    .join("tool.toml")
                    .is_file()
                {
                    diags.error(
                        at.clone(),
                        format!(
                            "unknown tool `{tool}`: no `{}`",
                            settings
                                .tools_dir
                                .join(tool.as_str())
                                .join("tool.toml")
                                .display()
                        ),
                    );
                }
            }
            tenant_map.insert(
                tenant.name.clone(),
                TenantPolicy {
                    tenant,
                    grants_by_service,
                },
            );
        }

        if diags.has_errors() {
            return Err(LoadError {
                diagnostics: diags.into_sorted(),
            });
        }
        Ok(Self {
            settings,
            services,
            exact,
            wildcard,
            tenants: tenant_map,
            warnings: diags.into_sorted(),
            base: sources.base.clone(),
        })
    }

    /// Server settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Warnings found while loading (the set is usable).
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.warnings
    }

    /// The directory relative paths in the files were resolved against (the policies dir's
    /// parent), so that two sets can compare the paths as written.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// All services, in load order.
    pub fn services(&self) -> &[Service] {
        &self.services
    }

    /// All tenants, sorted by name.
    pub fn tenants(&self) -> Vec<&Tenant> {
        let mut t: Vec<&Tenant> = self.tenants.values().map(|t| &t.tenant).collect();
        t.sort_by(|a, b| a.name.cmp(&b.name));
        t
    }

    /// One tenant's policy.
    pub fn tenant(&self, name: &TenantId) -> Option<&Tenant> {
        self.tenants.get(name).map(|t| &t.tenant)
    }

    /// The service claiming an origin: an exact origin first, then a `*.` pattern.
    pub fn service_for(&self, origin: &Origin) -> Option<&Service> {
        self.service_index(origin).map(|i| &self.services[i])
    }

    fn service_index(&self, origin: &Origin) -> Option<usize> {
        let find = |list: Option<&Vec<(Scheme, u16, usize)>>| {
            list?
                .iter()
                .find(|(s, p, _)| *s == origin.scheme && *p == origin.port)
                .map(|(_, _, i)| *i)
        };
        find(self.exact.get(origin.host.as_str())).or_else(|| {
            let host = origin.host.as_str();
            let parent = host.split_once('.').map(|(_, p)| p)?;
            if host.starts_with('[') {
                return None;
            }
            find(self.wildcard.get(parent))
        })
    }
}

fn origin_port(o: &OriginPattern) -> u16 {
    match o {
        OriginPattern::Exact(o) => o.port,
        OriginPattern::Wildcard { port, .. } => *port,
    }
}

fn known<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let mut v: Vec<&str> = names.collect();
    if v.is_empty() {
        return "(none)".into();
    }
    v.sort_unstable();
    v.join(", ")
}
