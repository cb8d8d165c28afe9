//! UDP sessions: the process-wide session manager every tunnel connection shares, for both
//! datagram versions (PROTOCOL.md B§1.9-1.14 for v3, B§2.4-2.6 for v2).
//!
//! Sans-IO. The caller feeds it received QUIC datagrams ([`SessionManager::handle_datagram`]),
//! v2 RPC registrations, origin socket outcomes and origin reads; it answers with
//! [`SessionAction`]s (open/close an origin UDP socket, send a datagram on a link, answer or
//! start a v2 RPC) and, on the two hot paths, directly:
//!
//! - edge → origin: [`Inbound::Forward`] borrows the payload from the received datagram;
//! - origin → edge: [`SessionManager::frame_origin`] writes the framing in place around bytes
//!   the driver read straight into its buffer ([`HEADROOM`] before, [`TAILROOM`] after).
//!
//! Neither allocates. Where cloudflared is fragile this manager is not (B§5): short
//! registrations are refused by the codec instead of crashing, a failed dial frees its flow
//! slot, a bundled payload is delivered, payloads racing their registration are held until
//! the socket is open, ownership is by [`LinkId`] (never reused) instead of a u8 index, an
//! oversized origin packet is dropped without killing the session, and v2 idle hints of zero
//! or below fall back to the default instead of panicking.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fnv::FnvBuildHasher;
use tracing::debug;

use crate::datagram::{v2, v3, LinkId};
use crate::flow::{FlowGate, FlowSlot};
use crate::log_budget::{LogBudget, Verdict};

pub mod edge;
#[cfg(test)]
mod tests;

/// A session's id: the v3 RequestID or the v2 session UUID (16 bytes either way).
pub use crate::datagram::v3::RequestId as SessionId;

/// Bytes [`SessionManager::frame_origin`] needs in front of an origin payload (v3 header).
pub const HEADROOM: usize = v3::PAYLOAD_HEADER_LEN;
/// Bytes it needs behind one (v2 suffix: session id and type).
pub const TAILROOM: usize = v2::UDP_SUFFIX_LEN;
/// Largest origin payload forwarded to the edge (both versions, non-Windows).
pub const MAX_PAYLOAD: usize = v3::MAX_PAYLOAD_LEN;
/// Origin read size cloudflared uses; a buffer of `HEADROOM + ORIGIN_READ + TAILROOM` bytes
/// takes any read and still frames it.
pub const ORIGIN_READ: usize = 1500;
/// cloudflared's idle timeout when the edge gives no hint (210 s, both versions).
pub const DEFAULT_IDLE: Duration = Duration::from_secs(210);

/// Which datagram format a tunnel connection speaks (chosen by the features it registered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DatagramVersion {
    /// Suffix-typed datagrams, sessions registered over RPC streams.
    V2,
    /// Prefix-typed datagrams, sessions registered by datagram.
    V3,
}

impl DatagramVersion {
    /// The version a connection advertising `features` uses (PROTOCOL.md B§3): v3 exactly when
    /// `support_datagram_v3_2` is among them.
    pub fn from_features<S: AsRef<str>>(features: &[S]) -> Self {
        if features
            .iter()
            .any(|f| f.as_ref() == "support_datagram_v3_2")
        {
            Self::V3
        } else {
            Self::V2
        }
    }
}

/// The origin socket of one session, as the driver knows it. Never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UdpFlowId(pub u64);

impl std::fmt::Display for UdpFlowId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "udp#{}", self.0)
    }
}

/// Bounds of the manager. How many sessions may be alive is the flow limit's to say
/// ([`SessionManager::set_flow_gate`]).
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// Idle timeout when the edge's hint is zero.
    pub default_idle: Duration,
    /// Payloads held per session while its origin socket is being opened; more are dropped.
    pub max_pending: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            default_idle: DEFAULT_IDLE,
            max_pending: 16,
        }
    }
}

/// What the driver (or the connection glue) must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionAction {
    /// Open a connected UDP socket to `dest`, then report
    /// [`SessionManager::handle_origin_opened`] or [`SessionManager::handle_origin_failed`].
    Open {
        /// The socket's handle.
        flow: UdpFlowId,
        /// Where it connects.
        dest: SocketAddr,
    },
    /// Send `payload` on the socket (payloads that arrived before the socket was open).
    Send {
        /// The socket.
        flow: UdpFlowId,
        /// One UDP payload.
        payload: Bytes,
    },
    /// Close the socket; the session is gone.
    Close {
        /// The socket.
        flow: UdpFlowId,
    },
    /// Send `datagram` on the tunnel connection `link` (v3 registration responses).
    Datagram {
        /// The connection.
        link: LinkId,
        /// A complete QUIC DATAGRAM payload.
        datagram: Bytes,
    },
    /// Answer the pending v2 `registerUdpSession` call for `id` on `link`.
    V2Registered {
        /// The connection the call came on.
        link: LinkId,
        /// The session.
        id: SessionId,
        /// `Err(text)` goes into the response's `err` field.
        result: Result<(), String>,
    },
    /// Tell the edge over `link` that a v2 session ended here (`unregisterUdpSession` on a
    /// connector-opened RPC stream).
    V2Unregister {
        /// The connection to open the stream on.
        link: LinkId,
        /// The session.
        id: SessionId,
        /// Why it ended, cloudflared's text.
        message: String,
    },
}

