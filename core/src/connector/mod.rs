//! The connector: cloudflared's side of a tunnel (HA connections, origin flows, UDP sessions,
//! ICMP) as one sans-IO machine in str0m's shape.
//!
//! The driver feeds one [`Input`] with [`Connector::handle_input`], then drains
//! [`Connector::poll_output`] until it says [`Output::Timeout`], then waits for I/O or the
//! deadline. Everything comes out of that one call in the order it must happen: the socket a
//! connection sends from before its first transmit, a funnel's ping socket before its first
//! echo, a flow's close after its last write. The driver does the I/O and nothing else.
//!
//! Transmits are written into the connector's own buffer and lent out ([`Output::Transmit`]):
//! a GSO batch of up to `max_segments` datagrams goes to the socket as it is, with no copy.
//! Datagrams for origin sockets are lent the same way, borrowed from the QUIC datagram they
//! came in (UDP payloads) or from the ICMP router's buffer (echo requests). An [`Output`]
//! borrows the connector until the next call, which is how the driver loop uses it anyway.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::datagram::LinkId;
use crate::flow::FlowStats;
use crate::icmp::{FunnelId, RouterAction};
use crate::ingress::access::KeyFetcher;
use crate::ingress::Origin;
use crate::session::{SessionAction, UdpFlowId};
use crate::stream::proxy::FlowKind;
use crate::tunnel::connector::ConnectorConnection;
use crate::tunnel::data::{FlowId, OriginAction};
use crate::tunnel::protocol::Protocol;
use crate::tunnel::supervisor::{EdgePool, Supervisor, SupervisorConfig};
use crate::tunnel::udp::{DatagramHub, Egress, HubAction};
use crate::tunnel::{Received, Transmit};
use crate::virtual_dns::LocalResolver;

pub use crate::tunnel::supervisor::SupervisorEvent as Event;

// The machine holds plain single-owner state (no `Rc`, no cells): a driver may move it to
// another thread.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Connector>();
};

/// TCP keepalive period on an HTTP/2 link's edge connection. cloudflared dials the edge with a
/// zero `net.Dialer{}` (edgediscovery/dial.go), whose `KeepAlive` of zero means Go's default:
/// first probe after 15 s idle, then every 15 s (net/dial.go `defaultTCPKeepAlive`).
pub const EDGE_TCP_KEEPALIVE: Duration = Duration::from_secs(15);

/// The reason an edge dial failed, in cloudflared's words (`DialContext error: ...`), for
/// [`Input::EdgeFailed`] and the QUIC dial failures both drivers report.
pub fn dial_failure(err: &dyn std::fmt::Display) -> String {
    format!("DialContext error: {err}")
}

