//! The sandbox through the real API: tools calling mock APIs as two tenants and three users.
//!
//! Every test checks what the caller got back (status, JSON error code, `denials`), what the
//! mock upstream recorded (nothing, or exactly the calling principal's credential), and that
//! no seeded secret value appears in any API response or in the audit log.

use http::StatusCode;
use serde_json::{Value, json};

use crate::support::Recorded;
use crate::support::tools::*;

// === helpers ===

/// Asserts that `text` holds no seeded secret value (`what` names where it came from).
fn assert_no_canary(what: &str, text: &str) {
    for canary in canaries() {
        assert!(
            !text.contains(canary),
            "{what} contains the secret value {canary}: {text}"
        );
    }
}

/// `POST /v1/tools/{tool}/invoke`, asserting that the response body holds no secret value.
async fn invoke(h: &ToolHarness, token: &str, tool: &str, input: Value) -> (StatusCode, Value) {
    let (status, body) = h.invoke(token, tool, input).await;
    assert_no_canary(&format!("the response of {tool}"), &body.to_string());
    (status, body)
}

/// Any API request, asserting that the response's headers and body hold no secret value.
async fn request(
    h: &ToolHarness,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Vec<u8>>,
) -> (StatusCode, http::HeaderMap, Value) {
    let (status, headers, body) = h.request(method, path, token, body).await;
    for (name, value) in &headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        assert_no_canary(&format!("{method} {path}: header {name}"), &value);
    }
    let text = match &body {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    assert_no_canary(&format!("{method} {path}: the body"), &text);
    (status, headers, body)
}

/// Asserts an error response: its status, its `error.code`, a non-empty message and hint.
fn assert_error(status: StatusCode, body: &Value, expected: u16, code: &str) {
    assert_eq!(status.as_u16(), expected, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    for field in ["message", "hint"] {
        assert!(
            body["error"][field].as_str().is_some_and(|s| !s.is_empty()),
            "error.{field} is missing or empty: {body}"
        );
    }
}

/// Asserts that the audit log verifies and that no secret value or identity token is in any
/// of its files.
fn assert_audit_clean(h: &ToolHarness) {
    let _ = h.audit_records(); // verifies the chain
    let text = h.audit_text();
    assert_no_canary("the audit log", &text);
    for token in [&h.alice, &h.bob, &h.dave, &h.carol] {
        assert!(
            !text.contains(token.as_str()),
            "an identity token is in the audit log"
        );
    }
}

/// Asserts that `seen` carries `secret` (or nothing, when `None`) and no other seeded secret
/// value or identity token anywhere: header names and values, target, body.
fn assert_only_secret(h: &ToolHarness, seen: &Recorded, secret: Option<&str>) {
    let mut places: Vec<(String, String)> = vec![
        ("the target".into(), seen.target.clone()),
        (
            "the body".into(),
            String::from_utf8_lossy(&seen.body).into_owned(),
        ),
    ];
    for (name, value) in &seen.headers {
        places.push((
            format!("header {name}"),
            format!("{name}: {}", String::from_utf8_lossy(value.as_bytes())),
        ));
    }
    for (place, text) in &places {
        for canary in canaries() {
            if Some(canary) != secret {
                assert!(
                    !text.contains(canary),
                    "{} {} carries the foreign secret {canary} in {place}: {seen:#?}",
                    seen.method,
                    seen.target
                );
            }
        }
        for token in [&h.alice, &h.bob, &h.dave, &h.carol] {
            assert!(
                !text.contains(token.as_str()),
                "an identity token reached the upstream in {place}"
            );
        }
    }
}

/// `Bearer <secret>`, as the mock must see it: exactly one Authorization header.
fn bearer(secret: &str) -> Vec<String> {
    vec![format!("Bearer {secret}")]
}

/// The tool's `output` of a 200 response from an HTTP tool: `{status, body}` with status 200.
fn http_output(status: StatusCode, body: &Value) -> &Value {
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["denials"], json!([]), "{body}");
    assert_eq!(body["output"]["status"], 200, "{body}");
    &body["output"]["body"]
}

