//! Origin connections on the loop: what the connector's [`Io::OpenFlow`] names (TCP, unix
//! socket, TLS over either, or an in-process `http_status:N` / `hello_world`), connected
//! without blocking, moved one read per permit so the connector's backpressure sets the pace.
//! HTTP framing, WebSocket and TCP streams are all bytes here: the connector frames them.
//!
//! Names go to the [`Resolver`] thread and the flow waits for its answer. Dial and TLS
//! deadlines are the connector's: it fails a slow flow and closes it.
//!
//! [`Io::OpenFlow`]: burrow_core::connector::Io::OpenFlow

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use burrow_core::datagram::LinkId;
use burrow_core::ingress::{Origin, OriginRequest, Service};
use burrow_core::stream::proxy::FlowKind;
use burrow_core::tunnel::data::FlowId;
use bytes::{Buf, Bytes};
use mio::net::{TcpStream, UnixStream};
use mio::{Interest, Registry, Token};
use rustls::pki_types::ServerName;
use rustls::ClientConnection;
use tracing::debug;

use crate::resolver::Resolver;
use crate::tls::OriginTls;

/// One origin connection's identity.
pub type Key = (LinkId, FlowId);

/// Bytes read from an origin per permit.
const READ_CHUNK: usize = 16 * 1024;
/// Longest request head an in-process origin reads.
const MAX_HEAD: usize = 64 * 1024;

/// What a flow tells the connector.
#[derive(Debug)]
pub enum Report {
    /// Connected; the TLS handshake begins (its deadline is the connector's).
    Handshaking,
    /// Dialled (TLS included).
    Connected,
    /// Could not dial, or broke.
    Failed(String),
    /// Bytes read; the flow reads again after [`Origins::read_more`].
    Data(Bytes),
    /// The origin closed its side.
    Finished,
    /// The outstanding write completed.
    Written,
}

/// An origin byte stream.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            Self::Tcp(s) => s,
            Self::Unix(s) => s,
        }
    }

    fn scheme(&self) -> &'static str {
        match self {
            Self::Tcp(_) => "tcp",
            Self::Unix(_) => "unix",
        }
    }

    fn take_error(&self) -> io::Result<Option<io::Error>> {
        match self {
            Self::Tcp(s) => s.take_error(),
            Self::Unix(s) => s.take_error(),
        }
    }

    /// Ok once a non-blocking connect has completed, `NotConnected` while it is under way.
    fn connected(&self) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.peer_addr().map(drop),
            Self::Unix(s) => s.peer_addr().map(drop),
        }
    }

    fn shutdown_write(&self) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.shutdown(Shutdown::Write),
            Self::Unix(s) => s.shutdown(Shutdown::Write),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.read(buf),
            Self::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.write(buf),
            Self::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where a flow is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the resolver.
    Resolving,
    /// Non-blocking connect under way.
    Connecting,
    /// TLS handshake under way.
    Handshaking,
    /// Moving bytes.
    Open,
    /// Failed (reported); waiting for the connector's close.
    Dead,
}

/// One origin connection.
struct Flow {
    token: Token,
    state: State,
    /// What it dials, for error messages.
    target: String,
    stream: Option<Stream>,
    tls: Option<Box<ClientConnection>>,
    /// May read once more.
    permit: bool,
    /// What is left of the outstanding write.
    write: Option<Bytes>,
    /// FIN once the write is done.
    shutdown: bool,
    shut: bool,
    eof: bool,
    responder: Option<Responder>,
    /// `tcpKeepAlive` for the origin connection (zero: the system's).
    keep_alive: Duration,
}

/// Every origin connection of the loop.
pub struct Origins {
    flows: HashMap<Key, Flow>,
    tls: OriginTls,
    /// Resolver ids of flows waiting for a name.
    lookups: HashMap<u64, Key>,
    next_lookup: u64,
    scratch: Vec<u8>,
    /// What the connector must hear, in order.
    pub reports: Vec<(Key, Report)>,
}

impl Origins {
    /// No flows yet.
    pub fn new(tls: OriginTls) -> Self {
        Self {
            flows: HashMap::new(),
            tls,
            lookups: HashMap::new(),
            next_lookup: 0,
            scratch: vec![0; READ_CHUNK],
            reports: Vec::new(),
        }
    }

    /// Whether `key` is still held (reports of closed flows are stale).
    pub fn contains(&self, key: &Key) -> bool {
        self.flows.contains_key(key)
    }

