//! `burrow edge --udp-map / --icmp-map`: public UDP ports whose traffic crosses a tunnel as
//! datagram-v3 sessions, and UDP ports taking raw IP packets (ping) carried as ICMP datagrams.
//!
//! Every protocol decision is burrow-core's (the edge machine's session table,
//! [`burrow_core::session::edge::EdgeSessions`]); this is the glue. The edge loop reads the
//! mapping sockets, feeds their packets to the machine and sends what comes back for clients
//! from the mapping's socket.

use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::os::fd::AsFd;
use std::task::Poll;
use std::time::Duration;

use burrow_core::edge::Input;
use burrow_core::session::edge::{EdgeSessionsConfig, MappingId, MappingKind, DEFAULT_IDLE};
use clap::Args;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tracing::{debug, info};
use uuid::Uuid;

use crate::edge::TunnelsFile;
use burrow_tokio::mmsg::{self, RecvSlots};

/// Largest packet read from a mapping socket (anything over 1280 is refused by core).
const READ_BUF: usize = 2048;
/// `recvmmsg` calls per read of a mapping socket.
const READ_CALLS: usize = 8;

/// The datagram flags of `burrow edge`.
#[derive(Debug, Args, Clone)]
pub struct DatagramArgs {
    /// UDP port mapping LISTEN=TUNNEL:DEST (tunnel by name or id; DEST is ip:port in the
    /// tunnel's private network), repeatable. Needs connectors with datagram v3.
    #[arg(long = "udp-map")]
    pub udp_map: Vec<String>,
    /// ICMP mapping LISTEN=TUNNEL, repeatable: a UDP port whose datagrams are raw IPv4/IPv6
    /// packets (ICMP echo requests with their IP header); replies come back the same way.
    #[arg(long = "icmp-map")]
    pub icmp_map: Vec<String>,
    /// A mapped UDP session with no traffic for this long ends (the connector is hinted a
    /// little longer).
    #[arg(long = "udp-idle-timeout", default_value = "120s", value_parser = humantime::parse_duration)]
    pub udp_idle_timeout: Duration,
    /// Bundle each session's first payload into its registration instead of sending it after
    /// the answer. Only for connectors that deliver bundled payloads (burrow); stock cloudflared
    /// drops them.
    #[arg(long = "udp-bundle-first-payload")]
    pub udp_bundle_first_payload: bool,
}

impl Default for DatagramArgs {
    fn default() -> Self {
        Self {
            udp_map: Vec::new(),
            icmp_map: Vec::new(),
            udp_idle_timeout: DEFAULT_IDLE,
            udp_bundle_first_payload: false,
        }
    }
}

/// `LISTEN=TUNNEL:DEST` → (listen, tunnel, dest).
pub fn parse_udp_map(s: &str) -> Result<(&str, &str, SocketAddr), String> {
    let bad = || format!("--udp-map {s}: expected LISTEN=TUNNEL:DEST with DEST an ip:port");
    let (listen, target) = s.split_once('=').ok_or_else(bad)?;
    let (tunnel, dest) = target.split_once(':').ok_or_else(bad)?;
    let dest = dest.parse().map_err(|_| bad())?;
    if listen.is_empty() || tunnel.is_empty() {
        return Err(bad());
    }
    Ok((listen, tunnel, dest))
}

/// `LISTEN=TUNNEL` → (listen, tunnel).
pub fn parse_icmp_map(s: &str) -> Result<(&str, &str), String> {
    match s.split_once('=') {
        Some((listen, tunnel)) if !listen.is_empty() && !tunnel.is_empty() => Ok((listen, tunnel)),
        _ => Err(format!("--icmp-map {s}: expected LISTEN=TUNNEL")),
    }
}

/// The bound addresses of the mappings, in flag order.
#[derive(Debug, Clone, Default)]
pub struct MappedAddrs {
    /// One per `--udp-map`.
    pub udp: Vec<SocketAddr>,
    /// One per `--icmp-map`.
    pub icmp: Vec<SocketAddr>,
}

