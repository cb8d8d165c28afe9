//! The edge's HTTP/2 connections (PROTOCOL.md C§1): connectors that dialled TCP and TLS
//! instead of QUIC. Each is an [`EdgeConnection`] machine; this module opens its control
//! stream, serves the registration RPC on it with the same [`ControlServer`] QUIC uses, and
//! carries tunnel requests as HTTP/2 streams with the same calls and [`EdgeEvent`]s as
//! [`super::edge::EdgeEndpoint`], so the caller routes to either transport alike.
//!
//! Bounds as on QUIC: at most [`MAX_UNREGISTERED`] connections wait for registration, each at
//! most [`REGISTRATION_DEADLINE`]; unread control replies are bounded by [`CONTROL_UNSENT_MAX`].

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use h2::Reason;
use thiserror::Error;
use tracing::debug;

use super::edge::{ConnId, EdgeEvent, CONTROL_UNSENT_MAX, MAX_UNREGISTERED, REGISTRATION_DEADLINE};
use super::BodySink;
use crate::control::edge::{ControlServer, EdgeControlEvent};
use crate::control::{ApiError, ConnectionDetails, RegistrationError};
use crate::http2::edge::{connect_response, request_head};
use crate::http2::{
    EdgeConnection, Event, Input, Limits, Output, Read, RequestKind, StreamEvent, StreamId,
};
use crate::quic::tls::TlsError;
use crate::stream::connect::ConnectRequest;

/// Why a TCP connection was not taken.
#[derive(Debug, Error)]
pub enum AcceptError {
    /// Too many connections have not registered yet; close the socket.
    #[error("{0} connections are waiting for registration")]
    TooManyUnregistered(usize),
    /// The TLS session could not be created.
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// The id is already in use (caller misuse).
    #[error("connection {} already exists", .0 .0)]
    Duplicate(ConnId),
}

/// The control stream of one connection.
struct Control {
    stream: StreamId,
    server: ControlServer,
    /// Replies h2 has not taken yet.
    unsent: Vec<u8>,
    /// The connector ended it (cloudflared does once it unregistered).
    ended: bool,
}

/// One request stream we opened.
struct DataStream {
    kind: RequestKind,
    /// The response head has been reported.
    answered: bool,
    /// Body bytes read from h2 beyond what the caller asked for.
    stash: Bytes,
    /// Our body is finished (END_STREAM queued).
    finished: bool,
}

struct Conn {
    h2: EdgeConnection,
    register_by: Instant,
    control: Option<Control>,
    data: BTreeMap<StreamId, DataStream>,
    /// Ciphertext is waiting for [`Http2Edge::transmit`].
    transmit: bool,
    /// The machine's own deadline (the handshake).
    deadline: Option<Instant>,
    /// `Closed` was seen; the socket closes once the last bytes are out.
    closed: bool,
    /// The socket was handed to [`Http2Edge::poll_finished`].
    socket_done: bool,
    /// `Unregistered` was reported.
    unregistered: bool,
    /// The connection ended with answers still to read: `ConnectionClosed` is reported once
    /// they are read (or abandoned), so the caller does not reset them.
    close_reason: Option<String>,
}

impl Conn {
    fn registered(&self) -> bool {
        self.control
            .as_ref()
            .is_some_and(|c| c.server.is_registered())
    }
}

/// Every HTTP/2 connector connection of the edge.
pub struct Http2Edge {
    config: Arc<rustls::ServerConfig>,
    limits: Limits,
    conns: BTreeMap<ConnId, Conn>,
    events: VecDeque<EdgeEvent<StreamId>>,
}

impl Http2Edge {
    /// Connections will use this TLS configuration (the edge's certificate) and bounds.
    pub fn new(config: Arc<rustls::ServerConfig>, limits: Limits) -> Self {
        Self {
            config,
            limits,
            conns: BTreeMap::new(),
            events: VecDeque::new(),
        }
    }

