//! The interception CA: created private and correct, reloaded unchanged, one CA under racing
//! first uses, broken files named, leaves minted once per host and trusted by a client that
//! trusts only this CA (handshakes over in-memory buffers), and `behalf ca export`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use behalf::proxy::ca::{self, CA_DIR, CERT_FILE, Ca, CaError, KEY_FILE, LEAF_CACHE_CAPACITY};
use behalf::state::StateDir;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use x509_parser::extensions::GeneralName;

use crate::support::copy_dir;

const HOST: &str = "api.github.test";

fn fresh_state() -> (tempfile::TempDir, StateDir) {
    let tmp = tempfile::tempdir().unwrap();
    let state = StateDir::open(&tmp.path().join("state")).unwrap();
    (tmp, state)
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client trusting exactly `roots`, offering `alpn`.
fn client_with(roots: RootCertStore, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A client trusting only `ca`, offering `h2` and `http/1.1`.
fn client(ca: &Ca) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert_der().clone()).unwrap();
    client_with(roots, &[b"h2", b"http/1.1"])
}

/// A completed handshake's view from the client.
#[derive(Debug)]
struct Handshake {
    alpn: Option<Vec<u8>>,
    server_cert: CertificateDer<'static>,
}

/// Runs a TLS handshake between `client` (connecting to `name`) and `server` over in-memory
/// buffers; the first error from either side ends it.
fn handshake(
    client: &Arc<ClientConfig>,
    server: Arc<ServerConfig>,
    name: ServerName<'static>,
) -> Result<Handshake, rustls::Error> {
    let mut c = ClientConnection::new(client.clone(), name)?;
    let mut s = ServerConnection::new(server)?;
    let mut buf = Vec::new();
    for _ in 0..10 {
        if !c.is_handshaking() && !s.is_handshaking() {
            return Ok(Handshake {
                alpn: c.alpn_protocol().map(<[u8]>::to_vec),
                server_cert: c.peer_certificates().unwrap()[0].clone(),
            });
        }
        buf.clear();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).unwrap();
        }
        let server_result = s.process_new_packets();
        buf.clear();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
        }
        // The server's error first: the client's is then only the alert it was sent.
        server_result?;
        c.process_new_packets()?;
    }
    panic!("handshake did not finish");
}

fn dns(name: &str) -> ServerName<'static> {
    ServerName::try_from(name.to_owned()).unwrap()
}

/// A server that presents `leaf` whatever the client asks for.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

fn fixed_server(leaf: Arc<CertifiedKey>) -> Arc<ServerConfig> {
    Arc::new(
        ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Fixed(leaf))),
    )
}

// === the CA itself ===

#[test]
fn ca_is_created_private_for_one_year_with_ca_flags() {
    let (_tmp, state) = fresh_state();
    let ca = Ca::open(&state).unwrap();
    let dir = state.join(CA_DIR);
    assert_eq!(ca.dir(), dir);
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(KEY_FILE)), 0o600);
    assert_eq!(
        fs::read_to_string(dir.join(CERT_FILE)).unwrap(),
        ca.cert_pem()
    );
    let key = fs::read_to_string(dir.join(KEY_FILE)).unwrap();
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----\n"), "PKCS#8");
    rcgen::KeyPair::from_pkcs8_pem_and_sign_algo(&key, &rcgen::PKCS_ECDSA_P256_SHA256)
        .expect("an ECDSA P-256 key");

    let (_, x509) = x509_parser::parse_x509_certificate(ca.cert_der()).unwrap();
    let bc = x509.basic_constraints().unwrap().expect("basicConstraints");
    assert!(bc.critical && bc.value.ca);
    assert_eq!(bc.value.path_len_constraint, Some(0));
    let ku = x509.key_usage().unwrap().expect("keyUsage").value;
    assert!(ku.key_cert_sign() && ku.crl_sign());
    assert!(!ku.digital_signature() && !ku.key_encipherment());
    assert!(x509.name_constraints().unwrap().is_none());
    let cn = x509.subject().iter_common_name().next().unwrap();
    assert!(
        cn.as_str().unwrap().starts_with("behalf interception CA ("),
        "{cn:?}"
    );
    let v = x509.validity();
    let now = unix_now();
    assert!(v.not_before.timestamp() <= now && now < v.not_after.timestamp());
    let year = v.not_after.timestamp() - now;
    assert!(
        (364 * 86_400..=365 * 86_400).contains(&year),
        "expires in {} days",
        year / 86_400
    );
    let expires = ca.not_after().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    assert_eq!(expires, v.not_after.timestamp());
}

