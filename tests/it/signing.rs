//! Request signing end to end (issue 8): AWS SigV4 and HMAC signatures made by behalf at the
//! egress boundary, through the forward proxy and through a sandboxed tool, with real sockets
//! and real TLS.
//!
//! The mock APIs here check every signature server-side, as AWS, Slack or a webhook receiver
//! would, with an implementation written in this file from the specifications (ring's SHA-256
//! and HMAC over a canonical request rebuilt from what actually arrived: the method, the path
//! and query as received, the headers listed in `SignedHeaders`, the real body's hash). None
//! of behalf's signing code is called here, so a test passes only if an independent verifier
//! accepts what behalf sent. `sigv4_verifier_rejects_*` and `hmac_verifiers_reject_*` show
//! that the verifiers refuse altered copies of requests they accepted, so that an accepted
//! request means something.
//!
//! The tests also check that the signing secrets never reach the wire, the caller or the
//! audit log, and that signing headers the caller forged are replaced.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use behalf::egress::BoxBody;
use behalf::policy::PolicySet;
use behalf::secrets::{self, Secret, SecretId};
use behalf::state::StateDir;
use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use ring::{digest, hmac};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::support::tools::{ToolConfig, ToolHarness, canaries};
use crate::support::*;

// === credentials ===

/// AWS credentials as stored (JSON) and as the mock API knows them.
#[derive(Debug, Clone, Copy)]
struct AwsKeys {
    id: &'static str,
    secret: &'static str,
    token: Option<&'static str>,
}

impl AwsKeys {
    /// The stored form: `{"access_key_id", "secret_access_key", "session_token"?}`.
    fn json(&self) -> String {
        let mut v = json!({ "access_key_id": self.id, "secret_access_key": self.secret });
        if let Some(t) = self.token {
            v["session_token"] = json!(t);
        }
        v.to_string()
    }

    /// Every value that must never be seen by a caller or an audit reader.
    fn values(&self) -> Vec<&'static str> {
        let mut v = vec![self.id, self.secret];
        v.extend(self.token);
        v
    }
}

/// alice's long-term keys (`acme/alice/aws_s3`).
const ALICE_AWS: AwsKeys = AwsKeys {
    id: "AKIAALICEEXAMPLE0001",
    secret: "alice/wJalrXUtnFEMI/K7MDENG+bPxRfiCY01",
    token: None,
};
/// bob's temporary keys with a session token (`acme/bob/aws_s3`).
const BOB_AWS: AwsKeys = AwsKeys {
    id: "ASIABOBEXAMPLE000002",
    secret: "bob/tmpXUtnFEMI/K7MDENG+bPxRfiCY02",
    token: Some("IQoJb3JpZ2luX2VjEBob//session+token/0002=="),
};
/// acme's shared keys for the execute-api service (`acme/aws_exec`).
const ACME_EXEC_AWS: AwsKeys = AwsKeys {
    id: "AKIAACMEEXECEXAMPLE3",
    secret: "acme-exec/K7MDENG+bPxRfiCY03",
    token: None,
};
/// alice's keys for the SigV4 stand-in of the GitHub API in the tool tests.
const TOOL_AWS: AwsKeys = AwsKeys {
    id: "ASIATOOLALICE0000007",
    secret: "tool/alice/K7MDENG+bPxRfiCY07",
    token: Some("tool-session-token-alice-0007/xyz=="),
};
/// acme's Slack-style signing secret (`acme/slack_signing_secret`).
const ACME_SLACK_SIGNING: &str = "8f742231b10e8888abcd99acme85a5";
/// acme's key for the generic HMAC orders API (`acme/orders_hmac_key`).
const ACME_ORDERS_KEY: &str = "orders-hmac-key-acme-s3cret";

/// Every signing secret of the proxy tests.
fn signing_values() -> Vec<&'static str> {
    let mut v = Vec::new();
    for keys in [ALICE_AWS, BOB_AWS, ACME_EXEC_AWS] {
        v.extend(keys.values());
    }
    v.extend([ACME_SLACK_SIGNING, ACME_ORDERS_KEY]);
    v
}

/// Stores a secret in a running harness's file store (the sidecar re-reads a replaced file).
fn store_secret(policies: &Path, state: &StateDir, id: &str, value: &str) {
    let policy = PolicySet::load(policies).unwrap_or_else(|e| panic!("{e}"));
    let store = secrets::open_store(policy.settings(), state).unwrap();
    store
        .set(&SecretId::parse(id).unwrap(), &Secret::from_text(value))
        .unwrap();
}

// === hosts, services, grants ===

/// S3, path-style buckets; alice and bob each sign with their own keys.
const S3_HOST: &str = "s3.amazonaws.test";
/// An S3 endpoint whose service signs for the wrong region (the API expects `us-east-1`).
const S3_EU_HOST: &str = "s3.eu.amazonaws.test";
/// API Gateway (`execute-api`, not S3: double URI encoding, no `x-amz-content-sha256`).
const EXEC_HOST: &str = "execute-api.amazonaws.test";
/// S3 with `unsigned_payload = true`.
const STREAM_HOST: &str = "stream.s3.amazonaws.test";
/// Slack-style `X-Slack-Signature`.
const SLACKISH_HOST: &str = "hooks.slackish.test";
/// Generic base64 HMAC-SHA512 `X-Signature`.
const ORDERS_HOST: &str = "api.orders.test";
const API_HOSTS: &[&str] = &[
    S3_HOST,
    S3_EU_HOST,
    EXEC_HOST,
    STREAM_HOST,
    SLACKISH_HOST,
    ORDERS_HOST,
];

/// The service files, trusting the mock API's CA at `pem` (`tls_roots`).
fn services(pem: &str, stream: bool) -> Vec<(String, String)> {
    let service = |name: &str, host: &str, credential: &str, inject: &str| {
        (
            name.to_owned(),
            format!(
                "[service]\nname = \"{name}\"\norigins = [\"https://{host}\"]\n\
                 credential = {credential}\ninject = {inject}\ntls_roots = [{pem:?}]\n"
            ),
        )
    };
    let mut out = vec![
        service(
            "s3",
            S3_HOST,
            r#"{ name = "aws_s3", scope = "user" }"#,
            r#"{ aws_sigv4 = { region = "us-east-1", service = "s3" } }"#,
        ),
        service(
            "s3-eu",
            S3_EU_HOST,
            r#"{ name = "aws_s3", scope = "user" }"#,
            r#"{ aws_sigv4 = { region = "eu-central-1", service = "s3" } }"#,
        ),
        service(
            "exec",
            EXEC_HOST,
            r#"{ name = "aws_exec", scope = "tenant" }"#,
            r#"{ aws_sigv4 = { region = "eu-west-1", service = "execute-api" } }"#,
        ),
        service(
            "slackish",
            SLACKISH_HOST,
            r#"{ name = "slack_signing_secret", scope = "tenant" }"#,
            r#"{ hmac = { header = "X-Slack-Signature", algorithm = "sha256", encoding = "hex", message = "v0:{timestamp}:{body}", prefix = "v0=", timestamp_header = "X-Slack-Request-Timestamp", timestamp = "unix" } }"#,
        ),
        service(
            "orders",
            ORDERS_HOST,
            r#"{ name = "orders_hmac_key", scope = "tenant" }"#,
            r#"{ hmac = { header = "X-Signature", algorithm = "sha512", encoding = "base64", message = "{method}\n{path}\n{timestamp}\n{body}", timestamp_header = "X-Timestamp" } }"#,
        ),
    ];
    if stream {
        out.push(service(
            "s3-stream",
            STREAM_HOST,
            r#"{ name = "aws_s3", scope = "user" }"#,
            r#"{ aws_sigv4 = { region = "us-east-1", service = "s3", unsigned_payload = true } }"#,
        ));
    }
    out
}

