//! One tunnel connection from the connector's side (cloudflared's role).
//!
//! Lifecycle: QUIC handshake → open the control stream (the first client bidirectional stream,
//! which the edge takes for the control plane) → register → serve → on shutdown unregister,
//! end the control conversation, drain, close with application code 0 and an empty reason, as
//! cloudflared does. The drain lasts until the edge closes the connection or the grace period
//! ends, serving every stream that arrives meanwhile: streams the edge opened before it saw the
//! unregistration may still be on their way (lost and retransmitted), so no stream count on
//! this side can tell that none is left.
//!
//! Edge-opened streams start with a preamble. RPC streams are served (remote configuration;
//! datagram-v2 session registration and unregistration on a v2 connection, refused as
//! cloudflared refuses them on a v3 one). Data streams are proxied to origin flows the driver
//! opens on request ([`OriginAction`]); see [`super::data`]. When a v2 session ends on this
//! side, [`ConnectorConnection::unregister_udp_session`] tells the edge on an RPC stream of
//! our own, as cloudflared does; its failure is only logged.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn_proto::{
    ClientConfig, ConnectError, Connection, ConnectionHandle, Dir, Endpoint, EndpointConfig, Event,
    StreamEvent, StreamId, VarInt,
};
use thiserror::Error;
use tracing::debug;

use super::data::{reset, DataLimits, DataStreams, FlowId, OriginAction};
use super::quic_io::{
    exchange_events, flush_rpc_server, flush_stream, handle_received, read_stream, send_datagram,
    AckWatch, DatagramError, Finishing,
};
use super::rx::RxBuffers;
use super::{Received, Transmit};
use crate::control::connector::{ControlClient, ControlEvent};
use crate::control::{ApiError, CallFailure, ConnectionDetails, Registration, RegistrationFailure};
use crate::quic::send_window;
use crate::receive_window::GrowingWindow;
use crate::rpc_stream::client::{RpcCallOutcome, RpcStreamClient};
use crate::rpc_stream::server::{RpcStreamEvent, RpcStreamServer};
use crate::rpc_stream::ConfigUpdateResult;
use crate::session::{DatagramVersion, SessionId, SessionMethod};
use crate::stream::preamble::{self, StreamKind};

/// What a connector connection needs to know.
#[derive(Clone)]
pub struct ConnectorConfig {
    /// What to register with.
    pub registration: Registration,
    /// Local configuration JSON pushed on connection 0 of a locally managed tunnel.
    pub local_config: Option<Vec<u8>>,
    /// QUIC client configuration (TLS + transport), see [`crate::quic`].
    pub client: ClientConfig,
    /// SNI: [`crate::quic::SERVER_NAME`] against Cloudflare.
    pub server_name: String,
    /// Deadline of each control-stream call (`--rpc-timeout`, 5 s).
    pub rpc_timeout: Duration,
    /// How long unregistering and draining may take (`--grace-period`, 30 s).
    pub grace_period: Duration,
    /// Data-stream buffering, flow limit and origin keep-alive pool.
    pub data: DataLimits,
    /// Most streams the edge may have open at once: the grant grows to it from the transport
    /// configuration's initial one ([`crate::quic::transport::QuicSettings::max_concurrent_bidi_streams`]).
    pub max_streams: u32,
    /// The receive window as the transport configuration starts it, and how far it may grow.
    pub receive_window: GrowingWindow,
}

impl ConnectorConfig {
    /// A connection registering `registration` over `client` to [`crate::quic::SERVER_NAME`],
    /// with cloudflared's defaults: 5 s RPC timeout, 30 s grace period, no local configuration,
    /// default data limits.
    pub fn new(registration: Registration, client: ClientConfig) -> Self {
        Self {
            registration,
            local_config: None,
            client,
            server_name: crate::quic::SERVER_NAME.into(),
            rpc_timeout: Duration::from_secs(5),
            grace_period: Duration::from_secs(30),
            data: DataLimits::default(),
            max_streams: crate::quic::transport::QuicSettings::default()
                .max_concurrent_bidi_streams,
            receive_window: GrowingWindow::new(&crate::quic::transport::QuicSettings::default()),
        }
    }
}

/// What happened on the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectorEvent {
    /// The edge accepted the registration; the connection serves traffic.
    Registered(ConnectionDetails),
    /// The edge refused the registration (or it failed); the connection is being closed.
    RegistrationFailed(RegistrationFailure),
    /// Pushing the local configuration failed (the connection stays up, as in cloudflared).
    LocalConfigurationFailed(CallFailure),
    /// Graceful shutdown: the edge acknowledged `unregisterConnection` (or it timed out).
    Unregistered,
    /// A registration-server call ended (cloudflared's RPC client metrics).
    Called(crate::control::connector::RpcCall),
    /// The edge offers remote configuration; apply the version rule with
    /// [`crate::rpc_stream::ConfigVersions`] and answer with
    /// [`ConnectorConnection::respond_configuration`].
    ConfigurationOffered {
        /// The RPC stream to answer on.
        stream: StreamId,
        /// Offered version.
        version: i32,
        /// Configuration JSON.
        config: Vec<u8>,
    },
    /// The edge asks for a datagram-v2 UDP session; register it with the session manager and
    /// answer with [`ConnectorConnection::respond_udp_session`].
    UdpSessionRequested {
        /// The RPC stream to answer on.
        stream: StreamId,
        /// The session.
        id: SessionId,
        /// The origin it is for.
        dest: SocketAddr,
        /// `closeAfterIdleHint` in nanoseconds (0 or below: the default).
        idle_hint_nanos: i64,
    },
    /// The edge called a datagram-v2 session method on this v3 connection; it was refused
    /// (already answered), as cloudflared refuses it.
    SessionMethodRefused(SessionMethod),
    /// The edge ended a datagram-v2 UDP session (already acknowledged); close it without
    /// telling the edge back.
    UdpSessionUnregistered {
        /// The session.
        id: SessionId,
        /// The edge's reason.
        message: String,
    },
    /// `unregisterConnection` failed; the connection drains anyway ([`Self::Unregistered`]
    /// follows).
    UnregisterFailed(CallFailure),
    /// The drain's grace period ran out with streams in flight: the connection closes now.
    DrainCutShort {
        /// Streams still in flight.
        streams: usize,
    },
    /// The edge did not acknowledge the end of a datagram-v2 session.
    UdpUnregisterFailed {
        /// The session.
        id: SessionId,
        /// What came back.
        failure: UdpUnregisterFailure,
    },
    /// The edge called a method with parameters refused (already answered).
    RpcRefused(crate::rpc_stream::server::CallRefusal),
    /// The connection is gone; nothing more will happen.
    Closed {
        /// Why.
        reason: CloseReason,
    },
}

