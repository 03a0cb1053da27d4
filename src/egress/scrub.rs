//! Step 8, scrub: remove every injected form of the credential from the response.
//!
//! Contract: when the service has `scrub_responses` on and something was injected, the
//! response the caller receives contains none of the scrubbed byte strings — every form in
//! [`Injected`], plus the raw credential's standard base64 (padded and unpadded) and its
//! percent-encodings — not in the reason phrase, a header (name or value), the body or a
//! trailer. Each occurrence becomes [`MARKER`], leftmost-longest, exactly as if the whole
//! stream had been scanned at once, however it is split into chunks.
//!
//! The body is scanned as it streams. After each chunk everything is emitted at once except
//! the longest suffix that is a proper prefix of some pattern (at most the longest pattern's
//! length − 1 bytes); that suffix is released as soon as later bytes show it is not a
//! credential, or at the end of the stream. Streams such as SSE therefore flow event by event
//! with no timer, and no part of a credential is ever released ahead of the bytes that decide
//! it.
//!
//! A response whose `Content-Encoding` (or a `Transfer-Encoding` other than `chunked`) means
//! the bytes cannot be scanned is refused ([`ScrubError::Encoded`]) rather than relayed
//! unread; `clean` asks upstream for `Accept-Encoding: identity` so a well-behaved upstream
//! never sends one.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind, packed};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName};
use http::response::Parts;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use hyper::ext::ReasonPhrase;
use zeroize::Zeroizing;

use super::body::{BoxBody, BoxError};
use crate::inject::Injected;
use crate::policy::Service;

/// What every scrubbed occurrence is replaced with.
///
/// If a pattern is a substring of the marker or contains `[` or `]`, the marker could help
/// form a pattern in the output, so a run of a byte that occurs in no pattern is used instead
/// (see [`Patterns::new`]).
pub const MARKER: &str = "[REDACTED by behalf]";

/// Bytes tried, in order, for the fallback marker; then any other visible ASCII or high byte.
const FALLBACK_BYTES: &[u8] = b"*#~X";
/// Length of the fallback marker.
const FALLBACK_LEN: usize = 8;
/// How much of an upstream's encoding header is quoted in an error.
const QUOTE_MAX: usize = 64;

/// The number of occurrences scrubbed from one response (headers, reason phrase, body and
/// trailers). Shared with the body: read it once the body has ended (for instance in
/// [`Metered`](super::body::Metered)'s `on_end`), when it is final.
#[derive(Debug, Clone, Default)]
pub struct Scrubbed(Arc<AtomicU64>);

impl Scrubbed {
    /// Occurrences replaced so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    fn add(&self, n: u64) {
        if n > 0 {
            self.0.fetch_add(n, Ordering::AcqRel);
        }
    }
}

/// Why a response cannot be relayed with scrubbing on. Never contains the credential.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScrubError {
    /// The body is encoded (compressed), so it cannot be scanned; the value quotes the
    /// upstream's (scrubbed) header.
    #[error(
        "the upstream sent an encoded response ({0}) although behalf asked for identity \
         encoding; it cannot be checked for the injected credential, so it is not relayed"
    )]
    Encoded(String),
    /// The credential's forms cannot be searched for (pathological credential).
    #[error("the injected credential cannot be scrubbed from responses ({0})")]
    Unscrubbable(&'static str),
}

