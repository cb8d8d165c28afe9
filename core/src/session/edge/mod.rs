//! The edge's side of UDP sessions and ICMP (PROTOCOL.md B§1, B§4): public client flows of
//! a self-hosted edge carried as datagram-v3 sessions through a tunnel.
//!
//! Sans-IO, in str0m's shape. The driver owns one public UDP socket per mapping and the QUIC
//! endpoint; it feeds client packets ([`EdgeSessions::handle_client`]) and the datagrams
//! connectors send ([`EdgeSessions::handle_datagram`], which answers with a [`Deliver`]
//! borrowing the payload), tells it which tunnel connections exist, and sends what
//! [`EdgeSessions::poll_datagram`] hands out.
//!
//! A UDP mapping ties a public socket to one destination in a tunnel's private network.
//! Each (mapping, client address) is one v3 session: a fresh 16-byte RequestId from a seeded
//! RNG, a `0x00` registration retransmitted with backoff until the `0x03` response, then
//! `0x01` payloads both ways. v3 has no close message (B§1.14), so the edge keeps its own idle
//! timer and hints the connector to a slightly longer one, so the connector never forgets a
//! session the edge still uses. When a session's connection closes it is registered again
//! on another connection of the tunnel, which cloudflared answers as a migration.
//!
//! One client flow is one session, for as long as the client is active: an unanswered
//! registration is retried (the backoff capped at [`EdgeSessionsConfig::max_retransmit`])
//! until it is answered, refused, or the client has been quiet for the idle timeout; it is
//! never given up while the client sends. Giving up could not tell the connector (v3 has no
//! close), which may well hold the session with only its answers lost: the client's next
//! packet would then open a second session, and a second origin socket, for the same flow,
//! the first one left to the connector's idle timer. Retrying the same RequestId is safe:
//! the connector answers a registration it already holds as such (B§1.9).
//!
//! Payloads that arrive before the registration is answered are held (bounded) and sent as
//! plain `0x01` once it is: stock cloudflared ignores a bundled payload and handles
//! registrations asynchronously, so a payload sent right behind one is dropped as
//! `write_flow_unknown` (B§1.9). [`EdgeSessionsConfig::bundle_first_payload`] bundles the
//! first payload into the registration instead, for connectors that deliver it (burrow's).
//!
//! A datagram-v2 connection (a connector without `support_datagram_v3_2`) carries sessions
//! too, as Cloudflare's edge does for v2 connectors (PROTOCOL.md B§2): the registration is a
//! `registerUdpSession` call on an RPC stream the edge opens ([`Call::Register`], answered
//! with [`EdgeSessions::handle_registered`]), payloads are suffix-typed v2 datagrams, and a
//! session ends by an `unregisterUdpSession` call either way ([`Call::Unregister`] when the
//! edge's idle timer ends it, [`EdgeSessions::handle_unregistered`] when the connector's
//! does). A call is reliable while its connection lives, so it is not retransmitted; one that
//! could not be made is tried again after the backoff ([`EdgeSessions::call_failed`]).
//!
//! An ICMP mapping carries raw IP packets (echo requests with their IP header) as `0x02`
//! datagrams; replies and errors go back to the client that last sent a request with the same
//! (source, destination, echo id), from a small table with idle expiry (`echo`).

mod echo;
#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use fnv::FnvBuildHasher;
use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tracing::debug;
use uuid::Uuid;

use crate::datagram::{v2, v3};
use crate::session::{DatagramVersion, SessionId};
use crate::tunnel::edge::ConnId;
use echo::EchoTable;

/// Default edge-side idle timeout of a UDP session (Linux conntrack's for a UDP stream).
pub const DEFAULT_IDLE: Duration = Duration::from_secs(120);
/// Seconds added to the idle timeout in the hint sent to the connector, so that the connector,
/// which cannot tell the edge it closed a session, always outlives the edge's view of it.
pub const IDLE_HINT_MARGIN_SECS: u64 = 10;
/// Default first registration retransmission delay; it doubles on each retry.
pub const DEFAULT_RETRANSMIT: Duration = Duration::from_millis(250);
/// Default cap of the registration retransmission delay: a registration is a few dozen bytes,
/// and a client (a DNS resolver, say) gives up within seconds, so retries stay frequent.
pub const DEFAULT_MAX_RETRANSMIT: Duration = Duration::from_secs(2);
/// Default idle expiry of an ICMP echo table entry.
pub const DEFAULT_ICMP_IDLE: Duration = Duration::from_secs(30);
/// A v2 registration call under way has no retransmission timer: this far away stands for
/// none (the idle timer comes first).
const CALL_PENDING: Duration = Duration::from_secs(365 * 24 * 3600);
/// Room kept in the reusable output buffer; it is refilled in blocks of this size.
const OUT_BLOCK: usize = 64 * 1024;

/// One public mapping, as the caller numbered it by adding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MappingId(pub u32);

impl std::fmt::Display for MappingId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "map#{}", self.0)
    }
}

/// What a mapping carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MappingKind {
    /// UDP payloads to `dest` in the tunnel's private network.
    Udp {
        /// Destination of every session of this mapping.
        dest: SocketAddr,
    },
    /// Raw IP packets (ICMP echo requests) in, ICMP replies and errors out.
    Icmp,
}

