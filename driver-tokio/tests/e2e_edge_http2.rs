//! `burrow edge` serving a connector over HTTP/2 (TLS on TCP, the QUIC port): the built binary
//! as the edge, and as the connector core's HTTP/2 connector machine ([`ConnectorConnection`])
//! with the control-stream RPC client ([`ControlClient`]), driven by a small loop over a real
//! loopback socket and real TLS. The connector registers 2 connections, then serves: a 100 MiB
//! download and a 100 MiB upload (both checked by digest), 50 concurrent requests, a WebSocket
//! upgrade carrying bytes both ways, and TCP through `--tcp-map` with half-close (the eyeball
//! shuts its write side first and still reads the whole echo), and a TCP peer that never
//! speaks TLS is closed.

mod common;

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine;
use burrow_core::control::connector::{ControlClient, ControlEvent};
use burrow_core::control::Registration;
use burrow_core::http2::{
    tls, ConnectorConnection, Event, IncomingRequest, Input, Limits, Output, Read, RequestKind,
    StreamEvent, StreamId,
};
use burrow_core::quic::tls::PostQuantum;
use burrow_tokio::testbed::{self, EdgeOpts, Testbed};
use bytes::Bytes;
use common::body::{digest, pattern, random_bytes, Digest, BLOCK, HUGE};
use common::client::{request, response_digest};
use http::{HeaderMap, HeaderValue, StatusCode};
use tungstenite::handshake::derive_accept_key;
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_burrow");
const HOST: &str = "h2.test";
const CONNECTIONS: u8 = 2;

/// What the connector does with one stream.
enum Job {
    /// The control stream: RPC bytes both ways.
    Control(Box<ControlClient>),
    /// Echo the request body back (WebSocket, TCP, `/echo`).
    Echo,
    /// Send `left` bytes of the pattern from `offset` (`/huge`).
    Send { offset: usize, left: usize },
    /// Digest the request body; answer the digest (`/sum`).
    Sum(Digest),
    /// A small fixed answer, already queued.
    Done,
}

struct Stream {
    job: Job,
    /// Bytes h2 has not taken yet.
    unsent: VecDeque<Bytes>,
    /// Finish once `unsent` is empty.
    finish: bool,
}

/// One HTTP/2 connection of the test connector, served on its own thread until `stop`.
fn connector(
    edge: SocketAddr,
    ca: &Path,
    registration: Registration,
    registered: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<()> {
    let pem = std::fs::read(ca).expect("ca");
    let mut roots = rustls::RootCertStore::empty();
    for cert in burrow_core::quic::tls::certs_from_pem(&pem, "ca.pem").expect("ca pem") {
        roots.add(cert).expect("root");
    }
    thread::spawn(move || {
        let config = tls::client_config(roots, PostQuantum::Prefer).expect("tls");
        let mut sock = TcpStream::connect(edge).expect("dial the edge over TCP");
        sock.set_nodelay(true).expect("nodelay");
        sock.set_read_timeout(Some(Duration::from_millis(2)))
            .expect("timeout");
        let mut c =
            ConnectorConnection::new(Instant::now(), config, tls::SERVER_NAME, Limits::default())
                .expect("machine");
        let mut streams: HashMap<StreamId, Stream> = HashMap::new();
        let mut inbuf = vec![0u8; 256 * 1024];
        let mut outbuf = vec![0u8; 256 * 1024];
        let mut pending: Vec<u8> = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            // Drain the machine.
            loop {
                match c.poll_output(now) {
                    Output::Event(Event::Request(r)) => {
                        let s = start(&mut c, r, &registration);
                        streams.insert(s.0, s.1);
                    }
                    Output::Event(Event::Stream(StreamEvent::Readable(id))) => {
                        readable(&mut c, id, &mut streams, &registered)
                    }
                    Output::Event(Event::Stream(StreamEvent::Reset { stream, .. })) => {
                        streams.remove(&stream);
                    }
                    Output::Event(Event::Closed(e)) => panic!("the edge closed: {e:?}"),
                    Output::Event(_) => {}
                    Output::Transmit => {
                        let n = c.transmit(&mut outbuf);
                        sock.write_all(&outbuf[..n]).expect("write");
                    }
                    Output::Timeout(_) => break,
                }
            }
            let mut moved = false;
            for (&id, s) in streams.iter_mut() {
                moved |= refill(&mut c, id, s);
            }
            // An echo stopped reading while it had bytes to send back; those are out now.
            let idle: Vec<StreamId> = streams
                .iter()
                .filter(|(_, s)| matches!(s.job, Job::Echo) && s.unsent.is_empty())
                .map(|(&id, _)| id)
                .collect();
            for id in idle {
                readable(&mut c, id, &mut streams, &registered);
            }
            if moved {
                continue;
            }
            // Then the socket.
            if pending.is_empty() {
                match sock.read(&mut inbuf) {
                    Ok(0) => panic!("the edge closed the socket"),
                    Ok(n) => pending.extend_from_slice(&inbuf[..n]),
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        c.handle_input(Instant::now(), Input::Timeout);
                    }
                    Err(e) => panic!("read: {e}"),
                }
            }
            if !pending.is_empty() {
                let n = c.handle_input(Instant::now(), Input::Received(&pending));
                pending.drain(..n);
            }
        }
    })
}