/// What to do with a received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// Write `payload` to the origin socket of `flow` now.
    Forward {
        /// The socket.
        flow: UdpFlowId,
        /// One UDP payload, borrowed from the datagram.
        payload: &'a [u8],
    },
    /// An IP packet for the ICMP router; replies go back on the same link.
    Icmp(&'a [u8]),
    /// Taken; any consequences come out of [`SessionManager::poll_action`].
    Handled,
    /// Dropped and counted.
    Dropped(DropReason),
}

/// Why a datagram or payload was dropped (cloudflared's metric reasons where they exist).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Not a valid datagram.
    Malformed,
    /// A type the connector never receives (v3 `0x03`, v2 spans).
    UnexpectedType,
    /// Payload for a session that does not exist (`write_flow_unknown`).
    UnknownFlow,
    /// Held payloads of an opening session are at their bound (`write_full`).
    PendingFull,
    /// Origin payload over [`MAX_PAYLOAD`] (`read_too_large`).
    TooLarge,
    /// The session has no live connection to send on; it waits for the edge to re-register.
    NoLink,
    /// Held for a socket that never opened (dial failed, flow limit, or the session ended
    /// first).
    Unopened,
    /// Bundled with a repeated registration: the first one's payload was already delivered.
    Repeated,
    /// The origin socket did not take the payload (an error, or a full buffer), as the driver
    /// reports it (`write_failed`).
    WriteFailed,
    /// The tunnel connection would not queue the datagram (queue full, too large, or gone).
    SendRefused,
}

impl DropReason {
    /// Every reason, for metrics.
    pub const ALL: [DropReason; 10] = [
        Self::Malformed,
        Self::UnexpectedType,
        Self::UnknownFlow,
        Self::PendingFull,
        Self::TooLarge,
        Self::NoLink,
        Self::Unopened,
        Self::Repeated,
        Self::WriteFailed,
        Self::SendRefused,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnexpectedType => "unexpected_type",
            Self::UnknownFlow => "write_flow_unknown",
            Self::PendingFull => "write_full",
            Self::TooLarge => "read_too_large",
            Self::NoLink => "no_link",
            Self::Unopened => "unopened",
            Self::Repeated => "repeated",
            Self::WriteFailed => "write_failed",
            Self::SendRefused => "send_refused",
        }
    }
}

/// Notices of one kind reported per [`NOTICE_WINDOW`]; the rest are counted into the next.
pub const NOTICES_LOGGED: u32 = 5;
/// See [`NOTICES_LOGGED`].
pub const NOTICE_WINDOW: Duration = Duration::from_secs(10);

/// Something about UDP sessions an operator should hear of (logged once, by the driver). The
/// edge and origins can repeat each of these as often as they like, so only
/// [`NOTICES_LOGGED`] of a kind come per [`NOTICE_WINDOW`], each counting those left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionNotice {
    /// A datagram from the edge was dropped.
    DatagramDropped {
        /// The connection it came on.
        link: LinkId,
        /// What was wrong with it.
        fault: DatagramFault,
        /// Drops of this kind since the last reported one that were not reported.
        suppressed: u64,
    },
    /// The flow limit refused a session (cloudflared: "Too many concurrent sessions being
    /// handled, rejecting udp proxy").
    FlowLimited {
        /// The session.
        id: SessionId,
        /// The connection it was asked on.
        link: LinkId,
        /// The limit in force.
        limit: u64,
        /// Refusals since the last reported one that were not reported.
        suppressed: u64,
    },
    /// An open session's origin socket failed; the session ended (cloudflared: "flow closed
    /// with an error").
    OriginFailed {
        /// The session.
        id: SessionId,
        /// The socket error, in the driver's words.
        reason: String,
        /// Failures since the last reported one that were not reported.
        suppressed: u64,
    },
    /// A session's origin socket could not be opened; it is refused (cloudflared: "flow
    /// registration failure").
    OpenFailed {
        /// The session.
        id: SessionId,
        /// The origin.
        dest: SocketAddr,
        /// The socket error, in the driver's words.
        reason: String,
        /// Failures since the last reported one that were not reported.
        suppressed: u64,
    },
    /// An origin payload over [`MAX_PAYLOAD`] was dropped (the session stays).
    PayloadTooLarge {
        /// The session.
        id: SessionId,
        /// Its length.
        len: usize,
        /// Drops since the last reported one that were not reported.
        suppressed: u64,
    },
}

/// What was wrong with a datagram from the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DatagramFault {
    /// Not a valid v3 datagram.
    #[error("{0}")]
    V3(v3::DecodeError),
    /// Not a valid v2 datagram.
    #[error("{0}")]
    V2(v2::DecodeError),
    /// A v3 registration response, which only the edge receives (cloudflared: "unexpected
    /// datagram type received: 3").
    #[error("unexpected datagram type received: 3")]
    RegistrationResponse,
}

/// One [`LogBudget`] per kind of [`SessionNotice`].
#[derive(Debug)]
struct NoticeBudgets {
    dropped: LogBudget,
    flow_limited: LogBudget,
    origin_failed: LogBudget,
    open_failed: LogBudget,
    too_large: LogBudget,
}

