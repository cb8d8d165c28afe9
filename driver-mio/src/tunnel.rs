//! `burrow-mio tunnel run`: one thread, one `mio::Poll`, one [`Connector`]. The loop is
//! str0m's: feed one input, drain `poll_output` until it says `Timeout`, then wait for I/O or
//! the earliest deadline. Every protocol decision is the connector's; this file only moves
//! bytes between it and the sockets.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burrow_core::connector::{Connector, Event, Input, Io, Output};
use burrow_core::datagram::LinkId;
use burrow_core::icmp::FunnelId;
use burrow_core::session::UdpFlowId;
use burrow_core::settings::{Edges, RunConfig, Settings};
use burrow_core::tunnel::protocol::{PERCENTAGE_RECORD, TXT_LOOKUP_TIMEOUT};
use burrow_core::tunnel::supervisor::{srv_service, static_edge_address, EdgePool, IpVersion};
use burrow_core::virtual_dns;
use burrow_os::settings::{edge_roots, write_pidfile};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use crate::datagrams::{icmp_config, raise_nofile_limit, Datagrams, IcmpSources, Round};
use crate::edge_socket::{EdgeSocket, RecvBufs};
use crate::edge_tcp::{EdgeLinks, Round as EdgeRound};
use crate::management;
use crate::origin::{Key, Origins, Report};
use crate::resolver::Resolver;
use crate::srv;
use crate::status::{self, Client, Figures};
use burrow_os::origin_tls::OriginTls;

const WAKER: Token = Token(0);
const SIGNALS: Token = Token(1);
const STATUS: Token = Token(2);
/// First token handed to sockets opened on demand.
const FIRST: usize = 16;
/// Requests in flight per connection the edge is granted at most. quinn keeps bookkeeping for
/// every stream granted (about 85 bytes each; the grant starts smaller and grows with the
/// load): burrow-tokio's 8192 would cost about 700 KiB per connection under load; a small box
/// serves far fewer at once (4 connections still take 1024 requests at once).
const MAX_STREAMS: u32 = 256;
/// Most scrapes or probes served at once; more wait in the listen backlog.
const MAX_STATUS_CLIENTS: usize = 16;

/// What a token stands for.
#[derive(Debug, Clone, Copy)]
enum Source {
    Edge(u8),
    EdgeTcp(LinkId),
    Flow(Key),
    Udp(UdpFlowId),
    Funnel(FunnelId),
    Status,
}

/// Tokens of the sockets opened on demand, never two alike at once.
struct Tokens {
    map: HashMap<Token, Source>,
    next: usize,
}

impl Tokens {
    fn alloc(&mut self, source: Source) -> Token {
        loop {
            let t = Token(self.next);
            self.next = self.next.checked_add(1).unwrap_or(FIRST);
            if let Entry::Vacant(e) = self.map.entry(t) {
                e.insert(source);
                return t;
            }
        }
    }

    fn free(&mut self, t: Option<Token>) {
        if let Some(t) = t {
            self.map.remove(&t);
        }
    }
}

/// The edge as an address pool. Names are resolved here, before the loop starts, where
/// blocking stalls nothing.
fn discover(edges: &Edges, ip_version: IpVersion) -> Result<EdgePool, String> {
    match edges {
        Edges::Static(list) => {
            let mut addrs: Vec<SocketAddr> = Vec::new();
            for e in list {
                match e.to_socket_addrs().map(static_edge_address) {
                    Ok(Some(a)) => addrs.push(a),
                    Ok(None) => warn!(edge = %e, "edge address resolves to nothing; skipped"),
                    Err(err) => {
                        warn!(edge = %e, error = %err, "cannot resolve edge address; skipped")
                    }
                }
            }
            if addrs.is_empty() {
                return Err("edge discovery failed: failed to resolve any edge address".into());
            }
            EdgePool::from_static(&addrs).map_err(|e| format!("edge discovery failed: {e}"))
        }
        Edges::Srv { region } => {
            let service = srv_service(region.as_deref());
            let targets =
                srv::lookup(&service).map_err(|e| format!("edge discovery failed: {e}"))?;
            let regions =
                srv::regions(&targets).map_err(|e| format!("edge discovery failed: {e}"))?;
            EdgePool::from_srv_targets(&regions, ip_version)
                .map_err(|e| format!("edge discovery failed: {e}"))
        }
    }
}

