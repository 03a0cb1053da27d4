//! Isolation under load (issue 12): three tenants of ten users each (the same user ids in
//! every tenant), services with user-scoped and tenant-scoped credentials, and a seeded random
//! mix of forward-proxy requests (most of them sharing keep-alive connections, some
//! connections carrying several callers), tool invocations through the sidecar API, and
//! requests that must be denied (no grant, another tenant's service or repository, a route
//! not allowed, an unknown origin, no tool access), all at once.
//!
//! Every request carries a marker `mk<index>-<tenant>-<user>` in its path, query or body
//! (never in a credential-bearing place), so each request a mock API recorded maps back to
//! the caller that sent it. The test asserts that:
//! - every request that reached a mock carries exactly its caller's credential for that
//!   service and no other credential value (forged `Authorization`, inject header or
//!   `appid` values naming someone else's credential included) and no identity token;
//! - no denied request reached a mock, and every allowed one reached it exactly once;
//! - every proxy request has exactly one audit record (matched by its marker), every tool
//!   invocation exactly its `INVOKE` record plus one record per outbound request (matched by
//!   the invocation id), with the right tenant, user, client, decision and credential name;
//!   no audit record is left over; the chain verifies; no credential value or token is in
//!   the log and no response body carries a credential value.
//!
//! Running it:
//! - `cargo test --test it stress`: 3,000 requests (under 10 s in a debug build).
//! - `BEHALF_STRESS_REQUESTS=100000 cargo test --release --test it stress -- --nocapture`:
//!   the long run (about 20 s of test time in release on two cores, plus the build).
//! - `BEHALF_STRESS_SEED=<seed>` replays a run's mix (the seed is printed at the start and
//!   on failure); otherwise the seed comes from the clock.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use behalf::audit::{self, Record};
use behalf::identity::dev;
use behalf::policy::Origin;
use behalf::principal::{GroupId, TenantId, UserId};
use behalf::secrets::{self, Secret, SecretId};
use behalf::serve::{Options, Sidecar};
use behalf::state::StateDir;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::support::tools::fixture_tools;
use crate::support::{MockUpstream, ProxyConn, Recorded, Resp, TestCa, TestResolver, request};

// === the world ===

const TENANTS: [&str; 3] = ["acme", "globex", "initech"];
const USERS: usize = 10;
/// The last `GUESTS` users of each tenant are in group `guest`: no grant, no tool access
/// (but they have credentials, so only the policy stands between them and a mock).
const GUESTS: usize = 2;
/// Requests in the default run.
const DEFAULT_REQUESTS: usize = 3_000;
/// Keep-alive connections to the forward proxy (fewer for tiny runs).
const PROXY_CONNECTIONS: usize = 48;
/// Concurrent tool invokers (each on a pooled keep-alive client).
const TOOL_WORKERS: usize = 6;

fn user_name(u: usize) -> String {
    format!("u{u:02}")
}

fn is_guest(u: usize) -> bool {
    u >= USERS - GUESTS
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Svc {
    Github,
    Jira,
    Slack,
    Weather,
    Intranet,
    Private,
}

const SVCS: [Svc; 6] = [
    Svc::Github,
    Svc::Jira,
    Svc::Slack,
    Svc::Weather,
    Svc::Intranet,
    Svc::Private,
];

impl Svc {
    fn short(self) -> &'static str {
        match self {
            Svc::Github => "github",
            Svc::Jira => "jira",
            Svc::Slack => "slack",
            Svc::Weather => "weather",
            Svc::Intranet => "intranet",
            Svc::Private => "private",
        }
    }

    fn secret_name(self) -> &'static str {
        match self {
            Svc::Github => "github_token",
            Svc::Jira => "jira_token",
            Svc::Slack => "slack_bot_token",
            Svc::Weather => "weather_api_key",
            Svc::Intranet => "intranet_key",
            Svc::Private => "private_key",
        }
    }

    fn user_scoped(self) -> bool {
        matches!(self, Svc::Github | Svc::Jira)
    }

    /// The credential as the audit log names it.
    fn audit_name(self) -> String {
        let scope = if self.user_scoped() { "user" } else { "tenant" };
        format!("{scope}:{}", self.secret_name())
    }

    /// The host the mock must see (the private service is per tenant).
    fn host(self, tenant: &str) -> String {
        match self {
            Svc::Github => "api.github.com".into(),
            Svc::Jira => "jira.test".into(),
            Svc::Slack => "slack.com".into(),
            Svc::Weather => "api.weather.example".into(),
            Svc::Intranet => "intranet.test".into(),
            Svc::Private => format!("{tenant}.private.test"),
        }
    }
}

