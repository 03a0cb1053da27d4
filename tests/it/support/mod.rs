//! Shared harness for the egress and proxy integration tests: a recording mock upstream (plain
//! or TLS with a test CA made at test time), a generated policy directory, the sidecar started
//! in-process on port 0, seeded secrets and minted tokens, a test resolver, a secret store that
//! records every read, and clients that speak to the proxy through hyper or as raw bytes.
//!
//! Typical use:
//!
//! ```ignore
//! let h = Harness::start().await;
//! let resp = h.send(get("https://api.github.test/repos/acme/x", Some(&h.alice))).await;
//! assert_eq!(resp.status, 200);
//! let seen = h.upstream.only();
//! assert_eq!(seen.header("authorization"), [format!("Bearer {ALICE_GITHUB}")]);
//! ```
//!
//! Everything lives in one `TempDir` per harness, so tests run in parallel without sharing
//! ports, state or audit logs.

// Not every test file uses every helper.
#![allow(dead_code)]

pub mod tools;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use behalf::audit::{self, AuditLog, Record};
use behalf::egress::{BoxBody, Egress, Resolver, body};
use behalf::identity::{Verifier, dev};
use behalf::policy::service::CredentialName;
use behalf::policy::{Origin, PolicySet};
use behalf::principal::{GroupId, Principal, TenantId, UserId};
use behalf::proxy::Proxy;
use behalf::proxy::ca::Ca;
use behalf::secrets::{self, Namespace, Secret, SecretError, SecretId, SecretInfo, SecretStore};
use behalf::serve::{Options, Sidecar};
use behalf::state::StateDir;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

// === secrets and names ===

/// alice's (acme, group eng) GitHub token.
pub const ALICE_GITHUB: &str = "gh-alice-s3cret-A1";
/// bob's (acme, group eng) GitHub token.
pub const BOB_GITHUB: &str = "gh-bob-s3cret-B2";
/// carol's (globex) GitHub token.
pub const CAROL_GITHUB: &str = "gh-carol-s3cret-C3";
/// acme's shared Slack bot token.
pub const ACME_SLACK: &str = "xoxb-acme-s3cret-T1";
/// globex's shared Slack bot token.
pub const GLOBEX_SLACK: &str = "xoxb-globex-s3cret-T2";
/// acme's weather API key (query injection).
pub const ACME_WEATHER: &str = "wx-acme-s3cret-Q1";
/// alice's Jira token (Basic injection, username `x-token`).
pub const ALICE_JIRA: &str = "jira-alice-s3cret-J1";
/// bob's Jira token.
pub const BOB_JIRA: &str = "jira-bob-s3cret-J2";
/// alice's token for the placeholder service.
pub const ALICE_TOOLY: &str = "tooly-alice-s3cret-P1";
/// acme's key for the plaintext intranet service (`X-Api-Key`).
pub const ACME_INTRANET: &str = "intra-acme-s3cret-I1";

/// Every seeded secret, by `TENANT/[USER/]NAME`.
pub const SEEDS: &[(&str, &str)] = &[
    ("acme/alice/github_token", ALICE_GITHUB),
    ("acme/bob/github_token", BOB_GITHUB),
    ("globex/carol/github_token", CAROL_GITHUB),
    ("acme/slack_bot_token", ACME_SLACK),
    ("globex/slack_bot_token", GLOBEX_SLACK),
    ("acme/weather_api_key", ACME_WEATHER),
    ("acme/alice/jira_token", ALICE_JIRA),
    ("acme/bob/jira_token", BOB_JIRA),
    ("acme/alice/tooly_token", ALICE_TOOLY),
    ("acme/intranet_key", ACME_INTRANET),
];

/// Every seeded secret value: none may ever appear in an audit log or an error.
pub fn secret_values() -> Vec<&'static str> {
    SEEDS.iter().map(|(_, v)| *v).collect()
}

/// Host names the TLS mock has a certificate for (each is an `https://` service origin, or
/// `other.test`, the credential-less redirect target).
pub const TLS_HOSTS: &[&str] = &[
    "api.github.test",
    "slack.test",
    "api.weather.test",
    "jira.test",
    "tooly.test",
    "other.test",
];

/// `https://` origins sent to the TLS mock by `--connect-to`.
pub const TLS_ORIGINS: &[&str] = &[
    "https://api.github.test",
    "https://slack.test",
    "https://api.weather.test",
    "https://jira.test",
    "https://tooly.test",
    "https://other.test",
];

/// `http://` origins sent to the plain mock by `--connect-to`.
pub const PLAIN_ORIGINS: &[&str] = &["http://intranet.test"];

/// ALPN for an HTTP/2-only upstream (see [`TestCa::server_config_alpn`]).
pub const ALPN_H2: &[&str] = &["h2"];
/// ALPN for an upstream that prefers HTTP/2 and also speaks HTTP/1.1.
pub const ALPN_H2_H1: &[&str] = &["h2", "http/1.1"];
/// ALPN for an HTTP/1.1-only upstream (what [`TestCa::server_config`] offers).
pub const ALPN_H1: &[&str] = &["http/1.1"];

// === policy files ===

