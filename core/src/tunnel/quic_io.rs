//! The plumbing both roles share around quinn-proto: endpoint-event exchange, stream reads and
//! buffered stream writes.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn_proto::{
    Connection, ConnectionHandle, DatagramEvent, Endpoint, ReadError, StreamId, VarInt, WriteError,
};

use super::rx::RxBuffers;
use super::BodySink;
use crate::quic::congestion::Watched;
use crate::rpc_stream::server::RpcStreamServer;

/// Explicit Congestion Notification codepoint of a UDP datagram (RFC 3168), as the socket
/// sets it on send and reports it on receive. Core-owned so drivers need not name quinn types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EcnCodepoint {
    /// ECT(0): ECN-capable transport.
    Ect0,
    /// ECT(1): ECN-capable transport.
    Ect1,
    /// CE: congestion experienced.
    Ce,
}

impl EcnCodepoint {
    /// The codepoint of the two ECN bits of an IP header's TOS/traffic-class byte (`None`
    /// for Not-ECT).
    pub fn from_bits(bits: u8) -> Option<Self> {
        match bits & 0b11 {
            0b10 => Some(Self::Ect0),
            0b01 => Some(Self::Ect1),
            0b11 => Some(Self::Ce),
            _ => None,
        }
    }

    /// The two ECN bits.
    pub fn bits(self) -> u8 {
        match self {
            Self::Ect0 => 0b10,
            Self::Ect1 => 0b01,
            Self::Ce => 0b11,
        }
    }
}

impl From<quinn_proto::EcnCodepoint> for EcnCodepoint {
    fn from(e: quinn_proto::EcnCodepoint) -> Self {
        match e {
            quinn_proto::EcnCodepoint::Ect0 => Self::Ect0,
            quinn_proto::EcnCodepoint::Ect1 => Self::Ect1,
            quinn_proto::EcnCodepoint::Ce => Self::Ce,
        }
    }
}

impl From<EcnCodepoint> for quinn_proto::EcnCodepoint {
    fn from(e: EcnCodepoint) -> Self {
        match e {
            EcnCodepoint::Ect0 => Self::Ect0,
            EcnCodepoint::Ect1 => Self::Ect1,
            EcnCodepoint::Ce => Self::Ce,
        }
    }
}

/// UDP datagrams to send: the first `size` bytes of the caller's buffer, to `destination`.
/// With `segment_size`, the bytes are a GSO batch: datagrams of `segment_size` bytes each, the
/// last possibly shorter, all to the same destination with the same ECN marking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub destination: SocketAddr,
    /// Bytes of the buffer passed to `poll_transmit` that make up the datagram(s).
    pub size: usize,
    /// Size of each datagram when the buffer holds several (`None`: one datagram).
    pub segment_size: Option<usize>,
    /// ECN marking for the IP header.
    pub ecn: Option<EcnCodepoint>,
}

impl Transmit {
    /// The datagrams this transmit holds, cut from `buf` (the buffer passed to
    /// `poll_transmit`): for drivers that cannot hand the kernel a GSO batch.
    pub fn datagrams<'a>(&self, buf: &'a [u8]) -> std::slice::Chunks<'a, u8> {
        let bytes = &buf[..self.size.min(buf.len())];
        bytes.chunks(self.segment_size.unwrap_or(bytes.len()).max(1))
    }

    /// How many datagrams this transmit holds.
    pub fn datagram_count(&self) -> usize {
        match self.segment_size {
            Some(s) if s > 0 => self.size.div_ceil(s),
            _ => 1,
        }
    }
}

/// UDP datagrams received in one buffer: with GRO the kernel coalesces datagrams of one
/// source into a buffer of `stride`-byte datagrams, the last possibly shorter.
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    /// Who sent them.
    pub from: SocketAddr,
    /// ECN marking they arrived with.
    pub ecn: Option<EcnCodepoint>,
    /// The datagram bytes, back to back.
    pub data: &'a [u8],
    /// Size of each datagram in `data` (`data.len()` or more: one datagram).
    pub stride: usize,
}

impl<'a> Received<'a> {
    /// One datagram without ECN information.
    pub fn single(from: SocketAddr, data: &'a [u8]) -> Self {
        Self {
            from,
            ecn: None,
            data,
            stride: data.len(),
        }
    }