impl Default for NoticeBudgets {
    fn default() -> Self {
        let b = || LogBudget::new(NOTICE_WINDOW, NOTICES_LOGGED);
        Self {
            dropped: b(),
            flow_limited: b(),
            origin_failed: b(),
            open_failed: b(),
            too_large: b(),
        }
    }
}

/// A datagram-v2 session call of the edge's, which a v3 connection refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionMethod {
    /// `registerUdpSession`.
    Register,
    /// `unregisterUdpSession`.
    Unregister,
}

impl SessionMethod {
    /// Every method, for metrics.
    pub const ALL: [SessionMethod; 2] = [Self::Register, Self::Unregister];

    /// The metric label (cloudflared's `command`).
    pub fn label(self) -> &'static str {
        match self {
            Self::Register => "register_udp_session",
            Self::Unregister => "unregister_udp_session",
        }
    }
}

/// Counters, named after cloudflared's metrics where it has them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Sessions opened (`udp_total_flows`).
    pub total_flows: u64,
    /// Registrations refused by the flow limiter.
    pub rate_limited: u64,
    /// Origin sockets that could not be opened.
    pub bind_failures: u64,
    /// Duplicate registrations answered again (`udp_retry_flow_responses`).
    pub retries: u64,
    /// Sessions moved to another connection (`udp_migrated_flows`).
    pub migrated: u64,
    /// Sessions ended by their idle timer.
    pub idle_closed: u64,
    /// Sessions the edge ended (v2 `unregisterUdpSession` from the edge).
    pub remote_closed: u64,
    /// Sessions ended by an origin error (`udp_failed_flows`).
    pub failed: u64,
    /// Registrations that carried a bundled payload.
    pub bundled_in: u64,
    /// Dropped datagrams and payloads, by [`DropReason::ALL`] order (those of every index,
    /// and those no connection can be named for).
    pub dropped: [u64; DropReason::ALL.len()],
    /// ICMP packets from the edge not proxied (those of every index, and those of a link
    /// gone).
    pub icmp_dropped: u64,
    /// Of the [`DropReason::TooLarge`] drops, origin payloads of datagram-v2 sessions
    /// (cloudflared's `quic_client_packet_too_big_dropped`, which its v2 muxer counts).
    pub packet_too_big: u64,
    /// Datagram-v2 sessions whose origin socket opened, as cloudflared's v2 session manager
    /// counts them (`udp_total_sessions`).
    pub v2_sessions: u64,
    /// Of those, sessions ended (`udp_active_sessions` is the difference).
    pub v2_ended: u64,
    /// Sessions to the virtual DNS service taken to the local resolver
    /// (`cloudflared_virtual_origins_dns_requests_total{protocol="udp"}`).
    pub dns: u64,
}

impl SessionStats {
    /// Datagram-v2 sessions open (`udp_active_sessions`).
    pub fn v2_active(&self) -> u64 {
        self.v2_sessions.saturating_sub(self.v2_ended)
    }

    /// Drops counted for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize]
    }
}

/// One HA connection index's share of the flow counters cloudflared labels with `conn_index`
/// (`quic/v3/metrics.go`): a session counts where it registered, a retry or migration where
/// it arrived, a failure where its payloads went; a drop where the datagram came in, or
/// where its session's payloads go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexStats {
    /// Sessions opened (`udp_total_flows`).
    pub total_flows: u64,
    /// Of those, sessions ended (`udp_active_flows` is the difference).
    pub ended: u64,
    /// Sessions ended by an origin error (`udp_failed_flows`).
    pub failed: u64,
    /// Duplicate registrations answered again (`udp_retry_flow_responses`).
    pub retries: u64,
    /// Sessions moved here from another connection (`udp_migrated_flows`).
    pub migrated: u64,
    /// Dropped datagrams and payloads by [`DropReason::ALL`] order
    /// (`udp_dropped_datagrams{conn_index,reason}`).
    pub dropped: [u64; DropReason::ALL.len()],
    /// ICMP packets from the edge that were not proxied: not decoded, refused by the router,
    /// or not written to a ping socket (`icmp_dropped_packets{conn_index,reason="write_failed"}`).
    pub icmp_dropped: u64,
    /// Datagram-v2 session calls refused on a v3 connection, by [`SessionMethod::ALL`] order
    /// (`udp_unsupported_remote_command_total{conn_index,command}`).
    pub unsupported: [u64; SessionMethod::ALL.len()],
}

impl IndexStats {
    /// Drops counted here for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize]
    }

    /// Sessions opened here and not ended (`udp_active_flows`).
    pub fn active(&self) -> u64 {
        self.total_flows.saturating_sub(self.ended)
    }
}

/// Where a framed origin payload must go: `buf[range]` on `link`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    /// The connection.
    pub link: LinkId,
    /// The datagram within the caller's buffer.
    pub range: Range<usize>,
}

#[derive(Debug)]
enum State {
    /// The origin socket is being opened; answers and payloads wait for it.
    Opening {
        /// Links waiting for the registration answer.
        answer: Vec<LinkId>,
        pending: VecDeque<Bytes>,
    },
    Open,
}

