//! Echo requests and replies: encoding whole IP packets as cloudflared does, and rewriting a
//! received echo in place (ping sockets hand out their own echo identifiers).

use core::net::IpAddr;

use super::checksum::{icmpv6_checksum, internet_checksum};
use super::encode::{copy_at, take, write_ip_icmp, Message};
use super::{parse, EncodeError, IcmpMessage, IpVersion, RewriteError};

/// Whether an echo asks or answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EchoKind {
    /// Echo request: ICMPv4 type 8, ICMPv6 type 128.
    Request,
    /// Echo reply: ICMPv4 type 0, ICMPv6 type 129.
    Reply,
}

impl EchoKind {
    /// The ICMP type number in `version`'s ICMP.
    pub fn icmp_type(self, version: IpVersion) -> u8 {
        match (version, self) {
            (IpVersion::V4, Self::Request) => 8,
            (IpVersion::V4, Self::Reply) => 0,
            (IpVersion::V6, Self::Request) => 128,
            (IpVersion::V6, Self::Reply) => 129,
        }
    }
}

/// A whole IP + ICMP echo packet to encode with [`write_echo`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Echo<'a> {
    /// Source address; its family picks IPv4 or IPv6 (as `Src.Is4()` does in cloudflared).
    pub src: IpAddr,
    /// Destination address, same family as `src`.
    pub dst: IpAddr,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    /// Request or reply.
    pub kind: EchoKind,
    /// Echo identifier.
    pub id: u16,
    /// Echo sequence number.
    pub seq: u16,
    /// Echo data.
    pub data: &'a [u8],
}

/// Encodes `echo` as cloudflared's encoder does (§4.3) into `out`; returns the length written.
///
/// IPv4: no options, TOS/ID/flags 0; IPv6: traffic class and flow label 0; the IPv4 header,
/// ICMPv4 and ICMPv6 (pseudo-header) checksums are computed.
pub fn write_echo(echo: &Echo<'_>, out: &mut [u8]) -> Result<usize, EncodeError> {
    let version = IpVersion::of(echo.src);
    let [i0, i1] = echo.id.to_be_bytes();
    let [s0, s1] = echo.seq.to_be_bytes();
    let msg = Message {
        icmp_type: echo.kind.icmp_type(version),
        code: 0,
        rest: [i0, i1, s0, s1],
        body: echo.data,
    };
    write_ip_icmp(out, echo.src, echo.dst, echo.ttl, &msg)
}

