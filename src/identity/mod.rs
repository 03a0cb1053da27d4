//! Identity: verifying the JWT a caller presents and turning it into a [`Principal`].
//!
//! Only issuers configured in `behalf.toml` are trusted (plus, with `dev = true` only, the
//! HS256 development issuer). Each issuer pins its algorithms, `iss`, `aud`, clock skew,
//! maximum lifetime and the tenants it may speak for. Verified tokens are cached by their
//! SHA-256 until `exp`.
//!
//! An issuer may also mark some of its tokens as **admins of their own tenant** (`admin =
//! { claim, value }` in `behalf.toml`; `behalf_admin = true` for the development issuer).
//! Only [`Verifier::verify_admin`] looks at that mark, for the admin API; every other front
//! door verifies with [`Verifier::verify`], for which an admin token is an ordinary one.
//!
//! # Security
//!
//! The token's `iss` only selects which configured issuer's keys to try; nothing in the token
//! is believed until its signature verifies with a key pinned to the token's algorithm.
//! Rejections carry a precise reason for the log; callers see only a generic 401/407.
//! An admin mark is read only from a token that verified in full, only for an issuer that
//! configures one, and only ever for the tenant that token was verified for.

pub mod dev;
mod jwks;
pub mod jwt;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::digest;
use zeroize::Zeroizing;

use self::jwks::{Jwk, RemoteJwks};
use self::jwt::VerifyingKey;
use crate::policy::settings::{AdminClaim, Algorithm, Issuer, IssuerTenants, KeySource, Settings};
use crate::principal::{GroupId, IdError, Principal, TenantId, UserId};
use crate::state::{StateDir, StateError};

/// Why a token was rejected. Logged; never shown to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// Not a well-formed compact JWS.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// `alg` is `none` or not supported.
    #[error("unsupported algorithm `{0}`")]
    Algorithm(String),
    /// `alg` is supported but not pinned for this issuer.
    #[error("algorithm {alg} is not allowed for issuer `{issuer}`")]
    AlgorithmNotAllowed {
        /// The token's algorithm.
        alg: String,
        /// The issuer's name.
        issuer: String,
    },
    /// The header lists critical extensions.
    #[error("the token has critical header extensions (`crit`), which behalf does not support")]
    Critical,
    /// No configured issuer has this `iss`.
    #[error("unknown issuer")]
    UnknownIssuer,
    /// No key with this `kid` (after a refetch, for a JWKS URL).
    #[error("no key for kid {kid:?} at issuer `{issuer}`")]
    UnknownKey {
        /// The token's `kid`.
        kid: Option<String>,
        /// The issuer's name.
        issuer: String,
    },
    /// The signature does not verify.
    #[error("bad signature")]
    Signature,
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not yet valid (nbf)")]
    NotYetValid,
    /// `iat` is in the future.
    #[error("token issued in the future (iat)")]
    IssuedInFuture,
    /// `exp - iat` exceeds the issuer's `max_ttl`.
    #[error("token lifetime {lifetime}s exceeds max_ttl {max}s")]
    LifetimeTooLong {
        /// Seconds.
        lifetime: i64,
        /// Seconds.
        max: u64,
    },
    /// A required claim is missing or has the wrong type.
    #[error("claim `{0}` is missing or has the wrong type")]
    Claim(String),
    /// `aud` does not include the issuer's audience.
    #[error("wrong audience")]
    Audience,
    /// The tenant is not one this issuer may speak for.
    #[error("issuer `{issuer}` may not speak for tenant `{tenant}`")]
    Tenant {
        /// The issuer's name.
        issuer: String,
        /// The tenant claimed (truncated).
        tenant: String,
    },
    /// A tenant, user or group id is not a valid id.
    #[error("invalid id: {0}")]
    Id(#[from] IdError),
}

/// Why a token may not use the admin API. Logged; the API answers 401 or 403.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdminRejection {
    /// The token does not verify at all.
    #[error(transparent)]
    Unauthenticated(#[from] Rejection),
    /// The token verifies, but its issuer does not mark it as an admin.
    #[error("{principal} has a valid token, but its issuer does not mark it as an admin")]
    NotAdmin {
        /// Who the token is for (for the audit record).
        principal: Principal,
    },
}