/// What the edge machine needs to know of the mappings.
pub struct Mappings {
    /// The session table's bounds and timers.
    pub config: EdgeSessionsConfig,
    /// Every mapping, numbered in this order.
    pub mappings: Vec<(Uuid, MappingKind)>,
}

/// The mapping sockets, read and written by the edge loop itself, several datagrams per call:
/// no reader task, channel or allocation per packet.
pub struct MappingSockets {
    /// By mapping id; registered for reads only (see [`listen_on`]).
    sockets: Vec<AsyncFd<std::net::UdpSocket>>,
    /// The socket read last, so a busy one does not starve the others.
    last: usize,
    slots: RecvSlots,
    /// Packets for clients, written at once by [`MappingSockets::flush`]: the mapping, the
    /// client and where the payload is in `unsent_bytes`.
    unsent: Vec<(MappingId, SocketAddr, Range<usize>)>,
    unsent_bytes: Vec<u8>,
    /// By mapping id: the largest datagrams its socket sends in segmented messages (UDP GSO;
    /// 0: none), lowered when the route refuses them ([`mmsg::send_many_adapting`]).
    max_segment: Vec<usize>,
}

/// Binds every mapping socket.
pub async fn bind(
    args: &DatagramArgs,
    tunnels: &TunnelsFile,
) -> Result<(MappingSockets, Mappings, MappedAddrs), String> {
    let config = EdgeSessionsConfig {
        idle_timeout: args.udp_idle_timeout,
        bundle_first_payload: args.udp_bundle_first_payload,
        ..EdgeSessionsConfig::default()
    };
    let mut mappings = Vec::new();
    let mut sockets = Vec::new();
    let mut addrs = MappedAddrs::default();
    let tunnel_id = |flag: &str, map: &str, t: &str| {
        tunnels
            .by_name_or_id(t)
            .ok_or_else(|| format!("{flag} {map}: unknown tunnel {t}"))
    };
    for map in &args.udp_map {
        let (listen, tunnel, dest) = parse_udp_map(map)?;
        let id = tunnel_id("--udp-map", map, tunnel)?;
        mappings.push((id, MappingKind::Udp { dest }));
        let (sock, addr) = listen_on(listen).await?;
        info!(listen = %addr, %tunnel, %dest, "UDP mapping");
        addrs.udp.push(addr);
        sockets.push(sock);
    }
    for map in &args.icmp_map {
        let (listen, tunnel) = parse_icmp_map(map)?;
        let id = tunnel_id("--icmp-map", map, tunnel)?;
        mappings.push((id, MappingKind::Icmp));
        let (sock, addr) = listen_on(listen).await?;
        info!(listen = %addr, %tunnel, "ICMP mapping (raw IP packets over UDP)");
        addrs.icmp.push(addr);
        sockets.push(sock);
    }
    let max_segment = sockets
        .iter()
        .map(|s| {
            if mmsg::segmenting_supported(s.get_ref().as_fd()) {
                usize::MAX
            } else {
                0
            }
        })
        .collect();
    Ok((
        MappingSockets {
            max_segment,
            sockets,
            last: 0,
            slots: RecvSlots::new(READ_BUF),
            unsent: Vec::new(),
            unsent_bytes: Vec::new(),
        },
        Mappings { config, mappings },
        addrs,
    ))
}
/// Binds a mapping socket, registered with the runtime for reads only: sends never wait (a
/// full buffer drops, see [`MappingSockets::flush`]), and asking for writability too made
/// every send to clients signal the runtime again when loopback freed its buffer.
async fn listen_on(listen: &str) -> Result<(AsyncFd<std::net::UdpSocket>, SocketAddr), String> {
    let err = |e: io::Error| format!("cannot listen on {listen}: {e}");
    let sock = tokio::net::UdpSocket::bind(listen)
        .await
        .and_then(|s| s.into_std())
        .map_err(err)?;
    let addr = sock.local_addr().map_err(|e| e.to_string())?;
    // SAFETY: the socket owns its descriptor, open until it drops, which the AsyncFd does
    // after deregistering it; it is never swapped for another.
    let sock = unsafe { AsyncFd::register_with_interest(sock, Interest::READABLE) }
        .map_err(|e| err(e.into()))?;
    Ok((sock, addr))
}

