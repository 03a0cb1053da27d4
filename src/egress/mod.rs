//! The egress pipeline: the one path every outbound request takes, whichever front door it
//! came in by (the forward proxy, the intercepted TLS tunnel, a wasm tool's `wasi:http` call).
//!
//! [`Egress::handle`] runs the steps of DESIGN.md in order, each a named function with its
//! contract documented where it lives:
//!
//! 1. [`normalise`](normalise::normalise) the target;
//! 2. decide ([`PolicySet::decide`]), then take one request from the grant's
//!    [`limits`] for this user;
//! 3. [`clean`](clean::clean) the request;
//! 4. resolve the credential ([`Egress::resolve`]) — only now, after Allow;
//! 5. [`inject`](crate::inject::inject) it;
//! 6. connect ([`connect`]: resolver seam, SSRF guard, TLS) and
//! 7. send, never following redirects;
//! 8. [`scrub`] every injected form of the credential from the response;
//! 9. audit the decision and outcome ([`crate::audit`]).

pub mod body;
mod clean;
pub mod connect;
mod error;
pub mod limits;
pub mod metrics;
// Public only for the fuzz targets in `fuzz/`; not part of the supported API.
#[doc(hidden)]
pub mod normalise;
pub mod scrub;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};

pub use self::body::{BoxBody, BoxError};
pub use self::connect::{AddrClass, ConnectError, Resolver, SystemResolver, classify};
pub use self::error::{EgressError, error_response};
use crate::audit::{AuditLog, Entry, Outcome};
use crate::inject::sigv4::authority as sigv4_authority;
use crate::inject::{self, Injected, oauth2};
use crate::policy::settings::Limits;
use crate::policy::{
    Client, CredentialRef, CredentialScope, Decision, Inject, Origin, PolicySet, Service,
    ServiceName, Target,
};
use crate::principal::Principal;
use crate::secrets::{Namespace, OAuth2Credentials, Secret, SecretError, SecretId, SecretStore};

/// Per-invocation placeholder values, by the service each is scoped to.
#[derive(Debug, Default, Clone)]
pub struct Placeholders {
    entries: Vec<(ServiceName, String)>,
}

impl Placeholders {
    /// No placeholders (the forward proxy).
    pub fn none() -> Self {
        Self::default()
    }

    /// Adds the placeholder for a service.
    pub fn insert(&mut self, service: ServiceName, value: String) {
        self.entries.retain(|(s, _)| *s != service);
        self.entries.push((service, value));
    }

    /// The placeholder scoped to a service.
    pub fn for_service(&self, service: &ServiceName) -> Option<&str> {
        self.entries
            .iter()
            .find(|(s, _)| s == service)
            .map(|(_, v)| v.as_str())
    }

    /// All placeholders with their services.
    pub fn iter(&self) -> impl Iterator<Item = (&ServiceName, &str)> {
        self.entries.iter().map(|(s, v)| (s, v.as_str()))
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Who is calling, bound by the front door from verified identity. Never from the request.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    /// The verified principal.
    pub principal: &'a Principal,
    /// The front door's client (`proxy` or `tool:NAME`).
    pub client: Client,
    /// The tool invocation id, if any.
    pub invocation: Option<&'a str>,
    /// This invocation's placeholders.
    pub placeholders: &'a Placeholders,
    /// For a request inside a CONNECT tunnel: the tunnel's origin, the only one it may target.
    pub tunnel: Option<&'a Origin>,
}

/// Why the pipeline could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A PEM roots file could not be used.
    #[error("TLS roots {path}: {message}")]
    Roots {
        /// The file.
        path: String,
        /// What was wrong.
        message: String,
    },
}

/// How many response searchers (one per credential recently injected) are kept built: about
/// 6 KiB each (`a_kept_searcher_is_small`), so at most ~12 MiB; a credential beyond them pays a
/// searcher build on its responses until it is kept again.
const SEARCHERS_KEPT: usize = 2048;

/// One generation of the policy, with what is built from it. A request runs under the
/// generation it started with, start to end.
pub struct Active {
    /// The policy.
    pub policy: Arc<PolicySet>,
    /// Counts swaps: 1 for the policy behalf started with.
    pub generation: u64,
    clients: HashMap<ServiceName, connect::UpstreamClient>,
}

