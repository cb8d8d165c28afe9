//! Scenarios: each builds a world from a seed, runs it, and checks invariants on what
//! happened. A scenario returns the trace hash, or what went wrong.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burrow_core::connector::{Connector, Event, Input, EDGE_TCP_KEEPALIVE};
use burrow_core::control::{Refusal, Registration, RegistrationFailure};
use burrow_core::datagram::LinkId;
use burrow_core::edge::auth::TunnelAuth;
use burrow_core::edge::hostnames::HostnameTable;
use burrow_core::edge::registrar::LOCATION;
use burrow_core::edge::{self, Edge, EdgeConfig};
use burrow_core::icmp::RouterConfig;
use burrow_core::quic::tls::{self, PostQuantum};
use burrow_core::quic::transport::QuicSettings;
use burrow_core::quic::SERVER_NAME;
use burrow_core::rpc_stream::client::RpcCallOutcome;
use burrow_core::session::edge::{EdgeSessionsConfig, MappingKind};
use burrow_core::tunnel::connector::{CloseReason, ConnectorConfig, LocalClose};
use burrow_core::tunnel::data::DataLimits;
use burrow_core::tunnel::edge::ConnId;
use burrow_core::tunnel::protocol::{Protocol, ProtocolFlag};
use burrow_core::tunnel::supervisor::{EdgePool, SupervisorConfig};
use quinn_proto::{ClientConfig, ServerConfig};
use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use uuid::Uuid;

use crate::client::{Client, Request};
use crate::clock::{Clock, VirtualTime};
use crate::net::{Bursts, LinkConfig, Network};
use crate::udp::{ICMP_SRC_V4, ICMP_SRC_V6};
use crate::world::{EdgeNode, Happening, World};

/// What every scenario is run with.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Seeds every random choice of the run.
    pub seed: u64,
    /// Packet loss on every link.
    pub loss: f64,
    /// Traffic at CI scale (tens of requests, bodies up to 256 KiB, 1 MiB echoes) instead of
    /// the full one (1000 requests up to 8 MiB, 64 MiB echoes).
    pub quick: bool,
    /// The transport the stream scenarios' connectors use (`--protocol`); the `/http2` variants
    /// in [`ALL`] set HTTP/2, whatever is given.
    pub protocol: Protocol,
}

impl Params {
    /// These parameters over `protocol`.
    fn over(&self, protocol: Protocol) -> Self {
        Self { protocol, ..*self }
    }
}

/// A scenario: name and body.
pub struct Scenario {
    /// Name on the command line.
    pub name: &'static str,
    /// Runs it; `Ok(trace hash)` or why it failed.
    pub run: fn(&Params) -> Result<u64, String>,
}

/// Every scenario, in the order `--list` prints them.
pub const ALL: &[Scenario] = &[
    Scenario {
        name: "registration",
        run: registration,
    },
    Scenario {
        name: "bad-credentials",
        run: bad_credentials,
    },
    Scenario {
        name: "partition",
        run: partition,
    },
    Scenario {
        name: "remote-config",
        run: remote_config,
    },
    Scenario {
        name: "http-mixed",
        run: http_mixed,
    },
    Scenario {
        name: "websocket-echo",
        run: websocket_echo,
    },
    Scenario {
        name: "tcp-echo",
        run: tcp_echo,
    },
    Scenario {
        name: "flow-limit",
        run: flow_limit,
    },
    Scenario {
        name: "shutdown-during-traffic",
        run: shutdown_during_traffic,
    },
    Scenario {
        name: "edge-restart",
        run: edge_restart,
    },
    Scenario {
        name: "hostile-path",
        run: hostile_path,
    },
    Scenario {
        name: "slow-origin",
        run: slow_origin,
    },
    Scenario {
        name: "slow-edge",
        run: slow_edge,
    },
    // The stream scenarios again, with the connector on HTTP/2 (over the simulated TCP).
    Scenario {
        name: "registration/http2",
        run: |p| registration(&p.over(Protocol::Http2)),
    },
    Scenario {
        name: "http-mixed/http2",
        run: |p| http_mixed(&p.over(Protocol::Http2)),
    },
    Scenario {
        name: "websocket-echo/http2",
        run: |p| websocket_echo(&p.over(Protocol::Http2)),
    },
    Scenario {
        name: "tcp-echo/http2",
        run: |p| tcp_echo(&p.over(Protocol::Http2)),
    },
    Scenario {
        name: "shutdown-during-traffic/http2",
        run: |p| shutdown_during_traffic(&p.over(Protocol::Http2)),
    },
    Scenario {
        name: "edge-restart/http2",
        run: |p| edge_restart(&p.over(Protocol::Http2)),
    },
    Scenario {
        name: "udp-blocked",
        run: udp_blocked,
    },
    Scenario {
        name: "udp-echo",
        run: udp::udp_echo,
    },
    Scenario {
        name: "udp-idle",
        run: udp::udp_idle,
    },
    Scenario {
        name: "udp-migration",
        run: udp::udp_migration,
    },
    Scenario {
        name: "udp-flood",
        run: udp::udp_flood,
    },
    Scenario {
        name: "udp-v2-and-v3",
        run: udp_v2::udp_v2_and_v3,
    },
    Scenario {
        name: "icmp-traceroute",
        run: icmp::icmp_traceroute,
    },
];

mod icmp;
mod udp;
mod udp_v2;

/// The edge's addresses: cloudflared's pool gives each HA index its own.
const EDGES: [&str; 4] = [
    "198.51.100.1:7844",
    "198.51.100.2:7844",
    "198.51.100.3:7844",
    "198.51.100.4:7844",
];
const ACCOUNT: &str = "0123456789abcdef0123456789abcdef";
const LOCAL_CONFIG: &[u8] = br#"{"ingress":[{"service":"hello_world"}]}"#;
const LIMIT: Duration = Duration::from_secs(120);
/// How long the registration scenario serves before shutting down.
const SERVE: Duration = Duration::from_secs(15);
/// The connector's grace period (cloudflared's default).
const GRACE: Duration = Duration::from_secs(30);
/// How long simulated TCP may hold bytes back before its sender gives up (Linux's
/// `tcp_retries2` retransmissions, the timeout doubling to 120 s: about 15 minutes).
const TCP_GIVES_UP: Duration = Duration::from_secs(15 * 60);
/// cloudflared's default HA connections, for the scenarios that run them.
const HA: u8 = 4;

/// The certificate the simulated edge presents. Ed25519 keeps signature sizes fixed, so packet
/// sizes (and hence the run) do not depend on key randomness.
fn edge_identity() -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519 key");
    // Both transports' names, as Cloudflare's edge certificate has them.
    let names = vec![
        SERVER_NAME.into(),
        burrow_core::http2::tls::SERVER_NAME.into(),
    ];
    let mut params = rcgen::CertificateParams::new(names).expect("params");
    // A fixed serial: rcgen's default is the key's hash with leading zero bytes dropped, so one
    // key in 128 made a certificate a byte shorter, and over HTTP/2 (TCP at a set bandwidth)
    // a byte is time: two runs of a seed differed.
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x42; 20]));
    let cert = params.self_signed(&key).expect("self-signed");
    let key = PrivatePkcs8KeyDer::from(key.serialize_der());
    (cert.der().clone(), key.into())
}

struct Setup {
    world: World,
    rng: ChaCha8Rng,
    /// The edge's QUIC configuration (a restarted edge keeps its identity).
    server: ServerConfig,
    /// Its HTTP/2 TLS configuration, with the same identity.
    http2_tls: Arc<rustls::ServerConfig>,
    client: ClientConfig,
    /// The connectors' HTTP/2 TLS, trusting that identity.
    client_http2: Arc<rustls::ClientConfig>,
    /// `--protocol` of connectors added from now on.
    protocol: ProtocolFlag,
    tunnel_id: Uuid,
    secret: Vec<u8>,
    data_limits: DataLimits,
    /// `--max-active-flows` for connectors added from now on.
    max_active_flows: Option<u64>,
    /// The network is hostile (see [`HOSTILE_LOSS`]).
    hostile: bool,
    /// Why a served connection died, on a hostile network, while a UDP scenario drove traffic.
    lost: Option<CloseReason>,
    /// The edge's public mappings (a restarted edge keeps them).
    mapped: Mapped,
}

