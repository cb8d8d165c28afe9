//! The HTTP/2 transport (PROTOCOL.md C§1): the tunnel over TLS on TCP, for networks that block
//! QUIC's UDP. The connector dials and is the TLS client but the HTTP/2 *server*; the edge opens
//! every stream, the control stream included, and marks what each is for with internal headers.
//!
//! Both roles are byte-in/byte-out machines ([`Connection`]): rustls over byte buffers, and the
//! `h2` crate driven over that in-memory transport with a no-op waker (see [`machine`]). No
//! socket, clock, thread or runtime: the driver feeds [`Input`], drains [`Output`].
//!
//! - [`connector::ConnectorConnection`]: cloudflared's side, serving what the edge sends.
//! - [`edge::EdgeConnection`]: the edge's side, opening streams toward a connector.
//! - [`headers`], [`request`], [`response`]: cloudflared's header conventions, shared by both.
//! - [`origin::Http2Origin`]: not the tunnel but an origin spoken to in HTTP/2 (`http2Origin`),
//!   on the same machine.
//!
//! There are no datagrams on HTTP/2 (no UDP, ICMP or private DNS, C§1.1).

mod client;
pub mod configuration;
pub mod connector;
pub mod edge;
pub mod headers;
pub mod machine;
pub mod origin;
mod pipe;
pub mod request;
pub mod response;
pub mod streams;
pub mod tls;

pub use connector::ConnectorConnection;
pub use edge::EdgeConnection;
pub use machine::{Connection, ConnectionError, Event, IncomingRequest, Input, Limits, Output};
pub use request::RequestKind;
pub use response::{ConnectorResponse, ResponseMeta};
pub use streams::{ApiError, Read, StreamEvent, StreamId};

#[cfg(test)]
pub(crate) mod tests;
