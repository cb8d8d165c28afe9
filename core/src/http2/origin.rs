//! HTTP/2 to an origin (`originRequest.http2Origin`, Go's `ForceAttemptHTTP2` in cloudflared):
//! once an origin's TLS handshake picked ALPN `h2`, [`Http2Origin`] stands between the
//! connector's HTTP/1.1 flow and the origin. The connector writes HTTP/1.1 requests and reads
//! HTTP/1.1 responses as from any origin; this machine sends each request on one HTTP/2
//! connection (the TLS session the driver handed over) and writes each response back as
//! HTTP/1.1. Keep-alive on the flow reuses the connection, one exchange at a time, as the
//! connector's pool uses an origin connection.
//!
//! Both drivers run it (burrow-mio on its loop, burrow-tokio in each flow's task), so both
//! daemons speak HTTP/2 to origins the same way: `Host` becomes the
//! `:authority` of an `https` URI (Go's transport sends no `Host` header on HTTP/2 either),
//! connection-specific headers are dropped (RFC 9113 §8.2.2; `TE` only as `trailers`), a
//! response body without `Content-Length` is sent chunked, trailers are dropped (the connector
//! drops them too). A request body of no known length (`disableChunkedEncoding`, which goes
//! bare over HTTP/1.1) reaches the bridge chunked, framed so by the connector once the driver
//! says the origin chose HTTP/2 (`stream::proxy::DataStream::on_origin_http2`), and goes out as
//! DATA frames ended by END_STREAM, as Go's transport sends it. Flow control is the shared machine's: credit goes back to the origin only
//! as the connector reads, and request bodies go out as the origin's windows open.
//!
//! Like the tunnel's machines this is bytes in and out: ciphertext from the socket
//! ([`Http2Origin::received`]), ciphertext to it ([`Http2Origin::transmit`]), the flow's
//! requests ([`Http2Origin::write`]) and responses ([`Http2Origin::read`]), and time
//! ([`Http2Origin::poll_timeout`], [`Http2Origin::handle_timeout`]). Drivers run it through
//! [`Http2Flow`], which keeps the order of those calls and the bytes in transit, so a driver
//! only moves bytes between it and the socket.
//!
//! Timers are those of Go's HTTP/2 transport as cloudflared configures it (`newHTTPTransport`:
//! `IdleConnTimeout` = `originRequest.keepAliveTimeout`, no `HTTP2` config): a connection with
//! no request under way for the keep-alive timeout is closed (TLS close_notify and TCP close,
//! no GOAWAY, as Go's `closeIfIdle`), which ends the flow. Go sends no PINGs there: its health
//! check runs only with `ReadIdleTimeout` set, which cloudflared leaves at 0 (so
//! `PingTimeout`'s 15 s default never applies). A dead origin is found as in cloudflared, by
//! TCP keep-alive (`originRequest.tcpKeepAlive`, which both drivers set on the socket).

use std::collections::VecDeque;
use std::task::Context;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::Reason;
use http::header::{HeaderName, CONTENT_LENGTH, HOST, TE};
use http::{HeaderValue, Method, Request, Uri};
use thiserror::Error;
use tracing::debug;

use super::client::{self, ClientState, Step};
use super::machine::{Connection, ConnectionError, Drive, Event, Input, Limits, Output, Role};
use super::pipe::Pipe;
use super::request::RequestKind;
use super::streams::{reason_of, Read, Stream, StreamEvent, StreamId, Streams};
use crate::receive_window::CONNECTOR_HELD_STREAMS;
use crate::stream::http1::{write_chunk, BodyReader, Framing, LAST_CHUNK, MAX_HEAD_BYTES};

mod flow;
pub use flow::{BridgeReport, Http2Flow, SocketRead};

/// Request header lines read from the connector.
const MAX_HEADERS: usize = 256;
/// Request body bytes decoded per step: what is held beyond the stream's send queue.
const BODY_STEP: usize = 64 * 1024;
/// Headers HTTP/2 forbids on a request or response (RFC 9113 §8.2.2).
const CONNECTION_SPECIFIC: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

