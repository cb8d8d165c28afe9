//! The ICMP proxy ("router", PROTOCOL.md §4.1, §4.7): echo requests from the edge go out
//! through unprivileged ping sockets ("funnels"), their replies come back to the tunnel
//! connection that asked.
//!
//! Sans-IO: the driver owns the sockets. [`IcmpRouter::handle_request`] decides what to do with
//! a packet from the edge (answer TTL-exceeded locally, or send its ICMP message through a
//! funnel); [`IcmpRouter::poll_action`] says which sockets to open and close;
//! [`IcmpRouter::handle_reply`] turns what a socket read into the IP packet for the edge.
//!
//! A funnel is keyed by (requester src, dst, original echo id), as in cloudflared. A Linux ping
//! socket rewrites the echo id to its own ident, so there is one socket per key and a reply is
//! matched by the socket it arrived on, never by the id it carries; the original id is put back.
//!
//! Deliberate differences from cloudflared 2026.8.2 (PROTOCOL.md B§5):
//!
//! | cloudflared | here |
//! |---|---|
//! | funnel owner compared by u8 connection index; a reconnect reusing the index keeps the dead responder (#21) | owner is a never-reused [`LinkId`]; a request from another link re-binds the funnel and keeps its socket |
//! | a stale reader's unregister may close the replacement funnel (#22) | [`FunnelId`]s are never reused; reports about an old funnel are ignored |
//! | echo replies from the edge open a socket, then the kernel refuses to send (#23) | refused up front ([`RouteError::EchoReplyNotForwarded`]) |
//! | TTL ≤ 1 answered with time exceeded even for ICMP errors (#24) | ICMP errors are never answered nor forwarded (RFC 1122 §3.2.2, RFC 4443 §2.4(e)) |
//! | decremented TTL dropped (#25) | kept in [`Verdict::Forward::ttl`] for a driver that wants to apply it |
//! | idle time floored to whole seconds, swept every 10 s (9–20 s lifetime) | exact: a funnel closes `idle_timeout` after its last send or reply |
//! | no bound on funnels | at most `max_funnels`; the least recently active one is evicted |

use core::fmt;
use core::hash::{Hash, Hasher};
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use thiserror::Error;
use tracing::debug;

use super::encode::IPV4_HEADER_LEN;
use super::{
    internet_checksum, parse, write_echo, write_ttl_exceeded, Echo, EchoKind, EncodeError,
    IcmpMessage, IpVersion, ParseError, DEFAULT_TTL,
};
use crate::datagram::LinkId;

/// cloudflared's funnel idle timeout (`cmd/cloudflared/tunnel/configuration.go:38`).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default bound on simultaneous funnels (open ping sockets).
pub const DEFAULT_MAX_FUNNELS: usize = 4096;

/// Slot index meaning "none" in the intrusive lists.
const NIL: u32 = u32::MAX;
/// Echo header: type, code, checksum, id, seq.
const ECHO_HEADER_LEN: usize = 8;

/// How the router is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouterConfig {
    /// Bind address of IPv4 ping sockets and source of ICMPv4 TTL-exceeded replies; `None`
    /// disables ICMPv4 (`--icmpv4-src`, §4.6).
    pub ipv4_src: Option<Ipv4Addr>,
    /// Same for IPv6 (`--icmpv6-src`).
    pub ipv6_src: Option<Ipv6Addr>,
    /// A funnel with no send nor reply for this long is closed.
    pub idle_timeout: Duration,
    /// Most funnels open at once; at the bound a new one evicts the least recently active.
    pub max_funnels: usize,
}

impl RouterConfig {
    /// The given source addresses with cloudflared's idle timeout and the default bound.
    pub fn new(ipv4_src: Option<Ipv4Addr>, ipv6_src: Option<Ipv6Addr>) -> Self {
        Self {
            ipv4_src,
            ipv6_src,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_funnels: DEFAULT_MAX_FUNNELS,
        }
    }
}

impl Default for RouterConfig {
    /// Both families disabled.
    fn default() -> Self {
        Self::new(None, None)
    }
}

