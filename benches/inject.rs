//! Step 5 of the egress pipeline, inject, per request: `behalf::inject::inject` on an
//! `http::request::Parts` and a `Target` as the pipeline hands them over (cleaned, before the
//! `Host` header and the outgoing URI are set), for each computed form against the plain
//! bearer header:
//!
//! - `inject/header`: `Authorization: Bearer {credential}`, the baseline;
//! - `inject/aws_sigv4/get_query`: an S3 `ListObjectsV2` GET with a query and no body;
//! - `inject/aws_sigv4/put_64k`: an S3 PUT of a buffered 64 KiB body (payload SHA-256 and
//!   signature), and `put_64k_unsigned` with `unsigned_payload = true` (the body streams);
//! - `inject/hmac/sha256_hex_slack_1k` and `inject/hmac/sha512_base64_1k`: the two examples of
//!   docs/policies.md over a 1 KiB body;
//! - `inject/oauth2/cached`: `Tokens::access_token` on a warm cache (over a `FileStore` in a
//!   temporary directory; the token endpoint is asked once in total) and then `inject` with the
//!   token.
//!
//! Every iteration clones a fixed template `Parts` (the baseline included, so the comparison is
//! fair) and drops the injected request and forms; credentials are parsed per request, as the
//! pipeline does. The signing time is fixed. The figures to compare are the ratios to
//! `inject/header`, not absolute times, which move with the machine.
//!
//! `cargo bench --bench inject`

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use behalf::inject::oauth2::{Exchange, Exchanged, Key, Tokens};
use behalf::inject::{Payload, inject, sigv4};
use behalf::policy::service::{
    ClientAuth, HmacAlgorithm, HmacForm, OAuth2Form, OAuth2Grant, SignatureEncoding, Template,
    TimestampFormat,
};
use behalf::policy::{Inject, ServiceName, Target};
use behalf::secrets::file::MasterKey;
use behalf::secrets::{FileStore, Secret, SecretId};
use bytes::Bytes;
use criterion::{
    BenchmarkGroup, Criterion, criterion_group, criterion_main, measurement::WallTime,
};
use http::header::{AUTHORIZATION, HeaderName};
use http::request::Parts;
use http::{Request, StatusCode};

/// 2026-11-30T12:00:00Z: a fixed signing time, so every iteration signs the same message.
fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_040_000)
}

/// A cleaned request head: method, absolute URI and the headers a tool typically sends.
fn parts(method: &str, url: &str, headers: &[(&str, &str)]) -> Parts {
    let mut b = Request::builder()
        .method(method)
        .uri(url)
        .header("user-agent", "behalf-tool/0.1")
        .header("accept", "*/*");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn header(name: &'static str) -> HeaderName {
    HeaderName::from_static(name)
}

/// One request shape and form: checked once, then measured.
struct Case<'a> {
    name: &'a str,
    template: Parts,
    url: &'a str,
    form: Inject,
    secret: Secret,
    body: Option<&'a [u8]>,
    /// Headers the injected request must carry.
    expect: &'a [&'static str],
}

impl Case<'_> {
    /// What the pipeline passes: the buffered body when the form signs it, else a stream.
    fn payload(&self) -> Payload<'_> {
        match self.body {
            Some(body) if self.form.signs_body() => Payload::Buffered(body),
            Some(_) => Payload::Streaming,
            None if self.form.signs_body() => Payload::Buffered(b""),
            None => Payload::Streaming,
        }
    }

    fn bench(&self, g: &mut BenchmarkGroup<'_, WallTime>) {
        let mut target = Target::parse(self.url).unwrap();
        let original = target.clone();
        let payload = self.payload();

        // Correctness first: the measured call succeeds and places the form's headers.
        let mut p = self.template.clone();
        let injected = inject(
            &mut p,
            &mut target,
            &self.form,
            &self.secret,
            payload,
            now(),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", self.name));
        assert!(!injected.is_empty());
        for name in self.expect {
            assert!(p.headers.contains_key(*name), "{}: no {name}", self.name);
        }
        // SigV4 hashed the body only when it was meant to.
        if let Some(sent) = p.headers.get("x-amz-content-sha256") {
            let expected = match payload {
                Payload::Buffered(body) => sigv4::payload_sha256(body),
                Payload::Streaming => sigv4::UNSIGNED_PAYLOAD.to_owned(),
            };
            assert_eq!(sent, expected.as_str(), "{}", self.name);
        }
        // None of these forms rewrites the target, so one target serves every iteration.
        assert_eq!(target, original);

        g.bench_function(self.name, |b| {
            b.iter(|| {
                let mut p = self.template.clone();
                let injected = inject(
                    black_box(&mut p),
                    black_box(&mut target),
                    black_box(&self.form),
                    black_box(&self.secret),
                    black_box(payload),
                    now(),
                )
                .unwrap();
                black_box((p, injected))
            })
        });
    }
}

