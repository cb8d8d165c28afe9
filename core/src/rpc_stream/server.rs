//! The serving side of an RPC stream (its signature has already been read by the caller). It
//! answers the peer's bootstrap with the one capability this side serves:
//!
//! - the connector, on edge-opened streams: `CloudflaredServer`. `updateConfiguration` is
//!   handed to the caller, which applies the version rule with [`super::ConfigVersions`]
//!   (process-wide, so above any one stream) and answers. The datagram-v2 session methods are
//!   served on a v2 connection and refused, with cloudflared's texts, on a v3 one.
//! - the edge, on connector-opened streams: `SessionManager`, of which the connector only
//!   calls `unregisterUdpSession` (a datagram-v2 session ended on its side).
//!
//! Malformed call params are answered with an exception (cloudflared's text where it has one);
//! only a broken RPC conversation fails the stream.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use tracing::debug;

use super::ConfigUpdateResult;
use crate::control::{ApiError, ControlError};
use crate::rpc::configuration::{UpdateConfiguration, UpdateConfigurationResponse};
use crate::rpc::message::{self, ExceptionType, Message};
use crate::rpc::method::{Empty, Method};
use crate::rpc::session::{
    RegisterUdpSession, RegisterUdpSessionRequest, RegisterUdpSessionResponse,
    UnregisterUdpSession, UnregisterUdpSessionRequest,
};
use crate::rpc::{BootstrapServer, Inbox};
use crate::session::{DatagramVersion, SessionId, SessionMethod};

/// cloudflared's answer to `registerUdpSession` on a datagram-v3 connection (in `result.err`).
pub const V3_REFUSES_REGISTER: &str = "datagram v3 does not support RegisterUdpSession RPC";
/// cloudflared's exception for `unregisterUdpSession` on a datagram-v3 connection.
pub const V3_REFUSES_UNREGISTER: &str = "datagram v3 does not support UnregisterUdpSession RPC";
/// cloudflared's `registerUdpSession` answer (in `result.err`) for a `dstIp` that is neither 4
/// nor 16 bytes (`errInvalidDestinationIP`).
pub const INVALID_DESTINATION_IP: &str = "unable to parse destination IP";
/// cloudflared's `registerUdpSession` exception for a null `dstIp` (`"%v is not valid IP"` of a
/// nil byte slice).
pub const NULL_DESTINATION_IP: &str = "[] is not valid IP";

/// cloudflared's exception for a session id that is not 16 bytes (google/uuid `FromBytes`).
pub fn invalid_uuid(len: usize) -> String {
    format!("invalid UUID (got {len} bytes)")
}

/// What the peer asked on the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpcStreamEvent {
    /// New remote configuration offered; answer with [`RpcStreamServer::respond_configuration`].
    ConfigurationOffered {
        /// Its version.
        version: i32,
        /// The configuration JSON.
        config: Vec<u8>,
    },
    /// The edge asked for a datagram-v2 session method on a v3 connection; refused.
    SessionMethodRefused(SessionMethod),
    /// The edge asks for a datagram-v2 session (validated: 16-byte id, 4- or 16-byte address,
    /// IPv4-mapped read as IPv4); answer with [`RpcStreamServer::respond_register_udp_session`].
    RegisterUdpSession {
        /// The session.
        id: SessionId,
        /// The origin it is for.
        dest: SocketAddr,
        /// `closeAfterIdleHint` in nanoseconds (0 or below: the default).
        idle_hint_nanos: i64,
        /// Jaeger trace context, or empty.
        trace_context: String,
    },
    /// The peer ended a datagram-v2 session (already answered).
    UnregisterUdpSession {
        /// The session.
        id: SessionId,
        /// Why, in the peer's words.
        message: String,
    },
    /// A call was refused for its parameters (already answered).
    CallRefused(CallRefusal),
}

/// Why a call's parameters were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallRefusal {
    /// `registerUdpSession` named a destination IP that is not 4 or 16 bytes (cloudflared:
    /// "Failed to parse destination proxy IP").
    DestinationIp {
        /// The answer sent back.
        error: &'static str,
    },
    /// Parameters cloudflared's handler rejects, answered with an exception.
    BadParams {
        /// The method called.
        method: &'static str,
        /// Why.
        reason: String,
    },
}

impl std::fmt::Display for CallRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::DestinationIp { error } => {
                write!(f, "Failed to parse destination proxy IP: {error}")
            }
            Self::BadParams { method, reason } => write!(f, "refused {method}: {reason}"),
        }
    }
}

/// Which capability this side serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The connector's `CloudflaredServer`, on a connection of this datagram version.
    Connector(DatagramVersion),
    /// The edge's `SessionManager`.
    Edge,
}

/// Serves one RPC stream the peer opened.
#[derive(Debug)]
pub struct RpcStreamServer {
    inbox: Inbox,
    conv: Serving,
}

