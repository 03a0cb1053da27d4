use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::policy::Target;
use crate::secrets::file::MasterKey;
use crate::secrets::{FileStore, SecretStore};

fn form(grant: OAuth2Grant, client_auth: ClientAuth) -> OAuth2Form {
    OAuth2Form {
        token_url: Target::parse("https://auth.example.test/oauth/token").unwrap(),
        grant,
        scopes: vec!["read:a".into(), "write:b".into()],
        audience: Some("https://api.example.test".into()),
        client_auth,
        connect: None,
    }
}

fn creds(refresh: Option<&str>) -> Secret {
    let json = match refresh {
        Some(r) => {
            format!(r#"{{"client_id":"id:1 é","client_secret":"s&c/r=t","refresh_token":"{r}"}}"#)
        }
        None => r#"{"client_id":"id:1 é","client_secret":"s&c/r=t"}"#.to_owned(),
    };
    Secret::from_text(&json)
}

fn params(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

#[test]
fn refresh_request_with_basic_client_auth() {
    let c = OAuth2Credentials::parse(&creds(Some("R1"))).unwrap();
    let req = token_request(&form(OAuth2Grant::RefreshToken, ClientAuth::Basic), &c).unwrap();
    assert_eq!(req.method(), Method::POST);
    assert_eq!(req.uri(), "https://auth.example.test/oauth/token");
    assert_eq!(
        req.headers()[header::CONTENT_TYPE],
        "application/x-www-form-urlencoded; charset=utf-8"
    );
    let auth = &req.headers()[header::AUTHORIZATION];
    assert!(auth.is_sensitive());
    let decoded = STANDARD
        .decode(auth.to_str().unwrap().strip_prefix("Basic ").unwrap())
        .unwrap();
    // RFC 6749 2.3.1: form-urlencoded, then joined by `:`.
    assert_eq!(decoded, b"id%3A1+%C3%A9:s%26c%2Fr%3Dt");
    assert_eq!(
        params(req.body()),
        [
            ("grant_type", "refresh_token"),
            ("refresh_token", "R1"),
            ("scope", "read:a write:b"),
            ("audience", "https://api.example.test"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
    );
}

#[test]
fn client_credentials_request_with_body_client_auth() {
    let c = OAuth2Credentials::parse(&creds(None)).unwrap();
    let req = token_request(&form(OAuth2Grant::ClientCredentials, ClientAuth::Body), &c).unwrap();
    assert!(!req.headers().contains_key(header::AUTHORIZATION));
    let p = params(req.body());
    assert_eq!(p[0], ("grant_type".into(), "client_credentials".into()));
    assert!(p.contains(&("client_id".into(), "id:1 é".into())));
    assert!(p.contains(&("client_secret".into(), "s&c/r=t".into())));
    assert!(!p.iter().any(|(k, _)| k == "refresh_token"));
}

#[test]
fn refresh_grant_without_a_refresh_token_is_a_credential_error() {
    let c = OAuth2Credentials::parse(&creds(None)).unwrap();
    let err = token_request(&form(OAuth2Grant::RefreshToken, ClientAuth::Basic), &c).unwrap_err();
    assert!(matches!(err, TokenError::Credential(_)), "{err}");
    assert!(err.to_string().contains("refresh_token"));
}

#[test]
fn responses_are_read_without_echoing_them() {
    let ok = |body: &str| parse_response("refresh_token", StatusCode::OK, body.as_bytes());
    let g = ok(
        r#"{"access_token":"AT","token_type":"bearer","expires_in":"120","refresh_token":"R2"}"#,
    )
    .unwrap();
    assert_eq!(g.access_token.expose(), b"AT");
    assert_eq!(g.lifetime, Some(Duration::from_secs(120)));
    assert_eq!(g.refresh_token.unwrap().expose(), b"R2");
    let g = ok(r#"{"access_token":"AT","token_type":"Bearer","expires_in":3600}"#).unwrap();
    assert_eq!(g.lifetime, Some(Duration::from_secs(3600)));
    assert!(g.refresh_token.is_none());

    for (body, why) in [
        ("CANARY not json", "not a JSON object"),
        (r#"{"token_type":"Bearer"}"#, "no `access_token`"),
        (r#"{"access_token":"CANARY","token_type":"mac"}"#, "Bearer"),
        (r#"{"access_token":"CANARY\r\nX: y"}"#, "visible ASCII"),
        (r#"{"access_token":""}"#, "visible ASCII"),
    ] {
        let err = ok(body).unwrap_err();
        assert!(err.to_string().contains(why), "{body}: {err}");
        assert!(!err.to_string().contains("CANARY"), "{err}");
    }

    let rejected = |status: u16, body: &str| {
        parse_response(
            "refresh_token",
            StatusCode::from_u16(status).unwrap(),
            body.as_bytes(),
        )
        .unwrap_err()
    };
    let err = rejected(
        400,
        r#"{"error":"invalid_grant","error_description":"CANARY token R1 revoked"}"#,
    );
    assert_eq!(
        err,
        TokenError::Rejected {
            grant: "refresh_token",
            status: 400,
            code: Some("invalid_grant")
        }
    );
    assert_eq!(
        err.to_string(),
        "the token endpoint refused the refresh_token grant (HTTP 400, invalid_grant)"
    );
    // An unregistered error code may be anything: it is not repeated.
    let err = rejected(401, r#"{"error":"CANARY-secret-abc"}"#);
    assert!(!err.to_string().contains("CANARY"), "{err}");
    assert_eq!(
        err.to_string(),
        "the token endpoint refused the refresh_token grant (HTTP 401)"
    );
    assert!(
        !rejected(503, "<html>CANARY</html>")
            .to_string()
            .contains("CANARY")
    );
}

#[test]
fn the_safety_margin_is_at_most_half_the_lifetime() {
    let now = Instant::now();
    let secs = |s| Some(Duration::from_secs(s));
    assert_eq!(
        usable_until(now, secs(3600)),
        now + Duration::from_secs(3540)
    );
    assert_eq!(usable_until(now, secs(60)), now + Duration::from_secs(30));
    assert_eq!(usable_until(now, secs(0)), now);
    assert_eq!(usable_until(now, None), now + Duration::from_secs(240));
}

/// Answers exchange number `n` (from 1) of a request.
type Answer = Box<dyn Fn(usize, &Request<Bytes>) -> (StatusCode, String) + Send + Sync>;

/// A token endpoint that counts exchanges and answers from a script.
struct Endpoint {
    calls: AtomicUsize,
    answer: Answer,
}

impl Endpoint {
    fn new(
        answer: impl Fn(usize, &Request<Bytes>) -> (StatusCode, String) + Send + Sync + 'static,
    ) -> Self {
        Self {
            calls: AtomicUsize::new(0),
            answer: Box::new(answer),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Exchange for Endpoint {
    fn send(&self, req: Request<Bytes>) -> Exchanged<'_> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let (status, body) = (self.answer)(n, &req);
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok((status, Bytes::from(body)))
        })
    }
}

fn issued(n: usize, lifetime: u64) -> (StatusCode, String) {
    (
        StatusCode::OK,
        format!(r#"{{"access_token":"AT{n}","token_type":"Bearer","expires_in":{lifetime}}}"#),
    )
}

fn key(user: &str) -> Key {
    Key {
        id: SecretId::parse(&format!("acme/{user}/crm")).unwrap(),
        service: ServiceName::parse("crm").unwrap(),
    }
}

fn store(dir: &std::path::Path) -> Arc<FileStore> {
    Arc::new(FileStore::open(dir.join("secrets.enc"), &MasterKey::new([7; 32])).unwrap())
}

#[tokio::test(start_paused = true)]
async fn tokens_are_cached_until_the_margin_and_shared_by_concurrent_callers() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = Arc::new(Tokens::new(store(dir.path())));
    let endpoint = Arc::new(Endpoint::new(|n, _| issued(n, 120)));
    let f = form(OAuth2Grant::ClientCredentials, ClientAuth::Basic);
    let stored = creds(None);

    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (tokens, endpoint, f, stored) =
            (tokens.clone(), endpoint.clone(), f.clone(), stored.clone());
        tasks.push(tokio::spawn(async move {
            tokens
                .access_token(&key("alice"), &stored, &f, None, &*endpoint)
                .await
                .unwrap()
                .access_token
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().expose(), b"AT1");
    }
    assert_eq!(
        endpoint.calls(),
        1,
        "one exchange for 50 concurrent callers"
    );

    // Used until 60 s before expiry, then replaced.
    tokio::time::advance(Duration::from_secs(59)).await;
    let t = tokens
        .access_token(&key("alice"), &stored, &f, None, &*endpoint)
        .await
        .unwrap()
        .access_token;
    assert_eq!(t.expose(), b"AT1");
    tokio::time::advance(Duration::from_secs(2)).await;
    let t = tokens
        .access_token(&key("alice"), &stored, &f, None, &*endpoint)
        .await
        .unwrap()
        .access_token;
    assert_eq!(t.expose(), b"AT2");

    // Another user's slot is another token.
    let t = tokens
        .access_token(&key("bob"), &stored, &f, None, &*endpoint)
        .await
        .unwrap()
        .access_token;
    assert_eq!(t.expose(), b"AT3");
}

#[tokio::test(start_paused = true)]
async fn a_rejected_token_is_replaced_once() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = Tokens::new(store(dir.path()));
    let endpoint = Endpoint::new(|n, _| issued(n, 3600));
    let f = form(OAuth2Grant::ClientCredentials, ClientAuth::Basic);
    let stored = creds(None);
    let first = tokens
        .access_token(&key("alice"), &stored, &f, None, &endpoint)
        .await
        .unwrap()
        .access_token;
    let second = tokens
        .access_token(&key("alice"), &stored, &f, Some(&first), &endpoint)
        .await
        .unwrap()
        .access_token;
    assert_eq!(second.expose(), b"AT2");
    // A caller still holding the first token gets the second without another exchange.
    let third = tokens
        .access_token(&key("alice"), &stored, &f, Some(&first), &endpoint)
        .await
        .unwrap()
        .access_token;
    assert_eq!(third.expose(), b"AT2");
    assert_eq!(endpoint.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_changed_credential_drops_its_cached_token() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = Tokens::new(store(dir.path()));
    let endpoint = Endpoint::new(|n, _| issued(n, 3600));
    let f = form(OAuth2Grant::RefreshToken, ClientAuth::Basic);
    let t = tokens
        .access_token(&key("alice"), &creds(Some("R1")), &f, None, &endpoint)
        .await;
    assert_eq!(t.unwrap().access_token.expose(), b"AT1");
    let t = tokens
        .access_token(&key("alice"), &creds(Some("R9")), &f, None, &endpoint)
        .await;
    assert_eq!(
        t.unwrap().access_token.expose(),
        b"AT2",
        "a reconnected account gets a fresh token"
    );
}

#[tokio::test(start_paused = true)]
async fn a_rotated_refresh_token_is_stored_with_compare_and_set() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let id = key("alice").id;
    store.set(&id, &creds(Some("R1"))).unwrap();
    let tokens = Tokens::new(store.clone());
    let endpoint = Endpoint::new(|n, req| {
        let p = params(req.body());
        let sent = &p.iter().find(|(k, _)| k == "refresh_token").unwrap().1;
        let next = format!("R{}", n + 1);
        assert_eq!(
            *sent,
            format!("R{n}"),
            "exchange {n} uses the newest refresh token"
        );
        (
            StatusCode::OK,
            format!(r#"{{"access_token":"AT{n}","expires_in":1,"refresh_token":"{next}"}}"#),
        )
    });
    let f = form(OAuth2Grant::RefreshToken, ClientAuth::Basic);
    let read = || store.get(&id.namespace, &id.name).unwrap().unwrap();
    let before = read();
    let issued = tokens
        .access_token(&key("alice"), &before, &f, None, &endpoint)
        .await
        .unwrap();
    assert_eq!(
        issued.refresh_token.unwrap().expose(),
        b"R2",
        "returned for scrubbing"
    );
    let now = OAuth2Credentials::parse(&read()).unwrap();
    assert_eq!(now.refresh_token.unwrap().expose(), b"R2");
    assert_eq!(now.client_secret.expose(), b"s&c/r=t");
    // A caller that read the credential before that rotation (it queued behind the exchange)
    // gets the fresh token, not a second exchange with the spent refresh token.
    let t = tokens
        .access_token(&key("alice"), &before, &f, None, &endpoint)
        .await;
    assert_eq!(t.unwrap().access_token.expose(), b"AT1");
    assert_eq!(endpoint.calls(), 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    tokens
        .access_token(&key("alice"), &read(), &f, None, &endpoint)
        .await
        .unwrap();
    assert_eq!(
        OAuth2Credentials::parse(&read())
            .unwrap()
            .refresh_token
            .unwrap()
            .expose(),
        b"R3"
    );

    // A concurrent change by another writer is not overwritten; the rotated token is kept in
    // memory for the next exchange while the store holds what this request read.
    let seen = read();
    store.set(&id, &creds(Some("OPERATOR"))).unwrap();
    tokio::time::advance(Duration::from_secs(2)).await;
    tokens
        .access_token(&key("alice"), &seen, &f, None, &endpoint)
        .await
        .unwrap();
    assert_eq!(
        OAuth2Credentials::parse(&read())
            .unwrap()
            .refresh_token
            .unwrap()
            .expose(),
        b"OPERATOR"
    );
}

#[tokio::test]
async fn endpoint_errors_leave_nothing_cached() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = Tokens::new(store(dir.path()));
    let endpoint = Endpoint::new(|n, _| match n {
        1 => (
            StatusCode::BAD_REQUEST,
            r#"{"error":"invalid_grant"}"#.into(),
        ),
        n => issued(n, 3600),
    });
    let f = form(OAuth2Grant::RefreshToken, ClientAuth::Basic);
    let err = tokens
        .access_token(&key("alice"), &creds(Some("R1")), &f, None, &endpoint)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        TokenError::Rejected {
            code: Some("invalid_grant"),
            ..
        }
    ));
    let t = tokens
        .access_token(&key("alice"), &creds(Some("R1")), &f, None, &endpoint)
        .await;
    assert_eq!(t.unwrap().access_token.expose(), b"AT2");
}

#[test]
fn code_and_revoke_requests() {
    let client = OAuth2Credentials::parse(&creds(None)).unwrap();
    let f = form(OAuth2Grant::RefreshToken, ClientAuth::Body);
    let req = code_request(&f, &client, "c0de", "https://a.test/cb", "v3rifier").unwrap();
    assert_eq!(req.uri(), "https://auth.example.test/oauth/token");
    let p = params(req.body());
    for pair in [
        ("grant_type", "authorization_code"),
        ("code", "c0de"),
        ("redirect_uri", "https://a.test/cb"),
        ("code_verifier", "v3rifier"),
        ("client_id", "id:1 é"),
        ("client_secret", "s&c/r=t"),
    ] {
        assert!(
            p.contains(&(pair.0.into(), pair.1.into())),
            "{pair:?} in {p:?}"
        );
    }
    assert!(!p.iter().any(|(k, _)| k == "scope"), "scope is not resent");

    let url = Target::parse("https://auth.example.test/revoke").unwrap();
    let req = revoke_request(&url, ClientAuth::Basic, &client, &Secret::from_text("R1")).unwrap();
    assert_eq!(req.uri(), "https://auth.example.test/revoke");
    assert!(req.headers()[header::AUTHORIZATION].is_sensitive());
    assert_eq!(
        params(req.body()),
        [("token", "R1"), ("token_type_hint", "refresh_token")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
    );
}