    /// Bytes per datagram (a `stride` of 0 counts as one datagram of all of `data`).
    pub fn stride(&self) -> usize {
        if self.stride == 0 {
            self.data.len().max(1)
        } else {
            self.stride
        }
    }

    /// The datagrams, cut at `stride`.
    pub fn datagrams(&self) -> std::slice::Chunks<'a, u8> {
        self.data.chunks(self.stride())
    }
}

/// Feeds every datagram of `received` to `endpoint`, each in a buffer from `rx`, calling
/// `on_event` with what each one yields. `scratch` is where quinn writes a stateless
/// response, if any.
pub(crate) fn handle_received(
    endpoint: &mut Endpoint,
    now: std::time::Instant,
    received: &Received<'_>,
    rx: &mut RxBuffers,
    scratch: &mut Vec<u8>,
    mut on_event: impl FnMut(&mut Endpoint, DatagramEvent, &mut Vec<u8>),
) {
    let ecn = received.ecn.map(Into::into);
    rx.split(received, |segment| {
        scratch.clear();
        if let Some(event) = endpoint.handle(now, received.from, None, ecn, segment, scratch) {
            on_event(endpoint, event, scratch);
        }
    });
}

/// Lets the endpoint and one of its connections tell each other what they need to.
pub(crate) fn exchange_events(endpoint: &mut Endpoint, h: ConnectionHandle, conn: &mut Connection) {
    while let Some(ev) = conn.poll_endpoint_events() {
        if let Some(back) = endpoint.handle_event(h, ev) {
            conn.handle_event(back);
        }
    }
}

/// Up to `max_datagrams` datagrams from `conn` (a GSO batch when more than one), written into
/// `buf` (cleared first).
pub(crate) fn poll_conn_transmit(
    conn: &mut Connection,
    now: Instant,
    max_datagrams: usize,
    buf: &mut Vec<u8>,
) -> Option<Transmit> {
    buf.clear();
    // quinn requires at least one.
    conn.poll_transmit(now, max_datagrams.max(1), buf)
        .map(|t| Transmit {
            destination: t.destination,
            size: t.size,
            segment_size: t.segment_size,
            ecn: t.ecn.map(Into::into),
        })
}

/// How long quinn may hold an ACK it owes by its own choice: its `max_ack_delay` (25 ms).
const ACK_DELAY: Duration = Duration::from_millis(25);

/// Watches whether quinn holds back the ACKs it owes behind a full congestion window, and then
/// lets one packet past the window to carry them ([`crate::quic::ack_probe`]): at most one per
/// round trip, and only while an ACK has been owed for longer than quinn's ACK delay.
#[derive(Debug)]
pub(crate) struct AckWatch {
    /// The controller has the switch (the connection uses burrow's transport settings).
    probing: bool,
    /// ACK frames sent, as of the last look.
    acks_sent: u64,
    /// Ack-eliciting frames received, as of the last ACK frame sent.
    heard: u64,
    /// Since when an ACK has been owed: ack-eliciting frames came after the last ACK sent.
    owed_since: Option<Instant>,
    /// When the window was last opened for an ACK.
    probed_at: Option<Instant>,
}

impl AckWatch {
    /// The watch of `conn`.
    pub(crate) fn new(conn: &Connection) -> Self {
        Self {
            probing: Watched::switch(conn.congestion_state()).is_some(),
            acks_sent: 0,
            heard: 0,
            owed_since: None,
            probed_at: None,
        }
    }

    /// Up to `max_datagrams` datagrams from `conn` (a GSO batch when more than one), written
    /// into `buf` (cleared first); when quinn sends nothing though it has owed an ACK for
    /// longer than its ACK delay, one datagram past its congestion window.
    pub(crate) fn poll_transmit(
        &mut self,
        conn: &mut Connection,
        now: Instant,
        max_datagrams: usize,
        buf: &mut Vec<u8>,
    ) -> Option<Transmit> {
        let t = poll_conn_transmit(conn, now, max_datagrams, buf);
        if t.is_some() || !self.probing {
            return t;
        }
        // Drivers poll until nothing comes, and nothing is received meanwhile: looking at the
        // end of each round is enough.
        self.note(conn, now);
        if self.deadline(conn).is_none_or(|at| at > now) {
            return None;
        }
        self.probed_at = Some(now);
        let switch = Watched::switch(conn.congestion_state())?;
        switch.set(true);
        let t = poll_conn_transmit(conn, now, 1, buf);
        switch.set(false);
        tracing::trace!(
            sent = t.is_some(),
            "congestion window opened for an owed ACK"
        );
        self.note(conn, now);
        t
    }

