//! Account connect (issue 9): end users connect their own Google account to `google_calendar`
//! with the OAuth2 authorization code flow and PKCE, list their connections and disconnect.
//!
//! The test plays both the user's browser and Google. The mock provider lives behind
//! `--connect-to` on the [`ToolHarness`]'s TLS mock (`oauth2.googleapis.com`: the token and
//! revocation endpoints; `www.googleapis.com`: a calendar API that answers with whose access
//! token it was given). Its consent step is [`Google::authorize`], run in the test on the
//! `authorize_url` behalf handed out: it checks every parameter and mints a code bound to the
//! client, the redirect URI, the PKCE challenge, the scope and the Google user who consented.
//! Its token endpoint redeems a code once, for the same client (HTTP Basic or form fields),
//! the exact redirect URI (also registered for the client) and a verifier whose S256 is the
//! challenge, and answers `invalid_grant` otherwise. The browser's last step is
//! [`Google::browser`]: the redirect's path and query after `redirect_base`, sent to the API.
//!
//! Every value a user or the app must keep secret (client secret, codes, access and refresh
//! tokens) is a canary that must never show up in an API response, a tool's output or the
//! audit log.
//!
//! The 10-minute state expiry is tested by moving tokio's clock forward (the API's tasks share
//! the test's runtime and clock).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use behalf::secrets::{self, Secret, SecretId, SecretStore};
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;

use crate::support::tools::{ToolConfig, ToolHarness, canaries};
use crate::support::{Recorded, json_response};

// === the provider and the deployment ===

const AUTHORIZE_URL: &str = "https://accounts.google.com/o/oauth2/v2/auth";
const TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
const REVOKE_URL: &str = "https://oauth2.googleapis.com/revoke";
/// Where behalf's API is reached from users' browsers (what the provider has registered).
const REDIRECT_BASE: &str = "https://agent.example.test/behalf";
const CALENDAR_SCOPE: &str = "https://www.googleapis.com/auth/calendar.readonly";
const TASKS_SCOPE: &str = "https://www.googleapis.com/auth/tasks";
/// The calendar API route the `calendar` tool calls.
const EVENTS: &str = "/calendar/v3/calendars/primary/events";

/// acme's Google app (the tenant credential `acme/google_app`).
const APP_CLIENT_ID: &str = "1234-behalf.apps.googleusercontent.test";
const APP_CLIENT_SECRET: &str = "canary-GOCSPX-app-s3cret-9q8w";

/// Host names the mock answers for (besides the shipped tools' hosts).
const GOOGLE_HOSTS: &[&str] = &[
    "accounts.google.com",
    "oauth2.googleapis.com",
    "www.googleapis.com",
];

/// The shipped `google_calendar` service, with account connect (Basic client auth, revocation).
fn calendar_service(redirect_base: &str) -> String {
    format!(
        r#"[service]
name = "google_calendar"
origins = ["https://www.googleapis.com"]
credential = {{ name = "google", scope = "user" }}
inject = {{ oauth2 = {{ token_url = "{TOKEN_URL}", grant = "refresh_token", scopes = ["{CALENDAR_SCOPE}"], authorize_url = "{AUTHORIZE_URL}", authorize_params = {{ access_type = "offline", prompt = "consent" }}, revoke_url = "{REVOKE_URL}", client = "google_app", redirect_base = "{redirect_base}" }} }}
"#
    )
}

/// A second connectable service on the same app: client credentials in the form, no
/// revocation endpoint, granted to engineering only.
fn tasks_service(redirect_base: &str) -> String {
    format!(
        r#"[service]
name = "google_tasks"
origins = ["https://tasks.googleapis.com"]
credential = {{ name = "google_tasks", scope = "user" }}
inject = {{ oauth2 = {{ token_url = "{TOKEN_URL}", grant = "refresh_token", scopes = ["{TASKS_SCOPE}"], authorize_url = "{AUTHORIZE_URL}", client = "google_app", client_auth = "body", redirect_base = "{redirect_base}" }} }}
"#
    )
}

const TASKS_GRANT: &str = r#"[[grant]]
id = "eng-tasks"
who = ["group:engineering"]
clients = ["proxy"]
service = "google_tasks"
allow = ["GET /tasks/v1/**"]
"#;

/// What a browser's `Accept` says when it follows a redirect.
const BROWSER_ACCEPT: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

/// The redirect URI behalf must use for `service` under [`REDIRECT_BASE`].
fn redirect_uri(service: &str) -> String {
    format!("{REDIRECT_BASE}/v1/connect/{service}/callback")
}

// === the mock provider ===

/// A code minted at the consent step.
#[derive(Debug, Clone)]
struct Code {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    scope: String,
    /// The Google account that consented.
    user: String,
    used: bool,
}

/// What the mock provider knows.
#[derive(Default)]
struct World {
    /// client id → (secret, registered redirect URIs).
    clients: HashMap<String, (String, Vec<String>)>,
    codes: HashMap<String, Code>,
    /// Numbers codes and tokens.
    n: usize,
    /// Live access tokens → (Google user, the refresh token of their grant).
    access: HashMap<String, (String, String)>,
    /// Live refresh tokens → Google user.
    refresh: HashMap<String, String>,
    /// Every code and token issued (leak canaries).
    issued: Vec<String>,
    /// The token endpoint answers every request with this status (a 5xx fault).
    fault: Option<u16>,
}

/// An RFC 6749 error answer, with a description that must never be echoed.
fn oauth_error(status: u16, code: &str) -> http::Response<behalf::egress::BoxBody> {
    json_response(
        status,
        json!({"error": code, "error_description": "CANARY-PROVIDER-DESCRIPTION"}),
    )
}

/// A form body's parameters (panics on a repeated one).
fn form(body: &[u8]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (k, v) in form_urlencoded::parse(body).into_owned() {
        assert!(
            out.insert(k.clone(), v).is_none(),
            "parameter {k} sent twice"
        );
    }
    out
}

