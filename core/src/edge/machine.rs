//! The edge: both tunnel transports, registrations, routing, eyeball streams and mapped
//! UDP/ICMP sessions as one sans-IO machine in str0m's shape, the edge's twin of
//! [`crate::connector::Connector`].
//!
//! The driver feeds one [`Input`] with [`Edge::handle_input`], then drains
//! [`Edge::poll_output`] until it says [`Output::Timeout`], then waits for I/O or the deadline.
//! Who may register is the [`Authenticator`]'s answer (the user's tunnel store); which
//! connection carries a request is core's ([`super::routes`], round robin over a tunnel's
//! registered connections); how fast bytes move is core's too ([`super::streams`]). The driver
//! owns the sockets, the TLS-free TCP accept, the eyeball HTTP server and nothing else.
//!
//! Transmits and TCP writes are written into the edge's own buffers and lent out: an
//! [`Output`] borrows the edge until the next call.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use uuid::Uuid;

use super::hostnames::HostnameTable;
use super::log_budget::{LogBudget, Verdict};
use super::registrar::{Authenticator, Registrar};
use super::streams::{EyeballId, OpenError, StreamEvent, Streams};
use crate::control::{ApiError, EdgeCause};
use crate::rpc_stream::client::RpcCallOutcome;
use crate::session::edge::{
    Call, EdgeDrop, EdgeSessions, EdgeSessionsConfig, MappingId, MappingKind, SessionEvent,
};
use crate::session::DatagramVersion;
use crate::stream::connect::{ConnectRequest, ConnectionType, Metadata};
use crate::tunnel::edge::{ConnId, ControlFailure, EdgeEndpoint, EdgeEvent};
use crate::tunnel::edge_http2::{AcceptError, Http2Edge};
use crate::tunnel::edge_transports::{DataStream, EdgeTransports};
use crate::tunnel::protocol::Protocol;
use crate::tunnel::{DatagramError, Received, Transmit};

/// Ciphertext lent to the driver for one TCP connection and not yet reported written, past
/// which the edge stops producing more for it.
pub const WRITE_AHEAD: usize = 1024 * 1024;
/// Largest single TCP write lent out.
const TCP_CHUNK: usize = 64 * 1024;
/// Refused registrations logged per window ([`REFUSAL_WINDOW`]).
const REFUSALS_LOGGED: u32 = 5;
/// See [`REFUSALS_LOGGED`]; refused connection attempts have the same allowance.
const REFUSAL_WINDOW: Duration = Duration::from_secs(10);

/// How to build an [`Edge`].
pub struct EdgeConfig {
    /// QUIC: TLS and transport.
    pub quic: quinn_proto::ServerConfig,
    /// HTTP/2 over TLS on TCP.
    pub http2_tls: Arc<rustls::ServerConfig>,
    /// Bounds of each HTTP/2 connection.
    pub http2_limits: crate::http2::Limits,
    /// Which tunnel serves an eyeball's `Host`.
    pub hostnames: HostnameTable,
    /// Mapped UDP sessions and ICMP.
    pub sessions: EdgeSessionsConfig,
    /// Public UDP/ICMP mappings, numbered in this order ([`MappingId`]).
    pub mappings: Vec<(Uuid, MappingKind)>,
    /// Seeds quinn and the session request ids.
    pub seed: [u8; 32],
}

/// Where an eyeball stream goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The tunnel serving this `Host` (port allowed).
    Hostname(String),
    /// This tunnel.
    Tunnel(Uuid),
}