/// Everything the pipeline needs, passed explicitly (no globals).
pub struct Egress {
    active: std::sync::RwLock<Arc<Active>>,
    /// A candidate policy set decided beside the active one, for the audit record only.
    shadow: std::sync::RwLock<Option<Arc<PolicySet>>>,
    resolver: Arc<dyn Resolver>,
    secrets: Arc<dyn SecretStore>,
    audit: AuditLog,
    overrides: Arc<HashMap<Origin, SocketAddr>>,
    limits: Limits,
    tokens: oauth2::Tokens,
    searchers: scrub::Searchers,
    metrics: metrics::EgressMetrics,
    limiter: limits::Limiter,
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress")
            .field("generation", &self.active().generation)
            .finish_non_exhaustive()
    }
}

fn roots(paths: &[std::path::PathBuf]) -> Result<rustls::RootCertStore, BuildError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut store = rustls::RootCertStore::empty();
    store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for path in paths {
        let err = |message: String| BuildError::Roots {
            path: path.display().to_string(),
            message,
        };
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| err(e.to_string()))? {
            store
                .add(cert.map_err(|e| err(e.to_string()))?)
                .map_err(|e| err(e.to_string()))?;
        }
    }
    Ok(store)
}

impl Egress {
    /// Builds the pipeline: one pooled client per service, with its TLS roots (web PKI,
    /// `[tls] upstream_roots`, the service's `tls_roots`) and SSRF setting.
    pub fn new(
        policy: Arc<PolicySet>,
        secrets: Arc<dyn SecretStore>,
        audit: AuditLog,
        resolver: Arc<dyn Resolver>,
        overrides: HashMap<Origin, SocketAddr>,
    ) -> Result<Self, BuildError> {
        let overrides = Arc::new(overrides);
        let clients = build_clients(&policy, &resolver, &overrides, None)?;
        Ok(Self {
            limits: policy.settings().limits.clone(),
            tokens: oauth2::Tokens::new(secrets.clone()),
            searchers: scrub::Searchers::new(SEARCHERS_KEPT),
            metrics: metrics::EgressMetrics::default(),
            limiter: limits::Limiter::new(),
            active: std::sync::RwLock::new(Arc::new(Active {
                policy,
                generation: 1,
                clients,
            })),
            shadow: std::sync::RwLock::new(None),
            resolver,
            secrets,
            audit,
            overrides,
        })
    }

