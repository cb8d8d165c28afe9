//! The HTTP/2-only origin both daemons' `e2e_http2_origin.rs` test against (`http2Origin`),
//! and what they send it through the edge.
//!
//! The origin is the `h2` crate's server polled with a no-op waker on one thread per
//! connection, over a non-blocking socket: no async runtime, so that burrow-mio's tests (whose
//! tree has none) can use it as burrow-tokio's do. It answers every request
//! `version method authority path-and-query host=<Host> len=<body length> sum=<byte sum>`.

use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// rustls over a non-blocking socket, as h2 wants its I/O: ready or pending.
struct TlsIo {
    tls: rustls::ServerConnection,
    sock: TcpStream,
}

impl TlsIo {
    /// Writes rustls's records; pending while the socket takes no more.
    fn flush_tls(&mut self) -> Poll<io::Result<()>> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.sock) {
                Ok(_) => {}
                Err(e) if would_block(&e) => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for TlsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            match self.tls.reader().read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            let this = &mut *self;
            match this.tls.read_tls(&mut this.sock) {
                Ok(0) => return Poll::Ready(Ok(())),
                Ok(_) => {
                    if let Err(e) = this.tls.process_new_packets() {
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                    }
                }
                Err(e) if would_block(&e) => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = self.tls.writer().write(buf)?;
        if let Poll::Ready(Err(e)) = self.flush_tls() {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.flush_tls()
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tls.send_close_notify();
        self.flush_tls()
    }
}

/// A non-blocking socket as h2 wants its I/O (the cleartext origin, HTTP/2 prior knowledge).
struct PlainIo(TcpStream);

impl AsyncRead for PlainIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.0.read(buf.initialize_unfilled()) {
            Ok(n) => {
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            Err(e) if would_block(&e) => Poll::Pending,
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for PlainIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.0.write(buf) {
            Err(e) if would_block(&e) => Poll::Pending,
            r => Poll::Ready(r),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.0.shutdown(std::net::Shutdown::Write))
    }
}

/// A request the origin is reading: its head line, its body so far, where to answer.
struct Pending {
    head: String,
    body: h2::RecvStream,
    len: usize,
    sum: u64,
    respond: h2::server::SendResponse<Bytes>,
}

/// Serves one HTTP/2 connection until it ends. The waker is a no-op: the thread polls every
/// millisecond.
fn serve<T: AsyncRead + AsyncWrite + Unpin>(io: T) {
    let mut cx = Context::from_waker(Waker::noop());
    let mut handshake = Box::pin(h2::server::handshake(io));
    let mut conn = loop {
        match handshake.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(c)) => break c,
            // A client that speaks no HTTP/2 fails at the preface.
            Poll::Ready(Err(_)) => return,
            Poll::Pending => std::thread::sleep(Duration::from_millis(1)),
        }
    };
    let mut pending: Vec<Pending> = Vec::new();
    loop {
        match conn.poll_accept(&mut cx) {
            Poll::Ready(Some(Ok((req, respond)))) => {
                let (head, body) = req.into_parts();
                let head = format!(
                    "{:?} {} {} {} host={}",
                    head.version,
                    head.method,
                    head.uri.authority().map_or("-", |a| a.as_str()),
                    head.uri.path_and_query().map_or("-", |p| p.as_str()),
                    head.headers
                        .get("host")
                        .and_then(|h| h.to_str().ok())
                        .unwrap_or("-"),
                );
                pending.push(Pending {
                    head,
                    body,
                    len: 0,
                    sum: 0,
                    respond,
                });
                continue;
            }
            Poll::Ready(_) => return,
            Poll::Pending => {}
        }
        let mut i = 0;
        while i < pending.len() {
            let p = &mut pending[i];
            let ended = loop {
                match p.body.poll_data(&mut cx) {
                    Poll::Ready(Some(Ok(d))) => {
                        let _ = p.body.flow_control().release_capacity(d.len());
                        p.len += d.len();
                        p.sum += d.iter().map(|&b| u64::from(b)).sum::<u64>();
                    }
                    Poll::Ready(_) => break true,
                    Poll::Pending => break false,
                }
            };
            if !ended {
                i += 1;
                continue;
            }
            let mut p = pending.remove(i);
            let text = format!("{} len={} sum={}", p.head, p.len, p.sum);
            let response = http::Response::new(());
            if let Ok(mut send) = p.respond.send_response(response, false) {
                // h2 queues it and sends as the client's windows open.
                let _ = send.send_data(Bytes::from(text), true);
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The HTTP/2-only origin: TLS with ALPN `h2` and nothing else, self-signed (reach it with
/// `noTLSVerify`). Returns its address and a count of its TLS connections.
pub fn h2_origin() -> (SocketAddr, Arc<AtomicUsize>) {
    let (addr, conns, _) = h2_origin_watched();
    (addr, conns)
}

/// [`h2_origin`], with a count of its connections that ended too (the client closed them).
pub fn h2_origin_watched() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let key = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let config = Arc::new(config);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let ended = Arc::new(AtomicUsize::new(0));
    let count = conns.clone();
    let ends = ended.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut sock) = s else { return };
            let config = config.clone();
            let count = count.clone();
            let ends = ends.clone();
            std::thread::spawn(move || {
                let Ok(mut tls) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let _ = sock.set_read_timeout(Some(Duration::from_secs(10)));
                while tls.is_handshaking() {
                    // A client that offers no h2 is refused here (no ALPN in common).
                    if tls.complete_io(&mut sock).is_err() {
                        return;
                    }
                }
                count.fetch_add(1, Ordering::SeqCst);
                let _ = sock.set_nodelay(true);
                if sock.set_nonblocking(true).is_ok() {
                    serve(TlsIo { tls, sock });
                }
                ends.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, conns, ended)
}

/// The same origin in cleartext, telling which protocol a client speaks: HTTP/2 with prior
/// knowledge (h2c) is served as by [`h2_origin`]; an HTTP/1.1 request is answered
/// `HTTP/1.1 method target` (and the connection closed).
pub fn cleartext_origin() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut sock) = s else { return };
            std::thread::spawn(move || {
                let _ = sock.set_nodelay(true);
                let _ = sock.set_read_timeout(Some(Duration::from_secs(10)));
                // The HTTP/2 preface and a request line differ in their first bytes.
                let mut first = [0u8; 4];
                let mut seen = 0;
                while seen < first.len() {
                    match sock.peek(&mut first) {
                        Ok(0) | Err(_) => return,
                        Ok(n) if n == seen => std::thread::sleep(Duration::from_millis(1)),
                        Ok(n) => seen = n,
                    }
                }
                if &first == b"PRI " {
                    if sock.set_nonblocking(true).is_ok() {
                        serve(PlainIo(sock));
                    }
                    return;
                }
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match sock.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let mut line = head.split_whitespace();
                let (method, target) = (line.next().unwrap_or("-"), line.next().unwrap_or("-"));
                let text = format!("HTTP/1.1 {method} {target}");
                let _ = write!(
                    sock,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                    text.len()
                );
            });
        }
    });
    addr
}

