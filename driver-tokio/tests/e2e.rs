//! End to end: the built `burrow` binary as processes (edge, connector, quickstart) over real
//! loopback sockets, real TLS and QUIC, with an origin served by this test.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_burrow");
const HOST: &str = "app.test";
/// The body of the quick large-body check.
const BIG: usize = 16 * 1024 * 1024;
/// The body the issue asks for, each way.
const HUGE: usize = 100 * 1024 * 1024;
/// Unit the 100 MiB bodies are generated and written in.
const BLOCK: usize = 1024 * 1024;

fn byte(i: usize) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

/// FNV-1a over 8-byte little-endian words (the last one zero-padded) and the length: cheap
/// enough for 100 MiB in a debug build, and position dependent, so reordering is caught.
#[derive(Default)]
struct Digest {
    h: u64,
    len: u64,
    partial: Vec<u8>,
}

impl Digest {
    fn new() -> Self {
        Self {
            h: 0xcbf2_9ce4_8422_2325,
            ..Self::default()
        }
    }

    fn word(&mut self, w: [u8; 8]) {
        self.h = (self.h ^ u64::from_le_bytes(w)).wrapping_mul(0x100_0000_01b3);
    }

    fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if !self.partial.is_empty() {
            let take = (8 - self.partial.len()).min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.partial.len() < 8 {
                return;
            }
            let w: [u8; 8] = self.partial[..].try_into().expect("8 bytes");
            self.partial.clear();
            self.word(w);
        }
        let mut words = data.chunks_exact(8);
        for w in &mut words {
            self.word(w.try_into().expect("8 bytes"));
        }
        self.partial.extend_from_slice(words.remainder());
    }

    /// `digest/len`, as the origin's `/sum` answers.
    fn finish(mut self) -> String {
        if !self.partial.is_empty() {
            let mut w = [0u8; 8];
            w[..self.partial.len()].copy_from_slice(&self.partial);
            self.word(w);
        }
        format!("{:016x}/{}", self.h, self.len)
    }
}

fn digest(data: &[u8]) -> String {
    let mut d = Digest::new();
    d.update(data);
    d.finish()
}

/// Word `k` of the 100 MiB pattern (splitmix64).
fn word(k: u64) -> [u8; 8] {
    let mut z = k.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)).to_le_bytes()
}

/// Bytes `[8 * first_word, ...)` of the pattern, `words` words long.
fn pattern(first_word: u64, words: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(words * 8);
    for k in 0..words as u64 {
        out.extend_from_slice(&word(first_word + k));
    }
    out
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_tcp() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn free_udp() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("burrow-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("dir");
    d
}

/// The origin: `/big` (16 MiB, fixed length), `/huge` (100 MiB of [`word`]s, fixed length),
/// `/sum` (digest of the request body, fixed or chunked), `/host` (the `Host` and
/// `X-Forwarded-Host` it was sent), `/slow` (answers after 1 s), anything else a small body.
fn origin() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            thread::spawn(move || serve(s));
        }
    });
    port
}

fn serve(s: TcpStream) {
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let mut w = s;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let (mut len, mut chunked) = (0u64, false);
        let (mut host, mut forwarded_host) = (String::new(), String::new());
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (name, value) = h.split_once(':').unwrap_or((h, ""));
            let (name, value) = (name.to_ascii_lowercase(), value.trim());
            match name.as_str() {
                "content-length" => len = value.parse().unwrap_or(0),
                "transfer-encoding" => chunked |= value.to_ascii_lowercase().contains("chunked"),
                "host" => host = value.to_owned(),
                "x-forwarded-host" => forwarded_host = value.to_owned(),
                _ => {}
            }
        }
        // The body is digested as it streams in: uploads may be 100 MiB.
        let mut sum = Digest::new();
        let mut buf = vec![0u8; 64 * 1024];
        if chunked {
            loop {
                let mut size = String::new();
                if r.read_line(&mut size).unwrap_or(0) == 0 {
                    return;
                }
                let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                let mut chunk = vec![0u8; n + 2];
                if r.read_exact(&mut chunk).is_err() {
                    return;
                }
                sum.update(&chunk[..n]);
                if n == 0 {
                    break;
                }
            }
        } else {
            while len > 0 {
                let n = buf.len().min(usize::try_from(len).unwrap_or(usize::MAX));
                if r.read_exact(&mut buf[..n]).is_err() {
                    return;
                }
                sum.update(&buf[..n]);
                len -= n as u64;
            }
        }
        let reply = |w: &mut TcpStream, b: &[u8]| {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", b.len());
            w.write_all(head.as_bytes()).is_ok() && w.write_all(b).is_ok()
        };
        let ok = match path.as_str() {
            "/big" => {
                let b: Vec<u8> = (0..BIG).map(byte).collect();
                reply(&mut w, &b)
            }
            "/huge" => {
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {HUGE}\r\n\r\n");
                w.write_all(head.as_bytes()).is_ok()
                    && (0..HUGE / BLOCK).all(|i| {
                        w.write_all(&pattern((i * BLOCK / 8) as u64, BLOCK / 8))
                            .is_ok()
                    })
            }
            "/sum" => reply(&mut w, sum.finish().as_bytes()),
            "/host" => reply(
                &mut w,
                format!("host={host};x-forwarded-host={forwarded_host}").as_bytes(),
            ),
            "/slow" => {
                thread::sleep(Duration::from_secs(1));
                reply(&mut w, b"slow done")
            }
            _ => reply(&mut w, b"hello from the origin"),
        };
        if !ok {
            return;
        }
    }
}

