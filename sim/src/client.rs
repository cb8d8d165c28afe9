//! The eyeball side of the simulation: requests the edge sends down a tunnel connection, with
//! generated bodies, and the checks on what comes back (status, request digest echoed by the
//! origin, every response byte, length).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use burrow_core::stream::connect::{key, ConnectRequest, ConnectionType, Metadata};
use burrow_core::tunnel::edge::{ConnId, EdgeEvent};
use quinn_proto::StreamId;

use crate::origin::{content, response_path, Digest};
use crate::world::World;

/// One request to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// HTTP: a request body of `up` bytes (chunked or by length; 0 = none), a response of
    /// `down` bytes framed as `mode` (`fixed`, `chunked`, `close`).
    Http {
        /// Request body length.
        up: u64,
        /// Send the request body chunked.
        chunked: bool,
        /// Response body length.
        down: u64,
        /// Response framing.
        mode: &'static str,
        /// Content seed of both bodies.
        seed: u64,
    },
    /// WebSocket upgrade, then `len` bytes echoed.
    WebSocket {
        /// Bytes sent and expected back.
        len: u64,
        /// Content seed.
        seed: u64,
    },
    /// TCP, then `len` bytes echoed.
    Tcp {
        /// Bytes sent and expected back.
        len: u64,
        /// Content seed.
        seed: u64,
    },
    /// An HTTP request to an origin that refuses connections: expects an error response.
    Unreachable,
}

impl Request {
    fn up_len(&self) -> u64 {
        match *self {
            Request::Http { up, .. } => up,
            Request::WebSocket { len, .. } | Request::Tcp { len, .. } => len,
            Request::Unreachable => 0,
        }
    }

    fn seed(&self) -> u64 {
        match *self {
            Request::Http { seed, .. }
            | Request::WebSocket { seed, .. }
            | Request::Tcp { seed, .. } => seed,
            Request::Unreachable => 0,
        }
    }
}

struct Active {
    request: Request,
    sent: u64,
    digest: Digest,
    finished_sending: bool,
    /// Response seen (status checked).
    answered: bool,
    /// Refused by the connector's flow limit: no body follows.
    limited: bool,
    received: u64,
}

/// Issues requests on one edge connection, `concurrency` at a time, and checks every answer.
pub struct Client {
    /// The edge connection requests go to.
    pub conn: ConnId,
    queue: VecDeque<Request>,
    active: BTreeMap<StreamId, Active>,
    readable: BTreeSet<StreamId>,
    concurrency: usize,
    /// Bytes the eyeball reads per 10 ms; `None`: all at once.
    pub read_budget: Option<usize>,
    /// Requests answered in full and checked.
    pub completed: u64,
    /// Stop starting new requests (the connection is going away).
    pub paused: bool,
    /// TCP requests the connector refused with `FlowConnectRateLimited`.
    pub rate_limited: u64,
    /// Requests that ended with an error because their connection was lost.
    pub failed: u64,
    /// With a read budget: when the eyeball reads next.
    next_read: crate::clock::VirtualTime,
    /// The edge closed `conn` (timed out first on its side): nothing more goes on it, and
    /// the requests on it end once the connector notices too ([`Client::connection_lost`]).
    edge_closed: bool,
}

/// Request bytes the client keeps queued in the edge per stream.
const SEND_WINDOW: usize = 64 * 1024;

impl Client {
    /// A client for `conn` with `requests` to make.
    pub fn new(conn: ConnId, requests: Vec<Request>, concurrency: usize) -> Self {
        Self {
            conn,
            queue: requests.into(),
            active: BTreeMap::new(),
            readable: BTreeSet::new(),
            concurrency,
            read_budget: None,
            completed: 0,
            paused: false,
            rate_limited: 0,
            failed: 0,
            next_read: crate::clock::VirtualTime::ZERO,
            edge_closed: false,
        }
    }

    /// Nothing left to do.
    pub fn is_done(&self) -> bool {
        self.queue.is_empty() && self.active.is_empty()
    }

    /// One line per request in flight, for failure reports.
    pub fn describe(&self) -> String {
        self.active
            .iter()
            .map(|(id, a)| {
                format!(
                    "  {id}: sent {} finished {} answered {} received {} {:?}\n",
                    a.sent, a.finished_sending, a.answered, a.received, a.request
                )
            })
            .collect()
    }

    /// The connection died: every request in flight on it ended with that error (an eyeball
    /// sees the edge fail them); the rest go to `conn`, the connection that replaced it.
    pub fn connection_lost(&mut self, conn: ConnId) {
        self.failed += self.active.len() as u64;
        self.active.clear();
        self.readable.clear();
        self.conn = conn;
        self.edge_closed = false;
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.active.len()
    }

