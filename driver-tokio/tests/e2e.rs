//! End to end: the built `burrow` binary as processes (edge, connector, quickstart) over real
//! loopback sockets, real TLS and QUIC, with an origin served by this test.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use burrow_tokio::testbed;
use tungstenite::Message;

mod common;
use common::body::*;
use common::client::*;
use common::origins::*;

const BIN: &str = env!("CARGO_BIN_EXE_burrow");
const HOST: &str = "app.test";

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_tcp() -> u16 {
    testbed::free_tcp().expect("a free TCP port").port()
}

/// The edge takes this port on UDP (QUIC) and on TCP (HTTP/2), so it must be free on both.
fn free_udp() -> u16 {
    testbed::free_udp()
        .expect("a port free on UDP and TCP")
        .port()
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("burrow-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("dir");
    d
}

fn get(port: u16, path: &str) -> (u16, Vec<u8>) {
    request(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"),
        b"",
    )
}

fn ready(metrics: u16) -> Option<usize> {
    let mut s = TcpStream::connect(("127.0.0.1", metrics)).ok()?;
    s.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let body = out.split_once("\r\n\r\n")?.1;
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    v["readyConnections"].as_u64().map(|n| n as usize)
}

fn wait_ready(metrics: u16, n: usize, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if ready(metrics) == Some(n) {
            return true;
        }
        thread::sleep(Duration::from_millis(100));
    }
    false
}

struct Setup {
    dir: PathBuf,
    id: String,
    quic: u16,
    http: u16,
    metrics: u16,
    origin: u16,
    /// `--protocol` of the connector.
    protocol: &'static str,
}

fn setup(name: &str) -> Setup {
    setup_over(name, "quic")
}

/// A setup whose connector runs `--protocol protocol` (the edge serves QUIC and HTTP/2 on
/// the same port).
fn setup_over(name: &str, protocol: &'static str) -> Setup {
    let dir = temp_dir(&format!("{name}-{protocol}"));
    let out = Command::new(BIN)
        .args(["edge", "--dir"])
        .arg(&dir)
        .args(["tunnel", "create", "app", "--hostname", HOST])
        .output()
        .expect("create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("Created tunnel app with id "))
        .expect("id")
        .trim()
        .to_owned();
    Setup {
        dir,
        id,
        quic: free_udp(),
        http: free_tcp(),
        metrics: free_tcp(),
        origin: origin(),
        protocol,
    }
}

/// Starts the edge and waits until it serves HTTP (its tunnel port is bound by then). A port
/// that was free when the test picked it can be taken meanwhile by another test's outgoing
/// connection; the edge then exits with "cannot listen", and is started again.
fn start_edge(s: &Setup) -> Kill {
    for _ in 0..5 {
        let mut edge = Kill(edge_command(s, "warn").spawn().expect("edge"));
        let start = Instant::now();
        loop {
            if let Some(code) = edge.0.try_wait().expect("edge status") {
                eprintln!("the edge exited before serving ({code}); starting it again");
                thread::sleep(Duration::from_millis(500));
                break;
            }
            if s.dir.join("ca.pem").exists() && TcpStream::connect(("127.0.0.1", s.http)).is_ok() {
                return edge;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the edge did not serve HTTP within 20 s"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
    panic!("the edge could not start: its ports stayed taken");
}

fn edge_command(s: &Setup, loglevel: &str) -> Command {
    let mut c = Command::new(BIN);
    c.args(["edge", "--dir"])
        .arg(&s.dir)
        .args([
            "--listen",
            &format!("127.0.0.1:{}", s.quic),
            "--http",
            &format!("127.0.0.1:{}", s.http),
        ])
        .args(["--loglevel", loglevel])
        .stdout(Stdio::null());
    c
}

/// Starts the edge with `--tcp-map 127.0.0.1:0=app:DEST`; returns it and the port it bound,
/// read from its `TCP mapping listen=...` log line.
fn start_edge_tcp_map(s: &Setup, dest: &str) -> (Kill, u16) {
    let mut c = edge_command(s, "info");
    c.args(["--tcp-map", &format!("127.0.0.1:0=app:{dest}")])
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("edge");
    let stderr = child.stderr.take().expect("stderr");
    let edge = Kill(child);
    let (tx, rx) = std::sync::mpsc::channel();
    // Keeps draining so the edge never blocks on a full pipe.
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("no TCP mapping logged ({e}): {seen:#?}"));
        seen.push(line.clone());
        if !line.contains("TCP mapping") {
            continue;
        }
        let port = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("listen="))
            .and_then(|a| a.rsplit_once(':'))
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        return (edge, port);
    }
}

fn start_connector(s: &Setup) -> Kill {
    start_connector_with(s, &["--url", &format!("http://127.0.0.1:{}", s.origin)])
}

/// A connector whose origin is given by `origin_args` (`--url ...` or `--config ...`).
fn start_connector_with(s: &Setup, origin_args: &[&str]) -> Kill {
    let ca = s.dir.join("ca.pem");
    // The CA appears once the edge has started.
    let start = Instant::now();
    while !ca.exists() && start.elapsed() < Duration::from_secs(10) {
        thread::sleep(Duration::from_millis(50));
    }
    Kill(
        Command::new(BIN)
            .args(["tunnel", "--edge", &format!("127.0.0.1:{}", s.quic)])
            .arg("--cacert")
            .arg(&ca)
            .args([
                "--metrics",
                &format!("127.0.0.1:{}", s.metrics),
                "--grace-period",
                "10s",
                "--loglevel",
                "warn",
            ])
            .args(["run", "--protocol", s.protocol, "--credentials-file"])
            .arg(s.dir.join(format!("{}.json", s.id)))
            .args(origin_args)
            .arg(&s.id)
            .stdout(Stdio::null())
            .spawn()
            .expect("connector"),
    )
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
}

/// The child's exit status; fails the test if it is still running after `limit`.
fn exit_within(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(code) = child.try_wait().expect("wait") {
            return code;
        }
        assert!(start.elapsed() < limit, "did not exit within {limit:?}");
        thread::sleep(Duration::from_millis(50));
    }
}

