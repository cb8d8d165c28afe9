//! A simulated world: one edge and some connector processes, wired through the lossy
//! [`Network`], driven on virtual time by the str0m rule: after every input, drain every
//! output, then sleep until the earliest deadline. A deadline that does not move time forward
//! is a busy loop, and an error (firezone's lesson).
//!
//! Each connector process is the real [`Connector`] (supervisor, HA connections, backoff,
//! datagram plane), driven through [`Connector::drain`] as a driver does; the world does its
//! I/O on the simulated network, origins and origin network. The edge is the real [`Edge`]
//! that `burrow edge` runs (authentication, routing, eyeball streams and their credit), fed
//! and drained as burrow-tokio's edge loop does (its UDP/ICMP mappings serve the datagram
//! scenarios' public clients).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt::Debug;
use std::hash::Hasher;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use burrow_core::connector::{Connector, Event, Input, Io, Output};
use burrow_core::datagram::LinkId;
use burrow_core::edge::auth::TunnelAuth;
use burrow_core::edge::{self, Edge, EyeballId, StreamEvent};
use burrow_core::session::edge::MappingId;
use burrow_core::tunnel::edge::ConnId;
use burrow_core::tunnel::udp::DatagramHub;
use burrow_core::tunnel::Received;
use fnv::FnvHasher;
use uuid::Uuid;

use crate::clock::{Clock, VirtualTime};
use crate::net::Network;
use crate::origin::Origins;
use crate::rtt::RttReplica;
use crate::tcp::{End, Tcp, TcpEvent};
use crate::udp::{OriginNet, Read};

/// Datagrams a node may send in one batch, as a GSO-capable socket would take them.
const GSO_SEGMENTS: usize = 10;
/// First port of a connector's edge sockets (HA index `i` sends from `BASE_PORT + i`).
const BASE_PORT: u16 = 40000;

/// Something a node reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Happening {
    /// The edge machine reported an event.
    Edge(edge::Event),
    /// The edge machine told an eyeball stream what happened to it.
    Stream(EyeballId, StreamEvent),
    /// Connector process `index` reported an event.
    Connector(usize, Event),
}

/// The edge process: the machine `burrow edge` runs.
pub type EdgeNode = Box<Edge<TunnelAuth>>;

/// Every event with its virtual time, hashed as it is recorded so a run has one fingerprint.
pub struct Trace {
    hasher: FnvHasher,
    tail: Vec<String>,
}

impl Trace {
    const TAIL: usize = 40;

    fn new() -> Self {
        Self {
            hasher: FnvHasher::default(),
            tail: Vec::new(),
        }
    }

    /// Records one line.
    pub fn record(&mut self, at: VirtualTime, what: &dyn Debug) {
        let line = format!("{:>12.6}s {what:?}", at.since_start().as_secs_f64());
        self.hasher.write(line.as_bytes());
        if self.tail.len() == Self::TAIL {
            self.tail.remove(0);
        }
        self.tail.push(line);
    }

    /// The fingerprint of everything recorded.
    pub fn hash(&self) -> u64 {
        self.hasher.finish()
    }

    /// The last lines recorded, for failure reports.
    pub fn tail(&self) -> &[String] {
        &self.tail
    }
}

/// One connector process: the machine and the sockets the world keeps for it.
pub struct Node {
    /// The machine under test.
    pub connector: Connector,
    /// Its host's address; HA index `i`'s socket is this IP at `BASE_PORT + i`.
    ip: [u8; 4],
    /// The deadline of its last [`Output::Timeout`].
    deadline: Option<Instant>,
    /// The edge connection serving each of its links (from its `Registered` events: the
    /// connection id the edge told it names the edge's connection).
    pub served: BTreeMap<LinkId, (u8, ConnId)>,
    /// Every link that ever registered, and its edge connection.
    history: BTreeMap<LinkId, ConnId>,
    /// When a packet last reached one of its sockets.
    pub last_heard: VirtualTime,
    /// Replays each HA index's RTT estimator (for the PTO) when set: `(link, estimator)`.
    pub rtt: Option<BTreeMap<u8, (LinkId, RttReplica)>>,
}