/// Something that happened outside the connector: a socket read, an origin task's progress,
/// the timer, a signal.
#[derive(Debug)]
pub enum Input<'a> {
    /// The deadline of the last [`Output::Timeout`] passed (early calls are harmless).
    Timeout,
    /// Graceful shutdown; a second one closes everything at once.
    Shutdown,
    /// The socket [`Io::EdgeSocket`] asked for is ready; it sends GSO batches of up to
    /// `max_segments` datagrams.
    EdgeSocket {
        /// HA index.
        index: u8,
        /// Datagrams per transmit the socket takes (1 without GSO).
        max_segments: usize,
    },
    /// UDP datagrams arrived on the edge socket of HA index `index`.
    Received {
        /// HA index.
        index: u8,
        /// One datagram or a GRO batch.
        received: Received<'a>,
    },
    /// The origin of a TLS flow is connected and its TLS handshake begins: the handshake has
    /// a deadline of its own (`tlsTimeout`).
    FlowHandshaking {
        /// The connection attempt it belongs to.
        link: LinkId,
        /// Which flow.
        flow: FlowId,
    },
    /// The connected flow's in-process origin (a `socks-proxy` rule's SOCKS5 server) began
    /// dialling the destination its client named. The connector gives that dial the rule's
    /// `connectTimeout` and, past it, says [`Io::AbortDial`].
    FlowDialing {
        /// The connection attempt it belongs to.
        link: LinkId,
        /// Which flow.
        flow: FlowId,
    },
    /// The destination dial of [`Input::FlowDialing`] ended, connected or failed.
    FlowDialed {
        /// The connection attempt it belongs to.
        link: LinkId,
        /// Which flow.
        flow: FlowId,
    },
    /// The origin's TLS handshake chose HTTP/2 (`http2Origin`): the flow is core's
    /// [`crate::http2::origin::Http2Origin`] bridge from now on. Say it before
    /// [`Input::FlowConnected`], so that requests are framed for the bridge.
    FlowHttp2 {
        /// The connection attempt it belongs to.
        link: LinkId,
        /// Which flow.
        flow: FlowId,
    },
    /// The origin connection of a flow is up ([`Io::OpenFlow`]), TLS included.
    FlowConnected {
        /// The connection attempt it belongs to.
        link: LinkId,
        /// Which flow.
        flow: FlowId,
    },
    /// The origin connection of a flow could not be opened, or broke. The connector answers
    /// the request as a failed dial and closes the flow ([`Io::CloseFlow`]).
    FlowFailed {
        /// The connection attempt it belongs to.
        link: LinkId,
        /// Which flow.
        flow: FlowId,
        /// The I/O error, in words (it goes into the HTTP 502 cloudflared answers).
        reason: &'a str,
    },
    /// The origin sent bytes. The driver reads the flow again after [`Io::ReadFlow`].
    FlowData {
        /// The connection attempt it belongs to.
        link: LinkId,
        /// Which flow.
        flow: FlowId,
        /// What was read; the connector keeps what the edge cannot take yet.
        data: Bytes,
    },
    /// The origin closed its side of a flow.
    FlowFinished {
        /// The connection attempt it belongs to.
        link: LinkId,
        /// Which flow.
        flow: FlowId,
    },
    /// The last [`Io::WriteFlow`] of a flow completed.
    FlowWritten {
        /// The connection attempt it belongs to.
        link: LinkId,
        /// Which flow.
        flow: FlowId,
    },
    /// The origin socket of a UDP session is open ([`Io::OpenUdp`]).
    UdpOpened(UdpFlowId),
    /// The origin socket of a UDP session could not be opened, or failed for good.
    UdpFailed {
        /// The session's socket.
        flow: UdpFlowId,
        /// The socket error, in words.
        reason: &'a str,
    },
    /// The origin socket of a UDP session did not take an [`Io::SendUdp`] payload (an error,
    /// or a full buffer): counted as dropped on its connection.
    UdpWriteFailed(UdpFlowId),
    /// The origin socket of a UDP session read `len` bytes into `buf[HEADROOM..]`
    /// ([`crate::session::HEADROOM`]); `buf` has [`crate::session::TAILROOM`] more after them.
    /// The datagram is framed in place and split off `buf` without a copy.
    UdpRead {
        /// The session's socket.
        flow: UdpFlowId,
        /// The read buffer.
        buf: &'a mut BytesMut,
        /// Bytes read.
        len: usize,
    },
    /// A funnel's ping socket read an ICMP message (no IP header).
    PingRead {
        /// The funnel.
        funnel: FunnelId,
        /// Who answered.
        from: IpAddr,
        /// ICMP header and body.
        message: &'a [u8],
    },
    /// A funnel's ping socket could not be opened, or reading it failed.
    FunnelFailed(FunnelId),
    /// A funnel's ping socket did not take an [`Io::SendPing`]: counted as an ICMP drop on
    /// its connection.
    PingWriteFailed(FunnelId),
    /// The TCP connection [`Io::DialEdge`] asked for is up, from local address `local`.
    EdgeConnected {
        /// The HTTP/2 connection it carries.
        link: LinkId,
        /// The socket's local address (sent to the edge as `originLocalIp`).
        local: IpAddr,
    },
    /// An HTTP/2 link's TCP connection could not be made, or failed.
    EdgeFailed {
        /// Which connection.
        link: LinkId,
        /// The I/O error, in words.
        reason: &'a str,
    },
    /// Bytes read from an HTTP/2 link's TCP connection; empty when the edge closed it. Read
    /// again only while [`Connector::edge_wants_read`] says so.
    EdgeReceived {
        /// Which connection.
        link: LinkId,
        /// What was read.
        data: &'a [u8],
    },
    /// The last [`Io::WriteEdge`] of a link is written.
    EdgeWritten {
        /// Which connection.
        link: LinkId,
    },
    /// The answer to [`Io::FetchAccessKeys`]: the body of a 200, or why there is none.
    AccessKeysFetched {
        /// The URL fetched.
        url: &'a str,
        /// The response body, or the failure in words.
        body: Result<&'a [u8], &'a str>,
        /// The wall clock now, in Unix seconds (tokens' expiry is checked against it).
        unix: f64,
    },
    /// The answer to [`Io::FindLocalResolver`]: the system's resolv.conf if the lookup
    /// succeeded, none if it failed (or the file could not be read).
    LocalResolver {
        /// /etc/resolv.conf's text.
        resolv_conf: Option<&'a str>,
    },
    /// The answer to [`Io::LookupTxt`].
    TxtRecord {
        /// The name looked up.
        name: &'a str,
        /// Its first TXT record, strings joined; none if the lookup failed.
        text: Option<&'a str>,
    },
}

