//! What both roles share: TLS bytes in and out, the handshake deadline, and the pump that polls
//! h2 with a no-op waker until nothing moves.
//!
//! h2 is a futures library; here it is driven like a state machine. Every input or caller action
//! marks the machine dirty; `poll_output` then polls the connection and every stream with a
//! waker that does nothing, over and over until no plaintext moved, no event was produced and no
//! stream changed. h2 reads no clock that changes what it does (see [`Limits`]), spawns
//! nothing and has no timers, so the same inputs give the same outputs.

use std::collections::VecDeque;
use std::io;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use h2::Reason;
use thiserror::Error;

use super::pipe::Pipe;
use super::request::RequestKind;
use super::response::{ConnectorResponse, ResponseHeadError};
use super::streams::{ApiError, Read, StreamEvent, StreamId, Streams};
use bytes::Bytes;
use http::HeaderMap;

/// Rounds of polling in one pump before yielding to the caller (each round moves bytes, so this
/// only bounds the work one `poll_output` does; the rest happens on the next).
const MAX_ROUNDS: usize = 64;

/// What the driver feeds in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input<'a> {
    /// Bytes read from the TCP connection.
    Received(&'a [u8]),
    /// The TCP connection's read side ended (FIN).
    PeerClosed,
    /// The deadline of the last [`Output::Timeout`] passed.
    Timeout,
}

/// What the machine wants from the driver next.
// Events are per stream, not per packet, and moved once: not worth a box each.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Output {
    /// Something happened.
    Event(Event),
    /// Ciphertext is waiting: call `transmit` and write what it gives to the socket.
    Transmit,
    /// Nothing to do until input arrives or this deadline passes (`None`: no deadline).
    Timeout(Option<Instant>),
}

/// What the machine tells the caller.
#[derive(Debug)]
pub enum Event {
    /// TLS and the HTTP/2 preface are done; the handshake deadline is off.
    Connected,
    /// Connector role: the edge opened a stream.
    Request(IncomingRequest),
    /// Edge role: the connector answered a stream.
    Response {
        /// Which stream.
        stream: StreamId,
        /// The head, or why it cannot be read (the stream is then reset).
        response: Result<ConnectorResponse, ResponseHeadError>,
    },
    /// A stream became readable or writable, or was reset.
    Stream(StreamEvent),
    /// Edge role: the connector sent GOAWAY. It takes no new streams (h2 refuses to open
    /// them from now on); those already open go on to their end.
    GoingAway,
    /// The connection is over (`None`: cleanly) and every stream with it. Flush the last
    /// `Transmit`, then close the socket.
    Closed(Option<ConnectionError>),
}

impl From<StreamEvent> for Event {
    fn from(e: StreamEvent) -> Self {
        Event::Stream(e)
    }
}

/// A stream the edge opened toward the connector.
#[derive(Debug)]
pub struct IncomingRequest {
    /// Its id.
    pub stream: StreamId,
    /// What it is for.
    pub kind: RequestKind,
    /// Method, URI and headers as the edge sent them; [`super::request::prepare_for_origin`]
    /// makes them what cloudflared proxies, [`super::request::tcp_destination`] reads a TCP
    /// stream's destination.
    pub head: http::request::Parts,
    /// The head came with END_STREAM: the request has no body (Go's `ContentLength` 0; a
    /// body of unknown length is otherwise sent on chunked, as Go's transport does).
    pub ended: bool,
}

/// Why a connection ended, other than cleanly (the peer broke or left; never caller misuse).
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ConnectionError {
    /// TLS and the HTTP/2 preface did not complete in time (cloudflared's 15 s dial timeout).
    #[error("handshake not complete within {0:?}")]
    HandshakeTimeout(Duration),
    /// TLS failed (certificate, alert, bad record).
    #[error("TLS: {0}")]
    Tls(rustls::Error),
    /// The peer sent GOAWAY with an error code.
    #[error("peer sent GOAWAY {0}")]
    GoAway(Reason),
    /// HTTP/2 was broken (by the peer if `remote`, else detected here).
    #[error("HTTP/2 error {reason} (remote: {remote})")]
    Protocol {
        /// Error code.
        reason: Reason,
        /// Whether the peer reported it.
        remote: bool,
    },
    /// The peer closed TCP without TLS close_notify.
    #[error("connection closed without TLS close_notify")]
    Truncated,
    /// Another transport error.
    #[error("transport error: {0:?}")]
    Io(io::ErrorKind),
}