impl Node {
    /// Looks at HA index `index`'s smoothed RTT after a datagram reached it, when watching.
    fn watch_rtt(&mut self, index: u8) {
        let Some(watched) = &mut self.rtt else { return };
        let (Some(link), Some(conn)) = (
            self.connector.link_of(index),
            self.connector.connection(index),
        ) else {
            return;
        };
        let entry = watched
            .entry(index)
            .or_insert((link, RttReplica::default()));
        if entry.0 != link {
            *entry = (link, RttReplica::default());
        }
        entry.1.observe(conn.quic_stats().path.rtt);
    }

    /// The address HA index `index` sends from.
    pub fn socket(&self, index: u8) -> SocketAddr {
        SocketAddr::from((self.ip, BASE_PORT + u16::from(index)))
    }

    /// The edge connection `link` registered as, if it did.
    pub fn served_by(&self, link: LinkId) -> Option<ConnId> {
        self.history.get(&link).copied()
    }

    /// Every edge connection it registered as, in the order of its links.
    pub fn history(&self) -> Vec<ConnId> {
        self.history.values().copied().collect()
    }

    /// The datagram plane, for its counters.
    pub fn hub(&self) -> &DatagramHub {
        self.connector.datagram_hub()
    }

    /// Edge connections registered and serving now, lowest HA index first.
    pub fn live(&self) -> Vec<ConnId> {
        let mut live: Vec<(u8, ConnId)> = self.served.values().copied().collect();
        live.sort();
        live.into_iter().map(|(_, c)| c).collect()
    }

    /// Bytes the connector's connections hold and the streams they hold them for.
    pub fn buffered(&self) -> (usize, usize) {
        (0..self.connector.ha_connections() as u8)
            .filter_map(|i| self.connector.connection(i))
            .fold((0, 0), |(b, s), c| {
                (b + c.buffered_bytes(), s + c.active_streams())
            })
    }
}

/// An edge, its connectors, and the network between them.
pub struct World {
    /// Maps virtual time to the `Instant`s the state machines take.
    pub clock: Clock,
    /// Current virtual time.
    pub now: VirtualTime,
    /// The network.
    pub net: Network,
    /// TCP connections over it (HTTP/2 links).
    pub tcp: Tcp,
    /// What happened.
    pub trace: Trace,
    /// The edge's addresses (one per HA index, as cloudflared's edge pool gives them); one
    /// edge process serves them all.
    pub edge_addrs: Vec<SocketAddr>,
    /// The edge, `None` while it is down.
    edge: Option<EdgeNode>,
    /// The deadline of the edge machine's last [`edge::Output::Timeout`].
    edge_deadline: Option<Instant>,
    /// The edge's connection behind each connection id it told a connector.
    edge_conns: HashMap<Uuid, ConnId>,
    /// Connector processes.
    pub connectors: Vec<Node>,
    /// The origins behind every connector.
    pub origins: Origins,
    /// Times a scenario asked to be woken at (slow readers, pacing).
    pub wakeups: BTreeSet<VirtualTime>,
    /// The network behind the connectors' UDP sessions and ping sockets.
    pub udp: OriginNet,
    /// Which edge address each connector socket dials (edge packets come from it).
    routes: HashMap<SocketAddr, SocketAddr>,
    /// Events of the current step.
    pending: Vec<Happening>,
    /// What the edge told eyeball streams, in order, until the eyeballs take it (whoever
    /// runs the world meanwhile): stream events carry the eyeball's bytes.
    pub inbox: VecDeque<(EyeballId, StreamEvent)>,
    /// What the edge sent public clients from its UDP/ICMP mappings' sockets, in order, until
    /// the clients take it.
    pub to_clients: VecDeque<ToClient>,
    /// The next eyeball stream's name.
    next_eyeball: u64,
    stalled_steps: u32,
}

/// A packet the edge sent a public client from a mapping's socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToClient {
    /// Whose socket sent it.
    pub mapping: MappingId,
    /// Where to.
    pub client: SocketAddr,
    /// UDP payload, or an IP packet for an ICMP mapping.
    pub payload: Vec<u8>,
}