/// Scrubs a response (step 8).
///
/// When `service.scrub_responses` is off or nothing was injected, the response is returned
/// untouched with a zero counter. Otherwise the reason phrase and every header are scrubbed
/// now; a body that may carry data is refused if it is encoded, loses `Content-Length` (its
/// length changes) and is wrapped in a streaming scrubber. The counter is final once the
/// returned body has ended.
///
/// Call it on the headers as received, before hop-by-hop headers are stripped, so that a
/// `Transfer-Encoding` the body cannot be scanned through is seen.
pub fn scrub_response(
    parts: &mut Parts,
    body: BoxBody,
    injected: &Injected,
    service: &Service,
    searchers: &Searchers,
) -> Result<(BoxBody, Scrubbed), ScrubError> {
    let scrubbed = Scrubbed::default();
    if !service.scrub_responses || injected.is_empty() {
        return Ok((body, scrubbed));
    }
    let patterns = searchers.for_injected(injected)?;
    // An empty body (HEAD, 204, 304) has nothing to scan, whatever its headers say.
    let has_body = !body.is_end_stream();
    let unscannable = if has_body {
        unscannable_coding(&parts.headers)
    } else {
        None
    };
    scrubbed.add(scrub_head(&patterns, parts));
    if let Some(name) = unscannable {
        return Err(ScrubError::Encoded(quote(&patterns, &parts.headers, &name)));
    }
    if !has_body {
        return Ok((body, scrubbed));
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = ScrubBody {
        inner: body,
        scrubber: Scrubber::new(patterns, scrubbed.clone()),
        trailers: None,
        inner_done: false,
        done: false,
    };
    Ok((BoxBody::new(body), scrubbed))
}

/// The header naming a coding the body cannot be scanned through, if any: a
/// `Content-Encoding` other than `identity`, or a `Transfer-Encoding` other than `chunked`
/// (hyper removes only chunked framing). Unparseable values count as unscannable.
fn unscannable_coding(headers: &HeaderMap) -> Option<HeaderName> {
    let bad = |name: &HeaderName, fine: &[&str]| {
        headers.get_all(name).iter().any(|v| match v.to_str() {
            Err(_) => true,
            Ok(s) => s
                .split(',')
                .map(str::trim)
                .any(|t| !t.is_empty() && !fine.iter().any(|f| t.eq_ignore_ascii_case(f))),
        })
    };
    [
        (header::CONTENT_ENCODING, &["identity"][..]),
        (header::TRANSFER_ENCODING, &["identity", "chunked"][..]),
    ]
    .into_iter()
    .find(|(name, fine)| bad(name, fine))
    .map(|(name, _)| name)
}

/// `Name: value, value`, printable, bounded and scrubbed (joining values or replacing bytes
/// could spell a pattern again).
fn quote(patterns: &Patterns, headers: &HeaderMap, name: &HeaderName) -> String {
    let values: Vec<String> = headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    let mut value: String = values
        .join(", ")
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(QUOTE_MAX + 1)
        .collect();
    if value.len() > QUOTE_MAX {
        value.truncate(QUOTE_MAX);
        value.push_str("...");
    }
    if let Some((replaced, _)) = patterns.replace_all(value.as_bytes()) {
        value = String::from_utf8_lossy(&replaced).into_owned();
    }
    let name = match *name {
        header::CONTENT_ENCODING => "Content-Encoding",
        header::TRANSFER_ENCODING => "Transfer-Encoding",
        _ => name.as_str(),
    };
    format!("{name}: {value}")
}

/// Scrubs the reason phrase and the headers; returns the occurrences replaced.
fn scrub_head(patterns: &Patterns, parts: &mut Parts) -> u64 {
    let mut n = 0;
    if let Some(reason) = parts.extensions.get::<ReasonPhrase>()
        && let Some((replaced, k)) = patterns.replace_all(reason.as_bytes())
    {
        n += k;
        match ReasonPhrase::try_from(replaced) {
            Ok(r) => {
                parts.extensions.insert(r);
            }
            Err(_) => {
                parts.extensions.remove::<ReasonPhrase>();
            }
        }
    }
    n + scrub_headers(patterns, &mut parts.headers)
}

/// Replaces occurrences in header values; drops a field whose name carries one or whose
/// scrubbed value is not a valid header value. Returns the occurrences removed.
fn scrub_headers(patterns: &Patterns, headers: &mut HeaderMap) -> u64 {
    let hit = headers.iter().any(|(name, value)| {
        patterns.ac.is_match(name.as_str().as_bytes()) || patterns.ac.is_match(value.as_bytes())
    });
    if !hit {
        return 0;
    }
    let mut n = 0;
    let mut current: Option<HeaderName> = None;
    for (name, value) in std::mem::take(headers) {
        if let Some(name) = name {
            current = Some(name);
        }
        let Some(name) = &current else { continue };
        let in_name = patterns.count(name.as_str().as_bytes());
        if in_name > 0 {
            n += in_name + patterns.count(value.as_bytes());
            continue;
        }
        match patterns.replace_all(value.as_bytes()) {
            None => {
                headers.append(name.clone(), value);
            }
            Some((replaced, k)) => {
                n += k;
                if let Ok(mut v) = HeaderValue::from_bytes(&replaced) {
                    v.set_sensitive(value.is_sensitive());
                    headers.append(name.clone(), v);
                }
            }
        }
    }
    n
}

/// The searchers built for the credentials injected recently, so that a response does not
/// build its own: building one (patterns, encodings, automaton) costs more than the rest of
/// the pipeline does per request.
///
/// Keyed by a SHA-256 of the injected forms, never the forms themselves; bounded
/// (quick_cache's S3-FIFO: a searcher used once goes before one used often), so a replaced
/// credential's searcher simply ages out. Forms that carry a per-request signature are never
/// seen twice: their searcher is built for the one response and not kept.
pub struct Searchers(quick_cache::sync::Cache<[u8; 32], Arc<Patterns>>);

impl Searchers {
    /// Keeps up to `capacity` searchers (a few KiB each).
    pub fn new(capacity: usize) -> Self {
        Self(quick_cache::sync::Cache::new(capacity.max(1)))
    }

    fn for_injected(&self, injected: &Injected) -> Result<Arc<Patterns>, ScrubError> {
        if injected.is_signed() {
            return Patterns::from_injected(injected).map(Arc::new);
        }
        let mut key = ring::digest::Context::new(&ring::digest::SHA256);
        let mut field = |tag: u8, bytes: &[u8]| {
            key.update(&[tag]);
            key.update(&(bytes.len() as u64).to_le_bytes());
            key.update(bytes);
        };
        injected.forms().for_each(|form| field(b'f', form));
        injected.raw().into_iter().for_each(|raw| field(b'r', raw));
        let mut id = [0; 32];
        id.copy_from_slice(key.finish().as_ref());
        self.0
            .get_or_insert_with(&id, || Patterns::from_injected(injected).map(Arc::new))
    }

    /// How many searchers are kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.len()
    }
}

