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
//! connection it replaces. The driver owns one UDP socket per index (cloudflared reuses the
//! local port per index) and feeds datagrams by index.
//!
//! The datagram plane (UDP sessions and ICMP, one [`DatagramHub`] for every connection) lives
//! here too, so that the driver only moves bytes between sockets and the supervisor:
//! [`Supervisor::drain_datagrams`] after every input hands out what leaves through an origin
//! socket, [`Supervisor::udp_origin_read`] and [`Supervisor::ping_reply`] take what origin
//! sockets read, and [`Supervisor::poll_datagram_action`] says which sockets to open and close.
//! Datagram-v2 registrations and unregistrations over RPC are answered here, and when a
//! connection goes its sessions move to a surviving registered one.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use quinn_proto::StreamId;
use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use thiserror::Error;
use tracing::{debug, info, warn};

use super::connector::{
    CloseReason, ConnectorConfig, ConnectorConnection, ConnectorEvent, LocalClose,
};
use super::data::{FlowId, OriginAction};
use super::udp::{DatagramHub, Egress, HubAction, Links};
use super::{Received, Transmit};
use crate::control::{ConnectionDetails, Refusal, RegistrationError};
use crate::datagram::LinkId;
use crate::flow::{effective_limit, FlowLimiter};
use crate::icmp::{FunnelId, IcmpRouter, RouterConfig};
use crate::ingress::RemoteConfig;
use crate::quic::transport::QuicSettings;
use crate::rpc_stream::ConfigVersions;
use crate::session::{SessionAction, SessionId, SessionLimits, SessionManager, UdpFlowId};

/// Which address families of the edge to use (`--edge-ip-version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IpVersion {
    /// The family of the first address the resolver returned, the other as fallback.
    #[default]
    Auto,
    /// IPv4 only.
    V4,
    /// IPv6 only.
    V6,
}

/// No edge address could be handed out.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PoolError {
    /// Every address is held by another connection (cloudflared's `ErrNoAddressesLeft`).
    #[error("there are no free edge addresses left to resolve to")]
    NoAddressesLeft,
    /// Nothing survived the IP-version filter.
    #[error("no edge address of the requested IP version")]
    NoAddressOfVersion,
    /// SRV discovery found fewer than the two regions cloudflared needs.
    #[error("expected at least 2 Cloudflare Regions regions, but SRV only returned {0}")]
    TooFewRegions(usize),
}

/// The SRV name of the edge (cloudflared's `edgediscovery`): the global service, or
/// `--region`'s (`us`, ...) when one is given.
pub fn srv_service(region: Option<&str>) -> String {
    match region {
        Some(r) if !r.is_empty() => format!("_{r}-v2-origintunneld._tcp.argotunnel.com."),
        _ => "_v2-origintunneld._tcp.argotunnel.com.".to_owned(),
    }
}

/// One region's addresses, split by family as cloudflared's `Region` does.
#[derive(Debug, Clone)]
struct Region {
    primary: Vec<SocketAddr>,
    secondary: Vec<SocketAddr>,
    /// On the secondary family until then (an IPv6 connectivity error moved us there).
    secondary_until: Option<Instant>,
}

impl Region {
    fn new(addrs: &[SocketAddr], version: IpVersion) -> Self {
        let (v4, v6): (Vec<_>, Vec<_>) = addrs.iter().partition(|a| a.is_ipv4());
        let (primary, secondary) = match version {
            IpVersion::V4 => (v4, Vec::new()),
            IpVersion::V6 => (v6, Vec::new()),
            IpVersion::Auto if addrs.first().is_some_and(|a| a.is_ipv6()) => (v6, v4),
            IpVersion::Auto => (v4, v6),
        };
        Self {
            primary,
            secondary,
            secondary_until: None,
        }
    }

    fn active(&self, now: Instant) -> &[SocketAddr] {
        match self.secondary_until {
            Some(until) if now < until && !self.secondary.is_empty() => &self.secondary,
            _ => &self.primary,
        }
    }

    fn len(&self) -> usize {
        self.primary.len().max(self.secondary.len())
    }
}

/// How long an IPv6 connectivity error moves a region to IPv4 (cloudflared's `timeoutDuration`).
const SECONDARY_FOR: Duration = Duration::from_secs(600);

