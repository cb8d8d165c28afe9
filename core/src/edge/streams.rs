//! Eyeball streams: each request the edge forwards into a tunnel, named by the driver
//! ([`EyeballId`]) and paced both ways. A request-body chunk is acknowledged
//! ([`StreamEvent::Ack`]) once the transport took it whole, so the eyeball keeps a bounded
//! number of chunks unacknowledged (queued here until there is room); a response-body chunk
//! goes out only against a credit ([`Streams::read_more`]), so a slow eyeball holds its tunnel
//! stream (and the connector, through flow control) rather than the edge's memory.
//!
//! What a stream holds for its eyeball takes room in its connection's receive window. A
//! stream whose eyeball has not taken its chunk for [`HELD_AFTER`] is held: its connection's
//! window grows to make room for it beside the others, for up to [`EDGE_HELD_STREAMS`] of them
//! ([`crate::receive_window`]). When that many wait on their eyeballs, those that waited
//! longer than [`EYEBALL_PATIENCE`] are reset, longest first: eyeballs that stopped reading,
//! or read slower than a chunk per [`EYEBALL_PATIENCE`], cannot stop the tunnel's other
//! requests. Both are looked at when a request opens on the connection and on every timeout.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::time::{Duration, Instant};

use bytes::Bytes;
use thiserror::Error;

use crate::control::ApiError;
use crate::receive_window::EDGE_HELD_STREAMS;
use crate::stream::connect::ConnectRequest;
use crate::tunnel::append_pieces;
use crate::tunnel::edge::ConnId;
use crate::tunnel::edge_transports::{DataStream, EdgeTransports};

/// Request bytes queued per stream inside a QUIC connection.
pub const SEND_WINDOW: usize = 256 * 1024;
/// Largest response chunk handed to the eyeball at once.
pub const READ_CHUNK: usize = 64 * 1024;
/// A response chunk read as one piece at least this large goes to the eyeball as it is:
/// quinn gathers a stream's unread packets into one buffer when they pile up (an eyeball
/// slower than the connector), so copying its slices again would copy every byte twice.
/// Smaller pieces (one packet's worth) are copied together, so the eyeball holds no slice of
/// a receive buffer the connection would otherwise reuse.
const UNCOPIED_MIN: usize = 16 * 1024;
/// How long a stream may wait on its eyeball to take a chunk before its crowded connection
/// may reset it (see the module's doc).
pub const EYEBALL_PATIENCE: Duration = Duration::from_secs(10);
/// How long a stream waits on its eyeball before its connection's window makes room for it:
/// long past what a busy edge takes to write a chunk to an eyeball that reads, so that those
/// do not widen it.
pub const HELD_AFTER: Duration = Duration::from_secs(1);

/// One eyeball stream, as the driver numbered it when it opened it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EyeballId(pub u64);

/// Why a stream could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OpenError {
    /// No tunnel serves the hostname.
    #[error("no tunnel serves this hostname")]
    NoRoute,
    /// The tunnel has no registered connection.
    #[error("no connection to the tunnel")]
    NoConnection,
    /// The connection refused the stream.
    #[error("{0}")]
    Transport(#[from] ApiError),
}

/// What happened to an eyeball stream, for the eyeball.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// The stream could not be opened; nothing more comes.
    Refused(OpenError),
    /// The connector's `ConnectResponse`.
    Response {
        /// `ConnectResponse.error` (empty: success).
        error: String,
        /// Its metadata, in wire order.
        metadata: Vec<(String, String)>,
    },
    /// The oldest unacknowledged request-body chunk was taken whole (one per chunk, in order).
    Ack,
    /// Response-body bytes; call [`Streams::read_more`] for the next chunk.
    Body(Bytes),
    /// The response ended; nothing more comes.
    End,
    /// The stream was reset (by the connector, or its connection closed); nothing more comes.
    Reset,
}

impl StreamEvent {
    /// Whether nothing comes after it.
    pub fn is_last(&self) -> bool {
        matches!(self, Self::Refused(_) | Self::End | Self::Reset)
    }
}

