//! What an unregistered peer can make the edge hold, on virtual time: a raw quinn client
//! talks to an [`EdgeEndpoint`] through memory.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use quinn_proto::{ClientConfig, Dir, Endpoint, EndpointConfig, Event, ServerConfig};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::*;
use crate::quic::tls::{self, PostQuantum};
use crate::quic::transport::QuicSettings;
use crate::quic::SERVER_NAME;
use crate::stream::connect::ConnectionType;

const EDGE: &str = "192.0.2.1:7844";
const CLIENT: &str = "198.51.100.1:50000";

fn tls_pair() -> (ServerConfig, ClientConfig) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
    let cert = rcgen::CertificateParams::new(vec![SERVER_NAME.into()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let key = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let mut server = ServerConfig::with_crypto(Arc::new(
        tls::server_config(vec![cert.der().clone()], key, PostQuantum::Prefer).expect("tls"),
    ));
    server.transport_config(QuicSettings::edge().transport_config(true));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).expect("root");
    let mut client = ClientConfig::new(Arc::new(
        tls::client_config(roots, PostQuantum::Prefer).expect("tls"),
    ));
    client.transport_config(QuicSettings::default().transport_config(true));
    (server, client)
}

/// An edge and one raw client connection, moved by hand.
struct Pair {
    edge: EdgeEndpoint,
    client: Endpoint,
    handle: quinn_proto::ConnectionHandle,
    conn: quinn_proto::Connection,
    lost: bool,
}

impl Pair {
    fn new(edge: EdgeEndpoint, cfg: ClientConfig, now: Instant) -> Self {
        let mut client = Endpoint::new(
            Arc::new(EndpointConfig::default()),
            None,
            true,
            Some([7; 32]),
        );
        let edge_addr: SocketAddr = EDGE.parse().expect("addr");
        let (handle, conn) = client
            .connect(now, cfg, edge_addr, SERVER_NAME)
            .expect("connect");
        Self {
            edge,
            client,
            handle,
            conn,
            lost: false,
        }
    }

