//! The connector daemon (`burrow tunnel run`): a thin tokio driver around burrow-core's
//! [`Supervisor`]. It owns the UDP sockets (one per HA index, as cloudflared), the origin
//! connections, the datagram sockets of UDP sessions and ICMP funnels ([`DatagramSockets`])
//! and the timer; every protocol decision is the supervisor's.
//!
//! The loop follows the sans-IO rule: after every input, drain every `poll_*` until empty,
//! then sleep until `poll_timeout`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burrow_core::control::Registration;
use burrow_core::datagram::LinkId;
use burrow_core::ingress::{Ingress, RemoteConfig};
use burrow_core::quic::tls::{self, PostQuantum};
use burrow_core::quic::transport::QuicSettings;
use burrow_core::rpc_stream::ConfigVersions;
use burrow_core::stream::proxy::FlowKind;
use burrow_core::tunnel::connector::ConnectorConfig;
use burrow_core::tunnel::data::{DataLimits, FlowId, OriginAction};
use burrow_core::tunnel::supervisor::{
    EdgePool, IpVersion, Supervisor, SupervisorConfig, SupervisorError, SupervisorEvent,
};
use bytes::Bytes;
use thiserror::Error;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::creds::Credentials;
use crate::datagram::{icmp_config, raise_nofile_limit, DatagramSockets, IcmpSources, SocketEvent};
use crate::metrics::Metrics;
use crate::origin::{Dialer, FlowHandle, FlowReport, Report};
use crate::quic_socket::{QuicSocket, RecvBufs};

/// Where the edge is.
#[derive(Debug, Clone)]
pub enum Edges {
    /// `--edge host:port`, repeatable.
    Static(Vec<String>),
    /// DNS SRV discovery (`--region` picks the regional service).
    Srv {
        /// `--region`.
        region: Option<String>,
    },
}

/// Everything `tunnel run` needs.
pub struct Options {
    /// Credentials.
    pub creds: Credentials,
    /// Ingress rules.
    pub ingress: Ingress,
    /// Local configuration JSON pushed on connection 0.
    pub local_config: Option<Vec<u8>>,
    /// Edge addresses.
    pub edges: Edges,
    /// `--edge-ip-version`.
    pub ip_version: IpVersion,
    /// `--cacert` PEM contents: the only roots trusted for the edge.
    pub cacert: Option<Vec<u8>>,
    /// `--ha-connections`.
    pub ha_connections: u8,
    /// `--grace-period`.
    pub grace_period: Duration,
    /// `--features`.
    pub features: Vec<String>,
    /// `--tag`s, sent to origins with the connector id.
    pub tags: Vec<burrow_core::stream::tag::Tag>,
    /// `--max-active-flows`: overrides every configuration's `warp-routing.maxActiveFlows`
    /// (0: unlimited). One limit for TCP flows and UDP sessions together.
    pub max_active_flows: Option<u64>,
    /// The configuration file's `warp-routing.maxActiveFlows`, in force until the edge pushes
    /// a remote configuration.
    pub local_max_active_flows: Option<u64>,
    /// ICMP proxy sources (`--icmpv4-src`, `--icmpv6-src`, found when unset); `None` turns the
    /// ICMP proxy off.
    pub icmp: Option<IcmpSources>,
    /// `--post-quantum`.
    pub post_quantum: bool,
    /// Metrics (shared with the metrics server).
    pub metrics: Arc<Metrics>,
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

/// cloudflared's default feature list (PROTOCOL.md C§2.6), with datagram v3 chosen.
const DEFAULT_FEATURES: &[&str] = &[
    "allow_remote_config",
    "serialized_headers",
    "support_datagram_v2",
    "support_quic_eof",
    "management_logs",
    "support_datagram_v3_2",
];

/// Fresh OS randomness for seeds.
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // A failing OS RNG leaves zeros: jitter is then merely predictable, nothing breaks.
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b)
}

