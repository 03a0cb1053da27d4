//! Account connect: end users authorise a service for themselves (OAuth2 authorization code
//! with PKCE), and list or remove their connections.
//!
//! Not built yet (issue 9).

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::Api;
use crate::egress::{BoxBody, error_response};

fn not_yet() -> Response<BoxBody> {
    error_response(
        StatusCode::NOT_FOUND,
        "not_found",
        "account connect is not available",
        "see docs/api.md",
        false,
    )
}

impl Api {
    /// `GET /v1/connect/{service}`.
    pub(super) async fn connect_start(
        &self,
        req: &Request<Incoming>,
        service: &str,
    ) -> Response<BoxBody> {
        let _ = (req, service);
        not_yet()
    }

    /// `GET /v1/connect/{service}/callback`.
    pub(super) async fn connect_callback(
        &self,
        req: &Request<Incoming>,
        service: &str,
    ) -> Response<BoxBody> {
        let _ = (req, service);
        not_yet()
    }

    /// `GET /v1/connections`.
    pub(super) async fn connections(&self, req: &Request<Incoming>) -> Response<BoxBody> {
        let _ = req;
        not_yet()
    }

    /// `DELETE /v1/connections/{service}`.
    pub(super) async fn disconnect(
        &self,
        req: &Request<Incoming>,
        service: &str,
    ) -> Response<BoxBody> {
        let _ = (req, service);
        not_yet()
    }
}
