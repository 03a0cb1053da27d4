//! `docs/integrating.md`, run for real. Its code blocks are the files in `docs/examples/`, byte
//! for byte; the Python and Node agent loops run as subprocesses against a sidecar API with a
//! stub model (which prints the tools it was offered, asks for tool calls that succeed, are
//! denied, are invalid and do not exist, then answers from the results), for two users in one
//! process; and the forward-proxy example runs a child program that reaches an HTTPS API
//! through behalf trusting only behalf's CA. The mock upstream shows that each user's own
//! credential was injected and that nothing else left.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use behalf::proxy::ca::{CA_DIR, CERT_FILE};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::support::tools::{T_ALICE_GITHUB, T_BOB_GITHUB, ToolHarness, canaries};

/// The example files and the language tag of their code block in the doc.
const EXAMPLES: &[(&str, &str)] = &[
    ("docs/examples/agent.py", "python"),
    ("docs/examples/agent.mjs", "js"),
    ("docs/examples/proxy_subprocess.py", "python"),
];

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn examples_dir() -> PathBuf {
    repo_root().join("docs/examples")
}

/// A finished subprocess.
#[derive(Debug)]
struct Run {
    /// The exit code; `None` if it was killed (by the deadline or a signal).
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The text after `prefix` on the line that starts with it (panics if there is none).
    fn line(&self, prefix: &str) -> &str {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no line starting with {prefix:?}: {self:#?}"))
    }
}

/// A command for `program` with an empty environment but `PATH` (no proxy settings, no CA
/// bundles, no `NODE_OPTIONS` leak in from the test's environment), run in the repository.
fn command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(repo_root());
    cmd
}

/// Runs `cmd` to completion off the async runtime (the sidecar is served on it), killing it
/// after 60 s.
async fn run(mut cmd: Command) -> Run {
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
        cmd.stdin(Stdio::null())
            .stdout(File::create(&out).unwrap())
            .stderr(File::create(&err).unwrap());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(60);
        let code = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Run {
            code,
            stdout: std::fs::read_to_string(&out).unwrap(),
            stderr: std::fs::read_to_string(&err).unwrap(),
        }
    })
    .await
    .unwrap()
}