/// What one step did.
#[derive(Debug)]
pub enum Step {
    /// Time moved or input was handled; these events came out.
    Progress(Vec<Happening>),
    /// Nothing is in flight and no timer is armed before the limit.
    Idle,
}

impl World {
    /// A world with `edge` at `edge_addrs` and no connectors yet.
    pub fn new(clock: Clock, net: Network, edge_addrs: Vec<SocketAddr>, edge: EdgeNode) -> Self {
        let mut w = Self {
            clock,
            now: VirtualTime::ZERO,
            net,
            tcp: Tcp::default(),
            trace: Trace::new(),
            edge_addrs,
            edge: None,
            edge_deadline: None,
            edge_conns: HashMap::new(),
            connectors: Vec::new(),
            origins: Origins::new(),
            wakeups: BTreeSet::new(),
            udp: OriginNet::default(),
            routes: HashMap::new(),
            pending: Vec::new(),
            inbox: VecDeque::new(),
            to_clients: VecDeque::new(),
            next_eyeball: 0,
            stalled_steps: 0,
        };
        w.set_edge(Some(edge));
        w
    }

    /// Starts `edge` (a fresh process: nothing of the last one survives), or stops the edge.
    pub fn set_edge(&mut self, edge: Option<EdgeNode>) {
        self.edge = edge;
        self.edge_deadline = None;
        // The old process's TCP connections die with it.
        self.tcp.edge_stopped(self.now, &mut self.net);
        let now = self.instant();
        if let Some(m) = &mut self.edge {
            m.handle_input(
                now,
                edge::Input::QuicSocket {
                    max_segments: GSO_SEGMENTS,
                },
            );
        }
    }

    /// The edge machine, while it runs.
    pub fn edge(&self) -> Option<&Edge<TunnelAuth>> {
        match &self.edge {
            Some(m) => Some(m),
            _ => None,
        }
    }

    /// The edge machine, while it runs, to drive or to ask what needs `&mut`.
    pub fn edge_mut(&mut self) -> Option<&mut Edge<TunnelAuth>> {
        match &mut self.edge {
            Some(m) => Some(m),
            _ => None,
        }
    }

    /// Feeds the edge machine one input (its outputs are drained with the next step); false
    /// while it is down.
    pub fn edge_input(&mut self, input: edge::Input<'_>) -> bool {
        let now = self.instant();
        match &mut self.edge {
            Some(m) => {
                m.handle_input(now, input);
                true
            }
            _ => false,
        }
    }

    /// A name for a new eyeball stream, unique in this world.
    pub fn eyeball_id(&mut self) -> EyeballId {
        self.next_eyeball += 1;
        EyeballId(self.next_eyeball)
    }

    /// Whether the edge holds connection `conn` open.
    pub fn edge_has(&self, conn: ConnId) -> bool {
        match &self.edge {
            Some(m) => m.is_open(conn),
            None => false,
        }
    }

    /// Adds a connector process; returns its index.
    pub fn add(&mut self, connector: Connector) -> usize {
        let n = self.connectors.len();
        self.connectors.push(Node {
            connector,
            ip: [192, 0, 2, 10 + n as u8],
            deadline: None,
            served: BTreeMap::new(),
            history: BTreeMap::new(),
            last_heard: VirtualTime::ZERO,
            rtt: None,
        });
        self.drain(n);
        n
    }

    /// The `Instant` of the current virtual time.
    pub fn instant(&self) -> Instant {
        self.clock.instant(self.now)
    }

    /// Feeds connector `n` one input and does what it asks.
    pub fn feed(&mut self, n: usize, input: Input<'_>) {
        let _span = tracing::trace_span!("connector", n).entered();
        let now = self.instant();
        self.connectors[n].connector.handle_input(now, input);
        self.drain(n);
    }

