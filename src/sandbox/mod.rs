//! The wasm sandbox: tools are `wasi:cli/run` components run in wasmtime, one fresh Store and
//! instance per invocation, holding no secrets.
//!
//! - [`manifest`]: `tool.toml` files, read and validated.
//! - [`Sandbox::open`]: compiles every tool once (or loads the precompiled artifact behalf
//!   cached in `state_dir`) and pre-instantiates it against the linker.
//! - [`Sandbox::invoke`]: tool access, input schema, per-tenant concurrency, then a fresh
//!   instance with stdin = input, stdout = output, a wall-clock deadline, memory and output
//!   caps, and outbound HTTP only through the egress pipeline ([`host`]).
//!
//! The WASI surface: `wasi:cli` (stdin, stdout, stderr, env with only `BEHALF_TOOL`,
//! `BEHALF_INVOCATION` and `BEHALF_PLACEHOLDER_<SERVICE>`, no args), clocks, random,
//! `wasi:http` (through [`host::EgressHooks`]), and `wasi:filesystem` with no preopens except
//! the manifest's private state directory at `/state`. `wasi:sockets` is linked (std's
//! networking imports it) but every use is refused: no TCP, no UDP, no name lookup.

pub mod host;
pub mod manifest;
mod pipe;
pub mod state;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};
use wasmtime_wasi_http::WasiHttpCtx;

pub use self::host::Denial;
use self::host::{EgressHooks, Host, Limiter};
pub use self::manifest::{Manifest, ToolLimits};
use self::pipe::{CappedPipe, Overflow};
use self::state::StateRoot;
use crate::audit::{Entry, Outcome};
use crate::egress::{Egress, Placeholders};
use crate::policy::{
    Client, Diagnostics, Inject, LoadError, PolicySet, ToolDecision, ToolDeny, ToolName,
};
use crate::principal::{Principal, TenantId};
use crate::state::StateDir;

/// How often the epoch ticks: the granularity of deadlines and of yielding to other tasks.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// How often a running tool's staged state directory is measured against its quota.
const QUOTA_POLL: Duration = Duration::from_millis(20);
/// Instances the pooling allocator keeps slots for (each tool instance takes one).
const POOL_INSTANCES: u32 = 1000;

/// Why the sandbox could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// A manifest is invalid.
    #[error("{0}")]
    Manifest(#[from] LoadError),
    /// The engine could not be configured.
    #[error("wasm engine: {0}")]
    Engine(String),
    /// A component could not be compiled or linked.
    #[error("tool `{tool}` ({path}): {message}")]
    Component {
        /// The tool.
        tool: ToolName,
        /// The component file.
        path: String,
        /// What failed.
        message: String,
    },
}

/// Why an invocation did not produce output. Each maps to one row of DESIGN.md's error table.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ToolError {
    /// No tool access rule gives this principal the tool.
    #[error("{0}")]
    NotAllowed(ToolDeny),
    /// The tool is granted but not installed.
    #[error("no tool `{0}` is installed in tools_dir")]
    UnknownTool(String),
    /// The input is not JSON or fails the tool's schema.
    #[error("{0}")]
    InvalidInput(String),
    /// The input is larger than `max_request_body`.
    #[error("the input is larger than max_request_body ({0} bytes)")]
    InputTooLarge(u64),
    /// The tenant's concurrency limit is reached.
    #[error("{tenant} already has {limit} tool invocations running")]
    Busy {
        /// The tenant.
        tenant: TenantId,
        /// Its limit.
        limit: usize,
    },
    /// The deadline passed.
    #[error("the tool did not finish within its {0:?} deadline")]
    Timeout(Duration),
    /// A trap, a limit or bad output.
    #[error("{0}")]
    Failed(String),
    /// The tool exited with a non-zero status.
    #[error("the tool exited with status {0}")]
    Exited(i32),
    /// The tool exited non-zero after an outbound request was denied.
    #[error("the tool failed after {0} outbound request(s) were denied (see `denials`)")]
    EgressDenied(usize),
    /// The audit log cannot be written, or the sandbox has no free slot.
    #[error("{0}")]
    Unavailable(String),
}