#[test]
fn a_reopened_ca_is_the_same_ca() {
    let (_tmp, state) = fresh_state();
    let first = Ca::open(&state).unwrap();
    let second = Ca::open(&state).unwrap();
    assert_eq!(first.cert_pem(), second.cert_pem());
    // A leaf from the reopened CA chains to the first one's certificate.
    let leaf = second.leaf(HOST).unwrap();
    handshake(&client(&first), fixed_server(leaf), dns(HOST)).unwrap();
}

#[test]
fn racing_first_opens_agree_on_one_ca() {
    for _ in 0..5 {
        let (_tmp, state) = fresh_state();
        let pems: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| Ca::open(&state).unwrap().cert_pem().to_owned()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(pems.iter().all(|p| *p == pems[0]), "one CA for all");
        let on_disk = fs::read_to_string(state.join(CA_DIR).join(CERT_FILE)).unwrap();
        assert_eq!(on_disk, pems[0]);
        let entries: Vec<_> = fs::read_dir(state.path()).unwrap().collect();
        assert_eq!(entries.len(), 1, "the losers' temp directories are gone");
    }
}

#[test]
fn a_corrupted_key_is_a_clear_error_naming_the_file() {
    let (_tmp, state) = fresh_state();
    let ca = Ca::open(&state).unwrap();
    let key_path = ca.dir().join(KEY_FILE);
    let good = fs::read(&key_path).unwrap();
    // Flip bytes in the middle of the base64 body.
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid..mid + 8].copy_from_slice(b"AAAAAAAA");
    fs::write(&key_path, &bad).unwrap();
    let err = Ca::open(&state).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, CaError::Parse { path, .. } | CaError::Mismatch { key: path, .. } if *path == key_path),
        "{msg}"
    );
    assert!(msg.contains(&key_path.display().to_string()), "{msg}");

    fs::write(&key_path, b"").unwrap();
    let msg = Ca::open(&state).unwrap_err().to_string();
    assert!(
        msg.contains(&key_path.display().to_string()) && msg.contains("PKCS#8"),
        "{msg}"
    );
    // Nothing was replaced behind the operator's back.
    assert_eq!(fs::read(&key_path).unwrap(), b"");
    fs::write(&key_path, &good).unwrap();
    assert_eq!(Ca::open(&state).unwrap().cert_pem(), ca.cert_pem());
}

#[test]
fn a_certificate_without_its_key_names_both() {
    let (_tmp, state) = fresh_state();
    let ca = Ca::open(&state).unwrap();
    fs::remove_file(ca.dir().join(KEY_FILE)).unwrap();
    let msg = Ca::open(&state).unwrap_err().to_string();
    for f in [KEY_FILE, CERT_FILE] {
        let path = ca.dir().join(f).display().to_string();
        assert!(msg.contains(&path), "{msg} names {path}");
    }
    assert!(ca.dir().join(CERT_FILE).exists(), "the certificate is kept");
}

// === leaves ===

#[test]
fn leaves_are_minted_once_per_host() {
    let (_tmp, state) = fresh_state();
    let ca = Ca::open(&state).unwrap();
    assert_eq!(ca.mints(), 0);
    let a = ca.leaf("x.test").unwrap();
    let b = ca.leaf("x.test").unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(ca.mints(), 1);
    ca.leaf("y.test").unwrap();
    assert_eq!(ca.mints(), 2);
    // Handshakes reuse the cache too.
    let ca = Arc::new(ca);
    let client = client(&ca);
    for _ in 0..3 {
        let server = ca::server_config_for(&ca, "x.test").unwrap();
        handshake(&client, server, dns("x.test")).unwrap();
        handshake(&client, ca::server_config(ca.clone()), dns("y.test")).unwrap();
    }
    assert_eq!(ca.mints(), 2);
}