/// Bounds and timers.
#[derive(Debug, Clone, Copy)]
pub struct EdgeSessionsConfig {
    /// A session with no traffic either way for this long ends (at least 1 s is used).
    pub idle_timeout: Duration,
    /// First registration retransmission delay; doubles each time.
    pub retransmit: Duration,
    /// Longest registration retransmission delay (the doubling stops there). An unanswered
    /// registration is retried until the session idles out, never given up before.
    pub max_retransmit: Duration,
    /// Payloads held per session while its registration is unanswered.
    pub max_pending: usize,
    /// Most UDP sessions at once; new client flows beyond it are dropped.
    pub max_sessions: usize,
    /// Bundle a new session's first payload into its registration (and its retransmissions)
    /// instead of holding it until the answer. Only for connectors that deliver bundled
    /// payloads; stock cloudflared ignores them.
    pub bundle_first_payload: bool,
    /// An ICMP echo table entry with no request or reply for this long is forgotten.
    pub icmp_idle: Duration,
    /// Most ICMP echo table entries.
    pub max_echo_entries: usize,
}

impl Default for EdgeSessionsConfig {
    fn default() -> Self {
        Self {
            idle_timeout: DEFAULT_IDLE,
            retransmit: DEFAULT_RETRANSMIT,
            max_retransmit: DEFAULT_MAX_RETRANSMIT,
            max_pending: 16,
            max_sessions: 65536,
            bundle_first_payload: false,
            icmp_idle: DEFAULT_ICMP_IDLE,
            max_echo_entries: 4096,
        }
    }
}

/// A packet the driver must send to a public client from the mapping's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deliver<'a> {
    /// Whose socket sends it.
    pub mapping: MappingId,
    /// Where it goes.
    pub client: SocketAddr,
    /// A UDP payload, or a whole IP packet for an ICMP mapping; borrowed from the datagram.
    pub payload: &'a [u8],
}

/// An RPC call on a datagram-v2 connection the edge machine must make (PROTOCOL.md B§2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `registerUdpSession`: answered with [`EdgeSessions::handle_registered`]; if it cannot
    /// be made, report [`EdgeSessions::call_failed`].
    Register {
        /// The connection to call on.
        conn: ConnId,
        /// The session.
        id: SessionId,
        /// Its destination.
        dest: SocketAddr,
        /// `closeAfterIdleHint`.
        idle_hint: Duration,
    },
    /// `unregisterUdpSession`: the edge ended the session (its outcome changes nothing).
    Unregister {
        /// The connection to call on.
        conn: ConnId,
        /// The session.
        id: SessionId,
        /// Why, for the connector's log.
        message: String,
    },
}

/// What happened to a UDP session (one client flow on a UDP mapping), for the driver's logs
/// and for whoever watches the clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEvent {
    /// Its RequestId.
    pub id: SessionId,
    /// The mapping the client sends to.
    pub mapping: MappingId,
    /// The client.
    pub client: SocketAddr,
    /// What happened.
    pub change: SessionChange,
}

/// See [`SessionEvent`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionChange {
    /// The client's first packet opened it; its registration goes out on `conn`.
    Opened {
        /// Where it registers.
        conn: ConnId,
        /// The mapping's destination.
        dest: SocketAddr,
    },
    /// The connector took its registration on `conn` (answered OK, or sent a payload).
    Registered {
        /// Which connection.
        conn: ConnId,
    },
    /// It registers again on `to`: its connection `from` went away, or (`None`) it was
    /// waiting for one.
    Migrated {
        /// The connection it left.
        from: Option<ConnId>,
        /// Where it registers now.
        to: ConnId,
    },
    /// Its connection went away and no other of the tunnel can carry it: it waits for one,
    /// holding what the client sends meanwhile (bounded).
    Waiting {
        /// The connection it left.
        from: ConnId,
    },
    /// It ended; nothing more comes for it (the client's next packet opens a new one).
    Ended(SessionEnd),
}

/// Why a UDP session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// The connector refused it.
    Refused {
        /// Its answer.
        code: v3::ResponseCode,
        /// Its words.
        message: String,
    },
    /// The connector answered a datagram-v2 `registerUdpSession` with an error.
    RefusedV2 {
        /// Its words.
        message: String,
    },
    /// The connector ended it (datagram v2's `unregisterUdpSession`: it idled out there).
    ClosedByConnector {
        /// Its words (cloudflared: `session idle for 3s`).
        message: String,
    },
    /// Nothing crossed it either way for the idle timeout.
    Idle,
}

/// Why a client packet or a connector datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EdgeDrop {
    /// The caller named a mapping it never added.
    UnknownMapping,
    /// The mapping's tunnel has no connection that can carry it.
    NoConnection,
    /// Client payload over the 1280-byte v3 limit (or an unframeable ICMP packet).
    TooLarge,
    /// The session table is full.
    SessionsFull,
    /// Held payloads of an unanswered registration are at their bound.
    PendingFull,
    /// Held for a registration that was refused or never answered.
    Unregistered,
    /// ICMP mapping packet that is not an IP packet carrying an ICMP echo request.
    NotEcho,
    /// The ICMP echo table is full.
    EchoTableFull,
    /// ICMP from the connector that matches no client.
    EchoUnmatched,
    /// A connector datagram that does not decode.
    Malformed,
    /// A datagram type the edge never receives (registrations, spans).
    UnexpectedType,
    /// Payload or response for a session the edge does not have (or no longer on that link).
    UnknownSession,
    /// A datagram from a connection the caller never added.
    UnknownConnection,
    /// The QUIC connection refused the datagram (reported by the driver).
    SendFailed,
}

