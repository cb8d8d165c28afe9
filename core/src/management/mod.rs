//! The management service cloudflared serves on its tunnel (`management/`): requests whose
//! host is the management hostname reach the connector itself instead of an origin. Cloudflare's
//! dashboard and `cloudflared tail` read the connector's logs through it (`/logs`, a
//! WebSocket), and check on it (`/ping`, `/host_details`, `/metrics`).
//!
//! [`Management`] is one sans-IO machine for all of the service's connections: the driver
//! hands it each in-process connection's bytes and the connector's JSON log lines, and writes
//! out what it gives back.

pub mod events;
pub mod request;
pub mod token;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use uuid::Uuid;

use crate::stream::websocket::{self, Control, Decoder};
use events::{ClientEvent, EventError, Filters, Log, MAX_CLIENT_MESSAGE};
use request::{Head, HeadError, Reply, Route};

/// cloudflared's default `--management-hostname`.
pub const DEFAULT_HOSTNAME: &str = "management.argotunnel.com";
/// A log stream not streaming for this long is closed (cloudflared's idle limit).
pub const IDLE_LIMIT: Duration = Duration::from_secs(5 * 60);
/// How often an open log stream is pinged.
pub const PING_INTERVAL: Duration = Duration::from_secs(15);
/// Most bytes waiting to be written on one connection (queued here or transmitted and not yet
/// reported written: [`Management::handle_written`]); log lines beyond are dropped, as
/// cloudflared drops them when its 30-line window is full.
pub const MAX_PENDING: usize = 64 * 1024;

/// Close codes of the log stream (`management/service.go`).
mod close {
    pub const NORMAL: u16 = 1000;
    pub const UNSUPPORTED_DATA: u16 = 1003;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const TOO_BIG: u16 = 1009;
    pub const INVALID_COMMAND: u16 = 4001;
    pub const SESSION_LIMIT: u16 = 4002;
    pub const IDLE_LIMIT: u16 = 4003;
}

/// What the service says about the connector it runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagementConfig {
    /// The requests' host that selects the service.
    pub hostname: String,
    /// Whether `/metrics` is served (`--management-diagnostics`).
    pub diagnostics: bool,
    /// The connector's ID.
    pub connector_id: Uuid,
    /// `--label`; `/host_details` reports `custom:LABEL`, else `hostname`.
    pub label: Option<String>,
    /// The machine's host name.
    pub host_name: String,
}

/// One connection's identity, given by [`Management::open`].
pub type ConnId = u64;

/// What the driver does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Write these bytes to the connection.
    Transmit(ConnId, Vec<u8>),
    /// Close the connection (after the bytes given before).
    Close(ConnId),
    /// The connection asks for the Prometheus exposition: answer with
    /// [`Management::handle_metrics`].
    WantMetrics(ConnId),
    /// Whether any log stream is streaming: the driver hands log lines (debug included) only
    /// while it is.
    Listening(bool),
    /// Call [`Management::handle_timeout`] at this time.
    Timeout(Instant),
}

#[derive(Debug)]
enum Phase {
    /// Reading the request head.
    Head(Vec<u8>),
    /// A plain answer is on its way; the connection closes after it.
    Answered,
    /// Waiting for the driver's metrics.
    Metrics {
        head_only: bool,
        origin: Option<String>,
    },
    /// `/logs` after the handshake.
    Stream(Box<Stream>),
}

#[derive(Debug)]
struct Stream {
    actor: String,
    decoder: Decoder,
    message: Vec<u8>,
    /// Set while streaming.
    filters: Option<Filters>,
    sample: Option<u32>,
    idle_at: Option<Instant>,
    ping_at: Instant,
}

/// What a log stream's client sent, in order.
enum StreamInput {
    Ping(Vec<u8>),
    Close,
    Message { text: bool, message: Vec<u8> },
}

#[derive(Debug)]
struct Conn {
    phase: Phase,
    out: Vec<u8>,
    /// Bytes given out by [`Output::Transmit`] and not yet reported written.
    in_flight: usize,
    close: bool,
}

/// The management service's connections (see the module's doc).
#[derive(Debug)]
pub struct Management {
    config: ManagementConfig,
    private_ip: Option<IpAddr>,
    conns: BTreeMap<ConnId, Conn>,
    next: ConnId,
    rng: ChaCha8Rng,
    listening: bool,
    wants_metrics: Vec<ConnId>,
    /// Log lines dropped because a stream's writes were behind.
    pub dropped: u64,
}

