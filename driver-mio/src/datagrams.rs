//! The datagram sockets of the loop: one connected UDP socket per UDP session, one
//! unprivileged ping socket per ICMP funnel. What to open, send and close is the connector's
//! work; what they read goes straight back into it, framed in place in a reused buffer.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket as StdUdpSocket};

use burrow_core::connector::{Connector, Input};
use burrow_core::icmp::{FunnelId, RouterConfig};
use burrow_core::session::{UdpFlowId, HEADROOM, ORIGIN_READ, TAILROOM};
use bytes::BytesMut;
use mio::net::UdpSocket;
use mio::{Interest, Registry, Token};
use socket2::{Domain, Protocol, Socket, Type};
use tracing::{debug, info, warn};

/// Room for one origin read with the framing around it.
const SLOT: usize = HEADROOM + ORIGIN_READ + TAILROOM;
/// Reads the shared buffer holds before a fresh one is taken (when what was split off it is
/// still queued in quinn) or it is reclaimed.
const SLOTS_PER_BUFFER: usize = 2;
/// Largest ICMP message read from a ping socket (cloudflared's 1500-byte buffer).
const PING_READ: usize = 1500;
/// Reads per socket per readiness event: a flooding origin does not starve the rest; the
/// loop comes back to a socket that hit the bound.
pub const READS_PER_EVENT: usize = 64;

/// Counters of the socket side.
#[derive(Debug, Default, Clone)]
pub struct SocketStats {
    /// Echo requests sent through ping sockets.
    pub pings_sent: u64,
}

/// Every origin UDP socket and ping socket.
pub struct Datagrams {
    udp: HashMap<UdpFlowId, (UdpSocket, Token)>,
    funnels: HashMap<FunnelId, (UdpSocket, Token)>,
    buf: BytesMut,
    ping_buf: Vec<u8>,
    /// Counters.
    pub stats: SocketStats,
}

/// How a socket read round ended.
pub enum Round {
    /// Drained: wait for the next event.
    Drained,
    /// Hit the bound: read again soon.
    More,
    /// Failed and closed; its token is free.
    Failed(Token),
}

impl Datagrams {
    /// No sockets.
    pub fn new() -> Self {
        Self {
            udp: HashMap::new(),
            funnels: HashMap::new(),
            buf: BytesMut::new(),
            ping_buf: vec![0; PING_READ],
            stats: SocketStats::default(),
        }
    }

    /// Opens the connected socket of `flow` (cloudflared's `DialUDP`: UDP connect only sets
    /// the peer, it does not block) under `token`.
    pub fn open_udp(
        &mut self,
        registry: &Registry,
        token: Token,
        flow: UdpFlowId,
        dest: SocketAddr,
    ) -> io::Result<()> {
        let bind = if dest.is_ipv4() {
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
        } else {
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
        };
        let mut socket = UdpSocket::bind(bind)?;
        socket.connect(dest)?;
        registry.register(&mut socket, token, Interest::READABLE)?;
        self.udp.insert(flow, (socket, token));
        Ok(())
    }

    /// Writes one datagram; a socket that cannot take it now drops it, as UDP does.
    pub fn send_udp(&mut self, flow: UdpFlowId, payload: &[u8]) {
        if let Some((s, _)) = self.udp.get(&flow) {
            if let Err(e) = s.send(payload) {
                if e.kind() != io::ErrorKind::WouldBlock {
                    debug!(%flow, error = %e, "origin UDP write failed");
                }
            }
        }
    }

    /// Closes the socket of `flow`; its token is free again.
    pub fn close_udp(&mut self, registry: &Registry, flow: UdpFlowId) -> Option<Token> {
        let (mut s, token) = self.udp.remove(&flow)?;
        let _ = registry.deregister(&mut s);
        Some(token)
    }