/// Answers a new stream and says what to do with it.
fn start(
    c: &mut ConnectorConnection,
    r: IncomingRequest,
    registration: &Registration,
) -> (StreamId, Stream) {
    let id = r.stream;
    let mut stream = Stream {
        job: Job::Done,
        unsent: VecDeque::new(),
        finish: false,
    };
    match r.kind {
        RequestKind::ControlStream => {
            c.respond_implicit(id).expect("respond");
            let mut client =
                ControlClient::new(Instant::now(), registration, None, Duration::from_secs(5))
                    .expect("control client");
            if let Some(b) = client.poll_transmit() {
                stream.unsent.push_back(Bytes::from(b));
            }
            stream.job = Job::Control(Box::new(client));
        }
        RequestKind::Websocket => {
            let key = r
                .head
                .headers
                .get("sec-websocket-key")
                .expect("a WebSocket key")
                .as_bytes()
                .to_vec();
            let mut h = HeaderMap::new();
            h.insert("connection", HeaderValue::from_static("Upgrade"));
            h.insert("upgrade", HeaderValue::from_static("websocket"));
            h.insert(
                "sec-websocket-accept",
                HeaderValue::from_str(&derive_accept_key(&key)).expect("accept"),
            );
            c.respond(id, StatusCode::SWITCHING_PROTOCOLS, &h)
                .expect("respond");
            stream.job = Job::Echo;
        }
        RequestKind::Tcp => {
            c.respond(id, StatusCode::OK, &HeaderMap::new())
                .expect("respond");
            stream.job = Job::Echo;
        }
        _ => match r.head.uri.path() {
            "/huge" => {
                let mut h = HeaderMap::new();
                h.insert("content-length", HeaderValue::from(HUGE));
                c.respond(id, StatusCode::OK, &h).expect("respond");
                stream.job = Job::Send {
                    offset: 0,
                    left: HUGE,
                };
            }
            "/sum" => stream.job = Job::Sum(Digest::new()),
            "/echo" => {
                c.respond(id, StatusCode::OK, &HeaderMap::new())
                    .expect("respond");
                stream.job = Job::Echo;
            }
            path => {
                let body = format!("hello over http2 {path}");
                let mut h = HeaderMap::new();
                h.insert("content-length", HeaderValue::from(body.len()));
                c.respond(id, StatusCode::OK, &h).expect("respond");
                stream.unsent.push_back(Bytes::from(body));
                stream.finish = true;
            }
        },
    }
    (id, stream)
}

/// Reads what arrived on `id` and acts on it.
fn readable(
    c: &mut ConnectorConnection,
    id: StreamId,
    streams: &mut HashMap<StreamId, Stream>,
    registered: &AtomicUsize,
) {
    let Some(s) = streams.get_mut(&id) else {
        return;
    };
    // Echo reads no further than what h2 has taken: the edge is held back by flow control.
    while !matches!(s.job, Job::Echo) || s.unsent.is_empty() {
        match c.read(id) {
            Ok(Read::Data(data)) => match &mut s.job {
                Job::Control(client) => {
                    client
                        .handle_bytes(Instant::now(), &data)
                        .expect("control bytes");
                    while let Some(e) = client.poll_event() {
                        match e {
                            ControlEvent::Registered(_) => {
                                registered.fetch_add(1, Ordering::SeqCst);
                            }
                            // The registration call's count, for the RPC client metrics.
                            ControlEvent::Called(_) => {}
                            other => panic!("control: {other:?}"),
                        }
                    }
                    if let Some(b) = client.poll_transmit() {
                        s.unsent.push_back(Bytes::from(b));
                    }
                }
                Job::Echo => s.unsent.push_back(data),
                Job::Sum(d) => d.update(&data),
                Job::Send { .. } | Job::Done => {}
            },
            Ok(Read::Finished) => {
                match std::mem::replace(&mut s.job, Job::Done) {
                    Job::Sum(d) => {
                        let body = d.finish();
                        let mut h = HeaderMap::new();
                        h.insert("content-length", HeaderValue::from(body.len()));
                        c.respond(id, StatusCode::OK, &h).expect("respond");
                        s.unsent.push_back(Bytes::from(body));
                        s.finish = true;
                    }
                    // Half-close: the echo ends once everything read was sent back.
                    Job::Echo => s.finish = true,
                    job @ Job::Send { .. } => s.job = job,
                    Job::Control(_) | Job::Done => {}
                }
                break;
            }
            Ok(Read::Blocked) | Err(_) => break,
        }
    }
}

