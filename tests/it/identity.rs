//! Identity: verifying JWTs into principals (DESIGN.md "Identity", "Development mode",
//! "Concepts"; issue 3).
//!
//! Every key is generated here: Ed25519 and P-256 with `ring`, one RSA-2048 key with the `rsa`
//! crate (shared by all tests, generated once), HS256 secrets from the system RNG. Tokens are
//! built by hand (header/claims JSON → base64url → sign) so that every malformed or hostile
//! shape can be produced. `jwks_url` is exercised against a real HTTPS endpoint on loopback
//! whose certificate comes from a test CA.
//!
//! Time is fixed (`NOW`) and passed to `verify_at`, except for the development-mode tests,
//! whose tokens `mint` stamps with the real clock.

use std::convert::Infallible;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::copy_dir;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD as B64};
use behalf::identity::dev::{self, MintError};
use behalf::identity::jwt::sign_hs256;
use behalf::identity::{Rejection, Verifier};
use behalf::policy::PolicySet;
use behalf::policy::settings::{Algorithm, Issuer, IssuerTenants, KeySource, Settings};
use behalf::principal::{GroupId, IdError, Principal, TenantId, UserId};
use behalf::state::StateDir;
use bytes::Bytes;
use http_body_util::Full;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RSA_PKCS1_SHA256,
    RsaKeyPair, RsaPublicKeyComponents,
};
use serde_json::{Value, json};
use tempfile::TempDir;

// === time and claims ===

/// The fixed "now" of every non-dev test.
const NOW: u64 = 1_700_000_000;
/// Default lifetime of a test token (well under the default `max_ttl` of 1h).
const TTL: u64 = 600;
/// The audience every test issuer requires.
const AUD: &str = "behalf";
/// The clock skew every test issuer tolerates (the default).
const SKEW: u64 = 60;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// Valid claims for `iss`: alice of acme in groups eng and ops, issued now, living `TTL`.
fn claims(iss: &str) -> Value {
    json!({
        "iss": iss,
        "aud": AUD,
        "sub": "alice",
        "tenant": "acme",
        "groups": ["eng", "ops"],
        "iat": NOW,
        "exp": NOW + TTL,
    })
}

/// `base` with the members of `changes` set; a `null` member removes the claim.
fn with(mut base: Value, changes: Value) -> Value {
    let map = base.as_object_mut().expect("claims are an object");
    for (k, v) in changes.as_object().expect("changes are an object") {
        if v.is_null() {
            map.remove(k);
        } else {
            map.insert(k.clone(), v.clone());
        }
    }
    base
}

fn principal(tenant: &str, user: &str, groups: &[&str]) -> Principal {
    Principal::new(
        TenantId::parse(tenant).unwrap(),
        UserId::parse(user).unwrap(),
        groups.iter().map(|g| GroupId::parse(g).unwrap()).collect(),
    )
}

// === keys and tokens ===

/// `ring`'s system RNG as the `rand_core` RNG the `rsa` crate wants for key generation.
struct RingRng(SystemRandom);

impl rsa::rand_core::TryRng for RingRng {
    type Error = Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.0.fill(dst).expect("system RNG");
        Ok(())
    }
}

impl rsa::rand_core::TryCryptoRng for RingRng {}

/// One RSA-2048 key for the whole test binary (generation is the slow part).
static RSA_KEY: LazyLock<Arc<RsaKeyPair>> = LazyLock::new(|| {
    use rsa::pkcs8::EncodePrivateKey;
    let key = rsa::PrivateKey::new(&mut RingRng(SystemRandom::new()), 2048).expect("RSA keygen");
    let der = key.to_pkcs8_der().expect("PKCS#8");
    Arc::new(RsaKeyPair::from_pkcs8(der.as_bytes()).expect("ring reads the RSA key"))
});

enum Signer {
    Ed(Ed25519KeyPair),
    Es(EcdsaKeyPair),
    Rs(Arc<RsaKeyPair>),
    Hs(Vec<u8>),
}

/// A signing key and the `kid` its tokens name.
#[derive(Clone)]
struct TestKey {
    kid: Option<String>,
    signer: Arc<Signer>,
}

impl TestKey {
    fn ed25519(kid: &str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        Self::new(Some(kid), Signer::Ed(pair))
    }

    fn es256(kid: &str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        Self::new(Some(kid), Signer::Es(pair))
    }

    fn rs256(kid: &str) -> Self {
        Self::new(Some(kid), Signer::Rs(RSA_KEY.clone()))
    }

    fn hs256(secret: &[u8], kid: Option<&str>) -> Self {
        Self::new(kid, Signer::Hs(secret.to_vec()))
    }

    fn new(kid: Option<&str>, signer: Signer) -> Self {
        Self {
            kid: kid.map(str::to_owned),
            signer: Arc::new(signer),
        }
    }

    /// The same key, naming another `kid` (or none).
    fn with_kid(&self, kid: Option<&str>) -> Self {
        Self {
            kid: kid.map(str::to_owned),
            signer: self.signer.clone(),
        }
    }

    fn alg(&self) -> &'static str {
        match &*self.signer {
            Signer::Ed(_) => "EdDSA",
            Signer::Es(_) => "ES256",
            Signer::Rs(_) => "RS256",
            Signer::Hs(_) => "HS256",
        }
    }

    fn sign(&self, input: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match &*self.signer {
            Signer::Ed(k) => k.sign(input).as_ref().to_vec(),
            Signer::Es(k) => k.sign(&rng, input).unwrap().as_ref().to_vec(),
            Signer::Rs(k) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(&RSA_PKCS1_SHA256, &rng, input, &mut sig).unwrap();
                sig
            }
            Signer::Hs(secret) => ring::hmac::sign(
                &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
                input,
            )
            .as_ref()
            .to_vec(),
        }
    }

    /// The public key bytes: Ed25519 `x`, the P-256 point `04||x||y`, the RSA modulus.
    fn public_bytes(&self) -> Vec<u8> {
        match &*self.signer {
            Signer::Ed(k) => k.public_key().as_ref().to_vec(),
            Signer::Es(k) => k.public_key().as_ref().to_vec(),
            Signer::Rs(k) => RsaPublicKeyComponents::<Vec<u8>>::from(k.public()).n,
            Signer::Hs(_) => panic!("an HMAC key has no public part"),
        }
    }

    /// The public JWK, as an identity provider publishes it.
    fn jwk(&self) -> Value {
        let mut jwk = match &*self.signer {
            Signer::Ed(_) => json!({
                "kty": "OKP", "crv": "Ed25519", "x": B64.encode(self.public_bytes()),
            }),
            Signer::Es(_) => {
                let point = self.public_bytes();
                assert_eq!((point.len(), point[0]), (65, 4), "uncompressed P-256 point");
                json!({
                    "kty": "EC", "crv": "P-256",
                    "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..]),
                })
            }
            Signer::Rs(k) => {
                let c = RsaPublicKeyComponents::<Vec<u8>>::from(k.public());
                json!({ "kty": "RSA", "n": B64.encode(c.n), "e": B64.encode(c.e) })
            }
            Signer::Hs(_) => panic!("an HMAC key is never published"),
        };
        jwk["use"] = "sig".into();
        jwk["alg"] = self.alg().into();
        if let Some(kid) = &self.kid {
            jwk["kid"] = kid.as_str().into();
        }
        jwk
    }

    fn header(&self) -> Value {
        let mut h = json!({ "alg": self.alg(), "typ": "JWT" });
        if let Some(kid) = &self.kid {
            h["kid"] = kid.as_str().into();
        }
        h
    }

    fn token(&self, claims: &Value) -> String {
        self.token_with_header(&self.header(), claims)
    }

    fn token_with_header(&self, header: &Value, claims: &Value) -> String {
        let input = unsigned(header, claims);
        let sig = self.sign(input.as_bytes());
        format!("{input}.{}", B64.encode(sig))
    }
}

/// `base64url(header).base64url(claims)`: the signing input.
fn unsigned(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    )
}

/// The token with one bit of its decoded signature flipped (still valid base64url).
fn flip_signature_bit(token: &str) -> String {
    let (input, sig) = token.rsplit_once('.').unwrap();
    let mut sig = B64.decode(sig).unwrap();
    sig[0] ^= 0x01;
    format!("{input}.{}", B64.encode(sig))
}

fn jwks(keys: &[&TestKey]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() }).to_string()
}

fn write_jwks(dir: &Path, name: &str, keys: &[&TestKey]) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, jwks(keys)).unwrap();
    path
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut b = vec![0; n];
    SystemRandom::new().fill(&mut b).unwrap();
    b
}

// === issuers ===

fn listed(tenants: &[&str]) -> IssuerTenants {
    IssuerTenants::Listed(
        tenants
            .iter()
            .map(|t| TenantId::parse(t).unwrap())
            .collect(),
    )
}

