//! UDP sessions in the simulation: the connector's side (its [`SessionManager`] wired to every
//! connector connection, and a simulated origin network of echo services) and an eyeball at
//! the edge that registers sessions and sends payloads (v3 datagrams).
//!
//! Every payload is accounted for: the eyeball counts what it sent and what came back, the
//! connector side counts what it received, forwarded, echoed and queued, the manager counts
//! its drops by reason, and quinn's frame counters give the datagrams the network lost.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use burrow_core::datagram::{v2, v3, LinkId};
use burrow_core::icmp::{self, IcmpRouter, RouterAction, RouterConfig, Verdict};
use burrow_core::session::{
    DatagramVersion, Inbound, SessionAction, SessionId, SessionLimits, SessionManager, UdpFlowId,
    HEADROOM, ORIGIN_READ, TAILROOM,
};
use burrow_core::tunnel::connector::ConnectorConnection;
use burrow_core::tunnel::edge::{ConnId, EdgeEndpoint};
use bytes::Bytes;

use crate::clock::{Clock, VirtualTime};

/// UDP port of the simulated echo service.
pub const ECHO_PORT: u16 = 7;
/// First octets of destinations the simulated origin network cannot reach.
pub const UNREACHABLE: [u8; 2] = [10, 99];
/// How long an origin takes to echo.
const ORIGIN_DELAY: Duration = Duration::from_micros(300);
/// The connector's ICMP source addresses (those of PROTOCOL.md's TTL-exceeded examples).
pub const ICMP_SRC_V4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(172, 16, 0, 3);
/// IPv6 source.
pub const ICMP_SRC_V6: std::net::Ipv6Addr =
    std::net::Ipv6Addr::new(0xfd51, 0x2391, 0x697, 0xf4ee, 0, 0, 0, 3);

/// A simulated unprivileged ping socket: the kernel gives it its own echo ident.
struct PingSocket {
    ident: u16,
}

/// What the ICMP side counted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IcmpStats {
    /// ICMP datagrams from the edge.
    pub requests: u64,
    /// Answered here with TTL exceeded.
    pub ttl_exceeded: u64,
    /// Sent through a ping socket.
    pub forwarded: u64,
    /// Refused by the router (bad packet, not an echo request...).
    pub refused: u64,
    /// Echo replies read from ping sockets.
    pub replies: u64,
    /// Replies (and TTL-exceeded packets) queued to the edge.
    pub queued: u64,
    /// Replies the router or quinn refused.
    pub reply_refused: u64,
}

/// What the connector side counted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ConnectorUdpStats {
    /// Datagrams of any type taken from the connections.
    pub datagrams_in: u64,
    /// Payload datagrams (v3 `0x01`) among them.
    pub payloads_in: u64,
    /// Registrations among them.
    pub registrations_in: u64,
    /// Registrations with a bundled payload among those.
    pub bundled_in: u64,
    /// Payloads written to origin sockets.
    pub to_origin: u64,
    /// Echoes read from origin sockets.
    pub from_origin: u64,
    /// Echoes the manager refused to frame (counted by it, by reason).
    pub frame_refused: u64,
    /// Framed echoes quinn refused (queue full, too large, closed).
    pub send_refused: u64,
    /// Framed echoes queued on a connection.
    pub queued: u64,
    /// Registration responses queued.
    pub responses_queued: u64,
    /// Registration responses quinn refused.
    pub responses_refused: u64,
    /// Origin sockets opened.
    pub sockets_opened: u64,
    /// Origin sockets closed.
    pub sockets_closed: u64,
}

/// An echo due: when, arrival order, socket, payload.
type Echo = (VirtualTime, u64, UdpFlowId, Vec<u8>);

