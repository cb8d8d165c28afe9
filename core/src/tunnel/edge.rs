//! The edge's side: a QUIC server endpoint accepting tunnel connections. The first
//! bidirectional stream a connector opens is its control stream; registrations are handed to
//! the caller, which checks credentials and answers. The edge opens data streams for the
//! requests it is given ([`EdgeEndpoint::open_request`]) and reports each response, and RPC
//! streams for calls to the connector (remote configuration, datagram-v2 sessions). Further
//! streams the connector opens are RPC streams to the edge's `SessionManager`
//! (`unregisterUdpSession`), served here and reported as [`EdgeEvent::UdpSessionUnregistered`].
//!
//! Anyone may connect, so what a connection can make the edge hold is bounded: at most
//! [`MAX_UNREGISTERED`] connections wait for their registration at once, each for at most
//! [`REGISTRATION_DEADLINE`], saying little meanwhile ([`crate::control::edge`]) and opening no
//! RPC streams; and a peer that lets more than [`CONTROL_UNSENT_MAX`] of control-stream replies
//! pile up (by granting no stream credit) is closed. Requests go to registered connections
//! only, and a [`ConnId`] is never reused, so a route can never reach a later connection.
//!
//! A request or call beyond the connector's stream grant waits for the grant to grow, as
//! quic-go's `OpenStreamSync` does at Cloudflare's edge (cloudflared's grant is unbounded,
//! burrow's grows with the load): at most [`MAX_WAITING_STREAMS`] per connection, each already
//! named by the stream id it will open as, and failed with the connection if it closes first.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::ops::Bound::{Excluded, Unbounded};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn_proto::{
    Connection, ConnectionHandle, DatagramEvent, Dir, Endpoint, EndpointConfig, Event,
    ServerConfig, Side, StreamEvent, StreamId, VarInt,
};
use tracing::debug;

use super::quic_io::{
    exchange_events, flush_chunks, flush_rpc_server, flush_stream, handle_received, read_stream,
    read_stream_max, send_datagram, AckWatch, Chunks, DatagramError, Finishing,
};
use super::rx::RxBuffers;
use super::{BodySink, EcnCodepoint, Received, Transmit};
use crate::control::edge::{ControlServer, EdgeControlEvent};
use crate::control::{ApiError, ConnectionDetails, Registration, RegistrationError};
use crate::quic::send_window;
use crate::quic::transport::QuicSettings;
use crate::receive_window::GrowingWindow;
use crate::rpc::frame::{frame_len, FrameLimits};
use crate::rpc_stream::client::{RpcCallOutcome, RpcStreamClient};
use crate::rpc_stream::server::{RpcStreamEvent, RpcStreamServer};
use crate::session::SessionId;
use crate::stream::connect::{decode_connect_response, ConnectRequest};
use crate::stream::preamble::{self, StreamKind, DATA_PREAMBLE, DATA_PREAMBLE_LEN};

/// Connections that have not registered yet, at most; further ones are refused.
pub const MAX_UNREGISTERED: usize = 256;
/// A connection that has not registered this long after it was accepted is closed.
pub const REGISTRATION_DEADLINE: Duration = Duration::from_secs(10);
/// Control-stream reply bytes the peer may leave unread before it is closed.
pub const CONTROL_UNSENT_MAX: usize = 64 * 1024;
/// Requests and calls that may wait for a connection's stream credit; beyond that opening one
/// fails with [`ApiError::NoStreamCredit`]. A connector's grant grows long before this many
/// wait; one that never grants keeps the edge holding no more than this.
pub const MAX_WAITING_STREAMS: usize = 1024;

/// Identifies one connector connection at this edge; never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub usize);

/// What connectors did. `S` names a data stream: QUIC's here, HTTP/2's in
/// [`super::edge_http2::Http2Edge`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EdgeEvent<S = StreamId> {
    /// A connector asks to register; answer with [`EdgeEndpoint::respond_registration`].
    RegisterRequested {
        /// Which connection.
        conn: ConnId,
        /// Its registration (credentials included).
        registration: Registration,
    },
    /// A registered connector pushed its local configuration.
    LocalConfiguration {
        /// Which connection.
        conn: ConnId,
        /// The JSON it sent.
        config: Vec<u8>,
    },
    /// A connector unregistered (graceful shutdown).
    Unregistered {
        /// Which connection.
        conn: ConnId,
    },
    /// A connector answered a configuration push.
    ConfigurationResult {
        /// Which connection.
        conn: ConnId,
        /// Its answer.
        outcome: RpcCallOutcome,
    },
    /// The connector answered `registerUdpSession` (or the call failed: `Err` either way).
    UdpSessionRegistered {
        /// Which connection.
        conn: ConnId,
        /// The session.
        id: SessionId,
        /// `Ok` when the response's `err` is empty.
        result: Result<(), String>,
    },
    /// The connector ended a datagram-v2 session on its side (`unregisterUdpSession` on a
    /// stream it opened; already acknowledged).
    UdpSessionUnregistered {
        /// Which connection.
        conn: ConnId,
        /// The session.
        id: SessionId,
        /// Why, in the connector's words (e.g. `session idle for 3s`).
        message: String,
    },
    /// The connector answered a request with its `ConnectResponse`.
    Response {
        /// Which connection.
        conn: ConnId,
        /// Which data stream.
        stream: S,
        /// `ConnectResponse.error` (empty: success).
        error: String,
        /// Its metadata, in wire order.
        metadata: Vec<(String, String)>,
    },
    /// Response body bytes (or the end) can be read with [`EdgeEndpoint::read_response`].
    ResponseReadable {
        /// Which connection.
        conn: ConnId,
        /// Which data stream.
        stream: S,
    },
    /// The connector reset a data stream (or stopped reading it).
    StreamReset {
        /// Which connection.
        conn: ConnId,
        /// Which data stream.
        stream: S,
    },
    /// A connection is gone.
    ConnectionClosed {
        /// Which connection.
        conn: ConnId,
        /// Why, in words.
        reason: String,
    },
    /// A connection attempt was refused in its handshake. Anyone may try, as often as they
    /// like: [`crate::edge::Edge`] reports only a few per window.
    ConnectionRefused {
        /// Who tried.
        from: SocketAddr,
        /// Why quinn refused it.
        cause: quinn_proto::ConnectionError,
    },
    /// A connector's RPC call was refused for its parameters (already answered). A connector
    /// may repeat it: [`crate::edge::Edge`] reports only a few per window.
    RpcRefused {
        /// Which connection.
        conn: ConnId,
        /// What was refused.
        refusal: crate::rpc_stream::server::CallRefusal,
    },
    /// A registered connector's control stream failed; the connection is being closed.
    /// (An unregistered peer's failures are not reported: anyone may be talking.)
    ControlFailed {
        /// Which connection.
        conn: ConnId,
        /// What went wrong.
        failure: ControlFailure,
    },
}

