//! Who a call is for: validated tenant, user and group ids, and the principal they form.
//!
//! # Security
//!
//! Ids become map keys, associated data and path components, so they are parsed, not trusted:
//! 1–128 bytes of `[A-Za-z0-9._@+-]`, not starting with `.`. A value that fails this never
//! becomes an id, so no later step has to re-check it for `/`, `..` or control characters.

use std::fmt;

/// Longest id accepted, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The string was empty.
    #[error("{kind} id is empty")]
    Empty { kind: &'static str },
    /// The string was longer than [`MAX_ID_LEN`].
    #[error("{kind} id is {len} bytes long; the limit is {MAX_ID_LEN}")]
    TooLong { kind: &'static str, len: usize },
    /// The string started with `.`.
    #[error("{kind} id `{value}` starts with `.`")]
    LeadingDot { kind: &'static str, value: String },
    /// The string held a byte outside `[A-Za-z0-9._@+-]`.
    #[error("{kind} id `{value}` contains {found:?}; only A-Z a-z 0-9 . _ @ + - are allowed")]
    BadChar {
        kind: &'static str,
        value: String,
        found: char,
    },
}

fn validate(kind: &'static str, value: &str) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if value.len() > MAX_ID_LEN {
        return Err(IdError::TooLong {
            kind,
            len: value.len(),
        });
    }
    if let Some(found) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '+' | '-')))
    {
        // Ids are printed in errors; keep a hostile one short.
        let value = value.chars().take(64).collect();
        return Err(IdError::BadChar { kind, value, found });
    }
    if value.starts_with('.') {
        return Err(IdError::LeadingDot {
            kind,
            value: value.to_owned(),
        });
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Box<str>);

        impl $name {
            /// Parses and validates an id.
            pub fn parse(value: &str) -> Result<Self, IdError> {
                validate($kind, value)?;
                Ok(Self(value.into()))
            }

            /// The id as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }
    };
}

id_type!(
    /// A tenant: the organisation whose policy file and credentials apply.
    TenantId,
    "tenant"
);
id_type!(
    /// A user within a tenant.
    UserId,
    "user"
);
id_type!(
    /// A group a user belongs to, as asserted by a verified identity token.
    GroupId,
    "group"
);

/// The verified caller a request is made on behalf of.
///
/// # Security
///
/// Built only by the host from a verified identity (or by policy tests and `policy explain`,
/// which hold no secrets); never from anything a tool or an upstream sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The tenant the caller belongs to.
    pub tenant: TenantId,
    /// The caller.
    pub user: UserId,
    /// The caller's groups within the tenant.
    pub groups: Vec<GroupId>,
}

impl Principal {
    /// Builds a principal from already-validated parts.
    pub fn new(tenant: TenantId, user: UserId, groups: Vec<GroupId>) -> Self {
        Self {
            tenant,
            user,
            groups,
        }
    }

    /// Parses a principal from its parts as written by a person (CLI flags, policy tests).
    pub fn parse<G: AsRef<str>>(tenant: &str, user: &str, groups: &[G]) -> Result<Self, IdError> {
        Ok(Self::new(
            TenantId::parse(tenant)?,
            UserId::parse(user)?,
            groups
                .iter()
                .map(|g| GroupId::parse(g.as_ref()))
                .collect::<Result<_, _>>()?,
        ))
    }

    /// Whether the caller is in `group`.
    pub fn in_group(&self, group: &GroupId) -> bool {
        self.groups.contains(group)
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant, self.user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_ids() {
        for ok in [
            "acme",
            "alice@example.com",
            "a.b",
            "A-Z_0+9",
            &"x".repeat(128),
        ] {
            assert!(UserId::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_path_tricks_and_bad_lengths() {
        for bad in [
            "", ".", "..", "../x", "a/b", ".hidden", "a b", "a\0b", "ünï", "a\\b",
        ] {
            assert!(TenantId::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(matches!(
            TenantId::parse(&"x".repeat(129)),
            Err(IdError::TooLong { len: 129, .. })
        ));
    }
}