/// One funnel: one unprivileged ping socket in the driver.
///
/// Opaque and never reused during the router's life, so a late event about a closed funnel
/// can never be mistaken for one about its successor (cf. PROTOCOL.md B§5 #22).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FunnelId(pub u64);

impl FunnelId {
    fn new(slot: u32, generation: u32) -> Self {
        Self(u64::from(generation) << 32 | u64::from(slot))
    }

    fn slot(self) -> u32 {
        // Truncation intended: the low half is the slot.
        self.0 as u32
    }

    fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

impl fmt::Display for FunnelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "funnel#{}.{}", self.slot(), self.generation())
    }
}

/// Work for the driver, drained with [`IcmpRouter::poll_action`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouterAction {
    /// Open a ping socket (`SOCK_DGRAM`, `IPPROTO_ICMP` / `IPPROTO_ICMPV6`) bound to `bind`
    /// (port 0), and report what it reads with [`IcmpRouter::handle_reply`].
    OpenFunnel {
        /// The funnel the socket serves.
        funnel: FunnelId,
        /// Local address to bind.
        bind: IpAddr,
    },
    /// Close the funnel's socket; the router has forgotten it.
    CloseFunnel {
        /// The funnel to close.
        funnel: FunnelId,
    },
}

/// What to do with a packet from the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// TTL / hop limit ≤ 1: a TTL-exceeded reply was written into `out[..len]`; send it back as
    /// an ICMP datagram on the link the request came on.
    Reply {
        /// Bytes written.
        len: usize,
    },
    /// Send `message` to `dst` through the funnel's ping socket (the kernel puts in the
    /// socket's ident and the checksum). Drain [`IcmpRouter::poll_action`] first: a new funnel's
    /// [`RouterAction::OpenFunnel`] is queued by the same call.
    Forward {
        /// The funnel (socket) to send through.
        funnel: FunnelId,
        /// Destination of the echo request.
        dst: IpAddr,
        /// ICMP header and body, no IP header, borrowed from the request packet.
        message: &'a [u8],
        /// The decremented TTL / hop limit, also written into the packet. cloudflared never
        /// applies it to the socket (B§5 #25); a driver may set `IP_TTL` /
        /// `IPV6_UNICAST_HOPS` to it.
        ttl: u8,
    },
}

/// Whose fault a [`RouteError`] is, for metrics and log levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteErrorKind {
    /// The edge sent bytes that are malformed or not something we proxy: drop the packet.
    Peer,
    /// A ping socket read something that is not an echo reply: drop it.
    Origin,
    /// The router cannot serve this now (family disabled, no room, link gone): drop it.
    Unavailable,
    /// The driver misused the API (unknown funnel, wrong family, small buffer): a bug.
    Caller,
}