    /// Starts dialling what `kind`, `dest` and `origin` name (`host`: the request's, for
    /// `matchSNItoHost`); it is registered under `token`.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        &mut self,
        registry: &Registry,
        resolver: &mut Resolver,
        token: Token,
        key: Key,
        kind: FlowKind,
        dest: String,
        host: Option<&str>,
        origin: Option<Arc<Origin>>,
    ) {
        let mut flow = Flow {
            token,
            state: State::Resolving,
            target: dest.clone(),
            stream: None,
            tls: None,
            permit: true,
            write: None,
            shutdown: false,
            shut: false,
            eof: false,
            responder: None,
            keep_alive: Duration::ZERO,
        };
        let plan = match plan(kind, &dest, host, origin.as_deref(), &mut self.tls) {
            Ok(p) => p,
            Err(e) => {
                flow.state = State::Dead;
                self.flows.insert(key, flow);
                self.reports.push((key, Report::Failed(e)));
                return;
            }
        };
        match plan {
            Plan::InProcess(r) => {
                flow.responder = Some(r);
                flow.state = State::Open;
                self.flows.insert(key, flow);
                self.reports.push((key, Report::Connected));
            }
            Plan::Dial {
                target,
                tls,
                keep_alive,
            } => {
                flow.tls = tls;
                flow.keep_alive = keep_alive;
                match target {
                    Target::Addr(addr) => {
                        flow.target = addr.to_string();
                        self.flows.insert(key, flow);
                        self.connect(registry, key, Ok(Target::Addr(addr)));
                    }
                    Target::Unix(path) => {
                        flow.target = path.clone();
                        self.flows.insert(key, flow);
                        self.connect(registry, key, Ok(Target::Unix(path)));
                    }
                    Target::Name(host_port) => {
                        flow.target = host_port.clone();
                        self.flows.insert(key, flow);
                        let id = self.next_lookup;
                        self.next_lookup += 1;
                        self.lookups.insert(id, key);
                        resolver.lookup(id, host_port);
                    }
                }
            }
        }
    }

    /// A resolver answer.
    pub fn resolved(&mut self, registry: &Registry, id: u64, answer: Result<SocketAddr, String>) {
        if let Some(key) = self.lookups.remove(&id) {
            self.connect(registry, key, answer.map(Target::Addr));
        }
    }

    fn connect(&mut self, registry: &Registry, key: Key, target: Result<Target, String>) {
        let Some(flow) = self.flows.get_mut(&key) else {
            return;
        };
        if flow.state != State::Resolving {
            return;
        }
        let scheme = if matches!(target, Ok(Target::Unix(_))) {
            "unix"
        } else {
            "tcp"
        };
        let stream = match target {
            Ok(Target::Addr(addr)) => TcpStream::connect(addr).map(Stream::Tcp),
            Ok(Target::Unix(path)) => UnixStream::connect(&path).map(Stream::Unix),
            Ok(Target::Name(_)) => Err(io::ErrorKind::InvalidInput.into()),
            Err(e) => return self.fail(key, e),
        };
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                let msg = format!("dial {scheme} {}: {e}", flow.target);
                return self.fail(key, msg);
            }
        };
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = registry.register(stream.source(), flow.token, interest) {
            let msg = format!("dial {scheme} {}: {e}", flow.target);
            return self.fail(key, msg);
        }
        flow.stream = Some(stream);
        flow.state = State::Connecting;
        self.drive(key);
    }

    /// The flow registered under `key` has a readiness event.
    pub fn ready(&mut self, key: Key) {
        self.drive(key);
    }

    /// Queues a write; [`Report::Written`] follows.
    pub fn write(&mut self, key: Key, data: Bytes) {
        if let Some(f) = self.flows.get_mut(&key) {
            f.write = Some(data);
            self.drive(key);
        }
    }

    /// FIN toward the origin after the outstanding write.
    pub fn shutdown(&mut self, key: Key) {
        if let Some(f) = self.flows.get_mut(&key) {
            f.shutdown = true;
            self.drive(key);
        }
    }

    /// Lets the flow read its next chunk.
    pub fn read_more(&mut self, key: Key) {
        if let Some(f) = self.flows.get_mut(&key) {
            f.permit = true;
            self.drive(key);
        }
    }

    /// Closes and forgets the flow; its token is free again.
    pub fn close(&mut self, registry: &Registry, key: Key) -> Option<Token> {
        let mut f = self.flows.remove(&key)?;
        if let Some(s) = &mut f.stream {
            let _ = registry.deregister(s.source());
        }
        Some(f.token)
    }

    fn fail(&mut self, key: Key, reason: String) {
        if let Some(f) = self.flows.get_mut(&key) {
            if f.state != State::Dead {
                debug!(link = %key.0, flow = %key.1, %reason, "origin flow failed");
                f.state = State::Dead;
                self.reports.push((key, Report::Failed(reason)));
            }
        }
    }

    /// Makes every step the flow can make now.
    fn drive(&mut self, key: Key) {
        let Some(f) = self.flows.get_mut(&key) else {
            return;
        };
        let result = step(f, &mut self.scratch, &mut self.reports, key);
        if let Err(e) = result {
            self.fail(key, e);
        }
    }
}

