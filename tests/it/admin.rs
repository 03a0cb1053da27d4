//! The admin API (`/v1/admin/secrets`, issue 9): a tenant's admins provision that tenant's
//! credentials over HTTP, and nothing else.
//!
//! Two harnesses, both serving the real API on a port-0 socket:
//! - [`ToolHarness`] (dev mode, so the development issuer marks admins with
//!   `"behalf_admin": true`): provisioning, then tool calls through the mock APIs that carry
//!   exactly what was provisioned;
//! - [`ApiHarness`] below: a sidecar with no tools, a configured HS256 issuer `corp` (with or
//!   without `admin = {...}`), and a chosen secret backend — for the API being off, configured
//!   admin claims, read-only backends and an unwritable audit log.
//!
//! Every secret value sent is a canary string, and every response (headers and body) and the
//! whole audit log are checked not to contain one.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use behalf::audit::{self, Record};
use behalf::identity::dev::{self, MintError};
use behalf::identity::jwt::sign_hs256;
use behalf::identity::{AdminRejection, Verifier};
use behalf::policy::{PolicySet, Severity, SourceFile, Sources};
use behalf::principal::{GroupId, TenantId, UserId};
use behalf::secrets::{Secret, SecretId};
use behalf::serve::{Options, Sidecar};
use behalf::state::StateDir;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::support::tools::*;
use crate::support::{BeforeOpen, bearer};

/// Values sent through the admin API in these tests; none may ever come back.
const C_ERIN: &str = "canary-admin-erin-gh-4d1e0b";
const C_ALICE_NEW: &str = "canary-admin-alice-gh-rotated-77c2";
const C_ACME_SLACK_NEW: &str = "canary-admin-acme-slack-9e3f51";
const C_GLOBEX: &str = "canary-admin-globex-attempt-0c8a";
const C_NOT_ADMIN: &str = "canary-admin-not-admin-b3b3";
const C_BIG: &str = "canary-admin-oversized-5150";
const C_ENV: &str = "canary-admin-env-backend-a7a7";
const C_AUDIT: &str = "canary-admin-audit-down-e0e0";
const C_CORP: &str = "canary-admin-corp-issuer-1f1f";

const ADMIN: &str = "/v1/admin/secrets";

// === helpers ===

/// What one API request got back: status, headers, the raw body and the body as JSON (a JSON
/// string holding the text when it is not JSON).
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
    json: Value,
}

impl Reply {
    /// Asserts an error reply: status, `error.code`, and a non-empty message and hint.
    fn assert_error(&self, status: u16, code: &str) -> &Self {
        assert_eq!(
            (self.status.as_u16(), self.json["error"]["code"].as_str()),
            (status, Some(code)),
            "{}",
            self.text
        );
        for field in ["message", "hint"] {
            assert!(
                self.json["error"][field]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "error.{field} is empty: {}",
                self.text
            );
        }
        self
    }

    fn message(&self) -> &str {
        self.json["error"]["message"].as_str().unwrap_or_default()
    }

    fn hint(&self) -> &str {
        self.json["error"]["hint"].as_str().unwrap_or_default()
    }
}

fn all_canaries() -> Vec<&'static str> {
    let mut all = canaries();
    all.extend([
        C_ERIN,
        C_ALICE_NEW,
        C_ACME_SLACK_NEW,
        C_GLOBEX,
        C_NOT_ADMIN,
        C_BIG,
        C_ENV,
        C_AUDIT,
        C_CORP,
    ]);
    all
}

fn assert_no_canary(what: &str, text: &str) {
    for canary in all_canaries() {
        assert!(
            !text.contains(canary),
            "{what} contains the secret value {canary}: {text}"
        );
    }
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends one request to the API at `addr` (the body sent as is, no content type) and checks
/// that nothing in the reply is a secret value.
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> Reply {
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let req = req.body(Full::new(Bytes::copy_from_slice(body))).unwrap();
    let resp = client().request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        assert_no_canary(&format!("{method} {path}: header {name}"), &value);
    }
    assert_no_canary(&format!("{method} {path}: the body"), &text);
    let json = serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.clone()));
    Reply {
        status: parts.status,
        headers: parts.headers,
        text,
        json,
    }
}

fn ids(tenant: &str, user: &str, groups: &[&str]) -> (TenantId, UserId, Vec<GroupId>) {
    (
        TenantId::parse(tenant).unwrap(),
        UserId::parse(user).unwrap(),
        groups.iter().map(|g| GroupId::parse(g).unwrap()).collect(),
    )
}

/// A development admin token for `tenant` (1 h).
fn dev_admin(state: &StateDir, tenant: &str, user: &str) -> String {
    let (t, u, g) = ids(tenant, user, &[]);
    dev::mint_admin(true, state, &t, &u, &g, Duration::from_secs(3600)).unwrap()
}

