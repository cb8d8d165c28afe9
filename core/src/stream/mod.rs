//! What travels on QUIC streams: the preambles that tell data streams from RPC streams, and the
//! `ConnectRequest` / `ConnectResponse` that open a data stream.

pub mod connect;
pub mod http1;
pub mod preamble;
pub mod proxy;
pub mod tag;
