//! Simulated origins behind the connectors, sans-IO like everything else: an HTTP/1.1 server
//! with keep-alive, a WebSocket echo and a TCP echo. They carry out the connectors'
//! [`OriginAction`]s on virtual time; a slow origin acknowledges writes at a set rate.
//!
//! Content is generated, not stored: body byte `i` of a stream seeded `s` is [`content`]`(s, i)`,
//! so both ends check integrity byte for byte without holding megabytes.

use std::collections::BTreeMap;
use std::time::Duration;

use burrow_core::stream::http1::{BodyReader, Framing};
use burrow_core::stream::proxy::FlowKind;
use burrow_core::tunnel::connector::ConnectorConnection;
use burrow_core::tunnel::data::{FlowId, OriginAction};

use crate::clock::VirtualTime;

/// Byte `i` of generated content seeded `seed`.
pub fn content(seed: u64, i: u64) -> u8 {
    let x = (i / 8)
        .wrapping_add(seed)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> ((i % 8) * 8)) as u8
}

/// FNV-1a over a running body, to check request bodies arrived whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digest(pub u64, pub u64);

impl Digest {
    /// Nothing digested yet.
    pub const EMPTY: Digest = Digest(0xcbf2_9ce4_8422_2325, 0);

    /// Adds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        self.1 += bytes.len() as u64;
    }

    /// `hash/len`, as the server reports it.
    pub fn text(&self) -> String {
        format!("{:016x}/{}", self.0, self.1)
    }
}

/// Largest piece an origin hands the connector at once (a socket read).
const READ_CHUNK: usize = 16 * 1024;

enum Server {
    Http(HttpServer),
    /// Echo; `upgrade` while waiting for the WebSocket request head.
    Echo {
        upgrade: Option<Vec<u8>>,
    },
}

struct HttpServer {
    input: Vec<u8>,
    state: HttpState,
}

enum HttpState {
    Head,
    Body {
        reader: BodyReader,
        digest: Digest,
        path: String,
    },
    /// A `Connection: close` response went out; nothing more is read.
    Closing,
}

struct Flow {
    server: Server,
    /// Generated response bytes not produced yet: (seed, next index, end, chunked).
    pending_body: Option<Body>,
    /// Bytes produced, not yet taken by the connector.
    outbox: Vec<u8>,
    paused: bool,
    /// Close after the outbox drains.
    close_after: bool,
    /// The connector half-closed toward us.
    peer_finished: bool,
    done: bool,
}

struct Body {
    seed: u64,
    next: u64,
    end: u64,
    chunked: bool,
    /// Bytes a broken origin sends after the body (a whole extra response).
    after: &'static [u8],
}

/// What the `smuggle` mode appends to a response: if a connector read it as the answer to the
/// next request on the connection, the client would see the wrong body.
const SMUGGLED: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nsmuggled!";

enum Timer {
    Connected,
    Failed(String),
    Written,
}

/// What the origins did, for invariants.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OriginStats {
    /// Connections opened.
    pub opened: u64,
    /// HTTP requests answered.
    pub requests: u64,
    /// Bytes written to origins.
    pub bytes_in: u64,
}

/// Every origin flow of every connector.
pub struct Origins {
    flows: BTreeMap<(usize, FlowId), Flow>,
    timers: BTreeMap<(VirtualTime, u64), (usize, FlowId, Timer)>,
    seq: u64,
    /// Bytes per second an origin reads; `None`: instantly.
    pub read_rate: Option<u64>,
    /// Counters.
    pub stats: OriginStats,
    /// A protocol violation seen by an origin.
    pub error: Option<String>,
}

impl Default for Origins {
    fn default() -> Self {
        Self::new()
    }
}

impl Origins {
    /// No flows.
    pub fn new() -> Self {
        Self {
            flows: BTreeMap::new(),
            timers: BTreeMap::new(),
            seq: 0,
            read_rate: None,
            stats: OriginStats::default(),
            error: None,
        }
    }

