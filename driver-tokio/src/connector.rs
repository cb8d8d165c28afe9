//! The connector daemon (`burrow tunnel run`): a tokio driver around burrow-core's
//! [`Connector`]. It owns the UDP sockets (one per HA index, as cloudflared), the origin
//! connections (one task each, reporting back on a channel), the datagram sockets of UDP
//! sessions and ICMP funnels ([`DatagramSockets`]) and the timer; every protocol decision is
//! the connector's.
//!
//! The loop is str0m's: feed one input, drain `poll_output` until it says `Timeout`, then wait
//! for I/O or the deadline.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burrow_core::connector::{Connector, Event, Input, Io, Output};
use burrow_core::datagram::LinkId;
use burrow_core::icmp::{FunnelId, RouterConfig};
use burrow_core::quic::tls;
use burrow_core::session::UdpFlowId;
use burrow_core::settings::RunConfig;
use burrow_core::tunnel::data::FlowId;
use burrow_core::tunnel::protocol::{PERCENTAGE_RECORD, TXT_LOOKUP_TIMEOUT};
use burrow_core::tunnel::supervisor::{
    region_targets, srv_service, static_edge_address, EdgePool, IpVersion, SupervisorError,
};
use burrow_core::tunnel::Transmit;
use burrow_core::virtual_dns;
use burrow_tokio::deadline::DeadlineTimer;
use fnv::FnvBuildHasher;
use thiserror::Error;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::datagram::{
    icmp_config, raise_nofile_limit, DatagramSockets, IcmpSources, SocketEvent, UdpRead,
};
use crate::metrics::Metrics;
use crate::origin::{Dialer, FlowHandle, FlowReport, Report};
use crate::quic_socket::{QuicSocket, RecvBufs};

pub use burrow_core::settings::Edges;

/// Everything `tunnel run` needs.
pub struct Options {
    /// The settings, configuration file and credentials, resolved by core (shared with
    /// burrow-mio).
    pub run: RunConfig,
    /// Whether to proxy ICMP (from `--icmpv4-src`/`--icmpv6-src`, found when unset).
    pub icmp: bool,
    /// Metrics (shared with the metrics server).
    pub metrics: Arc<Metrics>,
    /// Where origin connections' tasks run; none: the runtime that runs the loop.
    pub origin_runtime: Option<tokio::runtime::Handle>,
}

