//! Durations as cloudflared's configuration writes them: Go duration strings (`"30s"`,
//! `"1m30s"`, `"500ms"`) in YAML and JSON, or a plain number of seconds in remote-config JSON
//! (cloudflared's `CustomDuration`).

use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A configuration duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

/// Parses a Go-style duration with humantime (which also reads `1m30s` and `500ms`).
pub fn parse(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    humantime::parse_duration(s).ok()
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a duration such as \"30s\", or seconds")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Dur, E> {
                parse(s)
                    .map(Dur)
                    .ok_or_else(|| E::custom(format!("invalid duration {s:?}")))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Dur, E> {
                Ok(Dur(Duration::from_secs(n)))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Dur, E> {
                u64::try_from(n)
                    .map(|n| Dur(Duration::from_secs(n)))
                    .map_err(|_| E::custom("negative duration"))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Dur, E> {
                Duration::try_from_secs_f64(n)
                    .map(Dur)
                    .map_err(|_| E::custom("invalid duration"))
            }
        }
        d.deserialize_any(V)
    }
}
