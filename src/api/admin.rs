//! The admin API: a tenant's admins provision that tenant's credentials by API
//! (`docs/provisioning.md`). Paths are under `/v1/admin/secrets/`:
//!
//! | method | path | does |
//! |---|---|---|
//! | `PUT` | `{tenant}/{name}` | stores a tenant credential; the body is the value |
//! | `PUT` | `{tenant}/{user}/{name}` | stores a user's credential; the body is the value |
//! | `DELETE` | either of the above | deletes it (404 if absent) |
//! | `GET` | `{tenant}` | lists the tenant's credentials: names and state, never values |
//! | `POST` | `{tenant}[/{user}]/{name}/disable` or `/enable` | disables or re-enables one |
//!
//! The API is off (404) unless some trusted issuer marks admin tokens ([`Verifier::admin_enabled`]).
//! A request then needs `Authorization: Bearer <token>` from such an issuer, carrying its admin
//! mark, for the tenant the path names: 401 `unauthenticated`, 403 `admin_required`. A
//! read-only secret backend (`env`, `dir`) answers writes with 409 `read_only`.
//!
//! [`Verifier::admin_enabled`]: crate::identity::Verifier::admin_enabled
//!
//! # Security
//!
//! - An admin administers only the tenant its token was verified for: the tenant in the path
//!   is compared with the verified principal's, never taken as authority.
//! - Values go one way: in, in a request body read into a [`Secret`] (capped at
//!   [`MAX_SECRET_LEN`], never reallocated, zeroised on drop). No response, log line or audit
//!   record carries one; responses name ids, records name `scope:name`.
//! - Every request past the "is the API on" check is audited (client `admin`, origin
//!   `behalf:admin`), refusals included. A change is made only after the audit gate passed:
//!   if the log cannot be written, the answer is 503 and the store is untouched.

use std::time::{Duration, Instant};

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::{Api, json_response, unauthenticated};
use crate::audit::{Entry, Outcome};
use crate::egress::{BoxBody, error_response};
use crate::identity::AdminRejection;
use crate::policy::service::CredentialName;
use crate::principal::{TenantId, UserId};
use crate::secrets::{MAX_SECRET_LEN, Namespace, Secret, SecretError, SecretId, SecretInfo};

/// The `origin` of every admin audit record.
pub const AUDIT_ORIGIN: &str = "behalf:admin";
/// The `client` of every admin audit record.
pub const AUDIT_CLIENT: &str = "admin";
/// Most characters of a request path written to the audit log.
const MAX_AUDIT_PATH: usize = 512;
/// A secret value must arrive within this long.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The hint of a disabled admin API, and the routes in others.
const ROUTES: &str = "PUT|DELETE /v1/admin/secrets/{tenant}[/{user}]/{name}, \
                      GET /v1/admin/secrets/{tenant}, \
                      POST /v1/admin/secrets/{tenant}[/{user}]/{name}/disable|enable";

/// One admin operation, parsed from the method and the path.
#[derive(Debug)]
enum Op {
    /// Store a value (the body).
    Put(SecretId),
    /// Delete a secret.
    Delete(SecretId),
    /// List a tenant's secrets.
    List(TenantId),
    /// Enable (`true`) or disable a secret.
    SetEnabled(SecretId, bool),
}

impl Op {
    /// The tenant whose credentials the operation touches.
    fn tenant(&self) -> &TenantId {
        match self {
            Self::Put(id) | Self::Delete(id) | Self::SetEnabled(id, _) => id.namespace.tenant(),
            Self::List(t) => t,
        }
    }

    /// The credential for the audit record: `user:NAME` or `tenant:NAME`.
    fn credential(&self) -> Option<String> {
        match self {
            Self::Put(id) | Self::Delete(id) | Self::SetEnabled(id, _) => {
                let scope = match id.namespace {
                    Namespace::Tenant(_) => "tenant",
                    Namespace::User(..) => "user",
                };
                Some(format!("{scope}:{}", id.name))
            }
            Self::List(_) => None,
        }
    }
}

/// A request refused before (or instead of) changing anything.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
    hint: String,
}

impl Refusal {
    fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            hint: hint.into(),
        }
    }

    fn bad_request(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message, hint)
    }

    fn to_response(&self) -> Response<BoxBody> {
        let mut resp = error_response(self.status, self.code, &self.message, &self.hint, false);
        if self.status == StatusCode::METHOD_NOT_ALLOWED {
            resp.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_static("GET, PUT, DELETE, POST"),
            );
        }
        resp
    }
}

/// A finished operation: what to answer and how to audit it.
struct Done {
    status: StatusCode,
    body: Value,
    decision: Outcome,
    reason: Option<&'static str>,
}

