//! Cap'n Proto RPC protocol messages: typed decoding of what arrives, encoders for what we send.
//!
//! One framed `Message` per frame, on the control stream (no preamble) and on RPC streams
//! (after the 6-byte signature). Decoding is in place: [`decode_message`] checks the frame and
//! [`IncomingMessage::message`] gives a typed view borrowing it. Encoders append one framed,
//! single-segment message to a `Vec<u8>`.
//!
//! The subset is what a two-party, level-0/1 peer such as cloudflared's capnp-go uses:
//! `Bootstrap`, `Call` (to the bootstrap's promised answer or to an imported capability),
//! `Return`, `Finish`, `Abort`, plus enough of the rest to recognise it and answer
//! `Unimplemented`.

use core::fmt;

use capnp::{any_pointer, raw, struct_list};

use super::frame::{
    malformed, read_frame, read_text, text_words, write_message, write_text, DecodeError,
    EncodeError, FrameLimits, FrameReader,
};
use super::method::{is, Content, KnownParams, Method};
use crate::schema::rpc_capnp::{
    call, cap_descriptor, disembargo, exception, message, message_target, payload, promised_answer,
    resolve, return_,
};

/// Reason cloudflared's capnp-go puts in the `Abort` it sends when it closes a connection.
pub const SHUTDOWN_REASON: &str = "rpc: shutdown";

/// A received RPC message, read in place over the bytes it arrived in.
pub struct IncomingMessage<'a> {
    msg: FrameReader<'a>,
}

/// Decodes the framed RPC message at the start of `buf`.
///
/// `Ok(None)` until the whole frame has arrived; `Ok(Some((message, n)))` once it has, the
/// message having taken `n` bytes. Read it with [`IncomingMessage::message`].
pub fn decode_message<'a>(
    buf: &'a [u8],
    limits: &FrameLimits,
) -> Result<Option<(IncomingMessage<'a>, usize)>, DecodeError> {
    let Some((msg, len)) = read_frame(buf, limits, "RPC message")? else {
        return Ok(None);
    };
    let incoming = IncomingMessage { msg };
    incoming.root()?;
    Ok(Some((incoming, len)))
}

impl IncomingMessage<'_> {
    fn root(&self) -> Result<message::Reader<'_>, DecodeError> {
        self.msg.get_root().map_err(malformed("RPC message"))
    }

    /// The message, typed.
    pub fn message(&self) -> Result<Message<'_>, DecodeError> {
        Message::read(self.root()?)
    }
}

impl fmt::Debug for IncomingMessage<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("IncomingMessage")
            .field(&self.message())
            .finish()
    }
}

