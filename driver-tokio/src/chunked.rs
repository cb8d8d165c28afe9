//! Reading a byte stream in chunks handed on without a copy: the connector's origin reader
//! and the edge's raw-byte splice share it.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Bytes asked of the socket per read when a fresh buffer is needed. Each read is a round trip
/// through an event loop (report or command, then permit or ack): 128 KiB rather than 32 KiB
/// cut the connector's syscalls per MB on a download by about 60% and its context switches by
/// about half; 256 KiB measured no better (README, issue 16). On the edge's TCP upload it cut
/// the client reads per MB from 31 to 8 (see the commit).
pub const READ_CHUNK: usize = 128 * 1024;
/// Least room worth a read: below it the buffer is renewed first.
pub const MIN_READ: usize = 16 * 1024;

/// Reads what `rd` has (up to the room left in `buf`) and splits it off as it is; `None` at
/// the end of the stream. Later reads fill the rest of the same allocation, and a fresh one
/// comes only when little is left (or the old one is reclaimed, once nobody holds its chunks).
pub async fn read_chunk(
    rd: &mut (impl AsyncRead + Unpin),
    buf: &mut BytesMut,
) -> std::io::Result<Option<Bytes>> {
    make_room(buf);
    match rd.read_buf(buf).await? {
        0 => Ok(None),
        _ => Ok(Some(buf.split().freeze())),
    }
}

/// Renews `buf` before a read if little room is left in it.
pub fn make_room(buf: &mut BytesMut) {
    if buf.capacity() < MIN_READ {
        buf.reserve(READ_CHUNK);
    }
}
