//! Transport settings: cloudflared's values by default, every one settable.

use std::sync::Arc;
use std::time::Duration;

use quinn_proto::{IdleTimeout, TransportConfig, VarInt};

use crate::receive_window::{CONNECTOR_HELD_STREAMS, EDGE_HELD_STREAMS};

/// QUIC transport settings of a tunnel connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuicSettings {
    /// Close the connection after this long without packets (cloudflared: 5 s).
    pub idle_timeout: Duration,
    /// Send a PING when nothing else went out for this long (cloudflared: 1 s).
    pub keep_alive: Duration,
    /// Per-stream receive window: bytes a peer may send ahead of our reads (cloudflared's
    /// auto-tuning ceiling, 6 MiB). This bounds buffered memory per stream.
    pub stream_receive_window: u32,
    /// Connection-wide receive window (cloudflared's ceiling, 30 MiB) for the streams that
    /// read what comes; it grows by a stream window per held stream, see [`Self::held_streams`].
    pub connection_receive_window: u32,
    /// Streams whose reader takes nothing that the connection window grows to make room for
    /// beside the others, at most ([`crate::receive_window`]).
    pub held_streams: u32,
    /// Bidirectional streams the peer may have open at once, at most. cloudflared grants 2^60;
    /// quinn keeps bookkeeping for every stream granted (about 85 bytes each), so the
    /// connector grants at most 8192 per connection (32768 requests in flight over 4
    /// connections; beyond that the edge waits for credit) and the edge, which only takes the
    /// control and RPC streams, 256.
    pub max_concurrent_bidi_streams: u32,
    /// Of those, what the connector grants when a connection starts
    /// ([`Self::connector_transport_config`]); it doubles the grant each time the edge has half
    /// of it open (`ConnectorConnection`), up to the maximum: 8192 granted from the start cost
    /// about 700 KiB per connection, most of an idle connector's memory.
    pub initial_bidi_streams: u32,
    /// Unidirectional streams the peer may have open at once. cloudflared grants 2^60 and
    /// never reads them; 0 refuses them outright so they cannot pile up.
    pub max_concurrent_uni_streams: u32,
    /// Received QUIC datagrams queued before the oldest are dropped.
    pub datagram_receive_buffer: usize,
    /// Bytes of QUIC datagrams queued for sending; a datagram that does not fit is refused
    /// (and counted by the caller), never queued to go stale. quic-go, which cloudflared and
    /// the edge use, queues at most 32 datagrams: 32 full-size ones here. quinn's default,
    /// 1 MiB, held seconds of traffic behind a lossy path's small congestion window.
    pub datagram_send_buffer: usize,
    /// Path MTU discovery (cloudflared: on unless `--quic-disable-pmtu-discovery`).
    pub mtu_discovery: bool,
}

impl Default for QuicSettings {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(5),
            keep_alive: Duration::from_secs(1),
            stream_receive_window: 6 * 1024 * 1024,
            connection_receive_window: 30 * 1024 * 1024,
            // Up to 78 MiB.
            held_streams: CONNECTOR_HELD_STREAMS,
            max_concurrent_bidi_streams: 1 << 13,
            initial_bidi_streams: 128,
            max_concurrent_uni_streams: 0,
            datagram_receive_buffer: 1024 * 1024,
            datagram_send_buffer: 32 * 1500,
            mtu_discovery: true,
        }
    }
}

/// Initial packet size for an edge address family: the largest that fits a 1280-byte path MTU.
/// cloudflared picks 1232 for IPv4 and 1252 for IPv6, which is the wrong way round.
pub fn initial_mtu(edge_is_ipv4: bool) -> u16 {
    if edge_is_ipv4 {
        1280 - 28
    } else {
        1280 - 48
    }
}

impl QuicSettings {
    /// The edge role's settings: the connector's, granting only the few streams a connector
    /// opens (control, RPC).
    pub fn edge() -> Self {
        Self {
            max_concurrent_bidi_streams: 256,
            // Up to 222 MiB.
            held_streams: EDGE_HELD_STREAMS,
            ..Self::default()
        }
    }

    /// quinn-proto transport configuration for a path to an edge of the given family,
    /// granting the peer [`Self::max_concurrent_bidi_streams`] from the start.
    pub fn transport_config(&self, edge_is_ipv4: bool) -> Arc<TransportConfig> {
        self.granting(self.max_concurrent_bidi_streams, edge_is_ipv4)
    }

    /// The same for the connector's side, granting [`Self::initial_bidi_streams`] at first.
    pub fn connector_transport_config(&self, edge_is_ipv4: bool) -> Arc<TransportConfig> {
        let grant = self
            .initial_bidi_streams
            .min(self.max_concurrent_bidi_streams);
        self.granting(grant, edge_is_ipv4)
    }

    fn granting(&self, bidi_streams: u32, edge_is_ipv4: bool) -> Arc<TransportConfig> {
        let mut t = TransportConfig::default();
        // Durations over 2^62 ms cannot be encoded; saturate instead of failing.
        let idle = IdleTimeout::try_from(self.idle_timeout)
            .unwrap_or_else(|_| IdleTimeout::from(VarInt::MAX));
        t.max_idle_timeout(Some(idle))
            .keep_alive_interval(Some(self.keep_alive))
            .stream_receive_window(VarInt::from_u32(self.stream_receive_window))
            .receive_window(VarInt::from_u32(self.connection_receive_window))
            .max_concurrent_bidi_streams(VarInt::from_u32(bidi_streams))
            .max_concurrent_uni_streams(VarInt::from_u32(self.max_concurrent_uni_streams))
            .datagram_receive_buffer_size(Some(self.datagram_receive_buffer))
            .datagram_send_buffer_size(self.datagram_send_buffer)
            .initial_mtu(initial_mtu(edge_is_ipv4))
            // Loss by time alone, as RACK does (RFC 8985): a packet is lost a quarter of an RTT
            // after its acknowledgement was due. RFC 9002's three later packets acknowledged
            // took every overtaken packet for lost, and quinn-proto 0.11 never undoes the
            // window cut a spurious loss made: with 1% of packets overtaking others, 8 MB took
            // 7 s instead of 0.5 (quic_lossy_transfer.rs).
            .packet_threshold(u32::MAX)
            .time_threshold(5.0 / 4.0)
            // Refitted to the path as it goes (send_window.rs).
            .send_window(super::send_window::CEILING)
            // quinn's Cubic, watched for what cloudflared's metrics report (congestion.rs),
            // opened for one packet when ACKs are owed and held (ack_probe.rs).
            .congestion_controller_factory(Arc::new(super::congestion::WatchedCubic::default()));
        if !self.mtu_discovery {
            t.mtu_discovery_config(None);
        }
        Arc::new(t)
    }
}
