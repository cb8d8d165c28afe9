//! Data streams on a connector connection and the origin flows that serve them.
//!
//! Each edge-opened data stream gets a [`DataStream`] (the protocol) and, once its request is
//! read, an origin flow the driver opens and feeds back. Bytes move only as far as the other
//! side has room: edge bytes stay in quinn (so QUIC flow control holds the edge back) while the
//! origin is slow, and the driver stops reading an origin (until [`OriginAction::Resume`]) while
//! the edge is slow. HTTP flows whose exchange ended cleanly on a keep-alive connection go to an
//! idle pool and carry only a later request that resolved to the same origin (service and
//! settings, see `PoolKey`).
//!
//! A request body its origin does not take stays in quinn and takes room in the connection's
//! receive window, which makes room for [`CONNECTOR_HELD_STREAMS`] of them
//! ([`crate::receive_window`]). When that many wait on their origins, those whose origin took
//! no write for [`ORIGIN_PATIENCE`] are reset, longest first, as the edge resets downloads
//! whose eyeballs stopped reading: origins that stopped reading cannot stop the tunnel's
//! other requests.
//!
//! With `--write-stream-timeout` (cloudflared's `SafeStreamCloser` and `tcpConnection`), a
//! stream whose bytes for the edge wait that long with none taken is reset, and a
//! private-network TCP origin that takes no write for that long is closed.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn_proto::{Connection, StreamId, VarInt};
use std::fmt::{Debug, Display};
use tracing::{debug, trace};

use super::dial::Dial;
use super::quic_io::{flush_stream, read_stream_max};
use super::{append_pieces, BodySink};
use crate::flow::{FlowGate, FlowSlot, SlotMap};
use crate::ingress::access::AccessKeys;
use crate::ingress::{Ingress, Origin, Service};
use crate::receive_window::CONNECTOR_HELD_STREAMS;
use crate::rpc::frame::FrameLimits;
use crate::stream::proxy::{DataStream, EdgeEnd, FlowKind, OriginEnd, OriginTarget};
use crate::stream::tag::Tag;
use crate::tunnel::requests::RequestStats;
use crate::virtual_dns;

/// How long a request may wait on its origin to take a write before its crowded connection
/// may reset it (see the module's doc).
pub const ORIGIN_PATIENCE: Duration = Duration::from_secs(10);

/// Identifies one origin connection held by the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowId(pub u64);

impl std::fmt::Display for FlowId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What the driver must do with origin connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginAction {
    /// Open a connection; answer with `handle_flow_connected` or `handle_flow_failed`
    /// (`handle_flow_handshaking` between connect and TLS). The dial has no deadline of the
    /// driver's: one that takes too long is failed here and closed ([`OriginAction::Close`]).
    Open {
        /// The flow's id from now on.
        flow: FlowId,
        /// Its kind.
        kind: FlowKind,
        /// `ConnectRequest.dest`: URL or path (HTTP, WebSocket), `ip:port` (TCP).
        dest: String,
        /// The request's `Host` (HTTP, WebSocket).
        host: Option<String>,
        /// The origin the request's ingress rule resolved to: dial this, never re-match
        /// (HTTP, WebSocket when there are rules).
        origin: Option<Arc<Origin>>,
    },
    /// Write all of `data`, then call `handle_flow_written`. At most one write per flow is
    /// outstanding.
    Write {
        /// Which flow.
        flow: FlowId,
        /// What to write.
        data: Bytes,
    },
    /// The driver stopped reading this flow after a short `handle_flow_data`; read again.
    Resume {
        /// Which flow.
        flow: FlowId,
    },
    /// Send FIN to the origin (after the outstanding write); keep reading it.
    ShutdownWrite {
        /// Which flow.
        flow: FlowId,
    },
    /// Close the connection and forget the flow.
    Close {
        /// Which flow.
        flow: FlowId,
    },
    /// The destination dial the flow's in-process origin began (`handle_flow_dialing`) took
    /// longer than the rule's `connectTimeout`: drop it and fail it as a dial that timed out.
    /// The flow itself lives on (its SOCKS5 client is answered).
    AbortDial {
        /// Which flow.
        flow: FlowId,
    },
}

/// Limits on data streams and their flows, and the rules that shape their requests.
#[derive(Debug, Clone)]
pub struct DataLimits {
    /// Bytes buffered per stream per direction beyond what QUIC and the origin socket hold.
    /// 256 KiB: writes to the origin of up to a window each, and at 64 KiB a pinned upload
    /// cost the connector 15% more CPU per MB in 2.5x as many origin writes.
    pub window: usize,
    /// Largest `ConnectRequest` accepted.
    pub request: FrameLimits,
    /// Most idle keep-alive connections kept to origins no rule resolved (a rule's own
    /// `keepAliveConnections` bounds its pool).
    pub max_idle: usize,
    /// How long an idle connection to an origin no rule resolved is kept (a rule's own
    /// `keepAliveTimeout` applies to its pool).
    pub idle_timeout: Duration,
    /// The ingress rules, which resolve each request's origin and whose `originRequest`
    /// options (`httpHostHeader`, `disableChunkedEncoding`) change HTTP requests; a
    /// configuration push replaces them (`DataStreams::limits_mut`). None: requests go as
    /// the edge sent them.
    pub ingress: Option<Arc<Ingress>>,
    /// The user's connector tags (`--tag`); the connector id is added to them.
    pub tags: Vec<Tag>,
    /// Signing keys for rules with `originRequest.access` (none yet: those rules refuse).
    pub access: Option<Arc<AccessKeys>>,
    /// Dial timeout of private-network TCP flows: `warp-routing.connectTimeout`, the remote
    /// configuration's once one is pushed.
    pub tcp_connect_timeout: Duration,
    /// Where private-network TCP flows to the virtual DNS service go, in turn
    /// ([`crate::virtual_dns`]).
    pub dns_resolvers: Arc<[std::net::SocketAddr]>,
    /// `--write-stream-timeout` (none: off, cloudflared's 0): how long bytes for the edge may
    /// wait with none taken, and a private-network TCP origin's write may take.
    pub write_timeout: Option<Duration>,
}

