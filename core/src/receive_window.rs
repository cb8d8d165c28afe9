//! Connection receive windows that leave room beside streams whose reader takes nothing.
//!
//! QUIC and HTTP/2 count what a stream holds unread against its connection's receive window,
//! and a stream may hold its whole stream window. A connection window only a few stream
//! windows wide is used up by a few streams whose reader takes nothing (an eyeball on a slow
//! link or one that stopped reading, an origin that does not read a request body): no other
//! stream gets a byte, new requests' included. Five such streams did it on QUIC (6 MiB each
//! of 30 MiB), one on HTTP/2 (1 MiB of 1 MiB). So the connection window makes room for up to
//! `held` such streams, a stream window each, beside the base the others share; HTTP/2
//! proxies size theirs the same way (Go's HTTP/2 transport gives 1 GiB per connection, 4 MiB
//! per stream). Past `held` such streams, the edge resets the one that waited longest on its
//! eyeball (`edge::streams`).
//!
//! HTTP/2's windows are small, so they are that wide from the start. QUIC's grow
//! ([`GrowingWindow`]), one stream window per stream found held, so that a busy connection
//! whose readers all keep up holds no more than the base: a window 222 MiB wide from the
//! start let 40 fast downloads through an edge short of CPU hold 300-470 MB (95 MB with 30
//! MiB).

use quinn_proto::VarInt;

use crate::quic::transport::QuicSettings;

/// Held streams at the edge, where the readers are eyeballs, who are the public.
pub const EDGE_HELD_STREAMS: u32 = 32;
/// Held streams at the connector, where the readers are origins; small, for small boxes.
pub const CONNECTOR_HELD_STREAMS: u32 = 8;

/// A connection window: `base` for the streams that read, plus `held` stream windows.
pub fn connection_window(base: u64, stream: u64, held: u32) -> u64 {
    base.saturating_add(stream.saturating_mul(u64::from(held)))
}

/// A QUIC connection's receive window, grown by a stream window for each stream found held,
/// up to a bound, and never narrowed: quinn takes a narrower window back only from reads to
/// come, so widening it again before they came would grant more than meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrowingWindow {
    base: u64,
    stream: u64,
    max_held: u32,
    held: u32,
}

impl GrowingWindow {
    /// The window of connections with these settings: their base, growing up to
    /// `held_streams` stream windows wider.
    pub fn new(settings: &QuicSettings) -> Self {
        Self {
            base: u64::from(settings.connection_receive_window),
            stream: u64::from(settings.stream_receive_window),
            max_held: settings.held_streams,
            held: 0,
        }
    }

    /// Streams it makes room for now.
    pub fn held(&self) -> u32 {
        self.held
    }

    /// Makes room in `conn`'s window for `held` held streams (up to the bound); true if it
    /// grew.
    pub fn hold(&mut self, conn: &mut quinn_proto::Connection, held: u32) -> bool {
        let held = held.min(self.max_held);
        if held <= self.held {
            return false;
        }
        self.held = held;
        let window = connection_window(self.base, self.stream, held);
        conn.set_receive_window(VarInt::from_u64(window).unwrap_or(VarInt::MAX));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_is_the_base_plus_the_held_stream_windows() {
        assert_eq!(connection_window(30, 6, 0), 30);
        assert_eq!(connection_window(30, 6, 32), 222);
        assert_eq!(connection_window(u64::MAX, u64::MAX, 2), u64::MAX);
    }
}
