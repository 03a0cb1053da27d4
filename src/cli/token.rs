//! `behalf token mint`: development identity tokens (dev mode only).

use std::time::Duration;

use clap::{Args, Subcommand};

use std::path::Path;

use super::exit;
use crate::identity::dev::{self, MintError};
use crate::principal::Principal;

/// Token subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a development identity token for a principal (requires `dev = true`).
    Mint(MintArgs),
}

/// Arguments of `behalf token mint`.
#[derive(Debug, Args)]
pub struct MintArgs {
    /// The tenant the token speaks for.
    #[arg(long)]
    tenant: String,
    /// The user (`sub`).
    #[arg(long)]
    user: String,
    /// A group the user is in (repeatable).
    #[arg(long = "group", value_name = "GROUP")]
    groups: Vec<String>,
    /// How long the token lives (at most 24h), e.g. 15m, 1h.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Mark the token as an admin of --tenant, for the admin API (`/v1/admin/secrets`): it may
    /// set, list and delete that tenant's credentials. Development mode only, like every
    /// minted token.
    #[arg(long)]
    admin: bool,
}

/// Runs a token subcommand.
pub fn run(cmd: TokenCommand, policies: &Path, state: Option<&Path>) -> u8 {
    let TokenCommand::Mint(args) = cmd;
    let principal = match Principal::parse(&args.tenant, &args.user, &args.groups) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let policy = match super::load_policy(policies) {
        Ok(p) => p,
        Err(code) => return code,
    };
    if !policy.settings().dev {
        eprintln!("error: {}", MintError::NotDev);
        return exit::CONFIG;
    }
    let state = match super::open_state(&policy, state) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mint = if args.admin {
        dev::mint_admin
    } else {
        dev::mint
    };
    match mint(
        true,
        &state,
        &principal.tenant,
        &principal.user,
        &principal.groups,
        args.ttl,
    ) {
        Ok(token) => {
            println!("{token}");
            exit::OK
        }
        Err(e @ MintError::Ttl) => {
            eprintln!("error: {e}");
            exit::USAGE
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::CONFIG
        }
    }
}
