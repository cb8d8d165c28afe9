//! The edge's session table ([`EdgeSessions`]) against the connector's datagram plane
//! ([`DatagramHub`]) over real quinn-proto connections (TLS 1.3 + QUIC, packets handed across
//! on virtual time): UDP echo round trips for many clients, bundled and held first payloads,
//! a session moving to another connection when its own closes, and ping (echo reply and
//! TTL-exceeded) through an ICMP mapping. The origin network is played by the test: what the
//! hub writes to an origin socket comes straight back as an origin read.

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use burrow_core::control::{ConnectionDetails, Registration};
use burrow_core::datagram::LinkId;
use burrow_core::icmp::{
    parse, write_echo, Echo, EchoKind, IcmpMessage, IcmpRouter, RouterAction, RouterConfig,
};
use burrow_core::session::edge::{
    EdgeDrop, EdgeSessions, EdgeSessionsConfig, MappingId, MappingKind,
};
use burrow_core::session::{
    DatagramVersion, SessionAction, SessionLimits, SessionManager, UdpFlowId, HEADROOM, TAILROOM,
};
use burrow_core::tunnel::connector::{ConnectorConfig, ConnectorConnection};
use burrow_core::tunnel::edge::{ConnId, EdgeEndpoint, EdgeEvent};
use burrow_core::tunnel::udp::{DatagramHub, Egress, HubAction, Links};
use bytes::BytesMut;
use common::tls_pair;
use quinn_proto::ClientConfig;
use uuid::Uuid;

/// The test's connections by index: the link is the index.
struct Conns<'a>(&'a mut [(SocketAddr, Option<ConnectorConnection>)]);

impl Links for Conns<'_> {
    fn connection(&mut self, link: LinkId) -> Option<&mut ConnectorConnection> {
        self.0.get_mut(usize::try_from(link.0).ok()?)?.1.as_mut()
    }
}

const TUNNEL: Uuid = Uuid::from_u128(0x7e11);
const ICMP_SRC: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 3);
const FEATURES: &[&str] = &["support_datagram_v2", "support_datagram_v3_2"];

/// Datagrams per `poll_transmit`, as a GSO-capable driver asks.
const BATCH: usize = 10;

fn connector_config(client: ClientConfig, index: u8) -> ConnectorConfig {
    let features = FEATURES.iter().map(|f| f.to_string()).collect();
    let registration = Registration {
        conn_index: index,
        ..Registration::new("acct", vec![7; 32], TUNNEL, Uuid::from_u128(2), features)
    };
    ConnectorConfig::new(registration, client)
}

/// The edge (endpoint + session table) and one connector process (connections + hub).
struct World {
    now: Instant,
    edge: EdgeEndpoint,
    edge_addr: SocketAddr,
    sessions: EdgeSessions,
    /// Connector connections by link index, with their local addresses.
    connectors: Vec<(SocketAddr, Option<ConnectorConnection>)>,
    hub: DatagramHub,
    /// Edge connection of each link, once registered.
    edge_conns: HashMap<ConnId, usize>,
    /// Open origin sockets: flow → destination.
    origin: HashMap<UdpFlowId, SocketAddr>,
    /// Ping sockets and the ident the "kernel" gave each.
    pings: HashMap<burrow_core::icmp::FunnelId, u16>,
    /// Echoes to hand back as origin reads.
    echoes: Vec<(UdpFlowId, Vec<u8>)>,
    ping_replies: Vec<(burrow_core::icmp::FunnelId, IpAddr, Vec<u8>)>,
    /// Transmits that carried more than one datagram (a GSO batch).
    batches: usize,
    /// What public clients received: (mapping, client, bytes).
    delivered: Vec<(MappingId, SocketAddr, Vec<u8>)>,
    /// Payloads the origin saw, by destination.
    origin_seen: Vec<(SocketAddr, Vec<u8>)>,
    buf: BytesMut,
}