/// A development token with extra claims, signed with the development key.
fn dev_token_with(state: &StateDir, tenant: &str, user: &str, extra: Value) -> String {
    let key = state.generated_key(dev::KEY_FILE).unwrap();
    let now = now();
    let mut claims = json!({
        "iss": dev::ISSUER, "aud": dev::AUDIENCE, "sub": user, "tenant": tenant,
        "groups": ["engineering"], "iat": now, "exp": now + 600,
    });
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    sign_hs256(&key[..], None, &claims)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn secret_id(s: &str) -> SecretId {
    SecretId::parse(s).unwrap()
}

/// The stored value of `id` as text (`None` if absent), read from the sidecar's own store.
fn stored(sidecar: &Sidecar, id: &str) -> Option<String> {
    let id = secret_id(id);
    sidecar
        .egress
        .secrets()
        .get(&id.namespace, &id.name)
        .unwrap()
        .map(|s| String::from_utf8(s.expose().to_vec()).unwrap())
}

/// The admin records (client `admin`) of an audit log, after verifying its chain.
fn admin_records(records: &[Record]) -> Vec<&Record> {
    records
        .iter()
        .filter(|r| r.client.as_deref() == Some("admin"))
        .collect()
}

/// One admin record as `USER DECISION REASON CREDENTIAL STATUS METHOD PATH` (`-` for none),
/// also checking what every admin record has in common.
fn summary(r: &Record) -> String {
    assert_eq!(r.origin, "behalf:admin", "{r:?}");
    assert_eq!(r.client.as_deref(), Some("admin"), "{r:?}");
    let dash = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
    format!(
        "{}/{} {} {} {} {} {} {}",
        dash(&r.tenant),
        dash(&r.user),
        r.decision,
        dash(&r.reason),
        dash(&r.credential),
        r.status.map_or("-".into(), |s| s.to_string()),
        r.method,
        r.path
    )
}

// === a minimal API harness ===

/// How to start an [`ApiHarness`].
struct ApiConfig {
    dev: bool,
    /// `file`, `env` or `dir`.
    backend: &'static str,
    /// The `admin = ...` line of the `corp` issuer, if any.
    admin: Option<&'static str>,
    /// Runs on the state dir's path before the sidecar opens it.
    before_open: Option<BeforeOpen>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            dev: false,
            backend: "file",
            admin: None,
            before_open: None,
        }
    }
}

const CORP_ISS: &str = "https://corp.idp.test";

