//! The supervisor: cloudflared's HA connection manager as a sans-IO machine (PROTOCOL.md C§3).
//!
//! It owns one [`ConnectorConnection`] per HA index, starts them as cloudflared does (index 0
//! first; once it registers, indexes 1..N-1 one `registration_interval` apart), picks edge
//! addresses from an [`EdgePool`], reconnects with jittered exponential backoff drawn from a
//! seeded RNG, and shuts down gracefully (unregister, drain, close; a second shutdown, or the
//! grace period running out, closes at once).
//!
//! Every connection attempt gets a fresh [`LinkId`]: origin flows, configuration offers and UDP
//! sessions are tagged with it, so a reconnect that reuses an index is never confused with the
//! connection it replaces. Pushed remote configurations are versioned and applied here.
//!
//! Drivers do not call it: [`crate::connector::Connector`] wraps it and orders its outputs.
//! Its parts: `pool` (edge addresses), `backoff`, `datagrams` (the datagram plane of every
//! connection: UDP sessions, ICMP, v2 registrations, re-homing sessions when a link goes).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::quic::client_metrics::IndexFigures;
use quinn_proto::StreamId;
use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use thiserror::Error;
use tracing::debug;

mod backoff;
mod datagrams;
mod link;
mod pool;

pub use pool::{region_targets, srv_service, static_edge_address, EdgePool, IpVersion, PoolError};

use super::connector::{
    CloseReason, ConnectorConfig, ConnectorConnection, ConnectorEvent, LocalClose,
    UdpUnregisterFailure,
};
use super::data::{DataLimits, FlowId, OriginAction};
use super::udp::DatagramHub;
use super::{Received, Transmit};
use crate::control::features::{self, FeaturesRecord, RecordError, FEATURES_RECORD};
use crate::control::{CallFailure, ConnectionDetails, Refusal, RegistrationFailure};
use crate::datagram::LinkId;
use crate::flow::{effective_limit, FlowGate, FlowStats, FlowType};
use crate::icmp::{IcmpRouter, RouterConfig};
use crate::ingress::RemoteConfig;
use crate::log_budget::{LogBudget, Verdict};
use crate::quic::transport::QuicSettings;
use crate::receive_window::GrowingWindow;
use crate::rpc_stream::server::CallRefusal;
use crate::rpc_stream::ConfigVersions;
use crate::session::{
    DatagramVersion, SessionId, SessionLimits, SessionManager, SessionNotice, NOTICES_LOGGED,
    NOTICE_WINDOW,
};
use crate::tunnel::http2_link::Http2Link;
use crate::tunnel::protocol::{self, Protocol, ProtocolFlag, PERCENTAGE_RECORD};
use crate::tunnel::requests::RequestStats;
use backoff::Backoff;
use link::Link;

/// How the supervisor runs.
#[derive(Clone)]
pub struct SupervisorConfig {
    /// Template of every connection; `conn_index`, `num_previous_attempts` and
    /// `origin_local_ip` are set per attempt.
    pub connector: ConnectorConfig,
    /// `--ha-connections` (4).
    pub ha_connections: u8,
    /// Between starting HA connections after the first registered (1 s).
    pub registration_interval: Duration,
    /// Backoff base (1 s).
    pub backoff_base: Duration,
    /// `--retries` (5): the backoff exponent cap; connections are retried forever.
    pub retries: u32,
    /// `--max-edge-addr-retries` (8): dial failures in a row after which cloudflared would
    /// fall back to HTTP/2.
    pub max_edge_addr_retries: u32,
    /// UDP session bounds.
    pub sessions: SessionLimits,
    /// `--max-active-flows` / `TUNNEL_MAX_ACTIVE_FLOWS`: when set, the flow limit whatever
    /// any configuration says (0: unlimited).
    pub max_active_flows: Option<u64>,
    /// The local configuration file's `warp-routing.maxActiveFlows`: the flow limit until a
    /// remote configuration replaces it (none: unlimited).
    pub local_max_active_flows: Option<u64>,
    /// ICMP proxy: source (and ping-socket bind) addresses, funnel idle time and bound. A
    /// family without a source address is not proxied.
    pub icmp: RouterConfig,
    /// QUIC transport settings; each attempt gets a transport configuration for its edge's
    /// address family (the initial MTU differs).
    pub quic: QuicSettings,
    /// `--protocol`.
    pub protocol: ProtocolFlag,
    /// Where `auto` starts (the remote selector's choice, [`crate::tunnel::protocol`]).
    pub auto_initial: Protocol,
    /// When `auto` follows the percentage record (cloudflared's remote selector): the account
    /// tag whose threshold it is read against. It is read again every `selector_ttl` (the
    /// driver looks it up when asked), and new connections follow what it selects.
    pub remote_selector: Option<String>,
    /// How long a reading of the percentage record holds (cloudflared: one hour).
    pub selector_ttl: Duration,
    /// When `--features` leaves the datagram version to Cloudflare's feature record
    /// ([`FEATURES_RECORD`]): the account tag it is read against. As cloudflared's
    /// `NewFeatureSelector`, connection 0 waits for the first reading (an answer, a failure,
    /// or [`protocol::TXT_LOOKUP_TIMEOUT`]); it is read again every `features_ttl`, and
    /// connections made after a reading advertise the version it selects
    /// (`connector.registration.features` is the list for v2 then).
    pub features_selector: Option<String>,
    /// How often the feature record is read again (cloudflared: one hour).
    pub features_ttl: Duration,
    /// TLS of HTTP/2 connections (same roots and key exchange as QUIC's); none: HTTP/2 is not
    /// available.
    pub http2_tls: Option<Arc<rustls::ClientConfig>>,
    /// `auto`: QUIC handshakes timing out in a row on one index before it falls back to
    /// HTTP/2 (each takes quinn's handshake timeout, 5 s, plus backoff: 2 fall back within
    /// about 10 s; cloudflared waits for 9 dial failures).
    pub fallback_after_timeouts: u32,
    /// `auto`: how long after falling back to HTTP/2 one connection tries QUIC again (it
    /// drains and reconnects over QUIC; a failed try doubles the wait, up to 16 times).
    pub quic_retry_interval: Duration,
    /// `--dns-resolver-addrs`: where flows to the virtual DNS service go (none: the system's
    /// resolver, found by lookups, [`crate::virtual_dns`]).
    pub dns_resolvers: Option<Vec<std::net::SocketAddr>>,
}

impl SupervisorConfig {
    /// cloudflared's defaults around `connector`.
    pub fn new(connector: ConnectorConfig) -> Self {
        Self {
            connector,
            ha_connections: 4,
            registration_interval: Duration::from_secs(1),
            backoff_base: Duration::from_secs(1),
            retries: 5,
            max_edge_addr_retries: 8,
            sessions: SessionLimits::default(),
            max_active_flows: None,
            local_max_active_flows: None,
            icmp: RouterConfig::default(),
            quic: QuicSettings::default(),
            protocol: ProtocolFlag::Fixed(Protocol::Quic),
            auto_initial: Protocol::Quic,
            remote_selector: None,
            selector_ttl: protocol::RESOLVE_TTL,
            features_selector: None,
            features_ttl: features::FEATURES_REFRESH,
            http2_tls: None,
            fallback_after_timeouts: 2,
            quic_retry_interval: Duration::from_secs(60),
            dns_resolvers: None,
        }
    }
}

/// Why the supervisor gave up.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SupervisorError {
    /// The first connection was refused for good (cloudflared: "initial tunnel connection
    /// failed").
    #[error("initial tunnel connection failed: {0}")]
    InitialConnection(RegistrationFailure),
    /// No edge address to connect to.
    #[error(transparent)]
    Pool(#[from] PoolError),
}

/// Why a connection attempt could not start (no dial happened).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StartError {
    /// quinn refused to start the QUIC connection.
    #[error("{0}")]
    Quic(String),
    /// The HTTP/2 connection's TLS could not be set up.
    #[error("{0}")]
    Http2(String),
    /// HTTP/2 was chosen but there is no TLS configuration for it.
    #[error("no TLS configuration for http2")]
    NoHttp2Tls,
}

