//! Private tool state directories: one per (tenant, user, tool), with a size quota.
//!
//! `state_dir/tool-state/<tenant>/<user>/<tool>/` holds what a tool kept. Each invocation works
//! on a copy (a staging directory) preopened at `/state`; the copy replaces the directory only
//! when the tool succeeded and stayed within its quota. So a tool that fails, times out or
//! overflows its quota changes nothing, and the quota holds exactly for what is kept. Staging
//! copies live under `tool-state/.staging/` and are removed whatever the outcome.
//!
//! # Security
//!
//! Path components are validated ids (tenant and user ids cannot start with `.` or contain
//! `/`; tool names are slugs), joined one at a time under the root. Copies never follow
//! symlinks: a link a tool planted is not carried over, and sizes are measured without
//! following links.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::policy::ToolName;
use crate::principal::Principal;

/// Bytes charged for each file or directory on top of its length (its inode and entry), so
/// that a million empty files are not free.
const ENTRY_COST: u64 = 256;

/// The root of all tool state, with a lock per directory so that two invocations of one tool
/// for one user do not overwrite each other's commits.
#[derive(Debug)]
pub struct StateRoot {
    root: PathBuf,
    locks: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
}

/// One invocation's staging copy of a state directory.
#[derive(Debug)]
pub struct Staged {
    /// The staging copy, preopened for the tool.
    pub path: PathBuf,
    target: PathBuf,
    _lock: tokio::sync::OwnedMutexGuard<()>,
}

impl StateRoot {
    /// Tool state under `root` (created 0700 on first use).
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            locks: Mutex::default(),
        }
    }

    /// The directory of one (tenant, user, tool).
    pub fn dir(&self, principal: &Principal, tool: &ToolName) -> PathBuf {
        self.root
            .join(principal.tenant.as_str())
            .join(principal.user.as_str())
            .join(tool.as_str())
    }

    /// Stages a copy of the principal's state for `tool`, waiting for any other invocation
    /// of the same directory to finish first.
    pub async fn stage(
        &self,
        principal: &Principal,
        tool: &ToolName,
        invocation: &str,
    ) -> io::Result<Staged> {
        let target = self.dir(principal, tool);
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.retain(|_, l| Arc::strong_count(l) > 1);
            locks.entry(target.clone()).or_default().clone()
        };
        let guard = lock.lock_owned().await;
        let staging = self.root.join(".staging").join(invocation);
        let from = target.clone();
        let to = staging.clone();
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            create_private(to.parent().expect("staging dirs have a parent"))?;
            if to.exists() {
                std::fs::remove_dir_all(&to)?;
            }
            std::fs::create_dir(&to)?;
            if from.is_dir() {
                copy_tree(&from, &to)?;
            }
            Ok(())
        })
        .await
        .map_err(io::Error::other)??;
        Ok(Staged {
            path: staging,
            target,
            _lock: guard,
        })
    }
}

impl Staged {
    /// Makes the staging copy the state directory.
    pub async fn commit(self) -> io::Result<()> {
        let path = self.path.clone();
        let target = self.target.clone();
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            create_private(target.parent().expect("state dirs have a parent"))?;
            let old = path.with_extension("old");
            if target.exists() {
                std::fs::rename(&target, &old)?;
            }
            std::fs::rename(&path, &target)?;
            if old.exists() {
                std::fs::remove_dir_all(&old)?;
            }
            Ok(())
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Throws the staging copy away.
    pub async fn discard(self) {
        let path = self.path.clone();
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(path)).await;
    }
}

impl Drop for Staged {
    /// An invocation cancelled midway (the caller went away) leaves no staging copy behind.
    fn drop(&mut self) {
        if self.path.exists() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Bytes used under `dir` as the quota counts them: every entry's length plus
/// [`ENTRY_COST`], symlinks not followed.
pub fn usage(dir: &Path) -> io::Result<u64> {
    let mut total = 0u64;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let meta = entry.path().symlink_metadata()?;
            total = total.saturating_add(meta.len()).saturating_add(ENTRY_COST);
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(total)
}

fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let meta = entry.path().symlink_metadata()?;
        let dest = to.join(entry.file_name());
        if meta.is_dir() {
            std::fs::create_dir(&dest)?;
            copy_tree(&entry.path(), &dest)?;
        } else if meta.is_file() {
            std::fs::copy(entry.path(), &dest)?;
        }
        // Symlinks and special files are not carried over.
    }
    Ok(())
}

fn create_private(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}
