//! AWS Signature Version 4 (header form): a pure signer over the request that will be sent.
//!
//! The caller passes everything the signature covers (method, the authority, path and query as
//! sent, the headers as sent, the payload hash) and the signing time; nothing here reads a
//! clock, the network or the body. The result is the headers to add: `Authorization`,
//! `X-Amz-Date`, `X-Amz-Security-Token` when the credentials carry a session token, and
//! `X-Amz-Content-Sha256` when asked for (S3 requires it).
//!
//! Canonicalisation follows the AWS specification and the AWS signing test suite
//! (`fixtures/sigv4/`):
//!
//! - URI: for most services every byte of the path as sent that is not unreserved or `/` is
//!   percent-encoded, so an escape on the wire is encoded again (`%3D` signs as `%253D`); S3
//!   ([`UriEncoding::Single`]) decodes each segment and encodes it once.
//! - Query: every `name=value` pair is percent-decoded (`+` is a literal `+`), re-encoded with
//!   the RFC 3986 unreserved set, and sorted by name then value; a name without `=` gets an
//!   empty value.
//! - Headers: lower-case names, sorted; values trimmed with inner runs of whitespace collapsed
//!   to one space; repeated headers joined with `,` in the order sent. `host` is the authority
//!   passed in (whatever `Host` header the map holds is ignored), and headers that an
//!   intermediary may legitimately rewrite (hop-by-hop, `User-Agent`, `Expect`, ...) are not
//!   signed.
//!
//! # Security
//!
//! The secret key is only ever used as HMAC key material (copies are zeroised); the session
//! token and `Authorization` values are returned marked sensitive. Errors never contain any
//! part of a credential.

use std::collections::BTreeMap;

use http::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use ring::{digest, hmac};
use time::OffsetDateTime;
use zeroize::Zeroizing;

/// The payload hash of an empty body (hex SHA-256 of nothing).
pub const EMPTY_PAYLOAD_SHA256: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
/// The payload hash that leaves the body unsigned (where the service allows it).
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const X_AMZ_DATE: HeaderName = HeaderName::from_static("x-amz-date");
const X_AMZ_SECURITY_TOKEN: HeaderName = HeaderName::from_static("x-amz-security-token");
const X_AMZ_CONTENT_SHA256: HeaderName = HeaderName::from_static("x-amz-content-sha256");

/// The headers the signer sets itself; any copies in the request are replaced, never signed.
pub const SIGNER_HEADERS: [&str; 4] = [
    "authorization",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-content-sha256",
];

/// Headers that are never signed: hop-by-hop headers and those an HTTP stack or intermediary
/// may add or rewrite after signing (the AWS SDKs leave out the same ones).
const UNSIGNED_HEADERS: [&str; 12] = [
    "connection",
    "expect",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "x-amzn-trace-id",
    "host",
];

/// How the path is encoded into the canonical URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UriEncoding {
    /// Every service but S3: encode the path as sent (escapes are encoded again).
    Double,
    /// S3: decode each segment of the path as sent, then encode it once.
    Single,
}

impl UriEncoding {
    /// The encoding AWS uses for `service`.
    pub fn for_service(service: &str) -> Self {
        if matches!(service, "s3" | "s3-object-lambda" | "s3express") {
            Self::Single
        } else {
            Self::Double
        }
    }
}

/// The request as it will be sent.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The method, e.g. `GET`.
    pub method: &'a str,
    /// The authority as sent: the host, and the port when it is not the scheme's default.
    pub authority: &'a str,
    /// The path as sent (with its escapes), starting with `/`.
    pub path: &'a str,
    /// The query as sent, without `?`.
    pub query: Option<&'a str>,
    /// The headers as sent (a `Host` header and the signer's own headers are ignored).
    pub headers: &'a HeaderMap,
}

/// What to sign for.
#[derive(Debug, Clone, Copy)]
pub struct Params<'a> {
    /// The region, e.g. `us-east-1`.
    pub region: &'a str,
    /// The service's signing name, e.g. `s3`.
    pub service: &'a str,
    /// The signing time (converted to UTC).
    pub time: OffsetDateTime,
    /// Lower-case hex SHA-256 of the body, or [`UNSIGNED_PAYLOAD`].
    pub payload_hash: &'a str,
    /// How the path is encoded.
    pub uri_encoding: UriEncoding,
    /// Whether to add (and sign) `X-Amz-Content-Sha256` (S3 requires it).
    pub content_sha256_header: bool,
}

