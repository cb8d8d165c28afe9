//! The edge machine against core's own [`Connector`] (2 HA connections over QUIC) through an
//! in-memory network, on virtual time: registration and refusal, routing and round robin,
//! and the pacing of stream bodies both ways.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::*;
use crate::connector::{Connector, Input as CInput, Io as CIo, Output as COutput};
use crate::control::Registration;
use crate::datagram::LinkId;
use crate::edge::auth::{TunnelAuth, UNAUTHORIZED};
use crate::edge::streams::{EYEBALL_PATIENCE, READ_CHUNK};
use crate::quic::tls::{self, PostQuantum};
use crate::quic::transport::QuicSettings;
use crate::quic::SERVER_NAME;
use crate::receive_window::EDGE_HELD_STREAMS;
use crate::session::edge::SessionChange;
use crate::session::{UdpFlowId, HEADROOM, ORIGIN_READ, TAILROOM};
use crate::tunnel::connector::ConnectorConfig;
use crate::tunnel::data::FlowId;
use crate::tunnel::supervisor::{EdgePool, SupervisorConfig};

const EDGE: &str = "192.0.2.1:7844";
const TUNNEL: Uuid = Uuid::from_u128(1);
const LATENCY: Duration = Duration::from_millis(5);

fn conn_addr(index: u8) -> SocketAddr {
    SocketAddr::from(([198, 51, 100, 7], 40000 + u16::from(index)))
}

/// What the connector asked of its origin side.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    Open(LinkId, FlowId),
    Write(LinkId, FlowId, Vec<u8>),
    Read(LinkId, FlowId),
    /// A UDP session's socket opened (answered at once).
    OpenUdp(UdpFlowId, SocketAddr),
    /// A payload written to it.
    SendUdp(UdpFlowId, Vec<u8>),
}

struct World {
    now: Instant,
    edge: Edge<TunnelAuth>,
    connector: Connector,
    edge_deadline: Option<Instant>,
    connector_deadline: Option<Instant>,
    /// (arrival, seq) -> (from, to, bytes)
    net: BTreeMap<(Instant, u64), (SocketAddr, SocketAddr, Vec<u8>)>,
    seq: u64,
    events: Vec<Event>,
    streams: Vec<(EyeballId, StreamEvent)>,
    origin: Vec<Origin>,
    /// What the edge sent public clients: (mapping, client, payload).
    to_clients: Vec<(MappingId, SocketAddr, Vec<u8>)>,
    /// A connector socket whose packets the network loses both ways.
    cut: Option<SocketAddr>,
}

impl World {
    /// An edge that knows tunnel [`TUNNEL`] with `secret`; a connector presenting `[7; 32]`.
    fn new(secret: Vec<u8>) -> Self {
        Self::with(secret, Vec::new(), Vec::new())
    }

    /// [`World::new`], the connector registering `features`, the edge serving `mappings`.
    fn with(secret: Vec<u8>, features: Vec<String>, mappings: Vec<(Uuid, MappingKind)>) -> Self {
        Self::with_rpc_timeout(secret, features, mappings, Duration::from_secs(5))
    }

