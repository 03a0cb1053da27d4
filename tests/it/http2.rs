//! HTTP/2 to upstreams: behalf offers ALPN `h2` and `http/1.1`, and speaks whichever the
//! upstream picks. Each test checks the protocol the upstream saw, exactly the caller's
//! credential (and nothing the HTTP/2 framing forbids), and one audit record per request.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::Version;
use tokio::task::JoinSet;

use crate::support::*;

/// One service with three origins the test resolver points at mocks: HTTP/2 only, HTTP/1.1
/// only, and both (preferring HTTP/2).
const H2_SERVICE: &str = r#"[service]
name = "h2test"
origins = ["https://api.h2.test", "https://api.h1.test", "https://api.both.test"]
credential = { name = "github_token", scope = "user" }
inject = { header = "Authorization", template = "Bearer {credential}" }
allow_private_ips = true
"#;

const H2_GRANT: &str = r#"
[[grant]]
id = "eng-h2"
who = ["group:eng"]
clients = ["proxy"]
service = "h2test"
allow = ["GET /repos/acme/**", "POST /repos/acme/**"]
"#;

async fn harness() -> Harness {
    Harness::start_with(Config {
        extra_services: vec![("h2test".into(), H2_SERVICE.into())],
        acme_extra: H2_GRANT.into(),
        ..Config::default()
    })
    .await
}

/// An auto (HTTP/1.1 + HTTP/2) TLS mock for `host` offering `alpn`, reachable through the
/// harness's resolver (and so through the SSRF guard, which this service relaxes).
async fn mock(h: &Harness, host: &str, alpn: &[&str]) -> MockUpstream {
    let mock = MockUpstream::start_auto(Some(h.ca.server_config_alpn(&[host], alpn))).await;
    h.resolver.set(host, vec![mock.addr]);
    mock
}

/// The authority as the upstream saw it: `:authority`, and a `Host` header only if it agrees
/// (HTTP/2 allows one that matches; it must never differ).
fn assert_authority(seen: &Recorded, host: &str) {
    assert_eq!(seen.authority.as_deref(), Some(host), "{seen:#?}");
    let hosts = seen.header("host");
    assert!(
        hosts.is_empty() || hosts == [host],
        "Host disagrees with :authority: {seen:#?}"
    );
}

