//! Scenarios: each builds a world from a seed, runs it, and checks invariants on what
//! happened. A scenario returns the trace hash, or what went wrong.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burrow_core::control::{ConnectionDetails, Registration, RegistrationError};
use burrow_core::quic::tls::{self, PostQuantum};
use burrow_core::quic::transport::QuicSettings;
use burrow_core::quic::SERVER_NAME;
use burrow_core::tunnel::connector::{
    CloseReason, ConnectorConfig, ConnectorConnection, ConnectorEvent,
};
use burrow_core::tunnel::data::DataLimits;
use burrow_core::tunnel::edge::{EdgeEndpoint, EdgeEvent};
use quinn_proto::{ClientConfig, ServerConfig};
use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use uuid::Uuid;

use crate::client::{Client, Request};
use crate::clock::{Clock, VirtualTime};
use crate::net::{LinkConfig, Network};
use crate::world::{Happening, World};

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
        name: "slow-origin",
        run: slow_origin,
    },
    Scenario {
        name: "slow-edge",
        run: slow_edge,
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

const EDGE: &str = "198.51.100.1:7844";
const ACCOUNT: &str = "0123456789abcdef0123456789abcdef";
const LOCAL_CONFIG: &[u8] = br#"{"ingress":[{"service":"hello_world"}]}"#;
const LIMIT: Duration = Duration::from_secs(120);
/// How long the registration scenario serves before shutting down.
const SERVE: Duration = Duration::from_secs(15);

/// The certificate the simulated edge presents. Ed25519 keeps signature sizes fixed, so packet
/// sizes (and hence the run) do not depend on key randomness.
fn edge_identity() -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519 key");
    let params = rcgen::CertificateParams::new(vec![SERVER_NAME.into()]).expect("params");
    let cert = params.self_signed(&key).expect("self-signed");
    let key = PrivatePkcs8KeyDer::from(key.serialize_der());
    (cert.der().clone(), key.into())
}

/// A tunnel the simulated edge knows: its secret.
struct Tunnels(HashMap<Uuid, (String, Vec<u8>)>);

impl Tunnels {
    /// The edge's check: cloudflared's edge refuses unknown tunnels and wrong secrets.
    fn check(&self, r: &Registration) -> Result<(), RegistrationError> {
        match self.0.get(&r.tunnel_id) {
            Some((account, secret)) if *account == r.account_tag && *secret == r.tunnel_secret => {
                Ok(())
            }
            _ => Err(RegistrationError {
                cause: "Unauthorized: invalid tunnel credentials".into(),
                should_retry: false,
                retry_after: Duration::ZERO,
            }),
        }
    }
}

struct Setup {
    world: World,
    rng: ChaCha8Rng,
    client: ClientConfig,
    tunnel_id: Uuid,
    secret: Vec<u8>,
    tunnels: Tunnels,
    data_limits: DataLimits,
    /// What each connector was added with (HA index, secret, features), to connect again.
    specs: Vec<(u8, Vec<u8>, Vec<String>)>,
    /// The network is hostile (see [`HOSTILE_LOSS`]).
    hostile: bool,
}

/// An edge's QUIC server configuration with a fresh identity, and a client configuration
/// that trusts exactly that identity.
fn tls_pair() -> (ServerConfig, ClientConfig) {
    let (cert, key) = edge_identity();
    let settings = QuicSettings::default();
    let mut server = ServerConfig::with_crypto(Arc::new(
        tls::server_config(vec![cert.clone()], key, PostQuantum::Prefer).expect("server TLS"),
    ));
    server.transport_config(settings.transport_config(true));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).expect("root");
    let mut client = ClientConfig::new(Arc::new(
        tls::client_config(roots, PostQuantum::Prefer).expect("client TLS"),
    ));
    client.transport_config(settings.transport_config(true));
    (server, client)
}