    /// The generation in force now: requests that start from here on run under it.
    pub fn active(&self) -> Arc<Active> {
        self.active
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The policy in force now.
    pub fn policy(&self) -> Arc<PolicySet> {
        self.active().policy.clone()
    }

    /// Puts `policy` in force for every request that starts from now on; requests in flight
    /// finish under the generation they started with. Clients of services whose connection
    /// settings did not change are kept, with their pooled connections. Returns the new
    /// generation.
    ///
    /// The caller checks that settings which cannot change live (listeners, secrets, limits,
    /// identity) are unchanged; see [`crate::reload`].
    pub fn swap(&self, policy: Arc<PolicySet>) -> Result<u64, BuildError> {
        let old = self.active();
        let clients = build_clients(&policy, &self.resolver, &self.overrides, Some(&old))?;
        let mut active = self.active.write().unwrap_or_else(|e| e.into_inner());
        let generation = active.generation + 1;
        *active = Arc::new(Active {
            policy,
            generation,
            clients,
        });
        Ok(generation)
    }

    /// Puts `shadow` beside the active policy (or removes it) for requests that start from
    /// now on.
    ///
    /// # Security
    ///
    /// The shadow set only decides: its answer is written to the audit record's `shadow`
    /// field where it differs from the active set's. It never changes an outcome, never
    /// resolves or injects a credential and is never consulted to admit a CONNECT tunnel.
    pub fn set_shadow(&self, shadow: Option<Arc<PolicySet>>) {
        *self.shadow.write().unwrap_or_else(|e| e.into_inner()) = shadow;
    }

    /// The shadow policy set, if one is set.
    pub fn shadow(&self) -> Option<Arc<PolicySet>> {
        self.shadow
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// The pipeline's metrics (register them with [`metrics::EgressMetrics::register`]).
    pub fn metrics(&self) -> &metrics::EgressMetrics {
        &self.metrics
    }

    /// The secret store.
    pub fn secrets(&self) -> &dyn SecretStore {
        &*self.secrets
    }

    /// The OAuth2 access token cache.
    pub fn tokens(&self) -> &oauth2::Tokens {
        &self.tokens
    }

    /// The per-grant `rate` and `daily` counters (kept across policy reloads).
    pub fn limiter(&self) -> &limits::Limiter {
        &self.limiter
    }

    /// Sends `req` to one of `service`'s OAuth2 endpoints (token, revocation) through the
    /// service's own client: its TLS roots, SSRF guard and `upstream_timeout`.
    pub async fn oauth2_exchange(
        &self,
        service: &Service,
        url: &Target,
        req: Request<Bytes>,
    ) -> Result<(StatusCode, Bytes), oauth2::TokenError> {
        let active = self.active();
        let client = active.clients.get(&service.name).ok_or_else(|| {
            oauth2::TokenError::Unreachable(format!("no client for service `{}`", service.name))
        })?;
        let endpoint = TokenEndpoint {
            client,
            timeout: self.limits.upstream_timeout,
            origin: &url.origin,
            service: &service.name,
            metrics: &self.metrics,
        };
        oauth2::Exchange::send(&endpoint, req).await
    }

    /// Runs one request through every step. Denials and failures are audited here and
    /// returned as errors for the front door to render.
    pub async fn handle(
        &self,
        call: &Call<'_>,
        req: Request<BoxBody>,
    ) -> Result<Response<BoxBody>, EgressError> {
        let started = Instant::now();
        // This request runs under the policy in force now, whatever reloads meanwhile.
        let active = self.active();
        let (mut parts, body) = req.into_parts();
        let mut entry = Entry::new(Outcome::Deny, parts.method.as_str(), "", "");
        entry.invocation = call.invocation.map(str::to_owned);
        entry.tenant = Some(call.principal.tenant.to_string());
        entry.user = Some(call.principal.user.to_string());
        entry.client = Some(call.client.to_string());

        // 1. Normalise.
        let mut target = match normalise::normalise(&parts) {
            Ok(t) => t,
            Err(e) => return Err(self.refuse(entry, started, e)),
        };
        entry.origin = target.origin.to_string();
        entry.path = target.path.clone();
        entry.override_ = self.overrides.contains_key(&target.origin);
        if let Some(tunnel) = call.tunnel
            && target.origin != *tunnel
        {
            let e = EgressError::Refused {
                message: format!(
                    "inside a tunnel to {tunnel}, a request may only target {tunnel}, not {}",
                    target.origin
                ),
                hint: "open a CONNECT tunnel to each origin you call".into(),
            };
            return Err(self.refuse(entry, started, e));
        }

        // 2. Decide.
        let decision = active
            .policy
            .decide(call.principal, &call.client, &parts.method, &target);
        // A shadow set decides the same request for the audit record only: nothing else
        // depends on its answer.
        if let Some(shadow) = self.shadow() {
            let would = shadow.decide(call.principal, &call.client, &parts.method, &target);
            entry.shadow = match (&decision, would) {
                (Decision::Deny(_), Decision::Allow(_)) => Some("would_allow".into()),
                (Decision::Allow(_), Decision::Deny(_)) => Some("would_deny".into()),
                _ => None,
            };
        }
        let allow = match decision {
            Decision::Allow(a) => a,
            Decision::Deny(d) => return Err(self.refuse(entry, started, EgressError::Denied(d))),
        };
        entry.decision = Outcome::Allow;
        entry.grant = Some(allow.grant.id.clone());
        if self.audit.gate().is_err() {
            return Err(EgressError::AuditUnavailable);
        }
        // The grant's limits for this user, before any credential is touched.
        if let Err(e) = self.limiter.take(call.principal, allow.grant) {
            return Err(self.refuse(entry, started, e));
        }

        // 3. Clean (and refuse a body declared too large before any credential is rendered).
        if let Err(e) = clean::clean(&mut parts, &target, allow.service, call.placeholders) {
            return Err(self.refuse(entry, started, e));
        }
        if content_length(&parts.headers).is_some_and(|n| n > self.limits.max_request_body) {
            let e = EgressError::TooLarge(format!(
                "the request body is larger than max_request_body ({} bytes)",
                self.limits.max_request_body
            ));
            return Err(self.refuse(entry, started, e));
        }

        // The body is buffered when the form signs it, or when an OAuth2 401 may need it
        // sent again; otherwise it streams.
        let upstream = Upstream {
            service: allow.service,
            client: active
                .clients
                .get(&allow.service.name)
                .expect("a client is built for every service of this policy"),
        };
        let form = allow.credential().and(allow.service.inject.as_ref());
        let replay_on_401 = matches!(form, Some(Inject::OAuth2(_))) && is_idempotent(&parts.method);
        let mut outgoing = if form.is_some_and(Inject::signs_body) || replay_on_401 {
            match self.buffer(body).await {
                Ok(bytes) => {
                    frame_buffered(&mut parts.headers, bytes.len());
                    Outgoing::Buffered(bytes)
                }
                Err(e) => return Err(self.refuse(entry, started, e)),
            }
        } else {
            Outgoing::Streaming(Some(body))
        };

        // 4. Resolve and 5. inject, only now that the decision is Allow.
        let mut stored = None;
        let mut injected = Injected::default();
        if let Some(credential) = form.and(allow.credential()) {
            let secret = match self.resolve(call.principal, credential) {
                Ok(s) => s,
                Err(e) => {
                    // A disabled or removed credential takes its cached OAuth2 token with it.
                    if matches!(form, Some(Inject::OAuth2(_))) {
                        self.tokens.forget(&oauth2::Key {
                            id: SecretId::new(
                                namespace(call.principal, credential),
                                credential.name.clone(),
                            ),
                            service: allow.service.name.clone(),
                        });
                    }
                    return Err(self.refuse(entry, started, e));
                }
            };
            injected = match self
                .inject(
                    call,
                    &mut parts,
                    &mut target,
                    upstream,
                    &secret,
                    outgoing.payload(),
                    None,
                )
                .await
            {
                Ok(i) => i,
                Err(e) => return Err(self.refuse(entry, started, e)),
            };
            stored = Some(secret);
        }
        // Named in the record only once it is really on the request.
        entry.credential = allow.credential().map(ToString::to_string);

        // 6. Connect and 7. send: the authorised target is the one sent.
        let uri = match http::Uri::try_from(target.to_string()) {
            Ok(u) => u,
            Err(e) => {
                return Err(self.refuse(entry, started, EgressError::BadRequest(e.to_string())));
            }
        };
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default();
        parts.uri = uri;
        parts.version = http::Version::HTTP_11;
        match HeaderValue::from_str(&authority) {
            Ok(host) => {
                parts.headers.insert(header::HOST, host);
            }
            Err(e) => {
                return Err(self.refuse(entry, started, EgressError::BadRequest(e.to_string())));
            }
        }
        let client = upstream.client;
        // Kept only when a retry may need the head again.
        let retry_head = stored
            .as_ref()
            .filter(|_| replay_on_401)
            .map(|s| (copy_parts(&parts), s));
        let body = outgoing.body(self.request_limit());
        let mut resp = match self.send(client, parts, body, &target.origin).await {
            Ok(resp) => resp,
            Err(e) => return Err(self.refuse(entry, started, e)),
        };
        // An OAuth2 token the upstream refuses gets one refresh and one retry, for methods
        // that may be repeated.
        if resp.status() == StatusCode::UNAUTHORIZED
            && let Some((mut parts, secret)) = retry_head
        {
            let refused = parts
                .headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
                .map(|t| Secret::new(t.to_vec()));
            let payload = outgoing.payload();
            let mut retried = match self
                .inject(
                    call,
                    &mut parts,
                    &mut target,
                    upstream,
                    secret,
                    payload,
                    refused.as_ref(),
                )
                .await
            {
                Ok(i) => i,
                Err(e) => return Err(self.refuse(entry, started, e)),
            };
            // The refused token is scrubbed too.
            for form in injected.forms() {
                retried.also(form);
            }
            injected = retried;
            drop(resp);
            let body = outgoing.body(self.request_limit());
            resp = match self.send(client, parts, body, &target.origin).await {
                Ok(resp) => resp,
                Err(e) => return Err(self.refuse(entry, started, e)),
            };
        }
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let e = EgressError::UpstreamFailed("the upstream switched protocols (101)".into());
            return Err(self.refuse(entry, started, e));
        }
        let (mut resp_parts, resp_body) = resp.into_parts();
        if content_length(&resp_parts.headers).is_some_and(|n| n > self.limits.max_response_body) {
            let e = EgressError::UpstreamFailed(format!(
                "the response from {} is larger than max_response_body ({} bytes)",
                target.origin, self.limits.max_response_body
            ));
            return Err(self.refuse(entry, started, e));
        }

        // 8. Scrub, on the headers as received (it must see a `Transfer-Encoding`); it drops
        // `Content-Length` from a body it rewrites, so the size check above comes first.
        let (resp_body, scrubbed) = match scrub::scrub_response(
            &mut resp_parts,
            body::boxed(resp_body),
            &injected,
            allow.service,
            &self.searchers,
        ) {
            Ok(scrubbed) => scrubbed,
            Err(e) => {
                let e = EgressError::UpstreamFailed(format!("{e} (from {})", target.origin));
                return Err(self.refuse(entry, started, e));
            }
        };
        strip_hop_by_hop(&mut resp_parts.headers);

        // 9. Audit and count, when the response body has ended (with its size and outcome).
        entry.status = Some(resp_parts.status.as_u16());
        self.metrics
            .latency(&active.policy, &entry.origin, started.elapsed());
        let audit = self.audit.clone();
        let (metrics, policy) = (self.metrics.clone(), active.policy.clone());
        let metered = body::Metered::new(
            resp_body,
            self.limits.max_response_body,
            self.limits.upstream_timeout,
            move |bytes, end| {
                entry.bytes = bytes;
                entry.scrubbed = scrubbed.get();
                entry.duration_ms = started.elapsed().as_millis() as u64;
                if end != body::End::Complete {
                    entry.decision = Outcome::Error;
                    entry.reason = Some(match end {
                        body::End::TooLarge => "response_too_large".into(),
                        body::End::Failed(_) => "upstream_body_failed".into(),
                        _ => "aborted".into(),
                    });
                }
                metrics.count(&policy, &entry);
                if let Err(e) = audit.record(entry) {
                    tracing::error!(error = %e, "audit record for a completed request could not be written");
                }
            },
        );
        Ok(Response::from_parts(resp_parts, metered.boxed_unsync()))
    }

    fn request_limit(&self) -> usize {
        usize::try_from(self.limits.max_request_body).unwrap_or(usize::MAX)
    }

    /// Reads the whole request body, up to `max_request_body`, within `upstream_timeout`.
    async fn buffer(&self, body: BoxBody) -> Result<Bytes, EgressError> {
        let limit = self.request_limit();
        match tokio::time::timeout(self.limits.upstream_timeout, read_capped(body, limit)).await {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(None)) => Err(EgressError::TooLarge(format!(
                "the request body is larger than max_request_body ({limit} bytes)"
            ))),
            Ok(Err(Some(e))) => Err(EgressError::BadRequest(format!(
                "the request body could not be read: {e}"
            ))),
            Err(_) => Err(EgressError::BadRequest(format!(
                "the request body did not arrive within {:?}",
                self.limits.upstream_timeout
            ))),
        }
    }

