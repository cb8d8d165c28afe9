//! The supervisor against a real [`EdgeEndpoint`] over a tiny in-memory network, on virtual
//! time. Every step checks the driver rule: a deadline that does not move time forward is a
//! busy loop.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use quinn_proto::{ClientConfig, ServerConfig};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use uuid::Uuid;

use super::*;
use crate::connector::{Connector, Input, Io, Output};
use crate::control::connector::{RpcCall, RpcMethod};
use crate::control::{ConnectionDetails, Registration, RegistrationError};
use crate::datagram::{v2, v3};
use crate::icmp::FunnelId;
use crate::icmp::{write_echo, Echo, EchoKind};
use crate::quic::tls::{self, PostQuantum};
use crate::quic::transport::QuicSettings;
use crate::quic::SERVER_NAME;
use crate::session::UdpFlowId;
use crate::session::{DropReason, SessionMethod};
use crate::session::{HEADROOM, ORIGIN_READ, TAILROOM};
use crate::tunnel::data::{FlowId, OriginAction};
use crate::tunnel::edge::{ConnId, EdgeEndpoint, EdgeEvent};
use crate::tunnel::registrations::RegistrationStats;
use crate::tunnel::Received;

mod access;
mod dials;
mod flows;
mod held;
mod http2;

const EDGE: &str = "192.0.2.1:7844";

fn tls_pair() -> (ServerConfig, ClientConfig) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
    let cert = rcgen::CertificateParams::new(vec![SERVER_NAME.into()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let key = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let settings = QuicSettings::default();
    let mut server = ServerConfig::with_crypto(Arc::new(
        tls::server_config(vec![cert.der().clone()], key, PostQuantum::Prefer).expect("tls"),
    ));
    server.transport_config(settings.transport_config(true));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).expect("root");
    let mut client = ClientConfig::new(Arc::new(
        tls::client_config(roots, PostQuantum::Prefer).expect("tls"),
    ));
    client.transport_config(settings.transport_config(true));
    (server, client)
}

fn connector_config(client: ClientConfig) -> ConnectorConfig {
    let registration = Registration::new(
        "account",
        vec![7; 32],
        Uuid::from_u128(1),
        Uuid::from_u128(2),
        vec![],
    );
    ConnectorConfig::new(registration, client)
}

/// How the test edge answers registrations.
#[derive(Clone)]
enum Answer {
    Accept,
    Refuse(&'static str, bool),
    /// Registrations get no answer (as when heavy loss delays it past the RPC timeout).
    Silent,
}

struct World {
    start: Instant,
    now: Instant,
    /// The machine under test, driven as a driver does (see [`World::flush`]).
    connector: Connector,
    /// The deadline of the last `Output::Timeout`.
    deadline: Option<Instant>,
    server: ServerConfig,
    edge: Option<EdgeEndpoint>,
    answer: Answer,
    /// (arrival, seq) -> (from, to, bytes)
    net: BTreeMap<(Instant, u64), (SocketAddr, SocketAddr, Vec<u8>)>,
    seq: u64,
    events: Vec<(Duration, SupervisorEvent)>,
    edge_events: Vec<EdgeEvent>,
    buf: Vec<u8>,
    /// Packets to and from this connector index are lost.
    blackhole: Option<u8>,
    /// The simulated origin sockets.
    origin: Origin,
    /// Datagrams the edge received, by connection.
    edge_datagrams: Vec<(ConnId, Vec<u8>)>,
    /// Origin actions (data-stream flows), for the tests that serve requests.
    origin_actions: Vec<(LinkId, OriginAction)>,
}

/// The origin side of the datagram plane, as a driver would see it.
#[derive(Default)]
struct Origin {
    /// Opening a UDP socket fails with this text.
    refuse: Option<&'static str>,
    opened: Vec<(UdpFlowId, SocketAddr)>,
    closed: Vec<UdpFlowId>,
    /// Payloads written to origin sockets (egress and delayed sends alike).
    written: Vec<(UdpFlowId, Vec<u8>)>,
    funnels: Vec<(FunnelId, IpAddr)>,
    pings: Vec<(FunnelId, IpAddr, Vec<u8>)>,
    /// Access key URLs the connector asked to fetch.
    key_fetches: Vec<String>,
}

const LATENCY: Duration = Duration::from_millis(5);

fn conn_addr(index: u8) -> SocketAddr {
    SocketAddr::from(([198, 51, 100, 7], 40000 + u16::from(index)))
}

impl World {
    fn new(ha: u8, seed: u64) -> Self {
        Self::with(ha, seed, |_| {})
    }

    fn with(ha: u8, seed: u64, tune: impl FnOnce(&mut SupervisorConfig)) -> Self {
        let (server, client) = tls_pair();
        let start = Instant::now();
        let mut config = SupervisorConfig::new(connector_config(client));
        config.ha_connections = ha;
        tune(&mut config);
        let pool = EdgePool::from_static(&[EDGE.parse().expect("addr")]).expect("pool");
        let connector = Connector::new(start, config, pool, seed);
        let edge = EdgeEndpoint::new(server.clone(), [seed as u8; 32]);
        Self {
            start,
            now: start,
            connector,
            deadline: None,
            server,
            edge: Some(edge),
            answer: Answer::Accept,
            net: BTreeMap::new(),
            seq: 0,
            events: Vec::new(),
            edge_events: Vec::new(),
            buf: Vec::new(),
            blackhole: None,
            origin: Origin::default(),
            edge_datagrams: Vec::new(),
            origin_actions: Vec::new(),
        }
    }