fn form_decode(s: &str) -> String {
    form_urlencoded::parse(format!("v={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// How a token or revocation request authenticated the client.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ClientAuth {
    Basic(String, String),
    Body(String, String),
}

impl ClientAuth {
    fn of(r: &Recorded) -> Result<Self, &'static str> {
        let f = form(&r.body);
        if let Some(auth) = r.header("authorization").first() {
            if f.contains_key("client_secret") {
                return Err("invalid_request"); // two client authentication methods
            }
            let b64 = auth.strip_prefix("Basic ").ok_or("invalid_client")?;
            let raw = STANDARD.decode(b64).map_err(|_| "invalid_client")?;
            let raw = String::from_utf8(raw).map_err(|_| "invalid_client")?;
            let (id, secret) = raw.split_once(':').ok_or("invalid_client")?;
            return Ok(Self::Basic(form_decode(id), form_decode(secret)));
        }
        match (f.get("client_id"), f.get("client_secret")) {
            (Some(id), Some(secret)) => Ok(Self::Body(id.clone(), secret.clone())),
            _ => Err("invalid_client"),
        }
    }

    fn parts(&self) -> (&str, &str) {
        match self {
            Self::Basic(i, s) | Self::Body(i, s) => (i, s),
        }
    }
}

/// RFC 7636 S256.
fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ))
}

/// An RFC 7636 verifier: 43 to 128 unreserved characters.
fn valid_verifier(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

impl World {
    /// The client a request authenticated as, if its secret is right.
    fn client(&self, r: &Recorded) -> Result<String, &'static str> {
        let auth = ClientAuth::of(r)?;
        let (id, secret) = auth.parts();
        match self.clients.get(id) {
            Some((known, _)) if known == secret => Ok(id.to_owned()),
            _ => Err("invalid_client"),
        }
    }

    fn token(&mut self, r: &Recorded) -> http::Response<behalf::egress::BoxBody> {
        if let Some(status) = self.fault {
            return json_response(status, json!({"error": "backend_error"}));
        }
        if r.method != "POST" {
            return oauth_error(405, "invalid_request");
        }
        let client = match self.client(r) {
            Ok(c) => c,
            Err(e) => return oauth_error(if e == "invalid_client" { 401 } else { 400 }, e),
        };
        let f = form(&r.body);
        match f.get("grant_type").map(String::as_str) {
            Some("authorization_code") => {}
            Some("refresh_token") => {
                let Some(user) = f
                    .get("refresh_token")
                    .and_then(|t| self.refresh.get(t))
                    .cloned()
                else {
                    return oauth_error(400, "invalid_grant");
                };
                let access = self.mint(&format!("ya29.canary-at-{user}-refreshed"));
                self.access
                    .insert(access.clone(), (user, f["refresh_token"].clone()));
                return json_response(
                    200,
                    json!({"access_token": access, "expires_in": 3599, "token_type": "Bearer"}),
                );
            }
            _ => return oauth_error(400, "unsupported_grant_type"),
        }
        let Some(code) = f.get("code").and_then(|c| self.codes.get_mut(c)) else {
            return oauth_error(400, "invalid_grant");
        };
        // Single use, whatever happens next.
        if std::mem::replace(&mut code.used, true) {
            return oauth_error(400, "invalid_grant");
        }
        let code = code.clone();
        let registered = &self.clients[&client].1;
        let redirect = f.get("redirect_uri");
        let verifier = f.get("code_verifier");
        if code.client_id != client
            || redirect != Some(&code.redirect_uri)
            || !registered.contains(&code.redirect_uri)
            || !verifier.is_some_and(|v| valid_verifier(v) && s256(v) == code.challenge)
        {
            return oauth_error(400, "invalid_grant");
        }
        let user = code.user;
        let access = self.mint(&format!("ya29.canary-at-{user}"));
        let refresh = self.mint(&format!("1//canary-rt-{user}"));
        self.access
            .insert(access.clone(), (user.clone(), refresh.clone()));
        self.refresh.insert(refresh.clone(), user);
        json_response(
            200,
            json!({"access_token": access, "refresh_token": refresh, "expires_in": 3599,
                   "scope": code.scope, "token_type": "Bearer"}),
        )
    }

    /// RFC 7009: revokes a refresh token and every access token of its grant.
    fn revoke(&mut self, r: &Recorded) -> http::Response<behalf::egress::BoxBody> {
        if r.method != "POST" {
            return oauth_error(405, "invalid_request");
        }
        if let Err(e) = self.client(r) {
            return oauth_error(401, e);
        }
        let f = form(&r.body);
        if let Some(t) = f.get("token") {
            self.refresh.remove(t);
            self.access.retain(|_, (_, rt)| rt != t);
        }
        json_response(200, json!({}))
    }

    /// The calendar API: the events of whoever the access token belongs to.
    fn calendar(&self, r: &Recorded) -> http::Response<behalf::egress::BoxBody> {
        let token = match &r.header("authorization")[..] {
            [one] => one.strip_prefix("Bearer ").map(str::to_owned),
            _ => None,
        };
        match token.and_then(|t| self.access.get(&t)) {
            Some((user, _)) if r.method == "GET" && r.path() == EVENTS => json_response(
                200,
                json!({"kind": "calendar#events", "summary": user,
                       "items": [{"summary": format!("{user}'s standup")}]}),
            ),
            Some(_) => json_response(404, json!({"error": {"code": 404}})),
            None => json_response(
                401,
                json!({"error": {"code": 401, "status": "UNAUTHENTICATED"}}),
            ),
        }
    }

    fn mint(&mut self, prefix: &str) -> String {
        self.n += 1;
        let value = format!("{prefix}-{}", self.n);
        self.issued.push(value.clone());
        value
    }
}

// === the harness ===

/// A flow behalf started: `GET /v1/connect/{service}`'s answer, parsed.
#[derive(Debug, Clone)]
struct Flow {
    authorize_url: String,
    params: BTreeMap<String, String>,
}

impl Flow {
    fn state(&self) -> &str {
        &self.params["state"]
    }
}

struct Google {
    h: ToolHarness,
    world: Arc<Mutex<World>>,
    /// The `redirect_base` the services were configured with.
    redirect_base: String,
}

impl Google {
    /// The harness with the connectable services under `REDIRECT_BASE`.
    async fn start() -> Self {
        Self::start_with(REDIRECT_BASE, "").await
    }

