//! Rotation and revocation on a running sidecar (DESIGN.md "Secrets"): an operator runs the
//! real `behalf secret set|disable|enable|rm` as a separate process against the sidecar's
//! state directory, and the very next tool call sees the change, without a restart. The file
//! store notices the replaced file; the pipeline resolves the credential on every request;
//! the OAuth2 token cache drops a token derived from a credential that changed, and a
//! disabled credential is refused before the cache is consulted.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use http::StatusCode;
use serde_json::{Value, json};

use crate::support::tools::{T_ALICE_GITHUB, T_BOB_GITHUB, ToolConfig, ToolHarness};
use crate::support::{Recorded, bearer, json_response};

/// alice's GitHub token after the operator rotates it.
const NEW_ALICE_GITHUB: &str = "canary-gh-alice-rotated-5e0b7d";

/// Runs `behalf --policies P --state S ARGS` (the harness's directories) as an operator would
/// from a shell while the sidecar keeps running, with `stdin` piped in; asserts exit 0 and
/// returns stdout.
async fn operator(h: &ToolHarness, args: &[&str], stdin: Option<&str>) -> String {
    let (policies, state): (PathBuf, PathBuf) = (h.policies.clone(), h.state.path().to_owned());
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let stdin = stdin.map(str::to_owned);
    let shown = args.join(" ");
    let out = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_behalf"))
            .arg("--policies")
            .arg(&policies)
            .arg("--state")
            .arg(&state)
            .args(&args)
            .env_remove("BEHALF_LOG")
            .env_remove("BEHALF_LOG_FORMAT")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the behalf binary");
        if let Some(value) = stdin {
            use std::io::Write;
            // Dropped at the end of the statement, closing stdin.
            child
                .stdin
                .take()
                .unwrap()
                .write_all(value.as_bytes())
                .unwrap();
        }
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "`behalf {shown}` exited {:?}\nstdout: {stdout}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `github_issues` lists acme/web's issues as the holder of `token`.
async fn list_issues(h: &ToolHarness, token: &str) -> (StatusCode, Value) {
    h.invoke(token, "github_issues", json!({"repo": "acme/web"}))
        .await
}

/// Asserts a call that went through: the API answered and the tool returned its 200.
fn assert_ok(status: StatusCode, body: &Value) {
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["output"]["status"], 200, "{body}");
}

/// Asserts that the tool's one request was refused by the pipeline (403 `egress_denied`)
/// because credential `github_token` is `state` (`disabled`, `not stored`).
fn assert_refused(status: StatusCode, body: &Value, state: &str) {
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "egress_denied", "{body}");
    let denials = body["denials"].as_array().expect("denials");
    assert_eq!(denials.len(), 1, "{body}");
    assert_eq!(denials[0]["code"], "egress_denied", "{body}");
    let message = denials[0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("github_token") && message.contains(state),
        "the denial should say the credential is {state}: {body}"
    );
}

/// The `Authorization` values of the requests the API mock received.
fn authorizations(requests: &[Recorded]) -> Vec<Vec<String>> {
    requests.iter().map(|r| r.header("authorization")).collect()
}

/// An operator replaces alice's token with `behalf secret set` while the sidecar runs: her
/// next calls carry the new token and never the old one; bob's token is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_is_injected_from_the_next_call_on() {
    let h = ToolHarness::start().await;
    let (status, body) = list_issues(&h, &h.alice).await;
    assert_ok(status, &body);
    assert_eq!(
        h.upstream.only().header("authorization"),
        bearer(T_ALICE_GITHUB)
    );
    h.upstream.clear();

    let out = operator(
        &h,
        &["secret", "set", "acme/alice/github_token"],
        Some(&format!("{NEW_ALICE_GITHUB}\n")),
    )
    .await;
    assert!(out.contains("stored acme/alice/github_token"), "{out}");

    for _ in 0..3 {
        let (status, body) = list_issues(&h, &h.alice).await;
        assert_ok(status, &body);
    }
    assert_eq!(
        authorizations(&h.upstream.requests()),
        vec![bearer(NEW_ALICE_GITHUB); 3],
        "every call after the rotation carries the new token, and only it"
    );
    h.upstream.clear();
    let (status, body) = list_issues(&h, &h.bob).await;
    assert_ok(status, &body);
    assert_eq!(
        h.upstream.only().header("authorization"),
        bearer(T_BOB_GITHUB)
    );

    let audit = h.audit_text();
    for value in [T_ALICE_GITHUB, NEW_ALICE_GITHUB] {
        assert!(!audit.contains(value), "a token is in the audit log");
    }
}

