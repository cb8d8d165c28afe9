//! Origins whose dial never finishes, for the connector's dial and TLS-handshake deadlines:
//! one that accepts TCP and never speaks (a TLS handshake never ends), one whose connect
//! never completes (a full accept queue: Linux drops the SYN).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

/// How long after its deadline a failed request may take to come back through the tunnel:
/// anything near it is the deadline firing; a hang would be the kernel's SYN retries or an
/// unanswered handshake (minutes).
pub const SLACK: Duration = Duration::from_secs(5);

/// An origin that accepts TCP connections and never says a word (holds them open).
pub fn silent_origin() -> SocketAddr {
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
/// listener and its queued connections live as long as the returned sockets.
pub fn unanswered_origin() -> (SocketAddr, Vec<socket2::Socket>) {
    use socket2::{Domain, Socket, Type};
    let l = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    l.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    l.listen(0).unwrap();
    let addr = l.local_addr().unwrap().as_socket().unwrap();
    let mut held = vec![l];
    for _ in 0..8 {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        if s.connect_timeout(&addr.into(), Duration::from_millis(500))
            .is_err()
        {
            // The queue is full: this SYN was dropped.
            return (addr, held);
        }
        held.push(s);
    }
    panic!("the accept queue of a backlog-0 listener never filled");
}

/// `GET /` with `host` through the edge's HTTP port: the status, and how long it took.
pub fn timed_get(http: SocketAddr, host: &str) -> (u16, Duration) {
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
    let status = super::client::status_of(&out);
    (status, start.elapsed())
}

/// A request to `host` fails (502) after `deadline`, not earlier, and without hanging.
pub fn fails_at(http: SocketAddr, host: &str, deadline: Duration, log: impl Fn() -> String) {
    let (status, took) = timed_get(http, host);
    assert_eq!(status, 502, "{host}: {}", log());
    assert!(
        took >= deadline && took < deadline + SLACK,
        "{host} fails at its deadline ({deadline:?}): took {took:?}\n{}",
        log()
    );
}