const SERVICES: &[(&str, &str)] = &[
    (
        "github",
        r#"[service]
name = "github"
origins = ["https://api.github.test"]
credential = { name = "github_token", scope = "user" }
inject = { header = "Authorization", template = "Bearer {credential}" }
"#,
    ),
    (
        "slack",
        r#"[service]
name = "slack"
origins = ["https://slack.test"]
credential = { name = "slack_bot_token", scope = "tenant" }
inject = { header = "Authorization", template = "Bearer {credential}" }
"#,
    ),
    (
        "weather",
        r#"[service]
name = "weather"
origins = ["https://api.weather.test"]
credential = { name = "weather_api_key", scope = "tenant" }
inject = { query = "appid" }
"#,
    ),
    (
        "jira",
        r#"[service]
name = "jira"
origins = ["https://jira.test"]
credential = { name = "jira_token", scope = "user" }
inject = { basic = { username = "x-token" } }
"#,
    ),
    (
        "tooly",
        r#"[service]
name = "tooly"
origins = ["https://tooly.test"]
credential = { name = "tooly_token", scope = "user" }
inject = { placeholder = { header = "Authorization", template = "Bearer {placeholder}" } }
"#,
    ),
    (
        "intranet",
        r#"[service]
name = "intranet"
origins = ["http://intranet.test"]
credential = { name = "intranet_key", scope = "tenant" }
inject = { header = "X-Api-Key", template = "{credential}" }
allow_plaintext = true
"#,
    ),
    (
        "public",
        r#"# No credential: a public API (and the target of the redirect tests).
[service]
name = "public"
origins = ["https://other.test"]
"#,
    ),
    (
        "internal",
        r#"# Names the test resolver maps to private addresses; the SSRF guard is on.
[service]
name = "internal"
origins = [
    "http://loop.internal.test",
    "http://zero.internal.test",
    "http://mapped.internal.test",
    "http://meta.internal.test",
]
"#,
    ),
    (
        "lan",
        r#"# Private addresses allowed, but metadata addresses never are.
[service]
name = "lan"
origins = ["http://lan.test", "http://metadata.test"]
allow_private_ips = true
"#,
    ),
];

const ACME: &str = r#"[tenant]
name = "acme"

[[grant]]
id = "eng-github"
who = ["group:eng"]
clients = ["proxy", "tool:tooly"]
service = "github"
allow = ["GET /repos/acme/**", "POST /repos/acme/*/issues", "GET /user"]

[[grant]]
id = "eng-slack"
who = ["group:eng"]
clients = ["proxy"]
service = "slack"
allow = ["POST /api/chat.postMessage", "GET /api/**"]

[[grant]]
id = "eng-weather"
who = ["group:eng"]
clients = ["proxy"]
service = "weather"
allow = ["GET /data/**"]

[[grant]]
id = "eng-jira"
who = ["group:eng"]
clients = ["proxy"]
service = "jira"
allow = ["GET /rest/**"]

[[grant]]
id = "eng-tooly"
who = ["group:eng"]
clients = ["tool:tooly"]
service = "tooly"
allow = ["GET /v1/**", "POST /v1/**"]

[[grant]]
id = "eng-intranet"
who = ["group:eng"]
clients = ["proxy"]
service = "intranet"
allow = ["GET /**", "POST /**"]

[[grant]]
id = "eng-public"
who = ["group:eng"]
clients = ["proxy"]
service = "public"
allow = ["GET /**"]

[[grant]]
id = "eng-internal"
who = ["group:eng"]
clients = ["proxy"]
service = "internal"
allow = ["GET /**"]

[[grant]]
id = "eng-lan"
who = ["group:eng"]
clients = ["proxy"]
service = "lan"
allow = ["GET /**"]
"#;

const GLOBEX: &str = r#"[tenant]
name = "globex"

[[grant]]
id = "carol-github"
who = ["user:carol"]
clients = ["proxy"]
service = "github"
allow = ["GET /repos/globex/**"]

[[grant]]
id = "carol-slack"
who = ["user:carol"]
clients = ["proxy"]
service = "slack"
allow = ["POST /api/chat.postMessage", "GET /api/**"]
"#;

// === the harness ===

/// How to start a [`Harness`]. Every field has a working default.
#[derive(Default)]
pub struct Config {
    /// Extra lines for `[limits]` in behalf.toml (the harness sets `upstream_timeout = "5s"`
    /// unless this sets it).
    pub limits: String,
    /// Extra `services/<name>.toml` files: (name, contents).
    pub extra_services: Vec<(String, String)>,
    /// Text appended to `tenants/acme.toml` (more `[[grant]]`s).
    pub acme_extra: String,
    /// `--connect-to` overrides, replacing the defaults for the same origin (e.g. point
    /// `https://api.github.test` at a [`RawUpstream`] for fault tests).
    pub connect_to: Vec<(String, SocketAddr)>,
    /// Build the pipeline by hand around a [`SpyStore`] (instead of through
    /// [`Sidecar::open_with_resolver`]), so tests can count secret reads.
    pub spy_secrets: bool,
    /// Runs with the state directory's path once the policies, secrets and tokens are written
    /// and before the sidecar opens its audit log (e.g. to point the log at `/dev/full`).
    pub before_open: Option<BeforeOpen>,
    /// The proxy's `max_connections` (1024 when `None`).
    pub max_connections: Option<usize>,
    /// Text appended to behalf.toml after `[limits]`: whole tables of its own, e.g. an
    /// `[[identity.issuer]]`.
    pub settings_extra: String,
}

/// See [`Config::before_open`]: gets the state directory's path.
pub type BeforeOpen = Box<dyn FnOnce(&Path) + Send>;