    /// The harness with the services' `redirect_base` set to `redirect_base` (the provider
    /// has [`REDIRECT_BASE`]'s URIs registered) and `globex_extra` in globex's tenant file.
    async fn start_with(redirect_base: &str, globex_extra: &str) -> Self {
        let h = ToolHarness::start_with(ToolConfig {
            extra_services: vec![
                ("google_calendar".into(), calendar_service(redirect_base)),
                ("google_tasks".into(), tasks_service(redirect_base)),
            ],
            acme_extra: TASKS_GRANT.into(),
            globex_extra: globex_extra.into(),
            extra_hosts: GOOGLE_HOSTS.iter().map(|h| (*h).to_owned()).collect(),
            ..ToolConfig::default()
        })
        .await;
        let world: Arc<Mutex<World>> = Arc::default();
        world.lock().unwrap().clients.insert(
            APP_CLIENT_ID.into(),
            (
                APP_CLIENT_SECRET.into(),
                vec![
                    redirect_uri("google_calendar"),
                    redirect_uri("google_tasks"),
                ],
            ),
        );
        let w = world.clone();
        h.upstream.respond(move |r| {
            let mut w = w.lock().unwrap();
            match (r.sni.as_deref(), r.path()) {
                (Some("oauth2.googleapis.com"), "/token") => w.token(r),
                (Some("oauth2.googleapis.com"), "/revoke") => w.revoke(r),
                (Some("www.googleapis.com"), _) => w.calendar(r),
                _ => json_response(404, json!({"error": "not_found"})),
            }
        });
        let g = Self {
            h,
            world,
            redirect_base: redirect_base.to_owned(),
        };
        g.seed(
            "acme/google_app",
            json!({"client_id": APP_CLIENT_ID, "client_secret": APP_CLIENT_SECRET}),
        );
        g
    }

    fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap()
    }

    fn store(&self) -> Box<dyn SecretStore> {
        secrets::open_store(self.h.sidecar.policy.settings(), &self.h.state).unwrap()
    }

    fn seed(&self, id: &str, value: Value) {
        self.store()
            .set(
                &SecretId::parse(id).unwrap(),
                &Secret::from_text(&value.to_string()),
            )
            .unwrap();
    }

    /// A stored credential as JSON, or `None`.
    fn stored(&self, id: &str) -> Option<Value> {
        let id = SecretId::parse(id).unwrap();
        let secret = self.store().get(&id.namespace, &id.name).unwrap()?;
        Some(serde_json::from_slice(secret.expose()).unwrap())
    }

    /// Every stored secret's id, sorted.
    fn secret_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .store()
            .list(None)
            .unwrap()
            .into_iter()
            .map(|i| i.id.to_string())
            .collect();
        ids.sort();
        ids
    }

    /// Asserts that no user holds a credential of either connectable service.
    fn assert_nothing_connected(&self, context: &str) {
        for id in [
            "acme/alice/google",
            "acme/bob/google",
            "acme/alice/google_tasks",
            "acme/bob/google_tasks",
        ] {
            assert!(
                self.stored(id).is_none(),
                "{context}: {id} was stored: {:?}",
                self.secret_ids()
            );
        }
    }

    /// Requests the mock received at `host` (and `path`, if given).
    fn requests_to(&self, host: &str, path: Option<&str>) -> Vec<Recorded> {
        self.h
            .upstream
            .requests()
            .into_iter()
            .filter(|r| r.sni.as_deref() == Some(host) && path.is_none_or(|p| r.path() == p))
            .collect()
    }

    /// Token endpoint requests, as their form parameters.
    fn token_requests(&self) -> Vec<BTreeMap<String, String>> {
        self.requests_to("oauth2.googleapis.com", Some("/token"))
            .iter()
            .map(|r| form(&r.body))
            .collect()
    }

    fn revocations(&self) -> Vec<Recorded> {
        self.requests_to("oauth2.googleapis.com", Some("/revoke"))
    }

    fn calendar_requests(&self) -> Vec<Recorded> {
        self.requests_to("www.googleapis.com", None)
    }

    /// An API request; asserts that no secret value is in the response.
    async fn api(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
    ) -> (StatusCode, HeaderMap, Value) {
        let (status, headers, body) = self.h.request(method, path, token, None).await;
        let mut text = match &body {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        for (name, value) in &headers {
            text.push_str(&format!(
                "\n{name}: {}",
                String::from_utf8_lossy(value.as_bytes())
            ));
        }
        self.assert_no_secret(&format!("{method} {path}"), &text);
        (status, headers, body)
    }

    /// Asserts that `text` holds no secret: seeded canaries, the app's secret, any code or
    /// token the provider issued, the provider's error description.
    fn assert_no_secret(&self, what: &str, text: &str) {
        let issued = self.world().issued.clone();
        let fixed = [APP_CLIENT_SECRET, "CANARY-PROVIDER-DESCRIPTION"];
        for value in canaries()
            .into_iter()
            .chain(fixed)
            .chain(issued.iter().map(String::as_str))
        {
            assert!(!text.contains(value), "{what} contains {value:?}: {text}");
        }
    }

    /// Asserts the audit log verifies and holds no secret and no identity token.
    fn assert_audit_clean(&self) {
        let _ = self.h.audit_records();
        let text = self.h.audit_text();
        self.assert_no_secret("the audit log", &text);
        for token in [&self.h.alice, &self.h.bob, &self.h.dave, &self.h.carol] {
            assert!(
                !text.contains(token.as_str()),
                "an identity token is audited"
            );
        }
    }

    /// `GET /v1/connect/{service}` as `token`: asserts a 200 and the authorize URL's shape.
    async fn start_flow(&self, token: &str, service: &str) -> Flow {
        let (status, headers, body) = self
            .api("GET", &format!("/v1/connect/{service}"), Some(token))
            .await;
        assert_eq!(status, 200, "{body}");
        assert!(
            headers
                .get("content-type")
                .is_some_and(|v| v.as_bytes().starts_with(b"application/json")),
            "{headers:?}"
        );
        assert_eq!(body["service"], service, "{body}");
        assert_eq!(body["expires_in"], 600, "{body}");
        let url = body["authorize_url"]
            .as_str()
            .unwrap_or_else(|| panic!("no authorize_url: {body}"))
            .to_owned();
        let (base, query) = url
            .split_once('?')
            .unwrap_or_else(|| panic!("no query in {url}"));
        assert_eq!(base, AUTHORIZE_URL);
        let params = form(query.as_bytes());
        Flow {
            authorize_url: url,
            params,
        }
    }

    /// The provider's consent step for `flow`, as the Google account `user` who agrees:
    /// checks the request and returns the redirect to behalf with a fresh code.
    fn authorize(&self, flow: &Flow, user: &str) -> String {
        let p = &flow.params;
        let mut keys: Vec<&str> = p.keys().map(String::as_str).collect();
        keys.retain(|k| !["access_type", "prompt"].contains(k));
        assert_eq!(
            keys,
            [
                "client_id",
                "code_challenge",
                "code_challenge_method",
                "redirect_uri",
                "response_type",
                "scope",
                "state"
            ],
            "{}",
            flow.authorize_url
        );
        assert_eq!(p["response_type"], "code");
        assert_eq!(p["code_challenge_method"], "S256");
        let challenge = &p["code_challenge"];
        assert_eq!(challenge.len(), 43, "a base64url SHA-256: {challenge}");
        assert!(URL_SAFE_NO_PAD.decode(challenge).is_ok(), "{challenge}");
        assert!(
            p["state"].len() >= 22,
            "the state should carry at least 128 random bits: {}",
            p["state"]
        );
        let mut w = self.world();
        assert!(
            w.clients.contains_key(&p["client_id"]),
            "unknown client {}",
            p["client_id"]
        );
        // Lenient about the redirect URI here (like a provider matching a registered
        // prefix); the token endpoint insists on the exact registered one.
        let code_value = w.mint(&format!("4/canary-code-{user}"));
        w.codes.insert(
            code_value.clone(),
            Code {
                client_id: p["client_id"].clone(),
                redirect_uri: p["redirect_uri"].clone(),
                challenge: challenge.clone(),
                scope: p["scope"].clone(),
                user: user.to_owned(),
                used: false,
            },
        );
        format!(
            "{}?code={}&state={}&scope={}",
            p["redirect_uri"],
            enc(&code_value),
            enc(&p["state"]),
            enc(&p["scope"])
        )
    }

    /// The provider's answer when the user declines.
    fn decline(&self, flow: &Flow) -> String {
        format!(
            "{}?error=access_denied&state={}",
            flow.params["redirect_uri"],
            enc(flow.state())
        )
    }

    /// The browser following `redirect` to behalf (with an identity token if given): the
    /// path and query after `redirect_base`, on a fresh connection, asking for HTML as
    /// browsers do; asserts that no secret is in the response.
    async fn browser(&self, redirect: &str, token: Option<&str>) -> (StatusCode, HeaderMap, Value) {
        let path = redirect
            .strip_prefix(&self.redirect_base)
            .unwrap_or_else(|| {
                panic!(
                    "the redirect {redirect} is not under redirect_base {}",
                    self.redirect_base
                )
            });
        let tcp = TcpStream::connect(self.h.api_addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = Request::get(path)
            .header("host", "agent.example.test")
            .header("accept", BROWSER_ACCEPT);
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let resp = sender
            .send_request(req.body(Empty::<Bytes>::new()).unwrap())
            .await
            .unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        let mut text = text_of(&body);
        for (name, value) in &parts.headers {
            text.push_str(&format!(
                "\n{name}: {}",
                String::from_utf8_lossy(value.as_bytes())
            ));
        }
        self.assert_no_secret(&format!("GET {path}"), &text);
        (parts.status, parts.headers, body)
    }

    /// A whole connect as `token`, consenting as Google account `user`; asserts success.
    async fn connect(&self, token: &str, service: &str, user: &str) -> Flow {
        let flow = self.start_flow(token, service).await;
        let redirect = self.authorize(&flow, user);
        let (status, headers, body) = self.browser(&redirect, None).await;
        assert_connected_page(status, &headers, &body, service);
        flow
    }

    /// Invokes the calendar tool.
    async fn calendar(&self, token: &str) -> (StatusCode, Value) {
        let (status, body) = self.h.invoke(token, "calendar", json!({"max": 3})).await;
        self.assert_no_secret("the calendar tool's response", &body.to_string());
        (status, body)
    }

    /// `GET /v1/connections` as `token`: asserts a 200; returns the entries by service.
    async fn connections(&self, token: &str) -> BTreeMap<String, Value> {
        let (status, _, body) = self.api("GET", "/v1/connections", Some(token)).await;
        assert_eq!(status, 200, "{body}");
        let list = body["connections"]
            .as_array()
            .unwrap_or_else(|| panic!("no connections list: {body}"));
        let mut out = BTreeMap::new();
        for c in list {
            let service = c["service"].as_str().unwrap().to_owned();
            assert!(out.insert(service, c.clone()).is_none(), "twice: {body}");
        }
        out
    }
}

/// The success page: 200, HTML, "Connected" and the service's name.
fn assert_connected_page(status: StatusCode, headers: &HeaderMap, body: &Value, service: &str) {
    assert_eq!(status, 200, "{body}");
    assert!(
        headers
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"text/html")),
        "{headers:?}"
    );
    let text = body
        .as_str()
        .unwrap_or_else(|| panic!("not a page: {body}"));
    assert!(text.contains("Connected"), "{text}");
    assert!(text.contains(service), "{text}");
}