/// How a control stream failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlFailure {
    /// The connector broke the control-stream protocol.
    Broken {
        /// The protocol error, in words.
        error: String,
    },
    /// The connector leaves its control stream unread: our answers piled up past
    /// `CONTROL_UNSENT_MAX`.
    Unread {
        /// Bytes waiting.
        unsent: usize,
    },
}

impl std::fmt::Display for ControlFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Broken { error } => write!(f, "control stream broken: {error}"),
            Self::Unread { unsent } => {
                write!(
                    f,
                    "peer leaves its control stream unread ({unsent} bytes unsent)"
                )
            }
        }
    }
}

impl<S> EdgeEvent<S> {
    /// The same event with its stream id mapped by `f`.
    pub fn map_stream<T>(self, f: impl FnOnce(S) -> T) -> EdgeEvent<T> {
        use EdgeEvent::*;
        match self {
            RegisterRequested { conn, registration } => RegisterRequested { conn, registration },
            LocalConfiguration { conn, config } => LocalConfiguration { conn, config },
            Unregistered { conn } => Unregistered { conn },
            ConfigurationResult { conn, outcome } => ConfigurationResult { conn, outcome },
            UdpSessionRegistered { conn, id, result } => UdpSessionRegistered { conn, id, result },
            UdpSessionUnregistered { conn, id, message } => {
                UdpSessionUnregistered { conn, id, message }
            }
            Response {
                conn,
                stream,
                error,
                metadata,
            } => Response {
                conn,
                stream: f(stream),
                error,
                metadata,
            },
            ResponseReadable { conn, stream } => ResponseReadable {
                conn,
                stream: f(stream),
            },
            StreamReset { conn, stream } => StreamReset {
                conn,
                stream: f(stream),
            },
            ConnectionClosed { conn, reason } => ConnectionClosed { conn, reason },
            ConnectionRefused { from, cause } => ConnectionRefused { from, cause },
            ControlFailed { conn, failure } => ControlFailed { conn, failure },
            RpcRefused { conn, refusal } => RpcRefused { conn, refusal },
        }
    }
}

struct EdgeConnection {
    conn: Connection,
    handle: ConnectionHandle,
    /// Closed unless registered by then.
    register_by: Instant,
    control: Option<ControlStream>,
    /// RPC streams we opened, each carrying one call.
    calls: BTreeMap<StreamId, RpcCall>,
    /// RPC streams the connector opened (besides the control stream), served here.
    served: BTreeMap<StreamId, Served>,
    /// Data streams we opened.
    data: BTreeMap<StreamId, DataStream>,
    /// Streams of ours (in `calls` or `data`) named but not opened yet, for want of stream
    /// credit; opened in this order, that of their ids, as the grant grows.
    waiting: VecDeque<StreamId>,
    /// Index of the next stream id of ours to name.
    next_stream: u64,
    /// The connector unregistered: it is shutting down and gets no new requests.
    unregistered: bool,
    /// The connector ended its control conversation (Abort or FIN), as cloudflared does once
    /// it has the answer to `unregisterConnection`.
    control_ended: bool,
    closed: bool,
    /// quinn's datagram send buffer when empty, to tell how much of it is taken.
    datagram_room: usize,
    /// ACKs quinn owes and holds behind a full congestion window.
    acks: AckWatch,
    /// Ended RPC conversations whose last bytes wait for send window.
    finishing: Finishing,
    /// Something happened to the connection since quinn last had nothing to send: asking it
    /// again can find something. Asking an untouched connection costs a `poll_transmit` and a
    /// stats copy for nothing, per connection, at the end of every round.
    may_send: bool,
    /// Its receive window, grown for streams held by their eyeballs.
    window: GrowingWindow,
}

/// One request we sent on a data stream.
struct DataStream {
    /// Request bytes quinn has not taken yet.
    unsent: Chunks,
    /// FIN once `unsent` is written.
    finish: bool,
    /// Response bytes until the whole `ConnectResponse` is in; `None` once it was reported.
    head: Option<Vec<u8>>,
    /// Body bytes that came with the response message.
    body: Vec<u8>,
}

struct RpcCall {
    client: RpcStreamClient,
    called: Called,
    unsent: Vec<u8>,
    received: Vec<u8>,
}

/// What one of our RPC streams calls, to report its outcome.
#[derive(Debug, Clone, Copy)]
enum Called {
    UpdateConfiguration,
    RegisterUdpSession(SessionId),
    UnregisterUdpSession(SessionId),
}

/// A connector-opened stream other than the control stream.
enum Served {
    /// Waiting for the whole signature.
    Preamble(Vec<u8>),
    /// An RPC stream to our `SessionManager`.
    Rpc {
        server: RpcStreamServer,
        unsent: Vec<u8>,
    },
}

impl EdgeConnection {
    /// Whether its registration was accepted (it may have unregistered since).
    fn registered(&self) -> bool {
        self.control
            .as_ref()
            .is_some_and(|ctl| ctl.server.is_registered())
    }

