//! The development issuer (`dev = true` only): HS256 with a key generated in `state_dir`,
//! allowed to speak for every tenant, and the `behalf token mint` that uses it. A token with
//! `"behalf_admin": true` ([`ADMIN_CLAIM`], `behalf token mint --admin`) is an admin of its
//! tenant for the admin API.
//!
//! # Security
//!
//! Anyone who can read `state_dir/dev-identity.key` can mint a token for any user of any
//! tenant, admins included. That is the point in development and why this issuer does not
//! exist without `dev = true`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::jwks::Jwk;
use super::jwt::{self, VerifyingKey};
use super::{AdminMarker, IdentityError, Keys, Tenants, TrustedIssuer};
use crate::policy::settings::{Algorithm, Issuer, IssuerTenants, KeySource};
use crate::principal::{GroupId, TenantId, UserId};
use crate::state::{StateDir, StateError};

/// The issuer's name in logs.
pub const ISSUER_NAME: &str = "dev";
/// The `iss` of development tokens.
pub const ISSUER: &str = "behalf-dev";
/// The `aud` of development tokens.
pub const AUDIENCE: &str = "behalf";
/// The key file in `state_dir`.
pub const KEY_FILE: &str = "dev-identity.key";
/// The longest development token.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// The claim that marks a development token as an admin of its tenant, when `true`.
pub const ADMIN_CLAIM: &str = "behalf_admin";

pub(super) fn admin_marker() -> AdminMarker {
    AdminMarker {
        claim: ADMIN_CLAIM.into(),
        value: serde_json::Value::Bool(true),
    }
}

fn config(state: &StateDir) -> Issuer {
    Issuer {
        name: ISSUER_NAME.into(),
        algorithms: vec![Algorithm::HS256],
        keys: KeySource::KeyFile(state.join(KEY_FILE)),
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        // Not consulted: the development issuer speaks for every tenant.
        tenants: IssuerTenants::Listed(Vec::new()),
        tenant_claim: "tenant".into(),
        groups_claim: "groups".into(),
        max_ttl: MAX_TTL,
        clock_skew: Duration::from_secs(60),
        // Marked by `admin_marker` instead: this claim is a boolean, not a configured string.
        admin: None,
    }
}

pub(super) fn issuer(state: &StateDir) -> Result<TrustedIssuer, IdentityError> {
    let key = state.generated_key(KEY_FILE)?;
    Ok(TrustedIssuer {
        config: config(state),
        tenants: Tenants::Any,
        keys: Keys::Static(vec![Jwk {
            kid: None,
            key: VerifyingKey::Hmac(zeroize::Zeroizing::new(key.to_vec())),
        }]),
        admin: Some(admin_marker()),
    })
}

/// Why a development token could not be minted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MintError {
    /// `dev = true` is not set.
    #[error(
        "`behalf token mint` only works in development mode; set `dev = true` in behalf.toml \
         (never in production), or get a token from your identity provider"
    )]
    NotDev,
    /// The requested lifetime is too long or zero.
    #[error("--ttl must be between 1s and 24h")]
    Ttl,
    /// The key could not be read or created.
    #[error(transparent)]
    State(#[from] StateError),
}

/// Mints a development token for a principal, valid from now for `ttl`.
pub fn mint(
    dev: bool,
    state: &StateDir,
    tenant: &TenantId,
    user: &UserId,
    groups: &[GroupId],
    ttl: Duration,
) -> Result<String, MintError> {
    mint_token(dev, state, tenant, user, groups, ttl, false)
}

/// As [`mint`], marked as an admin of `tenant` for the admin API (`"behalf_admin": true`).
///
/// # Security
///
/// Such a token may read the names of, and set and delete, every credential of `tenant`.
pub fn mint_admin(
    dev: bool,
    state: &StateDir,
    tenant: &TenantId,
    user: &UserId,
    groups: &[GroupId],
    ttl: Duration,
) -> Result<String, MintError> {
    mint_token(dev, state, tenant, user, groups, ttl, true)
}

fn mint_token(
    dev: bool,
    state: &StateDir,
    tenant: &TenantId,
    user: &UserId,
    groups: &[GroupId],
    ttl: Duration,
    admin: bool,
) -> Result<String, MintError> {
    if !dev {
        return Err(MintError::NotDev);
    }
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(MintError::Ttl);
    }
    let key = state.generated_key(KEY_FILE)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut claims = serde_json::json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": user.as_str(),
        "tenant": tenant.as_str(),
        "groups": groups.iter().map(GroupId::as_str).collect::<Vec<_>>(),
        "iat": now,
        "exp": now + ttl.as_secs(),
    });
    if admin {
        claims[ADMIN_CLAIM] = true.into();
    }
    Ok(jwt::sign_hs256(&key[..], None, &claims))
}
