//! The bridge against an HTTP/2-only origin in process: the `h2` crate's server over real
//! rustls TLS (ALPN `h2`), polled with a no-op waker, bytes shuttled between the two.

use std::future::Future;
use std::io::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use h2::server::{self, SendResponse};
use h2::RecvStream;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::*;
use crate::stream::http1::{parse_response, ResponseHead};

/// A client session to an origin whose TLS offers only `h2`, handshaken, and the origin's side.
fn tls_pair() -> (rustls::ClientConnection, rustls::ServerConnection) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let cert = rcgen::CertificateParams::new(vec!["origin.test".into()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let der = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], der)
        .expect("server");
    server.alpn_protocols = vec![b"h2".to_vec()];
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).expect("root");
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let name = "origin.test".try_into().expect("name");
    let mut c = rustls::ClientConnection::new(Arc::new(client), name).expect("client");
    let mut s = rustls::ServerConnection::new(Arc::new(server)).expect("server");
    while c.is_handshaking() || s.is_handshaking() {
        let mut wire = Vec::new();
        c.write_tls(&mut wire).expect("write");
        if !wire.is_empty() {
            s.read_tls(&mut &wire[..]).expect("read");
            s.process_new_packets().expect("server handshake");
        }
        let mut wire = Vec::new();
        s.write_tls(&mut wire).expect("write");
        if !wire.is_empty() {
            c.read_tls(&mut &wire[..]).expect("read");
            c.process_new_packets().expect("client handshake");
        }
    }
    assert_eq!(c.alpn_protocol(), Some(&b"h2"[..]));
    (c, s)
}

/// One request the origin took: its head, its body so far, where to answer.
struct Taken {
    head: http::request::Parts,
    body: RecvStream,
    bytes: Vec<u8>,
    respond: SendResponse<Bytes>,
}

/// The HTTP/2-only origin: answers `/big` with `BIG` bytes and a length, `/empty` with 204,
/// anything else with `METHOD authority path host=<Host> len=<n> sum=<byte sum>`, no length.
struct Origin {
    pipe: Pipe,
    handshake: Option<Pin<Box<server::Handshake<Pipe, Bytes>>>>,
    conn: Option<server::Connection<Pipe, Bytes>>,
    taken: Vec<Taken>,
    /// Bodies being sent.
    sending: Vec<(h2::SendStream<Bytes>, Bytes)>,
    requests: usize,
}

const BIG: usize = 3 << 20;
/// The bridge's keep-alive timeout (cloudflared's default `keepAliveTimeout`).
const IDLE: std::time::Duration = std::time::Duration::from_secs(90);

impl Origin {
    fn new(session: rustls::ServerConnection) -> Self {
        let pipe = Pipe::new(session.into(), 1 << 20);
        let handshake = Box::pin(server::handshake(pipe.clone()));
        Origin {
            pipe,
            handshake: Some(handshake),
            conn: None,
            taken: Vec::new(),
            sending: Vec::new(),
            requests: 0,
        }
    }