    /// Drains connector `n`'s outputs: transmits into the network, I/O on the origins and the
    /// origin network (answered at once where a driver would), events into this step's list.
    fn drain(&mut self, n: usize) {
        let _span = tracing::trace_span!("connector", n).entered();
        let now = self.instant();
        let vnow = self.now;
        let World {
            connectors,
            net,
            tcp,
            origins,
            udp,
            routes,
            pending,
            edge_conns,
            ..
        } = self;
        let node = &mut connectors[n];
        let ip = node.ip;
        let socket = |index: u8| SocketAddr::from((ip, BASE_PORT + u16::from(index)));
        let (served, history) = (&mut node.served, &mut node.history);
        node.deadline = node.connector.drain(now, |out| match out {
            Output::Transmit {
                index,
                transmit,
                data,
            } => {
                // The network carries datagrams: a GSO batch leaves as its segments.
                for d in transmit.datagrams(data) {
                    net.send(vnow, socket(index), transmit.destination, d.to_vec());
                }
                None
            }
            Output::Event(e) => {
                match &e {
                    Event::Registered {
                        index,
                        link,
                        details,
                        ..
                    } => {
                        // The edge told this id before the answer left it.
                        if let Some(&conn) = edge_conns.get(&details.uuid) {
                            served.insert(*link, (*index, conn));
                            history.insert(*link, conn);
                        }
                    }
                    Event::LinkClosed { link, .. } => {
                        served.remove(link);
                    }
                    _ => {}
                }
                pending.push(Happening::Connector(n, e));
                None
            }
            Output::Io(Io::EdgeSocket { index, edge }) => {
                routes.insert(socket(index), edge);
                Some(Input::EdgeSocket {
                    index,
                    max_segments: GSO_SEGMENTS,
                })
            }
            Output::Io(io) => match io {
                Io::OpenUdp { flow, dest } => Some(match udp.open(vnow, n, flow, dest) {
                    Ok(()) => Input::UdpOpened(flow),
                    Err(reason) => Input::UdpFailed { flow, reason },
                }),
                Io::SendUdp { flow, payload } => {
                    udp.write_udp(vnow, n, flow, payload.to_vec());
                    None
                }
                Io::CloseUdp { flow } => {
                    udp.close(vnow, n, flow);
                    None
                }
                Io::OpenFunnel { funnel, .. } => {
                    udp.open_funnel(n, funnel);
                    None
                }
                Io::SendPing {
                    funnel,
                    dst,
                    message,
                    ..
                } => {
                    udp.ping(vnow, n, funnel, dst, message);
                    None
                }
                Io::CloseFunnel { funnel } => {
                    udp.close_funnel(n, funnel);
                    None
                }
                Io::DialEdge {
                    index,
                    link,
                    edge,
                    keepalive,
                } => {
                    tcp.dial(vnow, net, n, link, (socket(index), edge), keepalive);
                    None
                }
                Io::WriteEdge { link, data } => {
                    let written = tcp
                        .of_link(n, link)
                        .is_none_or(|id| tcp.write(vnow, net, id, End::Connector, data));
                    written.then_some(Input::EdgeWritten { link })
                }
                Io::CloseEdge { link } => {
                    if let Some(id) = tcp.of_link(n, link) {
                        tcp.close(vnow, net, id, End::Connector);
                    }
                    None
                }
                // The simulated box resolves no names: the virtual DNS service's lookup fails
                // at once and its resolver stays the default.
                Io::FindLocalResolver { .. } => Some(Input::LocalResolver { resolv_conf: None }),
                flow_io => {
                    origins.apply(vnow, n, flow_io);
                    None
                }
            },
            Output::Timeout(_) => None,
        });
    }

    /// Moves every datagram the nodes want to send into the network, after letting the
    /// origins and the origin network act.
    fn flush(&mut self) {
        for n in 0..self.connectors.len() {
            self.drain(n);
        }
        loop {
            let Some((n, input)) = self.origins.next_input(self.now) else {
                break;
            };
            let now = self.instant();
            self.connectors[n]
                .connector
                .handle_input(now, input.as_input());
            self.drain(n);
        }
        while let Some(read) = self.udp.next_read(self.now) {
            let now = self.instant();
            let n = read.node();
            let mut buf = std::mem::take(&mut self.udp.buf);
            let input = read.as_input(&mut buf);
            let before = self.connectors[n].hub().stats().datagrams_out;
            self.connectors[n].connector.handle_input(now, input);
            let queued = self.connectors[n].hub().stats().datagrams_out > before;
            self.udp.buf = buf;
            if let Read::Udp(..) = read {
                self.udp.count_echo(queued);
            }
            self.drain(n);
        }
        self.drain_edge();
        while self.pump_tcp() {
            self.drain_edge();
        }
    }

