//! The edge's side of an RPC stream: one call to the connector's `CloudflaredServer`.
//! The stream starts with the RPC signature, then `Bootstrap(q0)` and the call pipelined on it.

use super::ConfigUpdateResult;
use crate::control::{ApiError, ControlError};
use crate::rpc::configuration::{UpdateConfiguration, UpdateConfigurationParams};
use crate::rpc::message::{self, Message, MessageTarget, ReturnBody};
use crate::rpc::Inbox;
use crate::stream::preamble::RPC_STREAM_SIGNATURE;

const BOOTSTRAP: u32 = 0;
const CALL: u32 = 1;

/// How the call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpcCallOutcome {
    /// The connector answered `updateConfiguration`.
    Configuration(ConfigUpdateResult),
    /// The call failed (exception or unusable answer).
    Failed(String),
}

/// One `updateConfiguration` call on an edge-opened RPC stream.
#[derive(Debug)]
pub struct RpcStreamClient {
    inbox: Inbox,
    outbox: Vec<u8>,
    outcome: Option<RpcCallOutcome>,
}

impl RpcStreamClient {
    /// Starts the call; the first bytes to write include the stream signature.
    pub fn update_configuration(version: i32, config: &[u8]) -> Result<Self, ApiError> {
        let mut outbox = RPC_STREAM_SIGNATURE.to_vec();
        let encode = |e| ApiError::Encode(format!("updateConfiguration call: {e}"));
        message::encode_bootstrap(BOOTSTRAP, &mut outbox).map_err(encode)?;
        message::encode_call::<UpdateConfiguration>(
            CALL,
            &MessageTarget::bootstrap_answer(BOOTSTRAP),
            &UpdateConfigurationParams { version, config },
            &mut outbox,
        )
        .map_err(encode)?;
        Ok(Self {
            inbox: Inbox::default(),
            outbox,
            outcome: None,
        })
    }

    /// Feeds bytes read from the stream.
    pub fn handle_bytes(&mut self, bytes: &[u8]) -> Result<(), ControlError> {
        let (outbox, outcome) = (&mut self.outbox, &mut self.outcome);
        self.inbox.feed(bytes, |m| on_message(m, outbox, outcome))
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
            let res = p.results_of::<UpdateConfiguration>()?;
            *outcome = Some(RpcCallOutcome::Configuration(ConfigUpdateResult {
                latest_applied_version: res.latest_applied_version,
                error: (!res.err.is_empty()).then(|| res.err.to_owned()),
            }));
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