/// A sidecar (no tools, no services) whose API serves on port 0, with the `corp` issuer
/// (HS256, tenants acme and globex).
struct ApiHarness {
    _tmp: TempDir,
    state: StateDir,
    sidecar: Sidecar,
    addr: SocketAddr,
    corp_key: Vec<u8>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Drop for ApiHarness {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

fn random(n: usize) -> Vec<u8> {
    let mut b = vec![0; n];
    SystemRandom::new().fill(&mut b).unwrap();
    b
}

impl ApiHarness {
    async fn start(config: ApiConfig) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        let policies = base.join("policies");
        std::fs::create_dir_all(&policies).unwrap();
        let corp_key = random(48);
        std::fs::write(base.join("corp.key"), &corp_key).unwrap();
        std::fs::write(base.join("master.key"), random(32)).unwrap();
        std::fs::create_dir_all(base.join("mounted")).unwrap();
        std::fs::write(
            policies.join("behalf.toml"),
            format!(
                "dev = {}\nstate_dir = \"state\"\ntools_dir = \"tools\"\n\n\
                 [secrets]\nbackend = \"{}\"\nmaster_key_file = \"master.key\"\n{}\n\
                 [[identity.issuer]]\nname = \"corp\"\nalgorithms = [\"HS256\"]\n\
                 key_file = \"corp.key\"\nissuer = \"{CORP_ISS}\"\naudience = \"behalf\"\n\
                 tenants = [\"acme\", \"globex\"]\n{}\n",
                config.dev,
                config.backend,
                if config.backend == "dir" {
                    "root = \"mounted\"\n"
                } else {
                    ""
                },
                config.admin.unwrap_or(""),
            ),
        )
        .unwrap();
        let state_path = base.join("state");
        let state = StateDir::open(&state_path).unwrap();
        if let Some(hook) = config.before_open {
            hook(&state_path);
        }
        let options = Options {
            policies,
            state: Some(state_path),
            connect_to: Vec::new(),
            shadow: None,
        };
        let sidecar = Sidecar::open(&options).unwrap_or_else(|e| panic!("{e}"));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(sidecar.api().serve(listener, 64, async move {
            let _ = rx.await;
        }));
        Self {
            _tmp: tmp,
            state,
            sidecar,
            addr,
            corp_key,
            shutdown: Some(tx),
        }
    }

    /// A `corp` token for `tenant`/`user` with `extra` claims, valid for 10 minutes.
    fn corp_token(&self, tenant: &str, user: &str, extra: Value) -> String {
        let now = now();
        let mut claims = json!({
            "iss": CORP_ISS, "aud": "behalf", "sub": user, "tenant": tenant,
            "iat": now, "exp": now + 600,
        });
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        sign_hs256(&self.corp_key, None, &claims)
    }

    async fn call(&self, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> Reply {
        call(self.addr, method, path, token, body).await
    }

    /// Every non-`start` record, after verifying the chain.
    fn audit_records(&self) -> Vec<Record> {
        let audit = self.sidecar.egress.audit();
        audit.sync().unwrap();
        let key = audit::read_key(&self.state).unwrap();
        audit::verify(audit.dir(), &key).unwrap_or_else(|e| panic!("audit verify: {e}"));
        let text = std::fs::read_to_string(audit.dir().join(audit::CURRENT)).unwrap();
        text.lines()
            .map(|l| serde_json::from_str::<Record>(l).unwrap())
            .filter(|r| r.decision != "start")
            .collect()
    }
}

// === provisioning, end to end ===

/// An acme admin provisions a new user's credential, rotates an existing user's and the
/// tenant's shared one, disables, re-enables and deletes; each tool call right after a change
/// carries exactly the value just provisioned (or none). Every admin call is audited with the
/// admin's identity and the credential's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_provisions_credentials_that_the_next_tool_call_carries() {
    let h = ToolHarness::start().await;
    let admin = dev_admin(&h.state, "acme", "root");
    let erin = h.token("acme", "erin", &["engineering"]);
    let a = h.api_addr;

    // Before: erin has no GitHub credential, so nothing reaches GitHub for her.
    h.upstream.clear();
    let (status, body) = h
        .invoke(&erin, "github_issues", json!({"repo": "acme/web"}))
        .await;
    assert_ne!(status, 200, "{body}");
    assert!(h.upstream.requests().is_empty());

    // A new user credential.
    let r = call(
        a,
        "PUT",
        &format!("{ADMIN}/acme/erin/github_token"),
        Some(&admin),
        C_ERIN.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.json,
        json!({"id": "acme/erin/github_token", "created": true})
    );
    h.upstream.clear();
    let (status, body) = h
        .invoke(&erin, "github_issues", json!({"repo": "acme/web"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_no_canary("erin's tool output", &body.to_string());
    assert_eq!(h.upstream.only().header("authorization"), bearer(C_ERIN));

    // Rotating an existing user credential: the very next call uses the new value.
    let r = call(
        a,
        "PUT",
        &format!("{ADMIN}/acme/alice/github_token"),
        Some(&admin),
        C_ALICE_NEW.as_bytes(),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), &r.json),
        (
            200,
            &json!({"id": "acme/alice/github_token", "created": false})
        )
    );
    h.upstream.clear();
    let (status, body) = h
        .invoke(&h.alice, "github_issues", json!({"repo": "acme/web"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        h.upstream.only().header("authorization"),
        bearer(C_ALICE_NEW)
    );

    // The tenant's shared credential.
    let r = call(
        a,
        "PUT",
        &format!("{ADMIN}/acme/slack_bot_token"),
        Some(&admin),
        C_ACME_SLACK_NEW.as_bytes(),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), &r.json),
        (
            200,
            &json!({"id": "acme/slack_bot_token", "created": false})
        )
    );
    h.upstream.clear();
    let (status, body) = h
        .invoke(
            &h.alice,
            "slack_post",
            json!({"channel": "#general", "text": "hi"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        h.upstream.only().header("authorization"),
        bearer(C_ACME_SLACK_NEW)
    );
    // bob's credential and globex's were not touched.
    assert_eq!(
        stored(&h.sidecar, "acme/bob/github_token").as_deref(),
        Some(T_BOB_GITHUB)
    );
    assert_eq!(
        stored(&h.sidecar, "globex/slack_bot_token").as_deref(),
        Some(T_GLOBEX_SLACK)
    );

    // The listing: names and state, never values; only acme's.
    let r = call(a, "GET", &format!("{ADMIN}/acme"), Some(&admin), b"").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let list = r.json["secrets"].as_array().unwrap();
    let listed: Vec<&str> = list.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(
        listed,
        [
            "acme/slack_bot_token",
            "acme/weather_api_key",
            "acme/alice/github_token",
            "acme/bob/github_token",
            "acme/dave/github_token",
            "acme/erin/github_token",
        ]
    );
    let erin_entry = list
        .iter()
        .find(|s| s["id"] == "acme/erin/github_token")
        .unwrap();
    assert_eq!(erin_entry["scope"], "user");
    assert_eq!(erin_entry["user"], "erin");
    assert_eq!(erin_entry["name"], "github_token");
    assert_eq!(erin_entry["enabled"], true);
    let updated = erin_entry["updated"].as_str().unwrap();
    assert!(
        humantime::parse_rfc3339(updated).is_ok(),
        "not RFC 3339: {updated}"
    );
    let slack_entry = list
        .iter()
        .find(|s| s["id"] == "acme/slack_bot_token")
        .unwrap();
    assert_eq!(slack_entry["scope"], "tenant");
    assert!(slack_entry.get("user").is_none(), "{slack_entry}");
    for entry in list {
        let keys: Vec<&String> = entry.as_object().unwrap().keys().collect();
        assert!(
            keys.iter().all(
                |k| ["id", "scope", "user", "name", "enabled", "updated"].contains(&k.as_str())
            ),
            "unexpected field in {entry}"
        );
    }

    // Disable: the next call carries nothing; enable: it carries the value again.
    let r = call(
        a,
        "POST",
        &format!("{ADMIN}/acme/erin/github_token/disable"),
        Some(&admin),
        b"",
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), &r.json),
        (
            200,
            &json!({"id": "acme/erin/github_token", "enabled": false})
        )
    );
    h.upstream.clear();
    let (status, body) = h
        .invoke(&erin, "github_issues", json!({"repo": "acme/web"}))
        .await;
    assert_ne!(status, 200, "{body}");
    assert!(
        h.upstream.requests().is_empty(),
        "a disabled secret was sent"
    );
    let r = call(
        a,
        "POST",
        &format!("{ADMIN}/acme/erin/github_token/enable"),
        Some(&admin),
        b"",
    )
    .await;
    assert_eq!(r.json["enabled"], true, "{}", r.text);
    h.upstream.clear();
    let (status, body) = h
        .invoke(&erin, "github_issues", json!({"repo": "acme/web"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(h.upstream.only().header("authorization"), bearer(C_ERIN));

    // Delete: gone at once; a second delete is a 404.
    let r = call(
        a,
        "DELETE",
        &format!("{ADMIN}/acme/erin/github_token"),
        Some(&admin),
        b"",
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), &r.json),
        (
            200,
            &json!({"id": "acme/erin/github_token", "deleted": true})
        )
    );
    assert_eq!(stored(&h.sidecar, "acme/erin/github_token"), None);
    h.upstream.clear();
    let (status, _) = h
        .invoke(&erin, "github_issues", json!({"repo": "acme/web"}))
        .await;
    assert_ne!(status, 200);
    assert!(h.upstream.requests().is_empty());
    call(
        a,
        "DELETE",
        &format!("{ADMIN}/acme/erin/github_token"),
        Some(&admin),
        b"",
    )
    .await
    .assert_error(404, "not_found");

    // The audit log: one record per admin call, the admin's identity, names only.
    let records = h.audit_records();
    let got: Vec<String> = admin_records(&records).into_iter().map(summary).collect();
    let p = "/v1/admin/secrets/acme";
    assert_eq!(
        got,
        [
            format!("acme/root allow - user:github_token 200 PUT {p}/erin/github_token"),
            format!("acme/root allow - user:github_token 200 PUT {p}/alice/github_token"),
            format!("acme/root allow - tenant:slack_bot_token 200 PUT {p}/slack_bot_token"),
            format!("acme/root allow - - 200 GET {p}"),
            format!("acme/root allow - user:github_token 200 POST {p}/erin/github_token/disable"),
            format!("acme/root allow - user:github_token 200 POST {p}/erin/github_token/enable"),
            format!("acme/root allow - user:github_token 200 DELETE {p}/erin/github_token"),
            format!("acme/root allow not_found user:github_token 404 DELETE {p}/erin/github_token"),
        ]
    );
    assert_no_canary("the audit log", &h.audit_text());
}

// === authorization ===

/// An admin of acme can neither read, write, disable nor delete globex's credentials (403
/// `admin_required`, naming acme as the only tenant it administers); globex's values stay as
/// they were and carol's next call still carries hers. A globex admin can (the control).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_of_one_tenant_cannot_touch_another_tenants_credentials() {
    let h = ToolHarness::start().await;
    let acme_admin = dev_admin(&h.state, "acme", "root");
    let a = h.api_addr;
    let attempts: [(&str, String, &[u8]); 7] = [
        ("GET", format!("{ADMIN}/globex"), b""),
        (
            "PUT",
            format!("{ADMIN}/globex/carol/github_token"),
            C_GLOBEX.as_bytes(),
        ),
        (
            "PUT",
            format!("{ADMIN}/globex/slack_bot_token"),
            C_GLOBEX.as_bytes(),
        ),
        (
            "PUT",
            format!("{ADMIN}/globex/new_one"),
            C_GLOBEX.as_bytes(),
        ),
        ("DELETE", format!("{ADMIN}/globex/slack_bot_token"), b""),
        ("DELETE", format!("{ADMIN}/globex/carol/github_token"), b""),
        (
            "POST",
            format!("{ADMIN}/globex/carol/github_token/disable"),
            b"",
        ),
    ];
    for (method, path, body) in &attempts {
        let r = call(a, method, path, Some(&acme_admin), body).await;
        r.assert_error(403, "admin_required");
        assert!(
            r.message().contains("admin of `acme` only") && r.message().contains("`globex`"),
            "{method} {path}: {}",
            r.text
        );
    }
    assert_eq!(
        stored(&h.sidecar, "globex/carol/github_token").as_deref(),
        Some(T_CAROL_GITHUB)
    );
    assert_eq!(
        stored(&h.sidecar, "globex/slack_bot_token").as_deref(),
        Some(T_GLOBEX_SLACK)
    );
    assert_eq!(stored(&h.sidecar, "globex/new_one"), None);
    h.upstream.clear();
    let (status, body) = h
        .invoke(&h.carol, "github_issues", json!({"repo": "globex/x"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        h.upstream.only().header("authorization"),
        bearer(T_CAROL_GITHUB)
    );

    // Every refusal is audited as the acme admin, with the credential it aimed at.
    let records = h.audit_records();
    let got: Vec<String> = admin_records(&records).into_iter().map(summary).collect();
    let p = "/v1/admin/secrets/globex";
    assert_eq!(
        got,
        [
            format!("acme/root deny admin_required - 403 GET {p}"),
            format!(
                "acme/root deny admin_required user:github_token 403 PUT {p}/carol/github_token"
            ),
            format!(
                "acme/root deny admin_required tenant:slack_bot_token 403 PUT {p}/slack_bot_token"
            ),
            format!("acme/root deny admin_required tenant:new_one 403 PUT {p}/new_one"),
            format!(
                "acme/root deny admin_required tenant:slack_bot_token 403 DELETE {p}/slack_bot_token"
            ),
            format!(
                "acme/root deny admin_required user:github_token 403 DELETE {p}/carol/github_token"
            ),
            format!(
                "acme/root deny admin_required user:github_token 403 POST {p}/carol/github_token/disable"
            ),
        ]
    );

    // Control: globex's own admin may.
    let globex_admin = dev_admin(&h.state, "globex", "boss");
    let r = call(
        a,
        "GET",
        &format!("{ADMIN}/globex"),
        Some(&globex_admin),
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["secrets"].as_array().unwrap().len(), 2, "{}", r.text);
    assert_no_canary("the audit log", &h.audit_text());
}

/// A valid token that is not an admin token — an ordinary one, or one whose admin claim has
/// the wrong type or value — gets 403 `admin_required` on every admin route, in its own
/// tenant, and nothing changes. An admin token is an ordinary token everywhere else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_admin_token_gets_403_and_changes_nothing() {
    let h = ToolHarness::start().await;
    let a = h.api_addr;
    let not_admins = [
        ("ordinary", h.alice.clone()),
        (
            "false",
            dev_token_with(&h.state, "acme", "alice", json!({"behalf_admin": false})),
        ),
        (
            "string",
            dev_token_with(&h.state, "acme", "alice", json!({"behalf_admin": "true"})),
        ),
        (
            "number",
            dev_token_with(&h.state, "acme", "alice", json!({"behalf_admin": 1})),
        ),
        (
            "other claim",
            dev_token_with(&h.state, "acme", "alice", json!({"admin": true})),
        ),
    ];
    for (what, token) in &not_admins {
        for (method, path, body) in [
            ("GET", format!("{ADMIN}/acme"), &b""[..]),
            (
                "PUT",
                format!("{ADMIN}/acme/alice/github_token"),
                C_NOT_ADMIN.as_bytes(),
            ),
            (
                "PUT",
                format!("{ADMIN}/acme/slack_bot_token"),
                C_NOT_ADMIN.as_bytes(),
            ),
            ("DELETE", format!("{ADMIN}/acme/alice/github_token"), b""),
            (
                "POST",
                format!("{ADMIN}/acme/alice/github_token/disable"),
                b"",
            ),
            // Not even a path error is revealed before the admin check.
            ("PUT", format!("{ADMIN}/acme/../x"), C_NOT_ADMIN.as_bytes()),
        ] {
            let r = call(a, method, &path, Some(token), body).await;
            r.assert_error(403, "admin_required");
            assert!(
                r.message().contains("not an admin token"),
                "{what}: {}",
                r.text
            );
        }
    }
    assert_eq!(
        stored(&h.sidecar, "acme/alice/github_token").as_deref(),
        Some(T_ALICE_GITHUB)
    );
    assert_eq!(
        stored(&h.sidecar, "acme/slack_bot_token").as_deref(),
        Some(T_ACME_SLACK)
    );
    let records = h.audit_records();
    let admin = admin_records(&records);
    assert_eq!(admin.len(), not_admins.len() * 6);
    for r in &admin {
        assert_eq!(
            (
                r.tenant.as_deref(),
                r.user.as_deref(),
                r.decision.as_str(),
                r.reason.as_deref(),
                r.status
            ),
            (
                Some("acme"),
                Some("alice"),
                "deny",
                Some("admin_required"),
                Some(403)
            ),
            "{r:?}"
        );
    }

    // An admin token is an ordinary token for everything else: same tools, same credential.
    let admin = h.token("acme", "alice", &["engineering"]);
    let (t, u, g) = ids("acme", "alice", &["engineering"]);
    let alice_admin =
        dev::mint_admin(true, &h.state, &t, &u, &g, Duration::from_secs(600)).unwrap();
    assert_eq!(h.tool_names(&alice_admin).await, h.tool_names(&admin).await);
    h.upstream.clear();
    let (status, body) = h
        .invoke(&alice_admin, "github_issues", json!({"repo": "acme/web"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        h.upstream.only().header("authorization"),
        bearer(T_ALICE_GITHUB)
    );
    assert_no_canary("the audit log", &h.audit_text());
}

/// No token, a malformed one, another scheme, an expired admin token or one signed with
/// another key: 401 `unauthenticated` with `WWW-Authenticate`, audited without an identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_invalid_token_gets_401() {
    let h = ToolHarness::start().await;
    let path = format!("{ADMIN}/acme/alice/github_token");
    let now = now();
    let expired = sign_hs256(
        &h.state.generated_key(dev::KEY_FILE).unwrap()[..],
        None,
        &json!({
            "iss": dev::ISSUER, "aud": dev::AUDIENCE, "sub": "root", "tenant": "acme",
            "behalf_admin": true, "iat": now - 600, "exp": now - 120,
        }),
    );
    let forged = sign_hs256(
        &[7u8; 32],
        None,
        &json!({
            "iss": dev::ISSUER, "aud": dev::AUDIENCE, "sub": "root", "tenant": "acme",
            "behalf_admin": true, "iat": now, "exp": now + 600,
        }),
    );
    let mut n = 0;
    for token in [
        None,
        Some("not-a-jwt"),
        Some(expired.as_str()),
        Some(forged.as_str()),
    ] {
        let r = call(h.api_addr, "PUT", &path, token, C_NOT_ADMIN.as_bytes()).await;
        r.assert_error(401, "unauthenticated");
        assert_eq!(
            r.headers.get("www-authenticate").unwrap(),
            "Bearer realm=\"behalf\""
        );
        n += 1;
    }
    // Basic instead of Bearer.
    let req = http::Request::builder()
        .method("GET")
        .uri(format!("http://{}{ADMIN}/acme", h.api_addr))
        .header("authorization", "Basic cm9vdDpwYXNz")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), 401);
    n += 1;
    assert_eq!(
        stored(&h.sidecar, "acme/alice/github_token").as_deref(),
        Some(T_ALICE_GITHUB)
    );
    let records = h.audit_records();
    let got: Vec<String> = admin_records(&records).into_iter().map(summary).collect();
    let mut want = vec![format!("-/- deny unauthenticated - 401 PUT {path}"); n - 1];
    want.push(format!("-/- deny unauthenticated - 401 GET {ADMIN}/acme"));
    assert_eq!(got, want);
}

// === values never come back ===

/// Through every route and outcome — create, replace, list, disable, enable, delete, refused
/// for another tenant, oversized — no response header or body and no audit record contains a
/// value that was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_never_come_back_in_responses_or_the_audit_log() {
    let h = ToolHarness::start().await;
    let admin = dev_admin(&h.state, "acme", "root");
    let a = h.api_addr;
    let user = format!("{ADMIN}/acme/erin/github_token");
    let mut replies = Vec::new();
    replies.push(call(a, "PUT", &user, Some(&admin), C_ERIN.as_bytes()).await);
    replies.push(call(a, "PUT", &user, Some(&admin), C_ALICE_NEW.as_bytes()).await);
    replies.push(call(a, "GET", &format!("{ADMIN}/acme"), Some(&admin), b"").await);
    replies.push(call(a, "POST", &format!("{user}/disable"), Some(&admin), b"").await);
    replies.push(call(a, "POST", &format!("{user}/enable"), Some(&admin), b"").await);
    replies.push(
        call(
            a,
            "PUT",
            &format!("{ADMIN}/globex/x"),
            Some(&admin),
            C_GLOBEX.as_bytes(),
        )
        .await,
    );
    let big = C_BIG.repeat(behalf::secrets::MAX_SECRET_LEN / C_BIG.len() + 1);
    replies.push(call(a, "PUT", &user, Some(&admin), big.as_bytes()).await);
    replies.push(call(a, "DELETE", &user, Some(&admin), b"").await);
    let statuses: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 403, 413, 200]);
    // `call` already checked each reply; the values were really stored on the way.
    assert_eq!(stored(&h.sidecar, "acme/erin/github_token"), None);
    let text = h.audit_text();
    assert_no_canary("the audit log", &text);
    assert!(
        text.contains("\"credential\":\"user:github_token\""),
        "{text}"
    );
}

