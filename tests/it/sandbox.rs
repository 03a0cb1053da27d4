//! The sandbox against a malicious tool: the `hostile` fixture (`fixtures/tools/hostile`)
//! probing every way out of its sandbox, exhausting every limit, and crowding out other
//! tenants; plus the WASI surface it is given and the freshness of each instance.
//!
//! Every test names the DESIGN.md invariant (or "Tools" rule) it defends.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use behalf::principal::Principal;
use serde_json::{Value, json};

use crate::support::copy_dir;
use crate::support::tools::*;

// === helpers ===

/// alice (acme, engineering), as the host binds her from her token.
fn alice() -> Principal {
    Principal::parse("acme", "alice", &["engineering"]).unwrap()
}

/// A copy of the example tools (each directory with a `tool.toml`, so not the `target` build
/// output) with every manifest's `[limits]` table removed, so that behalf.toml's `[limits]`
/// alone decide. (The shipped manifests ask for up to 64 MiB and 10 s, which is a load error
/// under lower ceilings, by design.)
fn tools_without_manifest_limits(into: &Path) -> PathBuf {
    let tools = into.join("tools");
    for entry in std::fs::read_dir(fixture_tools()).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.join("tool.toml").is_file() {
            continue;
        }
        let to = tools.join(dir.file_name().unwrap());
        copy_dir(&dir, &to);
        let text = std::fs::read_to_string(to.join("tool.toml")).unwrap();
        let mut in_limits = false;
        let kept: Vec<&str> = text
            .lines()
            .filter(|line| {
                let t = line.trim();
                if t.starts_with('[') {
                    in_limits = t == "[limits]";
                }
                !in_limits
            })
            .collect();
        std::fs::write(to.join("tool.toml"), kept.join("\n") + "\n").unwrap();
    }
    tools
}

/// A harness with `limits` as behalf.toml's `[limits]` over [`tools_without_manifest_limits`].
/// The returned directory holds the tools; keep it until the harness is dropped.
async fn start_with_ceilings(limits: &str) -> (ToolHarness, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let tools = tools_without_manifest_limits(tmp.path());
    let h = ToolHarness::start_with(ToolConfig {
        limits: limits.into(),
        tools_dir: Some(tools),
        ..Default::default()
    })
    .await;
    (h, tmp)
}

/// Asserts that none of the seeded secrets appears in `text` (`what` names it).
fn assert_no_canary(text: &str, what: &str) {
    for canary in canaries() {
        assert!(!text.contains(canary), "canary {canary} leaked into {what}");
    }
}

/// The sidecar still answers: `/healthz` is 200 with no instance left running, no staging
/// copy of a state directory is left behind, and an echo invocation as `token` round-trips.
async fn assert_sidecar_healthy(h: &ToolHarness, token: &str) {
    let (status, _, body) = h.request("GET", "/healthz", None, None).await;
    assert_eq!(status, 200, "/healthz: {body}");
    assert_eq!(body["status"], "ok", "/healthz: {body}");
    assert_eq!(body["sandbox_instances_in_use"], 0, "/healthz: {body}");
    assert_no_staging(h);
    let (status, body) = h.invoke(token, "echo", json!({"still": "alive"})).await;
    assert_eq!(status, 200, "echo after the attack: {body}");
    assert_eq!(body["output"], json!({"echo": {"still": "alive"}}));
}

/// No staging copy of a state directory is left behind, whatever the outcome.
fn assert_no_staging(h: &ToolHarness) {
    let staging = h.state.join("tool-state").join(".staging");
    if staging.exists() {
        let left: Vec<_> = std::fs::read_dir(&staging)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(left.is_empty(), "staging leftovers: {left:?}");
    }
}

/// The attempts of a probe report with id `id`, as (target, attempt).
fn attempts<'a>(report: &'a Value, id: &str) -> Vec<(&'a str, &'a Value)> {
    report["attempts"]
        .as_array()
        .expect("a probe report has attempts")
        .iter()
        .filter(|a| a["id"] == id)
        .map(|a| (a["target"].as_str().unwrap(), a))
        .collect()
}

/// The single attempt `id` (asserting there is exactly one).
fn attempt<'a>(report: &'a Value, id: &str) -> &'a Value {
    let found = attempts(report, id);
    assert_eq!(found.len(), 1, "expected one `{id}` attempt: {found:?}");
    found[0].1
}

/// Asserts `a` failed and returns its error string.
fn failed(a: &Value) -> &str {
    assert_eq!(a["succeeded"], false, "this attempt must fail: {a}");
    a["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error string: {a}"))
}

