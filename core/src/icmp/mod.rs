//! IP/ICMP packets carried in datagrams (v3 type `0x02`, v2 type `0x01`): decoding, TTL
//! handling, TTL-exceeded replies and echo encoding, byte-compatible with cloudflared 2026.8.2
//! (PROTOCOL.md §4).
//!
//! Sans-IO and allocation-free: [`parse`] borrows the received bytes as an [`IcmpPacket`];
//! encoders write into a caller buffer and return the length written.
//!
//! | operation | cloudflared behaviour reproduced |
//! |---|---|
//! | [`parse`] | gopacket + `x/net/icmp` acceptance rules; checksums exposed, never verified |
//! | [`decrement_ttl`] | `TTL--` (here in place, IPv4 header checksum recomputed) |
//! | [`write_ttl_exceeded`] | `NewICMPTTLExceedPacket`: TTL 255, quote of the raw packet up to 576 / 1280 bytes |
//! | [`write_echo`] | gopacket serialisation with `FixLengths` + `ComputeChecksums` |
//! | [`rewrite_echo`] | reply id/address rewrite (in place here; cloudflared re-encodes) |
//! | [`IcmpRouter`] | the ICMP proxy: funnels (ping sockets) per (src, dst, echo id), idle expiry |
//!
//! Where cloudflared would mis-slice (jumbograms), a typed [`ParseError`] is returned instead.
//! Policy stays with the caller: cloudflared answers TTL ≤ 1 with time exceeded even when the
//! packet is itself an ICMP error (PROTOCOL.md §5 row 24), and [`write_ttl_exceeded`] does not
//! second-guess that; nor is the decremented TTL ever applied to the forwarded echo (row 25).

mod checksum;
mod echo;
mod encode;
mod error;
mod packet;
mod router;
mod ttl;

pub use checksum::{icmpv6_checksum, internet_checksum};
pub use echo::{rewrite_echo, write_echo, Echo, EchoKind};
pub use error::{EncodeError, ParseError, RewriteError, TtlError};
pub use packet::{parse, IcmpMessage, IcmpPacket, IpVersion};
pub use router::{
    FunnelId, IcmpRouter, RouteError, RouteErrorKind, RouterAction, RouterConfig, Verdict,
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_FUNNELS,
};
pub use ttl::{
    decrement_ttl, write_ttl_exceeded, DEFAULT_TTL, TTL_EXCEEDED_MAX_V4, TTL_EXCEEDED_MAX_V6,
};

/// IPv4 protocol number of ICMPv4.
pub const PROTO_ICMPV4: u8 = 1;
/// IPv6 next-header value of ICMPv6.
pub const PROTO_ICMPV6: u8 = 58;

#[cfg(test)]
mod tests;