fn cleanup(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn quickstart_once_serves_hello_world() {
    let out = Command::new(BIN)
        .args(["quickstart", "--once", "--http", "127.0.0.1:0"])
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("registered 4 HA connections"), "{stdout}");
    assert!(stdout.contains("-> 200"), "{stdout}");
}

#[test]
fn http_through_the_tunnel_then_sigterm_drains() {
    http_through_the_tunnel_then_sigterm_drains_over("quic");
}

/// The request in flight at SIGTERM is answered over HTTP/2 too: its response reaches
/// `burrow edge` together with the connection's end.
#[test]
fn http_through_the_tunnel_then_sigterm_drains_http2() {
    http_through_the_tunnel_then_sigterm_drains_over("http2");
}

fn http_through_the_tunnel_then_sigterm_drains_over(protocol: &'static str) {
    let s = setup_over("http", protocol);
    let _edge = start_edge(&s);
    let mut connector = start_connector(&s);
    assert!(
        wait_ready(s.metrics, 4, Duration::from_secs(30)),
        "4 HA connections registered (/ready)"
    );

    // A large body, every byte checked.
    let (status, body) = get(s.http, "/big");
    assert_eq!(status, 200);
    assert_eq!(body.len(), BIG);
    assert!(
        body.iter().enumerate().all(|(i, b)| *b == byte(i)),
        "big body intact"
    );

    // A chunked upload.
    let up: Vec<u8> = (0..1_000_003).map(|i| byte(i * 7)).collect();
    let (status, body) = request(
        s.http,
        &format!("POST /sum HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"),
        &chunked(&up, 65_000),
    );
    assert_eq!(status, 200);
    assert_eq!(String::from_utf8_lossy(&body), digest(&up));

    // 50 concurrent requests.
    let handles: Vec<_> = (0..50)
        .map(|i| {
            let port = s.http;
            thread::spawn(move || get(port, &format!("/small/{i}")))
        })
        .collect();
    for h in handles {
        let (status, body) = h.join().expect("thread");
        assert_eq!(status, 200);
        assert_eq!(body, b"hello from the origin");
    }

    // SIGTERM with a request in flight: it completes, then the connector exits cleanly.
    let port = s.http;
    let slow = thread::spawn(move || get(port, "/slow"));
    thread::sleep(Duration::from_millis(300));
    signal(&connector.0, "-TERM");
    let (status, body) = slow.join().expect("thread");
    assert_eq!((status, body.as_slice()), (200, b"slow done".as_slice()));
    let code = exit_within(&mut connector.0, Duration::from_secs(15));
    assert!(code.success(), "clean exit after draining: {code:?}");
    cleanup(&s.dir);
}

#[test]
fn edge_restart_reconnects() {
    edge_restart_reconnects_over("quic");
}

#[test]
fn edge_restart_reconnects_http2() {
    edge_restart_reconnects_over("http2");
}

