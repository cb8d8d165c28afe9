//! The operating-system pieces both drivers (burrow-tokio and burrow-mio) share, std-only so
//! each wraps the sockets in its own event loop's type: the edge sockets' local address,
//! origin UDP and ping sockets, the ICMP source probe, the open-file limit, [`host`] (seeds, the host's name and address), [`heap`]
//! (returning freed heap to the kernel), [`resident`] (start-up's pages given back), and the
//! I/O of core's settings: [`settings`] (files, the system certificate store), [`log`],
//! [`origin_tls`] (trust for HTTPS origins) and [`service`] (`service install`); and the
//! metric families both export alike ([`exposition`]); [`chunk_buf`], the read buffer whose
//! chunks go on to QUIC without a copy; and [`quic_udp`], the QUIC sockets' batch sizes.

pub mod chunk_buf;
pub mod events;
pub mod exposition;
pub mod heap;
pub mod host;
pub mod log;
pub mod origin_tls;
pub mod quic_udp;
pub mod resident;
pub mod service;
pub mod settings;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

use burrow_core::icmp::RouterConfig;
use socket2::{Domain, Protocol, Socket, Type};
use tracing::{debug, info, warn};

/// The local address of an edge socket: `--edge-bind-address` when given (its family is the
/// edge's, settings make sure), else the unspecified address of `edge`'s family.
pub fn edge_bind(edge: SocketAddr, local: Option<IpAddr>) -> SocketAddr {
    match local {
        Some(ip) => SocketAddr::new(ip, 0),
        None if edge.is_ipv4() => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        None => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    }
}

/// A non-blocking UDP socket connected to `dest` from a kernel-chosen local address
/// (cloudflared's `DialUDP`). UDP connect only sets the peer; it does not block.
pub fn open_udp(dest: SocketAddr) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(edge_bind(dest, None))?;
    socket.connect(dest)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// A non-blocking unprivileged ping socket (`SOCK_DGRAM`, `IPPROTO_ICMP`/`IPPROTO_ICMPV6`)
/// bound to `bind`: the kernel puts in its own echo ident and, for ICMPv6, the checksum, and
/// hands back only the replies to that ident, without IP header.
pub fn open_ping(bind: IpAddr) -> io::Result<UdpSocket> {
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
    let socket = UdpSocket::bind(bind)?;
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

/// `tcpKeepAlive` on an origin connection, as Go's dialer applies it: first probe and interval
/// both `period`; zero leaves the system's setting.
pub fn tcp_keep_alive<S: std::os::fd::AsFd>(s: &S, period: std::time::Duration) -> io::Result<()> {
    if period.is_zero() {
        return Ok(());
    }
    let ka = socket2::TcpKeepalive::new()
        .with_time(period)
        .with_interval(period);
    socket2::SockRef::from(s).set_tcp_keepalive(&ka)
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

/// Tells systemd the service is up (`READY=1` on `$NOTIFY_SOCKET`, sd_notify's protocol), as
/// cloudflared does once its first connection is registered: the unit `service install`
/// writes is `Type=notify`. Without `$NOTIFY_SOCKET` (not started by systemd) it does nothing.
pub fn notify_ready() -> io::Result<()> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let socket = std::os::unix::net::UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    // A leading '@' names a socket in Linux's abstract namespace.
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name)?
        }
        None => std::os::unix::net::SocketAddr::from_pathname(&path)?,
    };
    socket.send_to_addr(b"READY=1", &addr)?;
    Ok(())
}

/// The wall clock in Unix seconds (Access tokens' expiry is checked against it).
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_bind_follows_the_flag_else_the_edge_family() {
        let v4: SocketAddr = "192.0.2.1:7844".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:7844".parse().unwrap();
        assert_eq!(edge_bind(v4, None), "0.0.0.0:0".parse().unwrap());
        assert_eq!(edge_bind(v6, None), "[::]:0".parse().unwrap());
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(edge_bind(v4, Some(local)), "127.0.0.1:0".parse().unwrap());
    }

    #[test]
    fn open_udp_is_connected_and_non_blocking() {
        let origin = UdpSocket::bind("127.0.0.1:0").unwrap();
        let s = open_udp(origin.local_addr().unwrap()).unwrap();
        assert_eq!(s.peer_addr().unwrap(), origin.local_addr().unwrap());
        let mut b = [0u8; 8];
        assert_eq!(
            s.recv(&mut b).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        s.send(b"ping").unwrap();
        let (n, from) = origin.recv_from(&mut b).unwrap();
        assert_eq!((&b[..n], from), (&b"ping"[..], s.local_addr().unwrap()));
    }
}