    fn poll(&mut self) {
        let mut cx = Context::from_waker(Waker::noop());
        if let Some(h) = self.handshake.as_mut() {
            if let Poll::Ready(r) = h.as_mut().poll(&mut cx) {
                self.conn = Some(r.expect("origin handshake"));
                self.handshake = None;
            }
        }
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        while let Poll::Ready(Some(Ok((req, respond)))) = conn.poll_accept(&mut cx) {
            self.requests += 1;
            let (head, body) = req.into_parts();
            self.taken.push(Taken {
                head,
                body,
                bytes: Vec::new(),
                respond,
            });
        }
        let mut i = 0;
        while i < self.taken.len() {
            let t = &mut self.taken[i];
            let mut ended = false;
            loop {
                match t.body.poll_data(&mut cx) {
                    Poll::Ready(Some(Ok(d))) => {
                        let _ = t.body.flow_control().release_capacity(d.len());
                        t.bytes.extend_from_slice(&d);
                    }
                    Poll::Ready(_) => {
                        ended = true;
                        break;
                    }
                    Poll::Pending => break,
                }
            }
            if !ended {
                i += 1;
                continue;
            }
            let mut t = self.taken.remove(i);
            let path = t.head.uri.path().to_owned();
            let mut resp = http::Response::builder();
            let body = match path.as_str() {
                "/big" => {
                    resp = resp.header("content-length", BIG.to_string());
                    Bytes::from(vec![7u8; BIG])
                }
                "/empty" => {
                    resp = resp.status(204);
                    Bytes::new()
                }
                _ => {
                    let sum: u64 = t.bytes.iter().map(|&b| u64::from(b)).sum();
                    let host = t
                        .head
                        .headers
                        .get("host")
                        .map(|h| h.to_str().unwrap_or("?"));
                    Bytes::from(format!(
                        "{} {} {} host={} len={} sum={sum} te={:?} conn={:?}",
                        t.head.method,
                        t.head.uri.authority().map_or("-", |a| a.as_str()),
                        t.head.uri.path_and_query().map_or("-", |p| p.as_str()),
                        host.unwrap_or("-"),
                        t.bytes.len(),
                        t.head.headers.get("transfer-encoding"),
                        t.head.headers.get("x-hop"),
                    ))
                }
            };
            // A HEAD response has the length of the GET's and no body.
            let body = if t.head.method == http::Method::HEAD {
                Bytes::new()
            } else {
                body
            };
            let end = body.is_empty();
            let send = t
                .respond
                .send_response(resp.body(()).expect("response"), end)
                .expect("respond");
            if !end {
                self.sending.push((send, body));
            }
        }
        for (send, body) in &mut self.sending {
            while !body.is_empty() {
                send.reserve_capacity(body.len());
                let n = match send.poll_capacity(&mut cx) {
                    Poll::Ready(Some(Ok(n))) if n > 0 => n,
                    _ => break,
                };
                let chunk = body.split_to(n.min(body.len()));
                send.send_data(chunk, body.is_empty()).expect("send");
            }
        }
        self.sending.retain(|(_, b)| !b.is_empty());
        // Polling the connection flushes what was queued (and takes what came meanwhile).
        while let Poll::Ready(Some(Ok((req, respond)))) = conn.poll_accept(&mut cx) {
            self.requests += 1;
            let (head, body) = req.into_parts();
            self.taken.push(Taken {
                head,
                body,
                bytes: Vec::new(),
                respond,
            });
        }
    }
}

/// The bridge and the origin joined by two byte queues.
struct Pair {
    now: Instant,
    b: Http2Origin,
    o: Origin,
    to_o: Vec<u8>,
    to_b: Vec<u8>,
}

impl Pair {
    fn new() -> Self {
        let (c, s) = tls_pair();
        let now = Instant::now();
        Pair {
            now,
            b: Http2Origin::new(now, c, IDLE),
            o: Origin::new(s),
            to_o: Vec::new(),
            to_b: Vec::new(),
        }
    }

    /// Moves bytes both ways until neither side has anything to say.
    fn run(&mut self) {
        let mut buf = vec![0u8; 64 * 1024];
        for _ in 0..100_000 {
            let mut moved = false;
            loop {
                let n = self.b.transmit(self.now, &mut buf);
                if n == 0 {
                    break;
                }
                self.to_o.extend_from_slice(&buf[..n]);
                moved = true;
            }
            self.o.poll();
            {
                let mut tls = self.o.pipe.lock();
                let mut rest = &self.to_o[..];
                // A full plaintext buffer takes nothing until the origin reads.
                while !rest.is_empty() && matches!(tls.session.read_tls(&mut rest), Ok(n) if n > 0)
                {
                    tls.session.process_new_packets().expect("origin TLS");
                }
                let used = self.to_o.len() - rest.len();
                self.to_o.drain(..used);
                moved |= used > 0;
            }
            self.o.poll();
            {
                let mut tls = self.o.pipe.lock();
                while tls.session.wants_write() {
                    tls.session.write_tls(&mut self.to_b).expect("origin write");
                }
            }
            if !self.to_b.is_empty() {
                let n = self.b.received(self.now, &self.to_b);
                self.to_b.drain(..n);
                moved |= n > 0;
            }
            if !moved {
                return;
            }
        }
        panic!("no quiescence");
    }