impl EdgeDrop {
    /// Every reason, in counter order.
    pub const ALL: [EdgeDrop; 14] = [
        Self::UnknownMapping,
        Self::NoConnection,
        Self::TooLarge,
        Self::SessionsFull,
        Self::PendingFull,
        Self::Unregistered,
        Self::NotEcho,
        Self::EchoTableFull,
        Self::EchoUnmatched,
        Self::Malformed,
        Self::UnexpectedType,
        Self::UnknownSession,
        Self::UnknownConnection,
        Self::SendFailed,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::UnknownMapping => "unknown_mapping",
            Self::NoConnection => "no_connection",
            Self::TooLarge => "too_large",
            Self::SessionsFull => "sessions_full",
            Self::PendingFull => "pending_full",
            Self::Unregistered => "unregistered",
            Self::NotEcho => "not_echo",
            Self::EchoTableFull => "echo_table_full",
            Self::EchoUnmatched => "echo_unmatched",
            Self::Malformed => "malformed",
            Self::UnexpectedType => "unexpected_type",
            Self::UnknownSession => "unknown_session",
            Self::UnknownConnection => "unknown_connection",
            Self::SendFailed => "send_failed",
        }
    }
}

impl std::fmt::Display for EdgeDrop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// Counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EdgeSessionStats {
    /// Sessions started (a client's first packet on a mapping).
    pub opened: u64,
    /// Registrations answered OK (first answer per registration round).
    pub registered: u64,
    /// Registration datagrams sent again after no answer.
    pub retransmits: u64,
    /// Registrations sent again for a registered v3 session whose client kept sending while
    /// nothing came back from the tunnel for [`EdgeSessions::refresh_after`].
    pub refreshes: u64,
    /// Sessions refused with `TooManyActiveFlows`.
    pub refused_too_many_flows: u64,
    /// Sessions refused with `UnableToBindSocket`.
    pub refused_bind: u64,
    /// Sessions refused with any other code.
    pub refused_other: u64,
    /// Sessions ended by the idle timer.
    pub idle_closed: u64,
    /// Sessions registered again on another connection after theirs closed.
    pub migrated: u64,
    /// UDP payloads sent into the tunnel (bundled ones included).
    pub payloads_out: u64,
    /// UDP payloads delivered to clients.
    pub payloads_in: u64,
    /// ICMP packets sent into the tunnel.
    pub icmp_out: u64,
    /// ICMP packets delivered to clients.
    pub icmp_in: u64,
    /// Drops by [`EdgeDrop::ALL`] order.
    pub dropped: [u64; 14],
}

impl EdgeSessionStats {
    /// Drops counted for `reason`.
    pub fn dropped(&self, reason: EdgeDrop) -> u64 {
        self.dropped[reason as usize]
    }
}

#[derive(Debug)]
struct Mapping {
    tunnel: Uuid,
    kind: MappingKind,
}

#[derive(Debug, Clone, Copy)]
struct ConnInfo {
    tunnel: Uuid,
    version: DatagramVersion,
}

#[derive(Debug)]
enum State {
    /// Registration sent on the session's connection, unanswered.
    Registering {
        /// Registrations sent this round.
        sent: u32,
        /// When to send it again.
        retry_at: Instant,
        /// The v3 registration as sent (with the bundled payload on the first round); empty
        /// on a v2 connection, which registers by a call.
        datagram: Bytes,
        /// Client payloads waiting for the answer (framed when sent, for the connection's
        /// datagram version then).
        pending: VecDeque<Bytes>,
    },
    /// Answered OK: payloads flow.
    Registered,
    /// No connection of the tunnel can carry it; waits (held payloads) for one.
    Orphaned {
        /// Client payloads waiting for a connection.
        pending: VecDeque<Bytes>,
    },
}

#[derive(Debug)]
struct Session {
    mapping: MappingId,
    client: SocketAddr,
    tunnel: Uuid,
    dest: SocketAddr,
    conn: Option<ConnId>,
    last_active: Instant,
    /// When the tunnel last showed the session alive (a payload from it, an answer) or was
    /// last asked to (a refresh).
    tunnel_seen: Instant,
    state: State,
}

impl Session {
    fn deadline(&self, (idle, refresh): (Duration, Duration)) -> Instant {
        let idle_at = self.last_active + idle;
        match self.state {
            State::Registering { retry_at, .. } => retry_at.min(idle_at),
            State::Registered => (self.tunnel_seen + refresh).min(idle_at),
            State::Orphaned { .. } => idle_at,
        }
    }
}

type Map<K, V> = HashMap<K, V, FnvBuildHasher>;

/// Every public UDP session and ICMP flow of the edge.
#[derive(Debug)]
pub struct EdgeSessions {
    config: EdgeSessionsConfig,
    rng: ChaCha8Rng,
    mappings: Vec<Mapping>,
    conns: BTreeMap<ConnId, ConnInfo>,
    /// Connections per tunnel, in the order they were added.
    tunnels: Map<Uuid, Vec<ConnId>>,
    /// Spreads new sessions over a tunnel's connections.
    rr: usize,
    sessions: Map<SessionId, Session>,
    by_client: Map<(MappingId, SocketAddr), SessionId>,
    /// Deadlines, checked lazily as in the connector's manager: early or stale entries are
    /// fixed when they come up, so activity costs no heap work.
    deadlines: BinaryHeap<Reverse<(Instant, SessionId)>>,
    echo: EchoTable,
    out: BytesMut,
    queue: VecDeque<(ConnId, Bytes)>,
    /// Calls on v2 connections, until [`EdgeSessions::poll_call`] takes them.
    calls: VecDeque<Call>,
    stats: EdgeSessionStats,
    /// What happened to sessions, until [`EdgeSessions::poll_event`] takes it (drained
    /// after every input by the edge machine).
    events: VecDeque<SessionEvent>,
}

