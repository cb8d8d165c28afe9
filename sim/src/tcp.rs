//! Simulated TCP between connectors and the edge (HTTP/2 links): reliable, in-order byte
//! streams on virtual time, over the same links as the datagrams ([`Network`]'s latency,
//! jitter, loss and partitions, and its seeded RNG, so a seed replays exactly).
//!
//! The model, kept simple:
//! - A dial's SYN takes one way's delay to the edge, which accepts or refuses it (no edge
//!   process: refused); the answer takes one way back. A partitioned or lost SYN, or one whose
//!   answer (SYN-ACK or reset) is lost, is sent again 1 s, 2 s, 4 s... later (Linux's initial
//!   RTO, not the established connection's 200 ms); the connector's handshake deadline gives up
//!   first.
//! - Each direction is a pipe. A write enters it whole while the bytes written and not yet read
//!   by the other side are under [`WINDOW`] (the socket buffers), and is then reported written;
//!   past it, writes wait (TCP's backpressure: a reader that does not read holds the writer).
//! - Each direction sends at most [`BANDWIDTH`] (a bottleneck on the path; TCP's slow start is
//!   not modelled, so without it a connection would move any amount at once).
//! - Bytes arrive in order, one way's delay later. Loss is delay, never corruption: each lost
//!   MSS-sized segment is sent again after Linux's minimum RTO (200 ms), doubling on every
//!   further loss, and everything behind it waits (head-of-line blocking). Duplication,
//!   reordering, bursts and the path MTU are the datagrams' business only.
//! - A partition stalls a direction: its next segment is retransmitted with the RTO backing off
//!   (200 ms doubling to 120 s) and gets through at the first retransmission after the partition
//!   heals. After Linux's `tcp_retries2` (15) retransmissions the sender gives up and the
//!   connection is reset (about 15 minutes of partition).
//! - When the edge process stops, its kernel resets every connection it had: what it had sent
//!   arrives up to the first segment a loss held back (nothing is retransmitted any more), then
//!   the reset. A reset is sent once, never retransmitted: lost (or partitioned), the connector
//!   learns of it only when a segment of its own reaches the edge host (answered with another
//!   reset; a data segment whose reset is lost is retransmitted as any unacknowledged one), or by
//!   keepalive. A side's close sends FIN after what it wrote; bytes that reach a closed side are
//!   dropped.
//! - The connector's keepalive (`SO_KEEPALIVE` with the period the dial carries as both
//!   `TCP_KEEPIDLE` and `TCP_KEEPINTVL`, and Linux's default `TCP_KEEPCNT` of
//!   [`KEEPALIVE_PROBES`]): after that long without hearing from the edge, with nothing of its
//!   own unacknowledged, it sends a probe, and another every period; each crosses the lossy
//!   network once, is answered with an ACK (by a live socket) or a reset (by a host without
//!   one), and an answer that arrives restarts the idle time. After [`KEEPALIVE_PROBES`]
//!   unanswered probes the connection times out.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use burrow_core::datagram::LinkId;
use burrow_core::tunnel::edge::ConnId;

use crate::clock::VirtualTime;
use crate::net::Network;

/// Bytes written and not yet read by the other side, per direction, past which writes wait.
pub const WINDOW: usize = 1024 * 1024;
/// Bytes per second each direction of a connection sends at most (16 Mbit/s).
pub const BANDWIDTH: u64 = 2_000_000;
/// One segment: a loss delays this much of the stream.
const MSS: usize = 1460;
/// Bytes that travel as one unit (they arrive at the time of their latest segment).
const CHUNK: usize = 16 * 1024;
/// Largest read handed to a reader at once.
const READ: usize = 64 * 1024;
/// Linux's minimum (and, on a fast path, usual) retransmission timeout.
const RTO_MIN: Duration = Duration::from_millis(200);
/// Linux's largest retransmission timeout.
const RTO_MAX: Duration = Duration::from_secs(120);
/// Linux's `tcp_retries2`: retransmissions of a stalled segment before the sender gives up.
const RETRIES: u32 = 15;
/// The first SYN retransmission (Linux's initial RTO).
const SYN_RTO: Duration = Duration::from_secs(1);
/// Unanswered keepalive probes before the connection times out: Linux's default
/// `tcp_keepalive_probes`, which `burrow_os::tcp_keep_alive` leaves as it is (Go's dialer, as
/// cloudflared's, sets the same 9).
pub const KEEPALIVE_PROBES: u32 = 9;

/// One simulated TCP connection's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TcpId(u64);

/// The two ends: the connector that dialled, and the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The connector's socket.
    Connector,
    /// The edge's socket.
    Edge,
}

/// What happened to a connection as time passed, for the world to tell the machines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TcpEvent {
    /// A SYN reached the edge host: accept it ([`Tcp::accepted`]) or not.
    Syn(TcpId),
    /// Connector `node`'s dial of `link` is answered: connected, or refused.
    Dialled {
        /// Connector process.
        node: usize,
        /// The HTTP/2 link it carries.
        link: LinkId,
        /// Whether the edge accepted it.
        accepted: bool,
    },
    /// Connector `node`'s connection of `link` was reset (or timed out): it is gone.
    Reset {
        /// Connector process.
        node: usize,
        /// The HTTP/2 link it carried.
        link: LinkId,
        /// Why, in the words of the socket error.
        reason: &'static str,
    },
}

/// A piece of the stream in flight: bytes, or the FIN after them.
struct Piece {
    at: VirtualTime,
    /// When it would arrive had no segment of it or before it been lost (no retransmission).
    clean: VirtualTime,
    data: Vec<u8>,
    fin: bool,
}

