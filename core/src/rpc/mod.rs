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

/// Bytes received on an RPC stream, cut into messages as they complete.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    buf: Vec<u8>,
}

impl Inbox {
    /// Appends `bytes` and hands every complete message to `handle`, in order; consumed bytes
    /// are dropped even if a handler fails (the stream is then beyond saving anyway).
    pub(crate) fn feed<E: From<frame::DecodeError>>(
        &mut self,
        bytes: &[u8],
        mut handle: impl FnMut(message::Message<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        self.buf.extend_from_slice(bytes);
        let mut consumed = 0;
        let result = loop {
            let rest = &self.buf[consumed..];
            match message::decode_message(rest, &frame::FrameLimits::RPC) {
                Ok(Some((msg, n))) => {
                    consumed += n;
                    if let Err(e) = msg.message().map_err(E::from).and_then(&mut handle) {
                        break Err(e);
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e.into()),
            }
        };
        self.buf.drain(..consumed);
        result
    }
}

/// A side that serves one capability as its bootstrap interface (the edge on the control
/// stream, the connector on RPC streams): answers the bootstrap and recognises calls to it.
#[derive(Debug, Default)]
pub(crate) struct BootstrapServer {
    question: Option<u32>,
}

impl BootstrapServer {
    /// Export id of the one capability served.
    pub(crate) const EXPORT_ID: u32 = 0;

    /// Answers a `Bootstrap` with our capability.
    pub(crate) fn answer(
        &mut self,
        question_id: u32,
        out: &mut Vec<u8>,
    ) -> Result<(), frame::EncodeError> {
        self.question = Some(question_id);
        message::encode_bootstrap_return(question_id, Self::EXPORT_ID, out)
    }

    /// Whether a call goes to our capability: imported, or pipelined on the bootstrap answer.
    pub(crate) fn is_target(&self, target: &message::MessageTarget<'_>) -> bool {
        match target {
            message::MessageTarget::ImportedCap(id) => *id == Self::EXPORT_ID,
            message::MessageTarget::PromisedAnswer(p) => {
                Some(p.question_id) == self.question && p.transform.is_empty()
            }
        }
    }

    /// Answers question `q` with an exception.
    pub(crate) fn refuse(
        q: u32,
        kind: message::ExceptionType,
        reason: &str,
        out: &mut Vec<u8>,
    ) -> Result<(), frame::EncodeError> {
        message::encode_exception_return(q, &message::Exception { reason, kind }, out)
    }
}

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