/// The connector process's UDP half: one session manager for every connection.
pub struct ConnectorUdp {
    /// The manager under test.
    pub sessions: SessionManager,
    /// Open origin sockets and where they point.
    sockets: HashMap<UdpFlowId, SocketAddr>,
    /// Echoes due: (when, order, socket, payload).
    echoes: BinaryHeap<Reverse<Echo>>,
    order: u64,
    buf: Vec<u8>,
    /// Counters.
    pub stats: ConnectorUdpStats,
    /// The ICMP proxy under test.
    pub icmp: IcmpRouter,
    pings: HashMap<icmp::FunnelId, PingSocket>,
    /// Echo replies due from the origin network: (when, order, funnel, from, ICMP message).
    ping_replies: BinaryHeap<Reverse<PingReply>>,
    /// ICMP counters.
    pub icmp_stats: IcmpStats,
    versions: HashMap<LinkId, DatagramVersion>,
}

/// An echo reply due: when, order, funnel, from, ICMP message.
type PingReply = (VirtualTime, u64, icmp::FunnelId, std::net::IpAddr, Vec<u8>);

impl ConnectorUdp {
    /// A connector side with `limits`.
    pub fn new(limits: SessionLimits) -> Self {
        Self {
            sessions: SessionManager::new(limits),
            sockets: HashMap::new(),
            echoes: BinaryHeap::new(),
            order: 0,
            buf: vec![0; HEADROOM + ORIGIN_READ + TAILROOM],
            stats: ConnectorUdpStats::default(),
            icmp: IcmpRouter::new(RouterConfig::new(Some(ICMP_SRC_V4), Some(ICMP_SRC_V6))),
            pings: HashMap::new(),
            ping_replies: BinaryHeap::new(),
            icmp_stats: IcmpStats::default(),
            versions: HashMap::new(),
        }
    }

    /// Open origin sockets.
    pub fn sockets(&self) -> usize {
        self.sockets.len()
    }

    /// The link of connector `index` (connectors are never replaced in place, so the index is
    /// unique for the run).
    pub fn link(index: usize) -> LinkId {
        LinkId(index as u64)
    }

    /// Takes every received datagram from every connection and acts on it, then does what
    /// the manager asked and sends the echoes that are due.
    pub fn pump(
        &mut self,
        now: VirtualTime,
        clock: &Clock,
        connectors: &mut [(SocketAddr, Option<ConnectorConnection>)],
    ) {
        let at = clock.instant(now);
        for (i, (_, conn)) in connectors.iter_mut().enumerate() {
            let Some(conn) = conn else { continue };
            let version = conn.datagram_version();
            self.versions.insert(Self::link(i), version);
            while let Some(d) = conn.poll_datagram() {
                self.stats.datagrams_in += 1;
                match d.first().copied() {
                    Some(0x01) => self.stats.payloads_in += 1,
                    Some(0x00) => {
                        self.stats.registrations_in += 1;
                        if d.get(1).is_some_and(|f| f & 0x04 != 0) {
                            self.stats.bundled_in += 1;
                        }
                    }
                    _ => {}
                }
                match self
                    .sessions
                    .handle_datagram(at, Self::link(i), version, &d)
                {
                    Inbound::Forward { flow, payload } => {
                        let payload = payload.to_vec();
                        self.write_origin(now, flow, payload);
                    }
                    Inbound::Icmp(packet) => {
                        let packet = packet.to_vec();
                        self.icmp_request(now, clock, Self::link(i), packet, conn);
                    }
                    Inbound::Handled | Inbound::Dropped(_) => {}
                }
            }
        }
        self.drain_actions(now, clock, connectors);
        self.ping_replies_due(now, clock, connectors);
        while let Some(Reverse((due, _, flow, payload))) = self.echoes.peek().cloned() {
            if due > now {
                break;
            }
            self.echoes.pop();
            if !self.sockets.contains_key(&flow) {
                continue; // closed meanwhile: the read never happens
            }
            self.stats.from_origin += 1;
            let len = payload.len();
            self.buf[HEADROOM..HEADROOM + len].copy_from_slice(&payload);
            match self.sessions.frame_origin(at, flow, &mut self.buf, len) {
                Ok(out) => {
                    let i = out.link.0 as usize;
                    let datagram = Bytes::copy_from_slice(&self.buf[out.range]);
                    match connectors.get_mut(i).and_then(|c| c.1.as_mut()) {
                        Some(conn) => match conn.send_datagram(datagram) {
                            Ok(()) => self.stats.queued += 1,
                            Err(_) => self.stats.send_refused += 1,
                        },
                        None => self.stats.send_refused += 1,
                    }
                }
                Err(_) => self.stats.frame_refused += 1,
            }
        }
    }

