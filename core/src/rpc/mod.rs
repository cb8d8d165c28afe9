//! Cap'n Proto RPC, sans-IO: framing, the RPC protocol messages, and the tunnel's methods.
//!
//! - [`frame`]: stream framing with limits ([`frame::frame_len`]), shared error types.
//! - [`message`]: the RPC protocol (`Bootstrap`, `Call`, `Return`, `Finish`, `Abort`, ...):
//!   [`message::decode_message`] and the `encode_*` functions.
//! - [`method`]: the [`method::Method`] / [`method::Content`] traits tying a method's IDs to its
//!   typed params and results.
//! - [`registration`], [`session`], [`configuration`]: the methods of `RegistrationServer`
//!   (control stream), `SessionManager` and `ConfigurationManager` (RPC streams).
//!
//! A state machine feeds received bytes to `decode_message` until it returns a message and the
//! number of bytes it took, reads what it needs, then drops the message and those bytes; what it
//! sends it appends to an output `Vec<u8>` with the encoders.

pub mod configuration;
pub mod frame;
pub mod message;
pub mod method;
pub mod registration;
pub mod session;

use capnp::traits::HasTypeId;

use crate::schema::tunnelrpc_capnp::cloudflared_server;

/// Interface ID of `CloudflaredServer` (`0xf548cef9dea2a4a1`), the capability the connector
/// serves on edge-opened RPC streams. It has no methods of its own: calls carry the
/// `SessionManager` or `ConfigurationManager` interface ID.
pub const CLOUDFLARED_SERVER_INTERFACE_ID: u64 = <cloudflared_server::Client as HasTypeId>::TYPE_ID;

/// Whether two lists read from messages hold equal items; an unreadable item equals nothing.
pub(crate) fn same_items<T: PartialEq, E>(
    mut a: impl Iterator<Item = Result<T, E>>,
    mut b: impl Iterator<Item = Result<T, E>>,
) -> bool {
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(Ok(x)), Some(Ok(y))) if x == y => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cloudflared_server_id_is_cloudflareds() {
        assert_eq!(super::CLOUDFLARED_SERVER_INTERFACE_ID, 0xf548cef9dea2a4a1);
    }
}