    /// [`World::with`], the connector giving up on a control-stream call after `rpc_timeout`.
    fn with_rpc_timeout(
        secret: Vec<u8>,
        features: Vec<String>,
        mappings: Vec<(Uuid, MappingKind)>,
        rpc_timeout: Duration,
    ) -> Self {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
        let cert = rcgen::CertificateParams::new(vec![SERVER_NAME.into()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let key = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut quic = quinn_proto::ServerConfig::with_crypto(Arc::new(
            tls::server_config(
                vec![cert.der().clone()],
                key.clone_key(),
                PostQuantum::Prefer,
            )
            .expect("tls"),
        ));
        quic.transport_config(QuicSettings::edge().transport_config(true));
        let http2_tls =
            crate::http2::tls::server_config(vec![cert.der().clone()], key, PostQuantum::Prefer)
                .expect("h2 tls");
        let mut hostnames = HostnameTable::new();
        hostnames.insert("app.test", TUNNEL).expect("hostname");
        let mut auth = TunnelAuth::new();
        auth.insert(TUNNEL, "account", secret);
        let start = Instant::now();
        let edge = Edge::new(
            EdgeConfig {
                quic,
                http2_tls,
                http2_limits: crate::http2::Limits::default(),
                hostnames,
                sessions: EdgeSessionsConfig::default(),
                mappings,
                seed: [3; 32],
            },
            auth,
        );
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).expect("root");
        let mut client = quinn_proto::ClientConfig::new(Arc::new(
            tls::client_config(roots, PostQuantum::Prefer).expect("tls"),
        ));
        client.transport_config(QuicSettings::default().transport_config(true));
        let registration =
            Registration::new("account", vec![7; 32], TUNNEL, Uuid::from_u128(2), features);
        let mut config = SupervisorConfig::new(ConnectorConfig {
            rpc_timeout,
            ..ConnectorConfig::new(registration, client)
        });
        config.ha_connections = 2;
        let pool = EdgePool::from_static(&[EDGE.parse().expect("addr")]).expect("pool");
        Self {
            now: start,
            edge,
            connector: Connector::new(start, config, pool, 5),
            edge_deadline: None,
            connector_deadline: None,
            net: BTreeMap::new(),
            seq: 0,
            events: Vec::new(),
            streams: Vec::new(),
            origin: Vec::new(),
            to_clients: Vec::new(),
            cut: None,
        }
    }

    /// Both drivers' inner loops: drain each machine until it says `Timeout`.
    fn flush(&mut self) {
        let now = self.now;
        let edge_addr: SocketAddr = EDGE.parse().expect("addr");
        let (net, seq, origin) = (&mut self.net, &mut self.seq, &mut self.origin);
        self.connector_deadline = self.connector.drain(now, |out| match out {
            COutput::Transmit {
                index,
                transmit,
                data,
            } => {
                for d in transmit.datagrams(data) {
                    *seq += 1;
                    net.insert(
                        (now + LATENCY, *seq),
                        (conn_addr(index), transmit.destination, d.to_vec()),
                    );
                }
                None
            }
            COutput::Io(CIo::EdgeSocket { index, .. }) => Some(CInput::EdgeSocket {
                index,
                max_segments: 1,
            }),
            COutput::Io(CIo::OpenFlow { link, flow, .. }) => {
                origin.push(Origin::Open(link, flow));
                None
            }
            COutput::Io(CIo::WriteFlow { link, flow, data }) => {
                origin.push(Origin::Write(link, flow, data.to_vec()));
                Some(CInput::FlowWritten { link, flow })
            }
            COutput::Io(CIo::ReadFlow { link, flow }) => {
                origin.push(Origin::Read(link, flow));
                None
            }
            COutput::Io(CIo::OpenUdp { flow, dest }) => {
                origin.push(Origin::OpenUdp(flow, dest));
                Some(CInput::UdpOpened(flow))
            }
            COutput::Io(CIo::SendUdp { flow, payload }) => {
                origin.push(Origin::SendUdp(flow, payload.to_vec()));
                None
            }
            _ => None,
        });
        loop {
            match self.edge.poll_output(now) {
                Output::Timeout(d) => {
                    self.edge_deadline = d;
                    break;
                }
                Output::Transmit { transmit, data } => {
                    for d in transmit.datagrams(data) {
                        self.seq += 1;
                        self.net.insert(
                            (now + LATENCY, self.seq),
                            (edge_addr, transmit.destination, d.to_vec()),
                        );
                    }
                }
                Output::Io(Io::Stream { id, event }) => self.streams.push((id, event)),
                Output::Io(Io::SendToClient {
                    mapping,
                    client,
                    payload,
                }) => self.to_clients.push((mapping, client, payload.to_vec())),
                Output::Io(io) => panic!("no TCP in these tests: {io:?}"),
                Output::Event(e) => self.events.push(e),
            }
        }
    }

    /// Feeds the edge one input, then drains both machines.
    fn edge_input(&mut self, input: Input<'_>) {
        self.edge.handle_input(self.now, input);
        self.flush();
    }

    /// Feeds the connector one input, then drains both machines.
    fn connector_input(&mut self, input: CInput<'_>) {
        self.connector.handle_input(self.now, input);
        self.flush();
    }

    /// Runs virtual time until `stop` says so or `limit` passed; false on the limit.
    fn run(&mut self, limit: Duration, stop: impl Fn(&World) -> bool) -> bool {
        let until = self.now + limit;
        let edge_addr: SocketAddr = EDGE.parse().expect("addr");
        loop {
            self.flush();
            if stop(self) {
                return true;
            }
            let next = [
                self.net.keys().next().map(|k| k.0),
                self.edge_deadline,
                self.connector_deadline,
            ]
            .into_iter()
            .flatten()
            .min();
            match next {
                Some(t) if t <= until => self.now = self.now.max(t),
                _ => return false,
            }
            while let Some(entry) = self.net.first_entry() {
                if entry.key().0 > self.now {
                    break;
                }
                let (from, to, data) = entry.remove();
                if self.cut.is_some_and(|c| c == from || c == to) {
                    continue;
                }
                let received = Received::single(from, &data);
                if to == edge_addr {
                    self.edge.handle_input(self.now, Input::Received(received));
                } else if let Some(index) = (0..2u8).find(|i| conn_addr(*i) == to) {
                    self.connector
                        .handle_input(self.now, CInput::Received { index, received });
                }
            }
            if self.edge_deadline.is_some_and(|t| t <= self.now) {
                self.edge.handle_input(self.now, Input::Timeout);
            }
            if self.connector_deadline.is_some_and(|t| t <= self.now) {
                self.connector.handle_input(self.now, CInput::Timeout);
            }
        }
    }

    fn registered(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, Event::Registered { .. }))
            .count()
    }

    fn open(&mut self, id: u64, target: Target) {
        self.edge_input(Input::Open {
            id: EyeballId(id),
            target,
            dest: "192.0.2.9:22".into(),
            kind: ConnectionType::Tcp,
            metadata: Vec::new(),
        });
    }

    fn events_of(&self, id: u64) -> Vec<StreamEvent> {
        self.streams
            .iter()
            .filter(|(i, _)| *i == EyeballId(id))
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// Every byte the origin was written on `flow` of `link`, in order.
    fn written_to(&self, link: LinkId, flow: FlowId) -> Vec<u8> {
        self.origin
            .iter()
            .filter_map(|o| match o {
                Origin::Write(l, f, d) if (*l, *f) == (link, flow) => Some(d.as_slice()),
                _ => None,
            })
            .flatten()
            .copied()
            .collect()
    }

    fn opened(&self) -> Vec<(LinkId, FlowId)> {
        self.origin
            .iter()
            .filter_map(|o| match o {
                Origin::Open(l, f) => Some((*l, *f)),
                _ => None,
            })
            .collect()
    }

    /// Opens stream `id` into the tunnel and connects its origin flow; returns the flow.
    fn connected(&mut self, id: u64) -> (LinkId, FlowId) {
        let before = self.opened().len();
        self.open(id, Target::Tunnel(TUNNEL));
        assert!(self.run(Duration::from_secs(5), |w| w.opened().len() > before));
        let (link, flow) = self.opened()[before];
        self.connector_input(CInput::FlowConnected { link, flow });
        assert!(self.run(Duration::from_secs(5), |w| {
            w.events_of(id)
                .iter()
                .any(|e| matches!(e, StreamEvent::Response { .. }))
        }));
        (link, flow)
    }
}