fn fixed(tenant: &str) -> IssuerTenants {
    IssuerTenants::Fixed(TenantId::parse(tenant).unwrap())
}

fn issuer(
    name: &str,
    iss: &str,
    algorithms: &[Algorithm],
    keys: KeySource,
    tenants: IssuerTenants,
) -> Issuer {
    Issuer {
        name: name.into(),
        algorithms: algorithms.to_vec(),
        keys,
        issuer: iss.into(),
        audience: AUD.into(),
        tenants,
        tenant_claim: "tenant".into(),
        groups_claim: "groups".into(),
        max_ttl: Duration::from_secs(3600),
        clock_skew: Duration::from_secs(SKEW),
        admin: None,
    }
}

const CORP: &str = "https://corp.idp.test";
const EDONLY: &str = "https://edonly.idp.test";
const RSONLY: &str = "https://rsonly.idp.test";
const SHARED: &str = "https://shared.idp.test";

/// Four issuers, keys in files under a temp dir:
/// - `corp`: EdDSA + ES256 + RS256 from one JWKS file, may speak for acme and globex;
/// - `edonly`: EdDSA only (same Ed25519 key), acme;
/// - `rsonly`: RS256 only (same RSA key), acme;
/// - `shared`: HS256 with a 48-byte key file, fixed tenant acme.
struct Fixture {
    _dir: TempDir,
    ed: TestKey,
    es: TestKey,
    rs: TestKey,
    hs: TestKey,
    settings: Settings,
    verifier: Verifier,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ed = TestKey::ed25519("ed-1");
        let es = TestKey::es256("es-1");
        let rs = TestKey::rs256("rs-1");
        let secret = random_bytes(48);
        let key_file = dir.path().join("shared.key");
        fs::write(&key_file, &secret).unwrap();
        let hs = TestKey::hs256(&secret, None);
        let mut settings = Settings::defaults(dir.path());
        settings.issuers = vec![
            issuer(
                "corp",
                CORP,
                &[Algorithm::EdDSA, Algorithm::ES256, Algorithm::RS256],
                KeySource::JwksFile(write_jwks(dir.path(), "corp.json", &[&ed, &es, &rs])),
                listed(&["acme", "globex"]),
            ),
            issuer(
                "edonly",
                EDONLY,
                &[Algorithm::EdDSA],
                KeySource::JwksFile(write_jwks(dir.path(), "edonly.json", &[&ed])),
                listed(&["acme"]),
            ),
            issuer(
                "rsonly",
                RSONLY,
                &[Algorithm::RS256],
                KeySource::JwksFile(write_jwks(dir.path(), "rsonly.json", &[&rs])),
                listed(&["acme"]),
            ),
            issuer(
                "shared",
                SHARED,
                &[Algorithm::HS256],
                KeySource::KeyFile(key_file),
                fixed("acme"),
            ),
        ];
        let verifier = Verifier::new(&settings, None).unwrap();
        Self {
            _dir: dir,
            ed,
            es,
            rs,
            hs,
            settings,
            verifier,
        }
    }

    async fn verify(&self, token: &str) -> Result<Principal, Rejection> {
        self.verifier.verify_at(token, at(NOW)).await
    }

    /// Asserts that `token` is rejected with exactly `want`.
    async fn rejects(&self, what: &str, token: &str, want: Rejection) {
        let got = self.verify(token).await;
        assert_eq!(got, Err(want), "{what}: token {token}");
    }

    /// Asserts that `token` is rejected with an id error about a `kind` id.
    async fn rejects_id(&self, what: &str, token: &str, kind: &str) {
        match self.verify(token).await {
            Err(Rejection::Id(e)) => {
                let k = match &e {
                    IdError::Empty { kind }
                    | IdError::TooLong { kind, .. }
                    | IdError::LeadingDot { kind, .. }
                    | IdError::BadChar { kind, .. } => *kind,
                    other => panic!("{what}: unexpected id error {other:?}"),
                };
                assert_eq!(k, kind, "{what}: {e}");
            }
            other => panic!("{what}: expected an invalid {kind} id, got {other:?}"),
        }
    }
}

// === 1. accepted tokens ===

#[tokio::test]
async fn accepts_eddsa_es256_and_rs256_from_a_jwks_file() {
    let fx = Fixture::new();
    for key in [&fx.ed, &fx.es, &fx.rs] {
        let got = fx.verify(&key.token(&claims(CORP))).await;
        assert_eq!(
            got,
            Ok(principal("acme", "alice", &["eng", "ops"])),
            "{}",
            key.alg()
        );
        // Another listed tenant, another user, no groups claim at all.
        let c = with(
            claims(CORP),
            json!({ "tenant": "globex", "sub": "bob@globex.example", "groups": null }),
        );
        assert_eq!(
            fx.verify(&key.token(&c)).await,
            Ok(principal("globex", "bob@globex.example", &[])),
            "{}",
            key.alg()
        );
    }
    // `aud` may be an array holding the audience among others.
    let c = with(claims(CORP), json!({ "aud": ["other", AUD] }));
    assert!(fx.verify(&fx.ed.token(&c)).await.is_ok());
    // A key set with a single key for the algorithm also verifies a token without `kid`.
    let c = with(claims(EDONLY), json!({ "sub": "no-kid" }));
    assert_eq!(
        fx.verify(&fx.ed.with_kid(None).token(&c)).await,
        Ok(principal("acme", "no-kid", &["eng", "ops"]))
    );
    // The longest valid id (128 bytes) is accepted.
    let long = "u".repeat(128);
    let c = with(claims(CORP), json!({ "sub": long }));
    assert_eq!(
        fx.verify(&fx.es.token(&c)).await.unwrap().user.as_str(),
        long
    );
}

#[tokio::test]
async fn accepts_hs256_from_a_key_file() {
    let fx = Fixture::new();
    // Built by this file's signer, and by the crate's own `sign_hs256`.
    let Signer::Hs(secret) = &*fx.hs.signer else {
        unreachable!()
    };
    let c = with(claims(SHARED), json!({ "groups": ["admins"] }));
    for token in [fx.hs.token(&c), sign_hs256(secret, None, &c)] {
        assert_eq!(
            fx.verify(&token).await,
            Ok(principal("acme", "alice", &["admins"]))
        );
    }
    // The issuer's tenant is fixed: a token without a tenant claim is for acme.
    let c = with(claims(SHARED), json!({ "tenant": null, "sub": "carol" }));
    assert_eq!(
        fx.verify(&fx.hs.token(&c)).await,
        Ok(principal("acme", "carol", &["eng", "ops"]))
    );
}

#[tokio::test]
async fn refuses_short_hs256_key_files_and_bad_jwks_files() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.key");
    fs::write(&short, random_bytes(31)).unwrap();
    let mut settings = Settings::defaults(dir.path());
    settings.issuers = vec![issuer(
        "short",
        SHARED,
        &[Algorithm::HS256],
        KeySource::KeyFile(short),
        fixed("acme"),
    )];
    let err = Verifier::new(&settings, None).unwrap_err().to_string();
    assert!(err.contains("at least 32 bytes"), "{err}");

    // A JWK whose `alg` does not fit its key type is a broken key set, not a skipped key.
    let ed = TestKey::ed25519("ed-1");
    let mut jwk = ed.jwk();
    jwk["alg"] = "ES256".into();
    let path = dir.path().join("bad.json");
    fs::write(&path, json!({ "keys": [jwk] }).to_string()).unwrap();
    settings.issuers = vec![issuer(
        "bad",
        CORP,
        &[Algorithm::EdDSA],
        KeySource::JwksFile(path),
        fixed("acme"),
    )];
    let err = Verifier::new(&settings, None).unwrap_err().to_string();
    assert!(err.contains("`bad`") && err.contains("ES256"), "{err}");

    // A missing file names the file.
    settings.issuers[0].keys = KeySource::JwksFile(dir.path().join("missing.json"));
    let err = Verifier::new(&settings, None).unwrap_err().to_string();
    assert!(err.contains("missing.json"), "{err}");
}

