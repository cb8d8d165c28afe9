//! One tunnel connection over HTTP/2 from the connector's side (PROTOCOL.md C§1): cloudflared's
//! `HTTP2Connection`, for networks where QUIC's UDP does not get through.
//!
//! The driver dials TCP to the edge and moves bytes; [`Http2Link`] runs TLS and HTTP/2
//! ([`crate::http2::ConnectorConnection`]) over them and serves what the edge opens: the control
//! stream (the same registration RPC as on QUIC, in the stream's bodies), configuration pushes,
//! and data streams. Data streams go through the same proxy as QUIC's (`DataStreams`): each
//! request head is turned into the `ConnectRequest` the edge would have sent over QUIC, and the
//! proxy's `ConnectResponse` back into cloudflared's HTTP/2 response head (C§1.7, 1.8, 1.13). So
//! origin framing, ingress, WebSocket upgrades, TCP half-close and the idle origin pool are one
//! code for both transports. There are no datagrams on HTTP/2.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use h2::Reason;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use tracing::debug;

use super::connector::{CloseReason, ConnectorConfig, ConnectorEvent, LocalClose};
use super::data::{write_copied, DataStreams, EdgeStreams, FlowId, OriginAction};
use super::BodySink;
use crate::control::connector::{ControlClient, ControlEvent};
use crate::http2::configuration::{self, PushBody};
use crate::http2::machine::{ConnectionError, Event, Input, Limits, Output};
use crate::http2::request::{self, RequestKind};
use crate::http2::{
    ConnectorConnection, IncomingRequest, Read, ResponseMeta, StreamEvent, StreamId,
};
use crate::quic::tls::TlsError;
use crate::rpc::frame::FrameLimits;
use crate::rpc_stream::ConfigUpdateResult;
use crate::stream::connect::{
    decode_connect_response, key, ConnectRequest, ConnectionType, Metadata,
};
use crate::stream::http1::header_key;
use crate::stream::preamble::DATA_PREAMBLE_LEN;

/// The metadata entry that asks the proxy for a chunked request body.
const TRANSFER_ENCODING_KEY: &str = "HttpHeader:Transfer-Encoding";

/// Ciphertext handed to the driver per write.
const WRITE_CHUNK: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the driver's TCP connection.
    Dialing,
    /// TLS and the HTTP/2 preface, then the edge's control stream.
    Handshaking,
    /// Control stream open, waiting for the registration answer.
    Registering,
    /// Registered and serving.
    Serving,
    /// `unregisterConnection` sent.
    Unregistering,
    /// Unregistered; in-flight streams finish until the deadline.
    Draining(Instant),
    /// GOAWAY sent; waiting for HTTP/2 to end and the last bytes to leave.
    Closing(Instant),
    /// Done.
    Closed,
}

struct Control {
    stream: StreamId,
    client: ControlClient,
}

/// What the adapter knows about a data stream's edge side.
#[derive(Default)]
struct Side {
    /// Body bytes read from h2 that the proxy had no room for yet.
    stash: Option<Bytes>,
    /// The response head is out (what follows in the proxy's output is body).
    answered: bool,
}

/// The HTTP/2 streams of a link as [`DataStreams`] sees them.
struct H2Edge<'a> {
    conn: &'a mut ConnectorConnection,
    sides: &'a mut HashMap<StreamId, Side>,
}

