//! UDP sessions and ICMP in the simulation: the network behind the connectors' datagram
//! planes (UDP echo services, unreachable hosts, ping sockets that rewrite echo ids as Linux's
//! do), and the public clients of the edge machine's UDP mappings.
//!
//! Every payload is accounted for: the clients count what they sent and what came back, the
//! connector side counts what it received, forwarded, echoed and queued, the manager counts
//! its drops by reason, and quinn's frame counters give the datagrams the network lost.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use burrow_core::connector::Input as ConnectorInput;
use burrow_core::datagram::v3;
use burrow_core::edge::{Event, Input};
use burrow_core::icmp::FunnelId;
use burrow_core::session::edge::{EdgeDrop, MappingId, SessionChange, SessionEnd, SessionEvent};
use burrow_core::session::{SessionId, UdpFlowId, HEADROOM, ORIGIN_READ, TAILROOM};
use burrow_core::tunnel::edge::ConnId;
use bytes::BytesMut;

use crate::clock::VirtualTime;
use crate::world::{ToClient, World};

/// UDP port of the simulated echo service.
pub const ECHO_PORT: u16 = 7;
/// First octets of destinations the simulated origin network cannot reach.
pub const UNREACHABLE: [u8; 2] = [10, 99];
/// How long an origin takes to echo.
const ORIGIN_DELAY: Duration = Duration::from_micros(300);
/// The connector's ICMP source addresses (those of PROTOCOL.md's TTL-exceeded examples).
pub const ICMP_SRC_V4: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 3);
/// IPv6 source.
pub const ICMP_SRC_V6: Ipv6Addr = Ipv6Addr::new(0xfd51, 0x2391, 0x697, 0xf4ee, 0, 0, 0, 3);

/// What the simulated origin side counted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OriginStats {
    /// Payloads written to origin sockets.
    pub to_origin: u64,
    /// Echoes read from origin sockets.
    pub from_origin: u64,
    /// Of those, queued on a connection.
    pub echoes_queued: u64,
    /// Of those, refused (by the manager, by reason, or by quinn).
    pub echoes_refused: u64,
    /// Echoes due on a socket the connector closed after the payload went out: never read.
    pub echoes_unread: u64,
    /// Origin sockets opened.
    pub sockets_opened: u64,
    /// Origin sockets closed.
    pub sockets_closed: u64,
    /// Echo requests sent through ping sockets.
    pub pings: u64,
    /// Echo replies read from ping sockets.
    pub ping_replies: u64,
}

/// An echo due: when, arrival order, connector, socket, payload.
type Echo = (VirtualTime, u64, usize, UdpFlowId, Vec<u8>);
/// An echo reply due: when, order, connector, ping socket, from, ICMP message.
type PingReply = (VirtualTime, u64, usize, FunnelId, IpAddr, Vec<u8>);

/// The simulated network behind the connectors' UDP sessions and ping sockets.
pub struct OriginNet {
    /// Open origin sockets and where they point, by connector and session socket.
    sockets: HashMap<(usize, UdpFlowId), SocketAddr>,
    /// Open ping sockets and the echo ident the kernel gave each.
    pings: HashMap<(usize, FunnelId), u16>,
    echoes: BinaryHeap<Reverse<Echo>>,
    ping_replies: BinaryHeap<Reverse<PingReply>>,
    order: u64,
    stats: OriginStats,
    /// When each open socket last carried a payload either way (or opened).
    last_io: HashMap<(usize, UdpFlowId), VirtualTime>,
    /// When a ping socket last sent a request or read a reply.
    last_ping: Option<VirtualTime>,
    /// For every socket closed: how long it had been quiet.
    quiet_at_close: Vec<(UdpFlowId, Duration)>,
    /// For every socket closed: its connector, its destination and when it closed.
    closed: Vec<(usize, SocketAddr, VirtualTime)>,
    /// The read buffer handed to the connector (what a driver keeps between reads).
    pub buf: BytesMut,
}