/// An edge's QUIC and HTTP/2 server configurations with a fresh identity, and a client
/// configuration that trusts exactly that identity.
fn tls_pair() -> (
    ServerConfig,
    Arc<rustls::ServerConfig>,
    ClientConfig,
    Arc<rustls::ClientConfig>,
) {
    let (cert, key) = edge_identity();
    let settings = QuicSettings::default();
    let http2_tls = burrow_core::http2::tls::server_config(
        vec![cert.clone()],
        key.clone_key(),
        PostQuantum::Prefer,
    )
    .expect("HTTP/2 TLS");
    let mut server = ServerConfig::with_crypto(Arc::new(
        tls::server_config(vec![cert.clone()], key, PostQuantum::Prefer).expect("server TLS"),
    ));
    server.transport_config(settings.transport_config(true));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).expect("root");
    let client_http2 = burrow_core::http2::tls::client_config(roots.clone(), PostQuantum::Prefer)
        .expect("HTTP/2 client TLS");
    let mut client = ClientConfig::new(Arc::new(
        tls::client_config(roots, PostQuantum::Prefer).expect("client TLS"),
    ));
    client.transport_config(settings.transport_config(true));
    (server, http2_tls, client, client_http2)
}

/// The public UDP/ICMP side of an edge machine (`burrow edge --udp-map/--icmp-map`): its
/// session table's bounds and its mappings into the scenario's tunnel, numbered in order.
#[derive(Debug, Clone, Default)]
struct Mapped {
    sessions: EdgeSessionsConfig,
    kinds: Vec<MappingKind>,
}

/// A fresh edge process: the machine `burrow edge` runs, knowing `tunnel_id` with `secret`.
fn edge_machine(
    server: &ServerConfig,
    http2_tls: &Arc<rustls::ServerConfig>,
    tunnel_id: Uuid,
    secret: &[u8],
    seed: [u8; 32],
    mapped: &Mapped,
) -> EdgeNode {
    let mut auth = TunnelAuth::new();
    auth.insert(tunnel_id, ACCOUNT, secret.to_vec());
    let config = EdgeConfig {
        quic: server.clone(),
        http2_tls: http2_tls.clone(),
        http2_limits: burrow_core::http2::Limits::default(),
        hostnames: HostnameTable::new(),
        sessions: mapped.sessions,
        mappings: mapped.kinds.iter().map(|k| (tunnel_id, *k)).collect(),
        seed,
    };
    Box::new(Edge::new(config, auth))
}

/// A world whose edge is the edge machine.
fn setup(p: &Params) -> Setup {
    setup_mapped(p, Mapped::default())
}

/// A world whose edge machine serves public UDP/ICMP `mapped` into the tunnel.
fn setup_mapped(p: &Params, mapped: Mapped) -> Setup {
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
    let (server, http2_tls, client, client_http2) = tls_pair();
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    let link = LinkConfig {
        latency: Duration::from_millis(15),
        jitter: Duration::from_millis(5),
        reorder: 0.01,
        loss: p.loss,
        ..LinkConfig::default()
    };
    let net = Network::new(ChaCha8Rng::seed_from_u64(rng.next_u64()), link);
    let edges = EDGES.iter().map(|a| a.parse().expect("addr")).collect();
    let tunnel_id = Uuid::from_u128(u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64()));
    let secret: Vec<u8> = (0..32).map(|_| rng.next_u64() as u8).collect();
    let edge = edge_machine(&server, &http2_tls, tunnel_id, &secret, seed, &mapped);
    let world = World::new(Clock::new(Instant::now()), net, edges, edge);
    Setup {
        world,
        rng,
        server,
        http2_tls,
        client,
        client_http2,
        protocol: ProtocolFlag::Fixed(p.protocol),
        tunnel_id,
        secret,
        data_limits: DataLimits::default(),
        max_active_flows: None,
        hostile: p.loss >= HOSTILE_LOSS,
        lost: None,
        mapped,
    }
}

impl Setup {
    /// Adds a connector process with `ha` HA connections and the given secret, speaking
    /// datagram v3; returns its index in the world.
    fn add_connector(&mut self, ha: u8, secret: Vec<u8>) -> usize {
        self.add_connector_with(ha, secret, &["support_datagram_v3_2"])
    }

    /// Adds a connector process registering `features` (which choose its datagram version).
    fn add_connector_with(&mut self, ha: u8, secret: Vec<u8>, features: &[&str]) -> usize {
        let features: Vec<String> = features.iter().map(|f| (*f).to_owned()).collect();
        let n = self.world.connectors.len();
        let registration = Registration {
            // Fixed, so that traces do not depend on the build or the platform.
            version: "burrow-sim".into(),
            arch: "linux_amd64".into(),
            ..Registration::new(
                ACCOUNT,
                secret,
                self.tunnel_id,
                Uuid::from_u128(42 + n as u128),
                features,
            )
        };
        let connector = ConnectorConfig {
            local_config: Some(LOCAL_CONFIG.to_vec()),
            data: self.data_limits.clone(),
            ..ConnectorConfig::new(registration, self.client.clone())
        };
        let mut config = SupervisorConfig::new(connector);
        config.ha_connections = ha;
        config.max_active_flows = self.max_active_flows;
        config.icmp = RouterConfig::new(Some(ICMP_SRC_V4), Some(ICMP_SRC_V6));
        config.protocol = self.protocol;
        config.http2_tls = Some(self.client_http2.clone());
        let pool = EdgePool::from_static(&self.world.edge_addrs).expect("edge pool");
        let seed = self.rng.next_u64();
        let now = self.world.instant();
        self.world.add(Connector::new(now, config, pool, seed))
    }
}

/// Loss from which the network is hostile: with one packet in four lost each way, quinn's
/// backed-off probes can go unanswered for the 5 s idle timeout (cloudflared's too), so a
/// connection may die mid-traffic. Below it, a connection dying mid-traffic is a failure.
/// On a hostile network what a user relies on is: every request ends (answered whole, or
/// failed with its connection), every byte delivered is intact, a dead connection leaves
/// nothing behind (origin connections, sessions' links), and the connector comes back.
const HOSTILE_LOSS: f64 = 0.2;

/// The edge's `max_ack_delay` (quinn's default, which the simulated edge keeps): the longest
/// it holds an ACK, and a term of the connector's PTO.
const MAX_ACK_DELAY: Duration = Duration::from_millis(25);
/// Timers fire on the virtual clock's steps, not between them.
const TIMER_SLACK: Duration = Duration::from_millis(1);

/// How long a connector may take to register under loss, retrying as the supervisor does:
/// a handshake that times out (10 s) or a registration call that does (5 s), then a backoff
/// of up to 1, 2, 4, 8, 16, 32 s, leaves time for six attempts.
const REGISTER_WITHIN: Duration = Duration::from_secs(150);

fn expect(cond: bool, what: &str, world: &World) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(broken(what, world))
    }
}

/// The report of a broken invariant, with the trace's last events.
fn broken(what: &str, world: &World) -> String {
    format!(
        "invariant broken: {what}\nlast events:\n{}",
        world.trace.tail().join("\n")
    )
}

