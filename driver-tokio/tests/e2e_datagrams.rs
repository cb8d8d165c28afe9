//! End to end over QUIC datagrams: `burrow edge --udp-map/--icmp-map` and `burrow tunnel run`
//! as processes, real loopback sockets, real TLS and QUIC. UDP echo through datagram-v3
//! sessions (one connected origin socket per session on the connector) and ping through the
//! connector's unprivileged ping sockets.
//!
//! The ping test needs ping sockets: it runs as root and opens `net.ipv4.ping_group_range` to
//! every group for its duration (the machine's default `1 0` forbids them), then restores it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use burrow_tokio::testbed::{self, ConnectorOpts, EdgeOpts, Proc, Testbed};

mod common;
use common::client::*;
use common::origins::{tcp_echo, tcp_echo_on, udp_echo, udp_oversized_then_echo};
use common::ping::*;

const BIN: &str = env!("CARGO_BIN_EXE_burrow");

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
        assert_eq!(summed(&text, "cloudflared_udp_active_flows"), 1.0);
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
    udp_echo_clients(map, CLIENTS, PACKETS);
    // Each client address was one session, with its own connected socket on the connector.
    check_udp_flow_metrics(&metrics_text(metrics), CLIENTS);
}

/// A connector run with `--features support_datagram_v2` (cloudflared's way to choose datagram
/// v2) advertises no v3, so the edge registers its UDP sessions by `registerUdpSession` calls:
/// cloudflared's v2 session gauges count them on the connector's `/metrics` (and its v3 flow
/// families do not), and the active one drops back to 0 once the edge's idle timeout
/// unregisters them. The same of stock cloudflared when `BURROW_CLOUDFLARED` is set.
#[test]
fn udp_echo_through_v2_sessions_counts_v2_session_metrics() {
    let bed = Testbed::create(
        std::path::Path::new(BIN),
        "e2e-udp-v2",
        "app",
        &["app.test"],
    )
    .expect("tunnel");
    let origin = udp_echo();
    let map = testbed::free_udp().expect("port");
    let mut eo = EdgeOpts::loopback().expect("ports");
    eo.udp_maps = vec![format!("{map}=app:{origin}")];
    eo.extra = vec!["--udp-idle-timeout".into(), "2s".into()];
    let v2 = ["--features", "support_datagram_v2"];
    {
        let (_edge, connector, metrics) = start(&bed, &eo, 2, &v2);
        check_v2_sessions("burrow", map, metrics, &connector);
    }
    if let Some(cfd) = std::env::var_os("BURROW_CLOUDFLARED") {
        let _edge = bed.edge(&eo).expect("edge");
        let (c, metrics) = one_connection(&bed, &eo, Some(&cfd), &v2);
        check_v2_sessions("cloudflared", map, metrics, &c);
    }
}

/// burrow, or stock cloudflared at `cfd` (which opens one connection per edge address), with
/// one HA connection to `eo`'s edge, registered; and its metrics address.
fn one_connection(
    bed: &Testbed,
    eo: &EdgeOpts,
    cfd: Option<&std::ffi::OsStr>,
    extra: &[&str],
) -> (Proc, SocketAddr) {
    match cfd {
        None => one_connection_of(bed, eo, std::path::Path::new(BIN), false, extra),
        Some(cfd) => one_connection_of(bed, eo, std::path::Path::new(cfd), true, extra),
    }
}

