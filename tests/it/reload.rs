//! Hot reload: a changed policy or tool set is swapped in without a restart; requests already
//! running finish under the policy they started with; a broken change keeps the last good
//! policy, says why in `/healthz` and counts in `/metrics`.

use std::time::Duration;

use http::StatusCode;
use serde_json::{Value, json};

use crate::support::tools::*;
use crate::support::{copy_dir, echo};

/// The tenant file with `old` replaced by `new`.
fn edit(h: &ToolHarness, file: &str, old: &str, new: &str) {
    let path = h.policies.join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(old), "{file} has no `{old}`");
    std::fs::write(&path, text.replace(old, new)).unwrap();
}

async fn health(h: &ToolHarness) -> Value {
    let (status, _, body) = h.request("GET", "/healthz", None, None).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn metric(h: &ToolHarness, series: &str) -> u64 {
    let (_, _, body) = h.request("GET", "/metrics", None, None).await;
    body.as_str()
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

fn reload(h: &ToolHarness) -> Result<u64, String> {
    h.sidecar.reloader.reload()
}

/// A grant added to a tenant file is in force after a reload; a grant removed stops the next
/// request, while the request already waiting on the upstream completes under the policy it
/// started with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_grant_takes_effect_without_dropping_a_request_in_flight() {
    let h = ToolHarness::start().await;
    // carol (globex) may read globex's repos, not acme's.
    let (status, body) = h
        .invoke(&h.carol, "github_issues", json!({"repo": "acme/web"}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    edit(
        &h,
        "tenants/globex.toml",
        r#"allow = ["GET /repos/globex/**"]"#,
        r#"allow = ["GET /repos/globex/**", "GET /repos/acme/web/issues"]"#,
    );
    assert_eq!(reload(&h), Ok(2));
    let (status, body) = h
        .invoke(&h.carol, "github_issues", json!({"repo": "acme/web"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(health(&h).await["policy"]["generation"], 2);

    // alice's request is held at the upstream while her grant is removed.
    h.upstream.respond_async(|r| async move {
        tokio::time::sleep(Duration::from_millis(800)).await;
        echo(&r)
    });
    let in_flight = {
        let (api, alice) = (h.api_addr, h.alice.clone());
        tokio::spawn(async move { invoke_at(api, &alice).await })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !h.upstream.requests().iter().any(|r| {
        r.path() == "/repos/acme/web/issues"
            && r.header("authorization")
                .iter()
                .any(|a| a.contains(T_ALICE_GITHUB))
    }) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "alice's request never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    edit(
        &h,
        "tenants/acme.toml",
        r#"id = "eng-github""#,
        r#"id = "eng-github-off""#,
    );
    edit(
        &h,
        "tenants/acme.toml",
        r#"allow = ["GET /repos/acme/**", "POST /repos/acme/*/issues", "GET /user"]"#,
        r#"allow = ["GET /user"]"#,
    );
    assert_eq!(reload(&h), Ok(3));
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, 200, "the request in flight completes: {body}");
    assert_eq!(body["output"]["status"], 200, "{body}");

    let (status, body) = h
        .invoke(&h.alice, "github_issues", json!({"repo": "acme/web"}))
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "the next request is decided anew: {body}"
    );
}

/// One invocation of github_issues for acme/web, as alice, on its own connection.
async fn invoke_at(api: std::net::SocketAddr, token: &str) -> (u16, Value) {
    use http_body_util::{BodyExt, Full};
    let tcp = tokio::net::TcpStream::connect(api).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("/v1/tools/github_issues/invoke")
        .header("host", api.to_string())
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(r#"{"repo": "acme/web"}"#)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

/// A broken file is refused with every problem's file:line:column; the last good policy
/// keeps serving, `/healthz` and `/metrics` say so, and fixing the file recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_change_keeps_the_last_good_policy() {
    let h = ToolHarness::start().await;
    edit(
        &h,
        "services/github.toml",
        "scope = \"user\"",
        "scope = \"everyone\"",
    );
    let err = reload(&h).unwrap_err();
    assert!(err.contains("services/github.toml:"), "{err}");
    assert!(err.contains("everyone"), "{err}");

    let (status, body) = h
        .invoke(&h.alice, "github_issues", json!({"repo": "acme/web"}))
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "still served by generation 1: {body}"
    );
    let health = health(&h).await;
    assert_eq!(health["policy"]["generation"], 1, "{health}");
    assert!(
        health["policy"]["last_reload_error"]
            .as_str()
            .unwrap()
            .contains("services/github.toml:"),
        "{health}"
    );
    assert_eq!(
        metric(&h, "behalf_policy_reloads_total{outcome=\"failed\"}").await,
        1
    );

    edit(
        &h,
        "services/github.toml",
        "scope = \"everyone\"",
        "scope = \"user\"",
    );
    assert_eq!(reload(&h), Ok(2));
    let health = self::health(&h).await;
    assert_eq!(health["policy"]["generation"], 2, "{health}");
    assert!(health["policy"]["last_reload_error"].is_null(), "{health}");
    assert_eq!(
        metric(&h, "behalf_policy_reloads_total{outcome=\"ok\"}").await,
        1
    );
    assert_eq!(metric(&h, "behalf_policy_generation").await, 2);
}

/// Server settings apply only at start: a changed behalf.toml is refused, not half-applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_behalf_toml_needs_a_restart() {
    let h = ToolHarness::start().await;
    let path = h.policies.join("behalf.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("dev = true", "dev = false")).unwrap();
    let err = reload(&h).unwrap_err();
    assert!(err.contains("behalf.toml changed"), "{err}");
    assert!(err.contains("restart behalf"), "{err}");
    assert_eq!(health(&h).await["dev"], true);
}

/// A tool added to the tools directory (and granted) is listed and invocable after a reload;
/// one removed is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_reload_with_the_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let tools = tmp.path().join("tools");
    for name in [
        "echo",
        "github_issues",
        "hostile",
        "notes",
        "slack_post",
        "weather",
        "calendar",
    ] {
        copy_dir(&fixture_tools().join(name), &tools.join(name));
    }
    let h = ToolHarness::start_with(ToolConfig {
        tools_dir: Some(tools.clone()),
        ..ToolConfig::default()
    })
    .await;
    assert!(!h.tool_names(&h.alice).await.contains(&"echo2".to_owned()));

    copy_dir(&tools.join("echo"), &tools.join("echo2"));
    std::fs::rename(
        tools.join("echo2/echo.wasm"),
        tools.join("echo2/echo2.wasm"),
    )
    .unwrap();
    edit_file(
        &tools.join("echo2/tool.toml"),
        "name = \"echo\"",
        "name = \"echo2\"",
    );
    edit_file(&tools.join("echo2/tool.toml"), "echo.wasm", "echo2.wasm");
    edit(
        &h,
        "tenants/acme.toml",
        r#"tools = ["echo", "weather", "notes", "calendar"]"#,
        r#"tools = ["echo", "weather", "notes", "calendar", "echo2"]"#,
    );
    assert_eq!(reload(&h), Ok(2));
    assert!(h.tool_names(&h.alice).await.contains(&"echo2".to_owned()));
    let (status, body) = h.invoke(&h.alice, "echo2", json!({"hello": "again"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["output"]["echo"]["hello"], "again", "{body}");
}

fn edit_file(path: &std::path::Path, old: &str, new: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(old), "{} has no `{old}`", path.display());
    std::fs::write(path, text.replace(old, new)).unwrap();
}

/// The watcher notices a changed file and reloads by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_reloads_a_changed_file() {
    let h = ToolHarness::start().await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let watcher = tokio::spawn(h.sidecar.reloader.clone().watch(
        Duration::from_millis(50),
        async move {
            let _ = stopped.await;
        },
    ));
    // Let the watcher take its first fingerprint, then change a file.
    tokio::time::sleep(Duration::from_millis(200)).await;
    edit(
        &h,
        "tenants/globex.toml",
        r#"allow = ["GET /repos/globex/**"]"#,
        r#"allow = ["GET /repos/globex/**", "GET /repos/acme/web/issues"]"#,
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while health(&h).await["policy"]["generation"] != 2 {
        assert!(tokio::time::Instant::now() < deadline, "no reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = h
        .invoke(&h.carol, "github_issues", json!({"repo": "acme/web"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let _ = stop.send(());
    watcher.await.unwrap();
}
