//! ICMP through `--icmp-map`: echo requests as IP packets, reply checks, and the
//! `ping_group_range` the connector needs for its ping sockets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use super::client::round_trip;

pub const PING_RANGE: &str = "/proc/sys/net/ipv4/ping_group_range";

/// Restores `ping_group_range` on drop.
pub struct PingRange(String);

impl PingRange {
    pub fn open_to_all() -> Self {
        let old = std::fs::read_to_string(PING_RANGE).expect("read ping_group_range");
        std::fs::write(PING_RANGE, "0 2147483647").unwrap_or_else(|e| {
            panic!("this test needs root to open {PING_RANGE} for ping sockets: {e}")
        });
        Self(old)
    }
}

impl Drop for PingRange {
    fn drop(&mut self) {
        let _ = std::fs::write(PING_RANGE, self.0.trim());
    }
}

/// RFC 1071 one's-complement sum of `data`, folded, not inverted.
pub fn sum16(mut acc: u32, data: &[u8]) -> u32 {
    for c in data.chunks(2) {
        acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

/// Whether the checksum over `data` (with `pseudo` summed first) verifies.
pub fn verifies(pseudo: u32, data: &[u8]) -> bool {
    sum16(pseudo, data) == 0xffff
}

pub fn checksum(pseudo: u32, data: &[u8]) -> [u8; 2] {
    (!(sum16(pseudo, data) as u16)).to_be_bytes()
}

pub fn v6_pseudo(src: Ipv6Addr, dst: Ipv6Addr, len: usize) -> u32 {
    let mut p = Vec::with_capacity(40);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&(len as u32).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 58]);
    sum16(0, &p)
}

/// An echo request as an IP packet, with valid checksums.
pub fn echo_request(src: IpAddr, dst: IpAddr, ttl: u8, id: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let mut icmp = vec![0u8; 8];
    icmp[0] = if src.is_ipv4() { 8 } else { 128 };
    icmp[4..6].copy_from_slice(&id.to_be_bytes());
    icmp[6..8].copy_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(data);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let c = checksum(0, &icmp);
            icmp[2..4].copy_from_slice(&c);
            let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, ttl, 1, 0, 0];
            ip[2..4].copy_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            let c = checksum(0, &ip);
            ip[10..12].copy_from_slice(&c);
            ip.extend_from_slice(&icmp);
            ip
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let c = checksum(v6_pseudo(s, d, icmp.len()), &icmp);
            icmp[2..4].copy_from_slice(&c);
            let mut ip = vec![0x60, 0, 0, 0];
            ip.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
            ip.extend_from_slice(&[58, ttl]);
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            ip.extend_from_slice(&icmp);
            ip
        }
        _ => unreachable!("one family per packet"),
    }
}

/// A parsed reply: (src, dst, ICMP message), with its checksums checked.
pub fn parse_reply(p: &[u8]) -> (IpAddr, IpAddr, &[u8]) {
    match p.first().map(|b| b >> 4) {
        Some(4) => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            assert!(verifies(0, &p[..ihl]), "IPv4 header checksum: {p:02x?}");
            assert_eq!(p[9], 1, "protocol ICMP");
            let src = Ipv4Addr::from(<[u8; 4]>::try_from(&p[12..16]).expect("4"));
            let dst = Ipv4Addr::from(<[u8; 4]>::try_from(&p[16..20]).expect("4"));
            let icmp = &p[ihl..];
            assert!(verifies(0, icmp), "ICMP checksum: {p:02x?}");
            (src.into(), dst.into(), icmp)
        }
        Some(6) => {
            assert_eq!(p[6], 58, "next header ICMPv6");
            let src = Ipv6Addr::from(<[u8; 16]>::try_from(&p[8..24]).expect("16"));
            let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&p[24..40]).expect("16"));
            let icmp = &p[40..];
            assert!(
                verifies(v6_pseudo(src, dst, icmp.len()), icmp),
                "ICMPv6 checksum: {p:02x?}"
            );
            (src.into(), dst.into(), icmp)
        }
        _ => panic!("not an IP packet: {p:02x?}"),
    }
}

/// Sends `packet` through the ICMP mapping and returns the answer.
pub fn ping(sock: &UdpSocket, packet: &[u8]) -> Vec<u8> {
    round_trip(sock, packet)
}