/// Something that happened outside the edge.
#[derive(Debug)]
pub enum Input<'a> {
    /// The deadline of the last [`Output::Timeout`] passed (early calls are harmless).
    Timeout,
    /// Close every tunnel connection; the closes come out of the next drain.
    Shutdown,
    /// The QUIC socket sends GSO batches of up to `max_segments` datagrams.
    QuicSocket {
        /// Datagrams per transmit the socket takes (1 without GSO).
        max_segments: usize,
    },
    /// UDP datagrams arrived on the QUIC socket.
    Received(Received<'a>),
    /// Bytes read from an HTTP/2 connector's TCP connection ([`Edge::accept_tcp`]); empty at
    /// its end. Read again only while [`Edge::tcp_wants_read`] says so.
    TcpReceived {
        /// Which connection.
        conn: ConnId,
        /// What was read.
        data: &'a [u8],
    },
    /// `len` bytes of [`Io::WriteTcp`] were written.
    TcpWritten {
        /// Which connection.
        conn: ConnId,
        /// Bytes written.
        len: usize,
    },
    /// An eyeball request: open a stream for it. Answered with [`StreamEvent`]s for `id`.
    Open {
        /// The driver's name for it; unique among open streams.
        id: EyeballId,
        /// Where it goes.
        target: Target,
        /// `ConnectRequest.dest`.
        dest: String,
        /// HTTP, WebSocket or TCP.
        kind: ConnectionType,
        /// `ConnectRequest.metadata`.
        metadata: Vec<(String, String)>,
    },
    /// Request-body bytes, acknowledged ([`StreamEvent::Ack`], one per chunk) once the
    /// transport took them whole. Chunks sent ahead of their acks queue in the edge: the
    /// driver bounds how many it keeps unacknowledged.
    Body {
        /// Which stream.
        id: EyeballId,
        /// The bytes.
        data: Bytes,
    },
    /// The request body ended.
    Finish(EyeballId),
    /// The eyeball went away or gave up: reset the stream.
    Reset(EyeballId),
    /// The eyeball took the last [`StreamEvent::Body`]: the next may come.
    ReadMore(EyeballId),
    /// Push remote configuration `version` to a QUIC connection (`updateConfiguration`, as
    /// Cloudflare's edge does when a remotely managed tunnel's configuration changes); the
    /// answer comes as [`Event::ConfigurationResult`]. HTTP/2 connections take no pushes here.
    PushConfiguration {
        /// Which connection.
        conn: ConnId,
        /// The version offered.
        version: i32,
        /// The configuration JSON.
        config: &'a [u8],
    },
    /// A public client's packet on a UDP/ICMP mapping's socket.
    ClientPacket {
        /// Which mapping.
        mapping: MappingId,
        /// Who sent it.
        from: SocketAddr,
        /// UDP payload, or a raw IP packet for an ICMP mapping.
        data: &'a [u8],
    },
}

/// I/O the driver must do now.
#[derive(Debug, PartialEq, Eq)]
pub enum Io<'a> {
    /// Tell eyeball stream `id` what happened.
    Stream {
        /// Which stream.
        id: EyeballId,
        /// What happened.
        event: StreamEvent,
    },
    /// Write `data` to an HTTP/2 connector's TCP connection, then report
    /// [`Input::TcpWritten`].
    WriteTcp {
        /// Which connection.
        conn: ConnId,
        /// Ciphertext.
        data: &'a [u8],
    },
    /// Close an HTTP/2 connector's TCP connection after what was written; stop reading it.
    CloseTcp {
        /// Which connection.
        conn: ConnId,
    },
    /// Send `payload` to `client` from the mapping's socket (a full socket drops it).
    SendToClient {
        /// Whose socket.
        mapping: MappingId,
        /// Where to.
        client: SocketAddr,
        /// UDP payload, or an IP packet for an ICMP mapping.
        payload: &'a [u8],
    },
}