/// `secret disable` stops alice's next call at the boundary (403, "disabled", nothing reaches
/// the API), `secret enable` lets the next one through with the same token, and after
/// `secret rm` the next is refused as "not stored". Each refusal is audited as a denial that
/// names no credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_enable_and_rm_take_effect_on_the_next_call() {
    let h = ToolHarness::start().await;
    let (status, body) = list_issues(&h, &h.alice).await;
    assert_ok(status, &body);
    h.upstream.clear();

    let out = operator(&h, &["secret", "disable", "acme/alice/github_token"], None).await;
    assert!(out.contains("disabled acme/alice/github_token"), "{out}");
    let (status, body) = list_issues(&h, &h.alice).await;
    assert_refused(status, &body, "disabled");
    h.upstream
        .assert_untouched("a call with a disabled credential");
    // Only alice's credential is disabled.
    let (status, body) = list_issues(&h, &h.bob).await;
    assert_ok(status, &body);
    h.upstream.clear();

    let out = operator(&h, &["secret", "enable", "acme/alice/github_token"], None).await;
    assert!(out.contains("enabled acme/alice/github_token"), "{out}");
    let (status, body) = list_issues(&h, &h.alice).await;
    assert_ok(status, &body);
    assert_eq!(
        h.upstream.only().header("authorization"),
        bearer(T_ALICE_GITHUB)
    );
    h.upstream.clear();

    let out = operator(&h, &["secret", "rm", "acme/alice/github_token"], None).await;
    assert!(out.contains("removed acme/alice/github_token"), "{out}");
    let (status, body) = list_issues(&h, &h.alice).await;
    assert_refused(status, &body, "not stored");
    h.upstream
        .assert_untouched("a call with a removed credential");

    let refused: Vec<_> = h
        .audit_records()
        .into_iter()
        .filter(|r| r.client.as_deref() == Some("tool:github_issues") && r.decision == "deny")
        .collect();
    assert_eq!(refused.len(), 2, "{refused:#?}");
    for r in &refused {
        assert_eq!(r.user.as_deref(), Some("alice"), "{r:#?}");
        assert_eq!(r.credential, None, "a refused request names no credential");
    }
}

// === OAuth2 ===

/// The token endpoint's host (a second name on the harness's mock).
const AUTH_HOST: &str = "auth.github.example";
/// The OAuth2 app's client id.
const CLIENT_ID: &str = "gh-app-01";
/// Its secret, and the one the operator rotates to.
const SECRET_1: &str = "gh-app-s3cret-one-4c1f";
const SECRET_2: &str = "gh-app-s3cret-two-8a2e";
/// alice's refresh token, and the one she is reissued.
const REFRESH_1: &str = "gh-rt-alice-one-77d0";
const REFRESH_2: &str = "gh-rt-alice-two-19b3";

/// `github` (the service `github_issues` calls) with the `oauth2` form: alice's stored
/// credential is exchanged (refresh_token grant, client secret in the body) at the mock's
/// token endpoint for access tokens.
fn oauth2_github() -> String {
    format!(
        "[service]\nname = \"github\"\norigins = [\"https://api.github.com\"]\n\
         credential = {{ name = \"github_token\", scope = \"user\" }}\n\
         inject = {{ oauth2 = {{ token_url = \"https://{AUTH_HOST}/oauth/token\", \
         grant = \"refresh_token\", client_auth = \"body\" }} }}\n"
    )
}