/// One RPC message, as far as this crate understands it.
#[derive(Debug)]
pub enum Message<'a> {
    /// The peer did not understand a message we sent; it is echoed back.
    Unimplemented(Unimplemented<'a>),
    /// The peer is closing the connection because of this exception.
    Abort(Exception<'a>),
    /// The peer asks for our bootstrap capability.
    Bootstrap {
        /// Question to answer with a `Return`.
        question_id: u32,
    },
    /// The peer calls a method.
    Call(Call<'a>),
    /// The peer answers one of our questions.
    Return(Return<'a>),
    /// The peer is done with one of its questions.
    Finish {
        /// The question.
        question_id: u32,
        /// Whether capabilities in the results are released too.
        release_result_caps: bool,
    },
    /// A promise the peer exported has settled.
    Resolve {
        /// The promise (an import of ours).
        promise_id: u32,
        /// What it settled to.
        resolution: Resolution<'a>,
    },
    /// The peer drops references to one of our exports.
    Release {
        /// The export.
        id: u32,
        /// References dropped.
        reference_count: u32,
    },
    /// Embargo handling for promise resolution.
    Disembargo {
        /// What is disembargoed.
        target: MessageTarget<'a>,
        /// Which leg of the embargo protocol this is.
        context: DisembargoContext,
    },
    /// Any other message (level 2-4, obsolete or unknown), by its union discriminant.
    Other(u16),
}

impl<'a> Message<'a> {
    fn read(m: message::Reader<'a>) -> Result<Self, DecodeError> {
        use message::Which as W;
        Ok(match m.which() {
            Ok(W::Unimplemented(inner)) => Message::Unimplemented(Unimplemented(
                inner.map_err(malformed("Message.unimplemented"))?,
            )),
            Ok(W::Abort(e)) => {
                Message::Abort(Exception::read(e.map_err(malformed("Message.abort"))?)?)
            }
            Ok(W::Bootstrap(b)) => Message::Bootstrap {
                question_id: b.map_err(malformed("Bootstrap"))?.get_question_id(),
            },
            Ok(W::Call(c)) => Message::Call(Call::read(c.map_err(malformed("Call"))?)?),
            Ok(W::Return(r)) => Message::Return(Return::read(r.map_err(malformed("Return"))?)?),
            Ok(W::Finish(f)) => {
                let f = f.map_err(malformed("Finish"))?;
                Message::Finish {
                    question_id: f.get_question_id(),
                    release_result_caps: f.get_release_result_caps(),
                }
            }
            Ok(W::Resolve(r)) => {
                let r = r.map_err(malformed("Resolve"))?;
                Message::Resolve {
                    promise_id: r.get_promise_id(),
                    resolution: Resolution::read(r)?,
                }
            }
            Ok(W::Release(r)) => {
                let r = r.map_err(malformed("Release"))?;
                Message::Release {
                    id: r.get_id(),
                    reference_count: r.get_reference_count(),
                }
            }
            Ok(W::Disembargo(d)) => {
                let d = d.map_err(malformed("Disembargo"))?;
                Message::Disembargo {
                    target: MessageTarget::read(
                        d.get_target().map_err(malformed("Disembargo.target"))?,
                    )?,
                    context: DisembargoContext::read(d)?,
                }
            }
            // Level 2-4 and obsolete messages, by their union discriminants.
            Ok(W::ObsoleteSave(_)) => Message::Other(7),
            Ok(W::ObsoleteDelete(_)) => Message::Other(9),
            Ok(W::Provide(_)) => Message::Other(10),
            Ok(W::Accept(_)) => Message::Other(11),
            Ok(W::Join(_)) => Message::Other(12),
            Err(capnp::NotInSchema(tag)) => Message::Other(tag),
        })
    }
}

/// A message the peer echoed back as not understood.
#[derive(Clone, Copy)]
pub struct Unimplemented<'a>(message::Reader<'a>);

impl<'a> Unimplemented<'a> {
    /// The echoed message (one of ours).
    ///
    /// An echoed `Unimplemented` is an error: the protocol never answers one with another, and
    /// refusing it keeps a self-nested message from recursing.
    pub fn message(&self) -> Result<Message<'a>, DecodeError> {
        match Message::read(self.0)? {
            Message::Unimplemented(_) => Err(DecodeError::Unexpected {
                what: "Unimplemented echoing an Unimplemented",
            }),
            inner => Ok(inner),
        }
    }
}

impl fmt::Debug for Unimplemented<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Unimplemented")
            .field(&self.message())
            .finish()
    }
}

/// A method call.
pub struct Call<'a> {
    /// The caller's question ID, to be answered by a `Return`.
    pub question_id: u32,
    /// The capability called.
    pub target: MessageTarget<'a>,
    /// Interface that declares the method.
    pub interface_id: u64,
    /// Method ordinal within that interface.
    pub method_id: u16,
    /// Where the results go (always the caller for a level-1 peer).
    pub send_results_to: SendResultsTo,
    /// The parameters.
    pub params: Payload<'a>,
}

