//! `CONNECT`: HTTPS through the forward proxy, intercepted — never an opaque tunnel.
//!
//! The principal is fixed at CONNECT time from that request's `Proxy-Authorization`, and the
//! tunnel is closed when the token expires. A tunnel is opened only to an origin the principal
//! has some grant for; behalf then terminates TLS with a leaf certificate its own CA mints for
//! exactly the CONNECT host (a ClientHello naming another host is refused), and every request
//! inside goes through the same egress pipeline as plain HTTP, bound to the CONNECT origin.
//!
//! # Security
//!
//! Nothing inside the tunnel can change whose call it is: the principal is the one verified at
//! CONNECT, and a request inside that names another host is refused by the pipeline.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio_rustls::TlsAcceptor;

use super::Proxy;
use super::ca;
use crate::audit::{Entry, Outcome};
use crate::egress::{BoxBody, Call, EgressError, Placeholders, body};
use crate::policy::{Client, Origin, Scheme};
use crate::principal::Principal;

/// Time allowed for the client's TLS handshake inside the tunnel.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl Proxy {
    /// Decides a CONNECT and, when allowed, intercepts the tunnel.
    pub(super) async fn connect(
        self: &Arc<Self>,
        req: Request<Incoming>,
        principal: Principal,
        expires: SystemTime,
    ) -> Response<BoxBody> {
        let Some(ca) = self.ca.clone() else {
            return EgressError::Refused {
                message: "CONNECT is not available: this proxy has no interception CA".into(),
                hint: "send plain-HTTP requests in absolute form through the proxy".into(),
            }
            .to_response(true);
        };
        let origin = match connect_origin(req.uri()) {
            Ok(o) => o,
            Err(e) => return self.audit_connect(&principal, "", Err(e)),
        };
        let decision = self
            .egress
            .policy()
            .admits_origin(&principal, &Client::Proxy, &origin)
            .map(|_| ())
            .map_err(EgressError::Denied);
        if decision.is_ok() && self.egress.audit().gate().is_err() {
            return EgressError::AuditUnavailable.to_response(true);
        }
        let resp = self.audit_connect(&principal, &origin.to_string(), decision);
        if resp.status() != StatusCode::OK {
            return resp;
        }
        let host = origin
            .host
            .as_str()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let tls = match ca::server_config_for(&ca, host) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, %origin, "cannot mint a certificate");
                return EgressError::Internal("cannot mint a certificate for the tunnel".into())
                    .to_response(true);
            }
        };
        let proxy = self.clone();
        tokio::spawn(async move {
            if let Err(e) = proxy
                .intercept(req, tls, origin.clone(), principal, expires)
                .await
            {
                tracing::info!(%origin, error = %e, "tunnel ended");
            }
        });
        resp
    }

    /// Audits the CONNECT decision; the response is 200 (empty) when allowed.
    fn audit_connect(
        &self,
        principal: &Principal,
        origin: &str,
        decision: Result<(), EgressError>,
    ) -> Response<BoxBody> {
        let mut entry = Entry::new(Outcome::Allow, "CONNECT", origin, "");
        entry.tenant = Some(principal.tenant.to_string());
        entry.user = Some(principal.user.to_string());
        entry.client = Some(Client::Proxy.to_string());
        let resp = match &decision {
            Ok(()) => {
                entry.status = Some(200);
                let mut resp = Response::new(body::empty());
                *resp.status_mut() = StatusCode::OK;
                resp
            }
            Err(e) => {
                entry.decision = Outcome::Deny;
                entry.reason = Some(match e {
                    EgressError::Denied(d) => d.kind().to_owned(),
                    other => other.code().to_owned(),
                });
                entry.status = Some(e.status().as_u16());
                e.to_response(true)
            }
        };
        match self.egress.audit().record(entry) {
            Ok(_) => resp,
            Err(_) => EgressError::AuditUnavailable.to_response(true),
        }
    }

    /// Terminates TLS inside the upgraded connection and serves HTTP/1.1 or HTTP/2 on it
    /// until the client leaves or the token expires.
    async fn intercept(
        self: Arc<Self>,
        req: Request<Incoming>,
        tls: Arc<rustls::ServerConfig>,
        origin: Origin,
        principal: Principal,
        expires: SystemTime,
    ) -> Result<(), String> {
        // Held until the tunnel ends: the tunnel counts against `max_connections`.
        let mut req = req;
        let _permit = req.extensions_mut().remove::<super::ConnectionPermit>();
        let upgraded = hyper::upgrade::on(req)
            .await
            .map_err(|e| format!("upgrade: {e}"))?;
        let accept = TlsAcceptor::from(tls).accept(TokioIo::new(upgraded));
        let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, accept)
            .await
            .map_err(|_| "TLS handshake timed out".to_owned())?
            .map_err(|e| format!("TLS handshake: {e}"))?;
        let principal = Arc::new(principal);
        let origin = Arc::new(origin);
        let proxy = self.clone();
        let service = service_fn(move |req| {
            let (proxy, principal, origin) = (proxy.clone(), principal.clone(), origin.clone());
            async move { Ok::<_, Infallible>(proxy.inner(req, &principal, &origin).await) }
        });
        // The same limits as the outer proxy connection.
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(super::HEADER_TIMEOUT)
            .max_buf_size(super::MAX_HEADER_BYTES)
            .max_headers(super::MAX_HEADERS);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(super::MAX_HEADER_BYTES as u32);
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let left = expires
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        tokio::select! {
            r = conn => r.map_err(|e| format!("connection: {e}")),
            _ = tokio::time::sleep(left) => Err("the identity token expired; tunnel closed".into()),
        }
    }

    /// One request inside a tunnel: made absolute and handed to the pipeline, bound to the
    /// tunnel's origin.
    async fn inner(
        &self,
        req: Request<Incoming>,
        principal: &Principal,
        origin: &Origin,
    ) -> Response<BoxBody> {
        let (mut parts, body) = req.into_parts();
        // HTTP/2 carries `:authority` in the URI; HTTP/1.1 carries `Host`.
        let authority = parts
            .uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                parts
                    .headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
            });
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let uri = match authority {
            Some(a) => format!("https://{a}{path}"),
            None => format!("{origin}{path}"),
        };
        parts.uri = match uri.parse() {
            Ok(u) => u,
            Err(_) => {
                return EgressError::BadRequest("bad request target inside the tunnel".into())
                    .to_response(true);
            }
        };
        let placeholders = Placeholders::none();
        let call = Call {
            principal,
            client: Client::Proxy,
            invocation: None,
            placeholders: &placeholders,
            tunnel: Some(origin),
        };
        let req = Request::from_parts(parts, body::boxed(body));
        match self.egress.handle(&call, req).await {
            Ok(resp) => resp,
            Err(e) => e.to_response(true),
        }
    }
}

/// The origin a CONNECT names: its `host:port` target, always https. Public only for the fuzz
/// targets in `fuzz/`.
#[doc(hidden)]
pub fn connect_origin(uri: &http::Uri) -> Result<Origin, EgressError> {
    let authority = uri.authority().filter(|a| a.port_u16().is_some());
    let Some(authority) = authority else {
        return Err(EgressError::BadRequest(
            "CONNECT needs a `host:port` target".into(),
        ));
    };
    Origin::from_parts(Scheme::Https, authority.as_str())
        .map_err(|e| EgressError::BadRequest(format!("bad CONNECT target: {e}")))
}
