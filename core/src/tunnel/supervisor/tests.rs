//! The supervisor against a real [`EdgeEndpoint`] over a tiny in-memory network, on virtual
//! time. Every step checks the driver rule: a deadline that does not move time forward is a
//! busy loop.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn_proto::{ClientConfig, ServerConfig};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use uuid::Uuid;

use super::*;
use crate::control::{ConnectionDetails, Registration, RegistrationError};
use crate::quic::tls::{self, PostQuantum};
use crate::quic::transport::QuicSettings;
use crate::quic::SERVER_NAME;
use crate::tunnel::data::DataLimits;
use crate::tunnel::edge::{EdgeEndpoint, EdgeEvent};

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
    ConnectorConfig {
        registration: Registration {
            account_tag: "account".into(),
            tunnel_secret: vec![7; 32],
            tunnel_id: Uuid::from_u128(1),
            conn_index: 0,
            client_id: Uuid::from_u128(2),
            features: vec![],
            version: "test".into(),
            arch: "linux_amd64".into(),
            origin_local_ip: None,
            replace_existing: false,
            compression_quality: 0,
            num_previous_attempts: 0,
        },
        local_config: None,
        client,
        server_name: SERVER_NAME.into(),
        rpc_timeout: Duration::from_secs(5),
        grace_period: Duration::from_secs(30),
        data: DataLimits::default(),
    }
}

/// How the test edge answers registrations.
#[derive(Clone)]
enum Answer {
    Accept,
    Refuse(&'static str, bool),
}

struct World {
    start: Instant,
    now: Instant,
    sup: Supervisor,
    server: ServerConfig,
    edge: Option<EdgeEndpoint>,
    answer: Answer,
    /// (arrival, seq) -> (from, to, bytes)
    net: BTreeMap<(Instant, u64), (SocketAddr, SocketAddr, Vec<u8>)>,
    seq: u64,
    events: Vec<(Duration, SupervisorEvent)>,
    edge_events: Vec<EdgeEvent>,
    buf: Vec<u8>,
}

const LATENCY: Duration = Duration::from_millis(5);

fn conn_addr(index: u8) -> SocketAddr {
    SocketAddr::from(([198, 51, 100, 7], 40000 + u16::from(index)))
}

impl World {
    fn new(ha: u8, seed: u64) -> Self {
        let (server, client) = tls_pair();
        let start = Instant::now();
        let mut config = SupervisorConfig::new(connector_config(client));
        config.ha_connections = ha;
        let pool = EdgePool::from_static(&[EDGE.parse().expect("addr")]).expect("pool");
        let sup = Supervisor::new(start, config, pool, seed);
        let edge = EdgeEndpoint::new(server.clone(), [seed as u8; 32]);
        Self {
            start,
            now: start,
            sup,
            server,
            edge: Some(edge),
            answer: Answer::Accept,
            net: BTreeMap::new(),
            seq: 0,
            events: Vec::new(),
            edge_events: Vec::new(),
            buf: Vec::new(),
        }
    }

    fn send(&mut self, from: SocketAddr, to: SocketAddr, len: usize) {
        self.seq += 1;
        self.net.insert(
            (self.now + LATENCY, self.seq),
            (from, to, self.buf[..len].to_vec()),
        );
    }

