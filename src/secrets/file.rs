//! The `file` backend: every secret in one encrypted file, `state_dir/secrets.enc`.
//!
//! The file is one JSON document (`format = "behalf-secrets/1"`):
//!
//! ```json
//! {
//!   "format": "behalf-secrets/1",
//!   "key_check": { "nonce": "<base64>", "ciphertext": "<base64>" },
//!   "records": [
//!     { "tenant": "acme", "user": "alice", "name": "github_token", "enabled": true,
//!       "updated": "2025-01-01T00:00:00Z", "nonce": "<base64>", "ciphertext": "<base64>" }
//!   ]
//! }
//! ```
//!
//! Namespaces, names, state and times are in the clear so that `list` needs no decryption;
//! values are AES-256-GCM ciphertexts (with their tag) under the master key.
//!
//! # Security
//!
//! - Each record is sealed with a fresh random 96-bit nonce every time it is written. Its
//!   associated data is a domain tag, the length-prefixed `(namespace, name)`
//!   ([`Namespace::encode`](super::Namespace::encode)) and the enabled flag, so a record moved
//!   to another namespace or name, or re-enabled by editing the file, fails to decrypt.
//! - `key_check` seals a fixed text under its own associated data; opening the store checks it,
//!   so a wrong master key is reported once, naming the file, before any secret is used.
//! - Writers take an exclusive lock on `secrets.lock`, re-read the file, apply their change and
//!   replace the file by temp file + fsync + rename, so concurrent writers (other processes
//!   included) lose nothing and a crash leaves the previous file intact.
//! - Readers notice a file replaced by another process (by its inode, size and times) and
//!   reload it; values are decrypted only by [`SecretStore::get`], one at a time.
//!
//! Master key (see [`master_key`]): `master_key_file` if set (32 raw bytes, or base64 text of
//! 32 bytes), else the env var named by `master_key_env` (base64 of 32 bytes), else, only with
//! `dev = true`, `state_dir/master.key` generated on first use.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{MAX_SECRET_LEN, Namespace, Secret, SecretError, SecretId, SecretInfo, SecretStore};
use crate::policy::service::CredentialName;
use crate::policy::settings::Settings;
use crate::principal::{TenantId, UserId};
use crate::state::{StateDir, write_atomic};

/// The store's file name in `state_dir`.
pub const STORE_FILE: &str = "secrets.enc";
/// The development master key's file name in `state_dir`.
pub const DEV_KEY_FILE: &str = "master.key";
/// The file format this code reads and writes.
const FORMAT: &str = "behalf-secrets/1";
/// Associated data and plaintext of the key check.
const KEY_CHECK: &[u8] = b"behalf-secrets/1 key-check";
/// Prefix of every record's associated data (distinct from [`KEY_CHECK`]).
const RECORD_AAD: &[u8] = b"behalf-secrets/1 record\0";

// === impl MasterKey ===

/// The 256-bit key that encrypts the store.
///
/// # Security
///
/// Zeroised on drop; `Debug` prints `MasterKey(***)`.
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl MasterKey {
    /// Wraps raw key bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// Decodes the base64 of 32 bytes (standard alphabet, padded; surrounding whitespace
    /// ignored). `origin` names where the text came from, for the error.
    pub fn from_base64(text: &[u8], origin: &str) -> Result<Self, SecretError> {
        let bad = |reason: String| SecretError::BadMasterKey {
            origin: origin.to_owned(),
            reason,
        };
        let text = text.trim_ascii();
        if text.is_empty() {
            return Err(bad("is empty; expected the base64 of 32 random bytes \
                            (e.g. `openssl rand -base64 32`)"
                .into()));
        }
        // The decoder's own message quotes the offending byte, which is part of the key.
        let bytes = Zeroizing::new(BASE64.decode(text).map_err(|_| {
            bad(
                "is not valid base64; expected the base64 of 32 random bytes \
                 (e.g. `openssl rand -base64 32`)"
                    .into(),
            )
        })?);
        let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            bad(format!(
                "decodes to {} bytes; expected 32 (e.g. `openssl rand -base64 32`)",
                bytes.len()
            ))
        })?;
        Ok(Self::new(key))
    }

    /// Reads a key file: exactly 32 bytes are the raw key; anything else is read as base64.
    pub fn from_file(path: &Path) -> Result<Self, SecretError> {
        // Reserved beyond the read limit, so that reading never reallocates and leaves a copy.
        let mut bytes = Zeroizing::new(Vec::with_capacity(4096 + 64));
        File::open(path)
            .and_then(|f| f.take(4096).read_to_end(&mut bytes))
            .map_err(|e| SecretError::BadMasterKey {
                origin: path.display().to_string(),
                reason: format!("cannot read it: {e}"),
            })?;
        if let Ok(mode) = fs::metadata(path).map(|m| m.permissions().mode())
            && mode & 0o077 != 0
        {
            tracing::warn!(
                file = %path.display(),
                "master key file has mode {:03o}; group and others should have no access",
                mode & 0o777
            );
        }
        match <[u8; 32]>::try_from(bytes.as_slice()) {
            Ok(raw) => Ok(Self::new(raw)),
            Err(_) => Self::from_base64(&bytes, &path.display().to_string()),
        }
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(***)")
    }
}

