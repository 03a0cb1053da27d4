//! Step 8 of the egress pipeline, scrub: throughput of
//! `behalf::egress::scrub::scrub_response` on a 1 MiB JSON response body, driven to its end
//! with `http_body_util::BodyExt::collect`, for each credential form a service can inject:
//!
//! - `bearer`: `Authorization: Bearer {credential}` (a GitHub-style token);
//! - `basic`: HTTP Basic with a fixed username;
//! - `query`: an `appid` query parameter;
//! - `oauth2`: an OAuth2 access token as `Authorization: Bearer`, plus the client secret the
//!   pipeline also scrubs;
//! - `aws_sigv4`: an S3 GET signed with SigV4 (a per-request signature, so its searcher is
//!   built for every response, as in the pipeline).
//!
//! The services are parsed from policy TOML, the forms come from `behalf::inject::inject`, and
//! one `Searchers` serves every iteration, as the pipeline keeps one. Each form is measured on:
//!
//! - `none`: a body that contains no form of the credential;
//! - `few`: the same body with 8 occurrences, cycling through the injected forms;
//!
//! each delivered as one 1 MiB frame (`1_chunk`) or as 1 KiB frames (`1k_chunks`), as a
//! socket read loop would hand them over. `passthrough/*` is the baseline: the same bodies
//! through `scrub_response` for a service with `scrub_responses = false` (returned untouched).
//! The request, the response head and the body's frames are built outside the timing; the
//! collected body is dropped outside it. One current-thread tokio runtime is built once.
//!
//! `cargo bench --bench scrub`

use std::collections::VecDeque;
use std::convert::Infallible;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use behalf::egress::BoxBody;
use behalf::egress::body::boxed;
use behalf::egress::scrub::{Searchers, scrub_response};
use behalf::inject::{Injected, Payload, inject};
use behalf::policy::{PolicySet, Service, SourceFile, Sources, Target};
use behalf::secrets::Secret;
use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{
    BatchSize, BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main,
};
use http::response::Parts;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use tokio::runtime::Runtime;

const BODY_LEN: usize = 1024 * 1024;
const CHUNK: usize = 1024;
/// Occurrences in the `few` bodies.
const OCCURRENCES: usize = 8;

/// The services, as an operator would write them.
const SERVICES: &[(&str, &str)] = &[
    (
        "bearer",
        r#"inject = { header = "Authorization", template = "Bearer {credential}" }"#,
    ),
    ("basic", r#"inject = { basic = { username = "x-token" } }"#),
    ("query", r#"inject = { query = "appid" }"#),
    (
        "oauth2",
        r#"inject = { oauth2 = { token_url = "https://auth.example.com/oauth/token", grant = "client_credentials", scopes = ["crm.read"] } }"#,
    ),
    (
        "aws_sigv4",
        r#"inject = { aws_sigv4 = { region = "eu-west-1", service = "s3" } }"#,
    ),
    (
        "passthrough",
        "inject = { header = \"Authorization\", template = \"Bearer {credential}\" }\n\
         scrub_responses = false",
    ),
];

const CLIENT_SECRET: &str = "cs-7Qm2xV9pL4kR8tN1wB6yH3jD5fG0sA2z";

fn policy() -> PolicySet {
    let services = SERVICES
        .iter()
        .map(|(name, inject)| {
            SourceFile::new(
                format!("services/{name}.toml"),
                format!(
                    "[service]\nname = \"{}\"\norigins = [\"https://{}.example.com\"]\n\
                     credential = {{ name = \"{name}\", scope = \"user\" }}\n{inject}\n",
                    name.replace('_', "-"),
                    name.replace('_', "-"),
                ),
            )
        })
        .collect();
    let sources = Sources {
        settings: None,
        services,
        tenants: Vec::new(),
        tests: Vec::new(),
        base: PathBuf::from("."),
    };
    PolicySet::from_sources(&sources).expect("the bench policy is valid")
}

/// What the inject step returns for `service`, as the pipeline builds it.
fn injected(service: &Service) -> Injected {
    let form = service.inject.as_ref().unwrap();
    let secret = match service.name.as_str() {
        "oauth2" => "ya29.a0AfB_byC3kM9Qx7LpV2nR5sT8wY1zD4fG6hJ0kL3mN7qP",
        "aws-sigv4" => {
            r#"{"access_key_id":"AKIAIOSFODNN7EXAMPLE","secret_access_key":"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}"#
        }
        "query" => "b1b15e88fa797225412429c1c50c122a1",
        _ => "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
    };
    let url = format!("https://{}.example.com/v1/items?limit=100", service.name);
    let mut parts = Request::get(url.as_str())
        .header("accept", "application/json")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let mut target = Target::parse(&url).unwrap();
    let mut injected = inject(
        &mut parts,
        &mut target,
        form,
        &Secret::from_text(secret),
        Payload::Buffered(b""),
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_040_000),
    )
    .unwrap();
    if service.name.as_str() == "oauth2" {
        // Never sent upstream, but scrubbed (the pipeline adds it the same way).
        injected.also(CLIENT_SECRET.as_bytes());
    }
    assert!(!injected.is_empty());
    injected
}

/// A JSON array of user records, exactly `BODY_LEN` bytes, with `forms` written into the
/// `note` fields of evenly spaced records.
fn body(forms: &[&[u8]]) -> Bytes {
    let mut records = Vec::new();
    let mut i = 0;
    let mut len = 1;
    while len < BODY_LEN - 4096 {
        let r = format!(
            r#"{{"id":{i},"login":"user-{i}","node_id":"MDQ6VXNlcnsxMjM0NTY3OH0=","url":"https://api.example.com/users/user-{i}","type":"User","site_admin":false,"note":""}},"#
        )
        .into_bytes();
        len += r.len();
        records.push(r);
        i += 1;
    }
    let step = records.len() / (forms.len() + 1);
    for (k, form) in forms.iter().enumerate() {
        let r = &mut records[(k + 1) * step];
        let at = r.len() - 3;
        r.splice(at..at, form.iter().copied());
    }
    let mut out = b"[".to_vec();
    for r in records {
        out.extend_from_slice(&r);
    }
    // Pad the last record's note up to the exact length, then close the array.
    out.pop();
    let pad = BODY_LEN - out.len() - 1;
    out.truncate(out.len() - 2);
    out.extend(std::iter::repeat_n(b'.', pad));
    out.extend_from_slice(b"\"}]");
    assert_eq!(out.len(), BODY_LEN);
    Bytes::from(out)
}

/// A body of ready data frames.
struct Frames(VecDeque<Bytes>);

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

fn framed(body: &Bytes, chunk: usize) -> BoxBody {
    if chunk >= body.len() {
        return boxed(Full::new(body.clone()));
    }
    let frames = (0..body.len())
        .step_by(chunk)
        .map(|at| body.slice(at..(at + chunk).min(body.len())))
        .collect();
    boxed(Frames(frames))
}

fn head() -> Parts {
    Response::builder()
        .status(200)
        .header("content-type", "application/json; charset=utf-8")
        .header("content-length", BODY_LEN.to_string())
        .header("cache-control", "private, max-age=60")
        .header("etag", "\"7f3c9a2b41d5e6f8\"")
        .header("x-request-id", "0f6c1c9e-3b8a-4c1e-9d5f-2a7b8c9d0e1f")
        .body(())
        .unwrap()
        .into_parts()
        .0
}

/// One service and body shape: checked once, then measured in both framings.
struct Case<'a> {
    service: &'a Service,
    injected: Injected,
    body: Bytes,
    /// Occurrences `scrub_response` must find.
    expect: u64,
}

