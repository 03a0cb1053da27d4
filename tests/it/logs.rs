//! `BEHALF_LOG_FORMAT`: `text` (the default) or `json`, one JSON object per log line on stderr
//! (the startup banner and `error:` lines stay plain text); anything else is a usage error.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::raw_exchange;

/// `behalf --policies P --state S ARGS`, with no log settings inherited from the environment.
fn behalf(policies: &Path, state: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_behalf"));
    c.arg("--policies")
        .arg(policies)
        .arg("--state")
        .arg(state)
        .args(args)
        .env_remove("BEHALF_LOG")
        .env_remove("BEHALF_LOG_FORMAT");
    c
}

#[test]
fn an_unknown_log_format_is_a_usage_error_naming_the_allowed_values() {
    let tmp = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for bad in ["xml", "JSON", "json "] {
        let out = behalf(
            &root.join("policies"),
            &tmp.path().join("state"),
            &["policy", "check"],
        )
        .env("BEHALF_LOG_FORMAT", bad)
        .output()
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {stderr}");
        for needle in ["BEHALF_LOG_FORMAT", "`text`", "`json`"] {
            assert!(stderr.contains(needle), "{bad:?}: {stderr}");
        }
        assert!(out.stdout.is_empty(), "nothing ran for {bad:?}");
    }
    for good in ["", "text", "json"] {
        let out = behalf(
            &root.join("policies"),
            &tmp.path().join("state"),
            &["policy", "check"],
        )
        .env("BEHALF_LOG_FORMAT", good)
        .output()
        .unwrap();
        assert_eq!(out.status.code(), Some(0), "{good:?}: {out:?}");
    }
}

/// `serve` with `BEHALF_LOG_FORMAT=json`: every log line is a JSON object (timestamp, level,
/// target, fields), no line is a text-format log line, and a tool's stderr line is logged
/// with its invocation id as a field, the same id the API returned.
#[tokio::test]
async fn json_logs_are_one_object_per_line_with_the_invocation_as_a_field() {
    let tmp = tempfile::tempdir().unwrap();
    let policies = tmp.path().join("policies");
    let tools = tmp.path().join("tools");
    let state = tmp.path().join("state");
    // One tool that writes a stderr line (`notes`), from the repository's example tools.
    let notes = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tools/notes");
    std::fs::create_dir_all(tools.join("notes")).unwrap();
    for file in ["tool.toml", "notes.wasm"] {
        std::fs::copy(notes.join(file), tools.join("notes").join(file)).unwrap();
    }
    for (file, text) in [
        (
            "behalf.toml".to_owned(),
            format!(
                "dev = true\ntools_dir = {:?}\n",
                tools.display().to_string()
            ),
        ),
        (
            "tenants/acme.toml".to_owned(),
            "[tenant]\nname = \"acme\"\n\n[[tool_access]]\nwho = [\"*\"]\ntools = [\"notes\"]\n"
                .to_owned(),
        ),
    ] {
        let path = policies.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    // The compiled-component cache the other tests share, so the tool is compiled once.
    behalf::state::StateDir::open(&state).unwrap();
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("behalf-component-cache");
    std::fs::create_dir_all(&cache).unwrap();
    std::os::unix::fs::symlink(&cache, state.join("cache")).unwrap();

    let token = behalf(
        &policies,
        &state,
        &["token", "mint", "--tenant", "acme", "--user", "alice"],
    )
    .output()
    .unwrap();
    assert!(token.status.success(), "{token:?}");
    let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();

    let mut child = behalf(
        &policies,
        &state,
        &["serve", "--api", "127.0.0.1:0", "--proxy", "127.0.0.1:0"],
    )
    .env("BEHALF_LOG_FORMAT", "json")
    .env("BEHALF_LOG", "info")
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // Every stderr line, as it comes, so the test can wait for one without blocking forever.
    let (tx, rx) = mpsc::channel::<String>();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen: Vec<String> = Vec::new();
    let next_line = |seen: &mut Vec<String>, deadline: Instant| -> Option<String> {
        let left = deadline.checked_duration_since(Instant::now())?;
        let line = rx.recv_timeout(left).ok()?;
        seen.push(line.clone());
        Some(line)
    };

    let deadline = Instant::now() + Duration::from_secs(60);
    let api = loop {
        let Some(line) = next_line(&mut seen, deadline) else {
            let _ = child.kill();
            panic!("no banner from serve:\n{}", seen.join("\n"));
        };
        if let Some(rest) = line.trim().strip_prefix("API           http://") {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    let body = r#"{"action": "put", "key": "k", "value": "v"}"#;
    let request = format!(
        "POST /v1/tools/notes/invoke HTTP/1.1\r\nHost: behalf\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let resp = raw_exchange(api.parse().unwrap(), request.as_bytes()).await;
    let json: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
    if resp.status != 200 {
        let _ = child.kill();
        panic!("invoke: {} {json}\n{}", resp.status, seen.join("\n"));
    }
    let invocation = json["invocation"].as_str().unwrap().to_owned();

    // The tool's stderr line, logged with the invocation id.
    let is_tool_line = |v: &Value| {
        v["target"] == "behalf::tool" && v["fields"]["invocation"] == invocation.as_str()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let tool_line = loop {
        let Some(line) = next_line(&mut seen, deadline) else {
            break None;
        };
        if let Ok(v) = serde_json::from_str::<Value>(&line)
            && is_tool_line(&v)
        {
            break Some(v);
        }
    };
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve did not stop on SIGTERM:\n{}", seen.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    while let Some(_line) = next_line(&mut seen, Instant::now() + Duration::from_secs(2)) {}
    let all = seen.join("\n");
    assert_eq!(exit.code(), Some(0), "{all}");

    let tool_line =
        tool_line.unwrap_or_else(|| panic!("no JSON log line for invocation {invocation}:\n{all}"));
    assert_eq!(tool_line["level"], "INFO", "{tool_line}");
    assert_eq!(tool_line["fields"]["tool"], "notes", "{tool_line}");
    assert!(
        tool_line["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("put k")),
        "{tool_line}"
    );

    // Log lines are JSON objects with the usual keys; the rest is the plain-text banner and
    // the final `behalf: stopped`, never a text-format log line (those start with a
    // timestamp).
    let mut logs = 0;
    for line in &seen {
        if line.starts_with('{') {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {line}\n{all}"));
            for key in ["timestamp", "level", "target"] {
                assert!(v[key].is_string(), "no {key}: {line}");
            }
            assert!(v["fields"].is_object(), "no fields: {line}");
            logs += 1;
        } else {
            assert!(
                !line.starts_with(|c: char| c.is_ascii_digit()),
                "a text-format log line: {line}\n{all}"
            );
            assert!(!line.contains(&token), "the identity token is on stderr");
        }
    }
    assert!(logs >= 1, "{all}");
    assert!(seen.iter().any(|l| l == "behalf: stopped"), "{all}");
    assert!(!all.contains(&token), "the identity token is in the log");
}
