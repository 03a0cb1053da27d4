//! `behalf serve`: run the sidecar until interrupted.

use std::net::SocketAddr;
use std::path::Path;

use clap::Args;

use super::exit;
use crate::policy::Origin;
use crate::serve::{Options, Sidecar, parse_connect_to};

/// Arguments of `behalf serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Dial ADDR for ORIGIN while keeping Host, SNI and certificate checks for ORIGIN
    /// (development mode only; audited as an override). Repeatable.
    #[arg(long = "connect-to", value_name = "ORIGIN=ADDR", value_parser = parse_connect_to)]
    connect_to: Vec<(Origin, SocketAddr)>,
    /// Where the forward proxy listens (overrides `[listen] proxy`).
    #[arg(long, value_name = "ADDR")]
    proxy: Option<SocketAddr>,
}

/// Runs `behalf serve`.
pub fn run(args: ServeArgs, policies: &Path, state: Option<&Path>) -> u8 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return exit::INTERNAL;
        }
    };
    runtime.block_on(serve(args, policies, state))
}

async fn serve(args: ServeArgs, policies: &Path, state: Option<&Path>) -> u8 {
    let options = Options {
        policies: policies.to_owned(),
        state: state.map(Path::to_owned),
        connect_to: args.connect_to,
    };
    let sidecar = match Sidecar::open(&options) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return if e.is_config() {
                exit::CONFIG
            } else {
                exit::INTERNAL
            };
        }
    };
    let settings = sidecar.policy.settings();
    let proxy_addr = args.proxy.unwrap_or(settings.listen.proxy);
    let listener = match tokio::net::TcpListener::bind(proxy_addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {proxy_addr} (forward proxy): {e}");
            return exit::CONFIG;
        }
    };
    let proxy_addr = listener.local_addr().unwrap_or(proxy_addr);
    banner(&sidecar, proxy_addr, &options);
    let max_connections = settings.limits.max_connections;
    let proxy = sidecar.proxy();
    proxy
        .serve(listener, max_connections, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    if let Err(e) = sidecar.egress.audit().sync() {
        eprintln!("error: final audit sync failed: {e}");
        return exit::INTERNAL;
    }
    eprintln!("behalf: stopped");
    exit::OK
}

fn banner(sidecar: &Sidecar, proxy: SocketAddr, options: &Options) {
    let settings = sidecar.policy.settings();
    let policies = options.policies.display();
    let state = sidecar.state.path().display();
    eprintln!("behalf is running");
    if settings.dev {
        eprintln!("  DEVELOPMENT MODE (dev = true): dev issuer, generated keys, --connect-to");
    }
    eprintln!("  policies      {policies}");
    eprintln!("  state         {state}");
    eprintln!("  forward proxy http://{proxy}  (HTTP, and HTTPS through CONNECT)");
    eprintln!(
        "  CA            {}/ca/ca.pem  (trust it per process, never system-wide: docs/https.md)",
        sidecar.state.path().display()
    );
    for (origin, addr) in &options.connect_to {
        eprintln!("  connect-to    {origin} -> {addr} (override, audited)");
    }
    if settings.dev {
        eprintln!();
        eprintln!(
            "  mint a token:   TOKEN=$(behalf --policies {policies} --state {state} token mint --tenant acme --user alice --group engineering)"
        );
        eprintln!(
            "  use the proxy:  curl -x http://{proxy} --proxy-header \"Proxy-Authorization: Bearer $TOKEN\" http://..."
        );
        eprintln!("                  or HTTP_PROXY=http://u:$TOKEN@{proxy}");
        eprintln!(
            "  HTTPS:          HTTPS_PROXY=http://u:$TOKEN@{proxy} curl --cacert {}/ca/ca.pem https://...",
            sidecar.state.path().display()
        );
    }
}
