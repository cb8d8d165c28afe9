//! One data stream's traffic between the edge and an origin, with no QUIC and no sockets: bytes
//! from the edge (after the preamble) and from the origin go in, bytes for each side come out.
//!
//! Upstream (edge → origin): the `ConnectRequest`, then the request body re-framed for the
//! origin (HTTP), or raw bytes (TCP, WebSocket after its `101`). Downstream (origin → edge): the
//! `ConnectResponse` (HTTP status and headers, TCP ack, or an error), then the body de-framed, or
//! raw bytes. Each direction buffers at most `window` bytes; callers read from a side only as
//! much as [`DataStream::edge_room`] / [`DataStream::origin_room`] allow, which is what carries
//! backpressure end to end (PROTOCOL.md A§3.4-3.9).

use std::sync::Arc;
use std::time::Instant;

use thiserror::Error;

use super::connect::{
    decode_connect_request, key, ConnectRequestReader, ConnectResponse, ConnectionType, Metadata,
};
use super::http1::{self, BodyReader, Framing, ResponseHead};
use super::tag::Tag;
use super::websocket::{self, Control};
use crate::ingress::access::{self, AccessKeys, Verdict};
use crate::ingress::{bastion, Ingress, Origin, Service};
use crate::rpc::frame::FrameLimits;
use crate::tunnel::requests::RequestOutcome;

/// cloudflared's `ConnectResponse.error` for a TCP flow the flow limiter refused (sent with
/// metadata `FlowConnectRateLimited=true`).
pub const RATE_LIMITED: &str =
    "failed to start tcp flow due to rate limiting: too many active flows";

/// What kind of origin connection a stream needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlowKind {
    /// HTTP/1.1 request and response.
    Http,
    /// HTTP upgrade, then raw bytes.
    WebSocket,
    /// Raw TCP to `ip:port`.
    Tcp,
}

/// The origin a stream wants, once its `ConnectRequest` has been read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginTarget {
    /// Connection kind.
    pub kind: FlowKind,
    /// `ConnectRequest.dest`: a URL or path (HTTP, WebSocket) or `ip:port` (TCP).
    pub dest: String,
    /// The request's `Host`, when it has one (HTTP, WebSocket).
    pub host: Option<String>,
    /// The origin the request's ingress rule resolved to (HTTP, WebSocket with rules): the only
    /// origin it may reach. None: no rules (or TCP), dial `dest`.
    pub origin: Option<Arc<Origin>>,
}

/// The edge broke the data-stream protocol; the stream is reset with nothing written, as
/// cloudflared does.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("bad ConnectRequest: {0}")]
pub struct StreamError(pub String);

/// How the edge side of the stream must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeEnd {
    /// FIN once everything queued is written; stop reading what is left of the request.
    Finish,
    /// RESET_STREAM(0) and STOP_SENDING(0) now.
    Reset,
}

/// What happens to the origin connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginEnd {
    /// Send FIN to the origin after what is queued (the edge finished a raw stream); keep reading.
    ShutdownWrite,
    /// The exchange completed on a keep-alive connection: it may carry another request.
    Reusable,
    /// Close the connection.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Up {
    /// Reading the `ConnectRequest`.
    Request,
    /// Sending the HTTP request body.
    Body(Framing),
    /// Holding edge bytes until the origin answers the WebSocket upgrade.
    AwaitUpgrade,
    /// Raw bytes.
    Raw,
    /// Nothing more goes to the origin.
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Down {
    /// Waiting for the request, then for the origin connection.
    Connecting,
    /// Reading the origin's response head.
    Head,
    /// Reading the response body.
    Body(BodyReader),
    /// Raw bytes.
    Raw,
    /// Response complete.
    Done,
}

/// The WebSocket side of a TCP-over-WebSocket stream.
#[derive(Debug)]
struct WsBridge {
    decoder: websocket::Decoder,
    /// `Sec-WebSocket-Accept` for the 101 (none when the request had no key, as cloudflared).
    accept: Option<String>,
}

/// The path of a request's URL (`/` when it has none), for its log line.
fn url_path(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.find('/').map_or("/", |i| &rest[i..]);
    rest.split(['?', '#']).next().unwrap_or("/")
}

/// The `User-Agent` of Cloudflare's load balancer health checks (cloudflared's
/// `lbProbeUserAgentPrefix`): their requests are logged with `lbProbe`.
const LB_PROBE_USER_AGENT: &str =
    "Mozilla/5.0 (compatible; Cloudflare-Traffic-Manager/1.0; +https://www.cloudflare.com/traffic-manager/;";

/// The first value of request header `name` (any case).
fn header<'a>(req: &'a ConnectRequestReader<'_>, name: &str) -> Option<&'a str> {
    req.metadata().flatten().find_map(|m| {
        m.key
            .strip_prefix(key::HTTP_HEADER_PREFIX)
            .filter(|n| n.eq_ignore_ascii_case(name))
            .map(|_| m.val)
    })
}

/// The request's headers as cloudflared logs `r.Header`: a JSON object of Go's canonical
/// names to their values (keys sorted, as Go encodes a map), without the internal upgrade
/// marker and the trace header, which cloudflared strips before it logs, nor, over HTTP/2,
/// the `Transfer-Encoding` the link adds for a body of unknown length (HTTP/2 has none); with
/// the `Cf-Warp-Tag-*` headers of `tags`, which cloudflared has added by then.
fn logged_headers(req: &ConnectRequestReader<'_>, http2: bool, tags: &[Tag]) -> String {
    let mut headers: std::collections::BTreeMap<String, Vec<&str>> = Default::default();
    for m in req.metadata().flatten() {
        let Some(name) = m.key.strip_prefix(key::HTTP_HEADER_PREFIX) else {
            continue;
        };
        let internal = [http1::INTERNAL_UPGRADE, http1::TRACE_HEADER]
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h));
        if internal || (http2 && name.eq_ignore_ascii_case("Transfer-Encoding")) {
            continue;
        }
        headers
            .entry(http1::canonical(name))
            .or_default()
            .push(m.val);
    }
    for t in tags {
        let name = http1::canonical(&format!("{}{}", super::tag::HEADER_PREFIX, t.name));
        headers.entry(name).or_default().push(&t.value);
    }
    serde_json::to_string(&headers).unwrap_or_default()
}

/// The request's `ContentLength` as cloudflared logs it: its `Content-Length`; else -1 over
/// HTTP/2 for a body of unknown length (Go's HTTP/2 server), 0 over QUIC (cloudflared reads
/// only the header there).
fn logged_length(req: &ConnectRequestReader<'_>, http2: bool) -> i64 {
    match header(req, "Content-Length").and_then(|v| v.parse().ok()) {
        Some(n) => n,
        None if http2 && header(req, "Transfer-Encoding").is_some() => -1,
        None => 0,
    }
}

/// The service cloudflared names in a private-network TCP request's log lines.
const WARP_ROUTING: &str = "warp-routing";