/// Why a packet was not routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RouteError {
    /// The edge's bytes are not an IP packet carrying ICMP that cloudflared decodes.
    #[error(transparent)]
    Malformed(#[from] ParseError),
    /// An ICMP error message (time exceeded, unreachable, …): never answered nor forwarded.
    #[error("ICMP error message type {icmp_type} is neither answered nor forwarded")]
    IcmpError {
        /// Its ICMP type.
        icmp_type: u8,
    },
    /// An echo reply from the edge. cloudflared opens a funnel for it and then the kernel
    /// refuses to send it (B§5 #23); here it is refused up front.
    #[error("ICMP echo replies are not forwarded, only echo requests")]
    EchoReplyNotForwarded,
    /// Any other ICMP type (cloudflared: `expect ICMP echo, got <type>`).
    #[error("expect ICMP echo, got type {icmp_type}")]
    NotEchoRequest {
        /// Its ICMP type.
        icmp_type: u8,
    },
    /// An echo request with a non-zero code, which ping sockets refuse to send.
    #[error("ICMP echo request with code {code}, ping sockets only send code 0")]
    UnsupportedEchoCode {
        /// The code.
        code: u8,
    },
    /// A ping socket read fewer bytes than an echo header.
    #[error("ICMP reply of {len} bytes is shorter than the 8-byte echo header")]
    ReplyTooShort {
        /// Bytes read.
        len: usize,
    },
    /// A ping socket read an ICMP message that is not an echo reply.
    #[error("ICMP reply type {icmp_type} is not an echo reply")]
    ReplyNotEcho {
        /// Its ICMP type.
        icmp_type: u8,
    },
    /// No source address is configured for the family (text as cloudflared).
    #[error("{} proxy was not instantiated", icmp_family(*.version))]
    ProxyNotInstantiated {
        /// The packet's family.
        version: IpVersion,
    },
    /// `max_funnels` is 0: no funnel can be opened.
    #[error("no ICMP funnel can be opened (max_funnels is 0)")]
    NoFunnelCapacity,
    /// The funnel's link closed and no request has re-bound it yet: the reply has nowhere to go.
    #[error("{funnel} has no open link to return replies on")]
    LinkClosed {
        /// The funnel.
        funnel: FunnelId,
    },
    /// The funnel is closed or was never opened (late read, or a driver bug).
    #[error("unknown ICMP {funnel}")]
    UnknownFunnel {
        /// The funnel named.
        funnel: FunnelId,
    },
    /// The reply's source is not of the funnel's family.
    #[error("reply from {from} on {funnel}, a socket of the other family")]
    FamilyMismatch {
        /// The funnel.
        funnel: FunnelId,
        /// The source given.
        from: IpAddr,
    },
    /// The output could not be written (buffer too small, or reply too long for IP).
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

impl RouteError {
    /// Whose fault it is.
    pub fn kind(&self) -> RouteErrorKind {
        match self {
            Self::Malformed(_)
            | Self::IcmpError { .. }
            | Self::EchoReplyNotForwarded
            | Self::NotEchoRequest { .. }
            | Self::UnsupportedEchoCode { .. } => RouteErrorKind::Peer,
            Self::ReplyTooShort { .. } | Self::ReplyNotEcho { .. } => RouteErrorKind::Origin,
            Self::ProxyNotInstantiated { .. }
            | Self::NoFunnelCapacity
            | Self::LinkClosed { .. } => RouteErrorKind::Unavailable,
            Self::UnknownFunnel { .. } | Self::FamilyMismatch { .. } | Self::Encode(_) => {
                RouteErrorKind::Caller
            }
        }
    }
}

/// `ICMPv4` / `ICMPv6`, as cloudflared names the proxies.
fn icmp_family(version: IpVersion) -> &'static str {
    match version {
        IpVersion::V4 => "ICMPv4",
        IpVersion::V6 => "ICMPv6",
    }
}

/// ICMP error message types (RFC 792 / RFC 4443: every ICMPv6 type below 128).
fn is_icmp_error(version: IpVersion, icmp_type: u8) -> bool {
    match version {
        IpVersion::V4 => matches!(icmp_type, 3 | 4 | 5 | 11 | 12),
        IpVersion::V6 => icmp_type < 128,
    }
}

/// [`decrement_ttl`](super::decrement_ttl) for a packet [`parse`] just accepted, without
/// parsing it again: TTL / hop limit minus one, IPv4 header checksum recomputed over
/// `header_len` bytes (options included). Returns the new TTL.
fn decrement_parsed_ttl(packet: &mut [u8], version: IpVersion, header_len: usize) -> u8 {
    match version {
        IpVersion::V4 => {
            let Some(header) = packet
                .get_mut(..header_len)
                .filter(|h| h.len() >= IPV4_HEADER_LEN)
            else {
                return 0;
            };
            let ttl = header[8].saturating_sub(1);
            header[8] = ttl;
            header[10..12].copy_from_slice(&[0, 0]);
            let sum = internet_checksum(header);
            header[10..12].copy_from_slice(&sum.to_be_bytes());
            ttl
        }
        IpVersion::V6 => packet.get_mut(7).map_or(0, |hop| {
            *hop = hop.saturating_sub(1);
            *hop
        }),
    }
}

/// cloudflared's funnel key (`srcIP_dstIP_echoID`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FunnelKey {
    src: IpAddr,
    dst: IpAddr,
    echo_id: u16,
}

