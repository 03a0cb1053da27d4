//! The secret store: each tenant's and each user's named credentials (DESIGN.md "Secrets").
//!
//! [`SecretStore`] is the seam; [`open_store`] picks the backend named in `behalf.toml`:
//!
//! - [`file`](mod@file): one AES-256-GCM encrypted file, `state_dir/secrets.enc` (read-write).
//! - [`env`](mod@env): `BEHALF_SECRET__<tenant>__[<user>__]<name>` environment variables (read-only).
//! - [`dir`]: a mounted folder `<root>/<tenant>/[<user>/]<name>` (read-only).
//!
//! A credential lives in a [`Namespace`] (a tenant, or a user within a tenant) under a
//! [`CredentialName`]; the pair is its [`SecretId`]. Values are [`Secret`]s, which never print.
//! [`structured`] parses the JSON credentials used by SigV4 and OAuth2.
//!
//! # Security
//!
//! - A lookup names the namespace explicitly, and backends key records by the whole
//!   `(namespace, name)` pair, so one user's `github_token` is never another's, nor the
//!   tenant's. In the file backend the pair is also the AEAD associated data, so a record moved
//!   to another namespace inside the file fails to decrypt.
//! - A disabled secret is never returned: [`SecretStore::get`] fails with
//!   [`SecretError::Disabled`].
//! - No error, log line or `Debug` output contains a value.

pub mod dir;
pub mod env;
pub mod file;
mod secret;
pub mod structured;

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::SystemTime;

pub use dir::DirStore;
pub use env::EnvStore;
pub use file::FileStore;
pub use secret::{MAX_SECRET_LEN, Secret};
pub use structured::{OAuth2Credentials, SigV4Credentials};

use crate::policy::service::{CredentialName, CredentialScope};
use crate::policy::settings::{Backend, Settings};
use crate::principal::{TenantId, UserId};
use crate::state::{StateDir, StateError};

/// Whose credentials: a tenant's shared ones, or one user's within a tenant.
///
/// Ordered by tenant, then the tenant's own namespace before its users'.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Namespace {
    /// `(tenant)`: credentials with scope `tenant`.
    Tenant(TenantId),
    /// `(tenant, user)`: credentials with scope `user`.
    User(TenantId, UserId),
}

impl Namespace {
    /// The tenant the namespace belongs to.
    pub fn tenant(&self) -> &TenantId {
        match self {
            Self::Tenant(t) | Self::User(t, _) => t,
        }
    }

    /// The user, for a user namespace.
    pub fn user(&self) -> Option<&UserId> {
        match self {
            Self::Tenant(_) => None,
            Self::User(_, u) => Some(u),
        }
    }

    /// The credential scope this namespace serves.
    pub fn scope(&self) -> CredentialScope {
        match self {
            Self::Tenant(_) => CredentialScope::Tenant,
            Self::User(..) => CredentialScope::User,
        }
    }

    /// The unambiguous encoding of `(namespace, name)`: a scope tag (`T` or `U`), then each
    /// component (tenant, user if any, name) as a big-endian `u32` length and its bytes.
    ///
    /// # Security
    ///
    /// Used as associated data and as a lookup key. Because every component carries its
    /// length, no two different pairs encode alike (`acme`/`a/b` vs `acme/a`/`b`).
    pub fn encode(&self, name: &CredentialName) -> Vec<u8> {
        fn put(out: &mut Vec<u8>, s: &str) {
            // Ids and names are at most 128 bytes, so the length always fits.
            out.extend_from_slice(&(s.len() as u32).to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        let mut out = Vec::with_capacity(16 + 3 * 128);
        match self {
            Self::Tenant(t) => {
                out.push(b'T');
                put(&mut out, t.as_str());
            }
            Self::User(t, u) => {
                out.push(b'U');
                put(&mut out, t.as_str());
                put(&mut out, u.as_str());
            }
        }
        put(&mut out, name.as_str());
        out
    }
}

impl Ord for Namespace {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.tenant(), self.user()).cmp(&(other.tenant(), other.user()))
    }
}