/// The stored credential, as the operator pipes it in.
fn credential(client_secret: &str, refresh_token: &str) -> String {
    json!({"client_id": CLIENT_ID, "client_secret": client_secret,
           "refresh_token": refresh_token})
    .to_string()
}

/// What the mock provider saw: each token request's (client secret, refresh token) and the
/// access token it issued for it.
#[derive(Default)]
struct Provider {
    exchanges: Vec<(String, String, String)>,
}

impl Provider {
    /// The token endpoint: any known client secret and refresh token get a new access token
    /// (living an hour, so behalf caches it).
    fn token(&mut self, r: &Recorded) -> http::Response<behalf::egress::BoxBody> {
        let form: std::collections::HashMap<String, String> =
            form_urlencoded::parse(&r.body).into_owned().collect();
        let field = |k: &str| form.get(k).cloned().unwrap_or_default();
        let known = field("grant_type") == "refresh_token"
            && field("client_id") == CLIENT_ID
            && [SECRET_1, SECRET_2].contains(&field("client_secret").as_str())
            && [REFRESH_1, REFRESH_2].contains(&field("refresh_token").as_str());
        if !known {
            return json_response(400, json!({"error": "invalid_grant"}));
        }
        let access = format!("gh-at-{}-c0ffee", self.exchanges.len() + 1);
        self.exchanges.push((
            field("client_secret"),
            field("refresh_token"),
            access.clone(),
        ));
        json_response(
            200,
            json!({"access_token": access, "token_type": "Bearer", "expires_in": 3600}),
        )
    }

    /// The API: 200 for any access token this provider issued, 401 otherwise.
    fn api(&self, r: &Recorded) -> http::Response<behalf::egress::BoxBody> {
        let issued = r.header("authorization").first().is_some_and(|a| {
            self.exchanges
                .iter()
                .any(|(_, _, t)| *a == format!("Bearer {t}"))
        });
        if issued {
            json_response(200, json!([]))
        } else {
            json_response(401, json!({"message": "Bad credentials"}))
        }
    }
}

/// A harness whose `github` service uses the `oauth2` form, its mock answering as the token
/// endpoint on [`AUTH_HOST`] and as the API on `api.github.com`.
async fn oauth2_harness() -> (ToolHarness, Arc<Mutex<Provider>>) {
    let h = ToolHarness::start_with(ToolConfig {
        extra_services: vec![("github".into(), oauth2_github())],
        extra_hosts: vec![AUTH_HOST.into()],
        ..ToolConfig::default()
    })
    .await;
    let provider: Arc<Mutex<Provider>> = Arc::default();
    let p = provider.clone();
    h.upstream.respond(move |r| {
        let mut p = p.lock().unwrap();
        if r.sni.as_deref() == Some(AUTH_HOST) {
            p.token(r)
        } else {
            p.api(r)
        }
    });
    (h, provider)
}

/// The access tokens the API received, in order.
fn api_tokens(h: &ToolHarness) -> Vec<String> {
    h.upstream
        .requests()
        .iter()
        .filter(|r| r.sni.as_deref() != Some(AUTH_HOST))
        .map(|r| {
            let auth = r.header("authorization");
            assert_eq!(auth.len(), 1, "{auth:?}");
            auth[0].strip_prefix("Bearer ").unwrap().to_owned()
        })
        .collect()
}

/// The (client secret, refresh token) of each token exchange so far.
fn exchanged_with(p: &Mutex<Provider>) -> Vec<(String, String)> {
    p.lock()
        .unwrap()
        .exchanges
        .iter()
        .map(|(s, r, _)| (s.clone(), r.clone()))
        .collect()
}

/// The access token issued by exchange `n` (from 1).
fn issued(p: &Mutex<Provider>, n: usize) -> String {
    p.lock().unwrap().exchanges[n - 1].2.clone()
}

fn pair(secret: &str, refresh: &str) -> (String, String) {
    (secret.to_owned(), refresh.to_owned())
}