impl Hash for FunnelKey {
    /// One contiguous write of just the address bytes: the derived hash feeds SipHash a dozen
    /// small pieces and was a third of the forwarding path. The leading family byte fixes the
    /// layout, so equal keys, and only they, write equal bytes.
    fn hash<H: Hasher>(&self, state: &mut H) {
        let id = self.echo_id.to_be_bytes();
        let mut bytes = [0u8; 35];
        let len = match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                bytes[0] = 4;
                bytes[1..5].copy_from_slice(&s.octets());
                bytes[5..9].copy_from_slice(&d.octets());
                bytes[9..11].copy_from_slice(&id);
                11
            }
            // Mixed families never come out of parse(); mapped, with tags of their own.
            (src, dst) => {
                let v6 = |a: IpAddr| match a {
                    IpAddr::V4(a) => (4, a.to_ipv6_mapped()),
                    IpAddr::V6(a) => (6, a),
                };
                let ((ts, s), (td, d)) = (v6(src), v6(dst));
                bytes[0] = ts * 10 + td;
                bytes[1..17].copy_from_slice(&s.octets());
                bytes[17..33].copy_from_slice(&d.octets());
                bytes[33..35].copy_from_slice(&id);
                35
            }
        };
        state.write(&bytes[..len]);
    }
}

#[derive(Debug, Clone, Copy)]
struct Funnel {
    key: FunnelKey,
    /// Where replies go; `None` once the link closed, until a request re-binds it.
    link: Option<LinkId>,
    last_active: Instant,
}

/// A slab entry. Live slots are chained in activity order (`prev`/`next`); free ones are
/// chained through `next`.
#[derive(Debug)]
struct Slot {
    generation: u32,
    prev: u32,
    next: u32,
    funnel: Option<Funnel>,
}

/// The sans-IO ICMP proxy: funnel table, idle expiry and packet rewriting.
///
/// Funnels live in a slab chained in order of last activity, so the idle deadline and the
/// eviction victim are both the head, found in O(1). Forwarding through, and replying on, an
/// existing funnel never allocates; opening one may grow the tables (amortised), which costs
/// far less than the socket it stands for.
#[derive(Debug)]
pub struct IcmpRouter {
    config: RouterConfig,
    slots: Vec<Slot>,
    by_key: HashMap<FunnelKey, u32>,
    free_head: u32,
    /// Least recently active live funnel.
    lru_head: u32,
    /// Most recently active live funnel.
    lru_tail: u32,
    live: usize,
    actions: VecDeque<RouterAction>,
    /// Latest time seen; activity is stamped no earlier, keeping the chain sorted.
    clock: Option<Instant>,
}

impl IcmpRouter {
    /// A router with no funnels.
    pub fn new(config: RouterConfig) -> Self {
        Self {
            config,
            slots: Vec::new(),
            by_key: HashMap::new(),
            free_head: NIL,
            lru_head: NIL,
            lru_tail: NIL,
            live: 0,
            actions: VecDeque::new(),
            clock: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RouterConfig {
        &self.config
    }

    /// Handles an IP packet (ICMP datagram payload) that arrived from the edge on `link`.
    ///
    /// TTL ≤ 1 → [`Verdict::Reply`] with cloudflared's TTL-exceeded bytes in `out` (needs up to
    /// [`TTL_EXCEEDED_MAX_V6`](super::TTL_EXCEEDED_MAX_V6) bytes). Otherwise the TTL is
    /// decremented in `packet` and an echo request is [`Verdict::Forward`]ed through the
    /// funnel for (src, dst, echo id), opened if new, re-bound to `link` if it belonged to
    /// another link. Only echo requests with code 0 are forwarded; cloudflared also passes
    /// echo replies on, which the kernel then refuses (B§5 #23).
    pub fn handle_request<'a>(
        &mut self,
        now: Instant,
        link: LinkId,
        packet: &'a mut [u8],
        out: &mut [u8],
    ) -> Result<Verdict<'a>, RouteError> {
        let (key, bind, version, icmp_start, icmp_len) = {
            let p = parse(packet)?;
            let version = p.version();
            let icmp_type = p.icmp_type();
            if is_icmp_error(version, icmp_type) {
                return Err(RouteError::IcmpError { icmp_type });
            }
            if p.ttl() <= 1 {
                let router = self.source(version)?;
                let len = write_ttl_exceeded(&p, router, out)?;
                return Ok(Verdict::Reply { len });
            }
            let bind = self.source(version)?;
            let echo_id = match p.message() {
                IcmpMessage::EchoRequest { id, .. } => id,
                IcmpMessage::EchoReply { .. } => return Err(RouteError::EchoReplyNotForwarded),
                _ => return Err(RouteError::NotEchoRequest { icmp_type }),
            };
            if p.code() != 0 {
                return Err(RouteError::UnsupportedEchoCode { code: p.code() });
            }
            let key = FunnelKey {
                src: p.src(),
                dst: p.dst(),
                echo_id,
            };
            (key, bind, version, p.icmp_offset(), p.icmp_bytes().len())
        };
        let funnel = self.funnel_for(now, link, key, bind)?;
        let ttl = decrement_parsed_ttl(packet, version, icmp_start);
        let packet: &'a [u8] = packet;
        // The decrement changes no length, so the range parse() found is still in bounds; the
        // empty fallback only keeps this panic-free.
        let message = packet
            .get(icmp_start..icmp_start.saturating_add(icmp_len))
            .unwrap_or_default();
        Ok(Verdict::Forward {
            funnel,
            dst: key.dst,
            message,
            ttl,
        })
    }