/// The audit records of one invocation.
fn records_of(h: &ToolHarness, invocation: &str) -> Vec<behalf::audit::Record> {
    h.audit_records()
        .into_iter()
        .filter(|r| r.invocation.as_deref() == Some(invocation))
        .collect()
}

/// Runs every future concurrently (on this task) and waits for all of them.
async fn futures_join_all<F: Future<Output = ()>>(futures: Vec<F>) {
    let mut set = Vec::from_iter(futures.into_iter().map(Box::pin));
    std::future::poll_fn(move |cx| {
        set.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if set.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}

// === tests ===

/// The smallest round trip: input in, `{"echo": input}` out, an invocation id, no denials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_round_trips_through_the_api() {
    let h = ToolHarness::start().await;
    let (status, body) = invoke(&h, &h.alice, "echo", json!({"hello": "world"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["output"], json!({"echo": {"hello": "world"}}));
    assert_eq!(body["denials"], json!([]));
    assert_eq!(body["invocation"].as_str().unwrap().len(), 32);
    assert_audit_clean(&h);
}

/// Invariant 2, injection is scoped to the verified caller: through the same tools, alice and
/// bob (acme) each reach GitHub with their own token and carol (globex) with hers; the
/// tenant-scoped Slack token is acme's for alice and globex's for carol; the weather key goes
/// into `appid` for dave. Each request carries exactly one credential, the right one, and no
/// other secret anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_principal_reaches_the_mock_apis_with_only_its_own_credential() {
    let h = ToolHarness::start().await;

    // github_issues, user scope: list and create for alice and bob.
    for (token, secret, who) in [
        (&h.alice, T_ALICE_GITHUB, "alice"),
        (&h.bob, T_BOB_GITHUB, "bob"),
    ] {
        h.upstream.clear();
        let (status, body) = invoke(&h, token, "github_issues", json!({"repo": "acme/web"})).await;
        let echoed = http_output(status, &body);
        assert_eq!(echoed["method"], "GET", "{body}");
        let seen = h.upstream.only();
        assert_eq!(
            (seen.method.as_str(), seen.target.as_str()),
            ("GET", "/repos/acme/web/issues"),
            "{who}"
        );
        assert_eq!(seen.host(), "api.github.com");
        assert_eq!(seen.sni.as_deref(), Some("api.github.com"));
        assert_eq!(seen.header("authorization"), bearer(secret), "{who}");
        assert_only_secret(&h, &seen, Some(secret));

        h.upstream.clear();
        let title = format!("filed by {who}");
        let (status, body) = invoke(
            &h,
            token,
            "github_issues",
            json!({"repo": "acme/web", "action": "create", "title": title}),
        )
        .await;
        let echoed = http_output(status, &body);
        assert_eq!(echoed["method"], "POST", "{body}");
        let seen = h.upstream.only();
        assert_eq!(
            (seen.method.as_str(), seen.path()),
            ("POST", "/repos/acme/web/issues"),
            "{who}"
        );
        assert_eq!(seen.header("authorization"), bearer(secret), "{who}");
        let sent: Value = serde_json::from_slice(&seen.body).unwrap();
        assert_eq!(sent, json!({"title": title}));
        assert_only_secret(&h, &seen, Some(secret));
    }

    // carol, the other tenant, with her own token on her own repository.
    h.upstream.clear();
    let (status, body) = invoke(&h, &h.carol, "github_issues", json!({"repo": "globex/x"})).await;
    http_output(status, &body);
    let seen = h.upstream.only();
    assert_eq!(
        (seen.method.as_str(), seen.target.as_str()),
        ("GET", "/repos/globex/x/issues")
    );
    assert_eq!(seen.header("authorization"), bearer(T_CAROL_GITHUB));
    assert_only_secret(&h, &seen, Some(T_CAROL_GITHUB));

    // slack_post, tenant scope: the tenant's bot token, whoever asks.
    for (token, secret, who) in [
        (&h.alice, T_ACME_SLACK, "alice"),
        (&h.carol, T_GLOBEX_SLACK, "carol"),
    ] {
        h.upstream.clear();
        let (status, body) = invoke(
            &h,
            token,
            "slack_post",
            json!({"channel": "#general", "text": format!("hello from {who}")}),
        )
        .await;
        http_output(status, &body);
        let seen = h.upstream.only();
        assert_eq!(
            (seen.method.as_str(), seen.target.as_str()),
            ("POST", "/api/chat.postMessage"),
            "{who}"
        );
        assert_eq!(seen.host(), "slack.com");
        assert_eq!(seen.header("authorization"), bearer(secret), "{who}");
        let sent: Value = serde_json::from_slice(&seen.body).unwrap();
        assert_eq!(
            sent,
            json!({"channel": "#general", "text": format!("hello from {who}")})
        );
        assert_only_secret(&h, &seen, Some(secret));
    }

    // weather, query injection: acme's key as `appid`, no Authorization at all.
    h.upstream.clear();
    let (status, body) = invoke(&h, &h.dave, "weather", json!({"q": "Paris"})).await;
    http_output(status, &body);
    let seen = h.upstream.only();
    assert_eq!(
        (seen.method.as_str(), seen.path()),
        ("GET", "/data/2.5/weather")
    );
    assert_eq!(seen.host(), "api.weather.example");
    let query: Vec<(String, String)> =
        form_urlencoded::parse(seen.query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let values = |key: &str| -> Vec<&str> {
        query
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(values("appid"), [T_ACME_WEATHER], "{}", seen.target);
    assert_eq!(values("q"), ["Paris"], "{}", seen.target);
    assert_eq!(query.len(), 2, "{}", seen.target);
    assert!(seen.header("authorization").is_empty(), "{seen:#?}");
    assert_only_secret(&h, &seen, Some(T_ACME_WEATHER));

    assert_audit_clean(&h);
}

/// Invariant 2 under concurrency: the principal is bound to each Store, so invocations of
/// one tool by three principals running at the same time never borrow each other's token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_invocations_never_cross_credentials() {
    let h = ToolHarness::start().await;
    let principals = [
        (&h.alice, "acme", "alice", T_ALICE_GITHUB),
        (&h.bob, "acme", "bob", T_BOB_GITHUB),
        (&h.carol, "globex", "carol", T_CAROL_GITHUB),
    ];
    let h = &h;
    let mut calls = Vec::new();
    for i in 0..5 {
        for (token, tenant, user, _) in &principals {
            let repo = format!("{tenant}/{user}-{i}");
            calls.push(async move {
                let (status, body) = invoke(h, token, "github_issues", json!({"repo": repo})).await;
                http_output(status, &body);
            });
        }
    }
    futures_join_all(calls).await;

    let seen = h.upstream.requests();
    assert_eq!(seen.len(), 15);
    for r in &seen {
        let owner = |(_, tenant, user, _): &&(_, &str, &str, _)| {
            r.path().starts_with(&format!("/repos/{tenant}/{user}-"))
        };
        let (_, _, user, secret) = principals
            .iter()
            .find(owner)
            .unwrap_or_else(|| panic!("unexpected request {}", r.target));
        assert_eq!(
            r.header("authorization"),
            bearer(secret),
            "{user}: {}",
            r.target
        );
        assert_only_secret(h, r, Some(secret));
    }
    assert_audit_clean(h);
}

/// Invariant 3 and the error table: a principal without tool access gets 403
/// `tool_not_allowed` before anything runs (nothing reaches any API); a name that cannot be
/// a tool is 404 `unknown_tool`; a missing or unverifiable token is 401 `unauthenticated`
/// with `WWW-Authenticate`. Each refusal is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_without_access_or_identity_are_refused_before_anything_runs() {
    let h = ToolHarness::start().await;

    // No tool access: dave (support) for github_issues, carol (globex) for weather.
    for (token, tool, input, user) in [
        (
            &h.dave,
            "github_issues",
            json!({"repo": "acme/web"}),
            "dave",
        ),
        (&h.carol, "weather", json!({"q": "Paris"}), "carol"),
    ] {
        let (status, body) = invoke(&h, token, tool, input).await;
        assert_error(status, &body, 403, "tool_not_allowed");
        assert_eq!(body["denials"], json!([]), "{body}");
        let id = body["invocation"].as_str().unwrap();
        let records = records_of(&h, id);
        assert_eq!(records.len(), 1, "{user}: {records:#?}");
        let r = &records[0];
        assert_eq!(
            (r.method.as_str(), r.decision.as_str(), r.status),
            ("INVOKE", "deny", Some(403)),
            "{r:#?}"
        );
        assert_eq!(r.origin, format!("tool:{tool}"));
        assert_eq!(r.user.as_deref(), Some(user));
        assert_eq!(r.reason.as_deref(), Some("no_tool_access"));
    }
    h.upstream.assert_untouched("tool_not_allowed");

    // A name no tool can have.
    let (status, body) = invoke(&h, &h.alice, "Bad!", json!({})).await;
    assert_error(status, &body, 404, "unknown_tool");

    // No token, a garbage token, a token of the wrong scheme: 401 with a challenge.
    let invoke_path = "/v1/tools/echo/invoke";
    let input = Some(b"{}".to_vec());
    let tampered = format!("{}x", h.alice);
    for (what, token) in [
        ("no token", None),
        ("a garbage token", Some("not-a-jwt")),
        ("a tampered token", Some(tampered.as_str())),
    ] {
        for (method, path, body) in [
            ("POST", invoke_path, input.clone()),
            ("GET", "/v1/tools", None),
        ] {
            let (status, headers, body) = request(&h, method, path, token, body).await;
            assert_error(status, &body, 401, "unauthenticated");
            assert!(
                headers
                    .get("www-authenticate")
                    .is_some_and(|v| v.to_str().unwrap().starts_with("Bearer")),
                "{what}, {method} {path}: {headers:?}"
            );
        }
    }
    let unauthenticated = h
        .audit_records()
        .into_iter()
        .filter(|r| r.reason.as_deref() == Some("unauthenticated"))
        .count();
    assert_eq!(
        unauthenticated, 3,
        "one audit record per unauthenticated invoke"
    );

    h.upstream.assert_untouched("refused calls");
    assert_audit_clean(&h);
}

/// Invariant 3, default deny for tools: a request the tool makes without a grant never
/// leaves (the mock sees nothing), the caller gets 403 `egress_denied` with the refused
/// request in `denials`, and the audit log holds the denial under the same invocation id,
/// attributed to the tool as client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ungranted_request_from_a_tool_is_a_denial() {
    let h = ToolHarness::start().await;
    let (status, body) = invoke(
        &h,
        &h.alice,
        "github_issues",
        json!({"repo": "globex/secret"}),
    )
    .await;
    assert_error(status, &body, 403, "egress_denied");
    let denials = body["denials"].as_array().unwrap();
    assert_eq!(denials.len(), 1, "{body}");
    assert_eq!(denials[0]["method"], "GET");
    assert_eq!(
        denials[0]["url"],
        "https://api.github.com/repos/globex/secret/issues"
    );
    assert_eq!(denials[0]["code"], "egress_denied");
    assert!(
        denials[0]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    h.upstream.assert_untouched("an ungranted request");

    let id = body["invocation"].as_str().unwrap();
    assert_eq!(id.len(), 32);
    let records = records_of(&h, id);
    let denied: Vec<_> = records
        .iter()
        .filter(|r| r.client.as_deref() == Some("tool:github_issues"))
        .collect();
    assert_eq!(denied.len(), 1, "{records:#?}");
    let r = denied[0];
    assert_eq!(
        (
            r.decision.as_str(),
            r.method.as_str(),
            r.origin.as_str(),
            r.path.as_str()
        ),
        (
            "deny",
            "GET",
            "https://api.github.com",
            "/repos/globex/secret/issues"
        ),
        "{r:#?}"
    );
    assert_eq!(
        (r.tenant.as_deref(), r.user.as_deref()),
        (Some("acme"), Some("alice"))
    );
    assert_eq!(r.credential, None, "a denied request names no credential");
    // And the invocation itself, as the API saw it.
    assert!(
        records
            .iter()
            .any(|r| r.method == "INVOKE" && r.status == Some(403)),
        "{records:#?}"
    );
    assert_audit_clean(&h);
}

/// `GET /v1/tools` shows each principal exactly the tools its tenant's `[[tool_access]]`
/// rules give it (policies/tenants/*.toml), in both the OpenAI and the Anthropic shape, each
/// with the manifest's description and input schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tool_list_is_per_principal() {
    let h = ToolHarness::start().await;
    // acme: engineering gets github_issues and slack_post; everyone echo, weather, notes,
    // hostile. globex: carol gets github_issues, slack_post, echo, notes.
    let expected = [
        (
            &h.alice,
            vec![
                "calendar",
                "echo",
                "github_issues",
                "hostile",
                "notes",
                "slack_post",
                "weather",
            ],
        ),
        (
            &h.bob,
            vec![
                "calendar",
                "echo",
                "github_issues",
                "hostile",
                "notes",
                "slack_post",
                "weather",
            ],
        ),
        (
            &h.dave,
            vec!["calendar", "echo", "hostile", "notes", "weather"],
        ),
        (
            &h.carol,
            vec!["echo", "github_issues", "notes", "slack_post"],
        ),
    ];
    for (token, names) in &expected {
        assert_eq!(&h.tool_names(token).await, names);

        // The full OpenAI shape.
        let (status, _, body) = request(&h, "GET", "/v1/tools", Some(token), None).await;
        assert_eq!(status, 200, "{body}");
        let openai = body["tools"].as_array().unwrap().clone();
        for t in &openai {
            assert_eq!(t["type"], "function", "{t}");
            let keys: Vec<&String> = t["function"].as_object().unwrap().keys().collect();
            assert_eq!(keys.len(), 3, "{t}");
        }

        // The Anthropic shape: the same tools, as {name, description, input_schema}.
        let (status, _, body) =
            request(&h, "GET", "/v1/tools?format=anthropic", Some(token), None).await;
        assert_eq!(status, 200, "{body}");
        let anthropic = body["tools"].as_array().unwrap();
        let mut got: Vec<&str> = anthropic
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        got.sort();
        assert_eq!(&got, names);
        for t in anthropic {
            let mut keys: Vec<&str> = t.as_object().unwrap().keys().map(String::as_str).collect();
            keys.sort();
            assert_eq!(keys, ["description", "input_schema", "name"], "{t}");
            let name = t["name"].as_str().unwrap();
            let manifest: toml::Table = toml::from_str(
                &std::fs::read_to_string(fixture_tools().join(name).join("tool.toml")).unwrap(),
            )
            .unwrap();
            assert_eq!(t["description"], manifest["description"].as_str().unwrap());
            let schema = serde_json::to_value(&manifest["input_schema"]).unwrap();
            assert_eq!(t["input_schema"], schema, "{name}");
            let same = openai
                .iter()
                .find(|o| o["function"]["name"] == name)
                .unwrap();
            assert_eq!(same["function"]["parameters"], schema, "{name}");
            assert_eq!(same["function"]["description"], t["description"], "{name}");
        }
    }
    assert_audit_clean(&h);
}

/// Invariant 6, bad input gets a clear error: a body that is not JSON, or input that fails
/// the tool's schema (a missing required field, an unknown field), is 400 `invalid_input`
/// naming the problem, and the tool never runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_input_is_refused_before_the_tool_runs() {
    let h = ToolHarness::start().await;

    for raw in [&b"not json"[..], b"{\"repo\": ", b""] {
        let (status, _, body) = request(
            &h,
            "POST",
            "/v1/tools/github_issues/invoke",
            Some(&h.alice),
            Some(raw.to_vec()),
        )
        .await;
        assert_error(status, &body, 400, "invalid_input");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("not JSON"), "{message}");
    }

    for (input, names) in [
        (json!({}), "repo"),
        (json!({"action": "list"}), "repo"),
        (json!({"repo": "acme/web", "extra": 1}), "extra"),
        (json!({"repo": "acme/web", "action": "delete"}), "delete"),
        (json!({"repo": "acme web"}), "repo"),
        (json!(["acme/web"]), "object"),
    ] {
        let (status, body) = invoke(&h, &h.alice, "github_issues", input.clone()).await;
        assert_error(status, &body, 400, "invalid_input");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(names),
            "the message for {input} should name {names:?}: {message}"
        );
        assert!(message.contains("github_issues"), "{message}");
        assert_eq!(body["denials"], json!([]));
    }
    h.upstream.assert_untouched("invalid input");

    // A stateful tool with bad input leaves no state behind.
    let (status, body) = invoke(&h, &h.alice, "notes", json!({"action": "put", "key": ".x"})).await;
    assert_error(status, &body, 400, "invalid_input");
    assert!(!h.tool_state("acme", "alice", "notes").exists());
    assert_audit_clean(&h);
}

