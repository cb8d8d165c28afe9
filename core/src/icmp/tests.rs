//! Decoder rules of PROTOCOL.md §4.2, one case each.

use core::net::IpAddr;

use super::*;

const V4_ECHO: &str = "45000020000000000101ee33c0a801010a000001080021041234000161626364";
const V6_ECHO: &str = concat!(
    "60000000000b3a01fd5123910523f4ee0000000000000001",
    "fd5123910697f4ee000000000000000280001ff564dde31174746c"
);

fn hex(s: &str) -> Vec<u8> {
    ::hex::decode(s).unwrap()
}

/// IPv4 header fields patched into the reference echo, header checksum left stale (unchecked).
fn v4_with(patch: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut p = hex(V4_ECHO);
    patch(&mut p);
    p
}

fn v6_with(patch: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut p = hex(V6_ECHO);
    patch(&mut p);
    p
}

/// The v6 echo with an 8-byte Hop-by-Hop header holding `opts` (6 bytes) inserted.
fn v6_hop_by_hop(opts: [u8; 6]) -> Vec<u8> {
    v6_with(|p| {
        p[6] = 0; // next header: Hop-by-Hop
        p[5] += 8; // payload length covers it
        let mut hbh = vec![PROTO_ICMPV6, 0];
        hbh.extend_from_slice(&opts);
        p.splice(40..40, hbh);
    })
}

#[test]
fn reference_packets_decode() {
    let v4 = hex(V4_ECHO);
    let p = parse(&v4).unwrap();
    assert_eq!(p.version(), IpVersion::V4);
    assert_eq!(p.src(), IpAddr::from([192, 168, 1, 1]));
    assert_eq!(p.dst(), IpAddr::from([10, 0, 0, 1]));
    assert_eq!((p.ttl(), p.protocol()), (1, 1));
    assert_eq!((p.icmp_type(), p.code(), p.checksum()), (8, 0, 0x2104));
    assert_eq!(
        p.message(),
        IcmpMessage::EchoRequest {
            id: 0x1234,
            seq: 1,
            data: b"abcd"
        }
    );
    assert_eq!(p.ip_packet(), &v4[..]);
    assert_eq!(p.icmp_bytes(), &v4[20..]);
    assert_eq!(p.icmp_offset(), 20);

    let v6 = hex(V6_ECHO);
    let p = parse(&v6).unwrap();
    assert_eq!(p.version(), IpVersion::V6);
    assert_eq!(p.src(), "fd51:2391:523:f4ee::1".parse::<IpAddr>().unwrap());
    assert_eq!(p.dst(), "fd51:2391:697:f4ee::2".parse::<IpAddr>().unwrap());
    assert_eq!((p.ttl(), p.protocol()), (1, 58));
    assert_eq!(
        p.message(),
        IcmpMessage::EchoRequest {
            id: 0x64dd,
            seq: 0xe311,
            data: b"ttl"
        }
    );
    assert_eq!(p.icmp_bytes(), &v6[40..]);
}

#[test]
fn empty_and_unknown_version() {
    assert_eq!(parse(&[]), Err(ParseError::Empty));
    assert_eq!(
        parse(&[0x50; 40]),
        Err(ParseError::UnknownVersion { version: 5 })
    );
}

#[test]
fn v4_lengths() {
    let short = hex(V4_ECHO);
    assert_eq!(
        parse(&short[..19]),
        Err(ParseError::Ipv4TooShort { len: 19 })
    );
    // Total length 0 means "the whole buffer".
    let zero = v4_with(|p| p[2..4].copy_from_slice(&[0, 0]));
    assert_eq!(parse(&zero).unwrap().ip_packet().len(), 32);
    let tiny = v4_with(|p| p[3] = 19);
    assert_eq!(
        parse(&tiny),
        Err(ParseError::Ipv4TotalLengthTooSmall { total: 19 })
    );
    let ihl4 = v4_with(|p| p[0] = 0x44);
    assert_eq!(parse(&ihl4), Err(ParseError::Ipv4IhlTooSmall { ihl: 4 }));
    let ihl_big = v4_with(|p| {
        p[0] = 0x4f;
        p[3] = 40;
    });
    assert_eq!(
        parse(&ihl_big),
        Err(ParseError::Ipv4HeaderExceedsTotalLength {
            ihl_bytes: 60,
            total: 40
        })
    );
    // Declared 100 bytes, 32 received, header 60 bytes: not all header bytes present.
    let trunc_hdr = v4_with(|p| {
        p[0] = 0x4f;
        p[3] = 100;
    });
    assert_eq!(
        parse(&trunc_hdr),
        Err(ParseError::Ipv4HeaderTruncated {
            ihl_bytes: 60,
            available: 32
        })
    );
}