fn setup(p: &Params) -> Setup {
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
    let (server, client) = tls_pair();

    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    let edge = EdgeEndpoint::new(server, seed);
    let link = LinkConfig {
        latency: Duration::from_millis(15),
        jitter: Duration::from_millis(5),
        reorder: 0.01,
        loss: p.loss,
        ..LinkConfig::default()
    };
    let net = Network::new(ChaCha8Rng::seed_from_u64(rng.next_u64()), link);
    let world = World::new(
        Clock::new(Instant::now()),
        net,
        EDGE.parse().expect("addr"),
        edge,
    );
    let tunnel_id = Uuid::from_u128(u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64()));
    let secret: Vec<u8> = (0..32).map(|_| rng.next_u64() as u8).collect();
    let tunnels = Tunnels(HashMap::from([(
        tunnel_id,
        (ACCOUNT.to_owned(), secret.clone()),
    )]));
    Setup {
        world,
        rng,
        client,
        tunnel_id,
        secret,
        tunnels,
        data_limits: DataLimits::default(),
        specs: Vec::new(),
        hostile: p.loss >= HOSTILE_LOSS,
    }
}

impl Setup {
    /// Adds connector `conn_index` with the given secret, speaking datagram v3; returns its
    /// index in the world.
    fn add_connector(&mut self, conn_index: u8, secret: Vec<u8>) -> Result<usize, String> {
        self.add_connector_with(conn_index, secret, &["support_datagram_v3_2"])
    }

    /// Adds connector `conn_index` registering `features` (which choose its datagram version).
    fn add_connector_with(
        &mut self,
        conn_index: u8,
        secret: Vec<u8>,
        features: &[&str],
    ) -> Result<usize, String> {
        let features: Vec<String> = features.iter().map(|f| (*f).to_owned()).collect();
        self.specs
            .push((conn_index, secret.clone(), features.clone()));
        let registration = Registration {
            conn_index,
            // Fixed, so that traces do not depend on the build or the platform.
            version: "burrow-sim".into(),
            arch: "linux_amd64".into(),
            ..Registration::new(
                ACCOUNT,
                secret,
                self.tunnel_id,
                Uuid::from_u128(42),
                features,
            )
        };
        let config = ConnectorConfig {
            local_config: Some(LOCAL_CONFIG.to_vec()),
            data: self.data_limits.clone(),
            ..ConnectorConfig::new(registration, self.client.clone())
        };
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        let index = self.world.connectors.len();
        let addr = SocketAddr::from(([192, 0, 2, 10], 40000 + index as u16));
        let conn =
            ConnectorConnection::connect(self.world.instant(), config, self.world.edge_addr, seed)
                .map_err(|e| e.to_string())?;
        self.world.connectors.push((addr, Some(conn)));
        Ok(index)
    }

    /// A new connection in place of connector `c` (same HA index, secret and features), as
    /// the supervisor makes one after a connection is lost; returns its index in the world.
    fn reconnect(&mut self, c: usize) -> Result<usize, String> {
        let (conn_index, secret, features) =
            self.specs.get(c).cloned().ok_or("no such connector")?;
        self.world.origins.drop_connector(c);
        self.world.connectors[c].1 = None;
        let features: Vec<&str> = features.iter().map(String::as_str).collect();
        self.add_connector_with(conn_index, secret, &features)
    }
}

/// Loss from which the network is hostile: with one packet in four lost each way, quinn's
/// backed-off probes can go unanswered for the 5 s idle timeout (cloudflared's too), so a
/// connection may die mid-traffic. Below it, a connection dying mid-traffic is a failure.
/// On a hostile network what a user relies on is: every request ends (answered whole, or
/// failed with its connection), every byte delivered is intact, a dead connection leaves
/// nothing behind (streams, buffers, calls, timers, origin connections), and the connector
/// comes back.
const HOSTILE_LOSS: f64 = 0.2;

/// How long a connector may take to register under loss, retrying as the supervisor does:
/// a handshake that times out (10 s) or a registration call that does (5 s), then a backoff
/// of up to 1, 2, 4, 8, 16, 32 s, leaves time for six attempts.
const REGISTER_WITHIN: Duration = Duration::from_secs(150);