/// Why the connector stopped with an error.
#[derive(Debug, Error)]
pub enum RunError {
    /// No edge address.
    #[error("edge discovery failed: {0}")]
    Discovery(String),
    /// TLS setup.
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    /// The supervisor gave up.
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    /// A socket could not be opened.
    #[error("UDP socket: {0}")]
    Socket(#[from] std::io::Error),
}

/// Resolves the edge into an address pool.
pub async fn discover(edges: &Edges, ip_version: IpVersion) -> Result<EdgePool, RunError> {
    match edges {
        Edges::Static(list) => {
            let mut addrs = Vec::new();
            for e in list {
                match tokio::net::lookup_host(e.as_str()).await {
                    Ok(it) => match static_edge_address(it) {
                        Some(a) => addrs.push(a),
                        None => warn!(edge = %e, "edge address resolves to nothing; skipped"),
                    },
                    Err(err) => {
                        warn!(edge = %e, error = %err, "cannot resolve edge address; skipped")
                    }
                }
            }
            if addrs.is_empty() {
                return Err(RunError::Discovery(
                    "failed to resolve any edge address".into(),
                ));
            }
            EdgePool::from_static(&addrs).map_err(|e| RunError::Discovery(e.to_string()))
        }
        Edges::Srv { region } => {
            let service = srv_service(region.as_deref());
            let resolver = hickory_resolver::Resolver::builder_tokio()
                .map_err(|e| RunError::Discovery(e.to_string()))?
                .build();
            let srv = resolver
                .srv_lookup(service.as_str())
                .await
                .map_err(|e| RunError::Discovery(format!("SRV {service}: {e}")))?;
            let targets: Vec<(String, u16)> = srv
                .iter()
                .map(|r| (r.target().to_utf8(), r.port()))
                .collect();
            // Only the regions are resolved.
            let mut regions = Vec::new();
            for (target, port) in region_targets(&targets) {
                let ips = resolver
                    .lookup_ip(target.as_str())
                    .await
                    .map_err(|e| RunError::Discovery(format!("{target}: {e}")))?;
                regions.push(
                    ips.iter()
                        .map(|ip| SocketAddr::new(ip, *port))
                        .collect::<Vec<_>>(),
                );
            }
            EdgePool::from_srv_targets(&regions, ip_version)
                .map_err(|e| RunError::Discovery(e.to_string()))
        }
    }
}

/// The first TXT record of `name`, its strings joined (none if the lookup fails or takes
/// longer than `timeout`, which is core's).
async fn txt_record(name: &str, timeout: Duration) -> Option<String> {
    let resolver = hickory_resolver::Resolver::builder_tokio().ok()?.build();
    let lookup = tokio::time::timeout(timeout, resolver.txt_lookup(name))
        .await
        .ok()?
        .ok()?;
    let record = lookup.iter().next()?;
    let text: Vec<u8> = record
        .iter()
        .flat_map(|part| part.iter().copied())
        .collect();
    String::from_utf8(text).ok()
}

/// Session datagrams read per turn of the loop (a bounded batch, as for the other sources).
const UDP_READ_BATCH: usize = 256;

/// How often the QUIC figures are read for the metrics task.
const QUIC_SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Runs the connector until shut down. Each message on `shutdown` is one signal: the first
/// starts a graceful shutdown, the second closes at once.
pub async fn run(opts: Options, mut shutdown: mpsc::UnboundedReceiver<()>) -> Result<(), RunError> {
    raise_nofile_limit();
    let rc = &opts.run;
    let pool = discover(&rc.edges, rc.ip_version).await?;
    let roots = burrow_os::settings::edge_roots(rc.cacert.as_deref())?;
    let percentage = if rc.wants_percentage_record() {
        let txt = txt_record(PERCENTAGE_RECORD, TXT_LOOKUP_TIMEOUT).await;
        if txt.is_none() {
            warn!("Unable to lookup protocol percentage.");
        }
        txt
    } else {
        None
    };
    let metrics = opts.metrics.clone();
    let icmp = if opts.icmp {
        icmp_config(IcmpSources {
            v4: rc.icmpv4_src,
            v6: rc.icmpv6_src,
        })
    } else {
        RouterConfig::default()
    };
    let config = rc.supervisor_config(
        roots,
        metrics.connector_id,
        icmp,
        percentage.as_deref(),
        true,
    )?;
    let mut machine = Connector::new(Instant::now(), config, pool, burrow_os::host::random_u64());
    metrics.connector().ha_connections = machine.ha_connections();
    info!(
        tunnel_id = %rc.creds.tunnel_id,
        connector_id = %metrics.connector_id,
        "Starting tunnel"
    );
    let web_roots = Arc::new(burrow_os::origin_tls::web_roots());
    let management = crate::management::spawn(
        rc.management
            .config(metrics.connector_id, burrow_os::host::host_name()),
        rc.management.service_op_ip.clone(),
        metrics.clone(),
    );
    let dialer =
        Dialer::new(web_roots.clone(), opts.origin_runtime.clone()).with_management(management);
    let mut io = DriverIo::new(dialer, web_roots, metrics.clone())?;
    io.bind = rc.edge_bind_address;
    let mut fatal = None;
    let mut signals = 0u32;
    // Start-up's pages are given back once, when every connection has registered.
    let mut startup = burrow_os::resident::StartupTrim::new();
    // The QUIC figures are read for the metrics task at most once a second (the scrape
    // handler cannot reach the connector).
    let mut quic_sampled: Option<Instant> = None;
    let mut timer = DeadlineTimer::new();

    loop {
        // Drain every output; the connector orders them.
        let deadline = loop {
            let now = Instant::now();
            let answer = match machine.poll_output(now) {
                Output::Timeout(deadline) => break deadline,
                Output::Transmit {
                    index,
                    transmit,
                    data,
                } => {
                    io.transmit(index, &transmit, data);
                    None
                }
                Output::Io(work) => io.act(work).await,
                Output::Event(e) => {
                    if let Event::Fatal(err) = &e {
                        fatal = Some(err.clone());
                    }
                    on_event(&metrics, e, signals > 0);
                    None
                }
            };
            if let Some(input) = answer.as_ref().and_then(|a| a.as_input(&io.flows)) {
                machine.handle_input(now, input);
            }
        };
        // The origin datagrams of this drain, several per call on each socket.
        io.datagrams.flush_udp();
        if let Some(flow) = io.datagrams.write_failure() {
            let now = Instant::now();
            machine.handle_input(now, Input::UdpWriteFailed(flow));
            while let Some(flow) = io.datagrams.write_failure() {
                machine.handle_input(now, Input::UdpWriteFailed(flow));
            }
            continue;
        }
        metrics
            .ready
            .store(machine.ready_connections(), Ordering::Relaxed);
        startup.on_ready(
            Instant::now(),
            machine.ready_connections(),
            machine.ha_connections(),
        );
        metrics.connector().update(&machine);
        let at = Instant::now();
        if quic_sampled.is_none_or(|t| at.saturating_duration_since(t) >= QUIC_SAMPLE_EVERY) {
            quic_sampled = Some(at);
            metrics.quic().sample(&machine);
        }
        if machine.is_stopped() {
            break;
        }
        // TCP connections to read (the link took all it was given) or to finish writing.
        let wanted: Vec<(LinkId, bool)> = io
            .edges
            .iter()
            .map(|(&link, e)| (link, !e.eof && machine.edge_wants_read(link)))
            .collect();
        timer.set(deadline);
        tokio::select! {
            index = readable(&io.sockets, io.last_read) => {
                let now = Instant::now();
                io.last_read = index;
                if let Some(s) = io.sockets.get(&index) {
                    let got = s.read_round(&mut io.recv_bufs, |received| {
                        machine.handle_input(now, Input::Received { index, received: *received });
                    });
                    if let Err(e) = got {
                        debug!(conn_index = index, error = %e, "UDP receive error");
                    }
                }
            }
            () = io.datagrams.udp_readable() => {
                let now = Instant::now();
                // A bounded batch, so timers and the edge's packets are not starved.
                io.datagrams.read_udp(UDP_READ_BATCH, |read| match read {
                    UdpRead::Data { flow, mut buf, len } => {
                        machine.handle_input(now, Input::UdpRead { flow, buf: &mut buf, len });
                    }
                    UdpRead::Failed { flow, reason } => {
                        machine.handle_input(now, Input::UdpFailed { flow, reason: &reason });
                    }
                });
            }
            Some(event) = io.socket_rx.recv() => {
                let now = Instant::now();
                on_socket_event(now, &mut machine, &mut io.datagrams, event);
                // A bounded batch, so timers and the edge's packets are not starved.
                for _ in 0..256 {
                    let Ok(event) = io.socket_rx.try_recv() else { break };
                    on_socket_event(now, &mut machine, &mut io.datagrams, event);
                }
            }
            Some(report) = io.flow_rx.recv() => {
                let now = Instant::now();
                if let Some(input) = flow_input(&io.flows, &report) {
                    machine.handle_input(now, input);
                }
                while let Ok(report) = io.flow_rx.try_recv() {
                    if let Some(input) = flow_input(&io.flows, &report) {
                        machine.handle_input(now, input);
                    }
                }
            }
            Some((link, dialed)) = io.dial_rx.recv() => {
                let now = Instant::now();
                match dialed.and_then(|s| s.set_nodelay(true).and(s.local_addr()).map(|a| (s, a))) {
                    Ok((stream, local)) => {
                        // A link that gave up meanwhile (its handshake deadline) gets no socket.
                        if machine.has_edge_link(link) {
                            io.edges.insert(link, EdgeTcp { stream, unsent: Vec::new(), close: false, eof: false });
                            machine.handle_input(now, Input::EdgeConnected { link, local: local.ip() });
                        }
                    }
                    Err(e) => {
                        let reason = burrow_core::connector::dial_failure(&e);
                        machine.handle_input(now, Input::EdgeFailed { link, reason: &reason });
                    }
                }
            }
            (link, what) = edge_ready(&io.edges, &wanted) => {
                let now = Instant::now();
                on_edge_ready(now, &mut machine, &mut io, link, what);
            }
            Some((name, text)) = io.txt_rx.recv() => {
                machine.handle_input(Instant::now(), Input::TxtRecord { name, text: text.as_deref() });
            }
            Some(conf) = io.resolver_rx.recv() => {
                machine.handle_input(Instant::now(), Input::LocalResolver { resolv_conf: conf.as_deref() });
            }
            () = timer.fired() => {
                let now = Instant::now();
                // Stalled: what the edge sent meanwhile is taken before the timers run.
                if timer.stalled(now) {
                    for (&index, s) in &io.sockets {
                        let got = s.read_round_uncached(&mut io.recv_bufs, |received| {
                            machine.handle_input(now, Input::Received { index, received: *received });
                        });
                        if let Err(e) = got {
                            debug!(conn_index = index, error = %e, "UDP receive error");
                        }
                    }
                }
                machine.handle_input(now, Input::Timeout);
            }
            Some((url, body)) = io.keys_rx.recv() => {
                let body = match &body {
                    Ok(b) => Ok(&b[..]),
                    Err(e) => Err(e.as_str()),
                };
                machine.handle_input(Instant::now(), Input::AccessKeysFetched { url: &url, body, unix: burrow_os::unix_now() });
            }
            Some(()) = shutdown.recv() => {
                signals += 1;
                if signals == 1 {
                    info!(grace_period = ?opts.run.grace_period, "Initiating graceful shutdown due to signal");
                } else {
                    info!("second signal: exiting now");
                }
                machine.handle_input(Instant::now(), Input::Shutdown);
            }
        }
    }
    metrics.ready.store(0, Ordering::Relaxed);
    match fatal {
        Some(e) => Err(e.into()),
        None => {
            info!("no more connections active and exiting");
            Ok(())
        }
    }
}

/// Logs an event once and updates the metrics it moves.
fn on_event(metrics: &Metrics, e: Event, stopping: bool) {
    burrow_os::events::log(&e, stopping);
    metrics.quic().on_event(&e);
    match e {
        Event::Registered { .. } => metrics.registered.notify_one(),
        Event::ConfigurationApplied { version } => {
            metrics.connector().config_version = i64::from(version);
        }
        _ => {}
    }
}

/// An input the driver owes the connector after doing some I/O.
enum Answer {
    EdgeSocket {
        index: u8,
        max_segments: usize,
    },
    EdgeWritten(LinkId),
    /// What an origin connection did at once (written from the loop).
    Flow(Report),
    UdpOpened(UdpFlowId),
    UdpFailed(UdpFlowId, String),
    PingWriteFailed(FunnelId),
    FunnelFailed(FunnelId),
}

impl Answer {
    /// The input to feed the connector (none for a stale flow report).
    fn as_input<'a>(
        &'a self,
        flows: &HashMap<(LinkId, FlowId), Flow, FnvBuildHasher>,
    ) -> Option<Input<'a>> {
        Some(match self {
            Self::EdgeSocket {
                index,
                max_segments,
            } => Input::EdgeSocket {
                index: *index,
                max_segments: *max_segments,
            },
            Self::EdgeWritten(link) => Input::EdgeWritten { link: *link },
            Self::Flow(report) => return flow_input(flows, report),
            Self::UdpOpened(flow) => Input::UdpOpened(*flow),
            Self::UdpFailed(flow, reason) => Input::UdpFailed {
                flow: *flow,
                reason,
            },
            Self::PingWriteFailed(funnel) => Input::PingWriteFailed(*funnel),
            Self::FunnelFailed(funnel) => Input::FunnelFailed(*funnel),
        })
    }
}