/// Register, push local config, serve a while, shut down gracefully.
fn registration(p: &Params) -> Result<u64, String> {
    let mut s = setup(p);
    let c = s.add_connector(HA, s.secret.clone());
    register(&mut s, c)?;
    let hostile = s.hostile;
    let mut config_seen = false;
    // Every HA connection registers, one a second after the first. The edge gets the local
    // configuration within SERVE of time the network let the connector's bytes through: a
    // push whose segment TCP retransmits again and again arrives that much later (seven
    // losses in a row hold it 25.4 s; the connector's call times out meanwhile, as
    // cloudflared's does, and the edge still takes it when it lands).
    // Over QUIC the network's hold is quinn's to know, not the simulator's: on a hostile
    // network a push waits out backed-off probe timeouts (seed 82138 at 35%: sent at 4.2 s on
    // a live connection, answered at 26.4 s), so there it may take up to LIMIT.
    let start = s.world.now;
    let held_before = s.world.tcp.held_back(c, start);
    loop {
        let held = s.world.tcp.held_back(c, s.world.now) - held_before;
        let mut until = start + SERVE + held;
        if s.world.now >= until && hostile && !config_seen && s.world.now < start + LIMIT {
            until = s.world.now + Duration::from_secs(1);
        }
        if s.world.now >= until || (config_seen && s.world.now >= start + SERVE) {
            break;
        }
        s.world.run_until(until, |w, h| {
            match h {
                Happening::Edge(edge::Event::LocalConfiguration { config, .. }) => {
                    expect(
                        config == LOCAL_CONFIG,
                        "edge receives the local config as sent",
                        w,
                    )?;
                    config_seen = true;
                }
                Happening::Connector(
                    _,
                    Event::LinkClosed {
                        was_registered: true,
                        reason,
                        ..
                    },
                ) if !hostile => {
                    return Err(broken(&format!("a served connection closed: {reason}"), w))
                }
                // A registration lost to the network is retried; the edge never refuses one.
                Happening::Connector(_, Event::RegistrationFailed { error, .. })
                    if !error.should_retry() =>
                {
                    return Err(broken(&format!("registration refused: {error:?}"), w))
                }
                _ => {}
            }
            Ok(())
        })?;
    }
    let w = &mut s.world;
    expect(config_seen, "edge gets the local configuration", w)?;
    // Every HA index serves within the registration bound (under loss an index may still be
    // retrying after SERVE: a registration lost past its deadline closes the connection,
    // which drains for three probe timeouts before the supervisor's backoff starts).
    let limit = w.after(REGISTER_WITHIN);
    w.run_ticking(limit, |w, _| {
        Ok(w.connectors[c].connector.ready_connections() == usize::from(HA))
    })?;
    let ready = w.connectors[c].connector.ready_connections();
    expect(
        ready == usize::from(HA),
        &format!("{ready} of {HA} HA connections serve"),
        w,
    )?;
    let serving = w.connectors[c].live().len();
    // Then shut down gracefully.
    w.feed(c, Input::Shutdown);
    let (mut unregistered, mut stopped) = (0, None);
    let shutdown_limit = w.after(Duration::from_secs(40));
    let start = w.now;
    w.run_ticking(shutdown_limit, |w, h| {
        match h {
            Some(Happening::Edge(edge::Event::Unregistered { .. })) => unregistered += 1,
            Some(Happening::Connector(_, Event::Stopped)) => stopped = Some(w.now),
            Some(Happening::Connector(_, Event::Registered { .. })) => {
                return Err(broken("registered during shutdown", w))
            }
            _ => {}
        }
        Ok(stopped.is_some())
    })?;
    let stopped = stopped.ok_or_else(|| broken("the connector stops", w))?;
    expect(
        stopped.since_start() - start.since_start() <= Duration::from_secs(31),
        "stopped within the grace period",
        w,
    )?;
    if !hostile {
        expect(
            unregistered == serving,
            &format!("the edge sees unregisterConnection from every connection ({unregistered} of {serving})"),
            w,
        )?;
    }
    expect(
        w.connectors[c].connector.is_stopped(),
        "the connector is stopped",
        w,
    )?;
    Ok(w.trace.hash())
}

/// A wrong secret: the edge refuses, the connector reports it and closes the connection.
fn bad_credentials(p: &Params) -> Result<u64, String> {
    let mut s = setup(p);
    let mut wrong = s.secret.clone();
    wrong[0] ^= 0xff;
    let c = s.add_connector(1, wrong);
    // Attempts lost to the network are retried; the edge's answer is what must arrive.
    let e = match connect(&mut s, c)? {
        Connected::Refused(e) => e,
        Connected::Registered(_) => return Err("registered with a wrong secret".into()),
    };
    let w = &mut s.world;
    expect(
        e.refusal() == Refusal::Unauthorized && e.to_string().starts_with("Unauthorized"),
        "the edge's cause reaches the connector",
        w,
    )?;
    expect(!e.should_retry(), "a permanent refusal says so", w)?;
    let mut closed = false;
    let limit = w.after(LIMIT);
    w.run_ticking(limit, |_, h| {
        match h {
            Some(Happening::Connector(
                i,
                Event::LinkClosed {
                    reason: CloseReason::Local(LocalClose::Registration(_)),
                    ..
                },
            )) if i == c => closed = true,
            Some(Happening::Connector(i, Event::Registered { .. })) if i == c => {
                return Err("registered with a wrong secret".into())
            }
            _ => {}
        }
        Ok(closed)
    })?;
    expect(closed, "connection closed after refusal", w)?;
    Ok(w.trace.hash())
}

/// A partition longer than the 5 s idle timeout kills the connection on both sides;
/// while it lasts the connector keeps retrying with backoff, and once it heals the connector
/// comes back on its own.
///
/// When the connector notices is the idle timer's business, as RFC 9000 §10.1 and quinn (and
/// quic-go, in cloudflared) run it: it restarts on every packet received and on the first
/// ack-eliciting packet sent after one, and fires after the idle timeout stretched to three
/// probe timeouts, `max(5 s, 3 PTO)`. Under loss the PTO stretches (an ACK lost and repeated a
/// keep-alive later is a long RTT sample), so no fixed number bounds it; the check is that the
/// connection closes by that timer, never earlier than 5 s after the last packet heard, and no
/// later than the timer allows: the last packet heard, then at most an ACK delay and a
/// keep-alive interval until the next ack-eliciting packet, then `max(5 s, 3 PTO)`, with the
/// PTO from quinn's own estimator (replayed by [`crate::rtt`]).
fn partition(p: &Params) -> Result<u64, String> {
    let mut s = setup(p);
    let c = s.add_connector(1, s.secret.clone());
    s.world.connectors[c].rtt = Some(Default::default());
    register(&mut s, c)?;
    // Serve a while (keep-alives only) before the cut.
    let until = s.world.now.max(VirtualTime::ZERO + Duration::from_secs(20));
    s.world.run_until(until, |_, _| Ok(()))?;
    if s.hostile {
        // The connection may have died meanwhile: the cut is of a served one.
        register(&mut s, c)?;
    }
    let w = &mut s.world;
    w.partition_node(c, true);
    let (mut connector_closed, mut edge_closed) = (None, None);
    let limit = w.after(Duration::from_secs(30));
    let cut_at = w.now;
    let rtt = |w: &World| {
        w.connectors[c]
            .rtt
            .as_ref()
            .and_then(|r| r.get(&0))
            .map(|(_, r)| *r)
    };
    // The estimator as the last packet heard left it (nothing heard after updates it).
    let mut estimator = rtt(w);
    w.run_until(limit, |w, h| {
        match h {
            Happening::Connector(
                _,
                Event::LinkClosed {
                    reason,
                    was_registered: true,
                    ..
                },
            ) if connector_closed.is_none() => {
                connector_closed = Some((w.now, reason, w.connectors[c].last_heard))
            }
            Happening::Edge(edge::Event::ConnectionClosed { .. }) => edge_closed = Some(w.now),
            Happening::Connector(_, Event::Registered { .. }) => {
                return Err(broken("registered through a partition", w))
            }
            _ => {}
        }
        if connector_closed.is_none() {
            estimator = rtt(w);
        }
        Ok(())
    })?;
    let (at, reason, heard) = connector_closed.ok_or("connector never noticed the partition")?;
    expect(
        reason == CloseReason::TimedOut,
        "closed by the idle timeout",
        w,
    )?;
    let settings = QuicSettings::default();
    let pto = estimator
        .and_then(|e| e.pto(MAX_ACK_DELAY))
        .ok_or_else(|| broken("an RTT estimate before the cut", w))?;
    let idle = settings.idle_timeout.max(3 * pto);
    let latest = settings.keep_alive + MAX_ACK_DELAY + idle + TIMER_SLACK;
    let quiet = at.since_start() - heard.since_start();
    let waited = at.since_start() - cut_at.since_start();
    expect(
        quiet >= settings.idle_timeout && quiet <= latest,
        &format!(
            "the idle timer decides when: closed {quiet:?} after the last packet heard ({waited:?} after the cut), \
             between {:?} and {latest:?} (PTO {pto:?}, largest RTT sample {:?})",
            settings.idle_timeout,
            estimator.map(|e| e.max_sample)
        ),
        w,
    )?;
    expect(edge_closed.is_some(), "edge drops the connection too", w)?;
    expect(
        w.connectors[c].live().is_empty(),
        "nothing serves during the partition",
        w,
    )?;
    // The network comes back: so does the connector, after at most one backoff (32 s cap)
    // and a handshake.
    w.partition_node(c, false);
    let healed = w.now;
    let mut back = None;
    let limit = w.after(REGISTER_WITHIN);
    w.run_ticking(limit, |w, h| {
        if let Some(Happening::Connector(i, Event::Registered { .. })) = h {
            if i == c {
                back = Some(w.now);
            }
        }
        Ok(back.is_some())
    })?;
    let back = back.ok_or_else(|| broken("the connector comes back after the partition", w))?;
    w.trace.record(
        w.now,
        &format!(
            "back {:?} after the partition healed",
            back.since_start() - healed.since_start()
        ),
    );
    Ok(w.trace.hash())
}

