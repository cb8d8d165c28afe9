//! Origin dial and TLS-handshake deadlines end to end (real `burrow edge` and `burrow tunnel
//! run` on loopback): the connector's own timers fail a request whose origin never finishes
//! connecting at the rule's `connectTimeout`, and one whose origin accepts TCP but never
//! answers the TLS handshake at its `tlsTimeout`: a 502, not earlier, and not a hang.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use burrow_tokio::testbed::{self, EdgeOpts, Proc, Testbed};

const BIN: &str = env!("CARGO_BIN_EXE_burrow");

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const TLS_TIMEOUT: Duration = Duration::from_secs(3);
/// How long after its deadline a failed request may take to come back through the tunnel:
/// anything near it is the deadline firing; a hang would be the driver's TCP retries (minutes).
const SLACK: Duration = Duration::from_secs(5);

/// An origin that accepts TCP connections and never says a word (holds them open).
fn silent_origin() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten() {
            held.push(s);
        }
    });
    addr
}

/// A listener with backlog 0 that never accepts, its accept queue filled: Linux drops every
/// further SYN to it (`tcp_abort_on_overflow` 0), so a connect to it never completes. The
/// listener and its queued connections live as long as the returned value.
fn unanswered_origin() -> (SocketAddr, socket2::Socket, Vec<socket2::Socket>) {
    use socket2::{Domain, Socket, Type};
    let l = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    l.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    l.listen(0).unwrap();
    let addr = l.local_addr().unwrap().as_socket().unwrap();
    let mut queued = Vec::new();
    for _ in 0..8 {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        if s.connect_timeout(&addr.into(), Duration::from_millis(500))
            .is_err()
        {
            // The queue is full: this SYN was dropped.
            return (addr, l, queued);
        }
        queued.push(s);
    }
    panic!("the accept queue of a backlog-0 listener never filled");
}

/// `GET /` with `host` through the edge's HTTP port: status, and how long it took.
fn get(http: SocketAddr, host: &str) -> (u16, Duration) {
    let start = Instant::now();
    let mut s = TcpStream::connect(http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, start.elapsed())
}

#[test]
fn origin_dial_and_tls_handshake_fail_at_their_deadlines() {
    let bed = Testbed::create(
        Path::new(BIN),
        "e2e-origin-deadlines",
        "app",
        &["tls.test", "dial.test", "other.test"],
    )
    .expect("tunnel");
    let silent = silent_origin();
    let (unanswered, _listener, _queued) = unanswered_origin();
    let eo = EdgeOpts::loopback().expect("ports");
    let _edge = bed.edge(&eo).expect("edge");
    let metrics = testbed::free_tcp().expect("port");
    let q = |s: &str| serde_json::Value::from(s).to_string();
    let config = bed.dir().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "tunnel: {id}\ncredentials-file: {creds}\ningress:\n\
             - hostname: tls.test\n  service: https://{silent}\n  originRequest:\n    tlsTimeout: {tls}s\n    noTLSVerify: true\n\
             - hostname: dial.test\n  service: http://{unanswered}\n  originRequest:\n    connectTimeout: {connect}s\n\
             - service: http_status:418\n",
            id = q(&bed.id),
            creds = q(&bed.credentials().to_string_lossy()),
            tls = TLS_TIMEOUT.as_secs(),
            connect = CONNECT_TIMEOUT.as_secs(),
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
            "--loglevel",
            "debug",
            "run",
        ]);
    let mut c =
        Proc::spawn("burrow tunnel run", cmd, bed.dir().join("connector.log")).expect("connector");
    testbed::wait_ready(&mut c, metrics, 1, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\nconnector: {}", c.log_tail(4000)));

    let (status, took) = get(eo.http, "tls.test");
    assert_eq!(status, 502, "{}", c.log_tail(4000));
    assert!(
        took >= TLS_TIMEOUT && took < TLS_TIMEOUT + SLACK,
        "the TLS handshake fails at tlsTimeout ({TLS_TIMEOUT:?}): took {took:?}"
    );

    let (status, took) = get(eo.http, "dial.test");
    assert_eq!(status, 502, "{}", c.log_tail(4000));
    assert!(
        took >= CONNECT_TIMEOUT && took < CONNECT_TIMEOUT + SLACK,
        "the dial fails at connectTimeout ({CONNECT_TIMEOUT:?}): took {took:?}"
    );
    // The connector still serves.
    assert_eq!(get(eo.http, "other.test").0, 418);
}