/// An input the loop owes the connector after doing some I/O.
enum Answer {
    EdgeSocket { index: u8, max_segments: usize },
    UdpOpened(UdpFlowId),
    UdpFailed(UdpFlowId, String),
    UdpWriteFailed(UdpFlowId),
    PingWriteFailed(FunnelId),
    FunnelFailed(FunnelId),
    EdgeWritten(LinkId),
    EdgeFailed(LinkId, String),
}

impl Answer {
    fn as_input(&self) -> Input<'_> {
        match self {
            Self::EdgeSocket {
                index,
                max_segments,
            } => Input::EdgeSocket {
                index: *index,
                max_segments: *max_segments,
            },
            Self::UdpOpened(flow) => Input::UdpOpened(*flow),
            Self::UdpFailed(flow, reason) => Input::UdpFailed {
                flow: *flow,
                reason,
            },
            Self::UdpWriteFailed(flow) => Input::UdpWriteFailed(*flow),
            Self::PingWriteFailed(funnel) => Input::PingWriteFailed(*funnel),
            Self::FunnelFailed(funnel) => Input::FunnelFailed(*funnel),
            Self::EdgeWritten(link) => Input::EdgeWritten { link: *link },
            Self::EdgeFailed(link, reason) => Input::EdgeFailed {
                link: *link,
                reason,
            },
        }
    }
}

/// Blocking work the connector asks for now and then, each job on a short-lived thread whose
/// answer wakes the loop: TXT lookups (`auto` reading the protocol percentages, hourly; the
/// name servers may take seconds) and Access key fetches (a team's keys, each minute).
struct OneShots<A> {
    waker: Arc<Waker>,
    tx: std::sync::mpsc::Sender<A>,
    rx: std::sync::mpsc::Receiver<A>,
}

impl<A: Send + 'static> OneShots<A> {
    fn new(waker: Arc<Waker>) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        Self { waker, tx, rx }
    }

    /// Runs `job` on thread `name`; if no thread can start, `failed` is the answer.
    fn run(
        &self,
        name: &str,
        job: impl FnOnce() -> A + Send + 'static,
        failed: impl FnOnce() -> A,
    ) {
        let (tx, waker) = (self.tx.clone(), self.waker.clone());
        let spawned = std::thread::Builder::new()
            .name(name.into())
            // rustls's handshake (Access key fetches) wants more than a lookup.
            .stack_size(256 * 1024)
            .spawn(move || {
                let _ = tx.send(job());
                let _ = waker.wake();
            });
        if let Err(e) = spawned {
            warn!(error = %e, job = name, "cannot start a thread");
            let _ = self.tx.send(failed());
            let _ = self.waker.wake();
        }
    }
}

/// Every socket of the loop.
struct Driver {
    poll: Poll,
    tokens: Tokens,
    edges: BTreeMap<u8, (EdgeSocket, Token)>,
    /// `--edge-bind-address`: the local IP of every edge socket, UDP and TCP.
    bind: Option<IpAddr>,
    recv_bufs: RecvBufs,
    /// TCP connections of HTTP/2 links.
    edge_tcp: EdgeLinks,
    origins: Origins,
    txt: OneShots<(&'static str, Option<String>)>,
    /// The virtual DNS service's resolver lookups: resolv.conf if the lookup succeeded.
    local_resolver: OneShots<Option<String>>,
    keys: OneShots<(String, Result<Vec<u8>, String>)>,
    datagrams: Datagrams,
    listener: TcpListener,
    clients: HashMap<Token, Client>,
    /// Status clients, oldest first: a new one evicts the oldest when all slots are taken,
    /// so clients that connect and say nothing cannot lock probes out.
    client_order: VecDeque<Token>,
    figures: Figures,
    /// Sockets that hit their read bound: read again without waiting.
    again: Vec<Token>,
}

impl Driver {
    fn registry(&self) -> &Registry {
        self.poll.registry()
    }