impl ToolError {
    /// The HTTP status.
    pub fn status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            Self::NotAllowed(_) => S::FORBIDDEN,
            Self::UnknownTool(_) => S::NOT_FOUND,
            Self::InvalidInput(_) => S::BAD_REQUEST,
            Self::InputTooLarge(_) => S::PAYLOAD_TOO_LARGE,
            Self::Busy { .. } => S::TOO_MANY_REQUESTS,
            Self::Timeout(_) => S::GATEWAY_TIMEOUT,
            Self::Failed(_) | Self::Exited(_) => S::INTERNAL_SERVER_ERROR,
            Self::EgressDenied(_) => S::FORBIDDEN,
            Self::Unavailable(_) => S::SERVICE_UNAVAILABLE,
        }
    }

    /// The machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotAllowed(_) => "tool_not_allowed",
            Self::UnknownTool(_) => "unknown_tool",
            Self::InvalidInput(_) | Self::InputTooLarge(_) => "invalid_input",
            Self::Busy { .. } => "rate_limited",
            Self::Timeout(_) => "tool_timeout",
            Self::Failed(_) | Self::Exited(_) => "tool_failed",
            Self::EgressDenied(_) => "egress_denied",
            Self::Unavailable(_) => "unavailable",
        }
    }

    /// What the caller can do about it.
    pub fn hint(&self) -> &'static str {
        match self {
            Self::NotAllowed(_) => {
                "ask the tenant's admin for a [[tool_access]] rule; GET /v1/tools lists the tools you may invoke"
            }
            Self::UnknownTool(_) => "GET /v1/tools lists the tools you may invoke",
            Self::InvalidInput(_) => {
                "send a JSON body matching the tool's input_schema (GET /v1/tools shows it)"
            }
            Self::InputTooLarge(_) => "send a smaller input, or raise max_request_body",
            Self::Busy { .. } => "retry after a moment, or raise tool_concurrency_per_tenant",
            Self::Timeout(_) => "the tool's [limits] timeout, or behalf.toml's tool_timeout",
            Self::Failed(_) | Self::Exited(_) => {
                "see behalf's log for the tool's stderr under this invocation id"
            }
            Self::EgressDenied(_) => {
                "each denial names the missing rule; `behalf policy explain` shows the full trace"
            }
            Self::Unavailable(_) => "retry later; behalf's log says why",
        }
    }
}

/// A finished invocation.
#[derive(Debug)]
pub struct Invocation {
    /// Its id (also in the audit log and the tool's `BEHALF_INVOCATION`).
    pub id: String,
    /// The tool's output JSON, or why there is none.
    pub result: Result<serde_json::Value, ToolError>,
    /// Outbound requests the pipeline refused.
    pub denials: Vec<Denial>,
    /// The tool's stderr, up to its cap (also logged; not part of the API response).
    pub log: Bytes,
}

/// A tool became ready while the sandbox opened.
#[derive(Debug, Clone, Copy)]
pub struct ToolReady<'a> {
    /// The tool.
    pub name: &'a ToolName,
    /// Its position (0-based) among `count` tools.
    pub index: usize,
    /// How many tools there are.
    pub count: usize,
    /// Whether its compiled component came from the cache.
    pub cached: bool,
    /// How long compiling (or loading) it took.
    pub elapsed: Duration,
}

/// One installed tool.
struct Tool {
    manifest: Manifest,
    schema: jsonschema::Validator,
    pre: CommandPre<Host>,
}

/// The installed tools of one generation: a reload builds a new set and swaps it in; an
/// invocation keeps the set it started with.
pub struct Toolset {
    tools: BTreeMap<ToolName, Tool>,
}

impl Toolset {
    /// The manifests, by name.
    pub fn manifests(&self) -> impl Iterator<Item = &Manifest> {
        self.tools.values().map(|t| &t.manifest)
    }

    /// Whether a tool of this name is installed.
    pub fn contains(&self, name: &str) -> bool {
        ToolName::parse(name).is_ok_and(|n| self.tools.contains_key(&n))
    }
}

