//! The `oauth2` inject form (DESIGN.md, "Policy files" and "Secrets"): behalf exchanges the
//! stored client credentials (and refresh token) for an access token at the service's token
//! endpoint, caches it per (namespace, credential, service) until shortly before it expires,
//! sends `Authorization: Bearer <token>`, refreshes once on a 401 to an idempotent request,
//! writes a rotated refresh token back to the store, and never lets an access token, a refresh
//! token or the client secret reach a caller, a tool or the audit log.
//!
//! The mocks share one [`World`]: `auth.crm.test` is a token endpoint that knows each client
//! and each live refresh token and records whom every access token it issues belongs to;
//! `api.crm.test` and `app.crm.test` are an API that answers with whose token it was given
//! (401 for a token it does not know or was told to reject). Both mocks are started after the
//! harness (their certificates come from its test CA) behind [`Relay`]s, whose addresses were
//! given to the harness's `--connect-to` before it started.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use behalf::egress::BoxBody;
use behalf::egress::body;
use behalf::policy::PolicySet;
use behalf::secrets::{self, Secret, SecretId};
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use serde_json::{Value, json};
use tokio::net::TcpStream;

use crate::support::tools::{ToolConfig, ToolHarness};
use crate::support::*;

/// The API's origin (user-scoped services in these tests).
const API: &str = "https://api.crm.test";
/// A second API origin on the same mock (tenant-scoped services).
const APP: &str = "https://app.crm.test";
/// The token endpoint's origin.
const AUTH: &str = "https://auth.crm.test";
/// The token endpoint.
const TOKEN_URL: &str = "https://auth.crm.test/oauth/token";

/// The OAuth2 client behind the user-scoped credentials.
const CLIENT_ID: &str = "crm-client-01";
/// Its secret.
const CLIENT_SECRET: &str = "crm-client-s3cret-K7";
/// alice's refresh token.
const ALICE_RT: &str = "rt-alice-s3cret-R1";
/// bob's refresh token.
const BOB_RT: &str = "rt-bob-s3cret-R1";
/// acme's client for tenant-scoped client_credentials services.
const ACME_APP_ID: &str = "acme-app";
/// Its secret.
const ACME_APP_SECRET: &str = "acme-app-s3cret-T1";
/// globex's client.
const GLOBEX_APP_ID: &str = "globex-app";
/// Its secret.
const GLOBEX_APP_SECRET: &str = "globex-app-s3cret-T2";
/// The `error_description` of every error the token endpoint gives: never to be echoed.
const CANARY_DESCRIPTION: &str = "CANARY-DESCRIPTION";

// === the mocks ===

/// A TCP relay started before the harness (so that its address can go in
/// [`Config::connect_to`]) to a mock started after it (so that the mock's certificate can come
/// from the harness's [`TestCa`]). With no target, it accepts and closes: a dead endpoint.
struct Relay {
    raw: RawUpstream,
    target: Arc<Mutex<Option<SocketAddr>>>,
}