/// The seeded value of (tenant, user)'s credential for `svc`: `cred-<tenant>-<user>-<svc>`
/// for user scope, `cred-<tenant>-shared-<svc>` for tenant scope.
fn cred_value(svc: Svc, t: usize, u: usize) -> String {
    if svc.user_scoped() {
        format!("cred-{}-{}-{}", TENANTS[t], user_name(u), svc.short())
    } else {
        format!("cred-{}-shared-{}", TENANTS[t], svc.short())
    }
}

/// Every `cred-...` value in `text`.
fn creds_in(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("cred-") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

/// A service file per service; one private service per tenant.
fn services() -> Vec<(String, String)> {
    let mut out = vec![
        (
            "github".to_owned(),
            r#"[service]
name = "github"
origins = ["https://api.github.com"]
credential = { name = "github_token", scope = "user" }
inject = { header = "Authorization", template = "Bearer {credential}" }
"#
            .to_owned(),
        ),
        (
            "jira".to_owned(),
            r#"[service]
name = "jira"
origins = ["https://jira.test"]
credential = { name = "jira_token", scope = "user" }
inject = { basic = { username = "x-token" } }
"#
            .to_owned(),
        ),
        (
            "slack".to_owned(),
            r#"[service]
name = "slack"
origins = ["https://slack.com"]
credential = { name = "slack_bot_token", scope = "tenant" }
inject = { header = "Authorization", template = "Bearer {credential}" }
"#
            .to_owned(),
        ),
        (
            "weather".to_owned(),
            r#"[service]
name = "weather"
origins = ["https://api.weather.example"]
credential = { name = "weather_api_key", scope = "tenant" }
inject = { query = "appid" }
"#
            .to_owned(),
        ),
        (
            "intranet".to_owned(),
            r#"[service]
name = "intranet"
origins = ["http://intranet.test"]
credential = { name = "intranet_key", scope = "tenant" }
inject = { header = "X-Api-Key", template = "{credential}" }
allow_plaintext = true
"#
            .to_owned(),
        ),
    ];
    for t in TENANTS {
        out.push((
            format!("private_{t}"),
            format!(
                "[service]\nname = \"private_{t}\"\norigins = [\"https://{t}.private.test\"]\n\
                 credential = {{ name = \"private_key\", scope = \"tenant\" }}\n\
                 inject = {{ header = \"Authorization\", template = \"Bearer {{credential}}\" }}\n"
            ),
        ));
    }
    out
}

/// A tenant's file: group `eng` may use every service through the proxy (its own
/// repositories and private service only) and three tools; group `guest` gets nothing.
fn tenant_file(t: &str) -> String {
    format!(
        r#"[tenant]
name = "{t}"

[[tool_access]]
who = ["group:eng"]
tools = ["github_issues", "slack_post", "weather"]

[[grant]]
id = "{t}-github"
who = ["group:eng"]
clients = ["proxy", "tool:github_issues"]
service = "github"
allow = ["GET /repos/{t}/**"]

[[grant]]
id = "{t}-jira"
who = ["group:eng"]
clients = ["proxy"]
service = "jira"
allow = ["GET /rest/**"]

[[grant]]
id = "{t}-slack"
who = ["group:eng"]
clients = ["proxy", "tool:slack_post"]
service = "slack"
allow = ["POST /api/chat.postMessage", "GET /api/**"]

[[grant]]
id = "{t}-weather"
who = ["group:eng"]
clients = ["proxy", "tool:weather"]
service = "weather"
allow = ["GET /data/**"]

[[grant]]
id = "{t}-intranet"
who = ["group:eng"]
clients = ["proxy"]
service = "intranet"
allow = ["POST /notes/**"]

[[grant]]
id = "{t}-private"
who = ["group:eng"]
clients = ["proxy"]
service = "private_{t}"
allow = ["GET /v1/**"]
"#
    )
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// The sidecar (API and forward proxy) over this file's policies, with its mocks.
struct World {
    _tmp: tempfile::TempDir,
    state: StateDir,
    sidecar: Sidecar,
    tls: MockUpstream,
    plain: MockUpstream,
    proxy_addr: SocketAddr,
    api_addr: SocketAddr,
    /// `tokens[tenant][user]`.
    tokens: Vec<Vec<String>>,
    _shutdown: Vec<oneshot::Sender<()>>,
}

impl World {
    async fn start() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().to_owned();
        let ca = TestCa::new(&base.join("test-ca.pem"));
        let mut hosts: Vec<String> = ["api.github.com", "jira.test", "slack.com"]
            .iter()
            .map(|h| h.to_string())
            .collect();
        hosts.push("api.weather.example".into());
        hosts.extend(TENANTS.iter().map(|t| format!("{t}.private.test")));
        let host_refs: Vec<&str> = hosts.iter().map(String::as_str).collect();
        let tls = MockUpstream::start(Some(ca.server_config(&host_refs))).await;
        let plain = MockUpstream::start(None).await;

        let policies = base.join("policies");
        write(
            &policies.join("behalf.toml"),
            &format!(
                "dev = true\nstate_dir = \"state\"\ntools_dir = {:?}\n\n[secrets]\n\
                 backend = \"file\"\n\n[tls]\nupstream_roots = [{:?}]\n\n[limits]\n\
                 upstream_timeout = \"10s\"\n",
                fixture_tools().display().to_string(),
                ca.pem_path.display().to_string()
            ),
        );
        for (name, text) in services() {
            write(&policies.join(format!("services/{name}.toml")), &text);
        }
        for t in TENANTS {
            write(&policies.join(format!("tenants/{t}.toml")), &tenant_file(t));
        }

        let state_path = base.join("state");
        let state = StateDir::open(&state_path).unwrap();
        {
            let policy =
                behalf::policy::PolicySet::load(&policies).unwrap_or_else(|e| panic!("{e}"));
            let store = secrets::open_store(policy.settings(), &state).unwrap();
            for (t, tenant) in TENANTS.iter().enumerate() {
                for svc in SVCS {
                    if svc.user_scoped() {
                        for u in 0..USERS {
                            let id = format!("{tenant}/{}/{}", user_name(u), svc.secret_name());
                            store
                                .set(
                                    &SecretId::parse(&id).unwrap(),
                                    &Secret::from_text(&cred_value(svc, t, u)),
                                )
                                .unwrap();
                        }
                    } else {
                        let id = format!("{tenant}/{}", svc.secret_name());
                        store
                            .set(
                                &SecretId::parse(&id).unwrap(),
                                &Secret::from_text(&cred_value(svc, t, 0)),
                            )
                            .unwrap();
                    }
                }
            }
        }
        // The compiled-component cache the tool harness shares (see support/tools.rs).
        let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("behalf-component-cache");
        std::fs::create_dir_all(&cache).unwrap();
        std::os::unix::fs::symlink(&cache, state_path.join("cache")).unwrap();

        let tokens: Vec<Vec<String>> = TENANTS
            .iter()
            .map(|tenant| {
                (0..USERS)
                    .map(|u| {
                        let group = if is_guest(u) { "guest" } else { "eng" };
                        dev::mint(
                            true,
                            &state,
                            &TenantId::parse(tenant).unwrap(),
                            &UserId::parse(&user_name(u)).unwrap(),
                            &[GroupId::parse(group).unwrap()],
                            Duration::from_secs(3600),
                        )
                        .unwrap()
                    })
                    .collect()
            })
            .collect();

        let mut connect_to: Vec<(Origin, SocketAddr)> = hosts
            .iter()
            .map(|h| (Origin::parse(&format!("https://{h}")).unwrap(), tls.addr))
            .collect();
        connect_to.push((Origin::parse("http://intranet.test").unwrap(), plain.addr));
        let options = Options {
            policies,
            state: Some(state_path),
            connect_to,
            shadow: None,
        };
        let sidecar = Sidecar::open_with_resolver(&options, Arc::new(TestResolver::default()))
            .unwrap_or_else(|e| panic!("{e}"));

        let mut shutdown = Vec::new();
        let api_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api_addr = api_listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        shutdown.push(tx);
        tokio::spawn(sidecar.api().serve(api_listener, 1024, async move {
            let _ = rx.await;
        }));
        let proxy_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_addr = proxy_listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        shutdown.push(tx);
        tokio::spawn(sidecar.proxy().serve(proxy_listener, 1024, async move {
            let _ = rx.await;
        }));

        World {
            _tmp: tmp,
            state,
            sidecar,
            tls,
            plain,
            proxy_addr,
            api_addr,
            tokens,
            _shutdown: shutdown,
        }
    }

    /// Every audit record but `start` ones, from every file, after a sync and a verify.
    fn audit_records(&self) -> (Vec<Record>, String) {
        let log = self.sidecar.egress.audit();
        log.sync().unwrap();
        let key = audit::read_key(&self.state).unwrap();
        audit::verify(log.dir(), &key).unwrap_or_else(|e| panic!("audit verify: {e}"));
        let mut text = String::new();
        for entry in std::fs::read_dir(log.dir()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "jsonl") {
                text.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
        let records = text
            .lines()
            .map(|l| serde_json::from_str::<Record>(l).unwrap())
            .filter(|r| r.decision != "start")
            .collect();
        (records, text)
    }
}

// === the mix ===

/// SplitMix64: tiny, seedable, good enough to shuffle a workload.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn percent(&mut self, p: usize) -> bool {
        self.below(100) < p
    }
}