/// Why reading the percentage record or the feature record gave nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RefreshFailure {
    /// The driver's lookup failed.
    #[error("the TXT lookup failed")]
    LookupFailed,
    /// No answer within [`protocol::TXT_LOOKUP_TIMEOUT`].
    #[error("no answer to the TXT lookup within {0:?}")]
    TimedOut(Duration),
    /// The record does not read.
    #[error("the record is unreadable")]
    Unreadable,
}

/// What happened, for the driver (metrics, logs, readiness, flow bookkeeping).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SupervisorEvent {
    /// A connection attempt started.
    Connecting {
        /// HA index.
        index: u8,
        /// The attempt's identity.
        link: LinkId,
        /// Edge address dialled.
        edge: SocketAddr,
        /// Over which transport (HTTP/2: the driver dials TCP to `edge`).
        protocol: Protocol,
    },
    /// A connection registered and serves.
    Registered {
        /// HA index.
        index: u8,
        /// Which attempt.
        link: LinkId,
        /// Edge address.
        edge: SocketAddr,
        /// Over which transport.
        protocol: Protocol,
        /// What the edge said.
        details: ConnectionDetails,
    },
    /// The edge refused a registration.
    RegistrationFailed {
        /// HA index.
        index: u8,
        /// The edge's answer, or the call's failure.
        error: RegistrationFailure,
    },
    /// A connection is gone: drop every flow and session tagged with `link`.
    LinkClosed {
        /// HA index.
        index: u8,
        /// Which attempt.
        link: LinkId,
        /// Why.
        reason: CloseReason,
        /// Whether it had registered.
        was_registered: bool,
    },
    /// The index reconnects after `delay`.
    Reconnecting {
        /// HA index.
        index: u8,
        /// Backoff drawn.
        delay: Duration,
        /// The bound it was drawn under (cloudflared's "in up to").
        up_to: Duration,
    },
    /// cloudflared would now fall back to HTTP/2, but `--protocol quic` forbids it: QUIC is
    /// retried.
    FallbackUnavailable {
        /// HA index.
        index: u8,
    },
    /// The percentage record, read again, selects another protocol: new connections of
    /// indexes not in fallback use it (`auto`; connections up stay as they are).
    ProtocolSelected {
        /// What it selects now.
        protocol: Protocol,
    },
    /// An index changed transport (`auto`): fell back to HTTP/2, or returned to QUIC.
    ProtocolChanged {
        /// HA index.
        index: u8,
        /// The transport its next connection uses.
        protocol: Protocol,
    },
    /// A remote configuration was applied: its ingress serves new requests, its
    /// `warp-routing` sets the flow limit.
    ConfigurationApplied {
        /// The version now in force.
        version: i32,
    },
    /// A remote configuration was refused (the previous one stays); the edge is told why.
    ConfigurationRefused {
        /// Offered version.
        version: i32,
        /// Why.
        error: String,
    },
    /// The flow limit changed (a remote configuration's `warp-routing`). Active flows stay.
    FlowLimitChanged {
        /// New limit (0: unlimited).
        limit: u64,
        /// Flows active now.
        active: u64,
    },
    /// A registration-server call of `index`'s connection ended: counted for cloudflared's
    /// RPC client and local configuration metrics.
    RpcCalled {
        /// HA index.
        index: u8,
        /// Which, how long, whether it failed.
        call: crate::control::connector::RpcCall,
    },
    /// Pushing the local configuration failed (logged, not fatal).
    LocalConfigurationFailed {
        /// HA index.
        index: u8,
        /// Why.
        reason: CallFailure,
    },
    /// A team's Access signing keys were fetched (`error: None`), or the fetch failed: the
    /// keys before stay, and without any, requests to rules requiring Access are refused.
    AccessKeysFetched {
        /// The certs URL.
        url: String,
        /// Why the fetch failed.
        error: Option<String>,
    },
    /// `--ha-connections` asks for more connections than the edge pool has addresses for;
    /// `available` run.
    HaConnectionsCapped {
        /// Asked for.
        requested: usize,
        /// Run.
        available: usize,
    },
    /// Reading the percentage record again failed: new connections keep the protocol they had
    /// (cloudflared: "Failed to refresh protocol").
    ProtocolRefreshFailed {
        /// What went wrong.
        reason: RefreshFailure,
    },
    /// The feature record's first reading chose the datagram version (`--features` did not),
    /// or a later reading changed it: connections made from now on use `version`; those up
    /// stay as they are.
    DatagramVersionSelected {
        /// The version new connections use.
        version: DatagramVersion,
        /// The record it was read from (the defaults when no reading succeeded yet).
        record: FeaturesRecord,
    },
    /// Reading the feature record failed: the datagram version stays (at the first reading:
    /// v2, as cloudflared's "Failed to fetch features, default to disable").
    FeaturesRefreshFailed {
        /// What went wrong.
        reason: RefreshFailure,
        /// Why the record did not read ([`RefreshFailure::Unreadable`]).
        error: Option<RecordError>,
        /// Whether it was the first reading (at startup, before connection 0).
        first: bool,
    },
    /// The shutdown's grace period ran out: every connection closes now.
    GracePeriodOver,
    /// A draining connection's grace period ran out with streams in flight: it closes now.
    DrainCutShort {
        /// HA index.
        index: u8,
        /// Streams still in flight.
        streams: usize,
    },
    /// A connection attempt could not start; the index retries after backoff.
    StartFailed {
        /// HA index.
        index: u8,
        /// The edge it was to dial.
        edge: SocketAddr,
        /// Why.
        error: StartError,
    },
    /// An index could not connect after the first registration; it retries after backoff.
    ConnectFailed {
        /// HA index.
        index: u8,
        /// Why.
        error: SupervisorError,
    },
    /// `unregisterConnection` failed: the connection drains anyway.
    UnregisterFailed {
        /// HA index.
        index: u8,
        /// Why.
        reason: CallFailure,
    },
    /// The edge did not acknowledge the end of a datagram-v2 session (cloudflared: "Failed
    /// to unregister udp session with edge"). A few per window, then a count of the rest.
    UdpUnregisterFailed {
        /// HA index.
        index: u8,
        /// The session.
        session: SessionId,
        /// What came back.
        failure: UdpUnregisterFailure,
        /// Failures since the last reported one that were not reported.
        suppressed: u64,
    },
    /// The flow limit refused a TCP flow (cloudflared: "Too many concurrent flows being
    /// handled, rejecting tcp proxy"). A few per window, then a count of the rest.
    FlowRefused {
        /// HA index.
        index: u8,
        /// `ConnectRequest.dest`.
        dest: String,
        /// The limit in force.
        limit: u64,
        /// Refusals since the last reported one that were not reported.
        suppressed: u64,
    },
    /// A request whose bytes did not move was ended: its origin took none of its body for
    /// [`crate::tunnel::data::ORIGIN_PATIENCE`] on a crowded connection, or a write to the
    /// edge or to its private-network origin ran out of `--write-stream-timeout`. A few per
    /// window, then a count of the rest.
    HeldRequestReset {
        /// HA index.
        index: u8,
        /// The request's `Host` (a TCP flow's destination).
        host: String,
        /// How long the write had waited.
        waited: Duration,
        /// Whose write it was.
        stall: crate::tunnel::data::Stall,
        /// Resets since the last reported one that were not reported.
        suppressed: u64,
    },
    /// The edge called a method with parameters that were refused (already answered). A few
    /// per window, then a count of the rest.
    RpcRefused {
        /// HA index.
        index: u8,
        /// What was refused.
        refusal: CallRefusal,
        /// Refusals since the last reported one that were not reported.
        suppressed: u64,
    },
    /// Something about UDP sessions (already budgeted by the session manager).
    Session(SessionNotice),
    /// The supervisor gave up; it is stopped.
    Fatal(SupervisorError),
    /// Every connection is closed after a shutdown.
    Stopped,
}

