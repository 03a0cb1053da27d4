//! Account connect: end users authorise an `oauth2` service for themselves (the authorization
//! code grant with PKCE, RFC 6749 section 4.1 and RFC 7636), list their connections and remove
//! them. No secret passes through the agent or a tool: the user's browser carries only a
//! `state` and the provider's one-time `code`, and behalf exchanges the code itself.
//!
//! 1. [`Accounts::start`] (identity token required): a fresh `state` bound server-side to the
//!    principal, the service, a PKCE verifier, the exact redirect URI and an expiry; the
//!    caller gets the provider's authorization URL with the state and the S256 challenge.
//! 2. [`Accounts::finish`] (the provider's redirect): the state is consumed (single use, even
//!    when a later step fails), checked for expiry and service, the code exchanged with the
//!    verifier and the same redirect URI, and the user's credential stored in *the state's*
//!    principal's namespace; the access token is cached for the next call.
//! 3. [`Accounts::list`] and [`Accounts::disconnect`] (identity token required).
//!
//! # Security
//!
//! - The namespace the tokens land in comes from the state, which only [`Accounts::start`]
//!   creates, for the verified principal that asked; a callback presenting another principal's
//!   identity is refused. The code is bound to the PKCE challenge of the flow that started it,
//!   so a code from one flow cannot complete another.
//! - States live in this process's memory (at most [`MAX_PENDING_PER_USER`] per user): a
//!   callback must reach the replica that started the flow.
//! - Every completed, refused or failed callback and every disconnect is audited, naming the
//!   credential and never a value.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tokio::time::Instant;
use zeroize::Zeroizing;

use crate::audit::{Entry, Outcome};
use crate::egress::Egress;
use crate::inject::oauth2::{self, TokenError};
use crate::policy::service::{ConnectForm, OAuth2Form};
use crate::policy::{CredentialScope, Inject, PolicySet, Service, ServiceName};
use crate::principal::Principal;
use crate::secrets::{Namespace, OAuth2Credentials, SecretError, SecretId};

/// How long a started flow may take to come back.
pub const STATE_TTL: Duration = Duration::from_secs(600);

/// Flows one user may have open at once.
pub const MAX_PENDING_PER_USER: usize = 16;

/// Flows open at once, in all.
const MAX_PENDING: usize = 100_000;

/// Why a connect step failed. Never contains a token, a code or a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// No service of that name.
    #[error("no service named `{0}`")]
    UnknownService(String),
    /// The service has no `authorize_url`.
    #[error("service `{0}` does not offer account connect")]
    NotConnectable(ServiceName),
    /// No grant lets this principal use the service.
    #[error("no grant lets you use service `{0}`, so there is nothing to connect it for")]
    NotGranted(ServiceName),
    /// The tenant's app credential is missing or malformed.
    #[error("service `{service}` cannot be connected: the app credential `{id}` is {why}")]
    NoApp {
        /// The service.
        service: ServiceName,
        /// The tenant credential that should hold the app's client id and secret.
        id: SecretId,
        /// What is wrong with it.
        why: String,
    },
    /// Too many flows open.
    #[error("too many account connections are being started; finish or wait for one")]
    TooManyPending,
    /// The callback's state is unknown, used, expired or for another service.
    #[error("this sign-in link is {0}; start connecting the account again")]
    BadState(&'static str),
    /// The callback carried another principal's identity.
    #[error("this sign-in was started by another user")]
    WrongUser,
    /// The provider sent the user back without a code (consent refused).
    #[error("service `{service}` was not connected: the provider answered `{error}`")]
    Declined {
        /// The service.
        service: ServiceName,
        /// The provider's error code (a registered one, or `error`).
        error: &'static str,
    },
    /// The provider's token endpoint refused or failed.
    #[error("service `{service}`: {error}")]
    Provider {
        /// The service.
        service: ServiceName,
        /// What the endpoint did.
        error: TokenError,
    },
    /// The provider issued no refresh token, so the connection could not outlive the token.
    #[error(
        "service `{0}` was not connected: the provider issued no refresh token (for Google, set \
         authorize_params = {{ access_type = \"offline\", prompt = \"consent\" }})"
    )]
    NoRefreshToken(ServiceName),
    /// Nothing is connected for this user and service.
    #[error("service `{0}` is not connected for you")]
    NotConnected(ServiceName),
    /// The secret store failed or is read-only.
    #[error("the secret store: {0}")]
    Store(SecretError),
    /// The audit log cannot be written: fail closed.
    #[error("the audit log cannot be written")]
    AuditUnavailable,
}