#[derive(Debug)]
struct Session {
    id: SessionId,
    version: DatagramVersion,
    dest: SocketAddr,
    /// Where origin payloads go; `None` after the connection died, until a re-registration.
    link: Option<LinkId>,
    /// The HA index it registered on, once opened (where it counts as active).
    opened_on: Option<u8>,
    idle: Duration,
    last_active: Instant,
    state: State,
    /// Its slot of the process-wide flow limit: every session holds one, so the sessions in
    /// the map are the slots held, and removing a session (never migrating it) releases it.
    _slot: FlowSlot,
}

type Map<K, V> = HashMap<K, V, FnvBuildHasher>;

/// Every UDP session of the process.
#[derive(Debug)]
pub struct SessionManager {
    limits: SessionLimits,
    /// What the flow limit lets the manager admit (the supervisor's to set).
    gate: FlowGate,
    sessions: Map<UdpFlowId, Session>,
    by_id: Map<SessionId, UdpFlowId>,
    /// Idle deadlines, checked lazily: an entry may be early (activity since) or stale (session
    /// gone); both are fixed when it comes up, so activity costs no heap work.
    deadlines: BinaryHeap<Reverse<(Instant, UdpFlowId)>>,
    actions: VecDeque<SessionAction>,
    next_flow: u64,
    stats: SessionStats,
    /// The HA index of each live link (told by the supervisor).
    indexes: Map<LinkId, u8>,
    /// The counters by HA index (at most 256 entries).
    by_index: BTreeMap<u8, IndexStats>,
    notices: VecDeque<SessionNotice>,
    budgets: NoticeBudgets,
    /// Where sessions to the virtual DNS service go, in turn ([`crate::virtual_dns`]).
    dns_resolvers: std::sync::Arc<[SocketAddr]>,
}

impl SessionManager {
    /// An empty manager, unlimited until [`Self::set_flow_gate`].
    pub fn new(limits: SessionLimits) -> Self {
        Self {
            limits,
            gate: FlowGate::UNLIMITED,
            sessions: Map::default(),
            by_id: Map::default(),
            deadlines: BinaryHeap::new(),
            actions: VecDeque::new(),
            next_flow: 0,
            stats: SessionStats::default(),
            indexes: Map::default(),
            by_index: BTreeMap::new(),
            notices: VecDeque::new(),
            budgets: NoticeBudgets::default(),
            dns_resolvers: std::sync::Arc::new([crate::virtual_dns::DEFAULT_RESOLVER]),
        }
    }

    /// Sessions opened from now on to the virtual DNS service go to `resolvers`.
    pub fn set_dns_resolvers(&mut self, resolvers: std::sync::Arc<[SocketAddr]>) {
        self.dns_resolvers = resolvers;
    }

    /// The next notice for the driver's log.
    pub fn poll_notice(&mut self) -> Option<SessionNotice> {
        self.notices.pop_front()
    }

    /// Whether a notice waits.
    pub fn has_notices(&self) -> bool {
        !self.notices.is_empty()
    }

    /// Queues the notice `make` builds if `budget` allows one now.
    fn notice(
        &mut self,
        now: Instant,
        budget: impl FnOnce(&mut NoticeBudgets) -> &mut LogBudget,
        make: impl FnOnce(u64) -> SessionNotice,
    ) {
        if let Verdict::Log { suppressed } = budget(&mut self.budgets).check(now) {
            self.notices.push_back(make(suppressed));
        }
    }

    /// `link` is the connection of HA index `index` (until [`Self::link_closed`]).
    pub fn set_link_index(&mut self, link: LinkId, index: u8) {
        self.indexes.insert(link, index);
    }

    /// The flow counters by HA index.
    pub fn index_stats(&self) -> &BTreeMap<u8, IndexStats> {
        &self.by_index
    }

    /// The counters of the index of `link`, if the supervisor named one.
    fn at_link(&mut self, link: Option<LinkId>) -> Option<&mut IndexStats> {
        let index = *self.indexes.get(&link?)?;
        Some(self.by_index.entry(index).or_default())
    }

    /// New sessions are admitted by `gate`: under a supervisor, the process-wide limit and
    /// the TCP flows of every connection, set before each call. A lower limit ends nobody.
    pub fn set_flow_gate(&mut self, gate: FlowGate) {
        self.gate = gate;
    }

    /// Alone in its process, at most `limit` sessions at once (0: unlimited).
    pub fn with_flow_limit(mut self, limit: u64) -> Self {
        self.gate = FlowGate::new(limit, 0);
        self
    }

    /// Sessions holding a slot of the flow limit: all of them.
    pub fn flow_slots(&self) -> u64 {
        self.sessions.len() as u64
    }

    /// Sessions alive (opening or open).
    pub fn active(&self) -> usize {
        self.sessions.len()
    }

