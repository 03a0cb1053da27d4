//! Response scrubbing over the wire (issue 5, "Must show"; DESIGN.md step 8), through the
//! forward proxy's plain-HTTP front door (the pipeline is the one CONNECT uses): every injected
//! form of the credential echoed back is replaced by [`MARKER`] in the body, the headers and
//! the reason phrase, also when split across body chunks; a stream (SSE) still flows event by
//! event; a compressed body is refused, not relayed; `Range` cannot be used to read a
//! credential piecewise; and `scrub_responses = false` really turns it off.
//!
//! Each test checks what the upstream saw (the credential, in clear), what the caller got
//! (the marker, never any form of the credential) and the audit record's `scrubbed` count.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use behalf::audit::Record;
use behalf::egress::scrub::MARKER;
use behalf::egress::{BoxBody, body};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::support::*;

// === helpers ===

/// The byte strings a credential may come back as: raw, standard base64 (padded and not),
/// plus any injected forms given.
fn forms(raw: &str, injected: &[String]) -> Vec<String> {
    let mut out = vec![
        raw.to_owned(),
        STANDARD.encode(raw),
        STANDARD_NO_PAD.encode(raw),
    ];
    out.extend(injected.iter().cloned());
    out
}

/// Asserts that none of `forms` appears in `bytes` (`what` names the place).
fn assert_absent(bytes: &[u8], forms: &[String], what: &str) {
    for f in forms {
        assert!(
            !bytes.windows(f.len()).any(|w| w == f.as_bytes()),
            "{what} contains {f:?}: {:?}",
            String::from_utf8_lossy(bytes)
        );
    }
}

/// Asserts that no form appears in the response's headers or body.
fn assert_scrubbed(resp: &Resp, forms: &[String]) {
    for (name, value) in &resp.headers {
        assert_absent(value.as_bytes(), forms, &format!("header {name}"));
    }
    assert_absent(&resp.body, forms, "the body");
}

/// The one audit record for `path` once at least `n` records are written.
async fn record_for(h: &Harness, n: usize, path: &str) -> Record {
    let records = h.wait_audit(n).await;
    let found: Vec<&Record> = records.iter().filter(|r| r.path == path).collect();
    assert_eq!(found.len(), 1, "records for {path}: {records:#?}");
    found[0].clone()
}

/// A response body fed from a channel: each `Bytes` sent becomes one data frame (so one
/// HTTP/1.1 chunk on the wire); dropping the sender ends the body.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

/// A 200 response with `headers` whose body is streamed from the returned sender.
fn streamed_response(headers: &[(&str, String)]) -> (mpsc::Sender<Bytes>, Response<BoxBody>) {
    let (tx, rx) = mpsc::channel(16);
    let mut resp = Response::new(body::boxed(ChannelBody(rx)));
    for (name, value) in headers {
        resp.headers_mut().append(
            header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    (tx, resp)
}

/// Sends `req` through the proxy on a fresh connection and returns the response with its
/// body still streaming (and the connection's sender, kept alive with it).
async fn send_streaming(
    h: &Harness,
    req: Request<Full<Bytes>>,
) -> (
    Response<Incoming>,
    hyper::client::conn::http1::SendRequest<Full<Bytes>>,
) {
    let tcp = TcpStream::connect(h.proxy_addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req))
        .await
        .expect("no response head from the proxy within 5 s")
        .unwrap();
    (resp, sender)
}

/// An upstream answer that honours `Range: bytes=A-B` on `body` (206 with that slice and a
/// `Content-Range`), and otherwise sends all of it (200).
fn range_answer(r: &Recorded, body: &str) -> Response<BoxBody> {
    let range = r.header("range").into_iter().next().and_then(|v| {
        let (a, b) = v.strip_prefix("bytes=")?.split_once('-')?;
        let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
        (a <= b && b < body.len()).then_some((a, b))
    });
    let (status, bytes) = match range {
        Some((a, b)) => (206, body.as_bytes()[a..=b].to_vec()),
        None => (200, body.as_bytes().to_vec()),
    };
    let mut resp = Response::new(body::boxed(Full::new(Bytes::from(bytes))));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    if let Some((a, b)) = range {
        resp.headers_mut().insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes {a}-{b}/{}", body.len())).unwrap(),
        );
    }
    resp
}