impl ConnectError {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Self::UnknownService(_) | Self::NotConnected(_) => 404,
            Self::NotConnectable(_)
            | Self::BadState(_)
            | Self::Declined { .. }
            | Self::NoRefreshToken(_) => 400,
            Self::NotGranted(_) | Self::NoApp { .. } | Self::WrongUser => 403,
            Self::TooManyPending => 429,
            Self::Provider { error, .. } => match error {
                TokenError::Rejected { status, .. } if (400..500).contains(status) => 400,
                _ => 502,
            },
            Self::Store(SecretError::ReadOnly { .. }) => 409,
            Self::Store(_) => 500,
            Self::AuditUnavailable => 503,
        }
    }

    /// The machine-readable code.
    pub fn code(&self) -> &'static str {
        match self.status() {
            404 if matches!(self, Self::NotConnected(_)) => "not_connected",
            404 => "unknown_service",
            400 => "bad_request",
            403 => "egress_denied",
            409 => "read_only",
            429 => "rate_limited",
            502 => "upstream_failed",
            503 => "unavailable",
            _ => "internal",
        }
    }

    /// What the caller can do.
    pub fn hint(&self) -> String {
        match self {
            Self::UnknownService(_) => "GET /v1/connections lists what you can connect".into(),
            Self::NotConnectable(_) => {
                "only services whose oauth2 form sets `authorize_url` can be connected".into()
            }
            Self::NotGranted(_) => "an operator must grant you the service first".into(),
            Self::NoApp { id, .. } => format!(
                "an operator must store the app's {{\"client_id\", \"client_secret\"}} with \
                 `behalf secret set {id}`"
            ),
            Self::TooManyPending => "try again in a few minutes".into(),
            Self::BadState(_) | Self::Declined { .. } | Self::WrongUser => {
                "start again with GET /v1/connect/{service}".into()
            }
            Self::Provider { error, .. } => match error {
                TokenError::Rejected { .. } => "start again with GET /v1/connect/{service}; \
                    if it keeps failing, the app's redirect URI or client may be misconfigured"
                    .into(),
                _ => "the provider did not answer properly; try again later".into(),
            },
            Self::NoRefreshToken(_) => {
                "an operator must make the provider issue refresh tokens".into()
            }
            Self::NotConnected(_) => "connect it with GET /v1/connect/{service}".into(),
            Self::Store(_) => "an operator can find details in behalf's log".into(),
            Self::AuditUnavailable => {
                "an operator must make the audit log writable (disk full?)".into()
            }
        }
    }
}

/// A started flow: where to send the user.
pub struct Started {
    /// The service.
    pub service: ServiceName,
    /// The provider's authorization URL, with state and PKCE challenge.
    pub authorize_url: String,
    /// How long the flow may take.
    pub expires_in: Duration,
}

impl std::fmt::Debug for Started {
    /// Leaves out the URL: it carries the flow's single-use `state`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Started")
            .field("service", &self.service)
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// A completed flow.
#[derive(Debug)]
pub struct Connected {
    /// The service.
    pub service: ServiceName,
    /// Whose account it is.
    pub principal: Principal,
}

/// What [`Accounts::list`] reports for one connectable service: never a value.
#[derive(Debug)]
pub struct Connection {
    /// The service.
    pub service: ServiceName,
    /// The credential, e.g. `user:google`.
    pub credential: String,
    /// Whether a credential is stored for this user.
    pub connected: bool,
    /// When it was last stored, where the backend knows.
    pub updated: Option<SystemTime>,
    /// How long the cached access token is still used, if one is cached.
    pub access_token_expires_in: Option<Duration>,
}

/// A removed connection.
#[derive(Debug)]
pub struct Disconnected {
    /// The service.
    pub service: ServiceName,
    /// Whether the provider confirmed the revocation (`None`: no `revoke_url`).
    pub revoked: Option<bool>,
}

struct Pending {
    principal: Principal,
    service: ServiceName,
    verifier: Zeroizing<String>,
    redirect_uri: String,
    expires: Instant,
}

/// The account-connect flows of one process.
#[derive(Default)]
pub struct Accounts {
    pending: Mutex<HashMap<String, Pending>>,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts").finish_non_exhaustive()
    }
}