    /// The counters.
    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }

    /// The connection a session's origin payloads currently go to.
    pub fn link_of(&self, id: SessionId) -> Option<LinkId> {
        let flow = self.by_id.get(&id)?;
        self.sessions.get(flow)?.link
    }

    /// The session's origin socket.
    pub fn flow_of(&self, id: SessionId) -> Option<UdpFlowId> {
        self.by_id.get(&id).copied()
    }

    /// A QUIC datagram received on `link`.
    pub fn handle_datagram<'a>(
        &mut self,
        now: Instant,
        link: LinkId,
        version: DatagramVersion,
        datagram: &'a [u8],
    ) -> Inbound<'a> {
        match version {
            DatagramVersion::V3 => self.handle_v3(now, link, datagram),
            DatagramVersion::V2 => self.handle_v2(now, link, datagram),
        }
    }

    fn handle_v3<'a>(&mut self, now: Instant, link: LinkId, datagram: &'a [u8]) -> Inbound<'a> {
        match v3::decode(datagram) {
            Ok(v3::Datagram::Payload(p)) => self.payload(now, link, p.request_id, p.payload),
            Ok(v3::Datagram::Registration(r)) => {
                let idle = match r.idle_hint_secs {
                    0 => self.limits.default_idle,
                    s => Duration::from_secs(s.into()),
                };
                let request = Request {
                    link,
                    version: DatagramVersion::V3,
                    id: r.request_id,
                    dest: r.dest,
                    idle,
                };
                self.register(now, request, r.payload);
                Inbound::Handled
            }
            Ok(v3::Datagram::Icmp(i)) => Inbound::Icmp(i.packet),
            Ok(v3::Datagram::RegistrationResponse(_)) => {
                self.dropped_notice(now, link, DatagramFault::RegistrationResponse);
                self.drop(link, DropReason::UnexpectedType)
            }
            Err(e) => {
                self.dropped_notice(now, link, DatagramFault::V3(e));
                self.drop(link, DropReason::Malformed)
            }
        }
    }

    fn handle_v2<'a>(&mut self, now: Instant, link: LinkId, datagram: &'a [u8]) -> Inbound<'a> {
        match v2::decode(datagram) {
            Ok(v2::Datagram::Udp {
                session_id,
                payload,
            }) => self.payload(now, link, SessionId(session_id.as_u128()), payload),
            Ok(v2::Datagram::Ip { packet } | v2::Datagram::IpWithTrace { packet, .. }) => {
                Inbound::Icmp(packet)
            }
            // cloudflared tears the whole connection down here (B§5 #20); a stray span is not
            // worth that.
            Ok(v2::Datagram::TracingSpan { .. }) => {
                debug!("dropping a tracing-span datagram from the edge");
                self.drop(link, DropReason::UnexpectedType)
            }
            Err(e) => {
                self.dropped_notice(now, link, DatagramFault::V2(e));
                self.drop(link, DropReason::Malformed)
            }
        }
    }

    fn dropped_notice(&mut self, now: Instant, link: LinkId, fault: DatagramFault) {
        self.notice(
            now,
            |b| &mut b.dropped,
            |suppressed| SessionNotice::DatagramDropped {
                link,
                fault,
                suppressed,
            },
        );
    }

    /// A v2 `registerUdpSession` call received on `link`. `idle_hint` is the call's
    /// `closeAfterIdleHint` in nanoseconds; zero or below means the default. The answer comes
    /// out as [`SessionAction::V2Registered`].
    pub fn register_v2(
        &mut self,
        now: Instant,
        link: LinkId,
        id: SessionId,
        dest: SocketAddr,
        idle_hint_nanos: i64,
    ) {
        let idle = match u64::try_from(idle_hint_nanos) {
            Ok(n) if n > 0 => Duration::from_nanos(n).max(Duration::from_secs(1)),
            _ => self.limits.default_idle,
        };
        let request = Request {
            link,
            version: DatagramVersion::V2,
            id,
            dest,
            idle,
        };
        self.register(now, request, &[]);
    }

    /// The edge unregistered a v2 session: it ends without telling the edge back.
    pub fn unregister_v2(&mut self, id: SessionId, message: &str) {
        if let Some(flow) = self.by_id.get(&id).copied() {
            debug!(flow_id = %id, %message, "session closed by remote");
            self.stats.remote_closed += 1;
            self.end(flow, None);
        }
    }

    fn register(&mut self, now: Instant, r: Request, bundled: &[u8]) {
        let has_payload = !bundled.is_empty();
        self.stats.bundled_in += u64::from(has_payload);
        if let Some(&flow) = self.by_id.get(&r.id) {
            if has_payload {
                self.count(Some(r.link), DropReason::Repeated);
            }
            self.reregister(now, flow, r);
            return;
        }
        let Ok(slot) = self.gate.admit(self.flow_slots()) else {
            self.stats.rate_limited += 1;
            if has_payload {
                self.count(Some(r.link), DropReason::Unopened);
            }
            let (id, link, limit) = (r.id, r.link, self.gate.limit());
            self.notice(
                now,
                |b| &mut b.flow_limited,
                |suppressed| SessionNotice::FlowLimited {
                    id,
                    link,
                    limit,
                    suppressed,
                },
            );
            self.answer(r.link, r.version, r.id, Answer::TooManyFlows);
            return;
        };
        let flow = UdpFlowId(self.next_flow);
        self.next_flow += 1;
        let mut pending = VecDeque::new();
        if !bundled.is_empty() {
            // cloudflared ignores the bundled payload (B§5 #7); it is the flow's first packet.
            pending.push_back(Bytes::copy_from_slice(bundled));
        }
        debug!(flow_id = %r.id, %flow, dest = %r.dest, link = %r.link, idle = ?r.idle, "opening UDP session");
        self.sessions.insert(
            flow,
            Session {
                id: r.id,
                version: r.version,
                dest: r.dest,
                link: Some(r.link),
                opened_on: None,
                idle: r.idle,
                last_active: now,
                state: State::Opening {
                    answer: vec![r.link],
                    pending,
                },
                _slot: slot,
            },
        );
        self.by_id.insert(r.id, flow);
        let dest = match crate::virtual_dns::redirect(&self.dns_resolvers, r.dest, flow.0) {
            Some(to) => {
                debug!(flow_id = %r.id, %flow, resolver = %to, "virtual DNS service: to the local resolver");
                self.stats.dns += 1;
                to
            }
            None => r.dest,
        };
        self.actions.push_back(SessionAction::Open { flow, dest });
    }

    /// A registration for a live session: a retry on the same link, or a migration.
    fn reregister(&mut self, now: Instant, flow: UdpFlowId, r: Request) {
        let Some(s) = self.sessions.get_mut(&flow) else {
            return;
        };
        // The new registration's destination and hint are ignored, as in cloudflared.
        s.last_active = now;
        let retry = s.link == Some(r.link);
        let v3 = s.version == DatagramVersion::V3;
        if retry {
            self.stats.retries += 1;
        } else {
            debug!(flow_id = %r.id, from = ?s.link, to = %r.link, "migrating session");
            s.link = Some(r.link);
            self.stats.migrated += 1;
        }
        // The per-index flow families are cloudflared's v3 muxer's (`quic/v3/metrics.go`); its
        // v2 session manager counts only `udp_*_sessions`.
        if let Some(at) = self.at_link(Some(r.link)).filter(|_| v3) {
            if retry {
                at.retries += 1;
            } else {
                at.migrated += 1;
            }
        }
        let Some(s) = self.sessions.get_mut(&flow) else {
            return;
        };
        match &mut s.state {
            State::Opening { answer, .. } => {
                if !answer.contains(&r.link) {
                    answer.push(r.link);
                }
            }
            State::Open => self.answer(r.link, r.version, r.id, Answer::Ok),
        }
    }

    fn payload<'a>(
        &mut self,
        now: Instant,
        link: LinkId,
        id: SessionId,
        payload: &'a [u8],
    ) -> Inbound<'a> {
        let Some(&flow) = self.by_id.get(&id) else {
            debug!(flow_id = %id, "unable to find flow");
            return self.drop(link, DropReason::UnknownFlow);
        };
        let Some(s) = self.sessions.get_mut(&flow) else {
            return self.drop(link, DropReason::UnknownFlow);
        };
        match &mut s.state {
            State::Open => {
                s.last_active = now;
                Inbound::Forward { flow, payload }
            }
            State::Opening { pending, .. } if pending.len() < self.limits.max_pending => {
                pending.push_back(Bytes::copy_from_slice(payload));
                Inbound::Handled
            }
            State::Opening { .. } => self.drop(link, DropReason::PendingFull),
        }
    }

    /// The origin socket of `flow` is open: answer the registration, send what waited.
    pub fn handle_origin_opened(&mut self, now: Instant, flow: UdpFlowId) {
        let Some(s) = self.sessions.get_mut(&flow) else {
            return;
        };
        let State::Opening { answer, pending } = std::mem::replace(&mut s.state, State::Open)
        else {
            return;
        };
        s.last_active = now;
        let deadline = now + s.idle;
        let (id, version, link) = (s.id, s.version, s.link);
        self.stats.total_flows += 1;
        self.stats.v2_sessions += u64::from(version == DatagramVersion::V2);
        let index = link.and_then(|l| self.indexes.get(&l).copied());
        if let Some(i) = index.filter(|_| version == DatagramVersion::V3) {
            self.by_index.entry(i).or_default().total_flows += 1;
        }
        if let Some(s) = self.sessions.get_mut(&flow) {
            s.opened_on = index;
        }
        self.deadlines.push(Reverse((deadline, flow)));
        for link in answer {
            self.answer(link, version, id, Answer::Ok);
        }
        for payload in pending {
            self.actions
                .push_back(SessionAction::Send { flow, payload });
        }
    }

    /// The origin socket of `flow` could not be opened, or failed later (a read or write error
    /// other than a timeout): the session ends. `reason` is the socket error's text.
    pub fn handle_origin_failed(&mut self, now: Instant, flow: UdpFlowId, reason: &str) {
        let Some(s) = self.sessions.get(&flow) else {
            return;
        };
        let (id, dest, link, v3) = (s.id, s.dest, s.link, s.version == DatagramVersion::V3);
        if matches!(s.state, State::Open) {
            self.notice(
                now,
                |b| &mut b.origin_failed,
                |suppressed| SessionNotice::OriginFailed {
                    id,
                    reason: reason.to_owned(),
                    suppressed,
                },
            );
            self.stats.failed += 1;
            if let Some(at) = self.at_link(link).filter(|_| v3) {
                at.failed += 1;
            }
            self.end(flow, Some(reason.to_owned()));
            return;
        }
        self.notice(
            now,
            |b| &mut b.open_failed,
            |suppressed| SessionNotice::OpenFailed {
                id,
                dest,
                reason: reason.to_owned(),
                suppressed,
            },
        );
        self.stats.bind_failures += 1;
        // Unlike cloudflared's v3 path (B§5 #2) the flow slot is freed: the session is gone.
        if let Some(Session {
            id,
            version,
            state: State::Opening { answer, .. },
            ..
        }) = self.remove(flow)
        {
            for link in answer {
                self.answer(link, version, id, Answer::BindFailed(reason));
            }
        }
    }

    /// Frames `len` bytes the driver read from the origin socket of `flow` into
    /// `buf[HEADROOM..]`, in place; send `buf[range]` on `link`. `buf` must hold
    /// `HEADROOM + len + TAILROOM` bytes.
    pub fn frame_origin(
        &mut self,
        now: Instant,
        flow: UdpFlowId,
        buf: &mut [u8],
        len: usize,
    ) -> Result<Outbound, DropReason> {
        let index = self.index_of(flow);
        let Some(s) = self.sessions.get_mut(&flow) else {
            return Err(self.count_at(None, DropReason::UnknownFlow));
        };
        if len > MAX_PAYLOAD {
            self.stats.packet_too_big += u64::from(s.version == DatagramVersion::V2);
            let id = s.id;
            self.notice(
                now,
                |b| &mut b.too_large,
                |suppressed| SessionNotice::PayloadTooLarge {
                    id,
                    len,
                    suppressed,
                },
            );
            return Err(self.count_at(index, DropReason::TooLarge));
        }
        let Some(link) = s.link else {
            return Err(self.count_at(index, DropReason::NoLink));
        };
        if buf.len() < HEADROOM + len + TAILROOM {
            // Caller misuse; the buffer contract is in the doc.
            return Err(self.count_at(index, DropReason::TooLarge));
        }
        s.last_active = now;
        let range = match s.version {
            DatagramVersion::V3 => {
                v3::write_payload_header(buf, s.id).map_err(|_| DropReason::TooLarge)?;
                0..HEADROOM + len
            }
            DatagramVersion::V2 => {
                let uuid = uuid::Uuid::from_u128(s.id.0);
                let n = v2::frame_udp_in_place(&mut buf[HEADROOM..], len, uuid)
                    .map_err(|_| DropReason::TooLarge)?;
                HEADROOM..HEADROOM + n
            }
        };
        Ok(Outbound { link, range })
    }

    /// The tunnel connection `link` is gone. Its sessions move to `successor` when there is
    /// one (the edge reaches them there and later re-registrations are plain retries);
    /// otherwise they wait, unlinked, for the edge to re-register them on another connection,
    /// and end by their idle timer if it never does.
    pub fn link_closed(&mut self, link: LinkId, successor: Option<LinkId>) {
        let (mut moved, mut moved_v3) = (0u64, 0u64);
        for s in self.sessions.values_mut() {
            if s.link == Some(link) {
                s.link = successor;
                moved += 1;
                moved_v3 += u64::from(s.version == DatagramVersion::V3);
            }
            if let State::Opening { answer, .. } = &mut s.state {
                answer.retain(|l| *l != link);
            }
        }
        if successor.is_some() {
            self.stats.migrated += moved;
            if let Some(at) = self.at_link(successor) {
                at.migrated += moved_v3;
            }
        }
        self.indexes.remove(&link);
        if moved > 0 {
            debug!(%link, ?successor, sessions = moved, "connection gone; sessions re-homed");
        }
    }

    /// Ends idle sessions.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&Reverse((at, flow))) = self.deadlines.peek() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            let Some(s) = self.sessions.get(&flow) else {
                continue;
            };
            let due = s.last_active + s.idle;
            if due > now {
                self.deadlines.push(Reverse((due, flow)));
                continue;
            }
            debug!(flow_id = %s.id, idle = ?s.idle, "flow was idle");
            self.stats.idle_closed += 1;
            let message = match s.version {
                DatagramVersion::V2 => format!("session idle for {}", go_duration(s.idle)),
                DatagramVersion::V3 => format!("flow was idle for {}", go_duration(s.idle)),
            };
            self.end(flow, Some(message));
        }
        // Stale entries of sessions that ended early would otherwise linger for up to their
        // idle time (hours with a large hint); a flood of short sessions must not grow this.
        if self.deadlines.len() > 2 * self.sessions.len() + 64 {
            let sessions = &self.sessions;
            self.deadlines
                .retain(|Reverse((_, f))| sessions.contains_key(f));
        }
    }

    /// When [`SessionManager::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.peek().map(|Reverse((at, _))| *at)
    }

    /// The next action.
    pub fn poll_action(&mut self) -> Option<SessionAction> {
        self.actions.pop_front()
    }

    /// Ends a session: close its socket; a v2 session ended here (`message` is `Some`) is
    /// unregistered with the edge.
    fn end(&mut self, flow: UdpFlowId, message: Option<String>) {
        let Some(s) = self.remove(flow) else { return };
        if let (DatagramVersion::V2, Some(message), Some(link)) = (s.version, message, s.link) {
            self.actions.push_back(SessionAction::V2Unregister {
                link,
                id: s.id,
                message,
            });
        }
    }

    fn remove(&mut self, flow: UdpFlowId) -> Option<Session> {
        let s = self.sessions.remove(&flow)?;
        self.by_id.remove(&s.id);
        if let Some(i) = s.opened_on.filter(|_| s.version == DatagramVersion::V3) {
            self.by_index.entry(i).or_default().ended += 1;
        }
        if s.version == DatagramVersion::V2 && matches!(s.state, State::Open) {
            self.stats.v2_ended += 1;
        }
        if let State::Opening { pending, .. } = &s.state {
            let index = s.link.and_then(|l| self.indexes.get(&l).copied());
            for _ in 0..pending.len() {
                self.count_at(index, DropReason::Unopened);
            }
        }
        self.actions.push_back(SessionAction::Close { flow });
        Some(s)
    }

    fn answer(
        &mut self,
        link: LinkId,
        version: DatagramVersion,
        id: SessionId,
        answer: Answer<'_>,
    ) {
        let action = match version {
            DatagramVersion::V3 => {
                let code = match answer {
                    Answer::Ok => v3::ResponseCode::Ok,
                    Answer::TooManyFlows => v3::ResponseCode::TooManyActiveFlows,
                    Answer::BindFailed(_) => v3::ResponseCode::UnableToBindSocket,
                };
                // cloudflared always sends an empty message: 20 bytes.
                let response = v3::RegistrationResponse {
                    request_id: id,
                    code,
                    error_msg: "",
                };
                let mut out = vec![0u8; response.encoded_len()];
                if response.encode(&mut out).is_err() {
                    return;
                }
                SessionAction::Datagram {
                    link,
                    datagram: out.into(),
                }
            }
            DatagramVersion::V2 => SessionAction::V2Registered {
                link,
                id,
                result: match answer {
                    Answer::Ok => Ok(()),
                    Answer::TooManyFlows => Err(V2_RATE_LIMITED.to_owned()),
                    Answer::BindFailed(text) => Err(text.to_owned()),
                },
            },
        };
        self.actions.push_back(action);
    }

    fn drop(&mut self, link: LinkId, reason: DropReason) -> Inbound<'static> {
        Inbound::Dropped(self.count(Some(link), reason))
    }

    /// Counts a drop on the index of `link` (and in the total).
    pub fn count(&mut self, link: Option<LinkId>, reason: DropReason) -> DropReason {
        let index = link.and_then(|l| self.indexes.get(&l).copied());
        self.count_at(index, reason)
    }

    /// An ICMP packet that came in on `link` was not proxied: counted on its index.
    pub fn count_icmp_dropped(&mut self, link: Option<LinkId>) {
        if let Some(at) = self.at_link(link) {
            at.icmp_dropped += 1;
        }
        self.stats.icmp_dropped += 1;
    }

    /// The edge called `method` on `link`, a v3 connection, which refused it.
    pub fn count_unsupported(&mut self, link: LinkId, method: SessionMethod) {
        if let Some(at) = self.at_link(Some(link)) {
            at.unsupported[method as usize] += 1;
        }
    }

    /// The origin socket of `flow` did not take a payload: counted on the index its
    /// payloads go to.
    pub fn write_failed(&mut self, flow: UdpFlowId) {
        let index = self.index_of(flow);
        self.count_at(index, DropReason::WriteFailed);
    }

    /// The index of the connection a session's payloads go to, else the one it opened on.
    fn index_of(&self, flow: UdpFlowId) -> Option<u8> {
        let s = self.sessions.get(&flow)?;
        s.link
            .and_then(|l| self.indexes.get(&l).copied())
            .or(s.opened_on)
    }

    fn count_at(&mut self, index: Option<u8>, reason: DropReason) -> DropReason {
        self.stats.dropped[reason as usize] += 1;
        if let Some(i) = index {
            self.by_index.entry(i).or_default().dropped[reason as usize] += 1;
        }
        reason
    }
}