/// The tools, their engine and everything an invocation needs.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<Host>,
    max_memory: u64,
    tools: std::sync::RwLock<Arc<Toolset>>,
    egress: Arc<Egress>,
    state: StateRoot,
    tenants: Mutex<HashMap<TenantId, Arc<Semaphore>>>,
    per_tenant: usize,
    in_use: AtomicUsize,
    random: SystemRandom,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field(
                "tools",
                &self
                    .tools()
                    .manifests()
                    .map(|m| m.name.to_string())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// The engine every tool runs in: async (so a call can be cancelled and yields to other
/// tasks), epoch interruption for deadlines, the pooling allocator with copy-on-write memory
/// images, memories no larger than the largest tool limit.
pub fn engine(max_memory: u64) -> Result<Engine, SandboxError> {
    let mut pool = PoolingAllocationConfig::new();
    let max_memory = usize::try_from(max_memory).unwrap_or(usize::MAX);
    pool.total_component_instances(POOL_INSTANCES)
        .total_core_instances(POOL_INSTANCES * 4)
        .total_memories(POOL_INSTANCES)
        .total_tables(POOL_INSTANCES * 4)
        .total_stacks(POOL_INSTANCES)
        .max_memory_size(max_memory);
    let mut config = Config::new();
    // Reserving only the largest tool memory per slot (not wasmtime's 4 GiB default) keeps
    // the pool at tens of GiB of address space instead of terabytes, at the cost of explicit
    // bounds checks in compiled code.
    config
        .epoch_interruption(true)
        .memory_init_cow(true)
        .memory_reservation(max_memory as u64)
        .memory_guard_size(2 << 20)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config).map_err(|e| SandboxError::Engine(e.to_string()))
}

impl Sandbox {
    /// Reads the manifests under the policy's `tools_dir`, compiles (or loads from the cache
    /// in `state`) every component and pre-instantiates it. Nothing runs yet.
    pub fn open(
        policy: &PolicySet,
        egress: Arc<Egress>,
        state: &StateDir,
    ) -> Result<Self, SandboxError> {
        Self::open_with_progress(policy, egress, state, &mut |_| {})
    }