impl<'a> Call<'a> {
    fn read(c: call::Reader<'a>) -> Result<Self, DecodeError> {
        use call::send_results_to::Which as W;
        let send_results_to = match c.get_send_results_to().which() {
            Ok(W::Caller(())) => SendResultsTo::Caller,
            Ok(W::Yourself(())) => SendResultsTo::Yourself,
            Ok(W::ThirdParty(_)) => SendResultsTo::ThirdParty,
            Err(capnp::NotInSchema(value)) => {
                return Err(DecodeError::UnknownVariant {
                    what: "Call.sendResultsTo",
                    value,
                })
            }
        };
        Ok(Call {
            question_id: c.get_question_id(),
            target: MessageTarget::read(c.get_target().map_err(malformed("Call.target"))?)?,
            interface_id: c.get_interface_id(),
            method_id: c.get_method_id(),
            send_results_to,
            params: Payload::read(c.get_params().map_err(malformed("Call.params"))?)?,
        })
    }

    /// Whether this calls method `M`.
    pub fn is<M: Method>(&self) -> bool {
        is::<M>(self.interface_id, self.method_id)
    }

    /// The params read as method `M`'s (check [`Call::is`] first).
    pub fn params_of<M: Method>(&self) -> Result<M::Params<'a>, DecodeError> {
        self.params.content()
    }

    /// The params, if the method is one this crate knows.
    pub fn known_params(&self) -> Result<Option<KnownParams<'a>>, DecodeError> {
        KnownParams::read(self.interface_id, self.method_id, self.params.content)
    }
}

impl fmt::Debug for Call<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Call")
            .field("question_id", &self.question_id)
            .field("target", &self.target)
            .field("interface_id", &format_args!("{:#x}", self.interface_id))
            .field("method_id", &self.method_id)
            .field("send_results_to", &self.send_results_to)
            .field("params", &self.params)
            .field("known_params", &self.known_params())
            .finish()
    }
}

/// Where a call's results are to be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendResultsTo {
    /// Back to the caller (the usual case).
    Caller,
    /// Kept by the callee for a later `takeFromOtherQuestion` (level 1 tail calls).
    Yourself,
    /// To a third vat (level 3).
    ThirdParty,
}

/// An answer to one of our questions.
#[derive(Debug)]
pub struct Return<'a> {
    /// The question answered.
    pub answer_id: u32,
    /// Whether capabilities in our params are released too.
    pub release_param_caps: bool,
    /// The outcome.
    pub body: ReturnBody<'a>,
}

impl<'a> Return<'a> {
    fn read(r: return_::Reader<'a>) -> Result<Self, DecodeError> {
        use return_::Which as W;
        let body = match r.which() {
            Ok(W::Results(p)) => {
                ReturnBody::Results(Payload::read(p.map_err(malformed("Return.results"))?)?)
            }
            Ok(W::Exception(e)) => {
                ReturnBody::Exception(Exception::read(e.map_err(malformed("Return.exception"))?)?)
            }
            Ok(W::Canceled(())) => ReturnBody::Canceled,
            Ok(W::ResultsSentElsewhere(())) => ReturnBody::ResultsSentElsewhere,
            Ok(W::TakeFromOtherQuestion(q)) => ReturnBody::TakeFromOtherQuestion(q),
            Ok(W::AcceptFromThirdParty(_)) => ReturnBody::AcceptFromThirdParty,
            Err(capnp::NotInSchema(value)) => {
                return Err(DecodeError::UnknownVariant {
                    what: "Return",
                    value,
                })
            }
        };
        Ok(Return {
            answer_id: r.get_answer_id(),
            release_param_caps: r.get_release_param_caps(),
            body,
        })
    }
}

/// How a call ended.
#[derive(Debug)]
pub enum ReturnBody<'a> {
    /// It succeeded; read the results with [`Payload::content`] (or [`Payload::capability`]
    /// for a bootstrap).
    Results(Payload<'a>),
    /// It failed.
    Exception(Exception<'a>),
    /// It was canceled by our `Finish`.
    Canceled,
    /// Results went where `sendResultsTo` said.
    ResultsSentElsewhere,
    /// Results are those of another question of the callee's.
    TakeFromOtherQuestion(u32),
    /// Results are to be picked up from a third vat (level 3).
    AcceptFromThirdParty,
}

/// Params or results: a struct (or a capability) plus the capabilities it references.
#[derive(Clone, Copy)]
pub struct Payload<'a> {
    content: any_pointer::Reader<'a>,
    cap_table: struct_list::Reader<'a, cap_descriptor::Owned>,
    /// The raw content pointer, to recognise a capability without a capability table.
    content_pointer: Option<[u8; 8]>,
}

