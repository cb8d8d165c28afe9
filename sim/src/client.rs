//! The eyeball side of the simulation: requests into a tunnel through the edge machine, with
//! generated bodies, and the checks on what comes back (status, request digest echoed by the
//! origin, every response byte, length).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use burrow_core::edge::{EyeballId, Input, OpenError, StreamEvent, Target};
use burrow_core::stream::connect::{key, ConnectionType};
use burrow_core::tunnel::edge::ConnId;
use bytes::Bytes;
use uuid::Uuid;

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
    /// The edge connection it went out on.
    conn: Option<ConnId>,
    sent: u64,
    digest: Digest,
    /// A body piece is with the edge, not yet acknowledged.
    awaiting_ack: bool,
    finished_sending: bool,
    /// Response seen (status checked).
    answered: bool,
    /// Refused by the connector's flow limit: no body follows.
    limited: bool,
    received: u64,
    /// Bytes of the last response chunk the eyeball has not read yet (it asks for the next
    /// chunk once it read them all).
    unread: usize,
    /// The response ended (completed once everything is read).
    ended: bool,
}

/// Issues requests into tunnel `tunnel` through the edge machine, `concurrency` at a time, and
/// checks every answer. The edge picks the connection (round robin over the tunnel's
/// registered ones) and paces both bodies: a request-body piece goes once the last was
/// acknowledged, a response chunk comes once the last was read.
pub struct Client {
    tunnel: Uuid,
    queue: VecDeque<Request>,
    active: BTreeMap<EyeballId, Active>,
    concurrency: usize,
    /// Bytes the eyeball reads per 10 ms; `None`: all at once.
    pub read_budget: Option<usize>,
    /// Requests answered in full and checked.
    pub completed: u64,
    /// Stop starting new requests (the connections are going away).
    pub paused: bool,
    /// A request may end with its connection (the network is hostile); otherwise that is a
    /// failure.
    pub hostile: bool,
    /// TCP requests the connector refused with `FlowConnectRateLimited`.
    pub rate_limited: u64,
    /// Requests that ended with an error because their connection was lost (or, on a hostile
    /// network, found no connection).
    pub failed: u64,
    /// The edge connection each failed request went out on.
    pub failed_on: Vec<Option<ConnId>>,
    /// Of `failed`, those whose connection no connector ever registered: the edge registered
    /// it and routed the request there, but its answer came after the connector's 5 s call had
    /// timed out (as cloudflared's does), and the connector closed it. The only failure
    /// allowed below hostile loss.
    pub unregistered: u64,
    /// With a read budget: when the eyeball reads next.
    next_read: crate::clock::VirtualTime,
    /// The edge had no connection for the last request: start none before this.
    retry_at: Option<crate::clock::VirtualTime>,
}

/// How long an eyeball the edge had no connection for waits before it tries again.
const RETRY: Duration = Duration::from_secs(1);

/// Request-body bytes the eyeball hands the edge at once.
const PIECE: u64 = 16 * 1024;

impl Client {
    /// A client for `tunnel` with `requests` to make.
    pub fn new(tunnel: Uuid, requests: Vec<Request>, concurrency: usize) -> Self {
        Self {
            tunnel,
            queue: requests.into(),
            active: BTreeMap::new(),
            concurrency,
            read_budget: None,
            completed: 0,
            paused: false,
            hostile: false,
            rate_limited: 0,
            failed: 0,
            failed_on: Vec::new(),
            unregistered: 0,
            next_read: crate::clock::VirtualTime::ZERO,
            retry_at: None,
        }
    }

    /// Nothing left to do.
    pub fn is_done(&self) -> bool {
        self.queue.is_empty() && self.active.is_empty()
    }

    /// Every one of `count` requests answered, but those that failed with a connection the
    /// connector never registered or (hostile) with their connection.
    pub fn all_answered_or_excused(&self, count: u64) -> bool {
        self.completed + self.failed == count && (self.hostile || self.failed == self.unregistered)
    }

