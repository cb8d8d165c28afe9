//! The connector's side of the control stream.
//!
//! Conversation (as cloudflared's capnp-go writes it): `Bootstrap(q0)`, then at once
//! `Call(q1, registerConnection)` pipelined on the promised bootstrap answer. When the edge's
//! returns arrive, `Finish` each question; later calls go to the imported capability and reuse
//! the lowest free question id. Every call has a deadline (`--rpc-timeout`, the grace period
//! for `unregisterConnection`); a call that misses it fails as an event, never silently.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::{ApiError, ConnectionDetails, ControlError, Inbox, Registration, RegistrationError};
use crate::rpc::frame::EncodeError;
use crate::rpc::message::{
    self, CapDescriptor, Exception, Message, MessageTarget, ReturnBody, SHUTDOWN_REASON,
};
use crate::rpc::method::Empty;
use crate::rpc::registration::{
    ConnectionResponse, RegisterConnection, UnregisterConnection, UpdateLocalConfiguration,
    UpdateLocalConfigurationParams,
};

/// What the control stream tells the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlEvent {
    /// The edge accepted the registration.
    Registered(ConnectionDetails),
    /// The edge refused it, the call failed, or it timed out. Never swallowed.
    RegistrationFailed(RegistrationError),
    /// The edge acknowledged the local configuration.
    LocalConfigurationAccepted,
    /// Pushing the local configuration failed (cloudflared only logs this).
    LocalConfigurationFailed(String),
    /// The edge acknowledged `unregisterConnection`: drain, then close.
    Unregistered,
    /// `unregisterConnection` failed or timed out: drain and close anyway.
    UnregisterFailed(String),
}

/// What an outstanding question asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    Bootstrap,
    Register,
    LocalConfig,
    Unregister,
}

impl Asked {
    /// The event a failure of this question produces (bootstrap failing fails registration).
    /// `retryable`: nothing was refused, the answer just did not come in time.
    fn failure(self, reason: String, retryable: bool) -> ControlEvent {
        match self {
            Asked::Bootstrap | Asked::Register => {
                ControlEvent::RegistrationFailed(RegistrationError {
                    cause: reason,
                    should_retry: retryable,
                    retry_after: Duration::ZERO,
                })
            }
            Asked::LocalConfig => ControlEvent::LocalConfigurationFailed(reason),
            Asked::Unregister => ControlEvent::UnregisterFailed(reason),
        }
    }
}

/// Where the conversation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the registration answer.
    Registering,
    /// Registered; calls may go out.
    Registered,
    /// `unregisterConnection` is out.
    Unregistering,
    /// Nothing more will be asked (unregistered, refused, or aborted).
    Done,
    /// `Abort` sent; the stream is finished.
    Closed,
}

struct Question {
    id: u32,
    asked: Asked,
    deadline: Instant,
}

/// The connector's control-stream state machine.
pub struct ControlClient {
    inbox: Inbox,
    conv: Conversation,
}

/// Everything but the received bytes, so handlers can borrow it while the inbox is read.
struct Conversation {
    outbox: Vec<u8>,
    phase: Phase,
    questions: Vec<Question>,
    /// The edge's `RegistrationServer`, once the bootstrap returned it.
    server: Option<u32>,
    local_config: Option<Vec<u8>>,
    rpc_timeout: Duration,
    events: VecDeque<ControlEvent>,
}

impl ControlClient {
    /// Starts the conversation: `Bootstrap` and `registerConnection` are queued at once.
    ///
    /// `local_config` (JSON) is pushed after registering when the connection index is 0 and
    /// the edge says the tunnel is not remotely managed.
    pub fn new(
        now: Instant,
        registration: &Registration,
        local_config: Option<Vec<u8>>,
        rpc_timeout: Duration,
    ) -> Result<Self, ApiError> {
        let mut conv = Conversation {
            outbox: Vec::new(),
            phase: Phase::Registering,
            questions: Vec::new(),
            server: None,
            local_config: local_config.filter(|_| registration.conn_index == 0),
            rpc_timeout,
            events: VecDeque::new(),
        };
        let bootstrap = conv.ask(now, Asked::Bootstrap, rpc_timeout);
        message::encode_bootstrap(bootstrap, &mut conv.outbox).map_err(encode("Bootstrap"))?;
        let features: Vec<&str> = registration.features.iter().map(String::as_str).collect();
        let ip = registration.ip_bytes();
        let params = registration.params(&features, &ip);
        let q = conv.ask(now, Asked::Register, rpc_timeout);
        message::encode_call::<RegisterConnection>(
            q,
            &MessageTarget::bootstrap_answer(bootstrap),
            &params,
            &mut conv.outbox,
        )
        .map_err(encode("registerConnection"))?;
        Ok(Self {
            inbox: Inbox::default(),
            conv,
        })
    }

