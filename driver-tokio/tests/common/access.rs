//! The eyeball side of TCP over WebSocket (what `cloudflared access` opens) and the checks of
//! the `ssh://`/`tcp://`, `bastion` and `socks-proxy` services, run against either connector
//! through `burrow edge`'s HTTP listener.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

/// The eyeball's WebSocket.
pub type Ws = tungstenite::WebSocket<TcpStream>;

/// Opens the eyeball's WebSocket to `host` through the edge at `http`, with
/// `Cf-Access-Jump-Destination: jump` if given. Err: the status of a refused upgrade.
pub fn ws_to(http: SocketAddr, host: &str, jump: Option<&str>) -> Result<Ws, u16> {
    let tcp = TcpStream::connect(http).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!("ws://{host}/").into_client_request().unwrap();
    if let Some(j) = jump {
        req.headers_mut()
            .insert("Cf-Access-Jump-Destination", j.parse().unwrap());
    }
    match tungstenite::client(req, tcp) {
        Ok((ws, resp)) => {
            assert_eq!(resp.status(), 101);
            Ok(ws)
        }
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            Err(resp.status().as_u16())
        }
        Err(e) => panic!("handshake: {e}"),
    }
}

/// The same, upgraded or the test fails.
pub fn ws(http: SocketAddr, host: &str) -> Ws {
    ws_to(http, host, None).expect("upgrade")
}

/// Reads binary messages until `n` bytes came back; pongs are returned apart.
pub fn read_bytes(ws: &mut Ws, n: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut got = Vec::new();
    let mut pongs = Vec::new();
    while got.len() < n {
        match ws.read().expect("read") {
            Message::Binary(b) => got.extend_from_slice(&b),
            Message::Pong(p) => pongs.push(p.to_vec()),
            other => panic!("unexpected {other:?}"),
        }
    }
    (got, pongs)
}

/// Reads binary messages until `n` bytes came back (nothing else may come).
pub fn read_n(s: &mut Ws, n: usize) -> Vec<u8> {
    let (got, pongs) = read_bytes(s, n);
    assert!(pongs.is_empty(), "unexpected pongs {pongs:?}");
    got
}

/// Sends `data` in one message and reads as many bytes back.
pub fn echo_once(s: &mut Ws, data: &[u8]) -> Vec<u8> {
    s.send(Message::Binary(data.to_vec().into())).unwrap();
    read_n(s, data.len())
}

/// Ingress for [`check_tcp_services`]: `ssh.test` and `tcp.test` to the TCP echo at `echo`.
pub fn tcp_services_ingress(echo: SocketAddr) -> String {
    format!(
        "- hostname: ssh.test\n  service: ssh://{echo}\n\
         - hostname: tcp.test\n  service: tcp://{echo}\n\
         - service: http_status:404\n"
    )
}

/// `ssh://` and `tcp://` services bridge the eyeball's WebSocket to raw TCP as cloudflared
/// does: the 101, binary frames of any size both ways, pings answered, plain HTTP refused.
pub fn check_tcp_services(http: SocketAddr) {
    let mut s = ws(http, "ssh.test");
    s.send(Message::Binary(b"SSH-2.0-test\r\n".to_vec().into()))
        .unwrap();
    assert_eq!(read_bytes(&mut s, 14).0, b"SSH-2.0-test\r\n");
    s.send(Message::Ping(b"are you there".to_vec().into()))
        .unwrap();
    // 1 MiB in one frame (64-bit length) and many small ones, every byte checked.
    let big: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 + i / 251) as u8).collect();
    s.send(Message::Binary(big.clone().into())).unwrap();
    for chunk in big.chunks(1000).take(50) {
        s.send(Message::Binary(chunk.to_vec().into())).unwrap();
    }
    let want: Vec<u8> = [&big[..], &big[..50_000]].concat();
    let (got, pongs) = read_bytes(&mut s, want.len());
    assert!(
        got == want,
        "the echo came back whole and in order ({} bytes)",
        got.len()
    );
    assert_eq!(pongs, [b"are you there".to_vec()], "our ping was answered");
    s.close(None).unwrap();

    let mut t = ws(http, "tcp.test");
    t.send(Message::Binary(b"x".to_vec().into())).unwrap();
    assert_eq!(read_bytes(&mut t, 1).0, b"x");

    // A plain HTTP request to a TCP service is refused (cloudflared's client speaks WebSocket).
    let mut h = TcpStream::connect(http).unwrap();
    h.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        h,
        "GET / HTTP/1.1\r\nHost: ssh.test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = h.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 502"), "{out}");
}

