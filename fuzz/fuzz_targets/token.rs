//! Identity tokens: the `Verifier` with the development (HS256) issuer, on arbitrary token
//! strings (must be rejected, never panic) and on arbitrary header and claims JSON signed with
//! the issuer's real key (may be accepted, but only for the principal the claims name).
//!
//! The first byte picks (mod 3): 0 the rest is a token; 1 the rest is claims JSON, signed with
//! the dev key; 2 `HEADER\nCLAIMS\nSIGNATURE`, each base64url-encoded, never validly signed.
#![no_main]

use std::future::Future;
use std::pin::pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use behalf::identity::{Verifier, dev, jwt};
use behalf::policy::Settings;
use behalf::state::StateDir;
use libfuzzer_sys::fuzz_target;

/// Verification against static keys never waits; a pending future would be a finding too.
fn now_or_never<F: Future>(f: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(f).poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("verification with static keys must not wait"),
    }
}

struct Fixture {
    verifier: Verifier,
    key: Vec<u8>,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temp dir");
        let state = StateDir::open(&dir.path().join("state")).expect("a state dir");
        let mut settings = Settings::defaults(dir.path());
        settings.dev = true;
        let verifier = Verifier::new(&settings, Some(&state)).expect("a dev verifier");
        let key = state
            .generated_key(dev::KEY_FILE)
            .expect("the dev key")
            .to_vec();
        Fixture {
            verifier,
            key,
            _dir: dir,
        }
    })
}

/// A fixed instant, so that `exp`/`iat` in the corpus stay meaningful.
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let f = fixture();
    let text = String::from_utf8_lossy(rest);
    match mode % 3 {
        0 => {
            let r = now_or_never(f.verifier.verify_at(&text, now()));
            assert!(r.is_err(), "an unsigned token was accepted: {text:?}");
        }
        1 => {
            // Arbitrary claims, really signed: the claim checks run on fuzzer data.
            let Ok(claims) = serde_json::from_str::<serde_json::Value>(&text) else {
                return;
            };
            let token = jwt::sign_hs256(&f.key, None, &claims);
            if let Ok(p) = now_or_never(f.verifier.verify_at(&token, now())) {
                assert_eq!(claims["iss"], dev::ISSUER);
                assert_eq!(claims["sub"].as_str(), Some(p.user.as_str()));
                assert_eq!(claims["tenant"].as_str(), Some(p.tenant.as_str()));
            }
            let _ = now_or_never(f.verifier.verify_admin_at(&token, now()));
        }
        _ => {
            // Header and payload of fuzzer JSON, signature of fuzzer bytes.
            let (header, rest) = text.split_once('\n').unwrap_or((&text, ""));
            let (claims, sig) = rest.split_once('\n').unwrap_or((rest, ""));
            let token = format!(
                "{}.{}.{}",
                URL_SAFE_NO_PAD.encode(header),
                URL_SAFE_NO_PAD.encode(claims),
                URL_SAFE_NO_PAD.encode(sig)
            );
            let r = now_or_never(f.verifier.verify_at(&token, now()));
            assert!(r.is_err(), "a forged token was accepted: {token:?}");
        }
    }
});