    fn transmit(&self, index: u8, t: &burrow_core::tunnel::Transmit, data: &[u8]) {
        if let Some((s, _)) = self.edges.get(&index) {
            s.send(t, data);
        }
    }

    /// Does one piece of I/O; what the connector must hear back about it.
    fn act(&mut self, work: Io<'_>) -> Option<Answer> {
        let registry = self.poll.registry();
        match work {
            Io::EdgeSocket { index, edge } => {
                let fits = self
                    .edges
                    .get(&index)
                    .and_then(|(s, _)| s.local_addr().ok())
                    .is_some_and(|a| a.is_ipv4() == edge.is_ipv4());
                if !fits {
                    if let Some((mut old, token)) = self.edges.remove(&index) {
                        let _ = registry.deregister(old.source());
                        self.tokens.free(Some(token));
                    }
                    let token = self.tokens.alloc(Source::Edge(index));
                    let opened = EdgeSocket::bind_for(edge, self.bind).and_then(|mut s| {
                        registry.register(s.source(), token, Interest::READABLE)?;
                        Ok(s)
                    });
                    match opened {
                        Ok(s) => {
                            self.edges.insert(index, (s, token));
                        }
                        Err(e) => {
                            // The connection's handshake times out and is retried.
                            self.tokens.free(Some(token));
                            error!(conn_index = index, error = %e, "cannot open UDP socket");
                            return None;
                        }
                    }
                }
                let max_segments = self.edges.get(&index)?.0.max_transmit_segments();
                return Some(Answer::EdgeSocket {
                    index,
                    max_segments,
                });
            }
            Io::OpenFlow {
                link,
                flow,
                kind,
                dest,
                origin,
                host,
            } => {
                debug!(%link, %flow, ?kind, %dest, "opening origin connection");
                let key = (link, flow);
                let token = self.tokens.alloc(Source::Flow(key));
                self.origins
                    .open(token, key, kind, dest, host.as_deref(), origin);
            }
            Io::WriteFlow { link, flow, data } => self.origins.write((link, flow), data),
            Io::ReadFlow { link, flow } => self.origins.read_more((link, flow)),
            Io::ShutdownFlow { link, flow } => self.origins.shutdown((link, flow)),
            Io::AbortDial { link, flow } => self.origins.abort_dial((link, flow)),
            Io::CloseFlow { link, flow } => {
                let token = self.origins.close((link, flow));
                self.tokens.free(token);
            }
            Io::OpenUdp { flow, dest } => {
                let token = self.tokens.alloc(Source::Udp(flow));
                return Some(match self.datagrams.open_udp(registry, token, flow, dest) {
                    Ok(()) => Answer::UdpOpened(flow),
                    Err(e) => {
                        self.tokens.free(Some(token));
                        Answer::UdpFailed(flow, e.to_string())
                    }
                });
            }
            Io::SendUdp { flow, payload } => {
                if !self.datagrams.send_udp(flow, payload) {
                    return Some(Answer::UdpWriteFailed(flow));
                }
            }
            Io::CloseUdp { flow } => {
                let token = self.datagrams.close_udp(registry, flow);
                self.tokens.free(token);
            }
            Io::OpenFunnel { funnel, bind } => {
                let token = self.tokens.alloc(Source::Funnel(funnel));
                if let Err(e) = self.datagrams.open_funnel(registry, token, funnel, bind) {
                    debug!(%funnel, %bind, error = %e, "cannot open a ping socket");
                    self.tokens.free(Some(token));
                    return Some(Answer::FunnelFailed(funnel));
                }
            }
            Io::SendPing {
                funnel,
                dst,
                message,
                ..
            } => {
                if !self.datagrams.send_ping(funnel, dst, message) {
                    return Some(Answer::PingWriteFailed(funnel));
                }
                self.figures.connector.icmp_requests = self.datagrams.stats.pings_sent;
            }
            Io::CloseFunnel { funnel } => {
                let token = self.datagrams.close_funnel(registry, funnel);
                self.tokens.free(token);
            }
            Io::DialEdge {
                index,
                link,
                edge,
                keepalive,
            } => {
                debug!(conn_index = index, %link, %edge, "dialing edge over TCP");
                let token = self.tokens.alloc(Source::EdgeTcp(link));
                let dialed = self
                    .edge_tcp
                    .dial(registry, token, link, edge, self.bind, keepalive);
                if let Err(e) = dialed {
                    self.tokens.free(Some(token));
                    return Some(Answer::EdgeFailed(
                        link,
                        burrow_core::connector::dial_failure(&e),
                    ));
                }
            }
            Io::WriteEdge { link, data } => {
                return match self.edge_tcp.write(registry, link, data) {
                    Ok(true) => Some(Answer::EdgeWritten(link)),
                    Ok(false) => None,
                    Err((token, e)) => {
                        self.tokens.free(Some(token));
                        Some(Answer::EdgeFailed(link, e.to_string()))
                    }
                };
            }
            Io::CloseEdge { link } => {
                let token = self.edge_tcp.close(registry, link);
                self.tokens.free(token);
            }
            Io::LookupTxt { name, timeout } => self.txt.run(
                "txt",
                move || {
                    let text = srv::txt(name, timeout)
                        .map_err(|e| debug!(error = %e, "TXT lookup failed"))
                        .ok();
                    (name, text)
                },
                // A failed lookup: the connector keeps its protocol and asks again.
                move || (name, None),
            ),
            // getaddrinfo has no timeout of its own: the connector ignores a late answer.
            Io::FindLocalResolver { host, timeout: _ } => self.local_resolver.run(
                "resolver-lookup",
                move || {
                    use std::net::ToSocketAddrs;
                    let resolved = (host, 0)
                        .to_socket_addrs()
                        .is_ok_and(|mut a| a.next().is_some());
                    resolved
                        .then(|| std::fs::read_to_string(virtual_dns::RESOLV_CONF).ok())
                        .flatten()
                },
                || None,
            ),
            Io::FetchAccessKeys { url } => {
                let u = url.clone();
                self.keys.run(
                    "access-keys",
                    move || {
                        let body = crate::access::fetch(&u);
                        (u, body)
                    },
                    move || (url, Err("cannot start a thread".into())),
                );
            }
        }
        None
    }