/// Bounds of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// TLS plus HTTP/2 handshake deadline from creation (cloudflared's `dialTimeout`, 15 s).
    pub handshake_timeout: Duration,
    /// Unsent ciphertext the machine holds before h2 sees its writes pending.
    pub tls_buffer: usize,
    /// Body bytes the caller may queue per stream beyond what h2 has taken.
    pub send_queue: usize,
    /// Streams open at once; past it the edge's new streams are refused (`REFUSED_STREAM`).
    pub max_streams: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: Duration::from_secs(15),
            tls_buffer: 256 * 1024,
            send_queue: 256 * 1024,
            max_streams: 10_000,
        }
    }
}

/// h2's windows and limits as cloudflared's Go server sets them (PROTOCOL.md C§1.3). The reset
/// retention is by count only: h2 forgets locally reset streams after a wall-clock duration,
/// which would make the machine depend on a clock; with `Duration::MAX` only the count evicts.
pub(crate) const INITIAL_WINDOW: u32 = 1 << 20;
pub(crate) const MAX_FRAME_SIZE: u32 = 1 << 20;
pub(crate) const MAX_HEADER_LIST_SIZE: u32 = (1 << 20) + 320;
pub(crate) const RESET_RETENTION: Duration = Duration::MAX;

/// The connection window: one stream window for the streams that read, plus one per held
/// stream ([`crate::receive_window`]; HTTP/2's window is at most 2^31 - 1).
pub(crate) fn connection_window(held: u32) -> u32 {
    let window = crate::receive_window::connection_window(
        u64::from(INITIAL_WINDOW),
        u64::from(INITIAL_WINDOW),
        held,
    );
    u32::try_from(window.min((1 << 31) - 1)).unwrap_or(INITIAL_WINDOW)
}

/// How one role drives its h2 connection.
pub(crate) trait Role {
    /// Polls the connection (and role-specific stream parts) once.
    fn drive(
        &mut self,
        cx: &mut Context<'_>,
        streams: &mut Streams,
        events: &mut VecDeque<Event>,
    ) -> Drive;
    /// Whether the HTTP/2 handshake is done.
    fn ready(&self) -> bool;
    /// Starts a graceful shutdown (GOAWAY / no new streams).
    fn shutdown(&mut self);
}

/// What driving the connection found.
pub(crate) enum Drive {
    /// Still running.
    Running,
    /// Over; `Some` with the error unless it ended cleanly.
    Closed(Option<h2::Error>),
}

/// One HTTP/2-over-TLS connection of either role.
#[derive(Debug)]
pub struct Connection<R> {
    pub(crate) role: R,
    pipe: Pipe,
    pub(crate) streams: Streams,
    pub(crate) events: VecDeque<Event>,
    limits: Limits,
    deadline: Option<Instant>,
    connected: bool,
    closed: bool,
    dirty: bool,
}

// `Role` is crate-private on purpose: the two roles here are the only ones.
#[allow(private_bounds)]
impl<R: Role> Connection<R> {
    pub(crate) fn build(now: Instant, role: R, pipe: Pipe, limits: Limits) -> Self {
        Connection {
            role,
            pipe,
            streams: Streams::new(limits.send_queue),
            events: VecDeque::new(),
            limits,
            deadline: Some(now + limits.handshake_timeout),
            connected: false,
            closed: false,
            dirty: true,
        }
    }