    /// A connector dialled in at `now`; `id` must be unique across the edge
    /// ([`super::edge::EdgeEndpoint::reserve_conn_id`]).
    pub fn accept(&mut self, now: Instant, id: ConnId) -> Result<(), AcceptError> {
        if self.conns.contains_key(&id) {
            return Err(AcceptError::Duplicate(id));
        }
        let waiting = self.conns.values().filter(|c| !c.registered()).count();
        if waiting >= MAX_UNREGISTERED {
            return Err(AcceptError::TooManyUnregistered(waiting));
        }
        let h2 = EdgeConnection::new(now, self.config.clone(), self.limits)?;
        self.conns.insert(
            id,
            Conn {
                h2,
                register_by: now + REGISTRATION_DEADLINE,
                control: None,
                data: BTreeMap::new(),
                transmit: false,
                deadline: None,
                closed: false,
                socket_done: false,
                unregistered: false,
                close_reason: None,
            },
        );
        self.progress(now, id);
        Ok(())
    }

    /// Feeds bytes read from `conn`'s socket; returns how many were taken. Fewer than given:
    /// transmit first, then offer the rest.
    pub fn handle_received(&mut self, now: Instant, conn: ConnId, data: &[u8]) -> usize {
        let Some(c) = self.conns.get_mut(&conn) else {
            return data.len();
        };
        let taken = c.h2.handle_input(now, Input::Received(data));
        self.progress(now, conn);
        taken
    }

