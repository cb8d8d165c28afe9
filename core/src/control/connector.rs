//! The connector's side of the control stream.
//!
//! Conversation (as cloudflared's capnp-go writes it): `Bootstrap(q0)`, then at once
//! `Call(q1, registerConnection)` pipelined on the promised bootstrap answer. When the edge's
//! returns arrive, `Finish` each question; later calls go to the imported capability and reuse
//! the lowest free question id. Every call has a deadline (`--rpc-timeout`, the grace period
//! for `unregisterConnection`); a call that misses it fails as an event, never silently.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tracing::debug;

use super::{
    ApiError, CallFailure, ConnectionDetails, ControlError, EdgeCause, Inbox, Registration,
    RegistrationError, RegistrationFailure,
};
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
    RegistrationFailed(RegistrationFailure),
    /// The edge acknowledged the local configuration.
    LocalConfigurationAccepted,
    /// Pushing the local configuration failed (cloudflared only logs this).
    LocalConfigurationFailed(CallFailure),
    /// The edge acknowledged `unregisterConnection`: drain, then close.
    Unregistered,
    /// `unregisterConnection` failed or timed out: drain and close anyway.
    UnregisterFailed(CallFailure),
    /// A registration-server call ended (answered, refused or timed out): what cloudflared's
    /// RPC client metrics count. Comes before the call's own event.
    Called(RpcCall),
}

/// A `RegistrationServer` method the connector calls, as cloudflared's RPC client metrics
/// label it (`tunnelrpc/metrics`: `handler="registration"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RpcMethod {
    /// `registerConnection`.
    RegisterConnection,
    /// `updateLocalConfiguration`.
    UpdateLocalConfiguration,
    /// `unregisterConnection`.
    UnregisterConnection,
}

impl RpcMethod {
    /// The metric's `method` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::RegisterConnection => "register_connection",
            Self::UpdateLocalConfiguration => "update_local_configuration",
            Self::UnregisterConnection => "unregister_connection",
        }
    }
}

