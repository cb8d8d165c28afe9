//! End to end: the built `burrow` binary as processes (edge, connector, quickstart) over real
//! loopback sockets, real TLS and QUIC, with an origin served by this test.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_burrow");
const HOST: &str = "app.test";
/// Kept at 16 MiB for debug builds; the bench program moves 100 MiB.
const BIG: usize = 16 * 1024 * 1024;

fn byte(i: usize) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
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

/// The origin: `/big` (16 MiB, fixed length), `/sum` (digest of the request body, fixed or
/// chunked), `/slow` (answers after 1 s), anything else a small body.
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
        let (mut len, mut chunked) = (0usize, false);
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
            if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }
        let mut body = Vec::new();
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
                body.extend_from_slice(&chunk[..n]);
                if n == 0 {
                    break;
                }
            }
        } else {
            body.resize(len, 0);
            if r.read_exact(&mut body).is_err() {
                return;
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
            "/sum" => reply(
                &mut w,
                format!("{:016x}/{}", fnv(&body), body.len()).as_bytes(),
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
    Kill(
        Command::new(BIN)
            .args(["edge", "--dir"])
            .arg(&s.dir)
            .args([
                "--listen",
                &format!("127.0.0.1:{}", s.quic),
                "--http",
                &format!("127.0.0.1:{}", s.http),
            ])
            .args(["--loglevel", "warn"])
            .stdout(Stdio::null())
            .spawn()
            .expect("edge"),
    )
}

fn start_connector(s: &Setup) -> Kill {
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
            .args(["--url", &format!("http://127.0.0.1:{}", s.origin), &s.id])
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
    assert_eq!(
        String::from_utf8_lossy(&body),
        format!("{:016x}/{}", fnv(&up), up.len())
    );

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