struct Stream {
    conn: ConnId,
    stream: DataStream,
    /// Request bytes waiting for room.
    unsent: VecDeque<Bytes>,
    finish: bool,
    readable: bool,
    credit: bool,
    /// When the chunk the eyeball has not taken yet went out.
    waiting_since: Option<Instant>,
}

impl Stream {
    fn has_work(&self) -> bool {
        !self.unsent.is_empty() || self.finish || (self.readable && self.credit)
    }
}

/// Every eyeball stream of the edge.
#[derive(Default)]
pub struct Streams {
    by_id: HashMap<EyeballId, Stream>,
    by_key: HashMap<(ConnId, DataStream), EyeballId>,
    /// Streams that may have work; a stream blocked on transport room stays here.
    active: BTreeSet<EyeballId>,
    /// The pieces of the response chunk being read (kept for its capacity).
    pieces: Vec<Bytes>,
    /// The active streams one pump visits (kept for its capacity: a pump runs per packet).
    visiting: Vec<EyeballId>,
    /// Per connection, the streams waiting on their eyeballs, by when they began to. A
    /// connection's set stays, empty or not, until it closes: a download takes it in and out
    /// of it once per chunk, which would otherwise allocate and free a map node each time.
    waiting: BTreeMap<ConnId, BTreeSet<(Instant, EyeballId)>>,
}

impl Streams {
    /// None.
    pub fn new() -> Self {
        Self::default()
    }

    /// Streams open.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Opens `id` on `conn` with `request`, first making room on `conn` for it (see the
    /// module's doc; each stream reset for it is passed to `reset`, and gets no event of its
    /// own).
    pub fn open(
        &mut self,
        now: Instant,
        tp: &mut EdgeTransports,
        id: EyeballId,
        conn: ConnId,
        request: &ConnectRequest<'_>,
        reset: &mut impl FnMut(ConnId, EyeballId),
    ) -> Result<(), OpenError> {
        self.make_room(now, tp, conn, reset);
        let stream = tp.open_request(now, conn, request)?;
        self.by_key.insert((conn, stream), id);
        self.by_id.insert(
            id,
            Stream {
                conn,
                stream,
                unsent: VecDeque::new(),
                finish: false,
                readable: false,
                credit: true,
                waiting_since: None,
            },
        );
        Ok(())
    }

    /// The connection stream `id` is on, while it is open.
    pub fn connection(&self, id: EyeballId) -> Option<ConnId> {
        self.by_id.get(&id).map(|s| s.conn)
    }

    /// Request-body bytes from the eyeball (acknowledged once taken).
    pub fn body(&mut self, id: EyeballId, bytes: Bytes) {
        if let Some(s) = self.by_id.get_mut(&id) {
            s.unsent.push_back(bytes);
            self.active.insert(id);
        }
    }

    /// The request body ended (after what was queued).
    pub fn finish(&mut self, id: EyeballId) {
        if let Some(s) = self.by_id.get_mut(&id) {
            s.finish = true;
            self.active.insert(id);
        }
    }

    /// The eyeball took the last response chunk: the next may go.
    pub fn read_more(&mut self, id: EyeballId) {
        if let Some(s) = self.by_id.get_mut(&id) {
            s.credit = true;
            unwait(&mut self.waiting, id, s);
            // Whatever is buffered may be readable without a new event.
            s.readable = true;
            self.active.insert(id);
        }
    }

    /// The eyeball went away: the stream is reset (stopping it gives its unread bytes back to
    /// the connection's receive window).
    pub fn reset(&mut self, now: Instant, tp: &mut EdgeTransports, id: EyeballId) {
        if let Some(s) = self.remove(id) {
            let _ = tp.reset_request(now, s.conn, s.stream);
        }
    }

    /// The connector's `ConnectResponse` on a stream.
    pub fn on_response(
        &mut self,
        conn: ConnId,
        stream: DataStream,
        error: String,
        metadata: Vec<(String, String)>,
        out: &mut impl FnMut(EyeballId, StreamEvent),
    ) {
        if let Some(&id) = self.by_key.get(&(conn, stream)) {
            out(id, StreamEvent::Response { error, metadata });
        }
    }