fn is_hex32(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// What a probe may legitimately get: its env, args and cwd, the list of its preopens, and
/// listing its own (empty) state directory. Everything else must fail.
const PROBE_MAY_SUCCEED: &[&str] = &[
    "env.vars std::env::vars",
    "env.args std::env::args",
    "env.cwd std::env::current_dir",
    "fs.preopens wasi:filesystem/preopens",
    "fs.read_dir /state",
];

/// The `wasi:http` requests a probe hands to the host, each of which the egress pipeline must
/// refuse for a `tool:hostile` client (method, URL without query).
const PROBE_DENIALS: &[(&str, &str)] = &[
    ("GET", "https://evil.example/"),
    ("GET", "https://api.github.com.evil.example/user"),
    ("GET", "http://127.0.0.1:7777/v1/tools"),
    ("GET", "http://localhost:7777/v1/tools"),
    ("GET", "http://127.0.0.1:7778/"),
    ("GET", "http://169.254.169.254/latest/meta-data/"),
    ("GET", "https://api.github.com/repos/globex/secret/issues"),
    ("GET", "http://api.github.com/user"),
    ("GET", "https://api.github.com:8443/user"),
    // forged Authorization and identity headers
    ("GET", "https://api.github.com/user"),
    // forged appid on the weather API (granted to tool:weather only)
    ("GET", "https://api.weather.example/data/2.5/weather"),
    ("POST", "https://api.github.com/repos/acme/web/issues"),
    ("POST", "https://evil.example/collect"),
    // one per env var, each value as a bearer token
    ("GET", "https://evil.example/"),
    ("GET", "https://evil.example/"),
    // the env values as Authorization on a granted-looking host
    ("GET", "https://api.github.com/user"),
];

// === 1. the probe ===

/// Invariants 1–3 (no secret in the sandbox; injection scoped to the verified caller; default
/// deny): a malicious tool invoked by alice, who may invoke it, gets nothing it should not.
/// No file outside `/state` can be read or written (`/etc/passwd`, `/proc/self/environ`, `..`
/// climbs out of `/state` towards behalf's keys, symlinks planted in `/state`); no socket can
/// be used (TCP connect and listen, UDP, DNS); every `wasi:http` request to a non-granted
/// host, a look-alike host, the sidecar's own ports, the metadata address, plain http, another
/// port, or to a granted host with forged credentials (alice's `GET /user` grant admits only
/// `tool:github_issues`, never `tool:hostile`) is denied and listed in `denials`, and each
/// denial is audited. The mock upstream is never reached; no canary secret appears in the API
/// response, the tool's stderr or the audit log; the sidecar stays healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_probe_gets_nothing_and_the_sidecar_stays_healthy() {
    let h = ToolHarness::start().await;

    // Through the API.
    let (status, body) = h
        .invoke(&h.alice, "hostile", json!({"mode": "probe"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let report = &body["output"];
    let id = body["invocation"].as_str().unwrap().to_owned();
    assert!(is_hex32(&id), "{id}");
    assert_eq!(report["mode"], "probe", "{body}");

    // Only the expected attempts succeeded.
    assert_eq!(
        report["succeeded"],
        json!(PROBE_MAY_SUCCEED),
        "only env, cwd, the preopen list and /state itself may succeed; full report: {report:#}"
    );
    assert_eq!(attempt(report, "fs.preopens")["result"], json!(["/state"]));

    // Filesystem: nothing outside /state.
    let reads = attempts(report, "fs.read");
    for name in ["/etc/passwd", "/proc/self/environ", "../etc/passwd"] {
        assert!(reads.iter().any(|(t, _)| *t == name), "no read of {name}");
    }
    assert!(
        reads
            .iter()
            .filter(|(t, _)| t.starts_with("/state/../"))
            .count()
            >= 24,
        "the probe climbs out of /state towards master.key etc.: {reads:?}"
    );
    for (target, a) in reads {
        let e = failed(a);
        assert!(
            e.contains("No such file or directory") || e.contains("Operation not permitted"),
            "fs.read {target}: unexpected error {e:?}"
        );
    }
    for (target, a) in attempts(report, "fs.read_dir") {
        if target != "/state" {
            failed(a);
        }
    }
    let writes = attempts(report, "fs.write");
    assert_eq!(writes.len(), 4, "{writes:?}");
    for (_, a) in writes {
        failed(a);
    }
    let links = attempts(report, "fs.symlink");
    assert_eq!(links.len(), 3, "{links:?}");
    for (target, a) in links {
        let e = failed(a);
        // Either the host refused to create the link, or reading through it was refused.
        assert!(
            e.contains("not-permitted") || e.contains("created, but"),
            "fs.symlink {target}: {e:?}"
        );
        assert!(
            !e.contains("root:"),
            "fs.symlink {target} read /etc/passwd: {e}"
        );
    }

    // Sockets: every use refused.
    for id in ["net.tcp_connect", "net.tcp_listen", "net.udp", "net.dns"] {
        let found = attempts(report, id);
        assert!(!found.is_empty(), "no {id} attempt");
        for (target, a) in found {
            let e = failed(a);
            assert!(
                !e.contains("connected") && !e.contains("listening") && !e.contains("sent"),
                "{id} {target}: {e}"
            );
        }
    }

    // wasi:http: every request the host saw was denied; the two with headers the host forbids
    // never left the guest.
    for id in [
        "http.ungranted_host",
        "http.lookalike_host",
        "http.sidecar_api",
        "http.sidecar_proxy",
        "http.metadata",
        "http.ungranted_path",
        "http.plaintext_granted_host",
        "http.other_port",
        "http.forged_credential_and_identity",
        "http.forged_query_credential",
        "http.env_value_as_credential",
        "http.placeholder_misuse",
    ] {
        let found = attempts(report, id);
        assert!(!found.is_empty(), "no {id} attempt");
        for (target, a) in found {
            let e = failed(a);
            assert!(
                e.ends_with("(denied)"),
                "{id} {target}: expected HTTP-request-denied, got {e:?}"
            );
        }
    }
    for id in [
        "http.forged_proxy_authorization",
        "http.host_header_override",
    ] {
        let e = failed(attempt(report, id));
        assert!(
            e.ends_with("(invalid)"),
            "{id}: the host forbids the header: {e:?}"
        );
    }
    // A POST with a body is refused too (the guest sees its body stream closed while writing,
    // since the host dropped the request); the `denials` below show the refusal.
    for id in ["http.forged_post", "http.exfiltrate_env"] {
        failed(attempt(report, id));
    }

    // The response lists every denial.
    let mut got: Vec<(String, String)> = body["denials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            assert_eq!(d["code"], "egress_denied", "{d}");
            (
                d["method"].as_str().unwrap().to_owned(),
                d["url"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut want: Vec<(String, String)> = PROBE_DENIALS
        .iter()
        .map(|(m, u)| (m.to_string(), u.to_string()))
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "denials: {:#}", body["denials"]);
    for d in body["denials"].as_array().unwrap() {
        if d["url"] == "https://api.github.com/user" {
            assert_eq!(
                d["message"], "no grant for service `github` admits client `tool:hostile`",
                "{d}"
            );
        }
    }

    // Nothing reached the mock API, nothing leaked.
    assert!(
        h.upstream.requests().is_empty(),
        "hostile reached the mock upstream: {:?}",
        h.upstream
            .requests()
            .iter()
            .map(|r| r.path().to_owned())
            .collect::<Vec<_>>()
    );
    assert_no_canary(&body.to_string(), "the API response");

    // Every denial is audited as a deny for tool:hostile under this invocation.
    let records = h.audit_records();
    let hostile: Vec<_> = records
        .iter()
        .filter(|r| r.invocation.as_deref() == Some(id.as_str()) && r.method != "INVOKE")
        .collect();
    assert_eq!(hostile.len(), PROBE_DENIALS.len(), "{hostile:#?}");
    for r in &hostile {
        assert_eq!(r.client.as_deref(), Some("tool:hostile"), "{r:?}");
        assert_eq!(r.decision, "deny", "{r:?}");
        assert_eq!(r.tenant.as_deref(), Some("acme"), "{r:?}");
        assert_eq!(r.user.as_deref(), Some("alice"), "{r:?}");
        assert!(
            r.credential.is_none(),
            "a denied request names no credential: {r:?}"
        );
    }

    // In process, for the tool's stderr (which repeats everything it found).
    let inv = h
        .sidecar
        .sandbox
        .invoke(&alice(), "hostile", br#"{"mode":"probe"}"#)
        .await;
    let output = inv.result.as_ref().expect("the probe succeeds");
    assert_eq!(output["succeeded"], json!(PROBE_MAY_SUCCEED));
    let log = String::from_utf8_lossy(&inv.log);
    assert!(log.contains("hostile: mode probe"), "{log}");
    assert!(log.contains("net.tcp_connect"), "{log}");
    assert_no_canary(&log, "the tool's stderr (Invocation.log)");
    assert_no_canary(&output.to_string(), "the tool's output");
    assert_no_canary(&h.audit_text(), "the audit log");
    assert!(h.upstream.requests().is_empty());

    // The probe left nothing behind: no file it tried to write exists anywhere under the
    // harness, and its committed state directory holds no planted link.
    let mut stack = vec![h.tmp.path().to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let kind = entry.file_type().unwrap();
            assert_ne!(entry.file_name(), "hostile-was-here", "{}", path.display());
            assert!(
                !(kind.is_symlink() && entry.file_name().to_string_lossy().starts_with("hostile")),
                "planted link kept: {}",
                path.display()
            );
            if kind.is_dir() {
                stack.push(path);
            }
        }
    }

    assert_sidecar_healthy(&h, &h.alice).await;
    assert_sidecar_healthy(&h, &h.carol).await;
}

// === 2. the WASI surface ===

/// The interfaces `hostile.wasm` imports (a std Rust program for wasm32-wasip2 that uses
/// `std::fs`, `std::net` and `wasi:http`).
const HOSTILE_IMPORTS: &[&str] = &[
    "wasi:cli/environment@0.2.12",
    "wasi:cli/exit@0.2.12",
    "wasi:cli/stderr@0.2.12",
    "wasi:cli/stdin@0.2.12",
    "wasi:cli/stdout@0.2.12",
    "wasi:cli/terminal-input@0.2.12",
    "wasi:cli/terminal-output@0.2.12",
    "wasi:cli/terminal-stderr@0.2.12",
    "wasi:cli/terminal-stdin@0.2.12",
    "wasi:cli/terminal-stdout@0.2.12",
    "wasi:clocks/monotonic-clock@0.2.12",
    "wasi:clocks/wall-clock@0.2.12",
    "wasi:filesystem/preopens@0.2.12",
    "wasi:filesystem/types@0.2.12",
    "wasi:http/outgoing-handler@0.2.12",
    "wasi:http/types@0.2.12",
    "wasi:io/error@0.2.12",
    "wasi:io/poll@0.2.12",
    "wasi:io/streams@0.2.12",
    "wasi:sockets/instance-network@0.2.12",
    "wasi:sockets/ip-name-lookup@0.2.12",
    "wasi:sockets/network@0.2.12",
    "wasi:sockets/tcp-create-socket@0.2.12",
    "wasi:sockets/tcp@0.2.12",
    "wasi:sockets/udp-create-socket@0.2.12",
    "wasi:sockets/udp@0.2.12",
];

/// DESIGN.md "Tools" (the sandbox ABI) and invariant 1: the WASI surface a tool gets is
/// exactly the documented one. `hostile.wasm` imports the interfaces in [`HOSTILE_IMPORTS`]
/// (all of which link), and what each family yields inside the sandbox is:
///
/// | family | interfaces | what the probe got |
/// |---|---|---|
/// | `wasi:cli` env | `environment` | exactly `BEHALF_TOOL=hostile`, `BEHALF_INVOCATION=<32 hex>` (= the invocation id); no `BEHALF_PLACEHOLDER_*` (the shipped policy injects by placeholder nowhere); args `[]`; cwd `/` |
/// | `wasi:cli` stdio | `stdin`, `stdout`, `stderr`, `terminal-*`, `exit` | input JSON in, output JSON out, stderr to `Invocation.log` |
/// | `wasi:clocks`, `wasi:io` | `monotonic-clock`, `wall-clock`, `poll`, `streams`, `error` | available |
/// | `wasi:filesystem` | `preopens`, `types` | preopens exactly `["/state"]`; `/etc/passwd`, `/` → "No such file or directory (os error 44)"; `/state/../…` → "Operation not permitted (os error 63)"; symlinks out of `/state` not created or not followed |
/// | `wasi:sockets` | `network`, `instance-network`, `tcp`, `tcp-create-socket`, `udp`, `udp-create-socket`, `ip-name-lookup` | every use refused: TCP connect/listen and UDP → "Permission denied (os error 2)"; DNS → "failed to lookup address information: Non-recoverable error" |
/// | `wasi:http` | `types`, `outgoing-handler` | only through the egress pipeline: non-granted → `HTTP-request-denied`; forbidden headers (`host`, `proxy-authorization`) → `HeaderError::Forbidden` |
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasi_surface_is_exactly_the_documented_one() {
    let engine = behalf::sandbox::engine(64 << 20).unwrap();
    let component = wasmtime::component::Component::from_file(
        &engine,
        fixture_tools().join("hostile/hostile.wasm"),
    )
    .unwrap();
    let mut imports: Vec<String> = component
        .component_type()
        .imports(&engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    imports.sort();
    assert_eq!(imports, HOSTILE_IMPORTS, "hostile.wasm's imports changed");

    let h = ToolHarness::start().await;
    let inv = h
        .sidecar
        .sandbox
        .invoke(&alice(), "hostile", br#"{"mode":"probe"}"#)
        .await;
    let report = inv.result.as_ref().expect("the probe succeeds");

    // wasi:cli environment: only the documented, non-secret variables.
    let env = &attempt(report, "env.vars")["result"];
    assert_eq!(
        env,
        &json!({"BEHALF_TOOL": "hostile", "BEHALF_INVOCATION": inv.id}),
        "env must hold exactly BEHALF_TOOL and BEHALF_INVOCATION (no placeholders: the shipped \
         policy has no placeholder service)"
    );
    assert!(is_hex32(&inv.id), "{}", inv.id);
    assert!(
        !env.as_object()
            .unwrap()
            .keys()
            .any(|k| k.starts_with("BEHALF_PLACEHOLDER_")),
        "{env}"
    );
    assert_eq!(
        attempt(report, "env.args")["result"],
        json!([]),
        "args must be empty"
    );
    assert_eq!(attempt(report, "env.cwd")["result"], json!("/"));

    // wasi:filesystem: one preopen, /state.
    assert_eq!(attempt(report, "fs.preopens")["result"], json!(["/state"]));
    let etc = failed(
        attempts(report, "fs.read")
            .into_iter()
            .find(|(t, _)| *t == "/etc/passwd")
            .unwrap()
            .1,
    );
    assert_eq!(
        etc, "No such file or directory (os error 44)",
        "/etc/passwd"
    );
    let climb = failed(
        attempts(report, "fs.read")
            .into_iter()
            .find(|(t, _)| *t == "/state/../master.key")
            .unwrap()
            .1,
    );
    assert_eq!(
        climb, "Operation not permitted (os error 63)",
        "/state/../master.key"
    );

    // wasi:sockets: linked, every use refused.
    let mut socket_errors = Vec::new();
    for id in ["net.tcp_connect", "net.tcp_listen", "net.udp", "net.dns"] {
        for (target, a) in attempts(report, id) {
            socket_errors.push(format!("{id} {target}: {}", failed(a)));
        }
    }
    assert_eq!(socket_errors.len(), 7, "{socket_errors:#?}");
    for line in &socket_errors {
        let refused = if line.starts_with("net.dns") {
            line.ends_with(": failed to lookup address information: Non-recoverable error")
        } else {
            line.ends_with(": Permission denied (os error 2)")
        };
        assert!(
            refused,
            "sockets must be refused by the host, not tried: {socket_errors:#?}"
        );
    }

    // wasi:http: only through the pipeline, which denies all of hostile's requests.
    let mut http_errors = Vec::new();
    for a in report["attempts"].as_array().unwrap() {
        if a["id"].as_str().unwrap().starts_with("http.") {
            http_errors.push(format!("{} {}: {}", a["id"], a["target"], failed(a)));
        }
    }
    assert!(
        http_errors
            .iter()
            .filter(|l| l.ends_with("HTTP-request-denied (denied)"))
            .count()
            >= 12,
        "{http_errors:#?}"
    );
    assert_eq!(inv.denials.len(), PROBE_DENIALS.len(), "{:#?}", inv.denials);
    assert!(h.upstream.requests().is_empty());
}

// === 3. limits ===

/// Limits (DESIGN.md "Tools"; error table `tool_timeout`) and invariant 6: a tool that spins
/// forever is stopped at its deadline and reported as 504 `tool_timeout`, promptly, and the
/// sidecar keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinning_tool_is_stopped_at_its_deadline() {
    let (h, _tools) = start_with_ceilings("tool_timeout = \"1s\"\n").await;
    let started = Instant::now();
    let (status, body) = h.invoke(&h.alice, "hostile", json!({"mode": "loop"})).await;
    let took = started.elapsed();
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["code"], "tool_timeout", "{body}");
    assert!(
        took >= Duration::from_millis(950),
        "stopped too early: {took:?}"
    );
    assert!(
        took < Duration::from_millis(2500),
        "not stopped within timeout+~1s: {took:?}"
    );
    assert_sidecar_healthy(&h, &h.alice).await;
}

/// Limits (DESIGN.md "Tools"; error table `tool_failed`, "limit hit (named)"): a tool that
/// allocates without bound is trapped at `tool_memory` and the error names the memory limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allocating_tool_is_trapped_at_its_memory_limit() {
    let (h, _tools) = start_with_ceilings("tool_memory = \"16MiB\"\n").await;
    let started = Instant::now();
    let (status, body) = h
        .invoke(&h.alice, "hostile", json!({"mode": "alloc"}))
        .await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "tool_failed", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("memory limit"), "{message}");
    assert!(message.contains("memory limit of 16"), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_sidecar_healthy(&h, &h.alice).await;
}

/// Limits (error table `tool_failed`, "oversized output"): a tool printing 8 MiB to stdout
/// is stopped at `tool_output` (1 MiB by default); the error names the output limit and the
/// response is quick and small (none of the output is forwarded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_past_its_cap_fails_the_tool_quickly() {
    let h = ToolHarness::start().await;
    let started = Instant::now();
    let (status, _, body) = h
        .request(
            "POST",
            "/v1/tools/hostile/invoke",
            Some(&h.alice),
            Some(br#"{"mode":"spew","mb":8}"#.to_vec()),
        )
        .await;
    let took = started.elapsed();
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "tool_failed", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("output exceeded the limit of 1048576 bytes"),
        "{message}"
    );
    assert!(
        body.to_string().len() < 4096,
        "the response must be small: {} bytes",
        body.to_string().len()
    );
    assert!(!body.to_string().contains("AAAA"), "no output is forwarded");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_sidecar_healthy(&h, &h.alice).await;
}

/// Limits (`tool_log`): a tool flooding stderr cannot grow behalf's memory or log: the kept
/// stderr (`Invocation.log`) is at most the cap, and the sidecar is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stderr_past_its_cap_is_truncated() {
    const CAP: usize = 16 << 10;
    let h = ToolHarness::start_with(ToolConfig {
        limits: "tool_log = \"16KiB\"\n".into(),
        ..Default::default()
    })
    .await;
    let started = Instant::now();
    let inv = h
        .sidecar
        .sandbox
        .invoke(&alice(), "hostile", br#"{"mode":"spew_stderr","mb":4}"#)
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        inv.log.len() <= CAP,
        "kept {} bytes of stderr, cap {CAP}",
        inv.log.len()
    );
    assert!(
        inv.log.starts_with(b"hostile: mode spew_stderr\n"),
        "{:?}",
        &inv.log[..64.min(inv.log.len())]
    );
    // Either outcome is acceptable (spew_stderr prints no JSON), but it is a tool result, not
    // a sidecar fault.
    if let Err(e) = &inv.result {
        assert_eq!(e.code(), "tool_failed", "{e}");
    }
    assert_sidecar_healthy(&h, &h.alice).await;
}

/// Limits (`tool_state_quota`; error table `tool_failed` naming the quota) and invariant 6
/// ("loses nothing"): a tool filling its state directory fails naming the state directory
/// quota; nothing it wrote is kept, what was there before is intact, and no staging copy is
/// left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filling_the_state_directory_hits_the_quota_and_keeps_nothing() {
    let h = ToolHarness::start_with(ToolConfig {
        limits: "tool_state_quota = \"2MiB\"\n".into(),
        ..Default::default()
    })
    .await;
    let dir = h.tool_state("acme", "alice", "hostile");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("kept-before"), b"from an earlier invocation").unwrap();

    let (status, body) = h
        .invoke(&h.alice, "hostile", json!({"mode": "fill_state", "mb": 64}))
        .await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "tool_failed", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("state directory quota"), "{message}");

    // The directory is as it was: the earlier file, nothing from this invocation.
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["kept-before"],
        "nothing this invocation wrote may be kept"
    );
    assert_eq!(
        std::fs::read(dir.join("kept-before")).unwrap(),
        b"from an earlier invocation"
    );
    let used: u64 = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(used <= 2 << 20, "{used}");
    assert_no_staging(&h);
    assert_sidecar_healthy(&h, &h.alice).await;
}