#[test]
fn a_leaf_is_a_seven_day_server_certificate_for_its_host() {
    let (_tmp, state) = fresh_state();
    let ca = Ca::open(&state).unwrap();
    let (_, ca_x509) = x509_parser::parse_x509_certificate(ca.cert_der()).unwrap();
    let now = unix_now();
    let mut serials = Vec::new();
    for (host, want) in [
        (HOST, GeneralName::DNSName(HOST)),
        ("10.1.2.3", GeneralName::IPAddress(&[10, 1, 2, 3])),
        (
            "[2001:db8::1]",
            GeneralName::IPAddress(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
        ),
    ] {
        let leaf = ca.leaf(host).unwrap();
        assert_eq!(leaf.cert.len(), 1, "the chain is the leaf alone");
        let (_, x509) = x509_parser::parse_x509_certificate(&leaf.cert[0]).unwrap();
        let v = x509.validity();
        let life = v.not_after.timestamp() - now;
        assert!(
            (7 * 86_400 - 60..=7 * 86_400).contains(&life),
            "{host}: expires in {life} s"
        );
        let skew = now - v.not_before.timestamp();
        assert!(
            (60..=2 * 3600).contains(&skew),
            "{host}: starts {skew} s ago"
        );
        let san = x509.subject_alternative_name().unwrap().unwrap().value;
        assert_eq!(san.general_names, [want], "{host}");
        assert_eq!(x509.issuer().as_raw(), ca_x509.subject().as_raw());
        assert!(!x509.is_ca());
        let eku = x509.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth);
        assert_eq!(
            x509.public_key().algorithm.algorithm,
            x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
        );
        assert!(x509.raw_serial().len() >= 15, "a random serial");
        serials.push(x509.raw_serial().to_vec());
        assert_eq!(
            leaf.key.algorithm(),
            rustls::SignatureAlgorithm::ECDSA,
            "{host}"
        );
    }
    serials.sort();
    serials.dedup();
    assert_eq!(serials.len(), 3, "serials differ");
    assert!(matches!(
        ca.leaf("*.github.test"),
        Err(CaError::InvalidHost { .. })
    ));
}

#[test]
fn the_leaf_cache_is_bounded() {
    let (_tmp, state) = fresh_state();
    let ca = Ca::open(&state).unwrap();
    let first = ca.leaf("h0.test").unwrap();
    for i in 1..=LEAF_CACHE_CAPACITY {
        ca.leaf(&format!("h{i}.test")).unwrap();
    }
    let minted = ca.mints();
    assert_eq!(minted, LEAF_CACHE_CAPACITY as u64 + 1);
    // The newest ones are still cached; the oldest was evicted and is minted anew.
    ca.leaf(&format!("h{LEAF_CACHE_CAPACITY}.test")).unwrap();
    assert_eq!(ca.mints(), minted);
    let again = ca.leaf("h0.test").unwrap();
    assert_eq!(ca.mints(), minted + 1);
    assert!(!Arc::ptr_eq(&first, &again));
}

// === TLS with the CA ===

