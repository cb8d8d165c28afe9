//! `http2Origin: true` through burrow-mio (real `burrow edge` on loopback): an origin that
//! speaks only HTTP/2 (TLS with ALPN `h2` and nothing else, self-signed, reached with
//! `noTLSVerify`) answers requests sent through the tunnel, bodies both ways, on one HTTP/2
//! connection; the same origin under a rule without `http2Origin` fails (502). The checks are
//! those of burrow-tokio's `e2e_http2_origin.rs`.
//!
//! The origin is the `h2` crate's server polled with a no-op waker on one thread per
//! connection, over rustls on a non-blocking socket: no async runtime in burrow-mio's tree,
//! tests included.

use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[path = "../../driver-tokio/tests/common/mod.rs"]
mod common;
mod harness;
#[allow(dead_code)]
#[path = "../../driver-tokio/src/testbed.rs"]
mod testbed;

use harness::{burrow, MIO};
use testbed::{EdgeOpts, Testbed};

/// rustls over a non-blocking socket, as h2 wants its I/O: ready or pending.
struct TlsIo {
    tls: rustls::ServerConnection,
    sock: TcpStream,
}

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
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

/// A request the origin is reading: its head line, its body so far, where to answer.
struct Pending {
    head: String,
    body: h2::RecvStream,
    len: usize,
    sum: u64,
    respond: h2::server::SendResponse<Bytes>,
}

/// Serves one HTTP/2 connection until it ends.
fn serve(tls: rustls::ServerConnection, sock: TcpStream) {
    let mut cx = Context::from_waker(Waker::noop());
    let mut handshake = Box::pin(h2::server::handshake(TlsIo { tls, sock }));
    let mut conn = loop {
        match handshake.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(c)) => break c,
            // A client that offers no h2 fails at the HTTP/2 preface.
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

/// The HTTP/2-only origin: answers `version method authority path-and-query host=<Host>
/// len=<body length> sum=<byte sum>`. Returns its address and a count of its TLS connections.
fn h2_origin() -> (SocketAddr, Arc<AtomicUsize>) {
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
    let count = conns.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut sock) = s else { return };
            let config = config.clone();
            let count = count.clone();
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
                    serve(tls, sock);
                }
            });
        }
    });
    (addr, conns)
}

/// One request through the edge: (status, body).
fn send(http: SocketAddr, head: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out).into_owned();
    let status = common::client::status_of(&out);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or(("", ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        String::from_utf8_lossy(&common::client::dechunk(body.as_bytes())).into_owned()
    } else {
        body.to_owned()
    };
    (status, body)
}

#[test]
fn requests_reach_an_http2_only_origin() {
    let (origin, conns) = h2_origin();
    let bed = Testbed::create(burrow(), "mio-h2o", "app", &["h1.test", "h2.test"]).expect("tunnel");
    let eo = EdgeOpts::loopback().expect("ports");
    let _edge = bed.edge(&eo).expect("edge");
    let service = format!("https://127.0.0.1:{}", origin.port());
    // The last (catch-all) rule speaks HTTP/2; every rule skips verification.
    let ingress = format!(
        "- hostname: h1.test\n  service: {service}\n\
         - service: {service}\n  originRequest:\n    http2Origin: true\n\
         originRequest:\n  noTLSVerify: true\n"
    );
    let (mut c, _metrics) = bed
        .connector_with_ingress_from(Path::new(MIO), eo.quic, &ingress, &[])
        .expect("burrow-mio");

    let (status, body) = send(
        eo.http,
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
        eo.http,
        "POST /upload HTTP/1.1\r\nHost: h2.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        &common::client::chunked(&upload, 16 * 1024),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        format!("HTTP/2.0 POST h2.test /upload host=- len=1000000 sum={sum}")
    );
    let (status, body) = send(
        eo.http,
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
        eo.http,
        "GET / HTTP/1.1\r\nHost: h1.test\r\nConnection: close\r\n\r\n",
        b"",
    );
    assert_eq!(status, 502);
    c.check_alive().expect("burrow-mio alive");
}

/// `--http2-origin` with `--url`: the one origin is spoken to in HTTP/2; without it, in
/// HTTP/1.1, which the HTTP/2-only origin refuses.
#[test]
fn http2_origin_flag_with_url() {
    let (origin, _conns) = h2_origin();
    let bed = Testbed::create(burrow(), "mio-h2o-flag", "app", &["h2.test"]).expect("tunnel");
    let eo = EdgeOpts::loopback().expect("ports");
    let _edge = bed.edge(&eo).expect("edge");
    let url = format!("https://127.0.0.1:{}", origin.port());
    let get = "GET /flag HTTP/1.1\r\nHost: h2.test\r\nConnection: close\r\n\r\n";
    let flags = ["--url", url.as_str(), "--no-tls-verify", "--http2-origin"];
    let mut c = bed
        .connector_without_config(Path::new(MIO), eo.quic, &flags)
        .expect("burrow-mio");
    let (status, body) = send(eo.http, get, b"");
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("HTTP/2.0 GET h2.test /flag"), "{body}");
    c.terminate(Duration::from_secs(30)).expect("stops");

    let flags = ["--url", url.as_str(), "--no-tls-verify"];
    let mut c = bed
        .connector_without_config(Path::new(MIO), eo.quic, &flags)
        .expect("burrow-mio");
    assert_eq!(send(eo.http, get, b"").0, 502, "without the flag");
    c.terminate(Duration::from_secs(30)).expect("stops");
}
