//! The admin API: provisioning a tenant's credentials by API, for that tenant's admins.
//!
//! Not built yet (issue 9).

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::Api;
use crate::egress::{BoxBody, error_response};

impl Api {
    /// `/v1/admin/secrets/...`; `rest` is the path after `secrets`.
    pub(super) async fn admin(&self, req: Request<Incoming>, rest: &[String]) -> Response<BoxBody> {
        let _ = (req, rest);
        error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            "the admin API is not enabled",
            "an issuer must mark admin tokens (see docs/api.md)",
            false,
        )
    }
}
