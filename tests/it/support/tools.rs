//! A harness for the sandbox and the sidecar API: the shipped example policies (with the real
//! looking origins the example tools call) plus per-test additions, the example tools from
//! `fixtures/tools` (so `.ci/run`'s rebuilt components are the ones tested), a TLS mock API
//! with a test CA behind `https://api.github.com`, `https://slack.com` and
//! `https://api.weather.example` (through `--connect-to`), seeded canary secrets, and the API
//! served on port 0.
//!
//! ```ignore
//! let h = ToolHarness::start().await;
//! let (status, body) = h.invoke(&h.alice, "github_issues", json!({"repo": "acme/web"})).await;
//! assert_eq!(status, 200);
//! assert_eq!(h.upstream.only().header("authorization"), [format!("Bearer {T_ALICE_GITHUB}")]);
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use behalf::policy::Origin;
use behalf::secrets::{self, Secret, SecretId};
use behalf::serve::{Options, Sidecar};
use behalf::state::StateDir;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{MockUpstream, TestCa, TestResolver, copy_dir, mint, write};

/// alice's (acme, engineering) GitHub token.
pub const T_ALICE_GITHUB: &str = "canary-gh-alice-7f3a9c";
/// bob's (acme, engineering) GitHub token.
pub const T_BOB_GITHUB: &str = "canary-gh-bob-2b8e41";
/// carol's (globex) GitHub token.
pub const T_CAROL_GITHUB: &str = "canary-gh-carol-c05d77";
/// dave's (acme, support) GitHub token.
pub const T_DAVE_GITHUB: &str = "canary-gh-dave-d4e5f6";
/// acme's Slack bot token (tenant scope).
pub const T_ACME_SLACK: &str = "canary-xoxb-acme-91af02";
/// globex's Slack bot token (tenant scope).
pub const T_GLOBEX_SLACK: &str = "canary-xoxb-globex-5c6d13";
/// acme's weather API key (query injection).
pub const T_ACME_WEATHER: &str = "canary-wx-acme-e1e2e3";

/// Every seeded secret, by `TENANT/[USER/]NAME`.
pub const T_SEEDS: &[(&str, &str)] = &[
    ("acme/alice/github_token", T_ALICE_GITHUB),
    ("acme/bob/github_token", T_BOB_GITHUB),
    ("acme/dave/github_token", T_DAVE_GITHUB),
    ("globex/carol/github_token", T_CAROL_GITHUB),
    ("acme/slack_bot_token", T_ACME_SLACK),
    ("globex/slack_bot_token", T_GLOBEX_SLACK),
    ("acme/weather_api_key", T_ACME_WEATHER),
];

/// Every seeded secret value: none may appear in a tool's output, log or API response.
pub fn canaries() -> Vec<&'static str> {
    T_SEEDS.iter().map(|(_, v)| *v).collect()
}

/// The host names the mock API has certificates for.
pub const TOOL_HOSTS: &[&str] = &["api.github.com", "slack.com", "api.weather.example"];

/// How to start a [`ToolHarness`]. Every field has a working default.
#[derive(Default)]
pub struct ToolConfig {
    /// Extra lines for behalf.toml's `[limits]`.
    pub limits: String,
    /// Text appended to `tenants/acme.toml`.
    pub acme_extra: String,
    /// Text appended to `tenants/globex.toml`.
    pub globex_extra: String,
    /// Extra `services/<name>.toml` files: (name, contents).
    pub extra_services: Vec<(String, String)>,
    /// A tools directory to use instead of `fixtures/tools` (e.g. a copy with edited
    /// manifests).
    pub tools_dir: Option<PathBuf>,
    /// More host names the mock API answers for, beside [`TOOL_HOSTS`]: it gets a certificate
    /// for each and `--connect-to` sends `https://<host>` to it (tell them apart by
    /// [`super::Recorded::sni`]).
    pub extra_hosts: Vec<String>,
}