// === input ===

/// Ids are parsed, not trusted: every malformed tenant, user or credential name is a 400
/// `bad_request` naming the part, before any store access; unknown shapes are 404 and
/// unsupported methods 405.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ids_get_400_and_unknown_routes_404_or_405() {
    let h = ToolHarness::start().await;
    let admin = dev_admin(&h.state, "acme", "root");
    let a = h.api_addr;
    let long = "x".repeat(129);
    for (method, path, part) in [
        ("PUT", format!("{ADMIN}/acme/../x"), "user"),
        ("PUT", format!("{ADMIN}/acme//x"), "user"),
        ("PUT", format!("{ADMIN}/acme/al%20ice/x"), "user"),
        ("PUT", format!("{ADMIN}/acme/.hidden"), "credential name"),
        ("PUT", format!("{ADMIN}/acme/tok@en"), "credential name"),
        (
            "PUT",
            format!("{ADMIN}/acme/alice/%2e%2e"),
            "credential name",
        ),
        ("PUT", format!("{ADMIN}/%61cme/x"), "tenant"),
        ("PUT", format!("{ADMIN}/{long}/x"), "tenant"),
        ("DELETE", format!("{ADMIN}/acme/a%2fb/x"), "user"),
        ("GET", format!("{ADMIN}/.acme"), "tenant"),
        ("GET", format!("{ADMIN}/"), "tenant"),
        ("GET", format!("{ADMIN}/ac:me"), "tenant"),
        (
            "POST",
            format!("{ADMIN}/acme/.x/disable"),
            "credential name",
        ),
    ] {
        let r = call(a, method, &path, Some(&admin), b"v").await;
        r.assert_error(400, "bad_request");
        assert!(
            r.message().contains(&format!("invalid {part}")),
            "{method} {path}: {}",
            r.text
        );
    }
    for (method, path, status) in [
        ("PUT", format!("{ADMIN}/acme/a/b/c"), 404),
        ("GET", ADMIN.to_owned(), 404),
        ("POST", format!("{ADMIN}/acme/x/rotate"), 405),
        ("POST", format!("{ADMIN}/acme/a/b/x/rotate"), 404),
        ("PATCH", format!("{ADMIN}/acme/x"), 405),
        ("GET", format!("{ADMIN}/acme/x"), 405),
        ("PUT", format!("{ADMIN}/acme"), 405),
    ] {
        let r = call(a, method, &path, Some(&admin), b"v").await;
        let code = if status == 404 {
            "not_found"
        } else {
            "bad_request"
        };
        r.assert_error(status, code);
        assert!(r.hint().contains("PUT|DELETE"), "{}", r.text);
    }
    // Nothing was stored under any of those names.
    let r = call(a, "GET", &format!("{ADMIN}/acme"), Some(&admin), b"").await;
    assert_eq!(r.json["secrets"].as_array().unwrap().len(), 5, "{}", r.text);
}

