//! The `oauth2` inject form: the stored client credentials (and, for the `refresh_token`
//! grant, the refresh token) are exchanged at the service's token endpoint for short-lived
//! access tokens, which are cached and sent as `Authorization: Bearer`.
//!
//! [`Tokens`] is the cache: one slot per (credential, service), each behind an async lock so
//! that one exchange is in flight per slot and concurrent callers wait for its result. The
//! token request is built by [`token_request`] and the answer read by [`parse_response`], both
//! pure; the caller (the egress pipeline) sends the request over the service's own connector,
//! so the token endpoint gets the same TLS roots, SSRF guard and timeouts as the API.
//!
//! # Security
//!
//! - Slots are keyed by the whole [`SecretId`] (tenant, user for user-scoped credentials, name)
//!   and the service, so one principal's token can never be handed to another.
//! - A slot remembers a fingerprint of the stored value it was filled from: when an operator
//!   replaces or a user reconnects the credential, cached tokens derived from the old value are
//!   dropped. A disabled or removed credential is refused before the cache is consulted (the
//!   pipeline resolves the credential first on every request).
//! - A rotated refresh token is written back with a compare-and-set on the store, so a
//!   concurrent change by an operator is never overwritten.
//! - Errors carry the HTTP status and, when the endpoint sent one, the RFC 6749 error code if
//!   it is one of the registered codes; never the endpoint's response body, which may echo
//!   parameters.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use serde::Serialize;
use tokio::time::Instant;

use crate::policy::service::{ClientAuth, OAuth2Form, OAuth2Grant};
use crate::policy::{ServiceName, Target};
use crate::secrets::{OAuth2Credentials, Secret, SecretId, SecretStore};

/// The longest a token is used before its stated expiry.
pub const SAFETY_MARGIN: Duration = Duration::from_secs(60);

/// The lifetime assumed for a token without `expires_in` (it is used for this less the
/// safety margin).
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);

/// The largest token endpoint response read.
pub const MAX_RESPONSE: usize = 64 * 1024;

/// The error codes of RFC 6749 (sections 4.1.2.1 and 5.2) that may be repeated to a caller:
/// fixed words, unlike the rest of an error response.
const REGISTERED_ERRORS: [&str; 9] = [
    "access_denied",
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "server_error",
    "temporarily_unavailable",
];

/// The registered RFC 6749 error code equal to `code`, if it is one (only those may be
/// repeated to a caller).
pub fn registered_error(code: &str) -> Option<&'static str> {
    REGISTERED_ERRORS.iter().copied().find(|c| *c == code)
}

/// Why no access token could be had. Never contains a credential, a token or the endpoint's
/// response body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The stored credential is not usable for this grant.
    #[error("{0}")]
    Credential(String),
    /// The token endpoint answered with an error status.
    #[error(
        "the token endpoint refused the {grant} grant (HTTP {status}{})",
        code.map(|c| format!(", {c}")).unwrap_or_default()
    )]
    Rejected {
        /// The grant that was refused.
        grant: &'static str,
        /// The HTTP status.
        status: u16,
        /// The registered OAuth2 error code, when the endpoint sent one.
        code: Option<&'static str>,
    },
    /// The token endpoint answered 2xx with something that is not a usable token.
    #[error("the token endpoint's answer is not a usable token: {0}")]
    Malformed(&'static str),
    /// The token endpoint could not be reached or did not answer in time.
    #[error("{0}")]
    Unreachable(String),
}

/// A token endpoint's successful answer.
pub struct Grant {
    /// The access token.
    pub access_token: Secret,
    /// How long it lives, when the endpoint said.
    pub lifetime: Option<Duration>,
    /// A new refresh token, when the endpoint rotated it.
    pub refresh_token: Option<Secret>,
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant")
            .field("lifetime", &self.lifetime)
            .field("rotated", &self.refresh_token.is_some())
            .finish_non_exhaustive()
    }
}

/// What [`Tokens::access_token`] hands out for one request.
pub struct Issued {
    /// The access token to send.
    pub access_token: Secret,
    /// A refresh token the endpoint rotated in the exchange for this request (already stored),
    /// so that it is scrubbed from this request's response too.
    pub refresh_token: Option<Secret>,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Issued(***)")
    }
}