    /// Hands what arrived on the TCP connections to the ends that want to read it, and reports
    /// writes that found room; true if anything moved.
    fn pump_tcp(&mut self) -> bool {
        let mut moved = false;
        for id in self.tcp.ids() {
            if let Some((n, link)) = self.tcp.connector_end(id) {
                while self.connectors[n].connector.edge_wants_read(link) {
                    let Some(data) = self.tcp.read(self.now, &mut self.net, id, End::Connector)
                    else {
                        break;
                    };
                    moved = true;
                    self.feed(n, Input::EdgeReceived { link, data: &data });
                    if data.is_empty() {
                        break;
                    }
                }
                if self.tcp.take_written(id, End::Connector).is_some() {
                    moved = true;
                    self.feed(n, Input::EdgeWritten { link });
                }
            }
            if let Some(conn) = self.tcp.edge_end(id) {
                let now = self.instant();
                let Some(m) = &mut self.edge else {
                    continue;
                };
                while m.tcp_wants_read(conn) {
                    let Some(data) = self.tcp.read(self.now, &mut self.net, id, End::Edge) else {
                        break;
                    };
                    moved = true;
                    m.handle_input(now, edge::Input::TcpReceived { conn, data: &data });
                    if data.is_empty() {
                        break;
                    }
                }
                while let Some(len) = self.tcp.take_written(id, End::Edge) {
                    moved = true;
                    m.handle_input(now, edge::Input::TcpWritten { conn, len });
                }
            }
        }
        moved
    }

    /// Tells the machines what TCP did as time passed: SYNs reach the edge, dials are
    /// answered, connections reset.
    fn tcp_arrivals(&mut self) {
        let now = self.instant();
        for e in self.tcp.advance(self.now, &mut self.net) {
            match e {
                TcpEvent::Syn(id) => {
                    let conn = match &mut self.edge {
                        Some(m) => m.accept_tcp(now).ok(),
                        // A bare QUIC endpoint listens on no TCP port; no edge, no listener.
                        _ => None,
                    };
                    self.tcp.accepted(self.now, &mut self.net, id, conn);
                }
                TcpEvent::Dialled {
                    node,
                    link,
                    accepted,
                } => {
                    if !self.connectors[node].connector.has_edge_link(link) {
                        // The link gave up meanwhile: the socket is closed.
                        if let Some(id) = self.tcp.of_link(node, link) {
                            self.tcp.close(self.now, &mut self.net, id, End::Connector);
                        }
                    } else if accepted {
                        let local = std::net::IpAddr::from(self.connectors[node].ip);
                        self.feed(node, Input::EdgeConnected { link, local });
                    } else {
                        let reason = burrow_core::connector::dial_failure(&"connection refused");
                        self.feed(
                            node,
                            Input::EdgeFailed {
                                link,
                                reason: &reason,
                            },
                        );
                    }
                }
                TcpEvent::Reset { node, link, reason } => {
                    self.feed(node, Input::EdgeFailed { link, reason });
                }
            }
        }
    }

