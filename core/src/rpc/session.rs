//! `SessionManager`: datagram-v2 UDP session registration over RPC streams.
//!
//! The edge calls `registerUdpSession` / `unregisterUdpSession` on the connector's
//! `CloudflaredServer` (an edge-opened RPC stream); the connector calls `unregisterUdpSession` on
//! the edge's `SessionManager` (a connector-opened RPC stream) when a session ends locally.

use capnp::any_pointer;
use capnp::traits::HasTypeId;

use super::frame::{
    check_len, data_words, malformed, read_array, read_data, read_text, text_words, write_data,
    write_text, DecodeError, EncodeError, MAX_LIST_LEN,
};
use super::method::{Content, Empty, Method};
use crate::schema::tunnelrpc_capnp::session_manager;

/// Interface ID of `SessionManager` (`0x839445a59fb01686`).
pub const INTERFACE_ID: u64 = <session_manager::Client as HasTypeId>::TYPE_ID;

/// `registerUdpSession @0 (...) -> (result :RegisterUdpSessionResponse)`.
#[derive(Debug, Clone, Copy)]
pub struct RegisterUdpSession;

impl Method for RegisterUdpSession {
    const INTERFACE_ID: u64 = INTERFACE_ID;
    const METHOD_ID: u16 = 0;
    const NAME: &'static str = "registerUdpSession";
    type Params<'a> = RegisterUdpSessionParams<'a>;
    type Results<'a> = RegisterUdpSessionResponse<'a>;
}

/// `unregisterUdpSession @1 (sessionId, message) -> ()`.
#[derive(Debug, Clone, Copy)]
pub struct UnregisterUdpSession;

impl Method for UnregisterUdpSession {
    const INTERFACE_ID: u64 = INTERFACE_ID;
    const METHOD_ID: u16 = 1;
    const NAME: &'static str = "unregisterUdpSession";
    type Params<'a> = UnregisterUdpSessionParams<'a>;
    type Results<'a> = Empty;
}

/// Params of `registerUdpSession`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegisterUdpSessionParams<'a> {
    /// Session UUID, raw bytes (cloudflared rejects other lengths, and so does this decoder).
    pub session_id: [u8; 16],
    /// Destination IP, 4 or 16 bytes (the handler validates it, as cloudflared does).
    pub dst_ip: &'a [u8],
    /// Destination port.
    pub dst_port: u16,
    /// Idle timeout hint in nanoseconds; 0 means the default (210 s).
    pub close_after_idle_hint_ns: i64,
    /// Jaeger trace context, or empty.
    pub trace_context: &'a str,
}

impl<'a> Content<'a> for RegisterUdpSessionParams<'a> {
    fn read(content: any_pointer::Reader<'a>) -> Result<Self, DecodeError> {
        let p = content
            .get_as::<session_manager::register_udp_session_params::Reader<'a>>()
            .map_err(malformed("registerUdpSession params"))?;
        Ok(RegisterUdpSessionParams {
            session_id: read_array(p.get_session_id(), "registerUdpSession.sessionId")?,
            dst_ip: read_data(p.get_dst_ip(), "registerUdpSession.dstIp")?,
            dst_port: p.get_dst_port(),
            close_after_idle_hint_ns: p.get_close_after_idle_hint(),
            trace_context: read_text(p.get_trace_context(), "registerUdpSession.traceContext")?,
        })
    }

    fn words(&self) -> usize {
        // Struct 2+3, 16-byte id.
        7 + data_words(self.dst_ip) + text_words(self.trace_context)
    }

    fn write(&self, content: any_pointer::Builder<'_>) -> Result<(), EncodeError> {
        let mut p = content.init_as::<session_manager::register_udp_session_params::Builder<'_>>();
        p.set_session_id(&self.session_id);
        write_data("registerUdpSession.dstIp", self.dst_ip, |v| p.set_dst_ip(v))?;
        p.set_dst_port(self.dst_port);
        p.set_close_after_idle_hint(self.close_after_idle_hint_ns);
        write_text("registerUdpSession.traceContext", self.trace_context, |v| {
            p.set_trace_context(v)
        })
    }
}

/// Result of `registerUdpSession`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegisterUdpSessionResponse<'a> {
    /// Why the session was not registered; empty on success.
    pub err: &'a str,
    /// OTLP protobuf spans when the request was traced, else empty.
    pub spans: &'a [u8],
}

impl<'a> Content<'a> for RegisterUdpSessionResponse<'a> {
    fn read(content: any_pointer::Reader<'a>) -> Result<Self, DecodeError> {
        let r = content
            .get_as::<session_manager::register_udp_session_results::Reader<'a>>()
            .map_err(malformed("registerUdpSession results"))?
            .get_result()
            .map_err(malformed("registerUdpSession.result"))?;
        Ok(RegisterUdpSessionResponse {
            err: read_text(r.get_err(), "RegisterUdpSessionResponse.err")?,
            spans: read_data(r.get_spans(), "RegisterUdpSessionResponse.spans")?,
        })
    }

    fn words(&self) -> usize {
        // Results 0+1, response 0+2.
        3 + text_words(self.err) + data_words(self.spans)
    }

    fn write(&self, content: any_pointer::Builder<'_>) -> Result<(), EncodeError> {
        let results =
            content.init_as::<session_manager::register_udp_session_results::Builder<'_>>();
        let mut r = results.init_result();
        write_text("RegisterUdpSessionResponse.err", self.err, |v| r.set_err(v))?;
        write_data("RegisterUdpSessionResponse.spans", self.spans, |v| {
            r.set_spans(v)
        })
    }
}

