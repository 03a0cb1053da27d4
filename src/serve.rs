//! Assembling the sidecar: configuration is loaded and validated, the state dir, secret store,
//! audit log, identity verifier and egress pipeline are opened — all before any port is bound.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::api::{Api, Metrics};
use crate::audit::{AuditError, AuditLog};
use crate::egress::{self, Egress, Resolver, SystemResolver};
use crate::identity::{IdentityError, Verifier};
use crate::policy::{LoadError, Origin, PolicySet};
use crate::proxy::Proxy;
use crate::proxy::ca::{Ca, CaError};
use crate::reload::Reloader;
use crate::sandbox::{Sandbox, SandboxError, ToolReady};
use crate::secrets::{self, SecretError};
use crate::state::{StateDir, StateError};

/// What to start.
#[derive(Debug, Clone)]
pub struct Options {
    /// The policies directory.
    pub policies: PathBuf,
    /// Overrides `state_dir`.
    pub state: Option<PathBuf>,
    /// `--connect-to ORIGIN=ADDR` (development mode only).
    pub connect_to: Vec<(Origin, SocketAddr)>,
    /// `--shadow DIR`: a candidate policy set decided beside the active one, for the audit
    /// record only. Its `behalf.toml` is validated but not applied: the active settings apply.
    pub shadow: Option<PathBuf>,
}

/// Why the sidecar could not start. Each names what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The policy set is invalid.
    #[error("{0}")]
    Policy(#[from] LoadError),
    /// The state dir cannot be used.
    #[error("{0}")]
    State(#[from] StateError),
    /// The secret store cannot be opened.
    #[error("secret store: {0}")]
    Secrets(#[from] SecretError),
    /// The audit log cannot be opened.
    #[error("audit log: {0}")]
    Audit(#[from] AuditError),
    /// An identity issuer cannot be set up.
    #[error("identity: {0}")]
    Identity(#[from] IdentityError),
    /// The pipeline cannot be built.
    #[error("egress: {0}")]
    Egress(#[from] egress::BuildError),
    /// The interception CA cannot be created or loaded.
    #[error("interception CA: {0}")]
    Ca(#[from] CaError),
    /// The tools cannot be loaded.
    #[error("tools: {0}")]
    Sandbox(#[from] SandboxError),
    /// `--connect-to` outside development mode.
    #[error(
        "--connect-to is a development feature: set `dev = true` in behalf.toml (never in \
         production)"
    )]
    ConnectToNeedsDev,
}

impl StartError {
    /// Whether this is a configuration problem (exit 64) rather than an internal one (70).
    pub fn is_config(&self) -> bool {
        match self {
            Self::Secrets(e) => e.is_config(),
            _ => true,
        }
    }
}

/// A started-but-not-listening sidecar.
#[derive(Debug)]
pub struct Sidecar {
    /// The policy loaded at start (the one in force after reloads is `egress.policy()`).
    pub policy: Arc<PolicySet>,
    /// The state directory.
    pub state: StateDir,
    /// The pipeline.
    pub egress: Arc<Egress>,
    /// The identity verifier.
    pub verifier: Arc<Verifier>,
    /// The interception CA for CONNECT.
    pub ca: Arc<Ca>,
    /// The tools.
    pub sandbox: Arc<Sandbox>,
    /// The metrics `/metrics` shows.
    pub metrics: Arc<Metrics>,
    /// Reloads the policy and tools while serving.
    pub reloader: Arc<Reloader>,
}

impl Sidecar {
    /// Loads and opens everything, with the system resolver.
    pub fn open(options: &Options) -> Result<Self, StartError> {
        Self::open_with_resolver(options, Arc::new(SystemResolver))
    }

    /// As [`Sidecar::open`], resolving names through `resolver` (tests).
    pub fn open_with_resolver(
        options: &Options,
        resolver: Arc<dyn Resolver>,
    ) -> Result<Self, StartError> {
        Self::open_with(options, resolver, &mut |_| {})
    }

    /// As [`Sidecar::open`], calling `progress` as each tool becomes ready.
    pub fn open_with_progress(
        options: &Options,
        progress: &mut dyn FnMut(ToolReady<'_>),
    ) -> Result<Self, StartError> {
        Self::open_with(options, Arc::new(SystemResolver), progress)
    }

    fn open_with(
        options: &Options,
        resolver: Arc<dyn Resolver>,
        progress: &mut dyn FnMut(ToolReady<'_>),
    ) -> Result<Self, StartError> {
        let policy = Arc::new(PolicySet::load(&options.policies)?);
        for w in policy.warnings() {
            tracing::warn!("{w}");
        }
        // Loaded and validated before anything is opened, like the active set.
        let shadow = match &options.shadow {
            Some(dir) => Some(Arc::new(PolicySet::load(dir)?)),
            None => None,
        };
        let settings = policy.settings();
        if !options.connect_to.is_empty() && !settings.dev {
            return Err(StartError::ConnectToNeedsDev);
        }
        let state_path: &Path = options.state.as_deref().unwrap_or(&settings.state_dir);
        let state = StateDir::open(state_path)?;
        let secrets: Arc<dyn secrets::SecretStore> =
            Arc::from(secrets::open_store(settings, &state)?);
        let audit = AuditLog::open(&state, settings.audit.rotate_bytes)?;
        let verifier = Arc::new(Verifier::new(settings, Some(&state))?);
        let ca = Arc::new(Ca::open(&state)?);
        let overrides: HashMap<Origin, SocketAddr> = options.connect_to.iter().cloned().collect();
        let egress = Arc::new(Egress::new(
            policy.clone(),
            secrets,
            audit,
            resolver,
            overrides,
        )?);
        egress.set_shadow(shadow);
        let sandbox = Arc::new(Sandbox::open_with_progress(
            &policy,
            egress.clone(),
            &state,
            progress,
        )?);
        let reloader = Arc::new(
            Reloader::new(
                options.policies.clone(),
                state.clone(),
                egress.clone(),
                sandbox.clone(),
            )
            .with_shadow(options.shadow.clone()),
        );
        let metrics = Arc::new(Metrics::new(egress.metrics(), &reloader));
        Ok(Self {
            policy,
            state,
            egress,
            verifier,
            ca,
            sandbox,
            metrics,
            reloader,
        })
    }

    /// The API over this sidecar's tools.
    pub fn api(&self) -> Arc<Api> {
        Arc::new(Api::new(
            self.sandbox.clone(),
            self.verifier.clone(),
            self.egress.clone(),
            self.metrics.clone(),
            self.reloader.clone(),
        ))
    }

    /// The forward proxy over this sidecar's pipeline.
    pub fn proxy(&self) -> Arc<Proxy> {
        Arc::new(Proxy::new(self.egress.clone(), self.verifier.clone()).with_ca(self.ca.clone()))
    }
}

/// Parses `ORIGIN=ADDR` for `--connect-to`, e.g. `https://api.github.com=127.0.0.1:8443`.
pub fn parse_connect_to(s: &str) -> Result<(Origin, SocketAddr), String> {
    let (origin, addr) = s.rsplit_once('=').ok_or_else(|| {
        format!("`{s}`: expected ORIGIN=ADDR, e.g. https://api.github.com=127.0.0.1:8443")
    })?;
    let origin = Origin::parse(origin).map_err(|e| format!("`{s}`: {e}"))?;
    let addr = addr
        .parse()
        .map_err(|_| format!("`{s}`: `{addr}` is not an IP:port address"))?;
    Ok((origin, addr))
}
