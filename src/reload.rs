//! Hot reload: a changed policy set (and tool set) is loaded and validated off the request
//! path, then swapped in atomically.
//!
//! - [`Reloader::reload`] loads `policies/` and the tools again. If anything is wrong, every
//!   problem is logged with its `file:line:column`, kept as the last reload error (shown by
//!   `/healthz`) and counted, and the running policy and tools stay in force. Otherwise the
//!   tools are swapped in, then the policy: requests and invocations already running finish
//!   under the generation they started with ([`crate::egress::Egress::swap`],
//!   [`crate::sandbox::Sandbox::swap_tools`]).
//! - [`Reloader::watch`] polls a fingerprint (path, size, modification time) of every file
//!   under the policies directory and the tools directory, and reloads when it changes;
//!   `behalf serve` also reloads on SIGHUP.
//! - A shadow policy set (`behalf serve --shadow DIR`) is loaded again after the active one
//!   and watched with it. A shadow that does not load is reported like any reload error but
//!   does not hold back the active set; the last good shadow stays beside it.
//! - `behalf.toml` is not reloaded: listeners, identity, the secret backend, the state
//!   directory and limits are fixed when behalf starts. A changed `behalf.toml` is a reload
//!   error ("restart behalf to apply it"), and the running settings stay.
//!
//! # Security
//!
//! A reload never widens anything by failing: a policy that does not load, or loads with
//! different server settings, changes nothing. Credentials are not touched by a reload (they
//! are read from the store on every request; OAuth2 tokens are keyed by credential and
//! service and dropped when the stored credential changes).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::egress::Egress;
use crate::policy::PolicySet;
use crate::sandbox::Sandbox;
use crate::state::StateDir;

/// How often [`Reloader::watch`] looks for changes.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// What `/healthz` reports about reloads.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// The policy generation in force (1 at start).
    pub generation: u64,
    /// Why the last reload failed, if the last one did (every problem, one per line).
    pub last_error: Option<String>,
    /// When the last reload (successful or not) ran.
    pub last_attempt: Option<SystemTime>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// Reloads one sidecar's policy and tools.
pub struct Reloader {
    policies: PathBuf,
    /// The shadow policy set's directory, if one is evaluated.
    shadow: Option<PathBuf>,
    state: StateDir,
    egress: Arc<Egress>,
    sandbox: Arc<Sandbox>,
    status: Mutex<Status>,
    /// One reload at a time (the watcher and SIGHUP may race).
    running: Mutex<()>,
    reloads: Family<OutcomeLabel, Counter>,
    generation: Gauge,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("policies", &self.policies)
            .finish_non_exhaustive()
    }
}

impl Reloader {
    /// A reloader for the sidecar whose policies are in `policies`.
    pub fn new(
        policies: PathBuf,
        state: StateDir,
        egress: Arc<Egress>,
        sandbox: Arc<Sandbox>,
    ) -> Self {
        let generation = Gauge::default();
        generation.set(1);
        Self {
            policies,
            shadow: None,
            state,
            egress,
            sandbox,
            status: Mutex::new(Status {
                generation: 1,
                ..Status::default()
            }),
            running: Mutex::new(()),
            reloads: Family::default(),
            generation,
        }
    }

    /// Also reloads (and watches) the shadow policy set in `shadow`.
    pub fn with_shadow(mut self, shadow: Option<PathBuf>) -> Self {
        self.shadow = shadow;
        self
    }