impl Default for OriginNet {
    fn default() -> Self {
        Self {
            sockets: HashMap::new(),
            pings: HashMap::new(),
            echoes: BinaryHeap::new(),
            ping_replies: BinaryHeap::new(),
            order: 0,
            stats: OriginStats::default(),
            last_io: HashMap::new(),
            last_ping: None,
            quiet_at_close: Vec::new(),
            closed: Vec::new(),
            buf: BytesMut::with_capacity(64 * 1024),
        }
    }
}

/// A read an origin socket or ping socket has for its connector.
pub enum Read {
    /// An echo on a session socket.
    Udp(usize, UdpFlowId, Vec<u8>),
    /// An echo reply on a ping socket.
    Ping(usize, FunnelId, IpAddr, Vec<u8>),
}

impl Read {
    /// The connector it is for.
    pub fn node(&self) -> usize {
        match self {
            Read::Udp(n, ..) | Read::Ping(n, ..) => *n,
        }
    }

    /// The connector's input, reading into `buf` as a driver does (room for the framing
    /// around the payload).
    pub fn as_input<'a>(&'a self, buf: &'a mut BytesMut) -> ConnectorInput<'a> {
        match self {
            Read::Udp(_, flow, payload) => {
                let len = payload.len();
                buf.resize(HEADROOM + ORIGIN_READ + TAILROOM, 0);
                buf[HEADROOM..HEADROOM + len].copy_from_slice(payload);
                ConnectorInput::UdpRead {
                    flow: *flow,
                    buf,
                    len,
                }
            }
            Read::Ping(_, funnel, from, message) => ConnectorInput::PingRead {
                funnel: *funnel,
                from: *from,
                message,
            },
        }
    }
}

impl OriginNet {
    /// The connector's counters.
    pub fn stats(&self) -> &OriginStats {
        &self.stats
    }

    /// Every origin socket closed so far, with how long it had carried nothing when it was
    /// closed.
    pub fn quiet_at_close(&self) -> &[(UdpFlowId, Duration)] {
        &self.quiet_at_close
    }