impl Case<'_> {
    fn run(&self, rt: &Runtime, searchers: &Searchers, chunk: usize) -> (Bytes, u64) {
        let mut parts = head();
        let (body, scrubbed) = scrub_response(
            &mut parts,
            framed(&self.body, chunk),
            &self.injected,
            self.service,
            searchers,
        )
        .unwrap();
        let out = rt.block_on(body.collect()).unwrap().to_bytes();
        (out, scrubbed.get())
    }

    fn bench(&self, id: &str, g: &mut BenchmarkGroup<'_, WallTime>, rt: &Runtime, s: &Searchers) {
        for (framing, chunk) in [("1_chunk", BODY_LEN), ("1k_chunks", CHUNK)] {
            // Correctness first: the count, and no form left in the output.
            let (out, n) = self.run(rt, s, chunk);
            assert_eq!(n, self.expect, "{id}/{framing}");
            if self.service.scrub_responses {
                for form in self.injected.forms() {
                    assert!(
                        !out.windows(form.len()).any(|w| w == form),
                        "{id}/{framing}: a form is left"
                    );
                }
            } else {
                assert_eq!(out, self.body, "{id}/{framing}");
            }

            g.bench_function(format!("{id}/{framing}"), |b| {
                b.iter_batched(
                    || (head(), framed(&self.body, chunk)),
                    |(mut parts, body)| {
                        let (body, _) =
                            scrub_response(&mut parts, body, &self.injected, self.service, s)
                                .unwrap();
                        (parts, rt.block_on(body.collect()).unwrap())
                    },
                    BatchSize::SmallInput,
                )
            });
        }
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let policy = policy();
    let searchers = Searchers::new(64);
    let clean = body(&[]);

    let mut g = c.benchmark_group("scrub");
    g.throughput(Throughput::Bytes(BODY_LEN as u64));
    for (name, _) in SERVICES {
        let service = policy
            .services()
            .iter()
            .find(|s| s.name.as_str() == name.replace('_', "-"))
            .unwrap();
        let injected = injected(service);
        if !service.scrub_responses {
            let case = Case {
                service,
                injected,
                body: clean.clone(),
                expect: 0,
            };
            case.bench(name, &mut g, &rt, &searchers);
            continue;
        }
        let forms: Vec<&[u8]> = injected.forms().collect();
        let few: Vec<&[u8]> = (0..OCCURRENCES).map(|k| forms[k % forms.len()]).collect();
        let few = body(&few);
        let none = Case {
            service,
            injected,
            body: clean.clone(),
            expect: 0,
        };
        none.bench(&format!("{name}/none"), &mut g, &rt, &searchers);
        let few = Case {
            body: few,
            expect: OCCURRENCES as u64,
            ..none
        };
        few.bench(&format!("{name}/few"), &mut g, &rt, &searchers);
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
