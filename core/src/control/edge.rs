//! The edge's side of the control stream: it serves `RegistrationServer` as its bootstrap
//! capability. Registration is answered by the caller (which checks credentials); local
//! configuration and unregistration are acknowledged at once and reported as events.
//!
//! Anyone can open a connection and talk on its control stream, so until a registration is
//! accepted a connection may send only [`PRE_REGISTRATION_MESSAGES`] messages (cloudflared
//! sends two or three); past that the peer broke protocol. A connection registers once.

use std::collections::VecDeque;

use tracing::debug;

use super::{ApiError, ConnectionDetails, ControlError, Registration, RegistrationError};
use crate::rpc::message::{self, ExceptionType, Message};
use crate::rpc::method::Empty;
use crate::rpc::registration::{
    RegisterConnection, UnregisterConnection, UpdateLocalConfiguration,
};
use crate::rpc::{BootstrapServer, Inbox};

/// Messages a connection may send before its registration is accepted.
pub const PRE_REGISTRATION_MESSAGES: u32 = 16;

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
    /// A registration was accepted.
    registered: bool,
    /// Messages received so far (counted until registration).
    messages: u32,
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
        conv.registered = result.is_ok();
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

    /// Whether a registration was accepted.
    pub fn is_registered(&self) -> bool {
        self.conv.registered
    }
}

impl Serving {
    fn on_message(&mut self, m: Message<'_>) -> Result<(), ControlError> {
        if !self.registered {
            self.messages += 1;
            if self.messages > PRE_REGISTRATION_MESSAGES {
                return Err(ControlError::Unexpected(format!(
                    "more than {PRE_REGISTRATION_MESSAGES} messages before registering"
                )));
            }
        }
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
            if self.pending_registration.is_some() || self.registered {
                return self.refuse(
                    q,
                    ExceptionType::Failed,
                    "this connection already registered",
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::control::connector::{ControlClient, ControlEvent};
    use crate::control::tests::registration;

    /// A connector's opening (Bootstrap + registerConnection) fed to a fresh server.
    fn opened() -> (ControlServer, ControlClient, Instant) {
        let now = Instant::now();
        let mut client =
            ControlClient::new(now, &registration(0), None, Duration::from_secs(5)).expect("new");
        let mut server = ControlServer::new();
        server
            .handle_bytes(&client.poll_transmit().expect("opening"))
            .expect("served");
        assert!(matches!(
            server.poll_event(),
            Some(EdgeControlEvent::RegisterRequested(_))
        ));
        (server, client, now)
    }

    fn details() -> ConnectionDetails {
        ConnectionDetails {
            uuid: uuid::Uuid::nil(),
            location: "LOCAL".into(),
            remotely_managed: true,
        }
    }

    #[test]
    fn a_connection_registers_once() {
        let (mut server, mut client, now) = opened();
        server.respond_registration(Ok(details())).expect("answer");
        assert!(server.is_registered());
        client
            .handle_bytes(now, &server.poll_transmit().expect("answer"))
            .expect("read");
        assert!(matches!(client.poll_event(), Some(ControlEvent::Called(_))));
        assert!(matches!(
            client.poll_event(),
            Some(ControlEvent::Registered(_))
        ));
        // The same registration again, on the same connection: refused by the server itself.
        let mut again =
            ControlClient::new(now, &registration(1), None, Duration::from_secs(5)).expect("new");
        server
            .handle_bytes(&again.poll_transmit().expect("opening"))
            .expect("served");
        assert_eq!(server.poll_event(), None, "not handed to the caller");
        assert_eq!(
            server.respond_registration(Ok(details())),
            Err(ApiError::NothingPending("registration"))
        );
        let answer = server.poll_transmit().expect("refusal");
        again.handle_bytes(now, &answer).expect("read");
        assert!(
            !matches!(again.poll_event(), Some(ControlEvent::Registered(_))),
            "second registration refused"
        );
    }

    #[test]
    fn a_refused_registration_does_not_register() {
        let (mut server, _, _) = opened();
        server
            .respond_registration(Err(RegistrationError {
                cause: "no".into(),
                should_retry: false,
                retry_after: Duration::ZERO,
            }))
            .expect("answer");
        assert!(!server.is_registered());
    }

    #[test]
    fn bootstrap_flood_before_registering_is_a_protocol_error() {
        let mut server = ControlServer::new();
        let mut bytes = Vec::new();
        for q in 0..PRE_REGISTRATION_MESSAGES {
            message::encode_bootstrap(q, &mut bytes).expect("encode");
        }
        server.handle_bytes(&bytes).expect("within the allowance");
        let mut one = Vec::new();
        message::encode_bootstrap(PRE_REGISTRATION_MESSAGES, &mut one).expect("encode");
        assert!(matches!(
            server.handle_bytes(&one),
            Err(ControlError::Unexpected(_))
        ));
    }
}