    /// Origin connections connector `who` has open.
    pub fn flows_of(&self, who: usize) -> usize {
        self.flows.keys().filter(|(w, _)| *w == who).count()
    }

    /// The earliest origin timer.
    pub fn next_deadline(&self) -> Option<VirtualTime> {
        self.timers.keys().next().map(|(t, _)| *t)
    }

    fn arm(&mut self, at: VirtualTime, who: usize, flow: FlowId, timer: Timer) {
        self.seq += 1;
        self.timers.insert((at, self.seq), (who, flow, timer));
    }

    /// Fires due timers and carries out connector `who`'s actions; returns whether anything
    /// happened.
    pub fn pump(
        &mut self,
        now: VirtualTime,
        instant: std::time::Instant,
        who: usize,
        conn: &mut ConnectorConnection,
    ) -> bool {
        let mut any = false;
        loop {
            let mut progressed = false;
            while let Some(action) = conn.poll_origin_action() {
                progressed = true;
                self.apply(now, who, action);
            }
            let due: Vec<(VirtualTime, u64)> = self
                .timers
                .range(..=(now, u64::MAX))
                .filter(|(_, (w, _, _))| *w == who)
                .map(|(k, _)| *k)
                .collect();
            for key in due {
                let (_, flow, timer) = self.timers.remove(&key).expect("listed");
                progressed = true;
                match timer {
                    Timer::Connected => conn.handle_flow_connected(instant, flow),
                    Timer::Failed(reason) => conn.handle_flow_failed(instant, flow, &reason),
                    Timer::Written => conn.handle_flow_written(instant, flow),
                }
            }
            let keys: Vec<(usize, FlowId)> = self
                .flows
                .range((who, FlowId(0))..=(who, FlowId(u64::MAX)))
                .map(|(k, _)| *k)
                .collect();
            for key in keys {
                progressed |= self.deliver(instant, key, conn);
            }
            if !progressed {
                return any;
            }
            any = true;
        }
    }

    /// Forgets connector `who`'s flows (its connection is gone).
    pub fn drop_connector(&mut self, who: usize) {
        self.flows.retain(|(w, _), _| *w != who);
        self.timers.retain(|_, (w, _, _)| *w != who);
    }

    fn apply(&mut self, now: VirtualTime, who: usize, action: OriginAction) {
        match action {
            OriginAction::Open {
                flow,
                kind,
                dest,
                host,
                ..
            } => {
                self.stats.opened += 1;
                if host.as_deref() == Some("down.example") || dest.starts_with("192.0.2.99") {
                    self.arm(
                        now + Duration::from_millis(1),
                        who,
                        flow,
                        Timer::Failed("dial tcp: connection refused".into()),
                    );
                    return;
                }
                let server = match kind {
                    FlowKind::Http => Server::Http(HttpServer {
                        input: Vec::new(),
                        state: HttpState::Head,
                    }),
                    FlowKind::WebSocket => Server::Echo {
                        upgrade: Some(Vec::new()),
                    },
                    FlowKind::Tcp => Server::Echo { upgrade: None },
                };
                self.flows.insert(
                    (who, flow),
                    Flow {
                        server,
                        pending_body: None,
                        outbox: Vec::new(),
                        paused: false,
                        close_after: false,
                        peer_finished: false,
                        done: false,
                    },
                );
                self.arm(now + Duration::from_millis(1), who, flow, Timer::Connected);
            }
            OriginAction::Write { flow, data } => {
                self.stats.bytes_in += data.len() as u64;
                let delay = self.read_rate.map_or(Duration::ZERO, |rate| {
                    Duration::from_secs_f64(data.len() as f64 / rate as f64)
                });
                match self.flows.get_mut(&(who, flow)) {
                    Some(f) => {
                        if let Err(e) = f.receive(&data, &mut self.stats) {
                            self.error.get_or_insert(e);
                        }
                    }
                    None => {
                        self.error
                            .get_or_insert(format!("write to unknown flow {flow}"));
                    }
                }
                self.arm(now + delay, who, flow, Timer::Written);
            }
            OriginAction::Resume { flow } => {
                if let Some(f) = self.flows.get_mut(&(who, flow)) {
                    f.paused = false;
                }
            }
            OriginAction::ShutdownWrite { flow } => {
                if let Some(f) = self.flows.get_mut(&(who, flow)) {
                    f.peer_finished = true;
                    // Echo servers close once they have echoed everything.
                    if matches!(f.server, Server::Echo { .. }) {
                        f.close_after = true;
                    }
                }
            }
            OriginAction::Close { flow } => {
                self.flows.remove(&(who, flow));
            }
        }
    }

