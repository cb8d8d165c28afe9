//! Which transport a tunnel connection uses (PROTOCOL.md C§2): `--protocol`, the remote
//! percentage selector, and the per-index fallback rules the supervisor applies.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

/// A tunnel transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// QUIC over UDP.
    Quic,
    /// HTTP/2 over TLS over TCP.
    Http2,
}

impl Protocol {
    /// The name cloudflared logs and reads (`quic`, `http2`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Quic => "quic",
            Self::Http2 => "http2",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `--protocol` asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolFlag {
    /// `auto`: start on the selector's choice, fall back to HTTP/2, come back to QUIC.
    Auto,
    /// `quic`, `http2` (or the retired `h2mux`, which means `http2`): that one, never another.
    Fixed(Protocol),
}

/// `--protocol` had a value cloudflared does not know.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown protocol {0}, Available protocols: 'auto' - automatically chooses the best protocol over time (the default; and also the recommended one); 'quic' - based on QUIC, relying on UDP egress to Cloudflare edge; 'http2' - using Go's HTTP2 library, relying on TCP egress to Cloudflare edge")]
pub struct UnknownProtocol(pub String);

impl FromStr for ProtocolFlag {
    type Err = UnknownProtocol;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "quic" => Ok(Self::Fixed(Protocol::Quic)),
            "http2" | "h2mux" => Ok(Self::Fixed(Protocol::Http2)),
            other => Err(UnknownProtocol(other.to_owned())),
        }
    }
}

/// Whether `--protocol auto` starts where the percentage record says, as cloudflared's
/// `NewProtocolSelector` decides: only for `auto`, only against Cloudflare's edge found by SRV
/// (the record says nothing of an edge given with `--edge`), and not when `--token` (or
/// `TUNNEL_TOKEN`) was given: cloudflared then starts on QUIC with fallback to HTTP/2 (its
/// default selector). `--token-file` is not `--token` there (`c.IsSet("token")`), nor here.
pub fn auto_follows_percentage_record(flag: ProtocolFlag, srv_edges: bool, token: bool) -> bool {
    flag == ProtocolFlag::Auto && srv_edges && !token
}

/// DNS TXT record holding the protocol percentages.
pub const PERCENTAGE_RECORD: &str = "protocol-v2.argotunnel.com";

/// How long the percentage record's lookup may take, all name servers together, before it
/// counts as failed: Go's resolver, which cloudflared's `net.LookupTXT` uses, gives a query
/// 5 s and tries twice by default (resolv.conf `timeout:5 attempts:2`). Core gives up on an
/// answer later than this; both drivers bound their lookup by it too (at startup as well).
pub const TXT_LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a reading of the percentage record holds before `auto` reads it again
/// (cloudflared's `ResolveTTL`).
pub const RESOLVE_TTL: Duration = Duration::from_secs(3600);

#[derive(Deserialize)]
struct Percent {
    #[serde(default)]
    protocol: String,
    #[serde(default)]
    percentage: i32,
}

/// The protocol `auto` starts on, as cloudflared's remote selector picks it: the first of
/// `[quic, http2]` whose percentage in the TXT record is above the account's threshold
/// (`fnv1a32(account_tag) % 100`), else QUIC. No record, or one that does not read, gives
/// HTTP/2, as cloudflared's failed lookup does (C§2.3).
pub fn remote_selection(txt: Option<&str>, account_tag: &str) -> Protocol {
    txt.and_then(|txt| selection(txt, account_tag))
        .unwrap_or(Protocol::Http2)
}

/// What the percentage record `txt` selects for `account_tag`; none when it does not read (a
/// refresh then keeps the protocol it had, as cloudflared's does).
pub fn selection(txt: &str, account_tag: &str) -> Option<Protocol> {
    let percents = serde_json::from_str::<Vec<Percent>>(txt).ok()?;
    let threshold = threshold(account_tag);
    let percentage = |p: Protocol| {
        percents
            .iter()
            .find(|e| e.protocol.eq_ignore_ascii_case(p.as_str()))
            .map_or(0, |e| e.percentage)
    };
    Some(
        [Protocol::Quic, Protocol::Http2]
            .into_iter()
            .find(|&p| percentage(p) > threshold)
            .unwrap_or(Protocol::Quic),
    )
}

/// cloudflared's `switchThreshold`: 32-bit FNV-1a of the account tag, modulo 100.
fn threshold(account_tag: &str) -> i32 {
    // The fnv crate has only the 64-bit variant; 32-bit FNV-1a is these two constants.
    let hash = account_tag.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    (hash % 100) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_values_are_cloudflareds() {
        assert_eq!("auto".parse(), Ok(ProtocolFlag::Auto));
        assert_eq!("quic".parse(), Ok(ProtocolFlag::Fixed(Protocol::Quic)));
        assert_eq!("http2".parse(), Ok(ProtocolFlag::Fixed(Protocol::Http2)));
        assert_eq!("h2mux".parse(), Ok(ProtocolFlag::Fixed(Protocol::Http2)));
        assert!("QUIC".parse::<ProtocolFlag>().is_err());
        assert!("".parse::<ProtocolFlag>().is_err());
    }

    #[test]
    fn threshold_is_fnv1a32_mod_100() {
        // FNV-1a 32 of "" is the offset basis 2166136261; of "a" it is 0xe40c292c.
        assert_eq!(threshold(""), (2_166_136_261u32 % 100) as i32);
        assert_eq!(threshold("a"), (0xe40c_292c_u32 % 100) as i32);
    }

    #[test]
    fn remote_selection_follows_the_percentages() {
        let tag = "a"; // threshold 0xe40c292c % 100 = 20
        let t = threshold(tag);
        assert_eq!(t, 20);
        let rec = |q: i32, h: i32| {
            format!(
                r#"[{{"protocol":"quic","percentage":{q}}},{{"protocol":"HTTP2","percentage":{h}}}]"#
            )
        };
        assert_eq!(remote_selection(Some(&rec(100, 100)), tag), Protocol::Quic);
        assert_eq!(remote_selection(Some(&rec(20, 100)), tag), Protocol::Http2);
        assert_eq!(remote_selection(Some(&rec(21, 0)), tag), Protocol::Quic);
        // Neither above the threshold: the first of the pool.
        assert_eq!(remote_selection(Some(&rec(0, 0)), tag), Protocol::Quic);
        assert_eq!(remote_selection(Some("[]"), tag), Protocol::Quic);
        // No record, or garbage: HTTP/2 (cloudflared's protocol 0 on a failed fetch).
        assert_eq!(remote_selection(None, tag), Protocol::Http2);
        assert_eq!(remote_selection(Some("{"), tag), Protocol::Http2);
    }
}
