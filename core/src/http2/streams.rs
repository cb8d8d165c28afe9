//! The streams of one HTTP/2 connection, as both roles see them: bodies read by pulling (flow
//! control credit goes back to the peer only as the caller reads, so a slow origin holds the
//! peer back instead of growing a buffer), bodies written through a bounded queue that h2 drains
//! as the peer's windows open.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::task::{Context, Poll};

use bytes::Bytes;
use h2::client::ResponseFuture;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::{HeaderMap, Response};
use thiserror::Error;

use super::request::RequestKind;

/// An HTTP/2 stream id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId(pub u32);

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl From<h2::StreamId> for StreamId {
    fn from(id: h2::StreamId) -> Self {
        StreamId(id.into())
    }
}

/// What reading a stream's body gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// The next body bytes; their flow-control credit is returned to the peer.
    Data(Bytes),
    /// Nothing now; [`StreamEvent::Readable`] says when to read again.
    Blocked,
    /// The peer finished its body.
    Finished,
}

/// Something happened on a stream the caller knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// [`Read`] has something new (data or the end).
    Readable(StreamId),
    /// The send queue has room again after a short write.
    Writable(StreamId),
    /// The stream is gone: reset by the peer, or failed. Forgotten after this event.
    Reset {
        /// Which stream.
        stream: StreamId,
        /// The RST_STREAM (or connection) error code.
        reason: Reason,
    },
}

/// The caller used the API wrongly (as opposed to the peer breaking the protocol).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ApiError {
    /// No such stream (never existed, finished, or reset).
    #[error("no stream {0}")]
    UnknownStream(StreamId),
    /// The stream was already answered.
    #[error("stream {0} already has a response head")]
    AlreadyResponded(StreamId),
    /// Body bytes before the response head.
    #[error("stream {0} has no response head yet")]
    NotResponded(StreamId),
    /// The caller already finished its side of the stream.
    #[error("stream {0} is already finished")]
    Finished(StreamId),
    /// The connection is not ready for new streams (handshaking, at its stream limit, closing).
    #[error("the connection cannot open a stream now")]
    NotReady,
    /// The connection is over.
    #[error("the connection is closed")]
    Closed,
}

/// Why the caller finished its side.
#[derive(Debug)]
enum Fin {
    /// END_STREAM after the queued body.
    End,
    /// Trailers after the queued body.
    Trailers(HeaderMap),
}

/// One stream's state.
#[derive(Debug)]
pub(crate) struct Stream {
    /// What the edge marked it as (connector role; `Http` on the edge role).
    pub(crate) kind: RequestKind,
    /// The peer's body, until it ends or the stream is reset.
    pub(crate) recv: Option<RecvStream>,
    /// Body bytes polled from h2 but not yet read by the caller (more than one chunk only once
    /// the connection ended, see [`Streams::settle`]).
    stash: VecDeque<Bytes>,
    /// The peer's body ended (reported to the caller once `recv_reported`).
    recv_ended: bool,
    /// `Read::Finished` was returned.
    recv_reported: bool,
    /// Tell the caller when something becomes readable.
    want_readable: bool,
    /// Our body, once the head is out.
    pub(crate) send: Option<SendStream<Bytes>>,
    /// Connector role: the head not sent yet (Go sends an unflushed head with the first write).
    pub(crate) deferred_head: Option<Response<()>>,
    /// Connector role: answers the request.
    pub(crate) respond: Option<SendResponse<Bytes>>,
    /// Connector role: a head was given (sent or deferred).
    pub(crate) responded: bool,
    /// Edge role: the connector's response head, until it arrives.
    pub(crate) response: Option<ResponseFuture>,
    /// Body bytes accepted from the caller, not yet handed to h2.
    queue: VecDeque<Bytes>,
    queued: usize,
    fin: Option<Fin>,
    /// END_STREAM (or trailers) handed to h2.
    send_ended: bool,
    /// Tell the caller when the queue has room.
    want_writable: bool,
}