impl EdgeStreams for H2Edge<'_> {
    type Id = StreamId;

    fn read(&mut self, id: StreamId, max: usize, sink: &mut impl BodySink) -> Result<bool, String> {
        let side = self.sides.entry(id).or_default();
        let mut max = max;
        loop {
            let chunk = match side.stash.take() {
                Some(chunk) => chunk,
                None => match self.conn.read(id) {
                    Ok(Read::Data(chunk)) => chunk,
                    Ok(Read::Blocked) => return Ok(false),
                    Ok(Read::Finished) => return Ok(true),
                    Err(e) => return Err(e.to_string()),
                },
            };
            let n = chunk.len().min(max);
            sink.put(chunk.slice(..n));
            max -= n;
            if n < chunk.len() {
                side.stash = Some(chunk.slice(n..));
                return Ok(false);
            }
            if max == 0 {
                return Ok(false);
            }
        }
    }

    fn write(&mut self, id: StreamId, pending: &mut Vec<u8>) -> Result<(), String> {
        let side = self.sides.entry(id).or_default();
        if !side.answered {
            answer(self.conn, id, pending)?;
            side.answered = true;
        }
        if pending.is_empty() {
            return Ok(());
        }
        let data = Bytes::from(std::mem::take(pending));
        let n = self
            .conn
            .send_data(id, data.clone())
            .map_err(|e| e.to_string())?;
        if n < data.len() {
            pending.extend_from_slice(&data[n..]);
        }
        Ok(())
    }

    fn write_shared(&mut self, id: StreamId, data: Bytes) -> Result<usize, String> {
        if !self.sides.get(&id).is_some_and(|s| s.answered) {
            // The response head goes first, and only `write` answers with it.
            return write_copied(self, id, &data);
        }
        self.conn.send_data(id, data).map_err(|e| e.to_string())
    }

    fn finish(&mut self, id: StreamId) -> bool {
        if !self.sides.get(&id).is_some_and(|s| s.answered) {
            // Nothing was answered (cannot happen: the proxy always answers first).
            let _ = self.conn.fail(id, ResponseMeta::Cloudflared);
        } else {
            let _ = self.conn.finish(id, None);
        }
        false
    }

    fn stop(&mut self, id: StreamId) {
        // The rest of the request body is read and dropped as it comes (see `discard`), which
        // returns its flow-control credit; the stream then ends.
        self.sides.remove(&id);
        discard(self.conn, id);
    }

    fn reset(&mut self, id: StreamId) {
        self.sides.remove(&id);
        // 502 if nothing was answered, else RST_STREAM(INTERNAL_ERROR) (C§1.13).
        let _ = self.conn.fail(id, ResponseMeta::Cloudflared);
    }
}

/// Reads and drops what the edge still sends on a stream we are done with.
fn discard(conn: &mut ConnectorConnection, id: StreamId) {
    while let Ok(Read::Data(_)) = conn.read(id) {}
}

/// Sends the head for the proxy's `ConnectResponse` at the start of `pending` and removes it:
/// an error becomes cloudflared's 502 with its meta, a success the origin's status and headers
/// (serialized, C§1.7).
fn answer(
    conn: &mut ConnectorConnection,
    id: StreamId,
    pending: &mut Vec<u8>,
) -> Result<(), String> {
    let limits = FrameLimits::RPC.with_max_bytes(usize::MAX);
    let body = pending.get(DATA_PREAMBLE_LEN..).unwrap_or_default();
    let (response, used) = match decode_connect_response(body, &limits) {
        Ok(Some(decoded)) => decoded,
        // The proxy writes its response whole, before any body.
        Ok(None) | Err(_) => return Err("proxy response unreadable".into()),
    };
    let error = response.error().map_err(|e| e.to_string())?;
    let mut status = StatusCode::OK;
    let mut headers = HeaderMap::new();
    let mut limited = false;
    for entry in response.metadata() {
        let entry = entry.map_err(|e| e.to_string())?;
        if entry.key == key::HTTP_STATUS {
            status = entry
                .val
                .parse::<u16>()
                .ok()
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::BAD_GATEWAY);
        } else if entry.key == key::FLOW_CONNECT_RATE_LIMITED {
            limited = true;
        } else if let Some(name) = entry.key.strip_prefix(key::HTTP_HEADER_PREFIX) {
            // The origin's head was parsed into valid names and values; skip anything else.
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(entry.val),
            ) {
                headers.append(n, v);
            }
        }
    }
    let result = if error.is_empty() {
        conn.respond(id, status, &headers)
    } else {
        debug!(stream = %id, %error, "request failed");
        let meta = if limited {
            ResponseMeta::FlowRateLimited
        } else {
            ResponseMeta::Cloudflared
        };
        conn.fail(id, meta)
    };
    pending.drain(..DATA_PREAMBLE_LEN + used);
    result.map_err(|e| e.to_string())
}