    /// As [`Sandbox::open`], calling `progress` as each tool becomes ready (compiling a
    /// component takes a few hundred milliseconds the first time; `behalf demo` shows it).
    pub fn open_with_progress(
        policy: &PolicySet,
        egress: Arc<Egress>,
        state: &StateDir,
        progress: &mut dyn FnMut(ToolReady<'_>),
    ) -> Result<Self, SandboxError> {
        let settings = policy.settings();
        let manifests = read_manifests(policy)?;
        let max_memory = manifests
            .iter()
            .map(|m| m.limits.memory)
            .max()
            .unwrap_or(settings.limits.tool_memory)
            .max(settings.limits.tool_memory);
        let engine = engine(max_memory)?;
        spawn_ticker(&engine);

        let mut linker: Linker<Host> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| SandboxError::Engine(e.to_string()))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| SandboxError::Engine(e.to_string()))?;
        let cache = state.join("cache");
        let tools = build_tools(&engine, &linker, manifests, &cache, progress)?;
        Ok(Self {
            engine,
            linker,
            max_memory,
            tools: std::sync::RwLock::new(Arc::new(tools)),
            egress,
            state: StateRoot::new(state.join("tool-state")),
            tenants: Mutex::default(),
            per_tenant: settings.limits.tool_concurrency_per_tenant.max(1) as usize,
            in_use: AtomicUsize::new(0),
            random: SystemRandom::new(),
        })
    }

    /// Reads the manifests again and builds a new toolset (compiling only components that
    /// are not in the cache), to be put in force with [`Sandbox::swap_tools`]. A manifest
    /// asking for more memory than the engine was started with needs a restart.
    pub fn load_tools(
        &self,
        policy: &PolicySet,
        state: &StateDir,
    ) -> Result<Toolset, SandboxError> {
        let manifests = read_manifests(policy)?;
        if let Some(m) = manifests.iter().find(|m| m.limits.memory > self.max_memory) {
            return Err(SandboxError::Component {
                tool: m.name.clone(),
                path: m.component.display().to_string(),
                message: format!(
                    "its memory limit ({} bytes) is above what this process started with ({} \
                     bytes); restart behalf to raise it",
                    m.limits.memory, self.max_memory
                ),
            });
        }
        build_tools(
            &self.engine,
            &self.linker,
            manifests,
            &state.join("cache"),
            &mut |_| {},
        )
    }

    /// Puts `tools` in force for invocations that start from now on.
    pub fn swap_tools(&self, tools: Toolset) {
        *self.tools.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(tools);
    }

    /// The toolset in force now.
    pub fn tools(&self) -> Arc<Toolset> {
        self.tools.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Instances running now.
    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }

    /// The tools `principal` may invoke now.
    pub fn allowed(&self, principal: &Principal) -> Vec<Manifest> {
        let policy = self.egress.policy();
        self.tools()
            .manifests()
            .filter(|m| {
                matches!(
                    policy.decide_tool(principal, &m.name),
                    ToolDecision::Allow(_)
                )
            })
            .cloned()
            .collect()
    }

    /// Invokes `tool` for `principal` with `input` (the request body). Tool access is decided
    /// first, then the input is checked, then a fresh instance runs. Audited either way.
    pub async fn invoke(&self, principal: &Principal, tool: &str, input: &[u8]) -> Invocation {
        let started = Instant::now();
        let id = self.random_hex(16);
        let (result, denials, log) = self.run(principal, tool, input, &id).await;
        self.audited(principal, tool, started, id, result, denials, log)
    }

    /// An invocation refused by the front door before it reached the sandbox (an unreadable
    /// or oversized body), audited like any other.
    pub fn refuse(&self, principal: &Principal, tool: &str, error: ToolError) -> Invocation {
        let id = self.random_hex(16);
        self.audited(
            principal,
            tool,
            Instant::now(),
            id,
            Err(error),
            Vec::new(),
            Bytes::new(),
        )
    }

    /// Writes the invocation's audit record; if that fails, the result is `unavailable`.
    #[allow(clippy::too_many_arguments)]
    fn audited(
        &self,
        principal: &Principal,
        tool: &str,
        started: Instant,
        id: String,
        result: Result<serde_json::Value, ToolError>,
        denials: Vec<Denial>,
        log: Bytes,
    ) -> Invocation {
        let decision = match &result {
            Ok(_) => Outcome::Allow,
            Err(e) if e.status().is_client_error() && !matches!(e, ToolError::EgressDenied(_)) => {
                Outcome::Deny
            }
            Err(_) => Outcome::Error,
        };
        let mut entry = Entry::new(
            decision,
            "INVOKE",
            format!("tool:{tool}").chars().take(128).collect::<String>(),
            "",
        );
        entry.invocation = Some(id.clone());
        entry.tenant = Some(principal.tenant.to_string());
        entry.user = Some(principal.user.to_string());
        entry.client = Some("api".into());
        entry.status = Some(match &result {
            Ok(_) => 200,
            Err(e) => e.status().as_u16(),
        });
        if let Err(e) = &result {
            entry.reason = Some(match e {
                ToolError::NotAllowed(_) => "no_tool_access".to_owned(),
                other => other.code().to_owned(),
            });
        }
        entry.duration_ms = started.elapsed().as_millis() as u64;
        let result = match self.egress.audit().record(entry) {
            Ok(_) => result,
            Err(e) => Err(ToolError::Unavailable(format!("audit log: {e}"))),
        };
        Invocation {
            id,
            result,
            denials,
            log,
        }
    }

    async fn run(
        &self,
        principal: &Principal,
        tool_name: &str,
        input: &[u8],
        id: &str,
    ) -> (Result<serde_json::Value, ToolError>, Vec<Denial>, Bytes) {
        let Ok(name) = ToolName::parse(tool_name) else {
            let shown: String = tool_name.chars().take(64).collect();
            return (Err(ToolError::UnknownTool(shown)), Vec::new(), Bytes::new());
        };
        if let ToolDecision::Deny(d) = self.egress.policy().decide_tool(principal, &name) {
            return (Err(ToolError::NotAllowed(d)), Vec::new(), Bytes::new());
        }
        // This invocation keeps the toolset it started with, whatever reloads meanwhile.
        let tools = self.tools();
        let Some(tool) = tools.tools.get(&name) else {
            return (
                Err(ToolError::UnknownTool(name.to_string())),
                Vec::new(),
                Bytes::new(),
            );
        };
        if let Err(e) = check_input(tool, input) {
            return (Err(e), Vec::new(), Bytes::new());
        }
        let Ok(_permit) = self.tenant_permit(&principal.tenant) else {
            let e = ToolError::Busy {
                tenant: principal.tenant.clone(),
                limit: self.per_tenant,
            };
            return (Err(e), Vec::new(), Bytes::new());
        };
        if self.egress.audit().gate().is_err() {
            let e = ToolError::Unavailable("the audit log cannot be written".into());
            return (Err(e), Vec::new(), Bytes::new());
        }
        let denials = Arc::new(Mutex::new(Vec::new()));
        let (result, log) = {
            let _in_use = InUse::enter(&self.in_use);
            self.execute(principal, tool, input, id, &denials).await
        };
        let denials = std::mem::take(&mut *denials.lock().unwrap_or_else(|e| e.into_inner()));
        let result = match result {
            // Only a tool that gave up (exited non-zero) after a denial is reported as the
            // denial; a limit it hit is still named as that limit.
            Err(ToolError::Exited(_)) if !denials.is_empty() => {
                Err(ToolError::EgressDenied(denials.len()))
            }
            other => other,
        };
        (result, denials, log)
    }

    fn tenant_permit(&self, tenant: &TenantId) -> Result<OwnedSemaphorePermit, ()> {
        let semaphore = self
            .tenants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(tenant.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_tenant)))
            .clone();
        semaphore.try_acquire_owned().map_err(|_| ())
    }

    /// Runs one fresh instance of `tool`.
    async fn execute(
        &self,
        principal: &Principal,
        tool: &Tool,
        input: &[u8],
        id: &str,
        denials: &Arc<Mutex<Vec<Denial>>>,
    ) -> (Result<serde_json::Value, ToolError>, Bytes) {
        let manifest = &tool.manifest;
        let limits = manifest.limits;
        let stdout = CappedPipe::new(limits.output, Overflow::Fail);
        let stderr = CappedPipe::new(limits.log, Overflow::Truncate);
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdin(wasmtime_wasi::p2::pipe::MemoryInputPipe::new(
            input.to_vec(),
        ))
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .env("BEHALF_TOOL", manifest.name.as_str())
        .env("BEHALF_INVOCATION", id);
        let placeholders = self.placeholders();
        for (service, value) in placeholders.iter() {
            wasi.env(placeholder_env(service.as_str()), value);
        }
        let staged = if manifest.state {
            let staged = match self.state.stage(principal, &manifest.name, id).await {
                Ok(s) => s,
                Err(e) => return (Err(state_unavailable(e)), Bytes::new()),
            };
            if let Err(e) = wasi.preopened_dir(&staged.path, "/state", FsPerms::ReadWrite) {
                return (Err(state_unavailable(e)), Bytes::new());
            }
            Some(staged)
        } else {
            None
        };
        let host = Host {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            limiter: Limiter::new(limits.memory),
            hooks: EgressHooks {
                egress: self.egress.clone(),
                principal: Arc::new(principal.clone()),
                client: Client::Tool(manifest.name.clone()),
                invocation: Arc::from(id),
                placeholders: Arc::new(placeholders),
                denials: denials.clone(),
            },
        };
        let mut store = Store::new(&self.engine, host);
        store.limiter(|h| &mut h.limiter);
        let deadline = Instant::now() + limits.timeout;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Ok(wasmtime::UpdateDeadline::Interrupt)
            } else {
                Ok(wasmtime::UpdateDeadline::Yield(1))
            }
        });

        let run = async {
            let command = tool.pre.instantiate_async(&mut store).await?;
            command.wasi_cli_run().call_run(&mut store).await
        };
        let quota = async {
            match &staged {
                Some(s) => watch_quota(&s.path, limits.state_quota).await,
                None => std::future::pending().await,
            }
        };
        // The epoch callback stops a spinning guest; the timeout also covers a guest blocked
        // in a host call (an upstream that never answers).
        let outcome = tokio::time::timeout(limits.timeout + EPOCH_TICK * 5, async {
            tokio::select! {
                r = run => Ok(r),
                over = quota => Err(over),
            }
        })
        .await;
        let limiter_hit = store.data().limiter.hit.clone();
        drop(store);
        let (out, _) = stdout.take();
        let (log, truncated) = stderr.take();
        log_stderr(&manifest.name, id, &log, truncated);

        let result = match outcome {
            Err(_) => Err(ToolError::Timeout(limits.timeout)),
            Ok(Err(used)) => Err(quota_error(used, limits.state_quota)),
            Ok(Ok(r)) => self.interpret(r, limiter_hit, &stdout, &out, &limits),
        };
        let result = match (result, staged) {
            (r, None) => r,
            (Ok(value), Some(staged)) => keep(staged, limits.state_quota).await.map(|()| value),
            (Err(e), Some(staged)) => {
                staged.discard().await;
                Err(e)
            }
        };
        (result, log)
    }

    /// Turns the guest's exit into output or a named failure.
    fn interpret(
        &self,
        run: wasmtime::Result<Result<(), ()>>,
        limiter_hit: Option<String>,
        stdout: &CappedPipe,
        out: &[u8],
        limits: &ToolLimits,
    ) -> Result<serde_json::Value, ToolError> {
        let exit = match run {
            Ok(Ok(())) => 0,
            Ok(Err(())) => 1,
            Err(e) => {
                if let Some(exit) = e.downcast_ref::<I32Exit>() {
                    exit.0
                } else if let Some(hit) = limiter_hit {
                    return Err(ToolError::Failed(format!("the tool was stopped: {hit}")));
                } else if stdout.overflowed() || out.len() as u64 >= limits.output {
                    return Err(output_too_large(limits.output));
                } else if let Some(wasmtime::Trap::Interrupt) = e.downcast_ref::<wasmtime::Trap>() {
                    return Err(ToolError::Timeout(limits.timeout));
                } else if e
                    .to_string()
                    .contains("all fibers in the pooling allocator are in use")
                    || e.to_string().contains("maximum concurrent")
                {
                    return Err(ToolError::Unavailable(
                        "no free sandbox slot; retry shortly".into(),
                    ));
                } else {
                    return Err(ToolError::Failed(format!(
                        "the tool trapped: {}",
                        trap_summary(&e)
                    )));
                }
            }
        };
        if stdout.overflowed() {
            return Err(output_too_large(limits.output));
        }
        if exit != 0 {
            return Err(ToolError::Exited(exit));
        }
        serde_json::from_slice(out).map_err(|e| {
            ToolError::Failed(format!(
                "the tool's output ({} bytes on stdout) is not JSON: {e}",
                out.len()
            ))
        })
    }

    /// Fresh random placeholders for every service that injects by placeholder.
    fn placeholders(&self) -> Placeholders {
        let mut placeholders = Placeholders::none();
        for service in self.egress.policy().services() {
            if matches!(service.inject, Some(Inject::Placeholder { .. })) {
                placeholders.insert(
                    service.name.clone(),
                    format!("behalf-placeholder-{}", self.random_hex(16)),
                );
            }
        }
        placeholders
    }

    fn random_hex(&self, bytes: usize) -> String {
        let mut buf = vec![0u8; bytes];
        // SystemRandom fails only if the OS has no randomness; nothing safe can run then.
        self.random
            .fill(&mut buf)
            .expect("the operating system's random source failed");
        buf.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Counts a running instance for as long as it lives (also when the call is cancelled).
struct InUse<'a>(&'a AtomicUsize);