impl World {
    fn new(connections: u8, config: EdgeSessionsConfig) -> Self {
        let (server, client) = tls_pair();
        let now = Instant::now();
        let edge_addr: SocketAddr = "198.51.100.1:7844".parse().unwrap();
        let connectors = (0..connections)
            .map(|i| {
                let addr = SocketAddr::from(([192, 0, 2, 10], 40000 + u16::from(i)));
                let conn = ConnectorConnection::connect(
                    now,
                    connector_config(client.clone(), i),
                    edge_addr,
                    [i + 2; 32],
                )
                .unwrap();
                (addr, Some(conn))
            })
            .collect();
        let mut w = World {
            now,
            edge: EdgeEndpoint::new(server, [1; 32]),
            edge_addr,
            sessions: EdgeSessions::new(config, [5; 32]),
            connectors,
            hub: DatagramHub::new(
                SessionManager::new(SessionLimits::default()),
                IcmpRouter::new(RouterConfig::new(Some(ICMP_SRC), None)),
            ),
            edge_conns: HashMap::new(),
            origin: HashMap::new(),
            pings: HashMap::new(),
            echoes: Vec::new(),
            ping_replies: Vec::new(),
            batches: 0,
            delivered: Vec::new(),
            origin_seen: Vec::new(),
            buf: BytesMut::new(),
        };
        w.run(Duration::from_millis(500));
        assert_eq!(
            w.edge_conns.len(),
            usize::from(connections),
            "every connection registered"
        );
        w
    }