/// Asserts the upstream saw no identity, and no header that is illegal in HTTP/2.
fn assert_clean_h2(h: &Harness, seen: &Recorded) {
    for name in [
        "proxy-authorization",
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "x-hop",
    ] {
        assert!(
            seen.header(name).is_empty(),
            "{name} reached the upstream: {seen:#?}"
        );
    }
    let te = seen.header("te");
    assert!(te.is_empty() || te == ["trailers"], "TE: {te:?}");
    for (name, value) in &seen.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        for token in [&h.alice, &h.bob] {
            assert!(
                !value.contains(token.as_str()),
                "a token reached the upstream in {name}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_h2_only_upstream_gets_http2_with_exactly_the_callers_credential() {
    let h = harness().await;
    let up = mock(&h, "api.h2.test", ALPN_H2).await;

    let resp = h
        .send(get(
            "https://api.h2.test/repos/acme/web?page=2",
            Some(&h.alice),
        ))
        .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let seen = up.only();
    assert_eq!(seen.version, Version::HTTP_2);
    assert_eq!(seen.alpn.as_deref(), Some("h2"));
    assert_eq!(seen.sni.as_deref(), Some("api.h2.test"));
    assert_eq!(
        (seen.method.as_str(), seen.target.as_str()),
        ("GET", "/repos/acme/web?page=2")
    );
    assert_eq!(seen.header("authorization"), bearer(ALICE_GITHUB));
    assert_authority(&seen, "api.h2.test");
    assert_clean_h2(&h, &seen);
    // The echo came back through the HTTP/1.1 front door intact.
    assert_eq!(resp.json()["target"], "/repos/acme/web?page=2");

    // A chunked POST carrying every connection-specific header HTTP/2 forbids (and a forged
    // credential): the upstream gets the body, bob's credential and none of those headers.
    up.clear();
    let mut bytes = raw_request(
        "POST",
        "https://api.h2.test/repos/acme/web/issues",
        Some(&h.bob),
        &[
            "Host: api.h2.test",
            "Connection: keep-alive, X-Hop",
            "X-Hop: 1",
            "Keep-Alive: timeout=5",
            "Proxy-Connection: keep-alive",
            "TE: trailers, deflate",
            "Authorization: Bearer forged",
            "Transfer-Encoding: chunked",
        ],
    );
    bytes.extend_from_slice(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    let resp = h.raw(&bytes).await;
    assert_eq!(
        resp.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&resp.body)
    );
    let seen = up.only();
    assert_eq!(seen.version, Version::HTTP_2);
    assert_eq!(seen.method, "POST");
    assert_eq!(&seen.body[..], b"hello world");
    assert_eq!(seen.header("authorization"), bearer(BOB_GITHUB));
    assert_authority(&seen, "api.h2.test");
    assert_clean_h2(&h, &seen);

    assert_eq!(
        h.audit_summary(2).await,
        [
            "alice allow eng-h2 user:github_token 200 GET https://api.h2.test/repos/acme/web",
            "bob allow eng-h2 user:github_token 200 POST https://api.h2.test/repos/acme/web/issues",
        ]
    );
    h.assert_audit_clean(&[&h.alice, &h.bob, "forged"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_users_multiplexed_on_one_h2_connection_each_get_their_own_credential() {
    let h = harness().await;
    let up = mock(&h, "api.h2.test", ALPN_H2_H1).await;

    // Hold each request a moment and count how many are in flight at once.
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    {
        let (in_flight, peak) = (in_flight.clone(), peak.clone());
        up.respond_async(move |r| {
            let (in_flight, peak) = (in_flight.clone(), peak.clone());
            async move {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(150)).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                echo(&r)
            }
        });
    }

    // One request first, so the pooled HTTP/2 connection exists before the burst.
    let resp = h
        .send(get("https://api.h2.test/repos/acme/warmup", Some(&h.alice)))
        .await;
    assert_eq!(resp.status, 200, "{resp:?}");

    const N: usize = 50;
    let mut tasks = JoinSet::new();
    for i in 0..N {
        let (user, token) = if i % 2 == 0 {
            ("alice", h.alice.clone())
        } else {
            ("bob", h.bob.clone())
        };
        let addr = h.proxy_addr;
        tasks.spawn(async move {
            let url = format!("https://api.h2.test/repos/acme/{user}-{i}");
            let resp = ProxyConn::open(addr)
                .await
                .send(get(&url, Some(&token)))
                .await;
            (user, i, resp)
        });
    }
    while let Some(done) = tasks.join_next().await {
        let (user, i, resp) = done.unwrap();
        assert_eq!(resp.status, 200, "{user}-{i}: {resp:?}");
        // The response is the one for this request, not a neighbour's on the shared connection.
        assert_eq!(resp.json()["target"], format!("/repos/acme/{user}-{i}"));
    }

    let seen = up.requests();
    assert_eq!(seen.len(), N + 1);
    for r in &seen {
        assert_eq!(r.version, Version::HTTP_2, "{r:#?}");
        assert_authority(r, "api.h2.test");
        assert_clean_h2(&h, r);
        let name = r.path().rsplit('/').next().unwrap();
        let secret = if name.starts_with("bob-") {
            BOB_GITHUB
        } else {
            ALICE_GITHUB
        };
        assert_eq!(r.header("authorization"), bearer(secret), "{}", r.target);
    }
    // Multiplexed: one TCP connection, many streams in flight on it at once.
    assert_eq!(up.connections(), 1);
    assert!(seen.iter().all(|r| r.connection == 0));
    let peak = peak.load(Ordering::SeqCst);
    assert!(
        peak > 1,
        "requests were not concurrent on the connection (peak {peak})"
    );

    // One audit record per request.
    let mut summary = h.audit_summary(N + 1).await;
    assert_eq!(summary.len(), N + 1, "{summary:#?}");
    assert_eq!(
        summary.remove(0),
        "alice allow eng-h2 user:github_token 200 GET https://api.h2.test/repos/acme/warmup"
    );
    summary.sort();
    let mut expected: Vec<String> = (0..N)
        .map(|i| {
            let user = if i % 2 == 0 { "alice" } else { "bob" };
            format!(
                "{user} allow eng-h2 user:github_token 200 GET https://api.h2.test/repos/acme/{user}-{i}"
            )
        })
        .collect();
    expected.sort();
    assert_eq!(summary, expected);
    h.assert_audit_clean(&[&h.alice, &h.bob]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_h1_only_upstream_still_gets_http11() {
    let h = harness().await;
    let h1 = mock(&h, "api.h1.test", ALPN_H1).await;
    let both = mock(&h, "api.both.test", ALPN_H2_H1).await;

    let resp = h
        .send(get("https://api.h1.test/repos/acme/web", Some(&h.alice)))
        .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let seen = h1.only();
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(seen.alpn.as_deref(), Some("http/1.1"));
    assert_eq!(seen.host(), "api.h1.test");
    assert_eq!(seen.header("authorization"), bearer(ALICE_GITHUB));
    assert!(seen.header("proxy-authorization").is_empty());

    // Offered both, the upstream's preference (h2) wins.
    let resp = h
        .send(get("https://api.both.test/repos/acme/web", Some(&h.bob)))
        .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let seen = both.only();
    assert_eq!(seen.version, Version::HTTP_2);
    assert_eq!(seen.alpn.as_deref(), Some("h2"));
    assert_eq!(seen.header("authorization"), bearer(BOB_GITHUB));
    assert_authority(&seen, "api.both.test");

    assert_eq!(
        h.audit_summary(2).await,
        [
            "alice allow eng-h2 user:github_token 200 GET https://api.h1.test/repos/acme/web",
            "bob allow eng-h2 user:github_token 200 GET https://api.both.test/repos/acme/web",
        ]
    );
    h.assert_audit_clean(&[&h.alice, &h.bob]);
}