/// The edge pushes configurations; versions only move forward, invalid ones are refused with
/// the version unchanged, and every answer reaches the edge while the connection lives. No
/// fixed delay is promised: under loss the push and its answer take as long as QUIC's loss
/// recovery does, and a connection that stops delivering closes at its idle timeout, which
/// fails the scenario; [`LIMIT`] only bounds a hang.
fn remote_config(p: &Params) -> Result<u64, String> {
    let mut s = setup(p);
    let c = s.add_connector(1, s.secret.clone());
    let mut conn = register(&mut s, c)?;
    // Connection 0 pushes its local configuration after registering; let it land first (on a
    // hostile network, from the connection that replaced one that died meanwhile).
    let mut local_config = false;
    let until = s.world.after(Duration::from_secs(15));
    s.world.run_ticking(until, |_, h| {
        if let Some(Happening::Edge(edge::Event::LocalConfiguration { conn: from, .. })) = h {
            (local_config, conn) = (true, from);
        }
        Ok(local_config)
    })?;
    expect(
        local_config,
        "the edge gets the local configuration",
        &s.world,
    )?;
    let good = br#"{"ingress":[{"service":"http_status:503"}]}"#.as_slice();
    // (offered version, config, expected latest version, expect an error)
    let pushes: [(i32, &[u8], i32, bool); 5] = [
        (1, good, 1, false),
        (1, good, 1, false),
        (0, good, 1, false),
        (3, b"{not json", 1, true),
        (2, good, 2, false),
    ];
    let mut applied = None;
    let hostile = s.hostile;
    for (version, config, want_latest, want_error) in pushes {
        // On a hostile network the connection may die before the answer: the push is made
        // again on the next connection (a version is applied once, so the answer is the same).
        let answer = loop {
            let w = &mut s.world;
            let push = edge::Input::PushConfiguration {
                conn,
                version,
                config,
            };
            expect(w.edge_input(push), "the edge runs", w)?;
            let (mut answer, mut decided, mut died) = (None, None, false);
            let limit = w.after(LIMIT);
            w.run_ticking(limit, |w, h| {
                match h {
                    Some(Happening::Connector(_, e @ Event::ConfigurationApplied { .. }))
                    | Some(Happening::Connector(_, e @ Event::ConfigurationRefused { .. })) => {
                        expect(decided.is_none(), "one decision per push", w)?;
                        if let Event::ConfigurationApplied { version } = e {
                            applied = Some(version);
                        }
                        decided = Some(());
                    }
                    // The end of a push made on a connection that died before: not this one's.
                    Some(Happening::Edge(edge::Event::ConfigurationResult {
                        conn: on, ..
                    })) if hostile && on != conn => {}
                    // The edge may see the connection close first.
                    Some(Happening::Edge(edge::Event::ConfigurationResult {
                        outcome: RpcCallOutcome::ConnectionClosed,
                        ..
                    })) if hostile => {
                        died = true;
                        return Ok(true);
                    }
                    Some(Happening::Edge(edge::Event::ConfigurationResult { outcome, .. })) => {
                        expect(answer.is_none(), "one answer per push", w)?;
                        answer = Some(outcome);
                    }
                    Some(Happening::Connector(_, Event::LinkClosed { reason, .. })) => {
                        if !hostile {
                            return Err(broken(&format!("connection closed: {reason}"), w));
                        }
                        died = true;
                        return Ok(true);
                    }
                    _ => {}
                }
                Ok(answer.is_some() && decided.is_some())
            })?;
            if !died {
                break answer;
            }
            conn = register(&mut s, c)?;
        };
        let w = &s.world;
        let Some(RpcCallOutcome::Configuration(r)) = answer else {
            return Err(format!(
                "push of version {version}: answer {answer:?}\n{}",
                w.trace.tail().join("\n")
            ));
        };
        expect(
            r.latest_applied_version == want_latest,
            &format!(
                "version {version}: latest {want_latest}, got {}",
                r.latest_applied_version
            ),
            w,
        )?;
        expect(
            r.error.is_some() == want_error,
            &format!(
                "version {version}: error expected {want_error}, got {:?}",
                r.error
            ),
            w,
        )?;
    }
    expect(
        applied == Some(2),
        "the connector ends on version 2",
        &s.world,
    )?;
    Ok(s.world.trace.hash())
}

/// How a connector's registration ended.
enum Connected {
    /// Registered; the edge's id of the connection.
    Registered(ConnId),
    /// The edge refused it for good.
    Refused(RegistrationFailure),
}

/// Runs until connector `c` serves; returns the edge's id of a connection it serves on.
fn register(s: &mut Setup, c: usize) -> Result<ConnId, String> {
    match connect(s, c)? {
        Connected::Registered(conn) => Ok(conn),
        Connected::Refused(e) => Err(broken(
            &format!("the edge refused the registration for good: {e:?}"),
            &s.world,
        )),
    }
}

/// Connector `c`'s registered connections that the edge still holds too, lowest HA index
/// first: on a lossy path the edge may time a connection out before the connector notices,
/// and an edge routes requests only over connections it has.
fn serving(w: &World, c: usize) -> Vec<ConnId> {
    w.connectors[c]
        .live()
        .into_iter()
        .filter(|conn| w.edge_has(*conn))
        .collect()
}