/// The credentials to sign with.
#[derive(Clone, Copy)]
pub struct Credentials<'a> {
    /// The access key id.
    pub access_key_id: &'a [u8],
    /// The secret access key.
    pub secret_access_key: &'a [u8],
    /// The session token of temporary credentials.
    pub session_token: Option<&'a [u8]>,
}

impl std::fmt::Debug for Credentials<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(***)")
    }
}

/// Why a request could not be signed. Never contains a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SigningError {
    /// A credential field cannot be placed in a header.
    #[error("the SigV4 `{0}` contains control or non-ASCII bytes")]
    NotHeaderSafe(&'static str),
    /// A parameter cannot appear in the credential scope.
    #[error("the SigV4 {0} must be non-empty and contain only letters, digits, `-` and `_`")]
    BadScope(&'static str),
    /// The payload hash is neither 64 lower-case hex digits nor `UNSIGNED-PAYLOAD`.
    #[error("the SigV4 payload hash must be hex SHA-256 or UNSIGNED-PAYLOAD")]
    BadPayloadHash,
    /// The signing time is outside years 0..=9999.
    #[error("the SigV4 signing time is out of range")]
    BadTime,
}

/// The signed request's extra headers.
pub struct Signed {
    /// The headers to set on the request (replacing any of the same name).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The hex signature (also inside the `Authorization` value).
    pub signature: String,
}

impl std::fmt::Debug for Signed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signed({} headers, ***)", self.headers.len())
    }
}

/// Signs `req` and returns the headers to add.
pub fn sign(
    req: &Request<'_>,
    params: &Params<'_>,
    creds: &Credentials<'_>,
) -> Result<Signed, SigningError> {
    check_params(params)?;
    // It sits inside `Credential=.../scope,`: nothing that could end or split that field.
    if !header_safe(creds.access_key_id)
        || creds
            .access_key_id
            .iter()
            .any(|b| matches!(b, b' ' | b'/' | b',' | b';' | b'='))
    {
        return Err(SigningError::NotHeaderSafe("access_key_id"));
    }
    if creds.session_token.is_some_and(|t| !header_safe(t)) {
        return Err(SigningError::NotHeaderSafe("session_token"));
    }
    let (date_time, date) = amz_date(params.time)?;
    let canonical = canonical_request(req, params, &date_time, creds.session_token);
    let sts = string_to_sign(&canonical.text, params, &date_time);
    let signature = signature(creds.secret_access_key, params, &date, &sts);

    let mut authorization = Zeroizing::new(Vec::new());
    authorization.extend_from_slice(ALGORITHM.as_bytes());
    authorization.extend_from_slice(b" Credential=");
    authorization.extend_from_slice(creds.access_key_id);
    authorization.extend_from_slice(
        format!(
            "/{}, SignedHeaders={}, Signature={signature}",
            scope(&date, params),
            canonical.signed_headers
        )
        .as_bytes(),
    );

    let mut headers = Vec::with_capacity(4);
    headers.push((X_AMZ_DATE, value(date_time.as_bytes(), false)));
    if let Some(token) = creds.session_token {
        headers.push((X_AMZ_SECURITY_TOKEN, value(token, true)));
    }
    if params.content_sha256_header {
        headers.push((
            X_AMZ_CONTENT_SHA256,
            value(params.payload_hash.as_bytes(), false),
        ));
    }
    headers.push((AUTHORIZATION, value(&authorization, true)));
    Ok(Signed { headers, signature })
}

/// The authority behalf sends for `origin` (the `Host` header the egress step sets): the host,
/// and the port when it is not the scheme's default.
pub fn authority(origin: &crate::policy::Origin) -> String {
    if origin.port == origin.scheme.default_port() {
        origin.host.to_string()
    } else {
        format!("{}:{}", origin.host, origin.port)
    }
}