/// Finds the master key as configured (see the module docs for the order).
///
/// Fails naming what to set when there is none outside development mode, and naming both files
/// when the store exists but its key file does not.
pub fn master_key(
    settings: &Settings,
    state: &StateDir,
    env: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<MasterKey, SecretError> {
    let store = state.join(STORE_FILE);
    let store_exists = fs::symlink_metadata(&store).is_ok();
    if let Some(path) = &settings.secrets.master_key_file {
        return match fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && store_exists => {
                Err(SecretError::KeyMissing {
                    store,
                    key: path.clone(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(SecretError::BadMasterKey {
                origin: path.display().to_string(),
                reason: "does not exist (`master_key_file` in behalf.toml names it); create it \
                         with `openssl rand -base64 32`"
                    .into(),
            }),
            _ => MasterKey::from_file(path),
        };
    }
    let var = &settings.secrets.master_key_env;
    if let Some((_, value)) = env.into_iter().find(|(k, _)| k == var.as_str()) {
        let value = Zeroizing::new(value.into_vec());
        return MasterKey::from_base64(&value, &format!("env var {var}"));
    }
    if settings.dev {
        let path = state.join(DEV_KEY_FILE);
        if store_exists && fs::symlink_metadata(&path).is_err() {
            return Err(SecretError::KeyMissing { store, key: path });
        }
        tracing::debug!(file = %path.display(), "using the development master key");
        return Ok(MasterKey(state.generated_key(DEV_KEY_FILE)?));
    }
    Err(SecretError::NoMasterKey {
        env: var.clone(),
        store: store_exists.then_some(store),
    })
}

// === the file's shape ===

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    format: String,
    key_check: RawSealed,
    records: Vec<RawRecord>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSealed {
    nonce: String,
    ciphertext: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecord {
    tenant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    name: String,
    enabled: bool,
    updated: String,
    nonce: String,
    ciphertext: String,
}

/// A nonce and the ciphertext it sealed (with the tag).
#[derive(Clone)]
struct Sealed {
    nonce: [u8; NONCE_LEN],
    ciphertext: Vec<u8>,
}

impl Sealed {
    fn decode(nonce: &str, ciphertext: &str) -> Result<Self, String> {
        let nonce = BASE64
            .decode(nonce)
            .ok()
            .and_then(|n| <[u8; NONCE_LEN]>::try_from(n).ok())
            .ok_or("`nonce` is not the base64 of 12 bytes")?;
        let ciphertext = BASE64
            .decode(ciphertext)
            .map_err(|_| "`ciphertext` is not base64")?;
        Ok(Self { nonce, ciphertext })
    }
}

#[derive(Clone)]
struct Record {
    enabled: bool,
    updated: SystemTime,
    sealed: Sealed,
}

/// Identifies one version of the file: a rename gives a new inode, a rewrite new times.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &fs::Metadata) -> Self {
        Self {
            dev: m.dev(),
            ino: m.ino(),
            len: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

/// The store as last read: `stamp` is `None` when the file does not exist.
#[derive(Default)]
struct Snapshot {
    stamp: Option<Stamp>,
    key_check: Option<Sealed>,
    records: BTreeMap<SecretId, Record>,
}

fn record_aad(id: &SecretId, enabled: bool) -> Vec<u8> {
    let mut aad = RECORD_AAD.to_vec();
    aad.extend_from_slice(&id.namespace.encode(&id.name));
    aad.push(u8::from(enabled));
    aad
}

// === impl FileStore ===

/// The encrypted, read-write file backend.
pub struct FileStore {
    path: PathBuf,
    lock_path: PathBuf,
    key: LessSafeKey,
    rng: SystemRandom,
    cache: Mutex<Snapshot>,
}

impl fmt::Debug for FileStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl FileStore {
    /// Opens the store at `path` (which need not exist yet), checking the key against it.
    /// Writers lock `path` with its extension replaced by `lock` (`secrets.lock`).
    pub fn open(path: PathBuf, key: &MasterKey) -> Result<Self, SecretError> {
        // A 32-byte key is the only thing UnboundKey::new checks.
        let key = UnboundKey::new(&AES_256_GCM, &key.0[..]).expect("AES-256 takes a 32-byte key");
        let store = Self {
            lock_path: path.with_extension("lock"),
            path,
            key: LessSafeKey::new(key),
            rng: SystemRandom::new(),
            cache: Mutex::new(Snapshot::default()),
        };
        let snapshot = store.read()?;
        *store.cache() = snapshot;
        Ok(store)
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn cache(&self) -> MutexGuard<'_, Snapshot> {
        // The snapshot is replaced whole, so a panic elsewhere cannot leave it half-written.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Sealed, SecretError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| SecretError::Random)?;
        // Reserved up front so that appending the tag does not reallocate and leave a copy of
        // the plaintext behind.
        let mut buf = Zeroizing::new(Vec::with_capacity(plaintext.len() + AES_256_GCM.tag_len()));
        buf.extend_from_slice(plaintext);
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut *buf,
            )
            // ring refuses only inputs over ~64 GiB; values are capped at MAX_SECRET_LEN.
            .expect("AES-GCM input within limits");
        Ok(Sealed {
            nonce,
            ciphertext: buf.to_vec(),
        })
    }

    /// Decrypts in place; `None` if authentication fails.
    fn unseal(&self, sealed: &Sealed, aad: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let mut buf = Zeroizing::new(sealed.ciphertext.clone());
        let len = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(sealed.nonce),
                Aad::from(aad),
                &mut buf[..],
            )
            .ok()?
            .len();
        buf.truncate(len);
        Some(buf)
    }

    fn corrupt(&self, reason: impl Into<String>) -> SecretError {
        SecretError::Corrupt {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    /// The store's path holds something else: a directory (as a volume mount of a missing
    /// file leaves), a FIFO or a device.
    fn not_a_file(&self, meta: &fs::Metadata) -> SecretError {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        let what = if t.is_dir() {
            "a directory"
        } else if t.is_fifo() {
            "a FIFO"
        } else if t.is_socket() {
            "a socket"
        } else if t.is_block_device() || t.is_char_device() {
            "a device"
        } else {
            "something else"
        };
        self.corrupt(format!(
            "it is {what}, not a regular file: move it aside, then restore {STORE_FILE} from \
             backup, or leave the path free to start an empty store (`behalf secret set` \
             creates it)"
        ))
    }

    /// Reads and checks the file from disk (the key check, every record's fields); decrypts
    /// no value.
    fn read(&self) -> Result<Snapshot, SecretError> {
        // Looked at before opening: opening a FIFO would block (and hang startup).
        match fs::metadata(&self.path) {
            Ok(m) if !m.is_file() => return Err(self.not_a_file(&m)),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Snapshot::default()),
            Err(e) => return Err(SecretError::io(&self.path)(e)),
        }
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Snapshot::default()),
            Err(e) => return Err(SecretError::io(&self.path)(e)),
        };
        let meta = file.metadata().map_err(SecretError::io(&self.path))?;
        if !meta.is_file() {
            return Err(self.not_a_file(&meta));
        }
        let mut bytes = Vec::with_capacity(meta.len().try_into().unwrap_or(0));
        file.read_to_end(&mut bytes)
            .map_err(SecretError::io(&self.path))?;
        let doc: Doc = serde_json::from_slice(&bytes).map_err(|e| self.corrupt(e.to_string()))?;
        if doc.format != FORMAT {
            return Err(self.corrupt(format!(
                "format is `{}`; this version of behalf reads `{FORMAT}`",
                doc.format
            )));
        }
        let key_check = Sealed::decode(&doc.key_check.nonce, &doc.key_check.ciphertext)
            .map_err(|e| self.corrupt(format!("key_check: {e}")))?;
        match self.unseal(&key_check, KEY_CHECK) {
            Some(text) if text.as_slice() == KEY_CHECK => {}
            _ => {
                return Err(SecretError::WrongKey {
                    path: self.path.clone(),
                });
            }
        }
        let mut records = BTreeMap::new();
        for (i, raw) in doc.records.into_iter().enumerate() {
            let at = |e: String| self.corrupt(format!("record {}: {e}", i + 1));
            let tenant = TenantId::parse(&raw.tenant).map_err(|e| at(e.to_string()))?;
            let namespace = match &raw.user {
                None => Namespace::Tenant(tenant),
                Some(u) => {
                    Namespace::User(tenant, UserId::parse(u).map_err(|e| at(e.to_string()))?)
                }
            };
            let id = SecretId::new(namespace, CredentialName::parse(&raw.name).map_err(at)?);
            let updated = humantime::parse_rfc3339(&raw.updated)
                .map_err(|e| at(format!("`updated`: {e}")))?;
            let sealed = Sealed::decode(&raw.nonce, &raw.ciphertext).map_err(at)?;
            let record = Record {
                enabled: raw.enabled,
                updated,
                sealed,
            };
            if records.insert(id.clone(), record).is_some() {
                return Err(at(format!("a second record for {id}")));
            }
        }
        tracing::debug!(file = %self.path.display(), records = records.len(), "secret store read");
        Ok(Snapshot {
            stamp: Some(Stamp::of(&meta)),
            key_check: Some(key_check),
            records,
        })
    }

    /// The current snapshot, re-read if another writer replaced the file since.
    fn fresh(&self) -> Result<MutexGuard<'_, Snapshot>, SecretError> {
        let mut cache = self.cache();
        let now = match fs::metadata(&self.path) {
            Ok(m) => Some(Stamp::of(&m)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(SecretError::io(&self.path)(e)),
        };
        if now != cache.stamp {
            *cache = self.read()?;
        }
        Ok(cache)
    }

    /// Applies `change` under the exclusive lock to a fresh read of the file, and writes the
    /// result if `change` says it changed something.
    fn update(
        &self,
        change: impl FnOnce(&mut BTreeMap<SecretId, Record>) -> Result<bool, SecretError>,
    ) -> Result<(), SecretError> {
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&self.lock_path)
            .map_err(SecretError::io(&self.lock_path))?;
        lock.lock().map_err(SecretError::io(&self.lock_path))?;
        // Re-read under the lock: another process may have written since our last read.
        let mut snapshot = self.read()?;
        if !change(&mut snapshot.records)? {
            return Ok(());
        }
        let key_check = match snapshot.key_check.take() {
            Some(k) => k,
            None => self.seal(KEY_CHECK, KEY_CHECK)?,
        };
        let bytes = encode(&key_check, &snapshot.records);
        self.remove_stale_temp_files();
        write_atomic(&self.path, &bytes)?;
        // Still under the lock, so the file on disk is the one just written.
        snapshot.stamp = Some(Stamp::of(
            &fs::metadata(&self.path).map_err(SecretError::io(&self.path))?,
        ));
        snapshot.key_check = Some(key_check);
        *self.cache() = snapshot;
        drop(lock); // closing the lock file releases the lock
        Ok(())
    }

    /// Deletes temp files left by a writer that crashed. Called under the lock, when no other
    /// writer of this store can be between creating and renaming its temp file.
    fn remove_stale_temp_files(&self) {
        let (Some(dir), Some(name)) = (self.path.parent(), self.path.file_name()) else {
            return;
        };
        let prefix = format!(".{}.tmp-", name.to_string_lossy());
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                tracing::info!(file = %entry.path().display(), "removing a stale temp file");
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    fn tampered(&self, id: &SecretId) -> SecretError {
        SecretError::Tampered {
            path: self.path.clone(),
            id: id.clone(),
        }
    }
}

fn encode(key_check: &Sealed, records: &BTreeMap<SecretId, Record>) -> Vec<u8> {
    let doc = Doc {
        format: FORMAT.into(),
        key_check: RawSealed {
            nonce: BASE64.encode(key_check.nonce),
            ciphertext: BASE64.encode(&key_check.ciphertext),
        },
        records: records
            .iter()
            .map(|(id, r)| RawRecord {
                tenant: id.namespace.tenant().to_string(),
                user: id.namespace.user().map(ToString::to_string),
                name: id.name.to_string(),
                enabled: r.enabled,
                updated: humantime::format_rfc3339_seconds(r.updated).to_string(),
                nonce: BASE64.encode(r.sealed.nonce),
                ciphertext: BASE64.encode(&r.sealed.ciphertext),
            })
            .collect(),
    };
    // Strings, bools and lists always serialise.
    let mut bytes = serde_json::to_vec_pretty(&doc).expect("the store document serialises");
    bytes.push(b'\n');
    bytes
}

impl SecretStore for FileStore {
    fn backend(&self) -> &'static str {
        "file"
    }

    fn get(
        &self,
        namespace: &Namespace,
        name: &CredentialName,
    ) -> Result<Option<Secret>, SecretError> {
        let id = SecretId::new(namespace.clone(), name.clone());
        let record = match self.fresh()?.records.get(&id) {
            None => return Ok(None),
            Some(r) => r.clone(),
        };
        if !record.enabled {
            return Err(SecretError::Disabled { id });
        }
        let mut plain = self
            .unseal(&record.sealed, &record_aad(&id, true))
            .ok_or_else(|| self.tampered(&id))?;
        tracing::debug!(secret = %id, "secret loaded");
        Ok(Some(Secret::new(std::mem::take(&mut *plain))))
    }

    fn list(&self, tenant: Option<&TenantId>) -> Result<Vec<SecretInfo>, SecretError> {
        Ok(self
            .fresh()?
            .records
            .iter()
            .filter(|(id, _)| tenant.is_none_or(|t| id.namespace.tenant() == t))
            .map(|(id, r)| SecretInfo {
                id: id.clone(),
                enabled: r.enabled,
                updated: Some(r.updated),
            })
            .collect())
    }

    fn set(&self, id: &SecretId, value: &Secret) -> Result<(), SecretError> {
        let invalid = |reason: String| SecretError::InvalidValue {
            id: id.clone(),
            reason,
        };
        if value.is_empty() {
            return Err(invalid("the value is empty".into()));
        }
        if value.len() > MAX_SECRET_LEN {
            return Err(invalid(format!(
                "the value is {} bytes; the limit is {MAX_SECRET_LEN}",
                value.len()
            )));
        }
        self.update(|records| {
            // Replacing a value does not re-enable a disabled secret.
            let enabled = records.get(id).is_none_or(|r| r.enabled);
            let sealed = self.seal(&record_aad(id, enabled), value.expose())?;
            let record = Record {
                enabled,
                updated: SystemTime::now(),
                sealed,
            };
            records.insert(id.clone(), record);
            Ok(true)
        })?;
        tracing::debug!(secret = %id, "secret stored");
        Ok(())
    }

    fn replace(&self, id: &SecretId, current: &Secret, new: &Secret) -> Result<bool, SecretError> {
        if new.is_empty() || new.len() > MAX_SECRET_LEN {
            return Err(SecretError::InvalidValue {
                id: id.clone(),
                reason: format!("the value must be 1 to {MAX_SECRET_LEN} bytes"),
            });
        }
        let mut replaced = false;
        self.update(|records| {
            let Some(record) = records.get_mut(id) else {
                return Ok(false);
            };
            let plain = self
                .unseal(&record.sealed, &record_aad(id, record.enabled))
                .ok_or_else(|| self.tampered(id))?;
            if Secret::new(plain.to_vec()) != *current {
                return Ok(false);
            }
            record.sealed = self.seal(&record_aad(id, record.enabled), new.expose())?;
            record.updated = SystemTime::now();
            replaced = true;
            Ok(true)
        })?;
        if replaced {
            tracing::debug!(secret = %id, "secret replaced");
        }
        Ok(replaced)
    }

    fn remove(&self, id: &SecretId) -> Result<(), SecretError> {
        self.update(|records| match records.remove(id) {
            Some(_) => Ok(true),
            None => Err(SecretError::NotFound { id: id.clone() }),
        })?;
        tracing::debug!(secret = %id, "secret removed");
        Ok(())
    }

    fn set_enabled(&self, id: &SecretId, enabled: bool) -> Result<(), SecretError> {
        self.update(|records| {
            let record = records
                .get_mut(id)
                .ok_or_else(|| SecretError::NotFound { id: id.clone() })?;
            if record.enabled == enabled {
                return Ok(false);
            }
            // The flag is part of the associated data, so changing it means re-sealing.
            let plain = self
                .unseal(&record.sealed, &record_aad(id, record.enabled))
                .ok_or_else(|| self.tampered(id))?;
            record.sealed = self.seal(&record_aad(id, enabled), &plain)?;
            record.enabled = enabled;
            record.updated = SystemTime::now();
            Ok(true)
        })?;
        tracing::debug!(secret = %id, enabled, "secret state changed");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SecretId {
        SecretId::parse(s).unwrap()
    }

    fn store(dir: &Path, key: u8) -> FileStore {
        FileStore::open(dir.join(STORE_FILE), &MasterKey::new([key; 32])).unwrap()
    }

    fn get(s: &FileStore, i: &str) -> Result<Option<Secret>, SecretError> {
        let i = id(i);
        s.get(&i.namespace, &i.name)
    }

    #[test]
    fn round_trip_and_state() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path(), 1);
        assert!(get(&s, "acme/alice/tok").unwrap().is_none());
        s.set(&id("acme/alice/tok"), &Secret::from_text("v1"))
            .unwrap();
        assert_eq!(get(&s, "acme/alice/tok").unwrap().unwrap().expose(), b"v1");
        s.set_enabled(&id("acme/alice/tok"), false).unwrap();
        assert!(matches!(
            get(&s, "acme/alice/tok"),
            Err(SecretError::Disabled { .. })
        ));
        // A new value keeps the secret disabled.
        s.set(&id("acme/alice/tok"), &Secret::from_text("v2"))
            .unwrap();
        assert!(matches!(
            get(&s, "acme/alice/tok"),
            Err(SecretError::Disabled { .. })
        ));
        s.set_enabled(&id("acme/alice/tok"), true).unwrap();
        assert_eq!(get(&s, "acme/alice/tok").unwrap().unwrap().expose(), b"v2");
        s.remove(&id("acme/alice/tok")).unwrap();
        assert!(get(&s, "acme/alice/tok").unwrap().is_none());
        assert!(matches!(
            s.remove(&id("acme/alice/tok")),
            Err(SecretError::NotFound { .. })
        ));
    }

    #[test]
    fn nonces_are_fresh_per_write() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path(), 1);
        s.set(&id("acme/a"), &Secret::from_text("same")).unwrap();
        let n1 = s.cache().records[&id("acme/a")].sealed.nonce;
        s.set(&id("acme/a"), &Secret::from_text("same")).unwrap();
        let n2 = s.cache().records[&id("acme/a")].sealed.nonce;
        assert_ne!(n1, n2);
    }

    #[test]
    fn empty_and_oversized_values_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path(), 1);
        assert!(matches!(
            s.set(&id("acme/a"), &Secret::new(Vec::new())),
            Err(SecretError::InvalidValue { .. })
        ));
        assert!(matches!(
            s.set(&id("acme/a"), &Secret::new(vec![b'x'; MAX_SECRET_LEN + 1])),
            Err(SecretError::InvalidValue { .. })
        ));
        assert!(!tmp.path().join(STORE_FILE).exists());
    }

    #[test]
    fn master_keys_decode_base64_or_raw_files() {
        let k = MasterKey::from_base64(BASE64.encode([7u8; 32]).as_bytes(), "t").unwrap();
        assert_eq!(*k.0, [7u8; 32]);
        for (text, want) in [
            ("", "empty"),
            ("not base64!", "not valid base64"),
            ("AAAA", "decodes to 3 bytes"),
        ] {
            let err = MasterKey::from_base64(text.as_bytes(), "env var K")
                .unwrap_err()
                .to_string();
            assert!(err.contains("env var K") && err.contains(want), "{err}");
        }
        let tmp = tempfile::tempdir().unwrap();
        let raw = tmp.path().join("raw");
        fs::write(&raw, [9u8; 32]).unwrap();
        assert_eq!(*MasterKey::from_file(&raw).unwrap().0, [9u8; 32]);
        let text = tmp.path().join("text");
        fs::write(&text, format!("{}\n", BASE64.encode([8u8; 32]))).unwrap();
        assert_eq!(*MasterKey::from_file(&text).unwrap().0, [8u8; 32]);
        assert_eq!(format!("{:?}", MasterKey::new([1; 32])), "MasterKey(***)");
    }

    #[test]
    fn another_instance_sees_writes() {
        let tmp = tempfile::tempdir().unwrap();
        let a = store(tmp.path(), 1);
        let b = store(tmp.path(), 1);
        a.set(&id("acme/x"), &Secret::from_text("1")).unwrap();
        assert_eq!(get(&b, "acme/x").unwrap().unwrap().expose(), b"1");
        b.set_enabled(&id("acme/x"), false).unwrap();
        assert!(matches!(
            get(&a, "acme/x"),
            Err(SecretError::Disabled { .. })
        ));
        assert_eq!(a.list(None).unwrap().len(), 1);
    }
}