    /// One line per request in flight, for failure reports.
    pub fn describe(&self) -> String {
        self.active
            .iter()
            .map(|(id, a)| {
                format!(
                    "  {id:?} on {:?}: sent {} finished {} answered {} received {} {:?}\n",
                    a.conn, a.sent, a.finished_sending, a.answered, a.received, a.request
                )
            })
            .collect()
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.active.len()
    }

    /// Starts requests, pushes bodies, reads responses. Call after every step.
    pub fn tick(&mut self, w: &mut World) -> Result<(), String> {
        while let Some((id, event)) = w.inbox.pop_front() {
            self.on_stream(w, id, event)?;
        }
        if self.retry_at.is_some_and(|t| w.now >= t) {
            self.retry_at = None;
        }
        // Reading first: the streams it completes free their slots for the requests started
        // below. The other way round the next requests waited for another step, and a world
        // with nothing left in flight (no timer either, as on HTTP/2) never takes one.
        if self.read_budget.is_none() {
            self.read(w);
        } else if w.now >= self.next_read {
            self.read(w);
            self.next_read = w.after(Duration::from_millis(10));
            if !self.active.is_empty() {
                w.wakeups.insert(self.next_read);
            }
        }
        while !self.paused && self.retry_at.is_none() && self.active.len() < self.concurrency {
            let Some(request) = self.queue.pop_front() else {
                break;
            };
            self.start(w, request)?;
        }
        let streams: Vec<EyeballId> = self.active.keys().copied().collect();
        for id in streams {
            self.push_body(w, id);
        }
        Ok(())
    }

    fn start(&mut self, w: &mut World, request: Request) -> Result<(), String> {
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
        let id = w.eyeball_id();
        let open = Input::Open {
            id,
            target: Target::Tunnel(self.tunnel),
            dest,
            kind,
            metadata: meta,
        };
        if !w.edge_input(open) {
            return Err("edge down".into());
        }
        let conn = w.edge().and_then(|e| e.stream_connection(id));
        self.active.insert(
            id,
            Active {
                request,
                conn,
                sent: 0,
                digest: Digest::EMPTY,
                awaiting_ack: false,
                finished_sending: false,
                answered: false,
                limited: false,
                received: 0,
                unread: 0,
                ended: false,
            },
        );
        Ok(())
    }

    fn push_body(&mut self, w: &mut World, id: EyeballId) {
        let Some(a) = self.active.get_mut(&id) else {
            return;
        };
        // WebSocket bytes wait for the 101 (the connector would hold them anyway).
        let hold = matches!(a.request, Request::WebSocket { .. }) && !a.answered;
        if a.finished_sending || a.awaiting_ack || hold {
            return;
        }
        let len = a.request.up_len();
        if a.sent == len {
            a.finished_sending = true;
            w.edge_input(Input::Finish(id));
            return;
        }
        let n = (len - a.sent).min(PIECE);
        // The edge sends the body bare even when the eyeball chunked it; the connector
        // re-chunks toward the origin.
        let piece: Vec<u8> = (a.sent..a.sent + n)
            .map(|i| content(a.request.seed(), i))
            .collect();
        a.digest.update(&piece);
        a.sent += n;
        a.awaiting_ack = true;
        w.edge_input(Input::Body {
            id,
            data: Bytes::from(piece),
        });
    }

    /// Reads what arrived, within the budget; asks for the next chunk of a stream once its
    /// last is read, and completes a stream once its end and every byte are in.
    fn read(&mut self, w: &mut World) {
        let mut budget = self.read_budget.unwrap_or(usize::MAX);
        let ids: Vec<EyeballId> = self.active.keys().copied().collect();
        for id in ids {
            let Some(a) = self.active.get_mut(&id) else {
                continue;
            };
            if a.unread > 0 {
                if budget == 0 {
                    continue;
                }
                let n = a.unread.min(budget);
                a.unread -= n;
                budget -= n;
                if a.unread == 0 && !a.ended {
                    w.edge_input(Input::ReadMore(id));
                }
            }
            if a.ended && a.unread == 0 {
                self.active.remove(&id);
                self.completed += 1;
            }
        }
    }