    /// Every origin socket connector `who` closed so far: its destination, when it closed and
    /// how long it had carried nothing then.
    pub fn closed_by(
        &self,
        who: usize,
    ) -> impl Iterator<Item = (SocketAddr, VirtualTime, Duration)> + '_ {
        self.closed
            .iter()
            .zip(&self.quiet_at_close)
            .filter(move |((n, ..), _)| *n == who)
            .map(|(&(_, dest, at), &(_, quiet))| (dest, at, quiet))
    }

    /// The last time any open session socket carried a payload (or opened).
    pub fn last_io(&self) -> Option<VirtualTime> {
        self.last_io.values().copied().max()
    }

    /// Open origin sockets.
    pub fn sockets(&self) -> usize {
        self.sockets.len()
    }

    /// Counts an echo read as queued on a connection or refused.
    pub fn count_echo(&mut self, queued: bool) {
        if queued {
            self.stats.echoes_queued += 1;
        } else {
            self.stats.echoes_refused += 1;
        }
    }

    /// When a ping socket last sent a request or read a reply.
    pub fn last_ping(&self) -> Option<VirtualTime> {
        self.last_ping
    }

    /// Open ping sockets.
    pub fn funnels(&self) -> usize {
        self.pings.len()
    }

    /// Opens a session socket to `dest`, or says why not.
    pub fn open(
        &mut self,
        now: VirtualTime,
        who: usize,
        flow: UdpFlowId,
        dest: SocketAddr,
    ) -> Result<(), &'static str> {
        let unreachable = match dest.ip() {
            IpAddr::V4(v4) => v4.octets()[..2] == UNREACHABLE,
            IpAddr::V6(_) => true,
        };
        if unreachable {
            return Err("connect: network is unreachable");
        }
        self.sockets.insert((who, flow), dest);
        self.last_io.insert((who, flow), now);
        self.stats.sockets_opened += 1;
        Ok(())
    }

    /// Closes a session socket.
    pub fn close(&mut self, now: VirtualTime, who: usize, flow: UdpFlowId) {
        if let Some(dest) = self.sockets.remove(&(who, flow)) {
            self.stats.sockets_closed += 1;
            let at = self.last_io.remove(&(who, flow)).unwrap_or(now);
            let quiet = now.since_start() - at.since_start();
            self.quiet_at_close.push((flow, quiet));
            self.closed.push((who, dest, now));
        }
    }

    /// Opens a ping socket.
    pub fn open_funnel(&mut self, who: usize, funnel: FunnelId) {
        // Any ident but the requester's id would do; derive one from the funnel.
        self.pings.insert((who, funnel), (funnel.0 as u16) ^ 0xbeef);
    }

    /// Closes a ping socket.
    pub fn close_funnel(&mut self, who: usize, funnel: FunnelId) {
        self.pings.remove(&(who, funnel));
    }

    /// An echo request leaves through a ping socket.
    pub fn ping(
        &mut self,
        now: VirtualTime,
        who: usize,
        funnel: FunnelId,
        dst: IpAddr,
        message: &[u8],
    ) {
        let Some(&ident) = self.pings.get(&(who, funnel)) else {
            return;
        };
        self.stats.pings += 1;
        self.last_ping = Some(now);
        // The origin network answers echo requests to 10/8 and fd00::/8 hosts.
        let reachable = match dst {
            IpAddr::V4(a) => a.octets()[0] == 10 && a.octets()[..2] != UNREACHABLE,
            IpAddr::V6(a) => a.octets()[0] == 0xfd && a.segments()[0] != 0xfd51,
        };
        if !reachable || message.len() < 8 {
            return;
        }
        // The kernel sent it with the socket's ident; the host echoes that.
        let mut reply = message.to_vec();
        reply[0] = if dst.is_ipv4() { 0 } else { 129 };
        reply[4..6].copy_from_slice(&ident.to_be_bytes());
        self.order += 1;
        let due = now + ORIGIN_DELAY;
        self.ping_replies
            .push(Reverse((due, self.order, who, funnel, dst, reply)));
    }

    /// A payload leaves through a session socket.
    pub fn write_udp(&mut self, now: VirtualTime, who: usize, flow: UdpFlowId, payload: Vec<u8>) {
        let Some(dest) = self.sockets.get(&(who, flow)) else {
            return;
        };
        self.stats.to_origin += 1;
        self.last_io.insert((who, flow), now);
        if dest.port() == ECHO_PORT {
            self.order += 1;
            self.echoes.push(Reverse((
                now + ORIGIN_DELAY,
                self.order,
                who,
                flow,
                payload,
            )));
        }
    }

    /// The next read due by `now` on a socket still open.
    pub fn next_read(&mut self, now: VirtualTime) -> Option<Read> {
        while let Some(Reverse((due, ..))) = self.echoes.peek() {
            if *due > now {
                break;
            }
            let Reverse((_, _, who, flow, payload)) = self.echoes.pop()?;
            if !self.sockets.contains_key(&(who, flow)) {
                // Closed meanwhile: the read never happens.
                self.stats.echoes_unread += 1;
                continue;
            }
            self.stats.from_origin += 1;
            self.last_io.insert((who, flow), now);
            return Some(Read::Udp(who, flow, payload));
        }
        while let Some(Reverse((due, ..))) = self.ping_replies.peek() {
            if *due > now {
                break;
            }
            let Reverse((_, _, who, funnel, from, message)) = self.ping_replies.pop()?;
            if self.pings.contains_key(&(who, funnel)) {
                self.stats.ping_replies += 1;
                self.last_ping = Some(now);
                return Some(Read::Ping(who, funnel, from, message));
            }
        }
        None
    }

    /// The earliest read due.
    pub fn next_deadline(&self) -> Option<VirtualTime> {
        let echo = self.echoes.peek().map(|Reverse((t, ..))| *t);
        let ping = self.ping_replies.peek().map(|Reverse((t, ..))| *t);
        [echo, ping].into_iter().flatten().min()
    }
}

