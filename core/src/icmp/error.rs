//! Errors of the ICMP codec, split by whose fault they are: [`ParseError`] when the peer's packet
//! is malformed (or not something cloudflared would decode), [`EncodeError`] when the caller
//! asked for something that cannot be written.

use core::net::IpAddr;

use thiserror::Error;

use super::IpVersion;

/// The received bytes are not an IP packet carrying ICMP that cloudflared's decoder accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ParseError {
    /// Zero bytes.
    #[error("packet length is 0")]
    Empty,
    /// High nibble of the first byte is neither 4 nor 6.
    #[error("unknown ip version {version}")]
    UnknownVersion {
        /// The version nibble found.
        version: u8,
    },
    /// Fewer bytes than the fixed IPv4 header.
    #[error("IPv4 packet of {len} bytes is shorter than the 20-byte header")]
    Ipv4TooShort {
        /// Bytes received.
        len: usize,
    },
    /// Total-length field (after the 0 → received length substitution) below 20.
    #[error("IPv4 total length {total} is less than 20")]
    Ipv4TotalLengthTooSmall {
        /// Effective total length.
        total: usize,
    },
    /// IHL below 5 words.
    #[error("IPv4 header length {ihl} words is less than 5")]
    Ipv4IhlTooSmall {
        /// The IHL field.
        ihl: u8,
    },
    /// Header (IHL × 4) longer than the total length.
    #[error("IPv4 total length {total} shorter than header {ihl_bytes}")]
    Ipv4HeaderExceedsTotalLength {
        /// IHL × 4.
        ihl_bytes: usize,
        /// Effective total length.
        total: usize,
    },
    /// Truncated packet that does not even hold its whole header (options included).
    #[error("IPv4 header of {ihl_bytes} bytes but only {available} bytes received")]
    Ipv4HeaderTruncated {
        /// IHL × 4.
        ihl_bytes: usize,
        /// Bytes received.
        available: usize,
    },
    /// An IPv4 option runs past the header or has an impossible length.
    #[error("malformed IPv4 option type {option_type} at header offset {offset}")]
    Ipv4BadOption {
        /// Option type byte.
        option_type: u8,
        /// Offset of the option within the IPv4 header.
        offset: usize,
    },
    /// MF set or a non-zero fragment offset: cloudflared never reassembles.
    #[error("IPv4 fragment (more fragments {more_fragments}, offset {offset}) is not supported")]
    Ipv4Fragment {
        /// The MF flag.
        more_fragments: bool,
        /// Fragment offset in 8-byte units.
        offset: u16,
    },
    /// Fewer bytes than the fixed IPv6 header.
    #[error("IPv6 packet of {len} bytes is shorter than the 40-byte header")]
    Ipv6TooShort {
        /// Bytes received.
        len: usize,
    },
    /// Payload length 0 (only legal for jumbograms, which are not supported).
    #[error("IPv6 payload length is 0")]
    Ipv6ZeroPayloadLength,
    /// The Hop-by-Hop header does not fit in the received bytes.
    #[error("IPv6 Hop-by-Hop header needs {needed} bytes, {available} received")]
    Ipv6HopByHopTruncated {
        /// Header length it declares (at least 2 to read the length).
        needed: usize,
        /// Bytes after the fixed header.
        available: usize,
    },
    /// A Hop-by-Hop option runs past the received bytes.
    #[error("malformed IPv6 Hop-by-Hop option at offset {offset}")]
    Ipv6BadHopByHopOption {
        /// Offset of the option within the Hop-by-Hop header.
        offset: usize,
    },
    /// A Hop-by-Hop jumbo payload option: never needed over a tunnel, so rejected.
    #[error("IPv6 jumbograms are not supported")]
    Ipv6Jumbogram,
    /// An extension header other than Hop-by-Hop sits before the ICMPv6 message.
    #[error("IPv6 extension header {next_header} is not supported")]
    Ipv6ExtensionHeader {
        /// Its next-header value.
        next_header: u8,
    },
    /// ICMPv6 inside IPv4, or ICMPv4 inside IPv6.
    #[error("{version} packet carries protocol {protocol}, the other family's ICMP")]
    ProtocolMismatch {
        /// The IP version of the packet.
        version: IpVersion,
        /// The protocol / next header found.
        protocol: u8,
    },
    /// The IP payload is not ICMP at all.
    #[error("{version} packet carries protocol {protocol}, not ICMP")]
    NotIcmp {
        /// The IP version of the packet.
        version: IpVersion,
        /// The protocol / next header found.
        protocol: u8,
    },
    /// Fewer ICMP bytes than the family's minimum header (8 for ICMPv4, 4 for ICMPv6).
    #[error("{version} ICMP message of {len} bytes is shorter than {min}")]
    IcmpTooShort {
        /// The IP version of the packet.
        version: IpVersion,
        /// ICMP bytes present.
        len: usize,
        /// The minimum.
        min: usize,
    },
    /// An ICMP type with a structured body (echo, errors) whose body is under 4 bytes.
    #[error("ICMP type {icmp_type} body of {len} bytes is shorter than 4")]
    IcmpBodyTooShort {
        /// The ICMP type.
        icmp_type: u8,
        /// Body bytes present (after type, code, checksum).
        len: usize,
    },
}

/// The caller asked for an encoding that cannot be produced (never the peer's fault).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum EncodeError {
    /// The output buffer is shorter than the encoding.
    #[error("output buffer of {available} bytes is too small, {needed} needed")]
    BufferTooSmall {
        /// Bytes the encoding needs.
        needed: usize,
        /// Bytes the buffer has.
        available: usize,
    },
    /// An address is not of the IP family the packet is encoded in.
    #[error("address {addr} is not an {expected} address")]
    FamilyMismatch {
        /// The family required.
        expected: IpVersion,
        /// The offending address.
        addr: IpAddr,
    },
    /// The packet would not fit the IP length field.
    #[error("{len} bytes exceed the {max}-byte IP length limit")]
    TooLong {
        /// Length the field would need to hold.
        len: usize,
        /// Largest value it can hold.
        max: usize,
    },
}

/// Why [`decrement_ttl`](super::decrement_ttl) left the packet alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TtlError {
    /// The bytes are not a packet [`parse`](super::parse) accepts.
    #[error(transparent)]
    Malformed(#[from] ParseError),
    /// The TTL / hop limit is already 0.
    #[error("TTL is already 0")]
    Expired,
}

/// Why [`rewrite_echo`](super::rewrite_echo) left the packet alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RewriteError {
    /// The bytes are not a packet [`parse`](super::parse) accepts.
    #[error(transparent)]
    Malformed(#[from] ParseError),
    /// The packet is ICMP but not an echo request or reply.
    #[error("ICMP type {icmp_type} is not an echo request or reply")]
    NotEcho {
        /// The ICMP type found.
        icmp_type: u8,
    },
    /// The new addresses do not suit the packet (caller error).
    #[error(transparent)]
    Encode(#[from] EncodeError),
}