// === 4. per-tenant concurrency ===

/// Limits (`tool_concurrency_per_tenant`; error table `rate_limited` with `Retry-After`): one
/// tenant's slow tool fills only that tenant's slots: another acme invocation gets 429 with
/// `Retry-After` while globex is served at the same time, and acme can invoke again once the
/// slow tool has been stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenant_cannot_starve_another() {
    let (h, _tools) =
        start_with_ceilings("tool_concurrency_per_tenant = 1\ntool_timeout = \"2s\"\n").await;
    let slow = h.invoke(&h.alice, "hostile", json!({"mode": "loop"}));
    let others = async {
        let waiting = Instant::now();
        while h.sidecar.sandbox.in_use() == 0 {
            assert!(
                waiting.elapsed() < Duration::from_secs(2),
                "the loop never started"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (status, headers, body) = h
            .request(
                "POST",
                "/v1/tools/echo/invoke",
                Some(&h.bob),
                Some(br#"{"n":1}"#.to_vec()),
            )
            .await;
        assert_eq!(status, 429, "{body}");
        assert_eq!(body["error"]["code"], "rate_limited", "{body}");
        let retry = headers.get("retry-after").expect("429 carries Retry-After");
        assert!(retry.to_str().unwrap().parse::<u64>().is_ok(), "{retry:?}");

        let started = Instant::now();
        let (status, body) = h.invoke(&h.carol, "echo", json!({"n": 2})).await;
        assert_eq!(status, 200, "globex is not starved by acme: {body}");
        assert_eq!(body["output"], json!({"echo": {"n": 2}}));
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            h.sidecar.sandbox.in_use(),
            1,
            "acme's loop is still running meanwhile"
        );
    };
    let ((status, body), ()) = tokio::join!(slow, others);
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["code"], "tool_timeout", "{body}");

    let (status, body) = h.invoke(&h.bob, "echo", json!({"n": 3})).await;
    assert_eq!(status, 200, "acme's slot is free again: {body}");
    assert_eq!(body["output"], json!({"echo": {"n": 3}}));
    assert_no_staging(&h);
}