/// What must happen to a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// It reaches the mock for `Svc` with the caller's credential.
    Allow(Svc),
    /// The proxy refuses it (403 `egress_denied`); nothing reaches a mock.
    Deny,
    /// The tool's request is refused (403 `egress_denied` for the invocation).
    ToolEgressDenied,
    /// The caller may not run the tool (403 `tool_not_allowed`).
    ToolNotAllowed,
}

#[derive(Clone, Debug)]
enum Front {
    /// Through the forward proxy on keep-alive connection `conn`.
    Proxy {
        conn: usize,
        method: &'static str,
        url: String,
        body: String,
        headers: Vec<(&'static str, String)>,
    },
    /// `POST /v1/tools/{tool}/invoke` with `input`.
    Tool { tool: &'static str, input: Value },
}

#[derive(Clone, Debug)]
struct Op {
    idx: usize,
    tenant: usize,
    user: usize,
    marker: String,
    front: Front,
    expect: Expect,
}

impl Op {
    fn who(&self) -> String {
        format!("{}/{}", TENANTS[self.tenant], user_name(self.user))
    }
}

fn marker(idx: usize, t: usize, u: usize) -> String {
    format!("mk{idx:06}-{}-{}", TENANTS[t], user_name(u))
}

/// The op index of the first well-formed marker in `text`, checked against the ops.
fn find_marker(text: &str, ops: &[Op]) -> Option<usize> {
    let mut rest = text;
    while let Some(i) = rest.find("mk") {
        let tail = &rest[i + 2..];
        if tail.len() >= 6 && tail.as_bytes()[..6].iter().all(u8::is_ascii_digit) {
            let idx: usize = tail[..6].parse().unwrap();
            if ops
                .get(idx)
                .is_some_and(|op| tail.starts_with(&op.marker[2..]))
            {
                return Some(idx);
            }
        }
        rest = tail;
    }
    None
}

/// A proxy request for caller (t, u); returns (method, url, body, headers, expectation).
fn proxy_request(
    rng: &mut Rng,
    mk: &str,
    t: usize,
    u: usize,
) -> (
    &'static str,
    String,
    String,
    Vec<(&'static str, String)>,
    Expect,
) {
    let tenant = TENANTS[t];
    let other = TENANTS[(t + 1 + rng.below(TENANTS.len() - 1)) % TENANTS.len()];
    let roll = rng.below(100);
    let mut headers = Vec::new();
    if roll < 65 {
        // A request a member of `eng` may make; a guest is denied (no grant).
        let svc = SVCS[rng.below(SVCS.len())];
        let (method, mut url, body) = match svc {
            Svc::Github => (
                "GET",
                format!("https://api.github.com/repos/{tenant}/{mk}/issues"),
                String::new(),
            ),
            Svc::Jira => (
                "GET",
                format!("https://jira.test/rest/api/2/{mk}"),
                String::new(),
            ),
            Svc::Slack => ("GET", format!("https://slack.com/api/{mk}"), String::new()),
            Svc::Weather => (
                "GET",
                format!("https://api.weather.example/data/{mk}?q=paris"),
                String::new(),
            ),
            Svc::Intranet => (
                "POST",
                format!("http://intranet.test/notes/{mk}"),
                format!("a note from {mk}"),
            ),
            Svc::Private => (
                "GET",
                format!("https://{tenant}.private.test/v1/{mk}"),
                String::new(),
            ),
        };
        if rng.percent(20) {
            // Forge someone else's credential where this service injects, and in
            // `Authorization`: behalf must drop or replace it.
            let (ft, fu) = loop {
                let ft = rng.below(TENANTS.len());
                let fu = rng.below(USERS);
                if cred_value(svc, ft, fu) != cred_value(svc, t, u) {
                    break (ft, fu);
                }
            };
            let forged = cred_value(svc, ft, fu);
            headers.push(("authorization", format!("Bearer {forged}")));
            match svc {
                Svc::Intranet => headers.push(("x-api-key", forged)),
                Svc::Weather => url.push_str(&format!("&appid={forged}")),
                _ => {}
            }
        }
        let expect = if is_guest(u) {
            Expect::Deny
        } else {
            Expect::Allow(svc)
        };
        (method, url, body, headers, expect)
    } else if roll < 80 {
        // Another tenant's repository (route not granted) or private service (no grant).
        let url = if rng.percent(50) {
            format!("https://api.github.com/repos/{other}/{mk}/issues")
        } else {
            format!("https://{other}.private.test/v1/{mk}")
        };
        ("GET", url, String::new(), headers, Expect::Deny)
    } else if roll < 95 {
        // A route the grant does not allow.
        let (method, url) = match rng.below(4) {
            0 => (
                "DELETE",
                format!("https://api.github.com/repos/{tenant}/{mk}"),
            ),
            1 => ("POST", format!("https://slack.com/api/{mk}")),
            2 => ("GET", format!("https://jira.test/admin/{mk}")),
            _ => ("GET", format!("http://intranet.test/notes/{mk}")),
        };
        (method, url, String::new(), headers, Expect::Deny)
    } else {
        // No service at all.
        (
            "GET",
            format!("https://unknown.test/{mk}"),
            String::new(),
            headers,
            Expect::Deny,
        )
    }
}

/// A tool invocation for caller (t, u).
fn tool_request(rng: &mut Rng, mk: &str, t: usize, u: usize) -> (&'static str, Value, Expect) {
    let tenant = TENANTS[t];
    let other = TENANTS[(t + 1 + rng.below(TENANTS.len() - 1)) % TENANTS.len()];
    let roll = rng.below(100);
    let (tool, input, expect) = if roll < 35 {
        (
            "github_issues",
            json!({"repo": format!("{tenant}/{mk}")}),
            Expect::Allow(Svc::Github),
        )
    } else if roll < 60 {
        (
            "slack_post",
            json!({"channel": "#stress", "text": format!("hello from {mk}")}),
            Expect::Allow(Svc::Slack),
        )
    } else if roll < 85 {
        ("weather", json!({"q": mk}), Expect::Allow(Svc::Weather))
    } else {
        (
            "github_issues",
            json!({"repo": format!("{other}/{mk}")}),
            Expect::ToolEgressDenied,
        )
    };
    let expect = if is_guest(u) {
        Expect::ToolNotAllowed
    } else {
        expect
    };
    (tool, input, expect)
}

/// The whole workload: about 10% tool invocations, the rest proxy requests spread over
/// `connections` keep-alive connections, three in four of which carry one caller only.
fn plan(seed: u64, total: usize, connections: usize) -> Vec<Op> {
    let mut rng = Rng(seed);
    let homes: Vec<(usize, Option<(usize, usize)>)> = (0..connections)
        .map(|c| {
            let home = (rng.below(TENANTS.len()), rng.below(USERS));
            (c, (!rng.percent(25)).then_some(home))
        })
        .collect();
    (0..total)
        .map(|idx| {
            if rng.percent(10) {
                let (t, u) = (rng.below(TENANTS.len()), rng.below(USERS));
                let mk = marker(idx, t, u);
                let (tool, input, expect) = tool_request(&mut rng, &mk, t, u);
                Op {
                    idx,
                    tenant: t,
                    user: u,
                    marker: mk,
                    front: Front::Tool { tool, input },
                    expect,
                }
            } else {
                let (conn, home) = homes[rng.below(connections)];
                let (t, u) = home.unwrap_or_else(|| (rng.below(TENANTS.len()), rng.below(USERS)));
                let mk = marker(idx, t, u);
                let (method, url, body, headers, expect) = proxy_request(&mut rng, &mk, t, u);
                Op {
                    idx,
                    tenant: t,
                    user: u,
                    marker: mk,
                    front: Front::Proxy {
                        conn,
                        method,
                        url,
                        body,
                        headers,
                    },
                    expect,
                }
            }
        })
        .collect()
}

// === running it ===

/// What a caller got back.
enum Got {
    Proxy(Resp),
    Tool { status: u16, body: Value },
}

/// Runs `ops` (all on one keep-alive connection, in order), reconnecting if the proxy
/// closed the connection; returns the responses and the number of reconnects.
async fn run_connection(
    addr: SocketAddr,
    ops: Vec<(usize, String, Front)>,
) -> (Vec<(usize, Got)>, usize) {
    let mut conn = ProxyConn::open(addr).await;
    let mut reconnects = 0;
    let mut out = Vec::with_capacity(ops.len());
    for (idx, token, front) in ops {
        let Front::Proxy {
            method,
            url,
            body,
            headers,
            ..
        } = front
        else {
            unreachable!("only proxy ops are given to a connection");
        };
        if conn.is_closed() {
            conn = ProxyConn::open(addr).await;
            reconnects += 1;
        }
        let mut req = request(method, &url, Some(&token));
        for (name, value) in headers {
            req = req.header(name, value);
        }
        let req = req.body(Full::new(Bytes::from(body))).unwrap();
        out.push((idx, Got::Proxy(conn.send(req).await)));
    }
    (out, reconnects)
}

/// Invokes the tools of `ops` one after another on a pooled client.
async fn run_tools(addr: SocketAddr, ops: Vec<(usize, String, Front)>) -> Vec<(usize, Got)> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut out = Vec::with_capacity(ops.len());
    for (idx, token, front) in ops {
        let Front::Tool { tool, input } = front else {
            unreachable!("only tool ops are given to a tool worker");
        };
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("http://{addr}/v1/tools/{tool}/invoke"))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(input.to_string())))
            .unwrap();
        let exchange = async {
            let resp = client.request(req).await.unwrap();
            let status = resp.status().as_u16();
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            let body = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
            (status, body)
        };
        let (status, body) = tokio::time::timeout(Duration::from_secs(30), exchange)
            .await
            .expect("no answer from the API within 30 s");
        out.push((idx, Got::Tool { status, body }));
    }
    out
}

