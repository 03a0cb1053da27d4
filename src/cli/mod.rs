//! The `behalf` command line. Each subcommand returns an exit code:
//! 0 success, 1 a negative answer (deny, failed verification, failed policy test), 2 usage,
//! 64 bad configuration (named file and line), 70 internal error.

mod audit;
mod ca;
mod demo;
mod policy;
mod secret;
mod serve;
mod token;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::policy::PolicySet;
use crate::state::StateDir;

/// Exit codes shared by every subcommand.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// A negative answer: deny, failed verification, failed policy test.
    pub const NEGATIVE: u8 = 1;
    /// Bad command-line input.
    pub const USAGE: u8 = 2;
    /// Bad configuration (the named file and line say where).
    pub const CONFIG: u8 = 64;
    /// An internal error.
    pub const INTERNAL: u8 = 70;
}

/// behalf: run agent tools in sandboxes that hold no secrets, and inject each user's
/// credential at the egress boundary.
#[derive(Debug, Parser)]
#[command(name = "behalf", version, about, long_about = None)]
pub struct Cli {
    /// The policies directory (behalf.toml, services/, tenants/, tests/).
    #[arg(long, global = true, value_name = "DIR", default_value = "policies")]
    pub policies: PathBuf,

    /// The state directory; overrides `state_dir` in behalf.toml.
    #[arg(long, global = true, value_name = "DIR")]
    pub state: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole story on loopback: mock APIs, the sidecar in dev mode, two tenants and
    /// three users, each step checked (exit 1 if any expectation fails).
    Demo,
    /// Author and review policy files.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Development identity tokens (dev mode only).
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Manage stored credentials (values are read from stdin, never from arguments).
    #[command(subcommand)]
    Secret(secret::SecretCommand),
    /// Check the audit log's chain.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// The interception CA.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Run the sidecar: the tool API and the forward proxy, until SIGINT or SIGTERM. Changes to
    /// the policies and tools directories are reloaded live (also on SIGHUP); behalf.toml
    /// changes need a restart.
    Serve(serve::ServeArgs),
}

/// Runs a parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> u8 {
    match cli.command {
        Command::Demo => demo::run(),
        Command::Policy(cmd) => policy::run(cmd, &cli.policies),
        Command::Token(cmd) => token::run(cmd, &cli.policies, cli.state.as_deref()),
        Command::Secret(cmd) => secret::run(cmd, &cli.policies, cli.state.as_deref()),
        Command::Audit(cmd) => audit::run(cmd, &cli.policies, cli.state.as_deref()),
        Command::Ca(cmd) => ca::run(cmd, &cli.policies, cli.state.as_deref()),
        Command::Serve(args) => serve::run(args, &cli.policies, cli.state.as_deref()),
    }
}

/// Loads a policy set, printing every diagnostic on failure (exit 64) and warnings on success.
pub(crate) fn load_policy(dir: &Path) -> Result<PolicySet, u8> {
    match PolicySet::load(dir) {
        Ok(policy) => {
            for w in policy.warnings() {
                eprintln!("{w}");
            }
            Ok(policy)
        }
        Err(e) => {
            eprintln!("{e}");
            Err(exit::CONFIG)
        }
    }
}

/// Loads the policy set and opens its state directory (see [`load_policy`], [`open_state`]).
pub(crate) fn load_with_state(
    policies: &Path,
    state: Option<&Path>,
) -> Result<(PolicySet, StateDir), u8> {
    let policy = load_policy(policies)?;
    let state = open_state(&policy, state)?;
    Ok((policy, state))
}

/// Opens the state directory: `--state` if given, else `state_dir` from behalf.toml.
/// A directory that cannot be used is a configuration error (exit 64).
pub(crate) fn open_state(policy: &PolicySet, state: Option<&Path>) -> Result<StateDir, u8> {
    let path = state.unwrap_or(&policy.settings().state_dir);
    StateDir::open(path).map_err(|e| {
        eprintln!("error: {e}");
        exit::CONFIG
    })
}