/// A value is 1 to 64 KiB: exactly 64 KiB is stored; one byte more is 413 (declared by
/// `Content-Length`, or streamed chunked with no length); an empty body is 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_empty_values_are_refused() {
    let h = ToolHarness::start().await;
    let admin = dev_admin(&h.state, "acme", "root");
    let a = h.api_addr;
    let path = format!("{ADMIN}/acme/big_one");
    let max = behalf::secrets::MAX_SECRET_LEN;

    let r = call(a, "PUT", &path, Some(&admin), &vec![b'a'; max + 1]).await;
    r.assert_error(413, "bad_request");
    assert!(r.message().contains("65536"), "{}", r.text);
    call(a, "PUT", &path, Some(&admin), b"")
        .await
        .assert_error(400, "bad_request");
    assert_eq!(stored(&h.sidecar, "acme/big_one"), None);

    // Chunked, no Content-Length: the cap is enforced while reading.
    let mut raw = format!(
        "PUT {path} HTTP/1.1\r\nHost: behalf\r\nAuthorization: Bearer {admin}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..3 {
        raw.extend_from_slice(format!("{:x}\r\n", 30_000).as_bytes());
        raw.extend_from_slice(&[b'b'; 30_000]);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let mut conn = TcpStream::connect(a).await.unwrap();
    // The server may answer and close before reading everything.
    let _ = conn.write_all(&raw).await;
    let mut resp = Vec::new();
    let _ = conn.read_to_end(&mut resp).await;
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(resp.contains("\"code\":\"bad_request\""), "{resp}");
    assert_eq!(stored(&h.sidecar, "acme/big_one"), None);

    let r = call(a, "PUT", &path, Some(&admin), &vec![b'c'; max]).await;
    assert_eq!(
        (r.status.as_u16(), &r.json),
        (200, &json!({"id": "acme/big_one", "created": true}))
    );
    assert_eq!(stored(&h.sidecar, "acme/big_one").unwrap().len(), max);

    let records = h.audit_records();
    let got: Vec<String> = admin_records(&records).into_iter().map(summary).collect();
    assert_eq!(
        got,
        [
            format!("acme/root deny bad_request tenant:big_one 413 PUT {path}"),
            format!("acme/root deny bad_request tenant:big_one 400 PUT {path}"),
            format!("acme/root deny bad_request tenant:big_one 413 PUT {path}"),
            format!("acme/root allow - tenant:big_one 200 PUT {path}"),
        ]
    );
}

