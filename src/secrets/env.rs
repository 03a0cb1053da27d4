//! The `env` backend: read-only secrets from environment variables.
//!
//! - `BEHALF_SECRET__<tenant>__<name>`: a tenant credential.
//! - `BEHALF_SECRET__<tenant>__<user>__<name>`: a user's credential.
//!
//! The value is the variable's bytes, unchanged. The variables are read once, when the store
//! is built; an empty value is ignored.
//!
//! # Security
//!
//! `__` separates the parts, so for the mapping from names to variables to be one-to-one, a
//! tenant, user or name used with this backend must not contain `__` nor start or end with `_`
//! (ids may otherwise; such credentials need the `file` or `dir` backend). A variable that
//! breaks this rule, or whose parts are not valid ids, is ignored with a warning naming the
//! variable (never its value). The process environment itself keeps its copy of each value;
//! this backend cannot zeroise that.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::os::unix::ffi::OsStringExt;

use super::{Namespace, Secret, SecretError, SecretId, SecretInfo, SecretStore};
use crate::policy::service::CredentialName;
use crate::principal::{TenantId, UserId};

/// The prefix of every variable this backend reads.
pub const PREFIX: &str = "BEHALF_SECRET__";

/// Secrets from `BEHALF_SECRET__...` environment variables.
pub struct EnvStore {
    secrets: BTreeMap<SecretId, Secret>,
}

impl fmt::Debug for EnvStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvStore")
            .field("secrets", &self.secrets.len())
            .finish()
    }
}

impl EnvStore {
    /// Reads the process environment.
    pub fn from_process_env() -> Self {
        Self::from_vars(std::env::vars_os())
    }

    /// Reads the given variables (those without the prefix are skipped).
    pub fn from_vars(vars: impl IntoIterator<Item = (OsString, OsString)>) -> Self {
        let mut secrets = BTreeMap::new();
        for (key, value) in vars {
            let Some(key) = key.to_str() else { continue };
            let Some(rest) = key.strip_prefix(PREFIX) else {
                continue;
            };
            let id = match parse(rest) {
                Ok(id) => id,
                Err(reason) => {
                    tracing::warn!(var = key, "ignoring secret variable: {reason}");
                    continue;
                }
            };
            let value = Secret::new(value.into_vec());
            if value.is_empty() {
                tracing::warn!(var = key, "ignoring secret variable: its value is empty");
                continue;
            }
            secrets.insert(id, value);
        }
        Self { secrets }
    }

    /// The variable that holds `id`, if it can be expressed (see the module docs).
    pub fn var_name(id: &SecretId) -> Option<String> {
        let mut parts = vec![id.namespace.tenant().as_str()];
        parts.extend(id.namespace.user().map(UserId::as_str));
        parts.push(id.name.as_str());
        parts
            .iter()
            .all(|p| representable(p))
            .then(|| format!("{PREFIX}{}", parts.join("__")))
    }
}

fn representable(part: &str) -> bool {
    !part.contains("__") && !part.starts_with('_') && !part.ends_with('_')
}

/// Parses the part after the prefix: `tenant__name` or `tenant__user__name`.
fn parse(rest: &str) -> Result<SecretId, String> {
    let parts: Vec<&str> = rest.split("__").collect();
    if let Some(p) = parts.iter().find(|p| !representable(p)) {
        return Err(format!(
            "part `{p}` is empty or starts or ends with `_`, which makes the name ambiguous"
        ));
    }
    let tenant = |t: &str| TenantId::parse(t).map_err(|e| e.to_string());
    let name = CredentialName::parse;
    match parts[..] {
        [t, n] => Ok(SecretId::new(Namespace::Tenant(tenant(t)?), name(n)?)),
        [t, u, n] => Ok(SecretId::new(
            Namespace::User(tenant(t)?, UserId::parse(u).map_err(|e| e.to_string())?),
            name(n)?,
        )),
        _ => Err(format!(
            "expected {PREFIX}<tenant>__<name> or {PREFIX}<tenant>__<user>__<name>"
        )),
    }
}

impl SecretStore for EnvStore {
    fn backend(&self) -> &'static str {
        "env"
    }

    fn get(
        &self,
        namespace: &Namespace,
        name: &CredentialName,
    ) -> Result<Option<Secret>, SecretError> {
        let id = SecretId::new(namespace.clone(), name.clone());
        Ok(self.secrets.get(&id).cloned())
    }

    fn list(&self, tenant: Option<&TenantId>) -> Result<Vec<SecretInfo>, SecretError> {
        Ok(self
            .secrets
            .keys()
            .filter(|id| tenant.is_none_or(|t| id.namespace.tenant() == t))
            .map(|id| SecretInfo {
                id: id.clone(),
                enabled: true,
                updated: None,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        list.iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn parses_tenant_and_user_variables() {
        let store = EnvStore::from_vars(vars(&[
            ("BEHALF_SECRET__acme__deploy_key", "t"),
            ("BEHALF_SECRET__acme__alice__github_token", "a"),
            ("BEHALF_SECRET__acme__bob__github_token", "b"),
            ("PATH", "/bin"),
        ]));
        let got = |s: &str| {
            let id = SecretId::parse(s).unwrap();
            store.get(&id.namespace, &id.name).unwrap()
        };
        assert_eq!(got("acme/deploy_key").unwrap().expose(), b"t");
        assert_eq!(got("acme/alice/github_token").unwrap().expose(), b"a");
        assert_eq!(got("acme/bob/github_token").unwrap().expose(), b"b");
        assert!(got("acme/github_token").is_none());
        assert!(got("globex/alice/github_token").is_none());
        assert_eq!(store.list(None).unwrap().len(), 3);
    }

    #[test]
    fn ambiguous_and_invalid_variables_are_ignored() {
        let store = EnvStore::from_vars(vars(&[
            ("BEHALF_SECRET__acme___x", "1"),
            ("BEHALF_SECRET__acme_____x", "1"),
            ("BEHALF_SECRET__acme__a__b__c", "1"),
            ("BEHALF_SECRET__acme", "1"),
            ("BEHALF_SECRET__.acme__x", "1"),
            ("BEHALF_SECRET__acme__empty", ""),
        ]));
        assert!(store.list(None).unwrap().is_empty());
    }

    #[test]
    fn var_names_round_trip() {
        for s in ["acme/alice/github_token", "acme/deploy_key", "a-b/c.d/e_f"] {
            let id = SecretId::parse(s).unwrap();
            let var = EnvStore::var_name(&id).unwrap();
            let store = EnvStore::from_vars(vars(&[(&var, "v")]));
            assert!(
                store.get(&id.namespace, &id.name).unwrap().is_some(),
                "{var}"
            );
        }
        // `alice__token` as a tenant credential would collide with alice's `token`.
        let id = SecretId::parse("acme/alice__token").unwrap();
        assert_eq!(EnvStore::var_name(&id), None);
    }
}
