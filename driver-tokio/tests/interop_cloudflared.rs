//! Stock cloudflared as the connector, `burrow edge` as the edge: real processes, loopback
//! sockets, TLS and QUIC. It registers 4 HA connections and serves HTTP (16 MiB and 100 MiB
//! bodies checked, a chunked upload, 50 concurrent requests), WebSocket echo, TCP echo through
//! `--tcp-map`, UDP echo through datagram-v3 sessions and ping (IPv4 and IPv6, TTL-1 time
//! exceeded) through `--icmp-map`; it reconnects after an edge restart and drains an in-flight
//! request on SIGTERM. The same again with `--protocol http2` (HTTP/2 over TLS on TCP, the
//! edge's port), everything but UDP and ICMP, which HTTP/2 does not carry.
//!
//! This project does not build cloudflared (no Go here, and none of its code is ours to ship):
//! point `BURROW_CLOUDFLARED` at a binary and run
//! `cargo test -p burrow-tokio --test interop_cloudflared -- --ignored`. As root, the test opens
//! `net.ipv4.ping_group_range` for cloudflared's ping sockets and restores it after.

mod common;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use burrow_tokio::testbed::{self, ConnectorOpts, EdgeOpts, Proc, Testbed};
use common::body::*;
use common::client::*;
use common::origins::*;
use common::ping::{ping_both, PingRange};
use tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_burrow");
const APP: &str = "app.test";
const WS: &str = "ws.test";
const HA: usize = 4;

fn cloudflared() -> PathBuf {
    std::env::var_os("BURROW_CLOUDFLARED")
        .map(PathBuf::from)
        .expect("set BURROW_CLOUDFLARED to a cloudflared binary")
}

fn get(port: u16, host: &str, path: &str) -> (u16, Vec<u8>) {
    request(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        b"",
    )
}

fn wait_ready(metrics: SocketAddr, n: usize, limit: Duration, p: &mut Proc) {
    testbed::wait_ready(p, metrics, n, limit)
        .unwrap_or_else(|e| panic!("{n} connections on cloudflared's /ready: {e}"));
}

fn http_checks(http: u16) {
    let (status, body) = get(http, APP, "/big");
    assert_eq!(status, 200);
    assert!(body.len() == BIG && body.iter().enumerate().all(|(i, b)| *b == byte(i)));

    let mut c = TcpStream::connect(("127.0.0.1", http)).expect("connect");
    c.write_all(
        format!("GET /huge HTTP/1.1\r\nHost: {APP}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .expect("request");
    let expected = {
        let mut d = Digest::new();
        for i in 0..HUGE / BLOCK {
            d.update(&pattern((i * BLOCK / 8) as u64, BLOCK / 8));
        }
        d.finish()
    };
    assert_eq!(response_digest(c), (200, expected), "100 MiB download");

    let up: Vec<u8> = (0..1_000_003).map(|i| byte(i * 7)).collect();
    let (status, body) = request(
        http,
        &format!("POST /sum HTTP/1.1\r\nHost: {APP}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"),
        &chunked(&up, 65_000),
    );
    assert_eq!(
        (status, String::from_utf8_lossy(&body)),
        (200, digest(&up).into())
    );

    let handles: Vec<_> = (0..50)
        .map(|i| thread::spawn(move || get(http, APP, &format!("/small/{i}"))))
        .collect();
    for h in handles {
        assert_eq!(
            h.join().expect("thread"),
            (200, b"hello from the origin".to_vec())
        );
    }
}

fn websocket_checks(http: u16, ends: &std::sync::mpsc::Receiver<String>) {
    let tcp = TcpStream::connect(("127.0.0.1", http)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let (mut ws, resp) = tungstenite::client(format!("ws://{WS}/echo"), tcp).expect("handshake");
    assert_eq!(resp.status(), 101);
    for (i, n) in [0usize, 1, 125, 126, 65_536, 200_003, 1_048_579]
        .into_iter()
        .enumerate()
    {
        let text = text_of(n);
        ws.send(Message::text(text.clone())).expect("send text");
        assert!(matches!(ws.read().expect("read"), Message::Text(t) if t.as_str() == text));
        let bin: Vec<u8> = (0..n).map(|j| byte(j * 31 + i)).collect();
        ws.send(Message::binary(bin.clone())).expect("send binary");
        assert!(matches!(ws.read().expect("read"), Message::Binary(b) if b[..] == bin[..]));
    }
    ws.close(None).expect("close");
    loop {
        match ws.read() {
            Ok(Message::Close(_)) => {}
            Err(tungstenite::Error::ConnectionClosed) => break,
            other => panic!("expected the close handshake, got {other:?}"),
        }
    }
    let end = ends
        .recv_timeout(Duration::from_secs(10))
        .expect("origin end");
    assert_eq!(end, "clean");
}

/// cloudflared ends a TCP flow when either side reaches EOF (`stream.Pipe`), so clients here
/// read their echo back before closing, rather than half-closing first.
fn tcp_checks(map: SocketAddr) {
    let handles: Vec<_> = (0..20u64)
        .map(|i| {
            thread::spawn(move || {
                let data = random_bytes(i, 1 + (i as usize * 15_013) % 300_000);
                let mut c = TcpStream::connect(map).expect("connect");
                c.set_read_timeout(Some(Duration::from_secs(30)))
                    .expect("timeout");
                let mut w = c.try_clone().expect("clone");
                let sent = data.clone();
                let writer = thread::spawn(move || w.write_all(&sent).expect("write"));
                let mut got = vec![0u8; data.len()];
                std::io::Read::read_exact(&mut c, &mut got).expect("echo");
                writer.join().expect("writer");
                assert!(got == data, "conn {i}: echo");
            })
        })
        .collect();
    for h in handles {
        h.join().expect("connection");
    }
}

/// Established TCP connections whose local port is `port` (the edge's side of each HTTP/2
/// tunnel connection), from `/proc/net/tcp`.
fn tcp_established(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&local) && f[3] == "01"
        })
        .count()
}