    /// Drains every output (the driver rule), answering registrations.
    fn flush(&mut self) {
        let edge_addr: SocketAddr = EDGE.parse().expect("addr");
        loop {
            let mut any = false;
            while let Some((index, t)) = self.sup.poll_transmit(self.now, &mut self.buf) {
                self.send(conn_addr(index), t.destination, t.size);
                any = true;
            }
            if let Some(edge) = &mut self.edge {
                while let Some(t) = edge.poll_transmit(self.now, &mut self.buf) {
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
            }
            while let Some(e) = self.sup.poll_event() {
                self.events.push((self.now - self.start, e));
                any = true;
            }
            // Origin actions have nothing to do here: no requests are made.
            while self.sup.poll_origin_action().is_some() {}
            if !any {
                break;
            }
        }
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
                self.sup.poll_timeout(),
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
                if to == edge_addr {
                    if let Some(edge) = &mut self.edge {
                        edge.handle_datagram(self.now, from, &data);
                    }
                } else if let Some(index) = (0..8u8).find(|i| conn_addr(*i) == to) {
                    self.sup.handle_datagram(self.now, index, from, &data);
                }
            }
            if self.sup.poll_timeout().is_some_and(|t| t <= self.now) {
                self.sup.handle_timeout(self.now);
                let after = self.sup.poll_timeout();
                assert!(
                    after.is_none_or(|t| t > self.now),
                    "supervisor timeout did not move forward after handle_timeout"
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

#[test]
fn ha_connections_start_staggered_after_the_first_registers() {
    let mut w = World::new(4, 1);
    w.run(Duration::from_secs(10), |w| w.sup.ready_connections() == 4);
    assert_eq!(w.sup.ready_connections(), 4);
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
            SupervisorEvent::Reconnecting { index: 0, delay } => Some(*delay),
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
    w.run(Duration::from_secs(200), |w| w.sup.ready_connections() == 2);
    assert_eq!(w.sup.ready_connections(), 2);
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
    w.run(Duration::from_secs(10), |w| w.sup.ready_connections() == 4);
    let before: Vec<LinkId> = w.registered().iter().map(|r| r.2).collect();
    w.edge = None;
    w.net.clear();
    w.run(Duration::from_secs(20), |w| w.sup.ready_connections() == 0);
    assert_eq!(w.sup.ready_connections(), 0, "idle timeout noticed");
    w.edge = Some(EdgeEndpoint::new(w.server.clone(), [3; 32]));
    w.run(Duration::from_secs(120), |w| w.sup.ready_connections() == 4);
    assert_eq!(w.sup.ready_connections(), 4);
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
    w.run(Duration::from_secs(10), |w| w.sup.ready_connections() == 4);
    let at = w.now;
    w.sup.shutdown(at);
    w.run(Duration::from_secs(60), |w| w.sup.is_stopped());
    assert!(w.sup.is_stopped());
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
    assert_eq!(w.sup.poll_timeout(), None);
}

#[test]
fn second_shutdown_stops_at_once() {
    let mut w = World::new(2, 4);
    w.run(Duration::from_secs(10), |w| w.sup.ready_connections() == 2);
    let now = w.now;
    w.sup.shutdown(now);
    w.sup.shutdown(now);
    assert!(w.sup.is_stopped());
    w.flush();
    assert!(w.events.iter().any(|(_, e)| *e == SupervisorEvent::Stopped));
}

#[test]
fn shutdown_before_anything_registered_stops() {
    let mut w = World::new(4, 5);
    w.edge = None;
    w.run(Duration::from_secs(3), |_| false);
    let now = w.now;
    w.sup.shutdown(now);
    w.run(Duration::from_secs(40), |w| w.sup.is_stopped());
    assert!(w.sup.is_stopped());
}

#[test]
fn permanent_refusal_of_the_first_connection_is_fatal() {
    let mut w = World::new(4, 6);
    w.answer = Answer::Refuse("tunnel deleted", false);
    w.run(Duration::from_secs(30), |w| w.sup.is_stopped());
    assert!(w.sup.is_stopped());
    assert!(w.events.iter().any(|(_, e)| matches!(
        e,
        SupervisorEvent::Fatal(SupervisorError::InitialConnection(c)) if c == "tunnel deleted"
    )));
}

#[test]
fn unauthorized_is_retried_as_cloudflared_does() {
    let mut w = World::new(1, 8);
    w.answer = Answer::Refuse("Unauthorized: invalid tunnel credentials", false);
    w.run(Duration::from_secs(30), |_| false);
    assert!(!w.sup.is_stopped());
    let refusals = w
        .events
        .iter()
        .filter(|(_, e)| matches!(e, SupervisorEvent::RegistrationFailed { .. }))
        .count();
    assert!(refusals >= 2, "retried: {refusals}");
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
