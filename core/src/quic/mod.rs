//! QUIC as the tunnel uses it: TLS 1.3 with ALPN `argotunnel`, datagrams on, and the transport
//! settings cloudflared negotiates. quinn-proto is the (sans-IO) QUIC implementation; this
//! module only configures it.

pub mod ack_probe;
pub mod client_metrics;
pub mod congestion;
pub mod send_window;
pub mod tls;
pub mod transport;

/// ALPN protocol id of a tunnel connection.
pub const ALPN: &[u8] = b"argotunnel";
/// SNI the connector sends for tunnel connections (also with a static `--edge`).
pub const SERVER_NAME: &str = "quic.cftunnel.com";