impl Default for DataLimits {
    fn default() -> Self {
        Self {
            window: 256 * 1024,
            request: FrameLimits::CONNECT_REQUEST,
            max_idle: 100,
            idle_timeout: Duration::from_secs(90),
            ingress: None,
            tags: Vec::new(),
            access: None,
            tcp_connect_timeout: super::dial::TCP_DIAL_TIMEOUT,
            dns_resolvers: Arc::new([crate::virtual_dns::DEFAULT_RESOLVER]),
            write_timeout: None,
        }
    }
}

struct Data {
    proxy: DataStream,
    flow: Option<FlowId>,
    /// FIN from the edge seen.
    edge_finished: bool,
    /// Its request was read and counted as started (of this kind).
    counted: Option<FlowKind>,
    /// Origin bytes passed through (the proxy counted them) that QUIC did not take yet, kept
    /// as read rather than copied: they go before anything in the proxy's `to_edge`, which
    /// stays empty meanwhile, and they count against the window.
    held: Bytes,
    /// Since when bytes for the edge (held, or in the proxy's `to_edge`) have waited with
    /// none taken; none while there are none.
    edge_waits: Option<Instant>,
}

impl Data {
    /// The edge took some of the bytes waiting for it (`took`), or none: the wait starts over
    /// whenever it takes some, as cloudflared's deadline does with each write.
    fn note_edge_write(&mut self, now: Instant, took: bool) {
        let waiting = !self.held.is_empty() || !self.proxy.to_edge().is_empty();
        self.edge_waits = match waiting {
            false => None,
            true if took => Some(now),
            true => self.edge_waits.or(Some(now)),
        };
    }

    /// Counts the request as started once its `ConnectRequest` has been read.
    fn note_request(&mut self, stats: &mut RequestStats) {
        if self.counted.is_none() {
            if let Some(kind) = self.proxy.kind() {
                self.counted = Some(kind);
                stats.started(kind);
            }
        }
    }
}

/// What an idle HTTP origin connection may be reused for. The resolved origin keeps every
/// request on the service its own rule named (a pool keyed by `Host` alone let `/admin`
/// ride a connection opened for `/`); the `Host` stays in the key because it may pick the
/// origin's TLS name and without rules it is all that tells origins apart.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PoolKey {
    origin: Option<Arc<Origin>>,
    host: String,
}

struct Flow<I> {
    stream: Option<I>,
    kind: FlowKind,
    key: PoolKey,
    connected: bool,
    /// The origin chose HTTP/2: the driver runs core's bridge on this flow.
    http2: bool,
    /// A write is outstanding at the driver, since then.
    writing: Option<Instant>,
    /// The driver stopped reading this flow.
    paused: bool,
    /// ShutdownWrite already asked.
    shut: bool,
    /// Idle in the pool since.
    idle_since: Option<Instant>,
    /// The dial's deadline, until the driver says the origin is connected; then that of a
    /// destination dial its in-process origin makes, while it runs.
    dial: Option<Dial>,
    /// When its dial began, if cloudflared times it (a stream to a TCP origin).
    timed: Option<Instant>,
}

/// Every data stream and origin flow of one connection.
pub(crate) struct DataStreams<I = StreamId> {
    limits: DataLimits,
    streams: BTreeMap<I, Data>,
    /// Origin flows; a TCP flow's record holds its slot of the process-wide flow limit, so
    /// whichever way the flow ends, removing the record releases the slot.
    flows: SlotMap<FlowId, Flow<I>>,
    /// What the flow limit lets this connection admit (the supervisor's to set).
    gate: FlowGate,
    /// Streams finished by us whose data the edge has not acknowledged yet: closing the
    /// connection now would lose their tail.
    finishing: std::collections::BTreeSet<I>,
    /// Reused for every read from the edge.
    scratch: Vec<u8>,
    /// Reused for every read of body bytes passed on as sent: the transport's pieces.
    pieces: Vec<Bytes>,
    next_flow: u64,
    actions: VecDeque<OriginAction>,
    /// Every tag sent to HTTP origins, shared by the streams.
    tags: Arc<[Tag]>,
    /// What the requests of this connection came to since last taken.
    stats: RequestStats,
    /// TCP flows the flow limit refused since last taken.
    refusals: Vec<FlowRefusal>,
    /// Requests ended because their bytes did not move, since last taken.
    held_resets: Vec<HeldReset>,
    /// Streams of cloudflared's HTTP/2 transport: the edge's writes have no
    /// `--write-stream-timeout` (QUIC streams do), and requests are logged as HTTP/2 ones.
    http2: bool,
    /// The HA connection's index, for the requests' log lines.
    conn_index: u8,
}

/// A request the connector ended because its bytes did not move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldReset {
    /// The origin's pool key host: the request's `Host`, or a TCP flow's destination.
    pub host: String,
    /// How long its write had waited.
    pub waited: Duration,
    /// Whose write waited.
    pub stall: Stall,
}

/// Whose write waited too long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stall {
    /// Its origin took no write for [`ORIGIN_PATIENCE`] while [`CONNECTOR_HELD_STREAMS`]
    /// requests on its connection waited on their origins: the stream was reset.
    Crowded,
    /// The edge took none of its bytes for `--write-stream-timeout`: the stream was reset.
    Edge,
    /// Its private-network TCP origin took no write for `--write-stream-timeout`: the origin
    /// was closed and the stream finished.
    Origin,
}

