//! Both roles against each other in process, over real rustls TLS, bytes shuttled between them.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use uuid::Uuid;

use super::machine::Role;
use super::*;
use crate::control::connector::{ControlClient, ControlEvent};
use crate::control::edge::{ControlServer, EdgeControlEvent};
use crate::control::{ConnectionDetails, Registration};
use crate::quic::tls::PostQuantum;

/// TLS configs for both roles, the edge's certificate self-signed for `h2.cftunnel.com`.
pub(crate) fn tls_configs() -> (
    Arc<rustls::ServerConfig>,
    Arc<rustls::ClientConfig>,
    Vec<u8>,
    Vec<u8>,
) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let cert = rcgen::CertificateParams::new(vec![tls::SERVER_NAME.into()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let cert_pem = cert.pem().into_bytes();
    let key_pem = key.serialize_pem().into_bytes();
    let key = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let server =
        tls::server_config(vec![cert.der().clone()], key, PostQuantum::Prefer).expect("server");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).expect("root");
    let client = tls::client_config(roots, PostQuantum::Prefer).expect("client");
    (server, client, cert_pem, key_pem)
}

/// A connector and an edge joined by two byte queues.
struct Pair {
    now: Instant,
    c: ConnectorConnection,
    e: EdgeConnection,
    to_c: Vec<u8>,
    to_e: Vec<u8>,
    c_events: VecDeque<Event>,
    e_events: VecDeque<Event>,
}

/// Drains `m`'s output into `events` and `wire`; true if anything came out.
fn drain<R: Role>(
    now: Instant,
    m: &mut Connection<R>,
    events: &mut VecDeque<Event>,
    wire: &mut Vec<u8>,
) -> bool {
    let mut moved = false;
    let mut buf = [0u8; 16 * 1024];
    loop {
        match m.poll_output(now) {
            Output::Event(e) => events.push_back(e),
            Output::Transmit => {
                let n = m.transmit(&mut buf);
                assert!(n > 0, "Transmit with nothing to transmit");
                wire.extend_from_slice(&buf[..n]);
            }
            Output::Timeout(_) => return moved,
        }
        moved = true;
    }
}

impl Pair {
    fn new() -> Self {
        Self::with_connector_limits(Limits::default())
    }

    fn with_connector_limits(limits: Limits) -> Self {
        let now = Instant::now();
        let (server, client, _, _) = tls_configs();
        let c = ConnectorConnection::new(now, client, tls::SERVER_NAME, limits).expect("connector");
        let e = EdgeConnection::new(now, server, Limits::default()).expect("edge");
        let mut pair = Pair {
            now,
            c,
            e,
            to_c: Vec::new(),
            to_e: Vec::new(),
            c_events: VecDeque::new(),
            e_events: VecDeque::new(),
        };
        pair.run();
        assert!(matches!(pair.c_events.pop_front(), Some(Event::Connected)));
        assert!(matches!(pair.e_events.pop_front(), Some(Event::Connected)));
        pair
    }

    /// Moves bytes both ways until neither side has anything to say.
    fn run(&mut self) {
        for _ in 0..100_000 {
            let mut moved = drain(self.now, &mut self.c, &mut self.c_events, &mut self.to_e);
            moved |= drain(self.now, &mut self.e, &mut self.e_events, &mut self.to_c);
            if !self.to_c.is_empty() {
                let n = self.c.handle_input(self.now, Input::Received(&self.to_c));
                self.to_c.drain(..n);
                moved |= n > 0;
            }
            if !self.to_e.is_empty() {
                let n = self.e.handle_input(self.now, Input::Received(&self.to_e));
                self.to_e.drain(..n);
                moved |= n > 0;
            }
            if !moved {
                return;
            }
        }
        panic!("the pair never went quiet");
    }

    /// The edge opens a GET of `uri` (`end`: no body follows) and the connector takes it.
    fn get(&mut self, uri: &str, end: bool) -> (StreamId, IncomingRequest) {
        let s = self
            .e
            .open(RequestKind::Http, Request::get(uri).body(()).unwrap(), end)
            .expect("open");
        self.run();
        (s, self.request())
    }

