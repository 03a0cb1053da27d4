//! `behalf secret set|list|rm|disable|enable`: manage stored credentials.
//!
//! # Security
//!
//! Values are read from stdin only, never from arguments (which other local users can see in
//! the process list and which shells keep in history), and are never printed.

use std::io::{self, IsTerminal, Read};
use std::path::Path;

use clap::Subcommand;
use zeroize::Zeroizing;

use super::exit;
use crate::principal::TenantId;
use crate::secrets::{self, MAX_SECRET_LEN, Secret, SecretError, SecretId, SecretStore};

/// Secret subcommands. A secret is addressed as `TENANT/NAME` (shared by the tenant, scope
/// `tenant`) or `TENANT/USER/NAME` (one user's, scope `user`).
#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Store a secret, reading its value from stdin (never from arguments).
    ///
    /// One trailing newline is removed, so `echo "$TOKEN" | behalf secret set
    /// acme/alice/github_token` stores just the token. Empty values are refused. Replacing a
    /// value keeps the secret's enabled state; a new secret starts enabled.
    Set {
        /// TENANT/NAME or TENANT/USER/NAME.
        id: String,
    },
    /// List secrets: name, scope, state and last update; never values.
    List {
        /// Only this tenant's secrets.
        tenant: Option<String>,
    },
    /// Delete a secret (exit 1 if there is none).
    Rm {
        /// TENANT/NAME or TENANT/USER/NAME.
        id: String,
    },
    /// Disable a secret without deleting it: it is never injected until enabled again.
    Disable {
        /// TENANT/NAME or TENANT/USER/NAME.
        id: String,
    },
    /// Enable a disabled secret.
    Enable {
        /// TENANT/NAME or TENANT/USER/NAME.
        id: String,
    },
}

/// Runs a secret subcommand.
pub fn run(cmd: SecretCommand, policies: &Path, state: Option<&Path>) -> u8 {
    // Arguments first: a typo is a usage error whatever the configuration.
    let parse_id = |s: &str| {
        SecretId::parse(s).map_err(|e| {
            eprintln!("error: {e}");
            exit::USAGE
        })
    };
    let action = match &cmd {
        SecretCommand::Set { id } => parse_id(id).map(Action::Set),
        SecretCommand::Rm { id } => parse_id(id).map(Action::Remove),
        SecretCommand::Disable { id } => parse_id(id).map(|id| Action::Enable(id, false)),
        SecretCommand::Enable { id } => parse_id(id).map(|id| Action::Enable(id, true)),
        SecretCommand::List { tenant } => match tenant.as_deref().map(TenantId::parse) {
            None => Ok(Action::List(None)),
            Some(Ok(t)) => Ok(Action::List(Some(t))),
            Some(Err(e)) => {
                eprintln!("error: {e}");
                Err(exit::USAGE)
            }
        },
    };
    let action = match action {
        Ok(a) => a,
        Err(code) => return code,
    };
    // Read the value before opening anything, so an empty stdin fails fast.
    let value = match &action {
        Action::Set(id) => match read_value(io::stdin().lock(), id) {
            Ok(v) => Some(v),
            Err(msg) => {
                eprintln!("error: {msg}");
                return exit::USAGE;
            }
        },
        _ => None,
    };
    let (policy, state) = match super::load_with_state(policies, state) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let store = match secrets::open_store(policy.settings(), &state) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let result = match action {
        Action::Set(id) => {
            // `value` is Some for Set, by construction above.
            let value = value.expect("a value was read for set");
            store
                .set(&id, &value)
                .map(|()| println!("stored {id} (scope {})", scope(&id)))
        }
        Action::Remove(id) => store.remove(&id).map(|()| println!("removed {id}")),
        Action::Enable(id, on) => store.set_enabled(&id, on).map(|()| {
            println!("{} {id}", if on { "enabled" } else { "disabled" });
        }),
        Action::List(tenant) => list(&*store, tenant.as_ref()),
    };
    match result {
        Ok(()) => exit::OK,
        Err(e) => fail(&e),
    }
}

enum Action {
    Set(SecretId),
    Remove(SecretId),
    Enable(SecretId, bool),
    List(Option<TenantId>),
}

