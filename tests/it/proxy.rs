//! The egress pipeline through its forward-proxy front door (issue 4, "Must show"): tenant and
//! user isolation, per-request identity on keep-alive connections, and one test per adversarial
//! case. Every test checks the response (status and JSON error code), what the mock upstream
//! recorded (nothing, or exactly the right credential), and the audit log (a record per
//! request, a verifying chain, no query strings and no credential values).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use behalf::egress::{Call, EgressError, Placeholders, body};
use behalf::policy::{Client, ServiceName, ToolName};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};

use crate::support::*;

/// Asserts that the upstream saw nothing of the caller's identity: no `Proxy-Authorization`
/// and no identity token anywhere in its headers.
fn assert_no_identity_forwarded(h: &Harness, seen: &Recorded) {
    assert!(
        seen.header("proxy-authorization").is_empty(),
        "Proxy-Authorization reached the upstream: {seen:#?}"
    );
    for token in [&h.alice, &h.bob, &h.carol] {
        for (name, value) in &seen.headers {
            let value = String::from_utf8_lossy(value.as_bytes());
            assert!(
                !value.contains(token.as_str()),
                "an identity token reached the upstream in {name}"
            );
        }
    }
}

// === isolation ===

#[tokio::test(flavor = "multi_thread")]
async fn each_user_and_tenant_gets_only_its_own_credential() {
    let h = Harness::start().await;
    let github = "https://api.github.test/repos/acme/web";

    // Two users of one tenant, one user-scoped service: each their own token.
    for (token, secret) in [(&h.alice, ALICE_GITHUB), (&h.bob, BOB_GITHUB)] {
        h.upstream.clear();
        let resp = h.send(get(github, Some(token))).await;
        assert_eq!(resp.status, 200, "{resp:?}");
        let seen = h.upstream.only();
        assert_eq!(seen.header("authorization"), bearer(secret));
        assert_eq!(
            (seen.method.as_str(), seen.target.as_str()),
            ("GET", "/repos/acme/web")
        );
        assert_eq!(seen.host(), "api.github.test");
        assert_eq!(seen.sni.as_deref(), Some("api.github.test"));
        assert_no_identity_forwarded(&h, &seen);
    }

    // Basic injection, user-scoped: each user's own password.
    for (token, secret) in [(&h.alice, ALICE_JIRA), (&h.bob, BOB_JIRA)] {
        h.upstream.clear();
        let resp = h
            .send(get("https://jira.test/rest/api/2/myself", Some(token)))
            .await;
        assert_eq!(resp.status, 200, "{resp:?}");
        let expected = format!("Basic {}", STANDARD.encode(format!("x-token:{secret}")));
        assert_eq!(h.upstream.only().header("authorization"), [expected]);
    }

    // A tenant-scoped service: both acme users get acme's token, carol gets globex's.
    for (token, secret) in [
        (&h.alice, ACME_SLACK),
        (&h.bob, ACME_SLACK),
        (&h.carol, GLOBEX_SLACK),
    ] {
        h.upstream.clear();
        let req = request(
            "POST",
            "https://slack.test/api/chat.postMessage",
            Some(token),
        )
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{\"text\":\"hi\"}")))
        .unwrap();
        let resp = h.send(req).await;
        assert_eq!(resp.status, 200, "{resp:?}");
        let seen = h.upstream.only();
        assert_eq!(seen.header("authorization"), bearer(secret));
        assert_eq!(&seen.body[..], b"{\"text\":\"hi\"}");
    }

    // A user of another tenant: acme's repos are not hers, and nothing goes out.
    h.upstream.clear();
    let resp = h.send(get(github, Some(&h.carol))).await;
    resp.assert_error(403, "egress_denied");
    h.upstream.assert_untouched("carol on acme's repo");
    // Her own tenant's grant gives her her own token.
    let resp = h
        .send(get(
            "https://api.github.test/repos/globex/site",
            Some(&h.carol),
        ))
        .await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        h.upstream.only().header("authorization"),
        bearer(CAROL_GITHUB)
    );

    // A tenant without a policy file, and an acme member outside group eng.
    h.upstream.clear();
    let mallory = h.token("initech", "mallory", &["eng"]);
    h.send(get(github, Some(&mallory)))
        .await
        .assert_error(403, "egress_denied");
    let dave = h.token("acme", "dave", &["support"]);
    h.send(get(github, Some(&dave)))
        .await
        .assert_error(403, "egress_denied");
    h.upstream.assert_untouched("outsiders");

    let gh = "https://api.github.test";
    assert_eq!(
        h.audit_summary(11).await,
        [
            format!("alice allow eng-github user:github_token 200 GET {gh}/repos/acme/web"),
            format!("bob allow eng-github user:github_token 200 GET {gh}/repos/acme/web"),
            "alice allow eng-jira user:jira_token 200 GET https://jira.test/rest/api/2/myself"
                .into(),
            "bob allow eng-jira user:jira_token 200 GET https://jira.test/rest/api/2/myself"
                .into(),
            "alice allow eng-slack tenant:slack_bot_token 200 POST https://slack.test/api/chat.postMessage".into(),
            "bob allow eng-slack tenant:slack_bot_token 200 POST https://slack.test/api/chat.postMessage".into(),
            "carol allow carol-slack tenant:slack_bot_token 200 POST https://slack.test/api/chat.postMessage".into(),
            format!("carol deny route_not_granted - 403 GET {gh}/repos/acme/web"),
            format!("carol allow carol-github user:github_token 200 GET {gh}/repos/globex/site"),
            format!("mallory deny no_tenant_policy - 403 GET {gh}/repos/acme/web"),
            format!("dave deny not_grantee - 403 GET {gh}/repos/acme/web"),
        ]
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
    );
    let records = h.audit_records();
    assert!(records.iter().all(|r| r.client.as_deref() == Some("proxy")));
    assert!(
        records.iter().all(|r| r.override_),
        "every request used --connect-to"
    );
    h.assert_audit_clean(&[]);
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_bad_or_expired_tokens_get_407_and_basic_works() {
    let h = Harness::start().await;
    let url = "https://api.github.test/repos/acme/web";
    let other_key = behalf::identity::jwt::sign_hs256(
        &[7u8; 32],
        None,
        &serde_json::json!({"iss": "behalf-dev", "aud": "behalf", "sub": "alice",
            "tenant": "acme", "groups": ["eng"], "iat": 0, "exp": 4_000_000_000u64}),
    );
    let expired = h.expired_token("acme", "alice");
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("no token", vec![]),
        ("garbage bearer", vec!["Bearer not-a-jwt".into()]),
        ("another key", vec![format!("Bearer {other_key}")]),
        ("expired", vec![format!("Bearer {expired}")]),
        ("basic, bad password", vec![basic_proxy_auth("nope")]),
        ("unknown scheme", vec![format!("Digest {}", h.alice)]),
        (
            "two identities",
            vec![format!("Bearer {}", h.alice), format!("Bearer {}", h.bob)],
        ),
    ];
    for (what, values) in &cases {
        let mut b = request("GET", url, None);
        for v in values {
            b = b.header("proxy-authorization", v);
        }
        let resp = h.send(b.body(Full::default()).unwrap()).await;
        assert_eq!(resp.status, 407, "{what}: {resp:?}");
        assert_eq!(resp.error_code(), "unauthenticated", "{what}");
        let challenge = resp.header("proxy-authenticate").unwrap_or_default();
        assert!(challenge.contains("Bearer"), "{what}: {challenge:?}");
        // The caller is told what to send, not why its token failed.
        let text = String::from_utf8_lossy(&resp.body);
        assert!(
            !text.contains("expired") && !text.contains("signature"),
            "{text}"
        );
    }
    h.upstream.assert_untouched("unauthenticated requests");

    // Basic with the token as password (HTTPS_PROXY=http://u:<token>@...).
    let req = request("GET", url, None)
        .header("proxy-authorization", basic_proxy_auth(&h.alice))
        .body(Full::default())
        .unwrap();
    let resp = h.send(req).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let seen = h.upstream.only();
    assert_eq!(seen.header("authorization"), bearer(ALICE_GITHUB));
    assert_no_identity_forwarded(&h, &seen);

    let mut expected =
        vec!["- deny unauthenticated - 407 GET https://api.github.test".to_owned(); 7];
    expected.push(format!(
        "alice allow eng-github user:github_token 200 GET {url}"
    ));
    assert_eq!(h.audit_summary(8).await, expected);
    h.assert_audit_clean(&[&h.alice, &h.bob, &expired, &other_key]);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_users_on_one_keep_alive_connection_each_carry_their_own_credential() {
    let h = Harness::start().await;
    let url = "https://api.github.test/repos/acme/web";
    let mut conn = h.conn().await;

    let resp = conn.send(get(url, Some(&h.alice))).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let resp = conn.send(get(url, Some(&h.bob))).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    // Nothing is remembered per connection: no token, no request.
    let resp = conn.send(get(url, None)).await;
    resp.assert_error(407, "unauthenticated");
    // The connection is still usable, and still per request.
    let req = request("GET", url, None)
        .header("proxy-authorization", basic_proxy_auth(&h.bob))
        .body(Full::default())
        .unwrap();
    assert_eq!(conn.send(req).await.status, 200);
    let resp = conn.send(get(url, Some(&h.alice))).await;
    assert_eq!(resp.status, 200);
    assert!(!conn.is_closed(), "the proxy kept the connection alive");

    let seen: Vec<Vec<String>> = h
        .upstream
        .requests()
        .iter()
        .map(|r| r.header("authorization"))
        .collect();
    assert_eq!(
        seen,
        [
            bearer(ALICE_GITHUB),
            bearer(BOB_GITHUB),
            bearer(BOB_GITHUB),
            bearer(ALICE_GITHUB)
        ]
    );

    let ok = |user: &str| format!("{user} allow eng-github user:github_token 200 GET {url}");
    assert_eq!(
        h.audit_summary(5).await,
        [
            ok("alice"),
            ok("bob"),
            "- deny unauthenticated - 407 GET https://api.github.test".into(),
            ok("bob"),
            ok("alice"),
        ]
    );
    h.assert_audit_clean(&[]);
}