/// A principal whose token its issuer marks as an admin of the principal's own tenant: what
/// [`Verifier::verify_admin`] returns, and the only way to hold one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantAdmin {
    principal: Principal,
}

impl TenantAdmin {
    /// The admin as a principal (tenant, user, groups).
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// The one tenant this admin administers: the tenant its token was verified for.
    pub fn tenant(&self) -> &TenantId {
        &self.principal.tenant
    }

    /// Whether this admin may manage `tenant`'s credentials (only its own tenant's).
    pub fn administers(&self, tenant: &TenantId) -> bool {
        self.principal.tenant == *tenant
    }
}

/// How an issuer marks admins: a claim, and the JSON value it must equal or (as an array)
/// contain.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AdminMarker {
    claim: String,
    value: serde_json::Value,
}

impl AdminMarker {
    fn configured(admin: &AdminClaim) -> Self {
        Self {
            claim: admin.claim.clone(),
            value: serde_json::Value::String(admin.value.clone()),
        }
    }

    /// Whether `claims` (already verified) carry the mark: the claim equals the value, or is
    /// an array holding it. Any other shape, or no claim, is no mark; types are compared
    /// strictly (`"true"` is not `true`).
    pub(crate) fn matches(&self, claims: &serde_json::Map<String, serde_json::Value>) -> bool {
        match claims.get(&self.claim) {
            Some(v) if *v == self.value => true,
            Some(serde_json::Value::Array(list)) => list.contains(&self.value),
            _ => false,
        }
    }
}

/// Why a [`Verifier`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A key file or JWKS file could not be used.
    #[error("issuer `{issuer}`: {message}")]
    Keys {
        /// The issuer's name.
        issuer: String,
        /// What was wrong.
        message: String,
    },
    /// The development key could not be read or created.
    #[error("development identity key: {0}")]
    State(#[from] StateError),
    /// Extra TLS roots could not be read.
    #[error("TLS roots: {0}")]
    Roots(String),
}

/// Which tenants an issuer may speak for, including the development issuer's "all".
#[derive(Debug)]
enum Tenants {
    Fixed(TenantId),
    Listed(Vec<TenantId>),
    /// The development issuer only.
    Any,
}

enum Keys {
    Static(Vec<Jwk>),
    Remote(RemoteJwks),
}

struct TrustedIssuer {
    config: Issuer,
    tenants: Tenants,
    keys: Keys,
    admin: Option<AdminMarker>,
}

/// A verified token: who it is for, until when (`exp`), and whether its issuer marks it as an
/// admin of that tenant.
#[derive(Debug, Clone)]
struct Verified {
    principal: Principal,
    exp: i64,
    admin: bool,
}