fn edge_restart_reconnects_over(protocol: &'static str) {
    let s = setup_over("restart", protocol);
    let edge = start_edge(&s);
    let _connector = start_connector(&s);
    assert!(wait_ready(s.metrics, 4, Duration::from_secs(30)));
    assert_eq!(get(s.http, "/").0, 200);

    // A stopped edge closes its connections: the connector sees it well within its 5 s idle
    // timeout, and the edge exits cleanly.
    let mut edge = edge;
    signal(&edge.0, "-TERM");
    assert!(
        wait_ready(s.metrics, 0, Duration::from_secs(3)),
        "the edge's closes reached the connector"
    );
    let code = exit_within(&mut edge.0, Duration::from_secs(10));
    assert!(code.success(), "edge exit: {code:?}");
    let edge = start_edge(&s);
    assert!(
        wait_ready(s.metrics, 4, Duration::from_secs(60)),
        "reconnected"
    );
    assert_eq!(get(s.http, "/").0, 200);

    // A crashed edge sends nothing: the idle timeout notices.
    drop(edge);
    assert!(
        wait_ready(s.metrics, 0, Duration::from_secs(15)),
        "connections noticed the dead edge"
    );
    let _edge = start_edge(&s);
    assert!(
        wait_ready(s.metrics, 4, Duration::from_secs(60)),
        "reconnected"
    );
    assert_eq!(get(s.http, "/").0, 200);
    cleanup(&s.dir);
}

fn ws_connect(port: u16) -> tungstenite::WebSocket<TcpStream> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let (ws, resp) = tungstenite::client(format!("ws://{HOST}/echo"), tcp).expect("handshake");
    assert_eq!(resp.status(), 101);
    ws
}

/// Reads until the closing handshake is done and the edge closed the TCP connection.
fn ws_until_closed(ws: &mut tungstenite::WebSocket<TcpStream>) {
    loop {
        match ws.read() {
            Ok(Message::Close(_)) => {}
            Err(tungstenite::Error::ConnectionClosed) => return,
            other => panic!("expected the close handshake, got {other:?}"),
        }
    }
}

#[test]
fn websocket_echo_through_the_edge() {
    websocket_echo_through_the_edge_over("quic");
}

#[test]
fn websocket_echo_through_the_edge_http2() {
    websocket_echo_through_the_edge_over("http2");
}

fn websocket_echo_through_the_edge_over(protocol: &'static str) {
    let started = Instant::now();
    let mut s = setup_over("ws", protocol);
    let (ends_tx, ends) = std::sync::mpsc::channel();
    s.origin = ws_origin(ends_tx);
    let _edge = start_edge(&s);
    let _connector = start_connector(&s);
    assert!(wait_ready(s.metrics, 4, Duration::from_secs(30)));

    // The client closes.
    let mut ws = ws_connect(s.http);
    let sizes = [
        0, 1, 125, 126, 127, 65_535, 65_536, 65_537, 200_003, 1_048_579,
    ];
    for (i, &n) in sizes.iter().enumerate() {
        let text = text_of(n);
        ws.send(Message::text(text.clone())).expect("send text");
        match ws.read().expect("read") {
            Message::Text(t) => assert!(t.as_str() == text, "text echo of {n} bytes"),
            other => panic!("expected text, got {other:?}"),
        }
        let bin: Vec<u8> = (0..n).map(|j| byte(j * 31 + i)).collect();
        ws.send(Message::binary(bin.clone())).expect("send binary");
        match ws.read().expect("read") {
            Message::Binary(b) => assert!(b[..] == bin[..], "binary echo of {n} bytes"),
            other => panic!("expected binary, got {other:?}"),
        }
    }
    ws.close(None).expect("close");
    ws_until_closed(&mut ws);
    let end = ends
        .recv_timeout(Duration::from_secs(10))
        .expect("origin end");
    assert_eq!(end, "clean", "origin side of a client-initiated close");

    // The origin closes.
    let mut ws = ws_connect(s.http);
    ws.send(Message::text("close-from-origin")).expect("send");
    ws_until_closed(&mut ws);
    let end = ends
        .recv_timeout(Duration::from_secs(10))
        .expect("origin end");
    assert_eq!(end, "clean", "origin side of an origin-initiated close");
    cleanup(&s.dir);
    eprintln!("websocket e2e took {:?}", started.elapsed());
}

#[test]
fn tcp_map_echo_with_half_close() {
    tcp_map_echo_with_half_close_over("quic");
}

#[test]
fn tcp_map_echo_with_half_close_http2() {
    tcp_map_echo_with_half_close_over("http2");
}