/// One data stream's proxying state.
#[derive(Debug)]
pub struct DataStream {
    window: usize,
    limits: FrameLimits,
    kind: Option<FlowKind>,
    up: Up,
    down: Down,
    /// Request bytes before the whole `ConnectRequest` is in.
    request: Vec<u8>,
    is_head: bool,
    keep_alive: bool,
    /// Response head bytes before the whole head is in.
    head: Vec<u8>,
    /// Body framing split across reads (a partial chunk-size line, a lone CR), kept here so that
    /// a short [`DataStream::on_origin_data`] always means "no room", never "send more first".
    carry: Vec<u8>,
    to_origin: Vec<u8>,
    to_edge: Vec<u8>,
    responded: bool,
    edge_end: Option<EdgeEnd>,
    origin_end: Option<OriginEnd>,
    /// Rules whose `originRequest` options shape the request (none: defaults).
    ingress: Option<Arc<Ingress>>,
    /// Tags sent to HTTP origins.
    tags: Arc<[Tag]>,
    /// Signing keys for rules with `access.required` (none: such rules refuse everything).
    access: Option<Arc<AccessKeys>>,
    /// When the request is judged (Access JWT expiry).
    now: Option<Instant>,
    /// A TCP-over-WebSocket origin (`ssh://`, `tcp://`, ...): the edge side is WebSocket
    /// frames, the origin side raw bytes.
    ws: Option<WsBridge>,
    /// The request body went without framing: the origin cannot tell where it ended, so the
    /// connection must not carry another request.
    bare_body: bool,
    /// Where the head of a bare-body request ends in `to_origin`, until the origin connection
    /// is known: an HTTP/2 one has it framed ([`DataStream::on_origin_http2`]).
    bare_head: Option<usize>,
    /// The exchange failed (a request error in cloudflared's metrics).
    errored: bool,
    /// The origin's response status, unless it was a 101.
    status: Option<u16>,
    /// The whole response was read from the origin.
    delivered: bool,
    /// The stream turned into raw bytes (TCP acked, WebSocket answered 101).
    raw: bool,
    /// The ingress rule that took the request, and its index, for the response's log line.
    rule: Option<(i64, Arc<Origin>)>,
    /// The HA connection it came on, for the log lines.
    conn_index: u8,
    /// It came over cloudflared's HTTP/2 transport, for the request's log line.
    http2: bool,
    /// A private-network TCP request's destination and `FlowID`, for its log lines.
    tcp: Option<Box<TcpLog>>,
}

/// What cloudflared's `newTCPLogger` adds to a TCP request's lines.
#[derive(Debug)]
struct TcpLog {
    dest: String,
    flow_id: String,
    /// Its flow was admitted (cloudflared logs no start nor end for a refused one).
    started: bool,
}

impl DataStream {
    /// A stream buffering at most `window` bytes each way, reading a `ConnectRequest` of at
    /// most `limits`.
    pub fn new(window: usize, limits: FrameLimits) -> Self {
        Self {
            window: window.max(1),
            limits,
            kind: None,
            up: Up::Request,
            down: Down::Connecting,
            request: Vec::new(),
            is_head: false,
            keep_alive: false,
            head: Vec::new(),
            carry: Vec::new(),
            to_origin: Vec::new(),
            to_edge: Vec::new(),
            responded: false,
            edge_end: None,
            origin_end: None,
            ingress: None,
            tags: Arc::from([]),
            access: None,
            now: None,
            ws: None,
            bare_body: false,
            bare_head: None,
            errored: false,
            status: None,
            delivered: false,
            raw: false,
            rule: None,
            conn_index: 0,
            http2: false,
            tcp: None,
        }
    }

    /// Logs the request as arriving on HA connection `index`, over the HTTP/2 transport if
    /// `http2`.
    pub fn logged_as(mut self, index: u8, http2: bool) -> Self {
        self.conn_index = index;
        self.http2 = http2;
        self
    }

    /// The service of the rule that took the request, for its log lines ("" before one did).
    fn rule_service(&self) -> String {
        self.rule
            .as_ref()
            .map(|(_, o)| o.service.to_string())
            .unwrap_or_default()
    }

    /// cloudflared's TCP request lines, `tcp proxy stream started` when its flow is admitted
    /// and `tcp proxy stream finished successfully` when it ends without error (none for
    /// other requests).
    pub fn log_tcp(&mut self, started: bool) {
        let Some(t) = &mut self.tcp else {
            return;
        };
        if !started && (self.errored || !t.started) {
            return;
        }
        t.started = true;
        tracing::debug!(
            event = 2u8,
            conn_index = self.conn_index,
            originService = WARP_ROUTING,
            flowID = t.flow_id,
            destAddr = t.dest,
            "{}",
            if started {
                "tcp proxy stream started"
            } else {
                "tcp proxy stream finished successfully"
            }
        );
    }

    /// What the `ConnectRequest` asked for, once it is read (then the stream is a request).
    pub fn kind(&self) -> Option<FlowKind> {
        self.kind
    }

    /// What the request came to so far; final once the stream has ended.
    pub fn outcome(&self) -> RequestOutcome {
        match self.status {
            _ if self.errored => RequestOutcome::Error,
            Some(code) if self.delivered => RequestOutcome::Status(code),
            _ => RequestOutcome::Done,
        }
    }

    /// Checks Access JWTs of rules that require them with `keys`, judged at `now`.
    pub fn with_access(mut self, keys: Option<Arc<AccessKeys>>, now: Instant) -> Self {
        self.access = keys;
        self.now = Some(now);
        self
    }

    /// The time a request read from now on is judged at.
    pub fn set_now(&mut self, now: Instant) {
        self.now = Some(now);
    }

    /// Shapes HTTP requests by the `originRequest` options of the rule in `ingress` that
    /// takes them.
    pub fn with_ingress(mut self, ingress: Option<Arc<Ingress>>) -> Self {
        self.ingress = ingress;
        self
    }

    /// Sends `tags` as `Cf-Warp-Tag-*` headers with HTTP requests.
    pub fn with_tags(mut self, tags: Arc<[Tag]>) -> Self {
        self.tags = tags;
        self
    }

    /// How many edge bytes the stream takes now (0: stop reading, let QUIC flow control hold
    /// the edge back).
    pub fn edge_room(&self) -> usize {
        if self.edge_end.is_some() {
            return 0;
        }
        match self.up {
            // The request may be larger than the window, but what follows it (the body's
            // start) must not be: read it a window at a time.
            Up::Request => self
                .limits
                .max_bytes
                .saturating_sub(self.request.len())
                .min(self.window),
            Up::Body(Framing::Length(left)) => self
                .window
                .saturating_sub(self.to_origin.len())
                .min(usize::try_from(left).unwrap_or(usize::MAX)),
            // Pongs go toward the edge: a ping flood must not grow that buffer either.
            Up::Raw if self.ws.is_some() => self
                .window
                .saturating_sub(self.to_origin.len())
                .min(self.window.saturating_sub(self.to_edge.len())),
            Up::Body(_) | Up::Raw => self.window.saturating_sub(self.to_origin.len()),
            Up::AwaitUpgrade | Up::Done => 0,
        }
    }

    /// True once the request needs nothing more from the edge (bytes after it are ignored).
    pub fn request_complete(&self) -> bool {
        self.up == Up::Done
    }

    /// True once the whole response (or the raw stream's origin side) has been read.
    pub fn response_complete(&self) -> bool {
        self.down == Down::Done
    }

    /// How many origin bytes the stream takes now.
    pub fn origin_room(&self) -> usize {
        if self.edge_end.is_some() {
            return 0;
        }
        match self.down {
            Down::Head => (http1::MAX_HEAD_BYTES + 1).saturating_sub(self.head.len()),
            Down::Raw if self.ws.is_some() => self
                .window
                .saturating_sub(self.to_edge.len() + websocket::MAX_HEADER),
            Down::Body(_) | Down::Raw => self.window.saturating_sub(self.to_edge.len()),
            Down::Connecting | Down::Done => 0,
        }
    }

    /// How many of the next edge bytes go to the origin exactly as sent (a raw stream, or a
    /// request body with a length or none), within [`DataStream::edge_room`]: the caller may
    /// append them to [`DataStream::to_origin`] itself, sparing a copy, then report them with
    /// [`DataStream::passed_up`]. 0: they go through [`DataStream::on_edge_data`].
    pub fn passthrough_up(&self) -> usize {
        match self.up {
            Up::Raw if self.ws.is_some() => 0,
            Up::Raw | Up::Body(Framing::Length(_)) | Up::Body(Framing::UntilClose) => {
                self.edge_room()
            }
            _ => 0,
        }
    }

    /// `n` edge bytes (at most [`DataStream::passthrough_up`]) were appended to
    /// [`DataStream::to_origin`] by the caller.
    pub fn passed_up(&mut self, n: usize) {
        if let Up::Body(Framing::Length(left)) = self.up {
            let left = left.saturating_sub(n as u64);
            self.up = if left == 0 {
                Up::Done
            } else {
                Up::Body(Framing::Length(left))
            };
        }
    }