impl Relay {
    async fn start() -> Self {
        let target: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let t = target.clone();
        let raw = RawUpstream::start(move |mut inbound| {
            let to = *t.lock().unwrap();
            async move {
                let Some(to) = to else { return };
                let Ok(mut outbound) = TcpStream::connect(to).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        })
        .await;
        Self { raw, target }
    }

    fn addr(&self) -> SocketAddr {
        self.raw.addr
    }

    /// Where new connections go from now on (`None`: nowhere).
    fn set(&self, to: Option<SocketAddr>) {
        *self.target.lock().unwrap() = to;
    }
}

/// What the token endpoint and the API know, shared by both mocks.
#[derive(Default)]
struct World {
    /// Each client: id → (secret, whose tokens a `client_credentials` grant gets).
    clients: HashMap<String, (String, String)>,
    /// Live refresh tokens → whose.
    refresh: HashMap<String, String>,
    /// Each refresh issues a new refresh token and revokes the one presented.
    rotate: bool,
    /// `expires_in` of issued tokens (none when `None`).
    expires_in: Option<u64>,
    /// How long the token endpoint takes to answer.
    token_delay: Duration,
    /// A fixed answer (status, content type, body) instead of the endpoint's own logic.
    fixed: Option<(u16, &'static str, String)>,
    /// Tokens issued so far (numbers each access token).
    issued: usize,
    /// Access tokens issued → whose.
    access: HashMap<String, String>,
    /// The newest access token of each owner.
    latest: HashMap<String, String>,
    /// Access tokens the API answers 401 to.
    rejected: HashSet<String>,
    /// The API answers 401 to everything.
    reject_all: bool,
    /// How long the API takes to answer a 401.
    reject_delay: Duration,
}

/// A JSON or text response.
fn respond_with(status: u16, content_type: &'static str, text: String) -> Response<BoxBody> {
    let mut resp = Response::new(body::boxed(Full::new(Bytes::from(text))));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// An RFC 6749 error response.
fn oauth_error(status: u16, code: &str) -> Response<BoxBody> {
    json_response(
        status,
        json!({"error": code, "error_description": CANARY_DESCRIPTION}),
    )
}

/// A form-urlencoded body's parameters (panics on a repeated one).
fn form(body: &[u8]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for (k, v) in form_urlencoded::parse(body).into_owned() {
        assert!(
            out.insert(k.clone(), v).is_none(),
            "parameter {k} sent twice"
        );
    }
    out
}

/// One form-urlencoded component, decoded.
fn form_decode(s: &str) -> String {
    form_urlencoded::parse(format!("v={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// One component form-urlencoded (RFC 6749 section 2.3.1 for HTTP Basic client auth).
fn form_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The client id and secret a token request authenticated with: HTTP Basic (each part
/// form-urlencoded) if there is an `Authorization` header, else the body's fields.
fn client_auth(r: &Recorded) -> Option<(String, String)> {
    if let Some(auth) = r.header("authorization").first() {
        let b64 = auth.strip_prefix("Basic ")?;
        let raw = String::from_utf8(STANDARD.decode(b64).ok()?).ok()?;
        let (id, secret) = raw.split_once(':')?;
        return Some((form_decode(id), form_decode(secret)));
    }
    let f = form(&r.body);
    Some((f.get("client_id")?.clone(), f.get("client_secret")?.clone()))
}

/// The bearer token of a request (`None` unless exactly one `Authorization: Bearer`).
fn bearer_of(r: &Recorded) -> Option<String> {
    match &r.header("authorization")[..] {
        [one] => one.strip_prefix("Bearer ").map(str::to_owned),
        _ => None,
    }
}

impl World {
    /// The token endpoint.
    fn token(&mut self, r: &Recorded) -> Response<BoxBody> {
        if let Some((status, content_type, text)) = &self.fixed {
            return respond_with(*status, content_type, text.clone());
        }
        if r.method != "POST" || r.path() != "/oauth/token" {
            return json_response(404, json!({"error": "not_found"}));
        }
        let Some((id, secret)) = client_auth(r) else {
            return oauth_error(401, "invalid_client");
        };
        let Some((known_secret, owner)) = self.clients.get(&id).cloned() else {
            return oauth_error(401, "invalid_client");
        };
        if known_secret != secret {
            return oauth_error(401, "invalid_client");
        }
        let params = form(&r.body);
        let grant = params.get("grant_type").map(String::as_str);
        let owner = match grant {
            Some("client_credentials") => owner,
            Some("refresh_token") => {
                let presented = params.get("refresh_token").cloned().unwrap_or_default();
                match self.refresh.get(&presented).cloned() {
                    Some(o) => o,
                    None => return oauth_error(400, "invalid_grant"),
                }
            }
            _ => return oauth_error(400, "unsupported_grant_type"),
        };
        self.issued += 1;
        let n = self.issued;
        let access = format!("at-{owner}-{n}");
        self.access.insert(access.clone(), owner.clone());
        self.latest.insert(owner.clone(), access.clone());
        let mut reply = json!({"access_token": access, "token_type": "Bearer"});
        if let Some(e) = self.expires_in {
            reply["expires_in"] = e.into();
        }
        if self.rotate && grant == Some("refresh_token") {
            let new = format!("rt-{owner}-rotated-{n}");
            self.refresh.remove(&params["refresh_token"]);
            self.refresh.insert(new.clone(), owner);
            reply["refresh_token"] = new.into();
        }
        json_response(200, reply)
    }

    /// The API: whose token it was, or `None` for a 401.
    fn whose(&self, r: &Recorded) -> Option<String> {
        let token = bearer_of(r)?;
        if self.reject_all || self.rejected.contains(&token) {
            return None;
        }
        self.access.get(&token).cloned()
    }
}

// === the harness around them ===

/// A harness with the CRM mocks.
struct Crm {
    h: Harness,
    /// The token endpoint.
    auth: MockUpstream,
    /// The API behind [`API`] and [`APP`].
    api: MockUpstream,
    world: Arc<Mutex<World>>,
    auth_relay: Relay,
    _api_relay: Relay,
    /// The harness's extra `--connect-to` overrides (for [`Harness::restart`]).
    connect_to: Vec<(String, SocketAddr)>,
}

/// A service file using the `oauth2` form; `oauth2` is the inside of its inline table (after
/// `token_url`).
fn service(name: &str, origin: &str, credential: &str, scope: &str, oauth2: &str) -> String {
    format!(
        "[service]\nname = \"{name}\"\norigins = [\"{origin}\"]\n\
         credential = {{ name = \"{credential}\", scope = \"{scope}\" }}\n\
         inject = {{ oauth2 = {{ token_url = \"{TOKEN_URL}\", {oauth2} }} }}\n"
    )
}

/// A grant for group eng, through the proxy, to every route of `service`.
fn grant(service: &str) -> String {
    format!(
        "[[grant]]\nid = \"eng-{service}\"\nwho = [\"group:eng\"]\nclients = [\"proxy\"]\n\
         service = \"{service}\"\nallow = [\"GET /**\", \"POST /**\", \"PUT /**\", \"DELETE /**\"]\n"
    )
}

impl Crm {
    /// Starts a harness with these `(name, service file)`s, each granted to acme's group eng;
    /// `globex_extra` is appended to `tenants/globex.toml`.
    async fn start(services: &[(&str, String)], globex_extra: &str) -> Self {
        let auth_relay = Relay::start().await;
        let api_relay = Relay::start().await;
        let connect_to = vec![
            (AUTH.to_owned(), auth_relay.addr()),
            (API.to_owned(), api_relay.addr()),
            (APP.to_owned(), api_relay.addr()),
        ];
        let globex_extra = globex_extra.to_owned();
        let h = Harness::start_with(Config {
            extra_services: services
                .iter()
                .map(|(n, t)| ((*n).to_owned(), t.clone()))
                .collect(),
            acme_extra: services.iter().map(|(n, _)| grant(n)).collect(),
            connect_to: connect_to.clone(),
            before_open: Some(Box::new(move |state: &std::path::Path| {
                let path = state.parent().unwrap().join("policies/tenants/globex.toml");
                let text = std::fs::read_to_string(&path).unwrap();
                std::fs::write(&path, format!("{text}\n{globex_extra}\n")).unwrap();
            })),
            ..Config::default()
        })
        .await;

        let world: Arc<Mutex<World>> = Arc::default();
        let auth = MockUpstream::start(Some(h.ca.server_config(&["auth.crm.test"]))).await;
        let w = world.clone();
        auth.respond_async(move |r| {
            let w = w.clone();
            async move {
                let delay = w.lock().unwrap().token_delay;
                tokio::time::sleep(delay).await;
                w.lock().unwrap().token(&r)
            }
        });
        let api =
            MockUpstream::start(Some(h.ca.server_config(&["api.crm.test", "app.crm.test"]))).await;
        let w = world.clone();
        api.respond_async(move |r| {
            let w = w.clone();
            async move {
                let (whose, delay) = {
                    let w = w.lock().unwrap();
                    (w.whose(&r), w.reject_delay)
                };
                match whose {
                    Some(who) => json_response(
                        200,
                        json!({"who": who, "method": r.method, "path": r.path()}),
                    ),
                    None => {
                        tokio::time::sleep(delay).await;
                        json_response(401, json!({"error": "invalid_token"}))
                    }
                }
            }
        });
        auth_relay.set(Some(auth.addr));
        api_relay.set(Some(api.addr));
        Self {
            h,
            auth,
            api,
            world,
            auth_relay,
            _api_relay: api_relay,
            connect_to,
        }
    }

    fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap()
    }

    /// Registers the client for user-scoped credentials and these `(refresh token, owner)`s.
    fn users(&self, refresh: &[(&str, &str)]) {
        let mut w = self.world();
        w.clients.insert(
            CLIENT_ID.into(),
            (CLIENT_SECRET.into(), "client-itself".into()),
        );
        for (rt, owner) in refresh {
            w.refresh.insert((*rt).into(), (*owner).into());
        }
    }

    /// Stores `acme/<user>/crm_oauth` with the user client and `refresh_token`.
    fn seed_user(&self, user: &str, refresh_token: &str) {
        self.seed(
            &format!("acme/{user}/crm_oauth"),
            json!({"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                   "refresh_token": refresh_token}),
        );
    }

    /// Stores a credential (JSON) in the harness's secret store.
    fn seed(&self, id: &str, value: Value) {
        let store = secrets::open_store(self.h.egress.policy().settings(), &self.h.state).unwrap();
        store
            .set(
                &SecretId::parse(id).unwrap(),
                &Secret::from_text(&value.to_string()),
            )
            .unwrap();
    }

    /// A stored credential, as JSON.
    fn stored(&self, id: &str) -> Value {
        let store = secrets::open_store(self.h.egress.policy().settings(), &self.h.state).unwrap();
        let id = SecretId::parse(id).unwrap();
        let secret = store
            .get(&id.namespace, &id.name)
            .unwrap()
            .unwrap_or_else(|| panic!("{id} is not stored"));
        serde_json::from_slice(secret.expose()).unwrap()
    }

    /// Polls (up to 3 s) until the stored credential's `refresh_token` is `want`.
    async fn wait_stored_refresh(&self, id: &str, want: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let v = self.stored(id);
            if v["refresh_token"] == want || Instant::now() > deadline {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `GET origin+path` through the proxy as the holder of `token`.
    async fn get(&self, token: &str, url: &str) -> Resp {
        self.h.send(get(url, Some(token))).await
    }

    /// A request with a JSON body through the proxy.
    async fn send_body(&self, method: &str, url: &str, token: &str, json: &str) -> Resp {
        let req = request(method, url, Some(token))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(json.to_owned())))
            .unwrap();
        self.h.send(req).await
    }

    /// Requests the token endpoint received.
    fn token_requests(&self) -> Vec<Recorded> {
        self.auth.requests()
    }

    /// The bearer token of every API request so far, in order.
    fn api_tokens(&self) -> Vec<String> {
        self.api
            .requests()
            .iter()
            .map(|r| {
                bearer_of(r).unwrap_or_else(|| {
                    panic!(
                        "API request without exactly one bearer token: {:?}",
                        r.header("authorization")
                    )
                })
            })
            .collect()
    }

    /// The newest access token issued to `owner`.
    fn latest(&self, owner: &str) -> String {
        self.world()
            .latest
            .get(owner)
            .cloned()
            .unwrap_or_else(|| panic!("no token was issued to {owner}"))
    }
}

/// The `refresh_token` grant's inline-table fields.
const REFRESH: &str = r#"grant = "refresh_token""#;
/// The `client_credentials` grant's inline-table fields.
const CLIENT_CREDENTIALS: &str = r#"grant = "client_credentials""#;

/// `crm`: user-scoped `crm_oauth`, refresh_token grant, on [`API`].
fn crm_user_service() -> (&'static str, String) {
    ("crm", service("crm", API, "crm_oauth", "user", REFRESH))
}

/// `crm_app`: tenant-scoped `crm_app`, client_credentials grant, on [`APP`].
fn crm_app_service() -> (&'static str, String) {
    (
        "crm_app",
        service("crm_app", APP, "crm_app", "tenant", CLIENT_CREDENTIALS),
    )
}

/// Every secret a CRM test stores, for leak checks.
fn crm_secrets() -> Vec<&'static str> {
    vec![
        CLIENT_SECRET,
        ALICE_RT,
        BOB_RT,
        ACME_APP_SECRET,
        GLOBEX_APP_SECRET,
    ]
}

/// The whole error (message and hint) of a JSON error response, for phrase checks.
fn error_text(resp: &Resp) -> String {
    let json = resp.json();
    format!(
        "{} {}",
        json["error"]["message"].as_str().unwrap_or(""),
        json["error"]["hint"].as_str().unwrap_or("")
    )
}

/// Asserts a 502 `upstream_failed` that names service `crm` (not just the `crm` in a host
/// name) and contains none of `never`.
fn assert_token_failure(resp: &Resp, never: &[&str]) {
    resp.assert_error(502, "upstream_failed");
    let text = error_text(resp);
    let without_hosts = text
        .replace("api.crm.test", "")
        .replace("auth.crm.test", "");
    assert!(
        without_hosts.contains("crm"),
        "the error does not name service `crm`: {text}"
    );
    let raw = String::from_utf8_lossy(&resp.body);
    for value in never {
        assert!(
            !raw.contains(value),
            "the response contains {value:?}: {raw}"
        );
    }
}

// === client_credentials ===

#[tokio::test(flavor = "multi_thread")]
async fn client_credentials_token_is_fetched_once_then_cached_with_basic_or_body_auth() {
    // Basic (the default) with scopes; body auth with an audience and no scopes.
    let basic = service(
        "crm",
        API,
        "crm_cc",
        "tenant",
        r#"grant = "client_credentials", scopes = ["contacts.read", "contacts.write"]"#,
    );
    let body_auth = service(
        "crm_app",
        APP,
        "crm_app",
        "tenant",
        r#"grant = "client_credentials", client_auth = "body", audience = "https://api.crm.test""#,
    );
    let c = Crm::start(&[("crm", basic), ("crm_app", body_auth)], "").await;
    // Characters that form-urlencoding changes, so that the Basic form shows it was applied.
    let (id, secret) = ("acme client", "cs:acme/1+x");
    c.world()
        .clients
        .insert(id.into(), (secret.into(), "acme".into()));
    c.world().clients.insert(
        ACME_APP_ID.into(),
        (ACME_APP_SECRET.into(), "acme-app".into()),
    );
    c.seed(
        "acme/crm_cc",
        json!({"client_id": id, "client_secret": secret}),
    );
    c.seed(
        "acme/crm_app",
        json!({"client_id": ACME_APP_ID, "client_secret": ACME_APP_SECRET}),
    );

    // First call: one token request; a caller-set Authorization is replaced, not kept.
    let req = request("GET", &format!("{API}/v1/contacts"), Some(&c.h.alice))
        .header("authorization", "Bearer caller-chosen")
        .body(Full::default())
        .unwrap();
    let resp = c.h.send(req).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.json()["who"], "acme");
    // Second call (another member of the tenant: the token is the tenant's): from the cache.
    let resp = c.get(&c.h.bob, &format!("{API}/v1/contacts")).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(c.api_tokens(), ["at-acme-1", "at-acme-1"]);
    assert_eq!(
        c.api.requests()[0].header("authorization"),
        ["Bearer at-acme-1"]
    );

    let tokens = c.token_requests();
    assert_eq!(tokens.len(), 1, "{tokens:#?}");
    let t = &tokens[0];
    assert_eq!((t.method.as_str(), t.path()), ("POST", "/oauth/token"));
    assert_eq!(t.host(), "auth.crm.test");
    assert_eq!(t.sni.as_deref(), Some("auth.crm.test"));
    let content_type = t.header("content-type");
    assert!(
        content_type.len() == 1 && content_type[0].starts_with("application/x-www-form-urlencoded"),
        "{content_type:?}"
    );
    let basic = format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", form_encode(id), form_encode(secret)))
    );
    assert_eq!(t.header("authorization"), [basic]);
    let params = form(&t.body);
    assert_eq!(
        params,
        HashMap::from([
            ("grant_type".to_owned(), "client_credentials".to_owned()),
            (
                "scope".to_owned(),
                "contacts.read contacts.write".to_owned()
            ),
        ]),
        "Basic auth keeps the client out of the body"
    );
    for r in c.api.requests().iter().chain(&tokens) {
        assert!(r.header("proxy-authorization").is_empty());
    }

    // Body auth: the client in the form, no Authorization header; cached the same way.
    for _ in 0..2 {
        let resp = c.get(&c.h.alice, &format!("{APP}/v1/org")).await;
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.json()["who"], "acme-app");
    }
    let tokens = c.token_requests();
    assert_eq!(tokens.len(), 2, "{tokens:#?}");
    let t = &tokens[1];
    assert!(t.header("authorization").is_empty(), "{t:#?}");
    assert_eq!(
        form(&t.body),
        HashMap::from([
            ("grant_type".to_owned(), "client_credentials".to_owned()),
            ("client_id".to_owned(), ACME_APP_ID.to_owned()),
            ("client_secret".to_owned(), ACME_APP_SECRET.to_owned()),
            ("audience".to_owned(), "https://api.crm.test".to_owned()),
        ])
    );
    assert_eq!(c.api_tokens()[2..], ["at-acme-app-2", "at-acme-app-2"]);

    assert_eq!(
        c.h.audit_summary(4).await,
        [
            format!("alice allow eng-crm tenant:crm_cc 200 GET {API}/v1/contacts"),
            format!("bob allow eng-crm tenant:crm_cc 200 GET {API}/v1/contacts"),
            format!("alice allow eng-crm_app tenant:crm_app 200 GET {APP}/v1/org"),
            format!("alice allow eng-crm_app tenant:crm_app 200 GET {APP}/v1/org"),
        ]
    );
    c.h.assert_audit_clean(&[secret, ACME_APP_SECRET, "at-acme-1", "at-acme-app-2"]);
}

// === expiry ===

#[tokio::test(flavor = "multi_thread")]
async fn a_token_is_replaced_once_its_usable_lifetime_is_over() {
    let c = Crm::start(&[crm_app_service()], "").await;
    {
        let mut w = c.world();
        w.clients
            .insert(ACME_APP_ID.into(), (ACME_APP_SECRET.into(), "acme".into()));
        // Usable for 1 s: the safety margin is min(60 s, half the lifetime).
        w.expires_in = Some(2);
    }
    c.seed(
        "acme/crm_app",
        json!({"client_id": ACME_APP_ID, "client_secret": ACME_APP_SECRET}),
    );
    let url = format!("{APP}/v1/org");
    for _ in 0..2 {
        assert_eq!(c.get(&c.h.alice, &url).await.status, 200);
    }
    assert_eq!(c.token_requests().len(), 1, "a fresh token is reused");
    // Past the usable second (but within the token's stated two): a new one is fetched.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(c.get(&c.h.alice, &url).await.status, 200);
    assert_eq!(c.token_requests().len(), 2, "an expiring token is replaced");
    assert_eq!(c.api_tokens(), ["at-acme-1", "at-acme-1", "at-acme-2"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_without_expires_in_is_cached() {
    let c = Crm::start(&[crm_app_service()], "").await;
    c.world()
        .clients
        .insert(ACME_APP_ID.into(), (ACME_APP_SECRET.into(), "acme".into()));
    c.seed(
        "acme/crm_app",
        json!({"client_id": ACME_APP_ID, "client_secret": ACME_APP_SECRET}),
    );
    let url = format!("{APP}/v1/org");
    assert_eq!(c.get(&c.h.alice, &url).await.status, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(c.get(&c.h.bob, &url).await.status, 200);
    assert_eq!(c.token_requests().len(), 1, "cached for 5 minutes");
    assert_eq!(c.api_tokens(), ["at-acme-1", "at-acme-1"]);
}

// === single flight ===

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_callers_with_a_cold_cache_make_one_token_request() {
    let c = Crm::start(&[crm_app_service()], "").await;
    {
        let mut w = c.world();
        w.clients
            .insert(ACME_APP_ID.into(), (ACME_APP_SECRET.into(), "acme".into()));
        w.token_delay = Duration::from_millis(200);
    }
    c.seed(
        "acme/crm_app",
        json!({"client_id": ACME_APP_ID, "client_secret": ACME_APP_SECRET}),
    );
    let c = Arc::new(c);
    let calls: Vec<_> = (0..50)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                // Both users of the tenant: one tenant-scoped token for all.
                let token = if i % 2 == 0 { &c.h.alice } else { &c.h.bob };
                c.get(token, &format!("{APP}/v1/org/{i}")).await
            })
        })
        .collect();
    for call in calls {
        let resp = call.await.unwrap();
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.json()["who"], "acme");
    }
    assert_eq!(c.token_requests().len(), 1, "one refresh in flight per key");
    let tokens = c.api_tokens();
    assert_eq!(tokens.len(), 50);
    assert!(tokens.iter().all(|t| t == "at-acme-1"), "{tokens:?}");
}

// === refresh-token rotation ===

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_cold_callers_share_one_exchange_of_a_rotating_refresh_token() {
    let c = Crm::start(&[crm_user_service()], "").await;
    c.users(&[(ALICE_RT, "acme.alice")]);
    {
        let mut w = c.world();
        w.rotate = true;
        w.token_delay = Duration::from_millis(200);
    }
    c.seed_user("alice", ALICE_RT);
    // Every caller reads the stored credential (with R1) before the first exchange rotates it
    // (and the endpoint revokes R1): the waiting callers must use that exchange's token, not
    // start another with the refresh token they read.
    let c = Arc::new(c);
    let calls: Vec<_> = (0..10)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move { c.get(&c.h.alice, &format!("{API}/v1/me/{i}")).await })
        })
        .collect();
    for call in calls {
        let resp = call.await.unwrap();
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.json()["who"], "acme.alice");
    }
    let tokens = c.token_requests();
    assert_eq!(tokens.len(), 1, "{tokens:#?}");
    let rotated = "rt-acme.alice-rotated-1";
    assert_eq!(
        c.wait_stored_refresh("acme/alice/crm_oauth", rotated).await["refresh_token"],
        rotated
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_refresh_token_is_stored_and_used_after_a_restart() {
    let mut c = Crm::start(&[crm_user_service()], "").await;
    c.users(&[(ALICE_RT, "acme.alice")]);
    c.world().rotate = true;
    c.seed_user("alice", ALICE_RT);
    let id = "acme/alice/crm_oauth";
    let url = format!("{API}/v1/me");

    let resp = c.get(&c.h.alice, &url).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.json()["who"], "acme.alice");
    let tokens = c.token_requests();
    let params = form(&tokens[0].body);
    assert_eq!(params["grant_type"], "refresh_token");
    assert_eq!(params["refresh_token"], ALICE_RT);
    // The endpoint rotated R1 to R2 (and now rejects R1): the store holds R2.
    let r2 = "rt-acme.alice-rotated-1";
    assert!(c.world().refresh.contains_key(r2));
    assert_eq!(
        c.wait_stored_refresh(id, r2).await,
        json!({"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "refresh_token": r2}),
        "the rotated refresh token is written back, the client kept"
    );

    // A new process: no cached token, so it refreshes with what the store holds.
    c.h.restart(&c.connect_to).await;
    let resp = c.get(&c.h.alice, &url).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.json()["who"], "acme.alice");
    let tokens = c.token_requests();
    assert_eq!(tokens.len(), 2, "{tokens:#?}");
    assert_eq!(form(&tokens[1].body)["refresh_token"], r2);
    let r3 = "rt-acme.alice-rotated-2";
    assert_eq!(c.wait_stored_refresh(id, r3).await["refresh_token"], r3);
    assert_eq!(c.api_tokens(), ["at-acme.alice-1", "at-acme.alice-2"]);
    c.h.assert_audit_clean(&[
        ALICE_RT,
        r2,
        r3,
        CLIENT_SECRET,
        "at-acme.alice-1",
        "at-acme.alice-2",
    ]);
}

// === token endpoint errors ===

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_refresh_token_is_a_502_naming_the_service_and_the_oauth_error() {
    let c = Crm::start(&[crm_user_service()], "").await;
    // The client is known, alice's refresh token is not (revoked).
    c.users(&[]);
    c.seed_user("alice", ALICE_RT);

    let resp = c.get(&c.h.alice, &format!("{API}/v1/me")).await;
    assert_token_failure(&resp, &[CANARY_DESCRIPTION, ALICE_RT, CLIENT_SECRET]);
    let text = error_text(&resp);
    assert!(text.contains("invalid_grant"), "{text}");
    assert!(
        text.contains("reconnect") || text.contains("behalf secret set"),
        "no hint to reconnect the account: {text}"
    );
    assert_eq!(c.token_requests().len(), 1);
    c.api.assert_untouched("a failed refresh");
    // The stored credential is left as it was.
    assert_eq!(c.stored("acme/alice/crm_oauth")["refresh_token"], ALICE_RT);

    let records = c.h.wait_audit(1).await;
    assert_eq!(records.len(), 1);
    assert_eq!(
        (records[0].reason.as_deref(), records[0].status),
        (Some("upstream_failed"), Some(502)),
        "{records:#?}"
    );
    c.h.assert_audit_clean(&[CANARY_DESCRIPTION, ALICE_RT, CLIENT_SECRET]);
}

#[tokio::test(flavor = "multi_thread")]
async fn token_endpoint_faults_are_502s_that_echo_nothing_and_are_not_cached() {
    let c = Crm::start(&[crm_user_service()], "").await;
    c.users(&[(ALICE_RT, "acme.alice")]);
    c.seed_user("alice", ALICE_RT);
    let url = format!("{API}/v1/me");

    // Nothing listening behind the token endpoint (before any pooled connection exists).
    c.auth_relay.set(None);
    let resp = c.get(&c.h.alice, &url).await;
    assert_token_failure(&resp, &[ALICE_RT, CLIENT_SECRET]);
    c.auth_relay.set(Some(c.auth.addr));

    let faults: [(u16, &'static str, &str); 5] = [
        (500, "text/plain", "CANARY-500-BODY"),
        (503, "application/json", r#"{"error":"CANARY-503-JSON"}"#),
        (
            200,
            "application/json",
            r#"{"access_token": CANARY-NOT-JSON"#,
        ),
        (
            200,
            "application/json",
            r#"{"token_type":"Bearer","note":"CANARY-NO-ACCESS-TOKEN"}"#,
        ),
        (200, "text/html", "<html>CANARY-HTML</html>"),
    ];
    for (status, content_type, text) in faults {
        c.world().fixed = Some((status, content_type, text.to_owned()));
        let resp = c.get(&c.h.alice, &url).await;
        assert_token_failure(&resp, &["CANARY", ALICE_RT, CLIENT_SECRET]);
    }
    c.api.assert_untouched("failed token requests");

    // The endpoint recovers: the failures were not cached.
    c.world().fixed = None;
    let resp = c.get(&c.h.alice, &url).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(c.api_tokens(), [c.latest("acme.alice")]);

    let records = c.h.wait_audit(7).await;
    let reasons: Vec<_> = records
        .iter()
        .map(|r| (r.reason.as_deref().unwrap_or("-"), r.status))
        .collect();
    assert_eq!(
        reasons[..6],
        [("upstream_failed", Some(502)); 6],
        "{records:#?}"
    );
    c.h.assert_audit_clean(&["CANARY", ALICE_RT, CLIENT_SECRET]);
}

// === 401 from the upstream ===

#[tokio::test(flavor = "multi_thread")]
async fn a_401_to_an_idempotent_request_refreshes_once_and_retries_once() {
    let c = Crm::start(&[crm_user_service()], "").await;
    c.users(&[(ALICE_RT, "acme.alice"), (BOB_RT, "acme.bob")]);
    c.seed_user("alice", ALICE_RT);
    c.seed_user("bob", BOB_RT);
    let url = format!("{API}/v1/notes/1");

    // Warm alice's cache.
    assert_eq!(c.get(&c.h.alice, &url).await.status, 200);
    assert_eq!(c.token_requests().len(), 1);

    // The API stops accepting that token: a GET gets a 401, then one refresh and one retry.
    let t1 = c.latest("acme.alice");
    c.world().rejected.insert(t1.clone());
    c.api.clear();
    let resp = c.get(&c.h.alice, &url).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.json()["who"], "acme.alice");
    let t2 = c.latest("acme.alice");
    assert_ne!(t1, t2);
    assert_eq!(c.api_tokens(), [t1, t2.clone()]);
    assert_eq!(c.token_requests().len(), 2, "exactly one refresh");

    // PUT is idempotent too: retried, with its body sent again.
    c.world().rejected.insert(t2.clone());
    c.api.clear();
    let resp = c.send_body("PUT", &url, &c.h.alice, r#"{"n":1}"#).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let t3 = c.latest("acme.alice");
    assert_eq!(c.api_tokens(), [t2, t3.clone()]);
    let bodies: Vec<_> = c.api.requests().iter().map(|r| r.body.clone()).collect();
    assert_eq!(bodies, [&br#"{"n":1}"#[..], &br#"{"n":1}"#[..]]);
    assert_eq!(c.token_requests().len(), 3);

    // A POST is not retried: its 401 goes back to the caller.
    c.world().rejected.insert(t3.clone());
    c.api.clear();
    let resp = c
        .send_body("POST", &format!("{API}/v1/notes"), &c.h.alice, "{}")
        .await;
    assert_eq!(resp.status, 401, "{resp:?}");
    assert_eq!(c.api_tokens(), [t3], "a POST is sent once");

    // An API that always answers 401: one refresh, one retry, then the 401 goes back.
    assert_eq!(c.get(&c.h.bob, &url).await.status, 200);
    let before = c.token_requests().len();
    let b1 = c.latest("acme.bob");
    c.world().reject_all = true;
    c.api.clear();
    let resp = c.get(&c.h.bob, &url).await;
    assert_eq!(resp.status, 401, "{resp:?}");
    let b2 = c.latest("acme.bob");
    assert_eq!(
        c.api_tokens(),
        [b1, b2],
        "one retry, with the refreshed token"
    );
    assert_eq!(c.token_requests().len(), before + 1, "one refresh");
    c.h.assert_audit_clean(&[ALICE_RT, BOB_RT, CLIENT_SECRET, "at-acme."]);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_401s_for_one_token_share_one_refresh() {
    let c = Crm::start(&[crm_user_service()], "").await;
    c.users(&[(ALICE_RT, "acme.alice")]);
    c.seed_user("alice", ALICE_RT);
    let url = format!("{API}/v1/me");
    assert_eq!(c.get(&c.h.alice, &url).await.status, 200);
    let t1 = c.latest("acme.alice");
    {
        let mut w = c.world();
        w.rejected.insert(t1.clone());
        // Every caller has sent the old token before any 401 comes back.
        w.reject_delay = Duration::from_millis(150);
        w.token_delay = Duration::from_millis(50);
    }
    c.api.clear();
    let c = Arc::new(c);
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.get(&c.h.alice, &format!("{API}/v1/me")).await })
        })
        .collect();
    for call in calls {
        let resp = call.await.unwrap();
        assert_eq!(resp.status, 200, "{resp:?}");
    }
    assert_eq!(
        c.token_requests().len(),
        2,
        "the first refresh serves every caller that saw the 401"
    );
    let t2 = c.latest("acme.alice");
    let mut tokens = c.api_tokens();
    tokens.sort();
    assert_eq!(tokens, [vec![t1; 5], vec![t2; 5]].concat());
}

// === isolation ===

#[tokio::test(flavor = "multi_thread")]
async fn users_and_tenants_never_get_each_others_tokens() {
    let globex = "[[grant]]\nid = \"carol-crm_app\"\nwho = [\"user:carol\"]\n\
                  clients = [\"proxy\"]\nservice = \"crm_app\"\nallow = [\"GET /**\"]\n";
    let c = Crm::start(&[crm_user_service(), crm_app_service()], globex).await;
    c.users(&[(ALICE_RT, "acme.alice"), (BOB_RT, "acme.bob")]);
    {
        let mut w = c.world();
        for (id, secret, owner) in [
            (ACME_APP_ID, ACME_APP_SECRET, "acme"),
            (GLOBEX_APP_ID, GLOBEX_APP_SECRET, "globex"),
        ] {
            w.clients.insert(id.into(), (secret.into(), owner.into()));
        }
        w.token_delay = Duration::from_millis(50);
    }
    c.seed_user("alice", ALICE_RT);
    c.seed_user("bob", BOB_RT);
    c.seed(
        "acme/crm_app",
        json!({"client_id": ACME_APP_ID, "client_secret": ACME_APP_SECRET}),
    );
    c.seed(
        "globex/crm_app",
        json!({"client_id": GLOBEX_APP_ID, "client_secret": GLOBEX_APP_SECRET}),
    );

    // Interleaved and concurrent: alice, bob (user tokens), then the tenant token as alice,
    // bob and carol. Each URL names whose token it must carry.
    let c = Arc::new(c);
    let mut calls = Vec::new();
    for i in 0..20 {
        for (who, url) in [
            ("acme.alice", format!("{API}/v1/contacts/acme.alice/{i}")),
            ("acme.bob", format!("{API}/v1/contacts/acme.bob/{i}")),
            ("acme", format!("{APP}/v1/org/acme/alice/{i}")),
            ("acme", format!("{APP}/v1/org/acme/bob/{i}")),
            ("globex", format!("{APP}/v1/org/globex/carol/{i}")),
        ] {
            let c = c.clone();
            calls.push(tokio::spawn(async move {
                let token = if url.contains("alice") {
                    &c.h.alice
                } else if url.contains("bob") {
                    &c.h.bob
                } else {
                    &c.h.carol
                };
                (who, c.get(token, &url).await)
            }));
        }
    }
    for call in calls {
        let (who, resp) = call.await.unwrap();
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.json()["who"], who);
    }
    let world = c.world();
    let requests = c.api.requests();
    assert_eq!(requests.len(), 100);
    for r in &requests {
        let token = bearer_of(r).unwrap();
        let owner = &world.access[&token];
        let expected = r.path().split('/').nth(3).unwrap();
        assert_eq!(owner, expected, "{} carried {token}", r.path());
    }
    drop(world);
    // One token per key: alice, bob, acme, globex.
    let tokens = c.token_requests();
    assert_eq!(tokens.len(), 4, "{tokens:#?}");
    let mut presented: Vec<String> = tokens
        .iter()
        .map(|t| {
            let p = form(&t.body);
            p.get("refresh_token")
                .cloned()
                .unwrap_or_else(|| client_auth(t).unwrap().0)
        })
        .collect();
    presented.sort();
    assert_eq!(presented, [ACME_APP_ID, GLOBEX_APP_ID, ALICE_RT, BOB_RT]);
    c.h.assert_audit_clean(&crm_secrets());
}

// === what a tool sees ===

/// The shipped `github` service, replaced by one using `oauth2` (token endpoint on the same
/// origin, as many APIs have it).
const GITHUB_OAUTH: &str = r#"[service]
name = "github"
origins = ["https://api.github.com"]
credential = { name = "github_oauth", scope = "user" }
inject = { oauth2 = { token_url = "https://api.github.com/login/oauth/access_token", grant = "refresh_token", client_auth = "body" } }
"#;
const T_OAUTH_CLIENT_ID: &str = "gh-oauth-client-0a1b";
const T_OAUTH_CLIENT_SECRET: &str = "canary-oauth-cs-4d5e6f";
const T_OAUTH_RT1: &str = "canary-oauth-rt1-a1b2c3";
const T_OAUTH_RT2: &str = "canary-oauth-rt2-d4e5f6";
const T_OAUTH_ACCESS: &str = "canary-oauth-at-778899";

#[tokio::test(flavor = "multi_thread")]
async fn a_tool_never_sees_the_access_token_refresh_token_or_client_secret() {
    let h = ToolHarness::start_with(ToolConfig {
        extra_services: vec![("github".into(), GITHUB_OAUTH.into())],
        ..ToolConfig::default()
    })
    .await;
    {
        let store = secrets::open_store(h.sidecar.policy.settings(), &h.state).unwrap();
        let value = json!({"client_id": T_OAUTH_CLIENT_ID, "client_secret": T_OAUTH_CLIENT_SECRET,
                           "refresh_token": T_OAUTH_RT1});
        store
            .set(
                &SecretId::parse("acme/alice/github_oauth").unwrap(),
                &Secret::from_text(&value.to_string()),
            )
            .unwrap();
    }
    // The token endpoint rotates the refresh token; the API reflects everything it got, plus
    // (a hostile upstream that is also the token endpoint) every secret of the exchange.
    h.upstream.respond(|r| {
        if r.path() == "/login/oauth/access_token" {
            return json_response(
                200,
                json!({"access_token": T_OAUTH_ACCESS, "token_type": "Bearer",
                       "expires_in": 3600, "refresh_token": T_OAUTH_RT2}),
            );
        }
        let mut headers = serde_json::Map::new();
        for name in r.headers.keys() {
            headers.insert(name.to_string(), r.header(name.as_str()).into());
        }
        json_response(
            200,
            json!({"headers": headers, "leaks": [T_OAUTH_ACCESS, T_OAUTH_RT1, T_OAUTH_RT2,
                                                  T_OAUTH_CLIENT_SECRET]}),
        )
    });

    let (status, out) = h
        .invoke(&h.alice, "github_issues", json!({"repo": "acme/web"}))
        .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["output"]["status"], 200, "{out}");
    // The upstream did get the token (so the reflection had it to leak).
    let api: Vec<_> = h
        .upstream
        .requests()
        .into_iter()
        .filter(|r| r.path() == "/repos/acme/web/issues")
        .collect();
    assert_eq!(api.len(), 1, "{api:#?}");
    assert_eq!(
        api[0].header("authorization"),
        [format!("Bearer {T_OAUTH_ACCESS}")]
    );
    // Every check is made before any is asserted, so one failure does not hide another.
    let secrets = [
        T_OAUTH_ACCESS,
        T_OAUTH_RT1,
        T_OAUTH_RT2,
        T_OAUTH_CLIENT_SECRET,
    ];
    let mut problems = Vec::new();
    let text = out.to_string();
    for value in secrets {
        if text.contains(value) {
            problems.push(format!("the tool's output contains {value:?}"));
        }
    }
    let records = h.audit_records();
    if !records
        .iter()
        .any(|r| r.credential.as_deref() == Some("user:github_oauth") && r.status == Some(200))
    {
        problems.push(format!(
            "no audit record names user:github_oauth: {records:#?}"
        ));
    }
    let audit = h.audit_text();
    for value in secrets {
        if audit.contains(value) {
            problems.push(format!("the audit log contains {value:?}"));
        }
    }
    assert!(
        problems.is_empty(),
        "{problems:#?}
output: {text}"
    );
}

