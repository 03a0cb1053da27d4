//! The interception CA: behalf's own certificate authority, which lets the forward proxy
//! terminate TLS inside a `CONNECT` tunnel with a certificate for the tunnel's host.
//!
//! The CA lives in `state_dir/ca/`: `ca.key` (PKCS#8 ECDSA P-256, PEM, mode 0600) and `ca.pem`
//! (its self-signed certificate: one year, `CA:TRUE, pathlen:0`, `keyCertSign, cRLSign`). It is
//! created on first use and loaded afterwards; [`Ca::leaf`] mints an ECDSA P-256 leaf per host
//! (seven days) and keeps the most recently used ones in a bounded cache. [`server_config`] and
//! [`server_config_for`] turn the CA into a rustls `ServerConfig` that answers by SNI.
//!
//! # Security
//!
//! The CA key can mint a certificate for any host, so whoever trusts `ca.pem` trusts behalf
//! with all of their TLS: it is meant to be trusted per process (`behalf ca export`, then
//! `CURL_CA_BUNDLE`, `REQUESTS_CA_BUNDLE`, `NODE_EXTRA_CA_CERTS`, `SSL_CERT_FILE`), never
//! system-wide (`docs/https.md`). The key never leaves the 0700 state directory; it is written
//! once, through a temp directory renamed into place, so two processes starting at once agree on
//! one CA. A broken, mismatched or expired CA is an error naming the file, never silently
//! replaced: clients trusting the old certificate would otherwise break, or worse, a key that
//! is no longer the one on disk would still be trusted somewhere.
//!
//! Sessions are never resumed by the configs built here, so certificate selection (and with
//! [`server_config_for`], the SNI check) runs on every handshake.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::{self, DirBuilder, File};
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration as StdDuration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, DnsName, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, crypto::ring as ring_provider};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use crate::state::{StateDir, write_atomic};

/// The CA's directory inside `state_dir`.
pub const CA_DIR: &str = "ca";
/// The CA's private key, PKCS#8 PEM, mode 0600.
pub const KEY_FILE: &str = "ca.key";
/// The CA's certificate, PEM.
pub const CERT_FILE: &str = "ca.pem";

/// How long a new CA is valid.
const CA_VALIDITY: Duration = Duration::days(365);
/// How long a leaf is valid (capped at the CA's own expiry).
const LEAF_VALIDITY: Duration = Duration::days(7);
/// How far in the past certificates start, for clients whose clocks run slow.
const BACKDATE: Duration = Duration::hours(1);
/// A cached leaf this close to its expiry is minted anew.
const LEAF_RENEW_BEFORE: Duration = Duration::days(1);
/// How many leaves the cache keeps; the least recently used one goes first.
pub const LEAF_CACHE_CAPACITY: usize = 1_000;
/// Longest host name (RFC 1035, without the trailing dot).
const MAX_HOST_LEN: usize = 253;
/// Longest common name (X.520 `ub-common-name`).
const MAX_CN_LEN: usize = 64;
/// ALPN offered inside an intercepted tunnel, in preference order.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why the CA could not be created, loaded or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// A file or directory could not be read, written or created.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The certificate is there, its key is not.
    #[error(
        "{} exists but its key {} is missing: restore the key from backup, or delete {} to \
         create a new CA (every client that trusted the old one must then trust the new one)",
        cert.display(),
        key.display(),
        dir.display()
    )]
    MissingKey {
        /// The certificate that exists.
        cert: PathBuf,
        /// The key that does not.
        key: PathBuf,
        /// The CA directory.
        dir: PathBuf,
    },
    /// The key is there, its certificate is not.
    #[error(
        "{} exists but its certificate {} is missing: restore the certificate from backup, or \
         delete {} to create a new CA (every client that trusted the old one must then trust \
         the new one)",
        key.display(),
        cert.display(),
        dir.display()
    )]
    MissingCert {
        /// The certificate that does not exist.
        cert: PathBuf,
        /// The key that does.
        key: PathBuf,
        /// The CA directory.
        dir: PathBuf,
    },
    /// A file could not be parsed.
    #[error("{}: {what}; restore it from backup, or delete {} to create a new CA", path.display(), dir.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
        /// The CA directory.
        dir: PathBuf,
    },
    /// The key is not the certificate's key.
    #[error(
        "{} is not the key of {}: restore the matching pair, or delete {} to create a new CA",
        key.display(),
        cert.display(),
        dir.display()
    )]
    Mismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
        /// The CA directory.
        dir: PathBuf,
    },
    /// The CA certificate is outside its validity period.
    #[error(
        "{}: the interception CA is valid from {not_before} until {not_after}, not now ({now}); \
         delete {} to create a new one, then export it again with `behalf ca export`",
        path.display(),
        dir.display()
    )]
    Validity {
        /// The certificate file.
        path: PathBuf,
        /// Its notBefore.
        not_before: String,
        /// Its notAfter.
        not_after: String,
        /// The current time.
        now: String,
        /// The CA directory.
        dir: PathBuf,
    },
    /// A host name a leaf was asked for cannot be put in a certificate.
    #[error("cannot mint a certificate for {host:?}: {why}")]
    InvalidHost {
        /// The host as given (truncated).
        host: String,
        /// Why.
        why: &'static str,
    },
    /// Building or signing a certificate failed.
    #[error("cannot build a certificate: {0}")]
    Build(String),
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
}