/// Builds the token request for `form` with `creds` (RFC 6749 sections 4.4 and 6).
///
/// # Security
///
/// The client secret and refresh token go only into this request, which is sent only to the
/// form's `token_url`; the `Authorization` value is marked sensitive.
pub fn token_request(
    form: &OAuth2Form,
    creds: &OAuth2Credentials,
) -> Result<Request<Bytes>, TokenError> {
    let mut params = vec![("grant_type", form.grant.as_str().to_owned())];
    if form.grant == OAuth2Grant::RefreshToken {
        let refresh = creds.refresh_token.as_ref().ok_or_else(|| {
            TokenError::Credential(
                "the OAuth2 credential has no `refresh_token`, which the refresh_token grant needs"
                    .into(),
            )
        })?;
        params.push(("refresh_token", text(refresh, "refresh_token")?.to_owned()));
    }
    if !form.scopes.is_empty() {
        params.push(("scope", form.scopes.join(" ")));
    }
    if let Some(audience) = &form.audience {
        params.push(("audience", audience.clone()));
    }
    client_request(&form.token_url, form.client_auth, creds, &params)
}

/// Builds the authorization-code exchange of account connect (RFC 6749 section 4.1.3, RFC
/// 7636 section 4.5): `redirect_uri` must be exactly the one the user was sent with.
pub fn code_request(
    form: &OAuth2Form,
    client: &OAuth2Credentials,
    code: &str,
    redirect_uri: &str,
    verifier: &str,
) -> Result<Request<Bytes>, TokenError> {
    let params = [
        ("grant_type", "authorization_code".to_owned()),
        ("code", code.to_owned()),
        ("redirect_uri", redirect_uri.to_owned()),
        ("code_verifier", verifier.to_owned()),
    ];
    client_request(&form.token_url, form.client_auth, client, &params)
}

/// Builds a refresh token revocation (RFC 7009 section 2.1).
pub fn revoke_request(
    url: &Target,
    client_auth: ClientAuth,
    creds: &OAuth2Credentials,
    refresh: &Secret,
) -> Result<Request<Bytes>, TokenError> {
    let params = [
        ("token", text(refresh, "refresh_token")?.to_owned()),
        ("token_type_hint", "refresh_token".to_owned()),
    ];
    client_request(url, client_auth, creds, &params)
}

fn text<'a>(s: &'a Secret, what: &str) -> Result<&'a str, TokenError> {
    s.expose_str().ok_or_else(|| {
        TokenError::Credential(format!("the OAuth2 credential's `{what}` is not UTF-8"))
    })
}

/// A form POST to an endpoint of the provider, authenticated as the client.
fn client_request(
    url: &Target,
    client_auth: ClientAuth,
    creds: &OAuth2Credentials,
    params: &[(&str, String)],
) -> Result<Request<Bytes>, TokenError> {
    let mut body = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        body.append_pair(k, v);
    }
    let id = text(&creds.client_id, "client_id")?;
    let secret = text(&creds.client_secret, "client_secret")?;
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(url.to_string())
        .header(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded; charset=utf-8",
        )
        .header(header::ACCEPT, "application/json");
    match client_auth {
        ClientAuth::Body => {
            body.append_pair("client_id", id);
            body.append_pair("client_secret", secret);
        }
        ClientAuth::Basic => {
            // RFC 6749 section 2.3.1: each part form-urlencoded before Basic encoding.
            let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let pair = zeroize::Zeroizing::new(format!("{}:{}", enc(id), enc(secret)));
            let value = zeroize::Zeroizing::new(format!("Basic {}", STANDARD.encode(&*pair)));
            let mut value = HeaderValue::from_str(&value).map_err(|_| {
                TokenError::Credential("the OAuth2 client credentials are not header-safe".into())
            })?;
            value.set_sensitive(true);
            req = req.header(header::AUTHORIZATION, value);
        }
    }
    let body = zeroize::Zeroizing::new(body.finish());
    req.body(Bytes::copy_from_slice(body.as_bytes()))
        .map_err(|_| {
            TokenError::Credential(
                "the token request could not be built from the credential".into(),
            )
        })
}

