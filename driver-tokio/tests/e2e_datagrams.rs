//! End to end over QUIC datagrams: `burrow edge --udp-map/--icmp-map` and `burrow tunnel run`
//! as processes, real loopback sockets, real TLS and QUIC. UDP echo through datagram-v3
//! sessions (one connected origin socket per session on the connector) and ping through the
//! connector's unprivileged ping sockets.
//!
//! The ping test needs ping sockets: it runs as root and opens `net.ipv4.ping_group_range` to
//! every group for its duration (the machine's default `1 0` forbids them), then restores it.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::thread;
use std::time::Duration;

use burrow_tokio::testbed::{self, ConnectorOpts, EdgeOpts, Proc, Testbed};

const BIN: &str = env!("CARGO_BIN_EXE_burrow");
const PING_RANGE: &str = "/proc/sys/net/ipv4/ping_group_range";

/// A UDP echo origin on loopback.
fn udp_echo() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind echo");
    let addr = s.local_addr().expect("addr");
    thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    });
    addr
}

/// The connector's `/metrics` text.
fn metrics_text(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).expect("metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

/// The value of an unlabelled metric.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
}

/// Edge and connector for `bed`, connector registered with `ha` connections.
fn start(bed: &Testbed, eo: &EdgeOpts, ha: u8, extra: &[&str]) -> (Proc, Proc, SocketAddr) {
    start_with(bed, eo, ha, extra, "")
}

/// [`start`] with more config.yml text.
fn start_with(
    bed: &Testbed,
    eo: &EdgeOpts,
    ha: u8,
    extra: &[&str],
    config_extra: &str,
) -> (Proc, Proc, SocketAddr) {
    let edge = bed.edge(eo).expect("edge");
    let metrics = testbed::free_tcp().expect("port");
    let mut connector = bed
        .connector(&ConnectorOpts {
            edge: eo.quic,
            metrics,
            ingress: vec![(None, "http_status:404".into())],
            ha_connections: ha,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            config_extra: config_extra.to_owned(),
        })
        .expect("connector");
    testbed::wait_ready(
        &mut connector,
        metrics,
        usize::from(ha),
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("{e}\nconnector: {}", connector.log_tail(4000)));
    (edge, connector, metrics)
}

/// Sends `payload` and waits for its echo, resending a few times (UDP may drop under load).
fn round_trip(sock: &UdpSocket, payload: &[u8]) -> Vec<u8> {
    let mut buf = [0u8; 2048];
    for _ in 0..4 {
        sock.send(payload).expect("send");
        match sock.recv(&mut buf) {
            Ok(n) => return buf[..n].to_vec(),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("recv: {e}"),
        }
    }
    panic!("no echo for a {}-byte payload", payload.len());
}

/// A TCP echo origin on loopback.
fn tcp_echo() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind echo");
    let addr = l.local_addr().expect("addr");
    thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// The value of `name{label}`, 0 when absent.
fn labelled(text: &str, name_and_label: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name_and_label)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// Whether a UDP client on `map` gets an echo of `payload` within a few tries.
fn echoed(map: SocketAddr, payload: &[u8]) -> bool {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("client");
    sock.connect(map).expect("connect");
    sock.set_read_timeout(Some(Duration::from_millis(700)))
        .expect("timeout");
    let mut buf = [0u8; 2048];
    for _ in 0..3 {
        sock.send(payload).expect("send");
        if let Ok(n) = sock.recv(&mut buf) {
            return &buf[..n] == payload;
        }
    }
    false
}

/// `warp-routing.maxActiveFlows: 1` in config.yml is one limit for TCP and UDP together: a UDP
/// session takes it, then a TCP stream and a second session are refused and counted under
/// cloudflared's metric; once `--max-active-flows 2` overrides the file, a TCP stream fits.
#[test]
fn one_flow_limit_for_tcp_and_udp_from_config_file_and_flag() {
    let bed = Testbed::create(std::path::Path::new(BIN), "e2e-flows", "app", &["app.test"])
        .expect("tunnel");
    let udp_origin = udp_echo();
    let tcp_origin = tcp_echo();
    let (map, tcp_map) = (
        testbed::free_udp().expect("port"),
        testbed::free_tcp().expect("port"),
    );
    let mut eo = EdgeOpts::loopback().expect("ports");
    eo.udp_maps = vec![format!("{map}=app:{udp_origin}")];
    eo.tcp_maps = vec![format!("{tcp_map}=app:{tcp_origin}")];
    let limit_one = "warp-routing:\n  maxActiveFlows: 1\n";
    let tcp_works = || {
        let mut s = TcpStream::connect(tcp_map).expect("tcp map");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let _ = s.write_all(b"ping");
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).is_ok() && &buf == b"ping"
    };
    {
        let (_edge, _connector, metrics) = start_with(&bed, &eo, 1, &[], limit_one);
        assert!(echoed(map, b"first session"), "the first session is served");
        assert!(!tcp_works(), "a TCP stream over the limit is refused");
        assert!(!echoed(map, b"second session"), "so is a second session");
        let text = metrics_text(metrics);
        let rate_limited = "flow_client_registrations_rate_limited_total";
        assert!(
            labelled(&text, &format!("{rate_limited}{{flow_type=\"tcp\"}}")) >= 1.0,
            "{text}"
        );
        assert!(
            labelled(&text, &format!("{rate_limited}{{flow_type=\"udp\"}}")) >= 1.0,
            "{text}"
        );
        assert_eq!(metric(&text, "cloudflared_udp_active_flows"), 1.0);
    }
    let (_edge, _connector, _) = start_with(&bed, &eo, 1, &["--max-active-flows", "2"], limit_one);
    assert!(echoed(map, b"first session"));
    assert!(tcp_works(), "the flag raised the limit to 2");
}