// === impl Ca ===

/// The interception CA with its cache of minted leaf certificates.
///
/// # Security
///
/// Holds the CA's signing key; its `Debug` shows only where the CA lives and when it expires.
pub struct Ca {
    dir: PathBuf,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    issuer: Issuer<'static, KeyPair>,
    provider: Arc<CryptoProvider>,
    leaves: Mutex<LeafCache>,
    capacity: usize,
    mints: AtomicU64,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("dir", &self.dir)
            .field("not_after", &self.not_after)
            .field("mints", &self.mints())
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Loads the CA from `state_dir/ca/`, creating it there first if it does not exist.
    ///
    /// When several processes open the same state directory at once, exactly one CA is stored
    /// and every process uses it.
    pub fn open(state: &StateDir) -> Result<Ca, CaError> {
        let dir = state.join(CA_DIR);
        if let Some(ca) = Self::load(&dir, OffsetDateTime::now_utc())? {
            return Ok(ca);
        }
        let now = OffsetDateTime::now_utc();
        create(
            state,
            &dir,
            &instance_name(state),
            now - BACKDATE,
            now + CA_VALIDITY,
        )?;
        // Ours, or the one a racing process renamed into place first.
        Self::load(&dir, OffsetDateTime::now_utc())?.ok_or_else(|| CaError::Io {
            path: dir.join(CERT_FILE),
            source: io::Error::new(io::ErrorKind::NotFound, "vanished right after creation"),
        })
    }

    /// The CA certificate, PEM (what `behalf ca export` prints).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER (e.g. for a `RootCertStore`).
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The directory holding `ca.key` and `ca.pem`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// When the CA certificate expires.
    pub fn not_after(&self) -> SystemTime {
        to_system_time(self.not_after)
    }

    /// How many leaf certificates this CA has minted since it was opened (cache misses).
    pub fn mints(&self) -> u64 {
        self.mints.load(Ordering::Relaxed)
    }

    /// A certificate and key for `host` (a DNS name, or an IP literal with or without
    /// brackets), from the cache or freshly minted: ECDSA P-256, the host as its only subject
    /// alternative name, valid seven days from an hour ago (never past the CA's own expiry).
    ///
    /// The chain holds only the leaf: clients trust the CA itself.
    pub fn leaf(&self, host: &str) -> Result<Arc<CertifiedKey>, CaError> {
        self.leaf_at(host, OffsetDateTime::now_utc())
    }