impl<'a> Payload<'a> {
    fn read(p: payload::Reader<'a>) -> Result<Self, DecodeError> {
        let pointers = raw::get_list_bytes(raw::get_struct_pointer_section(p));
        Ok(Payload {
            content: p.get_content(),
            cap_table: p.get_cap_table().map_err(malformed("Payload.capTable"))?,
            content_pointer: pointers.first_chunk::<8>().copied(),
        })
    }

    /// The content read as `C` (a method's params or results).
    pub fn content<C: Content<'a>>(&self) -> Result<C, DecodeError> {
        C::read(self.content)
    }

    /// The content read as method `M`'s results (for a `Return` to a call of `M`).
    pub fn results_of<M: Method>(&self) -> Result<M::Results<'a>, DecodeError> {
        self.content()
    }

    /// The capability table, in order.
    pub fn cap_table(&self) -> impl Iterator<Item = Result<CapDescriptor<'a>, DecodeError>> + 'a {
        self.cap_table.iter().map(CapDescriptor::read)
    }

    /// The content as a capability (what a bootstrap returns): its descriptor in the table.
    pub fn capability(&self) -> Result<CapDescriptor<'a>, DecodeError> {
        let index = self
            .content_pointer
            .and_then(|p| capability_index(&p))
            .ok_or(DecodeError::NotCapability {
                what: "payload content",
            })?;
        let entry = self.cap_table.try_get(index).ok_or(DecodeError::CapIndex {
            index,
            len: self.cap_table.len(),
        })?;
        CapDescriptor::read(entry)
    }
}

impl fmt::Debug for Payload<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let content = match self.content_pointer {
            Some(p) if capability_index(&p).is_some() => "capability",
            Some(p) if p != [0; 8] => "object",
            _ => "null",
        };
        f.debug_struct("Payload")
            .field("content", &content)
            .field("cap_table", &self.cap_table().collect::<Vec<_>>())
            .finish()
    }
}

/// Low word of a capability pointer: kind "other" (3), subkind capability (0).
const CAPABILITY_POINTER: u32 = 3;

/// The capability-table index a raw pointer refers to, if it is a capability pointer.
fn capability_index(pointer: &[u8; 8]) -> Option<u32> {
    let [a, b, c, d, e, f, g, h] = *pointer;
    (u32::from_le_bytes([a, b, c, d]) == CAPABILITY_POINTER)
        .then(|| u32::from_le_bytes([e, f, g, h]))
}

/// The raw capability pointer to table entry `index`.
fn capability_pointer(index: u32) -> [u8; 8] {
    let mut p = [0; 8];
    p[..4].copy_from_slice(&CAPABILITY_POINTER.to_le_bytes());
    p[4..].copy_from_slice(&index.to_le_bytes());
    p
}

/// The capability a message is addressed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageTarget<'a> {
    /// A capability the receiver exported to the sender.
    ImportedCap(u32),
    /// The capability a pending question will return (e.g. the bootstrap, before it returns).
    PromisedAnswer(PromisedAnswer<'a>),
}

impl<'a> MessageTarget<'a> {
    /// The capability that question `question_id` (a bootstrap) returns.
    pub const fn bootstrap_answer(question_id: u32) -> Self {
        MessageTarget::PromisedAnswer(PromisedAnswer {
            question_id,
            transform: Transform::EMPTY,
        })
    }

    fn read(t: message_target::Reader<'a>) -> Result<Self, DecodeError> {
        use message_target::Which as W;
        match t.which() {
            Ok(W::ImportedCap(id)) => Ok(MessageTarget::ImportedCap(id)),
            Ok(W::PromisedAnswer(p)) => Ok(MessageTarget::PromisedAnswer(PromisedAnswer::read(
                p.map_err(malformed("MessageTarget.promisedAnswer"))?,
            )?)),
            Err(capnp::NotInSchema(value)) => Err(DecodeError::UnknownVariant {
                what: "MessageTarget",
                value,
            }),
        }
    }