    /// Step 5 for one attempt: the value to inject (for OAuth2, an access token for the
    /// stored credential; `rejected` is a token the upstream refused), placed by the
    /// service's form.
    #[allow(clippy::too_many_arguments)]
    async fn inject(
        &self,
        call: &Call<'_>,
        parts: &mut http::request::Parts,
        target: &mut Target,
        upstream: Upstream<'_>,
        stored: &Secret,
        payload: inject::Payload<'_>,
        rejected: Option<&Secret>,
    ) -> Result<Injected, EgressError> {
        let service = upstream.service;
        let (Some(credential), Some(form)) = (&service.credential, &service.inject) else {
            return Ok(Injected::default());
        };
        let unusable = |why: String| EgressError::Refused {
            message: format!(
                "the request is allowed, but credential `{credential}` cannot be used: {why}"
            ),
            hint: format!(
                "an operator can store it again, in the shape the `{}` form needs (see \
                 docs/policies.md), with `behalf secret set {}/{}`",
                form.kind(),
                namespace(call.principal, credential),
                credential.name
            ),
        };
        let Inject::OAuth2(oauth2) = form else {
            return inject::inject(parts, target, form, stored, payload, SystemTime::now())
                .map_err(|e| unusable(e.to_string()));
        };
        let key = oauth2::Key {
            id: SecretId::new(
                namespace(call.principal, credential),
                credential.name.clone(),
            ),
            service: service.name.clone(),
        };
        let endpoint = TokenEndpoint {
            client: upstream.client,
            timeout: self.limits.upstream_timeout,
            origin: &oauth2.token_url.origin,
            service: &service.name,
            metrics: &self.metrics,
        };
        let issued = self
            .tokens
            .access_token(&key, stored, oauth2, rejected, &endpoint)
            .await
            .map_err(|e| token_error(e, service, &key, unusable))?;
        let mut injected = inject::inject(
            parts,
            target,
            form,
            &issued.access_token,
            payload,
            SystemTime::now(),
        )
        .map_err(|e| unusable(e.to_string()))?;
        // Never sent upstream, but scrubbed like any injected form should one come back.
        if let Ok(creds) = OAuth2Credentials::parse(stored) {
            injected.also(creds.client_secret.expose());
            if let Some(refresh) = &creds.refresh_token {
                injected.also(refresh.expose());
            }
        }
        if let Some(rotated) = &issued.refresh_token {
            injected.also(rotated.expose());
        }
        Ok(injected)
    }