/// One public client of the edge machine's UDP mappings (`burrow edge --udp-map`): a socket
/// that sends payloads to a mapping's port and takes what comes back. What the edge did with
/// its flow comes from the edge's session events.
#[derive(Debug, Clone)]
pub struct UdpClient {
    /// Its address.
    pub addr: SocketAddr,
    /// The mapping it sends to.
    pub mapping: MappingId,
    /// Payloads sent.
    pub sent: u32,
    /// Echoes received (each carries this client's tag).
    pub echoed: u32,
    /// When its last payload was sent.
    pub last_sent: Option<VirtualTime>,
    /// Every session the edge opened for it, in order.
    pub sessions: Vec<SessionId>,
    /// Its session now (opened, not ended).
    pub session: Option<SessionId>,
    /// The connection its session is on.
    pub conn: Option<ConnId>,
    /// The connector took its session (registered on `conn`).
    pub registered: bool,
    /// The connector took one of its sessions at some time.
    pub was_registered: bool,
    /// Why each of its sessions ended.
    pub ended: Vec<SessionEnd>,
    /// Every move of its session off a connection that went away: (from, to).
    pub moves: Vec<(ConnId, ConnId)>,
    /// Its packets the edge dropped because its session table was full (no session opened).
    pub table_full: u32,
    /// The one timer that counts.
    due: VirtualTime,
}

impl UdpClient {
    /// The refusals among its sessions' ends.
    pub fn refusals(&self) -> impl Iterator<Item = v3::ResponseCode> + '_ {
        self.ended.iter().filter_map(|e| match e {
            SessionEnd::Refused { code, .. } => Some(*code),
            _ => None,
        })
    }
}

/// What the clients counted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ClientStats {
    /// Payloads handed to the edge.
    pub sent: u64,
    /// Packets received from the edge.
    pub received: u64,
    /// Echoes received with this client's tag.
    pub echoes: u64,
    /// Packets the edge dropped (`ClientPacketDropped`).
    pub dropped: u64,
    /// Session events seen.
    pub events: u64,
    /// Datagrams each edge connection refused (its send queue full), by connection.
    pub refused_on: BTreeMap<ConnId, u64>,
}

/// The public clients of the edge machine's UDP mappings, each sending `per_client` payloads
/// `interval` apart; every packet and session event is checked as it comes.
pub struct UdpClients {
    /// The clients.
    pub clients: Vec<UdpClient>,
    by_addr: HashMap<SocketAddr, usize>,
    /// Payloads per client.
    pub per_client: u32,
    /// Time between a client's payloads.
    pub interval: Duration,
    /// More payloads a client that has heard nothing back sends after its `per_client`, as a
    /// resolver retries until it is answered.
    pub retries: u32,
    timers: BinaryHeap<Reverse<(VirtualTime, usize)>>,
    /// Counters.
    pub stats: ClientStats,
    /// What went wrong (a bug if not empty): a packet or event that matched no client, a
    /// wrong payload, a second session opened while one lives.
    pub bad: Vec<String>,
}

impl UdpClients {
    /// One client per entry of `mappings`, the `i`th starting at `start + spread * i / n`.
    pub fn new(mappings: &[MappingId], start: VirtualTime, spread: Duration) -> Self {
        let mut c = Self {
            clients: Vec::new(),
            by_addr: HashMap::new(),
            per_client: 4,
            interval: Duration::from_millis(200),
            retries: 0,
            timers: BinaryHeap::new(),
            stats: ClientStats::default(),
            bad: Vec::new(),
        };
        let n = mappings.len().max(1) as u32;
        for (i, &mapping) in mappings.iter().enumerate() {
            let addr = SocketAddr::from((
                [198, 18, (i / 250 % 250) as u8, (i % 250 + 1) as u8],
                50_000 + (i / 62_500) as u16,
            ));
            let due = start + spread / n * i as u32;
            c.by_addr.insert(addr, i);
            c.clients.push(UdpClient {
                addr,
                mapping,
                sent: 0,
                echoed: 0,
                last_sent: None,
                sessions: Vec::new(),
                session: None,
                conn: None,
                registered: false,
                was_registered: false,
                ended: Vec::new(),
                moves: Vec::new(),
                table_full: 0,
                due,
            });
            c.timers.push(Reverse((due, i)));
        }
        c
    }

    /// The next time a client wants to send.
    pub fn next_wakeup(&self) -> Option<VirtualTime> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    /// Clients whose traffic is over.
    pub fn done(&self) -> bool {
        self.clients.iter().all(|c| c.sent >= self.quota(c))
    }