    /// Names the next stream of ours: opened at once if the connector's grant allows,
    /// otherwise queued behind those already waiting, to open when the grant grows.
    fn name_stream(&mut self) -> Result<StreamId, ApiError> {
        if self.closed || self.conn.is_closed() {
            return Err(ApiError::Closed);
        }
        if self.waiting.is_empty() {
            if let Some(stream) = self.conn.streams().open(Dir::Bi) {
                self.next_stream = stream.index() + 1;
                return Ok(stream);
            }
        }
        if self.waiting.len() >= MAX_WAITING_STREAMS {
            return Err(ApiError::NoStreamCredit(self.waiting.len()));
        }
        // quinn numbers our streams in the order they open, and only these two paths open
        // them, so the id is known before the stream exists.
        let stream = StreamId::new(Side::Server, Dir::Bi, self.next_stream);
        self.next_stream += 1;
        self.waiting.push_back(stream);
        Ok(stream)
    }

    /// Whether the connector unregistered, has our answer, and nothing is in flight either way.
    /// It serves streams until we close the connection (or its grace period ends): only we
    /// know that none of ours is still on its way to it.
    fn drained(&self) -> bool {
        self.unregistered
            && self.control_ended
            && self.data.is_empty()
            && self.calls.is_empty()
            && self.served.is_empty()
    }

    /// Whether `stream` of ours is open at quinn (not waiting for credit).
    fn opened(&self, stream: StreamId) -> bool {
        self.waiting.front().is_none_or(|w| stream < *w)
    }

    /// Opens waiting streams while the grant allows (quinn's `StreamEvent::Available`). One
    /// the caller reset while it waited is opened and reset at once, so that the streams
    /// named after it still open as what they were named.
    fn open_waiting(&mut self) {
        while let Some(&named) = self.waiting.front() {
            let Some(stream) = self.conn.streams().open(Dir::Bi) else {
                return;
            };
            debug_assert_eq!(stream, named, "streams open in the order they were named");
            self.waiting.pop_front();
            if !self.calls.contains_key(&stream) && !self.data.contains_key(&stream) {
                super::data::reset(&mut self.conn, stream);
            }
        }
    }
}

struct ControlStream {
    stream: StreamId,
    server: ControlServer,
    unsent: Vec<u8>,
    received: Vec<u8>,
}

/// The edge's QUIC endpoint with every connector connection it holds.
pub struct EdgeEndpoint {
    endpoint: Endpoint,
    // Ordered so that iteration, and hence what is sent first, is deterministic.
    conns: BTreeMap<ConnId, EdgeConnection>,
    /// quinn reuses its handles; our ids are never reused.
    ids: HashMap<ConnectionHandle, ConnId>,
    next_id: usize,
    /// Stateless answers (version negotiation, refusals): rare, so owned copies.
    responses: VecDeque<Response>,
    events: VecDeque<EdgeEvent>,
    /// Where quinn writes stateless responses (reused, not reallocated per datagram).
    scratch: Vec<u8>,
    /// Where received UDP datagrams are copied for quinn (`rx`).
    rx: RxBuffers,
    /// Connections the datagrams of one `handle_received` reached, in arrival order.
    touched: Vec<ConnId>,
    /// Every connection's receive window as it starts.
    window: GrowingWindow,
}

/// A stateless datagram quinn's endpoint wants sent.
struct Response {
    destination: SocketAddr,
    ecn: Option<EcnCodepoint>,
    bytes: Vec<u8>,
}

/// Copies a stateless response out of `scratch`, where quinn wrote it.
fn stateless(t: &quinn_proto::Transmit, scratch: &[u8]) -> Response {
    Response {
        destination: t.destination,
        ecn: t.ecn.map(Into::into),
        bytes: scratch[..t.size.min(scratch.len())].to_vec(),
    }
}

impl EdgeEndpoint {
    /// An endpoint serving with `server` (TLS + transport, see [`crate::quic`]).
    pub fn new(server: ServerConfig, rng_seed: [u8; 32]) -> Self {
        Self {
            endpoint: Endpoint::new(
                Arc::new(EndpointConfig::default()),
                Some(Arc::new(server)),
                true,
                Some(rng_seed),
            ),
            conns: BTreeMap::new(),
            ids: HashMap::new(),
            next_id: 0,
            responses: VecDeque::new(),
            events: VecDeque::new(),
            scratch: Vec::new(),
            rx: RxBuffers::default(),
            touched: Vec::new(),
            window: GrowingWindow::new(&QuicSettings::edge()),
        }
    }