impl EdgeSessions {
    /// An empty table; `rng_seed` seeds the RequestId generator.
    pub fn new(config: EdgeSessionsConfig, rng_seed: [u8; 32]) -> Self {
        let config = EdgeSessionsConfig {
            idle_timeout: config.idle_timeout.max(Duration::from_secs(1)),
            ..config
        };
        Self {
            echo: EchoTable::new(config.icmp_idle, config.max_echo_entries),
            config,
            rng: ChaCha8Rng::from_seed(rng_seed),
            mappings: Vec::new(),
            conns: BTreeMap::new(),
            tunnels: Map::default(),
            rr: 0,
            sessions: Map::default(),
            by_client: Map::default(),
            deadlines: BinaryHeap::new(),
            out: BytesMut::new(),
            queue: VecDeque::new(),
            calls: VecDeque::new(),
            stats: EdgeSessionStats::default(),
            events: VecDeque::new(),
        }
    }

    /// The configuration in force (idle clamped).
    pub fn config(&self) -> &EdgeSessionsConfig {
        &self.config
    }

    /// Adds a public mapping into `tunnel`.
    pub fn add_mapping(&mut self, tunnel: Uuid, kind: MappingKind) -> MappingId {
        let id = MappingId(u32::try_from(self.mappings.len()).unwrap_or(u32::MAX));
        self.mappings.push(Mapping { tunnel, kind });
        id
    }

    /// The counters.
    pub fn stats(&self) -> &EdgeSessionStats {
        &self.stats
    }

    /// UDP sessions alive (registering, registered or waiting for a connection).
    pub fn active_sessions(&self) -> usize {
        self.sessions.len()
    }

    /// ICMP echo table entries.
    pub fn echo_entries(&self) -> usize {
        self.echo.len()
    }

    /// The session of a client flow.
    pub fn session_of(&self, mapping: MappingId, client: SocketAddr) -> Option<SessionId> {
        self.by_client.get(&(mapping, client)).copied()
    }

    /// The connection a session is on.
    pub fn connection_of(&self, id: SessionId) -> Option<ConnId> {
        self.sessions.get(&id)?.conn
    }