#[derive(Default)]
struct Dir {
    /// In flight, in order; only the front may arrive.
    flight: VecDeque<Piece>,
    /// Arrived and not read yet.
    recv: VecDeque<Vec<u8>>,
    /// Bytes in `flight` and `recv`.
    held: usize,
    /// Writes waiting for room.
    blocked: VecDeque<Vec<u8>>,
    /// Writes that entered the pipe and are yet to be reported to the writer (their lengths).
    written: VecDeque<usize>,
    /// The writer closed: FIN once `blocked` has entered the pipe.
    closing: bool,
    /// The FIN arrived (the reader sees the end once `recv` is read).
    fin: bool,
    /// The end was told to the reader.
    eof_told: bool,
    /// The latest arrival scheduled (pipes deliver in order).
    last: VirtualTime,
    /// The latest arrival scheduled had nothing been lost.
    last_clean: VirtualTime,
    /// When the bottleneck has sent what was admitted so far.
    busy: VirtualTime,
    /// Retransmissions of the stalled front piece.
    retries: u32,
}

enum Dial {
    /// The SYN arrives at the edge at this time.
    Syn(VirtualTime, u32),
    /// The SYN is at the edge, which is being asked ([`Tcp::accepted`] answers).
    Asked(u32),
    /// The edge's answer arrives at the connector at this time.
    Answer(VirtualTime, bool, u32),
    /// Established (or given up).
    Done,
}

struct Conn {
    node: usize,
    link: LinkId,
    client: SocketAddr,
    server: SocketAddr,
    dial: Dial,
    /// The edge's id of it, while the edge holds it.
    edge: Option<ConnId>,
    /// The connector's socket is open.
    connector_open: bool,
    /// The edge's socket is open (false until accepted, and after the edge process stops).
    edge_open: bool,
    /// The edge host has no socket for it (the process stopped): what reaches it is answered
    /// with a reset.
    edge_gone: bool,
    /// A reset travelling to the connector.
    rst: Option<(VirtualTime, &'static str)>,
    /// The connector's keepalive idle time and probe interval (none: off).
    keepalive: Option<Duration>,
    /// When the connector's keepalive next sends a probe (or, after the last, times out).
    probe_due: VirtualTime,
    /// Keepalive probes sent since the connector last heard from the edge.
    probes: u32,
    /// A probe on its way to the edge host, arriving then.
    probe: Option<VirtualTime>,
    /// The edge's ACK of a probe on its way back, arriving then.
    probe_ack: Option<VirtualTime>,
    /// `dirs[0]` connector to edge, `dirs[1]` edge to connector.
    dirs: [Dir; 2],
}

impl Conn {
    fn ends(&self, toward: End) -> (SocketAddr, SocketAddr) {
        match toward {
            End::Edge => (self.client, self.server),
            End::Connector => (self.server, self.client),
        }
    }

    /// The connector heard from the edge at `now` (a segment, or the ACK of one of its own):
    /// keepalive's idle time starts again.
    fn heard(&mut self, now: VirtualTime) {
        if let Some(idle) = self.keepalive {
            self.probes = 0;
            self.probe_due = now + idle;
        }
    }