    fn write(&self, mut b: message_target::Builder<'_>) -> Result<(), EncodeError> {
        match self {
            MessageTarget::ImportedCap(id) => {
                b.set_imported_cap(*id);
                Ok(())
            }
            MessageTarget::PromisedAnswer(p) => p.write(b.init_promised_answer()),
        }
    }

    fn words(&self) -> usize {
        // Target 1+1, promised answer 1+1, transform tag + 1 word per op.
        match self {
            MessageTarget::ImportedCap(_) => 2,
            MessageTarget::PromisedAnswer(p) => 5 + p.transform.len(),
        }
    }
}

/// A capability that a question's answer will hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromisedAnswer<'a> {
    /// The question (in the sender's question table).
    pub question_id: u32,
    /// Path from the answer's root to the capability (empty for a bootstrap).
    pub transform: Transform<'a>,
}

impl<'a> PromisedAnswer<'a> {
    fn read(p: promised_answer::Reader<'a>) -> Result<Self, DecodeError> {
        let ops = p
            .get_transform()
            .map_err(malformed("PromisedAnswer.transform"))?;
        Ok(PromisedAnswer {
            question_id: p.get_question_id(),
            transform: Transform(Some(ops)),
        })
    }

    fn write(&self, mut b: promised_answer::Builder<'_>) -> Result<(), EncodeError> {
        b.set_question_id(self.question_id);
        // Written even when empty (an empty list, not null), as capnp-go does.
        let mut ops = b.init_transform(self.transform.len() as u32);
        for (i, op) in (0..).zip(self.transform.iter()) {
            let op = op.map_err(|source| EncodeError::Unreadable {
                what: "PromisedAnswer.transform",
                source: Box::new(source),
            })?;
            let mut o = ops.reborrow().get(i);
            match op {
                Op::Noop => o.set_noop(()),
                Op::GetPointerField(f) => o.set_get_pointer_field(f),
            }
        }
        Ok(())
    }
}

/// The path of a [`PromisedAnswer`]: empty, or as received.
#[derive(Clone, Copy)]
pub struct Transform<'a>(Option<struct_list::Reader<'a, promised_answer::op::Owned>>);

impl<'a> Transform<'a> {
    /// No steps: the answer itself.
    pub const EMPTY: Transform<'static> = Transform(None);

    /// Number of steps.
    pub fn len(&self) -> usize {
        self.0.map_or(0, |ops| ops.len() as usize)
    }

    /// Whether there are no steps.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The steps in order.
    pub fn iter(&self) -> impl Iterator<Item = Result<Op, DecodeError>> + 'a {
        self.0.into_iter().flat_map(|ops| ops.iter()).map(|op| {
            use promised_answer::op::Which as W;
            match op.which() {
                Ok(W::Noop(())) => Ok(Op::Noop),
                Ok(W::GetPointerField(f)) => Ok(Op::GetPointerField(f)),
                Err(capnp::NotInSchema(value)) => Err(DecodeError::UnknownVariant {
                    what: "PromisedAnswer.Op",
                    value,
                }),
            }
        })
    }
}

impl PartialEq for Transform<'_> {
    fn eq(&self, other: &Self) -> bool {
        super::same_items(self.iter(), other.iter())
    }
}

impl Eq for Transform<'_> {}

impl fmt::Debug for Transform<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// One step of a [`Transform`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Nothing.
    Noop,
    /// Follow pointer field `n` (an index into the pointer section) of the current struct.
    GetPointerField(u16),
}