    /// Handles an ICMP message (no IP header) that `funnel`'s socket read from `from`.
    ///
    /// An echo reply is rewritten as cloudflared does: echo id back to the requester's, source
    /// `from`, destination the requester, TTL 255, checksums recomputed; the whole IP packet is
    /// written into `out` and returned with the link to send it on. The id in the reply (the
    /// socket's ident) is ignored: the socket identifies the funnel. Like cloudflared, the
    /// source is not compared with the request's destination.
    pub fn handle_reply(
        &mut self,
        now: Instant,
        funnel: FunnelId,
        from: IpAddr,
        message: &[u8],
        out: &mut [u8],
    ) -> Result<(LinkId, usize), RouteError> {
        let (idx, f) = self
            .lookup(funnel)
            .ok_or(RouteError::UnknownFunnel { funnel })?;
        let version = IpVersion::of(f.key.src);
        if IpVersion::of(from) != version {
            return Err(RouteError::FamilyMismatch { funnel, from });
        }
        let Some((&[icmp_type, _code, _, _, _, _, s0, s1], data)) =
            message.split_first_chunk::<ECHO_HEADER_LEN>()
        else {
            return Err(RouteError::ReplyTooShort { len: message.len() });
        };
        if icmp_type != EchoKind::Reply.icmp_type(version) {
            return Err(RouteError::ReplyNotEcho { icmp_type });
        }
        let link = f.link.ok_or(RouteError::LinkClosed { funnel })?;
        let echo = Echo {
            src: from,
            dst: f.key.src,
            ttl: DEFAULT_TTL,
            kind: EchoKind::Reply,
            id: f.key.echo_id,
            seq: u16::from_be_bytes([s0, s1]),
            data,
        };
        let len = write_echo(&echo, out)?;
        let now = self.observe(now);
        self.touch(idx, now);
        Ok((link, len))
    }

    /// The driver could not open `funnel`'s socket, or reading it failed: the router forgets
    /// the funnel (no [`RouterAction::CloseFunnel`] follows; the driver drops whatever socket
    /// it has). The next request for its key opens a new funnel. Unknown ids are ignored.
    pub fn handle_funnel_failed(&mut self, funnel: FunnelId) {
        if let Some((idx, _)) = self.lookup(funnel) {
            self.release(idx);
            debug!(%funnel, "ICMP funnel failed, forgotten");
        }
    }

    /// The connection `funnel`'s replies go to, if it is live and bound.
    pub fn link_of(&self, funnel: FunnelId) -> Option<LinkId> {
        self.lookup(funnel)?.1.link
    }

