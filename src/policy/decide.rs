//! Decisions: pure functions of a [`PolicySet`], a principal, a client and a normalised
//! request. Default deny: a request is allowed only when one grant matches on every count.

use std::fmt;

use http::Method;

use super::service::{CredentialRef, Service, ServiceName, ToolName};
use super::target::Target;
use super::tenant::{Client, Grant, ToolAccess};
use super::{Origin, PolicySet};
use crate::principal::{Principal, TenantId};

/// The outcome of deciding one request.
#[derive(Debug, Clone)]
pub enum Decision<'p> {
    /// A grant matched.
    Allow(Allow<'p>),
    /// No grant matched; the reason names which kind of rule is missing.
    Deny(Deny),
}

/// What an allowed request may carry.
#[derive(Debug, Clone)]
pub struct Allow<'p> {
    /// The grant that matched.
    pub grant: &'p Grant,
    /// The service the request is for.
    pub service: &'p Service,
}

impl Allow<'_> {
    /// The credential to inject (name and scope only), if the service has one.
    pub fn credential(&self) -> Option<&CredentialRef> {
        self.service.credential.as_ref()
    }
}

/// Why a request was denied: which kind of rule is missing. Safe to show to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Deny {
    /// No service claims the origin.
    NoService {
        /// The origin requested.
        origin: Origin,
    },
    /// The principal's tenant has no policy file.
    NoTenantPolicy {
        /// The tenant.
        tenant: TenantId,
    },
    /// The tenant has no grant for the service at all.
    NoGrantForService {
        /// The service.
        service: ServiceName,
    },
    /// Grants exist for the service, but none names this user or their groups.
    NotGrantee {
        /// The service.
        service: ServiceName,
    },
    /// Grants cover this principal, but none admits this client.
    ClientNotGranted {
        /// The service.
        service: ServiceName,
        /// The client.
        client: Client,
    },
    /// Grants cover principal and client, but no route allows this method and path.
    RouteNotGranted {
        /// The service.
        service: ServiceName,
        /// The method.
        method: Method,
        /// The normalised path.
        path: String,
    },
}

impl Deny {
    /// A stable, machine-readable name for the kind of rule that is missing.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NoService { .. } => "no_service",
            Self::NoTenantPolicy { .. } => "no_tenant_policy",
            Self::NoGrantForService { .. } => "no_grant_for_service",
            Self::NotGrantee { .. } => "not_grantee",
            Self::ClientNotGranted { .. } => "client_not_granted",
            Self::RouteNotGranted { .. } => "route_not_granted",
        }
    }
}

impl fmt::Display for Deny {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoService { origin } => write!(f, "no service is configured for {origin}"),
            Self::NoTenantPolicy { tenant } => write!(f, "tenant `{tenant}` has no policy"),
            Self::NoGrantForService { service } => {
                write!(f, "no grant in this tenant covers service `{service}`")
            }
            Self::NotGrantee { service } => write!(
                f,
                "no grant for service `{service}` names this user or any of their groups"
            ),
            Self::ClientNotGranted { service, client } => {
                write!(
                    f,
                    "no grant for service `{service}` admits client `{client}`"
                )
            }
            Self::RouteNotGranted {
                service,
                method,
                path,
            } => write!(
                f,
                "no grant for service `{service}` allows `{method} {path}`"
            ),
        }
    }
}

/// How one candidate grant fared, in the order the checks are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum GrantCheck {
    /// `who` names neither the user nor any of their groups.
    NotGrantee,
    /// `clients` does not admit the client.
    ClientNotListed,
    /// No route in `allow` matches the method and path.
    NoRoute,
    /// Every check passed.
    Matched,
}

impl Grant {
    /// Checks this grant against a request, stopping at the first failing check.
    pub fn check(
        &self,
        principal: &Principal,
        client: &Client,
        method: &Method,
        path: &str,
    ) -> GrantCheck {
        match self.check_caller(principal, client) {
            GrantCheck::Matched if !self.allow.iter().any(|r| r.matches(method, path)) => {
                GrantCheck::NoRoute
            }
            other => other,
        }
    }

    /// Checks only who is calling and through which client (no route).
    pub fn check_caller(&self, principal: &Principal, client: &Client) -> GrantCheck {
        if !self.who.iter().any(|w| w.covers(principal)) {
            GrantCheck::NotGrantee
        } else if !self.clients.iter().any(|c| c.admits(client)) {
            GrantCheck::ClientNotListed
        } else {
            GrantCheck::Matched
        }
    }
}

/// A decision with its trace, for `behalf policy explain` and policy tests.
#[derive(Debug, Clone)]
pub struct Explanation<'p> {
    /// The decision.
    pub decision: Decision<'p>,
    /// The service claiming the origin, if any.
    pub service: Option<&'p Service>,
    /// Each of the tenant's grants for that service, with how it fared, in file order.
    pub candidates: Vec<(&'p Grant, GrantCheck)>,
}

/// The outcome of deciding a tool invocation.
#[derive(Debug, Clone)]
pub enum ToolDecision<'p> {
    /// This tool access rule matched.
    Allow(&'p ToolAccess),
    /// No rule matched.
    Deny(ToolDeny),
}

/// Why a tool invocation was denied.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ToolDeny {
    /// The principal's tenant has no policy file.
    NoTenantPolicy {
        /// The tenant.
        tenant: TenantId,
    },
    /// No tool access rule gives this principal this tool.
    NoToolAccess {
        /// The tool.
        tool: ToolName,
    },
}