#[test]
fn a_client_trusting_only_this_ca_completes_a_handshake() {
    let (_tmp, state) = fresh_state();
    let ca = Arc::new(Ca::open(&state).unwrap());
    let client = client(&ca);
    let shared = ca::server_config(ca.clone());

    let done = handshake(&client, shared.clone(), dns(HOST)).unwrap();
    assert_eq!(done.alpn.as_deref(), Some(&b"h2"[..]));
    let (_, x509) = x509_parser::parse_x509_certificate(&done.server_cert).unwrap();
    let san = x509.subject_alternative_name().unwrap().unwrap().value;
    assert_eq!(san.general_names, [GeneralName::DNSName(HOST)]);

    // An HTTP/1.1-only client gets http/1.1; one without ALPN still connects.
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert_der().clone()).unwrap();
    let h1 = client_with(roots.clone(), &[b"http/1.1"]);
    let done = handshake(&h1, shared.clone(), dns(HOST)).unwrap();
    assert_eq!(done.alpn.as_deref(), Some(&b"http/1.1"[..]));
    let none = client_with(roots, &[]);
    assert_eq!(
        handshake(&none, shared.clone(), dns(HOST)).unwrap().alpn,
        None
    );

    // A client trusting the public roots and not this CA refuses it.
    let public = client_with(
        RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
        &[],
    );
    let err = handshake(&public, shared.clone(), dns(HOST)).unwrap_err();
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
        ),
        "{err:?}"
    );
}

#[test]
fn a_client_expecting_another_name_refuses_the_leaf() {
    let (_tmp, state) = fresh_state();
    let ca = Ca::open(&state).unwrap();
    let server = fixed_server(ca.leaf(HOST).unwrap());
    handshake(&client(&ca), server.clone(), dns(HOST)).unwrap();
    let err = handshake(&client(&ca), server, dns("api.gitlab.test")).unwrap_err();
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. }
            ) | rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
        ),
        "{err:?}"
    );
}

#[test]
fn a_client_hello_without_sni_is_refused() {
    let (_tmp, state) = fresh_state();
    let ca = Arc::new(Ca::open(&state).unwrap());
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert_der().clone()).unwrap();
    let mut config = (*client_with(roots, &[])).clone();
    config.enable_sni = false;
    let no_sni = Arc::new(config);
    for server in [
        ca::server_config(ca.clone()),
        ca::server_config_for(&ca, HOST).unwrap(),
    ] {
        let err = handshake(&no_sni, server, dns(HOST)).unwrap_err();
        assert!(
            matches!(
                err,
                rustls::Error::General(_) | rustls::Error::PeerIncompatible(_)
            ),
            "{err:?}"
        );
    }
    assert_eq!(ca.mints(), 0);
}

#[test]
fn a_per_tunnel_config_answers_only_its_host() {
    let (_tmp, state) = fresh_state();
    let ca = Arc::new(Ca::open(&state).unwrap());
    let client = client(&ca);
    let for_host = ca::server_config_for(&ca, "API.GitHub.test.").unwrap();
    handshake(&client, for_host.clone(), dns(HOST)).unwrap();
    assert_eq!(ca.mints(), 1);
    for other in ["api.gitlab.test", "github.test", "x.api.github.test"] {
        assert!(
            handshake(&client, for_host.clone(), dns(other)).is_err(),
            "{other}"
        );
    }
    assert_eq!(ca.mints(), 1, "no certificate minted for another SNI");

    // An IP literal: clients send no SNI for it, and check the IP SAN.
    let for_ip = ca::server_config_for(&ca, "127.0.0.1").unwrap();
    let ip = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    handshake(&client, for_ip.clone(), ip).unwrap();
    assert!(
        handshake(&client, for_ip, dns(HOST)).is_err(),
        "SNI for an IP tunnel"
    );
    let for_v6 = ca::server_config_for(&ca, "[::1]").unwrap();
    let ip6 = ServerName::IpAddress(std::net::Ipv6Addr::LOCALHOST.into());
    handshake(&client, for_v6, ip6).unwrap();

    assert!(matches!(
        ca::server_config_for(&ca, "not a host"),
        Err(CaError::InvalidHost { .. })
    ));
}

// === `behalf ca export`, the real binary ===

/// A temp dir with the shipped policies and a `--state` dir.
struct Cli {
    tmp: tempfile::TempDir,
}