    /// Moves packets both ways until neither side has more to say.
    fn exchange(&mut self, now: Instant) {
        let client_addr: SocketAddr = CLIENT.parse().expect("addr");
        for _ in 0..100 {
            let mut moved = false;
            let mut buf = Vec::new();
            while let Some(t) = self.conn.poll_transmit(now, 1, &mut buf) {
                self.edge.handle_datagram(now, client_addr, &buf[..t.size]);
                buf.clear();
                moved = true;
            }
            while let Some(t) = self.edge.poll_transmit(now, 1, &mut buf) {
                let data = BytesMut::from(&buf[..t.size]);
                let mut scratch = Vec::new();
                if let Some(quinn_proto::DatagramEvent::ConnectionEvent(_, ev)) =
                    self.client.handle(
                        now,
                        EDGE.parse().expect("addr"),
                        None,
                        None,
                        data,
                        &mut scratch,
                    )
                {
                    self.conn.handle_event(ev);
                }
                buf.clear();
                moved = true;
            }
            while let Some(ev) = self.conn.poll_endpoint_events() {
                if let Some(ev) = self.client.handle_event(self.handle, ev) {
                    self.conn.handle_event(ev);
                }
            }
            while let Some(ev) = self.conn.poll() {
                if let Event::ConnectionLost { .. } = ev {
                    self.lost = true;
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Runs both sides' timers at `now`.
    fn tick(&mut self, now: Instant) {
        self.conn.handle_timeout(now);
        self.edge.handle_timeout(now);
        self.exchange(now);
    }

    fn conn_ids(&mut self) -> Vec<ConnId> {
        self.edge.conns.keys().copied().collect()
    }
}

fn edge() -> (EdgeEndpoint, ClientConfig) {
    let (server, client) = tls_pair();
    (EdgeEndpoint::new(server, [1; 32]), client)
}

#[test]
fn an_unregistered_connection_is_closed_at_the_deadline_and_takes_no_requests() {
    let t0 = Instant::now();
    let (edge, cfg) = edge();
    let mut p = Pair::new(edge, cfg, t0);
    p.exchange(t0);
    let conn = p.conn_ids()[0];
    // Handshake done, but no registration: nothing may be sent down it.
    let request = ConnectRequest {
        dest: "http://app.test/",
        connection_type: ConnectionType::Http,
        metadata: &[],
    };
    assert_eq!(
        p.edge.open_request(t0, conn, &request),
        Err(ApiError::NotRegistered("a request"))
    );
    // Keep the connection alive on the client's side; only the deadline may close it.
    let mut now = t0;
    let timeout = p.edge.poll_timeout().expect("a deadline");
    assert!(timeout > t0, "a timeout in the past is a busy loop");
    while now < t0 + REGISTRATION_DEADLINE - Duration::from_millis(500) {
        now += Duration::from_millis(500);
        p.conn.ping();
        p.tick(now);
        assert!(!p.lost, "closed before the deadline");
    }
    let wake = p.edge.poll_timeout().expect("a deadline");
    assert!(
        wake <= t0 + REGISTRATION_DEADLINE,
        "the deadline is a wake-up"
    );
    now = t0 + REGISTRATION_DEADLINE;
    p.tick(now);
    assert!(p.lost, "closed at the registration deadline");
}

#[test]
fn connection_ids_are_never_reused() {
    let t0 = Instant::now();
    let (edge, cfg) = edge();
    let mut p = Pair::new(edge, cfg.clone(), t0);
    p.exchange(t0);
    let first = p.conn_ids();
    assert_eq!(first.len(), 1);
    // Closed and drained: quinn frees its handle.
    let mut now = t0 + Duration::from_millis(10);
    p.conn
        .close(now, quinn_proto::VarInt::from_u32(0), bytes::Bytes::new());
    p.exchange(now);
    for _ in 0..40 {
        now += Duration::from_millis(250);
        p.tick(now);
    }
    assert!(p.conn_ids().is_empty(), "drained");
    let mut q = Pair::new(p.edge, cfg, now);
    q.exchange(now);
    let second = q.conn_ids();
    assert_eq!(second.len(), 1);
    assert_ne!(first, second, "a new connection gets a new id");
}

/// A client with `transport` connected to an edge seeded `seed`, its control stream open.
fn connected_with(
    transport: quinn_proto::TransportConfig,
    seed: u8,
    t0: Instant,
) -> (Pair, quinn_proto::StreamId) {
    let (server, mut cfg) = tls_pair();
    cfg.transport_config(Arc::new(transport));
    let mut p = Pair::new(EdgeEndpoint::new(server, [seed; 32]), cfg, t0);
    p.exchange(t0);
    let ctl = p.conn.streams().open(Dir::Bi).expect("stream");
    (p, ctl)
}

/// A client granting the edge no stream credit, with its control stream open.
fn creditless(t0: Instant) -> (Pair, quinn_proto::StreamId) {
    let mut transport = quinn_proto::TransportConfig::default();
    transport.stream_receive_window(quinn_proto::VarInt::from_u32(0));
    connected_with(transport, 2, t0)
}

fn bootstraps(n: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    for q in 0..n {
        crate::rpc::message::encode_bootstrap(q, &mut bytes).expect("encode");
    }
    bytes
}

#[test]
fn a_bootstrap_flood_before_registering_closes_the_connection() {
    let t0 = Instant::now();
    let (mut p, ctl) = creditless(t0);
    let bytes = bootstraps(crate::control::edge::PRE_REGISTRATION_MESSAGES + 1);
    assert_eq!(p.conn.send_stream(ctl).write(&bytes), Ok(bytes.len()));
    p.exchange(t0);
    assert!(p.lost, "more messages than allowed before registering");
}

#[test]
fn a_registered_peer_that_leaves_control_replies_unread_is_closed() {
    let t0 = Instant::now();
    let (mut p, ctl) = creditless(t0);
    register(&mut p, ctl, t0);
    // Registered, so no message budget; but every reply stays queued.
    let bytes = bootstraps(4096);
    let mut at = 0;
    while !p.lost && at < bytes.len() {
        at += p.conn.send_stream(ctl).write(&bytes[at..]).expect("write");
        p.exchange(t0);
    }
    assert!(p.lost, "closed once the unread replies passed the cap");
}

/// Registers the client of `p` on its control stream `ctl`; the edge accepts.
fn register(p: &mut Pair, ctl: quinn_proto::StreamId, t0: Instant) -> ConnId {
    let registration = crate::control::tests::registration(0);
    let mut client = crate::control::connector::ControlClient::new(
        t0,
        &registration,
        None,
        Duration::from_secs(5),
    )
    .expect("client");
    let opening = client.poll_transmit().expect("opening");
    assert_eq!(p.conn.send_stream(ctl).write(&opening), Ok(opening.len()));
    p.exchange(t0);
    let conn = p.conn_ids()[0];
    assert!(matches!(
        p.edge.poll_event(),
        Some(EdgeEvent::RegisterRequested { .. })
    ));
    p.edge
        .respond_registration(
            t0,
            conn,
            Ok(ConnectionDetails {
                uuid: uuid::Uuid::nil(),
                location: "LOCAL".into(),
                remotely_managed: true,
            }),
        )
        .expect("answer");
    p.exchange(t0);
    conn
}

/// A registered client that grants the edge no streams until told to.
fn registered_without_grant(t0: Instant) -> (Pair, ConnId) {
    let mut transport = quinn_proto::TransportConfig::default();
    transport.max_concurrent_bidi_streams(quinn_proto::VarInt::from_u32(0));
    let (mut p, ctl) = connected_with(transport, 3, t0);
    let conn = register(&mut p, ctl, t0);
    (p, conn)
}

/// Grants the edge `n` streams in all.
fn grant(p: &mut Pair, n: u32, now: Instant) {
    p.conn
        .set_max_concurrent_streams(Dir::Bi, quinn_proto::VarInt::from_u32(n));
    p.exchange(now);
}

fn session_dest() -> SocketAddr {
    "10.0.0.7:53".parse().expect("addr")
}

#[test]
fn a_call_beyond_the_grant_waits_for_credit_then_is_answered() {
    let t0 = Instant::now();
    let (mut p, conn) = registered_without_grant(t0);
    let session = SessionId(7);
    let named = p
        .edge
        .register_udp_session(t0, conn, session, session_dest(), 0)
        .expect("waits for credit");
    p.exchange(t0);
    assert_eq!(p.conn.streams().accept(Dir::Bi), None, "nothing opened yet");
    assert_eq!(p.edge.poll_event(), None, "and nothing failed");

    grant(&mut p, 1, t0);
    let stream = p
        .conn
        .streams()
        .accept(Dir::Bi)
        .expect("opened with the credit");
    assert_eq!(stream, named, "as the stream it was named");
    let mut bytes = Vec::new();
    read_stream(&mut p.conn, stream, &mut bytes).expect("read");
    let kind = preamble::parse(&bytes).expect("preamble").expect("whole");
    assert_eq!(kind, StreamKind::Rpc);
    let mut server = RpcStreamServer::connector(crate::session::DatagramVersion::V2);
    server
        .handle_bytes(&bytes[kind.preamble_len()..])
        .expect("call");
    assert!(matches!(
        server.poll_event(),
        Some(RpcStreamEvent::RegisterUdpSession { id, .. }) if id == session
    ));
    server.respond_register_udp_session(Ok(())).expect("answer");
    let answer = server.poll_transmit().expect("answer bytes");
    assert_eq!(p.conn.send_stream(stream).write(&answer), Ok(answer.len()));
    p.exchange(t0);
    assert_eq!(
        p.edge.poll_event(),
        Some(EdgeEvent::UdpSessionRegistered {
            conn,
            id: session,
            result: Ok(())
        })
    );
}

#[test]
fn at_most_max_waiting_streams_wait_for_credit() {
    let t0 = Instant::now();
    let (mut p, conn) = registered_without_grant(t0);
    let request = ConnectRequest {
        dest: "http://app.test/",
        connection_type: ConnectionType::Http,
        metadata: &[],
    };
    let mut named = Vec::new();
    for _ in 0..MAX_WAITING_STREAMS {
        named.push(p.edge.open_request(t0, conn, &request).expect("waits"));
    }
    assert_eq!(
        p.edge.open_request(t0, conn, &request),
        Err(ApiError::NoStreamCredit(MAX_WAITING_STREAMS))
    );
    assert_eq!(
        p.edge.update_configuration(t0, conn, 1, b"{}").map(|_| ()),
        Err(ApiError::NoStreamCredit(MAX_WAITING_STREAMS)),
        "calls wait in the same queue"
    );
    // The first one the caller gives up on still takes its turn, reset at once, so the rest
    // open as what they were named.
    p.edge.reset_request(t0, conn, named[0]).expect("reset");
    grant(&mut p, 3, t0);
    let opened: Vec<_> = std::iter::from_fn(|| p.conn.streams().accept(Dir::Bi)).collect();
    assert_eq!(opened, named[..3]);
    assert!(
        matches!(
            read_stream(&mut p.conn, named[0], &mut Vec::new()),
            Err(quinn_proto::ReadError::Reset(_))
        ),
        "reset"
    );
    let mut head = Vec::new();
    read_stream(&mut p.conn, named[1], &mut head).expect("read");
    assert!(
        head.starts_with(&DATA_PREAMBLE),
        "the next one carries its request"
    );
    // Room in the queue for as many as opened.
    for _ in 0..3 {
        p.edge.open_request(t0, conn, &request).expect("waits");
    }
    assert_eq!(
        p.edge.open_request(t0, conn, &request),
        Err(ApiError::NoStreamCredit(MAX_WAITING_STREAMS))
    );
}

#[test]
fn calls_waiting_for_credit_fail_when_the_connection_closes() {
    let t0 = Instant::now();
    let (mut p, conn) = registered_without_grant(t0);
    let session = SessionId(9);
    p.edge
        .register_udp_session(t0, conn, session, session_dest(), 0)
        .expect("waits");
    p.edge
        .update_configuration(t0, conn, 3, b"{}")
        .expect("waits");
    p.conn
        .close(t0, quinn_proto::VarInt::from_u32(0), bytes::Bytes::new());
    p.exchange(t0);
    let events: Vec<_> = std::iter::from_fn(|| p.edge.poll_event()).collect();
    assert_eq!(
        events[..2],
        [
            EdgeEvent::UdpSessionRegistered {
                conn,
                id: session,
                result: Err("the connection closed".into())
            },
            EdgeEvent::ConfigurationResult {
                conn,
                outcome: RpcCallOutcome::ConnectionClosed
            },
        ]
    );
    assert!(matches!(
        events[2..],
        [EdgeEvent::ConnectionClosed { conn: c, .. }] if c == conn
    ));
    assert_eq!(
        p.edge
            .register_udp_session(t0, conn, session, session_dest(), 0),
        Err(ApiError::Closed),
        "nothing waits on a closed connection"
    );
}

#[test]
fn a_quiet_connection_is_not_polled_until_something_reaches_it() {
    let t0 = Instant::now();
    let (server, cfg) = tls_pair();
    let mut p = Pair::new(EdgeEndpoint::new(server, [4; 32]), cfg, t0);
    p.exchange(t0);
    let ctl = p.conn.streams().open(Dir::Bi).expect("stream");
    let conn = register(&mut p, ctl, t0);
    p.exchange(t0);
    let mut buf = Vec::new();
    assert!(p.edge.poll_transmit(t0, 1, &mut buf).is_none(), "quiet");
    assert!(
        !p.edge.conns[&conn].may_send,
        "quinn had nothing: not asked again"
    );
    // A datagram queued outside any stream operation still goes out at once.
    p.edge
        .send_datagram(conn, Bytes::from_static(b"hello"))
        .expect("queued");
    assert!(p.edge.conns[&conn].may_send);
    p.exchange(t0);
    assert_eq!(
        p.conn.datagrams().recv(),
        Some(Bytes::from_static(b"hello"))
    );
    // A timer that fires lets every connection speak (here: a keep-alive is due).
    assert!(p.edge.poll_transmit(t0, 1, &mut buf).is_none());
    let later = t0 + Duration::from_secs(2);
    p.edge.handle_timeout(later);
    assert!(p.edge.conns[&conn].may_send);
    assert!(
        p.edge.poll_transmit(later, 1, &mut buf).is_some(),
        "the keep-alive goes out"
    );
}