/// Removes HTTP/1.1 chunked framing.
fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size = std::str::from_utf8(&data[..line_end]).unwrap();
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
        data = &data[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

// === 1. every injected form ===

/// The default echo, plus the raw credential and its base64 placed in the body by the
/// upstream itself (as a debugging API might).
fn leaky_echo(h: &Harness) {
    h.upstream.respond_async(|r: Recorded| async move {
        let raw = match r.host().as_str() {
            "api.github.test" => ALICE_GITHUB,
            "jira.test" => ALICE_JIRA,
            "api.weather.test" => ACME_WEATHER,
            other => panic!("unexpected host {other}"),
        };
        let echoed = echo(&r).into_body().collect().await.unwrap().to_bytes();
        let mut json: serde_json::Value = serde_json::from_slice(&echoed).unwrap();
        json["leak"] = raw.into();
        json["leak_b64"] = STANDARD.encode(raw).into();
        json_response(200, json)
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn every_injected_form_echoed_back_is_scrubbed() {
    let h = Harness::start().await;
    leaky_echo(&h);

    // Bearer header form (and a request body that is not a credential, echoed intact).
    let req = request(
        "POST",
        "https://api.github.test/repos/acme/x/issues",
        Some(&h.alice),
    )
    .body(Full::new(Bytes::from_static(b"title=hello")))
    .unwrap();
    let resp = h.send(req).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let seen = h.upstream.requests();
    assert_eq!(
        seen.last().unwrap().header("authorization"),
        bearer(ALICE_GITHUB)
    );
    let json = resp.json();
    assert_eq!(
        json["headers"]["authorization"],
        serde_json::json!([MARKER])
    );
    assert_eq!(json["leak"], MARKER);
    assert_eq!(json["leak_b64"], MARKER);
    assert_eq!(json["body"], "title=hello");
    assert_scrubbed(&resp, &forms(ALICE_GITHUB, &bearer(ALICE_GITHUB)));
    let r = record_for(&h, 1, "/repos/acme/x/issues").await;
    assert_eq!((r.decision.as_str(), r.scrubbed), ("allow", 3), "{r:#?}");

    // Basic form: only the base64 of `x-token:<token>` was on the wire.
    let basic = STANDARD.encode(format!("x-token:{ALICE_JIRA}"));
    let resp = h
        .send(get("https://jira.test/rest/api/2/myself", Some(&h.alice)))
        .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let seen = h.upstream.requests();
    assert_eq!(
        seen.last().unwrap().header("authorization"),
        [format!("Basic {basic}")]
    );
    let json = resp.json();
    assert_eq!(
        json["headers"]["authorization"],
        serde_json::json!([format!("Basic {MARKER}")])
    );
    assert_eq!(json["leak"], MARKER);
    assert_eq!(json["leak_b64"], MARKER);
    assert_scrubbed(&resp, &forms(ALICE_JIRA, std::slice::from_ref(&basic)));
    let r = record_for(&h, 2, "/rest/api/2/myself").await;
    assert_eq!((r.decision.as_str(), r.scrubbed), ("allow", 3), "{r:#?}");

    // Query form: the echoed request target carries it.
    let resp = h
        .send(get(
            "https://api.weather.test/data/2.5/weather?q=Paris",
            Some(&h.alice),
        ))
        .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let seen = h.upstream.requests();
    assert_eq!(
        seen.last().unwrap().target,
        format!("/data/2.5/weather?q=Paris&appid={ACME_WEATHER}")
    );
    let json = resp.json();
    assert_eq!(
        json["target"],
        format!("/data/2.5/weather?q=Paris&appid={MARKER}")
    );
    assert_eq!(json["leak"], MARKER);
    assert_eq!(json["leak_b64"], MARKER);
    assert_scrubbed(&resp, &forms(ACME_WEATHER, &[]));
    let r = record_for(&h, 3, "/data/2.5/weather").await;
    assert_eq!((r.decision.as_str(), r.scrubbed), ("allow", 3), "{r:#?}");

    h.assert_audit_clean(&[&basic]);
}

// === 2. split across chunks, in a header, in the reason phrase ===

#[tokio::test(flavor = "multi_thread")]
async fn a_credential_split_across_chunks_or_in_a_header_is_scrubbed() {
    let h = Harness::start().await;
    let (a, b) = ALICE_GITHUB.split_at(5);
    // A near miss (the credential's first 13 bytes, then other bytes), split too: held back
    // while it could still be the credential, then released intact.
    let (near_a, near_b) = (&ALICE_GITHUB[..13], "XY-near-miss");
    let chunks: Vec<String> = vec![
        format!("id=1 token={a}"),
        format!("{b} near={near_a}"),
        format!("{near_b} end\n"),
    ];
    let sent = Arc::new(Mutex::new(Vec::new()));
    {
        let sent = sent.clone();
        let chunks = chunks.clone();
        h.upstream.respond_async(move |_r| {
            let (sent, chunks) = (sent.clone(), chunks.clone());
            async move {
                let (tx, resp) = streamed_response(&[
                    ("content-type", "text/plain".into()),
                    ("x-debug", format!("token={ALICE_GITHUB}")),
                    ("x-echo-auth", format!("Bearer {ALICE_GITHUB}")),
                ]);
                tokio::spawn(async move {
                    for (i, chunk) in chunks.into_iter().enumerate() {
                        if i > 0 {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        sent.lock().unwrap().push(chunk.clone());
                        if tx.send(Bytes::from(chunk)).await.is_err() {
                            return;
                        }
                    }
                });
                resp
            }
        });
    }

    let resp = h
        .send(get(
            "https://api.github.test/repos/acme/split",
            Some(&h.alice),
        ))
        .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(
        h.upstream.only().header("authorization"),
        bearer(ALICE_GITHUB)
    );
    // The upstream really sent the credential in two pieces.
    assert_eq!(sent.lock().unwrap().len(), 3);
    assert_eq!(
        String::from_utf8_lossy(&resp.body),
        format!("id=1 token={MARKER} near={near_a}{near_b} end\n")
    );
    assert_eq!(
        resp.header("x-debug").as_deref(),
        Some(format!("token={MARKER}").as_str())
    );
    assert_eq!(resp.header("x-echo-auth").as_deref(), Some(MARKER));
    assert_eq!(resp.header("content-length"), None);
    assert_scrubbed(&resp, &forms(ALICE_GITHUB, &bearer(ALICE_GITHUB)));
    let r = record_for(&h, 1, "/repos/acme/split").await;
    assert_eq!((r.decision.as_str(), r.scrubbed), ("allow", 3), "{r:#?}");
    h.assert_audit_clean(&[]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_credential_in_the_reason_phrase_is_scrubbed() {
    // A raw upstream behind http://intranet.test (X-Api-Key: <key>) that names the key in its
    // reason phrase, a header and the body.
    let raw = RawUpstream::start(|mut tcp| async move {
        let head = read_head(&mut tcp).await;
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let wanted = format!("x-api-key: {ACME_INTRANET}").to_ascii_lowercase();
        let body = if head.contains(&wanted) {
            format!("key={ACME_INTRANET}\n")
        } else {
            "no key\n".to_owned()
        };
        let resp = format!(
            "HTTP/1.1 200 Fine {ACME_INTRANET}\r\nX-Debug: key={ACME_INTRANET}\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = tcp.write_all(resp.as_bytes()).await;
        let _ = tcp.shutdown().await;
    })
    .await;
    let h = Harness::start_with(Config {
        connect_to: vec![("http://intranet.test".into(), raw.addr)],
        ..Config::default()
    })
    .await;

    let mut tcp = TcpStream::connect(h.proxy_addr).await.unwrap();
    tcp.write_all(&raw_request(
        "GET",
        "http://intranet.test/reason",
        Some(&h.alice),
        &["Host: intranet.test", "Connection: close"],
    ))
    .await
    .unwrap();
    let mut wire = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut wire))
        .await
        .expect("the proxy did not close within 5 s")
        .unwrap();
    assert_absent(&wire, &forms(ACME_INTRANET, &[]), "the response");
    let text = String::from_utf8_lossy(&wire).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let mut lines = head.split("\r\n");
    assert_eq!(
        lines.next(),
        Some(format!("HTTP/1.1 200 Fine {MARKER}").as_str())
    );
    let headers: Vec<String> = lines.map(str::to_ascii_lowercase).collect();
    assert!(
        headers.contains(&format!("x-debug: key={MARKER}").to_ascii_lowercase()),
        "{headers:?}"
    );
    let body = if headers.contains(&"transfer-encoding: chunked".to_owned()) {
        dechunk(body.as_bytes())
    } else {
        body.as_bytes().to_vec()
    };
    assert_eq!(String::from_utf8_lossy(&body), format!("key={MARKER}\n"));
    assert_eq!(raw.connections(), 1);

    let r = record_for(&h, 1, "/reason").await;
    assert_eq!((r.decision.as_str(), r.scrubbed), ("allow", 3), "{r:#?}");
    h.assert_audit_clean(&[]);
}

// === 3. SSE keeps flowing ===

#[tokio::test(flavor = "multi_thread")]
async fn an_sse_stream_flows_event_by_event_and_is_scrubbed() {
    let h = Harness::start().await;
    const EVENTS: usize = 4;
    let event = |i: usize| match i {
        1 => format!("id: 1\ndata: token={ALICE_GITHUB}\n\n"),
        _ => format!("id: {i}\ndata: tick {i}\n\n"),
    };
    let sent_at: Arc<Mutex<Vec<Instant>>> = Arc::default();
    {
        let sent_at = sent_at.clone();
        h.upstream.respond_async(move |_r| {
            let sent_at = sent_at.clone();
            async move {
                let (tx, resp) = streamed_response(&[
                    ("content-type", "text/event-stream".into()),
                    ("cache-control", "no-cache".into()),
                ]);
                tokio::spawn(async move {
                    for i in 0..EVENTS {
                        if i > 0 {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        sent_at.lock().unwrap().push(Instant::now());
                        if tx.send(Bytes::from(event(i))).await.is_err() {
                            return;
                        }
                    }
                });
                resp
            }
        });
    }

    let (resp, _sender) = send_streaming(
        &h,
        get("https://api.github.test/repos/acme/events", Some(&h.alice)),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers().get("content-type").unwrap(),
        "text/event-stream"
    );
    // Read frame by frame; note when each complete event has arrived.
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    let mut events: Vec<(String, Instant)> = Vec::new();
    let read = async {
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.unwrap().into_data() else {
                continue;
            };
            let now = Instant::now();
            buf.extend_from_slice(&data);
            while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
                let ev: Vec<u8> = buf.drain(..end + 2).collect();
                events.push((String::from_utf8(ev).unwrap(), now));
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("the stream did not end within 5 s");
    assert!(buf.is_empty(), "left over: {buf:?}");

    let sent_at = sent_at.lock().unwrap().clone();
    assert_eq!(sent_at.len(), EVENTS);
    let got: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    let expected: Vec<String> = (0..EVENTS)
        .map(|i| match i {
            1 => format!("id: 1\ndata: token={MARKER}\n\n"),
            _ => event(i),
        })
        .collect();
    assert_eq!(got, expected);
    for (i, ((_, received), sent)) in events.iter().zip(&sent_at).enumerate() {
        let lag = received.saturating_duration_since(*sent);
        assert!(
            lag < Duration::from_millis(150),
            "event {i} arrived {lag:?} after it was sent"
        );
    }
    assert!(
        events[0].1 < sent_at[EVENTS - 1],
        "the first event waited for the last"
    );
    let r = record_for(&h, 1, "/repos/acme/events").await;
    assert_eq!((r.decision.as_str(), r.scrubbed), ("allow", 1), "{r:#?}");
    h.assert_audit_clean(&[]);
}

// === 4. compressed bodies are refused ===

#[tokio::test(flavor = "multi_thread")]
async fn a_gzip_encoded_echo_is_refused_not_leaked() {
    let h = Harness::start().await;
    // "gzip" in name only: the echo's bytes as they are, credential and all.
    h.upstream.respond(|r| {
        let mut resp = echo(r);
        resp.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        resp
    });
    let req = request(
        "GET",
        "https://api.github.test/repos/acme/gz",
        Some(&h.alice),
    )
    .header(header::ACCEPT_ENCODING, "gzip, br")
    .body(Full::default())
    .unwrap();
    let resp = h.send(req).await;
    resp.assert_error(502, "upstream_failed");
    let message = resp.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.contains("encoded response (Content-Encoding: gzip)")
            && message.contains("identity"),
        "{message}"
    );
    assert_eq!(resp.header("content-encoding"), None);
    assert_scrubbed(&resp, &forms(ALICE_GITHUB, &bearer(ALICE_GITHUB)));
    assert!(
        !String::from_utf8_lossy(&resp.body).contains("\"headers\""),
        "the echo reached the caller: {resp:?}"
    );
    // The upstream was asked for identity encoding, whatever the caller accepts.
    let seen = h.upstream.only();
    assert_eq!(seen.header("authorization"), bearer(ALICE_GITHUB));
    assert_eq!(seen.header("accept-encoding"), ["identity"]);

    let r = record_for(&h, 1, "/repos/acme/gz").await;
    assert_eq!(
        (r.decision.as_str(), r.reason.as_deref(), r.status),
        ("error", Some("upstream_failed"), Some(502)),
        "{r:#?}"
    );
    h.assert_audit_clean(&[]);
}

// === 5. Range cannot reassemble the credential ===

#[tokio::test(flavor = "multi_thread")]
async fn range_requests_cannot_reassemble_the_credential() {
    let h = Harness::start().await;
    // The credential sits at bytes 7..25; three ranges would spell it, 6 bytes at a time
    // (each too short to be recognised on its own).
    let doc = format!("tokens={ALICE_GITHUB};\n");
    {
        let doc = doc.clone();
        h.upstream.respond(move |r| range_answer(r, &doc));
    }
    let mut pieces = String::new();
    for (i, range) in ["bytes=7-12", "bytes=13-18", "bytes=19-24"]
        .into_iter()
        .enumerate()
    {
        let req = request(
            "GET",
            &format!("https://api.github.test/repos/acme/doc{i}"),
            Some(&h.alice),
        )
        .header(header::RANGE, range)
        .header(header::IF_RANGE, "\"v1\"")
        .header(header::ACCEPT_ENCODING, "gzip")
        .body(Full::default())
        .unwrap();
        let resp = h.send(req).await;
        assert_eq!(resp.status, 200, "{range}: {resp:?}");
        assert_eq!(resp.header("content-range"), None, "{range}");
        assert_eq!(
            String::from_utf8_lossy(&resp.body),
            format!("tokens={MARKER};\n"),
            "{range}"
        );
        assert_scrubbed(&resp, &forms(ALICE_GITHUB, &bearer(ALICE_GITHUB)));
        pieces.push_str(&String::from_utf8_lossy(&resp.body));
    }
    assert!(!pieces.contains(ALICE_GITHUB));
    let seen = h.upstream.requests();
    assert_eq!(seen.len(), 3);
    for r in &seen {
        assert_eq!(r.header("authorization"), bearer(ALICE_GITHUB));
        assert!(r.header("range").is_empty(), "{r:#?}");
        assert!(r.header("if-range").is_empty(), "{r:#?}");
        assert_eq!(r.header("accept-encoding"), ["identity"]);
    }
    for i in 0..3 {
        let r = record_for(&h, 3, &format!("/repos/acme/doc{i}")).await;
        assert_eq!(
            (r.decision.as_str(), r.status, r.scrubbed),
            ("allow", Some(200), 1),
            "{r:#?}"
        );
    }
    h.assert_audit_clean(&[]);
}

// === 6. the switch ===

const NOSCRUB: &str = r#"[service]
name = "noscrub"
origins = ["http://noscrub.test"]
credential = { name = "intranet_key", scope = "tenant" }
inject = { header = "X-Api-Key", template = "{credential}" }
allow_plaintext = true
scrub_responses = false
"#;

const NOSCRUB_GRANT: &str = r#"
[[grant]]
id = "eng-noscrub"
who = ["group:eng"]
clients = ["proxy"]
service = "noscrub"
allow = ["GET /**"]
"#;

#[tokio::test(flavor = "multi_thread")]
async fn scrub_responses_false_passes_the_echo_through() {
    let noscrub = MockUpstream::start(None).await;
    let h = Harness::start_with(Config {
        extra_services: vec![("noscrub".into(), NOSCRUB.into())],
        acme_extra: NOSCRUB_GRANT.into(),
        connect_to: vec![("http://noscrub.test".into(), noscrub.addr)],
        ..Config::default()
    })
    .await;

    // The same key, the same injection form, the same echo: scrubbed on intranet (the
    // default), passed through on noscrub.
    let resp = h
        .send(get("http://intranet.test/echo", Some(&h.alice)))
        .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(h.plain.only().header("x-api-key"), [ACME_INTRANET]);
    assert_eq!(
        resp.json()["headers"]["x-api-key"],
        serde_json::json!([MARKER])
    );

    let resp = h
        .send(get("http://noscrub.test/echo", Some(&h.alice)))
        .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(noscrub.only().header("x-api-key"), [ACME_INTRANET]);
    assert_eq!(
        resp.json()["headers"]["x-api-key"],
        serde_json::json!([ACME_INTRANET])
    );

    // Nor are Range and Accept-Encoding touched: the upstream's range answer comes back.
    let doc = format!("tokens={ACME_INTRANET};\n");
    noscrub.respond(move |r| range_answer(r, &doc));
    let req = request("GET", "http://noscrub.test/doc", Some(&h.alice))
        .header(header::RANGE, "bytes=7-12")
        .header(header::ACCEPT_ENCODING, "gzip")
        .body(Full::default())
        .unwrap();
    let resp = h.send(req).await;
    assert_eq!(resp.status, 206, "{resp:?}");
    assert_eq!(String::from_utf8_lossy(&resp.body), &ACME_INTRANET[..6]);
    let seen = noscrub.requests();
    let last = seen.last().unwrap();
    assert_eq!(last.header("range"), ["bytes=7-12"]);
    assert_eq!(last.header("accept-encoding"), ["gzip"]);

    let records = h.wait_audit(3).await;
    let scrubbed: Vec<(&str, u64)> = records
        .iter()
        .map(|r| (r.origin.as_str(), r.scrubbed))
        .collect();
    assert_eq!(
        scrubbed,
        [
            ("http://intranet.test", 1),
            ("http://noscrub.test", 0),
            ("http://noscrub.test", 0),
        ]
    );
}
