//! `behalf serve`: run the sidecar until interrupted.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;

use super::exit;
use crate::policy::Origin;
use crate::reload::{Reloader, WATCH_INTERVAL};
use crate::serve::{Options, Sidecar, parse_connect_to};

/// Arguments of `behalf serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Dial ADDR for ORIGIN while keeping Host, SNI and certificate checks for ORIGIN
    /// (development mode only; audited as an override). Repeatable.
    #[arg(long = "connect-to", value_name = "ORIGIN=ADDR", value_parser = parse_connect_to)]
    connect_to: Vec<(Origin, SocketAddr)>,
    /// Evaluate a candidate policy set beside the active one; where they differ the audit
    /// record says `shadow: would_allow` or `would_deny`; it never changes an outcome, never
    /// injects, never widens CONNECT; reloaded like the active set. Its behalf.toml is only
    /// validated: the active settings apply.
    #[arg(long, value_name = "DIR")]
    shadow: Option<PathBuf>,
    /// Where the sidecar API listens (overrides `[listen] api`).
    #[arg(long, value_name = "ADDR")]
    api: Option<SocketAddr>,
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
        shadow: args.shadow,
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
    let api_addr = args.api.unwrap_or(settings.listen.api);
    let proxy_addr = args.proxy.unwrap_or(settings.listen.proxy);
    let (api_listener, proxy_listener) = match (
        bind(api_addr, "API").await,
        bind(proxy_addr, "forward proxy").await,
    ) {
        (Ok(a), Ok(p)) => (a, p),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            return exit::CONFIG;
        }
    };
    let api_addr = api_listener.local_addr().unwrap_or(api_addr);
    let proxy_addr = proxy_listener.local_addr().unwrap_or(proxy_addr);
    let signals = shutdown_signal();
    banner(&sidecar, api_addr, proxy_addr, &options);
    let max_connections = settings.limits.max_connections;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let api = sidecar.api().serve(
        api_listener,
        max_connections,
        until_stopped(stopped.clone()),
    );
    let proxy = sidecar.proxy().serve(
        proxy_listener,
        max_connections,
        until_stopped(stopped.clone()),
    );
    let watch = sidecar
        .reloader
        .clone()
        .watch(WATCH_INTERVAL, until_stopped(stopped.clone()));
    let hangup = reload_on_hangup(sidecar.reloader.clone(), until_stopped(stopped));
    let signal = async move {
        signals.await;
        let _ = stop.send(true);
    };
    tokio::join!(api, proxy, watch, hangup, signal);
    if let Err(e) = sidecar.egress.audit().sync() {
        eprintln!("error: final audit sync failed: {e}");
        return exit::INTERNAL;
    }
    eprintln!("behalf: stopped");
    exit::OK
}

/// Reloads the policy and tools on every SIGHUP until `shutdown` resolves. The handler is
/// installed now, not when the future is first polled.
fn reload_on_hangup(
    reloader: Arc<Reloader>,
    shutdown: impl Future<Output = ()>,
) -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let hangup = signal(SignalKind::hangup());
    async move {
        let Ok(mut hangup) = hangup else {
            return;
        };
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = hangup.recv() => {
                    let reloader = reloader.clone();
                    let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
                }
            }
        }
    }
}

/// SIGINT (Ctrl-C) or SIGTERM (what container runtimes send; as PID 1 it would otherwise be
/// ignored). The handlers are installed now, before the banner says behalf is running, so a
/// signal sent right after it is never missed.
fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

async fn bind(addr: SocketAddr, what: &str) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} ({what}): {e}"))
}

fn banner(sidecar: &Sidecar, api: SocketAddr, proxy: SocketAddr, options: &Options) {
    let settings = sidecar.policy.settings();
    let ca = sidecar.state.path().join("ca").join("ca.pem");
    let ca = ca.display();
    let policies = options.policies.display();
    let state = sidecar.state.path().display();
    eprintln!("behalf is running");
    if settings.dev {
        eprintln!("  DEVELOPMENT MODE (dev = true): dev issuer, generated keys, --connect-to");
    }
    eprintln!("  policies      {policies}");
    if let Some(shadow) = &options.shadow {
        eprintln!(
            "  shadow        {}  (audited where it differs)",
            shadow.display()
        );
    }
    eprintln!("  state         {state}");
    eprintln!(
        "  API           http://{api}  (POST /v1/tools/{{tool}}/invoke, GET /v1/tools, /healthz, /metrics)"
    );
    eprintln!("  forward proxy http://{proxy}  (HTTP, and HTTPS through CONNECT)");
    let tools: Vec<String> = sidecar
        .sandbox
        .tools()
        .manifests()
        .map(|m| m.name.to_string())
        .collect();
    eprintln!(
        "  tools         {}",
        if tools.is_empty() {
            "(none)".to_owned()
        } else {
            tools.join(", ")
        }
    );
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
            "  call a tool:    curl -H \"Authorization: Bearer $TOKEN\" -d '{{\"hello\": \"world\"}}' http://{api}/v1/tools/echo/invoke"
        );
        eprintln!(
            "  list tools:     curl -H \"Authorization: Bearer $TOKEN\" http://{api}/v1/tools"
        );
        eprintln!(
            "  use the proxy:  curl -x http://{proxy} --proxy-header \"Proxy-Authorization: Bearer $TOKEN\" http://..."
        );
        eprintln!("                  or HTTP_PROXY=http://u:$TOKEN@{proxy}");
        eprintln!("  HTTPS, trusting behalf's CA in that one process only:");
        eprintln!(
            "    curl          HTTPS_PROXY=http://u:$TOKEN@{proxy} curl --cacert {ca} https://..."
        );
        eprintln!(
            "    Python        HTTPS_PROXY=http://u:$TOKEN@{proxy} REQUESTS_CA_BUNDLE={ca} python3 app.py   (requests)"
        );
        eprintln!(
            "    Node          NODE_EXTRA_CA_CERTS={ca} node app.js   (with a proxy agent for HTTPS_PROXY, or NODE_USE_ENV_PROXY=1 on Node 24+)"
        );
    }
}