    /// When to open the window for an owed ACK, if one is owed.
    pub(crate) fn deadline(&self, conn: &Connection) -> Option<Instant> {
        let since = self.owed_since?;
        if !self.probing || conn.is_closed() || conn.is_handshaking() {
            return None;
        }
        let due = since + ACK_DELAY;
        Some(
            self.probed_at
                .map_or(due, |at| due.max(at + conn.rtt().max(ACK_DELAY))),
        )
    }

    fn note(&mut self, conn: &Connection, now: Instant) {
        let st = conn.stats();
        let heard = ack_eliciting_frames(&st.frame_rx);
        if st.frame_tx.acks != self.acks_sent {
            self.acks_sent = st.frame_tx.acks;
            self.heard = heard;
            self.owed_since = None;
        } else if heard != self.heard && self.owed_since.is_none() {
            self.owed_since = Some(now);
        }
    }
}

/// Frames that make a packet ack-eliciting: all but ACK and CONNECTION_CLOSE (RFC 9002 §2;
/// quinn does not count PADDING).
fn ack_eliciting_frames(f: &quinn_proto::FrameStats) -> u64 {
    f.ack_frequency
        + f.crypto
        + f.data_blocked
        + f.datagram
        + u64::from(f.handshake_done)
        + f.immediate_ack
        + f.max_data
        + f.max_stream_data
        + f.max_streams_bidi
        + f.max_streams_uni
        + f.new_connection_id
        + f.new_token
        + f.path_challenge
        + f.path_response
        + f.ping
        + f.reset_stream
        + f.retire_connection_id
        + f.stream_data_blocked
        + f.streams_blocked_bidi
        + f.streams_blocked_uni
        + f.stop_sending
        + f.stream
}

/// Appends everything readable on stream `id` to `sink`. Returns true once the peer finished
/// the stream (FIN seen and all data read).
pub(crate) fn read_stream(
    conn: &mut Connection,
    id: StreamId,
    sink: &mut Vec<u8>,
) -> Result<bool, ReadError> {
    read_stream_max(conn, id, usize::MAX, sink)
}

/// Like [`read_stream`], but appends at most `max` bytes: what is left stays in quinn, whose
/// flow control then holds the peer back. A [`BodySink`] that keeps pieces takes quinn's
/// chunks uncopied (quinn gathers a stream's unread packets into one buffer when they pile up).
pub(crate) fn read_stream_max(
    conn: &mut Connection,
    id: StreamId,
    max: usize,
    sink: &mut impl BodySink,
) -> Result<bool, ReadError> {
    let mut max = max;
    let mut stream = conn.recv_stream(id);
    let mut chunks = match stream.read(true) {
        Ok(chunks) => chunks,
        // Already finished and read out: nothing more will come.
        Err(_) => return Ok(true),
    };
    let result = loop {
        if max == 0 {
            break Ok(false);
        }
        match chunks.next(max) {
            Ok(Some(chunk)) => {
                max -= chunk.bytes.len();
                sink.put(chunk.bytes);
            }
            Ok(None) => break Ok(true),
            Err(ReadError::Blocked) => break Ok(false),
            Err(e) => break Err(e),
        }
    };
    // Whether flow-control credit must be sent is picked up by the next poll_transmit.
    let _ = chunks.finalize();
    result
}

/// Bytes queued for a stream as the chunks they came in, so quinn takes them without a copy
/// ([`flush_chunks`]); a byte queue would copy each twice (in, and into quinn's buffer).
#[derive(Debug, Default)]
pub(crate) struct Chunks {
    queue: VecDeque<Bytes>,
    len: usize,
}

impl Chunks {
    /// Queues `bytes` after the rest.
    pub(crate) fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.len += bytes.len();
            self.queue.push_back(bytes);
        }
    }

    /// Bytes queued.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Drops what is queued.
    pub(crate) fn clear(&mut self) {
        self.queue.clear();
        self.len = 0;
    }
}