    /// A registered tunnel connection; its datagram version comes from its features
    /// ([`DatagramVersion::from_features`]). Sessions of the tunnel waiting for a connection
    /// register on it.
    pub fn add_connection(
        &mut self,
        now: Instant,
        conn: ConnId,
        tunnel: Uuid,
        version: DatagramVersion,
    ) {
        if self
            .conns
            .insert(conn, ConnInfo { tunnel, version })
            .is_none()
        {
            self.tunnels.entry(tunnel).or_default().push(conn);
        }
        let orphans: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.tunnel == tunnel && s.conn.is_none())
            .map(|(&id, _)| id)
            .collect();
        for id in orphans {
            self.event(
                id,
                SessionChange::Migrated {
                    from: None,
                    to: conn,
                },
            );
            self.register_on(now, id, conn);
        }
    }

    /// A tunnel connection is gone (closed, or unregistered: no new traffic). Its sessions
    /// register again on another connection of the tunnel, or wait for one.
    pub fn remove_connection(&mut self, now: Instant, conn: ConnId) {
        let Some(info) = self.conns.remove(&conn) else {
            return;
        };
        if let Some(list) = self.tunnels.get_mut(&info.tunnel) {
            list.retain(|c| *c != conn);
        }
        let moved: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.conn == Some(conn))
            .map(|(&id, _)| id)
            .collect();
        for id in moved {
            match self.pick(info.tunnel) {
                Some(next) => {
                    self.stats.migrated += 1;
                    self.event(
                        id,
                        SessionChange::Migrated {
                            from: Some(conn),
                            to: next,
                        },
                    );
                    self.register_on(now, id, next);
                }
                None => {
                    self.event(id, SessionChange::Waiting { from: conn });
                    self.orphan(id);
                }
            }
        }
    }

    /// A packet from `client` on `mapping`'s public socket: a UDP payload, or an IP packet
    /// for an ICMP mapping. What must go into the tunnel comes out of
    /// [`EdgeSessions::poll_datagram`].
    pub fn handle_client(
        &mut self,
        now: Instant,
        mapping: MappingId,
        client: SocketAddr,
        payload: &[u8],
    ) -> Result<(), EdgeDrop> {
        let Some(m) = self.mappings.get(mapping.0 as usize) else {
            return Err(self.count(EdgeDrop::UnknownMapping));
        };
        let tunnel = m.tunnel;
        match m.kind {
            MappingKind::Udp { dest } => {
                self.udp_from_client(now, mapping, tunnel, dest, client, payload)
            }
            MappingKind::Icmp => self.icmp_from_client(now, mapping, tunnel, client, payload),
        }
    }

    fn udp_from_client(
        &mut self,
        now: Instant,
        mapping: MappingId,
        tunnel: Uuid,
        dest: SocketAddr,
        client: SocketAddr,
        payload: &[u8],
    ) -> Result<(), EdgeDrop> {
        if payload.len() > v3::MAX_PAYLOAD_LEN {
            return Err(self.count(EdgeDrop::TooLarge));
        }
        if let Some(&id) = self.by_client.get(&(mapping, client)) {
            let max_pending = self.config.max_pending;
            let Some(s) = self.sessions.get_mut(&id) else {
                return Err(self.count(EdgeDrop::UnknownSession));
            };
            s.last_active = now;
            return match &mut s.state {
                State::Registered => match s.conn {
                    Some(conn) => {
                        let datagram = self.frame_payload(conn, id, payload);
                        self.stats.payloads_out += 1;
                        self.queue.push_back((conn, datagram));
                        Ok(())
                    }
                    // Unreachable: a session without a connection is orphaned, not registered.
                    None => Err(self.count(EdgeDrop::NoConnection)),
                },
                State::Registering { pending, .. } | State::Orphaned { pending }
                    if pending.len() < max_pending =>
                {
                    pending.push_back(Bytes::copy_from_slice(payload));
                    Ok(())
                }
                _ => Err(self.count(EdgeDrop::PendingFull)),
            };
        }
        let Some(conn) = self.pick(tunnel) else {
            return Err(self.count(EdgeDrop::NoConnection));
        };
        if self.sessions.len() >= self.config.max_sessions {
            return Err(self.count(EdgeDrop::SessionsFull));
        }
        let id = loop {
            let id =
                SessionId(u128::from(self.rng.next_u64()) << 64 | u128::from(self.rng.next_u64()));
            if !self.sessions.contains_key(&id) {
                break id;
            }
        };
        self.stats.opened += 1;
        let mut pending = VecDeque::new();
        let v3 = self.version(conn) == Some(DatagramVersion::V3);
        let bundled = if self.config.bundle_first_payload && v3 {
            payload
        } else {
            pending.push_back(Bytes::copy_from_slice(payload));
            &[]
        };
        let datagram = if v3 {
            self.frame_registration(id, dest, bundled)
        } else {
            Bytes::new()
        };
        self.stats.payloads_out += u64::from(!bundled.is_empty());
        self.sessions.insert(
            id,
            Session {
                mapping,
                client,
                tunnel,
                dest,
                conn: Some(conn),
                last_active: now,
                tunnel_seen: now,
                state: State::Registering {
                    sent: 0,
                    retry_at: now,
                    datagram,
                    pending,
                },
            },
        );
        self.by_client.insert((mapping, client), id);
        self.event(id, SessionChange::Opened { conn, dest });
        self.send_registration(now, id);
        Ok(())
    }

    fn icmp_from_client(
        &mut self,
        now: Instant,
        mapping: MappingId,
        tunnel: Uuid,
        client: SocketAddr,
        packet: &[u8],
    ) -> Result<(), EdgeDrop> {
        let Some(conn) = self.tunnels.get(&tunnel).and_then(|l| l.first()).copied() else {
            return Err(self.count(EdgeDrop::NoConnection));
        };
        let version = self.conns.get(&conn).map(|c| c.version);
        if let Err(reason) = self.echo.request(now, tunnel, mapping, client, packet) {
            return Err(self.count(reason));
        }
        let framed = match version {
            Some(DatagramVersion::V3) => {
                self.reserve(1 + packet.len());
                self.out.put_u8(v3::DatagramType::Icmp as u8);
                self.out.put_slice(packet);
                v3::Icmp::decode(&self.out).is_ok()
            }
            _ => {
                self.reserve(packet.len() + 1);
                self.out.put_slice(packet);
                self.out.put_u8(v2::DatagramType::Ip as u8);
                v2::decode(&self.out).is_ok()
            }
        };
        let datagram = self.out.split().freeze();
        if !framed {
            return Err(self.count(EdgeDrop::TooLarge));
        }
        self.stats.icmp_out += 1;
        self.queue.push_back((conn, datagram));
        Ok(())
    }

    /// A QUIC datagram the connector sent on `conn`. A payload or ICMP packet for a client
    /// comes back borrowed from `datagram`; anything else is taken (answers, drops).
    pub fn handle_datagram<'a>(
        &mut self,
        now: Instant,
        conn: ConnId,
        datagram: &'a [u8],
    ) -> Option<Deliver<'a>> {
        let Some(info) = self.conns.get(&conn).copied() else {
            self.count(EdgeDrop::UnknownConnection);
            return None;
        };
        match info.version {
            DatagramVersion::V3 => match v3::decode(datagram) {
                Ok(v3::Datagram::Payload(p)) => {
                    self.payload_from_tunnel(now, conn, p.request_id, p.payload)
                }
                Ok(v3::Datagram::RegistrationResponse(r)) => {
                    self.response(now, conn, r);
                    None
                }
                Ok(v3::Datagram::Icmp(i)) => self.icmp_from_tunnel(now, info.tunnel, i.packet),
                Ok(v3::Datagram::Registration(_)) => {
                    self.count(EdgeDrop::UnexpectedType);
                    None
                }
                Err(e) => {
                    debug!(conn = conn.0, error = %e, "dropping malformed datagram");
                    self.count(EdgeDrop::Malformed);
                    None
                }
            },
            DatagramVersion::V2 => match v2::decode(datagram) {
                Ok(v2::Datagram::Ip { packet } | v2::Datagram::IpWithTrace { packet, .. }) => {
                    self.icmp_from_tunnel(now, info.tunnel, packet)
                }
                Ok(v2::Datagram::Udp {
                    session_id,
                    payload,
                }) => self.payload_from_tunnel(now, conn, SessionId(session_id.as_u128()), payload),
                // Spans are not expected.
                Ok(_) => {
                    self.count(EdgeDrop::UnexpectedType);
                    None
                }
                Err(e) => {
                    debug!(conn = conn.0, error = %e, "dropping malformed datagram");
                    self.count(EdgeDrop::Malformed);
                    None
                }
            },
        }
    }

    fn payload_from_tunnel<'a>(
        &mut self,
        now: Instant,
        conn: ConnId,
        id: SessionId,
        payload: &'a [u8],
    ) -> Option<Deliver<'a>> {
        let Some(s) = self.sessions.get_mut(&id) else {
            self.count(EdgeDrop::UnknownSession);
            return None;
        };
        // cloudflared sends from whichever connection the session is on; accept any of the
        // tunnel's, as it does for the other direction.
        if self.conns.get(&conn).map(|c| c.tunnel) != Some(s.tunnel) {
            self.count(EdgeDrop::UnknownSession);
            return None;
        }
        (s.last_active, s.tunnel_seen) = (now, now);
        let (mapping, client) = (s.mapping, s.client);
        // A payload proves the registration was taken even if its answer was lost.
        if matches!(s.state, State::Registering { .. }) && s.conn == Some(conn) {
            self.registered(id);
        }
        self.stats.payloads_in += 1;
        Some(Deliver {
            mapping,
            client,
            payload,
        })
    }

    fn response(&mut self, now: Instant, conn: ConnId, r: v3::RegistrationResponse<'_>) {
        let Some(s) = self.sessions.get_mut(&r.request_id) else {
            self.count(EdgeDrop::UnknownSession);
            return;
        };
        if s.conn != Some(conn) {
            // An answer from a connection the session has left; the current one will answer.
            debug!(flow_id = %r.request_id, conn = conn.0, "stale registration response");
            return;
        }
        match r.code {
            // An answer is no traffic: a quiet client's session moved by connection churn
            // still ends `idle` after its last payload. It does show the connector holds it.
            v3::ResponseCode::Ok => {
                s.tunnel_seen = now;
                if matches!(s.state, State::Registering { .. }) {
                    self.registered(r.request_id);
                }
            }
            code => {
                match code {
                    v3::ResponseCode::TooManyActiveFlows => self.stats.refused_too_many_flows += 1,
                    v3::ResponseCode::UnableToBindSocket => self.stats.refused_bind += 1,
                    _ => self.stats.refused_other += 1,
                }
                let message = r.error_msg.to_owned();
                self.end(r.request_id, SessionEnd::Refused { code, message });
            }
        }
    }

    /// Marks a registering session registered and sends what it held.
    fn registered(&mut self, id: SessionId) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let State::Registering { pending, .. } = std::mem::replace(&mut s.state, State::Registered)
        else {
            return;
        };
        self.stats.registered += 1;
        if let Some(conn) = s.conn {
            self.stats.payloads_out += pending.len() as u64;
            for payload in pending {
                let datagram = self.frame_payload(conn, id, &payload);
                self.queue.push_back((conn, datagram));
            }
            self.event(id, SessionChange::Registered { conn });
        }
    }

    fn icmp_from_tunnel<'a>(
        &mut self,
        now: Instant,
        tunnel: Uuid,
        packet: &'a [u8],
    ) -> Option<Deliver<'a>> {
        match self.echo.reply(now, tunnel, packet) {
            Ok((mapping, client)) => {
                self.stats.icmp_in += 1;
                Some(Deliver {
                    mapping,
                    client,
                    payload: packet,
                })
            }
            Err(reason) => {
                self.count(reason);
                None
            }
        }
    }

    /// The next datagram to send, with the connection it goes on.
    pub fn poll_datagram(&mut self) -> Option<(ConnId, Bytes)> {
        self.queue.pop_front()
    }

    /// The next call to make on a datagram-v2 connection.
    pub fn poll_call(&mut self) -> Option<Call> {
        self.calls.pop_front()
    }

    /// The connector answered [`Call::Register`] for session `id` on `conn` (an error is its
    /// refusal; pass none that only says the connection closed: the session moves then).
    pub fn handle_registered(&mut self, conn: ConnId, id: SessionId, result: Result<(), String>) {
        let Some(s) = self.sessions.get_mut(&id) else {
            self.count(EdgeDrop::UnknownSession);
            return;
        };
        if s.conn != Some(conn) || !matches!(s.state, State::Registering { .. }) {
            // An answer from a connection the session has left, or a late second one.
            return;
        }
        match result {
            Ok(()) => self.registered(id),
            Err(message) => {
                self.stats.refused_other += 1;
                self.end(id, SessionEnd::RefusedV2 { message });
            }
        }
    }

    /// The connector ended session `id` on `conn` (`unregisterUdpSession`, datagram v2).
    pub fn handle_unregistered(&mut self, conn: ConnId, id: SessionId, message: String) {
        match self.sessions.get(&id) {
            Some(s) if s.conn == Some(conn) => {
                self.end(id, SessionEnd::ClosedByConnector { message })
            }
            Some(_) => {}
            None => {
                self.count(EdgeDrop::UnknownSession);
            }
        }
    }

    /// [`Call::Register`] for session `id` could not be made on `conn`: it is made again
    /// after the backoff.
    pub fn call_failed(&mut self, now: Instant, conn: ConnId, id: SessionId) {
        let (base, cap) = (self.config.retransmit, self.config.max_retransmit);
        let timers = self.timers();
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        if s.conn != Some(conn) {
            return;
        }
        if let State::Registering { sent, retry_at, .. } = &mut s.state {
            *retry_at = now
                + base
                    .saturating_mul(1u32 << (*sent).min(16))
                    .min(cap.max(base));
            let due = s.deadline(timers);
            self.deadlines.push(Reverse((due, id)));
        }
    }

    /// The connection refused `datagram`, which this module handed out (counted as
    /// [`EdgeDrop::SendFailed`]). A registration that never left is no unanswered attempt:
    /// it goes again after the first retransmission delay, its backoff not doubled (a full
    /// queue on a congested connection must not push a session's registration seconds away).
    /// A refresh that never left goes again after that delay too.
    pub fn send_failed(&mut self, now: Instant, conn: ConnId, datagram: &[u8]) {
        debug!(conn = conn.0, "connection refused a datagram");
        self.count(EdgeDrop::SendFailed);
        let Ok(v3::Datagram::Registration(r)) = v3::decode(datagram) else {
            return;
        };
        let base = self.config.retransmit;
        let timers @ (_, refresh) = self.timers();
        let Some(s) = self.sessions.get_mut(&r.request_id) else {
            return;
        };
        if s.conn != Some(conn) {
            return;
        }
        match &mut s.state {
            State::Registering { sent, retry_at, .. } => {
                *sent = sent.saturating_sub(1);
                *retry_at = now + base;
            }
            State::Registered => s.tunnel_seen = (now + base).checked_sub(refresh).unwrap_or(now),
            State::Orphaned { .. } => return,
        }
        let due = s.deadline(timers);
        self.deadlines.push(Reverse((due, r.request_id)));
    }

    /// When [`EdgeSessions::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let sessions = self.deadlines.peek().map(|Reverse((at, _))| *at);
        [sessions, self.echo.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Retransmits registrations, ends idle sessions and forgets idle echo entries.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.echo.handle_timeout(now);
        let timers @ (idle, refresh) = self.timers();
        while let Some(&Reverse((at, id))) = self.deadlines.peek() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            let Some(s) = self.sessions.get(&id) else {
                continue;
            };
            if s.last_active + idle <= now {
                self.stats.idle_closed += 1;
                // A v2 connector is told (v3 has no close: its own timer, on the longer
                // hint, ends the session there).
                let v2 = s
                    .conn
                    .filter(|c| self.version(*c) == Some(DatagramVersion::V2));
                if let Some(conn) = v2 {
                    self.calls.push_back(Call::Unregister {
                        conn,
                        id,
                        message: format!("session idle for {}", crate::session::go_duration(idle)),
                    });
                }
                self.end(id, SessionEnd::Idle);
                continue;
            }
            match s.state {
                State::Registering { retry_at, .. } if retry_at <= now => {
                    self.send_registration(now, id)
                }
                State::Registered if s.tunnel_seen + refresh <= now => self.refresh(now, id),
                _ => {
                    let due = s.deadline(timers);
                    self.deadlines.push(Reverse((due, id)));
                }
            }
        }
        // Entries pile up: of sessions that ended early (a flood), and several per live
        // session (each registration retry or refused send adds one, and a stale one popped
        // early is pushed again). Keeping those of live sessions removed nothing then, and
        // every call paid for the whole heap: compact to one entry per live session, its
        // current deadline, so the next compaction is at least 64 pushes away.
        if self.deadlines.len() > 2 * self.sessions.len() + 64 {
            self.deadlines = self
                .sessions
                .iter()
                .map(|(id, s)| Reverse((s.deadline(timers), *id)))
                .collect();
        }
    }

    /// Sends (or re-sends) a registering session's registration.
    fn send_registration(&mut self, now: Instant, id: SessionId) {
        let (base, cap) = (self.config.retransmit, self.config.max_retransmit);
        let timers = self.timers();
        let idle_hint = self.hint();
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let State::Registering {
            sent,
            retry_at,
            datagram,
            ..
        } = &mut s.state
        else {
            return;
        };
        let Some(conn) = s.conn else { return };
        if *sent > 0 {
            self.stats.retransmits += 1;
        }
        let backoff = base
            .saturating_mul(1u32 << (*sent).min(16))
            .min(cap.max(base));
        *sent = sent.saturating_add(1);
        if datagram.is_empty() {
            // A v2 connection: one call, answered or failed ([`EdgeSessions::call_failed`]
            // brings the timer back); none of ours re-sends it meanwhile.
            *retry_at = now + CALL_PENDING;
            self.calls.push_back(Call::Register {
                conn,
                id,
                dest: s.dest,
                idle_hint,
            });
        } else {
            *retry_at = now + backoff;
            self.queue.push_back((conn, datagram.clone()));
        }
        let due = s.deadline(timers);
        self.deadlines.push(Reverse((due, id)));
    }

    /// Registers a live session afresh on `conn` (migration or a connection coming back).
    fn register_on(&mut self, now: Instant, id: SessionId, conn: ConnId) {
        let Some(s) = self.sessions.get(&id) else {
            return;
        };
        let dest = s.dest;
        // Never bundled: the connector may still hold the session and would drop it.
        let datagram = if self.version(conn) == Some(DatagramVersion::V3) {
            self.frame_registration(id, dest, &[])
        } else {
            Bytes::new()
        };
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let pending = match std::mem::replace(&mut s.state, State::Registered) {
            State::Registering { pending, .. } | State::Orphaned { pending } => pending,
            State::Registered => VecDeque::new(),
        };
        s.conn = Some(conn);
        s.state = State::Registering {
            sent: 0,
            retry_at: now,
            datagram,
            pending,
        };
        self.send_registration(now, id);
    }

    fn orphan(&mut self, id: SessionId) {
        let timers = self.timers();
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let pending = match std::mem::replace(&mut s.state, State::Registered) {
            State::Registering { pending, .. } | State::Orphaned { pending } => pending,
            State::Registered => VecDeque::new(),
        };
        s.conn = None;
        s.state = State::Orphaned { pending };
        let due = s.deadline(timers);
        self.deadlines.push(Reverse((due, id)));
    }

    fn end(&mut self, id: SessionId, why: SessionEnd) {
        let Some(s) = self.sessions.remove(&id) else {
            return;
        };
        self.by_client.remove(&(s.mapping, s.client));
        if let State::Registering { pending, .. } | State::Orphaned { pending } = s.state {
            self.stats.dropped[EdgeDrop::Unregistered as usize] += pending.len() as u64;
        }
        self.events.push_back(SessionEvent {
            id,
            mapping: s.mapping,
            client: s.client,
            change: SessionChange::Ended(why),
        });
    }

    /// Reports `change` of live session `id`.
    fn event(&mut self, id: SessionId, change: SessionChange) {
        if let Some(s) = self.sessions.get(&id) {
            self.events.push_back(SessionEvent {
                id,
                mapping: s.mapping,
                client: s.client,
                change,
            });
        }
    }

    /// The next thing that happened to a session.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// A connection of `tunnel`, round robin.
    fn pick(&mut self, tunnel: Uuid) -> Option<ConnId> {
        let list = self.tunnels.get(&tunnel).filter(|l| !l.is_empty())?;
        self.rr = self.rr.wrapping_add(1);
        list.get(self.rr % list.len()).copied()
    }

    /// The datagram version of connection `conn`.
    fn version(&self, conn: ConnId) -> Option<DatagramVersion> {
        self.conns.get(&conn).map(|c| c.version)
    }

    /// The idle timeout hinted to the connector.
    fn hint(&self) -> Duration {
        self.config.idle_timeout + Duration::from_secs(IDLE_HINT_MARGIN_SECS)
    }

    /// How long a registered v3 session's client may send with nothing coming back from the
    /// tunnel before its registration is sent again: a quarter of the connector's idle timeout
    /// (the hint), so a few refreshes may be lost before that timer runs out. v3 has
    /// no close, so a connector that idled a session out (every payload to it refused or lost
    /// on an overloaded connection, or an origin that never answers) drops the client's later
    /// payloads unseen; a repeated registration restarts its timer, or opens the flow again,
    /// as cloudflared does (`ResetIdleTimer`).
    pub fn refresh_after(&self) -> Duration {
        self.hint() / 4
    }

    /// The idle timeout and [`EdgeSessions::refresh_after`], for [`Session::deadline`].
    fn timers(&self) -> (Duration, Duration) {
        (self.config.idle_timeout, self.refresh_after())
    }

    /// Sends a registered session's registration again if its client sent since the tunnel
    /// last showed it alive, and sets the next refresh.
    fn refresh(&mut self, now: Instant, id: SessionId) {
        let timers = self.timers();
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let quiet_client = s.last_active <= s.tunnel_seen;
        s.tunnel_seen = now;
        let due = s.deadline(timers);
        self.deadlines.push(Reverse((due, id)));
        let (Some(conn), dest) = (s.conn.filter(|_| !quiet_client), s.dest) else {
            return;
        };
        // v2 needs none: its connector unregisters a session it idles out.
        if self.version(conn) != Some(DatagramVersion::V3) {
            return;
        }
        let datagram = self.frame_registration(id, dest, &[]);
        debug!(flow_id = %id, conn = conn.0, "nothing back from the tunnel; registering again");
        self.stats.refreshes += 1;
        self.queue.push_back((conn, datagram));
    }

    fn reserve(&mut self, need: usize) {
        if self.out.capacity() < need {
            self.out.reserve(need.max(OUT_BLOCK));
        }
    }

    /// A payload datagram for `conn`'s version, split off the reusable buffer: v3's `0x01` +
    /// id + payload, or v2's payload + id + `0x00`.
    fn frame_payload(&mut self, conn: ConnId, id: SessionId, payload: &[u8]) -> Bytes {
        self.reserve(v3::PAYLOAD_HEADER_LEN + payload.len());
        if self.version(conn) == Some(DatagramVersion::V2) {
            self.out.put_slice(payload);
            self.out.put_slice(&id.to_bytes());
            self.out.put_u8(v2::DatagramType::Udp as u8);
        } else {
            self.out.put_u8(v3::DatagramType::Payload as u8);
            self.out.put_slice(&id.to_bytes());
            self.out.put_slice(payload);
        }
        self.out.split().freeze()
    }

    fn frame_registration(&mut self, id: SessionId, dest: SocketAddr, payload: &[u8]) -> Bytes {
        let hint = self.hint().as_secs();
        let reg = v3::Registration {
            request_id: id,
            dest,
            traced: false,
            idle_hint_secs: u16::try_from(hint).unwrap_or(u16::MAX),
            payload,
        };
        let len = reg.encoded_len();
        self.reserve(len);
        self.out.resize(len, 0);
        // Callers checked the payload length; the buffer is sized for it.
        let n = reg.encode(&mut self.out).unwrap_or(0);
        self.out.truncate(n);
        self.out.split().freeze()
    }

    fn count(&mut self, reason: EdgeDrop) -> EdgeDrop {
        self.stats.dropped[reason as usize] += 1;
        reason
    }
}
