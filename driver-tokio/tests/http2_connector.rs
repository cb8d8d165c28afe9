//! `burrow tunnel run --protocol http2` over real loopback TCP and TLS, against a minimal edge
//! built in the test from core's HTTP/2 edge machine and control server (so the connector's
//! driver is checked even where `burrow edge` is not involved): registration, a 16 MiB
//! download checked byte by byte, and an upload whose digest the origin returns.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burrow_core::control::edge::{ControlServer, EdgeControlEvent};
use burrow_core::control::ConnectionDetails;
use burrow_core::http2::{
    tls, EdgeConnection, Event, Input, Limits, Output, Read as H2Read, RequestKind, StreamId,
};
use burrow_core::quic::tls::PostQuantum;
use bytes::Bytes;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

mod common;
use common::body::{byte, digest, BIG};
use common::origins::origin;

const BIN: &str = env!("CARGO_BIN_EXE_burrow");

/// Kills the connector however the test ends.
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The test edge: one HTTP/2 connection from the connector, pumped over a non-blocking socket.
struct Edge {
    sock: TcpStream,
    conn: EdgeConnection,
    control: ControlServer,
    control_stream: Option<StreamId>,
    registered: bool,
    buf: Vec<u8>,
}

impl Edge {
    /// Moves bytes both ways once and serves the control stream; returns the events.
    fn pump(&mut self) -> Vec<Event> {
        let now = Instant::now();
        let mut events = Vec::new();
        match self.sock.read(&mut self.buf) {
            Ok(0) => panic!("connector closed the connection"),
            Ok(n) => {
                let mut at = 0;
                while at < n {
                    at += self
                        .conn
                        .handle_input(now, Input::Received(&self.buf[at..n]));
                    self.flush(now, &mut events);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => panic!("edge read: {e}"),
        }
        self.flush(now, &mut events);
        if let Some(cs) = self.control_stream {
            while let Ok(H2Read::Data(b)) = self.conn.read(cs) {
                self.control.handle_bytes(&b).expect("control");
            }
            while let Some(ev) = self.control.poll_event() {
                if let EdgeControlEvent::RegisterRequested(r) = ev {
                    assert!(r.origin_local_ip.is_some_and(|ip| ip.is_loopback()));
                    self.control
                        .respond_registration(Ok(ConnectionDetails {
                            uuid: uuid::Uuid::from_u128(5),
                            location: "TST".into(),
                            remotely_managed: true,
                        }))
                        .expect("answer");
                    self.registered = true;
                }
            }
            if let Some(out) = self.control.poll_transmit() {
                self.conn.send_data(cs, Bytes::from(out)).expect("control");
            }
            self.flush(now, &mut events);
        }
        events
    }

    fn flush(&mut self, now: Instant, events: &mut Vec<Event>) {
        let mut out = [0u8; 16 * 1024];
        loop {
            match self.conn.poll_output(now) {
                Output::Event(Event::Connected) => {
                    self.control_stream = Some(self.conn.open_control_stream().expect("open"));
                }
                Output::Event(e) => events.push(e),
                Output::Transmit => {
                    let n = self.conn.transmit(&mut out);
                    self.sock.set_nonblocking(false).expect("blocking");
                    self.sock.write_all(&out[..n]).expect("edge write");
                    self.sock.set_nonblocking(true).expect("nonblocking");
                }
                Output::Timeout(_) => return,
            }
        }
    }

    /// Pumps until `stream`'s whole response body is in; returns status and body.
    fn response(&mut self, stream: StreamId, limit: Duration) -> (u16, Vec<u8>) {
        let start = Instant::now();
        let mut status = None;
        let mut body = Vec::new();
        while start.elapsed() < limit {
            for ev in self.pump() {
                if let Event::Response {
                    stream: s,
                    response,
                } = ev
                {
                    if s == stream {
                        status = Some(response.expect("head").status.as_u16());
                    }
                }
            }
            if status.is_some() {
                loop {
                    match self.conn.read(stream) {
                        Ok(H2Read::Data(b)) => body.extend_from_slice(&b),
                        Ok(H2Read::Finished) => return (status.unwrap_or(0), body),
                        _ => break,
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!(
            "no complete response within {limit:?} ({} bytes)",
            body.len()
        );
    }
}

#[test]
fn http2_connector_registers_and_serves_over_real_tcp_and_tls() {
    let dir = std::env::temp_dir().join(format!("burrow-h2conn-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let cert = rcgen::CertificateParams::new(vec![tls::SERVER_NAME.into()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    std::fs::write(dir.join("ca.pem"), cert.pem()).expect("ca");
    let der = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let server: Arc<rustls::ServerConfig> =
        tls::server_config(vec![cert.der().clone()], der, PostQuantum::Prefer).expect("tls");
    let id = "8c5e9d8a-3c4f-4b46-9a43-5d2f4a6b7c81";
    std::fs::write(
        dir.join("creds.json"),
        format!(
            r#"{{"AccountTag":"acct","TunnelSecret":"{}","TunnelID":"{id}"}}"#,
            "A".repeat(44)
        ),
    )
    .expect("creds");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let origin = origin();
    let _child = Kill(
        Command::new(BIN)
            .args(["tunnel", "--edge", &format!("127.0.0.1:{port}"), "--cacert"])
            .arg(dir.join("ca.pem"))
            .args(["--ha-connections", "1", "--loglevel", "warn"])
            .args(["--metrics", "127.0.0.1:0", "run", "--protocol", "http2"])
            .arg("--credentials-file")
            .arg(dir.join("creds.json"))
            .args(["--url", &format!("http://127.0.0.1:{origin}"), id])
            .stdout(Stdio::null())
            .spawn()
            .expect("connector"),
    );
    let (sock, _) = listener.accept().expect("the connector dials TCP");
    sock.set_nonblocking(true).expect("nonblocking");
    let mut edge = Edge {
        sock,
        conn: EdgeConnection::new(Instant::now(), server, Limits::default()).expect("edge"),
        control: ControlServer::new(),
        control_stream: None,
        registered: false,
        buf: vec![0; 64 * 1024],
    };
    let start = Instant::now();
    while !edge.registered {
        assert!(start.elapsed() < Duration::from_secs(20), "no registration");
        edge.pump();
        std::thread::sleep(Duration::from_millis(1));
    }

    // A 16 MiB download, every byte checked.
    let t = Instant::now();
    let req = http::Request::get("http://app.test/big")
        .body(())
        .expect("req");
    let s = edge.conn.open(RequestKind::Http, req, true).expect("open");
    let (status, body) = edge.response(s, Duration::from_secs(120));
    assert_eq!(status, 200);
    assert_eq!(body.len(), BIG);
    assert!(body.iter().enumerate().all(|(i, b)| *b == byte(i)));
    eprintln!("16 MiB download over http2 in {:?}", t.elapsed());

    // An upload without Content-Length (chunked to the origin), digested by the origin.
    let up: Vec<u8> = (0..3_000_017).map(|i| byte(i * 7)).collect();
    let req = http::Request::post("http://app.test/sum")
        .body(())
        .expect("req");
    let s = edge.conn.open(RequestKind::Http, req, false).expect("open");
    let mut at = 0;
    let start = Instant::now();
    while at < up.len() {
        assert!(start.elapsed() < Duration::from_secs(60), "upload stalled");
        let end = (at + 100_000).min(up.len());
        at += edge
            .conn
            .send_data(s, Bytes::copy_from_slice(&up[at..end]))
            .expect("send");
        edge.pump();
    }
    edge.conn.finish(s, None).expect("finish");
    let (status, body) = edge.response(s, Duration::from_secs(60));
    assert_eq!(status, 200);
    assert_eq!(String::from_utf8_lossy(&body), digest(&up));

    let _ = std::fs::remove_dir_all(&dir);
}