/// Why the edge did not acknowledge `unregisterUdpSession` (cloudflared: "Failed to unregister
/// udp session with edge").
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UdpUnregisterFailure {
    /// The edge answered with a failure.
    #[error("{0}")]
    Failed(String),
    /// The edge answered something else.
    #[error("unexpected answer {0}")]
    UnexpectedAnswer(String),
    /// No answer before the RPC timeout.
    #[error("no answer before the RPC timeout")]
    TimedOut,
}

/// Why a tunnel connection ended: by our decision ([`CloseReason::Local`]) or the edge's and
/// the path's ([`CloseReason::Remote`], [`CloseReason::TimedOut`], [`CloseReason::Transport`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CloseReason {
    /// We closed it.
    #[error("closed by the connector: {0}")]
    Local(LocalClose),
    /// The edge closed it (CONNECTION_CLOSE or a stateless reset), with its words.
    #[error("closed by the edge: {0}")]
    Remote(String),
    /// Nothing was heard from the edge for the idle timeout: the path to it died.
    #[error("timed out")]
    TimedOut,
    /// QUIC failed (handshake, TLS, protocol violation, version mismatch).
    #[error("transport failed: {0}")]
    Transport(String),
}

impl CloseReason {
    /// Whether we decided it.
    pub fn is_local(&self) -> bool {
        matches!(self, Self::Local(_))
    }
}

/// Why we closed a connection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LocalClose {
    /// Shut down: drained (the edge closed the connection after we unregistered, or the grace
    /// period ended), or at once.
    #[error("shutdown")]
    Shutdown,
    /// The registration failed: the edge refused it, or the call failed or timed out.
    #[error("registration failed: {0}")]
    Registration(RegistrationFailure),
    /// The control stream failed (the edge closed, reset or starved it, or it broke RPC).
    #[error("control stream: {0}")]
    Control(String),
}

impl From<quinn_proto::ConnectionError> for CloseReason {
    fn from(e: quinn_proto::ConnectionError) -> Self {
        use quinn_proto::ConnectionError as E;
        match e {
            E::TimedOut => Self::TimedOut,
            E::ApplicationClosed(_) | E::ConnectionClosed(_) | E::Reset => {
                Self::Remote(e.to_string())
            }
            E::LocallyClosed => Self::Local(LocalClose::Shutdown),
            E::VersionMismatch | E::TransportError(_) | E::CidsExhausted => {
                Self::Transport(e.to_string())
            }
        }
    }
}

