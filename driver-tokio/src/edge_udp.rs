//! `burrow edge --udp-map / --icmp-map`: public UDP ports whose traffic crosses a tunnel as
//! datagram-v3 sessions, and UDP ports taking raw IP packets (ping) carried as ICMP datagrams.
//!
//! Every protocol decision is burrow-core's (the edge machine's session table,
//! [`burrow_core::session::edge::EdgeSessions`]); this is the glue. One task per mapping reads
//! its socket and hands packets to the edge loop, which feeds them to the machine and sends
//! what comes back for clients from the mapping's socket.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use burrow_core::edge::Input;
use burrow_core::session::edge::{EdgeSessionsConfig, MappingId, MappingKind, DEFAULT_IDLE};
use bytes::Bytes;
use clap::Args;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{debug, info};
use uuid::Uuid;

use crate::edge::TunnelsFile;

/// Client packets queued for the edge loop; a full queue holds the readers (the kernel then
/// drops, as it would for any slow UDP server).
const QUEUE: usize = 1024;
/// Largest packet read from a mapping socket (anything over 1280 is refused by core).
const READ_BUF: usize = 2048;

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

/// A packet a public client sent to a mapping.
#[derive(Debug)]
pub struct ClientPacket {
    mapping: MappingId,
    from: SocketAddr,
    data: Bytes,
}

impl ClientPacket {
    /// The edge machine's input for it.
    pub fn input(&self) -> Input<'_> {
        Input::ClientPacket {
            mapping: self.mapping,
            from: self.from,
            data: &self.data,
        }
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

/// The mapping sockets: readers feed the edge loop, the loop sends clients their packets.
pub struct MappingSockets {
    /// By mapping id.
    sockets: Vec<Arc<UdpSocket>>,
    rx: mpsc::Receiver<ClientPacket>,
}

/// Binds every mapping socket and starts its reader.
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
    let (tx, rx) = mpsc::channel(QUEUE);
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
        let mapping = MappingId(u32::try_from(mappings.len()).unwrap_or(u32::MAX));
        mappings.push((id, MappingKind::Udp { dest }));
        let (sock, addr) = listen_on(listen).await?;
        info!(listen = %addr, %tunnel, %dest, "UDP mapping");
        addrs.udp.push(addr);
        sockets.push(spawn_reader(sock, mapping, tx.clone()));
    }
    for map in &args.icmp_map {
        let (listen, tunnel) = parse_icmp_map(map)?;
        let id = tunnel_id("--icmp-map", map, tunnel)?;
        let mapping = MappingId(u32::try_from(mappings.len()).unwrap_or(u32::MAX));
        mappings.push((id, MappingKind::Icmp));
        let (sock, addr) = listen_on(listen).await?;
        info!(listen = %addr, %tunnel, "ICMP mapping (raw IP packets over UDP)");
        addrs.icmp.push(addr);
        sockets.push(spawn_reader(sock, mapping, tx.clone()));
    }
    Ok((
        MappingSockets { sockets, rx },
        Mappings { config, mappings },
        addrs,
    ))
}
async fn listen_on(listen: &str) -> Result<(UdpSocket, SocketAddr), String> {
    let sock = UdpSocket::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = sock.local_addr().map_err(|e| e.to_string())?;
    Ok((sock, addr))
}

fn spawn_reader(
    sock: UdpSocket,
    mapping: MappingId,
    tx: mpsc::Sender<ClientPacket>,
) -> Arc<UdpSocket> {
    let sock = Arc::new(sock);
    let rd = sock.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; READ_BUF];
        loop {
            match rd.recv_from(&mut buf).await {
                Ok((n, from)) => {
                    let data = Bytes::copy_from_slice(&buf[..n]);
                    if tx
                        .send(ClientPacket {
                            mapping,
                            from,
                            data,
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                // ICMP errors from earlier sends surface here on Linux; not fatal.
                Err(e) => debug!(%mapping, error = %e, "mapping socket read error"),
            }
        }
    });
    sock
}

impl MappingSockets {
    /// Next client packet (cancel-safe).
    pub async fn recv(&mut self) -> Option<ClientPacket> {
        self.rx.recv().await
    }

    /// A queued client packet, if any.
    pub fn try_recv(&mut self) -> Option<ClientPacket> {
        self.rx.try_recv().ok()
    }

    /// Sends a packet to a client from the mapping's socket.
    pub fn send(&self, mapping: MappingId, client: SocketAddr, payload: &[u8]) {
        let Some(sock) = self.sockets.get(mapping.0 as usize) else {
            return;
        };
        // A full socket buffer drops the packet, as the kernel would for a slow reader.
        if let Err(e) = sock.try_send_to(payload, client) {
            debug!(%mapping, %client, error = %e, "cannot send to client");
        }
    }
}

#[cfg(test)]
mod tests;