/// What a connection's event asks for, done after its events are read.
enum Deferred {
    /// Tell the driver the flow limit changed (once the figures are current).
    LimitChanged(u64),
    /// Answer a configuration push.
    Respond(StreamId, crate::rpc_stream::ConfigUpdateResult),
    /// A datagram-v2 session registration, for the session manager.
    RegisterV2 {
        link: LinkId,
        id: SessionId,
        dest: SocketAddr,
        idle_hint_nanos: i64,
    },
    /// The edge ended a datagram-v2 session.
    UnregisterV2 { id: SessionId, message: String },
}

enum Phase {
    /// Waiting for index 0 to register before starting.
    Waiting,
    /// Starts (or restarts) at this time.
    StartAt(Instant),
    /// A connection attempt in progress or serving.
    Running(Box<Running>),
    /// Nothing more for this index.
    Stopped,
}

struct Running {
    conn: Link,
    link: LinkId,
    edge: SocketAddr,
    registered: bool,
}

struct Slot {
    index: u8,
    phase: Phase,
    backoff: Backoff,
    /// Dial failures in a row (cloudflared's `IpAddrFallback` counter).
    dial_failures: u32,
    /// The transport of its next connection.
    protocol: Protocol,
    /// QUIC handshakes that timed out in a row.
    quic_timeouts: u32,
    /// On HTTP/2 because QUIC failed (`auto`), not because it was selected: a new selection
    /// leaves it there.
    in_fallback: bool,
}

impl Slot {
    fn running(&mut self) -> Option<&mut Running> {
        match &mut self.phase {
            Phase::Running(r) => Some(r),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Index 0 has not registered yet.
    Starting,
    /// HA connections run.
    Running,
    /// Graceful shutdown until the hard deadline.
    ShuttingDown(Instant),
    /// Done.
    Stopped,
}

/// `auto`'s remote selector: what the percentage record selects, and when to read it again.
struct Selector {
    account_tag: String,
    current: Protocol,
    lookup: Lookup,
}

/// Why a reading of the feature record failed, for [`SupervisorEvent::FeaturesRefreshFailed`].
type FeaturesFailure = (RefreshFailure, Option<RecordError>);

/// The datagram version as the feature record selects it, and when to read it again.
struct FeatureSelector {
    account_tag: String,
    /// The last record that read (the defaults before).
    record: FeaturesRecord,
    version: DatagramVersion,
    lookup: Lookup,
    /// Whether a first reading ended (connection 0 waits for it).
    read_once: bool,
}

/// Where the next reading of a TXT record stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lookup {
    /// Read it again at this time.
    At(Instant),
    /// Due: the driver is to be asked.
    Due,
    /// Asked; waiting for the answer until this time, then given up as failed.
    Asked(Instant),
}

/// What the edge can make the supervisor report as often as it likes: a few per window each.
struct PeerBudgets {
    flow_refused: LogBudget,
    held_reset: LogBudget,
    rpc_refused: LogBudget,
    udp_unregister: LogBudget,
}

impl PeerBudgets {
    fn new() -> Self {
        let b = || LogBudget::new(NOTICE_WINDOW, NOTICES_LOGGED);
        Self {
            flow_refused: b(),
            held_reset: b(),
            rpc_refused: b(),
            udp_unregister: b(),
        }
    }
}

/// The HA connections of one connector process.
pub(crate) struct Supervisor {
    config: SupervisorConfig,
    pool: EdgePool,
    rng: ChaCha8Rng,
    slots: Vec<Slot>,
    state: State,
    next_link: u64,
    events: VecDeque<SupervisorEvent>,
    /// Origin actions of a connection, drained into here with its link.
    actions: VecDeque<(LinkId, OriginAction)>,
    /// Round-robin cursor for transmits, so one busy connection cannot starve the others.
    cursor: usize,
    /// UDP sessions and ICMP of every connection.
    hub: DatagramHub,
    /// Datagram-v2 registrations waiting for the session manager's answer: the RPC streams to
    /// answer on (a retried call may wait beside the first; one answer serves both).
    v2_calls: HashMap<(LinkId, SessionId), Vec<StreamId>>,
    /// Remote configuration versions (cloudflared's orchestrator).
    versions: ConfigVersions,
    /// `auto`: when an HTTP/2 connection next tries QUIC, and the wait after a failed try.
    quic_retry: Option<(Instant, Duration)>,
    /// The index trying QUIC again now.
    returning: Option<usize>,
    /// What every request of this process came to, taken from the connections after each
    /// step.
    requests: RequestStats,
    /// Per HA index, what its closed QUIC connections counted ([`Self::closed_quic`]).
    closed_quic: BTreeMap<u8, IndexFigures>,
    /// The flow limit in force (0: unlimited): the flag's, else the configuration's.
    flow_limit: u64,
    /// `auto` following the percentage record.
    selector: Option<Selector>,
    /// The datagram version following the feature record.
    features: Option<FeatureSelector>,
    budgets: PeerBudgets,
}

impl Supervisor {
    /// A supervisor over `pool`; `seed` drives backoff jitter, address choice and quinn.
    /// Connection 0 starts at `now`.
    pub fn new(now: Instant, config: SupervisorConfig, pool: EdgePool, seed: u64) -> Self {
        let ha = usize::from(config.ha_connections.max(1));
        let mut events = VecDeque::new();
        let ha = if ha > pool.capacity() {
            events.push_back(SupervisorEvent::HaConnectionsCapped {
                requested: ha,
                available: pool.capacity(),
            });
            pool.capacity()
        } else {
            ha
        };
        let backoff = Backoff {
            retries: 0,
            max_retries: config.retries,
            base: config.backoff_base,
        };
        let features = config
            .features_selector
            .clone()
            .map(|account_tag| FeatureSelector {
                account_tag,
                record: FeaturesRecord::default(),
                version: DatagramVersion::from_features(&config.connector.registration.features),
                lookup: Lookup::Due,
                read_once: false,
            });
        let slots = (0..ha)
            .map(|i| Slot {
                index: i as u8,
                // With a feature record to read, connection 0 waits for its first reading.
                phase: if i == 0 && features.is_none() {
                    Phase::StartAt(now)
                } else {
                    Phase::Waiting
                },
                backoff,
                dial_failures: 0,
                protocol: match config.protocol {
                    ProtocolFlag::Fixed(p) => p,
                    ProtocolFlag::Auto => config.auto_initial,
                },
                quic_timeouts: 0,
                in_fallback: false,
            })
            .collect();
        let selector = match config.protocol {
            ProtocolFlag::Auto => config.remote_selector.clone().map(|account_tag| Selector {
                account_tag,
                current: config.auto_initial,
                lookup: Lookup::At(now + config.selector_ttl),
            }),
            ProtocolFlag::Fixed(_) => None,
        };
        let flow_limit = effective_limit(config.max_active_flows, config.local_max_active_flows);
        let mut hub = DatagramHub::new(
            SessionManager::new(config.sessions),
            IcmpRouter::new(config.icmp),
        );
        hub.sessions.set_flow_gate(FlowGate::new(flow_limit, 0));
        Self {
            config,
            pool,
            rng: ChaCha8Rng::seed_from_u64(seed),
            slots,
            state: State::Starting,
            next_link: 0,
            events,
            actions: VecDeque::new(),
            cursor: 0,
            hub,
            v2_calls: HashMap::new(),
            versions: ConfigVersions::new(),
            quic_retry: None,
            returning: None,
            requests: RequestStats::default(),
            closed_quic: BTreeMap::new(),
            flow_limit,
            selector,
            features,
            budgets: PeerBudgets::new(),
        }
    }