/// Ingress for [`check_bastion`]: `bastion.test` a bastion; `jump.test` names an ssh service,
/// but `bastionMode` makes it a bastion (as cloudflared).
pub const BASTION_INGRESS: &str = "- hostname: bastion.test\n  service: bastion\n\
     - hostname: jump.test\n  service: ssh://127.0.0.1:1\n  originRequest:\n    bastionMode: true\n\
     - service: http_status:404\n";

/// Bastion requests reach the TCP destination their `Cf-Access-Jump-Destination` names (TCP
/// echoes at `echo_a` and `echo_b`); without one the request fails.
pub fn check_bastion(http: SocketAddr, echo_a: SocketAddr, echo_b: SocketAddr) {
    // Two destinations behind one hostname, each reached by the request that names it.
    let mut a = ws_to(http, "bastion.test", Some(&echo_a.to_string())).expect("upgrade");
    assert_eq!(echo_once(&mut a, b"to a"), b"to a");
    let url = format!("ssh://{echo_b}/ignored");
    let mut b = ws_to(http, "bastion.test", Some(&url)).expect("upgrade");
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    assert!(echo_once(&mut b, &big) == big, "the echo came back whole");
    let mut j = ws_to(http, "jump.test", Some(&echo_a.to_string())).expect("upgrade");
    assert_eq!(echo_once(&mut j, b"via bastionMode"), b"via bastionMode");

    // No destination (or one without a port): the request fails, the eyeball gets no upgrade.
    assert_eq!(ws_to(http, "bastion.test", None).err(), Some(502));
    assert_eq!(
        ws_to(http, "bastion.test", Some("127.0.0.1")).err(),
        Some(502)
    );
    // The connection carries on.
    let mut again = ws_to(http, "bastion.test", Some(&echo_b.to_string())).expect("upgrade");
    assert_eq!(echo_once(&mut again, b"still"), b"still");
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

/// Ingress for [`check_socks_proxy`]: `socks.test` a socks-proxy allowed 127.0.0.0/8 at the
/// ports of `echo` and `closed`; `closed.test` one with no `ipRules`.
pub fn socks_proxy_ingress(echo: SocketAddr, closed: SocketAddr) -> String {
    format!(
        "- hostname: socks.test\n  service: socks-proxy\n  originRequest:\n    ipRules:\n\
         \x20     - prefix: 127.0.0.0/8\n        ports: [{echo_port}, {closed_port}]\n        allow: true\n\
         - hostname: closed.test\n  service: socks-proxy\n\
         - service: http_status:404\n",
        echo_port = echo.port(),
        closed_port = closed.port(),
    )
}

/// A port nothing listens on (bound a moment ago, then closed).
pub fn closed_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A SOCKS5 client inside the eyeball's WebSocket connects where the rule's `ipRules` allow
/// (the TCP echo at `echo`), and is refused the rest with SOCKS5's own reply codes.
pub fn check_socks_proxy(http: SocketAddr, echo: SocketAddr, closed: SocketAddr) {
    // Allowed: success with the connector's local address, then the echo, bytes intact.
    let mut s = ws(http, "socks.test");
    let reply = socks_connect(&mut s, echo);
    assert_eq!(reply[..4], [5, 0, 0, 1], "{reply:?}");
    assert_eq!(reply[4..8], [127, 0, 0, 1]);
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 241) as u8).collect();
    s.send(Message::Binary(data.clone().into())).unwrap();
    assert!(read_n(&mut s, data.len()) == data, "echo came back whole");

    // Allowed but nobody listening: connection refused (5).
    let mut s = ws(http, "socks.test");
    assert_eq!(socks_connect(&mut s, closed)[..2], [5, 5]);

    // Port not in the rule, and a rule with no ipRules at all: not allowed by ruleset (2).
    let mut s = ws(http, "socks.test");
    let other = SocketAddr::from(([127, 0, 0, 1], 9));
    assert_eq!(socks_connect(&mut s, other)[..2], [5, 2]);
    let mut s = ws(http, "closed.test");
    assert_eq!(socks_connect(&mut s, echo)[..2], [5, 2]);
}

