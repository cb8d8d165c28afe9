//! Origin connections on the loop: what the connector's [`Io::OpenFlow`] names (TCP, unix
//! socket, TLS over either, an in-process `http_status:N` / `hello_world`, or the management
//! service, [`crate::management`]), connected without blocking, moved one read per permit so
//! the connector's backpressure sets the pace.
//! HTTP framing, WebSocket and TCP streams are all bytes here: the connector frames them.
//!
//! Names go to the [`Resolver`] thread and the flow waits for its answer, then races the
//! name's addresses as core's [`DialPlan`] says (cloudflared's dialer: the other family 300 ms
//! after the first). Dial and TLS deadlines are the connector's: it fails a slow flow and
//! closes it.
//!
//! A SOCKS5 origin (`socks-proxy`, or a TCP origin with `proxyType: socks`) is core's
//! [`Server`] in front of the flow: the client's bytes feed it, its replies go back as the
//! origin's bytes, and it says what to resolve and dial; once it pipes, the flow is plain TCP.
//!
//! [`Io::OpenFlow`]: burrow_core::connector::Io::OpenFlow

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burrow_core::datagram::LinkId;
use burrow_core::http2::origin::{BridgeReport, Http2Flow, SocketRead};
use burrow_core::ingress::{Origin, OriginRequest, Service};
use burrow_core::management::ConnId;
use burrow_core::stream::proxy::FlowKind;
use burrow_core::stream::socks::{DialFailure, Server, Step};
use burrow_core::tunnel::data::FlowId;
use burrow_core::tunnel::happy_eyeballs::{AttemptId, DialPlan, DialStep};
use bytes::{Buf, Bytes};
use mio::net::{TcpStream, UnixStream};
use mio::{Interest, Registry, Token};
use rustls::pki_types::ServerName;
use rustls::ClientConnection;
use tracing::debug;

use crate::management::{Read as ServiceRead, Service as Management};
use crate::resolver::Resolver;
use burrow_os::chunk_buf::{ChunkBuf, MIN_READ};
use burrow_os::origin_tls::OriginTls;

/// One origin connection's identity.
pub type Key = (LinkId, FlowId);

/// Bytes read per permit into the buffer all flows share, then copied out: an HTTPS origin's
/// plaintext (out of rustls's buffer), and a plain origin's until it proves a bulk stream
/// (see [`Flow::bulk`]). As large as [`MIN_READ`], so a full read marks a bulk stream.
const SCRATCH: usize = MIN_READ;
/// Longest request head an in-process origin reads.
const MAX_HEAD: usize = 64 * 1024;

/// What a flow tells the connector.
#[derive(Debug)]
pub enum Report {
    /// Connected; the TLS handshake begins (its deadline is the connector's).
    Handshaking,
    /// The SOCKS5 exchange in front of the flow began dialling its client's destination (its
    /// deadline is the connector's: [`Origins::abort_dial`]).
    Dialing,
    /// That dial ended, connected or failed.
    Dialed,
    /// The origin's TLS handshake chose HTTP/2: core's bridge carries the flow (before
    /// [`Report::Connected`]).
    Http2,
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

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Self::Tcp(s) => s.as_fd(),
            Self::Unix(s) => s.as_fd(),
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
    /// The dial to a name's addresses, until one connects: `localhost` is often `::1` first,
    /// and an origin may listen on 127.0.0.1 alone, or drop SYNs on one family.
    race: Option<Box<Race>>,
    /// When a dial to a name gives up (`connectTimeout` from the flow's start; none: never),
    /// which the race shares between the name's addresses.
    dial_deadline: Option<Instant>,
    /// Whether the race runs the two address families side by side (`noHappyEyeballs`).
    race_families: bool,
    stream: Option<Stream>,
    tls: Option<Box<ClientConnection>>,
    /// The origin chose HTTP/2 (`http2Origin`): core's bridge owns the TLS session now.
    h2: Option<Box<H2>>,
    /// May read once more.
    permit: bool,
    /// A plain (not TLS) origin whose last read brought [`MIN_READ`] or more: it reads into
    /// `buf`, whose chunks go on to QUIC without a copy. Other flows read through the shared
    /// scratch buffer and hold none of their own, so 300 idle chatty streams cost burrow-mio
    /// 8 MiB rather than 18 (a buffer each).
    bulk: bool,
    buf: ChunkBuf,
    /// What is left of the outstanding write.
    write: Option<Bytes>,
    /// FIN once the write is done.
    shutdown: bool,
    shut: bool,
    eof: bool,
    responder: Option<Responder>,
    /// The management service's connection this flow is.
    management: Option<ConnId>,
    /// `tcpKeepAlive` for the origin connection (zero: the system's).
    keep_alive: Duration,
    /// `keepAliveTimeout`: an idle HTTP/2 origin connection closes after it (zero: never).
    idle_timeout: Duration,
    /// A SOCKS5 exchange in front of the origin, until it pipes.
    socks: Option<Box<Socks>>,
    /// `proxyType: socks`: the exchange starts once the origin is connected.
    socks_over: bool,
    /// Bytes of the client's that came with its SOCKS request, for the destination before
    /// anything else (the connector heard they were written).
    internal: Option<Bytes>,
}