    fn request(&mut self) -> IncomingRequest {
        match self.c_events.pop_front() {
            Some(Event::Request(r)) => r,
            other => panic!("expected a request, got {other:?}"),
        }
    }

    fn response(&mut self) -> (StreamId, ConnectorResponse) {
        match self.e_events.pop_front() {
            Some(Event::Response { stream, response }) => {
                (stream, response.expect("readable head"))
            }
            other => panic!("expected a response, got {other:?}"),
        }
    }
}

/// Everything readable from `stream` now, and whether its end was seen.
fn read_all<R: Role>(m: &mut Connection<R>, stream: StreamId) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    loop {
        match m.read(stream) {
            Ok(Read::Data(d)) => out.extend_from_slice(&d),
            Ok(Read::Blocked) => return (out, false),
            Ok(Read::Finished) | Err(ApiError::UnknownStream(_)) => return (out, true),
            Err(e) => panic!("read: {e}"),
        }
    }
}

#[test]
fn control_stream_carries_a_registration() {
    let mut p = Pair::new();
    let now = p.now;
    let registration = Registration::new(
        "account",
        vec![7; 32],
        Uuid::from_u128(1),
        Uuid::from_u128(2),
        vec!["serialized_headers".into()],
    );
    let mut client =
        ControlClient::new(now, &registration, None, Duration::from_secs(5)).expect("client");
    let mut server = ControlServer::new();

    let edge_stream = p.e.open_control_stream().expect("open");
    p.run();
    let req = p.request();
    assert_eq!(req.kind, RequestKind::ControlStream);
    assert_eq!(req.head.headers[request::UPGRADE_HEADER], "control-stream");
    let stream = req.stream;
    p.c.respond_implicit(stream).expect("implicit head");

    // connector → edge: Bootstrap + registerConnection, as response body.
    let rpc = client.poll_transmit().expect("bootstrap and register");
    assert_eq!(
        p.c.send_data(stream, Bytes::from(rpc.clone()))
            .expect("send"),
        rpc.len()
    );
    p.run();
    let (edge_stream_id, head) = p.response();
    assert_eq!(edge_stream_id, edge_stream);
    assert_eq!((head.status, head.meta), (StatusCode::OK, None));
    let (bytes, _) = read_all(&mut p.e, edge_stream);
    assert_eq!(bytes, rpc, "RPC bytes arrive unchanged");
    server.handle_bytes(&bytes).expect("edge RPC");
    match server.poll_event() {
        Some(EdgeControlEvent::RegisterRequested(r)) => assert_eq!(r, registration),
        other => panic!("expected registration, got {other:?}"),
    }
    let details = ConnectionDetails {
        uuid: Uuid::from_u128(3),
        location: "LIS".into(),
        remotely_managed: true,
    };
    server
        .respond_registration(Ok(details.clone()))
        .expect("respond");

    // edge → connector: the answers, as request body.
    while let Some(out) = server.poll_transmit() {
        let mut data = Bytes::from(out);
        while !data.is_empty() {
            let n = p.e.send_data(edge_stream, data.clone()).expect("send");
            let _ = data.split_to(n);
            p.run();
        }
    }
    p.run();
    assert!(
        matches!(p.c_events.pop_front(), Some(Event::Stream(StreamEvent::Readable(s))) if s == stream)
    );
    let (bytes, finished) = read_all(&mut p.c, stream);
    assert!(!finished);
    client.handle_bytes(now, &bytes).expect("connector RPC");
    assert!(matches!(client.poll_event(), Some(ControlEvent::Called(_))));
    assert_eq!(client.poll_event(), Some(ControlEvent::Registered(details)));
}