/// The `connectTimeout` of [`socks_deadline_ingress`]'s rule.
pub const SOCKS_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Ingress for [`check_socks_dial_deadline`]: `slow.test` a socks-proxy allowed to reach
/// `unanswered` (whose connect never completes), with [`SOCKS_CONNECT_TIMEOUT`].
pub fn socks_deadline_ingress(unanswered: SocketAddr) -> String {
    format!(
        "- hostname: slow.test\n  service: socks-proxy\n  originRequest:\n    connectTimeout: {}s\n    ipRules:\n\
         \x20     - prefix: 127.0.0.0/8\n        ports: [{}]\n        allow: true\n\
         - service: http_status:404\n",
        SOCKS_CONNECT_TIMEOUT.as_secs(),
        unanswered.port(),
    )
}

/// A SOCKS5 CONNECT to `unanswered` (a connect that never completes) is answered "host
/// unreachable" (4) at the rule's `connectTimeout`, the connector's timer: not earlier, and
/// not after the kernel's SYN retries. The connector serves on.
pub fn check_socks_dial_deadline(http: SocketAddr, unanswered: SocketAddr) {
    use crate::common::stalled::SLACK;
    let mut s = ws(http, "slow.test");
    s.get_mut()
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let start = std::time::Instant::now();
    let reply = socks_connect(&mut s, unanswered);
    let took = start.elapsed();
    assert_eq!(reply[..2], [5, 4], "host unreachable: {reply:?}");
    assert!(
        took >= SOCKS_CONNECT_TIMEOUT && took < SOCKS_CONNECT_TIMEOUT + SLACK,
        "answered at connectTimeout ({SOCKS_CONNECT_TIMEOUT:?}): took {took:?}"
    );
    // Two at once each get their own deadline.
    let mut a = ws(http, "slow.test");
    let mut b = ws(http, "slow.test");
    a.get_mut()
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    b.get_mut()
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    assert_eq!(socks_connect(&mut a, unanswered)[..2], [5, 4]);
    assert_eq!(socks_connect(&mut b, unanswered)[..2], [5, 4]);
}

/// A TCP origin that greets each connection first, as an SSH server does, with the port it
/// sees the connection come from (`peer PORT\n`), then echoes.
pub fn banner_echo() -> SocketAddr {
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
pub fn socks_over_tcp_origin(http: SocketAddr, host: &str, jump: Option<&str>) {
    let mut s = ws_to(http, host, jump).expect("upgrade");
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

    let mut s = ws_to(http, host, jump).expect("upgrade");
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

/// Ingress for [`check_proxy_type_socks`]: `proxyType: socks` on a TCP rule and on a bastion,
/// and the same TCP origin (at `origin`, a [`banner_echo`]) without it.
pub fn proxy_type_socks_ingress(origin: SocketAddr) -> String {
    format!(
        "- hostname: rule.test\n  service: tcp://{origin}\n  originRequest:\n    proxyType: socks\n\
         - hostname: jump.test\n  service: bastion\n  originRequest:\n    proxyType: socks\n\
         - hostname: plain.test\n  service: tcp://{origin}\n\
         - service: http_status:404\n"
    )
}

/// `proxyType: socks` puts SOCKS5 in front of the TCP origin at `origin` (a [`banner_echo`]).
pub fn check_proxy_type_socks(http: SocketAddr, origin: SocketAddr) {
    socks_over_tcp_origin(http, "rule.test", None);
    socks_over_tcp_origin(http, "jump.test", Some(&origin.to_string()));
    // Without proxyType the origin's bytes come straight away.
    let mut s = ws(http, "plain.test");
    assert!(read_n(&mut s, 5).starts_with(b"peer "));
}
