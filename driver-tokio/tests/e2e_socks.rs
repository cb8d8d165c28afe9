//! The `socks-proxy` service end to end (real `burrow edge` and `burrow tunnel run` on
//! loopback): a SOCKS5 client speaking inside the eyeball's WebSocket (as cloudflared's
//! `access` carries it) connects to what the rule's `ipRules` allow, and is refused the rest
//! with SOCKS5's own reply codes, as cloudflared's socks-proxy answers.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use burrow_tokio::testbed::{EdgeOpts, Testbed};
use tungstenite::Message;

mod common;
use common::origins::tcp_echo;

const BIN: &str = env!("CARGO_BIN_EXE_burrow");

type Ws = tungstenite::WebSocket<TcpStream>;

fn ws(http: SocketAddr, host: &str) -> Ws {
    let tcp = TcpStream::connect(http).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let (ws, resp) = tungstenite::client(format!("ws://{host}/"), tcp).expect("handshake");
    assert_eq!(resp.status(), 101);
    ws
}

fn read_n(s: &mut Ws, n: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < n {
        match s.read().expect("read") {
            Message::Binary(b) => got.extend_from_slice(&b),
            other => panic!("unexpected {other:?}"),
        }
    }
    got
}

/// Greeting (no authentication) and CONNECT to `dest`: the 10-byte IPv4 reply.
fn socks_connect(s: &mut Ws, dest: SocketAddr) -> Vec<u8> {
    s.send(Message::Binary(vec![5, 1, 0].into())).unwrap();
    assert_eq!(read_n(s, 2), [5, 0], "no authentication chosen");
    let SocketAddr::V4(v4) = dest else {
        panic!("IPv4 only here")
    };
    let mut req = vec![5, 1, 0, 1];
    req.extend(v4.ip().octets());
    req.extend(v4.port().to_be_bytes());
    s.send(Message::Binary(req.into())).unwrap();
    read_n(s, 10)
}

#[test]
fn socks5_over_websocket_connects_where_ip_rules_allow() {
    let bed = Testbed::create(
        Path::new(BIN),
        "e2e-socks",
        "app",
        &["socks.test", "closed.test"],
    )
    .expect("tunnel");
    let echo = tcp_echo();
    // A port nothing listens on (bound a moment ago, then closed).
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let eo = EdgeOpts::loopback().expect("ports");
    let _edge = bed.edge(&eo).expect("edge");
    let (mut c, _metrics) = bed
        .connector_with_ingress(
            eo.quic,
            &format!(
                "- hostname: socks.test\n  service: socks-proxy\n  originRequest:\n    ipRules:\n\
                 \x20     - prefix: 127.0.0.0/8\n        ports: [{echo_port}, {closed_port}]\n        allow: true\n\
                 - hostname: closed.test\n  service: socks-proxy\n\
                 - service: http_status:404\n",
                echo_port = echo.port(),
                closed_port = closed.port(),
            ),
            &[],
        )
        .expect("connector");

    // Allowed: success with the connector's local address, then the echo, bytes intact.
    let mut s = ws(eo.http, "socks.test");
    let reply = socks_connect(&mut s, echo);
    assert_eq!(reply[..4], [5, 0, 0, 1], "{reply:?}");
    assert_eq!(reply[4..8], [127, 0, 0, 1]);
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 241) as u8).collect();
    s.send(Message::Binary(data.clone().into())).unwrap();
    assert!(read_n(&mut s, data.len()) == data, "echo came back whole");

    // Allowed but nobody listening: connection refused (5).
    let mut s = ws(eo.http, "socks.test");
    assert_eq!(socks_connect(&mut s, closed)[..2], [5, 5]);

    // Port not in the rule, and a rule with no ipRules at all: not allowed by ruleset (2).
    let mut s = ws(eo.http, "socks.test");
    let other = SocketAddr::from(([127, 0, 0, 1], 9));
    assert_eq!(socks_connect(&mut s, other)[..2], [5, 2]);
    let mut s = ws(eo.http, "closed.test");
    assert_eq!(socks_connect(&mut s, echo)[..2], [5, 2]);
    c.check_alive().expect("connector alive");
}