/// The supervisor's backoff before connection attempt `attempt + 1` (cloudflared's
/// `BackoffHandler`: uniform in `[0, 1 s · 2^attempt)`, the exponent capped at `--retries` 5).
fn backoff(rng: &mut ChaCha8Rng, attempt: u32) -> Duration {
    let cap = Duration::from_secs(1u64 << attempt.min(5));
    Duration::from_nanos(rng.next_u64() % cap.as_nanos() as u64).max(Duration::from_millis(1))
}

/// The edge's answer to every registration: check credentials, accept or refuse.
fn answer_registration(
    world: &mut World,
    tunnels: &Tunnels,
    conn: burrow_core::tunnel::edge::ConnId,
    registration: &Registration,
) -> Result<(), String> {
    let now = world.instant();
    let result = tunnels.check(registration).map(|()| ConnectionDetails {
        uuid: Uuid::from_u128(conn.0 as u128 + 1),
        location: "SIM".into(),
        remotely_managed: false,
    });
    let edge = world.edge.as_mut().ok_or("edge down")?;
    edge.respond_registration(now, conn, result)
        .map_err(|e| format!("edge could not answer: {e}"))
}

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
    let mut c = s.add_connector(0, s.secret.clone())?;
    register(&mut s, &mut c)?;
    let tunnels = &s.tunnels;
    let (mut config_seen, mut edge_unregistered, mut unregistered, mut closed) =
        (false, false, false, false);
    let serve_until = s.world.after(SERVE);
    s.world.run_until(serve_until, |w, h| {
        match h {
            Happening::Edge(EdgeEvent::RegisterRequested { conn, registration }) => {
                answer_registration(w, tunnels, conn, &registration)?;
            }
            Happening::Edge(EdgeEvent::LocalConfiguration { config, .. }) => {
                expect(
                    config == LOCAL_CONFIG,
                    "edge receives the local config as sent",
                    w,
                )?;
                config_seen = true;
            }
            Happening::Edge(EdgeEvent::Unregistered { .. }) => edge_unregistered = true,
            Happening::Connector(_, ConnectorEvent::Registered(_)) => {
                return Err(broken("registered once", w))
            }
            Happening::Connector(_, ConnectorEvent::Unregistered) => unregistered = true,
            Happening::Connector(_, ConnectorEvent::Closed { .. }) => closed = true,
            Happening::Connector(_, other) => {
                return Err(broken(&format!("unexpected connector event {other:?}"), w))
            }
            Happening::Edge(_) => {}
        }
        Ok(())
    })?;
    // Keep-alives keep the connection busy, so the first phase runs to its limit: 15 s of
    // serving. Then shut down gracefully.
    let w = &mut s.world;
    expect(config_seen, "edge gets the local configuration", w)?;
    let now = w.instant();
    w.connectors[c]
        .1
        .as_mut()
        .ok_or("connector gone")?
        .shutdown(now)
        .map_err(|e| e.to_string())?;
    let shutdown_limit = w.after(Duration::from_secs(40));
    w.run_until(shutdown_limit, |w, h| {
        match h {
            Happening::Edge(EdgeEvent::Unregistered { .. }) => edge_unregistered = true,
            Happening::Connector(_, ConnectorEvent::Unregistered) => unregistered = true,
            Happening::Connector(_, ConnectorEvent::Closed { .. }) => closed = true,
            Happening::Edge(EdgeEvent::ConnectionClosed { .. }) => {}
            other => {
                return Err(format!(
                    "unexpected during shutdown: {other:?}\n{}",
                    w.trace.tail().join("\n")
                ))
            }
        }
        Ok(())
    })?;
    expect(edge_unregistered, "edge sees unregisterConnection", w)?;
    expect(unregistered, "connector learns it is unregistered", w)?;
    expect(closed, "connection closes after unregistering", w)?;
    Ok(w.trace.hash())
}