/// One request through the edge: (status, body), the body dechunked.
pub fn send(http: SocketAddr, head: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out).into_owned();
    let status = super::client::status_of(&out);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or(("", ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        String::from_utf8_lossy(&super::client::dechunk(body.as_bytes())).into_owned()
    } else {
        body.to_owned()
    };
    (status, body)
}

/// With `--http2-origin --no-chunked-encoding` (the connector `name` serves `h2.test` from
/// [`h2_origin`], whose connections `conns` counts): a body the eyeball sends chunked, so of
/// no known length, reaches the origin whole, as cloudflared's Go transport sends it (DATA
/// frames, END_STREAM, no length), past HTTP/2's initial windows, on a new connection and on
/// the one it left reusable; that connection carries the next request too.
pub fn check_bare_body(name: &str, http: SocketAddr, conns: &AtomicUsize) {
    let upload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let sum: u64 = upload.iter().map(|&b| u64::from(b)).sum();
    for _ in 0..2 {
        let (status, body) = send(
            http,
            "POST /bare HTTP/1.1\r\nHost: h2.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            &super::client::chunked(&upload, 16 * 1024),
        );
        assert_eq!(status, 200, "{name}: {body}");
        assert_eq!(
            body,
            format!("HTTP/2.0 POST h2.test /bare host=- len=200000 sum={sum}"),
            "{name}"
        );
    }
    let (status, body) = send(
        http,
        "GET /after HTTP/1.1\r\nHost: h2.test\r\nConnection: close\r\n\r\n",
        b"",
    );
    assert_eq!(status, 200, "{name}: {body}");
    assert!(
        body.starts_with("HTTP/2.0 GET h2.test /after host=- len=0"),
        "{name}: {body}"
    );
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "{name}: the bare body left the HTTP/2 connection reusable"
    );
}

