//! `behalf demo`: the whole story on one machine, with nothing to configure.
//!
//! Starts a mock GitHub-like and Slack-like API on loopback (real TLS, a throw-away CA), the
//! sidecar in development mode on the embedded example policy with a throw-away state dir,
//! seeds credentials for two tenants and three users, and then invokes wasm tools through the
//! sidecar API and sends requests through the forward proxy (HTTPS through CONNECT,
//! intercepted with behalf's own CA) as each user, checking what the mock API really received. Every step says what happened and why it
//! matters; the exit code is non-zero if any expectation failed, so it is also a smoke test.
//!
//! The story: tool calls through the API as alice, bob (acme) and carol (globex), each
//! carrying only that user's (or tenant's) credential; carol denied acme's data with the
//! reason; a policy file edited and reloaded while serving; an OAuth2 credential exchanged, cached per user and refreshed after a 401 behind the
//! calendar tool's back; the hostile fixture failing at every escape and limit; the forward proxy used by a
//! separate process (curl, when installed); the audit log verified.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::egress::scrub::MARKER;
use crate::identity::dev;
use crate::policy::Origin;
use crate::principal::Principal;
use crate::secrets::{self, Secret, SecretId};
use crate::serve::{Options, Sidecar};
use crate::state::StateDir;

mod google;
use google::Google;

/// The example policy, embedded so the demo needs no files.
const SERVICES: [(&str, &str); 4] = [
    ("github", include_str!("../policies/services/github.toml")),
    (
        "google_calendar",
        include_str!("../policies/services/google_calendar.toml"),
    ),
    ("slack", include_str!("../policies/services/slack.toml")),
    ("weather", include_str!("../policies/services/weather.toml")),
];
const TENANTS: [(&str, &str); 2] = [
    ("acme", include_str!("../policies/tenants/acme.toml")),
    ("globex", include_str!("../policies/tenants/globex.toml")),
];
/// The example tools (those the example policy names), embedded — manifest and component — so
/// the demo needs no files; `.ci/run` rebuilds the components from source before the tests run
/// the demo.
const TOOLS: [(&str, &str, &[u8]); 7] = [
    (
        "calendar",
        include_str!("../fixtures/tools/calendar/tool.toml"),
        include_bytes!("../fixtures/tools/calendar/calendar.wasm"),
    ),
    (
        "echo",
        include_str!("../fixtures/tools/echo/tool.toml"),
        include_bytes!("../fixtures/tools/echo/echo.wasm"),
    ),
    (
        "github_issues",
        include_str!("../fixtures/tools/github_issues/tool.toml"),
        include_bytes!("../fixtures/tools/github_issues/github_issues.wasm"),
    ),
    (
        "hostile",
        include_str!("../fixtures/tools/hostile/tool.toml"),
        include_bytes!("../fixtures/tools/hostile/hostile.wasm"),
    ),
    (
        "notes",
        include_str!("../fixtures/tools/notes/tool.toml"),
        include_bytes!("../fixtures/tools/notes/notes.wasm"),
    ),
    (
        "slack_post",
        include_str!("../fixtures/tools/slack_post/tool.toml"),
        include_bytes!("../fixtures/tools/slack_post/slack_post.wasm"),
    ),
    (
        "weather",
        include_str!("../fixtures/tools/weather/tool.toml"),
        include_bytes!("../fixtures/tools/weather/weather.wasm"),
    ),
];
/// The origins the mock API answers for, reached through `--connect-to`.
const ORIGINS: [&str; 5] = [
    "https://api.github.com",
    "https://slack.com",
    "https://www.googleapis.com",
    "https://oauth2.googleapis.com",
    "https://accounts.google.com",
];

/// Demo credentials: distinct per user and tenant, so a mix-up would show.
const SEEDS: [(&str, &str); 5] = [
    ("acme/alice/github_token", "ghp_demo_ALICE_0a1b2c3d4e5f"),
    ("acme/bob/github_token", "ghp_demo_BOB_6a7b8c9d0e1f"),
    ("globex/carol/github_token", "ghp_demo_CAROL_2b3c4d5e6f7a"),
    ("acme/slack_bot_token", "xoxb-demo-ACME-bot-8c9d0e1f"),
    ("globex/slack_bot_token", "xoxb-demo-GLOBEX-bot-3d4e5f6a"),
];

