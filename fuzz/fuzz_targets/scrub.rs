//! The response scrubber: a bearer credential chosen by the fuzzer is injected, then a body
//! chosen by the fuzzer, split into chunks chosen by the fuzzer, goes through
//! `scrub_response`. No scrubbed form may survive in the output, however the body is split.
//!
//! Input: `[secret_len][secret][n_chunks][chunk_len; n_chunks][body]`.
#![no_main]

use std::collections::VecDeque;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use behalf::egress::BoxBody;
use behalf::egress::body::boxed;
use behalf::egress::scrub::{MARKER, Searchers, scrub_response};
use behalf::inject::{self, Payload};
use behalf::policy::service::Template;
use behalf::policy::{Inject, Location, Service, ServiceName, Target};
use behalf::secrets::Secret;
use bytes::Bytes;
use http::HeaderName;
use http_body::{Body, Frame};
use libfuzzer_sys::fuzz_target;

/// A body that yields its chunks one per poll, always ready.
struct Chunks(VecDeque<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = behalf::egress::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

fn service() -> Service {
    Service {
        name: ServiceName::parse("fuzz").expect("a valid name"),
        origins: Vec::new(),
        credential: None,
        inject: None,
        scrub_responses: true,
        tls_roots: Vec::new(),
        allow_private_ips: false,
        allow_plaintext: false,
        allow_wildcard_origins: false,
        defined_at: Location::file(Path::new("services/fuzz.toml")),
        origin_locations: Vec::new(),
    }
}

/// Reads the whole body; every frame is ready at once, so nothing ever waits.
fn drain(mut body: BoxBody) -> Vec<u8> {
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    loop {
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    out.extend_from_slice(&data);
                }
            }
            Poll::Ready(Some(Err(e))) => panic!("body error: {e}"),
            Poll::Ready(None) => return out,
            Poll::Pending => panic!("the scrubber waited on a body that never waits"),
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let mut take = |n: usize| {
        let n = n.min(data.len());
        let (a, b) = data.split_at(n);
        data = b;
        a
    };
    let secret_len = take(1).first().copied().unwrap_or(0) as usize % 48;
    let Ok(secret) = std::str::from_utf8(take(secret_len)) else {
        return;
    };
    let n_chunks = take(1).first().copied().unwrap_or(0) as usize % 16;
    let lens: Vec<usize> = take(n_chunks).iter().map(|&b| b as usize).collect();
    let mut body = data;
    let mut chunks = VecDeque::new();
    for len in lens {
        let (a, b) = body.split_at(len.min(body.len()));
        chunks.push_back(Bytes::copy_from_slice(a));
        body = b;
    }
    chunks.push_back(Bytes::copy_from_slice(body));
    let whole: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();

    let form = Inject::Header {
        name: HeaderName::from_static("authorization"),
        template: Template::parse("Bearer {credential}", "credential").expect("a valid template"),
    };
    let (mut req, ()) = http::Request::get("https://x.test/")
        .body(())
        .expect("a valid request")
        .into_parts();
    let mut target = Target::parse("https://x.test/a").expect("a valid target");
    let Ok(injected) = inject::inject(
        &mut req,
        &mut target,
        &form,
        &Secret::from_text(secret),
        Payload::Buffered(b""),
        std::time::SystemTime::now(),
    ) else {
        return;
    };

    let (mut parts, ()) = http::Response::new(()).into_parts();
    let searchers = Searchers::new(8);
    let Ok((out, _count)) = scrub_response(
        &mut parts,
        boxed(Chunks(chunks)),
        &injected,
        &service(),
        &searchers,
    ) else {
        return;
    };
    let out = drain(out);

    // The same bytes unsplit must scrub to the same output.
    let (mut parts1, ()) = http::Response::new(()).into_parts();
    if let Ok((one, _)) = scrub_response(
        &mut parts1,
        boxed(Chunks(VecDeque::from([Bytes::from(whole.clone())]))),
        &injected,
        &service(),
        &searchers,
    ) {
        assert_eq!(drain(one), out, "the output depends on the chunking");
    }

    let s = secret.as_bytes();
    if s.len() >= 4 && !MARKER.contains(secret) && !secret.contains(['[', ']']) {
        assert!(!contains(&out, s), "the raw secret survived");
        let bearer = format!("Bearer {secret}");
        assert!(
            !contains(&out, bearer.as_bytes()),
            "the bearer form survived"
        );
        assert!(
            !contains(&out, STANDARD.encode(s).as_bytes()),
            "base64 survived"
        );
    }
});