/// The text of a response body, JSON or page.
fn text_of(body: &Value) -> String {
    match body {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A refused callback: `status`, and `bad_request` as the code when the body is JSON.
fn assert_refused(status: StatusCode, body: &Value, expected: u16) {
    assert_eq!(status.as_u16(), expected, "{body}");
    if body.is_object() && expected == 400 {
        assert_eq!(body["error"]["code"], "bad_request", "{body}");
    }
}

/// Asserts a JSON error body.
fn assert_error(status: StatusCode, body: &Value, expected: u16, code: &str) {
    assert_eq!(status.as_u16(), expected, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
}

// === tests ===

/// alice connects her Google account: the authorize URL carries exactly the parameters the
/// contract lists, the exchange proves the PKCE verifier with Basic client auth, behalf stores
/// `acme/alice/google` holding the app client and the new refresh token, and alice's next
/// calendar call carries the access token of that exchange (no refresh). bob, not connected,
/// is refused and nothing reaches the API with his name.
#[tokio::test(flavor = "multi_thread")]
async fn a_user_connects_and_her_next_tool_call_uses_the_new_grant() {
    let g = Google::start().await;
    let before = g.secret_ids();

    let flow = g.start_flow(&g.h.alice, "google_calendar").await;
    let p = &flow.params;
    assert_eq!(p["client_id"], APP_CLIENT_ID);
    assert_eq!(p["redirect_uri"], redirect_uri("google_calendar"));
    assert_eq!(p["scope"], CALENDAR_SCOPE);
    assert_eq!(p.get("access_type").map(String::as_str), Some("offline"));
    assert_eq!(p.get("prompt").map(String::as_str), Some("consent"));
    // Each flow has its own state and challenge.
    let other = g.start_flow(&g.h.alice, "google_calendar").await;
    assert_ne!(other.state(), flow.state());
    assert_ne!(other.params["code_challenge"], p["code_challenge"]);
    g.h.upstream.assert_untouched("starting a flow");

    let redirect = g.authorize(&flow, "alice@gmail.test");
    let (status, headers, body) = g.browser(&redirect, None).await;
    assert_connected_page(status, &headers, &body, "google_calendar");

    // One code exchange: exact redirect URI, a verifier for the challenge, Basic auth.
    let exchanges = g.requests_to("oauth2.googleapis.com", Some("/token"));
    assert_eq!(exchanges.len(), 1, "{exchanges:#?}");
    let f = form(&exchanges[0].body);
    assert_eq!(f["grant_type"], "authorization_code");
    assert_eq!(f["redirect_uri"], redirect_uri("google_calendar"));
    assert!(valid_verifier(&f["code_verifier"]), "{f:?}");
    assert_eq!(s256(&f["code_verifier"]), p["code_challenge"]);
    assert_eq!(
        ClientAuth::of(&exchanges[0]),
        Ok(ClientAuth::Basic(
            APP_CLIENT_ID.into(),
            APP_CLIENT_SECRET.into()
        ))
    );

    // What was stored, and only that.
    let (refresh, access) = {
        let w = g.world();
        let refresh = w.refresh.keys().next().unwrap().clone();
        let access = w.access.keys().next().unwrap().clone();
        (refresh, access)
    };
    let stored = g
        .stored("acme/alice/google")
        .expect("acme/alice/google is stored");
    assert_eq!(stored["client_id"], APP_CLIENT_ID, "{stored}");
    assert_eq!(stored["client_secret"], APP_CLIENT_SECRET, "{stored}");
    assert_eq!(stored["refresh_token"], refresh.as_str(), "{stored}");
    let mut expected = before.clone();
    expected.push("acme/alice/google".into());
    expected.sort();
    assert_eq!(g.secret_ids(), expected);

    // alice's calendar: the access token from the exchange, no refresh.
    let (status, out) = g.calendar(&g.h.alice).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["output"]["status"], 200, "{out}");
    assert_eq!(
        out["output"]["body"]["summary"], "alice@gmail.test",
        "{out}"
    );
    let api = g.calendar_requests();
    assert_eq!(api.len(), 1, "{api:#?}");
    assert_eq!(api[0].header("authorization"), [format!("Bearer {access}")]);
    let grants: Vec<String> = g
        .token_requests()
        .iter()
        .map(|f| f["grant_type"].clone())
        .collect();
    assert_eq!(
        grants,
        ["authorization_code"],
        "no refresh after connecting"
    );

    // bob has connected nothing: refused, and nothing reaches the API.
    let (status, out) = g.calendar(&g.h.bob).await;
    assert_error(status, &out, 403, "egress_denied");
    assert!(
        out["denials"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not stored")),
        "{out}"
    );
    assert_eq!(g.calendar_requests().len(), 1, "bob reached the API");
    assert!(g.stored("acme/bob/google").is_none());
    g.assert_audit_clean();
}

/// `GET /v1/connect/{service}` refuses: no or a bad identity token (401), an unknown service
/// (404), a service without `authorize_url` (400), a principal without any grant for the
/// service (403), a tenant without the app credential (403 naming it). Nothing reaches the
/// provider.
#[tokio::test(flavor = "multi_thread")]
async fn starting_a_flow_needs_identity_a_connectable_service_a_grant_and_the_app() {
    let globex = "[[grant]]\nid = \"carol-calendar\"\nwho = [\"user:carol\"]\n\
                  clients = [\"proxy\"]\nservice = \"google_calendar\"\n\
                  allow = [\"GET /calendar/v3/**\"]\n";
    let g = Google::start_with(REDIRECT_BASE, globex).await;
    let path = "/v1/connect/google_calendar";

    let (status, _, body) = g.api("GET", path, None).await;
    assert_error(status, &body, 401, "unauthenticated");
    let (status, _, body) = g.api("GET", path, Some("not-a-token")).await;
    assert_error(status, &body, 401, "unauthenticated");
    let (status, _, body) = g.api("GET", "/v1/connect/nope", Some(&g.h.alice)).await;
    assert_eq!(status, 404, "{body}");
    let (status, _, body) = g.api("GET", "/v1/connect/github", Some(&g.h.alice)).await;
    assert_error(status, &body, 400, "bad_request");
    // dave (support) has no grant for google_tasks (engineering only).
    let (status, _, body) = g
        .api("GET", "/v1/connect/google_tasks", Some(&g.h.dave))
        .await;
    assert_error(status, &body, 403, "egress_denied");
    // carol may use google_calendar, but globex has no `google_app`.
    let (status, _, body) = g.api("GET", path, Some(&g.h.carol)).await;
    assert_error(status, &body, 403, "egress_denied");
    assert!(body.to_string().contains("google_app"), "{body}");
    // The positive controls: dave may connect the calendar (granted to everyone in acme).
    g.start_flow(&g.h.dave, "google_calendar").await;
    g.start_flow(&g.h.alice, "google_tasks").await;
    g.h.upstream.assert_untouched("starting flows");
    g.assert_audit_clean();
}

/// A state works once: replayed after a success (with a fresh code, so it is the state that is
/// refused) → 400 and the stored grant is unchanged; a state never issued → 400; no state →
/// 400. None of them reaches the token endpoint.
#[tokio::test(flavor = "multi_thread")]
async fn a_replayed_forged_or_missing_state_is_refused_and_changes_nothing() {
    let g = Google::start().await;
    let flow = g
        .connect(&g.h.alice, "google_calendar", "alice@gmail.test")
        .await;
    let stored = g.stored("acme/alice/google").unwrap();
    assert_eq!(g.token_requests().len(), 1);

    // Replay: the same state with a fresh, valid code.
    let replay = g.authorize(&flow, "alice@gmail.test");
    let (status, _, body) = g.browser(&replay, None).await;
    assert_refused(status, &body, 400);
    // Forged: a state never issued, with a fresh valid code of another live flow.
    let live = g.start_flow(&g.h.alice, "google_calendar").await;
    let redirect = g.authorize(&live, "alice@gmail.test");
    let forged = redirect.replace(
        &format!("state={}", enc(live.state())),
        "state=Zm9yZ2VkLXN0YXRlLW5ldmVyLWlzc3VlZA",
    );
    assert_ne!(forged, redirect);
    let (status, _, body) = g.browser(&forged, None).await;
    assert_refused(status, &body, 400);
    // No state at all.
    let bare = redirect.split("&state=").next().unwrap().to_owned();
    let (status, _, body) = g.browser(&bare, None).await;
    assert_refused(status, &body, 400);

    assert_eq!(
        g.token_requests().len(),
        1,
        "a refused state reached the provider"
    );
    assert_eq!(g.stored("acme/alice/google"), Some(stored));
    assert!(g.stored("acme/bob/google").is_none());
    // The live flow's own callback still works: the refusals were about the state.
    let (status, headers, body) = g.browser(&redirect, None).await;
    assert_connected_page(status, &headers, &body, "google_calendar");
    g.assert_audit_clean();
}

/// A state belongs to the user who started the flow. bob following alice's redirect with his
/// own identity token → 403, and the state is spent (alice's retry is 400); no code exchange,
/// nothing stored for either. bob feeding alice's code into his own flow's callback → the
/// provider refuses it (PKCE: bob's verifier is not alice's) → 400 `invalid_grant`, nothing
/// stored. alice sending her own identity token with her callback is fine.
#[tokio::test(flavor = "multi_thread")]
async fn bob_cannot_complete_alices_flow() {
    let g = Google::start().await;

    // bob, logged in to behalf, follows alice's redirect.
    let alice_flow = g.start_flow(&g.h.alice, "google_calendar").await;
    let alice_redirect = g.authorize(&alice_flow, "alice@gmail.test");
    let (status, _, body) = g.browser(&alice_redirect, Some(&g.h.bob)).await;
    assert_eq!(status, 403, "{body}");
    let (status, _, body) = g.browser(&alice_redirect, None).await;
    assert_refused(status, &body, 400);
    assert!(g.token_requests().is_empty(), "{:?}", g.token_requests());
    g.assert_nothing_connected("after bob used alice's state");

    // bob's own flow, completed with a code alice's consent produced.
    let alice_flow = g.start_flow(&g.h.alice, "google_calendar").await;
    let alice_redirect = g.authorize(&alice_flow, "alice@gmail.test");
    let alice_code = alice_redirect
        .split("code=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_owned();
    let bob_flow = g.start_flow(&g.h.bob, "google_calendar").await;
    let bob_redirect = format!(
        "{}?code={alice_code}&state={}",
        redirect_uri("google_calendar"),
        enc(bob_flow.state())
    );
    let (status, _, body) = g.browser(&bob_redirect, Some(&g.h.bob)).await;
    assert_refused(status, &body, 400);
    let text = text_of(&body);
    assert!(text.contains("invalid_grant"), "{text}");
    assert!(text.contains("google_calendar"), "{text}");
    let tokens = g.token_requests();
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    assert_eq!(
        s256(&tokens[0]["code_verifier"]),
        bob_flow.params["code_challenge"]
    );
    g.assert_nothing_connected("after bob redeemed alice's code");

    // alice with her own identity token, on a fresh flow: connected, in her namespace.
    let flow = g.start_flow(&g.h.alice, "google_calendar").await;
    let redirect = g.authorize(&flow, "alice@gmail.test");
    let (status, headers, body) = g.browser(&redirect, Some(&g.h.alice)).await;
    assert_connected_page(status, &headers, &body, "google_calendar");
    assert!(g.stored("acme/alice/google").is_some());
    assert!(g.stored("acme/bob/google").is_none());
    g.assert_audit_clean();
}

/// A state belongs to the service it was issued for: google_calendar's state on
/// google_tasks's callback → 400, no exchange, nothing stored for either; the state is spent.
/// google_tasks's own flow then connects, with the app credentials in the form
/// (`client_auth = "body"`) and its own scope.
#[tokio::test(flavor = "multi_thread")]
async fn a_state_only_completes_the_service_it_was_issued_for() {
    let g = Google::start().await;
    let calendar = g.start_flow(&g.h.alice, "google_calendar").await;
    let tasks = g.start_flow(&g.h.alice, "google_tasks").await;
    assert_eq!(tasks.params["redirect_uri"], redirect_uri("google_tasks"));
    assert_eq!(tasks.params["scope"], TASKS_SCOPE);

    let redirect = g.authorize(&calendar, "alice@gmail.test");
    let crossed = redirect.replace(
        "/v1/connect/google_calendar/callback",
        "/v1/connect/google_tasks/callback",
    );
    assert_ne!(crossed, redirect);
    let (status, _, body) = g.browser(&crossed, None).await;
    assert_refused(status, &body, 400);
    assert!(g.token_requests().is_empty(), "{:?}", g.token_requests());
    g.assert_nothing_connected("after a cross-service callback");
    // Spent on first use, even though it failed.
    let (status, _, body) = g.browser(&redirect, None).await;
    assert_refused(status, &body, 400);
    assert!(g.token_requests().is_empty(), "{:?}", g.token_requests());
    g.assert_nothing_connected("after the spent state's replay");

    // google_tasks's own flow: the form carries the app credentials, no Basic header.
    let redirect = g.authorize(&tasks, "alice@gmail.test");
    let (status, headers, body) = g.browser(&redirect, None).await;
    assert_connected_page(status, &headers, &body, "google_tasks");
    let exchanges = g.requests_to("oauth2.googleapis.com", Some("/token"));
    assert_eq!(exchanges.len(), 1);
    assert_eq!(
        ClientAuth::of(&exchanges[0]),
        Ok(ClientAuth::Body(
            APP_CLIENT_ID.into(),
            APP_CLIENT_SECRET.into()
        ))
    );
    assert_eq!(
        form(&exchanges[0].body)["redirect_uri"],
        redirect_uri("google_tasks")
    );
    let stored = g.stored("acme/alice/google_tasks").unwrap();
    assert!(
        stored["refresh_token"]
            .as_str()
            .is_some_and(|t| t.starts_with("1//canary-rt-alice@gmail.test")),
        "{stored}"
    );
    assert!(g.stored("acme/alice/google").is_none());
    g.assert_audit_clean();
}

/// behalf configured with a `redirect_base` one character off what the provider registered:
/// the provider refuses the code at the token endpoint → 400 naming the service and
/// `invalid_grant` (not the provider's description); nothing is stored.
#[tokio::test(flavor = "multi_thread")]
async fn a_redirect_uri_the_provider_did_not_register_is_refused() {
    let base = format!("{REDIRECT_BASE}x");
    let g = Google::start_with(&base, "").await;
    let flow = g.start_flow(&g.h.alice, "google_calendar").await;
    let used = format!("{base}/v1/connect/google_calendar/callback");
    assert_eq!(flow.params["redirect_uri"], used);

    let redirect = g.authorize(&flow, "alice@gmail.test");
    let (status, _, body) = g.browser(&redirect, None).await;
    assert_refused(status, &body, 400);
    let text = text_of(&body);
    assert!(text.contains("invalid_grant"), "{text}");
    assert!(text.contains("google_calendar"), "{text}");
    let tokens = g.token_requests();
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    assert_eq!(
        tokens[0]["redirect_uri"], used,
        "the exact URI of the authorize step"
    );
    g.assert_nothing_connected("after a refused code");
    let (status, out) = g.calendar(&g.h.alice).await;
    assert_error(status, &out, 403, "egress_denied");
    assert!(g.calendar_requests().is_empty());
    g.assert_audit_clean();
}

/// PKCE binds a code to the flow that asked for it: flow 1's callback completed with flow 2's
/// code sends flow 1's verifier, which the provider refuses → 400 `invalid_grant`, nothing
/// stored. Flow 2 then completes with a fresh code of its own (its verifier matches).
#[tokio::test(flavor = "multi_thread")]
async fn a_code_is_only_redeemed_with_its_own_flows_verifier() {
    let g = Google::start().await;
    let one = g.start_flow(&g.h.alice, "google_calendar").await;
    let two = g.start_flow(&g.h.alice, "google_calendar").await;
    let _ = g.authorize(&one, "alice@gmail.test");
    let two_redirect = g.authorize(&two, "alice@gmail.test");

    let swapped = two_redirect.replace(
        &format!("state={}", enc(two.state())),
        &format!("state={}", enc(one.state())),
    );
    assert_ne!(swapped, two_redirect);
    let (status, _, body) = g.browser(&swapped, None).await;
    assert_refused(status, &body, 400);
    let text = text_of(&body);
    assert!(text.contains("invalid_grant"), "{text}");
    let tokens = g.token_requests();
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    assert_eq!(
        s256(&tokens[0]["code_verifier"]),
        one.params["code_challenge"]
    );
    assert_ne!(
        s256(&tokens[0]["code_verifier"]),
        two.params["code_challenge"]
    );
    g.assert_nothing_connected("after a PKCE mismatch");

    // Flow 2 is intact; its first code is spent at the provider, so consent again.
    let redirect = g.authorize(&two, "alice@gmail.test");
    let (status, headers, body) = g.browser(&redirect, None).await;
    assert_connected_page(status, &headers, &body, "google_calendar");
    let tokens = g.token_requests();
    assert_eq!(tokens.len(), 2, "{tokens:?}");
    assert_eq!(
        s256(&tokens[1]["code_verifier"]),
        two.params["code_challenge"]
    );
    assert!(g.stored("acme/alice/google").is_some());
    g.assert_audit_clean();
}

/// `GET /v1/connections` lists each connectable service the principal may use (not github,
/// not a service without a grant), before and after connecting, with no value in it.
#[tokio::test(flavor = "multi_thread")]
async fn connections_list_what_each_user_may_connect_without_values() {
    let g = Google::start().await;
    let (status, _, body) = g.api("GET", "/v1/connections", None).await;
    assert_error(status, &body, 401, "unauthenticated");

    // `credential` names the user credential: `google` or `user:google`.
    let fresh = |service: &str, credential: &str| {
        json!({"service": service, "credential": credential, "connected": false,
               "updated": null, "access_token_expires_in": null})
    };
    let normalise = |mut m: BTreeMap<String, Value>| {
        for c in m.values_mut() {
            if let Some(name) = c["credential"]
                .as_str()
                .and_then(|s| s.strip_prefix("user:"))
            {
                c["credential"] = name.into();
            }
        }
        m
    };
    let alice = normalise(g.connections(&g.h.alice).await);
    assert_eq!(
        alice.keys().collect::<Vec<_>>(),
        ["google_calendar", "google_tasks"]
    );
    assert_eq!(alice["google_calendar"], fresh("google_calendar", "google"));
    assert_eq!(alice["google_tasks"], fresh("google_tasks", "google_tasks"));
    let dave = g.connections(&g.h.dave).await;
    assert_eq!(dave.keys().collect::<Vec<_>>(), ["google_calendar"]);
    assert!(g.connections(&g.h.carol).await.is_empty());

    g.connect(&g.h.alice, "google_calendar", "alice@gmail.test")
        .await;
    let alice = normalise(g.connections(&g.h.alice).await);
    let c = &alice["google_calendar"];
    assert_eq!(c["connected"], true, "{c}");
    assert_eq!(c["credential"], "google", "{c}");
    let updated = c["updated"].as_str().unwrap_or_else(|| panic!("{c}"));
    let updated =
        time::OffsetDateTime::parse(updated, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|e| panic!("updated is not RFC 3339 ({e}): {c}"));
    let age = time::OffsetDateTime::now_utc() - updated;
    assert!(age.whole_seconds().abs() < 60, "{c}");
    let expires = c["access_token_expires_in"]
        .as_u64()
        .unwrap_or_else(|| panic!("{c}"));
    assert!((3000..=3599).contains(&expires), "{c}");
    assert_eq!(alice["google_tasks"], fresh("google_tasks", "google_tasks"));
    // bob's view is his own.
    let bob = normalise(g.connections(&g.h.bob).await);
    assert_eq!(bob["google_calendar"], fresh("google_calendar", "google"));
    g.assert_audit_clean();
}

/// Disconnecting revokes the refresh token at the provider (client auth, RFC 7009 form),
/// deletes the credential and drops the cached access token: alice's next calendar call is
/// refused and nothing reaches the API. bob cannot disconnect alice; a second DELETE is 404.
/// The dropped access token is never sent again, even when the very same credential value is
/// stored back (the only case where only `forget` keeps it out: the token cache also drops
/// tokens of a changed value), nor after an operator stores a new grant. A service without
/// `revoke_url` is deleted with `revoked: false`.
#[tokio::test(flavor = "multi_thread")]
async fn disconnect_revokes_deletes_and_refuses_the_next_call() {
    let g = Google::start().await;
    g.connect(&g.h.alice, "google_calendar", "alice@gmail.test")
        .await;
    let refresh = g.stored("acme/alice/google").unwrap()["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let stored_text = {
        let id = SecretId::parse("acme/alice/google").unwrap();
        let secret = g.store().get(&id.namespace, &id.name).unwrap().unwrap();
        String::from_utf8(secret.expose().to_vec()).unwrap()
    };
    let (status, out) = g.calendar(&g.h.alice).await;
    assert_eq!(
        (status.as_u16(), &out["output"]["status"]),
        (200, &json!(200)),
        "{out}"
    );
    let path = "/v1/connections/google_calendar";

    // bob is not connected: 404, and alice's connection is untouched.
    let (status, _, body) = g.api("DELETE", path, Some(&g.h.bob)).await;
    assert_eq!(status, 404, "{body}");
    let (status, _, body) = g.api("DELETE", path, None).await;
    assert_error(status, &body, 401, "unauthenticated");
    assert!(g.revocations().is_empty());
    assert!(g.stored("acme/alice/google").is_some());

    let (status, _, body) = g.api("DELETE", path, Some(&g.h.alice)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"service": "google_calendar", "deleted": true, "revoked": true})
    );
    let revocations = g.revocations();
    assert_eq!(revocations.len(), 1, "{revocations:#?}");
    assert_eq!(revocations[0].method, "POST");
    let f = form(&revocations[0].body);
    assert_eq!(f.get("token"), Some(&refresh), "{f:?}");
    assert_eq!(
        f.get("token_type_hint").map(String::as_str),
        Some("refresh_token")
    );
    assert_eq!(
        ClientAuth::of(&revocations[0]),
        Ok(ClientAuth::Basic(
            APP_CLIENT_ID.into(),
            APP_CLIENT_SECRET.into()
        ))
    );
    assert!(g.stored("acme/alice/google").is_none());

    // The cached access token is gone too: refused before the API.
    let api_before = g.calendar_requests().len();
    let (status, out) = g.calendar(&g.h.alice).await;
    assert_error(status, &out, 403, "egress_denied");
    assert_eq!(
        g.calendar_requests().len(),
        api_before,
        "the API was reached"
    );
    let (status, _, body) = g.api("DELETE", path, Some(&g.h.alice)).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(g.revocations().len(), 1);
    assert_eq!(
        g.connections(&g.h.alice).await["google_calendar"]["connected"],
        false
    );

    // The exact value comes back (say, from a backup): the access token cached before the
    // disconnect is not used again (the refresh token is revoked, so nothing works).
    let old_access = g.calendar_requests()[0].header("authorization");
    g.store()
        .set(
            &SecretId::parse("acme/alice/google").unwrap(),
            &Secret::from_text(&stored_text),
        )
        .unwrap();
    let _ = g.calendar(&g.h.alice).await;
    assert!(
        g.calendar_requests()[api_before..]
            .iter()
            .all(|r| r.header("authorization") != old_access),
        "the dropped access token was sent"
    );

    // An operator stores a new grant for alice: her next call refreshes with it, and the
    // old access token is never sent.
    let api_before = g.calendar_requests().len();
    let operator_rt = {
        let mut w = g.world();
        let rt = w.mint("1//canary-rt-operator-set");
        w.refresh.insert(rt.clone(), "alice@gmail.test".into());
        rt
    };
    g.seed(
        "acme/alice/google",
        json!({"client_id": APP_CLIENT_ID, "client_secret": APP_CLIENT_SECRET,
               "refresh_token": operator_rt}),
    );
    let (status, out) = g.calendar(&g.h.alice).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["output"]["status"], 200, "{out}");
    let after: Vec<Vec<String>> = g.calendar_requests()[api_before..]
        .iter()
        .map(|r| r.header("authorization"))
        .collect();
    assert_eq!(after.len(), 1, "{after:?}");
    assert_ne!(after[0], old_access, "the dropped access token was sent");
    assert_eq!(
        g.token_requests().last().map(|f| f["grant_type"].clone()),
        Some("refresh_token".to_owned())
    );

    // No revoke_url: deleted, not revoked.
    g.connect(&g.h.alice, "google_tasks", "alice@gmail.test")
        .await;
    let (status, _, body) = g
        .api("DELETE", "/v1/connections/google_tasks", Some(&g.h.alice))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"service": "google_tasks", "deleted": true, "revoked": null})
    );
    assert!(g.stored("acme/alice/google_tasks").is_none());
    assert_eq!(g.revocations().len(), 1);
    g.assert_audit_clean();
}