#[test]
fn v4_trims_trailing_and_accepts_truncated() {
    let long = v4_with(|p| p.extend_from_slice(b"trailer"));
    let p = parse(&long).unwrap();
    assert_eq!(p.ip_packet().len(), 32);
    assert_eq!(p.raw().len(), 39);
    assert!(matches!(
        p.message(),
        IcmpMessage::EchoRequest { data: b"abcd", .. }
    ));

    let truncated = v4_with(|p| p[3] = 200);
    let p = parse(&truncated).unwrap();
    assert_eq!(p.ip_packet().len(), 32);
    assert!(matches!(
        p.message(),
        IcmpMessage::EchoRequest { data: b"abcd", .. }
    ));
}

#[test]
fn v4_options() {
    // IHL 6: four option bytes inserted after the fixed header.
    let with_opts = |opts: [u8; 4]| {
        v4_with(|p| {
            p[0] = 0x46;
            p[3] += 4;
            p.splice(20..20, opts);
        })
    };
    let nops = with_opts([1, 1, 1, 1]);
    let p = parse(&nops).unwrap();
    assert_eq!(p.icmp_offset(), 24);
    assert!(matches!(
        p.message(),
        IcmpMessage::EchoRequest { id: 0x1234, .. }
    ));
    // End of options: the rest is padding, whatever it holds.
    assert!(parse(&with_opts([0, 0xff, 0xff, 0xff])).is_ok());
    // A 4-byte option exactly filling the space is fine.
    assert!(parse(&with_opts([7, 4, 0, 0])).is_ok());
    for bad in [[7, 2, 0, 0], [7, 5, 0, 0], [1, 1, 1, 7], [7, 0, 0, 0]] {
        assert!(
            matches!(
                parse(&with_opts(bad)),
                Err(ParseError::Ipv4BadOption { .. })
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn v4_fragments_rejected() {
    let mf = v4_with(|p| p[6] = 0x20);
    assert_eq!(
        parse(&mf),
        Err(ParseError::Ipv4Fragment {
            more_fragments: true,
            offset: 0
        })
    );
    let off = v4_with(|p| p[7] = 0x01);
    assert_eq!(
        parse(&off),
        Err(ParseError::Ipv4Fragment {
            more_fragments: false,
            offset: 1
        })
    );
    let df = v4_with(|p| p[6] = 0x40);
    assert!(parse(&df).is_ok());
}

#[test]
fn v4_protocol_and_icmp_length() {
    let v6icmp = v4_with(|p| p[9] = 58);
    assert_eq!(
        parse(&v6icmp),
        Err(ParseError::ProtocolMismatch {
            version: IpVersion::V4,
            protocol: 58
        })
    );
    let udp = v4_with(|p| p[9] = 17);
    assert_eq!(
        parse(&udp),
        Err(ParseError::NotIcmp {
            version: IpVersion::V4,
            protocol: 17
        })
    );
    let short = hex(V4_ECHO);
    assert_eq!(
        parse(&short[..27]),
        Err(ParseError::IcmpTooShort {
            version: IpVersion::V4,
            len: 7,
            min: 8
        })
    );
    // Eight bytes is enough even for an echo without data.
    assert!(matches!(
        parse(&short[..28]).unwrap().message(),
        IcmpMessage::EchoRequest { data: b"", .. }
    ));
}

#[test]
fn v4_message_kinds() {
    let kind = |ty: u8| {
        let p = v4_with(|p| p[20] = ty);
        let parsed = parse(&p).unwrap().message();
        match parsed {
            IcmpMessage::EchoRequest { .. } => "echo request",
            IcmpMessage::EchoReply { .. } => "echo reply",
            IcmpMessage::TimeExceeded { .. } => "time exceeded",
            IcmpMessage::DestinationUnreachable { .. } => "unreachable",
            IcmpMessage::Other { .. } => "other",
        }
    };
    assert_eq!(kind(8), "echo request");
    assert_eq!(kind(0), "echo reply");
    assert_eq!(kind(11), "time exceeded");
    assert_eq!(kind(3), "unreachable");
    assert_eq!(kind(128), "other");
    assert_eq!(kind(1), "other");
    let te = v4_with(|p| p[20] = 11);
    assert_eq!(
        parse(&te).unwrap().message(),
        IcmpMessage::TimeExceeded {
            rest: 0x1234_0001,
            original: b"abcd"
        }
    );
}

#[test]
fn v6_lengths() {
    let v6 = hex(V6_ECHO);
    assert_eq!(parse(&v6[..39]), Err(ParseError::Ipv6TooShort { len: 39 }));
    let zero = v6_with(|p| p[5] = 0);
    assert_eq!(parse(&zero), Err(ParseError::Ipv6ZeroPayloadLength));
    let long = v6_with(|p| p.extend_from_slice(b"junk"));
    let p = parse(&long).unwrap();
    assert_eq!(p.ip_packet().len(), 51);
    assert!(matches!(
        p.message(),
        IcmpMessage::EchoRequest { data: b"ttl", .. }
    ));
    let truncated = v6_with(|p| p[5] = 200);
    assert!(matches!(
        parse(&truncated).unwrap().message(),
        IcmpMessage::EchoRequest { data: b"ttl", .. }
    ));
}

#[test]
fn v6_hop_by_hop_rules() {
    // PadN filling the header: skipped, protocol() still shows the fixed header's 0.
    let hbh = v6_hop_by_hop([1, 4, 0, 0, 0, 0]);
    let p = parse(&hbh).unwrap();
    assert_eq!(p.protocol(), 0);
    assert_eq!(p.icmp_offset(), 48);
    assert!(matches!(
        p.message(),
        IcmpMessage::EchoRequest {
            id: 0x64dd,
            data: b"ttl",
            ..
        }
    ));
    // Pad1 bytes.
    assert!(parse(&v6_hop_by_hop([0; 6])).is_ok());
    // An option overrunning the received bytes.
    let mut overrun = v6_hop_by_hop([1, 200, 0, 0, 0, 0]);
    assert_eq!(
        parse(&overrun),
        Err(ParseError::Ipv6BadHopByHopOption { offset: 2 })
    );
    // gopacket walks options over the untrimmed bytes: an overrun into the ICMP part is fine.
    overrun = v6_hop_by_hop([1, 6, 0, 0, 0, 0]);
    assert!(parse(&overrun).is_ok());
    // Jumbo payload option.
    let jumbo = v6_hop_by_hop([0xc2, 4, 0, 1, 0, 0]);
    assert_eq!(parse(&jumbo), Err(ParseError::Ipv6Jumbogram));
    // Header longer than what was received.
    let v6 = hex(V6_ECHO);
    let mut hdr_only = v6[..40].to_vec();
    hdr_only[6] = 0;
    hdr_only.extend_from_slice(&[58, 1, 0, 0]);
    assert_eq!(
        parse(&hdr_only),
        Err(ParseError::Ipv6HopByHopTruncated {
            needed: 16,
            available: 4
        })
    );
    // Payload length 0 with a plain Hop-by-Hop header.
    let mut zero = v6_hop_by_hop([1, 4, 0, 0, 0, 0]);
    zero[5] = 0;
    assert_eq!(parse(&zero), Err(ParseError::Ipv6ZeroPayloadLength));
    // gopacket trims after Hop-by-Hop to the *whole* payload length: a payload length
    // smaller than the Hop-by-Hop header still leaves the ICMP bytes readable.
    let mut quirk = v6_hop_by_hop([1, 4, 0, 0, 0, 0]);
    quirk[5] = 8;
    let p = parse(&quirk).unwrap();
    assert_eq!(p.icmp_bytes().len(), 8);
    assert!(matches!(
        p.message(),
        IcmpMessage::EchoRequest { data: b"", .. }
    ));
}

#[test]
fn v6_next_headers() {
    let dst_opts = v6_with(|p| p[6] = 60);
    assert_eq!(
        parse(&dst_opts),
        Err(ParseError::Ipv6ExtensionHeader { next_header: 60 })
    );
    let icmpv4 = v6_with(|p| p[6] = 1);
    assert_eq!(
        parse(&icmpv4),
        Err(ParseError::ProtocolMismatch {
            version: IpVersion::V6,
            protocol: 1
        })
    );
    let udp = v6_with(|p| p[6] = 17);
    assert_eq!(
        parse(&udp),
        Err(ParseError::NotIcmp {
            version: IpVersion::V6,
            protocol: 17
        })
    );
    let mut nested = v6_hop_by_hop([1, 4, 0, 0, 0, 0]);
    nested[40] = 0;
    assert_eq!(
        parse(&nested),
        Err(ParseError::Ipv6ExtensionHeader { next_header: 0 })
    );
}

#[test]
fn v6_icmp_lengths_and_kinds() {
    let with_icmp = |icmp: &[u8]| {
        v6_with(|p| {
            p.truncate(40);
            p[5] = icmp.len() as u8;
            p.extend_from_slice(icmp);
        })
    };
    assert_eq!(
        parse(&with_icmp(&[128, 0, 0])),
        Err(ParseError::IcmpTooShort {
            version: IpVersion::V6,
            len: 3,
            min: 4
        })
    );
    // Echo (and error) types need id/seq (or the unused word); others may be bare.
    for ty in [1, 2, 3, 4, 128, 129, 160, 161] {
        assert_eq!(
            parse(&with_icmp(&[ty, 0, 0, 0, 1, 2, 3])),
            Err(ParseError::IcmpBodyTooShort {
                icmp_type: ty,
                len: 3
            })
        );
    }
    let ns = with_icmp(&[135, 0, 0xab, 0xcd]);
    let p = parse(&ns).unwrap();
    assert_eq!(p.checksum(), 0xabcd);
    assert_eq!(
        p.message(),
        IcmpMessage::Other {
            icmp_type: 135,
            code: 0,
            body: b""
        }
    );
    let unreachable = with_icmp(&[1, 4, 0, 0, 0, 0, 0, 0, 0x60]);
    assert_eq!(
        parse(&unreachable).unwrap().message(),
        IcmpMessage::DestinationUnreachable {
            rest: 0,
            original: &[0x60]
        }
    );
    let exceeded = with_icmp(&[3, 0, 0, 0, 0, 0, 0, 0]);
    assert!(matches!(
        parse(&exceeded).unwrap().message(),
        IcmpMessage::TimeExceeded { .. }
    ));
    let reply = with_icmp(&[129, 0, 0, 0, 0, 1, 0, 2, 9]);
    assert_eq!(
        parse(&reply).unwrap().message(),
        IcmpMessage::EchoReply {
            id: 1,
            seq: 2,
            data: &[9]
        }
    );
}

#[test]
fn errors_read_well() {
    assert_eq!(
        ParseError::Ipv4HeaderExceedsTotalLength {
            ihl_bytes: 60,
            total: 40
        }
        .to_string(),
        "IPv4 total length 40 shorter than header 60"
    );
    assert_eq!(
        ParseError::ProtocolMismatch {
            version: IpVersion::V6,
            protocol: 1
        }
        .to_string(),
        "IPv6 packet carries protocol 1, the other family's ICMP"
    );
}