fn sigv4(unsigned_payload: bool) -> Inject {
    Inject::AwsSigv4 {
        region: "eu-west-1".into(),
        service: "s3".into(),
        unsigned_payload,
    }
}

fn sigv4_secret() -> Secret {
    Secret::from_text(
        r#"{"access_key_id":"AKIAIOSFODNN7EXAMPLE","secret_access_key":"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}"#,
    )
}

fn slack_hmac() -> Inject {
    Inject::Hmac(HmacForm {
        header: header("x-slack-signature"),
        algorithm: HmacAlgorithm::Sha256,
        encoding: SignatureEncoding::Hex,
        message: HmacForm::parse_message("v0:{timestamp}:{body}").unwrap(),
        prefix: "v0=".into(),
        timestamp_header: Some(header("x-slack-request-timestamp")),
        timestamp: TimestampFormat::Unix,
    })
}

fn generic_hmac() -> Inject {
    Inject::Hmac(HmacForm {
        header: header("x-signature"),
        algorithm: HmacAlgorithm::Sha512,
        encoding: SignatureEncoding::Base64,
        message: HmacForm::parse_message("{method}\n{path}\n{timestamp}\n{body}").unwrap(),
        prefix: String::new(),
        timestamp_header: Some(header("x-timestamp")),
        timestamp: TimestampFormat::Unix,
    })
}

/// A JSON document of exactly `len` bytes.
fn json_body(len: usize) -> Vec<u8> {
    let mut body = br#"{"type":"event_callback","text":""#.to_vec();
    let tail = br#""}"#;
    body.resize(len - tail.len(), b'x');
    body.extend_from_slice(tail);
    body
}

fn bench(c: &mut Criterion) {
    let body_1k = json_body(1024);
    let body_64k: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    let bucket = "https://examplebucket.s3.eu-west-1.amazonaws.com";
    let list = format!("{bucket}/?list-type=2&prefix=photos%2F2026%2F&max-keys=100");
    let object = format!("{bucket}/photos/2026/cat.jpg");
    let hooks = "https://hooks.example.com/events";
    let orders = "https://api.example.com/v1/orders?dry_run=false";
    let json = [
        ("content-type", "application/json"),
        ("content-length", "1024"),
    ];

    let cases = [
        Case {
            name: "header",
            template: parts("GET", list.as_str(), &[]),
            url: &list,
            form: Inject::Header {
                name: AUTHORIZATION,
                template: Template::parse("Bearer {credential}", "credential").unwrap(),
            },
            secret: Secret::from_text("ghp_16C7e42F292c6912E7710c838347Ae178B4a"),
            body: None,
            expect: &["authorization"],
        },
        Case {
            name: "aws_sigv4/get_query",
            template: parts("GET", list.as_str(), &[]),
            url: &list,
            form: sigv4(false),
            secret: sigv4_secret(),
            body: None,
            expect: &["authorization", "x-amz-date", "x-amz-content-sha256"],
        },
        Case {
            name: "aws_sigv4/put_64k",
            template: parts(
                "PUT",
                object.as_str(),
                &[("content-type", "image/jpeg"), ("content-length", "65536")],
            ),
            url: &object,
            form: sigv4(false),
            secret: sigv4_secret(),
            body: Some(&body_64k),
            expect: &["authorization", "x-amz-date", "x-amz-content-sha256"],
        },
        Case {
            name: "aws_sigv4/put_64k_unsigned",
            template: parts(
                "PUT",
                object.as_str(),
                &[("content-type", "image/jpeg"), ("content-length", "65536")],
            ),
            url: &object,
            form: sigv4(true),
            secret: sigv4_secret(),
            body: Some(&body_64k),
            expect: &["authorization", "x-amz-date", "x-amz-content-sha256"],
        },
        Case {
            name: "hmac/sha256_hex_slack_1k",
            template: parts("POST", hooks, &json),
            url: hooks,
            form: slack_hmac(),
            secret: Secret::from_text("8f742231b10e8888abcd99yyyzzz85a5"),
            body: Some(&body_1k),
            expect: &["x-slack-signature", "x-slack-request-timestamp"],
        },
        Case {
            name: "hmac/sha512_base64_1k",
            template: parts("POST", orders, &json),
            url: orders,
            form: generic_hmac(),
            secret: Secret::from_text("k3y-0123456789abcdef0123456789abcdef"),
            body: Some(&body_1k),
            expect: &["x-signature", "x-timestamp"],
        },
    ];

    let mut g = c.benchmark_group("inject");
    for case in &cases {
        case.bench(&mut g);
    }
    oauth2_cached(&mut g);
    g.finish();
}