    /// What a client sends in all: its `per_client`, and its retries while it has heard
    /// nothing.
    fn quota(&self, c: &UdpClient) -> u32 {
        match c.echoed {
            0 => self.per_client.saturating_add(self.retries),
            _ => self.per_client,
        }
    }

    /// The payload a client sends: its index, the sequence number, padding.
    fn payload(i: usize, seq: u32) -> Vec<u8> {
        let mut p = (i as u64).to_be_bytes().to_vec();
        p.extend_from_slice(&seq.to_be_bytes());
        p.resize(64 + (seq as usize % 4) * 100, 0xa5);
        p
    }

    /// Takes what the edge sent and sends what is due.
    pub fn tick(&mut self, w: &mut World) {
        while let Some(d) = w.to_clients.pop_front() {
            self.receive(&d);
        }
        let now = w.now;
        while let Some(&Reverse((t, i))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            let quota = self.quota(&self.clients[i]);
            let c = &mut self.clients[i];
            if c.due != t || c.sent >= quota {
                continue;
            }
            let payload = Self::payload(i, c.sent);
            if w.edge_input(Input::ClientPacket {
                mapping: c.mapping,
                from: c.addr,
                data: &payload,
            }) {
                c.sent += 1;
                c.last_sent = Some(now);
                self.stats.sent += 1;
            }
            c.due = now + self.interval;
            self.timers.push(Reverse((c.due, i)));
        }
    }

    fn receive(&mut self, d: &ToClient) {
        self.stats.received += 1;
        let Some(&i) = self.by_addr.get(&d.client) else {
            self.bad
                .push(format!("a packet for unknown client {}", d.client));
            return;
        };
        let c = &mut self.clients[i];
        if d.mapping != c.mapping || !d.payload.starts_with(&(i as u64).to_be_bytes()) {
            self.bad.push(format!(
                "client {} got {:?}'s packet {:02x?}",
                c.addr,
                d.mapping,
                &d.payload[..d.payload.len().min(12)]
            ));
            return;
        }
        c.echoed += 1;
        self.stats.echoes += 1;
    }

    /// What the edge reported about a client's flow.
    pub fn on_event(&mut self, e: &Event) {
        match e {
            Event::Session(e) => self.on_session(e),
            Event::ClientPacketDropped { client, reason, .. } => {
                if let Some(&i) = self.by_addr.get(client) {
                    self.stats.dropped += 1;
                    if *reason == EdgeDrop::SessionsFull {
                        self.clients[i].table_full += 1;
                    }
                }
            }
            Event::DatagramRefused { conn, .. } => {
                *self.stats.refused_on.entry(*conn).or_default() += 1
            }
            _ => {}
        }
    }

    fn on_session(&mut self, e: &SessionEvent) {
        self.stats.events += 1;
        let Some(&i) = self.by_addr.get(&e.client) else {
            self.bad.push(format!("an event for unknown client: {e:?}"));
            return;
        };
        let c = &mut self.clients[i];
        if e.mapping != c.mapping {
            self.bad.push(format!("an event on another mapping: {e:?}"));
            return;
        }
        if let SessionChange::Opened { conn, .. } = e.change {
            if let Some(old) = c.session {
                self.bad.push(format!(
                    "client {} got session {} while {old} lives",
                    c.addr, e.id
                ));
            }
            c.session = Some(e.id);
            c.sessions.push(e.id);
            c.conn = Some(conn);
            c.registered = false;
            return;
        }
        if c.session != Some(e.id) {
            self.bad
                .push(format!("an event for a session not live: {e:?}"));
            return;
        }
        match &e.change {
            SessionChange::Opened { .. } => {}
            SessionChange::Registered { conn } => {
                c.conn = Some(*conn);
                c.registered = true;
                c.was_registered = true;
            }
            SessionChange::Migrated { from, to } => {
                if let Some(from) = from {
                    c.moves.push((*from, *to));
                }
                c.conn = Some(*to);
                c.registered = false;
            }
            SessionChange::Waiting { .. } => {
                c.conn = None;
                c.registered = false;
            }
            SessionChange::Ended(why) => {
                c.session = None;
                c.conn = None;
                c.registered = false;
                c.ended.push(why.clone());
            }
        }
    }
}