    /// Reads the socket of `flow` into the connector.
    pub fn read_udp(
        &mut self,
        registry: &Registry,
        now: std::time::Instant,
        machine: &mut Connector,
        flow: UdpFlowId,
    ) -> Round {
        for _ in 0..READS_PER_EVENT {
            let Some((s, _)) = self.udp.get(&flow) else {
                return Round::Drained;
            };
            if self.buf.capacity() < SLOT {
                // Reclaims the buffer once what was split off it is gone.
                self.buf.reserve(SLOTS_PER_BUFFER * SLOT);
            }
            self.buf.resize(SLOT, 0);
            match s.recv(&mut self.buf[HEADROOM..HEADROOM + ORIGIN_READ]) {
                Ok(len) => {
                    let mut chunk = self.buf.split_to(SLOT);
                    let buf = &mut chunk;
                    machine.handle_input(now, Input::UdpRead { flow, buf, len });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Round::Drained,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let reason = e.to_string();
                    machine.handle_input(
                        now,
                        Input::UdpFailed {
                            flow,
                            reason: &reason,
                        },
                    );
                    return match self.close_udp(registry, flow) {
                        Some(t) => Round::Failed(t),
                        None => Round::Drained,
                    };
                }
            }
        }
        Round::More
    }

    /// Opens the ping socket of `funnel` bound to `bind`.
    pub fn open_funnel(
        &mut self,
        registry: &Registry,
        token: Token,
        funnel: FunnelId,
        bind: IpAddr,
    ) -> io::Result<()> {
        let mut socket = UdpSocket::from_std(open_ping(bind)?);
        registry.register(&mut socket, token, Interest::READABLE)?;
        self.funnels.insert(funnel, (socket, token));
        Ok(())
    }

    /// Sends an ICMP echo request through the ping socket of `funnel`.
    pub fn send_ping(&mut self, funnel: FunnelId, dst: IpAddr, message: &[u8]) {
        let Some((s, _)) = self.funnels.get(&funnel) else {
            return;
        };
        match s.send_to(message, SocketAddr::new(dst, 0)) {
            Ok(_) => self.stats.pings_sent += 1,
            Err(e) => debug!(%funnel, %dst, error = %e, "failed to send ICMP echo"),
        }
    }

    /// Closes the ping socket of `funnel`; its token is free again.
    pub fn close_funnel(&mut self, registry: &Registry, funnel: FunnelId) -> Option<Token> {
        let (mut s, token) = self.funnels.remove(&funnel)?;
        let _ = registry.deregister(&mut s);
        Some(token)
    }

    /// Reads the ping socket of `funnel` into the connector.
    pub fn read_ping(
        &mut self,
        registry: &Registry,
        now: std::time::Instant,
        machine: &mut Connector,
        funnel: FunnelId,
    ) -> Round {
        for _ in 0..READS_PER_EVENT {
            let Some((s, _)) = self.funnels.get(&funnel) else {
                return Round::Drained;
            };
            match s.recv_from(&mut self.ping_buf) {
                Ok((n, from)) => {
                    let message = &self.ping_buf[..n];
                    let input = Input::PingRead {
                        funnel,
                        from: from.ip(),
                        message,
                    };
                    machine.handle_input(now, input);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Round::Drained,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!(%funnel, error = %e, "ping socket failed");
                    machine.handle_input(now, Input::FunnelFailed(funnel));
                    return match self.close_funnel(registry, funnel) {
                        Some(t) => Round::Failed(t),
                        None => Round::Drained,
                    };
                }
            }
        }
        Round::More
    }
}

/// An unprivileged ping socket (`SOCK_DGRAM`, `IPPROTO_ICMP`/`IPPROTO_ICMPV6`) bound to
/// `bind`: the kernel sets the echo ident and, for ICMPv6, the checksum, and hands back only
/// the replies to that ident, without IP header.
pub fn open_ping(bind: IpAddr) -> io::Result<StdUdpSocket> {
    let (domain, protocol) = match bind {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6),
    };
    let socket = Socket::new(domain, Type::DGRAM, Some(protocol))?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::new(bind, 0).into())?;
    Ok(socket.into())
}

