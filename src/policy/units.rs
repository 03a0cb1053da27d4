//! Durations (`"10s"`, `"1h"`) and sizes (`"64MiB"`) as written in policy files.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

/// Deserialises a duration written as a string such as `"10s"`, `"1h 30m"` or `"250ms"`.
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as \"10s\", \"5m\" or \"1h\"")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            let parsed = humantime::parse_duration(v).map_err(|e| {
                E::custom(format!(
                    "invalid duration `{v}` ({e}); write e.g. \"10s\", \"5m\" or \"1h\""
                ))
            })?;
            if parsed.is_zero() {
                return Err(E::custom(format!(
                    "duration `{v}` must be greater than zero"
                )));
            }
            Ok(parsed)
        }
    }
    d.deserialize_str(V)
}

/// Parses a byte size: a plain number of bytes or a number with `KiB`, `MiB` or `GiB`.
pub fn parse_size(v: &str) -> Result<u64, String> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (number, unit) = v.split_at(split);
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{v}`; use B, KiB, MiB or GiB (e.g. \"64MiB\")"
            ));
        }
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("invalid size `{v}`; write e.g. \"64MiB\""))?;
    match number.checked_mul(multiplier) {
        Some(0) => Err(format!("size `{v}` must be greater than zero")),
        Some(n) => Ok(n),
        None => Err(format!("size `{v}` is too large")),
    }
}

/// Deserialises a byte size written as `"64MiB"` or as an integer number of bytes.
pub fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a size such as \"64MiB\" or a number of bytes")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
            parse_size(v).map_err(E::custom)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v)
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| E::custom(format!("size {v} must be greater than zero")))
        }
    }
    d.deserialize_any(V)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("10 KiB"), Ok(10 << 10));
        assert_eq!(parse_size("512"), Ok(512));
        assert!(parse_size("64MB").is_err());
        assert!(parse_size("0MiB").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
    }
}