// === configuration ===

/// Without an issuer that marks admins (and without dev mode), every admin route is 404
/// `not_found`, "the admin API is not enabled", with a hint naming the `admin` key — whatever
/// the token — and nothing is audited for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_is_off_unless_an_issuer_marks_admins() {
    let h = ApiHarness::start(ApiConfig::default()).await;
    let token = h.corp_token(
        "acme",
        "root",
        json!({"behalf_roles": ["secrets-admin"], "behalf_admin": true}),
    );
    for (method, path, token) in [
        ("GET", format!("{ADMIN}/acme"), Some(token.as_str())),
        ("PUT", format!("{ADMIN}/acme/x"), Some(token.as_str())),
        ("DELETE", format!("{ADMIN}/acme/x"), None),
        ("GET", format!("{ADMIN}/.bad"), None),
    ] {
        let r = h.call(method, &path, token, C_CORP.as_bytes()).await;
        r.assert_error(404, "not_found");
        assert_eq!(r.message(), "the admin API is not enabled");
        assert!(r.hint().contains("`admin"), "{}", r.text);
    }
    assert!(!h.sidecar.verifier.admin_enabled());
    assert!(admin_records(&h.audit_records()).is_empty());
    let store = h.sidecar.egress.secrets();
    assert!(store.list(None).unwrap().is_empty());
}