    /// `conn`'s socket reached end of file (or failed).
    pub fn handle_peer_closed(&mut self, now: Instant, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.h2.handle_input(now, Input::PeerClosed);
            self.progress(now, conn);
        }
    }

    /// Lets deadlines fire: handshakes and registrations not done in time end the connection.
    pub fn handle_timeout(&mut self, now: Instant) {
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            if c.deadline.is_some_and(|d| d <= now) {
                c.h2.handle_input(now, Input::Timeout);
            }
            if !c.closed && !c.registered() && c.register_by <= now {
                debug!(conn = id.0, "no registration in time; closing");
                c.h2.abort();
            }
            self.progress(now, id);
        }
    }

    /// When [`Http2Edge::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.conns
            .values()
            .filter(|c| !c.closed)
            .filter_map(|c| {
                let register = (!c.registered()).then_some(c.register_by);
                [c.deadline, register].into_iter().flatten().min()
            })
            .min()
    }

    /// Whether `conn` has ciphertext to send: call [`Http2Edge::transmit`] and write what it
    /// gives to the socket.
    pub fn wants_transmit(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(|c| c.transmit)
    }

    /// Writes `conn`'s waiting ciphertext into `buf`; returns how many bytes to send.
    pub fn transmit(&mut self, now: Instant, conn: ConnId, buf: &mut [u8]) -> usize {
        let Some(c) = self.conns.get_mut(&conn) else {
            return 0;
        };
        let n = c.h2.transmit(buf);
        c.transmit = false;
        self.progress(now, conn);
        n
    }

    /// A connection that is over with everything sent: close its socket. It is forgotten
    /// once the answers that came with its end are read.
    pub fn poll_finished(&mut self) -> Option<ConnId> {
        let id = self
            .conns
            .iter()
            .find_map(|(&id, c)| (c.closed && !c.socket_done && c.h2.is_closed()).then_some(id))?;
        if let Some(c) = self.conns.get_mut(&id) {
            c.socket_done = true;
        }
        self.forget_if_done(id);
        Some(id)
    }

    /// A stream of `conn` is over: once a closed connection has none left, `ConnectionClosed`
    /// is reported and, with its socket closed, it is forgotten.
    fn forget_if_done(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !c.closed || !c.data.is_empty() {
            return;
        }
        if let Some(reason) = c.close_reason.take() {
            self.events
                .push_back(EdgeEvent::ConnectionClosed { conn, reason });
        }
        if c.socket_done {
            self.conns.remove(&conn);
        }
    }

    /// Whether `conn` is one of these connections.
    pub fn contains(&self, conn: ConnId) -> bool {
        self.conns.contains_key(&conn)
    }

    /// Ends every connection now (the edge is going away; connectors reconnect).
    pub fn close_all(&mut self, now: Instant) {
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            if let Some(c) = self.conns.get_mut(&id) {
                c.h2.abort();
            }
            self.progress(now, id);
        }
    }

    /// Ends connection `conn` now (its connector abandoned it).
    pub fn close(&mut self, now: Instant, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.h2.abort();
        }
        self.progress(now, conn);
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<EdgeEvent<StreamId>> {
        self.events.pop_front()
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
        self.progress(now, conn);
        Ok(())
    }

    /// Opens a stream on `conn` carrying `request`; the answer comes as
    /// [`EdgeEvent::Response`].
    pub fn open_request(
        &mut self,
        now: Instant,
        conn: ConnId,
        request: &ConnectRequest<'_>,
    ) -> Result<StreamId, ApiError> {
        let c = self.conns.get_mut(&conn).ok_or(ApiError::Closed)?;
        if c.closed {
            return Err(ApiError::Closed);
        }
        // Unregistered: the connector drains (GOAWAY) and takes no new streams.
        if !c.registered() || c.unregistered {
            return Err(ApiError::NotRegistered("a request"));
        }
        let (kind, head) = request_head(request).map_err(|e| ApiError::Encode(e.to_string()))?;
        let stream =
            c.h2.open(kind, head, false)
                .map_err(|e| ApiError::Encode(e.to_string()))?;
        c.data.insert(
            stream,
            DataStream {
                kind,
                answered: false,
                stash: Bytes::new(),
                finished: false,
            },
        );
        self.progress(now, conn);
        Ok(stream)
    }

    /// Queues request-body bytes; returns how many were taken (0: wait, then offer again).
    pub fn send_request_body(
        &mut self,
        now: Instant,
        conn: ConnId,
        stream: StreamId,
        bytes: Bytes,
    ) -> Result<usize, ApiError> {
        let c = self.conns.get_mut(&conn).ok_or(ApiError::Closed)?;
        if !c.data.contains_key(&stream) {
            return Err(ApiError::Closed);
        }
        let n =
            c.h2.send_data(stream, bytes)
                .map_err(|_| ApiError::Closed)?;
        self.progress(now, conn);
        Ok(n)
    }

    /// Ends the request body (END_STREAM after what is queued).
    pub fn finish_request(
        &mut self,
        now: Instant,
        conn: ConnId,
        stream: StreamId,
    ) -> Result<(), ApiError> {
        let c = self.conns.get_mut(&conn).ok_or(ApiError::Closed)?;
        let d = c.data.get_mut(&stream).ok_or(ApiError::Closed)?;
        d.finished = true;
        c.h2.finish(stream, None).map_err(|_| ApiError::Closed)?;
        self.progress(now, conn);
        Ok(())
    }

    /// Abandons a request: RST_STREAM `CANCEL`.
    pub fn reset_request(
        &mut self,
        now: Instant,
        conn: ConnId,
        stream: StreamId,
    ) -> Result<(), ApiError> {
        let c = self.conns.get_mut(&conn).ok_or(ApiError::Closed)?;
        c.data.remove(&stream).ok_or(ApiError::Closed)?;
        let _ = c.h2.reset(stream, Reason::CANCEL);
        self.progress(now, conn);
        self.forget_if_done(conn);
        Ok(())
    }

    /// Reads up to `max` response-body bytes into `sink` (credit goes back to the connector
    /// as they are read; the pieces `h2` gave go to a `Vec<Bytes>` uncopied). Returns true once
    /// the body is complete; the stream is then forgotten on our side once our body is done too.
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
        if !d.answered {
            return Err(ApiError::NothingPending("response body"));
        }
        let mut finished = false;
        let mut taken = 0;
        while taken < max {
            if d.stash.is_empty() {
                match c.h2.read(stream) {
                    Ok(Read::Data(data)) => d.stash = data,
                    Ok(Read::Blocked) => break,
                    Ok(Read::Finished) => {
                        finished = true;
                        break;
                    }
                    // Gone: reported as a reset by the machine.
                    Err(_) => break,
                }
            }
            let n = d.stash.len().min(max - taken);
            taken += n;
            sink.put(d.stash.split_to(n));
        }
        if finished && c.data.remove(&stream).is_some_and(|d| !d.finished) {
            // The answer is complete while the request still streams (an early response, or
            // a TCP flow the origin ended): the flow is over, as cloudflared ends it.
            let _ = c.h2.reset(stream, Reason::CANCEL);
        }
        self.progress(now, conn);
        self.forget_if_done(conn);
        Ok(finished)
    }

    /// Drains `conn`'s machine: events into [`EdgeEvent`]s, control replies out.
    fn progress(&mut self, now: Instant, id: ConnId) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        loop {
            flush_control(c);
            match c.h2.poll_output(now) {
                Output::Event(event) => on_event(id, c, event, &mut self.events),
                Output::Transmit => {
                    c.transmit = true;
                    return;
                }
                Output::Timeout(deadline) => {
                    c.deadline = deadline;
                    return;
                }
            }
        }
    }
}