#[test]
#[ignore = "needs a stock cloudflared: BURROW_CLOUDFLARED=/path/to/cloudflared, --ignored"]
fn stock_cloudflared_through_burrow_edge() {
    interop(Protocol::Quic);
}

#[test]
#[ignore = "needs a stock cloudflared: BURROW_CLOUDFLARED=/path/to/cloudflared, --ignored"]
fn stock_cloudflared_over_http2_through_burrow_edge() {
    interop(Protocol::Http2);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Quic,
    Http2,
}

fn interop(protocol: Protocol) {
    let cfd = cloudflared();
    let over_quic = protocol == Protocol::Quic;
    let _range = over_quic.then(PingRange::open_to_all);
    let started = Instant::now();
    let name = if over_quic { "interop" } else { "interop-h2" };
    let bed = Testbed::create(Path::new(BIN), name, "app", &[APP, WS]).expect("tunnel");
    let (ws_ends_tx, ws_ends) = std::sync::mpsc::channel();
    let (http_origin, ws_origin) = (origin(), ws_origin(ws_ends_tx));
    let (tcp_origin, udp_origin) = (tcp_echo(), udp_echo());
    let (tcp_map, udp_map, icmp_map) = (
        testbed::free_tcp().expect("port"),
        testbed::free_udp().expect("port"),
        testbed::free_udp().expect("port"),
    );
    let quic = testbed::free_udp().expect("port");
    let eo = EdgeOpts {
        // All addresses, so that cloudflared can reach it at 4 loopback addresses (one
        // connection each).
        quic: SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), quic.port()),
        http: testbed::free_tcp().expect("port"),
        tcp_maps: vec![format!("{tcp_map}=app:{tcp_origin}")],
        udp_maps: vec![format!("{udp_map}=app:{udp_origin}")],
        icmp_maps: vec![format!("{icmp_map}=app")],
        extra: Vec::new(),
    };
    let edge = bed.edge(&eo).expect("edge");
    let v6 = UdpSocket::bind("[::1]:0").is_ok();
    let mut extra = vec!["--icmpv4-src".to_owned(), "127.0.0.1".to_owned()];
    if v6 {
        extra.extend(["--icmpv6-src".to_owned(), "::1".to_owned()]);
    }
    if !over_quic {
        extra.extend(["--protocol".to_owned(), "http2".to_owned()]);
    }
    let co = ConnectorOpts {
        edge: eo.quic,
        metrics: testbed::free_tcp().expect("port"),
        ingress: vec![
            (Some(WS.into()), format!("http://127.0.0.1:{ws_origin}")),
            (Some(APP.into()), format!("http://127.0.0.1:{http_origin}")),
            (None, "http_status:404".into()),
        ],
        ha_connections: HA as u8,
        extra,
        config_extra: String::new(),
    };
    let mut cfd = bed.cloudflared(&cfd, &co).expect("cloudflared");
    wait_ready(co.metrics, HA, Duration::from_secs(30), &mut cfd);
    let http = eo.http.port();

    http_checks(http);
    websocket_checks(http, &ws_ends);
    tcp_checks(tcp_map);
    if over_quic {
        udp_echo_clients(udp_map, 16, 40);
        ping_both(icmp_map, v6);
    } else {
        // Every HA connection is on TCP, none on QUIC (no UDP session nor datagram exists).
        assert_eq!(tcp_established(eo.quic.port()), HA, "HTTP/2 connections");
    }
    assert_eq!(get(http, "nobody.test", "/").0, 404, "an unknown host");

    // Edge restart: cloudflared notices (idle timeout), reconnects all 4, serves again.
    drop(edge);
    testbed::wait_for(
        Duration::from_secs(30),
        "cloudflared to see the edge gone",
        || {
            cfd.check_alive()?;
            Ok(testbed::ready_connections(co.metrics).is_some_and(|n| n < HA))
        },
    )
    .expect("edge loss noticed");
    let _edge = bed.edge(&eo).expect("edge again");
    wait_ready(co.metrics, HA, Duration::from_secs(60), &mut cfd);
    assert_eq!(get(http, APP, "/").0, 200, "served after the restart");

    // SIGTERM with a request in flight: it completes, cloudflared exits cleanly.
    let slow = thread::spawn(move || get(http, APP, "/slow"));
    thread::sleep(Duration::from_millis(300));
    let pid = cfd.pid().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    assert_eq!(
        slow.join().expect("slow"),
        (200, b"slow done".to_vec()),
        "drained"
    );
    let status = cfd
        .wait_exit(Duration::from_secs(15))
        .expect("cloudflared exits");
    assert!(
        status.success(),
        "clean exit: {status:?}\n{}",
        cfd.log_tail(4000)
    );
    eprintln!(
        "interop with stock cloudflared over {protocol:?} took {:?}",
        started.elapsed()
    );
}
