//! Identity token verification, `behalf::identity::Verifier::verify_at`, cold and cached, for
//! the two kinds of issuer a deployment has:
//!
//! - `identity/hs256_dev/*`: development tokens minted by `behalf::identity::dev::mint` and
//!   checked against the development issuer (`dev = true`, key in a temporary state dir);
//! - `identity/rs256_jwks_file/*` and `identity/es256_jwks_file/*`: tokens signed here with an
//!   RSA-2048 key (generated with the `rsa` crate, signed with ring) and a P-256 key (ring),
//!   both published in one JWKS file of a configured issuer, each token naming its `kid`.
//!
//! Each issuer is measured two ways:
//!
//! - `cached`: the same token again on a warm verifier (a SHA-256 of the token and a map
//!   lookup under a mutex; what every request after a caller's first costs);
//! - `cold`: every verification is a cache miss. `POOL` distinct tokens (one per user) are
//!   minted up front; each verifier built (untimed) sees each token at most once, and a fresh
//!   verifier is built whenever the pool is used up. The time covers parsing, the signature,
//!   the claims checks and the insertion into the cache.
//!
//! Claims are what an identity provider would send: `iss`, `aud`, `sub`, `tenant`, two
//! groups, `iat` and `exp`. The JWKS tokens are checked at a fixed time; the development
//! tokens, which `mint` stamps with the real clock, at the time the bench starts. Every
//! measured call is awaited inside one current-thread tokio `block_on` per sample.
//!
//! `cargo bench --bench identity`

use std::convert::Infallible;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use behalf::identity::{Verifier, dev};
use behalf::policy::settings::{Algorithm, Issuer, IssuerTenants, KeySource, Settings};
use behalf::principal::{GroupId, Principal, TenantId, UserId};
use behalf::state::StateDir;
use criterion::{Bencher, Criterion, criterion_group, criterion_main};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair,
    RsaPublicKeyComponents,
};
use serde_json::{Value, json};
use tokio::runtime::Runtime;

/// Distinct tokens per issuer for the cold measurements (one verifier sees each once).
const POOL: usize = 512;
/// 2026-11-30T12:00:00Z: when the JWKS tokens are issued and checked.
const NOW: u64 = 1_796_040_000;
/// The JWKS tokens' lifetime.
const TTL: u64 = 600;
const CORP: &str = "https://idp.corp.example";
const AUDIENCE: &str = "behalf";

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

/// The identity provider's signing keys.
struct Idp {
    rsa: RsaKeyPair,
    ec: EcdsaKeyPair,
    rng: SystemRandom,
}

impl Idp {
    fn new() -> Self {
        use rsa::pkcs8::EncodePrivateKey;
        let rng = SystemRandom::new();
        let key = rsa::PrivateKey::new(&mut RingRng(SystemRandom::new()), 2048).unwrap();
        let rsa = RsaKeyPair::from_pkcs8(key.to_pkcs8_der().unwrap().as_bytes()).unwrap();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let ec = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        Self { rsa, ec, rng }
    }

    /// The published key set: both keys, `use = sig`, pinned to their algorithms.
    fn jwks(&self) -> String {
        let n_e = RsaPublicKeyComponents::<Vec<u8>>::from(self.rsa.public());
        let point = self.ec.public_key().as_ref();
        json!({ "keys": [
            { "kty": "RSA", "use": "sig", "alg": "RS256", "kid": "rs-2026",
              "n": B64.encode(n_e.n), "e": B64.encode(n_e.e) },
            { "kty": "EC", "use": "sig", "alg": "ES256", "kid": "es-2026", "crv": "P-256",
              "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..]) },
        ]})
        .to_string()
    }

    fn token(&self, alg: Algorithm, claims: &Value) -> String {
        let (name, kid) = match alg {
            Algorithm::RS256 => ("RS256", "rs-2026"),
            Algorithm::ES256 => ("ES256", "es-2026"),
            other => panic!("the bench IdP does not sign {other:?}"),
        };
        let header = json!({ "alg": name, "typ": "JWT", "kid": kid });
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = match alg {
            Algorithm::RS256 => {
                let mut sig = vec![0; self.rsa.public().modulus_len()];
                self.rsa
                    .sign(&RSA_PKCS1_SHA256, &self.rng, input.as_bytes(), &mut sig)
                    .unwrap();
                sig
            }
            _ => self
                .ec
                .sign(&self.rng, input.as_bytes())
                .unwrap()
                .as_ref()
                .to_vec(),
        };
        format!("{input}.{}", B64.encode(sig))
    }
}

fn user(i: usize) -> String {
    format!("user{i:04}@corp.example")
}

fn groups() -> Vec<GroupId> {
    ["engineering", "oncall"]
        .iter()
        .map(|g| GroupId::parse(g).unwrap())
        .collect()
}

/// Claims for user `i` of acme, issued at `NOW`.
fn claims(i: usize) -> Value {
    json!({
        "iss": CORP,
        "aud": AUDIENCE,
        "sub": user(i),
        "tenant": "acme",
        "groups": ["engineering", "oncall"],
        "iat": NOW,
        "exp": NOW + TTL,
    })
}

/// Settings with one issuer trusting the JWKS file at `jwks`, for tenant acme.
fn jwks_settings(dir: &Path, jwks: &Path) -> Settings {
    let mut settings = Settings::defaults(dir);
    settings.issuers = vec![Issuer {
        name: "corp".into(),
        algorithms: vec![Algorithm::RS256, Algorithm::ES256],
        keys: KeySource::JwksFile(jwks.to_owned()),
        issuer: CORP.into(),
        audience: AUDIENCE.into(),
        tenants: IssuerTenants::Listed(vec![TenantId::parse("acme").unwrap()]),
        tenant_claim: "tenant".into(),
        groups_claim: "groups".into(),
        max_ttl: Duration::from_secs(3600),
        clock_skew: Duration::from_secs(60),
        admin: None,
    }];
    settings
}

/// One issuer's setup: how to build a verifier, the token pool and when to check them.
struct Case<'a> {
    name: &'a str,
    verifier: &'a dyn Fn() -> Verifier,
    tokens: Vec<String>,
    now: SystemTime,
}