impl<'a> InUse<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for InUse<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `BEHALF_PLACEHOLDER_<SERVICE>`, the service name upper-cased with `-` as `_`.
pub fn placeholder_env(service: &str) -> String {
    format!(
        "BEHALF_PLACEHOLDER_{}",
        service.to_ascii_uppercase().replace('-', "_")
    )
}

fn check_input(tool: &Tool, input: &[u8]) -> Result<(), ToolError> {
    let value: serde_json::Value = serde_json::from_slice(input)
        .map_err(|e| ToolError::InvalidInput(format!("the body is not JSON: {e}")))?;
    let errors: Vec<String> = tool
        .schema
        .iter_errors(&value)
        .take(5)
        .map(|e| {
            let at = e.instance_path().to_string();
            format!("{}: {e}", if at.is_empty() { "(input)" } else { &at })
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ToolError::InvalidInput(format!(
            "the input does not match {}'s input_schema: {}",
            tool.manifest.name,
            errors.join("; ")
        )))
    }
}

async fn watch_quota(dir: &Path, quota: u64) -> u64 {
    loop {
        tokio::time::sleep(QUOTA_POLL).await;
        let path = dir.to_owned();
        if let Ok(Ok(used)) = tokio::task::spawn_blocking(move || state::usage(&path)).await
            && used > quota
        {
            return used;
        }
    }
}