/// The HTTP/2 client role toward an origin (the edge's role is [`super::edge::Client`], which
/// speaks cloudflared's conventions; this one speaks plain HTTP/2).
pub struct OriginClient {
    state: ClientState,
    /// Response heads that arrived, in order, until the bridge takes them.
    heads: VecDeque<(StreamId, http::response::Parts, bool)>,
}

impl std::fmt::Debug for OriginClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OriginClient").finish_non_exhaustive()
    }
}

impl Role for OriginClient {
    fn drive(
        &mut self,
        cx: &mut Context<'_>,
        streams: &mut Streams,
        events: &mut VecDeque<Event>,
    ) -> Drive {
        let drive = match self.state.step(cx) {
            Step::Handshaking => return Drive::Running,
            Step::Closed(e) => return Drive::Closed(e),
            // Heads that came with the end are still delivered.
            Step::Ended(e) => Drive::Closed(e),
            Step::Running => Drive::Running,
        };
        let heads = &mut self.heads;
        client::poll_heads(cx, streams, events, |stream, s, head, body, _| {
            heads.push_back((stream, head, body.is_end_stream()));
            s.recv = Some(body);
            true
        });
        drive
    }

    fn ready(&self) -> bool {
        self.state.ready()
    }

    fn shutdown(&mut self) {
        self.state.shutdown();
    }
}

/// Why the HTTP/2 origin connection cannot carry the flow any further.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum Http2OriginError {
    /// The connector's request is not HTTP/1.1 this bridge can express in HTTP/2.
    #[error("request not expressible in HTTP/2: {0}")]
    Request(&'static str),
    /// The origin reset the exchange's stream.
    #[error("HTTP/2 origin reset the stream: {0}")]
    Reset(Reason),
    /// The connection ended during an exchange.
    #[error("HTTP/2 origin connection ended: {0}")]
    Connection(ConnectionError),
    /// The connection ended cleanly during an exchange.
    #[error("HTTP/2 origin connection ended during a request")]
    Ended,
}

/// What the connector's next read of the flow gives.
#[derive(Debug, Clone, PartialEq)]
pub enum FlowRead {
    /// HTTP/1.1 response bytes.
    Data(Bytes),
    /// Nothing now: read again after the next input.
    Blocked,
    /// The connection is over between exchanges: the flow ends (the pool drops it).
    End,
    /// The exchange broke: fail the flow.
    Failed(Http2OriginError),
}

/// Where the response of the exchange is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Response {
    /// Waiting for its head.
    Head,
    /// Its body, passed through as is (`Content-Length`) or chunked.
    Body { chunked: bool },
    /// Complete.
    Done,
}

/// One request and its response.
#[derive(Debug)]
struct Exchange {
    stream: StreamId,
    is_head: bool,
    /// The request body still coming from the connector (`None`: it is complete).
    body: Option<BodyReader>,
    /// Request body bytes decoded but not yet taken by the stream's send queue.
    pending: Option<Bytes>,
    /// END_STREAM still to be queued after `pending`.
    fin: bool,
    /// The stream is gone (reset or complete): request bytes left are dropped.
    gone: bool,
    response: Response,
}

/// The HTTP/1.1 ↔ HTTP/2 bridge over one origin connection (see the module doc).
#[derive(Debug)]
pub struct Http2Origin {
    conn: Connection<OriginClient>,
    /// Request bytes taken while no exchange is under way: the next head.
    head: Vec<u8>,
    /// Request body bytes taken, not yet decoded (a chunk-size line may be partial).
    raw: Vec<u8>,
    exchange: Option<Exchange>,
    /// HTTP/1.1 bytes for the connector.
    out: VecDeque<Bytes>,
    failed: Option<Http2OriginError>,
    /// The connection ended (with its error, if any).
    closed: Option<Option<ConnectionError>>,
    /// `originRequest.keepAliveTimeout` (zero: none, as Go's `IdleConnTimeout`).
    idle_timeout: Duration,
    /// Since when no request is under way (`None`: one is, or its head is arriving).
    idle_since: Option<Instant>,
}

