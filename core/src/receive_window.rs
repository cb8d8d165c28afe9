//! Connection receive windows that leave room beside streams whose reader takes nothing.
//!
//! QUIC and HTTP/2 count what a stream holds unread against its connection's receive window,
//! and a stream may hold its whole stream window. A connection window only a few stream
//! windows wide is used up by a few streams whose reader takes nothing (an eyeball on a slow
//! link or one that stopped reading, an origin that does not read a request body): no other
//! stream gets a byte, new requests' included. Five such streams did it on QUIC (6 MiB each
//! of 30 MiB), one on HTTP/2 (1 MiB of 1 MiB). So the connection window is wider by `held`
//! stream windows: that many such streams leave the others the base. What a connection holds
//! unread stays bounded by the smaller of that window and its open streams' windows; HTTP/2
//! proxies size theirs the same way (Go's HTTP/2 transport gives 1 GiB per connection, 4 MiB
//! per stream). Past `held` such streams, the edge resets the one that waited longest on its
//! eyeball (`edge::streams`).

/// Held streams at the edge, where the readers are eyeballs, who are the public.
pub const EDGE_HELD_STREAMS: u32 = 32;
/// Held streams at the connector, where the readers are origins; small, for small boxes.
pub const CONNECTOR_HELD_STREAMS: u32 = 8;

/// A connection window: `base` for the streams that read, plus `held` stream windows.
pub fn connection_window(base: u64, stream: u64, held: u32) -> u64 {
    base.saturating_add(stream.saturating_mul(u64::from(held)))
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