/// An access token is cached (one exchange for two calls), and dropped as soon as the stored
/// credential changes: a new refresh token, then a new client secret, each set with the CLI,
/// make the next call exchange again with the new value, and the superseded access token is
/// never sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_oauth2_credential_drops_the_cached_access_token() {
    let (h, provider) = oauth2_harness().await;
    let id = "acme/alice/github_token";
    operator(
        &h,
        &["secret", "set", id],
        Some(&credential(SECRET_1, REFRESH_1)),
    )
    .await;

    for _ in 0..2 {
        let (status, body) = list_issues(&h, &h.alice).await;
        assert_ok(status, &body);
    }
    assert_eq!(exchanged_with(&provider), [pair(SECRET_1, REFRESH_1)]);
    let first = issued(&provider, 1);
    assert_eq!(api_tokens(&h), [first.clone(), first.clone()], "cached");

    // A new refresh token (the user was reissued one).
    h.upstream.clear();
    operator(
        &h,
        &["secret", "set", id],
        Some(&credential(SECRET_1, REFRESH_2)),
    )
    .await;
    for _ in 0..2 {
        let (status, body) = list_issues(&h, &h.alice).await;
        assert_ok(status, &body);
    }
    assert_eq!(
        exchanged_with(&provider),
        [pair(SECRET_1, REFRESH_1), pair(SECRET_1, REFRESH_2)]
    );
    let second = issued(&provider, 2);
    assert_eq!(api_tokens(&h), [second.clone(), second.clone()]);

    // A new client secret (the app's secret was rotated).
    h.upstream.clear();
    operator(
        &h,
        &["secret", "set", id],
        Some(&credential(SECRET_2, REFRESH_2)),
    )
    .await;
    let (status, body) = list_issues(&h, &h.alice).await;
    assert_ok(status, &body);
    assert_eq!(
        exchanged_with(&provider)[2..],
        [pair(SECRET_2, REFRESH_2)],
        "one new exchange, with the new client secret"
    );
    assert_eq!(api_tokens(&h), [issued(&provider, 3)]);

    let audit = h.audit_text();
    for value in [
        SECRET_1,
        SECRET_2,
        REFRESH_1,
        REFRESH_2,
        first.as_str(),
        second.as_str(),
    ] {
        assert!(!audit.contains(value), "{value} is in the audit log");
    }
}

/// With an access token cached, `secret disable` stops the next call before anything leaves
/// (no API request, no token exchange); `enable` restores it; after `rm` the next call is
/// refused as "not stored", again with nothing sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_oauth2_credential_is_refused_although_a_token_is_cached() {
    let (h, provider) = oauth2_harness().await;
    let id = "acme/alice/github_token";
    operator(
        &h,
        &["secret", "set", id],
        Some(&credential(SECRET_1, REFRESH_1)),
    )
    .await;
    let (status, body) = list_issues(&h, &h.alice).await;
    assert_ok(status, &body);
    assert_eq!(api_tokens(&h), [issued(&provider, 1)]);
    h.upstream.clear();

    operator(&h, &["secret", "disable", id], None).await;
    let (status, body) = list_issues(&h, &h.alice).await;
    assert_refused(status, &body, "disabled");
    h.upstream
        .assert_untouched("a call with a disabled OAuth2 credential");

    operator(&h, &["secret", "enable", id], None).await;
    let (status, body) = list_issues(&h, &h.alice).await;
    assert_ok(status, &body);
    // The refused call dropped the cached token: re-enabling exchanges anew, with the stored
    // credential.
    let tokens = api_tokens(&h);
    assert_eq!(
        tokens,
        [issued(&provider, 2)],
        "a fresh token after re-enabling"
    );
    assert!(
        exchanged_with(&provider)
            .iter()
            .all(|e| *e == pair(SECRET_1, REFRESH_1)),
        "exchanges only with the stored credential"
    );
    h.upstream.clear();

    operator(&h, &["secret", "rm", id], None).await;
    let (status, body) = list_issues(&h, &h.alice).await;
    assert_refused(status, &body, "not stored");
    h.upstream
        .assert_untouched("a call with a removed OAuth2 credential");
}