    /// Feeds a UDP datagram received from `from`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        self.handle_received(now, &Received::single(from, data));
    }

    /// Feeds UDP datagrams received in one buffer (GRO: `stride` bytes each).
    pub fn handle_received(&mut self, now: Instant, received: &Received<'_>) {
        let from = received.from;
        let mut touched = std::mem::take(&mut self.touched);
        touched.clear();
        let (conns, ids, next_id, responses, events, window) = (
            &mut self.conns,
            &mut self.ids,
            &mut self.next_id,
            &mut self.responses,
            &mut self.events,
            &self.window,
        );
        handle_received(
            &mut self.endpoint,
            now,
            received,
            &mut self.rx,
            &mut self.scratch,
            |endpoint, event, scratch| match event {
                DatagramEvent::ConnectionEvent(h, ev) => {
                    if let Some(&id) = ids.get(&h) {
                        if let Some(c) = conns.get_mut(&id) {
                            c.conn.handle_event(ev);
                            if touched.last() != Some(&id) {
                                touched.push(id);
                            }
                        }
                    }
                }
                DatagramEvent::NewConnection(incoming) => {
                    let waiting = conns.values().filter(|c| !c.registered()).count();
                    if waiting >= MAX_UNREGISTERED {
                        debug!(%from, waiting, "refused a connection: too many unregistered");
                        let t = endpoint.refuse(incoming, scratch);
                        responses.push_back(stateless(&t, scratch));
                        return;
                    }
                    match endpoint.accept(incoming, now, scratch, None) {
                        Ok((h, mut conn)) => {
                            let id = ConnId(*next_id);
                            *next_id += 1;
                            debug!(conn = id.0, %from, "connector connection accepted");
                            ids.insert(h, id);
                            touched.push(id);
                            conns.insert(
                                id,
                                EdgeConnection {
                                    datagram_room: conn.datagrams().send_buffer_space(),
                                    acks: AckWatch::new(&conn),
                                    finishing: Finishing::default(),
                                    conn,
                                    handle: h,
                                    register_by: now + REGISTRATION_DEADLINE,
                                    control: None,
                                    calls: BTreeMap::new(),
                                    served: BTreeMap::new(),
                                    data: BTreeMap::new(),
                                    waiting: VecDeque::new(),
                                    next_stream: 0,
                                    unregistered: false,
                                    control_ended: false,
                                    closed: false,
                                    may_send: true,
                                    window: *window,
                                },
                            );
                        }
                        Err(e) => {
                            // Logged by the driver, within the edge's log budget.
                            events.push_back(EdgeEvent::ConnectionRefused {
                                from,
                                cause: e.cause,
                            });
                            if let Some(t) = e.response {
                                responses.push_back(stateless(&t, scratch));
                            }
                        }
                    }
                }
                DatagramEvent::Response(t) => responses.push_back(stateless(&t, scratch)),
            },
        );
        // Only the connections a datagram reached have anything new to act on. A connection
        // met twice, not back to back, is visited twice: harmless, and rare (GRO runs come
        // from one peer).
        for &id in &touched {
            self.progress_conn(now, id);
        }
        self.touched = touched;
    }

    /// A fresh id, never used by this endpoint, for a connection another transport holds
    /// (HTTP/2 over TCP), so ids are unique across the edge.
    pub fn reserve_conn_id(&mut self) -> ConnId {
        let id = ConnId(self.next_id);
        self.next_id += 1;
        id
    }

    /// Lets timers fire.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.rx.let_go();
        for (id, c) in self.conns.iter_mut() {
            if c.conn.poll_timeout().is_some_and(|t| t <= now) {
                c.conn.handle_timeout(now);
            }
            if !c.registered() && !c.conn.is_closed() && c.register_by <= now {
                debug!(conn = id.0, "no registration in time; closing");
                c.conn.close(
                    now,
                    VarInt::from_u32(0),
                    Bytes::from_static(b"no registration in time"),
                );
            }
        }
        self.progress(now);
    }

    /// Closes every connection because the edge is going away, so that connectors reconnect
    /// at once rather than after their idle timeout. The closes go out with the next
    /// `poll_transmit`s.
    pub fn close_all(&mut self, now: Instant, reason: &str) {
        for c in self.conns.values_mut() {
            c.conn.close(
                now,
                VarInt::from_u32(0),
                Bytes::copy_from_slice(reason.as_bytes()),
            );
        }
        self.progress(now);
    }

    /// Closes connection `conn` because its connector abandoned it, and reports it closed
    /// at once ([`EdgeEvent::ConnectionClosed`]): the connector is gone from it, so what the
    /// connection carried (requests, sessions) must move now, not after the closing period
    /// (3 PTO, which loss inflates to tens of seconds).
    pub fn close(&mut self, now: Instant, conn: ConnId, reason: &str) {
        if let Some(c) = self.conns.get_mut(&conn) {
            if !c.closed {
                c.conn.close(
                    now,
                    VarInt::from_u32(0),
                    Bytes::copy_from_slice(reason.as_bytes()),
                );
                closed(conn, c, reason.to_owned(), &mut self.events);
            }
        }
        self.progress_conn(now, conn);
    }

    /// Answers a pending registration on `conn`.
    pub fn respond_registration(
        &mut self,
        now: Instant,
        conn: ConnId,
        result: Result<ConnectionDetails, RegistrationError>,
    ) -> Result<(), ApiError> {
        let c = self.conns.get_mut(&conn).ok_or(ApiError::Closed)?;
        let control = c
            .control
            .as_mut()
            .ok_or(ApiError::NothingPending("registration"))?;
        control.server.respond_registration(result)?;
        self.progress_conn(now, conn);
        Ok(())
    }

    /// Pushes remote configuration `version` to `conn` on a new RPC stream; the answer comes
    /// as [`EdgeEvent::ConfigurationResult`].
    pub fn update_configuration(
        &mut self,
        now: Instant,
        conn: ConnId,
        version: i32,
        config: &[u8],
    ) -> Result<StreamId, ApiError> {
        let client = RpcStreamClient::update_configuration(version, config)?;
        self.call(now, conn, client, Called::UpdateConfiguration)
    }

    /// Asks `conn` for datagram-v2 session `id` to `dest` (`registerUdpSession` on a new RPC
    /// stream); the answer comes as [`EdgeEvent::UdpSessionRegistered`].
    pub fn register_udp_session(
        &mut self,
        now: Instant,
        conn: ConnId,
        id: SessionId,
        dest: SocketAddr,
        idle_hint_nanos: i64,
    ) -> Result<StreamId, ApiError> {
        let client = RpcStreamClient::register_udp_session(id, dest, idle_hint_nanos, "")?;
        self.call(now, conn, client, Called::RegisterUdpSession(id))
    }

    /// Ends datagram-v2 session `id` on `conn` (`unregisterUdpSession` on a new RPC stream).
    /// The connector closes it without calling back; a failure is only logged.
    pub fn unregister_udp_session(
        &mut self,
        now: Instant,
        conn: ConnId,
        id: SessionId,
        message: &str,
    ) -> Result<StreamId, ApiError> {
        let client = RpcStreamClient::unregister_udp_session(id, message)?;
        self.call(now, conn, client, Called::UnregisterUdpSession(id))
    }

    /// Opens an RPC stream on `conn` carrying `client`'s call (beyond the connector's stream
    /// grant: once it grows).
    fn call(
        &mut self,
        now: Instant,
        conn: ConnId,
        mut client: RpcStreamClient,
        called: Called,
    ) -> Result<StreamId, ApiError> {
        let c = self.conns.get_mut(&conn).ok_or(ApiError::Closed)?;
        let stream = c.name_stream()?;
        let unsent = client.poll_transmit().unwrap_or_default();
        c.calls.insert(
            stream,
            RpcCall {
                client,
                called,
                unsent,
                received: Vec::new(),
            },
        );
        self.progress_conn(now, conn);
        Ok(stream)
    }

    /// Opens a data stream on `conn` carrying `request` (or, beyond the connector's stream
    /// grant, names it and opens it once the grant grows); send its body with
    /// [`EdgeEndpoint::send_request_body`]. The answer comes as [`EdgeEvent::Response`].
    pub fn open_request(
        &mut self,
        now: Instant,
        conn: ConnId,
        request: &ConnectRequest<'_>,
    ) -> Result<StreamId, ApiError> {
        let c = self.conns.get_mut(&conn).ok_or(ApiError::Closed)?;
        if !c.registered() {
            return Err(ApiError::NotRegistered("a request"));
        }
        let mut head = Vec::new();
        request
            .encode(&mut head)
            .map_err(|e| ApiError::Encode(e.to_string()))?;
        let mut unsent = Chunks::default();
        unsent.push(head.into());
        let stream = c.name_stream()?;
        c.data.insert(
            stream,
            DataStream {
                unsent,
                finish: false,
                head: Some(Vec::new()),
                body: Vec::new(),
            },
        );
        self.progress_conn(now, conn);
        Ok(stream)
    }

    /// Queues request-body bytes; takes at most what keeps the stream's unsent bytes within
    /// `window`, and returns how many it took (0: wait for the stream to drain).
    pub fn send_request_body(
        &mut self,
        now: Instant,
        conn: ConnId,
        stream: StreamId,
        bytes: &Bytes,
        window: usize,
    ) -> Result<usize, ApiError> {
        let c = self.conns.get_mut(&conn).ok_or(ApiError::Closed)?;
        let d = c.data.get_mut(&stream).ok_or(ApiError::Closed)?;
        if d.finish {
            return Err(ApiError::Closed);
        }
        let n = bytes.len().min(window.saturating_sub(d.unsent.len()));
        d.unsent.push(bytes.slice(..n));
        self.progress_conn(now, conn);
        Ok(n)
    }

    /// Request bytes still waiting for QUIC to take them.
    pub fn request_unsent(&self, conn: ConnId, stream: StreamId) -> usize {
        self.conns
            .get(&conn)
            .and_then(|c| c.data.get(&stream))
            .map_or(0, |d| d.unsent.len())
    }

    /// Ends the request body (FIN after what is queued).
    pub fn finish_request(
        &mut self,
        now: Instant,
        conn: ConnId,
        stream: StreamId,
    ) -> Result<(), ApiError> {
        let c = self.conns.get_mut(&conn).ok_or(ApiError::Closed)?;
        c.data.get_mut(&stream).ok_or(ApiError::Closed)?.finish = true;
        self.progress_conn(now, conn);
        Ok(())
    }

    /// Abandons a request: RESET_STREAM and STOP_SENDING, code 0.
    /// Widens `conn`'s receive window to make room for `held` streams whose eyeballs take
    /// nothing, beside the others ([`crate::receive_window`]).
    pub fn hold(&mut self, conn: ConnId, held: u32) {
        if let Some(c) = self.conns.get_mut(&conn) {
            // The wider window goes out in a MAX_DATA frame.
            c.may_send |= c.window.hold(&mut c.conn, held);
        }
    }

    pub fn reset_request(
        &mut self,
        now: Instant,
        conn: ConnId,
        stream: StreamId,
    ) -> Result<(), ApiError> {
        let c = self.conns.get_mut(&conn).ok_or(ApiError::Closed)?;
        c.data.remove(&stream).ok_or(ApiError::Closed)?;
        // One still waiting for credit is reset when it opens.
        if c.opened(stream) {
            super::data::reset(&mut c.conn, stream);
        }
        self.progress_conn(now, conn);
        Ok(())
    }

    /// Reads up to `max` response-body bytes into `sink` (pieces quinn holds go to a
    /// `Vec<Bytes>` uncopied). Returns true once the body is complete (the connector finished
    /// the stream); the stream is then forgotten.
    pub fn read_response(
        &mut self,
        now: Instant,
        conn: ConnId,
        stream: StreamId,
        max: usize,
        sink: &mut impl BodySink,
    ) -> Result<bool, ApiError> {
        let c = self.conns.get_mut(&conn).ok_or(ApiError::Closed)?;
        let d = c.data.get_mut(&stream).ok_or(ApiError::Closed)?;
        if d.head.is_some() {
            return Err(ApiError::NothingPending("response body"));
        }
        let n = d.body.len().min(max);
        sink.put_slice(&d.body[..n]);
        d.body.drain(..n);
        let finished = match read_stream_max(&mut c.conn, stream, max - n, sink) {
            Ok(finished) => finished && d.body.is_empty(),
            Err(_) => {
                c.data.remove(&stream);
                self.events
                    .push_back(EdgeEvent::StreamReset { conn, stream });
                return Err(ApiError::Closed);
            }
        };
        if finished && d.unsent.is_empty() {
            c.data.remove(&stream);
        }
        self.progress_conn(now, conn);
        Ok(finished)
    }

    /// The next datagrams to send, at most `max_datagrams` of them as one GSO batch, written
    /// into `buf`.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        max_datagrams: usize,
        buf: &mut Vec<u8>,
    ) -> Option<Transmit> {
        if let Some(r) = self.responses.pop_front() {
            buf.clear();
            buf.extend_from_slice(&r.bytes);
            return Some(Transmit {
                destination: r.destination,
                size: r.bytes.len(),
                segment_size: None,
                ecn: r.ecn,
            });
        }
        self.conns
            .values_mut()
            .filter(|c| c.may_send)
            .find_map(|c| {
                let t = c.acks.poll_transmit(&mut c.conn, now, max_datagrams, buf);
                c.may_send = t.is_some();
                t
            })
    }

    /// When [`EdgeEndpoint::handle_timeout`] must be called next.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.conns
            .values_mut()
            .filter_map(|c| {
                let deadline = (!c.registered() && !c.conn.is_closed()).then_some(c.register_by);
                [c.conn.poll_timeout(), deadline, c.acks.deadline(&c.conn)]
                    .into_iter()
                    .flatten()
                    .min()
            })
            .min()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<EdgeEvent> {
        self.events.pop_front()
    }

    /// Queues a QUIC datagram for connector connection `conn`.
    pub fn send_datagram(&mut self, conn: ConnId, datagram: Bytes) -> Result<(), DatagramError> {
        match self.conns.get_mut(&conn) {
            Some(c) if !c.closed => {
                c.may_send = true;
                send_datagram(&mut c.conn, datagram)
            }
            _ => Err(DatagramError::Closed),
        }
    }

    /// The next QUIC datagram any connector sent, with the connection it came on.
    pub fn poll_datagram(&mut self) -> Option<(ConnId, Bytes)> {
        self.conns
            .iter_mut()
            .find_map(|(&id, c)| c.conn.datagrams().recv().map(|d| (id, d)))
    }

    /// Bytes of datagrams queued for connection `conn` and not yet sent (bounded by the
    /// datagram send buffer); 0 for a connection that is gone.
    pub fn datagram_bytes_queued(&mut self, conn: ConnId) -> usize {
        self.conns.get_mut(&conn).map_or(0, |c| {
            c.datagram_room
                .saturating_sub(c.conn.datagrams().send_buffer_space())
        })
    }

    /// Whether connection `conn` is still open on the edge's side (a connector may not have
    /// noticed yet that the edge closed it).
    pub fn is_open(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(|c| !c.closed)
    }

    /// quinn's counters for connection `conn`.
    pub fn quic_stats(&self, conn: ConnId) -> Option<quinn_proto::ConnectionStats> {
        self.conns.get(&conn).map(|c| c.conn.stats())
    }

    /// Lets every connection act on what changed.
    fn progress(&mut self, now: Instant) {
        // Walked by key, as a connection may go away on its turn.
        let mut next = self.conns.keys().next().copied();
        while let Some(id) = next {
            self.progress_conn(now, id);
            next = self
                .conns
                .range((Excluded(id), Unbounded))
                .next()
                .map(|(&k, _)| k);
        }
    }

    /// Lets connection `id` act on what changed: events in and out of quinn, stream writes,
    /// closing once drained, forgetting it once quinn has.
    fn progress_conn(&mut self, now: Instant, id: ConnId) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        c.may_send = true;
        exchange_events(&mut self.endpoint, c.handle, &mut c.conn);
        send_window::refit(&mut c.conn);
        c.finishing.flush(&mut c.conn);
        while let Some(event) = c.conn.poll() {
            on_quic_event(now, id, c, event, &mut self.events);
        }
        c.open_waiting();
        pump_control(now, id, c, &mut self.events);
        // Streams still waiting for credit have nothing to write to yet.
        let unopened = c.waiting.front().copied();
        let opened = |stream: &StreamId| unopened.is_none_or(|w| *stream < w);
        for (&stream, call) in c.calls.iter_mut().filter(|(s, _)| opened(s)) {
            if let Some(bytes) = call.client.poll_transmit() {
                call.unsent.extend_from_slice(&bytes);
            }
            let _ = flush_stream(&mut c.conn, stream, &mut call.unsent);
        }
        let served: Vec<StreamId> = c.served.keys().copied().collect();
        for stream in served {
            flush_served(c, stream);
        }
        let mut broken = Vec::new();
        for (&stream, d) in c.data.iter_mut().filter(|(s, _)| opened(s)) {
            if flush_chunks(&mut c.conn, stream, &mut d.unsent).is_err() {
                broken.push(stream);
            } else if d.finish && d.unsent.is_empty() {
                // Finishing twice is harmless; quinn refuses the second.
                let _ = c.conn.send_stream(stream).finish();
            }
        }
        for stream in broken {
            c.data.remove(&stream);
            self.events
                .push_back(EdgeEvent::StreamReset { conn: id, stream });
        }
        if c.drained() && !c.conn.is_closed() {
            debug!(
                conn = id.0,
                "connector unregistered and nothing is in flight; closing"
            );
            c.conn.close(now, VarInt::from_u32(0), Bytes::new());
        }
        exchange_events(&mut self.endpoint, c.handle, &mut c.conn);
        if c.conn.is_drained() {
            if !c.closed {
                closed(id, c, "closed".into(), &mut self.events);
            }
            let handle = c.handle;
            self.conns.remove(&id);
            self.ids.remove(&handle);
        }
    }
}