impl Done {
    fn ok(body: Value) -> Self {
        Self {
            status: StatusCode::OK,
            body,
            decision: Outcome::Allow,
            reason: None,
        }
    }
}

impl Api {
    /// `/v1/admin/secrets/...`; `rest` is the path after `secrets`.
    pub(super) async fn admin(&self, req: Request<Incoming>, rest: &[String]) -> Response<BoxBody> {
        if !self.verifier.admin_enabled() {
            return error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                "the admin API is not enabled",
                "set `admin = { claim = \"...\", value = \"...\" }` on an [[identity.issuer]] \
                 in behalf.toml to mark that issuer's admin tokens (see docs/provisioning.md)",
                false,
            );
        }
        let started = Instant::now();
        let path: String = req.uri().path().chars().take(MAX_AUDIT_PATH).collect();
        let mut entry = Entry::new(Outcome::Deny, req.method().as_str(), AUDIT_ORIGIN, path);
        entry.client = Some(AUDIT_CLIENT.into());

        // 1. Who: a verified token its issuer marks as an admin.
        let token = match bearer(req.headers()) {
            Ok(t) => t,
            Err(reason) => return self.admin_unauthenticated(entry, started, &reason),
        };
        let admin = match self.verifier.verify_admin(token).await {
            Ok(a) => a,
            Err(AdminRejection::Unauthenticated(r)) => {
                return self.admin_unauthenticated(entry, started, &r.to_string());
            }
            Err(AdminRejection::NotAdmin { principal }) => {
                entry.tenant = Some(principal.tenant.to_string());
                entry.user = Some(principal.user.to_string());
                let refusal = Refusal::new(
                    StatusCode::FORBIDDEN,
                    "admin_required",
                    format!(
                        "the token of {principal} is valid, but it is not an admin token; \
                         nothing was changed"
                    ),
                    "the admin API needs a token that its issuer marks as an admin (the claim \
                     named by the issuer's `admin` setting in behalf.toml; in development, \
                     `behalf token mint --admin`)",
                );
                return self.admin_refuse(entry, started, &refusal);
            }
        };
        entry.tenant = Some(admin.tenant().to_string());
        entry.user = Some(admin.principal().user.to_string());

        // 2. What: the operation, with every id parsed.
        let op = match parse(req.method(), rest) {
            Ok(op) => op,
            Err(refusal) => return self.admin_refuse(entry, started, &refusal),
        };
        entry.credential = op.credential();

        // 3. Whose: only the admin's own tenant.
        if !admin.administers(op.tenant()) {
            let refusal = Refusal::new(
                StatusCode::FORBIDDEN,
                "admin_required",
                format!(
                    "this token is an admin of `{}` only; it cannot manage the credentials of \
                     `{}`",
                    admin.tenant(),
                    op.tenant()
                ),
                "use a token of an admin of that tenant, from an issuer that speaks for it",
            );
            return self.admin_refuse(entry, started, &refusal);
        }

        // 4. The value, for a PUT (read first, so that the gate below is checked right before
        //    the change, not before a slow upload).
        let value = match &op {
            Op::Put(_) => match read_value(req).await {
                Ok(v) => Some(v),
                Err(refusal) => return self.admin_refuse(entry, started, &refusal),
            },
            _ => None,
        };

        // 5. Fail closed: nothing changes unless the decision can be recorded.
        if self.egress.audit().gate().is_err() {
            return audit_unavailable();
        }

