//! The calling side of an RPC stream: one call, on a stream the caller opened. The stream
//! starts with the RPC signature, then `Bootstrap(q0)` and the call pipelined on its answer.
//!
//! The edge calls the connector's `CloudflaredServer` this way (`updateConfiguration`,
//! `registerUdpSession`, `unregisterUdpSession`); the connector calls the edge's
//! `SessionManager` (`unregisterUdpSession`, when a datagram-v2 session ends on its side).

use std::net::{IpAddr, SocketAddr};

use super::ConfigUpdateResult;
use crate::control::{ApiError, ControlError};
use crate::rpc::configuration::{UpdateConfiguration, UpdateConfigurationParams};
use crate::rpc::message::{self, Message, MessageTarget, Payload, ReturnBody};
use crate::rpc::method::Method;
use crate::rpc::session::{
    RegisterUdpSession, RegisterUdpSessionParams, UnregisterUdpSession, UnregisterUdpSessionParams,
};
use crate::rpc::Inbox;
use crate::session::SessionId;
use crate::stream::preamble::RPC_STREAM_SIGNATURE;

const BOOTSTRAP: u32 = 0;
const CALL: u32 = 1;

/// How the call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpcCallOutcome {
    /// The connector answered `updateConfiguration`.
    Configuration(ConfigUpdateResult),
    /// The connector answered `registerUdpSession`: `Err` holds the response's `err` text.
    UdpSessionRegistered(Result<(), String>),
    /// The peer acknowledged `unregisterUdpSession`.
    UdpSessionUnregistered,
    /// The call failed (exception or unusable answer).
    Failed(String),
    /// The connection closed before the call was answered (or, waiting for stream credit,
    /// before it was sent).
    ConnectionClosed,
}

/// Which method the call is, to read its results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Called {
    UpdateConfiguration,
    RegisterUdpSession,
    UnregisterUdpSession,
}

/// One call on an RPC stream we opened.
#[derive(Debug)]
pub struct RpcStreamClient {
    called: Called,
    inbox: Inbox,
    outbox: Vec<u8>,
    outcome: Option<RpcCallOutcome>,
}

impl RpcStreamClient {
    /// `updateConfiguration(version, config)` on the connector's `CloudflaredServer`.
    pub fn update_configuration(version: i32, config: &[u8]) -> Result<Self, ApiError> {
        Self::call::<UpdateConfiguration>(
            Called::UpdateConfiguration,
            &UpdateConfigurationParams { version, config },
        )
    }

    /// `registerUdpSession` on the connector's `CloudflaredServer` (datagram v2). An IPv4
    /// destination goes in its 16-byte IPv4-mapped form, as Go's `net.IP` holds it.
    pub fn register_udp_session(
        id: SessionId,
        dest: SocketAddr,
        idle_hint_nanos: i64,
        trace_context: &str,
    ) -> Result<Self, ApiError> {
        let ip = match dest.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        Self::call::<RegisterUdpSession>(
            Called::RegisterUdpSession,
            &RegisterUdpSessionParams {
                session_id: id.to_bytes(),
                dst_ip: &ip,
                dst_port: dest.port(),
                close_after_idle_hint_ns: idle_hint_nanos,
                trace_context,
            },
        )
    }

    /// `unregisterUdpSession(id, message)`: the edge on the connector's `CloudflaredServer`,
    /// or the connector on the edge's `SessionManager`.
    pub fn unregister_udp_session(id: SessionId, message: &str) -> Result<Self, ApiError> {
        Self::call::<UnregisterUdpSession>(
            Called::UnregisterUdpSession,
            &UnregisterUdpSessionParams {
                session_id: id.to_bytes(),
                message,
            },
        )
    }

    /// Starts a call of `M`, read back as `called`; the first bytes to write include the
    /// stream signature.
    pub(super) fn call<M: Method>(
        called: Called,
        params: &M::Params<'_>,
    ) -> Result<Self, ApiError> {
        let mut outbox = RPC_STREAM_SIGNATURE.to_vec();
        let encode = |e| ApiError::Encode(format!("{} call: {e}", M::NAME));
        message::encode_bootstrap(BOOTSTRAP, &mut outbox).map_err(encode)?;
        message::encode_call::<M>(
            CALL,
            &MessageTarget::bootstrap_answer(BOOTSTRAP),
            params,
            &mut outbox,
        )
        .map_err(encode)?;
        Ok(Self {
            called,
            inbox: Inbox::default(),
            outbox,
            outcome: None,
        })
    }

    /// Feeds bytes read from the stream.
    pub fn handle_bytes(&mut self, bytes: &[u8]) -> Result<(), ControlError> {
        let (called, outbox, outcome) = (self.called, &mut self.outbox, &mut self.outcome);
        self.inbox
            .feed(bytes, |m| on_message(called, m, outbox, outcome))
    }

    /// Bytes to write to the stream, if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        (!self.outbox.is_empty()).then(|| std::mem::take(&mut self.outbox))
    }

    /// The call's outcome, once answered (taken once).
    pub fn poll_outcome(&mut self) -> Option<RpcCallOutcome> {
        self.outcome.take()
    }
}

fn on_message(
    called: Called,
    m: Message<'_>,
    outbox: &mut Vec<u8>,
    outcome: &mut Option<RpcCallOutcome>,
) -> Result<(), ControlError> {
    let Message::Return(r) = m else {
        return match m {
            Message::Abort(e) => Err(ControlError::Aborted(e.reason.to_owned())),
            Message::Finish { .. } | Message::Release { .. } => Ok(()),
            other => Err(ControlError::Unexpected(format!("{other:?}"))),
        };
    };
    message::encode_finish(r.answer_id, false, outbox)?;
    match (r.answer_id, r.body) {
        (BOOTSTRAP, ReturnBody::Results(_)) => Ok(()),
        (CALL, ReturnBody::Results(p)) => {
            *outcome = Some(read_results(called, &p)?);
            Ok(())
        }
        (BOOTSTRAP | CALL, ReturnBody::Exception(e)) => {
            *outcome = Some(RpcCallOutcome::Failed(e.reason.to_owned()));
            Ok(())
        }
        (q, body) => Err(ControlError::Unexpected(format!(
            "Return {body:?} for question {q}"
        ))),
    }
}

fn read_results(called: Called, p: &Payload<'_>) -> Result<RpcCallOutcome, ControlError> {
    Ok(match called {
        Called::UpdateConfiguration => {
            let res = p.results_of::<UpdateConfiguration>()?;
            RpcCallOutcome::Configuration(ConfigUpdateResult {
                latest_applied_version: res.latest_applied_version,
                error: (!res.err.is_empty()).then(|| res.err.to_owned()),
            })
        }
        Called::RegisterUdpSession => {
            let res = p.results_of::<RegisterUdpSession>()?;
            RpcCallOutcome::UdpSessionRegistered(match res.err {
                "" => Ok(()),
                err => Err(err.to_owned()),
            })
        }
        Called::UnregisterUdpSession => RpcCallOutcome::UdpSessionUnregistered,
    })
}