impl Http2Origin {
    /// Takes over `session`, a TLS session to the origin whose handshake chose ALPN `h2`
    /// (plaintext it already decrypted is read first), at `now`; the connection closes once
    /// idle for `idle_timeout` (the rule's `keepAliveTimeout`; zero: never).
    pub fn new(now: Instant, session: rustls::ClientConnection, idle_timeout: Duration) -> Self {
        let limits = Limits::default();
        let pipe = Pipe::new(session.into(), limits.tls_buffer);
        let role = OriginClient {
            state: ClientState::handshake(pipe.clone(), CONNECTOR_HELD_STREAMS),
            heads: VecDeque::new(),
        };
        Http2Origin {
            conn: Connection::build(now, role, pipe, limits),
            head: Vec::new(),
            raw: Vec::new(),
            exchange: None,
            out: VecDeque::new(),
            failed: None,
            closed: None,
            idle_timeout,
            // Go's transport starts the idle timer as the connection is made.
            idle_since: Some(now),
        }
    }

    /// When [`Http2Origin::handle_timeout`] has work: the HTTP/2 handshake's deadline, or
    /// the end of the idle time (`None`: nothing to wait for).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let idle = self
            .idle_since
            .filter(|_| !self.idle_timeout.is_zero() && self.closed.is_none())
            .map(|t| t + self.idle_timeout);
        [self.conn.deadline(), idle].into_iter().flatten().min()
    }

    /// Acts on deadlines passed at `now`: an unfinished handshake ends the connection, and so
    /// does the idle time (the flow then ends: [`FlowRead::End`]).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.conn.handle_input(now, Input::Timeout);
        let idle_end = self.idle_since.map(|t| t + self.idle_timeout);
        if !self.idle_timeout.is_zero()
            && self.closed.is_none()
            && idle_end.is_some_and(|end| now >= end)
        {
            debug!(idle = ?self.idle_timeout, "closing the idle HTTP/2 origin connection");
            self.conn.abort();
        }
        self.settle(now);
    }

    /// Starts or stops the idle time: idle while no exchange is under way and no request head
    /// has begun (Go's `closeIfIdle` spares a connection with a stream open or reserved).
    fn track_idle(&mut self, now: Instant) {
        if self.exchange.is_none() && self.head.is_empty() {
            self.idle_since.get_or_insert(now);
        } else {
            self.idle_since = None;
        }
    }

    /// Ciphertext read from the origin; returns how many bytes were taken (fewer when the
    /// machine must transmit first: offer the rest after [`Http2Origin::transmit`]).
    pub fn received(&mut self, now: Instant, data: &[u8]) -> usize {
        let n = self.conn.handle_input(now, Input::Received(data));
        self.settle(now);
        self.process();
        self.settle(now);
        self.track_idle(now);
        n
    }

    /// The origin's TCP read side ended.
    pub fn peer_closed(&mut self, now: Instant) {
        self.conn.handle_input(now, Input::PeerClosed);
        self.settle(now);
    }

    /// Writes ciphertext for the origin into `buf`; 0 when there is none.
    pub fn transmit(&mut self, now: Instant, buf: &mut [u8]) -> usize {
        self.settle(now);
        if !self.conn.wants_transmit() {
            return 0;
        }
        self.conn.transmit(buf)
    }

    /// The connector's request bytes; returns how many were taken. A short count means the
    /// rest waits: for the origin's windows, or for this exchange's response to end before
    /// the next request starts. Offer the rest again after input or a read.
    pub fn write(&mut self, now: Instant, data: &[u8]) -> Result<usize, Http2OriginError> {
        self.settle(now);
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        // Bytes are taken whole into the head or the body's framing buffer (a chunk-size line
        // may end in the next write), each bounded.
        let (buf, room) = match &self.exchange {
            None => (&mut self.head, MAX_HEAD_BYTES),
            Some(x) if x.body.is_some() => (&mut self.raw, BODY_STEP),
            // The next request waits until this response is over.
            Some(_) => return Ok(0),
        };
        let take = data.len().min(room.saturating_sub(buf.len()));
        buf.extend_from_slice(&data[..take]);
        self.process();
        self.settle(now);
        self.track_idle(now);
        match &self.failed {
            Some(e) => Err(e.clone()),
            None => Ok(take),
        }
    }

    /// The connector ends the flow (its FIN): no more requests; the connection goes once the
    /// exchange under way is over.
    pub fn shutdown(&mut self, now: Instant) {
        self.conn.shutdown();
        self.settle(now);
    }

    /// The next response bytes for the connector.
    pub fn read(&mut self, now: Instant) -> FlowRead {
        let read = self.read_on(now);
        self.track_idle(now);
        read
    }

    fn read_on(&mut self, now: Instant) -> FlowRead {
        self.settle(now);
        loop {
            if let Some(b) = self.out.pop_front() {
                return FlowRead::Data(b);
            }
            if let Some(e) = &self.failed {
                return FlowRead::Failed(e.clone());
            }
            let Some(x) = self.exchange.as_mut() else {
                return if self.closed.is_some() {
                    FlowRead::End
                } else {
                    FlowRead::Blocked
                };
            };
            match x.response {
                Response::Head => {
                    let heads = &mut self.conn.role.heads;
                    let Some(i) = heads.iter().position(|(s, ..)| *s == x.stream) else {
                        return self.blocked();
                    };
                    let (_, head, ended) = heads.remove(i).unwrap_or_else(|| unreachable!());
                    let mut buf = Vec::with_capacity(256);
                    let chunked = write_head(&head, ended, x.is_head, &mut buf);
                    self.out.push_back(Bytes::from(buf));
                    let bodiless = x.is_head || no_body(head.status.as_u16());
                    if bodiless && !ended {
                        // Nothing of it is relayed: stop it instead of holding its credit.
                        let _ = self.conn.reset(x.stream, Reason::CANCEL);
                        x.gone = true;
                    }
                    x.response = if ended || bodiless {
                        Response::Done
                    } else {
                        Response::Body { chunked }
                    };
                }
                Response::Body { chunked } => match self.conn.read(x.stream) {
                    Ok(Read::Data(data)) if chunked => {
                        let mut buf = Vec::with_capacity(data.len() + 16);
                        write_chunk(&mut buf, &data);
                        self.out.push_back(Bytes::from(buf));
                    }
                    Ok(Read::Data(data)) => self.out.push_back(data),
                    Ok(Read::Finished) => {
                        if chunked {
                            self.out.push_back(Bytes::from_static(LAST_CHUNK));
                        }
                        x.response = Response::Done;
                    }
                    Ok(Read::Blocked) => return self.blocked(),
                    Err(_) => {
                        let e = self.broken();
                        self.failed = Some(e.clone());
                    }
                },
                Response::Done => {
                    if x.body.is_some() || x.pending.is_some() || x.fin {
                        // The origin answered before the request ended; the rest of the
                        // request is still taken (and dropped once the stream is gone).
                        return FlowRead::Blocked;
                    }
                    // Whatever h2 still holds of the stream goes with the exchange.
                    self.conn.streams.map.remove(&x.stream.0);
                    self.exchange = None;
                    // A request taken meanwhile starts now.
                    self.process();
                }
            }
            self.settle(now);
        }
    }

    /// Blocked, unless the connection ended under the exchange.
    fn blocked(&mut self) -> FlowRead {
        if self.closed.is_some() {
            let e = self.broken();
            self.failed = Some(e.clone());
            return FlowRead::Failed(e);
        }
        FlowRead::Blocked
    }

    /// Why the exchange under way cannot finish.
    fn broken(&self) -> Http2OriginError {
        match &self.closed {
            Some(Some(e)) => Http2OriginError::Connection(e.clone()),
            _ => Http2OriginError::Ended,
        }
    }

    /// Takes events; a reset of the exchange's stream fails it.
    fn settle(&mut self, now: Instant) {
        loop {
            match self.conn.poll_output(now) {
                Output::Event(Event::Closed(e)) => self.closed = Some(e),
                Output::Event(Event::Stream(StreamEvent::Reset { stream, reason })) => {
                    if let Some(x) = self.exchange.as_mut().filter(|x| x.stream == stream) {
                        x.gone = true;
                        x.pending = None;
                        x.fin = false;
                        if x.response != Response::Done {
                            self.failed = Some(Http2OriginError::Reset(reason));
                        }
                    }
                }
                Output::Event(_) => {}
                Output::Transmit | Output::Timeout(_) => return,
            }
        }
    }

    /// Moves taken request bytes on: a whole head opens a stream, body bytes are decoded and
    /// queued on it as far as its send queue goes. Errors fail the flow.
    fn process(&mut self) {
        while self.failed.is_none() {
            let moved = match self.exchange.as_mut() {
                None if self.head.is_empty() => false,
                None => match self.open() {
                    Ok(opened) => opened,
                    Err(e) => {
                        self.failed = Some(e);
                        false
                    }
                },
                Some(x) => {
                    if !flush_body(&mut self.conn, x) {
                        return;
                    }
                    let Some(reader) = x.body.as_mut() else {
                        return;
                    };
                    let mut out = Vec::new();
                    let Ok(used) = reader.read(&self.raw, &mut out, BODY_STEP) else {
                        self.failed = Some(Http2OriginError::Request("bad request body framing"));
                        return;
                    };
                    self.raw.drain(..used);
                    let done = reader.is_done();
                    if done {
                        x.body = None;
                        x.fin = true;
                        // Whatever follows is the next request's.
                        self.head = std::mem::take(&mut self.raw);
                    }
                    if !out.is_empty() {
                        x.pending = Some(Bytes::from(out));
                    }
                    flush_body(&mut self.conn, x);
                    used > 0 || done
                }
            };
            if !moved {
                return;
            }
        }
    }

    /// Opens the stream of the request whose head is in `head`, once it is whole and the
    /// connection takes a stream; true if it did.
    fn open(&mut self) -> Result<bool, Http2OriginError> {
        if self.closed.is_some() {
            return Err(self.broken());
        }
        if !self.conn.connected() {
            return Ok(false);
        }
        let Some(send) = self.conn.role.state.sender() else {
            return Err(self.broken());
        };
        if send
            .poll_ready(&mut Context::from_waker(std::task::Waker::noop()))
            .is_pending()
        {
            return Ok(false);
        }
        let Some((request, framing, end)) = parse_request(&self.head)? else {
            return Ok(false);
        };
        let is_head = request.method() == Method::HEAD;
        let end_stream = matches!(framing, Framing::Empty | Framing::Length(0));
        let (response, body) = send
            .send_request(request, end_stream)
            .map_err(|e| Http2OriginError::Reset(reason_of(&e)))?;
        // What follows the head is its body (or, without one, the next request).
        let rest = self.head.split_off(end);
        self.head.clear();
        if end_stream {
            self.head = rest;
        } else {
            self.raw = rest;
        }
        let stream = StreamId::from(body.stream_id());
        let mut s = Stream::new(RequestKind::Http);
        s.response = Some(response);
        s.send = Some(body);
        if end_stream {
            s.ended_with_head();
        }
        self.conn.streams.map.insert(stream.0, s);
        self.conn.mark_dirty();
        self.exchange = Some(Exchange {
            stream,
            is_head,
            body: (!end_stream).then(|| BodyReader::new(framing)),
            pending: None,
            fin: false,
            gone: false,
            response: Response::Head,
        });
        Ok(true)
    }
}

