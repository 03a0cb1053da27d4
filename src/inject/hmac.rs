//! The `hmac` inject form: a configurable HMAC signature over parts of the request (method,
//! path and query, timestamp, body), keyed by the credential, placed in a chosen header with an
//! optional timestamp header.
//!
//! [`sign`] is pure: the caller supplies the time, so that known vectors can be checked.
//!
//! # Security
//!
//! The key (the credential) is only ever an HMAC key here; it is never part of the message or
//! of any header. The signature and timestamp headers are marked sensitive.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderName, HeaderValue, Method};
use ring::hmac;

use super::InjectError;
use crate::policy::service::{
    HmacAlgorithm, HmacForm, MessagePart, SignatureEncoding, TimestampFormat,
};

/// Writes `at` in `format`; times before the epoch are written as the epoch.
pub fn format_timestamp(format: TimestampFormat, at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    match format {
        TimestampFormat::Unix => since.as_secs().to_string(),
        TimestampFormat::UnixMs => since.as_millis().to_string(),
        TimestampFormat::Rfc3339 => {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + since).to_string()
        }
    }
}

/// The bytes the form signs for this request.
pub fn message(
    form: &HmacForm,
    method: &Method,
    path_and_query: &str,
    timestamp: &str,
    body: &[u8],
) -> Vec<u8> {
    let mut m = Vec::new();
    for part in &form.message {
        match part {
            MessagePart::Literal(s) => m.extend_from_slice(s.as_bytes()),
            MessagePart::Method => m.extend_from_slice(method.as_str().as_bytes()),
            MessagePart::Path => m.extend_from_slice(path_and_query.as_bytes()),
            MessagePart::Timestamp => m.extend_from_slice(timestamp.as_bytes()),
            MessagePart::Body => m.extend_from_slice(body),
        }
    }
    m
}

/// HMAC of `message` under `key`.
pub fn mac(algorithm: HmacAlgorithm, key: &[u8], message: &[u8]) -> Vec<u8> {
    let algorithm = match algorithm {
        HmacAlgorithm::Sha256 => hmac::HMAC_SHA256,
        HmacAlgorithm::Sha512 => hmac::HMAC_SHA512,
    };
    let key = hmac::Key::new(algorithm, key);
    hmac::sign(&key, message).as_ref().to_vec()
}

/// Lower-case hex or padded standard base64.
pub fn encode(encoding: SignatureEncoding, bytes: &[u8]) -> String {
    match encoding {
        SignatureEncoding::Base64 => STANDARD.encode(bytes),
        SignatureEncoding::Hex => {
            const DIGITS: &[u8; 16] = b"0123456789abcdef";
            let mut s = String::with_capacity(bytes.len() * 2);
            for b in bytes {
                s.push(char::from(DIGITS[usize::from(b >> 4)]));
                s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
            }
            s
        }
    }
}

fn sensitive(value: &str, what: &'static str) -> Result<HeaderValue, InjectError> {
    let mut v = HeaderValue::from_str(value).map_err(|_| InjectError::NotHeaderSafe(what))?;
    v.set_sensitive(true);
    Ok(v)
}