/// How one capability in a payload is passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapDescriptor<'a> {
    /// No capability (a tombstone).
    None,
    /// A capability the sender exports under this ID.
    SenderHosted(u32),
    /// A promise the sender exports under this ID and will `Resolve` later.
    SenderPromise(u32),
    /// A capability the receiver exported to the sender.
    ReceiverHosted(u32),
    /// A capability one of the sender's pending questions will return.
    ReceiverAnswer(PromisedAnswer<'a>),
    /// A capability in a third vat, reachable through the sender's vine export.
    ThirdPartyHosted {
        /// The sender's proxy export.
        vine_id: u32,
    },
}

impl<'a> CapDescriptor<'a> {
    fn read(d: cap_descriptor::Reader<'a>) -> Result<Self, DecodeError> {
        use cap_descriptor::Which as W;
        Ok(match d.which() {
            Ok(W::None(())) => CapDescriptor::None,
            Ok(W::SenderHosted(id)) => CapDescriptor::SenderHosted(id),
            Ok(W::SenderPromise(id)) => CapDescriptor::SenderPromise(id),
            Ok(W::ReceiverHosted(id)) => CapDescriptor::ReceiverHosted(id),
            Ok(W::ReceiverAnswer(p)) => CapDescriptor::ReceiverAnswer(PromisedAnswer::read(
                p.map_err(malformed("CapDescriptor.receiverAnswer"))?,
            )?),
            Ok(W::ThirdPartyHosted(t)) => CapDescriptor::ThirdPartyHosted {
                vine_id: t
                    .map_err(malformed("CapDescriptor.thirdPartyHosted"))?
                    .get_vine_id(),
            },
            Err(capnp::NotInSchema(value)) => {
                return Err(DecodeError::UnknownVariant {
                    what: "CapDescriptor",
                    value,
                })
            }
        })
    }
}

/// What a `Resolve` settles a promise to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution<'a> {
    /// A capability.
    Cap(CapDescriptor<'a>),
    /// A broken promise.
    Exception(Exception<'a>),
}

impl<'a> Resolution<'a> {
    fn read(r: resolve::Reader<'a>) -> Result<Self, DecodeError> {
        use resolve::Which as W;
        match r.which() {
            Ok(W::Cap(c)) => Ok(Resolution::Cap(CapDescriptor::read(
                c.map_err(malformed("Resolve.cap"))?,
            )?)),
            Ok(W::Exception(e)) => Ok(Resolution::Exception(Exception::read(
                e.map_err(malformed("Resolve.exception"))?,
            )?)),
            Err(capnp::NotInSchema(value)) => Err(DecodeError::UnknownVariant {
                what: "Resolve",
                value,
            }),
        }
    }
}

/// Which leg of the embargo protocol a `Disembargo` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisembargoContext {
    /// The sender asks for this embargo ID to be reflected back.
    SenderLoopback(u32),
    /// The reflection of one of our `SenderLoopback`s.
    ReceiverLoopback(u32),
    /// Level 3.
    Accept,
    /// Level 3.
    Provide(u32),
}

impl DisembargoContext {
    fn read(d: disembargo::Reader<'_>) -> Result<Self, DecodeError> {
        use disembargo::context::Which as W;
        match d.get_context().which() {
            Ok(W::SenderLoopback(id)) => Ok(DisembargoContext::SenderLoopback(id)),
            Ok(W::ReceiverLoopback(id)) => Ok(DisembargoContext::ReceiverLoopback(id)),
            Ok(W::Accept(())) => Ok(DisembargoContext::Accept),
            Ok(W::Provide(q)) => Ok(DisembargoContext::Provide(q)),
            Err(capnp::NotInSchema(value)) => Err(DecodeError::UnknownVariant {
                what: "Disembargo.context",
                value,
            }),
        }
    }
}

/// Why a call or a connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exception<'a> {
    /// Human-readable description.
    pub reason: &'a str,
    /// How the receiver may react.
    pub kind: ExceptionType,
}

impl<'a> Exception<'a> {
    /// A `failed` exception with this reason.
    pub const fn failed(reason: &'a str) -> Self {
        Exception {
            reason,
            kind: ExceptionType::Failed,
        }
    }