    fn leaf_at(&self, host: &str, now: OffsetDateTime) -> Result<Arc<CertifiedKey>, CaError> {
        let host = LeafHost::parse(host)?;
        if let Some(hit) = self.cache().get(host.key(), now, self.not_after) {
            return Ok(hit);
        }
        // Minted outside the lock so that handshakes for cached hosts never wait behind a mint.
        // Two first handshakes for one host may both mint; the cache keeps the later one.
        let (certified, not_after) = self.mint(&host, now)?;
        self.mints.fetch_add(1, Ordering::Relaxed);
        self.cache()
            .insert(host.key(), certified.clone(), not_after, self.capacity);
        Ok(certified)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, LeafCache> {
        // The cache is consistent after every statement, so a panicking holder leaves it usable.
        self.leaves.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn mint(
        &self,
        host: &LeafHost,
        now: OffsetDateTime,
    ) -> Result<(Arc<CertifiedKey>, OffsetDateTime), CaError> {
        if now >= self.not_after {
            return Err(CaError::Validity {
                path: self.dir.join(CERT_FILE),
                not_before: rfc3339(self.not_before),
                not_after: rfc3339(self.not_after),
                now: rfc3339(now),
                dir: self.dir.clone(),
            });
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(build_err)?;
        let mut params = CertificateParams::default();
        params.not_before = now - BACKDATE;
        params.not_after = (now + LEAF_VALIDITY).min(self.not_after);
        params.serial_number = Some(random_serial()?);
        params.distinguished_name = DistinguishedName::new();
        if host.key().len() <= MAX_CN_LEN {
            params
                .distinguished_name
                .push(DnType::CommonName, host.key());
        }
        params.subject_alt_names = vec![host.san()?];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        // Lets clients holding several CAs with one name pick this one by key.
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).map_err(build_err)?;
        let pkcs8 = Zeroizing::new(key.serialize_der());
        let signing_key = ring_provider::sign::any_ecdsa_type(&PrivateKeyDer::Pkcs8(
            PrivatePkcs8KeyDer::from(pkcs8.as_slice()),
        ))
        .map_err(|e| CaError::Build(e.to_string()))?;
        let certified = CertifiedKey::new(vec![cert.der().clone()], signing_key);
        Ok((Arc::new(certified), params.not_after))
    }

    /// Reads `dir`; `Ok(None)` when neither file is there (nothing created yet).
    fn load(dir: &Path, now: OffsetDateTime) -> Result<Option<Ca>, CaError> {
        let key_path = dir.join(KEY_FILE);
        let cert_path = dir.join(CERT_FILE);
        let read_pair = || -> Result<_, CaError> {
            let key = read_optional(&key_path)?.map(Zeroizing::new);
            Ok((key, read_optional(&cert_path)?))
        };
        let mut pair = read_pair()?;
        if pair.0.is_some() != pair.1.is_some() {
            // A racing first open may have renamed the pair into place between the two reads:
            // read again before calling half a CA an error.
            pair = read_pair()?;
        }
        let (key_pem, cert_pem) = match pair {
            (None, None) => return Ok(None),
            (None, Some(_)) => {
                return Err(CaError::MissingKey {
                    cert: cert_path,
                    key: key_path,
                    dir: dir.to_owned(),
                });
            }
            (Some(_), None) => {
                return Err(CaError::MissingCert {
                    cert: cert_path,
                    key: key_path,
                    dir: dir.to_owned(),
                });
            }
            (Some(k), Some(c)) => (k, c),
        };
        let parse_err = |path: &Path, what: String| CaError::Parse {
            path: path.to_owned(),
            what,
            dir: dir.to_owned(),
        };

        let pkcs8 = PrivatePkcs8KeyDer::from_pem_slice(&key_pem)
            .map_err(|e| parse_err(&key_path, format!("not a PKCS#8 PEM private key ({e})")))?;
        let key = KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &PKCS_ECDSA_P256_SHA256)
            .map_err(|e| parse_err(&key_path, format!("not an ECDSA P-256 key ({e})")))?;

        let cert_text = String::from_utf8(cert_pem)
            .map_err(|_| parse_err(&cert_path, "not a PEM certificate (not text)".into()))?;
        let cert_der = CertificateDer::from_pem_slice(cert_text.as_bytes())
            .map_err(|e| parse_err(&cert_path, format!("not a PEM certificate ({e})")))?;
        let (_, x509) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| parse_err(&cert_path, format!("not an X.509 certificate ({e})")))?;

        match x509.basic_constraints() {
            Ok(Some(bc)) if bc.value.ca => {}
            _ => {
                return Err(parse_err(
                    &cert_path,
                    "not a CA certificate (no basicConstraints CA:TRUE)".into(),
                ));
            }
        }
        if x509.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&key) {
            return Err(CaError::Mismatch {
                key: key_path,
                cert: cert_path,
                dir: dir.to_owned(),
            });
        }
        let not_before = from_timestamp(x509.validity().not_before.timestamp());
        let not_after = from_timestamp(x509.validity().not_after.timestamp());
        // A CA made moments ago by a process whose clock is slightly ahead still loads.
        if now + BACKDATE < not_before || now >= not_after {
            return Err(CaError::Validity {
                path: cert_path,
                not_before: rfc3339(not_before),
                not_after: rfc3339(not_after),
                now: rfc3339(now),
                dir: dir.to_owned(),
            });
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .map_err(|e| parse_err(&cert_path, format!("unusable as an issuer ({e})")))?;
        drop(x509);
        Ok(Some(Ca {
            dir: dir.to_owned(),
            cert_pem: cert_text,
            cert_der,
            not_before,
            not_after,
            issuer,
            provider: Arc::new(ring_provider::default_provider()),
            leaves: Mutex::new(LeafCache::default()),
            capacity: LEAF_CACHE_CAPACITY,
            mints: AtomicU64::new(0),
        }))
    }
}