/// Runs until connector `c` registers a connection or is refused for good. Attempts lost to
/// the network are the supervisor's to retry, after its backoff: what a user relies on is that
/// the connector registers within [`REGISTER_WITHIN`], not that its first attempt does.
fn connect(s: &mut Setup, c: usize) -> Result<Connected, String> {
    if let Some(conn) = serving(&s.world, c).first() {
        return Ok(Connected::Registered(*conn));
    }
    let deadline = s.world.after(REGISTER_WITHIN);
    let mut refused = None;
    s.world.run_ticking(deadline, |w, h| {
        match h {
            Some(Happening::Connector(i, Event::Registered { details, .. })) if i == c => {
                expect(
                    details.location == LOCATION,
                    "details come from the edge",
                    w,
                )?;
            }
            Some(Happening::Connector(i, Event::RegistrationFailed { error, .. }))
                if i == c && !error.should_retry() =>
            {
                refused = Some(error)
            }
            _ => {}
        }
        Ok(refused.is_some() || !serving(w, c).is_empty())
    })?;
    if let Some(e) = refused {
        return Ok(Connected::Refused(e));
    }
    match serving(&s.world, c).first() {
        Some(conn) => Ok(Connected::Registered(*conn)),
        None => Err(broken(
            &format!("connector registers within {REGISTER_WITHIN:?}"),
            &s.world,
        )),
    }
}

/// Runs `client` to completion within `limit` of time the network did not hold the
/// connector's bytes back, checking the connector's buffers after every step against the
/// per-stream window bound. On a hostile network a connection may die: then
/// [`lost_connection`] checks it left nothing behind, the client moves to a connection that
/// serves (another HA connection, or the one the supervisor makes anew) and goes on.
///
/// Time TCP spends retransmitting (a segment lost again and again waits out RTOs doubling
/// from 200 ms: ten losses in a row, one in a million segments at 25% loss, hold it and
/// everything behind it 204.6 s) is the network's, not the connector's: the window is
/// extended by it, so that what is checked is that no request waits on anything else.
fn serve(s: &mut Setup, client: &mut Client, c: usize, limit: Duration) -> Result<usize, String> {
    // A window each way plus a response head, per stream.
    let per_stream = 2 * s.data_limits.window + 64 * 1024;
    let start = s.world.now;
    let held_before = s.world.tcp.held_back(c, start);
    let hostile = s.hostile;
    client.hostile = hostile;
    let mut peak = 0;
    loop {
        let mut lost = None;
        let held = s.world.tcp.held_back(c, s.world.now) - held_before;
        let until = start + limit + held;
        if s.world.now >= until || client.is_done() {
            break;
        }
        s.world.run_ticking(until, |w, h| {
            match &h {
                Some(Happening::Connector(
                    i,
                    Event::LinkClosed {
                        link,
                        reason,
                        was_registered: true,
                        ..
                    },
                )) if *i == c => {
                    if !hostile {
                        return Err(broken(
                            &format!("connection closed mid-traffic: {reason}"),
                            w,
                        ));
                    }
                    lost = Some((*link, reason.clone()));
                    return Ok(true);
                }
                Some(_) => return Ok(false),
                None => {}
            }
            client.tick(w)?;
            let (buffered, streams) = w.connectors[c].buffered();
            peak = peak.max(buffered);
            let allowed = streams.max(1) * per_stream;
            if buffered > allowed {
                return Err(format!(
                    "connector buffers {buffered} bytes over {streams} streams, bound {allowed}"
                ));
            }
            if let Some(e) = &w.origins.error {
                return Err(format!("origin: {e}"));
            }
            Ok(client.is_done())
        })?;
        let Some((link, reason)) = lost else {
            if s.world.now < until {
                // Done, or nothing left to happen.
                break;
            }
            // Time ran out: go on if the network held bytes back meanwhile.
            continue;
        };
        lost_connection(s, c, link, &reason)?;
        // Requests go on once a connection serves (the edge routes only over those).
        register(s, c)?;
    }
    let w = &s.world;
    if !client.is_done() {
        let held = w.tcp.held_back(c, w.now) - held_before;
        return Err(format!(
            "{} requests done, {} in flight when time ran out ({held:?} of it the network held \
             bytes back)\n{}{}",
            client.completed,
            client.in_flight(),
            client.describe(),
            w.trace.tail().join("\n")
        ));
    }
    Ok(peak)
}

/// Connection `link` of connector `c` died (`reason`): the supervisor dropped it, and (once the
/// origins acted on what it said last) none of its origin connections is left open.
fn lost_connection(
    s: &mut Setup,
    c: usize,
    link: LinkId,
    reason: &CloseReason,
) -> Result<(), String> {
    let w = &mut s.world;
    w.trace
        .record(w.now, &format!("connector {c} lost {link}: {reason}"));
    // One more step lets the origins act on the closes the connection queued as it died.
    let next = w.after(Duration::from_millis(1));
    w.run_until(next, |_, _| Ok(()))?;
    let node = &w.connectors[c];
    let ha = node.connector.ha_connections() as u8;
    expect(
        (0..ha).all(|i| node.connector.link_of(i) != Some(link)),
        "the supervisor dropped the dead connection",
        w,
    )?;
    let flows = w.origins.flows_of(c, Some(link));
    expect(
        flows == 0,
        &format!("a dead connection's origin connections are closed ({flows} open)"),
        w,
    )
}

/// A mix of HTTP requests: bodies of every size class, fixed, chunked and close-delimited
/// responses, chunked and fixed uploads, one unreachable origin.
fn http_requests(rng: &mut ChaCha8Rng, count: usize, max: u64) -> Vec<Request> {
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let size = |rng: &mut ChaCha8Rng| -> u64 {
            let class = rng.next_u32() % 100;
            let cap = match class {
                0..50 => 1024,
                50..80 => 64 * 1024,
                80..95 => 1024 * 1024,
                _ => max,
            }
            .min(max);
            u64::from(rng.next_u32()) % (cap + 1)
        };
        if i == count / 2 {
            out.push(Request::Unreachable);
            continue;
        }
        let up = if rng.next_u32().is_multiple_of(3) {
            size(rng)
        } else {
            0
        };
        let mode = ["fixed", "fixed", "chunked", "close", "smuggle"][(rng.next_u32() % 5) as usize];
        out.push(Request::Http {
            up,
            chunked: up > 0 && rng.next_u32().is_multiple_of(2),
            down: size(rng),
            mode,
            seed: rng.next_u64(),
        });
    }
    out
}

/// Many HTTP requests through one connection; every byte checked both ways; keep-alive reuse.
fn http_mixed(p: &Params) -> Result<u64, String> {
    let mut s = setup(p);
    let c = s.add_connector(HA, s.secret.clone());
    register(&mut s, c)?;
    let (count, max) = if p.quick {
        (30, 256 * 1024)
    } else {
        (1000, 8 * 1024 * 1024)
    };
    let requests = http_requests(&mut s.rng, count, max);
    let reusable = requests
        .iter()
        .filter(|r| {
            matches!(
                r,
                Request::Http {
                    mode: "fixed" | "chunked",
                    ..
                }
            )
        })
        .count() as u64;
    let mut client = Client::new(s.tunnel_id, requests, 8);
    serve(&mut s, &mut client, c, Duration::from_secs(3600))?;
    let stats = s.world.origins.stats;
    if s.hostile {
        // Requests in flight when a connection died failed with it; the rest were answered.
        expect(
            client.completed + client.failed == count as u64,
            &format!(
                "every request answered or failed with its connection ({} answered, {} failed)",
                client.completed, client.failed
            ),
            &s.world,
        )?;
        s.world.trace.record(s.world.now, &stats);
        return Ok(s.world.trace.hash());
    }
    expect(
        client.completed == count as u64,
        "every request answered",
        &s.world,
    )?;
    expect(
        stats.opened < count as u64 && stats.requests + 1 == count as u64,
        &format!(
            "keep-alive connections carry several requests ({} opened for {} requests, {reusable} reusable)",
            stats.opened, stats.requests
        ),
        &s.world,
    )?;
    s.world.trace.record(s.world.now, &stats);
    Ok(s.world.trace.hash())
}