/// With `--http2-origin` and a cleartext [`cleartext_origin`] as `--url`: the request reaches
/// it in HTTP/1.1.
pub fn check_cleartext(name: &str, http: SocketAddr) {
    let (status, body) = send(
        http,
        "GET /plain HTTP/1.1\r\nHost: h2.test\r\nConnection: close\r\n\r\n",
        b"",
    );
    assert_eq!(status, 200, "{name}: {body}");
    assert_eq!(body, "HTTP/1.1 GET /plain", "{name}");
}

/// The checks both daemons pass against [`h2_origin`] through `http` (an eyeball port whose
/// catch-all rule has `http2Origin` and whose `h1.test` rule has not): a GET with a query, a
/// chunked 1,000,000-byte upload larger than HTTP/2's windows, a second GET on the same HTTP/2
/// connection, and a 502 from the rule that speaks HTTP/1.1 to the HTTP/2-only origin.
pub fn check_requests(http: SocketAddr, conns: &AtomicUsize) {
    let (status, body) = send(
        http,
        "GET /path?q=1 HTTP/1.1\r\nHost: h2.test\r\nConnection: close\r\n\r\n",
        b"",
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("HTTP/2.0 GET h2.test /path?q=1 host=- len=0 sum=0"),
        "{body}"
    );

    // A body both ways, streamed (chunked from the eyeball), larger than HTTP/2's windows.
    let upload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let sum: u64 = upload.iter().map(|&b| u64::from(b)).sum();
    let (status, body) = send(
        http,
        "POST /upload HTTP/1.1\r\nHost: h2.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        &super::client::chunked(&upload, 16 * 1024),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        format!("HTTP/2.0 POST h2.test /upload host=- len=1000000 sum={sum}")
    );
    let (status, body) = send(
        http,
        "GET /again HTTP/1.1\r\nHost: h2.test\r\nConnection: close\r\n\r\n",
        b"",
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("HTTP/2.0 GET h2.test /again"), "{body}");
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "sequential requests share one HTTP/2 connection"
    );

    // Without http2Origin the origin is spoken to in HTTP/1.1, which it refuses.
    let (status, _) = send(
        http,
        "GET / HTTP/1.1\r\nHost: h1.test\r\nConnection: close\r\n\r\n",
        b"",
    );
    assert_eq!(status, 502);
}

/// With `keepAliveTimeout: 2s` on the rule that speaks HTTP/2 to [`h2_origin_watched`]
/// (`conns` made, `ended`): the connector `name` closes the origin connection once idle for
/// 2 s, as cloudflared's Go transport does (`IdleConnTimeout`), and not before; two requests
/// in a row share it, and a request after the close opens a new one.
pub fn check_idle_close(name: &str, http: SocketAddr, conns: &AtomicUsize, ended: &AtomicUsize) {
    let (c0, e0) = (conns.load(Ordering::SeqCst), ended.load(Ordering::SeqCst));
    let get = |path: &str| {
        let head = format!("GET {path} HTTP/1.1\r\nHost: h2.test\r\nConnection: close\r\n\r\n");
        let (status, body) = send(http, &head, b"");
        assert_eq!(status, 200, "{name}: {body}");
        assert!(
            body.starts_with(&format!("HTTP/2.0 GET h2.test {path}")),
            "{name}: {body}"
        );
    };
    get("/one");
    get("/two");
    assert_eq!(
        conns.load(Ordering::SeqCst),
        c0 + 1,
        "{name}: one connection for both"
    );
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        ended.load(Ordering::SeqCst),
        e0,
        "{name}: still open 1 s after"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ended.load(Ordering::SeqCst) == e0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        ended.load(Ordering::SeqCst),
        e0 + 1,
        "{name}: closed once idle"
    );
    get("/three");
    assert_eq!(
        conns.load(Ordering::SeqCst),
        c0 + 2,
        "{name}: a new connection after"
    );
}