        // 6. Act, then record what happened.
        let done = self.admin_apply(&op, value.as_ref());
        entry.decision = done.decision;
        entry.reason = done.reason.map(str::to_owned);
        entry.status = Some(done.status.as_u16());
        entry.duration_ms = started.elapsed().as_millis() as u64;
        if let Err(e) = self.egress.audit().record(entry) {
            // The store may already have changed; say so in behalf's own log.
            tracing::error!(error = %e, ?op, "audit record for an admin request could not be written");
        }
        json_response(done.status, &done.body)
    }

    /// Runs one authorised operation against the secret store.
    fn admin_apply(&self, op: &Op, value: Option<&Secret>) -> Done {
        let store = self.egress.secrets();
        let result = match op {
            Op::Put(id) => {
                // `value` is set for every PUT by the caller.
                let Some(value) = value else {
                    return store_failed(op, "no value was read".into());
                };
                store
                    .list(Some(id.namespace.tenant()))
                    .and_then(|existing| {
                        let created = !existing.iter().any(|i| i.id == *id);
                        store.set(id, value)?;
                        tracing::info!(secret = %id, created, "admin API stored a secret");
                        Ok(Done::ok(
                            json!({ "id": id.to_string(), "created": created }),
                        ))
                    })
            }
            Op::Delete(id) => store.remove(id).map(|()| {
                tracing::info!(secret = %id, "admin API deleted a secret");
                Done::ok(json!({ "id": id.to_string(), "deleted": true }))
            }),
            Op::SetEnabled(id, enabled) => store.set_enabled(id, *enabled).map(|()| {
                tracing::info!(secret = %id, enabled, "admin API changed a secret's state");
                Done::ok(json!({ "id": id.to_string(), "enabled": enabled }))
            }),
            Op::List(tenant) => store.list(Some(tenant)).map(|list| {
                let secrets: Vec<Value> = list.iter().map(describe).collect();
                Done::ok(json!({ "secrets": secrets }))
            }),
        };
        match result {
            Ok(done) => done,
            Err(SecretError::NotFound { id }) => Done {
                status: StatusCode::NOT_FOUND,
                body: error_body(
                    "not_found",
                    &format!("no secret {id}"),
                    "list the tenant's secrets with GET /v1/admin/secrets/{tenant}",
                ),
                decision: Outcome::Allow,
                reason: Some("not_found"),
            },
            Err(e @ SecretError::ReadOnly { .. }) => Done {
                status: StatusCode::CONFLICT,
                body: error_body(
                    "read_only",
                    &e.to_string(),
                    "this backend is provisioned where it reads from (BEHALF_SECRET__... \
                     variables for `env`, the mounted folder for `dir`); the admin API can \
                     only list it. Use backend = \"file\" under [secrets] to provision by API",
                ),
                decision: Outcome::Deny,
                reason: Some("read_only"),
            },
            Err(e @ SecretError::InvalidValue { .. }) => Done {
                status: StatusCode::BAD_REQUEST,
                body: error_body(
                    "bad_request",
                    &e.to_string(),
                    "send the value, 1 to 65536 bytes, as the request body",
                ),
                decision: Outcome::Deny,
                reason: Some("bad_request"),
            },
            Err(e) => store_failed(op, e.to_string()),
        }
    }

    /// A 401, audited.
    fn admin_unauthenticated(
        &self,
        mut entry: Entry,
        started: Instant,
        reason: &str,
    ) -> Response<BoxBody> {
        entry.reason = Some("unauthenticated".into());
        entry.status = Some(401);
        entry.duration_ms = started.elapsed().as_millis() as u64;
        if self.egress.audit().record(entry).is_err() {
            return audit_unavailable();
        }
        unauthenticated(reason)
    }

    /// A refusal, audited as a denial (503 instead if the record cannot be written).
    fn admin_refuse(
        &self,
        mut entry: Entry,
        started: Instant,
        refusal: &Refusal,
    ) -> Response<BoxBody> {
        tracing::info!(
            code = refusal.code,
            reason = %refusal.message,
            "admin API request refused"
        );
        entry.decision = Outcome::Deny;
        entry.reason = Some(refusal.code.into());
        entry.status = Some(refusal.status.as_u16());
        entry.duration_ms = started.elapsed().as_millis() as u64;
        if self.egress.audit().record(entry).is_err() {
            return audit_unavailable();
        }
        refusal.to_response()
    }
}

/// Parses the method and the path after `/v1/admin/secrets/` into an operation. Ids are
/// parsed exactly as written: no percent-decoding, so `%2e%2e` is an invalid id, not `..`.
fn parse(method: &Method, rest: &[String]) -> Result<Op, Refusal> {
    let action = |a: &str| match a {
        "enable" => Some(true),
        "disable" => Some(false),
        _ => None,
    };
    match (method, rest) {
        (&Method::GET, [tenant]) => Ok(Op::List(parse_tenant(tenant)?)),
        (&Method::PUT, [_, _] | [_, _, _]) => Ok(Op::Put(parse_id(rest)?)),
        (&Method::DELETE, [_, _] | [_, _, _]) => Ok(Op::Delete(parse_id(rest)?)),
        (&Method::POST, [id @ .., last])
            if (2..=3).contains(&id.len()) && action(last).is_some() =>
        {
            // `action(last)` was just checked to be `Some`.
            Ok(Op::SetEnabled(parse_id(id)?, action(last).unwrap_or(false)))
        }
        (_, [_] | [_, _] | [_, _, _]) => Err(Refusal::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "bad_request",
            format!("{method} is not supported on this admin path"),
            ROUTES,
        )),
        _ => Err(Refusal::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such admin endpoint",
            ROUTES,
        )),
    }
}