    /// Hands the connector what flow `key` has to say, as far as it takes it.
    fn deliver(
        &mut self,
        instant: std::time::Instant,
        key: (usize, FlowId),
        conn: &mut ConnectorConnection,
    ) -> bool {
        let Some(f) = self.flows.get_mut(&key) else {
            return false;
        };
        if f.paused || f.done {
            return false;
        }
        f.refill();
        let mut progressed = false;
        while !f.outbox.is_empty() {
            let n = f.outbox.len().min(READ_CHUNK);
            let taken = conn.handle_flow_data(instant, key.1, &f.outbox[..n]);
            f.outbox.drain(..taken);
            progressed |= taken > 0;
            if taken < n {
                f.paused = true;
                return progressed;
            }
            f.refill();
        }
        if f.close_after && f.pending_body.is_none() {
            f.done = true;
            conn.handle_flow_finished(instant, key.1);
            return true;
        }
        progressed
    }
}

impl Flow {
    /// Bytes from the connector.
    fn receive(&mut self, data: &[u8], stats: &mut OriginStats) -> Result<(), String> {
        match &mut self.server {
            Server::Echo { upgrade: None } => {
                self.outbox.extend_from_slice(data);
                Ok(())
            }
            Server::Echo {
                upgrade: Some(head),
            } => {
                head.extend_from_slice(data);
                let mut headers = [httparse::EMPTY_HEADER; 64];
                let mut req = httparse::Request::new(&mut headers);
                match req.parse(head) {
                    Ok(httparse::Status::Complete(n)) => {
                        let upgrade = req.headers.iter().any(|h| {
                            h.name.eq_ignore_ascii_case("upgrade")
                                && h.value.eq_ignore_ascii_case(b"websocket")
                        });
                        if !upgrade {
                            return Err("WebSocket request without Upgrade: websocket".into());
                        }
                        let rest = head.split_off(n);
                        self.outbox.extend_from_slice(
                            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
                        );
                        self.outbox.extend_from_slice(&rest);
                        self.server = Server::Echo { upgrade: None };
                        Ok(())
                    }
                    Ok(httparse::Status::Partial) => Ok(()),
                    Err(e) => Err(format!("bad WebSocket request: {e}")),
                }
            }
            Server::Http(server) => {
                server.input.extend_from_slice(data);
                server.serve(
                    &mut self.outbox,
                    &mut self.pending_body,
                    &mut self.close_after,
                    stats,
                )
            }
        }
    }

    /// Produces more of a generated body, a window's worth at a time.
    fn refill(&mut self) {
        let Some(body) = &mut self.pending_body else {
            return;
        };
        while self.outbox.len() < 64 * 1024 && body.next < body.end {
            let n = (body.end - body.next).min(if body.chunked { 9_973 } else { 32 * 1024 });
            if body.chunked {
                self.outbox
                    .extend_from_slice(format!("{n:x}\r\n").as_bytes());
            }
            self.outbox
                .extend((body.next..body.next + n).map(|i| content(body.seed, i)));
            if body.chunked {
                self.outbox.extend_from_slice(b"\r\n");
            }
            body.next += n;
        }
        if body.next == body.end {
            if body.chunked {
                self.outbox.extend_from_slice(b"0\r\n\r\n");
            }
            self.outbox.extend_from_slice(body.after);
            self.pending_body = None;
        }
    }
}