/// A running sidecar with its mock upstreams, state and tokens.
pub struct Harness {
    /// Holds every file; removed on drop.
    pub tmp: tempfile::TempDir,
    /// The generated policies directory.
    pub policies: PathBuf,
    /// The state directory (secrets, keys, audit log).
    pub state: StateDir,
    /// The test CA whose PEM is `[tls] upstream_roots`.
    pub ca: TestCa,
    /// The TLS mock behind every origin in [`TLS_ORIGINS`].
    pub upstream: MockUpstream,
    /// The plain-HTTP mock behind every origin in [`PLAIN_ORIGINS`].
    pub plain: MockUpstream,
    /// The resolver the pipeline uses for names without a `--connect-to` override. Unknown
    /// names fail to resolve; add mappings at any time with [`TestResolver::set`].
    pub resolver: Arc<TestResolver>,
    /// The pipeline (call [`Egress::handle`] directly for in-process front doors).
    pub egress: Arc<Egress>,
    /// The secret store wrapper, when [`Config::spy_secrets`] was set.
    pub spy: Option<Arc<SpyStore>>,
    /// The forward proxy's address.
    pub proxy_addr: SocketAddr,
    /// The sidecar's interception CA (CONNECT), for counting leaf mints; `None` when
    /// [`Config::spy_secrets`] built the proxy by hand (without CONNECT).
    pub interception_ca: Option<Arc<Ca>>,
    /// Tokens: acme/alice and acme/bob (group eng), globex/carol (no groups).
    pub alice: String,
    /// See [`Harness::alice`].
    pub bob: String,
    /// See [`Harness::alice`].
    pub carol: String,
    shutdown: Option<oneshot::Sender<()>>,
    proxy_task: JoinHandle<()>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.proxy_task.abort();
    }
}

fn write(path: &Path, text: &str) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, text).unwrap();
}

impl Harness {
    /// Starts a harness with the default configuration.
    pub async fn start() -> Self {
        Self::start_with(Config::default()).await
    }

    /// Starts a harness.
    pub async fn start_with(config: Config) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().to_owned();
        let ca = TestCa::new(&base.join("test-ca.pem"));
        let upstream = MockUpstream::start(Some(ca.server_config(TLS_HOSTS))).await;
        let plain = MockUpstream::start(None).await;

        // Policies.
        let policies = base.join("policies");
        let limits = if config.limits.contains("upstream_timeout") {
            config.limits.clone()
        } else {
            format!("upstream_timeout = \"5s\"\n{}", config.limits)
        };
        write(
            &policies.join("behalf.toml"),
            &format!(
                "dev = true\nstate_dir = \"state\"\ntools_dir = \"tools\"\n\n[secrets]\n\
                 backend = \"file\"\n\n[tls]\nupstream_roots = [{:?}]\n\n[limits]\n{limits}\n{}",
                ca.pem_path.display().to_string(),
                config.settings_extra
            ),
        );
        for (name, text) in SERVICES {
            write(&policies.join(format!("services/{name}.toml")), text);
        }
        for (name, text) in &config.extra_services {
            write(&policies.join(format!("services/{name}.toml")), text);
        }
        write(
            &policies.join("tenants/acme.toml"),
            &format!("{ACME}\n{}", config.acme_extra),
        );
        write(&policies.join("tenants/globex.toml"), GLOBEX);

        // State, secrets, tokens.
        let policy = PolicySet::load(&policies).unwrap_or_else(|e| panic!("{e}"));
        let settings = policy.settings().clone();
        let state_path = base.join("state");
        let state = StateDir::open(&state_path).unwrap();
        {
            let store = secrets::open_store(&settings, &state).unwrap();
            for (id, value) in SEEDS {
                store
                    .set(&SecretId::parse(id).unwrap(), &Secret::from_text(value))
                    .unwrap();
            }
        }
        let alice = mint(&state, "acme", "alice", &["eng"]);
        let bob = mint(&state, "acme", "bob", &["eng"]);
        let carol = mint(&state, "globex", "carol", &[]);

        // `--connect-to`: the mocks stand in for the real origins, with real TLS checks.
        let mut connect_to: Vec<(Origin, SocketAddr)> = Vec::new();
        let mut add = |origin: &str, addr: SocketAddr| {
            let origin = Origin::parse(origin).unwrap();
            connect_to.retain(|(o, _)| *o != origin);
            connect_to.push((origin, addr));
        };
        for o in TLS_ORIGINS {
            add(o, upstream.addr);
        }
        for o in PLAIN_ORIGINS {
            add(o, plain.addr);
        }
        for (o, addr) in &config.connect_to {
            add(o, *addr);
        }

        if let Some(hook) = config.before_open {
            hook(&state_path);
        }
        let resolver = Arc::new(TestResolver::default());
        let (egress, proxy, spy, interception_ca) = if config.spy_secrets {
            let spy = Arc::new(SpyStore::new(
                secrets::open_store(&settings, &state).unwrap(),
            ));
            let audit = AuditLog::open(&state, settings.audit.rotate_bytes).unwrap();
            let egress = Arc::new(
                Egress::new(
                    Arc::new(policy),
                    spy.clone(),
                    audit,
                    resolver.clone(),
                    connect_to.into_iter().collect::<HashMap<_, _>>(),
                )
                .unwrap(),
            );
            let verifier = Arc::new(Verifier::new(&settings, Some(&state)).unwrap());
            let proxy = Arc::new(Proxy::new(egress.clone(), verifier));
            (egress, proxy, Some(spy), None)
        } else {
            let options = Options {
                policies: policies.clone(),
                state: Some(state_path),
                connect_to,
                shadow: None,
            };
            let sidecar = Sidecar::open_with_resolver(&options, resolver.clone())
                .unwrap_or_else(|e| panic!("{e}"));
            let ca = sidecar.ca.clone();
            (sidecar.egress.clone(), sidecar.proxy(), None, Some(ca))
        };

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let max_connections = config.max_connections.unwrap_or(1024);
        let proxy_task = tokio::spawn(proxy.serve(listener, max_connections, async move {
            let _ = rx.await;
        }));