/// The caller misused the connection API.
#[derive(Debug, Error)]
pub enum ConnectorError {
    /// quinn refused to start the connection (bad address, config...).
    #[error("cannot connect to the edge: {0}")]
    Connect(#[from] ConnectError),
    /// Control-stream misuse.
    #[error(transparent)]
    Control(#[from] ApiError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// QUIC handshake in progress.
    Handshaking,
    /// Control stream open, waiting for the registration answer.
    Registering,
    /// Registered and serving.
    Serving,
    /// `unregisterConnection` sent.
    Unregistering,
    /// Unregistered; streams are served until the edge closes the connection or the deadline.
    Draining(Instant),
    /// CONNECTION_CLOSE sent or received; waiting for quinn to drain.
    Closing,
    /// Done.
    Closed,
}

/// An edge-opened stream.
enum Incoming {
    /// Waiting for the whole preamble.
    Preamble(Vec<u8>),
    /// An RPC stream: one call to our `CloudflaredServer`; finished once it is settled and
    /// `unsent` is written.
    Rpc {
        server: RpcStreamServer,
        unsent: Vec<u8>,
    },
}

/// An RPC stream we opened: `unregisterUdpSession` on the edge's `SessionManager`.
struct Call {
    client: RpcStreamClient,
    id: SessionId,
    unsent: Vec<u8>,
    /// Given up on (stream reset) if unanswered by then (`--rpc-timeout`).
    deadline: Instant,
}

struct Control {
    stream: StreamId,
    client: ControlClient,
    /// Bytes the control stream could not take yet (flow control).
    unsent: Vec<u8>,
    received: Vec<u8>,
}

/// One tunnel connection, connector side.
pub struct ConnectorConnection {
    endpoint: Endpoint,
    handle: ConnectionHandle,
    conn: Connection,
    config: ConnectorConfig,
    state: State,
    control: Option<Control>,
    /// Edge-opened streams, from the preamble on.
    incoming: HashMap<StreamId, Incoming>,
    /// RPC streams we opened.
    calls: HashMap<StreamId, Call>,
    data: DataStreams,
    shutdown_requested: bool,
    events: VecDeque<ConnectorEvent>,
    /// Where quinn writes stateless responses (a client sends none; reused, not reallocated).
    scratch: Vec<u8>,
    /// Where received UDP datagrams are copied for quinn (`rx`).
    rx: RxBuffers,
    /// Why we are closing, once we are.
    close_reason: Option<LocalClose>,
    /// Room in quinn's datagram send queue when it is empty (for [`Self::datagram_bytes_queued`]).
    datagram_room: usize,
    /// Bytes of it taken, as of the last send or transmit.
    datagram_queued: usize,
    /// `unregisterUdpSession` calls of ours that failed or went unanswered.
    failed_unregistrations: u64,
    /// ACKs quinn owes and holds behind a full congestion window.
    acks: AckWatch,
    /// Ended conversations (control, RPC calls) whose last bytes wait for send window.
    finishing: Finishing,
    /// The receive window, grown while the edge finds it too narrow.
    window: GrowingWindow,
    /// DATA_BLOCKED frames received, as of the last look.
    data_blocked: u64,
}

impl ConnectorConnection {
    /// Starts the QUIC handshake to `edge`. `rng_seed` seeds quinn's endpoint (reproducible
    /// simulations pass one; daemons pass fresh randomness).
    pub fn connect(
        now: Instant,
        config: ConnectorConfig,
        edge: SocketAddr,
        rng_seed: [u8; 32],
    ) -> Result<Self, ConnectorError> {
        let mut endpoint = Endpoint::new(
            Arc::new(EndpointConfig::default()),
            None,
            true,
            Some(rng_seed),
        );
        let (handle, mut conn) =
            endpoint.connect(now, config.client.clone(), edge, &config.server_name)?;
        let data = DataStreams::new(
            config.data.clone(),
            config.registration.client_id,
            config.registration.conn_index,
        );
        let window = config.receive_window;
        let datagram_room = conn.datagrams().send_buffer_space();
        let acks = AckWatch::new(&conn);
        Ok(Self {
            endpoint,
            handle,
            conn,
            config,
            state: State::Handshaking,
            control: None,
            incoming: HashMap::new(),
            calls: HashMap::new(),
            data,
            shutdown_requested: false,
            events: VecDeque::new(),
            scratch: Vec::new(),
            rx: RxBuffers::default(),
            close_reason: None,
            datagram_room,
            datagram_queued: 0,
            failed_unregistrations: 0,
            acks,
            finishing: Finishing::default(),
            window,
            data_blocked: 0,
        })
    }

    /// Feeds a UDP datagram received from the edge.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        self.handle_received(now, &Received::single(from, data));
    }

    /// Feeds UDP datagrams received from the edge in one buffer (GRO: `stride` bytes each).
    pub fn handle_received(&mut self, now: Instant, received: &Received<'_>) {
        let (handle, conn) = (self.handle, &mut self.conn);
        handle_received(
            &mut self.endpoint,
            now,
            received,
            &mut self.rx,
            &mut self.scratch,
            |_, event, _| match event {
                quinn_proto::DatagramEvent::ConnectionEvent(h, ev) if h == handle => {
                    conn.handle_event(ev);
                }
                // A client endpoint accepts no connections and answers nothing else of note.
                _ => {}
            },
        );
        self.progress(now);
    }

    /// Lets timers fire.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.conn.poll_timeout().is_some_and(|t| t <= now) {
            self.conn.handle_timeout(now);
        }
        if let Some(c) = &mut self.control {
            c.client.handle_timeout(now);
        }
        self.widen_receive_window();
        self.rx.let_go();
        self.data.expire_idle(now);
        self.data.expire_dials(now, &mut self.conn);
        self.data.make_room(now, &mut self.conn);
        self.data.expire_writes(now, &mut self.conn);
        self.expire_calls(now);
        if matches!(self.state, State::Draining(deadline) if deadline <= now) {
            let (conn_index, streams) = (self.config.registration.conn_index, self.data.active());
            if streams > 0 {
                self.events
                    .push_back(ConnectorEvent::DrainCutShort { streams });
            } else {
                debug!(conn_index, "grace period over; closing");
            }
            self.close(now);
        }
        self.progress(now);
    }

    /// What the driver must do with origin connections next.
    pub fn poll_origin_action(&mut self) -> Option<OriginAction> {
        self.data.poll_action()
    }

    /// The origin of `flow` is connected and its TLS handshake begins (its own deadline).
    pub fn handle_flow_handshaking(&mut self, now: Instant, flow: FlowId) {
        self.data.on_flow_handshaking(now, flow);
    }

    /// The in-process origin of `flow` began a destination dial (its own deadline).
    pub fn handle_flow_dialing(&mut self, now: Instant, flow: FlowId) {
        self.data.on_flow_dialing(now, flow);
    }

    /// That destination dial ended.
    pub fn handle_flow_dialed(&mut self, flow: FlowId) {
        self.data.on_flow_dialed(flow);
    }

    /// The origin of `flow` chose HTTP/2: its requests go through core's bridge.
    pub fn handle_flow_http2(&mut self, flow: FlowId) {
        self.data.on_flow_http2(flow);
    }

    /// The origin connection of `flow` is up.
    pub fn handle_flow_connected(&mut self, now: Instant, flow: FlowId) {
        self.data.on_flow_connected(now, &mut self.conn, flow);
        self.progress(now);
    }

    /// The origin connection of `flow` could not be made, or broke.
    pub fn handle_flow_failed(&mut self, now: Instant, flow: FlowId, reason: &str) {
        self.data.on_flow_failed(now, &mut self.conn, flow, reason);
        self.progress(now);
    }

    /// Bytes read from the origin of `flow`. Returns how many were taken; when short, keep the
    /// rest and stop reading this flow until [`OriginAction::Resume`].
    pub fn handle_flow_data(&mut self, now: Instant, flow: FlowId, bytes: &Bytes) -> usize {
        let n = self.data.on_flow_data(now, &mut self.conn, flow, bytes);
        self.progress(now);
        n
    }

    /// The origin of `flow` closed its side.
    pub fn handle_flow_finished(&mut self, now: Instant, flow: FlowId) {
        self.data.on_flow_finished(now, &mut self.conn, flow);
        self.progress(now);
    }

    /// The driver finished the last [`OriginAction::Write`] on `flow`.
    pub fn handle_flow_written(&mut self, now: Instant, flow: FlowId) {
        self.data.on_flow_written(now, &mut self.conn, flow);
        self.progress(now);
    }

    /// This connection's data streams: their limits, flow slots and what they came to.
    pub(crate) fn data(&self) -> &DataStreams {
        &self.data
    }

    /// The same, to change.
    pub(crate) fn data_mut(&mut self) -> &mut DataStreams {
        &mut self.data
    }

    /// Data streams in progress.
    pub fn active_streams(&self) -> usize {
        self.data.active()
    }

    /// Bytes buffered in data streams beyond QUIC's own buffers (bounded by the window).
    pub fn buffered_bytes(&self) -> usize {
        self.data.buffered()
    }

    /// Starts graceful shutdown: unregister, drain, close. Safe to call in any state.
    pub fn shutdown(&mut self, now: Instant) -> Result<(), ConnectorError> {
        self.shutdown_requested = true;
        match self.state {
            State::Serving => {
                if let Some(c) = &mut self.control {
                    c.client.unregister(now, self.config.grace_period)?;
                }
                self.state = State::Unregistering;
            }
            State::Handshaking | State::Registering => self.close(now),
            _ => {}
        }
        self.progress(now);
        Ok(())
    }

    /// Closes at once (CONNECTION_CLOSE with code 0): the second shutdown signal, or the
    /// supervisor's grace period running out.
    pub fn close_now(&mut self, now: Instant) {
        self.shutdown_requested = true;
        self.close(now);
        self.progress(now);
    }

    /// The next datagrams to send, at most `max_datagrams` of them as one GSO batch, written
    /// into `buf`.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        max_datagrams: usize,
        buf: &mut Vec<u8>,
    ) -> Option<Transmit> {
        let t = self
            .acks
            .poll_transmit(&mut self.conn, now, max_datagrams, buf);
        self.note_datagram_queue();
        t
    }

    /// Remembers how much of quinn's datagram queue is taken (it changes only as datagrams
    /// are queued or packets built), so that it can be read through a shared reference.
    fn note_datagram_queue(&mut self) {
        let space = self.conn.datagrams().send_buffer_space();
        self.datagram_queued = self.datagram_room.saturating_sub(space);
    }

    /// When [`ConnectorConnection::handle_timeout`] must be called next.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let control = self.control.as_ref().and_then(|c| c.client.poll_timeout());
        let drain = match self.state {
            State::Draining(deadline) => Some(deadline),
            _ => None,
        };
        let call = self.calls.values().map(|c| c.deadline).min();
        [
            self.conn.poll_timeout(),
            self.acks.deadline(&self.conn),
            control,
            self.data.poll_timeout(),
            drain,
            call,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ConnectorEvent> {
        self.events.pop_front()
    }

    /// The datagram format of this connection, from the features it registers with.
    pub fn datagram_version(&self) -> DatagramVersion {
        DatagramVersion::from_features(&self.config.registration.features)
    }

    /// The next QUIC datagram received from the edge.
    pub fn poll_datagram(&mut self) -> Option<Bytes> {
        self.conn.datagrams().recv()
    }

    /// Queues a QUIC datagram for the edge.
    pub fn send_datagram(&mut self, datagram: Bytes) -> Result<(), DatagramError> {
        if matches!(self.state, State::Closing | State::Closed) {
            return Err(DatagramError::Closed);
        }
        let sent = send_datagram(&mut self.conn, datagram);
        self.note_datagram_queue();
        sent
    }

    /// Bytes of datagrams queued in quinn, not yet sent (bounded by the datagram send buffer).
    pub fn datagram_bytes_queued(&self) -> usize {
        self.datagram_queued
    }

    /// Control-stream answers that came after their call's deadline (or after the
    /// conversation closed) and were ignored.
    pub fn late_control_answers(&self) -> u64 {
        self.control.as_ref().map_or(0, |c| c.client.late_answers())
    }

    /// `unregisterUdpSession` calls of ours that failed or went unanswered within the RPC
    /// timeout (cloudflared logs them; the session is gone on our side either way).
    pub fn failed_unregistrations(&self) -> u64 {
        self.failed_unregistrations
    }

    /// The path MTU quinn assumes now (the initial MTU until discovery raises it).
    pub fn path_mtu(&self) -> u16 {
        self.conn.current_mtu()
    }

    /// Streams the edge may have open at once now (grows with the load, see
    /// [`ConnectorConfig::max_streams`]).
    pub fn stream_grant(&self) -> u64 {
        self.conn.max_concurrent_streams(Dir::Bi)
    }

    /// quinn's counters for the connection (frames, packets, path).
    pub fn quic_stats(&self) -> quinn_proto::ConnectionStats {
        self.conn.stats()
    }

    /// The congestion state and latest RTT sample the controller recorded.
    pub fn congestion(&self) -> Option<crate::quic::congestion::CongestionFigures> {
        crate::quic::congestion::Watched::figures(self.conn.congestion_state())
    }

    /// The edge's `max_udp_payload_size` transport parameter, once its first flight is in.
    pub fn peer_max_udp_payload(&self) -> Option<u64> {
        let params = self.conn.crypto_session().transport_parameters().ok()??;
        let mut encoded = Vec::new();
        params.write(&mut encoded);
        Some(crate::quic::client_metrics::max_udp_payload(&encoded))
    }

    /// True once the connection is fully gone.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Everything that follows an input: quinn events, control-stream bytes, state changes.
    fn progress(&mut self, now: Instant) {
        exchange_events(&mut self.endpoint, self.handle, &mut self.conn);
        send_window::refit(&mut self.conn);
        self.finishing.flush(&mut self.conn);
        while let Some(event) = self.conn.poll() {
            self.on_quic_event(now, event);
        }
        self.pump_control(now);
        exchange_events(&mut self.endpoint, self.handle, &mut self.conn);
        // A close we started ends without a ConnectionLost event, once quinn has drained.
        if self.state == State::Closing && self.conn.is_drained() {
            let reason = self.close_reason.take().unwrap_or(LocalClose::Shutdown);
            self.finish(now, CloseReason::Local(reason));
        }
    }

    fn on_quic_event(&mut self, now: Instant, event: Event) {
        match event {
            Event::Connected => self.open_control(now),
            Event::ConnectionLost { reason } => {
                let reason = match reason {
                    // The edge closing after we unregistered ends the drain: the shutdown's
                    // orderly end (as a closed HTTP/2 connection is during one).
                    quinn_proto::ConnectionError::ApplicationClosed(close)
                        if matches!(self.state, State::Draining(_))
                            && close.error_code == VarInt::from_u32(0) =>
                    {
                        debug!(
                            conn_index = self.config.registration.conn_index,
                            streams = self.data.active(),
                            "the edge closed the unregistered connection"
                        );
                        CloseReason::Local(LocalClose::Shutdown)
                    }
                    reason => reason.into(),
                };
                self.finish(now, reason);
            }
            Event::Stream(StreamEvent::Readable { id }) if self.data.owns(id) => {
                self.data.on_readable(now, &mut self.conn, id);
            }
            Event::Stream(StreamEvent::Writable { id }) if self.data.owns(id) => {
                self.data.drive(now, &mut self.conn, id);
            }
            Event::Stream(StreamEvent::Finished { id }) => self.data.on_acknowledged(id),
            Event::Stream(StreamEvent::Stopped { id, .. }) if self.data.owns(id) => {
                self.data.on_stopped(now, &mut self.conn, id);
            }
            Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) => {
                while let Some(id) = self.conn.streams().accept(Dir::Bi) {
                    self.incoming.insert(id, Incoming::Preamble(Vec::new()));
                    // Data that came with the opening frame gets no Readable event of its own.
                    self.read_incoming(now, id);
                }
                self.widen_stream_grant();
            }
            Event::Stream(StreamEvent::Readable { id })
                if self.control.as_ref().is_some_and(|c| c.stream == id) =>
            {
                self.read_control(now);
            }
            Event::Stream(StreamEvent::Readable { id }) if self.calls.contains_key(&id) => {
                self.read_call(id);
            }
            Event::Stream(StreamEvent::Writable { id }) if self.calls.contains_key(&id) => {
                self.flush_call(id);
            }
            Event::Stream(StreamEvent::Readable { id }) => self.read_incoming(now, id),
            Event::Stream(StreamEvent::Writable { id }) => self.flush_incoming(id),
            // Received datagrams wait in quinn for `poll_datagram`; uni streams are refused by
            // the transport settings.
            _ => {}
        }
    }

    /// Grows the receive window by a stream window, up to its bound, when the edge said it
    /// was blocked by it (DATA_BLOCKED) since the last look: request bodies an origin does not
    /// read each hold a stream window of it, and the window makes room for them beside the
    /// other requests ([`crate::receive_window`]). The edge, which knows the HTTP requests,
    /// may also just be faster than the origins; the bound keeps that growth small.
    fn widen_receive_window(&mut self) {
        let blocked = self.conn.stats().frame_rx.data_blocked;
        if blocked > self.data_blocked {
            self.data_blocked = blocked;
            let held = self.window.held() + 1;
            self.window.hold(&mut self.conn, held);
        }
    }

    /// Doubles the edge's stream grant, up to [`ConnectorConfig::max_streams`], once half of it
    /// is open: quinn keeps bookkeeping for every stream granted, so the grant follows the
    /// load instead of costing its maximum from the start. The edge sees the new credit in the
    /// next packet, well before it runs out.
    fn widen_stream_grant(&mut self) {
        let granted = self.conn.max_concurrent_streams(Dir::Bi);
        let open = self.conn.streams().remote_open_streams(Dir::Bi);
        let max = u64::from(self.config.max_streams);
        if granted < max && open.saturating_mul(2) >= granted {
            if let Ok(wider) = VarInt::from_u64(granted.saturating_mul(2).clamp(1, max)) {
                self.conn.set_max_concurrent_streams(Dir::Bi, wider);
            }
        }
    }

    fn open_control(&mut self, now: Instant) {
        if self.shutdown_requested {
            self.close(now);
            return;
        }
        let Some(stream) = self.conn.streams().open(Dir::Bi) else {
            // A fresh connection always has stream credit; if not, the edge is broken.
            self.close_with(
                LocalClose::Control("edge granted no stream for the control plane".into()),
                now,
            );
            return;
        };
        let client = match ControlClient::new(
            now,
            &self.config.registration,
            self.config.local_config.clone(),
            self.config.rpc_timeout,
        ) {
            Ok(client) => client,
            Err(e) => {
                self.close_with(
                    LocalClose::Control(format!("cannot start registration: {e}")),
                    now,
                );
                return;
            }
        };
        debug!(
            conn_index = self.config.registration.conn_index,
            "control stream opened"
        );
        self.control = Some(Control {
            stream,
            client,
            unsent: Vec::new(),
            received: Vec::new(),
        });
        self.state = State::Registering;
    }

    /// Reads an edge-opened stream: first its preamble, then what its kind calls for.
    fn read_incoming(&mut self, now: Instant, id: StreamId) {
        let version = self.datagram_version();
        let Some(state) = self.incoming.get_mut(&id) else {
            return;
        };
        let mut received = Vec::new();
        let finished = match read_stream(&mut self.conn, id, &mut received) {
            Ok(finished) => finished,
            Err(e) => {
                debug!(stream = %id, error = %e, "edge reset a stream");
                self.incoming.remove(&id);
                return;
            }
        };
        if let Incoming::Preamble(buf) = state {
            buf.extend_from_slice(&received);
            received.clear();
            match preamble::parse(buf) {
                Ok(None) if !finished => return,
                Ok(Some(kind @ StreamKind::Rpc)) => {
                    received = buf.split_off(kind.preamble_len());
                    *state = Incoming::Rpc {
                        server: RpcStreamServer::connector(version),
                        unsent: Vec::new(),
                    };
                }
                Ok(Some(kind @ StreamKind::Data { .. })) => {
                    let rest = buf.split_off(kind.preamble_len());
                    self.incoming.remove(&id);
                    self.data.accept(now, &mut self.conn, id, &rest);
                    return;
                }
                Ok(None) | Err(_) => {
                    // cloudflared resets a stream with an unknown signature (code 0).
                    debug!(stream = %id, "stream with no valid preamble");
                    self.refuse(id);
                    return;
                }
            }
        }
        if let Some(Incoming::Rpc { server, .. }) = self.incoming.get_mut(&id) {
            if let Err(e) = server.handle_bytes(&received) {
                // The edge broke one RPC stream: it is refused, the connection serves on.
                debug!(stream = %id, error = %e, "RPC stream broken");
                self.refuse(id);
                return;
            }
            while let Some(event) = server.poll_event() {
                match event {
                    RpcStreamEvent::ConfigurationOffered { version, config } => {
                        self.events.push_back(ConnectorEvent::ConfigurationOffered {
                            stream: id,
                            version,
                            config,
                        });
                    }
                    RpcStreamEvent::SessionMethodRefused(method) => {
                        debug!(stream = %id, method = method.label(), "refused a datagram-v2 session call");
                        self.events
                            .push_back(ConnectorEvent::SessionMethodRefused(method));
                    }
                    RpcStreamEvent::RegisterUdpSession {
                        id: session,
                        dest,
                        idle_hint_nanos,
                        trace_context: _,
                    } => {
                        self.events.push_back(ConnectorEvent::UdpSessionRequested {
                            stream: id,
                            id: session,
                            dest,
                            idle_hint_nanos,
                        });
                    }
                    RpcStreamEvent::CallRefused(refusal) => {
                        self.events.push_back(ConnectorEvent::RpcRefused(refusal));
                    }
                    RpcStreamEvent::UnregisterUdpSession {
                        id: session,
                        message,
                    } => {
                        debug!(stream = %id, session_id = %session, %message, "edge unregistered a UDP session");
                        self.events
                            .push_back(ConnectorEvent::UdpSessionUnregistered {
                                id: session,
                                message,
                            });
                    }
                }
            }
            self.flush_incoming(id);
        }
    }

    /// Answers a configuration offer received on RPC stream `stream`.
    pub fn respond_configuration(
        &mut self,
        now: Instant,
        stream: StreamId,
        result: &ConfigUpdateResult,
    ) -> Result<(), ConnectorError> {
        let Some(Incoming::Rpc { server, .. }) = self.incoming.get_mut(&stream) else {
            return Err(ApiError::Closed.into());
        };
        server.respond_configuration(result)?;
        self.flush_incoming(stream);
        self.progress(now);
        Ok(())
    }

    /// Answers a [`ConnectorEvent::UdpSessionRequested`] received on RPC stream `stream`:
    /// `Err(text)` goes into the response's `err` (what
    /// [`crate::session::SessionAction::V2Registered`] carries).
    pub fn respond_udp_session(
        &mut self,
        now: Instant,
        stream: StreamId,
        result: Result<(), String>,
    ) -> Result<(), ConnectorError> {
        let Some(Incoming::Rpc { server, .. }) = self.incoming.get_mut(&stream) else {
            return Err(ApiError::Closed.into());
        };
        server.respond_register_udp_session(result)?;
        self.flush_incoming(stream);
        self.progress(now);
        Ok(())
    }

    /// Tells the edge that datagram-v2 session `id` ended here (what
    /// [`crate::session::SessionAction::V2Unregister`] asks): `unregisterUdpSession(id,
    /// message)` on a new RPC stream. As in cloudflared, a failure (no stream credit, an
    /// exception, no answer within the RPC timeout) is only logged.
    pub fn unregister_udp_session(&mut self, now: Instant, id: SessionId, message: &str) {
        let conn_index = self.config.registration.conn_index;
        if !matches!(
            self.state,
            State::Serving | State::Unregistering | State::Draining(_)
        ) {
            debug!(conn_index, session_id = %id, "connection not serving; not unregistering the UDP session with the edge");
            return;
        }
        let mut client = match RpcStreamClient::unregister_udp_session(id, message) {
            Ok(client) => client,
            Err(e) => {
                // Only a message too large to encode gets here.
                debug!(conn_index, session_id = %id, error = %e, "Failed to unregister udp session with edge");
                return;
            }
        };
        let Some(stream) = self.conn.streams().open(Dir::Bi) else {
            debug!(conn_index, session_id = %id, "Failed to open quic stream to unregister udp session with edge");
            return;
        };
        debug!(conn_index, session_id = %id, %stream, %message, "unregistering UDP session with the edge");
        let unsent = client.poll_transmit().unwrap_or_default();
        self.calls.insert(
            stream,
            Call {
                client,
                id,
                unsent,
                deadline: now + self.config.rpc_timeout,
            },
        );
        self.flush_call(stream);
        self.progress(now);
    }

    /// RPC streams of ours still waiting for their answer.
    pub fn pending_calls(&self) -> usize {
        self.calls.len()
    }

    fn flush_call(&mut self, stream: StreamId) {
        let Some(call) = self.calls.get_mut(&stream) else {
            return;
        };
        if let Some(bytes) = call.client.poll_transmit() {
            call.unsent.extend_from_slice(&bytes);
        }
        if let Err(e) = flush_stream(&mut self.conn, stream, &mut call.unsent) {
            let id = call.id;
            self.end_call(
                stream,
                Some(RpcCallOutcome::Failed(format!("write: {e}"))),
                id,
            );
        }
    }

    /// Reads the edge's answer on one of our RPC streams.
    fn read_call(&mut self, stream: StreamId) {
        let Some(call) = self.calls.get_mut(&stream) else {
            return;
        };
        let mut received = Vec::new();
        let outcome = match read_stream(&mut self.conn, stream, &mut received) {
            Ok(finished) => match call.client.handle_bytes(&received) {
                Ok(()) => call.client.poll_outcome().or_else(|| {
                    finished.then(|| RpcCallOutcome::Failed("stream ended unanswered".into()))
                }),
                Err(e) => Some(RpcCallOutcome::Failed(e.to_string())),
            },
            Err(e) => Some(RpcCallOutcome::Failed(format!("stream reset: {e}"))),
        };
        let id = call.id;
        if outcome.is_some() {
            self.end_call(stream, outcome, id);
        }
    }

    /// Ends one of our RPC streams: on an answer, our last bytes (Finish) and FIN; otherwise a
    /// reset. Either way the edge's side is stopped (cloudflared closes the stream).
    fn end_call(&mut self, stream: StreamId, outcome: Option<RpcCallOutcome>, id: SessionId) {
        let Some(mut call) = self.calls.remove(&stream) else {
            return;
        };
        let conn_index = self.config.registration.conn_index;
        let failure = match outcome {
            Some(RpcCallOutcome::UdpSessionUnregistered) => {
                debug!(conn_index, session_id = %id, "edge acknowledged the UDP session's end");
                if let Some(bytes) = call.client.poll_transmit() {
                    call.unsent.extend_from_slice(&bytes);
                }
                let unsent = std::mem::take(&mut call.unsent);
                self.finishing.finish(&mut self.conn, stream, unsent);
                let _ = self.conn.recv_stream(stream).stop(VarInt::from_u32(0));
                return;
            }
            Some(RpcCallOutcome::Failed(reason)) => UdpUnregisterFailure::Failed(reason),
            Some(other) => UdpUnregisterFailure::UnexpectedAnswer(format!("{other:?}")),
            None => UdpUnregisterFailure::TimedOut,
        };
        self.events
            .push_back(ConnectorEvent::UdpUnregisterFailed { id, failure });
        self.failed_unregistrations += 1;
        reset(&mut self.conn, stream);
    }

    fn expire_calls(&mut self, now: Instant) {
        let expired: Vec<(StreamId, SessionId)> = self
            .calls
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(&s, c)| (s, c.id))
            .collect();
        for (stream, id) in expired {
            self.end_call(stream, None, id);
        }
    }

    /// Writes what an RPC stream has to say; finishes it once answered.
    fn flush_incoming(&mut self, id: StreamId) {
        let Some(Incoming::Rpc { server, unsent }) = self.incoming.get_mut(&id) else {
            return;
        };
        if flush_rpc_server(&mut self.conn, id, server, unsent) {
            self.incoming.remove(&id);
        }
    }

    /// Refuses a stream the way cloudflared fails one: STOP_SENDING and RESET_STREAM, code 0.
    fn refuse(&mut self, id: StreamId) {
        reset(&mut self.conn, id);
        self.incoming.remove(&id);
    }

    fn read_control(&mut self, now: Instant) {
        let Some(c) = &mut self.control else { return };
        let finished = match read_stream(&mut self.conn, c.stream, &mut c.received) {
            Ok(finished) => finished,
            Err(e) => {
                self.close_with(LocalClose::Control(format!("reset by the edge: {e}")), now);
                return;
            }
        };
        let bytes = std::mem::take(&mut c.received);
        if let Err(e) = c.client.handle_bytes(now, &bytes) {
            self.close_with(LocalClose::Control(e.to_string()), now);
            return;
        }
        if finished && matches!(self.state, State::Registering | State::Serving) {
            // cloudflared does not notice this (PROTOCOL.md A§6 #6); a dead control plane means
            // the edge no longer routes to us, so reconnect.
            self.close_with(LocalClose::Control("closed by the edge".into()), now);
        }
    }

    /// Moves control-stream bytes out and acts on its events.
    fn pump_control(&mut self, now: Instant) {
        let Some(c) = &mut self.control else { return };
        if let Some(bytes) = c.client.poll_transmit() {
            c.unsent.extend_from_slice(&bytes);
        }
        let stream = c.stream;
        if let Err(e) = flush_stream(&mut self.conn, stream, &mut c.unsent) {
            self.close_with(LocalClose::Control(format!("write failed: {e}")), now);
            return;
        }
        while let Some(event) = self.control.as_mut().and_then(|c| c.client.poll_event()) {
            self.on_control_event(now, event);
        }
        // Events may have queued more (e.g. the Abort on close).
        if let Some(c) = &mut self.control {
            if let Some(bytes) = c.client.poll_transmit() {
                c.unsent.extend_from_slice(&bytes);
                let _ = flush_stream(&mut self.conn, stream, &mut c.unsent);
            }
        }
    }

    fn on_control_event(&mut self, now: Instant, event: ControlEvent) {
        let conn_index = self.config.registration.conn_index;
        match event {
            ControlEvent::Registered(details) => {
                // Logged once, by the driver, from the supervisor's event (as the ones below).
                self.state = State::Serving;
                self.events.push_back(ConnectorEvent::Registered(details));
                if self.shutdown_requested {
                    let _ = self.shutdown(now);
                }
            }
            ControlEvent::RegistrationFailed(e) => {
                self.events
                    .push_back(ConnectorEvent::RegistrationFailed(e.clone()));
                self.close_with(LocalClose::Registration(e), now);
            }
            ControlEvent::Called(call) => self.events.push_back(ConnectorEvent::Called(call)),
            ControlEvent::LocalConfigurationAccepted => {
                debug!(conn_index, "local configuration pushed")
            }
            ControlEvent::LocalConfigurationFailed(reason) => {
                self.events
                    .push_back(ConnectorEvent::LocalConfigurationFailed(reason));
            }
            ControlEvent::Unregistered | ControlEvent::UnregisterFailed(_) => {
                if let ControlEvent::UnregisterFailed(reason) = &event {
                    self.events
                        .push_back(ConnectorEvent::UnregisterFailed(reason.clone()));
                }
                self.events.push_back(ConnectorEvent::Unregistered);
                // cloudflared ends the RPC conversation now (Abort + FIN), which tells the edge
                // we have its answer, then serves what still comes until the edge closes the
                // connection or the grace period ends.
                self.end_control(now);
                self.state = State::Draining(now + self.config.grace_period);
            }
        }
    }

    /// Graceful close: Abort on the control stream, FIN, CONNECTION_CLOSE(0, "").
    fn close(&mut self, now: Instant) {
        if matches!(self.state, State::Closing | State::Closed) {
            return;
        }
        self.end_control(now);
        self.conn.close(now, VarInt::from_u32(0), Bytes::new());
        // Nothing moves on a closed connection: its streams end now (their origins closed), not
        // when quinn has drained, which a stop may not wait for.
        self.data.close_all();
        self.state = State::Closing;
    }

    /// Ends the control conversation: Abort("rpc: shutdown"), then FIN.
    fn end_control(&mut self, now: Instant) {
        self.abandon_calls(now);
        if let Some(c) = &mut self.control {
            c.client.close();
            if let Some(bytes) = c.client.poll_transmit() {
                c.unsent.extend_from_slice(&bytes);
            }
            let unsent = std::mem::take(&mut c.unsent);
            self.finishing.finish(&mut self.conn, c.stream, unsent);
        }
    }

    /// Closes for `reason`, which the supervisor's `LinkClosed` carries to the driver's log.
    fn close_with(&mut self, reason: LocalClose, now: Instant) {
        if self.close_reason.is_none() {
            self.close_reason = Some(reason);
        }
        self.close(now);
    }

    /// Calls still outstanding fail with the connection, as cloudflared counts them.
    fn abandon_calls(&mut self, now: Instant) {
        if let Some(c) = &mut self.control {
            let calls = c.client.abandon(now);
            self.events
                .extend(calls.into_iter().map(ConnectorEvent::Called));
        }
    }

    fn finish(&mut self, now: Instant, reason: CloseReason) {
        self.abandon_calls(now);
        self.data.close_all();
        self.calls.clear();
        if self.state != State::Closed {
            self.state = State::Closed;
            self.events.push_back(ConnectorEvent::Closed { reason });
        }
    }
}
