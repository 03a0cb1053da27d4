//! The forward proxy front door: plain HTTP in absolute form, for processes that are not wasm
//! (`HTTP_PROXY=http://u:<token>@127.0.0.1:7778`).
//!
//! # Security
//!
//! The principal is taken from **each request's own** `Proxy-Authorization` (Bearer, or Basic
//! with the token as password) and never remembered per connection, so two users' requests on
//! one keep-alive connection each carry their own credential.

pub mod ca;
mod tunnel;

#[doc(hidden)]
pub use self::tunnel::connect_origin;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::{Method, Request, Response, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::OwnedSemaphorePermit;

use crate::audit::{Entry, Outcome};
use crate::door::Door;
use crate::egress::{BoxBody, Call, Egress, EgressError, Placeholders, body};
use crate::identity::Verifier;
use crate::policy::Client;
use crate::principal::Principal;

/// Most request-header bytes read before the request is refused.
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Most request headers.
const MAX_HEADERS: usize = 100;
/// Time allowed for a request's headers to arrive (slow clients).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection's share of `max_connections`, carried by a CONNECT request into its tunnel
/// (which outlives the HTTP connection it was upgraded from), so tunnels count too.
#[derive(Clone)]
struct ConnectionPermit(#[allow(dead_code, reason = "held, never read")] Arc<OwnedSemaphorePermit>);

/// The forward proxy: verifies each request's identity and hands it to the pipeline.
#[derive(Debug)]
pub struct Proxy {
    egress: Arc<Egress>,
    verifier: Arc<Verifier>,
    ca: Option<Arc<ca::Ca>>,
}

impl Proxy {
    /// A proxy over a pipeline and a verifier, without CONNECT (no interception CA).
    pub fn new(egress: Arc<Egress>, verifier: Arc<Verifier>) -> Self {
        Self {
            egress,
            verifier,
            ca: None,
        }
    }

    /// Enables CONNECT, intercepted with certificates from `ca`.
    pub fn with_ca(mut self, ca: Arc<ca::Ca>) -> Self {
        self.ca = Some(ca);
        self
    }

    /// Serves connections from `listener` until `shutdown` resolves, at most
    /// `max_connections` at a time (more wait in the accept queue).
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        max_connections: usize,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let door = Door::new("proxy", max_connections);
        tokio::pin!(shutdown);
        while let Some((stream, permit)) = door.accept(&listener, &mut shutdown).await {
            let proxy = self.clone();
            let draining = door.draining();
            tokio::spawn(async move {
                // A CONNECT tunnel outlives this HTTP connection: it takes a share of the permit.
                let permit = Arc::new(permit);
                let share = permit.clone();
                let service = service_fn(move |mut req: Request<Incoming>| {
                    let proxy = proxy.clone();
                    if req.method() == Method::CONNECT {
                        req.extensions_mut().insert(ConnectionPermit(share.clone()));
                    }
                    async move { Ok::<_, Infallible>(proxy.handle(req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .max_buf_size(MAX_HEADER_BYTES)
                    .max_headers(MAX_HEADERS)
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades();
                tokio::pin!(conn);
                let ended = tokio::select! {
                    r = conn.as_mut() => r,
                    _ = draining => {
                        // Shutting down: finish the request in progress, then close.
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "proxy connection ended with an error");
                }
                drop(permit);
            });
        }
        door.drain().await;
    }

    /// Handles one request: authenticate it, then run it through the pipeline (or, for
    /// CONNECT, decide and intercept the tunnel).
    pub async fn handle(self: &Arc<Self>, req: Request<Incoming>) -> Response<BoxBody> {
        let (principal, expires) = match self.authenticate(req.headers()).await {
            Ok(p) => p,
            Err(reason) => {
                tracing::info!(%reason, method = %req.method(), "proxy request rejected: unauthenticated");
                return self.unauthenticated(&req);
            }
        };
        if req.method() == Method::CONNECT {
            // A token inside its clock-skew grace would open a tunnel that closes at once.
            if expires <= std::time::SystemTime::now() {
                tracing::info!("CONNECT rejected: the identity token has expired");
                return self.unauthenticated(&req);
            }
            return self.connect(req, principal, expires).await;
        }
        let placeholders = Placeholders::none();
        let call = Call {
            principal: &principal,
            client: Client::Proxy,
            invocation: None,
            placeholders: &placeholders,
            tunnel: None,
        };
        match self.egress.handle(&call, req.map(body::boxed)).await {
            Ok(resp) => resp,
            Err(e) => e.to_response(true),
        }
    }

    /// Audits an unauthenticated request (no principal) and answers 407.
    fn unauthenticated(&self, req: &Request<Incoming>) -> Response<BoxBody> {
        let origin = match (req.uri().scheme_str(), req.uri().authority()) {
            (Some(scheme), Some(authority)) => format!("{scheme}://{authority}"),
            (None, Some(authority)) if req.method() == Method::CONNECT => {
                format!("https://{authority}")
            }
            _ => String::new(),
        };
        let mut entry = Entry::new(
            Outcome::Deny,
            req.method().as_str(),
            origin.chars().take(256).collect::<String>(),
            "",
        );
        entry.client = Some(Client::Proxy.to_string());
        entry.reason = Some("unauthenticated".into());
        entry.status = Some(407);
        match self.egress.audit().record(entry) {
            Ok(_) => EgressError::Unauthenticated.to_response(true),
            Err(_) => EgressError::AuditUnavailable.to_response(true),
        }
    }

    /// The principal of this request, from its own `Proxy-Authorization`.
    async fn authenticate(
        &self,
        headers: &http::HeaderMap,
    ) -> Result<(Principal, std::time::SystemTime), String> {
        let token = proxy_token(headers)?;
        self.verifier
            .verify_expiring(&token)
            .await
            .map_err(|r| r.to_string())
    }
}

/// The identity token in a request's one `Proxy-Authorization` header (Bearer, or Basic with
/// the token as password); nothing is verified. Public only for the fuzz targets in `fuzz/`.
#[doc(hidden)]
pub fn proxy_token(headers: &http::HeaderMap) -> Result<String, String> {
    let mut values = headers.get_all(header::PROXY_AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err("expected exactly one Proxy-Authorization header".into());
    };
    let value = value
        .to_str()
        .map_err(|_| "Proxy-Authorization is not ASCII".to_owned())?;
    let (scheme, rest) = value
        .split_once(' ')
        .ok_or_else(|| "Proxy-Authorization has no scheme".to_owned())?;
    let token = if scheme.eq_ignore_ascii_case("bearer") {
        rest.trim().to_owned()
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = STANDARD
            .decode(rest.trim())
            .map_err(|_| "Basic credentials are not base64".to_owned())?;
        let decoded =
            String::from_utf8(decoded).map_err(|_| "Basic credentials are not UTF-8".to_owned())?;
        let (_, password) = decoded
            .split_once(':')
            .ok_or_else(|| "Basic credentials have no password".to_owned())?;
        password.to_owned()
    } else {
        return Err(format!("unsupported Proxy-Authorization scheme `{scheme}`"));
    };
    Ok(token)
}