        Harness {
            tmp,
            policies,
            state,
            ca,
            upstream,
            plain,
            resolver,
            egress,
            spy,
            proxy_addr,
            interception_ca,
            alice,
            bob,
            carol,
            shutdown: Some(tx),
            proxy_task,
        }
    }

    /// A development token for any principal (1 h).
    pub fn token(&self, tenant: &str, user: &str, groups: &[&str]) -> String {
        mint(&self.state, tenant, user, groups)
    }

    /// A development token for any principal, valid for `ttl` (whole seconds: `exp` is
    /// `iat + ttl`, `iat` being the current second).
    pub fn token_with_ttl(
        &self,
        tenant: &str,
        user: &str,
        groups: &[&str],
        ttl: Duration,
    ) -> String {
        let groups: Vec<GroupId> = groups.iter().map(|g| GroupId::parse(g).unwrap()).collect();
        dev::mint(
            true,
            &self.state,
            &TenantId::parse(tenant).unwrap(),
            &UserId::parse(user).unwrap(),
            &groups,
            ttl,
        )
        .unwrap()
    }

    /// A token signed with the right key but expired two minutes ago (beyond the dev issuer's
    /// 60 s clock skew).
    pub fn expired_token(&self, tenant: &str, user: &str) -> String {
        let key = self.state.generated_key(dev::KEY_FILE).unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = serde_json::json!({
            "iss": dev::ISSUER, "aud": dev::AUDIENCE, "sub": user, "tenant": tenant,
            "groups": ["eng"], "iat": now - 600, "exp": now - 120,
        });
        behalf::identity::jwt::sign_hs256(&key[..], None, &claims)
    }

    /// A principal as the host would bind it (for [`Egress::handle`]).
    pub fn principal(tenant: &str, user: &str, groups: &[&str]) -> Principal {
        Principal::new(
            TenantId::parse(tenant).unwrap(),
            UserId::parse(user).unwrap(),
            groups.iter().map(|g| GroupId::parse(g).unwrap()).collect(),
        )
    }

    /// Sends one request through the proxy on a fresh connection.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Resp {
        ProxyConn::open(self.proxy_addr).await.send(req).await
    }

    /// A keep-alive connection to the proxy.
    pub async fn conn(&self) -> ProxyConn {
        ProxyConn::open(self.proxy_addr).await
    }

    /// Writes `bytes` to the proxy on a fresh connection and reads one response.
    pub async fn raw(&self, bytes: &[u8]) -> RawResponse {
        raw_exchange(self.proxy_addr, bytes).await
    }

    /// The audit directory.
    pub fn audit_dir(&self) -> PathBuf {
        self.state.join(audit::DIR)
    }

    /// Verifies the audit chain and returns every record except `start` records.
    pub fn audit_records(&self) -> Vec<Record> {
        let key = audit::read_key(&self.state).unwrap();
        audit::verify(&self.audit_dir(), &key).unwrap_or_else(|e| panic!("audit verify: {e}"));
        let text = std::fs::read_to_string(self.audit_dir().join(audit::CURRENT)).unwrap();
        text.lines()
            .map(|l| serde_json::from_str::<Record>(l).unwrap())
            .filter(|r| r.decision != "start")
            .collect()
    }

    /// Waits (up to 3 s) until at least `n` non-`start` records are written, then returns them
    /// (an allowed request's record is written when its response body ends).
    pub async fn wait_audit(&self, n: usize) -> Vec<Record> {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let records = self.audit_records();
            if records.len() >= n || Instant::now() > deadline {
                return records;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The audit records as one line each, in order, for whole-list assertions:
    /// `USER DECISION GRANT|REASON CREDENTIAL STATUS METHOD ORIGIN+PATH` (`-` for none).
    pub async fn audit_summary(&self, expected: usize) -> Vec<String> {
        self.wait_audit(expected)
            .await
            .iter()
            .map(summarise)
            .collect()
    }

    /// Every byte of every audit file, for leak checks.
    pub fn audit_text(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(self.audit_dir()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "jsonl") {
                out.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
        out
    }

    /// Asserts that no seeded secret value, no query string (no `?` at all) and none of
    /// `also` appear anywhere in the audit log.
    pub fn assert_audit_clean(&self, also: &[&str]) {
        let text = self.audit_text();
        for value in secret_values().iter().chain(also) {
            assert!(
                !text.contains(value),
                "audit log contains {value:?}:\n{text}"
            );
        }
        assert!(!text.contains('?'), "audit log contains a `?`:\n{text}");
    }
}

/// One audit record as a summary line (see [`Harness::audit_summary`]).
pub fn summarise(r: &Record) -> String {
    let dash = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
    let why = if r.decision == "allow" {
        dash(&r.grant)
    } else {
        dash(&r.reason)
    };
    format!(
        "{} {} {} {} {} {} {}{}",
        dash(&r.user),
        r.decision,
        why,
        dash(&r.credential),
        r.status.map_or("-".into(), |s| s.to_string()),
        r.method,
        r.origin,
        r.path
    )
}

fn mint(state: &StateDir, tenant: &str, user: &str, groups: &[&str]) -> String {
    let groups: Vec<GroupId> = groups.iter().map(|g| GroupId::parse(g).unwrap()).collect();
    dev::mint(
        true,
        state,
        &TenantId::parse(tenant).unwrap(),
        &UserId::parse(user).unwrap(),
        &groups,
        Duration::from_secs(3600),
    )
    .unwrap()
}

// === test CA ===

/// A CA made at test time, its PEM written to a file for `[tls] upstream_roots`.
pub struct TestCa {
    /// The CA certificate, PEM.
    pub cert_pem: String,
    /// Where the PEM was written.
    pub pem_path: PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    /// Generates a CA and writes its certificate to `pem_path`.
    pub fn new(pem_path: &Path) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "behalf test CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        let cert_pem = cert.pem();
        std::fs::write(pem_path, &cert_pem).unwrap();
        Self {
            cert_pem,
            pem_path: pem_path.to_owned(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A server certificate for `names`, signed by this CA.
    pub fn server_cert(
        &self,
        names: &[&str],
    ) -> (
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        (vec![cert.der().clone()], key)
    }

    /// A TLS server configuration (HTTP/1.1 only) for `names`.
    pub fn server_config(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        let (chain, key) = self.server_cert(names);
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// As [`TestCa::server_config`], offering exactly the ALPN protocols `alpn` (e.g.
    /// [`ALPN_H2`], [`ALPN_H2_H1`], [`ALPN_H1`]), in preference order.
    pub fn server_config_alpn(&self, names: &[&str], alpn: &[&str]) -> Arc<rustls::ServerConfig> {
        let (chain, key) = self.server_cert(names);
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Arc::new(config)
    }

    /// As [`TestCa::server_config`], with the leaf's parameters adjusted by `edit` before
    /// signing (e.g. a validity period in the past).
    pub fn server_config_with(
        &self,
        names: &[&str],
        edit: impl FnOnce(&mut rcgen::CertificateParams),
    ) -> Arc<rustls::ServerConfig> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        edit(&mut params);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

// === mock upstream ===

/// One request as the mock upstream received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The method.
    pub method: String,
    /// The request target as received (path and query, origin form).
    pub target: String,
    /// Every header, as received.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// The TLS SNI name, for the TLS mock.
    pub sni: Option<String>,
    /// Which accepted connection (from 0) it arrived on.
    pub connection: usize,
    /// The HTTP version it arrived as (`HTTP/2.0` only from [`MockUpstream::start_auto`]).
    pub version: http::Version,
    /// The request URI's authority: the `:authority` pseudo-header of an HTTP/2 request;
    /// `None` for an HTTP/1.1 request in origin form (see [`Recorded::host`]).
    pub authority: Option<String>,
    /// The ALPN protocol negotiated on its connection (TLS mocks), e.g. `h2`.
    pub alpn: Option<String>,
}

impl Recorded {
    /// Every value of a header, lossily as text.
    pub fn header(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    /// The path without its query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The query, if any.
    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, q)| q)
    }

    /// The `Host` header (exactly one is expected).
    pub fn host(&self) -> String {
        let hosts = self.header("host");
        assert_eq!(hosts.len(), 1, "expected one Host header: {hosts:?}");
        hosts[0].clone()
    }
}

/// What a mock handler returns.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Response<BoxBody>> + Send>>;
/// A mock upstream's handler: gets the recorded request, answers it.
pub type Handler = Arc<dyn Fn(Recorded) -> HandlerFuture + Send + Sync>;

/// A JSON response.
pub fn json_response(status: u16, value: serde_json::Value) -> Response<BoxBody> {
    let mut resp = Response::new(body::boxed(Full::new(Bytes::from(value.to_string()))));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The default answer: 200 with a JSON echo of what was received.
pub fn echo(req: &Recorded) -> Response<BoxBody> {
    let mut headers = serde_json::Map::new();
    for name in req.headers.keys() {
        headers.insert(name.to_string(), req.header(name.as_str()).into());
    }
    json_response(
        200,
        serde_json::json!({
            "method": req.method,
            "target": req.target,
            "headers": headers,
            "body": String::from_utf8_lossy(&req.body),
        }),
    )
}

/// An in-process HTTP/1.1 upstream on 127.0.0.1:0, plain or TLS, that records every request
/// (or HTTP/1.1 and HTTP/2, from [`MockUpstream::start_auto`]).
pub struct MockUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    handler: Arc<Mutex<Handler>>,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockUpstream {
    /// Starts a mock; with `tls`, it speaks TLS with that configuration.
    pub async fn start(tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        Self::start_inner(tls, false).await
    }

    /// Starts an HTTP/2-capable mock, served by `hyper_util`'s auto builder: HTTP/2 on a
    /// connection whose ALPN is `h2`, HTTP/1.1 on one whose ALPN is `http/1.1`, and either
    /// (by the client's preface) without TLS or ALPN. Give `tls` its protocols with
    /// [`TestCa::server_config_alpn`]; [`Recorded::version`] tells what each request used.
    pub async fn start_auto(tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        Self::start_inner(tls, true).await
    }

    async fn start_inner(tls: Option<Arc<rustls::ServerConfig>>, auto: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let default: Handler = Arc::new(|r: Recorded| Box::pin(async move { echo(&r) }));
        let handler = Arc::new(Mutex::new(default));
        let connections = Arc::new(AtomicUsize::new(0));
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let task = {
            let (requests, handler, connections) =
                (requests.clone(), handler.clone(), connections.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let id = connections.fetch_add(1, Ordering::SeqCst);
                    let (requests, handler, acceptor) =
                        (requests.clone(), handler.clone(), acceptor.clone());
                    tokio::spawn(async move {
                        match acceptor {
                            Some(acceptor) => {
                                let Ok(tls) = acceptor.accept(tcp).await else {
                                    return;
                                };
                                let sni = tls.get_ref().1.server_name().map(str::to_owned);
                                let alpn = tls
                                    .get_ref()
                                    .1
                                    .alpn_protocol()
                                    .map(|p| String::from_utf8_lossy(p).into_owned());
                                let conn = ConnInfo {
                                    sni,
                                    alpn,
                                    connection: id,
                                };
                                if auto {
                                    serve_mock_auto(tls, conn, requests, handler).await;
                                } else {
                                    serve_mock(tls, conn, requests, handler).await;
                                }
                            }
                            None => {
                                let conn = ConnInfo {
                                    sni: None,
                                    alpn: None,
                                    connection: id,
                                };
                                if auto {
                                    serve_mock_auto(tcp, conn, requests, handler).await;
                                } else {
                                    serve_mock(tcp, conn, requests, handler).await;
                                }
                            }
                        }
                    });
                }
            })
        };
        Self {
            addr,
            requests,
            handler,
            connections,
            task,
        }
    }

    /// Answers with `f` from now on.
    pub fn respond(&self, f: impl Fn(&Recorded) -> Response<BoxBody> + Send + Sync + 'static) {
        let f = Arc::new(f);
        *self.handler.lock().unwrap() = Arc::new(move |r: Recorded| {
            let f = f.clone();
            Box::pin(async move { f(&r) })
        });
    }

    /// Answers with an async handler from now on (delays, streamed bodies).
    pub fn respond_async<F, Fut>(&self, f: F)
    where
        F: Fn(Recorded) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<BoxBody>> + Send + 'static,
    {
        *self.handler.lock().unwrap() = Arc::new(move |r: Recorded| Box::pin(f(r)));
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// Forgets the requests received so far.
    pub fn clear(&self) {
        self.requests.lock().unwrap().clear();
    }

    /// The one request received (panics unless exactly one was).
    pub fn only(&self) -> Recorded {
        let all = self.requests();
        assert_eq!(
            all.len(),
            1,
            "expected exactly one upstream request: {all:#?}"
        );
        all.into_iter().next().unwrap()
    }

    /// Asserts that nothing reached this upstream.
    pub fn assert_untouched(&self, context: &str) {
        let all = self.requests();
        assert!(all.is_empty(), "{context}: upstream received {all:#?}");
    }

    /// Connections accepted so far (TCP, including failed TLS handshakes).
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// The HTTP version of every request received so far, in order.
    pub fn versions(&self) -> Vec<http::Version> {
        self.requests().iter().map(|r| r.version).collect()
    }
}

/// What a mock knows about one accepted connection.
#[derive(Clone)]
struct ConnInfo {
    sni: Option<String>,
    alpn: Option<String>,
    connection: usize,
}

/// The mock's service: records each request (with its connection's details), then answers
/// it with the current handler.
fn mock_service(
    conn: ConnInfo,
    requests: Arc<Mutex<Vec<Recorded>>>,
    handler: Arc<Mutex<Handler>>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<BoxBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<BoxBody>, Infallible>> + Send + 'static,
> + Clone {
    service_fn(move |req: Request<Incoming>| {
        let (requests, handler, conn) = (requests.clone(), handler.clone(), conn.clone());
        async move {
            let (parts, incoming) = req.into_parts();
            let body = incoming
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let recorded = Recorded {
                method: parts.method.to_string(),
                target: parts
                    .uri
                    .path_and_query()
                    .map_or_else(|| parts.uri.to_string(), |p| p.as_str().to_owned()),
                headers: parts.headers,
                body,
                sni: conn.sni,
                connection: conn.connection,
                version: parts.version,
                authority: parts.uri.authority().map(|a| a.as_str().to_owned()),
                alpn: conn.alpn,
            };
            requests.lock().unwrap().push(recorded.clone());
            let handler = handler.lock().unwrap().clone();
            Ok::<_, Infallible>(handler(recorded).await)
        }
    })
}

async fn serve_mock<IO>(
    io: IO,
    conn: ConnInfo,
    requests: Arc<Mutex<Vec<Recorded>>>,
    handler: Arc<Mutex<Handler>>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), mock_service(conn, requests, handler))
        .with_upgrades()
        .await;
}

/// As [`serve_mock`], HTTP/2 or HTTP/1.1: by ALPN when one was negotiated, else by preface.
async fn serve_mock_auto<IO>(
    io: IO,
    conn: ConnInfo,
    requests: Arc<Mutex<Vec<Recorded>>>,
    handler: Arc<Mutex<Handler>>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    match conn.alpn.as_deref() {
        Some("h2") => builder = builder.http2_only(),
        Some("http/1.1") => builder = builder.http1_only(),
        _ => {}
    }
    let _ = builder
        .serve_connection_with_upgrades(TokioIo::new(io), mock_service(conn, requests, handler))
        .await;
}

/// A TCP upstream that hands each accepted connection to a closure: for faults a real HTTP
/// server will not produce (resets, slow or malformed heads).
pub struct RawUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawUpstream {
    /// Starts one; `f` runs (in its own task) for every accepted connection.
    pub async fn start<F, Fut>(f: F) -> Self
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Ok((tcp, _)) = listener.accept().await {
                    count.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(f(tcp));
                }
            }
        });
        Self {
            addr,
            connections,
            task,
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Reads from `stream` until the end of a request head (`\r\n\r\n`) or EOF.
pub async fn read_head(stream: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    buf
}

// === test resolver ===

/// A resolver with a fixed table; unknown names fail (nothing in the tests reaches real DNS).
#[derive(Debug, Default)]
pub struct TestResolver {
    table: Mutex<HashMap<String, Vec<SocketAddr>>>,
    asked: Mutex<Vec<String>>,
}

impl TestResolver {
    /// Maps `host` to exactly these socket addresses (their ports are dialled as given).
    pub fn set(&self, host: &str, addrs: Vec<SocketAddr>) {
        self.table.lock().unwrap().insert(host.to_owned(), addrs);
    }

    /// Every name looked up so far, in order.
    pub fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

impl Resolver for TestResolver {
    fn resolve(
        &self,
        host: &str,
        _port: u16,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + '_>> {
        self.asked.lock().unwrap().push(host.to_owned());
        let found = self.table.lock().unwrap().get(host).cloned();
        let host = host.to_owned();
        Box::pin(async move {
            found.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("test resolver: no entry for {host}"),
                )
            })
        })
    }
}