/// Something that happened, for logs and metrics (logged once, by the driver).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A connection's registration was accepted.
    Registered {
        /// Which connection.
        conn: ConnId,
        /// Its tunnel.
        tunnel: Uuid,
        /// Its HA index.
        conn_index: u8,
        /// Its transport.
        protocol: Protocol,
        /// The connection id told to the connector (cloudflared logs it as `connection`).
        connection: Uuid,
    },
    /// A registration was refused. Only a few per window are reported (anyone may try).
    RegistrationRefused {
        /// Which connection.
        conn: ConnId,
        /// The tunnel it named.
        tunnel: Uuid,
        /// The refusal sent back.
        cause: EdgeCause,
        /// Refusals since the last reported one that were not reported.
        suppressed: u64,
    },
    /// A connection attempt was refused in its handshake. Only a few per window are reported
    /// (anyone may try).
    ConnectionRefused {
        /// Who tried.
        from: SocketAddr,
        /// Why quinn refused it.
        cause: quinn_proto::ConnectionError,
        /// Refused attempts since the last reported one that were not reported.
        suppressed: u64,
    },
    /// A connector registered an HA index again, so it abandoned the connection that held it
    /// (whose close was lost): that one is closed now, not at its idle timeout.
    Superseded {
        /// The abandoned connection, closed now.
        old: ConnId,
        /// The connection that registered the index again.
        by: ConnId,
        /// The HA index.
        conn_index: u8,
    },
    /// A connector's RPC call was refused for its parameters. Only a few per window are
    /// reported.
    RpcRefused {
        /// Which connection.
        conn: ConnId,
        /// What was refused.
        refusal: crate::rpc_stream::server::CallRefusal,
        /// Refusals since the last reported one that were not reported.
        suppressed: u64,
    },
    /// A registered connector's control stream failed; its connection is being closed.
    ControlStreamFailed {
        /// Which connection.
        conn: ConnId,
        /// What went wrong.
        failure: ControlFailure,
    },
    /// A registration could not be answered (the connection is closing).
    AnswerFailed {
        /// Which connection.
        conn: ConnId,
        /// Why.
        error: ApiError,
    },
    /// A connection unregistered (graceful shutdown): no new requests.
    Unregistered {
        /// Which connection.
        conn: ConnId,
    },
    /// A connection is gone.
    ConnectionClosed {
        /// Which connection.
        conn: ConnId,
        /// Why, in words.
        reason: String,
    },
    /// A registered connector pushed its local configuration (`updateLocalConfiguration`).
    LocalConfiguration {
        /// Which connection.
        conn: ConnId,
        /// Its tunnel.
        tunnel: Uuid,
        /// The JSON, as received.
        config: Vec<u8>,
    },
    /// A connector answered a configuration push ([`Input::PushConfiguration`]), or the push
    /// could not be sent (`RpcCallOutcome::Failed`: no such QUIC connection).
    ConfigurationResult {
        /// Which connection.
        conn: ConnId,
        /// Its answer.
        outcome: RpcCallOutcome,
    },
    /// A client packet on a mapping was dropped.
    ClientPacketDropped {
        /// Which mapping.
        mapping: MappingId,
        /// Whose.
        client: SocketAddr,
        /// Why.
        reason: EdgeDrop,
    },
    /// A UDP session of a mapping opened, registered, moved or ended.
    Session(SessionEvent),
    /// A tunnel connection refused a datagram.
    DatagramRefused {
        /// Which connection.
        conn: ConnId,
        /// Why.
        error: DatagramError,
    },
    /// A stream whose eyeball had taken nothing for longer than
    /// [`crate::edge::streams::EYEBALL_PATIENCE`] was reset to make room on its crowded
    /// connection.
    HeldStreamReset {
        /// Which connection.
        conn: ConnId,
        /// The stream.
        id: EyeballId,
    },
}

/// What the driver must do next.
#[derive(Debug)]
pub enum Output<'a> {
    /// Send `data` (one datagram or a GSO batch) from the QUIC socket.
    Transmit {
        /// Destination, segment size, ECN.
        transmit: Transmit,
        /// The bytes, lent from the edge's buffer.
        data: &'a [u8],
    },
    /// Socket or eyeball work.
    Io(Io<'a>),
    /// Something happened.
    Event(Event),
    /// Nothing more to do until this time (`None`: until an input).
    Timeout(Option<Instant>),
}