/// One ended call: which, how long from asking to its end, and whether it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RpcCall {
    /// The method.
    pub method: RpcMethod,
    /// From the call being queued to its answer or deadline.
    pub latency: Duration,
    /// Refused, failed or timed out.
    pub failed: bool,
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
    /// The method a question calls (the bootstrap is no method call).
    fn method(self) -> Option<RpcMethod> {
        match self {
            Asked::Bootstrap => None,
            Asked::Register => Some(RpcMethod::RegisterConnection),
            Asked::LocalConfig => Some(RpcMethod::UpdateLocalConfiguration),
            Asked::Unregister => Some(RpcMethod::UnregisterConnection),
        }
    }

    /// The event a failure of this question produces (bootstrap failing fails registration).
    fn failure(self, failure: CallFailure) -> ControlEvent {
        match self {
            Asked::Bootstrap | Asked::Register => {
                ControlEvent::RegistrationFailed(RegistrationFailure::Call(failure))
            }
            Asked::LocalConfig => ControlEvent::LocalConfigurationFailed(failure),
            Asked::Unregister => ControlEvent::UnregisterFailed(failure),
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
    /// When it was queued, for its latency.
    at: Instant,
    deadline: Instant,
    /// Failed by its deadline; the id stays taken until its late answer arrives (Cap'n Proto
    /// frees a question id only once it is both returned and finished).
    timed_out: bool,
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
    /// Answers that came after their question's deadline or after we closed: ignored.
    late_answers: u64,
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
            late_answers: 0,
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
        self.inbox.feed(bytes, |m| conv.on_message(now, m))?;
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

    /// Fails every call still outstanding because the connection ends under it, at `now`:
    /// cloudflared's RPC client returns an error for each (the context or transport is gone),
    /// which its metrics count as an operation, a failure and a latency. Returned rather than
    /// queued as [`ControlEvent::Called`]: the conversation is over and nothing else follows.
    /// Calls already failed by their deadline were counted then; the bootstrap is no method.
    pub fn abandon(&mut self, now: Instant) -> Vec<RpcCall> {
        let conv = &mut self.conv;
        let calls = conv
            .questions
            .iter()
            .filter(|q| !q.timed_out)
            .filter_map(|q| {
                Some(RpcCall {
                    method: q.asked.method()?,
                    latency: now.saturating_duration_since(q.at),
                    failed: true,
                })
            })
            .collect();
        conv.questions.clear();
        calls
    }

    /// Ends the RPC conversation with cloudflared's `Abort("rpc: shutdown")`; then finish the
    /// stream. Outstanding questions are dropped without events (take them first with
    /// [`ControlClient::abandon`]).
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

    /// Fails calls whose deadline has passed. Their answers may still come; they are then
    /// ignored (see [`ControlClient::late_answers`]).
    pub fn handle_timeout(&mut self, now: Instant) {
        let conv = &mut self.conv;
        let mut due = Vec::new();
        for q in conv
            .questions
            .iter_mut()
            .filter(|q| !q.timed_out && q.deadline <= now)
        {
            q.timed_out = true;
            // The failure it causes is an event of its own (registration, local configuration,
            // unregistration).
            debug!(question = q.id, asked = ?q.asked, "control-stream call timed out");
            due.push((q.asked, q.at));
        }
        // Every call counted before the failures they cause (a bootstrap failing fails the
        // registration: its event is the registration's).
        for (asked, at) in &due {
            conv.called(*asked, now.saturating_duration_since(*at), true);
        }
        for (asked, _) in due {
            // Under heavy loss an answer can take longer than the deadline (a lost handshake
            // flight backs quinn's probe timer off past it); the edge refused nothing, so the
            // supervisor must retry, as cloudflared retries every QUIC registration failure.
            conv.fail(asked, CallFailure::TimedOut);
        }
    }

    /// The earliest call deadline still to act on.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.conv
            .questions
            .iter()
            .filter(|q| !q.timed_out)
            .map(|q| q.deadline)
            .min()
    }

    /// Answers that arrived after their call had failed by its deadline, or after the
    /// conversation was closed, and were ignored.
    pub fn late_answers(&self) -> u64 {
        self.conv.late_answers
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
            at: now,
            deadline: now + timeout,
            timed_out: false,
        });
        id
    }

    /// Records an ended call of `asked`'s, before its own event.
    fn called(&mut self, asked: Asked, latency: Duration, failed: bool) {
        if let Some(method) = asked.method() {
            self.events.push_back(ControlEvent::Called(RpcCall {
                method,
                latency,
                failed,
            }));
        }
    }

    /// Records a failed question: the event, and what it means for the phase.
    fn fail(&mut self, asked: Asked, failure: CallFailure) {
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
        self.events.push_back(asked.failure(failure));
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

    fn on_message(&mut self, now: Instant, m: Message<'_>) -> Result<(), ControlError> {
        if self.phase == Phase::Closed {
            // We aborted the conversation: what the edge sent meanwhile has no one to act on it.
            if let Message::Return(_) = m {
                self.late_answers += 1;
            }
            return Ok(());
        }
        match m {
            Message::Return(r) => self.on_return(now, r),
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

    fn on_return(&mut self, now: Instant, r: message::Return<'_>) -> Result<(), ControlError> {
        let pos = self
            .questions
            .iter()
            .position(|q| q.id == r.answer_id)
            .ok_or_else(|| {
                ControlError::Unexpected(format!("Return for unknown question {}", r.answer_id))
            })?;
        let q = self.questions.swap_remove(pos);
        // We never pass capabilities, so results keep none of ours alive.
        message::encode_finish(r.answer_id, false, &mut self.outbox)?;
        if q.timed_out {
            // Its failure was already reported and acted on (a registration retried, a drain
            // started): the answer changes nothing, and is no reason to drop the connection.
            debug!(question = q.id, asked = ?q.asked, "answer after the call's deadline ignored");
            self.late_answers += 1;
            return Ok(());
        }
        let asked = q.asked;
        let latency = now.saturating_duration_since(q.at);
        let payload = match r.body {
            ReturnBody::Results(p) => p,
            ReturnBody::Exception(e) => {
                self.called(asked, latency, true);
                self.fail(asked, CallFailure::Remote(EdgeCause::parse(e.reason)));
                return Ok(());
            }
            other => {
                let cause = EdgeCause::Other(format!("unsupported return {other:?}"));
                self.called(asked, latency, true);
                self.fail(asked, CallFailure::Remote(cause));
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
                    self.called(asked, latency, false);
                    self.events.push_back(ControlEvent::Registered(details));
                }
                ConnectionResponse::Error(e) => {
                    self.phase = Phase::Done;
                    // cloudflared's client returns the edge's refusal as the call's error.
                    self.called(asked, latency, true);
                    self.events.push_back(ControlEvent::RegistrationFailed(
                        RegistrationFailure::Refused(RegistrationError::from_wire(&e)),
                    ));
                }
            },
            Asked::LocalConfig => {
                self.called(asked, latency, false);
                self.events
                    .push_back(ControlEvent::LocalConfigurationAccepted);
            }
            Asked::Unregister => {
                self.phase = Phase::Done;
                self.called(asked, latency, false);
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
        // The failed call is counted first (cloudflared's RPC client metrics).
        assert_eq!(
            c.poll_event(),
            Some(ControlEvent::Called(RpcCall {
                method: RpcMethod::RegisterConnection,
                latency: Duration::from_secs(5),
                failed: true,
            }))
        );
        assert!(matches!(
            c.poll_event(),
            Some(ControlEvent::RegistrationFailed(RegistrationFailure::Call(
                CallFailure::TimedOut
            )))
        ));
        // Bootstrap and register both timed out: one event, not two.
        assert_eq!(c.poll_event(), None);
        assert_eq!(c.poll_timeout(), None, "no deadline left to wake for");
    }

    #[test]
    fn calls_outstanding_when_the_connection_ends_count_as_failed_once() {
        let now = Instant::now();
        let reg = crate::control::tests::registration(0);
        let mut c = ControlClient::new(now, &reg, None, Duration::from_secs(5)).unwrap();
        // The connection ends 2 s into registering: the call fails with it (the bootstrap
        // is no method and is not counted).
        let at = now + Duration::from_secs(2);
        assert_eq!(
            c.abandon(at),
            vec![RpcCall {
                method: RpcMethod::RegisterConnection,
                latency: Duration::from_secs(2),
                failed: true,
            }]
        );
        assert_eq!(c.abandon(at), vec![], "counted once");
        assert_eq!(c.poll_timeout(), None, "no deadline left to fail it again");
        // A call its deadline already failed was counted then, not again at the end.
        let mut c = ControlClient::new(now, &reg, None, Duration::from_secs(5)).unwrap();
        c.handle_timeout(now + Duration::from_secs(5));
        assert!(matches!(c.poll_event(), Some(ControlEvent::Called(_))));
        assert_eq!(c.abandon(now + Duration::from_secs(6)), vec![]);
        // A local configuration push still out when the connection closes counts as failed.
        let (mut c, _server) = registered(now);
        while c.poll_event().is_some() {}
        assert_eq!(
            c.abandon(now + Duration::from_millis(300)),
            vec![RpcCall {
                method: RpcMethod::UpdateLocalConfiguration,
                latency: Duration::from_millis(300),
                failed: true,
            }]
        );
    }

    /// A client registered with a server, with a local configuration to push.
    fn registered(now: Instant) -> (ControlClient, crate::control::edge::ControlServer) {
        use crate::control::edge::{ControlServer, EdgeControlEvent};
        let reg = crate::control::tests::registration(0);
        let mut c = ControlClient::new(now, &reg, Some(b"{}".to_vec()), Duration::from_secs(5))
            .expect("new");
        let mut server = ControlServer::new();
        server.handle_bytes(&c.poll_transmit().unwrap()).unwrap();
        assert!(matches!(
            server.poll_event(),
            Some(EdgeControlEvent::RegisterRequested(_))
        ));
        server
            .respond_registration(Ok(ConnectionDetails {
                uuid: uuid::Uuid::nil(),
                location: "LOCAL".into(),
                remotely_managed: false,
            }))
            .unwrap();
        c.handle_bytes(now, &server.poll_transmit().unwrap())
            .unwrap();
        assert_eq!(
            c.poll_event(),
            Some(ControlEvent::Called(RpcCall {
                method: RpcMethod::RegisterConnection,
                latency: Duration::ZERO,
                failed: false,
            }))
        );
        assert!(matches!(c.poll_event(), Some(ControlEvent::Registered(_))));
        (c, server)
    }

    #[test]
    fn an_answer_after_the_deadline_is_ignored_not_a_protocol_error() {
        let now = Instant::now();
        let (mut c, mut server) = registered(now);
        // The local configuration goes out; its answer is slower than the deadline.
        let push = c
            .poll_transmit()
            .expect("finish and updateLocalConfiguration");
        let late = now + Duration::from_secs(6);
        c.handle_timeout(late);
        assert_eq!(
            c.poll_event(),
            Some(ControlEvent::Called(RpcCall {
                method: RpcMethod::UpdateLocalConfiguration,
                latency: Duration::from_secs(6),
                failed: true,
            }))
        );
        assert_eq!(
            c.poll_event(),
            Some(ControlEvent::LocalConfigurationFailed(
                CallFailure::TimedOut
            ))
        );
        assert_eq!(c.poll_timeout(), None, "a failed call has no deadline left");
        server.handle_bytes(&push).unwrap();
        let answer = server.poll_transmit().expect("the edge's answer");
        c.handle_bytes(late, &answer)
            .expect("a late answer keeps the conversation");
        assert_eq!(c.poll_event(), None, "and reports nothing twice");
        assert_eq!(c.late_answers(), 1);
        assert!(c.is_registered());
        // The id was held until the answer came, and is free again: unregistering still works.
        c.unregister(late, Duration::from_secs(30)).unwrap();
        server.handle_bytes(&c.poll_transmit().unwrap()).unwrap();
        c.handle_bytes(
            late + Duration::from_millis(30),
            &server.poll_transmit().unwrap(),
        )
        .unwrap();
        assert_eq!(
            c.poll_event(),
            Some(ControlEvent::Called(RpcCall {
                method: RpcMethod::UnregisterConnection,
                latency: Duration::from_millis(30),
                failed: false,
            }))
        );
        assert_eq!(c.poll_event(), Some(ControlEvent::Unregistered));
        // An answer to a question never asked is still a protocol error.
        let mut bogus = Vec::new();
        message::encode_return::<UpdateLocalConfiguration>(77, &Empty, &mut bogus).unwrap();
        assert!(c.handle_bytes(late, &bogus).is_err());
    }

    #[test]
    fn a_timed_out_question_keeps_its_id_until_answered() {
        let now = Instant::now();
        let (mut c, _server) = registered(now);
        let _ = c.poll_transmit();
        c.handle_timeout(now + Duration::from_secs(6));
        let _ = c.poll_event();
        // updateLocalConfiguration (question 1) is still unanswered: unregister must not reuse 1.
        c.unregister(now, Duration::from_secs(30)).unwrap();
        let mut ids: Vec<(u32, Asked)> = c.conv.questions.iter().map(|q| (q.id, q.asked)).collect();
        ids.sort_unstable_by_key(|(id, _)| *id);
        assert_eq!(ids, [(1, Asked::LocalConfig), (2, Asked::Unregister)]);
    }

    #[test]
    fn answers_after_close_are_ignored() {
        let now = Instant::now();
        let (mut c, mut server) = registered(now);
        let push = c.poll_transmit().unwrap();
        c.close();
        server.handle_bytes(&push).unwrap();
        c.handle_bytes(now, &server.poll_transmit().unwrap())
            .expect("the conversation is over; nothing to fail");
        assert_eq!(c.late_answers(), 1);
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