/// A TCP flow the flow limit refused (cloudflared: "Too many concurrent flows being handled,
/// rejecting tcp proxy").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowRefusal {
    /// `ConnectRequest.dest`.
    pub dest: String,
    /// The limit in force.
    pub limit: u64,
}

impl<I: Copy + Ord + Display + Debug> DataStreams<I> {
    /// Streams of HA connection `conn_index` of a connector whose id is `connector_id`.
    pub(crate) fn new(limits: DataLimits, connector_id: uuid::Uuid, conn_index: u8) -> Self {
        let tags = Tag::with_connector_id(&limits.tags, connector_id).into();
        Self {
            tags,
            limits,
            streams: BTreeMap::new(),
            flows: SlotMap::default(),
            gate: FlowGate::UNLIMITED,
            finishing: std::collections::BTreeSet::new(),
            scratch: Vec::new(),
            pieces: Vec::new(),
            next_flow: 0,
            actions: VecDeque::new(),
            stats: RequestStats::default(),
            refusals: Vec::new(),
            held_resets: Vec::new(),
            http2: false,
            conn_index,
        }
    }

    /// Streams of cloudflared's HTTP/2 transport: the edge's writes have no deadline.
    pub(crate) fn over_http2(mut self) -> Self {
        self.http2 = true;
        self
    }

    /// The requests reset to make room since the last call.
    pub(crate) fn take_held_resets(&mut self) -> Vec<HeldReset> {
        std::mem::take(&mut self.held_resets)
    }

    /// The TCP flows the flow limit refused since the last call.
    pub(crate) fn take_flow_refusals(&mut self) -> Vec<FlowRefusal> {
        std::mem::take(&mut self.refusals)
    }

    /// What the requests of this connection came to since the last call.
    pub(crate) fn take_request_stats(&mut self) -> RequestStats {
        std::mem::take(&mut self.stats)
    }

    /// New TCP flows are admitted by `gate` (the supervisor's, before each call).
    pub(crate) fn set_flow_gate(&mut self, gate: FlowGate) {
        self.gate = gate;
    }

    /// TCP flows holding a slot of the flow limit.
    pub(crate) fn flow_slots(&self) -> u64 {
        self.flows.slots()
    }

    /// Forgets stream `id`, counting its request's outcome.
    fn end_stream(&mut self, id: I) {
        if let Some(mut data) = self.streams.remove(&id) {
            if let Some(kind) = data.counted {
                self.stats.ended(kind, data.proxy.outcome());
            }
            data.proxy.log_tcp(false);
        }
    }

    /// What new streams and flows are held to (Access keys, ingress, dial timeout): changed
    /// by configuration pushes and key fetches, read as each stream starts.
    pub(crate) fn limits_mut(&mut self) -> &mut DataLimits {
        &mut self.limits
    }

    /// Streams still in progress, counting finished ones the edge has not fully acknowledged.
    pub(crate) fn active(&self) -> usize {
        self.streams.len() + self.finishing.len()
    }

    /// The edge acknowledged everything on stream `id` (or it was reset).
    pub(crate) fn on_acknowledged(&mut self, id: I) {
        self.finishing.remove(&id);
    }

    pub(crate) fn poll_action(&mut self) -> Option<OriginAction> {
        self.actions.pop_front()
    }

    /// Bytes buffered across all streams (for memory checks).
    pub(crate) fn buffered(&self) -> usize {
        self.streams
            .values()
            .map(|d| d.proxy.buffered() + d.held.len())
            .sum()
    }

    /// Takes over stream `id` after its data preamble; `rest` followed the preamble.
    pub(crate) fn accept<E: EdgeStreams<Id = I>>(
        &mut self,
        now: Instant,
        conn: &mut E,
        id: I,
        rest: &[u8],
    ) {
        // A snapshot per stream: a configuration push applies from the next request on.
        let ingress = self.limits.ingress.clone();
        let mut data = Data {
            proxy: DataStream::new(self.limits.window, self.limits.request)
                .with_ingress(ingress)
                .with_access(self.limits.access.clone(), now)
                .with_tags(self.tags.clone())
                .logged_as(self.conn_index, self.http2),
            flow: None,
            edge_finished: false,
            counted: None,
            held: Bytes::new(),
            edge_waits: None,
        };
        let target = data.proxy.on_edge_data(rest);
        data.note_request(&mut self.stats);
        self.streams.insert(id, data);
        self.on_request(now, conn, id, target);
        self.drive(now, conn, id);
    }

    /// Handles the outcome of feeding request bytes.
    fn on_request<E: EdgeStreams<Id = I>>(
        &mut self,
        now: Instant,
        conn: &mut E,
        id: I,
        target: Result<Option<OriginTarget>, crate::stream::proxy::StreamError>,
    ) {
        match target {
            Ok(Some(target)) => self.open_flow(now, id, target),
            Ok(None) => {}
            Err(e) => {
                debug!(stream = %id, error = %e, "bad data stream; resetting");
                conn.reset(id);
                self.end_stream(id);
            }
        }
    }