/// Hands as much of `pending` to the stream as quinn takes, by reference count.
pub(crate) fn flush_chunks(
    conn: &mut Connection,
    id: StreamId,
    pending: &mut Chunks,
) -> Result<(), WriteError> {
    while !pending.is_empty() {
        let (front, _) = pending.queue.as_mut_slices();
        match conn.send_stream(id).write_chunks(front) {
            Ok(w) => {
                // A partly taken chunk was advanced in place.
                pending.len -= w.bytes;
                pending.queue.drain(..w.chunks);
                if w.bytes == 0 {
                    return Ok(());
                }
            }
            Err(WriteError::Blocked) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes as much of `pending` as flow control allows to stream `id`, keeping the rest.
pub(crate) fn flush_stream(
    conn: &mut Connection,
    id: StreamId,
    pending: &mut Vec<u8>,
) -> Result<(), WriteError> {
    while !pending.is_empty() {
        match conn.send_stream(id).write(pending) {
            Ok(n) => {
                pending.drain(..n);
            }
            Err(WriteError::Blocked) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Streams whose conversation is over but whose last bytes did not fit yet (the connection's
/// send window was full): each is finished (FIN) once they are written, never before, since a
/// write after the FIN fails and the bytes would be lost.
#[derive(Debug, Default)]
pub(crate) struct Finishing(Vec<(StreamId, Vec<u8>)>);

impl Finishing {
    /// Writes `pending` to stream `id` and finishes it: now if flow control takes it all,
    /// otherwise from [`Finishing::flush`] once it has.
    pub(crate) fn finish(&mut self, conn: &mut Connection, id: StreamId, mut pending: Vec<u8>) {
        match flush_stream(conn, id, &mut pending) {
            Ok(()) if !pending.is_empty() => self.0.push((id, pending)),
            _ => {
                let _ = conn.send_stream(id).finish();
            }
        }
    }

    /// Writes what waits, finishing each stream it empties; a stream that broke meanwhile is
    /// dropped (nothing more can reach its peer).
    pub(crate) fn flush(&mut self, conn: &mut Connection) {
        self.0
            .retain_mut(|(id, pending)| match flush_stream(conn, *id, pending) {
                Ok(()) if !pending.is_empty() => true,
                Ok(()) => {
                    let _ = conn.send_stream(*id).finish();
                    false
                }
                Err(_) => false,
            });
    }
}

/// Writes what a served RPC stream has to say and, once its call is answered and written,
/// closes the stream as cloudflared does when a conversation is over: FIN, and STOP_SENDING for
/// whatever the peer still sends (Finish, Abort). True when the stream is done with (closed or
/// broken) and its state can go.
pub(crate) fn flush_rpc_server(
    conn: &mut Connection,
    id: StreamId,
    server: &mut RpcStreamServer,
    unsent: &mut Vec<u8>,
) -> bool {
    if let Some(bytes) = server.poll_transmit() {
        unsent.extend_from_slice(&bytes);
    }
    if flush_stream(conn, id, unsent).is_err() {
        return true;
    }
    if server.is_settled() && unsent.is_empty() {
        let _ = conn.send_stream(id).finish();
        let _ = conn.recv_stream(id).stop(VarInt::from_u32(0));
        return true;
    }
    false
}

/// Why a QUIC datagram could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DatagramError {
    /// The peer did not offer QUIC datagrams (or the connection is not up yet).
    #[error("the peer does not accept QUIC datagrams")]
    Unsupported,
    /// Larger than the connection can carry now (peer limit or path MTU).
    #[error("datagram of {0} bytes exceeds what the connection carries")]
    TooLarge(usize),
    /// The send queue is full (only when dropping stale datagrams is not allowed).
    #[error("the datagram send queue is full")]
    Full,
    /// The connection is gone.
    #[error("the connection is gone")]
    Closed,
}

/// Queues `datagram` on `conn`. A full queue refuses the new datagram ([`DatagramError::Full`])
/// rather than letting quinn drop an old one unseen: every drop is the caller's to count.
pub(crate) fn send_datagram(
    conn: &mut Connection,
    datagram: bytes::Bytes,
) -> Result<(), DatagramError> {
    use quinn_proto::SendDatagramError as E;
    let len = datagram.len();
    conn.datagrams().send(datagram, false).map_err(|e| match e {
        E::UnsupportedByPeer | E::Disabled => DatagramError::Unsupported,
        E::TooLarge => DatagramError::TooLarge(len),
        E::Blocked(_) => DatagramError::Full,
    })
}
