//! `behalf audit verify`: check the audit log's chain.

use std::path::Path;

use clap::Subcommand;

use super::exit;
use crate::audit::{self, VerifyError};

/// Audit subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check every record's mac and the chain; exit 1 naming the first broken record.
    ///
    /// Reads the rotated files in order, then `current.jsonl`, with the key in
    /// `state_dir/audit.key`. A broken record is reported as `FILE:LINE: seq N: WHAT`.
    Verify,
}

/// Runs an audit subcommand.
pub fn run(cmd: AuditCommand, policies: &Path, state: Option<&Path>) -> u8 {
    match cmd {
        AuditCommand::Verify => verify(policies, state),
    }
}

fn verify(policies: &Path, state: Option<&Path>) -> u8 {
    let (_, state) = match super::load_with_state(policies, state) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let key = match audit::read_key(&state) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::CONFIG;
        }
    };
    match audit::verify(&state.join(audit::DIR), &key) {
        Ok(report) => {
            println!(
                "audit log verified: {} records in {} files, head seq {}",
                report.records, report.files, report.head_seq
            );
            exit::OK
        }
        Err(e @ VerifyError::Io { .. }) => {
            eprintln!("error: {e}");
            exit::CONFIG
        }
        Err(e) => {
            println!("audit log verification FAILED: {e}");
            exit::NEGATIVE
        }
    }
}