    /// Registers the reload metrics.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "policy_reloads",
            "Policy and tool reloads, by outcome (ok, failed)",
            self.reloads.clone(),
        );
        registry.register(
            "policy_generation",
            "The policy generation in force (1 at start, +1 per successful reload)",
            self.generation.clone(),
        );
    }

    /// The reload status.
    pub fn status(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Loads the policy and tools again and puts them in force; on any error keeps what runs.
    /// Blocking (it may compile components): call it off the async workers.
    pub fn reload(&self) -> Result<u64, String> {
        let _one = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let result = self.try_reload();
        // After the active set, and whatever became of it: a broken shadow never holds the
        // active set back, and the last good shadow stays.
        let shadow = self.try_reload_shadow();
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        status.last_attempt = Some(SystemTime::now());
        match &result {
            Ok(generation) => {
                status.generation = *generation;
                status.last_error = None;
                self.generation
                    .set(i64::try_from(*generation).unwrap_or(i64::MAX));
                self.reloads
                    .get_or_create(&OutcomeLabel { outcome: "ok" })
                    .inc();
                tracing::info!(generation, policies = %self.policies.display(), "policy reloaded");
            }
            Err(e) => {
                status.last_error = Some(e.clone());
                self.reloads
                    .get_or_create(&OutcomeLabel { outcome: "failed" })
                    .inc();
                for line in e.lines() {
                    tracing::error!("reload refused, the running policy stays: {line}");
                }
            }
        }
        if let Err(e) = shadow {
            status.last_error = Some(match status.last_error.take() {
                Some(active) => format!("{active}\n{e}"),
                None => e.clone(),
            });
            self.reloads
                .get_or_create(&OutcomeLabel { outcome: "failed" })
                .inc();
            for line in e.lines() {
                tracing::error!("shadow reload refused, the last good shadow stays: {line}");
            }
        }
        result
    }

    /// Loads the shadow policy set again and puts it beside the active one. Its `behalf.toml`
    /// is validated but not applied: the active settings are the ones in force.
    fn try_reload_shadow(&self) -> Result<(), String> {
        let Some(dir) = &self.shadow else {
            return Ok(());
        };
        let shadow = PolicySet::load(dir).map_err(|e| format!("shadow: {e}"))?;
        self.egress.set_shadow(Some(Arc::new(shadow)));
        Ok(())
    }

    fn try_reload(&self) -> Result<u64, String> {
        let policy = PolicySet::load(&self.policies).map_err(|e| e.to_string())?;
        let running = self.egress.policy();
        if policy.settings() != running.settings() {
            return Err(format!(
                "{}: behalf.toml changed; server settings (listeners, identity, secrets, \
                 limits, directories) apply only at start: restart behalf to apply it",
                self.policies.join("behalf.toml").display()
            ));
        }
        for w in policy.warnings() {
            tracing::warn!("{w}");
        }
        let tools = self
            .sandbox
            .load_tools(&policy, &self.state)
            .map_err(|e| e.to_string())?;
        self.sandbox.swap_tools(tools);
        self.egress
            .swap(Arc::new(policy))
            .map_err(|e| e.to_string())
    }

    /// Reloads whenever a file under the policies or tools directory changes, checking
    /// every `interval`, until `shutdown` resolves.
    pub async fn watch(self: Arc<Self>, interval: Duration, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        // Walking the directories is file I/O: off the async workers.
        let fingerprint = |me: Arc<Self>| async move {
            tokio::task::spawn_blocking(move || me.fingerprint())
                .await
                .unwrap_or_default()
        };
        let mut seen = fingerprint(self.clone()).await;
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(interval) => {}
            }
            let now = fingerprint(self.clone()).await;
            if now == seen {
                continue;
            }
            seen = now;
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || me.reload()).await;
        }
    }

    /// Path, size and modification time of every file under the policies, shadow and tools
    /// directories, sorted.
    fn fingerprint(&self) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
        let mut out = Vec::new();
        walk(&self.policies, &mut out);
        if let Some(shadow) = &self.shadow {
            walk(shadow, &mut out);
        }
        walk(&self.egress.policy().settings().tools_dir, &mut out);
        out.sort();
        out
    }
}

fn walk(dir: &Path, out: &mut Vec<(PathBuf, u64, Option<SystemTime>)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        // Follows symlinks: a Kubernetes ConfigMap update swaps a symlinked directory.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            // `tools/target` can hold a build tree; only what a manifest can name matters.
            if path.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            walk(&path, out);
        } else {
            out.push((path, meta.len(), meta.modified().ok()));
        }
    }
}