    /// Feeds what the origins reported (answering the management service's requests for
    /// the connector's figures first).
    fn feed_reports(&mut self, now: Instant, machine: &mut Connector) -> bool {
        let wanted = self.origins.wants_metrics();
        if !wanted.is_empty() {
            let exposition = self.figures.exposition(machine);
            for id in wanted {
                self.origins.metrics(id, &exposition);
            }
        }
        if self.origins.reports.is_empty() {
            return false;
        }
        let mut reports = std::mem::take(&mut self.origins.reports);
        for ((link, flow), report) in reports.drain(..) {
            if !self.origins.contains(&(link, flow)) {
                continue;
            }
            let reason;
            let input = match report {
                Report::Handshaking => Input::FlowHandshaking { link, flow },
                Report::Dialing => Input::FlowDialing { link, flow },
                Report::Dialed => Input::FlowDialed { link, flow },
                Report::Http2 => Input::FlowHttp2 { link, flow },
                Report::Connected => Input::FlowConnected { link, flow },
                Report::Failed(r) => {
                    reason = r;
                    Input::FlowFailed {
                        link,
                        flow,
                        reason: &reason,
                    }
                }
                Report::Data(data) => Input::FlowData { link, flow, data },
                Report::Finished => Input::FlowFinished { link, flow },
                Report::Written => Input::FlowWritten { link, flow },
            };
            machine.handle_input(now, input);
        }
        // Reports made while feeding (none today) stay; the buffer is reused.
        reports.append(&mut self.origins.reports);
        self.origins.reports = reports;
        true
    }

