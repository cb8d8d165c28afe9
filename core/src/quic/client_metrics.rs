//! cloudflared's `quic_client_*` figures (its `quic/metrics.go`) per HA index, decided here so
//! both drivers only render them. cloudflared counts in quic-go's tracer callbacks; burrow
//! reads each QUIC connection's quinn counters when the figures are wanted, and keeps the
//! counters monotonic across reconnects with what the connector kept of every closed
//! connection (its final counters, added up per index). Not known from quinn: buffered and dropped packets (never counted) and a
//! loss's reason (every loss is `unknown_loss_reason`, cloudflared's label for a reason it
//! does not know).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use quinn_proto::coding::Codec;
use quinn_proto::{ConnectionStats, FrameStats, VarInt};

use crate::connector::{Connector, Event};
use crate::datagram::LinkId;
use crate::tunnel::connector::ConnectorConnection;
use crate::tunnel::protocol::Protocol;

/// quic-go's frame type names (its qlog frame types without `Frame`), in [`IndexFigures`]'
/// frame count order.
pub const FRAME_TYPES: [&str; 20] = [
    "Ack",
    "AckFrequency",
    "Crypto",
    "ConnectionClose",
    "DataBlocked",
    "Datagram",
    "HandshakeDone",
    "ImmediateAck",
    "MaxData",
    "MaxStreamData",
    "MaxStreams",
    "NewConnectionID",
    "NewToken",
    "PathChallenge",
    "PathResponse",
    "Ping",
    "ResetStream",
    "RetireConnectionID",
    "StreamDataBlocked",
    "Stream",
];

/// quinn's frame counts in [`FRAME_TYPES`] order.
fn frames(f: &FrameStats) -> [u64; 20] {
    [
        f.acks,
        f.ack_frequency,
        f.crypto,
        f.connection_close,
        f.data_blocked,
        f.datagram,
        u64::from(f.handshake_done),
        f.immediate_ack,
        f.max_data,
        f.max_stream_data,
        f.max_streams_bidi + f.max_streams_uni,
        f.new_connection_id,
        f.new_token,
        f.path_challenge,
        f.path_response,
        f.ping,
        f.reset_stream,
        f.retire_connection_id,
        f.stream_data_blocked,
        f.stream,
    ]
}

/// The counters of one connection that only grow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// `quic_client_sent_bytes`: UDP payload bytes sent.
    pub sent_bytes: u64,
    /// `quic_client_receive_bytes`.
    pub receive_bytes: u64,
    /// `quic_client_lost_packets{reason="unknown_loss_reason"}`.
    pub lost_packets: u64,
    /// `quic_client_sent_frames{frame_type}`, in [`FRAME_TYPES`] order.
    pub sent_frames: [u64; 20],
    /// `quic_client_received_frames{frame_type}`.
    pub received_frames: [u64; 20],
}

impl Totals {
    fn of(s: &ConnectionStats) -> Self {
        Self {
            sent_bytes: s.udp_tx.bytes,
            receive_bytes: s.udp_rx.bytes,
            lost_packets: s.path.lost_packets,
            sent_frames: frames(&s.frame_tx),
            received_frames: frames(&s.frame_rx),
        }
    }

    fn plus(&self, o: &Self) -> Self {
        let mut r = *self;
        r.sent_bytes += o.sent_bytes;
        r.receive_bytes += o.receive_bytes;
        r.lost_packets += o.lost_packets;
        for i in 0..20 {
            r.sent_frames[i] += o.sent_frames[i];
            r.received_frames[i] += o.received_frames[i];
        }
        r
    }
}

/// The gauges of an index's connection, in cloudflared's units; the last connection's values
/// stay while the index has none (cloudflared keeps a gauge's last value too).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gauges {
    /// `quic_client_min_rtt`, whole milliseconds (Go's `Duration.Milliseconds()`).
    pub min_rtt_ms: u64,
    /// `quic_client_latest_rtt`, whole milliseconds; `None` before the first sample.
    pub latest_rtt_ms: Option<u64>,
    /// `quic_client_smoothed_rtt`, whole milliseconds.
    pub smoothed_rtt_ms: u64,
    /// `quic_client_mtu`: the path's current packet size.
    pub mtu: u16,
    /// `quic_client_congestion_window`, bytes.
    pub congestion_window: u64,
    /// `quic_client_congestion_state` (0 slow start, 1 congestion avoidance, 2 application
    /// limited, 3 recovery).
    pub congestion_state: Option<i64>,
    /// `quic_client_max_udp_payload`: the edge's `max_udp_payload_size` transport parameter.
    pub max_udp_payload: Option<u64>,
}

/// Everything one HA index reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexFigures {
    /// Counters, summed over every connection the index had.
    pub totals: Totals,
    /// Gauges of the current (or last) connection.
    pub gauges: Gauges,
}

impl IndexFigures {
    /// The figures of one QUIC connection, read from quinn and the watched controller.
    pub fn of(conn: &ConnectorConnection) -> Self {
        let stats = conn.quic_stats();
        let congestion = conn.congestion();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Self {
            totals: Totals::of(&stats),
            gauges: Gauges {
                min_rtt_ms: ms(stats.path.min_rtt),
                latest_rtt_ms: congestion.and_then(|c| c.latest_rtt).map(ms),
                smoothed_rtt_ms: ms(stats.path.rtt),
                mtu: stats.path.current_mtu,
                congestion_window: stats.path.cwnd,
                congestion_state: congestion.map(|c| c.state.value()),
                max_udp_payload: conn.peer_max_udp_payload(),
            },
        }
    }