/// Resolves the edge into an address pool.
pub async fn discover(edges: &Edges, ip_version: IpVersion) -> Result<EdgePool, RunError> {
    match edges {
        Edges::Static(list) => {
            let mut addrs = Vec::new();
            for e in list {
                match tokio::net::lookup_host(e.as_str()).await {
                    Ok(mut it) => match it.next() {
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
            let service = match region {
                Some(r) if !r.is_empty() => format!("_{r}-v2-origintunneld._tcp.argotunnel.com."),
                _ => "_v2-origintunneld._tcp.argotunnel.com.".to_owned(),
            };
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
            if targets.len() < 2 {
                return Err(RunError::Discovery(format!(
                    "expected at least 2 Cloudflare Regions regions, but SRV only returned {}",
                    targets.len()
                )));
            }
            let mut regions = Vec::new();
            for (target, port) in targets.iter().take(2) {
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
            EdgePool::from_regions(&regions[0], &regions[1], ip_version)
                .map_err(|e| RunError::Discovery(e.to_string()))
        }
    }
}

/// Root certificates for the edge: `--cacert` alone, else cloudflared's default (the system
/// store plus Cloudflare's Origin CA roots, which the edge's certificate chains to).
fn edge_roots(cacert: Option<&[u8]>) -> Result<rustls::RootCertStore, tls::TlsError> {
    if let Some(pem) = cacert {
        return tls::roots_from_pem(pem, "--cacert");
    }
    let system = rustls_native_certs::load_native_certs();
    for e in &system.errors {
        warn!(error = %e, "cannot read part of the system certificate store");
    }
    let (roots, skipped) = tls::edge_default_roots(system.certs)?;
    debug!(
        roots = roots.len(),
        skipped, "edge roots: system store and Cloudflare's origin CAs"
    );
    Ok(roots)
}

struct Flow {
    handle: FlowHandle,
    /// Bytes the connection could not take yet; the flow reads again once they are taken.
    pending: Option<Bytes>,
    kind: FlowKind,
}

/// Runs the connector until shut down. Each message on `shutdown` is one signal: the first
/// starts a graceful shutdown, the second closes at once.
pub async fn run(opts: Options, mut shutdown: mpsc::UnboundedReceiver<()>) -> Result<(), RunError> {
    raise_nofile_limit();
    let pool = discover(&opts.edges, opts.ip_version).await?;
    let roots = edge_roots(opts.cacert.as_deref())?;
    let pq = if opts.post_quantum {
        PostQuantum::Strict
    } else {
        PostQuantum::Prefer
    };
    let mut client = quinn_proto::ClientConfig::new(Arc::new(tls::client_config(roots, pq)?));
    client.transport_config(QuicSettings::default().transport_config(true));
    let mut features: Vec<String> = DEFAULT_FEATURES.iter().map(|s| (*s).to_owned()).collect();
    if opts.post_quantum {
        features.push("postquantum".into());
    }
    for f in &opts.features {
        if !features.contains(f) && f != "support_datagram_v3" && f != "support_datagram_v3_1" {
            features.push(f.clone());
        }
    }
    let metrics = opts.metrics.clone();
    let registration = Registration::new(
        opts.creds.account_tag.clone(),
        opts.creds.secret.clone(),
        opts.creds.tunnel_id,
        metrics.connector_id,
        features,
    );
    // One handle for the dialer and every data stream, so a configuration push reaches all.
    let ingress: burrow_core::ingress::SharedIngress =
        Arc::new(std::sync::RwLock::new(Arc::new(opts.ingress.clone())));
    let data = DataLimits {
        ingress: Some(ingress.clone()),
        max_idle: opts.ingress.defaults.keep_alive_connections as usize,
        idle_timeout: opts.ingress.defaults.keep_alive_timeout,
        tags: opts.tags.clone(),
        ..DataLimits::default()
    };
    let connector = ConnectorConfig {
        local_config: opts.local_config.clone(),
        grace_period: opts.grace_period,
        data,
        ..ConnectorConfig::new(registration, client)
    };
    let mut config = SupervisorConfig::new(connector);
    config.ha_connections = opts.ha_connections;
    config.max_active_flows = opts.max_active_flows;
    config.local_max_active_flows = opts.local_max_active_flows;
    if let Some(sources) = opts.icmp {
        config.icmp = icmp_config(sources);
    }
    let mut sup = Supervisor::new(Instant::now(), config, pool, random_u64());
    metrics.ha_connections.set(sup.ha_connections() as i64);
    info!(
        tunnel_id = %opts.creds.tunnel_id,
        connector_id = %metrics.connector_id,
        "Starting tunnel"
    );

    let dialer = Dialer {
        roots: Arc::new(rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        }),
    };
    let (flow_tx, mut flow_rx) = mpsc::unbounded_channel::<Report>();
    // The QUIC socket of each HA index; the loop reads them directly (batched, into reused
    // buffers): no reader task, no copy per datagram.
    let mut sockets: HashMap<u8, QuicSocket> = HashMap::new();
    let mut recv_bufs = RecvBufs::new();
    let mut last_read = 0u8;
    let mut flows: HashMap<(LinkId, FlowId), Flow> = HashMap::new();
    let mut versions = ConfigVersions::new();
    let (socket_tx, mut socket_rx) = mpsc::channel::<SocketEvent>(crate::datagram::CHANNEL_DEPTH);
    let mut datagrams = DatagramSockets::new(socket_tx);
    // Room for a GSO batch of full-size datagrams.
    let mut buf = Vec::with_capacity(64 * 1500);
    let mut fatal = None;
    let mut signals = 0u32;

    loop {
        // Drain everything (events first: they open the sockets transmits go out of).
        loop {
            let now = Instant::now();
            let mut progress = false;
            while let Some(ev) = sup.poll_event() {
                progress = true;
                match ev {
                    SupervisorEvent::Connecting { index, link, edge } => {
                        debug!(conn_index = index, %link, %edge, "dialing edge");
                        let fits = sockets
                            .get(&index)
                            .and_then(|s| s.local_addr().ok())
                            .is_some_and(|a| a.is_ipv4() == edge.is_ipv4());
                        if !fits {
                            match open_socket(edge).await {
                                Ok(s) => {
                                    sockets.insert(index, s);
                                }
                                Err(e) => {
                                    error!(conn_index = index, error = %e, "cannot open UDP socket")
                                }
                            }
                        }
                    }
                    SupervisorEvent::Registered {
                        index,
                        link: _,
                        edge,
                        details,
                    } => {
                        info!(
                            conn_index = index,
                            connection = %details.uuid,
                            event = 0,
                            ip = %edge.ip(),
                            location = %details.location,
                            protocol = "quic",
                            "Registered tunnel connection"
                        );
                        metrics
                            .register_success
                            .with_label_values(&["registerConnection"])
                            .inc();
                        metrics.registered.notify_one();
                        metrics
                            .server_locations
                            .with_label_values(&[&index.to_string(), &details.location])
                            .set(1);
                    }
                    SupervisorEvent::RegistrationFailed { index, error } => {
                        let kind = if error.is_duplicate_connection() {
                            "dup_edge_conn"
                        } else {
                            "server_error"
                        };
                        metrics
                            .register_fail
                            .with_label_values(&[kind, "registerConnection"])
                            .inc();
                        error!(conn_index = index, cause = %error.cause, "Register tunnel error from server side");
                    }
                    SupervisorEvent::LinkClosed {
                        index,
                        link,
                        reason,
                        was_registered,
                    } => {
                        if was_registered && !sup_stopping(signals) {
                            warn!(conn_index = index, %link, %reason, "Connection terminated");
                        } else {
                            debug!(conn_index = index, %link, %reason, "connection attempt failed");
                        }
                        let gone: Vec<_> =
                            flows.keys().filter(|(l, _)| *l == link).copied().collect();
                        for key in gone {
                            if let Some(f) = flows.remove(&key) {
                                close_flow_metrics(&metrics, f.kind);
                            }
                        }
                    }
                    SupervisorEvent::Reconnecting { index, delay } => {
                        info!(conn_index = index, ?delay, "Retrying connection");
                    }
                    SupervisorEvent::FallbackUnavailable { index } => {
                        warn!(conn_index = index, "QUIC keeps failing and burrow has no http2 fallback yet; check that UDP to the edge port is allowed");
                    }
                    SupervisorEvent::ConfigurationOffered {
                        link,
                        stream,
                        version,
                        config,
                    } => {
                        let ingress = ingress.clone();
                        let result = versions.offer(version, || {
                            let (remote, new) =
                                RemoteConfig::from_json(&config).map_err(|e| e.to_string())?;
                            if let Ok(mut w) = ingress.write() {
                                *w = Arc::new(new);
                            }
                            sup.apply_warp_routing(&remote.warp_routing);
                            Ok(())
                        });
                        if result.error.is_none() {
                            metrics
                                .config_version
                                .set(i64::from(result.latest_applied_version));
                            info!(version, "Updated to new configuration");
                        } else {
                            warn!(version, error = ?result.error, "remote configuration refused");
                        }
                        if let Err(e) = sup.respond_configuration(now, link, stream, &result) {
                            warn!(%link, error = %e, "cannot answer the configuration push");
                        }
                    }
                    SupervisorEvent::LocalConfigurationFailed { index, reason } => {
                        warn!(conn_index = index, %reason, "Failed to update local configuration");
                    }
                    SupervisorEvent::Fatal(e) => fatal = Some(e),
                    SupervisorEvent::Stopped => {}
                }
            }
            metrics
                .ready
                .store(sup.ready_connections(), Ordering::Relaxed);
            while let Some((link, action)) = sup.poll_origin_action() {
                progress = true;
                on_action(
                    now, &mut sup, &dialer, &mut flows, &flow_tx, &metrics, link, action,
                );
            }
            // Datagrams the connections received, then the socket work they call for.
            let pings_before = datagrams.stats().pings_sent;
            if sup.drain_datagrams(now, |e| datagrams.egress(e)) > 0 {
                progress = true;
            }
            while let Some(action) = sup.poll_datagram_action(now) {
                progress = true;
                let outcome = datagrams.act(action);
                DatagramSockets::report(&mut sup, now, outcome);
            }
            datagrams.flush_deferred();
            metrics
                .icmp_total_requests
                .inc_by(datagrams.stats().pings_sent - pings_before);
            let segments = max_segments(&sockets);
            while let Some((index, t)) = sup.poll_transmit(now, segments, &mut buf) {
                progress = true;
                if let Some(s) = sockets.get(&index) {
                    // Non-blocking: a full socket buffer drops the datagrams, which QUIC's loss
                    // recovery handles like any other loss.
                    if let Err(e) = s.try_send(&t, &buf) {
                        if e.kind() != std::io::ErrorKind::WouldBlock {
                            debug!(conn_index = index, error = %e, "send failed");
                        }
                    }
                }
            }
            if !progress {
                break;
            }
        }
        metrics.update_datagrams(sup.datagram_hub(), &datagrams);
        metrics.update_flows(sup.flow_limiter());
        if sup.is_stopped() {
            break;
        }
        let deadline = sup.poll_timeout();
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            index = readable(&sockets, last_read) => {
                let now = Instant::now();
                last_read = index;
                if let Some(s) = sockets.get(&index) {
                    let got = s.read_round(&mut recv_bufs, |r| sup.handle_received(now, index, r));
                    if let Err(e) = got {
                        debug!(conn_index = index, error = %e, "UDP receive error");
                    }
                }
            }
            Some(event) = socket_rx.recv() => {
                let now = Instant::now();
                on_socket_event(now, &mut sup, &mut datagrams, &metrics, event);
                // A bounded batch, so timers and the edge's packets are not starved.
                for _ in 0..256 {
                    let Ok(event) = socket_rx.try_recv() else { break };
                    on_socket_event(now, &mut sup, &mut datagrams, &metrics, event);
                }
            }
            Some(report) = flow_rx.recv() => {
                let now = Instant::now();
                on_report(now, &mut sup, &mut flows, &metrics, report);
                while let Ok(report) = flow_rx.try_recv() {
                    on_report(now, &mut sup, &mut flows, &metrics, report);
                }
            }
            () = sleep => {
                sup.handle_timeout(Instant::now());
            }
            Some(()) = shutdown.recv() => {
                signals += 1;
                if signals == 1 {
                    info!(grace_period = ?opts.grace_period, "Initiating graceful shutdown due to signal");
                } else {
                    info!("second signal: exiting now");
                }
                sup.shutdown(Instant::now());
            }
        }
    }
    // Flush the CONNECTION_CLOSEs of an immediate stop.
    let now = Instant::now();
    let segments = max_segments(&sockets);
    while let Some((index, t)) = sup.poll_transmit(now, segments, &mut buf) {
        if let Some(s) = sockets.get(&index) {
            let _ = s.try_send(&t, &buf);
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

/// Whether a shutdown was asked (closing connections are then expected).
fn sup_stopping(signals: u32) -> bool {
    signals > 0
}

async fn open_socket(edge: SocketAddr) -> std::io::Result<QuicSocket> {
    let bind: SocketAddr = if edge.is_ipv4() {
        "0.0.0.0:0".parse().expect("static")
    } else {
        "[::]:0".parse().expect("static")
    };
    QuicSocket::bind(bind).await
}

/// The fewest datagrams every socket can send in one transmit: the supervisor picks the
/// socket only after building the batch.
fn max_segments(sockets: &HashMap<u8, QuicSocket>) -> usize {
    sockets
        .values()
        .map(QuicSocket::max_transmit_segments)
        .min()
        .unwrap_or(1)
}

/// Resolves with the index of a socket that has datagrams to read, looking first at the
/// indexes after `last` so a busy socket does not starve the others; pending while there is
/// none (or no socket).
async fn readable(sockets: &HashMap<u8, QuicSocket>, last: u8) -> u8 {
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

/// What an origin UDP socket or a ping socket read goes to the supervisor.
fn on_socket_event(
    now: Instant,
    sup: &mut Supervisor,
    sockets: &mut DatagramSockets,
    metrics: &Metrics,
    event: SocketEvent,
) {
    match event {
        SocketEvent::UdpRead { flow, mut buf, len } => {
            // A read that raced the socket's close is dropped.
            if sockets.has_udp(flow) {
                sup.udp_origin_read(now, flow, &mut buf, len);
            }
        }
        SocketEvent::UdpFailed { flow, reason } => {
            if sockets.remove_udp(flow) {
                sup.handle_udp_failed(flow, &reason);
            }
        }
        SocketEvent::PingRead {
            funnel,
            from,
            message,
        } => {
            if sockets.has_funnel(funnel) {
                let before = sup.datagram_hub().stats().datagrams_out;
                sup.ping_reply(now, funnel, from, &message);
                metrics
                    .icmp_total_replies
                    .inc_by(sup.datagram_hub().stats().datagrams_out - before);
            }
        }
        SocketEvent::FunnelFailed { funnel, reason } => {
            if sockets.remove_funnel(funnel) {
                debug!(%funnel, %reason, "ping socket failed");
                sup.handle_funnel_failed(funnel);
            }
        }
    }
}

fn close_flow_metrics(metrics: &Metrics, kind: FlowKind) {
    metrics.concurrent_requests.dec();
    metrics.open_flows.fetch_sub(1, Ordering::Relaxed);
    if kind == FlowKind::Tcp {
        metrics.tcp_active.dec();
    }
}

#[allow(clippy::too_many_arguments)]
fn on_action(
    now: Instant,
    sup: &mut Supervisor,
    dialer: &Dialer,
    flows: &mut HashMap<(LinkId, FlowId), Flow>,
    flow_tx: &mpsc::UnboundedSender<Report>,
    metrics: &Metrics,
    link: LinkId,
    action: OriginAction,
) {
    match action {
        OriginAction::Open {
            flow,
            kind,
            dest,
            origin,
            ..
        } => {
            debug!(%link, %flow, ?kind, %dest, "opening origin connection");
            metrics.total_requests.inc();
            metrics.concurrent_requests.inc();
            metrics.open_flows.fetch_add(1, Ordering::Relaxed);
            if kind == FlowKind::Tcp {
                metrics.tcp_active.inc();
                metrics.tcp_total.inc();
            }
            let handle = dialer.open(link, flow, kind, dest, origin, flow_tx.clone());
            flows.insert(
                (link, flow),
                Flow {
                    handle,
                    pending: None,
                    kind,
                },
            );
        }
        OriginAction::Write { flow, data } => {
            if let Some(f) = flows.get(&(link, flow)) {
                f.handle.write(data);
            }
        }
        OriginAction::Resume { flow } => {
            if let Some(f) = flows.get_mut(&(link, flow)) {
                if let Some(rest) = f.pending.take() {
                    let n = sup.handle_flow_data(now, link, flow, &rest);
                    if n < rest.len() {
                        f.pending = Some(rest.slice(n..));
                        return;
                    }
                }
                f.handle.read_more();
            }
        }
        OriginAction::ShutdownWrite { flow } => {
            if let Some(f) = flows.get(&(link, flow)) {
                f.handle.shutdown_write();
            }
        }
        OriginAction::Close { flow } => {
            if let Some(f) = flows.remove(&(link, flow)) {
                close_flow_metrics(metrics, f.kind);
            }
        }
    }
}

fn on_report(
    now: Instant,
    sup: &mut Supervisor,
    flows: &mut HashMap<(LinkId, FlowId), Flow>,
    metrics: &Metrics,
    (link, flow, report): Report,
) {
    let Some(f) = flows.get_mut(&(link, flow)) else {
        return;
    };
    match report {
        FlowReport::Connected => sup.handle_flow_connected(now, link, flow),
        FlowReport::Failed(reason) => {
            metrics.request_errors.inc();
            sup.handle_flow_failed(now, link, flow, &reason);
        }
        FlowReport::Data(bytes) => {
            let n = sup.handle_flow_data(now, link, flow, &bytes);
            if n < bytes.len() {
                f.pending = Some(bytes.slice(n..));
            } else {
                f.handle.read_more();
            }
        }
        FlowReport::Finished => sup.handle_flow_finished(now, link, flow),
        FlowReport::Written => sup.handle_flow_written(now, link, flow),
    }
}