// === spy secret store ===

/// Wraps a store and records every `get` (namespace and name), so tests can show that a
/// denied request never loads a secret.
#[derive(Debug)]
pub struct SpyStore {
    inner: Box<dyn SecretStore>,
    gets: Mutex<Vec<(Namespace, CredentialName)>>,
}

impl SpyStore {
    /// Wraps `inner`.
    pub fn new(inner: Box<dyn SecretStore>) -> Self {
        Self {
            inner,
            gets: Mutex::default(),
        }
    }

    /// Every `get` so far, as `namespace/name`.
    pub fn gets(&self) -> Vec<String> {
        self.gets
            .lock()
            .unwrap()
            .iter()
            .map(|(ns, name)| format!("{ns}/{name}"))
            .collect()
    }
}

impl SecretStore for SpyStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn get(
        &self,
        namespace: &Namespace,
        name: &CredentialName,
    ) -> Result<Option<Secret>, SecretError> {
        self.gets
            .lock()
            .unwrap()
            .push((namespace.clone(), name.clone()));
        self.inner.get(namespace, name)
    }

    fn list(&self, tenant: Option<&TenantId>) -> Result<Vec<SecretInfo>, SecretError> {
        self.inner.list(tenant)
    }

    fn replace(&self, id: &SecretId, current: &Secret, new: &Secret) -> Result<bool, SecretError> {
        self.inner.replace(id, current, new)
    }
}