fn tcp_map_echo_with_half_close_over(protocol: &'static str) {
    let started = Instant::now();
    let s = setup_over("tcp", protocol);
    let echo = tcp_echo_origin();
    let (_edge, port) = start_edge_tcp_map(&s, &format!("127.0.0.1:{echo}"));
    let _connector = start_connector(&s);
    assert!(wait_ready(s.metrics, 4, Duration::from_secs(30)));

    let handles: Vec<_> = (0..40u64)
        .map(|i| {
            thread::spawn(move || {
                // Sizes from nothing to 300 KiB, written in uneven pieces.
                let n = (random_bytes(i + 1000, 3)
                    .iter()
                    .fold(0usize, |a, &b| a * 256 + b as usize))
                    % (300 * 1024);
                let n = if i == 0 { 0 } else { n };
                let data = random_bytes(i, n);
                let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
                c.set_read_timeout(Some(Duration::from_secs(60)))
                    .expect("timeout");
                let mut w = c.try_clone().expect("clone");
                let sent = data.clone();
                let writer = thread::spawn(move || {
                    let mut at = 0;
                    let mut piece = 1 + (i as usize * 977) % 20_000;
                    while at < sent.len() {
                        let end = (at + piece).min(sent.len());
                        w.write_all(&sent[at..end]).expect("write");
                        at = end;
                        piece = piece * 3 % 40_000 + 1;
                    }
                    w.shutdown(std::net::Shutdown::Write).expect("half-close");
                });
                let mut got = Vec::new();
                c.read_to_end(&mut got).expect("read");
                writer.join().expect("writer");
                let tail = format!("<{}>", digest(&data));
                assert!(got.len() == data.len() + tail.len(), "conn {i}: length");
                assert!(got[..data.len()] == data[..], "conn {i}: echo");
                assert_eq!(
                    String::from_utf8_lossy(&got[data.len()..]),
                    tail,
                    "conn {i}: what the origin sent after the half-close"
                );
            })
        })
        .collect();
    for h in handles {
        h.join().expect("connection");
    }
    cleanup(&s.dir);
    eprintln!("tcp e2e took {:?}", started.elapsed());
}

#[test]
fn hundred_mib_bodies_both_ways() {
    hundred_mib_bodies_both_ways_over("quic");
}

#[test]
fn hundred_mib_bodies_both_ways_http2() {
    hundred_mib_bodies_both_ways_over("http2");
}

fn hundred_mib_bodies_both_ways_over(protocol: &'static str) {
    let started = Instant::now();
    let s = setup_over("huge", protocol);
    let _edge = start_edge(&s);
    let _connector = start_connector(&s);
    assert!(wait_ready(s.metrics, 4, Duration::from_secs(30)));
    let expected = {
        let mut d = Digest::new();
        for i in 0..HUGE / BLOCK {
            d.update(&pattern((i * BLOCK / 8) as u64, BLOCK / 8));
        }
        d.finish()
    };

    let t = Instant::now();
    let mut c = TcpStream::connect(("127.0.0.1", s.http)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(300)))
        .expect("timeout");
    c.write_all(
        format!("GET /huge HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .expect("request");
    assert_eq!(response_digest(c), (200, expected.clone()), "download");
    let down = t.elapsed();

    let t = Instant::now();
    let mut c = TcpStream::connect(("127.0.0.1", s.http)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(300)))
        .expect("timeout");
    c.write_all(
        format!("POST /sum HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {HUGE}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .expect("request");
    for i in 0..HUGE / BLOCK {
        c.write_all(&pattern((i * BLOCK / 8) as u64, BLOCK / 8))
            .expect("upload");
    }
    let (status, body) = request_reply(c);
    assert_eq!(
        (status, body),
        (200, expected),
        "upload digest at the origin"
    );
    let up = t.elapsed();
    cleanup(&s.dir);
    eprintln!(
        "100 MiB: download {down:?}, upload {up:?}, test {:?}",
        started.elapsed()
    );
}

/// Passes once `connector.rs` shares its dialer's ingress handle with the data streams
/// (`DataLimits::ingress`); until then core never sees the rules.
#[test]
fn origin_request_http_host_header_reaches_the_origin() {
    let started = Instant::now();
    let s = setup("hosthdr");
    let config = s.dir.join("config.yml");
    std::fs::write(
        &config,
        format!(
            "ingress:\n  - hostname: {HOST}\n    service: http://127.0.0.1:{}\n    originRequest:\n      httpHostHeader: origin.internal\n  - service: http_status:404\n",
            s.origin
        ),
    )
    .expect("config");
    let _edge = start_edge(&s);
    let config = config.to_string_lossy().into_owned();
    let _connector = start_connector_with(&s, &["--config", &config]);
    assert!(wait_ready(s.metrics, 4, Duration::from_secs(30)));
    let (status, body) = get(s.http, "/host");
    assert_eq!(status, 200);
    assert_eq!(
        String::from_utf8_lossy(&body),
        format!("host=origin.internal;x-forwarded-host={HOST}")
    );
    cleanup(&s.dir);
    eprintln!("httpHostHeader e2e took {:?}", started.elapsed());
}
