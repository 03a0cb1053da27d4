//! HTTPS through the forward proxy: `CONNECT`, decided per origin and then intercepted with
//! behalf's own CA. The real `curl` binary, trusting only the exported CA, reaches the TLS mock
//! under its real name with each user's own credential (HTTP/1.1 and HTTP/2 inside the tunnel);
//! wire-level clients show what is refused (no grant, no identity, another SNI, another `Host`,
//! an expired token) and that nothing then reaches the upstream; leaves are minted once per
//! host; and every CONNECT and every request inside is audited, without tokens or secrets.

use std::io;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use behalf::proxy::ca::{CA_DIR, CERT_FILE};
use bytes::Bytes;
use http::{Request, Version, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::support::*;

const GITHUB: &str = "api.github.test";
const GITHUB_443: &str = "api.github.test:443";
const REPO: &str = "/repos/acme/web";
const REPO_URL: &str = "https://api.github.test/repos/acme/web";

/// A harness whose TLS mock answers with a fixed JSON body naming the target (no echo of the
/// request headers, so these tests do not depend on response scrubbing).
async fn harness() -> Harness {
    let h = Harness::start().await;
    h.upstream
        .respond(|r| json_response(200, serde_json::json!({ "target": r.target })));
    h
}

fn mints(h: &Harness) -> u64 {
    h.interception_ca
        .as_ref()
        .expect("the harness sidecar has an interception CA")
        .mints()
}

fn ca_pem(h: &Harness) -> PathBuf {
    h.state.join(CA_DIR).join(CERT_FILE)
}

fn bearer(secret: &str) -> Vec<String> {
    vec![format!("Bearer {secret}")]
}

/// Asserts that `seen` is alice's or bob's `GET REPO` on api.github.test, with exactly
/// `secret` injected and no proxy identity forwarded.
fn assert_github_get(h: &Harness, seen: &Recorded, secret: &str) {
    assert_eq!(seen.method, "GET", "{seen:#?}");
    assert_eq!(seen.target, REPO, "{seen:#?}");
    assert_eq!(seen.sni.as_deref(), Some(GITHUB), "{seen:#?}");
    assert_eq!(seen.host(), GITHUB, "{seen:#?}");
    assert_eq!(seen.header("authorization"), bearer(secret), "{seen:#?}");
    assert!(seen.header("proxy-authorization").is_empty(), "{seen:#?}");
    for (name, value) in &seen.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        for token in [&h.alice, &h.bob, &h.carol] {
            assert!(
                !value.contains(token.as_str()),
                "a token reached the upstream in {name}"
            );
        }
    }
}

// === curl ===

/// One `curl` run: its exit code, the CONNECT and final status codes, the HTTP version used
/// inside the tunnel, the body and stderr.
#[derive(Debug)]
struct CurlRun {
    exit: Option<i32>,
    connect: u16,
    status: u16,
    version: String,
    body: String,
    stderr: String,
}