/// Creates a CA in a fresh temp directory beside `dir` and renames it into place. Losing the
/// race to another process (its `ca/` is already there) is not an error: the caller loads the
/// winner.
fn create(
    state: &StateDir,
    dir: &Path,
    name: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<(), CaError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(build_err)?;
    let mut params = CertificateParams::default();
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(random_serial()?);
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).map_err(build_err)?;
    let key_pem = Zeroizing::new(key.serialize_pem());

    let tmp = state.join(&format!(".{CA_DIR}.tmp-{}", random_hex()?));
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| CaError::Io { path, source }
    };
    DirBuilder::new()
        .mode(0o700)
        .create(&tmp)
        .map_err(io_err(&tmp))?;
    let written = (|| {
        write_atomic(&tmp.join(KEY_FILE), key_pem.as_bytes())?;
        write_atomic(&tmp.join(CERT_FILE), cert.pem().as_bytes())
    })();
    if let Err(e) = written {
        let _ = fs::remove_dir_all(&tmp);
        return Err(match e {
            crate::state::StateError::File { path, source } => CaError::Io { path, source },
            other => CaError::Io {
                path: tmp,
                source: io::Error::other(other.to_string()),
            },
        });
    }
    // rename(2) replaces an empty directory but fails on a non-empty one, so a `ca/` another
    // process completed first is never replaced.
    match fs::rename(&tmp, dir) {
        Ok(()) => File::open(state.path())
            .and_then(|d| d.sync_all())
            .map_err(io_err(state.path())),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::DirectoryNotEmpty | io::ErrorKind::AlreadyExists
            ) =>
        {
            let _ = fs::remove_dir_all(&tmp);
            Ok(())
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            Err(CaError::Io {
                path: dir.to_owned(),
                source: e,
            })
        }
    }
}

/// The CA's common name: `behalf interception CA (<hostname>)`, or the state directory when
/// the host has no readable name, so that someone looking at a trust store can tell whose CA
/// it is.
fn instance_name(state: &StateDir) -> String {
    const PREFIX: &str = "behalf interception CA (";
    let room = MAX_CN_LEN - PREFIX.len() - 1;
    let hostname = fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let clean = |s: &str| -> String {
        s.chars()
            .filter(|c| c.is_ascii_graphic())
            .collect::<String>()
    };
    let mut what = clean(hostname.trim());
    if what.is_empty() {
        what = clean(&state.path().display().to_string());
    }
    if what.len() > room {
        // Keep the end: the host's own label or the last directories say the most.
        what = format!("~{}", &what[what.len() - (room - 1)..]);
    }
    format!("{PREFIX}{what})")
}

// === leaves ===

/// A host a leaf is minted for, in its canonical form (lowercase, no trailing dot, IPs
/// unbracketed), which is also its cache key.
enum LeafHost {
    Dns(String),
    Ip(IpAddr, String),
}