/// One flow's progress: connect, handshake, write, shut down, read, as far as the sockets go.
fn step(
    f: &mut Flow,
    scratch: &mut [u8],
    reports: &mut Vec<(Key, Report)>,
    key: Key,
) -> Result<(), String> {
    if f.state == State::Connecting {
        let Some(s) = &f.stream else { return Ok(()) };
        if let Some(e) = s.take_error().map_err(|e| e.to_string())? {
            return Err(format!("dial {} {}: {e}", s.scheme(), f.target));
        }
        match s.connected() {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
            Err(e) => return Err(format!("dial {} {}: {e}", s.scheme(), f.target)),
        }
        if let Some(Stream::Tcp(t)) = &f.stream {
            let _ = t.set_nodelay(true);
            if let Err(e) = burrow_os::tcp_keep_alive(t, f.keep_alive) {
                debug!(target = %f.target, error = %e, "cannot set TCP keep-alive on the origin connection");
            }
        }
        if f.tls.is_some() {
            f.state = State::Handshaking;
            reports.push((key, Report::Handshaking));
        } else {
            f.state = State::Open;
            reports.push((key, Report::Connected));
        }
    }
    if f.state == State::Handshaking {
        let (Some(s), Some(tls)) = (&mut f.stream, &mut f.tls) else {
            return Ok(());
        };
        tls_io(s, tls).map_err(|e| format!("TLS handshake with the origin failed: {e}"))?;
        if tls.is_handshaking() {
            return Ok(());
        }
        f.state = State::Open;
        reports.push((key, Report::Connected));
    }
    if f.state != State::Open {
        return Ok(());
    }
    if let Some(r) = &mut f.responder {
        if let Some(data) = f.write.take() {
            r.take(&data);
            reports.push((key, Report::Written));
        }
        if f.permit && !f.eof {
            match r.answer() {
                Some(Some(bytes)) => {
                    f.permit = false;
                    reports.push((key, Report::Data(bytes)));
                }
                Some(None) => {
                    f.eof = true;
                    reports.push((key, Report::Finished));
                }
                None => {}
            }
        }
        return Ok(());
    }
    let Some(s) = &mut f.stream else {
        return Ok(());
    };
    // Writes.
    if let Some(data) = &mut f.write {
        let done = match &mut f.tls {
            None => write_some(s, data),
            Some(tls) => {
                let mut r = Ok(false);
                while !data.is_empty() {
                    let n = tls.writer().write(data).map_err(|e| e.to_string())?;
                    data.advance(n);
                    r = flush_tls(s, tls);
                    if n == 0 || !matches!(r, Ok(true)) {
                        break;
                    }
                }
                r.map(|flushed| flushed && data.is_empty())
            }
        }
        .map_err(|e| format!("write to origin: {e}"))?;
        if done {
            f.write = None;
            reports.push((key, Report::Written));
        }
    } else if let Some(tls) = &mut f.tls {
        flush_tls(s, tls).map_err(|e| format!("write to origin: {e}"))?;
    }
    if f.shutdown && !f.shut && f.write.is_none() {
        if let Some(tls) = &mut f.tls {
            tls.send_close_notify();
            let _ = flush_tls(s, tls);
        }
        let _ = s.shutdown_write();
        f.shut = true;
    }
    // Reads.
    if f.permit && !f.eof {
        let got = match &mut f.tls {
            None => match s.read(scratch) {
                Ok(n) => Some(n),
                Err(e) if would_block(&e) => None,
                Err(e) => return Err(format!("read from origin: {e}")),
            },
            Some(tls) => read_tls(s, tls, scratch).map_err(|e| format!("read from origin: {e}"))?,
        };
        match got {
            Some(0) => {
                f.eof = true;
                reports.push((key, Report::Finished));
            }
            Some(n) => {
                f.permit = false;
                reports.push((key, Report::Data(Bytes::copy_from_slice(&scratch[..n]))));
            }
            None => {}
        }
    }
    Ok(())
}

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// Writes what the socket takes; true once all of `data` is written.
fn write_some(s: &mut Stream, data: &mut Bytes) -> io::Result<bool> {
    while !data.is_empty() {
        match s.write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data.advance(n),
            Err(e) if would_block(&e) => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Sends rustls's pending records; true once none is left.
fn flush_tls(s: &mut Stream, tls: &mut ClientConnection) -> io::Result<bool> {
    while tls.wants_write() {
        match tls.write_tls(s) {
            Ok(_) => {}
            Err(e) if would_block(&e) => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Moves handshake records both ways as far as the socket allows.
fn tls_io(s: &mut Stream, tls: &mut ClientConnection) -> io::Result<()> {
    loop {
        flush_tls(s, tls)?;
        if !tls.is_handshaking() || !tls.wants_read() {
            return Ok(());
        }
        match tls.read_tls(s) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {
                tls.process_new_packets()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            }
            Err(e) if would_block(&e) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// Reads plaintext: `Some(0)` at the end, `None` when the socket has nothing now.
fn read_tls(
    s: &mut Stream,
    tls: &mut ClientConnection,
    buf: &mut [u8],
) -> io::Result<Option<usize>> {
    loop {
        match tls.reader().read(buf) {
            Ok(n) => return Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // The origin closed without close_notify: the stream ends there, as HTTP/1.1
            // framing (not TLS) says where a response ends.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Some(0)),
            Err(e) => return Err(e),
        }
        match tls.read_tls(s) {
            Ok(0) => return Ok(Some(0)),
            Ok(_) => {
                tls.process_new_packets()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                // Alerts and key updates may want an answer.
                flush_tls(s, tls)?;
            }
            Err(e) if would_block(&e) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

/// Where a flow connects.
enum Target {
    Addr(SocketAddr),
    Name(String),
    Unix(String),
}

/// How a flow starts.
enum Plan {
    InProcess(Responder),
    Dial {
        target: Target,
        tls: Option<Box<ClientConnection>>,
        keep_alive: Duration,
    },
}

/// `host:port` as an address when `host` is numeric, else a name to resolve.
fn target(host: &str, port: u16) -> Target {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(ip) => Target::Addr(SocketAddr::new(ip, port)),
        Err(_) => Target::Name(format!("{host}:{port}")),
    }
}

fn plan(
    kind: FlowKind,
    dest: &str,
    host: Option<&str>,
    origin: Option<&Origin>,
    tls: &mut OriginTls,
) -> Result<Plan, String> {
    if kind == FlowKind::Tcp {
        // Private-network routing: dest is ip:port (a name is resolved all the same).
        let target = match dest.parse::<SocketAddr>() {
            Ok(a) => Target::Addr(a),
            Err(_) => Target::Name(dest.to_owned()),
        };
        return Ok(Plan::Dial {
            target,
            tls: None,
            keep_alive: Duration::ZERO,
        });
    }
    let Some(origin) = origin else {
        return Err(format!("no ingress rule resolved {dest}"));
    };
    let o = &origin.origin_request;
    let (target, with_tls) = match &origin.service {
        Service::HttpStatus(code) => return Ok(Plan::InProcess(Responder::status(*code))),
        Service::HelloWorld => return Ok(Plan::InProcess(Responder::hello())),
        Service::Http { tls, host, port } => (target(host, *port), *tls),
        Service::Unix { path, tls } => (Target::Unix(path.clone()), *tls),
        // TCP over WebSocket: core unwraps the frames; the origin is a plain socket.
        Service::Tcp { port: None, .. } => {
            return Err(format!("service {} has no port", origin.service))
        }
        Service::Tcp { .. } if origin.socks_over_tcp() => {
            return Err(format!(
                "service {} with proxyType socks is not supported by burrow-mio yet",
                origin.service
            ))
        }
        Service::Tcp {
            host,
            port: Some(port),
        } => (target(host, *port), false),
        // Core gives each bastion request the TCP origin it names; never dialled as such.
        Service::Bastion => return Err("bastion has no destination of its own".to_owned()),
        Service::SocksProxy => {
            return Err("service socks-proxy is not supported by burrow-mio yet".to_owned())
        }
    };
    let tls = if with_tls {
        Some(client(tls, origin.tls_server_name(host), o)?)
    } else {
        None
    };
    Ok(Plan::Dial {
        target,
        tls,
        keep_alive: o.tcp_keep_alive,
    })
}

/// A TLS client for server name `name` (None: `localhost`, as for a unix socket).
fn client(
    tls: &mut OriginTls,
    name: Option<&str>,
    o: &OriginRequest,
) -> Result<Box<ClientConnection>, String> {
    let config = tls.config(o)?;
    let name = name.unwrap_or("localhost").to_owned();
    let name = ServerName::try_from(name.clone())
        .map_err(|e| format!("bad origin server name {name}: {e}"))?;
    ClientConnection::new(config, name)
        .map(Box::new)
        .map_err(|e| e.to_string())
}

/// An in-process origin: one request head in, one response out, then the connection ends
/// (`Connection: close`), so nothing reuses it.
struct Responder {
    status: u16,
    hello: bool,
    head: Vec<u8>,
    /// The response, once the head is complete; taken by the first read.
    response: Option<Bytes>,
    answered: bool,
}

impl Responder {
    fn status(code: u16) -> Self {
        Self {
            status: code,
            hello: false,
            head: Vec::new(),
            response: None,
            answered: false,
        }
    }

    fn hello() -> Self {
        Self {
            hello: true,
            ..Self::status(200)
        }
    }

    /// Request bytes (the body, after the head, is dropped).
    fn take(&mut self, data: &[u8]) {
        if self.answered || self.response.is_some() {
            return;
        }
        let room = MAX_HEAD.saturating_sub(self.head.len());
        self.head.extend_from_slice(&data[..data.len().min(room)]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        let (status, body): (u16, &str) = match req.parse(&self.head) {
            Ok(httparse::Status::Partial) if self.head.len() < MAX_HEAD => return,
            Ok(httparse::Status::Complete(_)) if self.hello => {
                (200, burrow_core::ingress::HELLO_PAGE)
            }
            Ok(httparse::Status::Complete(_)) => (self.status, ""),
            _ => (400, ""),
        };
        let reason = http_reason(status);
        let ctype = if self.hello {
            "Content-Type: text/html; charset=utf-8\r\n"
        } else {
            ""
        };
        self.response = Some(Bytes::from(format!(
            "HTTP/1.1 {status} {reason}\r\n{ctype}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )));
    }

    /// `Some(Some(bytes))`: the response; `Some(None)`: the end; `None`: nothing yet.
    fn answer(&mut self) -> Option<Option<Bytes>> {
        if let Some(r) = self.response.take() {
            self.answered = true;
            return Some(Some(r));
        }
        self.answered.then_some(None)
    }
}

fn http_reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        503 => "Service Unavailable",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_hosts_dial_directly_and_names_go_to_the_resolver() {
        assert!(matches!(target("127.0.0.1", 80), Target::Addr(a) if a.port() == 80));
        assert!(matches!(target("[::1]", 443), Target::Addr(a) if a.is_ipv6()));
        assert!(matches!(target("::1", 443), Target::Addr(a) if a.is_ipv6()));
        assert!(matches!(target("localhost", 8080), Target::Name(n) if n == "localhost:8080"));
    }

    #[test]
    fn in_process_origins_answer_one_complete_head_then_end() {
        let mut r = Responder::status(404);
        r.take(b"GET / HTTP/1.1\r\nHost: a\r\n");
        assert!(r.answer().is_none(), "head not complete");
        r.take(b"\r\n");
        let Some(Some(resp)) = r.answer() else {
            panic!("answered")
        };
        assert!(resp.starts_with(b"HTTP/1.1 404 Not Found\r\n"));
        assert!(matches!(r.answer(), Some(None)));
        let mut h = Responder::hello();
        h.take(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        let Some(Some(resp)) = h.answer() else {
            panic!("answered")
        };
        assert!(resp.ends_with(burrow_core::ingress::HELLO_PAGE.as_bytes()));
        let mut bad = Responder::status(200);
        bad.take(&[0xff; 10]);
        let Some(Some(resp)) = bad.answer() else {
            panic!("answered")
        };
        assert!(resp.starts_with(b"HTTP/1.1 400"));
    }
}