/// Commits a successful invocation's state if it is within its quota; otherwise discards it.
async fn keep(staged: state::Staged, quota: u64) -> Result<(), ToolError> {
    let path = staged.path.clone();
    let used = tokio::task::spawn_blocking(move || state::usage(&path))
        .await
        .map_err(state_unavailable)
        .and_then(|r| r.map_err(state_unavailable));
    match used {
        Ok(used) if used <= quota => staged.commit().await.map_err(state_unavailable),
        Ok(used) => {
            staged.discard().await;
            Err(quota_error(used, quota))
        }
        Err(e) => {
            staged.discard().await;
            Err(e)
        }
    }
}

fn state_unavailable(e: impl std::fmt::Display) -> ToolError {
    ToolError::Unavailable(format!("tool state directory: {e}"))
}

fn quota_error(used: u64, quota: u64) -> ToolError {
    ToolError::Failed(format!(
        "state directory quota of {quota} bytes exceeded ({used} bytes); nothing this \
         invocation wrote was kept"
    ))
}

fn output_too_large(cap: u64) -> ToolError {
    ToolError::Failed(format!(
        "the tool's output exceeded the limit of {cap} bytes (limits.output / tool_output); \
         it was stopped"
    ))
}

/// The first line of a trap's message, without wasm backtraces.
fn trap_summary(e: &wasmtime::Error) -> String {
    let msg = format!("{e:#}");
    msg.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect()
}