impl Stream {
    /// A stream with a body to receive (connector) or a response to wait for (edge).
    pub(crate) fn new(kind: RequestKind) -> Self {
        Stream {
            kind,
            recv: None,
            stash: VecDeque::new(),
            recv_ended: false,
            recv_reported: false,
            want_readable: true,
            send: None,
            deferred_head: None,
            respond: None,
            responded: false,
            response: None,
            queue: VecDeque::new(),
            queued: 0,
            fin: None,
            send_ended: false,
            want_writable: false,
        }
    }

    /// Marks our side as ended without a body (a head sent with END_STREAM).
    pub(crate) fn ended_with_head(&mut self) {
        self.fin = Some(Fin::End);
        self.send_ended = true;
    }

    /// Whether both sides are over and the caller has been told.
    fn done(&self) -> bool {
        self.send_ended && self.recv_reported
    }
}

/// Outcome of polling h2 for one stream.
type Step = Result<bool, Reason>;

/// All streams of a connection, in id order (so polling, and what it emits, is deterministic).
#[derive(Debug)]
pub(crate) struct Streams {
    pub(crate) map: BTreeMap<u32, Stream>,
    /// Per-stream bound of the send queue, in bytes.
    send_queue_limit: usize,
    /// Something changed since the pump last looked.
    pub(crate) progress: bool,
}

/// The h2 error code of a failed stream operation.
pub(crate) fn reason_of(e: &h2::Error) -> Reason {
    e.reason().unwrap_or(Reason::INTERNAL_ERROR)
}

impl Streams {
    pub(crate) fn new(send_queue_limit: usize) -> Self {
        Streams {
            map: BTreeMap::new(),
            send_queue_limit,
            progress: false,
        }
    }

    pub(crate) fn get(&mut self, id: StreamId) -> Result<&mut Stream, ApiError> {
        self.map.get_mut(&id.0).ok_or(ApiError::UnknownStream(id))
    }

    /// Pulls the next body bytes of `id`.
    pub(crate) fn read(&mut self, cx: &mut Context<'_>, id: StreamId) -> Result<Read, ApiError> {
        let s = self.get(id)?;
        let read = match s.stash.pop_front() {
            Some(data) => Ok(Read::Data(data)),
            None if s.recv_ended => Ok(Read::Finished),
            None => poll_body(s, cx),
        };
        let read = match read {
            Ok(Read::Data(data)) => {
                if let Some(recv) = s.recv.as_mut() {
                    // Cannot fail: the bytes were received and not yet released.
                    let _ = recv.flow_control().release_capacity(data.len());
                }
                Read::Data(data)
            }
            Ok(Read::Blocked) => {
                s.want_readable = true;
                Read::Blocked
            }
            Ok(Read::Finished) => {
                s.recv_reported = true;
                s.recv = None;
                Read::Finished
            }
            // The reset is reported by the pump, which polls the same state.
            Err(_) => {
                s.want_readable = true;
                Read::Blocked
            }
        };
        self.progress = true;
        if self.map.get(&id.0).is_some_and(Stream::done) {
            self.map.remove(&id.0);
        }
        Ok(read)
    }

    /// Queues body bytes of `id`: takes as many as the queue bound allows and returns how many
    /// (a short count arms [`StreamEvent::Writable`]).
    pub(crate) fn send_data(&mut self, id: StreamId, mut data: Bytes) -> Result<usize, ApiError> {
        let limit = self.send_queue_limit;
        let s = self.get(id)?;
        if s.fin.is_some() {
            return Err(ApiError::Finished(id));
        }
        if s.send.is_none() && s.deferred_head.is_none() {
            return Err(ApiError::NotResponded(id));
        }
        let room = limit.saturating_sub(s.queued);
        let take = room.min(data.len());
        if take < data.len() {
            s.want_writable = true;
            data.truncate(take);
        }
        if take > 0 {
            s.queued += take;
            s.queue.push_back(data);
        }
        self.progress = true;
        Ok(take)
    }

