//! Errors of the egress pipeline and the one place they become HTTP responses.
//!
//! Whose fault decides the status: the caller's → 4xx, the upstream's → 502/504, ours → 500 or
//! 503. Every body is `{"error": {"code", "message", "hint"}}`. Messages name the missing rule
//! or the failing step, never a secret.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};

use super::body::{BoxBody, empty_error};
use crate::policy::Deny;

/// Why a request did not complete through the pipeline.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EgressError {
    /// The caller presented no valid identity token.
    #[error("a valid identity token is required")]
    Unauthenticated,
    /// The request is malformed or tries a trick (path, host, smuggling).
    #[error("{0}")]
    BadRequest(String),
    /// A body or header over a configured limit.
    #[error("{0}")]
    TooLarge(String),
    /// No grant allows the request.
    #[error("{0}")]
    Denied(Deny),
    /// The request is allowed but may not go out as sent (placeholder misuse, private
    /// address, missing credential, unsupported tunnel).
    #[error("{message}")]
    Refused {
        /// What was refused and why.
        message: String,
        /// What the caller can do.
        hint: String,
    },
    /// Connecting, TLS, reset, a protocol upgrade or another upstream fault.
    #[error("upstream failed: {0}")]
    UpstreamFailed(String),
    /// The service's OAuth2 token endpoint did not issue a token.
    #[error("{message}")]
    TokenEndpoint {
        /// Which service, and what went wrong (never the endpoint's response body).
        message: String,
        /// What the caller or an operator can do.
        hint: String,
    },
    /// The grant's `rate` or `daily` limit is spent for this user, or the limiter cannot
    /// track another user (see [`crate::egress::limits`]).
    #[error("{message}")]
    RateLimited {
        /// Which limit, of which grant.
        message: String,
        /// Whole seconds until a retry can succeed (at least 1): the `Retry-After` header.
        retry_after: u64,
    },
    /// The upstream did not answer in time.
    #[error("upstream timed out: {0}")]
    UpstreamTimeout(String),
    /// The audit log cannot be written: fail closed.
    #[error("the audit log cannot be written, so no request is forwarded")]
    AuditUnavailable,
    /// A fault of behalf's own (secret store unreadable, bad stored credential).
    #[error("{0}")]
    Internal(String),
}

impl EgressError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Denied(_) | Self::Refused { .. } => StatusCode::FORBIDDEN,
            Self::UpstreamFailed(_) | Self::TokenEndpoint { .. } => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::AuditUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable code (DESIGN.md's error table).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthenticated => "unauthenticated",
            Self::BadRequest(_) | Self::TooLarge(_) => "bad_request",
            Self::Denied(_) | Self::Refused { .. } => "egress_denied",
            Self::RateLimited { .. } => "rate_limited",
            Self::UpstreamFailed(_) | Self::TokenEndpoint { .. } => "upstream_failed",
            Self::UpstreamTimeout(_) => "upstream_timeout",
            Self::AuditUnavailable => "unavailable",
            Self::Internal(_) => "internal",
        }
    }

    /// What the caller can do about it.
    pub fn hint(&self) -> String {
        match self {
            Self::Unauthenticated => "send `Proxy-Authorization: Bearer <identity token>` (or \
                Basic with the token as password) on every request"
                .into(),
            Self::BadRequest(_) => "send an absolute URL with a normalised path and no \
                conflicting framing or host headers"
                .into(),
            Self::TooLarge(_) => "send a smaller request, or raise the limit in behalf.toml".into(),
            Self::Denied(d) => format!(
                "a policy grant is missing ({}); an operator can see why with `behalf policy \
                 explain`",
                d.kind()
            ),
            Self::Refused { hint, .. } | Self::TokenEndpoint { hint, .. } => hint.clone(),
            Self::RateLimited { retry_after, .. } => format!(
                "retry after {retry_after} s (the `Retry-After` header); an operator can raise \
                 the grant's `rate` or `daily`"
            ),
            Self::UpstreamFailed(_) | Self::UpstreamTimeout(_) => {
                "the upstream API did not answer properly; try again later".into()
            }
            Self::AuditUnavailable => {
                "an operator must make the audit log writable (disk full?)".into()
            }
            Self::Internal(_) => "an operator can find details in behalf's log".into(),
        }
    }

    /// The JSON error response. `proxy` turns 401 into 407 with `Proxy-Authenticate`; a
    /// 429 carries `Retry-After`.
    pub fn to_response(&self, proxy: bool) -> Response<BoxBody> {
        let mut status = self.status();
        if proxy && status == StatusCode::UNAUTHORIZED {
            status = StatusCode::PROXY_AUTHENTICATION_REQUIRED;
        }
        let mut resp = error_response(status, self.code(), &self.to_string(), &self.hint(), proxy);
        if let Self::RateLimited { retry_after, .. } = self {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from((*retry_after).max(1)),
            );
        }
        resp
    }
}

/// Builds a JSON error response.
pub fn error_response(
    status: StatusCode,
    code: &str,
    message: &str,
    hint: &str,
    proxy: bool,
) -> Response<BoxBody> {
    let body = serde_json::json!({
        "error": { "code": code, "message": message, "hint": hint }
    });
    let mut resp = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(empty_error)
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if proxy && status == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
        resp.headers_mut().insert(
            header::PROXY_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"behalf\", Basic realm=\"behalf\""),
        );
    }
    resp
}