    /// Feeds bytes read from the control stream.
    pub fn handle_bytes(&mut self, now: Instant, bytes: &[u8]) -> Result<(), ControlError> {
        let conv = &mut self.conv;
        self.inbox.feed(bytes, |m| conv.on_message(m))?;
        conv.push_local_config(now)
    }

    /// Starts graceful shutdown: `unregisterConnection`, answered within `grace_period`.
    pub fn unregister(&mut self, now: Instant, grace_period: Duration) -> Result<(), ApiError> {
        let conv = &mut self.conv;
        let (Phase::Registered, Some(server)) = (conv.phase, conv.server) else {
            return Err(ApiError::NotRegistered("unregisterConnection"));
        };
        let q = conv.ask(now, Asked::Unregister, grace_period);
        message::encode_call::<UnregisterConnection>(
            q,
            &MessageTarget::ImportedCap(server),
            &Empty,
            &mut conv.outbox,
        )
        .map_err(encode("unregisterConnection"))?;
        conv.phase = Phase::Unregistering;
        Ok(())
    }

    /// Ends the RPC conversation with cloudflared's `Abort("rpc: shutdown")`; then finish the
    /// stream. Outstanding questions are dropped without events.
    pub fn close(&mut self) {
        let conv = &mut self.conv;
        if conv.phase == Phase::Closed {
            return;
        }
        // A fixed short exception always encodes; were it not to, the FIN still ends the stream.
        let _ = message::encode_abort(&Exception::failed(SHUTDOWN_REASON), &mut conv.outbox);
        conv.questions.clear();
        conv.phase = Phase::Closed;
    }

    /// Fails calls whose deadline has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        let conv = &mut self.conv;
        while let Some(i) = conv.questions.iter().position(|q| q.deadline <= now) {
            let q = conv.questions.swap_remove(i);
            warn!(question = q.id, asked = ?q.asked, "control-stream call timed out");
            // Under heavy loss an answer can take longer than the deadline (a lost handshake
            // flight backs quinn's probe timer off past it); the edge refused nothing, so the
            // supervisor must retry, as cloudflared retries every QUIC registration failure.
            conv.fail(q.asked, "timed out".into(), true);
        }
    }

    /// The earliest call deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.conv.questions.iter().map(|q| q.deadline).min()
    }

    /// Bytes to write to the control stream, if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        let out = &mut self.conv.outbox;
        (!out.is_empty()).then(|| std::mem::take(out))
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ControlEvent> {
        self.conv.events.pop_front()
    }

    /// True once registered and not yet unregistering.
    pub fn is_registered(&self) -> bool {
        self.conv.phase == Phase::Registered
    }
}

fn encode(what: &'static str) -> impl Fn(EncodeError) -> ApiError {
    move |e| ApiError::Encode(format!("{what}: {e}"))
}

impl Conversation {
    /// Allocates the lowest free question id, as capnp-go does. The bootstrap's id (0) stays
    /// taken while its capability is in use, so later calls start at 1.
    fn ask(&mut self, now: Instant, asked: Asked, timeout: Duration) -> u32 {
        let first = if asked == Asked::Bootstrap { 0 } else { 1 };
        let id = (first..u32::MAX)
            .find(|id| self.questions.iter().all(|q| q.id != *id))
            .unwrap_or(u32::MAX);
        self.questions.push(Question {
            id,
            asked,
            deadline: now + timeout,
        });
        id
    }

    /// Records a failed question: the event, and what it means for the phase.
    fn fail(&mut self, asked: Asked, reason: String, retryable: bool) {
        if matches!(asked, Asked::Bootstrap | Asked::Register) {
            // Bootstrap and registration fail together; one event tells it.
            if self.phase == Phase::Done {
                return;
            }
            self.phase = Phase::Done;
        }
        if asked == Asked::Unregister {
            self.phase = Phase::Done;
        }
        self.events.push_back(asked.failure(reason, retryable));
    }

    /// Sends what registration unlocks: the local configuration, once.
    fn push_local_config(&mut self, now: Instant) -> Result<(), ControlError> {
        if self.phase != Phase::Registered {
            return Ok(());
        }
        let (Some(server), Some(config)) = (self.server, self.local_config.take()) else {
            return Ok(());
        };
        let q = self.ask(now, Asked::LocalConfig, self.rpc_timeout);
        message::encode_call::<UpdateLocalConfiguration>(
            q,
            &MessageTarget::ImportedCap(server),
            &UpdateLocalConfigurationParams { config: &config },
            &mut self.outbox,
        )?;
        Ok(())
    }

