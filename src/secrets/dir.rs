//! The `dir` backend: read-only secrets from a mounted folder, one file per secret:
//! `<root>/<tenant>/<name>` for a tenant credential, `<root>/<tenant>/<user>/<name>` for a
//! user's.
//!
//! A file's bytes are the value, unchanged: a trailing newline is kept, because Kubernetes
//! Secret files have none and a credential may legitimately end in one (write files with
//! `printf %s`, not `echo`). Files are read on every lookup, so a rotated Kubernetes Secret is
//! picked up without a restart.
//!
//! # Security
//!
//! Paths are built one validated component at a time ([`TenantId`], [`UserId`],
//! [`CredentialName`] cannot hold `/` or start with `.`), so no lookup names `..` or an
//! absolute path. Symlinks are followed (Kubernetes mounts are made of them) but the resolved
//! path must stay under the resolved root; anything else is refused with
//! [`SecretError::Escape`]. Only regular files of at most [`MAX_SECRET_LEN`] bytes are read.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::{MAX_SECRET_LEN, Namespace, Secret, SecretError, SecretId, SecretInfo, SecretStore};
use crate::policy::service::CredentialName;
use crate::principal::{TenantId, UserId};

/// Secrets from files under a root folder.
#[derive(Debug)]
pub struct DirStore {
    root: PathBuf,
    /// `root` with every symlink resolved: what resolved paths must start with.
    real_root: PathBuf,
}

/// What a path under the root resolved to.
enum Resolved {
    Missing,
    File(PathBuf, fs::Metadata),
    Dir,
}

impl DirStore {
    /// Opens the folder `root`, which must exist.
    pub fn open(root: &Path) -> Result<Self, SecretError> {
        let real_root = fs::canonicalize(root).map_err(SecretError::io(root))?;
        if !real_root.is_dir() {
            return Err(SecretError::BadFile {
                path: root.to_owned(),
                reason: "the secrets root is not a directory".into(),
            });
        }
        Ok(Self {
            root: root.to_owned(),
            real_root,
        })
    }

    /// The configured root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of `id` under the root (not yet resolved).
    pub fn path_of(&self, id: &SecretId) -> PathBuf {
        let mut path = self.namespace_dir(&id.namespace);
        path.push(id.name.as_str());
        path
    }

    fn namespace_dir(&self, namespace: &Namespace) -> PathBuf {
        let mut path = self.root.join(namespace.tenant().as_str());
        if let Some(user) = namespace.user() {
            path.push(user.as_str());
        }
        path
    }

    /// Resolves symlinks in `path` and checks that the result stays under the root.
    fn resolve(&self, path: &Path) -> Result<Resolved, SecretError> {
        let real = match fs::canonicalize(path) {
            Ok(p) => p,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok(Resolved::Missing);
            }
            Err(e) => return Err(SecretError::io(path)(e)),
        };
        if !real.starts_with(&self.real_root) {
            return Err(SecretError::Escape {
                path: path.to_owned(),
                root: self.root.clone(),
            });
        }
        let meta = fs::metadata(&real).map_err(SecretError::io(path))?;
        if meta.is_dir() {
            Ok(Resolved::Dir)
        } else {
            Ok(Resolved::File(real, meta))
        }
    }

    fn read(&self, id: &SecretId) -> Result<Option<Secret>, SecretError> {
        let path = self.path_of(id);
        let bad = |reason: String| SecretError::BadFile {
            path: path.clone(),
            reason,
        };
        let real = match self.resolve(&path)? {
            Resolved::Missing => return Ok(None),
            Resolved::Dir => return Err(bad("is a directory, not a secret file".into())),
            Resolved::File(_, meta) if !meta.is_file() => {
                return Err(bad("is not a regular file".into()));
            }
            Resolved::File(real, _) => real,
        };
        // Open the resolved path, so what is read is what was checked.
        let mut file = File::open(&real).map_err(SecretError::io(&path))?;
        let len = file.metadata().map_err(SecretError::io(&path))?.len();
        if len > MAX_SECRET_LEN as u64 {
            return Err(bad(format!(
                "is {len} bytes; a secret is at most {MAX_SECRET_LEN}"
            )));
        }
        // The buffer is reserved whole, so reading does not reallocate and leave copies.
        let mut buf = Vec::with_capacity(MAX_SECRET_LEN + 1);
        (&mut file)
            .take(MAX_SECRET_LEN as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(SecretError::io(&path))?;
        let value = Secret::new(buf);
        if value.len() > MAX_SECRET_LEN {
            return Err(bad(format!("is over {MAX_SECRET_LEN} bytes")));
        }
        Ok(Some(value))
    }

    /// Secret files directly in `dir` (a namespace folder), skipping unusable entries.
    fn files_in(&self, namespace: &Namespace, out: &mut Vec<SecretInfo>) {
        let dir = self.namespace_dir(namespace);
        let Ok(entries) = fs::read_dir(&dir) else {
            return;
        };
        for entry in entries.flatten() {
            let Some(name) = entry
                .file_name()
                .to_str()
                .and_then(|n| CredentialName::parse(n).ok())
            else {
                continue;
            };
            let id = SecretId::new(namespace.clone(), name);
            match self.resolve(&self.path_of(&id)) {
                Ok(Resolved::File(_, meta)) if meta.is_file() => out.push(SecretInfo {
                    id,
                    enabled: true,
                    updated: meta.modified().ok(),
                }),
                Ok(_) => {}
                Err(e) => tracing::warn!("skipping {id}: {e}"),
            }
        }
    }
}