    fn open_flow(&mut self, now: Instant, id: I, mut target: OriginTarget) {
        self.expire_idle(now);
        let mut tcp_timeout = self.limits.tcp_connect_timeout;
        if target.kind == FlowKind::Tcp {
            let dest = target.dest.parse().ok();
            let resolvers = &self.limits.dns_resolvers;
            if let Some(to) = dest.and_then(|d| virtual_dns::redirect(resolvers, d, self.next_flow))
            {
                debug!(stream = %id, resolver = %to, "virtual DNS service: to the local resolver");
                target.dest = to.to_string();
                tcp_timeout = virtual_dns::DIAL_TIMEOUT;
                self.stats.dns_tcp += 1;
            }
        }
        let Some(data) = self.streams.get_mut(&id) else {
            return;
        };
        // cloudflared limits warp-routing TCP flows only; HTTP and WebSocket are not counted.
        let slot: Option<FlowSlot> = if target.kind == FlowKind::Tcp {
            match self.gate.admit(self.flows.slots()) {
                Ok(slot) => Some(slot),
                Err(_) => {
                    debug!(stream = %id, dest = %target.dest, "flow limit reached; refusing the flow");
                    self.refusals.push(FlowRefusal {
                        dest: target.dest.clone(),
                        limit: self.gate.limit(),
                    });
                    data.proxy.refuse_rate_limited();
                    self.stats.tcp_refused += 1;
                    return;
                }
            }
        } else {
            None
        };
        let key = PoolKey {
            origin: target.origin.clone(),
            host: target.host.clone().unwrap_or_else(|| target.dest.clone()),
        };
        if target.kind == FlowKind::Http {
            let pooled = self
                .flows
                .iter()
                .find(|(_, f)| f.idle_since.is_some() && f.kind == FlowKind::Http && f.key == key)
                .map(|(&flow, _)| flow);
            if let Some(flow) = pooled {
                trace!(stream = %id, %flow, "reusing an idle origin connection");
                let f = self.flows.get_mut(&flow).expect("found above");
                f.idle_since = None;
                f.stream = Some(id);
                data.flow = Some(flow);
                if f.http2 {
                    data.proxy.on_origin_http2();
                }
                data.proxy.on_origin_connected();
                return;
            }
        }
        let flow = FlowId(self.next_flow);
        self.next_flow += 1;
        debug!(stream = %id, %flow, kind = ?target.kind, dest = %target.dest, "opening origin flow");
        data.proxy.log_tcp(true);
        self.flows.insert(
            flow,
            Flow {
                stream: Some(id),
                kind: target.kind,
                key,
                connected: false,
                http2: false,
                writing: None,
                paused: false,
                shut: false,
                idle_since: None,
                dial: Some(Dial::start(
                    now,
                    target.kind,
                    &target.dest,
                    target.origin.as_deref(),
                    tcp_timeout,
                )),
                timed: timed(target.kind, target.origin.as_deref()).then_some(now),
            },
            slot,
        );
        data.flow = Some(flow);
        self.actions.push_back(OriginAction::Open {
            flow,
            kind: target.kind,
            dest: target.dest,
            host: target.host,
            origin: target.origin,
        });
    }

    /// Closes idle pooled connections past their rule's `keepAliveTimeout`.
    pub(crate) fn expire_idle(&mut self, now: Instant) {
        let expired: Vec<FlowId> = self
            .flows
            .iter()
            .filter(|(_, f)| self.idle_deadline(f).is_some_and(|d| now >= d))
            .map(|(&id, _)| id)
            .collect();
        for flow in expired {
            self.close_flow(flow);
        }
    }

