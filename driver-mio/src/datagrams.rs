//! The datagram sockets of the loop: one connected UDP socket per UDP session, one
//! unprivileged ping socket per ICMP funnel. What to open, send and close is the connector's
//! work; what they read goes straight back into it, framed in place in a reused buffer.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};

use burrow_core::connector::{Connector, Input};
use burrow_core::icmp::FunnelId;
use burrow_core::session::{UdpFlowId, HEADROOM, ORIGIN_READ, TAILROOM};
use bytes::BytesMut;
use mio::net::UdpSocket;
use mio::{Interest, Registry, Token};
use tracing::debug;

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
        let mut socket = UdpSocket::from_std(burrow_os::open_udp(dest)?);
        registry.register(&mut socket, token, Interest::READABLE)?;
        self.udp.insert(flow, (socket, token));
        Ok(())
    }

    /// Writes one datagram; false if it was not written (a socket that cannot take it now
    /// drops it, as UDP does; the connector counts it).
    pub fn send_udp(&mut self, flow: UdpFlowId, payload: &[u8]) -> bool {
        let Some((s, _)) = self.udp.get(&flow) else {
            return false;
        };
        match s.send(payload) {
            Ok(_) => true,
            Err(e) => {
                if e.kind() != io::ErrorKind::WouldBlock {
                    debug!(%flow, error = %e, "origin UDP write failed");
                }
                false
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

    /// Sends an ICMP echo request through the ping socket of `funnel`; false if it was not sent.
    pub fn send_ping(&mut self, funnel: FunnelId, dst: IpAddr, message: &[u8]) -> bool {
        let Some((s, _)) = self.funnels.get(&funnel) else {
            return false;
        };
        match s.send_to(message, SocketAddr::new(dst, 0)) {
            Ok(_) => {
                self.stats.pings_sent += 1;
                true
            }
            Err(e) => {
                debug!(%funnel, %dst, error = %e, "failed to send ICMP echo");
                false
            }
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

pub use burrow_os::{icmp_config, open_ping, raise_nofile_limit, IcmpSources};