    fn on_message(&mut self, m: Message<'_>) -> Result<(), ControlError> {
        match m {
            Message::Return(r) => self.on_return(r),
            Message::Abort(e) => Err(ControlError::Aborted(e.reason.to_owned())),
            // The connector exposes nothing on the control stream (cloudflared has no main
            // interface here): refuse the question, keep the conversation.
            Message::Bootstrap { question_id }
            | Message::Call(message::Call { question_id, .. }) => {
                message::encode_exception_return(
                    question_id,
                    &Exception::failed("the connector exports nothing on the control stream"),
                    &mut self.outbox,
                )?;
                Ok(())
            }
            Message::Finish { .. } | Message::Release { .. } => Ok(()),
            other => Err(ControlError::Unexpected(format!("{other:?}"))),
        }
    }

    fn on_return(&mut self, r: message::Return<'_>) -> Result<(), ControlError> {
        let pos = self
            .questions
            .iter()
            .position(|q| q.id == r.answer_id)
            .ok_or_else(|| {
                ControlError::Unexpected(format!("Return for unknown question {}", r.answer_id))
            })?;
        let asked = self.questions.swap_remove(pos).asked;
        // We never pass capabilities, so results keep none of ours alive.
        message::encode_finish(r.answer_id, false, &mut self.outbox)?;
        let payload = match r.body {
            ReturnBody::Results(p) => p,
            ReturnBody::Exception(e) => {
                self.fail(asked, e.reason.to_owned(), false);
                return Ok(());
            }
            other => {
                self.fail(asked, format!("unsupported return {other:?}"), false);
                return Ok(());
            }
        };
        match asked {
            Asked::Bootstrap => match payload.capability()? {
                CapDescriptor::SenderHosted(id) | CapDescriptor::SenderPromise(id) => {
                    self.server = Some(id);
                }
                other => {
                    return Err(ControlError::Unexpected(format!(
                        "bootstrap returned {other:?}"
                    )))
                }
            },
            Asked::Register => match payload.results_of::<RegisterConnection>()? {
                ConnectionResponse::Details(d) => {
                    if self.server.is_none() {
                        return Err(ControlError::Unexpected(
                            "registration answered before the bootstrap capability".into(),
                        ));
                    }
                    self.phase = Phase::Registered;
                    let details = ConnectionDetails {
                        uuid: uuid::Uuid::from_bytes(d.uuid),
                        location: d.location_name.to_owned(),
                        remotely_managed: d.tunnel_is_remotely_managed,
                    };
                    debug!(location = %details.location, "connection registered");
                    if details.remotely_managed {
                        self.local_config = None;
                    }
                    self.events.push_back(ControlEvent::Registered(details));
                }
                ConnectionResponse::Error(e) => {
                    self.phase = Phase::Done;
                    self.events.push_back(ControlEvent::RegistrationFailed(
                        RegistrationError::from_wire(&e),
                    ));
                }
            },
            Asked::LocalConfig => self
                .events
                .push_back(ControlEvent::LocalConfigurationAccepted),
            Asked::Unregister => {
                self.phase = Phase::Done;
                self.events.push_back(ControlEvent::Unregistered);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_fails_registration_with_a_retryable_event() {
        let now = Instant::now();
        let reg = crate::control::tests::registration(0);
        let mut c = ControlClient::new(now, &reg, None, Duration::from_secs(5)).unwrap();
        assert!(c.poll_transmit().is_some());
        assert_eq!(c.poll_timeout(), Some(now + Duration::from_secs(5)));
        c.handle_timeout(now + Duration::from_secs(4));
        assert_eq!(c.poll_event(), None);
        c.handle_timeout(now + Duration::from_secs(5));
        assert!(matches!(
            c.poll_event(),
            Some(ControlEvent::RegistrationFailed(RegistrationError { ref cause, should_retry: true, .. })) if cause == "timed out"
        ));
        // Bootstrap and register both timed out: one event, not two.
        assert_eq!(c.poll_event(), None);
        assert_eq!(c.poll_timeout(), None, "no deadline left to wake for");
    }

    #[test]
    fn unregister_before_registration_is_a_caller_error() {
        let now = Instant::now();
        let reg = crate::control::tests::registration(0);
        let mut c = ControlClient::new(now, &reg, None, Duration::from_secs(5)).unwrap();
        assert_eq!(
            c.unregister(now, Duration::from_secs(30)),
            Err(ApiError::NotRegistered("unregisterConnection"))
        );
    }
}