/// Every demo secret value, for the checks that nothing leaked.
fn demo_secrets() -> Vec<&'static str> {
    let mut all: Vec<&str> = SEEDS.iter().map(|(_, s)| *s).collect();
    all.extend([google::CLIENT_SECRET, google::ALICE_REFRESH]);
    all
}

/// Why the demo could not run at all (as opposed to an expectation failing).
#[derive(Debug, thiserror::Error)]
#[error("demo setup failed: {0}")]
pub struct DemoError(String);

fn fail(e: impl std::fmt::Display) -> DemoError {
    DemoError(e.to_string())
}

/// Runs the demo; returns whether every expectation held.
pub async fn run() -> Result<bool, DemoError> {
    let tmp = tempfile::tempdir().map_err(fail)?;
    say(
        "setting up",
        "a throw-away directory, mock APIs with their own CA, the sidecar and its tools",
    );
    // The API's address is known first: it is the redirect URI registered with the mock
    // provider, and the `redirect_base` of the calendar service.
    let api_listener = TcpListener::bind("127.0.0.1:0").await.map_err(fail)?;
    let api_addr = api_listener.local_addr().map_err(fail)?;
    let redirect_base = format!("http://{api_addr}");
    let mock = Mock::start(format!(
        "{redirect_base}/v1/connect/google_calendar/callback"
    ))
    .await?;
    let policies = write_policies(tmp.path(), &mock.ca_pem, &redirect_base)?;
    let state_path = tmp.path().join("state");
    let state = StateDir::open(&state_path).map_err(fail)?;
    seed(&policies, &state)?;
    let options = Options {
        policies: policies.clone(),
        state: Some(state_path.clone()),
        shadow: None,
        connect_to: ORIGINS
            .iter()
            .map(|o| Ok((Origin::parse(o).map_err(fail)?, mock.addr)))
            .collect::<Result<_, DemoError>>()?,
    };
    let sidecar = Sidecar::open_with_progress(&options, &mut |t| {
        println!(
            "    [{}/{}] {} {} ({} ms)",
            t.index + 1,
            t.count,
            if t.cached { "loaded" } else { "compiled" },
            t.name,
            t.elapsed.as_millis()
        );
    })
    .map_err(fail)?;
    let proxy_listener = TcpListener::bind("127.0.0.1:0").await.map_err(fail)?;
    let proxy_addr = proxy_listener.local_addr().map_err(fail)?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let proxy_task = tokio::spawn(sidecar.proxy().serve(
        proxy_listener,
        64,
        until_stopped(stopped.clone()),
    ));
    let api_task = tokio::spawn(
        sidecar
            .api()
            .serve(api_listener, 64, until_stopped(stopped)),
    );
    let ca_pem = state_path.join("ca").join("ca.pem");
    let proxy_client = Client {
        proxy: proxy_addr,
        ca: sidecar.ca.cert_der().clone(),
    };
    let api = Api::new(api_addr);
    println!(
        "    API on http://{api_addr}, forward proxy on http://{proxy_addr}, mock APIs on {}, \
         state in {}\n",
        mock.addr,
        state_path.display()
    );

    let token = |tenant: &str, user: &str, groups: &[&str]| -> Result<String, DemoError> {
        let p = Principal::parse(tenant, user, groups).map_err(fail)?;
        dev::mint(
            true,
            &state,
            &p.tenant,
            &p.user,
            &p.groups,
            Duration::from_secs(600),
        )
        .map_err(fail)
    };
    let alice = token("acme", "alice", &["engineering"])?;
    let bob = token("acme", "bob", &["engineering"])?;
    let carol = token("globex", "carol", &[])?;
    let mut ok = true;

    say(
        "tool calls",
        "the agent invokes wasm tools through the API with each user's token",
    );
    // Each user's tool call carries that user's credential; an echoed one comes back scrubbed.
    for (name, tok, secret) in [("alice", &alice, SEEDS[0].1), ("bob", &bob, SEEDS[1].1)] {
        let before = mock.seen().len();
        let (status, body) = api
            .invoke(tok, "github_issues", r#"{"repo": "acme/web"}"#)
            .await;
        let got = mock.seen().get(before).cloned().unwrap_or_default();
        ok &= check(
            &format!("{name} (acme) asks the github_issues tool for acme/web's issues"),
            status == 200 && got == format!("Bearer {secret}"),
            &format!(
                "the API received `Authorization: Bearer {}…`: {name}'s own token, added at the \
                 boundary; the tool never had it",
                &secret[..12]
            ),
        );
        if name == "alice" {
            let text = body.to_string();
            ok &= check(
                "the API echoed alice's token back; behalf scrubbed it before the tool saw it",
                text.contains(MARKER) && !text.contains(secret),
                &format!("the tool's output shows `{MARKER}` where the token was"),
            );
        }
    }

    // A user of another tenant is denied, with the reason, and nothing is sent.
    let before = mock.seen().len();
    let (status, body) = api
        .invoke(&carol, "github_issues", r#"{"repo": "acme/web"}"#)
        .await;
    let reason = body["denials"][0]["message"]
        .as_str()
        .unwrap_or("no denial");
    ok &= check(
        "carol (globex) asks the same tool for acme's issues",
        status == 403 && body["error"]["code"] == "egress_denied" && mock.seen().len() == before,
        &format!("denied ({reason}); the API saw nothing"),
    );

    // The tenant-scoped bot token, per tenant.
    let before = mock.seen().len();
    let (status, _) = api
        .invoke(
            &carol,
            "slack_post",
            r#"{"channel": "general", "text": "hi"}"#,
        )
        .await;
    let got = mock.seen().get(before).cloned().unwrap_or_default();
    ok &= check(
        "carol posts to globex's Slack with the slack_post tool",
        status == 200 && got == format!("Bearer {}", SEEDS[4].1),
        "the API received globex's bot token (scope tenant), never acme's",
    );

    say(
        "a live policy change",
        "an operator edits a policy file while the sidecar serves; nothing restarts",
    );
    let post = r#"{"channel": "eng", "text": "deploy done"}"#;
    let (before_status, _) = api.invoke(&bob, "slack_post", post).await;
    let acme = policies.join("tenants").join("acme.toml");
    let edited = std::fs::read_to_string(&acme).map_err(fail)?.replace(
        "id = \"eng-slack\"\nwho = [\"group:engineering\"]",
        "id = \"eng-slack\"\nwho = [\"user:alice\"]",
    );
    std::fs::write(&acme, edited).map_err(fail)?;
    let reloader = sidecar.reloader.clone();
    let reloaded = tokio::task::spawn_blocking(move || reloader.reload())
        .await
        .map_err(fail)?;
    let before = mock.seen().len();
    let (bob_status, body) = api.invoke(&bob, "slack_post", post).await;
    let (alice_status, _) = api.invoke(&alice, "slack_post", post).await;
    ok &= check(
        "acme narrows its Slack grant from all engineers to alice alone",
        before_status == 200
            && reloaded == Ok(2)
            && bob_status == 403
            && alice_status == 200
            && mock.seen().len() == before + 1,
        &format!(
            "reloaded as policy generation {}; bob's next post is refused ({}) and alice's \
             goes through; requests already running would have finished under generation 1",
            reloaded.as_ref().map_or(0, |g| *g),
            body["denials"][0]["message"]
                .as_str()
                .unwrap_or("no denial")
        ),
    );

    say(
        "a computed credential",
        "the calendar tool reads Google Calendar with each user's OAuth2 grant; behalf turns \
         the stored refresh token into access tokens, and the tool never sees any of them",
    );
    let before = mock.seen().len();
    let (status, body) = api.invoke(&alice, "calendar", r#"{"max": 2}"#).await;
    let got = mock.seen().get(before).cloned().unwrap_or_default();
    let text = body.to_string();
    let clean = |text: &str| {
        demo_secrets().iter().all(|s| !text.contains(s))
            && mock.issued().iter().all(|t| !text.contains(t))
    };
    ok &= check(
        "alice asks the calendar tool for her next events",
        status == 200
            && body["output"]["body"]["summary"] == "alice@acme.example"
            && mock.exchanges("alice") == 1
            && got.starts_with("Bearer ya29.demo-alice-")
            && clean(&text),
        &format!(
            "behalf exchanged alice's refresh token at the token endpoint (1 exchange) and sent \
             `Authorization: {}…`; the tool got her events and no token",
            got.get(..20).unwrap_or(&got)
        ),
    );
    let before = mock.seen().len();
    let (status, body) = api.invoke(&bob, "calendar", "{}").await;
    ok &= check(
        "bob asks for his calendar before connecting his Google account",
        status == 403 && body["error"]["code"] == "egress_denied" && mock.seen().len() == before,
        &format!(
            "refused, nothing sent: {}",
            body["denials"][0]["message"]
                .as_str()
                .unwrap_or("no denial")
        ),
    );
    let connected = connect_account(&api, &mock, &bob, "bob").await;
    let (status, text) = connected.unwrap_or_else(|e| (0, e));
    let code_exchanges = mock.google().exchanges("bob", "authorization_code");
    ok &= check(
        "bob connects his Google account",
        status == 200 && text.contains("Connected") && code_exchanges == 1 && clean(&text),
        &format!(
            "the agent asked behalf for a sign-in URL (state and PKCE challenge) and sent bob \
             there; Google sent his browser back to behalf, which exchanged the code itself and \
             stored his refresh token (`{}`): the agent and the tool never saw a token",
            if status == 200 {
                "Connected"
            } else {
                text.as_str()
            }
        ),
    );
    let (status_a, body_a) = api.invoke(&alice, "calendar", "{}").await;
    let (status_b, body_b) = api.invoke(&bob, "calendar", "{}").await;
    ok &= check(
        "alice asks again, and bob asks for his",
        status_a == 200
            && status_b == 200
            && body_a["output"]["body"]["summary"] == "alice@acme.example"
            && body_b["output"]["body"]["summary"] == "bob@acme.example"
            && mock.exchanges("alice") == 1
            && mock.exchanges("bob") == 0
            && clean(&body_b.to_string()),
        "alice's cached access token was reused (still 1 exchange); bob's call carried the \
         access token from his sign-in (no exchange): tokens are cached per user and service, \
         never shared",
    );
    let revoked = {
        let mut google = mock.google();
        std::mem::take(&mut google.live).len()
    };
    let (status, body) = api.invoke(&alice, "calendar", "{}").await;
    ok &= check(
        "the calendar API revokes every access token; alice asks once more",
        status == 200
            && body["output"]["body"]["summary"] == "alice@acme.example"
            && mock.exchanges("alice") == 2
            && clean(&body.to_string()),
        &format!(
            "the API answered 401 to the cached token ({revoked} revoked); behalf refreshed it \
             behind the tool's back and retried once: the tool saw only her events"
        ),
    );
    let (status, text) = api
        .request(
            http::Method::DELETE,
            "/v1/connections/google_calendar",
            Some(&bob),
            "",
        )
        .await
        .unwrap_or_else(|e| (0, e));
    let before = mock.seen().len();
    let (after, _) = api.invoke(&bob, "calendar", "{}").await;
    ok &= check(
        "bob disconnects his Google account",
        status == 200
            && text.contains("\"revoked\":true")
            && after == 403
            && mock.seen().len() == before,
        "behalf revoked his refresh token at Google, deleted it and forgot his access token; \
         his next calendar call is refused and nothing is sent",
    );

    say(
        "a malicious tool",
        "the hostile fixture tries every escape, as alice",
    );
    let before = mock.seen().len();
    let (status, body) = api.invoke(&alice, "hostile", r#"{"mode": "probe"}"#).await;
    let attempts = body["output"]["attempts"].as_array().map_or(0, Vec::len);
    let escaped: Vec<String> = body["output"]["attempts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["succeeded"] == true && !harmless(a))
        .map(|a| format!("{} {}", a["id"], a["target"]))
        .collect();
    let text = body.to_string();
    ok &= check(
        "hostile reads env and files, opens sockets, calls other hosts, forges credentials",
        status == 200
            && attempts > 20
            && escaped.is_empty()
            && mock.seen().len() == before
            && demo_secrets().iter().all(|s| !text.contains(s)),
        &format!(
            "{attempts} attempts, {} escaped{}; {} requests denied by policy; it saw only its \
             own name, invocation id and empty /state, and no secret",
            escaped.len(),
            if escaped.is_empty() {
                String::new()
            } else {
                format!(" ({})", escaped.join(", "))
            },
            body["denials"].as_array().map_or(0, Vec::len)
        ),
    );
    let started = std::time::Instant::now();
    let (status, body) = api.invoke(&alice, "hostile", r#"{"mode": "loop"}"#).await;
    ok &= check(
        "hostile spins forever",
        status == 504 && body["error"]["code"] == "tool_timeout",
        &format!(
            "stopped at its 1 s deadline after {} ms (504 tool_timeout)",
            started.elapsed().as_millis()
        ),
    );
    let (status, body) = api.invoke(&alice, "hostile", r#"{"mode": "alloc"}"#).await;
    ok &= check(
        "hostile allocates without bound",
        status == 500 && body["error"]["code"] == "tool_failed",
        &error_text(&body),
    );
    let (status, _) = api
        .invoke(&bob, "github_issues", r#"{"repo": "acme/web"}"#)
        .await;
    ok &= check(
        "the sidecar is unharmed",
        status == 200,
        "the next tool call works as before: each call is a fresh instance",
    );

    say(
        "the forward proxy",
        "a process that is not wasm gets the same treatment",
    );
    let before = mock.seen().len();
    let (how, resp) = match curl(&alice, proxy_addr, &ca_pem) {
        Some(r) => ("curl with HTTPS_PROXY", r),
        None => (
            "an HTTPS client (curl is not installed)",
            proxy_client
                .get(&alice, "api.github.com", "/repos/acme/web/issues")
                .await,
        ),
    };
    let got = mock.seen().get(before).cloned().unwrap_or_default();
    let body = resp.as_ref().map(|r| r.1.clone()).unwrap_or_default();
    ok &= check(
        &format!("{how} lists acme/web's issues as alice"),
        resp.as_ref().is_ok_and(|r| r.0 == 200)
            && got == format!("Bearer {}", SEEDS[0].1)
            && body.contains(MARKER)
            && !body.contains(SEEDS[0].1),
        "through CONNECT and behalf's CA: alice's token injected, its echo scrubbed",
    );
    let before = mock.seen().len();
    let resp = proxy_client
        .get(&carol, "api.github.com", "/repos/acme/web/issues")
        .await;
    let denied = match &resp {
        Err(e) if e.starts_with("HTTP/1.1 403") => {
            Some(error_message(e.split_once('\n').map_or("", |(_, b)| b)))
        }
        _ => None,
    };
    ok &= check(
        "carol tries acme's issues through the proxy",
        denied.is_some() && mock.seen().len() == before,
        &format!(
            "refused at CONNECT with 403 ({}); the API saw nothing",
            denied.as_deref().unwrap_or("no refusal")
        ),
    );
    let resp = proxy_client
        .get("not-a-token", "api.github.com", "/user")
        .await;
    ok &= check(
        "a process without a valid identity token",
        matches!(resp, Err(ref e) if e.contains("407")),
        "refused at CONNECT with 407: nothing is sent on behalf of nobody",
    );

    // The audit log.
    let _ = stop.send(true);
    let _ = tokio::join!(proxy_task, api_task);
    sidecar.egress.audit().sync().map_err(fail)?;
    let key = crate::audit::read_key(&state).map_err(fail)?;
    let verified = crate::audit::verify(&state_path.join(crate::audit::DIR), &key);
    let text = read_audit(&state_path);
    ok &= check(
        "the audit log verifies and holds no secret",
        verified.is_ok()
            && demo_secrets().iter().all(|s| !text.contains(s))
            && mock.issued().iter().all(|t| !text.contains(t)),
        &match &verified {
            Ok(r) => format!(
                "{} HMAC-chained records, one per decision (tool invocations and each request \
                 they made), naming credentials but never their values",
                r.records
            ),
            Err(e) => e.to_string(),
        },
    );
    println!(
        "\n{}",
        if ok {
            "demo: every expectation held"
        } else {
            "demo: SOME EXPECTATIONS FAILED"
        }
    );
    Ok(ok)
}

/// Probe attempts that are allowed to succeed: reading its own env (name and invocation id),
/// args and cwd, and its own empty state directory.
fn harmless(attempt: &serde_json::Value) -> bool {
    let id = attempt["id"].as_str().unwrap_or("");
    let target = attempt["target"].as_str().unwrap_or("");
    id.starts_with("env.")
        || id == "fs.preopens"
        || (id == "fs.read_dir" && (target == "/state" || target == "/state/"))
}

fn error_text(body: &serde_json::Value) -> String {
    format!(
        "{} ({})",
        body["error"]["message"].as_str().unwrap_or("no error"),
        body["error"]["code"].as_str().unwrap_or("-")
    )
}

/// Runs `curl` through the proxy as a separate process, as an agent's subprocess would; `None`
/// when curl is not installed.
fn curl(token: &str, proxy: SocketAddr, ca: &Path) -> Option<Result<(u16, String), String>> {
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code}",
            "--cacert",
        ])
        .arg(ca)
        .arg("https://api.github.com/repos/acme/web/issues")
        .env("HTTPS_PROXY", format!("http://u:{token}@{proxy}"))
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let Some((body, code)) = text.rsplit_once('\n') else {
        return Some(Err(String::from_utf8_lossy(&out.stderr).into_owned()));
    };
    Some(
        code.trim()
            .parse()
            .map(|c| (c, body.to_owned()))
            .map_err(|_| String::from_utf8_lossy(&out.stderr).into_owned()),
    )
}

fn say(what: &str, detail: &str) {
    println!("==> {what}: {detail}");
}

fn check(step: &str, passed: bool, why: &str) -> bool {
    println!("{} {step}", if passed { "✓" } else { "✗" });
    println!("    {why}");
    passed
}

fn error_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.to_owned())
}

fn read_audit(state: &Path) -> String {
    std::fs::read_dir(state.join(crate::audit::DIR))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect()
}

/// Writes the embedded example policy, with a `behalf.toml` for the demo.
fn write_policies(
    dir: &Path,
    mock_ca: &str,
    redirect_base: &str,
) -> Result<std::path::PathBuf, DemoError> {
    let policies = dir.join("policies");
    for sub in ["services", "tenants"] {
        std::fs::create_dir_all(policies.join(sub)).map_err(fail)?;
    }
    std::fs::write(dir.join("mock-ca.pem"), mock_ca).map_err(fail)?;
    let settings = "dev = true\nstate_dir = \"state\"\ntools_dir = \"tools\"\n\n[tls]\n\
                    upstream_roots = [\"mock-ca.pem\"]\n";
    std::fs::write(policies.join("behalf.toml"), settings).map_err(fail)?;
    for (name, manifest, component) in TOOLS {
        let tool = dir.join("tools").join(name);
        std::fs::create_dir_all(&tool).map_err(fail)?;
        // The demo stops hostile's loop after 1 s rather than the shipped 10 s.
        let manifest = manifest.replace("timeout = \"10s\"", "timeout = \"1s\"");
        std::fs::write(tool.join("tool.toml"), manifest).map_err(fail)?;
        std::fs::write(tool.join(format!("{name}.wasm")), component).map_err(fail)?;
    }
    for (name, text) in SERVICES {
        // Browsers come back to this demo's API, wherever it listens.
        let text = text.replace(
            "redirect_base = \"http://127.0.0.1:7777\"",
            &format!("redirect_base = \"{redirect_base}\""),
        );
        std::fs::write(policies.join("services").join(format!("{name}.toml")), text)
            .map_err(fail)?;
    }
    for (name, text) in TENANTS {
        // The hostile fixture is for the demo and tests only: the shipped policy never grants it.
        let text = if name == "acme" {
            format!("{text}\n[[tool_access]]\nwho = [\"*\"]\ntools = [\"hostile\"]\n")
        } else {
            text.to_owned()
        };
        std::fs::write(policies.join("tenants").join(format!("{name}.toml")), text)
            .map_err(fail)?;
    }
    Ok(policies)
}

/// Stores the demo credentials, as an operator would with `behalf secret set`.
fn seed(policies: &Path, state: &StateDir) -> Result<(), DemoError> {
    let policy = crate::policy::PolicySet::load(policies).map_err(fail)?;
    let store = secrets::open_store(policy.settings(), state).map_err(fail)?;
    for (id, value) in SEEDS {
        let id: SecretId = SecretId::parse(id).map_err(fail)?;
        store.set(&id, &Secret::from_text(value)).map_err(fail)?;
    }
    let app =
        serde_json::json!({"client_id": google::CLIENT_ID, "client_secret": google::CLIENT_SECRET});
    let alice = serde_json::json!({
        "client_id": google::CLIENT_ID,
        "client_secret": google::CLIENT_SECRET,
        "refresh_token": google::ALICE_REFRESH,
    });
    for (id, value) in [("acme/google_app", app), ("acme/alice/google", alice)] {
        let id = SecretId::parse(id).map_err(fail)?;
        store
            .set(&id, &Secret::from_text(&value.to_string()))
            .map_err(fail)?;
    }
    Ok(())
}

/// A mock API answering for every demo origin: it records the `Authorization` it received and
/// echoes it back (so scrubbing has something to do).
struct Mock {
    addr: SocketAddr,
    ca_pem: String,
    seen: Arc<Mutex<Vec<String>>>,
    oauth: Arc<Mutex<Google>>,
}

impl Mock {
    async fn start(redirect_uri: String) -> Result<Self, DemoError> {
        let ca_key = rcgen::KeyPair::generate().map_err(fail)?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "behalf demo mock API CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).map_err(fail)?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let names: Vec<String> = ORIGINS
            .iter()
            .map(|o| o.trim_start_matches("https://").to_owned())
            .collect();
        let leaf_key = rcgen::KeyPair::generate().map_err(fail)?;
        let leaf = rcgen::CertificateParams::new(names)
            .map_err(fail)?
            .signed_by(&leaf_key, &issuer)
            .map_err(fail)?;
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(fail)?
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .map_err(fail)?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind("127.0.0.1:0").await.map_err(fail)?;
        let addr = listener.local_addr().map_err(fail)?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let oauth = Arc::new(Mutex::new(Google::new(redirect_uri)));
        let recorded = seen.clone();
        let google = oauth.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, recorded, google) =
                    (acceptor.clone(), recorded.clone(), google.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (recorded, google) = (recorded.clone(), google.clone());
                        async move {
                            let auth = req
                                .headers()
                                .get(http::header::AUTHORIZATION)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned();
                            let host = req
                                .headers()
                                .get(http::header::HOST)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned();
                            let path = req.uri().path().to_owned();
                            let query = req.uri().query().unwrap_or("").to_owned();
                            let user = req
                                .headers()
                                .get("x-demo-user")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned();
                            let form = req.into_body().collect().await.map(|b| b.to_bytes());
                            let lock = || google.lock().unwrap_or_else(|e| e.into_inner());
                            if host == "accounts.google.com" {
                                // The consent screen: the user agrees and is sent back.
                                let mut resp = Response::new(Full::new(Bytes::new()));
                                match lock().authorize(&query, &user) {
                                    Ok(location) => {
                                        *resp.status_mut() = http::StatusCode::FOUND;
                                        if let Ok(v) = http::HeaderValue::from_str(&location) {
                                            resp.headers_mut().insert(http::header::LOCATION, v);
                                        }
                                    }
                                    Err(error) => {
                                        *resp.status_mut() = http::StatusCode::BAD_REQUEST;
                                        *resp.body_mut() = Full::new(Bytes::from(error));
                                    }
                                }
                                return Ok::<_, Infallible>(resp);
                            }
                            let (status, body) = match host.as_str() {
                                // The token endpoint's caller is behalf, not the tool: not
                                // recorded as something the API saw.
                                "oauth2.googleapis.com" if path == "/revoke" => {
                                    lock().revoke(&form.unwrap_or_default())
                                }
                                "oauth2.googleapis.com" => {
                                    lock().token(&auth, &form.unwrap_or_default())
                                }
                                "www.googleapis.com" => {
                                    recorded
                                        .lock()
                                        .unwrap_or_else(|e| e.into_inner())
                                        .push(auth.clone());
                                    lock().events(&auth)
                                }
                                _ => {
                                    recorded
                                        .lock()
                                        .unwrap_or_else(|e| e.into_inner())
                                        .push(auth.clone());
                                    let body = serde_json::json!({
                                        "ok": true,
                                        "path": path,
                                        "you_sent_authorization": auth,
                                    });
                                    (200, body)
                                }
                            };
                            let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
                            *resp.status_mut() = http::StatusCode::from_u16(status)
                                .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            ca_pem: ca_cert.pem(),
            seen,
            oauth,
        })
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn google(&self) -> std::sync::MutexGuard<'_, Google> {
        self.oauth.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many refresh-token exchanges were made for `user`.
    fn exchanges(&self, user: &str) -> usize {
        self.google().exchanges(user, "refresh_token")
    }

    /// Every token the provider issued so far (access and refresh).
    fn issued(&self) -> Vec<String> {
        self.google().issued.clone()
    }
}

/// A client that uses the proxy the way `HTTPS_PROXY` clients do: CONNECT, then TLS trusting
/// behalf's CA, then one request.
struct Client {
    proxy: SocketAddr,
    ca: rustls::pki_types::CertificateDer<'static>,
}

impl Client {
    async fn get(&self, token: &str, host: &str, path: &str) -> Result<(u16, String), String> {
        self.send(token, host, http::Method::GET, path).await
    }

    async fn send(
        &self,
        token: &str,
        host: &str,
        method: http::Method,
        path: &str,
    ) -> Result<(u16, String), String> {
        let mut tcp = TcpStream::connect(self.proxy)
            .await
            .map_err(|e| e.to_string())?;
        let connect = format!(
            "CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\
             Proxy-Authorization: Bearer {token}\r\n\r\n"
        );
        tcp.write_all(connect.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            if tcp.read(&mut byte).await.map_err(|e| e.to_string())? == 0 {
                break;
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let status_line = head.lines().next().unwrap_or("").to_owned();
        if !status_line.contains(" 200") {
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            let mut body = vec![0u8; length.min(64 * 1024)];
            let _ = tcp.read_exact(&mut body).await;
            return Err(format!("{status_line}\n{}", String::from_utf8_lossy(&body)));
        }
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).map_err(|e| e.to_string())?;
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name =
            rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, host)
            .body(Full::new(Bytes::from_static(
                b"{\"channel\":\"general\",\"text\":\"hi\"}",
            )))
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status.as_u16(), String::from_utf8_lossy(&body).into_owned()))
    }
}

/// The agent's side of the sidecar API: one POST per tool call, with the user's token.
struct Api {
    addr: SocketAddr,
}

impl Api {
    fn new(addr: SocketAddr) -> Self {
        Self { addr }
    }

    /// Invokes `tool`; the status and the JSON body (`null` if the call failed outright).
    async fn invoke(&self, token: &str, tool: &str, input: &str) -> (u16, serde_json::Value) {
        match self.send(token, tool, input).await {
            Ok(r) => r,
            Err(e) => {
                println!("    (the API call failed: {e})");
                (0, serde_json::Value::Null)
            }
        }
    }

    async fn send(
        &self,
        token: &str,
        tool: &str,
        input: &str,
    ) -> Result<(u16, serde_json::Value), String> {
        let (status, body) = self
            .request(
                http::Method::POST,
                &format!("/v1/tools/{tool}/invoke"),
                Some(token),
                input,
            )
            .await?;
        let body = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        Ok((status, body))
    }

    /// One request to the API; the status and the body as text.
    async fn request(
        &self,
        method: http::Method,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> Result<(u16, String), String> {
        self.request_accepting(method, path, token, body, "application/json")
            .await
    }

    /// [`Api::request`] with an `Accept` header (a browser sends `text/html`).
    async fn request_accepting(
        &self,
        method: http::Method,
        path: &str,
        token: Option<&str>,
        body: &str,
        accept: &str,
    ) -> Result<(u16, String), String> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, self.addr.to_string())
            .header(http::header::ACCEPT, accept);
        if let Some(token) = token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if !body.is_empty() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.to_owned())))
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// The whole "connect your account" round trip as the agent's UI and the user's browser do
/// it: the sign-in URL from behalf, consent at the provider, the redirect back to behalf's
/// callback. The callback's status and page.
async fn connect_account(
    api: &Api,
    mock: &Mock,
    token: &str,
    user: &str,
) -> Result<(u16, String), String> {
    let (status, body) = api
        .request(
            http::Method::GET,
            "/v1/connect/google_calendar",
            Some(token),
            "",
        )
        .await?;
    let body: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    let url = body["authorize_url"]
        .as_str()
        .ok_or_else(|| format!("no sign-in URL ({status}): {body}"))?;
    let back = consent(mock, url, user).await?;
    let path = back
        .strip_prefix(&format!("http://{}", api.addr))
        .ok_or_else(|| format!("redirected elsewhere: {back}"))?;
    // The browser follows the redirect: no identity token, and it wants a page.
    api.request_accepting(http::Method::GET, path, None, "", "text/html")
        .await
}

/// The user's browser at the mock provider's consent screen: opens `url` as `user` (who
/// consents) and returns where the provider redirects it.
async fn consent(mock: &Mock, url: &str, user: &str) -> Result<String, String> {
    use rustls::pki_types::pem::PemObject;
    let target = crate::policy::Target::parse(url).map_err(|e| e.to_string())?;
    let host = target.origin.host.to_string();
    let mut roots = rustls::RootCertStore::empty();
    let ca = rustls::pki_types::CertificateDer::from_pem_slice(mock.ca_pem.as_bytes())
        .map_err(|e| e.to_string())?;
    roots.add(ca).map_err(|e| e.to_string())?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(mock.addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let path = match &target.query {
        Some(q) => format!("{}?{q}", target.path),
        None => target.path.clone(),
    };
    let req = Request::get(path)
        .header(http::header::HOST, host)
        .header("x-demo-user", user)
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    resp.headers()
        .get(http::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| format!("the provider answered {} without a redirect", resp.status()))
}