    fn drain_actions(
        &mut self,
        now: VirtualTime,
        clock: &Clock,
        connectors: &mut [(SocketAddr, Option<ConnectorConnection>)],
    ) {
        let at = clock.instant(now);
        while let Some(action) = self.sessions.poll_action() {
            match action {
                SessionAction::Open { flow, dest } => {
                    let ip = match dest.ip() {
                        std::net::IpAddr::V4(v4) => v4.octets(),
                        std::net::IpAddr::V6(_) => [0; 4],
                    };
                    if ip[..2] == UNREACHABLE {
                        self.sessions
                            .handle_origin_failed(flow, "connect: network is unreachable");
                    } else {
                        self.sockets.insert(flow, dest);
                        self.stats.sockets_opened += 1;
                        self.sessions.handle_origin_opened(at, flow);
                    }
                }
                SessionAction::Send { flow, payload } => {
                    self.write_origin(now, flow, payload.to_vec())
                }
                SessionAction::Close { flow } => {
                    if self.sockets.remove(&flow).is_some() {
                        self.stats.sockets_closed += 1;
                    }
                }
                SessionAction::Datagram { link, datagram } => {
                    let sent = connectors
                        .get_mut(link.0 as usize)
                        .and_then(|c| c.1.as_mut())
                        .map(|c| c.send_datagram(datagram));
                    match sent {
                        Some(Ok(())) => self.stats.responses_queued += 1,
                        _ => self.stats.responses_refused += 1,
                    }
                }
                // v2 sessions are answered over RPC streams; the v3 scenarios never make them.
                SessionAction::V2Registered { .. } | SessionAction::V2Unregister { .. } => {}
            }
        }
    }

    /// An IP packet from the edge for the ICMP router; a TTL-exceeded answer goes straight back
    /// on `conn`, an echo request to the simulated origin network.
    fn icmp_request(
        &mut self,
        now: VirtualTime,
        clock: &Clock,
        link: LinkId,
        mut packet: Vec<u8>,
        conn: &mut ConnectorConnection,
    ) {
        self.icmp_stats.requests += 1;
        let at = clock.instant(now);
        let mut out = [0u8; 1 + 1500 + 1];
        let verdict = self
            .icmp
            .handle_request(at, link, &mut packet, &mut out[1..]);
        self.drain_icmp_actions();
        match verdict {
            Ok(Verdict::Reply { len }) => {
                self.icmp_stats.ttl_exceeded += 1;
                let datagram = frame_ip(self.version(link), &mut out, len);
                self.send_icmp(datagram, Some(conn));
            }
            Ok(Verdict::Forward {
                funnel,
                dst,
                message,
                ..
            }) => {
                self.icmp_stats.forwarded += 1;
                let Some(socket) = self.pings.get(&funnel) else {
                    return;
                };
                // The origin network answers echo requests to 10/8 and fd00::/8 hosts.
                let reachable = match dst {
                    std::net::IpAddr::V4(a) => {
                        a.octets()[0] == 10 && a.octets()[..2] != UNREACHABLE
                    }
                    std::net::IpAddr::V6(a) => a.octets()[0] == 0xfd && a.segments()[0] != 0xfd51,
                };
                if !reachable || message.len() < 8 {
                    return;
                }
                // The kernel sent it with the socket's ident; the host echoes that.
                let mut reply = message.to_vec();
                reply[0] = if dst.is_ipv4() { 0 } else { 129 };
                reply[4..6].copy_from_slice(&socket.ident.to_be_bytes());
                self.order += 1;
                self.ping_replies.push(Reverse((
                    now + ORIGIN_DELAY,
                    self.order,
                    funnel,
                    dst,
                    reply,
                )));
            }
            Err(_) => self.icmp_stats.refused += 1,
        }
    }