/// Hands queued bytes (and pattern bytes of a download) to h2; true if anything moved.
fn refill(c: &mut ConnectorConnection, id: StreamId, s: &mut Stream) -> bool {
    let mut moved = false;
    loop {
        if s.unsent.is_empty() {
            if let Job::Send { offset, left } = &mut s.job {
                if *left == 0 {
                    s.job = Job::Done;
                    s.finish = true;
                } else {
                    let n = BLOCK.min(*left);
                    s.unsent
                        .push_back(Bytes::from(pattern((*offset / 8) as u64, n / 8)));
                    *offset += n;
                    *left -= n;
                }
            }
        }
        let Some(front) = s.unsent.front_mut() else {
            break;
        };
        let Ok(n) = c.send_data(id, front.clone()) else {
            s.unsent.clear();
            return moved;
        };
        if n == 0 {
            return moved;
        }
        moved = true;
        let _ = front.split_to(n);
        if front.is_empty() {
            s.unsent.pop_front();
        }
    }
    if s.finish && s.unsent.is_empty() {
        s.finish = false;
        let _ = c.finish(id, None);
        moved = true;
    }
    moved
}

#[test]
fn burrow_edge_serves_an_http2_connector() {
    let bed = Testbed::create(Path::new(BIN), "e-h2", "app", &[HOST]).expect("tunnel");
    let quic = testbed::free_udp().expect("port");
    let tcp_map = testbed::free_tcp().expect("port");
    let eo = EdgeOpts {
        quic,
        http: testbed::free_tcp().expect("port"),
        // The test connector echoes every TCP stream; it dials nothing.
        tcp_maps: vec![format!("{tcp_map}=app:192.0.2.1:7")],
        udp_maps: Vec::new(),
        icmp_maps: Vec::new(),
        extra: Vec::new(),
    };
    let _edge = bed.edge(&eo).expect("edge");
    let creds: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bed.credentials()).expect("credentials"))
            .expect("json");
    let secret = base64::engine::general_purpose::STANDARD
        .decode(creds["TunnelSecret"].as_str().expect("secret"))
        .expect("base64");
    let tunnel: Uuid = creds["TunnelID"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");
    let registered = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let conns: Vec<_> = (0..CONNECTIONS)
        .map(|i| {
            let mut r = Registration::new(
                creds["AccountTag"].as_str().expect("tag"),
                secret.clone(),
                tunnel,
                Uuid::new_v4(),
                Vec::new(),
            );
            r.conn_index = i;
            connector(quic, &bed.ca(), r, registered.clone(), stop.clone())
        })
        .collect();
    testbed::wait_for(Duration::from_secs(20), "registrations", || {
        Ok(registered.load(Ordering::SeqCst) == usize::from(CONNECTIONS))
    })
    .expect("both connections registered");
    let http = eo.http.port();

    // 100 MiB down, checked.
    let mut c = TcpStream::connect(eo.http).expect("connect");
    c.write_all(
        format!("GET /huge HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .expect("request");
    let expected = {
        let mut d = Digest::new();
        for i in 0..HUGE / BLOCK {
            d.update(&pattern((i * BLOCK / 8) as u64, BLOCK / 8));
        }
        d.finish()
    };
    assert_eq!(
        response_digest(c),
        (200, expected.clone()),
        "100 MiB download"
    );

    // 100 MiB up, checked by the connector's digest.
    let mut c = TcpStream::connect(eo.http).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    c.write_all(
        format!("POST /sum HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {HUGE}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .expect("head");
    for i in 0..HUGE / BLOCK {
        c.write_all(&pattern((i * BLOCK / 8) as u64, BLOCK / 8))
            .expect("body");
    }
    let (status, got) = common::client::request_reply(c);
    assert_eq!((status, got), (200, expected), "100 MiB upload");

    // 50 at once, spread over both connections.
    let handles: Vec<_> = (0..50)
        .map(|i| {
            thread::spawn(move || {
                request(
                    http,
                    &format!(
                        "GET /small/{i} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
                    ),
                    b"",
                )
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(
            h.join().expect("thread"),
            (200, format!("hello over http2 /small/{i}").into_bytes())
        );
    }

    // A request body echoed back while it streams.
    let data = random_bytes(7, 3_000_017);
    let c = TcpStream::connect(eo.http).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut w = c.try_clone().expect("clone");
    let head = format!(
        "POST /echo HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        data.len()
    );
    let sent = data.clone();
    // Written while the echo is read: the echo streams back before the upload ends.
    let writer = thread::spawn(move || {
        w.write_all(head.as_bytes()).expect("head");
        w.write_all(&sent).expect("body");
    });
    assert_eq!(response_digest(c), (200, digest(&data)), "echo");
    writer.join().expect("writer");

    // WebSocket: the upgrade, then bytes both ways.
    let mut ws = TcpStream::connect(eo.http).expect("connect");
    ws.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    ws.write_all(
        format!(
            "GET /ws HTTP/1.1\r\nHost: {HOST}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        .as_bytes(),
    )
    .expect("upgrade");
    let head = read_head(&mut ws);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    for n in [1usize, 1000, 200_003] {
        let sent = random_bytes(n as u64, n);
        ws.write_all(&sent).expect("ws write");
        let mut got = vec![0u8; n];
        ws.read_exact(&mut got).expect("ws echo");
        assert!(got == sent, "WebSocket bytes of {n}");
    }
    drop(ws);

    // TCP with half-close: write everything, shut the write side, read the whole echo.
    let handles: Vec<_> = (0..8u64)
        .map(|i| {
            thread::spawn(move || {
                let data = random_bytes(100 + i, 1 + (i as usize * 97_013) % 700_000);
                let mut s = TcpStream::connect(tcp_map).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(30)))
                    .expect("timeout");
                let mut w = s.try_clone().expect("clone");
                let sent = data.clone();
                let writer = thread::spawn(move || {
                    w.write_all(&sent).expect("write");
                    w.shutdown(Shutdown::Write).expect("half-close");
                });
                let mut got = Vec::new();
                s.read_to_end(&mut got).expect("echo until the end");
                writer.join().expect("writer");
                assert!(
                    got == data,
                    "TCP {i}: {} of {} bytes",
                    got.len(),
                    data.len()
                );
            })
        })
        .collect();
    for h in handles {
        h.join().expect("TCP client");
    }

    // A TCP peer that never speaks TLS is closed (handshake deadline 15 s, registration 10 s).
    let mut silent = TcpStream::connect(quic).expect("connect");
    silent
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    // At most a TLS alert comes back, then EOF (not the 30 s read timeout).
    let mut rest = Vec::new();
    let _ = silent.read_to_end(&mut rest);
    assert!(
        rest.len() < 64,
        "{} bytes for a peer that said nothing",
        rest.len()
    );
    assert!(
        silent.read(&mut [0u8; 1]).is_ok_and(|n| n == 0),
        "the edge closed the silent connection"
    );

    stop.store(true, Ordering::Relaxed);
    for c in conns {
        c.join().expect("connector thread");
    }
}

/// Reads an HTTP/1.1 response head (through the blank line).
fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).expect("head");
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Connections that have not registered are bounded on TCP as on QUIC: with
/// `MAX_UNREGISTERED` (256) silent TCP peers waiting, the next one is closed at once; once
/// they leave, a new one is taken again.
#[test]
fn unregistered_http2_connections_are_bounded() {
    const MAX_UNREGISTERED: usize = burrow_core::tunnel::edge::MAX_UNREGISTERED;
    let bed = Testbed::create(Path::new(BIN), "e-h2-bound", "app", &[HOST]).expect("tunnel");
    let eo = EdgeOpts::loopback().expect("ports");
    let _edge = bed.edge(&eo).expect("edge");
    let port = eo.quic.port();
    let dial = || {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(1)))
            .expect("timeout");
        s
    };
    // Still open: a read waits (for the TLS handshake that never comes) instead of ending.
    let open = |s: &mut TcpStream| matches!(s.read(&mut [0u8; 1]), Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut));
    let mut waiting: Vec<TcpStream> = (0..MAX_UNREGISTERED).map(|_| dial()).collect();
    let mut refused = dial();
    assert!(
        !open(&mut refused),
        "connection {} past the bound is closed",
        MAX_UNREGISTERED + 1
    );
    assert!(open(&mut waiting[0]), "the waiting ones are still served");
    assert!(open(&mut waiting[MAX_UNREGISTERED - 1]));
    drop(waiting);
    // The edge sees them end; room again.
    let start = Instant::now();
    loop {
        let mut again = dial();
        if open(&mut again) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "a new connection is taken once the waiting ones left"
        );
    }
}