/// Signs a request as it will be sent to `target`, with `payload_hash` (see
/// [`payload_sha256`], [`EMPTY_PAYLOAD_SHA256`], [`UNSIGNED_PAYLOAD`]): removes any
/// signer-owned headers the caller set, adds the signed ones, and returns every credential
/// form placed on the request (for response scrubbing): the access key id, the secret key, the
/// session token, the signature and the `Authorization` value.
pub fn sign_request(
    parts: &mut http::request::Parts,
    target: &crate::policy::Target,
    region: &str,
    service: &str,
    payload_hash: &str,
    creds: &crate::secrets::SigV4Credentials,
    time: OffsetDateTime,
) -> Result<Vec<Zeroizing<Vec<u8>>>, SigningError> {
    for name in SIGNER_HEADERS {
        parts.headers.remove(name);
    }
    let authority = authority(&target.origin);
    let request = Request {
        method: parts.method.as_str(),
        authority: &authority,
        path: &target.path,
        query: target.query.as_deref(),
        headers: &parts.headers,
    };
    let s3_like = UriEncoding::for_service(service) == UriEncoding::Single;
    let params = Params {
        region,
        service,
        time,
        payload_hash,
        uri_encoding: UriEncoding::for_service(service),
        content_sha256_header: s3_like,
    };
    let credentials = Credentials {
        access_key_id: creds.access_key_id.expose(),
        secret_access_key: creds.secret_access_key.expose(),
        session_token: creds.session_token.as_ref().map(|t| t.expose()),
    };
    let signed = sign(&request, &params, &credentials)?;
    let mut forms = vec![
        Zeroizing::new(credentials.access_key_id.to_vec()),
        Zeroizing::new(credentials.secret_access_key.to_vec()),
        Zeroizing::new(signed.signature.clone().into_bytes()),
    ];
    if let Some(token) = credentials.session_token {
        forms.push(Zeroizing::new(token.to_vec()));
    }
    for (name, value) in signed.headers {
        if name == AUTHORIZATION {
            forms.push(Zeroizing::new(value.as_bytes().to_vec()));
        }
        parts.headers.insert(name, value);
    }
    Ok(forms)
}

/// A canonical request and its `SignedHeaders` list.
pub(crate) struct CanonicalRequest {
    pub(crate) text: Vec<u8>,
    pub(crate) signed_headers: String,
}

/// Builds the canonical request, with the signer's own headers (`x-amz-date`, the session
/// token, `x-amz-content-sha256`) included as they will be sent.
pub(crate) fn canonical_request(
    req: &Request<'_>,
    params: &Params<'_>,
    date_time: &str,
    session_token: Option<&[u8]>,
) -> CanonicalRequest {
    let mut headers: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for name in req.headers.keys() {
        let name = name.as_str(); // `http` keeps names lower-case
        if UNSIGNED_HEADERS.contains(&name) || SIGNER_HEADERS.contains(&name) {
            continue;
        }
        let mut joined = Vec::new();
        for (i, v) in req.headers.get_all(name).iter().enumerate() {
            if i > 0 {
                joined.push(b',');
            }
            push_header_value(&mut joined, v.as_bytes());
        }
        headers.insert(name.to_owned(), joined);
    }
    let mut host = Vec::new();
    push_header_value(&mut host, req.authority.as_bytes());
    headers.insert("host".into(), host);
    headers.insert("x-amz-date".into(), date_time.as_bytes().to_vec());
    if let Some(token) = session_token {
        let mut t = Vec::new();
        push_header_value(&mut t, token);
        headers.insert("x-amz-security-token".into(), t);
    }
    if params.content_sha256_header {
        headers.insert(
            "x-amz-content-sha256".into(),
            params.payload_hash.as_bytes().to_vec(),
        );
    }

    let mut text = Vec::with_capacity(256);
    text.extend_from_slice(req.method.as_bytes());
    text.push(b'\n');
    text.extend_from_slice(canonical_uri(req.path, params.uri_encoding).as_bytes());
    text.push(b'\n');
    text.extend_from_slice(canonical_query(req.query.unwrap_or("")).as_bytes());
    text.push(b'\n');
    for (name, value) in &headers {
        text.extend_from_slice(name.as_bytes());
        text.push(b':');
        text.extend_from_slice(value);
        text.push(b'\n');
    }
    text.push(b'\n');
    let signed_headers = headers
        .keys()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(";");
    text.extend_from_slice(signed_headers.as_bytes());
    text.push(b'\n');
    text.extend_from_slice(params.payload_hash.as_bytes());
    CanonicalRequest {
        text,
        signed_headers,
    }
}

/// The string to sign for a canonical request.
pub(crate) fn string_to_sign(canonical: &[u8], params: &Params<'_>, date_time: &str) -> String {
    format!(
        "{ALGORITHM}\n{date_time}\n{}\n{}",
        scope(&date_time[..8], params),
        hex(digest::digest(&digest::SHA256, canonical).as_ref())
    )
}