impl LeafHost {
    fn parse(host: &str) -> Result<Self, CaError> {
        let invalid = |why| CaError::InvalidHost {
            host: host.chars().take(80).collect(),
            why,
        };
        let unbracketed = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            return Ok(Self::Ip(ip, ip.to_string()));
        }
        let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        if name.is_empty() || name.len() > MAX_HOST_LEN {
            return Err(invalid("not 1 to 253 characters"));
        }
        if name.contains('*') {
            return Err(invalid("wildcards are never minted"));
        }
        if DnsName::try_from(name.as_str()).is_err() {
            return Err(invalid("not a DNS name or IP address"));
        }
        Ok(Self::Dns(name))
    }

    fn key(&self) -> &str {
        match self {
            Self::Dns(name) => name,
            Self::Ip(_, text) => text,
        }
    }

    fn san(&self) -> Result<SanType, CaError> {
        Ok(match self {
            Self::Dns(name) => SanType::DnsName(
                name.as_str()
                    .try_into()
                    .map_err(|e: rcgen::Error| CaError::Build(e.to_string()))?,
            ),
            Self::Ip(ip, _) => SanType::IpAddress(*ip),
        })
    }
}

/// Minted leaves by host, least recently used evicted first.
#[derive(Default)]
struct LeafCache {
    by_host: HashMap<String, CachedLeaf>,
    /// Use order: tick → host. The smallest tick is the least recently used.
    order: BTreeMap<u64, String>,
    tick: u64,
}

struct CachedLeaf {
    certified: Arc<CertifiedKey>,
    not_after: OffsetDateTime,
    tick: u64,
}

impl LeafCache {
    /// A cached leaf that is not about to expire, marked as just used.
    fn get(
        &mut self,
        host: &str,
        now: OffsetDateTime,
        ca_not_after: OffsetDateTime,
    ) -> Option<Arc<CertifiedKey>> {
        self.tick += 1;
        let tick = self.tick;
        let entry = self.by_host.get_mut(host)?;
        // Renew a day before expiry, unless the CA's own expiry is what limits the leaf (a
        // new one would not last longer).
        let renew = entry.not_after - now < LEAF_RENEW_BEFORE && entry.not_after < ca_not_after;
        if now >= entry.not_after || renew {
            return None;
        }
        self.order.remove(&entry.tick);
        entry.tick = tick;
        self.order.insert(tick, host.to_owned());
        Some(entry.certified.clone())
    }

    fn insert(
        &mut self,
        host: &str,
        certified: Arc<CertifiedKey>,
        not_after: OffsetDateTime,
        capacity: usize,
    ) {
        self.tick += 1;
        let tick = self.tick;
        let old = self.by_host.insert(
            host.to_owned(),
            CachedLeaf {
                certified,
                not_after,
                tick,
            },
        );
        if let Some(old) = old {
            self.order.remove(&old.tick);
        }
        self.order.insert(tick, host.to_owned());
        while self.by_host.len() > capacity {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.by_host.remove(&oldest);
        }
    }
}

// === server configs ===

/// A rustls `ServerConfig` for intercepted tunnels that answers every ClientHello with a leaf
/// for its SNI (minted or cached). A ClientHello without SNI gets no certificate (the
/// handshake fails). ALPN: `h2`, `http/1.1`.
///
/// # Security
///
/// This config mints for any name a client sends, so the caller must check after the
/// handshake that the SNI equals the `CONNECT` host; [`server_config_for`] does that inside
/// the handshake and is the one to prefer.
pub fn server_config(ca: Arc<Ca>) -> Arc<ServerConfig> {
    let provider = ca.provider.clone();
    build_config(provider, Arc::new(SniResolver { ca, expected: None }))
}

/// A rustls `ServerConfig` for one tunnel to `expected_host` (the `CONNECT` host): it answers
/// a ClientHello whose SNI is `expected_host` (compared case-insensitively, trailing dot
/// ignored) and refuses every other, and one without SNI unless `expected_host` is an IP
/// literal (clients send no SNI for those). ALPN: `h2`, `http/1.1`.
///
/// Cheap enough to build per tunnel (a few allocations; the leaf is cached in the [`Ca`]).
pub fn server_config_for(ca: &Arc<Ca>, expected_host: &str) -> Result<Arc<ServerConfig>, CaError> {
    let expected = LeafHost::parse(expected_host)?;
    Ok(build_config(
        ca.provider.clone(),
        Arc::new(SniResolver {
            ca: ca.clone(),
            expected: Some(expected),
        }),
    ))
}

