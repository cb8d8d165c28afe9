//! Simulated origins behind the connectors, sans-IO like everything else: an HTTP/1.1 server
//! with keep-alive, a WebSocket echo and a TCP echo. They carry out the connectors'
//! origin [`Io`] on virtual time; a slow origin acknowledges writes at a set rate.
//!
//! Content is generated, not stored: body byte `i` of a stream seeded `s` is [`content`]`(s, i)`,
//! so both ends check integrity byte for byte without holding megabytes.

use std::collections::BTreeMap;
use std::time::Duration;

use burrow_core::connector::{Input, Io};
use burrow_core::datagram::LinkId;
use burrow_core::stream::http1::{BodyReader, Framing};
use burrow_core::stream::proxy::FlowKind;
use burrow_core::tunnel::data::FlowId;
use bytes::Bytes;

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
    /// The dial completed.
    connected: bool,
    /// A read is outstanding (the first one is, once connected; then after each ReadFlow).
    reading: bool,
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

/// A flow's key: connector process, connection attempt, flow.
type Key = (usize, LinkId, FlowId);

/// What an origin tells its connector, owned until it is fed.
#[derive(Debug)]
pub enum Report {
    /// The dial succeeded.
    Connected(LinkId, FlowId),
    /// The dial failed.
    Failed(LinkId, FlowId, String),
    /// The outstanding write completed.
    Written(LinkId, FlowId),
    /// Bytes read.
    Data(LinkId, FlowId, Bytes),
    /// End of stream read.
    Finished(LinkId, FlowId),
}

impl Report {
    /// The connector's input.
    pub fn as_input(&self) -> Input<'_> {
        match self {
            Report::Connected(link, flow) => Input::FlowConnected {
                link: *link,
                flow: *flow,
            },
            Report::Failed(link, flow, reason) => Input::FlowFailed {
                link: *link,
                flow: *flow,
                reason,
            },
            Report::Written(link, flow) => Input::FlowWritten {
                link: *link,
                flow: *flow,
            },
            Report::Data(link, flow, data) => Input::FlowData {
                link: *link,
                flow: *flow,
                data: data.clone(),
            },
            Report::Finished(link, flow) => Input::FlowFinished {
                link: *link,
                flow: *flow,
            },
        }
    }
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
    flows: BTreeMap<Key, Flow>,
    timers: BTreeMap<(VirtualTime, u64), (Key, Timer)>,
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

    /// Origin connections connector `who` has open on `link` (every link: `None`).
    pub fn flows_of(&self, who: usize, link: Option<LinkId>) -> usize {
        self.flows
            .keys()
            .filter(|(w, l, _)| *w == who && link.is_none_or(|link| *l == link))
            .count()
    }

    /// The earliest origin timer.
    pub fn next_deadline(&self) -> Option<VirtualTime> {
        self.timers.keys().next().map(|(t, _)| *t)
    }

    fn arm(&mut self, at: VirtualTime, key: Key, timer: Timer) {
        self.seq += 1;
        self.timers.insert((at, self.seq), (key, timer));
    }

    /// The next thing an origin has to tell its connector by `now`: a due timer, else bytes
    /// (or the end) of a flow with a read outstanding.
    pub fn next_input(&mut self, now: VirtualTime) -> Option<(usize, Report)> {
        if let Some(entry) = self.timers.first_entry() {
            if entry.key().0 <= now {
                let ((who, link, flow), timer) = entry.remove();
                if timer_live(&self.flows, (who, link, flow), &timer) {
                    return Some((
                        who,
                        match timer {
                            Timer::Connected => {
                                if let Some(f) = self.flows.get_mut(&(who, link, flow)) {
                                    f.connected = true;
                                }
                                Report::Connected(link, flow)
                            }
                            Timer::Failed(reason) => Report::Failed(link, flow, reason),
                            Timer::Written => Report::Written(link, flow),
                        },
                    ));
                }
                return self.next_input(now);
            }
        }
        for (&(who, link, flow), f) in self.flows.iter_mut() {
            if !f.connected || !f.reading || f.done {
                continue;
            }
            f.refill();
            if !f.outbox.is_empty() {
                let n = f.outbox.len().min(READ_CHUNK);
                let data = Bytes::from(f.outbox.drain(..n).collect::<Vec<u8>>());
                f.reading = false;
                return Some((who, Report::Data(link, flow, data)));
            }
            if f.close_after && f.pending_body.is_none() {
                f.done = true;
                return Some((who, Report::Finished(link, flow)));
            }
        }
        None
    }

    /// Carries out connector `who`'s I/O on an origin flow.
    pub fn apply(&mut self, now: VirtualTime, who: usize, io: Io<'_>) {
        match io {
            Io::OpenFlow {
                link,
                flow,
                kind,
                dest,
                ..
            } => {
                self.stats.opened += 1;
                let key = (who, link, flow);
                if dest.contains("down.example") || dest.starts_with("192.0.2.99") {
                    self.arm(
                        now + Duration::from_millis(1),
                        key,
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
                    key,
                    Flow {
                        server,
                        pending_body: None,
                        outbox: Vec::new(),
                        connected: false,
                        reading: true,
                        close_after: false,
                        peer_finished: false,
                        done: false,
                    },
                );
                self.arm(now + Duration::from_millis(1), key, Timer::Connected);
            }
            Io::WriteFlow { link, flow, data } => {
                let key = (who, link, flow);
                self.stats.bytes_in += data.len() as u64;
                let delay = self.read_rate.map_or(Duration::ZERO, |rate| {
                    Duration::from_secs_f64(data.len() as f64 / rate as f64)
                });
                match self.flows.get_mut(&key) {
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
                self.arm(now + delay, key, Timer::Written);
            }
            Io::ReadFlow { link, flow } => {
                if let Some(f) = self.flows.get_mut(&(who, link, flow)) {
                    f.reading = true;
                }
            }
            Io::ShutdownFlow { link, flow } => {
                if let Some(f) = self.flows.get_mut(&(who, link, flow)) {
                    f.peer_finished = true;
                    // Echo servers close once they have echoed everything.
                    if matches!(f.server, Server::Echo { .. }) {
                        f.close_after = true;
                    }
                }
            }
            Io::CloseFlow { link, flow } => {
                let key = (who, link, flow);
                self.flows.remove(&key);
                self.timers.retain(|_, (k, _)| *k != key);
            }
            other => {
                self.error
                    .get_or_insert(format!("not origin flow I/O: {other:?}"));
            }
        }
    }
}

/// Whether a timer still means something: a dial failure always does (the flow never
/// existed here), the rest only while their flow is open.
fn timer_live(flows: &BTreeMap<Key, Flow>, key: Key, timer: &Timer) -> bool {
    matches!(timer, Timer::Failed(_)) || flows.contains_key(&key)
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
