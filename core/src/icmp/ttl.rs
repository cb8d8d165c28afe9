//! TTL / hop-limit handling (§4.4): decrementing a packet in place, and cloudflared's
//! ICMP time-exceeded reply for packets that arrive with TTL ≤ 1 (§4.5).

use core::net::IpAddr;

use super::checksum::internet_checksum;
use super::encode::{
    copy_at, take, write_ip_icmp, Message, ICMP_HEADER_LEN, IPV4_HEADER_LEN, IPV6_HEADER_LEN,
};
use super::{parse, EncodeError, IcmpPacket, IpVersion, ParseError, TtlError};

/// Largest TTL-exceeded reply to an IPv4 packet: the IPv4 minimum MTU.
pub const TTL_EXCEEDED_MAX_V4: usize = 576;
/// Largest TTL-exceeded reply to an IPv6 packet: the IPv6 minimum MTU.
pub const TTL_EXCEEDED_MAX_V6: usize = 1280;
/// TTL / hop limit of every packet cloudflared originates.
pub const DEFAULT_TTL: u8 = 255;

/// Decrements the TTL / hop limit of a received packet in place; returns the new value.
///
/// IPv4's header checksum is recomputed over the whole header (options included). Fails if the
/// bytes are not a packet [`parse`] accepts, or if the TTL is already 0.
pub fn decrement_ttl(packet: &mut [u8]) -> Result<u8, TtlError> {
    let (version, ttl, header_len) = {
        let p = parse(packet)?;
        (p.version(), p.ttl(), p.icmp_offset())
    };
    let ttl = ttl.checked_sub(1).ok_or(TtlError::Expired)?;
    // parse() proved the header is present, so these writes cannot fall short; should one
    // ever do so, the header was not all there.
    let available = packet.len();
    let written = match version {
        IpVersion::V4 => take(packet, header_len).and_then(|header| {
            copy_at(header, 8, &[ttl])?;
            copy_at(header, 10, &[0, 0])?;
            copy_at(header, 10, &internet_checksum(header).to_be_bytes())
        }),
        IpVersion::V6 => copy_at(packet, 7, &[ttl]),
    };
    written.map_err(|_| match version {
        IpVersion::V4 => ParseError::Ipv4HeaderTruncated {
            ihl_bytes: header_len,
            available,
        },
        IpVersion::V6 => ParseError::Ipv6TooShort { len: available },
    })?;
    Ok(ttl)
}

/// Writes cloudflared's TTL-exceeded reply to `original`, sent from `router`; returns the length.
///
/// IP src `router`, dst the original source, TTL 255; ICMPv4 11/0 or ICMPv6 3/0 with 4 zero
/// bytes, then the first 548 (IPv4) or 1232 (IPv6) bytes of the packet *as received*. `router`
/// must be of the original's family. At most [`TTL_EXCEEDED_MAX_V4`] / [`TTL_EXCEEDED_MAX_V6`]
/// bytes are written.
pub fn write_ttl_exceeded(
    original: &IcmpPacket<'_>,
    router: IpAddr,
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    let version = original.version();
    if IpVersion::of(router) != version {
        return Err(EncodeError::FamilyMismatch {
            expected: version,
            addr: router,
        });
    }
    let (icmp_type, max) = match version {
        IpVersion::V4 => (11, TTL_EXCEEDED_MAX_V4 - IPV4_HEADER_LEN),
        IpVersion::V6 => (3, TTL_EXCEEDED_MAX_V6 - IPV6_HEADER_LEN),
    };
    let raw = original.raw();
    let quoted = raw.get(..max - ICMP_HEADER_LEN).unwrap_or(raw);
    let msg = Message {
        icmp_type,
        code: 0,
        rest: [0; 4],
        body: quoted,
    };
    write_ip_icmp(out, router, original.src(), DEFAULT_TTL, &msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        ::hex::decode(s).unwrap()
    }

    #[test]
    fn protocol_md_v4_example() {
        let input = hex("45000020000000000101ee33c0a801010a000001080021041234000161626364");
        let p = parse(&input).unwrap();
        let mut out = [0u8; TTL_EXCEEDED_MAX_V4];
        let n = write_ttl_exceeded(&p, [172, 16, 0, 3].into(), &mut out).unwrap();
        let want = hex(concat!(
            "4500003c00000000ff014e04ac100003c0a80101",
            "0b00f4ff00000000",
            "45000020000000000101ee33c0a801010a000001080021041234000161626364"
        ));
        assert_eq!(&out[..n], &want[..]);
    }

    #[test]
    fn protocol_md_v6_example() {
        let input = hex(concat!(
            "60000000000b3a01fd5123910523f4ee0000000000000001",
            "fd5123910697f4ee000000000000000280001ff564dde31174746c"
        ));
        let p = parse(&input).unwrap();
        let mut out = [0u8; TTL_EXCEEDED_MAX_V6];
        let router: IpAddr = "fd51:2391:697:f4ee::3".parse().unwrap();
        let n = write_ttl_exceeded(&p, router, &mut out).unwrap();
        let mut want = hex(concat!(
            "60000000003b3afffd5123910697f4ee0000000000000003fd5123910523f4ee0000000000000001",
            "03002b6100000000"
        ));
        want.extend_from_slice(&input);
        assert_eq!(&out[..n], &want[..]);
    }

    #[test]
    fn router_family_must_match() {
        let input = hex("45000020000000000101ee33c0a801010a000001080021041234000161626364");
        let p = parse(&input).unwrap();
        let router: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(
            write_ttl_exceeded(&p, router, &mut [0u8; 600]),
            Err(EncodeError::FamilyMismatch {
                expected: IpVersion::V4,
                addr: router
            })
        );
    }

    #[test]
    fn quotes_trailing_bytes_as_received() {
        // cloudflared quotes the raw datagram, not the packet trimmed to its total length.
        let mut input = hex("45000020000000000101ee33c0a801010a000001080021041234000161626364");
        input.extend_from_slice(b"junk");
        let p = parse(&input).unwrap();
        assert_eq!(p.ip_packet().len(), 32);
        let mut out = [0u8; TTL_EXCEEDED_MAX_V4];
        let n = write_ttl_exceeded(&p, [1, 2, 3, 4].into(), &mut out).unwrap();
        assert_eq!(&out[28..n], &input[..]);
    }

    #[test]
    fn decrement_v4_fixes_header_checksum() {
        let mut pkt = hex("45000020000000004001b533c0a801010a000001080021041234000161626364");
        assert_eq!(decrement_ttl(&mut pkt), Ok(63));
        assert_eq!(pkt[8], 63);
        assert_eq!(internet_checksum(&pkt[..20]), 0);
    }

    #[test]
    fn decrement_v6_and_expired() {
        let mut pkt = hex(concat!(
            "60000000000b3a01fd5123910523f4ee0000000000000001",
            "fd5123910697f4ee000000000000000280001ff564dde31174746c"
        ));
        assert_eq!(decrement_ttl(&mut pkt), Ok(0));
        assert_eq!(pkt[7], 0);
        assert_eq!(decrement_ttl(&mut pkt), Err(TtlError::Expired));
        assert_eq!(
            decrement_ttl(&mut []),
            Err(TtlError::Malformed(ParseError::Empty))
        );
    }
}
