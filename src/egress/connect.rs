//! Step 6, connect: resolve through the [`Resolver`] seam, refuse private and metadata
//! addresses (the SSRF guard), dial exactly the address that was checked, and speak TLS with
//! the origin's name for SNI and certificate checks. Pooled per service.
//!
//! Contract: a connection is only ever made to an address that passed [`classify`] for the
//! service, or to a `--connect-to` override (development mode only, audited as an override).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::body::BoxBody;
use crate::policy::{Origin, Scheme};

/// Resolves host names to addresses. Tests and `--connect-to` plug in here.
pub trait Resolver: Send + Sync + 'static {
    /// The addresses for `host` (a name, never an IP literal) and `port`.
    fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + '_>>;
}

/// The system resolver (getaddrinfo through tokio).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + '_>> {
        let host = host.to_owned();
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

/// What an address is, for the SSRF guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrClass {
    /// A public unicast address.
    Public,
    /// Loopback, private, link-local, CGNAT, multicast, reserved, translation and similar
    /// ranges: refused unless the service sets `allow_private_ips`.
    Private,
    /// A cloud metadata endpoint: refused always.
    Metadata,
}

/// Classifies an address. IPv4-mapped and -compatible IPv6 forms are judged by the IPv4
/// address they carry.
pub fn classify(ip: IpAddr) -> AddrClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return classify_v4(v4);
            }
            let seg = v6.segments();
            let metadata = [
                Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254),
                Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0023),
            ];
            if metadata.contains(&v6) {
                return AddrClass::Metadata;
            }
            // IPv4-compatible (::a.b.c.d, deprecated) carries an IPv4 address too.
            if seg[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified() {
                let [a, b] = seg[6].to_be_bytes();
                let [c, d] = seg[7].to_be_bytes();
                return match classify_v4(Ipv4Addr::new(a, b, c, d)) {
                    AddrClass::Metadata => AddrClass::Metadata,
                    _ => AddrClass::Private,
                };
            }
            let private = v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00 // fc00::/7 unique local
                || (seg[0] & 0xffc0) == 0xfe80 // fe80::/10 link-local
                || (seg[0] & 0xffc0) == 0xfec0 // fec0::/10 site-local (deprecated)
                || seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] // 64:ff9b::/96 NAT64
                || seg[..2] == [0x64, 0xff9b] // 64:ff9b:1::/48 local NAT64
                || seg[0] == 0x2002 // 2002::/16 6to4
                || (seg[0] == 0x2001 && seg[1] == 0) // 2001::/32 Teredo
                || (seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation
                || seg[0] == 0x0100 && seg[1..4] == [0, 0, 0]; // 100::/64 discard
            if private {
                AddrClass::Private
            } else {
                AddrClass::Public
            }
        }
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddrClass {
    const METADATA: [Ipv4Addr; 4] = [
        Ipv4Addr::new(169, 254, 169, 254), // AWS, GCP, Azure IMDS
        Ipv4Addr::new(169, 254, 170, 2),   // AWS ECS task metadata
        Ipv4Addr::new(100, 100, 100, 200), // Alibaba Cloud
        Ipv4Addr::new(168, 63, 129, 16),   // Azure WireServer
    ];
    if METADATA.contains(&ip) {
        return AddrClass::Metadata;
    }
    let [a, b, ..] = ip.octets();
    let private = ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0 // 0.0.0.0/8
        || (a == 100 && (64..128).contains(&b)) // 100.64.0.0/10 CGNAT
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // 192.0.0.0/24 protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // 198.18.0.0/15 benchmarking
        || a >= 240; // 240.0.0.0/4 reserved
    if private {
        AddrClass::Private
    } else {
        AddrClass::Public
    }
}

/// Why a connection was not made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// Every address the name resolved to is refused by the SSRF guard.
    #[error("{host} resolves only to refused addresses ({addrs}); {why}")]
    Refused {
        /// The host.
        host: String,
        /// The refused addresses.
        addrs: String,
        /// Which rule.
        why: &'static str,
    },
    /// Name resolution failed.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        /// The host.
        host: String,
        /// The cause.
        source: io::Error,
    },
    /// Connecting failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address dialled.
        addr: SocketAddr,
        /// The cause.
        source: io::Error,
    },
    /// Connecting took too long.
    #[error("connecting to {0} timed out")]
    Timeout(String),
    /// The TLS handshake failed (bad certificate, wrong name, expired, protocol).
    #[error("TLS with {host} failed: {source}")]
    Tls {
        /// The host.
        host: String,
        /// The cause.
        source: io::Error,
    },
    /// The URI lacks a host (cannot happen for normalised targets).
    #[error("request URI has no host")]
    NoHost,
}

/// How one service's connections are made.
#[derive(Clone)]
pub struct Connector {
    resolver: Arc<dyn Resolver>,
    overrides: Arc<HashMap<Origin, SocketAddr>>,
    allow_private: bool,
    tls: tokio_rustls::TlsConnector,
    connect_timeout: Duration,
}