/// A dial to a name's addresses as core's [`DialPlan`] orders it: the attempts under way, each
/// registered under the flow's token, until one connects and becomes the flow's stream.
struct Race {
    plan: DialPlan,
    attempts: Vec<(AttemptId, TcpStream)>,
    /// The first attempt's failure: the dial's, if none connects (as Go's dialer reports).
    first_error: Option<io::Error>,
    /// When the plan next wants a poll, as entered in [`Origins`]'s timers.
    wake: Option<Instant>,
}

/// An HTTP/2 origin connection's flow (core's bridge, its bytes in transit) and its deadline
/// as entered in [`Origins`]'s timers.
struct H2 {
    flow: Http2Flow,
    deadline: Option<Instant>,
}

/// Where a SOCKS5 exchange is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading the client's greeting and request.
    Talking,
    /// Waiting for the resolver.
    Resolving,
    /// Connecting to the destination; the client's next bytes wait.
    Dialling,
    /// Connected: the flow is the destination's once `out` is sent.
    Piping,
    /// Ended: the flow finishes once `out` is sent.
    Closing,
}

/// A SOCKS5 exchange: core's [`Server`] decides, this does its I/O.
struct Socks {
    server: Server,
    /// Our replies for the client, one per read permit.
    out: VecDeque<Bytes>,
    phase: Phase,
}

impl Socks {
    fn new(server: Server) -> Box<Self> {
        Box::new(Self {
            server,
            out: VecDeque::new(),
            phase: Phase::Talking,
        })
    }
}

/// Every origin connection of the loop.
pub struct Origins {
    flows: HashMap<Key, Flow>,
    tls: OriginTls,
    /// The loop's registry (a handle on the same poll).
    registry: Registry,
    /// Names are resolved here.
    resolver: Resolver,
    /// Resolver ids of flows waiting for a name.
    lookups: HashMap<u64, Key>,
    next_lookup: u64,
    scratch: Vec<u8>,
    /// What the connector must hear, in order.
    pub reports: Vec<(Key, Report)>,
    /// HTTP/2 origin flows' deadlines (their keep-alive timeouts) and races' next steps.
    timers: BTreeSet<(Instant, Key)>,
    /// The management service.
    management: Management,
}

impl Origins {
    /// No flows yet; sockets are registered with `registry`; requests to the management
    /// hostname go to `management`.
    pub fn new(
        tls: OriginTls,
        registry: Registry,
        resolver: Resolver,
        management: Management,
    ) -> Self {
        Self {
            flows: HashMap::new(),
            tls,
            registry,
            resolver,
            lookups: HashMap::new(),
            next_lookup: 0,
            scratch: vec![0; SCRATCH],
            reports: Vec::new(),
            timers: BTreeSet::new(),
            management,
        }
    }

    /// Whether `key` is still held (reports of closed flows are stale).
    pub fn contains(&self, key: &Key) -> bool {
        self.flows.contains_key(key)
    }

