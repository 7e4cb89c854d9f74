//! Durations as Istio's YAML writes them: Go-style (`3s`, `100ms`, `1.5s`, `1h30m`,
//! `10000ms`) and protobuf JSON style (`3.000s`). A leading `-` parses, so that
//! validation can name the field holding a negative duration instead of failing
//! with a generic type error.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A signed duration in nanoseconds, as written in Istio config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct IstioDuration {
    nanos: i128,
}

impl IstioDuration {
    pub const ZERO: IstioDuration = IstioDuration { nanos: 0 };

    pub fn from_millis(ms: i64) -> Self {
        IstioDuration {
            nanos: ms as i128 * 1_000_000,
        }
    }

    pub fn is_negative(&self) -> bool {
        self.nanos < 0
    }

    pub fn as_nanos(&self) -> i128 {
        self.nanos
    }

    /// Envoy's `google.protobuf.Duration` (seconds + nanos, same sign).
    pub fn to_proto(self) -> envoy_types::pb::google::protobuf::Duration {
        let seconds = (self.nanos / 1_000_000_000) as i64;
        let nanos = (self.nanos % 1_000_000_000) as i32;
        envoy_types::pb::google::protobuf::Duration { seconds, nanos }
    }

    /// Whole seconds, rounded down (Envoy's CORS `max_age` is a string of seconds).
    pub fn whole_seconds(self) -> i64 {
        (self.nanos / 1_000_000_000) as i64
    }

    /// Parse `[-]` followed by one or more `<decimal><unit>` groups, units `h`, `m`,
    /// `s`, `ms`, `us`/`µs`, `ns` (Go's `time.ParseDuration`, which Istio's CRD
    /// conversion accepts).
    pub fn parse(input: &str) -> Result<IstioDuration, String> {
        let s = input.trim();
        if s.is_empty() {
            return Err("empty duration".into());
        }
        let (negative, mut rest) = match s.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, s.strip_prefix('+').unwrap_or(s)),
        };
        if rest == "0" {
            return Ok(IstioDuration::ZERO);
        }
        let mut total: i128 = 0;
        let mut groups = 0;
        while !rest.is_empty() {
            let num_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(|| {
                    format!("duration {input:?} is missing a unit (h, m, s, ms, us, ns)")
                })?;
            if num_len == 0 {
                return Err(format!("duration {input:?}: expected a number"));
            }
            let number = &rest[..num_len];
            rest = &rest[num_len..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let scale: i128 = match unit {
                "h" => 3_600_000_000_000,
                "m" => 60_000_000_000,
                "s" => 1_000_000_000,
                "ms" => 1_000_000,
                "us" | "µs" | "μs" => 1_000,
                "ns" => 1,
                _ => {
                    return Err(format!(
                        "duration {input:?}: unknown unit {unit:?} (use h, m, s, ms, us, ns)"
                    ))
                }
            };
            total += scale_decimal(number, scale)
                .ok_or_else(|| format!("duration {input:?}: bad number {number:?}"))?;
            groups += 1;
            if total > i64::MAX as i128 {
                return Err(format!("duration {input:?} is too large"));
            }
        }
        if groups == 0 {
            return Err(format!("duration {input:?}: expected a number and a unit"));
        }
        Ok(IstioDuration {
            nanos: if negative { -total } else { total },
        })
    }
}

/// `number * scale` for a decimal like `1.5`, exact to the nanosecond.
fn scale_decimal(number: &str, scale: i128) -> Option<i128> {
    let (int, frac) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if int.is_empty() && frac.is_empty() || frac.contains('.') {
        return None;
    }
    let int_part: i128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut value = int_part.checked_mul(scale)?;
    let mut place = scale;
    for d in frac.chars() {
        place /= 10;
        if place == 0 {
            break;
        }
        value += (d.to_digit(10)? as i128) * place;
    }
    Some(value)
}

impl fmt::Display for IstioDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.nanos;
        if n % 1_000_000_000 == 0 {
            write!(f, "{}s", n / 1_000_000_000)
        } else if n % 1_000_000 == 0 {
            write!(f, "{}ms", n / 1_000_000)
        } else {
            write!(f, "{}ns", n)
        }
    }
}

impl Serialize for IstioDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IstioDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = IstioDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"3s\", \"100ms\" or \"1.5s\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IstioDuration, E> {
                IstioDuration::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_istio_forms() {
        assert_eq!(
            IstioDuration::parse("3s").unwrap(),
            IstioDuration::from_millis(3000)
        );
        assert_eq!(
            IstioDuration::parse("100ms").unwrap(),
            IstioDuration::from_millis(100)
        );
        assert_eq!(
            IstioDuration::parse("1.5s").unwrap(),
            IstioDuration::from_millis(1500)
        );
        assert_eq!(
            IstioDuration::parse("10000ms").unwrap(),
            IstioDuration::from_millis(10_000)
        );
        assert_eq!(
            IstioDuration::parse("1h30m").unwrap(),
            IstioDuration::from_millis(5_400_000)
        );
        assert_eq!(IstioDuration::parse("0").unwrap(), IstioDuration::ZERO);
        assert_eq!(
            IstioDuration::parse("3.000s").unwrap(),
            IstioDuration::from_millis(3000)
        );
        assert!(IstioDuration::parse("-1s").unwrap().is_negative());
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "3", "s", "3x", "1..5s", "abc"] {
            assert!(
                IstioDuration::parse(bad).is_err(),
                "{bad:?} should not parse"
            );
        }
    }

    #[test]
    fn converts_to_proto() {
        let d = IstioDuration::parse("1.5s").unwrap().to_proto();
        assert_eq!((d.seconds, d.nanos), (1, 500_000_000));
        assert_eq!(IstioDuration::parse("1.5s").unwrap().to_string(), "1500ms");
    }
}