fn on_event(id: ConnId, c: &mut Conn, event: Event, events: &mut VecDeque<EdgeEvent<StreamId>>) {
    let is_control = |s: StreamId, c: &Conn| c.control.as_ref().is_some_and(|ctl| ctl.stream == s);
    match event {
        Event::Connected => match c.h2.open_control_stream() {
            Ok(stream) => {
                c.control = Some(Control {
                    stream,
                    server: ControlServer::new(),
                    unsent: Vec::new(),
                    ended: false,
                })
            }
            Err(e) => {
                debug!(conn = id.0, error = %e, "cannot open the control stream");
                c.h2.abort();
            }
        },
        Event::Response { stream, response } if is_control(stream, c) => {
            if !response.is_ok_and(|r| r.status.is_success()) {
                debug!(conn = id.0, "the connector refused the control stream");
                c.h2.abort();
            }
        }
        Event::Response { stream, response } => {
            let Some(d) = c.data.get_mut(&stream) else {
                return;
            };
            match response {
                Ok(r) => {
                    d.answered = true;
                    let (error, metadata) = connect_response(d.kind, &r);
                    events.push_back(EdgeEvent::Response {
                        conn: id,
                        stream,
                        error,
                        metadata,
                    });
                }
                Err(e) => {
                    // The machine reset the stream.
                    debug!(conn = id.0, %stream, error = %e, "unreadable response head");
                    c.data.remove(&stream);
                    events.push_back(EdgeEvent::StreamReset { conn: id, stream });
                }
            }
        }
        Event::Stream(StreamEvent::Readable(stream)) if is_control(stream, c) => {
            read_control(id, c, events);
        }
        Event::Stream(StreamEvent::Readable(stream)) => {
            if c.data.contains_key(&stream) {
                events.push_back(EdgeEvent::ResponseReadable { conn: id, stream });
            }
        }
        // Control replies are retried on every drain; request bodies by the caller.
        Event::Stream(StreamEvent::Writable(_)) => {}
        Event::Stream(StreamEvent::Reset { stream, reason }) if is_control(stream, c) => {
            debug!(conn = id.0, %reason, "control stream reset");
            control_ended(id, c);
        }
        Event::Stream(StreamEvent::Reset { stream, .. }) => {
            if c.data.remove(&stream).is_some() {
                events.push_back(EdgeEvent::StreamReset { conn: id, stream });
            }
        }
        // Draining (or closing after a failed registration): no new requests go to it.
        Event::GoingAway => {
            if !c.unregistered {
                c.unregistered = true;
                events.push_back(EdgeEvent::Unregistered { conn: id });
            }
        }
        Event::Closed(error) => {
            c.closed = true;
            let reason = error.map_or_else(|| "closed".to_owned(), |e| e.to_string());
            // Answers that arrived complete with the end are still delivered (a drain's last
            // response); the machine reported them readable.
            let h2 = &c.h2;
            c.data.retain(|&s, d| d.answered && h2.has_stream(s));
            if c.data.is_empty() {
                events.push_back(EdgeEvent::ConnectionClosed { conn: id, reason });
            } else {
                if !c.unregistered {
                    // No new requests go to it meanwhile.
                    c.unregistered = true;
                    events.push_back(EdgeEvent::Unregistered { conn: id });
                }
                c.close_reason = Some(reason);
            }
        }
        // The connector opens no streams (it is the HTTP/2 server).
        Event::Request(_) => {}
    }
}