/// The `ConnectRequest` the edge would send over QUIC for this HTTP/2 request (A§3.4): the URL
/// (or `ip:port` for TCP) as `dest`, method, host and every header as metadata, with
/// cloudflared's preparation (C§1.4) applied first.
fn connect_request(req: &mut IncomingRequest) -> Result<Vec<u8>, String> {
    request::prepare_for_origin(req.kind, &mut req.head);
    let head = &req.head;
    let (connection_type, dest) = match req.kind {
        RequestKind::Tcp => (
            ConnectionType::Tcp,
            request::tcp_destination(head)
                .map_err(|e| e.to_string())?
                .to_string(),
        ),
        RequestKind::Websocket => (ConnectionType::WebSocket, head.uri.to_string()),
        _ => (ConnectionType::Http, head.uri.to_string()),
    };
    let host = head.uri.authority().map(|a| a.as_str().to_owned());
    let names: Vec<String> = head
        .headers
        .keys()
        .map(|n| header_key(n.as_str()))
        .collect();
    let mut metadata = Vec::with_capacity(2 + head.headers.len());
    if connection_type != ConnectionType::Tcp {
        metadata.push(Metadata {
            key: key::HTTP_METHOD,
            val: head.method.as_str(),
        });
        if let Some(host) = &host {
            metadata.push(Metadata {
                key: key::HTTP_HOST,
                val: host,
            });
        }
        for (name, n) in names.iter().zip(head.headers.keys()) {
            for v in head.headers.get_all(n) {
                let Ok(val) = v.to_str() else { continue };
                metadata.push(Metadata { key: name, val });
            }
        } // HTTP/2 has no Transfer-Encoding: a body without a length goes chunked to the origin,
          // as Go's transport sends cloudflared's `ContentLength == -1` requests.
        if !req.ended && !head.headers.contains_key(http::header::CONTENT_LENGTH) {
            metadata.push(Metadata {
                key: TRANSFER_ENCODING_KEY,
                val: "chunked",
            });
        }
    }
    let mut out = Vec::new();
    ConnectRequest {
        dest: &dest,
        connection_type,
        metadata: &metadata,
    }
    .encode_body(&mut out)
    .map_err(|e| e.to_string())?;
    Ok(out)
}

/// One tunnel connection over HTTP/2, connector side.
pub struct Http2Link {
    conn: ConnectorConnection,
    config: ConnectorConfig,
    state: State,
    control: Option<Control>,
    data: DataStreams<StreamId>,
    sides: HashMap<StreamId, Side>,
    /// Configuration pushes whose bodies are being read.
    pushes: HashMap<StreamId, PushBody>,
    /// Configuration pushes read whole, for the supervisor.
    offers: VecDeque<(StreamId, i32, Vec<u8>)>,
    events: VecDeque<ConnectorEvent>,
    /// Received bytes the machine could not take yet (it must transmit first).
    inbox: Vec<u8>,
    /// A write is outstanding at the driver.
    writing: bool,
    /// Ciphertext lent to the driver.
    out: Vec<u8>,
    /// How much of `out` is lent.
    lent: usize,
    shutdown_requested: bool,
    close_reason: Option<CloseReason>,
    /// The latest time seen (for the machine's deadline in `poll_timeout`).
    now: Instant,
    /// Why it closed, until the last bytes are written ([`Http2Link::release_close`]).
    closing: Option<CloseReason>,
    /// The TCP connection is up and not failed.
    tcp_up: bool,
}