    fn ping_replies_due(
        &mut self,
        now: VirtualTime,
        clock: &Clock,
        connectors: &mut [(SocketAddr, Option<ConnectorConnection>)],
    ) {
        let at = clock.instant(now);
        while let Some(Reverse((due, ..))) = self.ping_replies.peek() {
            if *due > now {
                break;
            }
            let Some(Reverse((_, _, funnel, from, message))) = self.ping_replies.pop() else {
                break;
            };
            if !self.pings.contains_key(&funnel) {
                continue; // socket closed meanwhile
            }
            self.icmp_stats.replies += 1;
            let mut out = [0u8; 1 + 1500 + 1];
            match self
                .icmp
                .handle_reply(at, funnel, from, &message, &mut out[1..])
            {
                Ok((link, len)) => {
                    let datagram = frame_ip(self.version(link), &mut out, len);
                    let conn = connectors
                        .get_mut(link.0 as usize)
                        .and_then(|c| c.1.as_mut());
                    self.send_icmp(datagram, conn);
                }
                Err(_) => self.icmp_stats.reply_refused += 1,
            }
        }
    }

    fn send_icmp(&mut self, datagram: Option<Bytes>, conn: Option<&mut ConnectorConnection>) {
        let sent = match (datagram, conn) {
            (Some(d), Some(conn)) => conn.send_datagram(d).is_ok(),
            _ => false,
        };
        if sent {
            self.icmp_stats.queued += 1;
        } else {
            self.icmp_stats.reply_refused += 1;
        }
    }

    fn drain_icmp_actions(&mut self) {
        while let Some(action) = self.icmp.poll_action() {
            match action {
                RouterAction::OpenFunnel { funnel, .. } => {
                    // Any ident but the requester's id would do; derive one from the funnel.
                    let ident = (funnel.0 as u16) ^ 0xbeef;
                    self.pings.insert(funnel, PingSocket { ident });
                }
                RouterAction::CloseFunnel { funnel } => {
                    self.pings.remove(&funnel);
                }
            }
        }
    }

    fn version(&self, link: LinkId) -> DatagramVersion {
        self.versions
            .get(&link)
            .copied()
            .unwrap_or(DatagramVersion::V3)
    }

    fn write_origin(&mut self, now: VirtualTime, flow: UdpFlowId, payload: Vec<u8>) {
        let Some(dest) = self.sockets.get(&flow) else {
            return;
        };
        self.stats.to_origin += 1;
        if dest.port() == ECHO_PORT {
            self.order += 1;
            self.echoes
                .push(Reverse((now + ORIGIN_DELAY, self.order, flow, payload)));
        }
    }

    /// Lets idle sessions end.
    pub fn handle_timeout(
        &mut self,
        now: VirtualTime,
        clock: &Clock,
        connectors: &mut [(SocketAddr, Option<ConnectorConnection>)],
    ) {
        let at = clock.instant(now);
        if self.sessions.poll_timeout().is_some_and(|t| t <= at) {
            self.sessions.handle_timeout(at);
        }
        if self.icmp.poll_timeout().is_some_and(|t| t <= at) {
            self.icmp.handle_timeout(at);
            self.drain_icmp_actions();
        }
        self.drain_actions(now, clock, connectors);
    }

    /// The earliest thing this side must do.
    pub fn next_deadline(&self, clock: &Clock) -> Option<VirtualTime> {
        let timer = self.sessions.poll_timeout().map(|t| clock.virtual_time(t));
        let echo = self.echoes.peek().map(|Reverse((t, ..))| *t);
        let icmp = self.icmp.poll_timeout().map(|t| clock.virtual_time(t));
        let ping = self.ping_replies.peek().map(|Reverse((t, ..))| *t);
        [timer, echo, icmp, ping].into_iter().flatten().min()
    }
}