#[derive(Debug)]
struct Serving {
    role: Role,
    outbox: Vec<u8>,
    bootstrap: BootstrapServer,
    pending_configuration: Option<u32>,
    pending_registration: Option<u32>,
    /// Calls answered so far.
    answered: u32,
    events: VecDeque<RpcStreamEvent>,
}

impl RpcStreamServer {
    /// The connector's server for an edge-opened stream on a connection of `version`.
    pub fn connector(version: DatagramVersion) -> Self {
        Self::with_role(Role::Connector(version))
    }

    /// The edge's server for a connector-opened stream.
    pub fn edge() -> Self {
        Self::with_role(Role::Edge)
    }

    fn with_role(role: Role) -> Self {
        Self {
            inbox: Inbox::default(),
            conv: Serving {
                role,
                outbox: Vec::new(),
                bootstrap: BootstrapServer::default(),
                pending_configuration: None,
                pending_registration: None,
                answered: 0,
                events: VecDeque::new(),
            },
        }
    }

    /// Feeds bytes read from the stream (after its signature).
    pub fn handle_bytes(&mut self, bytes: &[u8]) -> Result<(), ControlError> {
        let conv = &mut self.conv;
        self.inbox.feed(bytes, |m| conv.on_message(m))
    }

    /// Answers the pending `updateConfiguration`.
    pub fn respond_configuration(&mut self, result: &ConfigUpdateResult) -> Result<(), ApiError> {
        let q = self
            .conv
            .pending_configuration
            .take()
            .ok_or(ApiError::NothingPending("configuration update"))?;
        let response = UpdateConfigurationResponse {
            latest_applied_version: result.latest_applied_version,
            err: result.error.as_deref().unwrap_or(""),
        };
        self.conv.answered += 1;
        message::encode_return::<UpdateConfiguration>(q, &response, &mut self.conv.outbox)
            .map_err(|e| ApiError::Encode(format!("updateConfiguration results: {e}")))
    }

    /// Answers the pending `registerUdpSession`: `Err(text)` goes into the response's `err`.
    pub fn respond_register_udp_session(
        &mut self,
        result: Result<(), String>,
    ) -> Result<(), ApiError> {
        let q = self
            .conv
            .pending_registration
            .take()
            .ok_or(ApiError::NothingPending("UDP session registration"))?;
        let err = match &result {
            Ok(()) => "",
            Err(e) => e.as_str(),
        };
        self.conv
            .register_answer(q, err)
            .map_err(|e| ApiError::Encode(format!("registerUdpSession results: {e}")))
    }

    /// Bytes to write to the stream, if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        let out = &mut self.conv.outbox;
        (!out.is_empty()).then(|| std::mem::take(out))
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<RpcStreamEvent> {
        self.conv.events.pop_front()
    }

    /// Whether the stream has served its purpose: a call was answered and none is pending
    /// (the stream can be finished once the answer is written).
    pub fn is_settled(&self) -> bool {
        let c = &self.conv;
        c.answered > 0 && c.pending_configuration.is_none() && c.pending_registration.is_none()
    }
}

/// What to do with a `registerUdpSession` call, cloudflared's checks applied in its order.
enum Registration {
    /// Hand it to the session manager.
    Valid(SessionId, SocketAddr),
    /// Answer at once with this text in `result.err`.
    Refused(&'static str),
    /// Answer with an exception.
    Exception(String),
}

impl Registration {
    fn check(p: &RegisterUdpSessionRequest<'_>) -> Self {
        let Ok(id) = <[u8; 16]>::try_from(p.session_id) else {
            return Self::Exception(invalid_uuid(p.session_id.len()));
        };
        let Some(ip) = p.dst_ip else {
            return Self::Exception(NULL_DESTINATION_IP.to_owned());
        };
        match destination(ip) {
            Some(ip) => Self::Valid(SessionId::from_bytes(id), SocketAddr::new(ip, p.dst_port)),
            None => Self::Refused(INVALID_DESTINATION_IP),
        }
    }
}

/// Go's `dstIP.To4()` then `netip.AddrFromSlice`: 4 bytes or IPv4-mapped → IPv4, other 16
/// bytes → IPv6, any other length → none.
fn destination(ip: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(ip) {
        return Some(IpAddr::from(v4));
    }
    let v6 = Ipv6Addr::from(<[u8; 16]>::try_from(ip).ok()?);
    Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4))
}

impl Serving {
    fn on_message(&mut self, m: Message<'_>) -> Result<(), ControlError> {
        match m {
            Message::Bootstrap { question_id } => {
                Ok(self.bootstrap.answer(question_id, &mut self.outbox)?)
            }
            Message::Call(call) => self.on_call(call),
            // The peer closing its side of the conversation ends the stream; nothing to do.
            Message::Abort(_) | Message::Finish { .. } | Message::Release { .. } => Ok(()),
            other => Err(ControlError::Unexpected(format!("{other:?}"))),
        }
    }