fn registered_world() -> World {
    let mut w = World::new(vec![7; 32]);
    assert!(
        w.run(Duration::from_secs(30), |w| w.registered() == 2),
        "both HA connections register: {:?}",
        w.events
    );
    w
}

#[test]
fn requests_are_spread_round_robin_over_a_tunnels_registered_connections() {
    let mut w = registered_world();
    for id in 0..4 {
        w.open(id, Target::Tunnel(TUNNEL));
    }
    assert!(w.run(Duration::from_secs(5), |w| w.opened().len() == 4));
    let mut per_link: BTreeMap<LinkId, usize> = BTreeMap::new();
    for (link, _) in w.opened() {
        *per_link.entry(link).or_default() += 1;
    }
    assert_eq!(per_link.values().copied().collect::<Vec<_>>(), [2, 2]);
    // By hostname too (case and port do not matter); an unknown one is refused at once.
    w.open(10, Target::Hostname("APP.test:8080".into()));
    assert!(w.run(Duration::from_secs(5), |w| w.opened().len() == 5));
    w.open(11, Target::Hostname("other.test".into()));
    assert_eq!(w.events_of(11), [StreamEvent::Refused(OpenError::NoRoute)]);
    w.open(12, Target::Tunnel(Uuid::from_u128(99)));
    assert_eq!(
        w.events_of(12),
        [StreamEvent::Refused(OpenError::NoConnection)]
    );
}