impl Http2Link {
    /// A connection toward the edge with `tls` (SNI [`crate::http2::tls::SERVER_NAME`]); the
    /// driver dials TCP now, and the handshake deadline runs from `now`.
    pub fn new(
        now: Instant,
        config: ConnectorConfig,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Self, TlsError> {
        let conn =
            ConnectorConnection::new(now, tls, crate::http2::tls::SERVER_NAME, Limits::default())?;
        let data = DataStreams::new(
            config.data.clone(),
            config.registration.client_id,
            config.registration.conn_index,
        )
        .over_http2();
        Ok(Self {
            conn,
            config,
            state: State::Dialing,
            control: None,
            data,
            sides: HashMap::new(),
            pushes: HashMap::new(),
            offers: VecDeque::new(),
            events: VecDeque::new(),
            inbox: Vec::new(),
            writing: false,
            out: vec![0; WRITE_CHUNK],
            lent: 0,
            shutdown_requested: false,
            close_reason: None,
            now,
            closing: None,
            tcp_up: false,
        })
    }

    /// The TCP connection is up; `local` is its local address (sent as `originLocalIp`).
    pub fn handle_connected(&mut self, now: Instant, local: IpAddr) {
        if self.state == State::Dialing {
            self.config.registration.origin_local_ip = Some(local);
            self.state = State::Handshaking;
            self.tcp_up = true;
        }
        self.progress(now);
    }

    /// The TCP connection could not be made, or broke.
    pub fn handle_failed(&mut self, now: Instant, reason: &str) {
        self.tcp_up = false;
        self.writing = false;
        self.finish(now, CloseReason::Transport(reason.to_owned()));
        self.progress(now);
    }

    /// Bytes read from the TCP connection (empty: the edge closed it).
    pub fn handle_bytes(&mut self, now: Instant, data: &[u8]) {
        if self.state == State::Closed {
            return;
        }
        if data.is_empty() {
            self.conn.handle_input(now, Input::PeerClosed);
        } else if self.inbox.is_empty() {
            let n = self.conn.handle_input(now, Input::Received(data));
            self.inbox.extend_from_slice(&data[n..]);
        } else {
            self.inbox.extend_from_slice(data);
        }
        self.progress(now);
    }

    /// Whether the driver may read the TCP connection now (the machine took all it was given).
    pub fn wants_read(&self) -> bool {
        self.inbox.is_empty() && !matches!(self.state, State::Dialing | State::Closed)
    }

    /// The driver wrote the last ciphertext it was lent.
    pub fn handle_written(&mut self, now: Instant) {
        self.writing = false;
        self.progress(now);
    }

    /// The next ciphertext to write (one write outstanding at a time), lent until the next
    /// call.
    pub fn poll_write(&mut self, now: Instant) -> Option<&[u8]> {
        if self.writing || !self.tcp_up {
            return None;
        }
        self.drain_machine(now);
        let n = self.conn.transmit(&mut self.out);
        if n == 0 {
            return None;
        }
        self.writing = true;
        self.lent = n;
        // Room in the TLS buffer: offer what was held back.
        self.offer_inbox(now);
        Some(&self.out[..n])
    }

    /// The ciphertext the last [`Http2Link::poll_write`] lent.
    pub fn lent(&self) -> &[u8] {
        &self.out[..self.lent]
    }

    /// Lets timers fire.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.conn.handle_input(now, Input::Timeout);
        if let Some(c) = &mut self.control {
            c.client.handle_timeout(now);
        }
        self.data.expire_idle(now);
        let mut edge = edge(&mut self.conn, &mut self.sides);
        self.data.expire_dials(now, &mut edge);
        self.data.make_room(now, &mut edge);
        self.data.expire_writes(now, &mut edge);
        match self.state {
            State::Draining(deadline) if deadline <= now => {
                let streams = self.data.active();
                if streams > 0 {
                    self.events
                        .push_back(ConnectorEvent::DrainCutShort { streams });
                } else {
                    debug!(
                        conn_index = self.config.registration.conn_index,
                        "grace period over; closing"
                    );
                }
                self.close(now);
            }
            State::Closing(deadline) if deadline <= now => {
                self.finish(now, CloseReason::Local(LocalClose::Shutdown));
            }
            _ => {}
        }
        self.progress(now);
    }

