//! Faults and limits through the forward proxy (issue 4, "Must show", and DESIGN.md invariant
//! 6): upstreams that refuse, reset, stall, answer garbage or present bad certificates; names
//! that do not resolve; request and response size caps; an audit log that cannot be written;
//! `behalf audit verify` on a real run's log; and many concurrent callers.
//!
//! Every test checks the status and JSON error code the caller gets, what the upstream saw
//! (nothing, or nothing in the clear), the audit record (decision, reason, status), and that
//! the sidecar still serves an ordinary request afterwards (no task died, nothing wedged).

use std::collections::HashSet;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use behalf::audit::{self, Record};
use behalf::state::StateDir;
use bytes::Bytes;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

// === helpers ===

/// Proves the sidecar survived: an ordinary allowed request through a healthy upstream gets
/// 200 with acme's Slack token injected (and scrubbed from the echo that comes back).
async fn assert_still_serves(h: &Harness) {
    let resp = h
        .send(get("https://slack.test/api/health", Some(&h.alice)))
        .await;
    assert_eq!(resp.status, 200, "the sidecar no longer serves: {resp:?}");
    assert_eq!(
        resp.json()["headers"]["authorization"],
        serde_json::json!([behalf::egress::scrub::MARKER])
    );
    let seen = h.upstream.requests();
    let last = seen.last().expect("the upstream saw the request");
    assert_eq!(last.header("authorization"), bearer(ACME_SLACK));
}

/// The summary line of [`assert_still_serves`]'s request.
const STILL_SERVES: &str =
    "alice allow eng-slack tenant:slack_bot_token 200 GET https://slack.test/api/health";