/// Edge addresses and which HA index holds which (cloudflared's `edgediscovery`).
#[derive(Debug, Clone)]
pub struct EdgePool {
    regions: [Region; 2],
    /// Held address per index.
    held: Vec<Option<SocketAddr>>,
    /// Static edge: an address may serve several indexes (see [`EdgePool::from_static`]).
    shared: bool,
}

impl EdgePool {
    /// Addresses from SRV discovery: target 0 is region 1, target 1 region 2, in resolver order.
    pub fn from_regions(
        region1: &[SocketAddr],
        region2: &[SocketAddr],
        version: IpVersion,
    ) -> Result<Self, PoolError> {
        let pool = Self {
            regions: [Region::new(region1, version), Region::new(region2, version)],
            held: Vec::new(),
            shared: false,
        };
        if pool.capacity() == 0 {
            return Err(PoolError::NoAddressOfVersion);
        }
        Ok(pool)
    }

    /// Addresses of the SRV targets of [`srv_service`], in the resolver's order: the first two
    /// targets are the two regions, more are ignored (cloudflared's `ResolveEdge`).
    pub fn from_srv_targets(
        targets: &[Vec<SocketAddr>],
        version: IpVersion,
    ) -> Result<Self, PoolError> {
        match targets {
            [r1, r2, ..] => Self::from_regions(r1, r2, version),
            _ => Err(PoolError::TooFewRegions(targets.len())),
        }
    }

    /// A static `--edge` list: entries alternate between the two regions as in cloudflared,
    /// the IP version is ignored. Unlike cloudflared, an address may carry several HA
    /// connections, so one self-hosted edge gets all of them (cloudflared caps HA at the number
    /// of addresses and spins when rotation finds no other address, PROTOCOL.md C§7 #1).
    pub fn from_static(addrs: &[SocketAddr]) -> Result<Self, PoolError> {
        let r1: Vec<_> = addrs.iter().copied().step_by(2).collect();
        let r2: Vec<_> = addrs.iter().copied().skip(1).step_by(2).collect();
        let mut pool = Self::from_regions(&r1, &r2, IpVersion::Auto)?;
        pool.regions.iter_mut().for_each(|r| {
            r.primary.append(&mut r.secondary);
        });
        pool.shared = true;
        Ok(pool)
    }

    /// How many HA connections the pool can serve at once.
    pub fn capacity(&self) -> usize {
        if self.shared {
            usize::MAX
        } else {
            self.regions.iter().map(Region::len).sum()
        }
    }

    fn users(&self, addr: SocketAddr) -> usize {
        self.held.iter().filter(|h| **h == Some(addr)).count()
    }

    /// The address `index` holds, or a new one for it.
    pub fn get_addr(
        &mut self,
        now: Instant,
        index: u8,
        rng: &mut impl Rng,
    ) -> Result<SocketAddr, PoolError> {
        if let Some(Some(a)) = self.held.get(index as usize) {
            return Ok(*a);
        }
        let addr = self.pick(now, None, rng)?;
        self.hold(index, Some(addr));
        Ok(addr)
    }

    /// Gives back what `index` holds and picks another address. With `connectivity_error`, a
    /// failing IPv6 address moves its region to IPv4 for a while (cloudflared's `GiveBack`).
    pub fn get_different_addr(
        &mut self,
        now: Instant,
        index: u8,
        connectivity_error: bool,
        rng: &mut impl Rng,
    ) -> Result<SocketAddr, PoolError> {
        let old = self.held.get(index as usize).copied().flatten();
        self.hold(index, None);
        if let (Some(old), true) = (old, connectivity_error) {
            for r in &mut self.regions {
                let on_secondary = r.secondary_until.is_some_and(|u| now < u);
                if old.is_ipv6() && r.primary.contains(&old) && !r.secondary.is_empty() {
                    r.secondary_until = Some(now + SECONDARY_FOR);
                } else if old.is_ipv4() && on_secondary && r.secondary.contains(&old) {
                    r.secondary_until = None;
                }
            }
        }
        let addr = match self.pick(now, old, rng) {
            Ok(a) => a,
            // Only one address serves us: try it again rather than give up.
            Err(PoolError::NoAddressesLeft) if self.shared => {
                old.ok_or(PoolError::NoAddressesLeft)?
            }
            Err(e) => return Err(e),
        };
        self.hold(index, Some(addr));
        Ok(addr)
    }