    /// Sends one attempt, within `upstream_timeout`.
    async fn send(
        &self,
        client: &connect::UpstreamClient,
        parts: http::request::Parts,
        body: BoxBody,
        origin: &Origin,
    ) -> Result<Response<hyper::body::Incoming>, EgressError> {
        let sent = tokio::time::timeout(
            self.limits.upstream_timeout,
            client.request(Request::from_parts(parts, body)),
        )
        .await;
        match sent {
            Err(_) => Err(EgressError::UpstreamTimeout(format!(
                "no response from {origin} within {:?}",
                self.limits.upstream_timeout
            ))),
            Ok(Err(e)) => Err(upstream_error(&e, origin)),
            Ok(Ok(resp)) => Ok(resp),
        }
    }

    /// Step 4: the credential in the verified principal's namespace.
    ///
    /// # Security
    ///
    /// The namespace comes only from the principal the front door bound to the call.
    fn resolve(
        &self,
        principal: &Principal,
        credential: &CredentialRef,
    ) -> Result<Secret, EgressError> {
        let namespace = match credential.scope {
            CredentialScope::User => {
                Namespace::User(principal.tenant.clone(), principal.user.clone())
            }
            CredentialScope::Tenant => Namespace::Tenant(principal.tenant.clone()),
        };
        let missing = |state: &str| EgressError::Refused {
            message: format!(
                "the request is allowed, but credential `{credential}` is {state} for this {}",
                match credential.scope {
                    CredentialScope::User => "user",
                    CredentialScope::Tenant => "tenant",
                }
            ),
            hint: format!(
                "connect the account, or have an operator run `behalf secret set {namespace}/{}`",
                credential.name
            ),
        };
        match self.secrets.get(&namespace, &credential.name) {
            Ok(Some(secret)) => Ok(secret),
            Ok(None) => Err(missing("not stored")),
            Err(SecretError::Disabled { .. }) => Err(missing("disabled")),
            Err(e) => Err(EgressError::Internal(format!("secret store: {e}"))),
        }
    }