impl PartialOrd for Namespace {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Namespace {
    /// `tenant` or `tenant/user`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tenant(t) => write!(f, "{t}"),
            Self::User(t, u) => write!(f, "{t}/{u}"),
        }
    }
}

/// A credential's full address: its namespace and its name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretId {
    /// Whose it is.
    pub namespace: Namespace,
    /// Its name within the namespace.
    pub name: CredentialName,
}

impl SecretId {
    /// Builds an id from its parts.
    pub fn new(namespace: Namespace, name: CredentialName) -> Self {
        Self { namespace, name }
    }

    /// Parses `TENANT/NAME` (scope tenant) or `TENANT/USER/NAME` (scope user), each part a
    /// validated id.
    pub fn parse(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('/').collect();
        let name = |n: &str| CredentialName::parse(n);
        let tenant = |t: &str| TenantId::parse(t).map_err(|e| e.to_string());
        match parts[..] {
            [t, n] => Ok(Self::new(Namespace::Tenant(tenant(t)?), name(n)?)),
            [t, u, n] => Ok(Self::new(
                Namespace::User(tenant(t)?, UserId::parse(u).map_err(|e| e.to_string())?),
                name(n)?,
            )),
            _ => Err(format!(
                "`{s}` must be TENANT/NAME (a tenant credential) or TENANT/USER/NAME (a user's)"
            )),
        }
    }
}

impl fmt::Display for SecretId {
    /// `tenant/name` or `tenant/user/name`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What `list` reports about a secret: never its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretInfo {
    /// Whose and which.
    pub id: SecretId,
    /// Whether [`SecretStore::get`] would return it.
    pub enabled: bool,
    /// When its value or state last changed, where the backend knows (the `env` backend does
    /// not).
    pub updated: Option<SystemTime>,
}

