//! The sidecar API the agent calls (default `127.0.0.1:7777`):
//!
//! - `POST /v1/tools/{tool}/invoke` with `Authorization: Bearer <identity token>` and the tool's
//!   input as a JSON body → `200 {"output", "invocation", "denials"}`, or an error body
//!   `{"error": {"code", "message", "hint"}, "invocation", "denials"}`.
//! - `GET /v1/tools` → the tools this principal may invoke as model function definitions
//!   (`?format=anthropic` for `{name, description, input_schema}`; OpenAI's
//!   `{type: "function", function: {name, description, parameters}}` otherwise).
//! - `GET /v1/connect/{service}`, `GET /v1/connect/{service}/callback`, `GET /v1/connections`,
//!   `DELETE /v1/connections/{service}`: end users connect their own accounts ([`connect`]).
//! - `PUT|DELETE /v1/admin/secrets/{tenant}[/{user}]/{name}`, `GET /v1/admin/secrets/{tenant}`:
//!   provisioning by a tenant's admins ([`admin`]), off unless an issuer marks admins.
//! - `GET /healthz`, `GET /metrics` (Prometheus text), without a token.

mod admin;
mod connect;
pub mod metrics;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub use self::metrics::Metrics;
use crate::accounts::Accounts;
use crate::audit::{Entry, Outcome};
use crate::door::Door;
use crate::egress::body::empty_error;
use crate::egress::{BoxBody, Egress, error_response};
use crate::identity::Verifier;
use crate::principal::Principal;
use crate::reload::Reloader;
use crate::sandbox::{Sandbox, ToolError};

/// A request head must arrive within this long.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The API front door.
#[derive(Debug)]
pub struct Api {
    sandbox: Arc<Sandbox>,
    verifier: Arc<Verifier>,
    egress: Arc<Egress>,
    metrics: Arc<Metrics>,
    reloader: Arc<Reloader>,
    accounts: Accounts,
}

impl Api {
    /// The API over a sandbox, verifying tokens with `verifier`.
    pub fn new(
        sandbox: Arc<Sandbox>,
        verifier: Arc<Verifier>,
        egress: Arc<Egress>,
        metrics: Arc<Metrics>,
        reloader: Arc<Reloader>,
    ) -> Self {
        Self {
            sandbox,
            verifier,
            egress,
            metrics,
            reloader,
            accounts: Accounts::default(),
        }
    }