    /// How many of the next origin bytes go to the edge exactly as read (a raw stream, or body
    /// payload), with nothing queued before them: a caller holding them in a shared buffer may
    /// hand them to QUIC itself, sparing copies, then report them with
    /// [`DataStream::passed_down`]. 0: they go through [`DataStream::on_origin_data`].
    pub fn passthrough_down(&self) -> usize {
        if self.edge_end.is_some() || !self.to_edge.is_empty() || !self.carry.is_empty() {
            return 0;
        }
        match &self.down {
            Down::Raw if self.ws.is_none() => usize::MAX,
            Down::Body(reader) => reader.verbatim(),
            _ => 0,
        }
    }

    /// `n` origin bytes (at most [`DataStream::passthrough_down`]) went to the edge by the
    /// caller.
    pub fn passed_down(&mut self, n: usize) {
        if let Down::Body(reader) = &mut self.down {
            reader.skip(n);
            if reader.is_done() {
                self.down = Down::Done;
                self.complete();
            }
        }
    }

    /// Bytes from the edge (at most [`DataStream::edge_room`]). Once the `ConnectRequest` is
    /// complete, returns the origin to open; a request that is readable but cannot be served
    /// gets its error response queued instead.
    pub fn on_edge_data(&mut self, data: &[u8]) -> Result<Option<OriginTarget>, StreamError> {
        match self.up {
            Up::Request => {
                self.request.extend_from_slice(data);
                let request = std::mem::take(&mut self.request);
                let parsed = self.read_request(&request);
                if matches!(parsed, Ok(None)) {
                    self.request = request;
                }
                parsed
            }
            Up::Body(_) | Up::Raw => {
                self.body_up(data);
                Ok(None)
            }
            // Callers read only within edge_room; anything else is dropped by design.
            Up::AwaitUpgrade | Up::Done => Ok(None),
        }
    }

    fn read_request(&mut self, buf: &[u8]) -> Result<Option<OriginTarget>, StreamError> {
        let decoded =
            decode_connect_request(buf, &self.limits).map_err(|e| StreamError(e.to_string()))?;
        let Some((req, used)) = decoded else {
            return Ok(None);
        };
        let dest = req.dest().map_err(|e| StreamError(e.to_string()))?;
        let kind = match req.connection_type() {
            Ok(ConnectionType::Http) => FlowKind::Http,
            Ok(ConnectionType::WebSocket) => FlowKind::WebSocket,
            Ok(ConnectionType::Tcp) => FlowKind::Tcp,
            Err(e) => {
                // cloudflared meant to answer this and panics instead.
                self.fail(&format!("unsupported error type: {}", e.0), false);
                return Ok(None);
            }
        };
        self.kind = Some(kind);
        let mut host = None;
        let mut origin = None;
        match kind {
            FlowKind::Http | FlowKind::WebSocket => {
                let ingress = self.ingress.clone();
                // An unreadable request fails in write_request below, with its reason.
                let request_host = http1::request_host(&req);
                let found = match (&ingress, &request_host) {
                    (Some(ingress), Ok(h)) => Some(ingress.find_request(dest, h.as_deref())),
                    _ => None,
                };
                let rule = found.map(|(_, r)| r);
                self.rule = found.zip(ingress.as_ref()).map(|((i, r), ing)| {
                    // cloudflared numbers its internal rules -1, -2, ...
                    let users = ing.rules().len();
                    let n = if i < users {
                        i as i64
                    } else {
                        -1 - (i - users) as i64
                    };
                    (n, r.origin.clone())
                });
                // cloudflared's `logHTTPRequest` with its `newHTTPLogger` fields (event 1:
                // HTTP), for its management log stream and debug logs; nothing is built unless
                // debug is on.
                tracing::debug!(
                    event = 1u8,
                    conn_index = self.conn_index,
                    cfRay = header(&req, "Cf-Ray"),
                    lbProbe = header(&req, "User-Agent")
                        .is_some_and(|ua| ua.starts_with(LB_PROBE_USER_AGENT))
                        .then_some(true),
                    originService = %self.rule_service(),
                    ingressRule = self.rule.as_ref().map(|(i, _)| *i),
                    host = request_host.as_ref().ok().and_then(|h| h.as_deref()),
                    path = url_path(dest),
                    headers = logged_headers(&req, self.http2, &self.tags),
                    "content-length" = logged_length(&req, self.http2),
                    "{} {} {}",
                    req.metadata()
                        .flatten()
                        .find(|m| m.key == key::HTTP_METHOD)
                        .map_or("GET", |m| m.val),
                    dest,
                    if self.http2 { "HTTP/2.0" } else { "HTTP/1.1" },
                );
                let policy = match rule {
                    Some(r) => r.origin.origin_request.access.as_ref(),
                    // A request whose host cannot be read matches no rule: if any rule is
                    // protected, it must not slip past on that account.
                    None => ingress.as_ref().and_then(|i| {
                        i.rules()
                            .iter()
                            .find_map(|r| r.origin.origin_request.access.as_ref())
                    }),
                };
                if let Some(policy) = policy {
                    let token = header(&req, access::JWT_HEADER);
                    let Some(now) = self.now else {
                        self.fail("no clock to judge the Access token by", false);
                        return Ok(None);
                    };
                    match access::check(policy, token, self.access.as_deref(), now) {
                        Verdict::Pass => {}
                        Verdict::Forbidden(reason) => {
                            tracing::debug!(%reason, "request filtered by middleware handler (AccessJWTValidator)");
                            // cloudflared logs a filtered request as a request error.
                            self.errored = true;
                            self.answer_status(403);
                            return Ok(None);
                        }
                        Verdict::Error(reason) => {
                            self.fail(&reason, false);
                            return Ok(None);
                        }
                    }
                }
                if let Some(r) = rule.filter(|r| {
                    matches!(
                        r.origin.service,
                        Service::Tcp { .. } | Service::Bastion | Service::SocksProxy
                    )
                }) {
                    if kind != FlowKind::WebSocket {
                        let e = format!(
                            "service {} takes WebSocket requests only (cloudflared access)",
                            r.origin.service
                        );
                        self.fail(&e, false);
                        return Ok(None);
                    }
                    let header = |wanted: &str| {
                        req.metadata().flatten().find_map(|m| {
                            m.key
                                .strip_prefix(key::HTTP_HEADER_PREFIX)
                                .filter(|name| name.eq_ignore_ascii_case(wanted))
                                .map(|_| m.val)
                        })
                    };
                    // A bastion's origin is the destination this request names.
                    let origin = if r.origin.service == Service::Bastion {
                        let named = header(bastion::JUMP_DESTINATION).unwrap_or("");
                        match bastion::destination(named) {
                            Ok(service) => Arc::new(Origin {
                                service,
                                origin_request: r.origin.origin_request.clone(),
                            }),
                            Err(e) => {
                                self.fail(&e.to_string(), false);
                                return Ok(None);
                            }
                        }
                    } else {
                        r.origin.clone()
                    };
                    let key = header("Sec-WebSocket-Key").map(websocket::accept_key);
                    self.ws = Some(WsBridge {
                        decoder: websocket::Decoder::default(),
                        accept: key,
                    });
                    // Nothing goes to the origin before its 101: the eyeball waits for it.
                    self.up = Up::AwaitUpgrade;
                    return Ok(Some(OriginTarget {
                        kind,
                        dest: dest.to_owned(),
                        host: http1::request_host(&req).ok().flatten(),
                        origin: Some(origin),
                    }));
                }
                let mut options = rule.map(|r| r.request_options()).unwrap_or_default();
                options.tags = &self.tags;
                origin = rule.map(|r| r.origin.clone());
                let websocket = kind == FlowKind::WebSocket;
                match http1::write_request(&req, websocket, &options, &mut self.to_origin) {
                    Ok(head) => {
                        self.is_head = head.is_head;
                        host = head.host;
                        self.bare_body = head.body == Framing::UntilClose && !websocket;
                        self.bare_head = self.bare_body.then_some(self.to_origin.len());
                        self.up = match head.body {
                            _ if websocket => Up::AwaitUpgrade,
                            Framing::Empty => Up::Done,
                            framing => Up::Body(framing),
                        };
                    }
                    Err(e) => {
                        self.fail(&e.to_string(), false);
                        return Ok(None);
                    }
                }
            }
            FlowKind::Tcp => {
                self.up = Up::Raw;
                let flow_id = req.metadata().flatten().find(|m| m.key == key::FLOW_ID);
                self.tcp = Some(Box::new(TcpLog {
                    dest: dest.to_owned(),
                    flow_id: flow_id.map_or_else(String::new, |m| m.val.to_owned()),
                    started: false,
                }));
            }
        }
        let target = OriginTarget {
            kind,
            dest: dest.to_owned(),
            host,
            origin,
        };
        // What followed the request is the start of the body.
        let rest = &buf[used..];
        if !rest.is_empty() {
            self.body_up(rest);
        }
        Ok(Some(target))
    }