impl Connector {
    /// A connector with the given resolver, `--connect-to` overrides, SSRF setting and TLS
    /// configuration (which must offer ALPN h2 and http/1.1).
    pub fn new(
        resolver: Arc<dyn Resolver>,
        overrides: Arc<HashMap<Origin, SocketAddr>>,
        allow_private: bool,
        tls: Arc<rustls::ClientConfig>,
        connect_timeout: Duration,
    ) -> Self {
        Self {
            resolver,
            overrides,
            allow_private,
            tls: tokio_rustls::TlsConnector::from(tls),
            connect_timeout,
        }
    }

    /// The addresses that may be dialled for an origin, checked.
    async fn addresses(&self, origin: &Origin) -> Result<Vec<SocketAddr>, ConnectError> {
        if let Some(addr) = self.overrides.get(origin) {
            return Ok(vec![*addr]);
        }
        let host = origin.host.as_str();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let candidates = match bare.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, origin.port)],
            Err(_) => self
                .resolver
                .resolve(bare, origin.port)
                .await
                .map_err(|source| ConnectError::Resolve {
                    host: host.to_owned(),
                    source,
                })?,
        };
        let (allowed, refused): (Vec<_>, Vec<_>) =
            candidates
                .into_iter()
                .partition(|a| match classify(a.ip()) {
                    AddrClass::Public => true,
                    AddrClass::Private => self.allow_private,
                    AddrClass::Metadata => false,
                });
        if allowed.is_empty() {
            let metadata = refused
                .iter()
                .any(|a| classify(a.ip()) == AddrClass::Metadata);
            return Err(ConnectError::Refused {
                host: host.to_owned(),
                addrs: refused
                    .iter()
                    .map(|a| a.ip().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                why: if metadata {
                    "cloud metadata addresses are always refused"
                } else {
                    "private, loopback and link-local addresses need `allow_private_ips = true` \
                     on the service"
                },
            });
        }
        Ok(allowed)
    }

    async fn connect(self, uri: http::Uri) -> Result<TokioIo<Upstream>, ConnectError> {
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::Http,
            _ => Scheme::Https,
        };
        let authority = uri.authority().ok_or(ConnectError::NoHost)?;
        let origin =
            Origin::from_parts(scheme, authority.as_str()).map_err(|_| ConnectError::NoHost)?;
        let addrs = self.addresses(&origin).await?;
        let mut last = None;
        let mut tcp = None;
        for addr in addrs {
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    tcp = Some(s);
                    break;
                }
                Ok(Err(source)) => last = Some(ConnectError::Connect { addr, source }),
                Err(_) => last = Some(ConnectError::Timeout(addr.to_string())),
            }
        }
        let Some(tcp) = tcp else {
            return Err(last.unwrap_or(ConnectError::NoHost));
        };
        let _ = tcp.set_nodelay(true);
        if scheme == Scheme::Http {
            return Ok(TokioIo::new(Upstream {
                io: Box::pin(tcp),
                h2: false,
            }));
        }
        let host = origin.host.as_str();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let name = rustls::pki_types::ServerName::try_from(bare.to_owned())
            .map_err(|_| ConnectError::NoHost)?;
        let handshake = self.tls.connect(name, tcp);
        let tls = tokio::time::timeout(self.connect_timeout, handshake)
            .await
            .map_err(|_| ConnectError::Timeout(format!("TLS handshake with {host}")))?
            .map_err(|source| ConnectError::Tls {
                host: host.to_owned(),
                source,
            })?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        Ok(TokioIo::new(Upstream {
            io: Box::pin(tls),
            h2,
        }))
    }
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<Upstream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        Box::pin(self.clone().connect(uri))
    }
}

trait Io: AsyncRead + AsyncWrite + Send {}
impl<T: AsyncRead + AsyncWrite + Send> Io for T {}

/// An upstream connection, plain or TLS.
pub struct Upstream {
    io: Pin<Box<dyn Io>>,
    h2: bool,
}

impl Connection for Upstream {
    fn connected(&self) -> Connected {
        let c = Connected::new();
        if self.h2 { c.negotiated_h2() } else { c }
    }
}

impl AsyncRead for Upstream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.io.as_mut().poll_read(cx, buf)
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.io.as_mut().poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io.as_mut().poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.io.as_mut().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// A pooled HTTP/1.1 + HTTP/2 client for one service.
pub type UpstreamClient = HyperClient<Connector, BoxBody>;

/// Builds a pooled client around a connector. Redirects are never followed (hyper's client
/// does not follow them).
pub fn client(connector: Connector) -> UpstreamClient {
    HyperClient::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector)
}

/// A TLS client configuration with ALPN for HTTP/2 and HTTP/1.1.
pub fn tls_config(
    roots: rustls::RootCertStore,
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(s: &str) -> AddrClass {
        classify(s.parse().unwrap())
    }

    #[test]
    fn ssrf_ranges() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.2",
            "ff02::1",
        ] {
            assert_eq!(class(private), AddrClass::Private, "{private}");
        }
        for metadata in ["169.254.169.254", "::ffff:169.254.169.254", "fd00:ec2::254"] {
            assert_eq!(class(metadata), AddrClass::Metadata, "{metadata}");
        }
        for public in [
            "8.8.8.8",
            "140.82.112.6",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(class(public), AddrClass::Public, "{public}");
        }
    }
}