    /// Starts requests, pushes bodies, reads responses. Call after every step.
    pub fn tick(&mut self, w: &mut World) -> Result<(), String> {
        if self.edge_closed {
            return Ok(());
        }
        while !self.paused && self.active.len() < self.concurrency {
            let Some(request) = self.queue.pop_front() else {
                break;
            };
            self.start(w, request)?;
        }
        let streams: Vec<StreamId> = self.active.keys().copied().collect();
        for stream in streams {
            self.push_body(w, stream)?;
        }
        if self.read_budget.is_none() {
            self.read(w)?;
        } else if w.now >= self.next_read {
            self.read(w)?;
            self.next_read = w.after(Duration::from_millis(10));
            if !self.active.is_empty() {
                w.wakeups.insert(self.next_read);
            }
        }
        Ok(())
    }

    fn start(&mut self, w: &mut World, request: Request) -> Result<(), String> {
        let now = w.instant();
        let edge = w.edge.as_mut().ok_or("edge down")?;
        let (path, dest, kind);
        let mut meta: Vec<(String, String)> = vec![(key::HTTP_HOST.into(), "app.sim".into())];
        match &request {
            Request::Http {
                up,
                chunked,
                down,
                mode,
                seed,
            } => {
                path = response_path(*down, *seed, mode);
                dest = format!("http://app.sim{path}");
                kind = ConnectionType::Http;
                meta.push((
                    key::HTTP_METHOD.into(),
                    if *up > 0 { "POST" } else { "GET" }.into(),
                ));
                if *chunked {
                    meta.push((header("Transfer-Encoding"), "chunked".into()));
                } else if *up > 0 {
                    meta.push((header("Content-Length"), up.to_string()));
                }
            }
            Request::WebSocket { .. } => {
                dest = "http://app.sim/ws".into();
                kind = ConnectionType::WebSocket;
                meta.push((header("Sec-Websocket-Key"), "c2ltdWxhdGVk".into()));
            }
            Request::Tcp { .. } => {
                dest = "10.0.0.7:7".into();
                kind = ConnectionType::Tcp;
                meta.clear();
            }
            Request::Unreachable => {
                dest = "http://down.example/".into();
                kind = ConnectionType::Http;
                meta = vec![(key::HTTP_HOST.into(), "down.example".into())];
            }
        }
        let metadata: Vec<Metadata<'_>> = meta
            .iter()
            .map(|(key, val)| Metadata { key, val })
            .collect();
        let stream = edge
            .open_request(
                now,
                self.conn,
                &ConnectRequest {
                    dest: &dest,
                    connection_type: kind,
                    metadata: &metadata,
                },
            )
            .map_err(|e| format!("open_request: {e}"))?;
        self.active.insert(
            stream,
            Active {
                request,
                sent: 0,
                digest: Digest::EMPTY,
                finished_sending: false,
                answered: false,
                limited: false,
                received: 0,
            },
        );
        Ok(())
    }

    fn push_body(&mut self, w: &mut World, stream: StreamId) -> Result<(), String> {
        let now = w.instant();
        let Some(edge) = w.edge.as_mut() else {
            return Ok(());
        };
        let Some(a) = self.active.get_mut(&stream) else {
            return Ok(());
        };
        let len = a.request.up_len();
        // WebSocket bytes wait for the 101 (the connector would hold them anyway).
        let hold = matches!(a.request, Request::WebSocket { .. }) && !a.answered;
        while !a.finished_sending && !hold {
            if a.sent == len {
                edge.finish_request(now, self.conn, stream)
                    .map_err(|e| format!("finish: {e}"))?;
                a.finished_sending = true;
                break;
            }
            let n = (len - a.sent).min(16 * 1024);
            // Whole pieces only, so what was sent is exactly what was digested.
            if edge.request_unsent(self.conn, stream) + n as usize > SEND_WINDOW {
                break;
            }
            // The edge sends the body bare even when the eyeball chunked it; the connector
            // re-chunks toward the origin.
            let piece: Vec<u8> = (a.sent..a.sent + n)
                .map(|i| content(a.request.seed(), i))
                .collect();
            let taken = edge
                .send_request_body(now, self.conn, stream, &piece, SEND_WINDOW)
                .map_err(|e| format!("send: {e}"))?;
            if taken != piece.len() {
                return Err("edge took part of a body piece".into());
            }
            a.digest.update(&piece);
            a.sent += n;
        }
        Ok(())
    }