#[test]
fn http_request_and_response_larger_than_the_windows() {
    let mut p = Pair::new();
    // 3 MiB each way: three times the 1 MiB stream and connection windows.
    let upload: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
    let download: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 241) as u8).collect();

    let request = Request::post("https://example.com/upload?x=1")
        .header("x-eyeball", "1")
        .body(())
        .unwrap();
    let e_stream = p.e.open(RequestKind::Http, request, false).expect("open");
    let mut to_send = Bytes::from(upload.clone());
    let mut received = Vec::new();
    let mut c_stream = None;
    let mut finished = false;
    // Upload while the connector reads; it only gets more as it reads (flow control).
    while !finished {
        if !to_send.is_empty() {
            let n = p.e.send_data(e_stream, to_send.clone()).expect("send");
            let _ = to_send.split_to(n);
            if to_send.is_empty() {
                p.e.finish(e_stream, None).expect("finish");
            }
        }
        p.run();
        while let Some(ev) = p.c_events.pop_front() {
            match ev {
                Event::Request(r) => {
                    assert_eq!(r.kind, RequestKind::Http);
                    assert_eq!(r.head.method, http::Method::POST);
                    assert_eq!(r.head.uri, "https://example.com/upload?x=1");
                    assert_eq!(r.head.headers["x-eyeball"], "1");
                    c_stream = Some(r.stream);
                }
                Event::Stream(StreamEvent::Readable(_)) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        if let Some(s) = c_stream {
            let (bytes, end) = read_all(&mut p.c, s);
            received.extend_from_slice(&bytes);
            finished = end;
        }
        p.e_events
            .retain(|e| !matches!(e, Event::Stream(StreamEvent::Writable(_))));
    }
    assert_eq!(received.len(), upload.len());
    assert!(received == upload, "upload corrupted");

    let stream = c_stream.unwrap();
    let mut origin = HeaderMap::new();
    origin.insert(
        "content-type",
        HeaderValue::from_static("application/octet-stream"),
    );
    origin.insert("content-length", HeaderValue::from(download.len()));
    origin.append("set-cookie", HeaderValue::from_static("a=1"));
    origin.append("set-cookie", HeaderValue::from_static("b=2"));
    p.c.respond(stream, StatusCode::CREATED, &origin)
        .expect("respond");
    let mut to_send = Bytes::from(download.clone());
    let mut got = Vec::new();
    let mut head = None;
    let mut end = false;
    while !end {
        if !to_send.is_empty() {
            let n = p.c.send_data(stream, to_send.clone()).expect("send");
            let _ = to_send.split_to(n);
            if to_send.is_empty() {
                p.c.finish(stream, None).expect("finish");
            }
        }
        p.run();
        while let Some(ev) = p.e_events.pop_front() {
            match ev {
                Event::Response { stream, response } => {
                    assert_eq!(stream, e_stream);
                    head = Some(response.expect("head"));
                }
                Event::Stream(StreamEvent::Readable(_) | StreamEvent::Writable(_)) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        p.c_events.clear();
        if head.is_some() {
            let (bytes, fin) = read_all(&mut p.e, e_stream);
            got.extend_from_slice(&bytes);
            end = fin;
        }
    }
    let head = head.unwrap();
    assert_eq!(head.status, StatusCode::CREATED);
    assert_eq!(head.meta, Some(ResponseMeta::Origin));
    assert_eq!(head.headers, origin);
    assert_eq!(
        head.transport_headers["content-length"],
        download.len().to_string().as_str()
    );
    assert!(got == download, "download corrupted ({} bytes)", got.len());
    assert_eq!(p.c.open_streams(), 0);
    assert_eq!(p.e.open_streams(), 0);
}

#[test]
fn unflushed_empty_response_rides_on_the_head() {
    let mut p = Pair::new();
    let (e_stream, r) = p.get("http://o/", true);
    let mut origin = HeaderMap::new();
    origin.insert("content-length", HeaderValue::from_static("0"));
    p.c.respond(r.stream, StatusCode::NO_CONTENT, &origin)
        .expect("respond");
    p.run();
    // Not flushed: nothing went out yet.
    assert!(p.e_events.is_empty());
    p.c.finish(r.stream, None).expect("finish");
    p.run();
    let (_, head) = p.response();
    assert_eq!(head.status, StatusCode::NO_CONTENT);
    assert_eq!(read_all(&mut p.e, e_stream), (Vec::new(), true));
}

#[test]
fn kinds_are_marked_and_errors_are_502_with_meta() {
    let mut p = Pair::new();
    let tcp = Request::get("http://10.1.2.3:22/").body(()).unwrap();
    let s_tcp = p.e.open(RequestKind::Tcp, tcp, false).expect("tcp");
    let s_ws =
        p.e.open(
            RequestKind::Websocket,
            Request::get("http://o/ws").body(()).unwrap(),
            false,
        )
        .expect("ws");
    let s_cfg =
        p.e.open(
            RequestKind::Configuration,
            Request::get("http://o/").body(()).unwrap(),
            false,
        )
        .expect("cfg");
    p.run();
    let tcp = p.request();
    assert_eq!(tcp.kind, RequestKind::Tcp);
    assert_eq!(
        request::tcp_destination(&tcp.head),
        Ok("10.1.2.3:22".parse().unwrap())
    );
    let ws = p.request();
    assert_eq!(ws.kind, RequestKind::Websocket);
    let cfg = p.request();
    assert_eq!(
        (cfg.kind, &cfg.head.method),
        (RequestKind::Configuration, &http::Method::PUT)
    );

    // TCP refused for too many flows; WebSocket accepted (flushes at once, no body yet).
    p.c.fail(tcp.stream, ResponseMeta::FlowRateLimited)
        .expect("fail");
    p.c.respond(
        ws.stream,
        StatusCode::SWITCHING_PROTOCOLS,
        &HeaderMap::new(),
    )
    .expect("ws");
    p.run();
    let (id, head) = p.response();
    assert_eq!(
        (id, head.status, head.meta),
        (
            s_tcp,
            StatusCode::BAD_GATEWAY,
            Some(ResponseMeta::FlowRateLimited)
        )
    );
    let (id, head) = p.response();
    assert_eq!(
        (id, head.status, head.meta),
        (s_ws, StatusCode::OK, Some(ResponseMeta::Origin))
    );

    // Failing after the head was sent resets the stream (Go's aborted handler).
    p.c.fail(ws.stream, ResponseMeta::Cloudflared)
        .expect("abort");
    p.run();
    assert!(p.e_events.iter().any(|e| matches!(e,
        Event::Stream(StreamEvent::Reset { stream, reason }) if *stream == s_ws && *reason == h2::Reason::INTERNAL_ERROR)));

    // Configuration push (C§1.12): JSON body in, implicit 200 with the result JSON out.
    p.e.send_data(
        s_cfg,
        Bytes::from_static(br#"{"version":1,"config":{"ingress":[]}}"#),
    )
    .expect("push");
    p.e.finish(s_cfg, None).expect("end push");
    p.run();
    let mut body = configuration::PushBody::default();
    let (bytes, end) = read_all(&mut p.c, cfg.stream);
    assert!(end);
    body.extend(&bytes).expect("small");
    let push = body.decode().expect("push decodes");
    assert_eq!(push.config, r#"{"ingress":[]}"#);
    let result = crate::rpc_stream::ConfigVersions::new().offer(push.version, || Ok(()));
    p.c.respond_implicit(cfg.stream).expect("implicit");
    p.c.send_data(
        cfg.stream,
        Bytes::from(configuration::encode_result(&result)),
    )
    .expect("result");
    p.c.finish(cfg.stream, None).expect("end");
    p.run();
    let (id, head) = loop {
        match p.e_events.pop_front() {
            Some(Event::Response { stream, response }) => break (stream, response.expect("head")),
            Some(_) => continue,
            None => panic!("no configuration response"),
        }
    };
    assert_eq!((id, head.status, head.meta), (s_cfg, StatusCode::OK, None));
    assert_eq!(
        read_all(&mut p.e, s_cfg),
        (br#"{"lastAppliedVersion":1,"err":null}"#.to_vec(), true)
    );
}

#[test]
fn handshake_deadline_closes_a_silent_connection() {
    let now = Instant::now();
    let (_, client, _, _) = tls_configs();
    let mut c = ConnectorConnection::new(now, client, tls::SERVER_NAME, Limits::default())
        .expect("connector");
    let mut buf = [0u8; 4096];
    assert!(matches!(c.poll_output(now), Output::Transmit));
    assert!(c.transmit(&mut buf) > 0);
    let deadline = match c.poll_output(now) {
        Output::Timeout(Some(d)) => d,
        other => panic!("expected a deadline, got {other:?}"),
    };
    assert_eq!(deadline, now + Duration::from_secs(15));
    // The deadline does not move while nothing happens (no busy loop, no drift).
    assert!(
        matches!(c.poll_output(now + Duration::from_secs(1)), Output::Timeout(Some(d)) if d == deadline)
    );
    c.handle_input(deadline, Input::Timeout);
    match c.poll_output(deadline) {
        Output::Event(Event::Closed(Some(ConnectionError::HandshakeTimeout(_)))) => {}
        other => panic!("expected timeout close, got {other:?}"),
    }
    assert!(matches!(c.open_streams(), 0));
    assert_eq!(c.read(StreamId(1)), Err(ApiError::Closed));
}

#[test]
fn garbage_from_the_edge_is_a_tls_error_not_a_panic() {
    let now = Instant::now();
    let (_, client, _, _) = tls_configs();
    let mut c = ConnectorConnection::new(now, client, tls::SERVER_NAME, Limits::default())
        .expect("connector");
    let garbage = [0x17u8; 64];
    let mut buf = [0u8; 4096];
    // The ClientHello waits to be sent: until then input is not taken (TCP backpressure).
    assert_eq!(c.handle_input(now, Input::Received(&garbage)), 0);
    assert!(matches!(c.poll_output(now), Output::Transmit));
    assert!(c.transmit(&mut buf) > 0);
    assert_eq!(
        c.handle_input(now, Input::Received(&garbage)),
        garbage.len()
    );
    let mut saw_close = false;
    loop {
        match c.poll_output(now) {
            Output::Event(Event::Closed(Some(ConnectionError::Tls(_)))) => saw_close = true,
            Output::Event(other) => panic!("unexpected {other:?}"),
            Output::Transmit => {
                c.transmit(&mut buf);
            }
            Output::Timeout(t) => {
                assert_eq!(t, None, "a closed connection has no deadline");
                break;
            }
        }
    }
    assert!(saw_close && c.is_closed());
}

#[test]
fn peer_reset_and_clean_shutdown_are_reported() {
    let mut p = Pair::new();
    let (s, r) = p.get("http://o/", false);
    p.e.reset(s, h2::Reason::CANCEL).expect("reset");
    p.run();
    assert!(p.c_events.iter().any(|e| matches!(e,
        Event::Stream(StreamEvent::Reset { stream, reason }) if *stream == r.stream && *reason == h2::Reason::CANCEL)));
    assert_eq!(p.c.open_streams(), 0);

    p.c.shutdown();
    p.e.shutdown();
    p.run();
    assert!(
        p.c_events.iter().any(|e| matches!(e, Event::Closed(None))),
        "{:?}",
        p.c_events
    );
    assert!(
        p.e_events.iter().any(|e| matches!(e, Event::Closed(None))),
        "{:?}",
        p.e_events
    );
}

#[test]
fn trailers_follow_the_body() {
    let mut p = Pair::new();
    let (s, r) = p.get("http://o/grpc", true);
    let mut origin = HeaderMap::new();
    origin.insert("content-type", HeaderValue::from_static("application/grpc"));
    p.c.respond(r.stream, StatusCode::OK, &origin)
        .expect("respond");
    p.c.send_data(r.stream, Bytes::from_static(b"msg"))
        .expect("data");
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    p.c.finish(r.stream, Some(trailers)).expect("trailers");
    p.run();
    let (_, head) = p.response();
    assert_eq!(head.headers["content-type"], "application/grpc");
    assert_eq!(read_all(&mut p.e, s), (b"msg".to_vec(), true));
}

#[test]
fn a_reader_that_does_not_read_holds_the_sender_back() {
    let mut p = Pair::new();
    let s =
        p.e.open(
            RequestKind::Http,
            Request::post("http://o/").body(()).unwrap(),
            false,
        )
        .expect("open");
    let mut accepted = 0;
    for _ in 0..64 {
        accepted +=
            p.e.send_data(s, Bytes::from(vec![1u8; 64 * 1024]))
                .expect("send");
        p.run();
    }
    // The connector never reads: the edge gets one window (1 MiB) onto the wire plus its own
    // queue, and not a byte more.
    let window = machine::INITIAL_WINDOW as usize;
    assert_eq!(accepted, window + Limits::default().send_queue);
    assert!(
        p.e_events.is_empty()
            || p.e_events
                .iter()
                .all(|e| !matches!(e, Event::Stream(StreamEvent::Writable(_))))
    );
    // Reading frees credit, and the queue moves again.
    let r = p.request();
    let (bytes, _) = read_all(&mut p.c, r.stream);
    assert_eq!(bytes.len(), window);
    p.run();
    assert!(p
        .e_events
        .iter()
        .any(|e| matches!(e, Event::Stream(StreamEvent::Writable(id)) if *id == s)));
}

#[test]
fn streams_past_the_limit_are_refused() {
    let mut p = Pair::with_connector_limits(Limits {
        max_streams: 1,
        ..Limits::default()
    });
    let get = || Request::get("http://o/").body(()).unwrap();
    let first = p.e.open(RequestKind::Http, get(), false).expect("first");
    let second = p.e.open(RequestKind::Http, get(), false).expect("second");
    p.run();
    p.request();
    assert!(p.c_events.is_empty(), "the second stream never surfaces");
    assert_eq!(p.c.open_streams(), 1);
    assert!(p.e_events.iter().any(|e| matches!(e,
        Event::Stream(StreamEvent::Reset { stream, reason }) if *stream == second && *reason == h2::Reason::REFUSED_STREAM)));
    assert!(!p.e_events.iter().any(
        |e| matches!(e, Event::Stream(StreamEvent::Reset { stream, .. }) if *stream == first)
    ));
}

/// A header map from static pairs, for the codec tests.
pub(crate) fn header_map(pairs: &[(&'static str, &'static str)]) -> http::HeaderMap {
    pairs
        .iter()
        .map(|(n, v)| {
            (
                http::HeaderName::from_static(n),
                http::HeaderValue::from_static(v),
            )
        })
        .collect()
}

/// RFC 9113 §8.1, as Go's server does when its handler returns first: a full response, then
/// RST_STREAM(NO_ERROR) while the request still streams. The edge stops sending and still
/// reads the whole response; nothing is reported as a reset.
#[test]
fn a_full_answer_then_no_error_reset_keeps_the_response() {
    let mut p = Pair::new();
    let s =
        p.e.open(
            RequestKind::Websocket,
            Request::get("http://o/ws").body(()).unwrap(),
            false,
        )
        .expect("open");
    p.e.send_data(s, Bytes::from_static(b"still sending"))
        .expect("send");
    p.run();
    let r = p.request();
    p.c.respond(r.stream, StatusCode::OK, &HeaderMap::new())
        .expect("respond");
    p.c.send_data(r.stream, Bytes::from_static(b"goodbye"))
        .expect("send");
    p.c.finish(r.stream, None).expect("finish");
    p.run();
    p.c.reset(r.stream, h2::Reason::NO_ERROR).expect("reset");
    p.run();
    let (stream, _) = p.response();
    assert_eq!(stream, s);
    assert!(
        !p.e_events
            .iter()
            .any(|e| matches!(e, Event::Stream(StreamEvent::Reset { .. }))),
        "{:?}",
        p.e_events
    );
    assert_eq!(read_all(&mut p.e, s), (b"goodbye".to_vec(), true));
    assert_eq!(
        p.e.send_data(s, Bytes::from_static(b"more")),
        Err(ApiError::UnknownStream(s)),
        "our side is over"
    );
}

/// A connector answers in full and then ends the connection (a drain's last response): the
/// edge gets the response, the GOAWAY, TLS close_notify and the TCP end in one read. The
/// answer is still delivered, head and whole body, before the connection is reported closed.
#[test]
fn an_answer_that_arrives_with_the_connection_end_is_delivered() {
    for abort in [false, true] {
        let mut p = Pair::new();
        let (s, r) = p.get("http://o/slow", true);
        p.c.respond(r.stream, StatusCode::OK, &HeaderMap::new())
            .expect("respond");
        p.c.send_data(r.stream, Bytes::from_static(b"slow done"))
            .expect("send");
        p.c.finish(r.stream, None).expect("finish");
        if abort {
            // Flush the answer, then close TLS without a GOAWAY.
            drain(p.now, &mut p.c, &mut p.c_events, &mut p.to_e);
            p.c.abort();
        } else {
            p.c.shutdown();
        }
        drain(p.now, &mut p.c, &mut p.c_events, &mut p.to_e);
        let wire = std::mem::take(&mut p.to_e);
        assert_eq!(p.e.handle_input(p.now, Input::Received(&wire)), wire.len());
        p.e.handle_input(p.now, Input::PeerClosed);
        let mut wire = Vec::new();
        drain(p.now, &mut p.e, &mut p.e_events, &mut wire);
        let (stream, head) = p.response();
        assert_eq!((stream, head.status), (s, StatusCode::OK), "abort: {abort}");
        assert_eq!(
            read_all(&mut p.e, s),
            (b"slow done".to_vec(), true),
            "abort: {abort}"
        );
        assert!(
            p.e_events.iter().any(|e| matches!(e, Event::Closed(_))),
            "abort: {abort}: {:?}",
            p.e_events
        );
        assert!(
            !p.e_events
                .iter()
                .any(|e| matches!(e, Event::Stream(StreamEvent::Reset { .. }))),
            "abort: {abort}: {:?}",
            p.e_events
        );
        assert_eq!(p.e.read(s), Err(ApiError::Closed), "read out, then gone");
    }
}

/// The edge's SETTINGS say ENABLE_PUSH 0, as Cloudflare's edge does: the connector (the HTTP/2
/// server) may not push.
#[test]
fn the_edge_disables_server_push() {
    let mut p = Pair::new();
    p.e.open(
        RequestKind::Http,
        Request::get("http://o/").body(()).unwrap(),
        true,
    )
    .expect("open");
    p.run();
    let r = p.request();
    let s = p.c.streams.get(r.stream).expect("stream");
    let respond = s.respond.as_mut().expect("unanswered");
    let pushed = respond.push_request(Request::get("http://o/pushed").body(()).unwrap());
    assert!(
        pushed.is_err(),
        "push must be refused by the edge's settings"
    );
}

/// Graceful shutdown while an answer is still held back by the edge's flow-control window:
/// the edge learns at once that no new stream may open (`GoingAway`; opening one is refused),
/// the connection stays up until every byte of the answer went out, and only then closes.
#[test]
fn a_shutdown_ends_the_connection_only_after_every_answer_is_sent() {
    let mut p = Pair::new();
    let (s, r) = p.get("http://o/big", true);
    p.c.respond(r.stream, StatusCode::OK, &HeaderMap::new())
        .expect("respond");
    // Three windows' worth: most of it waits for credit the edge gives only as it reads.
    let body: Vec<u8> = (0..3 * machine::INITIAL_WINDOW as usize)
        .map(|i| (i % 251) as u8)
        .collect();
    let mut sent = 0;
    let feed = |p: &mut Pair, sent: &mut usize| {
        while *sent < body.len() {
            let n =
                p.c.send_data(r.stream, Bytes::copy_from_slice(&body[*sent..]))
                    .expect("send");
            if n == 0 {
                break;
            }
            *sent += n;
            if *sent == body.len() {
                p.c.finish(r.stream, None).expect("finish");
            }
        }
    };
    feed(&mut p, &mut sent);
    p.run();
    assert!(sent < body.len(), "the window holds the answer back");

    p.c.shutdown();
    p.run();
    assert!(
        p.e_events.iter().any(|e| matches!(e, Event::GoingAway)),
        "{:?}",
        p.e_events
    );
    let refused = p.e.open(
        RequestKind::Http,
        Request::get("http://o/").body(()).unwrap(),
        true,
    );
    assert_eq!(refused, Err(ApiError::NotReady));
    assert!(
        !p.c_events.iter().any(|e| matches!(e, Event::Closed(_))),
        "closed with the answer unsent: {:?}",
        p.c_events
    );

    let mut got = Vec::new();
    for _ in 0..10_000 {
        let (bytes, end) = read_all(&mut p.e, s);
        got.extend_from_slice(&bytes);
        feed(&mut p, &mut sent);
        p.run();
        if end {
            break;
        }
    }
    assert_eq!(got.len(), body.len());
    assert!(got == body, "the answer arrived intact");
    assert!(
        p.c_events.iter().any(|e| matches!(e, Event::Closed(None))),
        "{:?}",
        p.c_events
    );
    assert!(p.c.is_closed(), "everything transmitted");
}

/// A connector whose edge is bare TLS that the test writes HTTP/2 frames into, to send what
/// the edge machine never would.
fn connector_and_raw_edge(
    limits: Limits,
) -> (Instant, ConnectorConnection, rustls::ServerConnection) {
    let now = Instant::now();
    let (server, client, _, _) = tls_configs();
    let mut c = ConnectorConnection::new(now, client, tls::SERVER_NAME, limits).expect("connector");
    let mut s = rustls::ServerConnection::new(server).expect("edge TLS");
    s.set_buffer_limit(None);
    let mut events = VecDeque::new();
    for _ in 0..20 {
        let mut wire = Vec::new();
        drain(now, &mut c, &mut events, &mut wire);
        let mut rd = wire.as_slice();
        while !rd.is_empty() {
            s.read_tls(&mut rd).expect("edge reads");
            s.process_new_packets().expect("edge accepts");
        }
        let wire = raw_wire(&mut s);
        assert_eq!(c.handle_input(now, Input::Received(&wire)), wire.len());
        if !s.is_handshaking() && wire.is_empty() {
            return (now, c, s);
        }
    }
    panic!("the TLS handshake never completed");
}

/// What the bare TLS edge has to send.
fn raw_wire(s: &mut rustls::ServerConnection) -> Vec<u8> {
    let mut wire = Vec::new();
    while s.wants_write() {
        s.write_tls(&mut wire).expect("edge writes");
    }
    wire
}

/// An HTTP/2 PING frame (not an ACK) carrying `n`.
fn ping(n: u64) -> Vec<u8> {
    let mut frame = vec![0, 0, 8, 6, 0, 0, 0, 0, 0];
    frame.extend_from_slice(&n.to_be_bytes());
    frame
}

/// rustls takes no input, the end of the stream included, while it holds more plaintext than
/// this; the end must still be seen once h2 has read the plaintext, or the connection hangs.
#[test]
fn the_end_of_the_peer_is_seen_though_it_comes_with_a_full_plaintext_buffer() {
    const RUSTLS_PLAINTEXT_LIMIT: usize = 16 * 1024;
    let mut reached = 0;
    for pings in (600..1600).step_by(20) {
        let (now, mut c, mut s) = connector_and_raw_edge(Limits {
            tls_buffer: 1024,
            ..Limits::default()
        });
        // The client preface and SETTINGS, then PINGs, one a TLS record: the connector owes a
        // PONG for each and nothing transmits them, so h2 stops reading once it cannot write.
        let mut w = s.writer();
        w.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .expect("preface");
        for n in 0..pings {
            w.write_all(&ping(n)).expect("ping");
        }
        // A record of 16 KiB (PINGs and a WINDOW_UPDATE filling it exactly), then a few small
        // ones: completed by one read while h2 is stalled, they leave rustls full.
        let mut big: Vec<u8> = (0..963).flat_map(ping).collect();
        big.extend_from_slice(&[0, 0, 4, 8, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(big.len(), RUSTLS_PLAINTEXT_LIMIT);
        w.write_all(&big).expect("big record");
        for n in 0..3 {
            w.write_all(&ping(n)).expect("ping");
        }
        let wire = raw_wire(&mut s);
        // As a driver does, the end is read only once every byte was taken.
        if c.handle_input(now, Input::Received(&wire)) < wire.len()
            || c.unread_plaintext() <= RUSTLS_PLAINTEXT_LIMIT
        {
            continue;
        }
        reached += 1;
        c.handle_input(now, Input::PeerClosed);
        // The driver transmits; h2 reads on and comes to the end (no close_notify, but h2's
        // server with nothing left to send takes it as a clean close).
        let mut events = VecDeque::new();
        let mut sink = Vec::new();
        while drain(now, &mut c, &mut events, &mut sink) {
            sink.clear();
        }
        assert!(
            events.iter().any(|e| matches!(e, Event::Closed(_))),
            "after {pings} PINGs: {:?}",
            events
                .iter()
                .filter(|e| !matches!(e, Event::Connected))
                .collect::<Vec<_>>()
        );
    }
    assert!(
        reached > 0,
        "no arrangement left rustls's plaintext buffer full at the end"
    );
}
