//! The `socks-proxy` service end to end (real `burrow edge` and `burrow tunnel run` on
//! loopback): a SOCKS5 client speaking inside the eyeball's WebSocket (as cloudflared's
//! `access` carries it) connects to what the rule's `ipRules` allow, and is refused the rest
//! with SOCKS5's own reply codes, as cloudflared's socks-proxy answers. And cloudflared's
//! `proxyType: socks` on a TCP service (`--socks5` with `--url`, or the rule's option, on a
//! bastion too): the service is dialled and any CONNECT is answered with that connection.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use burrow_tokio::testbed::{EdgeOpts, Testbed};
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

mod common;
use common::origins::tcp_echo;

const BIN: &str = env!("CARGO_BIN_EXE_burrow");

type Ws = tungstenite::WebSocket<TcpStream>;

fn ws(http: SocketAddr, host: &str) -> Ws {
    ws_to(http, host, None)
}

/// The eyeball's WebSocket, with `Cf-Access-Jump-Destination: jump` if given.
fn ws_to(http: SocketAddr, host: &str, jump: Option<&str>) -> Ws {
    let tcp = TcpStream::connect(http).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!("ws://{host}/").into_client_request().unwrap();
    if let Some(j) = jump {
        req.headers_mut()
            .insert("Cf-Access-Jump-Destination", j.parse().unwrap());
    }
    let (ws, resp) = tungstenite::client(req, tcp).expect("handshake");
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

/// A TCP origin that greets each connection first, as an SSH server does, with the port it
/// sees the connection come from (`peer PORT\n`), then echoes.
fn banner_echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let peer = s.peer_addr().map(|a| a.port()).unwrap_or(0);
                if s.write_all(format!("peer {peer}\n").as_bytes()).is_err() {
                    return;
                }
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

/// Through a `proxyType: socks` TCP origin: the greeting, a CONNECT naming somewhere else
/// entirely, answered success from the address the origin sees (its banner comes after the
/// reply, never before), then bytes both ways; BIND is refused.
fn socks_over_tcp_origin(http: SocketAddr, host: &str, jump: Option<&str>) {
    let mut s = ws_to(http, host, jump);
    s.send(Message::Binary(vec![5, 1, 0].into())).unwrap();
    assert_eq!(
        read_n(&mut s, 2),
        [5, 0],
        "{host}: no authentication chosen"
    );
    let mut req = vec![5, 1, 0, 3, 16];
    req.extend(b"ignored.invalid\0");
    req.extend(9u16.to_be_bytes());
    s.send(Message::Binary(req.into())).unwrap();
    let banner_len = "peer 12345\n".len();
    let got = read_n(&mut s, 10 + banner_len - 1);
    let mut got = got;
    while !got.ends_with(b"\n") {
        got.extend(read_n(&mut s, 1));
    }
    assert_eq!(got[..8], [5, 0, 0, 1, 127, 0, 0, 1], "{host}: {got:?}");
    let bound = u16::from_be_bytes([got[8], got[9]]);
    assert_eq!(
        String::from_utf8_lossy(&got[10..]),
        format!("peer {bound}\n"),
        "{host}: the reply names the origin connection, and comes before the origin's bytes"
    );
    // In messages of at most 4 KiB: cloudflared's WebSocket reader drops what of a message
    // does not fit its caller's buffer (`websocket.Conn.Read`), which `cloudflared access`
    // never sends more than.
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 239) as u8).collect();
    for piece in data.chunks(4000) {
        s.send(Message::Binary(piece.to_vec().into())).unwrap();
    }
    assert!(
        read_n(&mut s, data.len()) == data,
        "{host}: echo came back whole"
    );

    let mut s = ws_to(http, host, jump);
    s.send(Message::Binary(vec![5, 1, 0].into())).unwrap();
    assert_eq!(read_n(&mut s, 2), [5, 0]);
    s.send(Message::Binary(vec![5, 2, 0, 1, 127, 0, 0, 1, 0, 9].into()))
        .unwrap();
    assert_eq!(
        read_n(&mut s, 10)[..2],
        [5, 7],
        "{host}: BIND not supported"
    );
}

#[test]
fn proxy_type_socks_puts_socks5_in_front_of_a_tcp_origin() {
    let bed = Testbed::create(
        Path::new(BIN),
        "e2e-socks-type",
        "app",
        &["rule.test", "jump.test", "plain.test"],
    )
    .expect("tunnel");
    let origin = banner_echo();
    let eo = EdgeOpts::loopback().expect("ports");
    let _edge = bed.edge(&eo).expect("edge");
    let (mut c, _metrics) = bed
        .connector_with_ingress(
            eo.quic,
            &format!(
                "- hostname: rule.test\n  service: tcp://{origin}\n  originRequest:\n    proxyType: socks\n\
                 - hostname: jump.test\n  service: bastion\n  originRequest:\n    proxyType: socks\n\
                 - hostname: plain.test\n  service: tcp://{origin}\n\
                 - service: http_status:404\n"
            ),
            &["--grace-period", "1s"],
        )
        .expect("connector");
    socks_over_tcp_origin(eo.http, "rule.test", None);
    socks_over_tcp_origin(eo.http, "jump.test", Some(&origin.to_string()));
    // Without proxyType the origin's bytes come straight away.
    let mut s = ws(eo.http, "plain.test");
    assert!(read_n(&mut s, 5).starts_with(b"peer "));
    c.check_alive().expect("connector alive");
    c.terminate(Duration::from_secs(30)).expect("stops");

    // The command line's `--url tcp://... --socks5`, and the same from stock cloudflared.
    let url = format!("tcp://{origin}");
    let flags = ["--url", url.as_str(), "--socks5"];
    let mut p = bed
        .connector_without_config(Path::new(BIN), eo.quic, &flags)
        .expect("burrow --socks5");
    socks_over_tcp_origin(eo.http, "rule.test", None);
    p.terminate(Duration::from_secs(30)).expect("stops");
    if let Some(cfd) = std::env::var_os("BURROW_CLOUDFLARED") {
        let mut flags = flags.to_vec();
        flags.extend(["--features", "support_datagram_v3_2", "--protocol", "quic"]);
        let mut p = bed
            .connector_without_config(Path::new(&cfd), eo.quic, &flags)
            .expect("cloudflared --socks5");
        socks_over_tcp_origin(eo.http, "rule.test", None);
        p.terminate(Duration::from_secs(30)).expect("stops");
    }
}