/// Raw bytes both ways after an upgrade (`ws`) or a TCP ack (`tcp`), echoed by the origin.
fn echo(p: &Params, request: impl Fn(u64, u64) -> Request) -> Result<u64, String> {
    let mut s = setup(p);
    let c = s.add_connector(HA, s.secret.clone());
    register(&mut s, c)?;
    let len = if p.quick {
        1024 * 1024
    } else {
        64 * 1024 * 1024
    };
    let seed = s.rng.next_u64();
    let mut client = Client::new(s.tunnel_id, vec![request(len, seed)], 1);
    serve(&mut s, &mut client, c, Duration::from_secs(3600))?;
    let whole = client.completed == 1;
    // On a hostile network the echo may instead fail with its connection.
    let failed_cleanly = s.hostile && client.failed == 1;
    expect(
        whole || failed_cleanly,
        "the echo came back whole (or, on a hostile network, failed with its connection)",
        &s.world,
    )?;
    Ok(s.world.trace.hash())
}

fn websocket_echo(p: &Params) -> Result<u64, String> {
    echo(p, |len, seed| Request::WebSocket { len, seed })
}

fn tcp_echo(p: &Params) -> Result<u64, String> {
    echo(p, |len, seed| Request::Tcp { len, seed })
}

/// `--max-active-flows 1` with two TCP streams at once: one is served, the other refused with
/// `FlowConnectRateLimited` (whichever the connector saw second).
fn flow_limit(p: &Params) -> Result<u64, String> {
    let mut s = setup(p);
    s.max_active_flows = Some(1);
    let c = s.add_connector(1, s.secret.clone());
    register(&mut s, c)?;
    let len = if p.quick { 64 * 1024 } else { 1024 * 1024 };
    let requests = vec![Request::Tcp { len, seed: 1 }, Request::Tcp { len, seed: 2 }];
    let mut client = Client::new(s.tunnel_id, requests, 2);
    serve(&mut s, &mut client, c, Duration::from_secs(600))?;
    if s.hostile && client.failed > 0 {
        // A stream that failed with its connection says nothing about the limit.
        return Ok(s.world.trace.hash());
    }
    expect(
        client.completed == 2,
        "both streams ended cleanly",
        &s.world,
    )?;
    expect(
        client.rate_limited == 1,
        &format!("exactly one refused ({})", client.rate_limited),
        &s.world,
    )?;
    Ok(s.world.trace.hash())
}

/// Graceful shutdown while requests are in flight: within the grace period the connector
/// writes every answer whole and then stops, the edge gets nothing new after unregistering,
/// and every request completes once its bytes arrive (on HTTP/2, TCP delivers what the
/// connector wrote after the process is gone, which under loss may take minutes). On a
/// hostile network a request may instead end with its connection: one the path killed, or one
/// the connector had already given up on when the edge routed the request to it (its close
/// lost, the edge learns of it only at its idle timeout) - never one that unregistered and
/// stayed up.
fn shutdown_during_traffic(p: &Params) -> Result<u64, String> {
    let mut s = setup(p);
    let c = s.add_connector(HA, s.secret.clone());
    register(&mut s, c)?;
    // Sized to finish well inside the 30 s grace period at 5% loss, where one connection
    // moves roughly 200 KiB/s (loss-limited congestion window).
    let size = if p.quick { 128 * 1024 } else { 256 * 1024 };
    let requests: Vec<Request> = (0..8)
        .map(|i| Request::Http {
            up: size / 2,
            chunked: i % 2 == 0,
            down: size,
            mode: "fixed",
            seed: i,
        })
        .collect();
    let mut client = Client::new(s.tunnel_id, requests, 8);
    // Let the requests start, then shut down.
    client.hostile = s.hostile;
    let w = &mut s.world;
    let start = w.after(Duration::from_millis(300));
    w.run_ticking(start, |w, h| {
        match &h {
            Some(_) => {}
            None => client.tick(w)?,
        }
        Ok(false)
    })?;
    let in_flight = client.in_flight();
    expect(in_flight == 8, "requests in flight at shutdown", w)?;
    w.feed(c, Input::Shutdown);
    let (mut unregistered, mut stopped_at, mut lost) = (BTreeSet::new(), None, None);
    let mut delivered_at = None;
    let settle = w.after(Duration::from_secs(40));
    // What the connector wrote before it stopped is the kernel's to deliver, however long
    // TCP's retransmissions take: one segment lost again and again waits minutes (its timeout
    // doubles), so the run goes on while such bytes are on their way, up to TCP giving up.
    let limit = settle + TCP_GIVES_UP;
    w.run_ticking(limit, |w, h| {
        match &h {
            // Any of the tunnel's connections: the edge spreads requests over them all.
            Some(Happening::Edge(edge::Event::Unregistered { conn })) => {
                unregistered.insert(*conn);
                client.paused = true;
            }
            Some(Happening::Connector(
                _,
                Event::LinkClosed {
                    link,
                    reason: reason @ (CloseReason::TimedOut | CloseReason::Remote(_)),
                    ..
                },
            )) if w.connectors[c].served_by(*link).is_some() => lost = Some(reason.clone()),
            Some(Happening::Connector(_, Event::Stopped)) => stopped_at = Some(w.now),
            Some(_) => {}
            None => client.tick(w)?,
        }
        // What the connector wrote to TCP before it stopped still reaches the edge (the
        // kernel sends it): the requests may end after the process.
        if stopped_at.is_none() || client.is_done() {
            return Ok(stopped_at.is_some());
        }
        // Once nothing is on its way, a moment for the edge and the eyeballs to take the rest.
        if w.now >= settle && !w.tcp.delivering_from(c) {
            let at = *delivered_at.get_or_insert(w.now + Duration::from_secs(1));
            return Ok(w.now >= at);
        }
        delivered_at = None;
        Ok(false)
    })?;
    let stopped_at = stopped_at.ok_or("the connector never stopped")?;
    // On a hostile network the grace period may run out first: then what is still in flight
    // ends with the connection, when the connector stops.
    let graceful = !s.hostile || stopped_at.since_start() < start.since_start() + GRACE;
    if graceful {
        expect(
            !unregistered.is_empty() || lost.is_some(),
            "edge saw unregisterConnection",
            w,
        )?;
    }
    let whole = client.completed == 8;
    let not_drained = client.completed + client.failed == 8
        && client
            .failed_on
            .iter()
            .all(|conn| conn.is_some_and(|c| !unregistered.contains(&c)));
    expect(
        whole || (s.hostile && (lost.is_some() || !graceful || not_drained)),
        &format!(
            "all {in_flight} in-flight requests completed ({} did; connection lost: {lost:?})\n{}origins: {:?}\nnet: {:?} at {:?}",
            client.completed,
            client.describe(),
            w.origins.stats,
            w.net.stats(),
            w.now.since_start()
        ),
        w,
    )?;
    expect(
        stopped_at.since_start() < start.since_start() + GRACE + Duration::from_secs(1),
        "stopped within the grace period",
        w,
    )?;
    expect(
        w.origins.flows_of(c, None) == 0,
        "no origin connection outlives the connector",
        w,
    )?;
    Ok(w.trace.hash())
}