impl std::fmt::Debug for Searchers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Searchers({} kept)", self.0.len())
    }
}

/// The byte strings to scrub and how to search for them.
struct Patterns {
    ac: AhoCorasick,
    /// The same search with SIMD (Teddy) where the CPU and patterns allow: many times the
    /// automaton's speed on bodies, where it finds candidates by up to three leading bytes.
    packed: Option<packed::Searcher>,
    /// Deduplicated, non-empty, longest first.
    patterns: Vec<Zeroizing<Vec<u8>>>,
    /// Whether some pattern starts with this byte.
    starts: [bool; 256],
    max_len: usize,
    marker: Bytes,
}

impl Patterns {
    /// Every injected form, plus the raw credential's standard base64 (padded and unpadded),
    /// its `application/x-www-form-urlencoded` form and its RFC 3986 percent-encoding.
    fn from_injected(injected: &Injected) -> Result<Self, ScrubError> {
        let mut list: Vec<Zeroizing<Vec<u8>>> = injected
            .forms()
            .map(|f| Zeroizing::new(f.to_vec()))
            .collect();
        if let Some(raw) = injected.raw() {
            list.push(Zeroizing::new(STANDARD.encode(raw).into_bytes()));
            list.push(Zeroizing::new(STANDARD_NO_PAD.encode(raw).into_bytes()));
            let mut form = Zeroizing::new(String::with_capacity(raw.len() * 3));
            form.extend(form_urlencoded::byte_serialize(raw));
            list.push(Zeroizing::new(std::mem::take(&mut *form).into_bytes()));
            list.push(percent_encode(raw));
        }
        Self::new(list)
    }