/// `--icmpv4-src` / `--icmpv6-src`, or `None` to find them as cloudflared does.
#[derive(Debug, Clone, Copy, Default)]
pub struct IcmpSources {
    /// IPv4 source and ping-socket bind address.
    pub v4: Option<Ipv4Addr>,
    /// IPv6 source.
    pub v6: Option<Ipv6Addr>,
}

/// The local address the kernel would send to `probe` from. A UDP connect only picks a
/// route; nothing is sent.
fn outbound_ip(probe: SocketAddr) -> io::Result<IpAddr> {
    let bind = if probe.is_ipv4() {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
    };
    let socket = StdUdpSocket::bind(bind)?;
    socket.connect(probe)?;
    Ok(socket.local_addr()?.ip())
}

/// cloudflared's warning when the process may not open ping sockets (`ingress/icmp_linux.go`).
const PING_GROUP_WARNING: &str = "The user running burrow has a GID (group ID) that is not within net.ipv4.ping_group_range. You might need to add that user to a group within that range, or instead update the range to encompass a group the user is already in by modifying /proc/sys/net/ipv4/ping_group_range (sysctl -w net.ipv4.ping_group_range=\"GID GID\"). Otherwise burrow will not be able to ping this network";

/// The ICMP router's configuration: sources given or found (cloudflared: the address used
/// towards `192.168.0.1:53` for IPv4, falling back here to loopback; for IPv6 the address
/// used towards a public IPv6 address, falling back to `::1`), each family kept only if a ping
/// socket can be opened on it. A refused permission is warned about once.
pub fn icmp_config(given: IcmpSources) -> RouterConfig {
    let v4 = given.v4.unwrap_or_else(|| {
        match outbound_ip(SocketAddr::from(([192, 168, 0, 1], 53))) {
            Ok(IpAddr::V4(a)) => a,
            other => {
                debug!(result = ?other, "Failed to determine the IPv4 for this machine. It will use {} to send/listen for ICMPv4 echo", Ipv4Addr::LOCALHOST);
                Ipv4Addr::LOCALHOST
            }
        }
    });
    let v6 = given.v6.unwrap_or_else(|| {
        let public = SocketAddr::from(([0x2606, 0x4700, 0x4700, 0, 0, 0, 0, 0x1111], 53));
        match outbound_ip(public) {
            Ok(IpAddr::V6(a)) => a,
            other => {
                debug!(result = ?other, "Failed to determine the IPv6 for this machine. It will use {} to send/listen for ICMPv6 echo", Ipv6Addr::LOCALHOST);
                Ipv6Addr::LOCALHOST
            }
        }
    });
    let mut warned = false;
    let mut usable = |addr: IpAddr| match open_ping(addr) {
        Ok(_) => true,
        Err(e) => {
            if e.kind() == io::ErrorKind::PermissionDenied && !warned {
                warned = true;
                warn!(error = %e, "{PING_GROUP_WARNING}");
            } else {
                info!(source = %addr, error = %e, "cannot open a ping socket; ICMP of this family is not proxied");
            }
            false
        }
    };
    let v4 = usable(IpAddr::V4(v4)).then_some(v4);
    let v6 = usable(IpAddr::V6(v6)).then_some(v6);
    match (v4, v6) {
        (None, None) => warn!("ICMP proxy feature is disabled"),
        _ => {
            if let Some(a) = v4 {
                info!("ICMP proxy will use {a} as source for IPv4");
            }
            if let Some(a) = v6 {
                info!("ICMP proxy will use {a} as source for IPv6");
            }
        }
    }
    RouterConfig::new(v4, v6)
}

/// Raises the soft limit of open files to the hard limit: every UDP session and every ping
/// funnel holds a socket (10k sessions, 10k descriptors).
pub fn raise_nofile_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            debug!(error = %e, soft = ?limit.current, hard = ?limit.maximum, "cannot raise the open file limit");
        }
    }
    let now = getrlimit(Resource::Nofile);
    debug!(soft = ?now.current, hard = ?now.maximum, "open file limit");
}