/// Reads the token endpoint's answer (RFC 6749 sections 5.1 and 5.2).
///
/// `grant` names the grant in errors (`refresh_token`, `client_credentials`,
/// `authorization_code`).
pub fn parse_response(
    grant: &'static str,
    status: StatusCode,
    body: &[u8],
) -> Result<Grant, TokenError> {
    let json: Option<serde_json::Map<String, serde_json::Value>> =
        serde_json::from_slice(body).ok();
    if !status.is_success() {
        let code = json
            .as_ref()
            .and_then(|j| j.get("error"))
            .and_then(|e| e.as_str())
            .and_then(registered_error);
        return Err(TokenError::Rejected {
            grant,
            status: status.as_u16(),
            code,
        });
    }
    let json = json.ok_or(TokenError::Malformed("not a JSON object"))?;
    let token = |field: &str| -> Result<Option<Secret>, TokenError> {
        match json.get(field) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s))
                if !s.is_empty() && s.bytes().all(|b| (0x21..0x7f).contains(&b)) =>
            {
                Ok(Some(Secret::from_text(s)))
            }
            Some(_) => Err(TokenError::Malformed(
                "a token is not a non-empty string of visible ASCII",
            )),
        }
    };
    let access_token = token("access_token")?.ok_or(TokenError::Malformed("no `access_token`"))?;
    match json.get("token_type").and_then(|t| t.as_str()) {
        Some(t) if !t.eq_ignore_ascii_case("bearer") => {
            return Err(TokenError::Malformed("`token_type` is not Bearer"));
        }
        _ => {}
    }
    let lifetime = match json.get("expires_in") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Number(n)) => n.as_u64().map(Duration::from_secs),
        Some(serde_json::Value::String(s)) => s.parse().ok().map(Duration::from_secs),
        Some(_) => None,
    };
    Ok(Grant {
        access_token,
        lifetime,
        refresh_token: token("refresh_token")?,
    })
}

/// Until when a token that lives `lifetime` is used: its expiry less the safety margin, which
/// is at most half its life.
fn usable_until(now: Instant, lifetime: Option<Duration>) -> Instant {
    let lifetime = lifetime.unwrap_or(DEFAULT_LIFETIME);
    now + lifetime - SAFETY_MARGIN.min(lifetime / 2)
}

/// The credential with `refresh_token` replaced, as the JSON the store holds.
pub fn with_refresh_token(creds: &OAuth2Credentials, refresh: &Secret) -> Option<Secret> {
    #[derive(Serialize)]
    struct Stored<'a> {
        client_id: &'a str,
        client_secret: &'a str,
        refresh_token: &'a str,
    }
    let stored = Stored {
        client_id: creds.client_id.expose_str()?,
        client_secret: creds.client_secret.expose_str()?,
        refresh_token: refresh.expose_str()?,
    };
    // Reserved up front (escaping at most sextuples a byte) so the buffer never reallocates
    // and leaves a copy behind.
    let len = stored.client_id.len() + stored.client_secret.len() + stored.refresh_token.len();
    let mut out = Vec::with_capacity(6 * len + 64);
    serde_json::to_writer(&mut out, &stored).ok()?;
    Some(Secret::new(out))
}

fn fingerprint(value: &Secret) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, value.expose());
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Which cache slot: the credential's full id and the service using it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// The credential, in the verified principal's namespace.
    pub id: SecretId,
    /// The service whose token endpoint issued the token.
    pub service: ServiceName,
}

#[derive(Default)]
struct Slot {
    /// Fingerprint of the stored value this slot was filled from.
    source: Option<[u8; 32]>,
    access: Option<(Secret, Instant)>,
    /// A rotated credential that could not be written back yet; used instead of the stored
    /// value while the store still holds the value it replaced.
    rotated: Option<Secret>,
}

/// The access token cache. One per pipeline; see the module docs.
pub struct Tokens {
    store: Arc<dyn SecretStore>,
    slots: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<Slot>>>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").finish_non_exhaustive()
    }
}

/// What [`Exchange::send`] returns.
pub type Exchanged<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<(StatusCode, Bytes), TokenError>> + Send + 'a>>;

/// Sends a token request and returns the status and (capped) body.
pub trait Exchange: Sync {
    /// Sends `req` to the token endpoint.
    fn send(&self, req: Request<Bytes>) -> Exchanged<'_>;
}