    fn read(e: exception::Reader<'a>) -> Result<Self, DecodeError> {
        Ok(Exception {
            reason: read_text(e.get_reason(), "Exception.reason")?,
            // A type added after this schema is treated as the generic one.
            kind: e
                .get_type()
                .map_or(ExceptionType::Failed, ExceptionType::from),
        })
    }

    fn write(&self, mut b: exception::Builder<'_>) -> Result<(), EncodeError> {
        b.set_type(self.kind.into());
        write_text("Exception.reason", self.reason, |v| b.set_reason(v))
    }

    fn words(&self) -> usize {
        2 + text_words(self.reason)
    }
}

/// How the receiver of an exception may react to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExceptionType {
    /// Retrying unchanged will fail again (also used for unknown wire values).
    Failed,
    /// Temporary lack of resources; retry later.
    Overloaded,
    /// A needed connection was lost; reconnect and retry.
    Disconnected,
    /// The method is not implemented.
    Unimplemented,
}

impl From<exception::Type> for ExceptionType {
    fn from(t: exception::Type) -> Self {
        match t {
            exception::Type::Failed => ExceptionType::Failed,
            exception::Type::Overloaded => ExceptionType::Overloaded,
            exception::Type::Disconnected => ExceptionType::Disconnected,
            exception::Type::Unimplemented => ExceptionType::Unimplemented,
        }
    }
}

impl From<ExceptionType> for exception::Type {
    fn from(t: ExceptionType) -> Self {
        match t {
            ExceptionType::Failed => exception::Type::Failed,
            ExceptionType::Overloaded => exception::Type::Overloaded,
            ExceptionType::Disconnected => exception::Type::Disconnected,
            ExceptionType::Unimplemented => exception::Type::Unimplemented,
        }
    }
}

/// Words of framing overhead every message shares: root pointer + `Message` (1+1).
const MESSAGE_WORDS: usize = 3;