    /// Queues request-body bytes for the origin, framed as the request says.
    fn body_up(&mut self, data: &[u8]) {
        match self.up {
            Up::Body(Framing::Chunked) => http1::write_chunk(&mut self.to_origin, data),
            Up::Body(Framing::Length(left)) => {
                let n = data.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                self.to_origin.extend_from_slice(&data[..n]);
                let left = left - n as u64;
                self.up = if left == 0 {
                    Up::Done
                } else {
                    Up::Body(Framing::Length(left))
                };
            }
            Up::Raw if self.ws.is_some() => self.ws_up(data),
            Up::Body(Framing::UntilClose) | Up::Raw => self.to_origin.extend_from_slice(data),
            _ => {}
        }
    }

    /// Unwraps the eyeball's WebSocket frames for the origin; answers pings.
    fn ws_up(&mut self, data: &[u8]) {
        let Some(ws) = &mut self.ws else {
            return;
        };
        match ws.decoder.feed(data, &mut self.to_origin) {
            Ok(controls) => {
                for c in controls {
                    match c {
                        Control::Ping(p) => {
                            websocket::write_frame(&mut self.to_edge, websocket::OP_PONG, &p)
                        }
                        Control::Close => {
                            self.up = Up::Done;
                            self.origin_end.get_or_insert(OriginEnd::ShutdownWrite);
                        }
                        // The origin takes a byte stream: message bounds do not reach it.
                        Control::MessageEnd { .. } => {}
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "eyeball broke the WebSocket; resetting");
                self.abort();
            }
        }
    }

    /// The edge finished its side of the stream.
    pub fn on_edge_finished(&mut self) {
        match self.up {
            Up::Request => {
                self.edge_end = Some(EdgeEnd::Reset);
            }
            Up::Body(Framing::Chunked) => {
                self.to_origin.extend_from_slice(http1::LAST_CHUNK);
                self.up = Up::Done;
            }
            // A bare body just stops; cloudflared does not half-close the origin either.
            Up::Body(Framing::UntilClose) => self.up = Up::Done,
            Up::Body(_) => {
                // A body shorter than its Content-Length: the origin must not take it as whole.
                self.abort();
            }
            Up::Raw => {
                // cloudflared tears the origin down here; a half-close keeps the answer coming.
                self.up = Up::Done;
                self.origin_end.get_or_insert(OriginEnd::ShutdownWrite);
            }
            Up::AwaitUpgrade => self.up = Up::Done,
            Up::Done => {}
        }
    }

    /// The edge reset its side or stopped reading ours: abandon the exchange.
    pub fn on_edge_reset(&mut self) {
        self.abort();
    }

    /// The connector ends the exchange (its origin took nothing for too long): the edge sees
    /// a reset stream and the origin connection closes, as when the edge resets it.
    pub fn give_up(&mut self) {
        self.abort();
    }

    /// The origin took no write for `--write-stream-timeout`: the exchange ends as
    /// cloudflared's pipe ends when a write to its origin fails. The origin closes, the edge
    /// gets what the origin sent, then the end of the stream; no request error.
    pub fn on_origin_write_timeout(&mut self) {
        if self.edge_end.is_none() {
            self.end(EdgeEnd::Finish);
        }
    }

    /// The origin connection about to be [connected](DataStream::on_origin_connected) speaks
    /// HTTP/2 through core's bridge (`http2Origin`). A bare body (`disableChunkedEncoding`
    /// with no length known) is then framed in chunks for the bridge, which sends it as DATA
    /// frames ended by END_STREAM and no length, as cloudflared's Go transport sends a body of
    /// unknown length over HTTP/2; the connection stays reusable. Over HTTP/1.1 the body goes
    /// bare, delimited by nothing, as cloudflared sends it.
    pub fn on_origin_http2(&mut self) {
        let Some(end) = self.bare_head.take() else {
            return;
        };
        // Nothing is written to an origin before it is connected, so the head is all there
        // (an aborted exchange cleared it and is left alone).
        if self.edge_end.is_some() || self.to_origin.len() < end || end < 2 {
            return;
        }
        let body = self.to_origin.split_off(end);
        // The head ends in its blank line; the framing header goes before it.
        self.to_origin.truncate(end - 2);
        self.to_origin
            .extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
        http1::write_chunk(&mut self.to_origin, &body);
        match self.up {
            Up::Body(Framing::UntilClose) => self.up = Up::Body(Framing::Chunked),
            // The edge finished the body already.
            Up::Done => self.to_origin.extend_from_slice(http1::LAST_CHUNK),
            _ => {}
        }
        self.bare_body = false;
    }

    /// The origin connection is up (or a pooled one was handed over).
    pub fn on_origin_connected(&mut self) {
        // Over HTTP/1.1 a bare body stays bare.
        self.bare_head = None;
        if self.down != Down::Connecting || self.edge_end.is_some() {
            return;
        }
        if let Some(ws) = &self.ws {
            let accept = ws.accept.clone();
            let mut metadata = vec![Metadata {
                key: key::HTTP_STATUS,
                val: "101",
            }];
            if let Some(a) = &accept {
                metadata.extend([
                    Metadata {
                        key: "HttpHeader:Connection",
                        val: "Upgrade",
                    },
                    Metadata {
                        key: "HttpHeader:Upgrade",
                        val: "websocket",
                    },
                    Metadata {
                        key: "HttpHeader:Sec-Websocket-Accept",
                        val: a,
                    },
                ]);
            }
            self.respond(&ConnectResponse {
                error: "",
                metadata: &metadata,
            });
            self.go_raw();
            if self.up == Up::AwaitUpgrade {
                self.up = Up::Raw;
            }
            return;
        }
        match self.kind {
            Some(FlowKind::Tcp) => {
                self.respond(&ConnectResponse {
                    error: "",
                    metadata: &[],
                });
                self.go_raw();
            }
            Some(_) => self.down = Down::Head,
            None => {}
        }
    }

    /// The origin could not be reached, or broke mid-way.
    pub fn on_origin_failed(&mut self, reason: &str) {
        self.fail(reason, false);
    }

    /// The flow limit refused this stream.
    pub fn refuse_rate_limited(&mut self) {
        self.fail(RATE_LIMITED, true);
    }

    /// Bytes from the origin (at most [`DataStream::origin_room`]); returns how many were taken.
    pub fn on_origin_data(&mut self, data: &[u8]) -> usize {
        let room = self.origin_room();
        let data = &data[..data.len().min(room)];
        match &mut self.down {
            Down::Raw if self.ws.is_some() => {
                if !data.is_empty() {
                    websocket::write_frame(&mut self.to_edge, websocket::OP_BINARY, data);
                }
                data.len()
            }
            Down::Raw => {
                self.to_edge.extend_from_slice(data);
                data.len()
            }
            Down::Head => {
                self.head.extend_from_slice(data);
                let head = std::mem::take(&mut self.head);
                match http1::parse_response(&head, self.is_head) {
                    Ok(Some((response, used))) => {
                        self.on_response_head(response);
                        // Bytes after the head belong to the body: take what fits now.
                        let rest = &head[used..];
                        let taken = self.on_origin_data(rest);
                        // Whatever did not fit is not consumed from the caller's data.
                        data.len() - (rest.len() - taken).min(data.len())
                    }
                    Ok(None) => {
                        self.head = head;
                        data.len()
                    }
                    Err(e) => {
                        self.fail(&e.to_string(), false);
                        data.len()
                    }
                }
            }
            Down::Body(_) if !self.carry.is_empty() => {
                // Finish the carried line with (at most a line of) new bytes.
                let take = data.len().min(http1::MAX_LINE);
                let mut joined = std::mem::take(&mut self.carry);
                let carried = joined.len();
                joined.extend_from_slice(&data[..take]);
                let used = self.read_body(&joined);
                if used < carried {
                    // Still incomplete (a long line): keep all of it.
                    self.carry = joined.split_off(used);
                    return take;
                }
                let from_data = used - carried;
                from_data + self.on_origin_data(&data[from_data..])
            }
            Down::Body(_) => {
                let used = self.read_body(data);
                let stalled_on_input = matches!(self.down, Down::Body(_))
                    && self.to_edge.len() < self.window
                    && used < data.len();
                if stalled_on_input {
                    // Only a partial framing line stops the reader with room left; the reader
                    // refuses lines past MAX_LINE, so this stays small.
                    self.carry.extend_from_slice(&data[used..]);
                    return data.len();
                }
                used
            }
            Down::Connecting | Down::Done => 0,
        }
    }

    /// Feeds body bytes to the reader; returns how many it consumed (all, on a framing error,
    /// which fails the stream).
    fn read_body(&mut self, input: &[u8]) -> usize {
        let Down::Body(reader) = &mut self.down else {
            return 0;
        };
        let room = self.window.saturating_sub(self.to_edge.len());
        match reader.read(input, &mut self.to_edge, room) {
            Ok(used) => {
                if reader.is_done() {
                    self.down = Down::Done;
                    self.complete();
                }
                used
            }
            Err(e) => {
                self.fail(&e.to_string(), false);
                input.len()
            }
        }
    }

    fn on_response_head(&mut self, response: ResponseHead) {
        let status = response.status.to_string();
        let names: Vec<String> = response
            .headers
            .iter()
            .map(|(name, _)| format!("{}{name}", key::HTTP_HEADER_PREFIX))
            .collect();
        let mut metadata = Vec::with_capacity(1 + names.len());
        metadata.push(Metadata {
            key: key::HTTP_STATUS,
            val: &status,
        });
        metadata.extend(
            names
                .iter()
                .zip(&response.headers)
                .map(|(key, (_, val))| Metadata { key, val }),
        );
        self.respond(&ConnectResponse {
            error: "",
            metadata: &metadata,
        });
        self.keep_alive = response.keep_alive;
        // cloudflared's `logOriginHTTPResponse`.
        tracing::debug!(
            event = 1u8,
            conn_index = self.conn_index,
            originService = %self.rule_service(),
            ingressRule = self.rule.as_ref().map(|(i, _)| *i),
            "content-length" = response
                .headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.parse::<i64>().ok())
                .unwrap_or(-1),
            "{} {}",
            response.status,
            http::StatusCode::from_u16(response.status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or(""),
        );
        if response.status != 101 {
            self.status = Some(response.status);
        }
        if self.kind == Some(FlowKind::WebSocket) && response.status == 101 {
            self.go_raw();
            if self.up == Up::AwaitUpgrade {
                self.up = Up::Raw;
            }
            return;
        }
        if self.up == Up::AwaitUpgrade {
            self.up = Up::Done;
        }
        let reader = BodyReader::new(response.body);
        if reader.is_done() {
            self.down = Down::Done;
            self.complete();
        } else {
            self.down = Down::Body(reader);
        }
    }

    /// The origin closed its side.
    pub fn on_origin_finished(&mut self) {
        match &mut self.down {
            Down::Body(reader) => match reader.finish() {
                Ok(()) => {
                    self.down = Down::Done;
                    self.keep_alive = false;
                    self.complete();
                }
                Err(e) => self.fail(&e.to_string(), false),
            },
            Down::Raw => {
                self.down = Down::Done;
                self.origin_end = Some(OriginEnd::Close);
                self.edge_end = Some(EdgeEnd::Finish);
            }
            Down::Connecting | Down::Head => {
                self.fail("origin closed the connection before responding", false)
            }
            Down::Done => {}
        }
    }

    /// The response is complete: finish the stream; keep the origin only if nothing is left
    /// half-sent on it.
    fn complete(&mut self) {
        self.delivered = true;
        self.edge_end = Some(EdgeEnd::Finish);
        let reusable =
            self.keep_alive && !self.bare_body && self.up == Up::Done && self.to_origin.is_empty();
        self.origin_end = Some(if reusable {
            OriginEnd::Reusable
        } else {
            OriginEnd::Close
        });
    }

    /// Fails the exchange: an error `ConnectResponse` if nothing was answered yet, else a reset.
    fn fail(&mut self, reason: &str, rate_limited: bool) {
        if self.edge_end.is_some() {
            return;
        }
        if self.responded {
            self.abort();
            return;
        }
        // cloudflared's flow limit refusal is returned without being logged as a request error.
        self.errored |= !rate_limited;
        if !rate_limited {
            // cloudflared's `logRequestError`, at debug: core logs nothing above it. The
            // management stream still shows it as an error (a line with an `error` field is
            // one, as cloudflared reads its own lines).
            match &self.tcp {
                Some(t) => tracing::debug!(
                    event = 2u8,
                    conn_index = self.conn_index,
                    originService = WARP_ROUTING,
                    flowID = t.flow_id,
                    destAddr = t.dest,
                    error = reason
                ),
                None => tracing::debug!(
                    event = 1u8,
                    conn_index = self.conn_index,
                    originService = %self.rule_service(),
                    ingressRule = self.rule.as_ref().map(|(i, _)| *i),
                    error = reason
                ),
            }
        }
        let limited = [Metadata {
            key: key::FLOW_CONNECT_RATE_LIMITED,
            val: key::FLOW_CONNECT_RATE_LIMITED_VALUE,
        }];
        self.answer(&ConnectResponse {
            error: if reason.is_empty() {
                "origin error"
            } else {
                reason
            },
            metadata: if rate_limited { &limited } else { &[] },
        });
    }

    /// Answers `status` with no headers and no body, the origin never asked (cloudflared's
    /// middleware refusals).
    fn answer_status(&mut self, status: u16) {
        let status = status.to_string();
        self.answer(&ConnectResponse {
            error: "",
            metadata: &[Metadata {
                key: key::HTTP_STATUS,
                val: &status,
            }],
        });
    }

    /// Ends the exchange with `response`, before anything reached the origin.
    fn answer(&mut self, response: &ConnectResponse<'_>) {
        self.respond(response);
        if !self.responded {
            return;
        }
        self.to_origin.clear();
        self.up = Up::Done;
        self.down = Down::Done;
        self.edge_end = Some(EdgeEnd::Finish);
        self.origin_end = Some(OriginEnd::Close);
    }

    fn abort(&mut self) {
        // A raw stream (TCP, WebSocket after its 101) that breaks is no request error in
        // cloudflared (its pipe logs and returns nothing); an HTTP exchange that breaks is.
        self.errored |= !self.raw;
        self.to_edge.clear();
        self.end(EdgeEnd::Reset);
    }

    /// Nothing more moves either way: the origin closes, the edge's stream ends as `edge`.
    fn end(&mut self, edge: EdgeEnd) {
        self.to_origin.clear();
        self.up = Up::Done;
        self.down = Down::Done;
        self.origin_end = Some(OriginEnd::Close);
        self.edge_end = Some(edge);
    }

    /// From now on bytes pass as they are, both ways.
    fn go_raw(&mut self) {
        self.down = Down::Raw;
        self.raw = true;
    }

    fn respond(&mut self, response: &ConnectResponse<'_>) {
        if response.encode(&mut self.to_edge).is_err() {
            // Only absurd header sets fail to encode; the edge then sees a reset.
            self.abort();
            return;
        }
        self.responded = true;
    }

    /// What the origin needs to receive; the caller removes what it wrote.
    pub fn to_origin(&mut self) -> &mut Vec<u8> {
        &mut self.to_origin
    }

    /// What the edge needs to receive; the caller removes what it wrote.
    pub fn to_edge(&mut self) -> &mut Vec<u8> {
        &mut self.to_edge
    }

    /// How the edge side must end, once decided.
    pub fn edge_end(&self) -> Option<EdgeEnd> {
        self.edge_end
    }

    /// What to do with the origin connection, once decided.
    pub fn origin_end(&self) -> Option<OriginEnd> {
        self.origin_end
    }

    /// Bytes buffered in this stream (both directions and partial heads): what the window
    /// bounds.
    pub fn buffered(&self) -> usize {
        self.request.len()
            + self.head.len()
            + self.carry.len()
            + self.to_origin.len()
            + self.to_edge.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::connect::{decode_connect_response, request_bytes};
    use crate::stream::preamble::DATA_PREAMBLE_LEN;

    const WINDOW: usize = 64;

    fn stream_for(
        kind: ConnectionType,
        dest: &str,
        meta: &[(&str, &str)],
    ) -> (DataStream, OriginTarget) {
        let buf = request_bytes(kind, dest, meta);
        let mut s = DataStream::new(WINDOW, FrameLimits::CONNECT_REQUEST);
        assert_eq!(
            s.edge_room(),
            WINDOW,
            "a request is read a window at a time"
        );
        // Byte by byte: a request may arrive in any pieces.
        let (last, head) = buf.split_last().unwrap();
        for b in head {
            assert_eq!(s.on_edge_data(std::slice::from_ref(b)), Ok(None));
        }
        let target = s.on_edge_data(&[*last]).unwrap().unwrap();
        (s, target)
    }

    /// Offers `wire` from the origin as a driver would, draining toward the edge in between.
    fn feed_origin(s: &mut DataStream, wire: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut offset = 0;
        while offset < wire.len() {
            offset += s.on_origin_data(&wire[offset..]);
            assert!(s.to_edge().len() <= WINDOW.max(200));
            out.append(s.to_edge());
        }
        out
    }

    /// The response message and the body bytes after it.
    fn response(s: &mut DataStream) -> (String, Vec<(String, String)>, Vec<u8>) {
        response_of(&std::mem::take(s.to_edge()))
    }

    fn response_of(out: &[u8]) -> (String, Vec<(String, String)>, Vec<u8>) {
        let (r, used) =
            decode_connect_response(&out[DATA_PREAMBLE_LEN..], &FrameLimits::CONNECT_REQUEST)
                .unwrap()
                .unwrap();
        let meta = r
            .metadata()
            .map(|m| m.unwrap())
            .map(|m| (m.key.to_owned(), m.val.to_owned()))
            .collect();
        (
            r.error().unwrap().to_owned(),
            meta,
            out[DATA_PREAMBLE_LEN + used..].to_vec(),
        )
    }

    #[test]
    fn http_exchange_dechunks_and_releases_keep_alive_origin() {
        let (mut s, target) = stream_for(
            ConnectionType::Http,
            "http://h/x",
            &[("HttpMethod", "POST"), ("HttpHeader:Content-Length", "3")],
        );
        assert_eq!(
            target,
            OriginTarget {
                kind: FlowKind::Http,
                dest: "http://h/x".into(),
                host: Some("h".into()),
                origin: None,
            }
        );
        assert_eq!(s.edge_room(), 0, "the request head fills the window");
        assert!(String::from_utf8_lossy(s.to_origin()).ends_with("Content-Length: 3\r\n\r\n"));
        s.to_origin().clear();
        assert_eq!(s.edge_room(), 3, "no more than the Content-Length");
        s.on_edge_data(b"abc").unwrap();
        assert_eq!(s.edge_room(), 0);
        assert_eq!(s.to_origin(), b"abc");
        s.to_origin().clear();
        assert_eq!(
            s.origin_room(),
            0,
            "nothing is read before the origin connects"
        );
        s.on_origin_connected();
        let wire =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n3\r\nxyz\r\n0\r\n\r\n";
        let out = feed_origin(&mut s, wire);
        let (error, meta, body) = response_of(&out);
        assert_eq!(error, "");
        assert_eq!(
            meta,
            vec![
                ("HttpStatus".into(), "200".into()),
                ("HttpHeader:X-A".into(), "1".into())
            ]
        );
        assert_eq!(body, b"xyz");
        assert_eq!(s.edge_end(), Some(EdgeEnd::Finish));
        assert_eq!(s.origin_end(), Some(OriginEnd::Reusable));
    }

    /// Offers `wire` as a zero-copy driver would: payload the stream lets through goes straight
    /// to the edge (up to `piece` bytes a time), the rest through `on_origin_data`.
    fn feed_origin_passing(s: &mut DataStream, wire: &[u8], piece: usize) -> (Vec<u8>, usize) {
        let mut out = Vec::new();
        let mut passed = 0;
        let mut offset = 0;
        while offset < wire.len() {
            let n = s.passthrough_down().min(wire.len() - offset).min(piece);
            if n > 0 {
                out.extend_from_slice(&wire[offset..offset + n]);
                s.passed_down(n);
                passed += n;
                offset += n;
                continue;
            }
            let n = s.on_origin_data(&wire[offset..(offset + piece).min(wire.len())]);
            out.append(s.to_edge());
            if n == 0 {
                break;
            }
            offset += n;
        }
        (out, passed)
    }

    #[test]
    fn passing_payload_through_gives_the_buffered_paths_bytes_and_ending() {
        let wires: [&[u8]; 3] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n5;x=y\r\ndefgh\r\n0\r\nT: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end",
        ];
        for wire in wires {
            let (mut a, _) = stream_for(ConnectionType::Http, "/p", &[]);
            a.on_origin_connected();
            let want = feed_origin(&mut a, wire);
            for piece in [1, 3, 7, wire.len()] {
                let (mut b, _) = stream_for(ConnectionType::Http, "/p", &[]);
                b.on_origin_connected();
                let (got, passed) = feed_origin_passing(&mut b, wire, piece);
                assert_eq!(got, want, "piece {piece}");
                // Payload that starts a read passes; payload after framing in one read does not.
                assert!(
                    piece > 1 || passed > 0,
                    "byte by byte, payload passes through"
                );
                if wire.ends_with(b"end") {
                    b.on_origin_finished();
                    a.on_origin_finished();
                }
                assert_eq!(b.response_complete(), a.response_complete());
                assert_eq!(b.edge_end(), a.edge_end());
                assert_eq!(b.origin_end(), a.origin_end());
            }
        }
        // Framing is never passed through, and nothing passes ahead of queued bytes.
        let (mut s, _) = stream_for(ConnectionType::Http, "/p", &[]);
        s.on_origin_connected();
        assert_eq!(s.passthrough_down(), 0, "the head is parsed");
        s.on_origin_data(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(s.passthrough_down(), 0, "the response is queued first");
        s.to_edge().clear();
        assert_eq!(s.passthrough_down(), 0, "a chunk-size line is next");
        s.on_origin_data(b"4\r\n");
        assert_eq!(s.passthrough_down(), 4, "the chunk's payload");
    }

    #[test]
    fn request_bodies_pass_through_within_their_length_and_the_window() {
        let (mut s, _) = stream_for(
            ConnectionType::Http,
            "http://h/x",
            &[("HttpMethod", "POST"), ("HttpHeader:Content-Length", "100")],
        );
        s.to_origin().clear();
        assert_eq!(s.passthrough_up(), WINDOW, "the window bounds it");
        s.to_origin().extend_from_slice(&[b'a'; WINDOW]);
        s.passed_up(WINDOW);
        assert_eq!(s.passthrough_up(), 0, "a full buffer takes nothing");
        s.to_origin().clear();
        assert_eq!(s.passthrough_up(), 100 - WINDOW, "the length bounds it");
        s.passed_up(100 - WINDOW);
        assert!(s.request_complete());
        // Chunked bodies are re-framed, so they never pass through.
        let (s, _) = stream_for(
            ConnectionType::Http,
            "http://h/x",
            &[
                ("HttpMethod", "POST"),
                ("HttpHeader:Transfer-Encoding", "chunked"),
            ],
        );
        assert_eq!(s.passthrough_up(), 0);
    }

    #[test]
    fn split_framing_is_carried_so_short_counts_mean_no_room() {
        let (mut s, _) = stream_for(ConnectionType::Http, "/c", &[]);
        s.to_origin().clear();
        s.on_origin_connected();
        let wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        let mut out = Vec::new();
        for b in wire {
            // A byte at a time, draining as the edge would: every byte is taken, even a lone CR
            // or half a chunk-size line, because there is room.
            assert_eq!(s.on_origin_data(std::slice::from_ref(b)), 1);
            out.append(s.to_edge());
        }
        assert!(s.response_complete());
        assert!(out.ends_with(b"abcde"));
        assert_eq!(s.origin_end(), Some(OriginEnd::Reusable));
        // Anything after the response is not taken: the caller must not reuse the connection.
        assert_eq!(s.on_origin_data(b"HTTP/1.1 200 OK\r\n"), 0);
    }

    #[test]
    fn chunked_request_body_is_rechunked_and_ended_at_fin() {
        let (mut s, _) = stream_for(
            ConnectionType::Http,
            "/u",
            &[("HttpHeader:Transfer-Encoding", "chunked")],
        );
        s.on_edge_data(b"hello").unwrap();
        s.on_edge_finished();
        assert!(String::from_utf8_lossy(s.to_origin()).ends_with("\r\n\r\n5\r\nhello\r\n0\r\n\r\n"));
        assert_eq!(s.edge_room(), 0);
    }

    fn ingress(yaml: &str) -> Option<Arc<Ingress>> {
        let file = crate::ingress::ConfigFile::from_yaml(yaml).unwrap();
        Some(Arc::new(file.ingress().unwrap().unwrap()))
    }

    const RULES: &str = r#"
ingress:
  - hostname: a.test
    path: ^/raw
    service: http://127.0.0.1:1
    originRequest:
      httpHostHeader: origin.internal
      disableChunkedEncoding: true
  - service: http://127.0.0.1:2
"#;

    fn stream_with(ingress: Option<Arc<Ingress>>, dest: &str, meta: &[(&str, &str)]) -> DataStream {
        let buf = request_bytes(ConnectionType::Http, dest, meta);
        let mut s = DataStream::new(WINDOW, FrameLimits::CONNECT_REQUEST).with_ingress(ingress);
        let mut offset = 0;
        let mut target = None;
        while offset < buf.len() {
            let n = s.edge_room().min(buf.len() - offset);
            target = s.on_edge_data(&buf[offset..offset + n]).unwrap();
            offset += n;
        }
        assert!(target.is_some());
        s
    }

    #[test]
    fn the_matching_rule_shapes_the_request_and_a_bare_body_is_not_reused() {
        let meta = [
            ("HttpMethod", "POST"),
            ("HttpHost", "a.test"),
            ("HttpHeader:Transfer-Encoding", "chunked"),
        ];
        let mut s = stream_with(ingress(RULES), "http://a.test/raw", &meta);
        let head = String::from_utf8(std::mem::take(s.to_origin())).unwrap();
        assert!(head.starts_with("POST /raw HTTP/1.1\r\nHost: origin.internal\r\n"));
        assert!(head.contains("X-Forwarded-Host: a.test\r\n"));
        assert!(!head.contains("Transfer-Encoding") && !head.contains("Content-Length"));
        s.on_edge_data(b"bare ").unwrap();
        s.on_edge_data(b"bytes").unwrap();
        s.on_edge_finished();
        assert_eq!(
            s.to_origin(),
            b"bare bytes",
            "no chunk framing, no last chunk"
        );
        assert!(s.request_complete());
        s.to_origin().clear();
        s.on_origin_connected();
        feed_origin(&mut s, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        assert_eq!(s.edge_end(), Some(EdgeEnd::Finish));
        assert_eq!(
            s.origin_end(),
            Some(OriginEnd::Close),
            "the origin cannot know where the body ended"
        );

        // Another path of the same host: the catch-all, which changes nothing.
        let mut s = stream_with(ingress(RULES), "http://a.test/other", &meta);
        let head = String::from_utf8(std::mem::take(s.to_origin())).unwrap();
        assert!(head.contains("Host: a.test\r\n"));
        assert!(head.contains("Transfer-Encoding: chunked\r\n"));
        s.on_edge_data(b"abc").unwrap();
        s.on_edge_finished();
        assert_eq!(s.to_origin(), b"3\r\nabc\r\n0\r\n\r\n");

        // No rules: as the edge sent it.
        let mut s = stream_with(None, "http://a.test/raw", &meta);
        assert!(String::from_utf8_lossy(s.to_origin()).contains("Transfer-Encoding: chunked"));
    }

    /// Over an HTTP/2 origin (`http2Origin`) a bare body is framed for core's bridge, which
    /// sends it whole with END_STREAM and no length, as cloudflared's Go transport does; the
    /// connection can carry the next request.
    #[test]
    fn a_bare_body_to_an_http2_origin_is_framed_for_the_bridge() {
        let meta = [
            ("HttpMethod", "POST"),
            ("HttpHost", "a.test"),
            ("HttpHeader:Transfer-Encoding", "chunked"),
        ];
        // Body bytes before the connection is known, and after.
        let mut s = stream_with(ingress(RULES), "http://a.test/raw", &meta);
        s.on_edge_data(b"bare ").unwrap();
        s.on_origin_http2();
        s.on_origin_connected();
        s.on_edge_data(b"bytes").unwrap();
        s.on_edge_finished();
        let wire = std::mem::take(s.to_origin());
        let (request, framing, end) = crate::http2::origin::parse_request(&wire).unwrap().unwrap();
        assert_eq!(framing, Framing::Chunked);
        assert!(!request.headers().contains_key("content-length"));
        assert!(!request.headers().contains_key("transfer-encoding"));
        assert_eq!(&wire[end..], b"5\r\nbare \r\n5\r\nbytes\r\n0\r\n\r\n");
        feed_origin(&mut s, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        assert_eq!(s.origin_end(), Some(OriginEnd::Reusable));

        // The edge finished the body before the origin was connected.
        let mut s = stream_with(ingress(RULES), "http://a.test/raw", &meta);
        s.on_edge_data(b"abc").unwrap();
        s.on_edge_finished();
        s.on_origin_http2();
        s.on_origin_connected();
        let wire = String::from_utf8(std::mem::take(s.to_origin())).unwrap();
        assert!(
            wire.ends_with("Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
            "{wire}"
        );

        // Over HTTP/1.1 it stays bare.
        let mut s = stream_with(ingress(RULES), "http://a.test/raw", &meta);
        s.on_origin_connected();
        s.on_origin_http2();
        s.on_edge_data(b"abc").unwrap();
        let wire = String::from_utf8(std::mem::take(s.to_origin())).unwrap();
        assert!(wire.ends_with("keep-alive\r\n\r\nabc"), "{wire}");
    }

    #[test]
    fn origin_bytes_are_bounded_by_the_window() {
        let (mut s, _) = stream_for(ConnectionType::Http, "/big", &[]);
        s.to_origin().clear();
        s.on_origin_connected();
        let mut wire = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".to_vec();
        wire.extend(std::iter::repeat_n(b'z', 1000));
        let mut offset = 0;
        let mut body = 0;
        while offset < wire.len() {
            let n = s.on_origin_data(&wire[offset..]);
            offset += n;
            assert!(
                s.to_edge().len() <= WINDOW + 200,
                "head plus one window at most"
            );
            let out = std::mem::take(s.to_edge());
            body += out.len();
            assert!(n > 0 || !out.is_empty());
        }
        assert!(body > 1000);
        assert_eq!(s.origin_end(), Some(OriginEnd::Reusable));
    }

    #[test]
    fn websocket_upgrade_then_raw_both_ways() {
        let (mut s, target) = stream_for(ConnectionType::WebSocket, "http://h/ws", &[]);
        assert_eq!(target.kind, FlowKind::WebSocket);
        assert_eq!(s.edge_room(), 0, "edge bytes wait for the 101");
        s.to_origin().clear();
        s.on_origin_connected();
        let wire = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\nfrom-origin";
        let n = s.on_origin_data(wire);
        let (_, meta, body) = response(&mut s);
        assert_eq!(meta[0], ("HttpStatus".into(), "101".into()));
        // The response message filled the window; the rest is taken once it drained.
        assert_eq!(s.on_origin_data(&wire[n..]), wire.len() - n);
        assert_eq!([body, std::mem::take(s.to_edge())].concat(), b"from-origin");
        s.on_edge_data(b"from-edge").unwrap();
        assert_eq!(s.to_origin(), b"from-edge");
        s.on_edge_finished();
        assert_eq!(s.origin_end(), Some(OriginEnd::ShutdownWrite));
        s.on_origin_finished();
        assert_eq!(
            (s.edge_end(), s.origin_end()),
            (Some(EdgeEnd::Finish), Some(OriginEnd::Close))
        );
        assert_eq!(
            s.outcome(),
            RequestOutcome::Done,
            "a 101 is no response code"
        );
    }

    #[test]
    fn tcp_is_acked_on_connect_and_failures_answer_with_errors() {
        let (mut s, target) = stream_for(ConnectionType::Tcp, "10.0.0.1:22", &[]);
        assert_eq!(target.kind, FlowKind::Tcp);
        s.on_edge_data(b"early").unwrap();
        s.on_origin_connected();
        let (error, meta, body) = response(&mut s);
        assert_eq!((error.as_str(), meta.len(), body.len()), ("", 0, 0));
        assert_eq!(s.to_origin(), b"early");
        // A raw stream that breaks is no request error (cloudflared's pipe returns nothing).
        s.on_origin_failed("reset by peer");
        assert_eq!(s.outcome(), RequestOutcome::Done);

        let (mut s, _) = stream_for(ConnectionType::Tcp, "10.0.0.1:22", &[]);
        s.refuse_rate_limited();
        let (error, meta, _) = response(&mut s);
        assert_eq!(error, RATE_LIMITED);
        assert_eq!(meta, vec![("FlowConnectRateLimited".into(), "true".into())]);
        assert_eq!(s.edge_end(), Some(EdgeEnd::Finish));
        assert_eq!(s.outcome(), RequestOutcome::Done, "not a request error");

        let (mut s, _) = stream_for(ConnectionType::Tcp, "10.0.0.1:22", &[]);
        s.on_origin_failed("connection refused");
        assert_eq!(s.outcome(), RequestOutcome::Error);

        let (mut s, _) = stream_for(ConnectionType::Http, "/", &[]);
        s.on_origin_connected();
        s.on_origin_data(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc");
        s.on_origin_finished();
        assert_eq!(
            s.edge_end(),
            Some(EdgeEnd::Reset),
            "after the response, failures reset"
        );
        assert_eq!(s.outcome(), RequestOutcome::Error, "a cut body is an error");
    }

    #[test]
    fn outcomes_are_the_status_of_a_whole_response_or_an_error() {
        let (mut s, _) = stream_for(ConnectionType::Http, "/", &[]);
        assert_eq!(s.kind(), Some(FlowKind::Http));
        s.on_origin_connected();
        feed_origin(
            &mut s,
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nab",
        );
        assert_eq!(s.outcome(), RequestOutcome::Done, "not whole yet");
        feed_origin(&mut s, b"c");
        assert_eq!(s.outcome(), RequestOutcome::Status(404));

        // The edge gives up before the response: cloudflared's "Incoming request ended
        // abruptly".
        let (mut s, _) = stream_for(ConnectionType::Http, "/", &[]);
        s.on_edge_reset();
        assert_eq!(s.outcome(), RequestOutcome::Error);

        // The origin cannot be reached: the edge answers 502, the connector counts an error.
        let (mut s, _) = stream_for(ConnectionType::Http, "/", &[]);
        s.on_origin_failed("connection refused");
        assert_eq!(s.outcome(), RequestOutcome::Error);

        // A bad response head.
        let (mut s, _) = stream_for(ConnectionType::Http, "/", &[]);
        s.on_origin_connected();
        s.on_origin_data(b"NOT HTTP\r\n\r\n");
        assert_eq!(s.outcome(), RequestOutcome::Error);
    }

    #[test]
    fn unknown_type_gets_an_error_reply_and_bad_bytes_a_reset() {
        let mut buf = request_bytes(ConnectionType::Tcp, "x", &[]);
        // The type is the first data word of the root struct (after 8-byte header, 8-byte root pointer).
        buf[16] = 7;
        let mut s = DataStream::new(WINDOW, FrameLimits::CONNECT_REQUEST);
        assert_eq!(s.on_edge_data(&buf), Ok(None));
        let (error, _, _) = response(&mut s);
        assert_eq!(error, "unsupported error type: 7");
        let mut s = DataStream::new(WINDOW, FrameLimits::CONNECT_REQUEST);
        assert!(s.on_edge_data(&[0xff; 64]).is_err());
    }

    /// The request's log line shows its headers and length as cloudflared's does, by
    /// transport.
    #[test]
    fn request_log_headers_and_length_by_transport() {
        let bytes = request_bytes(
            ConnectionType::Http,
            "http://app.test/up",
            &[
                ("HttpMethod", "POST"),
                ("HttpHeader:user-agent", "curl"),
                ("HttpHeader:X-Two", "a"),
                ("HttpHeader:x-two", "b"),
                ("HttpHeader:Transfer-Encoding", "chunked"),
                (
                    "HttpHeader:Cf-Cloudflared-Proxy-Connection-Upgrade",
                    "websocket",
                ),
                ("HttpHeader:Cf-Trace-Id", "1:2:3"),
            ],
        );
        let (req, _) = decode_connect_request(&bytes, &FrameLimits::CONNECT_REQUEST)
            .expect("decodes")
            .expect("whole");
        let tags = [Tag::parse("ID=c").expect("tag")];
        assert_eq!(
            logged_headers(&req, false, &tags),
            r#"{"Cf-Warp-Tag-Id":["c"],"Transfer-Encoding":["chunked"],"User-Agent":["curl"],"X-Two":["a","b"]}"#
        );
        assert_eq!(logged_length(&req, false), 0);
        assert_eq!(
            logged_headers(&req, true, &[]),
            r#"{"User-Agent":["curl"],"X-Two":["a","b"]}"#
        );
        assert_eq!(logged_length(&req, true), -1);
        let bytes = request_bytes(
            ConnectionType::Http,
            "http://app.test/up",
            &[("HttpHeader:Content-Length", "12")],
        );
        let (req, _) = decode_connect_request(&bytes, &FrameLimits::CONNECT_REQUEST)
            .expect("decodes")
            .expect("whole");
        assert_eq!(
            (logged_length(&req, false), logged_length(&req, true)),
            (12, 12)
        );
    }
}