enum Queued {
    Io(Io<'static>),
    Event(Event),
}

/// A stream reset to make room on its crowded connection: the driver is told, and the eyeball
/// gets its reset.
fn held_reset(queue: &mut VecDeque<Queued>, conn: ConnId, id: EyeballId) {
    queue.push_back(Queued::Event(Event::HeldStreamReset { conn, id }));
    queue.push_back(Queued::Io(Io::Stream {
        id,
        event: StreamEvent::Reset,
    }));
}

/// One HTTP/2 connector's TCP connection, as the edge sees it.
#[derive(Default)]
struct TcpConn {
    /// Bytes read that the machine has not taken yet (it must transmit first).
    pending: BytesMut,
    /// The peer closed; reported once `pending` is taken.
    eof: bool,
    /// Lent to the driver, not yet written.
    writing: usize,
}

// The machine holds plain single-owner state (no `Rc`, no cells): with a `Send` tunnel store
// a driver may move it to another thread.
const _: () = {
    const fn assert_send<T: Send>() {}
    #[allow(dead_code)]
    const fn edge_is_send<A: Send>() {
        assert_send::<Edge<A>>();
    }
};

/// The edge of one `burrow edge` process.
pub struct Edge<A> {
    tp: EdgeTransports,
    registrar: Registrar<A>,
    hostnames: HostnameTable,
    sessions: EdgeSessions,
    streams: Streams,
    /// Which tunnel each registered connection serves.
    tunnel_of: BTreeMap<ConnId, Uuid>,
    refusals: LogBudget,
    /// Refused connection attempts: a budget of their own, so a flood of handshakes cannot
    /// hide refused registrations.
    refused_conns: LogBudget,
    /// Refused RPC calls.
    refused_calls: LogBudget,
    tcp: BTreeMap<ConnId, TcpConn>,
    queue: VecDeque<Queued>,
    segments: usize,
    /// One GSO batch.
    buf: Vec<u8>,
    /// One TCP write.
    tcp_buf: Vec<u8>,
    /// The connector datagram being delivered, and the payload lent from it.
    lent: Bytes,
    /// Connection ids told to connectors.
    rng: ChaCha8Rng,
}

impl<A: Authenticator> Edge<A> {
    /// An edge serving with `config`; registrations are checked by `auth`.
    pub fn new(config: EdgeConfig, auth: A) -> Self {
        let mut sessions = EdgeSessions::new(config.sessions, config.seed);
        for (tunnel, kind) in config.mappings {
            sessions.add_mapping(tunnel, kind);
        }
        Self {
            tp: EdgeTransports {
                quic: EdgeEndpoint::new(config.quic, config.seed),
                http2: Http2Edge::new(config.http2_tls, config.http2_limits),
            },
            registrar: Registrar::new(auth),
            hostnames: config.hostnames,
            sessions,
            streams: Streams::new(),
            tunnel_of: BTreeMap::new(),
            refusals: LogBudget::new(REFUSAL_WINDOW, REFUSALS_LOGGED),
            refused_conns: LogBudget::new(REFUSAL_WINDOW, REFUSALS_LOGGED),
            refused_calls: LogBudget::new(REFUSAL_WINDOW, REFUSALS_LOGGED),
            tcp: BTreeMap::new(),
            queue: VecDeque::new(),
            segments: 1,
            // Room for a GSO batch of full-size datagrams.
            buf: Vec::with_capacity(64 * 1500),
            tcp_buf: vec![0; TCP_CHUNK],
            lent: Bytes::new(),
            // Not the seed quinn and the sessions use as is.
            rng: ChaCha8Rng::from_seed(config.seed.map(|b| b ^ 0x5a)),
        }
    }

    /// Both transports, for their counters.
    pub fn transports(&self) -> &EdgeTransports {
        &self.tp
    }

    /// The mapped sessions, for their counters.
    pub fn sessions(&self) -> &EdgeSessions {
        &self.sessions
    }

