//! Structured credentials: a secret whose value is a small JSON document (DESIGN.md "Secrets").
//!
//! - SigV4: `{"access_key_id", "secret_access_key", "session_token"?}`
//! - OAuth2: `{"client_id", "client_secret", "refresh_token"?}`
//!
//! Every field is itself a [`Secret`], so the parsed form prints no more than the raw one.
//!
//! # Security
//!
//! Parse errors never quote the document: serde's messages can echo a value ("invalid type:
//! integer `123`"), so only the error class, the position and messages that name a field (not
//! a value) are kept.

use std::borrow::Cow;

use serde::Deserialize;

use super::{Secret, SecretError};

/// AWS credentials for SigV4 signing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SigV4Credentials {
    /// The access key id (`AKIA...`, `ASIA...`).
    pub access_key_id: Secret,
    /// The secret access key.
    pub secret_access_key: Secret,
    /// The session token of temporary credentials.
    pub session_token: Option<Secret>,
}

/// OAuth2 client credentials, optionally with a refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OAuth2Credentials {
    /// The client id.
    pub client_id: Secret,
    /// The client secret.
    pub client_secret: Secret,
    /// A refresh token (the `refresh_token` grant; refreshing needs a writable backend).
    pub refresh_token: Option<Secret>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSigV4<'a> {
    #[serde(borrow)]
    access_key_id: Cow<'a, str>,
    #[serde(borrow)]
    secret_access_key: Cow<'a, str>,
    #[serde(borrow, default)]
    session_token: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOAuth2<'a> {
    #[serde(borrow)]
    client_id: Cow<'a, str>,
    #[serde(borrow)]
    client_secret: Cow<'a, str>,
    #[serde(borrow, default)]
    refresh_token: Option<Cow<'a, str>>,
}

impl SigV4Credentials {
    /// Parses a secret holding `{"access_key_id", "secret_access_key", "session_token"?}`.
    ///
    /// # Security
    ///
    /// The error never contains any part of the value.
    pub fn parse(secret: &Secret) -> Result<Self, SecretError> {
        const KIND: &str = "SigV4";
        let raw: RawSigV4<'_> = parse_json(KIND, secret)?;
        Ok(Self {
            access_key_id: field(KIND, "access_key_id", raw.access_key_id)?,
            secret_access_key: field(KIND, "secret_access_key", raw.secret_access_key)?,
            session_token: raw
                .session_token
                .map(|t| field(KIND, "session_token", t))
                .transpose()?,
        })
    }
}

impl OAuth2Credentials {
    /// Parses a secret holding `{"client_id", "client_secret", "refresh_token"?}`.
    ///
    /// # Security
    ///
    /// The error never contains any part of the value.
    pub fn parse(secret: &Secret) -> Result<Self, SecretError> {
        const KIND: &str = "OAuth2";
        let raw: RawOAuth2<'_> = parse_json(KIND, secret)?;
        Ok(Self {
            client_id: field(KIND, "client_id", raw.client_id)?,
            client_secret: field(KIND, "client_secret", raw.client_secret)?,
            refresh_token: raw
                .refresh_token
                .map(|t| field(KIND, "refresh_token", t))
                .transpose()?,
        })
    }
}

fn parse_json<'a, T: Deserialize<'a>>(
    kind: &'static str,
    secret: &'a Secret,
) -> Result<T, SecretError> {
    serde_json::from_slice(secret.expose()).map_err(|e| {
        use serde_json::error::Category;
        let at = format!("line {} column {}", e.line(), e.column());
        let reason = match e.classify() {
            Category::Syntax => format!("not valid JSON ({at})"),
            Category::Eof => "truncated JSON".to_owned(),
            Category::Io => "unreadable".to_owned(),
            Category::Data => {
                let message = e.to_string();
                // These messages name a field, never a value.
                if ["missing field", "unknown field", "duplicate field"]
                    .iter()
                    .any(|p| message.starts_with(p))
                {
                    message
                } else {
                    format!("expected an object whose fields are all strings ({at})")
                }
            }
        };
        SecretError::Malformed { kind, reason }
    })
}

fn field(kind: &'static str, name: &str, value: Cow<'_, str>) -> Result<Secret, SecretError> {
    if value.is_empty() {
        return Err(SecretError::Malformed {
            kind,
            reason: format!("field `{name}` is empty"),
        });
    }
    // An owned string (the JSON had escapes) is moved, not copied, so it is zeroised too.
    Ok(Secret::new(value.into_owned().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sigv4() {
        let s = Secret::from_text(
            r#"{"access_key_id":"AKIAX","secret_access_key":"s3cr\u0065t","session_token":"tok"}"#,
        );
        let c = SigV4Credentials::parse(&s).unwrap();
        assert_eq!(c.access_key_id.expose(), b"AKIAX");
        assert_eq!(c.secret_access_key.expose(), b"s3cret");
        assert_eq!(c.session_token.unwrap().expose(), b"tok");
        let c = SigV4Credentials::parse(&Secret::from_text(
            r#"{"access_key_id":"A","secret_access_key":"B"}"#,
        ))
        .unwrap();
        assert!(c.session_token.is_none());
    }

    #[test]
    fn parses_oauth2() {
        let c = OAuth2Credentials::parse(&Secret::from_text(
            r#"{"client_id":"id","client_secret":"cs","refresh_token":"rt"}"#,
        ))
        .unwrap();
        assert_eq!(c.client_id.expose(), b"id");
        assert_eq!(c.client_secret.expose(), b"cs");
        assert_eq!(c.refresh_token.as_ref().unwrap().expose(), b"rt");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("cs") && !dbg.contains("rt\""), "{dbg}");
    }

    #[test]
    fn errors_never_quote_the_value() {
        let cases = [
            (
                r#"{"access_key_id":"CANARY1","secret_access_key":12345}"#,
                "all strings",
            ),
            (
                r#"{"access_key_id":"CANARY1"}"#,
                "missing field `secret_access_key`",
            ),
            (
                r#"{"access_key_id":"CANARY1","secret_access_key":"x","extra":"y"}"#,
                "unknown field `extra`",
            ),
            (r#"{"access_key_id":"CANARY1","#, "truncated"),
            (r#"CANARY1"#, "not valid JSON"),
            (
                r#"{"access_key_id":"","secret_access_key":"CANARY1"}"#,
                "`access_key_id` is empty",
            ),
        ];
        for (doc, want) in cases {
            let err = SigV4Credentials::parse(&Secret::from_text(doc))
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{doc}: {err}");
            assert!(!err.contains("CANARY1") && !err.contains("12345"), "{err}");
        }
    }
}