// === adversarial: redirects, origins, headers ===

#[tokio::test(flavor = "multi_thread")]
async fn a_redirect_is_passed_back_and_the_follow_up_is_decided_anew() {
    let h = Harness::start().await;
    h.upstream.respond(|r| match r.path() {
        "/repos/acme/moved" => {
            let mut resp = json_response(302, serde_json::json!({"moved": true}));
            resp.headers_mut()
                .insert("location", "https://other.test/landing".parse().unwrap());
            resp
        }
        "/repos/acme/stolen" => {
            let mut resp = json_response(307, serde_json::json!({}));
            resp.headers_mut()
                .insert("location", "https://evil.test/collect".parse().unwrap());
            resp
        }
        _ => echo(r),
    });

    // The 3xx comes back to the caller; behalf does not follow it.
    let resp = h
        .send(get(
            "https://api.github.test/repos/acme/moved",
            Some(&h.alice),
        ))
        .await;
    assert_eq!(resp.status, 302);
    assert_eq!(
        resp.header("location").as_deref(),
        Some("https://other.test/landing")
    );
    let seen = h.upstream.only();
    assert_eq!(seen.host(), "api.github.test");
    assert_eq!(seen.header("authorization"), bearer(ALICE_GITHUB));

    // The caller's follow-up is a new request, decided for its own origin: the public service
    // has no credential, so none is sent.
    h.upstream.clear();
    let resp = h
        .send(get("https://other.test/landing", Some(&h.alice)))
        .await;
    assert_eq!(resp.status, 200);
    let seen = h.upstream.only();
    assert_eq!(seen.host(), "other.test");
    assert_eq!(seen.sni.as_deref(), Some("other.test"));
    assert!(seen.header("authorization").is_empty(), "{seen:#?}");
    for (_, v) in &seen.headers {
        let v = String::from_utf8_lossy(v.as_bytes());
        assert!(secret_values().iter().all(|s| !v.contains(s)), "{v}");
    }

    // A redirect to an origin no service claims: passed back, and the follow-up is denied.
    h.upstream.clear();
    let resp = h
        .send(get(
            "https://api.github.test/repos/acme/stolen",
            Some(&h.alice),
        ))
        .await;
    assert_eq!(resp.status, 307);
    assert_eq!(h.upstream.requests().len(), 1, "not followed");
    h.upstream.clear();
    h.send(get("https://evil.test/collect", Some(&h.alice)))
        .await
        .assert_error(403, "egress_denied");
    h.upstream.assert_untouched("follow-up to evil.test");
    assert!(
        h.resolver.asked().is_empty(),
        "evil.test was never resolved"
    );

    assert_eq!(
        h.audit_summary(4).await,
        [
            "alice allow eng-github user:github_token 302 GET https://api.github.test/repos/acme/moved",
            "alice allow eng-public - 200 GET https://other.test/landing",
            "alice allow eng-github user:github_token 307 GET https://api.github.test/repos/acme/stolen",
            "alice deny no_service - 403 GET https://evil.test/collect",
        ]
    );
    h.assert_audit_clean(&[]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_host_on_another_port_or_scheme_is_another_origin() {
    let h = Harness::start().await;
    for url in [
        "https://api.github.test:8443/repos/acme/web",
        "http://api.github.test/repos/acme/web",
        "https://api.github.test:80/repos/acme/web",
    ] {
        let resp = h.send(get(url, Some(&h.alice))).await;
        resp.assert_error(403, "egress_denied");
        let message = resp.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains("no service"), "{url}: {message}");
    }
    h.upstream.assert_untouched("other ports and schemes");
    h.plain.assert_untouched("other ports and schemes");
    assert!(h.resolver.asked().is_empty(), "{:?}", h.resolver.asked());

    // The default port written out is the same origin.
    let resp = h
        .send(get(
            "https://api.github.test:443/repos/acme/web",
            Some(&h.alice),
        ))
        .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let seen = h.upstream.only();
    assert_eq!(seen.host(), "api.github.test");
    assert_eq!(seen.header("authorization"), bearer(ALICE_GITHUB));

    assert_eq!(
        h.audit_summary(4).await,
        [
            "alice deny no_service - 403 GET https://api.github.test:8443/repos/acme/web",
            "alice deny no_service - 403 GET http://api.github.test/repos/acme/web",
            "alice deny no_service - 403 GET https://api.github.test:80/repos/acme/web",
            "alice allow eng-github user:github_token 200 GET https://api.github.test/repos/acme/web",
        ]
    );
    h.assert_audit_clean(&[]);
}

#[tokio::test(flavor = "multi_thread")]
async fn caller_set_credentials_are_replaced_not_duplicated() {
    let h = Harness::start().await;

    // Header injection: two caller Authorization headers, one injected.
    let req = request(
        "GET",
        "https://api.github.test/repos/acme/web",
        Some(&h.alice),
    )
    .header("authorization", "Bearer attacker-token")
    .header("authorization", "Basic YXR0YWNrZXI6cHc=")
    .body(Full::default())
    .unwrap();
    assert_eq!(h.send(req).await.status, 200);
    let seen = h.upstream.only();
    assert_eq!(seen.header("authorization"), bearer(ALICE_GITHUB));
    assert_no_identity_forwarded(&h, &seen);

    // Basic injection.
    h.upstream.clear();
    let req = request("GET", "https://jira.test/rest/issue/1", Some(&h.alice))
        .header("authorization", "Basic YXR0YWNrZXI6cHc=")
        .body(Full::default())
        .unwrap();
    assert_eq!(h.send(req).await.status, 200);
    let expected = format!("Basic {}", STANDARD.encode(format!("x-token:{ALICE_JIRA}")));
    assert_eq!(h.upstream.only().header("authorization"), [expected]);

    // Query injection: the caller's `appid`s go, the tenant's key is the only one; a caller
    // Authorization is dropped too (this service injects none).
    h.upstream.clear();
    let req = request(
        "GET",
        "https://api.weather.test/data/2.5/weather?q=berlin&appid=evil-key&appid=evil-key2",
        Some(&h.alice),
    )
    .header("authorization", "Bearer attacker-token")
    .body(Full::default())
    .unwrap();
    assert_eq!(h.send(req).await.status, 200);
    let seen = h.upstream.only();
    assert_eq!(seen.path(), "/data/2.5/weather");
    let pairs: Vec<(String, String)> =
        form_urlencoded::parse(seen.query().unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    assert_eq!(
        pairs,
        [
            ("q".to_owned(), "berlin".to_owned()),
            ("appid".to_owned(), ACME_WEATHER.to_owned())
        ]
    );
    assert!(seen.header("authorization").is_empty());

    // A custom header over plain HTTP (allow_plaintext).
    let req = request("POST", "http://intranet.test/api/v1/things", Some(&h.bob))
        .header("x-api-key", "attacker-key")
        .header("X-API-KEY", "attacker-key-2")
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    assert_eq!(h.send(req).await.status, 200);
    let seen = h.plain.only();
    assert_eq!(seen.header("x-api-key"), [ACME_INTRANET]);
    assert_eq!(seen.host(), "intranet.test");
    assert_eq!(&seen.body[..], b"payload");
    assert_no_identity_forwarded(&h, &seen);

    assert_eq!(
        h.audit_summary(4).await,
        [
            "alice allow eng-github user:github_token 200 GET https://api.github.test/repos/acme/web",
            "alice allow eng-jira user:jira_token 200 GET https://jira.test/rest/issue/1",
            "alice allow eng-weather tenant:weather_api_key 200 GET https://api.weather.test/data/2.5/weather",
            "bob allow eng-intranet tenant:intranet_key 200 POST http://intranet.test/api/v1/things",
        ]
    );
    h.assert_audit_clean(&["berlin", "evil-key", "appid"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_identity_headers_change_nothing() {
    let h = Harness::start().await;
    let forged = [
        ("x-tenant", "globex"),
        ("x-user", "bob"),
        ("x-behalf-user", "carol"),
        ("x-forwarded-user", "bob"),
        ("x-groups", "admin"),
    ];
    let mut b = request(
        "GET",
        "https://api.github.test/repos/acme/web",
        Some(&h.alice),
    );
    for (k, v) in forged {
        b = b.header(k, v);
    }
    assert_eq!(h.send(b.body(Full::default()).unwrap()).await.status, 200);
    assert_eq!(
        h.upstream.only().header("authorization"),
        bearer(ALICE_GITHUB)
    );

    // carol claiming to be acme's alice is still carol of globex.
    h.upstream.clear();
    let resp = h
        .send(
            request(
                "GET",
                "https://api.github.test/repos/acme/web",
                Some(&h.carol),
            )
            .header("x-tenant", "acme")
            .header("x-user", "alice")
            .header("x-groups", "eng")
            .body(Full::default())
            .unwrap(),
        )
        .await;
    resp.assert_error(403, "egress_denied");
    h.upstream.assert_untouched("carol with forged headers");
    // And a tenant-scoped credential follows the token's tenant, not a header.
    let resp = h
        .send(
            request("GET", "https://slack.test/api/users.list", Some(&h.carol))
                .header("x-tenant", "acme")
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        h.upstream.only().header("authorization"),
        bearer(GLOBEX_SLACK)
    );

    assert_eq!(
        h.audit_summary(3).await,
        [
            "alice allow eng-github user:github_token 200 GET https://api.github.test/repos/acme/web",
            "carol deny route_not_granted - 403 GET https://api.github.test/repos/acme/web",
            "carol allow carol-slack tenant:slack_bot_token 200 GET https://slack.test/api/users.list",
        ]
    );
    h.assert_audit_clean(&[]);
}

#[tokio::test(flavor = "multi_thread")]
async fn method_override_headers_never_reach_the_upstream() {
    let h = Harness::start().await;
    let issues = "https://api.github.test/repos/acme/web/issues";
    let req = request("POST", issues, Some(&h.alice))
        .header("x-http-method-override", "DELETE")
        .header("x-http-method", "DELETE")
        .header("x-method-override", "DELETE")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{\"title\":\"t\"}")))
        .unwrap();
    assert_eq!(h.send(req).await.status, 200);
    let seen = h.upstream.only();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path(), "/repos/acme/web/issues");
    for name in [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ] {
        assert!(seen.header(name).is_empty(), "{name} reached the upstream");
    }
    assert_eq!(&seen.body[..], b"{\"title\":\"t\"}");
    assert_eq!(seen.header("authorization"), bearer(ALICE_GITHUB));

    // The real DELETE is not granted.
    h.upstream.clear();
    h.send(
        request("DELETE", issues, Some(&h.alice))
            .body(Full::default())
            .unwrap(),
    )
    .await
    .assert_error(403, "egress_denied");
    h.upstream.assert_untouched("DELETE");

    assert_eq!(
        h.audit_summary(2).await,
        [
            format!("alice allow eng-github user:github_token 200 POST {issues}"),
            format!("alice deny route_not_granted - 403 DELETE {issues}"),
        ]
    );
    h.assert_audit_clean(&[]);
}

#[tokio::test(flavor = "multi_thread")]
async fn host_confusion_over_the_wire_is_denied() {
    let h = Harness::start().await;
    let port = h.plain.addr.port();
    let cases: Vec<(String, Vec<String>)> = vec![
        ("http://evil-github.test/repos/acme/web".into(), vec![]),
        ("https://evil-github.test/repos/acme/web".into(), vec![]),
        (
            "https://api.github.test.evil.test/repos/acme/web".into(),
            vec![],
        ),
        ("https://github.test/repos/acme/web".into(), vec![]),
        ("https://x.api.github.test/repos/acme/web".into(), vec![]),
        (
            "https://api.github.test@evil.test/repos/acme/web".into(),
            vec![],
        ),
        (
            "http://api.github.test@127.0.0.1:PORT/repos/acme/web".into(),
            vec![],
        ),
        (
            "https://user:pw@api.github.test/repos/acme/web".into(),
            vec![],
        ),
        ("http://[::1]:PORT/repos/acme/web".into(), vec![]),
        ("https://[::1]/repos/acme/web".into(), vec![]),
        (
            "http://[::ffff:127.0.0.1]:PORT/repos/acme/web".into(),
            vec![],
        ),
        ("http://127.0.0.1:PORT/repos/acme/web".into(), vec![]),
        // The Host header never selects the service.
        (
            "https://evil.test/repos/acme/web".into(),
            vec!["Host: api.github.test".into()],
        ),
        // Origin form: the target must be absolute.
        (
            "/repos/acme/web".into(),
            vec!["Host: api.github.test".into()],
        ),
        // Two Host headers.
        (
            "https://api.github.test/repos/acme/web".into(),
            vec!["Host: api.github.test".into(), "Host: evil.test".into()],
        ),
    ];
    let mut answered_by_behalf = 0;
    for (target, headers) in &cases {
        let target = target.replace("PORT", &port.to_string());
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        let resp = h
            .raw(&raw_request("GET", &target, Some(&h.alice), &headers))
            .await;
        assert!(
            matches!(resp.status, 400 | 403),
            "{target}: {} {:?}",
            resp.status,
            String::from_utf8_lossy(&resp.body)
        );
        if let Some(code) = resp.error_code() {
            let expected = if resp.status == 400 {
                "bad_request"
            } else {
                "egress_denied"
            };
            assert_eq!(code, expected, "{target}");
            answered_by_behalf += 1;
        }
    }
    h.upstream.assert_untouched("host confusion");
    h.plain.assert_untouched("host confusion");
    assert!(h.resolver.asked().is_empty(), "{:?}", h.resolver.asked());

    // Control: the real host, in any case and with a trailing dot, is the same origin.
    let resp = h
        .raw(&raw_request(
            "GET",
            "https://API.GitHub.TEST./repos/acme/web",
            Some(&h.alice),
            &["Host: API.GitHub.TEST."],
        ))
        .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let seen = h.upstream.only();
    assert_eq!(seen.host(), "api.github.test");
    assert_eq!(seen.header("authorization"), bearer(ALICE_GITHUB));

    let records = h.wait_audit(answered_by_behalf + 1).await;
    assert_eq!(records.len(), answered_by_behalf + 1);
    let (last, denied) = records.split_last().unwrap();
    assert!(denied.iter().all(|r| r.decision == "deny"), "{denied:#?}");
    assert_eq!(
        summarise(last),
        "alice allow eng-github user:github_token 200 GET https://api.github.test/repos/acme/web"
    );
    h.assert_audit_clean(&["pw@", "user:pw"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn path_tricks_over_the_wire_are_rejected_and_dot_segments_normalised() {
    let h = Harness::start().await;
    let gh = "https://api.github.test";
    for path in [
        "/repos/acme/%2e%2e/x",
        "/repos/acme/%2E%2E/%2E%2E/user",
        "/repos/acme%2fweb",
        "/repos/acme/web%5c..%5cx",
        "/repos/acme/..;x/web",
        "/repos/acme/.;x/web",
        "/../repos/acme/web",
        "/repos/../../repos/acme/web",
        "/repos/acme/%252e%252e/x",
        "/repos/acme/%00/x",
        "/repos/acme/%zz",
    ] {
        let resp = h
            .raw(&raw_request(
                "GET",
                &format!("{gh}{path}"),
                Some(&h.alice),
                &[],
            ))
            .await;
        assert_eq!(resp.status, 400, "{path}: {resp:?}");
        assert_eq!(resp.error_code().as_deref(), Some("bad_request"), "{path}");
    }
    h.upstream.assert_untouched("path tricks");

    // Merged slashes and plain dot-segments are normalised, and the normalised path is both
    // what is decided on and what is sent.
    for (path, sent) in [
        ("//repos//acme/web?a=1", "/repos/acme/web?a=1"),
        ("/repos/acme/zz/../web", "/repos/acme/web"),
        ("/repos/./acme/./web", "/repos/acme/web"),
        ("/repos/acme/%77eb", "/repos/acme/web"),
    ] {
        h.upstream.clear();
        let resp = h
            .raw(&raw_request(
                "GET",
                &format!("{gh}{path}"),
                Some(&h.alice),
                &[],
            ))
            .await;
        assert_eq!(resp.status, 200, "{path}: {resp:?}");
        let seen = h.upstream.only();
        assert_eq!(seen.target, sent, "{path}");
        assert_eq!(seen.header("authorization"), bearer(ALICE_GITHUB));
    }
    // Climbing out of the granted tree is decided on the climbed-to path.
    h.upstream.clear();
    let resp = h
        .raw(&raw_request(
            "GET",
            &format!("{gh}/repos/acme/../globex/site"),
            Some(&h.alice),
            &[],
        ))
        .await;
    assert_eq!(
        (resp.status, resp.error_code().as_deref()),
        (403, Some("egress_denied"))
    );
    h.upstream.assert_untouched("climbed to globex");

    let summary = h.audit_summary(16).await;
    assert_eq!(summary.len(), 16, "{summary:#?}");
    assert!(
        summary[..11]
            .iter()
            .all(|s| s == "alice deny bad_request - 400 GET "),
        "{summary:#?}"
    );
    assert!(
        summary[11..15].iter().all(|s| s
            == &format!("alice allow eng-github user:github_token 200 GET {gh}/repos/acme/web")),
        "{summary:#?}"
    );
    assert_eq!(
        summary[15],
        format!("alice deny route_not_granted - 403 GET {gh}/repos/globex/site")
    );
    h.assert_audit_clean(&[]);
}

#[tokio::test(flavor = "multi_thread")]
async fn cr_or_lf_in_a_header_value_is_rejected() {
    let h = Harness::start().await;
    let target = "https://api.github.test/repos/acme/web";
    let token = format!("Proxy-Authorization: Bearer {}\r\n", h.alice);
    let heads: Vec<Vec<u8>> = vec![
        // A bare CR inside a value.
        format!("GET {target} HTTP/1.1\r\nHost: api.github.test\r\n{token}X-Note: a\rInjected: 1\r\n\r\n"),
        // Obsolete line folding: a continuation line.
        format!("GET {target} HTTP/1.1\r\nHost: api.github.test\r\n{token}X-Note: a\r\n Injected: 1\r\n\r\n"),
        // CR/LF inside the request target.
        format!("GET {target}\r\nInjected: 1 HTTP/1.1\r\nHost: api.github.test\r\n{token}\r\n"),
        // NUL in a value.
        format!("GET {target} HTTP/1.1\r\nHost: api.github.test\r\n{token}X-Note: a\0b\r\n\r\n"),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect();
    for head in &heads {
        let resp = h.raw(head).await;
        assert_eq!(
            resp.status,
            400,
            "{:?}: {resp:?}",
            String::from_utf8_lossy(head)
        );
    }
    h.upstream.assert_untouched("CR/LF in headers");
    // hyper refuses these before any decision; nothing was allowed.
    let records = h.wait_audit(0).await;
    assert!(
        records.iter().all(|r| r.decision != "allow"),
        "{records:#?}"
    );
    h.assert_audit_clean(&[]);
}

/// `Content-Length` together with `Transfer-Encoding` cannot smuggle a request through behalf.
/// hyper's HTTP/1 parser drops the `Content-Length` before behalf sees the request (RFC 9112
/// 6.3: Transfer-Encoding wins), and closes the connection after responding, so a request
/// hidden behind the "wrong" framing is never read; upstream, behalf frames the body itself.
#[tokio::test(flavor = "multi_thread")]
async fn content_length_with_transfer_encoding_cannot_smuggle() {
    let h = Harness::start().await;
    let target = "https://api.github.test/repos/acme/web/issues";
    let token = format!("Proxy-Authorization: Bearer {}\r\n", h.alice);
    for framing in [
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
    ] {
        h.upstream.clear();
        // A second request pipelined right after the chunked body: a parser that believed
        // Content-Length would read it as the next request.
        let smuggled = format!("DELETE {target} HTTP/1.1\r\nHost: api.github.test\r\n{token}\r\n");
        let bytes = format!(
            "POST {target} HTTP/1.1\r\nHost: api.github.test\r\n{token}{framing}\r\n\
             5\r\nhello\r\n0\r\n\r\n{smuggled}"
        );
        let mut conn = RawConn::open(h.proxy_addr).await;
        conn.write(bytes.as_bytes()).await;
        let first = conn.read_response().await;
        assert!((200..300).contains(&first.status), "{framing:?}: {first:?}");
        let second = conn.read_response().await;
        assert_eq!(
            second.status, 0,
            "{framing:?}: the connection must close: {second:?}"
        );
        let seen = h.upstream.only();
        assert_eq!(seen.method, "POST", "{framing:?}");
        assert_eq!(&seen.body[..], b"hello", "{framing:?}");
        assert!(
            !(seen.headers.contains_key("content-length")
                && seen.headers.contains_key("transfer-encoding")),
            "{framing:?}: upstream saw both framings: {:?}",
            seen.headers
        );
    }
    let records = h.wait_audit(2).await;
    assert!(records.iter().all(|r| r.method != "DELETE"), "{records:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn host_is_rebuilt_from_the_absolute_target() {
    let h = Harness::start().await;
    let resp = h
        .raw(&raw_request(
            "GET",
            "https://api.github.test/repos/acme/web",
            Some(&h.alice),
            &["Host: evil.test"],
        ))
        .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let seen = h.upstream.only();
    assert_eq!(seen.host(), "api.github.test");
    assert_eq!(seen.sni.as_deref(), Some("api.github.test"));
    assert_eq!(seen.header("authorization"), bearer(ALICE_GITHUB));

    // No Host at all, and a Host naming another configured service.
    h.upstream.clear();
    let resp = h
        .raw(&raw_request(
            "GET",
            "https://api.github.test/user",
            Some(&h.bob),
            &[],
        ))
        .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let req = get("http://intranet.test/status", Some(&h.bob));
    let (mut parts, b) = req.into_parts();
    parts.headers.insert("host", "slack.test".parse().unwrap());
    let resp = h.send(Request::from_parts(parts, b)).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let seen = h.upstream.only();
    assert_eq!(seen.host(), "api.github.test");
    assert_eq!(seen.header("authorization"), bearer(BOB_GITHUB));
    let seen = h.plain.only();
    assert_eq!(seen.host(), "intranet.test");
    assert_eq!(seen.header("x-api-key"), [ACME_INTRANET]);
    assert!(seen.header("authorization").is_empty());

    assert_eq!(
        h.audit_summary(3).await,
        [
            "alice allow eng-github user:github_token 200 GET https://api.github.test/repos/acme/web",
            "bob allow eng-github user:github_token 200 GET https://api.github.test/user",
            "bob allow eng-intranet tenant:intranet_key 200 GET http://intranet.test/status",
        ]
    );
    h.assert_audit_clean(&[]);
}

// === adversarial: SSRF ===

#[tokio::test(flavor = "multi_thread")]
async fn names_resolving_to_private_or_metadata_addresses_are_refused() {
    let h = Harness::start().await;
    let port = h.plain.addr.port();
    let at = |ip: &str| SocketAddr::new(ip.parse::<IpAddr>().unwrap(), port);
    // Each name points at the plain mock's port, so anything dialled would be recorded.
    h.resolver.set("loop.internal.test", vec![at("127.0.0.1")]);
    h.resolver.set("zero.internal.test", vec![at("0.0.0.0")]);
    h.resolver
        .set("mapped.internal.test", vec![at("::ffff:127.0.0.1")]);
    h.resolver
        .set("meta.internal.test", vec![at("169.254.169.254")]);
    // `lan` sets allow_private_ips: loopback is allowed, metadata never.
    h.resolver.set("lan.test", vec![at("127.0.0.1")]);
    h.resolver.set(
        "metadata.test",
        vec![at("169.254.169.254"), at("::ffff:169.254.169.254")],
    );

    for host in [
        "loop.internal.test",
        "zero.internal.test",
        "mapped.internal.test",
        "meta.internal.test",
        "metadata.test",
    ] {
        let resp = h
            .send(get(
                &format!("http://{host}/latest/meta-data/"),
                Some(&h.alice),
            ))
            .await;
        resp.assert_error(403, "egress_denied");
        let message = resp.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains("refused"), "{host}: {message}");
        h.plain.assert_untouched(host);
    }
    assert_eq!(h.plain.connections(), 0, "nothing was dialled");
    assert_eq!(
        h.resolver.asked(),
        [
            "loop.internal.test",
            "zero.internal.test",
            "mapped.internal.test",
            "meta.internal.test",
            "metadata.test"
        ]
    );

    // Control: the same loopback address through the service that allows private IPs.
    let resp = h.send(get("http://lan.test/ping", Some(&h.alice))).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let seen = h.plain.only();
    assert_eq!(seen.host(), "lan.test");
    assert_eq!(seen.target, "/ping");

    let summary = h.audit_summary(6).await;
    let refused =
        |host: &str| format!("alice deny egress_denied - 403 GET http://{host}/latest/meta-data/");
    assert_eq!(
        summary,
        [
            refused("loop.internal.test"),
            refused("zero.internal.test"),
            refused("mapped.internal.test"),
            refused("meta.internal.test"),
            refused("metadata.test"),
            "alice allow eng-lan - 200 GET http://lan.test/ping".into(),
        ]
    );
    // None of these used an override: they went through the resolver and the guard.
    assert!(h.audit_records().iter().all(|r| !r.override_));
    h.assert_audit_clean(&[]);
}

#[tokio::test(flavor = "multi_thread")]
async fn numeric_ipv4_notations_are_rejected() {
    let h = Harness::start().await;
    let port = h.plain.addr.port();
    let loopback = Ipv4Addr::LOCALHOST;
    assert_eq!(u32::from(loopback), 2130706433);
    for host in [
        "2130706433",
        "0x7f000001",
        "0x7f.1",
        "127.1",
        "0177.0.0.1",
        "017700000001",
        "127.0.0.1",
        "0.0.0.0",
    ] {
        let target = format!("http://{host}:{port}/x");
        let resp = h
            .raw(&raw_request("GET", &target, Some(&h.alice), &[]))
            .await;
        let code = resp.error_code();
        assert!(
            matches!(
                (resp.status, code.as_deref()),
                (400, Some("bad_request")) | (403, Some("egress_denied"))
            ),
            "{target}: {resp:?}"
        );
    }
    h.plain.assert_untouched("numeric hosts");
    assert_eq!(h.plain.connections(), 0, "nothing was dialled");
    assert!(h.resolver.asked().is_empty(), "{:?}", h.resolver.asked());
    let records = h.wait_audit(8).await;
    assert_eq!(records.len(), 8, "{records:#?}");
    assert!(records.iter().all(|r| r.decision == "deny"));
    h.assert_audit_clean(&[]);
}

// === adversarial: protocol switches ===

#[tokio::test(flavor = "multi_thread")]
async fn upgrade_is_never_forwarded_and_an_upstream_101_becomes_502() {
    let h = Harness::start().await;
    h.upstream.respond(|r| {
        if r.path() == "/repos/acme/switch" {
            let mut resp = json_response(101, serde_json::json!({}));
            *resp.body_mut() = body::empty();
            resp.headers_mut().remove("content-type");
            resp.headers_mut()
                .insert("upgrade", "websocket".parse().unwrap());
            resp.headers_mut()
                .insert("connection", "upgrade".parse().unwrap());
            resp
        } else {
            echo(r)
        }
    });
    let upgrade_headers = [
        "Host: api.github.test",
        "Connection: keep-alive, Upgrade, HTTP2-Settings",
        "Upgrade: websocket, h2c",
        "HTTP2-Settings: AAMAAABkAAQAAP__",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        "TE: gzip, trailers",
    ];
    let resp = h
        .raw(&raw_request(
            "GET",
            "https://api.github.test/repos/acme/chat",
            Some(&h.alice),
            &upgrade_headers,
        ))
        .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let seen = h.upstream.only();
    assert!(seen.header("upgrade").is_empty(), "{seen:#?}");
    assert!(seen.header("http2-settings").is_empty(), "{seen:#?}");
    assert!(
        seen.header("connection")
            .iter()
            .all(|c| !c.to_ascii_lowercase().contains("upgrade")),
        "{seen:#?}"
    );
    assert_eq!(seen.header("te"), ["trailers"]);
    assert_eq!(seen.header("authorization"), bearer(ALICE_GITHUB));

    // `Upgrade` goes even when `Connection` does not name it.
    h.upstream.clear();
    let resp = h
        .raw(&raw_request(
            "GET",
            "https://api.github.test/repos/acme/chat",
            Some(&h.alice),
            &[
                "Host: api.github.test",
                "Upgrade: h2c",
                "Connection: keep-alive",
            ],
        ))
        .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let seen = h.upstream.only();
    assert!(seen.header("upgrade").is_empty(), "{seen:#?}");

    // An upstream that switches protocols anyway: 502, never a tunnel.
    h.upstream.clear();
    let resp = h
        .raw(&raw_request(
            "GET",
            "https://api.github.test/repos/acme/switch",
            Some(&h.alice),
            &upgrade_headers,
        ))
        .await;
    assert_eq!(
        (resp.status, resp.error_code().as_deref()),
        (502, Some("upstream_failed")),
        "{resp:?}"
    );
    let seen = h.upstream.only();
    assert!(seen.header("upgrade").is_empty(), "{seen:#?}");

    assert_eq!(
        h.audit_summary(3).await,
        [
            "alice allow eng-github user:github_token 200 GET https://api.github.test/repos/acme/chat",
            "alice allow eng-github user:github_token 200 GET https://api.github.test/repos/acme/chat",
            "alice error upstream_failed user:github_token 502 GET https://api.github.test/repos/acme/switch",
        ]
    );
    h.assert_audit_clean(&[]);
}

// === decide before rendering ===

#[tokio::test(flavor = "multi_thread")]
async fn a_denied_request_never_loads_a_secret() {
    let h = Harness::start_with(Config {
        spy_secrets: true,
        ..Config::default()
    })
    .await;
    let spy = h.spy.clone().unwrap();
    let gh = "https://api.github.test";
    let mallory = h.token("initech", "mallory", &["eng"]);

    let denied: Vec<(Request<Full<Bytes>>, u16)> = vec![
        (get(&format!("{gh}/repos/acme/web"), Some(&h.carol)), 403),
        (get(&format!("{gh}/repos/acme/web"), Some(&mallory)), 403),
        (get(&format!("{gh}/repos/acme/web"), None), 407),
        (get(&format!("{gh}/orgs/acme"), Some(&h.alice)), 403),
        (
            request("DELETE", &format!("{gh}/repos/acme/web"), Some(&h.alice))
                .body(Full::default())
                .unwrap(),
            403,
        ),
        // The placeholder service's grant admits only its tool, not the proxy.
        (get("https://tooly.test/v1/me", Some(&h.alice)), 403),
        (get("https://evil.test/x", Some(&h.alice)), 403),
        (
            get(&format!("{gh}/repos/acme/%2e%2e/x"), Some(&h.alice)),
            400,
        ),
    ];
    for (req, status) in denied {
        let uri = req.uri().clone();
        let resp = h.send(req).await;
        assert_eq!(resp.status, status, "{uri}: {resp:?}");
    }
    assert_eq!(
        spy.gets(),
        Vec::<String>::new(),
        "a denied request read a secret"
    );
    h.upstream.assert_untouched("denied requests");

    // Allowed: exactly one read each, in the verified principal's namespace.
    assert_eq!(
        h.send(get(&format!("{gh}/repos/acme/web"), Some(&h.alice)))
            .await
            .status,
        200
    );
    assert_eq!(spy.gets(), ["acme/alice/github_token"]);
    assert_eq!(
        h.send(get(&format!("{gh}/repos/acme/web"), Some(&h.bob)))
            .await
            .status,
        200
    );
    assert_eq!(
        h.send(get("https://slack.test/api/users.list", Some(&h.carol)))
            .await
            .status,
        200
    );
    // A service without a credential reads nothing.
    assert_eq!(
        h.send(get("https://other.test/x", Some(&h.alice)))
            .await
            .status,
        200
    );
    assert_eq!(
        spy.gets(),
        [
            "acme/alice/github_token",
            "acme/bob/github_token",
            "globex/slack_bot_token"
        ]
    );
    let seen: Vec<Vec<String>> = h
        .upstream
        .requests()
        .iter()
        .map(|r| r.header("authorization"))
        .collect();
    assert_eq!(
        seen,
        [
            bearer(ALICE_GITHUB),
            bearer(BOB_GITHUB),
            bearer(GLOBEX_SLACK),
            vec![]
        ]
    );

    let records = h.wait_audit(12).await;
    let summary: Vec<String> = records.iter().map(summarise).collect();
    assert_eq!(
        summary,
        [
            format!("carol deny route_not_granted - 403 GET {gh}/repos/acme/web"),
            format!("mallory deny no_tenant_policy - 403 GET {gh}/repos/acme/web"),
            "- deny unauthenticated - 407 GET https://api.github.test".into(),
            format!("alice deny route_not_granted - 403 GET {gh}/orgs/acme"),
            format!("alice deny route_not_granted - 403 DELETE {gh}/repos/acme/web"),
            "alice deny client_not_granted - 403 GET https://tooly.test/v1/me".into(),
            "alice deny no_service - 403 GET https://evil.test/x".into(),
            "alice deny bad_request - 400 GET ".into(),
            format!("alice allow eng-github user:github_token 200 GET {gh}/repos/acme/web"),
            format!("bob allow eng-github user:github_token 200 GET {gh}/repos/acme/web"),
            "carol allow carol-slack tenant:slack_bot_token 200 GET https://slack.test/api/users.list".into(),
            "alice allow eng-public - 200 GET https://other.test/x".into(),
        ]
    );
    // Denied records name no credential: none was chosen, let alone loaded.
    assert!(
        records
            .iter()
            .filter(|r| r.decision == "deny")
            .all(|r| r.credential.is_none())
    );
    h.assert_audit_clean(&[]);
}

// === placeholders (the in-process front door) ===

#[tokio::test(flavor = "multi_thread")]
async fn a_placeholder_is_swapped_only_in_its_own_header_for_its_own_origin() {
    let h = Harness::start().await;
    let alice = Harness::principal("acme", "alice", &["eng"]);
    let placeholder = "bhph_7f3c2a9e51d04b6c8e2f";
    let mut placeholders = Placeholders::none();
    placeholders.insert(ServiceName::parse("tooly").unwrap(), placeholder.into());
    let call = Call {
        principal: &alice,
        client: Client::Tool(ToolName::parse("tooly").unwrap()),
        invocation: Some("inv-1"),
        placeholders: &placeholders,
        tunnel: None,
    };
    let send = |url: &str, headers: &[(&str, String)]| {
        let mut b = Request::get(url);
        for (k, v) in headers {
            b = b.header(*k, v.as_str());
        }
        let req = b.body(body::empty()).unwrap();
        let egress = h.egress.clone();
        let call = call.clone();
        async move {
            match egress.handle(&call, req).await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    // Drain the body so the audit record is written.
                    let _ = resp.into_body().collect().await;
                    Ok(status)
                }
                Err(e) => Err(e),
            }
        }
    };
    let ph_header = format!("Bearer {placeholder}");
    let denied = |r: Result<u16, EgressError>, what: &str| match r {
        Err(e) => assert_eq!(
            (e.status().as_u16(), e.code()),
            (403, "egress_denied"),
            "{what}"
        ),
        Ok(s) => panic!("{what}: allowed with status {s}"),
    };

    // In its own header, to its own origin: swapped for the credential.
    let status = send(
        "https://tooly.test/v1/me",
        &[("authorization", ph_header.clone())],
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let seen = h.upstream.only();
    assert_eq!(seen.header("authorization"), bearer(ALICE_TOOLY));
    assert!(
        seen.headers
            .values()
            .all(|v| !String::from_utf8_lossy(v.as_bytes()).contains(placeholder))
    );

    // To another service's origin (one this tool may call), in the URL, in another header.
    h.upstream.clear();
    denied(
        send(
            "https://api.github.test/repos/acme/web",
            &[("authorization", ph_header.clone())],
        )
        .await,
        "placeholder sent to github",
    );
    denied(
        send(&format!("https://tooly.test/v1/me?key={placeholder}"), &[]).await,
        "placeholder in the query",
    );
    denied(
        send(&format!("https://tooly.test/v1/{placeholder}"), &[]).await,
        "placeholder in the path",
    );
    denied(
        send(
            "https://tooly.test/v1/me",
            &[
                ("authorization", ph_header.clone()),
                (
                    "x-forward-to",
                    format!("https://evil.test/?k={placeholder}"),
                ),
            ],
        )
        .await,
        "placeholder in another header",
    );
    h.upstream.assert_untouched("misplaced placeholders");

    // Without its placeholder (or with a wrong one), nothing is injected.
    let status = send(
        "https://tooly.test/v1/me",
        &[("authorization", "Bearer bhph_guessed".to_owned())],
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert!(h.upstream.only().header("authorization").is_empty());

    let records = h.wait_audit(6).await;
    assert!(
        records
            .iter()
            .all(|r| r.invocation.as_deref() == Some("inv-1")
                && r.client.as_deref() == Some("tool:tooly"))
    );
    let summary: Vec<String> = records.iter().map(summarise).collect();
    assert_eq!(
        summary,
        [
            "alice allow eng-tooly user:tooly_token 200 GET https://tooly.test/v1/me".to_owned(),
            "alice deny egress_denied - 403 GET https://api.github.test/repos/acme/web".into(),
            "alice deny egress_denied - 403 GET https://tooly.test/v1/me".into(),
            format!("alice deny egress_denied - 403 GET https://tooly.test/v1/{placeholder}"),
            "alice deny egress_denied - 403 GET https://tooly.test/v1/me".into(),
            "alice allow eng-tooly user:tooly_token 200 GET https://tooly.test/v1/me".into(),
        ]
    );
    h.assert_audit_clean(&[]);
}