/// The user declines at the provider (`error=access_denied`): 400 "not connected", no code
/// exchange, nothing stored, and the state is spent.
#[tokio::test(flavor = "multi_thread")]
async fn a_declined_consent_connects_nothing() {
    let g = Google::start().await;
    let flow = g.start_flow(&g.h.alice, "google_calendar").await;
    let (status, _, body) = g.browser(&g.decline(&flow), None).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        text_of(&body).to_lowercase().contains("not connected"),
        "{body}"
    );
    assert!(g.token_requests().is_empty());
    g.assert_nothing_connected("after access_denied");

    // The same state cannot be used afterwards.
    let redirect = g.authorize(&flow, "alice@gmail.test");
    let (status, _, body) = g.browser(&redirect, None).await;
    assert_refused(status, &body, 400);
    assert!(g.token_requests().is_empty());
    g.assert_nothing_connected("after a retry on a spent state");
    g.assert_audit_clean();
}

/// The token endpoint failing (503) is an upstream fault: 502, nothing stored; the code's
/// owner can start again once it recovers.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_token_endpoint_is_a_502_and_stores_nothing() {
    let g = Google::start().await;
    g.world().fault = Some(503);
    let flow = g.start_flow(&g.h.alice, "google_calendar").await;
    let redirect = g.authorize(&flow, "alice@gmail.test");
    let (status, _, body) = g.browser(&redirect, None).await;
    assert_eq!(status, 502, "{body}");
    assert!(text_of(&body).contains("google_calendar"), "{body}");
    assert_eq!(g.token_requests().len(), 1);
    g.assert_nothing_connected("after a 503 from the token endpoint");

    g.world().fault = None;
    g.connect(&g.h.alice, "google_calendar", "alice@gmail.test")
        .await;
    assert!(g.stored("acme/alice/google").is_some());
    g.assert_audit_clean();
}