impl Management {
    /// A service with no connection; `seed` drives the log sampling.
    pub fn new(config: ManagementConfig, seed: u64) -> Self {
        Self {
            config,
            private_ip: None,
            conns: BTreeMap::new(),
            next: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
            listening: false,
            wants_metrics: Vec::new(),
            dropped: 0,
        }
    }

    /// The address `/host_details` reports: the connector's own address towards the edge.
    pub fn set_private_ip(&mut self, ip: Option<IpAddr>) {
        self.private_ip = ip;
    }

    /// A new connection from the proxy.
    pub fn open(&mut self) -> ConnId {
        let id = self.next;
        self.next += 1;
        self.conns.insert(
            id,
            Conn {
                phase: Phase::Head(Vec::new()),
                out: Vec::new(),
                in_flight: 0,
                close: false,
            },
        );
        id
    }

    /// The connection ended from the proxy's side (or failed): it is forgotten.
    pub fn handle_closed(&mut self, id: ConnId) {
        self.conns.remove(&id);
        self.wants_metrics.retain(|&c| c != id);
    }

    /// Bytes the proxy wrote on connection `id`.
    pub fn handle_bytes(&mut self, now: Instant, id: ConnId, data: &[u8]) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        match &mut conn.phase {
            Phase::Head(buf) => {
                buf.extend_from_slice(data);
                match request::parse_head(buf) {
                    Ok(None) => {}
                    Ok(Some((head, n))) => {
                        let rest = buf.split_off(n);
                        self.on_head(now, id, &head);
                        if !rest.is_empty() {
                            self.handle_bytes(now, id, &rest);
                        }
                    }
                    Err(e) => {
                        let code = if e == HeadError::TooLong { 431 } else { 400 };
                        let reply = Reply {
                            status: code,
                            headers: vec![("Content-Type", "text/plain; charset=utf-8".into())],
                            body: format!("{code} {e}").into_bytes(),
                        };
                        Self::answer(conn, &reply, false);
                    }
                }
            }
            // A body or pipelined bytes after a plain answer: ignored, the connection closes.
            Phase::Answered | Phase::Metrics { .. } => {}
            Phase::Stream(s) => {
                if conn.close {
                    return;
                }
                let mut payload = std::mem::take(&mut s.message);
                let controls = match s.decoder.feed(data, &mut payload) {
                    Ok(c) => c,
                    Err(e) => {
                        return Self::close_stream(conn, close::PROTOCOL_ERROR, &e.to_string());
                    }
                };
                // Several messages may end in one read: each is the bytes since the last end.
                let mut start = 0;
                let mut inputs = Vec::with_capacity(controls.len());
                for c in controls {
                    inputs.push(match c {
                        Control::MessageEnd { text, end } => {
                            let message = payload.get(start..end).unwrap_or_default().to_vec();
                            start = end.max(start);
                            StreamInput::Message { text, message }
                        }
                        Control::Ping(p) => StreamInput::Ping(p),
                        Control::Close => StreamInput::Close,
                    });
                }
                payload.drain(..start.min(payload.len()));
                s.message = payload;
                let unfinished_too_big = s.message.len() > MAX_CLIENT_MESSAGE;
                for input in inputs {
                    self.on_stream_input(now, id, input);
                }
                if unfinished_too_big {
                    if let Some(conn) = self.conns.get_mut(&id).filter(|c| !c.close) {
                        Self::close_stream(conn, close::TOO_BIG, "message too big");
                    }
                }
            }
        }
    }

    /// The driver wrote `n` of connection `id`'s transmitted bytes: room for more log lines.
    pub fn handle_written(&mut self, id: ConnId, n: usize) {
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.in_flight = conn.in_flight.saturating_sub(n);
        }
    }

    /// The Prometheus exposition asked for by [`Output::WantMetrics`].
    pub fn handle_metrics(&mut self, id: ConnId, exposition: &str) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let Phase::Metrics { head_only, origin } = &conn.phase else {
            return;
        };
        let mut reply = Reply {
            status: 200,
            headers: vec![(
                "Content-Type",
                "text/plain; version=0.0.4; charset=utf-8".into(),
            )],
            body: exposition.as_bytes().to_vec(),
        };
        request::cors(origin.as_deref(), &mut reply.headers);
        let head_only = *head_only;
        Self::answer(conn, &reply, head_only);
    }

    /// One of the connector's JSON log lines; sent to every streaming log stream whose filters
    /// take it.
    pub fn handle_log(&mut self, line: &[u8]) {
        if !self.listening {
            return;
        }
        let Some(log) = Log::from_json_line(line) else {
            return;
        };
        let mut event = None;
        for conn in self.conns.values_mut() {
            let Phase::Stream(s) = &conn.phase else {
                continue;
            };
            let Some(f) = &s.filters else {
                continue;
            };
            if conn.close || !f.admits(&log) {
                continue;
            }
            if let Some(p) = s.sample {
                // cloudflared's sampler: rand.Intn(100) <= p.
                if self.rng.next_u32() % 100 > p {
                    continue;
                }
            }
            if conn.out.len() + conn.in_flight >= MAX_PENDING {
                self.dropped += 1;
                continue;
            }
            let text = event.get_or_insert_with(|| log.to_event());
            websocket::write_frame(&mut conn.out, websocket::OP_TEXT, text.as_bytes());
        }
    }

    /// Timers: pings and the idle limit.
    pub fn handle_timeout(&mut self, now: Instant) {
        for conn in self.conns.values_mut() {
            let Phase::Stream(s) = &mut conn.phase else {
                continue;
            };
            if conn.close {
                continue;
            }
            if s.idle_at.is_some_and(|t| t <= now) {
                Self::close_stream(conn, close::IDLE_LIMIT, "session was idle for too long");
                continue;
            }
            if s.ping_at <= now {
                s.ping_at = now + PING_INTERVAL;
                websocket::write_frame(&mut conn.out, websocket::OP_PING, b"");
            }
        }
    }

    /// What to do next; [`Output::Timeout`] once nothing else is due.
    pub fn poll_output(&mut self, now: Instant) -> Output {
        if let Some(id) = self.wants_metrics.pop() {
            return Output::WantMetrics(id);
        }
        let listening = self
            .conns
            .values()
            .any(|c| !c.close && matches!(&c.phase, Phase::Stream(s) if s.filters.is_some()));
        if listening != self.listening {
            self.listening = listening;
            return Output::Listening(listening);
        }
        for (&id, conn) in self.conns.iter_mut() {
            if !conn.out.is_empty() {
                conn.in_flight += conn.out.len();
                return Output::Transmit(id, std::mem::take(&mut conn.out));
            }
        }
        if let Some((&id, _)) = self.conns.iter().find(|(_, c)| c.close) {
            self.conns.remove(&id);
            return Output::Close(id);
        }
        let next = self
            .conns
            .values()
            .filter_map(|c| match &c.phase {
                Phase::Stream(s) => Some(s.idle_at.map_or(s.ping_at, |i| i.min(s.ping_at))),
                _ => None,
            })
            .min();
        Output::Timeout(next.unwrap_or(now + IDLE_LIMIT).max(now))
    }

    fn on_head(&mut self, now: Instant, id: ConnId, head: &Head) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let head_only = head.method == "HEAD";
        let mut reply = match request::route(head, self.config.diagnostics) {
            Route::Reply(r) => r,
            Route::Ping => Reply {
                status: 200,
                headers: Vec::new(),
                body: Vec::new(),
            },
            Route::HostDetails => {
                // cloudflared's struct, in its field order whatever serde_json's map keeps.
                #[derive(serde::Serialize)]
                struct HostDetails {
                    connector_id: String,
                    #[serde(skip_serializing_if = "Option::is_none")]
                    ip: Option<String>,
                    #[serde(skip_serializing_if = "String::is_empty")]
                    hostname: String,
                }
                let details = HostDetails {
                    connector_id: self.config.connector_id.to_string(),
                    ip: self.private_ip.map(|ip| ip.to_string()),
                    hostname: match &self.config.label {
                        Some(l) if !l.is_empty() => format!("custom:{l}"),
                        _ => self.config.host_name.clone(),
                    },
                };
                let body = serde_json::to_string(&details).unwrap_or_default();
                Reply::json(200, body)
            }
            Route::Metrics => {
                conn.phase = Phase::Metrics {
                    head_only,
                    origin: head.origin.clone(),
                };
                self.wants_metrics.push(id);
                return;
            }
            Route::Logs(claims) => {
                if head.has_body {
                    // A GET with a body cannot be a WebSocket handshake.
                    let r = Reply {
                        status: 400,
                        headers: Vec::new(),
                        body: Vec::new(),
                    };
                    Self::answer(conn, &r, false);
                    return;
                }
                match request::accept(head) {
                    Ok(bytes) => {
                        conn.out.extend_from_slice(&bytes);
                        conn.phase = Phase::Stream(Box::new(Stream {
                            actor: claims.actor.id,
                            decoder: Decoder::default(),
                            message: Vec::new(),
                            filters: None,
                            sample: None,
                            idle_at: Some(now + IDLE_LIMIT),
                            ping_at: now + PING_INTERVAL,
                        }));
                        return;
                    }
                    Err(r) => r,
                }
            }
        };
        if matches!(head.path.as_str(), "/ping" | "/host_details") && reply.status < 400 {
            request::cors(head.origin.as_deref(), &mut reply.headers);
        }
        Self::answer(conn, &reply, head_only);
    }

    fn on_stream_input(&mut self, now: Instant, id: ConnId, input: StreamInput) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let Phase::Stream(s) = &mut conn.phase else {
            return;
        };
        if conn.close {
            return;
        }
        match input {
            // A client that pings and never reads gets no more pongs than the bound allows.
            StreamInput::Ping(p) => {
                if conn.out.len() + conn.in_flight < MAX_PENDING {
                    websocket::write_frame(&mut conn.out, websocket::OP_PONG, &p);
                }
            }
            // Answer the close; the proxy's side ends the connection.
            StreamInput::Close => Self::close_stream(conn, close::NORMAL, ""),
            StreamInput::Message { message, .. } if message.len() > MAX_CLIENT_MESSAGE => {
                Self::close_stream(conn, close::TOO_BIG, "message too big");
            }
            StreamInput::Message { text, message } => {
                let event = if text {
                    ClientEvent::parse(&message)
                } else {
                    Err(EventError::MessageType)
                };
                match event {
                    Err(EventError::BadStart) => Self::close_stream(
                        conn,
                        close::INVALID_COMMAND,
                        &EventError::BadStart.to_string(),
                    ),
                    Err(e) => Self::close_stream(conn, close::UNSUPPORTED_DATA, &e.to_string()),
                    Ok(ClientEvent::Stop) => {
                        s.filters = None;
                        s.idle_at = Some(now + IDLE_LIMIT);
                    }
                    Ok(ClientEvent::Start(filters)) => {
                        let actor = s.actor.clone();
                        self.start(id, &actor, filters);
                    }
                }
            }
        }
    }

    /// cloudflared's `canStartStream`: one stream at a time; a new one from the same actor
    /// replaces the old, one from another actor is refused.
    fn start(&mut self, id: ConnId, actor: &str, filters: Filters) {
        let mut refused = false;
        for (&other, conn) in self.conns.iter_mut() {
            let Phase::Stream(s) = &conn.phase else {
                continue;
            };
            if other == id || conn.close || s.filters.is_none() {
                continue;
            }
            if s.actor == actor {
                Self::close_stream(conn, close::NORMAL, "context closed");
            } else {
                refused = true;
            }
        }
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if refused {
            Self::close_stream(
                conn,
                close::SESSION_LIMIT,
                "limit exceeded for streaming sessions",
            );
            return;
        }
        if let Phase::Stream(s) = &mut conn.phase {
            s.sample = filters.sample_percent();
            s.filters = Some(filters);
            s.idle_at = None;
        }
    }

    fn answer(conn: &mut Conn, reply: &Reply, head_only: bool) {
        reply.encode(head_only, &mut conn.out);
        conn.phase = Phase::Answered;
        conn.close = true;
    }

    fn close_stream(conn: &mut Conn, code: u16, reason: &str) {
        let mut payload = code.to_be_bytes().to_vec();
        // A close frame's payload is at most 125 bytes.
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let reason = &reason[..end];
        payload.extend_from_slice(reason.as_bytes());
        websocket::write_frame(&mut conn.out, websocket::OP_CLOSE, &payload);
        conn.close = true;
    }
}

#[cfg(test)]
mod tests;