// === hyper client through the proxy ===

/// A response read through the proxy.
#[derive(Debug)]
pub struct Resp {
    /// The status code.
    pub status: u16,
    /// The headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Resp {
    /// The body as JSON (panics if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// `error.code` of a JSON error body (panics if there is none).
    pub fn error_code(&self) -> String {
        let json = self.json();
        json["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error.code in {json}"))
            .to_owned()
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    /// Asserts the status and the JSON error code.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status, self.error_code().as_str()),
            (status, code),
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
    }
}

/// An absolute-form request to `url` with `Host` from the URL and, given a token,
/// `Proxy-Authorization: Bearer <token>`.
pub fn request(method: &str, url: &str, token: Option<&str>) -> http::request::Builder {
    let uri: http::Uri = url.parse().unwrap();
    let mut b = Request::builder().method(method).uri(uri.clone());
    if let Some(authority) = uri.authority() {
        b = b.header(header::HOST, authority.as_str());
    }
    if let Some(token) = token {
        b = b.header(header::PROXY_AUTHORIZATION, format!("Bearer {token}"));
    }
    b
}

/// A GET request with an empty body (see [`request`]).
pub fn get(url: &str, token: Option<&str>) -> Request<Full<Bytes>> {
    request("GET", url, token).body(Full::default()).unwrap()
}