/// Tool state is private to (tenant, user, tool): what alice stores, alice reads back; bob in
/// the same tenant and alice in another tenant see nothing, and bob's directory on disk holds
/// none of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notes_are_private_to_tenant_and_user() {
    let h = ToolHarness::start_with(ToolConfig {
        globex_extra: "[[tool_access]]\nwho = [\"user:alice\"]\ntools = [\"notes\"]\n".into(),
        ..Default::default()
    })
    .await;
    let alice_globex = h.token("globex", "alice", &[]);
    let secret_note = json!({"text": "alice-private-note-5150", "n": [1, 2, 3]});

    let (status, body) = invoke(
        &h,
        &h.alice,
        "notes",
        json!({"action": "put", "key": "todo", "value": secret_note}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["output"], json!({"key": "todo", "stored": true}));

    let get = json!({"action": "get", "key": "todo"});
    let list = json!({"action": "list"});
    let (status, body) = invoke(&h, &h.alice, "notes", get.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["output"],
        json!({"key": "todo", "found": true, "value": secret_note})
    );
    let (status, body) = invoke(&h, &h.alice, "notes", list.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["output"], json!({"keys": ["todo"]}));

    // bob (same tenant, same group) and alice in globex (same user id, other tenant).
    for (token, who) in [(&h.bob, "bob"), (&alice_globex, "alice@globex")] {
        let (status, body) = invoke(&h, token, "notes", get.clone()).await;
        assert_eq!(status, 200, "{who}: {body}");
        assert_eq!(
            body["output"],
            json!({"key": "todo", "found": false, "value": null}),
            "{who}"
        );
        let (status, body) = invoke(&h, token, "notes", list.clone()).await;
        assert_eq!(status, 200, "{who}: {body}");
        assert_eq!(body["output"], json!({"keys": []}), "{who}");
        assert!(!body.to_string().contains("alice-private-note"), "{who}");
    }

    // On disk: alice's note is in her directory, and nowhere else.
    let alice_dir = h.tool_state("acme", "alice", "notes");
    assert!(alice_dir.is_dir(), "{}", alice_dir.display());
    let stored: Value =
        serde_json::from_slice(&std::fs::read(alice_dir.join("todo")).unwrap()).unwrap();
    assert_eq!(stored, secret_note);
    for (tenant, user) in [("acme", "bob"), ("globex", "alice")] {
        let dir = h.tool_state(tenant, user, "notes");
        if dir.exists() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let text = std::fs::read(&path).unwrap_or_default();
                assert!(
                    !String::from_utf8_lossy(&text).contains("alice-private-note"),
                    "{} holds alice's note",
                    path.display()
                );
            }
            assert!(!dir.join("todo").exists(), "{}", dir.display());
        }
    }
    // No staging copies are left behind.
    let staging = h.state.join("tool-state").join(".staging");
    if staging.exists() {
        assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
    }
    assert_audit_clean(&h);
}