/// Params of `unregisterUdpSession`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnregisterUdpSessionParams<'a> {
    /// Session UUID, raw bytes.
    pub session_id: [u8; 16],
    /// Why the session ended, e.g. `terminated without error`.
    pub message: &'a str,
}

impl<'a> Content<'a> for UnregisterUdpSessionParams<'a> {
    fn read(content: any_pointer::Reader<'a>) -> Result<Self, DecodeError> {
        let p = content
            .get_as::<session_manager::unregister_udp_session_params::Reader<'a>>()
            .map_err(malformed("unregisterUdpSession params"))?;
        Ok(UnregisterUdpSessionParams {
            session_id: read_array(p.get_session_id(), "unregisterUdpSession.sessionId")?,
            message: read_text(p.get_message(), "unregisterUdpSession.message")?,
        })
    }

    fn words(&self) -> usize {
        // Struct 0+2, 16-byte id.
        4 + text_words(self.message)
    }

    fn write(&self, content: any_pointer::Builder<'_>) -> Result<(), EncodeError> {
        let mut p =
            content.init_as::<session_manager::unregister_udp_session_params::Builder<'_>>();
        p.set_session_id(&self.session_id);
        write_text("unregisterUdpSession.message", self.message, |v| {
            p.set_message(v)
        })
    }
}

/// `registerUdpSession` params exactly as received, before cloudflared's handler validates them:
/// a session id of any length and a `dstIp` that may be null. Servers read this (to answer bad
/// input with cloudflared's texts instead of failing the stream); it also encodes such input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegisterUdpSessionRequest<'a> {
    /// Session UUID bytes, unchecked.
    pub session_id: &'a [u8],
    /// Destination IP bytes; `None` for a null pointer.
    pub dst_ip: Option<&'a [u8]>,
    /// Destination port.
    pub dst_port: u16,
    /// Idle timeout hint in nanoseconds.
    pub close_after_idle_hint_ns: i64,
    /// Jaeger trace context, or empty.
    pub trace_context: &'a str,
}

impl<'a> Content<'a> for RegisterUdpSessionRequest<'a> {
    fn read(content: any_pointer::Reader<'a>) -> Result<Self, DecodeError> {
        let p = content
            .get_as::<session_manager::register_udp_session_params::Reader<'a>>()
            .map_err(malformed("registerUdpSession params"))?;
        let dst_ip = if p.has_dst_ip() {
            Some(read_data(p.get_dst_ip(), "registerUdpSession.dstIp")?)
        } else {
            None
        };
        Ok(RegisterUdpSessionRequest {
            session_id: read_data(p.get_session_id(), "registerUdpSession.sessionId")?,
            dst_ip,
            dst_port: p.get_dst_port(),
            close_after_idle_hint_ns: p.get_close_after_idle_hint(),
            trace_context: read_text(p.get_trace_context(), "registerUdpSession.traceContext")?,
        })
    }

    fn words(&self) -> usize {
        5 + data_words(self.session_id)
            + data_words(self.dst_ip.unwrap_or_default())
            + text_words(self.trace_context)
    }

    fn write(&self, content: any_pointer::Builder<'_>) -> Result<(), EncodeError> {
        let mut p = content.init_as::<session_manager::register_udp_session_params::Builder<'_>>();
        write_data("registerUdpSession.sessionId", self.session_id, |v| {
            p.set_session_id(v)
        })?;
        if let Some(ip) = self.dst_ip {
            // Set even when empty: an empty `dstIp` and a null one get different answers.
            check_len("registerUdpSession.dstIp", ip.len(), MAX_LIST_LEN)?;
            p.set_dst_ip(ip);
        }
        p.set_dst_port(self.dst_port);
        p.set_close_after_idle_hint(self.close_after_idle_hint_ns);
        write_text("registerUdpSession.traceContext", self.trace_context, |v| {
            p.set_trace_context(v)
        })
    }
}

/// `unregisterUdpSession` params exactly as received: a session id of any length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnregisterUdpSessionRequest<'a> {
    /// Session UUID bytes, unchecked.
    pub session_id: &'a [u8],
    /// Why the session ended.
    pub message: &'a str,
}

impl<'a> Content<'a> for UnregisterUdpSessionRequest<'a> {
    fn read(content: any_pointer::Reader<'a>) -> Result<Self, DecodeError> {
        let p = content
            .get_as::<session_manager::unregister_udp_session_params::Reader<'a>>()
            .map_err(malformed("unregisterUdpSession params"))?;
        Ok(UnregisterUdpSessionRequest {
            session_id: read_data(p.get_session_id(), "unregisterUdpSession.sessionId")?,
            message: read_text(p.get_message(), "unregisterUdpSession.message")?,
        })
    }

    fn words(&self) -> usize {
        2 + data_words(self.session_id) + text_words(self.message)
    }

    fn write(&self, content: any_pointer::Builder<'_>) -> Result<(), EncodeError> {
        let mut p =
            content.init_as::<session_manager::unregister_udp_session_params::Builder<'_>>();
        write_data("unregisterUdpSession.sessionId", self.session_id, |v| {
            p.set_session_id(v)
        })?;
        write_text("unregisterUdpSession.message", self.message, |v| {
            p.set_message(v)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_id_is_cloudflareds() {
        assert_eq!(INTERFACE_ID, 0x839445a59fb01686);
    }
}