fn build_config(
    provider: Arc<CryptoProvider>,
    resolver: Arc<dyn ResolvesServerCert>,
) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        // The ring provider implements every safe default version.
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    // No resumption: a resumed session skips the resolver, and with it the SNI check.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Arc::new(config)
}

/// Picks the leaf by SNI, optionally only for one expected host.
struct SniResolver {
    ca: Arc<Ca>,
    expected: Option<LeafHost>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver")
            .field("expected", &self.expected.as_ref().map(LeafHost::key))
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // rustls lowercases the SNI and drops an IP literal sent as SNI (RFC 6066 forbids it).
        let sni = hello.server_name();
        let host = match (&self.expected, sni) {
            (None, None) => {
                tracing::debug!("intercepted TLS: ClientHello without SNI refused");
                return None;
            }
            (None, Some(sni)) => sni,
            (Some(expected @ LeafHost::Ip(..)), None) => expected.key(),
            (Some(expected), Some(sni))
                if sni.strip_suffix('.').unwrap_or(sni) == expected.key() =>
            {
                expected.key()
            }
            (Some(expected), sni) => {
                tracing::debug!(
                    expected = expected.key(),
                    sni,
                    "intercepted TLS: SNI is not the CONNECT host; refused"
                );
                return None;
            }
        };
        match self.ca.leaf(host) {
            Ok(leaf) => Some(leaf),
            Err(e) => {
                tracing::warn!(error = %e, "intercepted TLS: no certificate");
                None
            }
        }
    }
}

// === helpers ===

fn build_err(e: rcgen::Error) -> CaError {
    CaError::Build(e.to_string())
}