fn log_stderr(tool: &ToolName, invocation: &str, log: &[u8], truncated: bool) {
    for line in String::from_utf8_lossy(log).lines() {
        tracing::info!(target: "behalf::tool", %tool, invocation, "{line}");
    }
    if truncated {
        tracing::info!(target: "behalf::tool", %tool, invocation, "(stderr truncated at its cap)");
    }
}

/// Ticks the engine's epoch until the engine is dropped.
/// The manifests under the policy's `tools_dir` (none if it does not exist).
fn read_manifests(policy: &PolicySet) -> Result<Vec<Manifest>, SandboxError> {
    let settings = policy.settings();
    let mut diags = Diagnostics::default();
    let manifests = if settings.tools_dir.is_dir() {
        manifest::read_all(&settings.tools_dir, &settings.limits, &mut diags)
    } else {
        Vec::new()
    };
    if diags.has_errors() {
        return Err(LoadError {
            diagnostics: diags.into_sorted(),
        }
        .into());
    }
    Ok(manifests)
}

/// Compiles (or loads from `cache`) and pre-instantiates each tool.
fn build_tools(
    engine: &Engine,
    linker: &Linker<Host>,
    manifests: Vec<Manifest>,
    cache: &Path,
    progress: &mut dyn FnMut(ToolReady<'_>),
) -> Result<Toolset, SandboxError> {
    let component_err = |m: &Manifest, message: String| SandboxError::Component {
        tool: m.name.clone(),
        path: m.component.display().to_string(),
        message,
    };
    let mut tools = BTreeMap::new();
    let count = manifests.len();
    for (index, manifest) in manifests.into_iter().enumerate() {
        let started = Instant::now();
        let (component, cached) = load_component(engine, &manifest.component, cache)
            .map_err(|e| component_err(&manifest, e))?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| component_err(&manifest, format!("cannot link: {e}")))?;
        let pre = CommandPre::new(pre).map_err(|e| {
            component_err(
                &manifest,
                format!("not a wasi:cli/run command (build it as a binary for wasm32-wasip2): {e}"),
            )
        })?;
        let schema = jsonschema::validator_for(&manifest.input_schema)
            .map_err(|e| component_err(&manifest, format!("input_schema: {e}")))?;
        let elapsed = started.elapsed();
        tracing::info!(
            tool = %manifest.name,
            cached,
            ms = elapsed.as_millis() as u64,
            "tool ready"
        );
        progress(ToolReady {
            name: &manifest.name,
            index,
            count,
            cached,
            elapsed,
        });
        tools.insert(
            manifest.name.clone(),
            Tool {
                manifest,
                schema,
                pre,
            },
        );
    }
    Ok(Toolset { tools })
}