/// The edge goes away under load; every connection dies (QUIC's by idle timeout, TCP's by the
/// edge host's reset or, that lost, by keepalive); a new edge comes up at the same addresses
/// and the supervisor, on its own, connects again and serves.
fn edge_restart(p: &Params) -> Result<u64, String> {
    let mut s = setup(p);
    let c = s.add_connector(HA, s.secret.clone());
    register(&mut s, c)?;
    let mut client = Client::new(s.tunnel_id, http_requests(&mut s.rng, 5, 64 * 1024), 4);
    serve(&mut s, &mut client, c, Duration::from_secs(120))?;
    // The edge process dies: its state is gone.
    s.world.set_edge(None);
    // An idle HTTP/2 link sends nothing (as cloudflared's): with its reset lost, the connector
    // learns of the death from TCP keepalive, at the latest when the last probe goes
    // unanswered, that long after it last heard from the edge (before the death).
    let notice = match p.protocol {
        Protocol::Http2 if p.loss > 0.0 => {
            EDGE_TCP_KEEPALIVE * (1 + crate::tcp::KEEPALIVE_PROBES) + Duration::from_secs(1)
        }
        _ => Duration::from_secs(20),
    };
    let limit = s.world.after(notice);
    s.world
        .run_ticking(limit, |w, _| Ok(w.connectors[c].live().is_empty()))?;
    expect(
        s.world.connectors[c].live().is_empty(),
        "connector notices the dead edge",
        &s.world,
    )?;
    expect(
        s.world.origins.flows_of(c, None) == 0,
        "no origin connection outlives its tunnel connection",
        &s.world,
    )?;
    // A fresh edge process at the same addresses, with the same identity.
    let mut seed = [0u8; 32];
    s.rng.fill_bytes(&mut seed);
    let edge = edge_machine(
        &s.server,
        &s.http2_tls,
        s.tunnel_id,
        &s.secret,
        seed,
        &s.mapped,
    );
    s.world.set_edge(Some(edge));
    register(&mut s, c)?;
    let mut client = Client::new(s.tunnel_id, http_requests(&mut s.rng, 5, 64 * 1024), 4);
    serve(&mut s, &mut client, c, Duration::from_secs(120))?;
    let done = client.completed == 5 || (s.hostile && client.completed + client.failed == 5);
    expect(done, "the new connection serves", &s.world)?;
    Ok(s.world.trace.hash())
}

/// HTTP traffic over 4 HA connections on the worst path the model has: bursty loss on top of
/// the run's loss, jitter, reordering and duplication; the path MTU shrinks under the
/// connections mid-traffic (after discovery raised it); one index loses its edge-to-connector
/// direction for longer than the idle timeout (an asymmetric partition). Every request is
/// answered whole or fails with its connection, nothing hangs, the cut connection comes back,
/// and after a shutdown nothing is left: origin connections, sessions, buffers, timers.
fn hostile_path(p: &Params) -> Result<u64, String> {
    let mut s = setup(p);
    s.hostile = true;
    s.world.net.set_default(LinkConfig {
        latency: Duration::from_millis(15),
        jitter: Duration::from_millis(10),
        reorder: 0.02,
        duplicate: 0.01,
        loss: p.loss,
        bursts: Some(Bursts {
            to_bad: 0.01,
            to_good: 0.25,
            bad_loss: 0.7,
        }),
        ..LinkConfig::default()
    });
    let c = s.add_connector(HA, s.secret.clone());
    register(&mut s, c)?;
    let count = if p.quick { 30 } else { 300 };
    let requests = http_requests(&mut s.rng, count, 256 * 1024);
    let mut client = Client::new(s.tunnel_id, requests, 8);
    client.hostile = true;
    // Let discovery raise the MTU, then shrink the path under every connection; cut index 1's
    // edge-to-connector direction for 12 s.
    let later = s.world.after(Duration::from_secs(3));
    s.world.run_until(later, |_, _| Ok(()))?;
    for index in 0..HA {
        let socket = s.world.connectors[c].socket(index);
        for edge in s.world.edge_addrs.clone() {
            s.world.net.set_mtu(edge, socket, Some(1252));
        }
    }
    let cut = s.world.connectors[c].socket(1);
    for edge in s.world.edge_addrs.clone() {
        s.world.net.set_one_way_partition(edge, cut, true);
    }
    let heal_at = s.world.after(Duration::from_secs(12));
    s.world.wakeups.insert(heal_at);
    let mut healed = false;
    let limit = s.world.after(Duration::from_secs(600));
    // Serve, healing the cut on time.
    loop {
        let mut lost = None;
        s.world.run_ticking(limit, |w, h| {
            match &h {
                Some(Happening::Connector(
                    _,
                    Event::LinkClosed {
                        link,
                        reason,
                        was_registered: true,
                        ..
                    },
                )) if w.connectors[c].served_by(*link).is_some() => {
                    lost = Some((*link, reason.clone()));
                    return Ok(true);
                }
                Some(_) => return Ok(false),
                None => {}
            }
            if !healed && w.now >= heal_at {
                healed = true;
                for edge in w.edge_addrs.clone() {
                    w.net.set_one_way_partition(edge, cut, false);
                }
            }
            client.tick(w)?;
            if let Some(e) = &w.origins.error {
                return Err(format!("origin: {e}"));
            }
            Ok(client.is_done() && healed)
        })?;
        let Some((link, reason)) = lost else { break };
        lost_connection(&mut s, c, link, &reason)?;
        register(&mut s, c)?;
    }
    let w = &mut s.world;
    expect(
        client.is_done() && client.completed + client.failed == count as u64,
        &format!(
            "every request ends: {} answered, {} failed, {} in flight\n{}",
            client.completed,
            client.failed,
            client.in_flight(),
            client.describe()
        ),
        w,
    )?;
    expect(
        w.net.stats().too_big > 0,
        "the shrunk path MTU dropped packets (discovery had raised it above)",
        w,
    )?;
    // The connector comes back on the index that was cut.
    let back = w.after(REGISTER_WITHIN);
    w.run_ticking(back, |w, _| {
        Ok(w.connectors[c].live().len() == usize::from(HA))
    })?;
    expect(
        w.connectors[c].live().len() == usize::from(HA),
        "every HA connection serves again",
        w,
    )?;
    w.feed(c, Input::Shutdown);
    let limit = w.after(GRACE + Duration::from_secs(5));
    w.run_ticking(limit, |w, _| Ok(w.connectors[c].connector.is_stopped()))?;
    let after = w.after(Duration::from_secs(1));
    w.run_until(after, |_, _| Ok(()))?;
    let node = &w.connectors[c];
    let leftovers = (
        w.origins.flows_of(c, None),
        node.hub().sessions.active(),
        w.udp.sockets(),
        node.buffered(),
        node.connector.flow_stats().active,
    );
    expect(
        node.connector.is_stopped() && leftovers == (0, 0, 0, (0, 0), 0),
        &format!(
            "stopped, nothing left (origin flows, sessions, sockets, buffers, flows): {leftovers:?}; net {:?}",
            w.net.stats()
        ),
        w,
    )?;
    w.trace.record(w.now, &w.net.stats());
    Ok(w.trace.hash())
}

/// Serves `client` on connector `c` and checks that it took at least `least` (whoever is slow
/// set the pace) while the connector's buffers stayed within the window bound.
fn paced(
    s: &mut Setup,
    c: usize,
    client: &mut Client,
    least: Duration,
    who: &str,
) -> Result<u64, String> {
    let start = s.world.now;
    let peak = serve(s, client, c, Duration::from_secs(600))?;
    let took = s.world.now.since_start() - start.since_start();
    expect(
        took >= least,
        &format!("the {who}'s pace sets the time ({took:?}, at least {least:?})"),
        &s.world,
    )?;
    s.world
        .trace
        .record(s.world.now, &format!("peak buffered {peak}"));
    Ok(s.world.trace.hash())
}

/// An origin that reads slowly: uploads back up into QUIC flow control, not into memory.
fn slow_origin(p: &Params) -> Result<u64, String> {
    let mut s = setup(p);
    let c = s.add_connector(1, s.secret.clone());
    register(&mut s, c)?;
    s.world.origins.read_rate = Some(256 * 1024);
    let size = if p.quick { 512 * 1024 } else { 4 * 1024 * 1024 };
    let requests = (0..4)
        .map(|i| Request::Http {
            up: size,
            chunked: i % 2 == 1,
            down: 16,
            mode: "fixed",
            seed: i,
        })
        .collect();
    let mut client = Client::new(s.tunnel_id, requests, 4);
    // Each origin reads at its own pace, in parallel; the last write's pause comes after the
    // origin has answered, so allow one window.
    let least = Duration::from_secs_f64((size - 64 * 1024) as f64 / (256.0 * 1024.0));
    paced(&mut s, c, &mut client, least, "origin")
}

