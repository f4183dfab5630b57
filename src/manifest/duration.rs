//! Human-readable durations in manifests ("90s", "5m", "1h 30m").

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative span of time written as a human string in a manifest.
///
/// Accepted forms are jiff's "friendly" format (`"90s"`, `"5m"`, `"1h 30m"`, `"250ms"`) and
/// ISO 8601 (`"PT5M"`). Bare integers are rejected: a manifest must say its unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// Builds a duration of `secs` whole seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }

    /// The span as a [`std::time::Duration`].
    pub const fn get(self) -> Duration {
        self.0
    }

    /// Parses `"5m"`, `"90s"`, `"1h 30m"` or ISO 8601; errors say what was expected.
    pub fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err("empty duration (expected e.g. \"90s\", \"5m\", \"1h 30m\")".into());
        }
        if trimmed.chars().all(|c| c.is_ascii_digit() || c == '.') {
            return Err(format!(
                "duration {trimmed:?} has no unit (expected e.g. \"{trimmed}s\" or \"{trimmed}m\")"
            ));
        }
        let signed: jiff::SignedDuration = trimmed.parse().map_err(|_| {
            format!(
                "invalid duration {trimmed:?} (expected e.g. \"90s\", \"5m\", \"1h 30m\" or ISO 8601 \"PT5M\")"
            )
        })?;
        if signed.is_negative() {
            return Err(format!(
                "negative duration {trimmed:?} (expected a positive span such as \"5m\")"
            ));
        }
        Duration::try_from(signed)
            .map(Self)
            .map_err(|e| format!("duration {trimmed:?} out of range: {e}"))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

impl HumanDuration {
    /// The duration as a manifest would write it, exactly: the compact form (`"5m"`) when it
    /// parses back to the same span, else jiff's friendly form (`"1h 1m 1s 500ms"`), which is
    /// lossless.
    pub fn to_manifest_string(self) -> String {
        let compact = format_duration(self.0);
        if Self::parse(&compact) == Ok(self) {
            return compact;
        }
        match jiff::SignedDuration::try_from(self.0) {
            Ok(signed) => format!("{signed:#}"),
            // Beyond i64 seconds (about 292 billion years): no manifest writes that.
            Err(_) => compact,
        }
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_manifest_string())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"90s\", \"5m\" or \"1h 30m\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                HumanDuration::parse(v).map_err(E::custom)
            }
            // A bare number (`interval: 30`) is read as YAML types it, so that its message
            // says what is missing (a unit), not only that text must be quoted.
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<HumanDuration, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<HumanDuration, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<HumanDuration, E> {
                self.visit_str(&v.to_string())
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl schemars::JsonSchema for HumanDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "HumanDuration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A duration such as \"90s\", \"5m\", \"1h 30m\" or ISO 8601 \"PT5M\".",
            "pattern": "^\\s*(\\d+(\\.\\d+)?\\s*(ms|s|m|h|d|msec|sec|min|hour|hours|days?|seconds?|minutes?|milliseconds?)\\s*)+$|^P"
        })
    }
}

/// Formats a duration compactly for people: `"0s"`, `"45s"`, `"6m12s"`, `"2h05m"`, `"3d04h"`;
/// sub-second spans print as milliseconds (`"250ms"`).
pub fn format_duration(d: Duration) -> String {
    Compact(d).to_string()
}

/// A duration written the way [`format_duration`] writes it, without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compact(pub Duration);

impl std::fmt::Display for Compact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.0.as_secs();
        if secs == 0 {
            let ms = self.0.subsec_millis();
            return if ms == 0 {
                f.write_str("0s")
            } else {
                write!(f, "{ms}ms")
            };
        }
        let (days, hours, mins, s) = (
            secs / 86_400,
            (secs / 3600) % 24,
            (secs / 60) % 60,
            secs % 60,
        );
        if days > 0 {
            write!(f, "{days}d{hours:02}h")
        } else if hours > 0 {
            write!(f, "{hours}h{mins:02}m")
        } else if mins > 0 {
            if s == 0 {
                write!(f, "{mins}m")
            } else {
                write!(f, "{mins}m{s:02}s")
            }
        } else {
            write!(f, "{s}s")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_friendly_and_iso_forms() {
        assert_eq!(
            HumanDuration::parse("90s"),
            Ok(HumanDuration::from_secs(90))
        );
        assert_eq!(
            HumanDuration::parse("5m"),
            Ok(HumanDuration::from_secs(300))
        );
        assert_eq!(
            HumanDuration::parse("1h 30m"),
            Ok(HumanDuration::from_secs(5400))
        );
        assert_eq!(
            HumanDuration::parse("PT2M"),
            Ok(HumanDuration::from_secs(120))
        );
        assert_eq!(
            HumanDuration::parse("250ms"),
            Ok(HumanDuration(Duration::from_millis(250)))
        );
    }

    #[test]
    fn rejects_bare_numbers_negative_and_empty() {
        assert!(HumanDuration::parse("30").is_err());
        assert!(HumanDuration::parse("-5m").is_err());
        assert!(HumanDuration::parse("").is_err());
        assert!(HumanDuration::parse("soon").is_err());
    }

    #[test]
    fn manifest_strings_parse_back_exactly() {
        for d in [
            Duration::from_secs(300),
            Duration::from_secs(90_061),
            Duration::from_millis(1_500),
            Duration::from_nanos(1),
            Duration::from_secs(7_500),
        ] {
            let text = HumanDuration(d).to_manifest_string();
            assert_eq!(HumanDuration::parse(&text), Ok(HumanDuration(d)), "{text}");
        }
        assert_eq!(HumanDuration::from_secs(300).to_manifest_string(), "5m");
    }

    #[test]
    fn formats_for_people() {
        assert_eq!(format_duration(Duration::from_secs(372)), "6m12s");
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
        assert_eq!(format_duration(Duration::from_secs(7500)), "2h05m");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }
}