    /// Moves packets and datagrams until everything is quiet, then lets 1 ms pass; `d` in all.
    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        let mut buf = Vec::new();
        while self.now < end {
            loop {
                let mut moved = false;
                // GSO-style batches, split as the kernel would: batching is exercised here.
                while let Some(t) = self.edge.poll_transmit(self.now, BATCH, &mut buf) {
                    moved = true;
                    self.batches += usize::from(t.datagrams(&buf).len() > 1);
                    if let Some((_, Some(c))) = self
                        .connectors
                        .iter_mut()
                        .find(|(a, _)| *a == t.destination)
                    {
                        for d in t.datagrams(&buf) {
                            c.handle_datagram(self.now, self.edge_addr, d);
                        }
                    }
                }
                for i in 0..self.connectors.len() {
                    let (addr, Some(c)) = &mut self.connectors[i] else {
                        continue;
                    };
                    let addr = *addr;
                    while let Some(t) = c.poll_transmit(self.now, BATCH, &mut buf) {
                        moved = true;
                        self.batches += usize::from(t.datagrams(&buf).len() > 1);
                        for d in t.datagrams(&buf) {
                            self.edge.handle_datagram(self.now, addr, d);
                        }
                    }
                    while c.poll_event().is_some() {}
                }
                moved |= self.edge_side();
                moved |= self.connector_side();
                if !moved {
                    break;
                }
            }
            self.now += Duration::from_millis(1);
            if self.edge.poll_timeout().is_some_and(|t| t <= self.now) {
                self.edge.handle_timeout(self.now);
            }
            if self.sessions.poll_timeout().is_some_and(|t| t <= self.now) {
                self.sessions.handle_timeout(self.now);
            }
            self.hub.handle_timeout(self.now);
            for (_, c) in self.connectors.iter_mut() {
                if let Some(c) = c {
                    if c.poll_timeout().is_some_and(|t| t <= self.now) {
                        c.handle_timeout(self.now);
                    }
                }
            }
        }
    }

    /// The edge's glue, as `burrow edge` does it.
    fn edge_side(&mut self) -> bool {
        let mut moved = false;
        while let Some(e) = self.edge.poll_event() {
            moved = true;
            match e {
                EdgeEvent::RegisterRequested { conn, registration } => {
                    let details = ConnectionDetails {
                        uuid: Uuid::from_u128(3),
                        location: "TST".into(),
                        remotely_managed: false,
                    };
                    self.edge
                        .respond_registration(self.now, conn, Ok(details))
                        .unwrap();
                    let version = DatagramVersion::from_features(&registration.features);
                    self.sessions
                        .add_connection(self.now, conn, registration.tunnel_id, version);
                    self.edge_conns
                        .insert(conn, usize::from(registration.conn_index));
                }
                EdgeEvent::ConnectionClosed { conn, .. } => {
                    self.sessions.remove_connection(self.now, conn);
                    self.edge_conns.remove(&conn);
                }
                _ => {}
            }
        }
        while let Some((conn, d)) = self.edge.poll_datagram() {
            moved = true;
            if let Some(out) = self.sessions.handle_datagram(self.now, conn, &d) {
                self.delivered
                    .push((out.mapping, out.client, out.payload.to_vec()));
            }
        }
        while let Some((conn, d)) = self.sessions.poll_datagram() {
            moved = true;
            if self.edge.send_datagram(conn, d.clone()).is_err() {
                self.sessions.send_failed(self.now, conn, &d);
            }
        }
        moved
    }

    /// The connector's glue with a loopback origin network, as the simulator does it.
    fn connector_side(&mut self) -> bool {
        let mut moved = false;
        for i in 0..self.connectors.len() {
            let Some(c) = self.connectors[i].1.as_mut() else {
                continue;
            };
            let (echoes, pings, origin, seen) = (
                &mut self.echoes,
                &mut self.ping_replies,
                &self.origin,
                &mut self.origin_seen,
            );
            self.hub.drain(self.now, LinkId(i as u64), c, |e| match e {
                Egress::Udp { flow, payload } => {
                    if let Some(&dest) = origin.get(&flow) {
                        seen.push((dest, payload.to_vec()));
                        echoes.push((flow, payload.to_vec()));
                    }
                }
                Egress::Ping {
                    funnel,
                    dst,
                    message,
                    ..
                } => {
                    // The socket may be opened after this packet is handed out (the action
                    // comes after the drain), so the ident is derived, not looked up.
                    let ident = ident_of(funnel);
                    let mut reply = message.to_vec();
                    reply[0] = 0;
                    reply[4..6].copy_from_slice(&ident.to_be_bytes());
                    pings.push((funnel, dst, reply));
                }
            });
        }
        while let Some(a) = self.hub.poll_action(&mut Conns(&mut self.connectors)) {
            moved = true;
            match a {
                HubAction::Session(SessionAction::Open { flow, dest }) => {
                    self.origin.insert(flow, dest);
                    self.hub.sessions.handle_origin_opened(self.now, flow);
                }
                HubAction::Session(SessionAction::Send { flow, payload }) => {
                    if let Some(&dest) = self.origin.get(&flow) {
                        self.origin_seen.push((dest, payload.to_vec()));
                        self.echoes.push((flow, payload.to_vec()));
                    }
                }
                HubAction::Session(SessionAction::Close { flow }) => {
                    self.origin.remove(&flow);
                }
                HubAction::Session(_) => {}
                HubAction::Icmp(RouterAction::OpenFunnel { funnel, .. }) => {
                    self.pings.insert(funnel, ident_of(funnel));
                }
                HubAction::Icmp(RouterAction::CloseFunnel { funnel }) => {
                    self.pings.remove(&funnel);
                }
            }
        }
        for (flow, payload) in std::mem::take(&mut self.echoes) {
            moved = true;
            self.buf.clear();
            self.buf.resize(HEADROOM + payload.len() + TAILROOM, 0);
            self.buf[HEADROOM..HEADROOM + payload.len()].copy_from_slice(&payload);
            self.hub.origin_read(
                self.now,
                flow,
                &mut self.buf,
                payload.len(),
                &mut Conns(&mut self.connectors),
            );
        }
        for (funnel, from, message) in std::mem::take(&mut self.ping_replies) {
            moved = true;
            self.hub.ping_reply(
                self.now,
                funnel,
                from,
                &message,
                &mut Conns(&mut self.connectors),
            );
        }
        moved
    }

    fn client(&mut self, mapping: MappingId, client: SocketAddr, payload: &[u8]) {
        self.sessions
            .handle_client(self.now, mapping, client, payload)
            .unwrap();
    }

    fn delivered_to(&self, client: SocketAddr) -> Vec<Vec<u8>> {
        self.delivered
            .iter()
            .filter(|(_, c, _)| *c == client)
            .map(|(_, _, p)| p.clone())
            .collect()
    }
}