impl MappingSockets {
    /// Resolves with the index of a mapping socket that may have packets to read, looking
    /// first at those after the one read last; pending while there is none. Cancel-safe.
    pub async fn readable(&self) -> usize {
        std::future::poll_fn(|cx| {
            let n = self.sockets.len();
            for i in (1..=n).map(|k| (self.last + k) % n) {
                // An error is read (and logged) by `read` like a packet.
                // The guard is dropped without clearing: only a read that finds nothing does.
                if self.sockets[i].poll_read_ready(cx).is_ready() {
                    return Poll::Ready(i);
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Reads what socket `index` has queued (a bounded number of calls, so the loop's other
    /// sources get their turn), handing each packet to `on` as the edge machine's input.
    pub fn read(&mut self, index: usize, mut on: impl FnMut(Input<'_>)) {
        self.last = index;
        let Some(sock) = self.sockets.get(index) else {
            return;
        };
        let mapping = MappingId(u32::try_from(index).unwrap_or(u32::MAX));
        for _ in 0..READ_CALLS {
            let slots = &mut self.slots;
            match sock.try_io(Interest::READABLE, |s| mmsg::recv_many(s.as_fd(), slots)) {
                Ok(_) => {
                    for (data, from) in self.slots.received() {
                        if let Some(from) = from {
                            on(Input::ClientPacket {
                                mapping,
                                from,
                                data,
                            });
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // ICMP errors from earlier sends surface here on Linux; not fatal.
                Err(e) => {
                    debug!(%mapping, error = %e, "mapping socket read error");
                    return;
                }
            }
        }
    }

    /// Queues a packet for a client of the mapping's socket; [`Self::flush`] sends it.
    pub fn send(&mut self, mapping: MappingId, client: SocketAddr, payload: &[u8]) {
        let at = self.unsent_bytes.len();
        self.unsent_bytes.extend_from_slice(payload);
        self.unsent
            .push((mapping, client, at..self.unsent_bytes.len()));
    }

    /// Sends the queued packets, several per call on each socket, each client's in the order
    /// queued; a client's run of equal-sized packets goes as one segmented message where the
    /// socket can (see [`mmsg::send_many`]). A full socket buffer drops them, as the
    /// kernel would for a slow reader.
    pub fn flush(&mut self) {
        // By socket and client, each in the order queued (offsets grow with it); unstable, as
        // a stable sort allocates scratch.
        self.unsent
            .sort_unstable_by_key(|(m, client, r)| (m.0, *client, r.start));
        let mut rest = &self.unsent[..];
        while let Some((mapping, _, _)) = rest.first() {
            let run = rest.iter().take_while(|(m, _, _)| m == mapping).count();
            let (batch, after) = rest.split_at(run);
            rest = after;
            let Some(sock) = self.sockets.get(mapping.0 as usize) else {
                continue;
            };
            let Some(max_segment) = self.max_segment.get_mut(mapping.0 as usize) else {
                continue;
            };
            let bytes = &self.unsent_bytes;
            let item =
                |(_, to, r): &(MappingId, SocketAddr, Range<usize>)| (Some(*to), &bytes[r.clone()]);
            let before = *max_segment;
            let (sent, error) =
                mmsg::send_many_adapting(sock.get_ref().as_fd(), batch, max_segment, item);
            if *max_segment != before {
                debug!(
                    %mapping,
                    max_segment = *max_segment,
                    "segmented sends refused; larger datagrams go plainly"
                );
            }
            if sent < run {
                match error {
                    Some(e) if e.kind() != io::ErrorKind::WouldBlock => {
                        debug!(%mapping, dropped = run - sent, error = %e, "cannot send to clients")
                    }
                    _ => debug!(%mapping, dropped = run - sent, "cannot send to clients now"),
                }
            }
        }
        self.unsent.clear();
        self.unsent_bytes.clear();
    }
}

#[cfg(test)]
mod tests;