/// Signs a request: returns the signature header (`prefix` + encoded HMAC of the message) and,
/// when the form names one, the timestamp header, both marked sensitive.
///
/// `path_and_query` is the path and query exactly as sent (`/a/b?x=1`); `body` is the whole
/// request body as sent. The only error is a `prefix` that is not a valid header value, which
/// the policy loader already refuses.
pub fn sign(
    form: &HmacForm,
    method: &Method,
    path_and_query: &str,
    body: &[u8],
    at: SystemTime,
    key: &[u8],
) -> Result<Vec<(HeaderName, HeaderValue)>, InjectError> {
    let timestamp = format_timestamp(form.timestamp, at);
    let msg = message(form, method, path_and_query, &timestamp, body);
    let signature = format!(
        "{}{}",
        form.prefix,
        encode(form.encoding, &mac(form.algorithm, key, &msg))
    );
    let mut headers = vec![(form.header.clone(), sensitive(&signature, "hmac prefix")?)];
    if let Some(name) = &form.timestamp_header {
        headers.push((name.clone(), sensitive(&timestamp, "hmac timestamp")?));
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn form(
        header: &str,
        algorithm: HmacAlgorithm,
        encoding: SignatureEncoding,
        message: &str,
        prefix: &str,
        timestamp_header: Option<&str>,
        timestamp: TimestampFormat,
    ) -> HmacForm {
        HmacForm {
            header: HeaderName::from_bytes(header.as_bytes()).unwrap(),
            algorithm,
            encoding,
            message: HmacForm::parse_message(message).unwrap(),
            prefix: prefix.into(),
            timestamp_header: timestamp_header
                .map(|h| HeaderName::from_bytes(h.as_bytes()).unwrap()),
            timestamp,
        }
    }

    // RFC 4231, section 4.2 (test case 1) and 4.3 (test case 2).
    #[test]
    fn rfc4231_test_cases_1_and_2() {
        let cases: [(&[u8], &[u8], &str, &str); 2] = [
            (
                &[0x0b; 20],
                b"Hi There",
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
                "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde\
                 daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854",
            ),
            (
                b"Jefe",
                b"what do ya want for nothing?",
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
                "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554\
                 9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737",
            ),
        ];
        for (key, data, sha256, sha512) in cases {
            let got256 = mac(HmacAlgorithm::Sha256, key, data);
            let got512 = mac(HmacAlgorithm::Sha512, key, data);
            assert_eq!(got256, hex(sha256));
            assert_eq!(got512, hex(sha512));
            assert_eq!(encode(SignatureEncoding::Hex, &got256), sha256);
            assert_eq!(encode(SignatureEncoding::Hex, &got512), sha512);
        }
    }

    /// Slack's worked example ("Verifying requests from Slack", docs.slack.dev).
    #[test]
    fn slack_documented_example() {
        let slack = form(
            "X-Slack-Signature",
            HmacAlgorithm::Sha256,
            SignatureEncoding::Hex,
            "v0:{timestamp}:{body}",
            "v0=",
            Some("X-Slack-Request-Timestamp"),
            TimestampFormat::Unix,
        );
        let body = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow\
                    &channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA\
                    &user_name=roadrunner&command=%2Fwebhook-collect&text=\
                    &response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J\
                    %2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN\
                    &trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let headers = sign(
            &slack,
            &Method::POST,
            "/commands",
            body.as_bytes(),
            at(1_531_420_618),
            b"8f742231b10e8888abcd99yyyzzz85a5",
        )
        .unwrap();
        assert_eq!(headers.len(), 2);
        assert_eq!(headers[0].0, "x-slack-signature");
        assert_eq!(
            headers[0].1,
            "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
        );
        assert_eq!(headers[1].0, "x-slack-request-timestamp");
        assert_eq!(headers[1].1, "1531420618");
        assert!(headers.iter().all(|(_, v)| v.is_sensitive()));
    }

    /// HMAC from its definition (RFC 2104) over `ring::digest`, independent of `ring::hmac`.
    fn hmac_sha512_by_hand(key: &[u8], msg: &[u8]) -> Vec<u8> {
        use ring::digest::{SHA512, digest};
        const BLOCK: usize = 128;
        let mut k = if key.len() > BLOCK {
            digest(&SHA512, key).as_ref().to_vec()
        } else {
            key.to_vec()
        };
        k.resize(BLOCK, 0);
        let mut inner: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
        inner.extend_from_slice(msg);
        let mut outer: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
        outer.extend_from_slice(digest(&SHA512, &inner).as_ref());
        digest(&SHA512, &outer).as_ref().to_vec()
    }

    /// A generic scheme: `X-Signature: base64(hmac-sha512(method \n path \n timestamp \n body))`.
    #[test]
    fn generic_x_signature_scheme() {
        let generic = form(
            "X-Signature",
            HmacAlgorithm::Sha512,
            SignatureEncoding::Base64,
            "{method}\n{path}\n{timestamp}\n{body}",
            "",
            Some("X-Timestamp"),
            TimestampFormat::Unix,
        );
        let key = b"generic-secret";
        let body = br#"{"item":"book","qty":2}"#;
        let headers = sign(
            &generic,
            &Method::POST,
            "/v1/orders?dry_run=1",
            body,
            at(1_700_000_000),
            key,
        )
        .unwrap();
        let expected = STANDARD.encode(hmac_sha512_by_hand(
            key,
            b"POST\n/v1/orders?dry_run=1\n1700000000\n{\"item\":\"book\",\"qty\":2}",
        ));
        assert_eq!(headers[0].0, "x-signature");
        assert_eq!(headers[0].1, expected.as_str());
        // The same value computed with Python's hmac and base64 modules.
        assert_eq!(
            expected,
            "EA6gtp21yQJwji2NeIV5hOs3AFMPJeu8HzU7tuBMVJ6X4fp+gdcrzQg4vj/qq0GDqseZFbEsvSdjNo+E9BzjPA=="
        );
        assert_eq!(
            headers[1],
            (
                HeaderName::from_static("x-timestamp"),
                HeaderValue::from_static("1700000000")
            )
        );
    }

    #[test]
    fn empty_body_and_millisecond_timestamps() {
        let generic = form(
            "X-Signature",
            HmacAlgorithm::Sha512,
            SignatureEncoding::Base64,
            "{method}\n{path}\n{timestamp}\n{body}",
            "",
            Some("X-Timestamp"),
            TimestampFormat::UnixMs,
        );
        let now = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let headers = sign(
            &generic,
            &Method::GET,
            "/v1/orders?limit=2",
            b"",
            now,
            b"generic-secret",
        )
        .unwrap();
        // Python: base64(hmac.new(b"generic-secret", b"GET\n/v1/orders?limit=2\n1700000000123\n",
        // sha512).digest())
        assert_eq!(
            headers[0].1,
            "TeYWHr9G8uikDhYyZQNndunjKJ3VWdzxoyS5R+wcHyIm0H7jsLdZgeUfYelBnsnK7SoW5Li1Fr5qnezlE4+14A=="
        );
        assert_eq!(headers[1].1, "1700000000123");
    }

    #[test]
    fn timestamp_formats() {
        let t = at(1_531_420_618);
        assert_eq!(format_timestamp(TimestampFormat::Unix, t), "1531420618");
        assert_eq!(
            format_timestamp(TimestampFormat::UnixMs, t),
            "1531420618000"
        );
        assert_eq!(
            format_timestamp(TimestampFormat::Rfc3339, t),
            "2018-07-12T18:36:58Z"
        );
        let before = UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(format_timestamp(TimestampFormat::Unix, before), "0");
    }

    #[test]
    fn without_timestamp_header_only_the_signature_is_set() {
        let f = form(
            "X-Hub-Signature-256",
            HmacAlgorithm::Sha256,
            SignatureEncoding::Hex,
            "{body}",
            "sha256=",
            None,
            TimestampFormat::Unix,
        );
        // GitHub's documented webhook example ("Validating webhook deliveries").
        let headers = sign(
            &f,
            &Method::POST,
            "/",
            b"Hello, World!",
            at(0),
            b"It's a Secret to Everybody",
        )
        .unwrap();
        assert_eq!(headers.len(), 1);
        assert_eq!(
            headers[0].1,
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[test]
    fn literal_braces_and_parts_in_order() {
        let f = form(
            "X-Sig",
            HmacAlgorithm::Sha256,
            SignatureEncoding::Hex,
            "{{{method}}} {path}",
            "",
            None,
            TimestampFormat::Unix,
        );
        assert_eq!(
            message(&f, &Method::DELETE, "/a?b=1", "", b""),
            b"{DELETE} /a?b=1"
        );
    }
}
