//! The connector's side: TLS client, HTTP/2 server (PROTOCOL.md C§1.1). The edge opens every
//! stream; each surfaces as [`Event::Request`] with its [`RequestKind`], and the caller answers
//! with [`ConnectorConnection::respond`] (origin response), [`ConnectorConnection::respond_implicit`]
//! (control stream, configuration push) or [`ConnectorConnection::fail`] (C§1.13).
//!
//! Flushing (C§1.9) is about when bytes leave: a flushing stream's head goes out at once; an
//! unflushed head is held until the first body bytes or the end, so an empty body rides on the
//! head's END_STREAM as with Go. Body bytes are never held back: each `send_data` is one write
//! of the driver's, and Go's only coalescing (its 4 KiB write buffer) saves nothing here.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use h2::server::{self, Handshake};
use h2::Reason;
use http::{HeaderMap, StatusCode};

use super::machine::{
    connection_window, Connection, Drive, Event, IncomingRequest, Limits, Role, INITIAL_WINDOW,
    MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE, RESET_RETENTION,
};
use super::pipe::Pipe;
use super::request::RequestKind;
use super::response::{self, HeadScratch, ResponseMeta};
use super::streams::{ApiError, Stream, StreamId, Streams};
use super::tls;
use crate::quic::tls::TlsError;
use crate::receive_window::CONNECTOR_HELD_STREAMS;

/// The connector's HTTP/2 connection to the edge.
pub type ConnectorConnection = Connection<Server>;

/// HTTP/2 server state.
pub struct Server {
    state: State,
    max_streams: usize,
    scratch: HeadScratch,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("max_streams", &self.max_streams)
            .finish_non_exhaustive()
    }
}

enum State {
    Handshaking(Pin<Box<Handshake<Pipe, Bytes>>>),
    /// Boxed: h2's connection is large and lives as long as the connection.
    Serving(Box<server::Connection<Pipe, Bytes>>),
    Done,
}

impl ConnectorConnection {
    /// A connection to the edge, started at `now` (the handshake deadline runs from here):
    /// TLS toward `server_name` ([`tls::SERVER_NAME`] against Cloudflare), then HTTP/2 as
    /// cloudflared's Go server configures it.
    pub fn new(
        now: Instant,
        config: Arc<rustls::ClientConfig>,
        server_name: &str,
        limits: Limits,
    ) -> Result<Self, TlsError> {
        let session = tls::client_session(config, server_name)?;
        let pipe = Pipe::new(session.into(), limits.tls_buffer);
        let handshake = server::Builder::new()
            .max_concurrent_streams(u32::MAX)
            .initial_window_size(INITIAL_WINDOW)
            .initial_connection_window_size(connection_window(CONNECTOR_HELD_STREAMS))
            .max_frame_size(MAX_FRAME_SIZE)
            .max_header_list_size(MAX_HEADER_LIST_SIZE)
            .reset_stream_duration(RESET_RETENTION)
            .handshake(pipe.clone());
        let role = Server {
            state: State::Handshaking(Box::pin(handshake)),
            max_streams: limits.max_streams,
            scratch: HeadScratch::default(),
        };
        Ok(Connection::build(now, role, pipe, limits))
    }

    /// Answers `stream` with the origin's response (`WriteRespHeaders`, C§1.7): status (101
    /// sent as 200), serialized headers, meta `origin`. Flushes at once if the stream kind or
    /// the headers call for it (C§1.9), else the head waits for the first body bytes.
    pub fn respond(
        &mut self,
        stream: StreamId,
        status: StatusCode,
        origin_headers: &HeaderMap,
    ) -> Result<(), ApiError> {
        self.live()?;
        let head = response::origin_head(status, origin_headers, &mut self.role.scratch);
        let s = unanswered(&mut self.streams, stream)?;
        let flush = s.kind.flushes() || response::should_flush(origin_headers);
        if flush {
            let respond = s.respond.as_mut().ok_or(ApiError::UnknownStream(stream))?;
            // On failure the stream is gone; the pump reports the reset.
            if let Ok(send) = respond.send_response(head, false) {
                s.send = Some(send);
            }
        } else {
            s.deferred_head = Some(head);
        }
        s.responded = true;
        self.mark_dirty();
        Ok(())
    }