/// [`one_connection`] of the connector `bin`, stock cloudflared if `cloudflared`.
fn one_connection_of(
    bed: &Testbed,
    eo: &EdgeOpts,
    bin: &std::path::Path,
    cloudflared: bool,
    extra: &[&str],
) -> (Proc, SocketAddr) {
    let metrics = testbed::free_tcp().expect("port");
    let co = ConnectorOpts {
        edge: eo.quic,
        metrics,
        ingress: vec![(None, "http_status:404".into())],
        ha_connections: 1,
        extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        config_extra: String::new(),
    };
    let (name, started) = if cloudflared {
        ("cloudflared", bed.cloudflared(bin, &co))
    } else {
        ("burrow", bed.connector_from(bin, &co))
    };
    let mut c = started.expect("connector");
    testbed::wait_ready(&mut c, metrics, 1, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{name}: {}", c.log_tail(4000)));
    (c, metrics)
}

/// Four UDP clients through `map` to a connector speaking datagram v2 (`metrics`): the v2
/// session gauges, no v3 flows, and no active session once the edge's 2 s idle timeout ends
/// them.
fn check_v2_sessions(name: &str, map: SocketAddr, metrics: SocketAddr, connector: &Proc) {
    const CLIENTS: usize = 4;
    udp_echo_clients(map, CLIENTS, 10);
    let text = metrics_text(metrics);
    let m = |n: &str| metric(&text, n);
    assert_eq!(
        m("cloudflared_udp_total_sessions"),
        CLIENTS as f64,
        "{name}\n{text}"
    );
    assert_eq!(
        m("cloudflared_udp_active_sessions"),
        CLIENTS as f64,
        "{name}\n{text}"
    );
    assert_eq!(
        summed(&text, "cloudflared_udp_total_flows"),
        0.0,
        "{name}: v2 sessions are no v3 flows\n{text}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let text = loop {
        let text = metrics_text(metrics);
        if metric(&text, "cloudflared_udp_active_sessions") == 0.0
            || std::time::Instant::now() > deadline
        {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        metric(&text, "cloudflared_udp_active_sessions"),
        0.0,
        "{name}: idle sessions end\n{text}\nconnector: {}",
        connector.log_tail(3000)
    );
    assert_eq!(
        metric(&text, "cloudflared_udp_total_sessions"),
        CLIENTS as f64,
        "{name}"
    );
}

/// An origin whose every answer is preceded by one too large for the tunnel: each is counted
/// dropped (`read_too_large`) under the `conn_index` of its session's connection, as
/// cloudflared labels `udp_dropped_datagrams`.
#[test]
fn udp_drops_are_counted_by_conn_index() {
    let bed = Testbed::create(
        std::path::Path::new(BIN),
        "e2e-udp-drops",
        "app",
        &["app.test"],
    )
    .expect("tunnel");
    let (origin, got) = udp_oversized_then_echo();
    let map = testbed::free_udp().expect("port");
    let mut eo = EdgeOpts::loopback().expect("ports");
    eo.udp_maps = vec![format!("{map}=app:{origin}")];
    let (_edge, _connector, metrics) = start(&bed, &eo, 2, &[]);
    check_udp_drops_by_conn_index(map, metrics, &got, 6, 5);
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
    let (_edge, connector, metrics) = start(&bed, &eo, 1, &extra);
    ping_both(map, v6);
    check_icmp_drops_counted(map, metrics);
    // Counted with the drops, which came after the echoes.
    check_icmp_totals(metrics, 1 + u8::from(v6));
    assert!(
        !connector
            .log_tail(100_000)
            .contains("ICMP proxy feature is disabled"),
        "ping sockets were refused"
    );
}

/// A v3 session whose client keeps sending while nothing comes back (the origin answers only
/// packets that ask for it): the edge registers it again every quarter of the connector's idle
/// hint (`--udp-idle-timeout 2s`: a 12 s hint, every 3 s). The connector takes each as a retry
/// of the flow it holds (`udp_retry_flow_responses`), not a new flow: one origin socket, one
/// flow, and the session still answers. The same of stock cloudflared when `BURROW_CLOUDFLARED`
/// is set.
#[test]
fn a_client_sending_into_silence_keeps_its_one_flow_through_repeated_registrations() {
    let bed = Testbed::create(
        std::path::Path::new(BIN),
        "e2e-udp-refresh",
        "app",
        &["app.test"],
    )
    .expect("tunnel");
    let map = testbed::free_udp().expect("port");
    let mut eo = EdgeOpts::loopback().expect("ports");
    eo.extra = vec!["--udp-idle-timeout".into(), "2s".into()];
    let stock = std::env::var_os("BURROW_CLOUDFLARED");
    for cloudflared in std::iter::once(None).chain(stock.map(Some)) {
        let (origin, sources) = udp_answering_when_asked();
        eo.udp_maps = vec![format!("{map}=app:{origin}")];
        let _edge = bed.edge(&eo).expect("edge");
        let (_connector, metrics) = one_connection(&bed, &eo, cloudflared.as_deref(), &[]);
        let name = if cloudflared.is_some() {
            "cloudflared"
        } else {
            "burrow"
        };
        let sock = UdpSocket::bind("127.0.0.1:0").expect("client");
        sock.connect(map).expect("connect");
        // 8 s of packets the origin does not answer, every 400 ms (the edge's 2 s idle timer
        // never fires), then one it answers.
        for i in 0..20 {
            sock.send(format!("quiet {i}").as_bytes()).expect("send");
            std::thread::sleep(Duration::from_millis(400));
        }
        sock.set_read_timeout(Some(Duration::from_millis(700)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        let answered = (0..3).any(|_| {
            sock.send(b"echo").expect("send");
            sock.recv(&mut buf).is_ok_and(|n| &buf[..n] == b"echo")
        });
        let text = metrics_text(metrics);
        assert!(answered, "{name}: the session answers\n{text}");
        assert_eq!(
            summed(&text, "cloudflared_udp_total_flows"),
            1.0,
            "{name}: one flow\n{text}"
        );
        assert!(
            summed(&text, "cloudflared_udp_retry_flow_responses") >= 2.0,
            "{name}: the repeated registrations were retries of that flow\n{text}"
        );
        assert_eq!(
            sources.lock().expect("sources").len(),
            1,
            "{name}: one origin socket"
        );
    }
}

/// A UDP origin that answers only packets starting with `echo`, and the source addresses it
/// heard from.
fn udp_answering_when_asked() -> (
    SocketAddr,
    std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<SocketAddr>>>,
) {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind origin");
    let addr = s.local_addr().expect("addr");
    let sources = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let seen = sources.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            seen.lock().expect("sources").insert(from);
            if buf[..n].starts_with(b"echo") {
                let _ = s.send_to(&buf[..n], from);
            }
        }
    });
    (addr, sources)
}

/// A UDP echo and a TCP echo on the same loopback port.
fn udp_and_tcp_echo() -> SocketAddr {
    for _ in 0..20 {
        let udp = udp_echo();
        if let Ok(l) = std::net::TcpListener::bind(udp) {
            tcp_echo_on(l);
            return udp;
        }
    }
    panic!("no port free for both UDP and TCP");
}

/// Edge ports mapped to the virtual DNS service, UDP and TCP.
fn map_the_service(eo: &mut EdgeOpts) -> (SocketAddr, SocketAddr) {
    let (map, tcp_map) = (
        testbed::free_udp().expect("port"),
        testbed::free_tcp().expect("port"),
    );
    let service = burrow_core::virtual_dns::SERVICE;
    eo.udp_maps = vec![format!("{map}=app:{service}")];
    eo.tcp_maps = vec![format!("{tcp_map}=app:{service}")];
    (map, tcp_map)
}

/// A datagram through `map` and a TCP stream through `tcp_map` are echoed by the resolver
/// connector `c` (`name`) takes the virtual DNS service to; datagrams are tried `tries`
/// times, each with a new session.
fn check_the_service_answers(
    name: &str,
    map: SocketAddr,
    tcp_map: SocketAddr,
    c: &Proc,
    tries: usize,
) {
    let answered = (0..tries).any(|_| echoed(map, b"\x12\x34 a DNS query"));
    assert!(answered, "{name}: UDP to the service\n{}", c.log_tail(3000));
    let mut s = TcpStream::connect(tcp_map).expect("tcp map");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(b"\x00\x05query").expect("write");
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf)
        .unwrap_or_else(|e| panic!("{name}: TCP to the service: {e}\n{}", c.log_tail(3000)));
    assert_eq!(&buf, b"\x00\x05query", "{name}");
}