/// `Proxy-Authorization: Basic` with the token as password.
pub fn basic_proxy_auth(token: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("agent:{token}")))
}

/// One HTTP/1.1 keep-alive connection to the proxy: several requests, one after another.
pub struct ProxyConn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    task: JoinHandle<()>,
}

impl Drop for ProxyConn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ProxyConn {
    /// Connects.
    pub async fn open(addr: SocketAddr) -> Self {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        Self { sender, task }
    }

    /// Sends a request on this connection and reads the whole response (10 s at most).
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Resp {
        self.send_within(req, Duration::from_secs(10)).await
    }

    /// As [`ProxyConn::send`], waiting `limit` at most (for tests under heavy load).
    pub async fn send_within(&mut self, req: Request<Full<Bytes>>, limit: Duration) -> Resp {
        let exchange = async {
            self.sender.ready().await.expect("proxy connection closed");
            let resp = self.sender.send_request(req).await.unwrap();
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            Resp {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body,
            }
        };
        tokio::time::timeout(limit, exchange)
            .await
            .unwrap_or_else(|_| panic!("no response from the proxy within {limit:?}"))
    }

    /// Whether the proxy has closed this connection.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

// === raw sockets ===

/// A response parsed from raw bytes.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// The status code; 0 if the connection closed without a response.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl RawResponse {
    /// A header's first value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `error.code` of a JSON error body, if it has one.
    pub fn error_code(&self) -> Option<String> {
        let json: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        json["error"]["code"].as_str().map(str::to_owned)
    }
}