fn parse_tenant(s: &str) -> Result<TenantId, Refusal> {
    TenantId::parse(s).map_err(|e| {
        Refusal::bad_request(
            format!("invalid tenant in the path: {e}"),
            "ids are 1-128 of A-Z a-z 0-9 . _ @ + - not starting with `.`",
        )
    })
}

/// `[tenant, name]` or `[tenant, user, name]`.
fn parse_id(parts: &[String]) -> Result<SecretId, Refusal> {
    let name = |n: &str| {
        CredentialName::parse(n).map_err(|e| {
            Refusal::bad_request(
                format!("invalid credential name in the path: {e}"),
                "name the credential as the service's `credential.name` does",
            )
        })
    };
    match parts {
        [t, n] => Ok(SecretId::new(Namespace::Tenant(parse_tenant(t)?), name(n)?)),
        [t, u, n] => {
            let tenant = parse_tenant(t)?;
            let user = UserId::parse(u).map_err(|e| {
                Refusal::bad_request(
                    format!("invalid user in the path: {e}"),
                    "the user is the `sub` of that user's identity token",
                )
            })?;
            Ok(SecretId::new(Namespace::User(tenant, user), name(n)?))
        }
        _ => Err(Refusal::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such admin endpoint",
            ROUTES,
        )),
    }
}

/// `Bearer <token>` from the one `Authorization` header.
fn bearer(headers: &http::HeaderMap) -> Result<&str, String> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err("expected exactly one Authorization header".into());
    };
    let value = value
        .to_str()
        .map_err(|_| "Authorization is not ASCII".to_owned())?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(token.trim()),
        _ => Err("Authorization must be `Bearer <identity token>`".into()),
    }
}

/// Reads a secret value from the request body: 1 to [`MAX_SECRET_LEN`] bytes, within
/// [`BODY_TIMEOUT`].
///
/// # Security
///
/// The buffer is reserved whole up front and the cap checked before every append, so it never
/// reallocates (which would leave an unzeroised copy); it is zeroised on every path.
async fn read_value(req: Request<Incoming>) -> Result<Secret, Refusal> {
    let too_large = || {
        Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "bad_request",
            format!("the value is larger than {MAX_SECRET_LEN} bytes"),
            "credentials are tokens and small JSON documents; send at most 64 KiB",
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_SECRET_LEN as u64) {
        return Err(too_large());
    }
    let mut body = req.into_body();
    let mut buf = Zeroizing::new(Vec::with_capacity(MAX_SECRET_LEN));
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                Refusal::bad_request(
                    format!("the request body could not be read: {e}"),
                    "send the value as the request body",
                )
            })?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > MAX_SECRET_LEN {
                    return Err(too_large());
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(())
    };
    match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(())) => {}
        Ok(Err(refusal)) => return Err(refusal),
        Err(_) => {
            return Err(Refusal::bad_request(
                format!(
                    "the value did not arrive within {}s",
                    BODY_TIMEOUT.as_secs()
                ),
                "send the whole body at once",
            ));
        }
    }
    if buf.is_empty() {
        return Err(Refusal::bad_request(
            "the request body is empty; it must be the secret's value",
            "send the value as the body, e.g. `curl -X PUT --data-binary @token.txt ...`; \
             to remove a secret, use DELETE",
        ));
    }
    Ok(Secret::new(std::mem::take(&mut *buf)))
}

/// One listed secret: never its value.
fn describe(info: &SecretInfo) -> Value {
    let mut v = json!({
        "id": info.id.to_string(),
        "scope": match info.id.namespace {
            Namespace::Tenant(_) => "tenant",
            Namespace::User(..) => "user",
        },
        "name": info.id.name.as_str(),
        "enabled": info.enabled,
        "updated": info
            .updated
            .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
    });
    if let Some(user) = info.id.namespace.user() {
        v["user"] = user.as_str().into();
    }
    v
}

fn error_body(code: &str, message: &str, hint: &str) -> Value {
    json!({ "error": { "code": code, "message": message, "hint": hint } })
}

/// A secret store fault: 500, the detail in behalf's log only.
fn store_failed(op: &Op, detail: String) -> Done {
    tracing::error!(?op, error = %detail, "admin API: the secret store failed");
    Done {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        body: error_body(
            "internal",
            "the secret store failed",
            "an operator can find details in behalf's log",
        ),
        decision: Outcome::Error,
        reason: Some("internal"),
    }
}

fn audit_unavailable() -> Response<BoxBody> {
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the audit log cannot be written, so no credential is changed",
        "an operator must make the audit log writable (disk full?)",
        false,
    )
}