/// One request through the edge's public port; returns (status, body).
fn request(port: u16, head: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    s.write_all(head.as_bytes()).expect("write head");
    s.write_all(body).expect("write body");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read");
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("head end");
    let head = String::from_utf8_lossy(&out[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut body = out[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap_or("0").trim(), 16)
            .unwrap_or(0);
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
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
}

fn setup(name: &str) -> Setup {
    let dir = temp_dir(name);
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
    }
}

fn start_edge(s: &Setup) -> Kill {
    Kill(edge_command(s, "warn").spawn().expect("edge"))
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
            .args(["run", "--credentials-file"])
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
    let s = setup("http");
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
    let mut chunked = Vec::new();
    for piece in up.chunks(65_000) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let (status, body) = request(
        s.http,
        &format!("POST /sum HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"),
        &chunked,
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
    let start = Instant::now();
    let code = loop {
        if let Some(code) = connector.0.try_wait().expect("wait") {
            break code;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "connector did not exit"
        );
        thread::sleep(Duration::from_millis(50));
    };
    assert!(code.success(), "clean exit after draining: {code:?}");
    cleanup(&s.dir);
}

#[test]
fn edge_restart_reconnects() {
    let s = setup("restart");
    let edge = start_edge(&s);
    let _connector = start_connector(&s);
    assert!(wait_ready(s.metrics, 4, Duration::from_secs(30)));
    assert_eq!(get(s.http, "/").0, 200);
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

/// A WebSocket echo origin: echoes text and binary messages; the text `close-from-origin`
/// makes it start the closing handshake. How each connection ended goes to `ends`.
fn ws_origin(ends: std::sync::mpsc::Sender<String>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            let ends = ends.clone();
            thread::spawn(move || {
                let end = match tungstenite::accept(s) {
                    Ok(mut ws) => loop {
                        match ws.read() {
                            Ok(Message::Text(t)) if t.as_str() == "close-from-origin" => {
                                if let Err(e) = ws.close(None) {
                                    break format!("close failed: {e}");
                                }
                            }
                            Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                                if let Err(e) = ws.send(m) {
                                    break format!("send failed: {e}");
                                }
                            }
                            // Pings, pongs and the peer's Close are answered by tungstenite.
                            Ok(_) => {}
                            Err(tungstenite::Error::ConnectionClosed) => break "clean".into(),
                            Err(e) => break format!("read failed: {e}"),
                        }
                    },
                    Err(e) => format!("handshake failed: {e}"),
                };
                let _ = ends.send(end);
            });
        }
    });
    port
}

/// Text of about `n` bytes, multi-byte characters included.
fn text_of(n: usize) -> String {
    let mut t = String::new();
    for c in "héllo wörld, ✓ tunnel 🦀 ".chars().cycle() {
        if t.len() + c.len_utf8() > n {
            break;
        }
        t.push(c);
    }
    t
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
    let started = Instant::now();
    let mut s = setup("ws");
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

/// A TCP echo origin: echoes as it reads; after the client's FIN it sends `<len:digest>` of
/// everything it got, then closes. That tail can only arrive if the half-close went through.
fn tcp_echo_origin() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            thread::spawn(move || {
                let mut sum = Digest::new();
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            sum.update(&buf[..n]);
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                        Err(_) => return,
                    }
                }
                let _ = s.write_all(format!("<{}>", sum.finish()).as_bytes());
            });
        }
    });
    port
}

/// xorshift64*: test data that differs per connection.
fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

#[test]
fn tcp_map_echo_with_half_close() {
    let started = Instant::now();
    let s = setup("tcp");
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

/// Reads an HTTP/1.1 response, digesting its body as it streams (fixed length or chunked).
fn response_digest(s: TcpStream) -> (u16, String) {
    let mut r = BufReader::new(s);
    let mut status = 0;
    let (mut len, mut chunked) = (None::<u64>, false);
    loop {
        let mut line = String::new();
        assert!(r.read_line(&mut line).expect("head") > 0, "head ends early");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if status == 0 {
            status = line
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            continue;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().ok();
        }
        chunked |= lower.starts_with("transfer-encoding:") && lower.contains("chunked");
    }
    let mut sum = Digest::new();
    let mut buf = vec![0u8; 256 * 1024];
    if chunked {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).expect("chunk size");
            let mut n = u64::from_str_radix(size.trim(), 16).expect("chunk size");
            if n == 0 {
                break;
            }
            while n > 0 {
                let k = buf.len().min(n as usize);
                r.read_exact(&mut buf[..k]).expect("chunk");
                sum.update(&buf[..k]);
                n -= k as u64;
            }
            r.read_exact(&mut buf[..2]).expect("chunk end");
        }
    } else {
        let mut n = len.expect("a length or chunking");
        while n > 0 {
            let k = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            r.read_exact(&mut buf[..k]).expect("body");
            sum.update(&buf[..k]);
            n -= k as u64;
        }
    }
    (status, sum.finish())
}

#[test]
fn hundred_mib_bodies_both_ways() {
    let started = Instant::now();
    let s = setup("huge");
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

/// The rest of an exchange whose request was written already: (status, body as text).
fn request_reply(mut s: TcpStream) -> (u16, String) {
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read");
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("head end");
    let head = String::from_utf8_lossy(&out[..split]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (
        status,
        String::from_utf8_lossy(&out[split + 4..]).into_owned(),
    )
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