/// Rewrites, in place, a received echo's identifier, addresses and TTL, recomputing checksums.
///
/// Returns the length of the IP packet (`packet` may hold trailing bytes beyond it). Every other
/// byte is kept, so a received header with options or a non-zero ID stays that way; use
/// [`write_echo`] for output identical to cloudflared's re-encoding.
pub fn rewrite_echo(
    packet: &mut [u8],
    id: u16,
    src: IpAddr,
    dst: IpAddr,
    ttl: u8,
) -> Result<usize, RewriteError> {
    let (version, ip_len, icmp_offset, icmp_len) = {
        let p = parse(packet)?;
        match p.message() {
            IcmpMessage::EchoRequest { .. } | IcmpMessage::EchoReply { .. } => {}
            _ => {
                return Err(RewriteError::NotEcho {
                    icmp_type: p.icmp_type(),
                })
            }
        }
        (
            p.version(),
            p.ip_packet().len(),
            p.icmp_offset(),
            p.icmp_bytes().len(),
        )
    };
    for addr in [src, dst] {
        if IpVersion::of(addr) != version {
            return Err(EncodeError::FamilyMismatch {
                expected: version,
                addr,
            }
            .into());
        }
    }
    let ip = take(packet, ip_len)?;
    let (header, rest) =
        ip.split_at_mut_checked(icmp_offset)
            .ok_or(EncodeError::BufferTooSmall {
                needed: icmp_offset,
                available: ip_len,
            })?;
    let icmp = take(rest, icmp_len)?;
    copy_at(icmp, 4, &id.to_be_bytes())?;
    copy_at(icmp, 2, &[0, 0])?;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            copy_at(header, 8, &[ttl])?;
            copy_at(header, 10, &[0, 0])?;
            copy_at(header, 12, &s.octets())?;
            copy_at(header, 16, &d.octets())?;
            // The whole header, options included, is covered by the IPv4 checksum.
            copy_at(header, 10, &internet_checksum(header).to_be_bytes())?;
            copy_at(icmp, 2, &internet_checksum(icmp).to_be_bytes())?;
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            copy_at(header, 7, &[ttl])?;
            copy_at(header, 8, &s.octets())?;
            copy_at(header, 24, &d.octets())?;
            copy_at(icmp, 2, &icmpv6_checksum(s, d, icmp).to_be_bytes())?;
        }
        // Families were checked against the packet above.
        (_, addr) => {
            return Err(EncodeError::FamilyMismatch {
                expected: version,
                addr,
            }
            .into())
        }
    }
    Ok(ip_len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn icmpv6_checksum_matches_cloudflared_test() {
        let echo = Echo {
            src: "2606:4700:110:89c1:c63a:861:e08c:b049".parse().unwrap(),
            dst: "fde8:b693:d420:109b::2".parse().unwrap(),
            ttl: 64,
            kind: EchoKind::Request,
            id: 0x20a7,
            seq: 8,
            data: &[0x63, 0x2c, 0x49, 0xd6, 0x00, 0x0d, 0xc1, 0xda],
        };
        let mut out = [0u8; 64];
        let n = write_echo(&echo, &mut out).unwrap();
        assert_eq!(n, 40 + 16);
        let p = parse(&out[..n]).unwrap();
        assert_eq!(p.checksum(), 0xff96);
        assert_eq!(
            p.message(),
            IcmpMessage::EchoRequest {
                id: 0x20a7,
                seq: 8,
                data: echo.data
            }
        );
    }

    #[test]
    fn buffer_too_small_and_family_mismatch() {
        let echo = Echo {
            src: Ipv4Addr::new(10, 0, 0, 1).into(),
            dst: Ipv4Addr::new(10, 0, 0, 2).into(),
            ttl: 64,
            kind: EchoKind::Reply,
            id: 1,
            seq: 2,
            data: b"abc",
        };
        let mut out = [0u8; 30];
        assert_eq!(
            write_echo(&echo, &mut out),
            Err(EncodeError::BufferTooSmall {
                needed: 31,
                available: 30
            })
        );
        let mixed = Echo {
            dst: Ipv6Addr::LOCALHOST.into(),
            ..echo
        };
        assert!(matches!(
            write_echo(&mixed, &mut [0u8; 64]),
            Err(EncodeError::FamilyMismatch {
                expected: IpVersion::V4,
                ..
            })
        ));
    }

    #[test]
    fn too_long_for_length_field() {
        let data = vec![0u8; 65535 - 8];
        let echo = Echo {
            src: Ipv4Addr::LOCALHOST.into(),
            dst: Ipv4Addr::LOCALHOST.into(),
            ttl: 1,
            kind: EchoKind::Request,
            id: 0,
            seq: 0,
            data: &data[..65535 - 28 + 1],
        };
        let mut out = vec![0u8; 70000];
        assert_eq!(
            write_echo(&echo, &mut out),
            Err(EncodeError::TooLong {
                len: 65536,
                max: 65535
            })
        );
        let v6 = Echo {
            src: Ipv6Addr::LOCALHOST.into(),
            dst: Ipv6Addr::LOCALHOST.into(),
            data: &data,
            ..echo
        };
        assert_eq!(write_echo(&v6, &mut out), Ok(40 + 65535));
    }

    #[test]
    fn rewrite_changes_id_addresses_and_checksums() {
        for (src, dst, new_src, new_dst) in [
            (
                IpAddr::from([192, 168, 1, 1]),
                IpAddr::from([10, 0, 0, 1]),
                IpAddr::from([1, 1, 1, 1]),
                IpAddr::from([172, 16, 0, 9]),
            ),
            (
                "fd00::1".parse().unwrap(),
                "fd00::2".parse().unwrap(),
                "2606:4700::1111".parse().unwrap(),
                "fd00::9".parse().unwrap(),
            ),
        ] {
            let echo = Echo {
                src,
                dst,
                ttl: 3,
                kind: EchoKind::Reply,
                id: 0x4242,
                seq: 7,
                data: b"payload!",
            };
            let mut buf = [0u8; 128];
            let n = write_echo(&echo, &mut buf).unwrap();
            let m = rewrite_echo(&mut buf, 0x1234, new_src, new_dst, 255).unwrap();
            assert_eq!(m, n);
            let mut want = [0u8; 128];
            let expected = Echo {
                src: new_src,
                dst: new_dst,
                ttl: 255,
                id: 0x1234,
                ..echo
            };
            write_echo(&expected, &mut want).unwrap();
            assert_eq!(&buf[..n], &want[..n]);
            assert!(matches!(
                rewrite_echo(&mut buf, 1, new_dst, src_of_other_family(src), 1),
                Err(RewriteError::Encode(EncodeError::FamilyMismatch { .. }))
            ));
        }
    }

    fn src_of_other_family(a: IpAddr) -> IpAddr {
        match a {
            IpAddr::V4(_) => Ipv6Addr::LOCALHOST.into(),
            IpAddr::V6(_) => Ipv4Addr::LOCALHOST.into(),
        }
    }

    #[test]
    fn rewrite_refuses_non_echo() {
        // A TTL-exceeded reply is ICMP but not an echo.
        let input = hex("45000020000000000101ee33c0a801010a000001080021041234000161626364");
        let original = parse(&input).unwrap();
        let mut out = [0u8; 128];
        let n =
            crate::icmp::write_ttl_exceeded(&original, [172, 16, 0, 3].into(), &mut out).unwrap();
        assert_eq!(
            rewrite_echo(
                &mut out[..n],
                1,
                [1, 1, 1, 1].into(),
                [2, 2, 2, 2].into(),
                9
            ),
            Err(RewriteError::NotEcho { icmp_type: 11 })
        );
    }

    fn hex(s: &str) -> Vec<u8> {
        ::hex::decode(s).unwrap()
    }
}
