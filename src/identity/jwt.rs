//! Compact JWS: strict parsing and signature verification with `ring`, one pinned algorithm
//! per key. No `alg: none`, no algorithm taken from the token without a matching pinned key.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::{hmac, signature};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::Rejection;
use crate::policy::settings::Algorithm;

/// Longest token accepted, in bytes; identity tokens are small, and this bounds the work an
/// unauthenticated caller can make us do.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// A token split into its parts, header parsed; nothing verified yet.
pub(crate) struct Unverified<'t> {
    pub header: Header,
    pub claims: serde_json::Map<String, serde_json::Value>,
    /// `header.payload`, the signed bytes.
    pub signing_input: &'t [u8],
    pub signature: Vec<u8>,
}

/// The JOSE header fields behalf reads.
#[derive(Debug, Deserialize)]
pub(crate) struct Header {
    pub alg: String,
    pub kid: Option<String>,
    /// Critical extensions: behalf understands none, so any present is a rejection.
    pub crit: Option<serde_json::Value>,
}

fn b64(part: &str) -> Result<Vec<u8>, Rejection> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| Rejection::Malformed("a token part is not base64url without padding"))
}

/// Splits and decodes a compact JWS. The claims are returned unverified.
pub(crate) fn parse(token: &str) -> Result<Unverified<'_>, Rejection> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(Rejection::Malformed("token is too long"));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Rejection::Malformed(
            "a token has exactly three dot-separated parts",
        ));
    };
    let header: Header = serde_json::from_slice(&b64(h)?)
        .map_err(|_| Rejection::Malformed("the header is not a JSON object with `alg`"))?;
    let claims = serde_json::from_slice(&b64(p)?)
        .map_err(|_| Rejection::Malformed("the payload is not a JSON object"))?;
    let signature = b64(s)?;
    Ok(Unverified {
        header,
        claims,
        signing_input: &token.as_bytes()[..h.len() + 1 + p.len()],
        signature,
    })
}

/// Parses a header `alg` into one of the algorithms behalf supports. `none` and everything
/// else are rejected here, before any key is consulted.
pub(crate) fn algorithm(alg: &str) -> Result<Algorithm, Rejection> {
    match alg {
        "EdDSA" => Ok(Algorithm::EdDSA),
        "ES256" => Ok(Algorithm::ES256),
        "RS256" => Ok(Algorithm::RS256),
        "HS256" => Ok(Algorithm::HS256),
        _ => Err(Rejection::Algorithm(alg.chars().take(20).collect())),
    }
}

/// A verification key bound to exactly one algorithm.
pub(crate) enum VerifyingKey {
    /// Ed25519 public key (32 bytes).
    Ed25519(Vec<u8>),
    /// P-256 public key, uncompressed SEC1 point.
    P256(Vec<u8>),
    /// RSA public key components (big-endian).
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// HS256 shared secret.
    Hmac(Zeroizing<Vec<u8>>),
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Ed25519(_) => "VerifyingKey(EdDSA)",
            Self::P256(_) => "VerifyingKey(ES256)",
            Self::Rsa { .. } => "VerifyingKey(RS256)",
            Self::Hmac(_) => "VerifyingKey(HS256, ***)",
        })
    }
}

impl VerifyingKey {
    /// The one algorithm this key verifies.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Self::Ed25519(_) => Algorithm::EdDSA,
            Self::P256(_) => Algorithm::ES256,
            Self::Rsa { .. } => Algorithm::RS256,
            Self::Hmac(_) => Algorithm::HS256,
        }
    }

    /// Verifies `signature` over `input`. The key's own algorithm is used, never the token's
    /// say-so; the caller has already checked they agree.
    pub fn verify(&self, input: &[u8], sig: &[u8]) -> Result<(), Rejection> {
        let ok = match self {
            Self::Ed25519(pk) => signature::UnparsedPublicKey::new(&signature::ED25519, pk)
                .verify(input, sig)
                .is_ok(),
            Self::P256(pk) => {
                signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, pk)
                    .verify(input, sig)
                    .is_ok()
            }
            Self::Rsa { n, e } => signature::RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, input, sig)
                .is_ok(),
            Self::Hmac(secret) => {
                hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, secret), input, sig).is_ok()
            }
        };
        if ok {
            Ok(())
        } else {
            Err(Rejection::Signature)
        }
    }
}

/// Signs claims as an HS256 compact JWS (development tokens and tests).
pub fn sign_hs256(secret: &[u8], kid: Option<&str>, claims: &serde_json::Value) -> String {
    let mut header = serde_json::json!({ "alg": "HS256", "typ": "JWT" });
    if let Some(kid) = kid {
        header["kid"] = kid.into();
    }
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}