/// Queues the exchange's decoded body (and its end) on its stream; true once nothing waits.
fn flush_body(conn: &mut Connection<OriginClient>, x: &mut Exchange) -> bool {
    if x.gone {
        x.pending = None;
        x.fin = false;
        return true;
    }
    if let Some(mut data) = x.pending.take() {
        match conn.send_data(x.stream, data.clone()) {
            Ok(n) if n < data.len() => {
                x.pending = Some(data.split_off(n));
                return false;
            }
            Ok(_) => {}
            // The stream is gone: what is left of the request is dropped.
            Err(_) => {
                x.gone = true;
                x.fin = false;
                return true;
            }
        }
    }
    if x.fin {
        x.fin = false;
        if conn.finish(x.stream, None).is_err() {
            x.gone = true;
        }
    }
    true
}

/// The HTTP/2 request for the HTTP/1.1 head at the start of `buf`, how its body is framed and
/// where the head ends; `None` while the head is incomplete (and shorter than
/// [`MAX_HEAD_BYTES`]).
pub fn parse_request(
    buf: &[u8],
) -> Result<Option<(Request<()>, Framing, usize)>, Http2OriginError> {
    let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut lines);
    let end = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(end)) => end,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => return Ok(None),
        Ok(httparse::Status::Partial) => return Err(Http2OriginError::Request("head too long")),
        Err(_) => return Err(Http2OriginError::Request("malformed head")),
    };
    let (request, framing) = as_http2(&parsed)?;
    Ok(Some((request, framing, end)))
}

