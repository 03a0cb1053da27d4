//! Account connect over HTTP ([`crate::accounts`]): `GET /v1/connect/{service}` starts a flow
//! for the caller, `GET /v1/connect/{service}/callback` is where the provider sends the user's
//! browser back, `GET /v1/connections` and `DELETE /v1/connections/{service}` list and remove.
//!
//! The callback answers a browser: a small HTML page when it asks for HTML, the usual JSON
//! otherwise. Nothing on any page or body is a secret.

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde_json::json;

use super::{Api, full, json_response, unauthenticated};
use crate::accounts::ConnectError;
use crate::egress::{BoxBody, error_response};

impl Api {
    /// `GET /v1/connect/{service}`: the provider URL to send the user to.
    pub(super) async fn connect_start(
        &self,
        req: &Request<Incoming>,
        service: &str,
    ) -> Response<BoxBody> {
        let principal = match self.authenticate(req.headers()).await {
            Ok(p) => p,
            Err(reason) => return unauthenticated(&reason),
        };
        match self.accounts.start(&self.egress, &principal, service) {
            Ok(started) => json_response(
                StatusCode::OK,
                &json!({
                    "service": started.service.as_str(),
                    "authorize_url": started.authorize_url,
                    "expires_in": started.expires_in.as_secs(),
                }),
            ),
            Err(e) => connect_error(&e, service, false),
        }
    }

    /// `GET /v1/connect/{service}/callback?code=..&state=..`: completes the flow.
    pub(super) async fn connect_callback(
        &self,
        req: &Request<Incoming>,
        service: &str,
    ) -> Response<BoxBody> {
        let html = wants_html(req);
        // No identity is needed (the state carries it), but one that is sent must match.
        let caller = if req.headers().contains_key(header::AUTHORIZATION) {
            match self.authenticate(req.headers()).await {
                Ok(p) => Some(p),
                Err(reason) => return unauthenticated(&reason),
            }
        } else {
            None
        };
        let query = req.uri().query().unwrap_or("");
        match self
            .accounts
            .finish(&self.egress, service, query, caller.as_ref())
            .await
        {
            Ok(done) if html => page(
                StatusCode::OK,
                "Connected",
                &format!(
                    "{} is now connected for {}. You can close this window.",
                    done.service, done.principal.user
                ),
            ),
            Ok(done) => json_response(
                StatusCode::OK,
                &json!({
                    "service": done.service.as_str(),
                    "connected": true,
                    "user": done.principal.user.as_str(),
                }),
            ),
            Err(e) => connect_error(&e, service, html),
        }
    }

    /// `GET /v1/connections`: what the caller can connect and has connected.
    pub(super) async fn connections(&self, req: &Request<Incoming>) -> Response<BoxBody> {
        let principal = match self.authenticate(req.headers()).await {
            Ok(p) => p,
            Err(reason) => return unauthenticated(&reason),
        };
        match self.accounts.list(&self.egress, &principal).await {
            Ok(list) => {
                let connections: Vec<_> = list
                    .iter()
                    .map(|c| {
                        json!({
                            "service": c.service.as_str(),
                            "credential": c.credential,
                            "connected": c.connected,
                            "updated": c.updated.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
                            "access_token_expires_in": c.access_token_expires_in.map(|d| d.as_secs()),
                        })
                    })
                    .collect();
                json_response(StatusCode::OK, &json!({ "connections": connections }))
            }
            Err(e) => connect_error(&e, "", false),
        }
    }

    /// `DELETE /v1/connections/{service}`: revokes and forgets the caller's connection.
    pub(super) async fn disconnect(
        &self,
        req: &Request<Incoming>,
        service: &str,
    ) -> Response<BoxBody> {
        let principal = match self.authenticate(req.headers()).await {
            Ok(p) => p,
            Err(reason) => return unauthenticated(&reason),
        };
        match self
            .accounts
            .disconnect(&self.egress, &principal, service)
            .await
        {
            Ok(done) => json_response(
                StatusCode::OK,
                &json!({
                    "service": done.service.as_str(),
                    "deleted": true,
                    "revoked": done.revoked,
                }),
            ),
            Err(e) => connect_error(&e, service, false),
        }
    }
}

/// Whether the client (a browser, on the callback) prefers HTML.
fn wants_html(req: &Request<Incoming>) -> bool {
    req.headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/html"))
}

fn connect_error(e: &ConnectError, service: &str, html: bool) -> Response<BoxBody> {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let hint = e.hint().replace("{service}", service);
    if html {
        return page(status, "Not connected", &format!("{e}. {hint}."));
    }
    let mut resp = error_response(status, e.code(), &e.to_string(), &hint, false);
    if status == StatusCode::TOO_MANY_REQUESTS {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
    }
    resp
}

/// A plain page for the user's browser.
fn page(status: StatusCode, title: &str, text: &str) -> Response<BoxBody> {
    let body = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title></head>\
         <body><h1>{t}</h1><p>{p}</p></body></html>\n",
        t = escape(title),
        p = escape(text)
    );
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // The page is for the user alone: never cached, never framed, no referrer carrying the
    // callback's query (the code) onward.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    resp
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
