//! `ssh://`, `rdp://`, `smb://`, `tcp://` services end to end: an eyeball WebSocket (what
//! `cloudflared access tcp` opens) through `burrow edge` and `burrow tunnel run` on loopback,
//! bridged to a raw TCP echo origin as cloudflared does: the 101 with Sec-WebSocket-Accept,
//! binary frames of any size both ways, pings answered, plain HTTP refused.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use burrow_tokio::testbed::{self, EdgeOpts, Proc, Testbed};
use tungstenite::Message;

mod common;
use common::origins::tcp_echo;

const BIN: &str = env!("CARGO_BIN_EXE_burrow");

fn ws(http: SocketAddr, host: &str) -> tungstenite::WebSocket<TcpStream> {
    let tcp = TcpStream::connect(http).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let (ws, resp) = tungstenite::client(format!("ws://{host}/"), tcp).expect("handshake");
    assert_eq!(resp.status(), 101);
    ws
}

/// Reads binary messages until `n` bytes came back; pongs are returned apart.
fn read_bytes(ws: &mut tungstenite::WebSocket<TcpStream>, n: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
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

#[test]
fn tcp_services_bridge_websocket_to_raw_tcp() {
    let bed = Testbed::create(
        Path::new(BIN),
        "e2e-tcp-ws",
        "app",
        &["ssh.test", "tcp.test"],
    )
    .expect("tunnel");
    let echo = tcp_echo();
    let eo = EdgeOpts::loopback().expect("ports");
    let _edge = bed.edge(&eo).expect("edge");
    let metrics = testbed::free_tcp().expect("port");
    let q = |s: &str| serde_json::Value::from(s).to_string();
    let config = bed.dir().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "tunnel: {id}\ncredentials-file: {creds}\ningress:\n\
             - hostname: ssh.test\n  service: ssh://{echo}\n\
             - hostname: tcp.test\n  service: tcp://{echo}\n\
             - service: http_status:404\n",
            id = q(&bed.id),
            creds = q(&bed.credentials().to_string_lossy()),
        ),
    )
    .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["tunnel", "--config"])
        .arg(&config)
        .args(["--edge", &eo.quic.to_string(), "--cacert"])
        .arg(bed.ca())
        .args([
            "--metrics",
            &metrics.to_string(),
            "--ha-connections",
            "1",
            "run",
        ]);
    let mut c =
        Proc::spawn("burrow tunnel run", cmd, bed.dir().join("connector.log")).expect("connector");
    testbed::wait_ready(&mut c, metrics, 1, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\nconnector: {}", c.log_tail(4000)));

    let mut s = ws(eo.http, "ssh.test");
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

    let mut t = ws(eo.http, "tcp.test");
    t.send(Message::Binary(b"x".to_vec().into())).unwrap();
    assert_eq!(read_bytes(&mut t, 1).0, b"x");

    // A plain HTTP request to a TCP service is refused (cloudflared's client speaks WebSocket).
    let mut h = TcpStream::connect(eo.http).unwrap();
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