    /// Drains the edge as burrow-tokio's edge loop does: datagrams into the network (from the
    /// address the connector dialled), stream events to the eyeballs, events into this step's
    /// list, until it says `Timeout`.
    fn drain_edge(&mut self) {
        let _span = tracing::trace_span!("edge").entered();
        let now = self.instant();
        let World {
            edge,
            edge_deadline,
            edge_conns,
            routes,
            net,
            pending,
            inbox,
            to_clients,
            edge_addrs,
            tcp,
            ..
        } = self;
        let vnow = self.now;
        let send = |net: &mut Network,
                    destination: SocketAddr,
                    datagrams: &mut dyn Iterator<Item = &[u8]>| {
            let from = routes.get(&destination).copied().unwrap_or(edge_addrs[0]);
            for d in datagrams {
                net.send(vnow, from, destination, d.to_vec());
            }
        };
        let Some(m) = edge else { return };
        loop {
            let mut written = None;
            match m.poll_output(now) {
                edge::Output::Timeout(d) => {
                    *edge_deadline = d;
                    break;
                }
                edge::Output::Transmit { transmit, data } => {
                    send(net, transmit.destination, &mut transmit.datagrams(data))
                }
                edge::Output::Io(edge::Io::Stream { id, event }) => {
                    inbox.push_back((id, event.clone()));
                    pending.push(Happening::Stream(id, event));
                }
                edge::Output::Io(edge::Io::WriteTcp { conn, data }) => {
                    let len = data.len();
                    if tcp
                        .of_edge(conn)
                        .is_none_or(|id| tcp.write(vnow, net, id, End::Edge, data))
                    {
                        written = Some((conn, len));
                    }
                }
                edge::Output::Io(edge::Io::CloseTcp { conn }) => {
                    if let Some(id) = tcp.of_edge(conn) {
                        tcp.close(vnow, net, id, End::Edge);
                    }
                }
                edge::Output::Io(edge::Io::SendToClient {
                    mapping,
                    client,
                    payload,
                }) => to_clients.push_back(ToClient {
                    mapping,
                    client,
                    payload: payload.to_vec(),
                }),
                edge::Output::Event(e) => {
                    if let edge::Event::Registered {
                        conn, connection, ..
                    } = &e
                    {
                        edge_conns.insert(*connection, *conn);
                    }
                    pending.push(Happening::Edge(e));
                }
            }
            if let Some((conn, len)) = written {
                m.handle_input(now, edge::Input::TcpWritten { conn, len });
            }
        }
    }

    /// Drains every node's events into the trace and returns them.
    fn collect(&mut self) -> Vec<Happening> {
        let out = std::mem::take(&mut self.pending);
        for h in &out {
            match h {
                // A body by its length: the client checks every byte.
                Happening::Stream(id, StreamEvent::Body(b)) => self
                    .trace
                    .record(self.now, &format_args!("{id:?} Body({} bytes)", b.len())),
                h => self.trace.record(self.now, h),
            }
        }
        out
    }

