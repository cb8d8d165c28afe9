//! A simulated world: one edge and some connectors, wired through the lossy [`Network`], driven
//! on virtual time by the str0m rule: after every input, drain every output, then sleep until
//! the earliest deadline. A deadline that does not move time forward is a busy loop, and an
//! error (firezone's lesson).

use std::fmt::Debug;
use std::hash::Hasher;
use std::net::SocketAddr;
use std::time::Duration;

use burrow_core::tunnel::connector::{ConnectorConnection, ConnectorEvent};
use burrow_core::tunnel::edge::{EdgeEndpoint, EdgeEvent};
use fnv::FnvHasher;

use crate::clock::{Clock, VirtualTime};
use crate::net::Network;
use crate::origin::Origins;

/// Datagrams a node may send in one batch, as a GSO-capable socket would take them.
const GSO_SEGMENTS: usize = 10;
use crate::udp::ConnectorUdp;
use burrow_core::session::SessionLimits;

/// Something a node reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Happening {
    /// The edge reported an event.
    Edge(EdgeEvent),
    /// Connector `index` reported an event.
    Connector(usize, ConnectorEvent),
}

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

/// An edge, its connectors, and the network between them.
pub struct World {
    /// Maps virtual time to the `Instant`s the state machines take.
    pub clock: Clock,
    /// Current virtual time.
    pub now: VirtualTime,
    /// The network.
    pub net: Network,
    /// What happened.
    pub trace: Trace,
    /// The edge's address.
    pub edge_addr: SocketAddr,
    /// The edge, `None` while it is down.
    pub edge: Option<EdgeEndpoint>,
    /// Connectors by index, each with its address; `None` once dropped.
    pub connectors: Vec<(SocketAddr, Option<ConnectorConnection>)>,
    /// The origins behind every connector.
    pub origins: Origins,
    /// Times a scenario asked to be woken at (slow readers, pacing).
    pub wakeups: std::collections::BTreeSet<VirtualTime>,
    /// The connectors' UDP sessions and the origin network behind them.
    pub udp: ConnectorUdp,
    buf: Vec<u8>,
    stalled_steps: u32,
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
    /// A world with an edge at `edge_addr` and no connectors yet.
    pub fn new(clock: Clock, net: Network, edge_addr: SocketAddr, edge: EdgeEndpoint) -> Self {
        Self {
            clock,
            now: VirtualTime::ZERO,
            net,
            trace: Trace::new(),
            edge_addr,
            edge: Some(edge),
            connectors: Vec::new(),
            origins: Origins::new(),
            wakeups: std::collections::BTreeSet::new(),
            udp: ConnectorUdp::new(SessionLimits::default()),
            buf: Vec::with_capacity(2048),
            stalled_steps: 0,
        }
    }

    /// The `Instant` of the current virtual time.
    pub fn instant(&self) -> std::time::Instant {
        self.clock.instant(self.now)
    }

    /// Moves every datagram the nodes want to send into the network, after letting the
    /// origins act on what the connectors asked of them.
    fn flush(&mut self) {
        let now = self.instant();
        for (i, (_, conn)) in self.connectors.iter_mut().enumerate() {
            if let Some(conn) = conn {
                self.origins.pump(self.now, now, i, conn);
            }
        }
        self.udp.pump(self.now, &self.clock, &mut self.connectors);
        if let Some(edge) = &mut self.edge {
            while let Some(t) = edge.poll_transmit(now, GSO_SEGMENTS, &mut self.buf) {
                for d in t.datagrams(&self.buf) {
                    self.net
                        .send(self.now, self.edge_addr, t.destination, d.to_vec());
                }
            }
        }
        for (addr, conn) in &mut self.connectors {
            let Some(conn) = conn else { continue };
            while let Some(t) = conn.poll_transmit(now, GSO_SEGMENTS, &mut self.buf) {
                // The network carries datagrams: a GSO batch leaves as its segments.
                for d in t.datagrams(&self.buf) {
                    self.net.send(self.now, *addr, t.destination, d.to_vec());
                }
            }
        }
    }

    /// Drains every node's events into the trace and returns them.
    fn collect(&mut self) -> Vec<Happening> {
        let mut out = Vec::new();
        if let Some(edge) = &mut self.edge {
            while let Some(e) = edge.poll_event() {
                out.push(Happening::Edge(e));
            }
        }
        for (i, (_, conn)) in self.connectors.iter_mut().enumerate() {
            let Some(conn) = conn else { continue };
            while let Some(e) = conn.poll_event() {
                out.push(Happening::Connector(i, e));
            }
        }
        for h in &out {
            self.trace.record(self.now, h);
            if let Happening::Connector(i, e) = h {
                self.udp
                    .on_connector_event(self.now, &self.clock, *i, e, &mut self.connectors);
            }
            if let Happening::Connector(i, ConnectorEvent::Closed { .. }) = h {
                // The supervisor's part: sessions move to a connection still up, if any.
                let successor = self
                    .connectors
                    .iter()
                    .enumerate()
                    .find(|(j, (_, c))| *j != *i && c.as_ref().is_some_and(|c| !c.is_closed()))
                    .map(|(j, _)| ConnectorUdp::link(j));
                self.udp.hub.link_closed(ConnectorUdp::link(*i), successor);
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
            self.udp.next_deadline(&self.clock),
        ]
        .into_iter()
        .flatten()
        {
            next = Some(next.map_or(t, |n| n.min(t)));
        }
        let clock = self.clock;
        let mut consider = |t: Option<std::time::Instant>| {
            if let Some(t) = t.map(|i| clock.virtual_time(i)) {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        if let Some(edge) = &mut self.edge {
            consider(edge.poll_timeout());
        }
        for (_, conn) in self.connectors.iter_mut() {
            if let Some(conn) = conn {
                consider(conn.poll_timeout());
            }
        }
        let Some(next) = next.filter(|n| *n <= limit) else {
            self.now = self.now.max(limit);
            return Ok(Step::Idle);
        };
        if next <= self.now {
            self.stalled_steps += 1;
            if self.stalled_steps > 10_000 {
                return Err(format!(
                    "busy loop: a deadline keeps asking for {:?} without time moving",
                    next.since_start()
                ));
            }
        } else {
            self.stalled_steps = 0;
            self.now = next;
        }
        while self.wakeups.first().is_some_and(|t| *t <= self.now) {
            self.wakeups.pop_first();
        }
        let now = self.instant();
        while let Some(p) = self.net.poll_arrival(self.now) {
            if p.to == self.edge_addr {
                if let Some(edge) = &mut self.edge {
                    edge.handle_datagram(now, p.from, &p.data);
                }
            } else if let Some((_, Some(conn))) =
                self.connectors.iter_mut().find(|(a, _)| *a == p.to)
            {
                conn.handle_datagram(now, p.from, &p.data);
            }
        }
        if let Some(edge) = &mut self.edge {
            if edge.poll_timeout().is_some_and(|t| t <= now) {
                edge.handle_timeout(now);
            }
        }
        for (_, conn) in self.connectors.iter_mut() {
            if let Some(conn) = conn {
                if conn.poll_timeout().is_some_and(|t| t <= now) {
                    conn.handle_timeout(now);
                }
            }
        }
        self.udp
            .handle_timeout(self.now, &self.clock, &mut self.connectors);
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
}