/// A raw TCP connection to the proxy, for wire-level tricks.
pub struct RawConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    /// Connects.
    pub async fn open(addr: SocketAddr) -> Self {
        Self {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    /// Writes bytes exactly as given.
    pub async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        match self.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Reads one response (10 s at most). `status` is 0 if the connection closed first.
    pub async fn read_response(&mut self) -> RawResponse {
        tokio::time::timeout(Duration::from_secs(10), self.read_response_inner())
            .await
            .expect("no response within 10 s")
    }

    async fn read_response_inner(&mut self) -> RawResponse {
        let closed = RawResponse {
            status: 0,
            headers: Vec::new(),
            body: Vec::new(),
        };
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            if !self.fill().await {
                return closed;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line in {head:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let find = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let mut body = Vec::new();
        if (100..200).contains(&status) || status == 204 || status == 304 {
            // No body.
        } else if let Some(len) = find("content-length") {
            let len: usize = len.parse().unwrap();
            while self.buf.len() < len {
                if !self.fill().await {
                    break;
                }
            }
            body = self.buf.drain(..len.min(self.buf.len())).collect();
        } else if find("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
            loop {
                let line_end = loop {
                    if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    if !self.fill().await {
                        return RawResponse {
                            status,
                            headers,
                            body,
                        };
                    }
                };
                let size_line = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
                let size =
                    usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16).unwrap();
                self.buf.drain(..line_end + 2);
                while self.buf.len() < size + 2 {
                    if !self.fill().await {
                        break;
                    }
                }
                if size == 0 {
                    // Trailers are not expected; drop the final CRLF.
                    let n = 2.min(self.buf.len());
                    self.buf.drain(..n);
                    break;
                }
                body.extend(self.buf.drain(..size));
                let n = 2.min(self.buf.len());
                self.buf.drain(..n);
            }
        } else {
            while self.fill().await {}
            body = std::mem::take(&mut self.buf);
        }
        RawResponse {
            status,
            headers,
            body,
        }
    }
}

/// Writes `bytes` on a fresh connection and reads one response.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> RawResponse {
    let mut conn = RawConn::open(addr).await;
    conn.write(bytes).await;
    conn.read_response().await
}

/// A raw request head: `METHOD TARGET HTTP/1.1`, the given header lines (each without CRLF),
/// then `Proxy-Authorization: Bearer <token>` if given, then the blank line.
pub fn raw_request(method: &str, target: &str, token: Option<&str>, headers: &[&str]) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\n");
    for h in headers {
        out.push_str(h);
        out.push_str("\r\n");
    }
    if let Some(token) = token {
        out.push_str(&format!("Proxy-Authorization: Bearer {token}\r\n"));
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The header values a bearer credential shows up as.
pub fn bearer(secret: &str) -> Vec<String> {
    vec![format!("Bearer {secret}")]
}

// === restarting a harness ===

impl Harness {
    /// Stops this harness's sidecar (its proxy and pipeline, which releases the audit log's
    /// lock) and opens a fresh one on the same policies and state directories, serving the
    /// proxy on a new port ([`Harness::proxy_addr`] changes). Nothing held in memory survives
    /// (token caches, pooled connections); everything on disk does (secrets, audit chain, CA).
    /// `connect_to` are the extra overrides the harness was started with
    /// ([`Config::connect_to`]). Needs a harness started without [`Config::spy_secrets`].
    pub async fn restart(&mut self, connect_to: &[(String, SocketAddr)]) {
        assert!(
            self.spy.is_none(),
            "restart needs a sidecar opened by Sidecar::open"
        );
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.proxy_task.abort();
        let _ = (&mut self.proxy_task).await;
        // `egress` must hold some pipeline while the old one goes: a throwaway one over a
        // scratch state dir (its own audit log), replaced below.
        let scratch = StateDir::open(&self.tmp.path().join("restart-scratch")).unwrap();
        let policy = Arc::new(PolicySet::load(&self.policies).unwrap_or_else(|e| panic!("{e}")));
        let store = secrets::open_store(policy.settings(), &self.state).unwrap();
        let scratch_audit = AuditLog::open(&scratch, 1 << 20).unwrap();
        let placeholder = Egress::new(
            policy,
            Arc::from(store),
            scratch_audit,
            self.resolver.clone(),
            HashMap::new(),
        )
        .unwrap();
        drop(std::mem::replace(&mut self.egress, Arc::new(placeholder)));
        self.interception_ca = None;

        let mut overrides: Vec<(Origin, SocketAddr)> = Vec::new();
        let mut add = |origin: &str, addr: SocketAddr| {
            let origin = Origin::parse(origin).unwrap();
            overrides.retain(|(o, _)| *o != origin);
            overrides.push((origin, addr));
        };
        for o in TLS_ORIGINS {
            add(o, self.upstream.addr);
        }
        for o in PLAIN_ORIGINS {
            add(o, self.plain.addr);
        }
        for (o, addr) in connect_to {
            add(o, *addr);
        }
        let options = Options {
            policies: self.policies.clone(),
            state: Some(self.state.path().to_owned()),
            connect_to: overrides,
            shadow: None,
        };
        // Connection tasks and response bodies still held by the old pipeline release the
        // audit log's lock as they end.
        let deadline = Instant::now() + Duration::from_secs(3);
        let sidecar = loop {
            match Sidecar::open_with_resolver(&options, self.resolver.clone()) {
                Ok(s) => break s,
                Err(behalf::serve::StartError::Audit(audit::AuditError::Locked { .. }))
                    if Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("restart: {e}"),
            }
        };
        self.interception_ca = Some(sidecar.ca.clone());
        self.egress = sidecar.egress.clone();
        let proxy = sidecar.proxy();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.proxy_addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        self.shutdown = Some(tx);
        self.proxy_task = tokio::spawn(proxy.serve(listener, 1024, async move {
            let _ = rx.await;
        }));
    }
}