// === 5. fresh instances ===

/// DESIGN.md "Tools" ("each invocation gets a fresh Store and instance") and invariant 2:
/// nothing carries over between invocations but a tool's own state directory for the same
/// (tenant, user): invocation ids differ, a tool sees only its own id, and notes kept by alice
/// are invisible to bob and to globex's carol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invocation_is_a_fresh_instance() {
    let h = ToolHarness::start().await;

    let (s1, echo1) = h.invoke(&h.alice, "echo", json!({"first": true})).await;
    let (s2, echo2) = h.invoke(&h.alice, "echo", json!({"second": true})).await;
    assert_eq!((s1.as_u16(), s2.as_u16()), (200, 200), "{echo1} {echo2}");
    assert_eq!(echo1["output"], json!({"echo": {"first": true}}));
    assert_eq!(echo2["output"], json!({"echo": {"second": true}}));

    let p1 = h
        .sidecar
        .sandbox
        .invoke(&alice(), "hostile", br#"{"mode":"probe"}"#)
        .await;
    let p2 = h
        .sidecar
        .sandbox
        .invoke(&alice(), "hostile", br#"{"mode":"probe"}"#)
        .await;
    let (r1, r2) = (p1.result.as_ref().unwrap(), p2.result.as_ref().unwrap());
    assert_eq!(
        attempt(r1, "env.vars")["result"]["BEHALF_INVOCATION"],
        p1.id.as_str()
    );
    assert_eq!(
        attempt(r2, "env.vars")["result"]["BEHALF_INVOCATION"],
        p2.id.as_str()
    );
    assert_eq!(
        attempts(r2, "fs.read_dir")
            .into_iter()
            .find(|(t, _)| *t == "/state")
            .unwrap()
            .1["result"],
        json!([]),
        "links the first probe planted in /state are not carried over"
    );
    assert!(
        !r2.to_string().contains(&p1.id),
        "the second probe saw the first's id"
    );
    assert!(
        !String::from_utf8_lossy(&p2.log).contains(&p1.id),
        "stderr carried over"
    );
    assert_eq!(
        p2.denials.len(),
        PROBE_DENIALS.len(),
        "denials are per invocation"
    );
    assert_eq!(
        String::from_utf8_lossy(&p2.log)
            .matches("hostile: mode probe")
            .count(),
        1,
        "stderr of one invocation only"
    );

    let (s, put) = h
        .invoke(
            &h.alice,
            "notes",
            json!({"action": "put", "key": "k", "value": "alice's"}),
        )
        .await;
    assert_eq!(s, 200, "{put}");
    let (s, got) = h
        .invoke(&h.alice, "notes", json!({"action": "get", "key": "k"}))
        .await;
    assert_eq!(s, 200, "{got}");
    assert_eq!(
        got["output"],
        json!({"key": "k", "found": true, "value": "alice's"})
    );
    for token in [&h.bob, &h.carol] {
        let (s, other) = h
            .invoke(token, "notes", json!({"action": "get", "key": "k"}))
            .await;
        assert_eq!(s, 200, "{other}");
        assert_eq!(
            other["output"]["found"], false,
            "another user's notes: {other}"
        );
    }

    let mut ids: Vec<String> = [&echo1, &echo2, &put, &got]
        .iter()
        .map(|b| b["invocation"].as_str().unwrap().to_owned())
        .chain([p1.id.clone(), p2.id.clone()])
        .collect();
    assert!(ids.iter().all(|i| is_hex32(i)), "{ids:?}");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 6, "invocation ids must differ: {ids:?}");
}

