//! The plumbing both roles share around quinn-proto: endpoint-event exchange, stream reads and
//! buffered stream writes.

use std::net::SocketAddr;

use quinn_proto::{
    Connection, ConnectionHandle, Endpoint, ReadError, StreamId, VarInt, WriteError,
};

use crate::rpc_stream::server::RpcStreamServer;

/// A UDP datagram to send: `size` bytes of the caller's buffer, to `destination`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub destination: SocketAddr,
    /// Bytes of the buffer passed to `poll_transmit` that make up the datagram.
    pub size: usize,
}

/// Lets the endpoint and one of its connections tell each other what they need to.
pub(crate) fn exchange_events(endpoint: &mut Endpoint, h: ConnectionHandle, conn: &mut Connection) {
    while let Some(ev) = conn.poll_endpoint_events() {
        if let Some(back) = endpoint.handle_event(h, ev) {
            conn.handle_event(back);
        }
    }
}

/// One datagram from `conn`, written into `buf` (cleared first).
pub(crate) fn poll_conn_transmit(
    conn: &mut Connection,
    now: std::time::Instant,
    buf: &mut Vec<u8>,
) -> Option<Transmit> {
    buf.clear();
    conn.poll_transmit(now, 1, buf).map(|t| Transmit {
        destination: t.destination,
        size: t.size,
    })
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
/// flow control then holds the peer back.
pub(crate) fn read_stream_max(
    conn: &mut Connection,
    id: StreamId,
    max: usize,
    sink: &mut Vec<u8>,
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
                sink.extend_from_slice(&chunk.bytes);
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
