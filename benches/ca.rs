//! Interception CA cost: minting a leaf certificate (a cache miss), looking one up (a hit),
//! building a per-tunnel `ServerConfig`, and a full TLS 1.3 handshake against it, client and
//! server in memory (no sockets), with the leaf cached and with a fresh mint.
//!
//! `cargo bench --bench ca`

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use behalf::proxy::ca::{self, Ca};
use behalf::state::StateDir;
use criterion::{Criterion, criterion_group, criterion_main};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

fn client_config(ca: &Ca) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert_der().clone()).unwrap();
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Runs a handshake to completion over in-memory buffers.
fn handshake(client: &Arc<ClientConfig>, server: Arc<ServerConfig>, host: &str) {
    let name = ServerName::try_from(host.to_owned()).unwrap();
    let mut c = ClientConnection::new(client.clone(), name).unwrap();
    let mut s = ServerConnection::new(server).unwrap();
    let mut buf = Vec::new();
    while c.is_handshaking() || s.is_handshaking() {
        buf.clear();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).unwrap();
        }
        s.process_new_packets().unwrap();
        buf.clear();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
        }
        c.process_new_packets().unwrap();
    }
    assert_eq!(c.alpn_protocol(), Some(&b"h2"[..]));
}

fn bench(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let state = StateDir::open(&tmp.path().join("state")).unwrap();
    let ca = Arc::new(Ca::open(&state).unwrap());
    let client = client_config(&ca);
    let n = AtomicU64::new(0);
    let fresh = || format!("h{}.bench.test", n.fetch_add(1, Ordering::Relaxed));

    let mut g = c.benchmark_group("ca");
    g.bench_function("leaf_mint", |b| {
        b.iter(|| black_box(ca.leaf(&fresh()).unwrap()))
    });
    ca.leaf("api.github.test").unwrap();
    g.bench_function("leaf_cached", |b| {
        b.iter(|| black_box(ca.leaf(black_box("api.github.test")).unwrap()))
    });
    g.bench_function("server_config_for", |b| {
        b.iter(|| black_box(ca::server_config_for(&ca, "api.github.test").unwrap()))
    });
    g.bench_function("handshake_cached_leaf", |b| {
        b.iter(|| {
            let server = ca::server_config_for(&ca, "api.github.test").unwrap();
            handshake(&client, server, "api.github.test");
        })
    });
    g.bench_function("handshake_fresh_leaf", |b| {
        b.iter(|| {
            let host = fresh();
            let server = ca::server_config_for(&ca, &host).unwrap();
            handshake(&client, server, &host);
        })
    });
    let shared = ca::server_config(ca.clone());
    g.bench_function("handshake_shared_config", |b| {
        b.iter(|| handshake(&client, shared.clone(), "api.github.test"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