    /// Flushes outputs, then lets the next thing happen, no later than `limit`.
    pub fn step(&mut self, limit: VirtualTime) -> Result<Step, String> {
        self.flush();
        let pending = self.collect();
        if !pending.is_empty() {
            return Ok(Step::Progress(pending));
        }
        let mut next = self.net.next_arrival();
        for t in [
            self.origins.next_deadline(),
            self.wakeups.first().copied(),
            self.udp.next_deadline(),
            self.tcp.next_deadline(),
        ]
        .into_iter()
        .flatten()
        {
            next = Some(next.map_or(t, |n| n.min(t)));
        }
        let clock = self.clock;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t.map(|i| clock.virtual_time(i)) {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        if self.edge.is_some() {
            consider(self.edge_deadline);
        }
        for node in &self.connectors {
            consider(node.deadline);
        }
        let Some(next) = next.filter(|n| *n <= limit) else {
            self.now = self.now.max(limit);
            crate::clock::set_log_time(self.now);
            return Ok(Step::Idle);
        };
        if next <= self.now {
            self.stalled_steps += 1;
            if self.stalled_steps > 10_000 {
                // Each source's next deadline, to tell which one does not move.
                let connectors: Vec<_> = self
                    .connectors
                    .iter()
                    .map(|c| c.deadline.map(|i| self.clock.virtual_time(i)))
                    .collect();
                let sources = format!(
                    "net {:?}, origins {:?}, wakeups {:?}, udp {:?}, tcp {:?}, edge {:?}, connectors {connectors:?}",
                    self.net.next_arrival(),
                    self.origins.next_deadline(),
                    self.wakeups.first(),
                    self.udp.next_deadline(),
                    self.tcp.next_deadline(),
                    self.edge_deadline.map(|i| self.clock.virtual_time(i)),
                );
                return Err(format!(
                    "busy loop: a deadline keeps asking for {:?} without time moving ({sources})",
                    next.since_start()
                ));
            }
        } else {
            self.stalled_steps = 0;
            self.now = next;
            crate::clock::set_log_time(self.now);
        }
        while self.wakeups.first().is_some_and(|t| *t <= self.now) {
            self.wakeups.pop_first();
        }
        self.tcp_arrivals();
        let now = self.instant();
        while let Some(p) = self.net.poll_arrival(self.now) {
            if self.edge_addrs.contains(&p.to) {
                if let Some(m) = &mut self.edge {
                    let _span = tracing::trace_span!("edge").entered();
                    m.handle_input(
                        now,
                        edge::Input::Received(Received::single(p.from, &p.data)),
                    );
                }
                continue;
            }
            let Some(n) = self
                .connectors
                .iter()
                .position(|c| c.ip == ip_of(p.to) && p.to.port() >= BASE_PORT)
            else {
                continue;
            };
            let Ok(index) = u8::try_from(p.to.port() - BASE_PORT) else {
                continue;
            };
            self.connectors[n].last_heard = self.now;
            let received = Received::single(p.from, &p.data);
            self.feed(n, Input::Received { index, received });
            self.connectors[n].watch_rtt(index);
        }
        if let Some(m) = &mut self.edge {
            if self.edge_deadline.is_some_and(|t| t <= now) {
                let _span = tracing::trace_span!("edge").entered();
                m.handle_input(now, edge::Input::Timeout);
            }
        }
        for n in 0..self.connectors.len() {
            if self.connectors[n].deadline.is_some_and(|t| t <= now) {
                self.feed(n, Input::Timeout);
            }
        }
        self.flush();
        Ok(Step::Progress(self.collect()))
    }

    /// Runs until `limit`, handing every event to `react` (which may act on the world).
    pub fn run_until(
        &mut self,
        limit: VirtualTime,
        mut react: impl FnMut(&mut World, Happening) -> Result<(), String>,
    ) -> Result<(), String> {
        self.run_ticking(limit, |w, h| match h {
            Some(h) => react(w, h).map(|()| false),
            None => Ok(false),
        })
    }

    /// Like [`World::run_until`], also calling `f` with `None` after every step (to push
    /// request bodies, read slowly, and the like). Stops early once `f` returns true.
    pub fn run_ticking(
        &mut self,
        limit: VirtualTime,
        mut f: impl FnMut(&mut World, Option<Happening>) -> Result<bool, String>,
    ) -> Result<(), String> {
        while self.now < limit {
            match self.step(limit)? {
                Step::Progress(events) => {
                    for e in events {
                        if f(self, Some(e))? {
                            return Ok(());
                        }
                    }
                }
                Step::Idle => break,
            }
            if f(self, None)? {
                break;
            }
        }
        Ok(())
    }

    /// Virtual time `d` from now.
    pub fn after(&self, d: Duration) -> VirtualTime {
        self.now + d
    }

    /// Cuts or heals every path between connector `n`'s sockets and the edge.
    pub fn partition_node(&mut self, n: usize, partitioned: bool) {
        let ha = self.connectors[n].connector.ha_connections() as u8;
        for index in 0..ha {
            self.partition_index(n, index, partitioned);
        }
    }

    /// Cuts or heals every path between the socket of connector `n`'s HA index `index` and
    /// the edge.
    pub fn partition_index(&mut self, n: usize, index: u8, partitioned: bool) {
        let socket = self.connectors[n].socket(index);
        for edge in self.edge_addrs.clone() {
            self.net.set_partition(edge, socket, partitioned);
        }
    }
}

fn ip_of(a: SocketAddr) -> [u8; 4] {
    match a.ip() {
        std::net::IpAddr::V4(v4) => v4.octets(),
        std::net::IpAddr::V6(_) => [0; 4],
    }
}
