//! The edge's side of the control stream: it serves `RegistrationServer` as its bootstrap
//! capability. Registration is answered by the caller (which checks credentials); local
//! configuration and unregistration are acknowledged at once and reported as events.

use std::collections::VecDeque;

use tracing::debug;

use super::{ApiError, ConnectionDetails, ControlError, Registration, RegistrationError};
use crate::rpc::message::{self, ExceptionType, Message};
use crate::rpc::method::Empty;
use crate::rpc::registration::{
    RegisterConnection, UnregisterConnection, UpdateLocalConfiguration,
};
use crate::rpc::{BootstrapServer, Inbox};

/// What the connector did on the control stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EdgeControlEvent {
    /// It asks to register; answer with [`ControlServer::respond_registration`].
    RegisterRequested(Registration),
    /// It pushed its local configuration (JSON); already acknowledged.
    LocalConfiguration(Vec<u8>),
    /// It unregistered; already acknowledged. It will drain and close the connection.
    Unregistered,
    /// It ended the RPC conversation (cloudflared sends `rpc: shutdown` on close).
    Aborted(String),
}

/// The edge's control-stream state machine.
#[derive(Debug, Default)]
pub struct ControlServer {
    inbox: Inbox,
    conv: Serving,
}

#[derive(Debug, Default)]
struct Serving {
    outbox: Vec<u8>,
    /// Our `RegistrationServer`, which calls may target before the bootstrap returns.
    bootstrap: BootstrapServer,
    /// Question of a registration waiting for the caller's answer.
    pending_registration: Option<u32>,
    events: VecDeque<EdgeControlEvent>,
}

impl ControlServer {
    /// A server waiting for the connector's bootstrap.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes read from the control stream.
    pub fn handle_bytes(&mut self, bytes: &[u8]) -> Result<(), ControlError> {
        let conv = &mut self.conv;
        self.inbox.feed(bytes, |m| conv.on_message(m))
    }

    /// Answers the pending registration: accepted with `details`, or refused.
    pub fn respond_registration(
        &mut self,
        result: Result<ConnectionDetails, RegistrationError>,
    ) -> Result<(), ApiError> {
        let conv = &mut self.conv;
        let q = conv
            .pending_registration
            .take()
            .ok_or(ApiError::NothingPending("registration"))?;
        let response = match &result {
            Ok(details) => crate::rpc::registration::ConnectionResponse::Details(details.to_wire()),
            Err(e) => e.to_wire(),
        };
        message::encode_return::<RegisterConnection>(q, &response, &mut conv.outbox)
            .map_err(|e| ApiError::Encode(format!("registerConnection results: {e}")))
    }

    /// Bytes to write to the control stream, if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        let out = &mut self.conv.outbox;
        (!out.is_empty()).then(|| std::mem::take(out))
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<EdgeControlEvent> {
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
            Message::Abort(e) => {
                self.events
                    .push_back(EdgeControlEvent::Aborted(e.reason.to_owned()));
                Ok(())
            }
            // Our results hold no capabilities and we ask no questions: nothing to release.
            Message::Finish { .. } | Message::Release { .. } => Ok(()),
            other => Err(ControlError::Unexpected(format!("{other:?}"))),
        }
    }

    fn refuse(
        &mut self,
        question: u32,
        kind: ExceptionType,
        reason: &str,
    ) -> Result<(), ControlError> {
        Ok(BootstrapServer::refuse(
            question,
            kind,
            reason,
            &mut self.outbox,
        )?)
    }

    fn on_call(&mut self, call: message::Call<'_>) -> Result<(), ControlError> {
        let q = call.question_id;
        if !self.bootstrap.is_target(&call.target) {
            return self.refuse(q, ExceptionType::Failed, "call to an unknown capability");
        }
        if call.is::<RegisterConnection>() {
            if self.pending_registration.is_some() {
                return self.refuse(
                    q,
                    ExceptionType::Failed,
                    "a registration is already pending",
                );
            }
            let registration = Registration::from_params(&call.params_of::<RegisterConnection>()?)?;
            debug!(conn_index = registration.conn_index, tunnel = %registration.tunnel_id, "registration requested");
            self.pending_registration = Some(q);
            self.events
                .push_back(EdgeControlEvent::RegisterRequested(registration));
        } else if call.is::<UpdateLocalConfiguration>() {
            let config = call
                .params_of::<UpdateLocalConfiguration>()?
                .config
                .to_vec();
            message::encode_return::<UpdateLocalConfiguration>(q, &Empty, &mut self.outbox)?;
            self.events
                .push_back(EdgeControlEvent::LocalConfiguration(config));
        } else if call.is::<UnregisterConnection>() {
            message::encode_return::<UnregisterConnection>(q, &Empty, &mut self.outbox)?;
            self.events.push_back(EdgeControlEvent::Unregistered);
        } else {
            return self.refuse(
                q,
                ExceptionType::Unimplemented,
                "method not implemented by this edge",
            );
        }
        Ok(())
    }
}