#[test]
fn udp_echo_through_v3_sessions() {
    let bed = Testbed::create(std::path::Path::new(BIN), "e2e-udp", "app", &["app.test"])
        .expect("tunnel");
    let origin = udp_echo();
    let map = testbed::free_udp().expect("port");
    let mut eo = EdgeOpts::loopback().expect("ports");
    eo.udp_maps = vec![format!("{map}=app:{origin}")];
    let (_edge, _connector, metrics) = start(&bed, &eo, 2, &[]);

    const CLIENTS: usize = 16;
    const PACKETS: usize = 40;
    let workers: Vec<_> = (0..CLIENTS)
        .map(|c| {
            thread::spawn(move || {
                let sock = UdpSocket::bind("127.0.0.1:0").expect("client");
                sock.connect(map).expect("connect");
                sock.set_read_timeout(Some(Duration::from_secs(2)))
                    .expect("timeout");
                for i in 0..PACKETS {
                    // Sizes from 1 byte to 1100, contents unique to client and packet.
                    let len = 1 + (i * 97 + c * 13) % 1100;
                    let payload: Vec<u8> = (0..len)
                        .map(|k| (k as u8) ^ (c as u8).wrapping_mul(31) ^ (i as u8))
                        .collect();
                    let echo = round_trip(&sock, &payload);
                    assert_eq!(echo, payload, "client {c} packet {i}");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("client thread");
    }
    // Each client address was one session, with its own connected socket on the connector.
    let text = metrics_text(metrics);
    let total = metric(&text, "cloudflared_udp_total_flows");
    assert!(
        total >= CLIENTS as f64,
        "{total} sessions for {CLIENTS} clients"
    );
    assert_eq!(
        metric(&text, "cloudflared_udp_active_flows"),
        CLIENTS as f64
    );
}

/// Restores `ping_group_range` on drop.
struct PingRange(String);

impl PingRange {
    fn open_to_all() -> Self {
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
fn sum16(mut acc: u32, data: &[u8]) -> u32 {
    for c in data.chunks(2) {
        acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

/// Whether the checksum over `data` (with `pseudo` summed first) verifies.
fn verifies(pseudo: u32, data: &[u8]) -> bool {
    sum16(pseudo, data) == 0xffff
}

fn checksum(pseudo: u32, data: &[u8]) -> [u8; 2] {
    (!(sum16(pseudo, data) as u16)).to_be_bytes()
}

fn v6_pseudo(src: Ipv6Addr, dst: Ipv6Addr, len: usize) -> u32 {
    let mut p = Vec::with_capacity(40);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&(len as u32).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 58]);
    sum16(0, &p)
}

/// An echo request as an IP packet, with valid checksums.
fn echo_request(src: IpAddr, dst: IpAddr, ttl: u8, id: u16, seq: u16, data: &[u8]) -> Vec<u8> {
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
fn parse_reply(p: &[u8]) -> (IpAddr, IpAddr, &[u8]) {
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
fn ping(sock: &UdpSocket, packet: &[u8]) -> Vec<u8> {
    round_trip(sock, packet)
}

/// One family: five echoes to loopback come back rewritten to the requester; a TTL-1 probe
/// is answered by the connector with time exceeded, quoting the probe.
fn ping_family(sock: &UdpSocket, client: IpAddr, target: IpAddr) {
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

#[test]
fn ping_through_icmp_mapping() {
    let _range = PingRange::open_to_all();
    let bed = Testbed::create(std::path::Path::new(BIN), "e2e-icmp", "app", &["app.test"])
        .expect("tunnel");
    let map = testbed::free_udp().expect("port");
    let mut eo = EdgeOpts::loopback().expect("ports");
    eo.icmp_maps = vec![format!("{map}=app")];
    let v6 = UdpSocket::bind("[::1]:0").is_ok();
    let mut extra = vec!["--icmpv4-src", "127.0.0.1"];
    if v6 {
        extra.extend(["--icmpv6-src", "::1"]);
    }
    let (_edge, connector, _metrics) = start(&bed, &eo, 1, &extra);
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
        ping_family(
            &sock,
            "fd00::2".parse::<Ipv6Addr>().expect("v6").into(),
            Ipv6Addr::LOCALHOST.into(),
        );
    }
    assert!(
        !connector
            .log_tail(100_000)
            .contains("ICMP proxy feature is disabled"),
        "ping sockets were refused"
    );
}
