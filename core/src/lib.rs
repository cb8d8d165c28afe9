//! burrow-core: the sans-IO heart of burrow, a Cloudflare Tunnel transport.
//!
//! Nothing in this crate touches sockets, clocks, threads or an async runtime. Codecs decode in
//! place over borrowed slices and encode into caller-provided buffers.

pub mod connector;
pub mod control;
pub mod datagram;
pub mod edge;
pub mod flow;
pub mod http2;
pub mod icmp;
pub mod ingress;
pub mod log_budget;
pub mod management;
pub mod quic;
pub mod receive_window;
pub mod rpc;
pub mod rpc_stream;
pub mod schema;
pub mod session;
#[cfg(feature = "cli")]
pub mod settings;
pub mod stream;
pub mod tunnel;
pub mod virtual_dns;
