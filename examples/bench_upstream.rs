//! The upstream for `benches/load.sh`: a small HTTP/1.1 keep-alive server that answers
//! `200 ok` only when `Authorization: Bearer <expected>` arrived, and `401` otherwise, so a
//! proxy under test is verified to really inject the credential on every request.
//!
//! ```console
//! $ cargo run --release --example bench_upstream -- 127.0.0.1:0 EXPECTED_TOKEN
//! 127.0.0.1:40123
//! ```
//!
//! Arguments: the address to listen on (port 0 picks a free port) and the expected bearer
//! token; either may instead come from `BENCH_UPSTREAM_ADDR` / `BENCH_UPSTREAM_TOKEN`.
//! `BENCH_UPSTREAM_THREADS` sets the worker thread count (default: one per core).
//! The bound address is printed once on stdout; nothing is printed per request.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const OK_BODY: &[u8] = b"{\"ok\":true,\"note\":\"bench upstream: credential accepted\"}\n";
const DENIED_BODY: &[u8] = b"{\"ok\":false,\"error\":\"missing or wrong bearer token\"}\n";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .or_else(|| std::env::var("BENCH_UPSTREAM_ADDR").ok())
        .unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let Some(token) = args
        .next()
        .or_else(|| std::env::var("BENCH_UPSTREAM_TOKEN").ok())
    else {
        eprintln!("usage: bench_upstream [ADDR] TOKEN   (or BENCH_UPSTREAM_TOKEN)");
        return ExitCode::from(2);
    };
    let addr: SocketAddr = match addr.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: bad listen address {addr:?}: {e}");
            return ExitCode::from(2);
        }
    };
    let expected = match HeaderValue::from_str(&format!("Bearer {token}")) {
        Ok(v) => Arc::new(v),
        Err(e) => {
            eprintln!("error: the token is not a valid header value: {e}");
            return ExitCode::from(2);
        }
    };

    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(n) = std::env::var("BENCH_UPSTREAM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
    {
        runtime.worker_threads(n);
    }
    let runtime = match runtime.build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(addr, expected)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(addr: SocketAddr, expected: Arc<HeaderValue>) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    // The one line the load script reads to learn the port.
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{local}")?;
        stdout.flush()?;
    }

    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            // Out of file descriptors and the like: keep serving the connections we have.
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let expected = Arc::clone(&expected);
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(req, Arc::clone(&expected)));
            // Errors here are clients going away mid-request; a benchmark upstream stays quiet.
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    expected: Arc<HeaderValue>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut values = req.headers().get_all(AUTHORIZATION).iter();
    // Exactly one Authorization header, equal to the expected one: a duplicated header (the
    // caller's plus an injected one) is a failure too.
    let authorised = matches!((values.next(), values.next()), (Some(v), None) if v == *expected);
    let (status, body) = if authorised {
        (StatusCode::OK, OK_BODY)
    } else {
        (StatusCode::UNAUTHORIZED, DENIED_BODY)
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if !authorised {
        headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    Ok(response)
}