    /// The driver loop: feed nothing, drain `poll_output` until `Timeout`, doing the I/O it
    /// asks for on the simulated network and origin; then let the edge act. Until quiet.
    fn flush(&mut self) {
        let edge_addr: SocketAddr = EDGE.parse().expect("addr");
        loop {
            let mut any = false;
            let now = self.now;
            let start = self.start;
            let (net, seq, events) = (&mut self.net, &mut self.seq, &mut self.events);
            let (origin, actions) = (&mut self.origin, &mut self.origin_actions);
            // The loop helper the simulator drives the connector with.
            self.deadline = self.connector.drain(now, |out| {
                any = true;
                match out {
                    Output::Timeout(_) => None,
                    Output::Transmit {
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
                    Output::Event(e) => {
                        events.push((now - start, e));
                        None
                    }
                    Output::Io(io) => match do_io(origin, actions, io)? {
                        TestAnswer::EdgeSocket(index) => Some(Input::EdgeSocket {
                            index,
                            max_segments: 1,
                        }),
                        TestAnswer::UdpOpened(flow) => Some(Input::UdpOpened(flow)),
                        TestAnswer::UdpFailed(flow, reason) => {
                            Some(Input::UdpFailed { flow, reason })
                        }
                    },
                }
            });
            if let Some(edge) = &mut self.edge {
                while let Some(t) = edge.poll_transmit(self.now, 1, &mut self.buf) {
                    let (dest, size) = (t.destination, t.size);
                    self.seq += 1;
                    self.net.insert(
                        (self.now + LATENCY, self.seq),
                        (edge_addr, dest, self.buf[..size].to_vec()),
                    );
                    any = true;
                }
                while let Some(e) = edge.poll_event() {
                    any = true;
                    if let EdgeEvent::RegisterRequested { conn, .. } = &e {
                        let result = match self.answer {
                            Answer::Silent => {
                                self.edge_events.push(e);
                                continue;
                            }
                            Answer::Accept => Ok(ConnectionDetails {
                                uuid: Uuid::from_u128(conn.0 as u128 + 10),
                                location: "TST".into(),
                                remotely_managed: false,
                            }),
                            Answer::Refuse(cause, should_retry) => Err(RegistrationError {
                                cause: cause.into(),
                                should_retry,
                                retry_after: Duration::ZERO,
                            }),
                        };
                        edge.respond_registration(self.now, *conn, result)
                            .expect("respond");
                    }
                    self.edge_events.push(e);
                }
                while let Some((conn, d)) = edge.poll_datagram() {
                    self.edge_datagrams.push((conn, d.to_vec()));
                    any = true;
                }
            }
            if !any {
                break;
            }
        }
    }

    /// Feeds one input, then drains the outputs.
    fn input(&mut self, input: Input<'_>) {
        self.connector.handle_input(self.now, input);
        self.flush();
    }

    /// Runs until `until` (virtual), or `stop` says so.
    fn run(&mut self, until: Duration, mut stop: impl FnMut(&World) -> bool) {
        let limit = self.start + until;
        let mut stalled = 0;
        loop {
            self.flush();
            if stop(self) {
                return;
            }
            let mut next = self.net.keys().next().map(|k| k.0);
            for t in [
                self.deadline,
                self.edge.as_mut().and_then(|e| e.poll_timeout()),
            ]
            .into_iter()
            .flatten()
            {
                next = Some(next.map_or(t, |n: Instant| n.min(t)));
            }
            let Some(next) = next.filter(|n| *n <= limit) else {
                self.now = self.now.max(limit);
                return;
            };
            if next <= self.now {
                stalled += 1;
                assert!(
                    stalled < 1000,
                    "busy loop: deadline {next:?} does not move time"
                );
            } else {
                stalled = 0;
                self.now = next;
            }
            let edge_addr: SocketAddr = EDGE.parse().expect("addr");
            while let Some(entry) = self.net.first_entry() {
                if entry.key().0 > self.now {
                    break;
                }
                let (from, to, data) = entry.remove();
                if self
                    .blackhole
                    .is_some_and(|b| from == conn_addr(b) || to == conn_addr(b))
                {
                    continue;
                }
                if to == edge_addr {
                    if let Some(edge) = &mut self.edge {
                        edge.handle_datagram(self.now, from, &data);
                    }
                } else if let Some(index) = (0..8u8).find(|i| conn_addr(*i) == to) {
                    let received = Received::single(from, &data);
                    self.connector
                        .handle_input(self.now, Input::Received { index, received });
                }
            }
            if self.deadline.is_some_and(|t| t <= self.now) {
                self.input(Input::Timeout);
                assert!(
                    self.deadline.is_none_or(|t| t > self.now),
                    "the connector's timeout did not move forward after Input::Timeout"
                );
            }
            if let Some(edge) = &mut self.edge {
                if edge.poll_timeout().is_some_and(|t| t <= self.now) {
                    edge.handle_timeout(self.now);
                }
            }
        }
    }

    fn registered(&self) -> Vec<(Duration, u8, LinkId)> {
        self.events
            .iter()
            .filter_map(|(t, e)| match e {
                SupervisorEvent::Registered { index, link, .. } => Some((*t, *index, *link)),
                _ => None,
            })
            .collect()
    }

    fn connecting(&self) -> Vec<(Duration, u8)> {
        self.events
            .iter()
            .filter_map(|(t, e)| match e {
                SupervisorEvent::Connecting { index, .. } => Some((*t, *index)),
                _ => None,
            })
            .collect()
    }
}

/// What the test driver owes the connector after some I/O.
enum TestAnswer {
    EdgeSocket(u8),
    UdpOpened(UdpFlowId),
    UdpFailed(UdpFlowId, &'static str),
}

/// The I/O a driver does, on the simulated origin: origin flows are recorded as the actions
/// they were before the connector (the tests answer them), sockets as what was opened and
/// written.
fn do_io(
    origin: &mut Origin,
    actions: &mut Vec<(LinkId, OriginAction)>,
    io: Io<'_>,
) -> Option<TestAnswer> {
    match io {
        Io::EdgeSocket { index, .. } => return Some(TestAnswer::EdgeSocket(index)),
        Io::OpenFlow {
            link,
            flow,
            kind,
            dest,
            host,
            origin,
        } => actions.push((
            link,
            OriginAction::Open {
                flow,
                kind,
                dest,
                host,
                origin,
            },
        )),
        Io::WriteFlow { link, flow, data } => {
            actions.push((link, OriginAction::Write { flow, data }))
        }
        Io::ReadFlow { link, flow } => actions.push((link, OriginAction::Resume { flow })),
        Io::ShutdownFlow { link, flow } => {
            actions.push((link, OriginAction::ShutdownWrite { flow }))
        }
        Io::CloseFlow { link, flow } => actions.push((link, OriginAction::Close { flow })),
        Io::AbortDial { link, flow } => actions.push((link, OriginAction::AbortDial { flow })),
        Io::OpenUdp { flow, dest } => {
            origin.opened.push((flow, dest));
            return Some(match origin.refuse {
                Some(reason) => TestAnswer::UdpFailed(flow, reason),
                None => TestAnswer::UdpOpened(flow),
            });
        }
        Io::SendUdp { flow, payload } => origin.written.push((flow, payload.to_vec())),
        Io::CloseUdp { flow } => origin.closed.push(flow),
        Io::OpenFunnel { funnel, bind } => origin.funnels.push((funnel, bind)),
        Io::SendPing {
            funnel,
            dst,
            message,
            ..
        } => {
            assert!(
                origin.funnels.iter().any(|(f, _)| *f == funnel),
                "an echo goes out before its funnel's socket is opened"
            );
            origin.pings.push((funnel, dst, message.to_vec()));
        }
        Io::FetchAccessKeys { url } => origin.key_fetches.push(url),
        Io::CloseFunnel { .. } | Io::LookupTxt { .. } | Io::FindLocalResolver { .. } => {}
        // These tests run QUIC only.
        Io::DialEdge { .. } | Io::WriteEdge { .. } | Io::CloseEdge { .. } => {}
    }
    None
}

#[test]
fn ha_connections_start_staggered_after_the_first_registers() {
    let mut w = World::new(4, 1);
    w.run(Duration::from_secs(10), |w| {
        w.connector.ready_connections() == 4
    });
    assert_eq!(w.connector.ready_connections(), 4);
    let registered = w.registered();
    let first = registered.iter().find(|r| r.1 == 0).expect("index 0").0;
    let connecting = w.connecting();
    assert_eq!(connecting[0], (Duration::ZERO, 0), "index 0 starts at once");
    for (t, index) in &connecting[1..] {
        assert!(
            *t >= first,
            "index {index} started before index 0 registered"
        );
        let expected = first + Duration::from_secs(u64::from(*index) - 1);
        assert_eq!(
            *t, expected,
            "index {index} starts one interval after the previous"
        );
    }
    let mut links: Vec<LinkId> = registered.iter().map(|r| r.2).collect();
    links.dedup();
    assert_eq!(links.len(), 4, "every connection has its own link");
}

#[test]
fn without_an_edge_it_backs_off_with_jitter_and_connects_once_the_edge_is_up() {
    let mut w = World::new(2, 7);
    w.edge = None;
    w.run(Duration::from_secs(90), |_| false);
    let delays: Vec<Duration> = w
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            SupervisorEvent::Reconnecting {
                index: 0, delay, ..
            } => Some(*delay),
            _ => None,
        })
        .collect();
    assert!(delays.len() >= 5, "retries keep coming: {delays:?}");
    for (k, d) in delays.iter().enumerate() {
        let cap = Duration::from_secs(1 << (k as u32 + 1).min(5));
        assert!(*d < cap, "retry {k} waited {d:?}, cap {cap:?}");
    }
    assert!(
        delays.windows(2).any(|p| p[0] != p[1]),
        "jitter: delays differ"
    );
    assert!(w.registered().is_empty());
    assert_eq!(
        w.connecting().iter().filter(|c| c.1 == 1).count(),
        0,
        "HA connections wait for the first"
    );
    w.edge = Some(EdgeEndpoint::new(w.server.clone(), [9; 32]));
    w.run(Duration::from_secs(200), |w| {
        w.connector.ready_connections() == 2
    });
    assert_eq!(w.connector.ready_connections(), 2);
}

#[test]
fn same_seed_same_schedule() {
    let schedule = |seed| {
        let mut w = World::new(1, seed);
        w.edge = None;
        w.run(Duration::from_secs(60), |_| false);
        w.events
            .iter()
            .filter(|(_, e)| matches!(e, SupervisorEvent::Reconnecting { .. }))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(schedule(3), schedule(3));
    assert_ne!(schedule(3), schedule(4));
}

#[test]
fn edge_restart_reconnects_every_index_on_new_links() {
    let mut w = World::new(4, 2);
    w.run(Duration::from_secs(10), |w| {
        w.connector.ready_connections() == 4
    });
    let before: Vec<LinkId> = w.registered().iter().map(|r| r.2).collect();
    w.edge = None;
    w.net.clear();
    w.run(Duration::from_secs(20), |w| {
        w.connector.ready_connections() == 0
    });
    assert_eq!(w.connector.ready_connections(), 0, "idle timeout noticed");
    w.edge = Some(EdgeEndpoint::new(w.server.clone(), [3; 32]));
    w.run(Duration::from_secs(120), |w| {
        w.connector.ready_connections() == 4
    });
    assert_eq!(w.connector.ready_connections(), 4);
    let after: Vec<LinkId> = w.registered().iter().skip(4).map(|r| r.2).collect();
    assert!(
        after.iter().all(|l| !before.contains(l)),
        "links never reused"
    );
    let closed = w
        .events
        .iter()
        .filter(|(_, e)| {
            matches!(
                e,
                SupervisorEvent::LinkClosed {
                    was_registered: true,
                    ..
                }
            )
        })
        .count();
    assert_eq!(closed, 4);
}

#[test]
fn graceful_shutdown_unregisters_every_connection_then_stops() {
    let mut w = World::new(4, 3);
    w.run(Duration::from_secs(10), |w| {
        w.connector.ready_connections() == 4
    });
    let at = w.now;
    w.input(Input::Shutdown);
    w.run(Duration::from_secs(60), |w| w.connector.is_stopped());
    assert!(w.connector.is_stopped());
    assert!(
        w.now - at < Duration::from_secs(5),
        "nothing in flight: quick"
    );
    let unregistered = w
        .edge_events
        .iter()
        .filter(|e| matches!(e, EdgeEvent::Unregistered { .. }))
        .count();
    assert_eq!(unregistered, 4);
    assert!(matches!(
        w.events.last(),
        Some((_, SupervisorEvent::Stopped))
    ));
    assert!(
        !w.events
            .iter()
            .any(|(t, e)| *t > at - w.start && matches!(e, SupervisorEvent::Connecting { .. })),
        "no reconnect during shutdown"
    );
    // Nothing is left armed.
    w.flush();
    assert_eq!(w.deadline, None);
}

#[test]
fn second_shutdown_stops_at_once() {
    let mut w = World::new(2, 4);
    w.run(Duration::from_secs(10), |w| {
        w.connector.ready_connections() == 2
    });
    let now = w.now;
    w.connector.handle_input(now, Input::Shutdown);
    w.connector.handle_input(now, Input::Shutdown);
    assert!(w.connector.is_stopped());
    w.flush();
    assert!(w.events.iter().any(|(_, e)| *e == SupervisorEvent::Stopped));
}

#[test]
fn shutdown_before_anything_registered_stops() {
    let mut w = World::new(4, 5);
    w.edge = None;
    w.run(Duration::from_secs(3), |_| false);
    w.input(Input::Shutdown);
    w.run(Duration::from_secs(40), |w| w.connector.is_stopped());
    assert!(w.connector.is_stopped());
}

#[test]
fn permanent_refusal_of_the_first_connection_is_fatal() {
    let mut w = World::new(4, 6);
    w.answer = Answer::Refuse("tunnel deleted", false);
    w.run(Duration::from_secs(30), |w| w.connector.is_stopped());
    assert!(w.connector.is_stopped());
    assert!(w.events.iter().any(|(_, e)| matches!(
        e,
        SupervisorEvent::Fatal(SupervisorError::InitialConnection(c)) if c.to_string() == "tunnel deleted"
    )));
}

#[test]
fn unauthorized_is_retried_as_cloudflared_does() {
    let mut w = World::new(1, 8);
    w.answer = Answer::Refuse("Unauthorized: invalid tunnel credentials", false);
    w.run(Duration::from_secs(30), |_| false);
    assert!(!w.connector.is_stopped());
    let refusals = w
        .events
        .iter()
        .filter(|(_, e)| matches!(e, SupervisorEvent::RegistrationFailed { .. }))
        .count();
    assert!(refusals >= 2, "retried: {refusals}");
}

#[test]
fn a_first_registration_that_times_out_is_retried_not_fatal() {
    let mut w = World::new(1, 9);
    w.answer = Answer::Silent;
    w.run(Duration::from_secs(30), |w| w.connecting().len() >= 3);
    assert!(!w.connector.is_stopped(), "gave up: {:?}", w.events);
    assert!(
        !w.events
            .iter()
            .any(|(_, e)| matches!(e, SupervisorEvent::Fatal(_))),
        "a timeout is not a refusal: {:?}",
        w.events
    );
    assert!(w.events.iter().any(|(_, e)| matches!(
        e,
        SupervisorEvent::RegistrationFailed { error, .. } if error.should_retry()
    )));
    // Once the edge answers again, the retried connection registers.
    w.answer = Answer::Accept;
    w.run(Duration::from_secs(120), |w| !w.registered().is_empty());
    assert_eq!(w.registered().len(), 1, "{:?}", w.events);
}

/// cloudflared's RPC client returns an error for a call the connection's end leaves
/// unanswered, which its metrics count as an operation and a failure
/// (`tunnelrpc/registration_client.go`): so does burrow, once, with the call's method.
#[test]
fn a_registration_outstanding_when_the_edge_closes_counts_as_a_failed_call() {
    let mut w = World::new(1, 10);
    w.answer = Answer::Silent;
    w.run(Duration::from_secs(10), |w| {
        w.edge_events
            .iter()
            .any(|e| matches!(e, EdgeEvent::RegisterRequested { .. }))
    });
    let asked = w.now;
    let Some(EdgeEvent::RegisterRequested { conn, .. }) = w.edge_events.last().cloned() else {
        panic!("no registration asked: {:?}", w.edge_events);
    };
    w.run(Duration::from_secs(1), |_| false);
    let now = w.now;
    w.edge
        .as_mut()
        .expect("edge")
        .close(now, conn, "edge going away");
    w.run(Duration::from_secs(3), |w| {
        w.events
            .iter()
            .any(|(_, e)| matches!(e, SupervisorEvent::LinkClosed { .. }))
    });
    let calls: Vec<RpcCall> = w
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            SupervisorEvent::RpcCalled { call, .. } => Some(*call),
            _ => None,
        })
        .collect();
    assert_eq!(calls.len(), 1, "{:?}", w.events);
    assert_eq!(calls[0].method, RpcMethod::RegisterConnection);
    assert!(calls[0].failed);
    // Ended by the close (a packet's latency after it), not by the 5 s RPC deadline.
    assert!(
        calls[0].latency >= now - asked && calls[0].latency < Duration::from_secs(2),
        "{:?}",
        calls[0]
    );
    let mut stats = RegistrationStats::default();
    for (_, e) in &w.events {
        stats.on_event(e);
    }
    let reg = &stats.rpc[&RpcMethod::RegisterConnection];
    assert_eq!((reg.operations, reg.failures), (1, 1));
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("addr")
}