/// A configured issuer's `admin = { claim, value }`: the claim as the string or in an array
/// makes an admin of the token's own tenant only; another value, another type, or no claim
/// makes none. Tokens verify for ordinary use exactly as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_issuer_marks_admins_by_its_claim() {
    let h = ApiHarness::start(ApiConfig {
        admin: Some(r#"admin = { claim = "behalf_roles", value = "secrets-admin" }"#),
        ..ApiConfig::default()
    })
    .await;
    assert!(h.sidecar.verifier.admin_enabled());
    let path = format!("{ADMIN}/acme/deploy_key");
    for (what, roles, status) in [
        ("string", json!("secrets-admin"), 200),
        ("in an array", json!(["reader", "secrets-admin"]), 200),
        ("another value", json!("secrets-admins"), 403),
        ("array without it", json!(["reader"]), 403),
        ("wrong type", json!({"secrets-admin": true}), 403),
        ("boolean", json!(true), 403),
        ("absent", Value::Null, 403),
    ] {
        let extra = if roles.is_null() {
            json!({})
        } else {
            json!({ "behalf_roles": roles })
        };
        let token = h.corp_token("acme", "ops", extra);
        let r = h.call("PUT", &path, Some(&token), C_CORP.as_bytes()).await;
        assert_eq!(r.status.as_u16(), status, "{what}: {}", r.text);
        if status == 403 {
            r.assert_error(403, "admin_required");
        }
        // Ordinary verification is unchanged by the claim.
        let p = h.sidecar.verifier.verify(&token).await.unwrap();
        assert_eq!((p.tenant.as_str(), p.user.as_str()), ("acme", "ops"));
    }
    // A globex admin administers globex only.
    let globex = h.corp_token("globex", "ops", json!({"behalf_roles": "secrets-admin"}));
    h.call("PUT", &path, Some(&globex), C_CORP.as_bytes())
        .await
        .assert_error(403, "admin_required");
    let r = h
        .call(
            "PUT",
            &format!("{ADMIN}/globex/deploy_key"),
            Some(&globex),
            C_CORP.as_bytes(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = h
        .call("GET", &format!("{ADMIN}/acme"), Some(&globex), b"")
        .await;
    r.assert_error(403, "admin_required");
    assert!(r.message().contains("admin of `globex` only"), "{}", r.text);

    let got: Vec<String> = admin_records(&h.audit_records())
        .into_iter()
        .map(summary)
        .collect();
    let mut want = vec![format!("acme/ops allow - tenant:deploy_key 200 PUT {path}"); 2];
    want.extend(vec![
        format!("acme/ops deny admin_required - 403 PUT {path}");
        5
    ]);
    want.extend([
        format!("globex/ops deny admin_required tenant:deploy_key 403 PUT {path}"),
        format!("globex/ops allow - tenant:deploy_key 200 PUT {ADMIN}/globex/deploy_key"),
        format!("globex/ops deny admin_required - 403 GET {ADMIN}/acme"),
    ]);
    assert_eq!(got, want);
}

/// A read-only backend (`env`, `dir`) answers writes with 409 `read_only` and a hint; listing
/// still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_backend_answers_writes_with_409() {
    for backend in ["env", "dir"] {
        let h = ApiHarness::start(ApiConfig {
            dev: true,
            backend,
            ..ApiConfig::default()
        })
        .await;
        let admin = dev_admin(&h.state, "acme", "root");
        for (method, path, body) in [
            ("PUT", format!("{ADMIN}/acme/deploy_key"), C_ENV.as_bytes()),
            ("PUT", format!("{ADMIN}/acme/alice/gh"), C_ENV.as_bytes()),
            ("DELETE", format!("{ADMIN}/acme/deploy_key"), &b""[..]),
            ("POST", format!("{ADMIN}/acme/deploy_key/disable"), b""),
        ] {
            let r = h.call(method, &path, Some(&admin), body).await;
            r.assert_error(409, "read_only");
            assert!(
                r.message()
                    .contains(&format!("the {backend} secret backend is read-only")),
                "{}",
                r.text
            );
            assert!(r.hint().contains("backend = \"file\""), "{}", r.text);
        }
        let r = h
            .call("GET", &format!("{ADMIN}/acme"), Some(&admin), b"")
            .await;
        assert_eq!(
            (r.status.as_u16(), &r.json),
            (200, &json!({"secrets": []})),
            "{backend}"
        );
        let got: Vec<String> = admin_records(&h.audit_records())
            .into_iter()
            .map(summary)
            .collect();
        assert_eq!(got.len(), 5, "{got:#?}");
        assert!(
            got[..4]
                .iter()
                .all(|s| s.starts_with("acme/root deny read_only ") && s.contains(" 409 ")),
            "{got:#?}"
        );
    }
}

/// When the audit log cannot be written, an admin request fails closed with 503 and the store
/// is not changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_audit_log_fails_admin_requests_closed_before_any_change() {
    let h = ApiHarness::start(ApiConfig {
        dev: true,
        before_open: Some(Box::new(|state: &Path| {
            let dir = state.join(audit::DIR);
            std::fs::create_dir_all(&dir).unwrap();
            std::os::unix::fs::symlink("/dev/full", dir.join(audit::CURRENT)).unwrap();
        })),
        ..ApiConfig::default()
    })
    .await;
    assert!(!h.sidecar.egress.audit().healthy());
    let admin = dev_admin(&h.state, "acme", "root");
    let path = format!("{ADMIN}/acme/deploy_key");
    h.call("PUT", &path, Some(&admin), C_AUDIT.as_bytes())
        .await
        .assert_error(503, "unavailable");
    h.call("GET", &format!("{ADMIN}/acme"), Some(&admin), b"")
        .await
        .assert_error(503, "unavailable");
    h.call("PUT", &path, None, C_AUDIT.as_bytes())
        .await
        .assert_error(503, "unavailable");
    assert_eq!(stored(&h.sidecar, "acme/deploy_key"), None);

    // Seeded directly, then an admin DELETE while the log is down leaves it in place.
    h.sidecar
        .egress
        .secrets()
        .set(&secret_id("acme/deploy_key"), &Secret::from_text(C_AUDIT))
        .unwrap();
    h.call("DELETE", &path, Some(&admin), b"")
        .await
        .assert_error(503, "unavailable");
    assert_eq!(
        stored(&h.sidecar, "acme/deploy_key").as_deref(),
        Some(C_AUDIT)
    );
}