/// A wrong secret: the edge refuses, the connector reports it and closes.
fn bad_credentials(p: &Params) -> Result<u64, String> {
    let mut s = setup(p);
    let mut wrong = s.secret.clone();
    wrong[0] ^= 0xff;
    let mut c = s.add_connector(0, wrong)?;
    // Attempts lost to the network are retried; the edge's answer is what must arrive.
    let e = match connect(&mut s, &mut c)? {
        Connected::Refused(e) => e,
        Connected::Registered(_) => return Err("registered with a wrong secret".into()),
    };
    let w = &mut s.world;
    expect(
        e.cause.starts_with("Unauthorized"),
        "the edge's cause reaches the connector",
        w,
    )?;
    expect(!e.should_retry, "a permanent refusal says so", w)?;
    let mut closed = false;
    let limit = w.after(LIMIT);
    w.run_ticking(limit, |_, h| {
        match h {
            Some(Happening::Connector(i, ConnectorEvent::Closed { .. })) if i == c => closed = true,
            Some(Happening::Connector(i, ConnectorEvent::Registered(_))) if i == c => {
                return Err("registered with a wrong secret".into())
            }
            _ => {}
        }
        Ok(closed)
    })?;
    expect(closed, "connection closed after refusal", w)?;
    Ok(w.trace.hash())
}

/// A partition longer than the 5 s idle timeout kills the connection on both sides.
fn partition(p: &Params) -> Result<u64, String> {
    let mut s = setup(p);
    let mut c = s.add_connector(0, s.secret.clone())?;
    register(&mut s, &mut c)?;
    // Serve a while (keep-alives only) before the cut.
    let until = s.world.now.max(VirtualTime::ZERO + Duration::from_secs(20));
    s.world.run_until(until, |_, _| Ok(()))?;
    let w = &mut s.world;
    let (edge, conn) = (w.edge_addr, w.connectors[c].0);
    w.net.set_partition(edge, conn, true);
    let (mut connector_closed, mut edge_closed) = (None, None);
    let limit = w.after(Duration::from_secs(30));
    let cut_at = w.now;
    w.run_until(limit, |w, h| {
        match h {
            Happening::Connector(_, ConnectorEvent::Closed { reason }) => {
                connector_closed = Some((w.now, reason))
            }
            Happening::Edge(EdgeEvent::ConnectionClosed { .. }) => edge_closed = Some(w.now),
            _ => {}
        }
        Ok(())
    })?;
    let (at, reason) = connector_closed.ok_or("connector never noticed the partition")?;
    expect(
        reason == CloseReason::TimedOut,
        "closed by the idle timeout",
        w,
    )?;
    let waited = at.since_start() - cut_at.since_start();
    expect(
        waited >= Duration::from_secs(4) && waited <= Duration::from_secs(7),
        "idle timeout (5 s) decides when, give or take a keep-alive",
        w,
    )?;
    expect(edge_closed.is_some(), "edge drops the connection too", w)?;
    Ok(w.trace.hash())
}