    /// When keepalive next acts: while the connector's socket is established and open, with
    /// nothing of its own in flight (unacknowledged data is the retransmission timer's).
    fn keepalive_due(&self) -> Option<VirtualTime> {
        self.keepalive?;
        let idle = matches!(self.dial, Dial::Done)
            && self.connector_open
            && self.dirs[dir_of(End::Edge)].flight.is_empty();
        idle.then_some(self.probe_due)
    }
}

fn dir_of(toward: End) -> usize {
    match toward {
        End::Edge => 0,
        End::Connector => 1,
    }
}

impl Dir {
    /// Queues a piece sent at `sent` that takes `delay`, plus `retransmit` for its losses.
    fn push(
        &mut self,
        sent: VirtualTime,
        (delay, retransmit): (Duration, Duration),
        piece: Vec<u8>,
        fin: bool,
    ) {
        self.last = (sent + delay + retransmit).max(self.last);
        self.last_clean = (sent + delay).max(self.last_clean);
        self.flight.push_back(Piece {
            at: self.last,
            clean: self.last_clean,
            data: piece,
            fin,
        });
    }
}

/// Time a connector's connections held bytes back (retransmitting them after loss, or across
/// a partition): the union of the spans in which some piece was due had nothing been lost, yet
/// not there.
#[derive(Default)]
struct HeldBack {
    /// Of the spans that ended.
    total: Duration,
    /// Where the last span counted ended.
    until: VirtualTime,
}

impl HeldBack {
    /// Counts `[from, to]` (spans are counted in order of their ends).
    fn count(&mut self, from: VirtualTime, to: VirtualTime) {
        let from = from.max(self.until);
        if to > from {
            self.total += to.since_start() - from.since_start();
            self.until = to;
        }
    }
}

/// Every simulated TCP connection.
#[derive(Default)]
pub struct Tcp {
    conns: BTreeMap<TcpId, Conn>,
    by_link: BTreeMap<(usize, LinkId), TcpId>,
    by_edge: BTreeMap<ConnId, TcpId>,
    /// Per connector process.
    held_back: BTreeMap<usize, HeldBack>,
    next: u64,
}

/// One way's delay for a handshake segment (the SYN, or the SYN-ACK or reset answering it),
/// its losses included: each costs a SYN retransmission timeout, as a lost answer leaves the
/// SYN unanswered and it is sent (and answered) again.
fn handshake(net: &mut Network, from: SocketAddr, to: SocketAddr) -> Duration {
    let cfg = net.link(from, to);
    let retransmit = backoff(net, cfg.loss, SYN_RTO);
    net.delay(&cfg) + retransmit
}

/// What one segment waits out on a link losing `loss` of them: the timeout `first`, doubling
/// on every further loss.
fn backoff(net: &mut Network, loss: f64, first: Duration) -> Duration {
    let (mut extra, mut rto) = (Duration::ZERO, first);
    while loss > 0.0 && net.chance() < loss && rto <= RTO_MAX {
        extra += rto;
        rto *= 2;
    }
    extra
}

/// One way's delay for a segment sent once (a reset, a keepalive probe or its ACK), or none if
/// it is lost.
fn once(net: &mut Network, from: SocketAddr, to: SocketAddr) -> Option<Duration> {
    let cfg = net.link(from, to);
    if cfg.partitioned || (cfg.loss > 0.0 && net.chance() < cfg.loss) {
        return None;
    }
    Some(net.delay(&cfg))
}

/// One way's delay for `len` bytes from `from` to `to`: the link's latency and jitter, and
/// apart, the retransmission timeouts (doubling on repeated loss) of the worst-hit of its
/// segments.
fn transit(
    net: &mut Network,
    from: SocketAddr,
    to: SocketAddr,
    len: usize,
) -> (Duration, Duration) {
    let cfg = net.link(from, to);
    let mut worst = Duration::ZERO;
    for _ in 0..len.div_ceil(MSS).max(1) {
        worst = worst.max(backoff(net, cfg.loss, RTO_MIN));
    }
    (net.delay(&cfg), worst)
}

impl Tcp {
    /// Connector `node` dials `server` from `client` for `link`, with `keepalive` as its idle
    /// time and probe interval (zero: off, as `burrow_os::tcp_keep_alive` takes it).
    pub fn dial(
        &mut self,
        now: VirtualTime,
        net: &mut Network,
        node: usize,
        link: LinkId,
        (client, server): (SocketAddr, SocketAddr),
        keepalive: Duration,
    ) {
        let id = TcpId(self.next);
        self.next += 1;
        let at = now + handshake(net, client, server);
        self.conns.insert(
            id,
            Conn {
                node,
                link,
                client,
                server,
                dial: Dial::Syn(at, 0),
                edge: None,
                connector_open: true,
                edge_open: false,
                edge_gone: false,
                rst: None,
                keepalive: (!keepalive.is_zero()).then_some(keepalive),
                probe_due: now,
                probes: 0,
                probe: None,
                probe_ack: None,
                dirs: [Dir::default(), Dir::default()],
            },
        );
        self.by_link.insert((node, link), id);
    }

    /// The edge's answer to [`TcpEvent::Syn`]: its id for the connection, or none (refused).
    pub fn accepted(
        &mut self,
        now: VirtualTime,
        net: &mut Network,
        id: TcpId,
        edge: Option<ConnId>,
    ) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let Dial::Asked(tries) = c.dial else {
            return;
        };
        let (from, to) = c.ends(End::Connector);
        c.dial = Dial::Answer(now + handshake(net, from, to), edge.is_some(), tries);
        if let Some(e) = edge {
            c.edge = Some(e);
            c.edge_open = true;
            // A socket of the edge process that runs now.
            c.edge_gone = false;
            self.by_edge.insert(e, id);
        }
    }

    /// The connection of connector `node`'s `link`, while its socket is open.
    pub fn of_link(&self, node: usize, link: LinkId) -> Option<TcpId> {
        self.by_link.get(&(node, link)).copied()
    }

    /// Whether bytes connector `node` wrote are still on their way to an open edge socket
    /// (in flight, or arrived and not read yet), its own socket closed or not.
    pub fn delivering_from(&self, node: usize) -> bool {
        self.conns
            .values()
            .any(|c| c.node == node && c.edge_open && c.dirs[dir_of(End::Edge)].held > 0)
    }

    /// The connection the edge calls `conn`, while its socket is open.
    pub fn of_edge(&self, conn: ConnId) -> Option<TcpId> {
        self.by_edge.get(&conn).copied()
    }

    /// Every connection, in order.
    pub fn ids(&self) -> Vec<TcpId> {
        self.conns.keys().copied().collect()
    }

    /// The connector and link of `id`, while the connector's socket is open.
    pub fn connector_end(&self, id: TcpId) -> Option<(usize, LinkId)> {
        let c = self.conns.get(&id)?;
        (c.connector_open).then_some((c.node, c.link))
    }

    /// The edge's id of `id`, while the edge's socket is open.
    pub fn edge_end(&self, id: TcpId) -> Option<ConnId> {
        let c = self.conns.get(&id)?;
        c.edge.filter(|_| c.edge_open)
    }

    /// `from` writes `data`; true if it is written at once (else it is reported by
    /// [`Tcp::take_written`] once there is room).
    pub fn write(
        &mut self,
        now: VirtualTime,
        net: &mut Network,
        id: TcpId,
        from: End,
        data: &[u8],
    ) -> bool {
        let toward = match from {
            End::Connector => End::Edge,
            End::Edge => End::Connector,
        };
        let Some(c) = self.conns.get_mut(&id) else {
            return true;
        };
        let d = &mut c.dirs[dir_of(toward)];
        if d.closing {
            return true;
        }
        d.blocked.push_back(data.to_vec());
        Self::admit(now, net, c, toward);
        let d = &mut c.dirs[dir_of(toward)];
        // Reported at once if it entered the pipe (nothing waits behind it); writes admitted
        // with it that waited before are reported by `take_written`.
        if d.blocked.is_empty() {
            d.written.pop_back();
            true
        } else {
            false
        }
    }