/// One family: five echoes to loopback come back rewritten to the requester; a TTL-1 probe
/// is answered by the connector with time exceeded, quoting the probe.
pub fn ping_family(sock: &UdpSocket, client: IpAddr, target: IpAddr) {
    let v4 = client.is_ipv4();
    for seq in 1..=5u16 {
        let data: Vec<u8> = (0..56).map(|k| k as u8 ^ seq as u8).collect();
        let req = echo_request(client, target, 64, 0x4242, seq, &data);
        let reply = ping(sock, &req);
        let (src, dst, icmp) = parse_reply(&reply);
        assert_eq!((src, dst), (target, client), "reply addresses");
        assert_eq!(icmp[0], if v4 { 0 } else { 129 }, "echo reply type");
        assert_eq!(&icmp[4..6], &0x4242u16.to_be_bytes(), "echo id restored");
        assert_eq!(&icmp[6..8], &seq.to_be_bytes(), "sequence");
        assert_eq!(&icmp[8..], &data[..], "echo data");
    }
    let probe = echo_request(client, target, 1, 0x4343, 9, b"traceroute");
    let reply = ping(sock, &probe);
    let (src, dst, icmp) = parse_reply(&reply);
    assert_eq!(dst, client, "time exceeded goes back to the prober");
    // The connector's ICMP source, set to loopback by the test.
    assert_eq!(src, target, "time exceeded comes from the connector");
    assert_eq!(icmp[0], if v4 { 11 } else { 3 }, "time exceeded type");
    // The quote starts with the probe's IP header: its source and destination.
    let quote = &icmp[8..];
    let (qs, qd) = if v4 {
        (&quote[12..16], &quote[16..20])
    } else {
        (&quote[8..24], &quote[24..40])
    };
    let octets = |a: IpAddr| match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    assert_eq!(qs, &octets(client)[..], "quoted source");
    assert_eq!(qd, &octets(target)[..], "quoted destination");
}

/// Pings loopback through the ICMP mapping at `map` as an IPv4 client and, when `v6`, as an
/// IPv6 one ([`ping_family`] each).
pub fn ping_both(map: SocketAddr, v6: bool) {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("client");
    sock.connect(map).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    ping_family(
        &sock,
        Ipv4Addr::new(10, 0, 0, 2).into(),
        Ipv4Addr::LOCALHOST.into(),
    );
    if v6 {
        let client = "fd00::2".parse::<Ipv6Addr>().expect("v6");
        ping_family(&sock, client.into(), Ipv6Addr::LOCALHOST.into());
    }
}

/// Sends echo requests through the mapping at `map` that the connector cannot proxy: two
/// with code 1 (its router refuses them, as ping sockets send code 0 only) and one to the
/// IPv4 broadcast address (its ping socket refuses to send it). None is answered, and
/// `/metrics` at `metrics` counts the three as
/// `cloudflared_icmp_dropped_packets{conn_index="0",reason="write_failed"}`, cloudflared's
/// reason for every ICMP packet it does not get to the origin.
pub fn check_icmp_drops_counted(map: SocketAddr, metrics: SocketAddr) {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("client");
    sock.connect(map).expect("connect");
    let client = Ipv4Addr::new(10, 0, 0, 2).into();
    for seq in 0..2 {
        let mut coded = echo_request(client, Ipv4Addr::LOCALHOST.into(), 64, 7, seq, b"code");
        coded[21] = 1;
        coded[22..24].fill(0);
        let c = checksum(0, &coded[20..]);
        coded[22..24].copy_from_slice(&c);
        sock.send(&coded).expect("send");
    }
    let broadcast = echo_request(client, Ipv4Addr::BROADCAST.into(), 64, 8, 0, b"all");
    sock.send(&broadcast).expect("send");
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let mut buf = [0u8; 1500];
    assert!(
        sock.recv(&mut buf).is_err(),
        "an unproxied echo was answered"
    );
    let line = "cloudflared_icmp_dropped_packets{conn_index=\"0\",reason=\"write_failed\"} 3\n";
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut text = super::client::metrics_text(metrics);
    while !text.contains(line) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        text = super::client::metrics_text(metrics);
    }
    assert!(text.contains(line), "{line} missing in\n{text}");
}

/// After [`ping_both`] over `families` address families: `/metrics` at `metrics` counts at
/// least its five echoes a family as requests sent through ping sockets and replies proxied
/// back (`cloudflared_icmp_total_requests`, `_replies`; the TTL-1 probes, answered by the
/// connector itself, are neither).
pub fn check_icmp_totals(metrics: SocketAddr, families: u8) {
    let text = super::client::metrics_text(metrics);
    let m = |name: &str| super::client::metric(&text, name);
    let echoes = 5.0 * f64::from(families);
    assert!(m("cloudflared_icmp_total_requests") >= echoes, "{text}");
    assert!(m("cloudflared_icmp_total_replies") >= echoes, "{text}");
}