    /// Audits a refused or failed request; if even that fails, the caller gets 503.
    fn refuse(&self, mut entry: Entry, started: Instant, err: EgressError) -> EgressError {
        if matches!(
            err,
            EgressError::Denied(_)
                | EgressError::BadRequest(_)
                | EgressError::TooLarge(_)
                | EgressError::Refused { .. }
                | EgressError::RateLimited { .. }
        ) {
            entry.decision = Outcome::Deny;
        } else if entry.decision == Outcome::Allow {
            entry.decision = Outcome::Error;
        }
        entry.reason = Some(match &err {
            EgressError::Denied(d) => d.kind().to_owned(),
            other => other.code().to_owned(),
        });
        entry.status = Some(err.status().as_u16());
        entry.duration_ms = started.elapsed().as_millis() as u64;
        let policy = self.policy();
        self.metrics.count(&policy, &entry);
        if matches!(err, EgressError::RateLimited { .. }) {
            self.metrics.rate_limited(&policy, &entry);
        }
        self.metrics
            .latency(&policy, &entry.origin, started.elapsed());
        match self.audit.record(entry) {
            Ok(_) => err,
            Err(e) => {
                tracing::error!(error = %e, "audit log unavailable; failing closed");
                EgressError::AuditUnavailable
            }
        }
    }
}

/// Maps a client error to whose fault it was, keeping the SSRF refusal a 403 and an
/// oversized request body a 413. The caller (possibly a hostile tool) gets the kind of
/// failure and the origin; addresses and TLS details go to behalf's log.
fn upstream_error(e: &hyper_util::client::legacy::Error, origin: &Origin) -> EgressError {
    tracing::warn!(%origin, error = %error_chain(e), "upstream request failed");
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.downcast_ref::<http_body_util::LengthLimitError>()
            .is_some()
        {
            return EgressError::TooLarge(
                "the request body is larger than max_request_body".into(),
            );
        }
        if let Some(c) = s.downcast_ref::<ConnectError>() {
            return match c {
                ConnectError::Refused { why, .. } => EgressError::Refused {
                    message: format!("{origin} resolves only to refused addresses: {why}"),
                    hint: "behalf refuses to connect to private or metadata addresses".into(),
                },
                ConnectError::Timeout(_) => {
                    EgressError::UpstreamTimeout(format!("connecting to {origin} timed out"))
                }
                ConnectError::Resolve { .. } => {
                    EgressError::UpstreamFailed(format!("cannot resolve the host of {origin}"))
                }
                ConnectError::Tls { .. } => EgressError::UpstreamFailed(format!(
                    "TLS with {origin} failed: its certificate is not trusted, expired or for \
                     another name"
                )),
                _ => EgressError::UpstreamFailed(format!("cannot connect to {origin}")),
            };
        }
        source = s.source();
    }
    EgressError::UpstreamFailed(format!(
        "the connection to {origin} failed before a complete response"
    ))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// A well-formed `Content-Length`, if any.
fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Removes hop-by-hop response headers (and those `Connection` names).
fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    let named: Vec<header::HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| header::HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::UPGRADE,
        header::TRANSFER_ENCODING,
        header::TE,
        header::TRAILER,
        header::PROXY_AUTHENTICATE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// The namespace a credential is resolved in for a principal.
///
/// # Security
///
/// Built only from the verified principal the front door bound to the call.
fn namespace(principal: &Principal, credential: &CredentialRef) -> Namespace {
    match credential.scope {
        CredentialScope::User => Namespace::User(principal.tenant.clone(), principal.user.clone()),
        CredentialScope::Tenant => Namespace::Tenant(principal.tenant.clone()),
    }
}

/// The request body on its way out.
enum Outgoing {
    /// Read whole (a form signs it, or it may be sent twice).
    Buffered(Bytes),
    /// Streamed through once, capped at `max_request_body`.
    Streaming(Option<BoxBody>),
}

impl Outgoing {
    /// What the inject step sees of the body.
    fn payload(&self) -> inject::Payload<'_> {
        match self {
            Self::Buffered(bytes) => inject::Payload::Buffered(bytes),
            Self::Streaming(_) => inject::Payload::Streaming,
        }
    }

    /// The body for one attempt. A streaming body can be taken once; only buffered bodies
    /// are ever sent twice.
    fn body(&mut self, limit: usize) -> BoxBody {
        match self {
            Self::Buffered(bytes) => Full::new(bytes.clone())
                .map_err(body::empty_error)
                .boxed_unsync(),
            Self::Streaming(body) => match body.take() {
                Some(b) => Limited::new(b, limit)
                    .map_err(|e| -> BoxError { e })
                    .boxed_unsync(),
                None => body::empty(),
            },
        }
    }
}

/// Methods whose requests may be repeated (RFC 9110 section 9.2.2).
fn is_idempotent(method: &http::Method) -> bool {
    use http::Method;
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::PUT,
        Method::DELETE,
    ]
    .contains(method)
}

/// Frames a buffered body by its length: no `Transfer-Encoding`, and `Content-Length` unless
/// an empty body had none.
fn frame_buffered(headers: &mut http::HeaderMap, len: usize) {
    headers.remove(header::TRANSFER_ENCODING);
    if len > 0 || headers.contains_key(header::CONTENT_LENGTH) {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
}

/// A copy of the request head, for an attempt (a retry sends the head again).
fn copy_parts(parts: &http::request::Parts) -> http::request::Parts {
    let mut copy = Request::new(()).into_parts().0;
    copy.method = parts.method.clone();
    copy.uri = parts.uri.clone();
    copy.version = parts.version;
    copy.headers = parts.headers.clone();
    copy
}

/// A service of the active generation and its client.
#[derive(Clone, Copy)]
struct Upstream<'a> {
    service: &'a Service,
    client: &'a connect::UpstreamClient,
}

/// The token endpoint of a service, reached through the service's own client.
struct TokenEndpoint<'a> {
    client: &'a connect::UpstreamClient,
    timeout: std::time::Duration,
    origin: &'a Origin,
    service: &'a ServiceName,
    metrics: &'a metrics::EgressMetrics,
}

impl oauth2::Exchange for TokenEndpoint<'_> {
    fn send(&self, req: Request<Bytes>) -> oauth2::Exchanged<'_> {
        Box::pin(async move {
            let result = self.exchange(req).await;
            let outcome = match &result {
                Ok((status, _)) if status.is_success() => "ok",
                Ok(_) => "rejected",
                Err(_) => "failed",
            };
            self.metrics.exchange(self.service, outcome);
            result
        })
    }
}