    /// `self` (an index's closed connections) followed by `next`: the counters summed, the
    /// gauges `next`'s (a latest RTT it has not sampled yet stays the one before).
    pub fn then(&self, next: &Self) -> Self {
        let mut gauges = next.gauges;
        gauges.latest_rtt_ms = gauges.latest_rtt_ms.or(self.gauges.latest_rtt_ms);
        Self {
            totals: self.totals.plus(&next.totals),
            gauges,
        }
    }
}

/// cloudflared's QUIC client figures, kept from the connector's events and read from its
/// connections when asked for ([`QuicClientStats::sample`]), not on a timer: an idle
/// connector runs none of this code (burrow-mio's idle RSS counts every page it touches).
#[derive(Debug, Default)]
pub struct QuicClientStats {
    /// `quic_client_total_connections`: QUIC connection attempts (cloudflared counts a dial).
    pub total_connections: u64,
    /// `quic_client_closed_connections`: attempts gone since.
    pub closed_connections: u64,
    /// `quic_client_packet_too_big_dropped`: datagram-v2 origin payloads too big for a
    /// datagram ([`crate::session::SessionStats::packet_too_big`]).
    pub packet_too_big_dropped: u64,
    /// Each index's figures as of the last sample.
    indexes: BTreeMap<u8, IndexFigures>,
    /// QUIC connection attempts not yet closed.
    open: HashSet<LinkId>,
}

impl QuicClientStats {
    /// Counts the connection attempts an event starts or ends.
    pub fn on_event(&mut self, e: &Event) {
        match e {
            Event::Connecting {
                link,
                protocol: Protocol::Quic,
                ..
            } => {
                self.total_connections += 1;
                self.open.insert(*link);
            }
            Event::LinkClosed { link, .. } if self.open.remove(link) => {
                self.closed_connections += 1;
            }
            _ => {}
        }
    }

    /// Reads every index's figures: what its closed QUIC connections counted (the
    /// connector keeps that, [`Connector::closed_quic`]) followed by its current one's. Exact
    /// whenever it is called, so a driver calls it when the figures are wanted (a scrape).
    pub fn sample(&mut self, machine: &Connector) {
        self.packet_too_big_dropped = machine.datagram_hub().sessions.stats().packet_too_big;
        for index in 0..machine.ha_connections() {
            let Ok(index) = u8::try_from(index) else {
                break;
            };
            let current = machine.connection(index).map(IndexFigures::of);
            let figures = match (machine.closed_quic(index), current) {
                (Some(closed), Some(current)) => closed.then(&current),
                (Some(closed), None) => *closed,
                (None, Some(current)) => current,
                (None, None) => continue,
            };
            self.indexes.insert(index, figures);
        }
    }

    /// Each index that has had a QUIC connection, with its figures.
    pub fn indexes(&self) -> impl Iterator<Item = (u8, IndexFigures)> + '_ {
        self.indexes.iter().map(|(&i, f)| (i, *f))
    }
}

/// RFC 9000's default `max_udp_payload_size`, for a peer that does not send it.
const DEFAULT_MAX_UDP_PAYLOAD: u64 = 65527;

/// The `max_udp_payload_size` (id 0x03) in encoded transport parameters, RFC 9000's default
/// if absent; a truncated encoding ends the search.
pub fn max_udp_payload(mut encoded: &[u8]) -> u64 {
    while !encoded.is_empty() {
        let (Ok(id), Ok(len)) = (VarInt::decode(&mut encoded), VarInt::decode(&mut encoded)) else {
            break;
        };
        let Some(value) = usize::try_from(len.into_inner())
            .ok()
            .and_then(|len| encoded.get(..len))
        else {
            break;
        };
        if id.into_inner() == 0x03 {
            let mut v = value;
            return VarInt::decode(&mut v).map_or(DEFAULT_MAX_UDP_PAYLOAD, VarInt::into_inner);
        }
        encoded = &encoded[value.len()..];
    }
    DEFAULT_MAX_UDP_PAYLOAD
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(out: &mut Vec<u8>, id: u64, value: &[u8]) {
        VarInt::from_u64(id).expect("id").encode(out);
        VarInt::from_u64(value.len() as u64)
            .expect("len")
            .encode(out);
        out.extend_from_slice(value);
    }

    #[test]
    fn max_udp_payload_is_found_among_other_parameters_else_the_default() {
        let mut v = Vec::new();
        VarInt::from_u32(1452).encode(&mut v);
        let mut enc = Vec::new();
        param(&mut enc, 0x01, &[0x40, 0x64]);
        param(&mut enc, 0x03, &v);
        assert_eq!(max_udp_payload(&enc), 1452);
        assert_eq!(max_udp_payload(&enc[..3]), DEFAULT_MAX_UDP_PAYLOAD);
        assert_eq!(max_udp_payload(&[]), DEFAULT_MAX_UDP_PAYLOAD);
        // A length beyond the end.
        assert_eq!(
            max_udp_payload(&[0x03, 0x08, 0x44]),
            DEFAULT_MAX_UDP_PAYLOAD
        );
    }
}