#[test]
fn pool_hands_out_distinct_addresses_and_runs_out() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let now = Instant::now();
    let r1 = [addr("10.0.0.1:7844"), addr("10.0.0.2:7844")];
    let r2 = [addr("10.0.1.1:7844"), addr("10.0.1.2:7844")];
    let mut pool = EdgePool::from_regions(&r1, &r2, IpVersion::Auto).expect("pool");
    assert_eq!(pool.capacity(), 4);
    let mut got: Vec<SocketAddr> = (0..4)
        .map(|i| pool.get_addr(now, i, &mut rng).expect("addr"))
        .collect();
    assert_eq!(pool.get_addr(now, 2, &mut rng).expect("held"), got[2]);
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 4);
    assert_eq!(
        pool.get_addr(now, 4, &mut rng),
        Err(PoolError::NoAddressesLeft)
    );
    assert_eq!(
        pool.get_different_addr(now, 0, true, &mut rng),
        Err(PoolError::NoAddressesLeft)
    );
}

#[test]
fn pool_balances_regions_and_rotates() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let now = Instant::now();
    let r1 = [addr("10.0.0.1:7844"), addr("10.0.0.2:7844")];
    let r2 = [addr("10.0.1.1:7844"), addr("10.0.1.2:7844")];
    let mut pool = EdgePool::from_regions(&r1, &r2, IpVersion::Auto).expect("pool");
    let a = pool.get_addr(now, 0, &mut rng).expect("a");
    let b = pool.get_addr(now, 1, &mut rng).expect("b");
    assert_ne!(
        r1.contains(&a),
        r1.contains(&b),
        "second pick from the other region"
    );
    let c = pool.get_different_addr(now, 0, false, &mut rng).expect("c");
    assert_ne!(c, a);
}