/// A token endpoint that counts exchanges and always issues `AT<n>` for an hour.
#[derive(Default)]
struct Endpoint {
    calls: AtomicUsize,
}

impl Exchange for Endpoint {
    fn send(&self, _req: Request<Bytes>) -> Exchanged<'_> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let body = format!(
            r#"{{"access_token":"AT{n}-eyJhbGciOiJSUzI1NiJ9","token_type":"Bearer","expires_in":3600}}"#
        );
        Box::pin(async move { Ok((StatusCode::OK, Bytes::from(body))) })
    }
}

fn oauth2_cached(g: &mut BenchmarkGroup<'_, WallTime>) {
    let tmp = tempfile::tempdir().unwrap();
    let store = FileStore::open(tmp.path().join("secrets.enc"), &MasterKey::new([7; 32])).unwrap();
    let tokens = Tokens::new(Arc::new(store));
    let endpoint = Endpoint::default();
    let form = OAuth2Form {
        token_url: Target::parse("https://auth.example.com/oauth/token").unwrap(),
        grant: OAuth2Grant::ClientCredentials,
        scopes: vec!["crm.read".into(), "crm.write".into()],
        audience: None,
        client_auth: ClientAuth::Basic,
        connect: None,
    };
    let inject_form = Inject::OAuth2(Box::new(form.clone()));
    let key = Key {
        id: SecretId::parse("acme/alice/crm").unwrap(),
        service: ServiceName::parse("crm").unwrap(),
    };
    let stored = Secret::from_text(
        r#"{"client_id":"behalf-bench","client_secret":"cs-0123456789abcdef0123456789abcdef"}"#,
    );
    let url = "https://crm.example.com/v1/contacts?limit=50";
    let template = parts("GET", url, &[]);
    let mut target = Target::parse(url).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // Warm the cache; this is the one exchange.
    let warm = rt
        .block_on(tokens.access_token(&key, &stored, &form, None, &endpoint))
        .unwrap();
    assert_eq!(
        warm.access_token.expose_str(),
        Some("AT1-eyJhbGciOiJSUzI1NiJ9")
    );
    let mut p = template.clone();
    inject(
        &mut p,
        &mut target,
        &inject_form,
        &warm.access_token,
        Payload::Buffered(b""),
        now(),
    )
    .unwrap();
    assert_eq!(p.headers[AUTHORIZATION], "Bearer AT1-eyJhbGciOiJSUzI1NiJ9");

    g.bench_function("oauth2/cached", |b| {
        // One `block_on` around the whole loop (what criterion's `to_async` does; its async
        // feature is not enabled here).
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let issued = tokens
                        .access_token(black_box(&key), black_box(&stored), &form, None, &endpoint)
                        .await
                        .unwrap();
                    let mut p = template.clone();
                    let injected = inject(
                        black_box(&mut p),
                        black_box(&mut target),
                        black_box(&inject_form),
                        &issued.access_token,
                        Payload::Buffered(b""),
                        now(),
                    )
                    .unwrap();
                    black_box((p, injected));
                }
                start.elapsed()
            })
        })
    });
    assert_eq!(
        endpoint.calls.load(Ordering::SeqCst),
        1,
        "every measured request used the cached token"
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