    /// When the first idle connection expires, the first dial gives up, or the request that
    /// waited longest on its origin runs out of patience on a crowded connection.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let (mut held, mut oldest) = (0, None::<Instant>);
        for (since, _) in self.waiting_on_origins() {
            held += 1;
            oldest = Some(oldest.map_or(since, |o| o.min(since)));
        }
        let patience = oldest
            .filter(|_| held >= CONNECTOR_HELD_STREAMS)
            .map(|o| o + ORIGIN_PATIENCE);
        let first = self
            .flows
            .values()
            .flat_map(|f| {
                [
                    self.idle_deadline(f),
                    f.dial.as_ref().and_then(Dial::deadline),
                ]
            })
            .flatten()
            .min();
        first
            .into_iter()
            .chain(patience)
            .chain(self.write_deadline())
            .min()
    }

    /// When the first write runs out of `--write-stream-timeout`.
    fn write_deadline(&self) -> Option<Instant> {
        let timeout = self.limits.write_timeout?;
        let edge = self
            .streams
            .values()
            .filter(|_| !self.http2)
            .filter_map(|d| d.edge_waits);
        let origin = self.flows.values().filter_map(origin_write_since);
        edge.chain(origin).min().map(|since| since + timeout)
    }

    /// `--write-stream-timeout`: resets the streams whose bytes for the edge waited that long
    /// with none taken, as cloudflared's `SafeStreamCloser` resets a stream whose write timed
    /// out; closes the private-network TCP origins that took no write for that long and
    /// finishes their streams after what the origin sent, as cloudflared's pipe ends when a
    /// write to the origin fails.
    pub(crate) fn expire_writes<E: EdgeStreams<Id = I>>(&mut self, now: Instant, conn: &mut E) {
        let Some(timeout) = self.limits.write_timeout else {
            return;
        };
        let late = |since: Instant| now.saturating_duration_since(since) >= timeout;
        let edge: Vec<(I, Instant)> = self
            .streams
            .iter()
            .filter(|_| !self.http2)
            .filter_map(|(&id, d)| Some((id, d.edge_waits.filter(|&t| late(t))?)))
            .collect();
        let origin: Vec<(I, Instant)> = self
            .flows
            .values()
            .filter_map(|f| Some((f.stream?, origin_write_since(f).filter(|&t| late(t))?)))
            .collect();
        for (stall, (id, since)) in edge
            .into_iter()
            .map(|e| (Stall::Edge, e))
            .chain(origin.into_iter().map(|o| (Stall::Origin, o)))
        {
            if !self.streams.contains_key(&id) {
                continue;
            }
            let waited = now.saturating_duration_since(since);
            debug!(stream = %id, ?stall, ?waited, "write timed out");
            let host = self.host_of(id);
            let Some(data) = self.streams.get_mut(&id) else {
                continue;
            };
            match stall {
                Stall::Origin => {
                    data.proxy.on_origin_write_timeout();
                    // The origin goes whatever the exchange's state, and its timer with it.
                    if let Some(flow) = data.flow.take() {
                        self.close_flow(flow);
                    }
                }
                Stall::Edge | Stall::Crowded => data.proxy.give_up(),
            }
            self.held_resets.push(HeldReset {
                host,
                waited,
                stall,
            });
            self.settle(now, conn, id);
        }
    }

    /// The pool key host of stream `id`'s flow.
    fn host_of(&self, id: I) -> String {
        self.streams
            .get(&id)
            .and_then(|d| d.flow)
            .and_then(|flow| self.flows.get(&flow))
            .map(|f| f.key.host.clone())
            .unwrap_or_default()
    }

    /// The streams whose origin has not taken their last write yet, and since when.
    fn waiting_on_origins(&self) -> impl Iterator<Item = (Instant, I)> + '_ {
        self.flows.values().filter_map(|f| {
            let id = f.stream.filter(|id| self.streams.contains_key(id))?;
            Some((f.writing?, id))
        })
    }

    /// Makes room for the requests whose origins read: while [`CONNECTOR_HELD_STREAMS`]
    /// requests wait on their origins, resets the one that waited longest if that is longer
    /// than [`ORIGIN_PATIENCE`].
    pub(crate) fn make_room<E: EdgeStreams<Id = I>>(&mut self, now: Instant, conn: &mut E) {
        // Counted first: this runs on every timeout, and only a crowd needs the list.
        let held = self.waiting_on_origins().count();
        let crowd = (held + 1).saturating_sub(CONNECTOR_HELD_STREAMS as usize);
        if crowd == 0 {
            return;
        }
        let mut waiting: Vec<(Instant, I)> = self.waiting_on_origins().collect();
        waiting.sort_unstable();
        for (since, id) in waiting.into_iter().take(crowd) {
            let waited = now.saturating_duration_since(since);
            if waited < ORIGIN_PATIENCE {
                break;
            }
            let host = self.host_of(id);
            let Some(data) = self.streams.get_mut(&id) else {
                continue;
            };
            debug!(stream = %id, ?waited, "origin took nothing; resetting to make room");
            data.proxy.give_up();
            self.held_resets.push(HeldReset {
                host,
                waited,
                stall: Stall::Crowded,
            });
            self.settle(now, conn, id);
        }
    }

    /// Fails the flows whose origin did not connect (or finish its TLS handshake) in time, as
    /// a failed dial fails, and tells the driver to drop the dial.
    pub(crate) fn expire_dials<E: EdgeStreams<Id = I>>(&mut self, now: Instant, conn: &mut E) {
        let expired: Vec<(FlowId, String)> = self
            .flows
            .iter()
            .filter_map(|(&id, f)| Some((id, f.dial.as_ref()?.expired(now)?.to_string())))
            .collect();
        for (flow, reason) in expired {
            match self.flows.get_mut(&flow) {
                Some(f) if f.dial.as_ref().is_some_and(Dial::is_destination) => {
                    debug!(%flow, "destination dial timed out");
                    f.dial = None;
                    self.actions.push_back(OriginAction::AbortDial { flow });
                }
                _ => self.on_flow_failed(now, conn, flow, &reason),
            }
        }
    }

    /// The connected flow's in-process origin (a SOCKS5 server) began dialling the
    /// destination its client named: that dial has the rule's `connectTimeout` from `now`.
    pub(crate) fn on_flow_dialing(&mut self, now: Instant, flow: FlowId) {
        if let Some(f) = self.flows.get_mut(&flow).filter(|f| f.connected) {
            f.dial = Some(Dial::destination(now, f.key.origin.as_deref()));
        }
    }

    /// That destination dial ended, connected or failed: no deadline any more.
    pub(crate) fn on_flow_dialed(&mut self, flow: FlowId) {
        if let Some(f) = self.flows.get_mut(&flow) {
            f.dial = None;
        }
    }

    /// The origin of `flow` is connected and its TLS handshake begins (its own deadline).
    /// The origin of `flow` chose HTTP/2 (said before it is connected).
    pub(crate) fn on_flow_http2(&mut self, flow: FlowId) {
        if let Some(f) = self.flows.get_mut(&flow) {
            f.http2 = true;
        }
    }

    pub(crate) fn on_flow_handshaking(&mut self, now: Instant, flow: FlowId) {
        if let Some(d) = self.flows.get_mut(&flow).and_then(|f| f.dial.as_mut()) {
            d.on_handshaking(now);
        }
    }

    /// When an idle flow expires: its rule's `keepAliveTimeout` (the limits' without a rule);
    /// zero keeps it, as Go's `IdleConnTimeout`.
    fn idle_deadline(&self, f: &Flow<I>) -> Option<Instant> {
        let timeout = f.key.origin.as_ref().map_or(self.limits.idle_timeout, |o| {
            o.origin_request.keep_alive_timeout
        });
        f.idle_since
            .filter(|_| !timeout.is_zero())
            .map(|t| t + timeout)
    }

    pub(crate) fn owns(&self, id: I) -> bool {
        self.streams.contains_key(&id) || self.finishing.contains(&id)
    }

    /// The edge sent more (or finished, or reset).
    pub(crate) fn on_readable<E: EdgeStreams<Id = I>>(
        &mut self,
        now: Instant,
        conn: &mut E,
        id: I,
    ) {
        self.drive(now, conn, id);
    }

    /// The edge stopped reading the stream (STOP_SENDING).
    pub(crate) fn on_stopped<E: EdgeStreams<Id = I>>(&mut self, now: Instant, conn: &mut E, id: I) {
        self.finishing.remove(&id);
        if let Some(data) = self.streams.get_mut(&id) {
            data.proxy.on_edge_reset();
        }
        self.drive(now, conn, id);
    }

    pub(crate) fn on_flow_connected<E: EdgeStreams<Id = I>>(
        &mut self,
        now: Instant,
        conn: &mut E,
        flow: FlowId,
    ) {
        let Some(f) = self.flows.get_mut(&flow) else {
            return;
        };
        if let Some(start) = f.timed.take() {
            let ms = now.saturating_duration_since(start).as_millis();
            self.stats
                .connect
                .observe(u64::try_from(ms).unwrap_or(u64::MAX));
        }
        f.connected = true;
        f.dial = None;
        if let Some(id) = f.stream {
            if let Some(data) = self.streams.get_mut(&id) {
                if f.http2 {
                    data.proxy.on_origin_http2();
                }
                data.proxy.on_origin_connected();
            }
            self.drive(now, conn, id);
        }
    }

    pub(crate) fn on_flow_failed<E: EdgeStreams<Id = I>>(
        &mut self,
        now: Instant,
        conn: &mut E,
        flow: FlowId,
        reason: &str,
    ) {
        let Some(f) = self.flows.remove(&flow) else {
            return;
        };
        count_unconnected(&mut self.stats, &f);
        debug!(%flow, %reason, "origin flow failed");
        // The driver lets go of it too: a dial still under way, a socket that broke.
        self.actions.push_back(OriginAction::Close { flow });
        if let Some(id) = f.stream {
            if let Some(data) = self.streams.get_mut(&id) {
                data.flow = None;
                data.proxy.on_origin_failed(reason);
            }
            self.drive(now, conn, id);
        }
    }

    /// Origin bytes; returns how many were taken. Short: stop reading until `Resume`.
    pub(crate) fn on_flow_data<E: EdgeStreams<Id = I>>(
        &mut self,
        now: Instant,
        conn: &mut E,
        flow: FlowId,
        bytes: &Bytes,
    ) -> usize {
        let Some(f) = self.flows.get_mut(&flow) else {
            return 0;
        };
        let Some(id) = f.stream else {
            // An idle pooled connection has nothing to say; one that speaks is broken.
            debug!(%flow, "idle origin connection sent data; closing it");
            self.close_flow(flow);
            return 0;
        };
        let mut taken = 0;
        while taken < bytes.len() {
            let Some(data) = self.streams.get_mut(&id) else {
                break;
            };
            if !data.held.is_empty() {
                // QUIC is full: the rest of the read waits (the flow pauses) until drive()
                // has moved the held bytes on.
                break;
            }
            let verbatim = data.proxy.passthrough_down().min(bytes.len() - taken);
            let n = if verbatim > 0 {
                // Payload as read: the stream takes the origin's buffer itself, no copy. What
                // it cannot take now is held as read, within the window, which still decides
                // when the origin is read again.
                match conn.write_shared(id, bytes.slice(taken..taken + verbatim)) {
                    Ok(n) => {
                        let keep = (verbatim - n).min(data.proxy.origin_room());
                        data.held = bytes.slice(taken + n..taken + n + keep);
                        data.proxy.passed_down(n + keep);
                        data.note_edge_write(now, n > 0);
                        n + keep
                    }
                    Err(_) => {
                        data.proxy.on_edge_reset();
                        0
                    }
                }
            } else {
                0
            };
            let n = if n == 0 {
                data.proxy.on_origin_data(&bytes[taken..])
            } else {
                n
            };
            taken += n;
            // Make room by moving bytes into QUIC, then try again.
            let before = data.proxy.to_edge().len() + data.held.len();
            self.drive(now, conn, id);
            let after = self
                .streams
                .get_mut(&id)
                .map_or(0, |d| d.proxy.to_edge().len() + d.held.len());
            if n == 0 && after >= before {
                break;
            }
        }
        if taken < bytes.len() {
            let data = self.streams.get_mut(&id);
            if data.as_ref().is_some_and(|d| !d.proxy.response_complete()) {
                // Out of room toward the edge: drive() sends Resume once there is some.
                if let Some(f) = self.flows.get_mut(&flow) {
                    f.paused = true;
                }
            } else {
                // Bytes after a complete response: on a keep-alive connection they would be
                // read as the next request's response. The connection is broken; close it
                // rather than pool it.
                debug!(%flow, "origin sent bytes after its response; closing it");
                if let Some(d) = data {
                    d.flow = None;
                }
                self.close_flow(flow);
                self.drive(now, conn, id);
            }
        }
        taken
    }

    /// The origin closed its side of the flow.
    pub(crate) fn on_flow_finished<E: EdgeStreams<Id = I>>(
        &mut self,
        now: Instant,
        conn: &mut E,
        flow: FlowId,
    ) {
        let Some(f) = self.flows.get(&flow) else {
            return;
        };
        match f.stream {
            Some(id) => {
                if let Some(data) = self.streams.get_mut(&id) {
                    data.proxy.on_origin_finished();
                }
                self.drive(now, conn, id);
            }
            None => self.close_flow(flow),
        }
    }

    /// The driver wrote the last `Write`.
    pub(crate) fn on_flow_written<E: EdgeStreams<Id = I>>(
        &mut self,
        now: Instant,
        conn: &mut E,
        flow: FlowId,
    ) {
        let Some(f) = self.flows.get_mut(&flow) else {
            return;
        };
        f.writing = None;
        if let Some(id) = f.stream {
            self.drive(now, conn, id);
        }
    }

    /// Moves everything that can move on stream `id`, then ends what is finished.
    pub(crate) fn drive<E: EdgeStreams<Id = I>>(&mut self, now: Instant, conn: &mut E, id: I) {
        loop {
            let Some(data) = self.streams.get_mut(&id) else {
                return;
            };
            // Edge → stream.
            let mut progressed = false;
            let mut room = data.proxy.edge_room();
            if data.proxy.request_complete() && !data.edge_finished {
                // Nothing more is wanted, but seeing the FIN spares the edge a STOP_SENDING;
                // stray bytes are dropped (quinn's window bounds them).
                match conn.read(id, usize::MAX, &mut self.scratch) {
                    Ok(true) | Err(_) => data.edge_finished = true,
                    Ok(false) => {}
                }
                self.scratch.clear();
                room = 0;
            }
            if room > 0 && !data.edge_finished {
                let verbatim = data.proxy.passthrough_up();
                let (r, target) = if verbatim > 0 {
                    // Body bytes as sent: straight from the transport's pieces into what the
                    // origin gets, one copy fewer. The pieces are gathered first so that the
                    // buffer is sized once to what came: a window's worth reserved per read
                    // cost the chatty streams' 1 KiB messages a window each.
                    let r = conn.read(id, verbatim, &mut self.pieces);
                    let n = append_pieces(data.proxy.to_origin(), &mut self.pieces);
                    data.proxy.passed_up(n);
                    (r, (n > 0).then_some(Ok(None)))
                } else {
                    // One scratch buffer for every read: no allocation per read once it has
                    // grown.
                    let mut buf = std::mem::take(&mut self.scratch);
                    buf.clear();
                    let r = conn.read(id, room, &mut buf);
                    data.proxy.set_now(now);
                    let target = (!buf.is_empty()).then(|| data.proxy.on_edge_data(&buf));
                    data.note_request(&mut self.stats);
                    self.scratch = buf;
                    (r, target)
                };
                match r {
                    Ok(finished) => {
                        if let Some(target) = target {
                            progressed = true;
                            if !matches!(target, Ok(None)) {
                                self.on_request(now, conn, id, target);
                                continue;
                            }
                        }
                        if finished {
                            data.edge_finished = true;
                            data.proxy.on_edge_finished();
                            progressed = true;
                        }
                    }
                    Err(e) => {
                        debug!(stream = %id, error = %e, "edge reset the stream");
                        data.edge_finished = true;
                        data.proxy.on_edge_reset();
                        progressed = true;
                    }
                }
            }
            let Some(data) = self.streams.get_mut(&id) else {
                return;
            };
            // Stream → origin.
            if let Some(flow) = data.flow {
                if let Some(f) = self.flows.get_mut(&flow) {
                    let pending = data.proxy.to_origin();
                    if f.connected && f.writing.is_none() && !pending.is_empty() {
                        f.writing = Some(now);
                        let bytes = Bytes::from(std::mem::take(pending));
                        self.actions
                            .push_back(OriginAction::Write { flow, data: bytes });
                        progressed = true;
                    }
                }
            }
            // Stream → edge: held bytes first, as read.
            let waiting = data.held.len() + data.proxy.to_edge().len();
            if !data.held.is_empty() {
                match conn.write_shared(id, data.held.clone()) {
                    Ok(n) => {
                        data.held = data.held.slice(n..);
                        progressed |= n > 0;
                    }
                    Err(_) => {
                        data.held = Bytes::new();
                        data.proxy.on_edge_reset();
                    }
                }
            }
            let out = data.proxy.to_edge();
            if data.held.is_empty() && !out.is_empty() {
                let before = out.len();
                if conn.write(id, out).is_err() {
                    // The edge stopped reading: nothing more can reach it.
                    data.proxy.on_edge_reset();
                }
                progressed |= data.proxy.to_edge().len() != before;
            }
            let left = data.held.len() + data.proxy.to_edge().len();
            data.note_edge_write(now, left < waiting);
            // Origin reads resume once there is room.
            if let Some(f) = data.flow.and_then(|flow| self.flows.get_mut(&flow)) {
                if f.paused && data.held.is_empty() && data.proxy.origin_room() > 0 {
                    f.paused = false;
                    let flow = data.flow.expect("checked");
                    self.actions.push_back(OriginAction::Resume { flow });
                }
            }
            if !progressed {
                break;
            }
        }
        self.settle(now, conn, id);
    }

    /// Ends the stream and resolves its flow once the proxy has decided and buffers drained.
    fn settle<E: EdgeStreams<Id = I>>(&mut self, now: Instant, conn: &mut E, id: I) {
        let Some(data) = self.streams.get_mut(&id) else {
            return;
        };
        let origin_end = data.proxy.origin_end();
        if let (Some(end), Some(flow)) = (origin_end, data.flow) {
            let drained = data.proxy.to_origin().is_empty()
                && self.flows.get(&flow).is_some_and(|f| f.writing.is_none());
            match end {
                OriginEnd::ShutdownWrite => {
                    if let Some(f) = self.flows.get_mut(&flow) {
                        if drained && !f.shut {
                            f.shut = true;
                            self.actions.push_back(OriginAction::ShutdownWrite { flow });
                        }
                    }
                }
                OriginEnd::Close => {
                    data.flow = None;
                    self.close_flow(flow);
                }
                OriginEnd::Reusable if drained => {
                    data.flow = None;
                    self.release(now, flow);
                }
                OriginEnd::Reusable => {}
            }
        }
        let Some(data) = self.streams.get_mut(&id) else {
            return;
        };
        match data.proxy.edge_end() {
            Some(EdgeEnd::Finish)
                if data.proxy.to_edge().is_empty()
                    && data.held.is_empty()
                    && data.flow.is_none() =>
            {
                if conn.finish(id) {
                    self.finishing.insert(id);
                }
                if !data.edge_finished {
                    conn.stop(id);
                }
                self.end_stream(id);
            }
            Some(EdgeEnd::Reset) => {
                conn.reset(id);
                if let Some(flow) = data.flow.take() {
                    self.close_flow(flow);
                }
                self.end_stream(id);
            }
            _ => {}
        }
    }

    /// Puts a finished keep-alive flow into the idle pool (or closes it when the pool is full).
    /// The pool is per rule, as cloudflared's transports are: at most the rule's
    /// `keepAliveConnections` idle (Go reads 0 as its default of 2 per host).
    fn release(&mut self, now: Instant, flow: FlowId) {
        let Some(origin) = self.flows.get(&flow).map(|f| f.key.origin.clone()) else {
            return;
        };
        let max = origin.as_ref().map_or(self.limits.max_idle, |o| {
            match o.origin_request.keep_alive_connections {
                0 => 2,
                n => n as usize,
            }
        });
        let idle = self
            .flows
            .values()
            .filter(|f| f.idle_since.is_some() && f.key.origin == origin)
            .count();
        match self.flows.get_mut(&flow) {
            Some(f) if idle < max => {
                f.stream = None;
                f.idle_since = Some(now);
            }
            _ => self.close_flow(flow),
        }
    }

    fn close_flow(&mut self, flow: FlowId) {
        if let Some(f) = self.flows.remove(&flow) {
            count_unconnected(&mut self.stats, &f);
            self.actions.push_back(OriginAction::Close { flow });
        }
    }

    /// Every stream and flow ends now (the connection is gone).
    pub(crate) fn close_all(&mut self) {
        let ids: Vec<I> = self.streams.keys().copied().collect();
        for id in ids {
            // Whatever was still being exchanged breaks with the connection.
            if let Some(data) = self.streams.get_mut(&id) {
                data.proxy.on_edge_reset();
            }
            self.end_stream(id);
        }
        self.finishing.clear();
        let flows: Vec<FlowId> = self.flows.keys().copied().collect();
        for flow in flows {
            self.close_flow(flow);
        }
    }
}

