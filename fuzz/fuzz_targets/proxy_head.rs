//! Proxy request heads: raw HTTP/1.1 bytes through hyper's server, configured as the proxy
//! configures it, then the behalf-owned parsing every request gets before egress:
//! `Proxy-Authorization` (`proxy::proxy_token`), the CONNECT target (`proxy::connect_origin`)
//! and absolute-form targets (`egress::normalise`).
#![no_main]

use std::convert::Infallible;
use std::sync::OnceLock;

use behalf::egress::normalise::normalise;
use behalf::policy::Scheme;
use behalf::proxy::{connect_origin, proxy_token};
use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
    })
}

/// What the proxy does with a request's head before the pipeline.
fn check(req: &Request<Incoming>) {
    if let Ok(token) = proxy_token(req.headers()) {
        assert_eq!(token.trim(), token.as_str());
    }
    if req.method() == Method::CONNECT {
        if let Ok(origin) = connect_origin(req.uri()) {
            assert_eq!(origin.scheme, Scheme::Https);
            assert_eq!(Some(origin.port), req.uri().port_u16());
        }
    } else {
        let (parts, ()) = Request::builder()
            .method(req.method().clone())
            .uri(req.uri().clone())
            .version(req.version())
            .body(())
            .expect("parts of a parsed request")
            .into_parts();
        let mut parts = parts;
        parts.headers = req.headers().clone();
        if let Ok(target) = normalise(&parts) {
            let path = &target.path;
            assert!(path.starts_with('/') && !path.contains("//"), "{path:?}");
            let inner = path.strip_suffix('/').unwrap_or(path);
            assert!(
                inner.split('/').skip(1).all(|s| s != "." && s != ".."),
                "{path:?}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    runtime().block_on(async {
        let (mut client, server) = tokio::io::duplex(data.len() + 64 * 1024);
        // Everything is buffered before hyper reads, then the client stops writing.
        if client.write_all(data).await.is_err() || client.shutdown().await.is_err() {
            return;
        }
        let service = service_fn(|req: Request<Incoming>| async move {
            check(&req);
            Ok::<_, Infallible>(Response::new(String::new()))
        });
        // The proxy's limits (src/proxy/mod.rs): 64 KiB of head, 100 headers.
        let _ = hyper::server::conn::http1::Builder::new()
            .max_buf_size(64 * 1024)
            .max_headers(100)
            .serve_connection(TokioIo::new(server), service)
            .with_upgrades()
            .await;
        drop(client);
    });
});