    /// A write of `end` that entered the pipe since, to report (its length).
    pub fn take_written(&mut self, id: TcpId, end: End) -> Option<usize> {
        let toward = match end {
            End::Connector => End::Edge,
            End::Edge => End::Connector,
        };
        self.conns.get_mut(&id)?.dirs[dir_of(toward)]
            .written
            .pop_front()
    }

    /// Moves waiting writes toward `toward` into the pipe while there is room; a closing
    /// writer's FIN follows the last.
    fn admit(now: VirtualTime, net: &mut Network, c: &mut Conn, toward: End) {
        let (from, to) = c.ends(toward);
        let established = matches!(c.dial, Dial::Done);
        let d = &mut c.dirs[dir_of(toward)];
        if !established {
            return;
        }
        while d.held < WINDOW {
            let Some(data) = d.blocked.pop_front() else {
                break;
            };
            d.written.push_back(data.len());
            d.held += data.len();
            for chunk in data.chunks(CHUNK) {
                let nanos = chunk.len() as u64 * 1_000_000_000 / BANDWIDTH;
                d.busy = d.busy.max(now) + Duration::from_nanos(nanos);
                let busy = d.busy;
                let (delay, retransmit) = transit(net, from, to, chunk.len());
                tracing::trace!(%from, %to, len = chunk.len(), ?delay, ?retransmit, "tcp: sent");
                d.push(busy, (delay, retransmit), chunk.to_vec(), false);
            }
        }
        if d.closing && d.blocked.is_empty() && !d.flight.back().is_some_and(|p| p.fin) {
            d.push(now, transit(net, from, to, 0), Vec::new(), true);
        }
    }

    /// `end` reads: up to a read's worth of what arrived, an empty read once at the end, or
    /// nothing.
    pub fn read(
        &mut self,
        now: VirtualTime,
        net: &mut Network,
        id: TcpId,
        end: End,
    ) -> Option<Vec<u8>> {
        let c = self.conns.get_mut(&id)?;
        let d = &mut c.dirs[dir_of(end)];
        let mut out = Vec::new();
        while out.len() < READ {
            let Some(front) = d.recv.front_mut() else {
                break;
            };
            let n = front.len().min(READ - out.len());
            out.extend(front.drain(..n));
            if front.is_empty() {
                d.recv.pop_front();
            }
        }
        d.held -= out.len();
        if out.is_empty() {
            if !d.fin || d.eof_told {
                return None;
            }
            d.eof_told = true;
            return Some(out);
        }
        // Room: waiting writes of the other end go in.
        let writer_toward = end;
        Self::admit(now, net, c, writer_toward);
        Some(out)
    }