fn write_rpc(
    what: &'static str,
    words: usize,
    out: &mut Vec<u8>,
    build: impl FnOnce(message::Builder<'_>) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    write_message::<message::Owned, _>(what, MESSAGE_WORDS + words, out, build)
}

/// Appends a `Bootstrap` asking for the peer's bootstrap capability.
pub fn encode_bootstrap(question_id: u32, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    write_rpc("Bootstrap", 2, out, |m| {
        m.init_bootstrap().set_question_id(question_id);
        Ok(())
    })
}

/// Appends a `Call` of method `M` on `target` with `params`.
pub fn encode_call<M: Method>(
    question_id: u32,
    target: &MessageTarget<'_>,
    params: &M::Params<'_>,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    // Call 3+3, payload 0+2, empty cap table tag.
    let words = 9 + target.words() + params.words();
    write_rpc("Call", words, out, |m| {
        let mut c = m.init_call();
        c.set_question_id(question_id);
        c.set_interface_id(M::INTERFACE_ID);
        c.set_method_id(M::METHOD_ID);
        target.write(c.reborrow().init_target())?;
        write_payload(c.init_params(), params)
    })
}

/// Starts a `Return` the way capnp-go writes it (`releaseParamCaps` false: none are passed).
fn init_return(m: message::Builder<'_>, answer_id: u32) -> return_::Builder<'_> {
    let mut r = m.init_return();
    r.set_answer_id(answer_id);
    r.set_release_param_caps(false);
    r
}

/// Appends a `Return` carrying method `M`'s results.
pub fn encode_return<M: Method>(
    answer_id: u32,
    results: &M::Results<'_>,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    // Return 2+1, payload 0+2, empty cap table tag.
    write_rpc("Return", 6 + results.words(), out, |m| {
        write_payload(init_return(m, answer_id).init_results(), results)
    })
}

/// Writes a payload with no capabilities: the content, then an empty (not null) capability
/// table, in capnp-go's order, so that our bytes equal cloudflared's.
fn write_payload<'a, C: Content<'a>>(
    mut p: payload::Builder<'_>,
    content: &C,
) -> Result<(), EncodeError> {
    content.write(p.reborrow().init_content())?;
    p.init_cap_table(0);
    Ok(())
}

/// Appends a `Return` answering a `Bootstrap` with our capability exported as `export_id`.
pub fn encode_bootstrap_return(
    answer_id: u32,
    export_id: u32,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    const WHAT: &str = "bootstrap Return";
    let start = out.len();
    // Return 2+1, payload 0+2, cap table tag + 1 descriptor (1+1).
    write_rpc(WHAT, 8, out, |m| {
        let results = init_return(m, answer_id).init_results();
        let mut table = results.init_cap_table(1);
        table.reborrow().get(0).set_sender_hosted(export_id);
        Ok(())
    })?;
    // capnp can only write a capability pointer through a live capability table, so the
    // content pointer (still null) is set in the encoded bytes.
    let frame = out.get_mut(start..).unwrap_or_default();
    match content_pointer_offset(frame)
        .and_then(|at| frame.get_mut(at..at.checked_add(8)?))
        .filter(|word| word.iter().all(|&b| b == 0))
    {
        Some(word) => {
            word.copy_from_slice(&capability_pointer(0));
            Ok(())
        }
        None => {
            out.truncate(start);
            Err(EncodeError::Capnp {
                what: WHAT,
                source: capnp::Error::failed("payload content pointer not found".into()),
            })
        }
    }
}

/// Offset in `frame` of the content pointer of the `Return` it holds.
fn content_pointer_offset(frame: &[u8]) -> Option<usize> {
    let (msg, _) = read_frame(
        frame,
        &FrameLimits::RPC.with_max_bytes(frame.len()),
        "Return",
    )
    .ok()
    .flatten()?;
    let root = msg.get_root::<message::Reader<'_>>().ok()?;
    let message::Which::Return(Ok(r)) = root.which().ok()? else {
        return None;
    };
    let return_::Which::Results(Ok(p)) = r.which().ok()? else {
        return None;
    };
    let pointers = raw::get_list_bytes(raw::get_struct_pointer_section(p));
    (pointers.as_ptr() as usize).checked_sub(frame.as_ptr() as usize)
}

/// Appends a `Return` saying the call failed.
pub fn encode_exception_return(
    answer_id: u32,
    exception: &Exception<'_>,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    write_rpc("Return", 3 + exception.words(), out, |m| {
        exception.write(init_return(m, answer_id).init_exception())
    })
}

/// Appends a `Finish` for one of our questions.
///
/// After a bootstrap, pass `release_result_caps = false` to keep using the capability (as
/// capnp-go does, then calling it as an imported capability).
pub fn encode_finish(
    question_id: u32,
    release_result_caps: bool,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    write_rpc("Finish", 1, out, |m| {
        let mut f = m.init_finish();
        f.set_question_id(question_id);
        f.set_release_result_caps(release_result_caps);
        Ok(())
    })
}

/// Appends an `Abort` (then close the stream); cloudflared sends [`SHUTDOWN_REASON`].
pub fn encode_abort(exception: &Exception<'_>, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    write_rpc("Abort", exception.words(), out, |m| {
        exception.write(m.init_abort())
    })
}

/// Appends a `Release` of an imported capability.
pub fn encode_release(id: u32, reference_count: u32, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    write_rpc("Release", 1, out, |m| {
        let mut r = m.init_release();
        r.set_id(id);
        r.set_reference_count(reference_count);
        Ok(())
    })
}

/// Appends an `Unimplemented` echoing `original` back to its sender.
///
/// Fails if `original` carries capability pointers (which only a live capability table could
/// copy); answer such a `Call` with [`encode_exception_return`] instead.
pub fn encode_unimplemented(
    original: &IncomingMessage<'_>,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    const WHAT: &str = "Unimplemented";
    let root = original.root().map_err(|source| EncodeError::Unreadable {
        what: WHAT,
        source: Box::new(source),
    })?;
    write_rpc(WHAT, original.msg.size_in_words(), out, |mut m| {
        m.set_unimplemented(root)
            .map_err(|source| EncodeError::Capnp { what: WHAT, source })
    })
}