#[test]
fn a_wrong_secret_is_refused_and_takes_no_requests() {
    let mut w = World::new(vec![8; 32]);
    let refused = |w: &World| {
        w.events
            .iter()
            .filter(
                |e| matches!(e, Event::RegistrationRefused { cause, .. } if cause.as_str() == UNAUTHORIZED),
            )
            .count()
    };
    assert!(w.run(Duration::from_secs(30), |w| refused(w) >= 1));
    assert_eq!(w.registered(), 0);
    w.open(1, Target::Tunnel(TUNNEL));
    assert_eq!(
        w.events_of(1),
        [StreamEvent::Refused(OpenError::NoConnection)]
    );
}

#[test]
fn a_response_body_moves_one_chunk_per_credit() {
    let mut w = registered_world();
    let (link, flow) = w.connected(1);
    assert_eq!(
        w.events_of(1),
        [StreamEvent::Response {
            error: String::new(),
            metadata: Vec::new()
        }]
    );
    let total = 3 * READ_CHUNK + 100;
    let body: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
    w.connector_input(CInput::FlowData {
        link,
        flow,
        data: Bytes::from(body.clone()),
    });
    let bodies = |w: &World| {
        w.events_of(1)
            .into_iter()
            .filter_map(|e| match e {
                StreamEvent::Body(b) => Some(b),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let mut got = Vec::new();
    let mut taken = 0;
    while got.len() < total {
        assert!(
            w.run(Duration::from_secs(5), |w| bodies(w).len() > taken),
            "a chunk comes after each credit ({} of {total} bytes)",
            got.len()
        );
        // Without credit nothing more comes, however long it waits.
        w.run(Duration::from_secs(1), |_| false);
        assert_eq!(bodies(&w).len(), taken + 1, "one chunk per credit");
        let chunk = bodies(&w)[taken].clone();
        taken += 1;
        assert!(!chunk.is_empty() && chunk.len() <= READ_CHUNK);
        got.extend_from_slice(&chunk);
        w.edge_input(Input::ReadMore(EyeballId(1)));
    }
    assert_eq!(got, body);
    w.connector_input(CInput::FlowFinished { link, flow });
    assert!(w.run(Duration::from_secs(5), |w| w
        .events_of(1)
        .contains(&StreamEvent::End)));
    assert_eq!(w.edge.open_streams(), 0);
}

#[test]
fn a_crowded_connection_resets_the_stream_that_waited_longest_on_its_eyeball() {
    let mut w = registered_world();
    // Round robin: the even streams on one connection, the odd ones on the other.
    let n = 2 * u64::from(EDGE_HELD_STREAMS);
    for id in 0..n {
        let (link, flow) = w.connected(id);
        w.connector_input(CInput::FlowData {
            link,
            flow,
            data: Bytes::from_static(b"a chunk"),
        });
    }
    let handed = |w: &World, id: u64| {
        w.events_of(id)
            .iter()
            .any(|e| matches!(e, StreamEvent::Body(_)))
    };
    assert!(w.run(Duration::from_secs(5), |w| (0..n).all(|id| handed(w, id))));
    // Stream 0's eyeball takes its chunk: the even streams' connection has one waiting fewer.
    w.edge_input(Input::ReadMore(EyeballId(0)));
    let reset = |w: &World| {
        (0..n)
            .filter(|&id| w.events_of(id).contains(&StreamEvent::Reset))
            .collect::<Vec<_>>()
    };
    // Sooner than the patience, a new request resets nothing.
    w.open(100, Target::Tunnel(TUNNEL));
    w.open(101, Target::Tunnel(TUNNEL));
    assert!(w.run(Duration::from_secs(1), |w| w.opened().len()
        == n as usize + 2));
    assert_eq!(reset(&w), Vec::<u64>::new());
    // Past the patience the crowded connection makes room at its next timeout, no request
    // needed (those already on it need the room too), by one stream: the first to wait on it.
    let before = w.edge.open_streams();
    w.run(EYEBALL_PATIENCE + Duration::from_secs(1), |_| false);
    assert_eq!(reset(&w), [1]);
    let told: Vec<u64> = w
        .events
        .iter()
        .filter_map(|e| match e {
            Event::HeldStreamReset { id, .. } => Some(id.0),
            _ => None,
        })
        .collect();
    assert_eq!(told, [1], "the driver is told, to log it");
    // Not again: neither connection is crowded.
    let after = w.edge.open_streams();
    assert!(after < before, "{after} of {before} streams open");
    w.open(102, Target::Tunnel(TUNNEL));
    w.open(103, Target::Tunnel(TUNNEL));
    w.run(Duration::from_secs(1), |_| false);
    assert_eq!(reset(&w), [1]);
}

#[test]
fn a_request_body_chunk_is_acked_once_taken_and_reaches_the_origin() {
    let mut w = registered_world();
    let (link, flow) = w.connected(2);
    for chunk in [&b"hello "[..], b"tunnel"] {
        let acks = |w: &World| {
            w.events_of(2)
                .iter()
                .filter(|e| **e == StreamEvent::Ack)
                .count()
        };
        let before = acks(&w);
        w.edge_input(Input::Body {
            id: EyeballId(2),
            data: Bytes::copy_from_slice(chunk),
        });
        assert_eq!(acks(&w), before + 1, "acked once the transport took it");
    }
    w.edge_input(Input::Finish(EyeballId(2)));
    let written = |w: &World| w.written_to(link, flow);
    assert!(w.run(Duration::from_secs(5), |w| written(w).len() == 12));
    assert_eq!(written(&w), b"hello tunnel");
}

/// A driver may send chunks ahead of their acks (the edge's raw-byte splice keeps a few in
/// flight), more than one stream's send window: each is acked once taken whole, one ack per
/// chunk, and the origin gets the bytes in order.
#[test]
fn request_body_chunks_sent_ahead_are_each_acked_and_arrive_in_order() {
    let mut w = registered_world();
    let (link, flow) = w.connected(2);
    let body: Vec<u8> = (0..3 * 128 * 1024).map(|i| (i % 251) as u8).collect();
    for chunk in body.chunks(128 * 1024) {
        w.edge_input(Input::Body {
            id: EyeballId(2),
            data: Bytes::copy_from_slice(chunk),
        });
    }
    w.edge_input(Input::Finish(EyeballId(2)));
    let written = |w: &World| w.written_to(link, flow);
    assert!(w.run(Duration::from_secs(5), |w| written(w).len() == body.len()));
    assert_eq!(written(&w), body);
    let acks = w
        .events_of(2)
        .iter()
        .filter(|e| **e == StreamEvent::Ack)
        .count();
    assert_eq!(acks, 3);
}

/// The connector gives up on a registration whose answer the network lost, and its close is
/// lost too: the edge still holds that connection registered (until its idle timeout, at
/// least 3 PTO, tens of seconds under heavy loss). When the connector registers the same index
/// again, the edge closes the abandoned connection at once, so that nothing is routed to it.
#[test]
fn an_index_registered_again_closes_the_connection_its_connector_abandoned() {
    let mut w =
        World::with_rpc_timeout(vec![7; 32], Vec::new(), Vec::new(), Duration::from_secs(1));
    let registrations = |w: &World| -> Vec<(ConnId, u8)> {
        w.events
            .iter()
            .filter_map(|e| match e {
                Event::Registered {
                    conn, conn_index, ..
                } => Some((*conn, *conn_index)),
                _ => None,
            })
            .collect()
    };
    assert!(w.run(Duration::from_secs(10), |w| registrations(w).len() == 1));
    let (abandoned, index) = registrations(&w)[0];
    assert_eq!(index, 0);
    // The answer and, after the connector's 1 s call timeout, its close are lost.
    w.cut = Some(conn_addr(0));
    w.run(Duration::from_millis(1500), |_| false);
    w.cut = None;
    let start = w.now;
    assert!(
        w.run(Duration::from_secs(10), |w| registrations(w).len() == 3),
        "both indexes register: {:?}",
        w.events
    );
    let again = registrations(&w)[1];
    assert_eq!(again.1, 0, "index 0 again first");
    let closed: Vec<&str> = w
        .events
        .iter()
        .filter_map(|e| match e {
            Event::ConnectionClosed { conn, reason } if *conn == abandoned => Some(reason.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        closed,
        [format!("superseded by connection {} (conn_index 0)", again.0 .0).as_str()],
        "closed when index 0 registered again, {:?} after the cut healed, before its idle timeout",
        w.now - start
    );
    assert!(!w.edge.is_open(abandoned));
    // Every request goes to a connection the connector serves.
    for id in 0..4 {
        w.open(id, Target::Tunnel(TUNNEL));
    }
    assert!(w.run(Duration::from_secs(5), |w| w.opened().len() == 4));
}

#[test]
fn shutdown_closes_every_connection_and_resets_its_streams() {
    let mut w = registered_world();
    w.connected(3);
    w.edge_input(Input::Shutdown);
    let closed = |w: &World| {
        w.events
            .iter()
            .filter(|e| matches!(e, Event::ConnectionClosed { .. }))
            .count()
    };
    assert!(w.run(Duration::from_secs(5), |w| closed(w) == 2));
    assert_eq!(w.events_of(3).last(), Some(&StreamEvent::Reset));
    w.open(4, Target::Tunnel(TUNNEL));
    assert_eq!(
        w.events_of(4),
        [StreamEvent::Refused(OpenError::NoConnection)]
    );
}

#[test]
fn a_closed_connections_streams_are_reset_in_the_order_they_were_named() {
    let mut w = registered_world();
    let ids: Vec<u64> = (0..40).map(|i| 1000 - 7 * i).collect();
    for &id in &ids {
        w.open(id, Target::Tunnel(TUNNEL));
    }
    w.edge_input(Input::Shutdown);
    assert!(w.run(Duration::from_secs(5), |w| w
        .events
        .iter()
        .filter(|e| matches!(e, Event::ConnectionClosed { .. }))
        .count()
        == 2));
    let resets: Vec<EyeballId> = w
        .streams
        .iter()
        .filter(|(_, e)| *e == StreamEvent::Reset)
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(resets.len(), ids.len());
    // The connections close one after the other, each resetting its streams in id order:
    // ascending but for one step down, where the second connection's run starts.
    let descents = resets.windows(2).filter(|p| p[0] > p[1]).count();
    assert!(descents <= 1, "{resets:?}");
}

#[test]
fn a_configuration_push_is_answered_and_registrations_name_their_connection_id() {
    let mut w = registered_world();
    let conns: Vec<(ConnId, Uuid)> = w
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Registered {
                conn, connection, ..
            } => Some((*conn, *connection)),
            _ => None,
        })
        .collect();
    assert_eq!(conns.len(), 2);
    assert_ne!(conns[0].1, conns[1].1, "each connection its own id");
    let conn = conns[0].0;
    assert!(w.edge.is_open(conn));
    let answer = |w: &World| {
        w.events.iter().find_map(|e| match e {
            Event::ConfigurationResult { conn: c, outcome } if *c == conn => Some(outcome.clone()),
            _ => None,
        })
    };
    w.edge_input(Input::PushConfiguration {
        conn,
        version: 3,
        config: br#"{"ingress":[{"service":"http_status:503"}]}"#,
    });
    assert!(w.run(Duration::from_secs(5), |w| answer(w).is_some()));
    match answer(&w) {
        Some(RpcCallOutcome::Configuration(r)) => {
            assert_eq!((r.latest_applied_version, r.error), (3, None));
        }
        other => panic!("answered {other:?}"),
    }
    // A connection the edge does not have: the push fails at once.
    w.edge_input(Input::PushConfiguration {
        conn: ConnId(999),
        version: 4,
        config: b"{}",
    });
    assert!(w.events.iter().any(|e| matches!(
        e,
        Event::ConfigurationResult {
            conn: ConnId(999),
            outcome: RpcCallOutcome::Failed(_)
        }
    )));
    // A stream's connection is known while it is open.
    w.open(5, Target::Tunnel(TUNNEL));
    assert!(w
        .edge
        .stream_connection(EyeballId(5))
        .is_some_and(|c| w.edge.is_open(c)));
}

/// A public client's packets on a UDP mapping cross the tunnel as a v3 session and its
/// origin's answers come back to that client; the session's life comes out as events, and
/// when its connection closes it registers again on the other one, on the same origin socket.
#[test]
fn a_mapped_udp_session_echoes_and_moves_when_its_connection_closes() {
    mapped_session_echoes_and_moves(&["support_datagram_v3_2"]);
}

/// The same over datagram v2: the session registers by a `registerUdpSession` call on an RPC
/// stream the edge opens, and its payloads are suffix-typed.
#[test]
fn a_mapped_udp_session_over_datagram_v2_echoes_and_moves_when_its_connection_closes() {
    mapped_session_echoes_and_moves(&[]);
}

fn mapped_session_echoes_and_moves(features: &[&str]) {
    let dest: SocketAddr = "10.0.0.7:7".parse().expect("addr");
    let client: SocketAddr = "203.0.113.5:5353".parse().expect("addr");
    let mut w = World::with(
        vec![7; 32],
        features.iter().map(|f| (*f).to_owned()).collect(),
        vec![(TUNNEL, MappingKind::Udp { dest })],
    );
    assert!(w.run(Duration::from_secs(30), |w| w.registered() == 2));
    let mapping = MappingId(0);
    let sessions = |w: &World| -> Vec<SessionChange> {
        w.events
            .iter()
            .filter_map(|e| match e {
                Event::Session(s) if s.client == client && s.mapping == mapping => {
                    Some(s.change.clone())
                }
                _ => None,
            })
            .collect()
    };
    let sent = |w: &World| -> Vec<(UdpFlowId, Vec<u8>)> {
        w.origin
            .iter()
            .filter_map(|o| match o {
                Origin::SendUdp(f, p) => Some((*f, p.clone())),
                _ => None,
            })
            .collect()
    };
    w.edge_input(Input::ClientPacket {
        mapping,
        from: client,
        data: b"ping 1",
    });
    assert!(w.run(Duration::from_secs(5), |w| !sent(w).is_empty()));
    let (flow, payload) = sent(&w)[0].clone();
    assert_eq!(payload, b"ping 1");
    assert!(w.origin.contains(&Origin::OpenUdp(flow, dest)));
    let first = match sessions(&w)[..] {
        [SessionChange::Opened { conn, dest: d }, SessionChange::Registered { conn: r }]
            if d == dest && r == conn =>
        {
            conn
        }
        ref other => panic!("opened and registered, got {other:?}"),
    };

    // The origin answers: the client gets it from the mapping's socket.
    let echo = |w: &mut World, text: &[u8]| {
        let mut buf = BytesMut::zeroed(HEADROOM + ORIGIN_READ + TAILROOM);
        buf[HEADROOM..HEADROOM + text.len()].copy_from_slice(text);
        w.connector_input(CInput::UdpRead {
            flow,
            buf: &mut buf,
            len: text.len(),
        });
    };
    echo(&mut w, b"pong 1");
    assert!(w.run(Duration::from_secs(5), |w| !w.to_clients.is_empty()));
    assert_eq!(w.to_clients, [(mapping, client, b"pong 1".to_vec())]);

    // Its connection's path is cut: once the edge drops the connection, the session
    // registers on the other one and the same origin socket carries on.
    let index = w
        .events
        .iter()
        .find_map(|e| match e {
            Event::Registered {
                conn, conn_index, ..
            } if *conn == first => Some(*conn_index),
            _ => None,
        })
        .expect("registered");
    w.cut = Some(conn_addr(index));
    assert!(w.run(Duration::from_secs(60), |w| {
        sessions(w)
            .iter()
            .any(|c| matches!(c, SessionChange::Registered { conn } if *conn != first))
    }));
    let changes = sessions(&w);
    let second = match changes[2..] {
        [SessionChange::Migrated { from, to }, SessionChange::Registered { conn }]
            if from == Some(first) && conn == to && to != first =>
        {
            to
        }
        ref other => panic!("migrated, then registered there; got {other:?}"),
    };
    assert_eq!(
        w.edge
            .sessions()
            .session_of(mapping, client)
            .and_then(|id| w.edge.sessions().connection_of(id)),
        Some(second)
    );
    assert!(!changes.iter().any(|c| matches!(c, SessionChange::Ended(_))));
    w.to_clients.clear();
    w.edge_input(Input::ClientPacket {
        mapping,
        from: client,
        data: b"ping 2",
    });
    assert!(w.run(Duration::from_secs(10), |w| sent(w).len() == 2));
    assert_eq!(sent(&w)[1], (flow, b"ping 2".to_vec()), "the same socket");
    echo(&mut w, b"pong 2");
    assert!(w.run(Duration::from_secs(10), |w| !w.to_clients.is_empty()));
    assert_eq!(w.to_clients, [(mapping, client, b"pong 2".to_vec())]);
    let opened = w
        .origin
        .iter()
        .filter(|o| matches!(o, Origin::OpenUdp(..)))
        .count();
    assert_eq!(opened, 1, "no second origin socket");
}

/// Anyone may start handshakes the edge refuses (here: a client offering another ALPN), as
/// fast as they like: the edge reports a few per window, then how many it left out.
#[test]
fn a_flood_of_refused_connections_is_reported_a_few_times_per_window() {
    let mut w = World::new(vec![7; 32]);
    // X25519 alone keeps the ClientHello in the first datagram, which the edge refuses.
    let provider = rustls::crypto::CryptoProvider {
        kx_groups: vec![rustls::crypto::aws_lc_rs::kx_group::X25519],
        ..rustls::crypto::aws_lc_rs::default_provider()
    };
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"not-argotunnel".to_vec()];
    let quic = quinn_proto::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls");
    let client = quinn_proto::ClientConfig::new(Arc::new(quic));
    let mut peer = quinn_proto::Endpoint::new(
        Arc::new(quinn_proto::EndpointConfig::default()),
        None,
        true,
        None,
    );
    let edge_addr: SocketAddr = EDGE.parse().expect("addr");
    let mut attempt = |w: &mut World, i: u16| {
        let (_, mut conn) = peer
            .connect(w.now, client.clone(), edge_addr, SERVER_NAME)
            .expect("connect");
        let mut buf = Vec::new();
        let from = SocketAddr::from(([203, 0, 113, 9], 1024 + i));
        while let Some(t) = conn.poll_transmit(w.now, 1, &mut buf) {
            let data = buf[..t.size].to_vec();
            buf.clear();
            w.edge_input(Input::Received(Received::single(from, &data)));
        }
    };
    let refused = |w: &World| -> Vec<u64> {
        w.events
            .iter()
            .filter_map(|e| match e {
                Event::ConnectionRefused { suppressed, .. } => Some(*suppressed),
                _ => None,
            })
            .collect()
    };
    for i in 0..1000 {
        attempt(&mut w, i);
    }
    assert_eq!(refused(&w), vec![0; REFUSALS_LOGGED as usize]);
    w.now += REFUSAL_WINDOW;
    attempt(&mut w, 1000);
    assert_eq!(
        refused(&w).last(),
        Some(&(1000 - u64::from(REFUSALS_LOGGED))),
        "the next window's first report counts what the last one left out"
    );
}