fn on_quic_event(
    now: Instant,
    id: ConnId,
    c: &mut EdgeConnection,
    event: Event,
    events: &mut VecDeque<EdgeEvent>,
) {
    match event {
        Event::ConnectionLost { reason } if !c.closed => closed(id, c, reason.to_string(), events),
        Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) => {
            while let Some(stream) = c.conn.streams().accept(Dir::Bi) {
                if c.control.is_none() {
                    c.control = Some(ControlStream {
                        stream,
                        server: ControlServer::new(),
                        unsent: Vec::new(),
                        received: Vec::new(),
                    });
                    // Data that came with the opening frame gets no Readable event of its own.
                    read_control(now, id, c, events);
                } else if c.registered() {
                    // Further connector streams are RPC streams to our `SessionManager`.
                    c.served.insert(stream, Served::Preamble(Vec::new()));
                    read_served(id, stream, c, events);
                } else {
                    // Nothing to serve before registration.
                    super::data::reset(&mut c.conn, stream);
                }
            }
        }
        Event::Stream(StreamEvent::Readable { id: stream })
            if c.control.as_ref().is_some_and(|ctl| ctl.stream == stream) =>
        {
            read_control(now, id, c, events);
        }
        Event::Stream(StreamEvent::Readable { id: stream }) if c.data.contains_key(&stream) => {
            read_data(id, stream, c, events)
        }
        Event::Stream(StreamEvent::Readable { id: stream }) if c.served.contains_key(&stream) => {
            read_served(id, stream, c, events)
        }
        Event::Stream(StreamEvent::Stopped { id: stream, .. }) => {
            // The connector wants no more request bytes (cloudflared stops reading once a
            // request is answered); its response still comes.
            if let Some(d) = c.data.get_mut(&stream) {
                d.unsent.clear();
                d.finish = true;
                let _ = c.conn.send_stream(stream).reset(VarInt::from_u32(0));
            }
        }
        Event::Stream(StreamEvent::Readable { id: stream }) => read_call(id, stream, c, events),
        _ => {}
    }
}

