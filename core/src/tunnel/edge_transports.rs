//! Both transports of the edge behind one set of calls: connectors on QUIC
//! ([`EdgeEndpoint`]) and on HTTP/2 over TCP ([`Http2Edge`]) share one id space, so routing
//! picks a [`ConnId`] and the request goes out on whichever transport holds it.

use std::time::Instant;

use bytes::Bytes;

use super::edge::{ConnId, EdgeEndpoint, EdgeEvent};
use super::edge_http2::Http2Edge;
use super::BodySink;
use crate::control::{ApiError, ConnectionDetails, RegistrationError};
use crate::http2;
use crate::stream::connect::ConnectRequest;

/// A request stream on either transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DataStream {
    /// A QUIC bidirectional stream.
    Quic(quinn_proto::StreamId),
    /// An HTTP/2 stream.
    Http2(http2::StreamId),
}

/// The edge's QUIC endpoint and HTTP/2 connections.
pub struct EdgeTransports {
    /// Connectors on QUIC.
    pub quic: EdgeEndpoint,
    /// Connectors on HTTP/2.
    pub http2: Http2Edge,
}

impl EdgeTransports {
    /// The next event of either transport (QUIC's first).
    pub fn poll_event(&mut self) -> Option<EdgeEvent<DataStream>> {
        if let Some(e) = self.quic.poll_event() {
            return Some(e.map_stream(DataStream::Quic));
        }
        self.http2
            .poll_event()
            .map(|e| e.map_stream(DataStream::Http2))
    }

    /// Whether `conn` is on HTTP/2 (which carries no datagrams).
    pub fn is_http2(&self, conn: ConnId) -> bool {
        self.http2.contains(conn)
    }

    /// Answers a pending registration on `conn`.
    pub fn respond_registration(
        &mut self,
        now: Instant,
        conn: ConnId,
        result: Result<ConnectionDetails, RegistrationError>,
    ) -> Result<(), ApiError> {
        if self.is_http2(conn) {
            self.http2.respond_registration(now, conn, result)
        } else {
            self.quic.respond_registration(now, conn, result)
        }
    }

    /// Opens a request stream on `conn`.
    pub fn open_request(
        &mut self,
        now: Instant,
        conn: ConnId,
        request: &ConnectRequest<'_>,
    ) -> Result<DataStream, ApiError> {
        if self.is_http2(conn) {
            self.http2
                .open_request(now, conn, request)
                .map(DataStream::Http2)
        } else {
            self.quic
                .open_request(now, conn, request)
                .map(DataStream::Quic)
        }
    }

    /// Queues request-body bytes, keeping at most `window` unsent per stream; returns how
    /// many were taken.
    pub fn send_request_body(
        &mut self,
        now: Instant,
        conn: ConnId,
        stream: DataStream,
        bytes: &Bytes,
        window: usize,
    ) -> Result<usize, ApiError> {
        match stream {
            DataStream::Quic(s) => self.quic.send_request_body(now, conn, s, bytes, window),
            // The HTTP/2 machine bounds its queue itself.
            DataStream::Http2(s) => self.http2.send_request_body(now, conn, s, bytes.clone()),
        }
    }

    /// Ends the request body.
    pub fn finish_request(
        &mut self,
        now: Instant,
        conn: ConnId,
        stream: DataStream,
    ) -> Result<(), ApiError> {
        match stream {
            DataStream::Quic(s) => self.quic.finish_request(now, conn, s),
            DataStream::Http2(s) => self.http2.finish_request(now, conn, s),
        }
    }

    /// Makes room in `conn`'s receive window for `held` streams whose eyeballs take nothing
    /// (QUIC; HTTP/2's window has that room from the start, see [`crate::receive_window`]).
    pub fn hold(&mut self, conn: ConnId, held: u32) {
        if !self.is_http2(conn) {
            self.quic.hold(conn, held);
        }
    }

    /// Abandons a request.
    pub fn reset_request(
        &mut self,
        now: Instant,
        conn: ConnId,
        stream: DataStream,
    ) -> Result<(), ApiError> {
        match stream {
            DataStream::Quic(s) => self.quic.reset_request(now, conn, s),
            DataStream::Http2(s) => self.http2.reset_request(now, conn, s),
        }
    }

    /// Reads up to `max` response-body bytes into `sink`, as the pieces the transport holds
    /// them in (uncopied); true once the body is complete.
    pub fn read_response(
        &mut self,
        now: Instant,
        conn: ConnId,
        stream: DataStream,
        max: usize,
        sink: &mut impl BodySink,
    ) -> Result<bool, ApiError> {
        match stream {
            DataStream::Quic(s) => self.quic.read_response(now, conn, s, max, sink),
            DataStream::Http2(s) => self.http2.read_response(now, conn, s, max, sink),
        }
    }

    /// Closes every connection of both transports.
    pub fn close_all(&mut self, now: Instant, reason: &str) {
        self.quic.close_all(now, reason);
        self.http2.close_all(now);
    }

    /// Closes connection `conn`, on whichever transport holds it, because its connector
    /// abandoned it: it is reported closed now, not after QUIC's closing period.
    pub fn close(&mut self, now: Instant, conn: ConnId, reason: &str) {
        if self.is_http2(conn) {
            self.http2.close(now, conn);
        } else {
            self.quic.close(now, conn, reason);
        }
    }

    /// When `handle_timeout` of either transport must be called next.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        [self.quic.poll_timeout(), self.http2.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Lets both transports' timers fire.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.quic.handle_timeout(now);
        self.http2.handle_timeout(now);
    }
}