    /// The TXT record the driver must look up now ([`FEATURES_RECORD`], [`PERCENTAGE_RECORD`]),
    /// once per reading. An answer later than [`protocol::TXT_LOOKUP_TIMEOUT`] from `now` is
    /// not waited for: the reading fails then, as a failed lookup does.
    pub fn poll_lookup(&mut self, now: Instant) -> Option<&'static str> {
        if let Some(f) = self.features.as_mut().filter(|f| f.lookup == Lookup::Due) {
            f.lookup = Lookup::Asked(now + protocol::TXT_LOOKUP_TIMEOUT);
            return Some(FEATURES_RECORD);
        }
        let s = self.selector.as_mut()?;
        (s.lookup == Lookup::Due).then(|| {
            s.lookup = Lookup::Asked(now + protocol::TXT_LOOKUP_TIMEOUT);
            PERCENTAGE_RECORD
        })
    }

    /// A reading that failed: the protocol stays, the record is read again after the TTL.
    fn refresh_failed(&mut self, now: Instant, reason: RefreshFailure) {
        if let Some(s) = self.selector.as_mut() {
            s.lookup = Lookup::At(now + self.config.selector_ttl);
            self.events
                .push_back(SupervisorEvent::ProtocolRefreshFailed { reason });
        }
    }

    /// A reading of the feature record ended: `read` is the record if it read, else why not.
    /// As cloudflared's `refresh`, a failed reading keeps the record before (the defaults at
    /// first). The first reading lets connection 0 start.
    fn features_read(&mut self, now: Instant, read: Result<FeaturesRecord, FeaturesFailure>) {
        let Some(f) = self.features.as_mut() else {
            return;
        };
        f.lookup = Lookup::At(now + self.config.features_ttl);
        let first = !std::mem::replace(&mut f.read_once, true);
        match read {
            Ok(record) => f.record = record,
            Err((reason, error)) => self
                .events
                .push_back(SupervisorEvent::FeaturesRefreshFailed {
                    reason,
                    error,
                    first,
                }),
        }
        let version = f.record.datagram_version(&f.account_tag);
        if first || version != f.version {
            f.version = version;
            features::set_datagram_version(
                &mut self.config.connector.registration.features,
                version,
            );
            self.events
                .push_back(SupervisorEvent::DatagramVersionSelected {
                    version,
                    record: f.record,
                });
        }
        if first
            && self.state == State::Starting
            && self
                .slots
                .first()
                .is_some_and(|s| matches!(s.phase, Phase::Waiting))
        {
            self.sync_flow_gates();
            self.start(now, 0);
            self.progress(now);
        }
    }

    /// The driver looked up the TXT record `name`: its first record's text, none if the lookup
    /// failed. A record that selects another protocol than before changes the protocol of new
    /// connections; a failed or unreadable one keeps it (cloudflared's `Current`). The feature
    /// record likewise sets the datagram version of new connections.
    pub fn handle_txt_record(&mut self, now: Instant, name: &str, text: Option<&str>) {
        if name == FEATURES_RECORD {
            // An answer after the deadline was given up on already.
            if !matches!(
                self.features.as_ref().map(|f| f.lookup),
                Some(Lookup::Asked(_))
            ) {
                return;
            }
            let read = match text {
                None => Err((RefreshFailure::LookupFailed, None)),
                Some(t) => {
                    FeaturesRecord::parse(t).map_err(|e| (RefreshFailure::Unreadable, Some(e)))
                }
            };
            self.features_read(now, read);
            return;
        }
        let ttl = self.config.selector_ttl;
        let Some(s) = self.selector.as_mut() else {
            return;
        };
        // An answer after the deadline was given up on already.
        if name != PERCENTAGE_RECORD || !matches!(s.lookup, Lookup::Asked(_)) {
            return;
        }
        s.lookup = Lookup::At(now + ttl);
        let Some(text) = text else {
            self.refresh_failed(now, RefreshFailure::LookupFailed);
            return;
        };
        let Some(selected) = protocol::selection(text, &s.account_tag) else {
            self.refresh_failed(now, RefreshFailure::Unreadable);
            return;
        };
        if selected == s.current {
            return;
        }
        s.current = selected;
        self.events
            .push_back(SupervisorEvent::ProtocolSelected { protocol: selected });
        for slot in &mut self.slots {
            if selected == Protocol::Http2 {
                // HTTP/2 is what `auto` wants now: nobody is in fallback, nothing returns.
                slot.in_fallback = false;
            }
            if !slot.in_fallback {
                slot.protocol = selected;
            }
        }
        if selected == Protocol::Http2 {
            self.quic_retry = None;
        }
        self.config.auto_initial = selected;
    }

    /// What `auto` runs on when nothing fails: the record's choice, else QUIC.
    fn selected(&self) -> Protocol {
        self.selector.as_ref().map_or(Protocol::Quic, |s| s.current)
    }

    /// Tells every place flows live (each connection's TCP flows, the UDP sessions) what the
    /// flow limit lets it admit: the limit, and the slots held by all the others. Called
    /// before control passes to any of them: between two such calls only the one called can
    /// have changed its count, so its gate is exact while it runs.
    fn sync_flow_gates(&mut self) {
        let limit = self.flow_limit;
        let total = self.flows_active();
        for s in &mut self.slots {
            if let Phase::Running(r) = &mut s.phase {
                let own = r.conn.flow_slots();
                r.conn.set_flow_gate(FlowGate::new(limit, total - own));
            }
        }
        let own = self.hub.sessions.flow_slots();
        self.hub
            .sessions
            .set_flow_gate(FlowGate::new(limit, total - own));
    }

    /// Flows holding a slot of the flow limit, process-wide: counted from the records that
    /// hold them.
    fn flows_active(&self) -> u64 {
        let tcp: u64 = self
            .slots
            .iter()
            .map(|s| match &s.phase {
                Phase::Running(r) => r.conn.flow_slots(),
                _ => 0,
            })
            .sum();
        tcp + self.hub.sessions.flow_slots()
    }

    /// HA connections this supervisor runs (after capping to the pool).
    pub fn ha_connections(&self) -> usize {
        self.slots.len()
    }