    /// Response bytes (or the end) can be read on a stream.
    pub fn on_readable(&mut self, conn: ConnId, stream: DataStream) {
        if let Some(&id) = self.by_key.get(&(conn, stream)) {
            if let Some(s) = self.by_id.get_mut(&id) {
                s.readable = true;
                self.active.insert(id);
            }
        }
    }

    /// The connector reset a stream.
    pub fn on_reset(
        &mut self,
        conn: ConnId,
        stream: DataStream,
        out: &mut impl FnMut(EyeballId, StreamEvent),
    ) {
        if let Some(&id) = self.by_key.get(&(conn, stream)) {
            self.remove(id);
            out(id, StreamEvent::Reset);
        }
    }

    /// A connection closed: every stream on it is reset, and its waiting set goes.
    pub fn on_closed(&mut self, conn: ConnId, out: &mut impl FnMut(EyeballId, StreamEvent)) {
        let mut gone: Vec<EyeballId> = self
            .by_id
            .iter()
            .filter(|(_, s)| s.conn == conn)
            .map(|(&id, _)| id)
            .collect();
        // In the order they were named, not the map's: the same inputs give the same outputs.
        gone.sort_unstable();
        for id in gone {
            self.remove(id);
            out(id, StreamEvent::Reset);
        }
        self.waiting.remove(&conn);
    }

    /// Request bodies in, response bodies out, as far as room and credit go; true if anything
    /// moved.
    pub fn pump(
        &mut self,
        now: Instant,
        tp: &mut EdgeTransports,
        out: &mut impl FnMut(EyeballId, StreamEvent),
    ) -> bool {
        let mut progress = false;
        let mut visiting = std::mem::take(&mut self.visiting);
        visiting.clear();
        visiting.extend(self.active.iter().copied());
        for &id in &visiting {
            let Some(s) = self.by_id.get_mut(&id) else {
                self.active.remove(&id);
                continue;
            };
            while let Some(front) = s.unsent.front_mut() {
                match tp.send_request_body(now, s.conn, s.stream, front, SEND_WINDOW) {
                    Ok(n) if n == front.len() => {
                        s.unsent.pop_front();
                        out(id, StreamEvent::Ack);
                        progress = true;
                    }
                    Ok(n) => {
                        // No room: tried again on the next pump.
                        *front = front.slice(n..);
                        progress |= n > 0;
                        break;
                    }
                    Err(_) => {
                        s.unsent.clear();
                        break;
                    }
                }
            }
            if s.finish && s.unsent.is_empty() {
                s.finish = false;
                let _ = tp.finish_request(now, s.conn, s.stream);
                progress = true;
            }
            if s.readable && s.credit {
                self.pieces.clear();
                match tp.read_response(now, s.conn, s.stream, READ_CHUNK, &mut self.pieces) {
                    Ok(done) => {
                        progress = true;
                        s.readable = false;
                        if let Some(chunk) = join(&mut self.pieces) {
                            s.credit = false;
                            s.waiting_since = Some(now);
                            self.waiting.entry(s.conn).or_default().insert((now, id));
                            out(id, StreamEvent::Body(chunk));
                        }
                        if done {
                            self.remove(id);
                            out(id, StreamEvent::End);
                            continue;
                        }
                    }
                    // Response head not in yet, or the stream is gone.
                    Err(_) => {
                        s.readable = false;
                        self.pieces.clear();
                    }
                }
            }
            if !s.has_work() {
                self.active.remove(&id);
            }
        }
        self.visiting = visiting;
        progress
    }

    fn remove(&mut self, id: EyeballId) -> Option<Stream> {
        let mut s = self.by_id.remove(&id)?;
        self.by_key.remove(&(s.conn, s.stream));
        self.active.remove(&id);
        unwait(&mut self.waiting, id, &mut s);
        Some(s)
    }