/// Frames the IP packet at `out[1..1 + len]` as an ICMP datagram of `version`, in place.
fn frame_ip(version: DatagramVersion, out: &mut [u8], len: usize) -> Option<Bytes> {
    match version {
        DatagramVersion::V3 => {
            let n = v3::frame_icmp_in_place(out, len).ok()?;
            Some(Bytes::copy_from_slice(&out[..n]))
        }
        DatagramVersion::V2 => {
            let n = v2::frame_ip_in_place(&mut out[1..], len).ok()?;
            Some(Bytes::copy_from_slice(&out[1..1 + n]))
        }
    }
}

/// One eyeball flow at the edge.
#[derive(Debug, Clone)]
pub struct EyeSession {
    /// Its RequestID.
    pub id: SessionId,
    /// Origin it asks for.
    pub dest: SocketAddr,
    /// The connection it is registered on.
    pub conn: ConnId,
    /// Idle hint sent.
    pub idle_secs: u16,
    /// The connector answered OK.
    pub registered: bool,
    /// The connector refused (response code).
    pub refused: Option<v3::ResponseCode>,
    /// Registration datagrams sent.
    pub registrations: u32,
    /// Payloads sent.
    pub sent: u32,
    /// Echoes received.
    pub echoed: u32,
    /// The one timer that counts; older entries in the queue are stale.
    due: VirtualTime,
}

/// What the eyeball counted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EyeStats {
    /// Payloads queued at the edge (in payload datagrams or bundled).
    pub payloads_sent: u64,
    /// Of those, bundled in a registration.
    pub bundled: u64,
    /// Datagrams of any type queued at the edge.
    pub datagrams_sent: u64,
    /// Datagrams of any type received at the edge.
    pub datagrams_in: u64,
    /// Registration datagrams queued.
    pub registrations_sent: u64,
    /// Registration responses received.
    pub responses_in: u64,
    /// Echoes received with the right content.
    pub echoes: u64,
    /// Datagrams the edge refused to queue.
    pub send_refused: u64,
    /// Received datagrams that matched nothing (a bug if non-zero).
    pub strays: u64,
}

/// An eyeball that registers v3 sessions and pings through them.
pub struct Eyeball {
    /// Its flows.
    pub sessions: Vec<EyeSession>,
    by_id: HashMap<SessionId, usize>,
    /// Payloads per session.
    pub per_session: u32,
    /// Time between a session's payloads.
    pub interval: Duration,
    /// Re-send a registration not answered within this.
    pub retry: Duration,
    /// Send a bundled payload with the first registration.
    pub bundle: bool,
    /// Next action per session.
    timers: BinaryHeap<Reverse<(VirtualTime, usize)>>,
    /// Counters.
    pub stats: EyeStats,
}

impl Eyeball {
    /// Sessions to `dests` (one each), registered on `conn` starting at `start`, spread over
    /// `spread` so they do not all go in one burst.
    pub fn new(
        ids: impl Iterator<Item = u128>,
        dests: &[SocketAddr],
        conn: ConnId,
        start: VirtualTime,
        spread: Duration,
        idle_secs: u16,
    ) -> Self {
        let mut e = Self {
            sessions: Vec::new(),
            by_id: HashMap::new(),
            per_session: 4,
            interval: Duration::from_millis(200),
            retry: Duration::from_millis(500),
            bundle: true,
            timers: BinaryHeap::new(),
            stats: EyeStats::default(),
        };
        let n = dests.len().max(1) as u32;
        for (i, (id, dest)) in ids.zip(dests).enumerate() {
            let id = SessionId(id);
            e.by_id.insert(id, i);
            e.sessions.push(EyeSession {
                id,
                dest: *dest,
                conn,
                idle_secs,
                registered: false,
                refused: None,
                registrations: 0,
                sent: 0,
                echoed: 0,
                due: start + spread / n * i as u32,
            });
            e.timers.push(Reverse((start + spread / n * i as u32, i)));
        }
        e
    }

    /// The next time the eyeball wants to act.
    pub fn next_wakeup(&self) -> Option<VirtualTime> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    /// Moves every session of `from` to `to` and re-registers them there (what the edge does
    /// when a connection dies).
    pub fn move_sessions(&mut self, from: ConnId, to: ConnId, now: VirtualTime) {
        for (i, s) in self.sessions.iter_mut().enumerate() {
            if s.conn == from {
                s.conn = to;
                if s.refused.is_none() {
                    s.registered = false;
                    s.due = now;
                    self.timers.push(Reverse((now, i)));
                }
            }
        }
    }