impl CurlRun {
    fn from_output(out: Output) -> Self {
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, last) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
        let mut w = last.split(' ');
        let mut code = || w.next().and_then(|c| c.parse().ok()).unwrap_or(0);
        let (connect, status) = (code(), code());
        Self {
            exit: out.status.code(),
            connect,
            status,
            version: w.next().unwrap_or("").to_owned(),
            body: body.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// The body as JSON (panics, showing the run, if it is not).
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {self:#?}"))
    }
}

/// Runs `curl` with `args`, trusting only behalf's exported CA, in an environment without any
/// proxy or CA settings except `env`.
async fn curl(h: &Harness, args: &[&str], env: &[(&str, String)]) -> CurlRun {
    let mut cmd = Command::new("curl");
    // `-q` first: ignore any ~/.curlrc.
    cmd.args(["-q", "-sS", "--max-time", "10", "--cacert"])
        .arg(ca_pem(h))
        .args(["-w", "\n%{http_connect} %{response_code} %{http_version}"])
        .args(args);
    for var in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
        "no_proxy",
        "NO_PROXY",
        "CURL_CA_BUNDLE",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("curl runs (apt-get install -y curl)");
    CurlRun::from_output(out)
}

fn proxy_header(token: &str) -> String {
    format!("Proxy-Authorization: Bearer {token}")
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_gets_each_users_own_credential_over_http1_and_http2_in_the_tunnel() {
    let h = harness().await;
    let proxy = format!("http://{}", h.proxy_addr);
    let mut expected = Vec::new();
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        for (user, token, secret) in [
            ("alice", &h.alice, ALICE_GITHUB),
            ("bob", &h.bob, BOB_GITHUB),
        ] {
            let header = proxy_header(token);
            let run = curl(
                &h,
                &["--proxy", &proxy, "--proxy-header", &header, flag, REPO_URL],
                &[],
            )
            .await;
            assert_eq!(
                (run.exit, run.connect, run.status, run.version.as_str()),
                (Some(0), 200, 200, version),
                "{user} {flag}: {run:#?}"
            );
            assert_eq!(run.json()["target"], REPO, "{run:#?}");
            expected.push((user, secret));
        }
    }

    let seen = h.upstream.requests();
    assert_eq!(seen.len(), expected.len(), "{seen:#?}");
    for (r, (_, secret)) in seen.iter().zip(&expected) {
        assert_github_get(&h, r, secret);
    }
    // Four tunnels to one host: one leaf.
    assert_eq!(mints(&h), 1);

    let mut want = Vec::new();
    for (user, _) in &expected {
        want.push(format!(
            "{user} allow - - 200 CONNECT https://api.github.test"
        ));
        want.push(format!(
            "{user} allow eng-github user:github_token 200 GET https://api.github.test{REPO}"
        ));
    }
    assert_eq!(h.audit_summary(want.len()).await, want);
    h.assert_audit_clean(&[&h.alice, &h.bob]);
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_with_https_proxy_in_the_environment_uses_basic_with_the_token_as_password() {
    let h = harness().await;
    let env = [(
        "HTTPS_PROXY",
        format!("http://u:{}@{}", h.alice, h.proxy_addr),
    )];
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let run = curl(&h, &[flag, REPO_URL], &env).await;
        assert_eq!(
            (run.exit, run.connect, run.status, run.version.as_str()),
            (Some(0), 200, 200, version),
            "{flag}: {run:#?}"
        );
        assert_eq!(run.json()["target"], REPO);
    }
    let seen = h.upstream.requests();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    for r in &seen {
        assert_github_get(&h, r, ALICE_GITHUB);
    }
    assert_eq!(
        h.audit_summary(4).await,
        [
            "alice allow - - 200 CONNECT https://api.github.test",
            "alice allow eng-github user:github_token 200 GET https://api.github.test/repos/acme/web",
            "alice allow - - 200 CONNECT https://api.github.test",
            "alice allow eng-github user:github_token 200 GET https://api.github.test/repos/acme/web",
        ]
    );
    h.assert_audit_clean(&[&h.alice]);
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_for_another_tenants_user_is_refused_at_connect() {
    let h = harness().await;
    let proxy = format!("http://{}", h.proxy_addr);
    let header = proxy_header(&h.carol);

    // globex has no grant at all for jira (an acme service): refused at CONNECT, before TLS.
    let run = curl(
        &h,
        &[
            "--proxy",
            &proxy,
            "--proxy-header",
            &header,
            "https://jira.test/rest/api/2/issue/X-1",
        ],
        &[],
    )
    .await;
    assert_eq!(run.exit, Some(56), "{run:#?}");
    assert_eq!(run.connect, 403, "{run:#?}");
    assert!(run.stderr.contains("403"), "{run:#?}");

    // carol does hold a grant for api.github.test (globex's own repos), so her tunnel opens,
    // but acme's repository inside it is still refused by the pipeline.
    let run = curl(
        &h,
        &["--proxy", &proxy, "--proxy-header", &header, REPO_URL],
        &[],
    )
    .await;
    assert_eq!(
        (run.exit, run.connect, run.status),
        (Some(0), 200, 403),
        "{run:#?}"
    );
    assert_eq!(run.json()["error"]["code"], "egress_denied", "{run:#?}");

    h.upstream.assert_untouched("carol");
    assert_eq!(h.upstream.connections(), 0);
    // Only the admitted tunnel got a leaf.
    assert_eq!(mints(&h), 1);
    assert_eq!(
        h.audit_summary(3).await,
        [
            "carol deny no_grant_for_service - 403 CONNECT https://jira.test",
            "carol allow - - 200 CONNECT https://api.github.test",
            "carol deny route_not_granted - 403 GET https://api.github.test/repos/acme/web",
        ]
    );
    h.assert_audit_clean(&[&h.carol]);
}

// === wire-level tunnels ===

/// The proxy's answer to a CONNECT, read off the socket without reading past it.
#[derive(Debug)]
struct ConnectResponse {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl ConnectResponse {
    fn header(&self, name: &str) -> Option<String> {
        self.head
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
    }

    fn error_code(&self) -> String {
        let json: serde_json::Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {self:?} {:?}", String::from_utf8_lossy(&self.body)));
        json["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// Sends `CONNECT authority` (with `Proxy-Authorization: auth`, if given) on a fresh
/// connection and reads the response head byte by byte (and a refusal's body), leaving the
/// stream exactly where the tunnel would begin.
async fn send_connect(
    h: &Harness,
    authority: &str,
    auth: Option<&str>,
) -> (TcpStream, ConnectResponse) {
    let mut tcp = TcpStream::connect(h.proxy_addr).await.unwrap();
    let mut req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some(auth) = auth {
        req.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let read = async {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let b = tcp.read_u8().await.expect("the proxy closed mid-head");
            head.push(b);
        }
        let head = String::from_utf8(head).unwrap();
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line: {head:?}"));
        let mut resp = ConnectResponse {
            status,
            head,
            body: Vec::new(),
        };
        if status != 200
            && let Some(len) = resp.header("content-length")
        {
            let mut body = vec![0; len.parse().unwrap()];
            tcp.read_exact(&mut body).await.unwrap();
            resp.body = body;
        }
        resp
    };
    let resp = tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("no CONNECT response within 10 s");
    (tcp, resp)
}

fn bearer_auth(token: &str) -> String {
    format!("Bearer {token}")
}

/// A client trusting only the CA behalf exported to its state directory.
fn client_config(h: &Harness, alpn: &[&str], sni: bool) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca_pem(h)).unwrap())
        .unwrap();
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    config.enable_sni = sni;
    Arc::new(config)
}

/// A TLS handshake over `tcp` for `name` (sent as SNI when `sni`), 5 s at most.
async fn handshake(
    h: &Harness,
    tcp: TcpStream,
    name: &str,
    alpn: &[&str],
    sni: bool,
) -> io::Result<TlsStream<TcpStream>> {
    let connector = TlsConnector::from(client_config(h, alpn, sni));
    let name = ServerName::try_from(name.to_owned()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .expect("TLS handshake hung")
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// An HTTP client inside an intercepted tunnel.
struct Tunnel {
    sender: Sender,
    conn: JoinHandle<()>,
    /// The leaf certificate behalf presented.
    leaf: CertificateDer<'static>,
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

impl Tunnel {
    /// CONNECTs to `authority` as `token`'s principal (asserting 200), completes TLS for `sni`
    /// offering `alpn`, and speaks whatever ALPN picked.
    async fn open(h: &Harness, token: &str, authority: &str, sni: &str, alpn: &[&str]) -> Self {
        let (tcp, resp) = send_connect(h, authority, Some(&bearer_auth(token))).await;
        assert_eq!(resp.status, 200, "{resp:?}");
        let tls = handshake(h, tcp, sni, alpn, true)
            .await
            .unwrap_or_else(|e| panic!("TLS handshake inside the tunnel: {e}"));
        let (_, session) = tls.get_ref();
        let leaf = session.peer_certificates().unwrap()[0].clone().into_owned();
        let h2 = session.alpn_protocol() == Some(b"h2");
        assert_eq!(h2, alpn.first() == Some(&"h2"), "ALPN picked {h2}");
        let io = TokioIo::new(tls);
        let (sender, conn) = if h2 {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await.unwrap();
            let conn = tokio::spawn(async move {
                let _ = conn.await;
            });
            (Sender::H2(sender), conn)
        } else {
            let (sender, conn) = http1::handshake(io).await.unwrap();
            let conn = tokio::spawn(async move {
                let _ = conn.await;
            });
            (Sender::H1(sender), conn)
        };
        Self { sender, conn, leaf }
    }

    fn version(&self) -> Version {
        match self.sender {
            Sender::H1(_) => Version::HTTP_11,
            Sender::H2(_) => Version::HTTP_2,
        }
    }

    /// `GET path` naming `host`: `Host` in origin form over HTTP/1.1, `:authority` over
    /// HTTP/2.
    fn get(&self, host: &str, path: &str) -> Request<Full<Bytes>> {
        match self.sender {
            Sender::H1(_) => Request::get(path)
                .header(header::HOST, host)
                .body(Full::default())
                .unwrap(),
            Sender::H2(_) => Request::get(format!("https://{host}{path}"))
                .version(Version::HTTP_2)
                .body(Full::default())
                .unwrap(),
        }
    }

    /// Sends one request and reads the whole response (5 s at most).
    async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Resp, hyper::Error> {
        let exchange = async {
            let resp = match &mut self.sender {
                Sender::H1(s) => {
                    s.ready().await?;
                    s.send_request(req).await?
                }
                Sender::H2(s) => {
                    s.ready().await?;
                    s.send_request(req).await?
                }
            };
            let (parts, body) = resp.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok(Resp {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(Duration::from_secs(5), exchange)
            .await
            .expect("no response inside the tunnel within 5 s")
    }

    fn is_closed(&self) -> bool {
        match &self.sender {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tunnel_carries_requests_over_http1_and_http2_with_the_callers_credential() {
    let h = harness().await;
    for (alpn, token, secret) in [
        (ALPN_H1, &h.alice, ALICE_GITHUB),
        (ALPN_H2_H1, &h.bob, BOB_GITHUB),
    ] {
        h.upstream.clear();
        let mut t = Tunnel::open(&h, token, GITHUB_443, GITHUB, alpn).await;
        // Two requests on one tunnel (keep-alive, or two HTTP/2 streams).
        for _ in 0..2 {
            let resp = t.send(t.get(GITHUB, REPO)).await.unwrap();
            assert_eq!(resp.status, 200, "{:?}: {resp:?}", t.version());
            assert_eq!(resp.json()["target"], REPO);
        }
        // Another user's identity inside the tunnel changes nothing: the principal is the
        // one fixed at CONNECT, and the header goes no further.
        let other = if token == &h.alice { &h.bob } else { &h.alice };
        let mut req = t.get(GITHUB, REPO);
        req.headers_mut().insert(
            header::PROXY_AUTHORIZATION,
            bearer_auth(other).parse().unwrap(),
        );
        assert_eq!(t.send(req).await.unwrap().status, 200);
        let seen = h.upstream.requests();
        assert_eq!(seen.len(), 3, "{seen:#?}");
        for r in &seen {
            assert_github_get(&h, r, secret);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_without_a_grant_is_refused_in_plain_http_before_any_tls() {
    let h = harness().await;
    let cases = [
        // Another tenant's service.
        (&h.carol, "jira.test:443", "no_grant_for_service"),
        // Granted only to the `tooly` tool, never to the proxy.
        (&h.alice, "tooly.test:443", "client_not_granted"),
        // No service at all.
        (&h.alice, "unknown.test:443", "no_service"),
        // A granted host on a port no service names.
        (&h.alice, "api.github.test:8443", "no_service"),
    ];
    for (token, authority, _) in &cases {
        let (tcp, resp) = send_connect(&h, authority, Some(&bearer_auth(token))).await;
        assert_eq!(resp.status, 403, "{authority}: {resp:?}");
        assert_eq!(resp.error_code(), "egress_denied", "{authority}");
        assert!(
            resp.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "{resp:?}"
        );
        // No tunnel: a ClientHello on this connection is not answered with TLS.
        let host = authority.split(':').next().unwrap();
        let err = handshake(&h, tcp, host, ALPN_H1, true).await;
        assert!(err.is_err(), "{authority}: TLS after a refused CONNECT");
    }
    h.upstream.assert_untouched("refused CONNECTs");
    assert_eq!(h.upstream.connections(), 0);
    assert_eq!(mints(&h), 0, "a leaf was minted for a refused CONNECT");

    let records = h.wait_audit(cases.len()).await;
    let connects: Vec<_> = records.iter().filter(|r| r.method == "CONNECT").collect();
    assert_eq!(connects.len(), cases.len(), "{records:#?}");
    for (r, (_, authority, reason)) in connects.iter().zip(&cases) {
        assert_eq!(r.decision, "deny", "{r:#?}");
        assert_eq!(r.reason.as_deref(), Some(*reason), "{authority}: {r:#?}");
        assert_eq!(r.status, Some(403));
        assert_eq!(r.client.as_deref(), Some("proxy"));
    }
    h.assert_audit_clean(&[&h.alice, &h.carol]);
}

#[tokio::test(flavor = "multi_thread")]
async fn unauthenticated_connect_is_407() {
    let h = harness().await;
    let expired = h.expired_token("acme", "alice");
    let foreign = {
        // Signed with another key: a valid-looking token behalf did not issue.
        let other = tempfile::tempdir().unwrap();
        let state = behalf::state::StateDir::open(&other.path().join("state")).unwrap();
        behalf::identity::dev::mint(
            true,
            &state,
            &behalf::principal::TenantId::parse("acme").unwrap(),
            &behalf::principal::UserId::parse("alice").unwrap(),
            &[behalf::principal::GroupId::parse("eng").unwrap()],
            Duration::from_secs(600),
        )
        .unwrap()
    };
    let cases: [(&str, Option<String>); 4] = [
        ("none", None),
        ("garbage", Some("Bearer not-a-token".into())),
        ("expired", Some(bearer_auth(&expired))),
        ("foreign key", Some(bearer_auth(&foreign))),
    ];
    for (what, auth) in &cases {
        let (_, resp) = send_connect(&h, GITHUB_443, auth.as_deref()).await;
        assert_eq!(resp.status, 407, "{what}: {resp:?}");
        assert_eq!(resp.error_code(), "unauthenticated", "{what}");
        assert!(
            resp.header("proxy-authenticate")
                .is_some_and(|v| v.contains("Bearer")),
            "{what}: {resp:?}"
        );
    }
    h.upstream.assert_untouched("unauthenticated CONNECTs");
    assert_eq!(mints(&h), 0);
    let records = h.wait_audit(cases.len()).await;
    assert_eq!(records.len(), cases.len(), "{records:#?}");
    for r in &records {
        assert_eq!(
            (r.method.as_str(), r.decision.as_str(), r.status),
            ("CONNECT", "deny", Some(407)),
            "{r:#?}"
        );
        assert_eq!(r.reason.as_deref(), Some("unauthenticated"));
        assert_eq!(r.user, None);
    }
    h.assert_audit_clean(&[&expired, &foreign, "not-a-token"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_hello_for_another_host_is_refused() {
    let h = harness().await;
    // alice may use slack.test too, but not through a tunnel to api.github.test.
    for (sni, send_sni) in [
        ("slack.test", true),
        ("API.GITHUB.TEST.evil", true),
        (GITHUB, false),
    ] {
        let (tcp, resp) = send_connect(&h, GITHUB_443, Some(&bearer_auth(&h.alice))).await;
        assert_eq!(resp.status, 200, "{resp:?}");
        let result = handshake(&h, tcp, sni, ALPN_H2_H1, send_sni).await;
        assert!(
            result.is_err(),
            "handshake with SNI {sni:?} (sent: {send_sni}) succeeded inside a tunnel to {GITHUB}"
        );
    }
    assert_eq!(mints(&h), 0, "a leaf was minted for a mismatched SNI");

    // The same tunnel with the CONNECT host as SNI works (so the refusals above are the SNI's).
    let mut t = Tunnel::open(&h, &h.alice, GITHUB_443, GITHUB, ALPN_H1).await;
    assert_eq!(t.send(t.get(GITHUB, REPO)).await.unwrap().status, 200);
    assert_github_get(&h, &h.upstream.only(), ALICE_GITHUB);
    assert_eq!(mints(&h), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_inside_a_tunnel_to_another_origin_is_refused() {
    let h = harness().await;
    for alpn in [ALPN_H1, ALPN_H2_H1] {
        let mut t = Tunnel::open(&h, &h.alice, GITHUB_443, GITHUB, alpn).await;
        let version = t.version();
        // alice's grant covers slack.test's `GET /api/**`, but not inside this tunnel.
        for host in ["slack.test", "slack.test:443", "api.github.test:8443"] {
            let resp = t
                .send(t.get(host, "/api/conversations.list"))
                .await
                .unwrap();
            resp.assert_error(403, "egress_denied");
            assert!(
                resp.json()["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("inside a tunnel"),
                "{version:?} {host}: {resp:?}"
            );
        }
        // The tunnel still serves its own origin afterwards.
        let resp = t.send(t.get(GITHUB, REPO)).await.unwrap();
        assert_eq!(resp.status, 200, "{version:?}: {resp:?}");
    }
    // An absolute-form target inside an HTTP/1.1 tunnel, with a matching-looking Host.
    let mut t = Tunnel::open(&h, &h.alice, GITHUB_443, GITHUB, ALPN_H1).await;
    let req = Request::get("https://slack.test/api/conversations.list")
        .header(header::HOST, GITHUB)
        .body(Full::default())
        .unwrap();
    t.send(req)
        .await
        .unwrap()
        .assert_error(403, "egress_denied");

    // Only the two same-origin requests reached the mock (which serves slack.test too).
    let seen = h.upstream.requests();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    for r in &seen {
        assert_github_get(&h, r, ALICE_GITHUB);
    }
    assert!(
        !seen
            .iter()
            .any(|r| r.header("authorization") == bearer(ACME_SLACK)),
        "slack's credential was injected"
    );

    let records = h.wait_audit(12).await;
    let denied: Vec<_> = records
        .iter()
        .filter(|r| r.method == "GET" && r.decision == "deny")
        .collect();
    assert_eq!(denied.len(), 7, "{records:#?}");
    for r in denied {
        assert_eq!(r.status, Some(403), "{r:#?}");
        assert_eq!(r.credential, None, "{r:#?}");
    }
    h.assert_audit_clean(&[&h.alice]);
}

/// The `exp` claim of a JWT, as a time.
fn exp_of(token: &str) -> SystemTime {
    let payload = token.split('.').nth(1).unwrap();
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    UNIX_EPOCH + Duration::from_secs(claims["exp"].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tunnel_is_closed_when_its_token_expires() {
    let h = harness().await;
    let short = h.token_with_ttl("acme", "alice", &["eng"], Duration::from_secs(2));
    let exp = exp_of(&short);

    // Each over HTTP/1.1 and HTTP/2, next to a tunnel with a long-lived token.
    let mut short_h1 = Tunnel::open(&h, &short, GITHUB_443, GITHUB, ALPN_H1).await;
    let mut short_h2 = Tunnel::open(&h, &short, GITHUB_443, GITHUB, ALPN_H2_H1).await;
    let mut long = Tunnel::open(&h, &h.bob, GITHUB_443, GITHUB, ALPN_H1).await;
    for t in [&mut short_h1, &mut short_h2, &mut long] {
        let resp = t.send(t.get(GITHUB, REPO)).await.unwrap();
        assert_eq!(resp.status, 200, "{resp:?}");
    }
    assert!(
        SystemTime::now() < exp,
        "too slow: the token expired already"
    );
    assert_eq!(h.upstream.requests().len(), 3);

    let left = exp.duration_since(SystemTime::now()).unwrap_or_default();
    tokio::time::sleep(left + Duration::from_millis(500)).await;

    for (what, t) in [("HTTP/1.1", &mut short_h1), ("HTTP/2", &mut short_h2)] {
        assert!(t.is_closed(), "{what}: the tunnel is still open after exp");
        let sent = t.send(t.get(GITHUB, REPO)).await;
        assert!(
            sent.is_err(),
            "{what}: a request went through after exp: {sent:?}"
        );
    }
    // The long-lived tunnel is unaffected.
    let resp = long.send(long.get(GITHUB, REPO)).await.unwrap();
    assert_eq!(resp.status, 200, "{resp:?}");

    let seen = h.upstream.requests();
    assert_eq!(seen.len(), 4, "{seen:#?}");
    assert_eq!(
        seen.iter()
            .filter(|r| r.header("authorization") == bearer(ALICE_GITHUB))
            .count(),
        2
    );
    h.assert_audit_clean(&[&short, &h.bob]);
}

#[tokio::test(flavor = "multi_thread")]
async fn leaf_certificates_are_reused_from_the_cache() {
    let h = harness().await;
    assert_eq!(mints(&h), 0);
    let mut first = Tunnel::open(&h, &h.alice, GITHUB_443, GITHUB, ALPN_H1).await;
    assert_eq!(mints(&h), 1);
    // A second tunnel (another user, HTTP/2) to the same host: same leaf, no new mint.
    let mut second = Tunnel::open(&h, &h.bob, GITHUB_443, GITHUB, ALPN_H2_H1).await;
    assert_eq!(mints(&h), 1);
    assert_eq!(first.leaf, second.leaf, "a second leaf for the same host");
    for t in [&mut first, &mut second] {
        assert_eq!(t.send(t.get(GITHUB, REPO)).await.unwrap().status, 200);
    }
    // Another host gets its own leaf, minted once.
    let slack = Tunnel::open(&h, &h.alice, "slack.test:443", "slack.test", ALPN_H1).await;
    assert_eq!(mints(&h), 2);
    assert_ne!(slack.leaf, first.leaf);
    let again = Tunnel::open(&h, &h.bob, "slack.test:443", "slack.test", ALPN_H1).await;
    assert_eq!(again.leaf, slack.leaf);
    // The CONNECT host is case-insensitive: the same cached leaf.
    let upper = Tunnel::open(&h, &h.alice, "API.GitHub.test:443", GITHUB, ALPN_H1).await;
    assert_eq!(upper.leaf, first.leaf);
    assert_eq!(mints(&h), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn connects_and_each_request_inside_are_audited_without_secrets() {
    let h = harness().await;
    let mut t = Tunnel::open(&h, &h.alice, GITHUB_443, GITHUB, ALPN_H1).await;
    assert_eq!(t.send(t.get(GITHUB, REPO)).await.unwrap().status, 200);
    // Outside alice's rules: denied inside the tunnel by the same pipeline.
    t.send(t.get(GITHUB, "/repos/globex/web"))
        .await
        .unwrap()
        .assert_error(403, "egress_denied");
    drop(t);
    let mut t = Tunnel::open(&h, &h.bob, GITHUB_443, GITHUB, ALPN_H2_H1).await;
    assert_eq!(t.send(t.get(GITHUB, REPO)).await.unwrap().status, 200);
    let (_, resp) = send_connect(&h, "jira.test:443", Some(&bearer_auth(&h.carol))).await;
    assert_eq!(resp.status, 403);

    assert_eq!(
        h.audit_summary(6).await,
        [
            "alice allow - - 200 CONNECT https://api.github.test",
            "alice allow eng-github user:github_token 200 GET https://api.github.test/repos/acme/web",
            "alice deny route_not_granted - 403 GET https://api.github.test/repos/globex/web",
            "bob allow - - 200 CONNECT https://api.github.test",
            "bob allow eng-github user:github_token 200 GET https://api.github.test/repos/acme/web",
            "carol deny no_grant_for_service - 403 CONNECT https://jira.test",
        ]
    );
    // `audit_records` verified the chain; every record names its tenant and the proxy.
    for r in h.audit_records() {
        assert_eq!(r.client.as_deref(), Some("proxy"), "{r:#?}");
        assert!(r.tenant.is_some(), "{r:#?}");
    }
    h.assert_audit_clean(&[&h.alice, &h.bob, &h.carol]);
}

#[tokio::test(flavor = "multi_thread")]
async fn open_tunnels_count_against_max_connections() {
    let h = Harness::start_with(Config {
        max_connections: Some(2),
        ..Config::default()
    })
    .await;
    let first = Tunnel::open(&h, &h.alice, GITHUB_443, GITHUB, ALPN_H1).await;
    let mut second = Tunnel::open(&h, &h.bob, GITHUB_443, GITHUB, ALPN_H2_H1).await;

    // A third connection waits in the accept queue while both tunnels are open...
    let mut third = TcpStream::connect(h.proxy_addr).await.unwrap();
    let connect = format!(
        "CONNECT {GITHUB_443} HTTP/1.1\r\nHost: {GITHUB_443}\r\nProxy-Authorization: {}\r\n\r\n",
        bearer_auth(&h.alice)
    );
    third.write_all(connect.as_bytes()).await.unwrap();
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(300), third.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "a third connection was served with two tunnels open: {early:?}"
    );
    // (the open tunnels still work)
    let resp = second.send(second.get(GITHUB, REPO)).await.unwrap();
    assert_eq!(resp.status, 200, "{resp:?}");

    // ...and is served once one of them closes.
    drop(first);
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
        .await
        .expect("the third connection was not served after a tunnel closed")
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
}