    /// Makes room on every connection with streams waiting on their eyeballs (on every
    /// timeout: a connection whose window they filled has nothing else to say, and the
    /// requests already on it need the room as much as a new one).
    pub fn on_timeout(
        &mut self,
        now: Instant,
        tp: &mut EdgeTransports,
        reset: &mut impl FnMut(ConnId, EyeballId),
    ) {
        let mut next = self.waiting.keys().next().copied();
        while let Some(conn) = next {
            self.make_room(now, tp, conn, reset);
            next = self
                .waiting
                .range((Bound::Excluded(conn), Bound::Unbounded))
                .next()
                .map(|(&c, _)| c);
        }
    }

    /// `conn`'s streams that have waited on their eyeballs for [`HELD_AFTER`], up to
    /// [`EDGE_HELD_STREAMS`].
    fn held(&self, now: Instant, conn: ConnId) -> u32 {
        let Some(waiting) = self.waiting.get(&conn) else {
            return 0;
        };
        let held = waiting
            .iter()
            .take(EDGE_HELD_STREAMS as usize)
            .take_while(|(since, _)| now.saturating_duration_since(*since) >= HELD_AFTER)
            .count();
        u32::try_from(held).unwrap_or(EDGE_HELD_STREAMS)
    }

    /// Makes room on `conn` for the requests that read: while [`EDGE_HELD_STREAMS`] of its
    /// streams wait on their eyeballs, resets the one that has waited longest if that is
    /// longer than [`EYEBALL_PATIENCE`]; then widens its window for those held.
    fn make_room(
        &mut self,
        now: Instant,
        tp: &mut EdgeTransports,
        conn: ConnId,
        reset: &mut impl FnMut(ConnId, EyeballId),
    ) {
        while let Some(waiting) = self.waiting.get(&conn) {
            let Some(&(since, id)) = waiting.first() else {
                break;
            };
            let crowded = waiting.len() >= EDGE_HELD_STREAMS as usize;
            if !crowded || now.saturating_duration_since(since) < EYEBALL_PATIENCE {
                break;
            }
            self.reset(now, tp, id);
            reset(conn, id);
        }
        tp.hold(conn, self.held(now, conn));
    }
}

/// Takes `s` (stream `id`) out of the streams waiting on their eyeballs.
fn unwait(
    waiting: &mut BTreeMap<ConnId, BTreeSet<(Instant, EyeballId)>>,
    id: EyeballId,
    s: &mut Stream,
) {
    let Some(since) = s.waiting_since.take() else {
        return;
    };
    if let Some(set) = waiting.get_mut(&s.conn) {
        set.remove(&(since, id));
    }
}

/// One response chunk of `pieces` (emptied): a single large piece as it is, else one copy of
/// them all; `None` if they hold no bytes.
fn join(pieces: &mut Vec<Bytes>) -> Option<Bytes> {
    let len: usize = pieces.iter().map(Bytes::len).sum();
    if len == 0 {
        pieces.clear();
        return None;
    }
    if pieces.len() == 1 && len >= UNCOPIED_MIN {
        return pieces.pop();
    }
    let mut chunk = Vec::with_capacity(len);
    append_pieces(&mut chunk, pieces);
    Some(Bytes::from(chunk))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_large_piece_goes_uncopied_and_small_ones_are_joined() {
        let big = Bytes::from(vec![7u8; UNCOPIED_MIN]);
        let mut pieces = vec![big.clone()];
        let chunk = join(&mut pieces).unwrap();
        assert_eq!(chunk.as_ptr(), big.as_ptr());
        assert!(pieces.is_empty());

        let mut pieces = vec![Bytes::from_static(b"ab"), Bytes::new(), big.slice(..3)];
        assert_eq!(
            join(&mut pieces).unwrap(),
            Bytes::from_static(b"ab\x07\x07\x07")
        );
        assert!(pieces.is_empty());

        // A small single piece is copied: the eyeball holds no slice of a receive buffer.
        let mut pieces = vec![big.slice(..UNCOPIED_MIN - 1)];
        assert_ne!(join(&mut pieces).unwrap().as_ptr(), big.as_ptr());

        let mut pieces = vec![Bytes::new()];
        assert_eq!(join(&mut pieces), None);
        assert!(pieces.is_empty());
    }
}
