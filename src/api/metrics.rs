//! Prometheus metrics for `/metrics`, in the OpenMetrics text format.
//!
//! Label values are bounded: tool names come from the installed tools (an unknown name is
//! counted as `unknown`), statuses are HTTP status codes. User ids are never labels.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::audit::AuditLog;
use crate::egress::metrics::EgressMetrics;
use crate::reload::Reloader;
use crate::sandbox::Sandbox;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InvokeLabels {
    tool: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToolLabel {
    tool: String,
}

/// The sidecar's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    invocations: Family<InvokeLabels, Counter>,
    invoke_seconds: Family<ToolLabel, Histogram>,
    instances: Gauge,
    audit_head: Gauge,
}

impl Metrics {
    /// Registers every metric, including the pipeline's (`egress`) and reloads'.
    pub fn new(egress: &EgressMetrics, reload: &Reloader) -> Self {
        let mut registry = Registry::with_prefix("behalf");
        egress.register(&mut registry);
        reload.register(&mut registry);
        let invocations = Family::<InvokeLabels, Counter>::default();
        registry.register(
            "tool_invocations",
            "Tool invocations through the API, by tool and response status",
            invocations.clone(),
        );
        let invoke_seconds = Family::<ToolLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
        });
        registry.register(
            "tool_invocation_duration_seconds",
            "Wall-clock time of tool invocations, from request to response",
            invoke_seconds.clone(),
        );
        let instances = Gauge::default();
        registry.register(
            "sandbox_instances_in_use",
            "Tool instances running now",
            instances.clone(),
        );
        let audit_head = Gauge::default();
        registry.register(
            "audit_head_seq",
            "The sequence number of the last audit record written",
            audit_head.clone(),
        );
        Self {
            registry,
            invocations,
            invoke_seconds,
            instances,
            audit_head,
        }
    }

    /// Counts one invocation.
    pub fn observe_invocation(
        &self,
        tool: &str,
        sandbox: &Sandbox,
        status: http::StatusCode,
        elapsed: Duration,
    ) {
        let tool = if sandbox.tools().contains(tool) {
            tool.to_owned()
        } else {
            "unknown".to_owned()
        };
        self.invocations
            .get_or_create(&InvokeLabels {
                tool: tool.clone(),
                status: status.as_u16(),
            })
            .inc();
        self.invoke_seconds
            .get_or_create(&ToolLabel { tool })
            .observe(elapsed.as_secs_f64());
    }

    /// The text exposition, with gauges read now.
    pub fn render(&self, sandbox: &Sandbox, audit: &AuditLog) -> String {
        self.instances
            .set(i64::try_from(sandbox.in_use()).unwrap_or(i64::MAX));
        self.audit_head
            .set(i64::try_from(audit.head_seq()).unwrap_or(i64::MAX));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