/// I/O the driver must do now.
#[derive(Debug, PartialEq, Eq)]
pub enum Io<'a> {
    /// Have a UDP socket of `edge`'s address family for HA index `index` (keep the one it has
    /// if the family matches, as cloudflared reuses the local port per index), then answer
    /// [`Input::EdgeSocket`].
    EdgeSocket {
        /// HA index.
        index: u8,
        /// The edge address its connection dials.
        edge: SocketAddr,
    },
    /// Open an origin connection; answer [`Input::FlowConnected`] or [`Input::FlowFailed`]
    /// ([`Input::FlowHandshaking`] between connect and TLS). No deadline of the driver's: the
    /// connector fails a dial that takes longer than the rule's `connectTimeout` (then
    /// `tlsTimeout`) as a failed dial fails, and closes it ([`Io::CloseFlow`]).
    OpenFlow {
        /// The connection attempt it belongs to.
        link: LinkId,
        /// The flow's id from now on.
        flow: FlowId,
        /// Its kind.
        kind: FlowKind,
        /// `ConnectRequest.dest`: URL or path (HTTP, WebSocket), `ip:port` (TCP).
        dest: String,
        /// The request's `Host` (HTTP, WebSocket): see [`Origin::tls_server_name`].
        host: Option<String>,
        /// The origin the request's ingress rule resolved to: dial this, never re-match
        /// (HTTP, WebSocket when there are rules).
        origin: Option<Arc<Origin>>,
    },
    /// Write all of `data` to the flow's origin, then answer [`Input::FlowWritten`]. At most
    /// one write per flow is outstanding.
    WriteFlow {
        /// The connection attempt it belongs to.
        link: LinkId,
        /// Which flow.
        flow: FlowId,
        /// What to write.
        data: Bytes,
    },
    /// Read the flow's origin once more ([`Input::FlowData`]).
    ReadFlow {
        /// The connection attempt it belongs to.
        link: LinkId,
        /// Which flow.
        flow: FlowId,
    },
    /// FIN toward the origin after the outstanding write; keep reading it.
    ShutdownFlow {
        /// The connection attempt it belongs to.
        link: LinkId,
        /// Which flow.
        flow: FlowId,
    },
    /// Close the origin connection and forget the flow.
    CloseFlow {
        /// The connection attempt it belongs to.
        link: LinkId,
        /// Which flow.
        flow: FlowId,
    },
    /// The destination dial of [`Input::FlowDialing`] outlasted the rule's `connectTimeout`:
    /// drop it and fail it as a dial that timed out (the SOCKS5 client is answered "host
    /// unreachable"); the flow stays. No answer; stale ones (the dial ended) are ignored.
    AbortDial {
        /// The connection attempt it belongs to.
        link: LinkId,
        /// Which flow.
        flow: FlowId,
    },
    /// Open a connected UDP socket to `dest` for a session; answer [`Input::UdpOpened`] or
    /// [`Input::UdpFailed`], then feed its reads as [`Input::UdpRead`].
    OpenUdp {
        /// The session's socket.
        flow: UdpFlowId,
        /// The origin.
        dest: SocketAddr,
    },
    /// Write one datagram on a session's socket (a full socket drops it, as UDP does); a
    /// payload not written is answered [`Input::UdpWriteFailed`].
    SendUdp {
        /// The session's socket.
        flow: UdpFlowId,
        /// The payload.
        payload: &'a [u8],
    },
    /// Close a session's socket.
    CloseUdp {
        /// The session's socket.
        flow: UdpFlowId,
    },
    /// Open an unprivileged ping socket bound to `bind` for a funnel; feed its reads as
    /// [`Input::PingRead`], its failure as [`Input::FunnelFailed`].
    OpenFunnel {
        /// The funnel.
        funnel: FunnelId,
        /// Local address.
        bind: IpAddr,
    },
    /// Send an ICMP echo request through a funnel's ping socket; a failed send is answered
    /// [`Input::PingWriteFailed`].
    SendPing {
        /// The funnel.
        funnel: FunnelId,
        /// Destination.
        dst: IpAddr,
        /// ICMP header and body (the kernel sets ident and checksum).
        message: &'a [u8],
        /// The decremented TTL, should the driver want to apply it.
        ttl: u8,
    },
    /// Close a funnel's ping socket.
    CloseFunnel {
        /// The funnel.
        funnel: FunnelId,
    },
    /// Open a TCP connection to `edge` for an HTTP/2 link; answer [`Input::EdgeConnected`] or
    /// [`Input::EdgeFailed`]. (The link's handshake deadline covers the dial.)
    DialEdge {
        /// HA index.
        index: u8,
        /// The connection it carries.
        link: LinkId,
        /// Edge address.
        edge: SocketAddr,
        /// TCP keepalive on the connection: first probe after this much idle time, then one
        /// every period. It is what notices a dead edge on an idle link whose reset was lost.
        keepalive: Duration,
    },
    /// Write all of `data` to the link's TCP connection, then answer [`Input::EdgeWritten`].
    /// At most one write per link is outstanding.
    WriteEdge {
        /// Which connection.
        link: LinkId,
        /// Ciphertext.
        data: &'a [u8],
    },
    /// Close the link's TCP connection (after the outstanding write).
    CloseEdge {
        /// Which connection.
        link: LinkId,
    },
    /// Look up the TXT record of `name` with the system's resolver and answer
    /// [`Input::TxtRecord`] (`auto` reading the protocol percentages again, hourly; the
    /// feature record that picks the datagram version, before connection 0 and hourly). Give up
    /// after `timeout`, all name servers together: the connector stops waiting then and
    /// counts the reading as failed (a later answer is ignored).
    LookupTxt {
        /// The DNS name.
        name: &'static str,
        /// How long the lookup may take ([`crate::tunnel::protocol::TXT_LOOKUP_TIMEOUT`]).
        timeout: Duration,
    },
    /// Look `host` up through the system's resolver (as any program on the box resolves a
    /// name) and answer [`Input::LocalResolver`]: with [`crate::virtual_dns::RESOLV_CONF`]'s
    /// text if it resolved to at least one address, whose
    /// first name server then becomes the virtual DNS service's resolver
    /// ([`crate::virtual_dns`]); with none if it did not. Every 5 minutes, unless
    /// `--dns-resolver-addrs` fixed the resolvers; an answer later than `timeout` is ignored.
    FindLocalResolver {
        /// The name ([`crate::virtual_dns::LOOKUP_HOST`]).
        host: &'static str,
        /// How long the lookup may take ([`crate::virtual_dns::LOOKUP_TIMEOUT`]).
        timeout: Duration,
    },
    /// GET `url` (a team's Access signing keys: `https`, at most 1 MiB, within 10 s) and answer
    /// [`Input::AccessKeysFetched`]. When and how often is the connector's business.
    FetchAccessKeys {
        /// The certs URL.
        url: String,
    },
}