/// A positive, 16-byte random serial (RFC 5280 allows up to 20; CAs use at least 64 bits of
/// randomness).
fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CaError::Random)?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn random_hex() -> Result<String, CaError> {
    let mut bytes = [0u8; 8];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CaError::Random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, CaError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CaError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

fn from_timestamp(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn to_system_time(t: OffsetDateTime) -> SystemTime {
    let secs = t.unix_timestamp();
    if secs >= 0 {
        UNIX_EPOCH + StdDuration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - StdDuration::from_secs(secs.unsigned_abs())
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    humantime::format_rfc3339_seconds(to_system_time(t)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn fresh_state() -> (tempfile::TempDir, StateDir) {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(&tmp.path().join("state")).unwrap();
        (tmp, state)
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn leaf_x509_not_after(leaf: &CertifiedKey) -> OffsetDateTime {
        let (_, x509) = x509_parser::parse_x509_certificate(&leaf.cert[0]).unwrap();
        from_timestamp(x509.validity().not_after.timestamp())
    }

    #[test]
    fn creates_then_reloads_the_same_ca() {
        let (_tmp, state) = fresh_state();
        let ca = Ca::open(&state).unwrap();
        let dir = state.join(CA_DIR);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(KEY_FILE)), 0o600);
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(
            fs::read_to_string(dir.join(CERT_FILE)).unwrap(),
            ca.cert_pem()
        );
        let key = fs::read_to_string(dir.join(KEY_FILE)).unwrap();
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8 PEM");
        let again = Ca::open(&state).unwrap();
        assert_eq!(again.cert_pem(), ca.cert_pem());
        // No temp directories left behind.
        let names: Vec<_> = fs::read_dir(state.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, [CA_DIR]);
        let debug = format!("{ca:?}");
        assert!(
            !debug.contains("PRIVATE") && debug.contains("not_after"),
            "{debug}"
        );
    }

    #[test]
    fn ca_certificate_has_ca_flags_name_and_one_year() {
        let (_tmp, state) = fresh_state();
        let ca = Ca::open(&state).unwrap();
        let (_, x509) = x509_parser::parse_x509_certificate(ca.cert_der()).unwrap();
        let bc = x509.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, Some(0));
        let ku = x509.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());
        let cn = x509
            .subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            cn.starts_with("behalf interception CA (") && cn.ends_with(')'),
            "{cn}"
        );
        assert!(cn.len() <= MAX_CN_LEN);
        let v = x509.validity();
        let days = (v.not_after.timestamp() - v.not_before.timestamp()) as f64 / 86_400.0;
        assert!((365.0..365.1).contains(&days), "{days} days");
        assert_eq!(
            x509.tbs_certificate.subject.as_raw(),
            x509.tbs_certificate.issuer.as_raw(),
            "self-signed"
        );
    }

    #[test]
    fn leaves_are_cached_and_renewed_near_expiry() {
        let (_tmp, state) = fresh_state();
        let ca = Ca::open(&state).unwrap();
        let now = OffsetDateTime::now_utc();
        let a = ca.leaf_at("x.test", now).unwrap();
        let b = ca.leaf_at("X.test.", now).unwrap();
        assert!(
            Arc::ptr_eq(&a, &b),
            "one host, one leaf (case and trailing dot ignored)"
        );
        assert_eq!(ca.mints(), 1);
        // Five days on it is still good; six and a bit days on it is within a day of expiry.
        let c = ca.leaf_at("x.test", now + Duration::days(5)).unwrap();
        assert!(Arc::ptr_eq(&a, &c));
        assert_eq!(ca.mints(), 1);
        let d = ca
            .leaf_at("x.test", now + Duration::days(6) + Duration::hours(1))
            .unwrap();
        assert!(!Arc::ptr_eq(&a, &d));
        assert_eq!(ca.mints(), 2);
    }

    #[test]
    fn leaves_never_outlive_the_ca_and_are_not_reminted_for_it() {
        let (_tmp, state) = fresh_state();
        let ca = Ca::open(&state).unwrap();
        let late = ca.not_after - Duration::hours(12);
        let leaf = ca.leaf_at("late.test", late).unwrap();
        assert_eq!(leaf_x509_not_after(&leaf), ca.not_after);
        ca.leaf_at("late.test", late + Duration::hours(1)).unwrap();
        assert_eq!(ca.mints(), 1, "a new leaf would not last longer");
        assert!(matches!(
            ca.leaf_at("other.test", ca.not_after),
            Err(CaError::Validity { .. })
        ));
    }

    #[test]
    fn cache_is_bounded_least_recently_used_first() {
        let (_tmp, state) = fresh_state();
        let mut ca = Ca::open(&state).unwrap();
        ca.capacity = 3;
        for h in ["a.test", "b.test", "c.test"] {
            ca.leaf(h).unwrap();
        }
        ca.leaf("a.test").unwrap(); // a is now the most recently used
        ca.leaf("d.test").unwrap(); // evicts b
        assert_eq!(ca.cache().by_host.len(), 3);
        assert_eq!(ca.mints(), 4);
        ca.leaf("a.test").unwrap();
        ca.leaf("c.test").unwrap();
        ca.leaf("d.test").unwrap();
        assert_eq!(ca.mints(), 4, "a, c and d stayed cached");
        ca.leaf("b.test").unwrap();
        assert_eq!(ca.mints(), 5, "b was evicted");
        assert_eq!(ca.cache().by_host.len(), 3);
        assert_eq!(ca.cache().order.len(), 3);
    }

    #[test]
    fn hosts_are_validated() {
        for ok in [
            "a.test",
            "A.TEST.",
            "127.0.0.1",
            "::1",
            "[::1]",
            "xn--bcher-kva.example",
        ] {
            LeafHost::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        assert_eq!(LeafHost::parse("[::1]").unwrap().key(), "::1");
        for bad in [
            "",
            ".",
            "*.test",
            "a b.test",
            "a..test",
            "bücher.example",
            "a/b",
            &"a".repeat(254),
        ] {
            assert!(
                matches!(LeafHost::parse(bad), Err(CaError::InvalidHost { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn instance_name_fits_a_common_name() {
        let (_tmp, state) = fresh_state();
        let name = instance_name(&state);
        assert!(name.len() <= MAX_CN_LEN, "{name}");
    }

    #[test]
    fn expired_and_not_yet_valid_cas_are_refused_naming_the_file() {
        let (_tmp, state) = fresh_state();
        let dir = state.join(CA_DIR);
        let now = OffsetDateTime::now_utc();
        create(
            &state,
            &dir,
            "old",
            now - Duration::days(400),
            now - Duration::days(35),
        )
        .unwrap();
        let err = Ca::open(&state).unwrap_err();
        assert!(matches!(err, CaError::Validity { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("ca/ca.pem") && msg.contains("delete"), "{msg}");

        let (_tmp2, state2) = fresh_state();
        let dir2 = state2.join(CA_DIR);
        create(
            &state2,
            &dir2,
            "future",
            now + Duration::days(2),
            now + Duration::days(30),
        )
        .unwrap();
        assert!(matches!(Ca::open(&state2), Err(CaError::Validity { .. })));
    }

    #[test]
    fn broken_pairs_are_refused_naming_the_files() {
        let (_tmp, state) = fresh_state();
        let ca = Ca::open(&state).unwrap();
        let dir = ca.dir().to_owned();
        let key = fs::read(dir.join(KEY_FILE)).unwrap();

        // Another P-256 key: a mismatch naming both files.
        let other = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        fs::write(dir.join(KEY_FILE), other.serialize_pem()).unwrap();
        let msg = Ca::open(&state).unwrap_err().to_string();
        assert!(
            msg.contains("ca.key is not the key of") && msg.contains("ca.pem"),
            "{msg}"
        );

        // Garbage key.
        fs::write(dir.join(KEY_FILE), b"not a key").unwrap();
        let err = Ca::open(&state).unwrap_err();
        assert!(
            matches!(&err, CaError::Parse { path, .. } if path.ends_with(KEY_FILE)),
            "{err}"
        );

        // Garbage certificate.
        fs::write(dir.join(KEY_FILE), &key).unwrap();
        fs::write(
            dir.join(CERT_FILE),
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = Ca::open(&state).unwrap_err();
        assert!(
            matches!(&err, CaError::Parse { path, .. } if path.ends_with(CERT_FILE)),
            "{err}"
        );

        // A leaf where the CA should be.
        let leaf = ca.leaf("leaf.test").unwrap();
        fs::write(dir.join(CERT_FILE), pem("CERTIFICATE", &leaf.cert[0])).unwrap();
        let msg = Ca::open(&state).unwrap_err().to_string();
        assert!(msg.contains("ca.pem: not a CA certificate"), "{msg}");

        // Restored, it loads again.
        fs::write(dir.join(CERT_FILE), ca.cert_pem()).unwrap();
        assert_eq!(Ca::open(&state).unwrap().cert_pem(), ca.cert_pem());
    }

    fn pem(label: &str, der: &[u8]) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    }

    #[test]
    fn a_missing_half_is_refused_naming_both() {
        let (_tmp, state) = fresh_state();
        let ca = Ca::open(&state).unwrap();
        let dir = ca.dir().to_owned();
        let key = fs::read(dir.join(KEY_FILE)).unwrap();
        fs::remove_file(dir.join(KEY_FILE)).unwrap();
        let msg = Ca::open(&state).unwrap_err().to_string();
        assert!(
            msg.contains("ca/ca.pem exists but its key") && msg.contains("ca/ca.key"),
            "{msg}"
        );
        fs::write(dir.join(KEY_FILE), key).unwrap();
        fs::remove_file(dir.join(CERT_FILE)).unwrap();
        let msg = Ca::open(&state).unwrap_err().to_string();
        assert!(
            msg.contains("ca/ca.key exists but its certificate") && msg.contains("ca/ca.pem"),
            "{msg}"
        );
        // An empty ca/ (e.g. made by hand) is filled.
        fs::remove_file(dir.join(KEY_FILE)).unwrap();
        let fresh = Ca::open(&state).unwrap();
        assert_ne!(fresh.cert_pem(), ca.cert_pem());
    }

    #[test]
    fn racing_opens_agree_on_one_ca() {
        let (_tmp, state) = fresh_state();
        let pems: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| Ca::open(&state).unwrap().cert_pem().to_owned()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(pems.iter().all(|p| *p == pems[0]));
        assert_eq!(
            fs::read_to_string(state.join(CA_DIR).join(CERT_FILE)).unwrap(),
            pems[0]
        );
        assert_eq!(
            fs::read_dir(state.path()).unwrap().count(),
            1,
            "losers cleaned up"
        );
    }
}