    /// Serves connections from `listener` until `shutdown` resolves, at most
    /// `max_connections` at a time. HTTP/1.1 and HTTP/2 (prior knowledge) are both accepted.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        max_connections: usize,
        shutdown: impl Future<Output = ()>,
    ) {
        let door = Door::new("api", max_connections);
        tokio::pin!(shutdown);
        while let Some((stream, permit)) = door.accept(&listener, &mut shutdown).await {
            let api = self.clone();
            let draining = door.draining();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let api = api.clone();
                    async move { Ok::<_, Infallible>(api.handle(req).await) }
                });
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT);
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                let ended = tokio::select! {
                    r = conn.as_mut() => r,
                    _ = draining => {
                        // Shutting down: finish the invocation in progress, then close.
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "API connection ended with an error");
                }
                drop(permit);
            });
        }
        door.drain().await;
    }

    /// Routes one request.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<BoxBody> {
        let path = req.uri().path().to_owned();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (req.method(), segments.as_slice()) {
            (&Method::GET, ["healthz"]) => self.healthz(),
            (&Method::GET, ["metrics"]) => self.metrics(),
            (&Method::GET, ["v1", "tools"]) => self.list(&req).await,
            (&Method::POST, ["v1", "tools", tool, "invoke"]) => {
                let tool = (*tool).to_owned();
                self.invoke(req, &tool).await
            }
            (&Method::GET, ["v1", "connect", service]) => {
                let service = (*service).to_owned();
                self.connect_start(&req, &service).await
            }
            (&Method::GET, ["v1", "connect", service, "callback"]) => {
                let service = (*service).to_owned();
                self.connect_callback(&req, &service).await
            }
            (&Method::GET, ["v1", "connections"]) => self.connections(&req).await,
            (&Method::DELETE, ["v1", "connections", service]) => {
                let service = (*service).to_owned();
                self.disconnect(&req, &service).await
            }
            (_, ["v1", "admin", "secrets", ..]) => {
                let rest: Vec<String> = segments[3..].iter().map(|s| (*s).to_owned()).collect();
                self.admin(req, &rest).await
            }
            (
                _,
                ["healthz" | "metrics"]
                | ["v1", "tools"]
                | ["v1", "tools", _, "invoke"]
                | ["v1", "connect", _]
                | ["v1", "connect", _, "callback"]
                | ["v1", "connections"]
                | ["v1", "connections", _],
            ) => error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "bad_request",
                &format!("{} is not supported on {path}", req.method()),
                "invoke with POST; disconnect with DELETE; everything else with GET",
                false,
            ),
            _ => error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("no such endpoint: {path}"),
                "POST /v1/tools/{tool}/invoke, GET /v1/tools, GET /v1/connect/{service}, \
                 GET /v1/connections, GET /healthz, GET /metrics",
                false,
            ),
        }
    }

    fn healthz(&self) -> Response<BoxBody> {
        let audit = self.egress.audit();
        let reload = self.reloader.status();
        let healthy = audit.healthy();
        let body = json!({
            "status": if healthy { "ok" } else { "degraded" },
            "dev": self.egress.policy().settings().dev,
            "policy": {
                "generation": reload.generation,
                "last_reload_error": reload.last_error,
                "last_reload_at": reload
                    .last_attempt
                    .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
            },
            "audit": {
                "healthy": healthy,
                "head_seq": audit.head_seq(),
                "last_error": audit.last_error(),
            },
            "tools": self.sandbox.tools().manifests().count(),
            "sandbox_instances_in_use": self.sandbox.in_use(),
        });
        let status = if healthy {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        json_response(status, &body)
    }

    fn metrics(&self) -> Response<BoxBody> {
        let text = self.metrics.render(&self.sandbox, self.egress.audit());
        let mut resp = Response::new(full(text.into_bytes()));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        );
        resp
    }

    async fn list(&self, req: &Request<Incoming>) -> Response<BoxBody> {
        let principal = match self.authenticate(req.headers()).await {
            Ok(p) => p,
            Err(reason) => return unauthenticated(&reason),
        };
        let format = req
            .uri()
            .query()
            .into_iter()
            .flat_map(|q| form_urlencoded::parse(q.as_bytes()))
            .find(|(k, _)| k == "format")
            .map(|(_, v)| v.into_owned());
        let anthropic = match format.as_deref() {
            None | Some("openai") => false,
            Some("anthropic") => true,
            Some(other) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    &format!("unknown format `{other}`"),
                    "use ?format=openai (the default) or ?format=anthropic",
                    false,
                );
            }
        };
        let tools: Vec<Value> = self
            .sandbox
            .allowed(&principal)
            .iter()
            .map(|m| {
                if anthropic {
                    json!({
                        "name": m.name.as_str(),
                        "description": m.description,
                        "input_schema": m.input_schema,
                    })
                } else {
                    json!({
                        "type": "function",
                        "function": {
                            "name": m.name.as_str(),
                            "description": m.description,
                            "parameters": m.input_schema,
                        }
                    })
                }
            })
            .collect();
        json_response(StatusCode::OK, &json!({ "tools": tools }))
    }

    async fn invoke(&self, req: Request<Incoming>, tool: &str) -> Response<BoxBody> {
        let started = Instant::now();
        let principal = match self.authenticate(req.headers()).await {
            Ok(p) => p,
            Err(reason) => {
                let mut entry = Entry::new(
                    Outcome::Deny,
                    "INVOKE",
                    format!("tool:{tool}").chars().take(128).collect::<String>(),
                    "",
                );
                entry.client = Some("api".into());
                entry.reason = Some("unauthenticated".into());
                entry.status = Some(401);
                self.metrics.observe_invocation(
                    tool,
                    &self.sandbox,
                    StatusCode::UNAUTHORIZED,
                    started.elapsed(),
                );
                if self.egress.audit().record(entry).is_err() {
                    return unavailable();
                }
                return unauthenticated(&reason);
            }
        };
        let limit = self.egress.policy().settings().limits.max_request_body;
        let invocation = match Limited::new(
            req.into_body(),
            usize::try_from(limit).unwrap_or(usize::MAX),
        )
        .collect()
        .await
        {
            Ok(input) => {
                self.sandbox
                    .invoke(&principal, tool, &input.to_bytes())
                    .await
            }
            Err(e) => {
                let error = if e
                    .downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    ToolError::InputTooLarge(limit)
                } else {
                    ToolError::InvalidInput(format!("the request body could not be read: {e}"))
                };
                self.sandbox.refuse(&principal, tool, error)
            }
        };
        let (status, body) = match invocation.result {
            Ok(output) => (
                StatusCode::OK,
                json!({
                    "output": output,
                    "invocation": invocation.id,
                    "denials": invocation.denials,
                }),
            ),
            Err(e) => (
                e.status(),
                json!({
                    "error": { "code": e.code(), "message": e.to_string(), "hint": e.hint() },
                    "invocation": invocation.id,
                    "denials": invocation.denials,
                }),
            ),
        };
        self.metrics
            .observe_invocation(tool, &self.sandbox, status, started.elapsed());
        let mut resp = json_response(status, &body);
        if status == StatusCode::TOO_MANY_REQUESTS {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }

    /// The principal from `Authorization: Bearer <token>`.
    async fn authenticate(&self, headers: &http::HeaderMap) -> Result<Principal, String> {
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return Err("expected exactly one Authorization header".into());
        };
        let value = value
            .to_str()
            .map_err(|_| "Authorization is not ASCII".to_owned())?;
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => return Err("Authorization must be `Bearer <identity token>`".into()),
        };
        self.verifier.verify(token).await.map_err(|r| r.to_string())
    }
}

fn unauthenticated(reason: &str) -> Response<BoxBody> {
    tracing::info!(%reason, "API request rejected: unauthenticated");
    let mut resp = error_response(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        "a valid identity token is required",
        "send `Authorization: Bearer <identity token>` from an issuer configured in behalf.toml",
        false,
    );
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"behalf\""),
    );
    resp
}

fn unavailable() -> Response<BoxBody> {
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the audit log cannot be written, so nothing is invoked",
        "an operator must make the audit log writable (disk full?)",
        false,
    )
}

fn full(bytes: impl Into<Bytes>) -> BoxBody {
    Full::new(bytes.into()).map_err(empty_error).boxed_unsync()
}

fn json_response(status: StatusCode, body: &Value) -> Response<BoxBody> {
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