#[tokio::test]
async fn skips_keys_it_cannot_use_but_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let ed = TestKey::ed25519("ed-1");
    // Real identity providers publish keys behalf does not use next to the ones it does:
    // encryption keys, other curves, symmetric keys, RSA keys pinned to other algorithms.
    let set = json!({ "keys": [
        { "kty": "RSA", "use": "enc", "alg": "RSA-OAEP", "kid": "enc-1",
          "n": B64.encode(RsaPublicKeyComponents::<Vec<u8>>::from(RSA_KEY.public()).n),
          "e": "AQAB" },
        { "kty": "EC", "crv": "P-384", "kid": "p384", "x": "AA", "y": "AA" },
        { "kty": "oct", "kid": "oct-1", "k": B64.encode(ed.public_bytes()) },
        { "kty": "RSA", "alg": "PS256", "kid": "pss-1",
          "n": B64.encode(RsaPublicKeyComponents::<Vec<u8>>::from(RSA_KEY.public()).n),
          "e": "AQAB" },
        ed.jwk(),
    ]});
    let path = dir.path().join("mixed.json");
    fs::write(&path, set.to_string()).unwrap();
    let mut settings = Settings::defaults(dir.path());
    settings.issuers = vec![issuer(
        "mixed",
        CORP,
        &[Algorithm::EdDSA, Algorithm::RS256],
        KeySource::JwksFile(path),
        listed(&["acme"]),
    )];
    let verifier = Verifier::new(&settings, None).unwrap();
    let ok = verifier.verify_at(&ed.token(&claims(CORP)), at(NOW)).await;
    assert_eq!(ok, Ok(principal("acme", "alice", &["eng", "ops"])));
    // The skipped keys really are unusable: RS256 tokens naming them find no key.
    let rs = TestKey::rs256("enc-1");
    for kid in ["enc-1", "pss-1"] {
        let got = verifier
            .verify_at(&rs.with_kid(Some(kid)).token(&claims(CORP)), at(NOW))
            .await;
        assert_eq!(
            got,
            Err(Rejection::UnknownKey {
                kid: Some(kid.into()),
                issuer: "mixed".into()
            })
        );
    }
}

// === 2. rejections ===

#[tokio::test]
async fn rejects_tokens_outside_their_time_window() {
    let fx = Fixture::new();
    let k = &fx.ed;
    let c = with(claims(CORP), json!({ "iat": NOW - 1200, "exp": NOW - 600 }));
    fx.rejects("expired", &k.token(&c), Rejection::Expired)
        .await;
    let c = with(claims(CORP), json!({ "nbf": NOW + 300 }));
    fx.rejects("nbf in the future", &k.token(&c), Rejection::NotYetValid)
        .await;
    let c = with(claims(CORP), json!({ "iat": NOW + 300, "exp": NOW + 900 }));
    fx.rejects("iat in the future", &k.token(&c), Rejection::IssuedInFuture)
        .await;
    let c = with(claims(CORP), json!({ "exp": NOW + 7200 }));
    fx.rejects(
        "lifetime over max_ttl",
        &k.token(&c),
        Rejection::LifetimeTooLong {
            lifetime: 7200,
            max: 3600,
        },
    )
    .await;
    // Lifetime counts from `iat`, not from now: an old token with a near `exp` is too long.
    let c = with(
        claims(CORP),
        json!({ "iat": NOW - 86_400, "exp": NOW + 60 }),
    );
    fx.rejects(
        "old iat",
        &k.token(&c),
        Rejection::LifetimeTooLong {
            lifetime: 86_460,
            max: 3600,
        },
    )
    .await;
    // Exactly max_ttl is allowed.
    let c = with(claims(CORP), json!({ "exp": NOW + 3600 }));
    assert!(fx.verify(&k.token(&c)).await.is_ok());
}

#[tokio::test]
async fn rejects_the_wrong_audience() {
    let fx = Fixture::new();
    for aud in [
        json!("other"),
        json!("Behalf"),
        json!(["other", "another"]),
        json!([]),
        json!(["behalf-x"]),
        json!(7),
        json!({ "aud": "behalf" }),
    ] {
        let c = with(claims(CORP), json!({ "aud": aud }));
        fx.rejects(&format!("aud {aud}"), &fx.ed.token(&c), Rejection::Audience)
            .await;
    }
    let c = with(claims(CORP), json!({ "aud": null }));
    fx.rejects("no aud", &fx.ed.token(&c), Rejection::Audience)
        .await;
}

#[tokio::test]
async fn rejects_issuers_that_are_not_configured() {
    let fx = Fixture::new();
    for iss in [
        json!("https://evil.idp.test"),
        json!("https://corp.idp.test/"),
        json!("HTTPS://CORP.IDP.TEST"),
        json!(""),
        json!(["https://corp.idp.test"]),
        json!(1),
    ] {
        let c = with(claims(CORP), json!({ "iss": iss }));
        fx.rejects(
            &format!("iss {iss}"),
            &fx.ed.token(&c),
            Rejection::UnknownIssuer,
        )
        .await;
    }
    let c = with(claims(CORP), json!({ "iss": null }));
    fx.rejects("no iss", &fx.ed.token(&c), Rejection::UnknownIssuer)
        .await;
    // Without `dev = true` there is no development issuer either.
    let c = with(claims(dev::ISSUER), json!({ "aud": dev::AUDIENCE }));
    fx.rejects("dev iss", &fx.hs.token(&c), Rejection::UnknownIssuer)
        .await;
}

#[tokio::test]
async fn rejects_a_tenant_outside_the_issuers_list() {
    let fx = Fixture::new();
    for tenant in ["initech", "ACME", "acme2"] {
        let c = with(claims(CORP), json!({ "tenant": tenant }));
        fx.rejects(
            tenant,
            &fx.es.token(&c),
            Rejection::Tenant {
                issuer: "corp".into(),
                tenant: tenant.into(),
            },
        )
        .await;
    }
    // globex is listed for corp but not for edonly, with the same Ed25519 key.
    let c = with(claims(EDONLY), json!({ "tenant": "globex" }));
    fx.rejects(
        "globex via edonly",
        &fx.ed.token(&c),
        Rejection::Tenant {
            issuer: "edonly".into(),
            tenant: "globex".into(),
        },
    )
    .await;
    // A listing issuer needs the claim; it never defaults to one of its tenants.
    let c = with(claims(EDONLY), json!({ "tenant": null }));
    fx.rejects(
        "no tenant",
        &fx.ed.token(&c),
        Rejection::Claim("tenant".into()),
    )
    .await;
}

#[tokio::test]
async fn rejects_unknown_and_ambiguous_kids() {
    let fx = Fixture::new();
    let unknown = |kid: &str| Rejection::UnknownKey {
        kid: Some(kid.into()),
        issuer: "corp".into(),
    };
    for kid in ["nope", "", "ED-1", "ed-1 "] {
        let t = fx.ed.with_kid(Some(kid)).token(&claims(CORP));
        fx.rejects(kid, &t, unknown(kid)).await;
    }
    // A kid that exists, but for another algorithm: es-1 is the P-256 key.
    let t = fx.ed.with_kid(Some("es-1")).token(&claims(CORP));
    fx.rejects("kid of another alg", &t, unknown("es-1")).await;

    // Without a kid, an issuer with two keys for the algorithm is ambiguous.
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (TestKey::ed25519("a"), TestKey::ed25519("b"));
    let mut settings = Settings::defaults(dir.path());
    settings.issuers = vec![issuer(
        "two",
        CORP,
        &[Algorithm::EdDSA],
        KeySource::JwksFile(write_jwks(dir.path(), "two.json", &[&a, &b])),
        listed(&["acme"]),
    )];
    let v = Verifier::new(&settings, None).unwrap();
    let got = v
        .verify_at(&a.with_kid(None).token(&claims(CORP)), at(NOW))
        .await;
    assert_eq!(
        got,
        Err(Rejection::UnknownKey {
            kid: None,
            issuer: "two".into()
        })
    );
    assert!(v.verify_at(&a.token(&claims(CORP)), at(NOW)).await.is_ok());
}

#[tokio::test]
async fn rejects_alg_none_and_unsupported_algorithms() {
    let fx = Fixture::new();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = json!({ "alg": alg, "typ": "JWT" });
        let token = format!("{}.", unsigned(&header, &claims(CORP)));
        fx.rejects(alg, &token, Rejection::Algorithm(alg.into()))
            .await;
        // Also with a kid of a real key.
        let header = json!({ "alg": alg, "kid": "ed-1" });
        let token = format!("{}.", unsigned(&header, &claims(CORP)));
        fx.rejects(alg, &token, Rejection::Algorithm(alg.into()))
            .await;
    }
    // `none` carrying a real signature made by a configured key is still `none`.
    let header = json!({ "alg": "none", "kid": "ed-1" });
    let token = fx.ed.token_with_header(&header, &claims(CORP));
    fx.rejects("none, signed", &token, Rejection::Algorithm("none".into()))
        .await;
    for alg in ["HS512", "RS512", "PS256", "ES384", "eddsa", "Ed25519", ""] {
        let header = json!({ "alg": alg, "kid": "ed-1" });
        let token = fx.ed.token_with_header(&header, &claims(CORP));
        fx.rejects(alg, &token, Rejection::Algorithm(alg.into()))
            .await;
    }
}