    /// `link` is gone. Its funnels stay open, so that a request re-sent over another link can
    /// re-bind them with their sockets, but their replies are dropped
    /// ([`RouteError::LinkClosed`]) and, without such a request, they close at idle expiry.
    pub fn link_closed(&mut self, link: LinkId) {
        let mut orphaned = 0usize;
        let mut idx = self.lru_head;
        while let Some(slot) = self.slots.get_mut(idx as usize) {
            if let Some(f) = slot.funnel.as_mut() {
                if f.link == Some(link) {
                    f.link = None;
                    orphaned += 1;
                }
            }
            idx = slot.next;
        }
        if orphaned > 0 {
            debug!(%link, orphaned, "link closed, its ICMP funnels await re-binding");
        }
    }

    /// Closes every funnel idle for `idle_timeout` at `now` ([`RouterAction::CloseFunnel`]).
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.observe(now);
        while let Some(deadline) = self.head_deadline() {
            if deadline > now {
                break;
            }
            let idx = self.lru_head;
            self.close(idx, "idle");
        }
    }

    /// When [`Self::handle_timeout`] next has work: the earliest idle deadline. After
    /// `handle_timeout(t)` this is later than `t`, or `None` with no funnels.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.head_deadline()
    }

    /// The next socket to open or close.
    pub fn poll_action(&mut self) -> Option<RouterAction> {
        self.actions.pop_front()
    }

    /// Funnels open (as far as the router knows; actions not yet drained included).
    pub fn funnels(&self) -> usize {
        self.live
    }

    /// The configured source / bind address for `version`.
    fn source(&self, version: IpVersion) -> Result<IpAddr, RouteError> {
        match version {
            IpVersion::V4 => self.config.ipv4_src.map(IpAddr::V4),
            IpVersion::V6 => self.config.ipv6_src.map(IpAddr::V6),
        }
        .ok_or(RouteError::ProxyNotInstantiated { version })
    }

    /// The funnel for `key`, refreshed and bound to `link`; opened (evicting if full) if new.
    fn funnel_for(
        &mut self,
        now: Instant,
        link: LinkId,
        key: FunnelKey,
        bind: IpAddr,
    ) -> Result<FunnelId, RouteError> {
        let now = self.observe(now);
        if let Some(&idx) = self.by_key.get(&key) {
            if let Some(slot) = self.slots.get_mut(idx as usize) {
                let id = FunnelId::new(idx, slot.generation);
                if let Some(f) = slot.funnel.as_mut() {
                    if f.link != Some(link) {
                        debug!(funnel = %id, from = ?f.link, to = %link, "ICMP funnel re-bound");
                        f.link = Some(link);
                    }
                    self.touch(idx, now);
                    return Ok(id);
                }
            }
            // A key pointing at a free slot would be a bug; drop it and open afresh.
            self.by_key.remove(&key);
        }
        // Evict rather than refuse: at the bound the least recently active funnel has most
        // likely finished (one-shot pings idle for up to `idle_timeout`), and refusing would
        // let stale funnels lock out live traffic. An evicted active ping just gets a new
        // funnel on its next request, losing at most the reply in flight.
        while self.live >= self.config.max_funnels {
            if self.lru_head == NIL {
                return Err(RouteError::NoFunnelCapacity);
            }
            let victim = self.lru_head;
            self.close(victim, "evicted");
        }
        let funnel = Funnel {
            key,
            link: Some(link),
            last_active: now,
        };
        let Some((idx, id)) = self.alloc(funnel) else {
            return Err(RouteError::NoFunnelCapacity);
        };
        self.by_key.insert(key, idx);
        self.actions
            .push_back(RouterAction::OpenFunnel { funnel: id, bind });
        debug!(
            funnel = %id,
            %link,
            src = %key.src,
            dst = %key.dst,
            echo_id = key.echo_id,
            %bind,
            "ICMP funnel opened"
        );
        Ok(id)
    }

    /// The slot and state of a live funnel.
    fn lookup(&self, funnel: FunnelId) -> Option<(u32, Funnel)> {
        let idx = funnel.slot();
        let slot = self.slots.get(idx as usize)?;
        if slot.generation != funnel.generation() {
            return None;
        }
        slot.funnel.map(|f| (idx, f))
    }

    /// Advances the clock to `now` if later; returns the clock (never earlier than before).
    fn observe(&mut self, now: Instant) -> Instant {
        let t = self.clock.map_or(now, |c| c.max(now));
        self.clock = Some(t);
        t
    }

    fn head_deadline(&self) -> Option<Instant> {
        let f = self.slots.get(self.lru_head as usize)?.funnel?;
        // A deadline past the end of representable time never comes.
        f.last_active.checked_add(self.config.idle_timeout)
    }

    /// Stamps activity and moves the funnel to the tail of the activity chain.
    fn touch(&mut self, idx: u32, now: Instant) {
        if let Some(f) = self
            .slots
            .get_mut(idx as usize)
            .and_then(|s| s.funnel.as_mut())
        {
            f.last_active = now;
        }
        if self.lru_tail != idx {
            self.unlink(idx);
            self.push_back(idx);
        }
    }

    fn unlink(&mut self, idx: u32) {
        let Some(slot) = self.slots.get_mut(idx as usize) else {
            return;
        };
        let (prev, next) = (slot.prev, slot.next);
        slot.prev = NIL;
        slot.next = NIL;
        match self.slots.get_mut(prev as usize) {
            Some(p) => p.next = next,
            None => self.lru_head = next,
        }
        match self.slots.get_mut(next as usize) {
            Some(n) => n.prev = prev,
            None => self.lru_tail = prev,
        }
    }

    fn push_back(&mut self, idx: u32) {
        let tail = self.lru_tail;
        let Some(slot) = self.slots.get_mut(idx as usize) else {
            return;
        };
        slot.prev = tail;
        slot.next = NIL;
        match self.slots.get_mut(tail as usize) {
            Some(t) => t.next = idx,
            None => self.lru_head = idx,
        }
        self.lru_tail = idx;
    }

    /// Puts `funnel` in a free slot at the tail of the chain; `None` only if the slab is full.
    fn alloc(&mut self, funnel: Funnel) -> Option<(u32, FunnelId)> {
        let idx = match self.slots.get_mut(self.free_head as usize) {
            Some(slot) => {
                let idx = self.free_head;
                self.free_head = slot.next;
                slot.funnel = Some(funnel);
                idx
            }
            None => {
                let idx = u32::try_from(self.slots.len()).ok().filter(|&i| i != NIL)?;
                self.slots.push(Slot {
                    generation: 0,
                    prev: NIL,
                    next: NIL,
                    funnel: Some(funnel),
                });
                idx
            }
        };
        self.push_back(idx);
        self.live += 1;
        let generation = self.slots.get(idx as usize)?.generation;
        Some((idx, FunnelId::new(idx, generation)))
    }

    /// Forgets a live funnel; returns its id. The slot's generation moves on so the id is
    /// never handed out again (a slot whose generation would wrap is retired for good).
    fn release(&mut self, idx: u32) -> Option<FunnelId> {
        let live = self.slots.get(idx as usize)?.funnel.is_some();
        if !live {
            return None;
        }
        self.unlink(idx);
        let slot = self.slots.get_mut(idx as usize)?;
        let id = FunnelId::new(idx, slot.generation);
        let funnel = slot.funnel.take()?;
        self.live -= 1;
        if let Some(generation) = slot.generation.checked_add(1) {
            slot.generation = generation;
            slot.next = self.free_head;
            self.free_head = idx;
        }
        self.by_key.remove(&funnel.key);
        Some(id)
    }

    /// Forgets a live funnel and tells the driver to close its socket.
    fn close(&mut self, idx: u32, reason: &'static str) {
        if let Some(funnel) = self.release(idx) {
            self.actions.push_back(RouterAction::CloseFunnel { funnel });
            debug!(%funnel, reason, "ICMP funnel closed");
        } else {
            // Not live: only reachable if the chain were corrupt; cut it to stay finite.
            self.lru_head = NIL;
            self.lru_tail = NIL;
        }
    }
}

#[cfg(test)]
#[path = "router_tests.rs"]
mod tests;