impl Case<'_> {
    fn bench(&self, c: &mut Criterion, rt: &Runtime) {
        // Correctness first: every token verifies to its user, on a fresh verifier and again.
        let v = (self.verifier)();
        for (i, token) in self.tokens.iter().enumerate() {
            let want = Principal::new(
                TenantId::parse("acme").unwrap(),
                UserId::parse(&user(i)).unwrap(),
                groups(),
            );
            for _ in 0..2 {
                let got = rt.block_on(v.verify_at(token, self.now));
                assert_eq!(got.as_ref(), Ok(&want), "{}: token {i}", self.name);
            }
        }

        let mut g = c.benchmark_group(format!("identity/{}", self.name));
        g.bench_function("cached", |b| self.cached(b, rt));
        g.bench_function("cold", |b| self.cold(b, rt));
        g.finish();
    }

    fn cached(&self, b: &mut Bencher<'_>, rt: &Runtime) {
        let v = (self.verifier)();
        let token = &self.tokens[0];
        rt.block_on(v.verify_at(token, self.now)).unwrap();
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(v.verify_at(black_box(token), self.now).await.unwrap());
                }
                start.elapsed()
            })
        });
    }

    fn cold(&self, b: &mut Bencher<'_>, rt: &Runtime) {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = usize::try_from(iters).unwrap();
            while left > 0 {
                // Built outside the timing: a verifier that has seen none of the tokens.
                let v = (self.verifier)();
                let batch = &self.tokens[..left.min(self.tokens.len())];
                total += rt.block_on(async {
                    let start = Instant::now();
                    for token in batch {
                        black_box(v.verify_at(black_box(token), self.now).await.unwrap());
                    }
                    start.elapsed()
                });
                left -= batch.len();
            }
            total
        });
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();

    // Development issuer: `dev = true`, its key generated in the state dir.
    let mut dev_settings = Settings::defaults(tmp.path());
    dev_settings.dev = true;
    let state = StateDir::open(&tmp.path().join("state")).unwrap();
    let acme = TenantId::parse("acme").unwrap();
    let ttl = Duration::from_secs(3600);
    let dev_tokens = (0..POOL)
        .map(|i| {
            let u = UserId::parse(&user(i)).unwrap();
            dev::mint(true, &state, &acme, &u, &groups(), ttl).unwrap()
        })
        .collect();
    let dev_verifier = || Verifier::new(&dev_settings, Some(&state)).unwrap();

    // A configured issuer whose keys are in a JWKS file.
    let idp = Idp::new();
    let jwks = tmp.path().join("corp-jwks.json");
    std::fs::write(&jwks, idp.jwks()).unwrap();
    let settings = jwks_settings(tmp.path(), &jwks);
    let jwks_verifier = || Verifier::new(&settings, None).unwrap();
    let pool = |alg| (0..POOL).map(|i| idp.token(alg, &claims(i))).collect();
    let at = UNIX_EPOCH + Duration::from_secs(NOW + 1);

    let cases = [
        Case {
            name: "hs256_dev",
            verifier: &dev_verifier,
            tokens: dev_tokens,
            now: SystemTime::now(),
        },
        Case {
            name: "rs256_jwks_file",
            verifier: &jwks_verifier,
            tokens: pool(Algorithm::RS256),
            now: at,
        },
        Case {
            name: "es256_jwks_file",
            verifier: &jwks_verifier,
            tokens: pool(Algorithm::ES256),
            now: at,
        },
    ];
    for case in &cases {
        case.bench(c, &rt);
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
