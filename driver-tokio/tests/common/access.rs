//! The eyeball side of TCP over WebSocket (what `cloudflared access` opens) and the checks of
//! the `ssh://`/`tcp://`, `bastion` and `socks-proxy` services, run against either connector
//! through `burrow edge`'s HTTP listener.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
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