/// A connectable service by name: its oauth2 form and connect settings.
fn connectable<'a>(
    policy: &'a PolicySet,
    name: &str,
) -> Result<(&'a Service, &'a OAuth2Form, &'a ConnectForm), ConnectError> {
    let service = policy
        .services()
        .iter()
        .find(|s| s.name.as_str() == name)
        .ok_or_else(|| ConnectError::UnknownService(name.chars().take(64).collect()))?;
    match &service.inject {
        Some(Inject::OAuth2(form)) => match &form.connect {
            Some(connect) => Ok((service, form, connect)),
            None => Err(ConnectError::NotConnectable(service.name.clone())),
        },
        _ => Err(ConnectError::NotConnectable(service.name.clone())),
    }
}

/// The user's credential id for a connectable service.
fn user_credential(service: &Service, principal: &Principal) -> Option<SecretId> {
    let credential = service.credential.as_ref()?;
    (credential.scope == CredentialScope::User).then(|| {
        SecretId::new(
            Namespace::User(principal.tenant.clone(), principal.user.clone()),
            credential.name.clone(),
        )
    })
}

/// The tenant's app client credentials for a connectable service.
fn app_client(
    egress: &Egress,
    service: &Service,
    connect: &ConnectForm,
    principal: &Principal,
) -> Result<OAuth2Credentials, ConnectError> {
    let id = SecretId::new(
        Namespace::Tenant(principal.tenant.clone()),
        connect.client.clone(),
    );
    let no_app = |why: String| ConnectError::NoApp {
        service: service.name.clone(),
        id: id.clone(),
        why,
    };
    match egress.secrets().get(&id.namespace, &id.name) {
        Ok(Some(value)) => OAuth2Credentials::parse(&value).map_err(|e| {
            no_app(format!(
                "not a {{\"client_id\", \"client_secret\"}} JSON: {e}"
            ))
        }),
        Ok(None) => Err(no_app("not stored".into())),
        Err(SecretError::Disabled { .. }) => Err(no_app("disabled".into())),
        Err(e) => Err(ConnectError::Store(e)),
    }
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("the system random source is available");
    URL_SAFE_NO_PAD.encode(bytes)
}

fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ))
}

impl Accounts {
    /// Starts connecting `service` for `principal`: a fresh state and the provider URL.
    pub fn start(
        &self,
        egress: &Egress,
        principal: &Principal,
        service: &str,
    ) -> Result<Started, ConnectError> {
        let policy = egress.policy();
        let (service, form, connect) = connectable(&policy, service)?;
        if !policy.grants_service(principal, &service.name) {
            return Err(ConnectError::NotGranted(service.name.clone()));
        }
        let client = app_client(egress, service, connect, principal)?;
        let client_id = client
            .client_id
            .expose_str()
            .ok_or_else(|| ConnectError::NoApp {
                service: service.name.clone(),
                id: SecretId::new(
                    Namespace::Tenant(principal.tenant.clone()),
                    connect.client.clone(),
                ),
                why: "not UTF-8".into(),
            })?;

        let state = random_token();
        let verifier = Zeroizing::new(random_token());
        let redirect_uri = connect.redirect_uri(&service.name);
        let mut query = form_urlencoded::Serializer::new(String::new());
        query
            .append_pair("response_type", "code")
            .append_pair("client_id", client_id)
            .append_pair("redirect_uri", &redirect_uri);
        if !form.scopes.is_empty() {
            query.append_pair("scope", &form.scopes.join(" "));
        }
        query
            .append_pair("state", &state)
            .append_pair("code_challenge", &challenge(&verifier))
            .append_pair("code_challenge_method", "S256");
        for (k, v) in &connect.authorize_params {
            query.append_pair(k, v);
        }
        let mut url = connect.authorize_url.clone();
        let query = query.finish();
        url.query = Some(match url.query.take() {
            Some(q) if !q.is_empty() => format!("{q}&{query}"),
            _ => query,
        });

        let now = Instant::now();
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.retain(|_, p| p.expires > now);
        let mine = pending
            .values()
            .filter(|p| {
                p.principal.tenant == principal.tenant && p.principal.user == principal.user
            })
            .count();
        if mine >= MAX_PENDING_PER_USER || pending.len() >= MAX_PENDING {
            return Err(ConnectError::TooManyPending);
        }
        pending.insert(
            state,
            Pending {
                principal: principal.clone(),
                service: service.name.clone(),
                verifier,
                redirect_uri,
                expires: now + STATE_TTL,
            },
        );
        Ok(Started {
            service: service.name.clone(),
            authorize_url: url.to_string(),
            expires_in: STATE_TTL,
        })
    }

