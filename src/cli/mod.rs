//! The `behalf` command line. Each subcommand returns an exit code:
//! 0 success, 1 a negative answer (deny, failed verification, failed policy test), 2 usage,
//! 64 bad configuration (named file and line), 70 internal error.

mod policy;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
    /// Author and review policy files.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
}

/// Runs a parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> u8 {
    match cli.command {
        Command::Policy(cmd) => policy::run(cmd, &cli.policies),
    }
}