    fn read(&mut self, w: &mut World) -> Result<(), String> {
        let now = w.instant();
        let Some(edge) = w.edge.as_mut() else {
            return Ok(());
        };
        let mut budget = self.read_budget.unwrap_or(usize::MAX);
        let streams: Vec<StreamId> = self.readable.iter().copied().collect();
        for stream in streams {
            if budget == 0 {
                break;
            }
            let Some(a) = self.active.get_mut(&stream) else {
                self.readable.remove(&stream);
                continue;
            };
            let mut buf = Vec::new();
            let finished = edge
                .read_response(now, self.conn, stream, budget, &mut buf)
                .map_err(|e| format!("stream {stream}: read: {e}"))?;
            budget -= buf.len().min(budget);
            let (seed, expected) = match a.request {
                Request::Http { seed, down, .. } => (seed, down),
                Request::WebSocket { seed, len } | Request::Tcp { seed, len } => (seed, len),
                Request::Unreachable => (0, 0),
            };
            let expected = if a.limited { 0 } else { expected };
            for (i, &b) in buf.iter().enumerate() {
                let at = a.received + i as u64;
                if at >= expected || b != content(seed, at) {
                    return Err(format!(
                        "stream {stream}: response byte {at} wrong ({:?})",
                        a.request
                    ));
                }
            }
            a.received += buf.len() as u64;
            if finished {
                if a.received != expected {
                    return Err(format!(
                        "stream {stream}: {} of {expected} response bytes ({:?})",
                        a.received, a.request
                    ));
                }
                self.active.remove(&stream);
                self.readable.remove(&stream);
                self.completed += 1;
            } else if self.read_budget.is_none() {
                // Everything available was read; wait for the next Readable.
                self.readable.remove(&stream);
            }
        }
        Ok(())
    }

    /// Checks and records an edge event about this client's streams. Returns false for events
    /// that are not about its streams.
    pub fn on_event(&mut self, event: &EdgeEvent) -> Result<bool, String> {
        match event {
            EdgeEvent::Response {
                conn,
                stream,
                error,
                metadata,
            } if *conn == self.conn => {
                let a = self
                    .active
                    .get_mut(stream)
                    .ok_or(format!("response on unknown stream {stream}"))?;
                a.answered = true;
                let get = |k: &str| {
                    metadata
                        .iter()
                        .find(|(key, _)| key == k)
                        .map(|(_, v)| v.as_str())
                };
                match a.request {
                    Request::Unreachable => {
                        if error.is_empty() {
                            return Err("unreachable origin answered without error".into());
                        }
                    }
                    Request::Http { up, .. } => {
                        if !error.is_empty() || get(key::HTTP_STATUS) != Some("200") {
                            return Err(format!("stream {stream}: {error:?} {metadata:?}"));
                        }
                        // The origin answers once it has the whole body, which by then the
                        // client has sent in full.
                        let expected = a.digest;
                        if a.sent != up {
                            return Err(format!(
                                "stream {stream}: answered before the body was sent"
                            ));
                        }
                        if get(&header("X-Request-Digest")) != Some(expected.text().as_str()) {
                            return Err(format!(
                                "stream {stream}: origin got a different request body: {:?} vs {}",
                                get(&header("X-Request-Digest")),
                                expected.text()
                            ));
                        }
                    }
                    Request::WebSocket { .. } => {
                        if get(key::HTTP_STATUS) != Some("101") {
                            return Err(format!("stream {stream}: no upgrade: {metadata:?}"));
                        }
                    }
                    Request::Tcp { .. }
                        if error == burrow_core::stream::proxy::RATE_LIMITED
                            && get(key::FLOW_CONNECT_RATE_LIMITED)
                                == Some(key::FLOW_CONNECT_RATE_LIMITED_VALUE) =>
                    {
                        a.limited = true;
                        a.finished_sending = true;
                        self.rate_limited += 1;
                    }
                    Request::Tcp { .. } => {
                        if !error.is_empty() || !metadata.is_empty() {
                            return Err(format!("stream {stream}: TCP ack {error:?} {metadata:?}"));
                        }
                    }
                }
                Ok(true)
            }
            EdgeEvent::ResponseReadable { conn, stream } if *conn == self.conn => {
                self.readable.insert(*stream);
                Ok(true)
            }
            EdgeEvent::ConnectionClosed { conn, .. } if *conn == self.conn => {
                self.edge_closed = true;
                Ok(true)
            }
            EdgeEvent::StreamReset { conn, stream } if *conn == self.conn => Err(format!(
                "stream {stream} reset by the connector ({:?})",
                self.active.get(stream).map(|a| &a.request)
            )),
            _ => Ok(false),
        }
    }
}

/// The metadata key of HTTP header `name`.
fn header(name: &str) -> String {
    format!("{}{name}", key::HTTP_HEADER_PREFIX)
}