    /// Datagram bytes queued on QUIC connection `conn` and not yet sent (0 if it is gone).
    pub fn datagram_bytes_queued(&mut self, conn: ConnId) -> usize {
        self.tp.quic.datagram_bytes_queued(conn)
    }

    /// Eyeball streams open.
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// The connection eyeball stream `id` went out on, while it is open.
    pub fn stream_connection(&self, id: EyeballId) -> Option<ConnId> {
        self.streams.connection(id)
    }

    /// Whether tunnel connection `conn` is open (on either transport).
    pub fn is_open(&self, conn: ConnId) -> bool {
        self.tp.quic.is_open(conn) || self.tp.http2.contains(conn)
    }

    /// A connector dialled the TCP port (HTTP/2 over TLS): its connection's id, or why it is
    /// refused (then close the socket).
    pub fn accept_tcp(&mut self, now: Instant) -> Result<ConnId, AcceptError> {
        let id = self.tp.quic.reserve_conn_id();
        self.tp.http2.accept(now, id)?;
        self.tcp.insert(id, TcpConn::default());
        Ok(id)
    }

    /// Whether the driver may read `conn`'s TCP connection now (false while the edge holds
    /// bytes it could not take yet: TCP then holds the connector back).
    pub fn tcp_wants_read(&self, conn: ConnId) -> bool {
        self.tcp
            .get(&conn)
            .is_some_and(|t| t.pending.is_empty() && !t.eof)
    }

    /// Takes one input. Stale ones (a stream or connection that is gone) are ignored.
    pub fn handle_input(&mut self, now: Instant, input: Input<'_>) {
        match input {
            Input::Timeout => {
                self.tp.handle_timeout(now);
                let queue = &mut self.queue;
                self.streams.on_timeout(now, &mut self.tp, &mut |conn, id| {
                    held_reset(queue, conn, id)
                });
                if self.sessions.poll_timeout().is_some_and(|t| t <= now) {
                    self.sessions.handle_timeout(now);
                }
            }
            Input::Shutdown => self.tp.close_all(now, "edge shutting down"),
            Input::QuicSocket { max_segments } => self.segments = max_segments.max(1),
            Input::Received(received) => self.tp.quic.handle_received(now, &received),
            Input::TcpReceived { conn, data } => self.tcp_received(now, conn, data),
            Input::TcpWritten { conn, len } => {
                if let Some(t) = self.tcp.get_mut(&conn) {
                    t.writing = t.writing.saturating_sub(len);
                }
            }
            Input::Open {
                id,
                target,
                dest,
                kind,
                metadata,
            } => {
                if let Err(e) = self.open(now, id, target, &dest, kind, &metadata) {
                    self.stream_event(id, StreamEvent::Refused(e));
                }
            }
            Input::Body { id, data } => self.streams.body(id, data),
            Input::Finish(id) => self.streams.finish(id),
            Input::Reset(id) => self.streams.reset(now, &mut self.tp, id),
            Input::ReadMore(id) => self.streams.read_more(id),
            Input::PushConfiguration {
                conn,
                version,
                config,
            } => {
                // An HTTP/2 connection is not the QUIC endpoint's: refused as closed.
                let pushed = self
                    .tp
                    .quic
                    .update_configuration(now, conn, version, config);
                if let Err(e) = pushed {
                    self.queue
                        .push_back(Queued::Event(Event::ConfigurationResult {
                            conn,
                            outcome: RpcCallOutcome::Failed(e.to_string()),
                        }));
                }
            }
            Input::ClientPacket {
                mapping,
                from,
                data,
            } => {
                if let Err(reason) = self.sessions.handle_client(now, mapping, from, data) {
                    self.queue
                        .push_back(Queued::Event(Event::ClientPacketDropped {
                            mapping,
                            client: from,
                            reason,
                        }));
                }
            }
        }
    }