/// Every socket and origin connection of the daemon.
struct DriverIo {
    /// `--edge-bind-address`.
    bind: Option<std::net::IpAddr>,
    /// The QUIC socket of each HA index; the loop reads them directly (batched, into reused
    /// buffers): no reader task, no copy per datagram.
    sockets: HashMap<u8, QuicSocket, FnvBuildHasher>,
    recv_bufs: RecvBufs,
    last_read: u8,
    dialer: Dialer,
    flows: HashMap<(LinkId, FlowId), Flow, FnvBuildHasher>,
    flow_tx: mpsc::UnboundedSender<Report>,
    flow_rx: mpsc::UnboundedReceiver<Report>,
    datagrams: DatagramSockets,
    socket_rx: mpsc::Receiver<SocketEvent>,
    /// TCP connections of HTTP/2 links.
    edges: HashMap<LinkId, EdgeTcp>,
    dial_tx: mpsc::UnboundedSender<(LinkId, std::io::Result<TcpStream>)>,
    dial_rx: mpsc::UnboundedReceiver<(LinkId, std::io::Result<TcpStream>)>,
    /// One read buffer for every TCP connection.
    tcp_buf: Vec<u8>,
    metrics: Arc<Metrics>,
    /// TXT lookups the connector asked for, answered from their tasks.
    txt_tx: mpsc::UnboundedSender<(&'static str, Option<String>)>,
    txt_rx: mpsc::UnboundedReceiver<(&'static str, Option<String>)>,
    /// The virtual DNS service's resolver lookups: resolv.conf if the lookup succeeded.
    resolver_tx: mpsc::UnboundedSender<Option<String>>,
    resolver_rx: mpsc::UnboundedReceiver<Option<String>>,
    /// Roots for the Access key fetches.
    web_roots: Arc<rustls::RootCertStore>,
    /// Access key fetches the connector asked for, answered from their tasks.
    keys_tx: mpsc::UnboundedSender<(String, Result<bytes::Bytes, String>)>,
    keys_rx: mpsc::UnboundedReceiver<(String, Result<bytes::Bytes, String>)>,
}

/// The TCP connection of an HTTP/2 link.
struct EdgeTcp {
    stream: TcpStream,
    /// Ciphertext the socket did not take yet (the link's one outstanding write).
    unsent: Vec<u8>,
    /// Close once `unsent` is written.
    close: bool,
    /// The edge closed its side (reported once).
    eof: bool,
}

impl DriverIo {
    fn new(
        dialer: Dialer,
        web_roots: Arc<rustls::RootCertStore>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let (flow_tx, flow_rx) = mpsc::unbounded_channel::<Report>();
        let (socket_tx, socket_rx) = mpsc::channel::<SocketEvent>(crate::datagram::CHANNEL_DEPTH);
        let (dial_tx, dial_rx) = mpsc::unbounded_channel();
        let (txt_tx, txt_rx) = mpsc::unbounded_channel();
        let (resolver_tx, resolver_rx) = mpsc::unbounded_channel();
        let (keys_tx, keys_rx) = mpsc::unbounded_channel();
        Ok(Self {
            web_roots,
            keys_tx,
            keys_rx,
            bind: None,
            sockets: HashMap::default(),
            recv_bufs: RecvBufs::new(),
            last_read: 0,
            dialer,
            flows: HashMap::default(),
            flow_tx,
            flow_rx,
            datagrams: DatagramSockets::new(socket_tx)?,
            socket_rx,
            edges: HashMap::new(),
            dial_tx,
            dial_rx,
            tcp_buf: vec![0; 64 * 1024],
            metrics,
            txt_tx,
            txt_rx,
            resolver_tx,
            resolver_rx,
        })
    }

    fn transmit(&self, index: u8, t: &Transmit, data: &[u8]) {
        if let Some(s) = self.sockets.get(&index) {
            // Non-blocking: a full socket buffer drops the datagrams, which QUIC's loss
            // recovery handles like any other loss.
            if let Err(e) = s.try_send(t, data) {
                if e.kind() != std::io::ErrorKind::WouldBlock {
                    debug!(conn_index = index, error = %e, "send failed");
                }
            }
        }
    }

    /// Does one piece of I/O; what the connector must hear back about it.
    async fn act(&mut self, work: Io<'_>) -> Option<Answer> {
        let metrics = &self.metrics;
        match work {
            Io::EdgeSocket { index, edge } => {
                let fits = self
                    .sockets
                    .get(&index)
                    .and_then(|s| s.local_addr().ok())
                    .is_some_and(|a| a.is_ipv4() == edge.is_ipv4());
                if !fits {
                    match open_socket(edge, self.bind).await {
                        Ok(s) => {
                            self.sockets.insert(index, s);
                        }
                        Err(e) => {
                            // The connection's handshake times out and is retried.
                            error!(conn_index = index, error = %e, "cannot open UDP socket");
                            return None;
                        }
                    }
                }
                let max_segments = self.sockets.get(&index)?.max_transmit_segments();
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
                host,
                origin,
            } => {
                debug!(%link, %flow, ?kind, %dest, "opening origin connection");
                metrics.open_flows.fetch_add(1, Ordering::Relaxed);
                let handle =
                    self.dialer
                        .open((link, flow), kind, dest, host, origin, self.flow_tx.clone());
                self.flows.insert((link, flow), Flow { handle });
            }
            Io::WriteFlow { link, flow, data } => {
                if let Some(f) = self.flows.get(&(link, flow)) {
                    if f.handle.write(data) {
                        return Some(Answer::Flow((link, flow, FlowReport::Written)));
                    }
                }
            }
            Io::ReadFlow { link, flow } => {
                if let Some(f) = self.flows.get(&(link, flow)) {
                    f.handle.read_more();
                }
            }
            Io::ShutdownFlow { link, flow } => {
                if let Some(f) = self.flows.get(&(link, flow)) {
                    f.handle.shutdown_write();
                }
            }
            Io::AbortDial { link, flow } => {
                if let Some(f) = self.flows.get(&(link, flow)) {
                    f.handle.abort_dial();
                }
            }
            Io::CloseFlow { link, flow } => {
                if self.flows.remove(&(link, flow)).is_some() {
                    close_flow_metrics(metrics);
                }
            }
            Io::OpenUdp { flow, dest } => {
                return Some(match self.datagrams.open_udp(flow, dest) {
                    Ok(()) => Answer::UdpOpened(flow),
                    Err(reason) => Answer::UdpFailed(flow, reason),
                });
            }
            Io::SendUdp { flow, payload } => self.datagrams.send_udp(flow, payload),
            Io::CloseUdp { flow } => self.datagrams.close_udp(flow),
            Io::OpenFunnel { funnel, bind } => {
                if !self.datagrams.open_funnel(funnel, bind) {
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
                metrics.connector().icmp_requests += 1;
            }
            Io::CloseFunnel { funnel } => self.datagrams.close_funnel(funnel),
            Io::DialEdge {
                index,
                link,
                edge,
                keepalive,
            } => {
                debug!(conn_index = index, %link, %edge, "dialing edge over TCP");
                let tx = self.dial_tx.clone();
                tokio::spawn(async move {
                    let _ = tx.send((link, dial_edge(link, edge, keepalive).await));
                });
            }
            Io::WriteEdge { link, data } => {
                let Some(e) = self.edges.get_mut(&link) else {
                    // Gone already: the link learns it from EdgeFailed.
                    return None;
                };
                let n = match e.stream.try_write(data) {
                    Ok(n) => n,
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => 0,
                    Err(err) => {
                        debug!(%link, error = %err, "edge write failed");
                        self.edges.remove(&link);
                        return None;
                    }
                };
                if n == data.len() {
                    return Some(Answer::EdgeWritten(link));
                }
                e.unsent.extend_from_slice(&data[n..]);
            }
            Io::CloseEdge { link } => {
                if let Some(e) = self.edges.get_mut(&link) {
                    if e.unsent.is_empty() {
                        self.edges.remove(&link);
                    } else {
                        e.close = true;
                    }
                }
            }
            Io::LookupTxt { name, timeout } => {
                let tx = self.txt_tx.clone();
                tokio::spawn(async move {
                    let _ = tx.send((name, txt_record(name, timeout).await));
                });
            }
            Io::FindLocalResolver { host, timeout } => {
                let tx = self.resolver_tx.clone();
                tokio::spawn(async move {
                    let lookup = tokio::time::timeout(timeout, tokio::net::lookup_host((host, 0)));
                    let resolved = (lookup.await.ok())
                        .and_then(Result::ok)
                        .is_some_and(|mut addrs| addrs.next().is_some());
                    let conf = if resolved {
                        tokio::fs::read_to_string(virtual_dns::RESOLV_CONF)
                            .await
                            .ok()
                    } else {
                        None
                    };
                    let _ = tx.send(conf);
                });
            }
            Io::FetchAccessKeys { url } => {
                let tx = self.keys_tx.clone();
                let roots = self.web_roots.clone();
                tokio::spawn(async move {
                    let body = crate::access::fetch(&url, roots).await;
                    let _ = tx.send((url, body));
                });
            }
        }
        None
    }
}

struct Flow {
    handle: FlowHandle,
}

/// Dials an HTTP/2 link's edge connection with the keepalive core asked for. As Go's dialer,
/// a socket that refuses keepalive still serves.
async fn dial_edge(
    link: LinkId,
    edge: SocketAddr,
    keepalive: Duration,
) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(edge).await?;
    if let Err(e) = burrow_os::tcp_keep_alive(&s, keepalive) {
        debug!(%link, error = %e, "cannot set TCP keepalive on the edge connection");
    }
    Ok(s)
}

async fn open_socket(
    edge: SocketAddr,
    local: Option<std::net::IpAddr>,
) -> std::io::Result<QuicSocket> {
    QuicSocket::bind(burrow_os::edge_bind(edge, local)).await
}

/// Resolves with the index of a socket that has datagrams to read, looking first at the
/// indexes after `last` so a busy socket does not starve the others; pending while there is
/// none (or no socket).
async fn readable(sockets: &HashMap<u8, QuicSocket, FnvBuildHasher>, last: u8) -> u8 {
    std::future::poll_fn(|cx| {
        let after = sockets.iter().filter(|(i, _)| **i > last);
        let before = sockets.iter().filter(|(i, _)| **i <= last);
        for (index, s) in after.chain(before) {
            // An error is read (and logged) by read_round like a datagram.
            if s.poll_recv_ready(cx).is_ready() {
                return std::task::Poll::Ready(*index);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// What an edge TCP connection is ready for.
enum EdgeReady {
    Read,
    Write,
}

/// Resolves with a TCP connection that is readable (and `wanted` says to read it) or writable
/// with bytes waiting; pending while there is none.
async fn edge_ready(
    edges: &HashMap<LinkId, EdgeTcp>,
    wanted: &[(LinkId, bool)],
) -> (LinkId, EdgeReady) {
    std::future::poll_fn(|cx| {
        for &(link, read) in wanted {
            let Some(e) = edges.get(&link) else { continue };
            if !e.unsent.is_empty() && e.stream.poll_write_ready(cx).is_ready() {
                return std::task::Poll::Ready((link, EdgeReady::Write));
            }
            if read && e.stream.poll_read_ready(cx).is_ready() {
                return std::task::Poll::Ready((link, EdgeReady::Read));
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Reads or writes an edge TCP connection that is ready, and tells the connector.
fn on_edge_ready(
    now: Instant,
    machine: &mut Connector,
    io: &mut DriverIo,
    link: LinkId,
    what: EdgeReady,
) {
    let Some(e) = io.edges.get_mut(&link) else {
        return;
    };
    match what {
        EdgeReady::Write => match e.stream.try_write(&e.unsent) {
            Ok(n) => {
                e.unsent.drain(..n);
                if e.unsent.is_empty() {
                    if e.close {
                        io.edges.remove(&link);
                    }
                    machine.handle_input(now, Input::EdgeWritten { link });
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(err) => {
                io.edges.remove(&link);
                let reason = err.to_string();
                machine.handle_input(
                    now,
                    Input::EdgeFailed {
                        link,
                        reason: &reason,
                    },
                );
            }
        },
        EdgeReady::Read => match e.stream.try_read(&mut io.tcp_buf) {
            Ok(n) => {
                if n == 0 {
                    e.eof = true;
                }
                machine.handle_input(
                    now,
                    Input::EdgeReceived {
                        link,
                        data: &io.tcp_buf[..n],
                    },
                );
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(err) => {
                io.edges.remove(&link);
                let reason = err.to_string();
                machine.handle_input(
                    now,
                    Input::EdgeFailed {
                        link,
                        reason: &reason,
                    },
                );
            }
        },
    }
}

/// What an origin UDP socket or a ping socket read goes to the connector.
fn on_socket_event(
    now: Instant,
    machine: &mut Connector,
    sockets: &mut DatagramSockets,
    event: SocketEvent,
) {
    match event {
        SocketEvent::PingRead {
            funnel,
            from,
            message,
        } => {
            if sockets.has_funnel(funnel) {
                let input = Input::PingRead {
                    funnel,
                    from,
                    message: &message,
                };
                machine.handle_input(now, input);
            }
        }
        SocketEvent::FunnelFailed { funnel, reason } => {
            if sockets.remove_funnel(funnel) {
                debug!(%funnel, %reason, "ping socket failed");
                machine.handle_input(now, Input::FunnelFailed(funnel));
            }
        }
    }
}

fn close_flow_metrics(metrics: &Metrics) {
    metrics.open_flows.fetch_sub(1, Ordering::Relaxed);
}

/// What a flow's report tells the connector (none if stale).
fn flow_input<'r>(
    flows: &HashMap<(LinkId, FlowId), Flow, FnvBuildHasher>,
    (link, flow, report): &'r Report,
) -> Option<Input<'r>> {
    let (link, flow) = (*link, *flow);
    // Reports of a flow already closed are stale.
    flows.get(&(link, flow))?;
    Some(match report {
        FlowReport::Handshaking => Input::FlowHandshaking { link, flow },
        FlowReport::Http2 => Input::FlowHttp2 { link, flow },
        FlowReport::Dialing => Input::FlowDialing { link, flow },
        FlowReport::Dialed => Input::FlowDialed { link, flow },
        FlowReport::Connected => Input::FlowConnected { link, flow },
        FlowReport::Failed(reason) => Input::FlowFailed { link, flow, reason },
        FlowReport::Data(data) => Input::FlowData {
            link,
            flow,
            data: data.clone(),
        },
        FlowReport::Finished => Input::FlowFinished { link, flow },
        FlowReport::Written => Input::FlowWritten { link, flow },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burrow_core::connector::EDGE_TCP_KEEPALIVE;

    /// The edge connection carries cloudflared's keepalive: on, first probe and interval 15 s.
    #[tokio::test]
    async fn edge_dial_sets_tcp_keepalive() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let edge = listener.local_addr().unwrap();
        let s = dial_edge(LinkId(0), edge, EDGE_TCP_KEEPALIVE)
            .await
            .unwrap();
        let sock = socket2::SockRef::from(&s);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(15));
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(15)
        );
    }
}