/// Why a secret operation failed. No variant carries a secret value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// No master key is configured, outside development mode.
    #[error(
        "no master key for the file secret store{}: set {env} to the base64 of 32 random bytes \
         (e.g. `openssl rand -base64 32`), or set `master_key_file` under [secrets] in \
         behalf.toml",
        store.as_ref().map(|s| format!(" {}", s.display())).unwrap_or_default()
    )]
    NoMasterKey {
        /// The env var that was looked up.
        env: String,
        /// The store file, when it already exists.
        store: Option<PathBuf>,
    },
    /// The store exists but the key file that encrypted it does not.
    #[error(
        "{} exists but its master key {} does not: restore {} from backup (or, to start over \
         and lose every stored secret, delete {})",
        store.display(), key.display(), key.display(), store.display()
    )]
    KeyMissing {
        /// The store file.
        store: PathBuf,
        /// The missing key file.
        key: PathBuf,
    },
    /// The configured master key is unreadable or not 32 bytes.
    #[error("master key from {origin}: {reason}")]
    BadMasterKey {
        /// Where it came from: `env var X` or a file path.
        origin: String,
        /// What is wrong (never the key or any part of it).
        reason: String,
    },
    /// The store's key check did not decrypt with the configured master key.
    #[error(
        "cannot decrypt {}: wrong master key? (its key check does not open with the configured \
         key; use the key it was written with)",
        path.display()
    )]
    WrongKey {
        /// The store file.
        path: PathBuf,
    },
    /// The store file is not a valid store.
    #[error("{}: not a valid secret store: {reason}", path.display())]
    Corrupt {
        /// The store file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A record failed authentication: it was modified, or moved to another namespace or name.
    #[error(
        "cannot decrypt secret {id} in {}: its record was modified or moved (a record only \
         opens under its own namespace, name and state)",
        path.display()
    )]
    Tampered {
        /// The store file.
        path: PathBuf,
        /// The record's claimed address.
        id: SecretId,
    },
    /// The secret exists but is disabled; it must not be injected.
    #[error("secret {id} is disabled (`behalf secret enable {id}` turns it back on)")]
    Disabled {
        /// The secret.
        id: SecretId,
    },
    /// No such secret (for operations on an existing secret).
    #[error("no secret {id}")]
    NotFound {
        /// The secret.
        id: SecretId,
    },
    /// The backend cannot be written.
    #[error(
        "the {backend} secret backend is read-only: change the secret where it comes from, or \
         use backend = \"file\""
    )]
    ReadOnly {
        /// The backend's name.
        backend: &'static str,
    },
    /// A value was refused before storing it.
    #[error("secret {id}: {reason}")]
    InvalidValue {
        /// The secret.
        id: SecretId,
        /// Why (never the value).
        reason: String,
    },
    /// A `dir` backend path resolves outside the root.
    #[error("{} resolves outside the secrets root {}; refusing it", path.display(), root.display())]
    Escape {
        /// The path looked up.
        path: PathBuf,
        /// The configured root.
        root: PathBuf,
    },
    /// A `dir` backend path is not a regular file, or is too large.
    #[error("{}: {reason}", path.display())]
    BadFile {
        /// The path looked up.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The `dir` backend has no `root`.
    #[error("backend \"dir\" needs `root` under [secrets] in behalf.toml")]
    NoRoot,
    /// A structured credential is not the expected JSON document.
    #[error("credential is not a valid {kind} JSON document: {reason}")]
    Malformed {
        /// `SigV4` or `OAuth2`.
        kind: &'static str,
        /// What is wrong (never a value).
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The state directory or an atomic write failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
}

impl SecretError {
    /// Whether an operator must fix the configuration or state (exit 64), as opposed to a
    /// negative answer or an internal failure.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Self::NoMasterKey { .. }
                | Self::KeyMissing { .. }
                | Self::BadMasterKey { .. }
                | Self::WrongKey { .. }
                | Self::Corrupt { .. }
                | Self::ReadOnly { .. }
                | Self::NoRoot
                | Self::State(
                    StateError::Permissions { .. }
                        | StateError::NotDir { .. }
                        | StateError::KeySize { .. }
                )
        )
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}

/// A source of named credentials.
///
/// # Security
///
/// Implementations key every value by the whole [`SecretId`], return no value for a disabled
/// secret, and never put a value in an error, a log line or `Debug` output.
pub trait SecretStore: Send + Sync + fmt::Debug {
    /// The backend's name: `file`, `env` or `dir`.
    fn backend(&self) -> &'static str;

    /// The value of `name` in `namespace`: `Ok(None)` if there is none, and
    /// [`SecretError::Disabled`] if it exists but is disabled.
    ///
    /// # Security
    ///
    /// Call this only after the policy decision allowed the request (DESIGN.md invariant 4),
    /// with the namespace of the verified principal.
    fn get(
        &self,
        namespace: &Namespace,
        name: &CredentialName,
    ) -> Result<Option<Secret>, SecretError>;

    /// Every secret, or one tenant's, sorted by id: names and state, never values.
    fn list(&self, tenant: Option<&TenantId>) -> Result<Vec<SecretInfo>, SecretError>;

    /// Stores a value, replacing any previous one (a replaced secret keeps its enabled state;
    /// a new one starts enabled).
    fn set(&self, id: &SecretId, value: &Secret) -> Result<(), SecretError> {
        let _ = (id, value);
        Err(SecretError::ReadOnly {
            backend: self.backend(),
        })
    }

    /// Replaces the value of `id` with `new` only if it is still `current`, in one locked
    /// write (compare-and-set): `Ok(false)` if another writer changed it first (or removed
    /// it). Used to store a rotated OAuth2 refresh token without losing a concurrent change.
    fn replace(&self, id: &SecretId, current: &Secret, new: &Secret) -> Result<bool, SecretError> {
        let _ = (id, current, new);
        Err(SecretError::ReadOnly {
            backend: self.backend(),
        })
    }