/// Prints the seed if the test panics, so a failure can be replayed.
struct SeedOnFailure(u64);

impl Drop for SeedOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("stress test failed with BEHALF_STRESS_SEED={}", self.0);
        }
    }
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}"))
    })
}

/// Invariants 2, 3 and 5 under a randomised concurrent load: see the module docs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomised_load_never_crosses_credentials_and_audits_each_decision_once() {
    let total = env_number("BEHALF_STRESS_REQUESTS").map_or(DEFAULT_REQUESTS, |n| n as usize);
    let seed = env_number("BEHALF_STRESS_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    let _guard = SeedOnFailure(seed);
    eprintln!("stress: {total} requests, BEHALF_STRESS_SEED={seed}");
    let connections = PROXY_CONNECTIONS.min(total / 20).max(1);
    let ops = plan(seed, total, connections);

    let w = World::start().await;
    let started = Instant::now();

    // Deal the ops out: each connection and tool worker keeps the plan's order.
    let mut per_conn: Vec<Vec<(usize, String, Front)>> = vec![Vec::new(); connections];
    let mut per_worker: Vec<Vec<(usize, String, Front)>> = vec![Vec::new(); TOOL_WORKERS];
    let mut tool_ops = 0;
    for op in &ops {
        let token = w.tokens[op.tenant][op.user].clone();
        match &op.front {
            Front::Proxy { conn, .. } => per_conn[*conn].push((op.idx, token, op.front.clone())),
            Front::Tool { .. } => {
                per_worker[tool_ops % TOOL_WORKERS].push((op.idx, token, op.front.clone()));
                tool_ops += 1;
            }
        }
    }
    let mut tasks = tokio::task::JoinSet::new();
    for ops in per_conn {
        let addr = w.proxy_addr;
        tasks.spawn(run_connection(addr, ops));
    }
    for ops in per_worker {
        let addr = w.api_addr;
        tasks.spawn(async move { (run_tools(addr, ops).await, 0) });
    }
    let mut got: HashMap<usize, Got> = HashMap::with_capacity(total);
    let mut reconnects = 0;
    while let Some(done) = tasks.join_next().await {
        let (results, r) = done.unwrap();
        reconnects += r;
        got.extend(results);
    }
    let ran = started.elapsed();
    assert_eq!(got.len(), total, "seed {seed}");

    let mut problems: Vec<String> = Vec::new();
    let mut invocations: HashMap<String, usize> = HashMap::new();

    // 1. What each caller got back.
    for op in &ops {
        let who = op.who();
        let what = format!("#{} {who} {:?}", op.idx, op.expect);
        match (&got[&op.idx], op.expect) {
            (Got::Proxy(resp), expect) => {
                let body = String::from_utf8_lossy(&resp.body);
                if body.contains("cred-") {
                    problems.push(format!("{what}: a credential in the response: {body}"));
                }
                let ok = match expect {
                    Expect::Allow(_) => resp.status == 200,
                    _ => {
                        resp.status == 403
                            && serde_json::from_slice::<Value>(&resp.body)
                                .is_ok_and(|v| v["error"]["code"] == "egress_denied")
                    }
                };
                if !ok {
                    problems.push(format!("{what}: proxy answered {} {body}", resp.status));
                }
            }
            (Got::Tool { status, body }, expect) => {
                let text = body.to_string();
                if text.contains("cred-") {
                    problems.push(format!("{what}: a credential in the response: {text}"));
                }
                match body["invocation"].as_str() {
                    Some(id) => {
                        invocations.insert(id.to_owned(), op.idx);
                    }
                    None => problems.push(format!("{what}: no invocation id: {status} {text}")),
                }
                let ok = match expect {
                    Expect::Allow(_) => {
                        *status == 200
                            && body["denials"] == json!([])
                            && body["output"]["status"] == 200
                    }
                    Expect::ToolEgressDenied => {
                        *status == 403
                            && body["error"]["code"] == "egress_denied"
                            && body["denials"].as_array().is_some_and(|d| d.len() == 1)
                    }
                    Expect::ToolNotAllowed => {
                        *status == 403 && body["error"]["code"] == "tool_not_allowed"
                    }
                    Expect::Deny => unreachable!("tools are not planned with Deny"),
                };
                if !ok {
                    problems.push(format!("{what}: the API answered {status} {text}"));
                }
            }
        }
    }

    // 2. What reached the mocks: each allowed request once, with exactly its caller's
    // credential for its service and nothing else; no denied request at all.
    let mut reached: HashSet<usize> = HashSet::new();
    let recorded: Vec<Recorded> = w
        .tls
        .requests()
        .into_iter()
        .chain(w.plain.requests())
        .collect();
    for r in &recorded {
        let text = format!("{} {}", r.target, String::from_utf8_lossy(&r.body));
        let Some(idx) = find_marker(&text, &ops) else {
            problems.push(format!("a request with no marker reached a mock: {r:?}"));
            continue;
        };
        let op = &ops[idx];
        let what = format!(
            "#{idx} {} {:?} {} {}",
            op.who(),
            op.expect,
            r.method,
            r.target
        );
        let Expect::Allow(svc) = op.expect else {
            problems.push(format!(
                "{what}: a request that must be denied reached a mock"
            ));
            continue;
        };
        if !reached.insert(idx) {
            problems.push(format!("{what}: reached a mock twice"));
        }
        let mut corpus = text.clone();
        for (name, value) in &r.headers {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            if let Some(b64) = value.strip_prefix("Basic ")
                && let Ok(decoded) = STANDARD.decode(b64.trim())
            {
                corpus.push_str(&format!(" {name}: {}", String::from_utf8_lossy(&decoded)));
            }
            corpus.push_str(&format!(" {name}: {value}"));
        }
        let mut found = creds_in(&corpus);
        found.sort();
        found.dedup();
        let own = cred_value(svc, op.tenant, op.user);
        if found != [own.clone()] {
            problems.push(format!(
                "{what}: expected exactly the caller's {own}, the mock saw {found:?}"
            ));
        }
        if corpus.contains("eyJ") {
            problems.push(format!("{what}: an identity token reached the mock"));
        }
        let host = r.header("host");
        if host != [svc.host(TENANTS[op.tenant])] {
            problems.push(format!("{what}: Host {host:?}"));
        }
    }
    for op in &ops {
        if matches!(op.expect, Expect::Allow(_)) && !reached.contains(&op.idx) {
            problems.push(format!(
                "#{} {} {:?}: allowed but never reached a mock",
                op.idx,
                op.who(),
                op.expect
            ));
        }
    }

    // 3. The audit log: exactly the expected records per request, nothing left over.
    let expected_records: usize = ops
        .iter()
        .map(|op| match (&op.front, op.expect) {
            (Front::Proxy { .. }, _) => 1,
            (Front::Tool { .. }, Expect::ToolNotAllowed) => 1,
            (Front::Tool { .. }, _) => 2,
        })
        .sum();
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.audit_records().0.len() < expected_records && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Late extras would show up here.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (records, text) = w.audit_records();

    let mut by_op: HashMap<usize, Vec<&Record>> = HashMap::new();
    for r in &records {
        let idx = match &r.invocation {
            Some(id) => invocations.get(id).copied(),
            None => find_marker(&r.path, &ops),
        };
        match idx {
            Some(idx) => by_op.entry(idx).or_default().push(r),
            None => problems.push(format!("an audit record for no request: {r:?}")),
        }
    }
    let no_records = Vec::new();
    for op in &ops {
        let rs = by_op.get(&op.idx).unwrap_or(&no_records);
        let what = format!("#{} {} {:?}", op.idx, op.who(), op.expect);
        let tenant = Some(TENANTS[op.tenant]);
        let user = Some(user_name(op.user));
        let mine = |r: &Record| r.tenant.as_deref() == tenant && r.user == user;
        let egress = |r: &Record, client: &str, expect: Expect| {
            mine(r)
                && r.client.as_deref() == Some(client)
                && r.method != "INVOKE"
                && match expect {
                    Expect::Allow(svc) => {
                        r.decision == "allow"
                            && r.status == Some(200)
                            && r.credential.as_deref() == Some(svc.audit_name().as_str())
                    }
                    _ => {
                        r.decision == "deny"
                            && r.status == Some(403)
                            && r.credential.is_none()
                            && r.reason.is_some()
                    }
                }
        };
        let invoke = |r: &Record, tool: &str, decision: &str, status: u16| {
            mine(r)
                && r.method == "INVOKE"
                && r.origin == format!("tool:{tool}")
                && r.decision == decision
                && r.status == Some(status)
        };
        let ok = match (&op.front, op.expect) {
            (Front::Proxy { .. }, expect) => rs.len() == 1 && egress(rs[0], "proxy", expect),
            (Front::Tool { tool, .. }, Expect::ToolNotAllowed) => {
                rs.len() == 1
                    && invoke(rs[0], tool, "deny", 403)
                    && rs[0].reason.as_deref() == Some("no_tool_access")
            }
            (Front::Tool { tool, .. }, expect) => {
                let client = format!("tool:{tool}");
                let (decision, status) = match expect {
                    Expect::Allow(_) => ("allow", 200),
                    _ => ("error", 403),
                };
                rs.len() == 2
                    && rs
                        .iter()
                        .filter(|r| invoke(r, tool, decision, status))
                        .count()
                        == 1
                    && rs.iter().filter(|r| egress(r, &client, expect)).count() == 1
            }
        };
        if !ok {
            problems.push(format!("{what}: audit records {rs:#?}"));
        }
    }
    if records.len() != expected_records {
        problems.push(format!(
            "{} audit records, expected {expected_records}",
            records.len()
        ));
    }
    if text.contains("cred-") || text.contains("eyJ") {
        problems.push("a credential or an identity token is in the audit log".into());
    }

    let allowed = ops
        .iter()
        .filter(|o| matches!(o.expect, Expect::Allow(_)))
        .count();
    eprintln!(
        "stress: {total} requests ({tool_ops} tool invocations, {} proxy requests on \
         {connections} connections, {reconnects} reconnects), {allowed} allowed, {} denied; \
         {} upstream requests, {} audit records; ran in {ran:?}, checked in {:?}",
        total - tool_ops,
        total - allowed,
        recorded.len(),
        records.len(),
        started.elapsed() - ran
    );
    if !problems.is_empty() {
        let shown: Vec<&String> = problems.iter().take(20).collect();
        panic!(
            "seed {seed}: {} problems, the first {}:\n{}",
            problems.len(),
            shown.len(),
            shown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