    /// Reads the socket behind `token` after a readiness event.
    fn on_ready(&mut self, now: Instant, machine: &mut Connector, token: Token) {
        let Some(source) = self.tokens.map.get(&token).copied() else {
            return;
        };
        match source {
            Source::Edge(index) => {
                let Some((s, _)) = self.edges.get(&index) else {
                    return;
                };
                let got = s.read_round(&mut self.recv_bufs, |received| {
                    machine.handle_input(
                        now,
                        Input::Received {
                            index,
                            received: *received,
                        },
                    );
                });
                match got {
                    Ok(true) => {}
                    Ok(false) => self.again.push(token),
                    // Errors (an ICMP unreachable, say) end the round; what is queued
                    // behind them is read at once.
                    Err(e) => {
                        debug!(conn_index = index, error = %e, "UDP receive error");
                        self.again.push(token);
                    }
                }
            }
            Source::EdgeTcp(link) => {
                let registry = self.poll.registry();
                match self.edge_tcp.ready(now, registry, machine, link) {
                    EdgeRound::Done => {}
                    EdgeRound::Again => self.again.push(token),
                    EdgeRound::Gone(t) => self.tokens.free(Some(t)),
                }
            }
            Source::Flow(key) => self.origins.ready(key),
            Source::Udp(flow) => {
                let registry = self.poll.registry();
                match self.datagrams.read_udp(registry, now, machine, flow) {
                    Round::Drained => {}
                    Round::More => self.again.push(token),
                    Round::Failed(t) => self.tokens.free(Some(t)),
                }
            }
            Source::Funnel(funnel) => {
                let registry = self.poll.registry();
                match self.datagrams.read_ping(registry, now, machine, funnel) {
                    Round::Drained => {}
                    Round::More => self.again.push(token),
                    Round::Failed(t) => self.tokens.free(Some(t)),
                }
            }
            Source::Status => {
                let done = match self.clients.get_mut(&token) {
                    Some(c) => c.drive(&mut self.figures, machine),
                    None => true,
                };
                if done {
                    self.client_order.retain(|t| *t != token);
                    self.drop_client(token);
                }
            }
        }
    }

    fn drop_client(&mut self, token: Token) {
        if let Some(mut c) = self.clients.remove(&token) {
            let _ = self.poll.registry().deregister(c.source());
        }
        self.tokens.free(Some(token));
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    while self.clients.len() >= MAX_STATUS_CLIENTS {
                        let Some(oldest) = self.client_order.pop_front() else {
                            break;
                        };
                        self.drop_client(oldest);
                    }
                    let token = self.tokens.alloc(Source::Status);
                    let mut c = Client::new(stream);
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    if self
                        .registry()
                        .register(c.source(), token, interest)
                        .is_ok()
                    {
                        self.clients.insert(token, c);
                    } else {
                        self.tokens.free(Some(token));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    debug!(error = %e, "metrics accept failed");
                    return;
                }
            }
        }
    }
}

/// How often, at most, the loop asks whether freed heap is worth returning.
const HEAP_CHECK: Duration = Duration::from_secs(1);

