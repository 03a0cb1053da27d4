//! `behalf ca export`: the interception CA certificate, for clients to trust per process.

use std::io::Write;
use std::path::Path;

use clap::Subcommand;

use super::exit;
use crate::proxy::ca::{Ca, CaError};

/// CA subcommands.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Print the interception CA certificate (PEM), creating the CA on first use. Trust it per
    /// process (e.g. `CURL_CA_BUNDLE`), never system-wide: see docs/https.md.
    Export,
}

/// Runs a CA subcommand.
pub fn run(cmd: CaCommand, policies: &Path, state: Option<&Path>) -> u8 {
    let CaCommand::Export = cmd;
    let (_, state) = match super::load_with_state(policies, state) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let ca = match Ca::open(&state) {
        Ok(ca) => ca,
        Err(e) => {
            eprintln!("error: {e}");
            return match e {
                CaError::Build(_) | CaError::Random => exit::INTERNAL,
                _ => exit::CONFIG,
            };
        }
    };
    let mut out = std::io::stdout().lock();
    match out
        .write_all(ca.cert_pem().as_bytes())
        .and_then(|()| out.flush())
    {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("error: cannot write the certificate to stdout: {e}");
            exit::INTERNAL
        }
    }
}