/// Whether cloudflared times the dial of a flow of `kind` to `origin`: streams to TCP origins
/// (`proxyTCPStream` for warp routing, `proxyStream` for WebSocket-carried `tcp://`-style,
/// bastion and SOCKS services), not HTTP requests.
fn timed(kind: FlowKind, origin: Option<&Origin>) -> bool {
    kind == FlowKind::Tcp
        || (kind == FlowKind::WebSocket
            && origin.is_some_and(|o| {
                matches!(
                    o.service,
                    Service::Tcp { .. } | Service::Bastion | Service::SocksProxy
                )
            }))
}

/// Since when a private-network TCP origin has not taken its outstanding write: only those
/// writes have cloudflared's `--write-stream-timeout` (`tcpConnection`).
fn origin_write_since<I>(f: &Flow<I>) -> Option<Instant> {
    f.writing.filter(|_| f.kind == FlowKind::Tcp)
}

/// A timed flow that goes before its origin connected is a failed dial
/// (`cloudflared_proxy_connect_streams_errors`).
fn count_unconnected<I>(stats: &mut RequestStats, f: &Flow<I>) {
    if f.timed.is_some() {
        stats.connect.errors += 1;
    }
}

/// The edge side of data streams: the transport a [`DataStreams`] reads requests from and
/// writes responses to (QUIC streams, or HTTP/2 streams behind an adapter).
pub(crate) trait EdgeStreams {
    /// Stream identifier.
    type Id;
    /// Appends at most `max` bytes of stream `id` to `sink`; true once the edge finished its
    /// side. An error means the edge reset the stream.
    fn read(&mut self, id: Self::Id, max: usize, sink: &mut impl BodySink) -> Result<bool, String>;
    /// Writes what the stream takes of `pending` and removes it; an error means the edge
    /// stopped reading.
    fn write(&mut self, id: Self::Id, pending: &mut Vec<u8>) -> Result<(), String>;
    /// Writes what the stream takes of `data`, keeping a reference rather than a copy where it
    /// can; returns how many bytes it took. An error means the edge stopped reading.
    fn write_shared(&mut self, id: Self::Id, data: Bytes) -> Result<usize, String> {
        write_copied(self, id, &data)
    }
    /// Ends our side after what was written; true if the edge must still acknowledge it.
    fn finish(&mut self, id: Self::Id) -> bool;
    /// Stops reading what is left of the request.
    fn stop(&mut self, id: Self::Id);
    /// Fails the stream.
    fn reset(&mut self, id: Self::Id);
}