/// Invariant 1's defence in depth: an upstream that echoes the request (so the injected
/// `Authorization: Bearer <alice's token>` comes back in its body) reaches the tool scrubbed,
/// so the API response carries the marker and no secret; the audit record counts the scrub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_echoed_credential_is_scrubbed_from_the_tool_output() {
    let h = ToolHarness::start().await;
    let (status, body) = invoke(&h, &h.alice, "github_issues", json!({"repo": "acme/web"})).await;
    let echoed = http_output(status, &body);
    // The mock really did receive (and echo) the token...
    assert_eq!(
        h.upstream.only().header("authorization"),
        bearer(T_ALICE_GITHUB)
    );
    // ...and the caller sees only the marker.
    let auth = echoed["headers"]["authorization"].to_string();
    assert!(auth.contains("[REDACTED by behalf]"), "{body}");
    assert!(body.to_string().contains("[REDACTED by behalf]"), "{body}");
    assert_no_canary("the scrubbed response", &body.to_string());

    let id = body["invocation"].as_str().unwrap();
    let records = records_of(&h, id);
    let get = records
        .iter()
        .find(|r| r.client.as_deref() == Some("tool:github_issues"))
        .unwrap_or_else(|| panic!("{records:#?}"));
    assert_eq!(get.decision, "allow");
    assert_eq!(get.credential.as_deref(), Some("user:github_token"));
    assert!(get.scrubbed >= 1, "{get:#?}");
    assert_audit_clean(&h);
}

