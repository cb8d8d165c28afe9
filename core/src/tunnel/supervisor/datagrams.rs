//! The supervisor's datagram routing: one [`crate::tunnel::udp::DatagramHub`] for every connection, the links it
//! sends on, datagram-v2 registrations answered over RPC, sessions re-homed when a connection
//! goes.

use std::net::IpAddr;
use std::time::Instant;

use bytes::BytesMut;
use tracing::debug;

use super::{Phase, Slot, Supervisor};
use crate::datagram::LinkId;
use crate::icmp::FunnelId;
use crate::session::{SessionAction, UdpFlowId};
use crate::tunnel::connector::ConnectorConnection;
use crate::tunnel::udp::{Egress, HubAction, Links};

/// The running connections, by link, as the hub sees them.
struct SlotLinks<'a>(&'a mut [Slot]);

impl Links for SlotLinks<'_> {
    fn connection(&mut self, link: LinkId) -> Option<&mut ConnectorConnection> {
        self.0.iter_mut().find_map(|s| match &mut s.phase {
            Phase::Running(r) if r.link == link => r.conn.quic(),
            _ => None,
        })
    }
}

impl Supervisor {
    /// Takes received datagrams until one leaves something for a socket (see
    /// [`crate::tunnel::udp::DatagramHub::pull`]); true while something is held for
    /// [`Supervisor::take_egress`].
    pub(crate) fn pull_egress(&mut self, now: Instant) -> bool {
        // Registrations admit sessions: the others' flows are counted first (pulling changes
        // no connection's).
        self.sync_flow_gates();
        for s in &mut self.slots {
            if let Phase::Running(r) = &mut s.phase {
                let link = r.link;
                if let Some(conn) = r.conn.quic() {
                    if self.hub.pull(now, link, conn) {
                        return true;
                    }
                }
            }
        }
        false
    }

    /// What [`Supervisor::pull_egress`] held.
    pub(crate) fn take_egress(&mut self) -> Option<Egress<'_>> {
        self.hub.take_egress()
    }

    /// `len` bytes the origin socket of `flow` read sit at `buf[HEADROOM..]` (`buf` holds
    /// [`HEADROOM`](crate::session::HEADROOM) + `len` + [`TAILROOM`](crate::session::TAILROOM)
    /// bytes at least): they are framed in place and queued on the session's connection. The
    /// datagram is split off `buf` without a copy; resize `buf` before the next read.
    pub fn udp_origin_read(
        &mut self,
        now: Instant,
        flow: UdpFlowId,
        buf: &mut BytesMut,
        len: usize,
    ) {
        self.hub
            .origin_read(now, flow, buf, len, &mut SlotLinks(&mut self.slots));
    }

    /// The ping socket of `funnel` read `message` (ICMP, no IP header) from `from`.
    pub fn ping_reply(&mut self, now: Instant, funnel: FunnelId, from: IpAddr, message: &[u8]) {
        self.hub
            .ping_reply(now, funnel, from, message, &mut SlotLinks(&mut self.slots));
    }

    /// The next socket to open or close: [`SessionAction::Open`], [`SessionAction::Send`],
    /// [`SessionAction::Close`], or a funnel's
    /// [`RouterAction`](crate::icmp::RouterAction). Registration answers (v3 datagrams, v2 RPC
    /// responses) and v2 unregistrations go out on their connections on the way.
    pub fn poll_datagram_action(&mut self, now: Instant) -> Option<HubAction> {
        loop {
            let action = self.hub.poll_action(&mut SlotLinks(&mut self.slots))?;
            match action {
                HubAction::Session(SessionAction::V2Registered { link, id, result }) => {
                    self.sync_flow_gates();
                    let streams = self.v2_calls.remove(&(link, id)).unwrap_or_default();
                    if let Some(conn) = SlotLinks(&mut self.slots).connection(link) {
                        for stream in streams {
                            // The edge may have given up on the stream meanwhile.
                            if let Err(e) = conn.respond_udp_session(now, stream, result.clone()) {
                                debug!(%link, session_id = %id, error = %e, "cannot answer registerUdpSession");
                            }
                        }
                    }
                    self.progress(now);
                }
                HubAction::Session(SessionAction::V2Unregister { link, id, message }) => {
                    self.sync_flow_gates();
                    if let Some(conn) = SlotLinks(&mut self.slots).connection(link) {
                        conn.unregister_udp_session(now, id, &message);
                    }
                    self.progress(now);
                }
                other => return Some(other),
            }
        }
    }

    /// The origin socket of `flow` is open (after [`SessionAction::Open`]).
    pub fn handle_udp_opened(&mut self, now: Instant, flow: UdpFlowId) {
        self.hub.sessions.handle_origin_opened(now, flow);
    }

    /// The origin socket of `flow` could not be opened, or reading or writing it failed for
    /// good; `reason` is the socket error's text. The session ends.
    pub fn handle_udp_failed(&mut self, now: Instant, flow: UdpFlowId, reason: &str) {
        self.hub.sessions.handle_origin_failed(now, flow, reason);
    }

    /// The origin socket of `flow` did not take a payload: a drop on its connection's index.
    pub fn handle_udp_write_failed(&mut self, flow: UdpFlowId) {
        self.hub.sessions.write_failed(flow);
    }

    /// The ping socket of `funnel` did not take an [`crate::connector::Io::SendPing`].
    pub fn handle_ping_write_failed(&mut self, funnel: FunnelId) {
        self.hub.ping_write_failed(funnel);
    }

    /// The ping socket of `funnel` could not be opened, or reading it failed: the funnel is
    /// forgotten (the driver drops whatever socket it has).
    pub fn handle_funnel_failed(&mut self, funnel: FunnelId) {
        self.hub.icmp.handle_funnel_failed(funnel);
    }

    /// `link` is gone: its UDP sessions move to a surviving registered connection (the lowest
    /// index), so origin replies keep flowing until the edge re-registers them where it likes;
    /// its pending v2 registrations are forgotten.
    pub(super) fn datagram_link_gone(&mut self, link: LinkId) {
        let successor = self.slots.iter().find_map(|s| match &s.phase {
            // Sessions can only move to a connection with datagrams (QUIC).
            Phase::Running(r)
                if r.registered
                    && r.link != link
                    && !r.conn.is_closed()
                    && matches!(r.conn, super::link::Link::Quic(_)) =>
            {
                Some(r.link)
            }
            _ => None,
        });
        self.hub.link_closed(link, successor);
        self.v2_calls.retain(|(l, _), _| *l != link);
    }
}