/// Each attempt's transport fits its edge's family: an IPv6 edge gets 1232-byte initial
/// packets (1232 + 48 bytes of IPv6 and UDP headers = 1280), an IPv4 one 1252.
#[test]
fn each_attempt_gets_the_initial_mtu_of_its_edge_family() {
    let (_, client) = tls_pair();
    for (edge, mtu) in [("[2001:db8::1]:7844", 1232), ("192.0.2.1:7844", 1252)] {
        let now = Instant::now();
        let mut config = SupervisorConfig::new(connector_config(client.clone()));
        config.ha_connections = 1;
        let pool = EdgePool::from_static(&[edge.parse().expect("addr")]).expect("pool");
        let mut sup = Supervisor::new(now, config, pool, 1);
        sup.handle_timeout(now);
        let Phase::Running(r) = &mut sup.slots[0].phase else {
            panic!("index 0 did not start");
        };
        assert_eq!(r.conn.quic().expect("quic").path_mtu(), mtu, "{edge}");
    }
}

#[test]
fn srv_names_and_regions() {
    assert_eq!(srv_service(None), "_v2-origintunneld._tcp.argotunnel.com.");
    assert_eq!(
        srv_service(Some("")),
        "_v2-origintunneld._tcp.argotunnel.com."
    );
    assert_eq!(
        srv_service(Some("us")),
        "_us-v2-origintunneld._tcp.argotunnel.com."
    );
    let a: SocketAddr = "192.0.2.1:7844".parse().expect("addr");
    assert_eq!(
        EdgePool::from_srv_targets(&[vec![a]], IpVersion::Auto).err(),
        Some(PoolError::TooFewRegions(1))
    );
    let b: SocketAddr = "192.0.2.2:7844".parse().expect("addr");
    let pool = EdgePool::from_srv_targets(&[vec![a], vec![b], vec![]], IpVersion::Auto);
    assert_eq!(pool.expect("two regions").capacity(), 2);
}

