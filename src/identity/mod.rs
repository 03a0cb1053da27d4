//! Identity: verifying the JWT a caller presents and turning it into a [`Principal`].
//!
//! Only issuers configured in `behalf.toml` are trusted (plus, with `dev = true` only, the
//! HS256 development issuer). Each issuer pins its algorithms, `iss`, `aud`, clock skew,
//! maximum lifetime and the tenants it may speak for. Verified tokens are cached by their
//! SHA-256 until `exp`.
//!
//! # Security
//!
//! The token's `iss` only selects which configured issuer's keys to try; nothing in the token
//! is believed until its signature verifies with a key pinned to the token's algorithm.
//! Rejections carry a precise reason for the log; callers see only a generic 401/407.

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
use crate::policy::settings::{Algorithm, Issuer, IssuerTenants, KeySource, Settings};
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
}

/// Verifies identity tokens against the configured issuers and caches the results.
pub struct Verifier {
    issuers: Vec<TrustedIssuer>,
    cache: Mutex<HashMap<[u8; 32], (Principal, i64)>>,
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
        let at = |exp: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(exp).unwrap_or(0));
        let now = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let hash: [u8; 32] = digest::digest(&digest::SHA256, token.as_bytes())
            .as_ref()
            .try_into()
            .expect("SHA-256 is 32 bytes");
        if let Some((p, exp)) = self.cache_lock().get(&hash)
            && now < *exp
        {
            return Ok((p.clone(), at(*exp)));
        }
        let (principal, exp) = self.verify_uncached(token, now).await?;
        let mut cache = self.cache_lock();
        if cache.len() >= CACHE_LIMIT {
            cache.retain(|_, (_, exp)| *exp > now);
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
        }
        cache.insert(hash, (principal.clone(), exp));
        Ok((principal, at(exp)))
    }

    fn cache_lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (Principal, i64)>> {
        // The map holds no invariant a panic could break half-way.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn verify_uncached(&self, token: &str, now: i64) -> Result<(Principal, i64), Rejection> {
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
    ) -> Result<(Principal, i64), Rejection> {
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
        Ok((Principal::new(tenant, user, groups), exp))
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