/// cloudflared's virtual DNS service: a WARP client's UDP session and TCP flow to
/// `[2606:4700:cf1:2000::1]:53` go to the resolver `--dns-resolver-addrs` names, and are
/// counted in `cloudflared_virtual_origins_dns_requests_total{protocol}`. The same of stock
/// cloudflared when `BURROW_CLOUDFLARED` is set.
#[test]
fn the_virtual_dns_service_is_taken_to_the_local_resolver() {
    let bed = Testbed::create(std::path::Path::new(BIN), "e2e-vdns", "app", &["app.test"])
        .expect("tunnel");
    let resolver = udp_and_tcp_echo();
    let mut eo = EdgeOpts::loopback().expect("ports");
    let (map, tcp_map) = map_the_service(&mut eo);
    let resolver_flag = resolver.to_string();
    let extra = ["--dns-resolver-addrs", resolver_flag.as_str()];
    let stock = std::env::var_os("BURROW_CLOUDFLARED");
    for cloudflared in std::iter::once(None).chain(stock.map(Some)) {
        let _edge = bed.edge(&eo).expect("edge");
        let (c, metrics) = one_connection(&bed, &eo, cloudflared.as_deref(), &extra);
        let name = if cloudflared.is_some() {
            "cloudflared"
        } else {
            "burrow"
        };
        check_the_service_answers(name, map, tcp_map, &c, 1);
        let text = metrics_text(metrics);
        let dns = "cloudflared_virtual_origins_dns_requests_total";
        for protocol in ["udp", "tcp"] {
            assert_eq!(
                labelled(&text, &format!("{dns}{{protocol=\"{protocol}\"}}")),
                1.0,
                "{name}\n{text}"
            );
        }
    }
}

