//! Round trips and never-panic properties for the IP/ICMP codec.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use burrow_core::icmp::{
    self, icmpv6_checksum, internet_checksum, Echo, EchoKind, IcmpMessage, IcmpPacket, IpVersion,
    TtlError, TTL_EXCEEDED_MAX_V4, TTL_EXCEEDED_MAX_V6,
};
use proptest::prelude::*;

const BUF: usize = 2048;

fn payload(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..=max)
}

fn kind() -> impl Strategy<Value = EchoKind> {
    prop_oneof![Just(EchoKind::Request), Just(EchoKind::Reply)]
}

/// A same-family (src, dst) pair, either family.
fn addr_pair() -> impl Strategy<Value = (IpAddr, IpAddr)> {
    prop_oneof![
        (any::<Ipv4Addr>(), any::<Ipv4Addr>()).prop_map(|(s, d)| (s.into(), d.into())),
        (any::<Ipv6Addr>(), any::<Ipv6Addr>()).prop_map(|(s, d)| (s.into(), d.into())),
    ]
}

/// An address of `version`'s family.
fn addr_of(version: IpVersion, v4: Ipv4Addr, v6: Ipv6Addr) -> IpAddr {
    match version {
        IpVersion::V4 => v4.into(),
        IpVersion::V6 => v6.into(),
    }
}

/// Encodes an echo into a fresh buffer and returns the packet bytes.
fn encoded(echo: &Echo<'_>) -> Vec<u8> {
    let mut out = vec![0u8; BUF];
    let n = icmp::write_echo(echo, &mut out).expect("echo fits");
    out.truncate(n);
    out
}

/// Whether the ICMP checksum of a parsed packet verifies.
fn icmp_checksum_ok(p: &IcmpPacket<'_>) -> bool {
    match (p.src(), p.dst()) {
        (IpAddr::V6(s), IpAddr::V6(d)) => icmpv6_checksum(s, d, p.icmp_bytes()) == 0,
        _ => internet_checksum(p.icmp_bytes()) == 0,
    }
}

/// Whatever `parse` accepts, the other operations must survive too (and be consistent).
fn exercise(bytes: &[u8]) {
    let Ok(p) = icmp::parse(bytes) else {
        let mut copy = bytes.to_vec();
        assert!(icmp::decrement_ttl(&mut copy).is_err());
        return;
    };
    assert!(p.icmp_bytes().len() >= 4);
    assert!(p.ip_packet().len() <= bytes.len());
    for router in [
        IpAddr::from(Ipv4Addr::new(172, 16, 0, 1)),
        IpAddr::from(Ipv6Addr::LOCALHOST),
    ] {
        let mut out = [0u8; TTL_EXCEEDED_MAX_V6];
        match icmp::write_ttl_exceeded(&p, router, &mut out) {
            Ok(n) => {
                let reply = icmp::parse(&out[..n]).expect("reply parses");
                let IcmpMessage::TimeExceeded { original, .. } = reply.message() else {
                    panic!("reply is not time exceeded");
                };
                assert!(bytes.starts_with(original));
            }
            Err(_) => assert_ne!(IpVersion::of(router), p.version()),
        }
    }
    let mut copy = bytes.to_vec();
    match icmp::decrement_ttl(&mut copy) {
        Ok(ttl) => assert_eq!(icmp::parse(&copy).map(|q| q.ttl()), Ok(ttl)),
        Err(e) => assert_eq!((e, p.ttl()), (TtlError::Expired, 0)),
    }
    let mut copy = bytes.to_vec();
    let (s, d) = (p.dst(), p.src());
    if icmp::rewrite_echo(&mut copy, 7, s, d, 9).is_ok() {
        let q = icmp::parse(&copy).expect("rewritten packet parses");
        assert_eq!((q.src(), q.dst(), q.ttl()), (s, d, 9));
        assert!(icmp_checksum_ok(&q));
    }
}

/// Valid echo packets (optionally with trailing bytes) to mutate.
fn valid_packet() -> impl Strategy<Value = Vec<u8>> {
    (
        addr_pair(),
        any::<u8>(),
        kind(),
        any::<u16>(),
        any::<u16>(),
        payload(64),
        payload(8),
    )
        .prop_map(|((src, dst), ttl, kind, id, seq, data, trailer)| {
            let mut p = encoded(&Echo {
                src,
                dst,
                ttl,
                kind,
                id,
                seq,
                data: &data,
            });
            p.extend_from_slice(&trailer);
            p
        })
}

