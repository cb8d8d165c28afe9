//! The one packet shape cloudflared's encoder emits (gopacket with `FixLengths` and
//! `ComputeChecksums`, `packet/packet.go`): a minimal IP header and an ICMP message.

use core::net::IpAddr;

use super::checksum::{icmpv6_checksum, internet_checksum};
use super::{EncodeError, IpVersion, PROTO_ICMPV4, PROTO_ICMPV6};

/// IPv4 header length without options.
pub(crate) const IPV4_HEADER_LEN: usize = 20;
/// IPv6 fixed header length.
pub(crate) const IPV6_HEADER_LEN: usize = 40;
/// ICMP type, code, checksum and the 4 type-specific bytes.
pub(crate) const ICMP_HEADER_LEN: usize = 8;

/// An ICMP message to encode: header fields and the body after the first 8 bytes.
pub(crate) struct Message<'b> {
    /// ICMP type.
    pub icmp_type: u8,
    /// ICMP code.
    pub code: u8,
    /// Bytes 4..8 of the ICMP header (echo id and seq, or unused).
    pub rest: [u8; 4],
    /// Everything after the 8-byte header.
    pub body: &'b [u8],
}

/// Writes `src → dst` IP header (TTL `ttl`) + `msg` with all lengths and checksums filled in.
///
/// IPv4: `45 00 len 0000 0000 ttl 01 csum src dst`; IPv6: `60 00 00 00 len 3a hop src dst`,
/// ICMPv6 checksummed over the pseudo-header. The family is `src`'s; `dst` must match.
pub(crate) fn write_ip_icmp(
    out: &mut [u8],
    src: IpAddr,
    dst: IpAddr,
    ttl: u8,
    msg: &Message<'_>,
) -> Result<usize, EncodeError> {
    let icmp_len = ICMP_HEADER_LEN + msg.body.len();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = IPV4_HEADER_LEN + icmp_len;
            let total16 = length_field(total)?;
            let out = take(out, total)?;
            let (ip, icmp) = split(out, IPV4_HEADER_LEN)?;
            let [l0, l1] = total16.to_be_bytes();
            // Checksum field zero while summing; ID, flags and TOS are always 0 in cloudflared.
            copy_at(
                ip,
                0,
                &[0x45, 0, l0, l1, 0, 0, 0, 0, ttl, PROTO_ICMPV4, 0, 0],
            )?;
            copy_at(ip, 12, &s.octets())?;
            copy_at(ip, 16, &d.octets())?;
            copy_at(ip, 10, &internet_checksum(ip).to_be_bytes())?;
            write_icmp(icmp, msg)?;
            copy_at(icmp, 2, &internet_checksum(icmp).to_be_bytes())?;
            Ok(total)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let payload16 = length_field(icmp_len)?;
            let total = IPV6_HEADER_LEN + icmp_len;
            let out = take(out, total)?;
            let (ip, icmp) = split(out, IPV6_HEADER_LEN)?;
            let [l0, l1] = payload16.to_be_bytes();
            copy_at(ip, 0, &[0x60, 0, 0, 0, l0, l1, PROTO_ICMPV6, ttl])?;
            copy_at(ip, 8, &s.octets())?;
            copy_at(ip, 24, &d.octets())?;
            write_icmp(icmp, msg)?;
            copy_at(icmp, 2, &icmpv6_checksum(s, d, icmp).to_be_bytes())?;
            Ok(total)
        }
        (IpAddr::V4(_), addr) => Err(EncodeError::FamilyMismatch {
            expected: IpVersion::V4,
            addr,
        }),
        (IpAddr::V6(_), addr) => Err(EncodeError::FamilyMismatch {
            expected: IpVersion::V6,
            addr,
        }),
    }
}

/// ICMP header with a zero checksum, then the body.
fn write_icmp(icmp: &mut [u8], msg: &Message<'_>) -> Result<(), EncodeError> {
    let [r0, r1, r2, r3] = msg.rest;
    copy_at(icmp, 0, &[msg.icmp_type, msg.code, 0, 0, r0, r1, r2, r3])?;
    copy_at(icmp, ICMP_HEADER_LEN, msg.body)
}

/// The value of a 16-bit IP length field, or [`EncodeError::TooLong`].
fn length_field(len: usize) -> Result<u16, EncodeError> {
    u16::try_from(len).map_err(|_| EncodeError::TooLong {
        len,
        max: usize::from(u16::MAX),
    })
}

/// The first `needed` bytes of `out`, or [`EncodeError::BufferTooSmall`].
pub(crate) fn take(out: &mut [u8], needed: usize) -> Result<&mut [u8], EncodeError> {
    let available = out.len();
    out.get_mut(..needed)
        .ok_or(EncodeError::BufferTooSmall { needed, available })
}

/// `out` split at `at`, or [`EncodeError::BufferTooSmall`].
fn split(out: &mut [u8], at: usize) -> Result<(&mut [u8], &mut [u8]), EncodeError> {
    let available = out.len();
    out.split_at_mut_checked(at)
        .ok_or(EncodeError::BufferTooSmall {
            needed: at,
            available,
        })
}

/// Copies `src` into `out` at `at`, or reports the length that would have been needed.
pub(crate) fn copy_at(out: &mut [u8], at: usize, src: &[u8]) -> Result<(), EncodeError> {
    let available = out.len();
    let needed = at.saturating_add(src.len());
    out.get_mut(at..needed)
        .ok_or(EncodeError::BufferTooSmall { needed, available })?
        .copy_from_slice(src);
    Ok(())
}