#[test]
fn pool_ip_versions() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let now = Instant::now();
    let r1 = [addr("[2001:db8::1]:7844"), addr("10.0.0.1:7844")];
    let r2 = [addr("[2001:db8::2]:7844"), addr("10.0.1.1:7844")];
    let v4 = EdgePool::from_regions(&r1, &r2, IpVersion::V4).expect("v4");
    assert_eq!(v4.capacity(), 2);
    assert!(EdgePool::from_regions(&r1[1..], &r2[1..], IpVersion::V6).is_err());
    // Auto: the first address is IPv6, so IPv6 is primary.
    let mut auto = EdgePool::from_regions(&r1, &r2, IpVersion::Auto).expect("auto");
    let a = auto.get_addr(now, 0, &mut rng).expect("a");
    assert!(a.is_ipv6());
    // An IPv6 connectivity error moves that region to IPv4 for a while.
    let b = auto.get_different_addr(now, 0, true, &mut rng).expect("b");
    assert!(b.is_ipv4() || b != a);
    let later = now + Duration::from_secs(601);
    auto.release(0);
    assert!(auto.get_addr(later, 0, &mut rng).expect("c").is_ipv6());
}

#[test]
fn static_pool_shares_one_address_among_indexes() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let now = Instant::now();
    let mut pool = EdgePool::from_static(&[addr("127.0.0.1:7844")]).expect("pool");
    for i in 0..4 {
        assert_eq!(
            pool.get_addr(now, i, &mut rng).expect("shared"),
            addr("127.0.0.1:7844")
        );
    }
    assert_eq!(
        pool.get_different_addr(now, 1, true, &mut rng)
            .expect("same"),
        addr("127.0.0.1:7844")
    );
    let mut two = EdgePool::from_static(&[addr("127.0.0.1:1"), addr("127.0.0.2:1")]).expect("pool");
    let a = two.get_addr(now, 0, &mut rng).expect("a");
    let b = two.get_addr(now, 1, &mut rng).expect("b");
    assert_ne!(a, b, "spread over addresses");
}

// The datagram plane, driven as the daemon drives it, against the edge over real QUIC.

/// The connector's ICMPv4 source in these tests.
const ICMP_SRC: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 3);

fn datagram_world(ha: u8, seed: u64, v3: bool) -> World {
    World::with(ha, seed, |c| {
        if v3 {
            c.connector.registration.features = vec!["support_datagram_v3_2".into()];
        }
        c.icmp = RouterConfig::new(Some(ICMP_SRC), None);
    })
}

impl World {
    /// The edge's connection of connector index `index` (its latest registration).
    fn edge_conn(&self, index: u8) -> ConnId {
        self.edge_events
            .iter()
            .rev()
            .find_map(|e| match e {
                EdgeEvent::RegisterRequested { conn, registration }
                    if registration.conn_index == index =>
                {
                    Some(*conn)
                }
                _ => None,
            })
            .expect("index registered")
    }

    fn edge_send_v3(&mut self, conn: ConnId, d: v3::Datagram<'_>) {
        let mut out = vec![0; d.encoded_len()];
        let n = d.encode(&mut out).expect("encode");
        out.truncate(n);
        let edge = self.edge.as_mut().expect("edge");
        edge.send_datagram(conn, Bytes::from(out)).expect("queued");
    }

    /// An origin socket read `payload`, as the daemon's reader hands it over.
    fn origin_read(&mut self, flow: UdpFlowId, payload: &[u8]) {
        let mut buf = BytesMut::zeroed(HEADROOM + ORIGIN_READ + TAILROOM);
        buf[HEADROOM..HEADROOM + payload.len()].copy_from_slice(payload);
        let len = payload.len();
        self.input(Input::UdpRead {
            flow,
            buf: &mut buf,
            len,
        });
    }