impl SecretStore for DirStore {
    fn backend(&self) -> &'static str {
        "dir"
    }

    fn get(
        &self,
        namespace: &Namespace,
        name: &CredentialName,
    ) -> Result<Option<Secret>, SecretError> {
        self.read(&SecretId::new(namespace.clone(), name.clone()))
    }

    fn list(&self, tenant: Option<&TenantId>) -> Result<Vec<SecretInfo>, SecretError> {
        let tenants: Vec<TenantId> = match tenant {
            Some(t) => vec![t.clone()],
            None => fs::read_dir(&self.root)
                .map_err(SecretError::io(&self.root))?
                .flatten()
                // Kubernetes' own entries (`..data`, `..2024_...`) start with `.`: not ids.
                .filter_map(|e| TenantId::parse(e.file_name().to_str()?).ok())
                .collect(),
        };
        let mut out = Vec::new();
        for tenant in tenants {
            let ns = Namespace::Tenant(tenant.clone());
            match self.resolve(&self.namespace_dir(&ns)) {
                Ok(Resolved::Dir) => {}
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!("skipping tenant {tenant}: {e}");
                    continue;
                }
            }
            self.files_in(&ns, &mut out);
            let Ok(entries) = fs::read_dir(self.namespace_dir(&ns)) else {
                continue;
            };
            for entry in entries.flatten() {
                let Some(user) = entry
                    .file_name()
                    .to_str()
                    .and_then(|u| UserId::parse(u).ok())
                else {
                    continue;
                };
                let user_ns = Namespace::User(tenant.clone(), user);
                if let Ok(Resolved::Dir) = self.resolve(&self.namespace_dir(&user_ns)) {
                    self.files_in(&user_ns, &mut out);
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;
    use std::time::SystemTime;

    use super::*;

    fn id(s: &str) -> SecretId {
        SecretId::parse(s).unwrap()
    }

    fn get(s: &DirStore, i: &str) -> Result<Option<Secret>, SecretError> {
        let i = id(i);
        s.get(&i.namespace, &i.name)
    }

    fn mtime(path: &Path) -> Option<SystemTime> {
        fs::metadata(path).ok()?.modified().ok()
    }

    #[test]
    fn reads_tenant_and_user_files_verbatim() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir_all(root.join("acme/alice")).unwrap();
        fs::write(root.join("acme/deploy_key"), "tenant-key").unwrap();
        fs::write(root.join("acme/alice/github_token"), "alice\n").unwrap();
        let s = DirStore::open(root).unwrap();
        assert_eq!(
            get(&s, "acme/deploy_key").unwrap().unwrap().expose(),
            b"tenant-key"
        );
        // The trailing newline is part of the value.
        assert_eq!(
            get(&s, "acme/alice/github_token")
                .unwrap()
                .unwrap()
                .expose(),
            b"alice\n"
        );
        assert!(get(&s, "acme/bob/github_token").unwrap().is_none());
        // A path through a file is simply absent.
        assert!(get(&s, "acme/deploy_key/x").unwrap().is_none());
        // `acme/alice` is a user folder, not a tenant secret.
        assert!(matches!(
            get(&s, "acme/alice"),
            Err(SecretError::BadFile { .. })
        ));
        let list = s.list(None).unwrap();
        let ids: Vec<String> = list.iter().map(|i| i.id.to_string()).collect();
        assert_eq!(ids, ["acme/deploy_key", "acme/alice/github_token"]);
        assert_eq!(list[0].updated, mtime(&root.join("acme/deploy_key")));
    }

    #[test]
    fn refuses_symlinks_out_of_root_and_follows_those_inside() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir_all(root.join("..data/acme")).unwrap();
        fs::write(root.join("..data/acme/inside"), "ok").unwrap();
        symlink("..data/acme", root.join("acme")).unwrap();
        fs::write(tmp.path().join("outside"), "CANARY-outside").unwrap();
        symlink(tmp.path().join("outside"), root.join("..data/acme/escape")).unwrap();
        let s = DirStore::open(&root).unwrap();
        assert_eq!(get(&s, "acme/inside").unwrap().unwrap().expose(), b"ok");
        let err = get(&s, "acme/escape").unwrap_err();
        assert!(matches!(err, SecretError::Escape { .. }), "{err}");
        assert!(!err.to_string().contains("CANARY"));
        let ids: Vec<String> = s
            .list(None)
            .unwrap()
            .iter()
            .map(|i| i.id.to_string())
            .collect();
        assert_eq!(ids, ["acme/inside"]);
    }
}