    /// Builds the searchers and picks the marker: [`MARKER`], unless a pattern could then
    /// appear in the output (it contains `[` or `]`, or is part of the marker), in which case
    /// a run of a byte that occurs in no pattern, so no output can contain a pattern.
    fn new(mut list: Vec<Zeroizing<Vec<u8>>>) -> Result<Self, ScrubError> {
        list.retain(|p| !p.is_empty());
        list.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        list.dedup();
        if list.is_empty() {
            return Err(ScrubError::Unscrubbable("it is empty"));
        }
        // The automaton searches heads (and bodies where SIMD is unavailable). A contiguous
        // NFA builds in microseconds and takes a few KiB; the DFA aho-corasick would pick
        // takes ~40 KiB, too much for a searcher kept per credential.
        let ac = AhoCorasick::builder()
            .kind(Some(AhoCorasickKind::ContiguousNFA))
            // Its prefilter picks "rare" bytes by a fixed table; in JSON bodies they are often
            // common, and the automaton alone measured twice as fast (benches/scrub.rs).
            .prefilter(false)
            .match_kind(MatchKind::LeftmostLongest)
            .build(list.iter().map(|p| p.as_slice()))
            .map_err(|_| ScrubError::Unscrubbable("it is too large to search for"))?;
        let packed = packed::Config::new()
            .match_kind(packed::MatchKind::LeftmostLongest)
            .builder()
            .extend(list.iter().map(|p| p.as_slice()))
            .build();
        let mut starts = [false; 256];
        let mut seen = [false; 256];
        for p in &list {
            starts[usize::from(p[0])] = true;
            for &b in p.iter() {
                seen[usize::from(b)] = true;
            }
        }
        let clashes = list
            .iter()
            .any(|p| p.contains(&b'[') || p.contains(&b']') || contains(MARKER.as_bytes(), p));
        let marker = if clashes {
            let byte = FALLBACK_BYTES
                .iter()
                .copied()
                .chain(0x21..=0x7e)
                .chain(0x80..=0xff)
                .find(|&b| !seen[usize::from(b)])
                .ok_or(ScrubError::Unscrubbable(
                    "it contains every byte that could mark a redaction",
                ))?;
            Bytes::from(vec![byte; FALLBACK_LEN])
        } else {
            Bytes::from_static(MARKER.as_bytes())
        };
        Ok(Self {
            ac,
            packed,
            max_len: list[0].len(),
            patterns: list,
            starts,
            marker,
        })
    }

    /// Whether `s` (non-empty) is a proper prefix of some pattern: a credential may be
    /// starting here.
    fn is_partial(&self, s: &[u8]) -> bool {
        self.starts[usize::from(s[0])]
            && self
                .patterns
                .iter()
                .any(|p| p.len() > s.len() && p.starts_with(s))
    }

    /// The occurrences in `input`, leftmost-longest, not overlapping.
    fn find_iter<'a>(&'a self, input: &'a [u8]) -> impl Iterator<Item = aho_corasick::Match> + 'a {
        let (packed, ac) = match &self.packed {
            Some(p) => (Some(p.find_iter(input)), None),
            None => (None, Some(self.ac.find_iter(input))),
        };
        packed.into_iter().flatten().chain(ac.into_iter().flatten())
    }

    /// Occurrences in a complete input.
    fn count(&self, input: &[u8]) -> u64 {
        self.ac.find_iter(input).count() as u64
    }

    /// A complete input with every occurrence replaced, and how many there were; `None` if
    /// there were none.
    fn replace_all(&self, input: &[u8]) -> Option<(Vec<u8>, u64)> {
        let mut out: Option<Vec<u8>> = None;
        let mut pos = 0;
        let mut n = 0;
        for m in self.ac.find_iter(input) {
            let o = out.get_or_insert_with(|| Vec::with_capacity(input.len() + self.marker.len()));
            o.extend_from_slice(&input[pos..m.start()]);
            o.extend_from_slice(&self.marker);
            pos = m.end();
            n += 1;
        }
        let mut out = out?;
        out.extend_from_slice(&input[pos..]);
        Some((out, n))
    }
}