/// Reads a data stream: the `ConnectResponse` first (reported as an event), then tells the
/// caller body bytes are there to read.
fn read_data(
    id: ConnId,
    stream: StreamId,
    c: &mut EdgeConnection,
    events: &mut VecDeque<EdgeEvent>,
) {
    let Some(d) = c.data.get_mut(&stream) else {
        return;
    };
    let Some(head) = &mut d.head else {
        events.push_back(EdgeEvent::ResponseReadable { conn: id, stream });
        return;
    };
    let limits = FrameLimits::CONNECT_REQUEST;
    // Read no further than the message, so the body waits in quinn (and flow control) until
    // the caller reads it.
    let finished = loop {
        let want = match head.get(DATA_PREAMBLE_LEN..).map(|m| frame_len(m, &limits)) {
            Some(Ok(Some(n))) => DATA_PREAMBLE_LEN + n - head.len().min(DATA_PREAMBLE_LEN + n),
            Some(Ok(None)) | None => 64,
            // The decoder below reports it.
            Some(Err(_)) => 0,
        };
        let before = head.len();
        match read_stream_max(&mut c.conn, stream, want, head) {
            Ok(finished) if finished || want == 0 || head.len() == before => break finished,
            Ok(_) => {}
            Err(_) => {
                c.data.remove(&stream);
                events.push_back(EdgeEvent::StreamReset { conn: id, stream });
                return;
            }
        }
    };
    let n = head.len().min(DATA_PREAMBLE_LEN);
    let parsed = if head[..n] != DATA_PREAMBLE[..n] {
        Err("bad data-stream preamble in response".to_owned())
    } else if head.len() < DATA_PREAMBLE_LEN {
        Ok(None)
    } else {
        match decode_connect_response(&head[DATA_PREAMBLE_LEN..], &limits) {
            Ok(Some((r, used))) => {
                let error = r.error().unwrap_or_default().to_owned();
                let metadata = r
                    .metadata()
                    .filter_map(Result::ok)
                    .map(|m| (m.key.to_owned(), m.val.to_owned()))
                    .collect();
                Ok(Some((error, metadata, DATA_PREAMBLE_LEN + used)))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    };
    match parsed {
        Ok(Some((error, metadata, used))) => {
            d.body = head.split_off(used);
            d.head = None;
            events.push_back(EdgeEvent::Response {
                conn: id,
                stream,
                error,
                metadata,
            });
            events.push_back(EdgeEvent::ResponseReadable { conn: id, stream });
        }
        Ok(None) if !finished => {}
        Ok(None) | Err(_) => {
            debug!(conn = id.0, stream = %stream, "unreadable response; resetting");
            c.data.remove(&stream);
            super::data::reset(&mut c.conn, stream);
            events.push_back(EdgeEvent::StreamReset { conn: id, stream });
        }
    }
}

/// Reads the answer on one of our RPC streams; an answered (or broken) call ends its stream.
fn read_call(
    id: ConnId,
    stream: StreamId,
    c: &mut EdgeConnection,
    events: &mut VecDeque<EdgeEvent>,
) {
    let Some(call) = c.calls.get_mut(&stream) else {
        return;
    };
    let outcome = match read_stream(&mut c.conn, stream, &mut call.received) {
        Ok(finished) => {
            let bytes = std::mem::take(&mut call.received);
            match call.client.handle_bytes(&bytes) {
                Ok(()) => call.client.poll_outcome().or_else(|| {
                    finished.then(|| RpcCallOutcome::Failed("stream ended unanswered".into()))
                }),
                Err(e) => Some(RpcCallOutcome::Failed(e.to_string())),
            }
        }
        Err(e) => Some(RpcCallOutcome::Failed(format!("stream reset: {e}"))),
    };
    let Some(outcome) = outcome else {
        return;
    };
    if let Some(bytes) = call.client.poll_transmit() {
        call.unsent.extend_from_slice(&bytes);
    }
    let unsent = std::mem::take(&mut call.unsent);
    c.finishing.finish(&mut c.conn, stream, unsent);
    // Whatever else the connector sends on it is of no interest.
    let _ = c.conn.recv_stream(stream).stop(VarInt::from_u32(0));
    let called = call.called;
    c.calls.remove(&stream);
    report_call(id, called, outcome, events);
}

/// The connection is gone: its calls fail, waiting or not (its requests fail with it, by the
/// [`EdgeEvent::ConnectionClosed`] that follows).
fn closed(id: ConnId, c: &mut EdgeConnection, reason: String, events: &mut VecDeque<EdgeEvent>) {
    c.closed = true;
    c.waiting.clear();
    for (_, call) in std::mem::take(&mut c.calls) {
        report_call(id, call.called, RpcCallOutcome::ConnectionClosed, events);
    }
    events.push_back(EdgeEvent::ConnectionClosed { conn: id, reason });
}

/// Reports how one of our calls ended.
fn report_call(
    id: ConnId,
    called: Called,
    outcome: RpcCallOutcome,
    events: &mut VecDeque<EdgeEvent>,
) {
    match (called, outcome) {
        (Called::UpdateConfiguration, outcome) => {
            events.push_back(EdgeEvent::ConfigurationResult { conn: id, outcome })
        }
        (Called::RegisterUdpSession(session), outcome) => {
            let result = match outcome {
                RpcCallOutcome::UdpSessionRegistered(result) => result,
                RpcCallOutcome::Failed(reason) => Err(reason),
                RpcCallOutcome::ConnectionClosed => Err("the connection closed".into()),
                other => Err(format!("unexpected answer {other:?}")),
            };
            events.push_back(EdgeEvent::UdpSessionRegistered {
                conn: id,
                id: session,
                result,
            });
        }
        (Called::UnregisterUdpSession(session), RpcCallOutcome::ConnectionClosed) => {
            debug!(conn = id.0, session_id = %session, "unregisterUdpSession unsent: the connection closed");
        }
        (Called::UnregisterUdpSession(session), RpcCallOutcome::UdpSessionUnregistered) => {
            debug!(conn = id.0, session_id = %session, "connector acknowledged unregisterUdpSession");
        }
        (Called::UnregisterUdpSession(session), outcome) => {
            // The session is gone on this side either way; nothing for the operator to do.
            debug!(conn = id.0, session_id = %session, ?outcome, "unregisterUdpSession failed");
        }
    }
}

/// Reads a connector-opened stream: its signature, then the RPC conversation.
fn read_served(
    id: ConnId,
    stream: StreamId,
    c: &mut EdgeConnection,
    events: &mut VecDeque<EdgeEvent>,
) {
    let Some(served) = c.served.get_mut(&stream) else {
        return;
    };
    let mut received = Vec::new();
    let finished = match read_stream(&mut c.conn, stream, &mut received) {
        Ok(finished) => finished,
        Err(e) => {
            debug!(conn = id.0, stream = %stream, error = %e, "connector reset an RPC stream");
            c.served.remove(&stream);
            return;
        }
    };
    if let Served::Preamble(buf) = served {
        buf.extend_from_slice(&received);
        match preamble::parse(buf) {
            Ok(None) if !finished => return,
            Ok(Some(kind @ StreamKind::Rpc)) => {
                received = buf.split_off(kind.preamble_len());
                *served = Served::Rpc {
                    server: RpcStreamServer::edge(),
                    unsent: Vec::new(),
                };
            }
            Ok(_) | Err(_) => {
                debug!(conn = id.0, stream = %stream, "connector stream is not an RPC stream");
                c.served.remove(&stream);
                super::data::reset(&mut c.conn, stream);
                return;
            }
        }
    }
    let Some(Served::Rpc { server, .. }) = c.served.get_mut(&stream) else {
        return;
    };
    if let Err(e) = server.handle_bytes(&received) {
        // One stream of the connector's is reset; the connection serves on.
        debug!(conn = id.0, stream = %stream, error = %e, "RPC stream broken");
        c.served.remove(&stream);
        super::data::reset(&mut c.conn, stream);
        return;
    }
    while let Some(event) = server.poll_event() {
        match event {
            RpcStreamEvent::UnregisterUdpSession {
                id: session,
                message,
            } => events.push_back(EdgeEvent::UdpSessionUnregistered {
                conn: id,
                id: session,
                message,
            }),
            // The edge's server refuses everything else itself.
            RpcStreamEvent::CallRefused(refusal) => {
                events.push_back(EdgeEvent::RpcRefused { conn: id, refusal })
            }
            other => debug!(conn = id.0, event = ?other, "connector RPC call"),
        }
    }
    let settled = server.is_settled();
    flush_served(c, stream);
    if finished && !settled {
        debug!(conn = id.0, stream = %stream, "connector ended an RPC stream unanswered");
        c.served.remove(&stream);
    }
}

/// Writes what a served RPC stream has to say; finishes it once its call is answered.
fn flush_served(c: &mut EdgeConnection, stream: StreamId) {
    let Some(Served::Rpc { server, unsent }) = c.served.get_mut(&stream) else {
        return;
    };
    if flush_rpc_server(&mut c.conn, stream, server, unsent) {
        c.served.remove(&stream);
    }
}

/// Feeds what the control stream has to the control server; a broken one closes the connection.
fn read_control(
    now: Instant,
    id: ConnId,
    c: &mut EdgeConnection,
    events: &mut VecDeque<EdgeEvent>,
) {
    let Some(ctl) = c.control.as_mut() else {
        return;
    };
    match read_stream(&mut c.conn, ctl.stream, &mut ctl.received) {
        Ok(finished) => {
            c.control_ended |= finished;
            let bytes = std::mem::take(&mut ctl.received);
            if let Err(e) = ctl.server.handle_bytes(&bytes) {
                // Before registration anyone may be talking: not worth a warning each.
                if ctl.server.is_registered() {
                    events.push_back(EdgeEvent::ControlFailed {
                        conn: id,
                        failure: ControlFailure::Broken {
                            error: e.to_string(),
                        },
                    });
                } else {
                    debug!(conn = id.0, error = %e, "unregistered peer broke the control stream; closing");
                }
                c.conn.close(now, VarInt::from_u32(0), bytes::Bytes::new());
            }
        }
        Err(e) => debug!(conn = id.0, error = %e, "control stream ended"),
    }
}

fn pump_control(
    now: Instant,
    id: ConnId,
    c: &mut EdgeConnection,
    events: &mut VecDeque<EdgeEvent>,
) {
    let Some(ctl) = c.control.as_mut() else {
        return;
    };
    while let Some(e) = ctl.server.poll_event() {
        events.push_back(match e {
            EdgeControlEvent::RegisterRequested(registration) => EdgeEvent::RegisterRequested {
                conn: id,
                registration,
            },
            EdgeControlEvent::LocalConfiguration(config) => {
                EdgeEvent::LocalConfiguration { conn: id, config }
            }
            EdgeControlEvent::Unregistered => {
                c.unregistered = true;
                EdgeEvent::Unregistered { conn: id }
            }
            EdgeControlEvent::Aborted(reason) => {
                debug!(conn = id.0, %reason, "connector ended its control stream");
                c.control_ended = true;
                continue;
            }
        });
    }
    if let Some(bytes) = ctl.server.poll_transmit() {
        ctl.unsent.extend_from_slice(&bytes);
    }
    if let Err(e) = flush_stream(&mut c.conn, ctl.stream, &mut ctl.unsent) {
        debug!(conn = id.0, error = %e, "control stream write failed");
    }
    if ctl.unsent.len() > CONTROL_UNSENT_MAX && !c.conn.is_closed() {
        let unsent = ctl.unsent.len();
        if ctl.server.is_registered() {
            events.push_back(EdgeEvent::ControlFailed {
                conn: id,
                failure: ControlFailure::Unread { unsent },
            });
        } else {
            debug!(
                conn = id.0,
                unsent, "unregistered peer leaves its control stream unread; closing"
            );
        }
        ctl.unsent = Vec::new();
        c.conn.close(
            now,
            VarInt::from_u32(0),
            Bytes::from_static(b"control stream unread"),
        );
    }
}

#[cfg(test)]
#[path = "edge_tests.rs"]
mod tests;