/// An eyeball that reads slowly: the origins are paused, not buffered.
fn slow_edge(p: &Params) -> Result<u64, String> {
    let mut s = setup(p);
    let c = s.add_connector(1, s.secret.clone());
    register(&mut s, c)?;
    let size = if p.quick { 512 * 1024 } else { 4 * 1024 * 1024 };
    let requests = (0..4)
        .map(|i| Request::Http {
            up: 0,
            chunked: false,
            down: size,
            mode: if i % 2 == 0 { "fixed" } else { "chunked" },
            seed: i,
        })
        .collect();
    let mut client = Client::new(s.tunnel_id, requests, 4);
    // 4 KiB per 10 ms: 400 KiB/s across all streams.
    client.read_budget = Some(4096);
    let least = Duration::from_secs_f64((4 * size) as f64 / (400.0 * 1024.0)).mul_f64(0.95);
    paced(&mut s, c, &mut client, least, "eyeball")
}

/// How soon `auto` must switch to HTTP/2 once QUIC's handshakes time out (issue 13: cloudflared
/// needs 1-3 minutes; burrow promises 30 s). Registering over it is then any registration's
/// business (within [`REGISTER_WITHIN`]): loss may cost an HTTP/2 attempt too.
const FALLBACK_WITHIN: Duration = Duration::from_secs(30);
/// How soon every connection must be back on QUIC once UDP gets through again (issue 13).
const RETURN_WITHIN: Duration = Duration::from_secs(180);

/// A firewall drops UDP to the edge: `--protocol auto` falls back to HTTP/2 within
/// [`FALLBACK_WITHIN`], every HA connection serves over it, and requests are answered. Then
/// UDP gets through again: the connector returns every connection to QUIC by itself within
/// [`RETURN_WITHIN`], and every request sent meanwhile is answered (none is dropped by the
/// switch: an HTTP/2 connection drains before its index reconnects over QUIC), but one the
/// edge routed to a connection the connector never registered (its registration answer came
/// after the connector's call timed out, and it closed the connection).
fn udp_blocked(p: &Params) -> Result<u64, String> {
    let mut s = setup(p);
    s.protocol = ProtocolFlag::Auto;
    for edge in s.world.edge_addrs.clone() {
        s.world.net.set_udp_blocked(edge, true);
    }
    let start = s.world.now;
    let c = s.add_connector(HA, s.secret.clone());
    // Index 0 falls back and registers over HTTP/2.
    let (mut fell_back, mut first) = (None, None);
    let limit = s.world.after(REGISTER_WITHIN);
    s.world.run_ticking(limit, |w, h| {
        match h {
            Some(Happening::Connector(_, Event::Registered { protocol, .. })) => {
                if protocol == Protocol::Quic {
                    return Err(broken("registered over QUIC with UDP blocked", w));
                }
                first = Some(w.now);
            }
            Some(Happening::Connector(
                _,
                Event::ProtocolChanged {
                    index: 0,
                    protocol: Protocol::Http2,
                },
            )) => {
                fell_back = fell_back.or(Some(w.now));
            }
            _ => {}
        }
        Ok(first.is_some())
    })?;
    first.ok_or_else(|| broken("auto falls back to HTTP/2 and registers", &s.world))?;
    // The switch is bounded at any loss: UDP is blocked whatever the loss, so QUIC's attempts
    // time out alike.
    let took = fell_back.map(|t| t.since_start() - start.since_start());
    expect(
        took.is_some_and(|t| t <= FALLBACK_WITHIN),
        &format!("switched to HTTP/2 {took:?} after starting, within {FALLBACK_WITHIN:?}"),
        &s.world,
    )?;
    // Every index serves, over HTTP/2 (they start on index 0's protocol).
    let w = &mut s.world;
    let limit = w.after(REGISTER_WITHIN);
    w.run_ticking(limit, |w, _| {
        Ok(w.connectors[c].connector.ready_connections() == usize::from(HA))
    })?;
    expect(
        w.connectors[c].connector.ready_connections() == usize::from(HA),
        "every HA connection serves over HTTP/2",
        w,
    )?;
    let mut client = Client::new(s.tunnel_id, http_requests(&mut s.rng, 20, 64 * 1024), 4);
    serve(&mut s, &mut client, c, Duration::from_secs(600))?;
    expect(
        client.all_answered_or_excused(20),
        &format!(
            "requests are answered over HTTP/2 ({} answered, {} failed, {} with a connection the connector never registered)",
            client.completed, client.failed, client.unregistered
        ),
        &s.world,
    )?;
    // UDP gets through again; traffic goes on while the connections move back to QUIC.
    for edge in s.world.edge_addrs.clone() {
        s.world.net.set_udp_blocked(edge, false);
    }
    let unblocked = s.world.now;
    let mut on: [Protocol; HA as usize] = [Protocol::Http2; HA as usize];
    let hostile = s.hostile;
    let (mut sent, mut answered, mut failed, mut unregistered) = (0u64, 0u64, 0u64, 0u64);
    let (mut back, mut counted) = (None, false);
    let limit = s.world.after(RETURN_WITHIN + REGISTER_WITHIN);
    let mut client = Client::new(s.tunnel_id, Vec::new(), 4);
    client.hostile = hostile;
    let w = &mut s.world;
    w.run_ticking(limit, |w, h| {
        match h {
            Some(Happening::Connector(
                i,
                Event::Registered {
                    index, protocol, ..
                },
            )) if i == c => on[usize::from(index)] = protocol,
            Some(Happening::Connector(
                i,
                Event::LinkClosed {
                    reason,
                    was_registered: true,
                    ..
                },
            )) if i == c && !hostile && reason != CloseReason::Local(LocalClose::Shutdown) => {
                return Err(broken(&format!("a served connection died: {reason}"), w))
            }
            Some(_) => {}
            None => {
                if client.is_done() {
                    // The next batch, until every connection is back and its requests end.
                    answered += client.completed;
                    failed += client.failed;
                    unregistered += client.unregistered;
                    if back.is_some() {
                        counted = true;
                        return Ok(true);
                    }
                    let requests = http_requests(&mut s.rng, 8, 64 * 1024);
                    sent += requests.len() as u64;
                    client = Client::new(s.tunnel_id, requests, 4);
                    client.hostile = hostile;
                }
                client.tick(w)?;
                if let Some(e) = &w.origins.error {
                    return Err(format!("origin: {e}"));
                }
            }
        }
        if back.is_none() && on.iter().all(|p| *p == Protocol::Quic) {
            back = Some(w.now);
        }
        Ok(false)
    })?;
    let back = back.ok_or_else(|| broken("every connection returns to QUIC", w))?;
    let took = back.since_start() - unblocked.since_start();
    w.trace.record(
        w.now,
        &format!("back on QUIC {took:?} after UDP was unblocked; {sent} requests sent meanwhile"),
    );
    expect(
        took <= RETURN_WITHIN || hostile,
        &format!("back on QUIC {took:?} after UDP came back, within {RETURN_WITHIN:?}"),
        w,
    )?;
    // The switch's time ran out with a batch in flight (a slow, lossy path): it ends as any
    // batch does.
    if !counted {
        if !client.is_done() {
            serve(&mut s, &mut client, c, LIMIT)?;
        }
        answered += client.completed;
        failed += client.failed;
        unregistered += client.unregistered;
    }
    let w = &s.world;
    expect(
        answered + failed == sent && (hostile || failed == unregistered),
        &format!("every request sent during the switch is answered ({answered} of {sent}; {failed} failed, {unregistered} with a connection the connector never registered)"),
        w,
    )?;
    Ok(w.trace.hash())
}