/// The JSON error message of a response.
fn message(resp: &Resp) -> String {
    resp.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// An address nothing listens on (bound, then released).
async fn unused_addr() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// The one audit record whose path is `path` (panics unless exactly one).
fn record_for(records: &[Record], path: &str) -> Record {
    let found: Vec<&Record> = records.iter().filter(|r| r.path == path).collect();
    assert_eq!(found.len(), 1, "records for {path}: {records:#?}");
    found[0].clone()
}

/// A plain-HTTP upstream (behind `http://intranet.test`) that misbehaves according to the
/// request path. It keeps every request head it read and counts the `x` bytes of uploaded
/// bodies.
struct Faulty {
    raw: RawUpstream,
    heads: Arc<Mutex<Vec<String>>>,
    uploaded: Arc<AtomicUsize>,
}

impl Faulty {
    async fn start() -> Self {
        let heads: Arc<Mutex<Vec<String>>> = Arc::default();
        let uploaded: Arc<AtomicUsize> = Arc::default();
        let raw = {
            let (heads, uploaded) = (heads.clone(), uploaded.clone());
            RawUpstream::start(move |tcp| misbehave(tcp, heads.clone(), uploaded.clone())).await
        };
        Self {
            raw,
            heads,
            uploaded,
        }
    }

    /// The request heads received, in order.
    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    /// Asserts that exactly one request for `path` arrived, carrying acme's intranet key.
    fn assert_got(&self, path: &str) {
        let heads: Vec<String> = self
            .heads()
            .into_iter()
            .filter(|h| h.split(' ').nth(1) == Some(path))
            .collect();
        assert_eq!(heads.len(), 1, "requests for {path}: {heads:#?}");
        assert!(
            heads[0]
                .to_ascii_lowercase()
                .contains(&format!("x-api-key: {ACME_INTRANET}").to_ascii_lowercase()),
            "{}",
            heads[0]
        );
    }
}

async fn misbehave(mut tcp: TcpStream, heads: Arc<Mutex<Vec<String>>>, uploaded: Arc<AtomicUsize>) {
    let head = read_head(&mut tcp).await;
    let end = head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(head.len(), |i| i + 4);
    let text = String::from_utf8_lossy(&head[..end]).into_owned();
    let path = text.split(' ').nth(1).unwrap_or_default().to_owned();
    heads.lock().unwrap().push(text);
    let ok_head = |len: usize| {
        format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len}\r\n\r\n")
    };
    match path.as_str() {
        // Reset (RST) before any response.
        "/reset" => {
            let _ = tcp.set_zero_linger();
            drop(tcp);
        }
        // Orderly close (FIN) before any response.
        "/close" => drop(tcp),
        // Not HTTP at all.
        "/garbage" => {
            let _ = tcp.write_all(b"SSH-2.0-OpenSSH_9.6p1 Ubuntu\r\n").await;
            let _ = tcp.shutdown().await;
        }
        // An HTTP-looking head that does not parse.
        "/bad-length" => {
            let _ = tcp
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: lots\r\n\r\nhello")
                .await;
            let _ = tcp.shutdown().await;
        }
        // Headers and 100 of 1000 promised bytes, then a reset.
        "/reset-mid-body" => {
            let _ = tcp.write_all(ok_head(1000).as_bytes()).await;
            let _ = tcp.write_all(&[b'a'; 100]).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let _ = tcp.set_zero_linger();
            drop(tcp);
        }
        // Never answers.
        "/slow-head" => tokio::time::sleep(Duration::from_secs(10)).await,
        // Headers and 10 of 1000 bytes, then silence.
        "/slow-body" => {
            let _ = tcp.write_all(ok_head(1000).as_bytes()).await;
            let _ = tcp.write_all(&[b'b'; 10]).await;
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        // 30 bytes in three pieces 500 ms apart: slower in total than the 1 s timeout, but
        // never idle for that long.
        "/drip" => {
            let _ = tcp.write_all(ok_head(30).as_bytes()).await;
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let _ = tcp.write_all(&[b'c'; 10]).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // 2560 bytes in five 512-byte pieces.
        "/stream-big" => {
            // Chunked, so that nothing declares the size up front.
            let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
            let _ = tcp.write_all(head.as_bytes()).await;
            for _ in 0..5 {
                let _ = tcp.write_all(b"200\r\n").await;
                let _ = tcp.write_all(&[b'd'; 512]).await;
                let _ = tcp.write_all(b"\r\n").await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // Counts the body's `x` bytes (chunk-size lines are hex digits) until the sender gives
        // up; never answers.
        "/upload" => {
            let mut count = head[end..].iter().filter(|&&b| b == b'x').count();
            uploaded.store(count, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
                if n == 0 {
                    break;
                }
                count += buf[..n].iter().filter(|&&b| b == b'x').count();
                uploaded.store(count, Ordering::SeqCst);
            }
        }
        _ => {
            let _ = tcp
                .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                .await;
        }
    }
}

/// A harness whose `http://intranet.test` is a [`Faulty`] upstream.
async fn with_faulty(limits: &str) -> (Harness, Faulty) {
    let faulty = Faulty::start().await;
    let h = Harness::start_with(Config {
        limits: limits.into(),
        connect_to: vec![("http://intranet.test".into(), faulty.raw.addr)],
        ..Config::default()
    })
    .await;
    (h, faulty)
}

/// A GET for `http://intranet.test{path}` as alice, over a raw connection: the response as
/// far as it got (a cut body stays short of its `Content-Length`).
async fn raw_intranet_get(h: &Harness, path: &str) -> RawResponse {
    h.raw(&raw_request(
        "GET",
        &format!("http://intranet.test{path}"),
        Some(&h.alice),
        &["Host: intranet.test"],
    ))
    .await
}

// === 1. connection refused ===

#[tokio::test(flavor = "multi_thread")]
async fn connection_refused_is_502_and_audited() {
    let closed = unused_addr().await;
    let h = Harness::start_with(Config {
        connect_to: vec![("https://api.github.test".into(), closed)],
        ..Config::default()
    })
    .await;
    let resp = h
        .send(get(
            "https://api.github.test/repos/acme/web",
            Some(&h.alice),
        ))
        .await;
    resp.assert_error(502, "upstream_failed");
    assert!(message(&resp).contains("connect"), "{resp:?}");
    assert!(!String::from_utf8_lossy(&resp.body).contains(ALICE_GITHUB));
    assert_still_serves(&h).await;
    assert_eq!(
        h.audit_summary(2).await,
        [
            "alice error upstream_failed user:github_token 502 GET https://api.github.test/repos/acme/web",
            STILL_SERVES,
        ]
    );
    h.assert_audit_clean(&[]);
}

// === 2. resets ===

#[tokio::test(flavor = "multi_thread")]
async fn a_reset_or_close_before_the_response_is_502() {
    let (h, faulty) = with_faulty("").await;
    for path in ["/reset", "/close"] {
        let resp = h
            .send(get(&format!("http://intranet.test{path}"), Some(&h.alice)))
            .await;
        resp.assert_error(502, "upstream_failed");
        faulty.assert_got(path);
    }
    assert_still_serves(&h).await;
    assert_eq!(
        h.audit_summary(3).await,
        [
            "alice error upstream_failed tenant:intranet_key 502 GET http://intranet.test/reset",
            "alice error upstream_failed tenant:intranet_key 502 GET http://intranet.test/close",
            STILL_SERVES,
        ]
    );
    h.assert_audit_clean(&[]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reset_mid_body_cuts_the_callers_response_and_is_audited() {
    let (h, faulty) = with_faulty("").await;
    let resp = raw_intranet_get(&h, "/reset-mid-body").await;
    // The head had gone out already: the status stands, the body (re-framed as chunked by the
    // scrubber) is cut short and the connection closed.
    assert_eq!(resp.status, 200, "{resp:?}");
    assert!(resp.body.len() < 1000, "{} bytes", resp.body.len());
    assert!(resp.body.iter().all(|&b| b == b'a'));
    faulty.assert_got("/reset-mid-body");

    let records = h.wait_audit(1).await;
    let r = record_for(&records, "/reset-mid-body");
    assert_eq!(
        (r.decision.as_str(), r.reason.as_deref(), r.status),
        ("error", Some("upstream_body_failed"), Some(200)),
        "{r:#?}"
    );
    assert!(r.bytes <= 100, "{r:#?}");
    assert!(r.bytes >= resp.body.len() as u64, "{r:#?}");
    assert_still_serves(&h).await;
    h.assert_audit_clean(&[]);
}

// === 3. timeouts ===

#[tokio::test(flavor = "multi_thread")]
async fn slow_headers_are_504_after_upstream_timeout() {
    let (h, faulty) = with_faulty("upstream_timeout = \"1s\"\n").await;
    let started = Instant::now();
    let resp = h
        .send(get("http://intranet.test/slow-head", Some(&h.alice)))
        .await;
    let took = started.elapsed();
    resp.assert_error(504, "upstream_timeout");
    assert!(
        (Duration::from_millis(900)..Duration::from_millis(2500)).contains(&took),
        "answered after {took:?}"
    );
    faulty.assert_got("/slow-head");
    assert_still_serves(&h).await;
    assert_eq!(
        h.audit_summary(2).await,
        [
            "alice error upstream_timeout tenant:intranet_key 504 GET http://intranet.test/slow-head",
            STILL_SERVES,
        ]
    );
    let r = record_for(&h.audit_records(), "/slow-head");
    assert!((900..2500).contains(&r.duration), "{r:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_body_is_cut_after_the_idle_timeout_but_a_slow_one_flows() {
    let (h, faulty) = with_faulty("upstream_timeout = \"1s\"\n").await;

    // Headers, 10 bytes, then silence: cut after ~1 s without data.
    let started = Instant::now();
    let resp = raw_intranet_get(&h, "/slow-body").await;
    let took = started.elapsed();
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body, [b'b'; 10], "{resp:?}");
    assert!(
        (Duration::from_millis(900)..Duration::from_millis(2500)).contains(&took),
        "cut after {took:?}"
    );
    faulty.assert_got("/slow-body");

    // Slower in total than the timeout, but never idle that long: relayed whole.
    let started = Instant::now();
    let resp = raw_intranet_get(&h, "/drip").await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body, [b'c'; 30], "{resp:?}");
    assert!(started.elapsed() > Duration::from_millis(1400));

    let records = h.wait_audit(2).await;
    let slow = record_for(&records, "/slow-body");
    assert_eq!(
        (
            slow.decision.as_str(),
            slow.reason.as_deref(),
            slow.status,
            slow.bytes
        ),
        ("error", Some("upstream_body_failed"), Some(200), 10),
        "{slow:#?}"
    );
    let drip = record_for(&records, "/drip");
    assert_eq!(
        (
            drip.decision.as_str(),
            drip.reason.as_deref(),
            drip.status,
            drip.bytes
        ),
        ("allow", None, Some(200), 30),
        "{drip:#?}"
    );
    assert_still_serves(&h).await;
    h.assert_audit_clean(&[]);
}

// === 4. upstream answers ===

#[tokio::test(flavor = "multi_thread")]
async fn upstream_5xx_is_the_apis_own_answer_and_passes_unchanged() {
    let h = Harness::start().await;
    h.upstream.respond(|r| match r.path() {
        "/repos/acme/e500" => json_response(
            500,
            serde_json::json!({"message": "Internal Server Error", "request_id": "r-500"}),
        ),
        "/repos/acme/e503" => {
            let mut resp = json_response(
                503,
                serde_json::json!({"message": "maintenance", "retry": true}),
            );
            resp.headers_mut()
                .insert("retry-after", "7".parse().unwrap());
            resp
        }
        _ => echo(r),
    });
    let cases = [
        (
            "/repos/acme/e500",
            500,
            r#"{"message":"Internal Server Error","request_id":"r-500"}"#,
        ),
        (
            "/repos/acme/e503",
            503,
            r#"{"message":"maintenance","retry":true}"#,
        ),
    ];
    for (path, status, body) in cases {
        let resp = h
            .send(get(
                &format!("https://api.github.test{path}"),
                Some(&h.alice),
            ))
            .await;
        assert_eq!(resp.status, status, "{resp:?}");
        assert_eq!(resp.body, body.as_bytes(), "behalf rewrote the body");
        assert_eq!(
            resp.header("content-type").as_deref(),
            Some("application/json")
        );
    }
    let resp = h
        .send(get(
            "https://api.github.test/repos/acme/e503",
            Some(&h.alice),
        ))
        .await;
    assert_eq!(resp.header("retry-after").as_deref(), Some("7"));
    assert_eq!(h.upstream.requests().len(), 3);
    assert_still_serves(&h).await;
    let gh = "https://api.github.test";
    assert_eq!(
        h.audit_summary(4).await,
        [
            format!("alice allow eng-github user:github_token 500 GET {gh}/repos/acme/e500"),
            format!("alice allow eng-github user:github_token 503 GET {gh}/repos/acme/e503"),
            format!("alice allow eng-github user:github_token 503 GET {gh}/repos/acme/e503"),
            STILL_SERVES.into(),
        ]
    );
    assert!(h.audit_records().iter().all(|r| r.reason.is_none()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_garbage_answer_is_502() {
    let (h, faulty) = with_faulty("").await;
    for path in ["/garbage", "/bad-length"] {
        let resp = h
            .send(get(&format!("http://intranet.test{path}"), Some(&h.alice)))
            .await;
        resp.assert_error(502, "upstream_failed");
        assert!(!String::from_utf8_lossy(&resp.body).contains("SSH-2.0"));
        faulty.assert_got(path);
    }
    assert_still_serves(&h).await;
    assert_eq!(
        h.audit_summary(3).await,
        [
            "alice error upstream_failed tenant:intranet_key 502 GET http://intranet.test/garbage",
            "alice error upstream_failed tenant:intranet_key 502 GET http://intranet.test/bad-length",
            STILL_SERVES,
        ]
    );
}

// === 5. and 6. TLS and DNS ===

/// Origins whose names the test resolver maps (to loopback relays, hence
/// `allow_private_ips`); `nodns.test` is never mapped.
const TLS_FAULTS: &str = r#"[service]
name = "tlsfaults"
origins = [
    "https://untrusted.test",
    "https://selfsigned.test",
    "https://wrongname.test",
    "https://expired.test",
    "https://goodtls.test",
    "https://nodns.test",
]
credential = { name = "github_token", scope = "user" }
inject = { header = "Authorization", template = "Bearer {credential}" }
allow_private_ips = true
"#;

const TLS_FAULTS_GRANT: &str = r#"
[[grant]]
id = "eng-tlsfaults"
who = ["group:eng"]
clients = ["proxy"]
service = "tlsfaults"
allow = ["GET /**"]
"#;

/// A TLS server configuration (HTTP/1.1) for one DER certificate and PKCS#8 key.
fn server_config_for(
    cert: rustls::pki_types::CertificateDer<'static>,
    key: Vec<u8>,
) -> Arc<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.into()),
    )
    .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A TCP relay to `target` that keeps every byte the client (behalf) sent: what went over
/// the wire.
struct Relay {
    raw: RawUpstream,
    sent: Arc<Mutex<Vec<u8>>>,
}

impl Relay {
    async fn to(target: SocketAddr) -> Self {
        let sent: Arc<Mutex<Vec<u8>>> = Arc::default();
        let raw = {
            let sent = sent.clone();
            RawUpstream::start(move |client| {
                let sent = sent.clone();
                async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let up = async {
                        let mut buf = [0u8; 4096];
                        while let Ok(n) = client_read.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            sent.lock().unwrap().extend_from_slice(&buf[..n]);
                            if server_write.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = server_write.shutdown().await;
                    };
                    let down = async {
                        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                        let _ = client_write.shutdown().await;
                    };
                    tokio::join!(up, down);
                }
            })
            .await
        };
        Self { raw, sent }
    }

    /// Asserts that bytes went out (a TLS handshake) and none of them is `needle` in clear.
    fn assert_nothing_in_clear(&self, what: &str, needles: &[&str]) {
        let sent = self.sent.lock().unwrap().clone();
        assert!(!sent.is_empty(), "{what}: nothing was sent (no handshake?)");
        assert_eq!(
            sent[0], 0x16,
            "{what}: the first record is not a TLS handshake"
        );
        for needle in needles {
            assert!(
                !sent.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{what}: {needle:?} went over the wire in the clear"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_upstream_certificates_are_502_and_nothing_is_sent() {
    let h = Harness::start_with(Config {
        extra_services: vec![("tlsfaults".into(), TLS_FAULTS.into())],
        acme_extra: TLS_FAULTS_GRANT.into(),
        ..Config::default()
    })
    .await;
    // A CA behalf does not trust, under the same name as the one it does (so the chain is
    // found and its signature fails), and a self-signed leaf (no known issuer at all).
    let rogue = TestCa::new(&h.tmp.path().join("rogue-ca.pem"));
    let self_signed =
        rcgen::generate_simple_self_signed(vec!["selfsigned.test".to_owned()]).unwrap();
    let self_signed = server_config_for(
        self_signed.cert.der().clone(),
        self_signed.signing_key.serialize_der(),
    );
    let servers = [
        (
            "untrusted.test",
            rogue.server_config(&["untrusted.test"]),
            "badsignature",
        ),
        ("selfsigned.test", self_signed, "unknownissuer"),
        (
            "wrongname.test",
            h.ca.server_config(&["elsewhere.test"]),
            "not valid for name",
        ),
        (
            "expired.test",
            h.ca.server_config_with(&["expired.test"], |p| {
                p.not_before = rcgen::date_time_ymd(2020, 1, 1);
                p.not_after = rcgen::date_time_ymd(2021, 1, 1);
            }),
            "expired",
        ),
    ];
    let mut upstreams = Vec::new();
    for (host, config, why) in servers {
        let mock = MockUpstream::start(Some(config)).await;
        let relay = Relay::to(mock.addr).await;
        h.resolver.set(host, vec![relay.raw.addr]);
        let path = "/repos/acme/private-path";
        let resp = h
            .send(get(&format!("https://{host}{path}"), Some(&h.alice)))
            .await;
        resp.assert_error(502, "upstream_failed");
        let msg = message(&resp).to_ascii_lowercase();
        // The caller learns it was TLS; the precise cause (`why`) goes to behalf's log only.
        assert!(
            msg.contains("tls") && msg.contains("certificate"),
            "{host} ({why}): {msg}"
        );
        assert!(!msg.contains(&ALICE_GITHUB.to_ascii_lowercase()));
        mock.assert_untouched(host);
        assert_eq!(mock.connections(), 1, "{host}: one handshake, no retry");
        relay.assert_nothing_in_clear(host, &[ALICE_GITHUB, "private-path", "GET "]);
        upstreams.push((mock, relay));
    }

    // Control: the same path through a certificate that checks out works, and still sends
    // nothing in the clear.
    let good = MockUpstream::start(Some(h.ca.server_config(&["goodtls.test"]))).await;
    let relay = Relay::to(good.addr).await;
    h.resolver.set("goodtls.test", vec![relay.raw.addr]);
    let resp = h
        .send(get(
            "https://goodtls.test/repos/acme/private-path",
            Some(&h.alice),
        ))
        .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(
        good.only().header("authorization"),
        [format!("Bearer {ALICE_GITHUB}")]
    );
    relay.assert_nothing_in_clear("goodtls.test", &[ALICE_GITHUB, "private-path"]);

    assert_still_serves(&h).await;
    let failed = |host: &str| {
        format!(
            "alice error upstream_failed user:github_token 502 GET https://{host}/repos/acme/private-path"
        )
    };
    assert_eq!(
        h.audit_summary(6).await,
        [
            failed("untrusted.test"),
            failed("selfsigned.test"),
            failed("wrongname.test"),
            failed("expired.test"),
            "alice allow eng-tlsfaults user:github_token 200 GET https://goodtls.test/repos/acme/private-path".into(),
            STILL_SERVES.into(),
        ]
    );
    // Dialled through the resolver and the guard, not a --connect-to override.
    let records = h.audit_records();
    assert!(records[..5].iter().all(|r| !r.override_), "{records:#?}");
    h.assert_audit_clean(&[]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_name_that_does_not_resolve_is_502() {
    let h = Harness::start_with(Config {
        extra_services: vec![("tlsfaults".into(), TLS_FAULTS.into())],
        acme_extra: TLS_FAULTS_GRANT.into(),
        ..Config::default()
    })
    .await;
    let resp = h
        .send(get("https://nodns.test/repos/acme/x", Some(&h.alice)))
        .await;
    resp.assert_error(502, "upstream_failed");
    assert!(message(&resp).contains("resolve"), "{resp:?}");
    assert_eq!(h.resolver.asked(), ["nodns.test"]);
    assert_still_serves(&h).await;
    assert_eq!(
        h.audit_summary(2).await,
        [
            "alice error upstream_failed user:github_token 502 GET https://nodns.test/repos/acme/x",
            STILL_SERVES,
        ]
    );
    h.assert_audit_clean(&[]);
}

// === 7. limits ===

const SMALL_LIMITS: &str = "max_request_body = \"1KiB\"\nmax_response_body = \"2KiB\"\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_declared_oversized_request_body_is_413_before_anything_is_sent() {
    let (h, _faulty) = with_faulty(SMALL_LIMITS).await;
    let issues = "https://api.github.test/repos/acme/web/issues";
    let post = |n: usize| {
        request("POST", issues, Some(&h.alice))
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from(vec![b'x'; n])))
            .unwrap()
    };
    let resp = h.send(post(1025)).await;
    resp.assert_error(413, "bad_request");
    assert!(message(&resp).contains("max_request_body"), "{resp:?}");
    h.upstream.assert_untouched("declared oversized body");
    assert_eq!(h.upstream.connections(), 0, "nothing was dialled");

    // Control: exactly at the limit goes through whole.
    let resp = h.send(post(1024)).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(h.upstream.only().body.len(), 1024);

    assert_still_serves(&h).await;
    assert_eq!(
        h.audit_summary(3).await,
        [
            format!("alice deny bad_request - 413 POST {issues}"),
            format!("alice allow eng-github user:github_token 200 POST {issues}"),
            STILL_SERVES.into(),
        ]
    );
    h.assert_audit_clean(&[]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunked_request_body_over_the_limit_is_cut_mid_stream() {
    let (h, faulty) = with_faulty(SMALL_LIMITS).await;
    // Four 512-byte chunks: the third crosses the 1 KiB limit.
    let mut bytes = raw_request(
        "POST",
        "http://intranet.test/upload",
        Some(&h.alice),
        &["Host: intranet.test", "Transfer-Encoding: chunked"],
    );
    for _ in 0..4 {
        bytes.extend_from_slice(b"200\r\n");
        bytes.extend_from_slice(&[b'x'; 512]);
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b"0\r\n\r\n");
    let resp = h.raw(&bytes).await;
    assert_eq!(
        (resp.status, resp.error_code().as_deref()),
        (413, Some("bad_request")),
        "{resp:?}"
    );
    // Depending on timing the upstream gets the head and up to 1 KiB, or nothing at all
    // (the body fails before hyper flushes the head); never more than the limit.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(faulty.heads().len() <= 1, "{:#?}", faulty.heads());
    let uploaded = faulty.uploaded.load(Ordering::SeqCst);
    assert!(uploaded <= 1024, "the upstream got {uploaded} body bytes");

    assert_still_serves(&h).await;
    assert_eq!(
        h.audit_summary(2).await,
        [
            "alice deny bad_request tenant:intranet_key 413 POST http://intranet.test/upload",
            STILL_SERVES,
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_response_over_the_limit_is_cut_and_audited() {
    let (h, _faulty) = with_faulty(SMALL_LIMITS).await;
    h.upstream.respond(|r| {
        let n = match r.path() {
            "/repos/acme/big" => 4096,
            "/repos/acme/exact" => 2048,
            _ => return echo(r),
        };
        let mut resp = json_response(200, serde_json::json!({}));
        *resp.body_mut() = behalf::egress::body::boxed(Full::new(Bytes::from(vec![b'z'; n])));
        resp
    });
    let get_raw = |path: &str| {
        raw_request(
            "GET",
            &format!("https://api.github.test{path}"),
            Some(&h.alice),
            &["Host: api.github.test"],
        )
    };

    // Declared too large by Content-Length: refused up front with a JSON 502.
    let big = h.raw(&get_raw("/repos/acme/big")).await;
    assert_eq!(big.status, 502, "{big:?}");
    assert!(
        String::from_utf8_lossy(&big.body).contains("max_response_body"),
        "{big:?}"
    );

    // Streamed in 512-byte pieces: relayed up to the cap, then cut.
    let stream = raw_intranet_get(&h, "/stream-big").await;
    assert_eq!(stream.status, 200, "{stream:?}");
    assert!(
        stream.body.len() <= 2048,
        "{} bytes relayed",
        stream.body.len()
    );

    // Control: exactly at the cap arrives whole.
    let exact = h.raw(&get_raw("/repos/acme/exact")).await;
    assert_eq!((exact.status, exact.body.len()), (200, 2048));

    let records = h.wait_audit(3).await;
    let big = record_for(&records, "/repos/acme/big");
    assert_eq!(
        (
            big.decision.as_str(),
            big.reason.as_deref(),
            big.status,
            big.bytes
        ),
        ("error", Some("upstream_failed"), Some(502), 0),
        "{big:#?}"
    );
    let r = record_for(&records, "/stream-big");
    assert_eq!(
        (r.decision.as_str(), r.reason.as_deref(), r.status),
        ("error", Some("response_too_large"), Some(200)),
        "{r:#?}"
    );
    // `bytes` is what was relayed: never more than the cap, at least what arrived.
    assert!(
        r.bytes <= 2048,
        "/stream-big: bytes {} over the cap",
        r.bytes
    );
    assert!(r.bytes >= stream.body.len() as u64, "{r:#?}");
    let exact = record_for(&records, "/repos/acme/exact");
    assert_eq!((exact.reason.as_deref(), exact.bytes), (None, 2048));
    assert_still_serves(&h).await;
    h.assert_audit_clean(&[]);
}

// === 8. audit write failure ===

#[tokio::test(flavor = "multi_thread")]
async fn an_unwritable_audit_log_fails_every_request_closed_and_recovers() {
    let h = Harness::start_with(Config {
        before_open: Some(Box::new(|state: &Path| {
            let dir = state.join(audit::DIR);
            fs::create_dir_all(&dir).unwrap();
            symlink("/dev/full", dir.join(audit::CURRENT)).unwrap();
        })),
        ..Config::default()
    })
    .await;
    assert!(!h.egress.audit().healthy());
    let github = "https://api.github.test/repos/acme/web";

    // Allowed, denied, unauthenticated and malformed: all 503, nothing forwarded.
    let allowed = h.send(get(github, Some(&h.alice))).await;
    allowed.assert_error(503, "unavailable");
    let denied = h.send(get(github, Some(&h.carol))).await;
    denied.assert_error(503, "unavailable");
    let anonymous = h.send(get(github, None)).await;
    anonymous.assert_error(503, "unavailable");
    let tricky = h
        .raw(&raw_request(
            "GET",
            "https://api.github.test/repos/acme/%2e%2e/x",
            Some(&h.alice),
            &["Host: api.github.test"],
        ))
        .await;
    assert_eq!(
        (tricky.status, tricky.error_code().as_deref()),
        (503, Some("unavailable")),
        "{tricky:?}"
    );
    let slack = h
        .send(get("https://slack.test/api/health", Some(&h.alice)))
        .await;
    slack.assert_error(503, "unavailable");
    h.upstream.assert_untouched("audit log unwritable");
    assert_eq!(h.upstream.connections(), 0, "nothing was dialled");
    assert!(
        h.egress
            .audit()
            .last_error()
            .is_some_and(|e| e.contains("current.jsonl")),
        "{:?}",
        h.egress.audit().last_error()
    );

    // The disk is back: the next request recovers the log by itself.
    let current = h.audit_dir().join(audit::CURRENT);
    fs::remove_file(&current).unwrap();
    fs::write(&current, b"").unwrap();
    let resp = h.send(get(github, Some(&h.alice))).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    h.send(get(github, Some(&h.carol)))
        .await
        .assert_error(403, "egress_denied");
    let resp = h.send(get(github, None)).await;
    assert_eq!(resp.status, 407);
    assert_eq!(
        h.upstream.only().header("authorization"),
        [format!("Bearer {ALICE_GITHUB}")]
    );
    assert!(h.egress.audit().healthy());
    assert_eq!(
        h.audit_summary(3).await,
        [
            format!("alice allow eng-github user:github_token 200 GET {github}"),
            format!("carol deny route_not_granted - 403 GET {github}"),
            "- deny unauthenticated - 407 GET https://api.github.test".into(),
        ]
    );
    // The recovered log is a whole chain from seq 1, opened by a `start` record.
    let key = audit::read_key(&h.state).unwrap();
    let report = audit::verify(&h.audit_dir(), &key).unwrap();
    assert_eq!((report.records, report.head_seq), (4, 4));
    let text = fs::read_to_string(&current).unwrap();
    let first: Record = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!((first.seq, first.decision.as_str()), (1, "start"));
    h.assert_audit_clean(&[]);
}

// === 9. behalf audit verify ===

/// Runs `behalf --policies P --state S audit verify`: (exit code, stdout + stderr).
fn cli_verify(policies: &Path, state: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_behalf"))
        .arg("--policies")
        .arg(policies)
        .arg("--state")
        .arg(state)
        .args(["audit", "verify"])
        .env_remove("BEHALF_LOG")
        .output()
        .unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A fresh state dir holding a copy of `from`'s audit key and log files; returns its path.
fn copy_audit(from: &StateDir, to: &Path) -> std::path::PathBuf {
    let state = StateDir::open(to).unwrap();
    fs::copy(from.join(audit::KEY_FILE), state.join(audit::KEY_FILE)).unwrap();
    let dir = state.join(audit::DIR);
    fs::create_dir_all(&dir).unwrap();
    for entry in fs::read_dir(from.join(audit::DIR)).unwrap() {
        let entry = entry.unwrap();
        if entry.path().extension().is_some_and(|e| e == "jsonl") {
            fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
        }
    }
    to.to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn behalf_audit_verify_passes_on_a_real_run_and_names_each_tampering() {
    let h = Harness::start().await;
    let github = "https://api.github.test/repos/acme";
    for (token, path) in [
        (&h.alice, "/web"),
        (&h.bob, "/api?page=2"),
        (&h.carol, "/web"),
        (&h.alice, "/web/pulls"),
        (&h.bob, "/infra"),
    ] {
        h.send(get(&format!("{github}{path}"), Some(token))).await;
    }
    h.send(get(&format!("{github}/web"), None)).await;
    h.send(get("https://api.github.test/orgs/acme", Some(&h.alice)))
        .await
        .assert_error(403, "egress_denied");
    let records = h.wait_audit(7).await;
    assert_eq!(records.len(), 7, "{records:#?}");
    assert_eq!(
        records
            .iter()
            .map(|r| r.decision.as_str())
            .collect::<Vec<_>>(),
        ["allow", "allow", "deny", "allow", "allow", "deny", "deny"]
    );
    h.assert_audit_clean(&[]);

    // The live log verifies.
    let live = h.tmp.path().join("state");
    let (code, out) = cli_verify(&h.policies, &live);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("audit log verified: 8 records in 1 files, head seq 8"),
        "{out}"
    );

    let lines: Vec<String> = fs::read_to_string(h.audit_dir().join(audit::CURRENT))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 8);
    let seq_of = |line: &str| serde_json::from_str::<Record>(line).unwrap().seq;
    let tamper = |name: &str, edit: &dyn Fn(&mut Vec<String>) -> String| {
        let state = copy_audit(&h.state, &h.tmp.path().join(name));
        let current = state.join(audit::DIR).join(audit::CURRENT);
        let (code, out) = cli_verify(&h.policies, &state);
        assert_eq!(code, Some(0), "{name}, untouched copy: {out}");
        let mut edited = lines.clone();
        let tail = edit(&mut edited);
        fs::write(&current, edited.join("\n") + &tail).unwrap();
        let (code, out) = cli_verify(&h.policies, &state);
        assert_eq!(code, Some(1), "{name}: {out}");
        (current, out)
    };

    // (a) One byte of a middle record changed (a digit of its timestamp's year).
    let (current, out) = tamper("changed", &|lines| {
        let line = &mut lines[3];
        let at = line.find("\"ts\":\"").unwrap() + 6;
        let digit = line.as_bytes()[at];
        let other = if digit == b'9' { "8" } else { "9" };
        line.replace_range(at..=at, other);
        "\n".into()
    });
    let expected = format!(
        "{}:4: seq {}: bad mac",
        current.display(),
        seq_of(&lines[3])
    );
    assert!(out.contains(&expected), "expected {expected:?} in {out}");

    // (b) A middle record removed: the next one is named, with the gap.
    let (current, out) = tamper("removed", &|lines| {
        lines.remove(4);
        "\n".into()
    });
    let expected = format!(
        "{}:5: seq {}: seq gap: expected seq {}, found {}",
        current.display(),
        seq_of(&lines[5]),
        seq_of(&lines[4]),
        seq_of(&lines[5])
    );
    assert!(out.contains(&expected), "expected {expected:?} in {out}");

    // (c) The tail cut in the middle of the last record.
    let (current, out) = tamper("cut", &|lines| {
        let last = lines.last_mut().unwrap();
        last.truncate(last.len() - 20);
        String::new()
    });
    let expected = format!(
        "{}:8: expected seq {}: truncated tail",
        current.display(),
        seq_of(&lines[7])
    );
    assert!(out.contains(&expected), "expected {expected:?} in {out}");
}

// === 10. concurrency ===

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_concurrent_requests_each_carry_their_callers_credential() {
    const CONNECTIONS: usize = 40;
    const PER_CONNECTION: usize = 5;
    const TOTAL: usize = CONNECTIONS * PER_CONNECTION;
    let h = Harness::start().await;
    // Request i is alice's when i is even, bob's when odd; one connection carries both.
    let user = |i: usize| if i.is_multiple_of(2) { "alice" } else { "bob" };
    let secret = |i: usize| {
        if i.is_multiple_of(2) {
            ALICE_GITHUB
        } else {
            BOB_GITHUB
        }
    };

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..CONNECTIONS {
        let (addr, alice, bob) = (h.proxy_addr, h.alice.clone(), h.bob.clone());
        tasks.spawn(async move {
            let mut conn = ProxyConn::open(addr).await;
            let mut out = Vec::new();
            for j in 0..PER_CONNECTION {
                let i = c * PER_CONNECTION + j;
                let token = if i.is_multiple_of(2) { &alice } else { &bob };
                let url = format!("https://api.github.test/repos/acme/load/{i}");
                out.push((i, conn.send(get(&url, Some(token))).await));
            }
            out
        });
    }
    let mut responses = Vec::new();
    let all = async {
        while let Some(done) = tasks.join_next().await {
            responses.extend(done.unwrap());
        }
    };
    tokio::time::timeout(Duration::from_secs(15), all)
        .await
        .expect("200 requests did not finish within 15 s");
    let took = started.elapsed();
    assert_eq!(responses.len(), TOTAL);
    for (i, resp) in &responses {
        assert_eq!(resp.status, 200, "request {i}: {resp:?}");
        // The echo comes back scrubbed; the upstream's records below show who sent what.
        assert_eq!(
            resp.json()["headers"]["authorization"],
            serde_json::json!([behalf::egress::scrub::MARKER]),
            "request {i}"
        );
    }

    // What the upstream saw: each request once, with its own caller's credential.
    let seen = h.upstream.requests();
    assert_eq!(seen.len(), TOTAL);
    let mut targets = HashSet::new();
    for r in &seen {
        let i: usize = r.path().rsplit('/').next().unwrap().parse().unwrap();
        assert_eq!(
            r.header("authorization"),
            [format!("Bearer {}", secret(i))],
            "{}",
            r.target
        );
        assert!(r.header("proxy-authorization").is_empty());
        assert!(targets.insert(i), "request {i} arrived twice");
    }

    // The audit log: exactly one record per request, right user, and the chain verifies.
    let records = h.wait_audit(TOTAL).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let records_after = h.audit_records();
    assert_eq!(records.len(), TOTAL);
    assert_eq!(records_after.len(), TOTAL, "late extra records");
    let mut paths = HashSet::new();
    for r in &records {
        let i: usize = r.path.rsplit('/').next().unwrap().parse().unwrap();
        assert_eq!(
            (r.user.as_deref(), r.decision.as_str(), r.status),
            (Some(user(i)), "allow", Some(200)),
            "{r:#?}"
        );
        assert_eq!(r.credential.as_deref(), Some("user:github_token"));
        assert!(paths.insert(i), "two records for request {i}");
    }
    let key = audit::read_key(&h.state).unwrap();
    let report = audit::verify(&h.audit_dir(), &key).unwrap();
    assert_eq!(report.records as usize, TOTAL + 1, "one start record");
    h.assert_audit_clean(&[]);
    assert!(took < Duration::from_secs(15), "{took:?}");
}