impl HttpServer {
    /// Answers every complete request in the input.
    fn serve(
        &mut self,
        outbox: &mut Vec<u8>,
        pending: &mut Option<Body>,
        close_after: &mut bool,
        stats: &mut OriginStats,
    ) -> Result<(), String> {
        loop {
            match &mut self.state {
                HttpState::Closing => return Ok(()),
                HttpState::Head => {
                    let mut headers = [httparse::EMPTY_HEADER; 64];
                    let mut req = httparse::Request::new(&mut headers);
                    let n = match req.parse(&self.input) {
                        Ok(httparse::Status::Complete(n)) => n,
                        Ok(httparse::Status::Partial) => return Ok(()),
                        Err(e) => return Err(format!("origin got a bad request head: {e}")),
                    };
                    let mut framing = Framing::Empty;
                    for h in req.headers.iter() {
                        let v = String::from_utf8_lossy(h.value);
                        if h.name.eq_ignore_ascii_case("content-length") {
                            framing = Framing::Length(v.parse().map_err(|_| "bad Content-Length")?);
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding")
                            && v.contains("chunked")
                        {
                            framing = Framing::Chunked;
                        }
                    }
                    let path = req.path.unwrap_or("/").to_owned();
                    self.input.drain(..n);
                    self.state = HttpState::Body {
                        reader: BodyReader::new(framing),
                        digest: Digest::EMPTY,
                        path,
                    };
                }
                HttpState::Body {
                    reader,
                    digest,
                    path,
                } => {
                    let mut body = Vec::new();
                    let used = reader
                        .read(&self.input, &mut body, usize::MAX)
                        .map_err(|e| e.to_string())?;
                    self.input.drain(..used);
                    digest.update(&body);
                    if !reader.is_done() {
                        return Ok(());
                    }
                    if pending.is_some() {
                        return Err("pipelined request before the response was sent".into());
                    }
                    stats.requests += 1;
                    let close = respond(path, *digest, outbox, pending)?;
                    if close {
                        *close_after = true;
                        self.state = HttpState::Closing;
                    } else {
                        self.state = HttpState::Head;
                    }
                }
            }
        }
    }
}

/// Writes the response head for `path` (`/bytes/<len>/<seed>/<fixed|chunked|close>`) and arms
/// its generated body. Returns whether the connection closes after it.
fn respond(
    path: &str,
    digest: Digest,
    outbox: &mut Vec<u8>,
    pending: &mut Option<Body>,
) -> Result<bool, String> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (len, seed, mode) = match parts.as_slice() {
        ["bytes", len, seed, mode] => (
            len.parse::<u64>()
                .map_err(|_| format!("bad length in {path}"))?,
            seed.parse::<u64>()
                .map_err(|_| format!("bad seed in {path}"))?,
            *mode,
        ),
        _ => (0, 0, "fixed"),
    };
    let framing = match mode {
        "chunked" => "Transfer-Encoding: chunked\r\n".to_owned(),
        "close" => "Connection: close\r\n".to_owned(),
        _ => format!("Content-Length: {len}\r\n"),
    };
    outbox.extend_from_slice(
        format!("HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\nx-request-digest: {}\r\n{framing}\r\n", digest.text())
            .as_bytes(),
    );
    *pending = Some(Body {
        seed,
        next: 0,
        end: len,
        chunked: mode == "chunked",
        after: if mode == "smuggle" { SMUGGLED } else { b"" },
    });
    Ok(mode == "close")
}

/// How the sim builds a request path for a generated response.
pub fn response_path(len: u64, seed: u64, mode: &str) -> String {
    format!("/bytes/{len}/{seed}/{mode}")
}