/// The echo ident a ping socket gets: anything but the requester's id.
fn ident_of(funnel: burrow_core::icmp::FunnelId) -> u16 {
    (funnel.0 as u16) ^ 0xbeef
}

fn eyeball(port: u16) -> SocketAddr {
    SocketAddr::from(([203, 0, 113, 7], port))
}

fn echo_round_trips(bundle: bool) {
    let mut w = World::new(
        1,
        EdgeSessionsConfig {
            bundle_first_payload: bundle,
            ..EdgeSessionsConfig::default()
        },
    );
    let dest: SocketAddr = "10.0.0.7:7".parse().unwrap();
    let m = w.sessions.add_mapping(TUNNEL, MappingKind::Udp { dest });
    // Each client sends a burst at once (before any answer), then one packet per round.
    let clients: Vec<SocketAddr> = (1..=8).map(eyeball).collect();
    for &c in &clients {
        for i in 0..3u8 {
            w.client(m, c, &[c.port() as u8, i]);
        }
    }
    w.run(Duration::from_millis(50));
    for round in 3..10u8 {
        for &c in &clients {
            w.client(m, c, &[c.port() as u8, round]);
        }
        w.run(Duration::from_millis(5));
    }
    for &c in &clients {
        let got = w.delivered_to(c);
        let want: Vec<Vec<u8>> = (0..10u8).map(|i| vec![c.port() as u8, i]).collect();
        assert_eq!(got, want, "client {c}: every payload echoed once, in order");
    }
    assert!(w.origin_seen.iter().all(|(d, _)| *d == dest));
    assert_eq!(w.origin_seen.len(), clients.len() * 10);
    let s = w.sessions.stats();
    assert_eq!(s.opened, 8);
    assert_eq!(s.registered, 8);
    assert_eq!(s.payloads_in, 80);
    assert_eq!(s.dropped, [0; 14], "{s:?}");
    let hub = w.hub.sessions.stats();
    assert_eq!(hub.total_flows, 8);
    assert_eq!(hub.bundled_in, if bundle { 8 } else { 0 });
    assert!(hub.dropped.iter().all(|&n| n == 0), "{hub:?}");
    assert_eq!(w.hub.sessions.active(), 8);
}

#[test]
fn udp_echo_round_trip_with_held_first_payloads() {
    echo_round_trips(false);
}

#[test]
fn udp_echo_round_trip_with_bundled_first_payloads() {
    echo_round_trips(true);
}

/// A burst of near-MTU payloads leaves both ends as multi-datagram batches (GSO), and every
/// payload comes back intact and in order once the batches are split.
#[test]
fn large_bursts_travel_in_batches() {
    let mut w = World::new(1, EdgeSessionsConfig::default());
    let dest: SocketAddr = "10.0.0.7:7".parse().unwrap();
    let m = w.sessions.add_mapping(TUNNEL, MappingKind::Udp { dest });
    let c = eyeball(1);
    w.client(m, c, &[0]);
    w.run(Duration::from_millis(20));
    let payloads: Vec<Vec<u8>> = (1..=40u8).map(|i| vec![i; 1100]).collect();
    for p in &payloads {
        w.client(m, c, p);
    }
    w.run(Duration::from_millis(50));
    let got = w.delivered_to(c);
    assert_eq!(got.len(), 41, "every payload echoed");
    assert!(got[1..] == payloads[..], "intact and in order");
    assert!(w.batches > 0, "some transmits carried several datagrams");
}