fn scope(id: &SecretId) -> &'static str {
    match id.namespace.user() {
        Some(_) => "user",
        None => "tenant",
    }
}

/// Prints the error and picks the exit code: 1 for a missing secret, 2 for a refused value,
/// 64 for configuration and state an operator must fix, 70 otherwise.
fn fail(e: &SecretError) -> u8 {
    eprintln!("error: {e}");
    match e {
        SecretError::NotFound { .. } => exit::NEGATIVE,
        SecretError::InvalidValue { .. } => exit::USAGE,
        e if e.is_config() => exit::CONFIG,
        _ => exit::INTERNAL,
    }
}

/// Reads the value from `input`: at most [`MAX_SECRET_LEN`] bytes, one trailing `\n` or
/// `\r\n` removed, not empty.
fn read_value(input: impl Read, id: &SecretId) -> Result<Secret, String> {
    if io::stdin().is_terminal() {
        eprintln!("enter the value of {id}, then press Ctrl-D (it will echo; prefer a pipe)");
    }
    // Reserved whole (the cap, a CR LF and one byte to detect overflow) so that reading never
    // reallocates and leaves an unzeroised copy behind.
    let cap = MAX_SECRET_LEN + 3;
    let mut buf = Zeroizing::new(Vec::with_capacity(cap));
    input
        .take(cap as u64)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read the value from stdin: {e}"))?;
    let newline = if buf.ends_with(b"\r\n") {
        2
    } else {
        usize::from(buf.ends_with(b"\n"))
    };
    let len = buf.len() - newline;
    buf.truncate(len);
    if buf.is_empty() {
        return Err(format!(
            "no value on stdin; pipe it in, e.g. `printf %s \"$TOKEN\" | behalf secret set {id}`"
        ));
    }
    if buf.len() > MAX_SECRET_LEN {
        return Err(format!(
            "the value is over the limit of {MAX_SECRET_LEN} bytes"
        ));
    }
    Ok(Secret::new(std::mem::take(&mut *buf)))
}

fn list(store: &dyn SecretStore, tenant: Option<&TenantId>) -> Result<(), SecretError> {
    let infos = store.list(tenant)?;
    if infos.is_empty() {
        match tenant {
            Some(t) => eprintln!("no secrets for tenant {t} ({} backend)", store.backend()),
            None => eprintln!("no secrets ({} backend)", store.backend()),
        }
        return Ok(());
    }
    let width = infos
        .iter()
        .map(|i| i.id.to_string().len())
        .max()
        .unwrap_or(0)
        .max(4);
    println!("{:width$}  SCOPE   STATE     UPDATED", "NAME");
    for info in infos {
        let updated = info.updated.map_or_else(
            || "-".to_owned(),
            |t| humantime::format_rfc3339_seconds(t).to_string(),
        );
        let state = if info.enabled { "enabled" } else { "disabled" };
        println!(
            "{:width$}  {:6}  {state:8}  {updated}",
            info.id.to_string(),
            scope(&info.id)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(input: &[u8]) -> Result<Secret, String> {
        read_value(input, &SecretId::parse("acme/x").unwrap())
    }

    #[test]
    fn strips_exactly_one_trailing_newline() {
        assert_eq!(read(b"tok\n").unwrap().expose(), b"tok");
        assert_eq!(read(b"tok\r\n").unwrap().expose(), b"tok");
        assert_eq!(read(b"tok\n\n").unwrap().expose(), b"tok\n");
        assert_eq!(read(b"tok").unwrap().expose(), b"tok");
        assert_eq!(read(b" tok ").unwrap().expose(), b" tok ");
    }

    #[test]
    fn refuses_empty_and_oversized_values() {
        assert!(read(b"").unwrap_err().contains("no value"));
        assert!(read(b"\n").unwrap_err().contains("no value"));
        assert!(read(&vec![b'x'; MAX_SECRET_LEN]).is_ok());
        assert!(
            read(&vec![b'x'; MAX_SECRET_LEN + 1])
                .unwrap_err()
                .contains("limit")
        );
    }
}