/// Verifies identity tokens against the configured issuers and caches the results.
pub struct Verifier {
    issuers: Vec<TrustedIssuer>,
    cache: Mutex<HashMap<[u8; 32], Verified>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field(
                "issuers",
                &self
                    .issuers
                    .iter()
                    .map(|i| &i.config.name)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Most verified tokens kept; past this, expired ones are dropped, then all.
const CACHE_LIMIT: usize = 10_000;
/// Least time between two fetches of one JWKS URL.
pub const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(30);

impl Verifier {
    /// Builds a verifier for the issuers in `settings`; with `dev = true`, also the
    /// development issuer, whose key is generated in `state` on first use.
    pub fn new(settings: &Settings, state: Option<&StateDir>) -> Result<Self, IdentityError> {
        Self::with_refetch_interval(settings, state, JWKS_REFETCH_INTERVAL)
    }

    /// As [`Verifier::new`], with a different least time between JWKS refetches.
    pub fn with_refetch_interval(
        settings: &Settings,
        state: Option<&StateDir>,
        refetch: Duration,
    ) -> Result<Self, IdentityError> {
        let mut issuers = Vec::new();
        let mut tls = None;
        for config in &settings.issuers {
            let keys_err = |message: String| IdentityError::Keys {
                issuer: config.name.clone(),
                message,
            };
            let keys = match &config.keys {
                KeySource::JwksFile(path) => Keys::Static(jwks::read_file(path).map_err(keys_err)?),
                KeySource::KeyFile(path) => {
                    let secret = Zeroizing::new(
                        std::fs::read(path)
                            .map_err(|e| keys_err(format!("{}: {e}", path.display())))?,
                    );
                    if secret.len() < 32 {
                        return Err(keys_err(format!(
                            "{}: an HS256 key must be at least 32 bytes",
                            path.display()
                        )));
                    }
                    Keys::Static(vec![Jwk {
                        kid: None,
                        key: VerifyingKey::Hmac(secret),
                    }])
                }
                KeySource::JwksUrl(url) => {
                    if tls.is_none() {
                        tls = Some(client_tls(&settings.upstream_roots)?);
                    }
                    let tls = tls.clone().expect("set just above");
                    Keys::Remote(RemoteJwks::new(url.clone(), tls, refetch))
                }
            };
            let tenants = match &config.tenants {
                IssuerTenants::Fixed(t) => Tenants::Fixed(t.clone()),
                IssuerTenants::Listed(l) => Tenants::Listed(l.clone()),
            };
            issuers.push(TrustedIssuer {
                config: config.clone(),
                tenants,
                keys,
                admin: config.admin.as_ref().map(AdminMarker::configured),
            });
        }
        if settings.dev {
            let state = state.ok_or_else(|| IdentityError::Keys {
                issuer: dev::ISSUER_NAME.into(),
                message: "development mode needs a state dir for its key".into(),
            })?;
            issuers.push(dev::issuer(state)?);
        }
        Ok(Self {
            issuers,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Verifies a token now.
    pub async fn verify(&self, token: &str) -> Result<Principal, Rejection> {
        self.verify_at(token, SystemTime::now()).await
    }

    /// Verifies a token as of `now`.
    pub async fn verify_at(&self, token: &str, now: SystemTime) -> Result<Principal, Rejection> {
        Ok(self.verify_expiring_at(token, now).await?.0)
    }

    /// Verifies a token now, also returning when it expires (a CONNECT tunnel is closed then).
    pub async fn verify_expiring(&self, token: &str) -> Result<(Principal, SystemTime), Rejection> {
        self.verify_expiring_at(token, SystemTime::now()).await
    }

    async fn verify_expiring_at(
        &self,
        token: &str,
        now: SystemTime,
    ) -> Result<(Principal, SystemTime), Rejection> {
        let v = self.verify_full(token, now).await?;
        let exp = UNIX_EPOCH + Duration::from_secs(u64::try_from(v.exp).unwrap_or(0));
        Ok((v.principal, exp))
    }

    /// Whether any trusted issuer marks admin tokens (`admin = {...}` on an issuer, or the
    /// development issuer): the admin API is off otherwise.
    pub fn admin_enabled(&self) -> bool {
        self.issuers.iter().any(|i| i.admin.is_some())
    }

    /// Verifies a token now for the admin API: it must verify exactly as for
    /// [`Verifier::verify`], and its issuer must mark it as an admin.
    ///
    /// # Security
    ///
    /// The result administers only the tenant the token was verified for; check
    /// [`TenantAdmin::administers`] against every tenant a request names.
    pub async fn verify_admin(&self, token: &str) -> Result<TenantAdmin, AdminRejection> {
        self.verify_admin_at(token, SystemTime::now()).await
    }

    /// As [`Verifier::verify_admin`], as of `now`.
    pub async fn verify_admin_at(
        &self,
        token: &str,
        now: SystemTime,
    ) -> Result<TenantAdmin, AdminRejection> {
        let v = self.verify_full(token, now).await?;
        if v.admin {
            Ok(TenantAdmin {
                principal: v.principal,
            })
        } else {
            Err(AdminRejection::NotAdmin {
                principal: v.principal,
            })
        }
    }

    async fn verify_full(&self, token: &str, now: SystemTime) -> Result<Verified, Rejection> {
        let now = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let hash: [u8; 32] = digest::digest(&digest::SHA256, token.as_bytes())
            .as_ref()
            .try_into()
            .expect("SHA-256 is 32 bytes");
        if let Some(v) = self.cache_lock().get(&hash)
            && now < v.exp
        {
            return Ok(v.clone());
        }
        let verified = self.verify_uncached(token, now).await?;
        let mut cache = self.cache_lock();
        if cache.len() >= CACHE_LIMIT {
            cache.retain(|_, v| v.exp > now);
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
        }
        cache.insert(hash, verified.clone());
        Ok(verified)
    }

    fn cache_lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Verified>> {
        // The map holds no invariant a panic could break half-way.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn verify_uncached(&self, token: &str, now: i64) -> Result<Verified, Rejection> {
        let t = jwt::parse(token)?;
        let alg = jwt::algorithm(&t.header.alg)?;
        if t.header.crit.is_some() {
            return Err(Rejection::Critical);
        }
        let iss = t.claims.get("iss").and_then(|v| v.as_str());
        let issuer = self
            .issuers
            .iter()
            .find(|i| Some(i.config.issuer.as_str()) == iss)
            .ok_or(Rejection::UnknownIssuer)?;
        let name = &issuer.config.name;
        if !issuer.config.algorithms.contains(&alg) {
            return Err(Rejection::AlgorithmNotAllowed {
                alg: t.header.alg.clone(),
                issuer: name.clone(),
            });
        }
        let kid = t.header.kid.as_deref();
        let verified = match &issuer.keys {
            Keys::Static(keys) => verify_with(keys, alg, kid, &t)?,
            Keys::Remote(remote) => {
                let keys = remote.keys();
                match verify_with(&keys, alg, kid, &t)? {
                    Some(()) => Some(()),
                    None => {
                        remote.refresh().await;
                        verify_with(&remote.keys(), alg, kid, &t)?
                    }
                }
            }
        };
        if verified.is_none() {
            return Err(Rejection::UnknownKey {
                kid: kid.map(|k| k.chars().take(64).collect()),
                issuer: name.clone(),
            });
        }
        issuer.check_claims(&t.claims, now)
    }
}

/// Tries the key for `alg` and `kid`: `Ok(None)` if there is none, `Err` if the signature is
/// bad. Without a `kid`, the issuer must have exactly one key for the algorithm.
fn verify_with(
    keys: &[Jwk],
    alg: Algorithm,
    kid: Option<&str>,
    t: &jwt::Unverified<'_>,
) -> Result<Option<()>, Rejection> {
    let mut candidates = keys
        .iter()
        .filter(|k| k.key.algorithm() == alg)
        .filter(|k| kid.is_none() || k.kid.as_deref() == kid);
    let Some(key) = candidates.next() else {
        return Ok(None);
    };
    if kid.is_none() && candidates.next().is_some() {
        return Ok(None);
    }
    key.key.verify(t.signing_input, &t.signature).map(Some)
}

fn claim_i64(claims: &serde_json::Map<String, serde_json::Value>, name: &str) -> Option<i64> {
    let v = claims.get(name)?;
    v.as_i64().or_else(|| v.as_f64().map(|f| f as i64))
}

impl TrustedIssuer {
    fn check_claims(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
        now: i64,
    ) -> Result<Verified, Rejection> {
        let c = &self.config;
        let skew = i64::try_from(c.clock_skew.as_secs()).unwrap_or(i64::MAX);
        let exp = claim_i64(claims, "exp").ok_or_else(|| Rejection::Claim("exp".into()))?;
        let iat = claim_i64(claims, "iat").ok_or_else(|| Rejection::Claim("iat".into()))?;
        if now >= exp.saturating_add(skew) {
            return Err(Rejection::Expired);
        }
        if let Some(nbf) = claim_i64(claims, "nbf")
            && now.saturating_add(skew) < nbf
        {
            return Err(Rejection::NotYetValid);
        }
        if now.saturating_add(skew) < iat {
            return Err(Rejection::IssuedInFuture);
        }
        let lifetime = exp.saturating_sub(iat);
        if lifetime > i64::try_from(c.max_ttl.as_secs()).unwrap_or(i64::MAX) {
            return Err(Rejection::LifetimeTooLong {
                lifetime,
                max: c.max_ttl.as_secs(),
            });
        }
        let aud_ok = match claims.get("aud") {
            Some(serde_json::Value::String(a)) => *a == c.audience,
            Some(serde_json::Value::Array(list)) => {
                list.iter().any(|a| a.as_str() == Some(c.audience.as_str()))
            }
            _ => false,
        };
        if !aud_ok {
            return Err(Rejection::Audience);
        }
        let sub = claims
            .get("sub")
            .and_then(|v| v.as_str())
            .ok_or_else(|| Rejection::Claim("sub".into()))?;
        let user = UserId::parse(sub)?;
        let claimed = match claims.get(&c.tenant_claim) {
            None => None,
            Some(serde_json::Value::String(t)) => Some(t.as_str()),
            Some(_) => return Err(Rejection::Claim(c.tenant_claim.clone())),
        };
        let refuse = |t: &str| Rejection::Tenant {
            issuer: c.name.clone(),
            tenant: t.chars().take(64).collect(),
        };
        let tenant = match (&self.tenants, claimed) {
            (Tenants::Fixed(fixed), None) => fixed.clone(),
            (Tenants::Fixed(fixed), Some(t)) if t == fixed.as_str() => fixed.clone(),
            (Tenants::Fixed(_), Some(t)) => return Err(refuse(t)),
            (_, None) => return Err(Rejection::Claim(c.tenant_claim.clone())),
            (Tenants::Listed(list), Some(t)) => {
                let id = TenantId::parse(t)?;
                if !list.contains(&id) {
                    return Err(refuse(t));
                }
                id
            }
            (Tenants::Any, Some(t)) => TenantId::parse(t)?,
        };
        let groups = match claims.get(&c.groups_claim) {
            None => Vec::new(),
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .map(|g| {
                    g.as_str()
                        .ok_or_else(|| Rejection::Claim(c.groups_claim.clone()))
                        .and_then(|g| GroupId::parse(g).map_err(Rejection::from))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(Rejection::Claim(c.groups_claim.clone())),
        };
        // Read only now that every other check passed; a missing or odd claim is no mark.
        let admin = self.admin.as_ref().is_some_and(|a| a.matches(claims));
        Ok(Verified {
            principal: Principal::new(tenant, user, groups),
            exp,
            admin,
        })
    }
}

/// A TLS client configuration on `ring` with the web PKI roots plus `extra` PEM files.
pub fn client_tls(
    extra: &[std::path::PathBuf],
) -> Result<Arc<rustls::ClientConfig>, IdentityError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for path in extra {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| IdentityError::Roots(format!("{}: {e}", path.display())))?;
        for cert in certs {
            let cert =
                cert.map_err(|e| IdentityError::Roots(format!("{}: {e}", path.display())))?;
            roots
                .add(cert)
                .map_err(|e| IdentityError::Roots(format!("{}: {e}", path.display())))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| IdentityError::Roots(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, Value, json};

    use super::*;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().expect("an object").clone()
    }

    #[test]
    fn admin_claim_matches_a_string_or_an_array_holding_it() {
        let marker = AdminMarker::configured(&AdminClaim {
            claim: "behalf_roles".into(),
            value: "secrets-admin".into(),
        });
        let yes = [
            json!({"behalf_roles": "secrets-admin"}),
            json!({"behalf_roles": ["reader", "secrets-admin"]}),
            json!({"behalf_roles": ["secrets-admin"], "other": 1}),
        ];
        for c in yes {
            assert!(marker.matches(&claims(c.clone())), "{c}");
        }
        let no = [
            json!({}),
            json!({"behalf_roles": null}),
            json!({"behalf_roles": "secrets-admins"}),
            json!({"behalf_roles": "Secrets-Admin"}),
            json!({"behalf_roles": ""}),
            json!({"behalf_roles": []}),
            json!({"behalf_roles": ["reader"]}),
            json!({"behalf_roles": [["secrets-admin"]]}),
            json!({"behalf_roles": {"secrets-admin": true}}),
            json!({"behalf_roles": true}),
            json!({"behalf_roles": 1}),
            json!({"behalf_roles": "secrets-admin reader"}),
            json!({"roles": "secrets-admin"}),
            json!({"other": ["secrets-admin"]}),
        ];
        for c in no {
            assert!(!marker.matches(&claims(c.clone())), "{c}");
        }
    }

    #[test]
    fn dev_admin_claim_is_the_boolean_true_only() {
        let marker = dev::admin_marker();
        assert!(marker.matches(&claims(json!({"behalf_admin": true}))));
        assert!(marker.matches(&claims(json!({"behalf_admin": [true]}))));
        for c in [
            json!({}),
            json!({"behalf_admin": false}),
            json!({"behalf_admin": "true"}),
            json!({"behalf_admin": 1}),
            json!({"behalf_admin": null}),
        ] {
            assert!(!marker.matches(&claims(c.clone())), "{c}");
        }
    }
}