    /// When [`Http2Link::handle_timeout`] must be called next.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let machine = if self.state == State::Closed {
            None
        } else {
            let now = self.now;
            self.drain_machine(now);
            match self.conn.poll_output(now) {
                Output::Timeout(t) => t,
                // Ciphertext waits for `poll_write`, which waits for the TCP connect; the
                // handshake deadline (cloudflared's 15 s dial timeout) covers that wait too,
                // or an edge that drops SYNs holds the link for the kernel's two minutes.
                _ => self.conn.deadline(),
            }
        };
        let control = self.control.as_ref().and_then(|c| c.client.poll_timeout());
        let state = match self.state {
            State::Draining(t) | State::Closing(t) => Some(t),
            _ => None,
        };
        [machine, control, self.data.poll_timeout(), state]
            .into_iter()
            .flatten()
            .min()
    }

    /// What the driver must do with origin connections next.
    pub fn poll_origin_action(&mut self) -> Option<OriginAction> {
        self.data.poll_action()
    }

    /// The next event (configuration offers come from [`Http2Link::poll_offer`]).
    pub fn poll_event(&mut self) -> Option<ConnectorEvent> {
        self.events.pop_front()
    }

    /// The next configuration push: answer it with [`Http2Link::respond_configuration`].
    pub fn poll_offer(&mut self) -> Option<(StreamId, i32, Vec<u8>)> {
        self.offers.pop_front()
    }

    /// Answers a configuration push (implicit 200 and the JSON result, C§1.12).
    pub fn respond_configuration(
        &mut self,
        now: Instant,
        stream: StreamId,
        result: &ConfigUpdateResult,
    ) -> Result<(), crate::http2::ApiError> {
        self.conn.respond_implicit(stream)?;
        let body = Bytes::from(configuration::encode_result(result));
        // A fresh stream's queue takes a few dozen bytes whole.
        self.conn.send_data(stream, body)?;
        self.conn.finish(stream, None)?;
        discard(&mut self.conn, stream);
        self.progress(now);
        Ok(())
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
        let mut edge = edge(&mut self.conn, &mut self.sides);
        self.data.on_flow_connected(now, &mut edge, flow);
        self.progress(now);
    }

    /// The origin connection of `flow` could not be made, or broke.
    pub fn handle_flow_failed(&mut self, now: Instant, flow: FlowId, reason: &str) {
        let mut edge = edge(&mut self.conn, &mut self.sides);
        self.data.on_flow_failed(now, &mut edge, flow, reason);
        self.progress(now);
    }

    /// Bytes read from the origin of `flow`; returns how many were taken.
    pub fn handle_flow_data(&mut self, now: Instant, flow: FlowId, bytes: &Bytes) -> usize {
        let mut edge = edge(&mut self.conn, &mut self.sides);
        let n = self.data.on_flow_data(now, &mut edge, flow, bytes);
        self.progress(now);
        n
    }

    /// The origin of `flow` closed its side.
    pub fn handle_flow_finished(&mut self, now: Instant, flow: FlowId) {
        let mut edge = edge(&mut self.conn, &mut self.sides);
        self.data.on_flow_finished(now, &mut edge, flow);
        self.progress(now);
    }

    /// The driver finished the last write to `flow`.
    pub fn handle_flow_written(&mut self, now: Instant, flow: FlowId) {
        let mut edge = edge(&mut self.conn, &mut self.sides);
        self.data.on_flow_written(now, &mut edge, flow);
        self.progress(now);
    }

    /// This connection's data streams: their limits, flow slots and what they came to.
    pub(crate) fn data(&self) -> &DataStreams<StreamId> {
        &self.data
    }

    /// The same, to change.
    pub(crate) fn data_mut(&mut self) -> &mut DataStreams<StreamId> {
        &mut self.data
    }

    /// Data streams in progress.
    pub fn active_streams(&self) -> usize {
        self.data.active()
    }

    /// Starts graceful shutdown: unregister, drain, GOAWAY, close.
    pub fn shutdown(&mut self, now: Instant) {
        self.shutdown_requested = true;
        match self.state {
            State::Serving => {
                if let Some(c) = &mut self.control {
                    if c.client.unregister(now, self.config.grace_period).is_err() {
                        self.close(now);
                    } else {
                        self.state = State::Unregistering;
                    }
                }
            }
            State::Dialing | State::Handshaking | State::Registering => self.close(now),
            _ => {}
        }
        self.progress(now);
    }

    /// Closes at once (second signal, or the grace period ran out).
    pub fn close_now(&mut self, now: Instant) {
        self.shutdown_requested = true;
        self.close(now);
        self.finish(now, CloseReason::Local(LocalClose::Shutdown));
        self.progress(now);
    }

    /// True once the connection is over.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    fn offer_inbox(&mut self, now: Instant) {
        if self.inbox.is_empty() || self.state == State::Closed {
            return;
        }
        let n = self.conn.handle_input(now, Input::Received(&self.inbox));
        self.inbox.drain(..n);
    }

    /// Takes the machine's events until it has nothing but ciphertext or a deadline.
    fn drain_machine(&mut self, now: Instant) {
        while let Output::Event(e) = self.conn.poll_output(now) {
            self.on_event(now, e);
        }
    }

    /// Everything that follows an input.
    fn progress(&mut self, now: Instant) {
        self.now = self.now.max(now);
        if self.state != State::Dialing {
            self.offer_inbox(now);
        }
        // Dialing too: a handshake deadline that fired closes the link now, not on the next
        // input (the machine's close is one of its events).
        self.drain_machine(now);
        self.pump_control(now);
        if matches!(self.state, State::Draining(_)) && self.data.active() == 0 {
            debug!(
                conn_index = self.config.registration.conn_index,
                "drained; closing"
            );
            self.close(now);
            self.drain_machine(now);
        }
        self.release_close();
    }

    fn on_event(&mut self, now: Instant, event: Event) {
        match event {
            Event::Connected => {
                debug!(
                    conn_index = self.config.registration.conn_index,
                    "HTTP/2 connection to the edge up"
                );
            }
            Event::Request(req) => self.on_request(now, req),
            Event::Stream(StreamEvent::Readable(id)) => self.on_readable(now, id),
            Event::Stream(StreamEvent::Writable(id)) => {
                if self.data.owns(id) {
                    let mut edge = edge(&mut self.conn, &mut self.sides);
                    self.data.drive(now, &mut edge, id);
                }
            }
            Event::Stream(StreamEvent::Reset { stream, reason }) => {
                self.sides.remove(&stream);
                self.pushes.remove(&stream);
                if self.control.as_ref().is_some_and(|c| c.stream == stream) {
                    self.close_with(
                        LocalClose::Control(format!("reset by the edge: {reason}")),
                        now,
                    );
                } else if self.data.owns(stream) {
                    let mut edge = edge(&mut self.conn, &mut self.sides);
                    self.data.on_stopped(now, &mut edge, stream);
                }
            }
            Event::Response { .. } | Event::GoingAway => {}
            Event::Closed(error) => {
                let reason = match error {
                    None if self.shutdown_requested => CloseReason::Local(LocalClose::Shutdown),
                    None => CloseReason::Remote("connection with edge closed".into()),
                    Some(e) => close_reason(e),
                };
                let reason = self.close_reason.clone().unwrap_or(reason);
                self.finish(now, reason);
            }
        }
    }

    fn on_request(&mut self, now: Instant, mut req: IncomingRequest) {
        let id = req.stream;
        if self.state == State::Registering {
            // The edge routes requests here once it has answered the registration: the
            // answer may be in the same read, not yet taken from the control stream.
            self.read_control(now);
            self.pump_control(now);
        }
        match req.kind {
            RequestKind::ControlStream => self.open_control(now, id),
            RequestKind::Configuration => {
                self.pushes.insert(id, PushBody::default());
                self.read_push(id);
            }
            // Every request h2 accepted is served, whatever the registration's state, as
            // cloudflared's `ServeHTTP` serves it: the edge sends one only to a connection it
            // registered, and one sent as this side gave up on registering (a late answer,
            // GOAWAY on its way) would otherwise fail for nothing. The grace period bounds it.
            _ => match connect_request(&mut req) {
                Ok(bytes) => {
                    let mut edge = edge(&mut self.conn, &mut self.sides);
                    self.data.accept(now, &mut edge, id, &bytes);
                }
                Err(reason) => {
                    debug!(stream = %id, %reason, "request cannot be proxied");
                    let _ = self.conn.fail(id, ResponseMeta::Cloudflared);
                }
            },
        }
    }

    fn on_readable(&mut self, now: Instant, id: StreamId) {
        if self.control.as_ref().is_some_and(|c| c.stream == id) {
            self.read_control(now);
        } else if self.pushes.contains_key(&id) {
            self.read_push(id);
        } else if self.data.owns(id) {
            let mut edge = edge(&mut self.conn, &mut self.sides);
            self.data.on_readable(now, &mut edge, id);
        } else {
            discard(&mut self.conn, id);
        }
    }

    fn read_push(&mut self, id: StreamId) {
        let Some(body) = self.pushes.get_mut(&id) else {
            return;
        };
        loop {
            match self.conn.read(id) {
                Ok(Read::Data(chunk)) => {
                    if let Err(e) = body.extend(&chunk) {
                        debug!(stream = %id, error = %e, "configuration push refused");
                        self.pushes.remove(&id);
                        let _ = self.conn.fail(id, ResponseMeta::Cloudflared);
                        return;
                    }
                }
                Ok(Read::Blocked) => return,
                Ok(Read::Finished) => break,
                Err(_) => {
                    self.pushes.remove(&id);
                    return;
                }
            }
        }
        let Some(body) = self.pushes.remove(&id) else {
            return;
        };
        match body.decode() {
            Ok(push) => self
                .offers
                .push_back((id, push.version, push.config.into_bytes())),
            Err(e) => {
                debug!(stream = %id, error = %e, "configuration push unreadable");
                let _ = self.conn.fail(id, ResponseMeta::Cloudflared);
            }
        }
    }

    fn open_control(&mut self, now: Instant, id: StreamId) {
        if self.control.is_some() || self.shutdown_requested {
            let _ = self.conn.fail(id, ResponseMeta::Cloudflared);
            return;
        }
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
        // Go's implicit 200 goes out with the first bytes (C§1.6).
        if self.conn.respond_implicit(id).is_err() {
            return;
        }
        debug!(
            conn_index = self.config.registration.conn_index,
            "control stream opened"
        );
        self.control = Some(Control { stream: id, client });
        self.state = State::Registering;
        self.read_control(now);
    }

    fn read_control(&mut self, now: Instant) {
        let Some(c) = &mut self.control else { return };
        loop {
            match self.conn.read(c.stream) {
                Ok(Read::Data(bytes)) => {
                    if let Err(e) = c.client.handle_bytes(now, &bytes) {
                        self.close_with(LocalClose::Control(e.to_string()), now);
                        return;
                    }
                }
                Ok(Read::Blocked) => return,
                Ok(Read::Finished) => {
                    if matches!(self.state, State::Registering | State::Serving) {
                        // A dead control plane means the edge no longer routes to us.
                        self.close_with(LocalClose::Control("closed by the edge".into()), now);
                    }
                    return;
                }
                Err(e) => {
                    self.close_with(LocalClose::Control(format!("control stream: {e}")), now);
                    return;
                }
            }
        }
    }

    /// Moves control-stream bytes out and acts on its events.
    fn pump_control(&mut self, now: Instant) {
        loop {
            let Some(c) = &mut self.control else { return };
            if let Some(bytes) = c.client.poll_transmit() {
                // The control stream carries a few hundred bytes per call: the queue takes
                // them whole; a refusal means the stream is gone.
                if let Err(e) = self.conn.send_data(c.stream, Bytes::from(bytes)) {
                    debug!(error = %e, "control stream write failed");
                }
                continue;
            }
            let Some(event) = c.client.poll_event() else {
                return;
            };
            self.on_control_event(now, event);
        }
    }

    fn on_control_event(&mut self, now: Instant, event: ControlEvent) {
        let conn_index = self.config.registration.conn_index;
        match event {
            ControlEvent::Registered(details) => {
                debug!(conn_index, location = %details.location, connection = %details.uuid, "registered over http2");
                self.state = State::Serving;
                self.events.push_back(ConnectorEvent::Registered(details));
                if self.shutdown_requested {
                    self.shutdown(now);
                }
            }
            ControlEvent::RegistrationFailed(e) => {
                // Logged once, by the driver, from the supervisor's event (as the one below).
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
                // As cloudflared's control handler returns once unregistered, the control
                // stream ends now (what the edge still sends on it is read and dropped); and
                // GOAWAY: no new streams. Both go out before the last responses, so the edge
                // closes once it has read them instead of racing an end that comes with them.
                if let Some(c) = self.take_control(now) {
                    let _ = self.conn.finish(c.stream, None);
                }
                self.conn.shutdown();
                self.state = State::Draining(now + self.config.grace_period);
            }
        }
    }

    /// Graceful close: the control stream ends, GOAWAY, then HTTP/2 ends once the open streams
    /// do (bounded by the grace period).
    fn close(&mut self, now: Instant) {
        if matches!(self.state, State::Closing(_) | State::Closed) {
            return;
        }
        self.shutdown_requested = true;
        if self.state == State::Dialing {
            self.finish(
                now,
                self.close_reason
                    .clone()
                    .unwrap_or(CloseReason::Local(LocalClose::Shutdown)),
            );
            return;
        }
        if let Some(c) = self.take_control(now) {
            let _ = self.conn.reset(c.stream, Reason::NO_ERROR);
        }
        self.conn.shutdown();
        self.state = State::Closing(now + self.config.grace_period);
    }

    /// Closes for `reason`, which the supervisor's `LinkClosed` carries to the driver's log.
    fn close_with(&mut self, reason: LocalClose, now: Instant) {
        if self.close_reason.is_none() {
            self.close_reason = Some(CloseReason::Local(reason));
        }
        self.close(now);
    }

    /// The connection is over. `Closed` is reported once its last ciphertext (the end of the
    /// responses, GOAWAY, close_notify) is written: the supervisor drops the link then, and the
    /// driver closes the socket.
    fn finish(&mut self, now: Instant, reason: CloseReason) {
        self.take_control(now);
        self.data.close_all();
        self.sides.clear();
        self.pushes.clear();
        self.inbox.clear();
        if self.state != State::Closed {
            self.state = State::Closed;
            self.close_reason.get_or_insert(reason.clone());
            self.closing = Some(reason);
        }
    }

    /// Ends the control conversation: calls still outstanding fail with it, as cloudflared
    /// counts them.
    fn take_control(&mut self, now: Instant) -> Option<Control> {
        let mut c = self.control.take()?;
        let calls = c.client.abandon(now);
        self.events
            .extend(calls.into_iter().map(ConnectorEvent::Called));
        Some(c)
    }

    /// Reports `Closed` once nothing is left to write (or nothing can be: no TCP yet). True
    /// if it did.
    pub fn release_close(&mut self) -> bool {
        if self.closing.is_none() || self.writing {
            return false;
        }
        let now = self.now;
        if self.tcp_up && matches!(self.conn.poll_output(now), Output::Transmit) {
            return false;
        }
        if let Some(reason) = self.closing.take() {
            self.events.push_back(ConnectorEvent::Closed { reason });
        }
        true
    }
}

fn edge<'a>(
    conn: &'a mut ConnectorConnection,
    sides: &'a mut HashMap<StreamId, Side>,
) -> H2Edge<'a> {
    H2Edge { conn, sides }
}

/// How an HTTP/2 connection's end reads for the supervisor.
fn close_reason(e: ConnectionError) -> CloseReason {
    match e {
        ConnectionError::HandshakeTimeout(_) => CloseReason::TimedOut,
        ConnectionError::GoAway(_)
        | ConnectionError::Truncated
        | ConnectionError::Protocol { remote: true, .. } => CloseReason::Remote(e.to_string()),
        ConnectionError::Tls(_) | ConnectionError::Protocol { .. } | ConnectionError::Io(_) => {
            CloseReason::Transport(e.to_string())
        }
    }
}