impl Cli {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        copy_dir(&shipped, &tmp.path().join("policies"));
        Self { tmp }
    }

    fn state(&self) -> PathBuf {
        self.tmp.path().join("state")
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_behalf"));
        cmd.arg("--policies")
            .arg(self.tmp.path().join("policies"))
            .arg("--state")
            .arg(self.state())
            .args(["ca", "export"])
            .current_dir(self.tmp.path());
        cmd
    }

    fn export(&self) -> Output {
        self.command().output().unwrap()
    }
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn ca_export_prints_the_ca_certificate() {
    let cli = Cli::new();
    let out = cli.export();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let pem = String::from_utf8(out.stdout).unwrap();
    let on_disk = fs::read_to_string(cli.state().join(CA_DIR).join(CERT_FILE)).unwrap();
    assert_eq!(pem, on_disk);
    assert_eq!(mode(&cli.state().join(CA_DIR).join(KEY_FILE)), 0o600);
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    let x509 = parsed.parse_x509().unwrap();
    assert!(x509.is_ca());
    // The same CA the library opens, and the same on the next run.
    let ca = Ca::open(&StateDir::open(&cli.state()).unwrap()).unwrap();
    assert_eq!(ca.cert_pem(), pem);
    assert_eq!(String::from_utf8(cli.export().stdout).unwrap(), pem);
    assert!(!pem.contains("PRIVATE"));
}

#[test]
fn racing_exports_print_one_ca() {
    let cli = Cli::new();
    let children: Vec<_> = (0..4)
        .map(|_| {
            cli.command()
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for out in &outs {
        assert_eq!(out.status.code(), Some(0), "{}", describe(out));
        assert_eq!(out.stdout, outs[0].stdout);
    }
}

#[test]
fn ca_export_with_a_broken_ca_exits_64_naming_the_file() {
    let cli = Cli::new();
    assert_eq!(cli.export().status.code(), Some(0));
    let key = cli.state().join(CA_DIR).join(KEY_FILE);
    fs::write(
        &key,
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let out = cli.export();
    assert_eq!(out.status.code(), Some(64), "{}", describe(&out));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&key.display().to_string()), "{stderr}");

    fs::remove_file(&key).unwrap();
    let out = cli.export();
    assert_eq!(out.status.code(), Some(64), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ca.pem exists but its key") && stderr.contains("ca.key"),
        "{stderr}"
    );
}

#[test]
fn ca_export_refuses_an_open_state_dir() {
    let cli = Cli::new();
    fs::create_dir(cli.state()).unwrap();
    fs::set_permissions(cli.state(), fs::Permissions::from_mode(0o755)).unwrap();
    let out = cli.export();
    assert_eq!(out.status.code(), Some(64), "{}", describe(&out));
    assert!(!cli.state().join(CA_DIR).exists());
}

/// OpenSSL (what curl, Python and most CLI tools verify with) accepts a leaf for its host and
/// IP and refuses it for another name. Skipped where no `openssl` binary is installed.
#[test]
fn openssl_verifies_leaves_against_the_exported_ca() {
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("openssl not installed: skipped");
        return;
    }
    let (tmp, state) = fresh_state();
    let ca = Ca::open(&state).unwrap();
    let verify = |host: &str, check: &[&str]| -> Output {
        let leaf = ca.leaf(host).unwrap();
        let path = tmp.path().join("leaf.der");
        fs::write(&path, &leaf.cert[0]).unwrap();
        let pem = tmp.path().join("leaf.pem");
        let conv = Command::new("openssl")
            .args(["x509", "-inform", "DER", "-in"])
            .arg(&path)
            .arg("-out")
            .arg(&pem)
            .output()
            .unwrap();
        assert!(conv.status.success(), "{}", describe(&conv));
        Command::new("openssl")
            .args(["verify", "-x509_strict", "-purpose", "sslserver", "-CAfile"])
            .arg(ca.dir().join(CERT_FILE))
            .args(check)
            .arg(&pem)
            .output()
            .unwrap()
    };
    let ok = verify(HOST, &["-verify_hostname", HOST]);
    assert!(ok.status.success(), "{}", describe(&ok));
    let ok = verify("10.1.2.3", &["-verify_ip", "10.1.2.3"]);
    assert!(ok.status.success(), "{}", describe(&ok));
    let bad = verify(HOST, &["-verify_hostname", "api.gitlab.test"]);
    assert!(!bad.status.success(), "{}", describe(&bad));
}