    /// The next thing to do. Call until it returns [`Output::Timeout`].
    pub fn poll_output(&mut self, now: Instant) -> Output<'_> {
        loop {
            // Transport events first: they answer registrations and open the routes the rest
            // uses.
            while let Some(e) = self.tp.poll_event() {
                self.on_event(now, e);
            }
            while let Some(e) = self.sessions.poll_event() {
                self.queue.push_back(Queued::Event(Event::Session(e)));
            }
            if let Some(q) = self.queue.pop_front() {
                return match q {
                    Queued::Io(io) => Output::Io(io),
                    Queued::Event(e) => Output::Event(e),
                };
            }
            let (streams, tp, queue) = (&mut self.streams, &mut self.tp, &mut self.queue);
            if streams.pump(now, tp, &mut |id, event| {
                queue.push_back(Queued::Io(Io::Stream { id, event }));
            }) {
                continue;
            }
            // Datagrams from connectors out to clients.
            if let Some((conn, d)) = self.tp.quic.poll_datagram() {
                self.lent = d;
                let Some(out) = self.sessions.handle_datagram(now, conn, &self.lent) else {
                    continue;
                };
                let (mapping, client) = (out.mapping, out.client);
                self.lent = self.lent.slice_ref(out.payload);
                return Output::Io(Io::SendToClient {
                    mapping,
                    client,
                    payload: &self.lent,
                });
            }
            // The session table's calls on v2 connections.
            if let Some(call) = self.sessions.poll_call() {
                self.call(now, call);
                continue;
            }
            // The session table's datagrams into the tunnel.
            if let Some((conn, d)) = self.sessions.poll_datagram() {
                // A cheap clone (shared bytes), kept to tell the sessions what failed.
                if let Err(error) = self.tp.quic.send_datagram(conn, d.clone()) {
                    self.sessions.send_failed(now, conn, &d);
                    self.queue
                        .push_back(Queued::Event(Event::DatagramRefused { conn, error }));
                }
                continue;
            }
            if let Some(io) = self.poll_tcp(now) {
                return match io {
                    TcpIo::Write(conn, n) => Output::Io(Io::WriteTcp {
                        conn,
                        data: &self.tcp_buf[..n],
                    }),
                    TcpIo::Again => continue,
                };
            }
            if let Some(transmit) = self
                .tp
                .quic
                .poll_transmit(now, self.segments, &mut self.buf)
            {
                let size = transmit.size.min(self.buf.len());
                return Output::Transmit {
                    transmit,
                    data: &self.buf[..size],
                };
            }
            let deadline = [self.tp.poll_timeout(), self.sessions.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            return Output::Timeout(deadline);
        }
    }

    fn open(
        &mut self,
        now: Instant,
        id: EyeballId,
        target: Target,
        dest: &str,
        kind: ConnectionType,
        metadata: &[(String, String)],
    ) -> Result<(), OpenError> {
        let tunnel = match target {
            Target::Tunnel(t) => t,
            Target::Hostname(host) => self.hostnames.route(&host).ok_or(OpenError::NoRoute)?,
        };
        let conn = self.registrar.pick(tunnel).ok_or(OpenError::NoConnection)?;
        let meta: Vec<Metadata<'_>> = metadata
            .iter()
            .map(|(key, val)| Metadata { key, val })
            .collect();
        let request = ConnectRequest {
            dest,
            connection_type: kind,
            metadata: &meta,
        };
        let queue = &mut self.queue;
        self.streams
            .open(now, &mut self.tp, id, conn, &request, &mut |conn, id| {
                held_reset(queue, conn, id)
            })
    }

    /// Makes a datagram-v2 session call (its answer comes as an [`EdgeEvent`]).
    fn call(&mut self, now: Instant, call: Call) {
        match call {
            Call::Register {
                conn,
                id,
                dest,
                idle_hint,
            } => {
                let nanos = i64::try_from(idle_hint.as_nanos()).unwrap_or(i64::MAX);
                let made = self
                    .tp
                    .quic
                    .register_udp_session(now, conn, id, dest, nanos);
                if made.is_err() {
                    self.sessions.call_failed(now, conn, id);
                }
            }
            // Nothing depends on it: a connection that cannot take it is closing.
            Call::Unregister { conn, id, message } => {
                let _ = self.tp.quic.unregister_udp_session(now, conn, id, &message);
            }
        }
    }

