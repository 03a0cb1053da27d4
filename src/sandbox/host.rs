//! What a tool's Store holds: its WASI context, its limits, and the `wasi:http` hooks that
//! hand every outbound request to the egress pipeline with the principal bound to this Store.
//!
//! # Security
//!
//! The principal, client and placeholders are set by the host when the Store is created, from
//! the verified identity token of the API call. Nothing the guest sends can change them: the
//! request goes to [`Egress::handle`] exactly as the proxy's do, and the guest sees only the
//! (scrubbed) response or `HTTP-request-denied`.

use std::sync::{Arc, Mutex};

use http_body_util::BodyExt;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks,
    WasiHttpView,
};

use crate::egress::{BoxError, Call, Egress, EgressError, Placeholders};
use crate::policy::Client;
use crate::principal::Principal;

/// One outbound request the pipeline refused, as reported in the invoke response.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Denial {
    /// The request's method.
    pub method: String,
    /// The request's URL without its query.
    pub url: String,
    /// The error code (`egress_denied` or `bad_request`).
    pub code: &'static str,
    /// Which kind of rule is missing, or what was refused.
    pub message: String,
}

/// The Store's data.
pub struct Host {
    pub(super) wasi: WasiCtx,
    pub(super) http: WasiHttpCtx,
    pub(super) table: ResourceTable,
    pub(super) limiter: Limiter,
    pub(super) hooks: EgressHooks,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

// === impl Limiter ===

/// Memory and table limits of one instance, remembering which limit was hit so the error
/// can name it.
#[derive(Debug)]
pub struct Limiter {
    memory: usize,
    table_elements: usize,
    pub(super) hit: Option<String>,
}

impl Limiter {
    /// Limits linear memory to `memory` bytes.
    pub fn new(memory: u64) -> Self {
        Self {
            memory: usize::try_from(memory).unwrap_or(usize::MAX),
            table_elements: 100_000,
            hit: None,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory {
            let mib = |bytes: usize| bytes as f64 / f64::from(1 << 20);
            let message = format!(
                "memory limit of {:.1} MiB reached (the tool asked to grow from {:.1} to {:.1} MiB)",
                mib(self.memory),
                mib(current),
                mib(desired)
            );
            self.hit = Some(message.clone());
            return Err(wasmtime::format_err!(message));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_elements {
            let message = format!("table limit of {} elements reached", self.table_elements);
            self.hit = Some(message.clone());
            return Err(wasmtime::format_err!(message));
        }
        Ok(true)
    }
}

// === impl EgressHooks ===

/// The `wasi:http` hooks: every request to the pipeline, as `tool:<name>` for the bound
/// principal.
pub struct EgressHooks {
    pub(super) egress: Arc<Egress>,
    pub(super) principal: Arc<Principal>,
    pub(super) client: Client,
    pub(super) invocation: Arc<str>,
    pub(super) placeholders: Arc<Placeholders>,
    pub(super) denials: Arc<Mutex<Vec<Denial>>>,
}

type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;

impl WasiHttpHooks for EgressHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: IoFuture,
    ) -> Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), HttpError>> + Send>
    {
        let egress = self.egress.clone();
        let principal = self.principal.clone();
        let client = self.client.clone();
        let invocation = self.invocation.clone();
        let placeholders = self.placeholders.clone();
        let denials = self.denials.clone();
        Box::new(async move {
            let method = request.method().to_string();
            let uri = request.uri();
            let url = format!(
                "{}://{}{}",
                uri.scheme_str().unwrap_or("https"),
                uri.authority().map_or("", |a| a.as_str()),
                uri.path()
            );
            let request =
                request.map(|b| b.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync());
            let call = Call {
                principal: &principal,
                client,
                invocation: Some(&invocation),
                placeholders: &placeholders,
                tunnel: None,
            };
            match egress.handle(&call, request).await {
                Ok(resp) => {
                    let resp = resp.map(|b| {
                        b.map_err(|e| HttpError::InternalError(Some(e.to_string())))
                            .boxed_unsync()
                    });
                    Ok((resp, Box::new(async { Ok(()) }) as IoFuture))
                }
                Err(e) => {
                    let (code, error) = to_wasi(&e);
                    if let Some(code) = code {
                        let denial = Denial {
                            method,
                            url,
                            code,
                            message: e.to_string(),
                        };
                        denials
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(denial);
                    }
                    Err(error)
                }
            }
        })
    }
}

/// The `wasi:http` error the guest sees for a pipeline error, and the code under which it is
/// reported as a denial (for refusals, not for upstream faults).
fn to_wasi(e: &EgressError) -> (Option<&'static str>, HttpError) {
    match e {
        EgressError::Denied(_) | EgressError::Refused { .. } => {
            (Some("egress_denied"), HttpError::HttpRequestDenied)
        }
        EgressError::RateLimited { .. } => (Some("rate_limited"), HttpError::HttpRequestDenied),
        EgressError::BadRequest(_) => (Some("bad_request"), HttpError::HttpRequestDenied),
        EgressError::TooLarge(_) => (Some("bad_request"), HttpError::HttpRequestBodySize(None)),
        EgressError::UpstreamFailed(_) => (None, HttpError::DestinationUnavailable),
        EgressError::UpstreamTimeout(_) => (None, HttpError::ConnectionTimeout),
        other => (
            None,
            HttpError::InternalError(Some(other.code().to_owned())),
        ),
    }
}