    /// Connections registered and serving now.
    pub fn ready_connections(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(&s.phase, Phase::Running(r) if r.registered))
            .count()
    }

    /// The current link of `index`, if it has a connection.
    pub fn link_of(&self, index: u8) -> Option<LinkId> {
        match &self.slots.get(index as usize)?.phase {
            Phase::Running(r) => Some(r.link),
            _ => None,
        }
    }

    /// The QUIC connection of `index`, while it has one.
    pub fn connection(&self, index: u8) -> Option<&ConnectorConnection> {
        match &self.slots.get(index as usize)?.phase {
            Phase::Running(r) => match &r.conn {
                link::Link::Quic(c) => Some(c),
                link::Link::Http2(_) => None,
            },
            _ => None,
        }
    }

    /// True once everything is closed (after a shutdown or a fatal error).
    pub fn is_stopped(&self) -> bool {
        self.state == State::Stopped
    }

    /// UDP datagrams arrived on the socket of `index` in one buffer (GRO: `stride` bytes each).
    pub fn handle_received(&mut self, now: Instant, index: u8, received: &Received<'_>) {
        self.sync_flow_gates();
        if let Some(c) = self.running_mut(index).and_then(|r| r.conn.quic()) {
            c.handle_received(now, received);
        }
        self.progress(now);
    }

    /// Lets timers fire: starts due connections, drives connection timers, enforces the
    /// shutdown deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let State::ShuttingDown(deadline) = self.state {
            if now >= deadline {
                self.events.push_back(SupervisorEvent::GracePeriodOver);
                self.close_all(now);
            }
        }
        self.try_quic_again(now);
        if let Some(f) = &mut self.features {
            match f.lookup {
                Lookup::At(at) if at <= now => f.lookup = Lookup::Due,
                Lookup::Asked(by) if by <= now => {
                    let reason = RefreshFailure::TimedOut(protocol::TXT_LOOKUP_TIMEOUT);
                    self.features_read(now, Err((reason, None)));
                }
                _ => {}
            }
        }
        if let Some(s) = &mut self.selector {
            match s.lookup {
                Lookup::At(at) if at <= now => s.lookup = Lookup::Due,
                Lookup::Asked(by) if by <= now => {
                    let reason = RefreshFailure::TimedOut(protocol::TXT_LOOKUP_TIMEOUT);
                    self.refresh_failed(now, reason);
                }
                _ => {}
            }
        }
        for i in 0..self.slots.len() {
            self.sync_flow_gates();
            match &mut self.slots[i].phase {
                Phase::StartAt(at) if *at <= now => self.start(now, i),
                // It checks which of its own timers are due.
                Phase::Running(r) => r.conn.handle_timeout(now),
                _ => {}
            }
        }
        // It checks whether its timers are due.
        self.sync_flow_gates();
        self.hub.handle_timeout(now);
        self.progress(now);
    }

    /// When [`Supervisor::handle_timeout`] must be called next.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let deadline = match self.state {
            State::ShuttingDown(d) => Some(d),
            _ => None,
        };
        // Once stopped, idle sessions have nowhere to report to: their timers do not count.
        let datagrams = match self.state {
            State::Stopped => None,
            _ => self.hub.poll_timeout(),
        };
        self.slots
            .iter_mut()
            .filter_map(|s| match &mut s.phase {
                Phase::StartAt(at) => Some(*at),
                Phase::Running(r) => r.conn.poll_timeout(),
                _ => None,
            })
            .chain(deadline)
            .chain(datagrams)
            .chain(self.quic_retry.map(|(at, _)| at))
            .chain(
                (self.selector.as_ref().map(|s| s.lookup).into_iter())
                    .chain(self.features.as_ref().map(|f| f.lookup))
                    .filter_map(|l| match l {
                        Lookup::At(at) => Some(at),
                        Lookup::Asked(by) => Some(by),
                        Lookup::Due => None,
                    }),
            )
            .min()
    }

    /// `auto`, better than cloudflared (which stays on HTTP/2): when the retry time comes, one
    /// registered HTTP/2 connection drains (unregister: the edge routes new requests to the
    /// others, those in flight finish) and its index reconnects over QUIC. If QUIC fails again
    /// it falls back as before and the next try waits twice as long; if it registers, the next
    /// HTTP/2 connection follows.
    fn try_quic_again(&mut self, now: Instant) {
        let Some((at, wait)) = self.quic_retry else {
            return;
        };
        if at > now {
            return;
        }
        match self.state {
            State::Running if self.returning.is_none() => {}
            // Index 0 not registered yet, or a return under way: look again later (a due
            // retry left as it is would be reported as the next deadline forever: a spin).
            State::Starting | State::Running => {
                self.quic_retry = Some((now + wait, wait));
                return;
            }
            // Shutting down: nothing returns.
            State::ShuttingDown(_) | State::Stopped => {
                self.quic_retry = None;
                return;
            }
        }
        if self.selected() != Protocol::Quic {
            // The percentage record wants HTTP/2 now: there is nothing to return to.
            self.quic_retry = None;
            return;
        }
        let candidate = self.slots.iter().position(|s| {
            s.protocol == Protocol::Http2 && matches!(&s.phase, Phase::Running(r) if r.registered)
        });
        let Some(i) = candidate else {
            // Nothing on HTTP/2 is serving now; look again later.
            self.quic_retry = Some((now + wait, wait));
            return;
        };
        let index = self.slots[i].index;
        // Logged by the driver, from the event below.
        self.slots[i].protocol = Protocol::Quic;
        self.slots[i].in_fallback = false;
        self.returning = Some(i);
        self.quic_retry = None;
        self.events.push_back(SupervisorEvent::ProtocolChanged {
            index,
            protocol: Protocol::Quic,
        });
        self.sync_flow_gates();
        if let Some(r) = self.slots[i].running() {
            // Only misuse errors come back; the connection closes either way.
            if let Err(e) = r.conn.shutdown(now) {
                debug!(conn_index = index, error = %e, "shutdown refused");
            }
        }
    }

    /// The next datagrams to send (at most `max_datagrams`, one GSO batch) from the socket of
    /// the returned index.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        max_datagrams: usize,
        buf: &mut Vec<u8>,
    ) -> Option<(u8, Transmit)> {
        let n = self.slots.len();
        for k in 0..n {
            let i = (self.cursor + k) % n;
            if let Some(c) = self.slots[i].running().and_then(|r| r.conn.quic()) {
                if let Some(t) = c.poll_transmit(now, max_datagrams, buf) {
                    self.cursor = (i + 1) % n;
                    return Some((self.slots[i].index, t));
                }
            }
        }
        None
    }

    /// The next thing to do with an origin connection, and the link it belongs to.
    pub fn poll_origin_action(&mut self) -> Option<(LinkId, OriginAction)> {
        if self.actions.is_empty() {
            for s in &mut self.slots {
                if let Phase::Running(r) = &mut s.phase {
                    while let Some(a) = r.conn.poll_origin_action() {
                        self.actions.push_back((r.link, a));
                    }
                }
            }
        }
        self.actions.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<SupervisorEvent> {
        self.events.pop_front().or_else(|| {
            self.hub
                .sessions
                .poll_notice()
                .map(SupervisorEvent::Session)
        })
    }

    /// The TCP connection of HTTP/2 link `link` is up, from local address `local`.
    pub fn handle_edge_connected(&mut self, now: Instant, link: LinkId, local: IpAddr) {
        self.with_http2(now, link, |c| c.handle_connected(now, local));
    }

    /// The TCP connection of HTTP/2 link `link` could not be made, or failed.
    pub fn handle_edge_failed(&mut self, now: Instant, link: LinkId, reason: &str) {
        self.with_http2(now, link, |c| c.handle_failed(now, reason));
    }

    /// Bytes read from the TCP connection of `link` (empty: the edge closed it).
    pub fn handle_edge_bytes(&mut self, now: Instant, link: LinkId, data: &[u8]) {
        self.with_http2(now, link, |c| c.handle_bytes(now, data));
    }

    /// The last write to the TCP connection of `link` completed.
    pub fn handle_edge_written(&mut self, now: Instant, link: LinkId) {
        self.with_http2(now, link, |c| c.handle_written(now));
    }

    /// Whether the driver may read the TCP connection of `link` now.
    pub fn edge_wants_read(&mut self, link: LinkId) -> bool {
        self.http2_of(link).is_some_and(|c| c.wants_read())
    }

    /// The HTTP/2 link with ciphertext to write now (the bytes are [`Supervisor::edge_lent`]).
    pub fn poll_edge_write(&mut self, now: Instant) -> Option<LinkId> {
        self.sync_flow_gates();
        let n = self.slots.len();
        for k in 0..n {
            let i = (self.cursor + k) % n;
            let Some(r) = self.slots[i].running() else {
                continue;
            };
            let link = r.link;
            let Some(c) = r.conn.http2() else { continue };
            if c.poll_write(now).is_some() {
                self.cursor = (i + 1) % n;
                return Some(link);
            }
        }
        // A link whose last bytes are now written reports its end.
        let mut released = false;
        for s in &mut self.slots {
            if let Some(c) = s.running().and_then(|r| r.conn.http2()) {
                released |= c.release_close();
            }
        }
        if released {
            self.progress(now);
        }
        None
    }

    /// Whether events wait for [`Supervisor::poll_event`].
    pub fn has_events(&self) -> bool {
        !self.events.is_empty() || self.hub.sessions.has_notices()
    }

    /// The ciphertext the last [`Supervisor::poll_edge_write`] lent for `link`.
    pub fn edge_lent(&mut self, link: LinkId) -> &[u8] {
        self.http2_of(link).map_or(&[], |c| c.lent())
    }

    fn http2_of(&mut self, link: LinkId) -> Option<&mut Http2Link> {
        self.slots.iter_mut().find_map(|s| match &mut s.phase {
            Phase::Running(r) if r.link == link => r.conn.http2(),
            _ => None,
        })
    }

    fn with_http2(&mut self, now: Instant, link: LinkId, f: impl FnOnce(&mut Http2Link)) {
        self.sync_flow_gates();
        if let Some(c) = self.http2_of(link) {
            f(c);
            self.progress(now);
        }
    }

    /// The origin of `flow` is connected and its TLS handshake begins. Stale links are
    /// ignored.
    pub fn handle_flow_handshaking(&mut self, now: Instant, link: LinkId, flow: FlowId) {
        self.with_link(now, link, |c| c.handle_flow_handshaking(now, flow));
    }

    /// The in-process origin of `flow` began a destination dial. Stale links are ignored.
    pub fn handle_flow_dialing(&mut self, now: Instant, link: LinkId, flow: FlowId) {
        self.with_link(now, link, |c| c.handle_flow_dialing(now, flow));
    }

    /// That destination dial ended. Stale links are ignored.
    pub fn handle_flow_dialed(&mut self, now: Instant, link: LinkId, flow: FlowId) {
        self.with_link(now, link, |c| c.handle_flow_dialed(flow));
    }

    /// The origin of `flow` speaks HTTP/2 through core's bridge. Stale links are ignored.
    pub fn handle_flow_http2(&mut self, now: Instant, link: LinkId, flow: FlowId) {
        self.with_link(now, link, |c| c.handle_flow_http2(flow));
    }

    /// The origin connection of `flow` is up. Stale links are ignored.
    pub fn handle_flow_connected(&mut self, now: Instant, link: LinkId, flow: FlowId) {
        self.with_link(now, link, |c| c.handle_flow_connected(now, flow));
    }

    /// The origin connection of `flow` failed.
    pub fn handle_flow_failed(&mut self, now: Instant, link: LinkId, flow: FlowId, reason: &str) {
        self.with_link(now, link, |c| c.handle_flow_failed(now, flow, reason));
    }

    /// Bytes from the origin of `flow`; returns how many were taken (0 for a stale link).
    pub fn handle_flow_data(
        &mut self,
        now: Instant,
        link: LinkId,
        flow: FlowId,
        bytes: &bytes::Bytes,
    ) -> usize {
        self.with_link(now, link, |c| c.handle_flow_data(now, flow, bytes))
            .unwrap_or(0)
    }

    /// The origin of `flow` closed its side.
    pub fn handle_flow_finished(&mut self, now: Instant, link: LinkId, flow: FlowId) {
        self.with_link(now, link, |c| c.handle_flow_finished(now, flow));
    }

    /// The last write to `flow` completed.
    pub fn handle_flow_written(&mut self, now: Instant, link: LinkId, flow: FlowId) {
        self.with_link(now, link, |c| c.handle_flow_written(now, flow));
    }

    /// The process-wide flow figures: TCP flows and UDP sessions holding a slot, the limit,
    /// refusals by kind.
    pub fn flow_stats(&self) -> FlowStats {
        let mut rejected = [0; 2];
        rejected[FlowType::Tcp as usize] = self.requests.tcp_refused;
        rejected[FlowType::Udp as usize] = self.hub.sessions.stats().rate_limited;
        FlowStats {
            limit: self.flow_limit,
            active: self.flows_active(),
            rejected,
        }
    }

    /// What every request of this process came to (connections gone included).
    pub fn request_stats(&self) -> &RequestStats {
        &self.requests
    }

    /// What the closed QUIC connections of `index` counted (their counters summed, the last
    /// one's gauges).
    pub fn closed_quic(&self, index: u8) -> Option<&IndexFigures> {
        self.closed_quic.get(&index)
    }

    /// The datagram plane, for its counters ([`DatagramHub::stats`], `sessions.stats()`,
    /// `sessions.active()`, `icmp.funnels()`).
    pub fn datagram_hub(&self) -> &DatagramHub {
        &self.hub
    }

    /// Graceful shutdown: every connection unregisters and drains; nothing reconnects. The
    /// grace period bounds the whole. A second call closes everything at once.
    pub fn shutdown(&mut self, now: Instant) {
        match self.state {
            State::Stopped => return,
            // The driver logs the signal it turned into this input.
            State::ShuttingDown(_) => self.close_all(now),
            State::Starting | State::Running => {
                self.state = State::ShuttingDown(now + self.config.connector.grace_period);
                for i in 0..self.slots.len() {
                    self.sync_flow_gates();
                    let s = &mut self.slots[i];
                    match &mut s.phase {
                        Phase::Running(r) => {
                            // Only misuse errors come back; the connection closes either way.
                            if let Err(e) = r.conn.shutdown(now) {
                                debug!(conn_index = s.index, error = %e, "shutdown refused");
                            }
                        }
                        _ => s.phase = Phase::Stopped,
                    }
                }
            }
        }
        self.progress(now);
    }

    fn close_all(&mut self, now: Instant) {
        for i in 0..self.slots.len() {
            self.sync_flow_gates();
            if let Phase::Running(r) = &mut self.slots[i].phase {
                r.conn.close_now(now);
            }
            // What is still running closes with CONNECTION_CLOSE once polled; the driver
            // flushes transmits and exits.
        }
        for s in &mut self.slots {
            if let Phase::Running(r) = std::mem::replace(&mut s.phase, Phase::Stopped) {
                self.hub.link_closed(r.link, None);
                self.events.push_back(SupervisorEvent::LinkClosed {
                    index: s.index,
                    link: r.link,
                    reason: CloseReason::Local(LocalClose::Shutdown),
                    was_registered: r.registered,
                });
                // Keep it around only to flush its CONNECTION_CLOSE.
                s.phase = Phase::Running(r);
            }
        }
        self.v2_calls.clear();
        self.state = State::Stopped;
        self.events.push_back(SupervisorEvent::Stopped);
    }

    fn running_mut(&mut self, index: u8) -> Option<&mut Running> {
        match &mut self.slots.get_mut(index as usize)?.phase {
            Phase::Running(r) => Some(r),
            _ => None,
        }
    }

    /// Every connection, and every later one, holds new streams and flows to limits changed
    /// by `change` (new Access keys, a configuration push).
    pub(crate) fn change_data_limits(&mut self, change: impl Fn(&mut DataLimits)) {
        for s in &mut self.slots {
            if let Phase::Running(r) = &mut s.phase {
                change(r.conn.limits_mut());
            }
        }
        change(&mut self.config.connector.data);
    }

    /// TCP flows and UDP sessions opened from now on to the virtual DNS service go to
    /// `resolvers` ([`crate::virtual_dns`]).
    pub(crate) fn set_dns_resolvers(&mut self, resolvers: &Arc<[std::net::SocketAddr]>) {
        self.change_data_limits(|l| l.dns_resolvers = resolvers.clone());
        self.hub.sessions.set_dns_resolvers(resolvers.clone());
    }

    /// The ingress rules in force (the last configuration push's, else the local ones).
    pub(crate) fn ingress(&self) -> Option<&std::sync::Arc<crate::ingress::Ingress>> {
        self.config.connector.data.ingress.as_ref()
    }

    fn with_link<T>(
        &mut self,
        now: Instant,
        link: LinkId,
        f: impl FnOnce(&mut Link) -> T,
    ) -> Option<T> {
        self.sync_flow_gates();
        let r = self.slots.iter_mut().find_map(|s| match &mut s.phase {
            Phase::Running(r) if r.link == link => Some(r),
            _ => None,
        })?;
        let out = f(&mut r.conn);
        self.progress(now);
        Some(out)
    }

    /// Starts a connection attempt for slot `i`.
    fn start(&mut self, now: Instant, i: usize) {
        let index = self.slots[i].index;
        let edge = match self.pool.get_addr(now, index, &mut self.rng) {
            Ok(a) => a,
            Err(e) => {
                self.fatal_or_retry(now, i, e.into());
                return;
            }
        };
        let mut config = self.config.connector.clone();
        config.registration.conn_index = index;
        config.registration.num_previous_attempts =
            u8::try_from(self.slots[i].backoff.retries).unwrap_or(u8::MAX);
        // cloudflared sends the edge's address here on QUIC (PROTOCOL.md C§7 #24).
        config.registration.origin_local_ip = Some(edge.ip());
        // Only here is the family known: an IPv6 path has 20 bytes less room per packet.
        config
            .client
            .transport_config(self.config.quic.connector_transport_config(edge.is_ipv4()));
        config.max_streams = self.config.quic.max_concurrent_bidi_streams;
        config.receive_window = GrowingWindow::new(&self.config.quic);
        if index != 0 {
            config.local_config = None;
        }
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        let link = LinkId(self.next_link);
        self.next_link += 1;
        let protocol = self.slots[i].protocol;
        let conn = match (protocol, &self.config.http2_tls) {
            (Protocol::Quic, _) => ConnectorConnection::connect(now, config, edge, seed)
                .map(Link::Quic)
                .map_err(|e| StartError::Quic(e.to_string())),
            (Protocol::Http2, Some(tls)) => {
                // cloudflared sends the TCP socket's local address here: set once connected.
                config.registration.origin_local_ip = None;
                Http2Link::new(now, config, tls.clone())
                    .map(|c| Link::Http2(Box::new(c)))
                    .map_err(|e| StartError::Http2(e.to_string()))
            }
            (Protocol::Http2, None) => Err(StartError::NoHttp2Tls),
        };
        match conn {
            Ok(conn) => {
                debug!(conn_index = index, %link, %edge, %protocol, "connecting");
                // Its UDP flows are counted under its index (cloudflared's `conn_index`).
                self.hub.sessions.set_link_index(link, index);
                self.events.push_back(SupervisorEvent::Connecting {
                    index,
                    link,
                    edge,
                    protocol,
                });
                self.slots[i].phase = Phase::Running(Box::new(Running {
                    conn,
                    link,
                    edge,
                    registered: false,
                }));
                self.sync_flow_gates();
            }
            Err(error) => {
                self.events
                    .push_back(SupervisorEvent::StartFailed { index, edge, error });
                self.retry(now, i, true, false);
            }
        }
    }

    fn fatal_or_retry(&mut self, now: Instant, i: usize, e: SupervisorError) {
        if self.state == State::Starting {
            self.fatal(now, e);
        } else {
            let index = self.slots[i].index;
            self.events
                .push_back(SupervisorEvent::ConnectFailed { index, error: e });
            self.retry(now, i, false, false);
        }
    }

    fn fatal(&mut self, now: Instant, e: SupervisorError) {
        self.events.push_back(SupervisorEvent::Fatal(e));
        self.close_all(now);
    }

    /// Schedules slot `i` again after backoff, rotating its address when asked.
    fn retry(&mut self, now: Instant, i: usize, dial_failure: bool, rotate: bool) {
        let index = self.slots[i].index;
        if matches!(self.state, State::ShuttingDown(_) | State::Stopped) {
            self.slots[i].phase = Phase::Stopped;
            self.pool.release(index);
            return;
        }
        // cloudflared falls back after `max_edge_addr_retries` dial failures in a row, or with
        // the backoff at its cap; burrow also after a few QUIC handshake timeouts in a row.
        let mut dial_cap = false;
        if dial_failure {
            let slot = &mut self.slots[i];
            slot.dial_failures += 1;
            if slot.dial_failures > self.config.max_edge_addr_retries {
                slot.dial_failures = 0;
                dial_cap = true;
            }
        }
        let slot = &self.slots[i];
        let fall_back = dial_cap
            || slot.backoff.retries >= slot.backoff.max_retries
            || slot.quic_timeouts >= self.config.fallback_after_timeouts.max(1);
        if fall_back && slot.protocol == Protocol::Quic {
            if self.config.protocol == ProtocolFlag::Auto && self.config.http2_tls.is_some() {
                let base = self.config.quic_retry_interval;
                let wait = match self.returning.take() {
                    // The try failed: wait longer before the next one.
                    Some(r) if r == i => self
                        .quic_retry
                        .map_or(base * 2, |(_, w)| (w * 2).min(base * 16)),
                    _ => base,
                };
                if self.quic_retry.is_none_or(|(at, _)| at < now + wait) {
                    self.quic_retry = Some((now + wait, wait));
                }
                let slot = &mut self.slots[i];
                slot.protocol = Protocol::Http2;
                slot.in_fallback = true;
                slot.quic_timeouts = 0;
                slot.dial_failures = 0;
                slot.backoff.retries = 0;
                self.events.push_back(SupervisorEvent::ProtocolChanged {
                    index,
                    protocol: Protocol::Http2,
                });
            } else if dial_cap {
                self.events
                    .push_back(SupervisorEvent::FallbackUnavailable { index });
            }
        }
        if dial_failure || rotate {
            if let Err(e) = self
                .pool
                .get_different_addr(now, index, dial_failure, &mut self.rng)
            {
                debug!(conn_index = index, error = %e, "no other edge address");
                self.pool.release(index);
            }
        }
        let (delay, up_to) = self.slots[i].backoff.next_delay(&mut self.rng);
        self.events.push_back(SupervisorEvent::Reconnecting {
            index,
            delay,
            up_to,
        });
        // Never schedule at `now` itself: a timeout that does not move forward is a busy loop.
        self.slots[i].phase = Phase::StartAt(now + delay.max(Duration::from_millis(1)));
    }

    /// Collects connection events and acts on them.
    fn progress(&mut self, now: Instant) {
        // Rules a configuration push brought: every connection takes them below.
        let mut pushed = None;
        let mut tcp_connect_timeout = None;
        for i in 0..self.slots.len() {
            let index = self.slots[i].index;
            let mut closed = None;
            // What the connection's events ask of the others (the session manager) or of the
            // connection itself, done once its events are read: each such call may admit
            // flows, so the flow gates are brought up to date before it.
            let mut deferred = VecDeque::new();
            while let Phase::Running(r) = &mut self.slots[i].phase {
                while let Some(ev) = r.conn.poll_event() {
                    match ev {
                        ConnectorEvent::Registered(details) => {
                            r.registered = true;
                            self.events.push_back(SupervisorEvent::Registered {
                                index,
                                link: r.link,
                                edge: r.edge,
                                protocol: r.conn.protocol(),
                                details,
                            });
                        }
                        ConnectorEvent::RegistrationFailed(error) => {
                            self.events
                                .push_back(SupervisorEvent::RegistrationFailed { index, error });
                        }
                        ConnectorEvent::LocalConfigurationFailed(reason) => self
                            .events
                            .push_back(SupervisorEvent::LocalConfigurationFailed { index, reason }),
                        ConnectorEvent::Unregistered => {}
                        ConnectorEvent::UnregisterFailed(reason) => self
                            .events
                            .push_back(SupervisorEvent::UnregisterFailed { index, reason }),
                        ConnectorEvent::DrainCutShort { streams } => self
                            .events
                            .push_back(SupervisorEvent::DrainCutShort { index, streams }),
                        ConnectorEvent::UdpUnregisterFailed { id, failure } => {
                            if let Verdict::Log { suppressed } =
                                self.budgets.udp_unregister.check(now)
                            {
                                self.events.push_back(SupervisorEvent::UdpUnregisterFailed {
                                    index,
                                    session: id,
                                    failure,
                                    suppressed,
                                });
                            }
                        }
                        ConnectorEvent::RpcRefused(refusal) => {
                            if let Verdict::Log { suppressed } = self.budgets.rpc_refused.check(now)
                            {
                                self.events.push_back(SupervisorEvent::RpcRefused {
                                    index,
                                    refusal,
                                    suppressed,
                                });
                            }
                        }
                        ConnectorEvent::Called(call) => self
                            .events
                            .push_back(SupervisorEvent::RpcCalled { index, call }),
                        ConnectorEvent::ConfigurationOffered {
                            stream,
                            version,
                            config,
                        } => {
                            // Without rules of its own the connector proxies as the edge asks,
                            // whatever a push says.
                            let max_active_flows = self.config.max_active_flows;
                            let mut limit = None;
                            let result = self.versions.offer(version, || {
                                let (remote, new) =
                                    RemoteConfig::from_json(&config).map_err(|e| e.to_string())?;
                                if let Some(local) = &self.config.connector.data.ingress {
                                    pushed =
                                        Some(std::sync::Arc::new(new.keeping_internal_of(local)));
                                }
                                // cloudflared replaces the whole warp-routing section, its
                                // default included.
                                tcp_connect_timeout = Some(
                                    remote
                                        .warp_routing
                                        .connect_timeout
                                        .map_or(crate::tunnel::dial::TCP_DIAL_TIMEOUT, |d| d.0),
                                );
                                limit = Some(effective_limit(
                                    max_active_flows,
                                    remote.warp_routing.max_active_flows,
                                ));
                                Ok(())
                            });
                            if let Some(limit) = limit.filter(|l| *l != self.flow_limit) {
                                // Flows already active stay; new ones wait for room.
                                self.flow_limit = limit;
                                deferred.push_back(Deferred::LimitChanged(limit));
                            }
                            self.events.push_back(match &result.error {
                                None => SupervisorEvent::ConfigurationApplied {
                                    version: result.latest_applied_version,
                                },
                                Some(error) => SupervisorEvent::ConfigurationRefused {
                                    version,
                                    error: error.clone(),
                                },
                            });
                            deferred.push_back(Deferred::Respond(stream, result));
                        }
                        ConnectorEvent::UdpSessionRequested {
                            stream,
                            id,
                            dest,
                            idle_hint_nanos,
                        } => {
                            // Answered once the manager decides (`poll_datagram_action`).
                            self.v2_calls.entry((r.link, id)).or_default().push(stream);
                            deferred.push_back(Deferred::RegisterV2 {
                                link: r.link,
                                id,
                                dest,
                                idle_hint_nanos,
                            });
                        }
                        ConnectorEvent::UdpSessionUnregistered { id, message } => {
                            deferred.push_back(Deferred::UnregisterV2 { id, message });
                        }
                        ConnectorEvent::SessionMethodRefused(method) => {
                            self.hub.sessions.count_unsupported(r.link, method);
                        }
                        ConnectorEvent::Closed { reason } => closed = Some(reason),
                    }
                }
                if deferred.is_empty() {
                    break;
                }
                while let Some(d) = deferred.pop_front() {
                    self.sync_flow_gates();
                    match d {
                        Deferred::LimitChanged(limit) => {
                            let active = self.flows_active();
                            self.events
                                .push_back(SupervisorEvent::FlowLimitChanged { limit, active });
                        }
                        Deferred::Respond(stream, result) => {
                            if let Some(r) = self.slots[i].running() {
                                if let Err(e) = r.conn.respond_configuration(now, stream, &result) {
                                    debug!(link = %r.link, error = %e, "cannot answer the configuration push");
                                }
                            }
                        }
                        Deferred::RegisterV2 {
                            link,
                            id,
                            dest,
                            idle_hint_nanos,
                        } => self
                            .hub
                            .sessions
                            .register_v2(now, link, id, dest, idle_hint_nanos),
                        Deferred::UnregisterV2 { id, message } => {
                            self.hub.sessions.unregister_v2(id, &message);
                        }
                    }
                }
            }
            let Phase::Running(r) = &mut self.slots[i].phase else {
                continue;
            };
            // Origin actions are moved out before the connection can go away.
            while let Some(a) = r.conn.poll_origin_action() {
                self.actions.push_back((r.link, a));
            }
            let taken = r.conn.take_request_stats();
            if !taken.is_empty() {
                self.requests.add(&taken);
            }
            for refusal in r.conn.take_flow_refusals() {
                if let Verdict::Log { suppressed } = self.budgets.flow_refused.check(now) {
                    self.events.push_back(SupervisorEvent::FlowRefused {
                        index,
                        dest: refusal.dest,
                        limit: refusal.limit,
                        suppressed,
                    });
                }
            }
            for reset in r.conn.take_held_resets() {
                if let Verdict::Log { suppressed } = self.budgets.held_reset.check(now) {
                    self.events.push_back(SupervisorEvent::HeldRequestReset {
                        index,
                        host: reset.host,
                        waited: reset.waited,
                        stall: reset.stall,
                        suppressed,
                    });
                }
            }
            if r.registered && self.returning == Some(i) && r.conn.protocol() == Protocol::Quic {
                // QUIC works again: the next HTTP/2 connection follows shortly.
                self.returning = None;
                if self.slots.iter().any(|s| s.in_fallback) {
                    let next = now + self.config.registration_interval;
                    self.quic_retry = Some((next, self.config.quic_retry_interval));
                }
            }
            let Phase::Running(r) = &mut self.slots[i].phase else {
                continue;
            };
            if r.registered {
                // cloudflared's connectedFuse: a registration resets the backoff.
                self.slots[i].backoff.retries = 0;
                self.slots[i].dial_failures = 0;
                self.slots[i].quic_timeouts = 0;
                if self.state == State::Starting && index == 0 {
                    self.state = State::Running;
                    self.schedule_ha(now);
                }
            }
            if let Some(reason) = closed {
                self.on_closed(now, i, reason);
            }
        }
        if let Some(ingress) = pushed {
            self.change_data_limits(|l| l.ingress = Some(ingress.clone()));
        }
        if let Some(timeout) = tcp_connect_timeout {
            self.change_data_limits(|l| l.tcp_connect_timeout = timeout);
        }
        if let State::ShuttingDown(_) = self.state {
            if self.slots.iter().all(|s| matches!(s.phase, Phase::Stopped)) {
                self.state = State::Stopped;
                self.events.push_back(SupervisorEvent::Stopped);
            }
        }
    }

    /// Index 0 registered: the others start, one interval apart (cloudflared's `initialize`).
    fn schedule_ha(&mut self, now: Instant) {
        let interval = self.config.registration_interval;
        let (protocol, in_fallback) = (self.slots[0].protocol, self.slots[0].in_fallback);
        for s in self.slots.iter_mut().skip(1) {
            if matches!(s.phase, Phase::Waiting) {
                // cloudflared's `initialize`: the others start on index 0's protocol.
                s.protocol = protocol;
                s.in_fallback = in_fallback;
                let k = u32::from(s.index) - 1;
                s.phase = Phase::StartAt(now + interval * k);
            }
        }
    }

    fn on_closed(&mut self, now: Instant, i: usize, reason: CloseReason) {
        let Phase::Running(r) = std::mem::replace(&mut self.slots[i].phase, Phase::Stopped) else {
            return;
        };
        let mut r = r;
        self.requests.add(&r.conn.take_request_stats());
        let index = self.slots[i].index;
        if let link::Link::Quic(c) = &r.conn {
            // Its final figures, so an index's QUIC counters stay whole across reconnects.
            let last = IndexFigures::of(c);
            let closed = self.closed_quic.entry(index).or_default();
            *closed = closed.then(&last);
        }
        if self.state == State::Stopped {
            // close_all already reported it.
            return;
        }
        self.datagram_link_gone(r.link);
        self.events.push_back(SupervisorEvent::LinkClosed {
            index,
            link: r.link,
            reason: reason.clone(),
            was_registered: r.registered,
        });
        if let CloseReason::Local(LocalClose::Registration(refused)) = &reason {
            // cloudflared: a permanent refusal of the first connection ends the process unless
            // it is a duplicate or unauthorized; everything else is retried forever.
            let refusal = refused.refusal();
            if self.state == State::Starting && !refused.should_retry() && refusal == Refusal::Other
            {
                self.fatal(now, SupervisorError::InitialConnection(refused.clone()));
                return;
            }
            self.retry(now, i, false, refusal == Refusal::DuplicateConnection);
            return;
        }
        let dial_failure = !r.registered;
        // An idle timeout of a served connection means the path to that edge died: rotate.
        let rotate = reason == CloseReason::TimedOut;
        // A QUIC handshake that timed out is what blocked UDP looks like.
        let slot = &mut self.slots[i];
        if r.conn.protocol() == Protocol::Quic && dial_failure && rotate {
            slot.quic_timeouts += 1;
        } else {
            slot.quic_timeouts = 0;
        }
        self.retry(now, i, dial_failure, rotate);
    }
}

#[cfg(test)]
mod tests;