/// `/healthz` reports ok and dev mode without a token; `/metrics` counts invocations by tool
/// and status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics() {
    let h = ToolHarness::start().await;
    let (status, _, body) = request(&h, "GET", "/healthz", None, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok", "{body}");
    assert_eq!(body["dev"], true, "{body}");

    let (status, body) = invoke(&h, &h.alice, "echo", json!({})).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = request(&h, "GET", "/metrics", None, None).await;
    assert_eq!(status, 200, "{body}");
    let text = body.as_str().unwrap();
    assert!(
        text.lines()
            .any(|l| l == "behalf_tool_invocations_total{tool=\"echo\",status=\"200\"} 1"),
        "{text}"
    );
    assert_audit_clean(&h);
}

/// The pipeline's counters move with the requests tools make: allowed and denied requests by
/// tenant, service, decision and status, a latency sample per request, and no user id as a
/// label value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_metrics_count_each_request_by_tenant_service_and_decision() {
    let h = ToolHarness::start().await;
    let scrape = || async {
        let (status, _, body) = request(&h, "GET", "/metrics", None, None).await;
        assert_eq!(status, 200, "{body}");
        body.as_str().unwrap().to_owned()
    };
    let value = |text: &str, series: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0)
    };
    let allowed = "behalf_egress_requests_total{tenant=\"acme\",service=\"github\",decision=\"allow\",status=\"200\"}";
    let denied = "behalf_egress_requests_total{tenant=\"globex\",service=\"github\",decision=\"deny\",status=\"403\"}";
    let before = scrape().await;
    assert_eq!(value(&before, allowed), 0, "{before}");

    for token in [&h.alice, &h.bob] {
        let (status, body) = invoke(&h, token, "github_issues", json!({"repo": "acme/web"})).await;
        assert_eq!(status, 200, "{body}");
    }
    // carol (globex) has no grant for acme's repos: denied at the boundary.
    let (status, body) = invoke(&h, &h.carol, "github_issues", json!({"repo": "acme/web"})).await;
    assert_eq!(status, 403, "{body}");

    let after = scrape().await;
    assert_eq!(value(&after, allowed), 2, "{after}");
    assert_eq!(value(&after, denied), 1, "{after}");
    assert!(
        value(
            &after,
            "behalf_egress_response_seconds_count{service=\"github\"}"
        ) >= 3,
        "{after}"
    );
    for user in ["alice", "bob", "carol"] {
        assert!(
            !after.contains(user),
            "user ids are never label values: {user}"
        );
    }
}

/// An unknown `?format=` is refused, not silently answered in another shape that the model
/// provider would then reject.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_tool_list_format_is_refused() {
    let h = ToolHarness::start().await;
    for (query, expected) in [
        ("?format=openai", 200),
        ("?format=anthropic", 200),
        ("?format=Anthropic", 400),
        ("?format=claude", 400),
    ] {
        let (status, _, body) = h
            .request("GET", &format!("/v1/tools{query}"), Some(&h.alice), None)
            .await;
        assert_eq!(status.as_u16(), expected, "{query}: {body}");
        if expected == 400 {
            assert_eq!(body["error"]["code"], "bad_request", "{body}");
            assert!(
                body["error"]["hint"]
                    .as_str()
                    .unwrap()
                    .contains("anthropic"),
                "{body}"
            );
        }
    }
}