fn spawn_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("behalf-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawning the epoch thread");
}

/// Loads a component from the cache of precompiled artifacts, or compiles it and caches it.
/// Returns whether it came from the cache.
fn load_component(engine: &Engine, path: &Path, cache: &Path) -> Result<(Component, bool), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let key = cache_key(engine, &bytes);
    let cached = cache.join(format!("{key}.cwasm"));
    if cached.is_file() {
        match deserialize_own_artifact(engine, &cached) {
            Ok(c) => return Ok((c, true)),
            Err(e) => {
                tracing::warn!(path = %cached.display(), error = %e, "cached component unusable; recompiling")
            }
        }
    }
    let component = Component::new(engine, &bytes)
        .map_err(|e| format!("not a valid component (build it for wasm32-wasip2): {e:#}"))?;
    match component.serialize() {
        Ok(artifact) => {
            let written = std::fs::create_dir_all(cache)
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    crate::state::write_atomic(&cached, &artifact).map_err(|e| e.to_string())
                });
            if let Err(e) = written {
                tracing::warn!(path = %cached.display(), error = %e, "cannot cache the compiled component");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot serialise the compiled component"),
    }
    Ok((component, false))
}

/// Hex SHA-256 over the component's bytes and the engine's compatibility hash, so a changed
/// component or engine setting never loads a stale artifact.
fn cache_key(engine: &Engine, bytes: &[u8]) -> String {
    use std::hash::Hash;
    struct Sha(ring::digest::Context);
    impl std::hash::Hasher for Sha {
        fn finish(&self) -> u64 {
            0
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut sha = Sha(ring::digest::Context::new(&ring::digest::SHA256));
    sha.0.update(bytes);
    engine.precompile_compatibility_hash().hash(&mut sha);
    sha.0
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Deserialises a precompiled component.
///
/// # Safety argument
///
/// `Component::deserialize_file` is `unsafe` because a crafted artifact is native code. The
/// only files read here are ones behalf wrote itself into `state_dir/cache` (0700, checked at
/// startup), named by the hash of the component and the engine settings; this is the one place
/// in behalf that needs `unsafe`.
#[allow(unsafe_code)]
fn deserialize_own_artifact(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: see above; the file is behalf's own output in its private state directory.
    unsafe { Component::deserialize_file(engine, path) }
}

/// Where tool state lives, for tests and tools that inspect it.
pub fn state_dir(state: &StateDir) -> PathBuf {
    state.join("tool-state")
}

#[cfg(test)]
mod tests;