// === configuration errors, the CLI ===

/// `admin` on an issuer: unknown keys, missing keys, wrong types and empty strings are load
/// errors at the right `file:line:column`.
#[test]
fn bad_admin_settings_are_load_errors_with_their_location() {
    let issuer = |admin: &str| {
        format!(
            "[[identity.issuer]]\nname = \"corp\"\nalgorithms = [\"EdDSA\"]\n\
             jwks_file = \"corp.json\"\nissuer = \"https://corp\"\naudience = \"behalf\"\n\
             tenants = [\"acme\"]\n{admin}\n"
        )
    };
    let base = tempfile::tempdir().unwrap();
    let load = |text: String| {
        PolicySet::from_sources(&Sources {
            settings: Some(SourceFile::new("policies/behalf.toml", &text)),
            services: vec![],
            tenants: vec![],
            tests: vec![],
            base: base.path().to_path_buf(),
        })
    };
    // Line 8 holds `admin`; columns are 1-based characters.
    for (admin, column, phrase) in [
        (
            r#"admin = { claim = "r", value = "x", extra = 1 }"#,
            37,
            "unknown field `extra`",
        ),
        (r#"admin = { claim = "r" }"#, 9, "missing field `value`"),
        (r#"admin = { claim = "r", value = 1 }"#, 32, "invalid type"),
        (
            r#"admin = { claim = "r", value = ["x"] }"#,
            32,
            "invalid type",
        ),
        (r#"admin = "secrets-admin""#, 9, "invalid type"),
        (r#"admin = { claim = "", value = "x" }"#, 9, "non-empty"),
        (r#"admin = { claim = "r", value = "" }"#, 9, "non-empty"),
        (
            r#"admins = { claim = "r", value = "x" }"#,
            1,
            "unknown field `admins`",
        ),
    ] {
        let err = match load(issuer(admin)) {
            Ok(_) => panic!("{admin}: loaded"),
            Err(e) => e,
        };
        let d = err
            .diagnostics
            .iter()
            .find(|d| d.severity == Severity::Error)
            .unwrap();
        assert_eq!(
            (
                d.at.file.as_path(),
                d.at.line,
                d.at.column,
                d.message.contains(phrase)
            ),
            (Path::new("policies/behalf.toml"), 8, column, true),
            "{admin}: {err}"
        );
    }
    // Control: the documented form loads.
    let ok = load(issuer(
        r#"admin = { claim = "behalf_roles", value = "secrets-admin" }"#,
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let admin = ok.settings().issuers[0].admin.as_ref().unwrap();
    assert_eq!(
        (admin.claim.as_str(), admin.value.as_str()),
        ("behalf_roles", "secrets-admin")
    );
}

/// `behalf token mint --admin` (dev mode) prints a token the admin API accepts; without
/// `--admin` the token is not an admin's. The help says what `--admin` is for.
#[tokio::test]
async fn cli_token_mint_admin_mints_an_admin_token_in_dev_mode_only() {
    let tmp = tempfile::tempdir().unwrap();
    let policies = tmp.path().join("policies");
    crate::support::copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"),
        &policies,
    );
    let state_path = tmp.path().join("state");
    let mint = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_behalf"))
            .arg("--policies")
            .arg(&policies)
            .arg("--state")
            .arg(&state_path)
            .args(["token", "mint"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, admin, stderr) = mint(&["--tenant", "acme", "--user", "root", "--admin"]);
    assert_eq!(code, Some(0), "{stderr}");
    let (code, plain, stderr) = mint(&["--tenant", "acme", "--user", "root"]);
    assert_eq!(code, Some(0), "{stderr}");
    let (code, help, _) = mint(&["--help"]);
    assert_eq!(code, Some(0));
    assert!(
        help.contains("--admin") && help.contains("admin API") && help.contains("Development mode"),
        "{help}"
    );

    let policy = PolicySet::load(&policies).unwrap();
    let state = StateDir::open(&state_path).unwrap();
    let v = Verifier::new(policy.settings(), Some(&state)).unwrap();
    assert!(v.admin_enabled());
    let a = v.verify_admin(&admin).await.unwrap();
    assert_eq!(
        (a.tenant().as_str(), a.principal().user.as_str()),
        ("acme", "root")
    );
    assert!(a.administers(&TenantId::parse("acme").unwrap()));
    assert!(!a.administers(&TenantId::parse("globex").unwrap()));
    assert!(matches!(
        v.verify_admin(&plain).await,
        Err(AdminRejection::NotAdmin { .. })
    ));
    // Both verify the same for everything else.
    assert_eq!(
        v.verify(&admin).await.unwrap(),
        v.verify(&plain).await.unwrap()
    );

    // Without dev mode: refused, like every minted token.
    let tmp2 = tempfile::tempdir().unwrap();
    let (t, u, g) = ids("acme", "root", &[]);
    let state2 = StateDir::open(&tmp2.path().join("state")).unwrap();
    assert!(matches!(
        dev::mint_admin(false, &state2, &t, &u, &g, Duration::from_secs(60)),
        Err(MintError::NotDev)
    ));
}