    /// Takes what arrived and sends what is due.
    pub fn tick(&mut self, now: VirtualTime, edge: &mut EdgeEndpoint) {
        while let Some((_, d)) = edge.poll_datagram() {
            self.stats.datagrams_in += 1;
            self.receive(now, &d);
        }
        while let Some(&Reverse((t, i))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            if self.sessions[i].due == t {
                self.act(now, i, edge);
            }
        }
    }

    fn receive(&mut self, now: VirtualTime, d: &[u8]) {
        match v3::decode(d) {
            Ok(v3::Datagram::RegistrationResponse(r)) => {
                self.stats.responses_in += 1;
                let Some(&i) = self.by_id.get(&r.request_id) else {
                    self.stats.strays += 1;
                    return;
                };
                let s = &mut self.sessions[i];
                if r.code == v3::ResponseCode::Ok {
                    if !s.registered {
                        s.registered = true;
                        s.due = now;
                        self.timers.push(Reverse((now, i)));
                    }
                } else {
                    s.refused = Some(r.code);
                }
            }
            Ok(v3::Datagram::Payload(p)) => {
                let Some(&i) = self.by_id.get(&p.request_id) else {
                    self.stats.strays += 1;
                    return;
                };
                if p.payload.starts_with(&p.request_id.0.to_be_bytes()) {
                    self.sessions[i].echoed += 1;
                    self.stats.echoes += 1;
                } else {
                    self.stats.strays += 1;
                }
            }
            _ => self.stats.strays += 1,
        }
    }

    fn payload_bytes(id: SessionId, seq: u32) -> Vec<u8> {
        let mut p = id.0.to_be_bytes().to_vec();
        p.extend_from_slice(&seq.to_be_bytes());
        p.resize(64 + (seq as usize % 4) * 100, 0xa5);
        p
    }

    fn act(&mut self, now: VirtualTime, i: usize, edge: &mut EdgeEndpoint) {
        let s = &mut self.sessions[i];
        if s.refused.is_some() {
            return;
        }
        if !s.registered {
            // Bundle the first payload with the first registration only: a retry must not
            // deliver it twice.
            let first = (self.bundle && s.registrations == 0 && s.sent == 0)
                .then(|| Self::payload_bytes(s.id, 0));
            let r = v3::Registration {
                request_id: s.id,
                dest: s.dest,
                traced: false,
                idle_hint_secs: s.idle_secs,
                payload: first.as_deref().unwrap_or(&[]),
            };
            let mut out = vec![0; r.encoded_len()];
            if r.encode(&mut out).is_ok() {
                match edge.send_datagram(s.conn, out.into()) {
                    Ok(()) => {
                        s.registrations += 1;
                        self.stats.datagrams_sent += 1;
                        self.stats.registrations_sent += 1;
                        if first.is_some() {
                            s.sent += 1;
                            self.stats.payloads_sent += 1;
                            self.stats.bundled += 1;
                        }
                    }
                    Err(_) => self.stats.send_refused += 1,
                }
            }
            s.due = now + self.retry;
            self.timers.push(Reverse((s.due, i)));
            return;
        }
        if s.sent >= self.per_session {
            return;
        }
        let body = Self::payload_bytes(s.id, s.sent);
        let p = v3::Payload {
            request_id: s.id,
            payload: &body,
        };
        let mut out = vec![0; p.encoded_len()];
        if p.encode(&mut out).is_ok() {
            match edge.send_datagram(s.conn, out.into()) {
                Ok(()) => {
                    s.sent += 1;
                    self.stats.payloads_sent += 1;
                    self.stats.datagrams_sent += 1;
                }
                Err(_) => self.stats.send_refused += 1,
            }
        }
        let s = &mut self.sessions[i];
        s.due = now + self.interval;
        self.timers.push(Reverse((s.due, i)));
    }
}