/// What the driver must do next.
#[derive(Debug)]
pub enum Output<'a> {
    /// Send `data` (one datagram, or a GSO batch of `transmit.segment_size` datagrams) from the
    /// edge socket of HA index `index`.
    Transmit {
        /// HA index.
        index: u8,
        /// Destination, segment size, ECN.
        transmit: Transmit,
        /// The bytes, lent from the connector's buffer.
        data: &'a [u8],
    },
    /// Socket or origin work.
    Io(Io<'a>),
    /// Something happened (for logs, metrics, readiness).
    Event(Event),
    /// Nothing more to do until this time (`None`: until an input).
    Timeout(Option<Instant>),
}

/// Work or an event waiting its turn.
enum Queued {
    Io(Io<'static>),
    Event(Event),
}

/// The connector of one `tunnel run` process.
pub struct Connector {
    sup: Supervisor,
    queue: VecDeque<Queued>,
    /// Origin flows the driver holds, with bytes their connection could not take yet (the
    /// driver reads such a flow again only once they are taken).
    flows: HashMap<(LinkId, FlowId), Option<Bytes>>,
    /// GSO capacity of each edge socket.
    segments: BTreeMap<u8, usize>,
    /// One GSO batch.
    buf: Vec<u8>,
    /// A delayed session payload being lent out.
    lent: Bytes,
    /// HTTP/2 links whose TCP connection is open at the driver.
    tcp_links: HashSet<LinkId>,
    /// When to fetch the Access signing keys the rules need.
    keys: KeyFetcher,
    /// The virtual DNS service's resolver.
    dns: LocalResolver,
    /// What the edge said to each registration.
    registrations: crate::tunnel::registrations::RegistrationStats,
}

impl Connector {
    /// A connector over `pool`; `seed` drives every random choice (backoff jitter, address
    /// choice, quinn). Connection 0 starts at `now`.
    pub fn new(now: Instant, config: SupervisorConfig, pool: EdgePool, seed: u64) -> Self {
        let dns = match &config.dns_resolvers {
            Some(addrs) => LocalResolver::fixed(addrs),
            None => LocalResolver::discovered(now),
        };
        let mut sup = Supervisor::new(now, config, pool, seed);
        sup.set_dns_resolvers(dns.addrs());
        let mut keys = KeyFetcher::new();
        if let Some(ingress) = sup.ingress() {
            keys.set_urls(now, ingress.access_certs_urls());
        }
        Self {
            sup,
            keys,
            dns,
            queue: VecDeque::new(),
            flows: HashMap::new(),
            segments: BTreeMap::new(),
            // Room for a GSO batch of full-size datagrams.
            buf: Vec::with_capacity(64 * 1500),
            lent: Bytes::new(),
            tcp_links: HashSet::new(),
            registrations: Default::default(),
        }
    }