    fn expected(a: &Active) -> (u64, u64) {
        let (seed, expected) = match a.request {
            Request::Http { seed, down, .. } => (seed, down),
            Request::WebSocket { seed, len } | Request::Tcp { seed, len } => (seed, len),
            Request::Unreachable => (0, 0),
        };
        (seed, if a.limited { 0 } else { expected })
    }

    /// Checks and records what the edge told one of this client's streams (others: those of
    /// an earlier client).
    fn on_stream(
        &mut self,
        w: &mut World,
        id: EyeballId,
        event: StreamEvent,
    ) -> Result<(), String> {
        let Some(a) = self.active.get_mut(&id) else {
            return Ok(());
        };
        match event {
            StreamEvent::Refused(e) => {
                if !self.hostile || e != OpenError::NoConnection {
                    return Err(format!("stream {id:?} refused: {e}"));
                }
                // On a hostile network every connection may be down for a while: the request
                // is tried again later.
                if let Some(a) = self.active.remove(&id) {
                    self.queue.push_front(a.request);
                }
                let at = w.after(RETRY);
                self.retry_at = Some(at);
                w.wakeups.insert(at);
            }
            StreamEvent::Response { error, metadata } => {
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
                            return Err(format!("stream {id:?}: {error:?} {metadata:?}"));
                        }
                        // The origin answers once it has the whole body, which by then the
                        // client has sent in full.
                        let expected = a.digest;
                        if a.sent != up {
                            return Err(format!(
                                "stream {id:?}: answered before the body was sent"
                            ));
                        }
                        if get(&header("X-Request-Digest")) != Some(expected.text().as_str()) {
                            return Err(format!(
                                "stream {id:?}: origin got a different request body: {:?} vs {}",
                                get(&header("X-Request-Digest")),
                                expected.text()
                            ));
                        }
                    }
                    Request::WebSocket { .. } => {
                        if get(key::HTTP_STATUS) != Some("101") {
                            return Err(format!("stream {id:?}: no upgrade: {metadata:?}"));
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
                            return Err(format!("stream {id:?}: TCP ack {error:?} {metadata:?}"));
                        }
                    }
                }
            }
            StreamEvent::Ack => a.awaiting_ack = false,
            StreamEvent::Body(bytes) => {
                let (seed, expected) = Self::expected(a);
                for (i, &b) in bytes.iter().enumerate() {
                    let at = a.received + i as u64;
                    if at >= expected || b != content(seed, at) {
                        return Err(format!(
                            "stream {id:?}: response byte {at} wrong ({:?})",
                            a.request
                        ));
                    }
                }
                a.received += bytes.len() as u64;
                a.unread = bytes.len();
            }
            StreamEvent::End => {
                let (_, expected) = Self::expected(a);
                if a.received != expected {
                    return Err(format!(
                        "stream {id:?}: {} of {expected} response bytes ({:?})",
                        a.received, a.request
                    ));
                }
                a.ended = true;
            }
            StreamEvent::Reset => {
                // The edge resets the streams of a connection that closed; otherwise the
                // connector reset it, which it may do only when its grace period ran out on a
                // hostile network (HTTP/2 resets each stream before the connection closes).
                let stopped = a.conn.is_some_and(|c| {
                    w.connectors
                        .iter()
                        .any(|n| n.history().contains(&c) && n.connector.is_stopped())
                });
                if a.conn.is_some_and(|c| w.edge_has(c)) && !(self.hostile && stopped) {
                    return Err(format!(
                        "stream {id:?} reset by the connector ({:?})",
                        a.request
                    ));
                }
                let unregistered = a
                    .conn
                    .is_some_and(|c| !w.connectors.iter().any(|n| n.history().contains(&c)));
                if !self.hostile && !unregistered {
                    return Err(format!(
                        "stream {id:?} failed with its connection {:?} ({:?})",
                        a.conn, a.request
                    ));
                }
                self.unregistered += u64::from(unregistered);
                self.failed_on.push(a.conn);
                self.active.remove(&id);
                self.failed += 1;
            }
        }
        Ok(())
    }
}

/// The metadata key of HTTP header `name`.
fn header(name: &str) -> String {
    format!("{}{name}", key::HTTP_HEADER_PREFIX)
}