    /// Ends our side of `id` after the queued body, with trailers if given.
    pub(crate) fn finish(
        &mut self,
        id: StreamId,
        trailers: Option<HeaderMap>,
    ) -> Result<(), ApiError> {
        let s = self.get(id)?;
        if s.fin.is_some() {
            return Err(ApiError::Finished(id));
        }
        if s.send.is_none() && s.deferred_head.is_none() {
            return Err(ApiError::NotResponded(id));
        }
        s.fin = Some(trailers.map_or(Fin::End, Fin::Trailers));
        self.progress = true;
        Ok(())
    }

    /// Resets `id` with `reason` and forgets it.
    pub(crate) fn reset(&mut self, id: StreamId, reason: Reason) -> Result<(), ApiError> {
        let mut s = self.map.remove(&id.0).ok_or(ApiError::UnknownStream(id))?;
        if let Some(send) = s.send.as_mut() {
            send.send_reset(reason);
        } else if let Some(respond) = s.respond.as_mut() {
            respond.send_reset(reason);
        }
        self.progress = true;
        Ok(())
    }

    /// Moves every stream forward: body bytes into h2 as windows allow, readability and resets
    /// out as events.
    pub(crate) fn pump<E: From<StreamEvent>>(
        &mut self,
        cx: &mut Context<'_>,
        events: &mut VecDeque<E>,
    ) {
        let mut gone = Vec::new();
        for (&raw, s) in self.map.iter_mut() {
            let id = StreamId(raw);
            match pump_one(s, cx, self.send_queue_limit, id, events) {
                Ok(moved) => self.progress |= moved,
                Err(reason) => {
                    events.push_back(StreamEvent::Reset { stream: id, reason }.into());
                    gone.push(raw);
                }
            }
            if s.done() {
                gone.push(raw);
            }
        }
        for raw in gone {
            self.progress = true;
            self.map.remove(&raw);
        }
    }
}

impl Streams {
    /// The connection ended. A stream whose answer is complete in what arrived before the end
    /// (a drain's last response comes with the GOAWAY and close) stays readable to its end and
    /// is reported readable; every other stream is gone with the connection.
    pub(crate) fn settle<E: From<StreamEvent>>(
        &mut self,
        cx: &mut Context<'_>,
        events: &mut VecDeque<E>,
    ) {
        self.map.retain(|&raw, s| {
            // Edge role only: an answered stream (the connector's requests die with it).
            let answered = s.respond.is_none() && s.response.is_none();
            if !answered || s.recv_reported {
                return false;
            }
            let Some(recv) = s.recv.as_mut() else {
                return false;
            };
            while !s.recv_ended {
                // h2 hands out what it buffered before it reports the connection's end.
                match recv.poll_data(cx) {
                    Poll::Ready(Some(Ok(data))) => {
                        if !data.is_empty() {
                            s.stash.push_back(data);
                        }
                    }
                    Poll::Ready(None) => s.recv_ended = true,
                    // Cut short by the end.
                    Poll::Ready(Some(Err(_))) | Poll::Pending => return false,
                }
            }
            s.recv = None;
            // Nothing can be sent any more: our side is over.
            s.send = None;
            s.queue.clear();
            s.queued = 0;
            s.send_ended = true;
            s.want_writable = false;
            events.push_back(StreamEvent::Readable(StreamId(raw)).into());
            true
        });
    }
}

/// Polls the body of `s` once.
fn poll_body(s: &mut Stream, cx: &mut Context<'_>) -> Result<Read, Reason> {
    let Some(recv) = s.recv.as_mut() else {
        return Ok(Read::Blocked);
    };
    loop {
        return match recv.poll_data(cx) {
            Poll::Ready(Some(Ok(data))) if data.is_empty() => continue,
            Poll::Ready(Some(Ok(data))) => Ok(Read::Data(data)),
            Poll::Ready(Some(Err(e))) => Err(reason_of(&e)),
            Poll::Ready(None) => {
                s.recv_ended = true;
                Ok(Read::Finished)
            }
            Poll::Pending => Ok(Read::Blocked),
        };
    }
}

