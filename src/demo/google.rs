//! The demo's mock Google: an OAuth2 authorization endpoint (consent is given by whoever the
//! demo's "browser" says it is), a token endpoint for the `authorization_code` (with PKCE) and
//! `refresh_token` grants, and a calendar API that accepts only live access tokens.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};

/// The demo app, registered with the mock: its client id and secret.
pub(super) const CLIENT_ID: &str = "demo-app.apps.googleusercontent.com";
pub(super) const CLIENT_SECRET: &str = "GOCSPX-demo-client-secret-5e6f";
/// alice's refresh token, from a consent she gave before the demo starts.
pub(super) const ALICE_REFRESH: &str = "1//demo-refresh-ALICE-7a8b9c";

/// An authorization code the consent step issued.
struct Code {
    code: String,
    user: String,
    redirect_uri: String,
    challenge: String,
}

/// The mock provider's state.
pub(super) struct Google {
    /// The one redirect URI registered for the demo app.
    redirect_uri: String,
    /// Each token exchange: (user, grant type).
    exchanges: Vec<(String, String)>,
    /// Live refresh tokens and their users.
    refresh: Vec<(String, String)>,
    codes: Vec<Code>,
    /// Live access tokens and their users.
    pub(super) live: Vec<(String, String)>,
    /// Every token ever issued (access and refresh).
    pub(super) issued: Vec<String>,
}

fn params(query: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(query).into_owned().collect()
}

fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

impl Google {
    /// A provider with `redirect_uri` registered for the demo app and alice already connected.
    pub(super) fn new(redirect_uri: String) -> Self {
        Self {
            redirect_uri,
            exchanges: Vec::new(),
            refresh: vec![(ALICE_REFRESH.into(), "alice".into())],
            codes: Vec::new(),
            live: Vec::new(),
            issued: Vec::new(),
        }
    }

    /// How many token exchanges of `grant` were made for `user`.
    pub(super) fn exchanges(&self, user: &str, grant: &str) -> usize {
        self.exchanges
            .iter()
            .filter(|(u, g)| u == user && g == grant)
            .count()
    }

    /// `GET /o/oauth2/v2/auth?...` as `user` who consents: a redirect to the app with a code,
    /// or 400 when the request is not the registered app's.
    pub(super) fn authorize(&mut self, query: &str, user: &str) -> Result<String, String> {
        let p = params(query.as_bytes());
        let redirect_uri = param(&p, "redirect_uri").unwrap_or("");
        if param(&p, "client_id") != Some(CLIENT_ID) || redirect_uri != self.redirect_uri {
            return Err("redirect_uri_mismatch".into());
        }
        if param(&p, "response_type") != Some("code")
            || param(&p, "code_challenge_method") != Some("S256")
            || param(&p, "access_type") != Some("offline")
        {
            return Err("invalid_request".into());
        }
        let code = format!("4/demo-code-{user}-{}", self.codes.len() + 1);
        self.codes.push(Code {
            code: code.clone(),
            user: user.to_owned(),
            redirect_uri: redirect_uri.to_owned(),
            challenge: param(&p, "code_challenge").unwrap_or("").to_owned(),
        });
        let mut back = form_urlencoded::Serializer::new(String::new());
        back.append_pair("code", &code)
            .append_pair("state", param(&p, "state").unwrap_or(""));
        Ok(format!("{redirect_uri}?{}", back.finish()))
    }

    /// `POST /token`.
    pub(super) fn token(&mut self, client_auth: &str, form: &[u8]) -> (u16, Value) {
        let basic = STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"));
        let p = params(form);
        if client_auth != format!("Basic {basic}") {
            return (401, json!({"error": "invalid_client"}));
        }
        let invalid = (400, json!({"error": "invalid_grant"}));
        let grant = param(&p, "grant_type").unwrap_or("");
        let user = match grant {
            "refresh_token" => {
                let Some((_, user)) = self
                    .refresh
                    .iter()
                    .find(|(r, _)| Some(r.as_str()) == param(&p, "refresh_token"))
                else {
                    return invalid;
                };
                user.clone()
            }
            "authorization_code" => {
                let Some(at) = self
                    .codes
                    .iter()
                    .position(|c| Some(c.code.as_str()) == param(&p, "code"))
                else {
                    return invalid;
                };
                // Single use, and only with the same redirect URI and the PKCE verifier.
                let code = self.codes.remove(at);
                let verifier = param(&p, "code_verifier").unwrap_or("");
                let challenge = URL_SAFE_NO_PAD.encode(ring::digest::digest(
                    &ring::digest::SHA256,
                    verifier.as_bytes(),
                ));
                if param(&p, "redirect_uri") != Some(code.redirect_uri.as_str())
                    || challenge != code.challenge
                {
                    return invalid;
                }
                code.user
            }
            _ => return (400, json!({"error": "unsupported_grant_type"})),
        };
        self.exchanges.push((user.clone(), grant.to_owned()));
        let n = self.issued.len() + 1;
        let access = format!("ya29.demo-{user}-{n}");
        self.live.push((access.clone(), user.clone()));
        self.issued.push(access.clone());
        let mut answer =
            json!({"access_token": access, "token_type": "Bearer", "expires_in": 3599});
        if grant == "authorization_code" {
            let refresh = format!("1//demo-refresh-{user}-{n}");
            self.refresh.push((refresh.clone(), user));
            self.issued.push(refresh.clone());
            answer["refresh_token"] = json!(refresh);
        }
        (200, answer)
    }

    /// `POST /revoke` (RFC 7009): the refresh token and every access token of its user stop
    /// working. Unknown tokens are fine, as the RFC says.
    pub(super) fn revoke(&mut self, form: &[u8]) -> (u16, Value) {
        let p = params(form);
        if let Some(at) = self
            .refresh
            .iter()
            .position(|(r, _)| Some(r.as_str()) == param(&p, "token"))
        {
            let (_, user) = self.refresh.remove(at);
            self.live.retain(|(_, u)| *u != user);
        }
        (200, json!({}))
    }

    /// `GET /calendar/v3/calendars/primary/events` with a bearer token.
    pub(super) fn events(&self, authorization: &str) -> (u16, Value) {
        let token = authorization.strip_prefix("Bearer ").unwrap_or("");
        match self.live.iter().find(|(t, _)| t == token) {
            Some((_, user)) => (
                200,
                json!({
                    "summary": format!("{user}@acme.example"),
                    "items": [
                        {"summary": format!("1:1 with {user}'s manager"), "start": {"dateTime": "2026-12-01T10:00:00Z"}},
                        {"summary": "Design review", "start": {"dateTime": "2026-12-01T14:00:00Z"}},
                    ],
                }),
            ),
            None => (
                401,
                json!({"error": {"code": 401, "message": "Invalid Credentials"}}),
            ),
        }
    }
}