    /// HA connections this connector runs (after capping to the pool).
    pub fn ha_connections(&self) -> usize {
        self.sup.ha_connections()
    }

    /// Connections registered and serving now.
    pub fn ready_connections(&self) -> usize {
        self.sup.ready_connections()
    }

    /// True once everything is closed (after a shutdown or a fatal error).
    pub fn is_stopped(&self) -> bool {
        self.sup.is_stopped()
    }

    /// The current link of `index`, if it has a connection.
    pub fn link_of(&self, index: u8) -> Option<LinkId> {
        self.sup.link_of(index)
    }

    /// The ingress rules in force: the last configuration push's, else the local ones (none:
    /// requests go to origins as the edge sent them).
    pub fn ingress(&self) -> Option<&Arc<crate::ingress::Ingress>> {
        self.sup.ingress()
    }

    /// The datagram plane, for its counters.
    pub fn datagram_hub(&self) -> &DatagramHub {
        self.sup.datagram_hub()
    }

    /// What every proxied request came to, for cloudflared's request metrics.
    pub fn request_stats(&self) -> &crate::tunnel::requests::RequestStats {
        self.sup.request_stats()
    }

    /// Registrations accepted and refused, and each index's server locations, for
    /// cloudflared's registration metrics.
    pub fn registration_stats(&self) -> &crate::tunnel::registrations::RegistrationStats {
        &self.registrations
    }

    /// The process-wide flow figures (TCP flows and UDP sessions): limit, active, refused.
    pub fn flow_stats(&self) -> FlowStats {
        self.sup.flow_stats()
    }

    /// What the closed QUIC connections of HA index `index` counted (their counters summed,
    /// the last one's gauges), for cloudflared's `quic_client_*` families.
    pub fn closed_quic(&self, index: u8) -> Option<&crate::quic::client_metrics::IndexFigures> {
        self.sup.closed_quic(index)
    }

    /// The connection of HA index `index`, while it has one (for its counters).
    pub fn connection(&self, index: u8) -> Option<&ConnectorConnection> {
        self.sup.connection(index)
    }