    /// A fresh random (v4) id for an accepted connection.
    fn connection_uuid(&mut self) -> Uuid {
        let mut bytes = [0u8; 16];
        self.rng.fill_bytes(&mut bytes);
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }

    fn stream_event(&mut self, id: EyeballId, event: StreamEvent) {
        self.queue.push_back(Queued::Io(Io::Stream { id, event }));
    }

    fn on_event(&mut self, now: Instant, e: EdgeEvent<DataStream>) {
        match e {
            EdgeEvent::RegisterRequested { conn, registration } => {
                let uuid = self.connection_uuid();
                let (result, superseded) = match self.registrar.register(conn, &registration, uuid)
                {
                    Ok((details, old)) => (Ok(details), old),
                    Err(e) => (Err(e), None),
                };
                let tunnel = registration.tunnel_id;
                match &result {
                    Ok(_) => {
                        self.tunnel_of.insert(conn, tunnel);
                        let http2 = self.tp.is_http2(conn);
                        let protocol = if http2 {
                            Protocol::Http2
                        } else {
                            Protocol::Quic
                        };
                        self.queue.push_back(Queued::Event(Event::Registered {
                            conn,
                            tunnel,
                            conn_index: registration.conn_index,
                            protocol,
                            connection: uuid,
                        }));
                        // No datagrams on HTTP/2 (PROTOCOL.md C§1.1).
                        if !http2 {
                            let version = DatagramVersion::from_features(&registration.features);
                            self.sessions.add_connection(now, conn, tunnel, version);
                        }
                    }
                    Err(e) => {
                        if let Verdict::Log { suppressed } = self.refusals.check(now) {
                            self.queue
                                .push_back(Queued::Event(Event::RegistrationRefused {
                                    conn,
                                    tunnel,
                                    cause: e.cause.clone(),
                                    suppressed,
                                }));
                        }
                    }
                }
                if let Err(error) = self.tp.respond_registration(now, conn, result) {
                    self.queue
                        .push_back(Queued::Event(Event::AnswerFailed { conn, error }));
                }
                // The connector dialed this index again, so it gave up on the old connection
                // (its close was lost): move what it carried now, not at its idle timeout.
                if let Some(old) = superseded {
                    let index = registration.conn_index;
                    self.queue.push_back(Queued::Event(Event::Superseded {
                        old,
                        by: conn,
                        conn_index: index,
                    }));
                    let reason =
                        format!("superseded by connection {} (conn_index {index})", conn.0);
                    self.tp.close(now, old, &reason);
                }
            }
            EdgeEvent::Unregistered { conn } => {
                self.registrar.unregistered(conn);
                self.sessions.remove_connection(now, conn);
                self.queue
                    .push_back(Queued::Event(Event::Unregistered { conn }));
            }
            EdgeEvent::ConnectionClosed { conn, reason } => {
                self.registrar.closed(conn);
                self.tunnel_of.remove(&conn);
                self.sessions.remove_connection(now, conn);
                let queue = &mut self.queue;
                self.streams.on_closed(conn, &mut |id, event| {
                    queue.push_back(Queued::Io(Io::Stream { id, event }));
                });
                self.queue
                    .push_back(Queued::Event(Event::ConnectionClosed { conn, reason }));
            }
            EdgeEvent::ConnectionRefused { from, cause } => {
                if let Verdict::Log { suppressed } = self.refused_conns.check(now) {
                    self.queue
                        .push_back(Queued::Event(Event::ConnectionRefused {
                            from,
                            cause,
                            suppressed,
                        }));
                }
            }
            EdgeEvent::RpcRefused { conn, refusal } => {
                if let Verdict::Log { suppressed } = self.refused_calls.check(now) {
                    self.queue.push_back(Queued::Event(Event::RpcRefused {
                        conn,
                        refusal,
                        suppressed,
                    }));
                }
            }
            EdgeEvent::ControlFailed { conn, failure } => self
                .queue
                .push_back(Queued::Event(Event::ControlStreamFailed { conn, failure })),
            EdgeEvent::LocalConfiguration { conn, config } => {
                if let Some(&tunnel) = self.tunnel_of.get(&conn) {
                    self.queue
                        .push_back(Queued::Event(Event::LocalConfiguration {
                            conn,
                            tunnel,
                            config,
                        }));
                }
            }
            EdgeEvent::ConfigurationResult { conn, outcome } => self
                .queue
                .push_back(Queued::Event(Event::ConfigurationResult { conn, outcome })),
            // A failure that only says the connection closed is no refusal: the session moves
            // with the connection's close.
            EdgeEvent::UdpSessionRegistered { conn, id, result } => {
                if result.is_ok() || self.tp.quic.is_open(conn) {
                    self.sessions.handle_registered(conn, id, result);
                }
            }
            EdgeEvent::UdpSessionUnregistered { conn, id, message } => {
                self.sessions.handle_unregistered(conn, id, message)
            }
            EdgeEvent::Response {
                conn,
                stream,
                error,
                metadata,
            } => {
                let queue = &mut self.queue;
                self.streams
                    .on_response(conn, stream, error, metadata, &mut |id, event| {
                        queue.push_back(Queued::Io(Io::Stream { id, event }));
                    });
            }
            EdgeEvent::ResponseReadable { conn, stream } => self.streams.on_readable(conn, stream),
            EdgeEvent::StreamReset { conn, stream } => {
                let queue = &mut self.queue;
                self.streams.on_reset(conn, stream, &mut |id, event| {
                    queue.push_back(Queued::Io(Io::Stream { id, event }));
                });
            }
        }
    }

