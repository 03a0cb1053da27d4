//! What the pipeline counts for `/metrics`: every request by tenant, service, decision and
//! status, the pipeline's latency to the response head by service, and OAuth2 token
//! exchanges by service and outcome.
//!
//! Label values are bounded by the policy: a tenant or service the policy does not name is
//! counted as `other` (or `none` before a service is known). User ids are never labels.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::audit::{Entry, Outcome};
use crate::policy::{Origin, PolicySet, ServiceName};
use crate::principal::TenantId;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    tenant: String,
    service: String,
    decision: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantServiceLabels {
    tenant: String,
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExchangeLabels {
    service: String,
    outcome: &'static str,
}

/// The pipeline's counters. Cheap to clone (the families are shared).
#[derive(Debug, Clone)]
pub struct EgressMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<ServiceLabel, Histogram>,
    exchanges: Family<ExchangeLabels, Counter>,
    rate_limited: Family<TenantServiceLabels, Counter>,
}

impl Default for EgressMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_1, 2.0, 18))
            }),
            exchanges: Family::default(),
            rate_limited: Family::default(),
        }
    }
}

impl EgressMetrics {
    /// Registers the families in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "egress_requests",
            "Requests through the egress pipeline (tool calls and the proxy), by tenant, \
             service, decision (allow, deny, error) and status returned",
            self.requests.clone(),
        );
        registry.register(
            "egress_response_seconds",
            "Time from a request entering the pipeline to its response head (or refusal), by \
             service",
            self.latency.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests refused by a grant's rate or daily limit (429), by tenant and service",
            self.rate_limited.clone(),
        );
        registry.register(
            "oauth2_token_exchanges",
            "Exchanges at OAuth2 token endpoints, by service and outcome (ok, rejected, failed)",
            self.exchanges.clone(),
        );
    }

    /// Counts one request as its audit record describes it.
    pub(super) fn count(&self, policy: &PolicySet, entry: &Entry) {
        self.requests
            .get_or_create(&RequestLabels {
                tenant: tenant_label(policy, entry),
                service: service_label(policy, &entry.origin),
                decision: match entry.decision {
                    Outcome::Allow => "allow",
                    Outcome::Deny => "deny",
                    _ => "error",
                },
                status: entry.status.unwrap_or(0),
            })
            .inc();
    }

    /// Counts one request refused by a rate or daily limit.
    pub(super) fn rate_limited(&self, policy: &PolicySet, entry: &Entry) {
        self.rate_limited
            .get_or_create(&TenantServiceLabels {
                tenant: tenant_label(policy, entry),
                service: service_label(policy, &entry.origin),
            })
            .inc();
    }

    /// Records the time to a response head (or refusal) for requests to `origin`.
    pub(super) fn latency(&self, policy: &PolicySet, origin: &str, elapsed: Duration) {
        self.latency
            .get_or_create(&ServiceLabel {
                service: service_label(policy, origin),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one token exchange for `service`.
    pub(super) fn exchange(&self, service: &ServiceName, outcome: &'static str) {
        self.exchanges
            .get_or_create(&ExchangeLabels {
                service: service.to_string(),
                outcome,
            })
            .inc();
    }
}

/// The entry's tenant if the policy names it, else `other` (or `none` before authentication).
fn tenant_label(policy: &PolicySet, entry: &Entry) -> String {
    match &entry.tenant {
        Some(t) if TenantId::parse(t).is_ok_and(|t| policy.tenant(&t).is_some()) => t.clone(),
        Some(_) => "other".to_owned(),
        None => "none".to_owned(),
    }
}

/// The service claiming an audited origin, `none` if it names none.
fn service_label(policy: &PolicySet, origin: &str) -> String {
    Origin::parse(origin)
        .ok()
        .and_then(|o| policy.service_for(&o).map(|s| s.name.to_string()))
        .unwrap_or_else(|| "none".to_owned())
}