impl Tokens {
    /// An empty cache writing rotated refresh tokens back to `store`.
    pub fn new(store: Arc<dyn SecretStore>) -> Self {
        Self {
            store,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// An access token for `key`, from the cache or from one exchange at the token endpoint.
    ///
    /// `stored` is the credential just read from the store for this request. `rejected` is a
    /// token the upstream refused (401): if it is still the cached one, it is replaced; if
    /// another caller replaced it meanwhile, that newer token is returned without a second
    /// exchange.
    pub async fn access_token(
        &self,
        key: &Key,
        stored: &Secret,
        form: &OAuth2Form,
        rejected: Option<&Secret>,
        exchange: &dyn Exchange,
    ) -> Result<Issued, TokenError> {
        let slot = self.slot(key);
        // Concurrent callers for this key queue here while one of them exchanges.
        let mut slot = slot.lock().await;
        let mut current = stored.clone();
        if slot.source.is_some_and(|s| s != fingerprint(stored)) {
            // Read before the caller queued: the exchange it waited for may have rotated the
            // refresh token since. What the store holds now decides.
            if let Ok(Some(fresh)) = self.store.get(&key.id.namespace, &key.id.name) {
                current = fresh;
            }
        }
        let source = fingerprint(&current);
        if slot.source != Some(source) {
            // The stored credential changed (reconnected, replaced, or first use).
            *slot = Slot {
                source: Some(source),
                ..Slot::default()
            };
        }
        if let Some((token, until)) = &slot.access {
            let refused = rejected.is_some_and(|r| r == token);
            if !refused && Instant::now() < *until {
                return Ok(Issued {
                    access_token: token.clone(),
                    refresh_token: None,
                });
            }
        }
        slot.access = None;

        let credential = slot.rotated.clone().unwrap_or_else(|| current.clone());
        let creds = OAuth2Credentials::parse(&credential).map_err(|e| {
            TokenError::Credential(format!("the stored value is not an OAuth2 credential: {e}"))
        })?;
        let (status, body) = exchange.send(token_request(form, &creds)?).await?;
        let grant = parse_response(form.grant.as_str(), status, &body)?;
        let mut rotated = None;
        if let Some(new) = &grant.refresh_token
            && creds.refresh_token.as_ref() != Some(new)
        {
            self.store_rotated(key, &current, &creds, new, &mut slot);
            rotated = Some(new.clone());
        }
        let until = usable_until(Instant::now(), grant.lifetime);
        slot.access = Some((grant.access_token.clone(), until));
        Ok(Issued {
            access_token: grant.access_token,
            refresh_token: rotated,
        })
    }

    /// Caches `access_token` for `key` as derived from `stored` (account connect has just
    /// obtained both).
    pub async fn seed(
        &self,
        key: &Key,
        stored: &Secret,
        access_token: Secret,
        lifetime: Option<Duration>,
    ) {
        let slot = self.slot(key);
        let mut slot = slot.lock().await;
        *slot = Slot {
            source: Some(fingerprint(stored)),
            access: Some((access_token, usable_until(Instant::now(), lifetime))),
            rotated: None,
        };
    }

    /// Drops what is cached for `key` (the account was disconnected).
    pub fn forget(&self, key: &Key) {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// How long the cached access token for `key` is still used, if one is cached.
    pub async fn expires_in(&self, key: &Key) -> Option<Duration> {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()?;
        let slot = slot.lock().await;
        let (_, until) = slot.access.as_ref()?;
        until.checked_duration_since(Instant::now())
    }

    fn slot(&self, key: &Key) -> Arc<tokio::sync::Mutex<Slot>> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.entry(key.clone()).or_default().clone()
    }

    /// Writes a rotated refresh token back (compare-and-set against the value read for this
    /// request); keeps it in the slot if that fails, so the next exchange still uses it.
    fn store_rotated(
        &self,
        key: &Key,
        stored: &Secret,
        creds: &OAuth2Credentials,
        refresh: &Secret,
        slot: &mut Slot,
    ) {
        let Some(updated) = with_refresh_token(creds, refresh) else {
            tracing::error!(credential = %key.id, service = %key.service,
                "the rotated refresh token is not UTF-8 and cannot be stored");
            return;
        };
        match self.store.replace(&key.id, stored, &updated) {
            Ok(true) => {
                slot.source = Some(fingerprint(&updated));
                slot.rotated = None;
                tracing::info!(credential = %key.id, service = %key.service,
                    "stored the rotated OAuth2 refresh token");
            }
            Ok(false) => {
                slot.rotated = Some(updated);
                tracing::warn!(credential = %key.id, service = %key.service,
                    "the credential changed in the store during a refresh (another writer?); \
                     the rotated refresh token is kept in memory only");
            }
            Err(e) => {
                slot.rotated = Some(updated);
                tracing::error!(credential = %key.id, service = %key.service, error = %e,
                    "the rotated refresh token could not be stored; it is kept in memory only");
            }
        }
    }
}

#[cfg(test)]
mod tests;