    /// Drains [`Connector::poll_output`] into `io` until it says [`Output::Timeout`], feeding
    /// back at once the input `io` answers with (a socket opened, a flow connected); returns
    /// the deadline. The inner half of a driver loop that answers some I/O in place (the
    /// simulator, the tests).
    pub fn drain(
        &mut self,
        now: Instant,
        mut io: impl FnMut(Output<'_>) -> Option<Input<'static>>,
    ) -> Option<Instant> {
        loop {
            let answer = match self.poll_output(now) {
                Output::Timeout(deadline) => return deadline,
                out => io(out),
            };
            if let Some(input) = answer {
                self.handle_input(now, input);
            }
        }
    }

    /// Takes one input. Stale ones (a flow or link that is gone) are ignored.
    pub fn handle_input(&mut self, now: Instant, input: Input<'_>) {
        match input {
            Input::Timeout => {
                self.dns.handle_timeout(now);
                self.sup.handle_timeout(now);
            }
            Input::Shutdown => self.sup.shutdown(now),
            Input::EdgeSocket {
                index,
                max_segments,
            } => {
                self.segments.insert(index, max_segments.max(1));
            }
            Input::Received { index, received } => self.sup.handle_received(now, index, &received),
            Input::FlowHandshaking { link, flow } => {
                self.sup.handle_flow_handshaking(now, link, flow)
            }
            Input::FlowDialing { link, flow } => self.sup.handle_flow_dialing(now, link, flow),
            Input::FlowDialed { link, flow } => self.sup.handle_flow_dialed(now, link, flow),
            Input::FlowHttp2 { link, flow } => self.sup.handle_flow_http2(now, link, flow),
            Input::FlowConnected { link, flow } => self.sup.handle_flow_connected(now, link, flow),
            Input::FlowFailed { link, flow, reason } => {
                self.sup.handle_flow_failed(now, link, flow, reason)
            }
            Input::FlowData { link, flow, data } => {
                if self.flows.contains_key(&(link, flow)) {
                    self.feed(now, link, flow, data);
                }
            }
            Input::FlowFinished { link, flow } => self.sup.handle_flow_finished(now, link, flow),
            Input::FlowWritten { link, flow } => self.sup.handle_flow_written(now, link, flow),
            Input::UdpOpened(flow) => self.sup.handle_udp_opened(now, flow),
            Input::UdpFailed { flow, reason } => self.sup.handle_udp_failed(now, flow, reason),
            Input::UdpWriteFailed(flow) => self.sup.handle_udp_write_failed(flow),
            Input::UdpRead { flow, buf, len } => self.sup.udp_origin_read(now, flow, buf, len),
            Input::PingRead {
                funnel,
                from,
                message,
            } => self.sup.ping_reply(now, funnel, from, message),
            Input::FunnelFailed(funnel) => self.sup.handle_funnel_failed(funnel),
            Input::PingWriteFailed(funnel) => self.sup.handle_ping_write_failed(funnel),
            Input::EdgeConnected { link, local } => {
                self.sup.handle_edge_connected(now, link, local)
            }
            Input::EdgeFailed { link, reason } => self.sup.handle_edge_failed(now, link, reason),
            Input::EdgeReceived { link, data } => self.sup.handle_edge_bytes(now, link, data),
            Input::EdgeWritten { link } => self.sup.handle_edge_written(now, link),
            Input::AccessKeysFetched { url, body, unix } => {
                let result = self
                    .keys
                    .handle_fetched(now, url, body.map_err(str::to_owned));
                self.queue
                    .push_back(Queued::Event(Event::AccessKeysFetched {
                        url: url.to_owned(),
                        error: result.err(),
                    }));
                let keys = Arc::new(self.keys.snapshot(now, unix));
                self.sup
                    .change_data_limits(|l| l.access = Some(keys.clone()));
            }
            Input::TxtRecord { name, text } => self.sup.handle_txt_record(now, name, text),
            Input::LocalResolver { resolv_conf } => {
                if self.dns.looked_up(now, resolv_conf) {
                    self.sup.set_dns_resolvers(self.dns.addrs());
                }
            }
        }
    }

    /// Whether HTTP/2 link `link` still wants its TCP connection (a dial that completes after
    /// the link gave up is closed by the driver).
    pub fn has_edge_link(&self, link: LinkId) -> bool {
        self.tcp_links.contains(&link)
    }

    /// Whether the driver may read the TCP connection of HTTP/2 link `link` now (false while
    /// the link holds bytes it could not take yet: TCP then holds the edge back).
    pub fn edge_wants_read(&mut self, link: LinkId) -> bool {
        self.sup.edge_wants_read(link)
    }

    /// The next thing to do. Call until it returns [`Output::Timeout`].
    pub fn poll_output(&mut self, now: Instant) -> Output<'_> {
        loop {
            // Events and origin actions first: they open the sockets and flows the rest use.
            while let Some(e) = self.sup.poll_event() {
                self.on_event(now, e);
            }
            if let Some((link, action)) = self.sup.poll_origin_action() {
                self.on_origin_action(now, link, action);
                continue;
            }
            if let Some(q) = self.queue.pop_front() {
                return match q {
                    Queued::Io(io) => Output::Io(io),
                    Queued::Event(e) => Output::Event(e),
                };
            }
            if let Some(action) = self.sup.poll_datagram_action(now) {
                match self.datagram_io(action) {
                    Next::Io(io) => return Output::Io(io),
                    Next::Lent(flow) => return self.lent(flow),
                    Next::Skip => continue,
                }
            }
            if self.sup.pull_egress(now) {
                // The datagram may have asked for the socket it goes out of: that first.
                if let Some(action) = self.sup.poll_datagram_action(now) {
                    match self.datagram_io(action) {
                        Next::Io(io) => return Output::Io(io),
                        Next::Lent(flow) => return self.lent(flow),
                        Next::Skip => continue,
                    }
                }
                return match self.sup.take_egress() {
                    Some(Egress::Udp { flow, payload }) => {
                        Output::Io(Io::SendUdp { flow, payload })
                    }
                    Some(Egress::Ping {
                        funnel,
                        dst,
                        message,
                        ttl,
                    }) => Output::Io(Io::SendPing {
                        funnel,
                        dst,
                        message,
                        ttl,
                    }),
                    // Not reached (the pull held something); polling again costs nothing.
                    None => Output::Timeout(Some(now)),
                };
            }
            // The fewest datagrams every socket takes: the batch is built before its socket
            // is known.
            let segments = self.segments.values().copied().min().unwrap_or(1);
            if let Some((index, transmit)) = self.sup.poll_transmit(now, segments, &mut self.buf) {
                let size = transmit.size.min(self.buf.len());
                return Output::Transmit {
                    index,
                    transmit,
                    data: &self.buf[..size],
                };
            }
            if let Some(link) = self.sup.poll_edge_write(now) {
                let data = self.sup.edge_lent(link);
                return Output::Io(Io::WriteEdge { link, data });
            }
            if let Some(name) = self.sup.poll_lookup(now) {
                return Output::Io(Io::LookupTxt {
                    name,
                    timeout: crate::tunnel::protocol::TXT_LOOKUP_TIMEOUT,
                });
            }
            if let Some(url) = self.keys.poll_fetch(now) {
                return Output::Io(Io::FetchAccessKeys { url });
            }
            // A stopped connector has nothing to look up for.
            let running = !self.sup.is_stopped();
            if running && self.dns.poll_lookup(now) {
                return Output::Io(Io::FindLocalResolver {
                    host: crate::virtual_dns::LOOKUP_HOST,
                    timeout: crate::virtual_dns::LOOKUP_TIMEOUT,
                });
            }
            if self.sup.has_events() {
                continue;
            }
            let deadline = [
                self.sup.poll_timeout(),
                self.keys.poll_timeout(),
                self.dns.poll_timeout().filter(|_| running),
            ]
            .into_iter()
            .flatten()
            .min();
            return Output::Timeout(deadline);
        }
    }