#[tokio::test]
async fn rejects_algorithms_not_pinned_for_the_issuer() {
    let fx = Fixture::new();
    let not_allowed = |alg: &str, issuer: &str| Rejection::AlgorithmNotAllowed {
        alg: alg.into(),
        issuer: issuer.into(),
    };
    // ES256 and RS256 are valid algorithms with real keys (in corp's set), but edonly pins
    // EdDSA.
    for key in [&fx.es, &fx.rs] {
        let token = key.token(&claims(EDONLY));
        fx.rejects(key.alg(), &token, not_allowed(key.alg(), "edonly"))
            .await;
    }
    // The shared HS256 secret cannot sign for corp, which has no HS256.
    let token = fx.hs.token(&claims(CORP));
    fx.rejects("HS256 at corp", &token, not_allowed("HS256", "corp"))
        .await;
    // And the HS256 issuer takes nothing else.
    let token = fx.ed.token(&claims(SHARED));
    fx.rejects("EdDSA at shared", &token, not_allowed("EdDSA", "shared"))
        .await;
}

#[tokio::test]
async fn rejects_hs256_signed_with_a_public_key() {
    let fx = Fixture::new();
    // Everything an attacker knows about a public key, used as an HMAC secret.
    let secrets_for = |key: &TestKey| -> Vec<Vec<u8>> {
        let jwk = key.jwk();
        vec![
            key.public_bytes(),
            B64.encode(key.public_bytes()).into_bytes(),
            jwk.to_string().into_bytes(),
            jwks(&[key]).into_bytes(),
        ]
    };
    for (key, iss, name) in [(&fx.ed, EDONLY, "edonly"), (&fx.rs, RSONLY, "rsonly")] {
        for secret in secrets_for(key) {
            for kid in [key.kid.as_deref(), None] {
                let forged = TestKey::hs256(&secret, kid).token(&claims(iss));
                fx.rejects(
                    name,
                    &forged,
                    Rejection::AlgorithmNotAllowed {
                        alg: "HS256".into(),
                        issuer: name.into(),
                    },
                )
                .await;
            }
        }
    }

    // Defence in depth: even an issuer built (bypassing behalf.toml's check) to allow HS256
    // next to a JWKS never uses a public key, nor a symmetric `oct` JWK, as an HMAC secret.
    let dir = tempfile::tempdir().unwrap();
    let ed = &fx.ed;
    let set = json!({ "keys": [
        ed.jwk(),
        { "kty": "oct", "kid": "oct-1", "alg": "HS256", "k": B64.encode(ed.public_bytes()) },
    ]});
    let path = dir.path().join("confused.json");
    fs::write(&path, set.to_string()).unwrap();
    let mut settings = Settings::defaults(dir.path());
    settings.issuers = vec![issuer(
        "confused",
        EDONLY,
        &[Algorithm::EdDSA, Algorithm::HS256],
        KeySource::JwksFile(path),
        listed(&["acme"]),
    )];
    let v = Verifier::new(&settings, None).unwrap();
    for secret in secrets_for(ed) {
        for kid in [Some("ed-1"), Some("oct-1"), None] {
            let forged = TestKey::hs256(&secret, kid).token(&claims(EDONLY));
            assert_eq!(
                v.verify_at(&forged, at(NOW)).await,
                Err(Rejection::UnknownKey {
                    kid: kid.map(str::to_owned),
                    issuer: "confused".into()
                }),
                "kid {kid:?}"
            );
        }
    }
    assert!(
        v.verify_at(&ed.token(&claims(EDONLY)), at(NOW))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn rejects_bad_signatures() {
    let fx = Fixture::new();
    let impostor_ed = TestKey::ed25519("ed-1");
    let impostor_es = TestKey::es256("es-1");
    let other_secret = TestKey::hs256(&random_bytes(48), None);
    for (key, iss, impostor) in [
        (&fx.ed, CORP, &impostor_ed),
        (&fx.es, CORP, &impostor_es),
        (&fx.rs, RSONLY, &fx.rs),
        (&fx.hs, SHARED, &other_secret),
    ] {
        let alg = key.alg();
        let good = key.token(&claims(iss));
        // A flipped bit in the signature.
        fx.rejects(alg, &flip_signature_bit(&good), Rejection::Signature)
            .await;
        // The claims changed after signing (tenant swapped, same signature).
        let (_, sig) = good.rsplit_once('.').unwrap();
        let tampered = format!(
            "{}.{sig}",
            unsigned(
                &key.header(),
                &with(claims(iss), json!({ "sub": "mallory" }))
            )
        );
        fx.rejects(alg, &tampered, Rejection::Signature).await;
        // The signature cut short, or empty.
        let (input, sig) = good.rsplit_once('.').unwrap();
        let short = B64.encode(&B64.decode(sig).unwrap()[..10]);
        fx.rejects(alg, &format!("{input}.{short}"), Rejection::Signature)
            .await;
        fx.rejects(alg, &format!("{input}."), Rejection::Signature)
            .await;
        // Signed by another key that claims the same kid (RSA: the signature of other claims).
        if !std::ptr::eq(key, impostor) {
            let forged = impostor.token(&with(claims(iss), json!({ "sub": "impostor" })));
            fx.rejects(alg, &forged, Rejection::Signature).await;
        }
        // Sanity: the untouched token verifies.
        assert!(fx.verify(&good).await.is_ok(), "{alg}");
    }
}

#[tokio::test]
async fn rejects_malformed_tokens() {
    let fx = Fixture::new();
    let good = fx.ed.token(&claims(CORP));
    assert!(fx.verify(&good).await.is_ok());
    let parts: Vec<&str> = good.split('.').collect();
    let (h, p, s) = (parts[0], parts[1], parts[2]);
    let enc = |v: &str| B64.encode(v);
    let header = fx.ed.header().to_string();
    let claims_json = claims(CORP).to_string();
    let cases: Vec<(&str, String)> = vec![
        ("empty", String::new()),
        ("one part", h.to_owned()),
        ("two parts", format!("{h}.{p}")),
        ("four parts", format!("{h}.{p}.{s}.{s}")),
        ("trailing dot", format!("{good}.")),
        ("padding in header", format!("{h}=.{p}.{s}")),
        ("padding in payload", format!("{h}.{p}=.{s}")),
        ("padding in signature", format!("{h}.{p}.{s}==")),
        ("bad base64 in header", format!("!!.{p}.{s}")),
        ("bad base64 in payload", format!("{h}.*{p}.{s}")),
        ("bad base64 in signature", format!("{h}.{p}.{s}~")),
        ("whitespace", format!("{h}.{p}.{s}\n")),
        ("leading space", format!(" {good}")),
        ("header not JSON", format!("{}.{p}.{s}", enc("{\"alg\":"))),
        (
            "header not an object",
            format!("{}.{p}.{s}", enc("[\"EdDSA\"]")),
        ),
        (
            "header without alg",
            format!("{}.{p}.{s}", enc("{\"typ\":\"JWT\"}")),
        ),
        (
            "alg not a string",
            format!("{}.{p}.{s}", enc("{\"alg\":1}")),
        ),
        ("payload not JSON", format!("{h}.{}.{s}", enc("hello"))),
        ("payload an array", format!("{h}.{}.{s}", enc("[1,2]"))),
        ("payload a string", format!("{h}.{}.{s}", enc("\"sub\""))),
        ("payload null", format!("{h}.{}.{s}", enc("null"))),
        (
            "payload with trailing junk",
            format!("{h}.{}.{s}", enc(&format!("{claims_json}x"))),
        ),
        (
            "header with trailing junk",
            format!("{}.{p}.{s}", enc(&format!("{header}}}"))),
        ),
    ];
    for (what, token) in cases {
        match fx.verify(&token).await {
            Err(Rejection::Malformed(_)) => {}
            other => panic!("{what}: expected Malformed, got {other:?} for {token:?}"),
        }
    }
    // The standard base64 alphabet (`+`, `/`) is not base64url: find a signature that uses
    // `-` or `_` (about 94% of Ed25519 signatures do) and re-encode it in the standard one.
    let mut checked = false;
    for i in 0..64 {
        let token = fx
            .ed
            .token(&with(claims(CORP), json!({ "sub": format!("u{i}") })));
        let (input, sig) = token.rsplit_once('.').unwrap();
        if sig.contains(['-', '_']) {
            let standard = STANDARD_NO_PAD.encode(B64.decode(sig).unwrap());
            match fx.verify(&format!("{input}.{standard}")).await {
                Err(Rejection::Malformed(_)) => {}
                other => panic!("standard alphabet: expected Malformed, got {other:?}"),
            }
            checked = true;
            break;
        }
    }
    assert!(checked, "no signature with `-` or `_` in 64 tries");
    // Oversized tokens are refused before any parsing.
    let big = with(claims(CORP), json!({ "pad": "x".repeat(20_000) }));
    assert_eq!(
        fx.verify(&fx.ed.token(&big)).await,
        Err(Rejection::Malformed("token is too long"))
    );
}

#[tokio::test]
async fn rejects_critical_header_extensions() {
    let fx = Fixture::new();
    for crit in [json!(["exp"]), json!([]), json!(["b64"]), json!("x")] {
        let mut header = fx.ed.header();
        header["crit"] = crit.clone();
        header["exp"] = NOW.into();
        let token = fx.ed.token_with_header(&header, &claims(CORP));
        fx.rejects(&format!("crit {crit}"), &token, Rejection::Critical)
            .await;
    }
}

#[tokio::test]
async fn rejects_invalid_ids() {
    let fx = Fixture::new();
    let bad = [
        "../x".to_owned(),
        "a/b".to_owned(),
        ".".to_owned(),
        "..".to_owned(),
        ".hidden".to_owned(),
        String::new(),
        "x".repeat(129),
        "a\\b".to_owned(),
        "a b".to_owned(),
        "a\u{0}b".to_owned(),
        "a\nb".to_owned(),
        "ålice".to_owned(),
        "a%2fb".to_owned(),
    ];
    for id in &bad {
        let c = with(claims(CORP), json!({ "sub": id }));
        fx.rejects_id(&format!("sub {id:?}"), &fx.ed.token(&c), "user")
            .await;
        // corp lists its tenants, so the claim is parsed as an id.
        let c = with(claims(CORP), json!({ "tenant": id }));
        fx.rejects_id(&format!("tenant {id:?}"), &fx.ed.token(&c), "tenant")
            .await;
        let c = with(claims(CORP), json!({ "groups": ["eng", id] }));
        fx.rejects_id(&format!("group {id:?}"), &fx.ed.token(&c), "group")
            .await;
        // A fixed-tenant issuer refuses any tenant claim but its own.
        let c = with(claims(SHARED), json!({ "tenant": id }));
        match fx.verify(&fx.hs.token(&c)).await {
            Err(Rejection::Tenant { issuer, .. }) => assert_eq!(issuer, "shared"),
            other => panic!("fixed tenant {id:?}: {other:?}"),
        }
    }
    // The exact reasons, for the ids the issue names.
    let c = with(claims(CORP), json!({ "sub": "." }));
    assert_eq!(
        fx.verify(&fx.ed.token(&c)).await,
        Err(Rejection::Id(IdError::LeadingDot {
            kind: "user",
            value: ".".into()
        }))
    );
    let c = with(claims(CORP), json!({ "sub": "" }));
    assert_eq!(
        fx.verify(&fx.ed.token(&c)).await,
        Err(Rejection::Id(IdError::Empty { kind: "user" }))
    );
    let c = with(claims(CORP), json!({ "tenant": "x".repeat(129) }));
    assert_eq!(
        fx.verify(&fx.ed.token(&c)).await,
        Err(Rejection::Id(IdError::TooLong {
            kind: "tenant",
            len: 129
        }))
    );
    let c = with(claims(CORP), json!({ "groups": ["a/b"] }));
    assert_eq!(
        fx.verify(&fx.ed.token(&c)).await,
        Err(Rejection::Id(IdError::BadChar {
            kind: "group",
            value: "a/b".into(),
            found: '/'
        }))
    );
}

#[tokio::test]
async fn rejects_missing_or_mistyped_claims() {
    let fx = Fixture::new();
    let cases = [
        ("sub", json!({ "sub": null })),
        ("sub", json!({ "sub": 42 })),
        ("sub", json!({ "sub": ["alice"] })),
        ("exp", json!({ "exp": null })),
        ("exp", json!({ "exp": "1700000600" })),
        ("iat", json!({ "iat": null })),
        ("iat", json!({ "iat": true })),
        ("tenant", json!({ "tenant": 1 })),
        ("tenant", json!({ "tenant": ["acme"] })),
        ("groups", json!({ "groups": "eng" })),
        ("groups", json!({ "groups": { "eng": true } })),
        ("groups", json!({ "groups": ["eng", 1] })),
        ("groups", json!({ "groups": [["eng"]] })),
    ];
    for (claim, change) in cases {
        let c = with(claims(CORP), change.clone());
        fx.rejects(
            &format!("{change}"),
            &fx.es.token(&c),
            Rejection::Claim(claim.into()),
        )
        .await;
    }
    // `groups: null` is a present claim of the wrong type, not an absent one.
    let mut c = claims(CORP);
    c["groups"] = Value::Null;
    fx.rejects(
        "groups null",
        &fx.es.token(&c),
        Rejection::Claim("groups".into()),
    )
    .await;
}

// === 3. issuers and the tenants they may speak for ===

#[tokio::test]
async fn fixed_tenant_issuers_speak_only_for_their_tenant() {
    let dir = tempfile::tempdir().unwrap();
    // Both issuers use an Ed25519 key with kid "k1", so only the issuer's own key set tells
    // them apart.
    let (ka, kb) = (TestKey::ed25519("k1"), TestKey::ed25519("k1"));
    let (a, b) = ("https://a.idp.test", "https://b.idp.test");
    let mut settings = Settings::defaults(dir.path());
    settings.issuers = vec![
        issuer(
            "a",
            a,
            &[Algorithm::EdDSA, Algorithm::ES256],
            KeySource::JwksFile(write_jwks(dir.path(), "a.json", &[&ka])),
            fixed("acme"),
        ),
        issuer(
            "b",
            b,
            &[Algorithm::EdDSA, Algorithm::ES256],
            KeySource::JwksFile(write_jwks(dir.path(), "b.json", &[&kb])),
            fixed("globex"),
        ),
    ];
    let v = Verifier::new(&settings, None).unwrap();
    let verify = |t: String| {
        let v = &v;
        async move { v.verify_at(&t, at(NOW)).await }
    };
    let tenant = |iss: &str, t: Option<&str>| with(claims(iss), json!({ "tenant": t }));

    // Each issuer speaks for its own tenant, with or without the claim.
    assert_eq!(
        verify(ka.token(&tenant(a, None))).await,
        Ok(principal("acme", "alice", &["eng", "ops"]))
    );
    assert_eq!(
        verify(ka.token(&tenant(a, Some("acme"))))
            .await
            .unwrap()
            .tenant
            .as_str(),
        "acme"
    );
    assert_eq!(
        verify(kb.token(&tenant(b, None)))
            .await
            .unwrap()
            .tenant
            .as_str(),
        "globex"
    );
    // A's key and iss naming globex: a tenant rejection.
    assert_eq!(
        verify(ka.token(&tenant(a, Some("globex")))).await,
        Err(Rejection::Tenant {
            issuer: "a".into(),
            tenant: "globex".into()
        })
    );
    // B cannot speak for acme.
    assert_eq!(
        verify(kb.token(&tenant(b, Some("acme")))).await,
        Err(Rejection::Tenant {
            issuer: "b".into(),
            tenant: "acme".into()
        })
    );
    // A's key under B's iss (same kid, and an algorithm B allows): the signature fails.
    assert_eq!(
        verify(ka.token(&tenant(b, None))).await,
        Err(Rejection::Signature)
    );
    assert_eq!(
        verify(ka.token(&tenant(b, Some("globex")))).await,
        Err(Rejection::Signature)
    );
    // B's key under A's iss.
    assert_eq!(
        verify(kb.token(&tenant(a, Some("acme")))).await,
        Err(Rejection::Signature)
    );

    // Exhaustively: nothing signed with A's key yields anything but an acme principal, and
    // nothing signed with B's key anything but a globex one.
    for (key, home) in [(&ka, "acme"), (&kb, "globex")] {
        for iss in [a, b, "https://c.idp.test"] {
            for t in [None, Some("acme"), Some("globex"), Some("initech")] {
                for kid in [Some("k1"), None] {
                    let token = key.with_kid(kid).token(&tenant(iss, t));
                    if let Ok(p) = verify(token).await {
                        assert_eq!(p.tenant.as_str(), home, "iss {iss}, tenant {t:?}");
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn listing_issuers_cannot_speak_for_each_others_tenants() {
    let dir = tempfile::tempdir().unwrap();
    let (ka, kb) = (TestKey::es256("k1"), TestKey::es256("k1"));
    let (a, b) = ("https://a.idp.test", "https://b.idp.test");
    let mut settings = Settings::defaults(dir.path());
    settings.issuers = vec![
        issuer(
            "a",
            a,
            &[Algorithm::ES256],
            KeySource::JwksFile(write_jwks(dir.path(), "a.json", &[&ka])),
            listed(&["acme", "acme-eu"]),
        ),
        issuer(
            "b",
            b,
            &[Algorithm::ES256],
            KeySource::JwksFile(write_jwks(dir.path(), "b.json", &[&kb])),
            listed(&["globex"]),
        ),
    ];
    let v = Verifier::new(&settings, None).unwrap();
    let tok = |k: &TestKey, iss: &str, t: &str| k.token(&with(claims(iss), json!({ "tenant": t })));
    assert_eq!(
        v.verify_at(&tok(&ka, a, "acme-eu"), at(NOW))
            .await
            .unwrap()
            .tenant
            .as_str(),
        "acme-eu"
    );
    assert_eq!(
        v.verify_at(&tok(&kb, b, "globex"), at(NOW))
            .await
            .unwrap()
            .tenant
            .as_str(),
        "globex"
    );
    assert_eq!(
        v.verify_at(&tok(&ka, a, "globex"), at(NOW)).await,
        Err(Rejection::Tenant {
            issuer: "a".into(),
            tenant: "globex".into()
        })
    );
    assert_eq!(
        v.verify_at(&tok(&kb, b, "acme"), at(NOW)).await,
        Err(Rejection::Tenant {
            issuer: "b".into(),
            tenant: "acme".into()
        })
    );
    assert_eq!(
        v.verify_at(&tok(&ka, b, "globex"), at(NOW)).await,
        Err(Rejection::Signature)
    );
    assert_eq!(
        v.verify_at(&tok(&kb, a, "acme"), at(NOW)).await,
        Err(Rejection::Signature)
    );
}

// === 4. clock skew ===

#[tokio::test]
async fn honours_clock_skew_and_no_more() {
    let fx = Fixture::new();
    let k = &fx.es;
    let exp = |e: u64| with(claims(CORP), json!({ "iat": e - 600, "exp": e }));
    // exp just past, within the skew: accepted; at or beyond the skew: expired.
    assert!(fx.verify(&k.token(&exp(NOW - 30))).await.is_ok());
    assert!(fx.verify(&k.token(&exp(NOW - SKEW + 1))).await.is_ok());
    fx.rejects("exp - skew", &k.token(&exp(NOW - SKEW)), Rejection::Expired)
        .await;
    fx.rejects(
        "beyond skew",
        &k.token(&exp(NOW - 3600)),
        Rejection::Expired,
    )
    .await;
    // nbf and iat just ahead, within the skew: accepted; beyond it: rejected.
    let nbf = |n: u64| with(claims(CORP), json!({ "nbf": n }));
    assert!(fx.verify(&k.token(&nbf(NOW + SKEW))).await.is_ok());
    fx.rejects(
        "nbf",
        &k.token(&nbf(NOW + SKEW + 1)),
        Rejection::NotYetValid,
    )
    .await;
    let iat = |i: u64| with(claims(CORP), json!({ "iat": i, "exp": i + 600 }));
    assert!(fx.verify(&k.token(&iat(NOW + SKEW))).await.is_ok());
    fx.rejects(
        "iat",
        &k.token(&iat(NOW + SKEW + 1)),
        Rejection::IssuedInFuture,
    )
    .await;

    // An issuer with no skew: exp is exact.
    let mut settings = fx.settings.clone();
    for i in &mut settings.issuers {
        i.clock_skew = Duration::ZERO;
    }
    let strict = Verifier::new(&settings, None).unwrap();
    let at_exp = k.token(&exp(NOW));
    assert_eq!(
        strict.verify_at(&at_exp, at(NOW)).await,
        Err(Rejection::Expired)
    );
    assert!(strict.verify_at(&at_exp, at(NOW - 1)).await.is_ok());
    assert_eq!(
        strict.verify_at(&k.token(&nbf(NOW + 1)), at(NOW)).await,
        Err(Rejection::NotYetValid)
    );
}

// === 5. the verified-token cache ===

#[tokio::test]
async fn cache_ends_at_exp_and_keys_on_the_whole_token() {
    let fx = Fixture::new();
    let token = fx.ed.token(&claims(CORP));
    let exp = NOW + TTL;
    let want = Ok(principal("acme", "alice", &["eng", "ops"]));
    assert_eq!(fx.verify(&token).await, want);
    assert_eq!(fx.verifier.verify_at(&token, at(exp - 1)).await, want);
    // A cached token with its signature changed is a different token: verified afresh.
    assert_eq!(
        fx.verify(&flip_signature_bit(&token)).await,
        Err(Rejection::Signature)
    );
    // Past exp (and the skew), the cached entry does not keep the token alive.
    for later in [exp + SKEW, exp + 3600, exp + 86_400 * 365] {
        assert_eq!(
            fx.verifier.verify_at(&token, at(later)).await,
            Err(Rejection::Expired),
            "at exp + {}",
            later - exp
        );
    }
}

// === 6. jwks_url: a real HTTPS endpoint on loopback ===

const JWKS_PATH: &str = "/.well-known/jwks.json";

/// A CA for test certificates.
struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl TestCa {
    fn new(name: &str) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, &self.pem).unwrap();
        path
    }

    /// A server certificate for `names` and its key.
    fn leaf(
        &self,
        names: &[&str],
    ) -> (
        rustls::pki_types::CertificateDer<'static>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (
            cert.der().clone(),
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
    }
}

/// A mock identity provider: serves `jwks` at `JWKS_PATH` with `status` over HTTPS and counts
/// the fetches of that path.
struct MockIdp {
    addr: SocketAddr,
    jwks: Arc<Mutex<String>>,
    status: Arc<AtomicU16>,
    fetches: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl MockIdp {
    async fn start(ca: &TestCa, names: &[&str], jwks: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cert, key) = ca.leaf(names);
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let jwks = Arc::new(Mutex::new(jwks));
        let status = Arc::new(AtomicU16::new(200));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (j, s, f) = (jwks.clone(), status.clone(), fetches.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let (j, s, f) = (j.clone(), s.clone(), f.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let (j, s, f) = (j.clone(), s.clone(), f.clone());
                            async move {
                                let resp = if req.method() == http::Method::GET
                                    && req.uri().path() == JWKS_PATH
                                {
                                    f.fetch_add(1, Ordering::SeqCst);
                                    let body = j.lock().unwrap().clone();
                                    http::Response::builder()
                                        .status(s.load(Ordering::SeqCst))
                                        .header("content-type", "application/json")
                                        .body(Full::new(Bytes::from(body)))
                                } else {
                                    http::Response::builder()
                                        .status(404)
                                        .body(Full::new(Bytes::new()))
                                };
                                Ok::<_, Infallible>(resp.unwrap())
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            jwks,
            status,
            fetches,
            task,
        }
    }

    fn url(&self, host: &str) -> String {
        format!("https://{host}:{}{JWKS_PATH}", self.addr.port())
    }

    fn serve(&self, body: String, status: u16) {
        *self.jwks.lock().unwrap() = body;
        self.status.store(status, Ordering::SeqCst);
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// Stops accepting connections; the port is closed when this returns.
    async fn stop(&self) {
        self.task.abort();
        while !self.task.is_finished() {
            tokio::task::yield_now().await;
        }
    }
}

const REMOTE: &str = "https://remote.idp.test";

/// Settings with one `jwks_url` issuer `remote` (EdDSA + ES256, acme) trusting `roots`.
fn remote_settings(dir: &Path, url: String, roots: Vec<PathBuf>) -> Settings {
    let mut settings = Settings::defaults(dir);
    settings.upstream_roots = roots;
    settings.issuers = vec![issuer(
        "remote",
        REMOTE,
        &[Algorithm::EdDSA, Algorithm::ES256],
        KeySource::JwksUrl(url),
        listed(&["acme"]),
    )];
    settings
}

fn unknown_remote_key(kid: &str) -> Rejection {
    Rejection::UnknownKey {
        kid: Some(kid.into()),
        issuer: "remote".into(),
    }
}

/// A fresh (never cached) valid token from `key` for the remote issuer.
fn remote_token(key: &TestKey, n: usize) -> String {
    key.token(&with(claims(REMOTE), json!({ "sub": format!("user{n}") })))
}

#[tokio::test]
async fn jwks_url_is_fetched_and_a_new_kid_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("behalf test CA");
    let (k1, k2) = (TestKey::ed25519("k1"), TestKey::es256("k2"));
    let idp = MockIdp::start(&ca, &["localhost", "127.0.0.1"], jwks(&[&k1])).await;
    let roots = vec![ca.write(dir.path(), "ca.pem")];
    for host in ["127.0.0.1", "localhost"] {
        let settings = remote_settings(dir.path(), idp.url(host), roots.clone());
        let v = Verifier::with_refetch_interval(&settings, None, Duration::ZERO).unwrap();
        idp.serve(jwks(&[&k1]), 200);
        let before = idp.fetches();
        // The first token fetches the set.
        assert_eq!(
            v.verify_at(&remote_token(&k1, 1), at(NOW)).await,
            Ok(principal("acme", "user1", &["eng", "ops"])),
            "{host}"
        );
        assert_eq!(idp.fetches(), before + 1, "{host}");
        // A known kid needs no fetch.
        assert!(v.verify_at(&remote_token(&k1, 2), at(NOW)).await.is_ok());
        assert_eq!(idp.fetches(), before + 1, "{host}");
        // Rotation: the provider publishes k2; a token naming it triggers a refetch.
        idp.serve(jwks(&[&k1, &k2]), 200);
        assert_eq!(
            v.verify_at(&remote_token(&k2, 3), at(NOW)).await,
            Ok(principal("acme", "user3", &["eng", "ops"])),
            "{host}"
        );
        assert_eq!(idp.fetches(), before + 2, "{host}");
        // Both keys are now held.
        assert!(v.verify_at(&remote_token(&k1, 4), at(NOW)).await.is_ok());
        assert!(v.verify_at(&remote_token(&k2, 5), at(NOW)).await.is_ok());
        assert_eq!(idp.fetches(), before + 2, "{host}");
        // A kid the provider does not publish: refetched, still rejected.
        let k3 = TestKey::ed25519("k3");
        assert_eq!(
            v.verify_at(&remote_token(&k3, 6), at(NOW)).await,
            Err(unknown_remote_key("k3"))
        );
        assert_eq!(idp.fetches(), before + 3, "{host}");
    }
}

#[tokio::test]
async fn jwks_url_refetches_at_most_once_per_interval() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("behalf test CA");
    let (k1, k2) = (TestKey::ed25519("k1"), TestKey::ed25519("k2"));
    let idp = MockIdp::start(&ca, &["127.0.0.1"], jwks(&[&k1])).await;
    let settings = remote_settings(
        dir.path(),
        idp.url("127.0.0.1"),
        vec![ca.write(dir.path(), "ca.pem")],
    );
    let interval = Duration::from_millis(400);
    let v = Verifier::with_refetch_interval(&settings, None, interval).unwrap();
    assert!(v.verify_at(&remote_token(&k1, 0), at(NOW)).await.is_ok());
    assert_eq!(idp.fetches(), 1);
    // Within the interval, unknown kids do not refetch, even once the key is published.
    idp.serve(jwks(&[&k1, &k2]), 200);
    for n in 1..=5 {
        let stranger = TestKey::ed25519(&format!("x{n}"));
        assert_eq!(
            v.verify_at(&remote_token(&stranger, n), at(NOW)).await,
            Err(unknown_remote_key(&format!("x{n}")))
        );
        assert_eq!(
            v.verify_at(&remote_token(&k2, n), at(NOW)).await,
            Err(unknown_remote_key("k2"))
        );
    }
    assert_eq!(idp.fetches(), 1, "refetched within the interval");
    // After the interval, one refetch picks k2 up...
    tokio::time::sleep(interval + Duration::from_millis(50)).await;
    assert!(v.verify_at(&remote_token(&k2, 10), at(NOW)).await.is_ok());
    assert_eq!(idp.fetches(), 2);
    // ...and the next unknown kids wait for the next interval again.
    for n in 11..=15 {
        let stranger = TestKey::ed25519("x");
        assert_eq!(
            v.verify_at(&remote_token(&stranger, n), at(NOW)).await,
            Err(unknown_remote_key("x"))
        );
    }
    assert_eq!(idp.fetches(), 2, "refetched within the interval");
}

#[tokio::test]
async fn jwks_url_fetch_failures_fail_closed_and_keep_cached_keys() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("behalf test CA");
    let (k1, k2) = (TestKey::ed25519("k1"), TestKey::es256("k2"));
    let idp = MockIdp::start(&ca, &["127.0.0.1"], jwks(&[&k1])).await;
    let settings = remote_settings(
        dir.path(),
        idp.url("127.0.0.1"),
        vec![ca.write(dir.path(), "ca.pem")],
    );
    let v = Verifier::with_refetch_interval(&settings, None, Duration::ZERO).unwrap();
    assert!(v.verify_at(&remote_token(&k1, 0), at(NOW)).await.is_ok());
    assert_eq!(idp.fetches(), 1);

    let bad_key = json!({ "keys": [{ "kty": "OKP", "crv": "Ed25519", "kid": "k2", "x": "!!" }] });
    let failures = [
        // An error status, even with a valid set (holding k2) in the body.
        ("500 with a JWKS body", jwks(&[&k1, &k2]), 500),
        ("404", jwks(&[&k1, &k2]), 404),
        ("a redirect", jwks(&[&k1, &k2]), 302),
        ("garbage", "<html>try again later</html>".to_owned(), 200),
        ("not a key set", json!({ "keys": "k2" }).to_string(), 200),
        ("a broken key", bad_key.to_string(), 200),
        ("truncated JSON", jwks(&[&k1, &k2])[..40].to_owned(), 200),
    ];
    for (n, (what, body, status)) in (1..).zip(failures) {
        idp.serve(body, status);
        let before = idp.fetches();
        assert_eq!(
            v.verify_at(&remote_token(&k2, n), at(NOW)).await,
            Err(unknown_remote_key("k2")),
            "{what}"
        );
        assert_eq!(idp.fetches(), before + 1, "{what}: no fetch was tried");
        // The keys fetched before still verify fresh tokens.
        assert!(
            v.verify_at(&remote_token(&k1, n + 1000), at(NOW))
                .await
                .is_ok(),
            "{what}: lost the cached keys"
        );
    }
    // The server goes away.
    idp.serve(jwks(&[&k1, &k2]), 200);
    idp.stop().await;
    assert_eq!(
        v.verify_at(&remote_token(&k2, 100), at(NOW)).await,
        Err(unknown_remote_key("k2"))
    );
    assert!(v.verify_at(&remote_token(&k1, 101), at(NOW)).await.is_ok());
    // A verifier that never fetched anything accepts nothing while the server is down.
    let cold = Verifier::with_refetch_interval(&settings, None, Duration::ZERO).unwrap();
    assert_eq!(
        cold.verify_at(&remote_token(&k1, 102), at(NOW)).await,
        Err(unknown_remote_key("k1"))
    );
}

#[tokio::test]
async fn jwks_url_needs_a_certificate_from_a_trusted_root_for_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let trusted = TestCa::new("trusted CA");
    let rogue = TestCa::new("rogue CA");
    let k1 = TestKey::ed25519("k1");
    let roots = vec![trusted.write(dir.path(), "trusted.pem")];
    let token = remote_token(&k1, 0);
    // Control: a certificate from the trusted root works.
    let good = MockIdp::start(&trusted, &["127.0.0.1"], jwks(&[&k1])).await;
    let settings = remote_settings(dir.path(), good.url("127.0.0.1"), roots.clone());
    let v = Verifier::with_refetch_interval(&settings, None, Duration::ZERO).unwrap();
    assert!(v.verify_at(&token, at(NOW)).await.is_ok());
    assert_eq!(good.fetches(), 1);
    // A certificate from an untrusted CA, and one from the trusted CA for another name: the
    // handshake fails, nothing is fetched, the token is rejected.
    let untrusted = MockIdp::start(&rogue, &["127.0.0.1"], jwks(&[&k1])).await;
    let wrong_name = MockIdp::start(&trusted, &["idp.example.com"], jwks(&[&k1])).await;
    for (what, idp) in [("untrusted CA", &untrusted), ("wrong name", &wrong_name)] {
        let settings = remote_settings(dir.path(), idp.url("127.0.0.1"), roots.clone());
        let v = Verifier::with_refetch_interval(&settings, None, Duration::ZERO).unwrap();
        assert_eq!(
            v.verify_at(&token, at(NOW)).await,
            Err(unknown_remote_key("k1")),
            "{what}"
        );
        assert_eq!(idp.fetches(), 0, "{what}: the request got through");
    }
    // Without the extra root, even the good server is not trusted.
    let settings = remote_settings(dir.path(), good.url("127.0.0.1"), Vec::new());
    let v = Verifier::with_refetch_interval(&settings, None, Duration::ZERO).unwrap();
    assert_eq!(
        v.verify_at(&token, at(NOW)).await,
        Err(unknown_remote_key("k1"))
    );
    assert_eq!(good.fetches(), 1);
}

#[tokio::test]
async fn a_cached_token_outlives_its_key_only_until_exp() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("behalf test CA");
    let (k1, k2) = (TestKey::ed25519("k1"), TestKey::ed25519("k2"));
    let idp = MockIdp::start(&ca, &["127.0.0.1"], jwks(&[&k1])).await;
    let settings = remote_settings(
        dir.path(),
        idp.url("127.0.0.1"),
        vec![ca.write(dir.path(), "ca.pem")],
    );
    let v = Verifier::with_refetch_interval(&settings, None, Duration::ZERO).unwrap();
    let token = remote_token(&k1, 0);
    let want = Ok(principal("acme", "user0", &["eng", "ops"]));
    assert_eq!(v.verify_at(&token, at(NOW)).await, want);
    // The provider retires k1; a k2 token makes the verifier fetch the new set.
    idp.serve(jwks(&[&k2]), 200);
    assert!(v.verify_at(&remote_token(&k2, 1), at(NOW)).await.is_ok());
    assert_eq!(idp.fetches(), 2);
    // k1 is gone: a fresh k1 token is rejected...
    assert_eq!(
        v.verify_at(&remote_token(&k1, 2), at(NOW)).await,
        Err(unknown_remote_key("k1"))
    );
    assert_eq!(idp.fetches(), 3);
    // ...but the token verified before is served from the cache, without a fetch.
    assert_eq!(v.verify_at(&token, at(NOW + TTL - 1)).await, want);
    assert_eq!(idp.fetches(), 3);
    // The cache is per verifier: a new one must verify the token afresh, and cannot.
    let other = Verifier::with_refetch_interval(&settings, None, Duration::ZERO).unwrap();
    assert_eq!(
        other.verify_at(&token, at(NOW)).await,
        Err(unknown_remote_key("k1"))
    );
    // From exp on, the cache no longer answers: verified afresh (within the skew), the
    // token fails for want of its key.
    assert_eq!(
        v.verify_at(&token, at(NOW + TTL)).await,
        Err(unknown_remote_key("k1"))
    );
}

// === 7. development mode ===

fn dev_settings(dir: &Path, dev: bool) -> (Settings, StateDir) {
    let mut settings = Settings::defaults(dir);
    settings.dev = dev;
    let state = StateDir::open(&dir.join("state")).unwrap();
    (settings, state)
}

fn ids(tenant: &str, user: &str, groups: &[&str]) -> (TenantId, UserId, Vec<GroupId>) {
    let p = principal(tenant, user, groups);
    (p.tenant, p.user, p.groups)
}

#[tokio::test]
async fn dev_mode_mints_tokens_for_any_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let (settings, state) = dev_settings(dir.path(), true);
    let v = Verifier::new(&settings, Some(&state)).unwrap();
    for (tenant, user, groups) in [
        ("acme", "alice", &["engineering", "ops"][..]),
        ("globex", "bob@globex.example", &[][..]),
    ] {
        let (t, u, g) = ids(tenant, user, groups);
        let token = dev::mint(true, &state, &t, &u, &g, Duration::from_secs(3600)).unwrap();
        assert_eq!(v.verify(&token).await, Ok(principal(tenant, user, groups)));
    }
    // The key lives in state_dir, mode 0600.
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(state.join(dev::KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // A token for the dev issuer signed with another key is not accepted.
    let (t, u, g) = ids("acme", "alice", &[]);
    let good = dev::mint(true, &state, &t, &u, &g, Duration::from_secs(60)).unwrap();
    let (input, _) = good.rsplit_once('.').unwrap();
    let payload: Value =
        serde_json::from_slice(&B64.decode(input.split('.').nth(1).unwrap()).unwrap()).unwrap();
    let forged = sign_hs256(&random_bytes(32), None, &payload);
    assert_eq!(v.verify(&forged).await, Err(Rejection::Signature));
    // Lifetimes: at most 24h, never zero.
    for ttl in [Duration::ZERO, dev::MAX_TTL + Duration::from_secs(1)] {
        assert!(matches!(
            dev::mint(true, &state, &t, &u, &g, ttl),
            Err(MintError::Ttl)
        ));
    }
    assert!(dev::mint(true, &state, &t, &u, &g, dev::MAX_TTL).is_ok());
    // Dev mode needs a state dir for its key.
    assert!(Verifier::new(&settings, None).is_err());
}

#[tokio::test]
async fn without_dev_mode_there_is_no_dev_issuer() {
    let dir = tempfile::tempdir().unwrap();
    let (settings, state) = dev_settings(dir.path(), false);
    let v = Verifier::new(&settings, Some(&state)).unwrap();
    // No key is generated without dev mode.
    assert!(!state.join(dev::KEY_FILE).exists());
    let (t, u, g) = ids("acme", "alice", &["engineering"]);
    assert!(matches!(
        dev::mint(false, &state, &t, &u, &g, Duration::from_secs(3600)),
        Err(MintError::NotDev)
    ));
    assert!(!state.join(dev::KEY_FILE).exists());
    // Even a token signed with the very key a dev-mode verifier would use is refused.
    let key = state.generated_key(dev::KEY_FILE).unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let c = json!({
        "iss": dev::ISSUER, "aud": dev::AUDIENCE, "sub": "alice", "tenant": "acme",
        "groups": ["engineering"], "iat": now, "exp": now + 600,
    });
    let token = sign_hs256(&key[..], None, &c);
    assert_eq!(v.verify(&token).await, Err(Rejection::UnknownIssuer));
    // Control: the same token verifies once dev mode is on.
    let (dev_settings, _) = dev_settings(dir.path(), true);
    let dev_v = Verifier::new(&dev_settings, Some(&state)).unwrap();
    assert_eq!(
        dev_v.verify(&token).await,
        Ok(principal("acme", "alice", &["engineering"]))
    );
}

/// A copy of the shipped `policies/` in a temp dir, with `dev` set as asked.
fn policies_copy(dev: bool) -> (TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let policies = tmp.path().join("policies");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"),
        &policies,
    );
    let toml_path = policies.join("behalf.toml");
    let text = fs::read_to_string(&toml_path).unwrap();
    assert!(
        text.lines().any(|l| l.trim() == "dev = true"),
        "the shipped behalf.toml sets dev = true"
    );
    let text: String = text
        .lines()
        .map(|l| {
            if l.trim() == "dev = true" {
                format!("dev = {dev}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    fs::write(&toml_path, text).unwrap();
    (tmp, policies)
}

fn mint_cli(policies: &Path, state: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_behalf"))
        .arg("--policies")
        .arg(policies)
        .arg("--state")
        .arg(state)
        .args(["token", "mint"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn cli_token_mint_refuses_without_dev_mode() {
    let (tmp, policies) = policies_copy(false);
    let state = tmp.path().join("state");
    let (code, stdout, stderr) =
        mint_cli(&policies, &state, &["--tenant", "acme", "--user", "alice"]);
    assert_eq!(code, Some(64), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stderr.contains("dev = true"), "stderr: {stderr}");
    assert!(stdout.trim().is_empty(), "printed a token: {stdout}");
    assert!(!state.join(dev::KEY_FILE).exists(), "generated a dev key");
}

#[tokio::test]
async fn cli_token_mint_in_dev_mode_prints_a_token_that_verifies() {
    let (tmp, policies) = policies_copy(true);
    let state_path = tmp.path().join("state");
    let (code, stdout, stderr) = mint_cli(
        &policies,
        &state_path,
        &[
            "--tenant", "globex", "--user", "bob", "--group", "sales", "--group", "eng", "--ttl",
            "15m",
        ],
    );
    assert_eq!(code, Some(0), "stdout: {stdout}\nstderr: {stderr}");
    let token = stdout.trim();
    assert_eq!(token.lines().count(), 1, "one token line: {stdout}");
    let policy = PolicySet::load(&policies).unwrap();
    assert!(policy.settings().dev);
    let state = StateDir::open(&state_path).unwrap();
    let v = Verifier::new(policy.settings(), Some(&state)).unwrap();
    assert_eq!(
        v.verify(token).await,
        Ok(principal("globex", "bob", &["sales", "eng"]))
    );
    // The requested lifetime is the token's.
    let payload: Value =
        serde_json::from_slice(&B64.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap();
    let (iat, exp) = (
        payload["iat"].as_u64().unwrap(),
        payload["exp"].as_u64().unwrap(),
    );
    assert_eq!(exp - iat, 900);
}

#[tokio::test]
async fn cli_token_mint_rejects_bad_ids_and_ttls_as_usage_errors() {
    let (tmp, policies) = policies_copy(true);
    let state = tmp.path().join("state");
    for args in [
        &["--tenant", "../x", "--user", "alice"][..],
        &["--tenant", "acme", "--user", "a/b"][..],
        &["--tenant", "acme", "--user", "alice", "--group", "."][..],
        &["--tenant", "", "--user", "alice"][..],
        &["--tenant", "acme", "--user", "alice", "--ttl", "25h"][..],
        &["--tenant", "acme", "--user", "alice", "--ttl", "0s"][..],
        &["--tenant", "acme"][..],
    ] {
        let (code, stdout, stderr) = mint_cli(&policies, &state, args);
        assert_eq!(
            code,
            Some(2),
            "{args:?}\nstdout: {stdout}\nstderr: {stderr}"
        );
        assert!(stdout.trim().is_empty(), "{args:?} printed: {stdout}");
    }
}