/// [`EdgeStreams::write_shared`] by way of a copy and [`EdgeStreams::write`].
pub(crate) fn write_copied<E: EdgeStreams + ?Sized>(
    edge: &mut E,
    id: E::Id,
    data: &Bytes,
) -> Result<usize, String> {
    let mut pending = data.to_vec();
    edge.write(id, &mut pending)?;
    Ok(data.len() - pending.len())
}

impl EdgeStreams for Connection {
    type Id = StreamId;

    fn read(&mut self, id: StreamId, max: usize, sink: &mut impl BodySink) -> Result<bool, String> {
        read_stream_max(self, id, max, sink).map_err(|e| e.to_string())
    }

    fn write(&mut self, id: StreamId, pending: &mut Vec<u8>) -> Result<(), String> {
        flush_stream(self, id, pending).map_err(|e| e.to_string())
    }

    fn write_shared(&mut self, id: StreamId, data: Bytes) -> Result<usize, String> {
        match self.send_stream(id).write_chunks(&mut [data]) {
            Ok(written) => Ok(written.bytes),
            Err(quinn_proto::WriteError::Blocked) => Ok(0),
            Err(e) => Err(e.to_string()),
        }
    }

    fn finish(&mut self, id: StreamId) -> bool {
        self.send_stream(id).finish().is_ok()
    }

    fn stop(&mut self, id: StreamId) {
        let _ = self.recv_stream(id).stop(VarInt::from_u32(0));
    }

    fn reset(&mut self, id: StreamId) {
        reset(self, id);
    }
}

/// Fails a stream the way cloudflared does: RESET_STREAM(0) and STOP_SENDING(0).
pub(crate) fn reset(conn: &mut Connection, id: StreamId) {
    let _ = conn.recv_stream(id).stop(VarInt::from_u32(0));
    let _ = conn.send_stream(id).reset(VarInt::from_u32(0));
}

#[cfg(test)]
#[path = "data_tests.rs"]
mod tests;