// === load-time checks ===

/// A policies dir with `behalf.toml` (`secrets` is its `[secrets]` body) and service `crm`.
fn policy_dir(secrets: &str, oauth2: &str, extra_service_keys: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("policies");
    std::fs::create_dir_all(p.join("services")).unwrap();
    std::fs::create_dir_all(p.join("tenants")).unwrap();
    std::fs::write(
        p.join("behalf.toml"),
        format!("dev = true\n\n[secrets]\n{secrets}\n"),
    )
    .unwrap();
    std::fs::write(
        p.join("services/crm.toml"),
        format!(
            "[service]\nname = \"crm\"\norigins = [\"https://api.crm.test\"]\n\
             credential = {{ name = \"crm_oauth\", scope = \"user\" }}\n\
             inject = {{ oauth2 = {{ {oauth2} }} }}\n{extra_service_keys}"
        ),
    )
    .unwrap();
    std::fs::write(
        p.join("tenants/acme.toml"),
        format!("[tenant]\nname = \"acme\"\n\n{}", grant("crm")),
    )
    .unwrap();
    tmp
}

#[test]
fn a_refresh_token_grant_needs_a_writable_secret_backend() {
    let refresh = format!(r#"token_url = "{TOKEN_URL}", grant = "refresh_token""#);
    let cc = format!(r#"token_url = "{TOKEN_URL}", grant = "client_credentials""#);
    let load = |tmp: &tempfile::TempDir| PolicySet::load(&tmp.path().join("policies"));

    for backend in ["backend = \"env\"", "backend = \"dir\"\nroot = \"secrets\""] {
        let tmp = policy_dir(backend, &refresh, "");
        let err = match load(&tmp) {
            Ok(_) => panic!("{backend}: a refresh_token grant loaded"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("crm.toml"), "{backend}: {err}");
        assert!(err.contains("writable"), "{backend}: {err}");

        // client_credentials never writes: any backend will do.
        let tmp = policy_dir(backend, &cc, "");
        load(&tmp).unwrap_or_else(|e| panic!("{backend}: {e}"));

        // The CLI says the same, with exit 64.
        let tmp = policy_dir(backend, &refresh, "");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_behalf"))
            .args(["policy", "check"])
            .arg(tmp.path().join("policies"))
            .current_dir(tmp.path())
            .env_remove("BEHALF_LOG")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{backend}: {stderr}");
        assert!(stderr.contains("crm.toml"), "{stderr}");
    }
    // The file backend is writable.
    let tmp = policy_dir("backend = \"file\"", &refresh, "");
    load(&tmp).unwrap_or_else(|e| panic!("{e}"));

    // A plain-http token endpoint needs allow_plaintext.
    let http = r#"token_url = "http://auth.crm.test/oauth/token", grant = "client_credentials""#;
    let tmp = policy_dir("backend = \"file\"", http, "");
    let err = match load(&tmp) {
        Ok(_) => panic!("an http token_url loaded"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("crm.toml") && err.contains("token_url"),
        "{err}"
    );
    let tmp = policy_dir("backend = \"file\"", http, "allow_plaintext = true\n");
    load(&tmp).unwrap_or_else(|e| panic!("{e}"));
}