impl TokenEndpoint<'_> {
    async fn exchange(
        &self,
        req: Request<Bytes>,
    ) -> Result<(StatusCode, Bytes), oauth2::TokenError> {
        let unreachable = |e: EgressError| oauth2::TokenError::Unreachable(e.to_string());
        let (mut parts, bytes) = req.into_parts();
        let host = sigv4_authority(self.origin);
        parts.headers.insert(
            header::HOST,
            HeaderValue::from_str(&host)
                .map_err(|e| unreachable(EgressError::BadRequest(e.to_string())))?,
        );
        let body = Full::new(bytes).map_err(body::empty_error).boxed_unsync();
        let exchange = async {
            let resp = self
                .client
                .request(Request::from_parts(parts, body))
                .await
                .map_err(|e| unreachable(upstream_error(&e, self.origin)))?;
            let status = resp.status();
            let body = read_capped(resp.into_body(), oauth2::MAX_RESPONSE)
                .await
                .map_err(|_| {
                    oauth2::TokenError::Unreachable(format!(
                        "the answer from {} ended early or is over {} bytes",
                        self.origin,
                        oauth2::MAX_RESPONSE
                    ))
                })?;
            Ok((status, body))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(oauth2::TokenError::Unreachable(format!(
                    "no answer from {} within {:?}",
                    self.origin, self.timeout
                )))
            })
    }
}

/// An OAuth2 failure as the caller sees it: the service and what went wrong, and what can be
/// done; never the token endpoint's own words.
fn token_error(
    e: oauth2::TokenError,
    service: &Service,
    key: &oauth2::Key,
    unusable: impl FnOnce(String) -> EgressError,
) -> EgressError {
    use oauth2::TokenError;
    let hint = match &e {
        TokenError::Credential(why) => return unusable(why.clone()),
        TokenError::Rejected {
            grant: "refresh_token",
            code: Some("invalid_grant"),
            ..
        } => format!(
            "the refresh token was revoked, expired or already used: the user must connect \
             the account again (an operator can store a new one with `behalf secret set {}`)",
            key.id
        ),
        TokenError::Rejected {
            code: Some("invalid_client" | "unauthorized_client"),
            ..
        } => format!(
            "the token endpoint does not accept the client id and secret: an operator can \
             store the right ones with `behalf secret set {}`",
            key.id
        ),
        _ => "the token endpoint did not issue a token; try again later (an operator can find \
              details in behalf's log)"
            .to_owned(),
    };
    tracing::warn!(service = %service.name, credential = %key.id, error = %e,
        "no OAuth2 access token");
    EgressError::TokenEndpoint {
        message: format!("service `{}`: {e}", service.name),
        hint,
    }
}

/// Reads a whole body of at most `limit` bytes: `Err(None)` past the limit, `Err(Some(e))`
/// if the body fails.
async fn read_capped<B>(mut body: B, limit: usize) -> Result<Bytes, Option<B::Error>>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.map_err(Some)?.into_data() {
            if out.len() + data.len() > limit {
                return Err(None);
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}

/// One pooled client per service of `policy`, reusing `old`'s client for a service whose
/// connection settings (TLS roots, SSRF guard) are unchanged.
fn build_clients(
    policy: &PolicySet,
    resolver: &Arc<dyn Resolver>,
    overrides: &Arc<HashMap<Origin, SocketAddr>>,
    old: Option<&Active>,
) -> Result<HashMap<ServiceName, connect::UpstreamClient>, BuildError> {
    let settings = policy.settings();
    let mut clients = HashMap::new();
    for service in policy.services() {
        let unchanged = old.and_then(|old| {
            let before = old
                .policy
                .services()
                .iter()
                .find(|s| s.name == service.name)?;
            let same = before.tls_roots == service.tls_roots
                && before.allow_private_ips == service.allow_private_ips
                && old.policy.settings().upstream_roots == settings.upstream_roots;
            same.then(|| old.clients.get(&service.name).cloned())?
        });
        if let Some(client) = unchanged {
            clients.insert(service.name.clone(), client);
            continue;
        }
        let mut paths = settings.upstream_roots.clone();
        paths.extend(service.tls_roots.iter().cloned());
        let tls = connect::tls_config(roots(&paths)?).map_err(|e| BuildError::Roots {
            path: String::new(),
            message: e.to_string(),
        })?;
        let connector = connect::Connector::new(
            resolver.clone(),
            overrides.clone(),
            service.allow_private_ips,
            tls,
            settings.limits.upstream_timeout,
        );
        clients.insert(service.name.clone(), connect::client(connector));
    }
    Ok(clients)
}