/// Runs the connector until shut down (or a fatal error).
pub fn run(settings: &Settings, rc: RunConfig) -> Result<(), String> {
    raise_nofile_limit();
    let connector_id = Uuid::new_v4();
    info!(%connector_id, "Generated Connector ID");
    let poll = Poll::new().map_err(|e| format!("cannot create the event loop: {e}"))?;
    let waker = Arc::new(
        Waker::new(poll.registry(), WAKER).map_err(|e| format!("cannot create a waker: {e}"))?,
    );
    let mut signals = Signals::new([SIGTERM, SIGINT])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    poll.registry()
        .register(&mut signals, SIGNALS, Interest::READABLE)
        .map_err(|e| e.to_string())?;
    let mut listener = status::bind(&settings.metrics)
        .map_err(|e| format!("cannot bind metrics server on {}: {e}", settings.metrics))?;
    poll.registry()
        .register(&mut listener, STATUS, Interest::READABLE)
        .map_err(|e| e.to_string())?;
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "Starting metrics server on {addr}/metrics");
    }
    let pool = discover(&rc.edges, rc.ip_version)?;
    let roots = edge_roots(rc.cacert.as_deref()).map_err(|e| format!("TLS: {e}"))?;
    let icmp = icmp_config(IcmpSources {
        v4: rc.icmpv4_src,
        v6: rc.icmpv6_src,
    });
    let percentage = if rc.wants_percentage_record() {
        let txt = srv::txt(PERCENTAGE_RECORD, TXT_LOOKUP_TIMEOUT);
        if let Err(e) = &txt {
            warn!(error = %e, "Unable to lookup protocol percentage.");
        }
        txt.ok()
    } else {
        None
    };
    let mut config = rc
        .supervisor_config(roots, connector_id, icmp, percentage.as_deref(), true)
        .map_err(|e| format!("TLS: {e}"))?;
    config.quic.max_concurrent_bidi_streams = MAX_STREAMS;
    let origin_registry = poll
        .registry()
        .try_clone()
        .map_err(|e| format!("cannot create the event loop: {e}"))?;
    let mut machine = Connector::new(Instant::now(), config, pool, burrow_os::host::random_u64());
    info!(tunnel_id = %rc.creds.tunnel_id, %connector_id, "Starting tunnel");

    let mut d = Driver {
        tokens: Tokens {
            map: HashMap::new(),
            next: FIRST,
        },
        edges: BTreeMap::new(),
        bind: rc.edge_bind_address,
        recv_bufs: RecvBufs::new(),
        edge_tcp: EdgeLinks::new(),
        origins: Origins::new(
            OriginTls::new(None),
            origin_registry,
            Resolver::new(waker.clone()),
            management::Service::new(
                rc.management
                    .config(connector_id, burrow_os::host::host_name()),
                &rc.management.service_op_ip,
            ),
        ),
        txt: OneShots::new(waker.clone()),
        local_resolver: OneShots::new(waker.clone()),
        keys: OneShots::new(waker),
        datagrams: Datagrams::new(),
        listener,
        clients: HashMap::new(),
        client_order: VecDeque::new(),
        figures: Figures {
            connector_id: connector_id.to_string(),
            ..Figures::default()
        },
        again: Vec::new(),
        poll,
    };
    let mut events = Events::with_capacity(128);
    let mut fatal = None;
    let mut signal_count = 0u32;
    let mut pidfile = settings.pidfile.clone();
    let mut systemd_told = false;
    // Start-up's pages are given back once, when every connection has registered.
    let mut startup = burrow_os::resident::StartupTrim::new();
    // Freed heap is held during a burst and goes back to the kernel after it. Checked at most
    // once a second, and only when the loop wakes anyway (keep-alives wake it while
    // connections are up), so an idle box gets no extra wake-ups.
    burrow_os::heap::hold_bursts();
    let mut heap = burrow_os::heap::HeapTrim::new();
    let mut now = Instant::now();
    let mut heap_checked = now;
    loop {
        // Drain every output (the connector orders them), then what the origins reported,
        // until neither has anything.
        let deadline = loop {
            let deadline = loop {
                let answer = match machine.poll_output(now) {
                    Output::Timeout(deadline) => break deadline,
                    Output::Transmit {
                        index,
                        transmit,
                        data,
                    } => {
                        d.transmit(index, &transmit, data);
                        None
                    }
                    Output::Io(work) => d.act(work),
                    Output::Event(e) => {
                        if let Event::Fatal(err) = &e {
                            fatal = Some(err.to_string());
                        }
                        if matches!(e, Event::Registered { .. }) {
                            if let Some(path) = pidfile.take() {
                                if let Err((pid_path, e)) = write_pidfile(&path) {
                                    error!(%pid_path, error = %e, "Unable to write pid");
                                }
                            }
                            if !std::mem::replace(&mut systemd_told, true) {
                                if let Err(e) = burrow_os::notify_ready() {
                                    warn!(error = %e, "cannot notify systemd");
                                }
                            }
                        }
                        if let Event::ConfigurationApplied { version } = &e {
                            d.figures.connector.config_version = i64::from(*version);
                        }
                        d.figures.quic.on_event(&e);
                        burrow_os::events::log(&e, signal_count > 0);
                        None
                    }
                };
                if let Some(answer) = answer {
                    machine.handle_input(now, answer.as_input());
                }
            };
            if !d.feed_reports(now, &mut machine) {
                break deadline;
            }
        };
        // HTTP/2 links that held their bytes back and now want them.
        let wanted: Vec<Token> = d.edge_tcp.wanted(&mut machine).collect();
        d.again.extend(wanted);
        d.figures.ready = machine.ready_connections();
        startup.on_ready(now, d.figures.ready, machine.ha_connections());
        if machine.is_stopped() {
            break;
        }
        let wake = [deadline, d.origins.deadline()].into_iter().flatten().min();
        let timeout = if d.again.is_empty() {
            wake.map(|w| w.saturating_duration_since(Instant::now()))
        } else {
            Some(Duration::ZERO)
        };
        if let Err(e) = d.poll.poll(&mut events, timeout) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(format!("event loop: {e}"));
            }
        }
        now = Instant::now();
        for token in std::mem::take(&mut d.again) {
            d.on_ready(now, &mut machine, token);
        }
        for event in events.iter() {
            match event.token() {
                WAKER => {
                    d.origins.resolved(now);
                    let txt: Vec<_> = d.txt.rx.try_iter().collect();
                    for (name, text) in txt {
                        machine.handle_input(
                            now,
                            Input::TxtRecord {
                                name,
                                text: text.as_deref(),
                            },
                        );
                    }
                    let found: Vec<_> = d.local_resolver.rx.try_iter().collect();
                    for conf in found {
                        let resolv_conf = conf.as_deref();
                        machine.handle_input(now, Input::LocalResolver { resolv_conf });
                    }
                    let keys: Vec<_> = d.keys.rx.try_iter().collect();
                    for (url, body) in keys {
                        let body = match &body {
                            Ok(b) => Ok(&b[..]),
                            Err(e) => Err(e.as_str()),
                        };
                        machine.handle_input(
                            now,
                            Input::AccessKeysFetched {
                                url: &url,
                                body,
                                unix: burrow_os::unix_now(),
                            },
                        );
                    }
                }
                SIGNALS => {
                    for _ in signals.pending() {
                        signal_count += 1;
                        if signal_count == 1 {
                            info!(grace_period = ?settings.grace_period, "Initiating graceful shutdown due to signal");
                        } else {
                            info!("second signal: exiting now");
                        }
                        machine.handle_input(now, Input::Shutdown);
                    }
                }
                STATUS => d.accept(),
                token => d.on_ready(now, &mut machine, token),
            }
        }
        d.origins.tick(now);
        if now.saturating_duration_since(heap_checked) >= HEAP_CHECK {
            heap_checked = now;
            if let Some(bytes) = heap.tick() {
                debug!(released = bytes, "freed heap returned to the kernel");
            }
        }
        if deadline.is_some_and(|t| t <= now) {
            machine.handle_input(now, Input::Timeout);
        }
    }
    match fatal {
        Some(e) => Err(e),
        None => {
            info!("no more connections active and exiting");
            Ok(())
        }
    }
}