/// The system's resolver, faked: a DNS server on `ip`:53 (UDP) answering A queries for
/// cloudflared's lookup name with an address, other queries NXDOMAIN, and echoing anything
/// that is not a DNS query (the test's datagrams); and a TCP echo on the same port. None where
/// the port cannot be bound.
fn fake_system_resolver(ip: &str) -> Option<SocketAddr> {
    use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
    use hickory_resolver::proto::rr::{rdata::A, RData, Record, RecordType};
    let addr: SocketAddr = format!("{ip}:53").parse().expect("addr");
    let udp = UdpSocket::bind(addr).ok()?;
    let tcp = std::net::TcpListener::bind(addr).ok()?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            let query = Message::from_vec(&buf[..n])
                .ok()
                .filter(|m| m.message_type() == MessageType::Query && !m.queries().is_empty());
            let Some(query) = query else {
                let _ = udp.send_to(&buf[..n], from);
                continue;
            };
            let mut answer = Message::new();
            answer
                .set_id(query.id())
                .set_message_type(MessageType::Response)
                .set_recursion_desired(true)
                .set_recursion_available(true)
                .add_queries(query.queries().to_vec());
            let q = &query.queries()[0];
            let ours = q
                .name()
                .to_ascii()
                .trim_end_matches('.')
                .eq_ignore_ascii_case(burrow_core::virtual_dns::LOOKUP_HOST);
            if !ours {
                answer.set_response_code(ResponseCode::NXDomain);
            } else if q.query_type() == RecordType::A {
                answer.add_answer(Record::from_rdata(
                    q.name().clone(),
                    60,
                    RData::A(A::new(198, 41, 192, 7)),
                ));
            }
            if let Ok(bytes) = answer.to_vec() {
                let _ = udp.send_to(&bytes, from);
            }
        }
    });
    tcp_echo_on(tcp);
    Some(addr)
}

/// A script in `dir` that runs `bin` (its arguments passed on) in a mount namespace of its own
/// whose /etc/resolv.conf names only `name_server`. None, said on stderr, where this machine
/// cannot (not root, no `unshare`).
fn wrapper_with_name_server(
    dir: &std::path::Path,
    bin: &std::path::Path,
    name_server: &str,
) -> Option<std::path::PathBuf> {
    if !common::dual_stack::can_unshare() {
        eprintln!("skipped: needs root and unshare");
        return None;
    }
    let conf = dir.join("resolv.conf");
    std::fs::write(&conf, format!("nameserver {name_server}\n")).expect("resolv.conf");
    let name = bin.file_name().expect("a file").to_string_lossy();
    let script = dir.join(format!("with-resolver-{name}.sh"));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec unshare --mount sh -c 'mount --bind \"$0\" /etc/resolv.conf && exec \"$@\"' '{}' '{}' \"$@\"\n",
            conf.display(),
            bin.display()
        ),
    )
    .expect("script");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    Some(script)
}

/// Without `--dns-resolver-addrs` the virtual DNS service goes to the system's resolver: the
/// name server of /etc/resolv.conf that answered the lookup of `region1.v2.argotunnel.com`
/// (here a fake one on 127.0.0.2:53, in the connector's mount namespace). The same of stock
/// cloudflared when `BURROW_CLOUDFLARED` is set.
#[test]
fn the_virtual_dns_service_finds_the_systems_resolver() {
    let bed = Testbed::create(
        std::path::Path::new(BIN),
        "e2e-vdns-sys",
        "app",
        &["app.test"],
    )
    .expect("tunnel");
    let Some(resolver) = fake_system_resolver("127.0.0.2") else {
        eprintln!("skipped: 127.0.0.2:53 is taken");
        return;
    };
    let mut eo = EdgeOpts::loopback().expect("ports");
    let (map, tcp_map) = map_the_service(&mut eo);
    let stock = std::env::var_os("BURROW_CLOUDFLARED").map(std::path::PathBuf::from);
    for cloudflared in std::iter::once(None).chain(stock.map(Some)) {
        let bin = cloudflared.clone().unwrap_or_else(|| BIN.into());
        let Some(wrapped) = wrapper_with_name_server(bed.dir(), &bin, &resolver.ip().to_string())
        else {
            return;
        };
        let _edge = bed.edge(&eo).expect("edge");
        let (c, _) = one_connection_of(&bed, &eo, &wrapped, cloudflared.is_some(), &[]);
        let name = if cloudflared.is_some() {
            "cloudflared"
        } else {
            "burrow"
        };
        // The first lookup runs beside the first connection: sessions before it ends go to
        // 127.0.0.1:53, where nothing answers.
        check_the_service_answers(name, map, tcp_map, &c, 10);
    }
}