impl fmt::Display for ToolDeny {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoTenantPolicy { tenant } => write!(f, "tenant `{tenant}` has no policy"),
            Self::NoToolAccess { tool } => write!(
                f,
                "no tool access rule gives this user or their groups the tool `{tool}`"
            ),
        }
    }
}

impl PolicySet {
    /// Decides a request. Pure: no I/O, no secrets.
    pub fn decide(
        &self,
        principal: &Principal,
        client: &Client,
        method: &Method,
        target: &Target,
    ) -> Decision<'_> {
        self.evaluate(principal, client, method, target, None)
    }

    /// Decides a request and records how every candidate grant fared.
    pub fn explain(
        &self,
        principal: &Principal,
        client: &Client,
        method: &Method,
        target: &Target,
    ) -> Explanation<'_> {
        let mut candidates = Vec::new();
        let decision = self.evaluate(principal, client, method, target, Some(&mut candidates));
        Explanation {
            decision,
            service: self.service_for(&target.origin),
            candidates,
        }
    }

    /// The one decision procedure; `trace` collects every candidate instead of stopping at
    /// the first match.
    fn evaluate<'p>(
        &'p self,
        principal: &Principal,
        client: &Client,
        method: &Method,
        target: &Target,
        mut trace: Option<&mut Vec<(&'p Grant, GrantCheck)>>,
    ) -> Decision<'p> {
        let Some(si) = self.service_index(&target.origin) else {
            return Decision::Deny(Deny::NoService {
                origin: target.origin.clone(),
            });
        };
        let service = &self.services[si];
        let Some(tenant) = self.tenants.get(&principal.tenant) else {
            return Decision::Deny(Deny::NoTenantPolicy {
                tenant: principal.tenant.clone(),
            });
        };
        let grants = tenant
            .grants_by_service
            .get(&si)
            .map_or(&[][..], Vec::as_slice);
        let mut best: Option<GrantCheck> = None;
        let mut allowed = None;
        for &gi in grants {
            let grant = &tenant.tenant.grants[gi];
            let check = grant.check(principal, client, method, &target.path);
            if check == GrantCheck::Matched && allowed.is_none() {
                allowed = Some(grant);
            }
            best = best.max(Some(check));
            match trace.as_deref_mut() {
                Some(t) => t.push((grant, check)),
                None if allowed.is_some() => break,
                None => {}
            }
        }
        if let Some(grant) = allowed {
            return Decision::Allow(Allow { grant, service });
        }
        let service = service.name.clone();
        Decision::Deny(match best {
            None => Deny::NoGrantForService { service },
            Some(GrantCheck::NotGrantee) => Deny::NotGrantee { service },
            Some(GrantCheck::ClientNotListed) => Deny::ClientNotGranted {
                service,
                client: client.clone(),
            },
            Some(GrantCheck::NoRoute | GrantCheck::Matched) => Deny::RouteNotGranted {
                service,
                method: method.clone(),
                path: target.path.clone(),
            },
        })
    }

    /// Whether a principal, through `client`, has any grant at all for the service claiming
    /// `origin`: the question a `CONNECT` is decided on, before any request inside the tunnel
    /// is known. Each request in the tunnel is still decided on its own. Pure.
    pub fn admits_origin(
        &self,
        principal: &Principal,
        client: &Client,
        origin: &Origin,
    ) -> Result<&Service, Deny> {
        let si = self.service_index(origin).ok_or_else(|| Deny::NoService {
            origin: origin.clone(),
        })?;
        let service = &self.services[si];
        let tenant = self
            .tenants
            .get(&principal.tenant)
            .ok_or_else(|| Deny::NoTenantPolicy {
                tenant: principal.tenant.clone(),
            })?;
        let grants = tenant
            .grants_by_service
            .get(&si)
            .map_or(&[][..], Vec::as_slice);
        let mut best = None;
        for &gi in grants {
            match tenant.tenant.grants[gi].check_caller(principal, client) {
                GrantCheck::Matched => return Ok(service),
                check => best = best.max(Some(check)),
            }
        }
        let service_name = service.name.clone();
        Err(match best {
            None => Deny::NoGrantForService {
                service: service_name,
            },
            Some(GrantCheck::NotGrantee) => Deny::NotGrantee {
                service: service_name,
            },
            Some(_) => Deny::ClientNotGranted {
                service: service_name,
                client: client.clone(),
            },
        })
    }

    /// Whether any grant lets the principal use the service, through any client and for any
    /// route: the question for connecting an account to it. Pure.
    pub fn grants_service(&self, principal: &Principal, service: &ServiceName) -> bool {
        let Some(si) = self.services.iter().position(|s| s.name == *service) else {
            return false;
        };
        let Some(tenant) = self.tenants.get(&principal.tenant) else {
            return false;
        };
        tenant.grants_by_service.get(&si).is_some_and(|grants| {
            grants.iter().any(|&gi| {
                tenant.tenant.grants[gi]
                    .who
                    .iter()
                    .any(|w| w.covers(principal))
            })
        })
    }

    /// Decides whether a principal may invoke a tool. Pure.
    pub fn decide_tool(&self, principal: &Principal, tool: &ToolName) -> ToolDecision<'_> {
        let Some(tenant) = self.tenants.get(&principal.tenant) else {
            return ToolDecision::Deny(ToolDeny::NoTenantPolicy {
                tenant: principal.tenant.clone(),
            });
        };
        tenant
            .tenant
            .tool_access
            .iter()
            .find(|a| a.tools.contains(tool) && a.who.iter().any(|w| w.covers(principal)))
            .map_or_else(
                || ToolDecision::Deny(ToolDeny::NoToolAccess { tool: tool.clone() }),
                ToolDecision::Allow,
            )
    }
}