/// The edge pushes configurations; versions only move forward, invalid ones are refused with
/// the version unchanged, and every answer reaches the edge.
fn remote_config(p: &Params) -> Result<u64, String> {
    let mut s = setup(p);
    let mut c = s.add_connector(0, s.secret.clone())?;
    let conn = register(&mut s, &mut c)?;
    // Connection 0 pushes its local configuration after registering; let it land first.
    let mut local_config = false;
    let until = s.world.after(Duration::from_secs(15));
    s.world.run_ticking(until, |_, h| {
        match h {
            Some(Happening::Edge(EdgeEvent::LocalConfiguration { .. })) => local_config = true,
            Some(Happening::Edge(_)) | None => {}
            Some(other) => return Err(format!("unexpected {other:?}")),
        }
        Ok(local_config)
    })?;
    expect(
        local_config,
        "the edge gets the local configuration",
        &s.world,
    )?;
    // The connector process's configuration state (process-wide in cloudflared).
    let mut versions = burrow_core::rpc_stream::ConfigVersions::new();
    let good = br#"{"ingress":[{"service":"http_status:503"}]}"#.as_slice();
    // (offered version, config, expected latest version, expect an error)
    let pushes: [(i32, &[u8], i32, bool); 5] = [
        (1, good, 1, false),
        (1, good, 1, false),
        (0, good, 1, false),
        (3, b"{not json", 1, true),
        (2, good, 2, false),
    ];
    for (version, config, want_latest, want_error) in pushes {
        let w = &mut s.world;
        let now = w.instant();
        w.edge
            .as_mut()
            .ok_or("edge down")?
            .update_configuration(now, conn, version, config)
            .map_err(|e| e.to_string())?;
        let mut answer = None;
        let limit = w.after(Duration::from_secs(10));
        w.run_until(limit, |w, h| {
            match h {
                Happening::Connector(
                    i,
                    ConnectorEvent::ConfigurationOffered {
                        stream,
                        version,
                        config,
                    },
                ) => {
                    let result = versions.offer(version, || {
                        serde_json::from_slice::<serde_json::Value>(&config)
                            .map(drop)
                            .map_err(|e| format!("invalid configuration JSON: {e}"))
                    });
                    let now = w.instant();
                    w.connectors[i]
                        .1
                        .as_mut()
                        .ok_or("connector gone")?
                        .respond_configuration(now, stream, &result)
                        .map_err(|e| e.to_string())?;
                }
                Happening::Edge(EdgeEvent::ConfigurationResult { outcome, .. }) => {
                    expect(answer.is_none(), "one answer per push", w)?;
                    answer = Some(outcome);
                }
                other => return Err(format!("unexpected {other:?}")),
            }
            Ok(())
        })?;
        let Some(burrow_core::rpc_stream::client::RpcCallOutcome::Configuration(r)) = answer else {
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
        versions.current() == 2,
        "the connector ends on version 2",
        &s.world,
    )?;
    Ok(s.world.trace.hash())
}

/// How a connector's registration ended.
enum Connected {
    /// Registered; the edge's id of the connection.
    Registered(burrow_core::tunnel::edge::ConnId),
    /// The edge refused it for good.
    Refused(RegistrationError),
}

/// Runs until connector `*c` is registered; returns the edge's id of its connection.
fn register(s: &mut Setup, c: &mut usize) -> Result<burrow_core::tunnel::edge::ConnId, String> {
    match connect(s, c)? {
        Connected::Registered(conn) => Ok(conn),
        Connected::Refused(e) => Err(broken(
            &format!("the edge refused the registration for good: {e:?}"),
            &s.world,
        )),
    }
}

/// Runs until connector `*c` registers or is refused for good. A connection that closes
/// before either (a handshake or registration lost to the network
/// past its deadline) is replaced after the supervisor's backoff, and `*c` follows the
/// replacement: what a user relies on is that the connector registers, within
/// [`REGISTER_WITHIN`], not that its first attempt does.
fn connect(s: &mut Setup, c: &mut usize) -> Result<Connected, String> {
    let deadline = s.world.after(REGISTER_WITHIN);
    let mut attempt = 0;
    loop {
        let target = *c;
        let (mut registered, mut refused, mut closed) = (None, None, None);
        let tunnels = &s.tunnels;
        s.world.run_ticking(deadline, |w, h| {
            match h {
                Some(Happening::Edge(EdgeEvent::RegisterRequested { conn, registration })) => {
                    answer_registration(w, tunnels, conn, &registration)?;
                }
                Some(Happening::Connector(i, ConnectorEvent::Registered(d))) if i == target => {
                    expect(d.location == "SIM", "details come from the edge", w)?;
                    registered = Some(d)
                }
                Some(Happening::Connector(i, ConnectorEvent::RegistrationFailed(e)))
                    if i == target && !e.should_retry =>
                {
                    refused = Some(e)
                }
                Some(Happening::Connector(i, ConnectorEvent::Closed { reason })) if i == target => {
                    closed = Some(reason)
                }
                _ => {}
            }
            Ok(registered.is_some() || refused.is_some() || closed.is_some())
        })?;
        if let Some(d) = registered {
            // The simulated edge names a connection's details after its id (answer_registration).
            let conn = burrow_core::tunnel::edge::ConnId(d.uuid.as_u128() as usize - 1);
            return Ok(Connected::Registered(conn));
        }
        if let Some(e) = refused {
            return Ok(Connected::Refused(e));
        }
        let Some(reason) = closed else {
            let what =
                format!("connector registers within {REGISTER_WITHIN:?} ({attempt} retries)");
            return Err(broken(&what, &s.world));
        };
        attempt += 1;
        reconnect_after_backoff(
            s,
            c,
            attempt,
            &format!("closed before registering ({reason})"),
        )?;
    }
}

/// The supervisor's part when connector `*c`'s connection is gone (`why`): after the backoff
/// of retry `attempt`, a new connection with the same index; `*c` follows it.
fn reconnect_after_backoff(
    s: &mut Setup,
    c: &mut usize,
    attempt: u32,
    why: &str,
) -> Result<(), String> {
    let delay = backoff(&mut s.rng, attempt);
    let w = &mut s.world;
    w.trace.record(
        w.now,
        &format!("connector {c} {why}; reconnecting in {delay:?}"),
    );
    let until = w.after(delay);
    w.run_until(until, |_, _| Ok(()))?;
    *c = s.reconnect(*c)?;
    Ok(())
}

/// Runs `client` to completion (or `limit`), checking the connector's buffers after every step
/// against the per-stream window bound. On a hostile network a connection may die: then
/// [`lost_connection`] checks it left nothing behind, `*c` reconnects and the client goes on.
fn serve(
    s: &mut Setup,
    client: &mut Client,
    c: &mut usize,
    limit: Duration,
) -> Result<usize, String> {
    // A window each way plus a response head, per stream.
    let per_stream = 2 * s.data_limits.window + 64 * 1024;
    let limit = s.world.after(limit);
    let mut peak = 0;
    loop {
        let target = *c;
        let mut lost = None;
        s.world.run_ticking(limit, |w, h| {
            match &h {
                Some(Happening::Edge(e)) => {
                    client.on_event(e)?;
                    return Ok(false);
                }
                Some(Happening::Connector(i, ConnectorEvent::Closed { reason }))
                    if *i == target =>
                {
                    lost = Some(reason.clone());
                    return Ok(true);
                }
                Some(_) => return Ok(false),
                None => {}
            }
            client.tick(w)?;
            if let Some(conn) = w.connectors[target].1.as_ref() {
                let buffered = conn.buffered_bytes();
                peak = peak.max(buffered);
                let allowed = conn.active_streams().max(1) * per_stream;
                if buffered > allowed {
                    return Err(format!(
                        "connector buffers {buffered} bytes over {} streams, bound {allowed}",
                        conn.active_streams()
                    ));
                }
            }
            if let Some(e) = &w.origins.error {
                return Err(format!("origin: {e}"));
            }
            Ok(client.is_done())
        })?;
        let Some(reason) = lost else { break };
        if !s.hostile {
            return Err(format!("connection closed mid-traffic: {reason}"));
        }
        lost_connection(s, target, &reason)?;
        // A registered connection's loss resets the backoff: the first retry waits up to 2 s.
        reconnect_after_backoff(s, c, 1, &format!("lost ({reason})"))?;
        let conn = register(s, c)?;
        client.connection_lost(conn);
    }
    let w = &s.world;
    if !client.is_done() {
        return Err(format!(
            "{} requests done, {} in flight when time ran out\n{}{}",
            client.completed,
            client.in_flight(),
            client.describe(),
            w.trace.tail().join("\n")
        ));
    }
    Ok(peak)
}

/// Connector `c`'s connection died (`reason`): it must leave nothing behind, neither streams,
/// buffers, RPC calls or timers of its own, nor (once the origins acted on what it said last)
/// origin connections.
fn lost_connection(s: &mut Setup, c: usize, reason: &CloseReason) -> Result<(), String> {
    let w = &mut s.world;
    w.trace
        .record(w.now, &format!("connector {c} lost: {reason}"));
    // One more step lets the origins act on the closes the connection queued as it died.
    let next = w.after(Duration::from_millis(1));
    w.run_until(next, |_, _| Ok(()))?;
    let conn = w.connectors[c].1.as_mut().ok_or("connector gone")?;
    let leftovers = (
        conn.active_streams(),
        conn.buffered_bytes(),
        conn.pending_calls(),
        conn.poll_timeout(),
    );
    expect(
        leftovers == (0, 0, 0, None),
        &format!("a dead connection holds nothing (streams, bytes, calls, timer): {leftovers:?}"),
        w,
    )?;
    let flows = w.origins.flows_of(c);
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
    let mut c = s.add_connector(0, s.secret.clone())?;
    let conn = register(&mut s, &mut c)?;
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
    let mut client = Client::new(conn, requests, 8);
    serve(&mut s, &mut client, &mut c, Duration::from_secs(3600))?;
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
    let mut c = s.add_connector(0, s.secret.clone())?;
    let conn = register(&mut s, &mut c)?;
    let len = if p.quick {
        1024 * 1024
    } else {
        64 * 1024 * 1024
    };
    let seed = s.rng.next_u64();
    let mut client = Client::new(conn, vec![request(len, seed)], 1);
    serve(&mut s, &mut client, &mut c, Duration::from_secs(3600))?;
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
    s.data_limits.flows.set_limit(1);
    let mut c = s.add_connector(0, s.secret.clone())?;
    let conn = register(&mut s, &mut c)?;
    let len = if p.quick { 64 * 1024 } else { 1024 * 1024 };
    let requests = vec![Request::Tcp { len, seed: 1 }, Request::Tcp { len, seed: 2 }];
    let mut client = Client::new(conn, requests, 2);
    serve(&mut s, &mut client, &mut c, Duration::from_secs(600))?;
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

/// Graceful shutdown while requests are in flight: every one of them completes within the
/// grace period, the edge gets nothing new after unregistering, then the connection closes.
fn shutdown_during_traffic(p: &Params) -> Result<u64, String> {
    let mut s = setup(p);
    let mut c = s.add_connector(0, s.secret.clone())?;
    let conn = register(&mut s, &mut c)?;
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
    let mut client = Client::new(conn, requests, 8);
    // Let the requests start, then shut down.
    let w = &mut s.world;
    let start = w.after(Duration::from_millis(300));
    w.run_ticking(start, |w, h| {
        match &h {
            Some(Happening::Edge(e)) => {
                client.on_event(e)?;
            }
            Some(_) => {}
            None => client.tick(w)?,
        }
        Ok(false)
    })?;
    let in_flight = client.in_flight();
    expect(in_flight == 8, "requests in flight at shutdown", w)?;
    let now = w.instant();
    w.connectors[c]
        .1
        .as_mut()
        .ok_or("gone")?
        .shutdown(now)
        .map_err(|e| e.to_string())?;
    let (mut unregistered, mut closed_at) = (false, None);
    let limit = w.after(Duration::from_secs(40));
    w.run_ticking(limit, |w, h| {
        match &h {
            Some(Happening::Edge(EdgeEvent::Unregistered { .. })) => {
                unregistered = true;
                client.paused = true;
            }
            Some(Happening::Edge(e)) => {
                client.on_event(e)?;
            }
            Some(Happening::Connector(_, ConnectorEvent::Closed { .. })) => closed_at = Some(w.now),
            Some(_) => {}
            None => client.tick(w)?,
        }
        Ok(closed_at.is_some())
    })?;
    expect(unregistered, "edge saw unregisterConnection", w)?;
    expect(
        client.completed == 8,
        &format!(
            "all {in_flight} in-flight requests completed ({} did)\n{}origins: {:?}\nnet: {:?} at {:?}",
            client.completed,
            client.describe(),
            w.origins.stats,
            w.net.stats(),
            w.now.since_start()
        ),
        w,
    )?;
    let closed_at = closed_at.ok_or("connection never closed")?;
    expect(
        closed_at.since_start() < start.since_start() + Duration::from_secs(31),
        "closed within the grace period",
        w,
    )?;
    Ok(w.trace.hash())
}

/// The edge goes away; the connector's connection dies by idle timeout; a new edge comes up at
/// the same address and a new connection registers and serves again.
fn edge_restart(p: &Params) -> Result<u64, String> {
    let mut s = setup(p);
    let mut c = s.add_connector(0, s.secret.clone())?;
    let conn = register(&mut s, &mut c)?;
    let mut client = Client::new(conn, http_requests(&mut s.rng, 5, 64 * 1024), 4);
    serve(&mut s, &mut client, &mut c, Duration::from_secs(120))?;
    // The edge process dies: its state is gone.
    s.world.edge = None;
    let mut closed = false;
    let limit = s.world.after(Duration::from_secs(20));
    s.world.run_ticking(limit, |_, h| {
        if let Some(Happening::Connector(_, ConnectorEvent::Closed { .. })) = h {
            closed = true;
        }
        Ok(closed)
    })?;
    expect(closed, "connector notices the dead edge", &s.world)?;
    s.world.origins.drop_connector(c);
    s.world.connectors[c].1 = None;
    // A fresh edge at the same address, with a new identity the connectors are told to trust.
    let (server, client) = tls_pair();
    s.client = client;
    let mut seed = [0u8; 32];
    s.rng.fill_bytes(&mut seed);
    s.world.edge = Some(EdgeEndpoint::new(server, seed));
    // The supervisor's part: a new connection with the same index.
    let mut c2 = s.add_connector(0, s.secret.clone())?;
    let conn = register(&mut s, &mut c2)?;
    let mut client = Client::new(conn, http_requests(&mut s.rng, 5, 64 * 1024), 4);
    serve(&mut s, &mut client, &mut c2, Duration::from_secs(120))?;
    expect(client.completed == 5, "the new connection serves", &s.world)?;
    Ok(s.world.trace.hash())
}

/// Serves `client` on connector `c` and checks that it took at least `least` (whoever is slow
/// set the pace) while the connector's buffers stayed within the window bound.
fn paced(
    s: &mut Setup,
    mut c: usize,
    client: &mut Client,
    least: Duration,
    who: &str,
) -> Result<u64, String> {
    let start = s.world.now;
    let peak = serve(s, client, &mut c, Duration::from_secs(600))?;
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
    let mut c = s.add_connector(0, s.secret.clone())?;
    let conn = register(&mut s, &mut c)?;
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
    let mut client = Client::new(conn, requests, 4);
    // Each origin reads at its own pace, in parallel; the last write's pause comes after the
    // origin has answered, so allow one window.
    let least = Duration::from_secs_f64((size - 64 * 1024) as f64 / (256.0 * 1024.0));
    paced(&mut s, c, &mut client, least, "origin")
}

/// An eyeball that reads slowly: the origins are paused, not buffered.
fn slow_edge(p: &Params) -> Result<u64, String> {
    let mut s = setup(p);
    let mut c = s.add_connector(0, s.secret.clone())?;
    let conn = register(&mut s, &mut c)?;
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
    let mut client = Client::new(conn, requests, 4);
    // 4 KiB per 10 ms: 400 KiB/s across all streams.
    client.read_budget = Some(4096);
    let least = Duration::from_secs_f64((4 * size) as f64 / (400.0 * 1024.0)).mul_f64(0.95);
    paced(&mut s, c, &mut client, least, "eyeball")
}
