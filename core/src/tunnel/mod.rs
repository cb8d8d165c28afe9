//! Tunnel connections over QUIC, as pure state machines: [`connector::ConnectorConnection`]
//! (one HA connection of cloudflared's side) and [`edge::EdgeEndpoint`] (the edge's side, for
//! tests and self-hosting).
//!
//! The shape is quinn-proto's: feed UDP datagrams and timer expiries in (`handle_*`), then drain
//! `poll_transmit`, `poll_event` and `poll_timeout` until they are empty. Nothing here owns a
//! socket or a clock. I/O is batched as quinn does it: `handle_received` takes a GRO buffer of
//! several datagrams ([`Received`]) and `poll_transmit` may return a GSO batch ([`Transmit`]).

mod body_sink;
pub mod connector;
pub mod data;
pub mod dial;
pub mod edge;
pub mod edge_http2;
pub mod edge_transports;
pub mod happy_eyeballs;
pub mod http2_link;
pub mod protocol;
mod quic_io;
pub mod registrations;
pub mod requests;
mod rx;
pub mod supervisor;
pub mod udp;

pub(crate) use body_sink::append_pieces;
pub use body_sink::BodySink;
pub use quic_io::{DatagramError, EcnCodepoint, Received, Transmit};