fn pump_one<E: From<StreamEvent>>(
    s: &mut Stream,
    cx: &mut Context<'_>,
    limit: usize,
    id: StreamId,
    events: &mut VecDeque<E>,
) -> Step {
    let mut moved = false;
    // Peer resets show on the send half even when nobody reads.
    let reset = match (s.send.as_mut(), s.respond.as_mut()) {
        (Some(send), _) if !s.send_ended => send.poll_reset(cx),
        (None, Some(respond)) => respond.poll_reset(cx),
        _ => Poll::Pending,
    };
    if let Poll::Ready(r) = reset {
        let reason = r.unwrap_or_else(|e| reason_of(&e));
        let answered = s.respond.is_none() && s.response.is_none();
        if reason != Reason::NO_ERROR || !answered {
            return Err(reason);
        }
        // RFC 9113 §8.1: the server answered and asks us to stop sending without error (Go
        // does when its handler returns before the request body ended). Our side is over;
        // what it sent is still read to its end.
        s.queue.clear();
        s.queued = 0;
        s.fin = Some(Fin::End);
        s.send_ended = true;
        s.want_writable = false;
        moved = true;
    }
    if s.want_readable && s.stash.is_empty() && s.recv.is_some() {
        match poll_body(s, cx)? {
            Read::Data(data) => {
                s.stash.push_back(data);
                s.want_readable = false;
                events.push_back(StreamEvent::Readable(id).into());
                moved = true;
            }
            Read::Finished => {
                s.want_readable = false;
                events.push_back(StreamEvent::Readable(id).into());
                moved = true;
            }
            Read::Blocked => {}
        }
    }
    moved |= flush_send(s, cx)?;
    if s.want_writable && s.queued < limit {
        s.want_writable = false;
        events.push_back(StreamEvent::Writable(id).into());
        moved = true;
    }
    Ok(moved)
}

/// Hands queued body bytes to h2 as far as the peer's windows allow.
fn flush_send(s: &mut Stream, cx: &mut Context<'_>) -> Step {
    if s.send_ended || (s.queue.is_empty() && s.fin.is_none()) {
        return Ok(false);
    }
    if s.send.is_none() {
        let Some(head) = s.deferred_head.take() else {
            return Ok(false);
        };
        let respond = s.respond.as_mut().ok_or(Reason::INTERNAL_ERROR)?;
        let end = s.queue.is_empty() && matches!(s.fin, Some(Fin::End));
        let send = respond
            .send_response(head, end)
            .map_err(|e| reason_of(&e))?;
        if end {
            s.send_ended = true;
            return Ok(true);
        }
        s.send = Some(send);
    }
    let Some(send) = s.send.as_mut() else {
        return Ok(false);
    };
    let mut moved = false;
    while let Some(front) = s.queue.front_mut() {
        let mut capacity = send.capacity();
        if capacity == 0 {
            send.reserve_capacity(s.queued);
            capacity = match send.poll_capacity(cx) {
                Poll::Ready(Some(Ok(n))) => n,
                Poll::Ready(Some(Err(e))) => return Err(reason_of(&e)),
                Poll::Ready(None) => return Err(Reason::STREAM_CLOSED),
                Poll::Pending => 0,
            };
            if capacity == 0 {
                break;
            }
        }
        let chunk = if front.len() <= capacity {
            s.queue.pop_front().unwrap_or_default()
        } else {
            front.split_to(capacity)
        };
        s.queued -= chunk.len();
        let end = s.queue.is_empty() && matches!(s.fin, Some(Fin::End));
        send.send_data(chunk, end).map_err(|e| reason_of(&e))?;
        s.send_ended = end;
        moved = true;
    }
    // Ask for what is still queued; returns unused capacity to the connection when empty.
    send.reserve_capacity(s.queued);
    if s.queue.is_empty() && !s.send_ended {
        match s.fin.take() {
            Some(Fin::End) => {
                send.send_data(Bytes::new(), true)
                    .map_err(|e| reason_of(&e))?;
                s.fin = Some(Fin::End);
                s.send_ended = true;
                moved = true;
            }
            Some(Fin::Trailers(trailers)) => {
                send.send_trailers(trailers).map_err(|e| reason_of(&e))?;
                s.fin = Some(Fin::End);
                s.send_ended = true;
                moved = true;
            }
            None => {}
        }
    }
    Ok(moved)
}