    /// `end` closes its socket: FIN after what it wrote; it reads nothing more.
    pub fn close(&mut self, now: VirtualTime, net: &mut Network, id: TcpId, end: End) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let toward = match end {
            End::Connector => {
                c.connector_open = false;
                self.by_link.remove(&(c.node, c.link));
                End::Edge
            }
            End::Edge => {
                c.edge_open = false;
                if let Some(e) = c.edge {
                    self.by_edge.remove(&e);
                }
                End::Connector
            }
        };
        let d = &mut c.dirs[dir_of(toward)];
        d.closing = true;
        d.written.clear();
        // What it has not read is gone with the socket.
        let r = &mut c.dirs[dir_of(end)];
        let unread: usize = r.recv.iter().map(Vec::len).sum();
        r.held -= unread;
        r.recv.clear();
        Self::admit(now, net, c, toward);
        self.forget_if_done(id);
    }

    /// The edge process stopped: its kernel resets every connection it held, and answers any
    /// later segment with a reset.
    pub fn edge_stopped(&mut self, now: VirtualTime, net: &mut Network) {
        for c in self.conns.values_mut() {
            // Only what the process accepted: a SYN on its way reaches whatever listens then.
            let Some(e) = c.edge.take() else {
                continue;
            };
            self.by_edge.remove(&e);
            c.edge_gone = true;
            c.edge_open = false;
            // What a loss held back would have been retransmitted; nothing is any more, and
            // the connector never reads past the hole.
            let d = &mut c.dirs[dir_of(End::Connector)];
            let sent = d.flight.iter().take_while(|p| p.at <= p.clean).count();
            for p in d.flight.drain(sent..) {
                d.held -= p.data.len();
            }
            d.last = d.flight.back().map_or(now, |p| p.at);
            d.blocked.clear();
            d.written.clear();
            Self::reset_toward_connector(now, net, c);
        }
    }

    /// The edge host sends the connector a reset, once; whether one is on its way (or the
    /// connector's socket is closed, so none is needed).
    fn reset_toward_connector(now: VirtualTime, net: &mut Network, c: &mut Conn) -> bool {
        if c.rst.is_some() || !c.connector_open {
            return true;
        }
        let (from, to) = c.ends(End::Connector);
        let Some(delay) = once(net, from, to) else {
            return false;
        };
        // Behind what the edge sent before it.
        let at = (now + delay).max(c.dirs[dir_of(End::Connector)].last);
        c.rst = Some((at, "connection reset by peer"));
        true
    }

    /// Keepalive as time passes: probes sent, arriving, answered; the connection timed out.
    fn keep_alive(now: VirtualTime, net: &mut Network, c: &mut Conn, events: &mut Vec<TcpEvent>) {
        if c.probe.is_some_and(|at| at <= now) {
            c.probe = None;
            if c.edge_gone {
                Self::reset_toward_connector(now, net, c);
            } else {
                // A socket, open or closing, acknowledges it.
                let (from, to) = c.ends(End::Connector);
                if let Some(delay) = once(net, from, to) {
                    c.probe_ack = Some(now + delay);
                }
            }
        }
        if c.probe_ack.is_some_and(|at| at <= now) {
            c.probe_ack = None;
            c.heard(now);
        }
        let (Some(interval), Some(due)) = (c.keepalive, c.keepalive_due()) else {
            return;
        };
        if due > now {
            return;
        }
        if c.probes >= KEEPALIVE_PROBES {
            c.connector_open = false;
            events.push(TcpEvent::Reset {
                node: c.node,
                link: c.link,
                reason: "connection timed out",
            });
            return;
        }
        c.probes += 1;
        c.probe_due = now + interval;
        let (from, to) = c.ends(End::Edge);
        if let Some(delay) = once(net, from, to) {
            c.probe = Some(c.probe.unwrap_or(now + delay));
        }
    }

    fn forget_if_done(&mut self, id: TcpId) {
        if let Some(c) = self.conns.get(&id) {
            let edge_done =
                !c.edge_open && (c.edge_gone || !matches!(c.dial, Dial::Syn(..) | Dial::Asked(_)));
            if !c.connector_open && edge_done {
                self.conns.remove(&id);
            }
        }
    }

    /// How long, by `now`, connector `node`'s connections have held bytes back: time in which
    /// some piece was due had nothing been lost, and had not arrived (a segment waiting out its
    /// retransmission timeouts, everything behind it waiting with it).
    pub fn held_back(&self, node: usize, now: VirtualTime) -> Duration {
        let (total, until) = self
            .held_back
            .get(&node)
            .map_or((Duration::ZERO, VirtualTime::ZERO), |h| (h.total, h.until));
        // A front piece is the earliest due of its direction.
        let ongoing = self
            .conns
            .values()
            .filter(|c| c.node == node)
            .flat_map(|c| c.dirs.iter().filter_map(|d| d.flight.front()))
            .map(|p| p.clean.max(until))
            .filter(|&from| from < now)
            .min();
        total
            + ongoing.map_or(Duration::ZERO, |from| {
                now.since_start() - from.since_start()
            })
    }

    /// When something next arrives.
    pub fn next_deadline(&self) -> Option<VirtualTime> {
        self.conns
            .values()
            .flat_map(|c| {
                let dial = match c.dial {
                    Dial::Syn(at, _) | Dial::Answer(at, _, _) => Some(at),
                    Dial::Asked(_) | Dial::Done => None,
                };
                let fronts = c.dirs.iter().filter_map(|d| d.flight.front().map(|p| p.at));
                dial.into_iter()
                    .chain(c.rst.map(|(at, _)| at))
                    .chain(c.probe)
                    .chain(c.probe_ack)
                    .chain(c.keepalive_due())
                    .chain(fronts)
            })
            .min()
    }

    /// Lets everything due by `now` arrive; returns what the machines must be told.
    pub fn advance(&mut self, now: VirtualTime, net: &mut Network) -> Vec<TcpEvent> {
        let mut events = Vec::new();
        let ids = self.ids();
        for id in ids {
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            match c.dial {
                Dial::Syn(at, tries) if at <= now => {
                    let (from, to) = c.ends(End::Edge);
                    if net.link(from, to).partitioned {
                        c.dial = Dial::Syn(now + SYN_RTO * (1 << tries.min(6)), tries + 1);
                    } else {
                        events.push(TcpEvent::Syn(id));
                        c.dial = Dial::Asked(tries);
                    }
                }
                Dial::Answer(at, accepted, tries) if at <= now => {
                    let (from, to) = c.ends(End::Connector);
                    if net.link(from, to).partitioned {
                        c.dial =
                            Dial::Answer(now + SYN_RTO * (1 << tries.min(6)), accepted, tries + 1);
                    } else {
                        c.dial = Dial::Done;
                        c.heard(now);
                        if c.connector_open {
                            events.push(TcpEvent::Dialled {
                                node: c.node,
                                link: c.link,
                                accepted,
                            });
                        }
                        if !accepted {
                            c.connector_open = false;
                            self.by_link.remove(&(c.node, c.link));
                        } else {
                            // Writes made while dialling (none from HTTP/2, which waits) and a
                            // close made meanwhile go out now.
                            Self::admit(now, net, c, End::Edge);
                            Self::admit(now, net, c, End::Connector);
                        }
                    }
                }
                _ => {}
            }
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            if let Some((at, reason)) = c.rst {
                if at <= now {
                    c.rst = None;
                    if c.connector_open {
                        c.connector_open = false;
                        self.by_link.remove(&(c.node, c.link));
                        events.push(TcpEvent::Reset {
                            node: c.node,
                            link: c.link,
                            reason,
                        });
                    }
                }
            }
            let held_back = self.held_back.entry(c.node).or_default();
            for toward in [End::Edge, End::Connector] {
                Self::arrive(now, net, c, toward, held_back, &mut events);
            }
            if c.connector_open {
                Self::keep_alive(now, net, c, &mut events);
            }
            if !c.connector_open {
                self.by_link.remove(&(c.node, c.link));
            }
            self.forget_if_done(id);
        }
        events
    }

    /// Lets the pieces toward `toward` that are due arrive, stalling on a partition.
    fn arrive(
        now: VirtualTime,
        net: &mut Network,
        c: &mut Conn,
        toward: End,
        held_back: &mut HeldBack,
        events: &mut Vec<TcpEvent>,
    ) {
        let (from, to) = c.ends(toward);
        loop {
            let Some(front) = c.dirs[dir_of(toward)].flight.front() else {
                return;
            };
            if front.at > now {
                return;
            }
            // A segment to a host without its socket is answered with a reset; if that is lost,
            // the segment is unacknowledged and sent again, as one a partition stops.
            let refused = toward == End::Edge && c.edge_gone;
            if net.link(from, to).partitioned
                || (refused && !Self::reset_toward_connector(now, net, c))
            {
                let d = &mut c.dirs[dir_of(toward)];
                let Some(front) = d.flight.front_mut() else {
                    return;
                };
                d.retries += 1;
                if d.retries > RETRIES {
                    // The sender gives up: its socket is reset.
                    d.flight.clear();
                    match toward {
                        End::Edge => {
                            if c.connector_open {
                                c.connector_open = false;
                                events.push(TcpEvent::Reset {
                                    node: c.node,
                                    link: c.link,
                                    reason: "connection timed out",
                                });
                            }
                        }
                        // The edge's reader sees the end.
                        End::Connector => c.dirs[0].fin = true,
                    }
                    return;
                }
                let rto = RTO_MIN.saturating_mul(1 << d.retries.min(20)).min(RTO_MAX);
                front.at = now + rto;
                return;
            }
            let d = &mut c.dirs[dir_of(toward)];
            d.retries = 0;
            let Some(piece) = d.flight.pop_front() else {
                return;
            };
            held_back.count(piece.clean, now);
            let open = match toward {
                End::Edge => c.edge_open,
                End::Connector => c.connector_open,
            };
            if !refused {
                // The connector hears this segment, or the edge's ACK of it.
                c.heard(now);
            }
            let d = &mut c.dirs[dir_of(toward)];
            if !open {
                d.held -= piece.data.len();
                continue;
            }
            if piece.fin {
                d.fin = true;
            } else {
                d.recv.push_back(piece.data);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use burrow_core::connector::EDGE_TCP_KEEPALIVE;

    use super::*;
    use crate::net::LinkConfig;

    fn addr(host: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, host], 7844))
    }

    /// Dials without keepalive, accepts, and returns the connection with time at its
    /// establishment.
    fn connected(net: &mut Network, tcp: &mut Tcp) -> (TcpId, VirtualTime) {
        connected_with(net, tcp, Duration::ZERO)
    }

    /// Dials with `keepalive`, accepts, and returns the connection with time at its
    /// establishment.
    fn connected_with(
        net: &mut Network,
        tcp: &mut Tcp,
        keepalive: Duration,
    ) -> (TcpId, VirtualTime) {
        tcp.dial(
            VirtualTime::ZERO,
            net,
            0,
            LinkId(1),
            (addr(1), addr(2)),
            keepalive,
        );
        connected_after_dial(net, tcp)
    }

    /// Lets time pass up to `until`; the first events and when they happened.
    fn first_events(
        net: &mut Network,
        tcp: &mut Tcp,
        until: VirtualTime,
    ) -> Option<(Vec<TcpEvent>, VirtualTime)> {
        while let Some(at) = tcp.next_deadline().filter(|at| *at <= until) {
            let events = tcp.advance(at, net);
            if !events.is_empty() {
                return Some((events, at));
            }
        }
        None
    }

    /// The edge process stops at `at` and the reset its kernel sends the connector is lost.
    fn stop_losing_the_reset(net: &mut Network, tcp: &mut Tcp, at: VirtualTime) {
        let lossy = LinkConfig {
            loss: 1.0,
            ..LinkConfig::default()
        };
        net.set_link(addr(2), addr(1), lossy);
        tcp.edge_stopped(at, net);
        net.set_link(addr(2), addr(1), LinkConfig::default());
    }

    /// Accepts the dial in progress; the connection and the time it is established.
    fn connected_after_dial(net: &mut Network, tcp: &mut Tcp) -> (TcpId, VirtualTime) {
        let mut now;
        loop {
            now = tcp.next_deadline().expect("dial in progress");
            for e in tcp.advance(now, net) {
                match e {
                    TcpEvent::Syn(id) => tcp.accepted(now, net, id, Some(ConnId(9))),
                    TcpEvent::Dialled { accepted, .. } => {
                        assert!(accepted);
                        return (tcp.of_link(0, LinkId(1)).expect("open"), now);
                    }
                    e => panic!("{e:?}"),
                }
            }
        }
    }

    /// Runs until nothing is in flight, reading everything that arrives at the edge.
    fn receive(net: &mut Network, tcp: &mut Tcp, id: TcpId) -> (Vec<u8>, bool, VirtualTime) {
        let (mut got, mut eof, mut now) = (Vec::new(), false, VirtualTime::ZERO);
        while let Some(at) = tcp.next_deadline() {
            now = at;
            assert!(tcp.advance(now, net).is_empty());
            while let Some(data) = tcp.read(now, net, id, End::Edge) {
                eof |= data.is_empty();
                got.extend(data);
            }
        }
        (got, eof, now)
    }

    #[test]
    fn bytes_arrive_whole_and_in_order_under_loss_only_later() {
        let cfg = LinkConfig {
            loss: 0.25,
            ..LinkConfig::default()
        };
        let mut net = Network::new(ChaCha8Rng::seed_from_u64(1), cfg);
        let mut tcp = Tcp::default();
        let (id, at) = connected(&mut net, &mut tcp);
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
        for part in data.chunks(30_000) {
            assert!(tcp.write(at, &mut net, id, End::Connector, part));
        }
        tcp.close(at, &mut net, id, End::Connector);
        let (got, eof, done) = receive(&mut net, &mut tcp, id);
        assert!(got == data && eof);
        // Some segment was lost, and was retransmitted after an RTO at least.
        let took = done.since_start() - at.since_start();
        assert!(took >= Duration::from_millis(210), "{took:?}");
    }

    #[test]
    fn a_reader_that_does_not_read_holds_the_writer_back() {
        let mut net = Network::new(ChaCha8Rng::seed_from_u64(2), LinkConfig::default());
        let mut tcp = Tcp::default();
        let (id, at) = connected(&mut net, &mut tcp);
        let block = vec![1u8; 64 * 1024];
        let mut at_once = 0;
        while tcp.write(at, &mut net, id, End::Connector, &block) {
            at_once += 1;
        }
        assert_eq!(at_once, WINDOW / block.len());
        // Nothing is reported until the edge reads.
        let later = at + Duration::from_secs(1);
        tcp.advance(later, &mut net);
        assert_eq!(tcp.take_written(id, End::Connector), None);
        assert!(tcp.read(later, &mut net, id, End::Edge).is_some());
        assert_eq!(tcp.take_written(id, End::Connector), Some(block.len()));
    }

    #[test]
    fn a_partition_stalls_then_a_long_one_resets() {
        let mut net = Network::new(ChaCha8Rng::seed_from_u64(3), LinkConfig::default());
        let mut tcp = Tcp::default();
        let (id, at) = connected(&mut net, &mut tcp);
        net.set_partition(addr(1), addr(2), true);
        assert!(tcp.write(at, &mut net, id, End::Connector, b"stuck"));
        // A short partition: the bytes wait, then arrive.
        let mut now = at;
        while now.since_start() < Duration::from_secs(10) {
            now = tcp.next_deadline().expect("retransmitting");
            assert!(tcp.advance(now, &mut net).is_empty());
            assert_eq!(tcp.read(now, &mut net, id, End::Edge), None);
        }
        net.set_partition(addr(1), addr(2), false);
        let (got, _, _) = receive(&mut net, &mut tcp, id);
        assert_eq!(got, b"stuck");
        // A long one: the sender gives up.
        net.set_partition(addr(1), addr(2), true);
        assert!(tcp.write(now, &mut net, id, End::Connector, b"lost"));
        let mut reset = None;
        while let Some(at) = tcp.next_deadline() {
            for e in tcp.advance(at, &mut net) {
                reset = Some((e, at));
            }
        }
        let (event, at) = reset.expect("reset");
        assert!(matches!(
            event,
            TcpEvent::Reset {
                reason: "connection timed out",
                ..
            }
        ));
        let waited = at.since_start() - now.since_start();
        assert!(
            waited > Duration::from_secs(600) && waited < Duration::from_secs(1200),
            "{waited:?}"
        );
    }

    #[test]
    fn time_bytes_are_held_back_is_counted_and_only_that() {
        // Without loss nothing is held back, however much moves.
        let mut net = Network::new(ChaCha8Rng::seed_from_u64(6), LinkConfig::default());
        let mut tcp = Tcp::default();
        let (id, at) = connected(&mut net, &mut tcp);
        assert!(tcp.write(at, &mut net, id, End::Connector, &vec![7u8; 500_000]));
        let (_, _, done) = receive(&mut net, &mut tcp, id);
        assert_eq!(tcp.held_back(0, done), Duration::ZERO);
        // Across a partition the stalled bytes count while they wait, and once they arrive
        // the wait is what was counted: no more than the time they took beyond the latency.
        net.set_partition(addr(1), addr(2), true);
        assert!(tcp.write(done, &mut net, id, End::Connector, b"stuck"));
        let mut now = done;
        let mut counted = Duration::ZERO;
        while now.since_start() < done.since_start() + Duration::from_secs(10) {
            now = tcp.next_deadline().expect("retransmitting");
            assert!(tcp.advance(now, &mut net).is_empty());
            let held = tcp.held_back(0, now);
            assert!(held >= counted, "{held:?} < {counted:?}");
            counted = held;
        }
        assert!(counted > Duration::from_secs(9), "{counted:?}");
        net.set_partition(addr(1), addr(2), false);
        let (got, _, arrived) = receive(&mut net, &mut tcp, id);
        assert_eq!(got, b"stuck");
        let held = tcp.held_back(0, arrived);
        let took = arrived.since_start() - done.since_start();
        assert!(held >= counted && held < took, "{held:?} of {took:?}");
        // Another connector's count is its own.
        assert_eq!(tcp.held_back(1, arrived), Duration::ZERO);
    }

    #[test]
    fn a_stopped_edge_resets_its_connections() {
        let mut net = Network::new(ChaCha8Rng::seed_from_u64(4), LinkConfig::default());
        let mut tcp = Tcp::default();
        let (id, at) = connected(&mut net, &mut tcp);
        tcp.edge_stopped(at, &mut net);
        assert_eq!(tcp.of_edge(ConnId(9)), None);
        let at = tcp.next_deadline().expect("reset in flight");
        let events = tcp.advance(at, &mut net);
        assert!(matches!(
            events[..],
            [TcpEvent::Reset {
                reason: "connection reset by peer",
                ..
            }]
        ));
        assert_eq!(tcp.connector_end(id), None);
    }

    #[test]
    fn a_dial_on_its_way_reaches_the_edge_that_runs_when_it_arrives() {
        let mut net = Network::new(ChaCha8Rng::seed_from_u64(5), LinkConfig::default());
        let mut tcp = Tcp::default();
        tcp.dial(
            VirtualTime::ZERO,
            &mut net,
            0,
            LinkId(1),
            (addr(1), addr(2)),
            Duration::ZERO,
        );
        // The edge process restarts while the SYN travels: nothing of it is reset.
        tcp.edge_stopped(VirtualTime::ZERO, &mut net);
        let (_, _) = connected_after_dial(&mut net, &mut tcp);
    }

    #[test]
    fn keepalive_keeps_an_idle_connection_and_times_out_a_vanished_peer() {
        // The edge there: probes are answered, an idle hour passes and the connection lives.
        let mut net = Network::new(ChaCha8Rng::seed_from_u64(7), LinkConfig::default());
        let mut tcp = Tcp::default();
        let (id, at) = connected_with(&mut net, &mut tcp, EDGE_TCP_KEEPALIVE);
        let hour = at + Duration::from_secs(3600);
        assert_eq!(first_events(&mut net, &mut tcp, hour), None);
        assert!(tcp.connector_end(id).is_some());
        // The edge host gone from the path: after the idle time and every probe's interval,
        // unanswered, the connection times out.
        let mut net = Network::new(ChaCha8Rng::seed_from_u64(8), LinkConfig::default());
        let mut tcp = Tcp::default();
        let (id, at) = connected_with(&mut net, &mut tcp, EDGE_TCP_KEEPALIVE);
        net.set_partition(addr(1), addr(2), true);
        let (events, died) = first_events(&mut net, &mut tcp, hour).expect("timed out");
        assert!(matches!(
            events[..],
            [TcpEvent::Reset {
                reason: "connection timed out",
                ..
            }]
        ));
        assert_eq!(
            died.since_start() - at.since_start(),
            EDGE_TCP_KEEPALIVE * (1 + KEEPALIVE_PROBES)
        );
        assert_eq!(tcp.connector_end(id), None);
    }

    #[test]
    fn a_lost_reset_is_not_sent_again_and_a_send_after_it_gets_one() {
        let mut net = Network::new(ChaCha8Rng::seed_from_u64(9), LinkConfig::default());
        let mut tcp = Tcp::default();
        let (id, at) = connected(&mut net, &mut tcp);
        stop_losing_the_reset(&mut net, &mut tcp, at);
        // Nothing more is on its way: without keepalive the connector would never know.
        assert_eq!(tcp.next_deadline(), None);
        assert!(tcp.connector_end(id).is_some());
        // Its next segment reaches the edge host, which answers it with a reset.
        let later = at + Duration::from_secs(60);
        assert!(tcp.write(later, &mut net, id, End::Connector, b"anyone there?"));
        let (events, reset) =
            first_events(&mut net, &mut tcp, later + Duration::from_secs(1)).expect("reset");
        assert!(matches!(
            events[..],
            [TcpEvent::Reset {
                reason: "connection reset by peer",
                ..
            }]
        ));
        // One round trip (10 ms and up to 2 ms of jitter each way).
        let took = reset.since_start() - later.since_start();
        assert!(took <= Duration::from_millis(24), "{took:?}");
        assert_eq!(tcp.connector_end(id), None);
    }

    #[test]
    fn keepalive_finds_a_reset_that_was_lost() {
        let mut net = Network::new(ChaCha8Rng::seed_from_u64(10), LinkConfig::default());
        let mut tcp = Tcp::default();
        let (id, at) = connected_with(&mut net, &mut tcp, EDGE_TCP_KEEPALIVE);
        stop_losing_the_reset(&mut net, &mut tcp, at);
        // The first probe, one idle time after the connector last heard from the edge, is
        // answered with a reset.
        let (events, reset) =
            first_events(&mut net, &mut tcp, at + Duration::from_secs(3600)).expect("reset");
        assert!(matches!(
            events[..],
            [TcpEvent::Reset {
                reason: "connection reset by peer",
                ..
            }]
        ));
        let took = reset.since_start() - at.since_start();
        assert!(
            took >= EDGE_TCP_KEEPALIVE && took <= EDGE_TCP_KEEPALIVE + Duration::from_millis(24),
            "{took:?}"
        );
        assert_eq!(tcp.connector_end(id), None);
    }

    #[test]
    fn a_lost_handshake_answer_costs_the_syn_timeout() {
        // Answers (SYN-ACKs) lost half the time, no jitter: a dial takes one round trip plus
        // whole SYN retransmission timeouts (1 s, 2 s, ...), never the established 200 ms.
        let clean = LinkConfig {
            jitter: Duration::ZERO,
            ..LinkConfig::default()
        };
        let lossy = LinkConfig { loss: 0.5, ..clean };
        let mut slowest = Duration::ZERO;
        for seed in 0..40 {
            let mut net = Network::new(ChaCha8Rng::seed_from_u64(seed), clean);
            net.set_link(addr(2), addr(1), lossy);
            let mut tcp = Tcp::default();
            let (_, at) = connected(&mut net, &mut tcp);
            let extra = at.since_start() - clean.latency * 2;
            assert_eq!(extra.subsec_nanos(), 0, "{extra:?}");
            slowest = slowest.max(extra);
        }
        assert!(slowest >= SYN_RTO, "{slowest:?}");
    }
}