/// DESIGN.md "Tools" (env holds "per-invocation random placeholders for services that inject
/// by placeholder") and invariant 1: when a service injects by placeholder, the tool sees
/// `BEHALF_PLACEHOLDER_<SERVICE>` holding a fresh random value per invocation, never the
/// credential; sent anywhere the pipeline does not swap it (another host, a granted-looking
/// host) it is denied, and no canary appears anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placeholders_are_fresh_random_and_not_credentials() {
    let h = ToolHarness::start_with(ToolConfig {
        extra_services: vec![(
            "vault".into(),
            r#"[service]
name = "vault"
origins = ["https://vault.example"]
credential = { name = "github_token", scope = "user" }
inject = { placeholder = { header = "Authorization", template = "Bearer {placeholder}" } }
"#
            .into(),
        )],
        ..Default::default()
    })
    .await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        let inv = h
            .sidecar
            .sandbox
            .invoke(&alice(), "hostile", br#"{"mode":"probe"}"#)
            .await;
        let report = inv.result.as_ref().expect("the probe succeeds");
        let env = attempt(report, "env.vars")["result"]
            .as_object()
            .unwrap()
            .clone();
        let mut keys: Vec<&str> = env.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "BEHALF_INVOCATION",
                "BEHALF_PLACEHOLDER_VAULT",
                "BEHALF_TOOL"
            ],
            "{env:?}"
        );
        let placeholder = env["BEHALF_PLACEHOLDER_VAULT"].as_str().unwrap().to_owned();
        let random = placeholder
            .strip_prefix("behalf-placeholder-")
            .unwrap_or_else(|| panic!("{placeholder}"));
        assert!(is_hex32(random), "{placeholder}");
        assert_eq!(report["succeeded"], json!(PROBE_MAY_SUCCEED), "{report:#}");
        // One more env var, so one more `env_value_as_credential` request, also denied.
        assert_eq!(
            inv.denials.len(),
            PROBE_DENIALS.len() + 1,
            "{:#?}",
            inv.denials
        );
        for (target, a) in attempts(report, "http.env_value_as_credential")
            .into_iter()
            .chain(attempts(report, "http.placeholder_misuse"))
        {
            assert!(failed(a).ends_with("(denied)"), "{target}: {a}");
        }
        assert_no_canary(&report.to_string(), "the tool's output");
        assert_no_canary(&String::from_utf8_lossy(&inv.log), "the tool's stderr");
        seen.push(placeholder);
    }
    assert_ne!(seen[0], seen[1], "placeholders are per invocation");
    assert!(h.upstream.requests().is_empty());
    assert_no_canary(&h.audit_text(), "the audit log");
}

/// Error table (`tool_failed`: "limit hit (named)", "oversized output"; `egress_denied`: "the
/// tool exited non-zero after a denial"): a limit hit stays a named `tool_failed` even when
/// the tool made denied requests before hitting it. Here the probe (16 denied requests, then
/// a ~30 KB report) runs with `tool_output = "4KiB"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_hit_after_a_denial_is_still_named() {
    let h = ToolHarness::start_with(ToolConfig {
        limits: "tool_output = \"4KiB\"\n".into(),
        ..Default::default()
    })
    .await;
    let (status, body) = h
        .invoke(&h.alice, "hostile", json!({"mode": "probe"}))
        .await;
    assert_eq!(
        body["denials"].as_array().map(Vec::len),
        Some(PROBE_DENIALS.len()),
        "{body}"
    );
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "tool_failed", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("output exceeded the limit of 4096 bytes"),
        "{message}"
    );
}