/// A running sidecar API over the example tools.
pub struct ToolHarness {
    /// Holds every file; removed on drop.
    pub tmp: tempfile::TempDir,
    /// The generated policies directory.
    pub policies: PathBuf,
    /// The state directory.
    pub state: StateDir,
    /// The mock API behind every origin in [`TOOL_HOSTS`] (it echoes each request as JSON
    /// unless told otherwise with `respond`).
    pub upstream: MockUpstream,
    /// The test CA the mock's certificates chain to.
    pub ca: TestCa,
    /// The opened sidecar (its sandbox, egress, metrics).
    pub sidecar: Sidecar,
    /// The API's address.
    pub api_addr: SocketAddr,
    /// acme/alice (group engineering).
    pub alice: String,
    /// acme/bob (group engineering).
    pub bob: String,
    /// acme/dave (group support).
    pub dave: String,
    /// globex/carol (no groups).
    pub carol: String,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Drop for ToolHarness {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.abort();
    }
}

/// The repository's example tools.
pub fn fixture_tools() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tools")
}

/// A cache of compiled components shared by every test in this run (keyed by component and
/// engine hash, written atomically), so each test does not recompile the tools.
fn shared_cache() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("behalf-component-cache");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl ToolHarness {
    /// Starts a harness with the default configuration.
    pub async fn start() -> Self {
        Self::start_with(ToolConfig::default()).await
    }

    /// Starts a harness.
    pub async fn start_with(config: ToolConfig) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().to_owned();
        let ca = TestCa::new(&base.join("test-ca.pem"));
        let hosts: Vec<&str> = TOOL_HOSTS
            .iter()
            .copied()
            .chain(config.extra_hosts.iter().map(String::as_str))
            .collect();
        let upstream = MockUpstream::start(Some(ca.server_config(&hosts))).await;

        // Policies: the shipped services and tenants, plus this test's additions.
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let policies = base.join("policies");
        copy_dir(&shipped.join("services"), &policies.join("services"));
        copy_dir(&shipped.join("tenants"), &policies.join("tenants"));
        for (name, text) in &config.extra_services {
            write(&policies.join(format!("services/{name}.toml")), text);
        }
        // The hostile fixture is never granted by the shipped policy; every acme member may
        // run it here.
        let acme_extra = format!(
            "[[tool_access]]\nwho = [\"*\"]\ntools = [\"hostile\"]\n\n{}",
            config.acme_extra
        );
        for (tenant, extra) in [("acme", &acme_extra), ("globex", &config.globex_extra)] {
            let path = policies.join(format!("tenants/{tenant}.toml"));
            let text = std::fs::read_to_string(&path).unwrap();
            write(&path, &format!("{text}\n{extra}\n"));
        }
        let tools_dir = config.tools_dir.clone().unwrap_or_else(fixture_tools);
        let limits = if config.limits.contains("upstream_timeout") {
            config.limits.clone()
        } else {
            format!("upstream_timeout = \"5s\"\n{}", config.limits)
        };
        write(
            &policies.join("behalf.toml"),
            &format!(
                "dev = true\nstate_dir = \"state\"\ntools_dir = {:?}\n\n[secrets]\n\
                 backend = \"file\"\n\n[tls]\nupstream_roots = [{:?}]\n\n[limits]\n{limits}",
                tools_dir.display().to_string(),
                ca.pem_path.display().to_string()
            ),
        );

        // State, secrets, the shared component cache, tokens.
        let state_path = base.join("state");
        let state = StateDir::open(&state_path).unwrap();
        {
            let policy =
                behalf::policy::PolicySet::load(&policies).unwrap_or_else(|e| panic!("{e}"));
            let store = secrets::open_store(policy.settings(), &state).unwrap();
            for (id, value) in T_SEEDS {
                store
                    .set(&SecretId::parse(id).unwrap(), &Secret::from_text(value))
                    .unwrap();
            }
        }
        std::os::unix::fs::symlink(shared_cache(), state_path.join("cache")).unwrap();
        let alice = mint(&state, "acme", "alice", &["engineering"]);
        let bob = mint(&state, "acme", "bob", &["engineering"]);
        let dave = mint(&state, "acme", "dave", &["support"]);
        let carol = mint(&state, "globex", "carol", &[]);

        let connect_to: Vec<(Origin, SocketAddr)> = hosts
            .iter()
            .map(|h| {
                (
                    Origin::parse(&format!("https://{h}")).unwrap(),
                    upstream.addr,
                )
            })
            .collect();
        let options = Options {
            policies: policies.clone(),
            state: Some(state_path),
            connect_to,
            shadow: None,
        };
        let sidecar = Sidecar::open_with_resolver(&options, Arc::new(TestResolver::default()))
            .unwrap_or_else(|e| panic!("{e}"));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api_addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(sidecar.api().serve(listener, 1024, async move {
            let _ = rx.await;
        }));
        ToolHarness {
            tmp,
            policies,
            state,
            upstream,
            ca,
            sidecar,
            api_addr,
            alice,
            bob,
            dave,
            carol,
            client: Client::builder(TokioExecutor::new()).build_http(),
            shutdown: Some(tx),
            task,
        }
    }

    /// A development token for any principal (1 h).
    pub fn token(&self, tenant: &str, user: &str, groups: &[&str]) -> String {
        mint(&self.state, tenant, user, groups)
    }

    /// Sends a request to the API; returns the status, headers and body as JSON (or a JSON
    /// string holding the raw text when it is not JSON).
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, http::HeaderMap, Value) {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.api_addr));
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .unwrap();
        let resp = self.client.request(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (parts.status, parts.headers, value)
    }

    /// `POST /v1/tools/{tool}/invoke` with `input` as the body.
    pub async fn invoke(&self, token: &str, tool: &str, input: Value) -> (StatusCode, Value) {
        let (status, _, body) = self
            .request(
                "POST",
                &format!("/v1/tools/{tool}/invoke"),
                Some(token),
                Some(input.to_string().into_bytes()),
            )
            .await;
        (status, body)
    }

    /// `GET /v1/tools`: the names of the tools `token` may invoke, sorted.
    pub async fn tool_names(&self, token: &str) -> Vec<String> {
        let (status, _, body) = self.request("GET", "/v1/tools", Some(token), None).await;
        assert_eq!(status, 200, "{body}");
        let mut names: Vec<String> = body["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["function"]["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    }

    /// Verifies the audit chain (after a sync) and returns every record but `start` ones.
    pub fn audit_records(&self) -> Vec<behalf::audit::Record> {
        let audit = self.sidecar.egress.audit();
        audit.sync().unwrap();
        let key = behalf::audit::read_key(&self.state).unwrap();
        behalf::audit::verify(audit.dir(), &key).unwrap_or_else(|e| panic!("audit verify: {e}"));
        let text = std::fs::read_to_string(audit.dir().join(behalf::audit::CURRENT)).unwrap();
        text.lines()
            .map(|l| serde_json::from_str::<behalf::audit::Record>(l).unwrap())
            .filter(|r| r.decision != "start")
            .collect()
    }

    /// Every byte of every audit file, for leak checks.
    pub fn audit_text(&self) -> String {
        let audit = self.sidecar.egress.audit();
        audit.sync().unwrap();
        let mut out = String::new();
        for entry in std::fs::read_dir(audit.dir()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "jsonl") {
                out.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
        out
    }

    /// The state directory of `tool` for (tenant, user).
    pub fn tool_state(&self, tenant: &str, user: &str, tool: &str) -> PathBuf {
        self.state
            .join("tool-state")
            .join(tenant)
            .join(user)
            .join(tool)
    }
}