    /// Completes a flow from the provider's redirect (`query` is the callback's query string).
    /// `caller` is the identity the callback presented, if any: it must be the flow's.
    pub async fn finish(
        &self,
        egress: &Egress,
        service: &str,
        query: &str,
        caller: Option<&Principal>,
    ) -> Result<Connected, ConnectError> {
        let params: HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let path = format!(
            "/v1/connect/{}/callback",
            service.chars().take(64).collect::<String>()
        );
        let pending = params.get("state").and_then(|state| {
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(state)
        });
        let Some(pending) = pending else {
            let e = ConnectError::BadState("unknown or already used");
            audit(egress, None, "GET", &path, None, Err(&e))?;
            return Err(e);
        };
        let principal = pending.principal.clone();
        let flow_service = pending.service.clone();
        let result = self
            .exchange(egress, service, &params, pending, caller)
            .await;
        let credential = connectable(&egress.policy(), service)
            .ok()
            .and_then(|(s, _, _)| s.credential.as_ref().map(ToString::to_string));
        let outcome = result.as_ref().map(|()| 200);
        audit(egress, Some(&principal), "GET", &path, credential, outcome)?;
        result.map(|()| Connected {
            service: flow_service,
            principal,
        })
    }

    /// The connectable services `principal` may use, and whether each is connected.
    pub async fn list(
        &self,
        egress: &Egress,
        principal: &Principal,
    ) -> Result<Vec<Connection>, ConnectError> {
        let stored = egress
            .secrets()
            .list(Some(&principal.tenant))
            .map_err(ConnectError::Store)?;
        let mut out = Vec::new();
        let policy = egress.policy();
        for service in policy.services() {
            let Some(Inject::OAuth2(form)) = &service.inject else {
                continue;
            };
            if form.connect.is_none() {
                continue;
            }
            if !policy.grants_service(principal, &service.name) {
                continue;
            }
            let (Some(id), Some(credential)) =
                (user_credential(service, principal), &service.credential)
            else {
                continue;
            };
            let info = stored.iter().find(|i| i.id == id);
            let key = oauth2::Key {
                id,
                service: service.name.clone(),
            };
            out.push(Connection {
                service: service.name.clone(),
                credential: credential.to_string(),
                connected: info.is_some_and(|i| i.enabled),
                updated: info.and_then(|i| i.updated),
                access_token_expires_in: match info {
                    Some(_) => egress.tokens().expires_in(&key).await,
                    None => None,
                },
            });
        }
        Ok(out)
    }

    /// Revokes (where the provider offers it) and deletes `principal`'s connection to
    /// `service`, and drops its cached access token.
    pub async fn disconnect(
        &self,
        egress: &Egress,
        principal: &Principal,
        service: &str,
    ) -> Result<Disconnected, ConnectError> {
        let path = format!(
            "/v1/connections/{}",
            service.chars().take(64).collect::<String>()
        );
        let result = self.remove(egress, principal, service).await;
        let credential = connectable(&egress.policy(), service)
            .ok()
            .and_then(|(s, _, _)| s.credential.as_ref().map(ToString::to_string));
        let outcome = result.as_ref().map(|_| 200);
        audit(
            egress,
            Some(principal),
            "DELETE",
            &path,
            credential,
            outcome,
        )?;
        result
    }

    async fn remove(
        &self,
        egress: &Egress,
        principal: &Principal,
        service: &str,
    ) -> Result<Disconnected, ConnectError> {
        let policy = egress.policy();
        let (service, form, connect) = connectable(&policy, service)?;
        let id = user_credential(service, principal)
            .ok_or_else(|| ConnectError::NotConnectable(service.name.clone()))?;
        let stored = match egress.secrets().get(&id.namespace, &id.name) {
            Ok(Some(v)) => Some(v),
            Ok(None) => return Err(ConnectError::NotConnected(service.name.clone())),
            // A disabled credential is still removed; it is not revoked (it is not read).
            Err(SecretError::Disabled { .. }) => None,
            Err(e) => return Err(ConnectError::Store(e)),
        };
        // Checked before the provider is told anything: a disconnect that cannot be audited
        // changes nothing.
        if egress.audit().gate().is_err() {
            return Err(ConnectError::AuditUnavailable);
        }
        let mut revoked = None;
        if let (Some(url), Some(stored)) = (&connect.revoke_url, &stored)
            && let Ok(creds) = OAuth2Credentials::parse(stored)
            && let Some(refresh) = &creds.refresh_token
        {
            let ok = match oauth2::revoke_request(url, form.client_auth, &creds, refresh) {
                Ok(req) => match egress.oauth2_exchange(service, url, req).await {
                    Ok((status, _)) => status.is_success(),
                    Err(e) => {
                        tracing::warn!(service = %service.name, error = %e, "revocation failed");
                        false
                    }
                },
                Err(_) => false,
            };
            revoked = Some(ok);
        }
        egress.secrets().remove(&id).map_err(|e| match e {
            SecretError::NotFound { .. } => ConnectError::NotConnected(service.name.clone()),
            e => ConnectError::Store(e),
        })?;
        egress.tokens().forget(&oauth2::Key {
            id,
            service: service.name.clone(),
        });
        Ok(Disconnected {
            service: service.name.clone(),
            revoked,
        })
    }