    fn v2_registered(&self) -> Vec<(SessionId, Result<(), String>)> {
        self.edge_events
            .iter()
            .filter_map(|e| match e {
                EdgeEvent::UdpSessionRegistered { id, result, .. } => Some((*id, result.clone())),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn v3_session_opens_forwards_and_frames_origin_replies_back() {
    let mut w = datagram_world(1, 11, true);
    w.run(Duration::from_secs(10), |w| {
        w.connector.ready_connections() == 1
    });
    let conn = w.edge_conn(0);
    let id = SessionId(0x1234_5678);
    let dest = addr("198.51.100.20:53");
    w.edge_send_v3(
        conn,
        v3::Datagram::Registration(v3::Registration {
            request_id: id,
            dest,
            traced: false,
            idle_hint_secs: 30,
            payload: b"bundled",
        }),
    );
    w.run(Duration::from_secs(15), |w| !w.edge_datagrams.is_empty());
    assert_eq!(w.origin.opened.len(), 1, "one socket per session");
    let (flow, opened) = w.origin.opened[0];
    assert_eq!(opened, dest);
    match v3::decode(&w.edge_datagrams[0].1) {
        Ok(v3::Datagram::RegistrationResponse(r)) => {
            assert_eq!(r.request_id, id);
            assert_eq!(r.code, v3::ResponseCode::Ok);
        }
        other => panic!("expected a registration response, got {other:?}"),
    }
    assert_eq!(
        w.origin.written,
        vec![(flow, b"bundled".to_vec())],
        "the bundled payload waits for the socket, then goes out"
    );

    w.edge_send_v3(
        conn,
        v3::Datagram::Payload(v3::Payload {
            request_id: id,
            payload: b"second",
        }),
    );
    w.run(Duration::from_secs(20), |w| w.origin.written.len() == 2);
    assert_eq!(w.origin.written[1], (flow, b"second".to_vec()));

    w.origin_read(flow, b"answer");
    w.run(Duration::from_secs(25), |w| w.edge_datagrams.len() == 2);
    let (on, d) = &w.edge_datagrams[1];
    assert_eq!(*on, conn);
    match v3::decode(d) {
        Ok(v3::Datagram::Payload(p)) => {
            assert_eq!(p.request_id, id);
            assert_eq!(p.payload, b"answer");
        }
        other => panic!("expected a payload, got {other:?}"),
    }
    let hub = w.connector.datagram_hub();
    assert_eq!(hub.sessions.active(), 1);
    assert_eq!(hub.sessions.stats().total_flows, 1);
    assert_eq!(hub.stats().payloads_in, 1, "one payload datagram");
    assert_eq!(
        hub.sessions.stats().bundled_in,
        1,
        "one bundled with the registration"
    );

    // The idle hint ends it; the supervisor's timer covers the session's.
    let quiet = w.now;
    w.run(Duration::from_secs(120), |w| !w.origin.closed.is_empty());
    assert_eq!(w.origin.closed, vec![flow]);
    let idle = w.now - quiet;
    assert!(
        idle >= Duration::from_secs(29) && idle <= Duration::from_secs(31),
        "closed after its 30 s hint, not {idle:?}"
    );
    assert_eq!(w.connector.datagram_hub().sessions.active(), 0);
    assert_eq!(w.connector.ready_connections(), 1, "the connection stays");
}

#[test]
fn over_the_flow_limit_a_v3_session_is_refused() {
    let mut w = World::with(1, 12, |c| {
        c.connector.registration.features = vec!["support_datagram_v3_2".into()];
        c.max_active_flows = Some(1);
    });
    w.run(Duration::from_secs(10), |w| {
        w.connector.ready_connections() == 1
    });
    let conn = w.edge_conn(0);
    for id in [1u128, 2] {
        w.edge_send_v3(
            conn,
            v3::Datagram::Registration(v3::Registration {
                request_id: SessionId(id),
                dest: addr("198.51.100.20:53"),
                traced: false,
                idle_hint_secs: 0,
                payload: &[],
            }),
        );
    }
    w.run(Duration::from_secs(15), |w| w.edge_datagrams.len() == 2);
    let codes: Vec<(SessionId, v3::ResponseCode)> = w
        .edge_datagrams
        .iter()
        .map(|(_, d)| match v3::decode(d) {
            Ok(v3::Datagram::RegistrationResponse(r)) => (r.request_id, r.code),
            other => panic!("expected a registration response, got {other:?}"),
        })
        .collect();
    assert!(codes.contains(&(SessionId(1), v3::ResponseCode::Ok)));
    assert!(codes.contains(&(SessionId(2), v3::ResponseCode::TooManyActiveFlows)));
    assert_eq!(w.origin.opened.len(), 1);
}

#[test]
fn icmp_echo_goes_out_a_funnel_and_the_reply_comes_back() {
    let mut w = datagram_world(1, 13, true);
    w.run(Duration::from_secs(10), |w| {
        w.connector.ready_connections() == 1
    });
    let conn = w.edge_conn(0);
    let eyeball = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9));
    let target = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 30));
    let echo = |ttl| Echo {
        src: eyeball,
        dst: target,
        ttl,
        kind: EchoKind::Request,
        id: 0x4242,
        seq: 7,
        data: b"ping",
    };
    let mut pkt = [0u8; 128];
    let n = write_echo(&echo(64), &mut pkt).expect("echo");
    w.edge_send_v3(conn, v3::Datagram::Icmp(v3::Icmp { packet: &pkt[..n] }));
    w.run(Duration::from_secs(15), |w| !w.origin.pings.is_empty());
    let (funnel, dst, message) = w.origin.pings[0].clone();
    assert_eq!(dst, target);
    assert_eq!(message[0], 8, "an echo request goes out");
    assert_eq!(w.origin.funnels, vec![(funnel, IpAddr::V4(ICMP_SRC))]);

    // What a Linux ping socket reads: the ICMP message with the socket's ident as id.
    let mut reply = message.clone();
    reply[0] = 0;
    reply[4..6].copy_from_slice(&0x9999u16.to_be_bytes());
    w.input(Input::PingRead {
        funnel,
        from: target,
        message: &reply,
    });
    w.run(Duration::from_secs(20), |w| !w.edge_datagrams.is_empty());
    let (on, d) = &w.edge_datagrams[0];
    assert_eq!(*on, conn);
    let Ok(v3::Datagram::Icmp(icmp)) = v3::decode(d) else {
        panic!("expected an ICMP datagram");
    };
    let p = crate::icmp::parse(icmp.packet).expect("IP packet");
    assert_eq!((p.src(), p.dst()), (target, eyeball));
    assert_eq!(
        p.message(),
        crate::icmp::IcmpMessage::EchoReply {
            id: 0x4242,
            seq: 7,
            data: b"ping"
        },
        "the requester's echo id is put back"
    );