/// RFC 3986 percent-encoding: everything but unreserved characters, upper-case hex.
fn percent_encode(raw: &[u8]) -> Zeroizing<Vec<u8>> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Zeroizing::new(Vec::with_capacity(raw.len() * 3));
    for &b in raw {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The streaming replacer: feed chunks, get back what may be released now.
struct Scrubber {
    patterns: Arc<Patterns>,
    /// The longest suffix of the data so far that is a proper prefix of a pattern.
    held: Bytes,
    /// Scratch: positions of the current buffer whose suffix is a proper prefix of a pattern,
    /// ascending (reused so that no chunk allocates for it).
    partial: Vec<usize>,
    scrubbed: Scrubbed,
}

impl Scrubber {
    fn new(patterns: Arc<Patterns>, scrubbed: Scrubbed) -> Self {
        let partial = Vec::with_capacity(patterns.max_len);
        Self {
            patterns,
            held: Bytes::new(),
            partial,
            scrubbed,
        }
    }

    /// Takes the next chunk; returns everything that can be released now.
    fn push(&mut self, chunk: Bytes) -> Bytes {
        if chunk.is_empty() {
            return Bytes::new();
        }
        let buf = if self.held.is_empty() {
            chunk
        } else {
            let mut buf = BytesMut::with_capacity(self.held.len() + chunk.len());
            buf.extend_from_slice(&self.held);
            buf.extend_from_slice(&chunk);
            buf.freeze()
        };
        self.process(buf, false)
    }

    /// The end of the stream: releases what was held, scrubbed.
    fn finish(&mut self) -> Bytes {
        let held = std::mem::take(&mut self.held);
        if held.is_empty() {
            held
        } else {
            self.process(held, true)
        }
    }

    /// Forgets what was held (the stream failed; a partial credential is not released).
    fn discard(&mut self) {
        self.held = Bytes::new();
    }

    fn process(&mut self, buf: Bytes, eof: bool) -> Bytes {
        let Self {
            patterns,
            held,
            partial,
            scrubbed,
        } = self;
        let len = buf.len();
        partial.clear();
        if !eof {
            for i in len.saturating_sub(patterns.max_len - 1)..len {
                if patterns.is_partial(&buf[i..]) {
                    partial.push(i);
                }
            }
        }
        // From `pos`, bytes at or after this may still begin a credential: hold them.
        let hold_from = |pos: usize| partial.iter().copied().find(|&i| i >= pos).unwrap_or(len);
        let mut out: Option<BytesMut> = None;
        let mut pos = 0;
        let mut n = 0;
        for m in patterns.find_iter(&buf[..]) {
            // A match starting in the held region is not final: an earlier or longer one may
            // still complete with the next chunk.
            if m.start() >= hold_from(pos) {
                break;
            }
            let o = out.get_or_insert_with(|| BytesMut::with_capacity(len + patterns.marker.len()));
            o.extend_from_slice(&buf[pos..m.start()]);
            o.extend_from_slice(&patterns.marker);
            pos = m.end();
            n += 1;
        }
        let hold = hold_from(pos);
        scrubbed.add(n);
        *held = buf.slice(hold..);
        match out {
            None => buf.slice(pos..hold),
            Some(mut o) => {
                o.extend_from_slice(&buf[pos..hold]);
                o.freeze()
            }
        }
    }
}

/// The streaming body: data frames scrubbed as they come, the held suffix flushed before the
/// trailers (scrubbed too) and at the end.
struct ScrubBody {
    inner: BoxBody,
    scrubber: Scrubber,
    /// Trailers waiting for the held suffix to go out first.
    trailers: Option<HeaderMap>,
    /// The inner body has no more frames.
    inner_done: bool,
    /// Everything has been returned (or the inner body failed).
    done: bool,
}

impl Body for ScrubBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if this.inner_done {
                let tail = this.scrubber.finish();
                if !tail.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(tail))));
                }
                this.done = true;
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                None => this.inner_done = true,
                Some(Err(e)) => {
                    this.done = true;
                    this.scrubber.discard();
                    return Poll::Ready(Some(Err(e)));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let out = this.scrubber.push(data);
                        this.inner_done = this.inner.is_end_stream();
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(frame) => {
                        // Trailers end the body.
                        if let Ok(mut trailers) = frame.into_trailers() {
                            let n = scrub_headers(&this.scrubber.patterns, &mut trailers);
                            this.scrubber.scrubbed.add(n);
                            this.trailers = Some(trailers);
                        }
                        this.inner_done = true;
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
            || ((self.inner_done || self.inner.is_end_stream())
                && self.scrubber.held.is_empty()
                && self.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        if self.is_end_stream() {
            SizeHint::with_exact(0)
        } else {
            SizeHint::default()
        }
    }
}

#[cfg(test)]
mod tests;
