//! The connector's datagram plane: one [`SessionManager`] and one [`IcmpRouter`] for every
//! tunnel connection of the process, and the routing between them and the connections.
//!
//! Drivers own sockets only. For each connection they call [`DatagramHub::drain`] after every
//! input; it takes the connection's received datagrams and hands back, through a callback,
//! what must leave through a socket now ([`Egress`], borrowed from the datagram: no copy, no
//! allocation). Origin reads come back through [`DatagramHub::origin_read`] and
//! [`DatagramHub::ping_reply`], which frame in place and send on the right connection. What is
//! left for the driver (open/close a UDP socket or ping socket, v2 RPC answers) comes out of
//! [`DatagramHub::poll_action`]. Every drop is counted ([`HubStats`], the manager's
//! [`SessionStats`](crate::session::SessionStats) and, by the connection it came in on or was
//! going out of, its [`IndexStats`](crate::session::IndexStats)).

use std::net::IpAddr;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use tracing::debug;

use super::connector::ConnectorConnection;
use crate::datagram::{v2, v3, LinkId};
use crate::icmp::{FunnelId, IcmpRouter, RouterAction, Verdict};
use crate::session::{
    DatagramVersion, DropReason, Inbound, SessionAction, SessionManager, UdpFlowId,
};

/// Room for one IP packet in an ICMP datagram, with its type byte on either side.
const ICMP_BUF: usize = 1 + 1500 + 1;

/// Something that must leave through a socket now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Egress<'a> {
    /// Write `payload` on the UDP socket of `flow`.
    Udp {
        /// The socket.
        flow: UdpFlowId,
        /// One datagram's payload.
        payload: &'a [u8],
    },
    /// Send the ICMP `message` (no IP header) to `dst` through `funnel`'s ping socket.
    Ping {
        /// The ping socket.
        funnel: FunnelId,
        /// Destination.
        dst: IpAddr,
        /// ICMP header and body.
        message: &'a [u8],
        /// The decremented TTL, should the driver want to apply it.
        ttl: u8,
    },
}

/// Work for the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubAction {
    /// A session asks for a socket, a delayed send, a close, or a v2 RPC.
    Session(SessionAction),
    /// The ICMP router asks for a ping socket to be opened or closed.
    Icmp(RouterAction),
}

/// The hub's own counters (the manager and the router count their own drops).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HubStats {
    /// Datagrams taken from connections.
    pub datagrams_in: u64,
    /// Of those, UDP payload datagrams (v3 `0x01`, v2 suffix `0x00`).
    pub payloads_in: u64,
    /// Datagrams queued on connections (payloads, ICMP, registration responses); those a
    /// connection refused are the manager's [`DropReason::SendRefused`].
    pub datagrams_out: u64,
    /// Origin or ping-socket packets that could not be framed (counted by reason elsewhere).
    pub origin_dropped: u64,
    /// Echo replies queued to the edge (`cloudflared_icmp_total_replies`).
    pub icmp_replies: u64,
}

/// The tunnel connections the hub sends on, by link.
pub trait Links {
    /// The live connection of `link`, if any.
    fn connection(&mut self, link: LinkId) -> Option<&mut ConnectorConnection>;
}

/// One datagram plane for the whole connector.
pub struct DatagramHub {
    /// UDP sessions.
    pub sessions: SessionManager,
    /// ICMP proxy.
    pub icmp: IcmpRouter,
    scratch: Box<[u8; ICMP_BUF]>,
    out: Box<[u8; ICMP_BUF]>,
    stats: HubStats,
    /// What the last pull left for a socket.
    held: Option<Held>,
    /// The payload [`DatagramHub::take_egress`] lends out.
    udp_out: Bytes,
}

/// Something a pulled datagram left for a socket, until it is taken.
#[derive(Debug)]
enum Held {
    Udp {
        flow: UdpFlowId,
        payload: Bytes,
    },
    Ping {
        funnel: FunnelId,
        dst: IpAddr,
        /// Where the message lies in `scratch`.
        range: std::ops::Range<usize>,
        ttl: u8,
    },
}