    /// Forgets what `index` holds.
    pub fn release(&mut self, index: u8) {
        self.hold(index, None);
    }

    fn hold(&mut self, index: u8, addr: Option<SocketAddr>) {
        let i = index as usize;
        if self.held.len() <= i {
            self.held.resize(i + 1, None);
        }
        self.held[i] = addr;
    }

    /// A free address from the region with the most free ones (random on a tie, random within).
    fn pick(
        &self,
        now: Instant,
        exclude: Option<SocketAddr>,
        rng: &mut impl Rng,
    ) -> Result<SocketAddr, PoolError> {
        let least = |r: &Region| {
            r.active(now)
                .iter()
                .filter(|a| Some(**a) != exclude)
                .map(|a| self.users(*a))
                .min()
        };
        let free: Vec<Vec<SocketAddr>> = self
            .regions
            .iter()
            .map(|r| {
                let candidates = r.active(now).iter().filter(|a| Some(**a) != exclude);
                if self.shared {
                    // Least used first: spread HA connections over the addresses.
                    let min = least(r).unwrap_or(0);
                    candidates
                        .filter(|a| self.users(**a) == min)
                        .copied()
                        .collect()
                } else {
                    candidates
                        .filter(|a| self.users(**a) == 0)
                        .copied()
                        .collect()
                }
            })
            .collect();
        let region = match (free[0].len(), free[1].len()) {
            (0, 0) => return Err(PoolError::NoAddressesLeft),
            _ if self.shared => {
                // Prefer the region whose addresses are least used.
                match (least(&self.regions[0]), least(&self.regions[1])) {
                    (Some(a), Some(b)) if a != b => usize::from(b < a),
                    (None, _) => 1,
                    (_, None) => 0,
                    _ => (rng.next_u32() % 2) as usize,
                }
            }
            (a, b) if a > b => 0,
            (a, b) if b > a => 1,
            _ => (rng.next_u32() % 2) as usize,
        };
        let list = &free[region];
        if list.is_empty() {
            return Err(PoolError::NoAddressesLeft);
        }
        Ok(list[rng.next_u32() as usize % list.len()])
    }
}

/// cloudflared's `retry.BackoffHandler`: wait uniformly in `[0, base·2^retries)`.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    retries: u32,
    max_retries: u32,
    base: Duration,
}

impl Backoff {
    fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        if self.retries < self.max_retries {
            self.retries += 1;
        }
        let cap = self.base.saturating_mul(1u32 << self.retries.min(20));
        let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX).max(1);
        Duration::from_nanos(rng.next_u64() % nanos)
    }
}

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
        }
    }
}

/// Why the supervisor gave up.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SupervisorError {
    /// The first connection was refused for good (cloudflared: "initial tunnel connection
    /// failed").
    #[error("initial tunnel connection failed: {0}")]
    InitialConnection(String),
    /// No edge address to connect to.
    #[error(transparent)]
    Pool(#[from] PoolError),
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
    },
    /// A connection registered and serves.
    Registered {
        /// HA index.
        index: u8,
        /// Which attempt.
        link: LinkId,
        /// Edge address.
        edge: SocketAddr,
        /// What the edge said.
        details: ConnectionDetails,
    },
    /// The edge refused a registration.
    RegistrationFailed {
        /// HA index.
        index: u8,
        /// The edge's answer.
        error: RegistrationError,
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
    },
    /// cloudflared would now fall back to HTTP/2, which burrow does not have: QUIC is retried.
    FallbackUnavailable {
        /// HA index.
        index: u8,
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
    /// Pushing the local configuration failed (logged, not fatal).
    LocalConfigurationFailed {
        /// HA index.
        index: u8,
        /// Why.
        reason: String,
    },
    /// The supervisor gave up; it is stopped.
    Fatal(SupervisorError),
    /// Every connection is closed after a shutdown.
    Stopped,
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
    conn: ConnectorConnection,
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

/// The HA connections of one connector process.
pub struct Supervisor {
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
}

/// The running connections, by link, as the hub sees them.
struct SlotLinks<'a>(&'a mut [Slot]);

impl Links for SlotLinks<'_> {
    fn connection(&mut self, link: LinkId) -> Option<&mut ConnectorConnection> {
        self.0.iter_mut().find_map(|s| match &mut s.phase {
            Phase::Running(r) if r.link == link => Some(&mut r.conn),
            _ => None,
        })
    }
}