    /// Feeds input. For [`Input::Received`] returns how many bytes were taken: fewer than given
    /// when the machine must transmit first (TCP backpressure); offer the rest after transmitting.
    pub fn handle_input(&mut self, now: Instant, input: Input<'_>) -> usize {
        self.dirty = true;
        match input {
            Input::Received(data) => self.receive(data),
            Input::PeerClosed => {
                self.pipe.lock().peer_closed();
                self.pump();
                0
            }
            Input::Timeout => {
                self.check_deadline(now);
                0
            }
        }
    }

    fn receive(&mut self, data: &[u8]) -> usize {
        let mut taken = 0;
        loop {
            let before = taken;
            {
                let mut tls = self.pipe.lock();
                while taken < data.len() && tls.session.wants_read() && tls.error.is_none() {
                    match tls.session.read_tls(&mut &data[taken..]) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => taken += n,
                    }
                    if let Err(e) = tls.session.process_new_packets() {
                        tls.error = Some(e);
                    }
                }
            }
            self.pump();
            if self.closed || taken == data.len() || taken == before {
                // After a TLS failure the rest is of no use: take it all.
                return if self.closed { data.len() } else { taken };
            }
        }
    }

    /// The next thing to do. Call until it returns [`Output::Timeout`].
    pub fn poll_output(&mut self, now: Instant) -> Output {
        if self.dirty {
            self.pump();
        }
        self.check_deadline(now);
        if let Some(e) = self.events.pop_front() {
            return Output::Event(e);
        }
        if self.pipe.lock().session.wants_write() {
            return Output::Transmit;
        }
        Output::Timeout(self.deadline)
    }

    /// Writes waiting ciphertext into `buf`; returns how many bytes to send.
    pub fn transmit(&mut self, buf: &mut [u8]) -> usize {
        let mut tls = self.pipe.lock();
        let mut out = &mut buf[..];
        let mut written = 0;
        while tls.session.wants_write() && !out.is_empty() {
            match tls.session.write_tls(&mut out) {
                Ok(0) | Err(_) => break,
                Ok(n) => written += n,
            }
        }
        drop(tls);
        // Room in the TLS buffer may unblock h2's writes.
        self.dirty = true;
        written
    }

    /// Whether ciphertext is waiting for [`Connection::transmit`].
    pub(crate) fn wants_transmit(&self) -> bool {
        self.pipe.lock().session.wants_write()
    }

    /// Whether the connection is over and everything has been transmitted.
    pub fn is_closed(&self) -> bool {
        self.closed && !self.pipe.lock().session.wants_write()
    }

    /// Graceful shutdown: connector sends GOAWAY, edge opens no more streams; the connection
    /// ends once the open streams do.
    pub fn shutdown(&mut self) {
        self.role.shutdown();
        self.dirty = true;
    }

    /// Ends the connection now, every stream with it (TLS close_notify, no GOAWAY): for a peer
    /// that broke a rule above HTTP/2 or never registered. `Closed(None)` follows.
    pub fn abort(&mut self) {
        self.close(None);
    }

    /// Pulls the next body bytes of `stream` (credit goes back to the peer as bytes are read).
    /// After `Closed`, a stream whose answer arrived complete stays readable to its end.
    pub fn read(&mut self, stream: StreamId) -> Result<Read, ApiError> {
        if self.closed && self.streams.map.is_empty() {
            return Err(ApiError::Closed);
        }
        self.dirty = true;
        self.streams
            .read(&mut Context::from_waker(Waker::noop()), stream)
    }

    /// Queues body bytes; returns how many were taken (a short count: wait for `Writable`).
    pub fn send_data(&mut self, stream: StreamId, data: Bytes) -> Result<usize, ApiError> {
        self.live()?;
        self.dirty = true;
        self.streams.send_data(stream, data)
    }

    /// Ends our side of `stream` after what is queued, with trailers if given.
    pub fn finish(
        &mut self,
        stream: StreamId,
        trailers: Option<HeaderMap>,
    ) -> Result<(), ApiError> {
        self.live()?;
        self.dirty = true;
        self.streams.finish(stream, trailers)
    }

    /// Resets `stream` with `reason` and forgets it.
    pub fn reset(&mut self, stream: StreamId, reason: Reason) -> Result<(), ApiError> {
        self.live()?;
        self.dirty = true;
        self.streams.reset(stream, reason)
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.streams.map.len()
    }

    /// Whether `stream` is known: open, or (after `Closed`) holding an answer to read.
    pub fn has_stream(&self, stream: StreamId) -> bool {
        self.streams.map.contains_key(&stream.0)
    }

    /// Plaintext rustls decrypted that h2 has not read yet.
    #[cfg(test)]
    pub(crate) fn unread_plaintext(&self) -> usize {
        let mut tls = self.pipe.lock();
        // With no new input this only reports.
        tls.session
            .process_new_packets()
            .map_or(0, |s| s.plaintext_bytes_to_read())
    }

    pub(crate) fn live(&self) -> Result<(), ApiError> {
        if self.closed {
            Err(ApiError::Closed)
        } else {
            Ok(())
        }
    }

    pub(crate) fn limits(&self) -> Limits {
        self.limits
    }

    /// The handshake deadline while it runs (what [`Output::Timeout`] carries).
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    pub(crate) fn connected(&self) -> bool {
        self.connected
    }

    pub(crate) fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    fn check_deadline(&mut self, now: Instant) {
        if let Some(deadline) = self.deadline {
            if !self.closed && now >= deadline {
                self.close(Some(ConnectionError::HandshakeTimeout(
                    self.limits.handshake_timeout,
                )));
            }
        }
    }

    fn pump(&mut self) {
        self.dirty = false;
        if self.closed {
            return;
        }
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..MAX_ROUNDS {
            let before = (self.pipe.lock().moved, self.events.len());
            self.streams.progress = false;
            let tls_error = self.pipe.lock().error.clone();
            if let Some(e) = tls_error {
                self.close(Some(ConnectionError::Tls(e)));
                return;
            }
            if let Drive::Closed(e) = self
                .role
                .drive(&mut cx, &mut self.streams, &mut self.events)
            {
                let error = e.map(|e| self.connection_error(&e)).unwrap_or(None);
                self.close(error);
                return;
            }
            if !self.connected && self.role.ready() && !self.pipe.lock().session.is_handshaking() {
                self.connected = true;
                self.deadline = None;
                self.events.push_back(Event::Connected);
            }
            self.streams.pump(&mut cx, &mut self.events);
            let after = (self.pipe.lock().moved, self.events.len());
            if before == after && !self.streams.progress {
                return;
            }
        }
        // Work left: do it on the next poll.
        self.dirty = true;
    }

    /// The typed reason of an h2 failure (`None`: the peer said goodbye cleanly).
    fn connection_error(&self, e: &h2::Error) -> Option<ConnectionError> {
        if let Some(tls) = self.pipe.lock().error.clone() {
            return Some(ConnectionError::Tls(tls));
        }
        if let Some(io) = e.get_io() {
            return Some(match io.kind() {
                io::ErrorKind::UnexpectedEof => ConnectionError::Truncated,
                kind => ConnectionError::Io(kind),
            });
        }
        let reason = e.reason().unwrap_or(Reason::INTERNAL_ERROR);
        if e.is_go_away() && e.is_remote() {
            return (reason != Reason::NO_ERROR).then_some(ConnectionError::GoAway(reason));
        }
        Some(ConnectionError::Protocol {
            reason,
            remote: e.is_remote(),
        })
    }

    fn close(&mut self, error: Option<ConnectionError>) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.deadline = None;
        self.streams
            .settle(&mut Context::from_waker(Waker::noop()), &mut self.events);
        let mut tls = self.pipe.lock();
        if tls.error.is_none() {
            tls.session.send_close_notify();
        }
        drop(tls);
        self.events.push_back(Event::Closed(error));
    }
}