    /// Starts dialling what `kind`, `dest` and `origin` name (`host`: the request's, for
    /// `matchSNItoHost`); it is registered under `token`.
    pub fn open(
        &mut self,
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
            race: None,
            dial_deadline: None,
            race_families: true,
            stream: None,
            tls: None,
            h2: None,
            permit: true,
            write: None,
            shutdown: false,
            shut: false,
            eof: false,
            responder: None,
            management: None,
            keep_alive: Duration::ZERO,
            idle_timeout: Duration::ZERO,
            socks: None,
            socks_over: false,
            internal: None,
            bulk: false,
            buf: ChunkBuf::default(),
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
            Plan::Management => {
                flow.management = Some(self.management.open(key));
                flow.state = State::Open;
                self.flows.insert(key, flow);
                self.reports.push((key, Report::Connected));
            }
            Plan::Socks(socks) => {
                flow.socks = Some(socks);
                flow.state = State::Open;
                self.flows.insert(key, flow);
                self.reports.push((key, Report::Connected));
            }
            Plan::Dial {
                target,
                tls,
                keep_alive,
                idle_timeout,
                socks_over,
                connect_timeout,
                race_families,
            } => {
                flow.race_families = race_families;
                flow.dial_deadline =
                    (!connect_timeout.is_zero()).then(|| Instant::now() + connect_timeout);
                flow.tls = tls;
                flow.keep_alive = keep_alive;
                flow.idle_timeout = idle_timeout;
                flow.socks_over = socks_over;
                match target {
                    Target::Addr(addr) => {
                        flow.target = addr.to_string();
                        self.flows.insert(key, flow);
                        self.connect(key, Ok(Target::Addr(addr)));
                    }
                    Target::Unix(path) => {
                        flow.target = path.clone();
                        self.flows.insert(key, flow);
                        self.connect(key, Ok(Target::Unix(path)));
                    }
                    Target::Name(host_port) => {
                        flow.target = host_port.clone();
                        self.flows.insert(key, flow);
                        let id = self.next_lookup;
                        self.next_lookup += 1;
                        self.lookups.insert(id, key);
                        self.resolver.lookup(id, host_port);
                    }
                }
            }
        }
    }

    /// Takes the resolver's answers (it woke the loop).
    pub fn resolved(&mut self, now: Instant) {
        for (id, answer) in self.resolver.answers(now) {
            let Some(key) = self.lookups.remove(&id) else {
                continue;
            };
            let socks = self.flows.get_mut(&key).and_then(|f| f.socks.as_mut());
            match socks {
                Some(sx) if sx.phase == Phase::Resolving => {
                    let ips: Vec<IpAddr> = answer
                        .map(|a| a.iter().map(SocketAddr::ip).collect())
                        .unwrap_or_default();
                    let step = sx.server.resolved(&ips);
                    self.run_socks(key, step);
                }
                _ => match answer {
                    Ok(addrs) => {
                        let Some(f) = self.flows.get_mut(&key) else {
                            continue;
                        };
                        if f.state != State::Resolving {
                            continue;
                        }
                        f.state = State::Connecting;
                        f.race = Some(Box::new(Race {
                            plan: DialPlan::new(now, &addrs, f.dial_deadline, f.race_families),
                            attempts: Vec::new(),
                            first_error: None,
                            wake: None,
                        }));
                        self.race(key);
                    }
                    Err(e) => self.connect(key, Err(e)),
                },
            }
        }
    }

    /// When [`Origins::tick`] has work: the resolver's, an HTTP/2 origin flow's, a race's or
    /// the management service's.
    pub fn deadline(&self) -> Option<Instant> {
        let h2 = self.timers.first().map(|(t, _)| *t);
        [self.resolver.deadline(), h2, self.management.deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Lets the resolver thread end when idle; steps the HTTP/2 origin flows and the races
    /// whose deadline passed.
    pub fn tick(&mut self, now: Instant) {
        self.resolver.retire(now);
        let due: Vec<Key> = self
            .timers
            .iter()
            .take_while(|(t, _)| *t <= now)
            .map(|(_, key)| *key)
            .collect();
        for key in due {
            self.drive(key);
        }
        self.management.tick(now);
        self.drive_management();
    }

    /// Connections of the management service waiting for the connector's figures.
    pub fn wants_metrics(&mut self) -> Vec<ConnId> {
        self.management.wants_metrics()
    }

    /// The connector's Prometheus exposition for the management connection `id`.
    pub fn metrics(&mut self, id: ConnId, exposition: &str) {
        self.management.metrics(Instant::now(), id, exposition);
        self.drive_management();
    }

    /// Steps the management flows the service has something new for.
    fn drive_management(&mut self) {
        loop {
            let touched = self.management.touched();
            if touched.is_empty() {
                return;
            }
            for key in touched {
                self.drive(key);
            }
        }
    }

    /// The connector gave up on the SOCKS destination dial of `key` ([`Report::Dialing`]):
    /// it fails as a dial that timed out. Stale calls (the dial ended) do nothing.
    pub fn abort_dial(&mut self, key: Key) {
        let Some(f) = self.flows.get_mut(&key) else {
            return;
        };
        let Some(sx) = f.socks.as_mut().filter(|sx| sx.phase == Phase::Dialling) else {
            return;
        };
        if let Some(mut s) = f.stream.take() {
            let _ = self.registry.deregister(s.source());
        }
        self.reports.push((key, Report::Dialed));
        let step = sx
            .server
            .dial_failed(DialFailure::of(io::ErrorKind::TimedOut));
        self.run_socks(key, step);
    }

    /// Does what the SOCKS exchange of `key` asks, until it waits for something.
    fn run_socks(&mut self, key: Key, mut step: Step) {
        loop {
            let Some(f) = self.flows.get_mut(&key) else {
                return;
            };
            let Some(sx) = f.socks.as_mut() else {
                return;
            };
            step = match step {
                Step::Read => {
                    sx.phase = Phase::Talking;
                    break;
                }
                Step::Send(bytes, next) => {
                    sx.out.push_back(Bytes::from(bytes));
                    *next
                }
                Step::Resolve(name) => {
                    sx.phase = Phase::Resolving;
                    let id = self.next_lookup;
                    self.next_lookup += 1;
                    self.lookups.insert(id, key);
                    self.resolver.lookup(id, format!("{name}:0"));
                    break;
                }
                Step::Dial(addr) => {
                    let token = f.token;
                    let dialled = TcpStream::connect(addr).and_then(|mut s| {
                        let interest = Interest::READABLE | Interest::WRITABLE;
                        self.registry.register(&mut s, token, interest)?;
                        Ok(s)
                    });
                    match dialled {
                        Ok(s) => {
                            f.stream = Some(Stream::Tcp(s));
                            f.target = addr.to_string();
                            sx.phase = Phase::Dialling;
                            self.reports.push((key, Report::Dialing));
                            break;
                        }
                        Err(e) => sx.server.dial_failed(DialFailure::of(e.kind())),
                    }
                }
                Step::Pipe(rest) => {
                    sx.phase = Phase::Piping;
                    if !rest.is_empty() {
                        f.internal = Some(Bytes::from(rest));
                    }
                    break;
                }
                Step::Close(e) => {
                    debug!(link = %key.0, flow = %key.1, error = %e, "SOCKS stream ended");
                    sx.phase = Phase::Closing;
                    break;
                }
            };
        }
        self.drive(key);
    }

    /// The answer to a SOCKS exchange's dial, once the socket knows it.
    fn socks_dialled(&mut self, key: Key) -> Option<Step> {
        let f = self.flows.get_mut(&key)?;
        let sx = f.socks.as_mut().filter(|s| s.phase == Phase::Dialling)?;
        let s = f.stream.as_ref()?;
        let local = match s.take_error() {
            Ok(Some(e)) | Err(e) => Err(e),
            Ok(None) => match s.connected() {
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return None,
                r => r.and_then(|()| match s {
                    Stream::Tcp(t) => t.local_addr(),
                    Stream::Unix(_) => Err(io::ErrorKind::Unsupported.into()),
                }),
            },
        };
        self.reports.push((key, Report::Dialed));
        Some(match local {
            Ok(local) => {
                if let Stream::Tcp(t) = s {
                    let _ = t.set_nodelay(true);
                }
                sx.server.connected(local)
            }
            Err(e) => {
                if let Some(mut s) = f.stream.take() {
                    let _ = self.registry.deregister(s.source());
                }
                sx.server.dial_failed(DialFailure::of(e.kind()))
            }
        })
    }

    fn connect(&mut self, key: Key, target: Result<Target, String>) {
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
        if let Err(e) = self
            .registry
            .register(stream.source(), flow.token, interest)
        {
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
        let Some(f) = self.flows.get_mut(&key) else {
            return;
        };
        match f.socks.as_mut().map(|sx| (sx.phase, sx)) {
            Some((Phase::Talking, sx)) => {
                let step = sx.server.feed(&data);
                self.reports.push((key, Report::Written));
                self.run_socks(key, step);
            }
            // Nobody reads them any more.
            Some((Phase::Closing, _)) => self.reports.push((key, Report::Written)),
            // Held until the exchange pipes (or for the destination).
            _ => {
                f.write = Some(data);
                self.drive(key);
            }
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
            if let Some(id) = f.management {
                self.management.consumed(Instant::now(), id);
            }
            self.drive(key);
        }
    }

    /// Closes and forgets the flow; its token is free again.
    pub fn close(&mut self, key: Key) -> Option<Token> {
        let mut f = self.flows.remove(&key)?;
        if let Some(id) = f.management {
            self.management.forget(id);
        }
        if let Some(at) = f.h2.as_ref().and_then(|h| h.deadline) {
            self.timers.remove(&(at, key));
        }
        if let Some(s) = &mut f.stream {
            let _ = self.registry.deregister(s.source());
        }
        if let Some(r) = f.race.take() {
            self.end_race(key, *r);
        }
        Some(f.token)
    }

    fn fail(&mut self, key: Key, reason: String) {
        if let Some(f) = self.flows.get_mut(&key) {
            if f.state != State::Dead {
                debug!(link = %key.0, flow = %key.1, %reason, "origin flow failed");
                f.state = State::Dead;
                // A dead flow is never stepped again: its deadline goes.
                if let Some(at) = f.h2.as_mut().and_then(|h| h.deadline.take()) {
                    self.timers.remove(&(at, key));
                }
                self.reports.push((key, Report::Failed(reason)));
            }
        }
    }

    /// Moves the race of `key` on: settles the attempts their sockets have an answer for,
    /// starts and abandons what the plan says, and hands a connected socket to the flow.
    fn race(&mut self, key: Key) {
        let now = Instant::now();
        let Some(f) = self.flows.get_mut(&key) else {
            return;
        };
        let Some(r) = f.race.as_mut() else {
            return;
        };
        let mut i = 0;
        while i < r.attempts.len() {
            let Some(outcome) = connect_outcome(&r.attempts[i].1) else {
                i += 1;
                continue;
            };
            let (id, mut s) = r.attempts.swap_remove(i);
            match outcome {
                Ok(()) => {
                    let r = f.race.take().map(|r| *r);
                    f.stream = Some(Stream::Tcp(s));
                    if let Some(r) = r {
                        self.end_race(key, r);
                    }
                    return self.drive(key);
                }
                Err(e) => {
                    let _ = self.registry.deregister(&mut s);
                    r.first_error.get_or_insert(e);
                    r.plan.failed(now, id);
                }
            }
        }
        loop {
            match r.plan.poll(now) {
                DialStep::Connect(id, addr) => {
                    let dialled = TcpStream::connect(addr).and_then(|mut s| {
                        let interest = Interest::READABLE | Interest::WRITABLE;
                        self.registry.register(&mut s, f.token, interest)?;
                        Ok(s)
                    });
                    match dialled {
                        Ok(s) => r.attempts.push((id, s)),
                        Err(e) => {
                            r.first_error.get_or_insert(e);
                            r.plan.failed(now, id);
                        }
                    }
                }
                DialStep::Abandon(id) => {
                    if let Some(at) = r.attempts.iter().position(|(a, _)| *a == id) {
                        let (_, mut s) = r.attempts.swap_remove(at);
                        let _ = self.registry.deregister(&mut s);
                    }
                    r.first_error
                        .get_or_insert_with(|| io::ErrorKind::TimedOut.into());
                }
                DialStep::Exhausted => {
                    let e = r.first_error.take().map_or_else(
                        || "the resolver gave no address".to_owned(),
                        |e| e.to_string(),
                    );
                    let msg = format!("dial tcp {}: {e}", f.target);
                    if let Some(r) = f.race.take() {
                        self.end_race(key, *r);
                    }
                    return self.fail(key, msg);
                }
                DialStep::Wait(until) => {
                    if r.wake != until {
                        if let Some(at) = r.wake {
                            self.timers.remove(&(at, key));
                        }
                        if let Some(at) = until {
                            self.timers.insert((at, key));
                        }
                        r.wake = until;
                    }
                    return;
                }
            }
        }
    }

    /// Drops what is left of a race: its other attempts and its timer.
    fn end_race(&mut self, key: Key, mut r: Race) {
        for (_, mut s) in r.attempts.drain(..) {
            let _ = self.registry.deregister(&mut s);
        }
        if let Some(at) = r.wake {
            self.timers.remove(&(at, key));
        }
    }

    /// Makes every step the flow can make now.
    fn drive(&mut self, key: Key) {
        if self.flows.get(&key).is_some_and(|f| f.race.is_some()) {
            return self.race(key);
        }
        if let Some(step) = self.socks_dialled(key) {
            return self.run_socks(key, step);
        }
        let Some(f) = self.flows.get_mut(&key) else {
            return;
        };
        if let Some(id) = f.management {
            step_management(f, &mut self.management, id, &mut self.reports, key);
            return self.drive_management();
        }
        let result = step(
            f,
            &mut self.scratch,
            &mut self.reports,
            &mut self.timers,
            key,
        );
        if let Err(e) = result {
            self.fail(key, e);
        }
    }
}

/// A management flow's progress: the request's bytes to the service, its answer back, one
/// read per permit.
fn step_management(
    f: &mut Flow,
    m: &mut Management,
    id: ConnId,
    reports: &mut Vec<(Key, Report)>,
    key: Key,
) {
    let now = Instant::now();
    if let Some(data) = f.write.take() {
        m.write(now, id, &data);
        reports.push((key, Report::Written));
    }
    if f.shutdown && !f.shut {
        f.shut = true;
        m.ended(id);
    }
    if f.permit && !f.eof {
        match m.read(id) {
            ServiceRead::Data(b) => {
                f.permit = false;
                reports.push((key, Report::Data(b)));
            }
            ServiceRead::End => {
                f.eof = true;
                reports.push((key, Report::Finished));
            }
            ServiceRead::Nothing => {}
        }
    }
}

/// How the non-blocking connect of `s` ended; none while it is under way.
pub(crate) fn connect_outcome(s: &TcpStream) -> Option<io::Result<()>> {
    match s.take_error() {
        Ok(Some(e)) | Err(e) => Some(Err(e)),
        Ok(None) => match s.peer_addr() {
            Err(e) if e.kind() == io::ErrorKind::NotConnected => None,
            r => Some(r.map(drop)),
        },
    }
}

/// One flow's progress: connect, handshake, write, shut down, read, as far as the sockets go.
fn step(
    f: &mut Flow,
    scratch: &mut [u8],
    reports: &mut Vec<(Key, Report)>,
    timers: &mut BTreeSet<(Instant, Key)>,
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
        if f.socks_over {
            let local = match s {
                Stream::Tcp(t) => t.local_addr(),
                Stream::Unix(_) => Err(io::ErrorKind::Unsupported.into()),
            };
            let local = local.map_err(|e| format!("dial tcp {}: {e}", f.target))?;
            f.socks = Some(Socks::new(Server::over_dialled(local)));
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
        if tls.alpn_protocol() == Some(b"h2") {
            // Offered only for `http2Origin` (core's `Origin::offers_http2`); the flow stays
            // HTTP/1.1 toward the connector, core's bridge speaks HTTP/2 to the origin.
            if let Some(tls) = f.tls.take() {
                f.h2 = Some(Box::new(H2 {
                    flow: Http2Flow::new(Instant::now(), *tls, f.idle_timeout),
                    deadline: None,
                }));
                reports.push((key, Report::Http2));
            }
        }
        f.state = State::Open;
        reports.push((key, Report::Connected));
    }
    if f.state != State::Open {
        return Ok(());
    }
    if f.h2.is_some() {
        return step_h2(f, scratch, reports, timers, key);
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
    if let Some(sx) = &mut f.socks {
        // Our replies first, each on its own read permit; the destination waits until then.
        if f.permit {
            if let Some(b) = sx.out.pop_front() {
                f.permit = false;
                reports.push((key, Report::Data(b)));
            }
        }
        if !sx.out.is_empty() {
            return Ok(());
        }
        match sx.phase {
            Phase::Piping => f.socks = None,
            Phase::Closing => {
                if !f.eof {
                    f.eof = true;
                    reports.push((key, Report::Finished));
                }
                return Ok(());
            }
            _ => return Ok(()),
        }
    }
    let Some(s) = &mut f.stream else {
        return Ok(());
    };
    // What came with the SOCKS request goes first.
    if let Some(data) = &mut f.internal {
        if write_some(s, data).map_err(|e| format!("write to origin: {e}"))? {
            f.internal = None;
        }
    }
    // Writes.
    if let Some(data) = f.write.as_mut().filter(|_| f.internal.is_none()) {
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
    if f.shutdown && !f.shut && f.write.is_none() && f.internal.is_none() {
        if let Some(tls) = &mut f.tls {
            tls.send_close_notify();
            let _ = flush_tls(s, tls);
        }
        let _ = s.shutdown_write();
        f.shut = true;
    }
    // Reads.
    if f.permit && !f.eof {
        // None: nothing to read now; Some(None): the end of the stream.
        let got = match &mut f.tls {
            None => {
                let read = if f.bulk {
                    f.buf.read_fd(&*s)
                } else {
                    s.read(scratch)
                        .map(|n| (n > 0).then(|| Bytes::copy_from_slice(&scratch[..n])))
                };
                match read {
                    Ok(chunk) => {
                        let n = chunk.as_ref().map_or(0, Bytes::len);
                        if f.bulk && n < MIN_READ {
                            // Quiet again: its buffer goes once QUIC lets go of the chunks.
                            f.bulk = false;
                            f.buf = ChunkBuf::default();
                        } else {
                            f.bulk |= n >= MIN_READ;
                        }
                        Some(chunk)
                    }
                    Err(e) if would_block(&e) => None,
                    Err(e) => return Err(format!("read from origin: {e}")),
                }
            }
            Some(tls) => read_tls(s, tls, scratch)
                .map_err(|e| format!("read from origin: {e}"))?
                .map(|n| (n > 0).then(|| Bytes::copy_from_slice(&scratch[..n]))),
        };
        match got {
            Some(None) => {
                f.eof = true;
                reports.push((key, Report::Finished));
            }
            Some(Some(chunk)) => {
                f.permit = false;
                reports.push((key, Report::Data(chunk)));
            }
            None => {}
        }
    }
    Ok(())
}

/// An HTTP/2 origin's flow: core's [`Http2Flow`] decides the order of everything (the one
/// burrow-tokio runs); this hands it the connector's write, end and permit, and moves
/// ciphertext both ways as far as the socket goes. The socket is read whenever the flow asks,
/// not per permit: HTTP/2 carries its own control frames, and its windows (credit returned
/// only as the connector reads) bound what the origin sends ahead. Its deadline is kept in
/// `timers` for [`Origins::deadline`].
fn step_h2(
    f: &mut Flow,
    scratch: &mut [u8],
    reports: &mut Vec<(Key, Report)>,
    timers: &mut BTreeSet<(Instant, Key)>,
    key: Key,
) -> Result<(), String> {
    let (Some(s), Some(h)) = (&mut f.stream, &mut f.h2) else {
        return Ok(());
    };
    let now = Instant::now();
    let mut report = |r: BridgeReport| {
        reports.push((
            key,
            match r {
                BridgeReport::Written => Report::Written,
                BridgeReport::Data(b) => Report::Data(b),
                BridgeReport::Finished => Report::Finished,
            },
        ))
    };
    let result = loop {
        // The connector's commands: one write at a time (it waits for `Written`), its end, and
        // its permit, all handed over.
        if h.flow.takes_command() {
            if let Some(data) = f.write.take() {
                h.flow.write(data);
            }
        }
        if f.shutdown && !f.shut {
            h.flow.shutdown();
            f.shut = true;
        }
        if std::mem::take(&mut f.permit) {
            h.flow.permit();
        }
        let mut read = SocketRead::Nothing;
        if h.flow.wants_read() {
            match s.read(scratch) {
                Ok(0) => read = SocketRead::Closed,
                Ok(n) => read = SocketRead::Data(&scratch[..n]),
                Err(e) if would_block(&e) => {}
                Err(e) => break Err(format!("read from origin: {e}")),
            }
        }
        let mut moved = !matches!(read, SocketRead::Nothing);
        match h.flow.step(now, read, &mut report) {
            Ok(m) => moved |= m,
            Err(e) => break Err(e.to_string()),
        }
        let mut failed = None;
        while !h.flow.to_send().is_empty() {
            match s.write(h.flow.to_send()) {
                Ok(0) => {
                    failed = Some("write to origin: wrote zero bytes".to_owned());
                    break;
                }
                Ok(n) => {
                    h.flow.sent(n);
                    moved = true;
                }
                Err(e) if would_block(&e) => break,
                Err(e) => {
                    failed = Some(format!("write to origin: {e}"));
                    break;
                }
            }
        }
        if let Some(e) = failed {
            break Err(e);
        }
        if !moved {
            break Ok(());
        }
    };
    let deadline = h.flow.poll_timeout();
    if h.deadline != deadline {
        if let Some(old) = h.deadline {
            timers.remove(&(old, key));
        }
        if let Some(new) = deadline {
            timers.insert((new, key));
        }
        h.deadline = deadline;
    }
    result
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
    /// The connector's own management service.
    Management,
    /// A SOCKS5 server that dials what the client asks.
    Socks(Box<Socks>),
    Dial {
        target: Target,
        /// `connectTimeout`, shared between a name's addresses (zero: none).
        connect_timeout: Duration,
        /// See [`Origin::races_families`].
        race_families: bool,
        tls: Option<Box<ClientConnection>>,
        keep_alive: Duration,
        /// `keepAliveTimeout`, for an HTTP/2 origin connection.
        idle_timeout: Duration,
        /// `proxyType: socks`: a SOCKS5 exchange over the dialled connection.
        socks_over: bool,
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
            // Core's deadline (`warp-routing.connectTimeout`) bounds it.
            connect_timeout: Duration::ZERO,
            race_families: true,
            tls: None,
            keep_alive: Duration::ZERO,
            idle_timeout: Duration::ZERO,
            socks_over: false,
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
        Service::Tcp {
            host,
            port: Some(port),
        } => (target(host, *port), false),
        // Core gives each bastion request the TCP origin it names; never dialled as such.
        Service::Bastion => return Err("bastion has no destination of its own".to_owned()),
        Service::Management => return Ok(Plan::Management),
        Service::SocksProxy => {
            let server = Server::new(o.ip_rules.clone());
            return Ok(Plan::Socks(Socks::new(server)));
        }
    };
    let tls = if with_tls {
        let http2 = origin.offers_http2(kind);
        Some(client(tls, origin.tls_server_name(host), o, http2)?)
    } else {
        None
    };
    Ok(Plan::Dial {
        target,
        connect_timeout: o.connect_timeout,
        race_families: origin.races_families(),
        tls,
        keep_alive: o.tcp_keep_alive,
        idle_timeout: o.keep_alive_timeout,
        socks_over: origin.socks_over_tcp(),
    })
}

/// A TLS client for server name `name` (None: `localhost`, as for a unix socket), offering
/// `h2` before `http/1.1` with `http2`.
fn client(
    tls: &mut OriginTls,
    name: Option<&str>,
    o: &OriginRequest,
    http2: bool,
) -> Result<Box<ClientConnection>, String> {
    let config = tls.config(o, http2)?;
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