    /// Deletes a secret; [`SecretError::NotFound`] if there is none.
    fn remove(&self, id: &SecretId) -> Result<(), SecretError> {
        let _ = id;
        Err(SecretError::ReadOnly {
            backend: self.backend(),
        })
    }

    /// Enables or disables a secret without deleting it; [`SecretError::NotFound`] if there
    /// is none.
    fn set_enabled(&self, id: &SecretId, enabled: bool) -> Result<(), SecretError> {
        let _ = (id, enabled);
        Err(SecretError::ReadOnly {
            backend: self.backend(),
        })
    }
}

/// Opens the backend configured in `settings`, reading environment variables (the master key,
/// the `env` backend) from the process environment.
pub fn open_store(
    settings: &Settings,
    state: &StateDir,
) -> Result<Box<dyn SecretStore>, SecretError> {
    open_store_with_env(settings, state, std::env::vars_os())
}

/// [`open_store`] with the environment given explicitly, so that a caller (or a test) need not
/// mutate the process environment.
pub fn open_store_with_env(
    settings: &Settings,
    state: &StateDir,
    env: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<Box<dyn SecretStore>, SecretError> {
    match settings.secrets.backend {
        Backend::File => {
            let key = file::master_key(settings, state, env)?;
            Ok(Box::new(FileStore::open(
                state.join(file::STORE_FILE),
                &key,
            )?))
        }
        Backend::Env => Ok(Box::new(EnvStore::from_vars(env))),
        Backend::Dir => {
            let root = settings.secrets.root.as_ref().ok_or(SecretError::NoRoot)?;
            Ok(Box::new(DirStore::open(root)?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SecretId {
        SecretId::parse(s).unwrap()
    }

    #[test]
    fn encoding_is_unambiguous() {
        let n = |s| CredentialName::parse(s).unwrap();
        let t = |s| TenantId::parse(s).unwrap();
        let u = |s| UserId::parse(s).unwrap();
        let a = Namespace::Tenant(t("acme")).encode(&n("a.b"));
        let b = Namespace::Tenant(t("acme.a")).encode(&n("b"));
        assert_ne!(a, b);
        let c = Namespace::User(t("acme"), u("alice")).encode(&n("tok"));
        let d = Namespace::Tenant(t("acme")).encode(&n("tok"));
        assert_ne!(c, d);
        assert_eq!(
            d,
            [&b"T"[..], &[0, 0, 0, 4], b"acme", &[0, 0, 0, 3], b"tok"].concat()
        );
    }

    #[test]
    fn ids_sort_by_tenant_then_user() {
        let mut ids: Vec<SecretId> = ["globex/a", "acme/bob/a", "acme/z", "acme/alice/b"]
            .into_iter()
            .map(id)
            .collect();
        ids.sort();
        let sorted: Vec<String> = ids.iter().map(ToString::to_string).collect();
        assert_eq!(sorted, ["acme/z", "acme/alice/b", "acme/bob/a", "globex/a"]);
    }

    #[test]
    fn ids_parse_and_print() {
        let i = id("acme/alice/github_token");
        assert_eq!(i.namespace.user().unwrap().as_str(), "alice");
        assert_eq!(i.namespace.scope(), CredentialScope::User);
        assert_eq!(i.to_string(), "acme/alice/github_token");
        let i = id("acme/deploy_key");
        assert_eq!(i.namespace.scope(), CredentialScope::Tenant);
        assert_eq!(i.to_string(), "acme/deploy_key");
        for bad in [
            "acme",
            "acme/a/b/c",
            "../x/y",
            "acme/../x",
            "acme//x",
            "acme/.hidden",
            "",
            "acme/al ice/x",
        ] {
            assert!(SecretId::parse(bad).is_err(), "{bad}");
        }
    }
}
