//! JSON Web Key Sets: from a file, or from an HTTPS URL that is cached and refetched (at most
//! once per interval) when a token names a `kid` we do not have.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use serde::Deserialize;

use super::jwt::VerifyingKey;
use crate::policy::Target;

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// Limit for one JWKS fetch, connect to last byte.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// One usable key from a JWKS.
#[derive(Debug)]
pub(crate) struct Jwk {
    pub kid: Option<String>,
    pub key: VerifyingKey,
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    usage: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

fn b64(field: Option<&String>, name: &str) -> Result<Vec<u8>, String> {
    let v = field.ok_or_else(|| format!("missing `{name}`"))?;
    URL_SAFE_NO_PAD
        .decode(v)
        .map_err(|_| format!("`{name}` is not base64url"))
}

impl Jwk {
    fn from_raw(raw: RawJwk) -> Result<Option<Self>, String> {
        if raw.usage.as_deref().is_some_and(|u| u != "sig") {
            return Ok(None);
        }
        let key = match (raw.kty.as_str(), raw.crv.as_deref()) {
            ("OKP", Some("Ed25519")) => {
                let x = b64(raw.x.as_ref(), "x")?;
                if x.len() != 32 {
                    return Err("Ed25519 `x` must be 32 bytes".into());
                }
                VerifyingKey::Ed25519(x)
            }
            ("EC", Some("P-256")) => {
                let (x, y) = (b64(raw.x.as_ref(), "x")?, b64(raw.y.as_ref(), "y")?);
                if x.len() != 32 || y.len() != 32 {
                    return Err("P-256 `x` and `y` must be 32 bytes each".into());
                }
                let mut point = vec![4u8];
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                VerifyingKey::P256(point)
            }
            ("RSA", _) => VerifyingKey::Rsa {
                n: b64(raw.n.as_ref(), "n")?,
                e: b64(raw.e.as_ref(), "e")?,
            },
            // Symmetric keys never come from a key set, and other curves are not supported.
            _ => return Ok(None),
        };
        if let Some(alg) = &raw.alg {
            // A key pinned to an algorithm behalf does not support (RS512, PS256, ...) is
            // unusable, like an encryption key: skip it rather than reject the whole set.
            let Ok(pinned) = super::jwt::algorithm(alg) else {
                return Ok(None);
            };
            if pinned != key.algorithm() {
                return Err(format!("`alg` {alg} does not fit a {} key", raw.kty));
            }
        }
        Ok(Some(Self { kid: raw.kid, key }))
    }
}

/// Parses a JWKS document. Keys behalf cannot use (encryption keys, other curves) are
/// skipped; a malformed usable key is an error.
pub(crate) fn parse_set(bytes: &[u8]) -> Result<Vec<Jwk>, String> {
    let set: RawSet = serde_json::from_slice(bytes)
        .map_err(|e| format!("not a JWKS document (`{{\"keys\": [...]}}`): {e}"))?;
    let mut keys = Vec::new();
    for (i, value) in set.keys.into_iter().enumerate() {
        let raw: RawJwk = serde_json::from_value(value).map_err(|e| format!("key {i}: {e}"))?;
        if let Some(k) = Jwk::from_raw(raw).map_err(|e| format!("key {i}: {e}"))? {
            keys.push(k);
        }
    }
    Ok(keys)
}

/// Reads a JWKS file.
pub(crate) fn read_file(path: &Path) -> Result<Vec<Jwk>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_set(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// A JWKS fetched over HTTPS: the last good set is kept, refetched at most once per
/// `min_interval` when a token names an unknown `kid`. A failed fetch never widens anything:
/// the old keys stay, and a token that needed a new key is rejected.
pub(crate) struct RemoteJwks {
    url: String,
    tls: tokio_rustls::TlsConnector,
    keys: RwLock<Arc<Vec<Jwk>>>,
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    min_interval: Duration,
}

impl RemoteJwks {
    pub fn new(url: String, tls: Arc<rustls::ClientConfig>, min_interval: Duration) -> Self {
        Self {
            url,
            tls: tokio_rustls::TlsConnector::from(tls),
            keys: RwLock::new(Arc::new(Vec::new())),
            last_fetch: tokio::sync::Mutex::new(None),
            min_interval,
        }
    }

    /// The keys currently held.
    pub fn keys(&self) -> Arc<Vec<Jwk>> {
        // A poisoned lock only means a panic elsewhere mid-swap of an Arc; the value is whole.
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Refetches unless a fetch happened within the interval. Returns whether keys changed.
    pub async fn refresh(&self) -> bool {
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|t| t.elapsed() < self.min_interval) {
            return false;
        }
        *last = Some(Instant::now());
        match tokio::time::timeout(FETCH_TIMEOUT, self.fetch()).await {
            Ok(Ok(keys)) => {
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
                true
            }
            Ok(Err(e)) => {
                tracing::warn!(url = %self.url, error = %e, "JWKS fetch failed; keeping cached keys");
                false
            }
            Err(_) => {
                tracing::warn!(url = %self.url, "JWKS fetch timed out; keeping cached keys");
                false
            }
        }
    }

    async fn fetch(&self) -> Result<Vec<Jwk>, String> {
        let target = Target::parse(&self.url).map_err(|e| e.to_string())?;
        let host = target.origin.host.as_str();
        let bare_host = host.trim_start_matches('[').trim_end_matches(']');
        let tcp = tokio::net::TcpStream::connect((bare_host, target.origin.port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let name = rustls::pki_types::ServerName::try_from(bare_host.to_owned())
            .map_err(|e| format!("server name: {e}"))?;
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| format!("HTTP: {e}"))?;
        tokio::spawn(conn);
        let path = match &target.query {
            Some(q) => format!("{}?{q}", target.path),
            None => target.path.clone(),
        };
        let req = http::Request::get(path)
            .header(http::header::HOST, authority(&target))
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        if resp.status() != http::StatusCode::OK {
            return Err(format!("HTTP status {}", resp.status()));
        }
        let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        parse_set(&body)
    }
}

fn authority(t: &Target) -> String {
    if t.origin.port == t.origin.scheme.default_port() {
        t.origin.host.to_string()
    } else {
        format!("{}:{}", t.origin.host, t.origin.port)
    }
}