impl Supervisor {
    /// A supervisor over `pool`; `seed` drives backoff jitter, address choice and quinn.
    /// Connection 0 starts at `now`.
    pub fn new(now: Instant, config: SupervisorConfig, pool: EdgePool, seed: u64) -> Self {
        let ha = usize::from(config.ha_connections.max(1));
        let ha = if ha > pool.capacity() {
            warn!(
                requested = ha,
                available = pool.capacity(),
                "You requested {ha} HA connections but I can give you at most {}.",
                pool.capacity()
            );
            pool.capacity()
        } else {
            ha
        };
        let backoff = Backoff {
            retries: 0,
            max_retries: config.retries,
            base: config.backoff_base,
        };
        let slots = (0..ha)
            .map(|i| Slot {
                index: i as u8,
                phase: if i == 0 {
                    Phase::StartAt(now)
                } else {
                    Phase::Waiting
                },
                backoff,
                dial_failures: 0,
            })
            .collect();
        // One limiter for the process: every connection's TCP flows (through the connector
        // template's clones) and every UDP session.
        let flows = config.connector.data.flows.clone();
        flows.set_limit(effective_limit(
            config.max_active_flows,
            config.local_max_active_flows,
        ));
        let hub = DatagramHub::new(
            SessionManager::new(config.sessions).with_flow_limiter(flows),
            IcmpRouter::new(config.icmp),
        );
        Self {
            config,
            pool,
            rng: ChaCha8Rng::seed_from_u64(seed),
            slots,
            state: State::Starting,
            next_link: 0,
            events: VecDeque::new(),
            actions: VecDeque::new(),
            cursor: 0,
            hub,
            v2_calls: HashMap::new(),
            versions: ConfigVersions::new(),
        }
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

    /// Registered links with their index, for spreading work over them.
    pub fn registered_links(&self) -> impl Iterator<Item = (u8, LinkId)> + '_ {
        self.slots.iter().filter_map(|s| match &s.phase {
            Phase::Running(r) if r.registered => Some((s.index, r.link)),
            _ => None,
        })
    }

    /// True once everything is closed (after a shutdown or a fatal error).
    pub fn is_stopped(&self) -> bool {
        self.state == State::Stopped
    }

    /// A UDP datagram arrived on the socket of `index`.
    pub fn handle_datagram(&mut self, now: Instant, index: u8, from: SocketAddr, data: &[u8]) {
        self.handle_received(now, index, &Received::single(from, data));
    }

    /// UDP datagrams arrived on the socket of `index` in one buffer (GRO: `stride` bytes each).
    pub fn handle_received(&mut self, now: Instant, index: u8, received: &Received<'_>) {
        if let Some(r) = self.running_mut(index) {
            r.conn.handle_received(now, received);
        }
        self.progress(now);
    }