    // TTL 1 is answered here, from the ICMP source, without a ping.
    let n = write_echo(&echo(1), &mut pkt).expect("echo");
    w.edge_send_v3(conn, v3::Datagram::Icmp(v3::Icmp { packet: &pkt[..n] }));
    w.run(Duration::from_secs(25), |w| w.edge_datagrams.len() == 2);
    let Ok(v3::Datagram::Icmp(icmp)) = v3::decode(&w.edge_datagrams[1].1) else {
        panic!("expected an ICMP datagram");
    };
    let p = crate::icmp::parse(icmp.packet).expect("IP packet");
    assert_eq!(p.src(), IpAddr::V4(ICMP_SRC));
    assert!(matches!(
        p.message(),
        crate::icmp::IcmpMessage::TimeExceeded { .. }
    ));
    assert_eq!(w.origin.pings.len(), 1);
    // `cloudflared_icmp_total_replies`: the origin's reply, not the router's own answer.
    assert_eq!(w.connector.datagram_hub().stats().icmp_replies, 1);
}

/// cloudflared's `icmp_dropped_packets{conn_index,reason}` and
/// `udp_unsupported_remote_command_total{conn_index,command}`: counted on the HA index of the
/// connection the packet or call came in on.
#[test]
fn icmp_drops_and_refused_v2_calls_count_on_their_connection() {
    let mut w = datagram_world(2, 15, true);
    w.run(Duration::from_secs(10), |w| {
        w.connector.ready_connections() == 2
    });
    let at = |w: &World, index: u8| {
        w.connector
            .datagram_hub()
            .sessions
            .index_stats()
            .get(&index)
            .cloned()
            .unwrap_or_default()
    };

    // The router refuses an echo with code 1 (ping sockets send code 0 only).
    let conn = w.edge_conn(1);
    let echo = Echo {
        src: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)),
        dst: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 30)),
        ttl: 64,
        kind: EchoKind::Request,
        id: 1,
        seq: 1,
        data: b"ping",
    };
    let mut pkt = [0u8; 128];
    let n = write_echo(&echo, &mut pkt).expect("echo");
    let mut coded = pkt[..n].to_vec();
    coded[21] = 1;
    w.edge_send_v3(conn, v3::Datagram::Icmp(v3::Icmp { packet: &coded }));
    w.run(Duration::from_secs(15), |w| at(w, 1).icmp_dropped == 1);
    assert_eq!(at(&w, 1).icmp_dropped, 1);

    // A good echo goes out a funnel; the ping socket does not take it.
    w.edge_send_v3(conn, v3::Datagram::Icmp(v3::Icmp { packet: &pkt[..n] }));
    w.run(Duration::from_secs(20), |w| !w.origin.pings.is_empty());
    let funnel = w.origin.pings[0].0;
    w.input(Input::PingWriteFailed(funnel));
    assert_eq!(at(&w, 1).icmp_dropped, 2);
    assert_eq!(at(&w, 0).icmp_dropped, 0);
    let hub = w.connector.datagram_hub();
    assert_eq!(hub.sessions.stats().icmp_dropped, 2);

    // datagram-v2 session calls on a v3 connection are refused and counted by method.
    let conn = w.edge_conn(0);
    let now = w.now;
    let edge = w.edge.as_mut().expect("edge");
    edge.register_udp_session(now, conn, SessionId(7), addr("198.51.100.21:53"), 0)
        .expect("call");
    edge.unregister_udp_session(now, conn, SessionId(7), "gone")
        .expect("call");
    w.run(Duration::from_secs(30), |w| at(w, 0).unsupported == [1, 1]);
    assert_eq!(at(&w, 0).unsupported[SessionMethod::Register as usize], 1);
    assert_eq!(at(&w, 0).unsupported[SessionMethod::Unregister as usize], 1);
    assert_eq!(at(&w, 1).unsupported, [0, 0]);
}

#[test]
fn v2_registration_over_rpc_is_answered_and_unregistered_both_ways() {
    let mut w = datagram_world(1, 14, false);
    w.run(Duration::from_secs(10), |w| {
        w.connector.ready_connections() == 1
    });
    let conn = w.edge_conn(0);
    let id = SessionId(0xabcd);
    let dest = addr("198.51.100.21:5353");
    let now = w.now;
    w.edge
        .as_mut()
        .expect("edge")
        .register_udp_session(now, conn, id, dest, 0)
        .expect("call");
    w.run(Duration::from_secs(15), |w| !w.v2_registered().is_empty());
    assert_eq!(w.v2_registered(), vec![(id, Ok(()))]);
    let (flow, opened) = w.origin.opened[0];
    assert_eq!(opened, dest);

    // Suffix-typed payloads both ways.
    let uuid = uuid::Uuid::from_u128(id.0);
    let d = v2::Datagram::Udp {
        session_id: uuid,
        payload: b"query",
    };
    let mut out = vec![0; d.encoded_len()];
    d.encode(&mut out).expect("encode");
    w.edge
        .as_mut()
        .expect("edge")
        .send_datagram(conn, out.into())
        .expect("queued");
    w.run(Duration::from_secs(20), |w| !w.origin.written.is_empty());
    assert_eq!(w.origin.written, vec![(flow, b"query".to_vec())]);
    w.origin_read(flow, b"reply");
    w.run(Duration::from_secs(25), |w| !w.edge_datagrams.is_empty());
    assert_eq!(
        v2::decode(&w.edge_datagrams[0].1),
        Ok(v2::Datagram::Udp {
            session_id: uuid,
            payload: b"reply"
        })
    );

    // The edge ends it: the socket closes, the edge is not called back.
    let now = w.now;
    w.edge
        .as_mut()
        .expect("edge")
        .unregister_udp_session(now, conn, id, "eyeball gone")
        .expect("call");
    w.run(Duration::from_secs(30), |w| !w.origin.closed.is_empty());
    assert_eq!(w.origin.closed, vec![flow]);

    // A socket that cannot be opened is reported in the RPC answer.
    w.origin.refuse = Some("connect: network is unreachable");
    let refused = SessionId(0xbeef);
    let now = w.now;
    w.edge
        .as_mut()
        .expect("edge")
        .register_udp_session(now, conn, refused, dest, 0)
        .expect("call");
    w.run(Duration::from_secs(40), |w| w.v2_registered().len() == 2);
    let (rid, result) = w.v2_registered()[1].clone();
    assert_eq!(rid, refused);
    let err = result.expect_err("refused");
    assert!(err.contains("network is unreachable"), "{err}");

    // A session that idles out here is unregistered with the edge (`unregisterUdpSession`).
    w.origin.refuse = None;
    let idle = SessionId(0xcafe);
    let now = w.now;
    w.edge
        .as_mut()
        .expect("edge")
        .register_udp_session(now, conn, idle, dest, 2_000_000_000)
        .expect("call");
    w.run(Duration::from_secs(60), |w| {
        w.edge_events
            .iter()
            .any(|e| matches!(e, EdgeEvent::UdpSessionUnregistered { id, .. } if *id == idle))
    });
    let message = w
        .edge_events
        .iter()
        .find_map(|e| match e {
            EdgeEvent::UdpSessionUnregistered { id, message, .. } if *id == idle => {
                Some(message.clone())
            }
            _ => None,
        })
        .expect("unregistered by the connector");
    assert_eq!(message, "session idle for 2s");
}

