//! What travels on QUIC streams: the preambles that tell data streams from RPC streams, and the
//! `ConnectRequest` / `ConnectResponse` that open a data stream, and the WebSocket framing of
//! TCP-over-WebSocket origins.

pub mod connect;
pub mod http1;
pub mod preamble;
pub mod proxy;
pub mod socks;
pub mod tag;
pub mod websocket;