fn node_available() -> bool {
    Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The stub model for `agent.py`: on the first call it prints the tool names it was offered
/// and asks for four calls; on the second it prints the results and answers from them.
const PY_STUB: &str = r#"
import json, os, sys
sys.path.insert(0, os.environ["EXAMPLES"])
from agent import run_agent

class StubModel:
    def __init__(self, who):
        self.who = who

    def complete(self, messages, tools):
        if len(messages) == 1:
            assert all(t["type"] == "function" and t["function"]["parameters"]["type"] == "object"
                       for t in tools), tools
            print(f"tools[{self.who}]:", " ".join(sorted(t["function"]["name"] for t in tools)))
            return {"tool_calls": [
                {"id": "c1", "name": "github_issues", "arguments": {"repo": "acme/web"}},
                {"id": "c2", "name": "github_issues", "arguments": {"repo": "globex/web"}},
                {"id": "c3", "name": "github_issues", "arguments": {"repo": "acme web"}},
                {"id": "c4", "name": "delete_everything", "arguments": {}},
            ]}
        r = {m["tool_call_id"]: json.loads(m["content"]) for m in messages if m["role"] == "tool"}
        print(f"results[{self.who}]:", json.dumps(r))
        return {"text": f"acme/web: upstream status {r['c1']['output']['status']}; "
                        f"globex/web: {r['c2']['error']['code']} ({len(r['c2']['denials'])} denied); "
                        f"'acme web': {r['c3']['error']['code']}; "
                        f"delete_everything: {r['c4']['error']['code']}"}

for who in ("alice", "bob"):
    token = os.environ["TOKEN_" + who.upper()]  # each user's own token, for their turn only
    answer = run_agent(os.environ["BEHALF_URL"], token, "What is open in acme/web?",
                       StubModel(who))
    print(f"answer[{who}]:", answer)
"#;

/// The same stub for `agent.mjs`, over the Anthropic-shaped tool list.
const JS_STUB: &str = r#"
import { pathToFileURL } from "node:url";
const { runAgent } = await import(pathToFileURL(`${process.env.EXAMPLES}/agent.mjs`).href);

function stubModel(who) {
  return {
    async complete(messages, tools) {
      if (messages.length === 1) {
        for (const t of tools) {
          if (t.input_schema?.type !== "object" || "function" in t) throw new Error(JSON.stringify(t));
        }
        console.log(`tools[${who}]:`, tools.map((t) => t.name).sort().join(" "));
        return { tool_calls: [
          { id: "c1", name: "github_issues", arguments: { repo: "acme/web" } },
          { id: "c2", name: "github_issues", arguments: { repo: "globex/web" } },
          { id: "c3", name: "github_issues", arguments: { repo: "acme web" } },
          { id: "c4", name: "delete_everything", arguments: {} },
        ] };
      }
      const r = Object.fromEntries(messages.filter((m) => m.role === "tool")
        .map((m) => [m.tool_call_id, JSON.parse(m.content)]));
      console.log(`results[${who}]:`, JSON.stringify(r));
      return { text: `acme/web: upstream status ${r.c1.output.status}; `
        + `globex/web: ${r.c2.error.code} (${r.c2.denials.length} denied); `
        + `'acme web': ${r.c3.error.code}; delete_everything: ${r.c4.error.code}` };
    },
  };
}

for (const who of ["alice", "bob"]) {
  const token = process.env[`TOKEN_${who.toUpperCase()}`]; // this user's token, this turn only
  const answer = await runAgent(process.env.BEHALF_URL, token, "What is open in acme/web?",
                                stubModel(who), { anthropic: true });
  console.log(`answer[${who}]:`, answer);
}
"#;

/// Runs an agent example with its stub for alice then bob, and checks what it printed and
/// what reached the mock GitHub.
async fn check_agent(h: &ToolHarness, mut cmd: Command) {
    cmd.env("EXAMPLES", examples_dir())
        .env("BEHALF_URL", format!("http://{}", h.api_addr))
        .env("TOKEN_ALICE", &h.alice)
        .env("TOKEN_BOB", &h.bob);
    let started = Instant::now();
    let run = run(cmd).await;
    eprintln!(
        "agent run took {:?}\n{}{}",
        started.elapsed(),
        run.stdout,
        run.stderr
    );
    assert_eq!(run.code, Some(0), "{run:#?}");

    for who in ["alice", "bob"] {
        let token = if who == "alice" { &h.alice } else { &h.bob };
        // The stub was offered exactly the tools GET /v1/tools lists for this user.
        assert_eq!(
            run.line(&format!("tools[{who}]: ")),
            h.tool_names(token).await.join(" "),
            "{run:#?}"
        );
        assert!(
            run.line(&format!("tools[{who}]: "))
                .split(' ')
                .any(|t| t == "github_issues"),
            "{run:#?}"
        );
        // The model's answer was built from the fed-back results and error bodies.
        assert_eq!(
            run.line(&format!("answer[{who}]: ")),
            "acme/web: upstream status 200; globex/web: egress_denied (1 denied); \
             'acme web': invalid_input; delete_everything: unknown_tool",
            "{run:#?}"
        );
    }

    // Exactly one request per user left: alice's then bob's, each with their own credential.
    let seen = h.upstream.requests();
    let got: Vec<(String, String, Vec<String>)> = seen
        .iter()
        .map(|r| {
            (
                r.method.clone(),
                r.target.clone(),
                r.header("authorization"),
            )
        })
        .collect();
    let want = |secret: &str| {
        (
            "GET".to_owned(),
            "/repos/acme/web/issues".to_owned(),
            vec![format!("Bearer {secret}")],
        )
    };
    assert_eq!(got, [want(T_ALICE_GITHUB), want(T_BOB_GITHUB)]);

    // No credential reached the agent, not even inside the echoed request.
    for canary in canaries() {
        assert!(!run.stdout.contains(canary), "{canary} in {run:#?}");
        assert!(!run.stderr.contains(canary), "{canary} in {run:#?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn python_agent_lists_and_invokes_tools_as_each_user() {
    let h = ToolHarness::start().await;
    let mut cmd = command("python3");
    cmd.args(["-c", PY_STUB]);
    check_agent(&h, cmd).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn node_agent_lists_and_invokes_tools_as_each_user() {
    if !node_available() {
        eprintln!(
            "SKIPPED node_agent_lists_and_invokes_tools_as_each_user: `node` is not on PATH \
             (install Node.js 20+ to run docs/examples/agent.mjs)"
        );
        return;
    }
    let h = ToolHarness::start().await;
    let mut cmd = command("node");
    cmd.args(["--input-type=module", "-e", JS_STUB]);
    check_agent(&h, cmd).await;
}

/// Aborts the proxy's task when the test ends.
struct Serving(JoinHandle<()>);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_example_runs_a_program_as_each_user_through_behalf() {
    let h = ToolHarness::start().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = listener.local_addr().unwrap();
    let _serving = Serving(tokio::spawn(h.sidecar.proxy().serve(
        listener,
        64,
        std::future::pending(),
    )));
    let ca_pem = h.state.join(CA_DIR).join(CERT_FILE);
    assert!(ca_pem.is_file(), "{}", ca_pem.display());

    // The child is an ordinary Python program using urllib: the proxy and the CA come from
    // the environment run_for_user gives it.
    let script = r#"
import os, sys
sys.path.insert(0, os.environ["EXAMPLES"])
from proxy_subprocess import run_for_user

child = [sys.executable, "-c", "import urllib.request; print(urllib.request.urlopen("
         "'https://api.github.com/repos/acme/web/issues', timeout=30).status)"]
for who in ("alice", "bob"):
    done = run_for_user(child, os.environ["TOKEN_" + who.upper()], os.environ["CA_PEM"],
                        proxy=os.environ["PROXY"])
    print(f"{who}: {done.stdout.strip()}")
"#;
    let mut cmd = command("python3");
    cmd.args(["-c", script])
        .env("EXAMPLES", examples_dir())
        .env("PROXY", proxy_addr.to_string())
        .env("CA_PEM", &ca_pem)
        .env("TOKEN_ALICE", &h.alice)
        .env("TOKEN_BOB", &h.bob);
    let run = run(cmd).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!(run.line("alice: "), "200", "{run:#?}");
    assert_eq!(run.line("bob: "), "200", "{run:#?}");

    let seen = h.upstream.requests();
    let got: Vec<(String, String, Vec<String>, Option<String>)> = seen
        .iter()
        .map(|r| {
            (
                r.method.clone(),
                r.target.clone(),
                r.header("authorization"),
                r.sni.clone(),
            )
        })
        .collect();
    let want = |secret: &str| {
        (
            "GET".to_owned(),
            "/repos/acme/web/issues".to_owned(),
            vec![format!("Bearer {secret}")],
            Some("api.github.com".to_owned()),
        )
    };
    assert_eq!(got, [want(T_ALICE_GITHUB), want(T_BOB_GITHUB)]);
    for r in &seen {
        assert!(r.header("proxy-authorization").is_empty(), "{r:#?}");
    }
}

/// The fenced block after each `<!-- example: PATH -->` line of the doc.
fn doc_blocks(doc: &str) -> Vec<(String, String, String)> {
    let mut blocks = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(path) = line
            .strip_prefix("<!-- example: ")
            .and_then(|rest| rest.strip_suffix(" -->"))
        else {
            continue;
        };
        let fence = lines.next().unwrap_or_default();
        let lang = fence
            .strip_prefix("```")
            .unwrap_or_else(|| panic!("`{line}` must be followed by a code fence, not {fence:?}"));
        let mut code = String::new();
        for l in lines.by_ref() {
            if l == "```" {
                break;
            }
            code.push_str(l);
            code.push('\n');
        }
        blocks.push((path.to_owned(), lang.to_owned(), code));
    }
    blocks
}

#[test]
fn the_docs_code_blocks_are_the_example_files() {
    let doc = std::fs::read_to_string(repo_root().join("docs/integrating.md")).unwrap();
    let blocks = doc_blocks(&doc);
    let paths: Vec<&str> = blocks.iter().map(|(p, _, _)| p.as_str()).collect();
    let want: Vec<&str> = EXAMPLES.iter().map(|(p, _)| *p).collect();
    assert_eq!(
        paths, want,
        "docs/integrating.md must include each example once"
    );
    for ((path, lang, code), (_, want_lang)) in blocks.iter().zip(EXAMPLES) {
        assert_eq!(lang, want_lang, "{path}'s code fence");
        let file = std::fs::read_to_string(repo_root().join(path)).unwrap();
        if *code != file {
            let first = code
                .lines()
                .zip(file.lines())
                .position(|(a, b)| a != b)
                .unwrap_or(code.lines().count().min(file.lines().count()));
            panic!(
                "docs/integrating.md's block for {path} differs from the file at line {}; \
                 copy the file into the doc",
                first + 1
            );
        }
    }
    // README links the doc.
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    assert!(readme.contains("(docs/integrating.md)"));
}