    fn on_event(&mut self, now: Instant, e: Event) {
        self.registrations.on_event(&e);
        match &e {
            Event::ConfigurationApplied { .. } => {
                // The pushed rules may name other teams.
                if let Some(ingress) = self.sup.ingress() {
                    self.keys.set_urls(now, ingress.access_certs_urls());
                }
            }
            Event::Connecting {
                index,
                edge,
                link,
                protocol,
            } => {
                let io = match protocol {
                    Protocol::Quic => Io::EdgeSocket {
                        index: *index,
                        edge: *edge,
                    },
                    Protocol::Http2 => {
                        self.tcp_links.insert(*link);
                        Io::DialEdge {
                            index: *index,
                            link: *link,
                            edge: *edge,
                            keepalive: EDGE_TCP_KEEPALIVE,
                        }
                    }
                };
                self.queue.push_back(Queued::Io(io));
            }
            Event::LinkClosed { link, .. } => {
                // Its TCP connection, if it has one and it was not closed already.
                if self.tcp_links.remove(link) {
                    self.queue
                        .push_back(Queued::Io(Io::CloseEdge { link: *link }));
                }
                // Its origin connections go with it.
                let gone: Vec<_> = self
                    .flows
                    .keys()
                    .filter(|(l, _)| l == link)
                    .copied()
                    .collect();
                for (link, flow) in gone {
                    self.flows.remove(&(link, flow));
                    self.queue
                        .push_back(Queued::Io(Io::CloseFlow { link, flow }));
                }
            }
            _ => {}
        }
        self.queue.push_back(Queued::Event(e));
    }