proptest! {
    #[test]
    fn echo_round_trips(
        (src, dst) in addr_pair(), ttl in any::<u8>(), kind in kind(),
        id in any::<u16>(), seq in any::<u16>(), data in payload(1400),
    ) {
        let echo = Echo { src, dst, ttl, kind, id, seq, data: &data };
        let bytes = encoded(&echo);
        let p = icmp::parse(&bytes).unwrap();
        prop_assert_eq!(p.version(), IpVersion::of(src));
        prop_assert_eq!((p.src(), p.dst(), p.ttl(), p.code()), (src, dst, ttl, 0));
        prop_assert_eq!(p.icmp_type(), kind.icmp_type(p.version()));
        let expected = match kind {
            EchoKind::Request => IcmpMessage::EchoRequest { id, seq, data: &data },
            EchoKind::Reply => IcmpMessage::EchoReply { id, seq, data: &data },
        };
        prop_assert_eq!(p.message(), expected);
        prop_assert_eq!(p.ip_packet(), &bytes[..]);
        prop_assert!(icmp_checksum_ok(&p));
        if p.version() == IpVersion::V4 {
            prop_assert_eq!(internet_checksum(&bytes[..20]), 0);
            prop_assert_eq!(p.protocol(), 1);
        } else {
            prop_assert_eq!(p.protocol(), 58);
        }
    }

    #[test]
    fn decrement_ttl_lowers_by_one(
        (src, dst) in addr_pair(), ttl in any::<u8>(), nops in 0usize..=10,
        data in payload(256),
    ) {
        let mut bytes = encoded(&Echo {
            src, dst, ttl, kind: EchoKind::Request, id: 1, seq: 2, data: &data,
        });
        if src.is_ipv4() && nops > 0 {
            // Pad the header with NOP options to exercise checksums over options.
            let words = nops.div_ceil(4);
            bytes.splice(20..20, std::iter::repeat_n(1u8, words * 4));
            bytes[0] = 0x45 + words as u8;
            let total = u16::try_from(bytes.len()).unwrap();
            bytes[2..4].copy_from_slice(&total.to_be_bytes());
        }
        let result = icmp::decrement_ttl(&mut bytes);
        if ttl == 0 {
            prop_assert_eq!(result, Err(TtlError::Expired));
        } else {
            prop_assert_eq!(result, Ok(ttl - 1));
            let p = icmp::parse(&bytes).unwrap();
            prop_assert_eq!(p.ttl(), ttl - 1);
            if p.version() == IpVersion::V4 {
                prop_assert_eq!(internet_checksum(&bytes[..p.icmp_offset()]), 0);
            }
            prop_assert!(icmp_checksum_ok(&p));
        }
    }

    #[test]
    fn ttl_exceeded_is_well_formed(
        original in valid_packet(), data in payload(1400),
        v4 in any::<Ipv4Addr>(), v6 in any::<Ipv6Addr>(), big in any::<bool>(),
    ) {
        // Sometimes a long packet, so the quote gets cut at 548 / 1232 bytes.
        let mut original = original;
        if big {
            let p = icmp::parse(&original).unwrap();
            original = encoded(&Echo {
                src: p.src(), dst: p.dst(), ttl: 1, kind: EchoKind::Request,
                id: 3, seq: 4, data: &data,
            });
        }
        let p = icmp::parse(&original).unwrap();
        let router = addr_of(p.version(), v4, v6);
        let mut out = [0u8; TTL_EXCEEDED_MAX_V6];
        let n = icmp::write_ttl_exceeded(&p, router, &mut out).unwrap();
        let reply = icmp::parse(&out[..n]).unwrap();
        let (ty, max) = match p.version() {
            IpVersion::V4 => (11, TTL_EXCEEDED_MAX_V4),
            IpVersion::V6 => (3, TTL_EXCEEDED_MAX_V6),
        };
        prop_assert!(n <= max);
        prop_assert_eq!((reply.icmp_type(), reply.code()), (ty, 0));
        prop_assert_eq!((reply.src(), reply.dst(), reply.ttl()), (router, p.src(), 255));
        prop_assert!(icmp_checksum_ok(&reply));
        if reply.version() == IpVersion::V4 {
            prop_assert_eq!(internet_checksum(&out[..20]), 0);
        }
        let IcmpMessage::TimeExceeded { rest, original: quoted } = reply.message() else {
            panic!("not time exceeded");
        };
        prop_assert_eq!(rest, 0);
        prop_assert!(original.starts_with(quoted));
        prop_assert_eq!(quoted.len(), original.len().min(max - reply.icmp_offset() - 8));
        // A buffer one byte short is refused, not overrun.
        let mut short = vec![0u8; n - 1];
        prop_assert!(icmp::write_ttl_exceeded(&p, router, &mut short).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in payload(200)) {
        exercise(&bytes);
    }

    #[test]
    fn ip_looking_bytes_never_panic(version in prop_oneof![Just(0x40u8), Just(0x60u8)],
                                    low in 0u8..16, rest in payload(120)) {
        let mut bytes = vec![version | low];
        bytes.extend_from_slice(&rest);
        exercise(&bytes);
    }

    #[test]
    fn mutated_packets_never_panic(
        packet in valid_packet(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut packet = packet;
        for (at, byte) in edits {
            let i = at.index(packet.len());
            packet[i] = byte;
        }
        exercise(&packet);
        let cut = cut.index(packet.len() + 1);
        exercise(&packet[..cut]);
    }
}
