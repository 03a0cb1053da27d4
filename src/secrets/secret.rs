//! [`Secret`]: a credential value that never prints, serialises or logs its contents.

use std::fmt;

use zeroize::Zeroizing;

/// Largest secret value accepted, in bytes. Credentials are tokens and small JSON documents;
/// a cap lets readers reserve the whole buffer up front so that it never reallocates (a
/// reallocation would leave an unzeroised copy behind).
pub const MAX_SECRET_LEN: usize = 64 * 1024;

/// A credential value.
///
/// `Debug` prints `Secret(***)`; there is no `Display`, `Serialize` or `Deref`. The bytes are
/// zeroised when the value is dropped, and `==` compares in constant time.
///
/// # Security
///
/// The only way to the bytes is [`Secret::expose`], so every place that reads a value is
/// greppable. Equality takes time independent of where two values differ (it does reveal
/// whether their lengths differ, which for tokens of a fixed format is public anyway).
#[derive(Clone)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    /// Wraps bytes. The vector is moved, not copied, and zeroised on drop.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// Copies a string into a new secret (for tests and values that are already in memory).
    pub fn from_text(text: &str) -> Self {
        Self::new(text.as_bytes().to_vec())
    }

    /// The value's bytes.
    ///
    /// # Security
    ///
    /// Call this only where the value is used: when rendering it into an outbound request, or
    /// when encrypting it into the store. Never pass the result to a formatter, a log macro,
    /// an error or anything the caller of behalf controls.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The value as UTF-8, if it is.
    ///
    /// # Security
    ///
    /// The same rules as [`Secret::expose`] apply to the returned `&str`.
    pub fn expose_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// The value's length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        // subtle compares lengths first (public) and then every byte, whatever differs.
        bool::from(subtle::ConstantTimeEq::ct_eq(&self.0[..], &other.0[..]))
    }
}

impl Eq for Secret {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = Secret::from_text("CANARY-debug");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(format!("{:?}", Some(&s)), "Some(Secret(***))");
        assert_eq!(format!("{s:#?}"), "Secret(***)");
    }

    #[test]
    fn equality_compares_contents() {
        assert_eq!(Secret::from_text("abc"), Secret::new(b"abc".to_vec()));
        assert_ne!(Secret::from_text("abc"), Secret::from_text("abd"));
        assert_ne!(Secret::from_text("abc"), Secret::from_text("abcd"));
        assert_eq!(Secret::from_text(""), Secret::new(Vec::new()));
    }

    #[test]
    fn exposes_bytes_and_text() {
        let s = Secret::new(vec![0xff, 0x00]);
        assert_eq!(s.expose(), &[0xff, 0x00]);
        assert_eq!(s.expose_str(), None);
        assert_eq!(s.len(), 2);
        assert_eq!(Secret::from_text("x").expose_str(), Some("x"));
        assert!(Secret::new(Vec::new()).is_empty());
    }
}