impl DatagramHub {
    /// A hub over `sessions` and `icmp`.
    pub fn new(sessions: SessionManager, icmp: IcmpRouter) -> Self {
        Self {
            sessions,
            icmp,
            scratch: Box::new([0; ICMP_BUF]),
            out: Box::new([0; ICMP_BUF]),
            stats: HubStats::default(),
            held: None,
            udp_out: Bytes::new(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> &HubStats {
        &self.stats
    }

    /// Takes every datagram `conn` (the connection of `link`) received; what must go out
    /// through a socket is handed to `egress` before the next datagram is looked at.
    pub fn drain(
        &mut self,
        now: Instant,
        link: LinkId,
        conn: &mut ConnectorConnection,
        mut egress: impl FnMut(Egress<'_>),
    ) {
        while self.pull(now, link, conn) {
            if let Some(e) = self.take_egress() {
                egress(e);
            }
        }
    }

    /// Takes datagrams `conn` (the connection of `link`) received until one leaves something
    /// for a socket, which is held for [`DatagramHub::take_egress`]. True while something is
    /// held. Any socket the datagram asks for ([`DatagramHub::poll_action`]) is queued by then,
    /// so a caller that drains actions before taking the egress opens the socket first.
    pub fn pull(&mut self, now: Instant, link: LinkId, conn: &mut ConnectorConnection) -> bool {
        if self.held.is_some() {
            return true;
        }
        let version = conn.datagram_version();
        while let Some(d) = conn.poll_datagram() {
            self.stats.datagrams_in += 1;
            let payload_type = match version {
                DatagramVersion::V3 => d.first() == Some(&(v3::DatagramType::Payload as u8)),
                DatagramVersion::V2 => d.last() == Some(&(v2::DatagramType::Udp as u8)),
            };
            self.stats.payloads_in += u64::from(payload_type);
            match self.sessions.handle_datagram(now, link, version, &d) {
                Inbound::Forward { flow, payload } => {
                    // A view of the received datagram: no copy.
                    let payload = d.slice_ref(payload);
                    self.held = Some(Held::Udp { flow, payload });
                    return true;
                }
                Inbound::Icmp(packet) => {
                    if self.icmp_request(now, link, version, conn, packet) {
                        return true;
                    }
                }
                Inbound::Handled | Inbound::Dropped(_) => {}
            }
        }
        false
    }

    /// What the last [`DatagramHub::pull`] left for a socket, borrowed from the datagram or
    /// the hub's buffer; valid until the next pull.
    pub fn take_egress(&mut self) -> Option<Egress<'_>> {
        Some(match self.held.take()? {
            Held::Udp { flow, payload } => {
                self.udp_out = payload;
                Egress::Udp {
                    flow,
                    payload: &self.udp_out,
                }
            }
            Held::Ping {
                funnel,
                dst,
                range,
                ttl,
            } => Egress::Ping {
                funnel,
                dst,
                message: &self.scratch[range],
                ttl,
            },
        })
    }

    /// True when an ICMP request leaves an echo for a ping socket (held).
    fn icmp_request(
        &mut self,
        now: Instant,
        link: LinkId,
        version: DatagramVersion,
        conn: &mut ConnectorConnection,
        packet: &[u8],
    ) -> bool {
        // The router decrements the TTL in place; the received datagram is shared, so copy
        // (at most 1280 bytes, into a buffer of our own).
        let n = packet.len().min(self.scratch.len());
        self.scratch[..n].copy_from_slice(&packet[..n]);
        let base = self.scratch.as_ptr() as usize;
        let verdict =
            self.icmp
                .handle_request(now, link, &mut self.scratch[..n], &mut self.out[1..]);
        match verdict {
            Ok(Verdict::Reply { len }) => {
                let datagram = frame_ip(version, &mut self.out[..], len);
                // The router's own answer (time exceeded), not an origin's reply.
                self.send(link, conn, datagram);
                false
            }
            Ok(Verdict::Forward {
                funnel,
                dst,
                message,
                ttl,
            }) => {
                // The message lies within `scratch`: keep where, not a copy.
                let start = message.as_ptr() as usize - base;
                let range = start..start + message.len();
                self.held = Some(Held::Ping {
                    funnel,
                    dst,
                    range,
                    ttl,
                });
                true
            }
            Err(e) => {
                // cloudflared counts every packet its router does not take as `write_failed`.
                self.sessions.count_icmp_dropped(Some(link));
                debug!(%link, error = %e, kind = ?e.kind(), "ICMP packet not proxied");
                false
            }
        }
    }

    /// `len` bytes read from the origin socket of `flow` sit at `buf[HEADROOM..]`
    /// (see [`crate::session::SessionManager::frame_origin`]): frame them in place and send
    /// them on the session's connection.
    ///
    /// The datagram is split off the front of `buf` and handed to quinn as it is, without a
    /// copy; the driver then resizes `buf` for its next read. With a buffer of generous
    /// capacity that costs, amortised, no allocation per packet: `BytesMut` takes its storage back once
    /// quinn has sent what it split off.
    pub fn origin_read(
        &mut self,
        now: Instant,
        flow: UdpFlowId,
        buf: &mut BytesMut,
        len: usize,
        links: &mut (impl Links + ?Sized),
    ) {
        match self.sessions.frame_origin(now, flow, buf, len) {
            Ok(out) => {
                let mut framed = buf.split_to(out.range.end);
                framed.advance(out.range.start);
                let datagram = framed.freeze();
                match links.connection(out.link) {
                    Some(conn) => {
                        self.send(out.link, conn, Some(datagram));
                    }
                    None => self.refused(out.link),
                }
            }
            Err(_) => self.stats.origin_dropped += 1,
        }
    }

    /// `funnel`'s ping socket read `message` (an ICMP message, no IP header) from `from`.
    pub fn ping_reply(
        &mut self,
        now: Instant,
        funnel: FunnelId,
        from: IpAddr,
        message: &[u8],
        links: &mut (impl Links + ?Sized),
    ) {
        match self
            .icmp
            .handle_reply(now, funnel, from, message, &mut self.out[1..])
        {
            Ok((link, len)) => match links.connection(link) {
                Some(conn) => {
                    let datagram = frame_ip(conn.datagram_version(), &mut self.out[..], len);
                    if self.send(link, conn, datagram) {
                        self.stats.icmp_replies += 1;
                    }
                }
                None => self.refused(link),
            },
            Err(e) => {
                self.stats.origin_dropped += 1;
                debug!(%funnel, error = %e, "ping reply dropped");
            }
        }
    }

    /// `funnel`'s ping socket did not take an echo request: counted on the index of the
    /// connection it came in on.
    pub fn ping_write_failed(&mut self, funnel: FunnelId) {
        let link = self.icmp.link_of(funnel);
        self.sessions.count_icmp_dropped(link);
    }

    /// Lets idle sessions and funnels end.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.sessions.poll_timeout().is_some_and(|t| t <= now) {
            self.sessions.handle_timeout(now);
        }
        if self.icmp.poll_timeout().is_some_and(|t| t <= now) {
            self.icmp.handle_timeout(now);
        }
    }

    /// When [`DatagramHub::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.sessions.poll_timeout(), self.icmp.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    /// The connection of `link` is gone; sessions move to `successor` if there is one.
    pub fn link_closed(&mut self, link: LinkId, successor: Option<LinkId>) {
        self.sessions.link_closed(link, successor);
        self.icmp.link_closed(link);
    }

    /// The next thing for the driver. Registration responses are sent here, on `links`.
    pub fn poll_action(&mut self, links: &mut (impl Links + ?Sized)) -> Option<HubAction> {
        loop {
            if let Some(a) = self.icmp.poll_action() {
                return Some(HubAction::Icmp(a));
            }
            match self.sessions.poll_action()? {
                SessionAction::Datagram { link, datagram } => match links.connection(link) {
                    Some(conn) => {
                        self.send(link, conn, Some(datagram));
                    }
                    None => self.refused(link),
                },
                other => return Some(HubAction::Session(other)),
            }
        }
    }

    /// A datagram for `link` its connection would not take (or `link` is gone).
    fn refused(&mut self, link: LinkId) {
        self.sessions.count(Some(link), DropReason::SendRefused);
    }

    /// Queues `datagram` on `conn`; false if it was refused (and counted so).
    fn send(
        &mut self,
        link: LinkId,
        conn: &mut ConnectorConnection,
        datagram: Option<Bytes>,
    ) -> bool {
        match datagram.map(|d| conn.send_datagram(d)) {
            Some(Ok(())) => {
                self.stats.datagrams_out += 1;
                true
            }
            _ => {
                self.refused(link);
                false
            }
        }
    }
}

/// Frames the IP packet at `out[1..1 + len]` as an ICMP datagram of `version`.
fn frame_ip(version: DatagramVersion, out: &mut [u8], len: usize) -> Option<Bytes> {
    match version {
        DatagramVersion::V3 => {
            let n = v3::frame_icmp_in_place(out, len).ok()?;
            Some(Bytes::copy_from_slice(&out[..n]))
        }
        DatagramVersion::V2 => {
            let n = v2::frame_ip_in_place(&mut out[1..], len).ok()?;
            Some(Bytes::copy_from_slice(&out[1..1 + n]))
        }
    }
}