/// acme's grants for those services (the proxy, group eng: alice and bob).
fn grants(stream: bool) -> String {
    let grant = |service: &str, allow: &str| {
        format!(
            "[[grant]]\nid = \"eng-{service}\"\nwho = [\"group:eng\"]\nclients = [\"proxy\"]\n\
             service = \"{service}\"\nallow = {allow}\n\n"
        )
    };
    let mut out = [
        grant("s3", r#"["GET /**", "PUT /**"]"#),
        grant("s3-eu", r#"["GET /**"]"#),
        grant("exec", r#"["GET /**", "POST /**"]"#),
        grant("slackish", r#"["GET /**", "POST /**"]"#),
        grant("orders", r#"["GET /**", "POST /**", "PUT /**"]"#),
    ]
    .concat();
    if stream {
        out.push_str(&grant("s3-stream", r#"["PUT /**"]"#));
    }
    out
}

/// A proxy harness with the signing services in front of one verifying mock [`Api`].
struct Signing {
    h: Harness,
    api: Api,
    _ca_dir: tempfile::TempDir,
}

impl Signing {
    async fn start() -> Self {
        Self::start_with("", false).await
    }

    /// `limits`: extra `[limits]` lines; `stream`: add the `unsigned_payload` service.
    async fn start_with(limits: &str, stream: bool) -> Self {
        let ca_dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new(&ca_dir.path().join("api-ca.pem"));
        let api = Api::start(ca.server_config(API_HOSTS)).await;
        let pem = ca.pem_path.display().to_string();
        let config = Config {
            limits: limits.to_owned(),
            extra_services: services(&pem, stream),
            acme_extra: grants(stream),
            connect_to: API_HOSTS
                .iter()
                .map(|host| (format!("https://{host}"), api.addr))
                .collect(),
            ..Config::default()
        };
        let h = Harness::start_with(config).await;
        for (id, value) in [
            ("acme/alice/aws_s3", ALICE_AWS.json()),
            ("acme/bob/aws_s3", BOB_AWS.json()),
            ("acme/aws_exec", ACME_EXEC_AWS.json()),
            ("acme/slack_signing_secret", ACME_SLACK_SIGNING.to_owned()),
            ("acme/orders_hmac_key", ACME_ORDERS_KEY.to_owned()),
        ] {
            store_secret(&h.policies, &h.state, id, &value);
        }
        api.respond(verifying_api);
        Self {
            h,
            api,
            _ca_dir: ca_dir,
        }
    }

    /// Asserts that no signing secret (nor any of `also`) reached the API: not in a header,
    /// not in the target, not in a body.
    fn assert_no_secret_on_the_wire(&self, also: &[&str]) {
        let secrets: Vec<&str> = [ALICE_AWS.secret, BOB_AWS.secret, ACME_EXEC_AWS.secret]
            .into_iter()
            .chain([ACME_SLACK_SIGNING, ACME_ORDERS_KEY])
            .chain(also.iter().copied())
            .collect();
        for r in self.api.requests() {
            let mut wire = format!("{} {}\n", r.method, r.target).into_bytes();
            for (name, value) in &r.headers {
                wire.extend_from_slice(format!("{name}: ").as_bytes());
                wire.extend_from_slice(value.as_bytes());
                wire.push(b'\n');
            }
            wire.extend_from_slice(&r.body);
            for s in &secrets {
                assert!(
                    !contains(&wire, s.as_bytes()),
                    "{s:?} reached the upstream in {} {}",
                    r.method,
                    r.target
                );
            }
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

// === the mock API: a TLS HTTP/1.1 server that sees request heads before bodies ===

type ApiHandler = Arc<dyn Fn(&Recorded) -> Response<BoxBody> + Send + Sync>;

/// A TLS upstream that records each request head as soon as it arrives (before its body, so
/// streaming is observable) and each whole request, then answers with its handler.
struct Api {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    heads: Arc<Mutex<Vec<String>>>,
    connections: Arc<AtomicUsize>,
    handler: Arc<Mutex<ApiHandler>>,
    task: JoinHandle<()>,
}

impl Drop for Api {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Api {
    async fn start(tls: Arc<rustls::ServerConfig>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let heads: Arc<Mutex<Vec<String>>> = Arc::default();
        let connections = Arc::new(AtomicUsize::new(0));
        let default: ApiHandler = Arc::new(echo);
        let handler = Arc::new(Mutex::new(default));
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let task = {
            let (requests, heads, connections, handler) = (
                requests.clone(),
                heads.clone(),
                connections.clone(),
                handler.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let id = connections.fetch_add(1, Ordering::SeqCst);
                    let (requests, heads, handler, acceptor) = (
                        requests.clone(),
                        heads.clone(),
                        handler.clone(),
                        acceptor.clone(),
                    );
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let sni = tls.get_ref().1.server_name().map(str::to_owned);
                        let service = service_fn(move |req: Request<Incoming>| {
                            let (requests, heads, handler, sni) = (
                                requests.clone(),
                                heads.clone(),
                                handler.clone(),
                                sni.clone(),
                            );
                            async move {
                                let (parts, incoming) = req.into_parts();
                                let target = parts.uri.path_and_query().map_or_else(
                                    || parts.uri.to_string(),
                                    |p| p.as_str().to_owned(),
                                );
                                heads
                                    .lock()
                                    .unwrap()
                                    .push(format!("{} {target}", parts.method));
                                let body = incoming
                                    .collect()
                                    .await
                                    .map(|c| c.to_bytes())
                                    .unwrap_or_default();
                                let recorded = Recorded {
                                    method: parts.method.to_string(),
                                    target,
                                    headers: parts.headers,
                                    body,
                                    sni,
                                    connection: id,
                                    version: parts.version,
                                    authority: parts.uri.authority().map(|a| a.to_string()),
                                    alpn: None,
                                };
                                requests.lock().unwrap().push(recorded.clone());
                                let handler = handler.lock().unwrap().clone();
                                Ok::<_, Infallible>(handler(&recorded))
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    });
                }
            })
        };
        Self {
            addr,
            requests,
            heads,
            connections,
            handler,
            task,
        }
    }

    fn respond(&self, f: impl Fn(&Recorded) -> Response<BoxBody> + Send + Sync + 'static) {
        *self.handler.lock().unwrap() = Arc::new(f);
    }

    fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    fn only(&self) -> Recorded {
        let all = self.requests();
        assert_eq!(all.len(), 1, "expected exactly one API request: {all:#?}");
        all.into_iter().next().unwrap()
    }

    fn clear(&self) {
        self.requests.lock().unwrap().clear();
        self.heads.lock().unwrap().clear();
    }

    /// `METHOD target` of every request head seen so far (bodies may still be arriving).
    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    /// Waits until a request head has arrived; false if none did within `within`.
    async fn wait_for_head(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if !self.heads().is_empty() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        !self.heads().is_empty()
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// The verifying API behind every host of [`API_HOSTS`]: 200 `{"verified": true, ...}` when
/// the request's signature checks out, 403 `{"verified": false, "reason"}` otherwise.
fn verifying_api(r: &Recorded) -> Response<BoxBody> {
    let host = r.header("host").first().cloned().unwrap_or_default();
    let verdict: Result<Value, String> = match host.as_str() {
        // The eu service signs for eu-central-1; this API is in us-east-1.
        S3_HOST | S3_EU_HOST => verify_sigv4(r, &[ALICE_AWS, BOB_AWS], &S3_SCOPE).map(|v| v.json()),
        EXEC_HOST => verify_sigv4(r, &[ACME_EXEC_AWS], &EXEC_SCOPE).map(|v| v.json()),
        STREAM_HOST => verify_sigv4(r, &[ALICE_AWS], &STREAM_SCOPE).map(|v| v.json()),
        SLACKISH_HOST => verify_slack(r, ACME_SLACK_SIGNING).map(|()| json!({})),
        ORDERS_HOST => verify_generic(r, ACME_ORDERS_KEY).map(|()| json!({})),
        other => Err(format!("no API at host {other:?}")),
    };
    match verdict {
        Ok(mut v) => {
            v["verified"] = json!(true);
            v["bytes"] = json!(r.body.len());
            json_response(200, v)
        }
        Err(reason) => json_response(403, json!({ "verified": false, "reason": reason })),
    }
}

// === an independent SigV4 verifier ===

/// What the API expects of the payload hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Payload {
    /// The hex SHA-256 of the body received (in `x-amz-content-sha256` when sent, which S3
    /// requires).
    Hashed,
    /// `x-amz-content-sha256: UNSIGNED-PAYLOAD`.
    Unsigned,
}

/// The credential scope an API accepts.
#[derive(Debug, Clone, Copy)]
struct Scope {
    region: &'static str,
    service: &'static str,
    payload: Payload,
}

const S3_SCOPE: Scope = Scope {
    region: "us-east-1",
    service: "s3",
    payload: Payload::Hashed,
};
const EXEC_SCOPE: Scope = Scope {
    region: "eu-west-1",
    service: "execute-api",
    payload: Payload::Hashed,
};
const STREAM_SCOPE: Scope = Scope {
    region: "us-east-1",
    service: "s3",
    payload: Payload::Unsigned,
};
const TOOL_SCOPE: Scope = Scope {
    region: "us-west-2",
    service: "execute-api",
    payload: Payload::Hashed,
};

/// A request the verifier accepted.
#[derive(Debug)]
struct Verified {
    signature: String,
    signed_headers: Vec<String>,
    payload: String,
}

impl Verified {
    fn json(&self) -> Value {
        json!({ "signed_headers": self.signed_headers, "payload": self.payload })
    }
}

const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn sha256_hex(bytes: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, bytes).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lower-case hex only.
fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2)
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
        .as_ref()
        .to_vec()
}

/// The one value of a header.
fn one(r: &Recorded, name: &str) -> Result<String, String> {
    match r.header(name).as_slice() {
        [v] => Ok(v.clone()),
        [] => Err(format!("no {name} header")),
        many => Err(format!("{} {name} headers", many.len())),
    }
}

/// RFC 3986 unreserved characters stay; every other byte becomes `%XX` (upper-case), and `/`
/// too unless `keep_slash`.
fn aws_encode(bytes: &[u8], keep_slash: bool) -> String {
    let mut out = String::new();
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `%XX` decoding; anything else (including `+`) is literal.
fn pct_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && b[i + 1].is_ascii_hexdigit()
            && b[i + 2].is_ascii_hexdigit()
        {
            let pair = std::str::from_utf8(&b[i + 1..i + 3]).expect("two ASCII hex digits");
            out.push(u8::from_str_radix(pair, 16).expect("two hex digits"));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// The canonical URI: S3 decodes each segment and encodes it once; every other service
/// encodes the path as received (so escapes are encoded again).
fn canonical_uri(path: &str, s3: bool) -> String {
    if path.is_empty() {
        return "/".into();
    }
    if s3 {
        path.split('/')
            .map(|segment| aws_encode(&pct_decode(segment), false))
            .collect::<Vec<_>>()
            .join("/")
    } else {
        aws_encode(path.as_bytes(), true)
    }
}

/// The canonical query: each pair decoded, re-encoded and sorted by name, then value.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (n, v) = p.split_once('=').unwrap_or((p, ""));
            (
                aws_encode(&pct_decode(n), false),
                aws_encode(&pct_decode(v), false),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Trimmed, with runs of spaces and tabs collapsed to one space.
fn canonical_value(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for word in raw
        .split(|b| *b == b' ' || *b == b'\t')
        .filter(|w| !w.is_empty())
    {
        if !out.is_empty() {
            out.push(b' ');
        }
        out.extend_from_slice(word);
    }
    out
}

/// Seconds between an `X-Amz-Date` and now.
fn amz_date_skew(amz: &str) -> Result<u64, String> {
    let bad = || format!("X-Amz-Date {amz:?} is not YYYYMMDD'T'HHMMSS'Z'");
    let b = amz.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' || !digits(0..8) || !digits(9..15) {
        return Err(bad());
    }
    let n = |r: std::ops::Range<usize>| amz[r].parse::<u16>().unwrap();
    let month = time::Month::try_from(n(4..6) as u8).map_err(|_| bad())?;
    let date = time::Date::from_calendar_date(i32::from(n(0..4)), month, n(6..8) as u8)
        .map_err(|_| bad())?;
    let t = time::Time::from_hms(n(9..11) as u8, n(11..13) as u8, n(13..15) as u8)
        .map_err(|_| bad())?;
    let at = time::PrimitiveDateTime::new(date, t)
        .assume_utc()
        .unix_timestamp();
    Ok(time::OffsetDateTime::now_utc()
        .unix_timestamp()
        .abs_diff(at))
}

/// Verifies a SigV4 (header form) request as an AWS endpoint for `scope` would, with the
/// keys it knows (looked up by access key id).
fn verify_sigv4(r: &Recorded, keys: &[AwsKeys], scope: &Scope) -> Result<Verified, String> {
    let auth = one(r, "authorization")?;
    let fields = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or("Authorization is not AWS4-HMAC-SHA256")?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for field in fields.split(',') {
        let (k, v) = field
            .trim()
            .split_once('=')
            .ok_or_else(|| format!("malformed Authorization field {field:?}"))?;
        let slot = match k {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed,
            "Signature" => &mut signature,
            other => return Err(format!("unknown Authorization field {other:?}")),
        };
        if slot.replace(v).is_some() {
            return Err(format!("Authorization has {k} twice"));
        }
    }
    let credential = credential.ok_or("Authorization has no Credential")?;
    let signed = signed.ok_or("Authorization has no SignedHeaders")?;
    let signature = signature.ok_or("Authorization has no Signature")?;

    // Credential scope.
    let parts: Vec<&str> = credential.split('/').collect();
    let [access_key_id, date, region, service, terminal] = parts[..] else {
        return Err("Credential is not KEY/DATE/REGION/SERVICE/aws4_request".into());
    };
    let keys = keys
        .iter()
        .find(|k| k.id == access_key_id)
        .ok_or("the access key id is not known to this API")?;
    if (region, service, terminal) != (scope.region, scope.service, "aws4_request") {
        return Err(format!(
            "credential scope {date}/{region}/{service}/{terminal} is not for {}/{}",
            scope.region, scope.service
        ));
    }
    let amz_date = one(r, "x-amz-date")?;
    if amz_date.get(..8) != Some(date) {
        return Err(format!(
            "X-Amz-Date {amz_date} is not on the credential's date {date}"
        ));
    }
    let skew = amz_date_skew(&amz_date)?;
    if skew > 15 * 60 {
        return Err(format!("X-Amz-Date is {skew} s away from now"));
    }

    // Signed headers: lower-case, sorted, unique; host and x-amz-date at least; every x-amz-*
    // header that arrived among them.
    let names: Vec<&str> = signed.split(';').collect();
    if names
        .iter()
        .any(|n| n.is_empty() || n.bytes().any(|b| b.is_ascii_uppercase()))
        || !names.windows(2).all(|w| w[0] < w[1])
    {
        return Err(format!(
            "SignedHeaders {signed:?} is not lower-case, sorted and unique"
        ));
    }
    for required in ["host", "x-amz-date"] {
        if !names.contains(&required) {
            return Err(format!("SignedHeaders does not include {required}"));
        }
    }
    for name in r.headers.keys() {
        if name.as_str().starts_with("x-amz-") && !names.contains(&name.as_str()) {
            return Err(format!("{name} arrived but is not signed"));
        }
    }
    match (keys.token, r.header("x-amz-security-token").as_slice()) {
        (Some(expected), [got]) if got == expected => {}
        (None, []) => {}
        (expected, got) => {
            return Err(format!(
                "x-amz-security-token: expected {} value(s) for these keys, got {} (or the \
                 wrong one)",
                usize::from(expected.is_some()),
                got.len()
            ));
        }
    }

    // Payload hash, checked against the body that actually arrived.
    let body_sha = sha256_hex(&r.body);
    let payload = match (r.header("x-amz-content-sha256").as_slice(), scope.payload) {
        ([v], Payload::Unsigned) if v == "UNSIGNED-PAYLOAD" => v.clone(),
        ([v], Payload::Unsigned) => {
            return Err(format!(
                "x-amz-content-sha256 is {v}; this API expects UNSIGNED-PAYLOAD"
            ));
        }
        ([v], Payload::Hashed) if *v == body_sha => v.clone(),
        ([v], Payload::Hashed) => {
            return Err(format!(
                "x-amz-content-sha256 is {v}, but the {} body bytes received hash to {body_sha}",
                r.body.len()
            ));
        }
        ([], Payload::Hashed) if scope.service != "s3" => body_sha,
        ([], _) => return Err("x-amz-content-sha256 is missing".into()),
        (many, _) => return Err(format!("{} x-amz-content-sha256 headers", many.len())),
    };

    // The canonical request, from what arrived.
    let mut canonical = Vec::new();
    canonical.extend_from_slice(r.method.as_bytes());
    canonical.push(b'\n');
    canonical.extend_from_slice(canonical_uri(r.path(), scope.service == "s3").as_bytes());
    canonical.push(b'\n');
    canonical.extend_from_slice(canonical_query(r.query().unwrap_or("")).as_bytes());
    canonical.push(b'\n');
    for name in &names {
        let values: Vec<Vec<u8>> = r
            .headers
            .get_all(*name)
            .iter()
            .map(|v| canonical_value(v.as_bytes()))
            .collect();
        if values.is_empty() {
            return Err(format!("signed header {name} did not arrive"));
        }
        canonical.extend_from_slice(name.as_bytes());
        canonical.push(b':');
        canonical.extend_from_slice(&values.join(&b',')[..]);
        canonical.push(b'\n');
    }
    canonical.push(b'\n');
    canonical.extend_from_slice(signed.as_bytes());
    canonical.push(b'\n');
    canonical.extend_from_slice(payload.as_bytes());

    // String to sign, signing key, signature.
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{date}/{region}/{service}/aws4_request\n{}",
        sha256_hex(&canonical)
    );
    let mut key = hmac_sha256(format!("AWS4{}", keys.secret).as_bytes(), date.as_bytes());
    for part in [region, service, "aws4_request"] {
        key = hmac_sha256(&key, part.as_bytes());
    }
    let given = unhex(signature)
        .filter(|s| s.len() == 32)
        .ok_or("Signature is not 64 lower-case hex digits")?;
    hmac::verify(
        &hmac::Key::new(hmac::HMAC_SHA256, &key),
        string_to_sign.as_bytes(),
        &given,
    )
    .map_err(|_| {
        format!(
            "signature mismatch; the canonical request rebuilt from what arrived:\n{}",
            String::from_utf8_lossy(&canonical)
        )
    })?;
    Ok(Verified {
        signature: signature.to_owned(),
        signed_headers: names.iter().map(|n| (*n).to_owned()).collect(),
        payload,
    })
}

// === independent HMAC verifiers ===

/// A Unix-seconds timestamp within five minutes of now.
fn fresh_unix(ts: &str) -> Result<(), String> {
    let at: u64 = ts
        .parse()
        .map_err(|_| format!("timestamp {ts:?} is not Unix seconds"))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if now.abs_diff(at) > 300 {
        return Err(format!("timestamp {ts} is more than 5 minutes from now"));
    }
    Ok(())
}

/// Slack: `X-Slack-Signature: v0=hex(HMAC-SHA256(secret, "v0:{ts}:{body}"))` with
/// `X-Slack-Request-Timestamp: {ts}`.
fn verify_slack(r: &Recorded, secret: &str) -> Result<(), String> {
    let ts = one(r, "x-slack-request-timestamp")?;
    fresh_unix(&ts)?;
    let sig = one(r, "x-slack-signature")?;
    let mac = sig
        .strip_prefix("v0=")
        .and_then(unhex)
        .filter(|m| m.len() == 32)
        .ok_or("X-Slack-Signature is not v0=<64 hex digits>")?;
    let mut message = format!("v0:{ts}:").into_bytes();
    message.extend_from_slice(&r.body);
    hmac::verify(
        &hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
        &message,
        &mac,
    )
    .map_err(|_| "X-Slack-Signature does not match v0:{timestamp}:{body}".into())
}

/// Generic: `X-Signature: base64(HMAC-SHA512(key, "{method}\n{path?query}\n{ts}\n{body}"))`
/// with `X-Timestamp: {ts}`.
fn verify_generic(r: &Recorded, key: &str) -> Result<(), String> {
    let ts = one(r, "x-timestamp")?;
    fresh_unix(&ts)?;
    let mac = STANDARD
        .decode(one(r, "x-signature")?)
        .ok()
        .filter(|m| m.len() == 64)
        .ok_or("X-Signature is not base64 of 64 bytes")?;
    let mut message = format!("{}\n{}\n{ts}\n", r.method, r.target).into_bytes();
    message.extend_from_slice(&r.body);
    hmac::verify(
        &hmac::Key::new(hmac::HMAC_SHA512, key.as_bytes()),
        &message,
        &mac,
    )
    .map_err(|_| "X-Signature does not match {method}\\n{path}\\n{timestamp}\\n{body}".into())
}

// === request helpers ===

/// A request through the proxy with extra headers and a body.
fn with_body(
    method: &str,
    url: &str,
    token: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Request<Full<Bytes>> {
    let mut b = request(method, url, Some(token));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(body.into())).unwrap()
}

/// A raw chunked request through the proxy: `Host`, `Transfer-Encoding: chunked`, `headers`,
/// then each chunk and the last chunk.
fn chunked(method: &str, url: &str, token: &str, headers: &[&str], chunks: &[&[u8]]) -> Vec<u8> {
    let mut bytes = chunked_head(method, url, token, headers);
    for chunk in chunks {
        bytes.extend(chunk_bytes(chunk));
    }
    bytes.extend_from_slice(b"0\r\n\r\n");
    bytes
}

fn chunked_head(method: &str, url: &str, token: &str, headers: &[&str]) -> Vec<u8> {
    let host = url.split('/').nth(2).unwrap();
    let host = format!("Host: {host}");
    let mut lines = vec![host.as_str(), "Transfer-Encoding: chunked"];
    lines.extend_from_slice(headers);
    raw_request(method, url, Some(token), &lines)
}

fn chunk_bytes(chunk: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", chunk.len()).into_bytes();
    out.extend_from_slice(chunk);
    out.extend_from_slice(b"\r\n");
    out
}

/// Asserts a 200 `{"verified": true}` from the verifying API through the proxy.
fn assert_verified(what: &str, status: u16, body: &[u8]) -> Value {
    let text = String::from_utf8_lossy(body);
    assert_eq!(status, 200, "{what}: the API refused it: {text}");
    let v: Value = serde_json::from_slice(body).unwrap_or_else(|e| panic!("{what}: {e}: {text}"));
    assert_eq!(v["verified"], true, "{what}: {v}");
    v
}

/// `len` bytes that are not UTF-8 (they start with a lone continuation byte, 0x80).
fn binary_body(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 0x80) as u8).collect()
}

/// The `Signature=` of an `Authorization` value.
fn signature_of(auth: &str) -> String {
    auth.rsplit("Signature=").next().unwrap().to_owned()
}

// === SigV4 through the forward proxy ===

#[tokio::test(flavor = "multi_thread")]
async fn sigv4_get_with_a_query_is_verified_by_the_upstream() {
    let s = Signing::start().await;
    let h = &s.h;

    // S3 ListObjectsV2: an unsorted query with escapes, a repeated name and a bare name.
    let list = "https://s3.amazonaws.test/photos?list-type=2&prefix=2024%2Fcaf%C3%A9%20noir&\
                max-keys=5&delimiter=%2F&fetch-owner";
    let resp = h.send(get(list, Some(&h.alice))).await;
    let v = assert_verified("S3 list", resp.status, &resp.body);
    assert_eq!(v["payload"], EMPTY_SHA256, "a GET signs the empty payload");
    let seen = s.api.only();
    assert_eq!(
        seen.target,
        list.trim_start_matches("https://s3.amazonaws.test")
    );
    assert_eq!(seen.header("x-amz-content-sha256"), [EMPTY_SHA256]);
    assert!(seen.header("x-amz-security-token").is_empty());
    let auth = one(&seen, "authorization").unwrap();
    assert!(
        auth.starts_with(&format!("AWS4-HMAC-SHA256 Credential={}/", ALICE_AWS.id)),
        "{auth}"
    );
    assert!(auth.contains("/us-east-1/s3/aws4_request"), "{auth}");

    // An S3 object key with escaped bytes (S3 encodes the path once).
    s.api.clear();
    let object = "https://s3.amazonaws.test/photos/2024/caf%C3%A9%20noir~1.jpg?versionId=3";
    let resp = h.send(get(object, Some(&h.alice))).await;
    assert_verified("S3 object", resp.status, &resp.body);
    assert_eq!(s.api.only().path(), "/photos/2024/caf%C3%A9%20noir~1.jpg");

    // execute-api (not S3): the path is encoded twice; no content-sha256 header required.
    s.api.clear();
    let exec = "https://execute-api.amazonaws.test/prod/items/caf%C3%A9?b=2&a=1&a=0&q=x%20y";
    let resp = h.send(get(exec, Some(&h.alice))).await;
    let v = assert_verified("execute-api", resp.status, &resp.body);
    assert_eq!(v["payload"], EMPTY_SHA256);
    let seen = s.api.only();
    let auth = one(&seen, "authorization").unwrap();
    assert!(auth.contains(ACME_EXEC_AWS.id), "tenant keys: {auth}");
    assert!(
        auth.contains("/eu-west-1/execute-api/aws4_request"),
        "{auth}"
    );

    s.assert_no_secret_on_the_wire(&[]);
    let records = h.wait_audit(3).await;
    assert_eq!(
        records
            .iter()
            .map(|r| (
                r.decision.as_str(),
                r.credential.as_deref(),
                r.status,
                r.origin.as_str()
            ))
            .collect::<Vec<_>>(),
        [
            (
                "allow",
                Some("user:aws_s3"),
                Some(200),
                "https://s3.amazonaws.test"
            ),
            (
                "allow",
                Some("user:aws_s3"),
                Some(200),
                "https://s3.amazonaws.test"
            ),
            (
                "allow",
                Some("tenant:aws_exec"),
                Some(200),
                "https://execute-api.amazonaws.test"
            ),
        ]
    );
    h.assert_audit_clean(&signing_values());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigv4_put_object_signs_the_sha256_of_the_real_body() {
    let s = Signing::start().await;
    let h = &s.h;
    let bytes = binary_body(70_000);
    assert!(std::str::from_utf8(&bytes).is_err());
    let sha = sha256_hex(&bytes);

    // With Content-Length, and a forged content hash (of another body) from the caller.
    let url = "https://s3.amazonaws.test/photos/raw/blob.bin";
    let forged = sha256_hex(b"something else");
    let resp = h
        .send(with_body(
            "PUT",
            url,
            &h.alice,
            &[
                ("content-type", "application/octet-stream"),
                ("x-amz-content-sha256", &forged),
            ],
            bytes.clone(),
        ))
        .await;
    let v = assert_verified("PUT with Content-Length", resp.status, &resp.body);
    assert_eq!(v["payload"], sha.as_str());
    let seen = s.api.only();
    assert_eq!(seen.body, bytes, "the body arrives byte for byte");
    assert_eq!(seen.header("x-amz-content-sha256"), [sha.as_str()]);

    // Chunked, without a length: the body is still hashed whole.
    s.api.clear();
    let parts: Vec<&[u8]> = bytes.chunks(16_384).collect();
    let raw = h
        .raw(&chunked(
            "PUT",
            "https://s3.amazonaws.test/photos/raw/chunked.bin",
            &h.alice,
            &["Content-Type: application/octet-stream"],
            &parts,
        ))
        .await;
    let v = assert_verified("chunked PUT", raw.status, &raw.body);
    assert_eq!(v["payload"], sha.as_str());
    assert_eq!(s.api.only().body, bytes);

    // A JSON POST to a non-S3 service: the hash of the body is signed all the same.
    s.api.clear();
    let doc = br#"{"name":"caf\u00e9","qty":2}"#;
    let resp = h
        .send(with_body(
            "POST",
            "https://execute-api.amazonaws.test/prod/items?dry_run=1",
            &h.bob,
            &[("content-type", "application/json")],
            &doc[..],
        ))
        .await;
    let v = assert_verified("execute-api POST", resp.status, &resp.body);
    assert_eq!(v["payload"], sha256_hex(doc).as_str());
    assert_eq!(s.api.only().body, &doc[..]);

    s.assert_no_secret_on_the_wire(&[]);
    let summary = h.audit_summary(3).await;
    assert_eq!(
        summary,
        [
            format!("alice allow eng-s3 user:aws_s3 200 PUT {url}"),
            "alice allow eng-s3 user:aws_s3 200 PUT https://s3.amazonaws.test/photos/raw/chunked.bin"
                .to_owned(),
            "bob allow eng-exec tenant:aws_exec 200 POST https://execute-api.amazonaws.test/prod/items"
                .to_owned(),
        ]
    );
    h.assert_audit_clean(&signing_values());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigv4_session_token_is_sent_and_signed() {
    let s = Signing::start().await;
    let h = &s.h;
    let url = "https://s3.amazonaws.test/photos?list-type=2";

    // bob has temporary credentials: the token goes along, signed.
    let resp = h.send(get(url, Some(&h.bob))).await;
    let v = assert_verified("bob (session token)", resp.status, &resp.body);
    let signed: Vec<String> = serde_json::from_value(v["signed_headers"].clone()).unwrap();
    assert!(
        signed.contains(&"x-amz-security-token".to_owned()),
        "{signed:?}"
    );
    let seen = s.api.only();
    assert_eq!(
        seen.header("x-amz-security-token"),
        [BOB_AWS.token.unwrap()]
    );
    assert!(
        one(&seen, "authorization")
            .unwrap()
            .contains(&format!("Credential={}/", BOB_AWS.id))
    );

    // alice, on the same service, has none: no token header at all.
    s.api.clear();
    let resp = h.send(get(url, Some(&h.alice))).await;
    let v = assert_verified("alice (no session token)", resp.status, &resp.body);
    assert!(
        !v["signed_headers"]
            .as_array()
            .unwrap()
            .contains(&json!("x-amz-security-token"))
    );
    assert!(s.api.only().header("x-amz-security-token").is_empty());

    // The token is an injected form: an upstream echoing it back has it scrubbed.
    s.api.respond(echo);
    s.api.clear();
    let resp = h.send(get(url, Some(&h.bob))).await;
    assert_eq!(resp.status, 200);
    assert!(
        one(&s.api.only(), "x-amz-security-token").is_ok(),
        "the echo saw the token"
    );
    let text = String::from_utf8_lossy(&resp.body);
    for value in BOB_AWS.values() {
        assert!(
            !text.contains(value),
            "{value} echoed to the caller: {text}"
        );
    }

    s.assert_no_secret_on_the_wire(&[]);
    h.wait_audit(3).await;
    h.assert_audit_clean(&signing_values());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigv4_verifier_rejects_any_alteration_of_a_signed_request() {
    let s = Signing::start().await;
    let h = &s.h;

    // Live: a service signing for the wrong region is refused by the API, through behalf.
    let resp = h
        .send(get("https://s3.eu.amazonaws.test/photos", Some(&h.alice)))
        .await;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert_eq!(resp.json()["verified"], false);
    let reason = resp.json()["reason"].as_str().unwrap().to_owned();
    assert!(
        reason.contains("eu-central-1") && reason.contains("us-east-1"),
        "{reason}"
    );

    // Recorded requests that verified: bob's (session token) on S3, and one on execute-api.
    s.api.clear();
    let resp = h
        .send(
            request(
                "GET",
                "https://s3.amazonaws.test/photos/a.jpg?versionId=7",
                Some(&h.bob),
            )
            .header("x-request-note", "original")
            .body(Full::default())
            .unwrap(),
        )
        .await;
    assert_verified("bob's GET", resp.status, &resp.body);
    let s3 = s.api.only();
    s.api.clear();
    let resp = h
        .send(get(
            "https://execute-api.amazonaws.test/prod/items?limit=2",
            Some(&h.alice),
        ))
        .await;
    assert_verified("execute-api GET", resp.status, &resp.body);
    let exec = s.api.only();

    let keys = [ALICE_AWS, BOB_AWS];
    let original = verify_sigv4(&s3, &keys, &S3_SCOPE).expect("the recorded request verifies");
    assert!(
        original
            .signed_headers
            .contains(&"x-request-note".to_owned()),
        "behalf signs the caller's ordinary headers: {:?}",
        original.signed_headers
    );
    verify_sigv4(&exec, &[ACME_EXEC_AWS], &EXEC_SCOPE).expect("the recorded request verifies");

    let set = |r: &mut Recorded, name: &'static str, value: &str| {
        r.headers
            .insert(name, HeaderValue::from_str(value).unwrap());
    };
    let amz_date = one(&s3, "x-amz-date").unwrap();
    let secs: u8 = amz_date[13..15].parse().unwrap();
    let other_second = format!(
        "{}{:02}Z",
        &amz_date[..13],
        if secs == 0 { 1 } else { secs - 1 }
    );
    let mut flipped = original.signature.clone().into_bytes();
    flipped[10] = if flipped[10] == b'0' { b'1' } else { b'0' };
    let flipped = String::from_utf8(flipped).unwrap();
    let auth = one(&s3, "authorization").unwrap();

    type Alter = Box<dyn Fn(&mut Recorded)>;
    let s3_cases: Vec<(&str, Alter)> = vec![
        (
            "path",
            Box::new(|r: &mut Recorded| r.target = r.target.replace("a.jpg", "b.jpg")),
        ),
        (
            "query value",
            Box::new(|r: &mut Recorded| r.target = r.target.replace("=7", "=8")),
        ),
        (
            "query added",
            Box::new(|r: &mut Recorded| r.target.push_str("&acl")),
        ),
        (
            "method",
            Box::new(|r: &mut Recorded| r.method = "DELETE".into()),
        ),
        (
            "host",
            Box::new(move |r: &mut Recorded| set(r, "host", "evil.amazonaws.test")),
        ),
        (
            "x-amz-date",
            Box::new(move |r: &mut Recorded| set(r, "x-amz-date", &other_second)),
        ),
        (
            "a signed caller header",
            Box::new(move |r: &mut Recorded| set(r, "x-request-note", "altered")),
        ),
        (
            "session token",
            Box::new(move |r: &mut Recorded| set(r, "x-amz-security-token", "another-token")),
        ),
        (
            "session token removed",
            Box::new(|r: &mut Recorded| {
                r.headers.remove("x-amz-security-token");
            }),
        ),
        (
            "a body added",
            Box::new(|r: &mut Recorded| r.body = Bytes::from_static(b"x")),
        ),
        (
            "payload made unsigned",
            Box::new(move |r: &mut Recorded| set(r, "x-amz-content-sha256", "UNSIGNED-PAYLOAD")),
        ),
        (
            "payload hash of the added body",
            Box::new(move |r: &mut Recorded| {
                r.body = Bytes::from_static(b"x");
                set(r, "x-amz-content-sha256", &sha256_hex(b"x"));
            }),
        ),
        (
            "signature",
            Box::new(move |r: &mut Recorded| {
                set(
                    r,
                    "authorization",
                    &auth.replace(&signature_of(&auth), &flipped),
                )
            }),
        ),
        (
            "authorization removed",
            Box::new(|r: &mut Recorded| {
                r.headers.remove("authorization");
            }),
        ),
        (
            "an unsigned x-amz header added",
            Box::new(move |r: &mut Recorded| set(r, "x-amz-acl", "public-read")),
        ),
    ];
    for (what, alter) in &s3_cases {
        let mut r = s3.clone();
        alter(&mut r);
        let err = verify_sigv4(&r, &keys, &S3_SCOPE)
            .expect_err(&format!("altered {what}: the verifier must refuse it"));
        assert!(!err.is_empty(), "{what}");
    }

    // Wrong key material or scope.
    let wrong_secret = AwsKeys {
        secret: "not-bobs-secret",
        ..BOB_AWS
    };
    assert!(verify_sigv4(&s3, &[wrong_secret], &S3_SCOPE).is_err());
    assert!(
        verify_sigv4(&s3, &[ALICE_AWS], &S3_SCOPE).is_err(),
        "unknown key id"
    );
    let eu = Scope {
        region: "eu-central-1",
        ..S3_SCOPE
    };
    assert!(verify_sigv4(&s3, &keys, &eu).is_err());
    assert!(
        verify_sigv4(&s3, &keys, &STREAM_SCOPE).is_err(),
        "expects UNSIGNED-PAYLOAD"
    );

    // Without x-amz-content-sha256 the hash is of the body received: altering it breaks the
    // signature itself.
    let mut r = exec.clone();
    r.body = Bytes::from_static(b"{}");
    let err = verify_sigv4(&r, &[ACME_EXEC_AWS], &EXEC_SCOPE).unwrap_err();
    assert!(err.contains("signature mismatch"), "{err}");
    let mut r = exec.clone();
    r.target = "/prod/items?limit=3".into();
    assert!(verify_sigv4(&r, &[ACME_EXEC_AWS], &EXEC_SCOPE).is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigv4_unsigned_payload_streams_the_body() {
    let s = Signing::start_with("", true).await;
    let h = &s.h;
    let url = "https://stream.s3.amazonaws.test/logs/live.log";
    let first = binary_body(4096);
    let rest: Vec<Vec<u8>> = (0..3).map(|i| vec![b'a' + i; 8192]).collect();

    // Send the head and the first chunk, and hold the rest back.
    let mut conn = RawConn::open(h.proxy_addr).await;
    let mut opening = chunked_head(
        "PUT",
        url,
        &h.alice,
        &["Content-Type: application/octet-stream"],
    );
    opening.extend(chunk_bytes(&first));
    conn.write(&opening).await;
    assert!(
        s.api.wait_for_head(Duration::from_millis(1500)).await,
        "the upstream saw nothing while the body was still open: an UNSIGNED-PAYLOAD body \
         must stream, not be buffered"
    );
    assert!(
        s.api.requests().is_empty(),
        "the body cannot have ended yet"
    );

    // Then the rest.
    let mut tail = Vec::new();
    for chunk in &rest {
        tail.extend(chunk_bytes(chunk));
    }
    tail.extend_from_slice(b"0\r\n\r\n");
    conn.write(&tail).await;
    let resp = conn.read_response().await;
    let v = assert_verified("streamed PUT", resp.status, &resp.body);
    assert_eq!(v["payload"], "UNSIGNED-PAYLOAD");
    let seen = s.api.only();
    assert_eq!(seen.header("x-amz-content-sha256"), ["UNSIGNED-PAYLOAD"]);
    let mut whole = first.clone();
    for chunk in &rest {
        whole.extend_from_slice(chunk);
    }
    assert_eq!(seen.body.len(), whole.len());
    assert!(seen.body == whole, "the streamed body arrives intact");

    // The probe tells the two apart: the same upload to the hashing S3 service (same
    // credential) shows the upstream nothing while its body is open, since its hash must be
    // known first; it is then sent whole, signed with that hash.
    s.api.clear();
    let mut conn = RawConn::open(h.proxy_addr).await;
    let mut opening = chunked_head(
        "PUT",
        "https://s3.amazonaws.test/logs/hashed.log",
        &h.alice,
        &[],
    );
    opening.extend(chunk_bytes(&first));
    conn.write(&opening).await;
    assert!(
        !s.api.wait_for_head(Duration::from_millis(300)).await,
        "a hashed body cannot be signed before it has all arrived: {:?}",
        s.api.heads()
    );
    conn.write(&tail).await;
    let resp = conn.read_response().await;
    let v = assert_verified("hashed PUT", resp.status, &resp.body);
    assert_eq!(v["payload"], sha256_hex(&whole).as_str());
    assert!(s.api.only().body == whole);

    s.assert_no_secret_on_the_wire(&[]);
    h.wait_audit(2).await;
    h.assert_audit_clean(&signing_values());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigv4_body_over_max_request_body_is_413_and_nothing_reaches_the_upstream() {
    let s = Signing::start_with("max_request_body = \"1KiB\"\n", false).await;
    let h = &s.h;
    let url = "https://s3.amazonaws.test/photos/big.bin";

    // Declared too large.
    let resp = h
        .send(with_body("PUT", url, &h.alice, &[], vec![b'x'; 4096]))
        .await;
    resp.assert_error(413, "bad_request");

    // Chunked, no length: buffered up to the limit, then refused before anything is sent.
    let parts = [[b'y'; 512]; 4];
    let parts: Vec<&[u8]> = parts.iter().map(|p| &p[..]).collect();
    let raw = h.raw(&chunked("PUT", url, &h.alice, &[], &parts)).await;
    assert_eq!(
        (raw.status, raw.error_code().as_deref()),
        (413, Some("bad_request")),
        "{:?}",
        String::from_utf8_lossy(&raw.body)
    );
    // The same for an HMAC body.
    let raw = h
        .raw(&chunked(
            "POST",
            "https://api.orders.test/v1/orders",
            &h.alice,
            &[],
            &parts,
        ))
        .await;
    assert_eq!(
        (raw.status, raw.error_code().as_deref()),
        (413, Some("bad_request")),
        "{:?}",
        String::from_utf8_lossy(&raw.body)
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(s.api.heads().is_empty(), "{:?}", s.api.heads());
    assert!(s.api.requests().is_empty());
    assert_eq!(s.api.connections(), 0, "nothing was dialled");

    // Control: exactly at the limit is signed and sent whole.
    let at_limit = binary_body(1024);
    let resp = h
        .send(with_body("PUT", url, &h.alice, &[], at_limit.clone()))
        .await;
    let v = assert_verified("PUT at the limit", resp.status, &resp.body);
    assert_eq!(v["payload"], sha256_hex(&at_limit).as_str());
    assert_eq!(s.api.only().body, at_limit);

    let records = h.wait_audit(4).await;
    let outcomes: Vec<_> = records
        .iter()
        .map(|r| (r.decision.as_str(), r.status))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("deny", Some(413)),
            ("deny", Some(413)),
            ("deny", Some(413)),
            ("allow", Some(200)),
        ]
    );
    h.assert_audit_clean(&signing_values());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigv4_caller_signing_headers_are_replaced_never_forwarded() {
    let s = Signing::start().await;
    let h = &s.h;
    let forged_auth = "AWS4-HMAC-SHA256 Credential=AKIAFORGEDBYCALLER99/20000101/us-east-1/s3/\
                       aws4_request, SignedHeaders=host;x-amz-date, Signature=\
                       deadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeef";
    let forged = [
        ("authorization", forged_auth),
        ("x-amz-date", "20000101T000000Z"),
        ("x-amz-security-token", "forged-session-token"),
        ("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
    ];
    let mut req = request(
        "GET",
        "https://s3.amazonaws.test/photos?list-type=2",
        Some(&h.alice),
    );
    for (k, v) in forged {
        req = req.header(k, v);
    }
    let resp = h.send(req.body(Full::default()).unwrap()).await;
    assert_verified("forged headers replaced", resp.status, &resp.body);

    let seen = s.api.only();
    let auth = seen.header("authorization");
    assert_eq!(auth.len(), 1, "{auth:?}");
    assert!(auth[0].contains(&format!("Credential={}/", ALICE_AWS.id)));
    assert_eq!(seen.header("x-amz-date").len(), 1);
    assert_ne!(seen.header("x-amz-date"), ["20000101T000000Z"]);
    assert!(
        seen.header("x-amz-security-token").is_empty(),
        "alice has no session token; the caller's must not pass"
    );
    assert_eq!(seen.header("x-amz-content-sha256"), [EMPTY_SHA256]);
    for (name, value) in &seen.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        for needle in ["FORGED", "forged", "deadbeef", "20000101"] {
            assert!(
                !value.contains(needle),
                "a forged value reached the upstream in {name}: {value}"
            );
        }
    }
    h.wait_audit(1).await;
    h.assert_audit_clean(&signing_values());
}

// === HMAC through the forward proxy ===

#[tokio::test(flavor = "multi_thread")]
async fn hmac_slack_style_signature_covers_the_real_body() {
    let s = Signing::start().await;
    let h = &s.h;
    let url = "https://hooks.slackish.test/commands";
    let form = "token=xyzz0&team_id=T1DC2JH3J&command=%2Fweather&text=caf%C3%A9+noir\
                &response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2F1";

    // A caller's forged signature and timestamp are replaced.
    let resp = h
        .send(with_body(
            "POST",
            url,
            &h.alice,
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("x-slack-signature", "v0=forged0000"),
                ("x-slack-request-timestamp", "1531420618"),
            ],
            form,
        ))
        .await;
    assert_verified("Slack POST", resp.status, &resp.body);
    let seen = s.api.only();
    assert_eq!(seen.body, form.as_bytes());
    assert_eq!(seen.header("x-slack-signature").len(), 1);
    assert_ne!(seen.header("x-slack-signature"), ["v0=forged0000"]);
    assert_ne!(seen.header("x-slack-request-timestamp"), ["1531420618"]);

    // Chunked, with bytes that are not UTF-8.
    s.api.clear();
    let bytes = binary_body(3000);
    let parts: Vec<&[u8]> = bytes.chunks(1000).collect();
    let raw = h
        .raw(&chunked(
            "POST",
            url,
            &h.bob,
            &["Content-Type: application/octet-stream"],
            &parts,
        ))
        .await;
    assert_verified("chunked Slack POST", raw.status, &raw.body);
    assert_eq!(s.api.only().body, bytes);

    s.assert_no_secret_on_the_wire(&[]);
    assert_eq!(
        h.audit_summary(2).await,
        [
            format!("alice allow eng-slackish tenant:slack_signing_secret 200 POST {url}"),
            format!("bob allow eng-slackish tenant:slack_signing_secret 200 POST {url}"),
        ]
    );
    h.assert_audit_clean(&signing_values());
}

#[tokio::test(flavor = "multi_thread")]
async fn hmac_generic_sha512_signature_covers_method_path_timestamp_and_body() {
    let s = Signing::start().await;
    let h = &s.h;

    let order = r#"{"item":"book","qty":2,"note":"caf\u00e9 \u2615"}"#;
    let resp = h
        .send(with_body(
            "POST",
            "https://api.orders.test/v1/orders?dry_run=1",
            &h.alice,
            &[
                ("content-type", "application/json"),
                ("x-signature", "Zm9yZ2VkIGJ5IHRoZSBjYWxsZXI="),
                ("x-timestamp", "1700000000"),
            ],
            order,
        ))
        .await;
    assert_verified("generic POST", resp.status, &resp.body);
    let seen = s.api.only();
    assert_eq!(seen.target, "/v1/orders?dry_run=1");
    assert_eq!(seen.body, order.as_bytes());
    assert_eq!(seen.header("x-signature").len(), 1);
    assert_ne!(seen.header("x-signature"), ["Zm9yZ2VkIGJ5IHRoZSBjYWxsZXI="]);
    assert_ne!(seen.header("x-timestamp"), ["1700000000"]);

    s.api.clear();
    let bytes = binary_body(5000);
    let resp = h
        .send(with_body(
            "PUT",
            "https://api.orders.test/v1/orders/7/attachment",
            &h.bob,
            &[("content-type", "application/octet-stream")],
            bytes.clone(),
        ))
        .await;
    assert_verified("generic PUT (binary)", resp.status, &resp.body);
    assert_eq!(s.api.only().body, bytes);

    s.assert_no_secret_on_the_wire(&[]);
    h.wait_audit(2).await;
    h.assert_audit_clean(&signing_values());
}

#[tokio::test(flavor = "multi_thread")]
async fn hmac_forged_signature_is_replaced_on_a_bodyless_request() {
    let s = Signing::start().await;
    let h = &s.h;
    let get_with = |url: &str, headers: &[(&str, &str)]| {
        let mut b = request("GET", url, Some(&h.alice));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Full::default()).unwrap()
    };

    let resp = h
        .send(get_with(
            "https://api.orders.test/v1/orders?limit=2&cursor=abc",
            &[("x-signature", "forged=="), ("x-timestamp", "1")],
        ))
        .await;
    assert_verified("generic GET", resp.status, &resp.body);
    let seen = s.api.only();
    assert_eq!(seen.header("x-signature").len(), 1);
    assert_ne!(seen.header("x-signature"), ["forged=="]);
    assert_ne!(seen.header("x-timestamp"), ["1"]);

    s.api.clear();
    let resp = h
        .send(get_with(
            "https://hooks.slackish.test/api/ping",
            &[("x-slack-signature", "v0=forged")],
        ))
        .await;
    assert_verified("Slack GET", resp.status, &resp.body);
    assert_ne!(s.api.only().header("x-slack-signature"), ["v0=forged"]);

    s.assert_no_secret_on_the_wire(&[]);
    h.wait_audit(2).await;
    h.assert_audit_clean(&signing_values());
}

#[tokio::test(flavor = "multi_thread")]
async fn hmac_verifiers_reject_altered_requests() {
    let s = Signing::start().await;
    let h = &s.h;
    let resp = h
        .send(get(
            "https://api.orders.test/v1/orders?limit=2",
            Some(&h.alice),
        ))
        .await;
    assert_verified("generic GET", resp.status, &resp.body);
    let generic = s.api.only();
    s.api.clear();
    let resp = h
        .send(get("https://hooks.slackish.test/api/ping", Some(&h.alice)))
        .await;
    assert_verified("Slack GET", resp.status, &resp.body);
    let slack = s.api.only();

    verify_generic(&generic, ACME_ORDERS_KEY).expect("the recorded request verifies");
    verify_slack(&slack, ACME_SLACK_SIGNING).expect("the recorded request verifies");
    assert!(verify_generic(&generic, "another-key").is_err());
    assert!(verify_slack(&slack, "another-secret").is_err());

    let ts = one(&generic, "x-timestamp").unwrap();
    let earlier = (ts.parse::<u64>().unwrap() - 1).to_string();
    type Alter = Box<dyn Fn(&mut Recorded)>;
    let cases: Vec<(&str, Alter)> = vec![
        (
            "method",
            Box::new(|r: &mut Recorded| r.method = "DELETE".into()),
        ),
        (
            "path",
            Box::new(|r: &mut Recorded| r.target = r.target.replace("orders", "refunds")),
        ),
        (
            "query",
            Box::new(|r: &mut Recorded| r.target = r.target.replace("=2", "=3")),
        ),
        (
            "body",
            Box::new(|r: &mut Recorded| r.body = Bytes::from_static(b"{}")),
        ),
        (
            "timestamp",
            Box::new(move |r: &mut Recorded| {
                r.headers
                    .insert("x-timestamp", HeaderValue::from_str(&earlier).unwrap());
            }),
        ),
        (
            "signature removed",
            Box::new(|r: &mut Recorded| {
                r.headers.remove("x-signature");
            }),
        ),
    ];
    for (what, alter) in &cases {
        let mut r = generic.clone();
        alter(&mut r);
        assert!(
            verify_generic(&r, ACME_ORDERS_KEY).is_err(),
            "generic: altered {what} still verifies"
        );
    }
    let mut r = slack.clone();
    r.body = Bytes::from_static(b"text=hi");
    assert!(verify_slack(&r, ACME_SLACK_SIGNING).is_err(), "Slack: body");
    let mut r = slack.clone();
    let ts = one(&slack, "x-slack-request-timestamp").unwrap();
    let later = (ts.parse::<u64>().unwrap() + 1).to_string();
    r.headers.insert(
        "x-slack-request-timestamp",
        HeaderValue::from_str(&later).unwrap(),
    );
    assert!(
        verify_slack(&r, ACME_SLACK_SIGNING).is_err(),
        "Slack: timestamp"
    );
}

// === the tool-facing view: a tool whose upstream is signed with SigV4 ===

/// The shipped `github` service, replaced by one that signs with SigV4 (same origin, so the
/// `github_issues` example tool and the shipped grants apply unchanged).
const GITHUB_SIGV4: &str = r#"[service]
name = "github"
origins = ["https://api.github.com"]
credential = { name = "github_aws", scope = "user" }
inject = { aws_sigv4 = { region = "us-west-2", service = "execute-api" } }
"#;

/// A tool harness whose GitHub API verifies SigV4 and reflects everything it received (every
/// header, `Authorization` and `X-Amz-Security-Token` included, and the body).
async fn tool_harness() -> ToolHarness {
    let h = ToolHarness::start_with(ToolConfig {
        extra_services: vec![("github".into(), GITHUB_SIGV4.into())],
        ..ToolConfig::default()
    })
    .await;
    store_secret(
        &h.policies,
        &h.state,
        "acme/alice/github_aws",
        &TOOL_AWS.json(),
    );
    h.upstream.respond(|r| {
        let verdict = verify_sigv4(r, &[TOOL_AWS], &TOOL_SCOPE);
        let mut headers = serde_json::Map::new();
        for name in r.headers.keys() {
            headers.insert(name.to_string(), r.header(name.as_str()).into());
        }
        let reflected = json!({
            "verified": verdict.is_ok(),
            "reason": verdict.as_ref().err(),
            "method": r.method,
            "target": r.target,
            "headers": headers,
            "body": String::from_utf8_lossy(&r.body),
        });
        json_response(if verdict.is_ok() { 200 } else { 403 }, reflected)
    });
    h
}

/// Checks one tool invocation: the API verified the signature, the request carried the
/// credential forms, and neither the tool's output nor the API response holds any of them;
/// the audit names the credential and holds no value. Returns the tool's reflected body.
async fn assert_tool_view_is_secret_free(h: &ToolHarness, input: Value, path: &str) -> Value {
    let (status, body) = h.invoke(&h.alice, "github_issues", input).await;
    assert_eq!(status, 200, "{body}");
    let output = &body["output"];
    assert_eq!(
        output["status"], 200,
        "the API refused the signature: {output}"
    );
    assert_eq!(output["body"]["verified"], true, "{output}");

    // What went on the wire really held every credential form (so their absence below is
    // the scrubber's and the design's doing, not an accident).
    let seen = h.upstream.only();
    let auth = one(&seen, "authorization").unwrap();
    let signature = signature_of(&auth);
    assert!(auth.contains(TOOL_AWS.id), "{auth}");
    assert_eq!(
        seen.header("x-amz-security-token"),
        [TOOL_AWS.token.unwrap()]
    );
    let reflected_auth = &output["body"]["headers"]["authorization"];
    assert!(
        reflected_auth.as_array().is_some_and(|a| a.len() == 1),
        "the reflection lists the Authorization header: {output}"
    );

    let text = body.to_string();
    let mut forbidden: Vec<&str> = TOOL_AWS.values();
    forbidden.push(&signature);
    forbidden.push(&auth);
    for value in &forbidden {
        assert!(
            !text.contains(value),
            "the tool's output / API response holds {value:?}: {text}"
        );
    }
    for canary in canaries() {
        assert!(!text.contains(canary), "{canary} in {text}");
    }

    // The audit: this call, with the credential's name, and no value anywhere.
    let deadline = Instant::now() + Duration::from_secs(2);
    let record = loop {
        let found = h
            .audit_records()
            .into_iter()
            .find(|r| r.client.as_deref() == Some("tool:github_issues") && r.path == path);
        match found {
            Some(r) => break r,
            None if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            None => panic!("no audit record for {path}"),
        }
    };
    assert_eq!(record.decision, "allow");
    assert_eq!(record.credential.as_deref(), Some("user:github_aws"));
    assert_eq!(record.status, Some(200));
    let audit = h.audit_text();
    assert!(audit.contains("user:github_aws"));
    for value in &forbidden {
        assert!(!audit.contains(value), "the audit log holds {value:?}");
    }
    output["body"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn sigv4_tool_sees_no_secret_and_the_audit_names_only_the_credential() {
    let h = tool_harness().await;
    let reflected = assert_tool_view_is_secret_free(
        &h,
        json!({ "repo": "acme/web" }),
        "/repos/acme/web/issues",
    )
    .await;
    assert_eq!(reflected["method"], "GET");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigv4_tool_post_with_a_body_is_signed_and_sees_no_secret() {
    let h = tool_harness().await;
    let reflected = assert_tool_view_is_secret_free(
        &h,
        json!({ "repo": "acme/web", "action": "create", "title": "Signed", "body": "café ☕" }),
        "/repos/acme/web/issues",
    )
    .await;
    assert_eq!(reflected["method"], "POST");
    let sent: Value = serde_json::from_str(reflected["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent, json!({ "title": "Signed", "body": "café ☕" }));
    let seen = h.upstream.only();
    assert_eq!(
        serde_json::from_slice::<Value>(&seen.body).unwrap(),
        json!({ "title": "Signed", "body": "café ☕" })
    );
}