/// The hex signature of `string_to_sign` with the key derived for `date` and the scope.
pub(crate) fn signature(secret: &[u8], params: &Params<'_>, date: &str, sts: &str) -> String {
    let mut k_secret = Zeroizing::new(Vec::with_capacity(4 + secret.len()));
    k_secret.extend_from_slice(b"AWS4");
    k_secret.extend_from_slice(secret);
    let mut key = hmac_sha256(&k_secret, date.as_bytes());
    for part in [params.region, params.service, "aws4_request"] {
        key = hmac_sha256(&key[..], part.as_bytes());
    }
    hex(&hmac_sha256(&key[..], sts.as_bytes())[..])
}

/// `X-Amz-Date` (`YYYYMMDD'T'HHMMSS'Z'`) and the date (`YYYYMMDD`) of `time` in UTC.
pub(crate) fn amz_date(time: OffsetDateTime) -> Result<(String, String), SigningError> {
    let t = time.to_offset(time::UtcOffset::UTC);
    if !(0..=9999).contains(&t.year()) {
        return Err(SigningError::BadTime);
    }
    let date = format!("{:04}{:02}{:02}", t.year(), u8::from(t.month()), t.day());
    let date_time = format!("{date}T{:02}{:02}{:02}Z", t.hour(), t.minute(), t.second());
    Ok((date_time, date))
}

fn scope(date: &str, params: &Params<'_>) -> String {
    format!("{date}/{}/{}/aws4_request", params.region, params.service)
}

fn check_params(params: &Params<'_>) -> Result<(), SigningError> {
    let scope_safe = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !scope_safe(params.region) {
        return Err(SigningError::BadScope("region"));
    }
    if !scope_safe(params.service) {
        return Err(SigningError::BadScope("service"));
    }
    let hash = params.payload_hash;
    let is_hex = hash.len() == 64
        && hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !is_hex && hash != UNSIGNED_PAYLOAD {
        return Err(SigningError::BadPayloadHash);
    }
    Ok(())
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Zeroizing<[u8; 32]> {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data);
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(tag.as_ref());
    out
}

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// Hex SHA-256 of a body, for [`Params::payload_hash`].
pub fn payload_sha256(body: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, body).as_ref())
}

fn header_safe(bytes: &[u8]) -> bool {
    !bytes.is_empty() && bytes.iter().all(|b| (0x20..0x7f).contains(b))
}

fn value(bytes: &[u8], sensitive: bool) -> HeaderValue {
    let mut v = HeaderValue::from_bytes(bytes)
        .expect("checked: the signer's header values are printable ASCII");
    v.set_sensitive(sensitive);
    v
}

/// Appends `raw` trimmed, with every run of spaces and tabs collapsed to one space.
fn push_header_value(out: &mut Vec<u8>, raw: &[u8]) {
    let mut pending_space = false;
    let start = out.len();
    for &b in raw {
        if b == b' ' || b == b'\t' {
            pending_space = true;
            continue;
        }
        if pending_space && out.len() > start {
            out.push(b' ');
        }
        pending_space = false;
        out.push(b);
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Percent-encodes every byte that is not unreserved (nor `/` when `keep_slash`).
fn encode_into(out: &mut String, bytes: &[u8], keep_slash: bool) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if is_unreserved(b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(DIGITS[usize::from(b >> 4)] as char);
            out.push(DIGITS[usize::from(b & 0xf)] as char);
        }
    }
}

/// Decodes `%XX` escapes; a `%` not followed by two hex digits is kept as is. `+` is kept.
fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).and_then(|c| (*c as char).to_digit(16)),
                b.get(i + 2).and_then(|c| (*c as char).to_digit(16)),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// The canonical URI of `path` as sent.
pub(crate) fn canonical_uri(path: &str, encoding: UriEncoding) -> String {
    if path.is_empty() {
        return "/".to_owned();
    }
    let mut out = String::with_capacity(path.len() + 16);
    match encoding {
        UriEncoding::Double => encode_into(&mut out, path.as_bytes(), true),
        UriEncoding::Single => {
            for (i, segment) in path.split('/').enumerate() {
                if i > 0 {
                    out.push('/');
                }
                encode_into(&mut out, &percent_decode(segment), false);
            }
        }
    }
    out
}

/// The canonical query string of `query` as sent.
pub(crate) fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (name, value) = p.split_once('=').unwrap_or((p, ""));
            let mut n = String::new();
            let mut v = String::new();
            encode_into(&mut n, &percent_decode(name), false);
            encode_into(&mut v, &percent_decode(value), false);
            (n, v)
        })
        .collect();
    pairs.sort();
    let mut out = String::with_capacity(query.len() + 16);
    for (i, (n, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(n);
        out.push('=');
        out.push_str(v);
    }
    out
}

#[cfg(test)]
mod tests;