/// The HTTP/1.1 head of an HTTP/2 request as [`parse_request`] reads it back (its `Host` from
/// the `:authority`; `Transfer-Encoding: chunked` for [`Framing::Chunked`]).
pub fn write_request_head(request: &Request<()>, framing: Framing, out: &mut Vec<u8>) {
    out.extend_from_slice(request.method().as_str().as_bytes());
    out.push(b' ');
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    let authority = request.uri().authority().map_or("", |a| a.as_str());
    out.extend_from_slice(authority.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in request.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if framing == Framing::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The HTTP/2 request for an HTTP/1.1 head, and how its body is framed.
fn as_http2(
    parsed: &httparse::Request<'_, '_>,
) -> Result<(Request<()>, Framing), Http2OriginError> {
    let method = parsed
        .method
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
        .ok_or(Http2OriginError::Request("bad method"))?;
    let target = parsed.path.unwrap_or("/");
    let mut request = Request::new(());
    *request.method_mut() = method;
    let mut authority = None;
    let mut framing = Framing::Empty;
    // Headers the `Connection` header names are connection-specific too.
    let named: Vec<String> = parsed
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .collect();
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| Http2OriginError::Request("bad header name"))?;
        if name == http::header::TRANSFER_ENCODING {
            if h.value.eq_ignore_ascii_case(b"chunked") {
                framing = Framing::Chunked;
            } else {
                return Err(Http2OriginError::Request(
                    "transfer coding other than chunked",
                ));
            }
            continue;
        }
        if CONNECTION_SPECIFIC.contains(&name.as_str()) || named.iter().any(|n| n == name.as_str())
        {
            continue;
        }
        if name == TE && !h.value.eq_ignore_ascii_case(b"trailers") {
            continue;
        }
        if name == HOST {
            authority = Some(h.value);
            continue;
        }
        if name == CONTENT_LENGTH && framing != Framing::Chunked {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or(Http2OriginError::Request("bad Content-Length"))?;
            framing = Framing::Length(n);
        }
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| Http2OriginError::Request("bad header value"))?;
        request.headers_mut().append(name, value);
    }
    if framing == Framing::Chunked {
        // A length beside chunking is not the body's (RFC 9112 §6.3).
        request.headers_mut().remove(CONTENT_LENGTH);
    }
    let authority = std::str::from_utf8(authority.unwrap_or(b"localhost"))
        .map_err(|_| Http2OriginError::Request("bad Host"))?;
    // An absolute-form target keeps only its path.
    let path = match target.parse::<Uri>() {
        Ok(u) if u.authority().is_some() => u
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        _ => target.to_owned(),
    };
    *request.uri_mut() = Uri::builder()
        .scheme("https")
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|_| Http2OriginError::Request("bad Host or target"))?;
    *request.version_mut() = http::Version::HTTP_2;
    Ok((request, framing))
}

/// Statuses whose responses have no body (RFC 9110 §6.4.1).
fn no_body(status: u16) -> bool {
    (100..200).contains(&status) || status == 204 || status == 304
}

/// Appends the HTTP/1.1 head of `head`; returns whether its body is sent chunked (no
/// `Content-Length` known), as an HTTP/1.1 server relaying an HTTP/2 response writes it.
fn write_head(head: &http::response::Parts, ended: bool, is_head: bool, out: &mut Vec<u8>) -> bool {
    let status = head.status;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &head.headers {
        if CONNECTION_SPECIFIC.contains(&name.as_str()) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let framed = is_head || no_body(status.as_u16()) || head.headers.contains_key(CONTENT_LENGTH);
    let chunked = !framed && !ended;
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    } else if !framed {
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
    chunked
}

#[cfg(test)]
mod tests;