#[test]
fn session_moves_to_another_connection_when_its_own_closes() {
    let mut w = World::new(2, EdgeSessionsConfig::default());
    let dest: SocketAddr = "10.0.0.8:7".parse().unwrap();
    let m = w.sessions.add_mapping(TUNNEL, MappingKind::Udp { dest });
    let c = eyeball(9);
    w.client(m, c, b"before");
    w.run(Duration::from_millis(50));
    assert_eq!(w.delivered_to(c), vec![b"before".to_vec()]);
    let id = w.sessions.session_of(m, c).unwrap();
    let conn = w.sessions.connection_of(id).unwrap();
    let link = w.edge_conns[&conn];
    let flow = w.hub.sessions.flow_of(id).unwrap();

    // That connector connection dies at once; the connector side learns it is gone.
    w.connectors[link].1.as_mut().unwrap().close_now(w.now);
    w.run(Duration::from_millis(200));
    w.connectors[link].1 = None;
    w.hub.link_closed(LinkId(link as u64), None);
    // The edge hears about it when the close reaches it, or by idle timeout: wait for it.
    let mut waited = Duration::ZERO;
    while w.sessions.connection_of(id) == Some(conn) && waited < Duration::from_secs(60) {
        w.run(Duration::from_millis(500));
        waited += Duration::from_millis(500);
    }
    let now_on = w.sessions.connection_of(id);
    assert!(
        now_on.is_some() && now_on != Some(conn),
        "moved: {now_on:?}"
    );
    w.client(m, c, b"after");
    w.run(Duration::from_millis(50));
    assert_eq!(
        w.delivered_to(c),
        vec![b"before".to_vec(), b"after".to_vec()]
    );
    assert_eq!(w.sessions.stats().migrated, 1);
    assert_eq!(w.hub.sessions.flow_of(id), Some(flow), "same origin socket");
    assert_eq!(w.hub.sessions.stats().migrated, 1);
    assert_eq!(
        w.hub.sessions.link_of(id),
        Some(LinkId(w.edge_conns[&now_on.unwrap()] as u64))
    );
}

fn echo_request(src: Ipv4Addr, dst: Ipv4Addr, id: u16, seq: u16, ttl: u8) -> Vec<u8> {
    let mut buf = vec![0u8; 1500];
    let n = write_echo(
        &Echo {
            src: src.into(),
            dst: dst.into(),
            ttl,
            kind: EchoKind::Request,
            id,
            seq,
            data: b"burrow ping",
        },
        &mut buf,
    )
    .unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn ping_through_an_icmp_mapping() {
    let mut w = World::new(1, EdgeSessionsConfig::default());
    let m = w.sessions.add_mapping(TUNNEL, MappingKind::Icmp);
    let (me, target) = (Ipv4Addr::new(192, 0, 2, 50), Ipv4Addr::new(10, 0, 0, 9));
    let (alice, bob) = (eyeball(1), eyeball(2));
    for seq in 0..3 {
        w.client(m, alice, &echo_request(me, target, 0x1234, seq, 64));
        w.client(m, bob, &echo_request(me, target, 0x9999, seq, 64));
        w.run(Duration::from_millis(10));
    }
    for (who, id) in [(alice, 0x1234), (bob, 0x9999)] {
        let got = w.delivered_to(who);
        assert_eq!(got.len(), 3, "{who}");
        for (seq, packet) in got.iter().enumerate() {
            let p = parse(packet).unwrap();
            assert_eq!((p.src(), p.dst()), (IpAddr::from(target), IpAddr::from(me)));
            match p.message() {
                IcmpMessage::EchoReply {
                    id: got_id,
                    seq: got_seq,
                    data,
                } => {
                    assert_eq!((got_id, usize::from(got_seq)), (id, seq));
                    assert_eq!(data, b"burrow ping");
                }
                other => panic!("expected an echo reply, got {other:?}"),
            }
        }
    }
    // TTL 1: the connector answers time-exceeded itself, quoting our request.
    let carol = eyeball(3);
    w.client(m, carol, &echo_request(me, target, 0x4242, 0, 1));
    w.run(Duration::from_millis(10));
    let got = w.delivered_to(carol);
    assert_eq!(got.len(), 1);
    let p = parse(&got[0]).unwrap();
    assert_eq!(
        (p.src(), p.dst()),
        (IpAddr::from(ICMP_SRC), IpAddr::from(me))
    );
    assert!(matches!(p.message(), IcmpMessage::TimeExceeded { .. }));
    let s = w.sessions.stats();
    assert_eq!((s.icmp_out, s.icmp_in), (7, 7));
    assert_eq!(s.dropped(EdgeDrop::EchoUnmatched), 0);
}
