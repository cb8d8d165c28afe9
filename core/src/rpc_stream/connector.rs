//! The connector's side of an RPC stream: it serves `CloudflaredServer` as its bootstrap
//! capability (the stream's signature has already been read by the caller).
//!
//! `updateConfiguration` is handed to the caller, which applies the version rule with
//! [`super::ConfigVersions`] (process-wide, so above any one stream) and answers. The datagram-v2
//! session methods are refused exactly as cloudflared refuses them on a datagram-v3 connection.

use std::collections::VecDeque;

use super::ConfigUpdateResult;
use crate::control::{ApiError, ControlError};
use crate::rpc::configuration::{UpdateConfiguration, UpdateConfigurationResponse};
use crate::rpc::message::{self, ExceptionType, Message};
use crate::rpc::session::{RegisterUdpSession, RegisterUdpSessionResponse, UnregisterUdpSession};
use crate::rpc::{BootstrapServer, Inbox};
/// cloudflared's answer to `registerUdpSession` on a datagram-v3 connection (in `result.err`).
pub const V3_REFUSES_REGISTER: &str = "datagram v3 does not support RegisterUdpSession RPC";
/// cloudflared's exception for `unregisterUdpSession` on a datagram-v3 connection.
pub const V3_REFUSES_UNREGISTER: &str = "datagram v3 does not support UnregisterUdpSession RPC";

/// What the edge asked on the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpcStreamEvent {
    /// New remote configuration offered; answer with [`RpcStreamServer::respond_configuration`].
    ConfigurationOffered {
        /// Its version.
        version: i32,
        /// The configuration JSON.
        config: Vec<u8>,
    },
    /// The edge asked for a datagram-v2 session method, refused as on a v3 connection.
    SessionMethodRefused(&'static str),
}

/// Serves one edge-opened RPC stream.
#[derive(Debug, Default)]
pub struct RpcStreamServer {
    inbox: Inbox,
    conv: Serving,
}

#[derive(Debug, Default)]
struct Serving {
    outbox: Vec<u8>,
    bootstrap: BootstrapServer,
    pending_configuration: Option<u32>,
    events: VecDeque<RpcStreamEvent>,
}

impl RpcStreamServer {
    /// A server waiting for the edge's bootstrap.
    pub fn new() -> Self {
        Self::default()
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
        message::encode_return::<UpdateConfiguration>(q, &response, &mut self.conv.outbox)
            .map_err(|e| ApiError::Encode(format!("updateConfiguration results: {e}")))
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
}

impl Serving {
    fn on_message(&mut self, m: Message<'_>) -> Result<(), ControlError> {
        match m {
            Message::Bootstrap { question_id } => {
                Ok(self.bootstrap.answer(question_id, &mut self.outbox)?)
            }
            Message::Call(call) => self.on_call(call),
            // The edge closing its side of the conversation ends the stream; nothing to do.
            Message::Abort(_) | Message::Finish { .. } | Message::Release { .. } => Ok(()),
            other => Err(ControlError::Unexpected(format!("{other:?}"))),
        }
    }

    fn refuse(&mut self, q: u32, kind: ExceptionType, reason: &str) -> Result<(), ControlError> {
        Ok(BootstrapServer::refuse(q, kind, reason, &mut self.outbox)?)
    }

    fn on_call(&mut self, call: message::Call<'_>) -> Result<(), ControlError> {
        let q = call.question_id;
        if !self.bootstrap.is_target(&call.target) {
            return self.refuse(q, ExceptionType::Failed, "call to an unknown capability");
        }
        if call.is::<UpdateConfiguration>() {
            if self.pending_configuration.is_some() {
                return self.refuse(q, ExceptionType::Failed, "an update is already pending");
            }
            let p = call.params_of::<UpdateConfiguration>()?;
            self.pending_configuration = Some(q);
            self.events.push_back(RpcStreamEvent::ConfigurationOffered {
                version: p.version,
                config: p.config.to_vec(),
            });
        } else if call.is::<RegisterUdpSession>() {
            let refusal = RegisterUdpSessionResponse {
                err: V3_REFUSES_REGISTER,
                spans: &[],
            };
            message::encode_return::<RegisterUdpSession>(q, &refusal, &mut self.outbox)?;
            self.events
                .push_back(RpcStreamEvent::SessionMethodRefused("registerUdpSession"));
        } else if call.is::<UnregisterUdpSession>() {
            self.refuse(q, ExceptionType::Failed, V3_REFUSES_UNREGISTER)?;
            self.events
                .push_back(RpcStreamEvent::SessionMethodRefused("unregisterUdpSession"));
        } else {
            return self.refuse(q, ExceptionType::Unimplemented, "method not implemented");
        }
        Ok(())
    }
}