    /// Answers `stream` as Go does when the handler writes without a head (control stream,
    /// configuration push): `:status 200`, nothing else, sent with the first body bytes.
    pub fn respond_implicit(&mut self, stream: StreamId) -> Result<(), ApiError> {
        self.live()?;
        let s = unanswered(&mut self.streams, stream)?;
        s.deferred_head = Some(response::implicit_head());
        s.responded = true;
        self.mark_dirty();
        Ok(())
    }

    /// Fails `stream` as cloudflared's `WriteErrorResponse`: a 502 with `meta` and no body if
    /// nothing was answered yet, else `RST_STREAM(INTERNAL_ERROR)` (the aborted handler).
    pub fn fail(&mut self, stream: StreamId, meta: ResponseMeta) -> Result<(), ApiError> {
        self.live()?;
        let s = self.streams.get(stream)?;
        let head_sent = s.send.is_some() || (s.responded && s.deferred_head.is_none());
        if head_sent {
            return self.reset(stream, Reason::INTERNAL_ERROR);
        }
        let respond = s.respond.as_mut().ok_or(ApiError::UnknownStream(stream))?;
        s.deferred_head = None;
        s.responded = true;
        let _ = respond.send_response(response::error_head(meta), true);
        s.ended_with_head();
        self.mark_dirty();
        Ok(())
    }
}

/// The stream, if it has not been answered yet.
fn unanswered(streams: &mut Streams, id: StreamId) -> Result<&mut Stream, ApiError> {
    let s = streams.get(id)?;
    if s.responded {
        return Err(ApiError::AlreadyResponded(id));
    }
    Ok(s)
}

impl Role for Server {
    fn drive(
        &mut self,
        cx: &mut Context<'_>,
        streams: &mut Streams,
        events: &mut VecDeque<Event>,
    ) -> Drive {
        loop {
            match &mut self.state {
                State::Handshaking(handshake) => match handshake.as_mut().poll(cx) {
                    Poll::Ready(Ok(conn)) => self.state = State::Serving(Box::new(conn)),
                    Poll::Ready(Err(e)) => {
                        self.state = State::Done;
                        return Drive::Closed(Some(e));
                    }
                    Poll::Pending => return Drive::Running,
                },
                State::Serving(conn) => match conn.poll_accept(cx) {
                    Poll::Ready(Some(Ok((request, mut respond)))) => {
                        if streams.map.len() >= self.max_streams {
                            respond.send_reset(Reason::REFUSED_STREAM);
                            continue;
                        }
                        let id = StreamId::from(respond.stream_id());
                        let (head, body) = request.into_parts();
                        let ended = body.is_end_stream();
                        let kind = RequestKind::classify(&head.headers);
                        let mut stream = Stream::new(kind);
                        stream.recv = Some(body);
                        stream.respond = Some(respond);
                        streams.map.insert(id.0, stream);
                        streams.progress = true;
                        events.push_back(Event::Request(IncomingRequest {
                            stream: id,
                            kind,
                            head,
                            ended,
                        }));
                    }
                    Poll::Ready(Some(Err(e))) => {
                        self.state = State::Done;
                        return Drive::Closed(Some(e));
                    }
                    Poll::Ready(None) => {
                        self.state = State::Done;
                        return Drive::Closed(None);
                    }
                    Poll::Pending => return Drive::Running,
                },
                State::Done => return Drive::Closed(None),
            }
        }
    }

    fn ready(&self) -> bool {
        matches!(self.state, State::Serving(_))
    }

    fn shutdown(&mut self) {
        if let State::Serving(conn) = &mut self.state {
            conn.graceful_shutdown();
        }
    }
}