    async fn exchange(
        &self,
        egress: &Egress,
        service: &str,
        params: &HashMap<String, String>,
        pending: Pending,
        caller: Option<&Principal>,
    ) -> Result<(), ConnectError> {
        if pending.expires <= Instant::now() {
            return Err(ConnectError::BadState("expired"));
        }
        if pending.service.as_str() != service {
            return Err(ConnectError::BadState("for another service"));
        }
        if caller.is_some_and(|c| {
            c.tenant != pending.principal.tenant || c.user != pending.principal.user
        }) {
            return Err(ConnectError::WrongUser);
        }
        let policy = egress.policy();
        let (service, form, connect) = connectable(&policy, service)?;
        if let Some(error) = params.get("error") {
            let error = oauth2::registered_error(error).unwrap_or("error");
            return Err(ConnectError::Declined {
                service: service.name.clone(),
                error,
            });
        }
        let code = params
            .get("code")
            .filter(|c| !c.is_empty())
            .ok_or(ConnectError::BadState("missing its code"))?;
        let principal = &pending.principal;
        let client = app_client(egress, service, connect, principal)?;
        let provider = |error| ConnectError::Provider {
            service: service.name.clone(),
            error,
        };
        let req = oauth2::code_request(
            form,
            &client,
            code,
            &pending.redirect_uri,
            &pending.verifier,
        )
        .map_err(provider)?;
        let (status, body) = egress
            .oauth2_exchange(service, &form.token_url, req)
            .await
            .map_err(provider)?;
        let grant =
            oauth2::parse_response("authorization_code", status, &body).map_err(provider)?;
        let refresh = grant
            .refresh_token
            .ok_or_else(|| ConnectError::NoRefreshToken(service.name.clone()))?;
        let value = oauth2::with_refresh_token(&client, &refresh).ok_or(ConnectError::BadState(
            "answered with a token that is not UTF-8",
        ))?;
        let id = user_credential(service, principal)
            .ok_or_else(|| ConnectError::NotConnectable(service.name.clone()))?;
        if egress.audit().gate().is_err() {
            return Err(ConnectError::AuditUnavailable);
        }
        egress
            .secrets()
            .set(&id, &value)
            .map_err(ConnectError::Store)?;
        let key = oauth2::Key {
            id,
            service: service.name.clone(),
        };
        egress
            .tokens()
            .seed(&key, &value, grant.access_token, grant.lifetime)
            .await;
        tracing::info!(service = %service.name, credential = %key.id, "account connected");
        Ok(())
    }
}

/// Audits one connect step: `outcome` is the status returned, or the failure.
/// [`ConnectError::AuditUnavailable`] if the record cannot be written.
fn audit(
    egress: &Egress,
    principal: Option<&Principal>,
    method: &str,
    path: &str,
    credential: Option<String>,
    outcome: Result<u16, &ConnectError>,
) -> Result<(), ConnectError> {
    let (decision, status, reason) = match outcome {
        Ok(status) => (Outcome::Allow, status, None),
        Err(e) if e.status() >= 500 => (Outcome::Error, e.status(), Some(e.code())),
        Err(e) => (Outcome::Deny, e.status(), Some(e.code())),
    };
    let mut entry = Entry::new(decision, method, "behalf:connect", path);
    entry.tenant = principal.map(|p| p.tenant.to_string());
    entry.user = principal.map(|p| p.user.to_string());
    entry.client = Some("connect".into());
    entry.credential = credential;
    entry.status = Some(status);
    entry.reason = reason.map(str::to_owned);
    match egress.audit().record(entry) {
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::error!(error = %e, "audit log unavailable; failing closed");
            Err(ConnectError::AuditUnavailable)
        }
    }
}