/// A state lives ten minutes: a flow completed 9 min 59 s after it started connects; one
/// completed after 10 min 1 s is refused (400) before any code exchange, nothing stored.
/// (Tokio's clock is moved forward; the API and the tests share it.)
#[tokio::test]
async fn a_state_expires_after_ten_minutes() {
    let g = Google::start().await;
    let early = g.start_flow(&g.h.alice, "google_calendar").await;
    let late = g.start_flow(&g.h.bob, "google_calendar").await;
    let early_redirect = g.authorize(&early, "alice@gmail.test");
    let late_redirect = g.authorize(&late, "bob@gmail.test");

    let jump = |secs: u64| async move {
        tokio::time::pause();
        tokio::time::advance(std::time::Duration::from_secs(secs)).await;
        tokio::time::resume();
    };
    jump(599).await;
    let (status, headers, body) = g.browser(&early_redirect, None).await;
    assert_connected_page(status, &headers, &body, "google_calendar");
    assert_eq!(g.token_requests().len(), 1);

    jump(2).await;
    let (status, _, body) = g.browser(&late_redirect, None).await;
    assert_refused(status, &body, 400);
    assert_eq!(
        g.token_requests().len(),
        1,
        "an expired state reached the provider"
    );
    assert!(g.stored("acme/bob/google").is_none());
    assert!(g.stored("acme/alice/google").is_some());
    g.assert_audit_clean();
}