    fn on_origin_action(&mut self, now: Instant, link: LinkId, action: OriginAction) {
        let io = match action {
            OriginAction::Open {
                flow,
                kind,
                dest,
                host,
                origin,
            } => {
                self.flows.insert((link, flow), None);
                Io::OpenFlow {
                    link,
                    flow,
                    kind,
                    dest,
                    host,
                    origin,
                }
            }
            OriginAction::Write { flow, data } => Io::WriteFlow { link, flow, data },
            OriginAction::Resume { flow } => {
                match self.flows.get_mut(&(link, flow)).map(Option::take) {
                    Some(Some(rest)) => self.feed(now, link, flow, rest),
                    Some(None) => self
                        .queue
                        .push_back(Queued::Io(Io::ReadFlow { link, flow })),
                    None => {}
                }
                return;
            }
            OriginAction::ShutdownWrite { flow } => Io::ShutdownFlow { link, flow },
            OriginAction::AbortDial { flow } => Io::AbortDial { link, flow },
            OriginAction::Close { flow } => {
                self.flows.remove(&(link, flow));
                Io::CloseFlow { link, flow }
            }
        };
        self.queue.push_back(Queued::Io(io));
    }

    /// Gives origin bytes to their connection; what it cannot take waits for its `Resume`,
    /// and the driver reads again only once all are taken.
    fn feed(&mut self, now: Instant, link: LinkId, flow: FlowId, data: Bytes) {
        let n = self.sup.handle_flow_data(now, link, flow, &data);
        let Some(pending) = self.flows.get_mut(&(link, flow)) else {
            return;
        };
        if n < data.len() {
            *pending = Some(data.slice(n..));
        } else {
            self.queue
                .push_back(Queued::Io(Io::ReadFlow { link, flow }));
        }
    }

    fn lent(&self, flow: UdpFlowId) -> Output<'_> {
        Output::Io(Io::SendUdp {
            flow,
            payload: &self.lent,
        })
    }

    fn datagram_io(&mut self, action: HubAction) -> Next {
        Next::Io(match action {
            HubAction::Session(SessionAction::Open { flow, dest }) => Io::OpenUdp { flow, dest },
            HubAction::Session(SessionAction::Send { flow, payload }) => {
                self.lent = payload;
                return Next::Lent(flow);
            }
            HubAction::Session(SessionAction::Close { flow }) => Io::CloseUdp { flow },
            HubAction::Icmp(RouterAction::OpenFunnel { funnel, bind }) => {
                Io::OpenFunnel { funnel, bind }
            }
            HubAction::Icmp(RouterAction::CloseFunnel { funnel }) => Io::CloseFunnel { funnel },
            // Connection work (registration answers, v2 RPCs) never leaves the supervisor.
            HubAction::Session(_) => return Next::Skip,
        })
    }
}

/// What a datagram action asks of the driver.
enum Next {
    Io(Io<'static>),
    /// Send the payload in `lent`.
    Lent(UdpFlowId),
    Skip,
}