#[test]
fn sessions_migrate_to_a_surviving_connection_when_their_link_closes() {
    let mut w = datagram_world(2, 15, true);
    w.run(Duration::from_secs(10), |w| {
        w.connector.ready_connections() == 2
    });
    let (conn0, conn1) = (w.edge_conn(0), w.edge_conn(1));
    let (link0, link1) = (
        w.connector.link_of(0).expect("link 0"),
        w.connector.link_of(1).expect("link 1"),
    );
    let id = SessionId(77);
    w.edge_send_v3(
        conn0,
        v3::Datagram::Registration(v3::Registration {
            request_id: id,
            dest: addr("198.51.100.22:9"),
            traced: false,
            idle_hint_secs: 120,
            payload: &[],
        }),
    );
    w.run(Duration::from_secs(15), |w| !w.edge_datagrams.is_empty());
    let (flow, _) = w.origin.opened[0];
    assert_eq!(w.connector.datagram_hub().sessions.link_of(id), Some(link0));

    // Connection 0's path dies; the idle timeout notices.
    w.blackhole = Some(0);
    w.run(Duration::from_secs(40), |w| {
        w.events
            .iter()
            .any(|(_, e)| matches!(e, SupervisorEvent::LinkClosed { link, .. } if *link == link0))
    });
    assert_eq!(
        w.connector.datagram_hub().sessions.link_of(id),
        Some(link1),
        "re-homed on the survivor"
    );
    assert_eq!(w.connector.datagram_hub().sessions.stats().migrated, 1);
    assert!(w.origin.closed.is_empty(), "the socket stays");

    let before = w.edge_datagrams.len();
    w.origin_read(flow, b"still here");
    w.run(Duration::from_secs(45), |w| w.edge_datagrams.len() > before);
    let (on, d) = &w.edge_datagrams[before];
    assert_eq!(*on, conn1, "the reply goes out on the surviving connection");
    assert!(matches!(
        v3::decode(d),
        Ok(v3::Datagram::Payload(p)) if p.request_id == id && p.payload == b"still here"
    ));
}

/// An origin that floods a session faster than the path drains: the connection queues at most
/// 32 full-size datagrams (quic-go's bound), refuses the rest where they are counted, and
/// every datagram it queued reaches the edge (nothing queued is dropped unseen).
#[test]
fn datagram_send_queue_is_bounded_and_overload_is_counted() {
    let mut w = datagram_world(1, 12, true);
    w.run(Duration::from_secs(10), |w| {
        w.connector.ready_connections() == 1
    });
    let conn = w.edge_conn(0);
    let id = SessionId(0xf100d);
    w.edge_send_v3(
        conn,
        v3::Datagram::Registration(v3::Registration {
            request_id: id,
            dest: addr("198.51.100.20:53"),
            traced: false,
            idle_hint_secs: 30,
            payload: b"",
        }),
    );
    w.run(Duration::from_secs(15), |w| !w.edge_datagrams.is_empty());
    let (flow, _) = w.origin.opened[0];
    let before = w.connector.datagram_hub().stats().clone();
    let refused_before = w
        .connector
        .datagram_hub()
        .sessions
        .stats()
        .dropped(DropReason::SendRefused);
    // 200 reads of 1200 bytes in one go, with no time for the network to take any.
    let payload = vec![0x5a; 1200];
    for _ in 0..200 {
        let mut buf = BytesMut::zeroed(HEADROOM + ORIGIN_READ + TAILROOM);
        buf[HEADROOM..HEADROOM + payload.len()].copy_from_slice(&payload);
        w.connector.handle_input(
            w.now,
            Input::UdpRead {
                flow,
                buf: &mut buf,
                len: payload.len(),
            },
        );
    }
    let after = w.connector.datagram_hub().stats().clone();
    let queued = after.datagrams_out - before.datagrams_out;
    let sessions = &w.connector.datagram_hub().sessions;
    let refused = sessions.stats().dropped(DropReason::SendRefused) - refused_before;
    assert_eq!(queued + refused, 200, "every read queued or counted");
    assert_eq!(
        sessions.index_stats()[&0].dropped(DropReason::SendRefused),
        sessions.stats().dropped(DropReason::SendRefused),
        "refusals are counted on the connection's index (conn_index 0)"
    );
    assert!(
        (30..=40).contains(&queued),
        "about 32 full-size datagrams queued, not {queued}"
    );
    let waiting = w.connector.connection(0).unwrap().datagram_bytes_queued();
    assert!(
        (30 * 1200..=32 * 1500).contains(&waiting),
        "the queue's bytes are reported: {waiting}"
    );
    let on_edge = w.edge_datagrams.len();
    w.run(Duration::from_secs(30), |w| {
        w.edge_datagrams.len() as u64 == on_edge as u64 + queued
    });
    assert_eq!(
        w.edge_datagrams.len() as u64,
        on_edge as u64 + queued,
        "every queued datagram reaches the edge"
    );
    assert_eq!(
        w.connector.connection(0).unwrap().datagram_bytes_queued(),
        0,
        "and the queue is empty after"
    );
}

/// A static `--edge` name keeps one address, cloudflared's (`ResolveTCPAddr`): the first IPv4
/// one, else the first.
#[test]
fn a_static_edge_name_keeps_its_first_ipv4_address() {
    use super::static_edge_address as pick;
    assert_eq!(
        pick([
            addr("[::1]:7844"),
            addr("127.0.0.1:7844"),
            addr("10.0.0.1:7844")
        ]),
        Some(addr("127.0.0.1:7844"))
    );
    assert_eq!(
        pick([addr("[::1]:7844"), addr("[::2]:7844")]),
        Some(addr("[::1]:7844"))
    );
    assert_eq!(pick([]), None);
}