    fn tcp_received(&mut self, now: Instant, conn: ConnId, data: &[u8]) {
        let Some(t) = self.tcp.get_mut(&conn) else {
            return;
        };
        if data.is_empty() {
            t.eof = true;
            return;
        }
        // Straight in when nothing waits; what the machine cannot take yet is kept.
        let n = if t.pending.is_empty() {
            self.tp
                .http2
                .handle_received(now, conn, data)
                .min(data.len())
        } else {
            0
        };
        t.pending.extend_from_slice(&data[n..]);
    }

    /// HTTP/2 sockets: bytes read into their machines, ciphertext out, finished ones closed.
    fn poll_tcp(&mut self, now: Instant) -> Option<TcpIo> {
        let mut moved = false;
        for (&id, t) in self.tcp.iter_mut() {
            while !t.pending.is_empty() {
                let n = self.tp.http2.handle_received(now, id, &t.pending);
                if n == 0 {
                    // The machine must transmit first.
                    break;
                }
                moved = true;
                let _ = t.pending.split_to(n.min(t.pending.len()));
            }
            if t.eof && t.pending.is_empty() {
                t.eof = false;
                self.tp.http2.handle_peer_closed(now, id);
                moved = true;
            }
            if t.writing < WRITE_AHEAD && self.tp.http2.wants_transmit(id) {
                let n = self.tp.http2.transmit(now, id, &mut self.tcp_buf);
                if n > 0 {
                    t.writing += n;
                    return Some(TcpIo::Write(id, n));
                }
            }
        }
        if let Some(id) = self.tp.http2.poll_finished() {
            self.tcp.remove(&id);
            self.queue.push_back(Queued::Io(Io::CloseTcp { conn: id }));
            return Some(TcpIo::Again);
        }
        moved.then_some(TcpIo::Again)
    }
}

/// What one pass over the TCP connections produced.
enum TcpIo {
    /// `tcp_buf[..n]` is to be written to this connection.
    Write(ConnId, usize),
    /// Something changed: poll again.
    Again,
}

#[cfg(test)]
mod tests;