/// Reads what the connector wrote on the control stream into the RPC server.
fn read_control(id: ConnId, c: &mut Conn, events: &mut VecDeque<EdgeEvent<StreamId>>) {
    let Some(ctl) = c.control.as_mut().filter(|ctl| !ctl.ended) else {
        return;
    };
    let mut ended = false;
    loop {
        match c.h2.read(ctl.stream) {
            Ok(Read::Data(data)) => {
                if let Err(e) = ctl.server.handle_bytes(&data) {
                    debug!(conn = id.0, error = %e, "control stream broke protocol; closing");
                    c.h2.abort();
                    return;
                }
            }
            Ok(Read::Finished) => {
                ended = true;
                break;
            }
            Ok(Read::Blocked) | Err(_) => break,
        }
    }
    while let Some(event) = ctl.server.poll_event() {
        match event {
            EdgeControlEvent::RegisterRequested(registration) => {
                events.push_back(EdgeEvent::RegisterRequested {
                    conn: id,
                    registration,
                })
            }
            EdgeControlEvent::LocalConfiguration(config) => {
                events.push_back(EdgeEvent::LocalConfiguration { conn: id, config })
            }
            EdgeControlEvent::Unregistered => {
                if !c.unregistered {
                    c.unregistered = true;
                    events.push_back(EdgeEvent::Unregistered { conn: id })
                }
            }
            EdgeControlEvent::Aborted(reason) => {
                debug!(conn = id.0, %reason, "connector ended the RPC conversation");
            }
        }
    }
    if ended {
        debug!(conn = id.0, "control stream ended");
        let _ = c.h2.finish(ctl.stream, None);
        control_ended(id, c);
    }
}

/// The connector ended the RPC conversation. Registered, it goes on serving what is in flight
/// (cloudflared ends the control stream once it unregistered, then drains); otherwise nothing
/// can register on this connection any more, so it is closed.
fn control_ended(id: ConnId, c: &mut Conn) {
    let registered = c.registered();
    if let Some(ctl) = c.control.as_mut() {
        ctl.ended = true;
        ctl.unsent.clear();
    }
    if !registered {
        debug!(
            conn = id.0,
            "control stream ended before registration; closing"
        );
        c.h2.abort();
    }
}

/// Hands the control server's replies to h2; a peer that leaves too many unread is closed.
fn flush_control(c: &mut Conn) {
    let Some(ctl) = c.control.as_mut().filter(|ctl| !ctl.ended) else {
        return;
    };
    if let Some(bytes) = ctl.server.poll_transmit() {
        ctl.unsent.extend_from_slice(&bytes);
    }
    if ctl.unsent.is_empty() {
        return;
    }
    if ctl.unsent.len() > CONTROL_UNSENT_MAX {
        c.h2.abort();
        return;
    }
    if let Ok(n) =
        c.h2.send_data(ctl.stream, Bytes::copy_from_slice(&ctl.unsent))
    {
        ctl.unsent.drain(..n);
    }
}

#[cfg(test)]
#[path = "edge_http2_tests.rs"]
mod tests;