    /// Writes a whole HTTP/1.1 request, moving bytes as the bridge asks.
    fn write(&mut self, mut req: &[u8]) {
        for _ in 0..10_000 {
            self.run();
            let n = self.b.write(self.now, req).expect("write");
            req = &req[n..];
            if req.is_empty() {
                self.run();
                return;
            }
        }
        panic!("request not taken");
    }

    /// Reads one HTTP/1.1 response: its head and de-framed body.
    fn response(&mut self, is_head: bool) -> (ResponseHead, Vec<u8>, Vec<u8>) {
        let mut raw = Vec::new();
        for _ in 0..100_000 {
            self.run();
            match self.b.read(self.now) {
                FlowRead::Data(d) => raw.extend_from_slice(&d),
                FlowRead::Blocked => {
                    if let Ok(Some((head, used))) = parse_response(&raw, is_head) {
                        let mut reader = BodyReader::new(head.body);
                        let mut body = Vec::new();
                        let n = reader
                            .read(&raw[used..], &mut body, usize::MAX)
                            .expect("body");
                        if reader.is_done() {
                            assert_eq!(used + n, raw.len(), "nothing after the response");
                            return (head, body, raw);
                        }
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        panic!("no response");
    }
}

fn text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

#[test]
fn requests_become_http2_and_responses_http1_on_one_connection() {
    let mut p = Pair::new();
    p.write(b"GET /a?q=1 HTTP/1.1\r\nHost: app.test\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\nTE: gzip\r\n\r\n");
    let (head, body, raw) = p.response(false);
    assert_eq!(head.status, 200);
    assert!(
        text(&raw).contains("transfer-encoding: chunked\r\n"),
        "{}",
        text(&raw)
    );
    assert_eq!(
        text(&body),
        "GET app.test /a?q=1 host=- len=0 sum=0 te=None conn=None"
    );

    // A chunked upload larger than the origin's windows.
    let upload: Vec<u8> = (0..1_500_000u32).map(|i| (i % 251) as u8).collect();
    let sum: u64 = upload.iter().map(|&b| u64::from(b)).sum();
    let mut req =
        b"POST /up HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for c in upload.chunks(100_000) {
        write_chunk(&mut req, c);
    }
    req.extend_from_slice(LAST_CHUNK);
    p.write(&req);
    let (_, body, _) = p.response(false);
    assert_eq!(
        text(&body),
        format!("POST app.test /up host=- len=1500000 sum={sum} te=None conn=None")
    );

    // A length-delimited upload, then a download larger than the windows.
    p.write(b"PUT /len HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\n\r\nabc");
    let (_, body, _) = p.response(false);
    assert_eq!(
        text(&body),
        "PUT app.test /len host=- len=3 sum=294 te=None conn=None"
    );
    p.write(b"GET /big HTTP/1.1\r\nHost: app.test\r\n\r\n");
    let (head, body, _) = p.response(false);
    assert!(head
        .headers
        .iter()
        .any(|(n, v)| n == "Content-Length" && *v == BIG.to_string()));
    assert_eq!(body.len(), BIG);

    // Bodiless answers: 204, and HEAD.
    p.write(b"GET /empty HTTP/1.1\r\nHost: app.test\r\n\r\n");
    let (head, body, _) = p.response(false);
    assert_eq!((head.status, body.len()), (204, 0));
    p.write(b"HEAD /big HTTP/1.1\r\nHost: app.test\r\n\r\n");
    let (head, body, _) = p.response(true);
    assert_eq!((head.status, body.len()), (200, 0));
    assert_eq!(p.o.requests, 6);

    // The connector's FIN between exchanges ends the flow.
    p.b.shutdown(p.now);
    p.run();
    assert_eq!(p.b.read(p.now), FlowRead::End);
}

#[test]
fn the_next_request_waits_for_the_response_before_it() {
    let mut p = Pair::new();
    let two = b"GET /one HTTP/1.1\r\nHost: a\r\n\r\nGET /two HTTP/1.1\r\nHost: a\r\n\r\n";
    p.run();
    assert_eq!(p.b.write(p.now, two), Ok(two.len()));
    p.run();
    assert_eq!(p.o.requests, 1, "one exchange at a time");
    let (_, body, _) = p.response(false);
    assert!(text(&body).starts_with("GET a /one"));
    let (_, body, _) = p.response(false);
    assert!(text(&body).starts_with("GET a /two"));
    assert_eq!(p.o.requests, 2);
}

#[test]
fn framing_split_anywhere_is_taken_whole() {
    // Every split of a chunked request between two writes: a chunk-size line or CRLF cut in
    // two must not leave bytes the bridge refuses (the connector writes the rest only after).
    let req = b"POST /s HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n";
    for cut in 1..req.len() {
        let mut p = Pair::new();
        p.write(&req[..cut]);
        p.write(&req[cut..]);
        let (_, body, _) = p.response(false);
        assert!(
            text(&body).starts_with("POST a /s host=- len=19 "),
            "cut {cut}: {}",
            text(&body)
        );
    }
}

#[test]
fn a_broken_origin_fails_the_exchange_and_bad_requests_are_refused() {
    let mut p = Pair::new();
    p.write(b"GET /a HTTP/1.1\r\nHost: a\r\n");
    // The origin goes away before the request is whole: the request fails.
    p.o.pipe.lock().session.send_close_notify();
    p.run();
    p.b.peer_closed(p.now);
    p.run();
    assert!(p.b.write(p.now, b"\r\n").is_err());
    assert!(matches!(p.b.read(p.now), FlowRead::Failed(_)));

    let mut p = Pair::new();
    p.run();
    assert!(p.b.write(p.now, b"\x00\x01 nonsense\r\n\r\n").is_err());
    let mut p = Pair::new();
    p.run();
    let gzip = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n";
    assert!(matches!(
        p.b.write(p.now, gzip),
        Err(Http2OriginError::Request(_))
    ));
}

#[test]
fn garbage_from_the_origin_is_an_error_not_a_panic() {
    let mut p = Pair::new();
    p.write(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n");
    // The origin waits for the body; a DATA frame on stream 0 breaks the connection.
    let mut garbage = Vec::new();
    {
        let mut tls = p.o.pipe.lock();
        tls.session
            .writer()
            .write_all(&[0, 0, 4, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4])
            .expect("plaintext");
        tls.session.write_tls(&mut garbage).expect("wire");
    }
    let mut rest = &garbage[..];
    while !rest.is_empty() {
        let n = p.b.received(p.now, rest);
        rest = &rest[n..];
        let mut buf = vec![0u8; 4096];
        while p.b.transmit(p.now, &mut buf) > 0 {}
    }
    let read = p.b.read(p.now);
    assert!(matches!(read, FlowRead::Failed(_)), "{read:?}");
}

#[test]
fn an_origin_that_closes_an_idle_connection_ends_the_flow() {
    let mut p = Pair::new();
    p.write(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n");
    p.response(false);
    p.o.pipe.lock().session.send_close_notify();
    p.run();
    p.b.peer_closed(p.now);
    p.run();
    assert_eq!(p.b.read(p.now), FlowRead::End);
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(64))]

    /// Any bytes as the connector's requests, and any plaintext from the origin after a
    /// request: errors, never a panic.
    #[test]
    fn arbitrary_bytes_either_way_do_not_panic(
        request in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
        from_origin in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
    ) {
        let mut p = Pair::new();
        p.run();
        let _ = p.b.write(p.now, b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
        let _ = p.b.write(p.now, &request);
        p.run();
        let mut wire = Vec::new();
        {
            let mut tls = p.o.pipe.lock();
            let _ = tls.session.writer().write_all(&from_origin);
            let _ = tls.session.write_tls(&mut wire);
        }
        let mut rest = &wire[..];
        let mut buf = vec![0u8; 64 * 1024];
        for _ in 0..100 {
            let n = p.b.received(p.now, rest);
            rest = &rest[n..];
            while p.b.transmit(p.now, &mut buf) > 0 {}
            let _ = p.b.read(p.now);
            if rest.is_empty() {
                break;
            }
        }
        let _ = p.b.write(p.now, &request);
        let _ = p.b.read(p.now);
    }
}

proptest::proptest! {
    /// What a head parses to writes back as a head that parses to the same request.
    #[test]
    fn request_heads_round_trip(
        method in "(GET|POST|PUT|HEAD|PATCH|[A-Z]{1,8})",
        path in "/[a-zA-Z0-9/?=&%._-]{0,40}",
        host in "[a-z0-9.-]{1,20}(:[0-9]{1,5})?",
        headers in proptest::collection::vec(("[a-zA-Z][a-zA-Z0-9-]{0,15}", "[ -~]{0,30}"), 0..8),
        chunked in proptest::bool::ANY,
    ) {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
        for (n, v) in &headers {
            head.push_str(&format!("{n}: {}\r\n", v.trim()));
        }
        if chunked {
            head.push_str("Transfer-Encoding: chunked\r\n");
        }
        head.push_str("\r\n");
        let Ok(Some((request, framing, end))) = parse_request(head.as_bytes()) else {
            return Ok(());
        };
        proptest::prop_assert_eq!(end, head.len());
        let mut again = Vec::new();
        write_request_head(&request, framing, &mut again);
        let (request2, framing2, end2) = parse_request(&again).expect("ours").expect("whole");
        proptest::prop_assert_eq!(end2, again.len());
        proptest::prop_assert_eq!(framing, framing2);
        proptest::prop_assert_eq!(request.method(), request2.method());
        proptest::prop_assert_eq!(request.uri(), request2.uri());
        proptest::prop_assert_eq!(request.headers(), request2.headers());
    }
}

/// The bridge's keep-alive timer, on virtual time: idle from the connection's start and from
/// each exchange's end, never while a request is under way, and closing as Go's
/// `IdleConnTimeout` does (close_notify, no GOAWAY), which ends the flow.
#[test]
fn an_idle_connection_closes_after_the_keep_alive_timeout() {
    let mut p = Pair::new();
    let t0 = p.now;
    p.run();
    assert_eq!(p.b.poll_timeout(), Some(t0 + IDLE), "idle from the start");

    // A request head arriving at t0 + 60 s stops the timer, over the 90 s mark too.
    p.now = t0 + Duration::from_secs(60);
    assert_eq!(p.b.write(p.now, b"GET /a HTTP/1.1\r\n"), Ok(17));
    assert_eq!(p.b.poll_timeout(), None, "a request is under way");
    p.now = t0 + Duration::from_secs(200);
    p.b.handle_timeout(p.now);
    p.write(b"Host: a\r\n\r\n");
    let (head, _, _) = p.response(false);
    assert_eq!(
        head.status, 200,
        "the connection outlived the idle time while busy"
    );

    // Idle again from the exchange's end; nothing happens before the timeout.
    let idle_at = p.now;
    assert_eq!(p.b.poll_timeout(), Some(idle_at + IDLE));
    p.now = idle_at + IDLE - Duration::from_millis(1);
    p.b.handle_timeout(p.now);
    p.run();
    assert_eq!(p.b.read(p.now), FlowRead::Blocked);
    p.now = idle_at + IDLE;
    p.b.handle_timeout(p.now);
    p.run();
    assert_eq!(p.b.read(p.now), FlowRead::End);
    assert_eq!(p.b.poll_timeout(), None, "nothing left to wake for");
    // The origin saw TLS close_notify, and no GOAWAY (h2 would end its connection cleanly
    // either way; what it read is TLS's end).
    let mut plain = [0u8; 1];
    let read = std::io::Read::read(&mut p.o.pipe.lock().session.reader(), &mut plain);
    assert!(matches!(read, Ok(0)), "{read:?}");
}

#[test]
fn a_zero_keep_alive_timeout_never_closes() {
    let (c, _s) = tls_pair();
    let t0 = Instant::now();
    let mut b = Http2Origin::new(t0, c, Duration::ZERO);
    // Only the handshake's deadline, until it is done.
    assert_eq!(b.poll_timeout(), Some(t0 + Duration::from_secs(15)));
    let mut buf = vec![0u8; 64 * 1024];
    while b.transmit(t0, &mut buf) > 0 {}
    assert_eq!(b.poll_timeout(), None);
    b.handle_timeout(t0 + Duration::from_secs(3600));
    assert_eq!(b.read(t0), FlowRead::Blocked);
}

/// [`Http2Flow`] driven as the drivers drive it (socket reads only when it asks, writes of
/// what it gives, steps until nothing moves), against the in-process origin on virtual time.
struct FlowPair {
    now: Instant,
    f: Http2Flow,
    o: Origin,
    /// From the origin, not yet read by the flow's socket.
    to_f: Vec<u8>,
    reports: Vec<BridgeReport>,
}

impl FlowPair {
    fn new() -> Self {
        let (c, s) = tls_pair();
        let now = Instant::now();
        FlowPair {
            now,
            f: Http2Flow::new(now, c, IDLE),
            o: Origin::new(s),
            to_f: Vec::new(),
            reports: Vec::new(),
        }
    }

    /// One driver wake-up: steps and socket I/O until nothing moves.
    fn run(&mut self) {
        for _ in 0..100_000 {
            self.o.poll();
            {
                let mut tls = self.o.pipe.lock();
                while tls.session.wants_write() {
                    tls.session.write_tls(&mut self.to_f).expect("origin write");
                }
            }
            // A socket read gives at most what one read takes.
            let n = if self.f.wants_read() {
                self.to_f.len().min(16 * 1024)
            } else {
                0
            };
            let chunk: Vec<u8> = self.to_f.drain(..n).collect();
            let read = if chunk.is_empty() {
                SocketRead::Nothing
            } else {
                SocketRead::Data(&chunk)
            };
            let reports = &mut self.reports;
            let mut moved = n > 0;
            moved |= self
                .f
                .step(self.now, read, &mut |r| reports.push(r))
                .expect("step");
            let out = self.f.to_send().to_vec();
            if !out.is_empty() {
                let mut tls = self.o.pipe.lock();
                let mut rest = &out[..];
                while !rest.is_empty() && matches!(tls.session.read_tls(&mut rest), Ok(n) if n > 0)
                {
                    tls.session.process_new_packets().expect("origin TLS");
                }
                let used = out.len() - rest.len();
                self.f.sent(used);
                moved |= used > 0;
            }
            if !moved {
                return;
            }
        }
        panic!("no quiescence");
    }

    /// Response bytes until none come, giving a permit after each as the connector does.
    fn take_data(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..100_000 {
            self.run();
            let mut got = false;
            self.reports.retain(|r| match r {
                BridgeReport::Data(d) => {
                    out.extend_from_slice(d);
                    got = true;
                    false
                }
                _ => true,
            });
            if !got {
                return out;
            }
            self.f.permit();
        }
        panic!("no end of data");
    }
}

#[test]
fn the_flow_step_runs_exchanges_and_its_idle_timer_on_virtual_time() {
    let mut p = FlowPair::new();
    let t0 = p.now;
    p.run();
    p.f.write(Bytes::from_static(
        b"POST /x HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\n\r\nhello",
    ));
    assert!(!p.f.takes_command(), "a write is under way");
    p.run();
    assert!(p.f.takes_command());
    assert_eq!(p.reports.first(), Some(&BridgeReport::Written));
    p.reports.remove(0);
    let raw = p.take_data();
    let (head, used) = parse_response(&raw, false).expect("head").expect("whole");
    assert_eq!(head.status, 200);
    let mut body = Vec::new();
    BodyReader::new(head.body)
        .read(&raw[used..], &mut body, usize::MAX)
        .expect("body");
    assert_eq!(
        text(&body),
        "POST app.test /x host=- len=5 sum=532 te=None conn=None"
    );
    assert!(p.reports.is_empty(), "{:?}", p.reports);

    // A download larger than the windows, read one permit at a time.
    p.f.write(Bytes::from_static(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n"));
    p.run();
    p.reports.retain(|r| *r != BridgeReport::Written);
    let raw = p.take_data();
    assert!(raw.len() > BIG, "{}", raw.len());

    // Idle from the last exchange's end: the driver wakes at the deadline and the flow ends.
    let idle_at = p.now;
    let deadline = p.f.poll_timeout().expect("idle deadline");
    assert_eq!(deadline, idle_at + IDLE);
    assert!(deadline > t0);
    p.now = deadline;
    p.run();
    assert_eq!(p.reports, [BridgeReport::Finished]);
    assert_eq!(p.f.poll_timeout(), None, "no busy loop after the close");
}