/// cloudflared's v2 answer when the flow limit is reached.
pub const V2_RATE_LIMITED: &str =
    "failed to start udp session due to rate limiting: too many active flows";

/// `d` as Go's `time.Duration.String` writes it (`3m30s`, `1h0m5s`, `1.5s`, `250ms`), for
/// the texts cloudflared sends the edge.
pub fn go_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    if nanos < 1_000_000_000 {
        let (unit, div) = match nanos {
            n if n < 1_000 => ("ns", 1),
            n if n < 1_000_000 => ("\u{b5}s", 1_000),
            _ => ("ms", 1_000_000),
        };
        return format!("{}{unit}", trim_fraction(nanos, div));
    }
    let secs = d.as_secs();
    let (h, m) = (secs / 3600, secs / 60 % 60);
    let s = trim_fraction(
        u128::from(secs % 60) * 1_000_000_000 + u128::from(d.subsec_nanos()),
        1_000_000_000,
    );
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, m) => format!("{m}m{s}s"),
        (h, m) => format!("{h}h{m}m{s}s"),
    }
}

/// `n / div` with the fraction's trailing zeros removed (`1500, 1000` → `1.5`).
fn trim_fraction(n: u128, div: u128) -> String {
    let (whole, frac) = (n / div, n % div);
    if frac == 0 {
        return whole.to_string();
    }
    let width = div.ilog10() as usize;
    let digits = format!("{frac:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// A registration, from either version.
struct Request {
    link: LinkId,
    version: DatagramVersion,
    id: SessionId,
    dest: SocketAddr,
    idle: Duration,
}

enum Answer<'a> {
    Ok,
    TooManyFlows,
    BindFailed(&'a str),
}