    fn refuse(&mut self, q: u32, kind: ExceptionType, reason: &str) -> Result<(), ControlError> {
        self.answered += 1;
        Ok(BootstrapServer::refuse(q, kind, reason, &mut self.outbox)?)
    }

    fn register_answer(&mut self, q: u32, err: &str) -> Result<(), crate::rpc::frame::EncodeError> {
        self.answered += 1;
        let response = RegisterUdpSessionResponse { err, spans: &[] };
        message::encode_return::<RegisterUdpSession>(q, &response, &mut self.outbox)
    }

    fn on_call(&mut self, call: message::Call<'_>) -> Result<(), ControlError> {
        let q = call.question_id;
        if !self.bootstrap.is_target(&call.target) {
            return self.refuse(q, ExceptionType::Failed, "call to an unknown capability");
        }
        let v2 = match self.role {
            Role::Connector(v) => Some(v == DatagramVersion::V2),
            Role::Edge => None,
        };
        if call.is::<UpdateConfiguration>() && v2.is_some() {
            if self.pending_configuration.is_some() {
                return self.refuse(q, ExceptionType::Failed, "an update is already pending");
            }
            let p = call.params_of::<UpdateConfiguration>()?;
            self.pending_configuration = Some(q);
            self.events.push_back(RpcStreamEvent::ConfigurationOffered {
                version: p.version,
                config: p.config.to_vec(),
            });
        } else if call.is::<RegisterUdpSession>() && v2 == Some(false) {
            self.register_answer(q, V3_REFUSES_REGISTER)?;
            self.events.push_back(RpcStreamEvent::SessionMethodRefused(
                SessionMethod::Register,
            ));
        } else if call.is::<UnregisterUdpSession>() && v2 == Some(false) {
            self.refuse(q, ExceptionType::Failed, V3_REFUSES_UNREGISTER)?;
            self.events.push_back(RpcStreamEvent::SessionMethodRefused(
                SessionMethod::Unregister,
            ));
        } else if call.is::<RegisterUdpSession>() && v2 == Some(true) {
            self.on_register(q, &call)?;
        } else if call.is::<UnregisterUdpSession>() {
            self.on_unregister(q, &call)?;
        } else {
            return self.refuse(q, ExceptionType::Unimplemented, "method not implemented");
        }
        Ok(())
    }

    fn on_register(&mut self, q: u32, call: &message::Call<'_>) -> Result<(), ControlError> {
        if self.pending_registration.is_some() {
            return self.refuse(
                q,
                ExceptionType::Failed,
                "a registration is already pending",
            );
        }
        let p = match call.params.content::<RegisterUdpSessionRequest<'_>>() {
            Ok(p) => p,
            Err(e) => return self.bad_params::<RegisterUdpSession>(q, e.to_string()),
        };
        match Registration::check(&p) {
            Registration::Valid(id, dest) => {
                debug!(session_id = %id, %dest, idle_hint_nanos = p.close_after_idle_hint_ns, "registerUdpSession");
                self.pending_registration = Some(q);
                self.events.push_back(RpcStreamEvent::RegisterUdpSession {
                    id,
                    dest,
                    idle_hint_nanos: p.close_after_idle_hint_ns,
                    trace_context: p.trace_context.to_owned(),
                });
                Ok(())
            }
            Registration::Refused(err) => {
                debug!(dst_ip = ?p.dst_ip, error = err, "Failed to parse destination proxy IP");
                self.events
                    .push_back(RpcStreamEvent::CallRefused(CallRefusal::DestinationIp {
                        error: err,
                    }));
                Ok(self.register_answer(q, err)?)
            }
            Registration::Exception(reason) => self.bad_params::<RegisterUdpSession>(q, reason),
        }
    }

    fn on_unregister(&mut self, q: u32, call: &message::Call<'_>) -> Result<(), ControlError> {
        let p = match call.params.content::<UnregisterUdpSessionRequest<'_>>() {
            Ok(p) => p,
            Err(e) => return self.bad_params::<UnregisterUdpSession>(q, e.to_string()),
        };
        let Ok(id) = <[u8; 16]>::try_from(p.session_id) else {
            return self.bad_params::<UnregisterUdpSession>(q, invalid_uuid(p.session_id.len()));
        };
        self.answered += 1;
        message::encode_return::<UnregisterUdpSession>(q, &Empty, &mut self.outbox)?;
        self.events.push_back(RpcStreamEvent::UnregisterUdpSession {
            id: SessionId::from_bytes(id),
            message: p.message.to_owned(),
        });
        Ok(())
    }

    /// Params cloudflared's handler rejects: an exception with its reason.
    fn bad_params<M: Method>(&mut self, q: u32, reason: String) -> Result<(), ControlError> {
        self.refuse(q, ExceptionType::Failed, &reason)?;
        self.events
            .push_back(RpcStreamEvent::CallRefused(CallRefusal::BadParams {
                method: M::NAME,
                reason,
            }));
        Ok(())
    }
}