    /// Lets timers fire: starts due connections, drives connection timers, enforces the
    /// shutdown deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let State::ShuttingDown(deadline) = self.state {
            if now >= deadline {
                warn!("grace period over; closing every connection now");
                self.close_all(now);
            }
        }
        for i in 0..self.slots.len() {
            match &mut self.slots[i].phase {
                Phase::StartAt(at) if *at <= now => self.start(now, i),
                // It checks which of its own timers are due.
                Phase::Running(r) => r.conn.handle_timeout(now),
                _ => {}
            }
        }
        // It checks whether its timers are due.
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
            .min()
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
            if let Phase::Running(r) = &mut self.slots[i].phase {
                if let Some(t) = r.conn.poll_transmit(now, max_datagrams, buf) {
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
        self.events.pop_front()
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
        bytes: &[u8],
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

    /// Takes the datagrams every connection received (call after every input, at least after
    /// [`Supervisor::handle_datagram`]). What must leave through an origin UDP socket or a ping
    /// socket now is handed to `egress`, borrowed from the datagram; sessions being opened keep
    /// their payloads until [`Supervisor::handle_udp_opened`]. A ping for a funnel whose
    /// [`RouterAction::OpenFunnel`](crate::icmp::RouterAction::OpenFunnel) has not been polled
    /// yet comes before it: the driver sends it once the socket is open. Returns how many
    /// datagrams were taken.
    pub fn drain_datagrams(&mut self, now: Instant, mut egress: impl FnMut(Egress<'_>)) -> u64 {
        let before = self.hub.stats().datagrams_in;
        for s in &mut self.slots {
            if let Phase::Running(r) = &mut s.phase {
                self.hub.drain(now, r.link, &mut r.conn, &mut egress);
            }
        }
        self.hub.stats().datagrams_in - before
    }

    /// Takes received datagrams until one leaves something for a socket (see
    /// [`DatagramHub::pull`]); true while something is held for
    /// [`Supervisor::take_egress`].
    pub(crate) fn pull_egress(&mut self, now: Instant) -> bool {
        for s in &mut self.slots {
            if let Phase::Running(r) = &mut s.phase {
                if self.hub.pull(now, r.link, &mut r.conn) {
                    return true;
                }
            }
        }
        false
    }

    /// What [`Supervisor::pull_egress`] held.
    pub(crate) fn take_egress(&mut self) -> Option<Egress<'_>> {
        self.hub.take_egress()
    }

    /// `len` bytes the origin socket of `flow` read sit at `buf[HEADROOM..]` (`buf` holds
    /// [`HEADROOM`](crate::session::HEADROOM) + `len` + [`TAILROOM`](crate::session::TAILROOM)
    /// bytes at least): they are framed in place and queued on the session's connection. The
    /// datagram is split off `buf` without a copy; resize `buf` before the next read.
    pub fn udp_origin_read(
        &mut self,
        now: Instant,
        flow: UdpFlowId,
        buf: &mut BytesMut,
        len: usize,
    ) {
        self.hub
            .origin_read(now, flow, buf, len, &mut SlotLinks(&mut self.slots));
    }

    /// The ping socket of `funnel` read `message` (ICMP, no IP header) from `from`.
    pub fn ping_reply(&mut self, now: Instant, funnel: FunnelId, from: IpAddr, message: &[u8]) {
        self.hub
            .ping_reply(now, funnel, from, message, &mut SlotLinks(&mut self.slots));
    }

    /// The next socket to open or close: [`SessionAction::Open`], [`SessionAction::Send`],
    /// [`SessionAction::Close`], or a funnel's
    /// [`RouterAction`](crate::icmp::RouterAction). Registration answers (v3 datagrams, v2 RPC
    /// responses) and v2 unregistrations go out on their connections on the way.
    pub fn poll_datagram_action(&mut self, now: Instant) -> Option<HubAction> {
        loop {
            let action = self.hub.poll_action(&mut SlotLinks(&mut self.slots))?;
            match action {
                HubAction::Session(SessionAction::V2Registered { link, id, result }) => {
                    let streams = self.v2_calls.remove(&(link, id)).unwrap_or_default();
                    if let Some(conn) = SlotLinks(&mut self.slots).connection(link) {
                        for stream in streams {
                            // The edge may have given up on the stream meanwhile.
                            if let Err(e) = conn.respond_udp_session(now, stream, result.clone()) {
                                debug!(%link, session_id = %id, error = %e, "cannot answer registerUdpSession");
                            }
                        }
                    }
                    self.progress(now);
                }
                HubAction::Session(SessionAction::V2Unregister { link, id, message }) => {
                    if let Some(conn) = SlotLinks(&mut self.slots).connection(link) {
                        conn.unregister_udp_session(now, id, &message);
                    }
                    self.progress(now);
                }
                other => return Some(other),
            }
        }
    }

    /// The origin socket of `flow` is open (after [`SessionAction::Open`]).
    pub fn handle_udp_opened(&mut self, now: Instant, flow: UdpFlowId) {
        self.hub.sessions.handle_origin_opened(now, flow);
    }

    /// The origin socket of `flow` could not be opened, or reading or writing it failed for
    /// good; `reason` is the socket error's text. The session ends.
    pub fn handle_udp_failed(&mut self, flow: UdpFlowId, reason: &str) {
        self.hub.sessions.handle_origin_failed(flow, reason);
    }

    /// The ping socket of `funnel` could not be opened, or reading it failed: the funnel is
    /// forgotten (the driver drops whatever socket it has).
    pub fn handle_funnel_failed(&mut self, funnel: FunnelId) {
        self.hub.icmp.handle_funnel_failed(funnel);
    }

    /// The process-wide flow limiter (TCP flows and UDP sessions), for its counters.
    pub fn flow_limiter(&self) -> &FlowLimiter {
        self.hub.sessions.flow_limiter()
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
            State::ShuttingDown(_) => {
                info!("second shutdown request: closing every connection now");
                self.close_all(now);
            }
            State::Starting | State::Running => {
                info!("initiating graceful shutdown");
                self.state = State::ShuttingDown(now + self.config.connector.grace_period);
                for s in &mut self.slots {
                    match &mut s.phase {
                        Phase::Running(r) => {
                            // Only misuse errors come back; the connection closes either way.
                            if let Err(e) = r.conn.shutdown(now) {
                                warn!(conn_index = s.index, error = %e, "shutdown refused");
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
        for s in &mut self.slots {
            if let Phase::Running(r) = &mut s.phase {
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

    fn with_link<T>(
        &mut self,
        now: Instant,
        link: LinkId,
        f: impl FnOnce(&mut ConnectorConnection) -> T,
    ) -> Option<T> {
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
            .transport_config(self.config.quic.transport_config(edge.is_ipv4()));
        if index != 0 {
            config.local_config = None;
        }
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        let link = LinkId(self.next_link);
        self.next_link += 1;
        match ConnectorConnection::connect(now, config, edge, seed) {
            Ok(conn) => {
                debug!(conn_index = index, %link, %edge, "connecting");
                self.events
                    .push_back(SupervisorEvent::Connecting { index, link, edge });
                self.slots[i].phase = Phase::Running(Box::new(Running {
                    conn,
                    link,
                    edge,
                    registered: false,
                }));
            }
            Err(e) => {
                warn!(conn_index = index, %edge, error = %e, "cannot start a connection");
                self.retry(now, i, true, false);
            }
        }
    }

    fn fatal_or_retry(&mut self, now: Instant, i: usize, e: SupervisorError) {
        if self.state == State::Starting {
            self.fatal(now, e);
        } else {
            warn!(conn_index = self.slots[i].index, error = %e, "cannot connect; retrying");
            self.retry(now, i, false, false);
        }
    }

    fn fatal(&mut self, now: Instant, e: SupervisorError) {
        warn!(error = %e, "supervisor gives up");
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
        if dial_failure {
            let slot = &mut self.slots[i];
            slot.dial_failures += 1;
            if slot.dial_failures > self.config.max_edge_addr_retries {
                slot.dial_failures = 0;
                warn!(
                    conn_index = index,
                    "QUIC keeps failing; cloudflared would fall back to http2, which burrow does not support yet"
                );
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
        let delay = self.slots[i].backoff.next_delay(&mut self.rng);
        info!(
            conn_index = index,
            ?delay,
            "Retrying connection in up to {:?}",
            self.slots[i]
                .backoff
                .base
                .saturating_mul(1 << self.slots[i].backoff.retries.min(20))
        );
        self.events
            .push_back(SupervisorEvent::Reconnecting { index, delay });
        // Never schedule at `now` itself: a timeout that does not move forward is a busy loop.
        self.slots[i].phase = Phase::StartAt(now + delay.max(Duration::from_millis(1)));
    }

    /// Collects connection events and acts on them.
    fn progress(&mut self, now: Instant) {
        for i in 0..self.slots.len() {
            let index = self.slots[i].index;
            let Phase::Running(r) = &mut self.slots[i].phase else {
                continue;
            };
            let mut closed = None;
            while let Some(ev) = r.conn.poll_event() {
                match ev {
                    ConnectorEvent::Registered(details) => {
                        r.registered = true;
                        self.events.push_back(SupervisorEvent::Registered {
                            index,
                            link: r.link,
                            edge: r.edge,
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
                    ConnectorEvent::ConfigurationOffered {
                        stream,
                        version,
                        config,
                    } => {
                        let ingress = self.config.connector.data.ingress.as_ref();
                        let hub = &self.hub;
                        let max_active_flows = self.config.max_active_flows;
                        let events = &mut self.events;
                        let result = self.versions.offer(version, || {
                            let (remote, new) =
                                RemoteConfig::from_json(&config).map_err(|e| e.to_string())?;
                            if let Some(shared) = ingress {
                                *shared
                                    .write()
                                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                                    std::sync::Arc::new(new);
                            }
                            let limit = effective_limit(
                                max_active_flows,
                                remote.warp_routing.max_active_flows,
                            );
                            let flows = hub.sessions.flow_limiter();
                            if flows.limit() != limit {
                                flows.set_limit(limit);
                                events.push_back(SupervisorEvent::FlowLimitChanged {
                                    limit,
                                    active: flows.active(),
                                });
                            }
                            Ok(())
                        });
                        self.events.push_back(match &result.error {
                            None => SupervisorEvent::ConfigurationApplied {
                                version: result.latest_applied_version,
                            },
                            Some(error) => SupervisorEvent::ConfigurationRefused {
                                version,
                                error: error.clone(),
                            },
                        });
                        if let Err(e) = r.conn.respond_configuration(now, stream, &result) {
                            debug!(link = %r.link, error = %e, "cannot answer the configuration push");
                        }
                    }
                    ConnectorEvent::UdpSessionRequested {
                        stream,
                        id,
                        dest,
                        idle_hint_nanos,
                    } => {
                        // Answered once the manager decides (`poll_datagram_action`).
                        self.v2_calls.entry((r.link, id)).or_default().push(stream);
                        self.hub
                            .sessions
                            .register_v2(now, r.link, id, dest, idle_hint_nanos);
                    }
                    ConnectorEvent::UdpSessionUnregistered { id, message } => {
                        self.hub.sessions.unregister_v2(id, &message);
                    }
                    ConnectorEvent::Closed { reason } => closed = Some(reason),
                }
            }
            // Origin actions are moved out before the connection can go away.
            while let Some(a) = r.conn.poll_origin_action() {
                self.actions.push_back((r.link, a));
            }
            if r.registered {
                // cloudflared's connectedFuse: a registration resets the backoff.
                self.slots[i].backoff.retries = 0;
                self.slots[i].dial_failures = 0;
                if self.state == State::Starting && index == 0 {
                    self.state = State::Running;
                    self.schedule_ha(now);
                }
            }
            if let Some(reason) = closed {
                self.on_closed(now, i, reason);
            }
        }
        if let State::ShuttingDown(_) = self.state {
            if self.slots.iter().all(|s| matches!(s.phase, Phase::Stopped)) {
                self.state = State::Stopped;
                self.events.push_back(SupervisorEvent::Stopped);
            }
        }
    }

    /// `link` is gone: its UDP sessions move to a surviving registered connection (the lowest
    /// index), so origin replies keep flowing until the edge re-registers them where it likes;
    /// its pending v2 registrations are forgotten.
    fn datagram_link_gone(&mut self, link: LinkId) {
        let successor = self.slots.iter().find_map(|s| match &s.phase {
            Phase::Running(r) if r.registered && r.link != link && !r.conn.is_closed() => {
                Some(r.link)
            }
            _ => None,
        });
        self.hub.link_closed(link, successor);
        self.v2_calls.retain(|(l, _), _| *l != link);
    }

    /// Index 0 registered: the others start, one interval apart (cloudflared's `initialize`).
    fn schedule_ha(&mut self, now: Instant) {
        let interval = self.config.registration_interval;
        for s in self.slots.iter_mut().skip(1) {
            if matches!(s.phase, Phase::Waiting) {
                let k = u32::from(s.index) - 1;
                s.phase = Phase::StartAt(now + interval * k);
            }
        }
    }

    fn on_closed(&mut self, now: Instant, i: usize, reason: CloseReason) {
        let Phase::Running(r) = std::mem::replace(&mut self.slots[i].phase, Phase::Stopped) else {
            return;
        };
        let index = self.slots[i].index;
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
        if let CloseReason::Local(LocalClose::Refused(refused)) = &reason {
            // cloudflared: a permanent refusal of the first connection ends the process unless
            // it is a duplicate or unauthorized; everything else is retried forever.
            let refusal = refused.refusal();
            if self.state == State::Starting && !refused.should_retry && refusal == Refusal::Other {
                self.fatal(
                    now,
                    SupervisorError::InitialConnection(refused.cause.clone()),
                );
                return;
            }
            self.retry(now, i, false, refusal == Refusal::DuplicateConnection);
            return;
        }
        let dial_failure = !r.registered;
        // An idle timeout of a served connection means the path to that edge died: rotate.
        let rotate = reason == CloseReason::TimedOut;
        self.retry(now, i, dial_failure, rotate);
    }
}

#[cfg(test)]
mod tests;
